"""``fold-bn``: fold every BatchNormalization into the convolution it follows.

The pairs, the folded values, the new config and the new weight store are all computed
from the file (:mod:`..surgery.folding`, :mod:`..surgery.rewrite`); Keras only loads the result
to check that the model computes what it computed before (``--compare --expect-same``,
on by default), which ``--no-smoke`` skips.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConvSurgeonError, LayerNotFoundError, ModelFileError
from ..model.graph import ModelGraph, keras_order, model_graphs
from ..model.structure import Layer, ModelStructure, Variable, read_structure, read_variables
from ..runtime.checks import FUNCTION_KEPT
from ..store.model_file import ModelFile
from ..store.patches import write_h5_history
from ..store.provenance import EditRecord, FoldSource
from ..surgery.folding import (FOLDABLE_DTYPES, BatchNormValues, FoldPair,
                               FoldSearch, NotFolded, find_pairs, folded_bias,
                               folded_config, folded_kernel, identity_values,
                               output_channels, scale_and_shift, store_moves,
                               variance_problem)
from ..surgery.optimizer import (SlotChanges, read_optimizer_shapes,
                                 slot_changes)
from ..surgery.rewrite import (Derived, LegacyRewrite, StoreRewrite,
                               ValueDigest, VarOrigin, rewrite_legacy,
                               rewrite_weights, write_keras_archive)
from ..surgery.stored_graph import (check_store_places, format_name,
                                    kernel_variable, layer_variable,
                                    read_config, store_layer)
from ..transaction.transaction import (Rewriting, WriteOptions, Written,
                                       WrittenValue, check_destination,
                                       one_writer, write_transaction)
from .writing import CheckDefaults, WriteReport

# A pair to fold, the conv's new variables by name, and the BatchNormalization's statistics.
Fold = tuple[FoldPair, dict[str, "np.ndarray | Derived"], BatchNormValues]


@dataclass(frozen=True)
class FoldedPair:
    conv: str  # layer paths
    bn: str
    conv_class: str
    channels: int
    bias_added: bool  # the conv had no bias before


@dataclass(frozen=True, kw_only=True)
class FoldReport(WriteReport):
    """The pairs `fold-bn` folded, the BatchNormalizations it left and why, and the write."""

    pairs: tuple[FoldedPair, ...]
    not_folded: tuple[NotFolded, ...]
    keep_layers: bool
    parameters_before: int
    parameters_after: int

    @property
    def changed(self) -> bool:
        return bool(self.pairs)


@dataclass(frozen=True)
class FoldRequest:
    """Which BatchNormalizations to fold: those after (or of) the convs and BNs named in
    ``layers``, else all; ``keep_layers`` leaves each one in place as an identity."""

    layers: tuple[str, ...] = ()
    keep_layers: bool = False
    # Folding keeps the function: the original runs beside the folded model, and their
    # outputs must agree but for float32 rounding (and a user's --atol/--rtol).
    checks: ClassVar[CheckDefaults] = CheckDefaults(compare=True, expect_same=FUNCTION_KEPT)


@one_writer
def fold_bn(
    source: ModelFile,
    request: FoldRequest,
    options: WriteOptions,
    *,
    step: Callable[[str], None] | None = None,
) -> FoldReport:
    """Fold the BatchNormalizations of ``source`` that ``request`` names and write the model
    as ``options`` say."""
    surgery = prepare_fold(source, options, list(request.layers) or None, request.keep_layers)
    if not surgery.folds or options.dry_run:
        return surgery.report
    records = [EditRecord(layer=p.conv_path, variable=name, layout="keras", source=FoldSource(fold=p.bn_path))
               for p, new, _ in surgery.folds for name in new]
    result = write_surgery(source, surgery, records, options, step)
    return replace(surgery.report, destination=result.destination, smoke=result.smoke,
                   smoke_skipped=result.smoke_skipped, notes=surgery.report.notes + result.notes,
                   replaced=result.replaced)


@dataclass(frozen=True)
class FoldSurgery:
    """Everything the fold writes, computed from the file. ``equalize`` builds on it: it
    gives the folds' convs values of their own and changes other layers (``changes``)."""

    structure: ModelStructure
    config: dict[str, Any]
    new_config: dict[str, Any]
    layer_names: list[str] | None  # a legacy .h5's, else None
    by_path: dict[str, Layer]
    folds: list[Fold]
    keep_layers: bool
    optimizer: SlotChanges | None
    report: FoldReport
    # Layers no fold touches whose variables get new values: layer path -> variable -> value.
    changes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def prepare_fold(source: ModelFile, options: WriteOptions, layers: list[str] | None, keep_layers: bool,
                 command: str = "fold-bn") -> FoldSurgery:
    structure = read_structure(source)
    legacy = structure.format == "h5"
    if structure.format != "keras" and not legacy:
        raise ConvSurgeonError(
            f"{source.label}: {command} rewrites .keras archives and legacy .h5 models, not a "
            f"{format_name(structure)}; load it in Keras and save it as .keras first"
        )
    check_destination(source, structure, options)
    config, layer_names = read_config(source, command)
    pairs, not_folded = _selected(*_foldable_here(find_pairs(config), legacy), layers, source.label)
    by_path = {layer.path: layer for layer in structure.layers}
    if not legacy:
        check_store_places(config, by_path, source.label, command)
    folds, refused = _folds(source, pairs, by_path)
    before = sum(layer.parameters for layer in structure.layers)
    removed = sum(by_path[p.bn_path].parameters for p, _, _ in folds)
    added = sum(0 if _has_bias(by_path[p.conv_path]) else _bias(new).size for p, new, _ in folds)
    report = FoldReport(
        source=source.label, destination=None, dry_run=options.dry_run,
        pairs=tuple(_folded(p, by_path, new) for p, new, _ in folds), not_folded=tuple(not_folded + refused),
        keep_layers=keep_layers, parameters_before=before,
        parameters_after=before + added - (0 if keep_layers else removed),
    )
    if not folds:
        report = replace(report, notes=("nothing to fold: no convolution is followed by a "
                                        "BatchNormalization it alone feeds; nothing was written",))
        return FoldSurgery(structure, config, config, layer_names, by_path, [], keep_layers, None, report)
    if not keep_layers:
        # fold-bn can keep every layer instead; equalize has no such way out.
        way_out = "; use --keep-layers, which keeps every layer" if command == "fold-bn" else ""
        _check_predicted_order(config, {p.graph.path for p, _, _ in folds}, source.label, way_out)
        if layer_names is not None:
            _check_layer_names(config, layer_names, source.label, way_out)
    new_config = folded_config(config, [p for p, _, _ in folds], keep_layers)
    optimizer = fold_slot_changes(source, structure, config, new_config, by_path, folds)
    keeps_it = "; --keep-layers keeps it" if command == "fold-bn" else ""
    renamed = [] if keep_layers else [
        f"the model output '{p.bn.name}' is now the output of '{p.conv.name}' (its name changes{keeps_it})"
        for p, _, _ in folds
        if not p.graph.path and any(ref.layer == p.bn.name for ref in p.graph.outputs)]
    report = replace(report, optimizer=optimizer.note if optimizer is not None else None,
                     notes=tuple(renamed))
    return FoldSurgery(structure, config, new_config, layer_names, by_path, folds, keep_layers, optimizer, report)


def fold_slot_changes(source: ModelFile, structure: ModelStructure, config: dict[str, Any],
                      new_config: dict[str, Any], by_path: dict[str, Layer], folds: list[Fold],
                      changed: frozenset[tuple[str, str]] = frozenset()) -> SlotChanges | None:
    """How the optimizer state follows the fold: the slots of the folded convs and of
    ``changed`` (layer path, variable) start at zero, the BatchNormalizations' go."""
    return slot_changes(
        structure, config, new_config, by_path,
        {p.conv_path: _conv_variables(by_path[p.conv_path], new) for p, new, _ in folds},
        dict.fromkeys(_changed(folds, by_path) | changed),
        read_optimizer_shapes(source) if structure.optimizer_variables else [])


def _foldable_here(search: FoldSearch, legacy: bool) -> tuple[list[FoldPair], list[NotFolded]]:
    """The pairs this format can fold: a legacy .h5 keeps a nested model's weights as one
    flat list, which the fold does not rewrite."""
    pairs, not_folded = list(search.pairs), list(search.not_folded)
    if legacy:
        not_folded += [NotFolded(p.bn_path, f"it is inside the nested model '{p.graph.path}', whose "
                                 "weights a legacy .h5 stores as one flat list; save the model as "
                                 ".keras to fold it", p.conv_path) for p in pairs if p.graph.path]
        pairs = [p for p in pairs if not p.graph.path]
    return pairs, not_folded


def _folds(source: ModelFile, pairs: list[FoldPair], by_path: dict[str, Layer]) -> tuple[list[Fold], list[NotFolded]]:
    """The folds, and the pairs whose statistics cannot be folded.

    Only the small vectors come to this process; kernels are scaled inside the rewrite's
    worker (:class:`Derived` values), where they are read, written and read back.
    """
    label = source.label
    wanted = [v for p in pairs for v in store_layer(by_path, p.bn_path, label).variables]
    wanted += [v for p in pairs for v in store_layer(by_path, p.conv_path, label).variables if v.name == "bias"]
    values = read_variables(source, wanted)
    folds: list[Fold] = []
    refused: list[NotFolded] = []
    for pair in pairs:
        bn = _bn_values(by_path[pair.bn_path], pair.bn.config, values)
        problem = variance_problem(bn)
        if problem is not None:
            refused.append(NotFolded(pair.bn_path, problem, pair.conv_path))
            continue
        folds.append((pair, _conv_values(pair, by_path[pair.conv_path], bn, values), bn))
    return folds, refused


def write_surgery(source: ModelFile, surgery: FoldSurgery, records: list[EditRecord], options: WriteOptions,
                  step: Callable[[str], None] | None) -> Written:
    """Write the rewritten model through the write transaction, checked as ``options`` say."""
    prepare: Callable[[Path], dict[str, ValueDigest]]
    stage: Callable[[Path, Path, list[dict[str, Any]]], None]
    if surgery.layer_names is not None:
        legacy_rewrite, written, derived = _legacy_rewrite(surgery, surgery.layer_names)
        prepare = partial(rewrite_legacy, source, legacy_rewrite)

        def stage(prepared: Path, path: Path, history: list[dict[str, Any]]) -> None:
            shutil.copyfile(prepared, path)
            write_h5_history(path, history, source.label)
    else:
        rewrite, written, derived = _rewrite(surgery)
        prepare = partial(rewrite_weights, source, rewrite)

        def stage(prepared: Path, path: Path, history: list[dict[str, Any]]) -> None:
            write_keras_archive(source, path, surgery.new_config, prepared, history)

    return write_transaction(source, surgery.structure, Rewriting(prepare, stage, written, derived), records,
                             options, step)


def _selected(pairs: list[FoldPair], not_folded: list[NotFolded], layers: list[str] | None,
              label: str) -> tuple[list[FoldPair], list[NotFolded]]:
    """The pairs named by ``layers`` (a conv's or a BatchNormalization's path or name)."""
    if not layers:
        return pairs, not_folded
    chosen: list[FoldPair] = []
    for query in layers:
        match = [p for p in pairs if query in (p.conv_path, p.bn_path, p.conv.name, p.bn.name)]
        if len(match) > 1:
            raise LayerNotFoundError(
                f"{label}: --layer {query} names {len(match)} pairs ("
                + ", ".join(p.conv_path for p in match) + "); give the layer's path")
        if not match:
            refusal = next((r for r in not_folded if query in (r.layer, r.after, r.layer.rpartition("/")[2])), None)
            if refusal is not None:
                raise ConvSurgeonError(f"{label}: --layer {query}: '{refusal.layer}' cannot be folded: {refusal.reason}")
            raise LayerNotFoundError(
                f"{label}: --layer {query}: no convolution -> BatchNormalization pair has that layer; "
                "run `conv-surgeon fold-bn MODEL --dry-run` to list the pairs")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen, []


def _check_predicted_order(config: dict[str, Any], models: set[str], label: str, way_out: str) -> None:
    """The rewritten model's layer order is predicted by replaying Keras's; the replay must
    give the original's order first."""
    for graph in model_graphs(config):
        if graph.path in models and _keras_order(graph, label) != [layer.name for layer in graph.layers]:
            raise ConvSurgeonError(
                f"{label}: the layers of model '{graph.path or graph.name}' are not in the order "
                "Keras lists them, so where Keras would look for the folded model's weights cannot "
                f"be predicted; nothing was written{way_out}"
            )


def _keras_order(graph: ModelGraph, label: str) -> list[str]:
    """:func:`keras_order`, its refusal of a graph Keras could not build (a cycle) worded
    for the file."""
    try:
        return keras_order(graph)
    except ValueError as exc:
        raise ModelFileError(f"{label}: the model config is broken: model '{graph.path or graph.name}': "
                             f"{exc}; re-save the model with Keras") from None


def _check_layer_names(config: dict[str, Any], layer_names: list[str], label: str, way_out: str) -> None:
    """A legacy .h5 loads weights by position in `layer_names`: it must be Keras's order."""
    listed = set(layer_names)
    if [name for name in _keras_order(model_graphs(config)[0], label) if name in listed] != layer_names:
        raise ConvSurgeonError(
            f"{label}: the layer_names of the .h5 are not in the order Keras lists its layers, so the "
            f"folded model's weights could not be placed; nothing was written{way_out}")


def _in_keras_order(config: dict[str, Any], layer_names: list[str]) -> tuple[str, ...]:
    """``layer_names`` in the order Keras lists the root model's layers built from ``config``."""
    listed = set(layer_names)
    return tuple(name for name in keras_order(model_graphs(config)[0]) if name in listed)


def _legacy_rewrite(surgery: FoldSurgery, layer_names: list[str]
                    ) -> tuple[LegacyRewrite, list[WrittenValue], list[tuple[Layer, Variable]]]:
    """The rewrite of a legacy .h5; each new value it writes that this process knows, and
    each variable whose value its worker derives."""
    by_path, keep_layers = surgery.by_path, surgery.keep_layers
    values: dict[str, np.ndarray | Derived] = {}
    written: list[WrittenValue] = []
    derived: list[tuple[Layer, Variable]] = []
    for pair, new, bn in surgery.folds:
        conv = by_path[pair.conv_path]
        for name, value in new.items():
            old = layer_variable(conv, name)
            if old is None:  # a new bias, named like the kernel: conv1/kernel:0 -> conv1/bias:0
                kernel = conv.variables[0].dataset
                head, _, leaf = kernel.rpartition("/")
                suffix = leaf[leaf.index(":"):] if ":" in leaf else ""
                bias = _bias(new)
                old = Variable("bias", f"{head}/bias{suffix}", tuple(bias.shape), bias.dtype.name,
                               len(conv.variables), position=len(conv.variables))
            values[old.dataset] = value
            if isinstance(value, np.ndarray):
                written.append(WrittenValue(replace(conv, variables=(old,)), old, value, compare_layer=False))
            else:
                derived.append((replace(conv, variables=(old,)), old))
        if keep_layers:
            identity = _identity(by_path[pair.bn_path], bn)
            values.update(identity)
            written += _identity_written(by_path[pair.bn_path], identity)
    for path, new_values in surgery.changes.items():
        layer = by_path[path]
        for variable in layer.variables:
            if variable.name in new_values:
                values[variable.dataset] = new_values[variable.name]
                written.append(WrittenValue(replace(layer, variables=(variable,)), variable,
                                            new_values[variable.name], compare_layer=False))
    drops = frozenset() if keep_layers else frozenset(p.bn.name for p, _, _ in surgery.folds)
    names = tuple(layer_names) if keep_layers else _in_keras_order(
        surgery.new_config, [n for n in layer_names if n not in drops])
    return LegacyRewrite(surgery.new_config, names, drops, values,
                         surgery.optimizer.origins if surgery.optimizer is not None else None), written, derived


def _has_bias(layer: Layer) -> bool:
    return layer_variable(layer, "bias") is not None


def _bn_values(layer: Layer, config: dict[str, Any], values: dict[str, np.ndarray]) -> BatchNormValues:
    def get(name: str) -> np.ndarray | None:
        variable = layer_variable(layer, name)
        return None if variable is None else values[variable.dataset]

    mean, variance = get("moving_mean"), get("moving_variance")
    if mean is None or variance is None:
        raise ModelFileError(f"layer '{layer.path}': a BatchNormalization without moving statistics")
    return BatchNormValues(get("gamma"), get("beta"), mean, variance, float(config.get("epsilon", 1e-3)))


def _conv_values(pair: FoldPair, layer: Layer, bn: BatchNormValues,
                 values: dict[str, np.ndarray]) -> dict[str, np.ndarray | Derived]:
    """The conv's new variables by name: its (pointwise) kernel scaled, and its bias."""
    s, t = scale_and_shift(bn)
    separable = pair.conv_class.kind == "separable"
    name = "pointwise_kernel" if separable else "kernel"
    kernel = layer_variable(layer, name) if separable else kernel_variable(layer)
    if kernel is None:
        raise ModelFileError(f"layer '{layer.path}': no {name} in the store")
    name = kernel.name
    if kernel.dtype not in FOLDABLE_DTYPES:
        raise ConvSurgeonError(f"layer '{layer.path}': a {kernel.dtype} kernel cannot be folded exactly")
    if output_channels(pair.conv_class.kind, kernel.shape) != s.size:
        raise ModelFileError(f"layer '{layer.path}': {output_channels(pair.conv_class.kind, kernel.shape)} output "
                             f"channels, but its BatchNormalization '{pair.bn_path}' has {s.size}")
    cls = pair.conv_class
    bias_var = layer_variable(layer, "bias")
    bias = values[bias_var.dataset] if bias_var is not None else None
    leaf = kernel.dataset.rpartition("/")[2]  # "0" in a Keras 3 store; a name in a legacy .h5
    return {name: Derived(int(leaf) if leaf.isdigit() else kernel.index, lambda k: folded_kernel(cls, k, s)),
            "bias": folded_bias(bias, s, t, np.dtype(kernel.dtype))}


def _bias(new: dict[str, np.ndarray | Derived]) -> np.ndarray:
    bias = new["bias"]
    assert isinstance(bias, np.ndarray)
    return bias


def _conv_variables(conv: Layer, new: dict[str, np.ndarray | Derived]) -> list[tuple[str, tuple[int, ...], bool]]:
    """A folded conv's variables (name, shape, trainable), its new bias included."""
    out = [(v.name, v.shape, True) for v in conv.variables]
    return out + ([] if _has_bias(conv) else [("bias", tuple(_bias(new).shape), True)])


def _changed(folds: list[Fold],
             by_path: dict[str, Layer]) -> set[tuple[str, str]]:
    """The variables whose values the fold changes: their optimizer slots start at zero."""
    changed = {(p.conv_path, name) for p, new, _ in folds for name in new}
    return changed | {(p.bn_path, v.name) for p, _, _ in folds for v in by_path[p.bn_path].variables}


def _folded(pair: FoldPair, by_path: dict[str, Layer], new: dict[str, np.ndarray | Derived]) -> FoldedPair:
    return FoldedPair(pair.conv_path, pair.bn_path, pair.conv.class_name, int(_bias(new).size),
                      not _has_bias(by_path[pair.conv_path]))


def _rewrite(surgery: FoldSurgery) -> tuple[StoreRewrite, list[WrittenValue], list[tuple[Layer, Variable]]]:
    """The store rewrite; each new value it writes that this process knows, and each
    variable whose value its worker derives, placed in the new store."""
    removed = set() if surgery.keep_layers else {p.bn_path for p, _, _ in surgery.folds}
    moves = store_moves(surgery.config, surgery.new_config, removed)
    by_path = surgery.by_path
    variables: dict[str, tuple[VarOrigin, ...]] = {}
    written: list[WrittenValue] = []
    derived: list[tuple[Layer, Variable]] = []
    for pair, new, bn in surgery.folds:
        conv = by_path[pair.conv_path]
        names = [v.name for v in conv.variables] + ([] if _has_bias(conv) else ["bias"])
        sources: list[VarOrigin] = []
        placed: list[tuple[Variable, np.ndarray | Derived]] = []
        object_path = moves.new_paths.get(pair.conv_path, conv.store_path)
        for index, name in enumerate(names):
            old = layer_variable(conv, name)
            value = new.get(name)
            if value is None:
                assert old is not None
                sources.append(int(old.dataset.rpartition("/")[2]))
                continue
            sources.append(value)
            if isinstance(value, np.ndarray):
                shape, dtype = tuple(value.shape), value.dtype.name
            else:
                assert old is not None, "a derived value comes from a variable of the store"
                shape, dtype = old.shape, old.dtype
            placed.append((Variable(name, f"{object_path}/vars/{index}", shape, dtype, index,
                                    old.file if old else 0), value))
        variables[f"{conv.store_path}/vars"] = tuple(sources)
        layer = replace(conv, store_path=object_path, variables=tuple(v for v, _ in placed))
        written += [WrittenValue(layer, v, value, compare_layer=False) for v, value in placed
                    if isinstance(value, np.ndarray)]
        derived += [(layer, v) for v, value in placed if isinstance(value, Derived)]
        if surgery.keep_layers:
            bn_layer = by_path[pair.bn_path]
            identity = _identity(bn_layer, bn)
            variables[f"{bn_layer.store_path}/vars"] = tuple(identity.values())
            written += _identity_written(bn_layer, identity)
    for path, new_values in surgery.changes.items():
        layer = by_path[path]
        object_path = moves.new_paths.get(path, layer.store_path)
        origins: list[VarOrigin] = []
        for variable in layer.variables:
            index = int(variable.dataset.rpartition("/")[2])
            value = new_values.get(variable.name)
            origins.append(index if value is None else value)
            if value is not None:
                placed_at = replace(variable, dataset=f"{object_path}/vars/{index}")
                written.append(WrittenValue(replace(layer, store_path=object_path, variables=(placed_at,)),
                                            placed_at, value, compare_layer=False))
        variables[f"{layer.store_path}/vars"] = tuple(origins)
    if surgery.optimizer is not None:
        variables[surgery.optimizer.vars_group] = surgery.optimizer.origins
    return StoreRewrite(dict(moves.renames), frozenset(moves.drops), variables), written, derived


def _identity_written(layer: Layer, identity: dict[str, np.ndarray]) -> list[WrittenValue]:
    """``--keep-layers``: the BatchNormalization's identity values, each checked."""
    return [WrittenValue(layer, v, identity[v.dataset], compare_layer=False) for v in layer.variables]


def _identity(layer: Layer, bn: BatchNormValues) -> dict[str, np.ndarray]:
    """``--keep-layers``: the BatchNormalization's new values, by dataset, in its order."""
    identity = identity_values(bn)
    by_name = {"gamma": identity.gamma, "beta": identity.beta, "moving_mean": identity.mean,
               "moving_variance": identity.variance}
    found: dict[str, np.ndarray] = {}
    for variable in layer.variables:
        value = by_name[variable.name]
        assert value is not None, "the store holds only the variables its config makes"
        found[variable.dataset] = value
    return found
