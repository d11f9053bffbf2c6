"""The colours of every picture: a diverging map for signed weights, and RGB for kernels
over three input channels. Pure Python, one value at a time (a grid has thousands).

Conv weights are signed, so the map is centred on zero: negative weights are blue,
positive ones red, zero is the neutral near-white in the middle (ColorBrewer's 7-class
RdBu, whose ends stay visible on the dark background). Values that are not finite
(NaN, inf) have a colour of their own that the map never produces.
"""

from __future__ import annotations

import math
from bisect import bisect_right

Colour = tuple[int, int, int]

BACKGROUND: Colour = (32, 32, 32)  # the canvas and the gaps between tiles
PLOT_AREA: Colour = (48, 48, 48)  # a histogram's frame
TEXT: Colour = (224, 224, 224)
DIM: Colour = (140, 140, 140)  # axis lines, the zero mark of a histogram
NONFINITE: Colour = (255, 0, 255)  # magenta: outside both maps
ZERO: Colour = (247, 247, 247)  # the diverging map at 0
RGB_ZERO: Colour = (128, 128, 128)  # an RGB tile's colour where all three weights are 0

# ColorBrewer RdBu, 7 classes, from -1 (blue) through 0 (neutral) to +1 (red).
_ANCHORS = (-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0)
_COLOURS: tuple[Colour, ...] = (
    (33, 102, 172), (103, 169, 207), (209, 229, 240), ZERO, (253, 219, 199), (239, 138, 98), (178, 24, 43),
)
# Per segment and channel, the slope as numpy's interp computes it, so that every
# colour is the one ``np.interp`` gave (the committed pictures are compared pixel for pixel).
_SLOPES = tuple(tuple((float(high[c]) - float(low[c])) / (_ANCHORS[j + 1] - _ANCHORS[j]) for c in range(3))
                for j, (low, high) in enumerate(zip(_COLOURS, _COLOURS[1:])))


def diverging(x: float) -> Colour:
    """``x`` (a value divided by its scale, so in [-1, 1]; clipped) as RGB; 0 is exactly
    :data:`ZERO`, and NaN and inf are :data:`NONFINITE`."""
    if not math.isfinite(x):
        return NONFINITE
    x = min(1.0, max(-1.0, x))
    j = bisect_right(_ANCHORS, x) - 1
    if j == len(_ANCHORS) - 1 or _ANCHORS[j] == x:
        return _COLOURS[j]
    low, slope, offset = _COLOURS[j], _SLOPES[j], x - _ANCHORS[j]
    return (math.floor(slope[0] * offset + low[0] + 0.5), math.floor(slope[1] * offset + low[1] + 0.5),
            math.floor(slope[2] * offset + low[2] + 0.5))


def rgb(r: float, g: float, b: float) -> Colour:
    """Per-channel values over their scale (in [-1, 1], clipped) as RGB: -1 is 0, 0 is
    128, +1 is 255 in each channel. A pixel with a non-finite channel is :data:`NONFINITE`."""
    if not (math.isfinite(r) and math.isfinite(g) and math.isfinite(b)):
        return NONFINITE
    return (_channel(r), _channel(g), _channel(b))


def _channel(x: float) -> int:
    return math.floor(127.5 * (min(1.0, max(-1.0, x)) + 1.0) + 0.5)


def linspace(low: float, high: float, count: int) -> list[float]:
    """``count`` even steps from ``low`` to ``high``, as ``np.linspace`` makes them."""
    if count == 1:
        return [low]
    step = (high - low) / (count - 1)
    return [*(i * step + low for i in range(count - 1)), high]
