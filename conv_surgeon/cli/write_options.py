"""The options of every command that writes a model (`set`, `apply`), declared once.

Each option is one field of :class:`WriteArgs`; :func:`with_write_options` adds them
all to a command, which receives them as one ``write: WriteArgs`` parameter, and
:meth:`WriteArgs.options_for` is the one place they become the library's
:class:`~conv_surgeon.transaction.transaction.WriteOptions`.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import click
import typer

from ..errors import UsageError
from .app import REPORTS_TO_STDERR, command_line
from .params import ConfigOpt, JsonOpt, refuse_terminal, stdin, stdout

from ..runtime.checks import FUNCTION_KEPT, Tolerance

if TYPE_CHECKING:
    from ..instruments.writing import CheckDefaults, WriteRequest
    from ..transaction.transaction import WriteOptions


@dataclass(frozen=True)
class WriteArgs:
    """Where the edited model goes and how it is checked, as the user typed it."""

    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Where the edited model goes (- for stdout). Replaced atomically.",
        show_default=False)] = None
    in_place: Annotated[bool, typer.Option("--in-place", help="Overwrite MODEL itself (atomically).")] = False
    no_clobber: Annotated[bool, typer.Option(
        "--no-clobber", "-n", help="Refuse to replace an existing -o file (as cp -n).")] = False
    no_smoke: Annotated[bool, typer.Option("--no-smoke", help="Skip the Keras load and forward-pass check.")] = False
    input_shape: Annotated[list[str], typer.Option(
        "--input-shape",
        help="Smoke-test input size without batch, e.g. 64,64,3 (one per model input)."),
    ] = field(default_factory=list)
    unsafe: Annotated[bool, typer.Option(
        "--unsafe", help="Let the smoke test load Lambda layers (runs code from the file).")] = False
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and report what would change; write nothing.")] = False
    json_output: JsonOpt = False
    compare: Annotated[bool, typer.Option(
        "--compare", help="Also run the original model on the same inputs and report how the outputs differ.")] = False
    expect_same: Annotated[bool, typer.Option(
        "--expect-same",
        help="With --compare (port: or --reference): fail (exit 3, nothing written) if outputs differ beyond "
        "--atol/--rtol.")] = False
    atol: Annotated[Optional[float], typer.Option("--atol", help=(
        f"Absolute tolerance for --expect-same (default {Tolerance().atol:g}; fold-bn, prune --zeros and port "
        f"--reference: added to float32 rounding, default {FUNCTION_KEPT.atol:g} there)."), show_default=False)] = None
    rtol: Annotated[Optional[float], typer.Option("--rtol", help=(
        f"Relative tolerance for --expect-same (default {Tolerance().rtol:g}; fold-bn, prune --zeros and port "
        f"--reference: added to float32 rounding, default {FUNCTION_KEPT.rtol:g} there; port --reference: "
        "relative to the output's scale)."), show_default=False)] = None
    save_inputs: Annotated[Optional[Path], typer.Option(
        "--save-inputs", help="Save the smoke-test inputs to FILE.npz.", show_default=False)] = None
    load_inputs: Annotated[Optional[Path], typer.Option(
        "--load-inputs", help="Smoke-test on the arrays of FILE.npz (keys input_0, ... or input names).",
        show_default=False)] = None
    imports: Annotated[list[str], typer.Option(
        "--import",
        help="Import MODULE before Keras loads the model for the smoke test, so its custom layers are "
        "registered (repeatable; the current folder is importable)."),
    ] = field(default_factory=list)
    config: ConfigOpt = None

    def model_on_stdout(self, model: str | None) -> bool:
        """Whether stdout is to carry the model (then every report goes to stderr)."""
        if self.dry_run or self.in_place:
            return False
        return self.output == "-" or (self.output is None and model in (None, "-"))

    def request_for(self, model: str | None) -> WriteRequest:
        """The write as the user asked for it (``model`` None or ``-``: stdin)."""
        from ..instruments.writing import CheckRequest, WriteRequest

        checks = CheckRequest(
            smoke=not self.no_smoke, input_shapes=tuple(parse_shape(text) for text in self.input_shape),
            unsafe=self.unsafe, compare=self.compare, expect_same=self.expect_same, atol=self.atol,
            rtol=self.rtol, load_inputs=self.load_inputs, save_inputs=self.save_inputs,
            imports=tuple(self.imports),
        )
        return WriteRequest(model, self.output, self.in_place, self.dry_run, checks, command_line(),
                            no_clobber=self.no_clobber)

    def options_for(self, model: str | None, defaults: CheckDefaults) -> WriteOptions:
        """The transaction's options for a write of ``model`` by an instrument whose
        checks are ``defaults``."""
        from ..instruments.writing import write_options

        request = self.request_for(model)
        if model in (None, "-") and stdin().isatty():
            raise UsageError("no model given: pass MODEL, or pipe one in (`conv-surgeon set ... < in.keras`)")
        options = write_options(request, defaults, stdout())
        if options.destination is not None and options.destination.stream is not None:
            refuse_terminal(options.destination.stream, "a model", "redirect it (> out.keras) or use -o OUT")
        return options


@contextmanager
def counted_steps(options: WriteOptions) -> Iterator[Callable[[str], None]]:
    """A ``step`` callback for a graph-surgery write (written, then checked): it moves a
    progress line while the block runs, on a terminal only."""
    from ..instruments.writing import surgery_steps
    from ..render import progress_on_terminal

    with progress_on_terminal() as progress:
        yield surgery_steps(progress, options)


def report_stream(options: WriteOptions) -> TextIO:
    """Where the report goes: stdout, unless stdout carries the model."""
    destination = options.destination
    return sys.stderr if destination is not None and destination.stream is not None else sys.stdout


# ASCII digits, at most nine: a size int() can always read (no 5000-digit size reaches it).
_SIZE = re.compile(r"\s*([0-9]{1,9})\s*")


def parse_shape(text: str) -> tuple[int, ...]:
    """``64,64,3``, ``64x64x3`` or ``(64, 64, 3)``: sizes without the batch axis."""
    body = text.strip()
    if body.startswith("(") and body.endswith(")"):
        body = body[1:-1]
    parts = re.split(r"[,x]", body)
    if len(parts) > 1 and not parts[-1].strip():
        parts = parts[:-1]  # a tuple's trailing comma: (64,)
    sizes = [_SIZE.fullmatch(part) for part in parts]
    if not all(sizes) or any(int(m.group(1)) <= 0 for m in sizes if m):
        raise UsageError(
            f"--input-shape {text!r}: expected positive sizes without the batch axis, separated by "
            "commas or x, e.g. 64,64,3"
        )
    return tuple(int(m.group(1)) for m in sizes if m)


def with_write_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add every field of :class:`WriteArgs` to ``command`` as an option; the command
    receives them as one ``write: WriteArgs`` parameter.

    Typer reads a command's options from its signature, so the wrapper's signature is
    the command's own parameters followed by the fields.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "write"]
    hints = typing.get_type_hints(WriteArgs, include_extras=True)
    shared = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
            default=f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default,
        )
        for f in fields(WriteArgs)
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        write = WriteArgs(**{f.name: kwargs.pop(f.name) for f in fields(WriteArgs)})
        # Known before anything can fail, so that an error's JSON goes where the report would.
        click.get_current_context().meta[REPORTS_TO_STDERR] = write.model_on_stdout(kwargs.get("model"))
        command(**kwargs, write=write)

    parameters = own + shared
    setattr(wrapper, "__signature__", signature.replace(parameters=parameters))
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
