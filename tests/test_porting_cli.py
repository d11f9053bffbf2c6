"""Transplants from a donor model, before/after comparison, and their bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import copy_into, listing

from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.instruments.reading import get_weights


def _kernel(path: Path, layer: str) -> dict[str, np.ndarray]:
    return get_weights(ModelFile.from_path(path), layer, every=True).arrays


def test_transplant_copies_every_variable_of_the_layer(cli, samples: Path, tmp_path: Path) -> None:
    donor = tmp_path / "donor.keras"
    assert cli("set", samples / "tiny_cnn.keras", "--layer", "conv2", "--kernel-init", "ones",
               "--bias-init", "constant:value=0.5", "-o", donor, "--no-smoke").exit_code == 0
    out = tmp_path / "c.keras"
    result = cli("set", samples / "tiny_cnn.h5", "--layer", "conv2", "--from", donor, "-o", tmp_path / "c.h5")
    assert result.exit_code == 0, result.stderr
    copied = _kernel(tmp_path / "c.h5", "conv2")
    np.testing.assert_array_equal(copied["kernel"], np.ones((3, 3, 4, 8)))
    np.testing.assert_array_equal(copied["bias"], np.full(8, 0.5))
    # From a named donor layer of another model.
    result = cli("set", samples / "all_convs.keras", "--layer", "seq_block/post_conv",
                 "--from", f"{samples / 'all_convs.h5'}:c2d_nobias", "-o", out, "--no-smoke")
    assert result.exit_code == 1  # post_conv has a bias, c2d_nobias does not
    assert not out.exists()


def test_transplant_errors_name_both_models(cli, samples: Path, tmp_path: Path) -> None:
    before = listing(tmp_path)
    out = tmp_path / "o.keras"
    cases = [
        (["--from", samples / "all_convs.keras"], "donor model", "no layer with weights named 'conv1'"),
        (["--from", f"{samples / 'tiny_cnn.keras'}:head"], "is a Dense", "tiny_cnn.keras"),
        (["--from", f"{samples / 'all_convs.keras'}:c2d"], "all_convs.keras", "tiny_cnn.keras"),
    ]
    for extra, first, second in cases:
        result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", *extra, "-o", out, "--no-smoke")
        assert result.exit_code == 1, result.stderr
        assert first in result.stderr and second in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert listing(tmp_path) == before


def test_expect_same_refuses_a_function_changing_edit(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "tiny_cnn.keras")
    before = listing(tmp_path)
    result = cli("set", model, "--layer", "conv2", "--kernel-init", "zeros", "-o", tmp_path / "o.keras",
                 "--compare", "--expect-same")
    assert result.exit_code == 3
    assert "differs from the original beyond atol=1e-05, rtol=1e-05" in result.stderr
    assert listing(tmp_path) == before


def test_compare_reports_per_output_errors_as_json(cli, samples: Path, tmp_path: Path) -> None:
    import json

    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv2", "--kernel-init", "zeros",
                 "-o", tmp_path / "o.keras", "--compare", "--json")
    assert result.exit_code == 0, result.stderr
    (comparison,) = json.loads(result.stdout)["smoke"]["comparison"]
    assert comparison["max_abs"] > 0 and comparison["mean_abs"] > 0
    assert -1 <= comparison["cosine"] <= 1


def test_saved_inputs_can_be_loaded_again(cli, samples: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.npz"
    first = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", samples / "sobel.npy",
                "-o", tmp_path / "a.keras", "--save-inputs", inputs, "--json")
    assert first.exit_code == 0, first.stderr
    with np.load(inputs) as bundle:
        assert bundle["input_0"].shape == (1, 28, 28, 1)
    mine = np.random.default_rng(5).standard_normal((3, 28, 28, 1)).astype(np.float32)
    np.savez(tmp_path / "mine.npz", input_0=mine)
    second = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", samples / "sobel.npy",
                 "-o", tmp_path / "b.keras", "--load-inputs", tmp_path / "mine.npz", "--compare")
    assert second.exit_code == 0, second.stderr
    assert "(3, 28, 28, 1)" in second.stdout


def test_expect_same_without_compare_is_a_usage_error(cli, samples: Path, tmp_path: Path) -> None:
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", samples / "sobel.npy",
                 "-o", tmp_path / "o.keras", "--expect-same")
    assert result.exit_code == 2 and "--expect-same needs --compare" in result.stderr
    assert not (tmp_path / "o.keras").exists()
