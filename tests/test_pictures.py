"""The picture code alone, on arrays: colours, what a tile shows for each kind of kernel,
scales, histograms and the terminal's half blocks. No model files, no Keras.

The grid code is pure Python; numpy here builds kernels and is the reference the
colours are checked against (they were numpy's before, and pictures are compared
pixel for pixel)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conv_surgeon.errors import ConvSurgeonError, UsageError
from conv_surgeon.model.structure import Layer, Variable
from conv_surgeon.instruments.reading import variable_stats
from conv_surgeon.instruments.show import Values
from conv_surgeon.pictures.colours import _ANCHORS, _COLOURS, NONFINITE, RGB_ZERO, ZERO, diverging, linspace, rgb
from conv_surgeon.pictures.histogram import BINS, histogram, value_range
from conv_surgeon.pictures.options import GridOptions
from conv_surgeon.pictures.terminal import half_blocks, xterm256
from conv_surgeon.pictures.canvas import tick_step
from conv_surgeon.pictures.terminal import wrapped
from conv_surgeon.pictures.tiles import FilterTiles, count_nonfinite, filter_tiles, kernel_kind, matrix_rows, tile_scales


def layer(class_name: str, shape: tuple[int, ...], name: str = "kernel") -> tuple[Layer, Variable]:
    variable = Variable(name, "layers/x/vars/0", shape, "float32", 0)
    return Layer("x", "x", class_name, {}, (variable,)), variable


def values(kernel: np.ndarray) -> Values:
    """A kernel as show reads it: float64 stays float64, float32 as it is."""
    data = np.ascontiguousarray(kernel, dtype=np.float64 if kernel.dtype == np.float64 else np.float32)
    code = "d" if data.dtype == np.float64 else "f"
    return Values(memoryview(data.tobytes()).cast(code), data.shape, code)  # type: ignore[arg-type]


def tiles(class_name: str, kernel: np.ndarray, name: str = "kernel", taps: bool = False,
          **options: object) -> FilterTiles:
    found, variable = layer(class_name, kernel.shape, name)
    return filter_tiles(found, variable, values(kernel), GridOptions(**options), taps=taps)  # type: ignore[arg-type]


def tiles_of(class_name: str, kernel: np.ndarray, name: str = "kernel", **options: object) -> np.ndarray:
    """The tiles as one array ``(n, h, w)`` or ``(n, h, w, 3)``."""
    found = tiles(class_name, kernel, name, **options)
    return np.array([list(t) for t in found.values], dtype=np.float64).reshape(found.shape)


# --- colours -------------------------------------------------------------------------------------


def test_the_diverging_map_is_neutral_at_zero_and_signed() -> None:
    colours = [diverging(x) for x in [-1.0, -0.5, 0.0, 0.5, 1.0, 3.0, math.nan, math.inf]]
    assert colours[2] == ZERO and diverging(-0.0) == ZERO
    blue, half_blue, _, half_red, red, clipped, nan, inf = colours
    assert blue[2] > blue[0] and red[0] > red[2]
    assert blue[0] < half_blue[0] and red[2] < half_red[2]  # stronger further from zero
    assert clipped == red and nan == NONFINITE and inf == NONFINITE
    # A mirror image in strength: as far from white on either side.
    assert sum(255 - v for v in blue) == pytest.approx(sum(255 - v for v in red), rel=0.2)


def test_the_diverging_map_is_numpys_interpolation_to_the_unit() -> None:
    # The colours numpy gave (np.interp, then floor(x + 0.5)) on values across the range.
    x = np.concatenate([np.linspace(-1.0, 1.0, 2001), np.random.default_rng(0).uniform(-1, 1, 2000),
                        np.array(_ANCHORS), np.nextafter(np.array(_ANCHORS), 2.0)])
    x = np.clip(x, -1.0, 1.0)
    table = np.array(_COLOURS, dtype=np.float64)
    expected = np.floor(np.stack([np.interp(x, np.array(_ANCHORS), table[:, c]) for c in range(3)], axis=-1) + 0.5)
    assert [diverging(v) for v in x.tolist()] == [tuple(row) for row in expected.astype(int).tolist()]


def test_linspace_is_numpys() -> None:
    for count in (1, 2, 24, 144):
        assert linspace(-1.0, 1.0, count) == np.linspace(-1.0, 1.0, count).tolist()


def test_rgb_maps_minus_one_zero_and_one_to_0_128_255() -> None:
    assert [rgb(-1.0, 0.0, 1.0), rgb(0.0, 0.0, 0.0), rgb(math.nan, 0.0, 0.0), rgb(0.5, 3.0, -0.5)] == [
        (0, 128, 255), RGB_ZERO, NONFINITE, (191, 255, 64)]


# --- tiles of every kind of kernel ---------------------------------------------------------------


def test_a_conv_tile_is_an_output_filter_and_reduces_its_inputs() -> None:
    kernel = np.zeros((3, 3, 2, 4))  # (kh, kw, in, filters)
    kernel[0, 1, 0, 2] = 4.0
    kernel[0, 1, 1, 2] = 2.0
    assert tiles_of("Conv2D", kernel).shape == (4, 3, 3)
    assert tiles_of("Conv2D", kernel)[2, 0, 1] == 3.0  # the mean
    assert tiles_of("Conv2D", kernel, reduce="l2")[2, 0, 1] == pytest.approx(math.sqrt(20))
    assert tiles_of("Conv2D", kernel, input_channel=1)[2, 0, 1] == 2.0
    with pytest.raises(ConvSurgeonError, match="expected 0..1"):
        tiles_of("Conv2D", kernel, input_channel=2)


def test_a_transposed_tile_is_the_filter_axis_second_to_last() -> None:
    kernel = np.zeros((3, 3, 2, 5))  # (kh, kw, filters, in)
    kernel[2, 2, 1, :] = 1.0
    tiles = tiles_of("Conv2DTranspose", kernel)
    assert tiles.shape == (2, 3, 3) and tiles[1, 2, 2] == 1.0 and tiles[0].sum() == 0


def test_depthwise_tiles_are_in_major() -> None:
    kernel = np.zeros((3, 3, 4, 2))  # (kh, kw, in, multiplier)
    kernel[0, 0, 3, 1] = 1.0
    tiles = tiles_of("DepthwiseConv2D", kernel)
    assert tiles.shape == (8, 3, 3) and tiles[3 * 2 + 1, 0, 0] == 1.0 and tiles.sum() == 1.0
    with pytest.raises(ConvSurgeonError, match="one input channel's filter already"):
        tiles_of("DepthwiseConv2D", kernel, reduce="mean")


def test_a_3d_kernel_shows_its_centre_slice() -> None:
    kernel = -np.ones((3, 2, 2, 1, 1))
    kernel[1] = 1.0
    found = tiles("Conv3D", kernel)
    assert found.shape == (1, 2, 2) and (tiles_of("Conv3D", kernel) == 1.0).all()
    assert found.notes == ("3-D kernel: the centre slice kd=1 of 3 (kd = 0..2)",)


def test_a_1d_kernel_is_a_strip_and_three_channels_are_colour() -> None:
    found = tiles("Conv1D", np.ones((5, 3, 2)))
    assert found.strip and found.colour and found.shape == (2, 1, 5, 3)


def test_a_pointwise_kernel_is_one_weight_per_tile_per_input() -> None:
    kernel = np.arange(8 * 4, dtype=np.float64).reshape(1, 1, 8, 4)
    tiles = tiles_of("SeparableConv2D", kernel, name="pointwise_kernel", input_channel=5)
    assert tiles.shape == (4, 1, 1) and tiles[:, 0, 0].tolist() == kernel[0, 0, 5].tolist()


def test_scales_are_shared_by_the_sets_side_by_side() -> None:
    a = tiles("Conv2D", np.array([[[[1.0, -4.0, 0.0]]]]))
    b = tiles("Conv2D", np.array([[[[2.0, np.nan, 0.0]]]]))
    assert tile_scales([a, b], None) == tile_scales([a, b], "layer") == ([4.0, 4.0, 4.0], [4.0, 4.0, 4.0])
    assert tile_scales([a, b], "each") == ([2.0, 4.0, 0.0], [2.0, 4.0, 0.0])  # a filter's, over A and B
    assert tile_scales([a, b], "panel") == ([4.0, 4.0, 4.0], [2.0, 2.0, 2.0])  # each set its own
    assert (count_nonfinite(a), count_nonfinite(b)) == (0, 1)


def test_tiles_are_the_kernels_numbers_as_numpy_cut_them() -> None:
    """Every kind of tile against numpy's own slicing of a random kernel (the reference
    implementation the grid used before it was pure Python)."""
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((3, 2, 5, 7)).astype(np.float32)  # (kh, kw, in, filters)
    data = np.moveaxis(kernel.astype(np.float64), -1, 0)  # (filters, kh, kw, in)
    assert np.array_equal(tiles_of("Conv2D", kernel, input_channel=4), data[..., 4])
    assert np.allclose(tiles_of("Conv2D", kernel), data.mean(axis=-1), rtol=1e-15, atol=1e-15)
    assert np.allclose(tiles_of("Conv2D", kernel, reduce="l2"), np.sqrt((data * data).sum(axis=-1)), rtol=1e-15)
    rgb_kernel = kernel[:, :, :3]
    assert np.array_equal(tiles_of("Conv2D", rgb_kernel), np.moveaxis(rgb_kernel.astype(np.float64), -1, 0))
    transposed = np.moveaxis(data, 0, -2)  # (kh, kw, filters, in)
    assert np.allclose(tiles_of("Conv2DTranspose", transposed), data.mean(axis=-1), rtol=1e-15, atol=1e-15)
    depthwise = rng.standard_normal((3, 3, 3, 2))  # float64: (kh, kw, in, multiplier)
    assert np.array_equal(tiles_of("DepthwiseConv2D", depthwise),
                          np.moveaxis(depthwise.reshape(3, 3, 6), -1, 0))
    cube = rng.standard_normal((5, 3, 2, 4, 3))  # (kd, kh, kw, in, filters)
    assert np.allclose(tiles_of("Conv3D", cube), np.moveaxis(cube[2], -1, 0).mean(axis=-1), rtol=1e-15, atol=1e-15)


# --- the kind of picture, and heat maps' rows ----------------------------------------------------


@pytest.mark.parametrize("class_name, shape, kind", [
    ("Conv2D", (3, 3, 4, 8), "tiles"),
    ("Conv2D", (1, 1, 96, 320), "matrix"),
    ("Conv1D", (1, 64, 16), "matrix"),
    ("Conv3D", (1, 1, 1, 5, 7), "matrix"),
    ("DepthwiseConv2D", (1, 1, 4, 2), "matrix"),
    ("Conv2D", (512, 1, 1, 64), "taps"),
    ("Conv2D", (1, 9, 2, 4), "taps"),
    ("Conv1D", (512, 1, 64), "taps"),
    ("Conv3D", (3, 1, 1, 2, 2), "taps"),
    ("Conv3D", (3, 3, 1, 2, 2), "tiles"),
])
def test_the_kind_of_picture_follows_the_spatial_axes_longer_than_1(class_name: str, shape: tuple[int, ...],
                                                                    kind: str) -> None:
    found, variable = layer(class_name, shape)
    assert kernel_kind(found, variable, shape, None) == kind
    assert kernel_kind(found, variable, shape, "tiles") == "tiles"  # any kernel can be tiles


def test_a_kind_the_kernel_cannot_be_drawn_as_names_the_one_it_can() -> None:
    found, variable = layer("Conv2D", (3, 3, 4, 8))
    with pytest.raises(ConvSurgeonError, match=r"--kind matrix draws a kernel of size 1 \(a 1x1 conv\), and this "
                                               r"kernel's size is 3x3; use --kind tiles or tiles"):
        kernel_kind(found, variable, (3, 3, 4, 8), "matrix")
    found, variable = layer("Conv2D", (1, 1, 4, 8))
    assert kernel_kind(found, variable, (1, 1, 4, 8), "taps") == "taps"  # one tap a filter
    found, variable = layer("Conv1D", (5, 4, 8))
    with pytest.raises(ConvSurgeonError, match="use --kind taps or tiles"):
        kernel_kind(found, variable, (5, 4, 8), "matrix")


def rows_of(found: FilterTiles) -> np.ndarray:
    return np.array([list(row) for row in found.values], dtype=np.float64)


def test_a_matrix_has_a_row_per_filter_of_every_input_channel() -> None:
    rng = np.random.default_rng(4)
    kernel = rng.standard_normal((1, 1, 5, 7))
    found, variable = layer("Conv2D", kernel.shape)
    rows = matrix_rows(found, variable, values(kernel), GridOptions())
    assert (rows.count, rows.width, rows.cells, rows.filters) == (7, 5, "input channels", "output filters")
    assert np.array_equal(rows_of(rows), kernel[0, 0].T)
    transposed = rng.standard_normal((1, 7, 5))  # Conv1DTranspose (k, filters, in)
    found, variable = layer("Conv1DTranspose", transposed.shape)
    assert np.array_equal(rows_of(matrix_rows(found, variable, values(transposed), GridOptions())), transposed[0])
    depthwise = rng.standard_normal((1, 1, 4, 3))  # (in, multiplier): a row per multiplier slot
    found, variable = layer("DepthwiseConv2D", depthwise.shape)
    rows = matrix_rows(found, variable, values(depthwise), GridOptions())
    assert rows.filters == "multiplier slots" and np.array_equal(rows_of(rows), depthwise[0, 0].T)
    with pytest.raises(ConvSurgeonError, match="drop --input-channel"):
        matrix_rows(*layer("Conv2D", kernel.shape), values(kernel), GridOptions(input_channel=0))


def test_taps_are_every_spatial_position_a_3d_kernels_depth_too() -> None:
    rng = np.random.default_rng(5)
    cube = rng.standard_normal((5, 1, 1, 4, 2))  # Conv3D (kd, kh, kw, in, filters): 5 taps along depth
    found = tiles("Conv3D", cube, taps=True)
    assert (found.count, found.height, found.width, found.notes, found.cells) == (2, 1, 5, (), "taps")
    assert np.allclose(rows_of(found), cube[:, 0, 0].mean(axis=1).T, rtol=1e-15, atol=1e-15)
    column = rng.standard_normal((9, 1, 4, 6))  # Conv2D (kh, 1): its taps run down
    assert np.array_equal(rows_of(tiles("Conv2D", column, taps=True, input_channel=2)), column[:, 0, 2].T)
    depthwise = rng.standard_normal((7, 3, 2))  # DepthwiseConv1D (k, in, multiplier): a row per output channel
    found = tiles("DepthwiseConv1D", depthwise, taps=True)
    assert found.filters == "output channels" and np.array_equal(rows_of(found), depthwise.reshape(7, 6).T)


def test_tick_steps_leave_room_for_their_labels() -> None:
    assert [tick_step(pitch, 18) for pitch in (1, 2, 3, 9, 18, 40)] == [20, 10, 10, 2, 1, 1]


def test_terminal_text_is_wrapped_to_the_width_long_paths_too() -> None:
    path = "/very/long/" + "x" * 50 + ".keras: layer 'conv1'"
    lines = wrapped([path, "", "a short line"], 20)
    assert all(len(line) <= 20 for line in lines) and "".join(lines[:4]).startswith("/very/long/xxx")
    assert lines[-2:] == ["", "a short line"]


@pytest.mark.parametrize("options, histograms, message", [
    (GridOptions(columns=0), False, "--columns 0"),
    (GridOptions(input_channel=1, reduce="mean"), False, "not both"),
    (GridOptions(scale="each"), True, "--scale only shape the filter grid"),
    (GridOptions(reduce="max"), False, "expected one of mean, l2"),  # type: ignore[arg-type]
])
def test_options_that_cannot_be_drawn_are_usage_errors(options: GridOptions, histograms: bool, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        options.check(histograms)


# --- histograms ----------------------------------------------------------------------------------


def test_histogram_bins_hold_every_finite_value() -> None:
    values = np.array([0.0, 0.0, -1.0, 1.0, 0.5, np.nan, np.inf])
    stats = variable_stats(values)
    assert (stats.zeros, stats.nonfinite) == (2, 2)
    hist = histogram(values, value_range([stats]))
    assert hist.counts.shape == (BINS,) and hist.counts.sum() == 5 and (hist.low, hist.high) == (-1.0, 1.0)


def test_a_constant_or_empty_range_is_widened() -> None:
    assert value_range([variable_stats(np.zeros(4))]) == (-0.5, 0.5)
    assert value_range([variable_stats(np.full(3, 2.0))]) == (1.0, 3.0)
    assert value_range([variable_stats(np.array([np.nan]))]) == (-1.0, 1.0)
    assert value_range([variable_stats(np.array([-2.0, 1.0])), variable_stats(np.array([3.0]))]) == (-2.0, 3.0)


# --- the terminal's cells --------------------------------------------------------------------------


def test_xterm256_picks_the_cube_or_the_grey_ramp() -> None:
    colours = [(255, 0, 0), (0, 0, 0), (255, 255, 255), (128, 128, 128), (95, 135, 175), (7, 8, 9)]
    assert [xterm256(c) for c in colours] == [196, 16, 231, 244, 16 + 36 * 1 + 6 * 2 + 3, 232]


def test_half_blocks_put_two_pixels_in_a_cell_and_leave_the_rest_blank() -> None:
    pixels = [[(1, 2, 3), (7, 8, 9), (0, 0, 0), (0, 0, 0)], [(4, 5, 6), (0, 0, 0), (10, 11, 12), (0, 0, 0)]]
    drawn = [[True, True, False, False], [True, False, True, False]]
    (line,) = half_blocks(pixels, drawn, truecolor=True)
    assert line == ("\x1b[38;2;1;2;3m\x1b[48;2;4;5;6m\u2580"  # top and bottom
                    "\x1b[38;2;7;8;9m\x1b[49m\u2580"  # top only: the terminal's background below
                    "\x1b[38;2;10;11;12m\u2584"  # bottom only
                    "\x1b[0m")  # the blank at the end is dropped
    (line,) = half_blocks([row[:1] for row in pixels], [row[:1] for row in drawn], truecolor=False)
    assert line == "\x1b[38;5;16m\x1b[48;5;232m\u2580\x1b[0m"  # (4, 5, 6) is nearest the darkest grey


@pytest.mark.parametrize("count", [1000, 1 << 20], ids=["python", "numpy"])
def test_a_difference_is_numpys_to_the_bit(count: int) -> None:
    """A - B (--against) as numpy computes it, float32 or promoted to float64, NaN and
    inf included, on both sides of the size from which numpy does it."""
    rng = np.random.default_rng(2)
    a = (rng.standard_normal(count) * np.exp2(rng.integers(-60, 60, count))).astype(np.float32)
    b = (rng.standard_normal(count) * np.exp2(rng.integers(-60, 60, count))).astype(np.float32)
    a[:5], b[:5] = [np.inf, np.inf, np.nan, 0.0, 3.4e38], [np.inf, -np.inf, 1.0, -0.0, -3.4e38]  # the last overflows
    for first, second in ((a, b), (a, b.astype(np.float64))):
        found = values(first).minus(values(second))
        with np.errstate(invalid="ignore", over="ignore"):
            expected = first - second
        assert found.code == ("f" if expected.dtype == np.float32 else "d")
        assert found.numpy().tobytes() == expected.tobytes()
