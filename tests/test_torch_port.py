"""--layout torch against a real PyTorch: the same input gives the same output.

Each case builds a torch module with random weights and the matching Keras layer,
moves torch's state into the Keras model through the CLI (`set --layout torch`),
and runs both on one input (NCHW in torch, NHWC in Keras). Padding is 'same' at
stride 1, or 'valid', so both frameworks compute exactly the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def torch() -> Any:
    """PyTorch, imported by the tests that use it (not at collection, by every worker);
    they skip where it is not installed."""
    return pytest.importorskip("torch")


def _cases(keras, torch):
    L = keras.layers
    nn = torch.nn
    return {
        "conv1d": (nn.Conv1d(3, 5, 3, padding=1), L.Conv1D(5, 3, padding="same"), (3, 9)),
        "conv2d": (nn.Conv2d(3, 6, 3, padding=1), L.Conv2D(6, 3, padding="same"), (3, 8, 7)),
        "conv3d": (nn.Conv3d(2, 4, 3, padding=1), L.Conv3D(4, 3, padding="same"), (2, 5, 6, 4)),
        "conv_transpose2d_stride2": (
            nn.ConvTranspose2d(4, 3, 3, stride=2),
            L.Conv2DTranspose(3, 3, strides=2, padding="valid"),
            (4, 5, 6),
        ),
        "depthwise2d_multiplier2": (
            nn.Conv2d(4, 8, 3, groups=4, padding=1),
            L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
            (4, 7, 7),
        ),
        "grouped2d_groups2": (
            nn.Conv2d(4, 6, 3, groups=2, padding=1),
            L.Conv2D(6, 3, groups=2, padding="same"),
            (4, 6, 6),
        ),
    }


def _channels_last(array: np.ndarray) -> np.ndarray:
    return np.moveaxis(array, 1, -1)


@pytest.mark.parametrize(
    "case",
    ["conv1d", "conv2d", "conv3d", "conv_transpose2d_stride2", "depthwise2d_multiplier2", "grouped2d_groups2"],
)
def test_torch_state_gives_torch_outputs(cli, keras, torch, tmp_path: Path, case: str) -> None:
    torch.manual_seed(0)
    module, layer, input_shape = _cases(keras, torch)[case]
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()
    channels_last = (input_shape[1:] + input_shape[:1])
    model = keras.Sequential([keras.Input(channels_last), layer], name="ported")
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    np.save(tmp_path / "weight.npy", module.weight.detach().numpy())
    np.save(tmp_path / "bias.npy", module.bias.detach().numpy())

    out = tmp_path / "out.keras"
    result = cli("set", model_path, "--layer", layer.name, "--kernel", tmp_path / "weight.npy",
                 "--bias", tmp_path / "bias.npy", "--layout", "torch", "-o", out, "--no-smoke")
    assert result.exit_code == 0, result.stderr

    x = np.random.default_rng(1).standard_normal((2,) + input_shape).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    ported = keras.saving.load_model(out, compile=False)
    got = np.asarray(ported(_channels_last(x)))
    assert got.shape == _channels_last(expected).shape
    np.testing.assert_allclose(got, _channels_last(expected), atol=1e-4, rtol=1e-4)


def test_get_layout_torch_round_trips_through_torch(cli, keras, torch, samples: Path, tmp_path: Path) -> None:
    """get --layout torch gives what torch.nn.Conv2d accepts, and set --layout torch takes it back."""
    exported = tmp_path / "w.npy"
    assert cli("get", samples / "tiny_cnn.keras", "--layer", "conv2", "--layout", "torch", "-o", exported).exit_code == 0
    weight = np.load(exported)
    conv = torch.nn.Conv2d(4, 8, 3)
    assert tuple(conv.weight.shape) == weight.shape
    out = tmp_path / "same.keras"
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv2", "--kernel", exported,
                 "--layout", "torch", "-o", out, "--compare", "--expect-same", "--atol", "0", "--rtol", "0")
    assert result.exit_code == 0, result.stderr
    assert "max abs err" in result.stdout


def test_a_shape_that_fits_both_layouts_is_taken_as_keras(cli, keras, tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(3, 3, name="sq")])
    model.save(tmp_path / "sq.keras")
    np.save(tmp_path / "k.npy", np.ones((3, 3, 3, 3), np.float32))
    result = cli("set", tmp_path / "sq.keras", "--layer", "sq", "--kernel", tmp_path / "k.npy", "--dry-run")
    assert result.exit_code == 0
    assert "also fits the PyTorch layout" in result.stdout and "--layout torch" in result.stdout
