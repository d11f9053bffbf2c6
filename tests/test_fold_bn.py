"""`fold-bn`: every foldable pair folded, the function kept, nothing else lost.

Models are built by real Keras (applications with ``weights=None``) and every
BatchNormalization gets random, non-trivial statistics, so that a wrong fold shows in
the outputs. The oracle for which pairs fold is the live Keras graph, not our config
reader; the outputs are compared by loading both files with Keras.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import model_outputs
from typer.testing import CliRunner

import conv_surgeon as cs
from conv_surgeon.cli import app
from conv_surgeon.errors import SmokeTestError
from conv_surgeon.render import fold_document
from conv_surgeon.surgery.rewrite import ValueDigest
from conv_surgeon.runtime.smoke import run_smoke_test
from conv_surgeon.runtime.checks import ExpectedValue, SmokeOptions

CLI = str(Path(sys.executable).parent / "conv-surgeon")
CONV_CLASSES = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")


def _randomize_batchnorms(keras, model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize_batchnorms(keras, layer, seed + 1)
        elif isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for variable in layer.weights:
                name = variable.path.rpartition("/")[2]
                shape = tuple(variable.shape)
                if name == "moving_variance":
                    values.append(rng.uniform(0.3, 3.0, shape))
                elif name == "gamma":
                    values.append(rng.uniform(0.5, 1.5, shape))
                else:
                    values.append(rng.normal(0.0, 0.5, shape))
            layer.set_weights([v.astype("float32") for v in values])


def _foldable(keras, model) -> set[str]:
    """The conv -> BN pairs by Keras's own graph: a linear conv whose one consumer is a BN."""
    found = set()
    if isinstance(model, keras.Sequential):  # a chain: each layer feeds the next alone
        return {b.name for a, b in zip(model.layers, model.layers[1:])
                if type(b).__name__ == "BatchNormalization" and type(a).__name__ in CONV_CLASSES
                and a.activation.__name__ == "linear"}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found |= {f"{layer.name}/{name}" for name in _foldable(keras, layer)}
            continue
        if type(layer).__name__ != "BatchNormalization" or len(layer._inbound_nodes) != 1:
            continue
        parents = layer._inbound_nodes[0].parent_nodes
        if len(parents) != 1:
            continue
        conv = parents[0].operation
        if (type(conv).__name__ in CONV_CLASSES and len(conv._outbound_nodes) == 1
                and conv.activation.__name__ == "linear" and conv.name not in model.output_names):
            found.add(layer.name)
    return found


def _inputs(model, size: int = 2, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(size, *[d or 16 for d in t.shape[1:]])).astype("float32") for t in model.inputs]


def _outputs(model, inputs) -> list[np.ndarray]:
    return model_outputs(model, inputs)


def _weights_by_layer(keras, model, prefix: str = "") -> dict[str, tuple[dict, list[np.ndarray]]]:
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_weights_by_layer(keras, layer, f"{prefix}{layer.name}/"))
        config = layer.get_config()
        found[prefix + layer.name] = (config, [np.asarray(w) for w in layer.weights])
    return found


def _fold(model_path: Path, out: Path, *args: str, own_process: bool = False) -> dict:
    """`fold-bn --json` through the Typer app in this process (its Keras is imported
    already), or ``own_process``: the CLI as a user runs it (so Keras starts fresh)."""
    argv = ["fold-bn", str(model_path), "-o", str(out), "--json", *args]
    if own_process:
        done = subprocess.run([CLI, *argv], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _check_fold(keras, original_path: Path, folded_path: Path, report: dict, atol: float = 1e-4,
                original=None, reference=None) -> float:
    """The folded model computes what the original did; every unfolded layer is as it was.
    ``original``: the model that was saved at ``original_path``, if at hand (not loaded again);
    ``reference``: (inputs, its outputs on them), if known already (not run again)."""
    original = original if original is not None else keras.saving.load_model(original_path)
    folded = keras.saving.load_model(folded_path)
    expected = _foldable(keras, original)
    assert {pair["batch_norm"] for pair in report["folded"]} == expected
    inputs, outputs = reference if reference is not None else (_inputs(original), None)
    if outputs is None:
        outputs = _outputs(original, inputs)
    worst = 0.0
    for a, b in zip(outputs, _outputs(folded, inputs)):
        np.testing.assert_allclose(b, a, atol=atol, rtol=1e-3)
        worst = max(worst, float(np.abs(a - b).max()))
    before, after = _weights_by_layer(keras, original), _weights_by_layer(keras, folded)
    convs = {pair["conv"] for pair in report["folded"]}
    assert set(after) == set(before) - expected
    for name, (config, weights) in after.items():
        if name in convs or "/" not in name and isinstance(folded.get_layer(name), keras.Model):
            continue
        assert config == before[name][0], name
        assert len(weights) == len(before[name][1]) and all(
            np.array_equal(x, y) for x, y in zip(weights, before[name][1])), name
    assert folded.count_params() == report["parameters"]["after"]
    return worst


def check_fold_end_to_end(keras, cli, tmp_path: Path, name: str, path: Path, model, inputs, expected) -> None:
    """fold-bn on a real architecture saved at ``path`` (``model``: that model, in memory;
    its outputs on ``inputs`` are ``expected``). Run by test_real_architectures.py on
    ResNet50, MobileNetV2, Xception, EfficientNetB0 and DenseNet121, with prune after it
    on the same model."""
    if name == "ResNet50":  # the CLI's own check, in a process of its own, once
        report = _fold(path, tmp_path / "folded.keras", own_process=True)
        assert report["smoke"]["passed"] and report["smoke"]["comparison"][0]["max_abs"] < 1e-3
        [kept] = report["smoke"]["expect_same"]
        assert kept["float32_sums"] and kept["atol"] == kept["rtol"] == 0 and kept["used"] <= 1
        # Every folded conv's kernel and bias, read back by Keras and counted.
        assert report["smoke"]["checked_variables"] == 2 * len(report["folded"]) == 2 * 53
    elif name == "MobileNetV2":  # the same check through the library, in this process
        report = fold_document(cs.fold_bn(path, out=tmp_path / "folded.keras"))
        # Its convs have no bias: the fold gives each one, and the new biases are checked too.
        assert all(pair["bias_added"] for pair in report["folded"])
        assert report["smoke"]["checked_variables"] == 2 * len(report["folded"]) == 2 * 52
    else:  # the others are checked here, in Keras, by _check_fold (faster: no second import)
        result = cli("fold-bn", path, "-o", tmp_path / "folded.keras", "--no-smoke", "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
    assert report["folded"]
    _check_fold(keras, path, tmp_path / "folded.keras", report, original=model, reference=(inputs, expected))
    if name == "DenseNet121":  # BN -> ReLU -> Conv: the pre-activation BNs stay, with a reason
        assert any("not a convolution" in r["reason"] for r in report["not_folded"])


def test_nothing_to_fold_is_exit_0_and_writes_nothing(architectures, tmp_path):
    path = architectures.file("ConvNeXtTiny")
    out = tmp_path / "out.keras"
    report = _fold(path, out)
    assert report["folded"] == [] and "nothing to fold" in report["notes"][0]
    assert not out.exists()


def _mixed_model(keras, loss="mse"):
    """Nested, no bias, scale=False, center=False, depthwise x2, separable, transposed, and
    a BN after a BN; compiled and trained one step so it has optimizer state."""
    L = keras.layers
    inner_in = keras.Input((8, 8, 4))
    x = L.Conv2D(4, 3, padding="same", name="iconv")(inner_in)
    inner = keras.Model(inner_in, L.BatchNormalization(name="ibn")(x), name="inner")
    i = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="b1")(L.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(i))
    b = L.BatchNormalization(name="b2", scale=False)(L.Conv2D(4, 1, name="c2")(i))
    x = inner(L.Add()([a, b]))
    x = L.BatchNormalization(name="b3", center=False)(
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x))
    x = L.BatchNormalization(name="b4")(L.SeparableConv2D(5, 3, padding="same", name="sep")(L.ReLU()(x)))
    x = L.BatchNormalization(name="b5")(L.Conv2DTranspose(3, 3, strides=2, padding="same", name="tr")(x))
    x = L.BatchNormalization(name="b6")(x)
    model = keras.Model(i, L.Dense(2, name="d")(L.GlobalAveragePooling2D()(x)))
    _randomize_batchnorms(keras, model)
    model.compile(keras.optimizers.Adam(), loss)
    model.run_eagerly = True  # one step: no train function to trace (5 s); set after compile,
    rng = np.random.default_rng(0)  # so that the saved compile_config says run_eagerly=False
    model.fit(rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(4, 2)), verbose=0)
    model.run_eagerly = False
    return model


@pytest.fixture(scope="module")
def mixed(keras, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mixed") / "mixed.keras"
    _mixed_model(keras).save(path)
    return path


def test_fold_every_conv_kind_nested_and_optimizer_state(keras, mixed, tmp_path):
    out = tmp_path / "folded.keras"
    report = _fold(mixed, out)
    folded = {(p["conv"], p["batch_norm"]): p for p in report["folded"]}
    assert set(folded) == {("c1", "b1"), ("c2", "b2"), ("dw", "b3"), ("sep", "b4"), ("tr", "b5"),
                           ("inner/iconv", "inner/ibn")}
    assert folded[("c1", "b1")]["bias_added"] and folded[("dw", "b3")]["channels"] == 8
    assert [r["batch_norm"] for r in report["not_folded"]] == ["b6"]
    # Each fold changes two variables (the separable conv: its pointwise kernel and bias):
    # all twelve read back by Keras.
    assert report["smoke"]["checked_variables"] == 12
    _check_fold(keras, mixed, out, report)
    # Optimizer state: untouched variables keep their slots bit for bit (the separable
    # conv's depthwise kernel among them), folded ones start at zero, the BNs' are gone;
    # Keras loads it compiled and trains on.
    original, result = keras.saving.load_model(mixed), keras.saving.load_model(out)
    before = {v.path: np.asarray(v) for v in original.optimizer.variables}
    after = {v.path: np.asarray(v) for v in result.optimizer.variables}
    for path, value in after.items():
        if any(f"/{name}_" in path for name in ("c1", "c2", "dw", "tr", "iconv")) or "sep_pointwise" in path \
                or "sep_bias" in path:
            assert not value.any(), path
        else:
            assert np.array_equal(value, before[path]), path
    depthwise = [path for path in after if "sep_depthwise_kernel" in path]
    assert len(depthwise) == 2 and all(after[path].any() for path in depthwise)  # Adam's m and v, trained
    assert not any("/b1_" in p or "/ibn_" in p for p in after)
    assert "optimizer state" in report["optimizer"]
    x = _inputs(result, 4)[0]
    result.fit(x, np.zeros((4, 2)), verbose=0)


def test_keep_layers_leaves_identity_batchnorms(keras, mixed, tmp_path):
    out = tmp_path / "kept.keras"
    report = _fold(mixed, out, "--keep-layers")
    assert report["keep_layers"] and len(report["folded"]) == 6
    # The folds' 12 variables and the identity BNs' 22 (b2 has no gamma, b3 no beta).
    assert report["smoke"]["checked_variables"] == 12 + 22
    original, result = keras.saving.load_model(mixed), keras.saving.load_model(out)
    assert [layer.name for layer in result.layers] == [layer.name for layer in original.layers]
    inputs = _inputs(original)
    np.testing.assert_allclose(_outputs(result, inputs)[0], _outputs(original, inputs)[0], atol=1e-4, rtol=1e-3)
    bn = result.get_layer("b1")
    assert np.array_equal(np.asarray(bn.moving_mean), np.zeros(4))


def test_channels_first_conv1d_conv3d(keras, tmp_path):
    L = keras.layers
    i1 = keras.Input((3, 16, 16))
    x = L.BatchNormalization(axis=1, name="bn_cf")(L.Conv2D(4, 3, data_format="channels_first", name="cf")(i1))
    i2 = keras.Input((32, 2))
    y = L.BatchNormalization(name="bn_1d")(L.Conv1D(3, 5, name="c1d")(i2))
    i3 = keras.Input((6, 6, 6, 2))
    z = L.BatchNormalization(name="bn_3d")(L.Conv3D(2, 3, name="c3d")(i3))
    w = L.BatchNormalization(axis=2, name="bn_wrong_axis")(L.Conv2D(4, 3, data_format="channels_first", name="cf2")(i1))
    model = keras.Model([i1, i2, i3], [L.ReLU()(x), L.ReLU()(y), L.ReLU()(z), L.ReLU()(w)])
    _randomize_batchnorms(keras, model)
    path = tmp_path / "kinds.keras"
    model.save(path)
    report = _fold(path, tmp_path / "out.keras")
    assert {p["batch_norm"] for p in report["folded"]} == {"bn_cf", "bn_1d", "bn_3d"}
    assert report["notes"] == []  # the BNs feed a ReLU each: no output changes its name
    [refused] = report["not_folded"]
    assert refused["batch_norm"] == "bn_wrong_axis" and "axis 2" in refused["reason"]
    original, folded = keras.saving.load_model(path), keras.saving.load_model(tmp_path / "out.keras")
    inputs = _inputs(original)
    for a, b in zip(_outputs(original, inputs), _outputs(folded, inputs)):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-3)
    assert "the model ran compiled by XLA" in " ".join(report["smoke"]["notes"])


def test_refusals_name_the_reason(keras, tmp_path, cli):
    L = keras.layers
    i = keras.Input((8, 8, 3))
    relu = L.BatchNormalization(name="bn_relu")(L.Conv2D(4, 3, activation="relu", name="c_relu")(i))
    shared_conv = L.Conv2D(4, 3, name="c_two")(i)
    two = L.Add(name="sum")([L.BatchNormalization(name="bn_two")(shared_conv), shared_conv])
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, L.Conv2D(4, 3, name="iconv")(inner_in), name="inner")
    after_model = L.BatchNormalization(name="bn_after_model")(inner(i))
    bad = L.Conv2D(4, 3, name="c_bad")(i)
    bad_bn = L.BatchNormalization(name="bn_bad")(bad)
    model = keras.Model(i, [relu, two, after_model, bad_bn])
    _randomize_batchnorms(keras, model)
    variance = model.get_layer("bn_bad")
    values = variance.get_weights()
    values[3][0] = -1.0
    variance.set_weights(values)
    path = tmp_path / "refused.keras"
    model.save(path)
    result = cli("fold-bn", path, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    reasons = {r["batch_norm"]: r["reason"] for r in json.loads(result.stdout)["not_folded"]}
    assert "activation of its own (relu)" in reasons["bn_relu"]
    assert "also feeds 'sum'" in reasons["bn_two"]
    assert "nested model 'inner'" in reasons["bn_after_model"]
    assert "moving variance" in reasons["bn_bad"]
    named = cli("fold-bn", path, "--layer", "c_relu", "-o", tmp_path / "x.keras")
    assert named.exit_code == 1 and "cannot be folded" in named.stderr and "relu" in named.stderr
    assert not (tmp_path / "x.keras").exists()


def _cancelling(keras, shift: float):
    """A conv whose bias ``shift`` its BatchNormalization's moving mean takes away again."""
    L = keras.layers
    i = keras.Input((16, 16, 32))
    model = keras.Model(i, L.BatchNormalization(name="bn")(L.Conv2D(16, 3, name="conv")(i)))
    _randomize_batchnorms(keras, model)
    conv, bn = model.get_layer("conv"), model.get_layer("bn")
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel, bias + shift])
    gamma, beta, mean, variance = bn.get_weights()
    bn.set_weights([gamma, beta, mean + shift, variance])
    return model


def test_a_failed_check_writes_nothing(keras, cli, tmp_path):
    # The original rounds its conv's sums at the bias's scale (1000: about 6e-5 apart), the
    # folded model does not: their outputs (scale about 8) differ by more than float32
    # rounding over 288-term sums allows (8e-6 of it). The check refuses; nothing is written.
    path = tmp_path / "m.keras"
    _cancelling(keras, 1000.0).save(path)
    out = tmp_path / "out.keras"
    result = cli("fold-bn", path, "-o", out)
    assert result.exit_code == 3, result.stdout
    assert result.stderr.startswith("Error: output 0: the edited model differs from the original beyond atol=0, "
                                    "rtol=0 + float32 rounding (8.1e-06 of the output scale "), result.stderr
    assert "over 288-term sums)" in result.stderr and "--atol and --rtol allow more" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]
    # Without the shift the same fold passes, and the report says the allowance and the error.
    _cancelling(keras, 0.0).save(path)
    result = cli("fold-bn", path, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert re.search(r"\noutput 0 the same within atol=0, rtol=0 \+ float32 rounding \(8\.1e-06 of the output "
                     r"scale \S+ over 288-term sums\): max abs error \S+, [\d.]+% of what is allowed\n", result.stdout)


def test_a_derived_value_is_checked_by_its_digest(keras, tmp_path):
    """Graph surgery derives kernels in its worker and knows them here by digest: Keras's
    variable passes with the same numbers, and one value a float32 step away is caught."""
    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="c")]).save(path)
    kernel = keras.saving.load_model(path).get_layer("c").kernel.numpy()

    def expected(value):
        return [ExpectedValue("layer 'c' kernel", ValueDigest.of(value), store_object="layers/conv2d")]

    assert run_smoke_test(path, SmokeOptions(), expected=expected(kernel)).checked_variables == 1
    nudged = kernel.copy()
    nudged[1, 2, 0, 1] = np.nextafter(nudged[1, 2, 0, 1], np.float32(np.inf))
    with pytest.raises(SmokeTestError, match="layer 'c' kernel: Keras loaded values that differ"):
        run_smoke_test(path, SmokeOptions(), expected=expected(nudged))


def test_an_output_batchnorm_says_the_output_is_renamed(keras, tmp_path, cli):
    L = keras.layers
    i = keras.Input((8, 8, 3))
    model = keras.Model(i, L.BatchNormalization(name="head_bn")(L.Conv2D(4, 3, name="head")(i)))
    model.save(tmp_path / "m.keras")
    result = cli("fold-bn", tmp_path / "m.keras", "--dry-run", "--json")
    notes = json.loads(result.stdout)["notes"]
    assert notes == ["the model output 'head_bn' is now the output of 'head' (its name changes; "
                     "--keep-layers keeps it)"]


def test_archive_keeps_metadata_and_records_the_fold(mixed, tmp_path, cli):
    out = tmp_path / "out.keras"
    cs.fold_bn(mixed, out=out, smoke=False)
    with zipfile.ZipFile(mixed) as a, zipfile.ZipFile(out) as b:
        assert a.namelist() == b.namelist()
        old, new = json.loads(a.read("metadata.json")), json.loads(b.read("metadata.json"))
        assert {k: v for k, v in new.items() if k != "conv_surgeon"} == old
        assert json.loads(a.read("config.json"))["compile_config"] == json.loads(b.read("config.json"))["compile_config"]
    history = cli("inspect", out, "--history")
    assert "folded b1" in history.stdout and "conv_surgeon.fold_bn" in history.stdout


def test_no_smoke_never_imports_tensorflow(mixed, tmp_path):
    script = (
        "import sys, conv_surgeon as cs\n"
        f"r = cs.fold_bn({str(mixed)!r}, out={str(tmp_path / 'o.keras')!r}, smoke=False)\n"
        "assert len(r.pairs) == 6, r\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_dry_run_and_layer_selection(mixed, tmp_path, cli):
    result = cli("fold-bn", mixed, "--layer", "dw", "--layer", "inner/ibn", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["conv"] for p in report["folded"]] == ["dw", "inner/iconv"] and report["dry_run"]
    assert list(tmp_path.iterdir()) == []
    missing = cli("fold-bn", mixed, "--layer", "d", "--dry-run")
    assert missing.exit_code == 1 and "no convolution -> BatchNormalization pair" in missing.stderr


def test_legacy_h5(keras, tmp_path):
    model = _mixed_model(keras, loss=keras.losses.MeanSquaredError())  # "mse" does not reload from .h5
    path = tmp_path / "mixed.h5"
    model.save(path)
    out = tmp_path / "folded.h5"
    report = _fold(path, out)
    assert {p["batch_norm"] for p in report["folded"]} == {"b1", "b2", "b3", "b4", "b5"}
    assert report["smoke"]["checked_variables"] == 2 * 5  # each fold's kernel and bias, by position
    reasons = {r["batch_norm"]: r["reason"] for r in report["not_folded"]}
    assert "flat list" in reasons["inner/ibn"] and "not a convolution" in reasons["b6"]
    original, folded = keras.saving.load_model(path), keras.saving.load_model(out)
    assert len(folded.layers) == len(original.layers) - 5
    inputs = _inputs(original)
    np.testing.assert_allclose(_outputs(folded, inputs)[0], _outputs(original, inputs)[0], atol=1e-4, rtol=1e-3)
    for layer in folded.layers:
        if layer.name not in {"c1", "c2", "dw", "sep", "tr"}:
            before = original.get_layer(layer.name)
            assert layer.get_config() == before.get_config()
            assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(layer.weights, before.weights))
    # The optimizer state in the file: the untouched variables' slots are kept by name.
    import h5py

    with h5py.File(path) as a, h5py.File(out) as b:
        names = [_text(n) for n in b["optimizer_weights"].attrs["weight_names"]]
        old = {_text(n) for n in a["optimizer_weights"].attrs["weight_names"]}
        kept = [n for n in names if n in old]
        assert any("d_kernel" in n for n in kept) and not any("b1_" in n for n in names)
        assert all(np.array_equal(a["optimizer_weights"][n][()], b["optimizer_weights"][n][()]) for n in kept)
        assert "conv_surgeon_history" in b.attrs


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_sequential(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(4, 3, name="a"), L.BatchNormalization(name="a_bn"),
                              L.ReLU(), L.Conv2D(4, 3, use_bias=False, name="b"), L.BatchNormalization(name="b_bn"),
                              L.GlobalAveragePooling2D(), L.Dense(3)])
    _randomize_batchnorms(keras, model)
    path = tmp_path / "seq.keras"
    model.save(path)
    report = _fold(path, tmp_path / "out.keras")
    _check_fold(keras, path, tmp_path / "out.keras", report)
    assert [p["conv"] for p in report["folded"]] == ["a", "b"]


def test_formats_it_cannot_rewrite_are_one_line_errors(keras, tmp_path, cli):
    L = keras.layers
    i = keras.Input((8, 8, 3))
    model = keras.Model(i, L.BatchNormalization()(L.Conv2D(2, 3)(i)))
    model.save_weights(tmp_path / "m.weights.h5")
    result = cli("fold-bn", tmp_path / "m.weights.h5", "-o", tmp_path / "o.weights.h5")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and ".keras" in result.stderr
    assert not (tmp_path / "o.weights.h5").exists()


def test_pipeline_and_loaded_inputs(mixed, tmp_path):
    """A filter: model on stdin, folded model on stdout; and the check on the user's inputs."""
    done = subprocess.run([CLI, "fold-bn", "--no-smoke", "--json"], stdin=open(mixed, "rb"),
                          capture_output=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr)["output"] == "<stdout>"
    (tmp_path / "piped.keras").write_bytes(done.stdout)
    layers = {layer.path for layer in cs.inspect(tmp_path / "piped.keras", all_layers=True).layers}
    assert layers == {"c1", "c2", "inner/iconv", "dw", "sep", "tr", "b6", "d"}  # the BNs folded away
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input_0=np.random.default_rng(5).normal(size=(3, 8, 8, 3)).astype("float32"))
    report = _fold(mixed, tmp_path / "out2.keras", "--load-inputs", str(inputs))
    assert report["smoke"]["inputs"][0]["shape"] == [3, 8, 8, 3]
    assert f"inputs from {inputs}" in report["smoke"]["notes"]
