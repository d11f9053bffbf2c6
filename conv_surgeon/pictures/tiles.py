"""What a picture shows of a kernel, as numbers: one tile per output filter, or one
heat-map row per filter. Pure Python: tiles and rows are cut from the flat kernel with
strided slices, so a picture never waits for numpy's import (which takes longer than
drawing a first layer's grid).

Axes follow the catalogue (:mod:`conv_surgeon.model.catalogue`): a conv kernel is ``k + (in/groups, filters)``, a
transposed one ``k + (filters, in)``, a depthwise one ``k + (in, multiplier)`` whose
output ``c*multiplier + m`` is a tile of its own. A tile over three input channels is an
RGB picture; over any other number it shows one channel or a reduction over them. 1-D
kernels become strips (one row each), 3-D kernels their centre slice along depth.

The kind of picture follows the kernel's shape (:func:`kernel_kind`): tiles when two
spatial axes are longer than 1, a matrix (input channels x filters, every weight a cell)
for a 1x1 kernel, taps (a row of taps per filter, input channels reduced as for tiles)
when one spatial axis is longer than 1.
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
from .options import GridOptions, Kind, Scale


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
    filters: str = "output filters"  # what a tile (a heat map's row) is one of
    cells: str = ""  # a heat map: what runs along a row ("taps", "input channels")

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


def kernel_kind(layer: Layer, variable: Variable, shape: tuple[int, ...], requested: Kind | None) -> Kind:
    """The picture of a kernel of ``shape``: ``requested``, or the kind its spatial axes
    call for (tiles for two or more longer than 1, taps for one, a matrix for none)."""
    spatial = _checked_spatial(layer, variable, shape)
    longer = sum(size > 1 for size in spatial)
    fitting: Kind = "tiles" if longer > 1 else "taps" if longer == 1 else "matrix"
    if requested is None or requested == "tiles" or requested == fitting or (requested, fitting) == ("taps", "matrix"):
        return requested or fitting
    size = "x".join(map(str, spatial))
    needs = "a kernel of size 1 (a 1x1 conv)" if requested == "matrix" else "a kernel with one spatial axis longer than 1"
    raise ConvSurgeonError(f"layer '{layer.path}' {variable.name} {format_shape(shape)}: --kind {requested} draws "
                           f"{needs}, and this kernel's size is {size}; use --kind {fitting} or tiles")


def _checked_spatial(layer: Layer, variable: Variable, shape: tuple[int, ...]) -> tuple[int, ...]:
    conv = layer.conv
    if conv is None or len(shape) != conv.rank + 2:
        raise ConvSurgeonError(f"layer '{layer.path}' {variable.name} {format_shape(shape)}: not a "
                               f"{layer.class_name} kernel; the filter grid draws convolution kernels")
    return shape[:-2]


def _is_depthwise(layer: Layer, variable: Variable) -> bool:
    conv = layer.conv
    return conv is not None and conv.kind in ("depthwise", "separable") and \
        canonical_variable_name(variable.name) != "pointwise_kernel"


def filter_tiles(layer: Layer, variable: Variable, kernel: Values, options: GridOptions,
                 taps: bool = False) -> FilterTiles:
    """The tiles of ``kernel``, a value of ``layer``'s ``variable``. ``taps``: every
    spatial position in one row (taps), a 3-D kernel's depth included."""
    conv = layer.conv
    label = f"layer '{layer.path}' {variable.name}"
    shape = kernel.shape
    spatial = _checked_spatial(layer, variable, shape)
    assert conv is not None
    flat, (a, b) = kernel.flat, shape[-2:]
    block = a * b  # the numbers of one kernel position: the last two axes
    start, notes = 0, []
    if conv.rank == 3 and not taps:
        depth = spatial[0]
        spatial = spatial[1:]
        start = depth // 2 * math.prod(spatial) * block
        notes.append(f"3-D kernel: the centre slice kd={depth // 2} of {depth} (kd = 0..{depth - 1})")
    pixels = math.prod(spatial)
    height, width = (1, pixels) if taps else (1, spatial[0]) if conv.rank == 1 else spatial
    geometry = (height, width, tuple(notes), taps or conv.rank == 1)

    def plane(offset: int) -> Sequence[float]:
        """Tile pixels of one place in the last two axes."""
        return flat[start + offset:start + offset + (pixels - 1) * block + 1:block]

    if _is_depthwise(layer, variable):
        # (k..., in, multiplier): output c*multiplier + m is input c's filter m, at c*multiplier + m.
        if options.input_channel is not None or options.reduce is not None:
            raise ConvSurgeonError(
                f"{label}: each tile of a depthwise kernel is one input channel's filter already; "
                "drop --input-channel and --reduce"
            )
        if taps:
            shows = "one weight" if b == 1 else f"one weight (row c*{b}+m: input channel c's filter m)"
            return _tiles([plane(t) for t in range(block)], 1, shows, *geometry, filters="output channels",
                          cells="taps")
        shows = "input channel i's filter (tile i)" if b == 1 else f"input channel c's filter m (tile c*{b}+m)"
        return _tiles([plane(t) for t in range(block)], 1, shows, *geometry)
    transpose = conv.kind == "transpose"
    filters, channels = (a, b) if transpose else (b, a)
    cells = "taps" if taps else ""

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
                      f"input channel {options.input_channel} of {channels}", *geometry, cells=cells)
    if options.reduce == "l2":
        return _tiles(reduced(lambda run: math.sqrt(sum(map(operator.mul, run, run)))), 1,
                      f"the L2 norm over {channels} input channels", *geometry, cells=cells)
    if channels == 3 and options.reduce is None:
        return _tiles([_interleaved([plane(at(c, f)) for c in range(3)]) for f in range(filters)], 3,
                      "the 3 input channels as R, G, B", *geometry, cells=cells)
    if channels == 1:
        return _tiles([plane(at(0, f)) for f in range(filters)], 1, "its one input channel", *geometry, cells=cells)
    return _tiles(reduced(lambda run: sum(run) / channels), 1, f"the mean over {channels} input channels",
                  *geometry, cells=cells)


def matrix_rows(layer: Layer, variable: Variable, kernel: Values, options: GridOptions) -> FilterTiles:
    """A 1x1 ``kernel`` as one row per filter of one weight per input channel (a tile 1
    high): the matrix the kernel is. Nothing is reduced, so --input-channel and --reduce
    have nothing to choose."""
    shape = kernel.shape
    spatial = _checked_spatial(layer, variable, shape)
    assert layer.conv is not None and math.prod(spatial) == 1
    if options.input_channel is not None or options.reduce is not None:
        raise ConvSurgeonError(
            f"layer '{layer.path}' {variable.name} {format_shape(shape)}: a 1x1 kernel is drawn as a matrix with "
            f"every input channel a row or column of its own; drop "
            f"{'--input-channel' if options.input_channel is not None else '--reduce'} (or add --kind tiles)"
        )
    flat, (a, b) = kernel.flat, shape[-2:]
    if _is_depthwise(layer, variable):  # (in, multiplier): multiplier slot m over the input channels
        return _tiles([flat[m::b] for m in range(b)], 1, "one weight (input channel c, slot m: output c*"
                      f"{b}+m)" if b > 1 else "one weight (input channel c's own)", 1, a, (), True,
                      filters="multiplier slots", cells="input channels")
    groups = int(layer.config.get("groups", 1) or 1) if layer.conv.kind == "conv" else 1
    notes = (f"groups={groups}: each filter reads the {a} input channels of its group",) if groups > 1 else ()
    cells = "input channels of the filter's group" if groups > 1 else "input channels"
    if layer.conv.kind == "transpose":  # (filters, in)
        return _tiles([flat[f * b:(f + 1) * b] for f in range(a)], 1, "one weight", 1, b, notes, True, cells=cells)
    return _tiles([flat[f::b] for f in range(b)], 1, "one weight", 1, a, notes, True, cells=cells)


def _tiles(values: Sequence[Sequence[float]], channels: int, shows: str, height: int, width: int,
           notes: tuple[str, ...], strip: bool, filters: str = "output filters", cells: str = "") -> FilterTiles:
    return FilterTiles(tuple(values), height, width, channels, shows, notes, strip, filters, cells)


def _interleaved(planes: list[Sequence[float]]) -> list[float]:
    """R, G, B planes as one pixel after another: r0, g0, b0, r1, ..."""
    out = [0.0] * (len(planes) * len(planes[0]))
    for c, plane in enumerate(planes):
        out[c::len(planes)] = plane
    return out


def tile_scales(sets: Sequence[FilterTiles], scale: Scale | None) -> tuple[list[float], ...]:
    """The value drawn at full colour, per set of tiles drawn side by side (A, B, A - B)
    and per tile: the largest finite ``|value|`` of the whole layer over every set
    (``layer``, the default: one scale for all), of the tile over every set (``each``: A,
    B and A - B share each filter's scale), or of the set (``panel``: each its own).
    0 where everything is 0."""
    largest = [[max(map(abs, filter(math.isfinite, values)), default=0.0) for values in tiles.values]
               for tiles in sets]
    count = sets[0].count
    if scale == "each":
        shared = [max((per_tile[i] for per_tile in largest), default=0.0) for i in range(count)]
        return tuple(list(shared) for _ in sets)
    if scale == "panel":
        return tuple([max(per_tile, default=0.0)] * count for per_tile in largest)
    overall = max((m for per_tile in largest for m in per_tile), default=0.0)
    return tuple([overall] * count for _ in sets)


def count_nonfinite(tiles: FilterTiles) -> int:
    """Pixels drawn in the non-finite colour."""
    count = 0
    for tile in tiles.values:
        if all(map(math.isfinite, tile)):
            continue
        finite = list(map(math.isfinite, tile))
        count += sum(not all(finite[i:i + tiles.channels]) for i in range(0, len(finite), tiles.channels))
    return count
