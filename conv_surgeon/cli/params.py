"""Arguments and options that several commands take, declared once; the standard streams."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, Optional, TypeVar

import click
import typer
from click.shell_completion import CompletionItem

from ..edits import LAYOUTS, Layout, seed_range_error
from ..errors import UsageError
from ..surgery import OPTIMIZER_POLICIES, OptimizerPolicy

if TYPE_CHECKING:
    from ..store.model_file import ModelFile


def stdin() -> BinaryIO:
    return sys.stdin.buffer


def stdout() -> BinaryIO:
    return sys.stdout.buffer


def refuse_terminal(stream: BinaryIO, what: str, hint: str) -> None:
    if stream.isatty():
        raise UsageError(f"refusing to write {what} to a terminal; {hint}")


def model_source(model: str, config: Path | None = None) -> ModelFile:
    """MODEL as the library reads it: a path, or ``-`` for the bytes on stdin."""
    from ..store.model_file import ModelFile

    if model == "-":
        return ModelFile.from_stream(stdin(), config=config)
    return ModelFile.from_path(model, config=config)


Chosen = TypeVar("Chosen", bound=str)


def choice_of(value: str, choices: tuple[Chosen, ...], option: str) -> Chosen:
    """A value click's Choice has checked, with the type of its choices."""
    for choice in choices:
        if value == choice:
            return choice
    raise UsageError(f"{option} {value}: expected one of {', '.join(choices)}")


def layout_of(value: str) -> Layout:
    return choice_of(value, LAYOUTS, "--layout")


def optimizer_policy_of(value: str) -> OptimizerPolicy:
    return choice_of(value, OPTIMIZER_POLICIES, "--optimizer")


def complete_layer(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of ``--layer``: the layer paths of the MODEL already typed.

    Reads the structure only (h5py in a bounded worker, never TensorFlow); a missing or
    unreadable model completes nothing rather than print anything into the shell.
    """
    model = ctx.params.get("model") or _first_argument(ctx)
    if not isinstance(model, str) or model == "-":
        return []
    config = ctx.params.get("config")
    try:
        from ..model.structure import read_structure
        from ..store.model_file import ModelFile

        structure = read_structure(ModelFile.from_path(
            os.path.expanduser(model), config=os.path.expanduser(config) if isinstance(config, (str, Path)) else None))
    except Exception:  # noqa: BLE001 - completion must never fail into the user's shell
        return []
    # A name typed without its path (`deep_conv`) completes to the path that ends in it.
    matches = [layer for layer in structure.layers if layer.path.startswith(incomplete) or layer.name.startswith(incomplete)]
    return [CompletionItem(layer.path, help=layer.class_name) for layer in matches]


def complete_initializer(_ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of an initializer SPEC: the names of Keras's built-in initializers.
    For ``--weight-init NAME=SPEC`` the SPEC after ``NAME=`` is completed."""
    from ..edits.initializers import initializer_names

    prefix = ""
    if "--weight-init" in getattr(param, "opts", ()):
        name, equals, incomplete = incomplete.partition("=")
        if not equals:
            return []  # the variable's name comes first
        prefix = name + equals
    typed = incomplete.lower()
    return [CompletionItem(prefix + name) for name in initializer_names() if name.startswith(typed)]


def _first_argument(ctx: click.Context) -> str | None:
    """The first argument among the words click left unparsed.

    Click parses the words before the one being completed, but gives up on all of
    them when the last is an option still waiting for its value (`--layer <TAB>`).
    """
    takes_value = {name for p in ctx.command.params if isinstance(p, click.Option) and not p.is_flag
                   for name in p.opts}
    words = iter(ctx.args)
    for word in words:
        if word == "--":
            return next(words, None)
        if not word.startswith("-") or word == "-":
            return word
        if word in takes_value:
            next(words, None)  # its value
    return None


ModelArg = Annotated[str, typer.Argument(
    help="A .keras or .h5 model, a .weights.h5 or .weights.json weights save, a saved folder or "
    "keras-hub preset, or - for stdin.", show_default=False)]
OptionalModelArg = Annotated[Optional[str], typer.Argument(
    help="The model to edit: a .keras or .h5 model, a .weights.h5 or .weights.json weights save, "
    "a saved folder or keras-hub preset; omitted or -: read from stdin.",
    show_default=False)]
LayerOpt = Annotated[Optional[str], typer.Option(
    "--layer", "-l", help="Layer name, or a path outer/inner/conv1 where names repeat.",
    show_default=False, shell_complete=complete_layer)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="For a weights-only MODEL: the model it belongs to (.keras, .h5, saved folder or "
    "preset); gives its layers' classes and makes a smoke test possible.", show_default=False)]
LayoutOpt = Annotated[str, typer.Option(
    "--layout", click_type=click.Choice(LAYOUTS),
    help="Array layout: keras (default), or torch for PyTorch/ONNX (out, in/groups, *k). Never guessed.")]

OptimizerOpt = Annotated[str, typer.Option(
    "--optimizer", click_type=click.Choice(OPTIMIZER_POLICIES),
    help="The optimizer slots (Adam's m and v, ...) of every variable replaced: reset to zero (default), "
    "or keep as they are. The iteration count is kept either way.")]


class SeedParam(click.ParamType[int]):
    """``--seed``: an integer, read without ``int()``'s limit of 4300 digits. A seed out of
    the range is the usage error :func:`~..edits.check_seed` words, a long one described
    by its length rather than echoed."""

    name = "integer"
    _DIGITS = re.compile(r"[+-]?[0-9]+")

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not self._DIGITS.fullmatch(text):
            shown = text if len(text) <= 40 else text[:37] + "..."
            self.fail(f"{shown!r} is not a valid integer.", param, ctx)
        digits = len(text.lstrip("+-"))
        if digits > 30:
            raise seed_range_error("--seed", f"(an integer of {digits} digits)")
        return int(text)
