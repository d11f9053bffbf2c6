"""Results to rich tables for people and JSON for programs. The only module that prints."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.table import Table

from .model.catalogue import main_config
from .model.structure import Layer
from .model.naming import format_shape
from .ops.reading import InspectReport, VariableStats

if TYPE_CHECKING:
    from .ops.compare import DiffReport
    from .ops.surgery import SetReport

SCHEMA_VERSION = 1


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # The reader went away (`| head`): stop quietly with the pipe's status, as
        # other filters do, instead of rich's generic exit 1.
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141)


def console(stream: TextIO | None = None) -> Console:
    """A console on ``stream``. Paths and layer names are data, never rich markup; off a
    terminal, lines are as long as the table needs (logs and pipes cut nothing)."""
    stream = stream or sys.stdout
    is_tty = stream.isatty()
    return _Console(file=stream, width=None if is_tty else 100_000, highlight=False, markup=False,
                    emoji=False, soft_wrap=False, no_color=not is_tty)


def print_json(document: dict[str, Any], stream: TextIO | None = None) -> None:
    """One JSON object, data at the top level and the schema version beside it."""
    out = stream or sys.stdout
    out.write(json.dumps({"schema": SCHEMA_VERSION, **document}, indent=2, default=_json_default))
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
    kind = "layers with weights" if report.layers is structure.layers else "convolution layers"
    title = (
        f"{report.source}: {structure.model_class}"
        + (f" '{structure.model_name}'" if structure.model_name else "")
        + f" ({structure.format}, Keras {structure.keras_version or 'unknown'})"
    )
    out.print(title)
    table = Table()
    table.add_column("layer", no_wrap=True)
    table.add_column("class", no_wrap=True)
    table.add_column("weights", no_wrap=True)
    table.add_column("config")
    for layer in report.layers:
        weights = "\n".join(
            f"{v.name} {format_shape(v.shape)} {v.dtype}" for v in layer.variables
        )
        class_text = layer.class_name + ("*" if layer.class_source != "config" else "")
        table.add_row(layer.path, class_text, weights, _config_summary(layer.config))
    out.print(table)
    inferred = [layer for layer in report.layers if layer.class_source != "config"]
    for layer in inferred:
        source = layer.inferred_from or "nothing: the store names no class and its shapes fit several"
        out.print(f"* {layer.path}: class inferred from {source}")
    if report.stats is not None:
        out.print("weight statistics")
        stats_table = Table()
        for column in ("layer", "variable", "min", "max", "mean", "std", "L2", "zeros", "non-finite"):
            stats_table.add_column(column, no_wrap=True, justify="left" if column in ("layer", "variable") else "right")
        for layer in report.layers:
            for v in layer.variables:
                s = report.stats[v.dataset]
                stats_table.add_row(
                    layer.path, v.name, f"{s.min:.4g}", f"{s.max:.4g}", f"{s.mean:.4g}",
                    f"{s.std:.4g}", f"{s.l2:.4g}", str(s.zeros), str(s.nonfinite),
                )
        out.print(stats_table)
    out.print(f"{len(report.layers)} {kind}, {report.total_parameters:,} parameters")
    if report.layers is structure.layers:
        # Account for every variable of the store, so that nothing is silently left out.
        out.print(
            f"{structure.variable_count} variables in {len(structure.layers)} layers; "
            f"{structure.optimizer_variables} optimizer variables; "
            f"{len(structure.unplaced)} not placed on a layer"
        )
    warn = console(sys.stderr)
    for dataset in structure.unplaced:
        warn.print(f"warning: {dataset} belongs to no layer conv-surgeon could place")
    if report.history is not None:
        render_history(report.history, out)


def _source_text(source: dict[str, Any]) -> str:
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
    out.print(f"history: {len(history)} write(s) by conv-surgeon")
    table = Table()
    for column in ("#", "time", "version", "layer", "variable", "layout", "source"):
        table.add_column(column, no_wrap=column != "source")
    for number, record in enumerate(history, 1):
        edits = record.get("edits") or [{}]
        for i, edit in enumerate(edits):
            first = i == 0
            table.add_row(
                str(number) if first else "", str(record.get("time", "")) if first else "",
                str(record.get("version", "")) if first else "", str(edit.get("layer", "")),
                str(edit.get("variable", "")), str(edit.get("layout", "")),
                _source_text(edit.get("source") or {}),
            )
    out.print(table)
    for number, record in enumerate(history, 1):
        command = " ".join(str(part) for part in record.get("command") or [])
        if command:
            out.print(f"#{number} $ {command}")


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
        "smoke": None
        if smoke is None
        else {
            "passed": True,
            "inputs": [{"name": n, "shape": list(s)} for n, s in smoke.inputs],
            "outputs": [{"name": o.name, "shape": list(o.shape), "min": o.min, "max": o.max} for o in smoke.outputs],
            "checked_variables": smoke.checked_variables,
            "notes": list(smoke.notes),
            "comparison": [
                {"name": c.name, "max_abs": c.max_abs, "max_rel": c.max_rel, "mean_abs": c.mean_abs,
                 "cosine": c.cosine}
                for c in smoke.comparisons
            ],
        },
        "smoke_skipped": smoke is None and not report.dry_run,
        **({"smoke_skipped_reason": report.smoke_skipped} if report.smoke_skipped else {}),
    }


def render_set_report(report: SetReport, stream: TextIO | None = None) -> None:
    out = console(stream)
    where = "would write (dry run)" if report.dry_run else f"wrote {report.destination}"
    if len(report.layers) == 1:
        layer = report.layers[0]
        what = f"layer '{layer.path}' ({layer.class_name})"
    else:
        what = f"{len(report.layers)} layers"
    out.print(f"{report.source}: {what}; {where}")
    table = Table()
    several = len(report.layers) > 1
    columns = (("layer",) if several else ()) + (
        "variable", "shape", "dtype", "source", "old L2", "new L2", "max |change|")
    for column in columns:
        table.add_column(column, no_wrap=True, justify="right" if "L2" in column or "|" in column else "left")
    for c in report.changes:
        row = (c.variable, format_shape(c.shape), c.dtype, c.origin, f"{c.old_l2:.4g}",
               f"{c.new_l2:.4g}", f"{c.max_abs_change:.4g}")
        table.add_row(*(((c.layer,) if several else ()) + row))
    out.print(table)
    for c in report.changes:
        label = f"{c.layer} {c.variable}" if several else c.variable
        if c.cast:
            out.print(f"note: {label}: cast {c.cast}")
        for note in c.notes:
            out.print(f"note: {label}: {note}")
    if report.seed_drawn:
        out.print(f"seed: {report.seed} (drawn; pass --seed {report.seed} to repeat)")
    smoke = report.smoke
    if smoke is not None:
        ins = ", ".join(format_shape(s) for _, s in smoke.inputs)
        outs = ", ".join(f"{format_shape(o.shape)} in [{o.min:.4g}, {o.max:.4g}]" for o in smoke.outputs)
        out.print(
            f"smoke test passed: Keras loaded the model, input {ins} -> output {outs}, all finite; "
            f"{smoke.checked_variables} edited variable(s) read back exactly"
        )
        if smoke.comparisons:
            out.print("edited vs original, same inputs:")
            compared = Table()
            for column in ("output", "max abs err", "max rel err", "mean abs err", "cosine"):
                compared.add_column(column, no_wrap=True, justify="left" if column == "output" else "right")
            for c in smoke.comparisons:
                compared.add_row(c.name, f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", f"{c.mean_abs:.3g}",
                                 f"{c.cosine:.6f}")
            out.print(compared)
        for note in smoke.notes:
            out.print(f"note: {note}")
    elif report.smoke_skipped is not None:
        out.print(f"note: {report.smoke_skipped}")
    elif not report.dry_run:
        out.print("smoke test skipped (--no-smoke)")


def progress_callback(stream: TextIO) -> Callable[[int, int, str], None]:
    """One status line on a terminal, rewritten at each step: ``[3/22] checked conv1``."""

    def report(done: int, total: int, step: str) -> None:
        stream.write(f"\r\x1b[K[{done}/{total}] {step}")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return report


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
    table = Table()
    for column in ("layer", "status", "variable", "shape", "dtype", "max |a-b|", "rel L2"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("max |a-b|", "rel L2") else "left")
    differing = [layer for layer in report.layers if layer.status != "same"]
    for layer in differing:
        status = layer.status.replace("_", " ") + (f": {layer.reason}" if layer.reason else "")
        if not layer.variables:
            table.add_row(layer.path, status, "", "", "", "", "")
        for i, v in enumerate(layer.variables):
            shape = format_shape(v.shape_a or v.shape_b or ()) if v.shape_a == v.shape_b else (
                f"{format_shape(v.shape_a) if v.shape_a else '-'} -> {format_shape(v.shape_b) if v.shape_b else '-'}")
            dtype = (v.dtype_a or "") if v.dtype_a == v.dtype_b else f"{v.dtype_a or '-'} -> {v.dtype_b or '-'}"
            table.add_row(
                layer.path if i == 0 else "", status if i == 0 else "", v.name, shape, dtype,
                "" if v.max_abs is None else f"{v.max_abs:.4g}",
                "" if v.rel_l2 is None else f"{v.rel_l2:.4g}",
            )
    if differing:
        out.print(table)
    same = len(report.layers) - len(differing)
    verdict = "identical" if report.identical else f"{len(differing)} layer(s) differ"
    out.print(f"{verdict}; {same} of {len(report.layers)} layers the same")
