"""PyTorch / ONNX layouts of convolution variables and the conversions to Keras.

| Keras variable                          | PyTorch / ONNX weight          |
|-----------------------------------------|--------------------------------|
| conv kernel k + (in/groups, out)        | (out, in/groups, *k)           |
| transpose kernel k + (out, in)          | (in, out, *k)                  |
| depthwise kernel k + (in, multiplier)   | (in*multiplier, 1, *k)         |
| pointwise kernel (1,)*r + (in, out)     | (out, in, 1, ...)              |
| bias (n,)                               | (n,)                           |

A depthwise conv's output channel ``i*multiplier + m`` comes from input channel ``i`` in
both frameworks, so the conversion is a reshape plus a transpose. Frameworks compute
cross-correlation: no filter is flipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import AssignmentError
from ..model.catalogue import canonical_variable_name
from ..model.naming import format_shape

if TYPE_CHECKING:
    from .targets import TargetVariable

VariableRole = Literal["dense", "depthwise", "bias"]


def variable_role(target: TargetVariable) -> VariableRole:
    """How a variable maps to PyTorch: a full kernel, a depthwise kernel, or a vector."""
    name = canonical_variable_name(target.name)
    if name == "bias":
        return "bias"
    if target.conv.kind == "depthwise" or name == "depthwise_kernel":
        return "depthwise"
    return "dense"


def torch_shape(target: TargetVariable) -> tuple[int, ...]:
    """The shape PyTorch / ONNX would give the variable."""
    shape, rank = target.shape, target.conv.rank
    role = variable_role(target)
    if role == "bias":
        return shape
    if role == "depthwise":
        return (shape[rank] * shape[rank + 1], 1) + shape[:rank]
    return (shape[rank + 1], shape[rank]) + shape[:rank]


def torch_axis_names(target: TargetVariable) -> tuple[str, ...]:
    """What each axis of the PyTorch / ONNX weight means."""
    role = variable_role(target)
    if role == "bias":
        return ("out",)
    spatial = target.conv.axis_names(target.name)[: target.conv.rank]
    if role == "depthwise":
        return ("in*multiplier", "1") + spatial
    if canonical_variable_name(target.name) == "pointwise_kernel":
        return ("out", "in") + spatial
    if target.conv.kind == "transpose":
        return ("in", "out") + spatial
    return ("out", "in/groups") + spatial


def to_torch(target: TargetVariable, array: np.ndarray) -> np.ndarray:
    """A Keras-layout value of ``target`` in PyTorch / ONNX layout."""
    if array.shape != target.shape:
        raise AssignmentError(
            f"layer '{target.layer}' {target.name}: expected Keras layout "
            f"{format_shape(target.shape)}, received {format_shape(array.shape)}"
        )
    rank = target.conv.rank
    role = variable_role(target)
    if role == "bias":
        return np.array(array)
    if role == "depthwise":
        flat = array.reshape(target.shape[:rank] + (-1,))
        moved = np.transpose(flat, (rank,) + tuple(range(rank)))
        return np.ascontiguousarray(moved.reshape(torch_shape(target)))
    return np.ascontiguousarray(np.transpose(array, _keras_to_torch_axes(rank)))


def from_torch(target: TargetVariable, array: np.ndarray) -> np.ndarray:
    """A PyTorch / ONNX-layout value as the Keras layout of ``target``."""
    expected = torch_shape(target)
    if array.shape != expected:
        raise AssignmentError(
            f"layer '{target.layer}' {target.name}: expected PyTorch/ONNX layout "
            f"{format_shape(expected)} ({', '.join(torch_axis_names(target))}), "
            f"received {format_shape(array.shape)}"
        )
    rank = target.conv.rank
    role = variable_role(target)
    if role == "bias":
        return np.array(array)
    if role == "depthwise":
        split = array.reshape(target.shape[rank : rank + 2] + target.shape[:rank])
        return np.ascontiguousarray(np.transpose(split, _depthwise_torch_to_keras_axes(rank)))
    return np.ascontiguousarray(np.transpose(array, _torch_to_keras_axes(rank)))


def from_torch_code(target: TargetVariable) -> str | None:
    """The numpy expression turning a PyTorch-layout ``a`` into the Keras layout."""
    rank = target.conv.rank
    role = variable_role(target)
    if role == "bias":
        return None
    if role == "depthwise":
        axes = _depthwise_torch_to_keras_axes(rank)
        if target.shape[rank + 1] == 1:
            # With multiplier 1 the torch weight (in, 1, *k) needs no reshape.
            return f"np.transpose(a, {axes})"
        split = ", ".join(str(d) for d in target.shape[rank : rank + 2] + target.shape[:rank])
        return f"np.transpose(a.reshape({split}), {axes})"
    return f"np.transpose(a, {_torch_to_keras_axes(rank)})"


def _keras_to_torch_axes(rank: int) -> tuple[int, ...]:
    return (rank + 1, rank) + tuple(range(rank))


def _torch_to_keras_axes(rank: int) -> tuple[int, ...]:
    return tuple(range(2, rank + 2)) + (1, 0)


def _depthwise_torch_to_keras_axes(rank: int) -> tuple[int, ...]:
    return tuple(range(2, rank + 2)) + (0, 1)
