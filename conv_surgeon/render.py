"""Results to rich tables for people and JSON for programs. The only module that prints."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from .model.catalogue import main_config
from .model.structure import Layer
from .model.naming import format_shape
from .instruments.reading import InspectReport, VariableStats, WeightsExport

if TYPE_CHECKING:
    # rich is imported when a console is first made (26 ms): `show -o` and `get` print
    # one plain line and never need it.
    from rich.console import Console
    from rich.table import Table

    from .instruments.diff import DiffReport
    from .instruments.fold import FoldReport
    from .instruments.prune import PruneReport
    from .instruments.set_weights import SetReport
    from .pictures.picture import DrawnVariable, Picture
    from .runtime.checks import OutputComparison, SmokeReport

SCHEMA_VERSION = 1


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # The reader went away (`| head`): stop quietly with the pipe's status, as
            # other filters do, instead of rich's generic exit 1.
            self.quiet = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(141)

    return _Console


def console(stream: TextIO | None = None) -> Console:
    """A console on ``stream``. Paths and layer names are data, never rich markup.

    The width is ``COLUMNS`` when set (as ``ls`` reads it), else the terminal's; off a
    terminal, lines are as long as the table needs (logs and pipes cut nothing). Output
    is plain text, without colour or bold, off a terminal and whenever ``NO_COLOR`` is set
    (rich itself drops only the colours for ``NO_COLOR``).
    """
    stream = stream or sys.stdout
    is_tty = stream.isatty()
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else (None if is_tty else 100_000)
    plain = not is_tty or os.environ.get("NO_COLOR", "") != ""
    return _console_class()(file=stream, width=width, highlight=False, markup=False, emoji=False,
                    soft_wrap=False, color_system=None if plain else "auto")


def print_line(text: str, stream: TextIO | None = None) -> None:
    """One line of plain text (stderr by default): what a command wrote, a note. No
    console needed, so no rich import for commands that say only this much."""
    out = stream or sys.stderr
    out.write(text + "\n")
    out.flush()


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 convolution layer``, ``3 convolution layers``, ``1,234 parameters``."""
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count:,} {word}"


@dataclass(frozen=True)
class _Column:
    header: str
    keep: bool = True  # shapes, numbers, classes: never wrapped, never cut
    right: bool = False


# A column that may fold (paths, sources, config) keeps at least this many characters
# before the table is allowed to run past the console's width.
_FOLDED_MIN = 4


def _table(columns: Sequence[_Column], rows: Sequence[Sequence[str]], compact: bool) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True) if compact else Table()
    for column in columns:
        table.add_column(column.header, no_wrap=column.keep, overflow="ellipsis" if column.keep else "fold",
                         justify="right" if column.right else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _print_table(out: Console, columns: Sequence[_Column], rows: Sequence[Sequence[str]]) -> None:
    """A table whose kept columns are never cut.

    When the boxed table is wider than the console, a compact one without the outer box
    is printed instead, and the other columns fold to make room; when even that is not
    enough, the table runs past the width (the terminal wraps it) rather than lose a
    digit of a shape.
    """

    from rich.cells import cell_len

    def widest(index: int) -> int:
        texts = [columns[index].header] + [row[index] for row in rows]
        return max(cell_len(line) for text in texts for line in text.split("\n"))

    widths = [widest(i) for i in range(len(columns))]
    width = out.width
    # The boxed table: a border and two spaces of padding around each cell.
    compact = sum(widths) + 3 * len(columns) + 1 > width
    # The compact one: two characters between columns, nothing at the edges.
    needed = 2 * (len(columns) - 1) + sum(
        w if column.keep else min(w, _FOLDED_MIN) for w, column in zip(widths, columns)
    )
    table = _table(columns, rows, compact)
    if compact and needed > width:
        out.width = needed
    try:
        out.print(table)
    finally:
        out.width = width


def print_json(document: dict[str, Any], stream: TextIO | None = None) -> None:
    """One JSON object, data at the top level and the schema version beside it."""
    out = stream or sys.stdout
    out.write(json.dumps({"schema": SCHEMA_VERSION, **document}, indent=2, default=_json_default))
    out.write("\n")


def print_json_schema(schema: dict[str, Any], stream: TextIO | None = None) -> None:
    """A JSON Schema as it is: it is a document of its own, not one of ours."""
    out = stream or sys.stdout
    out.write(json.dumps(schema, indent=2))
    out.write("\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _finite_or_none(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def stats_document(stats: VariableStats) -> dict[str, Any]:
    return {
        "min": _finite_or_none(stats.min),
        "max": _finite_or_none(stats.max),
        "mean": _finite_or_none(stats.mean),
        "std": _finite_or_none(stats.std),
        "l2": _finite_or_none(stats.l2),
        "zeros": stats.zeros,
        "nonfinite": stats.nonfinite,
    }


def layer_document(layer: Layer, stats: dict[str, VariableStats] | None = None) -> dict[str, Any]:
    weights: dict[str, Any] = {}
    for variable in layer.variables:
        entry: dict[str, Any] = {"shape": list(variable.shape), "dtype": variable.dtype}
        if stats is not None:
            entry["stats"] = stats_document(stats[variable.dataset])
        weights[variable.name] = entry
    return {
        "name": layer.name,
        "path": layer.path,
        "class": layer.class_name,
        "class_from": layer.class_source if layer.class_source != "config" else "config",
        **({"class_inferred_from": layer.inferred_from} if layer.inferred_from else {}),
        "store_path": layer.store_path,
        **({"alias": layer.alias} if layer.alias else {}),
        "weights": weights,
        "parameters": layer.parameters,
        "config": main_config(layer.config),
    }


def inspect_document(report: InspectReport) -> dict[str, Any]:
    structure = report.structure
    return {
        "model": report.source,
        "format": structure.format,
        "keras_version": structure.keras_version,
        "model_name": structure.model_name,
        "model_class": structure.model_class,
        "layers": [layer_document(layer, report.stats) for layer in report.layers],
        "totals": {
            "layers": len(report.layers),
            "parameters": report.total_parameters,
            "variables": sum(len(layer.variables) for layer in report.layers),
            "store_variables": structure.variable_count + len(structure.unplaced),
            "optimizer_variables": structure.optimizer_variables,
            "unplaced": list(structure.unplaced),
        },
        **({"config_from": structure.config_source} if structure.config_source else {}),
        **({"history": report.history} if report.history is not None else {}),
    }


def _config_summary(config: dict[str, Any]) -> str:
    """The config in a few words; defaults (stride 1, no dilation, one group) are left out."""

    def dims(value: Any) -> str:
        return "x".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)

    def is_one(value: Any) -> bool:
        return all(v == 1 for v in value) if isinstance(value, (list, tuple)) else value == 1

    shown = main_config(config)
    parts = []
    if "filters" in shown:
        parts.append(f"filters={shown['filters']}")
    if "kernel_size" in shown:
        parts.append(f"kernel={dims(shown['kernel_size'])}")
    for key, label in (("strides", "strides"), ("dilation_rate", "dilation"), ("groups", "groups"),
                       ("depth_multiplier", "multiplier")):
        if key in shown and not is_one(shown[key]):
            parts.append(f"{label}={dims(shown[key])}")
    if "padding" in shown:
        parts.append(str(shown["padding"]))
    if shown.get("activation") not in (None, "linear"):
        parts.append(str(shown["activation"]))
    if shown.get("use_bias") is False:
        parts.append("no bias")
    if shown.get("data_format") == "channels_first":
        parts.append("channels_first")
    return " ".join(parts)


def render_inspect(report: InspectReport, stream: TextIO | None = None) -> None:
    out = console(stream)
    structure = report.structure
    every_layer = report.layers is structure.layers
    title = (
        f"{report.source}: {structure.model_class}"
        + (f" '{structure.model_name}'" if structure.model_name else "")
        + f" ({structure.format}, Keras {structure.keras_version or 'unknown'})"
    )
    out.print(title)
    rows = []
    for layer in report.layers:
        weights = "\n".join(f"{v.name} {format_shape(v.shape)} {v.dtype}" for v in layer.variables)
        class_text = layer.class_name + ("*" if layer.class_source != "config" else "")
        rows.append((layer.path, class_text, weights, _config_summary(layer.config)))
    # Shapes and classes are what the table is for; paths and the config fold instead.
    _print_table(out, [_Column("layer", keep=False), _Column("class"), _Column("weights"),
                       _Column("config", keep=False)], rows)
    inferred = [layer for layer in report.layers if layer.class_source != "config"]
    for layer in inferred:
        source = layer.inferred_from or "nothing: the store names no class and its shapes fit several"
        out.print(f"* {layer.path}: class inferred from {source}")
    if report.stats is not None:
        out.print("weight statistics")
        stats_rows = []
        for layer in report.layers:
            for v in layer.variables:
                s = report.stats[v.dataset]
                stats_rows.append((
                    layer.path, v.name, f"{s.min:.4g}", f"{s.max:.4g}", f"{s.mean:.4g}",
                    f"{s.std:.4g}", f"{s.l2:.4g}", str(s.zeros), str(s.nonfinite),
                ))
        _print_table(out, [_Column("layer", keep=False), _Column("variable", keep=False)] + [
            _Column(header, right=True) for header in ("min", "max", "mean", "std", "L2", "zeros", "non-finite")
        ], stats_rows)
    kind = plural(len(report.layers), "layer with weights", "layers with weights") if every_layer else plural(
        len(report.layers), "convolution layer")
    out.print(f"{kind}, {plural(report.total_parameters, 'parameter')}")
    if every_layer:
        # Account for every variable of the store, so that nothing is silently left out.
        out.print(
            f"{plural(structure.variable_count, 'variable')} in {plural(len(structure.layers), 'layer')}; "
            f"{plural(structure.optimizer_variables, 'optimizer variable')}; "
            f"{len(structure.unplaced)} not placed on a layer"
        )
    warn = console(sys.stderr)
    for dataset in structure.unplaced:
        warn.print(f"warning: {dataset} belongs to no layer conv-surgeon could place")
    if report.history is not None:
        render_history(report.history, out)


def _source_text(source: dict[str, Any]) -> str:
    if "fold" in source:
        return f"folded {source['fold']}"
    if "init" in source:
        seed = source.get("seed")
        return f"init {source['init']}" + (f" (seed {seed})" if seed is not None else "")
    what = source.get("file") or source.get("from") or "?"
    digest = source.get("sha256")
    return f"{what} (sha256 {digest[:12]}…)" if digest else str(what)


def render_history(history: list[dict[str, Any]], out: Console) -> None:
    if not history:
        out.print("history: no edits recorded by conv-surgeon")
        return
    out.print(f"history: {plural(len(history), 'write')} by conv-surgeon")
    rows = []
    for number, record in enumerate(history, 1):
        edits = record.get("edits") or [{}]
        for i, edit in enumerate(edits):
            first = i == 0
            rows.append((
                str(number) if first else "", str(record.get("time", "")) if first else "",
                str(record.get("version", "")) if first else "", str(edit.get("layer", "")),
                str(edit.get("variable", "")), str(edit.get("layout", "")),
                _source_text(edit.get("source") or {}),
            ))
    _print_table(out, [_Column("#"), _Column("time"), _Column("version"), _Column("layer", keep=False),
                       _Column("variable"), _Column("layout"), _Column("source", keep=False)], rows)
    for number, record in enumerate(history, 1):
        command = " ".join(str(part) for part in record.get("command") or [])
        if command:
            out.print(f"#{number} $ {command}")


def _comparison_document(comparisons: Sequence[OutputComparison]) -> list[dict[str, Any]]:
    return [
        {"name": c.name, "max_abs": c.max_abs, "max_rel": c.max_rel, "mean_abs": c.mean_abs, "cosine": c.cosine}
        for c in comparisons
    ]


def set_document(report: SetReport) -> dict[str, Any]:
    smoke = report.smoke
    layers = [{"name": x.name, "path": x.path, "class": x.class_name} for x in report.layers]
    return {
        "model": report.source,
        "output": report.destination,
        "dry_run": report.dry_run,
        "layer": layers[0],
        "layers": layers,
        "changes": [
            {
                "layer": c.layer,
                "variable": c.variable,
                "shape": list(c.shape),
                "dtype": c.dtype,
                "source": c.origin,
                "cast": c.cast,
                "notes": list(c.notes),
                "old_l2": c.old_l2,
                "new_l2": c.new_l2,
                "max_abs_change": c.max_abs_change,
            }
            for c in report.changes
        ],
        "seed": report.seed,
        "seed_drawn": report.seed_drawn,
        **_smoke_document(smoke, report.smoke_skipped, report.dry_run),
    }


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
        },
        "smoke_skipped": smoke is None and not dry_run,
        **({"smoke_skipped_reason": skipped} if skipped else {}),
    }


def _print_comparisons(out: Console, title: str, first: str, comparisons: Sequence[OutputComparison]) -> None:
    out.print(title)
    _print_table(out, [_Column(first, keep=False)] + [
        _Column(header, right=True) for header in ("max abs err", "max rel err", "mean abs err", "cosine")
    ], [(c.name, f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", f"{c.mean_abs:.3g}", f"{c.cosine:.6f}")
        for c in comparisons])


def render_set_report(report: SetReport, stream: TextIO | None = None) -> None:
    out = console(stream)
    where = "would write (dry run)" if report.dry_run else f"wrote {report.destination}"
    if len(report.layers) == 1:
        layer = report.layers[0]
        what = f"layer '{layer.path}' ({layer.class_name})"
    else:
        what = plural(len(report.layers), "layer")
    out.print(f"{report.source}: {what}; {where}")
    several = len(report.layers) > 1
    columns = ([_Column("layer", keep=False)] if several else []) + [
        _Column("variable"), _Column("shape"), _Column("dtype"), _Column("source", keep=False),
        _Column("old L2", right=True), _Column("new L2", right=True), _Column("max |change|", right=True),
    ]
    rows = []
    for change in report.changes:
        row = (change.variable, format_shape(change.shape), change.dtype, change.origin,
               f"{change.old_l2:.4g}", f"{change.new_l2:.4g}", f"{change.max_abs_change:.4g}")
        rows.append(((change.layer,) if several else ()) + row)
    _print_table(out, columns, rows)
    for change in report.changes:
        label = f"{change.layer} {change.variable}" if several else change.variable
        if change.cast:
            out.print(f"note: {label}: cast {change.cast}")
        for note in change.notes:
            out.print(f"note: {label}: {note}")
    if report.seed_drawn:
        out.print(f"seed: {report.seed} (drawn; pass --seed {report.seed} to repeat)")
    _print_smoke(out, report.smoke, report.smoke_skipped, report.dry_run)


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
        for note in smoke.notes:
            out.print(f"note: {note}")
    elif skipped is not None:
        out.print(f"note: {skipped}")
    elif not dry_run:
        out.print("smoke test skipped (--no-smoke)")


def fold_document(report: FoldReport) -> dict[str, Any]:
    return {
        "model": report.source,
        "output": report.destination,
        "dry_run": report.dry_run,
        "keep_layers": report.keep_layers,
        "folded": [{"conv": p.conv, "batch_norm": p.bn, "class": p.conv_class, "channels": p.channels,
                    "bias_added": p.bias_added} for p in report.pairs],
        "not_folded": [{"batch_norm": r.layer, "after": r.after, "reason": r.reason} for r in report.not_folded],
        "parameters": {"before": report.parameters_before, "after": report.parameters_after},
        "optimizer": report.optimizer,
        "notes": list(report.notes),
        **_smoke_document(report.smoke, report.smoke_skipped, report.dry_run or not report.pairs),
    }


def render_fold_report(report: FoldReport, json_output: bool, stream: TextIO) -> None:
    """The report of `fold-bn`: the pairs folded, the BatchNormalizations left and why."""
    if json_output:
        print_json(fold_document(report), stream)
        return
    out = console(stream)
    where = _where(report.dry_run, report.destination)
    kept = ", each BatchNormalization kept as the identity" if report.keep_layers else ""
    out.print(f"{report.source}: {plural(len(report.pairs), 'pair')} folded{kept}; {where}")
    if report.pairs:
        _print_table(out, [_Column("conv", keep=False), _Column("batch norm", keep=False), _Column("class"),
                           _Column("channels", right=True), _Column("bias")],
                     [(p.conv, p.bn, p.conv_class, str(p.channels), "added" if p.bias_added else "updated")
                      for p in report.pairs])
    if report.not_folded:
        out.print(f"not folded: {plural(len(report.not_folded), 'BatchNormalization')}")
        _print_table(out, [_Column("batch norm", keep=False), _Column("why", keep=False)],
                     [(r.layer, r.reason) for r in report.not_folded])
    if report.pairs:
        change = report.parameters_after - report.parameters_before
        out.print(f"parameters: {report.parameters_before:,} -> {report.parameters_after:,} ({change:+,})")
    _print_rewrite_end(out, report, bool(report.pairs))


def prune_document(report: PruneReport) -> dict[str, Any]:
    return {
        "model": report.source,
        "output": report.destination,
        "dry_run": report.dry_run,
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
        **_smoke_document(report.smoke, report.smoke_skipped, report.dry_run or not report.groups),
    }


def render_prune_report(report: PruneReport, json_output: bool, stream: TextIO) -> None:
    """The report of `prune`: the groups pruned, every layer changed, what was not pruned and why."""
    if json_output:
        print_json(prune_document(report), stream)
        return
    out = console(stream)
    where = _where(report.dry_run, report.destination)
    removed = sum(len(g.removed) for g in report.groups)
    out.print(f"{report.source}: {plural(removed, 'filter')} removed from {plural(len(report.groups), 'group')} "
              f"({report.criterion}); {where}")
    if report.groups:
        _print_table(out, [_Column("group (convs)", keep=False), _Column("filters", right=True),
                           _Column("removed", keep=False)],
                     [(_group_name(g.members), f"{g.channels} -> {g.channels - len(g.removed)}",
                       _indices(g.removed)) for g in report.groups])
        out.print(f"layers changed: {len(report.layers)}")
        _print_table(out, [_Column("layer", keep=False), _Column("class"), _Column("variable"),
                           _Column("before"), _Column("after")],
                     [(layer.path, layer.class_name, v.name, format_shape(v.before), format_shape(v.after))
                      for layer in report.layers for v in layer.variables]
                     + [(layer.path, layer.class_name, "target_shape", format_shape(layer.target_shape[0]),
                         format_shape(layer.target_shape[1])) for layer in report.layers if layer.target_shape])
    if report.not_pruned:
        out.print(f"not pruned: {plural(len(report.not_pruned), 'group')}")
        _print_table(out, [_Column("group (convs)", keep=False), _Column("why", keep=False)],
                     [(_group_name(r.members), r.reason) for r in report.not_pruned])
    if report.groups:
        for what, before, after in (("parameters", report.parameters_before, report.parameters_after),
                                    ("MACs", report.macs_before, report.macs_after)):
            change = after - before
            share = f", {change / before:+.1%}" if before else ""
            out.print(f"{what}: {before:,} -> {after:,} ({change:+,}{share})")
    _print_rewrite_end(out, report, bool(report.groups))


def _print_rewrite_end(out: Console, report: FoldReport | PruneReport, changed: bool) -> None:
    """The end of a graph surgery's report: the optimizer state, the notes, and the check
    (when anything was changed)."""
    if report.optimizer:
        out.print(report.optimizer)
    for note in report.notes:
        out.print(f"note: {note}")
    if changed:
        _print_smoke(out, report.smoke, report.smoke_skipped, report.dry_run)


def _where(dry_run: bool, destination: str | None) -> str:
    return "would write (dry run)" if dry_run else f"wrote {destination}" if destination else "nothing written"


def _group_name(members: Sequence[str]) -> str:
    return members[0] if len(members) == 1 else f"{members[0]} +{len(members) - 1}"


def _indices(indices: Sequence[int], shown: int = 12) -> str:
    text = ",".join(str(i) for i in indices[:shown])
    return text + (f",... ({len(indices)})" if len(indices) > shown else "")


def render_write_report(report: SetReport, json_output: bool, stream: TextIO) -> None:
    """The report of `set` and `apply`, as a table or one JSON object, on ``stream``."""
    if json_output:
        print_json(set_document(report), stream)
    else:
        render_set_report(report, stream)


def render_export(export: WeightsExport, output: str | None, bundle: bool) -> None:
    """What `get` wrote, on stderr: its notes, and the file's content unless it went to stdout."""
    for note in export.notes:
        print_line(f"note: {note}")
    if output is None:
        return
    if bundle:
        what = plural(len(export.arrays), "array")
    else:
        what = export.layers[0].path + " " + ", ".join(
            f"{name} {format_shape(a.shape)}" for name, a in export.arrays.items())
    print_line(f"wrote {output}: {what}")


def _drawn_document(drawn: DrawnVariable) -> dict[str, Any]:
    document: dict[str, Any] = {
        "layer": drawn.layer,
        "class": drawn.class_name,
        "variable": drawn.variable,
        "shape": list(drawn.shape),
        "dtype": drawn.dtype,
        "stats": None if drawn.stats is None else stats_document(drawn.stats),
    }
    if drawn.against_stats is not None and drawn.difference_stats is not None:
        document["against_stats"] = stats_document(drawn.against_stats)
        document["difference_stats"] = stats_document(drawn.difference_stats)
    if drawn.tiles is not None:
        document.update({"tiles": drawn.tiles, "shows": drawn.shows, "range": [-(drawn.scale or 0.0), drawn.scale],
                         "scale": "layer" if drawn.tile_scales is None else "each"})
        if drawn.tile_scales is not None:
            document["tile_ranges"] = [[-m, m] for m in drawn.tile_scales]
        if drawn.tile_boxes is not None:
            document["tile_boxes"] = dict(zip(("model", "against", "difference"),
                                              ([list(box) for box in boxes] for boxes in drawn.tile_boxes)))
        document["notes"] = list(drawn.notes)
    return document


def picture_document(picture: Picture, output: str) -> dict[str, Any]:
    height, width = picture.height, picture.width
    return {
        "model": picture.source,
        "against": picture.against,
        "output": output,
        "kind": picture.kind,
        "width": int(width),
        "height": int(height),
        "variables": [_drawn_document(drawn) for drawn in picture.variables],
    }


def render_picture(picture: Picture, output: str, json_output: bool) -> None:
    """What `show` wrote: one JSON object (on stderr when the PNG went to stdout), or, as
    `get` says what it wrote, a line on stderr unless the PNG went to stdout."""
    if json_output:
        print_json(picture_document(picture, output), sys.stderr if output == "-" else sys.stdout)
        return
    if output == "-":
        return
    height, width = picture.height, picture.width
    if picture.kind == "grid":
        drawn = picture.variables[0]
        what = (f"{drawn.layer} {drawn.variable} {format_shape(drawn.shape)}, {plural(drawn.tiles or 0, 'tile')}, "
                + ("each tile its own scale" if drawn.tile_scales is not None else f"scale ±{drawn.scale:.3g}"))
    else:
        layers = len({drawn.layer for drawn in picture.variables})
        what = f"histograms of {plural(len(picture.variables), 'variable')} in {plural(layers, 'layer')}"
    print_line(f"wrote {output}: {what} ({width}x{height} PNG)")


def print_terminal_picture(text: str) -> None:
    """A picture drawn for the terminal (its colours are in the text)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def render_error(message: str, exit_code: int, *, json_stream: TextIO | None = None,
                 problems: Sequence[str] = (), label: str = "Error") -> None:
    """One line on stderr; in JSON mode also one JSON object on ``json_stream``."""
    sys.stderr.write(f"{label}: {message}\n")
    sys.stderr.flush()
    if json_stream is not None:
        document: dict[str, Any] = {"error": message if label == "Error" else f"{label}: {message}",
                                    "exit_code": int(exit_code)}
        if problems:
            document["problems"] = list(problems)
        print_json(document, json_stream)


def render_traceback(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")


# What runs after a step, for the steps that are followed by a long wait.
_NEXT_STEP = {"written": "smoke test: Keras loads the model and runs it"}


class ProgressLine:
    """One status line on a terminal, rewritten at each step: ``[3/22] checked conv1``.

    Called as the library's ``progress(done, total, step)``; :meth:`close` clears a line
    the last step did not end (a dry run stops before the write).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._open = False

    def start(self, what: str) -> None:
        self._write(f"\r\x1b[K{what}...")
        self._open = True

    def __call__(self, done: int, total: int, step: str) -> None:
        line = f"\r\x1b[K[{done}/{total}] {step}"
        if done < total and step in _NEXT_STEP:
            line += f"; {_NEXT_STEP[step]}..."
        self._open = done < total
        self._write(line if self._open else line + "\n")

    def close(self) -> None:
        if self._open:
            self._write("\r\x1b[K")
            self._open = False

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def progress_callback(stream: TextIO) -> ProgressLine:
    """A progress line on ``stream`` (see :class:`ProgressLine`)."""
    return ProgressLine(stream)


@contextmanager
def progress_on_terminal(stream: TextIO | None = None) -> Iterator[ProgressLine | None]:
    """A progress line while the block runs, only when ``stream`` (stderr) is a terminal.

    It writes to its own duplicate of the terminal's descriptor: TensorFlow's import and
    the smoke test point fd 2 at /dev/null to hide Keras's C++ chatter, and the line
    must stay visible through exactly those waits.
    """
    stream = stream or sys.stderr
    if not stream.isatty():
        yield None
        return
    stream.flush()
    with os.fdopen(os.dup(stream.fileno()), "w", encoding=stream.encoding or "utf-8",
                   errors="replace") as terminal:
        line = ProgressLine(terminal)
        line.start("reading the model and checking the edits")
        try:
            yield line
        finally:
            line.close()


def _number(x: float | None) -> float | str | None:
    """JSON has no inf or NaN: write them as strings."""
    if x is None or x == x and abs(x) != float("inf"):
        return x
    return str(x)


def diff_document(report: DiffReport) -> dict[str, Any]:
    return {
        "a": report.a,
        "b": report.b,
        "identical": report.identical,
        "layers": [
            {
                "path": layer.path,
                "class_a": layer.class_a,
                "class_b": layer.class_b,
                "status": layer.status,
                "reason": layer.reason,
                "variables": [
                    {
                        "name": v.name,
                        "shape_a": list(v.shape_a) if v.shape_a is not None else None,
                        "shape_b": list(v.shape_b) if v.shape_b is not None else None,
                        "dtype_a": v.dtype_a,
                        "dtype_b": v.dtype_b,
                        "identical": v.identical,
                        "max_abs": _number(v.max_abs),
                        "rel_l2": _number(v.rel_l2),
                    }
                    for v in layer.variables
                ],
            }
            for layer in report.layers
        ],
    }


def render_diff(report: DiffReport, stream: TextIO | None = None) -> None:
    out = console(stream)
    out.print(f"a: {report.a}\nb: {report.b}")
    differing = [layer for layer in report.layers if layer.status != "same"]
    rows = []
    for layer in differing:
        status = layer.status.replace("_", " ") + (f": {layer.reason}" if layer.reason else "")
        if not layer.variables:
            rows.append((layer.path, status, "", "", "", "", ""))
        for i, v in enumerate(layer.variables):
            shape = format_shape(v.shape_a or v.shape_b or ()) if v.shape_a == v.shape_b else (
                f"{format_shape(v.shape_a) if v.shape_a else '-'} -> {format_shape(v.shape_b) if v.shape_b else '-'}")
            dtype = (v.dtype_a or "") if v.dtype_a == v.dtype_b else f"{v.dtype_a or '-'} -> {v.dtype_b or '-'}"
            rows.append((
                layer.path if i == 0 else "", status if i == 0 else "", v.name, shape, dtype,
                "" if v.max_abs is None else f"{v.max_abs:.4g}",
                "" if v.rel_l2 is None else f"{v.rel_l2:.4g}",
            ))
    if differing:
        _print_table(out, [_Column("layer", keep=False), _Column("status", keep=False), _Column("variable"),
                           _Column("shape"), _Column("dtype"), _Column("max |a-b|", right=True),
                           _Column("rel L2", right=True)], rows)
    same = len(report.layers) - len(differing)
    verdict = "identical" if report.identical else (
        f"{plural(len(differing), 'layer')} {'differs' if len(differing) == 1 else 'differ'}")
    out.print(f"{verdict}; {same} of {plural(len(report.layers), 'layer')} the same")
