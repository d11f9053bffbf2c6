"""What the Python API returns, as a notebook shows it: a one-line repr for every report
and picture, and each report's tables as well-formed HTML (the ones the command line prints).
On the committed sample models, written by real Keras; smoke=False keeps TensorFlow out."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import conv_surgeon as cs

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "sample_models" / "tiny_cnn.keras"
CONVS = ROOT / "sample_models" / "all_convs.keras"

# Tags without an end tag in HTML.
VOID = {"br", "hr", "img", "meta", "link", "input", "col", "wbr"}


class Page(HTMLParser):
    """An HTML fragment read back: its tags must close in order; the text of each table
    cell and of each paragraph is kept."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.cells: list[str] = []
        self.paragraphs: list[str] = []
        self.headers: list[str] = []
        self._text: list[str] = []
        self.feed(text)
        self.close()
        assert self.open == [], f"unclosed tags: {self.open}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            self._text.append("\n")
            return
        self.open.append(tag)
        if tag in ("td", "th", "p"):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()
        text = "".join(self._text)
        {"td": self.cells, "th": self.headers, "p": self.paragraphs}.get(tag, []).append(text)

    def handle_data(self, data: str) -> None:
        self._text.append(data)


def one_short_line(value: object, *paths: Path) -> str:
    """``repr(value)``, checked to be one line of under 160 characters besides the ``paths``
    it names (pytest's temporary folders alone run to 80 characters)."""
    text = repr(value)
    named = sum(len(str(path)) * text.count(str(path)) for path in {TINY, CONVS, *paths})
    assert "\n" not in text and len(text) - named < 160, text
    assert text.startswith(f"<{type(value).__name__} ") and text.endswith(">"), text
    return text


def test_inspect_report_is_one_line_and_its_html_table_lists_every_layer() -> None:
    report = cs.inspect(CONVS)
    paths = [layer.path for layer in report.layers]
    text = one_short_line(report)
    assert text.startswith(f"<InspectReport {CONVS}: Functional, {len(paths)} convolution layers (c2d, ")
    assert f"(+{len(paths) - 8})" in text and text.endswith(f"{report.total_parameters:,} parameters>")
    page = Page(report._repr_html_())
    assert page.headers == ["layer", "class", "weights", "config"]
    # Row by row, as the command line's table: path, class, one variable a line, config.
    rows = [page.cells[i:i + 4] for i in range(0, len(page.cells), 4)]
    assert [row[0] for row in rows] == paths
    assert [row[1] for row in rows] == [layer.class_name for layer in report.layers]
    assert rows[0][2] == "kernel (3, 3, 4, 4) float32\nbias (4,) float32"
    assert page.paragraphs[0].startswith(f"{CONVS}: Functional 'all_convs'")
    assert page.paragraphs[-1] == f"{len(paths)} convolution layers, {report.total_parameters:,} parameters"


def test_a_write_report_is_one_line_and_its_html_lists_the_edits_in_python_words(tmp_path: Path) -> None:
    out = tmp_path / "out.keras"
    kernel = np.zeros((3, 3, 1, 4), np.float32)
    report = cs.set_weights(TINY, "conv1", out=out, kernel=kernel, bias=np.ones(4, np.float32), smoke=False)
    assert one_short_line(report, out) == (
        f"<SetReport {out}: conv1 kernel (3, 3, 1, 4), bias (4,); smoke test skipped; replaced=False>")
    page = Page(report._repr_html_())
    assert page.cells[:2] == ["kernel", "(3, 3, 1, 4)"] and "bias" in page.cells
    assert "smoke test skipped (smoke=False)" in page.paragraphs  # the API's words, not --no-smoke
    again = cs.set_weights(TINY, "conv1", out=out, kernel=kernel, smoke=False)
    assert one_short_line(again, out).endswith("; smoke test skipped; replaced=True>")
    dry = cs.set_weights(TINY, "conv2", dry_run=True, bias=np.zeros(8, np.float32), smoke=False)
    assert one_short_line(dry) == "<SetReport dry run: conv2 bias (8,); replaced=False>"


def test_graph_surgery_reports_are_one_line_with_their_tables(tmp_path: Path) -> None:
    folded = cs.fold_bn(CONVS, out=tmp_path / "folded.keras", smoke=False)
    assert one_short_line(folded, tmp_path / 'folded.keras') == (
        f"<FoldReport {tmp_path / 'folded.keras'}: 2 pairs folded, 0 BatchNormalizations not folded, parameters "
        f"{folded.parameters_before:,} -> {folded.parameters_after:,}; smoke test skipped; replaced=False>")
    page = Page(folded._repr_html_())
    assert [page.cells[i:i + 2] for i in (0, 5)] == [[p.conv, p.bn] for p in folded.pairs]
    pruned = cs.prune(TINY, layers=["conv1"], filters=[0, 2], out=tmp_path / "pruned.keras", smoke=False)
    assert one_short_line(pruned, tmp_path / 'pruned.keras').startswith(
        f"<PruneReport {tmp_path / 'pruned.keras'}: 2 filters removed from 1 group (filters), parameters ")
    page = Page(pruned._repr_html_())
    assert {"conv1", "conv2"} <= set(page.cells) and "4 -> 2" in page.cells


def test_diff_report_names_the_layers_that_differ(tmp_path: Path) -> None:
    out = tmp_path / "out.keras"
    cs.set_weights(TINY, "conv2", out=out, kernel=np.zeros((3, 3, 4, 8), np.float32), smoke=False)
    report = cs.diff(TINY, out)
    assert one_short_line(report, out) == f"<DiffReport {TINY} vs {out}: 1 of 3 layers differs (conv2)>"
    assert "conv2" in Page(report._repr_html_()).cells
    assert one_short_line(cs.diff(TINY, TINY)) == f"<DiffReport {TINY} vs {TINY}: identical, 3 layers>"
    head = tmp_path / "head.keras"  # only the Dense changed: not identical, and said so
    cs.set_weights(TINY, "head", out=head, kernel=np.zeros((8, 10), np.float32), smoke=False)
    assert one_short_line(cs.diff(TINY, head), head) == (
        f"<DiffReport {TINY} vs {head}: 0 of 3 layers differ; 1 other layer with weights differs (head)>")


def test_a_picture_is_one_line_and_shows_itself_as_png() -> None:
    picture = cs.show(TINY, "conv1")
    assert one_short_line(picture) == (
        f"<Picture tiles {picture.width}x{picture.height} of {TINY}: conv1 kernel (3, 3, 1, 4), 4 tiles>")
    assert picture._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")
    histograms = cs.show(CONVS, hist=True)
    assert one_short_line(histograms).endswith(f": {len(histograms.variables)} variables in 16 layers>")


def test_the_html_is_made_when_rich_thinks_it_runs_in_a_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    # In Jupyter rich displays what it prints itself: the report's lines would miss the page.
    import rich.console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    page = Page(cs.inspect(TINY)._repr_html_())
    assert page.paragraphs == [f"{TINY}: Sequential 'tiny_cnn' (keras, Keras 3.15.1)", "3 convolution layers, 920 parameters"]
    assert page.cells[::4] == ["conv1", "conv2", "conv3"]
