"""The picture code alone, on arrays: colours, what a tile shows for each kind of kernel,
scales, histograms and the terminal's half blocks. No model files, no Keras."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conv_surgeon.errors import ConvSurgeonError, UsageError
from conv_surgeon.model.structure import Layer, Variable
from conv_surgeon.ops.reading import variable_stats
from conv_surgeon.pictures.colours import NONFINITE, RGB_ZERO, ZERO, diverging, rgb
from conv_surgeon.pictures.histogram import BINS, histogram, value_range
from conv_surgeon.pictures.options import GridOptions
from conv_surgeon.pictures.terminal import half_blocks, xterm256
from conv_surgeon.pictures.tiles import filter_tiles, tile_scales


def layer(class_name: str, shape: tuple[int, ...], name: str = "kernel") -> tuple[Layer, Variable]:
    variable = Variable(name, f"layers/x/vars/0", shape, "float32", 0)
    return Layer("x", "x", class_name, {}, (variable,)), variable


def tiles_of(class_name: str, kernel: np.ndarray, name: str = "kernel", **options: object) -> np.ndarray:
    found, variable = layer(class_name, kernel.shape, name)
    return filter_tiles(found, variable, kernel, GridOptions(**options)).values  # type: ignore[arg-type]


# --- colours -------------------------------------------------------------------------------------


def test_the_diverging_map_is_neutral_at_zero_and_signed() -> None:
    colours = diverging(np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 3.0, np.nan, np.inf]))
    assert tuple(colours[2]) == ZERO
    blue, half_blue, _, half_red, red, clipped, nan, inf = (tuple(int(v) for v in c) for c in colours)
    assert blue[2] > blue[0] and red[0] > red[2]
    assert blue[0] < half_blue[0] and red[2] < half_red[2]  # stronger further from zero
    assert clipped == red and nan == NONFINITE and inf == NONFINITE
    # A mirror image in strength: as far from white on either side.
    assert sum(255 - v for v in blue) == pytest.approx(sum(255 - v for v in red), rel=0.2)


def test_rgb_maps_minus_one_zero_and_one_to_0_128_255() -> None:
    colours = rgb(np.array([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]))
    assert colours.tolist() == [[0, 128, 255], list(RGB_ZERO), list(NONFINITE)]


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
    found, variable = layer("Conv3D", kernel.shape)
    tiles = filter_tiles(found, variable, kernel, GridOptions())
    assert tiles.values.shape == (1, 2, 2) and (tiles.values == 1.0).all()
    assert tiles.notes == ("3-D kernel: the centre slice kd=1 of 3 (kd = 0..2)",)


def test_a_1d_kernel_is_a_strip_and_three_channels_are_colour() -> None:
    found, variable = layer("Conv1D", (5, 3, 2))
    tiles = filter_tiles(found, variable, np.ones((5, 3, 2)), GridOptions())
    assert tiles.strip and tiles.colour and tiles.values.shape == (2, 1, 5, 3)


def test_a_pointwise_kernel_is_one_weight_per_tile_per_input() -> None:
    kernel = np.arange(8 * 4, dtype=np.float64).reshape(1, 1, 8, 4)
    tiles = tiles_of("SeparableConv2D", kernel, name="pointwise_kernel", input_channel=5)
    assert tiles.shape == (4, 1, 1) and tiles[:, 0, 0].tolist() == kernel[0, 0, 5].tolist()


def test_scales_are_shared_by_the_sets_side_by_side() -> None:
    found, variable = layer("Conv2D", (1, 1, 1, 3))
    a = filter_tiles(found, variable, np.array([[[[1.0, -4.0, 0.0]]]]), GridOptions())
    b = filter_tiles(found, variable, np.array([[[[2.0, np.nan, 0.0]]]]), GridOptions())
    assert tile_scales([a, b], per_filter=False).tolist() == [4.0, 4.0, 4.0]
    assert tile_scales([a, b], per_filter=True).tolist() == [2.0, 4.0, 0.0]


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
    colours = np.array([(255, 0, 0), (0, 0, 0), (255, 255, 255), (128, 128, 128), (95, 135, 175)], dtype=np.uint8)
    assert xterm256(colours).tolist() == [196, 16, 231, 244, 16 + 36 * 1 + 6 * 2 + 3]


def test_half_blocks_put_two_pixels_in_a_cell_and_leave_the_rest_blank() -> None:
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[0, 0], pixels[1, 0] = (1, 2, 3), (4, 5, 6)
    pixels[0, 1] = (7, 8, 9)
    pixels[1, 2] = (10, 11, 12)
    drawn = np.array([[True, True, False, False], [True, False, True, False]])
    (line,) = half_blocks(pixels, drawn, truecolor=True)
    assert line == ("\x1b[38;2;1;2;3m\x1b[48;2;4;5;6m\u2580"  # top and bottom
                    "\x1b[38;2;7;8;9m\x1b[49m\u2580"  # top only: the terminal's background below
                    "\x1b[38;2;10;11;12m\u2584"  # bottom only
                    "\x1b[0m")  # the blank at the end is dropped
    (line,) = half_blocks(pixels[:, :1], drawn[:, :1], truecolor=False)
    assert line == "\x1b[38;5;16m\x1b[48;5;232m\u2580\x1b[0m"  # (4, 5, 6) is nearest the darkest grey
