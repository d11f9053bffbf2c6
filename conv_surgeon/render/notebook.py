"""What the Python API hands out, as Python shows it: one short line for ``repr``, and in a
notebook the tables the command line prints, as HTML (``_repr_html_``).

The HTML comes from the same renderers as the command line: they print to a page
instead of a terminal, their lines become paragraphs and their tables
(:func:`~.text.print_table`) HTML tables. The classes (the instruments' reports, `show`'s
picture, `assign`'s assignments) sit below this package, so :mod:`conv_surgeon.api` gives
them these methods when it hands one out; like :func:`~conv_surgeon.render.render_report`,
this module knows them by their class's name.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..model.naming import format_shape
from .text import Column, plural

if TYPE_CHECKING:
    from ..edits.assign import Assignment
    from ..instruments.diff import DiffReport
    from ..instruments.equalize import EqualizeReport
    from ..instruments.fold import FoldReport
    from ..instruments.port import PortReport
    from ..instruments.prune import PruneReport
    from ..instruments.reading import InspectReport
    from ..instruments.set_weights import SetReport
    from ..instruments.writing import WriteReport
    from ..pictures.picture import Picture

# Characters of layer names a one-line summary shows before it says how many more there are.
_NAMES_ROOM = 60


def short_repr(value: Any) -> str:
    """``value`` in one short line: ``<SetReport out.keras: conv1 kernel (3, 3, 1, 4); smoke
    test passed; replaced=False>``."""
    kinds: dict[str, Callable[[Any], str]] = {
        "InspectReport": _inspect_line,
        "DiffReport": _diff_line,
        "SetReport": _set_line,
        "FoldReport": _fold_line,
        "EqualizeReport": _equalize_line,
        "PruneReport": _prune_line,
        "PortReport": _port_line,
        "Picture": _picture_line,
        "Assignment": _assignment_line,
    }
    kind = type(value).__name__
    if kind not in kinds:
        raise TypeError(f"no short repr for a {kind}")
    return f"<{kind} {kinds[kind](value)}>"


def report_html(report: Any) -> str:
    """The report as the command line prints it, as an HTML fragment: its lines, and its
    tables as ``<table>``."""
    from . import render_report

    page = _Page()
    render_report(report, stream=page)
    return page.html()


class _Page(io.StringIO):
    """A stream the renderers print on as on a file; :func:`~.text.print_table` hands it
    its tables whole (``add_table``) instead of drawing them."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[str] = []

    def add_table(self, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
        self._add_lines()
        head = "".join(f"<th{_align(c)}>{html.escape(c.header)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td{_align(c)}>{_cell(text)}</td>" for c, text in zip(columns, row)) + "</tr>"
            for row in rows
        )
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def html(self) -> str:
        self._add_lines()
        return '<div class="conv-surgeon">' + "".join(self._parts) + "</div>"

    def _add_lines(self) -> None:
        text = self.getvalue()
        self.seek(0)
        self.truncate()
        self._parts += [f"<p>{html.escape(line)}</p>" for line in text.splitlines() if line.strip()]


def _align(column: Column) -> str:
    return ' style="text-align: right"' if column.right else ' style="text-align: left"'


def _cell(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.split("\n"))


def _names(names: Sequence[str]) -> str:
    """As many names as fit a summary, then how many more: ``conv1, conv2, ... (+12)``."""
    shown: list[str] = []
    for name in names:
        if shown and sum(len(n) + 2 for n in shown) + len(name) > _NAMES_ROOM:
            break
        shown.append(name)
    rest = len(names) - len(shown)
    return ", ".join(shown) + (f", ... (+{rest})" if rest else "")


def _inspect_line(report: InspectReport) -> str:
    structure = report.structure
    every_layer = report.layers is structure.layers
    kind = plural(len(report.layers), "layer with weights", "layers with weights") if every_layer else plural(
        len(report.layers), "convolution layer")
    names = f" ({_names([layer.path for layer in report.layers])})" if report.layers else ""
    return (f"{report.source}: {structure.model_class}, {kind}{names}, "
            f"{plural(report.total_parameters, 'parameter')}")


def _diff_line(report: DiffReport) -> str:
    if report.identical:
        return f"{report.a} vs {report.b}: identical, {plural(len(report.layers), 'layer')}"
    differing = [layer.path for layer in report.layers if layer.status != "same"]
    line = f"{report.a} vs {report.b}: {len(differing)} of {plural(len(report.layers), 'layer')} " \
        f"{'differs' if len(differing) == 1 else 'differ'}" + (f" ({_names(differing)})" if differing else "")
    others = report.others_differing
    if others:
        line += f"; {plural(len(others), 'other layer')} with weights {'differs' if len(others) == 1 else 'differ'} " \
            f"({_names(list(others))})"
    return line


def _written_line(report: WriteReport, what: str) -> str:
    """A writing report's line: where the model went, what was done, how it was checked."""
    if report.dry_run:
        where = "dry run"
    else:
        where = report.destination or "nothing written"
    parts = [what]
    if report.smoke is not None:
        parts.append("smoke test passed")
    elif report.smoke_skipped is not None:
        parts.append("smoke test not run")
    elif report.changed and not report.dry_run:
        parts.append("smoke test skipped")
    return f"{where}: {'; '.join(parts)}; replaced={report.replaced}"


def _set_line(report: SetReport) -> str:
    if len(report.layers) == 1:
        what = f"{report.layers[0].path} " + ", ".join(
            f"{c.variable} {format_shape(c.shape)}" for c in report.changes)
    else:
        what = (f"{plural(len(report.changes), 'variable')} in {plural(len(report.layers), 'layer')} "
                f"({_names([layer.path for layer in report.layers])})")
    return _written_line(report, what)


def _fold_line(report: FoldReport) -> str:
    what = (f"{plural(len(report.pairs), 'pair')} folded, "
            f"{plural(len(report.not_folded), 'BatchNormalization')} not folded, "
            f"parameters {report.parameters_before:,} -> {report.parameters_after:,}")
    return _written_line(report, what)


def _equalize_line(report: EqualizeReport) -> str:
    what = (f"{plural(len(report.equalized), 'group')} equalized in {plural(report.sweeps, 'sweep')}, "
            f"{plural(len(report.folded), 'BatchNormalization')} folded, "
            f"{plural(len(report.stops), 'layer')} not equalized")
    return _written_line(report, what)


def _prune_line(report: PruneReport) -> str:
    removed = sum(len(group.removed) for group in report.groups)
    what = (f"{plural(removed, 'filter')} removed from {plural(len(report.groups), 'group')} "
            f"({report.criterion}), parameters {report.parameters_before:,} -> {report.parameters_after:,}")
    return _written_line(report, what)


def _port_line(report: PortReport) -> str:
    what = (f"{plural(len(report.tensors), 'tensor')} of {report.state} into "
            f"{plural(report.layers_ported, 'layer')}, {len(report.left_in_state)} left over")
    if report.refusals:
        what += f", {plural(len(report.refusals), 'refusal')}"
    return _written_line(report, what)


def _picture_line(picture: Picture) -> str:
    size = f"{picture.width}x{picture.height} of {picture.source}"
    if picture.kind != "histograms":
        drawn = picture.variables[0]
        what = plural(drawn.tiles or 0, "tile") if picture.kind == "tiles" else picture.kind
        return f"{picture.kind} {size}: {drawn.layer} {drawn.variable} {format_shape(drawn.shape)}, {what}"
    layers = {drawn.layer for drawn in picture.variables}
    return f"histograms {size}: {plural(len(picture.variables), 'variable')} in {plural(len(layers), 'layer')}"


def _assignment_line(assignment: Assignment) -> str:
    target = assignment.target
    cast = f", cast {assignment.cast}" if assignment.cast else ""
    return f"{target.label} {format_shape(target.shape)} {target.dtype} from {assignment.origin}{cast}"
