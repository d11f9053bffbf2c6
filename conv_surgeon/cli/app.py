"""The Typer app, the options every command has, and the one error boundary.

Every failure of a command ends here: a library error becomes one ``Error:`` line and
its exit code (and, in ``--json`` mode, a JSON object too); anything else is a bug,
exit 70, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any, TextIO

import click
import typer
from typer.core import TyperCommand, TyperGroup

from .._version import __version__
from ..errors import ConvSurgeonError, ExitCode, InternalError, PlanError, Terminated, stopped

# Keys of click's ``ctx.meta``, which every context of one invocation shares.
ARGV = "conv_surgeon.argv"  # what the user typed, for the provenance record of a write
DEBUG = "conv_surgeon.debug"  # --debug, before or after the command
REPORTS_TO_STDERR = "conv_surgeon.reports_to_stderr"  # stdout carries the model


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[DEBUG] = True


_DEBUG_HELP = "Show the traceback of an internal error, and Keras's own when it cannot load or run a model."


class Command(TyperCommand):
    """A command that also takes ``--debug`` after its name (``inspect m.keras --debug``).

    Its help (the docstring) starts with a one-line summary, a paragraph of its own:
    ``conv-surgeon --help`` lists it whole (click would cut a summary it makes itself at
    about 45 characters, mid-sentence). It ends with ``Examples:``, one command line a
    line, shown as a section of their own after the options, each line kept whole.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False,
                                        callback=_set_debug, help=_DEBUG_HELP))
        description, _, examples = inspect.cleandoc(self.help or "").partition("\nExamples:\n")
        self.help = description
        self.examples = [line.strip() for line in examples.splitlines() if line.strip()]
        if description and not self.short_help:
            self.short_help = description.split("\n\n", 1)[0]
        self._keep_argument_help()

    def _keep_argument_help(self) -> None:
        """Give each argument its help text back: typer (0.25) sets it before click's
        Argument.__init__, which since click 8.5 resets it to None."""
        from typer.models import ArgumentInfo
        from typer.utils import get_params_from_function

        if self.callback is None:
            return
        declared = get_params_from_function(self.callback)
        for param in self.params:
            info = declared[param.name].default if param.name in declared else None
            if isinstance(param, click.Argument) and isinstance(info, ArgumentInfo) and not param.help:
                param.help = info.help

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Nothing: typer lists the arguments with the options; click 8.5 would list them twice."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if self.examples:
            with formatter.section("Examples"):
                for line in self.examples:  # never rewrapped: each is a command to copy
                    formatter.write(" " * formatter.current_indent + line + "\n")


class _ErrorBoundary(TyperGroup):
    """The one place where errors become one line and an exit code."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        self.argv = ["conv-surgeon", *(sys.argv[1:] if args is None else list(args))]
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        ctx.meta[ARGV] = getattr(self, "argv", ["conv-surgeon"])
        try:
            try:
                return super().invoke(ctx)
            except Exception as exc:
                # A signal that a library swallowed, leaving it to fail in its own words (a
                # SIGTERM cut an import short: "you need to have `optree` installed"): the
                # signal is what happened.
                interruption = stopped()
                if interruption is not None and not isinstance(exc, (click.exceptions.Exit, click.exceptions.Abort)):
                    raise interruption from None
                raise
        except ConvSurgeonError as exc:
            problems = exc.problems if isinstance(exc, PlanError) else ()
            _render_error(str(exc), exc.exit_code, self._json_stream(ctx), problems=problems)
            if ctx.meta.get(DEBUG) and exc.detail:
                from ..render import render_traceback

                render_traceback(exc.detail)
            raise typer.Exit(exc.exit_code) from None
        except click.ClickException as exc:
            # Click prints its usage message itself; a program reading JSON gets one too.
            stream = self._json_stream(ctx)
            if stream is not None:
                from ..render import print_json

                print_json({"error": exc.format_message(), "exit_code": exc.exit_code}, stream)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as other filters do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(ExitCode.BROKEN_PIPE) from None
        except KeyboardInterrupt as exc:
            code = 128 + exc.signum if isinstance(exc, Terminated) else int(ExitCode.INTERRUPTED)
            what = f"stopped by {exc.name}" if isinstance(exc, Terminated) else "interrupted"
            _render_error(f"{what}; nothing was written", code, self._json_stream(ctx))
            raise typer.Exit(code) from None
        except Exception as exc:  # noqa: BLE001 - every other failure is our bug
            from ..render import render_traceback

            if ctx.meta.get(DEBUG):
                render_traceback(traceback.format_exc())
                if isinstance(exc, InternalError):
                    render_traceback("In the worker process:\n" + exc.worker_traceback)
            _render_error(
                f"{type(exc).__name__}: {exc}. Re-run with --debug for the traceback and report it.",
                ExitCode.INTERNAL, self._json_stream(ctx),
                label=f"Internal error (a bug in conv-surgeon {__version__})",
            )
            raise typer.Exit(ExitCode.INTERNAL) from None

    def _json_stream(self, ctx: click.Context) -> TextIO | None:
        """Where an error's JSON object goes: None unless the command was given ``--json``;
        stderr when stdout was to carry the model, as every report then does."""
        words = list(getattr(self, "argv", []))[1:]
        words = words[: words.index("--")] if "--" in words else words
        name = next((word for word in words if not word.startswith("-")), None)
        command = self.get_command(ctx, name) if name is not None else None
        if command is None or "--json" not in words[words.index(name) + 1 :]:
            return None
        if not any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params):
            return None
        return sys.stderr if ctx.meta.get(REPORTS_TO_STDERR) else sys.stdout


def _render_error(message: str, exit_code: int, json_stream: TextIO | None, *,
                  problems: Sequence[str] = (), label: str = "Error") -> None:
    from ..render import render_error

    render_error(message, exit_code, json_stream=json_stream, problems=problems, label=label)


app = typer.Typer(
    cls=_ErrorBoundary,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        click.echo(f"conv-surgeon {__version__}")
        raise typer.Exit(ExitCode.OK)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", callback=_set_debug, help=_DEBUG_HELP)] = False,
) -> None:
    """Convolution weight surgery on saved Keras models: look inside, read and set a
    convolution's weights, fold BatchNormalization, prune filters, draw them.

    MODEL is any Keras save: a .keras archive, a legacy .h5 model, a .weights.h5 or a
    sharded .weights.json weights-only save (--config MODEL gives its classes), a folder
    written by model.save(DIR, zipped=False), a keras-hub preset folder, or - for a .keras
    or .h5 read from stdin.

    Run conv-surgeon COMMAND --help for a command's options and examples.
    """


def command_line() -> tuple[str, ...]:
    """What the user typed, for the provenance record of a write."""
    ctx = click.get_current_context(silent=True)
    return tuple(ctx.meta.get(ARGV, ["conv-surgeon"]) if ctx is not None else ["conv-surgeon"])


def main() -> None:
    """Console-script entry point."""
    app(prog_name="conv-surgeon")
