"""`set` as library calls: surgery.set_weights, the writer and the smoke test.

Every model here was written by real Keras (sample_models/, tests/data/); outputs are
read back with h5py, zipfile and Keras itself. No mocks.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conv_surgeon.errors import ConvSurgeonError, ModelFileError, SmokeTestError, UsageError
from helpers import copy_into, listing

from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.model.structure import read_structure
from conv_surgeon.instruments.reading import get_weights
from conv_surgeon.runtime.smoke import run_smoke_test
from conv_surgeon.runtime.checks import ExpectedValue, SmokeOptions
from conv_surgeon.transaction.transaction import Destination, WriteOptions, choose_destination
from conv_surgeon.runtime.checks import NO_SMOKE
from conv_surgeon.instruments.set_weights import WeightRequest, set_weights
from conv_surgeon.store.patches import apply_patches, locate_patches

SOBEL = np.repeat(
    np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)[:, :, None, None], 4, axis=3
)


def value_of(path: Path, layer: str, weight: str | None = None) -> np.ndarray:
    export = get_weights(ModelFile.from_path(path), layer, weight=weight)
    return next(iter(export.arrays.values()))


def save_npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def _plain(value: object) -> object:
    return repr(value.tolist()) if isinstance(value, np.ndarray) else repr(value)


def h5_contents(h5: h5py.File) -> tuple[dict[str, tuple], dict[str, dict]]:
    """Datasets (dtype, shape, raw bytes, attributes) and groups' attributes of a file."""
    datasets: dict[str, tuple] = {}
    groups: dict[str, dict] = {"/": {k: _plain(v) for k, v in h5.attrs.items()}}

    def visit(name: str, node: object) -> None:
        attrs = {k: _plain(v) for k, v in node.attrs.items()}  # type: ignore[attr-defined]
        if isinstance(node, h5py.Dataset):
            datasets[name] = (node.dtype.str, node.shape, node[()].tobytes(), attrs)
        else:
            groups[name] = attrs

    h5.visititems(visit)
    return datasets, groups


def keras_weight_store(path: Path) -> tuple[dict[str, tuple], dict[str, dict]]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as h5:
        return h5_contents(h5)


# --- losslessness ---------------------------------------------------------------------


def test_keras_edit_keeps_every_other_byte_and_the_optimizer_state(keras, samples: Path, tmp_path: Path) -> None:
    original = samples / "tiny_cnn.keras"
    out = tmp_path / "out.keras"
    report = set_weights(
        ModelFile.from_path(original), "conv1", [WeightRequest(None, source=save_npy(tmp_path / "k.npy", SOBEL))],
        WriteOptions(Destination(path=out), NO_SMOKE), optimizer="keep",
    )
    assert report.destination == str(out) and not report.dry_run

    with zipfile.ZipFile(original) as before, zipfile.ZipFile(out) as after:
        assert after.testzip() is None  # every member's CRC is valid
        assert before.namelist() == after.namelist()
        assert [i.compress_type for i in after.infolist()] == [i.compress_type for i in before.infolist()]
        for name in before.namelist():
            if name not in ("model.weights.h5", "metadata.json"):
                assert after.read(name) == before.read(name), name
        old_meta = json.loads(before.read("metadata.json"))
        new_meta = json.loads(after.read("metadata.json"))
    assert {k: new_meta.get(k) for k in old_meta} == old_meta

    old_sets, old_groups = keras_weight_store(original)
    new_sets, new_groups = keras_weight_store(out)
    assert new_groups == old_groups
    assert set(new_sets) == set(old_sets)
    changed = [name for name in old_sets if new_sets[name] != old_sets[name]]
    assert changed == ["layers/conv2d/vars/0"]
    assert new_sets[changed[0]][2] == SOBEL.tobytes()
    assert any(name.startswith("optimizer/vars/") for name in old_sets)

    def load(path: Path):
        model = keras.saving.load_model(path, compile=True)
        return model, {v.path: np.asarray(v.numpy()) for v in model.optimizer.variables}

    old_model, old_state = load(original)
    new_model, new_state = load(out)
    assert int(new_model.optimizer.iterations.numpy()) == int(old_model.optimizer.iterations.numpy()) > 0
    assert len(new_state) > 2 and new_state.keys() == old_state.keys()
    for path, value in old_state.items():
        np.testing.assert_array_equal(new_state[path], value, err_msg=path)
    np.testing.assert_array_equal(new_model.get_layer("conv1").kernel.numpy(), SOBEL)
    for name in ("conv2", "conv3", "head"):
        for old, new in zip(old_model.get_layer(name).weights, new_model.get_layer(name).weights):
            np.testing.assert_array_equal(new.numpy(), old.numpy())


def test_h5_edit_keeps_every_other_dataset_and_every_attribute(keras, samples: Path, tmp_path: Path) -> None:
    original = samples / "tiny_cnn.h5"
    out = tmp_path / "out.h5"
    set_weights(
        ModelFile.from_path(original), "conv1", [WeightRequest(None, source=save_npy(tmp_path / "k.npy", SOBEL))],
        WriteOptions(Destination(path=out), NO_SMOKE), optimizer="keep",
    )
    with h5py.File(original, "r") as before, h5py.File(out, "r") as after:
        old_sets, old_groups = h5_contents(before)
        new_sets, new_groups = h5_contents(after)
        # The one addition: the provenance record, a root attribute.
        new_groups["/"].pop("conv_surgeon_history")
        history = json.loads(after.attrs["conv_surgeon_history"])
    assert new_groups == old_groups  # file attributes (model_config, ...) and every group's
    assert [edit["layer"] for record in history for edit in record["edits"]] == ["conv1"]
    assert set(new_sets) == set(old_sets)
    changed = [name for name in old_sets if new_sets[name] != old_sets[name]]
    assert changed == ["model_weights/conv1/tiny_cnn/conv1/kernel"]
    assert new_sets[changed[0]][2] == SOBEL.tobytes()

    model = keras.saving.load_model(out, compile=True)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), SOBEL)


def test_corrupt_weight_store_is_refused_not_laundered(samples: Path, tmp_path: Path) -> None:
    """A flipped byte inside model.weights.h5 fails the zip CRC: no fresh CRC for it."""
    bad = copy_into(tmp_path, samples / "tiny_cnn.keras", "bad.keras")
    with zipfile.ZipFile(bad) as archive:
        info = archive.getinfo("model.weights.h5")
    with open(bad, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(handle.read(4), "<u2")
    with zipfile.ZipFile(samples / "tiny_cnn.keras") as archive, h5py.File(
        io.BytesIO(archive.read("model.weights.h5")), "r"
    ) as h5:
        offset = h5["layers/dense/vars/0"].id.get_offset()  # the head's kernel
    data = bytearray(bad.read_bytes())
    data[info.header_offset + 30 + int(name_len) + int(extra_len) + offset] ^= 0xFF
    bad.write_bytes(bytes(data))
    save_npy(tmp_path / "k.npy", SOBEL)
    before = listing(tmp_path)
    with pytest.raises(ModelFileError, match="CRC"):
        set_weights(
            ModelFile.from_path(bad), "conv1", [WeightRequest(None, source=str(tmp_path / "k.npy"))],
            WriteOptions(Destination(path=tmp_path / "out.keras"), NO_SMOKE),
        )
    assert listing(tmp_path) == before


def test_apply_edits_from_stdin_bytes_matches_the_file_edit(samples: Path, tmp_path: Path) -> None:
    path = samples / "all_convs.keras"
    layer = next(layer for layer in read_structure(ModelFile.from_path(path)).layers if layer.path == "c1d")
    kernel = layer.variables[0]
    value = np.full(kernel.shape, 0.25, np.float32)
    from_file, from_bytes = tmp_path / "a.keras", tmp_path / "b.keras"
    apply_patches(ModelFile.from_path(path), locate_patches(ModelFile.from_path(path), {kernel.dataset: value}), from_file)
    stdin = ModelFile(label="<stdin>", data=path.read_bytes())
    apply_patches(stdin, locate_patches(stdin, {kernel.dataset: value}), from_bytes)
    assert from_file.read_bytes() == from_bytes.read_bytes()
    with zipfile.ZipFile(from_file) as archive:
        assert archive.testzip() is None
    np.testing.assert_array_equal(value_of(from_file, "c1d"), value)


def test_plan_edits_refuses_a_value_of_another_shape(samples: Path) -> None:
    source = ModelFile.from_path(samples / "tiny_cnn.h5")
    conv1 = read_structure(source).layers[0]
    with pytest.raises(ModelFileError, match=r"refusing to write"):
        locate_patches(source, {conv1.variables[0].dataset: np.zeros((3, 3, 1, 5), np.float32)})


# --- set_weights: results and reports ---------------------------------------------------


def test_dry_run_reports_the_change_and_writes_nothing(samples: Path, tmp_path: Path) -> None:
    src = copy_into(tmp_path, samples / "tiny_cnn.keras")
    save_npy(tmp_path / "k.npy", SOBEL)
    before = listing(tmp_path)
    old = value_of(src, "conv1")
    report = set_weights(
        ModelFile.from_path(src), "conv1",
        [WeightRequest(None, source=str(tmp_path / "k.npy")), WeightRequest("bias", init="zeros")], WriteOptions(),
    )
    assert report.dry_run and report.destination is None and report.smoke is None
    assert listing(tmp_path) == before
    kernel, bias = report.changes
    assert (kernel.variable, kernel.shape, kernel.dtype) == ("kernel", (3, 3, 1, 4), "float32")
    assert (bias.variable, bias.shape, bias.new_l2) == ("bias", (4,), 0.0)
    assert kernel.old_l2 == pytest.approx(float(np.linalg.norm(old.astype(np.float64))))
    assert kernel.new_l2 == pytest.approx(float(np.linalg.norm(SOBEL)))
    assert kernel.max_abs_change == pytest.approx(float(np.max(np.abs(SOBEL - old))))


def test_int64_source_is_cast_to_float32_and_reported(samples: Path, tmp_path: Path) -> None:
    src = save_npy(tmp_path / "k.npy", SOBEL.astype(np.int64))
    out = tmp_path / "out.keras"
    report = set_weights(
        ModelFile.from_path(samples / "tiny_cnn.keras"), "conv1", [WeightRequest(None, source=src)],
        WriteOptions(Destination(path=out), NO_SMOKE),
    )
    assert report.changes[0].cast == "int64 -> float32"
    written = value_of(out, "conv1")
    assert written.dtype == np.float32
    np.testing.assert_array_equal(written, SOBEL)


def test_bfloat16_values_are_rounded_and_the_cast_reported(samples: Path, tmp_path: Path) -> None:
    import ml_dtypes

    value = np.random.default_rng(3).standard_normal((3, 3, 3, 4)).astype(np.float32)
    out = tmp_path / "out.keras"
    report = set_weights(
        ModelFile.from_path(samples / "tiny_bf16.keras"), "conv1",
        [WeightRequest(None, source=save_npy(tmp_path / "k.npy", value))], WriteOptions(Destination(path=out), NO_SMOKE),
    )
    assert report.changes[0].dtype == "bfloat16" and report.changes[0].cast == "float32 -> bfloat16"
    rounded = value.astype(ml_dtypes.bfloat16)
    assert not np.array_equal(rounded.astype(np.float32), value)  # the rounding is real
    np.testing.assert_array_equal(value_of(out, "conv1"), rounded.astype(np.float32))


def test_initializer_with_a_seed_is_reproducible_and_seedless_ones_report_no_seed(samples: Path, tmp_path: Path) -> None:
    source = ModelFile.from_path(samples / "tiny_cnn.keras")
    runs = []
    for name in ("a.keras", "b.keras"):
        report = set_weights(source, "conv2", [WeightRequest(None, init="he_normal")], WriteOptions(Destination(path=tmp_path / name), NO_SMOKE),
                             seed=11)
        assert report.seed == 11 and not report.seed_drawn
        runs.append(value_of(tmp_path / name, "conv2"))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].std() > 0
    zeros = set_weights(source, "conv2", [WeightRequest("bias", init="zeros")], WriteOptions())
    assert zeros.seed is None and not zeros.seed_drawn


def test_nested_layer_by_path_and_by_unique_name(samples: Path, tmp_path: Path) -> None:
    value = np.arange(8, dtype=np.float32).reshape(1, 1, 4, 2)
    src = save_npy(tmp_path / "k.npy", value)
    for query, name in (("func_block/deep_block/deep_conv", "a.keras"), ("deep_conv", "b.keras")):
        report = set_weights(ModelFile.from_path(samples / "all_convs.keras"), query,
                             [WeightRequest(None, source=src)], WriteOptions(Destination(path=tmp_path / name), NO_SMOKE))
        assert report.layer.path == "func_block/deep_block/deep_conv"
        np.testing.assert_array_equal(value_of(tmp_path / name, "func_block/deep_block/deep_conv"), value)


def test_set_weights_on_a_dense_layer_checks_it_by_its_axis_names(samples: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvSurgeonError, match=r"'head' kernel: expected \(8, 10\) \(in_features, units\)"):
        set_weights(ModelFile.from_path(samples / "tiny_cnn.keras"), "head",
                    [WeightRequest(None, source=save_npy(tmp_path / "k.npy", SOBEL))],
                    WriteOptions(Destination(path=tmp_path / "o.keras"), NO_SMOKE))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npy"]


def test_in_place_destination_updates_the_file_and_leaves_no_temp(samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.h5")
    src = save_npy(tmp_path / "k.npy", SOBEL)
    names = sorted(p.name for p in tmp_path.iterdir())
    destination = choose_destination(str(model), None, True, io.BytesIO())
    assert destination.path == model
    set_weights(ModelFile.from_path(model), "conv1", [WeightRequest(None, source=src)], WriteOptions(destination, NO_SMOKE))
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    np.testing.assert_array_equal(value_of(model, "conv1"), SOBEL)


@pytest.mark.parametrize(
    "model, output, in_place, message",
    [
        ("m.keras", None, False, "--in-place"),
        ("m.keras", "m.keras", False, "use --in-place"),
        ("m.keras", "./m.keras", False, "use --in-place"),
        ("-", None, True, "--in-place needs a MODEL path"),
        ("m.keras", "o.keras", True, "not both"),
    ],
)
def test_choose_destination_usage_errors(samples: Path, tmp_path: Path, monkeypatch, model, output, in_place, message) -> None:
    monkeypatch.chdir(tmp_path)
    copy_into(tmp_path, samples / "tiny_cnn.keras", "m.keras")
    with pytest.raises(UsageError) as info:
        choose_destination(model, output, in_place, io.BytesIO())
    assert message in str(info.value) and info.value.exit_code == 2


def test_choose_destination_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConvSurgeonError, match="does not exist") as info:
        choose_destination("m.keras", str(tmp_path / "nodir" / "o.keras"), False, io.BytesIO())
    assert info.value.exit_code == 1


def test_stdin_source_to_stream_destination(samples: Path, tmp_path: Path) -> None:
    stream = io.BytesIO()
    source = ModelFile(label="<stdin>", data=(samples / "tiny_cnn.keras").read_bytes())
    report = set_weights(source, "conv1", [WeightRequest(None, source=save_npy(tmp_path / "k.npy", SOBEL))],
                         WriteOptions(Destination(stream=stream), NO_SMOKE))
    assert report.destination == "<stdout>"
    out = tmp_path / "streamed.keras"
    out.write_bytes(stream.getvalue())
    np.testing.assert_array_equal(value_of(out, "conv1"), SOBEL)


# --- the smoke test ---------------------------------------------------------------------


def test_smoke_test_passes_and_checks_the_values(samples: Path) -> None:
    conv1 = value_of(samples / "tiny_cnn.keras", "conv1")
    report = run_smoke_test(samples / "tiny_cnn.keras", SmokeOptions(), expected=[ExpectedValue("layer 'conv1' kernel", conv1, store_object="layers/conv2d", store_index=0)])
    assert report.inputs == (("input 0", (1, 28, 28, 1)),)
    assert report.outputs[0].shape == (1, 10) and report.checked_variables == 1


def test_smoke_test_detects_values_that_differ(samples: Path) -> None:
    with pytest.raises(SmokeTestError, match="differ") as info:
        run_smoke_test(samples / "tiny_cnn.keras", SmokeOptions(), expected=[ExpectedValue("layer 'conv1' kernel", np.zeros((3, 3, 1, 4)), store_object="layers/conv2d")])
    assert info.value.exit_code == 3


def test_smoke_test_explains_why_keras_cannot_load_a_keras2_file(data_dir: Path, tmp_path: Path) -> None:
    path = copy_into(tmp_path, data_dir / "keras2_convs.h5")
    with pytest.raises(SmokeTestError) as info:
        run_smoke_test(path, SmokeOptions())
    message = str(info.value)
    assert "could not load" in message and "groups" in message and "--no-smoke" in message
    assert "\n" not in message


def test_smoke_test_lambda_needs_unsafe(samples: Path) -> None:
    with pytest.raises(SmokeTestError, match="--unsafe"):
        run_smoke_test(samples / "tiny_cnn_lambda.keras", SmokeOptions())
    assert run_smoke_test(samples / "tiny_cnn_lambda.keras", SmokeOptions(unsafe=True)).outputs


def test_smoke_test_refuses_outputs_that_overflow(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "huge.keras"
    src = save_npy(tmp_path / "k.npy", np.full((3, 3, 1, 4), 3e38, np.float32))
    with pytest.raises(SmokeTestError, match="NaN or Inf"):
        set_weights(ModelFile.from_path(samples / "tiny_cnn.keras"), "conv1", [WeightRequest(None, source=src)],
                    WriteOptions(Destination(path=out)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npy"]


def test_smoke_test_unknown_spatial_size_uses_32_and_says_so(keras, tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3, name="conv")])
    path = tmp_path / "free.keras"
    model.save(path)
    report = run_smoke_test(path, SmokeOptions())
    assert report.inputs == (("input 0", (1, 32, 32, 3)),)
    assert any("32" in note and "--input-shape" in note for note in report.notes)
    given = run_smoke_test(path, SmokeOptions(input_shapes=[(9, 7, 3)]))
    assert given.inputs == (("input 0", (1, 9, 7, 3)),) and given.outputs[0].shape == (1, 7, 5, 2)


def test_npz_bundles_keep_keys_numpy_savez_would_mangle(tmp_path: Path) -> None:
    from conv_surgeon.store.fileio import npz_bytes

    arrays = {"file": np.arange(3), "allow_pickle": np.ones(2), "a/b": np.zeros((2, 2))}
    path = tmp_path / "bundle.npz"
    path.write_bytes(npz_bytes(arrays))
    with np.load(path, allow_pickle=False) as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        assert all(np.array_equal(loaded[key], value) for key, value in arrays.items())
