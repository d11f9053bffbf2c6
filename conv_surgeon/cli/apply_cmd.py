"""`conv-surgeon apply`: every edit of a plan, all or nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .app import Command, app
from .params import OptionalModelArg, model_source
from .write_options import WriteArgs, report_stream, with_write_options


@app.command("apply", cls=Command)
@with_write_options
def apply_command(
    model: OptionalModelArg = None,
    plan: Annotated[Optional[Path], typer.Argument(help="A JSON or TOML plan of edits (see --schema).", show_default=False)] = None,
    schema: Annotated[bool, typer.Option("--schema", help="Print the plan's JSON Schema and exit.")] = False,
    *,
    write: WriteArgs,
) -> None:
    """Apply every edit of a JSON or TOML plan, all or nothing.

    Every edit is checked before anything is written; then one write and one smoke test.
    A plan in TOML (--schema prints its JSON Schema):

    \b
      seed = 7
      [[edits]]
      layer = "conv1"
      weights.kernel = "k.npy"
      weights.bias = { init = "zeros" }

    Examples:
      conv-surgeon apply model.keras plan.toml -o out.keras
      conv-surgeon apply model.keras plan.json --dry-run
      conv-surgeon apply --schema > plan.schema.json
    """
    from ..edits.plan import load_plan, plan_schema
    from ..instruments.set_weights import SetRequest, apply_plan
    from ..render import print_json_schema, progress_on_terminal, render_report

    if schema:
        print_json_schema(plan_schema())
        return
    if model is None or plan is None:
        raise UsageError("apply needs MODEL and PLAN: conv-surgeon apply model.keras plan.toml -o out.keras")
    options = write.options_for(model, SetRequest.checks)
    with progress_on_terminal() as progress:
        report = apply_plan(model_source(model, write.config), load_plan(plan), options, progress=progress)
    render_report(report, json_output=write.json_output, stream=report_stream(options))
