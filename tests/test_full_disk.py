"""A full disk on every write path is one line, and leaves nothing behind (issue 19).

Each test mounts a small tmpfs and fills it, which needs root; elsewhere they are
skipped. The models are the committed samples and the zoo's saved folder, shard map and
weights-only file, all written by Keras.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_into, sha256
from zoo import zoo_models  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "sample_models" / "tiny_cnn.keras"
# conv1's kernel shape: an array source, where an initializer would import TensorFlow.
SOBEL = ROOT / "sample_models" / "sobel.npy"

pytestmark = pytest.mark.slow  # a mount per test
TINY_H5 = ROOT / "sample_models" / "tiny_cnn.h5"


@pytest.fixture
def disk(tmp_path):
    """A 512 KiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Write a filler file until the disk is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _listing(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def _assert_full_disk_line(result) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "No space left on device" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_set_to_a_full_disk(cli, disk, kind):
    model = TINY if kind == "keras" else TINY_H5
    _fill(disk)
    before = _listing(disk)
    result = cli("set", model, "--layer", "conv1", "--kernel", SOBEL, "-o", disk / f"out.{kind}", "--no-smoke")
    _assert_full_disk_line(result)
    assert _listing(disk) == before


def test_set_in_place_on_a_full_disk(cli, disk):
    model = copy_into(disk, TINY)
    _fill(disk)
    before = _listing(disk)
    result = cli("set", model, "--layer", "conv1", "--kernel", SOBEL, "--in-place", "--no-smoke")
    _assert_full_disk_line(result)
    assert _listing(disk) == before


@pytest.mark.parametrize("kind", ["weights_only", "sharded", "unzipped_dir"])
def test_every_save_kind_to_a_full_disk(cli, disk, zoo_models, tmp_path, kind):
    zm = zoo_models(kind)
    name = {"weights_only": "out.weights.h5", "sharded": "out.weights.json", "unzipped_dir": "out"}[kind]
    config = ("--config", zm.extra["config"]) if "config" in zm.extra else ()
    zeros = tmp_path / "zeros.npy"
    np.save(zeros, np.zeros((3, 3, 3, 16 if kind == "sharded" else 4), np.float32))
    _fill(disk)
    before = _listing(disk)
    result = cli("set", zm.path, *config, "--layer", "conv1", "--kernel", zeros, "-o", disk / name, "--no-smoke")
    _assert_full_disk_line(result)
    assert _listing(disk) == before


def test_a_rewrite_to_a_full_disk(cli, disk):
    _fill(disk)
    before = _listing(disk)
    result = cli("prune", TINY, "--layer", "conv1", "--filters", "0", "-o", disk / "p.keras", "--no-smoke")
    _assert_full_disk_line(result)
    assert _listing(disk) == before


def test_a_rewrite_with_a_full_temp_folder(cli, disk, tmp_path, monkeypatch):
    """fold-bn and prune build the new weight store in the temp folder first."""
    _fill(disk)
    # TMPDIR on a full disk is passed over by Python's tempfile (it tries a write there
    # first): the disk fills while the command writes, here it is full from the start.
    monkeypatch.setattr("tempfile.tempdir", str(disk))
    result = cli("prune", TINY, "--layer", "conv1", "--filters", "0", "-o", tmp_path / "p.keras", "--no-smoke")
    _assert_full_disk_line(result)
    assert not (tmp_path / "p.keras").exists()


@pytest.mark.parametrize("args", [
    ("get", TINY, "--layer", "conv1", "-o", "{disk}/k.npy"),
    ("get", TINY, "--all", "-o", "{disk}/all.npz"),
    ("show", TINY, "--layer", "conv1", "-o", "{disk}/k.png"),
], ids=["get", "get-all", "show"])
def test_exports_to_a_full_disk(cli, disk, args):
    _fill(disk)
    before = _listing(disk)
    result = cli(*(str(a).format(disk=disk) for a in args))
    _assert_full_disk_line(result)
    assert _listing(disk) == before
