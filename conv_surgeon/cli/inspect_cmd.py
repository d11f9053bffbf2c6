"""`conv-surgeon inspect`: the convolution layers of a model, with their shapes."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import Command, app
from .params import ConfigOpt, JsonOpt, ModelArg, model_source


@app.command(cls=Command)
def inspect(
    model: ModelArg,
    all_layers: Annotated[bool, typer.Option("--all", help="List every layer with weights, not only convolutions.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Add min, max, mean, std, L2 norm, zeros and non-finite counts per variable.")] = False,
    history: Annotated[bool, typer.Option("--history", help="Also print the record of every edit conv-surgeon made to this file.")] = False,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List the convolution layers of MODEL with kernel and bias shapes."""
    from ..instruments.reading import inspect_model
    from ..render import render_report

    report = inspect_model(model_source(model, config), all_layers=all_layers, stats=stats, history=history)
    render_report(report, json_output=json_output)
