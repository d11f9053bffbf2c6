"""`conv-surgeon fold-bn`: fold BatchNormalization into the convolution before it, verified."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from .app import Command, app
from .params import OptionalModelArg, model_source
from .write_options import WriteArgs, counted_steps, report_stream, tolerance_or, with_write_options


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
    """Fold each BatchNormalization into the conv it follows; check the outputs are unchanged."""
    from ..instruments.fold import fold_bn
    from ..render import render_fold_report
    from ..runtime.checks import FUNCTION_KEPT

    # The outputs are compared by default (--compare --expect-same are implied): the same
    # but for float32 rounding, and the --atol/--rtol given.
    options = replace(write, expect_same=False).options_for(model)
    if options.smoke.enabled:
        options = replace(options, smoke=replace(options.smoke, compare=True,
                                                 expect_same=tolerance_or(write, FUNCTION_KEPT)))
    source = model_source(model or "-", write.config)
    with counted_steps(options) as step:
        report = fold_bn(source, options, layers=layer or None, keep_layers=keep_layers, step=step)
    render_fold_report(report, write.json_output, report_stream(options))
