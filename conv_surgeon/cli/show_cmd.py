"""`conv-surgeon show`: a layer's kernel as a picture (PNG or terminal), or weight histograms."""

from __future__ import annotations

import os
import shutil
from typing import Annotated, Optional

import click
import typer

from ..errors import UsageError
from ..pictures.options import DEFAULT_COLUMNS, KINDS, REDUCTIONS, SCALES
from .app import REPORTS_TO_STDERR, Command, app
from .params import ConfigOpt, LayerOpt, ModelArg, choice_of, model_source, refuse_terminal, stdout

_TRUECOLOR = ("truecolor", "24bit")  # what COLORTERM says on terminals with 24-bit colour


@app.command(cls=Command)
def show(
    model: ModelArg,
    layer: LayerOpt = None,
    weight: Annotated[Optional[str], typer.Option(
        "--weight", "-w", help="Variable to draw (depthwise_kernel, pointwise_kernel, bias with --hist, ...). "
        "Default: the kernel; with --hist every variable of the layer.", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="FILE.png (written atomically), or - for PNG bytes on stdout. Without it the "
        "picture is drawn on the terminal.", show_default=False)] = None,
    against: Annotated[Optional[str], typer.Option(
        "--against", help="Another save of the same architecture (before.keras): draw A, B and A - B side "
        "by side, on one scale unless --scale says otherwise.", show_default=False)] = None,
    hist: Annotated[bool, typer.Option(
        "--hist", help="Histograms of the variables, with their counts of zeros and non-finite values.")] = False,
    every_layer: Annotated[bool, typer.Option(
        "--all", help="With --hist: one row of histograms per convolution layer.")] = False,
    kind: Annotated[Optional[str], typer.Option(
        "--kind", click_type=click.Choice(KINDS),
        help="Draw the kernel as tiles (one per filter), a matrix (1x1: input channels x filters) or taps (a row "
        "of taps per filter). Default: the one that fits its shape.", show_default=False)] = None,
    columns: Annotated[Optional[int], typer.Option(
        "--columns", min=1, help=f"Tiles per row (default {DEFAULT_COLUMNS}).", show_default=False)] = None,
    input_channel: Annotated[Optional[int], typer.Option(
        "--input-channel", min=0, help="Each tile or tap shows this input channel (default: RGB over 3 "
        "channels, else their mean).", show_default=False)] = None,
    reduce: Annotated[Optional[str], typer.Option(
        "--reduce", click_type=click.Choice(REDUCTIONS),
        help="Each tile or tap shows the mean or the L2 norm over the input channels.", show_default=False)] = None,
    scale: Annotated[Optional[str], typer.Option(
        "--scale", click_type=click.Choice(SCALES),
        help="Colour scale: one for the layer (default), each filter its own, or with --against each panel "
        "(A, B, A - B) its own.", show_default=False)] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="With -o: print what was drawn as one JSON object (kind, axes, stats, colour range, "
        "boxes).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Draw a conv's kernel (PNG or terminal), or weight histograms.

    The picture fits the kernel's shape: one tile per output filter for a spatial kernel,
    a matrix (input channels x filters) for a 1x1 kernel, a heat map of taps x filters
    for a 1-D kernel (--kind to choose). One colour scale for the layer, each filter its
    own (--scale each), or each panel of --against its own (--scale panel); --hist draws
    the histograms of the variables instead.

    Examples:
      conv-surgeon show model.keras -l conv1
      conv-surgeon show model.keras -l conv1 -o conv1.png
      conv-surgeon show after.keras -l conv1 --against before.keras --scale panel -o diff.png
      conv-surgeon show model.keras --all --hist -o histograms.png
    """
    from ..instruments.show import read_shown
    from ..pictures.picture import check_picture_path, draw_picture, write_png
    from ..pictures.options import GridOptions
    from ..render import print_terminal_picture, render_picture

    options = GridOptions(columns, input_channel, None if reduce is None else choice_of(reduce, REDUCTIONS, "--reduce"),
                          None if scale is None else choice_of(scale, SCALES, "--scale"),
                          None if kind is None else choice_of(kind, KINDS, "--kind"))
    options.check(hist, against is not None)
    if every_layer == (layer is not None):
        raise UsageError("give --layer L for one layer, or --all --hist for every convolution layer (not both)")
    if model == against == "-":
        raise UsageError("only one of MODEL and --against can come from stdin ('-')")
    if output is None:
        _check_terminal(hist, json_output)
    elif output == "-":
        refuse_terminal(stdout(), "a PNG image", "use -o FILE.png or pipe the output")
        click.get_current_context().meta[REPORTS_TO_STDERR] = True
    else:
        check_picture_path(output, [model, against])
    data = read_shown(model_source(model, config), layer, weight=weight, histograms=hist,
                      against=model_source(against) if against is not None else None)
    if output is None:
        from ..pictures.terminal import terminal_picture

        truecolor = os.environ.get("COLORTERM", "").lower() in _TRUECOLOR
        width = shutil.get_terminal_size().columns  # COLUMNS when set, as `ls` reads it
        print_terminal_picture(terminal_picture(data, options, width=width, truecolor=truecolor))
        return
    picture = draw_picture(data, options, statistics=json_output)  # only --json prints them
    if output == "-":
        out = stdout()
        out.write(picture.png())
        out.flush()
    else:
        write_png(picture, output)
    render_picture(picture, output, json_output)


def _check_terminal(hist: bool, json_output: bool) -> None:
    """Without -o the grid goes to the terminal, in colour: refuse where it cannot."""
    if json_output:
        raise UsageError("--json reports on a written picture; add -o FILE.png")
    if hist:
        raise UsageError("histograms are drawn as an image: add -o FILE.png (inspect --stats prints the numbers)")
    if not stdout().isatty():
        raise UsageError("stdout is not a terminal, and the grid is drawn only on one; pass -o FILE.png "
                         "(or -o - for PNG bytes on stdout)")
    if os.environ.get("NO_COLOR", "") != "":
        raise UsageError("NO_COLOR is set, and the terminal grid is nothing but colour; pass -o FILE.png "
                         "to write the picture instead")
