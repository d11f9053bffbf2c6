"""A filter grid as terminal text: two pixels per character cell, sized to the width.

Each cell is the upper half block '▀' with the top pixel as its foreground colour and
the bottom pixel as its background colour (24-bit where the terminal says it can,
xterm's 256 colours otherwise). The gaps between tiles are the terminal's own
background, and the labels are ordinary text, so the grid reads in any colour scheme.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..instruments.show import ShowData
from .colours import Colour, diverging, linspace
from .options import GridOptions
from .picture import colour_bar_labels, grid_header, grid_sets, legend_lines, number, tile_colours
from .tiles import FilterTiles

Raster = list[list[Colour]]  # rows of pixels

GAP = 1  # columns between tiles
LARGEST_TILE = 10  # pixels: a small kernel is blown up to at most this many a side
COLOUR_BAR = 24  # cells, at most
RESET = "\x1b[0m"
UPPER, LOWER = "\u2580", "\u2584"


def terminal_picture(data: ShowData, options: GridOptions, *, width: int, truecolor: bool) -> str:
    """The filter grid of ``data`` as lines for a terminal ``width`` columns wide.

    The model, the other model and their difference (``against``) are stacked; tiles
    per row are fewer than ``options`` asks when they would not fit.
    """
    options.check(data.histograms)
    grid = grid_sets(data, options)
    lines = grid_header(data, grid)
    for index, tiles in enumerate(grid.sets):
        if grid.titles:
            lines.append(grid.titles[index])
        lines += _tile_rows(tile_colours(tiles, grid.scales), tiles, options.tiles_per_row, width, truecolor)
    if not grid.sets[0].colour:
        length = min(COLOUR_BAR, width)
        bar = [diverging(x) for x in linspace(-1.0, 1.0, length)]
        lines += half_blocks([bar, bar], [[True] * length] * 2, truecolor)
        low, high = colour_bar_labels(grid, options.per_filter)
        lines.append(low + "0".center(max(1, length - len(low) - len(high))) + high)
    lines += legend_lines(grid, options.per_filter, "listed below")
    if options.per_filter:
        lines.append("largest |value| per tile: " + ", ".join(
            f"{i} ±{number(m)}" for i, m in enumerate(grid.scales)))
    return "\n".join(lines) + "\n"


def _tile_rows(coloured: list[bytes], tiles: FilterTiles, columns: int, width: int, truecolor: bool) -> list[str]:
    """Rows of tiles (RGB bytes of ``tiles``' size), each under a line of their filter indices."""
    count, height, tile_width = tiles.count, tiles.height, tiles.width
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
    return lines


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
