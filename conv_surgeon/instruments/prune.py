"""``prune``: remove convolution filters, and fix up everything downstream.

The groups (:mod:`..model.channels`), the channels chosen, the sliced variables, the new
config and the new weight store all come from the file; kernels are scored and sliced
inside bounded workers, so they never cross a pipe. Keras only loads the result to
compare its outputs with the original's (``--compare``, on by default; ``--zeros``
expects them equal), which ``--no-smoke`` skips.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import (ConvSurgeonError, LayerNotFoundError, ModelFileError,
                      UsageError)
from ..model.catalogue import conv_class
from ..model.graph import TensorRef, container_keys, model_graphs
from ..model.structure import Layer, ModelStructure, Variable, read_structure
from ..runtime.checks import FUNCTION_KEPT
from ..store.hdf5 import damaged_store_is_an_error, read_dataset
from ..store.model_file import ModelFile, open_store
from ..store.provenance import EditRecord, PruneSource
from ..store.worker import PARSE_TIMEOUT_S, run_bounded
from ..surgery.channels import ChannelGroup, find_groups
from ..surgery.cuts import (AxisCuts, Cut, VariableKey, check_cuts,
                            conv_output_shape, pruned_config, sliced,
                            sliced_shape, spatial_positions, variable_cuts)
from ..surgery.optimizer import (SlotChanges, read_optimizer_shapes,
                                 slot_changes, structure_variables)
from ..surgery.rewrite import (Derived, StoreRewrite, VarOrigin,
                               rewrite_weights, write_keras_archive)
from ..surgery.stored_graph import (check_store_places, format_name,
                                    layer_variable, read_config, store_layer)
from ..transaction.transaction import (Rewriting, WriteOptions,
                                       check_destination, one_writer,
                                       write_transaction)
from .writing import CheckDefaults, WriteReport

Criterion = Literal["filters", "smallest-l1", "zeros"]


@dataclass(frozen=True)
class PrunedGroup:
    members: tuple[str, ...]  # layer paths of the convs whose filters are the group's channels
    channels: int  # before
    removed: tuple[int, ...]


@dataclass(frozen=True)
class NotPruned:
    members: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class ChangedVariable:
    name: str
    before: tuple[int, ...]
    after: tuple[int, ...]
    removed: tuple[tuple[int, tuple[int, ...]], ...]  # (axis, indices) of each axis cut


@dataclass(frozen=True)
class ChangedLayer:
    path: str
    class_name: str
    variables: tuple[ChangedVariable, ...]
    # A squeeze-and-excite Reshape changes no variable, only its target_shape: before, after.
    target_shape: tuple[tuple[int, ...], tuple[int, ...]] | None = None


@dataclass(frozen=True, kw_only=True)
class PruneReport(WriteReport):
    """The filters `prune` removed, every layer it changed, what it left and why, and the write."""

    criterion: Criterion
    groups: tuple[PrunedGroup, ...]
    not_pruned: tuple[NotPruned, ...]
    layers: tuple[ChangedLayer, ...]
    parameters_before: int
    parameters_after: int
    macs_before: int
    macs_after: int

    @property
    def changed(self) -> bool:
        return bool(self.groups)


@dataclass(frozen=True)
class PruneRequest:
    """What to prune: the groups of ``layers`` (or ``every`` group), and which channels."""

    layers: tuple[str, ...] = ()
    every: bool = False
    filters: tuple[int, ...] | None = None
    smallest_l1: str | None = None  # "25%" or a count
    zeros: bool = False

    @property
    def criterion(self) -> Criterion:
        return "filters" if self.filters is not None else "zeros" if self.zeros else "smallest-l1"

    @property
    def checks(self) -> CheckDefaults:
        """The original always runs beside the pruned model and the report holds how their
        outputs differ. Removing only all-zero filters (--zeros) keeps the function: the
        outputs must then agree but for float32 rounding."""
        return CheckDefaults(compare=True, expect_same=FUNCTION_KEPT if self.zeros else None)


@one_writer
def prune(source: ModelFile, request: PruneRequest, options: WriteOptions,
          step: Callable[[str], None] | None = None) -> PruneReport:
    """Prune ``source`` as ``request`` says and write it as ``options`` say."""
    _check_request(request)
    surgery = _prepare(source, request, options)
    if not surgery.cuts or options.dry_run:
        return surgery.report
    return _write(source, surgery, request, options, step)


def _check_request(request: PruneRequest) -> None:
    chosen = [request.filters is not None, request.smallest_l1 is not None, request.zeros]
    if sum(chosen) != 1:
        raise UsageError("say which filters go: --filters I,J,..., --smallest-l1 N or N%, or --zeros (one of them)")
    if request.every and request.layers:
        raise UsageError("give --layer or --all, not both")
    if request.filters is not None and len(request.layers) != 1:
        raise UsageError("--filters takes the indices of one layer's filters: give exactly one --layer")
    if request.smallest_l1 is not None and not (request.layers or request.every):
        raise UsageError("--smallest-l1 needs --layer L or --all")
    if request.filters is not None and not request.filters:
        raise UsageError("--filters: give at least one filter index")


@dataclass(frozen=True)
class _Surgery:
    structure: ModelStructure
    config: dict[str, Any]
    new_config: dict[str, Any]
    by_path: dict[str, Layer]
    cuts: list[Cut]
    variables: dict[VariableKey, AxisCuts]
    optimizer: SlotChanges | None
    report: PruneReport


def _prepare(source: ModelFile, request: PruneRequest, options: WriteOptions) -> _Surgery:
    label = source.label
    structure = read_structure(source)
    if structure.format != "keras":
        raise ConvSurgeonError(
            f"{label}: prune rewrites .keras archives, not a {format_name(structure)}; load it in "
            "Keras and save it as .keras first")
    check_destination(source, structure, options)
    config, _ = read_config(source, "prune")
    by_path = {layer.path: layer for layer in structure.layers}
    check_store_places(config, by_path, label, "prune")
    groups = find_groups(config)
    chosen, not_pruned = _chosen_groups(groups, request, label)
    _check_filters(chosen, by_path, label)
    statistics = _statistics(source, chosen, by_path, request.criterion)
    cuts: list[Cut] = []
    notes: list[str] = []
    for group in chosen:
        channels = _channels(group, request, statistics, label)
        if isinstance(channels, str):
            not_pruned.append(NotPruned(group.members, channels))
        elif channels:
            cuts.append(Cut(group, channels))
    variables = variable_cuts(cuts)
    new_config = pruned_config(config, cuts) if cuts else config
    changed = _changed_layers(config, new_config, variables, by_path, label)
    before = sum(layer.parameters for layer in structure.layers)
    after = before - sum(_size(v.before) - _size(v.after) for layer in changed for v in layer.variables)
    macs_before, macs_after, unknown = _macs(config, by_path, variables)
    if unknown:
        notes.append(f"MACs leave out {unknown} layers whose output size the config does not record")
    report = PruneReport(
        source=label, destination=None, dry_run=options.dry_run, criterion=request.criterion,
        groups=tuple(PrunedGroup(c.group.members, c.group.channels, c.channels) for c in cuts),
        not_pruned=tuple(not_pruned), layers=tuple(changed), parameters_before=before, parameters_after=after,
        macs_before=macs_before, macs_after=macs_after, notes=tuple(notes))
    if not cuts:
        report = replace(report, notes=report.notes + ("nothing to prune: no filter was chosen; nothing was written",))
        return _Surgery(structure, config, config, by_path, [], {}, None, report)
    _check_store_keys(config, new_config, label)
    optimizer = _optimizer(structure, config, new_config, by_path, variables, source)
    report = replace(report, optimizer=optimizer.note if optimizer is not None else None)
    return _Surgery(structure, config, new_config, by_path, cuts, variables, optimizer, report)


def _check_filters(groups: list[ChannelGroup], by_path: dict[str, Layer], label: str) -> None:
    """Each member's kernel holds as many filters as its config says (the group's
    channels): scores and cuts are counted by the config and taken from the store."""
    for group in groups:
        for piece in group.slices:
            if piece.layer not in group.members or piece.variable == "bias":
                continue
            variable = layer_variable(store_layer(by_path, piece.layer, label), piece.variable)
            if variable is None:
                continue
            shape = variable.shape
            held = shape[piece.axis] if -len(shape) <= piece.axis < len(shape) else None
            if held != group.channels:
                raise ModelFileError(
                    f"{label}: layer '{piece.layer}' has {group.channels} filters by its config, but its "
                    f"{piece.variable} {shape} holds {held if held is not None else 'none'}; the config does not "
                    "match the weight store, re-save the model with Keras")


def _chosen_groups(groups: list[ChannelGroup], request: PruneRequest,
                   label: str) -> tuple[list[ChannelGroup], list[NotPruned]]:
    """The groups asked for; with --all (or --zeros alone) every group, the refused ones reported."""
    if not request.layers:
        return ([g for g in groups if g.prunable],
                [NotPruned(g.members, g.problems[0]) for g in groups if not g.prunable])
    chosen: list[ChannelGroup] = []
    for query in request.layers:
        group = _group_of(groups, query, label)
        if not group.prunable:
            raise ConvSurgeonError(f"{label}: --layer {query}: {_members(group)} cannot be pruned: "
                                   f"{group.problems[0]}")
        if group not in chosen:
            chosen.append(group)
    return chosen, []


def _group_of(groups: list[ChannelGroup], query: str, label: str) -> ChannelGroup:
    found = [g for g in groups for m in g.members if query in (m, m.rpartition("/")[2])]
    if len({id(g) for g in found}) > 1:
        raise LayerNotFoundError(f"{label}: --layer {query} names layers of several models; give the layer's path")
    if found:
        return found[0]
    for group in groups:
        for piece in group.slices:
            if query in (piece.layer, piece.layer.rpartition("/")[2]) and conv_class(piece.class_name):
                cls = conv_class(piece.class_name)
                if cls is not None and cls.kind == "depthwise":
                    raise ConvSurgeonError(
                        f"{label}: --layer {query}: a DepthwiseConv's channels follow its input's; prune "
                        f"the conv that feeds it ({group.members[0]})")
    raise LayerNotFoundError(f"{label}: --layer {query}: no convolution of that name has filters to prune; "
                             "run `conv-surgeon inspect MODEL` to list the layers")


def _members(group: ChannelGroup) -> str:
    if len(group.members) == 1:
        return f"'{group.members[0]}'"
    shown = ", ".join(f"'{m}'" for m in group.members[:4])
    more = f" and {len(group.members) - 4} more" if len(group.members) > 4 else ""
    return f"the group {shown}{more} (their channels meet in an Add/Multiply)"


# --- which channels go ------------------------------------------------------------------


def _statistics(source: ModelFile, groups: list[ChannelGroup], by_path: dict[str, Layer],
                criterion: Criterion) -> dict[str, np.ndarray]:
    """What choosing needs, computed in a bounded worker from the store: per member, the L1
    norm and the largest |value| of each filter (rows 0 and 1), and for --zeros the
    vectors (``layer:variable``) that decide whether a channel stays zero along its path."""
    if criterion == "filters":
        return {}
    kernels: list[tuple[str, Variable, int]] = []
    vectors: list[tuple[str, Variable]] = []
    for group in groups:
        for piece in group.slices:
            variable = layer_variable(store_layer(by_path, piece.layer, source.label), piece.variable)
            if variable is None:
                continue
            if piece.layer in group.members and piece.variable != "bias":
                kernels.append((piece.layer, variable, piece.axis))
            elif criterion == "zeros" and piece.variable in ZERO_VECTORS:
                vectors.append((f"{piece.layer}:{piece.variable}", variable))

    def work() -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with damaged_store_is_an_error(source.label), open_store(source) as store:
            for path, variable, axis in kernels:
                value = np.abs(read_dataset(store.dataset(variable.file, variable.dataset)).astype(np.float64))
                rows = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
                found[path] = np.stack([rows.sum(axis=1), rows.max(axis=1, initial=0.0)])
            for key, variable in vectors:
                found[key] = read_dataset(store.dataset(variable.file, variable.dataset)).astype(np.float64)
        return found

    return run_bounded(work, PARSE_TIMEOUT_S, source.label, source.size())


# The vectors that decide whether a zero filter's channel stays zero: biases on the path,
# and each BatchNormalization's shift.
ZERO_VECTORS = ("bias", "beta", "moving_mean", "gamma")
_COUNT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*")


def _channels(group: ChannelGroup, request: PruneRequest, statistics: dict[str, np.ndarray],
              label: str) -> tuple[int, ...] | str:
    """The group's channels to remove, or why none can be (a reason, with --all)."""
    size = group.channels
    name = _members(group)
    if request.filters is not None:
        bad = [i for i in request.filters if not 0 <= i < size]
        if bad:
            raise ConvSurgeonError(f"{label}: --filters {bad[0]}: out of range, {name} has {size} filters (0..{size - 1})")
        chosen = tuple(sorted(set(request.filters)))
    elif request.zeros:
        chosen = _zero_channels(group, statistics)
    else:
        assert request.smallest_l1 is not None
        count = _count(request.smallest_l1, size)
        scores = sum((statistics[m][0] for m in group.members), np.zeros(size))
        chosen = tuple(sorted(int(i) for i in np.argsort(scores, kind="stable")[:count]))
    if len(chosen) >= size:
        reason = f"that would remove every filter of {name} ({size}); keep at least one"
        if request.layers:
            raise ConvSurgeonError(f"{label}: {reason}")
        return reason
    return chosen


def _count(text: str, size: int) -> int:
    match = _COUNT.fullmatch(text)
    if match is None:
        raise UsageError(f"--smallest-l1 {text!r}: expected a count (3) or a percentage (25%)")
    number, percent = float(match.group(1)), bool(match.group(2))
    if percent:
        if number >= 100:
            raise UsageError(f"--smallest-l1 {text}: give a percentage below 100% (removing every filter is refused)")
        return int(math.floor(size * number / 100))
    if not number.is_integer():
        raise UsageError(f"--smallest-l1 {text!r}: a count is a whole number; add % for a percentage")
    return int(number)


def _zero_channels(group: ChannelGroup, statistics: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Channels whose every member filter and bias is zero and which stay zero along the
    path: every other bias there zero (a DepthwiseConv's), and every BatchNormalization's
    shift zero there (beta zero, and moving mean or gamma zero)."""
    zero = np.ones(group.channels, dtype=bool)
    for member in group.members:
        zero &= statistics[member][1] == 0

    def vector(layer: str, name: str) -> np.ndarray | None:
        return statistics.get(f"{layer}:{name}")

    for piece in group.slices:
        if piece.variable not in ("bias", "moving_mean"):
            continue
        if piece.variable == "bias":
            nonzero = vector(piece.layer, "bias")
        else:  # a BatchNormalization: its shift beta - mean * gamma / sqrt(var + eps)
            mean = vector(piece.layer, "moving_mean")
            beta, gamma = vector(piece.layer, "beta"), vector(piece.layer, "gamma")
            assert mean is not None
            scaled = mean if gamma is None else mean * gamma
            nonzero = np.abs(scaled) + (0 if beta is None else np.abs(beta))
        if nonzero is None:
            continue
        for g in np.flatnonzero(zero):
            if np.any(nonzero[piece.span.indices([int(g)])] != 0):
                zero[g] = False
    return tuple(int(g) for g in np.flatnonzero(zero))


# --- what changes -------------------------------------------------------------------------


def _changed_layers(config: dict[str, Any], new_config: dict[str, Any], variables: dict[VariableKey, AxisCuts],
                    by_path: dict[str, Layer], label: str) -> list[ChangedLayer]:
    """Every layer whose variables (or Reshape target) the cuts change, in store order."""
    changed: list[ChangedLayer] = []
    for layer in by_path.values():
        found = []
        for variable in layer.variables:
            axes = variables.get((layer.path, variable.name))
            if axes is None:
                continue
            problem = check_cuts(variable.shape, axes, f"layer '{layer.path}' {variable.name}")
            if problem is not None:
                raise ModelFileError(f"{label}: {problem}; the store does not match the config")
            found.append(ChangedVariable(variable.name, variable.shape, sliced_shape(variable.shape, axes),
                                         tuple(sorted(axes.items()))))
        if found:
            changed.append(ChangedLayer(layer.path, layer.class_name, tuple(found)))
    missing = {layer for layer, _ in variables} - set(by_path)
    if missing:
        raise ModelFileError(f"{label}: layer '{sorted(missing)[0]}' of the config has no weights in the store")
    for path, (before, after) in _reshapes(config, new_config).items():
        changed.append(ChangedLayer(path, "Reshape", (), (before, after)))
    return changed


def _reshapes(config: dict[str, Any], new_config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each Reshape whose target_shape the rewrite changed: (before, after)."""
    new = {g.path: g for g in model_graphs(new_config)}
    found = {}
    for graph in model_graphs(config):
        for layer in graph.layers:
            if layer.class_name != "Reshape":
                continue
            before = tuple(layer.config.get("target_shape") or ())
            after = tuple(new[graph.path].layer(layer.name).config.get("target_shape") or ())
            if before != after:
                found[graph.layer_path(layer.name)] = (before, after)
    return found


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _macs(config: dict[str, Any], by_path: dict[str, Layer],
          variables: dict[VariableKey, AxisCuts]) -> tuple[int, int, int]:
    """Multiply-accumulates of one sample through the convs and Dense layers, before and
    after, and how many such layers had no recorded output size."""
    before = after = unknown = 0
    for graph in model_graphs(config):
        shapes = graph.shapes
        for layer in graph.layers:
            stored = by_path.get(graph.layer_path(layer.name))
            cls = conv_class(layer.class_name)
            if stored is None or (cls is None and layer.class_name != "Dense"):
                continue
            if cls is None:  # Dense: every position of its input but the last axis
                inputs = layer.calls[0] if layer.calls else ()
                positions = spatial_positions(shapes.get(inputs[0]) if inputs else None, -1)
            elif cls.kind == "transpose":
                inputs = layer.calls[0] if layer.calls else ()
                positions = spatial_positions(shapes.get(inputs[0]) if inputs else None,
                                              1 if layer.config.get("data_format") == "channels_first" else -1)
            else:
                output = shapes.get(TensorRef(layer.name))
                if output is None and layer.calls:
                    output = conv_output_shape(shapes.get(layer.calls[0][0]), layer.config)
                positions = spatial_positions(output, 1 if layer.config.get("data_format") == "channels_first" else -1)
            if positions is None:
                unknown += 1
                continue
            for variable in stored.variables:
                if "kernel" not in variable.name:
                    continue
                axes = variables.get((stored.path, variable.name), {})
                before += positions * variable.size
                after += positions * _size(sliced_shape(variable.shape, axes))
    return before, after, unknown


def _check_store_keys(config: dict[str, Any], new_config: dict[str, Any], label: str) -> None:
    """Pruning keeps every layer, so every object keeps its store key; checked, not assumed."""
    old = {g.path: container_keys(g, [layer.name for layer in g.layers]) for g in model_graphs(config)}
    new = {g.path: container_keys(g, [layer.name for layer in g.layers]) for g in model_graphs(new_config)}
    if old != new:
        raise ConvSurgeonError(f"{label}: the pruned config would move layers in the weight store; nothing was written")


def _optimizer(structure: ModelStructure, config: dict[str, Any], new_config: dict[str, Any],
               by_path: dict[str, Layer], variables: dict[VariableKey, AxisCuts],
               source: ModelFile) -> SlotChanges | None:
    """The optimizer's slots of each sliced variable, sliced the same way; the rest copied."""
    if not structure.optimizer_variables:
        return None
    before = structure_variables(by_path)
    layers = {layer for layer, _ in variables}
    new_variables: dict[str, list[tuple[str, tuple[int, ...], bool]]] = {}
    for path in layers:
        own = before(path) or []
        new_variables[path] = [(name, sliced_shape(shape, variables.get((path, name), {})), trainable)
                               for name, shape, trainable in own]
    changed = {key: partial(sliced, axes=axes) for key, axes in variables.items()}
    return slot_changes(structure, config, new_config, by_path, new_variables, changed,
                          read_optimizer_shapes(source))


# --- the write ----------------------------------------------------------------------------


def _rewrite(surgery: _Surgery) -> tuple[StoreRewrite, list[tuple[Layer, Variable]]]:
    """Every sliced variable derived from its old value inside the rewrite's worker; and
    each of them, in its place (every layer keeps its store key, so its datasets too)."""
    groups: dict[str, tuple[VarOrigin, ...]] = {}
    derived: list[tuple[Layer, Variable]] = []
    for layer in surgery.by_path.values():
        if not any((layer.path, v.name) in surgery.variables for v in layer.variables):
            continue
        sources: list[VarOrigin] = []
        for variable in layer.variables:
            index = int(variable.dataset.rpartition("/")[2])
            axes = surgery.variables.get((layer.path, variable.name))
            if axes is None:
                sources.append(index)
                continue
            sources.append(Derived(index, partial(sliced, axes=axes)))
            derived.append((layer, replace(variable, shape=sliced_shape(variable.shape, axes))))
        groups[f"{layer.store_path}/vars"] = tuple(sources)
    if surgery.optimizer is not None:
        groups[surgery.optimizer.vars_group] = surgery.optimizer.origins
    return StoreRewrite(variables=groups), derived


def _write(source: ModelFile, surgery: _Surgery, request: PruneRequest, options: WriteOptions,
           step: Callable[[str], None] | None) -> PruneReport:
    records = [EditRecord(layer=layer, variable=name, layout="keras",
                          source=PruneSource(prune={str(axis): list(removed) for axis, removed in axes.items()}))
               for (layer, name), axes in surgery.variables.items()]
    rewrite, derived = _rewrite(surgery)

    def stage(prepared: Path, path: Path, history: list[dict[str, Any]]) -> None:
        write_keras_archive(source, path, surgery.new_config, prepared, history)

    staging = Rewriting(partial(rewrite_weights, source, rewrite), stage, derived=derived)
    result = write_transaction(source, surgery.structure, staging, records, options, step)
    return replace(surgery.report, destination=result.destination, smoke=result.smoke,
                   smoke_skipped=result.smoke_skipped, notes=surgery.report.notes + result.notes,
                   replaced=result.replaced)
