"""PyTorch / ONNX layouts of layer variables and the conversions to Keras.

| Keras variable                          | PyTorch / ONNX weight          |
|-----------------------------------------|--------------------------------|
| conv kernel k + (in/groups, out)        | (out, in/groups, *k)           |
| transpose kernel k + (out, in)          | (in, out, *k)                  |
| depthwise kernel k + (in, multiplier)   | (in*multiplier, 1, *k)         |
| pointwise kernel (1,)*r + (in, out)     | (out, in, 1, ...)              |
| bias (n,)                               | (n,)                           |
| Dense kernel (in_features, units)       | Linear weight (out, in)        |
| BatchNormalization, LayerNormalization, | the same shapes (PyTorch names |
| GroupNormalization, Embedding variables | them weight, bias, running_*)  |

A depthwise conv's output channel ``i*multiplier + m`` comes from input channel ``i`` in
both frameworks, so the conversion is a reshape plus a transpose. Frameworks compute
cross-correlation: no filter is flipped. Other classes (EinsumDense, PReLU, the recurrent
cells, whose PyTorch biases and gate orders differ) have no PyTorch layout here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import AssignmentError
from ..model.catalogue import ConvClass, canonical_variable_name
from ..model.naming import format_shape

if TYPE_CHECKING:
    from .targets import TargetVariable

# How a variable maps to PyTorch: a full conv kernel, a depthwise one, a Linear weight
# (transposed), or a variable PyTorch holds in the same layout (biases, normalizations,
# embeddings).
VariableRole = Literal["conv", "depthwise", "linear", "same"]


def variable_role(target: TargetVariable) -> VariableRole | None:
    """How a variable maps to PyTorch; None when conv-surgeon knows no PyTorch layout for it."""
    kind = target.kind
    name = canonical_variable_name(target.name)
    if kind is None:
        return None
    family = kind.family
    if family == "conv":
        if name == "bias":
            return "same"
        if _conv(target).kind == "depthwise" or name == "depthwise_kernel":
            return "depthwise"
        return "conv"
    if family == "dense" and name in ("kernel", "bias"):
        return "linear" if name == "kernel" else "same"
    if family in ("batch_norm", "normalization", "embedding") and target.axis_names is not None:
        return "same"
    return None


def _conv(target: TargetVariable) -> ConvClass:
    conv = target.conv
    assert conv is not None, "a conv role on a layer that is no convolution"
    return conv


def torch_shape(target: TargetVariable) -> tuple[int, ...] | None:
    """The shape PyTorch / ONNX would give the variable; None when no layout is known."""
    shape = target.shape
    role = variable_role(target)
    if role is None or role == "same":
        return None if role is None else shape
    if role == "linear":
        return shape[::-1]
    rank = _conv(target).rank
    if role == "depthwise":
        return (shape[rank] * shape[rank + 1], 1) + shape[:rank]
    return (shape[rank + 1], shape[rank]) + shape[:rank]


def torch_axis_names(target: TargetVariable) -> tuple[str, ...]:
    """What each axis of the PyTorch / ONNX weight means."""
    role = variable_role(target)
    if role == "same":
        return ("out",) if target.conv is not None else target.axis_names or ()
    if role == "linear":
        return ("out_features", "in_features")
    if role is None:
        return ()
    conv = _conv(target)
    spatial = conv.axis_names(target.name)[: conv.rank]
    if role == "depthwise":
        return ("in*multiplier", "1") + spatial
    if canonical_variable_name(target.name) == "pointwise_kernel":
        return ("out", "in") + spatial
    if conv.kind == "transpose":
        return ("in", "out") + spatial
    return ("out", "in/groups") + spatial


def _no_torch_layout(target: TargetVariable) -> AssignmentError:
    what = target.kind.name if target.kind is not None else "a class the catalogue cannot name"
    return AssignmentError(
        f"{target.label} ({what}): conv-surgeon knows no PyTorch layout for it; "
        "give it in Keras layout (without --layout torch)"
    )


def to_torch(target: TargetVariable, array: np.ndarray) -> np.ndarray:
    """A Keras-layout value of ``target`` in PyTorch / ONNX layout."""
    if array.shape != target.shape:
        raise AssignmentError(
            f"layer '{target.layer}' {target.name}: expected Keras layout "
            f"{format_shape(target.shape)}, received {format_shape(array.shape)}"
        )
    role = variable_role(target)
    if role is None:
        raise _no_torch_layout(target)
    if role == "same":
        return np.array(array)
    if role == "linear":
        return np.ascontiguousarray(array.T)
    rank = _conv(target).rank
    if role == "depthwise":
        flat = array.reshape(target.shape[:rank] + (-1,))
        moved = np.transpose(flat, (rank,) + tuple(range(rank)))
        return np.ascontiguousarray(moved.reshape((-1, 1) + target.shape[:rank]))
    return np.ascontiguousarray(np.transpose(array, _keras_to_torch_axes(rank)))


def from_torch(target: TargetVariable, array: np.ndarray) -> np.ndarray:
    """A PyTorch / ONNX-layout value as the Keras layout of ``target``."""
    expected = torch_shape(target)
    if expected is None:
        raise _no_torch_layout(target)
    if array.shape != expected:
        raise AssignmentError(
            f"layer '{target.layer}' {target.name}: expected PyTorch/ONNX layout "
            f"{format_shape(expected)} ({', '.join(torch_axis_names(target))}), "
            f"received {format_shape(array.shape)}"
        )
    role = variable_role(target)
    if role == "same":
        return np.array(array)
    if role == "linear":
        return np.ascontiguousarray(array.T)
    rank = _conv(target).rank
    if role == "depthwise":
        split = array.reshape(target.shape[rank : rank + 2] + target.shape[:rank])
        return np.ascontiguousarray(np.transpose(split, _depthwise_torch_to_keras_axes(rank)))
    return np.ascontiguousarray(np.transpose(array, _torch_to_keras_axes(rank)))


def from_torch_code(target: TargetVariable) -> str | None:
    """The numpy expression turning a PyTorch-layout ``a`` into the Keras layout."""
    role = variable_role(target)
    if role is None or role == "same":
        return None
    if role == "linear":
        return "np.transpose(a)"
    rank = _conv(target).rank
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
