"""Writing edited weights into a copy of the model, byte for byte everywhere else.

An edit keeps every dataset's size, and Keras stores datasets contiguous and
uncompressed, so the new values are written at the dataset's byte offset in a copy of
the file. In a `.keras` archive the weight store is an uncompressed zip member: its
offset is known, and only its CRC32 (in the local header, the central directory and any
data descriptor) must change. Everything else — other layers, optimizer state, config,
metadata, assets — stays byte-identical.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import ModelFileError
from .modelfile import WEIGHTS_MEMBER, ModelSource, WeightMember, dataset_dtype, open_weight_store

CENTRAL_MAGIC = b"PK\x01\x02"
DESCRIPTOR_MAGIC = b"PK\x07\x08"


@dataclass(frozen=True)
class Patch:
    """New bytes for one dataset, at an offset of the weight store."""

    dataset: str
    offset: int  # in the weight store (the .h5 file, or the zip member's data)
    data: bytes


@dataclass(frozen=True)
class EditPlan:
    patches: tuple[Patch, ...]
    member: WeightMember | None  # .keras only
    new_crc: int | None  # .keras only: the member's CRC32 after the patches


def encode_for_dataset(dataset: h5py.Dataset, value: np.ndarray, label: str) -> bytes:
    """The bytes the dataset holds for ``value`` (bfloat16 as Keras's opaque records)."""
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


def _contiguous_offset(dataset: h5py.Dataset, label: str) -> int:
    plist = dataset.id.get_create_plist()
    offset = dataset.id.get_offset()
    if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters() or offset is None:
        raise ModelFileError(
            f"{label}: dataset {dataset.name} is stored chunked or compressed, which Keras "
            "does not write; re-save the model with Keras and try again"
        )
    return int(offset)


def plan_edits(source: ModelSource, values: dict[str, np.ndarray]) -> EditPlan:
    """Where each new value goes, and (for `.keras`) the archive's new CRC.

    ``values`` maps dataset paths of the weight store to the exact arrays to write.
    For a `.keras` the weight store's CRC is verified first: reading in place skips
    the zip's own check, and a corrupt input must not get a fresh, valid CRC.
    """
    with open_weight_store(source) as (h5, meta):
        patches = []
        for path, value in values.items():
            dataset = h5[path]
            patches.append(
                Patch(path, _contiguous_offset(dataset, source.label),
                      encode_for_dataset(dataset, value, source.label))
            )
        member: WeightMember | None = meta.get("member")
    patches.sort(key=lambda p: p.offset)
    if member is None:
        return EditPlan(tuple(patches), None, None)
    if not member.stored:
        raise ModelFileError(
            f"{source.label}: the archive's {WEIGHTS_MEMBER} is compressed (Keras stores it "
            "uncompressed); re-save the model with Keras and try again"
        )
    old_crc, new_crc = _member_crcs(source, member, patches)
    if old_crc != member.crc:
        raise ModelFileError(
            f"{source.label}: the weight store fails its zip CRC check (the archive is "
            "corrupt); refusing to edit it, restore the file from a good copy"
        )
    return EditPlan(tuple(patches), member, new_crc)


def _member_crcs(source: ModelSource, member: WeightMember, patches: list[Patch]) -> tuple[int, int]:
    """CRC32 of the member as it is and as it will be, in one pass over its bytes."""
    old = new = 0
    position = 0
    with source.open_binary() as raw:
        raw.seek(member.data_offset)
        for patch in patches + [Patch("", member.size, b"")]:
            while position < patch.offset:
                chunk = raw.read(min(patch.offset - position, 1 << 22))
                if not chunk:
                    raise ModelFileError(f"{source.label}: the archive is truncated")
                old = zlib.crc32(chunk, old)
                new = zlib.crc32(chunk, new)
                position += len(chunk)
            if patch.data:
                replaced = raw.read(len(patch.data))
                old = zlib.crc32(replaced, old)
                new = zlib.crc32(patch.data, new)
                position += len(replaced)
    return old, new


def _central_entry_offset(handle, member: WeightMember) -> int:
    """Byte offset of the member's central-directory record."""
    import zipfile

    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        start = archive.start_dir  # type: ignore[attr-defined]
    handle.seek(start)
    position = start
    while True:
        header = handle.read(46)
        if len(header) < 46 or header[:4] != CENTRAL_MAGIC:
            raise ModelFileError("the zip central directory has no entry for the weight store")
        name_len, extra_len, comment_len = struct.unpack("<HHH", header[28:34])
        name = handle.read(name_len)
        if name.decode("utf-8", "replace") == WEIGHTS_MEMBER:
            return position
        position += 46 + name_len + extra_len + comment_len
        handle.seek(position)


def _replace_crc(handle, offset: int, old: int, new: int) -> None:
    handle.seek(offset)
    (stored,) = struct.unpack("<I", handle.read(4))
    # A local header followed by a data descriptor may hold 0: leave it so.
    if stored == old:
        handle.seek(offset)
        handle.write(struct.pack("<I", new))


def apply_edits(source: ModelSource, plan: EditPlan, destination: Path) -> None:
    """Write the edited copy of ``source`` to ``destination`` (a fresh temporary file)."""
    if source.path is not None:
        shutil.copyfile(source.path, destination)
    else:
        assert source.data is not None
        destination.write_bytes(source.data)
    base = plan.member.data_offset if plan.member is not None else 0
    with open(destination, "r+b") as handle:
        for patch in plan.patches:
            handle.seek(base + patch.offset)
            handle.write(patch.data)
        member = plan.member
        if member is not None and plan.new_crc is not None:
            _replace_crc(handle, member.local_header_offset + 14, member.crc, plan.new_crc)
            _replace_crc(handle, _central_entry_offset(handle, member) + 16, member.crc, plan.new_crc)
            if member.flag_bits & 0x08:
                descriptor = member.data_offset + member.size
                handle.seek(descriptor)
                skip = 4 if handle.read(4) == DESCRIPTOR_MAGIC else 0
                _replace_crc(handle, descriptor + skip, member.crc, plan.new_crc)
        handle.flush()
