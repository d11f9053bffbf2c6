"""`diff` as a library call: conv_surgeon.instruments.diff.diff_models.

The models are the committed samples, outputs of the real `conv-surgeon set`, copies
edited with h5py, and small models built by Keras here. Expected numbers are computed
in the tests with numpy from values read with h5py, not through conv_surgeon.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest
from helpers import copy_into

from typer.testing import CliRunner

import conv_surgeon.instruments.diff as diff_module
from conv_surgeon.cli import app
from conv_surgeon.instruments.diff import (
    AxisChange,
    DiffReport,
    LayerDiff,
    VariableDiff,
    diff_models,
    value_difference,
)
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.model.structure import Variable, read_structure


def source(path: Path) -> ModelFile:
    return ModelFile.from_path(path)


def conv_set(src: Path, out: Path, *args: str) -> Path:
    """Edit ``src`` with the real CLI's Typer app, in this process (no smoke test)."""
    run = CliRunner().invoke(app, ["set", str(src), *args, "--no-smoke", "-o", str(out)], catch_exceptions=False)
    assert run.exit_code == 0, run.stderr
    return out


def save_npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def keras_vars(path: Path) -> dict[str, list[np.ndarray]]:
    """A `.keras` file's variables by layer name (the `vars` groups' `name` attribute)."""
    with zipfile.ZipFile(path) as archive:
        store = archive.read("model.weights.h5")
    found: dict[str, list[np.ndarray]] = {}
    with h5py.File(io.BytesIO(store), "r") as h5:

        def visit(name: str, node: object) -> None:
            if isinstance(node, h5py.Group) and name.endswith("/vars") and "name" in node.attrs:
                values = []
                for key in sorted(node, key=int):
                    data = node[key]
                    value = data[()]
                    if data.attrs.get("dtype") == "bfloat16":
                        value = value.view(ml_dtypes.bfloat16)
                    values.append(value)
                if values:
                    found[str(node.attrs["name"])] = values

        h5.visititems(visit)
    return found


def expected_numbers(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.max(np.abs(b64 - a64))), float(np.linalg.norm(b64 - a64) / np.linalg.norm(a64))


def layer(report: DiffReport, path: str) -> LayerDiff:
    return next(item for item in report.layers if item.path == path)


def variable(report: DiffReport, path: str, name: str) -> VariableDiff:
    return next(v for v in layer(report, path).variables if v.name == name)


def statuses(report: DiffReport) -> dict[str, str]:
    return {item.path: item.status for item in report.layers}


def assert_all_same(report: DiffReport) -> None:
    assert report.identical
    for item in report.layers:
        assert item.status == "same", item
        assert item.class_a == item.class_b
        for v in item.variables:
            assert (v.identical, v.max_abs, v.rel_l2) == (True, 0.0, 0.0), (item.path, v)
            assert (v.shape_a, v.dtype_a) == (v.shape_b, v.dtype_b)


# --- identical models ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn.keras", "tiny_cnn.h5", "all_convs.keras", "tiny_bf16.keras"])
def test_a_model_and_its_copy_are_identical(samples: Path, tmp_path: Path, name: str) -> None:
    copy = copy_into(tmp_path, samples / name)
    for all_layers in (False, True):
        report = diff_models(source(samples / name), source(copy), all_layers=all_layers)
        assert (report.a, report.b) == (str(samples / name), str(copy))
        assert report.layers
        assert_all_same(report)


def test_default_shows_convolutions_and_all_shows_every_layer_with_weights(samples: Path) -> None:
    model = source(samples / "all_convs.keras")
    convs = diff_models(model, model)
    every = diff_models(model, model, all_layers=True)
    structure = read_structure(model)
    assert [item.path for item in convs.layers] == [item.path for item in structure.conv_layers]
    assert [item.path for item in every.layers] == [item.path for item in structure.layers]
    assert {"bn2d", "seq_block/bn", "out"} <= {item.path for item in every.layers}
    assert not {"bn2d", "seq_block/bn", "out"} & {item.path for item in convs.layers}


@pytest.mark.parametrize("model", ["all_convs", "tiny_cnn"])
def test_keras_and_h5_of_the_same_model_hold_the_same_weights(samples: Path, model: str) -> None:
    report = diff_models(
        source(samples / f"{model}.keras"), source(samples / f"{model}.h5"), all_layers=True
    )
    assert_all_same(report)
    paths = [item.path for item in report.layers]
    if model == "all_convs":
        assert {"seq_block/conv", "func_block/deep_block/deep_conv", "bn2d", "out"} <= set(paths)
        names = [v.name for v in layer(report, "seq_block/bn").variables]
        assert names == ["gamma", "beta", "moving_mean", "moving_variance"]


# --- changed values --------------------------------------------------------------------


def test_one_changed_layer_reports_max_abs_and_relative_l2(samples: Path, tmp_path: Path) -> None:
    kernel = np.random.default_rng(7).normal(size=(3, 3, 4, 8)).astype(np.float32)
    out = conv_set(samples / "tiny_cnn.keras", tmp_path / "out.keras",
                   "--layer", "conv2", "--kernel", save_npy(tmp_path / "k.npy", kernel))
    report = diff_models(source(samples / "tiny_cnn.keras"), source(out), all_layers=True)

    assert not report.identical
    assert statuses(report) == {"conv1": "same", "conv2": "changed", "conv3": "same", "head": "same"}
    old = keras_vars(samples / "tiny_cnn.keras")["conv2"][0]
    max_abs, rel_l2 = expected_numbers(old, kernel)
    changed = variable(report, "conv2", "kernel")
    assert changed.identical is False
    assert changed.max_abs == pytest.approx(max_abs, rel=1e-12)
    assert changed.rel_l2 == pytest.approx(rel_l2, rel=1e-12)
    assert (changed.shape_a, changed.dtype_a) == ((3, 3, 4, 8), "float32")
    bias = variable(report, "conv2", "bias")
    assert (bias.identical, bias.max_abs, bias.rel_l2) == (True, 0.0, 0.0)


def test_zeroed_kernel_has_relative_change_one_and_the_reverse_is_infinite(
    samples: Path, tmp_path: Path
) -> None:
    """||a|| = 0 gives rel_l2 = inf when b differs (and 0.0 when it does not)."""
    zeroed = conv_set(samples / "tiny_cnn.keras", tmp_path / "z.keras",
                      "--layer", "conv1", "--kernel-init", "zeros")
    old = keras_vars(samples / "tiny_cnn.keras")["conv1"][0]

    forward = variable(diff_models(source(samples / "tiny_cnn.keras"), source(zeroed)), "conv1", "kernel")
    assert forward.rel_l2 == 1.0
    assert forward.max_abs == pytest.approx(float(np.abs(old).max()), rel=1e-12)

    backward = variable(diff_models(source(zeroed), source(samples / "tiny_cnn.keras")), "conv1", "kernel")
    assert backward.rel_l2 == math.inf
    assert backward.max_abs == forward.max_abs

    itself = variable(diff_models(source(zeroed), source(zeroed)), "conv1", "kernel")
    assert (itself.identical, itself.max_abs, itself.rel_l2) == (True, 0.0, 0.0)


def test_changed_layer_in_a_legacy_h5_and_across_formats(samples: Path, tmp_path: Path) -> None:
    kernel = np.full((3, 3, 4, 8), 0.25, np.float32)
    out = conv_set(samples / "tiny_cnn.h5", tmp_path / "out.h5",
                   "--layer", "conv2", "--kernel", save_npy(tmp_path / "k.npy", kernel))
    old = keras_vars(samples / "tiny_cnn.keras")["conv2"][0]
    max_abs, rel_l2 = expected_numbers(old, kernel)
    for original in ("tiny_cnn.h5", "tiny_cnn.keras"):
        report = diff_models(source(samples / original), source(out))
        assert statuses(report) == {"conv1": "same", "conv2": "changed", "conv3": "same"}
        changed = variable(report, "conv2", "kernel")
        assert changed.max_abs == pytest.approx(max_abs, rel=1e-12)
        assert changed.rel_l2 == pytest.approx(rel_l2, rel=1e-12)


def test_bfloat16_values_are_compared_as_bfloat16(samples: Path, tmp_path: Path) -> None:
    kernel = np.random.default_rng(3).normal(size=(3, 3, 3, 4)).astype(np.float32)
    out = conv_set(samples / "tiny_bf16.keras", tmp_path / "out.keras",
                   "--layer", "conv1", "--kernel", save_npy(tmp_path / "k.npy", kernel))
    report = diff_models(source(samples / "tiny_bf16.keras"), source(out))

    assert statuses(report) == {"conv1": "changed", "conv2": "same"}
    changed = variable(report, "conv1", "kernel")
    assert (changed.dtype_a, changed.dtype_b) == ("bfloat16", "bfloat16")
    old = keras_vars(samples / "tiny_bf16.keras")["conv1"][0]
    new = keras_vars(out)["conv1"][0]
    assert new.dtype == ml_dtypes.bfloat16
    # What was written is the bfloat16 rounding of the kernel, and that is what is compared.
    np.testing.assert_array_equal(new, kernel.astype(ml_dtypes.bfloat16))
    max_abs, rel_l2 = expected_numbers(old, new)
    assert changed.max_abs == pytest.approx(max_abs, rel=1e-12)
    assert changed.rel_l2 == pytest.approx(rel_l2, rel=1e-12)


def h5_dataset(h5: h5py.File, layer_name: str, variable_name: str) -> str:
    """The path of a legacy `.h5` layer's dataset, found by its stored name."""
    names = [n.decode() if isinstance(n, bytes) else n
             for n in h5["model_weights"][layer_name].attrs["weight_names"]]
    stored = next(n for n in names if n.split("/")[-1].split(":")[0] == variable_name)
    return f"model_weights/{layer_name}/{stored}"


def test_all_layers_compares_dense_and_batchnorm(samples: Path, tmp_path: Path) -> None:
    edited = copy_into(tmp_path, samples / "all_convs.h5")
    with h5py.File(edited, "r+") as h5:
        moving_variance = h5[h5_dataset(h5, "bn2d", "moving_variance")]
        old_variance = moving_variance[()]
        new_variance = old_variance.copy()
        new_variance[1] += 0.5
        moving_variance[...] = new_variance
        dense = h5[h5_dataset(h5, "out", "kernel")]
        old_dense = dense[()]
        dense[...] = -old_dense

    convs = diff_models(source(samples / "all_convs.h5"), source(edited))
    # Only convolutions listed, but the edits are not passed over: the models differ.
    assert all(item.status == "same" for item in convs.layers) and "bn2d" not in statuses(convs)
    assert not convs.identical and convs.others_differing == ("bn2d", "out")

    report = diff_models(source(samples / "all_convs.h5"), source(edited), all_layers=True)
    assert not report.identical
    changed = {path for path, status in statuses(report).items() if status != "same"}
    assert changed == {"bn2d", "out"}
    assert layer(report, "bn2d").class_a == "BatchNormalization"
    bn = {v.name: v for v in layer(report, "bn2d").variables}
    assert [name for name, v in bn.items() if not v.identical] == ["moving_variance"]
    max_abs, rel_l2 = expected_numbers(old_variance, new_variance)
    assert bn["moving_variance"].max_abs == pytest.approx(max_abs, rel=1e-12)
    assert bn["moving_variance"].rel_l2 == pytest.approx(rel_l2, rel=1e-12)
    kernel = variable(report, "out", "kernel")
    assert kernel.max_abs == pytest.approx(2 * float(np.abs(old_dense).max()), rel=1e-12)
    assert kernel.rel_l2 == pytest.approx(2.0, rel=1e-12)


def test_a_dtype_change_is_reported_and_the_values_still_compared(
    samples: Path, tmp_path: Path
) -> None:
    edited = copy_into(tmp_path, samples / "tiny_cnn.h5")
    with h5py.File(edited, "r+") as h5:
        path = h5_dataset(h5, "conv1", "kernel")
        kernel = h5[path][()]
        del h5[path]
        h5.create_dataset(path, data=kernel.astype(np.float16))

    report = diff_models(source(samples / "tiny_cnn.h5"), source(edited))
    assert statuses(report) == {"conv1": "changed", "conv2": "same", "conv3": "same"}
    cast = variable(report, "conv1", "kernel")
    assert (cast.dtype_a, cast.dtype_b) == ("float32", "float16")
    assert cast.shape_a == cast.shape_b == kernel.shape
    assert cast.identical is False
    max_abs, rel_l2 = expected_numbers(kernel, kernel.astype(np.float16))
    assert 0 < cast.max_abs == pytest.approx(max_abs, rel=1e-12)
    assert cast.rel_l2 == pytest.approx(rel_l2, rel=1e-12)


def test_nan_at_the_same_position_counts_as_equal(samples: Path, tmp_path: Path) -> None:
    with_nan = copy_into(tmp_path, samples / "tiny_cnn.h5", "nan.h5")
    with h5py.File(with_nan, "r+") as h5:
        kernel = h5[h5_dataset(h5, "conv1", "kernel")]
        value = kernel[()]
        value[0, 0, 0, 0] = np.nan
        kernel[...] = value
    also_changed = copy_into(tmp_path, with_nan, "nan_changed.h5")
    with h5py.File(also_changed, "r+") as h5:
        kernel = h5[h5_dataset(h5, "conv1", "kernel")]
        changed = kernel[()]
        changed[1, 1, 0, 2] += 0.125
        kernel[...] = changed

    same = variable(diff_models(source(with_nan), source(copy_into(tmp_path, with_nan, "c.h5"))),
                    "conv1", "kernel")
    assert (same.identical, same.max_abs, same.rel_l2) == (True, 0.0, 0.0)

    report = diff_models(source(with_nan), source(also_changed))
    moved = variable(report, "conv1", "kernel")
    assert moved.identical is False
    assert moved.max_abs == pytest.approx(0.125, rel=1e-6)
    finite = np.isfinite(value)
    expected = 0.125 / np.linalg.norm(value[finite].astype(np.float64))
    assert moved.rel_l2 == pytest.approx(float(expected), rel=1e-6)

    # A NaN on one side only is an infinite difference.
    one_sided = variable(diff_models(source(samples / "tiny_cnn.h5"), source(with_nan)), "conv1", "kernel")
    assert (one_sided.identical, one_sided.max_abs, one_sided.rel_l2) == (False, math.inf, math.inf)


def test_value_difference_edge_cases() -> None:
    nan = np.float32(np.nan)
    quiet, other_payload = np.array([nan], np.float32), np.array([0x7FC00001], np.uint32).view(np.float32)
    assert value_difference(quiet, other_payload) == (True, 0.0, 0.0)
    assert value_difference(np.array([0.0, 1.0]), np.array([-0.0, 1.0])) == (True, 0.0, 0.0)
    assert value_difference(np.zeros(3), np.zeros(3)) == (True, 0.0, 0.0)
    assert value_difference(np.zeros(3), np.array([0.0, 2.0, 0.0])) == (False, 2.0, math.inf)
    assert value_difference(np.array([np.inf, 3.0]), np.array([np.inf, 4.0])) == (False, 1.0, 1 / 3)
    assert value_difference(np.array([np.inf, 3.0]), np.array([-np.inf, 3.0]))[1:] == (math.inf, math.inf)
    assert value_difference(np.array([3.0, 4.0]), np.array([0.0, 0.0])) == (False, 4.0, 1.0)
    assert value_difference(np.empty((0, 4)), np.empty((0, 4))) == (True, 0.0, 0.0)
    assert value_difference(np.array(2.0, np.float32), np.array(3.0, np.float32)) == (False, 1.0, 0.5)


# --- layers that do not line up --------------------------------------------------------


def test_different_architectures_are_reported_not_a_crash(samples: Path) -> None:
    report = diff_models(source(samples / "tiny_cnn.keras"), source(samples / "all_convs.keras"),
                         all_layers=True)
    assert not report.identical
    tiny = [item.path for item in read_structure(source(samples / "tiny_cnn.keras")).layers]
    others = [item.path for item in read_structure(source(samples / "all_convs.keras")).layers]
    assert [item.path for item in report.layers] == tiny + others
    for item in report.layers:
        only_a = item.path in tiny
        assert item.status == ("only_a" if only_a else "only_b")
        assert (item.class_a is None, item.class_b is None) == (not only_a, only_a)
        assert item.variables
        for v in item.variables:
            assert (v.identical, v.max_abs, v.rel_l2) == (None, None, None)
            assert (v.shape_b is None) == only_a and (v.shape_a is None) == (not only_a)
    assert layer(report, "conv1").variables[0] == VariableDiff(
        "kernel", (3, 3, 1, 4), None, "float32", None, None, None, None
    )


def build_pair(keras, folder: Path) -> tuple[Path, Path]:
    """Two Sequential models sharing layer names: a filter count, a class and a layer differ."""
    layers = keras.layers

    def save(name: str, body: list) -> Path:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 3)), *body], name=name)
        head = model.get_layer("head")  # the same values in both models
        head.set_weights([np.arange(8, dtype=np.float32).reshape(4, 2), np.ones(2, np.float32)])
        path = folder / f"{name}.keras"
        model.save(path)
        return path

    a = save("model_a", [
        layers.Conv2D(4, 3, name="conv1"),
        layers.Conv2D(4, 1, name="proj"),
        layers.Conv2D(4, 3, name="conv2"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(2, name="head"),
    ])
    b = save("model_b", [
        layers.Conv2D(6, 3, name="conv1"),
        layers.Conv2DTranspose(6, 1, name="proj"),
        layers.Conv2D(4, 3, name="extra"),
        layers.Conv2D(4, 3, name="conv2"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(2, name="head"),
    ])
    return a, b


@pytest.fixture(scope="module")
def model_pair(keras, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_pair(keras, tmp_path_factory.mktemp("pair"))


def test_layers_whose_shapes_or_class_differ_are_resized_or_incompatible_and_not_compared(
    model_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path_a, path_b = model_pair
    read: list[str] = []
    for method in ("stored_bytes", "value"):
        original = getattr(diff_module._Store, method)

        def spy(store, var: Variable, _original=original):  # type: ignore[no-untyped-def]
            read.append(var.dataset)
            return _original(store, var)

        monkeypatch.setattr(diff_module._Store, method, spy)

    # In this process, not diff_models's bounded worker, so the spy sees the reads.
    report = diff_module._diff_models(source(path_a), source(path_b), all_layers=True)

    assert [(item.path, item.status) for item in report.layers] == [
        ("conv1", "resized"),
        ("proj", "incompatible"),
        ("extra", "only_b"),
        ("conv2", "changed"),
        ("head", "same"),
    ]
    assert not report.identical
    conv1 = layer(report, "conv1")
    assert conv1.variables == (
        VariableDiff("kernel", (3, 3, 3, 4), (3, 3, 3, 6), "float32", "float32", None, None, None),
        VariableDiff("bias", (4,), (6,), "float32", "float32", None, None, None),
    )
    # Only the filter count differs: told once for the kernel and the bias, not "incompatible".
    assert conv1.resized == (AxisChange("filters", 4, 6),)
    assert (conv1.summary, conv1.reason) == ("2 filters added (4 -> 6)", None)
    proj = layer(report, "proj")
    assert (proj.class_a, proj.class_b) == ("Conv2D", "Conv2DTranspose")
    assert proj.reason == "class Conv2D != Conv2DTranspose"
    assert (proj.resized, proj.summary) == ((), None)
    assert all(v.identical is None for v in proj.variables)
    assert layer(report, "conv2").reason is None

    structures = (read_structure(source(path_a)), read_structure(source(path_b)))
    compared = {v.dataset for s in structures for item in s.layers
                if item.path in ("conv2", "head") for v in item.variables}
    assert set(read) == compared  # nothing of conv1, proj or extra was read


@pytest.fixture(scope="module")
def resized_pair(keras, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same layers twice, with other channel counts and kernel sizes in the second."""
    layers = keras.layers
    folder = tmp_path_factory.mktemp("resized")

    def save(name: str, filters: int, separable: int, kernel: int, units: int) -> Path:
        model = keras.Sequential([
            keras.Input((8, 8, 4)),
            layers.Conv2D(filters, 3, padding="same", name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.DepthwiseConv2D(3, padding="same", name="dw"),
            layers.SeparableConv2D(separable, 3, padding="same", name="sep"),
            layers.Conv2D(4, 3, groups=2, padding="same", name="grouped"),
            layers.Conv2DTranspose(4, kernel, name="tr"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(units, name="head"),
        ], name=name)
        path = folder / f"{name}.keras"
        model.save(path)
        return path

    return save("a", 8, 8, 3, 3), save("b", 6, 10, 5, 5)


def test_a_layer_whose_axes_changed_length_says_which_in_words(resized_pair: tuple[Path, Path]) -> None:
    report = diff_models(*(source(path) for path in resized_pair), all_layers=True)
    assert {item.path: (item.status, item.summary) for item in report.layers} == {
        "conv": ("resized", "2 of 8 filters removed"),
        "bn": ("resized", "2 of 8 channels removed"),
        "dw": ("resized", "2 of 8 channels removed"),
        "sep": ("resized", "2 of 8 input channels removed, 2 filters added (8 -> 10)"),
        "grouped": ("resized", "1 input channel per group added (4 -> 5)"),
        "tr": ("resized", "kernel height: 3 -> 5, kernel width: 3 -> 5"),
        "head": ("resized", "2 units added (3 -> 5)"),
    }
    assert layer(report, "dw").resized == (AxisChange("channels", 8, 6),)  # not the bias's too
    assert all(v.identical is None for item in report.layers for v in item.variables)


def test_diff_json_lists_the_axes_of_a_resized_layer(resized_pair: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(app, ["diff", *map(str, resized_pair), "--json"], catch_exceptions=False)
    assert result.exit_code == 1
    layers = {item["path"]: item for item in json.loads(result.stdout)["layers"]}
    assert layers["sep"]["status"] == "resized" and layers["sep"]["reason"] is None
    assert layers["sep"]["resized"] == [{"axis": "input channels", "before": 8, "after": 6},
                                        {"axis": "filters", "before": 8, "after": 10}]
    assert [v["shape_b"] for v in layers["sep"]["variables"]] == [[3, 3, 6, 1], [1, 1, 6, 10], [10]]


def test_variables_that_differ_in_names_make_a_layer_incompatible(
    samples: Path, tmp_path: Path
) -> None:
    no_bias = copy_into(tmp_path, samples / "tiny_cnn.h5")
    with h5py.File(no_bias, "r+") as h5:
        group = h5["model_weights/conv1"]
        names = list(group.attrs["weight_names"])
        del h5[h5_dataset(h5, "conv1", "bias")]
        group.attrs["weight_names"] = names[:1]

    report = diff_models(source(samples / "tiny_cnn.h5"), source(no_bias))
    conv1 = layer(report, "conv1")
    assert conv1.status == "incompatible"
    assert [(v.name, v.shape_a, v.shape_b) for v in conv1.variables] == [
        ("kernel", (3, 3, 1, 4), (3, 3, 1, 4)), ("bias", (4,), None)
    ]
    assert conv1.reason == "variables (kernel, bias) != (kernel)"
    assert statuses(report)["conv2"] == "same"


# --- where the bytes come from ---------------------------------------------------------


def test_models_from_stdin_bytes_and_compressed_archives_give_the_same_report(
    samples: Path, tmp_path: Path
) -> None:
    kernel = np.random.default_rng(5).normal(size=(3, 3, 1, 4)).astype(np.float32)
    edited = conv_set(samples / "tiny_cnn.keras", tmp_path / "e.keras",
                      "--layer", "conv1", "--kernel", save_npy(tmp_path / "k.npy", kernel))
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(edited) as original, zipfile.ZipFile(deflated, "w") as out:
        for info in original.infolist():
            out.writestr(info.filename, original.read(info), compress_type=zipfile.ZIP_DEFLATED)

    expected = diff_models(source(samples / "tiny_cnn.keras"), source(edited), all_layers=True)
    assert statuses(expected)["conv1"] == "changed"
    from_stdin = ModelFile(label="<stdin>", data=edited.read_bytes())
    for other in (from_stdin, source(deflated)):
        report = diff_models(source(samples / "tiny_cnn.keras"), other, all_layers=True)
        assert report.layers == expected.layers
        assert report.b == other.label
    assert_all_same(diff_models(source(edited), source(deflated), all_layers=True))


def test_diff_never_imports_tensorflow(samples: Path) -> None:
    code = (
        "import sys\n"
        "import conv_surgeon.instruments.diff\n"
        "from conv_surgeon.store.model_file import ModelFile\n"
        f"a = ModelFile.from_path({str(samples / 'all_convs.keras')!r})\n"
        f"b = ModelFile.from_path({str(samples / 'all_convs.h5')!r})\n"
        "assert conv_surgeon.instruments.diff.diff_models(a, b, all_layers=True).identical\n"
        f"c = ModelFile.from_path({str(samples / 'tiny_bf16.keras')!r})\n"
        "assert conv_surgeon.instruments.diff.diff_models(c, c).identical\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_equal_variables_are_settled_on_their_stored_bytes_without_decoding(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal variables are settled on their stored bytes: nothing is decoded."""
    decoded: list[str] = []
    original = diff_module._Store.value

    def spy(store, var: Variable):  # type: ignore[no-untyped-def]
        decoded.append(var.dataset)
        return original(store, var)

    monkeypatch.setattr(diff_module._Store, "value", spy)
    for name in ("tiny_cnn.keras", "tiny_cnn.h5", "tiny_bf16.keras"):
        copy = copy_into(tmp_path, samples / name)
        assert diff_models(source(samples / name), source(copy), all_layers=True).identical
    assert decoded == []
