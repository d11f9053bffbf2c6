"""The smoke test on real models: unknown input sizes, what is loaded, where the edited variables are.

Every model here is built and saved by real Keras (and keras-hub) in tmp_path; expected
values are read back from the saved files with h5py, so a wrong walk of the store fails.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conv_surgeon.errors import ConvSurgeonError, SmokeTestError
from conv_surgeon.runtime.smoke import run_smoke_test
from conv_surgeon.runtime.checks import ExpectedValue, SmokeOptions, SmokeTarget

PACKAGE = "conv_surgeon_smoke_targets"


def stored(path: Path, dataset: str) -> np.ndarray:
    """A dataset of the weight store Keras wrote: in a .keras archive, a model directory or a weights file."""
    if path.is_dir():
        with h5py.File(path / "model.weights.h5", "r") as handle:
            return handle[dataset][()]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data = io.BytesIO(archive.read("model.weights.h5"))
        with h5py.File(data, "r") as handle:
            return handle[dataset][()]
    with h5py.File(path, "r") as handle:
        return handle[dataset][()]


def one_line(info: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    for part in parts:
        assert part in message, message
    return message


@pytest.fixture(scope="module")
def conv_block(keras):
    """A registered custom layer holding ``self.conv`` and ``self.bn`` (its own vars group is empty)."""

    @keras.saving.register_keras_serializable(package=PACKAGE)
    class ConvBlock(keras.layers.Layer):
        def __init__(self, filters: int = 2, **kwargs):
            super().__init__(**kwargs)
            self.filters = filters
            self.conv = keras.layers.Conv2D(filters, 3, padding="same")
            self.bn = keras.layers.BatchNormalization()

        def build(self, input_shape):
            self.conv.build(input_shape)
            self.bn.build(tuple(input_shape[:-1]) + (self.filters,))

        def call(self, x, training=False):
            return self.bn(self.conv(x), training=training)

        def get_config(self):
            return {**super().get_config(), "filters": self.filters}

    return ConvBlock


# --- unknown input sizes ----------------------------------------------------------------


def cropping_model(keras, path: Path) -> Path:
    """Conv1D after Cropping1D((500, 500)): lengths up to 1000 are rejected (as SpliceAI's 5000)."""
    model = keras.Sequential([
        keras.Input((None, 1)),
        keras.layers.Cropping1D((500, 500)),
        keras.layers.Conv1D(2, 3, name="conv"),
    ])
    model.save(path)
    return path


def fixed_time_model(keras, path: Path) -> Path:
    """Flatten -> Dense fixes the time axis at 256 although the input says (None, 1).

    Keras 3 cannot build Flatten -> Dense on a None axis itself; the Reshape carries the
    size the Dense was built for, as in a Keras 2 model converted with its build length.
    """
    inputs = keras.Input((None, 1))
    x = keras.layers.Conv1D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Reshape((256, 4))(x)
    x = keras.layers.Flatten()(x)
    keras.Model(inputs, keras.layers.Dense(3, name="head")(x)).save(path)
    return path


def test_unknown_length_climbs_past_a_cropping(keras, tmp_path: Path, capfd) -> None:
    path = cropping_model(keras, tmp_path / "crop.keras")
    capfd.readouterr()
    report = run_smoke_test(path, SmokeOptions())
    assert report.inputs == (("input 0", (1, 1024, 1)),)
    assert report.outputs[0].shape == (1, 22, 2)
    assert report.notes == (
        "input 0 (None, None, 1): unknown sizes set to 1024 (32..512 were rejected); "
        "use --input-shape to choose them",
    )
    assert capfd.readouterr().err == ""  # five rejected forward passes, not a word of TensorFlow


def test_the_reference_runs_on_the_inputs_found(keras, tmp_path: Path) -> None:
    path = cropping_model(keras, tmp_path / "crop.keras")
    found = run_smoke_test(path, SmokeOptions(compare=True, save_inputs=tmp_path / "found.npz"), original=path)
    assert found.inputs == (("input 0", (1, 1024, 1)),)
    assert [c.max_abs for c in found.comparisons] == [0.0]
    # The search draws each try afresh: what it found is what --input-shape gives.
    run_smoke_test(path, SmokeOptions(input_shapes=[(1024, 1)], save_inputs=tmp_path / "given.npz"))
    with np.load(tmp_path / "found.npz") as a, np.load(tmp_path / "given.npz") as b:
        np.testing.assert_array_equal(a["input_0"], b["input_0"])


def test_a_time_axis_fixed_by_a_dense_is_found(keras, tmp_path: Path) -> None:
    report = run_smoke_test(fixed_time_model(keras, tmp_path / "tempo.keras"), SmokeOptions())
    assert report.inputs == (("input 0", (1, 256, 1)),) and report.outputs[0].shape == (1, 3)
    assert report.notes == (
        "input 0 (None, None, 1): unknown sizes set to 256 (32..128 were rejected); "
        "use --input-shape to choose them",
    )


def test_a_wrong_input_shape_names_it_and_the_ways_out(keras, tmp_path: Path) -> None:
    path = fixed_time_model(keras, tmp_path / "tempo.keras")
    with pytest.raises(SmokeTestError) as info:
        run_smoke_test(path, SmokeOptions(input_shapes=[(100, 1)]))
    one_line(info, "(1, 100, 1)", "--input-shape", "--no-smoke", "Reshape")
    assert info.value.exit_code == 3


def test_every_size_rejected_says_what_was_tried(keras, tmp_path: Path) -> None:
    path = tmp_path / "greedy.keras"
    keras.Sequential([keras.Input((None, 4)), keras.layers.Cropping1D((600_000, 600_000))]).save(path)
    with pytest.raises(SmokeTestError) as info:
        run_smoke_test(path, SmokeOptions())
    # (None, 4): at most 2**22 values, so the ladder stops at 2**20 steps.
    one_line(info, "input 0 (None, None, 4)", "32, 64, ..., 1048576", "(1, 1048576, 4)",
             "Cropping1D", "--input-shape SHAPE", "--no-smoke")


def test_an_empty_output_counts_as_too_small(keras, tmp_path: Path) -> None:
    path = tmp_path / "pool.keras"
    # AveragePooling1D(64) on 32 steps returns 0 steps without an error.
    keras.Sequential([keras.Input((None, 1)), keras.layers.AveragePooling1D(64), keras.layers.Conv1D(2, 1)]).save(path)
    report = run_smoke_test(path, SmokeOptions())
    assert report.inputs == (("input 0", (1, 64, 1)),) and report.outputs[0].shape == (1, 1, 2)
    assert "set to 64 (32 was rejected)" in report.notes[0]


def test_an_overflow_is_not_retried(keras, tmp_path: Path) -> None:
    path = tmp_path / "huge.keras"
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.Conv1D(1, 1, name="conv")])
    model.get_layer("conv").kernel.assign(np.full((1, 1, 1), 3e38, np.float32))
    model.save(path)
    with pytest.raises(SmokeTestError, match="NaN or Inf") as info:
        run_smoke_test(path, SmokeOptions(input_seed=1))
    assert "(1, 32, 1)" in str(info.value)  # the first size ran: no search beyond it


# --- where the edited variables are ---------------------------------------------------------


def test_time_distributed_inner_conv(keras, tmp_path: Path) -> None:
    path = tmp_path / "td.keras"
    keras.Sequential([keras.Input((2, 6, 6, 1)), keras.layers.TimeDistributed(keras.layers.Conv2D(3, 3), name="td")]).save(path)
    kernel = stored(path, "layers/time_distributed/layer/vars/0")
    bias = stored(path, "layers/time_distributed/layer/vars/1")
    assert kernel.shape == (3, 3, 1, 3)
    good = [
        ExpectedValue("layer 'td/conv2d' kernel", kernel, store_object="layers/time_distributed/layer"),
        ExpectedValue("layer 'td/conv2d' bias", bias, store_object="layers/time_distributed/layer", store_index=1),
    ]
    assert run_smoke_test(path, SmokeOptions(), expected=good).checked_variables == 2
    with pytest.raises(SmokeTestError) as info:
        run_smoke_test(path, SmokeOptions(), expected=[ExpectedValue("layer 'td/conv2d' kernel", kernel + 1, store_object="layers/time_distributed/layer")])
    one_line(info, "layer 'td/conv2d' kernel", "differ")
    with pytest.raises(SmokeTestError) as info:
        run_smoke_test(path, SmokeOptions(), expected=[ExpectedValue("layer 'td/conv2d' kernel", kernel, store_object="layers/time_distributed")])
    one_line(info, "layer 'td/conv2d' kernel", "not found", "'layers/time_distributed/vars/0'")


def test_custom_block_conv_and_batch_norm(keras, conv_block, tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6, 6, 1)), conv_block(2, name="block")])
    block = model.get_layer("block")
    block.bn.moving_mean.assign(np.array([0.25, -0.5], np.float32))
    block.bn.gamma.assign(np.array([2.0, 3.0], np.float32))
    path = tmp_path / "block.keras"
    model.save(path)
    kernel = stored(path, "layers/conv_block/conv/vars/0")
    mean = stored(path, "layers/conv_block/bn/vars/2")
    np.testing.assert_array_equal(mean, [0.25, -0.5])  # gamma, beta, moving_mean, moving_variance
    expected = [
        ExpectedValue("layer 'block/conv' kernel", kernel, store_object="layers/conv_block/conv"),
        ExpectedValue("layer 'block/bn' moving_mean", mean, store_object="layers/conv_block/bn", store_index=2),
    ]
    assert run_smoke_test(path, SmokeOptions(), expected=expected).checked_variables == 2
    with pytest.raises(SmokeTestError) as info:
        run_smoke_test(path, SmokeOptions(), expected=[ExpectedValue("layer 'block/bn' moving_mean", mean, store_object="layers/conv_block/bn")])
    one_line(info, "layer 'block/bn' moving_mean", "differ")  # index 0 is gamma


@pytest.mark.parametrize("frozen", [False, True])
def test_legacy_h5_by_position_in_weight_names(keras, tmp_path: Path, frozen: bool) -> None:
    # BatchNorm first: the legacy order (trainable, then non-trainable) is not `weights`
    # order, and freezing the nested model changes it again.
    inner = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(2, 3, name="conv"),
    ], name="inner")
    inner.get_layer("bn").moving_mean.assign(np.array([0.25, -0.5], np.float32))
    inner.get_layer("bn").gamma.assign(np.array([2.0, 3.0], np.float32))
    inner.trainable = not frozen
    inputs = keras.Input((6, 6, 2))
    outputs = keras.layers.Conv2D(1, 1, name="head")(inner(inputs))
    path = tmp_path / "nested.h5"
    keras.Model(inputs, outputs, name="outer").save(path)
    with h5py.File(path, "r") as handle:
        group = handle["model_weights/inner"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        values = [group[n][()] for n in names]
    assert names.index("inner/bn/moving_mean") == (2 if frozen else 4)
    mean_at = next(i for i, n in enumerate(names) if "moving_mean" in n)
    gamma_at = next(i for i, n in enumerate(names) if "gamma" in n)
    kernel_at = next(i for i, n in enumerate(names) if n.endswith("kernel") or n.endswith("kernel:0"))
    expected = [
        ExpectedValue("layer 'inner/bn' moving_mean", values[mean_at], h5_layer="inner", h5_position=mean_at),
        ExpectedValue("layer 'inner/bn' gamma", values[gamma_at], h5_layer="inner", h5_position=gamma_at),
        ExpectedValue("layer 'inner/conv' kernel", values[kernel_at], h5_layer="inner", h5_position=kernel_at),
    ]
    assert run_smoke_test(path, SmokeOptions(), expected=expected).checked_variables == 3
    with pytest.raises(SmokeTestError) as info:
        run_smoke_test(path, SmokeOptions(), expected=[ExpectedValue("layer 'inner/bn' moving_mean", values[mean_at], h5_layer="inner", h5_position=gamma_at)])
    one_line(info, "layer 'inner/bn' moving_mean", "differ")
    with pytest.raises(SmokeTestError) as info:
        run_smoke_test(path, SmokeOptions(), expected=[ExpectedValue("layer 'x' kernel", values[0], h5_layer="nowhere")])
    one_line(info, "layer 'x' kernel", "not found", "'nowhere'")


# --- what is loaded ------------------------------------------------------------------------


def test_a_zipped_false_directory(keras, tmp_path: Path) -> None:
    folder = tmp_path / "model_dir"
    keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3, name="conv")]).save(folder, zipped=False)
    kernel = stored(folder, "layers/conv2d/vars/0")
    report = run_smoke_test(folder, SmokeOptions(), expected=[ExpectedValue("layer 'conv' kernel", kernel, store_object="layers/conv2d")])
    assert report.checked_variables == 1 and report.inputs == (("input 0", (1, 32, 32, 3)),)
    with pytest.raises(SmokeTestError, match="differ"):
        run_smoke_test(SmokeTarget(folder), SmokeOptions(), expected=[ExpectedValue("layer 'conv' kernel", -kernel, store_object="layers/conv2d")])


@pytest.mark.parametrize("weights_name", ["edited.weights.h5", "edited.weights.json"])
def test_a_weights_file_with_the_model_it_belongs_to(keras, tmp_path: Path, weights_name: str) -> None:
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="conv"),
                              keras.layers.Conv2D(2, 3, name="conv_b")])
    model.save(tmp_path / "arch.keras")
    new_kernel = np.arange(18, dtype=np.float32).reshape(3, 3, 1, 2)
    model.get_layer("conv").kernel.assign(new_kernel)
    weights = tmp_path / weights_name
    if weights_name.endswith(".json"):
        model.save_weights(weights, max_shard_size=2e-7)  # in GB: a shard per layer
        assert len(list(tmp_path.glob("edited_*.weights.h5"))) > 1
    else:
        model.save_weights(weights)
    target = SmokeTarget(weights, kind="weights", config=tmp_path / "arch.keras")
    expected = [ExpectedValue("layer 'conv' kernel", new_kernel, store_object="layers/conv2d")]
    assert run_smoke_test(target, SmokeOptions(), expected=expected).checked_variables == 1
    with pytest.raises(SmokeTestError, match="differ"):
        # The architecture's own file still holds the old kernel: the weights came from the file.
        run_smoke_test(tmp_path / "arch.keras", SmokeOptions(), expected=expected)


def test_weights_target_needs_a_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config"):
        SmokeTarget(tmp_path / "w.weights.h5", kind="weights")


# --- custom classes: --import ---------------------------------------------------------------


LAYER_MODULE = '''
import keras


@keras.saving.register_keras_serializable(package="{package}")
class ScaledConv(keras.layers.Layer):
    def __init__(self, filters=2, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return 2.0 * self.conv(x)

    def get_config(self):
        return {{**super().get_config(), "filters": self.filters}}
'''


def test_imports_register_custom_layers_from_the_current_directory(keras, tmp_path: Path, monkeypatch) -> None:
    module = "smoke_targets_layers"
    source = tmp_path / f"{module}.py"
    source.write_text(LAYER_MODULE.format(package=PACKAGE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    # Build the model with the module, then forget it: the load must import it again.
    import importlib.util

    spec = importlib.util.spec_from_file_location(module, source)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    path, legacy = tmp_path / "custom.keras", tmp_path / "custom.h5"
    model = keras.Sequential([keras.Input((6, 6, 1)), loaded.ScaledConv(name="scaled")])
    model.save(path)
    model.save(legacy)
    monkeypatch.delitem(keras.saving.get_custom_objects(), f"{PACKAGE}>ScaledConv")
    monkeypatch.delitem(sys.modules, module, raising=False)

    for unknown in (path, legacy):
        with pytest.raises(SmokeTestError) as info:
            run_smoke_test(unknown, SmokeOptions())
        one_line(info, "ScaledConv'", "--import MODULE", "--no-smoke")

    kernel = stored(path, "layers/scaled_conv/conv/vars/0")
    expected = [ExpectedValue("layer 'scaled/conv' kernel", kernel, store_object="layers/scaled_conv/conv")]
    report = run_smoke_test(path, SmokeOptions(imports=(module,)), expected=expected)
    assert report.checked_variables == 1 and str(tmp_path) in sys.path


def test_a_module_that_cannot_be_imported_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "broken_smoke_layers.py").write_text("def oops(:\n")
    for name, part in [("no_such_smoke_module", "No module named 'no_such_smoke_module'"),
                       ("broken_smoke_layers", "SyntaxError")]:
        with pytest.raises(ConvSurgeonError) as info:
            run_smoke_test(tmp_path / "never-loaded.keras", SmokeOptions(imports=(name,)))
        assert not isinstance(info.value, SmokeTestError) and info.value.exit_code == 1
        one_line(info, f"--import {name}", part)
    with pytest.raises(ConvSurgeonError) as info:
        run_smoke_test(tmp_path / "never-loaded.keras", SmokeOptions(imports=("my_layers.py",)))
    one_line(info, "--import my_layers)")


# --- keras-hub ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_backbone(tmp_path_factory):
    """A tiny ResNetBackbone with random weights, saved as .keras and as a preset (nothing downloaded)."""
    keras_hub = pytest.importorskip("keras_hub")
    folder = tmp_path_factory.mktemp("hub")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block",
        image_shape=(None, None, 3),
    )
    backbone.save(folder / "backbone.keras")
    backbone.save_to_preset(str(folder / "preset"))
    return folder


def test_keras_hub_backbone_as_model_and_as_preset(hub_backbone: Path, capfd) -> None:
    archive, preset = hub_backbone / "backbone.keras", hub_backbone / "preset"
    capfd.readouterr()
    for target, source in [(archive, archive), (SmokeTarget(preset, kind="preset"), preset)]:
        kernel = stored(source, "layers/conv2d_1/vars/0")
        expected = [ExpectedValue("layer 'conv2d_1' kernel", kernel, store_object="layers/conv2d_1")]
        report = run_smoke_test(target, SmokeOptions(), expected=expected)
        assert report.checked_variables == 1 and report.inputs == (("input 0", (1, 32, 32, 3)),)
        with pytest.raises(SmokeTestError, match="differ"):
            run_smoke_test(target, SmokeOptions(), expected=[ExpectedValue("layer 'conv2d_1' kernel", kernel * 2, store_object="layers/conv2d_1")])
    assert capfd.readouterr().err == ""


def test_keras_hub_weights_with_a_preset_architecture(keras, hub_backbone: Path, tmp_path: Path) -> None:
    import keras_hub

    model = keras_hub.models.Backbone.from_preset(str(hub_backbone / "preset"))
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    new_kernel = np.full(tuple(conv.kernel.shape), 0.5, np.float32)
    conv.kernel.assign(new_kernel)
    model.save_weights(tmp_path / "tuned.weights.h5")
    np.testing.assert_array_equal(stored(tmp_path / "tuned.weights.h5", "layers/conv2d/vars/0"), new_kernel)
    target = SmokeTarget(tmp_path / "tuned.weights.h5", kind="weights", config=hub_backbone / "preset")
    expected = [ExpectedValue("layer 'conv2d' kernel", new_kernel, store_object="layers/conv2d")]
    assert run_smoke_test(target, SmokeOptions(), expected=expected).checked_variables == 1


def test_keras_hub_model_without_keras_hub(hub_backbone: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` now fails
    for target in [hub_backbone / "backbone.keras", SmokeTarget(hub_backbone / "preset", kind="preset")]:
        with pytest.raises(SmokeTestError) as info:
            run_smoke_test(target, SmokeOptions())
        one_line(info, "keras-hub model", "pip install keras-hub", "--no-smoke")
