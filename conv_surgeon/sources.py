"""Turn what the user named as a weight source into a numpy array.

A source is ``file.npy``, ``file.npz:KEY``, ``file.h5:PATH`` (or ``.hdf5``), or ``-`` for
``.npy`` bytes on stdin. A file holding exactly one array needs no key. The format is
told by the file's first bytes, not by its extension.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import sys
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from conv_surgeon.errors import SourceError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

ACCEPTED = "accepted: file.npy, file.npz:KEY, file.h5:PATH, or - for .npy bytes on stdin"

# Keys shown in one error line before the list is cut short.
_MAX_LISTED_KEYS = 12


@dataclass(frozen=True)
class LoadedArray:
    """An array read from a source, with what the user typed and the bytes' hash."""

    array: np.ndarray
    origin: str  # the spec as typed ("bank.npz:w1"), or "stdin" for "-"
    sha256: str  # of the source file's bytes (of stdin's bytes for "-")


def load_source(spec: str, stdin: BinaryIO | None = None) -> LoadedArray:
    """Read the array that ``spec`` names.

    >>> load_source("bank.npz:w1").array.shape
    (3, 3, 1, 4)
    """
    if spec == "-":
        return _load_stdin(stdin if stdin is not None else sys.stdin.buffer)
    path, key = split_source_spec(spec)
    if os.path.isdir(path):
        raise SourceError(f"source '{spec}': '{path}' is a directory; {ACCEPTED}")
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise SourceError(f"source '{spec}': cannot read '{path}': {exc.strerror}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise SourceError(f"source '{spec}': '{path}' is empty; {ACCEPTED}")

    if data.startswith(NPY_MAGIC):
        if key is not None:
            raise SourceError(
                f"source '{spec}': '{path}' is a .npy file holding one array and takes "
                f"no key; name it as '{path}'"
            )
        array = _load_npy_bytes(data, f"source '{spec}'")
    elif data.startswith(ZIP_MAGIC):
        array = _load_npz(data, spec, path, key)
    elif data.startswith(HDF5_MAGIC):
        array = _load_hdf5(spec, path, key)
    else:
        raise SourceError(
            f"source '{spec}': '{path}' is not a .npy, .npz or HDF5 file "
            f"(first bytes {data[:8]!r}); {ACCEPTED}"
        )
    return LoadedArray(array=array, origin=spec, sha256=digest)


def split_source_spec(spec: str) -> tuple[str, str | None]:
    """Split ``path:key`` into the path and the key (None when there is no key).

    A path may itself hold ':'. The whole spec is a path if such a file exists;
    otherwise it splits at the last ':' whose left side is an existing file, so that
    keys holding ':' (Keras 2 datasets such as ``kernel:0``) stay whole.
    """
    if os.path.exists(spec):
        return spec, None
    for index in range(len(spec) - 1, 0, -1):
        if spec[index] == ":" and os.path.isfile(spec[:index]):
            key = spec[index + 1 :]
            return spec[:index], key if key else None
    raise SourceError(
        f"source '{spec}': file '{_missing_path(spec)}' not found; check the path"
    )


def _missing_path(spec: str) -> str:
    """The part of a spec the user most likely meant as the file name."""
    for index, char in enumerate(spec):
        if char == ":" and spec[:index].lower().endswith((".npy", ".npz", ".h5", ".hdf5")):
            return spec[:index]
    return spec


def _load_stdin(stdin: BinaryIO) -> LoadedArray:
    data = stdin.read()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise SourceError("source '-': stdin is empty; expected the bytes of a .npy file")
    if not data.startswith(NPY_MAGIC):
        if data.startswith(ZIP_MAGIC):
            kind = "a zip (.npz) archive"
        elif data.startswith(HDF5_MAGIC):
            kind = "an HDF5 file"
        else:
            kind = f"data that is not .npy (first bytes {data[:8]!r})"
        raise SourceError(
            f"source '-': stdin holds {kind}; only .npy bytes can be read from stdin: "
            "save the archive to a file and name it as file.npz:KEY or file.h5:PATH"
        )
    return LoadedArray(
        array=_load_npy_bytes(data, "source '-' (stdin)"), origin="stdin", sha256=digest
    )


def _load_npy_bytes(data: bytes, what: str) -> np.ndarray:
    """Load ``.npy`` bytes, refusing object arrays before numpy would unpickle them."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, EOFError) as exc:
        raise SourceError(f"{what}: not a valid .npy file ({_one_line(exc)})") from exc
    if dtype.hasobject:
        raise SourceError(
            f"{what}: holds a pickled object array (dtype {dtype}); conv-surgeon never "
            "unpickles (it can run code): save a numeric array instead, e.g. "
            "np.save(path, np.asarray(a, dtype=np.float32))"
        )
    try:
        # allow_pickle=False always: a pickled .npy runs code when loaded.
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise SourceError(
            f"{what}: truncated or corrupt .npy data ({_one_line(exc)}); write it again "
            "with np.save"
        ) from exc


def _load_npz(data: bytes, spec: str, path: str, key: str | None) -> np.ndarray:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [n for n in archive.namelist() if n.endswith(".npy")]
            keys = [n[: -len(".npy")] for n in members]
            if not keys:
                raise SourceError(
                    f"source '{spec}': '{path}' is a zip archive without .npy members "
                    "(a .keras model?); expected a .npz written by np.savez"
                )
            chosen = _choose_key(spec, path, key, keys, "array")
            member_bytes = archive.read(chosen + ".npy")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise SourceError(
            f"source '{spec}': '{path}' is a truncated or corrupt .npz archive "
            f"({_one_line(exc)}); write it again with np.savez"
        ) from exc
    return _load_npy_bytes(member_bytes, f"source '{spec}'")


def _load_hdf5(spec: str, path: str, key: str | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            datasets = _datasets_below(h5)
            if not datasets:
                raise SourceError(f"source '{spec}': '{path}' holds no datasets")
            if key is None:
                name = _choose_key(spec, path, None, datasets, "dataset")
            else:
                name = key.strip("/")
                node = h5.get(name) if name else h5
                if isinstance(node, h5py.Group):
                    below = [
                        f"{node.name.strip('/')}/{d}".lstrip("/")
                        for d in _datasets_below(node)
                    ]
                    raise SourceError(
                        f"source '{spec}': '{key}' in '{path}' is a group, not a dataset; "
                        f"datasets below it: {_list_keys(below) if below else 'none'}"
                    )
                if not isinstance(node, h5py.Dataset):
                    name = _choose_key(spec, path, key, datasets, "dataset")
            return _read_dataset(h5[name], spec)
    except (OSError, KeyError) as exc:
        raise SourceError(
            f"source '{spec}': '{path}' is a truncated or corrupt HDF5 file "
            f"({_one_line(exc)})"
        ) from exc


def _datasets_below(group: object) -> list[str]:
    """Paths of every dataset below ``group``, relative to it."""
    import h5py

    found: list[str] = []

    def visit(name: str, node: object) -> None:
        if isinstance(node, h5py.Dataset):
            found.append(name)

    group.visititems(visit)  # type: ignore[attr-defined]
    return found


def _read_dataset(dataset: object, spec: str) -> np.ndarray:
    import h5py
    import ml_dtypes

    assert isinstance(dataset, h5py.Dataset)
    if dataset.shape is None:
        raise SourceError(f"source '{spec}': dataset '{dataset.name}' is empty (no data)")
    # Keras stores bfloat16 as opaque 2-byte records tagged with a `dtype` attribute.
    if _attr_text(dataset.attrs.get("dtype")) == "bfloat16":
        return np.array(dataset, dtype=ml_dtypes.bfloat16)
    value = np.asarray(dataset[()])
    if value.dtype.hasobject:
        raise SourceError(
            f"source '{spec}': dataset '{dataset.name}' holds {value.dtype} data, not "
            "numbers; name a numeric dataset"
        )
    return value


def _attr_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _choose_key(spec: str, path: str, key: str | None, keys: list[str], noun: str) -> str:
    """The key the user meant, or the only one when none was given."""
    if key is None:
        if len(keys) == 1:
            return keys[0]
        raise SourceError(
            f"source '{spec}': '{path}' holds {len(keys)} {noun}s; name one as "
            f"'{path}:KEY': {_list_keys(keys)}"
        )
    wanted = key.strip("/") if noun == "dataset" else key.removesuffix(".npy")
    if wanted in keys:
        return wanted
    close = difflib.get_close_matches(wanted, keys, n=3)
    suggestion = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise SourceError(
        f"source '{spec}': '{path}' has no {noun} '{key}'; {suggestion}"
        f"available: {_list_keys(keys)}"
    )


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    if len(keys) > _MAX_LISTED_KEYS:
        shown += f", ... ({len(keys) - _MAX_LISTED_KEYS} more)"
    return shown


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

