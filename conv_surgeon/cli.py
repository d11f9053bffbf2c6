"""The command line: parse, call one library function, render. Nothing else lives here."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Optional

import click
import typer
from typer.core import TyperGroup

from . import __version__
from .errors import ConvSurgeonError, UsageError

EXIT_INTERNAL = 70


class _ErrorBoundary(TyperGroup):
    """The one place where library errors become one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConvSurgeonError as exc:
            click.echo(f"Error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as other filters do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing was written.", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - every other failure is our bug
            if ctx.obj and ctx.obj.get("debug"):
                click.echo(traceback.format_exc(), err=True, nl=False)
            click.echo(
                f"Internal error (a bug in conv-surgeon {__version__}): "
                f"{type(exc).__name__}: {exc}. Re-run with --debug for the traceback "
                "and report it.",
                err=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(
    cls=_ErrorBoundary,
    help="Convolution weight surgery on saved Keras models (.keras and legacy .h5).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        click.echo(f"conv-surgeon {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    ctx.obj = {"debug": debug}


def _stdin() -> BinaryIO:
    return click.get_binary_stream("stdin")


def _stdout() -> BinaryIO:
    return click.get_binary_stream("stdout")


def _model_source(model: str) -> Any:
    from .modelfile import ModelSource

    if model == "-":
        return ModelSource.from_stream(_stdin())
    return ModelSource.from_path(model)


def _refuse_terminal(stream: BinaryIO, what: str, hint: str) -> None:
    if stream.isatty():
        raise UsageError(f"refusing to write {what} to a terminal; {hint}")


ModelArg = Annotated[str, typer.Argument(help="A .keras or .h5 model file, or - for stdin.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
LayerOpt = Annotated[
    str,
    typer.Option("--layer", "-l", help="Layer name, or a path outer/inner/conv1 where names repeat.", show_default=False),
]


@app.command()
def inspect(
    model: ModelArg,
    all_layers: Annotated[bool, typer.Option("--all", help="List every layer with weights, not only convolutions.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Add min, max, mean, std, L2 norm, zeros and non-finite counts per variable.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """List the convolution layers of MODEL with kernel and bias shapes."""
    from .reading import inspect_model
    from .render import inspect_document, print_json, render_inspect

    report = inspect_model(_model_source(model), all_layers=all_layers, stats=stats)
    if json_output:
        print_json(inspect_document(report))
    else:
        render_inspect(report)


@app.command()
def get(
    model: ModelArg,
    layer: LayerOpt,
    weight: Annotated[
        Optional[str],
        typer.Option("--weight", "-w", help="Variable to export (kernel, bias, depthwise_kernel, ...). Default: the kernel.", show_default=False),
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option("--output", "-o", help="FILE.npy, FILE.npz (all of the layer's variables) or - for stdout.", show_default=False),
    ] = None,
) -> None:
    """Write one variable of a layer as .npy (or all of them as .npz)."""
    from .fileio import npy_bytes, npz_bytes, write_atomically
    from .reading import get_weights

    to_npz = output is not None and output.endswith(".npz")
    if output in (None, "-"):
        _refuse_terminal(_stdout(), "a .npy array", "use -o FILE.npy or pipe the output")
    export = get_weights(_model_source(model), layer, weight=weight, every=to_npz and weight is None)
    for note in export.notes:
        click.echo(f"note: {note}", err=True)
    if to_npz:
        data = npz_bytes(export.arrays)
    else:
        data = npy_bytes(next(iter(export.arrays.values())))
    if output in (None, "-"):
        out = _stdout()
        out.write(data)
        out.flush()
        return
    write_atomically(Path(output), lambda handle: handle.write(data))
    names = ", ".join(f"{name} {tuple(a.shape)}" for name, a in export.arrays.items())
    click.echo(f"wrote {output}: {export.layer.path} {names}", err=True)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="conv-surgeon")


if __name__ == "__main__":
    sys.exit(main())
