"""Results to rich tables for people and JSON for programs. The only module that prints."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from .catalogue import main_config
from .modelfile import Layer
from .naming import format_shape
from .reading import InspectReport, VariableStats

SCHEMA_VERSION = 1


def console(stream: TextIO | None = None) -> Console:
    """A console on ``stream``; wide enough for model paths when not on a terminal."""
    stream = stream or sys.stdout
    is_tty = stream.isatty()
    return Console(file=stream, width=None if is_tty else 240, highlight=False,
                   soft_wrap=False, no_color=not is_tty)


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
        "totals": {"layers": len(report.layers), "parameters": report.total_parameters},
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
        f"{report.source}: {structure.model_class} '{structure.model_name}' "
        f"({structure.format}, Keras {structure.keras_version or 'unknown'})"
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
        table.add_row(layer.path, layer.class_name, weights, _config_summary(layer.config))
    out.print(table)
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
