"""Every exit cleans up: SIGTERM and SIGHUP run Ctrl-C's cleanup (exit 128 + n), forked
workers die with their parent, and the error line is never lost (issue 19).

Each case runs the real console script in its own session (so that every process it
forks is in its process group) on a copy of the committed sample model, with the
original's forward pass forked beside the edit (--compare), and stops it at several
moments: while the model is read, while TensorFlow imports, during the smoke test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import copy_into, sha256

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("conv-surgeon"))
TINY = ROOT / "sample_models" / "tiny_cnn.keras"

pytestmark = pytest.mark.slow


def _group_gone(pgid: int, within: float = 5.0) -> bool:
    """Whether no process of the group is left (orphans are reaped by init at once)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _start(tmp_path: Path, model: Path, *extra: str) -> subprocess.Popen:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    return subprocess.Popen(
        [CLI, "set", str(model), "--layer", "conv1", "--kernel-init", "ones", "--compare", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )


def _wait_for_silenced_stderr(run: subprocess.Popen, within: float = 30.0) -> None:
    """Wait until the command points its fd 2 at /dev/null: TensorFlow is importing.
    Skip when the command ended first (a fast machine and a tiny model)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and run.poll() is None:
        try:
            if os.readlink(f"/proc/{run.pid}/fd/2") == os.devnull:
                return
        except OSError:
            pass
        time.sleep(0.005)
    run.communicate(timeout=60)
    pytest.skip("the edit was over before TensorFlow's import silenced stderr")


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _wait_for_staged_file(run: subprocess.Popen, folder: Path, within: float = 60.0) -> None:
    """Wait until the edited model is staged beside its destination (the smoke test is
    next); skip when the command ended first."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and run.poll() is None:
        if any(p.name.endswith(".tmp") for p in folder.iterdir()):
            return
        time.sleep(0.005)
    run.communicate(timeout=60)
    pytest.skip("the edit was over before its staged file was seen")


@pytest.mark.parametrize("moment", ["reading", "importing", "staged"])
@pytest.mark.parametrize("how", ["in-place", "output"])
def test_sigterm_leaves_nothing_behind(tmp_path, moment, how):
    model = copy_into(tmp_path, TINY)
    before = sha256(model)
    args = ("--in-place",) if how == "in-place" else ("-o", str(tmp_path / "out.keras"))
    run = _start(tmp_path, model, *args)
    if moment == "reading":
        time.sleep(0.3)
    elif moment == "importing":
        _wait_for_silenced_stderr(run)
    else:
        _wait_for_staged_file(run, tmp_path)
    if run.poll() is not None:
        pytest.skip(f"the edit was over before the signal ({moment})")
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    if run.returncode == 0:
        pytest.skip("the edit ended as the signal came")
    assert run.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines()[-1] == "Error: stopped by SIGTERM; nothing was written", err
    assert "Traceback" not in err
    assert _group_gone(run.pid), "a forked worker outlived the command"
    assert sha256(model) == before
    assert _files(tmp_path) == [model.name, "tmp"], "a staged file was left behind"


def test_sighup_is_handled_like_sigterm(tmp_path):
    model = copy_into(tmp_path, TINY)
    run = _start(tmp_path, model, "--in-place")
    _wait_for_silenced_stderr(run)
    run.send_signal(signal.SIGHUP)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGHUP, err
    assert err.splitlines()[-1] == "Error: stopped by SIGHUP; nothing was written"
    assert _group_gone(run.pid)
    assert _files(tmp_path) == [model.name, "tmp"]


def test_a_killed_command_takes_its_workers_with_it(tmp_path):
    """SIGKILL runs no cleanup at all; the original model's run, forked by `prune` to
    compare with, must still not live on."""
    model = copy_into(tmp_path, TINY)
    run = subprocess.Popen([CLI, "prune", str(model), "--layer", "conv1", "--filters", "0", "-o",
                            str(tmp_path / "out.keras")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    children: list[str] = []
    deadline = time.monotonic() + 10
    while not children and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
        children = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout.split()
    run.kill()
    run.communicate(timeout=30)
    assert children, "no worker was running: the test did not test anything"
    assert _group_gone(run.pid), "a worker outlived its killed parent"


def test_the_error_line_survives_tensorflows_silenced_stderr(tmp_path):
    """Ctrl-C while TensorFlow imports (which points fd 2 at /dev/null meanwhile): the
    `Error:` line still reaches the terminal."""
    model = copy_into(tmp_path, TINY)
    run = _start(tmp_path, model, "-o", str(tmp_path / "out.keras"))
    _wait_for_silenced_stderr(run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert err.splitlines()[-1] == "Error: interrupted; nothing was written", err
    assert _group_gone(run.pid)


SWALLOWER = '''\
import os, signal, time
try:  # a library that catches everything, as parts of TensorFlow's import do
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
except BaseException:
    pass
'''


def _set_importing(tmp_path: Path, module: str, code: str) -> tuple[subprocess.CompletedProcess, Path, str]:
    """`set --in-place` with ``code`` imported for its smoke test as ``module``: the run,
    the model and the model's digest before."""
    (tmp_path / f"{module}.py").write_text(code)
    model = copy_into(tmp_path, TINY)
    before = sha256(model)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    run = subprocess.run([CLI, "set", str(model), "--layer", "conv1", "--kernel-init", "ones", "--in-place",
                          "--import", module], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": path}, timeout=120)
    return run, model, before


BREAKER = '''\
import os, signal, time
try:  # a SIGTERM cuts an import short, and the library says so in its own words
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
except BaseException:
    raise ImportError("To use Keras, you need to have `optree` installed. Install it via `pip install optree`.")
'''


def test_a_signal_a_library_turns_into_its_own_error_is_reported_as_the_signal(tmp_path):
    """Seen in CI under load: a SIGTERM during Keras's import made `import optree` fail,
    and Keras raised ImportError, which the command reported as an internal error (exit 70)."""
    run, model, before = _set_importing(tmp_path, "breaker", BREAKER)
    assert run.returncode == 128 + signal.SIGTERM, run.stderr
    assert run.stderr.splitlines()[-1] == "Error: stopped by SIGTERM; nothing was written", run.stderr
    assert sha256(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([model.name, "breaker.py"])


def test_a_ctrl_c_that_a_library_swallows_still_stops_the_write(tmp_path):
    """The Ctrl-C arrives while third-party code runs (here a module imported for the smoke
    test) and that code swallows the KeyboardInterrupt: the command still stops, writes
    nothing and exits 130, instead of going on to deliver the model."""
    run, model, before = _set_importing(tmp_path, "swallower", SWALLOWER)
    assert run.returncode == 130, run.stderr
    assert run.stderr.splitlines()[-1] == "Error: interrupted; nothing was written", run.stderr
    assert sha256(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([model.name, "swallower.py"])
