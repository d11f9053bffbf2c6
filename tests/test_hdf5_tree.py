"""The pure-Python HDF5 reader against h5py, on files real Keras and real h5py wrote.

Whatever it reads must be what h5py reads (the walk, every group's ``name``, every
dataset's shape and dtype); whatever it does not read exactly it refuses
with :class:`UnsupportedHDF5`, and on damaged or hostile bytes it never raises anything
else and never loops.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import ml_dtypes
import numpy as np
import pytest

from zoo import ZooModel, zoo_model, zoo_models  # noqa: F401  (fixtures)

from conv_surgeon.errors import ModelFileError
from conv_surgeon.store.hdf5 import DatasetEntry, GroupEntry, walk_h5py
from conv_surgeon.store.hdf5_tree import HDF5Tree, UnsupportedHDF5

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((ROOT / "sample_models").glob("*.keras")) + sorted((ROOT / "sample_models").glob("*.h5")) + sorted(
    (ROOT / "tests" / "data").glob("*.h5")) + sorted((ROOT / "tests" / "data").glob("*.keras"))


def _stores(path: Path) -> Iterator[tuple[str, bytes]]:
    """The bytes of every HDF5 file of a save: an archive's member, a folder's or a
    shard map's files, or the file itself."""
    if path.is_dir():
        for file in sorted(path.rglob("*.h5")):
            yield str(file), file.read_bytes()
    elif path.name.endswith(".weights.json"):
        for shard in sorted(path.parent.glob(path.name[: -len(".weights.json")] + "_*.weights.h5")):
            yield str(shard), shard.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            yield f"{path}:model.weights.h5", archive.read("model.weights.h5")
    else:
        yield str(path), path.read_bytes()


def _entry(path: str, entry: GroupEntry | DatasetEntry) -> tuple[Any, ...]:
    if entry.kind == "group":
        return (path, "group", entry.text_attribute("name"))
    return (path, "dataset", entry.shape, entry.dtype)


def _by_h5py(data: bytes) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    with h5py.File(io.BytesIO(data), "r") as h5:
        walk_h5py(h5, lambda path, entry: found.append(_entry(path, entry)))
    return found


def _by_tree(data: bytes) -> list[tuple[Any, ...]]:
    return [_entry(path, entry) for path, entry in HDF5Tree(data).walk()]


def _same_as_h5py(data: bytes) -> None:
    assert _by_tree(data) == _by_h5py(data)


def test_every_store_of_the_zoo_reads_as_h5py_reads_it(zoo_model: ZooModel) -> None:
    # Legacy .h5 files too: the structure walk leaves them to h5py, the HDF5 is the same subset.
    stores = list(_stores(zoo_model.path))
    assert stores
    for _, data in stores:
        _same_as_h5py(data)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_every_committed_model_reads_as_h5py_reads_it(path: Path) -> None:
    for _, data in _stores(path):
        _same_as_h5py(data)


def _written(tmp_path: Path, build: Any, **options: Any) -> bytes:
    path = tmp_path / "f.h5"
    with h5py.File(path, "w", **options) as h5:
        build(h5)
    return path.read_bytes()


def test_datatypes_shapes_and_layouts_h5py_writes(tmp_path: Path) -> None:
    def build(h5: h5py.File) -> None:
        group = h5.create_group("layers/x/vars")
        group.attrs["name"] = "x"
        for i, dtype in enumerate(["f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?"]):
            group.create_dataset(str(i), data=np.arange(6).reshape(2, 3).astype(dtype))
        group.create_dataset("12", data=np.float32(1))  # scalar
        group.create_dataset("13", data=np.zeros((0, 4), "f4"))  # nothing stored
        bf16 = group.create_dataset("14", data=np.zeros(3, ml_dtypes.bfloat16))
        bf16.attrs["dtype"] = "bfloat16"  # as Keras marks it
        group.create_dataset("15", data=np.zeros(3, "V2"))  # opaque, unmarked: void16
        group.create_dataset("16", data=np.zeros(3, "f4"), track_times=True)
        compact = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        compact.set_layout(h5py.h5d.COMPACT)
        h5py.h5d.create(group.id, b"17", h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((4,)), dcpl=compact)

    data = _written(tmp_path, build)
    _same_as_h5py(data)
    dtypes = {path.rpartition("/")[2]: entry.dtype for path, entry in HDF5Tree(data).walk() if entry.kind == "dataset"}
    assert [dtypes[str(i)] for i in range(16)] == [
        "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
        "uint64", "bool", "float32", "float32", "bfloat16", "void16"]


def test_string_attributes_of_every_kind_h5py_writes(tmp_path: Path) -> None:
    values = ["plain", "ünïcödé", "x" * 70000, np.bytes_(b"fixed"),
              np.array(["first", "second"], dtype=h5py.string_dtype()), np.array([b"fa", b"fb"])]

    def build(h5: h5py.File) -> None:
        for i, value in enumerate(values):
            h5.create_group(f"layers/l{i}/vars").attrs["name"] = value
        many = h5.create_group("layers/many/vars")
        for i in range(40):  # the earliest format keeps them all in the header
            many.attrs[f"a{i}"] = "v" * 100
        many.attrs["name"] = "many"

    data = _written(tmp_path, build)
    _same_as_h5py(data)
    names = [entry.text_attribute("name") for path, entry in HDF5Tree(data).walk() if path.endswith("/vars")]
    assert names == ["plain", "ünïcödé", "x" * 70000, "fixed", "first", "fa", "many"]


def test_a_group_of_thousands_members_spans_a_deep_b_tree(tmp_path: Path) -> None:
    data = _written(tmp_path, lambda h5: [h5.create_group(f"layers/l{i}/vars") for i in range(3000)])
    _same_as_h5py(data)


# --- what it leaves to h5py ------------------------------------------------------------


def _two_names(h5: h5py.File) -> None:
    h5["again"] = h5.create_group("layers/x")


def _committed_type(h5: h5py.File) -> None:
    h5["t"] = np.dtype("f4")
    h5.create_dataset("d", data=np.zeros(3), dtype=h5["t"])


@pytest.mark.parametrize("build, options", [
    (lambda h5: h5.create_group("layers"), {"libver": "latest"}),
    (lambda h5: h5.create_group("layers"), {"libver": ("v110", "latest")}),
    (lambda h5: h5.create_group("layers"), {"track_order": True}),
    (lambda h5: h5.create_group("layers/ünï"), {}),  # h5py links non-ASCII names the new way
    (lambda h5: h5.attrs.create("e", h5py.Empty("f4")), {}),  # a null dataspace
    (lambda h5: h5.__setitem__("e", h5py.ExternalLink("other.h5", "/")), {}),
    (_two_names, {}),
    (_committed_type, {}),
], ids=["latest", "v110", "track_order", "unicode_link", "null_attribute", "external_link",
        "two_names", "committed_type"])
def test_what_it_does_not_read_is_refused_before_anything_is_read(tmp_path: Path, build: Any,
                                                                    options: dict[str, Any]) -> None:
    data = _written(tmp_path, build, **options)
    with pytest.raises(UnsupportedHDF5):
        for _ in HDF5Tree(data).walk():
            pass


@pytest.mark.parametrize("create", [
    lambda g: g.create_dataset("0", data=np.zeros((30, 30), "f4"), chunks=(10, 10), compression="gzip"),
    lambda g: g.create_dataset("0", data=np.zeros(3, "f4"), maxshape=(None,)),  # chunked
    lambda g: g.create_dataset("0", data=np.zeros(3, ">f4")),
    lambda g: g.create_dataset("0", data=np.zeros(3, [("a", "f4")])),
    lambda g: g.create_dataset("0", data=np.zeros(3, "S4")),
    lambda g: g.create_dataset("0", data=np.zeros(2, "i1"), dtype=h5py.enum_dtype({"A": 0, "B": 1}, basetype="i1")),
], ids=["gzip", "chunked", "big_endian", "compound", "fixed_string", "enum"])
def test_a_dataset_it_does_not_read_is_refused_when_asked_for(tmp_path: Path, create: Any) -> None:
    data = _written(tmp_path, lambda h5: create(h5.create_group("layers/x/vars")))
    (path, dataset), = [(p, e) for p, e in HDF5Tree(data).walk() if e.kind == "dataset"]
    assert path == "layers/x/vars/0"  # the walk itself is fine: h5py walks it the same way
    with pytest.raises(UnsupportedHDF5):
        dataset.shape, dataset.dtype


def test_an_attribute_that_is_no_string_is_refused(tmp_path: Path) -> None:
    data = _written(tmp_path, lambda h5: h5.create_group("layers/x/vars").attrs.__setitem__("name", 5))
    vars_group = [e for p, e in HDF5Tree(data).walk() if p.endswith("vars")][0]
    with pytest.raises(UnsupportedHDF5):
        vars_group.text_attribute("name")  # h5py's walk makes it "5"


# --- what nobody reads: refused for good, not left to h5py -------------------------------


def _stored_elsewhere(h5: h5py.File) -> None:
    secret = Path(h5.filename).parent / "secret.bin"
    secret.write_bytes(b"s" * 12)
    h5.create_group("layers/x/vars").create_dataset("0", (3,), "f4", external=[(str(secret), 0, 12)])


def _virtual(h5: h5py.File) -> None:
    layout = h5py.VirtualLayout((3,), "f4")
    layout[...] = h5py.VirtualSource(str(Path(h5.filename).parent / "other.h5"), "data", (3,))
    h5.create_group("layers/x/vars").create_virtual_dataset("0", layout)


def _soft_link(h5: h5py.File) -> None:
    h5.create_group("layers/x")
    h5["layers/alias"] = h5py.SoftLink("/layers/x")


@pytest.mark.parametrize("build, refusal", [
    (_stored_elsewhere, r"f.h5: dataset layers/x/vars/0: its data is stored in another file \(\S+secret.bin\)"),
    (_virtual, "f.h5: dataset layers/x/vars/0 is a virtual dataset"),
    (_soft_link, "f.h5: layers/alias is a soft link to /layers/x,"),
    (lambda h5: h5.create_group("layers/x/vars").create_dataset("0", (100000, 100000, 3, 64), "f4"),
     r"f.h5: dataset layers/x/vars/0: declares 7.7 TB \(shape \(100000, 100000, 3, 64\) float32\) but the "
     "file stores 0 bytes for it"),
], ids=["stored_elsewhere", "virtual", "soft_link", "never_stored"])
def test_what_keras_refuses_and_what_a_file_cannot_hold_are_refused_for_good(tmp_path: Path, build: Any,
                                                                             refusal: str) -> None:
    data = _written(tmp_path, build)
    with pytest.raises(ModelFileError, match=refusal):
        _read_all(HDF5Tree(data, label="f.h5"))


# --- damaged and hostile bytes -----------------------------------------------------------


def _tiny_store() -> bytes:
    with zipfile.ZipFile(ROOT / "sample_models" / "tiny_cnn.keras") as archive:
        return archive.read("model.weights.h5")


def _read_all(tree: HDF5Tree) -> None:
    for _, entry in tree.walk():
        if entry.kind == "group":
            entry.text_attribute("name")
        else:
            entry.shape, entry.dtype


def _refused(data: bytes) -> bool:
    try:
        _read_all(HDF5Tree(data))
    except (UnsupportedHDF5, ModelFileError):  # left to h5py, or refused for good
        return True
    return False


def test_a_store_cut_short_anywhere_is_refused() -> None:
    data = _tiny_store()
    for end in range(0, len(data), 97):
        assert _refused(data[:end]), end


def test_random_damage_is_read_or_refused_never_anything_else() -> None:
    data = _tiny_store()
    rng = random.Random(11)
    outcomes = set()
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.choice([1, 3, 10])):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        outcomes.add(_refused(bytes(damaged)))  # any other exception fails the test
    assert outcomes == {True, False}


def _patched(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<Q", value) + data[offset + 8:]


ROOT_HEADER = 96  # where h5py puts the root group's object header


def test_a_link_back_to_the_root_is_a_cycle_refused() -> None:
    data = _tiny_store()
    entry = data.index(b"SNOD") + 8  # the first symbol table entry
    assert _refused(_patched(data, entry + 8, ROOT_HEADER))


def test_a_continuation_block_that_leads_back_is_refused() -> None:
    data = _tiny_store()
    continuation = data.index(struct.pack("<HHB3x", 0x10, 16, 0), ROOT_HEADER)
    assert _refused(_patched(data, continuation + 8, ROOT_HEADER))


def test_a_local_heap_free_list_that_loops_is_refused() -> None:
    # libhdf5 itself would follow this list forever.
    data = _tiny_store()
    heap = data.index(b"HEAP")
    free, data_address = struct.unpack_from("<QQ", data, heap + 16)
    assert free != 1  # the heap has a free block
    assert _refused(_patched(data, data_address + free, free))


def test_a_b_tree_node_that_is_its_own_child_is_refused() -> None:
    data = _tiny_store()
    node = data.index(b"TREE")
    assert _refused(_patched(data, node + 24 + 8, node))  # its first child
