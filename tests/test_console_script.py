"""The installed console script, end to end, as a shell runs it: real processes and pipes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
# The script pip installed beside this interpreter: what `conv-surgeon` runs in the venv.
SCRIPT = Path(sys.executable).parent / "conv-surgeon"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason=f"no installed console script at {SCRIPT}")


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def conv_surgeon(*args: object, **kwargs) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, env=environment(), cwd=ROOT,
                          timeout=120, **kwargs)


def test_inspect() -> None:
    result = conv_surgeon("inspect", "sample_models/tiny_cnn.keras")
    assert result.returncode == 0 and result.stderr == b""
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "sample_models/tiny_cnn.keras: Sequential 'tiny_cnn' (keras, Keras 3.15.1)"
    assert lines[-1] == "3 convolution layers, 920 parameters"


def test_get_to_stdout_is_npy() -> None:
    result = conv_surgeon("get", "sample_models/tiny_cnn.keras", "--layer", "conv2", "-o", "-")
    assert result.returncode == 0 and result.stderr == b""
    kernel = np.load(io.BytesIO(result.stdout))
    assert kernel.shape == (3, 3, 4, 8) and kernel.dtype == np.float32


def test_set_from_stdin_to_stdout_piped_into_inspect() -> None:
    with open(SAMPLES / "tiny_cnn.keras", "rb") as model:
        edit = subprocess.Popen([SCRIPT, "set", "--layer", "conv1", "--kernel-init", "zeros", "--no-smoke"],
                                stdin=model, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(),
                                cwd=ROOT)
        assert edit.stdout is not None and edit.stderr is not None
        read = subprocess.run([SCRIPT, "inspect", "-", "--stats", "--json"], stdin=edit.stdout, capture_output=True,
                              env=environment(), cwd=ROOT, timeout=120)
        edit.stdout.close()
        report = edit.stderr.read().decode()
        assert edit.wait(timeout=120) == 0, report
    assert report.startswith("<stdin>: layer 'conv1' (Conv2D); wrote <stdout>\n")
    assert read.returncode == 0 and read.stderr == b""
    document = json.loads(read.stdout)
    kernel = document["layers"][0]["weights"]["kernel"]
    assert document["model"] == "<stdin>" and kernel["shape"] == [3, 3, 1, 4]
    assert kernel["stats"]["zeros"] == 36


def test_exit_codes_and_one_error_line() -> None:
    missing = conv_surgeon("inspect", "nope.keras")
    assert (missing.returncode, missing.stdout) == (1, b"")
    assert missing.stderr == b"Error: nope.keras: no such file; check the path\n"
    usage = conv_surgeon("get", "sample_models/tiny_cnn.keras", "--layer", "conv1", "-o", "k.txt")
    assert usage.returncode == 2 and usage.stderr.startswith(b"Error: -o k.txt: ")


def test_shell_completion_of_layers() -> None:
    env = environment() | {
        "_CONV_SURGEON_COMPLETE": "complete_bash",
        "COMP_WORDS": "conv-surgeon get sample_models/all_convs.keras --layer func",
        "COMP_CWORD": "4",
    }
    result = subprocess.run([SCRIPT], capture_output=True, env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    assert result.stdout.decode().split() == ["func_block/conv", "func_block/deep_block/deep_conv"]
