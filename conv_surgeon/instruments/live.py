"""New values for a live Keras convolution layer: the tutorials' recipe, done right.

``conv.kernel = tf.Variable(...)`` raises on Keras 3 (the property has no setter), and
before ``build()`` an assignment is overwritten anyway. Here every array is checked
with the same engine and messages as ``set`` and written with ``variable.assign``; an
unbuilt layer is built first, its input channels read from the kernel's shape. Keras
itself is not imported: the caller's layer brings it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..edits import Layout
from ..edits.assign import Assignment, check_assignment, check_assignments
from ..edits.layout import from_torch, torch_shape
from ..edits.targets import TargetVariable
from ..errors import ConvSurgeonError, UsageError
from ..model.catalogue import ConvClass, conv_class


def assign_live(
    layer: Any, *, kernel: np.ndarray | None, bias: np.ndarray | None, layout: Layout,
    named: dict[str, np.ndarray],
) -> list[Assignment]:
    """Check and assign ``kernel``, ``bias`` and the ``named`` variables of ``layer``."""
    cls = conv_class(type(layer).__name__)
    label = f"layer '{getattr(layer, 'name', type(layer).__name__)}'"
    if cls is None:
        raise ConvSurgeonError(
            f"{label} is a {type(layer).__name__}, not a convolution; assign sets Conv, "
            "ConvTranspose, DepthwiseConv and SeparableConv layers"
        )
    values = dict(named)
    for name, value in (("kernel", kernel), ("bias", bias)):
        if value is not None:
            if cls.kind == "separable" and name == "kernel":
                raise UsageError(
                    f"{label} ({type(layer).__name__}) has two kernels; pass depthwise_kernel= "
                    "and pointwise_kernel="
                )
            values[name] = value
    if not values:
        raise UsageError("no weight to set; give kernel=, bias= or a variable by name")
    arrays = {name: np.asarray(value) for name, value in values.items()}
    if not layer.built:
        layer.build(_input_shape(layer, cls, arrays, layout, label))
    variables = {_short_name(v): v for v in layer.weights}
    targets = [TargetVariable(layer.name, name, tuple(int(d) for d in v.shape), _dtype(v), cls)
               for name, v in variables.items()]
    by_name = {t.name: t for t in targets}
    candidates = []
    for name, array in arrays.items():
        target = by_name.get(name)
        if target is not None and layout == "torch":
            array = from_torch(target, array)
        candidates.append((name, array, f"{name} array" + (" (torch layout)" if layout == "torch" else "")))
    assignments = check_assignments(targets, candidates)
    for assignment in assignments:
        variables[assignment.target.name].assign(assignment.value)
    return assignments


def _short_name(variable: Any) -> str:
    return str(getattr(variable, "path", variable.name)).rsplit("/", 1)[-1].split(":", 1)[0]


def _dtype(variable: Any) -> str:
    dtype = variable.dtype
    return dtype if isinstance(dtype, str) else str(getattr(dtype, "name", dtype))


def _input_shape(layer: Any, cls: ConvClass, arrays: dict[str, np.ndarray], layout: Layout,
                 label: str) -> tuple[int | None, ...]:
    """The input shape that builds ``layer`` for these arrays: its channels from the kernel.

    A kernel that would not fit the layer so built is refused first, with the messages of
    ``set`` (a PyTorch-layout kernel given as Keras gets its hint), and the layer stays
    unbuilt: a build cannot be undone.
    """
    main = "depthwise_kernel" if cls.kind == "separable" else "kernel"
    kernel = arrays.get(main)
    if kernel is None or kernel.ndim != cls.rank + 2:
        raise UsageError(
            f"{label} is not built yet, and building it needs its {main} (a {cls.rank + 2}-D "
            f"array) to tell its input channels; pass {main}=, or build the layer first"
        )
    channels = _channels(layer, cls, kernel, layout)
    target = _unbuilt_kernel(layer, cls, main, channels)
    if layout == "torch":
        from_torch(target, kernel)  # raises if the kernel is not this layer's, in PyTorch layout
    elif kernel.shape != target.shape:
        in_torch = _unbuilt_kernel(layer, cls, main, _channels(layer, cls, kernel, "torch"))
        check_assignment(in_torch if kernel.shape == torch_shape(in_torch) else target, kernel, f"{main} array")
    spatial: tuple[None, ...] = (None,) * cls.rank
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return (None, int(channels)) + spatial
    return (None,) + spatial + (int(channels),)


def _channels(layer: Any, cls: ConvClass, kernel: np.ndarray, layout: Layout) -> int:
    """The input channels ``kernel`` says the layer has, read in ``layout``."""
    groups = int(getattr(layer, "groups", 1) or 1)
    multiplier = int(getattr(layer, "depth_multiplier", 1) or 1)
    if layout == "torch":
        # PyTorch: Conv (out, in/groups, *k), ConvTranspose (in, out/groups, *k),
        # depthwise (in*multiplier, 1, *k).
        if cls.kind == "conv":
            return int(kernel.shape[1]) * groups
        return int(kernel.shape[0]) if cls.kind == "transpose" else int(kernel.shape[0]) // multiplier
    if cls.kind == "conv":
        return int(kernel.shape[-2]) * groups
    return int(kernel.shape[-1]) if cls.kind == "transpose" else int(kernel.shape[-2])


def _unbuilt_kernel(layer: Any, cls: ConvClass, main: str, channels: int) -> TargetVariable:
    """The kernel ``layer`` would hold once built for ``channels`` input channels."""
    size = tuple(int(k) for k in layer.kernel_size)
    if cls.kind == "conv":
        shape = size + (channels // int(getattr(layer, "groups", 1) or 1), int(layer.filters))
    elif cls.kind == "transpose":
        shape = size + (int(layer.filters), channels)
    else:  # a depthwise kernel: DepthwiseConv's, or SeparableConv's first
        shape = size + (channels, int(getattr(layer, "depth_multiplier", 1) or 1))
    dtype = str(getattr(layer, "variable_dtype", None) or "float32")
    return TargetVariable(getattr(layer, "name", type(layer).__name__), main, shape, dtype, cls)
