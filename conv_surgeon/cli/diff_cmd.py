"""`conv-surgeon diff`: compare the weights of two models, with diff(1)'s exit codes."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import ConvSurgeonError, ExitCode, UsageError
from .app import Command, app
from .params import JsonOpt, model_source


@app.command(cls=Command)
def diff(
    model_a: Annotated[str, typer.Argument(metavar="A", help="A model: any save `inspect` reads, or - for stdin.", show_default=False)],
    model_b: Annotated[str, typer.Argument(metavar="B", help="The model to compare it with.", show_default=False)],
    all_layers: Annotated[bool, typer.Option("--all", help="Compare every layer with weights, not only convolutions.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Compare the weights of two models (exit 0 same, 1 different).

    Compare the convolution weights of A and B (every layer's with --all). Exit 0
    identical, 1 different, 2 error, as diff(1).

    Examples:
      conv-surgeon diff before.keras after.keras
      conv-surgeon diff model.keras model.h5 --all --json
      conv-surgeon diff a.keras b.keras > /dev/null && echo same
    """
    from ..instruments.diff import diff_models
    from ..render import render_report

    try:
        if model_a == model_b == "-":
            raise UsageError("only one of A and B can come from stdin ('-')")
        report = diff_models(model_source(model_a), model_source(model_b), all_layers=all_layers)
    except ConvSurgeonError as exc:
        exc.exit_code = ExitCode.USAGE  # scripts test diff's status: 2 means trouble, as in diff(1)
        raise
    render_report(report, json_output=json_output)
    if not report.identical:
        raise typer.Exit(ExitCode.FAILED)
