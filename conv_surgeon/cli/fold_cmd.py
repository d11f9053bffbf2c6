"""`conv-surgeon fold-bn`: fold BatchNormalization into the convolution before it, verified."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import Command, app
from .params import OptionalModelArg, model_source
from .write_options import WriteArgs, counted_steps, report_stream, with_write_options


@app.command("fold-bn", cls=Command)
@with_write_options
def fold_bn_command(
    model: OptionalModelArg = None,
    layer: Annotated[list[str], typer.Option(
        "--layer", "-l", help="Fold only the pair of this conv or BatchNormalization (repeatable; default: every pair).")] = [],
    keep_layers: Annotated[bool, typer.Option(
        "--keep-layers", help="Fold, but keep each BatchNormalization as an identity layer (names and graph unchanged).")] = False,
    *,
    write: WriteArgs,
) -> None:
    """Fold BatchNormalization into the conv before it, verified.

    Fold each BatchNormalization into the convolution it follows; Keras runs both models
    on the same inputs, and nothing is written unless the outputs agree within float32
    rounding.

    Examples:
      conv-surgeon fold-bn model.keras -o folded.keras
      conv-surgeon fold-bn model.keras -l conv1 --keep-layers -o folded.keras
      conv-surgeon fold-bn model.keras --dry-run --json
    """
    from ..instruments.fold import FoldRequest, fold_bn
    from ..render import render_report

    request = FoldRequest(tuple(layer), keep_layers)
    options = write.options_for(model, request.checks)
    source = model_source(model or "-", write.config)
    with counted_steps(options) as step:
        report = fold_bn(source, request, options, step=step)
    render_report(report, json_output=write.json_output, stream=report_stream(options))
