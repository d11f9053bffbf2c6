"""`conv-surgeon set`: new values for a layer's variables, checked and smoke-tested."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import UsageError
from .app import Command, app
from .params import (LayerOpt, LayoutOpt, OptimizerOpt, OptionalModelArg, SeedParam, complete_initializer,
                     layout_of, model_source, optimizer_policy_of, stdin)
from .write_options import WriteArgs, report_stream, with_write_options

if TYPE_CHECKING:
    from ..instruments.set_weights import WeightRequest


def _pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, equals, rest = value.partition("=")
        if not equals or not name or not rest:
            raise UsageError(f"{option} {value!r}: expected NAME=VALUE, e.g. {option} depthwise_kernel=dw.npy")
        pairs.append((name.strip(), rest))
    return pairs


def _requests(kernel: str | None, bias: str | None, weight: list[str], kernel_init: str | None,
              bias_init: str | None, weight_init: list[str]) -> list[WeightRequest]:
    """What the weight options ask for, one request per variable named."""
    from ..instruments.set_weights import WeightRequest

    requests = []
    if kernel is not None:
        requests.append(WeightRequest(None, source=kernel))
    if bias is not None:
        requests.append(WeightRequest("bias", source=bias))
    requests += [WeightRequest(name, source=src) for name, src in _pairs(weight, "--weight")]
    if kernel_init is not None:
        requests.append(WeightRequest(None, init=kernel_init))
    if bias_init is not None:
        requests.append(WeightRequest("bias", init=bias_init))
    requests += [WeightRequest(name, init=spec) for name, spec in _pairs(weight_init, "--weight-init")]
    return requests


@app.command("set", cls=Command)
@with_write_options
def set_command(
    model: OptionalModelArg = None,
    layer: LayerOpt = None,
    kernel: Annotated[Optional[str], typer.Option("--kernel", help="SRC for the kernel: file.npy, file.npz:KEY, file.h5:PATH, file.safetensors:KEY, file.pt:KEY or - (stdin).", show_default=False)] = None,
    bias: Annotated[Optional[str], typer.Option("--bias", help="SRC for the bias.", show_default=False)] = None,
    weight: Annotated[list[str], typer.Option("--weight", help="NAME=SRC for any variable, e.g. depthwise_kernel=dw.npy or moving_variance=v.npy (repeatable).")] = [],
    kernel_init: Annotated[Optional[str], typer.Option("--kernel-init", help="Initializer SPEC for the kernel: NAME[:key=value,...], e.g. he_normal.", show_default=False, shell_complete=complete_initializer)] = None,
    bias_init: Annotated[Optional[str], typer.Option("--bias-init", help="Initializer SPEC for the bias, e.g. zeros.", show_default=False, shell_complete=complete_initializer)] = None,
    weight_init: Annotated[list[str], typer.Option("--weight-init", help="NAME=SPEC for any variable (repeatable).", shell_complete=complete_initializer)] = [],
    seed: Annotated[Optional[int], typer.Option("--seed", click_type=SeedParam(), help="Seed for initializers, 0 to 2**63-1 (drawn and reported when omitted).", show_default=False)] = None,
    donor: Annotated[Optional[str], typer.Option("--from", help="Copy every variable of a layer from another model: A.keras or A.keras:LAYER (default: the same name).", show_default=False)] = None,
    from_npz: Annotated[Optional[Path], typer.Option("--from-npz", help="Set every variable of an .npz bundle (keys <layer path>/<variable>, as `get --all` writes), in one write.", show_default=False)] = None,
    layout: LayoutOpt = "keras",
    optimizer: OptimizerOpt = "reset",
    *,
    write: WriteArgs,
) -> None:
    """Set a layer's weights from arrays, initializers or a model.

    Set variables of a layer with weights (a conv, Dense, BatchNormalization, ...) from
    array files, Keras initializers or another model's layer, then smoke-test: Keras loads
    the written model and runs it.

    Examples:
      conv-surgeon set in.keras -l conv1 --kernel k.npy -o out.keras
      conv-surgeon set in.keras -l conv1 --kernel w.npy --layout torch -o out.keras
      conv-surgeon set in.keras -l conv1 --kernel-init he_normal --seed 7 --in-place
      conv-surgeon set in.keras -l conv1 --from donor.keras:conv1 -o out.keras
      conv-surgeon set in.keras --from-npz bundle.npz -o out.keras
      conv-surgeon set -l conv1 --bias-init zeros < in.keras > out.keras
    """
    from ..instruments.set_weights import LayerEdit, SetRequest, bundle_edits, edit_model, parse_donor, require_requests
    from ..render import progress_on_terminal, render_report

    requests = _requests(kernel, bias, weight, kernel_init, bias_init, weight_init)
    donor_spec = parse_donor(donor) if donor is not None else None
    if from_npz is not None:
        if layer is not None or requests or donor_spec is not None:
            raise UsageError("--from-npz sets the layers its keys name; drop --layer and the weight options")
    elif layer is None:
        raise UsageError("missing --layer: name the layer to edit (or use --from-npz BUNDLE)")
    else:
        require_requests(requests, donor_spec)
    options = write.options_for(model, SetRequest.checks)
    source = model_source(model or "-", write.config)
    if from_npz is not None:
        edits = bundle_edits(from_npz, layout_of(layout))
    else:
        assert layer is not None
        edits = [LayerEdit(layer, tuple(requests), layout_of(layout), donor_spec)]
    with progress_on_terminal() as progress:
        report = edit_model(source, SetRequest(tuple(edits), seed, optimizer_policy_of(optimizer)), options,
                            stdin=stdin(), progress=progress)
    render_report(report, json_output=write.json_output, stream=report_stream(options))
