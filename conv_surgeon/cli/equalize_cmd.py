"""`conv-surgeon equalize`: cross-layer equalization for per-tensor quantization, verified."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import Command, app
from .params import OptionalModelArg, model_source
from .write_options import WriteArgs, counted_steps, report_stream, with_write_options


@app.command("equalize", cls=Command)
@with_write_options
def equalize_command(
    model: OptionalModelArg = None,
    no_fold: Annotated[bool, typer.Option(
        "--no-fold", help="Refuse a conv followed by a BatchNormalization instead of folding it first.")] = False,
    relu6_to_relu: Annotated[bool, typer.Option(
        "--relu6-to-relu", help="Replace every ReLU6 by ReLU so its layers can pair (changes the function; measured).")] = False,
    absorb_bias: Annotated[bool, typer.Option(
        "--absorb-bias", help="High-bias absorption from the folded BatchNormalizations' statistics (measured).")] = False,
    *,
    write: WriteArgs,
) -> None:
    """Equalize conv channel ranges for per-tensor int8, verified.

    Fold each BatchNormalization, then rescale the channels of every conv -> ReLU -> conv
    pair and conv -> depthwise -> conv triple so their ranges meet (cross-layer
    equalization, Nagel et al. 2019): one per-tensor scale then serves every channel.
    Keras runs both models on the same inputs; nothing is written unless the outputs
    agree within float32 rounding (with --relu6-to-relu or --absorb-bias the difference
    is measured and reported).

    Examples:
      conv-surgeon equalize model.keras -o equalized.keras
      conv-surgeon equalize mnv2.keras --relu6-to-relu --absorb-bias -o eq.keras
      conv-surgeon equalize model.keras --dry-run --json
    """
    from ..instruments.equalize import EqualizeRequest, equalize
    from ..render import render_report

    request = EqualizeRequest(fold=not no_fold, relu6_to_relu=relu6_to_relu, absorb_bias=absorb_bias)
    options = write.options_for(model, request.checks)
    source = model_source(model or "-", write.config)
    with counted_steps(options) as step:
        report = equalize(source, request, options, step=step)
    render_report(report, json_output=write.json_output, stream=report_stream(options))
