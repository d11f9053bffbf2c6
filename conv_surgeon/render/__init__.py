"""Results for people (rich tables) and for programs (one JSON object): the only code that
prints. :func:`render_report` is the one entry for every instrument's report.

- :mod:`.text`: the console, tables, JSON, errors and the progress line;
- :mod:`.reading`: `inspect`, `diff`, what `get` wrote, `show`'s pictures;
- :mod:`.writing`: `set`, `apply`, `fold-bn`, `equalize`, `prune`, `port`, ending in the part they share;
- :mod:`.notebook`: what the Python API returns, as a short repr and as HTML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO, Union

from .reading import (
    diff_document,
    inspect_document,
    print_terminal_picture,
    render_diff,
    render_export,
    render_inspect,
    render_picture,
)
from .text import (
    ProgressLine,
    console,
    plural,
    print_json,
    print_json_schema,
    print_line,
    progress_callback,
    progress_on_terminal,
    render_error,
    render_traceback,
)
from .writing import (equalize_document, fold_document, port_document, print_equalize, print_fold, print_port, print_prune, print_set,
                      prune_document, set_document)

if TYPE_CHECKING:
    from ..instruments.diff import DiffReport
    from ..instruments.equalize import EqualizeReport
    from ..instruments.fold import FoldReport
    from ..instruments.port import PortReport
    from ..instruments.prune import PruneReport
    from ..instruments.reading import InspectReport
    from ..instruments.set_weights import SetReport

Report = Union["InspectReport", "DiffReport", "SetReport", "FoldReport", "EqualizeReport", "PruneReport", "PortReport"]

__all__ = [
    "ProgressLine", "Report", "console", "diff_document", "fold_document", "inspect_document", "plural",
    "port_document", "print_json", "print_json_schema", "print_line", "print_terminal_picture", "progress_callback",
    "progress_on_terminal", "prune_document", "render_diff", "render_error", "render_export", "render_inspect",
    "render_picture", "render_report", "render_traceback", "set_document",
]


def render_report(report: Report, *, json_output: bool = False, stream: TextIO | None = None) -> None:
    """Print any instrument's report on ``stream`` (stdout by default): one JSON object
    with ``json_output``, else tables."""
    document, tables = _renderers(report)
    if json_output:
        print_json(document(report), stream)
    else:
        tables(report, stream)


def _renderers(report: Report) -> tuple[Callable[[Any], dict[str, Any]], Callable[[Any, TextIO | None], None]]:
    """The JSON document and the tables of ``report``'s kind, by its class's name: this
    package never imports the instruments, which reach Keras."""
    kinds: dict[str, tuple[Callable[[Any], dict[str, Any]], Callable[[Any, TextIO | None], None]]] = {
        "InspectReport": (inspect_document, render_inspect),
        "DiffReport": (diff_document, render_diff),
        "SetReport": (set_document, print_set),
        "FoldReport": (fold_document, print_fold),
        "EqualizeReport": (equalize_document, print_equalize),
        "PruneReport": (prune_document, print_prune),
        "PortReport": (port_document, print_port),
    }
    kind = type(report).__name__
    if kind not in kinds:
        raise TypeError(f"no renderer for a {kind}")
    return kinds[kind]
