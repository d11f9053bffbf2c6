"""A saved model's layers, read from its weight store without TensorFlow.

The structure is a tree of variable-holding objects, walked the way Keras's saver walks
them (`_save_state` in keras/src/saving/saving_lib.py): wrappers, custom layers and
sub-layers included. Two HDF5 layouts: Keras 3 keeps every variable at an object-graph
path (``layers/conv2d/vars/0``), the legacy one under ``<layer>/<weight name>`` listed by
``weight_names`` attributes. A variable the walk cannot place on a layer is reported
(:attr:`ModelStructure.unplaced`), never dropped.

A structure is read in this process by the pure-Python HDF5 reader
(:mod:`conv_surgeon.store.hdf5_tree`), which cannot hang, wherever it reads the file
exactly; everything else, and every read through h5py, runs in a bounded worker
(:func:`conv_surgeon.store.worker.run_bounded`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..errors import ModelFileError
from ..store.hdf5 import (
    DatasetEntry,
    GroupEntry,
    attr_list,
    damaged_store_is_an_error,
    dataset_dtype,
    read_dataset,
)
from ..store.hdf5_tree import UnsupportedHDF5
from ..store.model_file import (ModelFormat, ModelFile, OpenStore, OutlinedStore, RawValue, StoreFile, open_store,
                                outline_store)
from ..store.worker import PARSE_TIMEOUT_S, run_bounded
from .catalogue import (ConvClass, LayerClass, canonical_variable_name, class_for_snake_name, conv_class, infer_class,
                        layer_class, layer_variables, quantization_mode)
from .graph import config_problem
from .naming import to_snake_case

if TYPE_CHECKING:
    import h5py
    import numpy as np

OPTIMIZER_ROOT = "optimizer"
# Keras 2.13's .keras archives name the layers container this way.
LAYER_CONTAINERS = ("layers", "_layer_checkpoint_dependencies")
_Config = TypeVar("_Config", bound="dict[str, Any] | None")


@dataclass(frozen=True)
class Variable:
    """One variable of a layer, where it lives in the weight store."""

    name: str  # unique in its layer: "kernel", "bias", "kernel_scale"; Keras 2's ":0" dropped
    dataset: str  # path of the dataset inside its store file
    shape: tuple[int, ...]
    dtype: str  # "float32", "float16", "bfloat16", ...
    index: int  # position in the layer's weight list (Keras's `layer.weights` order)
    file: int = 0  # which file of the store (a shard) holds it
    position: int = -1  # legacy layout: position in the top-level group's `weight_names`

    @property
    def size(self) -> int:
        return math.prod(self.shape)


ClassSource = Literal["config", "store key", "name", "shapes", "unknown"]


@dataclass(frozen=True)
class Layer:
    """An object that holds variables (a layer or a sub-layer), with its place in the model."""

    name: str
    path: str  # layer names from the root down, root excluded: "td/conv2d", "block/conv"
    class_name: str  # "?" when nothing tells the class
    config: dict[str, Any]
    variables: tuple[Variable, ...]
    store_path: str = ""  # the object's group in the weight store ("layers/time_distributed/layer")
    alias: str | None = None  # the path by attribute names where it differs: "td/layer"
    class_source: ClassSource = "config"
    inferred_from: str | None = None  # what the class was inferred from, when not the config

    @property
    def conv(self) -> ConvClass | None:
        return conv_class(self.class_name)

    @property
    def kind(self) -> LayerClass | None:
        """The catalogue's entry for the layer's variables; None when it cannot name them
        (a class it does not know, a quantized layer): they go by their stored names."""
        return None if quantization_mode(self.config) is not None else layer_class(self.class_name)

    @property
    def parameters(self) -> int:
        return sum(v.size for v in self.variables)


@dataclass(frozen=True)
class ModelStructure:
    """Everything `inspect` shows, read from the file's structure alone."""

    format: ModelFormat
    keras_version: str | None
    model_name: str
    model_class: str
    layers: tuple[Layer, ...] = field(default_factory=tuple)
    files: tuple[StoreFile, ...] = ()
    legacy: bool = False  # the legacy HDF5 layout (weight_names), not object paths
    optimizer_variables: int = 0
    unplaced: tuple[str, ...] = ()  # datasets that belong to no listed layer
    config_source: str | None = None  # where the classes came from, if not the model itself

    @property
    def conv_layers(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.conv is not None)

    @property
    def variable_count(self) -> int:
        return sum(len(layer.variables) for layer in self.layers)


# --- structure: the Keras 3 object layout ---------------------------------------------


@dataclass
class _Node:
    """A group of the store that has a ``vars`` group: one object Keras saved."""

    path: str  # "" for the root object
    name: str | None = None  # the `name` attribute of its vars group (Keras >= 3.6)
    variables: list[tuple[int, tuple[int, ...], str, int]] = field(default_factory=list)  # (index, shape, dtype, file)


def _collect_nodes(store: OpenStore | OutlinedStore) -> tuple[dict[str, _Node], list[str]]:
    """Every object of the store (shards merged), and the datasets outside any `vars` group."""
    nodes: dict[str, _Node] = {}
    stray: list[str] = []
    for file_index in range(len(store.files)):

        def visit(name: str, entry: GroupEntry | DatasetEntry, file_index: int = file_index) -> None:
            parent, _, leaf = name.rpartition("/")
            if entry.kind == "group":
                if leaf == "vars":
                    node = nodes.setdefault(parent, _Node(parent))
                    text = entry.text_attribute("name")
                    if text is not None:
                        node.name = text
                return
            owner, _, vars_leaf = parent.rpartition("/")
            if vars_leaf != "vars" or not leaf.isdigit():
                stray.append(name)
                return
            node = nodes.setdefault(owner, _Node(owner))
            node.variables.append((int(leaf), entry.shape, entry.dtype, file_index))

        store.walk(file_index, visit)
    return nodes, stray


def _is_model_config(entry: dict[str, Any]) -> bool:
    return isinstance(entry.get("config"), dict) and isinstance(entry["config"].get("layers"), list)


def _is_op(entry: dict[str, Any]) -> bool:
    return str(entry.get("module") or "").startswith("keras.src.ops")


def _layer_name(entry: dict[str, Any]) -> str:
    return str(entry.get("config", {}).get("name") or entry.get("name") or "")


# RNN layers build their cell themselves; the cell's class follows from the layer's.
_RNN_CELLS = {"LSTM": "LSTMCell", "GRU": "GRUCell", "SimpleRNN": "SimpleRNNCell",
              "ConvLSTM1D": "ConvLSTMCell", "ConvLSTM2D": "ConvLSTMCell", "ConvLSTM3D": "ConvLSTMCell"}


def _sub_entries(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The configs of a layer's sub-layers, by attribute name, as far as its config says."""
    config = entry.get("config", {})
    found: dict[str, dict[str, Any]] = {}
    inner = config.get("layer")
    if isinstance(inner, dict) and "class_name" in inner:
        found["layer"] = inner
        if entry.get("class_name") == "Bidirectional":
            found["forward_layer"] = inner
            backward = config.get("backward_layer")
            found["backward_layer"] = backward if isinstance(backward, dict) and "class_name" in backward else inner
    cell = config.get("cell")
    if isinstance(cell, dict) and "class_name" in cell:
        found["cell"] = cell
    elif entry.get("class_name") in _RNN_CELLS:
        found["cell"] = {"class_name": _RNN_CELLS[str(entry["class_name"])], "config": config}
    return found


def _guide(nodes: dict[str, _Node], store_paths: set[str], entry: dict[str, Any], path: str,
           guided: dict[str, tuple[dict[str, Any], str]]) -> None:
    """Match config entries to store objects, as Keras's saver named them
    (``_save_container_state`` in keras/src/saving/saving_lib.py)."""
    guided[path] = (entry, _layer_name(entry))
    if _is_model_config(entry):
        container = next((c for c in LAYER_CONTAINERS if _join(path, c) in store_paths), LAYER_CONTAINERS[0])
        children = _join(path, container)
        by_name = {node.name: p for p, node in nodes.items()
                   if node.name is not None and p.rpartition("/")[0] == children}
        counters: dict[str, int] = {}
        is_sequential = entry.get("class_name") == "Sequential"
        for position, child in enumerate(entry["config"]["layers"]):
            if _is_op(child):
                continue
            if is_sequential and position == 0 and child.get("class_name") == "InputLayer":
                continue
            snake = to_snake_case(str(child.get("class_name", "")))
            count = counters.get(snake, 0)
            counters[snake] = count + 1
            derived = _join(children, snake if count == 0 else f"{snake}_{count}")
            _guide(nodes, store_paths, child, by_name.get(_layer_name(child), derived), guided)
        return
    for attribute, sub in _sub_entries(entry).items():
        _guide(nodes, store_paths, sub, _join(path, attribute), guided)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _object_layers(store: OpenStore | OutlinedStore, config: dict[str, Any] | None) -> tuple[list[Layer], list[str], int]:
    """(layers, unplaced datasets, optimizer variable count) of a Keras 3 store."""
    nodes, stray = _collect_nodes(store)
    store_paths: set[str] = set()
    for p in nodes:
        parts = p.split("/")
        store_paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    guided: dict[str, tuple[dict[str, Any], str]] = {}
    if config is not None:
        _guide(nodes, store_paths, config, "", guided)
    optimizer = 0
    layers: list[Layer] = []
    rank = {path: i for i, path in enumerate(guided)}

    def in_model_order(path: str) -> tuple[Any, ...]:
        # Config order for what the config names, a sub-layer right after its owner,
        # and the store's order (per-class counters) for the rest.
        parts = path.split("/")
        owner = next((rank["/".join(parts[:i])] for i in range(len(parts), -1, -1)
                      if "/".join(parts[:i]) in rank), len(rank))
        return (owner, _store_order(path))

    for store_path in sorted(nodes, key=in_model_order):
        node = nodes[store_path]
        if store_path == OPTIMIZER_ROOT or store_path.startswith(OPTIMIZER_ROOT + "/"):
            optimizer += len(node.variables)
            continue
        if not node.variables:
            continue
        layers.append(_object_layer(node, nodes, guided))
    return _unique_paths(layers), stray, optimizer


def _store_order(path: str) -> tuple[Any, ...]:
    """Store paths in the order Keras saved them: counters numerically (conv2d_2 < conv2d_10)."""
    return tuple((re.sub(r"_\d+$", "", part), int(m.group(1)) if (m := re.search(r"_(\d+)$", part)) else -1)
                 for part in path.split("/"))


def _object_layer(node: _Node, nodes: dict[str, _Node], guided: dict[str, tuple[dict[str, Any], str]]) -> Layer:
    parts = node.path.split("/")
    names: list[str] = []
    attributes: list[str] = []
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if prefix not in nodes:
            continue  # a container ("layers"), not an object
        own = nodes[prefix].name or guided.get(prefix, ({}, ""))[1] or parts[i - 1]
        names.append(own)
        under_container = i >= 2 and "/".join(parts[:i - 1]) not in nodes
        attributes.append(own if under_container else parts[i - 1])
    path = "/".join(names)
    alias = "/".join(attributes)
    variables = sorted(node.variables)
    shapes = [shape for _, shape, _, _ in variables]
    source: ClassSource = "config"
    hint: str | None = None
    if node.path in guided:
        entry = guided[node.path][0]
        class_name, config = str(entry.get("class_name")), dict(entry.get("config", {}))
    else:
        # A child of a container (a group that is no object) has a snake-cased class as its key.
        in_container = bool(node.path) and node.path.rpartition("/")[0] not in nodes
        class_name, source, hint = _inferred_class(node, shapes, in_container)
        config = {}
    names_of = _variable_names(class_name, config, shapes)
    return Layer(
        name=names[-1] if names else (node.name or ""),
        path=path,
        class_name=class_name,
        config=config,
        variables=tuple(
            Variable(names_of[i], _join(node.path, "vars", str(k)), shape, dtype, i, file)
            for i, (k, shape, dtype, file) in enumerate(variables)
        ),
        store_path=node.path,
        alias=alias if alias != path else None,
        class_source=source,
        inferred_from=hint,
    )


def _inferred_class(node: _Node, shapes: list[tuple[int, ...]], in_container: bool) -> tuple[str, ClassSource, str | None]:
    """A class for an object no config describes: from its store key (the saver names
    container children by snake-cased class), its name, or its variables' shapes."""
    parent, _, key = node.path.rpartition("/")
    if in_container:
        known = class_for_snake_name(key)
        if known is not None:
            return known, "store key", f"store key '{key}'"
    if node.name:
        known = class_for_snake_name(node.name)
        if known is not None:
            return known, "name", f"its name '{node.name}'"
    guess = infer_class(shapes)
    if guess is not None:
        return guess, "shapes", "its variable shapes " + ", ".join(str(s) for s in shapes)
    return "?", "unknown", None


def _variable_names(class_name: str, config: dict[str, Any], shapes: list[tuple[int, ...]]) -> list[str]:
    """Keras's names for a layer's variables; positions ("0", "1") where the layout is unknown."""
    known = layer_variables(class_name, config, len(shapes))
    if known is not None and len(known) == len(shapes):
        return [name for name, _ in known]
    return [str(i) for i in range(len(shapes))]


def _unique_paths(layers: list[Layer]) -> list[Layer]:
    """Two objects with the same names (sub-layers a custom layer named alike) fall back
    to their attribute paths, then to their store paths: every path names one layer."""
    fallbacks: tuple[Callable[[Layer], str], ...] = (
        lambda layer: layer.alias or layer.path,
        lambda layer: layer.store_path,
    )
    for fallback in fallbacks:
        counts: dict[str, int] = {}
        for layer in layers:
            counts[layer.path] = counts.get(layer.path, 0) + 1
        if all(c == 1 for c in counts.values()):
            break
        layers = [replace(layer, path=fallback(layer), alias=None) if counts[layer.path] > 1 else layer
                  for layer in layers]
    return layers


# --- structure: the legacy HDF5 layout -------------------------------------------------


def _legacy_layers(h5: h5py.File, config: dict[str, Any] | None, label: str) -> tuple[list[Layer], list[str], int]:
    """(layers, unplaced datasets, optimizer variable count) of a legacy `.h5` or a
    Keras 2 weights-only file; layers in the order of the ``layer_names`` attribute."""
    import h5py

    root = h5["model_weights"] if "model_weights" in h5 else h5
    entries = {}
    for entry in (config or {}).get("config", {}).get("layers", []):
        if isinstance(entry, dict) and not _is_op(entry):
            entries[_layer_name(entry)] = entry
    names = attr_list(root, "layer_names") or [k for k in root if k in entries]
    layers: list[Layer] = []
    placed: set[str] = set()
    for name in names:
        group = root.get(name)
        if not isinstance(group, h5py.Group):
            continue
        weight_names = attr_list(group, "weight_names")
        if not weight_names:
            continue
        entry = entries.get(name)
        if entry is not None and _is_model_config(entry):
            found = list(_legacy_nested_layers(group, entry, weight_names, label))
        else:
            found = _legacy_layer(group, name, entry, weight_names)
        layers += found
        placed.update(v.dataset for layer in found for v in layer.variables)
    stray: list[str] = []

    def visit(path: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.name.lstrip("/") not in placed:
            stray.append(obj.name.lstrip("/"))

    root.visititems(visit)
    optimizer = 0
    if "optimizer_weights" in h5:
        optimizer = _count_datasets(h5["optimizer_weights"])
    return _unique_paths(layers), stray, optimizer


def _count_datasets(group: h5py.Group) -> int:
    import h5py

    count = 0

    def visit(_: str, obj: Any) -> None:
        nonlocal count
        count += isinstance(obj, h5py.Dataset)

    group.visititems(visit)
    return count


def _legacy_layer(group: h5py.Group, name: str, entry: dict[str, Any] | None,
                  weight_names: list[str]) -> list[Layer]:
    """One top-level layer group: the layer itself, or the sub-layers its weight names
    show (a wrapper's inner layer, a custom layer's convs, a Bidirectional's two RNNs)."""
    by_owner: dict[str, list[tuple[int, str]]] = {}
    for position, weight_name in enumerate(weight_names):
        relative = weight_name[len(name) + 1:] if weight_name.startswith(name + "/") else weight_name
        by_owner.setdefault(relative.rpartition("/")[0], []).append((position, weight_name))
    class_name = str(entry.get("class_name")) if entry is not None else None
    config = dict(entry.get("config", {})) if entry is not None else {}
    own_layout = class_name is not None and layer_variables(class_name, config, None) is not None
    if len(by_owner) == 1 and (own_layout or "" in by_owner):
        ((_, slots),) = by_owner.items()
        return [_legacy_leaf(group, name, name, class_name, config, slots)]
    subs = _sub_entries(entry) if entry is not None else {}
    layers = []
    for owner, slots in by_owner.items():
        if not owner:
            layers.append(_legacy_leaf(group, name, name, class_name, config, slots))
            continue
        # A wrapper's inner layer, or an RNN's cell (`lstm/lstm_cell/kernel`).
        inner = (subs.get("layer") or subs.get("cell")) if len(by_owner) == 1 else None
        leaf_name = owner.rpartition("/")[2]
        if inner is not None:
            layers.append(_legacy_leaf(group, leaf_name, f"{name}/{owner}", str(inner.get("class_name")),
                                       dict(inner.get("config", {})), slots))
        else:
            layers.append(_legacy_leaf(group, leaf_name, f"{name}/{owner}", None, {}, slots))
    return layers


def _legacy_leaf(group: h5py.Group, name: str, path: str, class_name: str | None,
                 config: dict[str, Any], slots: list[tuple[int, str]]) -> Layer:
    datasets = [group[weight_name] for _, weight_name in slots]
    shapes = [tuple(int(d) for d in d_.shape) for d_ in datasets]
    source: ClassSource = "config"
    hint = None
    if class_name is None:
        class_name, source, hint = _inferred_class(_Node(path, name), shapes, False)
    stored = [canonical_variable_name(weight_name) for _, weight_name in slots]
    names = stored if len(set(stored)) == len(stored) else _variable_names(class_name, config, shapes)
    return Layer(
        name=name, path=path, class_name=class_name, config=config,
        variables=tuple(
            Variable(var_name, dataset.name.lstrip("/"), shape, dataset_dtype(dataset), i, position=position)
            for i, (var_name, dataset, shape, (position, _)) in enumerate(zip(names, datasets, shapes, slots))
        ),
        store_path=group.name.lstrip("/"), class_source=source, inferred_from=hint,
    )


def _flatten_nested(
    entry: dict[str, Any], path: tuple[str, ...], trainable: bool
) -> Iterator[tuple[dict[str, Any], tuple[str, ...], bool]]:
    """Every leaf layer of a nested model, with whether its variables are trainable."""
    trainable = trainable and bool(entry.get("config", {}).get("trainable", True))
    for child in entry["config"]["layers"]:
        if _is_op(child):
            continue
        child_path = path + (_layer_name(child),)
        if _is_model_config(child):
            yield from _flatten_nested(child, child_path, trainable)
        else:
            yield child, child_path, trainable and bool(
                child.get("config", {}).get("trainable", True)
            )


def _legacy_nested_layers(
    group: h5py.Group, entry: dict[str, Any], weight_names: list[str], label: str
) -> Iterator[Layer]:
    """Place a nested model's flattened weights on its layers.

    Keras stores them as ``trainable_weights + non_trainable_weights`` of the nested
    model (a frozen sub-model has only the latter), so positions follow from the
    config; dataset names cannot be trusted (they may hold the root model's name).
    """
    leaves = list(_flatten_nested(entry, (_layer_name(entry),), True))
    slots: list[tuple[int, str, bool]] = []  # (leaf index, variable name, trainable)
    for leaf_index, (leaf, _, trainable) in enumerate(leaves):
        known = layer_variables(str(leaf.get("class_name")), leaf.get("config", {}), None)
        if known is None:
            raise ModelFileError(
                f"{label}: nested model '{_layer_name(entry)}' holds a "
                f"{leaf.get('class_name')} layer whose weight layout conv-surgeon does not "
                "know, so its convolutions cannot be placed in this .h5; save the model "
                "as .keras to edit it"
            )
        slots.extend((leaf_index, name, trainable and t) for name, t in known)
    ordered = [s for s in slots if s[2]] + [s for s in slots if not s[2]]
    if len(ordered) != len(weight_names):
        raise ModelFileError(
            f"{label}: nested model '{_layer_name(entry)}' stores {len(weight_names)} "
            f"weights but its config describes {len(ordered)}; save the model as .keras "
            "to edit it"
        )
    per_leaf: dict[int, list[tuple[str, str, int]]] = {}
    for position, ((leaf_index, var_name, _), weight_name) in enumerate(zip(ordered, weight_names)):
        per_leaf.setdefault(leaf_index, []).append((var_name, weight_name, position))
    for leaf_index, (leaf, path, _) in enumerate(leaves):
        triples = per_leaf.get(leaf_index)
        if not triples:
            continue
        # Restore Keras's own per-layer order (the flattening moved non-trainables).
        known_order = [n for n, _ in layer_variables(str(leaf.get("class_name")), leaf.get("config", {}), None) or []]
        triples.sort(key=lambda t: known_order.index(t[0]))
        variables = []
        for i, (_, weight_name, position) in enumerate(triples):
            dataset = group[weight_name]
            variables.append(Variable(
                canonical_variable_name(weight_name), dataset.name.lstrip("/"),
                tuple(int(d) for d in dataset.shape), dataset_dtype(dataset), i, position=position))
        yield Layer(path[-1], "/".join(path), str(leaf.get("class_name")),
                    dict(leaf.get("config", {})), tuple(variables), store_path=group.name.lstrip("/"))


# --- reading -----------------------------------------------------------------------


def _parse_structure(source: ModelFile) -> ModelStructure:
    """The structure read through h5py: every kind of save, legacy `.h5` included."""
    with damaged_store_is_an_error(source.label), open_store(source) as store:
        config = checked_config(store.config, source.label)
        config_source = None
        if source.config is not None:
            config = _config_of(source.config)
            config_source = str(source.config)
        if store.legacy:
            layers, stray, optimizer = _legacy_layers(store.h5s[0], config, source.label)
        else:
            layers, stray, optimizer = _object_layers(store, config)
        structure = _structure(store, config, layers, stray, optimizer, config_source)
    if source.config is not None:
        _check_config_matches(structure, source)
    return structure


def _outline_structure(source: ModelFile) -> ModelStructure:
    """The structure read by the pure-Python HDF5 reader, equal to :func:`_parse_structure`'s;
    raises :class:`UnsupportedHDF5` for whatever that reader leaves to h5py (legacy `.h5`
    files, ``--config``, HDF5 beyond the subset Keras writes)."""
    if source.config is not None:
        raise UnsupportedHDF5("a weights file read with --config goes through h5py")
    with outline_store(source) as store:
        config = checked_config(store.config, source.label)
        layers, stray, optimizer = _object_layers(store, config)
        return _structure(store, config, layers, stray, optimizer, None)


def _structure(store: OpenStore | OutlinedStore, config: dict[str, Any] | None, layers: list[Layer],
               stray: list[str], optimizer: int, config_source: str | None) -> ModelStructure:
    return ModelStructure(
        format=store.format,
        keras_version=store.keras_version,
        model_name=str((config or {}).get("config", {}).get("name", "") if isinstance((config or {}).get("config"), dict) else ""),
        model_class=str((config or {}).get("class_name", "") or "weights only"),
        layers=tuple(layers),
        files=store.files,
        legacy=isinstance(store, OpenStore) and store.legacy,
        optimizer_variables=optimizer,
        unplaced=tuple(stray),
        config_source=config_source,
    )


def checked_config(config: _Config, label: str) -> _Config:
    """``config`` once :func:`~.graph.config_problem` finds nothing in it that the readers
    could not take; else a one-line ModelFileError naming the place."""
    if config is not None:
        problem = config_problem(config)
        if problem is not None:
            raise ModelFileError(f"{label}: the model config is broken at {problem}; re-save the model with Keras")
    return config


def _config_of(path: Path) -> dict[str, Any]:
    """The model config of another save of the model (``--config``)."""
    with open_store(ModelFile.from_path(path)) as store:
        if store.config is None:
            raise ModelFileError(
                f"--config {path}: holds weights only, no model config; pass the .keras, "
                ".h5, saved folder or preset the weights belong to"
            )
        return checked_config(store.config, f"--config {path}")


def _check_config_matches(structure: ModelStructure, source: ModelFile) -> None:
    """Every variable of the weights file is where the config's own save has it, with
    the same shape: otherwise the config describes another model."""
    assert source.config is not None
    reference = _parse_structure(ModelFile.from_path(source.config))
    theirs = {(layer.path, v.name): v.shape for layer in reference.layers for v in layer.variables}
    ours = {(layer.path, v.name): v.shape for layer in structure.layers for v in layer.variables}
    for key in list(ours) + list(theirs):
        if ours.get(key) != theirs.get(key):
            what = f"layer '{key[0]}' {key[1]}"
            raise ModelFileError(
                f"{source.label}: does not match --config {source.config}: {what} is "
                f"{_shape_or_absent(ours.get(key))} in the weights and "
                f"{_shape_or_absent(theirs.get(key))} in the config's model; pass the model "
                "these weights were saved from"
            )


def _shape_or_absent(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else str(shape)


def read_structure(source: ModelFile, timeout: float = PARSE_TIMEOUT_S) -> ModelStructure:
    """The model's layers and variables, read from structure alone (no weight bytes).

    Read in this process by the pure-Python HDF5 reader where it can (it cannot hang,
    and needs neither h5py nor numpy), else through h5py in a bounded worker.
    """
    try:
        return _outline_structure(source)
    except UnsupportedHDF5:
        pass
    _warm_up_readers()
    return run_bounded(lambda: _parse_structure(source), timeout, source.label)


def _warm_up_readers() -> None:
    """Import h5py here, once per process, before forking a worker: a worker that finds
    it loaded starts in 2 ms, one that imports it pays about 90 ms on every call."""
    import h5py  # noqa: F401


def read_variables(source: ModelFile, variables: list[Variable], timeout: float = PARSE_TIMEOUT_S) -> dict[str, np.ndarray]:
    """The values of ``variables``, keyed by dataset path: read in this process by the
    pure-Python HDF5 reader where it can (the same values h5py reads), else through h5py
    in a bounded worker."""
    try:
        return _outline_variables(source, variables)
    except UnsupportedHDF5:
        return _variables_through_h5py(source, variables, timeout)


def read_raw_variables(source: ModelFile, variables: list[Variable],
                       timeout: float = PARSE_TIMEOUT_S) -> dict[str, RawValue]:
    """:func:`read_variables` as bytes: without numpy where the pure-Python reader reads
    the file (for pictures of small kernels, whose drawing costs less than numpy's import)."""
    try:
        with outline_store(source) as store:
            return {v.dataset: store.raw(v.file, v.dataset) for v in variables}
    except UnsupportedHDF5:
        pass
    return {key: RawValue.of(value) for key, value in _variables_through_h5py(source, variables, timeout).items()}


def _variables_through_h5py(source: ModelFile, variables: list[Variable], timeout: float) -> dict[str, np.ndarray]:
    _warm_up_readers()
    return run_bounded(lambda: _read_variables(source, variables), timeout, source.label, source.size())


def _outline_variables(source: ModelFile, variables: list[Variable]) -> dict[str, np.ndarray]:
    """:func:`_read_variables` by the pure-Python reader; raises :class:`UnsupportedHDF5`
    where it leaves a file or a dataset to h5py."""
    with outline_store(source) as store:
        return {v.dataset: store.value(v.file, v.dataset) for v in variables}


def read_own_variables(source: ModelFile, variables: list[Variable]) -> dict[str, np.ndarray]:
    """:func:`read_variables` of a file conv-surgeon itself just wrote: no worker needed."""
    return _read_variables(source, variables)


def _read_variables(source: ModelFile, variables: list[Variable]) -> dict[str, np.ndarray]:
    with damaged_store_is_an_error(source.label), open_store(source) as store:
        return {v.dataset: read_dataset(store.dataset(v.file, v.dataset)) for v in variables}
