"""Weight sources: real .npy, .npz and HDF5 files written to tmp_path, and stdin bytes."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest

from conv_surgeon.errors import SourceError
from conv_surgeon.sources import LoadedArray, load_source, split_source_spec

KERNEL = np.arange(36, dtype=np.float32).reshape(3, 3, 1, 4)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def error_of(spec: str, stdin: io.BytesIO | None = None) -> str:
    with pytest.raises(SourceError) as caught:
        load_source(spec, stdin=stdin)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work inside tmp_path so that specs read as the user would type them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_modules_import_without_tensorflow_or_keras() -> None:
    code = (
        "import sys\n"
        "import conv_surgeon.sources, conv_surgeon.assign, conv_surgeon.initializers\n"
        "import conv_surgeon.layout\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_npy(here: Path) -> None:
    np.save("k.npy", KERNEL)
    loaded = load_source("k.npy")
    assert isinstance(loaded, LoadedArray)
    np.testing.assert_array_equal(loaded.array, KERNEL)
    assert loaded.origin == "k.npy"
    assert loaded.sha256 == hashlib.sha256(Path("k.npy").read_bytes()).hexdigest()


def test_format_is_told_by_content_not_extension(here: Path) -> None:
    Path("weights.bin").write_bytes(npy_bytes(KERNEL))
    np.testing.assert_array_equal(load_source("weights.bin").array, KERNEL)


def test_npz_with_key_and_single_member(here: Path) -> None:
    np.savez("bank.npz", w1=KERNEL, w2=KERNEL * 2)
    np.testing.assert_array_equal(load_source("bank.npz:w2").array, KERNEL * 2)
    np.testing.assert_array_equal(load_source("bank.npz:w2.npy").array, KERNEL * 2)
    np.savez_compressed("one.npz", only=KERNEL)
    np.testing.assert_array_equal(load_source("one.npz").array, KERNEL)


def test_npz_without_key_lists_the_keys(here: Path) -> None:
    np.savez("bank.npz", w1=KERNEL, w2=KERNEL)
    message = error_of("bank.npz")
    assert "holds 2 arrays" in message
    assert "'bank.npz:KEY'" in message
    assert "w1, w2" in message


def test_npz_wrong_key_suggests_close_matches(here: Path) -> None:
    np.savez("bank.npz", conv1_kernel=KERNEL, conv2_kernel=KERNEL, bias=KERNEL[0, 0, 0])
    message = error_of("bank.npz:conv1_kernal")
    assert "has no array 'conv1_kernal'" in message
    assert "did you mean 'conv1_kernel'" in message
    assert "available: conv1_kernel, conv2_kernel, bias" in message


def test_zip_without_npy_members_is_refused(here: Path) -> None:
    import zipfile

    with zipfile.ZipFile("model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    message = error_of("model.keras")
    assert "zip archive without .npy members" in message


def test_corrupt_npz(here: Path) -> None:
    np.savez("bank.npz", w1=KERNEL)
    data = Path("bank.npz").read_bytes()
    Path("cut.npz").write_bytes(data[: len(data) // 2])
    message = error_of("cut.npz")
    assert "truncated or corrupt .npz" in message


def test_hdf5_dataset_path_and_single_dataset(here: Path) -> None:
    with h5py.File("w.h5", "w") as h5:
        h5["group/kernel"] = KERNEL
        h5["group/bias"] = np.zeros(4, np.float32)
    np.testing.assert_array_equal(load_source("w.h5:group/kernel").array, KERNEL)
    np.testing.assert_array_equal(load_source("w.h5:/group/kernel").array, KERNEL)
    with h5py.File("one.hdf5", "w") as h5:
        h5["deep/inside/only"] = KERNEL
    np.testing.assert_array_equal(load_source("one.hdf5").array, KERNEL)


def test_hdf5_keras2_dataset_name_with_colon(here: Path) -> None:
    with h5py.File("model.h5", "w") as h5:
        h5["model_weights/conv1/conv1/kernel:0"] = KERNEL
        h5["model_weights/conv1/conv1/bias:0"] = np.ones(4, np.float32)
    loaded = load_source("model.h5:model_weights/conv1/conv1/kernel:0")
    np.testing.assert_array_equal(loaded.array, KERNEL)


def test_hdf5_group_key_lists_datasets_below(here: Path) -> None:
    with h5py.File("w.h5", "w") as h5:
        h5["layers/conv2d/vars/0"] = KERNEL
        h5["layers/conv2d/vars/1"] = np.zeros(4, np.float32)
        h5["other"] = np.zeros(1)
    message = error_of("w.h5:layers/conv2d")
    assert "'layers/conv2d' in 'w.h5' is a group, not a dataset" in message
    assert "layers/conv2d/vars/0, layers/conv2d/vars/1" in message
    assert "other" not in message


def test_hdf5_wrong_path_and_no_key(here: Path) -> None:
    with h5py.File("w.h5", "w") as h5:
        h5["group/kernel"] = KERNEL
        h5["group/bias"] = np.zeros(4, np.float32)
    message = error_of("w.h5:group/kernal")
    assert "has no dataset 'group/kernal'" in message
    assert "did you mean 'group/kernel'" in message
    message = error_of("w.h5")
    assert "holds 2 datasets" in message
    assert "group/bias, group/kernel" in message


def test_hdf5_bfloat16_opaque_storage(here: Path) -> None:
    values = np.array([0.5, -1.25, 3.0, 1e-3], dtype=ml_dtypes.bfloat16)
    with h5py.File("bf.h5", "w") as h5:
        dataset = h5.create_dataset("vars/0", data=values)
        dataset.attrs["dtype"] = "bfloat16"
    loaded = load_source("bf.h5").array
    assert loaded.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(loaded, values)


def test_hdf5_truncated(here: Path) -> None:
    with h5py.File("w.h5", "w") as h5:
        h5["kernel"] = np.zeros((64, 64), np.float32)
    data = Path("w.h5").read_bytes()
    Path("cut.h5").write_bytes(data[:600])
    message = error_of("cut.h5")
    assert "'cut.h5' is a truncated or corrupt HDF5 file" in message


def test_pickled_npy_is_refused_without_unpickling(here: Path) -> None:
    np.save("evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    message = error_of("evil.npy")
    assert "pickled object array" in message
    assert "never unpickles" in message


def test_raw_pickle_is_an_unknown_format(here: Path) -> None:
    Path("evil.npy").write_bytes(pickle.dumps(KERNEL))
    message = error_of("evil.npy")
    assert "not a .npy, .npz or HDF5 file" in message
    assert "accepted: file.npy, file.npz:KEY, file.h5:PATH" in message


def test_pickled_npz_member_is_refused(here: Path) -> None:
    np.savez("bank.npz", evil=np.array([{"a": 1}], dtype=object))
    assert "pickled object array" in error_of("bank.npz:evil")


@pytest.mark.parametrize("cut", [8, 40, -3])
def test_truncated_npy(here: Path, cut: int) -> None:
    Path("k.npy").write_bytes(npy_bytes(KERNEL)[:cut])
    message = error_of("k.npy")
    assert "source 'k.npy'" in message
    assert "npy" in message


def test_empty_file_missing_file_and_directory(here: Path) -> None:
    Path("empty.npy").write_bytes(b"")
    assert "'empty.npy' is empty" in error_of("empty.npy")
    assert "file 'nothere.npy' not found" in error_of("nothere.npy")
    assert "file 'nothere.npz' not found" in error_of("nothere.npz:w1")
    os.mkdir("weights.npy")
    assert "'weights.npy' is a directory" in error_of("weights.npy")


def test_key_on_a_npy_is_refused(here: Path) -> None:
    np.save("k.npy", KERNEL)
    message = error_of("k.npy:kernel")
    assert "takes no key" in message and "'k.npy'" in message


def test_path_containing_colons(here: Path) -> None:
    os.mkdir("run:3")
    np.save("run:3/k.npy", KERNEL)
    np.testing.assert_array_equal(load_source("run:3/k.npy").array, KERNEL)
    np.savez("run:3/bank.npz", a=KERNEL, b=KERNEL * 3)
    np.testing.assert_array_equal(load_source("run:3/bank.npz:b").array, KERNEL * 3)
    assert split_source_spec("run:3/bank.npz:b") == ("run:3/bank.npz", "b")


def test_stdin() -> None:
    data = npy_bytes(KERNEL)
    loaded = load_source("-", stdin=io.BytesIO(data))
    np.testing.assert_array_equal(loaded.array, KERNEL)
    assert loaded.origin == "stdin"
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()


def test_stdin_errors() -> None:
    assert "stdin is empty" in error_of("-", io.BytesIO(b""))
    buffer = io.BytesIO()
    np.savez(buffer, w=KERNEL)
    message = error_of("-", io.BytesIO(buffer.getvalue()))
    assert "stdin holds a zip (.npz) archive" in message
    assert "only .npy bytes" in message
    assert "not a valid .npy file" in error_of("-", io.BytesIO(b"\x93NUMPY\x01"))
