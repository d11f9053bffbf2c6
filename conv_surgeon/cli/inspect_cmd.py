"""`conv-surgeon inspect`: the convolution layers of a model, with their shapes."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from .app import Command, app
from .params import ConfigOpt, JsonOpt, ModelArg, choice_of, model_source


@app.command(cls=Command)
def inspect(
    model: ModelArg,
    all_layers: Annotated[bool, typer.Option("--all", help="List every layer with weights, not only convolutions.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Add min, max, mean, std, L2 norm, zeros and non-finite counts per variable.")] = False,
    history: Annotated[bool, typer.Option("--history", help="Also print the record of every edit conv-surgeon made to this file.")] = False,
    quant: Annotated[str | None, typer.Option(
        "--quant", click_type=click.Choice(("int8", "int4")),
        help="Per conv and Dense kernel: SQNR (dB) quantized symmetric per tensor and per "
             "output channel, and the spread of its channel ranges; the worst first.")] = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List a model's convolution layers, with their shapes.

    Every convolution layer of MODEL with its class, the shapes and dtypes of its
    variables and its main config; --all lists every layer with weights.

    Examples:
      conv-surgeon inspect model.keras
      conv-surgeon inspect model.h5 --all --stats
      conv-surgeon inspect model.keras --json | jq -r '.layers[].path'
      conv-surgeon inspect model.weights.h5 --config model.keras
      conv-surgeon inspect edited.keras --history
      conv-surgeon inspect model.keras --quant int8
    """
    from ..instruments.reading import inspect_model
    from ..render import render_report

    bits = None
    if quant is not None:  # numpy only when asked: a plain inspect imports none
        from ..model.quantization import QUANT_BITS

        bits = choice_of(quant, QUANT_BITS, "--quant")
    report = inspect_model(model_source(model, config), all_layers=all_layers, stats=stats, history=history,
                           quant=bits)
    render_report(report, json_output=json_output)
