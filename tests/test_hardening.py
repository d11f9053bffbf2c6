"""Bad input found in review: each gets one line and a user-error code, and no file is harmed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import copy_into, listing, sha256


def test_get_never_overwrites_the_input_model(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    digest = sha256(model)
    result = cli("get", model, "--layer", "conv1", "-o", model)
    assert result.exit_code == 1 and "refusing to overwrite it" in result.stderr
    assert sha256(model) == digest


def test_save_inputs_never_overwrites_the_model(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    before = listing(tmp_path)
    result = cli("set", model, "--layer", "conv1", "--kernel", samples / "sobel.npy", "-o", tmp_path / "o.keras",
                 "--save-inputs", model)
    assert result.exit_code == 1 and "--save-inputs" in result.stderr
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name", ["tiny_cnn.h5", "tiny_cnn.keras"])
def test_damaged_files_are_user_errors_never_internal_ones(cli, samples: Path, tmp_path: Path, name: str) -> None:
    data = (samples / name).read_bytes()
    rng = random.Random(7)
    codes = set()
    for i in range(25):
        damaged = bytearray(data)
        for _ in range(20):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = tmp_path / f"d{i}{Path(name).suffix}"
        path.write_bytes(bytes(damaged))
        result = cli("inspect", path, "--stats")
        codes.add(result.exit_code)
        assert result.exit_code in (0, 1), result.stderr
        assert "Traceback" not in result.stderr and "Internal error" not in result.stderr
    assert 1 in codes


def test_output_through_a_symlink_updates_the_linked_file(cli, samples: Path, tmp_path: Path) -> None:
    real = copy_into(tmp_path, samples / "tiny_cnn.keras", "real.keras")
    link = tmp_path / "link.keras"
    link.symlink_to(real)
    before = sha256(real)
    result = cli("set", link, "--layer", "conv1", "--kernel-init", "zeros", "--in-place", "--no-smoke")
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and sha256(real) != before


def test_output_folder_that_is_a_file(cli, samples: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel-init", "zeros",
                 "-o", tmp_path / "file" / "o.keras", "--no-smoke")
    assert result.exit_code == 1 and "is a file, not a directory" in result.stderr


def test_paths_are_shown_as_they_are_not_as_markup(cli, samples: Path, tmp_path: Path) -> None:
    odd = copy_into(tmp_path, samples / "tiny_cnn.keras", "run[bold red][x].keras")
    result = cli("inspect", odd)
    assert result.exit_code == 0 and "run[bold red][x].keras" in result.stdout


def test_get_all_without_convolutions(cli, keras, tmp_path: Path) -> None:
    mlp = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    mlp.save(tmp_path / "mlp.keras")
    result = cli("get", tmp_path / "mlp.keras", "--all", "-o", tmp_path / "b.npz")
    assert result.exit_code == 1 and "no convolution layers" in result.stderr
    assert not (tmp_path / "b.npz").exists()


def test_missing_model_beside_an_existing_output(cli, samples: Path, tmp_path: Path) -> None:
    out = copy_into(tmp_path, samples / "tiny_cnn.keras", "o.keras")
    result = cli("set", tmp_path / "nope.keras", "--layer", "conv1", "--kernel-init", "zeros", "-o", out)
    assert result.exit_code == 1 and "no such file" in result.stderr


def test_bad_initializers_in_a_plan_are_listed_with_their_place(cli, samples: Path, tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(
        '{"edits": [{"layer": "conv1", "weights": {"kernel": {"init": "he_normall"}}},'
        ' {"layer": "conv2", "weights": {"kernel": {"init": "random_normal:stddev=abc"}}}]}'
    )
    result = cli("apply", samples / "tiny_cnn.keras", tmp_path / "plan.json", "-o", tmp_path / "o.keras")
    assert result.exit_code == 1
    assert "edits[0]" in result.stderr and "he_normal" in result.stderr
    assert "edits[1]" in result.stderr and "stddev" in result.stderr
