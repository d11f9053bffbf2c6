"""`conv-surgeon set` through the real Typer app, plus a few real-shell pipelines.

Models are the committed samples (written by real Keras and tf-keras 2) or tiny models
built here with Keras; results are read back with h5py, zipfile and Keras. No mocks.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import assert_one_error_line, copy_into, listing

from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.instruments.reading import get_weights

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.int64)
TF_NOISE = ("oneDNN custom operations", "cuda", "cuInit", "I0000", "E0000", "W0000", "absl", "Traceback")


@pytest.fixture(scope="module")
def tf(keras):
    import tensorflow

    return tensorflow


# --- helpers --------------------------------------------------------------------------


def npy(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / name
    np.save(path, array)
    return path


def weights(path: Path, layer: str) -> dict[str, np.ndarray]:
    return get_weights(ModelFile.from_path(path), layer, every=True).arrays


def store(path: Path) -> dict[str, bytes]:
    """Every dataset of the weight store (model.weights.h5 of a .keras, or the .h5)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            handle: object = io.BytesIO(archive.read("model.weights.h5"))
    else:
        handle = path
    found: dict[str, bytes] = {}
    with h5py.File(handle, "r") as h5:
        h5.visititems(lambda name, node: found.__setitem__(name, node[()].tobytes())
                      if isinstance(node, h5py.Dataset) else None)
    return found


def changed_datasets(before: Path, after: Path) -> dict[str, bytes]:
    old, new = store(before), store(after)
    assert old.keys() == new.keys()
    return {name: new[name] for name in old if old[name] != new[name]}




def zip_ends_exactly(data: bytes) -> bool:
    """The bytes are one zip archive and nothing after it (no report mixed in)."""
    eocd = data.rfind(b"PK\x05\x06")
    comment = int.from_bytes(data[eocd + 20 : eocd + 22], "little")
    return data.startswith(b"PK\x03\x04") and eocd > 0 and eocd + 22 + comment == len(data)


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, check=False,
                          executable="/bin/bash", timeout=120)


def conv_model(keras, name: str, input_shape: tuple[int, ...], filters: int, **kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input(input_shape), keras.layers.Conv2D(filters, 3, name="conv", **kwargs)], name=name
    )
    return model


def conv2d_reference(tf, x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, padding: str) -> np.ndarray:
    return tf.nn.conv2d(x, kernel.astype(np.float32), strides=1, padding=padding).numpy() + bias


# --- acceptance: the classic recipe for setting Conv2D weights, with the CLI ---------------


def test_acceptance_a_random_normal_kernel_and_bias_from_npy(cli, keras, tf, tmp_path: Path) -> None:
    model_path = tmp_path / "rgb.keras"
    conv_model(keras, "rgb", (32, 32, 3), 16, padding="same").save(model_path)
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    npy(tmp_path, "k.npy", kernel), npy(tmp_path, "b.npy", bias)
    out = tmp_path / "out.keras"

    result = cli("set", model_path, "--layer", "conv", "--kernel", tmp_path / "k.npy", "--bias", tmp_path / "b.npy", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "smoke test passed" in result.stdout and result.stderr == ""

    x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    got = keras.saving.load_model(out)(x).numpy()
    np.testing.assert_allclose(got, conv2d_reference(tf, x, kernel, bias, "SAME"), rtol=1e-5, atol=1e-4)


def test_acceptance_b_integer_sobel_repeated_over_four_filters(cli, keras, tf, tmp_path: Path) -> None:
    model_path = tmp_path / "gray.keras"
    # A bias of ones, so that --bias-init zeros visibly changes it.
    conv_model(keras, "gray", (28, 28, 1), 4, padding="same", bias_initializer="ones").save(model_path)
    sobel = np.repeat(SOBEL_X[:, :, None, None], 4, axis=3)
    assert sobel.shape == (3, 3, 1, 4) and sobel.dtype == np.int64
    npy(tmp_path, "sobel.npy", sobel)
    out = tmp_path / "edges.keras"

    result = cli("set", model_path, "--layer", "conv", "--kernel", tmp_path / "sobel.npy", "--bias-init", "zeros", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "int64 -> float32" in result.stdout
    assert "seed" not in result.stdout  # zeros takes no seed: none to report

    x = np.random.default_rng(2).standard_normal((1, 28, 28, 1)).astype(np.float32)
    got = keras.saving.load_model(out)(x).numpy()
    np.testing.assert_allclose(got, conv2d_reference(tf, x, sobel, np.zeros(4), "SAME"), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(weights(out, "conv")["bias"], np.zeros(4, np.float32))


def test_acceptance_b_the_common_mistake_3_input_channels_is_refused(cli, keras, tmp_path: Path) -> None:
    model_path = tmp_path / "gray.keras"
    conv_model(keras, "gray", (28, 28, 1), 4, padding="same").save(model_path)
    wrong = np.repeat(np.repeat(SOBEL_X[:, :, None, None], 3, axis=2), 4, axis=3)
    npy(tmp_path, "sobel3.npy", wrong)
    before = listing(tmp_path)
    result = cli("set", model_path, "--layer", "conv", "--kernel", tmp_path / "sobel3.npy", "--bias-init", "zeros",
                 "-o", tmp_path / "edges.keras")
    assert_one_error_line(result, 1, "(3, 3, 1, 4)", "(3, 3, 3, 4)", "sobel3.npy", "'conv'")
    assert listing(tmp_path) == before


def test_acceptance_c_random_normal_initializer_statistics_and_seeds(cli, keras, tf, tmp_path: Path) -> None:
    model_path = tmp_path / "wide.keras"
    conv_model(keras, "wide", (32, 32, 3), 32).save(model_path)
    spec = "random_normal:stddev=0.02"

    def run(name: str, *extra: str):
        result = cli("set", model_path, "--layer", "conv", "--kernel-init", spec, *extra, "-o", tmp_path / name)
        assert result.exit_code == 0, result.stderr
        return result, weights(tmp_path / name, "conv")

    first, seeded = run("s1.keras", "--seed", "1234")
    _, again = run("s2.keras", "--seed", "1234", "--no-smoke")
    kernel = seeded["kernel"]
    assert kernel.shape == (3, 3, 3, 32) and kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, again["kernel"])
    assert abs(float(kernel.std()) - 0.02) < 0.003 and abs(float(kernel.mean())) < 0.004
    assert "smoke test passed" in first.stdout and "1234" in first.stdout

    # The loaded model computes the convolution with that kernel and the untouched bias.
    original_bias = weights(model_path, "conv")["bias"]
    np.testing.assert_array_equal(seeded["bias"], original_bias)
    x = np.random.default_rng(3).standard_normal((1, 32, 32, 3)).astype(np.float32)
    got = keras.saving.load_model(tmp_path / "s1.keras")(x).numpy()
    np.testing.assert_allclose(got, conv2d_reference(tf, x, kernel, original_bias, "VALID"), rtol=1e-5, atol=1e-5)

    # Without --seed, a seed is drawn and reported; re-running with it gives the same weights.
    drawn, unseeded = run("u1.keras", "--no-smoke")
    match = re.search(r"--seed (\d+)", drawn.stdout)
    assert match, drawn.stdout
    assert not np.array_equal(unseeded["kernel"], kernel)
    assert abs(float(unseeded["kernel"].std()) - 0.02) < 0.003
    _, repeated = run("u2.keras", "--seed", match.group(1), "--no-smoke")
    np.testing.assert_array_equal(repeated["kernel"], unseeded["kernel"])

    as_json, from_json = run("u3.keras", "--no-smoke", "--json")
    doc = json.loads(as_json.stdout)
    assert doc["seed_drawn"] is True and isinstance(doc["seed"], int)
    _, repeated_json = run("u4.keras", "--seed", str(doc["seed"]), "--no-smoke")
    np.testing.assert_array_equal(repeated_json["kernel"], from_json["kernel"])


# --- coverage: every conv class, nested layers, bfloat16, legacy .h5 ---------------------

ALL_CONVS = {
    "c1d": {"kernel": (3, 3, 4), "bias": (4,)},
    "c2d": {"kernel": (3, 3, 4, 4), "bias": (4,)},
    "c2d_grouped": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "c2d_nobias": {"kernel": (1, 1, 4, 4)},
    "c3d": {"kernel": (3, 3, 3, 2, 2), "bias": (2,)},
    "t1d": {"kernel": (3, 3, 4), "bias": (3,)},
    "t2d": {"kernel": (3, 3, 2, 4), "bias": (2,)},
    "t3d": {"kernel": (2, 2, 2, 2, 2), "bias": (2,)},
    "dw1d": {"kernel": (3, 3, 1), "bias": (3,)},
    "dw2d": {"kernel": (3, 3, 4, 2), "bias": (8,)},
    "sep1d": {"depthwise_kernel": (3, 3, 1), "pointwise_kernel": (1, 3, 4), "bias": (4,)},
    "sep2d": {"depthwise_kernel": (3, 3, 8, 1), "pointwise_kernel": (1, 1, 8, 4), "bias": (4,)},
    "seq_block/conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "seq_block/post_conv": {"kernel": (1, 1, 4, 4), "bias": (4,)},
    "func_block/conv": {"kernel": (3, 3, 4, 4), "bias": (4,)},
    "func_block/deep_block/deep_conv": {"kernel": (1, 1, 4, 2), "bias": (2,)},
}

KERAS2_CONVS = {
    "conv": {"kernel": (3, 3, 3, 4), "bias": (4,)},
    "dwconv": {"kernel": (3, 3, 4, 1), "bias": (4,)},  # stored as depthwise_kernel
    "sepconv": {"depthwise_kernel": (3, 3, 4, 1), "pointwise_kernel": (1, 1, 4, 4), "bias": (4,)},
    "inner_block/inner_conv": {"kernel": (3, 3, 4, 4), "bias": (4,)},
    "inner_block/inner_post": {"kernel": (1, 1, 4, 4), "bias": (4,)},
    "frozen_block/frozen_conv": {"kernel": (3, 3, 4, 4), "bias": (4,)},
    "frozen_block/frozen_post": {"kernel": (1, 1, 4, 4), "bias": (4,)},
    "tconv": {"kernel": (3, 3, 2, 4), "bias": (2,)},
    "conv1d": {"kernel": (3, 3, 2), "bias": (2,)},
}


def weight_args(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """Distinct new values for every variable, as .npy files and the options naming them."""
    rng = np.random.default_rng(seed)
    args: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        arrays[name] = rng.uniform(-1, 1, shape).astype(np.float32)
        path = npy(folder, f"{name}.npy", arrays[name])
        if name in ("kernel", "bias"):
            args += [f"--{name}", str(path)]
        else:
            args += ["--weight", f"{name}={path}"]
    return args, arrays


def check_layer_set(cli, model: Path, layer: str, shapes: dict, folder: Path, *extra: str,
                    store_path: str | None = None) -> Path:
    args, arrays = weight_args(folder, shapes, seed=len(layer))
    out = folder / f"out{model.suffix}"
    # --optimizer keep: nothing but the layer's own datasets may change (reset: tests/test_optimizer_state.py).
    result = cli("set", model, "--layer", layer, *args, "-o", out, "--optimizer", "keep", *extra)
    assert result.exit_code == 0, result.stderr
    assert f"layer '{layer}'" in result.stdout
    got = weights(out, layer)
    assert len(got) == len(arrays)
    for name, value in arrays.items():
        # Keras 2 stores a DepthwiseConv2D's kernel as depthwise_kernel; --kernel means it.
        stored = got[name] if name in got else got["depthwise_kernel"]
        np.testing.assert_array_equal(stored, value, err_msg=f"{layer} {name}")
    # Exactly this layer's datasets changed, each now holding one of the new arrays.
    changed = changed_datasets(model, out)
    assert sorted(changed.values()) == sorted(a.tobytes() for a in arrays.values()), sorted(changed)
    leaf = layer.split("/")[-1]
    for dataset in changed:
        if store_path is not None:
            assert dataset.startswith(f"{store_path}/vars/"), dataset
        elif zipfile.is_zipfile(out):
            assert vars_group_name(out, dataset) == leaf, dataset  # Keras >= 3.6 tags vars groups
        else:
            assert f"/{leaf}/" in f"/{dataset}", dataset  # a .h5 names datasets after layers
    return out


def vars_group_name(path: Path, dataset: str) -> str | None:
    """The `name` attribute of a .keras dataset's vars group."""
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        name = h5[dataset].parent.attrs.get("name")
    return None if name is None else str(name.decode() if isinstance(name, bytes) else name)


@pytest.mark.parametrize("layer", list(ALL_CONVS))
def test_set_every_conv_class_in_all_convs_keras(cli, samples: Path, tmp_path: Path, layer: str) -> None:
    check_layer_set(cli, samples / "all_convs.keras", layer, ALL_CONVS[layer], tmp_path, "--no-smoke")


def test_set_with_the_smoke_test_on_all_convs_keras(cli, samples: Path, tmp_path: Path) -> None:
    layer = "func_block/deep_block/deep_conv"
    check_layer_set(cli, samples / "all_convs.keras", layer, ALL_CONVS[layer], tmp_path)
    result = cli("set", samples / "all_convs.keras", "--layer", "sep2d", "--weight-init", "depthwise_kernel=ones",
                 "-o", tmp_path / "sep.keras", "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc["smoke"]["passed"] and doc["smoke"]["checked_variables"] == 1
    assert [i["shape"] for i in doc["smoke"]["inputs"]] == [[1, 8, 3], [1, 8, 8, 4], [1, 4, 4, 4, 2]]


@pytest.mark.parametrize("layer", ["c2d", "c2d_grouped", "dw2d", "sep2d", "t1d", "c3d", "seq_block/conv",
                                   "seq_block/post_conv", "func_block/conv", "func_block/deep_block/deep_conv"])
def test_set_in_all_convs_h5_written_by_keras3(cli, samples: Path, tmp_path: Path, layer: str) -> None:
    check_layer_set(cli, samples / "all_convs.h5", layer, ALL_CONVS[layer], tmp_path, "--no-smoke")


def test_nested_edits_in_h5_are_what_keras_loads(cli, keras, samples: Path, tmp_path: Path) -> None:
    """Chain three edits, then ask Keras itself where the values landed."""
    model = samples / "all_convs.h5"
    edits = {
        "seq_block/conv": np.full((3, 3, 2, 4), 0.5, np.float32),
        "seq_block/post_conv": np.full((1, 1, 4, 4), -0.25, np.float32),
        "func_block/deep_block/deep_conv": np.arange(8, dtype=np.float32).reshape(1, 1, 4, 2),
    }
    for step, (layer, value) in enumerate(edits.items()):
        out = tmp_path / f"step{step}.h5"
        result = cli("set", model, "--layer", layer, "--kernel", npy(tmp_path, f"k{step}.npy", value), "-o", out, "--no-smoke")
        assert result.exit_code == 0, result.stderr
        model = out
    loaded = keras.saving.load_model(model, compile=False)
    original = keras.saving.load_model(samples / "all_convs.h5", compile=False)
    for path, value in edits.items():
        layer, reference = loaded, original
        for name in path.split("/"):
            layer, reference = layer.get_layer(name), reference.get_layer(name)
        np.testing.assert_array_equal(layer.kernel.numpy(), value, err_msg=path)
        np.testing.assert_array_equal(layer.bias.numpy(), reference.bias.numpy(), err_msg=path)
    bn, bn_ref = loaded.get_layer("seq_block").get_layer("bn"), original.get_layer("seq_block").get_layer("bn")
    for got, want in zip(bn.weights, bn_ref.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_set_tiny_cnn_h5_with_the_smoke_test(cli, samples: Path, tmp_path: Path) -> None:
    out = check_layer_set(cli, samples / "tiny_cnn.h5", "conv2", {"kernel": (3, 3, 4, 8), "bias": (8,)}, tmp_path)
    assert out.suffix == ".h5"


def test_set_keras2_tiny_h5_with_the_smoke_test(cli, data_dir: Path, tmp_path: Path) -> None:
    result_path = check_layer_set(cli, data_dir / "keras2_tiny.h5", "conv1", {"kernel": (3, 3, 1, 4), "bias": (4,)}, tmp_path)
    assert result_path.exists()


@pytest.mark.parametrize("layer", list(KERAS2_CONVS))
def test_set_in_keras2_convs_h5_without_smoke(cli, data_dir: Path, tmp_path: Path, layer: str) -> None:
    check_layer_set(cli, data_dir / "keras2_convs.h5", layer, KERAS2_CONVS[layer], tmp_path, "--no-smoke")


def test_keras2_convs_that_keras3_cannot_load_are_checked_by_tf_keras(cli, data_dir: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, data_dir / "keras2_convs.h5")
    npy(tmp_path, "k.npy", np.ones((3, 3, 3, 4), np.float32))
    result = cli("set", model, "--layer", "conv", "--kernel", tmp_path / "k.npy", "-o", tmp_path / "out.h5")
    assert result.exit_code == 0, result.stderr
    assert "smoke test passed (tf-keras 2.21.0, TensorFlow 2.21.0, oneDNN off): input" in result.stdout
    assert "1 edited variable read back exactly" in result.stdout
    assert ("note: Keras 3.15.1 cannot load this file (written by Keras 2.21.0): DepthwiseConv2D: Unrecognized "
            "keyword arguments passed to DepthwiseConv2D: {'groups': 1}; tf-keras 2.21.0 checked it") in result.stdout


def test_bfloat16_values_are_rounded_and_the_cast_reported(cli, samples: Path, tmp_path: Path) -> None:
    import ml_dtypes

    value = np.random.default_rng(5).standard_normal((3, 3, 3, 4)).astype(np.float32)
    out = tmp_path / "out.keras"
    result = cli("set", samples / "tiny_bf16.keras", "--layer", "conv1", "--kernel", npy(tmp_path, "k.npy", value), "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "float32 -> bfloat16" in result.stdout and "smoke test passed" in result.stdout
    rounded = value.astype(ml_dtypes.bfloat16)
    assert not np.array_equal(rounded.astype(np.float32), value)
    with zipfile.ZipFile(out) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        raw = h5["layers/conv2d/vars/0"]
        assert raw.attrs["dtype"] == "bfloat16"
        np.testing.assert_array_equal(raw[()].view(ml_dtypes.bfloat16), rounded)


def test_separable_kernel_needs_weight_names(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "all_convs.keras")
    npy(tmp_path, "k.npy", np.ones((3, 3, 8, 1), np.float32))
    before = listing(tmp_path)
    result = cli("set", model, "--layer", "sep2d", "--kernel", tmp_path / "k.npy", "-o", tmp_path / "out.keras")
    assert_one_error_line(result, 1, "sep2d", "--weight depthwise_kernel=", "--weight pointwise_kernel=")
    assert listing(tmp_path) == before


# --- pipelines through a real shell ------------------------------------------------------


def test_pipeline_stdin_to_stdout_to_inspect(samples: Path, tmp_path: Path) -> None:
    copy_into(tmp_path, samples / "tiny_cnn.keras", "in.keras")
    kernel = np.random.default_rng(7).standard_normal((3, 3, 1, 4)).astype(np.float32)
    npy(tmp_path, "k.npy", kernel)
    # `tee` copies each middle stdout to a file so that it can be checked; it changes nothing.
    run = shell(
        "conv-surgeon set --layer conv1 --kernel k.npy < in.keras | tee mid1.keras"
        " | conv-surgeon set --layer conv2 --bias-init zeros | tee mid2.keras"
        " | conv-surgeon inspect - --json\n"
        'echo "${PIPESTATUS[*]}" > status',
        tmp_path,
    )
    assert (tmp_path / "status").read_text().split() == ["0"] * 5, run.stderr
    doc = json.loads(run.stdout)
    assert doc["schema"] and [layer["name"] for layer in doc["layers"]] == ["conv1", "conv2", "conv3"]
    assert doc["layers"][0]["weights"]["kernel"] == {"shape": [3, 3, 1, 4], "dtype": "float32"}
    assert doc["layers"][1]["weights"]["bias"] == {"shape": [8], "dtype": "float32"}

    stderr = run.stderr.decode()
    assert "layer 'conv1'" in stderr and "layer 'conv2'" in stderr and stderr.count("smoke test passed") == 2
    assert not any(noise in stderr for noise in TF_NOISE), stderr
    for name in ("mid1.keras", "mid2.keras"):
        data = (tmp_path / name).read_bytes()
        assert zip_ends_exactly(data), name  # the model and nothing else
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None
    original = weights(tmp_path / "in.keras", "conv2")
    np.testing.assert_array_equal(weights(tmp_path / "mid1.keras", "conv1")["kernel"], kernel)
    np.testing.assert_array_equal(weights(tmp_path / "mid2.keras", "conv1")["kernel"], kernel)
    np.testing.assert_array_equal(weights(tmp_path / "mid2.keras", "conv2")["kernel"], original["kernel"])
    np.testing.assert_array_equal(weights(tmp_path / "mid2.keras", "conv2")["bias"], np.zeros(8, np.float32))
    assert original["bias"].any()


def test_pipeline_get_into_set_kernel_from_stdin(cli, samples: Path, tmp_path: Path) -> None:
    copy_into(tmp_path, samples / "tiny_cnn.keras", "a.keras")
    b = copy_into(tmp_path, samples / "tiny_cnn.keras", "b.keras")
    other = np.full((3, 3, 1, 4), 0.5, np.float32)
    assert cli("set", b, "--layer", "conv1", "--kernel", npy(tmp_path, "other.npy", other),
               "--in-place", "--no-smoke").exit_code == 0
    run = shell("conv-surgeon get a.keras --layer conv1 -o - | conv-surgeon set b.keras --layer conv1 --kernel - -o c.keras",
                tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == b""
    stdout = run.stdout.decode()
    assert "wrote c.keras" in stdout and "stdin" in stdout and "smoke test passed" in stdout
    np.testing.assert_array_equal(weights(tmp_path / "c.keras", "conv1")["kernel"],
                                  weights(tmp_path / "a.keras", "conv1")["kernel"])
    assert list(changed_datasets(tmp_path / "b.keras", tmp_path / "c.keras")) == ["layers/conv2d/vars/0"]


# --- reports ----------------------------------------------------------------------------


def test_dry_run_reports_the_change_and_writes_nothing(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    kernel = np.random.default_rng(9).standard_normal((3, 3, 1, 4)).astype(np.float32)
    npy(tmp_path, "k.npy", kernel)
    old = weights(model, "conv1")
    before = listing(tmp_path)
    result = cli("set", model, "--layer", "conv1", "--kernel", tmp_path / "k.npy", "--bias-init", "zeros", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert listing(tmp_path) == before
    out = result.stdout
    assert "dry run" in out and "conv1" in out and "Conv2D" in out
    for text in ("kernel", "bias", "(3, 3, 1, 4)", "(4,)", "float32",
                 f"{np.linalg.norm(kernel.astype(np.float64)):.4g}", f"{np.linalg.norm(old['kernel'].astype(np.float64)):.4g}",
                 f"{np.linalg.norm(old['bias'].astype(np.float64)):.4g}"):
        assert text in out, text
    assert "wrote" not in out

    as_json = cli("set", model, "--layer", "conv1", "--kernel", tmp_path / "k.npy", "--dry-run", "--json", "-o", tmp_path / "x.keras")
    doc = json.loads(as_json.stdout)
    assert doc["schema"] and doc["dry_run"] is True and doc["output"] is None and doc["smoke"] is None
    (change,) = doc["changes"]
    assert (change["variable"], change["shape"], change["dtype"]) == ("kernel", [3, 3, 1, 4], "float32")
    assert change["new_l2"] == pytest.approx(float(np.linalg.norm(kernel.astype(np.float64))))
    assert listing(tmp_path) == before


def test_json_report_is_one_object_with_a_schema(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    result = cli("set", model, "--layer", "conv3", "--bias-init", "constant:value=0.1", "-o", tmp_path / "o.keras", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    doc = json.loads(result.stdout)  # one object, nothing else on stdout
    assert isinstance(doc, dict) and doc["schema"] == 1
    assert doc["output"] == str(tmp_path / "o.keras") and doc["layer"]["path"] == "conv3"
    assert doc["changes"][0]["variable"] == "bias" and doc["smoke"]["passed"] is True
    np.testing.assert_array_equal(weights(tmp_path / "o.keras", "conv3")["bias"], np.full(8, 0.1, np.float32))


def test_model_on_stdout_sends_every_report_to_stderr(cli, samples: Path, tmp_path: Path) -> None:
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    data = (samples / "tiny_cnn.keras").read_bytes()
    for args in ([], ["--json"]):
        result = cli("set", "--layer", "conv1", "--kernel", tmp_path / "k.npy", "--no-smoke", *args, input=data)
        assert result.exit_code == 0, result.stderr
        assert zip_ends_exactly(result.stdout_bytes)
        assert "conv1" in result.stderr
    assert json.loads(result.stderr)["output"] == "<stdout>"
    out = tmp_path / "out.keras"
    out.write_bytes(result.stdout_bytes)
    np.testing.assert_array_equal(weights(out, "conv1")["kernel"], np.ones((3, 3, 1, 4), np.float32))
    explicit = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", "-", "--no-smoke")
    assert explicit.exit_code == 0 and "wrote <stdout>" in explicit.stderr
    # Same model either way; only the provenance record (time, command) tells them apart.
    with zipfile.ZipFile(io.BytesIO(explicit.stdout_bytes)) as a, zipfile.ZipFile(io.BytesIO(result.stdout_bytes)) as b:
        for member in ("config.json", "model.weights.h5"):
            assert a.read(member) == b.read(member)


def test_no_smoke_says_it_was_skipped(cli, samples: Path, tmp_path: Path) -> None:
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", tmp_path / "o.keras", "--no-smoke")
    assert result.exit_code == 0 and "smoke test skipped" in result.stdout and "passed" not in result.stdout
    doc = json.loads(cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", tmp_path / "k.npy",
                         "-o", tmp_path / "o.keras", "--no-smoke", "--json").stdout)
    assert doc["smoke"] is None and doc["smoke_skipped"] is True


# --- writing rules ----------------------------------------------------------------------


def test_model_path_without_output_is_a_usage_error(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    before = listing(tmp_path)
    result = cli("set", model, "--layer", "conv1", "--kernel", tmp_path / "k.npy")
    assert_one_error_line(result, 2, "-o", "--in-place")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("spelling", ["same", "dot", "absolute", "symlink"])
def test_output_naming_the_input_says_use_in_place(cli, samples: Path, tmp_path: Path, monkeypatch, spelling: str) -> None:
    monkeypatch.chdir(tmp_path)
    copy_into(tmp_path, samples / "tiny_cnn.keras", "m.keras")
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    if spelling == "symlink":
        os.symlink("m.keras", tmp_path / "link.keras")
    output = {"same": "m.keras", "dot": "./m.keras", "absolute": str(tmp_path / "m.keras"), "symlink": "link.keras"}[spelling]
    before = listing(tmp_path)
    result = cli("set", "m.keras", "--layer", "conv1", "--kernel", "k.npy", "-o", output, "--no-smoke")
    assert_one_error_line(result, 2, "--in-place")
    assert listing(tmp_path) == before


def test_in_place_updates_the_file_and_leaves_no_temp_files(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    os.chmod(model, 0o640)
    kernel = np.full((3, 3, 1, 4), 2.0, np.float32)
    npy(tmp_path, "k.npy", kernel)
    names = sorted(listing(tmp_path))
    result = cli("set", model, "--layer", "conv1", "--kernel", tmp_path / "k.npy", "--in-place")
    assert result.exit_code == 0, result.stderr
    assert sorted(listing(tmp_path)) == names
    np.testing.assert_array_equal(weights(model, "conv1")["kernel"], kernel)
    # The kernel, and its Adam moments reset (the default --optimizer reset).
    assert list(changed_datasets(samples / "tiny_cnn.keras", model)) == [
        "layers/conv2d/vars/0", "optimizer/vars/2", "optimizer/vars/3"]
    assert stat.S_IMODE(model.stat().st_mode) == 0o640


def test_output_naming_another_existing_file_replaces_it(cli, samples: Path, tmp_path: Path) -> None:
    target = tmp_path / "existing.keras"
    target.write_bytes(b"old content")
    os.chmod(target, 0o600)
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", target, "--no-smoke")
    assert result.exit_code == 0, result.stderr
    assert sorted(listing(tmp_path)) == ["existing.keras", "k.npy"]
    np.testing.assert_array_equal(weights(target, "conv1")["kernel"], np.ones((3, 3, 1, 4), np.float32))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # as `cp` would


def test_missing_output_directory_is_an_error(cli, samples: Path, tmp_path: Path) -> None:
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    before = listing(tmp_path)
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", tmp_path / "k.npy",
                 "-o", tmp_path / "nodir" / "o.keras")
    assert_one_error_line(result, 1, "nodir", "does not exist")
    assert listing(tmp_path) == before and not (tmp_path / "nodir").exists()


def test_failed_in_place_leaves_the_input_and_no_temp(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn_lambda.keras")
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    before = listing(tmp_path)
    result = cli("set", model, "--layer", "conv1", "--kernel", tmp_path / "k.npy", "--in-place")
    assert_one_error_line(result, 3, "--unsafe")
    assert listing(tmp_path) == before


def test_failed_stdin_to_stdout_writes_no_byte_and_leaves_no_temp(cli, samples: Path, tmp_path: Path, monkeypatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    npy(tmp_path, "k.npy", np.full((3, 3, 1, 4), 3e38, np.float32))
    result = cli("set", "--layer", "conv1", "--kernel", tmp_path / "k.npy", input=(samples / "tiny_cnn.keras").read_bytes())
    assert result.exit_code == 3 and result.stdout_bytes == b""
    assert result.stderr.startswith("Error: ") and "Inf" in result.stderr
    assert list(scratch.iterdir()) == []


# --- bad input: one Error line, nothing written, input untouched ------------------------


def _bad_inputs(folder: Path, samples: Path) -> None:
    """Every file the bad-input cases name, written into ``folder``."""
    copy_into(folder, samples / "tiny_cnn.keras", "tiny.keras")
    copy_into(folder, samples / "all_convs.keras", "convs.keras")
    copy_into(folder, samples / "tiny_cnn_lambda.keras", "lambda.keras")
    npy(folder, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    npy(folder, "wrong.npy", np.ones((3, 3, 3, 4), np.float32))
    npy(folder, "torch.npy", np.ones((8, 4, 3, 3), np.float32))  # conv2 is (3, 3, 4, 8)
    npy(folder, "rank3.npy", np.ones((3, 3, 4), np.float32))
    npy(folder, "complex.npy", np.ones((3, 3, 1, 4), np.complex64))
    npy(folder, "bool.npy", np.ones((3, 3, 1, 4), bool))
    nan = np.ones((3, 3, 1, 4), np.float32)
    nan[2, 1, 0, 3] = np.nan
    npy(folder, "nan.npy", nan)
    nan[2, 1, 0, 3] = -np.inf
    npy(folder, "inf.npy", nan)
    npy(folder, "huge.npy", np.full((3, 3, 1, 4), 3e38, np.float32))
    objects = np.empty((3, 3, 1, 4), dtype=object)
    objects[...] = 1.0
    np.save(folder / "pickled.npy", objects, allow_pickle=True)
    (folder / "truncated.npy").write_bytes((folder / "k.npy").read_bytes()[:-30])
    (folder / "empty.npy").write_bytes(b"")
    np.savez(folder / "two.npz", first=np.ones((3, 3, 1, 4), np.float32), second=np.ones(4, np.float32))
    npy(folder, "b4.npy", np.ones(4, np.float32))
    (folder / "random.keras").write_bytes(np.random.default_rng(0).bytes(4096))
    whole = (samples / "tiny_cnn.keras").read_bytes()
    (folder / "truncated.keras").write_bytes(whole[: len(whole) * 2 // 3])


BAD_INPUTS = {
    "wrong-shape": (["tiny.keras", "-l", "conv1", "--kernel", "wrong.npy"], 1, ["(3, 3, 1, 4)", "(3, 3, 3, 4)", "wrong.npy", "'conv1'"]),
    "torch-layout": (["tiny.keras", "-l", "conv2", "--kernel", "torch.npy"], 1, ["(3, 3, 4, 8)", "(8, 4, 3, 3)", "PyTorch", "'conv2'"]),
    "wrong-rank": (["tiny.keras", "-l", "conv1", "--kernel", "rank3.npy"], 1, ["rank 3", "(3, 3, 1, 4)", "rank3.npy"]),
    "complex": (["tiny.keras", "-l", "conv1", "--kernel", "complex.npy"], 1, ["complex64", "complex.npy"]),
    "bool": (["tiny.keras", "-l", "conv1", "--kernel", "bool.npy"], 1, ["bool", "bool.npy"]),
    "nan": (["tiny.keras", "-l", "conv1", "--kernel", "nan.npy"], 1, ["NaN", "(2, 1, 0, 3)", "nan.npy"]),
    "inf": (["tiny.keras", "-l", "conv1", "--kernel", "inf.npy"], 1, ["Inf", "(2, 1, 0, 3)", "inf.npy"]),
    "pickled": (["tiny.keras", "-l", "conv1", "--kernel", "pickled.npy"], 1, ["pickled.npy", "pickle"]),
    "truncated-npy": (["tiny.keras", "-l", "conv1", "--kernel", "truncated.npy"], 1, ["truncated.npy", "truncated"]),
    "empty-npy": (["tiny.keras", "-l", "conv1", "--kernel", "empty.npy"], 1, ["empty.npy", "empty"]),
    "missing-npy": (["tiny.keras", "-l", "conv1", "--kernel", "nope.npy"], 1, ["nope.npy", "not found"]),
    "npz-no-key": (["tiny.keras", "-l", "conv1", "--kernel", "two.npz"], 1, ["two.npz", "first", "second"]),
    "npz-missing-key": (["tiny.keras", "-l", "conv1", "--kernel", "two.npz:third"], 1, ["two.npz", "'third'", "first, second"]),
    "unknown-layer": (["tiny.keras", "-l", "cnv1", "--kernel", "k.npy"], 1, ["'cnv1'", "did you mean 'conv1'"]),
    "ambiguous-layer": (["convs.keras", "-l", "conv", "--bias", "b4.npy"], 1, ["'conv'", "ambiguous", "seq_block/conv", "func_block/conv"]),
    "dense-layer-shape": (["tiny.keras", "-l", "head", "--kernel", "k.npy"], 1, ["'head' kernel", "(8, 10) (in_features, units)", "rank 4 != 2"]),
    "bias-without-bias": (["convs.keras", "-l", "c2d_nobias", "--bias", "b4.npy"], 1, ["'c2d_nobias'", "no bias"]),
    "unknown-initializer": (["tiny.keras", "-l", "conv1", "--kernel-init", "he_normall"], 1, ["'he_normall'", "did you mean 'he_normal'"]),
    "bad-initializer-argument": (["tiny.keras", "-l", "conv1", "--kernel-init", "random_normal:stddev=abc"], 1, ["stddev", "'abc'", "number"]),
    "random-bytes-model": (["random.keras", "-l", "conv1", "--kernel", "k.npy"], 1, ["random.keras", "not a Keras model"]),
    "truncated-keras": (["truncated.keras", "-l", "conv1", "--kernel", "k.npy"], 1, ["truncated.keras", "truncated or corrupt"]),
    "same-output": (["tiny.keras", "-l", "conv1", "--kernel", "k.npy", "-o", "tiny.keras"], 2, ["--in-place"]),
    "missing-output-dir": (["tiny.keras", "-l", "conv1", "--kernel", "k.npy", "-o", "nodir/out.keras"], 1, ["nodir"]),
    "no-weight-option": (["tiny.keras", "-l", "conv1"], 2, ["--kernel", "--bias", "--weight", "--kernel-init", "--bias-init", "--weight-init"]),
    "bias-init-without-bias": (["convs.keras", "-l", "c2d_nobias", "--bias-init", "zeros"], 1, ["'c2d_nobias'", "no bias"]),
    "kernel-given-twice": (["tiny.keras", "-l", "conv1", "--kernel", "k.npy", "--kernel-init", "zeros"], 1, ["'conv1' kernel", "twice", "k.npy"]),
    "unknown-weight-name": (["tiny.keras", "-l", "conv1", "--weight", "gamma=k.npy"], 1, ["'conv1'", "'gamma'", "kernel, bias"]),
    "lambda-without-unsafe": (["lambda.keras", "-l", "conv1", "--kernel", "k.npy"], 3, ["--unsafe", "Lambda"]),
    "overflow-to-inf": (["tiny.keras", "-l", "conv1", "--kernel", "huge.npy"], 3, ["NaN or Inf"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_nothing_written(cli, samples: Path, tmp_path: Path, monkeypatch, case: str) -> None:
    monkeypatch.chdir(tmp_path)
    _bad_inputs(tmp_path, samples)
    args, exit_code, parts = BAD_INPUTS[case]
    if "-o" not in args:
        args = args + ["-o", "out.keras"]
    smoke = [] if exit_code == 3 else ["--no-smoke"]
    before = listing(tmp_path)
    result = cli("set", *args, *smoke)
    assert_one_error_line(result, exit_code, *parts)
    assert listing(tmp_path) == before  # inputs byte-identical, no output, no temp file


def test_refusals_come_before_the_smoke_test(cli, samples: Path, tmp_path: Path, monkeypatch) -> None:
    """A refusal is the same one-line error with the smoke test on (no Keras noise, no file)."""
    monkeypatch.chdir(tmp_path)
    _bad_inputs(tmp_path, samples)
    before = listing(tmp_path)
    result = cli("set", "tiny.keras", "-l", "conv1", "--kernel", "wrong.npy", "-o", "out.keras")
    assert_one_error_line(result, 1, "(3, 3, 3, 4)")
    assert listing(tmp_path) == before


def test_lambda_model_works_with_unsafe(cli, samples: Path, tmp_path: Path) -> None:
    out = check_layer_set(cli, samples / "tiny_cnn_lambda.keras", "conv1", {"kernel": (3, 3, 1, 4), "bias": (4,)},
                          tmp_path, "--unsafe")
    assert out.exists()


def test_empty_stdin_is_a_clear_error(cli, samples: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    before = listing(tmp_path)
    result = cli("set", "--layer", "conv1", "--kernel", "k.npy", input=b"")
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "stdin" in result.stderr and "0 bytes" in result.stderr
    assert listing(tmp_path) == before


def test_no_weight_option_on_stdin_lists_the_options(cli, samples: Path) -> None:
    result = cli("set", "--layer", "conv1", input=(samples / "tiny_cnn.keras").read_bytes())
    assert result.exit_code == 2 and result.stdout_bytes == b""
    for option in ("--kernel", "--bias", "--weight", "--kernel-init", "--bias-init", "--weight-init"):
        assert option in result.stderr


def test_torch_layout_hint_names_only_options_that_exist(cli, samples: Path, tmp_path: Path) -> None:
    npy(tmp_path, "torch.npy", np.ones((8, 4, 3, 3), np.float32))
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv2", "--kernel", tmp_path / "torch.npy",
                 "-o", tmp_path / "o.keras", "--no-smoke")
    assert result.exit_code == 1 and "PyTorch" in result.stderr
    known = set(re.findall(r"--[a-z][a-z-]+", cli("set", "--help").stdout))
    suggested = set(re.findall(r"--[a-z][a-z-]+", result.stderr))
    assert suggested <= known, suggested - known


# --- stdin, weight sources, terminals, Keras 3.5 archives, output names ------------------


def test_kernel_from_stdin_dash(cli, samples: Path, tmp_path: Path) -> None:
    kernel = np.random.default_rng(4).standard_normal((3, 3, 1, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, kernel)
    out = tmp_path / "out.keras"
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", "-", "-o", out, "--no-smoke", "--json",
                 input=buffer.getvalue())
    assert result.exit_code == 0, result.stderr
    assert [c["variable"] for c in json.loads(result.stdout)["changes"]] == ["kernel"]
    np.testing.assert_array_equal(weights(out, "conv1")["kernel"], kernel)


def test_kernel_from_empty_stdin_is_refused(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    before = listing(tmp_path)
    result = cli("set", model, "--layer", "conv1", "--kernel", "-", "-o", tmp_path / "out.keras", "--no-smoke", input=b"")
    assert_one_error_line(result, 1, "stdin", "empty")
    assert listing(tmp_path) == before


def test_model_and_kernel_cannot_both_come_from_stdin(cli, samples: Path) -> None:
    result = cli("set", "--layer", "conv1", "--kernel", "-", input=(samples / "tiny_cnn.keras").read_bytes())
    assert result.exit_code == 2 and result.stdout_bytes == b""
    assert result.stderr.startswith("Error: ") and "stdin" in result.stderr


def test_model_from_stdin_to_an_output_file(cli, samples: Path, tmp_path: Path) -> None:
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    out = tmp_path / "out.h5"
    result = cli("set", "-", "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", out,
                 input=(samples / "tiny_cnn.h5").read_bytes())
    assert result.exit_code == 0, result.stderr
    assert "<stdin>" in result.stdout and "smoke test passed" in result.stdout
    assert h5py.is_hdf5(out)
    # The kernel, and its Adam moments reset (--optimizer reset, the default; a model on stdin too).
    assert list(changed_datasets(samples / "tiny_cnn.h5", out)) == [
        "model_weights/conv1/tiny_cnn/conv1/kernel", "optimizer_weights/adam/tiny_cnn_conv1_kernel_momentum",
        "optimizer_weights/adam/tiny_cnn_conv1_kernel_velocity"]


def test_failure_leaves_an_existing_output_file_as_it_was(cli, samples: Path, tmp_path: Path) -> None:
    target = copy_into(tmp_path, samples / "all_convs.keras", "existing.keras")
    npy(tmp_path, "k.npy", np.full((3, 3, 1, 4), 3e38, np.float32))
    before = listing(tmp_path)
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", target)
    assert_one_error_line(result, 3, "NaN or Inf")
    assert listing(tmp_path) == before


# Paths as Keras 3.5 wrote them (tests/data/make_keras35_fixture.py); no `name` attributes.
@pytest.mark.parametrize("layer, shapes, store_path, smoke", [
    ("conv_b", {"kernel": (3, 3, 4, 4), "bias": (4,)}, "layers/conv2d_1", False),
    ("block/conv_1x1", {"kernel": (1, 1, 4, 4), "bias": (4,)}, "layers/sequential/layers/conv2d_1", False),
    ("fblock/dw", {"kernel": (3, 3, 4, 1), "bias": (4,)}, "layers/functional/layers/depthwise_conv2d", True),
])
def test_set_in_a_keras35_archive_without_name_attributes(cli, data_dir: Path, tmp_path: Path, layer, shapes,
                                                          store_path, smoke) -> None:
    check_layer_set(cli, data_dir / "keras35_nested.keras", layer, shapes, tmp_path,
                    *([] if smoke else ["--no-smoke"]), store_path=store_path)


def test_sources_npz_key_and_h5_dataset_of_another_model(cli, samples: Path, data_dir: Path, tmp_path: Path) -> None:
    """Port conv1 from a tf-keras 2 .h5 (dataset names end in ':0') and from an .npz bank."""
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    with h5py.File(data_dir / "keras2_tiny.h5", "r") as h5:
        keras2_kernel = h5["model_weights/conv1/conv1/kernel:0"][()]
    bias = np.linspace(-1, 1, 4, dtype=np.float32)
    np.savez(tmp_path / "bank.npz", conv1_bias=bias, other=np.zeros(3))
    out = tmp_path / "out.keras"
    result = cli("set", model, "--layer", "conv1", "--kernel", f"{data_dir / 'keras2_tiny.h5'}:model_weights/conv1/conv1/kernel:0",
                 "--bias", f"{tmp_path / 'bank.npz'}:conv1_bias", "-o", out, "--no-smoke")
    assert result.exit_code == 0, result.stderr
    got = weights(out, "conv1")
    np.testing.assert_array_equal(got["kernel"], keras2_kernel)
    np.testing.assert_array_equal(got["bias"], bias)


def test_refuses_to_write_a_model_to_a_terminal(samples: Path, tmp_path: Path) -> None:
    import pty

    copy_into(tmp_path, samples / "tiny_cnn.keras", "in.keras")
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    before = listing(tmp_path)
    master, slave = pty.openpty()
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        run = subprocess.run("conv-surgeon set --layer conv1 --kernel k.npy < in.keras", shell=True, cwd=tmp_path,
                             env=env, stdout=slave, stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(slave)
        os.set_blocking(master, False)
        try:
            on_terminal = os.read(master, 1 << 16)
        except OSError:  # nothing was written: EIO (or EAGAIN) once the slave is closed
            on_terminal = b""
        os.close(master)
    assert run.returncode == 2
    assert run.stderr.startswith(b"Error: ") and b"terminal" in run.stderr
    assert on_terminal == b""
    assert listing(tmp_path) == before


@pytest.mark.parametrize("source, output", [("tiny_cnn.h5", "out.keras"), ("tiny_cnn.keras", "out.h5")])
def test_output_suffix_of_the_other_format(cli, keras, samples: Path, tmp_path: Path, source: str, output: str) -> None:
    npy(tmp_path, "k.npy", np.ones((3, 3, 1, 4), np.float32))
    before = listing(tmp_path)
    out = tmp_path / output
    result = cli("set", samples / source, "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", out)
    if result.exit_code == 0:
        # Written and reported as smoke-tested: then Keras must load it under that name.
        loaded = keras.saving.load_model(out, compile=False)
        np.testing.assert_array_equal(loaded.get_layer("conv1").kernel.numpy(), np.ones((3, 3, 1, 4)))
    else:
        assert_one_error_line(result, result.exit_code, Path(source).suffix, out.name)
        assert result.exit_code in (1, 2)
        assert listing(tmp_path) == before


def test_initializers_in_one_call_draw_independent_values(cli, samples: Path, tmp_path: Path) -> None:
    def run(name: str) -> dict[str, np.ndarray]:
        result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv2", "--kernel-init", "random_normal",
                     "--bias-init", "random_normal", "--seed", "5", "-o", tmp_path / name, "--no-smoke")
        assert result.exit_code == 0, result.stderr
        return weights(tmp_path / name, "conv2")

    first, second = run("a.keras"), run("b.keras")
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])  # still reproducible
    assert not np.array_equal(first["bias"], first["kernel"].ravel()[:8])


def test_smoke_test_on_a_model_with_a_string_input(cli, keras, tmp_path: Path) -> None:
    text = keras.Input((6,), dtype="string", name="tokens")
    x = keras.layers.StringLookup(vocabulary=["a", "b", "c"], name="lookup")(text)
    x = keras.layers.Embedding(4, 3, name="emb")(x)
    x = keras.layers.Conv1D(2, 3, name="conv")(x)
    model_path = tmp_path / "text.keras"
    keras.Model(text, x, name="text_cnn").save(model_path)
    out = tmp_path / "out.keras"
    result = cli("set", model_path, "--layer", "conv", "--kernel-init", "ones", "-o", out)
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(weights(out, "conv")["kernel"], np.ones((3, 3, 2), np.float32))
