"""A saved model's layer graph, read from its config: who feeds whom, in Keras's order.

Graph surgery (folding a BatchNormalization into its convolution) removes layers and
rewires their consumers, without TensorFlow. Two things about the result must be known
exactly: which layers consume a tensor (a conv whose output goes anywhere besides its BN
cannot be folded), and the order in which Keras lists the rewritten model's layers, since
the weight store names each layer by a per-class counter in that order (keras/src/saving/saving_lib.py).
:func:`keras_order` replays Keras's own ordering (``map_graph`` and ``_build_map`` in
keras/src/ops/function.py: depth-first from the outputs, then by decreasing depth) over
the config; a caller checks it first against the order of the config Keras saved.

Both config formats are read: Keras 3's (``{"args": [...], "kwargs": {...}}`` nodes with
``__keras_tensor__`` references) and Keras 2's (``[[name, node, tensor, kwargs], ...]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..store.documents import described
from .catalogue import MAX_CONFIG_INT, config_value_problem
from .naming import to_snake_case

MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})


@dataclass(frozen=True)
class TensorRef:
    """One tensor of the graph: output ``tensor`` of call ``node`` of layer ``layer``."""

    layer: str
    node: int = 0
    tensor: int = 0


@dataclass(frozen=True)
class GraphLayer:
    """One entry of a model's config, with the tensors each of its calls consumes."""

    name: str
    class_name: str
    entry: dict[str, Any]
    calls: tuple[tuple[TensorRef, ...], ...]  # per inbound node, its input tensors in order
    is_op: bool  # a keras.ops operation, not a Layer: no weights, not in `model.layers`

    @property
    def config(self) -> dict[str, Any]:
        config = self.entry.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def is_model(self) -> bool:
        return self.class_name in MODEL_CLASSES and isinstance(self.config.get("layers"), list)


@dataclass(frozen=True)
class ModelGraph:
    """One model of the config (the root, or a model nested as a layer)."""

    path: str  # layer path of the model ("" for the root), as `inspect` names layers
    store_path: str  # its object's group in the weight store ("" for the root)
    entry: dict[str, Any]
    sequential: bool
    layers: tuple[GraphLayer, ...]  # in config order
    inputs: tuple[TensorRef, ...]
    outputs: tuple[TensorRef, ...]

    @property
    def name(self) -> str:
        return str(self.entry.get("config", {}).get("name") or "")

    def layer(self, name: str) -> GraphLayer:
        return next(layer for layer in self.layers if layer.name == name)

    def layer_path(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name

    def consumers(self, name: str) -> list[str]:
        """Who uses any output of layer ``name``: consuming layers, and "<output>" once
        per model output it is."""
        found = [layer.name for layer in self.layers
                 for call in layer.calls for ref in call if ref.layer == name]
        found += ["<output>" for ref in self.outputs if ref.layer == name]
        return found

    @cached_property
    def shapes(self) -> dict[TensorRef, list[Any]]:
        """The shape (batch axis included) the config records for each tensor a layer consumes."""
        found: dict[TensorRef, list[Any]] = {}
        for layer in self.layers:
            for call, refs in enumerate(layer.calls):
                for ref, shape in zip(refs, input_shape_lists(layer, call)):
                    if shape is not None:
                        found.setdefault(ref, shape)
        return found

    def producer(self, layer: GraphLayer) -> GraphLayer | None:
        """The layer whose output is ``layer``'s only input, when it has exactly one."""
        if len(layer.calls) != 1 or len(layer.calls[0]) != 1:
            return None
        ref = layer.calls[0][0]
        return next((other for other in self.layers if other.name == ref.layer), None)


def model_graphs(config: dict[str, Any]) -> list[ModelGraph]:
    """Every model of a model config: the root first, then nested ones, depth first."""
    return list(_graphs(config, "", ""))


def _graphs(entry: dict[str, Any], path: str, store_path: str) -> Iterator[ModelGraph]:
    graph = _graph(entry, path, store_path)
    yield graph
    keys = container_keys(graph, [layer.name for layer in graph.layers])
    for layer in graph.layers:
        if layer.is_model and layer.name in keys:
            yield from _graphs(layer.entry, graph.layer_path(layer.name),
                               _join(store_path, "layers", keys[layer.name]))


def _graph(entry: dict[str, Any], path: str, store_path: str) -> ModelGraph:
    config = entry.get("config", {})
    sequential = entry.get("class_name") == "Sequential"
    layers = []
    previous: str | None = None
    for child in config.get("layers", []):
        name = str(child.get("config", {}).get("name") or child.get("name") or "")
        class_name = str(child.get("class_name", ""))
        if sequential:
            calls: tuple[tuple[TensorRef, ...], ...] = ((TensorRef(previous),),) if previous else ()
        else:
            calls = tuple(tuple(_tensors(node)) for node in child.get("inbound_nodes", []))
        layers.append(GraphLayer(name, class_name, child, calls,
                                 str(child.get("module") or "").startswith("keras.src.ops")))
        previous = name
    if sequential:
        first = (layers[0].name,) if layers else ()
        inputs: tuple[TensorRef, ...] = tuple(TensorRef(n) for n in first)
        outputs: tuple[TensorRef, ...] = (TensorRef(layers[-1].name),) if layers else ()
    else:
        inputs = tuple(_refs(config.get("input_layers", [])))
        outputs = tuple(_refs(config.get("output_layers", [])))
    return ModelGraph(path, store_path, entry, sequential, tuple(layers), inputs, outputs)


def _tensors(value: Any) -> Iterator[TensorRef]:
    """The tensors of an inbound node, in the order Keras flattens its arguments
    (``tree.flatten``: lists in order, dict values by sorted key)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = value.get("config", {}).get("keras_history", [])
            yield TensorRef(str(history[0]), int(history[1]), int(history[2]))
            return
        for key in sorted(value):
            yield from _tensors(value[key])
    elif isinstance(value, list):
        if _is_legacy_ref(value):  # Keras 2: [name, node, tensor, kwargs]
            yield TensorRef(str(value[0]), int(value[1]), int(value[2]))
            if len(value) > 3:
                yield from _tensors(value[3])
            return
        for item in value:
            yield from _tensors(item)


def _is_legacy_ref(value: list[Any]) -> bool:
    return (len(value) in (3, 4) and isinstance(value[0], str) and isinstance(value[1], int)
            and isinstance(value[2], int))


def _refs(value: Any) -> Iterator[TensorRef]:
    """``input_layers``/``output_layers``: one [name, node, tensor] or a list of them."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        yield TensorRef(str(value[0]), int(value[1]), int(value[2]))
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)
    elif isinstance(value, dict):
        for key in sorted(value):
            yield from _refs(value[key])


def input_shape_lists(layer: GraphLayer, call: int) -> list[list[Any] | None]:
    """The shape lists the config records for the inputs of call ``call`` of ``layer``, in
    the order of ``layer.calls[call]`` (None where none is recorded): those of the inbound
    node's tensors (Keras 3), else, for the first call, of its ``build_config``
    (Sequential). They are the config's own lists: a rewrite edits them in place."""
    count = len(layer.calls[call])
    nodes = layer.entry.get("inbound_nodes")
    if isinstance(nodes, list) and call < len(nodes) and isinstance(nodes[call], dict):
        found = list(_tensor_shapes(nodes[call]))
        if len(found) == count:
            return list(found)
    if call == 0:
        leaves = build_shape_lists(layer)
        if len(leaves) == count:
            return list(leaves)
    return [None] * count


def build_shape_lists(layer: GraphLayer) -> list[list[Any]]:
    """The shape lists of a layer's ``build_config.input_shape``, in input order."""
    build = layer.entry.get("build_config")
    return list(_shape_leaves(build.get("input_shape") if isinstance(build, dict) else None))


def _tensor_shapes(value: Any) -> Iterator[list[Any] | None]:
    """The recorded shape of each tensor of an inbound node, in :func:`_tensors`'s order."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            shape = value.get("config", {}).get("shape")
            yield shape if isinstance(shape, list) else None
            return
        for key in sorted(value):
            yield from _tensor_shapes(value[key])
    elif isinstance(value, list):
        for item in value:
            yield from _tensor_shapes(item)


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(d is None or isinstance(d, int) for d in value)


def _shape_leaves(value: Any) -> Iterator[list[Any]]:
    if _is_shape(value):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _shape_leaves(item)
    elif isinstance(value, dict):
        for key in sorted(value):
            yield from _shape_leaves(value[key])


def keras_order(graph: ModelGraph) -> list[str]:
    """The order in which Keras lists the operations of this model once it is built from
    its config (``Functional.operations``): ops included, layers Keras never reaches
    excluded."""
    if graph.sequential:
        return [layer.name for layer in graph.layers]
    by_name = {layer.name: layer for layer in graph.layers}
    Node = tuple[str, int]

    def is_input(node: Node) -> bool:
        layer = by_name.get(node[0])
        return layer is not None and layer.class_name == "InputLayer"

    def parents(node: Node) -> list[Node]:
        layer = by_name[node[0]]
        if is_input(node) or node[1] >= len(layer.calls):
            return []
        return [(ref.layer, ref.node) for ref in layer.calls[node[1]]]

    finished: set[Node] = set()
    in_progress: set[Node] = set()
    ordered: list[Node] = []  # inputs -> outputs
    indices: dict[str, int] = {}
    inputs = set(graph.inputs)

    def enter(ref: TensorRef, stack: list[tuple[Node, Iterator[Node]]]) -> None:
        node = (ref.layer, ref.node)
        if ref.layer not in by_name:
            raise ValueError(f"the config names a layer '{ref.layer}' it does not define")
        if node in finished:
            return
        if not is_input(node) and ref in inputs:
            finished.add(node)
            return
        if node in in_progress:
            raise ValueError(f"layer '{ref.layer}' is part of a cycle")
        indices.setdefault(ref.layer, len(indices))
        in_progress.add(node)
        stack.append((node, iter(parents(node))))

    def visit(ref: TensorRef) -> None:
        # Depth first with a stack of its own: a chain of layers may be longer than
        # Python's recursion limit (1000 frames).
        stack: list[tuple[Node, Iterator[Node]]] = []
        enter(ref, stack)
        while stack:
            node, pending = stack[-1]
            parent = next(pending, None)
            if parent is not None:
                enter(TensorRef(*parent), stack)
                continue
            stack.pop()
            finished.add(node)
            in_progress.remove(node)
            ordered.append(node)

    for output in graph.outputs:
        visit(output)
    in_graph = set(ordered)
    node_depth: dict[Node, int] = {}
    op_depth: dict[str, int] = {}
    for node in reversed(ordered):
        depth = node_depth.setdefault(node, 0)
        depth = max(depth, op_depth.get(node[0], 0))
        op_depth[node[0]] = depth
        node_depth[node] = depth
        for parent in parents(node):
            if parent in in_graph:
                node_depth[parent] = max(depth + 1, node_depth.get(parent, 0))
    for ref in graph.inputs:
        if ref.layer not in op_depth and is_input((ref.layer, ref.node)):
            op_depth[ref.layer] = 0
            indices[ref.layer] = -1
    by_depth: dict[int, list[str]] = {}
    for name, depth in op_depth.items():
        by_depth.setdefault(depth, []).append(name)
    order: list[str] = []
    for depth in sorted(by_depth, reverse=True):
        order += sorted(by_depth[depth], key=lambda name: indices[name])
    return order


def container_keys(graph: ModelGraph, order: list[str]) -> dict[str, str]:
    """The weight store's key of each layer of ``graph`` (under its ``layers`` group), when
    Keras lists its layers in ``order``: the snake-cased class with a per-class counter,
    as Keras's saver names container elements (``_save_container_state``)."""
    by_name = {layer.name: layer for layer in graph.layers}
    counters: dict[str, int] = {}
    keys: dict[str, str] = {}
    for position, name in enumerate(order):
        layer = by_name[name]
        if layer.is_op:
            continue
        if graph.sequential and position == 0 and layer.class_name == "InputLayer":
            continue  # a Sequential keeps its input layer out of `layers`
        snake = to_snake_case(layer.class_name)
        count = counters.get(snake, 0)
        counters[snake] = count + 1
        keys[name] = snake if count == 0 else f"{snake}_{count}"
    return keys


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


# --- what a config must be for the readers above (and structure.py's) ---------------------


class _Broken(Exception):
    """A place in the config and what is wrong there."""


def config_problem(config: dict[str, Any]) -> str | None:
    """Why a model config cannot be read as Keras writes it, as far as conv-surgeon reads
    it: the place and the fault (``config.layers[2].config.kernel_size (layer 'conv1',
    Conv2D): expected ..., received the string "3"``); None when it reads.

    It checks what the readers of this module and of :mod:`.structure` take for granted:
    every layer entry an object with a class name and a config object; a model's layers
    a list; inbound nodes and tensor references shaped as :func:`_tensors` and
    :func:`_refs` read them, naming layers of their own model; and the values the
    catalogue lists (:data:`~.catalogue.VALUE_RULES`). Nesting is bounded where the
    document was parsed (:mod:`..store.documents`), so this recursion is too.
    """
    try:
        _check_entry(config, "", None)
    except _Broken as broken:
        return str(broken)
    return None


def _check_entry(entry: Any, place: str, names: set[str] | None) -> None:
    """One layer entry at ``place`` (``""`` for the root); ``names``: the layers of the
    model it belongs to (None for the root and sub-layers), which its references name."""
    where = place or "the top level"
    if not isinstance(entry, dict):
        raise _Broken(f"{where}: expected a layer object with 'class_name' and 'config', received {described(entry)}")
    class_name = entry.get("class_name")
    if not isinstance(class_name, str):
        raise _Broken(f"{_at(place, 'class_name')}: expected the layer's class name, received {described(class_name)}")
    config = entry.get("config", {})
    if not isinstance(config, dict):
        raise _Broken(f"{_at(place, 'config')} ({class_name}): expected an object, received {described(config)}")
    name = config.get("name", entry.get("name"))
    for key, value in (("name", entry.get("name")), ("config.name", config.get("name")), ("module", entry.get("module"))):
        if value is not None and not isinstance(value, str):
            raise _Broken(f"{_at(place, key)} ({class_name}): expected a string, received {described(value)}")
    who = f"layer '{name}', {class_name}" if name else class_name
    fault = config_value_problem(class_name, config)
    if fault is not None:
        key, expected, value = fault
        raise _Broken(f"{_at(place, 'config.' + key)} ({who}): expected {expected}, received {described(value)}")
    if "inbound_nodes" in entry:
        _check_nodes(entry["inbound_nodes"], _at(place, "inbound_nodes"), names, who)
    build = entry.get("build_config")
    if isinstance(build, dict):
        for shape in _shape_leaves(build.get("input_shape")):
            bad = next((d for d in shape if not _is_dimension(d)), None)
            if bad is not None:
                raise _Broken(f"{_at(place, 'build_config.input_shape')} ({who}): expected sizes from 0 to "
                              f"2**31-1 or null, received a size of {described(bad)}")
    layers = config.get("layers")
    # The root's layers are read whatever its class (a custom model's too), a model's always.
    if isinstance(layers, list) or ((not place or class_name in MODEL_CLASSES) and "layers" in config):
        _check_model(config, place, who)
    for key in ("layer", "backward_layer", "cell"):
        sub = config.get(key)
        if isinstance(sub, dict) and "class_name" in sub:
            _check_entry(sub, _at(place, f"config.{key}"), None)


def _check_model(config: dict[str, Any], place: str, who: str) -> None:
    layers = config["layers"]
    if not isinstance(layers, list):
        raise _Broken(f"{_at(place, 'config.layers')} ({who}): expected a list of layers, received {described(layers)}")
    names = {str(child.get("config", {}).get("name") or child.get("name") or "")
             for child in layers if isinstance(child, dict) and isinstance(child.get("config", {}), dict)}
    for index, child in enumerate(layers):
        _check_entry(child, _at(place, f"config.layers[{index}]"), names)
    for key in ("input_layers", "output_layers"):
        if key in config:
            _check_refs(config[key], _at(place, f"config.{key}"), names, who)


def _check_nodes(nodes: Any, place: str, names: set[str] | None, who: str) -> None:
    """Inbound nodes as :func:`_tensors` reads them: a list of calls, whose tensors are
    ``__keras_tensor__`` objects or Keras 2's ``[name, node, tensor, kwargs]``. A fault is
    placed at its call (``inbound_nodes[0]``): the walk builds no place for every value."""
    if not isinstance(nodes, list):
        raise _Broken(f"{place} ({who}): expected a list of calls, received {described(nodes)}")

    def visit(value: Any, at: str) -> None:
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                _check_keras_tensor(value, at, names, who)
                return
            for item in value.values():
                visit(item, at)
        elif isinstance(value, list):
            if _is_legacy_ref(value):
                _check_ref(value, at, names, who)
                if len(value) > 3:
                    visit(value[3], at)
                return
            for item in value:
                visit(item, at)

    for index, node in enumerate(nodes):
        visit(node, f"{place}[{index}]")


def _check_keras_tensor(value: dict[str, Any], at: str, names: set[str] | None, who: str) -> None:
    config = value.get("config")
    if not isinstance(config, dict):
        raise _Broken(f"{at} ({who}): expected a tensor's config object, received {described(config)}")
    history = config.get("keras_history")
    if not isinstance(history, list) or len(history) < 3:
        raise _Broken(f"{at} ({who}): expected a tensor's keras_history [layer name, node index, tensor index], "
                      f"received {described(history)}")
    _check_ref(history, at, names, who)
    shape = config.get("shape")
    if shape is not None and not (isinstance(shape, list) and all(_is_dimension(d) for d in shape)):
        raise _Broken(f"{at} ({who}): expected a tensor's shape, a list of sizes from 0 to 2**31-1 or null, "
                      f"received {described(shape)}")


def _check_ref(ref: list[Any], at: str, names: set[str] | None, who: str) -> None:
    """``[layer name, node index, tensor index, ...]``: as :class:`TensorRef` takes it."""
    if len(ref) < 3 or not isinstance(ref[0], str) or not all(_is_index(i) for i in ref[1:3]):
        raise _Broken(f"{at} ({who}): expected [layer name, node index, tensor index] with indices from 0, "
                      f"received [{', '.join(described(item) for item in ref[:3])}]")
    if names is not None and ref[0] not in names:
        raise _Broken(f"{at} ({who}): names a layer '{ref[0]}' its model does not have")


def _check_refs(value: Any, at: str, names: set[str], who: str) -> None:
    """``input_layers``/``output_layers`` as :func:`_refs` reads them."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        _check_ref(value, at, names, who)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_refs(item, f"{at}[{index}]", names, who)
    elif isinstance(value, dict):
        for key in sorted(value):
            _check_refs(value[key], f"{at}.{key}", names, who)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_CONFIG_INT


def _is_dimension(value: Any) -> bool:
    return value is None or _is_index(value)


def _at(place: str, key: str) -> str:
    return f"{place}.{key}" if place else key
