"""Laying out a picture: blocks of text and pixels, stacked, then painted with Pillow.

Every block knows its size before anything is painted, so the canvas is made once at
its final size. Pixels are RGB bytes, row by row (no numpy). Text uses Pillow's built-in
bitmap font (6x11 pixels, Latin-1): nothing is downloaded or looked up on the system,
and the pixels are the same on every machine. Pillow is imported only here, and only
when a picture is painted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .colours import BACKGROUND, DIM, TEXT, Colour

if TYPE_CHECKING:
    from PIL import Image

Box = tuple[int, int, int, int]  # x, y, width, height

CHAR_WIDTH = 6  # the bitmap font is monospaced
LINE_HEIGHT = 11
MARGIN = 8  # around the whole picture
TILE_GAP = 6  # between the tiles of a grid


def text_width(text: str) -> int:
    return len(text) * CHAR_WIDTH


def latin1(text: str) -> str:
    """``text`` as the bitmap font can draw it: characters outside Latin-1 become ``?``."""
    return text.encode("latin-1", "replace").decode("latin-1")


class Painter:
    """A Pillow image with the font, for blocks to paint on."""

    def __init__(self, width: int, height: int) -> None:
        from PIL import Image, ImageDraw, ImageFont

        self.image = Image.new("RGB", (width, height), BACKGROUND)
        self._draw = ImageDraw.Draw(self.image)
        self._font = ImageFont.load_default_imagefont()
        self._image_module = Image

    def text(self, x: int, y: int, text: str, colour: Colour = TEXT) -> None:
        self._draw.text((x, y), latin1(text), font=self._font, fill=colour)

    def pixels(self, x: int, y: int, width: int, height: int, pixels: bytes | bytearray) -> None:
        self.image.paste(self._image_module.frombytes("RGB", (width, height), bytes(pixels)), (x, y))


class Block(ABC):
    width: int
    height: int

    @abstractmethod
    def paint(self, painter: Painter, x: int, y: int) -> None: ...


@dataclass
class Text(Block):
    lines: Sequence[str]
    colour: Colour = TEXT
    min_width: int = 0

    def __post_init__(self) -> None:
        self.width = max([self.min_width, *(text_width(line) for line in self.lines)])
        self.height = LINE_HEIGHT * len(self.lines)

    def paint(self, painter: Painter, x: int, y: int) -> None:
        for i, line in enumerate(self.lines):
            painter.text(x, y + i * LINE_HEIGHT, line, self.colour)


@dataclass
class Pixels(Block):
    data: bytes  # RGB, row by row
    width: int
    height: int

    def __post_init__(self) -> None:
        assert len(self.data) == 3 * self.width * self.height, "pixels of another size"

    def paint(self, painter: Painter, x: int, y: int) -> None:
        painter.pixels(x, y, self.width, self.height, self.data)


@dataclass
class Labelled(Block):
    """Pixels with text laid over them at given offsets (a histogram's counts, a colour
    bar's numbers below it)."""

    under: Block
    labels: Sequence[tuple[int, int, str, Colour]]  # (x, y, text, colour), relative
    extra_height: int = 0  # room below ``under`` that the labels use

    def __post_init__(self) -> None:
        self.width = max([self.under.width, *(x + text_width(t) for x, _, t, _ in self.labels)])
        self.height = self.under.height + self.extra_height

    def paint(self, painter: Painter, x: int, y: int) -> None:
        self.under.paint(painter, x, y)
        for dx, dy, text, colour in self.labels:
            painter.text(x + dx, y + dy, text, colour)


@dataclass
class Stack(Block):
    """Blocks one below the other (``across=False``) or side by side, ``gap`` apart."""

    blocks: Sequence[Block]
    across: bool = False
    gap: int = 6

    def __post_init__(self) -> None:
        spans = [b.width if self.across else b.height for b in self.blocks]
        depths = [b.height if self.across else b.width for b in self.blocks]
        length = sum(spans) + self.gap * max(0, len(self.blocks) - 1)
        self.width, self.height = (length, max(depths, default=0)) if self.across else (max(depths, default=0), length)

    def paint(self, painter: Painter, x: int, y: int) -> None:
        for block in self.blocks:
            block.paint(painter, x, y)
            if self.across:
                x += block.width + self.gap
            else:
                y += block.height + self.gap


@dataclass
class TileGrid(Block):
    """Equal tiles in rows of ``columns``, each with a label above and an optional
    caption below, ``gap`` pixels apart: the gap is the background, always visible."""

    tiles: Sequence[bytes]  # each RGB, row by row, tile_width x tile_height
    tile_width: int
    tile_height: int
    labels: Sequence[str]
    captions: Sequence[str] = ()
    columns: int = 8
    gap: int = TILE_GAP
    _pitch: tuple[int, int] = field(default=(0, 0), init=False)
    _placed: tuple[int, int] | None = field(default=None, init=False)  # where it was painted

    def __post_init__(self) -> None:
        n, tile_height, tile_width = len(self.tiles), self.tile_height, self.tile_width
        texts = [*self.labels, *self.captions]
        cell_width = max([tile_width, *(text_width(t) for t in texts)])
        cell_height = LINE_HEIGHT + 1 + tile_height + (1 + LINE_HEIGHT if self.captions else 0)
        columns = min(self.columns, n)
        rows = -(-n // self.columns)
        self._pitch = (cell_width + self.gap, cell_height + self.gap)
        self.width = columns * cell_width + (columns - 1) * self.gap
        self.height = rows * cell_height + (rows - 1) * self.gap

    def origin(self, index: int) -> tuple[int, int]:
        """Where tile ``index``'s pixels start, relative to the grid."""
        row, column = divmod(index, self.columns)
        return column * self._pitch[0], row * self._pitch[1] + LINE_HEIGHT + 1

    def boxes(self) -> tuple[Box, ...]:
        """Each tile's ``(x, y, width, height)`` in the painted picture."""
        assert self._placed is not None, "boxes() of a grid not painted yet"
        x, y = self._placed
        return tuple((x + left, y + top, self.tile_width, self.tile_height)
                     for left, top in map(self.origin, range(len(self.tiles))))

    def paint(self, painter: Painter, x: int, y: int) -> None:
        self._placed = (x, y)
        raster = bytearray(bytes(BACKGROUND) * (self.width * self.height))
        tile_height, row = self.tile_height, 3 * self.tile_width
        for index, tile in enumerate(self.tiles):
            left, top = self.origin(index)
            for line in range(tile_height):
                at = 3 * ((top + line) * self.width + left)
                raster[at:at + row] = tile[line * row:(line + 1) * row]
        painter.pixels(x, y, self.width, self.height, raster)
        for index, label in enumerate(self.labels):
            left, top = self.origin(index)
            painter.text(x + left, y + top - LINE_HEIGHT - 1, label)
            if self.captions:
                painter.text(x + left, y + top + tile_height + 1, self.captions[index])


TICK = 3  # a tick mark's length, pixels


def tick_step(pitch: int, room: int) -> int:
    """The first of 1, 2, 5, 10, 20, 50, ... whose span (``step * pitch`` pixels) holds
    ``room`` pixels: every ``step``-th index is labelled, and labels never overlap."""
    scale = 1
    while True:
        for step in (scale, 2 * scale, 5 * scale):
            if step * pitch >= room:
                return step
        scale *= 10


@dataclass
class HeatMap(Block):
    """A heat map: ``rows`` x ``columns`` cells, each a block of ``cell_width`` x
    ``cell_height`` pixels, with the index of every few columns above it and of every
    few rows to its left, each at a tick mark on the cell's centre."""

    data: bytes  # RGB, row by row: columns * cell_width wide, rows * cell_height high
    rows: int
    columns: int
    cell_width: int
    cell_height: int
    _placed: tuple[int, int] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.map_width, self.map_height = self.columns * self.cell_width, self.rows * self.cell_height
        assert len(self.data) == 3 * self.map_width * self.map_height, "pixels of another size"
        self.column_step = tick_step(self.cell_width, text_width(str(self.columns - 1)) + CHAR_WIDTH)
        self.row_step = tick_step(self.cell_height, LINE_HEIGHT + 1)
        self.left = text_width(str(self.rows - 1)) + 2 + TICK + 1  # labels, a gap, the marks, a gap
        self.top = LINE_HEIGHT + 1 + TICK + 1
        ends = [x + text_width(label) for x, label in self._column_labels()]
        self.width = max([self.left + self.map_width, *ends])
        self.height = self.top + self.map_height + LINE_HEIGHT // 2  # the last row's label may reach below

    def _column_labels(self) -> list[tuple[int, str]]:
        """(x, label) of each labelled column, the label centred on its tick."""
        return [(self._column_centre(c) - text_width(str(c)) // 2, str(c))
                for c in range(0, self.columns, self.column_step)]

    def _column_centre(self, column: int) -> int:
        return self.left + column * self.cell_width + self.cell_width // 2

    def box(self) -> Box:
        """The cells' ``(x, y, width, height)`` in the painted picture."""
        assert self._placed is not None, "box() of a heat map not painted yet"
        x, y = self._placed
        return x + self.left, y + self.top, self.map_width, self.map_height

    def paint(self, painter: Painter, x: int, y: int) -> None:
        self._placed = (x, y)
        painter.pixels(x + self.left, y + self.top, self.map_width, self.map_height, self.data)
        mark_across, mark_down = bytes(DIM) * TICK, bytes(DIM) * TICK
        for (left, label), column in zip(self._column_labels(), range(0, self.columns, self.column_step)):
            painter.text(x + left, y, label)
            painter.pixels(x + self._column_centre(column), y + LINE_HEIGHT + 1, 1, TICK, mark_down)
        for row in range(0, self.rows, self.row_step):
            centre = self.top + row * self.cell_height + self.cell_height // 2
            label = str(row)
            painter.pixels(x + self.left - 1 - TICK, y + centre, TICK, 1, mark_across)
            painter.text(x + self.left - 1 - TICK - 2 - text_width(label), y + centre - LINE_HEIGHT // 2, label)


def paint(root: Block) -> Image.Image:
    """The picture of ``root``, with a margin around it."""
    painter = Painter(root.width + 2 * MARGIN, root.height + 2 * MARGIN)
    root.paint(painter, MARGIN, MARGIN)
    return painter.image

