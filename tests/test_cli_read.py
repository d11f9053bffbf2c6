"""`inspect` and `get` through the real Typer app."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from conv_surgeon.cli import app
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.model.structure import read_structure, read_variables


def test_inspect_table_lists_convs_with_shapes(cli, samples: Path) -> None:
    result = cli("inspect", samples / "tiny_cnn.keras")
    assert result.exit_code == 0, result.stderr
    for expected in ("conv1", "conv2", "Conv2D", "kernel (3, 3, 1, 4) float32", "bias (4,) float32", "kernel=3x3 same relu"):
        assert expected in result.stdout
    assert "head" not in result.stdout  # Dense: only with --all
    assert "convolution layers" in result.stdout and result.stderr == ""


def test_inspect_all_lists_every_layer_with_weights(cli, samples: Path) -> None:
    result = cli("inspect", samples / "tiny_cnn.h5", "--all")
    assert result.exit_code == 0
    assert "head" in result.stdout and "Dense" in result.stdout


def test_inspect_json_document(cli, samples: Path) -> None:
    result = cli("inspect", samples / "all_convs.keras", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["format"] == "keras" and doc["keras_version"] == "3.15.1"
    by_path = {layer["path"]: layer for layer in doc["layers"]}
    sep = by_path["sep2d"]
    assert sep["name"] == "sep2d" and sep["class"] == "SeparableConv2D"
    assert sep["weights"]["depthwise_kernel"] == {"shape": [3, 3, 8, 1], "dtype": "float32"}
    assert by_path["c2d_grouped"]["config"]["groups"] == 2
    assert by_path["func_block/deep_block/deep_conv"]["name"] == "deep_conv"
    assert doc["totals"]["layers"] == len(doc["layers"])


def test_inspect_stats_json_counts_zeros(cli, samples: Path) -> None:
    doc = json.loads(cli("inspect", samples / "tiny_cnn.keras", "--stats", "--json").stdout)
    stats = doc["layers"][0]["weights"]["kernel"]["stats"]
    assert set(stats) == {"min", "max", "mean", "std", "l2", "zeros", "nonfinite"}
    assert stats["min"] <= stats["mean"] <= stats["max"]


def test_inspect_reads_the_model_from_stdin(cli, samples: Path) -> None:
    data = (samples / "tiny_cnn.h5").read_bytes()
    result = cli("inspect", "-", "--json", input=data)
    assert result.exit_code == 0
    assert [layer["name"] for layer in json.loads(result.stdout)["layers"]][:2] == ["conv1", "conv2"]


def test_get_writes_the_kernel_as_npy(cli, samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "k.npy"
    result = cli("get", samples / "tiny_cnn.keras", "--layer", "conv1", "-o", out)
    assert result.exit_code == 0, result.stderr
    source = ModelFile.from_path(samples / "tiny_cnn.keras")
    conv1 = read_structure(source).layers[0]
    expected = read_variables(source, [conv1.variables[0]])[conv1.variables[0].dataset]
    np.testing.assert_array_equal(np.load(out), expected)


def test_get_to_stdout_and_npz_with_every_variable(cli, samples: Path, tmp_path: Path) -> None:
    result = cli("get", samples / "all_convs.h5", "--layer", "sep2d", "--weight", "bias", "-o", "-")
    assert np.load(io.BytesIO(result.stdout_bytes)).shape == (4,)
    out = tmp_path / "sep.npz"
    assert cli("get", samples / "all_convs.keras", "--layer", "sep2d", "-o", out).exit_code == 0
    with np.load(out) as bundle:
        assert sorted(bundle.files) == ["bias", "depthwise_kernel", "pointwise_kernel"]


def test_get_by_path_when_names_repeat(cli, samples: Path) -> None:
    result = cli("get", samples / "all_convs.keras", "--layer", "conv", "-o", "-")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "ambiguous" in result.stderr
    assert "seq_block/conv" in result.stderr and "func_block/conv" in result.stderr
    ok = cli("get", samples / "all_convs.keras", "--layer", "func_block/conv", "-o", "-")
    assert np.load(io.BytesIO(ok.stdout_bytes)).shape == (3, 3, 4, 4)


def test_get_bfloat16_exports_float32(cli, samples: Path) -> None:
    result = cli("get", samples / "tiny_bf16.keras", "--layer", "conv1", "-o", "-")
    assert np.load(io.BytesIO(result.stdout_bytes)).dtype == np.float32
    assert "bfloat16 exported as float32" in result.stderr


def test_get_separable_kernel_needs_a_weight_name(cli, samples: Path) -> None:
    result = cli("get", samples / "all_convs.keras", "--layer", "sep2d", "-o", "-")
    assert result.exit_code == 1
    assert "--weight depthwise_kernel" in result.stderr and "pointwise_kernel" in result.stderr


@pytest.mark.parametrize(
    "args, exit_code, message",
    [
        (["inspect", "MISSING"], 1, "no such file"),
        (["get", "SAMPLE", "--layer", "cnv1", "-o", "-"], 1, "did you mean 'conv1'"),
        (["get", "SAMPLE", "--layer", "conv1", "--weight", "gamma", "-o", "-"], 1, "has no variable 'gamma' (it has: kernel, bias)"),
        (["get", "SAMPLE", "--layer", "conv1", "-o", "NODIR/k.npy"], 1, "does not exist"),
        (["get", "SAMPLE"], 2, "--layer"),
    ],
)
def test_read_errors_are_one_line_without_traceback(cli, samples: Path, tmp_path: Path, args, exit_code, message) -> None:
    mapping = {"MISSING": str(tmp_path / "nope.keras"), "SAMPLE": str(samples / "tiny_cnn.keras"),
               "NODIR/k.npy": str(tmp_path / "nodir" / "k.npy")}
    result = cli(*[mapping.get(a, a) for a in args])
    assert result.exit_code == exit_code
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    if exit_code == 1:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")


def test_internal_errors_exit_70_and_show_traceback_only_with_debug(cli, samples: Path, monkeypatch) -> None:
    import conv_surgeon.instruments.reading as reading

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(reading, "inspect_model", broken)
    plain = cli("inspect", samples / "tiny_cnn.keras")
    assert plain.exit_code == 70 and "Internal error" in plain.stderr and "Traceback" not in plain.stderr
    debug = cli("--debug", "inspect", samples / "tiny_cnn.keras")
    assert debug.exit_code == 70 and "Traceback" in debug.stderr


def test_every_command_has_help_and_the_app_a_version(cli) -> None:
    from conv_surgeon import __version__

    assert cli("--version").stdout.strip() == f"conv-surgeon {__version__}"
    for command in app.registered_commands:
        result = cli(command.name or command.callback.__name__, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout
        assert (command.callback.__doc__ or "").strip()
