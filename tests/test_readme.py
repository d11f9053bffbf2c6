"""The README's cookbook runs as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cookbook_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Cookbook: port a PyTorch conv into Keras", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_the_cookbook_ports_a_torch_conv_exactly() -> None:
    pytest.importorskip("torch")
    (block,) = cookbook_blocks()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    difference = float(re.search(r"max abs difference: (\S+)", result.stdout).group(1))
    assert difference < 1e-4
    assert (ROOT / "build/port/conv1_weight.npy").exists()
    assert "Error" not in result.stderr
