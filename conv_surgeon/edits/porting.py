"""`port`'s rules: which tensor of a PyTorch state dict goes into which variable of a Keras
model, without a name table. Pure numpy and the model's config: no Keras, no torch.

The state dict's tensors are grouped into modules by their name (``features.0.weight``
and ``features.0.bias`` are module ``features.0``), in the file's order. A Keras layer
*fits* a module when the module holds exactly the tensors PyTorch's module of that kind
would hold, each in the PyTorch shape of the layer's variable (:mod:`.layout`): a conv
kernel ``(kh, kw, in, out)`` takes ``weight (out, in, kh, kw)``, a Dense kernel a Linear
weight ``(out, in)``, a BatchNormalization ``weight``, ``bias``, ``running_mean`` and
``running_var`` (``num_batches_tracked`` is skipped), and so on.

The layers with weights, in the model's order, are then aligned with the modules, in
theirs (:mod:`.alignment`): both orders kept, as many layers fitted as possible, a name
that hints at a pair (``fc`` and ``fc``) breaking ties. Kinds never fit one another, so
each kind (convs of one rank, BatchNormalizations, matrices, vectors) is aligned on its
own: a model whose store lists its layers class by class aligns as well as one in graph
order. Where PyTorch and Keras may list layers differently is between parallel branches
(a residual block's shortcut): PyTorch lists the modules in the order the code registers
them, usually the main path first. The model's graph gives the orders a PyTorch module
could use (longest branch first, shortest first) besides Keras's own; the best-scoring
alignment wins, and it must be the only one: two alignments that score alike but map a
layer differently are refused, with the place and the ``--map`` that decides it.

Two things weights alone cannot say are found here too: the rows of the first Dense after
a Flatten, which PyTorch orders C·H·W and Keras H·W·C (:func:`dense_row_orders`), and the
settings whose outputs differ between the frameworks (:func:`mismatches`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConvSurgeonError, UsageError
from ..model.catalogue import ConvClass, canonical_variable_name
from ..model.graph import GraphLayer, ModelGraph, model_graphs
from ..model.naming import format_epsilon, format_shape
from ..model.selection import resolve_layer
from ..model.structure import Layer, ModelStructure
from .alignment import Alignment, align
from .layout import from_torch_code, torch_shape, variable_role
from .targets import TargetVariable, layer_targets

# PyTorch's BatchNorm counts its batches in this buffer; Keras keeps no such thing.
SKIPPED_LEAVES = ("num_batches_tracked",)
# The epsilon PyTorch's BatchNorm*d, LayerNorm and GroupNorm use unless told otherwise.
TORCH_EPSILON = 1e-5
# Layers between a Flatten and its Dense that keep the order of the features.
_KEEP_ORDER = frozenset({"Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise", "Activation", "ReLU",
                         "LeakyReLU", "ELU", "Identity", "ActivityRegularization"})

Shape = tuple[int, ...]
Key = frozenset[tuple[str, Shape]]


@dataclass(frozen=True)
class SourceModule:
    """The tensors of a state dict that share a name up to their last part: one module."""

    name: str  # "features.0"; "" for tensors at the top level
    tensors: tuple[tuple[str, Shape], ...]  # (last part of the name, shape), in the file's order

    def full_name(self, leaf: str) -> str:
        return f"{self.name}.{leaf}" if self.name else leaf

    @property
    def key(self) -> Key:
        return frozenset(self.tensors)

    def describe(self) -> str:
        """``weight (64, 3, 3, 3), bias (64,)``."""
        return ", ".join(f"{leaf} {format_shape(shape)}" for leaf, shape in self.tensors)


def source_modules(tensors: Mapping[str, np.ndarray], ordered: bool) -> tuple[list[SourceModule], list[str]]:
    """The modules of a state dict, in the file's order (in natural order of their names
    when the file keeps none: ``features.2`` before ``features.10``), and the tensors
    skipped (``num_batches_tracked``)."""
    names = list(tensors) if ordered else sorted(tensors, key=natural_key)
    grouped: dict[str, list[tuple[str, Shape]]] = {}
    skipped: list[str] = []
    for name in names:
        module, _, leaf = name.rpartition(".")
        if leaf in SKIPPED_LEAVES:
            skipped.append(name)
            continue
        grouped.setdefault(module, []).append((leaf, tuple(int(d) for d in tensors[name].shape)))
    return [SourceModule(name, tuple(found)) for name, found in grouped.items()], skipped


def natural_key(name: str) -> tuple[Any, ...]:
    """``layer10.conv2`` after ``layer2.conv2``: numbers compared as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


# --- what a layer takes from a module ------------------------------------------------------


@dataclass(frozen=True)
class LayerFit:
    """What a Keras layer takes from a module: the PyTorch name of each of its variables."""

    layer: Layer
    variables: tuple[tuple[TargetVariable, str], ...]  # (the variable, PyTorch's last name part)

    @property
    def key(self) -> Key:
        return frozenset((leaf, _torch_shape(target)) for target, leaf in self.variables)

    def describe(self) -> str:
        return ", ".join(f"{leaf} {format_shape(_torch_shape(target))}" for target, leaf in self.variables)


def _torch_shape(target: TargetVariable) -> Shape:
    shape = torch_shape(target)
    assert shape is not None, "a fitted variable has a PyTorch layout"
    return shape


def layer_fit(layer: Layer) -> LayerFit | str:
    """What ``layer`` takes from a PyTorch module, or why no module can fill it."""
    kind = layer.kind
    if kind is None:
        return f"a {layer.class_name} whose variables conv-surgeon cannot name"
    if isinstance(kind, ConvClass) and kind.kind == "separable":
        return "a SeparableConv is two PyTorch convs (depthwise, then pointwise); port fills one layer from one module"
    found: list[tuple[TargetVariable, str]] = []
    for target in layer_targets(layer):
        if variable_role(target) is None:
            return f"conv-surgeon knows no PyTorch layout for a {layer.class_name}'s {target.name}"
        found.append((target, _torch_leaf(layer, target.name)))
    if len({leaf for _, leaf in found}) != len(found):
        return "two of its variables would take the same PyTorch tensor"
    return LayerFit(layer, tuple(found))


def _torch_leaf(layer: Layer, stored: str) -> str:
    """PyTorch's name for a variable: ``weight`` for a kernel, ``running_var`` for
    ``moving_variance``; a name PyTorch shares (``bias``) as it is."""
    name = canonical_variable_name(stored)
    if isinstance(layer.kind, ConvClass):
        return "weight" if name in ("kernel", "depthwise_kernel") else name
    assert layer.kind is not None
    return next((torch for torch, keras in layer.kind.torch_names.items() if keras == name), name)


def why_not(fit: LayerFit, module: SourceModule) -> str | None:
    """Why ``module`` cannot fill the layer (None when it can), in one phrase."""
    if fit.key == module.key:
        return None
    held = dict(module.tensors)
    wanted = {leaf: _torch_shape(target) for target, leaf in fit.variables}
    missing = [leaf for leaf in wanted if leaf not in held]
    extra = [leaf for leaf in held if leaf not in wanted]
    if missing or extra:
        parts = ([f"has no {', '.join(missing)}"] if missing else []) + \
                ([f"holds {', '.join(extra)} the layer has no variable for"] if extra else [])
        return " and ".join(parts)
    leaf = next(leaf for leaf in wanted if wanted[leaf] != held[leaf])
    return f"its {leaf} is {format_shape(held[leaf])}, the layer needs {format_shape(wanted[leaf])}"


def _partition(key: Key) -> str:
    """The kind of tensors a module (or a layer's PyTorch view) holds: kinds never fit one
    another, so each is aligned on its own."""
    leaves = dict(key)
    if "running_mean" in leaves:
        return "batch_norm"
    weight = leaves.get("weight")
    if weight is None:
        return "other:" + ",".join(sorted(leaves))
    return {1: "vector", 2: "matrix"}.get(len(weight), f"conv{len(weight)}")


# --- --map ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapRule:
    """``--map 'REGEX=>LAYER'``: the source module REGEX names goes into LAYER."""

    text: str
    pattern: re.Pattern[str]
    layer: str


def parse_map(text: str) -> MapRule:
    pattern, arrow, layer = text.rpartition("=>")
    if not arrow or not pattern or not layer.strip():
        raise UsageError(f"--map {text!r}: expected 'REGEX=>LAYER', e.g. --map 'layer1\\.0\\.downsample\\.0=>conv2_0'")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--map {text!r}: '{pattern}' is not a regular expression ({exc})") from None
    return MapRule(text, compiled, layer.strip())


def _mapped_module(rule: MapRule, modules: Sequence[SourceModule], label: str) -> SourceModule:
    """The one module ``rule`` names: its name, or one of its tensors' names, matches the
    whole regular expression."""
    found = [m for m in modules
             if rule.pattern.fullmatch(m.name) or any(rule.pattern.fullmatch(m.full_name(leaf)) for leaf, _ in m.tensors)]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(f"'{m.name}'" for m in found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise ConvSurgeonError(f"{label}: --map {rule.text!r} matches {len(found)} modules ({names}); "
                               "make the expression match one (it must match a whole name)")
    close = difflib.get_close_matches(rule.pattern.pattern.replace("\\", ""), [m.name for m in modules], n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ConvSurgeonError(f"{label}: --map {rule.text!r} matches no module of the state dict; {hint}"
                           "the expression must match a whole module name (features\\.0) or tensor name")


# --- the model's orders -----------------------------------------------------------------------


def layer_orders(structure: ModelStructure, config: dict[str, Any] | None) -> list[tuple[str, list[Layer]]]:
    """The orders a PyTorch module could list the model's layers with weights in: its
    graph walked depth first with the longest parallel branch first, then the shortest
    first (ties the other way round), then Keras's own order. Without a graph in the
    config (a subclassed model, a keras-hub backbone) Keras's order alone."""
    layers = [layer for layer in structure.layers if layer.variables]
    orders: list[tuple[str, list[Layer]]] = []
    graphs = {graph.path: graph for graph in model_graphs(config)} if config is not None else {}
    if graphs and graphs[""].layers:
        for name, longest in (("branches longest first", True), ("branches shortest first", False)):
            paths = list(_walk(graphs, graphs[""], longest, layers))
            order = _in_order(layers, paths)
            if all(order != other for _, other in orders):
                orders.append((name, order))
    if all(layers != other for _, other in orders):
        orders.append(("Keras's order", layers))
    return orders


def _in_order(layers: list[Layer], paths: list[str]) -> list[Layer]:
    """``layers`` in the order of ``paths`` (each path: its layer, then its sub-layers), the
    rest after them in their own order."""
    placed: list[Layer] = []
    seen: set[int] = set()
    for path in paths:
        for layer in layers:
            if id(layer) not in seen and (layer.path == path or layer.path.startswith(path + "/")):
                placed.append(layer)
                seen.add(id(layer))
    return placed + [layer for layer in layers if id(layer) not in seen]


def _walk(graphs: dict[str, ModelGraph], graph: ModelGraph, longest: bool, layers: list[Layer]) -> Iterator[str]:
    """The layer paths of ``graph`` in a depth-first topological order, nested models in
    place: at a fork the branch with the most layers with weights of its own first
    (``longest``), or the fewest; a layer is reached once every layer it consumes is."""
    names = [layer.name for layer in graph.layers]
    index = {name: i for i, name in enumerate(names)}
    producers = [sorted({index[ref.layer] for ref in (layer.calls[0] if layer.calls else ())
                         if ref.layer in index and ref.layer != layer.name}) for layer in graph.layers]
    consumers: list[list[int]] = [[] for _ in names]
    for i, found in enumerate(producers):
        for p in found:
            consumers[p].append(i)
    weights = [sum(1 for layer in layers if layer.path == graph.layer_path(name)
                   or layer.path.startswith(graph.layer_path(name) + "/")) for name in names]
    below = _descendants(consumers, producers)
    sign = -1 if longest else 1  # the most weights first, ties in config order; or the reverse

    def priority(siblings: list[int]) -> list[int]:
        def own_weights(c: int) -> int:
            others = 0
            for s in siblings:
                if s != c:
                    others |= below[s]
            mask = below[c] & ~others
            return sum(weights[i] for i in _bits(mask))
        # Ties: config order when longest first, the reverse when shortest first, so that
        # two branches alike are tried both ways round.
        return sorted(siblings, key=lambda c: (sign * own_weights(c), -sign * c))

    waiting = [len(found) for found in producers]
    stack = list(reversed(priority([i for i, found in enumerate(producers) if not found])))
    done: set[int] = set()
    while stack:
        node = stack.pop()
        if node in done:
            continue
        done.add(node)
        yield from _expand(graphs, graph, graph.layers[node], longest, layers)
        ready = []
        for c in consumers[node]:
            waiting[c] -= 1
            if waiting[c] == 0:
                ready.append(c)
        stack.extend(reversed(priority(ready)))
    for i, layer in enumerate(graph.layers):  # a cycle Keras would refuse: in config order
        if i not in done:
            yield from _expand(graphs, graph, layer, longest, layers)


def _expand(graphs: dict[str, ModelGraph], graph: ModelGraph, layer: GraphLayer, longest: bool,
            layers: list[Layer]) -> Iterator[str]:
    path = graph.layer_path(layer.name)
    nested = graphs.get(path)
    if layer.is_model and nested is not None:
        yield from _walk(graphs, nested, longest, layers)
    else:
        yield path


def _descendants(consumers: list[list[int]], producers: list[list[int]]) -> list[int]:
    """Each node's bit set of itself and every node downstream of it."""
    count = len(consumers)
    below = [1 << i for i in range(count)]
    order: list[int] = []
    waiting = [len(p) for p in producers]
    ready = [i for i in range(count) if not waiting[i]]
    while ready:
        node = ready.pop()
        order.append(node)
        for c in consumers[node]:
            waiting[c] -= 1
            if waiting[c] == 0:
                ready.append(c)
    for node in reversed(order):
        for c in consumers[node]:
            below[node] |= below[c]
    return below


def _bits(mask: int) -> Iterator[int]:
    i = 0
    while mask:
        if mask & 1:
            yield i
        mask >>= 1
        i += 1


# --- the mapping -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MappedLayer:
    """A layer filled from a module: each variable with the full name of its tensor."""

    layer: Layer
    module: SourceModule
    variables: tuple[tuple[TargetVariable, str], ...]
    forced: bool = False  # by --map


@dataclass(frozen=True)
class LeftLayer:
    layer: Layer
    reason: str | None  # why no module can fill it (None: none of the modules left fits it)


@dataclass(frozen=True)
class StateMapping:
    """Where every tensor goes: the layers filled (in the model's order), and what is left."""

    mapped: tuple[MappedLayer, ...]
    left_modules: tuple[SourceModule, ...]
    left_layers: tuple[LeftLayer, ...]
    order: str  # the order of the model's layers the alignment used


@dataclass(frozen=True)
class _Candidate:
    order: str
    layers: list[Layer]
    alignments: list[tuple[list[LayerFit], list[SourceModule], Alignment]]

    @property
    def score(self) -> int:
        return sum(a.score for _, _, a in self.alignments)

    @property
    def unique(self) -> bool:
        return all(a.unique for _, _, a in self.alignments)

    def pairs(self) -> dict[str, SourceModule]:
        return {fits[i].layer.path: modules[j] for fits, modules, a in self.alignments for i, j in a.pairs}


def map_state(structure: ModelStructure, config: dict[str, Any] | None, modules: Sequence[SourceModule],
              rules: Sequence[MapRule], label: str) -> StateMapping:
    """Map the modules onto the model's layers: first those ``rules`` name, then the rest by
    alignment. Raises a ConvSurgeonError that names the place (and the ``--map`` that decides
    it) when the best alignment is not the only one."""
    fits: dict[str, LayerFit | str] = {layer.path: layer_fit(layer) for layer in structure.layers if layer.variables}
    forced = _forced(structure, modules, rules, fits, label)
    taken_layers = {m.layer.path for m in forced}
    taken_modules = {m.module.name for m in forced}
    free_modules = [m for m in modules if m.name not in taken_modules]
    candidates = []
    for order, layers in layer_orders(structure, config):
        free = [fit for layer in layers if layer.path not in taken_layers
                for fit in (fits[layer.path],) if isinstance(fit, LayerFit)]
        candidates.append(_Candidate(order, layers, _aligned(free, free_modules)))
    best = _chosen(candidates, label)
    pairs = best.pairs()
    mapped = {m.layer.path: m for m in forced}
    for layer in best.layers:
        module = pairs.get(layer.path)
        fit = fits[layer.path]
        if module is not None and isinstance(fit, LayerFit):
            mapped[layer.path] = MappedLayer(layer, module, tuple((t, module.full_name(leaf)) for t, leaf in fit.variables))
    used = {m.module.name for m in mapped.values()}
    ordered = [mapped[layer.path] for layer in best.layers if layer.path in mapped]
    left_layers = tuple(LeftLayer(layer, fit if isinstance(fit, str) else None)
                        for layer in best.layers if layer.path not in mapped
                        for fit in (fits[layer.path],))
    return StateMapping(tuple(ordered), tuple(m for m in modules if m.name not in used), left_layers, best.order)


def _forced(structure: ModelStructure, modules: Sequence[SourceModule], rules: Sequence[MapRule],
            fits: Mapping[str, LayerFit | str], label: str) -> list[MappedLayer]:
    forced: list[MappedLayer] = []
    for rule in rules:
        layer = resolve_layer(structure, rule.layer, label)
        module = _mapped_module(rule, modules, label)
        fit = fits.get(layer.path, "it holds no weights")
        if isinstance(fit, str):
            raise ConvSurgeonError(f"{label}: --map {rule.text!r}: layer '{layer.path}' cannot be ported: {fit}")
        problem = why_not(fit, module)
        if problem is not None:
            raise ConvSurgeonError(
                f"{label}: --map {rule.text!r}: module '{module.name}' ({module.describe()}) does not fit layer "
                f"'{layer.path}' ({layer.class_name}, which takes {fit.describe()}): {problem}")
        for other in forced:
            if other.layer.path == layer.path or other.module.name == module.name:
                raise ConvSurgeonError(f"{label}: --map {rule.text!r} maps again what another --map maps "
                                       f"('{other.module.name}' => '{other.layer.path}'); give each pair once")
        forced.append(MappedLayer(layer, module, tuple((t, module.full_name(leaf)) for t, leaf in fit.variables),
                                  forced=True))
    return forced


def _aligned(fits: list[LayerFit], modules: list[SourceModule]) -> list[tuple[list[LayerFit], list[SourceModule], Alignment]]:
    """Each kind of layer aligned with the modules of that kind."""
    kinds: dict[str, tuple[list[LayerFit], list[SourceModule]]] = {}
    for fit in fits:
        kinds.setdefault(_partition(fit.key), ([], []))[0].append(fit)
    for module in modules:
        kinds.setdefault(_partition(module.key), ([], []))[1].append(module)
    found = []
    for left, right in kinds.values():
        # Pairs first (each outweighs every name hint together), then names.
        pair = len(left) + 1
        keys = [fit.key for fit in left]
        module_keys = [m.key for m in right]

        def score(i: int, j: int, left: list[LayerFit] = left, right: list[SourceModule] = right,
                  keys: list[Key] = keys, module_keys: list[Key] = module_keys, pair: int = pair) -> int | None:
            if keys[i] != module_keys[j]:
                return None
            return pair + _hint(left[i].layer, right[j])

        found.append((left, right, align(len(left), len(right), score)))
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _hint(layer: Layer, module: SourceModule) -> int:
    """1 when the module's name hints at the layer (``fc`` and ``fc``; ``head.fc`` and
    ``head_fc``; ``layer1.0.conv1`` and ``conv1``)."""
    name = _normalized(module.name)
    if not name:
        return 0
    own = _normalized(layer.name)
    return int(name in (_normalized(layer.path), own) or name.endswith("_" + own))


def _chosen(candidates: list[_Candidate], label: str) -> _Candidate:
    """The best-scoring alignment, when it is the only one."""
    top = max(c.score for c in candidates)
    best = [c for c in candidates if c.score == top]
    for candidate in best:
        if not candidate.unique:
            raise ConvSurgeonError(_ambiguity(candidate, label))
    first = best[0]
    for other in best[1:]:
        differs = _first_difference(first, other)
        if differs is not None:
            raise ConvSurgeonError(_ambiguous(label, *differs))
    return first


def _ambiguous(label: str, what: str, fix: str) -> str:
    return (f"{label}: the mapping is ambiguous: {what}; nothing was written; say which with {fix} (repeatable; "
            "run with --dry-run to see the mapping)")


def _first_difference(one: _Candidate, other: _Candidate) -> tuple[str, str] | None:
    """Where two alignments differ: what to say, and a --map that decides it."""
    mine, theirs = one.pairs(), other.pairs()
    for layer in one.layers:
        a, b = mine.get(layer.path), theirs.get(layer.path)
        if a != b:
            said = [f"'{m.name}' ({c.order})" if m is not None else f"no module ({c.order})"
                    for m, c in ((a, one), (b, other))]
            module = a or b
            assert module is not None
            return (f"layer '{layer.path}' takes {said[0]} or {said[1]}, and the model's graph cannot tell in which "
                    "order PyTorch lists the parallel branches", f"--map '{re.escape(module.name)}=>{layer.path}'")
    return None


def _ambiguity(candidate: _Candidate, label: str) -> str:
    for fits, modules, alignment in candidate.alignments:
        found = alignment.first_ambiguity()
        if found is None:
            continue
        side, index, options = found
        if side == "left":
            layer = fits[index].layer
            choices = [f"'{modules[j].name}'" for j in options if j is not None]
            left_out = " or none of them" if None in options else ""
            example = next(modules[j] for j in options if j is not None)
            what = (f"layer '{layer.path}' ({layer.class_name}, taking {fits[index].describe()}) fits "
                    f"{' and '.join(choices)}{left_out} alike")
            fix = f"--map '{re.escape(example.name)}=>{layer.path}'"
        else:
            module = modules[index]
            choices = [f"'{fits[i].layer.path}'" for i in options if i is not None]
            left_out = " or none of them" if None in options else ""
            example_layer = next(fits[i].layer for i in options if i is not None)
            what = f"module '{module.name}' ({module.describe()}) fits layers {' and '.join(choices)}{left_out} alike"
            fix = f"--map '{re.escape(module.name)}=>{example_layer.path}'"
        return _ambiguous(label, what, fix)
    raise AssertionError("an alignment that is not unique has an item with two options")


# --- Flatten -> Dense ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RowOrder:
    """The rows of a Dense after a Flatten, in Keras's order of PyTorch's input features:
    Keras row ``r`` takes PyTorch's feature ``permutation[r]``."""

    flatten: str  # the Flatten's layer path
    shape: Shape  # what it flattens, without the batch axis, as Keras holds it
    torch_order: str  # the axes in the order PyTorch flattens them: "C·H·W"
    keras_order: str  # and Keras: "H·W·C"
    permutation: np.ndarray

    @property
    def text(self) -> str:
        return (f"rows {self.torch_order} -> {self.keras_order} ({'x'.join(str(d) for d in self.shape)} "
                f"from '{self.flatten}')")


def dense_row_orders(config: dict[str, Any] | None) -> dict[str, RowOrder | str]:
    """For each Dense whose input is a Flatten of a (H, W, C) tensor (through layers that
    keep the features' order), its rows in Keras's order; a string where the config does
    not say enough to tell them (the Flatten's input shape). A Flatten of a channels_first
    tensor keeps PyTorch's order: no entry."""
    found: dict[str, RowOrder | str] = {}
    for graph in model_graphs(config) if config is not None else []:
        for layer in graph.layers:
            if layer.class_name != "Dense":
                continue
            source = graph.producer(layer)
            while source is not None and source.class_name in _KEEP_ORDER:
                source = graph.producer(source)
            if source is None or not _flattens(source):
                continue
            path = graph.layer_path(layer.name)
            order = _row_order(graph, source)
            if order is not None:
                found[path] = order
    return found


def _flattens(layer: GraphLayer) -> bool:
    if layer.class_name == "Flatten":
        return True
    target = layer.config.get("target_shape")
    return layer.class_name == "Reshape" and isinstance(target, list) and len(target) == 1


def _row_order(graph: ModelGraph, flatten: GraphLayer) -> RowOrder | str | None:
    path = graph.layer_path(flatten.name)
    refs = flatten.calls[0] if flatten.calls else ()
    shape = graph.shapes.get(refs[0]) if len(refs) == 1 else None
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        return (f"the config does not record the shape '{path}' flattens, so the rows of the Dense after it cannot "
                "be put in Keras's order; re-save the model with Keras 3 (it records every shape)")
    dims = tuple(int(d) for d in shape[1:])
    if len(dims) < 2:
        return None
    channels_first = _data_format(graph, flatten) == "channels_first"
    channels = dims[0] if channels_first else dims[-1]
    spatial = dims[1:] if channels_first else dims[:-1]
    letters = list("DHW"[3 - len(spatial):]) if len(spatial) <= 3 else [f"S{i}" for i in range(len(spatial))]
    # PyTorch's feature number of every element, laid out as Keras holds the tensor.
    keras = np.arange(math.prod(dims)).reshape((channels, *spatial))
    axes = ["C", *letters]
    if not channels_first:
        keras, axes = np.moveaxis(keras, 0, -1), axes[1:] + axes[:1]
    if flatten.class_name == "Flatten" and flatten.config.get("data_format") == "channels_first":
        keras, axes = np.moveaxis(keras, 0, -1), axes[1:] + axes[:1]  # Keras's Flatten moves axis 1 last first
    permutation = keras.reshape(-1)
    if np.array_equal(permutation, np.arange(permutation.size)):
        return None
    return RowOrder(path, dims, "·".join(["C", *letters]), "·".join(axes), permutation)


def _data_format(graph: ModelGraph, layer: GraphLayer) -> str:
    """The data format of the tensor ``layer`` consumes: that of the nearest layer upstream
    that says (a conv, a pooling); channels_last when none does."""
    source = graph.producer(layer)
    while source is not None:
        value = source.config.get("data_format")
        if isinstance(value, str):
            return value
        source = graph.producer(source)
    return "channels_last"


# --- what weights alone cannot make equal ------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """A setting of a ported layer with which Keras computes otherwise than PyTorch does."""

    layer: str
    problem: str
    fix: str


def mismatches(config: dict[str, Any] | None, mapped: Sequence[MappedLayer]) -> list[Mismatch]:
    """Every ported layer whose outputs will differ from PyTorch's for a reason the weights
    cannot fix: a strided conv with 'same' padding or behind an uneven ZeroPadding (Keras
    pads the bottom and right more, PyTorch both sides alike), and a LayerNormalization or
    GroupNormalization whose epsilon is not PyTorch's default."""
    ported = {m.layer.path for m in mapped}
    found: list[Mismatch] = []
    graphs = model_graphs(config) if config is not None else []
    for graph in graphs:
        for layer in graph.layers:
            path = graph.layer_path(layer.name)
            if path not in ported:
                continue
            problem = _padding_problem(graph, layer)
            if problem is not None:
                found.append(Mismatch(path, *problem))
    for item in mapped:
        ported_layer = item.layer
        family = ported_layer.kind.family if ported_layer.kind is not None else None
        epsilon = ported_layer.config.get("epsilon")
        if family == "normalization" and isinstance(epsilon, (int, float)) and epsilon != TORCH_EPSILON:
            torch_name = "GroupNorm" if ported_layer.class_name == "GroupNormalization" else "LayerNorm"
            found.append(Mismatch(ported_layer.path, f"epsilon {format_epsilon(epsilon)}, PyTorch's {torch_name} uses "
                                  f"{format_epsilon(TORCH_EPSILON)} by default: outputs differ slightly",
                                  f"build it with epsilon={format_epsilon(TORCH_EPSILON)} (if the source used the default)"))
    return found


def _padding_problem(graph: ModelGraph, layer: GraphLayer) -> tuple[str, str] | None:
    config = layer.config
    conv = layer.class_name
    if not conv.startswith(("Conv", "DepthwiseConv", "SeparableConv")) or "Transpose" in conv:
        return None
    rank = len(_sizes(config.get("kernel_size"), 1))
    kernel = _sizes(config.get("kernel_size"), rank)
    strides = _sizes(config.get("strides", 1), rank)
    dilation = _sizes(config.get("dilation_rate", 1), rank)
    if not any(s > 1 for s in strides):
        return None
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    name = f"{conv}(strides={_one(strides)})"
    if config.get("padding") == "same" and any(r > 1 for r in reach):
        pad = _one([r // 2 for r in reach])
        return (f"{name} with padding 'same': where a size is even Keras pads the bottom/right one more than the "
                "top/left, PyTorch pads both sides alike: outputs differ at the borders",
                f"to compute as PyTorch's padding={pad}: ZeroPadding{rank}D({pad}) before it and padding='valid'")
    producer = graph.producer(layer)
    if producer is not None and producer.class_name.startswith("ZeroPadding"):
        pads = _pads(producer.config.get("padding"), rank)
        if pads is not None and any(before != after for before, after in pads):
            even = [max(p) for p in pads]
            return (f"{name} after {producer.class_name} '{graph.layer_path(producer.name)}' padding "
                    f"{tuple(tuple(p) for p in pads)}: PyTorch pads both sides alike: outputs differ at the borders",
                    f"to compute as PyTorch's padding={_one(even)}: pad {_one(even)} on every side")
    return None


def _sizes(value: Any, rank: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value or 1)] * max(rank, 1)


def _one(values: Sequence[int]) -> int | tuple[int, ...]:
    return values[0] if len(set(values)) == 1 else tuple(values)


def _pads(value: Any, rank: int) -> list[tuple[int, int]] | None:
    """A ZeroPadding's padding as (before, after) per spatial axis."""
    if isinstance(value, int):
        return [(value, value)] * rank
    if isinstance(value, list) and len(value) == rank:
        pads = []
        for item in value:
            if isinstance(item, int):
                pads.append((item, item))
            elif isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item):
                pads.append((item[0], item[1]))
            else:
                return None
        return pads
    return None


# --- transforms ----------------------------------------------------------------------------------


def transform_text(target: TargetVariable, rows: RowOrder | None = None) -> str:
    """How a PyTorch tensor ``a`` becomes the variable, for the mapping table."""
    code = from_torch_code(target)
    text = "as is" if code is None else code.replace("np.", "")
    if rows is not None:
        text = f"{text}, {rows.text}"
    return text


def in_keras_rows(weight: np.ndarray, rows: RowOrder) -> np.ndarray:
    """A Linear weight ``(out, in)`` with its input features in Keras's order: still in
    PyTorch's layout, so that the usual transposition then makes the Dense kernel."""
    return np.ascontiguousarray(weight[:, rows.permutation])

