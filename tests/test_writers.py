"""Two runs on one file: one writer at a time, reads that see one version, and a file
changed by another program is never overwritten (issue 19).

The locks are tested on their own (no Keras, no model), then through the real console
script on the committed sample model, as users run it: two `set --in-place` at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_into, sha256
from zoo import zoo_models  # noqa: F401 - a fixture

from conv_surgeon.errors import ConvSurgeonError
from conv_surgeon.store.locking import Claim, check_unchanged, locked

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("conv-surgeon"))
TINY = ROOT / "sample_models" / "tiny_cnn.keras"
# conv1's kernel shape: an array source, where an initializer would import TensorFlow.
SOBEL = ROOT / "sample_models" / "sobel.npy"


def _run(*args: object, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)


def _hold(path: Path, exclusive: bool) -> int:
    """Lock ``path`` as another conv-surgeon run would; close the descriptor to let go."""
    fd = os.open(path, os.O_RDWR if exclusive else os.O_RDONLY)
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0))
    return fd


def _kernel(path: Path, layer: str) -> np.ndarray:
    import conv_surgeon as cs

    return cs.get_weights(path, layer)["kernel"]


# --- the locks themselves -------------------------------------------------------------

def test_an_exclusive_lock_waits_for_the_other_holder_then_refuses(tmp_path, monkeypatch):
    model = tmp_path / "m.keras"
    model.write_bytes(b"PK\x03\x04 model")
    monkeypatch.setenv("CONV_SURGEON_LOCK_WAIT", "0.3")
    other = _hold(model, False)  # another run reading it
    waited: list[Path] = []
    started = time.monotonic()
    with pytest.raises(ConvSurgeonError, match="another conv-surgeon run is using it; waited 0 s"):
        with locked([Claim(model, True)], waited.append):
            pass
    assert time.monotonic() - started >= 0.3
    assert waited == [model]
    os.close(other)
    with locked([Claim(model, True)]):  # free now
        pass


def test_two_readers_share_a_file(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"model")
    other = _hold(model, False)
    with locked([Claim(model, False)], lambda path: pytest.fail("a reader waited for a reader")):
        pass
    os.close(other)


def test_a_lock_follows_the_file_a_writer_renamed_into_place(tmp_path, monkeypatch):
    """The waiter locked the old file; the writer renamed a new one onto the name: the
    waiter must lock the new file, not keep a lock on a file no longer there."""
    monkeypatch.setenv("CONV_SURGEON_LOCK_WAIT", "5")
    model = tmp_path / "m.keras"
    model.write_bytes(b"old")
    writer = _hold(model, True)

    def finish_writing() -> None:
        time.sleep(0.3)
        staged = tmp_path / ".m.keras.tmp"
        staged.write_bytes(b"new")
        os.replace(staged, model)
        os.close(writer)  # the writer ends

    thread = threading.Thread(target=finish_writing)
    thread.start()
    with locked([Claim(model, True)]):
        assert model.read_bytes() == b"new"
        with pytest.raises(BlockingIOError):  # the new file is the one held
            _hold(model, False)
    thread.join()


def test_a_file_changed_behind_the_lock_is_refused(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"read")
    with locked([Claim(model, True)]):
        check_unchanged(model)
        model.write_bytes(b"a training script saved over it")  # takes no lock
        with pytest.raises(ConvSurgeonError, match="changed by another process .* nothing was written"):
            check_unchanged(model)


def test_a_folder_is_locked_with_every_file_in_it(tmp_path):
    folder = tmp_path / "saved"
    (folder / "assets").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "assets" / "vocab.txt").write_text("a")
    files = (folder / "config.json", folder / "assets" / "vocab.txt")
    with locked([Claim(folder, True, files)]):
        check_unchanged(folder)
        (folder / "assets" / "vocab.txt").write_text("changed")
        with pytest.raises(ConvSurgeonError, match="changed by another process"):
            check_unchanged(folder)


def test_bad_lock_wait_is_one_line(tmp_path, monkeypatch):
    model = tmp_path / "m.keras"
    model.write_bytes(b"m")
    other = _hold(model, True)
    monkeypatch.setenv("CONV_SURGEON_LOCK_WAIT", "soon")
    with pytest.raises(ConvSurgeonError, match="CONV_SURGEON_LOCK_WAIT='soon': expected a number of seconds"):
        with locked([Claim(model, False)]):
            pass
    os.close(other)


# --- through the command line ---------------------------------------------------------

def _set_in_place(model: Path, layer: str, kernel: Path) -> None:
    """What `set MODEL --layer L --kernel K --in-place --no-smoke` runs, in a forked child;
    its exit status says whether it wrote (1, with its message on stderr, if not)."""
    import conv_surgeon as cs

    try:
        cs.set_weights(model, layer, kernel=str(kernel), in_place=True, smoke=False)
    except ConvSurgeonError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


@pytest.mark.slow
def test_two_in_place_writers_lose_no_update(tmp_path):
    """Issue 19's case: two `set --in-place` on different layers of one file, started
    together, 20 times: both edits land every time, and neither calls the file corrupt.
    (Forked from here rather than started as console scripts: they start within
    milliseconds of each other, closer than two interpreters would, and cost no import.)"""
    import multiprocessing

    conv1 = _kernel(TINY, "conv1")
    conv3 = _kernel(TINY, "conv3")
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "ones.npy", np.ones_like(conv1))
    np.save(arrays / "zeros.npy", np.zeros_like(conv3))
    fork = multiprocessing.get_context("fork")
    for trial in range(20):
        model = copy_into(tmp_path, TINY, f"m{trial}.keras")
        runs = [fork.Process(target=_set_in_place, args=(model, layer, arrays / array))
                for layer, array in (("conv1", "ones.npy"), ("conv3", "zeros.npy"))]
        for run in runs:
            run.start()
        for run in runs:
            run.join(120)
            assert run.exitcode == 0, f"trial {trial}: a writer failed (its error is in the captured stderr)"
        assert np.all(_kernel(model, "conv1") == 1), f"trial {trial}: the conv1 edit was lost"
        assert np.all(_kernel(model, "conv3") == 0), f"trial {trial}: the conv3 edit was lost"
        assert not np.array_equal(conv1, _kernel(model, "conv1")) and conv3.any()
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        model.unlink()


@pytest.mark.slow
def test_a_writer_waits_for_another_and_then_edits_the_new_file(tmp_path):
    model = copy_into(tmp_path, TINY)
    holder = _hold(model, True)  # another run is writing it
    run = subprocess.Popen([CLI, "set", str(model), "--layer", "conv1", "--kernel", SOBEL, "--in-place",
                            "--no-smoke"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([run.stderr], [], [], 60)
    assert ready, "it said nothing"
    first = run.stderr.readline()
    assert first == f"conv-surgeon: waiting for another run to finish with {model} (up to 120 s)\n"
    time.sleep(0.5)
    assert run.poll() is None, "it did not wait"
    assert sha256(model) == sha256(TINY)
    os.close(holder)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert np.array_equal(_kernel(model, "conv1"), np.load(SOBEL))


@pytest.mark.slow
def test_a_writer_that_cannot_get_the_file_says_so_and_changes_nothing(tmp_path):
    model = copy_into(tmp_path, TINY)
    before = sha256(model)
    holder = _hold(model, False)  # a long `inspect --stats` reads it
    done = _run("set", model, "--layer", "conv1", "--kernel", SOBEL, "--in-place", "--no-smoke",
                env={"CONV_SURGEON_LOCK_WAIT": "0.5"})
    os.close(holder)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"Error: {model}: another conv-surgeon run is using it; waited 0 s and gave up, nothing was "
        "written; run the command again when it has finished (or set CONV_SURGEON_LOCK_WAIT to wait longer)")
    assert "Traceback" not in done.stderr
    assert sha256(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [model.name]


def test_a_model_saved_over_during_the_edit_is_not_overwritten(tmp_path):
    """A program that takes no lock (a training script) saves the model while `set`
    checks its edit: the edit is refused, and the script's save is kept."""
    from conv_surgeon.instruments.set_weights import WeightRequest, set_weights
    from conv_surgeon.runtime.checks import NO_SMOKE
    from conv_surgeon.store.model_file import ModelFile
    from conv_surgeon.transaction.transaction import Destination, WriteOptions

    model = copy_into(tmp_path, TINY)
    theirs = (ROOT / "sample_models" / "all_convs.keras").read_bytes()

    def progress(done: int, total: int, what: str) -> None:
        if what == "staged and read back":  # not yet in place
            model.write_bytes(theirs)

    options = WriteOptions(Destination(model), NO_SMOKE)
    with pytest.raises(ConvSurgeonError, match=f"{model}: changed by another process"):
        set_weights(ModelFile.from_path(model), "conv1", [WeightRequest(None, init="ones")], options,
                    progress=progress)
    assert model.read_bytes() == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == [model.name]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_in_place_keeps_owner_group_and_mode_and_names_a_split_hard_link(tmp_path):
    model = copy_into(tmp_path, TINY)
    os.chown(model, 4321, 8765)
    os.chmod(model, 0o640)
    other = tmp_path / "backup-link.keras"
    os.link(model, other)
    done = _run("set", model, "--layer", "conv1", "--kernel", SOBEL, "--in-place", "--no-smoke", "--json")
    assert done.returncode == 0, done.stderr
    info = model.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (4321, 8765, 0o640)
    notes = json.loads(done.stdout)["notes"]
    assert notes == [f"{model} had 2 hard links: the edit replaced this name only, the other links still "
                     "hold the old model"]
    assert sha256(other) == sha256(TINY)


@pytest.mark.slow
def test_a_folder_copy_keeps_symlinks_as_links(tmp_path, zoo_models):
    """-o NEWDIR of a saved folder: a link to a file outside it stays a link (as `cp -R`
    keeps it), never a copy of that file's content."""
    from zoo import copy_of

    saved = copy_of(zoo_models("unzipped_dir"), tmp_path / "copy").path
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the output")
    (saved / "assets").mkdir(exist_ok=True)
    (saved / "assets" / "notes.txt").symlink_to(secret)
    out = tmp_path / "out"
    np.save(tmp_path / "zeros.npy", np.zeros((3, 3, 3, 4), np.float32))
    done = _run("set", saved, "--layer", "conv1", "--kernel", tmp_path / "zeros.npy", "-o", out, "--no-smoke")
    assert done.returncode == 0, done.stderr
    copied = out / "assets" / "notes.txt"
    assert copied.is_symlink() and os.readlink(copied) == str(secret)
    assert not any("not for the output" in p.read_text(errors="replace")
                   for p in out.rglob("*") if p.is_file() and not p.is_symlink())


# --- replacing an existing output (issue 20, item 5) --------------------------------------

def test_a_report_says_when_it_replaced_an_existing_file(cli, tmp_path):
    out = tmp_path / "out.keras"
    first = cli("set", TINY, "--layer", "conv1", "--kernel", SOBEL, "-o", out, "--no-smoke", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["replaced"] is False
    other = copy_into(tmp_path, ROOT / "sample_models" / "all_convs.keras", "out.keras")  # unrelated
    again = cli("set", TINY, "--layer", "conv1", "--kernel", SOBEL, "-o", other, "--no-smoke")
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[0].endswith(f"wrote {out} (replaced existing {out})")
    in_place = cli("set", out, "--layer", "conv1", "--kernel", SOBEL, "--in-place", "--no-smoke", "--json")
    assert json.loads(in_place.stdout)["replaced"] is False  # its own input, not another file


def test_no_clobber_keeps_an_existing_file(cli, tmp_path):
    from helpers import assert_one_error_line

    out = copy_into(tmp_path, ROOT / "sample_models" / "all_convs.keras", "out.keras")
    before = sha256(out)
    result = cli("set", TINY, "--layer", "conv1", "--kernel", SOBEL, "-o", out, "--no-smoke", "--no-clobber")
    assert_one_error_line(result, 1, f"-o {out}: exists, and --no-clobber keeps it; nothing was written")
    assert sha256(out) == before
    fresh = tmp_path / "fresh.keras"
    assert cli("set", TINY, "--layer", "conv1", "--kernel", SOBEL, "-o", fresh, "--no-smoke", "-n").exit_code == 0
    assert fresh.is_file()
