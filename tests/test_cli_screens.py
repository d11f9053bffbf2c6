"""The main screens, character for character: stdout, stderr and the exit code apart.

Run through the real Typer app from the repository root, so that paths in the output
are the relative paths typed. ``COLUMNS`` and ``NO_COLOR`` are set (or removed) by each
test: the output depends on them by design.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conv_surgeon.cli import app
from conv_surgeon.model.structure import read_structure
from conv_surgeon.instruments.reading import InspectReport
from conv_surgeon.render import ProgressLine, console, plural, progress_on_terminal, render_inspect
from conv_surgeon.store.model_file import ModelFile

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch):
    """The app, run in the repository root with a known environment."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)

    def invoke(*args: str, env: dict[str, str] | None = None, input: bytes | None = None):
        return CliRunner().invoke(app, [str(a) for a in args], env=env, input=input, catch_exceptions=False)

    return invoke


INSPECT_TINY = """\
sample_models/tiny_cnn.keras: Sequential 'tiny_cnn' (keras, Keras 3.15.1)
┏━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┓
┃ layer ┃ class  ┃ weights                     ┃ config                          ┃
┡━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┩
│ conv1 │ Conv2D │ kernel (3, 3, 1, 4) float32 │ filters=4 kernel=3x3 same relu  │
│       │        │ bias (4,) float32           │                                 │
│ conv2 │ Conv2D │ kernel (3, 3, 4, 8) float32 │ filters=8 kernel=3x3 valid relu │
│       │        │ bias (8,) float32           │                                 │
│ conv3 │ Conv2D │ kernel (3, 3, 8, 8) float32 │ filters=8 kernel=3x3 same relu  │
│       │        │ bias (8,) float32           │                                 │
└───────┴────────┴─────────────────────────────┴─────────────────────────────────┘
3 convolution layers, 920 parameters
"""


def test_inspect_table(run) -> None:
    result = run("inspect", "sample_models/tiny_cnn.keras")
    assert (result.exit_code, result.stdout, result.stderr) == (0, INSPECT_TINY, "")


# The boxed table needs 82 columns: at 80 the compact form fits without folding anything.
INSPECT_TINY_80 = """\
sample_models/tiny_cnn.keras: Sequential 'tiny_cnn' (keras, Keras 3.15.1)
layer  class   weights                      config                         
───────────────────────────────────────────────────────────────────────────
conv1  Conv2D  kernel (3, 3, 1, 4) float32  filters=4 kernel=3x3 same relu 
               bias (4,) float32                                           
conv2  Conv2D  kernel (3, 3, 4, 8) float32  filters=8 kernel=3x3 valid relu
               bias (8,) float32                                           
conv3  Conv2D  kernel (3, 3, 8, 8) float32  filters=8 kernel=3x3 same relu 
               bias (8,) float32                                           
3 convolution layers, 920 parameters
"""


def test_inspect_table_in_80_columns(run) -> None:
    result = run("inspect", "sample_models/tiny_cnn.keras", env={"COLUMNS": "80"})
    assert (result.exit_code, result.stdout, result.stderr) == (0, INSPECT_TINY_80, "")


@pytest.mark.parametrize("columns, layout", [(100, "layer  "), (80, "layer: "), (60, "layer: ")])
def test_narrow_tables_keep_every_shape_and_class_whole(run, columns: int, layout: str) -> None:
    """The config and the paths fold (at 100 columns for all_convs); where even the shapes
    and classes do not fit beside the narrowest config (82 columns), each layer is a record
    of its own. Nothing runs past the width, and a shape like (3, 3, 3, 2, 2) is never cut.
    (Until issue 20 the table ran past 60 columns, and folded paths and words anywhere.)"""
    doc = json.loads(run("inspect", "sample_models/all_convs.keras", "--json").stdout)
    result = run("inspect", "sample_models/all_convs.keras", env={"COLUMNS": str(columns)})
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    start = next(i for i, line in enumerate(lines) if line.startswith("layer"))  # the title may wrap
    assert lines[start].startswith(layout)
    assert "…" not in result.stdout
    for layer in doc["layers"]:
        assert layer["class"] in result.stdout
        for name, weight in layer["weights"].items():
            assert f"{name} {tuple(weight['shape'])} {weight['dtype']}" in result.stdout
    paths = [layer["path"] for layer in doc["layers"]]
    if layout == "layer: ":
        assert [line.split(":", 1)[1].strip() for line in lines if line.startswith("layer:")] == paths
    else:  # folded after a '/' only: each line of the first column ends with '/' but the last
        first = [line.split(" ", 1)[0] for line in lines[start + 2:-1] if not line.startswith(" ")]
        assert "".join(first) == "".join(paths)


def expected_inspect_document() -> dict:
    def conv(name: str, store: str, kernel: list[int], parameters: int, padding: str) -> dict:
        return {
            "name": name, "path": name, "class": "Conv2D", "class_from": "config", "store_path": store,
            "weights": {"kernel": {"shape": kernel, "dtype": "float32"},
                        "bias": {"shape": [kernel[-1]], "dtype": "float32"}},
            "parameters": parameters,
            "config": {"filters": kernel[-1], "kernel_size": [3, 3], "strides": [1, 1], "padding": padding,
                       "dilation_rate": [1, 1], "groups": 1, "use_bias": True, "activation": "relu",
                       "data_format": "channels_last"},
        }

    return {
        "schema": 1,
        "model": "sample_models/tiny_cnn.keras",
        "format": "keras",
        "keras_version": "3.15.1",
        "model_name": "tiny_cnn",
        "model_class": "Sequential",
        "layers": [
            conv("conv1", "layers/conv2d", [3, 3, 1, 4], 40, "same"),
            conv("conv2", "layers/conv2d_1", [3, 3, 4, 8], 296, "valid"),
            conv("conv3", "layers/conv2d_2", [3, 3, 8, 8], 584, "same"),
        ],
        "totals": {"layers": 3, "parameters": 920, "variables": 6, "store_variables": 8,
                   "optimizer_variables": 18, "unplaced": []},
    }


def test_inspect_json(run) -> None:
    result = run("inspect", "sample_models/tiny_cnn.keras", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout == json.dumps(expected_inspect_document(), indent=2) + "\n"


SET_REPORT = """\
tiny.keras: layer 'conv1' (Conv2D); wrote out.keras
┏━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━┓
┃ variable ┃ shape        ┃ dtype   ┃ source                  ┃   old L2 ┃ new L2 ┃ max |change| ┃
┡━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━━━┩
│ kernel   │ (3, 3, 1, 4) │ float32 │ init he_normal (seed 7) │    1.163 │  2.576 │        1.421 │
│ bias     │ (4,)         │ float32 │ init zeros              │ 0.003967 │      0 │     0.002001 │
└──────────┴──────────────┴─────────┴─────────────────────────┴──────────┴────────┴──────────────┘
optimizer (Adam): reset 4 slots (2 per variable) of 2 replaced variables to zero; its iteration count kept
smoke test skipped (--no-smoke)
"""

SET_REPORT_80 = """\
tiny.keras: layer 'conv1' (Conv2D); wrote out.keras
variable  shape         dtype    source             old L2  new L2  max |change|
────────────────────────────────────────────────────────────────────────────────
kernel    (3, 3, 1, 4)  float32  init he_normal      1.163   2.576         1.421
                                 (seed 7)                                       
bias      (4,)          float32  init zeros       0.003967       0      0.002001
optimizer (Adam): reset 4 slots (2 per variable) of 2 replaced variables to
zero; its iteration count kept
smoke test skipped (--no-smoke)
"""


@pytest.mark.parametrize("columns, expected", [(None, SET_REPORT), ("80", SET_REPORT_80)])
def test_set_report(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns, expected: str) -> None:
    shutil.copyfile(ROOT / "sample_models" / "tiny_cnn.keras", tmp_path / "tiny.keras")
    monkeypatch.chdir(tmp_path)
    result = run("set", "tiny.keras", "--layer", "conv1", "--kernel-init", "he_normal", "--bias-init", "zeros",
                 "--seed", "7", "--no-smoke", "-o", "out.keras", env={"COLUMNS": columns} if columns else None)
    assert (result.exit_code, result.stdout, result.stderr) == (0, expected, "")
    assert (tmp_path / "out.keras").is_file()


def test_an_error_is_one_line_on_stderr(run) -> None:
    result = run("get", "sample_models/tiny_cnn.keras", "--layer", "cnv1", "-o", "-")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: sample_models/tiny_cnn.keras: no layer with weights named 'cnv1'; did you mean 'conv1', 'conv3'?\n"
    )


def test_a_usage_error_of_our_own_is_one_line_exit_2(run) -> None:
    result = run("get", "sample_models/tiny_cnn.keras", "--layer", "conv1", "-o", "k.txt")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "Error: -o k.txt: the name says no array format; name it FILE.npy (one array), FILE.npz, "
        "FILE.safetensors or FILE.h5 (every variable of the layer, or the one --weight names), or - for stdout\n"
    )


# --- singular and plural -------------------------------------------------------------------


def test_plural() -> None:
    assert [plural(n, "convolution layer") for n in (0, 1, 2)] == [
        "0 convolution layers", "1 convolution layer", "2 convolution layers"]
    assert plural(1, "layer with weights", "layers with weights") == "1 layer with weights"
    assert plural(1234, "parameter") == "1,234 parameters"


def one_layer_report(every_layer: bool) -> InspectReport:
    source = ModelFile.from_path(ROOT / "sample_models" / "tiny_cnn.keras")
    structure = read_structure(source)
    structure = replace(structure, layers=structure.layers[:1])
    return InspectReport("tiny.keras", structure, structure.layers if every_layer else structure.conv_layers, None)


@pytest.mark.parametrize("every_layer, summary", [
    (False, "1 convolution layer, 40 parameters\n"),
    (True, "1 layer with weights, 40 parameters\n2 variables in 1 layer; 18 optimizer variables; 0 not placed on a layer\n"),
])
def test_one_of_a_kind_is_singular(every_layer: bool, summary: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    render_inspect(one_layer_report(every_layer), out)
    assert out.getvalue().endswith("┘\n" + summary)


# --- colour ----------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_bold_headers_but_no_color_gets_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("NO_COLOR", raising=False)
    styled = Terminal()
    render_inspect(one_layer_report(False), styled)
    assert "\x1b[1m" in styled.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Terminal()
    render_inspect(one_layer_report(False), plain)
    assert "\x1b" not in plain.getvalue()
    assert plain.getvalue() == styled.getvalue().replace("\x1b[1m", "").replace("\x1b[0m", "")


def test_off_a_terminal_output_is_plain_and_unlimited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = console(io.StringIO())
    assert out.color_system is None and out.width == 100_000


# --- progress ----------------------------------------------------------------------------------


def test_the_progress_line_says_what_runs_during_the_smoke_test() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.start("reading the model and checking the edits")
    line(1, 3, "checked layer 'conv1'")
    line(2, 3, "staged and read back")
    line(3, 3, "smoke test passed")
    line.close()  # the last step ended the line: nothing to clear
    assert stream.getvalue() == (
        "\r\x1b[Kreading the model and checking the edits..."
        "\r\x1b[K[1/3] checked layer 'conv1'"
        "\r\x1b[K[2/3] staged and read back; smoke test: Keras loads the model and runs it..."
        "\r\x1b[K[3/3] smoke test passed\n"
    )


def test_a_line_left_open_is_cleared() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    line(1, 3, "checked layer 'conv1'")  # a dry run stops here
    line.close()
    assert stream.getvalue() == "\r\x1b[K[1/3] checked layer 'conv1'\r\x1b[K"


def test_no_progress_off_a_terminal() -> None:
    with progress_on_terminal(io.StringIO()) as progress:
        assert progress is None


def test_progress_reaches_the_terminal_while_fd_2_is_silenced() -> None:
    """TensorFlow's import and the smoke test point fd 2 at /dev/null: the line must not."""
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w")
    try:
        with progress_on_terminal(stream) as progress:
            assert progress is not None
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, slave)  # what quiet_stderr does to fd 2
            os.close(devnull)
            progress(2, 3, "staged and read back")
        # The line is written in pieces (the start, then each step): read all that came.
        seen = b""
        while b"smoke test" not in seen and select.select([master], [], [], 5)[0]:
            seen += os.read(master, 4096)
    finally:
        stream.close()
        os.close(master)
    assert b"[2/3] staged and read back; smoke test" in seen
