"""`conv-surgeon fold-bn`: fold BatchNormalization into the convolution before it, verified."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import click
import typer

from .app import Command, app
from .params import OptionalModelArg, model_source
from .write_options import WriteArgs, report_stream, with_write_options


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
    from ..ops.fold import FOLD_TOLERANCE, fold_bn
    from ..render import progress_on_terminal, render_fold_report
    from ..transaction.smoke import Tolerance

    # The outputs are compared by default (--compare --expect-same are implied), within
    # FOLD_TOLERANCE or the --atol/--rtol given.
    ctx = click.get_current_context()
    given = {name: ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
             for name in ("atol", "rtol")}
    options = replace(write, expect_same=False).options_for(model)
    if options.smoke.enabled:
        tolerance = Tolerance(write.atol if given["atol"] else FOLD_TOLERANCE.atol,
                              write.rtol if given["rtol"] else FOLD_TOLERANCE.rtol)
        options = replace(options, smoke=replace(options.smoke, compare=True, expect_same=tolerance))
    source = model_source(model or "-", write.config)
    total = 2 if options.smoke.enabled else 1
    with progress_on_terminal() as progress:
        done = 0

        def step(what: str) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total, what)

        report = fold_bn(source, options, layers=layer or None, keep_layers=keep_layers, step=step)
    render_fold_report(report, write.json_output, report_stream(options))
