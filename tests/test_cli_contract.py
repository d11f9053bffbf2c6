"""The command-line contract (the README's command reference and exit codes) where the issue found it broken: output
formats of `get`, output names of `set`, `--debug` anywhere, `--input-shape` mistakes,
JSON errors, ambiguous layer names, shell completion, and the shared write options."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from helpers import assert_one_error_line, copy_into, listing

from conv_surgeon.cli import app
from conv_surgeon.cli.params import complete_layer
from conv_surgeon.cli.write_options import WriteArgs, parse_shape
from conv_surgeon.instruments.set_weights import SetRequest
from conv_surgeon.instruments.reading import get_weights
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.runtime.checks import Tolerance
from conv_surgeon.transaction.transaction import Destination, WriteOptions
from conv_surgeon.runtime.checks import SmokeOptions

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
TINY = SAMPLES / "tiny_cnn.keras"


def run(*args: object, input: bytes | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)




def conv1() -> dict[str, np.ndarray]:
    return get_weights(ModelFile.from_path(TINY), "conv1", every=True).arrays


# --- get: the suffix names the format ---------------------------------------------------------


def read_npy(path: Path) -> dict[str, np.ndarray]:
    return {"kernel": np.load(path)}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as bundle:
        return {key: bundle[key] for key in bundle.files}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(path)


def read_h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {key: h5[key][()] for key in h5}


@pytest.mark.parametrize("name, read", [("k.npy", read_npy), ("k.npz", read_npz),
                                        ("k.safetensors", read_safetensors), ("k.h5", read_h5)])
def test_get_writes_the_format_its_suffix_names(tmp_path: Path, name: str, read) -> None:
    out = tmp_path / name
    result = run("get", TINY, "--layer", "conv1", "-o", out)
    assert result.exit_code == 0, result.stderr
    got, expected = read(out), conv1()
    if name.endswith(".npy"):
        expected = {"kernel": expected["kernel"]}
    assert sorted(got) == sorted(expected)  # no stray key (numpy < 2.1 stored "allow_pickle")
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == value.dtype
    assert result.stderr.startswith(f"wrote {out}: conv1 ")


def test_get_one_weight_into_a_container(tmp_path: Path) -> None:
    out = tmp_path / "b.safetensors"
    assert run("get", TINY, "--layer", "conv1", "--weight", "bias", "-o", out).exit_code == 0
    assert sorted(read_safetensors(out)) == ["bias"]


@pytest.mark.parametrize("args", [["--layer", "conv1", "-o", "k.txt"], ["--layer", "conv1", "-o", "k"],
                                  ["--all", "-o", "bundle.safetensors"]])
def test_get_refuses_a_name_without_a_format_it_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("get", TINY, *args)
    assert_one_error_line(result, 2, f"-o {args[-1]}")
    assert listing(tmp_path) == {}


# --- set: an output name Keras cannot open is refused -------------------------------------------


@pytest.mark.parametrize("model, output", [("tiny_cnn.keras", "out"), ("tiny_cnn.keras", "out.zip"),
                                           ("tiny_cnn.h5", "out"), ("tiny_cnn.h5", "out.keras5")])
def test_set_refuses_an_output_name_keras_cannot_open(tmp_path: Path, model: str, output: str) -> None:
    source = copy_into(tmp_path, SAMPLES / model)
    before = listing(tmp_path)
    result = run("set", source, "--layer", "conv1", "--bias-init", "zeros", "--no-smoke", "-o", tmp_path / output)
    assert_one_error_line(result, 2, output, Path(model).suffix)
    assert listing(tmp_path) == before


# --- --debug after the command -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_command_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    import conv_surgeon.instruments.reading as reading

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(reading, "inspect_model", broken)
    args = ["inspect", TINY, "--debug"] if where == "after" else ["--debug", "inspect", TINY]
    result = run(*args)
    assert result.exit_code == 70 and "Traceback" in result.stderr and "KeyError: 'boom'" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Internal error (a bug in conv-surgeon ")
    assert "Traceback" not in run("inspect", TINY).stderr


# --- --input-shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, shape", [("64,64,3", (64, 64, 3)), ("64x64x3", (64, 64, 3)),
                                         ("(64, 64, 3)", (64, 64, 3)), (" 28 , 28 ,1 ", (28, 28, 1)),
                                         ("(64,)", (64,)), ("(28, 28, 1,)", (28, 28, 1)), ("100", (100,))])
def test_input_shapes_as_people_write_them(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "abc", "28,,28,1", "0,28,1", "-1,28", "28;28;1", "28.5,28", "(28, 28",
                                  "28,,", "x28"])
def test_input_shape_mistakes_are_usage_errors(tmp_path: Path, text: str) -> None:
    before = listing(tmp_path)
    result = run("set", TINY, "--layer", "conv1", "--bias-init", "zeros", "-o", tmp_path / "out.keras",
                 "--input-shape", text)
    assert_one_error_line(result, 2, "--input-shape", repr(text))
    assert listing(tmp_path) == before


# --- JSON mode: an error is a JSON object too --------------------------------------------------


def error_document(message: str, exit_code: int) -> str:
    return json.dumps({"schema": 1, "error": message, "exit_code": exit_code}, indent=2) + "\n"


def test_json_error_of_inspect(tmp_path: Path) -> None:
    missing = tmp_path / "nope.keras"
    result = run("inspect", missing, "--json")
    message = f"{missing}: no such file; check the path"
    assert (result.exit_code, result.stdout, result.stderr) == (1, error_document(message, 1), f"Error: {message}\n")


def test_json_error_of_a_click_usage_error() -> None:
    result = run("inspect", TINY, "--json", "--bogus")
    assert result.exit_code == 2
    assert result.stdout == error_document("No such option '--bogus'.", 2)
    assert "Usage: " in result.stderr and "--bogus" in result.stderr


def test_json_error_goes_to_stderr_when_stdout_carries_the_model() -> None:
    result = run("set", "--layer", "nope", "--bias-init", "zeros", "--no-smoke", "--json", input=TINY.read_bytes())
    assert result.exit_code == 1 and result.stdout == ""
    line, _, document = result.stderr.partition("\n")
    assert line.startswith("Error: <stdin>: no layer with weights named 'nope'")
    assert json.loads(document) == {"schema": 1, "error": line.removeprefix("Error: "), "exit_code": 1}


def test_json_error_of_set_to_a_file_is_on_stdout(tmp_path: Path) -> None:
    result = run("set", TINY, "--layer", "conv1", "--no-smoke", "--json", "-o", tmp_path / "o.keras")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["exit_code"] == 2 and "--kernel" in json.loads(result.stdout)["error"]


def test_json_error_of_diff_has_diff_status(tmp_path: Path) -> None:
    result = run("diff", TINY, tmp_path / "nope.keras", "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["exit_code"] == 2


def test_json_error_of_a_plan_lists_its_problems(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"edits": [{"layer": "conv1", "weights": {"kernel": {"init": "nope_init"}}},'
                    ' {"layer": "cnv9", "weights": {"bias": {"init": "zeros"}}}]}')
    result = run("apply", TINY, plan, "-o", tmp_path / "o.keras", "--no-smoke", "--json")
    document = json.loads(result.stdout)
    assert result.exit_code == document["exit_code"] == 1
    assert len(document["problems"]) == 2 and document["error"].startswith(str(TINY))


def test_json_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import conv_surgeon.instruments.reading as reading

    monkeypatch.setattr(reading, "inspect_model", lambda *a, **k: 1 / 0)
    result = run("inspect", TINY, "--json")
    document = json.loads(result.stdout)
    assert result.exit_code == document["exit_code"] == 70
    assert document["error"].startswith("Internal error (a bug in conv-surgeon ")


def test_without_json_no_json_error(tmp_path: Path) -> None:
    assert run("inspect", tmp_path / "nope.keras").stdout == ""


# --- ambiguous layer names ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def top_and_nested(keras, tmp_path_factory) -> Path:
    """A top-level layer 'conv' and, inside the nested model 'block', another 'conv'."""
    path = tmp_path_factory.mktemp("ambiguous") / "m.keras"
    block = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(4, 3, padding="same", name="conv")],
                             name="block")
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same", name="conv"), block],
                     name="outer").save(path)
    return path


def test_a_name_at_the_top_level_and_nested_is_ambiguous(top_and_nested: Path) -> None:
    result = run("get", top_and_nested, "--layer", "conv", "-o", "-")
    assert_one_error_line(result, 1, "'conv' is ambiguous", "block/conv")


def test_the_nested_path_names_the_nested_layer(top_and_nested: Path) -> None:
    result = run("get", top_and_nested, "--layer", "block/conv", "-o", "-")
    assert result.exit_code == 0 and np.load(io.BytesIO(result.stdout_bytes)).shape == (3, 3, 4, 4)


# --- shell completion -----------------------------------------------------------------------------


def command(name: str) -> click.Command:
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    found = group.commands[name]
    return found


def completion_context(name: str, model: object = None, args: list[str] | None = None) -> click.Context:
    ctx = click.Context(command(name), info_name=name, resilient_parsing=True)
    ctx.params = {"model": model}
    ctx.args = list(args or [])
    return ctx


def layer_param(name: str) -> click.Parameter:
    return next(p for p in command(name).params if p.name == "layer")


def completed(ctx: click.Context, incomplete: str) -> list[str]:
    return [item.value for item in complete_layer(ctx, layer_param(ctx.command.name or ""), incomplete)]


def test_layer_completion_offers_the_paths_of_the_model() -> None:
    convs = SAMPLES / "all_convs.keras"
    assert completed(completion_context("get", str(convs)), "func") == [
        "func_block/conv", "func_block/deep_block/deep_conv"]
    # A name typed without its path completes to the path.
    assert completed(completion_context("get", str(convs)), "deep") == ["func_block/deep_block/deep_conv"]


def test_layer_completion_of_set_offers_every_layer_with_weights_as_get_does() -> None:
    every = completed(completion_context("get", str(TINY)), "")
    settable = completed(completion_context("set", str(TINY)), "")
    assert settable == every == ["conv1", "conv2", "conv3", "head"]


def test_layer_completion_reads_the_model_from_the_unparsed_words() -> None:
    # `get MODEL --weight bias --layer <TAB>`: click leaves every word unparsed.
    ctx = completion_context("get", None, ["--weight", "bias", str(TINY), "--layer"])
    assert completed(ctx, "conv") == ["conv1", "conv2", "conv3"]


@pytest.mark.parametrize("model", [None, "-", "/no/such/model.keras", str(SAMPLES / "sobel.npy")])
def test_layer_completion_without_a_readable_model_offers_nothing(model) -> None:
    assert completed(completion_context("get", model), "") == []


def test_layer_completion_never_imports_tensorflow() -> None:
    code = (
        "import sys\n"
        "from click.shell_completion import ShellComplete\n"
        "import typer.main\n"
        "from conv_surgeon.cli import app\n"
        "group = typer.main.get_command(app)\n"
        f"items = ShellComplete(group, {{}}, 'conv-surgeon', '_X').get_completions(['get', {str(TINY)!r}, '--layer'], 'co')\n"
        "print([i.value for i in items])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.splitlines() == ["['conv1', 'conv2', 'conv3']", "[]"]


def test_completion_can_be_installed_and_shown() -> None:
    result = run("--help")
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


# --- the write options: declared once, built into WriteOptions in one place ---------------------


def long_options(name: str) -> set[str]:
    return {opt for p in command(name).params if isinstance(p, click.Option) for opt in p.opts if opt.startswith("--")}


def test_set_and_apply_share_every_write_option() -> None:
    shared = {opt for f in fields(WriteArgs) for p in command("set").params if p.name == f.name for opt in p.opts
              if opt.startswith("--")}
    assert shared == {"--output", "--in-place", "--no-clobber", "--no-smoke", "--input-shape", "--unsafe", "--dry-run", "--json",
                      "--compare", "--expect-same", "--atol", "--rtol", "--save-inputs", "--load-inputs",
                      "--import", "--config"}
    assert shared <= long_options("set") and shared <= long_options("apply")


def test_set_and_apply_take_an_optimizer_policy_and_graph_surgery_does_not() -> None:
    # fold-bn resets the folded variables' slots and prune slices them: no choice to offer.
    for name in ("set", "apply"):
        (option,) = [p for p in command(name).params if "--optimizer" in p.opts]
        assert isinstance(option.type, click.Choice) and list(option.type.choices) == ["reset", "keep"]
        assert option.default == "reset"
    assert "--optimizer" not in long_options("fold-bn") | long_options("prune")


def test_write_args_become_the_library_write_options(tmp_path: Path) -> None:
    args = WriteArgs(output=str(tmp_path / "o.keras"), input_shape=["28,28,1"], compare=True, expect_same=True,
                     atol=1e-3, imports=["my_layers"])
    assert args.options_for(str(TINY), SetRequest.checks) == WriteOptions(
        Destination(path=tmp_path / "o.keras"),
        SmokeOptions(enabled=True, input_shapes=[(28, 28, 1)], compare=True, expect_same=Tolerance(1e-3, 1e-5),
                     imports=("my_layers",)),
        ("conv-surgeon",),
    )
    assert WriteArgs(dry_run=True, no_smoke=True).options_for(str(TINY), SetRequest.checks) == WriteOptions(
        None, SmokeOptions(enabled=False), ("conv-surgeon",))


@pytest.mark.parametrize("args, model, on_stdout", [
    (WriteArgs(), None, True), (WriteArgs(output="-"), str(TINY), True), (WriteArgs(output="o.keras"), None, False),
    (WriteArgs(dry_run=True), None, False), (WriteArgs(in_place=True), str(TINY), False),
])
def test_where_the_model_goes(args: WriteArgs, model: str | None, on_stdout: bool) -> None:
    assert args.model_on_stdout(model) == on_stdout


# --- progress: `set` with one layer reports its steps too --------------------------------------


def test_set_of_one_layer_reports_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conv_surgeon.render as render

    steps: list[tuple[int, int, str]] = []

    @contextmanager
    def recording(stream=None):
        yield lambda done, total, what: steps.append((done, total, what))

    monkeypatch.setattr(render, "progress_on_terminal", recording)
    result = run("set", TINY, "--layer", "conv1", "--bias-init", "zeros", "--no-smoke", "-o", tmp_path / "o.keras")
    assert result.exit_code == 0, result.stderr
    assert steps == [(1, 2, "checked layer 'conv1'"), (2, 2, "staged and read back")]


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_a_seed_outside_the_one_seed_range_is_a_usage_error(seed: str, tmp_path: Path) -> None:
    """It used to wrap silently (--seed -1 drew with 2**63-1); plans already refused it."""
    out = tmp_path / "out.keras"
    result = run("set", SAMPLES / "tiny_cnn.keras", "--layer", "conv1", "--kernel-init", "he_normal",
                 "--seed", seed, "-o", out, "--no-smoke")
    assert result.exit_code == 2
    assert result.stderr == f"Error: --seed {seed}: expected an integer from 0 to 2**63-1; give e.g. 7, or no seed to have one drawn\n"
    assert not out.exists()
