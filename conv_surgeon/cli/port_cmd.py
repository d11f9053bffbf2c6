"""`conv-surgeon port`: a PyTorch state dict mapped onto the model, in one checked write."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .app import Command, app
from .params import OptimizerOpt, OptionalModelArg, model_source, optimizer_policy_of
from .write_options import WriteArgs, report_stream, with_write_options


@app.command("port", cls=Command)
@with_write_options
def port_command(
    model: OptionalModelArg = None,
    state: Annotated[Optional[Path], typer.Option(
        "--from", metavar="STATE", help="The PyTorch state dict: .pt/.pth (torch.save(model.state_dict())), .safetensors or .npz.",
        show_default=False)] = None,
    maps: Annotated[list[str], typer.Option(
        "--map", metavar="'REGEX=>LAYER'", help="The module (or tensor) whose whole name REGEX matches goes into LAYER, for "
        "what shapes and order cannot decide (repeatable).")] = [],
    allow_partial: Annotated[bool, typer.Option(
        "--allow-partial", help="Write the layers that were mapped though source tensors are left over (listed).")] = False,
    bn_epsilon: Annotated[Optional[float], typer.Option(
        "--bn-epsilon", metavar="EPS", help="The source's BatchNorm epsilon (PyTorch: 1e-5): set it in every ported "
        "BatchNormalization whose own differs (a config change).", show_default=False)] = None,
    optimizer: OptimizerOpt = "reset",
    reference: Annotated[Optional[str], typer.Option(
        "--reference", metavar="REF", help="Check the port against PyTorch: a TorchScript file, a torch.export .pt2 "
        "archive, or module:factory (a function of your code returning the nn.Module; the state dict is loaded into "
        "it), run on the smoke test's inputs. --expect-same fails beyond float32 rounding (+ --atol, --rtol x the "
        "output's scale).", show_default=False)] = None,
    *,
    write: WriteArgs,
) -> None:
    """Map a PyTorch state dict onto the model, checked.

    Every tensor of the state dict goes into the Keras model's variable it fits, found by
    kind and shape in the order of both (no name table): PyTorch layouts converted, the
    rows of a Dense after a Flatten reordered, BatchNorm's running_var as moving_variance.
    Nothing is written while a tensor is left over or the mapping is ambiguous; --dry-run
    shows the mapping.

    Examples:
      conv-surgeon port model.keras --from weights.pt --dry-run
      conv-surgeon port model.keras --from weights.pt -o ported.keras
      conv-surgeon port m.keras --from w.safetensors --bn-epsilon 1e-5 -o out.keras
      conv-surgeon port model.keras --from w.pt --map 'fc\\..*=>head' -o out.keras
      conv-surgeon port m.keras --from w.pt --reference nets.py:build -o out.keras
    """
    from ..instruments.port import PortRequest, port
    from ..render import progress_on_terminal, render_report

    if state is None:
        raise UsageError("missing --from STATE: the PyTorch state dict to port (.pt, .safetensors or .npz)")
    request = PortRequest(state, tuple(maps), allow_partial, bn_epsilon, optimizer_policy_of(optimizer), reference,
                          write.load_inputs)
    options = write.options_for(model, request.checks)
    source = model_source(model or "-", write.config)
    with progress_on_terminal() as progress:
        report = port(source, request, options, progress=progress)
    render_report(report, json_output=write.json_output, stream=report_stream(options))
