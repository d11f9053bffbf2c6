"""Writing edited weights into a copy of the model, byte for byte everywhere else.

An edit keeps every dataset's size, and Keras stores datasets contiguous and
uncompressed, so the new values are written at the dataset's byte offset in a copy of
the file. In a `.keras` archive the weight store is an uncompressed zip member: its
offset is known, and only its CRC32 (in the local header, the central directory and any
data descriptor) must change. Everything else — other layers, optimizer state, config,
metadata, assets — stays byte-identical.

With a provenance history to record, a `.keras` archive's ``metadata.json`` is replaced
by a longer one. The archive is then rebuilt around it without touching any other
member: the bytes before and after the old ``metadata.json`` are copied raw (local
headers, data, data descriptors; ``os.copy_file_range`` where the kernel offers it),
and a new central directory points at the shifted members. In a `.h5` the history is a
root attribute, written after the patches; attributes live in object headers, so no
dataset's bytes move.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from .errors import ModelFileError
from .modelfile import (
    WEIGHTS_MEMBER,
    ZIP_MAGIC,
    ModelSource,
    WeightMember,
    dataset_dtype,
    open_weight_store,
)
from .provenance import (
    HISTORY_ATTRIBUTE,
    METADATA_MEMBER,
    encode_history,
    metadata_with_history,
    read_metadata_bytes,
)

CENTRAL_MAGIC = b"PK\x01\x02"
DESCRIPTOR_MAGIC = b"PK\x07\x08"
END_MAGIC = b"PK\x05\x06"
ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")
END_RECORD = struct.Struct("<4sHHHHIIH")
ZIP32_LIMIT = 0xFFFFFFFF
FLAG_ENCRYPTED = 0x01
FLAG_DESCRIPTOR = 0x08
DOS_DATE_1980 = 0x21  # 1980-01-01, the date zipfile gives a member written without one
# copy_file_range errors that mean "not here" (another filesystem, an old kernel): copy
# through user space instead.
KERNEL_COPY_UNAVAILABLE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM)


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


def _central_entry_offset(handle: BinaryIO, label: str) -> int:
    """Byte offset of the weight store's central-directory record."""
    size = handle.seek(0, os.SEEK_END)
    layout = _zip_layout(handle, size, label)
    position = layout.central_offset
    for entry in layout.entries:
        if entry.name.decode("utf-8", "replace") == WEIGHTS_MEMBER:
            return position
        position += CENTRAL_HEADER.size + len(entry.name) + len(entry.tail)
    raise ModelFileError(f"{label}: the zip central directory has no entry for the weight store")


def _replace_crc(handle, offset: int, old: int, new: int) -> None:
    handle.seek(offset)
    (stored,) = struct.unpack("<I", handle.read(4))
    # A local header followed by a data descriptor may hold 0: leave it so.
    if stored == old:
        handle.seek(offset)
        handle.write(struct.pack("<I", new))


def apply_edits(
    source: ModelSource,
    plan: EditPlan,
    destination: Path,
    history: list[dict[str, Any]] | None = None,
) -> None:
    """Write the edited copy of ``source`` to ``destination`` (a fresh temporary file).

    ``history``, when given, is the model's whole provenance history to store (the
    records already in the file and the new one, see :mod:`conv_surgeon.provenance`).
    """
    member = plan.member
    if member is not None and history is not None:
        member = _write_archive_with_metadata(source, destination, member, history)
    elif source.path is not None:
        shutil.copyfile(source.path, destination)
    else:
        assert source.data is not None
        destination.write_bytes(source.data)
    base = member.data_offset if member is not None else 0
    with open(destination, "r+b") as handle:
        for patch in plan.patches:
            handle.seek(base + patch.offset)
            handle.write(patch.data)
        if member is not None and plan.new_crc is not None:
            _replace_crc(handle, member.local_header_offset + 14, member.crc, plan.new_crc)
            _replace_crc(handle, _central_entry_offset(handle, source.label) + 16, member.crc, plan.new_crc)
            if member.flag_bits & FLAG_DESCRIPTOR:
                descriptor = member.data_offset + member.size
                handle.seek(descriptor)
                skip = 4 if handle.read(4) == DESCRIPTOR_MAGIC else 0
                _replace_crc(handle, descriptor + skip, member.crc, plan.new_crc)
        handle.flush()
    if member is None and history is not None:
        _write_h5_history(destination, history, source.label)


def _write_h5_history(path: Path, history: list[dict[str, Any]], label: str) -> None:
    text = encode_history(history)
    try:
        with h5py.File(path, "r+") as h5:
            h5.attrs[HISTORY_ATTRIBUTE] = text
    except (OSError, RuntimeError) as exc:
        raise ModelFileError(
            f"{label}: cannot record the edit history in the .h5 file ({exc}); the "
            "edited copy was not kept"
        ) from None


# --- rebuilding a .keras archive around a new metadata.json --------------------------


@dataclass(frozen=True)
class _CentralEntry:
    fields: tuple[Any, ...]  # CENTRAL_HEADER's fields
    name: bytes
    tail: bytes  # extra field and comment, kept as they are

    @property
    def flags(self) -> int:
        return int(self.fields[3])

    @property
    def local_offset(self) -> int:
        return int(self.fields[16])

    def encode(self, **changes: int) -> bytes:
        # Field positions of CENTRAL_HEADER, by name.
        index = {"flags": 3, "method": 4, "crc": 7, "compressed": 8, "size": 9, "offset": 16}
        fields = list(self.fields)
        for key, value in changes.items():
            fields[index[key]] = value
        return CENTRAL_HEADER.pack(*fields) + self.name + self.tail


@dataclass(frozen=True)
class _ZipLayout:
    entries: tuple[_CentralEntry, ...]
    central_offset: int
    end_fields: tuple[Any, ...]  # END_RECORD's fields
    comment: bytes


def _zip_layout(raw: BinaryIO, size: int, label: str) -> _ZipLayout:
    """The central directory of a plain (not zip64, not split) archive, parsed raw.

    Keras writes exactly such archives; anything else is refused rather than guessed.
    """
    tail_start = max(0, size - END_RECORD.size - 0xFFFF)
    raw.seek(tail_start)
    tail = raw.read()
    position = len(tail)
    while True:
        position = tail.rfind(END_MAGIC, 0, position)
        if position < 0:
            raise ModelFileError(
                f"{label}: the zip archive has no end record; it is truncated or corrupt"
            )
        if len(tail) - position < END_RECORD.size:
            continue
        end_fields = END_RECORD.unpack_from(tail, position)
        if position + END_RECORD.size + end_fields[7] == len(tail):  # comment runs to the end
            break
    end_offset = tail_start + position
    comment = tail[position + END_RECORD.size:]
    _, disk, central_disk, disk_entries, entries, central_size, central_offset, _ = end_fields
    zip64 = (
        position >= 20 and tail[position - 20:position - 16] == ZIP64_LOCATOR_MAGIC
    ) or ZIP32_LIMIT in (central_size, central_offset) or 0xFFFF in (disk_entries, entries)
    if zip64:
        raise ModelFileError(
            f"{label}: the archive is a zip64 archive, which Keras does not write; "
            "re-save the model with Keras, or record no history"
        )
    if disk or central_disk or disk_entries != entries:
        raise ModelFileError(f"{label}: the archive is split over several disks; join it first")
    if central_offset + central_size != end_offset:
        raise ModelFileError(
            f"{label}: the archive's central directory is not where its end record says "
            "(data prepended or appended?); re-save the model with Keras"
        )
    raw.seek(central_offset)
    directory = raw.read(central_size)
    parsed, cursor = [], 0
    for _ in range(entries):
        if directory[cursor:cursor + 4] != CENTRAL_MAGIC:
            raise ModelFileError(f"{label}: the zip central directory is damaged")
        fields = CENTRAL_HEADER.unpack_from(directory, cursor)
        name_len, extra_len, comment_len = fields[10:13]
        body = cursor + CENTRAL_HEADER.size
        entry = _CentralEntry(
            fields, directory[body:body + name_len],
            directory[body + name_len:body + name_len + extra_len + comment_len],
        )
        if entry.flags & FLAG_ENCRYPTED:
            raise ModelFileError(
                f"{label}: the archive holds an encrypted member "
                f"({entry.name.decode('utf-8', 'replace')}), which Keras does not write"
            )
        if ZIP32_LIMIT in fields[8:10] or ZIP32_LIMIT == fields[16]:
            raise ModelFileError(
                f"{label}: the archive uses zip64 records, which Keras does not write; "
                "re-save the model with Keras"
            )
        parsed.append(entry)
        cursor = body + name_len + extra_len + comment_len
    return _ZipLayout(tuple(parsed), central_offset, end_fields, comment)


def _new_local_header(raw: BinaryIO, entry: _CentralEntry | None, data: bytes, label: str) -> bytes:
    """A local header for the new metadata.json: the old one's fields, new CRC and sizes.

    The member is written stored, without a data descriptor, as Keras writes it.
    """
    crc = zlib.crc32(data)
    if entry is None:
        name = METADATA_MEMBER.encode()
        return LOCAL_HEADER.pack(ZIP_MAGIC, 20, 0, zipfile.ZIP_STORED, 0, DOS_DATE_1980,
                                 crc, len(data), len(data), len(name), 0) + name
    raw.seek(entry.local_offset)
    header = raw.read(LOCAL_HEADER.size)
    if len(header) < LOCAL_HEADER.size or header[:4] != ZIP_MAGIC:
        raise ModelFileError(
            f"{label}: the zip archive is damaged (bad local header of {METADATA_MEMBER})"
        )
    fields = list(LOCAL_HEADER.unpack(header))
    name_and_extra = raw.read(fields[9] + fields[10])
    fields[2] &= ~FLAG_DESCRIPTOR
    fields[3], fields[6], fields[7], fields[8] = zipfile.ZIP_STORED, crc, len(data), len(data)
    return LOCAL_HEADER.pack(*fields) + name_and_extra


def _write_archive_with_metadata(
    source: ModelSource, destination: Path, member: WeightMember, history: list[dict[str, Any]]
) -> WeightMember:
    """Copy the archive with a new metadata.json; the weight store, where it now lies."""
    label = source.label
    with source.open_binary() as raw:
        size = raw.seek(0, io.SEEK_END)
        layout = _zip_layout(raw, size, label)
        found = [e for e in layout.entries if e.name == METADATA_MEMBER.encode()]
        if len(found) > 1:
            raise ModelFileError(
                f"{label}: the archive holds {METADATA_MEMBER} twice; re-save the model with Keras"
            )
        old_entry = found[0] if found else None
        raw.seek(0)
        with zipfile.ZipFile(raw) as archive:
            old = read_metadata_bytes(archive, label)
        data = metadata_with_history(old, history, label)
        new_member = _new_local_header(raw, old_entry, data, label) + data
        # The old metadata.json spans from its local header to the next member (or the
        # central directory); a missing one is added just before the central directory.
        if old_entry is None:
            start = end = layout.central_offset
        else:
            start = old_entry.local_offset
            end = min([e.local_offset for e in layout.entries if e.local_offset > start]
                      + [layout.central_offset])
        shift = len(new_member) - (end - start)

        def moved(offset: int) -> int:
            return offset + shift if offset > start else offset

        def central_record(entry: _CentralEntry) -> bytes:
            if entry is not old_entry:
                return entry.encode(offset=moved(entry.local_offset))
            return entry.encode(
                flags=entry.flags & ~FLAG_DESCRIPTOR, method=zipfile.ZIP_STORED,
                crc=zlib.crc32(data), compressed=len(data), size=len(data),
            )

        directory = b"".join(central_record(entry) for entry in layout.entries)
        count = len(layout.entries)
        if old_entry is None:
            # As Keras's zipfile writes it: made on Unix, mode 0600, dated 1980-01-01.
            directory += CENTRAL_HEADER.pack(
                CENTRAL_MAGIC, 0x0314, 20, 0, zipfile.ZIP_STORED, 0, DOS_DATE_1980,
                zlib.crc32(data), len(data), len(data), len(METADATA_MEMBER), 0, 0, 0, 0,
                0o600 << 16, start,
            ) + METADATA_MEMBER.encode()
            count += 1
        central_offset = layout.central_offset + shift
        if central_offset + len(directory) > ZIP32_LIMIT or count >= 0xFFFF:
            raise ModelFileError(f"{label}: the edited archive would need zip64 records; refusing")
        end_fields = list(layout.end_fields)
        end_fields[3:7] = [count, count, len(directory), central_offset]
        with open(destination, "wb", buffering=0) as out:
            _copy_range(raw, out, 0, start, label)
            _write_all(out, new_member)
            _copy_range(raw, out, end, layout.central_offset - end, label)
            _write_all(out, directory + END_RECORD.pack(*end_fields) + layout.comment)
    return dataclasses.replace(
        member,
        data_offset=moved(member.data_offset),
        local_header_offset=moved(member.local_header_offset),
    )


def _write_all(out: io.RawIOBase, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = out.write(view) or 0
        view = view[written:]


def _copy_range(raw: BinaryIO, out: io.RawIOBase, offset: int, length: int, label: str) -> None:
    """Copy ``length`` bytes at ``offset`` of ``raw`` to ``out``'s current position.

    In the kernel (``copy_file_range``) when both are files on a filesystem that
    allows it, so a large weight store costs what ``shutil.copyfile`` costs.
    """
    try:
        source_fd: int | None = raw.fileno()
    except OSError:  # io.BytesIO (a model read from stdin)
        source_fd = None
    if source_fd is not None and hasattr(os, "copy_file_range"):
        try:
            while length:
                copied = os.copy_file_range(source_fd, out.fileno(), length, offset)
                if copied == 0:
                    raise ModelFileError(f"{label}: the archive is truncated")
                offset, length = offset + copied, length - copied
        except OSError as exc:
            if exc.errno not in KERNEL_COPY_UNAVAILABLE:
                raise
    raw.seek(offset)
    while length:
        chunk = raw.read(min(length, 1 << 22))
        if not chunk:
            raise ModelFileError(f"{label}: the archive is truncated")
        _write_all(out, chunk)
        length -= len(chunk)
