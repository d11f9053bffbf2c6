"""Which channels of a saved model are tied together: the dependency walk of ``prune``.

Removing output channel ``g`` of a convolution removes a channel from every tensor it
reaches, up to the layers that consume it (the next convolutions, a Dense after a
Flatten or a global pooling). Channels that meet in an elementwise merge (``Add``,
``Multiply``, ...) are one channel: every convolution that feeds the merge must lose it
too. A *group* is such a set of convolutions (its *members*), with every place its
channels run along: the variable axes to slice and the tensors whose channel axis
shrinks.

Where a group's channel ``g`` sits on a tensor is a :class:`Span`: channels
``offset + g * width + j`` for ``j < width`` (a Concatenate shifts the offset, a
DepthwiseConv with ``depth_multiplier`` m multiplies both), and after a Flatten each of
those at every spatial position. The walk goes both ways (forward to consumers, back
from a merge to the other branches' producers) and across nested models; what it cannot
follow is a reason, and a group with a reason is not pruned. Pure: config in, groups out.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..model.catalogue import conv_class
from ..model.graph import GraphLayer, ModelGraph, TensorRef, model_graphs

# Layers that touch each channel on its own and have no variables.
CHANNELWISE = frozenset({
    "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "Identity", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
    "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
})
ELEMENTWISE_MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})
GLOBAL_POOLING = frozenset({
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
})
# Layers whose variables run along the channels and are sliced with them.
CHANNEL_VARIABLES = {
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "LayerNormalization": ("gamma", "beta"),
    "PReLU": ("alpha",),
}


@dataclass(frozen=True)
class Flat:
    """A span after a Flatten: each channel at each of ``positions`` spatial positions."""

    positions: int
    channels: int  # channels of the tensor that was flattened
    channels_last: bool  # feature s*channels + c (True) or c*positions + s


@dataclass(frozen=True)
class Span:
    """Where a group's channel ``g`` sits on a tensor's channel axis (see module doc)."""

    offset: int = 0
    width: int = 1
    flat: Flat | None = None

    def indices(self, channels: list[int]) -> list[int]:
        """The tensor's channel (or flattened feature) indices of the group's ``channels``."""
        base = [self.offset + g * self.width + j for g in channels for j in range(self.width)]
        if self.flat is None:
            return sorted(base)
        f = self.flat
        if f.channels_last:
            return sorted(s * f.channels + c for s in range(f.positions) for c in base)
        return sorted(c * f.positions + s for c in base for s in range(f.positions))


@dataclass(frozen=True)
class Slice:
    """A variable axis along which a group's channels run."""

    layer: str  # layer path
    class_name: str
    variable: str
    axis: int
    span: Span


@dataclass(frozen=True)
class TensorSpan:
    """A tensor whose channel axis (``axis`` of its shape, batch included) carries a group's channels."""

    graph: str  # model path
    ref: TensorRef
    axis: int
    span: Span


@dataclass(frozen=True)
class ChannelGroup:
    """Convolutions whose filters are one set of channels, and everything that follows them."""

    members: tuple[str, ...]  # layer paths, in the order found
    channels: int
    slices: tuple[Slice, ...]
    tensors: tuple[TensorSpan, ...]
    reshapes: tuple[tuple[str, int, Span], ...]  # (Reshape path, target_shape index, span)
    problems: tuple[str, ...]  # why it cannot be pruned; empty: it can

    @property
    def prunable(self) -> bool:
        return not self.problems


def find_groups(config: dict[str, Any]) -> list[ChannelGroup]:
    """Every group of convolution channels of the model, in config order of their first member."""
    graphs = {graph.path: graph for graph in model_graphs(config)}
    consumers = {path: _consumers(graph) for path, graph in graphs.items()}
    groups: list[ChannelGroup] = []
    seen: set[str] = set()
    for graph in graphs.values():
        for layer in graph.layers:
            path = graph.layer_path(layer.name)
            if path in seen or not _is_source(layer):
                continue
            group = _Walk(graphs, consumers).run(graph, layer)
            seen.update(group.members)
            groups.append(group)
    return groups


# Who reads each tensor of a graph: (layer, call index, input position), in config order.
Consumers = dict[TensorRef, list[tuple[GraphLayer, int, int]]]


def _consumers(graph: ModelGraph) -> Consumers:
    """Every tensor's readers, found once per graph: a walk asks for them at each tensor it
    reaches, and scanning every layer each time made DenseNet121's walk quadratic."""
    found: Consumers = {}
    for layer in graph.layers:
        for call_index, call in enumerate(layer.calls):
            for position, tensor in enumerate(call):
                found.setdefault(tensor, []).append((layer, call_index, position))
    return found


def _channel_variables(layer: GraphLayer) -> tuple[str, ...]:
    """The per-channel variables the layer has: a normalization built with ``scale=False``
    has no gamma, with ``center=False`` no beta."""
    absent = {"gamma"} if layer.config.get("scale", True) is False else set()
    if layer.config.get("center", True) is False:
        absent.add("beta")
    return tuple(v for v in CHANNEL_VARIABLES[layer.class_name] if v not in absent)


def _has_vector_constant(layer: GraphLayer, call: int) -> bool:
    """Whether call ``call`` of a keras.ops operation takes a constant of more than one value
    (kept in the config as a list, or as ``__numpy__``): one value per channel, which
    pruning the channels would leave at its old length."""
    nodes = layer.entry.get("inbound_nodes") or []
    node = nodes[call] if call < len(nodes) else None
    args = node.get("args", []) if isinstance(node, dict) else []
    for arg in args:
        if isinstance(arg, dict) and arg.get("class_name") == "__numpy__":
            value = (arg.get("config") or {}).get("value")
            if isinstance(value, list) and len(value) > 1:
                return True
        elif isinstance(arg, list) and len(arg) > 1:
            return True
    return False


def _is_source(layer: GraphLayer) -> bool:
    cls = conv_class(layer.class_name)
    return cls is not None and cls.kind != "depthwise"


def _channel_axis(config: dict[str, Any]) -> int:
    return 1 if config.get("data_format") == "channels_first" else -1


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


Place = tuple[str, TensorRef]


@dataclass
class _Walk:
    graphs: dict[str, ModelGraph]
    consumers: dict[str, Consumers]
    members: list[str] = field(default_factory=list)
    slices: dict[tuple[str, str, int], Slice] = field(default_factory=dict)
    spans: dict[Place, tuple[int, Span]] = field(default_factory=dict)
    reshapes: list[tuple[str, int, Span]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    done_layers: set[tuple[str, str, str]] = field(default_factory=set)
    looked_back: set[Place] = field(default_factory=set)
    channels: int = 0
    queue: deque[tuple[Place, bool]] = field(default_factory=deque)  # (place, backward)

    def run(self, graph: ModelGraph, start: GraphLayer) -> ChannelGroup:
        self.channels = int(start.config.get("filters") or 0)
        self._member(graph, start, Span())
        while self.queue:
            place, backward = self.queue.popleft()
            axis, span = self.spans[place]
            if backward:
                self._backward(place, axis, span)
            else:
                self._forward(place, axis, span)
        tensors = tuple(TensorSpan(g, ref, axis, span) for (g, ref), (axis, span) in self.spans.items())
        return ChannelGroup(tuple(self.members), self.channels, tuple(self.slices.values()), tensors,
                            tuple(self.reshapes), tuple(dict.fromkeys(self.problems)))

    # --- bookkeeping ------------------------------------------------------------------

    def _problem(self, text: str) -> None:
        self.problems.append(text)

    def _visit(self, graph: ModelGraph, ref: TensorRef, axis: int, span: Span, back: bool = False) -> None:
        """The channels are on tensor ``ref``: follow them to its consumers and, with
        ``back`` (a tensor reached from elsewhere than its producer), to its producer."""
        place = (graph.path, ref)
        known = self.spans.get(place)
        if known is None:
            self.spans[place] = (axis, span)
            self.queue.append((place, False))
        elif known != (axis, span):
            self._problem(f"the channels reach output {ref.tensor} of '{graph.layer_path(ref.layer)}' "
                          "twice, at different places")
            return
        if back and place not in self.looked_back:
            self.looked_back.add(place)
            self.queue.append((place, True))

    def _slice(self, graph: ModelGraph, layer: GraphLayer, variable: str, axis: int, span: Span) -> None:
        path = graph.layer_path(layer.name)
        key = (path, variable, axis)
        if key in self.slices and self.slices[key].span != span:
            self._problem(f"the channels reach '{path}' twice, at different places")
        self.slices[key] = Slice(path, layer.class_name, variable, axis, span)

    def _once(self, graph: ModelGraph, layer: GraphLayer, role: str) -> bool:
        """True the first time a layer is handled in ``role`` ("member": its filters are
        the group's; "reader": it reads the group's channels): a one-conv squeeze-and-excite
        (x * conv(pool(x))) is both, and each role slices its own axis. A shared layer is a
        problem."""
        key = (graph.path, layer.name, role)
        if key in self.done_layers:
            return False
        self.done_layers.add(key)
        if len(layer.calls) > 1:
            self._problem(f"'{graph.layer_path(layer.name)}' is called {len(layer.calls)} times "
                          "(a shared layer); pruning it would change every call")
            return False
        return True

    def _shape(self, graph: ModelGraph, ref: TensorRef) -> list[Any] | None:
        return graph.shapes.get(ref)

    def _rank(self, graph: ModelGraph, ref: TensorRef) -> int | None:
        shape = self._shape(graph, ref)
        return None if shape is None else len(shape)

    # --- members ----------------------------------------------------------------------

    def _member(self, graph: ModelGraph, layer: GraphLayer, span: Span) -> None:
        path = graph.layer_path(layer.name)
        if path in self.members:
            return
        self.members.append(path)
        if not self._once(graph, layer, "member"):
            return
        cls = conv_class(layer.class_name)
        assert cls is not None
        config = layer.config
        filters = int(config.get("filters") or 0)
        if span != Span() or filters != self.channels:
            self._problem(f"the channels of '{self.members[0]}' ({self.channels}) meet those of "
                          f"'{path}' ({filters}) at different places")
            return
        if int(config.get("groups") or 1) > 1:
            self._problem(f"'{path}' is a grouped conv (groups={config['groups']}): removing its "
                          "filters would unbalance its groups")
        kernel = {"conv": ("kernel", -1), "transpose": ("kernel", -2), "separable": ("pointwise_kernel", -1)}[cls.kind]
        self._slice(graph, layer, *kernel, span)
        if config.get("use_bias", True):
            self._slice(graph, layer, "bias", -1, span)
        self._visit(graph, TensorRef(layer.name), _channel_axis(config), span)

    # --- forward: who consumes a tensor -------------------------------------------------

    def _forward(self, place: Place, axis: int, span: Span) -> None:
        graph = self.graphs[place[0]]
        ref = place[1]
        for position, output in enumerate(graph.outputs):
            if output != ref:
                continue
            if not graph.path:
                self._problem(f"the channels reach the model's output through '{ref.layer}' "
                              "(its width is part of the model's contract)")
            else:
                self._leave(graph, position, axis, span)
        for layer, call_index, position in self.consumers[graph.path].get(ref, ()):
            self._consumer(graph, layer, call_index, position, ref, axis, span)

    def _leave(self, inner: ModelGraph, position: int, axis: int, span: Span) -> None:
        """A nested model's output: its tensor in the model that calls it."""
        outer, layer = self._parent(inner)
        if layer is None or len(layer.calls) != 1:
            self._problem(f"the nested model '{inner.path}' is called more than once")
            return
        self._visit(outer, TensorRef(layer.name, 0, position), axis, span)

    def _parent(self, inner: ModelGraph) -> tuple[ModelGraph, GraphLayer | None]:
        parent_path, _, name = inner.path.rpartition("/")
        outer = self.graphs[parent_path]
        return outer, next((layer for layer in outer.layers if layer.name == name), None)

    def _consumer(self, graph: ModelGraph, layer: GraphLayer, call: int, position: int, ref: TensorRef,
                  axis: int, span: Span) -> None:
        path = graph.layer_path(layer.name)
        kind = layer.class_name
        config = layer.config
        rank = self._rank(graph, ref)
        out = TensorRef(layer.name, call, 0)
        if layer.is_model:
            inner = self.graphs[path]
            first = inner.layers[0] if inner.layers else None
            if len(layer.calls) > 1:
                self._problem(f"the nested model '{path}' is called {len(layer.calls)} times")
            elif inner.sequential and (first is None or first.class_name != "InputLayer"):
                self._problem(f"the nested Sequential '{path}' has no InputLayer to follow the channels into")
            elif position < len(inner.inputs):
                self._enter(inner, inner.inputs[position], axis, span)
            return
        if span.flat is not None and kind not in ("Dense", "Dropout", "Activation", "Identity"):
            self._problem(f"'{path}' ({kind}) follows a Flatten; prune can follow a Flatten only into a Dense")
            return
        cls = conv_class(kind)
        if cls is not None:
            self._conv_consumer(graph, layer, cls.kind, axis, span)
            return
        if kind in CHANNELWISE or kind in CHANNEL_VARIABLES:
            if not self._fits_axis(graph, layer, axis, rank):
                return
            if kind in CHANNEL_VARIABLES and self._once(graph, layer, "reader"):
                for variable in _channel_variables(layer):
                    # PReLU's alpha lacks the batch axis; the others are vectors.
                    var_axis = (axis - 1 if axis > 0 else axis) if kind == "PReLU" else -1
                    self._slice(graph, layer, variable, var_axis, span)
            self._visit(graph, out, axis, span)
        elif kind in ELEMENTWISE_MERGES:
            if layer.is_op and _has_vector_constant(layer, call):
                self._problem(f"'{path}' ({kind}) combines the channels with a constant of several values, "
                              "which prune cannot narrow")
                return
            self._visit(graph, out, axis, span)
            for other in layer.calls[call]:
                if other != ref:
                    self._visit(graph, other, axis, span, back=True)
        elif kind == "Concatenate":
            self._concatenate(graph, layer, call, position, axis, span)
        elif kind in GLOBAL_POOLING:
            if self._data_format_axis(config) != axis and rank is not None and rank > 2:
                self._problem(f"'{path}' pools over another axis than the channels ({config.get('data_format')})")
                return
            self._visit(graph, out, axis if config.get("keepdims") else -1, span)
        elif kind == "Flatten":
            self._flatten(graph, layer, ref, axis, span)
        elif kind == "Dense":
            if axis != -1 and rank is not None and _norm(axis, rank) != rank - 1:
                self._problem(f"'{path}' (Dense) acts on the last axis, not on the channels")
                return
            if self._once(graph, layer, "reader"):
                self._slice(graph, layer, "kernel", 0, span)
        elif kind == "Reshape":
            self._reshape(graph, layer, ref, span)
        else:
            self._problem(f"'{path}' ({kind}) is on the path of the channels and prune cannot follow it")

    def _enter(self, inner: ModelGraph, ref: TensorRef, axis: int, span: Span) -> None:
        self._visit(inner, ref, axis, span)

    def _fits_axis(self, graph: ModelGraph, layer: GraphLayer, axis: int, rank: int | None) -> bool:
        """Whether a channel-wise layer works per channel on this tensor's channel axis."""
        path = graph.layer_path(layer.name)
        config = layer.config
        kind = layer.class_name
        if kind in ("BatchNormalization", "LayerNormalization"):
            wanted = config.get("axis", -1)
            if isinstance(wanted, list):
                if len(wanted) != 1:
                    self._problem(f"'{path}' ({kind}) normalises over axes {wanted}, not the channels alone")
                    return False
                wanted = wanted[0]
            if rank is None or _norm(int(wanted), rank) != _norm(axis, rank):
                self._problem(f"'{path}' ({kind}) normalises axis {wanted}, not the channels")
                return False
            if config.get("renorm") or config.get("synchronized"):
                self._problem(f"'{path}' is a renormalising or synchronized BatchNormalization")
                return False
        elif "data_format" in config and rank is not None and rank > 2:
            if self._data_format_axis(config) != axis:
                self._problem(f"'{path}' ({kind}) uses {config['data_format']}, not the channels' layout")
                return False
        if kind == "PReLU" and rank is not None:
            shared = set(config.get("shared_axes") or [])
            if _norm(axis, rank) in shared:
                self._problem(f"'{path}' (PReLU) shares its alpha over the channels")
                return False
        return True

    @staticmethod
    def _data_format_axis(config: dict[str, Any]) -> int:
        return _channel_axis(config)

    def _conv_consumer(self, graph: ModelGraph, layer: GraphLayer, kind: str, axis: int, span: Span) -> None:
        path = graph.layer_path(layer.name)
        config = layer.config
        if _channel_axis(config) != axis:
            self._problem(f"'{path}' uses {config.get('data_format')}, not the channels' layout")
            return
        if not self._once(graph, layer, "reader"):
            return
        groups = int(config.get("groups") or 1)
        if groups > 1:
            self._problem(f"'{path}' is a grouped conv (groups={groups}): removing some of its input "
                          "channels would split its groups")
            return
        if kind == "conv":
            self._slice(graph, layer, "kernel", -2, span)
        elif kind == "transpose":
            self._slice(graph, layer, "kernel", -1, span)
        elif kind == "separable":
            multiplier = int(config.get("depth_multiplier") or 1)
            self._slice(graph, layer, "depthwise_kernel", -2, span)
            self._slice(graph, layer, "pointwise_kernel", -2, _widened(span, multiplier))
        else:  # depthwise: its channels follow its input's, multiplier outputs each
            multiplier = int(config.get("depth_multiplier") or 1)
            wide = _widened(span, multiplier)
            self._slice(graph, layer, "kernel", -2, span)
            if config.get("use_bias", True):
                self._slice(graph, layer, "bias", -1, wide)
            self._visit(graph, TensorRef(layer.name), axis, wide)

    def _concatenate(self, graph: ModelGraph, layer: GraphLayer, call: int, position: int,
                     axis: int, span: Span) -> None:
        path = graph.layer_path(layer.name)
        inputs = layer.calls[call]
        shapes = [self._shape(graph, ref) for ref in inputs]
        sizes = [_channel_size(shape, axis) for shape in shapes]
        if any(size is None for size in sizes):
            self._problem(f"the config does not record the input shapes of '{path}' (Concatenate)")
            return
        rank = len(shapes[0] or [])
        if _norm(int(layer.config.get("axis", -1)), rank) != _norm(axis, rank):
            self._problem(f"'{path}' concatenates along axis {layer.config.get('axis')}, not the channels")
            return
        offset = sum(size or 0 for size in sizes[:position])
        self._visit(graph, TensorRef(layer.name, call, 0), axis,
                    Span(span.offset + offset, span.width, span.flat))

    def _flatten(self, graph: ModelGraph, layer: GraphLayer, ref: TensorRef, axis: int, span: Span) -> None:
        path = graph.layer_path(layer.name)
        shape = self._shape(graph, ref)
        if shape is None or any(d is None for d in shape[1:]):
            self._problem(f"'{path}' (Flatten): the config does not record the full shape it flattens")
            return
        rank = len(shape)
        channels = _channel_size(shape, axis)
        if not channels:
            self._problem(f"'{path}' (Flatten): the config records no channels on the axis it flattens")
            return
        positions = math.prod(int(d) for d in shape[1:]) // channels
        # Keras's Flatten moves the channels last first when its data_format is channels_first.
        last = _norm(axis, rank) == rank - 1 or (layer.config.get("data_format") == "channels_first" and rank > 2)
        self._visit(graph, TensorRef(layer.name), -1,
                    Span(span.offset, span.width, Flat(positions, channels, last)))

    def _reshape(self, graph: ModelGraph, layer: GraphLayer, ref: TensorRef, span: Span) -> None:
        """Only a Reshape that adds unit axes around the channels, as squeeze-and-excite does."""
        path = graph.layer_path(layer.name)
        shape = self._shape(graph, ref)
        target = list(layer.config.get("target_shape") or [])
        big = [i for i, d in enumerate(target) if d != 1]
        if shape is None or len(shape) != 2 or len(big) != 1 or target[big[0]] != shape[1]:
            self._problem(f"'{path}' (Reshape) is on the path of the channels and prune cannot follow it")
            return
        self.reshapes.append((path, big[0], span))
        axis = big[0] + 1
        self._visit(graph, TensorRef(layer.name), axis if axis < len(target) else -1, span)

    # --- backward: who produced a tensor the channels are tied to -----------------------

    def _backward(self, place: Place, axis: int, span: Span) -> None:
        graph = self.graphs[place[0]]
        ref = place[1]
        layer = next((layer for layer in graph.layers if layer.name == ref.layer), None)
        if layer is None:
            return
        path = graph.layer_path(layer.name)
        kind = layer.class_name
        if kind == "InputLayer":
            if not graph.path:
                self._problem(f"the channels are tied to the model's input '{layer.name}'")
                return
            outer, model_layer = self._parent(graph)
            position = graph.inputs.index(ref) if ref in graph.inputs else -1
            if model_layer is None or len(model_layer.calls) != 1 or position < 0:
                self._problem(f"the nested model '{graph.path}' is called more than once")
                return
            self._visit(outer, model_layer.calls[0][position], axis, span, back=True)
            return
        if layer.is_model:
            inner = self.graphs[path]
            if ref.tensor < len(inner.outputs):
                self._visit(inner, inner.outputs[ref.tensor], axis, span, back=True)
            return
        inputs = layer.calls[ref.node] if ref.node < len(layer.calls) else ()
        cls = conv_class(kind)
        if cls is not None and cls.kind != "depthwise":
            self._member(graph, layer, span)
        elif cls is not None:  # depthwise: back to its input, multiplier outputs per channel
            multiplier = int(layer.config.get("depth_multiplier") or 1)
            if span.offset % multiplier or span.width % multiplier or span.flat is not None:
                self._problem(f"the channels meet the outputs of '{path}' (depth_multiplier "
                              f"{multiplier}) across its input channels")
                return
            if inputs:
                self._visit(graph, inputs[0], axis, Span(span.offset // multiplier, span.width // multiplier),
                            back=True)
        elif kind in CHANNELWISE or kind in CHANNEL_VARIABLES or kind in ELEMENTWISE_MERGES:
            for tensor in inputs:
                self._visit(graph, tensor, axis, span, back=True)
        elif kind == "Concatenate":
            self._back_concatenate(graph, layer, inputs, axis, span)
        else:
            self._problem(f"the channels are tied to the output of '{path}' ({kind}), which prune cannot change")

    def _back_concatenate(self, graph: ModelGraph, layer: GraphLayer, inputs: tuple[TensorRef, ...],
                          axis: int, span: Span) -> None:
        start = 0
        for tensor in inputs:
            shape = self._shape(graph, tensor)
            size = _channel_size(shape, axis) or 0
            if start <= span.offset and span.offset + self.channels * span.width <= start + size:
                self._visit(graph, tensor, axis, Span(span.offset - start, span.width, span.flat), back=True)
                return
            start += size
        self._problem(f"the channels span several inputs of '{graph.layer_path(layer.name)}' (Concatenate)")


def _widened(span: Span, multiplier: int) -> Span:
    """A depthwise conv's outputs of the channels of ``span``: ``multiplier`` each, in-major."""
    return Span(span.offset * multiplier, span.width * multiplier, span.flat)


def _channel_size(shape: list[Any] | None, axis: int) -> int | None:
    """The size a recorded shape gives the channel axis; None when it gives none (no
    shape, too few axes, or null there)."""
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    size = shape[axis]
    return size if isinstance(size, int) else None
