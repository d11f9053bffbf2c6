"""`inspect --quant int8|int4`: each conv and Dense kernel's SQNR quantized symmetric per
tensor and per output channel, measured on a model real Keras wrote, against a numpy
computation of the test's own (issue 22, item 2)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import loaded_after_command

QMAX = {"int8": 127, "int4": 7}
# Which axes of each kernel hold its output channels, as the Keras layouts say.
OUTPUT_AXES = {
    ("conv", "kernel"): (3,),  # (kh, kw, in, filters)
    ("dw", "kernel"): (2, 3),  # (kh, kw, in, multiplier): in x multiplier channels
    ("tconv", "kernel"): (2,),  # (kh, kw, filters, in)
    ("sep", "depthwise_kernel"): (2, 3),
    ("sep", "pointwise_kernel"): (3,),
    ("dense", "kernel"): (1,),
    ("zero", "kernel"): (1,),
}


@pytest.fixture(scope="module")
def quant_model(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, str], np.ndarray]]:
    """A Conv2D, DepthwiseConv2D, Conv2DTranspose, SeparableConv2D and two Dense, one all
    zeros. One depthwise weight is 100 where the others are about 1: one scale for the whole
    tensor rounds the other channels to a few levels, so per tensor loses most there (a whole
    channel 100x would hold nearly all the signal and hide the loss)."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = layers.Conv2DTranspose(5, 3, name="tconv")(x)
    x = layers.SeparableConv2D(6, 3, depth_multiplier=2, name="sep")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(4, name="dense")(x)
    outputs = layers.Dense(2, name="zero")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(22)
    kernels: dict[tuple[str, str], np.ndarray] = {}
    for layer in model.layers:
        values = []
        for variable in layer.weights:
            value = rng.standard_normal(variable.shape).astype("float32")
            if layer.name == "dw" and variable.name == "kernel":
                value[0, 0, 1, 0] = 100.0
            if layer.name == "zero":
                value = np.zeros(variable.shape, "float32")
            values.append(value)
            if (layer.name, variable.name) in OUTPUT_AXES:
                kernels[(layer.name, variable.name)] = value
        layer.set_weights(values)
    path = tmp_path_factory.mktemp("quant") / "quant.keras"
    model.save(path)
    return path, kernels


def expected(value: np.ndarray, axes: tuple[int, ...], bits: str) -> tuple[float, float, float]:
    """SQNR per tensor, per channel (dB) and the range ratio, one channel at a time."""
    qmax = QMAX[bits]
    w = np.asarray(value, np.float64)
    channels = np.moveaxis(w, axes, tuple(range(-len(axes), 0)))
    channels = channels.reshape(-1, math.prod(w.shape[a] for a in axes))

    def quantize(x: np.ndarray, peak: float) -> np.ndarray:
        if peak == 0:
            return np.zeros_like(x)
        scale = peak / qmax
        return np.clip(np.round(x / scale), -qmax, qmax) * scale

    def sqnr(noise: float) -> float:
        return math.inf if noise == 0 else 10 * math.log10(float((w**2).sum()) / noise)

    tensor_noise = float(((w - quantize(w, float(np.abs(w).max()))) ** 2).sum())
    channel_noise = 0.0
    peaks = []
    for c in range(channels.shape[1]):
        column = channels[:, c]
        peaks.append(float(np.abs(column).max()))
        channel_noise += float(((column - quantize(column, peaks[-1])) ** 2).sum())
    nonzero = [p for p in peaks if p > 0]
    ratio = max(nonzero) / min(nonzero) if nonzero else math.nan
    return sqnr(tensor_noise), sqnr(channel_noise), ratio


def quant_json(cli: Any, path: Path, bits: str) -> list[dict[str, Any]]:
    result = cli("inspect", path, "--quant", bits, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["quant"]["bits"] == bits
    rows: list[dict[str, Any]] = document["quant"]["layers"]
    return rows


def as_number(x: float | str | None) -> float:
    return math.nan if x is None else float(x)


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_every_kernel_is_measured_as_numpy_measures_it_worst_first(cli: Any, quant_model: Any, bits: str) -> None:
    path, kernels = quant_model
    rows = quant_json(cli, path, bits)
    assert {(row["path"], row["variable"]) for row in rows} == set(OUTPUT_AXES)
    for row in rows:
        key = (row["path"], row["variable"])
        assert set(row) == {"path", "variable", "shape", "sqnr_per_tensor_db", "sqnr_per_channel_db",
                            "loss_db", "range_ratio"}
        assert tuple(row["shape"]) == kernels[key].shape
        tensor, channel, ratio = expected(kernels[key], OUTPUT_AXES[key], bits)
        if key == ("zero", "kernel"):
            continue
        assert row["sqnr_per_tensor_db"] == pytest.approx(tensor, rel=1e-9)
        assert row["sqnr_per_channel_db"] == pytest.approx(channel, rel=1e-9)
        assert row["loss_db"] == pytest.approx(channel - tensor, rel=1e-9, abs=1e-9)
        assert row["range_ratio"] == pytest.approx(ratio, rel=1e-9)
    losses = [as_number(row["loss_db"]) for row in rows]
    assert losses == sorted(losses, reverse=True)
    # The 100 in the depthwise kernel: one per-tensor scale serves the other channels badly.
    assert (rows[0]["path"], rows[0]["variable"]) == ("dw", "kernel")
    assert rows[0]["loss_db"] > 5 and rows[0]["range_ratio"] > 20


def test_an_all_zero_kernel_quantizes_exactly_and_has_no_range_ratio(cli: Any, quant_model: Any) -> None:
    path, _ = quant_model
    (row,) = [row for row in quant_json(cli, path, "int8") if row["path"] == "zero"]
    assert (row["sqnr_per_tensor_db"], row["sqnr_per_channel_db"], row["loss_db"], row["range_ratio"]) == (
        "inf", "inf", 0.0, None)


def test_int4_keeps_less_signal_than_int8(cli: Any, quant_model: Any) -> None:
    path, _ = quant_model
    int8 = {(r["path"], r["variable"]): r for r in quant_json(cli, path, "int8")}
    int4 = {(r["path"], r["variable"]): r for r in quant_json(cli, path, "int4")}
    for key, row in int4.items():
        if key == ("zero", "kernel"):
            continue
        assert row["sqnr_per_tensor_db"] < int8[key]["sqnr_per_tensor_db"]
        assert row["sqnr_per_channel_db"] < int8[key]["sqnr_per_channel_db"]
        assert row["range_ratio"] == int8[key]["range_ratio"]


def test_the_table_fits_80_columns_worst_first(cli: Any, quant_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    path, _ = quant_model
    result = cli("inspect", path, "--quant", "int8")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    start = next(i for i, line in enumerate(lines) if line.startswith("int8 weight quantization"))
    table = "\n".join(lines[start:])
    for header in ("per-tensor", "per-channel", "loss", "range ratio"):
        assert header in table
    # Too narrow for one line a row: each row is a record, its first line "layer: PATH".
    order = [line.split()[1] for line in lines[start:] if line.startswith("layer:")]
    json_order = [row["path"] for row in quant_json(cli, path, "int8")]
    # A layer's consecutive rows (sep's two kernels) share one record.
    assert order == [layer for layer, _ in itertools.groupby(json_order)]
    assert "exact" in table  # the all-zero kernel


def test_the_library_gives_the_same_report(cli: Any, quant_model: Any) -> None:
    import conv_surgeon as cs

    path, _ = quant_model
    report = cs.inspect(path, quant="int4").quant
    assert report is not None and report.bits == "int4"
    rows = quant_json(cli, path, "int4")
    assert [(r.path, r.variable) for r in report.rows] == [(r["path"], r["variable"]) for r in rows]
    assert [r.result.sqnr_per_channel_db for r in report.rows][:-1] == [r["sqnr_per_channel_db"] for r in rows][:-1]


def test_another_bit_width_is_refused_in_one_line(cli: Any, quant_model: Any) -> None:
    path, _ = quant_model
    result = cli("inspect", path, "--quant", "int2")
    assert result.exit_code != 0
    assert "int2" in result.stderr and "int8" in result.stderr and "Traceback" not in result.stderr


def test_inspect_quant_imports_no_tensorflow(quant_model: Any) -> None:
    path, _ = quant_model
    argv = ["conv-surgeon", "inspect", str(path), "--quant", "int8", "--json"]
    assert loaded_after_command(argv, ("tensorflow", "keras")) == {"status": 0, "loaded": []}
