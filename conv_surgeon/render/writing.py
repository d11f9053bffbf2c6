"""What the writing instruments did (`set`, `apply`, `fold-bn`, `equalize`, `prune`, `port`), as tables or JSON,
each ending in the part they share: where the model went and how it was checked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ..model.naming import format_epsilon, format_shape
from .reference import print_reference, reference_document
from .text import Column, console, finite_or_none, number_or_text, plural, print_table

if TYPE_CHECKING:
    from rich.console import Console

    from ..instruments.equalize import EqualizeReport
    from ..instruments.fold import FoldedPair, FoldReport
    from ..instruments.port import PortReport
    from ..instruments.prune import PruneReport
    from ..instruments.set_weights import SetReport, SlotOutcome, VariableChange
    from ..instruments.writing import WriteReport
    from ..runtime.checks import OutputComparison, SmokeReport
    from ..surgery.folding import NotFolded


def _comparison_document(comparisons: Sequence[OutputComparison]) -> list[dict[str, Any]]:
    return [
        {"name": c.name, "max_abs": c.max_abs, "max_rel": c.max_rel, "mean_abs": c.mean_abs, "cosine": c.cosine}
        for c in comparisons
    ]


def written_document(report: WriteReport, body: dict[str, Any]) -> dict[str, Any]:
    """A writing instrument's JSON: the model read, where it went and whether this was a dry
    run; then ``body``, what the instrument did; then how the written model was checked."""
    return {
        "model": report.source,
        "output": report.destination,
        "replaced": report.replaced,
        "dry_run": report.dry_run,
        **body,
        **_smoke_document(report.smoke, report.smoke_skipped, report.dry_run or not report.changed),
    }


def set_document(report: SetReport) -> dict[str, Any]:
    layers = [{"name": x.name, "path": x.path, "class": x.class_name} for x in report.layers]
    return written_document(report, {
        "layer": layers[0],
        "layers": layers,
        "changes": [_change_document(c) for c in report.changes],
        "seed": report.seed,
        "seed_drawn": report.seed_drawn,
        "optimizer": _slots_document(report.optimizer_slots),
        **({"notes": list(report.notes)} if report.notes else {}),
    })


def _change_document(c: VariableChange) -> dict[str, Any]:
    return {"layer": c.layer, "variable": c.variable, "shape": list(c.shape), "dtype": c.dtype, "source": c.origin,
            "cast": c.cast, "notes": list(c.notes), "old_l2": c.old_l2, "new_l2": c.new_l2,
            "max_abs_change": c.max_abs_change}


def _slots_document(slots: SlotOutcome) -> dict[str, Any]:
    return {"policy": slots.policy, "state": slots.state, "class": slots.optimizer,
            "variables": list(slots.variables), "slots_reset": slots.slots_reset,
            "averages_set": slots.averages_set, "without_slots": list(slots.without_slots)}


def _slots_line(slots: SlotOutcome, dry_run: bool) -> str:
    """What became of the optimizer slots of the replaced variables, in one line."""
    if not slots.state:
        return "optimizer: no optimizer state in the file"
    name = f"optimizer ({slots.optimizer})" if slots.optimizer else "optimizer"
    if slots.policy == "keep":
        return (f"{name}: kept as it was (--optimizer keep); the slots of "
                f"{plural(len(slots.variables), 'replaced variable')} hold their old values")
    parts = []
    if slots.slots_reset:
        verb = "would reset" if dry_run else "reset"
        each = slots.slots_reset // len(slots.variables)  # every trainable variable has as many
        parts.append(f"{verb} {plural(slots.slots_reset, 'slot')} ({each} per variable) of "
                     f"{plural(len(slots.variables), 'replaced variable')} to zero")
    if slots.averages_set:
        parts.append(f"{plural(slots.averages_set, 'weight average')} (use_ema) "
                     f"{'would be ' if dry_run else ''}set to the new values")
    if slots.without_slots:
        parts.append(f"no slots for {plural(len(slots.without_slots), 'replaced variable')} (not trainable)")
    if slots.variables:
        parts.append("its iteration count kept")
    return f"{name}: {'; '.join(parts)}"


def _smoke_document(smoke: SmokeReport | None, skipped: str | None, dry_run: bool) -> dict[str, Any]:
    return {
        "smoke": None
        if smoke is None
        else {
            "passed": True,
            "inputs": [{"name": n, "shape": list(s), "origin": o}
                       for (n, s), o in zip(smoke.inputs, smoke.input_origins)],
            "checked_by": smoke.checked_by,
            "engine": smoke.engine,
            "outputs": [{"name": o.name, "shape": list(o.shape), "min": o.min, "max": o.max} for o in smoke.outputs],
            "checked_variables": smoke.checked_variables,
            "notes": list(smoke.notes),
            "comparison": _comparison_document(smoke.comparisons),
            "layer_comparison": _comparison_document(smoke.layer_comparisons),
            "expect_same": [
                {"name": c.name, "atol": c.tolerance.atol, "rtol": c.tolerance.rtol,
                 "float32_sums": c.tolerance.float32_sums, "scale": c.scale, "sums": c.sums,
                 "float32_rounding": c.rounding, "max_abs": c.max_abs, "used": c.used}
                for c in smoke.tolerance_checks
            ],
            "reference": None if smoke.reference is None else reference_document(smoke.reference),
        },
        "smoke_skipped": smoke is None and not dry_run,
        **({"smoke_skipped_reason": skipped} if skipped else {}),
    }


def _print_comparisons(out: Console, title: str, first: str, comparisons: Sequence[OutputComparison]) -> None:
    out.print(title)
    print_table(out, [Column(first, keep=False)] + [
        Column(header, right=True) for header in ("max abs err", "max rel err", "mean abs err", "cosine")
    ], [(c.name, f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", f"{c.mean_abs:.3g}", f"{c.cosine:.6f}")
        for c in comparisons])


def print_set(report: SetReport, stream: TextIO | None = None) -> None:
    """The report of `set` and `apply`: every variable changed, its old and new L2 norms."""
    out = console(stream)
    where = _where(report)
    if len(report.layers) == 1:
        layer = report.layers[0]
        what = f"layer '{layer.path}' ({layer.class_name})"
    else:
        what = plural(len(report.layers), "layer")
    out.print(f"{report.source}: {what}; {where}")
    several = len(report.layers) > 1
    columns = ([Column("layer", keep=False)] if several else []) + [
        Column("variable"), Column("shape"), Column("dtype"), Column("source", keep=False),
        Column("old L2", right=True), Column("new L2", right=True), Column("max |change|", right=True),
    ]
    rows = []
    for change in report.changes:
        row = (change.variable, format_shape(change.shape), change.dtype, change.origin,
               f"{change.old_l2:.4g}", f"{change.new_l2:.4g}", f"{change.max_abs_change:.4g}")
        rows.append(((change.layer,) if several else ()) + row)
    print_table(out, columns, rows)
    for change in report.changes:
        label = f"{change.layer} {change.variable}" if several else change.variable
        if change.cast:
            out.print(f"note: {label}: cast {change.cast}")
        for note in change.notes:
            out.print(f"note: {label}: {note}")
    if report.seed_drawn:
        out.print(f"seed: {report.seed} (drawn; pass --seed {report.seed} to repeat)")
    out.print(_slots_line(report.optimizer_slots, report.dry_run))
    _print_written_end(out, report)


def _print_smoke(out: Console, smoke: SmokeReport | None, skipped: str | None, dry_run: bool) -> None:
    if smoke is not None:
        ins = ", ".join(format_shape(s) for _, s in smoke.inputs)
        outs = ", ".join(f"{format_shape(o.shape)} in [{o.min:.4g}, {o.max:.4g}]" for o in smoke.outputs)
        checked = (f"; {plural(smoke.checked_variables, 'edited variable')} read back exactly"
                   if smoke.checked_variables else "")
        origins = list(dict.fromkeys(smoke.input_origins))
        if len(origins) == 1:
            ins = f"{ins} ({origins[0]})"
        elif origins:
            ins = ", ".join(f"{format_shape(s)} ({o})" for (_, s), o in zip(smoke.inputs, smoke.input_origins))
        out.print(f"smoke test passed ({smoke.checked_by}, {smoke.engine}): input {ins} -> "
                  f"output {outs}, all finite{checked}")
        if smoke.comparisons:
            _print_comparisons(out, "edited vs original, same inputs:", "output", smoke.comparisons)
        if smoke.layer_comparisons:
            _print_comparisons(out, "edited layers' own outputs vs original:", "layer", smoke.layer_comparisons)
        for check in smoke.tolerance_checks:
            out.print(f"{check.name} the same within {check.allowance}: max abs error {check.max_abs:.3g}, "
                      f"{check.used:.1%} of what is allowed")
        if smoke.reference is not None:
            print_reference(out, smoke.reference)
        for note in smoke.notes:
            out.print(f"note: {note}")
    elif skipped is not None:
        out.print(f"note: {skipped}")
    elif not dry_run:
        out.print("smoke test skipped (--no-smoke)")


def _folds_document(pairs: Sequence[FoldedPair], not_folded: Sequence[NotFolded]) -> dict[str, Any]:
    """`fold-bn`'s pairs, and why every other BatchNormalization was not folded (`equalize` folds first)."""
    return {
        "folded": [{"conv": p.conv, "batch_norm": p.bn, "class": p.conv_class, "channels": p.channels,
                    "bias_added": p.bias_added} for p in pairs],
        "not_folded": [{"batch_norm": r.layer, "after": r.after, "reason": r.reason} for r in not_folded],
    }


def _print_not_folded(out: Console, not_folded: Sequence[NotFolded]) -> None:
    if not_folded:
        out.print(f"not folded: {plural(len(not_folded), 'BatchNormalization')}")
        print_table(out, [Column("batch norm", keep=False), Column("why", keep=False)],
                    [(r.layer, r.reason) for r in not_folded])


def fold_document(report: FoldReport) -> dict[str, Any]:
    return written_document(report, {
        "keep_layers": report.keep_layers,
        **_folds_document(report.pairs, report.not_folded),
        "parameters": {"before": report.parameters_before, "after": report.parameters_after},
        "optimizer": report.optimizer,
        "notes": list(report.notes),
    })


def print_fold(report: FoldReport, stream: TextIO | None = None) -> None:
    """The report of `fold-bn`: the pairs folded, the BatchNormalizations left and why."""
    out = console(stream)
    where = _where(report)
    kept = ", each BatchNormalization kept as the identity" if report.keep_layers else ""
    out.print(f"{report.source}: {plural(len(report.pairs), 'pair')} folded{kept}; {where}")
    if report.pairs:
        print_table(out, [Column("conv", keep=False), Column("batch norm", keep=False), Column("class"),
                           Column("channels", right=True), Column("bias")],
                     [(p.conv, p.bn, p.conv_class, str(p.channels), "added" if p.bias_added else "updated")
                      for p in report.pairs])
    _print_not_folded(out, report.not_folded)
    if report.pairs:
        change = report.parameters_after - report.parameters_before
        out.print(f"parameters: {report.parameters_before:,} -> {report.parameters_after:,} ({change:+,})")
    _print_written_end(out, report)


def equalize_document(report: EqualizeReport) -> dict[str, Any]:
    return written_document(report, {
        **_folds_document(report.folded, report.not_folded),
        "equalized": [{"layers": list(g.layers), "kind": g.kind, "channels": g.channels,
                       "zero_channels": g.zero_channels} for g in report.equalized],
        "stops": [{"layer": s.layer, "reason": s.reason} for s in report.stops],
        "sweeps": report.sweeps,
        "converged": report.converged,
        "relu6_replaced": list(report.relu6_replaced),
        "absorbed": [{"from": a.first, "to": a.second, "channels": a.channels, "border": a.border,
                      "kept_at_border": a.kept_at_border} for a in report.absorbed],
        "not_absorbed": [{"layer": s.layer, "reason": s.reason} for s in report.not_absorbed],
        "function_changed": report.function_changed,
        # As `inspect --quant` names them: `path`, `sqnr_per_tensor_db` (int8), `range_ratio`.
        "kernels": [{"path": k.path,
                     "sqnr_per_tensor_db": {"before": number_or_text(k.before_db), "after": number_or_text(k.after_db)},
                     "range_ratio": {"before": finite_or_none(k.spread_before), "after": finite_or_none(k.spread_after)}}
                    for k in report.kernels],
        "optimizer": report.optimizer,
        "notes": list(report.notes),
    })


def print_equalize(report: EqualizeReport, stream: TextIO | None = None) -> None:
    """The report of `equalize`: the groups equalized, what stopped the others and why, the
    biases absorbed, and how much a per-tensor int8 kernel gained."""
    out = console(stream)
    triples = sum(1 for g in report.equalized if g.kind == "triple")
    kinds = f" ({plural(triples, 'triple')}, {plural(len(report.equalized) - triples, 'pair')})" if triples else ""
    folded = f"{plural(len(report.folded), 'BatchNormalization')} folded first; " if report.folded else ""
    sweeps = f" in {plural(report.sweeps, 'sweep')}" if report.equalized else ""
    out.print(f"{report.source}: {plural(len(report.equalized), 'group')} equalized{kinds}{sweeps}; {folded}"
              f"{_where(report)}")
    if report.equalized:
        print_table(out, [Column("layers", keep=False), Column("kind"), Column("channels", right=True)],
                    [(" -> ".join(g.layers), g.kind,
                      str(g.channels) + (f" ({g.zero_channels} left: zero range)" if g.zero_channels else ""))
                     for g in report.equalized])
    if report.stops:
        out.print(f"not equalized: the output of {plural(len(report.stops), 'layer')}")
        print_table(out, [Column("layer", keep=False), Column("why", keep=False)],
                    [(s.layer, s.reason) for s in report.stops])
    _print_not_folded(out, report.not_folded)
    if report.relu6_replaced:
        out.print(f"ReLU6 replaced by ReLU in {plural(len(report.relu6_replaced), 'layer')} "
                  "(--relu6-to-relu: a change of function, measured below)")
    absorbed = [a for a in report.absorbed if a.channels]
    if absorbed:
        channels = sum(a.channels for a in absorbed)
        out.print(f"bias absorbed on {plural(len(absorbed), 'edge')} ({plural(channels, 'channel')}; "
                  "exact where the activation stays above what was taken, measured below)")
        border = [a.second for a in absorbed if a.border]
        if border:
            out.print(f"note: inexact where zero padding meets the border in {plural(len(border), 'layer')} "
                      f"({_names(border)})")
        kept = [a for a in report.absorbed if a.kept_at_border]
        if kept:
            out.print(f"note: {plural(sum(a.kept_at_border for a in kept), 'channel')} kept their bias: at the "
                      "border of the next layer their absorption would move its outputs by more than their own "
                      f"size ({_names([a.first + ' -> ' + a.second for a in kept])})")
    if report.not_absorbed:
        out.print(f"bias not absorbed on {plural(len(report.not_absorbed), 'edge')}")
        print_table(out, [Column("layer", keep=False), Column("why", keep=False)],
                    [(s.layer, s.reason) for s in report.not_absorbed])
    if report.kernels:
        spread = _spread_line(report)
        if spread is not None:
            out.print(spread)
        out.print(_sqnr_line(report))
    _print_written_end(out, report)


def _spread_line(report: EqualizeReport) -> str | None:
    """How far apart the changed kernels' output channel ranges are, before and after."""
    pairs = [(k.spread_before, k.spread_after) for k in report.kernels
             if math.isfinite(k.spread_before) and math.isfinite(k.spread_after)]
    if not pairs:
        return None
    before = sorted(b for b, _ in pairs)[len(pairs) // 2]
    after = sorted(a for _, a in pairs)[len(pairs) // 2]
    worst = max(report.kernels, key=lambda k: k.spread_before if math.isfinite(k.spread_before) else 0.0)
    return (f"channel range spread (largest / smallest) of the {plural(len(pairs), 'kernel')} changed: median "
            f"{before:,.3g}x -> {after:,.3g}x; widest before: {worst.path} {worst.spread_before:,.3g}x -> "
            f"{worst.spread_after:,.3g}x")


def _sqnr_line(report: EqualizeReport) -> str:
    """The per-tensor int8 SQNR of the changed kernels before and after, in one line."""
    finite = [k for k in report.kernels if math.isfinite(k.before_db) and math.isfinite(k.after_db)]
    if not finite:
        return f"per-tensor int8 SQNR: {plural(len(report.kernels), 'kernel')} changed, each exact either way"
    before = sorted(k.before_db for k in finite)
    after = sorted(k.after_db for k in finite)
    worst = min(finite, key=lambda k: k.before_db)
    return (f"per-tensor int8 SQNR of the {plural(len(finite), 'kernel')} changed: median "
            f"{before[len(before) // 2]:.1f} dB -> {after[len(after) // 2]:.1f} dB; worst before: "
            f"{worst.path} {worst.before_db:.1f} dB -> {worst.after_db:.1f} dB")


def _names(paths: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def prune_document(report: PruneReport) -> dict[str, Any]:
    return written_document(report, {
        "criterion": report.criterion,
        "groups": [{"members": list(g.members), "channels": g.channels, "removed": list(g.removed),
                    "kept": g.channels - len(g.removed)} for g in report.groups],
        "not_pruned": [{"members": list(r.members), "reason": r.reason} for r in report.not_pruned],
        "layers": [{"layer": layer.path, "class": layer.class_name,
                    "variables": {v.name: {"before": list(v.before), "after": list(v.after),
                                           "removed": {str(axis): list(i) for axis, i in v.removed}}
                                  for v in layer.variables},
                    **({"target_shape": {"before": list(layer.target_shape[0]), "after": list(layer.target_shape[1])}}
                       if layer.target_shape else {})} for layer in report.layers],
        "parameters": {"before": report.parameters_before, "after": report.parameters_after},
        "macs": {"before": report.macs_before, "after": report.macs_after},
        "optimizer": report.optimizer,
        "notes": list(report.notes),
    })


def print_prune(report: PruneReport, stream: TextIO | None = None) -> None:
    """The report of `prune`: the groups pruned, every layer changed, what was not pruned and why."""
    out = console(stream)
    where = _where(report)
    removed = sum(len(g.removed) for g in report.groups)
    out.print(f"{report.source}: {plural(removed, 'filter')} removed from {plural(len(report.groups), 'group')} "
              f"({report.criterion}); {where}")
    if report.groups:
        print_table(out, [Column("group (convs)", keep=False), Column("filters", right=True),
                           Column("removed", keep=False)],
                     [(_group_name(g.members), f"{g.channels} -> {g.channels - len(g.removed)}",
                       _indices(g.removed)) for g in report.groups])
        out.print(f"layers changed: {len(report.layers)}")
        # One row per layer, a line per variable: a narrow terminal then shows one block
        # per layer, not one per variable.
        print_table(out, [Column("layer", keep=False), Column("class"), Column("shapes", keep=False)],
                     [(layer.path, layer.class_name, "\n".join(
                         [f"{v.name} {format_shape(v.before)} -> {format_shape(v.after)}" for v in layer.variables]
                         + ([f"target_shape {format_shape(layer.target_shape[0])} -> "
                             f"{format_shape(layer.target_shape[1])}"] if layer.target_shape else [])))
                      for layer in report.layers])
    if report.not_pruned:
        out.print(f"not pruned: {plural(len(report.not_pruned), 'group')}")
        print_table(out, [Column("group (convs)", keep=False), Column("why", keep=False)],
                     [(_group_name(r.members), r.reason) for r in report.not_pruned])
    if report.groups:
        for what, before, after in (("parameters", report.parameters_before, report.parameters_after),
                                    ("MACs", report.macs_before, report.macs_after)):
            change = after - before
            share = f", {change / before:+.1%}" if before else ""
            out.print(f"{what}: {before:,} -> {after:,} ({change:+,}{share})")
    _print_written_end(out, report)


def port_document(report: PortReport) -> dict[str, Any]:
    return written_document(report, {
        "state": {"file": report.state, "sha256": report.state_sha256, "format": report.state_format},
        "order": report.order,
        "mapping": [{"source": t.source, "source_shape": list(t.source_shape), "layer": t.layer,
                     "variable": t.variable, "shape": list(t.shape), "transform": t.transform,
                     "mapped_by": t.mapped_by} for t in report.tensors],
        "layers_ported": report.layers_ported,
        "skipped": list(report.skipped),
        "left_in_state": [{"name": t.name, "shape": list(t.shape)} for t in report.left_in_state],
        "left_in_model": [{"layer": x.path, "class": x.class_name,
                           "variables": {name: list(shape) for name, shape in x.variables}, "reason": x.reason}
                          for x in report.left_in_model],
        "partial": report.partial,
        "bn_epsilon": [{"layer": e.layer, "before": e.before, "after": e.after} for e in report.epsilon],
        "mismatches": [{"layer": m.layer, "problem": m.problem, "fix": m.fix} for m in report.mismatches],
        "refusals": list(report.refusals),
        "changes": [_change_document(c) for c in report.changes],
        "optimizer": _slots_document(report.optimizer_slots),
        "notes": list(report.notes),
    })


def print_port(report: PortReport, stream: TextIO | None = None) -> None:
    """The report of `port`: every source tensor and the variable it went into, what was
    left on either side, the epsilon rewritten, what Keras computes otherwise than PyTorch."""
    out = console(stream)
    what = (f"{plural(len(report.tensors), 'tensor')} of {report.state} into "
            f"{plural(report.layers_ported, 'layer')}")
    out.print(f"{report.source}: {what}; {_where(report)}")
    print_table(out, [Column("source", keep=False), Column("shape"), Column("layer", keep=False),
                      Column("variable"), Column("shape"), Column("transform", keep=False)],
                [(t.source + (f" ({t.mapped_by})" if t.mapped_by else ""), format_shape(t.source_shape), t.layer,
                  t.variable, format_shape(t.shape), t.transform) for t in report.tensors])
    if report.skipped:
        out.print(f"skipped: {plural(len(report.skipped), 'num_batches_tracked tensor')} (Keras keeps no batch count)")
    if report.left_in_state:
        written = " (not written: --allow-partial)" if report.partial else ""
        out.print(f"left over in {report.state}: {plural(len(report.left_in_state), 'tensor')}{written}")
        print_table(out, [Column("source", keep=False), Column("shape")],
                    [(t.name, format_shape(t.shape)) for t in report.left_in_state])
    if report.left_in_model:
        out.print(f"left as they were in the model: {plural(len(report.left_in_model), 'layer')}")
        print_table(out, [Column("layer", keep=False), Column("class"), Column("variables"),
                          Column("why", keep=False)],
                    [(x.path, x.class_name, "\n".join(f"{name} {format_shape(shape)}" for name, shape in x.variables),
                      x.reason or "no tensor left over fits it") for x in report.left_in_model])
    if report.epsilon:
        verb = "would set" if report.dry_run else "set"
        out.print(f"BatchNormalization epsilon: {verb} in the config of {plural(len(report.epsilon), 'layer')} "
                  "(--bn-epsilon)")
        print_table(out, [Column("layer", keep=False), Column("before", right=True), Column("after", right=True)],
                    [(e.layer, format_epsilon(e.before), format_epsilon(e.after)) for e in report.epsilon])
    if report.mismatches:
        out.print(f"warning: {plural(len(report.mismatches), 'layer')} will compute otherwise than PyTorch:")
        print_table(out, [Column("layer", keep=False), Column("why", keep=False), Column("fix", keep=False)],
                    [(m.layer, m.problem, m.fix) for m in report.mismatches])
    for refusal in report.refusals:
        out.print(f"would refuse: {refusal}")
    if report.changes:
        out.print(_slots_line(report.optimizer_slots, report.dry_run))
    _print_written_end(out, report)


def _print_written_end(out: Console, report: WriteReport) -> None:
    """The end every writing report shares: the optimizer state, the notes, and (when
    anything was changed) how the written model was checked."""
    if report.optimizer:
        out.print(report.optimizer)
    for note in report.notes:
        out.print(f"note: {note}")
    if report.changed:
        _print_smoke(out, report.smoke, report.smoke_skipped, report.dry_run)


def _where(report: WriteReport) -> str:
    if report.dry_run:
        return "would write (dry run)" if report.changed else "nothing to write (dry run)"
    if not report.destination:
        return "nothing written"
    return f"wrote {report.destination}" + (f" (replaced existing {report.destination})" if report.replaced else "")


def _group_name(members: Sequence[str]) -> str:
    return members[0] if len(members) == 1 else f"{members[0]} +{len(members) - 1}"


def _indices(indices: Sequence[int], shown: int = 12) -> str:
    text = ", ".join(str(i) for i in indices[:shown])
    return text + (f", ... ({len(indices)})" if len(indices) > shown else "")
