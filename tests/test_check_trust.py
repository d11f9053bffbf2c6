"""The check users trust (issue 17): input shapes from the file, Keras 2 files checked by
tf-keras, TensorFlow without its oneDNN kernels, Keras's traceback under --debug.

The Keras 2 files are written here by tf-keras (Keras 2.21) and then given the configs
Keras 2.3 and 2.1 wrote: a Sequential without an InputLayer entry whose first layer
carries ``batch_input_shape``, and a Sequential whose config is a plain list of layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from conv_surgeon.model.inputs import DeclaredInput, declared_inputs, reconcile

CLI = str(Path(sys.executable).with_name("conv-surgeon"))


# --- the shapes a config declares (no Keras) -------------------------------------------------


def test_declared_inputs_of_each_config_style():
    keras23 = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Reshape", "config": {"name": "r", "batch_input_shape": [None, 68, 24]}}]}}
    assert declared_inputs(keras23) == [DeclaredInput((None, 68, 24), "batch_input_shape of layer 'r'")]
    keras21 = {"class_name": "Sequential", "config": [
        {"class_name": "Conv2D", "config": {"name": "c", "batch_input_shape": [None, 8, 8, 1]}}]}
    assert declared_inputs(keras21)[0].shape == (None, 8, 8, 1)
    keras3 = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, None, 3]}},
        {"class_name": "Conv1D", "config": {"name": "c"}}]}}
    assert declared_inputs(keras3) == [DeclaredInput((None, None, 3), "InputLayer 'in'")]
    functional = {"class_name": "Functional", "config": {
        "layers": [{"class_name": "InputLayer", "name": "b", "config": {"name": "b", "batch_shape": [None, 4]}},
                   {"class_name": "InputLayer", "name": "a", "config": {"name": "a", "batch_input_shape": [None, 2, 2]}}],
        "input_layers": [["a", 0, 0], ["b", 0, 0]]}}
    assert [d.shape for d in declared_inputs(functional)] == [(None, 2, 2), (None, 4)]
    built = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Dense", "config": {"name": "d"}}]}, "build_config": {"input_shape": [None, 5]}}
    assert declared_inputs(built)[0].shape == (None, 5)
    assert declared_inputs({"class_name": "ResNetBackbone", "config": {"stackwise_num_filters": [64]}}) == []
    assert declared_inputs(None) == []


def test_reconcile_fills_known_sizes_and_the_extra_axis_keras3_adds():
    assert reconcile((None, None, 68, 24), (None, 68, 24)) == (None, 1, 68, 24)
    assert reconcile((None, None, None, 3), (None, 32, 32, 3)) == (None, 32, 32, 3)
    assert reconcile((None, 8, 8, 1), (None, 8, 8, 1)) == (None, 8, 8, 1)
    assert reconcile((None, 8, 8, 1), (None, 9, 8, 1)) is None  # they disagree: trust Keras
    assert reconcile((None, 4, 68, 24), (None, 68, 24)) is None  # a fixed axis is no extra one
    assert reconcile((None, 68, 24), (None, None, 68, 24)) is None


# --- Keras 2 files -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tf_keras():
    import tf_keras as module

    return module


def _keras2_file(path: Path, model, version: str, list_style: bool = False) -> Path:
    """``model`` (tf-keras) saved as .h5 with the config Keras <= 2.3 wrote: no InputLayer
    entry, the first layer carrying ``batch_input_shape``; ``list_style`` (Keras <= 2.1):
    the Sequential's config is the plain list of its layers."""
    model.save(path)
    with h5py.File(path, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        layers = config["config"]["layers"]
        declared = layers[0]["config"]["batch_input_shape"]
        layers = [entry for entry in layers if entry["class_name"] != "InputLayer"]
        layers[0]["config"]["batch_input_shape"] = declared
        if list_style:
            for entry in layers:
                entry.pop("module", None), entry.pop("registered_name", None)
                entry["config"].pop("groups", None)
            config = {"class_name": "Sequential", "config": layers}
        else:
            config["config"]["layers"] = layers
        handle.attrs["model_config"] = json.dumps(config)
        handle.attrs["keras_version"] = version
        handle["model_weights"].attrs["keras_version"] = version
    return path


def _set(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in its own process."""
    return subprocess.run([CLI, "set", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _json_report(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _set_here(cli, *args) -> dict:
    """`set --json` in this process (its Keras is imported already: faster)."""
    result = cli("set", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_keras23_sequential_runs_with_the_shape_its_file_declares(tf_keras, tmp_path, cli):
    """Keras 3 builds (None, None, 68, 24) from ``batch_input_shape: [null, 68, 24]``."""
    L = tf_keras.layers
    model = tf_keras.Sequential([
        L.Reshape((68, 24, 1), batch_input_shape=(None, 68, 24), name="to_image"),
        L.Conv2D(8, 3, activation="relu", name="conv1"), L.MaxPooling2D(name="pool"),
        L.Conv2D(4, 3, name="conv2"), L.Flatten(name="flatten"), L.Dense(2, name="dense"),
    ])
    path = _keras2_file(tmp_path / "speech.h5", model, "2.3.1")
    report = _set_here(cli, path, "--layer", "conv1", "--bias-init", "zeros", "-o", tmp_path / "a.h5")
    smoke = report["smoke"]
    assert smoke["checked_by"].startswith("Keras 3.")
    assert smoke["inputs"] == [{"name": "input 0", "shape": [1, 1, 68, 24], "origin": "declared by the file"}]
    assert any("the file declares (None, 68, 24) (batch_input_shape of layer 'to_image')" in note
               and "extra axis gets size 1" in note for note in smoke["notes"]), smoke["notes"]
    # --input-shape takes the shape the file declares, and the one Keras built.
    for given in ("68,24", "1,68,24"):
        again = _set_here(cli, path, "--layer", "conv1", "--bias-init", "zeros", "-o", tmp_path / "b.h5",
                          "--input-shape", given)
        assert again["smoke"]["inputs"][0]["shape"] == [1, 1, 68, 24], given
        assert again["smoke"]["inputs"][0]["origin"] == "from --input-shape"
    refused = cli("set", path, "--layer", "conv1", "--bias-init", "zeros", "-o", tmp_path / "c.h5", "--input-shape", "24,68")
    assert refused.exit_code == 2 and "the shape the file declares (68, 24)" in refused.stderr, refused.stderr


def test_keras23_conv1d_first_is_checked_by_tf_keras(tf_keras, tmp_path, cli):
    """With a Conv1D first, Keras 3 cannot load the file at all (its extra axis meets a 3-D
    kernel); tf-keras can, and says so in the report."""
    L = tf_keras.layers
    model = tf_keras.Sequential([L.Conv1D(8, 3, activation="relu", batch_input_shape=(None, 68, 24), name="conv1"),
                                 L.GlobalAveragePooling1D(name="gap"), L.Dense(2, name="dense")])
    path = _keras2_file(tmp_path / "speech1d.h5", model, "2.3.1")
    kernel = np.asarray(model.get_layer("conv1").kernel) * -1
    np.save(tmp_path / "k.npy", kernel)
    report = _set_here(cli, path, "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", tmp_path / "out.h5",
                       "--compare")
    smoke = report["smoke"]
    assert smoke["checked_by"] == f"tf-keras {tf_keras.__version__}"
    assert smoke["checked_variables"] == 1
    assert smoke["inputs"][0]["shape"] == [1, 68, 24]
    assert smoke["comparison"][0]["max_abs"] > 0  # the kernel changed, and the outputs with it
    assert any(note.startswith("Keras 3.") and "written by Keras 2.3.1" in note
               and f"tf-keras {tf_keras.__version__} checked it" in note for note in smoke["notes"]), smoke["notes"]
    loaded = tf_keras.models.load_model(tmp_path / "out.h5", compile=False)
    assert np.array_equal(np.asarray(loaded.get_layer("conv1").kernel), kernel)


def test_keras21_list_style_config_is_checked_by_tf_keras(tf_keras, tmp_path, cli):
    L = tf_keras.layers
    model = tf_keras.Sequential([L.Conv2D(4, 3, padding="same", batch_input_shape=(None, 8, 8, 1), name="conv1"),
                                 L.BatchNormalization(name="bn"), L.Conv2D(2, 3, name="conv2"),
                                 L.Flatten(name="flatten"), L.Dense(3, name="dense")])
    path = _keras2_file(tmp_path / "k21.h5", model, "2.1.6", list_style=True)
    done = cli("set", path, "--layer", "conv2", "--kernel-init", "he_normal", "--seed", "1", "-o", tmp_path / "out.h5")
    assert done.exit_code == 0, done.stderr
    assert f"smoke test passed (tf-keras {tf_keras.__version__}, TensorFlow" in done.stdout, done.stdout
    assert "1 edited variable read back exactly" in done.stdout
    assert "Keras 3.15.1 cannot load this file (written by Keras 2.1.6): pop expected at most 1 argument" in done.stdout


def test_a_file_no_keras_loads_is_said_so_and_no_smoke_writes_it(tf_keras, tmp_path, cli):
    L = tf_keras.layers
    model = tf_keras.Sequential([L.Conv2D(4, 3, batch_input_shape=(None, 8, 8, 1), name="conv1"),
                                 L.Flatten(name="flatten"), L.Dense(3, name="dense")])
    path = _keras2_file(tmp_path / "broken.h5", model, "2.1.6", list_style=True)
    with h5py.File(path, "r+") as handle:  # a config neither Keras accepts: padding "sideways"
        config = json.loads(handle.attrs["model_config"])
        config["config"][0]["config"]["padding"] = "sideways"
        handle.attrs["model_config"] = json.dumps(config)
    done = cli("set", path, "--layer", "conv1", "--bias-init", "zeros", "-o", tmp_path / "out.h5")
    assert done.exit_code == 3 and not (tmp_path / "out.h5").exists()
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: no Keras here can load the original model: Keras 3.15.1: "), line
    assert f"; tf-keras {tf_keras.__version__}: " in line
    assert "the edit is not the cause" in line and "--no-smoke writes the edit without the check" in line
    assert cli("set", path, "--layer", "conv1", "--bias-init", "zeros", "-o", tmp_path / "out.h5", "--no-smoke").exit_code == 0


def test_without_tf_keras_the_message_says_how_to_get_it(tf_keras, tmp_path, monkeypatch):
    import conv_surgeon as cs
    from conv_surgeon.errors import SmokeTestError
    from conv_surgeon.runtime import smoke

    L = tf_keras.layers
    model = tf_keras.Sequential([L.Conv2D(4, 3, batch_input_shape=(None, 8, 8, 1), name="conv1"),
                                 L.Flatten(name="flatten"), L.Dense(3, name="dense")])
    path = _keras2_file(tmp_path / "k21.h5", model, "2.1.6", list_style=True)
    monkeypatch.setattr(smoke, "tf_keras_available", lambda: False)  # as on an install without the extra
    with pytest.raises(SmokeTestError) as info:
        cs.set_weights(path, "conv1", out=tmp_path / "out.h5", inits={"bias": "zeros"})
    message = str(info.value)
    assert message.startswith("Keras 3.15.1 cannot load the original model either (pop expected at most 1 argument"), message
    assert "the file was written by Keras 2.1.6, which tf-keras reads: pip install 'conv-surgeon[keras2]'" in message
    assert not (tmp_path / "out.h5").exists()


def test_savedmodel_advice_works(tf_keras, tmp_path, cli):
    model = tf_keras.Sequential([tf_keras.layers.Conv2D(4, 3, input_shape=(8, 8, 1), name="conv")])
    model.save(tmp_path / "saved")  # tf-keras writes a SavedModel for a name without extension
    result = cli("inspect", tmp_path / "saved")
    assert result.exit_code == 1
    advice = result.stderr.split('python -c "', 1)[1].rsplit('"', 1)[0]
    done = subprocess.run([sys.executable, "-c", advice], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert cli("inspect", tmp_path / "model.h5").exit_code == 0


# --- TensorFlow's own kernels ---------------------------------------------------------------


def test_the_check_runs_without_onednn_and_keeps_a_noop_edit(keras, tmp_path):
    """A 64x1 kernel over 200 input channels: the shape TensorFlow's oneDNN kernels get wrong
    on some CPUs. The check turns them off even when the user's environment turns them on;
    a no-op edit then compares equal."""
    L = keras.layers
    inputs = keras.Input((256, 1, 200))
    x = L.Conv2D(32, (64, 1), padding="same", activation="relu", name="wide")(inputs)
    outputs = L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x))
    path = tmp_path / "wide.keras"
    keras.Model(inputs, outputs).save(path)
    assert subprocess.run([CLI, "get", path, "--layer", "wide", "-o", tmp_path / "k.npy"]).returncode == 0
    report = _json_report(_set(path, "--layer", "wide", "--kernel", tmp_path / "k.npy", "-o", tmp_path / "same.keras",
                               "--compare", "--expect-same", "--json", env={"TF_ENABLE_ONEDNN_OPTS": "1"}))
    assert report["smoke"]["engine"].endswith("oneDNN off"), report["smoke"]["engine"]
    assert report["smoke"]["comparison"][0]["max_abs"] == 0.0


def test_channels_first_models_run_through_xla(keras, samples, tmp_path, cli):
    L = keras.layers
    inputs = keras.Input((3, 16, 16))
    x = L.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    model = keras.Model(inputs, L.GlobalAveragePooling2D(data_format="channels_first")(x))
    path = tmp_path / "cf.keras"
    model.save(path)
    result = cli("set", path, "--layer", "conv", "--bias-init", "ones", "-o", tmp_path / "out.keras", "--json")
    assert result.exit_code == 0, result.output
    smoke = json.loads(result.stdout)["smoke"]
    assert any("the model ran compiled by XLA" in note for note in smoke["notes"])
    assert smoke["outputs"][0]["shape"] == [1, 4]


# --- what --debug shows ------------------------------------------------------------------------


def test_debug_shows_the_traceback_of_a_users_build(keras, tmp_path):
    """The user's layer fails in build() when Keras loads the model: one line, and under
    --debug the traceback that leads into the user's code."""
    module = tmp_path / "my_layers.py"
    source = textwrap.dedent('''
        import keras

        @keras.saving.register_keras_serializable(package="mine")
        class Doubler(keras.layers.Layer):
            def build(self, input_shape):
                self.scale = self.add_weight(shape=BROKEN, initializer="ones")

            def call(self, x):
                return x * self.scale
        ''')
    module.write_text(source.replace("BROKEN", "(input_shape[-1],)"))
    sys.path.insert(0, str(tmp_path))
    try:
        import my_layers

        L = keras.layers
        inputs = keras.Input((8, 8, 1))
        outputs = my_layers.Doubler()(L.Conv2D(2, 3, name="conv")(inputs))
        path = tmp_path / "custom.keras"
        keras.Model(inputs, outputs).save(path)
    finally:
        sys.path.remove(str(tmp_path))
    module.write_text(source.replace("BROKEN", "list(input_shape) + (1,)"))  # list + tuple
    args = [CLI, "set", str(path), "--layer", "conv", "--bias-init", "zeros", "-o", str(tmp_path / "out.keras"),
            "--import", "my_layers", "--debug"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 3 and not (tmp_path / "out.keras").exists()
    line, rest = done.stderr.split("\n", 1)
    assert line.startswith("Error: Keras 3.15.1 cannot load the original model either (")
    assert 'can only concatenate list (not "tuple") to list' in line, line
    assert rest.startswith("Traceback (most recent call last):") and "my_layers.py" in rest, rest[-2000:]
    assert 'TypeError: can only concatenate list (not "tuple") to list' in rest, rest[-2000:]


def test_api_after_tensorflow_was_imported_with_onednn_says_so(samples, tmp_path):
    """In a notebook that imported TensorFlow with oneDNN on, the check cannot turn it off:
    the report names the engine and says how to check without it."""
    script = textwrap.dedent(f'''
        import os
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
        import tensorflow
        import conv_surgeon as cs
        report = cs.set_weights({str(samples / "tiny_cnn.keras")!r}, "conv1", out={str(tmp_path / "o.keras")!r},
                                inits={{"bias": "zeros"}})
        print(report.smoke.engine)
        print(report.smoke.notes[-1])
        ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"})
    assert done.returncode == 0, done.stderr
    engine, note = done.stdout.splitlines()
    assert engine.endswith("oneDNN on"), engine
    assert note.startswith("TensorFlow was imported with its oneDNN CPU kernels on before this check"), note


@pytest.mark.slow
def test_a_noop_edit_of_resnet50_compares_equal(architectures, tmp_path):
    path = architectures.file("ResNet50")  # built once per session (tests/architectures.py)
    assert subprocess.run([CLI, "get", path, "--layer", "conv3_block1_2_conv", "-o", tmp_path / "k.npy"]).returncode == 0
    report = _json_report(_set(path, "--layer", "conv3_block1_2_conv", "--kernel", tmp_path / "k.npy",
                               "-o", tmp_path / "same.keras", "--compare", "--expect-same", "--json"))
    assert report["smoke"]["comparison"][0]["max_abs"] == 0.0
    assert report["smoke"]["layer_comparison"][0]["max_abs"] == 0.0


def test_a_keras2_depthwise_conv_folds_and_equalizes(tf_keras, tmp_path, cli):
    """Keras 2 names a DepthwiseConv2D's kernel `depthwise_kernel`: fold-bn (and equalize,
    which folds first) found no `kernel` and refused every Keras 2 MobileNet .h5."""
    L = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(4, 1, name="expand")(inputs)))
    x = L.ReLU()(L.BatchNormalization(name="bn2")(L.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    model = tf_keras.Model(inputs, L.Conv2D(3, 1, name="project")(x))
    rng = np.random.default_rng(4)
    for name in ("bn1", "bn2"):
        model.get_layer(name).set_weights([rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.3, 4), rng.normal(0, 0.3, 4),
                                           np.exp(rng.uniform(-3, 2, 4))])
    path = tmp_path / "k2.h5"
    model.save(path)
    with h5py.File(path) as handle:
        assert any(name.startswith("dw/depthwise_kernel") for name in handle["model_weights/dw"].attrs["weight_names"].astype(str))
    for command, key in (("fold-bn", "folded"), ("equalize", "equalized")):
        result = cli(command, str(path), "-o", str(tmp_path / f"{command}.h5"), "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)[key], result.stdout
    report = json.loads(cli("equalize", str(path), "--dry-run", "--json").stdout)
    assert [g["layers"] for g in report["equalized"]] == [["expand", "dw", "project"]]
