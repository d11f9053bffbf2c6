"""The zip side of a `.keras` archive: where its members lie, and byte-exact rewrites.

Keras stores ``model.weights.h5`` uncompressed, so the weight store is read in place at
its byte offset (:class:`Window`) and an edit that keeps every dataset's size only
writes new bytes there and the member's new CRC32 (local header, central directory and
any data descriptor). Replacing a member by one of another length (``metadata.json``
with a provenance history) rebuilds the archive around it: the bytes before and after
the old member are copied raw (``os.copy_file_range`` where the kernel offers it) and a
new central directory points at the shifted members.

Archives over 4 GiB carry zip64 records: sizes and offsets in the extra fields of the
central directory, and a zip64 end record. Both are read, and kept up to date when a
member moves.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ModelFileError

ZIP_MAGIC = b"PK\x03\x04"
CENTRAL_MAGIC = b"PK\x01\x02"
DESCRIPTOR_MAGIC = b"PK\x07\x08"
END_MAGIC = b"PK\x05\x06"
ZIP64_END_MAGIC = b"PK\x06\x06"
ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
# What opening or reading a damaged zip raises besides BadZipFile: a damaged deflate stream
# (zlib.error), an encrypted member (RuntimeError), a method zipfile lacks
# (NotImplementedError), a name flagged UTF-8 that is not (UnicodeDecodeError).
ZIP_FAULTS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error, RuntimeError,
              NotImplementedError, UnicodeDecodeError)
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")
END_RECORD = struct.Struct("<4sHHHHIIH")
ZIP64_END_RECORD = struct.Struct("<4sQHHIIQQQQ")
ZIP64_LOCATOR = struct.Struct("<4sIQI")
ZIP64_EXTRA_ID = 0x0001
ZIP32_LIMIT = 0xFFFFFFFF
FLAG_ENCRYPTED = 0x01
FLAG_DESCRIPTOR = 0x08
LOCAL_CRC_OFFSET = 14  # of the CRC32 field in a local header
CENTRAL_CRC_OFFSET = 16  # of the CRC32 field in a central-directory record
DOS_DATE_1980 = 0x21  # 1980-01-01, the date zipfile gives a member written without one
# copy_file_range errors that mean "not here" (another filesystem, an old kernel): copy
# through user space instead.
KERNEL_COPY_UNAVAILABLE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM)


class Window(io.RawIOBase):
    """A read-only view of ``size`` bytes at ``offset`` of a seekable binary file.

    h5py reads the weight store through it in place inside the zip: a
    ``zipfile.open()`` stream would re-read from the member's start on every seek.
    """

    def __init__(self, raw: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        self._raw, self._offset, self._size, self._pos = raw, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + pos
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        if n == 0:
            return 0
        self._raw.seek(self._offset + self._pos)
        got = self._raw.readinto(view[:n]) or 0  # type: ignore[attr-defined]
        self._pos += got
        return got


@dataclass(frozen=True)
class Member:
    """Where an archive member's bytes lie."""

    name: str
    data_offset: int  # offset of the member's first byte in the archive
    size: int
    crc: int
    stored: bool  # uncompressed, so readable and patchable in place
    local_header_offset: int
    flag_bits: int


def locate_member(archive: zipfile.ZipFile, raw: BinaryIO, name: str, label: str) -> Member:
    """The member ``name`` of an open archive (``raw`` is the file under it)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ModelFileError(
            f"{label}: zip archive without {name} (members: "
            f"{', '.join(archive.namelist()[:6]) or 'none'}); not a Keras 3 .keras file"
        ) from None
    raw.seek(info.header_offset)
    header = raw.read(LOCAL_HEADER.size)
    if len(header) < LOCAL_HEADER.size or header[:4] != ZIP_MAGIC:
        raise ModelFileError(f"{label}: the zip archive is damaged (bad local header)")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return Member(
        name=name,
        data_offset=info.header_offset + LOCAL_HEADER.size + name_len + extra_len,
        size=info.file_size,
        crc=info.CRC,
        stored=info.compress_type == zipfile.ZIP_STORED,
        local_header_offset=info.header_offset,
        flag_bits=info.flag_bits,
    )


def member_crcs(raw: BinaryIO, member: Member, patches: Iterable[tuple[int, bytes]], label: str) -> tuple[int, int]:
    """CRC32 of the member as it is and as it will be with ``patches`` (offset, bytes,
    sorted by offset, offsets within the member), in one pass over its bytes.

    For a few patches the new CRC is not computed over the whole member again: for two
    messages of one length, CRC32(A) xor CRC32(B) is the linear part of the CRC of A xor B,
    which is zero but for each patch (:func:`crc32_of_change`). Each costs a few ms of
    pure-Python arithmetic, so past :data:`COMBINED_PATCHES` patches (`port` patches every
    variable: ResNet50's 320 took 0.9 s) the new CRC runs over the bytes, beside the old one.
    """
    patches = list(patches)
    direct = len(patches) > COMBINED_PATCHES
    old = new = 0
    position = 0
    change = 0
    raw.seek(member.data_offset)
    for offset, data in [*patches, (member.size, b"")]:
        while position < offset:
            chunk = raw.read(min(offset - position, 1 << 22))
            if not chunk:
                raise ModelFileError(f"{label}: the archive is truncated")
            old = zlib.crc32(chunk, old)
            if direct:
                new = zlib.crc32(chunk, new)
            position += len(chunk)
        if data:
            replaced = raw.read(len(data))
            if len(replaced) != len(data):
                raise ModelFileError(f"{label}: the archive is truncated")
            old = zlib.crc32(replaced, old)
            if direct:
                new = zlib.crc32(data, new)
            else:
                change ^= crc32_of_change(replaced, data, member.size - offset - len(data))
            position += len(replaced)
    return old, new if direct else old ^ change


# Patches whose CRC changes are combined one by one; with more, the new CRC is computed
# over the member's bytes.
COMBINED_PATCHES = 16


def crc32_of_change(old: bytes, new: bytes, after: int) -> int:
    """What replacing ``old`` by ``new`` (same length), followed by ``after`` more bytes,
    does to a message's CRC32: the value to xor into the old CRC."""
    delta = bytes(a ^ b for a, b in zip(old, new)) if len(old) < 64 else (
        (int.from_bytes(old, "little") ^ int.from_bytes(new, "little")).to_bytes(len(old), "little"))
    # The linear part of CRC32(delta): the affine part (initial and final inversion)
    # depends on the length alone and cancels against the CRC of as many zeros.
    linear = zlib.crc32(delta) ^ zlib.crc32(bytes(len(delta)))
    return _append_zeros(linear, after)


def _append_zeros(crc: int, count: int) -> int:
    """The linear CRC register after ``count`` zero bytes more (zlib's crc32_combine)."""
    if count == 0 or crc == 0:
        return crc
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)  # first pass: one zero byte
        if count & 1:
            crc = _gf2_times(even, crc)
        count >>= 1
        if count == 0:
            return crc
        odd = _gf2_square(even)
        if count & 1:
            crc = _gf2_times(odd, crc)
        count >>= 1
        if count == 0:
            return crc


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, column) for column in matrix]


def _replace_crc(handle: BinaryIO, offset: int, old: int, new: int) -> None:
    handle.seek(offset)
    (stored,) = struct.unpack("<I", handle.read(4))
    # A local header followed by a data descriptor may hold 0: leave it so.
    if stored == old:
        handle.seek(offset)
        handle.write(struct.pack("<I", new))


def write_member_crc(handle: BinaryIO, member: Member, new_crc: int, label: str) -> None:
    """Give ``member`` of the archive open in ``handle`` (r+b) the CRC32 ``new_crc``
    everywhere the archive records it."""
    _replace_crc(handle, member.local_header_offset + LOCAL_CRC_OFFSET, member.crc, new_crc)
    size = handle.seek(0, os.SEEK_END)
    layout = zip_layout(handle, size, label)
    for entry, position in zip(layout.entries, layout.entry_offsets):
        if entry.local_offset == member.local_header_offset:
            _replace_crc(handle, position + CENTRAL_CRC_OFFSET, member.crc, new_crc)
            break
    else:
        raise ModelFileError(f"{label}: the zip central directory has no entry for {member.name}")
    if member.flag_bits & FLAG_DESCRIPTOR:
        descriptor = member.data_offset + member.size
        handle.seek(descriptor)
        skip = 4 if handle.read(4) == DESCRIPTOR_MAGIC else 0
        _replace_crc(handle, descriptor + skip, member.crc, new_crc)


# --- the central directory -----------------------------------------------------------


@dataclass(frozen=True)
class CentralEntry:
    fields: tuple[Any, ...]  # CENTRAL_HEADER's fields
    name: bytes
    extra: bytes
    comment: bytes
    compressed_size: int  # the zip64 values where the 32-bit fields hold 0xFFFFFFFF
    file_size: int
    local_offset: int

    @property
    def flags(self) -> int:
        return int(self.fields[3])

    def encode(self, **changes: int) -> bytes:
        """The record with some fields changed; a moved member past 4 GiB gets (or
        updates) a zip64 extra field for its offset."""
        index = {"flags": 3, "method": 4, "crc": 7}
        fields = list(self.fields)
        for key in ("flags", "method", "crc"):
            if key in changes:
                fields[index[key]] = changes[key]
        sizes = (changes.get("compressed", self.compressed_size), changes.get("size", self.file_size))
        offset = changes.get("offset", self.local_offset)
        values: list[int] = []
        # zip64 extra field order: uncompressed size, compressed size, local offset.
        if sizes[1] >= ZIP32_LIMIT or self.fields[9] == ZIP32_LIMIT:
            values.append(sizes[1])
            fields[9] = ZIP32_LIMIT
        else:
            fields[9] = sizes[1]
        if sizes[0] >= ZIP32_LIMIT or self.fields[8] == ZIP32_LIMIT:
            values.insert(len(values), sizes[0])
            fields[8] = ZIP32_LIMIT
        else:
            fields[8] = sizes[0]
        if offset >= ZIP32_LIMIT or self.fields[16] == ZIP32_LIMIT:
            values.append(offset)
            fields[16] = ZIP32_LIMIT
        else:
            fields[16] = offset
        extra = _without_zip64_extra(self.extra)
        if values:
            extra = struct.pack("<HH", ZIP64_EXTRA_ID, 8 * len(values)) + struct.pack(
                f"<{len(values)}Q", *values) + extra
        fields[11] = len(extra)
        return CENTRAL_HEADER.pack(*fields) + self.name + extra + self.comment


def _extra_fields(extra: bytes) -> list[tuple[int, bytes]]:
    found, cursor = [], 0
    while cursor + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, cursor)
        found.append((tag, extra[cursor + 4:cursor + 4 + size]))
        cursor += 4 + size
    return found


def _without_zip64_extra(extra: bytes) -> bytes:
    return b"".join(
        struct.pack("<HH", tag, len(body)) + body
        for tag, body in _extra_fields(extra) if tag != ZIP64_EXTRA_ID
    )


@dataclass(frozen=True)
class ZipLayout:
    entries: tuple[CentralEntry, ...]
    entry_offsets: tuple[int, ...]  # where each central-directory record starts
    central_offset: int
    end_fields: tuple[Any, ...]  # END_RECORD's fields
    comment: bytes
    zip64: bool


def zip_layout(raw: BinaryIO, size: int, label: str) -> ZipLayout:
    """The central directory of a single-disk archive, zip64 records included, parsed raw."""
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
    zip64 = position >= ZIP64_LOCATOR.size and tail[
        position - ZIP64_LOCATOR.size:position - ZIP64_LOCATOR.size + 4] == ZIP64_LOCATOR_MAGIC
    directory_end = end_offset
    if zip64:
        _, _, record_offset, _ = ZIP64_LOCATOR.unpack_from(tail, position - ZIP64_LOCATOR.size)
        raw.seek(record_offset)
        record = raw.read(ZIP64_END_RECORD.size)
        if len(record) < ZIP64_END_RECORD.size or record[:4] != ZIP64_END_MAGIC:
            raise ModelFileError(f"{label}: the archive's zip64 end record is damaged")
        (_, _, _, _, disk, central_disk, disk_entries, entries, central_size,
         central_offset) = ZIP64_END_RECORD.unpack(record)
        directory_end = record_offset
    elif ZIP32_LIMIT in (central_size, central_offset) or 0xFFFF in (disk_entries, entries):
        raise ModelFileError(f"{label}: the archive's end record is damaged (zip64 values without a zip64 record)")
    if disk or central_disk or disk_entries != entries:
        raise ModelFileError(f"{label}: the archive is split over several disks; join it first")
    if central_offset + central_size != directory_end:
        raise ModelFileError(
            f"{label}: the archive's central directory is not where its end record says "
            "(data prepended or appended?); re-save the model with Keras"
        )
    raw.seek(central_offset)
    directory = raw.read(central_size)
    parsed, offsets, cursor = [], [], 0
    for _ in range(entries):
        if directory[cursor:cursor + 4] != CENTRAL_MAGIC:
            raise ModelFileError(f"{label}: the zip central directory is damaged")
        fields = CENTRAL_HEADER.unpack_from(directory, cursor)
        name_len, extra_len, comment_len = fields[10:13]
        body = cursor + CENTRAL_HEADER.size
        name = directory[body:body + name_len]
        extra = directory[body + name_len:body + name_len + extra_len]
        entry_comment = directory[body + name_len + extra_len:body + name_len + extra_len + comment_len]
        if fields[3] & FLAG_ENCRYPTED:
            raise ModelFileError(
                f"{label}: the archive holds an encrypted member "
                f"({name.decode('utf-8', 'replace')}), which Keras does not write"
            )
        parsed.append(_central_entry(fields, name, extra, entry_comment, label))
        offsets.append(central_offset + cursor)
        cursor = body + name_len + extra_len + comment_len
    return ZipLayout(tuple(parsed), tuple(offsets), central_offset, end_fields, comment, zip64)


def _central_entry(fields: tuple[Any, ...], name: bytes, extra: bytes, comment: bytes, label: str) -> CentralEntry:
    """Resolve the 32-bit fields that defer to the zip64 extra field."""
    values = [int(fields[9]), int(fields[8]), int(fields[16])]  # size, compressed, offset
    zip64 = next((body for tag, body in _extra_fields(extra) if tag == ZIP64_EXTRA_ID), b"")
    cursor = 0
    for i in range(3):
        if values[i] == ZIP32_LIMIT:
            if cursor + 8 > len(zip64):
                raise ModelFileError(
                    f"{label}: the zip64 record of {name.decode('utf-8', 'replace')} is damaged"
                )
            (values[i],) = struct.unpack_from("<Q", zip64, cursor)
            cursor += 8
    return CentralEntry(fields, name, extra, comment, compressed_size=values[1],
                        file_size=values[0], local_offset=values[2])


def _new_local_header(raw: BinaryIO, entry: CentralEntry | None, name: str, data: bytes, label: str) -> bytes:
    """A local header for the new member: the old one's fields, new CRC and sizes.

    The member is written stored, without a data descriptor, as Keras writes it.
    """
    crc = zlib.crc32(data)
    if entry is None:
        encoded = name.encode()
        return LOCAL_HEADER.pack(ZIP_MAGIC, 20, 0, zipfile.ZIP_STORED, 0, DOS_DATE_1980,
                                 crc, len(data), len(data), len(encoded), 0) + encoded
    raw.seek(entry.local_offset)
    header = raw.read(LOCAL_HEADER.size)
    if len(header) < LOCAL_HEADER.size or header[:4] != ZIP_MAGIC:
        raise ModelFileError(f"{label}: the zip archive is damaged (bad local header of {name})")
    fields = list(LOCAL_HEADER.unpack(header))
    stored_name = raw.read(fields[9])
    raw.read(fields[10])  # the old extra field (a zip64 one would now lie about the sizes)
    fields[2] &= ~FLAG_DESCRIPTOR
    fields[3], fields[6], fields[7], fields[8], fields[10] = zipfile.ZIP_STORED, crc, len(data), len(data), 0
    return LOCAL_HEADER.pack(*fields) + stored_name


def replace_member(raw: BinaryIO, destination: Path, name: str, data: bytes, moved: Member, label: str) -> Member:
    """Copy the archive in ``raw`` to ``destination`` with member ``name`` holding ``data``
    (added before the central directory when the archive has none); every other
    member's bytes are copied as they are. Returns ``moved`` (another member) where it
    now lies."""
    size = raw.seek(0, io.SEEK_END)
    layout = zip_layout(raw, size, label)
    found = [e for e in layout.entries if e.name == name.encode()]
    if len(found) > 1:
        raise ModelFileError(f"{label}: the archive holds {name} twice; re-save the model with Keras")
    old_entry = found[0] if found else None
    new_member = _new_local_header(raw, old_entry, name, data, label) + data
    # The old member spans from its local header to the next member (or the central
    # directory); a missing one is added just before the central directory.
    if old_entry is None:
        start = end = layout.central_offset
    else:
        start = old_entry.local_offset
        end = min([e.local_offset for e in layout.entries if e.local_offset > start]
                  + [layout.central_offset])
    shift = len(new_member) - (end - start)

    def shifted(offset: int) -> int:
        return offset + shift if offset > start else offset

    def central_record(entry: CentralEntry) -> bytes:
        if entry is not old_entry:
            return entry.encode(offset=shifted(entry.local_offset))
        return entry.encode(flags=entry.flags & ~FLAG_DESCRIPTOR, method=zipfile.ZIP_STORED,
                            crc=zlib.crc32(data), compressed=len(data), size=len(data))

    directory = b"".join(central_record(entry) for entry in layout.entries)
    count = len(layout.entries)
    if old_entry is None:
        # As Keras's zipfile writes it: made on Unix, mode 0600, dated 1980-01-01.
        directory += CENTRAL_HEADER.pack(
            CENTRAL_MAGIC, 0x0314, 20, 0, zipfile.ZIP_STORED, 0, DOS_DATE_1980,
            zlib.crc32(data), len(data), len(data), len(name.encode()), 0, 0, 0, 0,
            0o600 << 16, start,
        ) + name.encode()
        count += 1
    central_offset = layout.central_offset + shift
    with open(destination, "wb", buffering=0) as out:
        copy_range(raw, out, 0, start, label)
        _write_all(out, new_member)
        copy_range(raw, out, end, layout.central_offset - end, label)
        _write_all(out, directory + _end_records(layout, count, len(directory), central_offset))
    return replace(moved, data_offset=shifted(moved.data_offset),
                   local_header_offset=shifted(moved.local_header_offset))


def _end_records(layout: ZipLayout, count: int, directory_size: int, central_offset: int) -> bytes:
    end_fields = list(layout.end_fields)
    needs_zip64 = layout.zip64 or central_offset + directory_size >= ZIP32_LIMIT or count >= 0xFFFF
    if not needs_zip64:
        end_fields[3:7] = [count, count, directory_size, central_offset]
        return END_RECORD.pack(*end_fields) + layout.comment
    record_offset = central_offset + directory_size
    record = ZIP64_END_RECORD.pack(ZIP64_END_MAGIC, ZIP64_END_RECORD.size - 12, 45, 45, 0, 0,
                                   count, count, directory_size, central_offset)
    locator = ZIP64_LOCATOR.pack(ZIP64_LOCATOR_MAGIC, 0, record_offset, 1)
    end_fields[3:7] = [min(count, 0xFFFF), min(count, 0xFFFF), min(directory_size, ZIP32_LIMIT),
                       min(central_offset, ZIP32_LIMIT)]
    return record + locator + END_RECORD.pack(*end_fields) + layout.comment


def _write_all(out: io.RawIOBase, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = out.write(view) or 0
        view = view[written:]


def _hole_length(fd: int, offset: int, length: int) -> int:
    """How many of the ``length`` bytes at ``offset`` are a hole of a sparse file (read as
    zeros, stored nowhere); 0 where the filesystem cannot tell (then all is data)."""
    if not hasattr(os, "SEEK_DATA"):  # a platform without sparse-file seeks
        return 0
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nothing but a hole from here to the end of the file
            return min(length, max(0, os.fstat(fd).st_size - offset))
        return 0  # SEEK_DATA not offered here
    return min(length, data - offset)


def _data_length(fd: int, offset: int, length: int) -> int:
    """How many bytes from ``offset`` (where data lies) run to the next hole."""
    if not hasattr(os, "SEEK_HOLE"):
        return length
    try:
        return max(1, os.lseek(fd, offset, os.SEEK_HOLE) - offset)
    except OSError:
        return length


def _skip(out: io.RawIOBase, length: int) -> None:
    """Leave ``length`` bytes of ``out`` a hole: move past them, the file grown to cover
    them (a later write, or none, reads them back as zeros)."""
    end = out.seek(length, os.SEEK_CUR)
    fd = out.fileno()
    if os.fstat(fd).st_size < end:
        os.ftruncate(fd, end)


def copy_range(raw: BinaryIO, out: io.RawIOBase, offset: int, length: int, label: str) -> None:
    """Copy ``length`` bytes at ``offset`` of ``raw`` to ``out``'s current position.

    In the kernel (``copy_file_range``) when both are files on a filesystem that
    allows it, so a large weight store costs what ``shutil.copyfile`` costs; a sparse
    file's holes (``SEEK_HOLE``) stay holes in the copy, as ``cp --sparse=auto`` keeps them.
    """
    try:
        source_fd: int | None = raw.fileno()
    except OSError:  # io.BytesIO (a model read from stdin)
        source_fd = None
    if source_fd is not None and hasattr(os, "copy_file_range"):
        try:
            while length:
                hole = _hole_length(source_fd, offset, length)
                if hole:  # a sparse file's hole stays a hole (as `cp --sparse=auto`)
                    _skip(out, hole)
                    offset, length = offset + hole, length - hole
                    continue
                copied = os.copy_file_range(source_fd, out.fileno(), min(length, _data_length(source_fd, offset,
                                                                                             length)), offset)
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
