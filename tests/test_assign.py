"""The assignment engine: TargetVariables built directly, shapes following the catalogue."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from conv_surgeon.edits.assign import Assignment, check_assignment, check_assignments
from conv_surgeon.edits.targets import TargetVariable
from conv_surgeon.model.catalogue import CONV_CLASSES
from conv_surgeon.errors import AssignmentError

CONV2D = CONV_CLASSES["Conv2D"]


def conv1_kernel(dtype: str = "float32") -> TargetVariable:
    return TargetVariable("conv1", "kernel", (3, 3, 1, 4), dtype, CONV2D)


def conv1_bias(dtype: str = "float32") -> TargetVariable:
    return TargetVariable("conv1", "bias", (4,), dtype, CONV2D)


def refusal(target: TargetVariable, array: np.ndarray, origin: str = "k.npy") -> str:
    with pytest.raises(AssignmentError) as caught:
        check_assignment(target, array, origin)
    message = str(caught.value)
    assert "\n" not in message
    assert f"layer '{target.layer}' {target.name}" in message
    return message


def plan_refusal(targets: list[TargetVariable], candidates: list) -> str:
    with pytest.raises(AssignmentError) as caught:
        check_assignments(targets, candidates)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- success ---------------------------------------------------------------------------


def test_matching_float32_is_written_as_is() -> None:
    kernel = np.arange(36, dtype=np.float32).reshape(3, 3, 1, 4)
    result = check_assignment(conv1_kernel(), kernel, "k.npy")
    assert result == Assignment(conv1_kernel(), result.value, "k.npy", None, ())
    np.testing.assert_array_equal(result.value, kernel)
    assert result.value.flags.c_contiguous


def test_fortran_order_input_comes_back_c_contiguous() -> None:
    kernel = np.asfortranarray(np.ones((3, 3, 1, 4), np.float32))
    assert check_assignment(conv1_kernel(), kernel, "k.npy").value.flags.c_contiguous


def test_value_is_a_copy_and_big_endian_input_is_not_a_cast() -> None:
    kernel = np.ones((3, 3, 1, 4), np.float32)
    result = check_assignment(conv1_kernel(), kernel, "k.npy")
    kernel[0, 0, 0, 0] = 5
    assert result.value[0, 0, 0, 0] == 1
    big_endian = np.ones((3, 3, 1, 4), ">f4")
    result = check_assignment(conv1_kernel(), big_endian, "k.npy")
    assert result.cast is None
    assert result.value.dtype == np.dtype(np.float32) and result.value.dtype.isnative


def test_int_to_float_cast_is_reported() -> None:
    result = check_assignment(conv1_kernel(), np.ones((3, 3, 1, 4), np.int64), "k.npy")
    assert result.cast == "int64 -> float32"
    assert result.value.dtype == np.float32


def test_float16_target_rounds_to_nearest_even() -> None:
    values = np.array([1.0, 1 + 2**-11, 1 + 3 * 2**-11, 0.1], dtype=np.float64)
    target = TargetVariable("conv1", "bias", (4,), "float16", CONV2D)
    result = check_assignment(target, values, "b.npy")
    assert result.cast == "float64 -> float16"
    assert result.value.dtype == np.float16
    np.testing.assert_array_equal(result.value, values.astype(np.float16))
    assert result.value[1] == 1.0 and result.value[2] == 1 + 2 * 2**-10


def test_bfloat16_target() -> None:
    values = np.array([1.0, 3.140625, -2.5, 1e-3], dtype=np.float32)
    result = check_assignment(conv1_bias("bfloat16"), values, "b.npy")
    assert result.value.dtype == np.dtype(ml_dtypes.bfloat16)
    assert result.cast == "float32 -> bfloat16"
    np.testing.assert_array_equal(result.value, values.astype(ml_dtypes.bfloat16))


def test_bfloat16_source_into_bfloat16_target_needs_no_cast() -> None:
    values = np.ones(4, dtype=ml_dtypes.bfloat16)
    result = check_assignment(conv1_bias("bfloat16"), values, "bf.h5")
    assert result.cast is None


def test_underflow_is_a_note() -> None:
    target = TargetVariable("conv1", "bias", (2,), "float16", CONV2D)
    result = check_assignment(target, np.array([1e-10, 1.0]), "b.npy")
    assert result.notes == ("1 nonzero values too small for float16 became 0",)


def test_plan_follows_store_order_and_matches_keras2_depthwise_name() -> None:
    depthwise = CONV_CLASSES["DepthwiseConv2D"]
    targets = [
        TargetVariable("dw", "depthwise_kernel", (3, 3, 2, 1), "float32", depthwise),
        TargetVariable("dw", "bias", (2,), "float32", depthwise),
    ]
    checked = check_assignments(
        targets,
        [("bias", np.zeros(2), "init zeros"), ("kernel", np.ones((3, 3, 2, 1)), "k.npy")],
    )
    assert [a.target.name for a in checked] == ["depthwise_kernel", "bias"]
    assert [a.origin for a in checked] == ["k.npy", "init zeros"]


# --- plan refusals ---------------------------------------------------------------------


def test_bias_on_a_layer_without_bias() -> None:
    message = plan_refusal([conv1_kernel()], [("bias", np.zeros(4), "b.npy")])
    assert message == (
        "layer 'conv1' has no bias: it was built with use_bias=False; drop the bias source"
    )


def test_unknown_variable_lists_the_layer_variables() -> None:
    message = plan_refusal(
        [conv1_kernel(), conv1_bias()], [("kernal", np.zeros((3, 3, 1, 4)), "k.npy")]
    )
    assert "layer 'conv1' has no variable 'kernal'" in message
    assert "did you mean 'kernel'" in message
    assert "its variables: kernel, bias" in message


def test_kernel_on_a_separable_conv_names_both_kernels() -> None:
    separable = CONV_CLASSES["SeparableConv2D"]
    targets = [
        TargetVariable("sep", "depthwise_kernel", (3, 3, 2, 1), "float32", separable),
        TargetVariable("sep", "pointwise_kernel", (1, 1, 2, 8), "float32", separable),
    ]
    message = plan_refusal(targets, [("kernel", np.zeros((3, 3, 2, 1)), "k.npy")])
    assert "--weight depthwise_kernel=SRC" in message
    assert "--weight pointwise_kernel=SRC" in message


def test_same_variable_twice() -> None:
    message = plan_refusal(
        [conv1_kernel(), conv1_bias()],
        [("kernel", np.zeros((3, 3, 1, 4)), "k.npy"),
         ("kernel", np.zeros((3, 3, 1, 4)), "init he_normal (seed 1)")],
    )
    assert message == (
        "layer 'conv1' kernel is given twice (k.npy and init he_normal (seed 1)); "
        "give one source per variable"
    )


# --- dtype -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, dtype_text",
    [
        (np.zeros((3, 3, 1, 4), np.complex64), "complex64"),
        (np.zeros((3, 3, 1, 4), bool), "bool"),
        (np.zeros((3, 3, 1, 4), object), "object"),
        (np.zeros((3, 3, 1, 4), "U3"), "<U3"),
        (np.zeros((3, 3, 1, 4), "V4"), "|V4"),
    ],
)
def test_non_numeric_dtypes_are_refused(array: np.ndarray, dtype_text: str) -> None:
    message = refusal(conv1_kernel(), array)
    assert f"k.npy holds {dtype_text} values" in message
    assert "expected a real-valued numeric array" in message


# --- shape -----------------------------------------------------------------------------


def test_one_axis_differs() -> None:
    message = refusal(conv1_kernel(), np.zeros((3, 3, 3, 4), np.float32))
    assert message == (
        "layer 'conv1' kernel: expected (3, 3, 1, 4) (kh, kw, in_channels/groups, filters), "
        "received (3, 3, 3, 4) from k.npy: in_channels/groups 3 != 1"
    )


def test_every_differing_axis_is_named() -> None:
    message = refusal(conv1_kernel(), np.zeros((5, 3, 3, 8), np.float32))
    assert message.endswith(": kh 5 != 3, in_channels/groups 3 != 1, filters 8 != 4")


def test_wrong_rank() -> None:
    message = refusal(conv1_kernel(), np.zeros((9, 5), np.float32))
    assert "expected (3, 3, 1, 4) (kh, kw, in_channels/groups, filters)" in message
    assert "received (9, 5) from k.npy: rank 2 != 4" in message


def test_pytorch_layout_hint_for_conv2d() -> None:
    target = TargetVariable("conv1", "kernel", (3, 3, 2, 4), "float32", CONV2D)
    message = refusal(target, np.zeros((4, 2, 3, 3), np.float32))
    assert "received (4, 2, 3, 3)" in message
    assert message.endswith(
        " — hint: this is the PyTorch/ONNX layout (out, in/groups, kh, kw); pass --layout "
        "torch, or convert it to the Keras layout with np.transpose(a, (2, 3, 1, 0))"
    )


def test_pytorch_layout_hint_for_conv3d_and_transpose() -> None:
    target = TargetVariable("c3", "kernel", (2, 3, 3, 5, 7), "float32", CONV_CLASSES["Conv3D"])
    message = refusal(target, np.zeros((7, 5, 2, 3, 3), np.float32))
    assert "(out, in/groups, kd, kh, kw)" in message
    assert "np.transpose(a, (2, 3, 4, 1, 0))" in message
    transpose = CONV_CLASSES["Conv2DTranspose"]
    target = TargetVariable("up", "kernel", (3, 3, 8, 16), "float32", transpose)
    message = refusal(target, np.zeros((16, 8, 3, 3), np.float32))
    assert "PyTorch/ONNX layout (in, out, kh, kw)" in message


def test_pytorch_layout_hint_for_depthwise_needs_a_reshape() -> None:
    depthwise = CONV_CLASSES["DepthwiseConv2D"]
    target = TargetVariable("dw", "kernel", (3, 3, 4, 2), "float32", depthwise)
    message = refusal(target, np.zeros((8, 1, 3, 3), np.float32))
    assert "(in*multiplier, 1, kh, kw)" in message
    assert "np.transpose(a.reshape(4, 2, 3, 3), (2, 3, 0, 1))" in message


def test_pytorch_layout_hint_for_pointwise() -> None:
    separable = CONV_CLASSES["SeparableConv2D"]
    target = TargetVariable("sep", "pointwise_kernel", (1, 1, 4, 8), "float32", separable)
    message = refusal(target, np.zeros((8, 4, 1, 1), np.float32))
    assert "expected (1, 1, 4, 8) (1, 1, in_channels*depth_multiplier, filters)" in message
    assert "axis 0 8 != 1, axis 1 4 != 1" in message
    assert "PyTorch/ONNX layout (out, in, 1, 1)" in message


def test_singleton_axes_hint_without_auto_squeeze() -> None:
    message = refusal(conv1_bias(), np.zeros((1, 1, 1, 4), np.float32), "b.npy")
    assert "expected (4,) (filters), received (1, 1, 1, 4) from b.npy: rank 4 != 1" in message
    assert "hint: it differs only by axes of length 1; np.squeeze(a) would fit" in message
    message = refusal(conv1_kernel(), np.zeros((3, 3, 4), np.float32))
    assert "np.reshape(a, (3, 3, 1, 4)) would fit" in message


def test_permuted_axes_hint() -> None:
    target = TargetVariable("conv1", "kernel", (3, 5, 2, 4), "float32", CONV2D)
    message = refusal(target, np.zeros((5, 3, 2, 4), np.float32))
    assert "hint: it holds the expected axes in another order" in message


def test_same_size_hint() -> None:
    message = refusal(conv1_kernel(), np.zeros((9, 4), np.float32))
    assert "hint: it has the same number of elements (36); a reshape may be intended" in message


def test_no_hint_when_nothing_fits() -> None:
    assert "hint" not in refusal(conv1_kernel(), np.zeros((3, 3, 2, 5), np.float32))


# --- finiteness ------------------------------------------------------------------------


def test_nan_and_inf_are_counted_with_the_first_index() -> None:
    kernel = np.zeros((3, 3, 1, 4), np.float32)
    kernel[0, 1, 0, 2] = np.nan
    kernel[2, 2, 0, 3] = np.inf
    kernel[1, 1, 0, 0] = np.nan
    message = refusal(conv1_kernel(), kernel)
    assert "k.npy holds 2 NaN and 1 Inf values (first at index (0, 1, 0, 2))" in message


def test_nan_in_bfloat16_source() -> None:
    values = np.array([1, np.nan, 2, 3], dtype=ml_dtypes.bfloat16)
    assert "1 NaN and 0 Inf values (first at index (1,))" in refusal(conv1_bias(), values)


# --- casts -----------------------------------------------------------------------------


def test_float_overflow_names_the_largest_value() -> None:
    values = np.array([1.0, 70000.0, 2.0, 3.0])
    message = refusal(conv1_bias("float16"), values, "b.npy")
    assert (
        "b.npy value 70000.0 at index (1,) overflows float16 (largest finite value 65504)"
        in message
    )


def test_bfloat16_overflow() -> None:
    values = np.array([1e39, 0, 0, 0], dtype=np.float64)
    message = refusal(conv1_bias("bfloat16"), values)
    assert "overflows bfloat16 (largest finite value 3.38953e+38)" in message


def test_integer_overflow() -> None:
    message = refusal(conv1_bias("float16"), np.array([0, 0, 0, 70000], np.int64))
    assert "value 70000 at index (3,) overflows float16" in message


@pytest.mark.parametrize(
    "value, dtype, becomes",
    [(16777217, "float32", "16777216"), (257, "bfloat16", "256"), (2049, "float16", "2048"),
     (2**53 + 1, "float64", "9007199254740992")],
)
def test_inexact_integers_are_refused(value: int, dtype: str, becomes: str) -> None:
    values = np.array([0, 1, value, 2], dtype=np.int64)
    message = refusal(conv1_bias(dtype), values)
    assert f"integer {value} at index (2,) is not exactly representable as {dtype}" in message
    assert f"(it would become {becomes})" in message


def test_large_but_exact_integers_pass() -> None:
    values = np.array([2**60, 16777216, -(2**24), 256], dtype=np.int64)
    result = check_assignment(conv1_bias("float32"), values, "b.npy")
    assert result.value.tolist() == [2.0**60, 16777216.0, -(2.0**24), 256.0]


def test_unsupported_target_dtype() -> None:
    message = refusal(conv1_bias("int8"), np.zeros(4, np.float32))
    assert "stored as int8" in message
