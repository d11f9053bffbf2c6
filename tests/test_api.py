"""The public Python API: `import conv_surgeon as cs` and every command as a function."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conv_surgeon as cs

ROOT = Path(__file__).resolve().parent.parent


def test_the_public_names_stay_functions_whatever_is_imported() -> None:
    # A submodule named like a function (diff.py, assign.py) would rebind it on import.
    import conv_surgeon.edits.assign  # noqa: F401
    import conv_surgeon.instruments.diff  # noqa: F401
    import conv_surgeon.instruments.show  # noqa: F401

    for name in ("inspect", "get_weights", "set_weights", "apply", "diff", "assign", "show"):
        assert callable(getattr(cs, name)) and getattr(cs, name).__module__ == "conv_surgeon.api", name
    assert issubclass(cs.AssignmentError, cs.ConvSurgeonError)


def test_importing_the_package_loads_no_numpy_h5py_or_tensorflow() -> None:
    code = "import sys, conv_surgeon; print(sorted(m for m in ('numpy', 'h5py', 'tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inspect_get_set_and_diff_round_trip(samples: Path, tmp_path: Path) -> None:
    model = samples / "tiny_cnn.keras"
    report = cs.inspect(model)
    assert [layer.path for layer in report.layers] == ["conv1", "conv2", "conv3"]
    weights = cs.get_weights(model, "conv1")
    assert {name: a.shape for name, a in weights.items()} == {"kernel": (3, 3, 1, 4), "bias": (4,)}
    out = tmp_path / "out.keras"
    doubled = weights["kernel"] * 2
    result = cs.set_weights(model, "conv1", out=out, kernel=doubled, inits={"bias": "zeros"}, smoke=False)
    assert result.destination == str(out)
    assert np.array_equal(cs.get_weights(out, "conv1")["kernel"], doubled)
    assert not cs.get_weights(out, "conv1")["bias"].any()
    changed = [layer.path for layer in cs.diff(model, out).layers if layer.status != "same"]
    assert changed == ["conv1"]


def test_set_weights_with_the_smoke_test_and_a_seed_is_reproducible(samples: Path, tmp_path: Path) -> None:
    model = samples / "tiny_cnn.keras"
    runs = []
    for name in ("a.keras", "b.keras"):
        report = cs.set_weights(model, "conv2", out=tmp_path / name, inits={"kernel": "he_normal"}, seed=7)
        assert report.smoke is not None and report.smoke.checked_variables == 1
        runs.append(cs.get_weights(tmp_path / name, "conv2")["kernel"])
    assert np.array_equal(*runs)


def test_set_weights_takes_torch_layout_and_source_specs(samples: Path, tmp_path: Path) -> None:
    torch_weight = np.arange(36, dtype=np.float32).reshape(4, 1, 3, 3)  # (out, in, kh, kw)
    np.save(tmp_path / "b.npy", np.ones(4, np.float32))
    out = tmp_path / "out.keras"
    cs.set_weights(samples / "tiny_cnn.keras", "conv1", out=out, kernel=torch_weight,
                   bias=str(tmp_path / "b.npy"), layout="torch", smoke=False)
    assert np.array_equal(cs.get_weights(out, "conv1")["kernel"], torch_weight.transpose(2, 3, 1, 0))
    assert np.array_equal(cs.get_weights(out, "conv1", layout="torch")["kernel"], torch_weight)


def test_api_errors_are_conv_surgeon_errors_and_nothing_is_written(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.keras"
    with pytest.raises(cs.AssignmentError, match=r"expected \(3, 3, 1, 4\)"):
        cs.set_weights(samples / "tiny_cnn.keras", "conv1", out=out, kernel=np.zeros((3, 3, 3, 4), np.float32))
    with pytest.raises(cs.UsageError, match="out=PATH or in_place=True"):
        cs.set_weights(samples / "tiny_cnn.keras", "conv1", kernel=np.zeros((3, 3, 1, 4), np.float32))
    with pytest.raises(cs.UsageError, match="2\\*\\*63-1"):
        cs.set_weights(samples / "tiny_cnn.keras", "conv1", out=out, inits={"kernel": "he_normal"}, seed=-1)
    with pytest.raises(cs.LayerNotFoundError):
        cs.get_weights(samples / "tiny_cnn.keras", "conv9")
    assert list(tmp_path.iterdir()) == []


def test_api_errors_name_keyword_arguments_not_cli_options(samples: Path, tmp_path: Path) -> None:
    """From Python a hint says layout="torch", as the command line says --layout torch."""
    torch_kernel = np.zeros((4, 1, 3, 3), np.float32)  # conv1's (3, 3, 1, 4) in PyTorch's order
    with pytest.raises(cs.AssignmentError) as caught:
        cs.set_weights(samples / "tiny_cnn.keras", "conv1", out=tmp_path / "o.keras", kernel=torch_kernel)
    message = str(caught.value)
    assert 'pass layout="torch"' in message and "--layout" not in message, message
    with pytest.raises(cs.UsageError) as seed:
        cs.set_weights(samples / "tiny_cnn.keras", "conv1", out=tmp_path / "o.keras", inits={"kernel": "ones"},
                       seed=-1)
    assert "--seed" not in str(seed.value)
    with pytest.raises(cs.ConvSurgeonError) as unknown:
        cs.set_weights(samples / "tiny_cnn.keras", "conv1", out=tmp_path / "o.keras",
                       weights={"kernal": np.zeros((3, 3, 1, 4), np.float32)})
    assert "has no variable 'kernal'" in str(unknown.value) and "--weight" not in str(unknown.value), unknown.value
    assert "a key of weights= or inits=" in str(unknown.value)
    assert list(tmp_path.iterdir()) == []


def test_dry_run_reports_and_writes_nothing(samples: Path, tmp_path: Path) -> None:
    report = cs.set_weights(samples / "tiny_cnn.keras", "conv1", kernel=np.zeros((3, 3, 1, 4), np.float32),
                            dry_run=True)
    assert report.dry_run and report.changes[0].new_l2 == 0
    assert list(tmp_path.iterdir()) == []


def test_apply_runs_a_plan(samples: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"seed": 3, "edits": [{"layer": "conv1", "weights": {"kernel": {"init": "zeros"}}}]}))
    out = tmp_path / "out.keras"
    report = cs.apply(samples / "tiny_cnn.keras", plan, out=out, smoke=False)
    assert [layer.path for layer in report.layers] == ["conv1"]
    assert not cs.get_weights(out, "conv1")["kernel"].any()


# --- cs.assign on live Keras layers --------------------------------------------------


def test_assign_builds_an_unbuilt_conv_from_a_torch_kernel_and_matches_torch(keras) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1)
    conv = keras.layers.Conv2D(5, 3, padding="same")
    assert not conv.built
    assigned = cs.assign(conv, kernel=reference.weight.detach().numpy(), bias=reference.bias.detach().numpy(),
                         layout="torch")
    assert [a.target.name for a in assigned] == ["kernel", "bias"]
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    expected = reference(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    got = np.asarray(conv(x.transpose(0, 2, 3, 1)))
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("kind", ["depthwise", "separable", "transpose", "conv1d_channels_first"])
def test_assign_on_every_conv_kind_holds_exactly_the_values(keras, kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "depthwise":
        layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
        values = {"kernel": rng.standard_normal((3, 3, 4, 2)), "bias": rng.standard_normal(8)}
    elif kind == "separable":
        layer = keras.layers.SeparableConv2D(6, 3)
        values = {"depthwise_kernel": rng.standard_normal((3, 3, 4, 1)),
                  "pointwise_kernel": rng.standard_normal((1, 1, 4, 6)), "bias": rng.standard_normal(6)}
    elif kind == "transpose":
        layer = keras.layers.Conv2DTranspose(6, 3)
        values = {"kernel": rng.standard_normal((3, 3, 6, 4)), "bias": rng.standard_normal(6)}
    else:
        layer = keras.layers.Conv1D(6, 5, data_format="channels_first")
        values = {"kernel": rng.standard_normal((5, 4, 6)), "bias": rng.standard_normal(6)}
    cs.assign(layer, **{name: v.astype(np.float32) for name, v in values.items()})
    held = {v.name: np.asarray(v.numpy()) for v in layer.weights}
    assert set(held) == set(values)
    for name, value in values.items():
        assert np.array_equal(held[name], value.astype(np.float32)), name


def test_assign_explains_a_mismatch_like_set_and_leaves_the_layer_unchanged(keras) -> None:
    conv = keras.layers.Conv2D(4, 3)
    conv.build((None, 8, 8, 1))
    before = np.asarray(conv.kernel.numpy()).copy()
    with pytest.raises(cs.AssignmentError) as info:
        cs.assign(conv, kernel=np.zeros((4, 1, 3, 3), np.float32))
    assert "expected (3, 3, 1, 4) (kh, kw, in_channels/groups, filters), received (4, 1, 3, 3)" in str(info.value)
    assert "layout" in str(info.value).lower()  # the PyTorch-layout hint
    assert np.array_equal(np.asarray(conv.kernel.numpy()), before)
    with pytest.raises(cs.ConvSurgeonError, match="not a convolution"):
        cs.assign(keras.layers.Dense(3), kernel=np.zeros((2, 3), np.float32))
    with pytest.raises(cs.UsageError, match="depthwise_kernel= and pointwise_kernel="):
        cs.assign(keras.layers.SeparableConv2D(2, 3), kernel=np.zeros((3, 3, 1, 1), np.float32))


# An unbuilt layer of each kind, the kernel it holds once built (Keras layout) and the same
# kernel in PyTorch layout.
UNBUILT = {
    "conv": (lambda keras: keras.layers.Conv2D(4, 3), "kernel", (3, 3, 1, 4), (4, 1, 3, 3)),
    "grouped": (lambda keras: keras.layers.Conv2D(4, 3, groups=2), "kernel", (3, 3, 3, 4), (4, 3, 3, 3)),
    "depthwise": (lambda keras: keras.layers.DepthwiseConv2D(3, depth_multiplier=2), "kernel", (3, 3, 4, 2),
                  (8, 1, 3, 3)),
    "transpose": (lambda keras: keras.layers.Conv2DTranspose(6, 3), "kernel", (3, 3, 6, 4), (4, 6, 3, 3)),
    "separable": (lambda keras: keras.layers.SeparableConv2D(6, 3), "depthwise_kernel", (3, 3, 4, 1),
                  (4, 1, 3, 3)),
    "conv1d": (lambda keras: keras.layers.Conv1D(4, 3), "kernel", (3, 2, 4), (4, 2, 3)),
}


@pytest.mark.parametrize("kind", UNBUILT)
def test_assign_on_an_unbuilt_layer_says_a_torch_kernel_is_in_torch_layout_and_builds_nothing(keras, kind) -> None:
    make, name, keras_shape, torch_shape = UNBUILT[kind]
    layer = make(keras)
    with pytest.raises(cs.AssignmentError) as info:
        cs.assign(layer, **{name: np.zeros(torch_shape, np.float32)})
    message = str(info.value)
    assert f"expected {keras_shape}" in message and f"received {torch_shape}" in message, message
    assert 'this is the PyTorch/ONNX layout' in message and 'pass layout="torch"' in message
    assert not layer.built  # nothing to undo: the user passes layout="torch" next
    cs.assign(layer, **{name: np.zeros(torch_shape, np.float32)}, layout="torch")
    assert tuple(getattr(layer, name).shape) == keras_shape


def test_assign_refuses_a_kernel_that_fits_no_layout_before_building_the_layer(keras) -> None:
    conv = keras.layers.Conv2D(4, 3)
    with pytest.raises(cs.AssignmentError, match=r"expected \(3, 3, 2, 4\) .*received \(5, 5, 2, 4\)"):
        cs.assign(conv, kernel=np.zeros((5, 5, 2, 4), np.float32))
    with pytest.raises(cs.AssignmentError, match=r"expected PyTorch/ONNX layout \(4, 2, 3, 3\)"):
        cs.assign(conv, kernel=np.zeros((4, 2, 5, 5), np.float32), layout="torch")
    assert not conv.built
    assigned = cs.assign(conv, kernel=np.ones((3, 3, 2, 4), np.float32))
    assert conv.built and np.array_equal(np.asarray(conv.kernel.numpy()), np.ones((3, 3, 2, 4)))
    assert repr(assigned) == f"[<Assignment layer '{conv.name}' kernel (3, 3, 2, 4) float32 from kernel array>]"


def test_the_readme_python_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Python API", 1)[1].split("\n### ", 1)[0]
    (block,) = [b for b in section.split("```python\n")[1:2]]
    code = block.split("```", 1)[0]
    (ROOT / "build").mkdir(exist_ok=True)  # where make demo writes
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "conv1 Conv2D kernel (3, 3, 1, 4)" in result.stdout
    assert (ROOT / "build" / "api_conv1.png").is_file()
