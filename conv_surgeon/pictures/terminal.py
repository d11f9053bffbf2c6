"""A filter grid as terminal text: two pixels per character cell, sized to the width.

Each cell is the upper half block '▀' with the top pixel as its foreground colour and
the bottom pixel as its background colour (24-bit where the terminal says it can,
xterm's 256 colours otherwise). The gaps between tiles are the terminal's own
background, and the labels are ordinary text, so the grid reads in any colour scheme.
"""

from __future__ import annotations

import numpy as np

from ..ops.show import ShowData
from .colours import diverging
from .options import GridOptions
from .picture import colour_bar_labels, grid_header, grid_sets, legend_lines, number, tile_colours
from .tiles import FilterTiles

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
        bar = diverging(np.linspace(-1.0, 1.0, length))[None].repeat(2, axis=0)
        lines += half_blocks(bar, np.ones(bar.shape[:2], dtype=bool), truecolor)
        low, high = colour_bar_labels(grid, options.per_filter)
        lines.append(low + "0".center(max(1, length - len(low) - len(high))) + high)
    lines += legend_lines(grid, options.per_filter, "listed below")
    if options.per_filter:
        lines.append("largest |value| per tile: " + ", ".join(
            f"{i} ±{number(m)}" for i, m in enumerate(grid.scales)))
    return "\n".join(lines) + "\n"


def _tile_rows(pixels: np.ndarray, tiles: FilterTiles, columns: int, width: int, truecolor: bool) -> list[str]:
    """Rows of tiles ``(n, h, w, 3)``, each under a line of their filter indices."""
    count, height, tile_width = (int(d) for d in pixels.shape[:3])
    label_width = len(str(count - 1))
    columns = min(columns, count)
    room = ((width + GAP) // columns - GAP) // tile_width  # the factor at which a row fills the width
    factor = max(1, min(LARGEST_TILE // max(height, tile_width), room))
    cell = max(tile_width * factor, label_width)
    while columns > 1 and columns * (cell + GAP) - GAP > width:
        columns -= 1
    rows_per_pixel = max(factor, 2) if tiles.strip else factor
    scaled = np.repeat(np.repeat(pixels, rows_per_pixel, axis=1), factor, axis=2)
    tile_height = scaled.shape[1] + scaled.shape[1] % 2  # whole character rows
    lines = []
    for start in range(0, count, columns):
        chunk = scaled[start:start + columns]
        raster = np.zeros((tile_height, len(chunk) * (cell + GAP) - GAP, 3), dtype=np.uint8)
        drawn = np.zeros(raster.shape[:2], dtype=bool)
        labels = ""
        for i, tile in enumerate(chunk):
            left = i * (cell + GAP)
            raster[:tile.shape[0], left:left + tile.shape[1]] = tile
            drawn[:tile.shape[0], left:left + tile.shape[1]] = True
            labels += str(start + i).ljust(cell + GAP)
        lines.append(labels.rstrip())
        lines += half_blocks(raster, drawn, truecolor)
    return lines


def half_blocks(pixels: np.ndarray, drawn: np.ndarray, truecolor: bool) -> list[str]:
    """``pixels`` ``(h, w, 3)`` (``h`` even) as ``h / 2`` lines of half blocks; pixels not
    ``drawn`` are left to the terminal's background."""
    codes = _truecolor_codes(pixels) if truecolor else _xterm256_codes(pixels)
    lines = []
    for top in range(0, pixels.shape[0], 2):
        line, foreground, background = [], "", ""
        for x in range(pixels.shape[1]):
            upper, lower = drawn[top, x], drawn[top + 1, x]
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


def _truecolor_codes(pixels: np.ndarray) -> list[list[str]]:
    """Per pixel, the colour part of an SGR code: ``2;R;G;B``."""
    return [[f"2;{r};{g};{b}" for r, g, b in row] for row in pixels.tolist()]


_CUBE = np.array([0, 95, 135, 175, 215, 255])


def xterm256(pixels: np.ndarray) -> np.ndarray:
    """The nearest of xterm's 256 colours to each pixel: the 6x6x6 cube (16-231) or the
    grey ramp (232-255), whichever is closer."""
    p = pixels.astype(np.int64)
    level = np.abs(p[..., None] - _CUBE).argmin(axis=-1)
    cube_error = ((p - _CUBE[level]) ** 2).sum(axis=-1)
    grey = np.clip(np.rint((p.mean(axis=-1) - 8) / 10), 0, 23).astype(np.int64)
    grey_error = ((p - (8 + 10 * grey)[..., None]) ** 2).sum(axis=-1)
    cube = 16 + 36 * level[..., 0] + 6 * level[..., 1] + level[..., 2]
    result: np.ndarray = np.where(grey_error < cube_error, 232 + grey, cube)
    return result


def _xterm256_codes(pixels: np.ndarray) -> list[list[str]]:
    return [[f"5;{n}" for n in row] for row in xterm256(pixels).tolist()]
