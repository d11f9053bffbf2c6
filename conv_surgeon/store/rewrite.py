"""Rewriting a `.keras` archive whose graph changed: a new config, and a weight store whose
objects are renamed, dropped or given new variables (graph surgery: ``fold-bn``).

A byte patch (:mod:`.writer`) cannot add a dataset or rename a group, so the weight
store is written anew: every group and dataset the rewrite does not touch is copied by
HDF5 itself (``H5Ocopy``: bytes, dtype and attributes as they were), renamed where its
layer's store key changed, and the variables of the changed objects are written from the
values given. Every other member of the archive is copied as it was.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import h5py
import numpy as np

from ..errors import ModelFileError
from .archive import locate_member
from .hdf5 import damaged_store_is_an_error, read_dataset
from .provenance import metadata_with_history, read_metadata_bytes
from .source import CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER, ModelSource, open_store

@dataclass(frozen=True)
class Derived:
    """A new value computed from the old one: ``compute(old vars group[index])``. The
    rewrite runs in a forked worker, so ``compute`` may be any function; large values are
    made there and never cross the pipe."""

    index: int
    compute: Callable[[np.ndarray], np.ndarray]


# An index of the old vars group (copied as it is), a new value, or a value derived from an old one.
VarSource = Union[int, np.ndarray, Derived]


@dataclass(frozen=True)
class StoreRewrite:
    """What changes in the weight store; every path is the original store's."""

    renames: dict[str, str] = field(default_factory=dict)  # object group -> its new path
    drops: frozenset[str] = frozenset()  # groups left out, with everything under them
    # A `vars` group -> its new variables in order (the old group's attributes are kept).
    variables: dict[str, tuple[VarSource, ...]] = field(default_factory=dict)

    def touched(self) -> set[str]:
        """Every group that holds (or is) something the rewrite changes."""
        found: set[str] = set()
        for path in [*self.renames, *self.drops, *self.variables]:
            parts = path.split("/")
            found.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return found


def rewrite_store(old: h5py.File, new: h5py.File, rewrite: StoreRewrite) -> dict[str, np.ndarray]:
    """Write ``old``'s objects into the empty ``new`` as ``rewrite`` says; returns the
    derived values written, by their dataset path in ``new``."""
    touched = rewrite.touched()
    derived: dict[str, np.ndarray] = {}
    _copy_attributes(old, new)
    _copy_children(old, new, "", "", rewrite, touched, derived)
    return derived


def _copy_children(old: h5py.Group, new: h5py.Group, old_path: str, new_path: str,
                   rewrite: StoreRewrite, touched: set[str], derived: dict[str, np.ndarray]) -> None:
    for key in old:
        child_old = _join(old_path, key)
        if child_old in rewrite.drops:
            continue
        child_new = rewrite.renames.get(child_old, _join(new_path, key))
        parent_new, _, leaf = child_new.rpartition("/")
        target = new.file.require_group(parent_new) if parent_new else new.file
        if child_old in rewrite.variables:
            _write_variables(old[key], target.create_group(leaf), rewrite.variables[child_old], derived)
        elif child_old in touched:
            group = target.create_group(leaf)
            _copy_attributes(old[key], group)
            _copy_children(old[key], group, child_old, child_new, rewrite, touched, derived)
        else:
            old.copy(key, target, name=leaf)


def _write_variables(old: h5py.Group, new: h5py.Group, sources: Iterable[VarSource],
                     derived: dict[str, np.ndarray]) -> None:
    _copy_attributes(old, new)
    for index, source in enumerate(sources):
        if isinstance(source, Derived):
            value = source.compute(read_dataset(old[str(source.index)]))
            new.create_dataset(str(index), data=value)
            derived[new.name.lstrip("/") + f"/{index}"] = value
        elif isinstance(source, np.ndarray):
            new.create_dataset(str(index), data=source)
        else:
            old.copy(str(source), new, name=str(index))


def _copy_attributes(old: h5py.Group, new: h5py.Group) -> None:
    for name, value in old.attrs.items():
        new.attrs[name] = value


def rewrite_weights(source: ModelSource, rewrite: StoreRewrite, destination: Path) -> int:
    """Write the weight store of ``source`` (a `.keras` archive), rewritten, to the HDF5
    file ``destination``, and read the derived values back: they are what was computed.
    Returns how many were checked. Reads the untrusted store: run it in a bounded worker."""
    with damaged_store_is_an_error(source.label), open_store(source) as store:
        with h5py.File(destination, "w") as new:
            derived = rewrite_store(store.h5s[0], new, rewrite)
    with h5py.File(destination, "r") as written:
        for path, value in derived.items():
            got = read_dataset(written[path])
            if got.shape != value.shape or got.tobytes() != value.tobytes():
                raise RuntimeError(f"read-back of {path} differs from what was written")
    return len(derived)


def write_keras_archive(source: ModelSource, destination: Path, config: dict[str, Any],
                        weights: Path, history: list[dict[str, Any]]) -> None:
    """Write a copy of the `.keras` archive ``source`` to ``destination`` (a fresh
    temporary file) with ``config``, the weight store ``weights`` and ``history``."""
    with source.open_binary() as raw, zipfile.ZipFile(raw) as archive:
        locate_member(archive, raw, WEIGHTS_MEMBER, source.label)  # a readable member, checked
        metadata = metadata_with_history(read_metadata_bytes(archive, source.label), history,
                                         source.label)
        try:
            _write_archive(archive, destination, {CONFIG_MEMBER: json.dumps(config).encode(),
                                                  METADATA_MEMBER: metadata}, weights)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(f"{source.label}: cannot copy the archive ({exc})") from None


def _write_archive(archive: zipfile.ZipFile, destination: Path, members: dict[str, bytes],
                   weights: Path) -> None:
    written = set()
    with zipfile.ZipFile(destination, "w") as out:
        for info in archive.infolist():
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.compress_type, copy.external_attr = info.compress_type, info.external_attr
            written.add(info.filename)
            if info.filename == WEIGHTS_MEMBER:
                with open(weights, "rb") as handle, out.open(copy, "w", force_zip64=True) as target:
                    shutil.copyfileobj(handle, target, 1 << 20)
            elif info.filename in members:
                out.writestr(copy, members[info.filename])
            else:
                with archive.open(info) as member, out.open(copy, "w", force_zip64=info.file_size > 1 << 30) as target:
                    shutil.copyfileobj(member, target, 1 << 20)
        for name, data in members.items():
            if name not in written:
                out.writestr(name, data)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)
