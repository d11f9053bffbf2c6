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
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import MAX_LISTED_PROBLEMS, write_error

if TYPE_CHECKING:
    # rich is imported when a console is first made (26 ms): `show -o` and `get` print
    # one plain line and never need it.
    from rich.console import Console
    from rich.table import Table


SCHEMA_VERSION = 1


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class _Console(Console):
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
    keep: bool = True  # shapes, numbers, classes: never wrapped, never cut
    right: bool = False


# A column that may fold (paths, sources, config) keeps at least this many characters
# before the table is allowed to run past the console's width.
_FOLDED_MIN = 4


def _table(columns: Sequence[Column], rows: Sequence[Sequence[str]], compact: bool) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True) if compact else Table()
    for column in columns:
        table.add_column(column.header, no_wrap=column.keep, overflow="ellipsis" if column.keep else "fold",
                         justify="right" if column.right else "left")
    for row in rows:
        table.add_row(*row)
    return table


def print_table(out: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """A table whose kept columns are never cut.

    When the boxed table is wider than the console, a compact one without the outer box
    is printed instead, and the other columns fold to make room; when even that is not
    enough, the table runs past the width (the terminal wraps it) rather than lose a
    digit of a shape.
    """

    add_table = getattr(out.file, "add_table", None)
    if add_table is not None:  # a notebook's HTML page (.notebook) takes the table as it is
        add_table(columns, rows)
        return
    from rich.cells import cell_len

    def widest(index: int) -> int:
        texts = [columns[index].header] + [row[index] for row in rows]
        return max(cell_len(line) for text in texts for line in text.split("\n"))

    widths = [widest(i) for i in range(len(columns))]
    width = out.width
    # The boxed table: a border and two spaces of padding around each cell.
    compact = sum(widths) + 3 * len(columns) + 1 > width
    # The compact one: two characters between columns, nothing at the edges.
    needed = 2 * (len(columns) - 1) + sum(
        w if column.keep else min(w, _FOLDED_MIN) for w, column in zip(widths, columns)
    )
    table = _table(columns, rows, compact)
    if compact and needed > width:
        out.width = needed
    try:
        out.print(table)
    finally:
        out.width = width


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

