"""What `show` draws: a kernel's filter grid, or variables' histograms, as one RGB image.

:func:`draw_picture` turns what :func:`conv_surgeon.instruments.show.read_shown` read into a
:class:`Picture`: the pixels, and for every variable drawn the numbers the picture
shows (its statistics, the scale of its colours), so that a program can check what a
person sees.

A filter grid is drawn without numpy, which only its statistics (``statistics=True``)
and histograms need: most of a small grid's time would be numpy's import.
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
from ..instruments.show import ShowData, ShownVariable
from ..model.naming import format_shape
from ..store.fileio import refuse_overwriting, write_atomically
from .canvas import LINE_HEIGHT, Block, Box, Labelled, Pixels, Stack, Text, TileGrid, paint, text_width
from .colours import DIM, NONFINITE, TEXT, diverging, linspace, rgb
from .histogram import BINS, bar_pixels, column_of, histogram, value_range
from .options import GridOptions
from .tiles import FilterTiles, count_nonfinite, filter_tiles, tile_scales

if TYPE_CHECKING:
    import numpy as np

PictureKind = Literal["grid", "histograms"]

TILE_PIXELS = 48  # a tile's longer side, at least: a 3x3 kernel is drawn 48x48
STRIP_HEIGHT = 12  # a 1-D kernel's row is at least this tall
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
    tiles: int | None = None  # filter grid: one tile per output filter
    shows: str | None = None  # filter grid: what a tile is
    scale: float | None = None  # filter grid: the |value| drawn at full colour (per filter: the largest)
    tile_scales: tuple[float, ...] | None = None  # with scale="each": each tile's
    # Filter grid: each tile's (x, y, width, height) in the image, for the model's tiles
    # and with --against for the other model's and the difference's (crop with them).
    tile_boxes: tuple[tuple[Box, ...], ...] | None = None
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
    """The picture of ``data``: a filter grid of its one kernel, or its histograms.
    ``statistics=False`` leaves a grid's variable statistics out (``stats`` None):
    they are the only part of a grid that needs numpy."""
    options = options or GridOptions()
    options.check(data.histograms)
    if data.histograms:
        root, drawn = _histograms(data)
        image = paint(root)
    else:
        root, grids, one = _grid(data, options, statistics)
        image = paint(root)
        drawn = (replace(one, tile_boxes=tuple(grid.boxes() for grid in grids)),)
    return Picture(image.tobytes(), image.width, image.height, "histograms" if data.histograms else "grid",
                   data.source, data.against, drawn)


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


# --- the filter grid -------------------------------------------------------------------------


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
class GridSets:
    """The tiles a filter grid draws: the model's, and with ``against`` the other model's
    and their difference (A - B), all on one scale."""

    sets: tuple[FilterTiles, ...]
    titles: tuple[str, ...]  # one per set; empty for a single set
    scales: list[float]  # the |value| drawn at full colour, per tile

    @property
    def scale(self) -> float:
        return max(self.scales, default=0.0)

    @property
    def nonfinite(self) -> int:
        return sum(count_nonfinite(tiles) for tiles in self.sets)


def grid_sets(data: ShowData, options: GridOptions) -> GridSets:
    shown = data.shown[0]
    layer, variable = shown.layer, shown.variable
    sets = [filter_tiles(layer, variable, shown.value, options)]
    titles: tuple[str, ...] = ()
    if shown.against is not None and shown.difference is not None:
        sets += [filter_tiles(layer, variable, shown.against, options),
                 filter_tiles(layer, variable, shown.difference, options)]
        titles = (f"A: {data.source}", f"B: {data.against}", "A - B")
    return GridSets(tuple(sets), titles, tile_scales(sets, options.per_filter))


def grid_header(data: ShowData, grid: GridSets) -> list[str]:
    """The lines above a filter grid: what is drawn, and what each tile shows."""
    layer, variable = data.shown[0].layer, data.shown[0].variable
    first = grid.sets[0]
    return [f"{data.source}: layer '{layer.path}' ({layer.class_name}) {variable.name} "
            f"{format_shape(variable.shape)} {variable.dtype}",
            f"{first.count} tiles, one per output filter; each shows {first.shows}", *first.notes]


def legend_lines(grid: GridSets, per_filter: bool, tile_scales_where: str) -> list[str]:
    """What the colours of a filter grid mean, and the range they span."""
    reach = f"each tile's own largest |value| ({tile_scales_where})" if per_filter else f"±{number(grid.scale)}"
    of_layer = "" if per_filter else " (scale of the layer)"
    if grid.sets[0].colour:
        lines = [f"colour: input channels 0, 1, 2 as R, G, B; grey is 0, full colour is {reach}{of_layer}"]
    else:
        lines = [f"blue < 0 < red, 0 is white; full colour is {reach}{of_layer}"]
    if grid.scale == 0:
        lines.append("every value drawn is 0")
    if grid.nonfinite:
        lines.append(f"{grid.nonfinite} non-finite pixels (NaN or inf), drawn magenta")
    return lines


def colour_bar_labels(grid: GridSets, per_filter: bool) -> tuple[str, str]:
    return ("-max", "+max") if per_filter else (f"-{number(grid.scale)}", f"+{number(grid.scale)}")


def _grid(data: ShowData, options: GridOptions, statistics: bool) -> tuple[Block, list[TileGrid], DrawnVariable]:
    """The picture's blocks, its tile grids (model; with against: against, difference)
    and what it draws; the tiles' boxes are known once it is painted."""
    grid = grid_sets(data, options)
    captions = [f"±{number(m)}" for m in grid.scales] if options.per_filter else []
    factor, rows = upscaling(grid.sets[0])
    grids = [TileGrid(upscaled(tile_colours(tiles, grid.scales), tiles.width, tiles.height, factor, rows),
                      tiles.width * factor, tiles.height * rows, [str(i) for i in range(tiles.count)],
                      captions, columns=options.tiles_per_row) for tiles in grid.sets]
    blocks: list[Block] = [Stack([Text([title]), tiles], gap=2) for title, tiles in zip(grid.titles, grids)] \
        if grid.titles else list(grids)
    first = grid.sets[0]
    legend: list[Block] = []
    if not first.colour:
        width, height = COLOUR_BAR
        low, high = colour_bar_labels(grid, options.per_filter)
        bar = bytes(channel for x in linspace(-1.0, 1.0, width) for channel in diverging(x)) * height
        labels = [(0, height + 1, low, TEXT), (width // 2 - 3, height + 1, "0", TEXT),
                  (width - text_width(high), height + 1, high, TEXT)]
        legend.append(Labelled(Pixels(bar, width, height), labels, extra_height=LINE_HEIGHT + 1))
    legend.append(Text(legend_lines(grid, options.per_filter, "written under it")))
    root = Stack([Text(grid_header(data, grid)), Stack(blocks, across=True, gap=PANEL_GAP),
                  Stack(legend, gap=4)], gap=SECTION_GAP)
    described = _described(data.shown[0], _sides(data.shown[0]) if statistics else None)
    drawn = replace(described, tiles=first.count, shows=first.shows, scale=grid.scale,
                    tile_scales=tuple(grid.scales) if options.per_filter else None, notes=first.notes)
    return root, grids, drawn


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
