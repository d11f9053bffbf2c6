"""The zoo itself: every kind is written, Keras loads it back, and both Keras and
the file's weight store hold exactly the variables the zoo recorded."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("keras")

import zoo  # noqa: E402
from zoo import ExpectedVariable, zoo_model, zoo_models  # noqa: E402,F401  (fixtures)


def _store_files(path: Path) -> list[tuple[str, bytes | Path]]:
    """Every HDF5 file holding the weights of ``path``: (label, path or bytes)."""
    if path.is_dir():
        return [("model.weights.h5", path / "model.weights.h5")]
    if path.name.endswith(".weights.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        shards = sorted({name for names in weight_map.values() for name in names})
        return [(name, path.with_name(name)) for name in shards]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [("model.weights.h5", archive.read("model.weights.h5"))]
    return [(path.name, path)]


def stored_variables(path: Path) -> list[ExpectedVariable]:
    """Every dataset of the weight store but optimizer state, read with h5py only."""
    found: list[ExpectedVariable] = []
    for _, source in _store_files(path):
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with h5py.File(handle, "r") as f:

            def visit(name, obj):
                if not isinstance(obj, h5py.Dataset):
                    return
                if name.split("/")[0] in ("optimizer", "optimizer_weights"):
                    return
                value = np.asarray(obj[()])
                dtype = obj.attrs.get("dtype")
                dtype = dtype.decode() if isinstance(dtype, bytes) else dtype
                found.append(
                    ExpectedVariable(
                        tuple(value.shape),
                        dtype or value.dtype.name,
                        hashlib.sha256(value.tobytes()).hexdigest(),
                    )
                )

            f.visititems(visit)
        if isinstance(handle, io.BytesIO):
            handle.close()
    return found


def _counts(variables) -> collections.Counter:
    return collections.Counter(variables)


def test_the_file_is_there(zoo_model) -> None:
    path = zoo_model.path
    assert path.exists(), path
    if path.is_dir():
        assert (path / "config.json").is_file() and (path / "model.weights.h5").is_file()
    for extra in zoo_model.extra.values():
        assert extra.exists(), extra
    assert zoo_model.expected, "every zoo model holds variables"
    assert zoo_model.notes


def test_the_store_holds_exactly_the_expected_variables(zoo_model) -> None:
    assert _counts(stored_variables(zoo_model.path)) == _counts(zoo_model.expected)


def test_keras_loads_it_back_with_the_expected_variables(zoo_model) -> None:
    if zoo_model.kind == "keras2_convs":
        with pytest.raises(zoo.NotLoadable):
            zoo.load(zoo_model)
        return
    model = zoo.load(zoo_model)
    held = zoo.expected_variables(model)
    if zoo_model.kind in ("keras2_tiny", "keras2_weights_only", "keras21_sequential"):
        # keras2_expected.json follows the tf-keras layer order; same multiset.
        assert _counts(held) == _counts(zoo_model.expected)
    else:
        assert held == zoo_model.expected


def test_every_asked_kind_is_in_the_registry() -> None:
    asked = {
        "time_distributed", "bidirectional", "custom_block",
        "time_distributed_h5", "bidirectional_h5", "custom_block_h5",
        "quantized_dense",
        "keras_hub_resnet", "keras_hub_mobilenet", "keras_hub_efficientnet",
        "keras_hub_resnet_preset", "keras_hub_mobilenet_preset", "keras_hub_efficientnet_preset",
        "weights_only", "sharded", "unzipped_dir", "bf16", "cropping_1d", "fixed_time_axis",
        "keras2_weights_only", "keras21_sequential",
    }
    assert asked <= set(zoo.KINDS)


# --- the properties each kind was made for -------------------------------------


def _config(zm) -> dict:
    path = zm.path
    if path.is_dir():
        return json.loads((path / "config.json").read_text())
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def _keras_store(zm):
    """The .keras archive's model.weights.h5 as an open h5py file (caller closes)."""
    with zipfile.ZipFile(zm.path) as archive:
        return h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")


def test_time_distributed_has_optimizer_state_and_the_inner_conv(zoo_models) -> None:
    zm = zoo_models("time_distributed")
    with _keras_store(zm) as f:
        assert f["layers/time_distributed/vars"].attrs["name"] == "td"
        assert f["layers/time_distributed/layer/vars/0"].shape == (3, 3, 3, 4)
        assert len(f["optimizer/vars"]) == 10


def test_custom_block_holds_sub_layers_and_shares_one_instance(zoo_models) -> None:
    zm = zoo_models("custom_block")
    with _keras_store(zm) as f:
        assert len(f["layers/conv_bn_block/vars"]) == 0
        assert f["layers/conv_bn_block/conv/vars/0"].shape == (3, 3, 3, 4)
        assert f["layers/conv_pair_block/convs/conv2d_1/vars"].attrs["name"] == "second"
        assert "conv_pair_block_1" not in f["layers"]  # one instance, called twice


def test_quantized_dense_kernel_is_int8_and_conv_is_not(zoo_models) -> None:
    zm = zoo_models("quantized_dense")
    # model.weights order: conv kernel, conv bias, dense bias (trainable), then the
    # non-trainable int8 kernel and kernel_scale ...
    assert [e.dtype for e in zm.expected] == ["float32", "float32", "float32", "int8", "float32"]
    # ... but the store follows Dense.variable_serialization_spec: kernel, bias, kernel_scale.
    with _keras_store(zm) as f:
        stored = [f[f"layers/dense/vars/{i}"] for i in range(3)]
        assert [(d.dtype.name, d.shape) for d in stored] == [
            ("int8", (144, 3)), ("float32", (3,)), ("float32", (3,))
        ]


def test_bf16_has_bfloat16_and_float32_variables(zoo_models) -> None:
    dtypes = collections.Counter(e.dtype for e in zoo_models("bf16").expected)
    assert dtypes == {"bfloat16": 6, "float32": 4}


def test_sharded_has_three_shards_and_a_layer_split_over_two(zoo_models) -> None:
    zm = zoo_models("sharded")
    weight_map = json.loads(zm.path.read_text())["weight_map"]
    shards = {name for names in weight_map.values() for name in names}
    assert len(shards) >= 3
    assert any(len(names) > 1 for names in weight_map.values())


def test_keras_hub_configs_hold_arguments_not_layers(zoo_models) -> None:
    for kind in ("keras_hub_resnet", "keras_hub_mobilenet", "keras_hub_efficientnet"):
        config = _config(zoo_models(kind))
        assert config["registered_name"].startswith("keras_hub>")
        assert "layers" not in config["config"]
    preset = zoo_models("keras_hub_resnet_preset").path
    assert {p.name for p in preset.iterdir()} == {"config.json", "metadata.json", "model.weights.h5"}


def test_cropping_1d_needs_a_long_input(zoo_models) -> None:
    model = zoo.load(zoo_models("cropping_1d"))
    assert model(np.zeros((1, 1002, 4), dtype="float32")).shape == (1, 2, 2)
    with pytest.raises(Exception):
        model(np.zeros((1, 32, 4), dtype="float32"))


def test_fixed_time_axis_only_runs_on_256(zoo_models) -> None:
    zm = zoo_models("fixed_time_axis")
    assert _config(zm)["config"]["layers"][0]["config"]["batch_shape"] == [None, None, 1]
    model = zoo.load(zm)
    assert model(np.zeros((1, 256, 1), dtype="float32")).shape == (1, 2)
    with pytest.raises(Exception):
        model(np.zeros((1, 32, 1), dtype="float32"))


def test_keras21_sequential_is_the_old_format(zoo_models) -> None:
    zm = zoo_models("keras21_sequential")
    with h5py.File(zm.path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        assert config["class_name"] == "Sequential" and isinstance(config["config"], list)
        assert f["model_weights"].attrs["layer_names"].dtype.kind == "S"
        assert f["model_weights/conv1"].attrs["weight_names"].dtype.kind == "S"
    keras = pytest.importorskip("keras")
    with pytest.raises(TypeError):  # Keras 3.15 cannot read the list-shaped config
        keras.saving.load_model(zm.path, compile=False)


def test_keras2_weights_only_has_no_model_config(zoo_models) -> None:
    zm = zoo_models("keras2_weights_only")
    with h5py.File(zm.path, "r") as f:
        assert "layer_names" in f.attrs and "model_config" not in f.attrs
        assert "model_weights" not in f


def test_copy_of_copies_every_file(zoo_models, tmp_path) -> None:
    zm = zoo.copy_of(zoo_models("sharded"), tmp_path)
    assert zm.path.parent == tmp_path
    assert _counts(stored_variables(zm.path)) == _counts(zm.expected)
    assert zm.extra["config"].parent == tmp_path
    preset = zoo.copy_of(zoo_models("keras_hub_mobilenet_preset"), tmp_path / "p")
    assert (preset.path / "model.weights.h5").is_file()
