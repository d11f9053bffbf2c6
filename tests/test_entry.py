"""The console-script entry: prefetching the model's structure, and exiting without teardown."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conv_surgeon.model import structure as modelfile
from conv_surgeon.entry import models_named
from conv_surgeon.store.source import ModelSource
from conv_surgeon.model.structure import abandon_prefetched, prefetch_structures, read_structure

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "conv-surgeon"


def test_models_named_for_the_commands_that_read_a_model_first(samples: Path) -> None:
    keras_file, h5_file, npy = (str(samples / n) for n in ("tiny_cnn.keras", "tiny_cnn.h5", "sobel.npy"))
    assert models_named(["inspect", keras_file, "--json"]) == [keras_file]
    assert models_named(["--debug", "get", h5_file, "--layer", "conv1", "-o", npy]) == [h5_file]
    assert models_named(["diff", keras_file, h5_file]) == [keras_file, h5_file]
    # set and apply read the model's structure first too (the bench: 28 ms less for set).
    assert models_named(["set", keras_file, "--layer", "conv1", "--kernel", npy]) == [keras_file]
    assert models_named(["set", "--layer", "conv1", "--kernel", npy]) == []  # the model comes on stdin
    assert models_named(["--version"]) == []
    assert models_named(["inspect", npy]) == []  # not a model: nothing to start


def test_models_named_takes_saved_folders_and_shard_maps(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    shard_map = tmp_path / "w.weights.json"
    shard_map.write_text('{"weight_map": {}}')
    assert models_named(["inspect", str(folder), "--all"]) == [str(folder)]
    assert models_named(["get", str(shard_map), "--layer", "c"]) == [str(shard_map)]
    assert models_named(["inspect", str(tmp_path)]) == []  # a folder without config.json


def test_a_prefetched_structure_is_the_one_read(samples: Path) -> None:
    path = samples / "all_convs.keras"
    expected = read_structure(ModelSource.from_path(path))
    prefetch_structures([str(path)])
    assert len(modelfile._prefetched) == 1
    assert read_structure(ModelSource.from_path(path)) == expected
    assert modelfile._prefetched == {}


def test_an_unclaimed_prefetch_is_killed(samples: Path) -> None:
    prefetch_structures([str(samples / "tiny_cnn.keras")])
    (worker,) = modelfile._prefetched.values()
    abandon_prefetched()
    assert modelfile._prefetched == {}
    with pytest.raises(ProcessLookupError):
        os.kill(worker.pid, 0)


@pytest.mark.skipif(not CLI.exists(), reason="needs the installed console script")
def test_console_script_exit_codes_and_output(samples: Path, tmp_path: Path) -> None:
    ok = subprocess.run([CLI, "inspect", samples / "tiny_cnn.keras", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.rstrip().endswith("}") and ok.stderr == ""
    missing = subprocess.run([CLI, "inspect", tmp_path / "nope.keras"], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("Error: ") and missing.stdout == ""
    usage = subprocess.run([CLI, "get", samples / "tiny_cnn.keras"], capture_output=True, text=True)
    assert usage.returncode == 2
    different = subprocess.run([CLI, "diff", samples / "tiny_cnn.keras", samples / "all_convs.keras"],
                               capture_output=True, text=True)
    assert different.returncode == 1
