"""``port``: a whole PyTorch state dict mapped onto a Keras model, in one checked write.

The mapping needs no name table (:mod:`..edits.porting`): the state dict's modules are
aligned with the model's layers with weights by kind and PyTorch shape, in both orders;
``--map`` decides what the structure cannot. Every value then goes through the checks of
`set` (:func:`.set_weights.check_edits`, PyTorch layouts converted there) and one write:
byte patches, or, when ``--bn-epsilon`` changes the config of the ported
BatchNormalizations, a rewrite of the archive (:mod:`..surgery.rewrite`). The optimizer
slots of every replaced variable follow ``optimizer`` as for `set`; the provenance record
names each tensor and the state dict's sha256.

Nothing is written while a source tensor is left over (``allow_partial`` writes the rest),
while a ported BatchNormalization's epsilon differs from the source's, or while the
mapping is ambiguous. A dry run reports the mapping and what would be refused.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..edits.layout import variable_role
from ..edits.porting import (TORCH_EPSILON, MappedLayer, Mismatch, RowOrder,
                             StateMapping, dense_row_orders, in_keras_rows,
                             map_state, mismatches, parse_map, source_modules,
                             transform_text)
from ..edits.sources import LoadedState, load_state_dict
from ..errors import ConvSurgeonError, ModelFileError, UsageError
from ..model.graph import config_problem, model_graphs
from ..model.naming import format_epsilon, format_shape
from ..model.structure import Layer, ModelStructure, read_structure
from ..runtime.checks import TorchReference
from ..runtime.torch_reference import parse_reference, require_torch
from ..store.model_file import ModelFile
from ..store.patches import write_h5_history
from ..surgery import OPTIMIZER_POLICIES, OptimizerPolicy
from ..surgery.optimizer import OPTIMIZER_VARS, read_optimizer_state
from ..surgery.rewrite import (LegacyRewrite, StoreRewrite, VarOrigin,
                               rewrite_legacy, rewrite_weights,
                               write_keras_archive)
from ..surgery.stored_graph import format_name, read_config
from ..transaction.transaction import (Rewriting, WriteOptions, Written,
                                       WrittenValue, check_destination,
                                       one_writer, write_transaction)
from .set_weights import (CheckedEdits, LayerEdit, SetRequest, SlotOutcome,
                          VariableChange, WeightRequest, check_edits,
                          write_patched)
from .writing import PLAIN_CHECKS, CheckDefaults, Progress, WriteReport, counted

# Source tensors named in one error line before the list is cut short.
_LISTED = 6


@dataclass(frozen=True)
class PortRequest:
    """What `port` writes: the state dict ``state`` mapped onto the model.

    ``maps``: ``REGEX=>LAYER`` rules for what the structure cannot decide;
    ``allow_partial`` writes what was mapped though source tensors are left over;
    ``bn_epsilon`` is the source's BatchNorm epsilon, given to every ported
    BatchNormalization whose own differs (None: they must have PyTorch's default);
    ``optimizer`` what becomes of the replaced variables' optimizer slots, as for `set`.
    ``reference``: a PyTorch model to check the port against (a TorchScript file, a
    torch.export ``.pt2`` archive, or ``module:factory``, into whose module the state dict
    is loaded), run beside the smoke test on its inputs, or on ``load_inputs``.
    """

    state: str | os.PathLike[str]
    maps: tuple[str, ...] = ()
    allow_partial: bool = False
    bn_epsilon: float | None = None
    optimizer: OptimizerPolicy = "reset"
    reference: str | None = None
    load_inputs: Path | None = None

    @property
    def checks(self) -> CheckDefaults:
        """The written model must load and run, as after `set`; with a reference, its
        outputs are measured against PyTorch's (--expect-same: within float32 rounding)."""
        return REFERENCE_CHECKS if self.reference is not None else PORT_CHECKS


PORT_CHECKS = replace(PLAIN_CHECKS, reference=False)
REFERENCE_CHECKS = replace(PLAIN_CHECKS, reference=True)


@dataclass(frozen=True)
class PortedTensor:
    """One source tensor and the variable it went into."""

    source: str  # its name in the state dict: features.0.weight
    source_shape: tuple[int, ...]
    layer: str  # layer path
    variable: str
    shape: tuple[int, ...]
    transform: str  # how the tensor `a` becomes the variable: "transpose(a, (2, 3, 1, 0))", "as is"
    mapped_by: str | None = None  # the --map rule that placed it


@dataclass(frozen=True)
class LeftTensor:
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class UnportedLayer:
    """A layer with weights no tensor went into; it keeps its values."""

    path: str
    class_name: str
    variables: tuple[tuple[str, tuple[int, ...]], ...]
    reason: str | None  # why no module can fill it; None: none left over fits it


@dataclass(frozen=True)
class EpsilonChange:
    layer: str
    before: float
    after: float


@dataclass(frozen=True, kw_only=True)
class PortReport(WriteReport):
    """Where every tensor of the state dict went, what was left on either side, the
    settings that make Keras compute otherwise than PyTorch, and the write."""

    state: str  # the state dict as given
    state_sha256: str
    state_format: str  # torch, safetensors, npz
    order: str  # the order of the model's layers the alignment used
    tensors: tuple[PortedTensor, ...]
    layers_ported: int
    skipped: tuple[str, ...]  # num_batches_tracked
    left_in_state: tuple[LeftTensor, ...]
    left_in_model: tuple[UnportedLayer, ...]
    epsilon: tuple[EpsilonChange, ...]
    mismatches: tuple[Mismatch, ...]
    refusals: tuple[str, ...]  # why a write would be refused (a dry run reports them)
    partial: bool  # tensors were left over and --allow-partial wrote the rest
    changes: tuple[VariableChange, ...]
    optimizer_slots: SlotOutcome

    @property
    def changed(self) -> bool:
        return bool(self.tensors)


@one_writer
def port(source: ModelFile, request: PortRequest, options: WriteOptions, *,
         progress: Progress | None = None) -> PortReport:
    """Map the state dict of ``request`` onto ``source`` and write the model as ``options`` say
    (``options.destination`` None: a dry run, which reports what would be refused too)."""
    reference = _reference(request)
    if request.optimizer not in OPTIMIZER_POLICIES:
        raise UsageError(f"optimizer policy {request.optimizer!r}: expected one of {', '.join(OPTIMIZER_POLICIES)}")
    rules = [parse_map(text) for text in request.maps]
    bn_epsilon = _checked_epsilon(request.bn_epsilon)
    label = source.label
    structure = read_structure(source)
    check_destination(source, structure, options)
    config, layer_names = _model_config(source, structure)
    state_label = os.fspath(request.state)
    state = load_state_dict(request.state)
    graph, notes = _graph(source, structure, config, options)
    if reference is not None:
        if options.dry_run:
            notes.append(f"--reference {reference.spec} runs when the model is written, not in a dry run")
        options = replace(options, smoke=replace(
            options.smoke, reference=replace(reference, state=state.tensors),
            load_inputs=options.smoke.load_inputs or request.load_inputs))
    modules, skipped = source_modules(state.tensors, state.ordered)
    mapping = map_state(structure, graph, modules, rules, label)
    if not mapping.mapped:
        raise ConvSurgeonError(_nothing_fits(label, state_label, mapping))
    rows = _row_orders(graph, mapping, label)
    epsilon, refusals, epsilon_notes = _epsilon(structure, graph, mapping, bn_epsilon, label)
    notes += epsilon_notes
    left_tensors = tuple(LeftTensor(m.full_name(leaf), shape) for m in mapping.left_modules for leaf, shape in m.tensors)
    if left_tensors and not request.allow_partial:
        refusals.insert(0, _left_over(label, state_label, left_tensors))
    notes += _notes(state, mapping)
    report = PortReport(
        source=label, destination=None, dry_run=options.dry_run, state=state_label, state_sha256=state.sha256,
        state_format=state.format, order=mapping.order, tensors=_ported(mapping, rows),
        layers_ported=len(mapping.mapped), skipped=tuple(skipped), left_in_state=left_tensors,
        left_in_model=tuple(UnportedLayer(left.layer.path, left.layer.class_name,
                                          tuple((v.name, v.shape) for v in left.layer.variables), left.reason)
                            for left in mapping.left_layers),
        epsilon=tuple(epsilon), mismatches=tuple(mismatches(graph, mapping.mapped)), refusals=tuple(refusals),
        partial=bool(left_tensors) and request.allow_partial, changes=(),
        optimizer_slots=SlotOutcome(request.optimizer, state=False), notes=tuple(notes))
    if refusals and not options.dry_run:
        raise ConvSurgeonError(refusals[0])
    edits = tuple(_edit(m, state, state_label, rows.get(m.layer.path)) for m in mapping.mapped)
    step = counted(progress, len(edits) + 1 + (1 if options.smoke.enabled else 0))
    checked = check_edits(source, SetRequest(edits, optimizer=request.optimizer), options, step=step,
                          structure=structure)
    report = replace(report, changes=checked.changes, optimizer_slots=checked.outcome)
    if options.dry_run:
        return report
    if epsilon:
        new_config = _with_epsilon(config, epsilon, label)
        written = _rewrite(source, checked, new_config, layer_names, options, step)
    else:
        written = write_patched(source, checked, options, step)
    return replace(report, destination=written.destination, smoke=written.smoke,
                   smoke_skipped=written.smoke_skipped, notes=report.notes + written.notes,
                   replaced=written.replaced)


def _reference(request: PortRequest) -> TorchReference | None:
    """What --reference names, checked before any work, PyTorch installed to run it."""
    if request.reference is None:
        return None
    reference = parse_reference(request.reference)
    require_torch(reference.spec)
    return reference


def _checked_epsilon(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"--bn-epsilon {value!r}: expected a positive number, e.g. 1e-5 (PyTorch's default)")
    return float(value)


def _model_config(source: ModelFile, structure: ModelStructure) -> tuple[dict[str, Any] | None, list[str] | None]:
    """The model's config (its layers and graph) and a legacy .h5's layer_names."""
    if structure.format in ("weights", "sharded"):
        if source.config is None:
            raise ConvSurgeonError(f"{source.label}: a {format_name(structure)} holds no config, and port needs the "
                                   "model's layers and graph; pass --config MODEL (the model it belongs to)")
        config, _ = read_config(ModelFile.from_path(source.config), "port")
        return config, None
    return read_config(source, "port")


def _graph(source: ModelFile, structure: ModelStructure, config: dict[str, Any] | None,
           options: WriteOptions) -> tuple[dict[str, Any] | None, list[str]]:
    """The config that holds the model's layer graph, and what the report says of it. A
    config without one (a keras-hub backbone's arguments, a functional subclass) is
    completed by Keras, which loads the model to read it: without the graph, the branches
    of a residual block could be mapped crosswise."""
    if config is not None and any(graph.layers for graph in model_graphs(config)):
        return config, []
    from ..runtime.checks import SmokeTarget
    from ..runtime.layer_graph import read_graph

    why = "a model read from stdin" if source.path is None else None
    found = None
    if why is None and structure.format in ("keras", "h5", "dir", "preset"):
        assert source.path is not None
        target = SmokeTarget(source.path, "preset" if structure.format == "preset" else "model")
        found, why = read_graph(target, options.smoke.unsafe, options.smoke.imports)
        problem = config_problem(found) if found is not None else None
        if found is None and why is None:
            why = "a subclassed model has none"
        elif problem is not None:
            found, why = None, f"Keras described it oddly: {problem}"
    elif why is None:
        why = f"a {format_name(structure)} is loaded with its --config"
    if found is not None:
        return found, ["the model's config lists no layers: Keras loaded the model to read its graph"]
    return config, [f"the model's config lists no layers and its graph could not be read ({why}): the layers are "
                    "aligned in the order of the weight store, kind by kind; check the mapping with --dry-run, "
                    "where branches meet (a residual block's shortcut) above all"]


def _nothing_fits(label: str, state: str, mapping: StateMapping) -> str:
    shown = ", ".join(f"'{m.name}' ({m.describe()})" for m in mapping.left_modules[:3])
    return (f"{label}: no layer with weights fits a module of {state} (it holds {shown}{', ...' if len(mapping.left_modules) > 3 else ''}); "
            "nothing was written; is it the state dict of this architecture? run `conv-surgeon inspect MODEL --all` "
            "to list the layers, and give pairs with --map 'REGEX=>LAYER'")


def _left_over(label: str, state: str, left: tuple[LeftTensor, ...]) -> str:
    shown = ", ".join(f"{t.name} {format_shape(t.shape)}" for t in left[:_LISTED])
    more = f" and {len(left) - _LISTED} more" if len(left) > _LISTED else ""
    return (f"{label}: {len(left)} tensor{'' if len(left) == 1 else 's'} of {state} fit no layer ({shown}{more}); "
            "nothing was written; run with --dry-run to see the mapping, place them with --map 'REGEX=>LAYER', or "
            "pass --allow-partial to write the layers that were mapped")


def _row_orders(config: dict[str, Any] | None, mapping: StateMapping, label: str) -> dict[str, RowOrder]:
    """The row order of each ported Dense after a Flatten; refused where it cannot be told."""
    found: dict[str, RowOrder] = {}
    orders = dense_row_orders(config)
    for item in mapping.mapped:
        order = orders.get(item.layer.path)
        if isinstance(order, str):
            raise ConvSurgeonError(f"{label}: layer '{item.layer.path}': {order}")
        if order is not None:
            found[item.layer.path] = order
    return found


def _epsilon(structure: ModelStructure, graph: dict[str, Any] | None, mapping: StateMapping,
             bn_epsilon: float | None, label: str) -> tuple[list[EpsilonChange], list[str], list[str]]:
    """The epsilon changes ``--bn-epsilon`` makes, the refusal without it, and notes."""
    source_epsilon = TORCH_EPSILON if bn_epsilon is None else bn_epsilon
    configs = {g.layer_path(layer.name): layer.config for g in model_graphs(graph) for layer in g.layers} \
        if graph is not None else {}
    differing: list[tuple[Layer, float]] = []
    unknown: list[str] = []
    for item in mapping.mapped:
        layer = item.layer
        if layer.kind is None or layer.kind.family != "batch_norm":
            continue
        value = (layer.config or configs.get(layer.path, {})).get("epsilon")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            unknown.append(layer.path)
        elif float(value) != source_epsilon:
            differing.append((layer, float(value)))
    notes = []
    if unknown:
        notes.append(f"the config does not give the epsilon of {_names(unknown)}: check that it is the source's "
                     f"({format_epsilon(source_epsilon)})")
    if not differing:
        return [], [], notes
    if bn_epsilon is None:
        values = sorted({value for _, value in differing})
        return [], [(
            f"{label}: {len(differing)} ported BatchNormalization{'' if len(differing) == 1 else 's'} "
            f"({_names([layer.path for layer, _ in differing])}) {'has' if len(differing) == 1 else 'have'} epsilon "
            f"{', '.join(format_epsilon(v) for v in values)}, PyTorch's BatchNorm {format_epsilon(TORCH_EPSILON)}: the "
            f"outputs would differ; nothing was written; pass --bn-epsilon {format_epsilon(TORCH_EPSILON)} to give them "
            "PyTorch's (or the epsilon the source was built with)")], notes
    if structure.format not in ("keras", "h5"):
        raise ConvSurgeonError(
            f"{label}: --bn-epsilon changes the config of {len(differing)} BatchNormalization"
            f"{'' if len(differing) == 1 else 's'}, which port rewrites in .keras archives and legacy .h5 models, not "
            f"in a {format_name(structure)}; load the model in Keras and save it as .keras first")
    return [EpsilonChange(layer.path, value, bn_epsilon) for layer, value in differing], [], notes


def _names(paths: list[str]) -> str:
    shown = ", ".join(f"'{p}'" for p in paths[:4])
    return shown + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")


def _notes(state: LoadedState, mapping: StateMapping) -> list[str]:
    notes = []
    if state.inner is not None:
        notes.append(f"the state dict is the checkpoint's '{state.inner}'")
    if not state.ordered:
        notes.append("a .safetensors file keeps no module order: its modules were taken in the order of their names "
                     "(save the state dict with torch.save to keep the model's order)")
    kept = [left.layer.path for left in mapping.left_layers]
    if kept:
        notes.append(f"{len(kept)} layer{'' if len(kept) == 1 else 's'} with weights got no tensor and "
                     f"{'keeps its' if len(kept) == 1 else 'keep their'} values: {_names(kept)}")
    return notes


def _ported(mapping: StateMapping, rows: dict[str, RowOrder]) -> tuple[PortedTensor, ...]:
    found = []
    for item in mapping.mapped:
        for target, tensor in item.variables:
            shape = dict(item.module.tensors)[tensor.rpartition(".")[2]]
            linear = variable_role(target) == "linear"
            found.append(PortedTensor(
                tensor, shape, item.layer.path, target.name, target.shape,
                transform_text(target, rows.get(item.layer.path) if linear else None),
                mapped_by="--map" if item.forced else None))
    return tuple(found)


def _edit(item: MappedLayer, state: LoadedState, state_label: str, rows: RowOrder | None) -> LayerEdit:
    """The layer's new values as `set --layout torch` takes them."""
    requests = []
    for target, tensor in item.variables:
        array = state.tensors[tensor]
        origin = f"{state_label}:{tensor}"
        if rows is not None and variable_role(target) == "linear":
            array = in_keras_rows(array, rows)
            origin += f" ({rows.text})"
        requests.append(WeightRequest(target.name, array=array, origin=origin, sha256=state.sha256))
    # An anchored path: a layer named like the end of another's path is still this one.
    return LayerEdit("/" + item.layer.path, tuple(requests), "torch",
                     place=f"'{item.module.name}' -> layer '{item.layer.path}'")


def _with_epsilon(config: dict[str, Any] | None, changes: list[EpsilonChange], label: str) -> dict[str, Any]:
    """The config with the ported BatchNormalizations' new epsilon."""
    assert config is not None, "an epsilon is read from the config"
    new = copy.deepcopy(config)
    wanted = {change.layer: change.after for change in changes}
    for graph in model_graphs(new):
        for layer in graph.layers:
            path = graph.layer_path(layer.name)
            if path in wanted:
                layer.entry["config"]["epsilon"] = wanted.pop(path)
    if wanted:
        raise ConvSurgeonError(
            f"{label}: --bn-epsilon: the model's config does not list {_names(sorted(wanted))} (a keras-hub backbone "
            "builds its layers itself, a wrapper holds its own), so their epsilon cannot be rewritten; nothing was "
            "written; build the model with the source's epsilon")
    return new


def _rewrite(source: ModelFile, checked: CheckedEdits, config: dict[str, Any], layer_names: list[str] | None,
             options: WriteOptions, step: Callable[[str], None]) -> Written:
    """Write the checked values with a new config (a rewrite of the archive, or of the
    legacy .h5), the optimizer slots of the replaced variables as ``checked`` says."""
    written = [WrittenValue(layer, v, a.value, compare_layer=False) for layer, a, v in checked.edited]
    slots = _slot_origins(source, checked)
    prepare: Callable[[Path], dict[str, Any]]
    stage: Callable[[Path, Path, list[dict[str, Any]]], None]
    if layer_names is not None:
        legacy = LegacyRewrite(config, tuple(layer_names), frozenset(),
                               {v.dataset: a.value for _, a, v in checked.edited}, slots)
        prepare = partial(rewrite_legacy, source, legacy)

        def stage(prepared: Path, path: Path, history: list[dict[str, Any]]) -> None:
            shutil.copyfile(prepared, path)
            write_h5_history(path, history, source.label)
    else:
        prepare = partial(rewrite_weights, source, _store_rewrite(checked, slots, source.label))

        def stage(prepared: Path, path: Path, history: list[dict[str, Any]]) -> None:
            write_keras_archive(source, path, config, prepared, history)

    return write_transaction(source, checked.structure, Rewriting(prepare, stage, written), checked.records,
                             options, step)


def _store_rewrite(checked: CheckedEdits, slots: tuple[VarOrigin, ...] | None, label: str) -> StoreRewrite:
    """Each edited layer's vars group with its new values, the other variables copied."""
    values: dict[str, dict[int, np.ndarray]] = {}
    layers: dict[str, Layer] = {}
    for layer, assignment, variable in checked.edited:
        values.setdefault(layer.store_path, {})[_index(variable.dataset)] = assignment.value
        layers[layer.store_path] = layer
    groups: dict[str, tuple[VarOrigin, ...]] = {}
    for store_path, new in values.items():
        indices = sorted(_index(v.dataset) for v in layers[store_path].variables)
        if indices != list(range(len(indices))):
            raise ModelFileError(f"{label}: layer '{layers[store_path].path}' stores its variables as {indices}, not "
                                 "numbered from 0; re-save the model with Keras")
        groups[f"{store_path}/vars"] = tuple(new.get(i, i) for i in indices)
    if slots is not None:
        groups[OPTIMIZER_VARS] = slots
    return StoreRewrite(variables=groups)


def _index(dataset: str) -> int:
    return int(dataset.rpartition("/")[2])


def _slot_origins(source: ModelFile, checked: CheckedEdits) -> tuple[VarOrigin, ...] | None:
    """The optimizer's variables in order: each kept, or the new value of a slot the
    policy resets (None when no slot changes)."""
    if not checked.slots:
        return None
    state = read_optimizer_state(source)
    position = {slot.dataset: i for i, slot in enumerate(state.slots)}
    origins: list[VarOrigin] = list(range(len(state.slots)))
    for slot, value in checked.slots:
        origins[position[slot.dataset]] = value
    return tuple(origins)
