"""The HDF5 side of every weight store through h5py: opening over file objects (and
refusing what an untrusted file may not hold, :mod:`.untrusted`), walking the objects,
decoding datasets, and the byte geometry of a dataset (where its bytes lie, what bytes a
value becomes).

A structure read needs only the walk (:func:`walk_h5py`); :mod:`.hdf5_tree` does it in
pure Python for the files it reads exactly, and both hand out the same kinds of entries
(:class:`GroupEntry`, :class:`DatasetEntry`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol, Union

from ..errors import ConvSurgeonError, ModelFileError
from . import untrusted

if TYPE_CHECKING:
    import h5py
    import numpy as np

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@contextmanager
def h5_file(handle: BinaryIO | io.RawIOBase, label: str) -> Iterator[h5py.File]:
    """An untrusted HDF5 file over a Python file object (a file, bytes, or an archive's
    :class:`~conv_surgeon.store.archive.Window`), read-only, closed before the object;
    refused if it holds what Keras refuses to read (:func:`refuse_untrusted_content`)."""
    import h5py

    try:
        h5 = h5py.File(handle, "r")
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"{label}: the HDF5 weight store cannot be read ({exc}); the file may be "
            "truncated or corrupt"
        ) from None
    # Close the HDF5 file before the Python file object under it, or the process can
    # crash at exit.
    try:
        with damaged_store_is_an_error(label):
            refuse_untrusted_content(h5, label)
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


def refuse_untrusted_content(h5: h5py.File, label: str, error: type[ConvSurgeonError] = ModelFileError) -> None:
    """Refuse ``h5`` with one ``error`` line if any link in it is not a hard link, or any
    dataset in it is stored in another file, virtual, or declares more than the file holds
    for it (:mod:`.untrusted`): before anything in it is read, since reading follows links
    and external storage without a word. Costs a walk of the links and an open of each
    dataset, no data read (libhdf5 counts a chunked dataset's bytes from its chunk index)."""
    problem = _link_problem(h5) or _dataset_problem(h5)
    if problem is not None:
        raise error(f"{label}: {problem}")


def _link_problem(h5: h5py.File) -> str | None:
    """What the first link that is not a hard link is (links are walked without following
    any but hard links), or None."""
    import h5py

    def visit(raw: bytes, info: Any) -> str | None:
        if info.type == h5py.h5l.TYPE_HARD:
            return None
        path = raw.decode("utf-8", "backslashreplace")
        if info.type == h5py.h5l.TYPE_SOFT:
            return untrusted.soft_link(path, _text(h5.id.links.get_val(raw)))
        if info.type == h5py.h5l.TYPE_EXTERNAL:
            file, target = h5.id.links.get_val(raw)
            return untrusted.external_link(path, _text(file), _text(target))
        return untrusted.other_link(path)

    found: str | None = h5.id.links.visit(visit, info=True)
    return found


def _dataset_problem(h5: h5py.File) -> str | None:
    """What is wrong with the first dataset that may not be read, or None."""
    import h5py

    def visit(raw: bytes, info: Any) -> str | None:
        if info.type != h5py.h5o.TYPE_DATASET:
            return None
        return _stored_problem(h5py.h5d.open(h5.id, raw), raw.decode("utf-8", "backslashreplace"))

    found: str | None = h5py.h5o.visit(h5.id, visit, info=True)
    return found


def _stored_problem(dataset: Any, path: str) -> str | None:
    """Why one dataset (an h5py ``DatasetID``) may not be read, or None."""
    import h5py

    plist = dataset.get_create_plist()
    if plist.get_external_count():
        return untrusted.stored_elsewhere(path, _text(plist.get_external(0)[0]))
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        return untrusted.virtual(path)
    extent = dataset.shape  # None: a null dataspace, which holds no value
    shape = tuple(int(d) for d in extent or ())
    itemsize = dataset.get_type().get_size()
    declared = math.prod(shape) * itemsize if extent is not None else 0
    chunks = None
    if layout == h5py.h5d.CHUNKED:
        chunks = math.prod(-(-d // c) for d, c in zip(shape, plist.get_chunk()))
    return untrusted.size_problem(path, shape, _dtype_name(dataset, itemsize), declared,
                                  dataset.get_storage_size(), chunks, plist.get_nfilters() > 0)


def _dtype_name(dataset: Any, itemsize: int) -> str:
    try:
        return str(dataset.dtype)
    except TypeError:  # a datatype h5py maps to no numpy dtype
        return f"{itemsize}-byte records"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


class GroupEntry(Protocol):
    """A group met on a walk of a store."""

    @property
    def kind(self) -> Literal["group"]: ...

    def text_attribute(self, name: str) -> str | None:
        """The string attribute ``name`` (of an array of strings, its first), or None."""


class DatasetEntry(Protocol):
    """A dataset met on a walk of a store."""

    @property
    def kind(self) -> Literal["dataset"]: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str:
        """numpy's name for it; ``bfloat16`` for Keras's opaque bfloat16 records."""


# What a walk calls for every object below the root: its path and the object.
Visitor = Callable[[str, Union[GroupEntry, DatasetEntry]], None]


class _H5pyGroup:
    kind: Literal["group"] = "group"

    def __init__(self, fid: Any, raw: bytes) -> None:
        self._fid, self._raw = fid, raw

    def text_attribute(self, name: str) -> str | None:
        import h5py

        key = name.encode()
        if not h5py.h5a.exists(self._fid, key, obj_name=self._raw):
            return None
        return _read_text_attribute(h5py.h5a.open(self._fid, key, obj_name=self._raw))


class _H5pyDataset:
    kind: Literal["dataset"] = "dataset"

    def __init__(self, h5: h5py.File, raw: bytes) -> None:
        self._h5, self._raw = h5, raw
        self._read: tuple[tuple[int, ...], str] | None = None

    def _shape_and_dtype(self) -> tuple[tuple[int, ...], str]:
        if self._read is None:
            import h5py

            dataset = h5py.h5d.open(self._h5.id, self._raw)
            dtype = dataset.dtype
            # Keras stores bfloat16 as opaque 2-byte records with a `dtype` attribute.
            is_bf16 = dtype.kind == "V" and h5py.h5a.exists(dataset, b"dtype") and self._h5[
                self._raw.decode()].attrs["dtype"] in ("bfloat16", b"bfloat16")
            self._read = (tuple(int(d) for d in dataset.shape), "bfloat16" if is_bf16 else dtype.name)
        return self._read

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape_and_dtype()[0]

    @property
    def dtype(self) -> str:
        return self._shape_and_dtype()[1]


def walk_h5py(h5: h5py.File, visitor: Visitor) -> None:
    """Call ``visitor`` for every group and dataset of an open file below its root, in
    ``h5py.h5o.visit``'s order (depth first, names in order), from inside the visit.

    Walked with h5py's low-level API, each object read only when the visitor asks:
    the high-level ``visititems`` builds an object per group and dataset, which doubled
    the time of `inspect` on ResNet50.
    """
    import h5py

    def visit(raw: bytes, info: Any) -> None:
        name = raw.decode()
        if info.type == h5py.h5o.TYPE_GROUP:
            if name != ".":  # the root itself
                visitor(name, _H5pyGroup(h5.id, raw))
        elif info.type == h5py.h5o.TYPE_DATASET:
            visitor(name, _H5pyDataset(h5, raw))

    h5py.h5o.visit(h5.id, visit, info=True)


def _read_text_attribute(attribute: Any) -> str:
    """A string attribute, read with the low-level API (the high-level one opens the
    object and its attribute manager first: a third of a large model's walk)."""
    import numpy as np

    try:
        dtype = attribute.dtype
    except TypeError as exc:  # "Unknown string encoding (value 14)": a damaged datatype
        raise ValueError(f"an attribute of a datatype h5py cannot map: {exc}") from None
    value = np.empty(attribute.shape, dtype=dtype)
    attribute.read(value)
    return attr_text(value[()] if value.shape == () else value.ravel()[0])


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
