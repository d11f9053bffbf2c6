"""What the reading instruments found: `inspect` (layers, statistics, history), `diff`,
what `get` wrote and `show`'s pictures, as tables or JSON."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from ..model.catalogue import main_config
from ..model.naming import format_shape
from ..model.structure import Layer
from .text import Column, console, finite_or_none, number_or_text, plural, print_json, print_line, print_table

if TYPE_CHECKING:
    from rich.console import Console

    from ..instruments.diff import DiffReport
    from ..instruments.reading import InspectReport, QuantReport, VariableStats, WeightsExport
    from ..pictures.picture import DrawnVariable, Picture


def stats_document(stats: VariableStats) -> dict[str, Any]:
    return {
        "min": finite_or_none(stats.min),
        "max": finite_or_none(stats.max),
        "mean": finite_or_none(stats.mean),
        "std": finite_or_none(stats.std),
        "l2": finite_or_none(stats.l2),
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
        **({"quant": quant_document(report.quant)} if report.quant is not None else {}),
    }


def quant_document(quant: QuantReport) -> dict[str, Any]:
    """Each kernel's SQNR in dB, "inf" where the quantization is exact (JSON has no inf);
    the range ratio is null for a kernel whose channels are all zero."""
    return {
        "bits": quant.bits,
        "layers": [{
            "path": row.path,
            "variable": row.variable,
            "shape": list(row.shape),
            "sqnr_per_tensor_db": number_or_text(row.result.sqnr_per_tensor_db),
            "sqnr_per_channel_db": number_or_text(row.result.sqnr_per_channel_db),
            "loss_db": number_or_text(row.result.loss_db),
            "range_ratio": finite_or_none(row.result.range_ratio),
        } for row in quant.rows],
    }


def _decibels(x: float) -> str:
    if x != x:
        return "nan"
    return "exact" if x == float("inf") else f"{x:.2f}"


def render_quant(quant: QuantReport, out: Console) -> None:
    out.print(f"{quant.bits} weight quantization, symmetric (SQNR in dB; the most lost per tensor first)")
    rows = [(
        row.path, row.variable, format_shape(row.shape), _decibels(row.result.sqnr_per_tensor_db),
        _decibels(row.result.sqnr_per_channel_db), _decibels(row.result.loss_db),
        "-" if row.result.range_ratio != row.result.range_ratio else f"{row.result.range_ratio:.4g}",
    ) for row in quant.rows]
    print_table(out, [Column("layer", keep=False), Column("variable", keep=False), Column("shape")] + [
        Column(header, right=True) for header in ("per-tensor", "per-channel", "loss", "range ratio")
    ], rows)
    if not quant.rows:
        out.print("no conv or Dense kernel to quantize")


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
    print_table(out, [Column("layer", keep=False), Column("class"), Column("weights"),
                       Column("config", keep=False)], rows)
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
        print_table(out, [Column("layer", keep=False), Column("variable", keep=False)] + [
            Column(header, right=True) for header in ("min", "max", "mean", "std", "L2", "zeros", "non-finite")
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
    if report.quant is not None:
        render_quant(report.quant, out)
    if report.history is not None:
        render_history(report.history, out)


def _source_text(source: dict[str, Any]) -> str:
    if "equalize" in source:
        folded = f", folded {source['fold']}" if "fold" in source else ""
        absorbed = ", bias absorbed" if source.get("absorb") else ""
        return "equalized with " + " -> ".join(source["equalize"]) + folded + absorbed
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
    print_table(out, [Column("#"), Column("time"), Column("version"), Column("layer", keep=False),
                       Column("variable"), Column("layout"), Column("source", keep=False)], rows)
    for number, record in enumerate(history, 1):
        command = " ".join(str(part) for part in record.get("command") or [])
        if command:
            out.print(f"#{number} $ {command}")


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
    if drawn.kind is not None:
        scale = "each" if drawn.tile_scales is not None else "panel" if drawn.panel_scales is not None else "layer"
        document.update({"kind": drawn.kind, "axes": dict(drawn.axes), "shows": drawn.shows,
                         "range": [-(drawn.scale or 0.0), drawn.scale], "scale": scale})
        panels = ("model", "against", "difference")
        if drawn.panel_scales is not None:
            document["panel_ranges"] = {panel: [-m, m] for panel, m in zip(panels, drawn.panel_scales)}
        if drawn.tiles is not None:
            document["tiles"] = drawn.tiles
        if drawn.tile_scales is not None:
            document["tile_ranges" if drawn.kind == "tiles" else "filter_ranges"] = [[-m, m] for m in drawn.tile_scales]
        if drawn.tile_boxes is not None:
            document["tile_boxes"] = dict(zip(panels, ([list(box) for box in boxes] for boxes in drawn.tile_boxes)))
        if drawn.cells is not None and drawn.cell_size is not None:
            document["cells"] = {"rows": drawn.cells[0], "columns": drawn.cells[1]}
            document["cell_size"] = {"width": drawn.cell_size[0], "height": drawn.cell_size[1]}
        if drawn.map_boxes is not None:
            document["boxes"] = dict(zip(panels, (list(box) for box in drawn.map_boxes)))
        document["notes"] = list(drawn.notes)
    return document


def picture_document(picture: Picture, output: str) -> dict[str, Any]:
    height, width = picture.height, picture.width
    return {
        "model": picture.source,
        "against": picture.against,
        "output": output,
        # "grid" for any kernel picture, as before the pictures had kinds: each variable's
        # own "kind" says tiles, matrix or taps.
        "kind": "histograms" if picture.kind == "histograms" else "grid",
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
    if picture.kind != "histograms":
        drawn = picture.variables[0]
        one = "tile" if picture.kind == "tiles" else "filter"
        if picture.kind == "tiles":
            drawing = plural(drawn.tiles or 0, "tile")
        else:
            rows, columns = drawn.cells or (0, 0)
            (_, row_axis), (_, column_axis) = drawn.axes
            drawing = f"{'a matrix' if picture.kind == 'matrix' else 'taps'} {rows}x{columns} ({row_axis} x {column_axis})"
        scale = (f"each {one} its own scale" if drawn.tile_scales is not None else "each panel its own scale"
                 if drawn.panel_scales is not None else f"scale ±{drawn.scale:.3g}")
        what = f"{drawn.layer} {drawn.variable} {format_shape(drawn.shape)}, {drawing}, {scale}"
    else:
        layers = len({drawn.layer for drawn in picture.variables})
        what = f"histograms of {plural(len(picture.variables), 'variable')} in {plural(layers, 'layer')}"
    print_line(f"wrote {output}: {what} ({width}x{height} PNG)")


def print_terminal_picture(text: str) -> None:
    """A picture drawn for the terminal (its colours are in the text)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def diff_document(report: DiffReport) -> dict[str, Any]:
    return {
        "a": report.a,
        "b": report.b,
        "identical": report.identical,
        "others_differing": list(report.others_differing),
        "layers": [
            {
                "path": layer.path,
                "class_a": layer.class_a,
                "class_b": layer.class_b,
                "status": layer.status,
                "reason": layer.reason,
                "resized": [{"axis": c.axis, "before": c.before, "after": c.after} for c in layer.resized],
                "variables": [
                    {
                        "name": v.name,
                        "shape_a": list(v.shape_a) if v.shape_a is not None else None,
                        "shape_b": list(v.shape_b) if v.shape_b is not None else None,
                        "dtype_a": v.dtype_a,
                        "dtype_b": v.dtype_b,
                        "identical": v.identical,
                        "max_abs": number_or_text(v.max_abs),
                        "rel_l2": number_or_text(v.rel_l2),
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
        status = "\n".join(str(change) for change in layer.resized) if layer.status == "resized" else (
            layer.status.replace("_", " ") + (f": {layer.reason}" if layer.reason else ""))
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
    columns = [Column("layer", keep=False), Column("status", keep=False), Column("variable"),
               Column("shape", keep=False), Column("dtype"), Column("max |a-b|", right=True),
               Column("rel L2", right=True)]
    # Layers whose values were not compared (resized, in one model only) have no numbers:
    # when no layer has any, the two empty columns are left out.
    shown = len(columns) if any(row[5] for row in rows) else len(columns) - 2
    if differing:
        print_table(out, columns[:shown], [row[:shown] for row in rows])
    same = len(report.layers) - len(differing)
    counts = f"{same} of {plural(len(report.layers), 'layer')} the same"
    if report.identical:
        out.print(f"identical; {counts}")
    elif differing:
        out.print(f"{plural(len(differing), 'layer')} {'differs' if len(differing) == 1 else 'differ'}; {counts}")
    else:
        out.print(counts)
    if report.others_differing:
        others = report.others_differing
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        out.print(f"{plural(len(others), 'other layer')} with weights "
                  f"{'differs' if len(others) == 1 else 'differ'}: {listed}; --all compares every layer")
