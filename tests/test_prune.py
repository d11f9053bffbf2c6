"""`prune`: filters removed, everything downstream fixed up, nothing else lost.

Models are built by real Keras (applications with ``weights=None``, small inputs) with
random biases and BatchNormalization statistics. The oracle is Keras itself: the pruned
file must load, run and hold the parameter count the report predicted; pruning filters
that were zeroed (with their path's biases and BN shifts) must leave the outputs equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import model_outputs

import conv_surgeon as cs
from conv_surgeon.render import prune_document

CLI = str(Path(sys.executable).parent / "conv-surgeon")


def _randomize(keras, model, seed: int = 0) -> None:
    """Random, non-trivial BN statistics and biases, so a wrong slice shows in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(keras, model):
        values = []
        for variable in layer.weights:
            name = variable.path.rpartition("/")[2]
            shape = tuple(variable.shape)
            if name == "moving_variance":
                values.append(rng.uniform(0.5, 2.0, shape))
            elif name == "gamma":
                values.append(rng.uniform(0.5, 1.5, shape))
            elif name in ("beta", "moving_mean", "bias"):
                values.append(rng.normal(0.0, 0.1, shape))
            else:
                values.append(np.asarray(variable))
        if values:
            layer.set_weights([v.astype("float32") for v in values])


def _all_layers(keras, model, prefix: str = ""):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(keras, layer, f"{prefix}{layer.name}/")
        else:
            yield layer


def _layer(keras, model, path: str):
    for name in path.split("/")[:-1]:
        model = model.get_layer(name)
    return model.get_layer(path.rpartition("/")[2])


def _inputs(model, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(2, *[d or 16 for d in t.shape[1:]])).astype("float32") for t in model.inputs]


def _outputs(model, inputs) -> list[np.ndarray]:
    return model_outputs(model, inputs)


def _prune(cli, model: Path, out: Path | None, *args: str) -> dict:
    """`prune --json` in this process (fast: it imports no TensorFlow with --no-smoke or --dry-run)."""
    where = ["-o", str(out), "--no-smoke"] if out is not None else ["--dry-run"]
    result = cli("prune", model, *args, *where, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _zero_chosen(keras, model, plan: dict) -> None:
    """Zero what the plan removes: each member's filters (output axis), and along the path
    every bias, BN beta and moving mean at the removed channels."""
    members = {m: g["removed"] for g in plan["groups"] for m in g["members"]}
    for entry in plan["layers"]:
        layer = _layer(keras, model, entry["layer"])
        names = [w.path.rpartition("/")[2] for w in layer.weights]
        values = [np.array(w) for w in layer.weights]
        for name, change in entry["variables"].items():
            value = values[names.index(name)]
            if name in ("kernel", "pointwise_kernel") and entry["layer"] in members:
                value[..., members[entry["layer"]]] = 0  # Conv/Separable: filters on the last axis
            elif name in ("bias", "beta", "moving_mean"):
                value[change["removed"]["-1"]] = 0
        layer.set_weights(values)


def _check_untouched(keras, before, after, changed: set[str]) -> None:
    """Layers off every changed path keep their config and weights bit for bit."""
    old, new = _paths(keras, before), _paths(keras, after)
    assert old.keys() == new.keys()
    for name, layer in old.items():
        if name in changed or not layer.weights or isinstance(layer, keras.Model):
            continue
        assert layer.get_config() == new[name].get_config(), name
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(layer.weights, new[name].weights)), name


def _paths(keras, model, prefix: str = "") -> dict[str, object]:
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_paths(keras, layer, f"{prefix}{layer.name}/"))
        found[prefix + layer.name] = layer
    return found


def _conv1d_flatten(keras):
    L = keras.layers
    i = keras.Input((24, 3))
    x = L.Conv1D(8, 3, activation="relu", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Conv1D(6, 3, padding="same", name="c2")(x)
    x = L.MaxPooling1D(2, name="pool")(x)
    x = L.Dense(5, name="d1")(L.Dropout(0.1)(L.Flatten(name="flat")(x)))
    return keras.Model(i, L.Dense(2, name="d2")(x))


def _channels_first(keras):
    L = keras.layers
    i = keras.Input((3, 12, 12))
    x = L.Conv2D(6, 3, data_format="channels_first", name="c1")(i)
    x = L.BatchNormalization(axis=1, name="bn1")(x)
    a = L.Conv2D(5, 1, data_format="channels_first", name="a")(x)
    b = L.Conv2D(5, 3, padding="same", data_format="channels_first", name="b")(x)
    x = L.Add(name="add")([a, b])
    x = L.ReLU()(x)
    x = L.Conv2D(4, 3, data_format="channels_first", name="c2")(x)
    return keras.Model(i, L.Dense(2, name="d")(L.Flatten(name="flat")(x)))


def _nested(keras):
    L = keras.layers
    inner_in = keras.Input((10, 10, 6))
    y = L.BatchNormalization(name="ibn")(inner_in)
    y = L.Conv2D(7, 3, padding="same", name="iconv")(L.ReLU()(y))
    y = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="idw")(y)
    inner = keras.Model(inner_in, L.Conv2D(5, 1, name="iout")(y), name="inner")
    i = keras.Input((10, 10, 3))
    x = L.Conv2D(6, 3, padding="same", name="c1")(i)
    x = inner(x)
    x = L.Conv2D(4, 3, name="c2")(x)
    return keras.Model(i, L.Dense(3, name="d")(L.GlobalAveragePooling2D()(x)))


# VGG16: a plain chain into Flatten and Dense. ResNet50, MobileNetV2, DenseNet121,
# EfficientNetB0 and Xception are pruned by test_real_architectures.py, on the model that
# fold-bn runs on there.
APPLICATIONS = ["VGG16"]
BUILT = {"conv1d_flatten": _conv1d_flatten, "channels_first": _channels_first, "nested": _nested}


def _original(keras, architectures, tmp_path: Path, name: str):
    """The model with random BN statistics and biases, saved: (the file, the model)."""
    if name in BUILT:
        model = BUILT[name](keras)
        _randomize(keras, model)
        original = tmp_path / f"{name}.keras"
        model.save(original)
        return original, model
    # Built once per session (tests/architectures.py), no softmax; a model of its own here.
    return architectures.built(name, "randomized", linear_head=True, prepare=_randomize)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*APPLICATIONS, *BUILT])
def test_prune_real_architectures(keras, cli, architectures, tmp_path, name):
    original, model = _original(keras, architectures, tmp_path, name)
    inputs = _inputs(model)
    check_prune_end_to_end(keras, cli, tmp_path, name, original, model, inputs, _outputs(model, inputs))


def check_prune_end_to_end(keras, cli, tmp_path: Path, name: str, original: Path, model, inputs, expected) -> None:
    """prune on the model saved at ``original`` (``model``: that model, in memory; its
    outputs on ``inputs`` are ``expected``). It zeroes filters of ``model`` along their path.
    Also run on the real architectures that fold-bn runs on, by test_real_architectures.py."""
    # --all --smallest-l1 30%: loads, runs, and has the parameter count the report predicted.
    report = _prune(cli, original, tmp_path / "l1.keras", "--all", "--smallest-l1", "30%")
    assert report["groups"] and report["parameters"]["after"] < report["parameters"]["before"]
    pruned = keras.saving.load_model(tmp_path / "l1.keras")
    assert pruned.count_params() == report["parameters"]["after"]
    for got, want in zip(_outputs(pruned, inputs), expected):
        assert got.shape == want.shape and np.isfinite(got).all()

    # Zero two filters of (up to) three groups along their path, then --zeros: exact. The
    # groups are planned in one dry run (--layer repeated): the smallest L1 is per group.
    groups = _prune(cli, original, None, "--all", "--smallest-l1", "2")["groups"]
    picked = groups[::max(1, len(groups) // 3)][:3]
    plan = _prune(cli, original, None, *[a for g in picked for a in ("--layer", g["members"][0])],
                  "--smallest-l1", "2")
    assert [(g["members"], g["removed"]) for g in plan["groups"]] == [(g["members"], g["removed"]) for g in picked]
    _zero_chosen(keras, model, plan)
    zeroed = tmp_path / "zeroed.keras"
    model.save(zeroed)
    # --zeros with its own check (cs.prune: the CLI's check, in this process): the outputs
    # the same but for float32 rounding, and every sliced variable read back by Keras.
    report = prune_document(cs.prune(zeroed, out=tmp_path / "zeros.keras", zeros=True))
    assert {tuple(g["members"]): g["removed"] for g in report["groups"]} == {
        tuple(g["members"]): g["removed"] for g in plan["groups"]}
    assert report["smoke"]["checked_variables"] == sum(len(layer["variables"]) for layer in report["layers"])
    [kept] = report["smoke"]["expect_same"]
    assert kept["float32_sums"] and kept["used"] <= 1
    # ... and an output moved by 1e-3 of its scale is beyond what it allows (refused:
    # test_tolerance.py, on sums as long as DenseNet121's, the longest of these).
    assert kept["float32_rounding"] < 1e-3 * kept["scale"]
    after = keras.saving.load_model(tmp_path / "zeros.keras")
    assert after.count_params() == report["parameters"]["after"]
    worst = 0.0
    for got, want in zip(_outputs(after, inputs), _outputs(model, inputs)):  # model: the zeroed one
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()  # far below 1e-3, far above rounding
        worst = max(worst, float(np.abs(got - want).max()))
    _check_untouched(keras, model, after, {layer["layer"] for layer in report["layers"]})
    print(f"\n{name}: {len(groups)} groups, params {report['parameters']['before']} -> "
          f"{pruned.count_params()} (30%), --zeros on {len(plan['groups'])} groups: max |diff| {worst:.2e}, "
          f"{kept['used']:.1%} of the float32 rounding allowed ({kept['float32_rounding']:.2e} over "
          f"{kept['sums']} terms)")


def _trained(keras):
    """Conv -> BN -> ReLU -> conv -> GAP -> Dense, compiled with Adam and fit one step."""
    L = keras.layers
    i = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(6, 3, padding="same", name="c1")(i)))
    x = L.Conv2D(5, 3, name="c2")(x)
    model = keras.Model(i, L.Dense(2, name="d")(L.GlobalAveragePooling2D()(x)))
    model.compile(keras.optimizers.Adam(), "mse")
    model.run_eagerly = True  # one step: no train function to trace (5 s); set after compile,
    rng = np.random.default_rng(0)  # so that the saved compile_config says run_eagerly=False
    model.fit(rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(4, 2)), verbose=0)
    model.run_eagerly = False
    return model


def test_optimizer_moments_of_kept_filters_survive_and_training_resumes(keras, cli, tmp_path):
    path = tmp_path / "trained.keras"
    _trained(keras).save(path)
    out = tmp_path / "pruned.keras"
    report = _prune(cli, path, out, "--layer", "c1", "--filters", "1,4")
    assert "sliced like their variables" in report["optimizer"]
    original, result = keras.saving.load_model(path), keras.saving.load_model(out)
    keep = [0, 2, 3, 5]
    sliced = {"c1/kernel": lambda v: v[..., keep], "c1/bias": lambda v: v[keep], "c2/kernel": lambda v: v[:, :, keep, :]}
    sliced.update({f"bn/{name}": (lambda v: v[keep]) for name in ("gamma", "beta")})
    before = {v.path: np.asarray(v) for v in original.optimizer.variables}
    after = {v.path: np.asarray(v) for v in result.optimizer.variables}
    assert before.keys() == after.keys()
    for name, value in after.items():
        variable = next((key for key in sliced if f"/{key.replace('/', '_')}_" in name), None)
        if variable is not None:
            assert value.any() and np.array_equal(value, sliced[variable](before[name])), name
        else:
            assert np.array_equal(value, before[name]), name  # bit for bit
    bn = result.get_layer("bn")
    assert np.array_equal(np.asarray(bn.moving_mean), np.asarray(original.get_layer("bn").moving_mean)[keep])
    x = _inputs(result)[0]
    result.fit(x, np.zeros((2, 2)), verbose=0)


def _refusals(keras):
    L = keras.layers
    i = keras.Input((8, 8, 4))
    g = L.Conv2D(4, 3, padding="same", groups=2, name="grouped")(L.Conv2D(4, 1, name="feeds_grouped")(i))
    r = L.Reshape((8, 16, 2), name="reshape")(L.Conv2D(4, 1, name="feeds_reshape")(i))
    lam = L.Lambda(lambda t: t * 2.0, name="lam")(L.Conv2D(4, 1, name="feeds_lambda")(i))
    tied = L.Add(name="add")([L.Conv2D(4, 1, name="tied")(i), i])
    x = L.Concatenate()([g, L.Reshape((8, 8, 4), name="back")(r), lam, tied])
    out = L.Conv2D(3, 1, name="last")(x)
    return keras.Model(i, [out, L.Conv2D(2, 1, name="head")(L.Conv2D(5, 1, name="body")(i))])


@pytest.fixture(scope="module")
def refusing(keras, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("refusals") / "refusals.keras"
    _refusals(keras).save(path, zipped=True)
    return path


@pytest.mark.parametrize("args, message", [
    (("--layer", "body", "--filters", "5"), "--filters 5: out of range, 'body' has 5 filters (0..4)"),
    (("--layer", "body", "--filters", "0,1,2,3,4"), "would remove every filter of 'body' (5); keep at least one"),
    (("--layer", "body", "--smallest-l1", "5"), "would remove every filter of 'body' (5)"),
    (("--layer", "last", "--filters", "0"), "'last' cannot be pruned: the channels reach the model's output through 'last'"),
    (("--layer", "feeds_grouped", "--filters", "0"), "'grouped' is a grouped conv (groups=2): removing some of its input channels would split its groups"),
    (("--layer", "grouped", "--filters", "0"), "'grouped' is a grouped conv (groups=2): removing its filters would unbalance its groups"),
    (("--layer", "feeds_reshape", "--filters", "0"), "'reshape' (Reshape) is on the path of the channels and prune cannot follow it"),
    (("--layer", "feeds_lambda", "--filters", "0"), "'lam' (Lambda) is on the path of the channels and prune cannot follow it"),
    (("--layer", "tied", "--filters", "0"), "the channels are tied to the model's input"),
    (("--layer", "nothing", "--filters", "0"), "--layer nothing: no convolution of that name has filters to prune"),
])
def test_refusals_are_one_line(cli, refusing, tmp_path, args, message):
    result = cli("prune", refusing, *args, "-o", tmp_path / "out.keras", "--no-smoke")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out.keras").exists()


def test_all_reports_every_group_it_leaves_and_why(cli, refusing, tmp_path):
    report = _prune(cli, refusing, None, "--all", "--smallest-l1", "25%")
    pruned = {m for g in report["groups"] for m in g["members"]}
    assert pruned == {"body"}  # head reaches the output; the others meet what prune cannot follow
    reasons = {r["members"][0]: r["reason"] for r in report["not_pruned"]}
    assert "Lambda" in reasons["feeds_lambda"] and "model's output" in reasons["head"]


def test_usage_errors(cli, refusing, tmp_path):
    for args in (("--layer", "body"), ("--all", "--filters", "1"), ("--layer", "body", "--smallest-l1", "ten"),
                 ("--smallest-l1", "10%"), ("--layer", "body", "--all", "--zeros")):
        result = cli("prune", refusing, *args, "--dry-run")
        assert result.exit_code == 2, (args, result.output)


def test_other_formats_are_refused(cli, samples, tmp_path):
    result = cli("prune", samples / "tiny_cnn.h5", "--layer", "conv1", "--filters", "0", "-o", tmp_path / "o.h5")
    assert result.exit_code == 1
    assert "prune rewrites .keras archives, not a legacy .h5 file" in result.stderr


def test_no_smoke_never_imports_tensorflow(samples, tmp_path):
    script = (
        "import sys, conv_surgeon as cs\n"
        f"r = cs.prune({str(samples / 'tiny_cnn.keras')!r}, out={str(tmp_path / 'o.keras')!r}, every=True,"
        " smallest_l1='25%', smoke=False)\n"
        "assert r.groups, r\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cli_compares_by_default_and_zeros_expects_the_same(keras, cli, tmp_path):
    """The CLI as a user runs it (its own process): the outputs are compared; --zeros on a
    model without zero filters writes nothing and says so. (--expect-same: in this process.)"""
    model = _conv1d_flatten(keras)
    path = tmp_path / "m.keras"
    model.save(path)
    done = subprocess.run([CLI, "prune", str(path), "--layer", "c1", "--filters", "0,3", "-o",
                           str(tmp_path / "o.keras"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["smoke"]["comparison"][0]["max_abs"] > 0
    assert report["layers"][0]["variables"]["kernel"]["after"] == [3, 3, 6]
    done = subprocess.run([CLI, "prune", str(path), "--zeros", "-o", str(tmp_path / "z.keras")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "nothing to prune" in done.stdout
    assert not (tmp_path / "z.keras").exists()
    # --expect-same on a lossy prune: exit 3, nothing written.
    done = cli("prune", path, "--layer", "c1", "--filters", "0", "--expect-same", "-o", tmp_path / "e.keras")
    assert done.exit_code == 3 and not (tmp_path / "e.keras").exists(), done.stderr
