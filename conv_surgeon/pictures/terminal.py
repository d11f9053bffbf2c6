"""A kernel's picture as terminal text: two pixels per character cell, fitted to the width.

Each cell is the upper half block '▀' with the top pixel as its foreground colour and
the bottom pixel as its background colour (24-bit where the terminal says it can,
xterm's 256 colours otherwise). The gaps between tiles are the terminal's own
background, and the labels are ordinary text, so the picture reads in any colour scheme.

No line is wider than the terminal: text is wrapped, tiles per row are fewer, a heat map
is turned so that its shorter side runs across when the longer does not fit, and what
still does not fit is left out, with a line that says what was shown.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from ..instruments.show import ShowData
from .canvas import tick_step
from .colours import Colour, diverging, linspace
from .options import GridOptions
from .picture import (KernelSets, colour_bar_labels, heat_rows, kernel_header, kernel_sets, legend_lines, number,
                      panel_titles, tile_colours)
from .tiles import FilterTiles

Raster = list[list[Colour]]  # rows of pixels

GAP = 1  # columns between tiles
LARGEST_TILE = 10  # pixels: a small kernel is blown up to at most this many a side
LARGEST_MAP = 24  # pixels: a small heat map is blown up to at most this many a side
MAP_ROWS = 512  # pixels (256 lines): a heat map's rows beyond these are left out
COLOUR_BAR = 24  # cells, at most
RESET = "\x1b[0m"
UPPER, LOWER = "\u2580", "\u2584"


def terminal_picture(data: ShowData, options: GridOptions, *, width: int, truecolor: bool) -> str:
    """The picture of ``data``'s kernel as lines for a terminal ``width`` columns wide.

    The model, the other model and their difference (``against``) are stacked; tiles
    per row are fewer than ``options`` asks when they would not fit.
    """
    options.check(data.histograms, data.against is not None)
    width = max(1, width)
    sets = kernel_sets(data, options)
    lines = wrapped(kernel_header(data, sets), width)
    left_out: list[str] = []
    titles = panel_titles(sets, options)
    for index, tiles in enumerate(sets.sets):
        if titles:
            lines += wrapped([titles[index]], width)
        if sets.kind == "tiles":
            drawn, missing = _tile_rows(tile_colours(tiles, sets.scales[index]), tiles, options.tiles_per_row, width,
                                        truecolor)
        else:
            drawn, missing = _heat_map(sets, index, width, truecolor)
        lines += drawn
        left_out += [line for line in missing if line not in left_out]
    if not sets.sets[0].colour:
        length = min(COLOUR_BAR, width)
        bar = [diverging(x) for x in linspace(-1.0, 1.0, length)]
        lines += half_blocks([bar, bar], [[True] * length] * 2, truecolor)
        low, high = colour_bar_labels(sets, options)
        scale = low + "0".center(max(1, length - len(low) - len(high))) + high
        lines += [scale] if len(scale) <= width else wrapped([f"{low} 0 {high}"], width)
    lines += wrapped(legend_lines(sets, options, "listed below"), width)
    if options.per_filter:
        one = "tile" if sets.kind == "tiles" else "filter"
        lines += wrapped([f"largest |value| per {one}: " + ", ".join(
            f"{i} ±{number(m)}" for i, m in enumerate(sets.scales[0]))], width)
    lines += wrapped(left_out, width)
    return "\n".join(lines) + "\n"


def wrapped(lines: Sequence[str], width: int) -> list[str]:
    """Text lines wrapped to ``width`` columns (long words, such as paths, broken too)."""
    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, width, break_on_hyphens=False) or [""]
    return out


def _tile_rows(coloured: list[bytes], tiles: FilterTiles, columns: int, width: int,
               truecolor: bool) -> tuple[list[str], list[str]]:
    """Rows of tiles (RGB bytes of ``tiles``' size), each under a line of their filter
    indices, and what was left out: a tile wider than the terminal is cut."""
    count, height, tile_width = tiles.count, tiles.height, tiles.width
    missing = []
    if tile_width > width:  # not one tile fits: each keeps its first columns
        coloured = [b"".join(tile[3 * y * tile_width:3 * (y * tile_width + width)] for y in range(height))
                    for tile in coloured]
        missing.append(f"shown: {'taps' if tiles.strip else 'columns'} 0-{width - 1} of {tile_width} of each "
                       "tile; use -o FILE.png for all")
        tile_width = width
    label_width = len(str(count - 1))
    columns = min(columns, count)
    room = ((width + GAP) // columns - GAP) // tile_width  # the factor at which a row fills the width
    factor = max(1, min(LARGEST_TILE // max(height, tile_width), room))
    cell = max(tile_width * factor, label_width)
    while columns > 1 and columns * (cell + GAP) - GAP > width:
        columns -= 1
    rows_per_pixel = max(factor, 2) if tiles.strip else factor
    scaled = [[[_pixel(tile, y * tile_width + x) for x in range(tile_width) for _ in range(factor)]
               for y in range(height) for _ in range(rows_per_pixel)] for tile in coloured]
    tile_height = len(scaled[0]) + len(scaled[0]) % 2  # whole character rows
    lines = []
    for start in range(0, count, columns):
        chunk = scaled[start:start + columns]
        line_width = len(chunk) * (cell + GAP) - GAP
        raster: Raster = [[(0, 0, 0)] * line_width for _ in range(tile_height)]
        drawn = [[False] * line_width for _ in range(tile_height)]
        labels = ""
        for i, tile in enumerate(chunk):
            left = i * (cell + GAP)
            for y, row in enumerate(tile):
                raster[y][left:left + len(row)] = row
                drawn[y][left:left + len(row)] = [True] * len(row)
            labels += str(start + i).ljust(cell + GAP)
        lines.append(labels.rstrip())
        lines += half_blocks(raster, drawn, truecolor)
    return lines, missing


def _heat_map(sets: KernelSets, index: int, width: int, truecolor: bool) -> tuple[list[str], list[str]]:
    """Set ``index`` of a heat map (matrix or taps) as lines: a ruler of column indices
    above, row indices on the left, each weight a square block; turned when only its
    shorter side fits across, and cut where even that does not fit."""
    (rows, columns), ((_, row_axis), (_, column_axis)) = sets.cells, sets.axes
    grid = [[_pixel(row, x) for x in range(columns)] for row in heat_rows(sets, index)]
    turned = columns > width - _gutter(rows) and rows < columns
    if turned:
        grid = [list(column) for column in zip(*grid)]
        rows, columns, row_axis, column_axis = columns, rows, column_axis, row_axis
    gutter = _gutter(rows)
    room = max(1, width - gutter)
    shown_columns = min(columns, room)
    factor = max(1, min(LARGEST_MAP // max(rows, columns), room // shown_columns))
    shown_rows = min(rows, max(1, MAP_ROWS // factor))
    raster = [[colour for colour in row[:shown_columns] for _ in range(factor)]
              for row in grid[:shown_rows] for _ in range(factor)]
    if len(raster) % 2:
        raster.append([(0, 0, 0)] * len(raster[0]))
    drawn = [[True] * len(raster[0]) for _ in range(shown_rows * factor)]
    drawn += [[False] * len(raster[0]) for _ in range(len(raster) - len(drawn))]
    step = tick_step(factor, 8)  # a label every 4 lines or more, on the line where its row starts
    labelled = {row * factor // 2: str(row) for row in range(0, shown_rows, step)}
    pixel_lines = half_blocks(raster, drawn, truecolor)
    lines = [f"rows: the {row_axis}; columns: the {column_axis}" + (" (turned to fit)" if turned else "")]
    lines = wrapped(lines, width)
    lines.append(_ruler(shown_columns, factor, gutter, width))
    lines += [labelled.get(i, "").rjust(gutter - 1) + " " + line for i, line in enumerate(pixel_lines)]
    cut = [f"{name} 0-{shown - 1} of {total}" for name, shown, total in
           ((row_axis, shown_rows, rows), (column_axis, shown_columns, columns)) if shown < total]
    missing = [f"shown: {', '.join(cut)}; use -o FILE.png for all"] if cut else []
    return lines, missing


def _gutter(rows: int) -> int:
    """Columns left of a heat map: its largest row index and a blank."""
    return len(str(rows - 1)) + 1


def _ruler(columns: int, factor: int, gutter: int, width: int) -> str:
    """Column indices above a heat map, each over its column's first cell, never closer
    than a blank apart."""
    step = tick_step(factor, len(str(columns - 1)) + 1)
    line = " " * gutter
    for column in range(0, columns, step):
        at, label = gutter + column * factor, str(column)
        if at + len(label) > width:
            break
        line = line.ljust(at) + label
    return line.rstrip()


def _pixel(data: bytes, index: int) -> Colour:
    return data[3 * index], data[3 * index + 1], data[3 * index + 2]


def half_blocks(pixels: Raster, drawn: Sequence[Sequence[bool]], truecolor: bool) -> list[str]:
    """Rows of ``pixels`` (an even number of them) as half as many lines of half blocks;
    pixels not ``drawn`` are left to the terminal's background."""
    codes = [[f"2;{r};{g};{b}" if truecolor else f"5;{xterm256((r, g, b))}" for r, g, b in row] for row in pixels]
    lines = []
    for top in range(0, len(pixels), 2):
        line, foreground, background = [], "", ""
        for x in range(len(pixels[top])):
            upper, lower = drawn[top][x], drawn[top + 1][x]
            if upper:
                fg, bg, glyph = codes[top][x], codes[top + 1][x] if lower else "", UPPER
            elif lower:
                fg, bg, glyph = codes[top + 1][x], "", LOWER
            else:
                fg, bg, glyph = foreground, "", " "  # a blank shows the background only
            if fg != foreground:
                line.append(f"\x1b[38;{fg}m" if fg else "\x1b[39m")
            if bg != background:
                line.append(f"\x1b[48;{bg}m" if bg else "\x1b[49m")
            foreground, background = fg, bg
            line.append(glyph)
        # Blanks at the end of a line are only ever written on the default background.
        lines.append(("".join(line).rstrip(" ") + (RESET if foreground or background else "")))
    return lines


_CUBE = (0, 95, 135, 175, 215, 255)


def xterm256(pixel: Colour) -> int:
    """The nearest of xterm's 256 colours to ``pixel``: the 6x6x6 cube (16-231) or the
    grey ramp (232-255), whichever is closer."""
    levels = [_nearest_level(v) for v in pixel]
    cube_error = sum((v - _CUBE[level]) ** 2 for v, level in zip(pixel, levels))
    grey = min(23, max(0, round((sum(pixel) / 3 - 8) / 10)))
    grey_error = sum((v - (8 + 10 * grey)) ** 2 for v in pixel)
    return 232 + grey if grey_error < cube_error else 16 + 36 * levels[0] + 6 * levels[1] + levels[2]


def _nearest_level(value: int) -> int:
    """The cube's level nearest ``value`` (the lower one on a tie)."""
    return min(range(len(_CUBE)), key=lambda i: abs(value - _CUBE[i]))
