"""``equalize``: cross-layer equalization, for per-tensor quantization (Nagel et al. 2019).

BatchNormalization is folded first (:mod:`.fold`), then every conv -> f -> conv pair and
conv -> depthwise -> conv triple has its channels rescaled so that the ranges of the
layers' channels meet (:mod:`..surgery.equalization`), all from the file. ``--absorb-bias``
moves what each folded BatchNormalization says a channel always carries into the next
layer's bias; ``--relu6-to-relu`` makes ReLU6 a ReLU so MobileNet's blocks can pair.
Keras only loads the result to compare it with the original: the same function within
float32 rounding, or, when a flag changed the function, the difference measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ..errors import ConvSurgeonError
from ..model.quantization import per_tensor_sqnr_db
from ..model.structure import read_variables
from ..runtime.checks import FUNCTION_KEPT
from ..store.model_file import ModelFile
from ..store.provenance import EditRecord, EqualizeSource, FoldSource
from ..surgery.equalization import (BORDER_SHIFT_LIMIT, Edge, Kind, Scales, Stop, absorbed_amount,
                                    absorbed_bias, border_shift_ratio, find_edges, in_channels,
                                    range_spread, scaled_bias, scaled_kernel,
                                    solve_scales, without_relu6)
from ..surgery.folding import FOLDABLE_DTYPES, NotFolded, output_channels
from ..surgery.rewrite import Derived
from ..surgery.stored_graph import kernel_variable, layer_variable, store_layer
from ..transaction.transaction import WriteOptions, one_writer
from .fold import (Fold, FoldedPair, FoldSurgery, fold_slot_changes,
                   prepare_fold, write_surgery)
from .writing import CheckDefaults, WriteReport


@dataclass(frozen=True)
class EqualizedGroup:
    """Layers equalized together, and the per-tensor int8 SQNR of their kernels."""

    layers: tuple[str, ...]  # layer paths: A, B or A, D, C
    kind: Literal["pair", "triple"]
    channels: int  # channels scaled on each edge (the first edge's for a triple)
    zero_channels: int  # channels left as they were: a zero range on one side


@dataclass(frozen=True)
class KernelChange:
    """A kernel equalize changed, after folding and now: its per-tensor int8 SQNR (dB) and
    the spread of its output channels' ranges (largest / smallest nonzero)."""

    path: str
    before_db: float
    after_db: float
    spread_before: float
    spread_after: float


@dataclass(frozen=True)
class Absorbed:
    """High-bias absorption on one edge: ``channels`` of ``first`` gave up some bias."""

    first: str
    second: str
    channels: int
    border: bool  # the second layer pads with zeros: inexact where its window meets the border
    # Channels left out: at the border their absorption would move the second layer's
    # outputs by more than their own size (:data:`..surgery.equalization.BORDER_SHIFT_LIMIT`).
    kept_at_border: int = 0


@dataclass(frozen=True, kw_only=True)
class EqualizeReport(WriteReport):
    """What `equalize` folded, equalized, absorbed and left (and why), and the write."""

    folded: tuple[FoldedPair, ...]
    not_folded: tuple[NotFolded, ...]
    equalized: tuple[EqualizedGroup, ...]
    stops: tuple[Stop, ...]
    sweeps: int
    converged: bool
    relu6_replaced: tuple[str, ...]
    absorbed: tuple[Absorbed, ...]
    not_absorbed: tuple[Stop, ...]
    kernels: tuple[KernelChange, ...]

    @property
    def changed(self) -> bool:
        return bool(self.folded or self.equalized or self.relu6_replaced)

    @property
    def function_changed(self) -> bool:
        """Whether the write changes what the model computes (beyond float32 rounding): an
        edge where no channel gave up any bias changes nothing."""
        return bool(self.relu6_replaced or any(a.channels for a in self.absorbed))


@dataclass(frozen=True)
class EqualizeRequest:
    """``fold``: fold BatchNormalization first (else a conv -> BN pair is refused);
    ``relu6_to_relu`` and ``absorb_bias`` change the function, so the check measures the
    difference instead of requiring none."""

    fold: bool = True
    relu6_to_relu: bool = False
    absorb_bias: bool = False

    @property
    def checks(self) -> CheckDefaults:
        if self.relu6_to_relu or self.absorb_bias:
            return CheckDefaults(compare=True)
        return CheckDefaults(compare=True, expect_same=FUNCTION_KEPT)


@one_writer
def equalize(
    source: ModelFile,
    request: EqualizeRequest,
    options: WriteOptions,
    *,
    step: Callable[[str], None] | None = None,
) -> EqualizeReport:
    """Fold, equalize (and as ``request`` says, absorb biases and replace ReLU6) the model
    ``source``, and write it as ``options`` say."""
    surgery, report, records = _prepare(source, request, options)
    if not report.changed or options.dry_run:
        return report
    if not report.function_changed and options.smoke.enabled and options.smoke.expect_same is None:
        # The flags changed nothing (no channel gave up bias, no ReLU6): the function is kept,
        # so the check holds the written model to it.
        options = replace(options, smoke=replace(options.smoke, expect_same=FUNCTION_KEPT))
    result = write_surgery(source, surgery, records, options, step)
    return replace(report, destination=result.destination, smoke=result.smoke, smoke_skipped=result.smoke_skipped,
                   notes=report.notes + result.notes, replaced=result.replaced)


@dataclass
class _Values:
    """The kernels and biases of the layers equalize scales, as they are after the fold."""

    kernels: dict[str, np.ndarray]
    biases: dict[str, np.ndarray | None]
    kernel_names: dict[str, str]
    bn: dict[str, tuple[np.ndarray | None, np.ndarray | None]]  # folded conv -> (gamma, beta)
    folded_from: dict[str, str]  # folded conv -> its BatchNormalization


def _prepare(source: ModelFile, request: EqualizeRequest,
             options: WriteOptions) -> tuple[FoldSurgery, EqualizeReport, list[EditRecord]]:
    fold = prepare_fold(source, options, None, False, command="equalize")
    if not request.fold and fold.folds:
        pair = fold.folds[0][0]
        raise ConvSurgeonError(
            f"{source.label}: --no-fold: '{pair.conv_path}' is followed by the BatchNormalization "
            f"'{pair.bn_path}' ({len(fold.folds)} such pairs), which would stop its equalization; "
            "drop --no-fold to fold them first")
    new_config, relu6 = without_relu6(fold.new_config) if request.relu6_to_relu else (fold.new_config, [])
    search = find_edges(new_config)
    values = _read_values(source, fold, search.edges)
    edges, stops = _scalable(search.edges, values, list(search.stops))
    scales = solve_scales(edges, values.kernels)
    sides = _Sides.of(edges, scales)
    kinds = sides.kinds
    kernels, biases = _scaled(sides, values)
    absorbed: list[Absorbed] = []
    not_absorbed: list[Stop] = []
    if request.absorb_bias:
        absorbed, not_absorbed = _absorb(edges, scales, sides, values, kernels, biases)
    folded_paths = {pair.conv_path for pair, _, _ in fold.folds}
    # A layer whose every scale came out 1 (zero ranges) keeps its values: it is not written
    # (nor its optimizer slots reset) unless a fold changes it anyway.
    unscaled = [g for g in scales.groups if all(np.all(scales.edges[i] == 1.0) for i in g.edges)]
    stops += [Stop(g.layers[0], "every channel has a zero range on one side: nothing to scale") for g in unscaled]
    new_values: dict[str, dict[str, np.ndarray]] = {}
    for path, kernel in kernels.items():
        bias = biases.get(path)
        old_bias = values.biases[path]
        if path not in folded_paths and np.array_equal(kernel, values.kernels[path]) and (
                bias is None or (old_bias is not None and np.array_equal(bias, old_bias))):
            continue
        new_values[path] = {values.kernel_names[path]: kernel} | ({"bias": bias} if bias is not None else {})
    stops += _unseen(fold, edges, stops)
    records = _records(fold, scales, new_values, values,
                       {p for a in absorbed if a.channels for p in (a.first, a.second)})
    folds: list[Fold] = [(pair, dict(new_values[pair.conv_path]) if pair.conv_path in new_values else new, bn)
                         for pair, new, bn in fold.folds]
    changes = {path: new for path, new in new_values.items() if path not in folded_paths}
    optimizer = fold_slot_changes(source, fold.structure, fold.config, new_config, fold.by_path, folds,
                                  frozenset((path, name) for path, new in changes.items() for name in new))
    surgery = replace(fold, new_config=new_config, folds=folds, changes=changes, optimizer=optimizer)
    notes = fold.report.notes if fold.folds else ()
    if not scales.converged:
        notes += (f"the scales had not settled after {scales.sweeps} sweeps; the model is equalized as far as "
                  "they got (the function is kept all the same)",)
    report = EqualizeReport(
        source=source.label, destination=None, dry_run=options.dry_run,
        optimizer=optimizer.note if optimizer is not None else None, notes=notes,
        folded=fold.report.pairs, not_folded=fold.report.not_folded,
        equalized=tuple(EqualizedGroup(g.layers, g.kind, int(scales.edges[g.edges[0]].size),
                                       max(scales.zero_channels.get(i, 0) for i in g.edges))
                        for g in scales.groups if g not in unscaled),
        stops=tuple(stops), sweeps=scales.sweeps, converged=scales.converged, relu6_replaced=tuple(relu6),
        absorbed=tuple(absorbed), not_absorbed=tuple(not_absorbed),
        kernels=tuple(KernelChange(path, per_tensor_sqnr_db(values.kernels[path]), per_tensor_sqnr_db(kernel),
                                   range_spread(kinds[path], values.kernels[path]), range_spread(kinds[path], kernel))
                      for path, kernel in kernels.items() if path in new_values),
    )
    if not report.changed:
        report = replace(report, notes=report.notes + ("nothing to equalize: no pair of layers can be "
                                                       "scaled and nothing was folded; nothing was written",))
    return surgery, report, records


def _unseen(fold: FoldSurgery, edges: list[Edge], stops: list[Stop]) -> list[Stop]:
    """Every other layer with a kernel, named: one equalize cannot follow in the graph (a
    wrapper's, a custom layer's, an RNN's, an EinsumDense) is never left out silently."""
    seen = {stop.layer for stop in stops} | {edge.first_path for edge in edges}
    return [Stop(layer.path, f"a {layer.class_name} layer: equalize pairs convolutions and Dense layers it "
                             "can follow in the model's graph")
            for layer in fold.structure.layers
            if layer.path not in seen and kernel_variable(layer) is not None]


def _read_values(source: ModelFile, fold: FoldSurgery, edges: tuple[Edge, ...]) -> _Values:
    """The kernel and bias of every layer of ``edges``, folded where a fold changes them."""
    paths = list(dict.fromkeys(p for e in edges for p in (e.first_path, e.second_path)))
    layers = {path: store_layer(fold.by_path, path, source.label) for path in paths}
    kernel_vars = {path: kernel_variable(layer) for path, layer in layers.items()}
    wanted = [v for v in kernel_vars.values() if v is not None]
    wanted += [v for layer in layers.values() if (v := layer_variable(layer, "bias")) is not None]
    raw = read_variables(source, wanted)
    folds = {pair.conv_path: (pair, new, bn) for pair, new, bn in fold.folds}
    values = _Values({}, {}, {}, {}, {})
    for path, layer in layers.items():
        kernel_var = kernel_vars[path]
        if kernel_var is None:
            continue
        kernel = raw[kernel_var.dataset]
        bias_var = layer_variable(layer, "bias")
        bias = raw[bias_var.dataset] if bias_var is not None else None
        if path in folds:
            pair, new, bn = folds[path]
            derived = new.get(kernel_var.name)
            if isinstance(derived, Derived):
                kernel = derived.compute(kernel)
            folded_bias = new["bias"]
            assert isinstance(folded_bias, np.ndarray)
            bias = folded_bias
            values.bn[path] = (bn.gamma, bn.beta)
            values.folded_from[path] = pair.bn_path
        values.kernels[path] = kernel
        values.biases[path] = bias
        values.kernel_names[path] = kernel_var.name
    return values


def _scalable(edges: tuple[Edge, ...], values: _Values, stops: list[Stop]) -> tuple[list[Edge], list[Stop]]:
    """The edges whose layers hold float kernels of matching channels; the others are stops."""
    kept: list[Edge] = []
    for edge in edges:
        reason = None
        for path in (edge.first_path, edge.second_path):
            kernel = values.kernels.get(path)
            if kernel is None:
                reason = f"'{path}' has no kernel in the store"
            elif kernel.dtype.name not in FOLDABLE_DTYPES:
                reason = f"'{path}' has a kernel of {kernel.dtype.name}, which cannot be scaled exactly"
        if reason is None:
            n_out = output_channels(edge.first_kind, values.kernels[edge.first_path].shape)
            n_in = in_channels(edge.second_kind, values.kernels[edge.second_path].shape)
            if n_out != n_in:
                reason = f"its {n_out} output channels do not meet the {n_in} input channels of '{edge.second_path}'"
        if reason is None:
            kept.append(edge)
        else:
            stops.append(Stop(edge.first_path, reason))
    return kept, stops


@dataclass(frozen=True)
class _Sides:
    """Each equalized layer's kind and the scales on its two sides: its input channels are
    multiplied by ``scale_in``, its output channels divided by ``scale_out``."""

    kinds: dict[str, Kind]
    scale_in: dict[str, np.ndarray]
    scale_out: dict[str, np.ndarray]

    @classmethod
    def of(cls, edges: list[Edge], scales: Scales) -> _Sides:
        sides = cls({}, {}, {})
        for edge, s in zip(edges, scales.edges):
            sides.scale_out[edge.first_path] = s
            sides.scale_in[edge.second_path] = s
            sides.kinds[edge.first_path], sides.kinds[edge.second_path] = edge.first_kind, edge.second_kind
        return sides


def _scaled(sides: _Sides, values: _Values) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    """Every equalized layer's new kernel and bias."""
    kernels: dict[str, np.ndarray] = {}
    biases: dict[str, np.ndarray | None] = {}
    for path, kind in sides.kinds.items():
        kernels[path] = scaled_kernel(kind, values.kernels[path], sides.scale_in.get(path), sides.scale_out.get(path))
        bias = values.biases[path]
        biases[path] = scaled_bias(bias, sides.scale_out[path]) if bias is not None and path in sides.scale_out else bias
    return kernels, biases


def _absorb(edges: list[Edge], scales: Scales, sides: _Sides, values: _Values, kernels: dict[str, np.ndarray],
            biases: dict[str, np.ndarray | None]) -> tuple[list[Absorbed], list[Stop]]:
    """High-bias absorption on every edge whose first layer had a BatchNormalization folded
    into it (its statistics say what the channel carries); ``biases`` updated in place.
    Into a layer that pads with zeros, a channel is absorbed only where the second layer's
    own statistics say the border error stays below its outputs' size."""
    done: list[Absorbed] = []
    refused: list[Stop] = []
    for edge, s in zip(edges, scales.edges):
        first, second = edge.first_path, edge.second_path
        if first not in values.bn:
            refused.append(Stop(first, "no BatchNormalization was folded into it, so its statistics are unknown"))
            continue
        if edge.second_kind == "transpose":
            refused.append(Stop(first, f"'{second}' is a transposed conv: a constant input does not give it a "
                                       "constant output"))
            continue
        second_bias = biases.get(second)
        if second_bias is None:
            refused.append(Stop(first, f"'{second}' has no bias to take it"))
            continue
        gamma, beta = values.bn[first]
        if beta is None:
            refused.append(Stop(first, "its BatchNormalization has no beta (center=False): nothing to absorb"))
            continue
        c = absorbed_amount(edge.path, beta, np.ones_like(beta) if gamma is None else gamma, s)
        kept = 0
        if edge.padded and second in values.bn:
            second_gamma = values.bn[second][0]
            size = np.ones(output_channels(edge.second_kind, kernels[second].shape)) if second_gamma is None \
                else np.abs(second_gamma.astype(np.float64))
            too_far = (border_shift_ratio(edge.second_kind, kernels[second], c, size / sides.scale_out.get(second, 1.0))
                       > BORDER_SHIFT_LIMIT) & (c != 0)
            kept = int(too_far.sum())
            c = np.where(too_far, 0.0, c)
        first_bias = biases[first]
        assert first_bias is not None, "a folded conv has a bias"
        biases[first] = (first_bias.astype(np.float64) - c).astype(first_bias.dtype)
        biases[second] = absorbed_bias(edge.second_kind, second_bias, kernels[second], c)
        done.append(Absorbed(first, second, int(np.count_nonzero(c)), edge.padded, kept))
    return done, refused


def _records(fold: FoldSurgery, scales: Scales, new_values: dict[str, dict[str, np.ndarray]], values: _Values,
             absorbed: set[str]) -> list[EditRecord]:
    """The provenance of every variable written."""
    # A layer in two groups (B of A -> B -> C) took scales from both: its record names
    # every layer of them, in chain order.
    group_of: dict[str, list[str]] = {}
    for group in scales.groups:
        for path in group.layers:
            group_of[path] = list(dict.fromkeys(group_of.get(path, []) + list(group.layers)))
    records: list[EditRecord] = []
    for path, new in new_values.items():
        for name in new:
            source = EqualizeSource(equalize=group_of[path])
            if path in values.folded_from:
                source["fold"] = values.folded_from[path]
            if path in absorbed and name == "bias":
                source["absorb"] = True
            records.append(EditRecord(layer=path, variable=name, layout="keras", source=source))
    records += [EditRecord(layer=p.conv_path, variable=name, layout="keras", source=FoldSource(fold=p.bn_path))
                for p, new, _ in fold.folds if p.conv_path not in new_values for name in new]
    return records
