"""What a filter grid shows of a kernel: one tile per output filter, as numbers. Pure
Python: tiles are cut from the flat kernel with strided slices, so a grid never waits
for numpy's import (which takes longer than drawing a first layer's grid).

Axes follow the catalogue (:mod:`conv_surgeon.model.catalogue`): a conv kernel is ``k + (in/groups, filters)``, a
transposed one ``k + (filters, in)``, a depthwise one ``k + (in, multiplier)`` whose
output ``c*multiplier + m`` is a tile of its own. A tile over three input channels is an
RGB picture; over any other number it shows one channel or a reduction over them. 1-D
kernels become strips (one row each), 3-D kernels their centre slice along depth.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConvSurgeonError
from ..instruments.show import Values
from ..model.catalogue import canonical_variable_name
from ..model.naming import format_shape
from ..model.structure import Layer, Variable
from .options import GridOptions


@dataclass(frozen=True)
class FilterTiles:
    """A kernel as tiles: ``values[i]`` is tile i's numbers row by row, ``channels`` per
    pixel (3: R, G, B; else 1)."""

    values: tuple[Sequence[float], ...]
    height: int
    width: int
    channels: int
    shows: str  # what a tile is: "the mean over 4 input channels", ...
    notes: tuple[str, ...] = ()  # "3-D kernel: the centre slice kd=1 of 3"
    strip: bool = False  # a 1-D kernel: each tile is one row

    @property
    def colour(self) -> bool:
        return self.channels == 3

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(count, height, width)``, with ``3`` after it for RGB tiles."""
        return (self.count, self.height, self.width) + ((3,) if self.colour else ())


def filter_tiles(layer: Layer, variable: Variable, kernel: Values, options: GridOptions) -> FilterTiles:
    """The tiles of ``kernel``, a value of ``layer``'s ``variable``."""
    conv = layer.conv
    label = f"layer '{layer.path}' {variable.name}"
    shape = kernel.shape
    if conv is None or len(shape) != conv.rank + 2:
        raise ConvSurgeonError(f"{label} {format_shape(shape)}: not a {layer.class_name} kernel; the filter "
                               "grid draws convolution kernels")
    flat, spatial, (a, b) = kernel.flat, shape[:-2], shape[-2:]
    block = a * b  # the numbers of one kernel position: the last two axes
    start, notes = 0, []
    if conv.rank == 3:
        depth = spatial[0]
        spatial = spatial[1:]
        start = depth // 2 * math.prod(spatial) * block
        notes.append(f"3-D kernel: the centre slice kd={depth // 2} of {depth} (kd = 0..{depth - 1})")
    pixels = math.prod(spatial)
    height, width = (1, spatial[0]) if conv.rank == 1 else spatial
    geometry = (height, width, tuple(notes), conv.rank == 1)

    def plane(offset: int) -> Sequence[float]:
        """Tile pixels of one place in the last two axes."""
        return flat[start + offset:start + offset + (pixels - 1) * block + 1:block]

    if conv.kind in ("depthwise", "separable") and canonical_variable_name(variable.name) != "pointwise_kernel":
        # (k..., in, multiplier): output c*multiplier + m is input c's filter m, at c*multiplier + m.
        if options.input_channel is not None or options.reduce is not None:
            raise ConvSurgeonError(
                f"{label}: each tile of a depthwise kernel is one input channel's filter already; "
                "drop --input-channel and --reduce"
            )
        shows = "input channel i's filter (tile i)" if b == 1 else f"input channel c's filter m (tile c*{b}+m)"
        return _tiles([plane(t) for t in range(block)], 1, shows, *geometry)
    transpose = conv.kind == "transpose"
    filters, channels = (a, b) if transpose else (b, a)

    def at(channel: int, tile: int) -> int:  # the place of (input channel, filter) in the last two axes
        return tile * b + channel if transpose else channel * b + tile

    def reduced(reduce: Callable[[Sequence[float]], float]) -> list[Sequence[float]]:
        """Per tile, ``reduce`` of each pixel's numbers over the input channels."""
        step = 1 if transpose else b
        return [[reduce(flat[start + p * block + at(0, f):start + p * block + at(channels - 1, f) + 1:step])
                 for p in range(pixels)] for f in range(filters)]

    if options.input_channel is not None:
        if options.input_channel >= channels:
            raise ConvSurgeonError(
                f"{label}: --input-channel expected 0..{channels - 1} (the kernel has {channels} input "
                f"channels), received {options.input_channel}"
            )
        return _tiles([plane(at(options.input_channel, f)) for f in range(filters)], 1,
                      f"input channel {options.input_channel} of {channels}", *geometry)
    if options.reduce == "l2":
        return _tiles(reduced(lambda run: math.sqrt(sum(map(operator.mul, run, run)))), 1,
                      f"the L2 norm over {channels} input channels", *geometry)
    if channels == 3 and options.reduce is None:
        return _tiles([_interleaved([plane(at(c, f)) for c in range(3)]) for f in range(filters)], 3,
                      "the 3 input channels as R, G, B", *geometry)
    if channels == 1:
        return _tiles([plane(at(0, f)) for f in range(filters)], 1, "its one input channel", *geometry)
    return _tiles(reduced(lambda run: sum(run) / channels), 1, f"the mean over {channels} input channels", *geometry)


def _tiles(values: Sequence[Sequence[float]], channels: int, shows: str, height: int, width: int,
           notes: tuple[str, ...], strip: bool) -> FilterTiles:
    return FilterTiles(tuple(values), height, width, channels, shows, notes, strip)


def _interleaved(planes: list[Sequence[float]]) -> list[float]:
    """R, G, B planes as one pixel after another: r0, g0, b0, r1, ..."""
    out = [0.0] * (len(planes) * len(planes[0]))
    for c, plane in enumerate(planes):
        out[c::len(planes)] = plane
    return out


def tile_scales(tiles: list[FilterTiles], per_filter: bool) -> list[float]:
    """The value drawn at full colour, per tile: the largest finite ``|value|`` of the
    tile (``per_filter``) or of the whole layer, over every set of tiles drawn side by
    side (A, B and their difference share one scale). 0 where everything is 0."""
    per_tile = [max((max(map(abs, filter(math.isfinite, t.values[i])), default=0.0) for t in tiles), default=0.0)
                for i in range(tiles[0].count)]
    return per_tile if per_filter else [max(per_tile, default=0.0)] * len(per_tile)


def count_nonfinite(tiles: FilterTiles) -> int:
    """Pixels drawn in the non-finite colour."""
    count = 0
    for tile in tiles.values:
        if all(map(math.isfinite, tile)):
            continue
        finite = list(map(math.isfinite, tile))
        count += sum(not all(finite[i:i + tiles.channels]) for i in range(0, len(finite), tiles.channels))
    return count
