"""Cross-layer equalization (Nagel et al., ICCV 2019, "Data-Free Quantization"): which
layers pair up, the scales, the new values and high-bias absorption. Numpy only, float64.

For layers A -> f -> B where f commutes with a positive per-channel scale (ReLU, LeakyReLU,
PReLU, the identity; zero padding, pooling, global average pooling before a Dense), scaling
A's output channel ``i`` (kernel and bias) by ``1 / s_i`` and B's input channel ``i`` by
``s_i`` keeps the function. With ``r1_i`` the range (max |w|) of A's output channel ``i``
and ``r2_i`` that of B's input channel ``i``, ``s_i = sqrt(r1_i / r2_i)`` makes both
``sqrt(r1_i * r2_i)``. A depthwise layer D between A and C (conv -> depthwise -> conv) takes
the three-layer rule: with ``c = cbrt(r1 r2 r3)``, A's output is divided by ``r1 / c`` and
D's by ``c / r3``, which leaves every range at ``c``. A layer in a chain belongs to two
groups, so the rules are applied in sweeps until no scale moves by more than
:data:`CONVERGED` (17-107 sweeps on MobileNetV2, ResNet50, EfficientNetB0).

A range is taken over the kernel only, never the bias: an output channel's over the window
and the inputs, an input channel's over the window and the outputs, a depthwise channel's
over its window, a Dense's input row over its units.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..model.catalogue import conv_class
from ..model.graph import GraphLayer, ModelGraph, model_graphs
from .folding import multiplied, output_channels

# A sweep ends the iteration when every scale it applies is within this of 1.
CONVERGED = 1e-6
MAX_SWEEPS = 500

Kind = Literal["conv", "transpose", "depthwise", "dense"]
# What the path from A to B does to a negative value: nothing (linear), zero it (ReLU),
# or scale it (LeakyReLU, PReLU). Bias absorption takes all of beta on a linear path and
# only what stays positive otherwise (both nonlinear kinds are the identity above zero).
PathKind = Literal["linear", "relu", "leaky"]

_DROPOUTS = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                       "GaussianDropout", "AlphaDropout", "GaussianNoise", "Identity", "ActivityRegularization"})
_POOLS = frozenset({f"{kind}Pooling{rank}D" for kind in ("Max", "Average") for rank in (1, 2, 3)})
_GLOBAL_POOLS = frozenset({f"Global{kind}Pooling{rank}D" for kind in ("Max", "Average") for rank in (1, 2, 3)})
_PADDINGS = frozenset({f"ZeroPadding{rank}D" for rank in (1, 2, 3)})
_MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot"})
_HOMOGENEOUS: dict[str | None, PathKind] = {None: "linear", "linear": "linear", "relu": "relu", "leaky_relu": "leaky"}


def layer_kind(layer: GraphLayer) -> Kind | None:
    """How ``layer``'s kernel maps its channels, when equalize can scale it."""
    if layer.class_name == "Dense":
        return "dense"
    cls = conv_class(layer.class_name)
    if cls is None or cls.kind == "separable":
        return None
    return cls.kind


@dataclass(frozen=True)
class Edge:
    """A -> f -> B: A's output channel i is divided by s_i, B's input channel i multiplied."""

    graph: ModelGraph
    first: GraphLayer
    second: GraphLayer
    first_kind: Kind
    second_kind: Kind
    path: PathKind
    # Where B sees zero padding (a ZeroPadding layer, or its own 'same' padding with a
    # window wider than 1): bias absorption is inexact at the border there.
    padded: bool

    @property
    def first_path(self) -> str:
        return self.graph.layer_path(self.first.name)

    @property
    def second_path(self) -> str:
        return self.graph.layer_path(self.second.name)


@dataclass(frozen=True)
class Stop:
    """A layer whose output is not equalized, and why."""

    layer: str  # layer path
    reason: str


@dataclass(frozen=True)
class EqualizeSearch:
    edges: tuple[Edge, ...]
    stops: tuple[Stop, ...]


def find_edges(config: dict[str, Any]) -> EqualizeSearch:
    """Every A -> f -> B of every model in ``config`` that equalization keeps the function
    of, and for every other layer with a kernel, why its output is not equalized."""
    edges: list[Edge] = []
    stops: list[Stop] = []
    for graph in model_graphs(config):
        for layer in graph.layers:
            kind = layer_kind(layer)
            if kind is None:
                if conv_class(layer.class_name) is not None:  # a SeparableConv
                    stops.append(Stop(graph.layer_path(layer.name), "a SeparableConv holds two kernels; "
                                      "equalize does not scale between them or across them"))
                continue
            found = _edge_from(graph, layer, kind)
            if isinstance(found, Edge):
                edges.append(found)
            else:
                stops.append(Stop(graph.layer_path(layer.name), found))
    return EqualizeSearch(tuple(edges), tuple(stops))


def _activation_kind(activation: Any) -> PathKind | None:
    if activation is None or isinstance(activation, str):
        return _HOMOGENEOUS.get(activation)
    return None


def _not_homogeneous(what: str, activation: Any) -> str:
    if activation == "relu6":
        return (f"{what} ReLU6, bounded at 6: a positive scale does not commute with it; "
                "--relu6-to-relu replaces it by ReLU")
    named = activation if isinstance(activation, str) else "a custom activation"
    return f"{what} {named}, which is not positively homogeneous"


def _edge_from(graph: ModelGraph, first: GraphLayer, kind: Kind) -> Edge | str:
    """The edge that starts at ``first``, or why there is none."""
    if len(first.calls) != 1:
        return f"it is called {len(first.calls)} times (a shared layer): a scale would change every call"
    activation = first.config.get("activation")
    path = _activation_kind(activation)
    if path is None:
        return _not_homogeneous("it applies", activation)
    data_format = first.config.get("data_format", "channels_last")
    if kind == "dense":
        data_format = "channels_last"  # a Dense's units are the last axis
    padded = False
    pooled = False
    current = first
    while True:
        consumers = graph.consumers(current.name)
        where = "its output" if current is first else f"the output of '{graph.layer_path(current.name)}'"
        if "<output>" in consumers:
            if graph.path:
                return (f"{where} leaves the nested model '{graph.path}': equalize does not cross a model "
                        "boundary")
            return f"{where} is {'an' if len(consumers) == 1 else 'also an'} output of the model"
        if len(consumers) != 1:
            return f"{where} feeds {len(consumers)} layers: one scale would have to hold for each"
        nxt = graph.layer(consumers[0])
        at = f"'{graph.layer_path(nxt.name)}'"
        if len(nxt.calls) != 1:
            return f"{at} is called {len(nxt.calls)} times (a shared layer)"
        if len(nxt.calls[0]) != 1:
            what = "a residual junction" if nxt.class_name in ("Add", "Subtract") else "a merge"
            return (f"{at} ({nxt.class_name}) is {what}: one scale would have to hold for every "
                    "branch it joins")
        second_kind = layer_kind(nxt)
        if second_kind is not None:
            return _edge_into(graph, first, kind, nxt, second_kind, path, padded, pooled, data_format)
        step = _step(nxt, data_format)
        if step == "pad":
            padded = True
        elif step == "pool":
            pooled = True
        elif step in ("relu", "leaky"):
            path = "leaky" if "leaky" in (path, step) else "relu"
        elif step not in ("keep", "linear"):
            return f"{at} ({nxt.class_name}) {step}"
        current = nxt


def _step(layer: GraphLayer, data_format: str) -> str:
    """What ``layer`` on the path does: "keep", "pad", "pool", a :data:`PathKind`; else why
    it does not commute with a positive per-channel scale (a sentence after its name)."""
    config = layer.config
    cls = layer.class_name
    if cls in _DROPOUTS:
        return "keep"
    if cls in _PADDINGS or cls in _POOLS or cls in _GLOBAL_POOLS:
        if config.get("data_format", data_format) != data_format:
            return f"uses {config.get('data_format')}, not {data_format}"
        return "pad" if cls in _PADDINGS else ("pool" if cls in _GLOBAL_POOLS else "keep")
    if cls == "ReLU":
        if config.get("max_value") is not None:
            bound = config["max_value"]
            if float(bound) == 6.0:
                return ("is a ReLU6 (max_value=6), bounded: a positive scale does not commute with it; "
                        "--relu6-to-relu replaces it by ReLU")
            return f"is bounded (max_value={bound}): a positive scale does not commute with it"
        if float(config.get("threshold") or 0.0) != 0.0:
            return f"has a threshold ({config['threshold']}): a positive scale does not commute with it"
        return "leaky" if float(config.get("negative_slope") or 0.0) != 0.0 else "relu"
    if cls in ("LeakyReLU", "PReLU"):
        return "leaky"
    if cls == "Activation":
        activation = config.get("activation")
        kind = _activation_kind(activation)
        return kind if kind is not None else _not_homogeneous("applies", activation)
    if cls in _MERGES:
        return "merges branches"
    if cls == "BatchNormalization":
        return "is a BatchNormalization left unfolded"
    if cls in ("Functional", "Sequential", "Model"):
        return "is a nested model: equalize does not cross a model boundary"
    return "does not commute with a per-channel scale (equalize passes only activations, zero padding and pooling)"


def _edge_into(graph: ModelGraph, first: GraphLayer, kind: Kind, second: GraphLayer, second_kind: Kind,
               path: PathKind, padded: bool, pooled: bool, data_format: str) -> Edge | str:
    at = f"'{graph.layer_path(second.name)}'"
    if second_kind == "dense":
        if data_format == "channels_first" and not pooled:
            return f"{at} (Dense) acts on the last axis, not on the channels (channels_first)"
    elif second.config.get("data_format", "channels_last") != data_format:
        return f"{at} uses {second.config.get('data_format')}, not {data_format}"
    groups = second.config.get("groups", 1)
    if second_kind == "conv" and groups not in (1, None):
        return f"{at} is a grouped convolution (groups={groups}): its input channels do not reach every filter"
    if len(second.calls) != 1:
        return f"{at} is called {len(second.calls)} times (a shared layer)"
    return Edge(graph, first, second, kind, second_kind, path, padded or _pads(second, second_kind))


def _pads(layer: GraphLayer, kind: Kind) -> bool:
    """Whether ``layer`` pads its input with zeros where its window overlaps the border."""
    if kind == "dense" or layer.config.get("padding", "valid") == "valid":
        return False
    size = layer.config.get("kernel_size", 1)
    sizes = size if isinstance(size, list) else [size]
    return any(int(s) > 1 for s in sizes)


# --- the scales -----------------------------------------------------------------------------


def window_peaks(kind: Kind, kernel: np.ndarray) -> np.ndarray:
    """``max |w|`` over the window: (in, out) for a conv or Dense, (in, multiplier) for a
    depthwise conv, in float64."""
    w = np.abs(np.asarray(kernel, dtype=np.float64))
    spatial = tuple(range(w.ndim - 2))
    m: np.ndarray = w.max(axis=spatial) if spatial else w
    return m.T if kind == "transpose" else m


def in_channels(kind: Kind, kernel_shape: Sequence[int]) -> int:
    return int(kernel_shape[-1] if kind == "transpose" else kernel_shape[-2])


def range_spread(kind: Kind, kernel: np.ndarray) -> float:
    """The largest output channel's range over the smallest nonzero one (``inspect --quant``'s
    range ratio): what equalization brings down; nan when every channel is zero."""
    ranges = window_peaks(kind, kernel).max(axis=0) if kind != "depthwise" else window_peaks(kind, kernel).reshape(-1)
    nonzero = ranges[ranges > 0]
    return float(nonzero.max() / nonzero.min()) if nonzero.size else float("nan")


@dataclass
class _Node:
    """A layer's kernel peaks over the window and the scales on its two sides (ones where no
    edge is)."""

    kind: Kind
    peaks: np.ndarray  # window_peaks of its kernel
    scale_in: np.ndarray
    scale_out: np.ndarray

    def effective(self) -> np.ndarray:
        out = self.scale_out.reshape(self.peaks.shape) if self.kind == "depthwise" else self.scale_out[None, :]
        result: np.ndarray = self.peaks * self.scale_in[:, None] / out
        return result

    def out_range(self) -> np.ndarray:
        if self.kind == "depthwise":
            return self.effective().reshape(-1)
        result: np.ndarray = (self.peaks * self.scale_in[:, None]).max(axis=0) / self.scale_out
        return result

    def in_range(self) -> np.ndarray:
        result: np.ndarray
        if self.kind == "depthwise":
            result = self.effective().max(axis=1)
            return result
        result = (self.peaks / self.scale_out[None, :]).max(axis=1) * self.scale_in
        return result


@dataclass(frozen=True)
class Group:
    """Layers equalized together: a pair (A, B), or a triple (A, D, C) with D depthwise."""

    layers: tuple[str, ...]  # layer paths
    edges: tuple[int, ...]  # indices into the edge list

    @property
    def kind(self) -> Literal["pair", "triple"]:
        return "triple" if len(self.layers) == 3 else "pair"


@dataclass
class Scales:
    """The result: for each edge its scale s (A's output channel i divided by s_i, B's
    input channel i multiplied by it), the groups, and how the iteration went."""

    edges: list[np.ndarray]
    groups: list[Group]
    sweeps: int
    converged: bool
    zero_channels: dict[int, int] = field(default_factory=dict)  # edge -> channels left at 1


def groups_of(edges: Sequence[Edge], kernel_shapes: dict[str, tuple[int, ...]]) -> list[Group]:
    """The edges grouped: A -> D -> C with D depthwise of multiplier 1 is a triple, every
    other edge a pair."""
    into = {edge.second_path: i for i, edge in enumerate(edges)}
    used: set[int] = set()
    groups: list[Group] = []
    for i, edge in enumerate(edges):
        if i in used:
            continue
        before = into.get(edge.first_path)
        if (edge.first_kind == "depthwise" and before is not None and before not in used
                and kernel_shapes[edge.first_path][-1] == 1):
            used.update((before, i))
            groups.append(Group((edges[before].first_path, edge.first_path, edge.second_path), (before, i)))
    for i, edge in enumerate(edges):
        if i not in used:
            groups.append(Group((edge.first_path, edge.second_path), (i,)))
    order = {edge.first_path: n for n, edge in enumerate(edges)}
    groups.sort(key=lambda g: order[g.layers[0]])
    return groups


def solve_scales(edges: Sequence[Edge], kernels: dict[str, np.ndarray]) -> Scales:
    """The scale of every edge, iterated over its chain until no scale moves by more than
    :data:`CONVERGED`. ``kernels``: each layer's kernel by layer path (folded already)."""
    nodes: dict[str, _Node] = {}
    kinds = {e.first_path: e.first_kind for e in edges} | {e.second_path: e.second_kind for e in edges}
    for path, kind in kinds.items():
        shape = kernels[path].shape
        nodes[path] = _Node(kind, window_peaks(kind, kernels[path]), np.ones(in_channels(kind, shape)),
                            np.ones(output_channels(kind, shape)))
    scales: list[np.ndarray] = []
    for edge in edges:
        s = np.ones(output_channels(edge.first_kind, kernels[edge.first_path].shape))
        # The two nodes share the vector: an update of the edge's scale is seen by both.
        nodes[edge.first_path].scale_out = s
        nodes[edge.second_path].scale_in = s
        scales.append(s)
    groups = groups_of(edges, {p: k.shape for p, k in kernels.items()})
    zero: dict[int, int] = {}
    sweeps = 0
    pending = _components(groups)
    while pending and sweeps < MAX_SWEEPS:
        sweeps += 1
        still: list[list[Group]] = []
        for component in pending:
            moved = 0.0
            for group in component:
                moved = max(moved, _update(group, edges, nodes, zero))
            if moved > CONVERGED:
                still.append(component)
        pending = still
    return Scales(scales, groups, sweeps, not pending, zero)


def _components(groups: list[Group]) -> list[list[Group]]:
    """The groups split into chains that share no layer, each in order."""
    owner: dict[str, int] = {}
    parent = list(range(len(groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, group in enumerate(groups):
        for layer in group.layers:
            if layer in owner:
                parent[find(i)] = find(owner[layer])
            else:
                owner[layer] = i
    chains: dict[int, list[Group]] = {}
    for i, group in enumerate(groups):
        chains.setdefault(find(i), []).append(group)
    return list(chains.values())


def _factor(numerator: np.ndarray, denominator: np.ndarray, root: float) -> tuple[np.ndarray, np.ndarray]:
    """``(numerator / denominator) ** root`` where both are positive and finite, 1 elsewhere;
    and which channels were left at 1."""
    ok = (numerator > 0) & (denominator > 0) & np.isfinite(numerator) & np.isfinite(denominator)
    ratio = np.divide(numerator, denominator, out=np.ones_like(numerator), where=ok)
    return ratio ** root, ~ok


def _update(group: Group, edges: Sequence[Edge], nodes: dict[str, _Node], zero: dict[int, int]) -> float:
    """One application of the group's rule; how far its scales moved (max |f - 1|)."""
    if group.kind == "pair":
        (index,) = group.edges
        first, second = nodes[group.layers[0]], nodes[group.layers[1]]
        f, dead = _factor(first.out_range(), second.in_range(), 0.5)
        nodes[group.layers[0]].scale_out *= f
        zero[index] = int(dead.sum())
        return float(np.max(np.abs(f - 1.0))) if f.size else 0.0
    a, d, c = (nodes[p] for p in group.layers)
    r1, r2, r3 = a.out_range(), d.out_range(), c.in_range()
    cube = np.cbrt(r1 * r2 * r3)
    f1, dead1 = _factor(r1, cube, 1.0)
    f2, dead2 = _factor(cube, r3, 1.0)
    dead = dead1 | dead2 | ~(cube > 0)
    f1[dead] = 1.0
    f2[dead] = 1.0
    a.scale_out *= f1
    d.scale_out *= f2
    zero[group.edges[0]] = zero[group.edges[1]] = int(dead.sum())
    return float(max(np.max(np.abs(f1 - 1.0)), np.max(np.abs(f2 - 1.0)))) if f1.size else 0.0


# --- the new values -----------------------------------------------------------------------


def scaled_kernel(kind: Kind, kernel: np.ndarray, scale_in: np.ndarray | None,
                  scale_out: np.ndarray | None) -> np.ndarray:
    """``kernel`` with input channel i multiplied by ``scale_in[i]`` and output channel j
    divided by ``scale_out[j]``: one multiplication in the kernel's precision (float16 in
    float32), by factors computed in float64."""
    n_in, n_out = in_channels(kind, kernel.shape), output_channels(kind, kernel.shape)
    a = np.ones(n_in) if scale_in is None else scale_in
    b = np.ones(n_out) if scale_out is None else scale_out
    if kind == "depthwise":
        factor = a[:, None] / b.reshape(kernel.shape[-2], kernel.shape[-1])
    elif kind == "transpose":
        factor = (1.0 / b)[:, None] * a[None, :]
    else:
        factor = a[:, None] / b[None, :]
    return multiplied(kernel, factor)


def scaled_bias(bias: np.ndarray, scale_out: np.ndarray) -> np.ndarray:
    result: np.ndarray = (bias.astype(np.float64) / scale_out).astype(bias.dtype)
    return result


def absorbed_amount(path: PathKind, beta: np.ndarray, gamma: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """High-bias absorption: what each of A's (equalized) output channels can give up,
    from the statistics of the BatchNormalization folded into A. After a ReLU only what
    stays positive for nearly every input: ``max(0, beta - 3 |gamma|)``; on a linear path
    all of ``beta``. Divided by the channel's equalization scale."""
    beta64 = beta.astype(np.float64)
    c = beta64 if path == "linear" else np.maximum(0.0, beta64 - 3.0 * np.abs(gamma.astype(np.float64)))
    out: np.ndarray = c / scale
    return out


def window_sums(kind: Kind, kernel: np.ndarray) -> np.ndarray:
    """B's kernel summed over its window: (in, out), or (in, multiplier) for a depthwise
    conv; what a constant c on input channel i adds to output j is ``c_i * sums[i, j]``."""
    w = np.asarray(kernel, dtype=np.float64)
    spatial = tuple(range(w.ndim - 2))
    sums: np.ndarray = w.sum(axis=spatial) if spatial else w
    return sums


def absorbed_bias(kind: Kind, bias: np.ndarray, kernel: np.ndarray, c: np.ndarray) -> np.ndarray:
    """B's bias once ``c`` is taken from its input channels: ``bias + sum_window W . c``."""
    sums = window_sums(kind, kernel)
    add = (sums * c[:, None]).reshape(-1) if kind == "depthwise" else c @ sums
    result: np.ndarray = (bias.astype(np.float64) + add).astype(bias.dtype)
    return result


# Absorbing c_i into a layer that pads with zeros is wrong where its window meets the
# border, by up to sum |W[., i, j]| c_i: a channel is absorbed only while that stays below
# the output's own size (its folded BatchNormalization's |gamma|). A dead channel (a
# constant c) into a depthwise conv whose statistics saw only that constant fails it by
# 300x: absorbing it cost a trained net 11 points of accuracy.
BORDER_SHIFT_LIMIT = 1.0


def border_shift_ratio(kind: Kind, kernel: np.ndarray, c: np.ndarray, output_scale: np.ndarray) -> np.ndarray:
    """Per input channel i of B: the most absorbing ``c_i`` can move one of B's outputs at
    the border (the window's weights summed in absolute value, times ``|c_i|``: on a linear
    path c is beta, of either sign), over that output's typical size ``output_scale``; the
    largest over B's outputs."""
    sums = window_sums(kind, np.abs(kernel))
    scale = output_scale.reshape(sums.shape) if kind == "depthwise" else output_scale[None, :]
    ratio: np.ndarray = (sums * np.abs(c)[:, None] / np.where(scale > 0, scale, np.inf)).max(axis=1)
    return ratio


# --- --relu6-to-relu -------------------------------------------------------------------------


def without_relu6(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config`` with every ReLU6 made a ReLU (a ReLU layer's ``max_value`` 6 dropped, an
    activation "relu6" named "relu"), and the paths of the layers changed."""
    new = copy.deepcopy(config)
    changed: list[str] = []
    for graph in model_graphs(new):  # the graphs hold the entries of `new`: edited in place
        for layer in graph.layers:
            if layer.is_model:
                continue
            for entry in _entries(layer.entry):
                config_ = entry.get("config")
                if not isinstance(config_, dict):
                    continue
                hit = False
                if entry.get("class_name") == "ReLU" and config_.get("max_value") is not None \
                        and float(config_["max_value"]) == 6.0:
                    config_["max_value"] = None
                    hit = True
                if config_.get("activation") == "relu6":
                    config_["activation"] = "relu"
                    hit = True
                if hit:
                    changed.append(graph.layer_path(layer.name))
    return new, list(dict.fromkeys(changed))


def _entries(entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A layer entry and the layer entries it wraps (TimeDistributed's ``layer``)."""
    yield entry
    sub = entry.get("config", {}).get("layer") if isinstance(entry.get("config"), dict) else None
    if isinstance(sub, dict) and "class_name" in sub:
        yield from _entries(sub)
