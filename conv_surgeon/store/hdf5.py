"""The HDF5 side of every weight store: opening over file objects, decoding datasets,
and the byte geometry of a dataset (where its bytes lie, what bytes a value becomes)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import ModelFileError

if TYPE_CHECKING:
    import h5py
    import numpy as np

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@contextmanager
def h5_file(handle: BinaryIO | io.RawIOBase, label: str) -> Iterator[h5py.File]:
    """An HDF5 file over a Python file object (a file, bytes, or an archive's
    :class:`~conv_surgeon.store.archive.Window`), read-only, closed before the object."""
    import h5py

    try:
        h5 = h5py.File(handle, "r")
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"{label}: the HDF5 weight store cannot be read ({exc}); the file may be "
            "truncated or corrupt"
        ) from None
    # Close the HDF5 file before the Python file object under it (DESIGN §3).
    try:
        yield h5
    finally:
        h5.close()


@contextmanager
def damaged_store_is_an_error(label: str) -> Iterator[None]:
    """h5py's errors on a damaged file (bad heap signature, truncated buffers, missing
    objects) are bad input, not bugs: one clear line, exit 1."""
    try:
        yield
    except ModelFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(
            f"{label}: the HDF5 weight store is damaged ({' '.join(str(exc).split())}); "
            "restore the file from a good copy"
        ) from None


def attr_text(value: Any) -> str:
    """An HDF5 string attribute (or one item of a list attribute) as text."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def attr_list(group: h5py.Group | h5py.File, name: str) -> list[str]:
    """A list attribute that Keras may have split into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [attr_text(v) for v in values]


def dataset_dtype(dataset: h5py.Dataset) -> str:
    if dataset.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        return "bfloat16"
    return str(dataset.dtype)


def read_dataset(dataset: h5py.Dataset) -> np.ndarray:
    """A dataset as numpy, bfloat16 records decoded through ml_dtypes."""
    import numpy as np

    value = dataset[()]
    if dataset_dtype(dataset) == "bfloat16":
        import ml_dtypes

        value = np.frombuffer(np.ascontiguousarray(value).tobytes(), dtype=ml_dtypes.bfloat16)
        value = value.reshape(dataset.shape)
    return np.asarray(value)


def encode_for_dataset(dataset: h5py.Dataset, value: np.ndarray, label: str) -> bytes:
    """The bytes the dataset holds for ``value`` (bfloat16 as Keras's opaque records)."""
    import numpy as np

    if dataset_dtype(dataset) == "bfloat16":
        import ml_dtypes

        raw = np.ascontiguousarray(value, dtype=ml_dtypes.bfloat16).tobytes()
    else:
        raw = np.ascontiguousarray(value, dtype=dataset.dtype).tobytes()
    if value.shape != dataset.shape or len(raw) != dataset.id.get_storage_size():
        raise ModelFileError(
            f"{label}: dataset {dataset.name} holds {dataset.shape} "
            f"({dataset.id.get_storage_size()} bytes), refusing to write {value.shape}"
        )
    return raw


def contiguous_offset(dataset: h5py.Dataset, label: str) -> int:
    """Where the dataset's bytes start in its HDF5 file; chunked or filtered data is refused."""
    import h5py

    plist = dataset.id.get_create_plist()
    offset = dataset.id.get_offset()
    if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters() or offset is None:
        raise ModelFileError(
            f"{label}: dataset {dataset.name} is stored chunked or compressed, which Keras "
            "does not write; re-save the model with Keras and try again"
        )
    return int(offset)
