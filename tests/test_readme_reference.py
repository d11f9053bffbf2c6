"""Every command and every option of every command is in the README's command reference,
and has help text."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer

from conv_surgeon.cli import app

ROOT = Path(__file__).resolve().parent.parent


def reference() -> str:
    text = (ROOT / "README.md").read_text()
    assert "### Command reference" in text
    return text.split("### Command reference", 1)[1].split("\n### ", 1)[0]


def root() -> click.Group:
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    return group


def documented(option: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def options(command: click.Command) -> list[str]:
    return [opt for p in command.params if isinstance(p, click.Option) for opt in p.opts + p.secondary_opts]


COMMANDS = sorted(root().commands)


def test_the_commands_are_the_ones_this_test_knows() -> None:
    assert COMMANDS == ["apply", "diff", "equalize", "fold-bn", "get", "inspect", "port", "prune", "set", "show"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_every_command_is_in_the_reference(name: str) -> None:
    text = reference()
    command = root().commands[name]
    assert f"conv-surgeon {name}" in text
    missing = [opt for opt in options(command) if not documented(opt, text)]
    assert missing == []


def test_every_option_of_the_app_is_in_the_reference() -> None:
    text = reference()
    assert [opt for opt in options(root()) if not documented(opt, text) and opt != "--help"] == []


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_and_option_has_help_text(name: str) -> None:
    command = root().commands[name]
    assert (command.help or "").strip()
    assert [p.name for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()] == []
