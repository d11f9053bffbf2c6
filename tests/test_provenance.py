"""The provenance record: written by the writer, read back, and harmless to Keras.

Every model here was written by real Keras (sample_models/); outputs are read back with
zipfile, h5py, the raw bytes, and Keras itself. No mocks.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from helpers import copy_into

from conv_surgeon.errors import ModelFileError
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.model.structure import read_structure
from conv_surgeon.store.provenance import (
    EditRecord,
    HISTORY_ATTRIBUTE,
    METADATA_KEY,
    make_record,
    read_history,
)
from conv_surgeon.store.patches import apply_patches, locate_patches

SOBEL = np.repeat(
    np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)[:, :, None, None], 4, axis=3
)


def kernel_edit(layer: str, source: dict[str, Any]) -> EditRecord:
    return {"layer": layer, "variable": "kernel", "layout": "keras", "source": source}  # type: ignore[typeddict-item]


def write(source: ModelFile, layer: str, value: np.ndarray, out: Path,
          history: list[dict[str, Any]] | None) -> str:
    """Set ``layer``'s kernel to ``value`` in a copy at ``out``; the kernel's dataset."""
    target = next(found for found in read_structure(source).layers if found.path == layer)
    dataset = target.variables[0].dataset
    apply_patches(source, locate_patches(source, {dataset: value}), out, history=history)
    return dataset


def record(*edits: EditRecord, command: str = "set m.keras --layer conv1 -o out.keras") -> dict[str, Any]:
    return make_record(["conv-surgeon", *command.split()], list(edits), "0.1.0")


def raw_members(path: Path) -> dict[str, bytes]:
    """Each member's raw bytes in the archive: local header, data (and any descriptor)."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        infos = sorted(archive.infolist(), key=lambda i: i.header_offset)
        ends = [i.header_offset for i in infos[1:]] + [archive.start_dir]  # type: ignore[attr-defined]
    return {i.filename: data[i.header_offset:end] for i, end in zip(infos, ends)}


def weight_store_bytes(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read("model.weights.h5")


def dataset_offset(store: bytes, dataset: str) -> int:
    with h5py.File(io.BytesIO(store), "r") as h5:
        return int(h5[dataset].id.get_offset())


def h5_datasets(h5: h5py.File) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    h5.visititems(lambda name, node: found.__setitem__(name, node[()].tobytes())
                  if isinstance(node, h5py.Dataset) else None)
    return found


def descriptor_crc(path: Path, name: str) -> int:
    """The CRC32 in a member's data descriptor (testzip checks the central directory's)."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    end = info.header_offset + 30 + name_len + extra_len + info.compress_size
    assert data[end:end + 4] == b"PK\x07\x08"
    return int(struct.unpack_from("<I", data, end + 4)[0])


def optimizer_state(model: Any) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v.numpy()) for v in model.optimizer.variables}


# --- the record ------------------------------------------------------------------------


def test_make_record_has_the_documented_shape() -> None:
    edit = kernel_edit("conv1", {"file": "k.npy", "sha256": "ab" * 32})
    made = make_record(["conv-surgeon", "set"], [edit], "0.1.0",
                       now=datetime(2026, 11, 29, 16, 30, 5, 123456, tzinfo=UTC))
    assert made == {
        "tool": "conv-surgeon", "version": "0.1.0", "time": "2026-11-29T16:30:05Z",
        "command": ["conv-surgeon", "set"], "edits": [edit],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record()["time"])


def test_make_record_refuses_values_json_cannot_hold() -> None:
    with pytest.raises(ValueError, match="not plain JSON"):
        make_record(["conv-surgeon"], [kernel_edit("conv1", {"init": "he_normal", "seed": np.int64(3)})], "0.1.0")
    with pytest.raises(ValueError, match="not plain JSON"):
        make_record(["conv-surgeon"], [kernel_edit("conv1", {"init": "zeros", "seed": float("nan")})], "0.1.0")


def test_a_model_keras_wrote_has_no_history(samples: Path) -> None:
    assert read_history(ModelFile.from_path(samples / "tiny_cnn.keras")) == []
    assert read_history(ModelFile.from_path(samples / "tiny_cnn.h5")) == []


# --- .keras ------------------------------------------------------------------------------


def test_keras_record_reads_back_and_keras_loads_the_model_with_its_optimizer(
    keras, samples: Path, tmp_path: Path
) -> None:
    original = samples / "tiny_cnn.keras"
    out = tmp_path / "out.keras"
    first = record(kernel_edit("conv1", {"file": "sobel.npy", "sha256": "0" * 64}))
    dataset = write(ModelFile.from_path(original), "conv1", SOBEL, out, [first])

    assert read_history(ModelFile.from_path(out)) == [first]
    with zipfile.ZipFile(original) as before, zipfile.ZipFile(out) as after:
        assert after.testzip() is None  # every member's CRC is valid
        assert after.namelist() == before.namelist()  # metadata.json stays first
        old_meta = json.loads(before.read("metadata.json"))
        new_meta = json.loads(after.read("metadata.json"))
        assert after.getinfo("metadata.json").compress_type == zipfile.ZIP_STORED
    assert list(new_meta) == [*old_meta, METADATA_KEY]
    assert {k: new_meta[k] for k in old_meta} == old_meta  # keras_version, date_saved
    assert new_meta[METADATA_KEY] == {"history": [first]}

    # Every other member's bytes are kept as they were: config.json whole, the weight
    # store except the patched dataset (its local header differs only in the CRC).
    old_raw, new_raw = raw_members(original), raw_members(out)
    assert new_raw["config.json"] == old_raw["config.json"]
    old_store, new_store = weight_store_bytes(original), weight_store_bytes(out)
    at = dataset_offset(old_store, dataset)
    expected = old_store[:at] + SOBEL.tobytes() + old_store[at + SOBEL.nbytes:]
    assert new_store == expected
    header = len(old_raw["model.weights.h5"]) - len(old_store)
    assert new_raw["model.weights.h5"][header:] == expected
    assert new_raw["model.weights.h5"][:14] == old_raw["model.weights.h5"][:14]
    assert new_raw["model.weights.h5"][18:header] == old_raw["model.weights.h5"][18:header]

    old_model = keras.saving.load_model(original, compile=True)
    new_model = keras.saving.load_model(out, compile=True)
    np.testing.assert_array_equal(new_model.get_layer("conv1").kernel.numpy(), SOBEL)
    assert int(new_model.optimizer.iterations.numpy()) == int(old_model.optimizer.iterations.numpy()) > 0
    old_state, new_state = optimizer_state(old_model), optimizer_state(new_model)
    assert len(new_state) > 2 and new_state.keys() == old_state.keys()
    for path, value in old_state.items():
        np.testing.assert_array_equal(new_state[path], value, err_msg=path)


def test_a_second_write_keeps_the_first_record(keras, samples: Path, tmp_path: Path) -> None:
    once, twice = tmp_path / "once.keras", tmp_path / "twice.keras"
    first = record(kernel_edit("conv1", {"init": "zeros", "seed": None}))
    write(ModelFile.from_path(samples / "tiny_cnn.keras"), "conv1", np.zeros((3, 3, 1, 4), np.float32), once, [first])

    second = record(kernel_edit("conv2", {"init": "he_normal", "seed": 7}), command="set once.keras --layer conv2")
    value = np.full((3, 3, 4, 8), 0.5, np.float32)
    source = ModelFile.from_path(once)
    write(source, "conv2", value, twice, read_history(source) + [second])

    assert read_history(ModelFile.from_path(twice)) == [first, second]
    with zipfile.ZipFile(once) as before, zipfile.ZipFile(twice) as after:
        assert after.testzip() is None
        assert after.read("config.json") == before.read("config.json")
        assert json.loads(after.read("metadata.json"))["keras_version"] == "3.15.1"
    assert raw_members(twice)["config.json"] == raw_members(once)["config.json"]
    model = keras.saving.load_model(twice, compile=True)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("conv2").kernel.numpy(), value)


def test_every_conv_class_archive_takes_a_record(keras, samples: Path, tmp_path: Path) -> None:
    original = samples / "all_convs.keras"
    source = ModelFile.from_path(original)
    layer = next(c for c in read_structure(source).conv_layers if c.class_name == "Conv2D")
    value = np.arange(np.prod(layer.variables[0].shape), dtype=np.float32).reshape(layer.variables[0].shape)
    out = tmp_path / "out.keras"
    history = [record(kernel_edit(layer.path, {"from": "donor.keras:conv", "sha256": "1" * 64}))]
    write(source, layer.path, value, out, history)

    assert read_history(ModelFile.from_path(out)) == history
    with zipfile.ZipFile(out) as after:
        assert after.testzip() is None
    assert raw_members(out)["config.json"] == raw_members(original)["config.json"]
    model = keras.saving.load_model(out, compile=False)
    np.testing.assert_array_equal(model.get_layer(layer.name).kernel.numpy(), value)


def test_a_model_from_stdin_is_written_as_from_its_path(samples: Path, tmp_path: Path) -> None:
    original = samples / "tiny_cnn.keras"
    history = [record(kernel_edit("conv1", {"file": "-", "sha256": "2" * 64}))]
    from_path, from_bytes = tmp_path / "path.keras", tmp_path / "bytes.keras"
    write(ModelFile.from_path(original), "conv1", SOBEL, from_path, history)
    write(ModelFile(label="<stdin>", data=original.read_bytes()), "conv1", SOBEL, from_bytes, history)
    assert from_bytes.read_bytes() == from_path.read_bytes()


def test_without_history_metadata_json_is_untouched(samples: Path, tmp_path: Path) -> None:
    original = samples / "tiny_cnn.keras"
    out = tmp_path / "out.keras"
    write(ModelFile.from_path(original), "conv1", SOBEL, out, None)
    assert out.stat().st_size == original.stat().st_size
    assert raw_members(out)["metadata.json"] == raw_members(original)["metadata.json"]


def rebuilt(original: Path, out: Path, *, metadata: bytes | None, deflate_metadata: bool = False,
            streamed: bool = False) -> Path:
    """``original``'s members re-zipped: other metadata, compressed, or streamed.

    ``streamed`` writes to an unseekable sink, so every member gets a data descriptor.
    """

    class Sink(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.data += bytes(b)
            return len(b)

    sink: Any = Sink() if streamed else io.BytesIO()
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(sink, "w") as target:
        for info in source.infolist():
            if info.filename == "metadata.json":
                if metadata is not None:
                    kind = zipfile.ZIP_DEFLATED if deflate_metadata else zipfile.ZIP_STORED
                    target.writestr(zipfile.ZipInfo("metadata.json"), metadata, compress_type=kind)
                continue
            with target.open(zipfile.ZipInfo(info.filename), "w") as member:
                member.write(source.read(info.filename))
    out.write_bytes(bytes(sink.data) if streamed else sink.getvalue())
    return out


def test_archives_keras_did_not_write_exactly_so_still_take_a_record(keras, samples: Path, tmp_path: Path) -> None:
    original = samples / "tiny_cnn.keras"
    meta = zipfile.ZipFile(original).read("metadata.json")
    cases = {
        "no_metadata": rebuilt(original, tmp_path / "a.keras", metadata=None),
        "deflated_metadata": rebuilt(original, tmp_path / "b.keras", metadata=meta, deflate_metadata=True),
        "data_descriptors": rebuilt(original, tmp_path / "c.keras", metadata=meta, streamed=True),
    }
    with zipfile.ZipFile(cases["data_descriptors"]) as archive:
        assert all(i.flag_bits & 0x08 for i in archive.infolist())
    history = [record(kernel_edit("conv1", {"init": "ones", "seed": None}))]
    for case, path in cases.items():
        out = tmp_path / f"{case}.out.keras"
        write(ModelFile.from_path(path), "conv1", SOBEL, out, history)
        with zipfile.ZipFile(out) as after:
            assert after.testzip() is None, case  # the weight store's descriptor CRC too
            new_meta = json.loads(after.read("metadata.json"))
        assert read_history(ModelFile.from_path(out)) == history, case
        if case != "no_metadata":
            assert new_meta["keras_version"] == "3.15.1", case
        assert raw_members(out)["config.json"] == raw_members(path)["config.json"], case
        if case == "data_descriptors":
            assert descriptor_crc(out, "model.weights.h5") == zipfile.ZipFile(out).getinfo("model.weights.h5").CRC
        model = keras.saving.load_model(out, compile=False)
        np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), SOBEL, err_msg=case)


def test_a_metadata_json_that_is_not_an_object_is_refused(samples: Path, tmp_path: Path) -> None:
    path = rebuilt(samples / "tiny_cnn.keras", tmp_path / "odd.keras", metadata=b"[1, 2]")
    out = tmp_path / "out.keras"
    with pytest.raises(ModelFileError, match="metadata.json is not a JSON object"):
        write(ModelFile.from_path(path), "conv1", SOBEL, out, [record()])


def test_an_encrypted_member_is_refused(samples: Path, tmp_path: Path) -> None:
    path = copy_into(tmp_path, samples / "tiny_cnn.keras", "enc.keras")
    source = ModelFile.from_path(path)
    plan = locate_patches(source, {"layers/conv2d/vars/0": SOBEL})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        start = archive.start_dir  # type: ignore[attr-defined]
    name_len = struct.unpack_from("<H", data, start + 28)[0]
    assert data[start + 46:start + 46 + name_len] == b"metadata.json"
    data[start + 8] |= 0x01  # the general-purpose flag's "encrypted" bit
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="encrypted"):
        apply_patches(source, plan, tmp_path / "out.keras", history=[record()])


def test_a_damaged_history_reads_as_what_parses(samples: Path, tmp_path: Path) -> None:
    good = {"tool": "conv-surgeon", "edits": []}
    cases: list[tuple[object, list[object]]] = [
        ("not an object", []),
        ({"history": "not a list"}, []),
        ({"history": [good, 3, "x", None]}, [good]),
    ]
    for index, (section, expected) in enumerate(cases):
        meta = json.dumps({"keras_version": "3.15.1", METADATA_KEY: section}).encode()
        path = rebuilt(samples / "tiny_cnn.keras", tmp_path / f"{index}.keras", metadata=meta)
        assert read_history(ModelFile.from_path(path)) == expected
    broken = rebuilt(samples / "tiny_cnn.keras", tmp_path / "broken.keras", metadata=b"{not json")
    assert read_history(ModelFile.from_path(broken)) == []


# --- .h5 ---------------------------------------------------------------------------------


def test_h5_record_is_a_root_attribute_and_every_dataset_is_kept(keras, samples: Path, tmp_path: Path) -> None:
    original = samples / "tiny_cnn.h5"
    out = tmp_path / "out.h5"
    first = record(kernel_edit("conv1", {"file": "sobel.npy", "sha256": "3" * 64}))
    dataset = write(ModelFile.from_path(original), "conv1", SOBEL, out, [first])

    assert read_history(ModelFile.from_path(out)) == [first]
    with h5py.File(original, "r") as before, h5py.File(out, "r") as after:
        assert json.loads(after.attrs[HISTORY_ATTRIBUTE]) == [first]
        assert set(after.attrs) == set(before.attrs) | {HISTORY_ATTRIBUTE}
        for key, value in before.attrs.items():
            assert after.attrs[key] == value, key
        old_sets, new_sets = h5_datasets(before), h5_datasets(after)
        old_offsets = {n: before[n].id.get_offset() for n in old_sets}
        new_offsets = {n: after[n].id.get_offset() for n in new_sets}
    assert new_offsets == old_offsets  # no dataset moved
    assert {n for n in old_sets if new_sets[n] != old_sets[n]} == {dataset}
    assert new_sets[dataset] == SOBEL.tobytes()
    # The bytes at each dataset's offset, read raw, are the ones h5py reports.
    raw = out.read_bytes()
    for name, value in new_sets.items():
        assert raw[new_offsets[name]:new_offsets[name] + len(value)] == value, name

    model = keras.saving.load_model(out, compile=True)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), SOBEL)


def test_h5_second_write_keeps_the_first_record(keras, samples: Path, tmp_path: Path) -> None:
    once, twice = tmp_path / "once.h5", tmp_path / "twice.h5"
    first = record(kernel_edit("conv1", {"init": "zeros", "seed": None}))
    write(ModelFile.from_path(samples / "tiny_cnn.h5"), "conv1", np.zeros((3, 3, 1, 4), np.float32), once, [first])
    source = ModelFile(label="<stdin>", data=once.read_bytes())
    second = record(kernel_edit("conv2", {"init": "he_normal", "seed": 1}), command="set --layer conv2")
    value = np.full((3, 3, 4, 8), -1.0, np.float32)
    write(source, "conv2", value, twice, read_history(source) + [second])

    assert read_history(ModelFile.from_path(twice)) == [first, second]
    model = keras.saving.load_model(twice, compile=True)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("conv2").kernel.numpy(), value)


def test_h5_damaged_history_reads_as_empty(samples: Path, tmp_path: Path) -> None:
    path = copy_into(tmp_path, samples / "tiny_cnn.h5", "odd.h5")
    with h5py.File(path, "r+") as h5:
        h5.attrs[HISTORY_ATTRIBUTE] = "{not json"
    assert read_history(ModelFile.from_path(path)) == []
