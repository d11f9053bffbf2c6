"""Printing for people and programs: the console, tables that fold only what may fold,
JSON, errors and the progress line. The render package is the only code that prints."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

from ..errors import MAX_LISTED_PROBLEMS, write_error

if TYPE_CHECKING:
    # rich is imported when a console is first made (26 ms): `show -o` and `get` print
    # one plain line and never need it.
    from rich.console import Console


SCHEMA_VERSION = 1


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class _Console(Console):
        def print(self, *objects: Any, **options: Any) -> None:
            # A line of text wraps where a table cell would (:func:`wrap`): rich would cut
            # a word wider than the console, a long path, into pieces.
            if len(objects) == 1 and isinstance(objects[0], str) and not options:
                text = "\n".join(wrap(objects[0], self.width))
                options = {"no_wrap": True, "overflow": "ignore", "crop": False}
                objects = (text,)
            super().print(*objects, **options)

        def on_broken_pipe(self) -> None:
            # The reader went away (`| head`): stop quietly with the pipe's status, as
            # other filters do, instead of rich's generic exit 1.
            self.quiet = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(141)

    return _Console


def console(stream: TextIO | None = None) -> Console:
    """A console on ``stream``. Paths and layer names are data, never rich markup.

    The width is ``COLUMNS`` when set (as ``ls`` reads it), else the terminal's; off a
    terminal, lines are as long as the table needs (logs and pipes cut nothing). Output
    is plain text, without colour or bold, off a terminal and whenever ``NO_COLOR`` is set
    (rich itself drops only the colours for ``NO_COLOR``).
    """
    stream = stream or sys.stdout
    is_tty = stream.isatty()
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else (None if is_tty else 100_000)
    plain = not is_tty or os.environ.get("NO_COLOR", "") != ""
    # In a notebook rich would display what it prints itself, past ``stream``: a report's
    # HTML page (.notebook) would stay empty.
    return _console_class()(file=stream, width=width, highlight=False, markup=False, emoji=False,
                    soft_wrap=False, color_system=None if plain else "auto", force_jupyter=False)


def print_line(text: str, stream: TextIO | None = None) -> None:
    """One line of plain text (stderr by default): what a command wrote, a note. No
    console needed, so no rich import for commands that say only this much."""
    out = stream or sys.stderr
    out.write(text + "\n")
    out.flush()


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 convolution layer``, ``3 convolution layers``, ``1,234 parameters``."""
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count:,} {word}"


@dataclass(frozen=True)
class Column:
    header: str
    keep: bool = True  # shapes, numbers, classes: a table never wraps their lines
    right: bool = False


# Where a cell may break: at a space, after a '/' (a path folds after each '/') and after
# the ':' before a key (bundle.npz:conv1/kernel); never inside brackets, so a shape like
# (3, 3, 32, 64) stays whole, nor before an arrow ("(32,) ->" ends a line, "-> (31,)" never
# starts one). Names, numbers (3,538,984, 12:30) and shapes are never cut.
_OPENING, _CLOSING = "([{", ")]}"


def _pieces(line: str) -> list[tuple[str, str]]:
    """One line as its unbreakable pieces, each with the spaces that follow it."""
    pieces: list[tuple[str, str]] = []
    token, depth, i = "", 0, 0
    while i < len(line):
        char = line[i]
        if char == " " and depth == 0 and not line.startswith("->", i + 1):
            end = i
            while end < len(line) and line[end] == " ":
                end += 1
            pieces.append((token, line[i:end]))
            token, i = "", end
            continue
        token += char
        if char in _OPENING:
            depth += 1
        elif char in _CLOSING:
            depth = max(0, depth - 1)
        elif depth == 0 and i + 1 < len(line) and (char == "/" and line[i + 1] != " " or char == ":" and (
                line[i + 1] not in " 0123456789")):
            pieces.append((token, ""))
            token = ""
        i += 1
    if token:
        pieces.append((token, ""))
    return pieces


def _cell_len(text: str) -> int:
    from rich.cells import cell_len

    return cell_len(text)


def longest_piece(text: str) -> int:
    """The width of the longest part of ``text`` that may not be broken."""
    return max((_cell_len(token) for line in text.split("\n") for token, _ in _pieces(line)), default=0)


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``, broken only where :func:`_pieces` allows;
    a piece wider than ``width`` has a line of its own, whole."""
    lines = []
    for line in text.split("\n"):
        current, spaces = "", ""
        for token, after in _pieces(line):
            if current and _cell_len(current + spaces + token) > width:
                lines.append(current)
                current = token
            else:
                current += spaces + token
            spaces = after
        lines.append(current)
    return lines


Layout = Literal["boxed", "compact", "stacked"]


@dataclass(frozen=True)
class TableFit:
    """How a table is printed in a width: ``boxed`` (the full box, nothing wraps),
    ``compact`` (no outer box; folding columns wrap to ``widths``) or ``stacked`` (one
    record per block: even the narrowest table would not fit)."""

    layout: Layout
    widths: tuple[int, ...]  # each column's width, without padding


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> TableFit:
    """Choose the layout of a table in ``width`` columns.

    A kept column needs its widest line; a folding column can shrink to its longest
    unbreakable piece (header included), but a cell of several lines is a list (one
    variable, one change a line) and keeps each line whole. The compact table takes two
    characters between columns; when it is too wide, the widest folding column gives a
    character at a time.
    """
    def widest(text: str) -> int:
        return max(_cell_len(line) for line in text.split("\n"))

    natural = [max(widest(text) for text in (column.header, *(row[i] for row in rows)))
               for i, column in enumerate(columns)]
    # The boxed table: a border and two spaces of padding around each cell.
    if sum(natural) + 3 * len(columns) + 1 <= width:
        return TableFit("boxed", tuple(natural))
    least = [natural[i] if column.keep else max(
        longest_piece(column.header), *(widest(row[i]) if "\n" in row[i] else longest_piece(row[i]) for row in rows))
        for i, column in enumerate(columns)]
    room = width - 2 * (len(columns) - 1)
    if sum(least) > room:
        return TableFit("stacked", tuple(natural))
    widths = list(natural)
    for _ in range(sum(widths) - room):
        shrinking = max((i for i in range(len(widths)) if widths[i] > least[i]), key=lambda i: widths[i])
        widths[shrinking] -= 1
    return TableFit("compact", tuple(widths))


def stacked_lines(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[tuple[str, str]]:
    """The table as records, one per row, as ``(label, value)`` lines.

    ``layer: conv1`` opens a record and the other cells follow, indented, their values
    aligned (``  class:   Conv2D``); a blank line ends each record. Empty cells are left
    out; a row whose first cell is empty, or the same as the row's above, continues the
    record above it. A value wraps
    where a table cell would; one with a piece too wide to sit beside its label starts on
    the next line, and only a piece wider than ``width`` runs past it. A run of four or
    more short kept cells (a row of statistics) is written as ``min: -0.2  max: 0.2 ...``
    pairs side by side, as many to a line as fit.
    """
    labels = [f"{columns[0].header}: "] + [f"  {column.header}: " for column in columns[1:]]
    records: list[tuple[bool, list[tuple[list[tuple[str, str, bool]], bool]]]] = []
    previous = None
    for row in rows:
        opens = bool(row[0]) and row[0] != previous  # the same first cell again continues the record
        previous = row[0] or previous
        cells = [(label, cell, i > 0 and columns[i].keep and "\n" not in cell)
                 for i, (label, cell) in enumerate(zip(labels, row)) if cell and (i > 0 or opens)]
        records.append((opens, list(_runs(cells))))
    indent = max([_cell_len(labels[0])] + [_cell_len(label) for _, runs in records for run, together in runs
                                            if not together for label, _, _ in run])
    lines: list[tuple[str, str]] = []
    for opens, runs in records:
        if opens and lines:
            lines.append(("", ""))
        for run, together in runs:
            if together:
                lines.extend(("  ", line) for line in _flow([f"{label.strip()} {cell}" for label, cell, _ in run],
                                                             width - 2))
                continue
            for label, cell, _ in run:
                _field(lines, label, cell, indent, width)
    if lines:
        lines.append(("", ""))
    return lines


# A record's run of at least this many short kept cells (a row of statistics) is written
# as `label: value` pairs side by side, not one line each.
_FLOWING_CELLS = 4


def _runs(cells: list[tuple[str, str, bool]]) -> Iterator[tuple[list[tuple[str, str, bool]], bool]]:
    """The cells in runs: whether each run is long enough, and short enough, to flow."""
    start = 0
    while start < len(cells):
        end = start + 1
        while end < len(cells) and cells[end][2] == cells[start][2]:
            end += 1
        run = cells[start:end]
        yield run, run[0][2] and len(run) >= _FLOWING_CELLS
        start = end


def _flow(pairs: list[str], width: int) -> list[str]:
    """Pairs side by side, two spaces apart, as many to a line as fit (a pair wider than
    the width has a line of its own)."""
    lines: list[str] = []
    for pair in pairs:
        if lines and _cell_len(lines[-1]) + 2 + _cell_len(pair) <= width:
            lines[-1] += "  " + pair
        else:
            lines.append(pair)
    return lines


def _field(lines: list[tuple[str, str]], label: str, cell: str, indent: int, width: int) -> None:
    """One cell of a record, its value aligned at ``indent`` and wrapped where a table
    cell would."""
    longest = longest_piece(cell)
    if longest <= width - indent:
        values = wrap(cell, width - indent)
        lines.append((label.ljust(indent), values[0]))
        lines.extend((" " * indent, value) for value in values[1:])
    else:
        below = max(0, min(indent, width - longest))
        lines.append((label.rstrip(), ""))
        lines.extend((" " * below, value) for value in wrap(cell, width - below))

def print_table(out: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """A table in the console's width that never cuts a name, a number or a shape.

    The boxed table when it fits; else a compact one without the outer box, whose folding
    columns (paths, sources, config) wrap at spaces and after '/' (:func:`fit_table`); else,
    when even that cannot fit, one record per block (:func:`stacked_lines`).
    """
    add_table = getattr(out.file, "add_table", None)
    if add_table is not None:  # a notebook's HTML page (.notebook) takes the table as it is
        add_table(columns, rows)
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    fit = fit_table(columns, rows, out.width)
    if fit.layout == "stacked":
        for label, value in stacked_lines(columns, rows, out.width):
            out.print(Text.assemble((label, "bold"), value), no_wrap=True, overflow="ignore", crop=False)
        return
    if fit.layout == "boxed":
        table = Table()
        for column in columns:
            table.add_column(column.header, no_wrap=True, justify="right" if column.right else "left")
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
        for column, width in zip(columns, fit.widths):
            table.add_column(column.header if column.keep else "\n".join(wrap(column.header, width)), width=width,
                             no_wrap=True, justify="right" if column.right else "left")
    for row in rows:
        table.add_row(*(cell if column.keep or fit.layout == "boxed" else "\n".join(wrap(cell, width))
                        for cell, column, width in zip(row, columns, fit.widths)))
    out.print(table)


def print_json(document: dict[str, Any], stream: TextIO | None = None) -> None:
    """One JSON object, data at the top level and the schema version beside it."""
    out = stream or sys.stdout
    out.write(json.dumps({"schema": SCHEMA_VERSION, **document}, indent=2, default=json_default))
    out.write("\n")


def print_json_schema(schema: dict[str, Any], stream: TextIO | None = None) -> None:
    """A JSON Schema as it is: it is a document of its own, not one of ours."""
    out = stream or sys.stdout
    out.write(json.dumps(schema, indent=2))
    out.write("\n")


def json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def finite_or_none(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def render_error(message: str, exit_code: int, *, json_stream: TextIO | None = None,
                 problems: Sequence[str] = (), label: str = "Error") -> None:
    """One line on stderr; in JSON mode also one JSON object on ``json_stream``."""
    write_error(f"{label}: {message}\n")
    if json_stream is not None:
        document: dict[str, Any] = {"error": message if label == "Error" else f"{label}: {message}",
                                    "exit_code": int(exit_code)}
        if problems:
            document["problems"] = list(problems[:MAX_LISTED_PROBLEMS])
            document["problem_count"] = len(problems)
        print_json(document, json_stream)


def render_traceback(text: str) -> None:
    write_error(text if text.endswith("\n") else text + "\n")


# What runs after a step, for the steps that are followed by a long wait.
_NEXT_STEP = {"staged and read back": "smoke test: Keras loads the model and runs it"}


class ProgressLine:
    """One status line on a terminal, rewritten at each step: ``[3/22] checked conv1``.

    Called as the library's ``progress(done, total, step)``; :meth:`close` clears a line
    the last step did not end (a dry run stops before the write).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._open = False

    def start(self, what: str) -> None:
        self._write(f"\r\x1b[K{what}...")
        self._open = True

    def __call__(self, done: int, total: int, step: str) -> None:
        line = f"\r\x1b[K[{done}/{total}] {step}"
        if done < total and step in _NEXT_STEP:
            line += f"; {_NEXT_STEP[step]}..."
        self._open = done < total
        self._write(line if self._open else line + "\n")

    def close(self) -> None:
        if self._open:
            self._write("\r\x1b[K")
            self._open = False

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def progress_callback(stream: TextIO) -> ProgressLine:
    """A progress line on ``stream`` (see :class:`ProgressLine`)."""
    return ProgressLine(stream)


@contextmanager
def progress_on_terminal(stream: TextIO | None = None) -> Iterator[ProgressLine | None]:
    """A progress line while the block runs, only when ``stream`` (stderr) is a terminal.

    It writes to its own duplicate of the terminal's descriptor: TensorFlow's import and
    the smoke test point fd 2 at /dev/null to hide Keras's C++ chatter, and the line
    must stay visible through exactly those waits.
    """
    stream = stream or sys.stderr
    if not stream.isatty():
        yield None
        return
    stream.flush()
    with os.fdopen(os.dup(stream.fileno()), "w", encoding=stream.encoding or "utf-8",
                   errors="replace") as terminal:
        line = ProgressLine(terminal)
        line.start("reading the model and checking the edits")
        try:
            yield line
        finally:
            line.close()


def number_or_text(x: float | None) -> float | str | None:
    """JSON has no inf or NaN: write them as strings."""
    if x is None or x == x and abs(x) != float("inf"):
        return x
    return str(x)

