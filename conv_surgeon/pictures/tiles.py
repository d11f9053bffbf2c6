"""What a filter grid shows of a kernel: one tile per output filter, as numbers. Pure numpy.

Axes follow the catalogue (DESIGN §4): a conv kernel is ``k + (in/groups, filters)``, a
transposed one ``k + (filters, in)``, a depthwise one ``k + (in, multiplier)`` whose
output ``c*multiplier + m`` is a tile of its own. A tile over three input channels is an
RGB picture; over any other number it shows one channel or a reduction over them. 1-D
kernels become strips (one row each), 3-D kernels their centre slice along depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConvSurgeonError
from ..model.catalogue import canonical_variable_name
from ..model.naming import format_shape
from ..model.structure import Layer, Variable
from .options import GridOptions

@dataclass(frozen=True)
class FilterTiles:
    """A kernel as tiles: ``values`` is ``(n, h, w)``, or ``(n, h, w, 3)`` for RGB tiles."""

    values: np.ndarray  # float64
    shows: str  # what a tile is: "the mean over 4 input channels", ...
    notes: tuple[str, ...] = ()  # "3-D kernel: the centre slice kd=1 of 3"
    strip: bool = False  # a 1-D kernel: each tile is one row

    @property
    def colour(self) -> bool:
        return self.values.ndim == 4

    @property
    def count(self) -> int:
        return int(self.values.shape[0])


def filter_tiles(layer: Layer, variable: Variable, kernel: np.ndarray, options: GridOptions) -> FilterTiles:
    """The tiles of ``kernel``, a value of ``layer``'s ``variable``."""
    conv = layer.conv
    label = f"layer '{layer.path}' {variable.name}"
    if conv is None or kernel.ndim != conv.rank + 2:
        raise ConvSurgeonError(f"{label} {format_shape(kernel.shape)}: not a {layer.class_name} kernel; the filter "
                               "grid draws convolution kernels")
    name = canonical_variable_name(variable.name)
    data = np.asarray(kernel, dtype=np.float64)
    if conv.kind in ("depthwise", "separable") and name != "pointwise_kernel":
        # (k..., in, multiplier): output c*multiplier + m is input c's filter m.
        if options.input_channel is not None or options.reduce is not None:
            raise ConvSurgeonError(
                f"{label}: each tile of a depthwise kernel is one input channel's filter already; "
                "drop --input-channel and --reduce"
            )
        multiplier = data.shape[-1]
        data = np.moveaxis(data.reshape(data.shape[:-2] + (-1,)), -1, 0)[..., None]
        shows = ("input channel i's filter (tile i)" if multiplier == 1 else
                 f"input channel c's filter m (tile c*{multiplier}+m)")
    else:
        data = np.moveaxis(data, -2 if conv.kind == "transpose" else -1, 0)  # (filters, k..., in)
        shows = ""
    notes: list[str] = []
    if conv.rank == 3:
        depth = data.shape[1]
        data = data[:, depth // 2]
        notes.append(f"3-D kernel: the centre slice kd={depth // 2} of {depth} (kd = 0..{depth - 1})")
    strip = conv.rank == 1
    if strip:
        data = data[:, None]  # (filters, 1, k, in): each filter one row
    channels = data.shape[-1]
    if shows:  # depthwise: one channel per tile
        return FilterTiles(data[..., 0], shows, tuple(notes), strip)
    if options.input_channel is not None:
        if options.input_channel >= channels:
            raise ConvSurgeonError(
                f"{label}: --input-channel expected 0..{channels - 1} (the kernel has {channels} input "
                f"channels), received {options.input_channel}"
            )
        return FilterTiles(data[..., options.input_channel], f"input channel {options.input_channel} of {channels}",
                           tuple(notes), strip)
    if options.reduce == "l2":
        return FilterTiles(np.sqrt(np.sum(data * data, axis=-1)), f"the L2 norm over {channels} input channels",
                           tuple(notes), strip)
    if channels == 3 and options.reduce is None:
        return FilterTiles(data, "the 3 input channels as R, G, B", tuple(notes), strip)
    if channels == 1:
        return FilterTiles(data[..., 0], "its one input channel", tuple(notes), strip)
    return FilterTiles(data.mean(axis=-1), f"the mean over {channels} input channels", tuple(notes), strip)


def tile_scales(tiles: list[FilterTiles], per_filter: bool) -> np.ndarray:
    """The value drawn at full colour, per tile: the largest finite ``|value|`` of the
    tile (``per_filter``) or of the whole layer, over every set of tiles drawn side by
    side (A, B and their difference share one scale). 0 where everything is 0."""
    stacked = np.stack([np.abs(t.values.reshape(t.count, -1)) for t in tiles])  # (sets, n, pixels)
    finite = np.where(np.isfinite(stacked), stacked, 0.0)
    per_tile = finite.max(axis=(0, 2)) if finite.size else np.zeros(tiles[0].count)
    return per_tile if per_filter else np.full(per_tile.shape, per_tile.max(initial=0.0))


def normalised(tiles: FilterTiles, scales: np.ndarray) -> np.ndarray:
    """The tiles' values divided by their scale (1 where the scale is 0, so zeros stay 0)."""
    divisor = np.where(scales > 0, scales, 1.0).reshape((-1,) + (1,) * (tiles.values.ndim - 1))
    with np.errstate(invalid="ignore"):
        result: np.ndarray = tiles.values / divisor
    return result


def count_nonfinite(tiles: FilterTiles) -> int:
    """Pixels drawn in the non-finite colour."""
    bad = ~np.isfinite(tiles.values)
    return int((bad.any(axis=-1) if tiles.colour else bad).sum())
