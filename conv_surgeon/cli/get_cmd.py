"""`conv-surgeon get`: a layer's variables (or every conv's) as array files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .app import Command, app
from .array_files import array_format
from .params import ConfigOpt, LayerOpt, LayoutOpt, ModelArg, layout_of, model_source, refuse_terminal, stdout


@app.command(cls=Command)
def get(
    model: ModelArg,
    layer: LayerOpt = None,
    weight: Annotated[Optional[str], typer.Option(
        "--weight", "-w", help="Variable to export (kernel, bias, depthwise_kernel, ...). Default: the kernel, "
        "or every variable for a file that holds several.", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="FILE.npy (one variable), FILE.npz, FILE.safetensors or FILE.h5 (every "
        "variable of the layer), or - for .npy on stdout.", show_default=False)] = None,
    every_layer: Annotated[bool, typer.Option(
        "--all", help="Every convolution variable of the model as one .npz bundle, keys <layer path>/<variable>.")] = False,
    layout: LayoutOpt = "keras",
    config: ConfigOpt = None,
) -> None:
    """Write a layer's weights as .npy, .npz, .safetensors or .h5.

    A .npy holds the kernel (or the variable --weight names); .npz, .safetensors and .h5
    hold every variable of the layer. Without -o, .npy bytes go to stdout.

    Examples:
      conv-surgeon get model.keras -l conv1 -o conv1_kernel.npy
      conv-surgeon get model.keras -l conv1 -o conv1.npz
      conv-surgeon get model.keras -l conv1 -w bias -o conv1_bias.npy
      conv-surgeon get model.keras -l conv1 --layout torch -o weight.npy
      conv-surgeon get model.keras --all -o bundle.npz
    """
    from ..instruments.reading import export_bundle, get_weights
    from ..render import render_export
    from ..store.fileio import refuse_overwriting, write_atomically

    if every_layer == (layer is not None):
        raise UsageError("give --layer L for one layer, or --all for every convolution layer (not both)")
    if output in (None, "-"):
        refuse_terminal(stdout(), "array data", "use -o FILE or pipe the output")
    else:
        refuse_overwriting(output, model, "-o")
    file_format = array_format(output, every_layer)
    source = model_source(model, config)
    if layer is None:
        export = export_bundle(source, layout=layout_of(layout))
    else:
        export = get_weights(source, layer, weight=weight, layout=layout_of(layout),
                             every=file_format.holds_many and weight is None)
    data = file_format.encode(export.arrays)
    if output in (None, "-"):
        out = stdout()
        out.write(data)
        out.flush()
    else:
        write_atomically(Path(output), lambda handle: handle.write(data))
    render_export(export, None if output in (None, "-") else output, every_layer)
