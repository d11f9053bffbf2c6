"""Tables in any width: where a cell may break, which layout a width gets, and the records
printed when no table fits. Pure functions and synthetic rows: no model, no Keras.

The rule a user relies on: a name, a number or a shape is never cut, at any width; only
a piece wider than the whole terminal may run past its edge.
"""

from __future__ import annotations

import io
import random
import string

import pytest

from conv_surgeon.render.text import (
    Column,
    TableFit,
    console,
    fit_table,
    longest_piece,
    print_table,
    stacked_lines,
    wrap,
)


# --- where a cell breaks -------------------------------------------------------------------


def test_a_path_folds_after_each_slash() -> None:
    assert wrap("outer/inner_block/conv1", 12) == ["outer/", "inner_block/", "conv1"]
    assert wrap("outer/inner_block/conv1", 18) == ["outer/inner_block/", "conv1"]


def test_words_wrap_at_spaces_and_a_shape_stays_whole() -> None:
    assert wrap("filters=4 kernel=3x3 same relu", 15) == ["filters=4", "kernel=3x3 same", "relu"]
    assert wrap("kernel (3, 3, 32, 64) float32", 16) == ["kernel", "(3, 3, 32, 64)", "float32"]


def test_an_arrow_stays_with_what_it_follows() -> None:
    assert wrap("(1, 1, 144, 24) -> (1, 1, 137, 23)", 20) == ["(1, 1, 144, 24) ->", "(1, 1, 137, 23)"]


def test_a_source_breaks_before_its_key_but_numbers_and_times_do_not() -> None:
    assert wrap("bundle.npz:block_1_expand/kernel", 16) == ["bundle.npz:", "block_1_expand/", "kernel"]
    assert wrap("12:30:45 3,538,984", 5) == ["12:30:45", "3,538,984"]


def test_a_piece_wider_than_the_width_has_a_line_of_its_own_whole() -> None:
    assert wrap("a expanded_conv_depthwise_BN b", 10) == ["a", "expanded_conv_depthwise_BN", "b"]
    assert longest_piece("a expanded_conv_depthwise_BN b\nx/y") == len("expanded_conv_depthwise_BN")


def test_lines_already_in_the_cell_are_kept() -> None:
    assert wrap("gamma (32,) float32\nbeta (32,) float32", 40) == ["gamma (32,) float32", "beta (32,) float32"]


# --- which layout ----------------------------------------------------------------------------

COLUMNS = [Column("layer", keep=False), Column("class"), Column("config", keep=False)]
ROWS = [("block/conv_a", "Conv2D", "filters=4 kernel=3x3 same"), ("head", "Dense", "")]


def test_the_boxed_table_when_everything_fits() -> None:
    # 12 + 6 + 25 characters of cells, and a border and two spaces of padding per column.
    assert fit_table(COLUMNS, ROWS, 53) == fit_table(COLUMNS, ROWS, 200)
    assert fit_table(COLUMNS, ROWS, 53).layout == "boxed"
    assert fit_table(COLUMNS, ROWS, 53).widths == (12, 6, 25)


def test_a_compact_table_shrinks_the_widest_folding_column_first() -> None:
    fit = fit_table(COLUMNS, ROWS, 40)  # 36 characters of cells between 2 gaps of 2
    assert fit.layout == "compact" and fit.widths == (12, 6, 18)
    fit = fit_table(COLUMNS, ROWS, 30)  # 26: the config first down to 12, then both
    assert fit.layout == "compact" and sum(fit.widths) == 26 and fit.widths[1] == 6
    assert abs(fit.widths[0] - fit.widths[2]) <= 1


def test_no_column_shrinks_below_its_longest_piece_nor_a_kept_one_at_all() -> None:
    # layer: "block/" and "conv_a" (6); class kept (6); config "kernel=3x3" (10).
    assert fit_table(COLUMNS, ROWS, 26).widths == (6, 6, 10)
    assert fit_table(COLUMNS, ROWS, 25).layout == "stacked"


def test_a_cell_of_several_lines_is_a_list_and_keeps_each_line_whole() -> None:
    columns = [Column("layer", keep=False), Column("shapes", keep=False)]
    rows = [("bn", "gamma (32,) -> (31,)\nmoving_variance (32,) -> (31,)"),  # 30 characters
            ("conv", "kernel (3, 3, 3, 32) -> (3, 3, 3, 31)")]  # one line: it may wrap
    assert fit_table(columns, rows, 37) == TableFit("compact", (5, 30))  # "layer": 5
    assert fit_table(columns, rows, 36).layout == "stacked"
    assert wrap(rows[1][1], 30) == ["kernel (3, 3, 3, 32) ->", "(3, 3, 3, 31)"]


# --- one record per block ------------------------------------------------------------------


def test_records_align_their_values_and_leave_out_empty_cells() -> None:
    assert stacked_lines(COLUMNS, ROWS, 60) == [
        ("layer:    ", "block/conv_a"),
        ("  class:  ", "Conv2D"),
        ("  config: ", "filters=4 kernel=3x3 same"),
        ("", ""),
        ("layer:    ", "head"),
        ("  class:  ", "Dense"),
        ("", ""),
    ]


def test_a_row_without_a_first_cell_continues_the_record_above() -> None:
    columns = [Column("layer", keep=False), Column("variable"), Column("shape")]
    rows = [("conv1", "kernel", "(3, 3, 1, 4)"), ("", "bias", "(4,)"), ("conv2", "kernel", "(1, 1, 4, 8)")]
    text = ["".join(line) for line in stacked_lines(columns, rows, 40)]
    assert text == [
        "layer:      conv1", "  variable: kernel", "  shape:    (3, 3, 1, 4)", "  variable: bias", "  shape:    (4,)",
        "",
        "layer:      conv2", "  variable: kernel", "  shape:    (1, 1, 4, 8)",
        "",
    ]


def test_a_value_wraps_beside_its_label_and_a_wide_piece_starts_below_it() -> None:
    columns = [Column("layer", keep=False), Column("source", keep=False)]
    rows = [("conv1", "weights/bundle.npz:a_rather_long_layer_name/kernel")]
    assert ["".join(line) for line in stacked_lines(columns, rows, 40)] == [
        "layer:    conv1", "  source: weights/bundle.npz:", "          a_rather_long_layer_name/", "          kernel", ""]
    rows = [("conv1", "a_name_that_is_thirty_four_letters")]  # 34 > 40 - 10: below its label
    assert ["".join(line) for line in stacked_lines(columns, rows, 40)] == [
        "layer:    conv1", "  source:", "      a_name_that_is_thirty_four_letters", ""]


def test_a_row_of_statistics_flows_side_by_side_and_a_repeated_first_cell_continues_its_record() -> None:
    columns = [Column("layer", keep=False), Column("variable", keep=False)] + [
        Column(name, right=True) for name in ("min", "max", "mean", "std", "zeros")]
    rows = [("bn", "gamma", "1", "1", "1", "0", "0"), ("bn", "beta", "-0.25", "0.5", "0.125", "0.3125", "32"),
            ("conv", "kernel", "-1", "1", "0", "1", "0")]
    assert ["".join(line) for line in stacked_lines(columns, rows, 44)] == [
        "layer:      bn", "  variable: gamma", "  min: 1  max: 1  mean: 1  std: 0  zeros: 0",
        "  variable: beta", "  min: -0.25  max: 0.5  mean: 0.125", "  std: 0.3125  zeros: 32",
        "",
        "layer:      conv", "  variable: kernel", "  min: -1  max: 1  mean: 0  std: 1  zeros: 0",
        "",
    ]
    # Three short cells are not a row of statistics: each keeps a line of its own.
    assert ["".join(line) for line in stacked_lines(columns[:5], [row[:5] for row in rows[:1]], 40)] == [
        "layer:      bn", "  variable: gamma", "  min:      1", "  max:      1", "  mean:     1", ""]


# --- every width, every piece whole ----------------------------------------------------------


def synthetic_table(seed: int) -> tuple[list[Column], list[tuple[str, ...]]]:
    """Rows like conv-surgeon's: paths, classes, shapes with dtypes, configs, numbers."""
    rng = random.Random(seed)

    def name() -> str:
        return "_".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
                        for _ in range(rng.randint(1, 4)))

    def shape() -> str:
        return "(" + ", ".join(str(rng.choice([1, 3, 16, 96, 1280])) for _ in range(rng.randint(1, 4))) + ")"

    columns = [Column("layer", keep=False), Column("class"), Column("weights"), Column("config", keep=False),
               Column("max |a-b|", right=True)]
    rows = []
    for _ in range(12):
        path = "/".join(name() for _ in range(rng.randint(1, 3)))
        weights = "\n".join(f"{name()} {shape()} float32" for _ in range(rng.randint(1, 3)))
        config = " ".join(f"{name()}={rng.randint(1, 999)}" for _ in range(rng.randint(0, 5)))
        rows.append((path, rng.choice(["Conv2D", "BatchNormalization", "DepthwiseConv2D"]), weights, config,
                     f"{rng.uniform(-1e4, 1e4):.4g}"))
    return columns, rows


@pytest.mark.parametrize("seed", range(3))
def test_every_width_keeps_every_piece_whole_and_runs_past_only_for_wider_pieces(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    columns, rows = synthetic_table(seed)
    pieces = {piece for row in rows for cell in row for line in cell.split("\n") for piece in wrap(line, 1)}
    layouts = set()
    for width in range(20, 301, 11):
        monkeypatch.setenv("COLUMNS", str(width))
        stream = io.StringIO()
        print_table(console(stream), columns, rows)
        lines = stream.getvalue().splitlines()
        layouts.add(fit_table(columns, rows, width).layout)
        for line in lines:
            assert len(line) <= width or any(len(piece) > width and piece in line for piece in pieces), (width, line)
        for piece in pieces:
            assert any(piece in line for line in lines), (width, piece)
    assert layouts == {"boxed", "compact", "stacked"}


def test_off_a_terminal_a_table_is_never_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    columns, rows = synthetic_table(0)
    stream = io.StringIO()
    print_table(console(stream), columns, rows)
    assert stream.getvalue().startswith("┏") and len(stream.getvalue().splitlines()) == 4 + sum(
        max(cell.count("\n") + 1 for cell in row) for row in rows)


def test_a_line_of_text_wraps_where_a_cell_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    stream = io.StringIO()
    console(stream).print("/models/pruned/mobilenet_v2.keras: 3 of 64 filters removed (dry run)")
    assert stream.getvalue() == "/models/pruned/\nmobilenet_v2.keras: 3 of 64\nfilters removed (dry run)\n"
