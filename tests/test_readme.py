"""The README's cookbook runs as written, and its picture is what the tool draws."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def cookbook_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Cookbook: port a PyTorch conv into Keras", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_the_cookbook_ports_a_torch_conv_exactly() -> None:
    pytest.importorskip("torch")
    (block,) = cookbook_blocks()
    # As a newcomer runs it: no log level of ours. A warning or an error from TensorFlow or
    # Keras (cuInit's error without a GPU, Keras's about the inputs' structure) reads as if
    # the port broke: the block prints none. (TensorFlow's note that it found no GPU comes
    # before its logging starts, whatever the level; the README says what it means.)
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    difference = float(re.search(r"max abs difference: (\S+)", result.stdout).group(1))
    assert difference < 1e-4
    assert (ROOT / "build/port/conv1_weight.npy").exists()
    noise = [line for line in result.stderr.splitlines()
             if not line.startswith("wrote build/port/")  # get's own report of its file
             and "All log messages before absl::InitializeLog()" not in line
             and "Could not find cuda drivers on your machine, GPU will not be used" not in line]
    assert noise == [], "\n".join(noise)


def test_the_readme_picture_is_remade_pixel_for_pixel(tmp_path: Path) -> None:
    from PIL import Image

    text = (ROOT / "README.md").read_text()
    section = text.split("### Pictures: filters, before and after, histograms", 1)[1].split("\n### ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, flags=re.S)[0]
    picture = re.search(r"!\[[^]]*\]\((\S+\.png)\)", section).group(1)
    assert f"-o {picture}" in block
    # The same relative paths (they are written on the picture), in a folder of our own.
    (tmp_path / "sample_models").mkdir()
    for name in ("tiny_cnn.keras", "sobel.npy"):
        shutil.copyfile(ROOT / "sample_models" / name, tmp_path / "sample_models" / name)
    (tmp_path / picture).parent.mkdir(parents=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(ROOT / picture) as committed, Image.open(tmp_path / picture) as remade:
        assert committed.size == remade.size
        assert np.array_equal(np.asarray(committed.convert("RGB")), np.asarray(remade.convert("RGB")))
