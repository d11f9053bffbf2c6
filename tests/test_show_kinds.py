"""`conv-surgeon show` picks the picture that fits the kernel's shape (issue 20, item 3):
tiles for spatial kernels, a matrix for 1x1 kernels, taps for 1-D kernels; each weight
a block of pixels in a picture of readable size; --against with a scale per panel; the
terminal picture no wider than the terminal.

The models are written by real Keras once per module, with known weights in known
places; the pictures are read back from the PNGs and the terminal's escape codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conv_surgeon.pictures.colours import _COLOURS, ZERO, diverging

from helpers import assert_one_error_line
from test_show import decode_half_blocks, read_png, run, run_on_terminal, show_json

RED, BLUE = _COLOURS[-1], _COLOURS[0]  # full colour: +scale and -scale
LARGEST_SIDE = 3000  # "a few thousand pixels a side"
ESCAPES = re.compile(r"\x1b\[[\d;]*m")


def weights(rng: np.random.Generator, shape: tuple[int, ...], marks: dict[tuple[int, ...], float]) -> np.ndarray:
    """Small random weights with ``marks`` set: the largest |value| is one of them."""
    kernel = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    for where, value in marks.items():
        kernel[where] = value
    return kernel


# pw (1, 1, 96, 320): input channel 5 of filter 17 is the largest weight, 40 of 300 the most negative.
PW_MARKS = {(0, 0, 5, 17): 1.0, (0, 0, 40, 300): -1.0, (0, 0, 0, 0): 0.0}
# crepe's conv1 (512, 1, 1, 64): tap 100 of filter 7 is the largest weight, tap 400 of filter 63 the most negative.
TAPS_MARKS = {(100, 0, 0, 7): 1.0, (400, 0, 0, 63): -1.0, (0, 0, 0, 0): 0.0}
SMALLER = 0.01  # B's pw: A's, a hundred times smaller


@pytest.fixture(scope="module")
def models(keras, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved by Keras: an image model (ResNet50's conv1 shape, a 3x3, a 1x1 of 96 -> 320),
    the same with the 1x1 a hundred times smaller, crepe's Conv2D (512, 1) and (64, 1),
    a Conv1D of 512 taps with a k=1 conv after it, a Conv3D 1x1x1 and a depthwise 1x1."""
    folder = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(20)
    layers = keras.layers
    image = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(64, 7, name="conv1"),
                              layers.Conv2D(96, 3, name="c3"), layers.Conv2D(320, 1, name="pw")], name="image")
    pw = image.get_layer("pw")
    pw.set_weights([weights(rng, (1, 1, 96, 320), PW_MARKS), pw.get_weights()[1]])
    image.save(folder / "image.keras")
    pw.set_weights([pw.get_weights()[0] * np.float32(SMALLER), pw.get_weights()[1]])
    image.save(folder / "image_smaller.keras")
    crepe = keras.Sequential([keras.Input((1024, 1, 1)), layers.Conv2D(64, (512, 1), name="conv1"),
                              layers.Conv2D(32, (64, 1), name="conv2")], name="crepe")
    conv1 = crepe.get_layer("conv1")
    conv1.set_weights([weights(rng, (512, 1, 1, 64), TAPS_MARKS), conv1.get_weights()[1]])
    crepe.save(folder / "crepe.keras")
    keras.Sequential([keras.Input((1024, 1)), layers.Conv1D(64, 512, name="taps512"),
                      layers.Conv1D(16, 1, name="k1")], name="audio").save(folder / "audio.keras")
    keras.Sequential([keras.Input((4, 4, 4, 5)), layers.Conv3D(7, 1, name="c3d1")]).save(folder / "cube.keras")
    keras.Sequential([keras.Input((6, 6, 4)), layers.DepthwiseConv2D(1, depth_multiplier=2, name="dw1")]).save(
        folder / "depthwise.keras")
    return {path.stem: path for path in folder.glob("*.keras")}


def blocks(image: np.ndarray, box: list[int], cells: dict[str, int], size: dict[str, int]) -> np.ndarray:
    """The colour of each weight of a heat map, ``(rows, columns, 3)``, after checking
    that each weight is one block of ``size`` pixels of a single colour."""
    x, y, width, height = box
    rows, columns, cell_width, cell_height = cells["rows"], cells["columns"], size["width"], size["height"]
    assert cell_width >= 1 and cell_height >= 1
    assert (width, height) == (columns * cell_width, rows * cell_height)
    area = image[y:y + height, x:x + width].reshape(rows, cell_height, columns, cell_width, 3)
    assert (area == area[:, :1, :, :1]).all(), "a weight's block is not one colour"
    return area[:, 0, :, 0]


def expected_colours(matrix: np.ndarray, scale: float) -> np.ndarray:
    return np.array([[diverging(float(v) / scale) for v in row] for row in matrix], dtype=np.uint8)


# --- the kind of picture follows the kernel's shape --------------------------------------------


@pytest.mark.parametrize("model, layer, kind, cells, axes", [
    ("image", "conv1", "tiles", None, {"tiles": "output filters", "rows": "kh", "columns": "kw"}),
    ("image", "c3", "tiles", None, {"tiles": "output filters", "rows": "kh", "columns": "kw"}),
    ("image", "pw", "matrix", (96, 320), {"rows": "input channels", "columns": "output filters"}),
    ("audio", "k1", "matrix", (16, 64), {"rows": "output filters", "columns": "input channels"}),  # the longer across
    ("cube", "c3d1", "matrix", (5, 7), {"rows": "input channels", "columns": "output filters"}),
    ("depthwise", "dw1", "matrix", (2, 4), {"rows": "multiplier slots", "columns": "input channels"}),
    ("crepe", "conv1", "taps", (64, 512), {"rows": "output filters", "columns": "taps"}),
    ("crepe", "conv2", "taps", (32, 64), {"rows": "output filters", "columns": "taps"}),
    ("audio", "taps512", "taps", (64, 512), {"rows": "output filters", "columns": "taps"}),
])
def test_each_kernel_shape_gets_the_picture_that_fits_it(models: dict[str, Path], tmp_path: Path, model: str,
                                                          layer: str, kind: str, cells: tuple[int, int] | None,
                                                          axes: dict[str, str]) -> None:
    out = tmp_path / "x.png"
    document = show_json(models[model], "--layer", layer, "-o", out)
    (drawn,) = document["variables"]
    assert (document["kind"], drawn["kind"], drawn["axes"]) == ("grid", kind, axes)
    image = read_png(out)
    assert max(image.shape[:2]) < LARGEST_SIDE
    if cells is None:
        assert "cells" not in drawn and len(drawn["tile_boxes"]["model"]) == drawn["tiles"]
        return
    assert (drawn["cells"]["rows"], drawn["cells"]["columns"]) == cells
    blocks(image, drawn["boxes"]["model"], drawn["cells"], drawn["cell_size"])


def test_a_1x1_conv_is_its_matrix_each_weight_a_block(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pw.png"
    drawn = show_json(models["image"], "--layer", "pw", "-o", out)["variables"][0]
    assert drawn["range"] == [-1.0, 1.0] and drawn["shows"] == "one weight"
    image = read_png(out)
    assert max(image.shape[:2]) < LARGEST_SIDE
    colours = blocks(image, drawn["boxes"]["model"], drawn["cells"], drawn["cell_size"])
    assert drawn["cell_size"]["width"] >= 3  # 320 columns blown up to a readable block
    assert tuple(colours[5, 17]) == RED and tuple(colours[40, 300]) == BLUE and tuple(colours[0, 0]) == ZERO
    kernel = np.load(get_kernel(models["image"], "pw", tmp_path))
    assert np.array_equal(colours, expected_colours(kernel[0, 0], 1.0))  # row = input channel, column = filter


def test_a_tall_1d_kernel_is_taps_by_filters(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "taps.png"
    drawn = show_json(models["crepe"], "--layer", "conv1", "-o", out)["variables"][0]
    assert drawn["shows"] == "its one input channel"
    image = read_png(out)
    assert max(image.shape[:2]) < LARGEST_SIDE
    colours = blocks(image, drawn["boxes"]["model"], drawn["cells"], drawn["cell_size"])
    assert drawn["cell_size"]["height"] > drawn["cell_size"]["width"]  # each filter's row reads as a strip
    assert tuple(colours[7, 100]) == RED and tuple(colours[63, 400]) == BLUE and tuple(colours[0, 0]) == ZERO
    kernel = np.load(get_kernel(models["crepe"], "conv1", tmp_path))
    assert np.array_equal(colours, expected_colours(kernel[:, 0, 0, :].T, 1.0))  # row = filter, column = tap
    drawn = show_json(models["crepe"], "--layer", "conv1", "--against", models["crepe"], "-o", out)["variables"][0]
    assert max(read_png(out).shape[:2]) < LARGEST_SIDE  # three panels of 512 taps, stacked
    assert drawn["cell_size"]["height"] > drawn["cell_size"]["width"]


def test_a_1d_kernel_over_many_channels_is_reduced_as_tiles_are(models: dict[str, Path], tmp_path: Path) -> None:
    kernel = np.load(get_kernel(models["crepe"], "conv2", tmp_path))[:, 0]  # (64 taps, 64 in, 32 filters)
    out = tmp_path / "conv2.png"
    for options, values in (([], kernel.astype(np.float64).mean(axis=1)), (["--input-channel", "9"], kernel[:, 9])):
        drawn = show_json(models["crepe"], "--layer", "conv2", *options, "-o", out)["variables"][0]
        colours = blocks(read_png(out), drawn["boxes"]["model"], drawn["cells"], drawn["cell_size"])
        scale = drawn["range"][1]
        assert scale == pytest.approx(np.abs(values).max())
        assert np.array_equal(colours, expected_colours(values.T, scale))


def test_a_3x3_conv_keeps_its_tiles(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "c3.png"
    drawn = show_json(models["image"], "--layer", "c3", "-o", out)["variables"][0]
    boxes = drawn["tile_boxes"]["model"]
    assert drawn["tiles"] == 96 and len(boxes) == 96
    assert max(read_png(out).shape[:2]) < LARGEST_SIDE
    assert all(width == height == 48 for _, _, width, height in boxes)  # 3x3 weights of 16x16 pixels


def get_kernel(model: Path, layer: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{layer}.npy"
    result = run("get", model, "--layer", layer, "-o", out)
    assert result.exit_code == 0, result.stderr
    return out


# --- --kind ------------------------------------------------------------------------------------


def test_kind_draws_another_picture_where_the_kernel_allows_it(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    tiles = show_json(models["image"], "--layer", "pw", "--kind", "tiles", "--input-channel", "5", "-o", out)
    assert tiles["variables"][0]["kind"] == "tiles" and tiles["variables"][0]["tiles"] == 320
    strips = show_json(models["crepe"], "--layer", "conv1", "--kind", "tiles", "--columns", "2", "-o", out)
    assert strips["variables"][0]["kind"] == "tiles" and strips["variables"][0]["axes"]["columns"] == "kw"
    refused = run("show", models["image"], "--layer", "c3", "--kind", "matrix", "-o", out)
    assert_one_error_line(refused, 1, "layer 'c3' kernel (3, 3, 64, 96): --kind matrix draws a kernel of size 1",
                          "this kernel's size is 3x3; use --kind tiles")
    refused = run("show", models["image"], "--layer", "conv1", "--kind", "taps", "-o", out)
    assert_one_error_line(refused, 1, "--kind taps draws a kernel with one spatial axis longer than 1")


@pytest.mark.parametrize("args, exit_code, message", [
    (["--layer", "pw", "--columns", "4"], 2, "--columns 4 sets tiles per row, and layer 'pw' kernel (1, 1, 96, 320) "
                                             "is drawn as a matrix: drop --columns, or add --kind tiles"),
    (["--layer", "pw", "--reduce", "l2"], 1, "a 1x1 kernel is drawn as a matrix with every input channel a row or "
                                            "column of its own; drop --reduce (or add --kind tiles)"),
    (["--layer", "pw", "--kind", "matrix", "--input-channel", "0"], 2, "--kind matrix draws every input channel"),
    (["--layer", "pw", "--scale", "panel"], 2, "--scale panel gives A, B and A - B each a scale of their own; "
                                               "it needs --against B"),
    (["--layer", "pw", "--hist", "--kind", "tiles"], 2, "--kind only shape the filter grid"),
])
def test_options_a_picture_cannot_take_are_one_line(models: dict[str, Path], tmp_path: Path, args: list[str],
                                                    exit_code: int, message: str) -> None:
    assert_one_error_line(run("show", models["image"], *args, "-o", tmp_path / "x.png"), exit_code, message)
    assert not (tmp_path / "x.png").exists()


# --- --against: a scale per panel ----------------------------------------------------------------


def test_a_scale_per_panel_shows_b_beside_a_hundred_times_larger_a(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ab.png"
    against = ("--layer", "pw", "--against", models["image_smaller"], "-o", out)
    shared = show_json(models["image"], *against)["variables"][0]
    image = read_png(out)
    assert max(image.shape[:2]) < LARGEST_SIDE  # three 960-pixel panels are stacked, not side by side
    b = blocks(image, shared["boxes"]["against"], shared["cells"], shared["cell_size"])
    assert shared["scale"] == "layer" and shared["range"] == [-1.0, 1.0]
    assert tuple(b[5, 17]) == diverging(SMALLER) and min(b[5, 17]) > 240  # one scale: B's largest weight is pale

    document = show_json(models["image"], *against, "--scale", "panel")
    drawn = document["variables"][0]
    image = read_png(out)
    assert max(image.shape[:2]) < LARGEST_SIDE
    assert drawn["scale"] == "panel"
    assert drawn["panel_ranges"]["model"] == [-1.0, 1.0]
    assert drawn["panel_ranges"]["against"] == pytest.approx([-SMALLER, SMALLER])
    assert drawn["panel_ranges"]["difference"] == pytest.approx([-(1 - SMALLER), 1 - SMALLER])
    a, b, difference = (blocks(image, drawn["boxes"][panel], drawn["cells"], drawn["cell_size"])
                        for panel in ("model", "against", "difference"))
    assert tuple(b[5, 17]) == RED and tuple(b[40, 300]) == BLUE  # B on its own scale: as strong as A
    assert np.array_equal(a, b)  # B is A / 100: the same picture on its own scale
    assert tuple(difference[5, 17]) == RED and tuple(difference[40, 300]) == BLUE  # A - B: its own symmetric scale
    api = __import__("conv_surgeon").show(models["image"], "pw", against=models["image_smaller"], scale="panel")
    assert np.array_equal(api.image, image) and api.variables[0].panel_scales == pytest.approx((1.0, SMALLER, 0.99))


# --- the terminal ----------------------------------------------------------------------------------


def visible_width(line: str) -> int:
    return len(ESCAPES.sub("", line))


@pytest.mark.parametrize("columns", [40, 80])
@pytest.mark.parametrize("model, args", [
    ("image", ["--layer", "conv1"]),  # ResNet50's conv1 shape: it was 97 columns wide at COLUMNS=40
    ("image", ["--layer", "pw", "--against", "{image_smaller}", "--scale", "panel"]),
    ("crepe", ["--layer", "conv1"]),
    ("audio", ["--layer", "taps512", "--kind", "tiles"]),  # 512-tap strips, wider than the terminal
    ("audio", ["--layer", "k1", "--scale", "each"]),
], ids=["resnet-conv1", "pw-against-panel", "crepe-conv1", "taps512-tiles", "k1-each"])
def test_no_line_is_wider_than_the_terminal(models: dict[str, Path], columns: int, model: str,
                                            args: list[str]) -> None:
    args = [a.format(**{k: str(v) for k, v in models.items()}) for a in args]
    code, out, err = run_on_terminal(["show", str(models[model]), *args], columns=columns, COLORTERM="truecolor")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) > 5 and max(map(visible_width, lines)) <= columns
    if "--kind" in args:
        assert lines[-1].endswith("use -o FILE.png for all") or "use -o FILE.png for all" in " ".join(lines[-2:])


def test_a_matrix_on_the_terminal_is_the_pictures_weights_and_says_what_it_left_out(models: dict[str, Path],
                                                                                    tmp_path: Path) -> None:
    """pw is 96 input channels by 320 filters: at 80 columns it is turned (a row per filter,
    a column per input channel) and its last input channels are left out, as it says."""
    code, out, err = run_on_terminal(["show", str(models["image"]), "--layer", "pw"], columns=80,
                                     COLORTERM="truecolor")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "rows: the output filters; columns: the input channels (turned to fit)" in lines
    footer = " ".join(lines[-2:])
    match = re.search(r"shown: input channels 0-(\d+) of 96; use -o FILE\.png for all", footer)
    assert match, footer
    shown = int(match.group(1)) + 1
    gutter = len("319 ")
    assert 0 < shown <= 80 - gutter and max(map(visible_width, lines)) <= 80
    map_lines = [line for line in lines if "\u2580" in line][:160]  # 320 rows, two a line; then the colour bar
    assert [ESCAPES.sub("", line)[:gutter].strip() for line in map_lines[:6]] == ["0", "", "", "", "", "10"]
    rows: list[list[object]] = []
    for line in map_lines:
        top, bottom = decode_half_blocks(line[gutter:])
        rows += [top, bottom]
    out_png = tmp_path / "pw.png"
    drawn = show_json(models["image"], "--layer", "pw", "-o", out_png)["variables"][0]
    colours = blocks(read_png(out_png), drawn["boxes"]["model"], drawn["cells"], drawn["cell_size"])
    assert len(rows) == 320 and all(len(row) == shown for row in rows)
    assert rows == [[tuple(int(v) for v in colours[c, f]) for c in range(shown)] for f in range(320)]


def test_json_says_what_a_heat_map_is(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    result = run("show", models["crepe"], "--layer", "conv1", "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: conv1 kernel \(512, 1, 1, 64\), taps 64x512 \(output "
                        r"filters x taps\), scale ±1 \(\d+x\d+ PNG\)\n", result.stderr)
    document = json.loads(run("show", models["image"], "--layer", "pw", "-o", out, "--json").stdout)
    drawn = document["variables"][0]
    assert {key: drawn[key] for key in ("kind", "axes", "cells", "shows", "scale", "notes")} == {
        "kind": "matrix", "axes": {"rows": "input channels", "columns": "output filters"},
        "cells": {"rows": 96, "columns": 320}, "shows": "one weight", "scale": "layer", "notes": []}
    assert set(drawn["boxes"]) == {"model"} and "tile_boxes" not in drawn
