"""The help a user reads: `conv-surgeon --help` lists every command with its whole summary
and names every kind of save; each command's --help describes its arguments and ends in
examples that the command itself accepts; initializer names complete in the shell."""

from __future__ import annotations

import re
import shlex
import typing

import click
import pytest
import typer
from typer.testing import CliRunner

from conv_surgeon.cli import app
from conv_surgeon.cli.params import complete_initializer
from conv_surgeon.edits.initializers import initializer_names, parse_initializer_spec
from conv_surgeon.store.model_file import ModelFormat

ROOT_GROUP = typer.main.get_command(app)
assert isinstance(ROOT_GROUP, click.Group)
COMMANDS = sorted(ROOT_GROUP.commands)


def help_text(*words: str, columns: int = 80) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": str(columns)}, catch_exceptions=False)
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    return result.stdout


def examples(text: str) -> list[str]:
    """The example command lines of a command's --help: its last section, ``Examples:``."""
    head, found, section = text.partition("\nExamples:\n")
    assert found and "\nOptions:\n" in head, text
    assert all(line.startswith("  ") for line in section.splitlines()), section
    return [line.strip() for line in section.splitlines()]


# --- conv-surgeon --help ----------------------------------------------------------------------------


def test_the_command_list_shows_every_summary_whole_on_one_line_at_80_columns() -> None:
    text = help_text()
    listed = text.split("\nCommands:\n", 1)[1].splitlines()
    for name in COMMANDS:
        summary = ROOT_GROUP.commands[name].get_short_help_str()
        assert summary and not summary.endswith("...")
        # The summary is the first paragraph of the command's own help, not a cut of it.
        assert (ROOT_GROUP.commands[name].help or "").strip().startswith(summary)
        assert any(re.fullmatch(rf"  {re.escape(name)} +{re.escape(summary)}", line) for line in listed), name
    assert "..." not in text.split("\nCommands:\n", 1)[1]


# Every kind of save the model file reader opens, and how the app's help names it.
SAVE_NAMES: dict[str, tuple[str, ...]] = {
    "keras": (".keras",),
    "h5": (".h5 model",),
    "weights": (".weights.h5",),
    "sharded": ("sharded .weights.json",),
    "dir": ("model.save(DIR, zipped=False)",),
    "preset": ("keras-hub preset",),
}


def test_the_app_help_names_every_kind_of_save_it_reads() -> None:
    assert set(SAVE_NAMES) == set(typing.get_args(ModelFormat))  # a new kind needs its words here
    text = " ".join(help_text().split())  # as one line: wrapping moves the words
    for names in SAVE_NAMES.values():
        for name in names:
            assert name in text, name
    assert "- for a .keras or .h5 read from stdin" in text


# --- each command's --help --------------------------------------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_ends_in_examples_the_command_accepts(name: str) -> None:
    text = help_text(name)
    lines = examples(text)
    assert len(lines) >= 3, text
    command = ROOT_GROUP.commands[name]
    for line in lines:
        words = shlex.split(re.split(r" (?:\||&&|<|>) ", line, maxsplit=1)[0])
        assert words[:2] == ["conv-surgeon", name], line
        # click parses the example's options and arguments as it would on the command line.
        with command.make_context(name, words[2:]) as ctx:
            assert ctx.command is command
    # Each example is one line, kept whole (click rewraps paragraphs), within 80 columns.
    assert all(len(line) <= 80 for line in text.splitlines()), [line for line in text.splitlines() if len(line) > 80]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_argument_is_described_once(name: str) -> None:
    text = help_text(name)
    command = ROOT_GROUP.commands[name]
    section = text.split("\nArguments:\n", 1)[1].split("\nOptions:\n", 1)[0].splitlines()
    for argument in (p for p in command.params if isinstance(p, click.Argument)):
        (line,) = [line for line in section if line.strip().split(" ")[0].strip("[]") == (argument.metavar or
                                                                                           argument.name or "").upper()]
        description = line.strip().split(None, 1)[1:]
        assert description and len(description[0]) > 10, line
    assert "Positional arguments" not in text


def test_the_model_argument_of_set_says_what_it_reads() -> None:
    text = " ".join(help_text("set").split())
    assert "[MODEL] The model to edit: a .keras or .h5 model" in text
    assert "omitted or -: read from stdin" in text


# --- initializer completion -------------------------------------------------------------------------


def option(command: str, name: str) -> click.Parameter:
    return next(p for p in ROOT_GROUP.commands[command].params if isinstance(p, click.Option) and name in p.opts)


def completed(name: str, incomplete: str) -> list[str]:
    ctx = click.Context(ROOT_GROUP.commands["set"], info_name="set", resilient_parsing=True)
    return [item.value for item in complete_initializer(ctx, option("set", name), incomplete)]


def test_initializer_options_complete_the_names_keras_knows() -> None:
    assert completed("--kernel-init", "he") == ["he_normal", "he_uniform"]
    assert completed("--bias-init", "Ze") == ["zeros"]
    every = completed("--kernel-init", "")
    assert every == initializer_names() and len(every) >= 15
    for name in every:  # each completion is a spec `set` accepts as it is
        assert parse_initializer_spec(name).text == name
    assert completed("--kernel-init", "nothing_like_it") == []


def test_weight_init_completes_the_spec_after_the_variable_name() -> None:
    assert completed("--weight-init", "depthwise_kernel=glorot") == [
        "depthwise_kernel=glorot_normal", "depthwise_kernel=glorot_uniform"]
    assert completed("--weight-init", "depthwise") == []  # the name is the user's to type


def test_the_shell_gets_the_initializer_names() -> None:
    env = {"_CONV_SURGEON_COMPLETE": "complete_bash",
           "COMP_WORDS": "conv-surgeon set model.keras --layer conv1 --kernel-init lecun", "COMP_CWORD": "6"}
    result = CliRunner().invoke(app, [], env=env, prog_name="conv-surgeon")
    assert result.exit_code == 0
    assert result.stdout.split() == ["lecun_normal", "lecun_uniform"]
