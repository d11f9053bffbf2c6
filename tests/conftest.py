"""Shared fixtures: the committed sample models (written by real Keras) and a CLI runner."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

# tests/architectures.py: the session fixture `architectures` (real architectures, built once).
pytest_plugins = ["architectures"]

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
DATA = Path(__file__).resolve().parent / "data"

# Numbers the tests compute with TensorFlow must not come from its oneDNN CPU kernels,
# which compute some convolutions wrong on some CPUs (README, smoke test); the tool's own
# check turns them off too. Set before any test module imports TensorFlow.
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
# pytest-xdist's workers are given COLUMNS=80 and LINES=24; reports are then wrapped as on
# an 80-column terminal. A test that wants a width sets COLUMNS itself.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)
# The tool reads untrusted files in forked workers, about a thousand times in the suite,
# mostly from test processes that hold TensorFlow (1 GB and more): each fork then copies
# and tears down the page tables of every page (reading a small .h5: 100 ms there, 30 ms
# in a small process). glibc's malloc on transparent huge pages (glibc >= 2.35, THP in
# "madvise" mode; a no-op elsewhere) makes those tables shorter: 68 ms. Read by glibc
# when a process starts, so it takes effect in the xdist workers and the processes the
# tests start, not in this one.
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def data_dir() -> Path:
    return DATA


@functools.cache
def _command() -> click.Command:
    """The Typer app's click command. typer.testing.CliRunner builds it again from the
    functions' signatures on every invocation (20 ms); the console script builds it once
    per process, and so does this, once per test process."""
    import typer.main

    from conv_surgeon.cli import app

    return typer.main.get_command(app)


@pytest.fixture
def cli():
    """Run the real Typer app; stdout and stderr come back separately."""
    runner = CliRunner()
    command = _command()

    def invoke(*args: str, input: bytes | str | None = None):
        return runner.invoke(command, [str(a) for a in args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def keras():
    """Keras itself, for building models and checking what it loads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras as keras_module

    return keras_module


SLOW_TESTS = Path(__file__).resolve().parent / "slow_tests.txt"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow the tests slow_tests.txt names (measured), as @pytest.mark.slow marks others;
    then order them: the @pytest.mark.slow ones (up to 40 s each) first, then the listed
    ones, then the rest, each in their order. pytest-xdist's workers then end on short
    tests, not one of them on DenseNet121 while the other waits. (One hook: a second
    function of this name in this module would replace the first, as it once did.)"""
    listed = {line.strip() for line in SLOW_TESTS.read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    heaviest = {item.nodeid for item in items if item.get_closest_marker("slow") is not None}
    for item in items:
        if item.nodeid in listed:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: 0 if item.nodeid in heaviest else 1 if item.nodeid in listed else 2)
