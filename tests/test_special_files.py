"""Named pipes and devices, as outputs and inputs (issue 19): `-o FIFO` is streamed into
the pipe, never replaced by a file; a pipe as the model or a source is read once, with a
bound and a timeout; a device that never ends (`/dev/zero`) is refused in one line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_error_line

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("conv-surgeon"))
TINY = ROOT / "sample_models" / "tiny_cnn.keras"
# conv1's kernel shape: an array source, where an initializer would import TensorFlow.
SOBEL = ROOT / "sample_models" / "sobel.npy"

pytestmark = pytest.mark.slow  # each runs the console script (a second or more)


def _run(*args: object, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    # A pipe nobody writes fails the test in seconds, not after the minute users get.
    env = {**os.environ, "CONV_SURGEON_PIPE_TIMEOUT": "10", **(env or {})}
    return subprocess.run([CLI, *map(str, args)], capture_output=True, env=env, timeout=120, **kwargs)


def _drain(fifo: Path, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(fifo, "rb") as pipe:
            into.append(pipe.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _feed(fifo: Path, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_output_to_a_named_pipe_streams_the_model_into_it(tmp_path):
    fifo = tmp_path / "model.pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = _drain(fifo, received)
    done = _run("set", TINY, "--layer", "conv1", "--kernel", SOBEL, "-o", fifo, "--no-smoke")
    reader.join(30)
    assert done.returncode == 0, done.stderr
    assert fifo.is_fifo(), "the pipe was replaced by a file"
    assert received and zipfile.ZipFile(io.BytesIO(received[0])).testzip() is None
    copy = tmp_path / "received.keras"
    copy.write_bytes(received[0])
    out = tmp_path / "k.npy"
    assert _run("get", copy, "--layer", "conv1", "-o", out).returncode == 0
    assert np.array_equal(np.load(out), np.load(SOBEL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npy", "model.pipe", "received.keras"]


def test_output_to_dev_null_is_accepted_and_writes_no_file(tmp_path):
    done = _run("set", TINY, "--layer", "conv1", "--kernel", SOBEL, "-o", "/dev/null", "--no-smoke",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path("/dev/null").is_char_device()
    assert list(tmp_path.iterdir()) == []


def test_get_into_a_named_pipe(tmp_path):
    fifo = tmp_path / "k.npy"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = _drain(fifo, received)
    done = _run("get", TINY, "--layer", "conv1", "-o", fifo)
    reader.join(30)
    assert done.returncode == 0, done.stderr
    assert fifo.is_fifo()
    assert np.load(io.BytesIO(received[0])).shape == (3, 3, 1, 4)


def test_a_model_from_a_named_pipe_is_read_once(tmp_path):
    fifo = tmp_path / "model.pipe"
    os.mkfifo(fifo)
    writer = _feed(fifo, TINY.read_bytes())
    done = _run("inspect", fifo, "--json")
    writer.join(30)
    assert done.returncode == 0, done.stderr
    assert b'"conv1"' in done.stdout


def test_a_named_pipe_nobody_writes_is_given_up_in_one_line(tmp_path):
    fifo = tmp_path / "model.pipe"
    os.mkfifo(fifo)
    done = _run("inspect", fifo, env={"CONV_SURGEON_PIPE_TIMEOUT": "1"})
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"Error: {fifo}: nothing arrived for 1 s (a named pipe whose writer has not started, or stopped); "
        "start the writer first, or set CONV_SURGEON_PIPE_TIMEOUT\n")


def test_a_source_from_a_named_pipe(tmp_path):
    fifo = tmp_path / "k.pipe"
    os.mkfifo(fifo)
    buffer = io.BytesIO()
    np.save(buffer, np.full((3, 3, 1, 4), 2, np.float32))
    writer = _feed(fifo, buffer.getvalue())
    out = tmp_path / "out.keras"
    done = _run("set", TINY, "--layer", "conv1", "--kernel", fifo, "-o", out, "--no-smoke")
    writer.join(30)
    assert done.returncode == 0, done.stderr
    assert _run("get", out, "--layer", "conv1", "-o", tmp_path / "k.npy").returncode == 0
    assert np.all(np.load(tmp_path / "k.npy") == 2)


@pytest.mark.parametrize("where", ["source", "model", "stdin model", "stdin source"])
def test_dev_zero_is_refused_in_one_line(tmp_path, where):
    out = tmp_path / "out.keras"
    zero = open("/dev/zero", "rb")
    with zero:
        if where == "source":
            done = _run("set", TINY, "--layer", "conv1", "--bias", "/dev/zero", "-o", out, "--no-smoke")
            expected = "source '/dev/zero': /dev/zero is a character device, not a file"
        elif where == "model":
            done = _run("inspect", "/dev/zero")
            expected = "/dev/zero: is a device, not a model file"
        elif where == "stdin model":
            done = _run("inspect", "-", stdin=zero)
            expected = "<stdin>: stdin is a character device, not a file or a pipe"
        else:
            done = _run("set", TINY, "--layer", "conv1", "--bias", "-", "-o", out, "--no-smoke", stdin=zero)
            expected = "source '-': stdin is a character device, not a file or a pipe"
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert stderr.startswith(f"Error: {expected}") and stderr.count("\n") == 1, stderr
    assert not out.exists()


def test_in_place_on_a_pipe_is_a_usage_error(tmp_path):
    fifo = tmp_path / "model.pipe"
    os.mkfifo(fifo)
    done = _run("set", fifo, "--layer", "conv1", "--kernel", SOBEL, "--in-place", "--no-smoke",
                env={"CONV_SURGEON_PIPE_TIMEOUT": "1"})
    assert done.returncode == 2, done.stderr
    assert b"not a regular file" in done.stderr
    assert fifo.is_fifo()


def test_a_block_device_or_socket_output_is_refused(tmp_path, cli):
    import socket

    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        result = cli("set", TINY, "--layer", "conv1", "--kernel", SOBEL, "-o", path, "--no-smoke")
    finally:
        server.close()
    assert_one_error_line(result, 1, f"{path}: is a socket, not a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock"]
