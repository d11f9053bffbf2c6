"""PyTorch / ONNX layout conversions for every convolution class in the catalogue."""

from __future__ import annotations

import numpy as np
import pytest

from conv_surgeon.edits.targets import TargetVariable
from conv_surgeon.model.catalogue import CONV_CLASSES, ConvClass
from conv_surgeon.errors import AssignmentError
from conv_surgeon.edits.layout import from_torch, to_torch, torch_axis_names, torch_shape

SPATIAL = {1: (3,), 2: (3, 5), 3: (2, 3, 5)}
IN_CHANNELS, MULTIPLIER, FILTERS = 4, 2, 6


def variables(conv: ConvClass) -> list[TargetVariable]:
    """The layer's variables with the shapes Keras builds (as the catalogue lists them)."""
    k = SPATIAL[conv.rank]
    if conv.kind == "conv":
        shapes = {"kernel": k + (IN_CHANNELS, FILTERS), "bias": (FILTERS,)}
    elif conv.kind == "transpose":
        shapes = {"kernel": k + (FILTERS, IN_CHANNELS), "bias": (FILTERS,)}
    elif conv.kind == "depthwise":
        shapes = {"kernel": k + (IN_CHANNELS, MULTIPLIER), "bias": (IN_CHANNELS * MULTIPLIER,)}
    else:
        shapes = {
            "depthwise_kernel": k + (IN_CHANNELS, MULTIPLIER),
            "pointwise_kernel": (1,) * conv.rank + (IN_CHANNELS * MULTIPLIER, FILTERS),
            "bias": (FILTERS,),
        }
    return [TargetVariable("layer", n, s, "float32", conv) for n, s in shapes.items()]


ALL_VARIABLES = [v for conv in CONV_CLASSES.values() for v in variables(conv)]


@pytest.mark.parametrize(
    "target", ALL_VARIABLES, ids=[f"{v.conv.name}-{v.name}" for v in ALL_VARIABLES]
)
def test_round_trip(target: TargetVariable) -> None:
    keras_value = np.random.default_rng(0).standard_normal(target.shape).astype(np.float32)
    torch_value = to_torch(target, keras_value)
    assert torch_value.shape == torch_shape(target)
    assert len(torch_axis_names(target)) == len(torch_shape(target))
    back = from_torch(target, torch_value)
    assert back.flags.c_contiguous
    np.testing.assert_array_equal(back, keras_value)


def test_conv2d_element_mapping() -> None:
    target = variables(CONV_CLASSES["Conv2D"])[0]
    keras_value = np.arange(np.prod(target.shape)).reshape(target.shape)
    torch_value = to_torch(target, keras_value)
    assert torch_shape(target) == (FILTERS, IN_CHANNELS, 3, 5)
    # torch weight[out, in, y, x] == keras kernel[y, x, in, out]
    assert torch_value[5, 3, 2, 4] == keras_value[2, 4, 3, 5]


def test_transpose_element_mapping() -> None:
    target = variables(CONV_CLASSES["Conv2DTranspose"])[0]
    keras_value = np.arange(np.prod(target.shape)).reshape(target.shape)
    torch_value = to_torch(target, keras_value)
    assert torch_shape(target) == (IN_CHANNELS, FILTERS, 3, 5)
    # torch ConvTranspose weight[in, out, y, x] == keras kernel[y, x, out, in]
    assert torch_value[3, 5, 1, 2] == keras_value[1, 2, 5, 3]


def test_depthwise_channel_order() -> None:
    target = variables(CONV_CLASSES["DepthwiseConv2D"])[0]
    keras_value = np.arange(np.prod(target.shape)).reshape(target.shape)
    torch_value = to_torch(target, keras_value)
    assert torch_shape(target) == (IN_CHANNELS * MULTIPLIER, 1, 3, 5)
    # output channel i * multiplier + m reads input channel i in both frameworks.
    i, m = 3, 1
    assert torch_value[i * MULTIPLIER + m, 0, 2, 4] == keras_value[2, 4, i, m]


def test_pointwise_is_a_1x1_conv() -> None:
    target = variables(CONV_CLASSES["SeparableConv2D"])[1]
    assert torch_shape(target) == (FILTERS, IN_CHANNELS * MULTIPLIER, 1, 1)
    assert torch_axis_names(target) == ("out", "in", "1", "1")


def test_wrong_torch_shape_is_refused() -> None:
    target = variables(CONV_CLASSES["Conv2D"])[0]
    with pytest.raises(AssignmentError) as caught:
        from_torch(target, np.zeros((6, 4, 5, 3)))
    assert str(caught.value) == (
        "layer 'layer' kernel: expected PyTorch/ONNX layout (6, 4, 3, 5) "
        "(out, in/groups, kh, kw), received (6, 4, 5, 3)"
    )
    with pytest.raises(AssignmentError):
        to_torch(target, np.zeros((6, 4, 3, 5)))
