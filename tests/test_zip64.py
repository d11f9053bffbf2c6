"""`.keras` archives with zip64 records: read in place and patched byte-exactly.

Keras writes an archive past 4 GiB with zipfile's zip64 records. One test builds such a
file for real (4.1 GiB of stored padding before the weights, so every offset of the
weight store needs zip64); another rewrites a small archive's central directory in the
zip64 form (32-bit fields 0xFFFFFFFF, the values in extra fields, a zip64 end record),
which Python's zipfile accepts, so the parsing runs on every test run in well under a
second.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest

from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.model.structure import read_structure, read_variables

GIB = 1 << 30


def _zip64_form(src: Path, dst: Path) -> None:
    """``src`` with every central-directory record and the end record in zip64 form."""
    data = src.read_bytes()
    end = data.rindex(b"PK\x05\x06")
    (_, _, _, _, count, size, offset, comment_len) = struct.unpack_from("<4sHHHHIIH", data, end)
    records, cursor = [], offset
    for _ in range(count):
        fields = list(struct.unpack_from("<4sHHHHHHIIIHHHHHII", data, cursor))
        name_len, extra_len, entry_comment_len = fields[10:13]
        body = cursor + 46
        name = data[body:body + name_len]
        extra = data[body + name_len:body + name_len + extra_len]
        entry_comment = data[body + name_len + extra_len:body + name_len + extra_len + entry_comment_len]
        values = (fields[9], fields[8], fields[16])  # size, compressed size, local offset
        zip64 = struct.pack("<HHQQQ", 1, 24, *values)
        fields[8] = fields[9] = fields[16] = 0xFFFFFFFF
        fields[11] = len(zip64) + len(extra)
        records.append(struct.pack("<4sHHHHHHIIIHHHHHII", *fields) + name + zip64 + extra + entry_comment)
        cursor = body + name_len + extra_len + entry_comment_len
    directory = b"".join(records)
    record_offset = offset + len(directory)
    zip64_end = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(directory), offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, record_offset, 1)
    end_record = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, comment_len)
    dst.write_bytes(data[:offset] + directory + zip64_end + locator + end_record + data[end + 22:])


def test_a_zip64_central_directory_is_read_and_patched(cli, samples: Path, tmp_path: Path) -> None:
    model = tmp_path / "zip64.keras"
    _zip64_form(samples / "tiny_cnn.keras", model)
    with zipfile.ZipFile(model) as archive:  # Python's zipfile takes it as zip64
        assert archive.testzip() is None
    kernel = np.arange(36, dtype=np.float32).reshape(3, 3, 1, 4)
    np.save(tmp_path / "k.npy", kernel)
    out = tmp_path / "out.keras"

    result = cli("set", model, "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", out, "--no-smoke")

    assert result.exit_code == 0, result.stderr
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None  # every member's CRC, the patched one included
        history = json.loads(archive.read("metadata.json"))["conv_surgeon"]["history"]
    assert history[-1]["edits"][0]["layer"] == "conv1"
    source = ModelFile.from_path(out)
    conv1 = next(layer for layer in read_structure(source).layers if layer.path == "conv1")
    assert np.array_equal(read_variables(source, [conv1.variables[0]])[conv1.variables[0].dataset], kernel)


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class _HolesForZeros:
    """A file that zipfile writes through, leaving its large all-zero writes as holes (a
    seek past them): the bytes read back are the ones zipfile wrote, and 4 GiB of zero
    padding costs neither disk space nor the time to write it (about 8 CPU-s in the
    kernel here)."""

    def __init__(self, raw: BinaryIO, zeros: bytes) -> None:
        self.raw, self.zeros = raw, zeros

    def write(self, data: bytes) -> int:
        if len(data) == len(self.zeros) and data == self.zeros:
            self.raw.seek(len(data), os.SEEK_CUR)
            return len(data)
        return self.raw.write(data)

    def __getattr__(self, name: str) -> Any:  # tell, seek, flush: the file's own
        return getattr(self.raw, name)


@pytest.mark.skipif(_free_bytes(Path("/tmp")) < 12 * GIB, reason="needs 12 GiB of free disk for two 4.1 GiB archives")
@pytest.mark.slow
def test_an_archive_over_4_gib_is_read_in_place_and_patched(cli, samples: Path, tmp_path: Path) -> None:
    model = tmp_path / "big.keras"
    chunk = bytes(1 << 24)
    with (open(model, "w+b") as raw, zipfile.ZipFile(samples / "tiny_cnn.keras") as small,
          zipfile.ZipFile(_HolesForZeros(raw, chunk), "w", allowZip64=True) as big):
        # Stored padding first, so the weight store lies past the 4 GiB mark.
        with big.open("assets/padding.bin", "w", force_zip64=True) as padding:
            for _ in range((4 * GIB + (1 << 26)) // len(chunk)):
                padding.write(chunk)
        for name in small.namelist():
            big.writestr(name, small.read(name))
    with zipfile.ZipFile(model) as archive:
        assert archive.getinfo("model.weights.h5").header_offset > 4 * GIB
        padding_info = archive.getinfo("assets/padding.bin")

    listed = cli("inspect", model, "--json")
    assert listed.exit_code == 0, listed.stderr
    original = json.loads(cli("inspect", samples / "tiny_cnn.keras", "--json").stdout)
    assert json.loads(listed.stdout)["layers"] == original["layers"]

    kernel = np.full((3, 3, 1, 4), 0.5, np.float32)
    np.save(tmp_path / "k.npy", kernel)
    out = tmp_path / "out.keras"
    result = cli("set", model, "--layer", "conv1", "--kernel", tmp_path / "k.npy", "-o", out, "--no-smoke")
    assert result.exit_code == 0, result.stderr

    with zipfile.ZipFile(out) as archive:
        weights = archive.getinfo("model.weights.h5")
        assert zlib.crc32(archive.read("model.weights.h5")) == weights.CRC
        assert weights.header_offset > 4 * GIB
        moved = archive.getinfo("assets/padding.bin")
        assert (moved.CRC, moved.file_size) == (padding_info.CRC, padding_info.file_size)
        assert json.loads(archive.read("metadata.json"))["conv_surgeon"]["history"]
    got = tmp_path / "got.npy"
    assert cli("get", out, "--layer", "conv1", "-o", got).exit_code == 0
    assert np.array_equal(np.load(got), kernel)
