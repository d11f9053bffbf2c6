"""`conv-surgeon prune`: remove convolution filters and fix up everything downstream."""

from __future__ import annotations

import re
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .app import Command, app
from .params import OptionalModelArg, model_source
from .write_options import WriteArgs, counted_steps, report_stream, with_write_options


@app.command("prune", cls=Command)
@with_write_options
def prune_command(
    model: OptionalModelArg = None,
    layer: Annotated[list[str], typer.Option(
        "--layer", "-l", help="Prune the filters of this conv (and of every conv whose channels meet its own; repeatable).")] = [],
    every: Annotated[bool, typer.Option("--all", help="Prune every group of channels that can be pruned.")] = False,
    filters: Annotated[Optional[str], typer.Option(
        "--filters", help="The filter indices to remove, e.g. 3,7,9 (with one --layer).", show_default=False)] = None,
    smallest_l1: Annotated[Optional[str], typer.Option(
        "--smallest-l1", help="Remove the N filters (or N% of them) of smallest L1 norm, summed over a group.",
        show_default=False)] = None,
    zeros: Annotated[bool, typer.Option(
        "--zeros", help="Remove only filters that are zero all along their path (exact: outputs must stay equal).")] = False,
    *,
    write: WriteArgs,
) -> None:
    """Remove conv filters and fix up every layer downstream.

    Remove filters of the convs named (with every conv whose channels meet theirs in an
    Add or Multiply) and cut the layers that read them; Keras runs both models on the same
    inputs and the report shows how the outputs differ.

    Examples:
      conv-surgeon prune model.keras -l conv1 --filters 3,7 -o pruned.keras
      conv-surgeon prune model.keras --all --smallest-l1 25% -o pruned.keras
      conv-surgeon prune model.keras --zeros -o pruned.keras
    """
    from ..instruments.prune import PruneRequest, prune
    from ..render import render_report

    request = PruneRequest(tuple(layer), every, _indices(filters) if filters is not None else None,
                           smallest_l1, zeros)
    options = write.options_for(model, request.checks)
    source = model_source(model or "-", write.config)
    with counted_steps(options) as step:
        report = prune(source, request, options, step=step)
    render_report(report, json_output=write.json_output, stream=report_stream(options))


# ASCII digits (str.isdigit takes "²", which int() refuses), few enough for any model.
_INDEX = re.compile(r"[0-9]{1,18}")


def _indices(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(_INDEX.fullmatch(part) for part in parts):
        raise UsageError(f"--filters {text!r}: expected filter indices separated by commas, e.g. 3,7,9")
    return tuple(int(part) for part in parts)
