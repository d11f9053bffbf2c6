"""`conv-surgeon show` and `cs.show` on real files: the pixels of known kernels, read back
from the PNG; before/after; histograms and their counts; the terminal; errors."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import conv_surgeon as cs
from conv_surgeon.cli import app
from conv_surgeon.pictures.colours import BACKGROUND, NONFINITE, RGB_ZERO, ZERO
from conv_surgeon.pictures.terminal import xterm256

from helpers import assert_one_error_line, copy_into, listing, loaded_after_command

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
TINY = SAMPLES / "tiny_cnn.keras"
ALL_CONVS = SAMPLES / "all_convs.keras"
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)


def run(*args: object, input: bytes | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


def set_kernel(model: Path, layer: str, kernel: np.ndarray, out: Path) -> Path:
    """The model with ``layer``'s kernel replaced, written by `conv-surgeon set`."""
    source = out.with_suffix(".npy")
    np.save(source, kernel)
    result = run("set", model, "--layer", layer, "--kernel", source, "--no-smoke", "-o", out)
    assert result.exit_code == 0, result.stderr
    return out


def show_json(*args: object) -> dict:
    result = run("show", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def cell(image: np.ndarray, box: list[int], row: int, column: int, size: tuple[int, int] = (3, 3)) -> tuple[int, ...]:
    """The colour at the centre of weight (row, column) of the tile in ``box``."""
    x, y, width, height = box
    cell_height, cell_width = height // size[0], width // size[1]
    assert cell_height * size[0] == height and cell_width * size[1] == width  # whole blocks per weight
    return tuple(int(v) for v in image[y + row * cell_height + cell_height // 2, x + column * cell_width + cell_width // 2])


def is_red(colour: tuple[int, ...]) -> bool:
    return colour[0] > colour[2] + 60


def is_blue(colour: tuple[int, ...]) -> bool:
    return colour[2] > colour[0] + 60


# --- known kernels, drawn ------------------------------------------------------------------------

# tiny_cnn's conv1 (3, 3, 1, 4): Sobel-x, one positive weight, one negative weight, all zeros.
KNOWN = np.zeros((3, 3, 1, 4), dtype=np.float32)
KNOWN[:, :, 0, 0] = SOBEL_X
KNOWN[0, 2, 0, 1] = 1.0
KNOWN[2, 0, 0, 2] = -1.0


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return set_kernel(TINY, "conv1", KNOWN, tmp_path_factory.mktemp("known") / "known.keras")


def test_each_weight_is_drawn_where_it_is_with_its_sign(known: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv1.png"
    document = show_json(known, "--layer", "conv1", "-o", out)
    (drawn,) = document["variables"]
    assert (drawn["layer"], drawn["variable"], drawn["tiles"], drawn["range"]) == ("conv1", "kernel", 4, [-2.0, 2.0])
    image = read_png(out)
    assert image.shape[:2] == (document["height"], document["width"])
    sobel, positive, negative, zeros = drawn["tile_boxes"]["model"]
    assert sobel[2] >= 48 and sobel[3] >= 48  # a 3x3 kernel upscaled into readable blocks

    # Sobel-x: negative left column, zero middle, positive right; the 2s stronger than the 1s.
    for row in range(3):
        assert is_blue(cell(image, sobel, row, 0)) and is_red(cell(image, sobel, row, 2))
        assert cell(image, sobel, row, 1) == ZERO
    assert cell(image, sobel, 1, 2)[1] < cell(image, sobel, 0, 2)[1]  # +2 is a deeper red than +1
    assert cell(image, sobel, 1, 0)[0] < cell(image, sobel, 0, 0)[0]  # -2 a deeper blue than -1
    # One weight each: only its own block has a colour, every other one is the neutral zero.
    for box, where, test in ((positive, (0, 2), is_red), (negative, (2, 0), is_blue)):
        for row in range(3):
            for column in range(3):
                colour = cell(image, box, row, column)
                assert test(colour) if (row, column) == where else colour == ZERO
    x, y, width, height = zeros
    assert (image[y:y + height, x:x + width] == ZERO).all()
    # Positive and negative weights of the same size get the same strength, in mirrored hues.
    assert cell(image, positive, 0, 2) == cell(image, sobel, 0, 2)
    assert cell(image, negative, 2, 0) == cell(image, sobel, 0, 0)


def test_tiles_are_separated_by_a_visible_gap_and_labelled(known: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv1.png"
    boxes = show_json(known, "--layer", "conv1", "-o", out)["variables"][0]["tile_boxes"]["model"]
    image = read_png(out)
    for (x, y, width, height), (next_x, _, _, _) in zip(boxes, boxes[1:]):
        assert next_x > x + width  # a gap
        assert (image[y:y + height, x + width:next_x] == BACKGROUND).all()
        label = image[y - 12:y, x:x + 12]  # the filter index, written above the tile
        assert (label != BACKGROUND).any()


def test_columns_scale_each_and_the_range_on_the_picture(known: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv1.png"
    drawn = show_json(known, "--layer", "conv1", "--columns", "2", "--scale", "each", "-o", out)["variables"][0]
    boxes = drawn["tile_boxes"]["model"]
    assert boxes[0][1] == boxes[1][1] < boxes[2][1] == boxes[3][1]  # two rows of two
    assert drawn["scale"] == "each" and drawn["tile_ranges"] == [[-2.0, 2.0], [-1.0, 1.0], [-1.0, 1.0], [-0.0, 0.0]]
    image = read_png(out)
    # Each filter on its own scale: the single +1 is as red as Sobel's +2.
    assert cell(image, boxes[1], 0, 2) == cell(image, boxes[0], 1, 2)
    x, y, width, height = boxes[0]
    caption = image[y + height + 1:y + height + 12, x:x + width]  # "±2" under the tile
    assert (caption != BACKGROUND).any()


def test_the_api_returns_the_pixels_it_writes(known: Path, tmp_path: Path) -> None:
    out = tmp_path / "api.png"
    picture = cs.show(known, "conv1", out=out)
    assert picture.image.dtype == np.uint8 and picture.image.shape[2] == 3
    assert np.array_equal(picture.image, read_png(out))
    assert picture.variables[0].tiles == 4 and picture.variables[0].scale == 2.0
    assert picture._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # notebooks show it
    from_bytes = cs.show(known.read_bytes(), "conv1")
    assert from_bytes.source == "<bytes>" and from_bytes.variables[0].tile_boxes == picture.variables[0].tile_boxes


def test_png_bytes_on_stdout_and_the_report_on_stderr(known: Path, tmp_path: Path) -> None:
    result = run("show", known, "--layer", "conv1", "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.startswith(b"\x89PNG\r\n\x1a\n") and result.stderr == ""  # as `get -o -`
    with_json = run("show", known, "--layer", "conv1", "-o", "-", "--json")
    assert with_json.stdout_bytes == result.stdout_bytes
    assert json.loads(with_json.stderr)["output"] == "-"


def test_a_written_picture_is_reported_in_one_line(known: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv1.png"
    result = run("show", known, "--layer", "conv1", "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: conv1 kernel \(3, 3, 1, 4\), 4 tiles, scale ±2 "
                        r"\(\d+x\d+ PNG\)\n", result.stderr)


def test_rgb_first_layers_are_drawn_in_colour(tmp_path: Path) -> None:
    # tiny_bf16's conv1 reads 3 input channels (and is bfloat16: read through ml_dtypes).
    kernel = np.zeros((3, 3, 3, 4), dtype=np.float32)
    kernel[0, 0, 0, 0] = 1.0  # red channel, top left
    kernel[1, 1, 1, 0] = -1.0  # green channel, centre
    kernel[2, 2, 2, 1] = 0.5  # blue channel, bottom right, half the scale
    model = set_kernel(SAMPLES / "tiny_bf16.keras", "conv1", kernel, tmp_path / "rgb.keras")
    out = tmp_path / "rgb.png"
    drawn = show_json(model, "--layer", "conv1", "-o", out)["variables"][0]
    assert drawn["shows"] == "the 3 input channels as R, G, B" and drawn["range"] == [-1.0, 1.0]
    image = read_png(out)
    first, second, third, _ = drawn["tile_boxes"]["model"]
    assert cell(image, first, 0, 0) == (255, 128, 128)  # +1 in R: full red over grey
    assert cell(image, first, 1, 1) == (128, 0, 128)  # -1 in G: no green
    assert cell(image, first, 2, 2) == RGB_ZERO
    assert cell(image, second, 2, 2) == (128, 128, 191)  # +0.5 in B: 127.5 * 1.5, rounded
    x, y, width, height = third
    assert (image[y:y + height, x:x + width] == RGB_ZERO).all()
    # One channel, or a reduction, instead of colour: the diverging map.
    channel = show_json(model, "--layer", "conv1", "--input-channel", "1", "-o", out)["variables"][0]
    assert channel["shows"] == "input channel 1 of 3"
    assert is_blue(cell(read_png(out), channel["tile_boxes"]["model"][0], 1, 1))
    mean = show_json(model, "--layer", "conv1", "--reduce", "mean", "-o", out)["variables"][0]
    assert mean["shows"] == "the mean over 3 input channels" and mean["range"] == [-1 / 3, 1 / 3]


def test_against_draws_a_b_and_their_difference_on_one_scale(known: Path, tmp_path: Path) -> None:
    zeros = set_kernel(TINY, "conv1", np.zeros_like(KNOWN), tmp_path / "zeros.keras")
    out = tmp_path / "delta.png"
    drawn = show_json(known, "--layer", "conv1", "--against", zeros, "-o", out)["variables"][0]
    boxes = drawn["tile_boxes"]
    assert set(boxes) == {"model", "against", "difference"}
    assert drawn["difference_stats"]["max"] == 2.0 and drawn["against_stats"]["max"] == 0.0
    image = read_png(out)
    assert boxes["model"][0][0] < boxes["against"][0][0] < boxes["difference"][0][0]  # side by side

    def pixels(box: list[int]) -> np.ndarray:
        x, y, width, height = box
        return image[y:y + height, x:x + width]

    for a, b, difference in zip(boxes["model"], boxes["against"], boxes["difference"]):
        assert (pixels(b) == ZERO).all()
        assert np.array_equal(pixels(difference), pixels(a))  # A - 0 = A, on the same scale
    same = show_json(known, "--layer", "conv1", "--against", known, "-o", out)["variables"][0]
    image = read_png(out)
    assert same["difference_stats"]["max"] == 0.0
    assert all((pixels(box) == ZERO).all() for box in same["tile_boxes"]["difference"])


def test_against_needs_the_same_layer_and_shape(known: Path, tmp_path: Path) -> None:
    other = SAMPLES / "tiny_bf16.keras"  # conv1 over 3 channels, no conv3
    result = run("show", known, "--layer", "conv1", "--against", other, "-o", tmp_path / "x.png")
    assert_one_error_line(result, 1, f"--against {other}: layer 'conv1' kernel: expected (3, 3, 1, 4) as in "
                          f"{known}, received (3, 3, 3, 4); --against needs a model of the same architecture")
    missing = run("show", known, "--layer", "conv3", "--against", other, "-o", tmp_path / "x.png")
    assert_one_error_line(missing, 1, "has no layer 'conv3'")
    assert listing(tmp_path) == {}


# --- every kind of convolution -------------------------------------------------------------------


@pytest.mark.parametrize("layer, weight, tiles, shows, size", [
    ("c3d", None, 2, "the mean over 2 input channels", (3, 3)),  # its centre slice
    ("t3d", None, 2, "the mean over 2 input channels", (2, 2)),
    ("t2d", None, 2, "the mean over 4 input channels", (3, 3)),
    ("c2d_grouped", None, 4, "the mean over 2 input channels", (3, 3)),
    ("dw2d", None, 8, "input channel c's filter m (tile c*2+m)", (3, 3)),
    ("sep2d", "depthwise_kernel", 8, "input channel i's filter (tile i)", (3, 3)),
])
def test_every_kind_of_convolution_has_its_grid(tmp_path: Path, layer: str, weight: str | None, tiles: int,
                                               shows: str, size: tuple[int, int]) -> None:
    out = tmp_path / "x.png"
    drawn = show_json(ALL_CONVS, "--layer", layer, *(["--weight", weight] if weight else []), "-o", out)["variables"][0]
    assert (drawn["kind"], drawn["tiles"], drawn["shows"]) == ("tiles", tiles, shows)
    boxes = drawn["tile_boxes"]["model"]
    assert len(boxes) == tiles
    width, height = boxes[0][2:]
    assert width % size[1] == 0 and height % size[0] == 0
    assert width // size[1] == height // size[0] >= 16  # square blocks, one per weight
    notes = {"c3d": ["3-D kernel: the centre slice kd=1 of 3 (kd = 0..2)"],
             "t3d": ["3-D kernel: the centre slice kd=1 of 2 (kd = 0..1)"]}
    assert drawn["notes"] == notes.get(layer, [])


@pytest.mark.parametrize("layer, weight, kind, shows, cells", [
    ("c1d", None, "taps", "the 3 input channels as R, G, B", (4, 3)),  # a row of 3 taps per filter
    ("t1d", None, "taps", "the mean over 4 input channels", (3, 3)),
    ("dw1d", None, "taps", "one weight", (3, 3)),
    ("sep1d", "depthwise_kernel", "taps", "one weight", (3, 3)),
    ("c2d_nobias", None, "matrix", "one weight", (4, 4)),  # input channels x filters
    ("sep2d", "pointwise_kernel", "matrix", "one weight", (4, 8)),  # the longer side across: 8 input channels
    ("sep1d", "pointwise_kernel", "matrix", "one weight", (3, 4)),
    ("func_block/deep_block/deep_conv", None, "matrix", "one weight", (2, 4)),
])
def test_every_1x1_and_1d_kernel_is_a_heat_map(tmp_path: Path, layer: str, weight: str | None, kind: str, shows: str,
                                              cells: tuple[int, int]) -> None:
    out = tmp_path / "x.png"
    drawn = show_json(ALL_CONVS, "--layer", layer, *(["--weight", weight] if weight else []), "-o", out)["variables"][0]
    assert (drawn["kind"], drawn["shows"], drawn["cells"]) == (kind, shows, {"rows": cells[0], "columns": cells[1]})
    assert "tiles" not in drawn and "tile_boxes" not in drawn
    x, y, width, height = drawn["boxes"]["model"]
    block = drawn["cell_size"]
    assert (width, height) == (cells[1] * block["width"], cells[0] * block["height"]) and block["width"] >= 16


def test_transposed_tiles_are_output_filters(tmp_path: Path) -> None:
    # Conv2DTranspose's kernel is (kh, kw, filters, in): filter 1 is kernel[..., 1, :].
    kernel = np.zeros((3, 3, 2, 4), dtype=np.float32)
    kernel[0, 0, 1, :] = 1.0
    model = set_kernel(ALL_CONVS, "t2d", kernel, tmp_path / "t.keras")
    out = tmp_path / "t.png"
    boxes = show_json(model, "--layer", "t2d", "-o", out)["variables"][0]["tile_boxes"]["model"]
    image = read_png(out)
    assert is_red(cell(image, boxes[1], 0, 0)) and cell(image, boxes[1], 1, 1) == ZERO
    x, y, width, height = boxes[0]
    assert (image[y:y + height, x:x + width] == ZERO).all()


def test_depthwise_tiles_follow_the_output_channels(tmp_path: Path) -> None:
    # DepthwiseConv2D (3, 3, in=4, multiplier=2): output 2*2+1 = 5 is input 2's filter 1.
    kernel = np.zeros((3, 3, 4, 2), dtype=np.float32)
    kernel[1, 1, 2, 1] = -1.0
    model = set_kernel(ALL_CONVS, "dw2d", kernel, tmp_path / "dw.keras")
    out = tmp_path / "dw.png"
    boxes = show_json(model, "--layer", "dw2d", "-o", out)["variables"][0]["tile_boxes"]["model"]
    image = read_png(out)
    for index, box in enumerate(boxes):
        assert is_blue(cell(image, box, 1, 1)) == (index == 5)


def test_a_1d_kernel_is_a_row_of_taps_per_filter(tmp_path: Path) -> None:
    kernel = np.zeros((3, 3, 4), dtype=np.float32)  # Conv1D (k, in, filters)
    kernel[2, :, 3] = 1.0
    kernel[0, :, 2] = -1.0
    model = set_kernel(ALL_CONVS, "c1d", kernel, tmp_path / "c1d.keras")
    out = tmp_path / "c1d.png"
    drawn = show_json(model, "--layer", "c1d", "--reduce", "mean", "-o", out)["variables"][0]
    assert drawn["axes"] == {"rows": "output filters", "columns": "taps"}
    box, image = drawn["boxes"]["model"], read_png(out)
    assert is_red(cell(image, box, 3, 2, size=(4, 3))) and cell(image, box, 3, 0, size=(4, 3)) == ZERO
    assert is_blue(cell(image, box, 2, 0, size=(4, 3))) and cell(image, box, 2, 2, size=(4, 3)) == ZERO
    # Over its 3 input channels, as colour: +1 in every channel is white.
    box = show_json(model, "--layer", "c1d", "-o", out)["variables"][0]["boxes"]["model"]
    image = read_png(out)
    assert cell(image, box, 3, 2, size=(4, 3)) == (255, 255, 255)
    assert cell(image, box, 2, 0, size=(4, 3)) == (0, 0, 0)
    # As tiles (--kind tiles): one strip per filter.
    boxes = show_json(model, "--layer", "c1d", "--kind", "tiles", "-o", out)["variables"][0]["tile_boxes"]["model"]
    image = read_png(out)
    assert boxes[0][2] > boxes[0][3]  # a strip
    assert cell(image, boxes[3], 0, 2, size=(1, 3)) == (255, 255, 255)


def test_a_separable_conv_needs_weight_to_name_its_kernel(tmp_path: Path) -> None:
    result = run("show", ALL_CONVS, "--layer", "sep2d", "-o", tmp_path / "x.png")
    assert_one_error_line(result, 1, "--weight depthwise_kernel", "--weight pointwise_kernel")


# --- histograms ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken(keras, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose conv kernel holds 5 zeros, 2 NaNs and an inf (Keras saves them; `set`
    would refuse them)."""
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="head")])
    kernel = np.linspace(-1, 1, 18, dtype=np.float32).reshape(3, 3, 1, 2)
    kernel.flat[[0, 1, 2, 3, 4]] = 0.0
    kernel.flat[[5, 6]] = np.nan
    kernel.flat[7] = np.inf
    model.get_layer("conv").set_weights([kernel, np.zeros(2, np.float32)])
    path = tmp_path_factory.mktemp("broken") / "broken.keras"
    model.save(path)
    return path


def test_histograms_count_zeros_and_non_finite_values(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "hist.png"
    document = show_json(broken, "--layer", "conv", "--hist", "-o", out)
    assert document["kind"] == "histograms"
    counts = {d["variable"]: (d["stats"]["zeros"], d["stats"]["nonfinite"]) for d in document["variables"]}
    assert counts == {"kernel": (5, 3), "bias": (2, 0)}
    image = read_png(out)
    assert (image == NONFINITE).all(axis=-1).any()  # the kernel's non-finite count is printed in magenta
    picture = cs.show(broken, "conv", hist=True)
    assert [(d.variable, d.stats.zeros, d.stats.nonfinite) for d in picture.variables] == [
        ("kernel", 5, 3), ("bias", 2, 0)]
    assert np.array_equal(picture.image, image)


def test_a_grid_with_non_finite_weights_marks_them(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    drawn = show_json(broken, "--layer", "conv", "--input-channel", "0", "-o", out)["variables"][0]
    image = read_png(out)
    # kernel.flat[5] = (0, 2, 0, 1): tile 1, row 0, column 2; flat[7] = (1, 0, 0, 1).
    assert cell(image, drawn["tile_boxes"]["model"][1], 0, 2) == NONFINITE
    assert cell(image, drawn["tile_boxes"]["model"][1], 1, 0) == NONFINITE
    assert drawn["stats"]["nonfinite"] == 3


def test_hist_of_a_dense_layer_and_of_one_variable(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "h.png"
    assert [d["variable"] for d in show_json(broken, "--layer", "head", "--hist", "-o", out)["variables"]] == [
        "kernel", "bias"]
    assert [d["variable"] for d in show_json(broken, "--layer", "conv", "--hist", "-w", "bias", "-o", out)[
        "variables"]] == ["bias"]


def plot_rows(image: np.ndarray) -> int:
    """Bands of rows holding histogram plot areas: one band per row of plots."""
    from conv_surgeon.pictures.colours import PLOT_AREA

    rows = (image == PLOT_AREA).all(axis=-1).any(axis=1)
    return int(np.count_nonzero(rows[1:] & ~rows[:-1]) + rows[0])


def test_all_hist_draws_one_row_per_conv_layer(tmp_path: Path) -> None:
    out = tmp_path / "all.png"
    document = show_json(ALL_CONVS, "--all", "--hist", "-o", out)
    convs = [layer["path"] for layer in json.loads(run("inspect", ALL_CONVS, "--json").stdout)["layers"]]
    layers = list(dict.fromkeys(d["layer"] for d in document["variables"]))
    assert layers == convs and len(convs) == 16
    assert plot_rows(read_png(out)) == len(convs)


def test_hist_against_compares_every_variable(known: Path, tmp_path: Path) -> None:
    out = tmp_path / "h.png"
    document = show_json(known, "--all", "--hist", "--against", TINY, "-o", out)
    by_layer = {(d["layer"], d["variable"]): d for d in document["variables"]}
    assert by_layer[("conv1", "kernel")]["difference_stats"]["max"] > 0
    assert by_layer[("conv2", "kernel")]["difference_stats"] == {
        "min": 0.0, "max": 0.0, "mean": 0.0, "std": 0.0, "l2": 0.0, "zeros": 72 * 4, "nonfinite": 0}
    assert plot_rows(read_png(out)) == 3


# --- the terminal ------------------------------------------------------------------------------


def run_on_terminal(args: list[str], columns: int, **env: str) -> tuple[int, str, str]:
    """The console script with a real terminal (a pty) as stdout."""
    master, slave = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLORTERM")}
    environment.update({"COLUMNS": str(columns), "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    process = subprocess.Popen([str(Path(sys.executable).parent / "conv-surgeon"), *args], stdout=slave,
                               stderr=subprocess.PIPE, env=environment, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    stderr = process.stderr.read().decode() if process.stderr else ""
    return process.wait(), b"".join(chunks).decode().replace("\r\n", "\n"), stderr


def decode_half_blocks(line: str) -> tuple[list[object], list[object]]:
    """The (top, bottom) pixel colours of one line of half blocks; None is the terminal's
    background. Colours are (r, g, b) or a 256-colour index."""
    top: list[object] = []
    bottom: list[object] = []
    foreground = background = None
    for match in re.finditer(r"\x1b\[([\d;]*)m|(.)", line):
        if match.group(1) is not None:
            codes = [int(c) for c in match.group(1).split(";")]
            while codes:
                code = codes.pop(0)
                if code == 0:
                    foreground = background = None
                elif code in (39, 49):
                    foreground, background = (None, background) if code == 39 else (foreground, None)
                elif code in (38, 48):
                    mode = codes.pop(0)
                    value = tuple(codes[:3]) if mode == 2 else codes[0]
                    codes = codes[3:] if mode == 2 else codes[1:]
                    foreground, background = (value, background) if code == 38 else (foreground, value)
            continue
        char = match.group(2)
        if char == "\u2580":
            top.append(foreground), bottom.append(background)
        elif char == "\u2584":
            top.append(background), bottom.append(foreground)
        else:
            assert char == " ", f"unexpected {char!r} in a pixel line"
            top.append(background), bottom.append(background)
    return top, bottom


def pixel_rows(text: str) -> list[list[object]]:
    rows: list[list[object]] = []
    for line in text.splitlines():
        if "\u2580" in line or "\u2584" in line:
            rows.extend(decode_half_blocks(line))
    return rows


def test_the_grid_on_a_truecolor_terminal_is_the_pictures_pixels(known: Path) -> None:
    code, out, err = run_on_terminal(["show", str(known), "--layer", "conv1"], columns=60, COLORTERM="truecolor")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    labels = next(i for i, line in enumerate(lines) if re.sub(r"\x1b\[[\d;]*m", "", line).split() == ["0", "1", "2", "3"])
    assert " ".join(lines[:labels]) == (f"{known}: layer 'conv1' (Conv2D) kernel (3, 3, 1, 4) float32 4 tiles, one "
                                        "per output filter; each shows its one input channel")  # wrapped at 60
    assert all(len(line) <= 60 for line in lines[:labels])
    lines = lines[labels - 2:]
    assert re.sub(r"\x1b\[[\d;]*m", "", lines[2]).split() == ["0", "1", "2", "3"]
    assert all(len(re.sub(r"\x1b\[[\d;]*m", "", line)) <= 60 for line in lines if "\u2580" in line or "\u2584" in line)
    rows = pixel_rows("\n".join(lines[3:]))
    label = re.sub(r"\x1b\[[\d;]*m", "", lines[2])
    starts = [label.index(str(i)) for i in range(4)]
    scale = (starts[1] - starts[0] - 1) // 3  # each tile is 3 weights * scale cells wide, a blank after it
    assert scale >= 1 and all(row[starts[0] + 3 * scale] is None for row in rows[:3 * scale])  # the gap

    def weight(tile: int, r: int, c: int) -> object:
        return rows[r * scale][starts[tile] + c * scale]

    picture = cs.show(known, "conv1")
    image, boxes = picture.image, picture.variables[0].tile_boxes
    assert boxes is not None
    for tile in range(4):
        for r in range(3):
            for c in range(3):
                assert weight(tile, r, c) == cell(image, list(boxes[0][tile]), r, c)
    assert weight(0, 1, 1) == ZERO and is_red(weight(0, 1, 2)) and is_blue(weight(0, 1, 0))  # type: ignore[arg-type]
    assert "±2 (scale of the layer)" in " ".join(out.splitlines())  # the legend, wrapped at 60


def test_the_grid_on_a_256_colour_terminal(known: Path) -> None:
    code, out, _ = run_on_terminal(["show", str(known), "--layer", "conv1"], columns=80)
    assert code == 0 and "\x1b[38;2;" not in out
    rows = pixel_rows(out)
    colours = {value for row in rows for value in row if value is not None}
    assert all(isinstance(value, int) and 16 <= value <= 255 for value in colours)
    assert xterm256(ZERO) in colours  # the zeros


def test_a_narrow_terminal_gets_fewer_tiles_per_row() -> None:
    code, out, _ = run_on_terminal(["show", str(ALL_CONVS), "--layer", "dw2d"], columns=20, COLORTERM="24bit")
    assert code == 0
    labels = [re.sub(r"\x1b\[[\d;]*m", "", line).split() for line in out.splitlines()]
    rows = [words for words in labels if words and all(w.isdigit() for w in words)]
    assert [int(w) for words in rows for w in words] == list(range(8))
    assert all(len(words) < 8 for words in rows)
    assert all(len(re.sub(r"\x1b\[[\d;]*m", "", line)) <= 20 for line in out.splitlines()
               if "\u2580" in line or "\u2584" in line)


def test_no_color_refuses_and_says_to_use_o(known: Path) -> None:
    code, out, err = run_on_terminal(["show", str(known), "--layer", "conv1"], columns=80, NO_COLOR="1")
    assert (code, out) == (2, "")
    assert err.startswith("Error: NO_COLOR is set") and "-o FILE.png" in err and err.count("\n") == 1


def test_off_a_terminal_it_asks_for_o(known: Path) -> None:
    assert_one_error_line(run("show", known, "--layer", "conv1"), 2, "stdout is not a terminal", "-o FILE.png")
    assert_one_error_line(run("show", known, "--layer", "conv1", "--hist"), 2, "add -o FILE.png")


# --- errors --------------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def empty(keras, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("empty") / "empty.keras"
    keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten()], name="empty").save(path)
    return path


@pytest.mark.parametrize("what, args, exit_code, message", [
    ("a Dense layer", ["--layer", "head"], 1, "layer 'head' is a Dense layer, not a convolution"),
    ("a layer without weights", ["--layer", "pool"], 1, "no layer with weights named 'pool'"),
    ("an unknown layer", ["--layer", "conv9"], 1, "no layer with weights named 'conv9'; did you mean"),
    ("a bias", ["--layer", "conv1", "--weight", "bias"], 1, "bias (4,) is not a kernel"),
    ("no such variable", ["--layer", "conv1", "--weight", "gamma"], 1, "has no variable 'gamma'"),
    ("an input channel too far", ["--layer", "conv2", "--input-channel", "4"], 1,
     "--input-channel expected 0..3 (the kernel has 4 input channels), received 4"),
    ("a channel and a reduction", ["--layer", "conv2", "--input-channel", "0", "--reduce", "l2"], 2, "not both"),
    ("grid options with --hist", ["--layer", "conv2", "--hist", "--columns", "4"], 2, "--columns only shape"),
    ("--all without --hist", ["--all"], 2, "a filter grid draws one layer"),
    ("--layer and --all", ["--layer", "conv1", "--all", "--hist"], 2, "not both"),
    ("neither", [], 2, "give --layer L"),
    ("not a PNG name", ["--layer", "conv1", "-o", "{tmp}/x.jpg"], 2, "name the file .png"),
])
def test_mistakes_are_one_line_and_write_nothing(tmp_path: Path, what: str, args: list[str], exit_code: int,
                                                message: str) -> None:
    model = copy_into(tmp_path, TINY)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "x.png")]
    before = listing(tmp_path)
    assert_one_error_line(run("show", model, *args), exit_code, message)
    assert listing(tmp_path) == before


def test_o_never_overwrites_the_model(tmp_path: Path) -> None:
    model = copy_into(tmp_path, TINY)
    before = listing(tmp_path)
    for args in (["--layer", "conv1"], ["--layer", "conv1", "--against", str(TINY)]):
        assert_one_error_line(run("show", model, *args, "-o", model), 1, "is the input model", "refusing to overwrite")
    assert_one_error_line(run("show", TINY, "--layer", "conv1", "--against", model, "-o", model), 1,
                          "refusing to overwrite")
    assert listing(tmp_path) == before
    with pytest.raises(cs.ConvSurgeonError, match="refusing to overwrite"):
        cs.show(model, "conv1", out=model)
    assert listing(tmp_path) == before


def test_an_empty_model_is_one_line(empty: Path, tmp_path: Path) -> None:
    for args in (["--layer", "conv1"], ["--all", "--hist"]):
        assert_one_error_line(run("show", empty, *args, "-o", tmp_path / "x.png"), 1,
                              "the model has no layers with weights, so there is nothing to draw")
    assert listing(tmp_path) == {}


def test_a_failed_write_leaves_the_old_file_and_nothing_else(known: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "x.png"
    out.write_bytes(b"old")

    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    assert_one_error_line(run("show", known, "--layer", "conv1", "-o", out), 1, "writing failed", "nothing was written")
    assert out.read_bytes() == b"old" and sorted(listing(tmp_path)) == ["x.png"]
    assert_one_error_line(run("show", known, "--layer", "conv1", "-o", tmp_path / "no" / "x.png"), 1,
                          "output directory")


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (155, 496)])
def test_the_png_writer_gives_the_pixels_back_to_pillow(size: tuple[int, int]) -> None:
    import io

    from conv_surgeon.pictures.picture import png_bytes

    pixels = np.random.default_rng(3).integers(0, 256, size=size + (3,), dtype=np.uint8)
    with Image.open(io.BytesIO(png_bytes(pixels.tobytes(), size[1], size[0]))) as image:
        image.verify()
    with Image.open(io.BytesIO(png_bytes(pixels.tobytes(), size[1], size[0]))) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (size[1], size[0]))
        assert np.array_equal(np.asarray(image), pixels)


def test_a_picture_replaces_an_existing_file_atomically(known: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    out.write_bytes(b"old")
    assert run("show", known, "--layer", "conv1", "-o", out).exit_code == 0
    assert out.read_bytes().startswith(b"\x89PNG") and sorted(listing(tmp_path)) == ["x.png"]


# --- without TensorFlow --------------------------------------------------------------------------


def test_show_imports_neither_tensorflow_nor_keras(tmp_path: Path) -> None:
    out_cli, out_api = tmp_path / "cli.png", tmp_path / "api.png"
    argv = ["conv-surgeon", "show", str(TINY), "--layer", "conv1", "-o", str(out_cli)]
    then = ("import conv_surgeon as cs\n"
            f"cs.show({str(ALL_CONVS)!r}, hist=True, out={str(out_api)!r})\n"
            f"cs.show({str(ALL_CONVS)!r}, 'sep2d', weight='depthwise_kernel', against={str(ALL_CONVS)!r})")
    assert loaded_after_command(argv, ("tensorflow", "keras", "keras_hub"), then) == {"status": 0, "loaded": []}
    assert out_cli.is_file() and out_api.is_file()


def test_a_grid_of_a_keras_3_save_needs_neither_numpy_nor_h5py_nor_rich(tmp_path: Path) -> None:
    # The pure-Python HDF5 reader reads the kernel's bytes, the grid is cut and coloured
    # in pure Python, and the one line needs no console: numpy's import alone would take
    # longer than the whole grid. Only --json's statistics need numpy.
    out = tmp_path / "x.png"
    for layer, options in (("conv1", ()), ("conv2", ("--against", str(TINY), "--scale", "each"))):
        argv = ["conv-surgeon", "show", str(TINY), "--layer", layer, *options, "-o", str(out)]
        assert loaded_after_command(argv, ("numpy", "h5py", "rich")) == {"status": 0, "loaded": []}
        assert read_png(out).shape[2] == 3
    argv = ["conv-surgeon", "show", str(TINY), "--layer", "conv1", "-o", str(out), "--json"]
    assert loaded_after_command(argv, ("numpy",)) == {"status": 0, "loaded": ["numpy"]}


def test_other_commands_do_not_import_pillow() -> None:
    argv = ["conv-surgeon", "inspect", str(TINY)]
    assert loaded_after_command(argv, ("PIL",)) == {"status": 0, "loaded": []}
