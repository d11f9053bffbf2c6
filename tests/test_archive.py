"""The zip geometry of store.archive: the CRC of a patched member without a second pass."""

from __future__ import annotations

import io
import random
import zlib

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
