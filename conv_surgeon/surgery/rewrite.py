"""Rewriting a `.keras` archive whose graph changed: a new config, and a weight store whose
objects are renamed, dropped or given new variables (graph surgery: ``fold-bn``).

A byte patch (:mod:`.writer`) cannot add a dataset or rename a group, so the weight
store is written anew: every group and dataset the rewrite does not touch is copied by
HDF5 itself (``H5Ocopy``: bytes, dtype and attributes as they were), renamed where its
layer's store key changed, and the variables of the changed objects are written from the
values given. Every other member of the archive is copied as it was.
"""

from __future__ import annotations

import hashlib
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
from ..store.archive import locate_member
from ..store.hdf5 import damaged_store_is_an_error, read_dataset, refuse_untrusted_content
from ..store.model_file import CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER, ModelFile, open_store
from ..store.provenance import metadata_with_history, read_metadata_bytes

@dataclass(frozen=True)
class Derived:
    """A new value computed from the old one: ``compute(old vars group[index])``. The
    rewrite runs in a forked worker, so ``compute`` may be any function; large values are
    made there and never cross the pipe."""

    index: int
    compute: Callable[[np.ndarray], np.ndarray]


# An index of the old vars group (copied as it is), a new value, or a value derived from an old one.
VarOrigin = Union[int, np.ndarray, Derived]


@dataclass(frozen=True)
class ValueDigest:
    """A derived value as the rewrite's worker wrote and read it back, known outside the
    worker by its shape and digest: the value itself never crosses the pipe."""

    shape: tuple[int, ...]
    sha256: str  # of the value as float32 in C order, as Keras's variables are compared

    @classmethod
    def of(cls, value: np.ndarray) -> ValueDigest:
        return cls(tuple(int(d) for d in value.shape), cls._sha256(value))

    def matches(self, value: np.ndarray) -> bool:
        """Whether ``value`` holds the same numbers (compared as float32)."""
        return tuple(value.shape) == self.shape and self._sha256(value) == self.sha256

    @staticmethod
    def _sha256(value: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(value, dtype=np.float32).tobytes()).hexdigest()


# HDF5 keeps an attribute in its object's header, which holds at most 64 KiB.
MAX_ATTRIBUTE_BYTES = 60_000


@dataclass(frozen=True)
class StoreRewrite:
    """What changes in the weight store; every path is the original store's."""

    renames: dict[str, str] = field(default_factory=dict)  # object group -> its new path
    drops: frozenset[str] = frozenset()  # groups left out, with everything under them
    # A `vars` group -> its new variables in order (the old group's attributes are kept).
    variables: dict[str, tuple[VarOrigin, ...]] = field(default_factory=dict)

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


def _write_variables(old: h5py.Group, new: h5py.Group, origins: Iterable[VarOrigin],
                     derived: dict[str, np.ndarray]) -> None:
    _copy_attributes(old, new)
    for index, origin in enumerate(origins):
        if isinstance(origin, Derived):
            value = origin.compute(read_dataset(old[str(origin.index)]))
            new.create_dataset(str(index), data=value)
            derived[new.name.lstrip("/") + f"/{index}"] = value
        elif isinstance(origin, np.ndarray):
            new.create_dataset(str(index), data=origin)
        else:
            old.copy(str(origin), new, name=str(index))


def _copy_attributes(old: h5py.Group, new: h5py.Group) -> None:
    for name, value in old.attrs.items():
        new.attrs[name] = value


def rewrite_weights(source: ModelFile, rewrite: StoreRewrite, destination: Path) -> dict[str, ValueDigest]:
    """Write the weight store of ``source`` (a `.keras` archive), rewritten, to the HDF5
    file ``destination``, and read the derived values back: they are what was computed.
    Returns each one's digest by its dataset path in ``destination``. Reads the untrusted
    store: run it in a bounded worker."""
    with damaged_store_is_an_error(source.label), open_store(source) as store:
        with h5py.File(destination, "w") as new:
            derived = rewrite_store(store.h5s[0], new, rewrite)
    return _read_back(destination, derived)


def _read_back(path: Path, derived: dict[str, np.ndarray]) -> dict[str, ValueDigest]:
    """Check that the written file holds each derived value exactly; the digest of each."""
    digests = {}
    with h5py.File(path, "r") as written:
        for dataset, value in derived.items():
            got = read_dataset(written[dataset])
            if got.shape != value.shape or got.tobytes() != value.tobytes():
                raise RuntimeError(f"read-back of {dataset} differs from what was written")
            digests[dataset] = ValueDigest.of(got)
    return digests


def write_keras_archive(source: ModelFile, destination: Path, config: dict[str, Any],
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


# --- the legacy .h5 layout --------------------------------------------------------------


@dataclass(frozen=True)
class LegacyRewrite:
    """What changes in a legacy `.h5` model (layers under ``model_weights`` by name,
    loaded by position in ``layer_names``)."""

    config: dict[str, Any]  # the new model_config
    layer_names: tuple[str, ...]  # the new `layer_names` of model_weights, in Keras's order
    drops: frozenset[str] = frozenset()  # layer groups removed
    # dataset path -> new value; a path that does not exist yet is created and appended
    # to its layer's `weight_names`.
    values: dict[str, np.ndarray | Derived] = field(default_factory=dict)
    optimizer: tuple[VarOrigin, ...] | None = None  # the new optimizer_weights, in order


def rewrite_legacy(source: ModelFile, rewrite: LegacyRewrite, destination: Path) -> dict[str, ValueDigest]:
    """Write a copy of the legacy `.h5` ``source`` to ``destination``, rewritten, and read
    the derived values back (their digests, by dataset path). Reads the untrusted file:
    run it in a bounded worker."""
    if source.path is not None:
        shutil.copyfile(source.path, destination)
    else:
        assert source.data is not None
        destination.write_bytes(source.data)
    derived: dict[str, np.ndarray] = {}
    with damaged_store_is_an_error(source.label), h5py.File(destination, "r+") as h5:
        refuse_untrusted_content(h5, source.label)  # a copy of the untrusted file
        old_config = h5.attrs["model_config"]
        text = json.dumps(rewrite.config)
        h5.attrs["model_config"] = text.encode() if isinstance(old_config, bytes) else text
        root = h5["model_weights"]
        _set_names(root, "layer_names", list(rewrite.layer_names))
        for name in rewrite.drops:
            del root[name]
        for path, source_value in rewrite.values.items():
            relative = path.split("/", 1)[1]  # under model_weights
            if relative in root:
                dataset = root[relative]
                value = source_value.compute(read_dataset(dataset)) if isinstance(source_value, Derived) else source_value
                dataset[...] = value
            else:
                assert isinstance(source_value, np.ndarray), "a new dataset is given by its value"
                value = source_value
                layer, _, weight_name = relative.partition("/")
                root[layer].create_dataset(weight_name, data=value)
                _set_names(root[layer], "weight_names", _names(root[layer], "weight_names") + [weight_name])
            if isinstance(source_value, Derived):
                derived[path] = value
        if rewrite.optimizer is not None:
            _rewrite_optimizer(h5, rewrite.optimizer)
    return _read_back(destination, derived)


def legacy_optimizer_names(h5: h5py.File) -> list[str]:
    """The datasets of a legacy `.h5`'s optimizer state, in the optimizer's order."""
    group = h5.get("optimizer_weights")
    return [] if group is None else _names(group, "weight_names")


def _rewrite_optimizer(h5: h5py.File, origins: tuple[VarOrigin, ...]) -> None:
    group = h5["optimizer_weights"]
    names = _names(group, "weight_names")
    values = [read_dataset(group[names[s]]) if isinstance(s, int) else s for s in origins]
    new_names = [names[s] if isinstance(s, int) else f"conv_surgeon/reset_{i}" for i, s in enumerate(origins)]
    del h5["optimizer_weights"]
    group = h5.create_group("optimizer_weights")
    for name, value in zip(new_names, values):
        assert isinstance(value, np.ndarray)
        group.create_dataset(name, data=value)
    _set_names(group, "weight_names", new_names)


def _names(group: h5py.Group, attribute: str) -> list[str]:
    from ..store.hdf5 import attr_list

    return attr_list(group, attribute)


def _set_names(group: h5py.Group, attribute: str, names: list[str]) -> None:
    """A list attribute as the file had it (bytes, or strings), in one piece."""
    old = group.attrs.get(attribute)
    as_text = old is not None and len(old) and isinstance(old[0], str)
    for key in [k for k in group.attrs if k == attribute or (k.startswith(attribute) and k[len(attribute):].isdigit())]:
        del group.attrs[key]
    encoded = [n.encode("utf8") for n in names]
    if sum(len(n) for n in encoded) > MAX_ATTRIBUTE_BYTES:
        raise ModelFileError(f"the list '{attribute}' is too long to rewrite in one HDF5 attribute; "
                             "save the model as .keras to fold it")
    group.attrs[attribute] = names if as_text else np.array(encoded)
