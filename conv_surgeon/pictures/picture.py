"""What `show` draws: a kernel's picture (its filters as tiles, a 1x1 kernel as a matrix,
a 1-D kernel as taps), or variables' histograms, as one RGB image.

:func:`draw_picture` turns what :func:`conv_surgeon.instruments.show.read_shown` read into a
:class:`Picture`: the pixels, and for every variable drawn the numbers the picture
shows (its statistics, the scale of its colours), so that a program can check what a
person sees.

A kernel's picture is drawn without numpy, which only its statistics (``statistics=True``)
and histograms need: most of a small grid's time would be numpy's import.

Every weight of a heat map (matrix, taps) is a block of at least one pixel, blown up by
a whole factor (at most :data:`MAX_BLOCK`) while its sides stay within :data:`MAP_PIXELS`
(the panels of --against share its height); weights are never merged, so a matrix of more
than that many channels is as many pixels across.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import UsageError
from ..instruments.reading import VariableStats, variable_stats
from ..instruments.show import ShowData, ShownVariable, Values
from ..model.naming import format_shape
from ..store.fileio import refuse_overwriting, write_atomically
from .canvas import (LINE_HEIGHT, TILE_GAP, Block, Box, HeatMap, Labelled, Pixels, Stack, Text, TileGrid, paint,
                     text_width)
from .colours import DIM, NONFINITE, TEXT, diverging, linspace, rgb
from .histogram import BINS, bar_pixels, column_of, histogram, value_range
from .options import DEFAULT_COLUMNS, GridOptions, Kind
from .tiles import FilterTiles, count_nonfinite, filter_tiles, kernel_kind, matrix_rows, tile_scales

if TYPE_CHECKING:
    import numpy as np

PictureKind = Literal["tiles", "matrix", "taps", "histograms"]

TILE_PIXELS = 48  # a tile's longer side, at least: a 3x3 kernel is drawn 48x48
STRIP_HEIGHT = 12  # a 1-D kernel's row is at least this tall
MAP_PIXELS = 1024  # a heat map's side, at most, when its weights are blown up
MAX_BLOCK = 16  # a heat map's weight is at most this many pixels a side
MAX_WIDTH = 2000  # panels wider than this side by side are stacked; default tiles per row fit it
COLOUR_BAR = (144, 10)  # width, height
PLOT = (BINS * 4, 64)  # a histogram's bars: width, height
SECTION_GAP = 10  # between the parts of a picture
PANEL_GAP = 16  # between side-by-side panels (A, B, difference; variables)


@dataclass(frozen=True)
class DrawnVariable:
    """One variable in a picture, with the numbers the picture shows of it."""

    layer: str  # the layer's path
    class_name: str
    variable: str
    shape: tuple[int, ...]
    dtype: str
    stats: VariableStats | None  # of the model's values: range, zeros, non-finite (None: not asked for)
    against_stats: VariableStats | None = None  # of the --against model's values
    difference_stats: VariableStats | None = None  # of model - against
    kind: Kind | None = None  # a kernel's picture: tiles, matrix or taps (None: histograms)
    axes: tuple[tuple[str, str], ...] = ()  # a kernel's picture: ("rows", "input channels"), ...
    tiles: int | None = None  # tiles: one per output filter
    shows: str | None = None  # a kernel's picture: what a tile, or a heat map's cell, is
    scale: float | None = None  # a kernel's picture: the |value| drawn at full colour (the largest drawn)
    tile_scales: tuple[float, ...] | None = None  # with scale="each": each tile's (heat map: each filter's)
    panel_scales: tuple[float, ...] | None = None  # with scale="panel": A's, B's, A - B's
    # Tiles: each tile's (x, y, width, height) in the image, for the model's tiles
    # and with --against for the other model's and the difference's (crop with them).
    tile_boxes: tuple[tuple[Box, ...], ...] | None = None
    cells: tuple[int, int] | None = None  # heat map: (rows, columns) of weights
    cell_size: tuple[int, int] | None = None  # heat map: a weight's block, (width, height) pixels
    map_boxes: tuple[Box, ...] | None = None  # heat map: the cells' box, per panel (model, against, difference)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Picture:
    """A drawn picture: ``pixels`` are its RGB bytes, row by row; ``image`` is the same
    as a ``(height, width, 3)`` uint8 array.

    In a notebook the picture shows itself (``_repr_png_``).
    """

    pixels: bytes
    width: int
    height: int
    kind: PictureKind
    source: str
    against: str | None
    variables: tuple[DrawnVariable, ...]

    @property
    def image(self) -> np.ndarray:
        """The pixels as a ``(height, width, 3)`` uint8 array (a new one each time)."""
        import numpy as np

        return np.frombuffer(self.pixels, dtype=np.uint8).reshape(self.height, self.width, 3).copy()

    def png(self) -> bytes:
        """The image as PNG bytes."""
        return png_bytes(self.pixels, self.width, self.height)

    def _repr_png_(self) -> bytes:
        return self.png()


def png_bytes(pixels: bytes, width: int, height: int) -> bytes:
    """RGB bytes, row by row, as a PNG file: 8-bit truecolour, no interlace,
    filter 0 on every row, zlib level 6 (Pillow's default). Half the time of Pillow's
    saver (8 ms against 15 ms for ResNet50's first-layer grid), and as small: the flat
    tiles and gaps compress as well without per-row filters."""
    stride = 3 * width
    rows = b"".join(b"\0" + pixels[y * stride:(y + 1) * stride] for y in range(height))  # filter type 0

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6))
            + chunk(b"IEND", b""))


def check_picture_path(output: str | os.PathLike[str], protected: list[str | None]) -> None:
    """A picture goes to a ``.png`` file that is none of the models it shows."""
    path = os.fspath(output)
    for model in protected:
        refuse_overwriting(path, model, "-o")
    if not path.lower().endswith(".png"):
        raise UsageError(f"-o {path}: show writes PNG images; name the file .png (or - for stdout)")


def write_png(picture: Picture, output: str | os.PathLike[str]) -> None:
    """Write the picture atomically (a reader never sees half a file)."""
    data = picture.png()
    write_atomically(Path(output), lambda handle: handle.write(data))


def draw_picture(data: ShowData, options: GridOptions | None = None, *, statistics: bool = True) -> Picture:
    """The picture of ``data``: its one kernel as tiles, a matrix or taps, or its
    histograms. ``statistics=False`` leaves a kernel's variable statistics out (``stats``
    None): they are the only part of a kernel's picture that needs numpy."""
    options = options or GridOptions()
    options.check(data.histograms, data.against is not None)
    if data.histograms:
        root, drawn = _histograms(data)
        image = paint(root)
        kind: PictureKind = "histograms"
    else:
        root, panels, one = _kernel_picture(data, options, statistics)
        image = paint(root)
        kind = one.kind or "tiles"
        if kind == "tiles":
            drawn = (replace(one, tile_boxes=tuple(p.boxes() for p in panels if isinstance(p, TileGrid))),)
        else:
            drawn = (replace(one, map_boxes=tuple(p.box() for p in panels if isinstance(p, HeatMap))),)
    return Picture(image.tobytes(), image.width, image.height, kind, data.source, data.against, drawn)


def number(x: float) -> str:
    """A number as pictures write it: three significant digits."""
    return f"{x:.3g}"


def _sides(shown: ShownVariable) -> list[tuple[str, np.ndarray, VariableStats]]:
    """The model's values ("A"), and with ``against`` the other's ("B") and "A - B", each
    as numpy with its statistics."""
    values = [("A", shown.value)]
    if shown.against is not None and shown.difference is not None:
        values += [("B", shown.against), ("A - B", shown.difference)]
    return [(side, array, variable_stats(array)) for side, array in ((s, v.numpy()) for s, v in values)]


def _described(shown: ShownVariable, sides: list[tuple[str, np.ndarray, VariableStats]] | None) -> DrawnVariable:
    stats = [side[2] for side in sides] if sides else [None]
    against, difference = (stats[1], stats[2]) if len(stats) == 3 else (None, None)
    return DrawnVariable(shown.layer.path, shown.layer.class_name, shown.variable.name, shown.variable.shape,
                         shown.variable.dtype, stats[0], against, difference)


# --- a kernel's picture -----------------------------------------------------------------------


def upscaled(tiles: list[bytes], width: int, height: int, factor: int, rows: int) -> list[bytes]:
    """RGB tiles ``width`` x ``height`` blown up with nearest neighbours: each weight a
    block ``factor`` pixels wide and ``rows`` tall."""
    stride = 3 * width
    return [b"".join(b"".join(tile[at:at + 3] * factor for at in range(y * stride, (y + 1) * stride, 3)) * rows
                     for y in range(height)) for tile in tiles]


def upscaling(tiles: FilterTiles) -> tuple[int, int]:
    """(factor, rows): how wide and tall a weight of ``tiles`` is drawn in a picture."""
    factor = max(1, math.ceil(TILE_PIXELS / max(tiles.height, tiles.width)))
    return factor, max(factor, STRIP_HEIGHT) if tiles.strip else factor


def tile_colours(tiles: FilterTiles, scales: list[float]) -> list[bytes]:
    """Each tile as RGB bytes: its values over its scale (1 where the scale is 0, so
    zeros stay 0) in the diverging map, or as R, G, B."""
    coloured = []
    for values, scale in zip(tiles.values, scales):
        divisor = scale if scale > 0 else 1.0
        if tiles.colour:
            pixels = [rgb(values[i] / divisor, values[i + 1] / divisor, values[i + 2] / divisor)
                      for i in range(0, len(values), 3)]
        else:
            pixels = [diverging(v / divisor) for v in values]
        coloured.append(bytes(channel for pixel in pixels for channel in pixel))
    return coloured


@dataclass(frozen=True)
class KernelSets:
    """What a kernel's picture draws: the model's tiles (or heat-map rows, one per
    filter), and with ``against`` the other model's and their difference (A - B)."""

    kind: Kind
    sets: tuple[FilterTiles, ...]
    titles: tuple[str, ...]  # one per set; empty for a single set
    scales: tuple[list[float], ...]  # per set, per tile: the |value| drawn at full colour
    across: bool  # a heat map whose filters run across (its columns); else a row per filter

    @property
    def scale(self) -> float:
        return max((m for per_set in self.scales for m in per_set), default=0.0)

    @property
    def panel_scales(self) -> list[float]:
        return [max(per_set, default=0.0) for per_set in self.scales]

    @property
    def nonfinite(self) -> int:
        return sum(count_nonfinite(tiles) for tiles in self.sets)

    @property
    def cells(self) -> tuple[int, int]:
        """A heat map's (rows, columns) as drawn."""
        first = self.sets[0]
        return (first.width, first.count) if self.across else (first.count, first.width)

    @property
    def axes(self) -> tuple[tuple[str, str], ...]:
        """What the picture's axes are, for people and --json."""
        first = self.sets[0]
        if self.kind != "tiles":
            names = (first.cells, first.filters) if self.across else (first.filters, first.cells)
            return tuple(zip(("rows", "columns"), names))
        return (("tiles", first.filters),) + (
            (("columns", "k"),) if first.strip else (("rows", "kh"), ("columns", "kw")))


def kernel_sets(data: ShowData, options: GridOptions) -> KernelSets:
    shown = data.shown[0]
    layer, variable = shown.layer, shown.variable
    kind = kernel_kind(layer, variable, shown.value.shape, options.kind)
    if kind != "tiles" and options.columns is not None:
        raise UsageError(f"--columns {options.columns} sets tiles per row, and layer '{layer.path}' "
                         f"{variable.name} {format_shape(variable.shape)} is drawn as {_kind_name(kind)}: drop "
                         "--columns, or add --kind tiles")

    def cut(values: Values) -> FilterTiles:
        if kind == "matrix":
            return matrix_rows(layer, variable, values, options)
        return filter_tiles(layer, variable, values, options, taps=kind == "taps")

    sets = [cut(shown.value)]
    titles: tuple[str, ...] = ()
    if shown.against is not None and shown.difference is not None:
        sets += [cut(shown.against), cut(shown.difference)]
        titles = (f"A: {data.source}", f"B: {data.against}", "A - B")
    first = sets[0]
    across = kind == "matrix" and first.count >= first.width  # the longer axis across, filters on a tie
    return KernelSets(kind, tuple(sets), titles, tile_scales(sets, options.scale), across)


def _kind_name(kind: Kind) -> str:
    return {"tiles": "tiles", "matrix": "a matrix", "taps": "taps"}[kind]


def kernel_header(data: ShowData, sets: KernelSets) -> list[str]:
    """The lines above a kernel's picture: what is drawn, and what each tile or cell shows."""
    layer, variable = data.shown[0].layer, data.shown[0].variable
    first = sets.sets[0]
    if sets.kind == "tiles":
        what = f"{first.count} tiles, one per output filter; each shows {first.shows}"
    else:
        (_, row_axis), (_, column_axis) = sets.axes
        rows, columns = sets.cells
        what = (f"{_kind_name(sets.kind)}: {rows} rows ({row_axis}) by {columns} columns ({column_axis}); "
                f"each cell shows {first.shows}")
    return [f"{data.source}: layer '{layer.path}' ({layer.class_name}) {variable.name} "
            f"{format_shape(variable.shape)} {variable.dtype}", what, *first.notes]


def panel_titles(sets: KernelSets, options: GridOptions) -> list[str]:
    """A, B and A - B, each with its own scale when each panel has one."""
    if not options.per_panel:
        return list(sets.titles)
    return [f"{title} (±{number(scale)})" for title, scale in zip(sets.titles, sets.panel_scales)]


def legend_lines(sets: KernelSets, options: GridOptions, own_scales_where: str) -> list[str]:
    """What the colours of a kernel's picture mean, and the range they span."""
    one = "tile" if sets.kind == "tiles" else "filter"
    if options.per_filter:
        reach = f"each {one}'s own largest |value| ({own_scales_where})"
    elif options.per_panel:
        reach = "each panel's own largest |value| (written by its title)"
    else:
        reach = f"±{number(sets.scale)}"
    of_layer = "" if options.per_filter or options.per_panel else " (scale of the layer)"
    if sets.sets[0].colour:
        lines = [f"colour: input channels 0, 1, 2 as R, G, B; grey is 0, full colour is {reach}{of_layer}"]
    else:
        lines = [f"blue < 0 < red, 0 is white; full colour is {reach}{of_layer}"]
    if sets.scale == 0:
        lines.append("every value drawn is 0")
    if sets.nonfinite:
        lines.append(f"{sets.nonfinite} non-finite pixels (NaN or inf), drawn magenta")
    return lines


def colour_bar_labels(sets: KernelSets, options: GridOptions) -> tuple[str, str]:
    if options.per_filter or options.per_panel:
        return "-max", "+max"
    return f"-{number(sets.scale)}", f"+{number(sets.scale)}"


def heat_rows(sets: KernelSets, index: int) -> list[bytes]:
    """Set ``index`` as rows of RGB cells, as drawn: a row per filter, or with
    ``across`` a row per cell (a column per filter)."""
    coloured = tile_colours(sets.sets[index], sets.scales[index])
    if not sets.across:
        return coloured
    return [b"".join(filter_row[at:at + 3] for filter_row in coloured) for at in range(0, len(coloured[0]), 3)]


def heat_blocks(sets: KernelSets) -> tuple[int, int]:
    """(width, height) of a weight's block in a heat map: the largest whole factors that
    keep each side within MAP_PIXELS (at least 1, at most MAX_BLOCK); with --against the
    panels' heights share it, as wide panels are stacked. A matrix's blocks are square; a
    row of taps may be taller than a tap is wide, so that each filter reads."""
    rows, columns = sets.cells
    width = max(1, min(MAX_BLOCK, MAP_PIXELS // columns))
    height = max(1, min(MAX_BLOCK, MAP_PIXELS // len(sets.sets) // rows))
    if sets.kind == "matrix":
        width = height = min(width, height)
    return width, height


def _panels(sets: KernelSets, options: GridOptions) -> list[TileGrid] | list[HeatMap]:
    """The model's panel, and with against the other model's and the difference's."""
    if sets.kind != "tiles":
        (rows, columns), (width, height) = sets.cells, heat_blocks(sets)
        return [HeatMap(upscaled([b"".join(heat_rows(sets, index))], columns, rows, width, height)[0], rows, columns,
                        width, height) for index in range(len(sets.sets))]
    first = sets.sets[0]
    factor, rows = upscaling(first)
    fitting = max(1, (MAX_WIDTH + TILE_GAP) // (first.width * factor + TILE_GAP))  # tiles a row of MAX_WIDTH holds
    columns = options.columns or min(DEFAULT_COLUMNS, fitting)
    captions = [[f"±{number(m)}" for m in scales] if options.per_filter else [] for scales in sets.scales]
    return [TileGrid(upscaled(tile_colours(tiles, scales), tiles.width, tiles.height, factor, rows),
                     tiles.width * factor, tiles.height * rows, [str(i) for i in range(tiles.count)],
                     caption, columns=columns) for tiles, scales, caption in zip(sets.sets, sets.scales, captions)]


def _kernel_picture(data: ShowData, options: GridOptions,
                    statistics: bool) -> tuple[Block, list[TileGrid] | list[HeatMap], DrawnVariable]:
    """The picture's blocks, its panels (model; with against: against, difference) and
    what it draws; the panels' boxes are known once it is painted."""
    sets = kernel_sets(data, options)
    panels = _panels(sets, options)
    blocks: list[Block] = [Stack([Text([title]), panel], gap=2)
                           for title, panel in zip(panel_titles(sets, options), panels)] \
        if sets.titles else list(panels)
    side_by_side = sum(block.width for block in blocks) + PANEL_GAP * (len(blocks) - 1) <= MAX_WIDTH
    first = sets.sets[0]
    legend: list[Block] = []
    if not first.colour:
        width, height = COLOUR_BAR
        low, high = colour_bar_labels(sets, options)
        bar = bytes(channel for x in linspace(-1.0, 1.0, width) for channel in diverging(x)) * height
        labels = [(0, height + 1, low, TEXT), (width // 2 - 3, height + 1, "0", TEXT),
                  (width - text_width(high), height + 1, high, TEXT)]
        legend.append(Labelled(Pixels(bar, width, height), labels, extra_height=LINE_HEIGHT + 1))
    where = "written under it" if sets.kind == "tiles" else "filter_ranges in --json"
    legend.append(Text(legend_lines(sets, options, where)))
    root = Stack([Text(kernel_header(data, sets)), Stack(blocks, across=side_by_side, gap=PANEL_GAP),
                  Stack(legend, gap=4)], gap=SECTION_GAP)
    described = _described(data.shown[0], _sides(data.shown[0]) if statistics else None)
    drawn = replace(described, kind=sets.kind, axes=sets.axes, shows=first.shows, scale=sets.scale,
                    tile_scales=tuple(sets.scales[0]) if options.per_filter else None,
                    panel_scales=tuple(sets.panel_scales) if options.per_panel else None, notes=first.notes)
    if sets.kind == "tiles":
        drawn = replace(drawn, tiles=first.count)
    else:
        drawn = replace(drawn, cells=sets.cells, cell_size=heat_blocks(sets))
    return root, panels, drawn


# --- histograms ------------------------------------------------------------------------------


def _histograms(data: ShowData) -> tuple[Block, tuple[DrawnVariable, ...]]:
    rows: list[tuple[str, list[Block]]] = []
    drawn: list[DrawnVariable] = []
    for shown in data.shown:
        sides = _sides(shown)
        drawn.append(_described(shown, sides))
        if not rows or rows[-1][0] != shown.layer.path:
            rows.append((shown.layer.path, []))
        name = f"{shown.variable.name} {format_shape(shown.variable.shape)}"
        if len(sides) == 1:
            _, values, stats = sides[0]
            rows[-1][1].append(_histogram_panel(name, values, stats, value_range([stats])))
            continue
        shared = value_range([stats for side, _, stats in sides if side != "A - B"])  # A and B: one axis
        rows[-1][1].extend(_histogram_panel(f"{name} {side}", values, stats,
                                            value_range([stats]) if side == "A - B" else shared)
                           for side, values, stats in sides)
    classes = {s.layer.path: s.layer.class_name for s in data.shown}
    labels = [[path, f"({classes[path]})"] for path, _ in rows]
    label_width = max(text_width(line) for lines in labels for line in lines)
    body = [Stack([Text(lines, min_width=label_width), *panels], across=True, gap=PANEL_GAP)
            for lines, (_, panels) in zip(labels, rows)]
    against = f"; A: the model, B: {data.against}" if data.against else ""
    header = Text([f"{data.source}: weight histograms, {BINS} bins over each variable's finite range{against}",
                   "bars blue < 0 < red; zeros and non-finite values (NaN, inf) counted on each plot"])
    return Stack([header, *body], gap=SECTION_GAP), tuple(drawn)


def _histogram_panel(title: str, values: np.ndarray, stats: VariableStats, bounds: tuple[float, float]) -> Block:
    hist = histogram(values, bounds)
    width, height = PLOT
    bars = bar_pixels(hist, width, height, headroom=LINE_HEIGHT + 4)
    counts = f"zeros {stats.zeros}  non-finite {stats.nonfinite}"
    below = height + 1
    low, high = number(hist.low), number(hist.high)
    labels = [(3, 2, counts, NONFINITE if stats.nonfinite else TEXT), (0, below, low, DIM),
              (width - text_width(high), below, high, DIM)]
    if hist.low < 0 < hist.high:
        zero = column_of(0.0, hist, width)
        if text_width(low) + 6 < zero < width - text_width(high) - 12:
            labels.append((zero - 3, below, "0", DIM))
    return Stack([Text([title]), Labelled(Pixels(bars, width, height), labels, extra_height=LINE_HEIGHT + 1)], gap=2)
