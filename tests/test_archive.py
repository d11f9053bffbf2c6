"""The zip geometry of store.archive: the CRC of a patched member without a second pass,
and the raw copy around a replaced member."""

from __future__ import annotations

import io
import os
import random
import zlib
from pathlib import Path

import numpy as np
import pytest

from conv_surgeon.store.archive import Member, crc32_of_change, member_crcs


@pytest.mark.parametrize("seed", range(5))
def test_the_crc_of_a_change_gives_the_crc_of_the_changed_message(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        message = bytearray(rng.randbytes(rng.randint(1, 4000)))
        start = rng.randrange(len(message))
        new = rng.randbytes(rng.randint(1, len(message) - start))
        before = bytes(message)
        message[start:start + len(new)] = new
        after = len(message) - start - len(new)
        assert zlib.crc32(before) ^ crc32_of_change(before[start:start + len(new)], new, after) == zlib.crc32(message)


def test_member_crcs_of_several_patches_match_zlib_on_the_whole_member() -> None:
    rng = random.Random(1)
    blob = rng.randbytes(300_000)
    member = Member("model.weights.h5", 10, len(blob), zlib.crc32(blob), True, 0, 0)
    patches = [(0, b"abc"), (1000, rng.randbytes(5000)), (len(blob) - 10, b"0123456789")]
    edited = bytearray(blob)
    for offset, data in patches:
        edited[offset:offset + len(data)] = data
    old, new = member_crcs(io.BytesIO(b"x" * 10 + blob), member, patches, "m")
    assert (old, new) == (zlib.crc32(blob), zlib.crc32(bytes(edited)))


@pytest.mark.parametrize("layout", ["hole-data-hole", "data-hole-data", "all-data", "all-hole"])
def test_a_copied_range_keeps_the_bytes_and_leaves_holes_holes(tmp_path: Path, layout: str) -> None:
    """copy_range (the raw copy of a .keras around a replaced member): the bytes are the
    source's, from any offset, and a sparse file's holes stay holes instead of being written
    out as zeros (a 4 GiB archive of padding copies in a second, as `cp --sparse=auto`)."""
    from conv_surgeon.store.archive import copy_range

    mib = 1 << 20
    parts = {"hole-data-hole": "HDH", "data-hole-data": "DHD", "all-data": "DDD", "all-hole": "HHH"}[layout]
    source = tmp_path / "sparse.bin"
    rng = np.random.default_rng(3)
    with open(source, "wb") as out:
        for part in parts:
            if part == "D":
                out.write(rng.integers(0, 256, 8 * mib, dtype=np.uint8).tobytes())
            else:
                out.seek(8 * mib, os.SEEK_CUR)
        out.truncate(out.tell())
    data = source.read_bytes()
    for offset, length in ((0, len(data)), (mib + 7, len(data) - 3 * mib), (9 * mib, 5 * mib)):
        copy = tmp_path / "copy.bin"
        with open(source, "rb") as raw, open(copy, "wb", buffering=0) as out:
            out.write(b"head")
            copy_range(raw, out, offset, length, "sparse.bin")
        assert copy.read_bytes() == b"head" + data[offset: offset + length]
    full = tmp_path / "full.bin"
    with open(source, "rb") as raw, open(full, "wb", buffering=0) as out:
        copy_range(raw, out, 0, len(data), "sparse.bin")
    if os.stat(source).st_blocks * 512 < len(data) // 2:  # the filesystem keeps holes
        assert os.stat(full).st_blocks * 512 <= os.stat(source).st_blocks * 512 + mib
