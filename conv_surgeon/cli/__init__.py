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

from .. import __version__
from ..edits import LAYOUTS
from ..errors import ConvSurgeonError, ExitCode, InternalError, UsageError



class _ErrorBoundary(TyperGroup):
    """The one place where library errors become one line and an exit code."""

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        # Kept for the provenance record of every write: what the user typed.
        self.argv = ["conv-surgeon", *(sys.argv[1:] if args is None else list(args))]
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        ctx.meta["argv"] = getattr(self, "argv", ["conv-surgeon"])
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
            raise typer.Exit(ExitCode.BROKEN_PIPE) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing was written.", err=True)
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - every other failure is our bug
            if ctx.obj and ctx.obj.get("debug"):
                click.echo(traceback.format_exc(), err=True, nl=False)
                if isinstance(exc, InternalError):
                    click.echo("In the worker process:\n" + exc.worker_traceback, err=True, nl=False)
            click.echo(
                f"Internal error (a bug in conv-surgeon {__version__}): "
                f"{type(exc).__name__}: {exc}. Re-run with --debug for the traceback "
                "and report it.",
                err=True,
            )
            raise typer.Exit(ExitCode.INTERNAL) from None


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
        raise typer.Exit(ExitCode.OK)


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


def _model_source(model: str, config: Path | None = None) -> Any:
    from ..store.source import ModelSource

    if model == "-":
        return ModelSource.from_stream(_stdin(), config=config)
    return ModelSource.from_path(model, config=config)


def _refuse_terminal(stream: BinaryIO, what: str, hint: str) -> None:
    if stream.isatty():
        raise UsageError(f"refusing to write {what} to a terminal; {hint}")


ModelArg = Annotated[str, typer.Argument(help="A .keras or .h5 model, a .weights.h5 or .weights.json weights save, a saved folder or keras-hub preset, or - for stdin.", show_default=False)]
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="For a weights-only MODEL: the model it belongs to (.keras, .h5, saved folder or preset); gives its layers' classes and makes a smoke test possible.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
LayoutOpt = Annotated[
    str,
    typer.Option(
        "--layout",
        click_type=click.Choice(LAYOUTS),
        help="Array layout: keras (default), or torch for PyTorch/ONNX (out, in/groups, *k). Never guessed.",
    ),
]

@app.command()
def inspect(
    model: ModelArg,
    all_layers: Annotated[bool, typer.Option("--all", help="List every layer with weights, not only convolutions.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Add min, max, mean, std, L2 norm, zeros and non-finite counts per variable.")] = False,
    history: Annotated[bool, typer.Option("--history", help="Also print the record of every edit conv-surgeon made to this file.")] = False,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List the convolution layers of MODEL with kernel and bias shapes."""
    from ..ops.reading import inspect_model
    from ..render import inspect_document, print_json, render_inspect

    report = inspect_model(_model_source(model, config), all_layers=all_layers, stats=stats, history=history)
    if json_output:
        print_json(inspect_document(report))
    else:
        render_inspect(report)


OptionalLayerOpt = Annotated[
    Optional[str],
    typer.Option("--layer", "-l", help="Layer name, or a path outer/inner/conv1 where names repeat.", show_default=False),
]


@app.command()
def get(
    model: ModelArg,
    layer: OptionalLayerOpt = None,
    weight: Annotated[
        Optional[str],
        typer.Option("--weight", "-w", help="Variable to export (kernel, bias, depthwise_kernel, ...). Default: the kernel.", show_default=False),
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option("--output", "-o", help="FILE.npy, FILE.npz (all of the layer's variables) or - for stdout.", show_default=False),
    ] = None,
    every_layer: Annotated[
        bool,
        typer.Option("--all", help="Every convolution variable of the model as one .npz bundle, keys <layer path>/<variable>."),
    ] = False,
    layout: LayoutOpt = "keras",
    config: ConfigOpt = None,
) -> None:
    """Write one variable of a layer as .npy (all of its variables, or with --all every conv's, as .npz)."""
    from ..store.fileio import npy_bytes, npz_bytes, refuse_overwriting, write_atomically
    from ..ops.reading import export_bundle, get_weights

    if every_layer == (layer is not None):
        raise UsageError("give --layer L for one layer, or --all for every convolution layer (not both)")
    to_npz = every_layer or (output is not None and output.endswith(".npz"))
    if every_layer and output not in (None, "-") and not output.endswith(".npz"):
        raise UsageError(f"-o {output}: --all writes an .npz bundle; name the output FILE.npz")
    if output in (None, "-"):
        _refuse_terminal(_stdout(), "array data", "use -o FILE or pipe the output")
    else:
        refuse_overwriting(output, model, "-o")
    source = _model_source(model, config)
    if every_layer:
        export = export_bundle(source, layout=layout)
    else:
        assert layer is not None
        export = get_weights(source, layer, weight=weight, every=to_npz and weight is None, layout=layout)
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
    what = f"{len(export.arrays)} arrays" if every_layer else export.layers[0].path + " " + ", ".join(
        f"{name} {tuple(a.shape)}" for name, a in export.arrays.items())
    click.echo(f"wrote {output}: {what}", err=True)


def _parse_pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, equals, rest = value.partition("=")
        if not equals or not name or not rest:
            raise UsageError(f"{option} {value!r}: expected NAME=VALUE, e.g. {option} depthwise_kernel=dw.npy")
        pairs.append((name.strip(), rest))
    return pairs


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = [p for p in text.replace("x", ",").replace("(", "").replace(")", "").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape {text!r}: expected sizes without the batch axis, e.g. 64,64,3")
    return shape


OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Where the edited model goes (- for stdout). Replaced atomically.", show_default=False)]
InPlaceOpt = Annotated[bool, typer.Option("--in-place", help="Overwrite MODEL itself (atomically).")]
NoSmokeOpt = Annotated[bool, typer.Option("--no-smoke", help="Skip the Keras load and forward-pass check.")]
InputShapeOpt = Annotated[list[str], typer.Option("--input-shape", help="Smoke-test input size without batch, e.g. 64,64,3 (one per model input).")]
UnsafeOpt = Annotated[bool, typer.Option("--unsafe", help="Let the smoke test load Lambda layers (runs code from the file).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Check and report what would change; write nothing.")]
CompareOpt = Annotated[bool, typer.Option("--compare", help="Also run the original model on the same inputs and report how the outputs differ.")]
ExpectSameOpt = Annotated[bool, typer.Option("--expect-same", help="With --compare: fail (exit 3, nothing written) if outputs differ beyond --atol/--rtol.")]
AtolOpt = Annotated[float, typer.Option("--atol", help="Absolute tolerance for --expect-same.")]
RtolOpt = Annotated[float, typer.Option("--rtol", help="Relative tolerance for --expect-same.")]
SaveInputsOpt = Annotated[Optional[Path], typer.Option("--save-inputs", help="Save the smoke-test inputs to FILE.npz.", show_default=False)]
LoadInputsOpt = Annotated[Optional[Path], typer.Option("--load-inputs", help="Smoke-test on the arrays of FILE.npz (keys input_0, ... or input names).", show_default=False)]
ImportOpt = Annotated[list[str], typer.Option("--import", help="Import MODULE before Keras loads the model for the smoke test, so its custom layers are registered (repeatable; the current folder is importable).")]
OptionalModelArg = Annotated[
    Optional[str],
    typer.Argument(help="A .keras or .h5 model; omitted or - reads it from stdin.", show_default=False),
]


def _prepare_write(
    model: str | None,
    output: str | None,
    in_place: bool,
    dry_run: bool,
    no_smoke: bool,
    input_shape: list[str],
    unsafe: bool,
    compare: bool,
    expect_same: bool,
    atol: float,
    rtol: float,
    save_inputs: Path | None,
    load_inputs: Path | None,
    imports: list[str],
) -> tuple[Any, Any]:
    """The checks to run and where the model goes, from the options every writer shares."""
    from ..store.fileio import check_output_dir, refuse_overwriting
    from ..transaction.smoke import Tolerance
    from ..transaction.transaction import SmokeOptions, choose_destination

    if save_inputs is not None:
        check_output_dir(save_inputs)
        for protected in (model, output):
            refuse_overwriting(save_inputs, protected, "--save-inputs")
    if load_inputs is not None and not load_inputs.is_file():
        raise ConvSurgeonError(f"--load-inputs {load_inputs}: no such file; check the path")
    if expect_same and not compare:
        raise UsageError("--expect-same needs --compare (it checks the comparison's result)")
    if no_smoke and (compare or load_inputs or save_inputs):
        raise UsageError("--compare, --load-inputs and --save-inputs run Keras; drop --no-smoke")
    checks = SmokeOptions(
        enabled=not no_smoke,
        input_shapes=[_parse_shape(s) for s in input_shape] or None,
        unsafe=unsafe,
        compare=compare,
        expect_same=Tolerance(atol, rtol) if expect_same else None,
        load_inputs=load_inputs,
        save_inputs=save_inputs,
        imports=tuple(imports),
    )
    if no_smoke and imports:
        raise UsageError("--import is for the smoke test; drop it or drop --no-smoke")
    if model in (None, "-") and _stdin().isatty():
        raise UsageError("no model given: pass MODEL, or pipe one in (`conv-surgeon set ... < in.keras`)")
    destination = None
    if not dry_run:
        destination = choose_destination(model, output, in_place, _stdout())
        if destination.stream is not None:
            _refuse_terminal(destination.stream, "a model", "redirect it (> out.keras) or use -o OUT")
    return checks, destination


def _render_write(report: Any, destination: Any, json_output: bool) -> None:
    from ..render import print_json, render_set_report, set_document

    # When stdout carries the model, every report goes to stderr.
    stream = sys.stderr if destination is not None and destination.stream is not None else sys.stdout
    if json_output:
        print_json(set_document(report), stream)
    else:
        render_set_report(report, stream)


@app.command("set")
def set_command(
    model: OptionalModelArg = None,
    layer: OptionalLayerOpt = None,
    kernel: Annotated[Optional[str], typer.Option("--kernel", help="SRC for the kernel: file.npy, file.npz:KEY, file.h5:PATH, file.safetensors:KEY, file.pt:KEY or - (stdin).", show_default=False)] = None,
    bias: Annotated[Optional[str], typer.Option("--bias", help="SRC for the bias.", show_default=False)] = None,
    weight: Annotated[list[str], typer.Option("--weight", help="NAME=SRC for any variable, e.g. depthwise_kernel=dw.npy (repeatable).")] = [],
    kernel_init: Annotated[Optional[str], typer.Option("--kernel-init", help="Initializer SPEC for the kernel: NAME[:key=value,...], e.g. he_normal.", show_default=False)] = None,
    bias_init: Annotated[Optional[str], typer.Option("--bias-init", help="Initializer SPEC for the bias, e.g. zeros.", show_default=False)] = None,
    weight_init: Annotated[list[str], typer.Option("--weight-init", help="NAME=SPEC for any variable (repeatable).")] = [],
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for initializers, 0 to 2**63-1 (drawn and reported when omitted).", show_default=False)] = None,
    donor: Annotated[Optional[str], typer.Option("--from", help="Copy every variable of a layer from another model: A.keras or A.keras:LAYER (default: the same name).", show_default=False)] = None,
    from_npz: Annotated[Optional[Path], typer.Option("--from-npz", help="Set every variable of an .npz bundle (keys <layer path>/<variable>, as `get --all` writes), in one write.", show_default=False)] = None,
    layout: LayoutOpt = "keras",
    output: OutputOpt = None,
    in_place: InPlaceOpt = False,
    no_smoke: NoSmokeOpt = False,
    input_shape: InputShapeOpt = [],
    unsafe: UnsafeOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    compare: CompareOpt = False,
    expect_same: ExpectSameOpt = False,
    atol: AtolOpt = 1e-5,
    rtol: RtolOpt = 1e-5,
    save_inputs: SaveInputsOpt = None,
    load_inputs: LoadInputsOpt = None,
    imports: ImportOpt = [],
    config: ConfigOpt = None,
) -> None:
    """Set variables of a convolution layer from arrays, initializers or another model, then smoke-test."""
    from ..transaction.transaction import WriteOptions
    from ..ops.surgery import (
        WeightRequest,
        bundle_edits,
        edit_model,
        parse_donor,
        require_requests,
        set_weights,
    )

    requests = []
    if kernel is not None:
        requests.append(WeightRequest(None, source=kernel))
    if bias is not None:
        requests.append(WeightRequest("bias", source=bias))
    requests += [WeightRequest(name, source=src) for name, src in _parse_pairs(weight, "--weight")]
    if kernel_init is not None:
        requests.append(WeightRequest(None, init=kernel_init))
    if bias_init is not None:
        requests.append(WeightRequest("bias", init=bias_init))
    requests += [WeightRequest(name, init=spec) for name, spec in _parse_pairs(weight_init, "--weight-init")]
    donor_spec = parse_donor(donor) if donor is not None else None
    if from_npz is not None:
        if layer is not None or requests or donor_spec is not None:
            raise UsageError("--from-npz sets the layers its keys name; drop --layer and the weight options")
    else:
        if layer is None:
            raise UsageError("missing --layer: name the layer to edit (or use --from-npz BUNDLE)")
        require_requests(requests, donor_spec)
    checks, destination = _prepare_write(
        model, output, in_place, dry_run, no_smoke, input_shape, unsafe, compare, expect_same,
        atol, rtol, save_inputs, load_inputs, imports,
    )
    source = _model_source(model or "-", config)
    options = WriteOptions(destination, checks, tuple(_command()))
    if from_npz is not None:
        report = edit_model(source, bundle_edits(from_npz, layout), options, seed=seed,
                            progress=_progress())
    else:
        assert layer is not None
        report = set_weights(source, layer, requests, options, seed=seed, stdin=_stdin(),
                             layout=layout, donor=donor_spec)
    _render_write(report, destination, json_output)


@app.command("apply")
def apply_command(
    model: OptionalModelArg = None,
    plan: Annotated[Optional[Path], typer.Argument(help="A JSON or TOML plan of edits (see --schema).", show_default=False)] = None,
    schema: Annotated[bool, typer.Option("--schema", help="Print the plan's JSON Schema and exit.")] = False,
    output: OutputOpt = None,
    in_place: InPlaceOpt = False,
    no_smoke: NoSmokeOpt = False,
    input_shape: InputShapeOpt = [],
    unsafe: UnsafeOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    compare: CompareOpt = False,
    expect_same: ExpectSameOpt = False,
    atol: AtolOpt = 1e-5,
    rtol: RtolOpt = 1e-5,
    save_inputs: SaveInputsOpt = None,
    load_inputs: LoadInputsOpt = None,
    imports: ImportOpt = [],
    config: ConfigOpt = None,
) -> None:
    """Apply every edit of a plan, all or nothing: one write and one smoke test."""
    import json

    from ..edits.plan import load_plan, plan_schema
    from ..ops.surgery import apply_plan
    from ..transaction.transaction import WriteOptions

    if schema:
        click.echo(json.dumps(plan_schema(), indent=2))
        return
    if model is None or plan is None:
        raise UsageError("apply needs MODEL and PLAN: conv-surgeon apply model.keras plan.toml -o out.keras")
    checks, destination = _prepare_write(
        model, output, in_place, dry_run, no_smoke, input_shape, unsafe, compare, expect_same,
        atol, rtol, save_inputs, load_inputs, imports,
    )
    report = apply_plan(_model_source(model, config), load_plan(plan),
                        WriteOptions(destination, checks, tuple(_command())), progress=_progress())
    _render_write(report, destination, json_output)


@app.command()
def diff(
    model_a: Annotated[str, typer.Argument(metavar="A", help="A .keras or .h5 model.", show_default=False)],
    model_b: Annotated[str, typer.Argument(metavar="B", help="The model to compare it with.", show_default=False)],
    all_layers: Annotated[bool, typer.Option("--all", help="Compare every layer with weights, not only convolutions.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Compare the weights of two models. Exit 0 identical, 1 different, 2 error (as diff(1))."""
    from ..ops.compare import diff_models
    from ..render import diff_document, print_json, render_diff

    try:
        if model_a == model_b == "-":
            raise UsageError("only one of A and B can come from stdin ('-')")
        report = diff_models(_model_source(model_a), _model_source(model_b), all_layers=all_layers)
    except ConvSurgeonError as exc:
        exc.exit_code = ExitCode.USAGE  # scripts test diff's status: 2 means trouble, as in diff(1)
        raise
    if json_output:
        print_json(diff_document(report))
    else:
        render_diff(report)
    if not report.identical:
        raise typer.Exit(ExitCode.FAILED)


def _command() -> list[str]:
    return list(click.get_current_context().meta.get("argv", ["conv-surgeon"]))


def _progress() -> Any:
    """A progress display on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    from ..render import progress_callback

    return progress_callback(sys.stderr)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="conv-surgeon")


if __name__ == "__main__":
    sys.exit(main())
