"""Writing edited weights into a copy of the model, byte for byte everywhere else.

An edit keeps every dataset's size, and Keras stores datasets contiguous and
uncompressed, so the new values are written at each dataset's byte offset in a copy of
the file that holds it (:mod:`conv_surgeon.store`). Only the files an edit touches are
rewritten: one shard of a sharded save, the weight store of a saved folder.

A single-file model (`.keras`, `.h5`, `.weights.h5`) is written to one staged file. A
folder format (a `zipped=False` folder, a keras-hub preset, a sharded map and its
shards) is written to a staged folder that holds the whole result (for an in-place edit
the untouched files are hard-linked from the source); the caller smoke-tests it there
and then commits it (:func:`commit_folder`): every changed file replaced, or none.

The provenance history goes where each format keeps metadata: ``metadata.json`` of an
archive or folder, a root attribute of an HDF5 file, a ``conv_surgeon`` key of a shard
map (Keras reads only its ``weight_map``).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from ..errors import ModelFileError
from .archive import Member, member_crcs, replace_member, write_member_crc
from .documents import parse_json
from .fileio import replace_files_together
from .hdf5 import contiguous_offset, dataset_dtype
from .model_file import (FOLDER_FORMATS, METADATA_MEMBER, WEIGHTS_MEMBER,
                         ModelFile, ModelFormat, StoreFile, open_store,
                         shard_names)
from .provenance import (HISTORY_ATTRIBUTE, encode_history,
                         metadata_with_history, read_metadata_bytes)
from .worker import PARSE_TIMEOUT_S, run_bounded


@dataclass(frozen=True)
class Patch:
    """New bytes for one dataset, at an offset of the HDF5 file that holds it."""

    dataset: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class FileEdit:
    """The patches to one file of the store, and (for a `.keras` member) its new CRC."""

    file: StoreFile
    patches: tuple[Patch, ...]
    new_crc: int | None = None


@dataclass(frozen=True)
class StorePatches:
    format: ModelFormat
    edits: tuple[FileEdit, ...]  # only the files that change
    # The values the patched datasets hold now, read in the same pass (for the report).
    old_values: dict[str, np.ndarray] = field(default_factory=dict)


def locate_patches(source: ModelFile, values: dict[str, np.ndarray]) -> StorePatches:
    """Where each new value goes, file by file, and (for `.keras`) the member's new CRC.

    ``values`` maps dataset paths of the weight store to the exact arrays to write.
    For a `.keras` the weight store's CRC is verified first: reading in place skips
    the zip's own check, and a corrupt input must not get a fresh, valid CRC. The store
    is untrusted: its HDF5 is parsed in a bounded worker, which says where each dataset's
    bytes lie. The values and the bytes they replace do not go through the worker's pipe
    (for `port`, some 200 MB): they are encoded here, and the old bytes read here at the
    places the worker found, once shown to lie inside the file.
    """
    where = run_bounded(lambda: _locate_datasets(source, list(values)), PARSE_TIMEOUT_S, source.label,
                        source.size())
    per_file: dict[int, list[Patch]] = {}
    for spot in where.spots:
        per_file.setdefault(spot.file, []).append(
            Patch(spot.dataset, spot.offset, _encoded(spot, values[spot.dataset], where.files[spot.file].label)))
    edits = []
    for index, patches in sorted(per_file.items()):
        patches.sort(key=lambda p: p.offset)
        store_file = where.files[index]
        edits.append(FileEdit(store_file, tuple(patches), _new_crc(source, store_file, patches)))
    return StorePatches(where.format, tuple(edits), _old_values(source, where))


@dataclass(frozen=True)
class _Spot:
    """Where one dataset's bytes lie: in which file of the store, at which offset."""

    dataset: str
    file: int
    offset: int
    dtype: str  # numpy's dtype string ("<f4"), or "bfloat16" for Keras's opaque records
    shape: tuple[int, ...]
    size: int  # bytes


@dataclass(frozen=True)
class _Located:
    format: ModelFormat
    files: tuple[StoreFile, ...]
    spots: tuple[_Spot, ...]


def _locate_datasets(source: ModelFile, paths: list[str]) -> _Located:
    """In the worker: where each dataset lies (contiguous and unfiltered, or refused)."""
    spots = []
    with open_store(source) as store:
        for path in paths:
            index = next((i for i, h5 in enumerate(store.h5s) if path in h5), None)
            if index is None:
                raise ModelFileError(f"{source.label}: the weight store has no dataset {path}")
            dataset = store.h5s[index][path]
            offset = contiguous_offset(dataset, store.files[index].label)
            kind = dataset_dtype(dataset)
            spots.append(_Spot(path, index, offset, kind if kind == "bfloat16" else dataset.dtype.str,
                               tuple(dataset.shape), int(dataset.id.get_storage_size())))
        return _Located(store.format, tuple(store.files), tuple(spots))


def _spot_dtype(spot: _Spot) -> np.dtype:
    if spot.dtype == "bfloat16":
        import ml_dtypes

        bfloat16: np.dtype = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(spot.dtype)


def _encoded(spot: _Spot, value: np.ndarray, label: str) -> bytes:
    """The bytes the dataset holds for ``value`` (bfloat16 as Keras's opaque records)."""
    raw = np.ascontiguousarray(value, dtype=_spot_dtype(spot)).tobytes()
    if value.shape != spot.shape or len(raw) != spot.size:
        raise ModelFileError(f"{label}: dataset {spot.dataset} holds {spot.shape} ({spot.size} bytes), refusing "
                             f"to write {value.shape}")
    return raw


def _old_values(source: ModelFile, where: _Located) -> dict[str, np.ndarray]:
    """The values the located datasets hold now, read at their offsets (no HDF5 parsed here:
    each range is checked to lie inside its file, or inside the archive's member)."""
    found: dict[str, np.ndarray] = {}
    for index, store_file in enumerate(where.files):
        spots = [spot for spot in where.spots if spot.file == index]
        if not spots:
            continue
        member = store_file.member
        base, limit = (member.data_offset, member.size) if member is not None else (0, None)
        with _open_store_file(source, store_file) as raw:
            if limit is None:
                limit = raw.seek(0, os.SEEK_END)
            for spot in spots:
                dtype = _spot_dtype(spot)
                if spot.offset + spot.size > limit or dtype.itemsize * int(np.prod(spot.shape)) != spot.size:
                    raise ModelFileError(f"{store_file.label}: dataset {spot.dataset} says its {spot.size} bytes "
                                         f"lie at {spot.offset}, past the end of the file or not its shape "
                                         f"{spot.shape}; the file is corrupt")
                raw.seek(base + spot.offset)
                data = raw.read(spot.size)
                if len(data) != spot.size:
                    raise ModelFileError(f"{store_file.label}: the file is truncated")
                found[spot.dataset] = np.frombuffer(data, dtype).reshape(spot.shape)
    return found


@contextmanager
def _open_store_file(source: ModelFile, store_file: StoreFile) -> Iterator[BinaryIO]:
    if store_file.path is None:
        with source.open_binary() as raw:
            yield raw
    else:
        with open(store_file.path, "rb") as handle:
            yield handle


def _new_crc(source: ModelFile, store_file: StoreFile, patches: list[Patch]) -> int | None:
    member = store_file.member
    if member is None:
        return None
    if not member.stored:
        raise ModelFileError(
            f"{source.label}: the archive's {WEIGHTS_MEMBER} is compressed (Keras stores it "
            "uncompressed); re-save the model with Keras and try again"
        )
    with source.open_binary() as raw:
        old_crc, new_crc = member_crcs(raw, member, [(p.offset, p.data) for p in patches], source.label)
    if old_crc != member.crc:
        raise ModelFileError(
            f"{source.label}: the weight store fails its zip CRC check (the archive is "
            "corrupt); refusing to edit it, restore the file from a good copy"
        )
    return new_crc


def apply_patches(
    source: ModelFile,
    patches: StorePatches,
    destination: Path,
    history: list[dict[str, Any]] | None = None,
) -> None:
    """Write the edited copy of a single-file ``source`` to ``destination`` (a fresh
    temporary file).

    ``history``, when given, is the model's whole provenance history to store (the
    records already in the file and the new one, see :mod:`conv_surgeon.store.provenance`).
    """
    assert patches.format not in FOLDER_FORMATS, "folder formats are written by stage_folder"
    edit = patches.edits[0] if patches.edits else None
    member = edit.file.member if edit is not None else None
    if patches.format == "keras" and history is not None:
        assert member is not None, "a .keras edit patches its weight member"
        with source.open_binary() as raw:
            with zipfile.ZipFile(raw) as archive:
                old = read_metadata_bytes(archive, source.label)
            data = metadata_with_history(old, history, source.label)
            member = replace_member(raw, destination, METADATA_MEMBER, data, member, source.label)
    elif source.path is not None:
        shutil.copyfile(source.path, destination)
    else:
        assert source.data is not None
        destination.write_bytes(source.data)
    if edit is not None:
        _patch_file(destination, edit, member)
    if patches.format != "keras" and history is not None:
        write_h5_history(destination, history, source.label)


def _patch_file(path: Path, edit: FileEdit, member: Member | None) -> None:
    """Write ``edit``'s patches into the copy at ``path`` (a `.keras` archive whose weight
    member now lies where ``member`` says, or an HDF5 file)."""
    base = member.data_offset if member is not None else 0
    with open(path, "r+b") as handle:
        for patch in edit.patches:
            handle.seek(base + patch.offset)
            handle.write(patch.data)
        if member is not None and edit.new_crc is not None:
            write_member_crc(handle, member, edit.new_crc, edit.file.label)
        handle.flush()


def write_h5_history(path: Path, history: list[dict[str, Any]], label: str) -> None:
    text = encode_history(history)
    try:
        with h5py.File(path, "r+") as h5:
            h5.attrs[HISTORY_ATTRIBUTE] = text
    except (OSError, RuntimeError) as exc:
        raise ModelFileError(
            f"{label}: cannot record the edit history in the HDF5 file ({exc}); the "
            "edited copy was not kept"
        ) from None


# --- folder formats -------------------------------------------------------------------


@dataclass(frozen=True)
class StagedFolder:
    """A folder holding the whole edited save, ready to be committed.

    ``files`` maps each file name of the result to whether it differs from the source
    (patched, renamed or rewritten); ``load_path`` is what Keras loads (the folder, or
    the shard map in it).
    """

    folder: Path
    load_path: Path
    files: dict[str, bool]


def stage_folder(
    source: ModelFile,
    patches: StorePatches,
    staging: Path,
    output_name: str,
    history: list[dict[str, Any]] | None,
    keep_names: bool,
) -> StagedFolder:
    """Write the edited save of a folder-format ``source`` into the empty ``staging`` folder.

    For a shard map, ``output_name`` is the map's file name in the result; unless
    ``keep_names`` (an in-place edit), the shards are named after it as Keras names them
    (``<stem>_00000.weights.h5``), so a copy beside the source never takes its files,
    and every file is a copy of its own.
    """
    assert source.path is not None and patches.format in FOLDER_FORMATS
    patched = {edit.file.path: edit for edit in patches.edits}
    files: dict[str, bool] = {}
    if patches.format == "sharded":
        renames = _shard_names(source.path, output_name, keep_names)
        for old_name, new_name in renames.items():
            edit = patched.get(source.path.parent / old_name)
            _stage_file(source.path.parent / old_name, staging / new_name, edit, link=keep_names)
            files[new_name] = edit is not None or new_name != old_name
        map_bytes = _shard_map(source.path, renames, history, source.label)
        (staging / output_name).write_bytes(map_bytes)
        files[output_name] = map_bytes != source.path.read_bytes()
        return StagedFolder(staging, staging / output_name, files)
    for entry in sorted(source.path.rglob("*")):
        relative = entry.relative_to(source.path)
        target = staging / relative
        if entry.is_symlink() and entry not in patched and str(relative) != METADATA_MEMBER:
            # Kept as a link, as `cp -R` keeps it: a link to a file outside the folder
            # must not turn into a copy of that file in the output.
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(entry), target)
            files[str(relative)] = False
            continue
        if entry.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        edit = patched.get(entry)
        if str(relative) == METADATA_MEMBER and history is not None:
            target.write_bytes(metadata_with_history(entry.read_bytes(), history, source.label))
            files[str(relative)] = True
            continue
        _stage_file(entry, target, edit, link=keep_names)
        files[str(relative)] = edit is not None
    if history is not None and METADATA_MEMBER not in files:
        (staging / METADATA_MEMBER).write_bytes(metadata_with_history(None, history, source.label))
        files[METADATA_MEMBER] = True
    return StagedFolder(staging, staging, files)


def _stage_file(original: Path, target: Path, edit: FileEdit | None, link: bool) -> None:
    """Stage one file of the result: patched, copied, or (``link``) hard-linked.

    Links only serve an in-place edit, whose untouched files stay where they are: an
    output that shared an inode with its source would change when the source is saved
    over (Keras truncates the file it saves to).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if edit is None and link:
        try:
            os.link(original, target)
            return
        except OSError:
            pass
    shutil.copyfile(original, target)
    if edit is not None:
        _patch_file(target, edit, None)


def _shard_names(map_path: Path, output_name: str, keep_names: bool) -> dict[str, str]:
    names = shard_names(map_path, str(map_path))
    if keep_names:
        return {name: name for name in names}
    stem = output_name.removesuffix(".json").removesuffix(".weights")
    return {name: f"{stem}_{i:05}.weights.h5" for i, name in enumerate(names)}


def _shard_map(map_path: Path, renames: dict[str, str], history: list[dict[str, Any]] | None, label: str) -> bytes:
    import json

    document = parse_json(map_path.read_bytes())  # read once already by shard_names
    document["weight_map"] = {
        key: [renames[v] for v in value] if isinstance(value, list) else renames[value]
        for key, value in document["weight_map"].items()
    }
    if history is not None:
        return metadata_with_history(json.dumps(document).encode(), history, label)
    if all(old == new for old, new in renames.items()):
        return map_path.read_bytes()
    return json.dumps(document, indent=4).encode()


def commit_folder(staged: StagedFolder, source: ModelFile, destination: Path, in_place: bool,
                  notes: list[str] | None = None) -> None:
    """Move the staged save into place: every changed file replaced, or none.

    In place, only the files that changed replace their originals. Otherwise a folder
    save becomes ``destination`` (an existing Keras save folder there is replaced whole),
    and a shard map and its shards are moved beside ``destination``.
    """
    if in_place or staged.load_path != staged.folder:
        target_dir = destination.parent if staged.load_path != staged.folder else destination
        moves = [(staged.folder / name, target_dir / name) for name, changed in staged.files.items()
                 if changed or not in_place]
        replace_files_together(moves, notes)
        return
    if destination.exists():
        if any(destination.iterdir()) and not (destination / "config.json").is_file():
            raise ModelFileError(
                f"{destination}: exists and is not a saved Keras model folder; refusing to "
                "replace it, choose another -o"
            )
        _swap_folder(staged.folder, destination)
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged.folder, 0o777 & ~umask)  # mkdtemp made it private
    os.replace(staged.folder, destination)


def _swap_folder(new: Path, old: Path) -> None:
    backup = old.with_name(f".{old.name}.replaced")
    os.replace(old, backup)
    try:
        os.replace(new, old)
    except OSError:
        os.replace(backup, old)
        raise
    shutil.rmtree(backup, ignore_errors=True)
