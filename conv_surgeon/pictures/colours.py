"""The colours of every picture: a diverging map for signed weights, and RGB for kernels
over three input channels. Pure numpy.

Conv weights are signed, so the map is centred on zero: negative weights are blue,
positive ones red, zero is the neutral near-white in the middle (ColorBrewer's 7-class
RdBu, whose ends stay visible on the dark background). Values that are not finite
(NaN, inf) have a colour of their own that the map never produces.
"""

from __future__ import annotations

import numpy as np

Colour = tuple[int, int, int]

BACKGROUND: Colour = (32, 32, 32)  # the canvas and the gaps between tiles
PLOT_AREA: Colour = (48, 48, 48)  # a histogram's frame
TEXT: Colour = (224, 224, 224)
DIM: Colour = (140, 140, 140)  # axis lines, the zero mark of a histogram
NONFINITE: Colour = (255, 0, 255)  # magenta: outside both maps
ZERO: Colour = (247, 247, 247)  # the diverging map at 0
RGB_ZERO: Colour = (128, 128, 128)  # an RGB tile's colour where all three weights are 0

# ColorBrewer RdBu, 7 classes, from -1 (blue) through 0 (neutral) to +1 (red).
_ANCHORS = np.array([-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0])
_COLOURS = np.array([
    (33, 102, 172), (103, 169, 207), (209, 229, 240), ZERO, (253, 219, 199), (239, 138, 98), (178, 24, 43),
], dtype=np.float64)


def diverging(x: np.ndarray) -> np.ndarray:
    """``x`` (values divided by their scale, so in [-1, 1]; clipped) as uint8 RGB,
    shape ``x.shape + (3,)``; 0 is exactly :data:`ZERO`."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    clipped = np.clip(np.where(finite, x, 0.0), -1.0, 1.0)
    out = np.stack([np.interp(clipped, _ANCHORS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    out = np.floor(out + 0.5).astype(np.uint8)
    out[~finite] = NONFINITE
    return out


def rgb(x: np.ndarray) -> np.ndarray:
    """``x`` of shape ``(..., 3)`` (per-channel values over their scale, in [-1, 1]) as
    uint8 RGB: -1 is 0, 0 is 128, +1 is 255 in each channel. A pixel with a non-finite
    channel is :data:`NONFINITE`."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x).all(axis=-1)
    clipped = np.clip(np.where(np.isfinite(x), x, 0.0), -1.0, 1.0)
    out = np.floor(127.5 * (clipped + 1.0) + 0.5).astype(np.uint8)
    out[~finite] = NONFINITE
    return out
