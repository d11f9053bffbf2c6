"""`get`, `set`, `apply`, `diff` and `show --hist` on every layer with weights, not only convs
(issue 21, item 1): Dense, EinsumDense, BatchNormalization, LayerNormalization,
GroupNormalization, PReLU, Embedding, an LSTM's cell, and a class the catalogue cannot name.

One model holding all of them is built by real Keras once for the module, with optimizer state,
and saved as `.keras` and legacy `.h5`; the Keras 2 files are tests/data's. Values are read
back with h5py, zipfile and Keras itself. No mocks.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import assert_one_error_line, listing
from test_set import h5_contents, keras_weight_store

from conv_surgeon.edits.layout import from_torch, to_torch
from conv_surgeon.edits.targets import TargetVariable
from conv_surgeon.errors import AssignmentError
from conv_surgeon.instruments.reading import get_weights
from conv_surgeon.model.catalogue import layer_class
from conv_surgeon.store.model_file import ModelFile

DATA = Path(__file__).resolve().parent / "data"

# Every layer of the model, with the store's variables; `conv` is its only convolution.
LAYERS = ["emb", "conv", "lstm/lstm_cell", "ln", "prelu", "ed", "gn", "bn", "bn_noscale", "rms", "fc"]


@pytest.fixture(scope="module")
def models(keras, tmp_path_factory) -> dict[str, Path]:
    """The model as `.keras` and `.h5`, with optimizer state (which a Keras load and save
    without compile would lose) and every BatchNormalization variable made distinct (mixing
    two up shows)."""
    layers = keras.layers
    tokens = keras.Input((8,), dtype="int32", name="tokens")
    x = layers.Embedding(20, 6, name="emb")(tokens)
    x = layers.Conv1D(6, 3, padding="same", name="conv")(x)
    x = layers.LSTM(5, return_sequences=True, name="lstm")(x)
    x = layers.LayerNormalization(name="ln")(x)
    x = layers.PReLU(shared_axes=[1], name="prelu")(x)
    x = layers.EinsumDense("abc,cd->abd", output_shape=(8, 8), bias_axes="d", name="ed")(x)
    x = layers.GroupNormalization(groups=4, name="gn")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.BatchNormalization(scale=False, name="bn_noscale")(x)
    x = layers.RMSNormalization(name="rms")(x)
    x = layers.Flatten(name="flat")(x)
    out = layers.Dense(10, name="fc")(x)
    model = keras.Model(tokens, out, name="every_layer")
    model.compile(optimizer="adam", loss="mse")
    # Optimizer state as a training step leaves it (fit's tracing costs 2 s): slots that hold values.
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for variable in model.optimizer.variables:
        variable.assign(rng.integers(1, 100, variable.shape).astype(variable.dtype))
    # Random values everywhere (zeros, as Keras starts many biases, would hide an edit).
    for variable in model.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
    for offset, variable in enumerate(model.get_layer("bn").weights):
        variable.assign(np.arange(8, dtype=np.float32) + 10 * offset + 1)
    folder = tmp_path_factory.mktemp("every_layer")
    paths = {"keras": folder / "every_layer.keras", "h5": folder / "every_layer.h5"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    return paths


def weights_of(path: Path, layer: str) -> dict[str, np.ndarray]:
    return get_weights(ModelFile.from_path(path), layer, every=True).arrays


def store_of(path: Path) -> dict[str, tuple]:
    """Every dataset of a model's weight store: (dtype, shape, bytes, attributes)."""
    if path.suffix == ".keras":
        return keras_weight_store(path)[0]
    with h5py.File(path, "r") as h5:
        return h5_contents(h5)[0]


def changed_datasets(before: Path, after: Path) -> set[str]:
    """The datasets whose bytes differ; every dataset and attribute is in both files."""
    old, new = store_of(before), store_of(after)
    assert set(old) == set(new)
    for name in old:
        assert new[name][:2] == old[name][:2] and new[name][3] == old[name][3], name
    return {name for name in old if new[name] != old[name]}


def assert_the_rest_of_the_archive_is_kept(before: Path, after: Path) -> None:
    with zipfile.ZipFile(before) as a, zipfile.ZipFile(after) as b:
        assert b.testzip() is None and a.namelist() == b.namelist()
        for name in a.namelist():
            if name not in ("model.weights.h5", "metadata.json"):
                assert a.read(name) == b.read(name), name
        old_meta, new_meta = json.loads(a.read("metadata.json")), json.loads(b.read("metadata.json"))
    assert {key: new_meta.get(key) for key in old_meta} == old_meta
    old_groups, new_groups = keras_weight_store(before)[1], keras_weight_store(after)[1]
    assert new_groups == old_groups


def save(folder: Path, name: str, array: np.ndarray) -> str:
    np.save(folder / name, array)
    return str(folder / name)


def refused(cli, tmp_path: Path, *args: str, parts: tuple[str, ...]) -> None:
    """`set ARGS -o out` fails with one error line naming ``parts``, and writes nothing."""
    before = listing(tmp_path)
    result = cli("set", "--optimizer", "keep", *args, "-o", tmp_path / "out.keras", "--no-smoke")
    assert_one_error_line(result, 1, *parts)
    assert listing(tmp_path) == before


# --- the catalogue, without Keras ------------------------------------------------------------


@pytest.mark.parametrize("class_name, variable, config, shape, names", [
    ("Dense", "kernel", {}, (64, 10), ("in_features", "units")),
    ("Dense", "bias", {}, (10,), ("units",)),
    ("EinsumDense", "kernel", {"equation": "abc,cd->abd", "bias_axes": "d"}, (5, 8), ("c", "d")),
    ("EinsumDense", "bias", {"equation": "abc,cd->abd", "bias_axes": "d"}, (8,), ("d",)),
    ("EinsumDense", "bias", {"equation": "abc,cde->abde", "bias_axes": "d"}, (4, 1), ("d", "1")),
    ("BatchNormalization", "moving_variance", {}, (8,), ("features",)),
    ("LayerNormalization", "gamma", {"axis": [1, 2]}, (4, 5), ("input axis 1", "input axis 2")),
    ("GroupNormalization", "beta", {}, (8,), ("channels",)),
    ("PReLU", "alpha", {"shared_axes": [1, 2]}, (1, 1, 3), ("1", "1", "input axis 3")),
    ("Embedding", "embeddings", {}, (20, 6), ("input_dim", "output_dim")),
    ("LSTMCell", "kernel", {}, (6, 20), ("input_dim", "4*units")),
    ("GRUCell", "bias", {}, (2, 12), ("input|recurrent", "3*units")),
    ("GRU", "recurrent_kernel:0", {}, (4, 12), ("units", "3*units")),  # Keras 2 saved the RNN's own
    ("SimpleRNNCell", "bias", {}, (3,), ("units",)),
    ("Dense", "kernel", {"dtype": {"class_name": "QuantizedDTypePolicy", "config": {"mode": "int8"}}}, (4, 3), None),
    ("Dense", "kernel_scale", {}, (3,), None),
])
def test_the_catalogue_names_each_axis(class_name, variable, config, shape, names) -> None:
    kind = layer_class(class_name)
    assert kind is not None
    assert kind.axis_names(variable, config, shape) == names


def test_pytorch_names_and_the_settings_that_leave_a_variable_out() -> None:
    bn, dense, ln = layer_class("BatchNormalization"), layer_class("Dense"), layer_class("LayerNormalization")
    assert bn is not None and dense is not None and ln is not None
    assert {name: bn.keras_name(name) for name in ("weight", "bias", "running_mean", "running_var")} == {
        "weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    assert dense.keras_name("weight") == "kernel" and dense.keras_name("bias") == "bias"
    assert (bn.why_absent("running_var"), bn.why_absent("gamma"), bn.why_absent("bias")) == (
        None, "scale=False", "center=False")
    assert ln.why_absent("beta", {"rms_scaling": True}) == "rms_scaling=True"
    assert layer_class("Convolution2D") == layer_class("Conv2D") and layer_class("MyLayer") is None


def test_a_linear_weight_is_the_transpose_and_normalizations_keep_their_layout() -> None:
    kernel = TargetVariable("fc", "kernel", (64, 10), "float32", layer_class("Dense"))
    linear = np.arange(640, dtype=np.float32).reshape(10, 64)
    np.testing.assert_array_equal(from_torch(kernel, linear), linear.T)
    np.testing.assert_array_equal(to_torch(kernel, linear.T), linear)
    variance = TargetVariable("bn", "moving_variance", (8,), "float32", layer_class("BatchNormalization"))
    np.testing.assert_array_equal(from_torch(variance, np.arange(8.0)), np.arange(8.0))
    lstm = TargetVariable("lstm/lstm_cell", "kernel", (6, 20), "float32", layer_class("LSTMCell"))
    with pytest.raises(AssignmentError, match=r"'lstm/lstm_cell' kernel \(LSTMCell\): .* no PyTorch layout"):
        from_torch(lstm, np.zeros((20, 6), np.float32))


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_lists_convs_by_default_and_every_layer_with_weights_with_all(cli, models) -> None:
    for path in models.values():
        default = json.loads(cli("inspect", path, "--json").stdout)
        every = json.loads(cli("inspect", path, "--all", "--json").stdout)
        assert [layer["path"] for layer in default["layers"]] == ["conv"]
        assert [layer["path"] for layer in every["layers"]] == LAYERS
        bn = next(layer for layer in every["layers"] if layer["path"] == "bn_noscale")
        assert list(bn["weights"]) == ["beta", "moving_mean", "moving_variance"]


# --- set and get: Dense, BatchNormalization, LayerNormalization, Embedding ---------------------


def test_a_torch_linear_weight_into_a_dense_is_its_transpose_and_every_other_byte_is_kept(
        cli, keras, models, tmp_path: Path) -> None:
    linear = np.random.default_rng(1).standard_normal((10, 64)).astype(np.float32)  # torch's (out, in)
    source = models["keras"]
    out = tmp_path / "out.keras"
    result = cli("set", "--optimizer", "keep", source, "--layer", "fc", "--kernel", save(tmp_path, "fc.npy", linear), "--layout", "torch",
                 "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["smoke"]["passed"]
    assert [(c["layer"], c["variable"], c["shape"]) for c in report["changes"]] == [("fc", "kernel", [64, 10])]
    np.testing.assert_array_equal(weights_of(out, "fc")["kernel"], linear.T)
    # Lossless: the one dataset changed holds exactly the transpose; all else is as it was.
    assert changed_datasets(source, out) == {"layers/dense/vars/0"}
    assert store_of(out)["layers/dense/vars/0"][2] == np.ascontiguousarray(linear.T).tobytes()
    assert_the_rest_of_the_archive_is_kept(source, out)
    loaded = keras.saving.load_model(out)
    np.testing.assert_array_equal(loaded.get_layer("fc").kernel.numpy(), linear.T)
    original = keras.saving.load_model(source)
    assert len(loaded.optimizer.variables) == len(original.optimizer.variables) > 2
    for old, new in zip(original.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(new.numpy()), np.asarray(old.numpy()))
    # And back: get --layout torch gives torch's layout again.
    back = cli("get", out, "--layer", "fc", "--layout", "torch", "-o", tmp_path / "back.npy")
    assert back.exit_code == 0, back.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), linear)


def test_a_dense_mismatch_is_explained_with_its_role_names(cli, models, tmp_path: Path) -> None:
    save(tmp_path, "wide.npy", np.ones((60, 10), np.float32))
    save(tmp_path, "linear.npy", np.ones((10, 64), np.float32))
    save(tmp_path, "bias.npy", np.ones(12, np.float32))
    model = str(models["keras"])
    refused(cli, tmp_path, model, "-l", "fc", "--kernel", str(tmp_path / "wide.npy"),
            parts=("layer 'fc' kernel: expected (64, 10) (in_features, units), received (60, 10)",
                   "in_features 60 != 64"))
    refused(cli, tmp_path, model, "-l", "fc", "--kernel", str(tmp_path / "linear.npy"),
            parts=("expected (64, 10) (in_features, units), received (10, 64)", "PyTorch/ONNX layout",
                   "(out_features, in_features)", "--layout torch", "np.transpose(a)"))
    refused(cli, tmp_path, model, "-l", "fc", "--bias", str(tmp_path / "bias.npy"),
            parts=("layer 'fc' bias: expected (10,) (units), received (12,)", "units 12 != 10"))
    refused(cli, tmp_path, model, "-l", "fc", "--kernel", str(tmp_path / "wide.npy"), "--layout", "torch",
            parts=("layer 'fc' kernel: expected PyTorch/ONNX layout (10, 64) (out_features, in_features)",
                   "received (60, 10)"))


def test_batchnorm_takes_pytorch_names_and_each_lands_on_its_keras_variable(
        cli, keras, models, tmp_path: Path) -> None:
    state = {name: np.linspace(i + 0.5, i + 1.5, 8).astype(np.float32)
             for i, name in enumerate(("weight", "bias", "running_mean", "running_var"))}
    np.savez(tmp_path / "bn.npz", **state)
    out = tmp_path / "out.keras"
    options = [option for name in state for option in ("--weight", f"{name}={tmp_path / 'bn.npz'}:{name}")]
    result = cli("set", "--optimizer", "keep", models["keras"], "--layer", "bn", *options, "--layout", "torch", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["smoke"]["passed"]
    keras_names = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    written = weights_of(out, "bn")
    for torch_name, value in state.items():
        np.testing.assert_array_equal(written[keras_names[torch_name]], value)
    assert changed_datasets(models["keras"], out) == {f"layers/batch_normalization/vars/{i}" for i in range(4)}
    bn = keras.saving.load_model(out).get_layer("bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["running_var"])
    np.testing.assert_array_equal(bn.gamma.numpy(), state["weight"])


def test_a_batchnorm_without_scale_has_no_gamma_and_takes_its_beta(cli, models, tmp_path: Path) -> None:
    model = str(models["keras"])
    refused(cli, tmp_path, model, "-l", "bn_noscale", "--weight-init", "gamma=ones",
            parts=("layer 'bn_noscale' has no gamma: it was built with scale=False", "drop the gamma source"))
    refused(cli, tmp_path, model, "-l", "bn_noscale", "--weight", f"running_var={save(tmp_path, 'v.npy', np.ones(7))}",
            parts=("layer 'bn_noscale' moving_variance: expected (8,) (features), received (7,)",))
    refused(cli, tmp_path, model, "-l", "bn_noscale", "--kernel-init", "zeros",
            parts=("'bn_noscale' (BatchNormalization) has no kernel", "beta, moving_mean, moving_variance", "--weight"))
    out = tmp_path / "out.keras"
    result = cli("set", "--optimizer", "keep", model, "-l", "bn_noscale", "--weight-init", "beta=constant:value=0.25", "-o", out,
                 "--no-smoke")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(weights_of(out, "bn_noscale")["beta"], np.full(8, 0.25, np.float32))
    assert changed_datasets(models["keras"], out) == {"layers/batch_normalization_1/vars/0"}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_layernorm_and_embedding_go_through_get_and_set_unchanged(cli, models, tmp_path: Path, fmt: str) -> None:
    """What `get` writes, `set` takes back: every variable of both layers, doubled, in one
    `apply`; the legacy `.h5` keeps every other dataset and attribute too."""
    source = models[fmt]
    plan = {"edits": []}
    expected = {}
    for layer in ("ln", "emb"):
        exported = tmp_path / f"{layer}.npz"
        assert cli("get", source, "--layer", layer, "-o", exported).exit_code == 0
        arrays = dict(np.load(exported))
        doubled = {name: value * 2 for name, value in arrays.items()}
        np.savez(tmp_path / f"{layer}_x2.npz", **doubled)
        plan["edits"].append({"layer": layer, "weights": {name: f"{layer}_x2.npz:{name}" for name in doubled}})
        expected[layer] = doubled
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / f"out.{fmt}"
    result = cli("apply", "--optimizer", "keep", source, tmp_path / "plan.json", "-o", out, "--no-smoke")
    assert result.exit_code == 0, result.stderr
    for layer, doubled in expected.items():
        written = weights_of(out, layer)
        assert written.keys() == doubled.keys() and len(written) == (2 if layer == "ln" else 1)
        for name, value in doubled.items():
            np.testing.assert_array_equal(written[name], value)
    assert len(changed_datasets(source, out)) == 3
    if fmt == "h5":
        with h5py.File(source, "r") as before, h5py.File(out, "r") as after:
            old_groups, new_groups = h5_contents(before)[1], h5_contents(after)[1]
        new_groups["/"].pop("conv_surgeon_history")
        assert new_groups == old_groups


def test_layernorm_and_embedding_mismatches_name_their_axes(cli, models, tmp_path: Path) -> None:
    model = str(models["keras"])
    refused(cli, tmp_path, model, "-l", "emb", "--weight", f"embeddings={save(tmp_path, 'e.npy', np.ones((6, 20)))}",
            parts=("layer 'emb' embeddings: expected (20, 6) (input_dim, output_dim), received (6, 20)",
                   "input_dim 6 != 20, output_dim 20 != 6"))
    refused(cli, tmp_path, model, "-l", "ln", "--weight", f"weight={save(tmp_path, 'g.npy', np.ones(4))}",
            parts=("layer 'ln' gamma: expected (5,) (features), received (4,)",))
    refused(cli, tmp_path, model, "-l", "ln", "--weight", f"beta={save(tmp_path, 'nan.npy', np.full(5, np.nan))}",
            parts=("layer 'ln' beta", "NaN", "finite"))


# --- recurrent cells, PReLU, GroupNormalization, EinsumDense, and the uncatalogued -------------


def test_an_lstm_is_set_by_its_own_name_through_its_cell(cli, keras, models, tmp_path: Path) -> None:
    kernel = np.random.default_rng(2).standard_normal((6, 20)).astype(np.float32)
    out = tmp_path / "out.h5"
    result = cli("set", "--optimizer", "keep", models["h5"], "--layer", "lstm", "--kernel", save(tmp_path, "k.npy", kernel),
                 "--weight-init", "recurrent_kernel=orthogonal", "--seed", "5", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["smoke"]["passed"]
    assert [c["variable"] for c in report["changes"]] == ["kernel", "recurrent_kernel"]
    cell = keras.saving.load_model(out, compile=False).get_layer("lstm").cell  # a .h5 with loss="mse"
    np.testing.assert_array_equal(cell.kernel.numpy(), kernel)
    assert len(changed_datasets(models["h5"], out)) == 2
    model = str(models["keras"])
    refused(cli, tmp_path, model, "-l", "lstm", "--weight", f"recurrent_kernel={save(tmp_path, 'r.npy', np.ones((5, 5)))}",
            parts=("layer 'lstm/lstm_cell' recurrent_kernel: expected (5, 20) (units, 4*units), received (5, 5)",
                   "4*units 5 != 20"))
    refused(cli, tmp_path, model, "-l", "lstm", "--kernel", str(tmp_path / "k.npy"), "--layout", "torch",
            parts=("'lstm/lstm_cell' kernel (LSTMCell)", "no PyTorch layout", "Keras layout"))


def test_prelu_groupnorm_and_einsumdense_take_their_variables_by_name(cli, models, tmp_path: Path) -> None:
    model = models["keras"]
    alpha = save(tmp_path, "alpha.npy", np.full((1, 5), 0.3, np.float32))
    gamma = save(tmp_path, "gamma.npy", np.linspace(0.5, 1.5, 8).astype(np.float32))
    einsum = save(tmp_path, "ed.npy", np.eye(5, 8, dtype=np.float32))
    out = tmp_path / "out.keras"
    (tmp_path / "plan.toml").write_text(
        f'[[edits]]\nlayer = "prelu"\nweights.alpha = "{alpha}"\n'
        f'[[edits]]\nlayer = "gn"\nweights.gamma = "{gamma}"\nweights.beta = {{ init = "zeros" }}\n'
        f'[[edits]]\nlayer = "ed"\nweights.kernel = "{einsum}"\nweights.bias = {{ init = "ones" }}\n')
    result = cli("apply", "--optimizer", "keep", model, tmp_path / "plan.toml", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["smoke"]["passed"]
    np.testing.assert_array_equal(weights_of(out, "prelu")["alpha"], np.load(alpha))
    np.testing.assert_array_equal(weights_of(out, "gn")["gamma"], np.load(gamma))
    np.testing.assert_array_equal(weights_of(out, "ed")["bias"], np.ones(8, np.float32))
    assert len(changed_datasets(model, out)) == 5
    bad = save(tmp_path, "bad.npy", np.ones((3, 3), np.float32))
    refused(cli, tmp_path, str(model), "-l", "prelu", "--weight", f"alpha={bad}",
            parts=("layer 'prelu' alpha: expected (1, 5) (1, input axis 2), received (3, 3)",))
    refused(cli, tmp_path, str(model), "-l", "ed", "--kernel", bad,
            parts=("layer 'ed' kernel: expected (5, 8) (c, d), received (3, 3)", "c 3 != 5, d 3 != 8"))
    refused(cli, tmp_path, str(model), "-l", "gn", "--weight", f"gamma={bad}",
            parts=("layer 'gn' gamma: expected (8,) (channels), received (3, 3)", "rank 2 != 1"))


def test_a_class_the_catalogue_cannot_name_takes_its_variables_by_stored_name(cli, models, tmp_path: Path) -> None:
    """RMSNormalization is not in the catalogue: a `.keras` store names its variable by its
    place ("0"), a `.h5` by Keras's name ("scale"); either is what `inspect --all` shows."""
    scale = np.linspace(1, 2, 8).astype(np.float32)
    src = save(tmp_path, "scale.npy", scale)
    for fmt, name in (("keras", "0"), ("h5", "scale")):
        shown = json.loads(cli("inspect", models[fmt], "--all", "--json").stdout)
        assert list(next(layer for layer in shown["layers"] if layer["path"] == "rms")["weights"]) == [name]
        out = tmp_path / f"out.{fmt}"
        result = cli("set", "--optimizer", "keep", models[fmt], "-l", "rms", "--weight", f"{name}={src}", "-o", out, "--no-smoke")
        assert result.exit_code == 0, result.stderr
        np.testing.assert_array_equal(weights_of(out, "rms")[name], scale)
        assert len(changed_datasets(models[fmt], out)) == 1
    refused(cli, tmp_path, str(models["keras"]), "-l", "rms", "--weight", f"0={save(tmp_path, 'x.npy', np.ones(3))}",
            parts=("layer 'rms' 0: expected (8,), received (3,)", "axis 0 3 != 8"))


def test_a_quantized_kernel_is_refused_and_its_float_scale_goes_by_name(cli, keras, tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")], name="quantized")
    model.get_layer("fc").quantize("int8")
    model.save(tmp_path / "q.keras")
    refused(cli, tmp_path, str(tmp_path / "q.keras"), "-l", "fc", "--kernel", save(tmp_path, "k.npy", np.ones((4, 3))),
            parts=("layer 'fc' kernel is stored as int8", "quantized, int8", "quantize it again"))
    result = cli("set", "--optimizer", "keep", tmp_path / "q.keras", "-l", "fc", "--weight", f"kernel_scale={save(tmp_path, 's.npy', np.ones(3))}",
                 "-o", tmp_path / "out.keras", "--no-smoke")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(weights_of(tmp_path / "out.keras", "fc")["kernel_scale"], np.ones(3, np.float32))


# --- Keras 2 files ---------------------------------------------------------------------------


def test_keras2_dense_and_nested_batchnorm_are_set_at_their_datasets(cli, tmp_path: Path) -> None:
    """tf-keras names them `kernel:0`, `moving_variance:0`; a nested model's BN sits in the
    flattened group of its model, placed by position (keras2_convs.h5 cannot be loaded by
    Keras 3, so no smoke test)."""
    variance = np.linspace(0.5, 2.0, 4).astype(np.float32)
    out = tmp_path / "convs.h5"
    result = cli("set", "--optimizer", "keep", DATA / "keras2_convs.h5", "-l", "inner_block/inner_bn",
                 "--weight", f"running_var={save(tmp_path, 'v.npy', variance)}", "-o", out, "--no-smoke")
    assert result.exit_code == 0, result.stderr
    changed = changed_datasets(DATA / "keras2_convs.h5", out)
    assert len(changed) == 1 and next(iter(changed)).endswith("inner_bn/moving_variance:0")
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(h5[next(iter(changed))][()], variance)

    linear = np.arange(288, dtype=np.float32).reshape(2, 144)  # torch's (out, in)
    out = tmp_path / "tiny.h5"
    result = cli("set", "--optimizer", "keep", DATA / "keras2_tiny.h5", "-l", "dense", "--weight", f"weight={save(tmp_path, 'w.npy', linear)}",
                 "--layout", "torch", "-o", out, "--no-smoke")
    assert result.exit_code == 0, result.stderr
    assert [name.rpartition("/")[2] for name in changed_datasets(DATA / "keras2_tiny.h5", out)] == ["kernel:0"]
    np.testing.assert_array_equal(weights_of(out, "dense")["kernel"], linear.T)


# --- diff and show --hist --------------------------------------------------------------------


def test_diff_all_reports_exactly_the_edited_layers_with_their_numbers(cli, models, tmp_path: Path) -> None:
    source = models["keras"]
    old = weights_of(source, "emb")["embeddings"]
    new = old.copy()
    new[3] += 0.5
    out = tmp_path / "out.keras"
    assert cli("set", "--optimizer", "keep", source, "-l", "emb", "--weight", f"embeddings={save(tmp_path, 'e.npy', new)}", "-o", out,
               "--no-smoke").exit_code == 0
    assert cli("set", "--optimizer", "keep", out, "-l", "bn", "--weight-init", "running_mean=zeros", "--in-place", "--no-smoke").exit_code == 0
    result = cli("diff", source, out, "--all", "--json")
    assert result.exit_code == 1
    layers = {layer["path"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert list(layers) == LAYERS
    assert {path for path, layer in layers.items() if layer["status"] != "same"} == {"emb", "bn"}
    (embeddings,) = layers["emb"]["variables"]
    assert embeddings["max_abs"] == pytest.approx(0.5, abs=1e-6) and not embeddings["identical"]
    bn = {v["name"]: v for v in layers["bn"]["variables"]}
    assert [name for name, v in bn.items() if not v["identical"]] == ["moving_mean"]
    assert bn["moving_mean"]["max_abs"] == pytest.approx(float(np.abs(weights_of(source, "bn")["moving_mean"]).max()))
    # Without --all only the conv is listed, and the edited layers still make the models differ.
    plain = cli("diff", source, out)
    assert plain.exit_code == 1
    assert plain.stdout.splitlines()[-2:] == [
        "1 of 1 layer the same", "2 other layers with weights differ: emb, bn; --all compares every layer"]
    document = json.loads(cli("diff", source, out, "--json").stdout)
    assert (document["identical"], document["others_differing"]) == (False, ["emb", "bn"])
    assert [layer["path"] for layer in document["layers"]] == ["conv"]


def test_show_hist_draws_any_layer_and_the_grid_stays_for_convs(cli, models, tmp_path: Path) -> None:
    result = cli("show", models["keras"], "--layer", "bn", "--hist", "-o", tmp_path / "bn.png", "--json")
    assert result.exit_code == 0, result.stderr
    drawn = json.loads(result.stdout)["variables"]
    assert [v["variable"] for v in drawn] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert drawn[3]["stats"]["min"] == pytest.approx(31.0) and (tmp_path / "bn.png").stat().st_size > 0
    lstm = cli("show", models["h5"], "--layer", "lstm", "--hist", "--weight", "recurrent_kernel", "-o", tmp_path / "r.png")
    assert lstm.exit_code == 0, lstm.stderr
    grid = cli("show", models["keras"], "--layer", "fc", "-o", tmp_path / "fc.png")
    assert_one_error_line(grid, 1, "'fc' is a Dense layer, not a convolution", "--hist")


def test_the_default_resets_the_slots_of_exactly_the_replaced_variables_a_custom_layers_too(
        cli, keras, models, tmp_path: Path) -> None:
    """`set` without --optimizer zeroes Adam's moments of what it replaced, a Dense kernel's
    and the scale of a class the catalogue does not know (taken for trainable, as Keras's
    add_weight makes it; the state's layout confirms it), and nothing else."""
    out = tmp_path / "out.keras"
    plan = {"edits": [{"layer": "fc", "weights": {"kernel": {"init": "ones"}}},
                      {"layer": "rms", "weights": {"0": {"init": "ones"}}}]}  # its stored name
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    result = cli("apply", models["keras"], tmp_path / "plan.json", "-o", out, "--no-smoke", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["optimizer"]["slots_reset"] == 4
    names = [v.path for v in keras.saving.load_model(models["keras"]).optimizer.variables]
    changed = changed_datasets(models["keras"], out)
    reset = {f"optimizer/vars/{i}" for i, name in enumerate(names)
             if name.split("/", 1)[1] in ("fc_kernel_momentum", "fc_kernel_velocity", "rms_scale_momentum",
                                          "rms_scale_velocity")}
    assert len(reset) == 4
    assert changed == reset | {"layers/dense/vars/0", "layers/rms_normalization/vars/0"}
    with zipfile.ZipFile(out) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as h5:
        assert all(not h5[name][()].any() for name in reset)
