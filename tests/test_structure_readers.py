"""The two ways a structure and values are read: the pure-Python HDF5 reader in this
process, and h5py in a bounded worker. Wherever the first reads a file, its structure is
exactly the second's (layers, paths, classes, variables with shapes, dtypes and datasets,
files, unplaced datasets, optimizer state), and so is every variable's value (dtype,
shape, bytes); wherever it does not, h5py reads it, and a damaged file gets the outcome
it got before the pure reader existed.
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from zoo import ZooModel, zoo_model, zoo_models  # noqa: F401  (fixtures)

from conv_surgeon.errors import ConvSurgeonError
from conv_surgeon.model.structure import (ModelStructure, _outline_structure, _outline_variables, _parse_structure,
                                          _read_variables, read_raw_variables, read_structure, read_variables)
from conv_surgeon.store.archive import locate_member
from conv_surgeon.store.hdf5_tree import UnsupportedHDF5
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.store.worker import PARSE_TIMEOUT_S, run_bounded

ROOT = Path(__file__).resolve().parent.parent
# Legacy `.h5` files (a `model_config` or `layer_names` attribute): h5py reads them.
LEGACY_KINDS = {"time_distributed_h5", "bidirectional_h5", "custom_block_h5", "keras2_weights_only",
                "keras21_sequential", "keras2_tiny", "keras2_convs"}
COMMITTED = sorted((ROOT / "sample_models").glob("*.keras")) + sorted((ROOT / "sample_models").glob("*.h5")) + sorted(
    (ROOT / "tests" / "data").glob("*.h5")) + sorted((ROOT / "tests" / "data").glob("*.keras"))


def _through_h5py(source: ModelFile, timeout: float = PARSE_TIMEOUT_S) -> ModelStructure:
    """The structure as conv-surgeon read it before the pure reader: h5py, in a worker."""
    return run_bounded(lambda: _parse_structure(source), timeout, source.label)


def _both_agree(source: ModelFile, pure: bool) -> None:
    expected = _through_h5py(source)
    if pure:
        assert _outline_structure(source) == expected
    else:
        with pytest.raises(UnsupportedHDF5):
            _outline_structure(source)
    assert read_structure(source) == expected


def _values_through_h5py(source: ModelFile, timeout: float = PARSE_TIMEOUT_S) -> dict[str, np.ndarray]:
    """Every variable's value as conv-surgeon read it before the pure reader."""
    structure = read_structure(source)
    variables = [v for layer in structure.layers for v in layer.variables]
    return run_bounded(lambda: _read_variables(source, variables), timeout, source.label)


def _same_values(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(found) == list(expected)
    for key, value in expected.items():
        assert (found[key].dtype, found[key].shape) == (value.dtype, value.shape), key
        assert found[key].tobytes() == value.tobytes(), key
        assert found[key].flags.writeable, key  # as h5py's arrays: callers may edit them


def _values_agree(source: ModelFile, pure: bool) -> None:
    expected = _values_through_h5py(source)
    structure = read_structure(source)
    variables = [v for layer in structure.layers for v in layer.variables]
    assert variables, "a model without variables checks nothing"
    if pure:
        _same_values(_outline_variables(source, variables), expected)
    else:
        with pytest.raises(UnsupportedHDF5):
            _outline_variables(source, variables)
    _same_values(read_variables(source, variables), expected)
    raw = read_raw_variables(source, variables)  # the bytes `show` draws from, without numpy
    assert list(raw) == list(expected)
    for key, value in expected.items():
        assert (raw[key].data, raw[key].dtype, raw[key].shape) == (value.tobytes(), str(value.dtype), value.shape), key


def test_every_kind_of_save_reads_the_same_through_both(zoo_model: ZooModel) -> None:
    _both_agree(ModelFile.from_path(zoo_model.path), pure=zoo_model.kind not in LEGACY_KINDS)
    _values_agree(ModelFile.from_path(zoo_model.path), pure=zoo_model.kind not in LEGACY_KINDS)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_every_committed_model_reads_the_same_through_both(path: Path) -> None:
    with h5py.File(io.BytesIO(_store_bytes(path)), "r") as h5:
        legacy = "model_config" in h5.attrs or "layer_names" in h5.attrs
    _both_agree(ModelFile.from_path(path), pure=not legacy)
    _values_agree(ModelFile.from_path(path), pure=not legacy)


def _store_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return archive.read("model.weights.h5")
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["bf16", "weights_only", "custom_block"])
def test_bytes_from_stdin_read_the_same_through_both(zoo_models: Any, kind: str) -> None:
    path = zoo_models(kind).path
    _both_agree(ModelFile.from_stream(io.BytesIO(path.read_bytes()), "<stdin>"), pure=True)
    _values_agree(ModelFile.from_stream(io.BytesIO(path.read_bytes()), "<stdin>"), pure=True)


def test_a_weights_file_read_with_config_goes_through_h5py(zoo_models: Any) -> None:
    model = zoo_models("weights_only")
    source = ModelFile.from_path(model.path, config=model.extra["config"])
    _both_agree(source, pure=False)
    assert read_structure(source).config_source == str(model.extra["config"])


# --- files the pure reader leaves to h5py ----------------------------------------------


def _rewritten(source: Path, target: Path, **options: Any) -> Path:
    """A copy of a Keras weight store written again by h5py, with other file options or
    dataset creation options."""
    dataset_options = options.pop("datasets", {})
    with h5py.File(source, "r") as old, h5py.File(target, "w", **options) as new:
        def copy(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group):
                made = new.require_group(name)
            else:
                made = new.create_dataset(name, data=obj[()], **dataset_options)
            for key, value in obj.attrs.items():
                made.attrs[key] = value

        old.visititems(copy)
    return target


def _layers(structure: ModelStructure) -> list[tuple[str, str, tuple[tuple[str, tuple[int, ...], str], ...]]]:
    return [(layer.path, layer.class_name, tuple((v.name, v.shape, v.dtype) for v in layer.variables))
            for layer in structure.layers]


@pytest.mark.parametrize("options", [
    {"libver": "latest"},
    {"track_order": True},
    {"datasets": {"compression": "gzip"}},
], ids=["libver_latest", "track_order", "gzip_datasets"])
def test_a_store_beyond_the_pure_reader_is_read_through_h5py(zoo_models: Any, tmp_path: Path,
                                                             options: dict[str, Any]) -> None:
    model = zoo_models("weights_only")
    copy = _rewritten(model.path, tmp_path / "copy.weights.h5", **options)
    _both_agree(ModelFile.from_path(copy), pure=False)
    _values_agree(ModelFile.from_path(copy), pure=False)
    assert _layers(read_structure(ModelFile.from_path(copy))) == _layers(read_structure(ModelFile.from_path(model.path)))


def test_inspect_of_a_store_beyond_the_pure_reader(cli, zoo_models: Any, tmp_path: Path) -> None:
    model = zoo_models("weights_only")
    copy = _rewritten(model.path, tmp_path / "copy.weights.h5", libver="latest")
    assert cli("inspect", copy, "--all", "--json").stdout == cli("inspect", model.path, "--all", "--json").stdout.replace(
        str(model.path), str(copy))


# --- damaged files --------------------------------------------------------------------


def _outcome(read: Any) -> tuple[Any, ...]:
    try:
        return ("read", read())
    except ConvSurgeonError as exc:
        return ("error", type(exc).__name__, str(exc))


def test_a_truncated_store_gives_the_error_it_gave_before(cli, zoo_models: Any, tmp_path: Path) -> None:
    data = zoo_models("weights_only").path.read_bytes()
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(data[: len(data) // 2])
    source = ModelFile.from_path(cut)
    before = _outcome(lambda: _through_h5py(source))
    assert before[0] == "error" and "truncated" in before[2]
    assert _outcome(lambda: read_structure(source)) == before
    result = cli("inspect", cut)
    assert result.exit_code == 1 and result.stderr == f"Error: {before[2]}\n"


# One of the sweep's files (damaged13) makes HDF5 spin: both readers give up on it after
# this long, each burning a core meanwhile. Reading any of the others takes about 0.05 s.
SPIN_LIMIT_S = 2


@pytest.mark.slow
def test_damaged_stores_read_as_they_read_before(tmp_path: Path) -> None:
    """Bytes changed at random inside a .keras's weight store: what read_structure gives
    (a structure, or an error and its message) is what h5py alone gave."""
    model = ROOT / "sample_models" / "tiny_cnn.keras"
    original = model.read_bytes()
    with open(model, "rb") as raw, zipfile.ZipFile(raw) as archive:
        member = locate_member(archive, raw, "model.weights.h5", str(model))
    rng = random.Random(5)
    outcomes = set()
    for i in range(60):
        damaged = bytearray(original)
        for _ in range(rng.choice([1, 2, 5, 20])):
            damaged[rng.randrange(member.data_offset, member.data_offset + member.size)] = rng.randrange(256)
        path = tmp_path / f"damaged{i}.keras"
        path.write_bytes(bytes(damaged))
        source = ModelFile.from_path(path)
        before = _outcome(lambda: _through_h5py(source, timeout=SPIN_LIMIT_S))
        assert _outcome(lambda: read_structure(source, timeout=SPIN_LIMIT_S)) == before, path
        outcomes.add(before[0])
        if before[0] == "read":  # and the values: the same bytes, or h5py's error
            variables = [v for layer in before[1].layers for v in layer.variables]
            values = _outcome(lambda: run_bounded(lambda: _read_variables(source, variables), SPIN_LIMIT_S,
                                                  source.label))
            found = _outcome(lambda: read_variables(source, variables, timeout=SPIN_LIMIT_S))
            assert found[0] == values[0], path
            if values[0] == "read":
                _same_values(found[1], values[1])
            else:
                assert found == values, path
    assert outcomes == {"read", "error"}


def test_a_superblock_extension_address_in_a_version_0_superblock_is_h5pys_error(tmp_path: Path) -> None:
    """libhdf5 refuses a v0 superblock whose extension address (the field after the base
    address) is defined; the pure reader once ignored it and read such a file."""
    model = ROOT / "sample_models" / "tiny_cnn.keras"
    data = bytearray(model.read_bytes())
    with open(model, "rb") as raw, zipfile.ZipFile(raw) as archive:
        member = locate_member(archive, raw, "model.weights.h5", str(model))
    field = member.data_offset + 32  # signature, 8 version bytes, two K values, flags, base address
    assert data[field:field + 8] == b"\xff" * 8  # undefined, as h5py writes it
    data[field:field + 8] = (96).to_bytes(8, "little")
    path = tmp_path / "extension.keras"
    path.write_bytes(bytes(data))
    source = ModelFile.from_path(path)
    with pytest.raises(UnsupportedHDF5, match="extension"):
        _outline_structure(source)
    before = _outcome(lambda: _through_h5py(source))
    assert before[0] == "error" and "extension" in before[2]
    assert _outcome(lambda: read_structure(source)) == before


def test_a_string_attribute_of_a_damaged_character_set_is_a_damaged_file(cli, tmp_path: Path) -> None:
    """h5py raises TypeError ("Unknown string encoding") for such an attribute: bad input,
    one line and exit 1, not an internal error (fuzzing found it)."""
    model = ROOT / "sample_models" / "tiny_cnn.keras"
    data = bytearray(model.read_bytes())
    with open(model, "rb") as raw, zipfile.ZipFile(raw) as archive:
        member = locate_member(archive, raw, "model.weights.h5", str(model))
    # A variable-length UTF-8 string datatype: class 9 version 1, string, charset 1, 16 bytes.
    at = data.index(b"\x19\x01\x01\x00\x10\x00\x00\x00", member.data_offset)
    data[at + 2] = 14
    path = tmp_path / "charset.keras"
    path.write_bytes(bytes(data))
    result = cli("inspect", path)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith(f"Error: {path}: the HDF5 weight store is damaged (")
    assert "Unknown string encoding" in result.stderr and len(result.stderr.splitlines()) == 1
