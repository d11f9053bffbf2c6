"""Folding BatchNormalization into the convolution before it: which pairs, the values,
the rewritten config and where every object of the weight store goes. No TensorFlow.

With ``s = gamma / sqrt(moving_variance + epsilon)`` and ``t = beta - moving_mean * s``
(gamma 1 and beta 0 when ``scale``/``center`` are off), the conv's output channel ``c``
is scaled by ``s[c]`` and its bias becomes ``bias * s + t`` (bias 0 if it had none).
Output channel ``c`` is, per class (:mod:`conv_surgeon.model.catalogue`): a Conv kernel's
last axis; a ConvTranspose kernel's second to last; a DepthwiseConv kernel ``(..., in, multiplier)``
read in-major (``c = i * multiplier + m``, as Keras orders its outputs); a SeparableConv's
pointwise kernel's last axis.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model.catalogue import ConvClass, conv_class
from ..model.graph import GraphLayer, ModelGraph, TensorRef, container_keys, keras_order, model_graphs

BATCH_NORM_CLASSES = ("BatchNormalization",)
LINEAR_ACTIVATIONS = (None, "linear")
FOLDABLE_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class FoldPair:
    """A convolution and the BatchNormalization that only it feeds, in one model."""

    graph: ModelGraph
    conv: GraphLayer
    bn: GraphLayer
    conv_class: ConvClass

    @property
    def conv_path(self) -> str:
        return self.graph.layer_path(self.conv.name)

    @property
    def bn_path(self) -> str:
        return self.graph.layer_path(self.bn.name)


@dataclass(frozen=True)
class NotFolded:
    """A BatchNormalization (or a pair) that is not folded, and why."""

    layer: str  # the BatchNormalization's layer path
    reason: str
    after: str | None = None  # the layer it follows, when there is one


@dataclass(frozen=True)
class FoldSearch:
    pairs: tuple[FoldPair, ...]
    not_folded: tuple[NotFolded, ...]


def find_pairs(config: dict[str, Any]) -> FoldSearch:
    """Every conv -> BatchNormalization pair of every model in ``config``, and every
    BatchNormalization that cannot be folded, with the reason."""
    pairs: list[FoldPair] = []
    refused: list[NotFolded] = []
    for graph in model_graphs(config):
        for bn in graph.layers:
            if bn.class_name not in BATCH_NORM_CLASSES:
                continue
            found = _pair_or_reason(graph, bn)
            if isinstance(found, FoldPair):
                pairs.append(found)
            else:
                refused.append(found)
    return FoldSearch(tuple(pairs), tuple(refused))


def _pair_or_reason(graph: ModelGraph, bn: GraphLayer) -> FoldPair | NotFolded:
    path = graph.layer_path(bn.name)
    if len(bn.calls) != 1:
        return NotFolded(path, f"it is called {len(bn.calls)} times (a shared layer); a fold would change every call")
    if len(bn.calls[0]) != 1:
        return NotFolded(path, "it takes more than one input")
    ref = bn.calls[0][0]
    producer = next((layer for layer in graph.layers if layer.name == ref.layer), None)
    if producer is None:
        return NotFolded(path, f"its input '{ref.layer}' is not a layer of its model")
    after = graph.layer_path(producer.name)
    if producer.is_model:
        return NotFolded(path, f"it follows the nested model '{after}': folding would cross a model boundary", after)
    cls = conv_class(producer.class_name)
    if cls is None:
        return NotFolded(path, f"it follows '{after}' ({producer.class_name}), not a convolution", after)
    conv = producer.config
    reason = _conv_refusal(graph, producer, bn, ref)
    if reason is None:
        reason = _bn_refusal(bn.config, conv, cls)
    if reason is not None:
        return NotFolded(path, reason, after)
    return FoldPair(graph, producer, bn, cls)


def _conv_refusal(graph: ModelGraph, conv: GraphLayer, bn: GraphLayer, ref: TensorRef) -> str | None:
    name = graph.layer_path(conv.name)
    if len(conv.calls) > 1:
        return f"'{name}' is called {len(conv.calls)} times (a shared layer)"
    others = [c for c in graph.consumers(conv.name) if c != bn.name]
    if others:
        what = "the model's output" if others[0] == "<output>" else f"'{graph.layer_path(others[0])}'"
        return f"the output of '{name}' also feeds {what}"
    activation = conv.config.get("activation")
    if activation not in LINEAR_ACTIVATIONS:
        return f"'{name}' has an activation of its own ({activation}) between it and the BatchNormalization"
    if ref.tensor != 0:
        return f"it takes output {ref.tensor} of '{name}'"
    return None


def _bn_refusal(bn: dict[str, Any], conv: dict[str, Any], cls: ConvClass) -> str | None:
    if bn.get("renorm"):
        return "it uses batch renormalization (renorm=True)"
    if bn.get("synchronized"):
        return "it is a synchronized BatchNormalization"
    axis = bn.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            return f"it normalises axes {axis}, not the conv's channel axis"
        axis = axis[0]
    rank = cls.rank + 2
    channels_first = conv.get("data_format") == "channels_first"
    wanted = {1} if channels_first else {-1, rank - 1}
    if axis not in wanted:
        return (f"it normalises axis {axis}, not the conv's channel axis "
                f"({1 if channels_first else -1}, {conv.get('data_format', 'channels_last')})")
    return None


# --- the values -------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchNormValues:
    gamma: np.ndarray | None
    beta: np.ndarray | None
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float


def variance_problem(values: BatchNormValues) -> str | None:
    """Why these statistics cannot be folded, or None."""
    variance = values.variance.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(variance)))
    if bad:
        return f"its moving variance has {bad} non-finite values"
    negative = int(np.count_nonzero(variance + values.epsilon <= 0))
    if negative:
        return f"its moving variance has {negative} values at or below -epsilon"
    for name, array in (("gamma", values.gamma), ("beta", values.beta), ("moving mean", values.mean)):
        if array is not None and not np.isfinite(array.astype(np.float64)).all():
            return f"its {name} has non-finite values"
    return None


def scale_and_shift(values: BatchNormValues) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64: the BatchNormalization is ``x * s + t`` at inference."""
    variance = values.variance.astype(np.float64)
    gamma = np.ones_like(variance) if values.gamma is None else values.gamma.astype(np.float64)
    beta = np.zeros_like(variance) if values.beta is None else values.beta.astype(np.float64)
    s = gamma / np.sqrt(variance + values.epsilon)
    return s, beta - values.mean.astype(np.float64) * s


def folded_kernel(cls: ConvClass, kernel: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The kernel (the pointwise one for a SeparableConv) with output channel c scaled by s[c].

    One multiplication in the kernel's own precision (float16 kernels in float32): within
    an ulp of the float64 product, and a single pass over what can be the model's bulk.
    """
    scale = s
    if cls.kind == "transpose":
        scale = scale[:, None]
    elif cls.kind == "depthwise":
        scale = scale.reshape(kernel.shape[-2], kernel.shape[-1])
    return multiplied(kernel, scale)


def multiplied(kernel: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``kernel * factor`` (broadcast over its last axes): one multiplication in the kernel's
    own precision (float16 in float32), by a factor computed in float64."""
    work = np.float32 if kernel.dtype == np.float16 else kernel.dtype
    result: np.ndarray = np.multiply(kernel, factor.astype(work), dtype=work).astype(kernel.dtype, copy=False)
    return result


def folded_bias(bias: np.ndarray | None, s: np.ndarray, t: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    old = np.zeros_like(s) if bias is None else bias.astype(np.float64)
    result: np.ndarray = (old * s + t).astype(dtype)
    return result


def output_channels(kind: str, kernel_shape: Sequence[int]) -> int:
    """How many output channels a layer of this kind (a conv kind, or "dense") with this
    (scaled) kernel has."""
    if kind == "transpose":
        return int(kernel_shape[-2])
    if kind == "depthwise":
        return int(kernel_shape[-2] * kernel_shape[-1])
    return int(kernel_shape[-1])


def identity_values(values: BatchNormValues) -> BatchNormValues:
    """Statistics that make a BatchNormalization (nearly) the identity: ``--keep-layers``."""
    size = values.variance.shape
    dtype = values.variance.dtype
    return BatchNormValues(
        gamma=None if values.gamma is None else np.ones(size, values.gamma.dtype),
        beta=None if values.beta is None else np.zeros(size, values.beta.dtype),
        mean=np.zeros(size, values.mean.dtype),
        variance=np.full(size, 1.0 - values.epsilon, dtype),
        epsilon=values.epsilon,
    )


# --- the rewritten config -----------------------------------------------------------------


def folded_config(config: dict[str, Any], pairs: list[FoldPair], keep_layers: bool) -> dict[str, Any]:
    """``config`` with each pair's conv given a bias and, unless ``keep_layers``, each
    BatchNormalization removed and its consumers fed by the conv; each model's layers
    listed in the order Keras will list them."""
    new = copy.deepcopy(config)
    by_model: dict[str, list[FoldPair]] = {}
    for pair in pairs:
        by_model.setdefault(pair.graph.path, []).append(pair)
    # The graphs hold the very entries of `new`, so they are rewritten in place.
    for graph in model_graphs(new):
        entry, path = graph.entry, graph.path
        mine = by_model.get(path, [])
        if not mine:
            continue
        convs = {pair.conv.name for pair in mine}
        renames = {pair.bn.name: pair.conv.name for pair in mine}
        layers = entry["config"]["layers"]
        for layer in layers:
            if _entry_name(layer) in convs:
                layer["config"]["use_bias"] = True
        if keep_layers:
            continue
        entry["config"]["layers"] = [layer for layer in layers if _entry_name(layer) not in renames]
        for layer in entry["config"]["layers"]:
            if "inbound_nodes" in layer:
                layer["inbound_nodes"] = _rewired(layer["inbound_nodes"], renames)
        for key in ("output_layers", "input_layers"):
            if key in entry["config"]:
                entry["config"][key] = _rewired(entry["config"][key], renames)
        graph = model_graphs(entry)[0]
        order = {name: i for i, name in enumerate(keras_order(graph))}
        entry["config"]["layers"].sort(key=lambda layer: order.get(_entry_name(layer), len(order)))
    return new


def _entry_name(entry: dict[str, Any]) -> str:
    return str(entry.get("config", {}).get("name") or entry.get("name") or "")


def _rewired(value: Any, renames: dict[str, str]) -> Any:
    """``value`` (inbound nodes, output_layers) with references to renamed layers moved."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = value.get("config", {}).get("keras_history")
            if isinstance(history, list) and history and history[0] in renames:
                value["config"]["keras_history"] = [renames[history[0]], *history[1:]]
            return value
        return {key: _rewired(item, renames) for key, item in value.items()}
    if isinstance(value, list):
        if value and isinstance(value[0], str) and value[0] in renames and len(value) >= 3 \
                and isinstance(value[1], int):
            return [renames[value[0]], *value[1:]]
        return [_rewired(item, renames) for item in value]
    return value


# --- where the weight store's objects go --------------------------------------------------


@dataclass
class StoreMoves:
    """How the Keras 3 weight store of the folded model follows from the original's."""

    renames: dict[str, str] = field(default_factory=dict)  # object path -> new object path
    drops: set[str] = field(default_factory=set)  # object paths removed, with what is under them
    new_paths: dict[str, str] = field(default_factory=dict)  # layer path -> its object's new path


def store_moves(config: dict[str, Any], new_config: dict[str, Any],
                removed: set[str]) -> StoreMoves:
    """Where every layer's object goes when the layers of ``removed`` (layer paths) are
    gone from ``config``, as ``new_config`` lists the rest (:func:`folded_config`)."""
    moves = StoreMoves()
    new_graphs = {graph.path: graph for graph in model_graphs(new_config)}
    for graph in model_graphs(config):
        old_keys = container_keys(graph, [layer.name for layer in graph.layers])
        new_graph = new_graphs[graph.path]
        new_keys = container_keys(new_graph, [layer.name for layer in new_graph.layers])
        new_base = moves.new_paths.get(graph.path, graph.store_path) if graph.path else ""
        for name, key in old_keys.items():
            path = graph.layer_path(name)
            old = _join(graph.store_path, "layers", key)
            if path in removed:
                moves.drops.add(old)
                continue
            new = _join(new_base, "layers", new_keys[name])
            moves.new_paths[path] = new
            if new != old:
                moves.renames[old] = new
    return moves


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)
