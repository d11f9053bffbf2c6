"""Pruning channel groups: which channels go, how each variable is sliced, and the rewritten
config. No TensorFlow.

A :class:`Cut` removes channels of one :class:`~conv_surgeon.surgery.channels.ChannelGroup`.
Several cuts can run along the same tensor (DenseNet's concatenations hold many groups'
channels side by side): every variable axis and every tensor loses the union of what the
cuts remove there. The layers all stay, so no store key moves; the config changes only in
numbers: each member's ``filters``, a squeeze-and-excite Reshape's ``target_shape``, and
the channel axis of every shape recorded downstream (the inbound tensors' ``shape``, the
``build_config`` input shapes, a nested model's ``InputLayer`` ``batch_shape``), which
Keras checks when it rebuilds the model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.graph import GraphLayer, ModelGraph, TensorRef, build_shape_lists, input_shape_lists, model_graphs
from .channels import ChannelGroup

# A variable of a layer: (layer path, variable name).
VariableKey = tuple[str, str]
# Per axis of a variable, the indices removed along it.
AxisCuts = dict[int, tuple[int, ...]]


@dataclass(frozen=True)
class Cut:
    """The channels (group indices) removed from one group."""

    group: ChannelGroup
    channels: tuple[int, ...]


def variable_cuts(cuts: list[Cut]) -> dict[VariableKey, AxisCuts]:
    """Every variable the cuts slice, with the indices removed along each of its axes."""
    found: dict[VariableKey, dict[int, set[int]]] = {}
    for cut in cuts:
        for piece in cut.group.slices:
            axes = found.setdefault((piece.layer, piece.variable), {})
            axes.setdefault(piece.axis, set()).update(piece.span.indices(list(cut.channels)))
    return {key: {axis: tuple(sorted(removed)) for axis, removed in axes.items()} for key, axes in found.items()}


def _positive(axes: AxisCuts, ndim: int) -> AxisCuts:
    return {axis % ndim: removed for axis, removed in axes.items()}


def sliced(value: np.ndarray, axes: AxisCuts) -> np.ndarray:
    """``value`` without the removed indices of each axis, as a new contiguous array."""
    cuts = _positive(axes, value.ndim)
    keep = [np.setdiff1d(np.arange(size), cuts[axis]) if axis in cuts else np.arange(size)
            for axis, size in enumerate(value.shape)]
    result: np.ndarray = np.ascontiguousarray(value[np.ix_(*keep)])
    return result


def sliced_shape(shape: tuple[int, ...], axes: AxisCuts) -> tuple[int, ...]:
    cuts = _positive(axes, len(shape))
    return tuple(size - len(cuts.get(axis, ())) for axis, size in enumerate(shape))


def check_cuts(shape: tuple[int, ...], axes: AxisCuts, where: str) -> str | None:
    """Why ``axes`` do not fit a variable of ``shape`` (None: they do)."""
    for axis, removed in axes.items():
        if not -len(shape) <= axis < len(shape):
            return f"{where} {shape} has no axis {axis}"
        size = shape[axis]
        if removed and (removed[-1] >= size or removed[0] < 0):
            return f"{where} {shape}: index {removed[-1]} out of range on axis {axis} ({size})"
        if len(removed) >= size:
            return f"{where} {shape}: every entry of axis {axis} would be removed"
    return None


def tensor_cuts(cuts: list[Cut]) -> dict[tuple[str, TensorRef], tuple[int, int]]:
    """Every tensor the cuts narrow: (its channel axis, how many channels it loses)."""
    found: dict[tuple[str, TensorRef], tuple[int, set[int]]] = {}
    for cut in cuts:
        for tensor in cut.group.tensors:
            axis, removed = found.setdefault((tensor.graph, tensor.ref), (tensor.axis, set()))
            removed.update(tensor.span.indices(list(cut.channels)))
    return {key: (axis, len(removed)) for key, (axis, removed) in found.items()}


def _readers(graph: ModelGraph) -> dict[TensorRef, list[tuple[GraphLayer, int, list[int]]]]:
    """Each tensor's readers in ``graph``, in config order: (layer, call, input positions).
    Found once: scanning every layer for each narrowed tensor made DenseNet121's rewrite
    quadratic (its ~600 tensors times ~430 layers)."""
    found: dict[TensorRef, list[tuple[GraphLayer, int, list[int]]]] = {}
    for layer in graph.layers:
        for call, refs in enumerate(layer.calls):
            positions: dict[TensorRef, list[int]] = {}
            for i, ref in enumerate(refs):
                positions.setdefault(ref, []).append(i)
            for ref, where in positions.items():
                found.setdefault(ref, []).append((layer, call, where))
    return found


def pruned_config(config: dict[str, Any], cuts: list[Cut]) -> dict[str, Any]:
    """``config`` with the numbers the cuts change rewritten (see the module doc)."""
    new = copy.deepcopy(config)
    graphs = {graph.path: graph for graph in model_graphs(new)}
    entries = {graph.layer_path(layer.name): layer.entry for graph in graphs.values() for layer in graph.layers}
    for cut in cuts:
        removed = len(cut.channels)
        for member in cut.group.members:
            entries[member]["config"]["filters"] = int(entries[member]["config"]["filters"]) - removed
        for path, index, span in cut.group.reshapes:
            target = entries[path]["config"]["target_shape"]
            target[index] = int(target[index]) - len(span.indices(list(cut.channels)))
    readers = {path: _readers(graph) for path, graph in graphs.items()}
    for (graph_path, ref), (axis, count) in tensor_cuts(cuts).items():
        graph = graphs[graph_path]
        lists: dict[int, list[Any]] = {}
        for layer, call, positions in readers[graph_path].get(ref, []):
            candidates = [input_shape_lists(layer, call)]
            builds = build_shape_lists(layer) if call == 0 else []
            if len(builds) == len(layer.calls[call]):
                candidates.append(list(builds))
            for shapes in candidates:
                for i in positions:
                    shape = shapes[i]
                    if shape is not None:
                        lists[id(shape)] = shape
        producer = next((layer for layer in graph.layers if layer.name == ref.layer), None)
        if producer is not None and producer.class_name == "InputLayer":
            shape = producer.config.get("batch_shape") or producer.config.get("batch_input_shape")
            if isinstance(shape, list):
                lists[id(shape)] = shape
            # A nested Sequential entered through this input records the shape it was built
            # with in its own config too (its build_config is a call's, cut above).
            nested = entries.get(graph.path) if graph.path else None
            built = nested.get("config", {}).get("build_input_shape") if nested is not None else None
            if isinstance(built, list) and built and not isinstance(built[0], list):
                lists[id(built)] = built
        for shape in lists.values():
            if -len(shape) <= axis < len(shape) and isinstance(shape[axis], int):  # null: still unknown
                shape[axis] -= count
    return new


def spatial_positions(shape: list[Any] | None, axis: int) -> int | None:
    """How many positions a tensor of ``shape`` has besides its batch and channel axes
    (None when the config leaves a size unknown)."""
    if not shape:
        return None
    channel = axis % len(shape)
    rest = [d for i, d in enumerate(shape) if i not in (0, channel)]
    if any(d is None for d in rest):
        return None
    return math.prod(int(d) for d in rest)


def conv_output_shape(input_shape: list[Any] | None, config: dict[str, Any]) -> list[Any] | None:
    """A (non-transposed) conv's output shape from its input's, as Keras computes it, for
    a conv whose output the config does not record (a Sequential's, a model output)."""
    if not input_shape:
        return None
    first = config.get("data_format") == "channels_first"
    spatial = input_shape[2:] if first else input_shape[1:-1]
    rank = len(spatial)
    kernel, strides, dilation = (_tuple(config.get(key, 1), rank) for key in ("kernel_size", "strides", "dilation_rate"))
    sizes: list[Any] = []
    for size, k, stride, d in zip(spatial, kernel, strides, dilation):
        if size is None:
            sizes.append(None)
        elif config.get("padding") == "same":
            sizes.append(-(-int(size) // stride))
        else:
            sizes.append(-(-(int(size) - (k - 1) * d) // stride))
    channels = config.get("filters") or 0
    return [input_shape[0], channels, *sizes] if first else [input_shape[0], *sizes, channels]


def _tuple(value: Any, rank: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else [int(value)] * rank
