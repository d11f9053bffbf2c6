"""store.fileio: files replaced together, all of them or none."""

from __future__ import annotations

from pathlib import Path

import pytest

from conv_surgeon.errors import ConvSurgeonError
from conv_surgeon.store.fileio import replace_files_together


def test_every_file_is_replaced_and_no_backup_is_left(tmp_path: Path) -> None:
    old = [tmp_path / "a.weights.h5", tmp_path / "map.weights.json"]
    for path in old:
        path.write_text("old " + path.name)
    staged = [tmp_path / f".staged_{i}" for i in range(3)]
    for i, path in enumerate(staged):
        path.write_text(f"new {i}")
    new_file = tmp_path / "b.weights.h5"
    replace_files_together(list(zip(staged, [*old, new_file])))
    assert [p.read_text() for p in (*old, new_file)] == ["new 0", "new 1", "new 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.weights.h5", "b.weights.h5", "map.weights.json"]


def test_a_failing_move_puts_every_file_back(tmp_path: Path) -> None:
    first, created = tmp_path / "a.weights.h5", tmp_path / "new.weights.h5"
    first.write_text("old a")
    blocked = tmp_path / "b.weights.h5"
    blocked.mkdir()  # a file cannot replace a folder: the third move fails
    (blocked / "keep").write_text("x")
    staged = [tmp_path / f".staged_{i}" for i in range(3)]
    for i, path in enumerate(staged):
        path.write_text(f"new {i}")
    with pytest.raises(ConvSurgeonError, match="nothing was changed"):
        replace_files_together(list(zip(staged, [first, created, blocked])))
    assert first.read_text() == "old a"
    assert not created.exists()
    assert (blocked / "keep").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".bak")]
