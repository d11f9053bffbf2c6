"""`set` and `apply` and the optimizer state (issue 20, item 4): the slots of every replaced
variable are reset to zero by default, or kept with --optimizer keep, and every report says
which. Checked bit for bit on files a real Adam wrote after real training steps, in every
save format that holds optimizer state; Keras's own optimizer variable names are the oracle
for which slot belongs to which variable."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import assert_one_error_line, listing

import conv_surgeon as cs

OPTIMIZER_LINE_KEPT = "optimizer: kept as it was (--optimizer keep); the slots of {} hold their old values"


@dataclass(frozen=True)
class Trained:
    """A small conv net trained two steps, saved once per format, with its optimizer's
    variable names in order (``optimizer/vars/<i>`` of the store is ``names[i]``)."""

    keras_file: Path
    h5_file: Path
    weights_file: Path
    sharded_file: Path
    names: tuple[str, ...]
    iterations: int

    def slots_of(self, layer: str, variable: str) -> list[int]:
        """The positions of a variable's slots, as Keras named them (adam/conv1_kernel_momentum)."""
        found = [i for i, name in enumerate(self.names) if name.startswith(f"{self.prefix}/{layer}_{variable}_")]
        return found

    @property
    def prefix(self) -> str:
        return self.names[0].split("/")[0]


def _model(keras, optimizer):
    """Conv (with bias), BatchNorm, depthwise, a frozen conv, a conv without bias, Dense;
    compiled with ``optimizer`` and trained two steps (eagerly: nothing to trace)."""
    L = keras.layers
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="conv1")(i))
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(4, 1, name="frozen", trainable=False)(x)
    x = L.Conv2D(2, 1, use_bias=False, name="conv2")(x)
    model = keras.Model(i, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    model.compile(optimizer, "mse")
    model.run_eagerly = True  # set after compile, so the saved compile_config says False
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(4, 2)), batch_size=2, verbose=0)
    model.run_eagerly = False
    return model


@pytest.fixture(scope="module")
def adam(keras, tmp_path_factory) -> Trained:
    folder = tmp_path_factory.mktemp("adam")
    model = _model(keras, keras.optimizers.Adam())
    model.save(folder / "adam.keras")
    model.save(folder / "adam.h5")
    model.save_weights(folder / "adam.weights.h5")
    model.save_weights(folder / "sharded.weights.json", max_shard_size=1e-6)  # about 1 kB a shard
    return Trained(folder / "adam.keras", folder / "adam.h5", folder / "adam.weights.h5",
                   folder / "sharded.weights.json", tuple(v.path for v in model.optimizer.variables),
                   int(model.optimizer.iterations.numpy()))


def store_datasets(path: Path) -> dict[str, bytes]:
    """Every dataset of a save's weight store as its raw bytes, by path (over every shard)."""
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            files = [io.BytesIO(archive.read("model.weights.h5"))]
    elif path.name.endswith(".weights.json"):
        files = sorted(path.parent.glob(path.name.removesuffix(".weights.json") + "_*.weights.h5"))
    else:
        files = [path]
    found: dict[str, bytes] = {}
    for file in files:
        with h5py.File(file, "r") as h5:
            h5.visititems(lambda name, item: found.__setitem__(name, item[()].tobytes())
                          if isinstance(item, h5py.Dataset) else None)
    return found


def optimizer_dataset(trained: Trained, index: int, legacy: bool) -> str:
    return f"optimizer_weights/{trained.names[index]}" if legacy else f"optimizer/vars/{index}"


def check_slots(trained: Trained, before: Path, after: Path, reset: list[int], layer_datasets: int,
                legacy: bool = False) -> None:
    """Bit for bit: the ``reset`` slots are zero now (and were not: trained), every other
    slot is unchanged, and of the rest of the store exactly ``layer_datasets`` changed."""
    old, new = store_datasets(before), store_datasets(after)
    assert old.keys() == new.keys()
    slots = {optimizer_dataset(trained, i, legacy) for i in range(len(trained.names))}
    assert slots <= old.keys()
    zeroed = {optimizer_dataset(trained, i, legacy) for i in reset}
    for name in sorted(slots):
        if name in zeroed:
            assert new[name] == bytes(len(old[name])) and old[name] != new[name], name
        else:
            assert new[name] == old[name], name
    assert len([name for name in old if name not in slots and old[name] != new[name]]) == layer_datasets


def set_args(model: Path, out: Path, *extra: str) -> list[object]:
    return ["set", model, "--layer", "conv1", "--kernel-init", "he_normal", "--seed", "3", "--no-smoke",
            "-o", out, *extra]


# --- set: reset by default, keep on request -----------------------------------------------------


def test_set_resets_the_replaced_kernels_moments_and_keeps_every_other_slot(cli, adam, tmp_path) -> None:
    out = tmp_path / "out.keras"
    result = cli(*set_args(adam.keras_file, out))
    assert result.exit_code == 0, result.stderr
    reset = adam.slots_of("conv1", "kernel")
    assert len(reset) == 2  # Adam's momentum and velocity
    check_slots(adam, adam.keras_file, out, reset, layer_datasets=1)
    assert ("optimizer (Adam): reset 2 slots (2 per variable) of 1 replaced variable to zero; "
            "its iteration count kept\n") in result.stdout


def test_set_with_optimizer_keep_changes_no_slot(cli, adam, tmp_path) -> None:
    out = tmp_path / "out.keras"
    result = cli(*set_args(adam.keras_file, out, "--optimizer", "keep"))
    assert result.exit_code == 0, result.stderr
    check_slots(adam, adam.keras_file, out, [], layer_datasets=1)
    assert OPTIMIZER_LINE_KEPT.format("1 replaced variable") + "\n" in result.stdout


def test_a_dry_run_says_what_it_would_reset_and_writes_nothing(cli, adam, tmp_path) -> None:
    result = cli("set", adam.keras_file, "--layer", "conv1", "--bias-init", "zeros", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "optimizer (Adam): would reset 2 slots (2 per variable) of 1 replaced variable to zero" in result.stdout
    assert "wrote" not in result.stdout


def test_a_model_without_optimizer_state_says_so(cli, keras, tmp_path) -> None:
    L = keras.layers
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, L.Conv2D(2, 3, name="conv1")(inputs)).save(tmp_path / "plain.keras")
    result = cli(*set_args(tmp_path / "plain.keras", tmp_path / "out.keras", "--json"))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["optimizer"] == {
        "policy": "reset", "state": False, "class": None, "variables": [], "slots_reset": 0, "averages_set": 0,
        "without_slots": []}
    text = cli(*set_args(tmp_path / "plain.keras", tmp_path / "out2.keras"))
    assert "optimizer: no optimizer state in the file\n" in text.stdout


# --- apply: several edits, one policy for the run --------------------------------------------------


def write_plan(folder: Path) -> Path:
    plan = {"seed": 5, "edits": [
        {"layer": "conv1", "weights": {"kernel": {"init": "he_normal"}, "bias": {"init": "zeros"}}},
        {"layer": "dw", "weights": {"kernel": {"init": "glorot_uniform"}}},
        {"layer": "frozen", "weights": {"kernel": {"init": "ones"}}},
        {"layer": "conv2", "weights": {"kernel": {"init": "he_uniform"}}},
    ]}
    path = folder / "plan.json"
    path.write_text(json.dumps(plan))
    return path


# The plan's variables that have slots: a frozen layer's have none.
TRAINED_EDITS = [("conv1", "kernel"), ("conv1", "bias"), ("dw", "kernel"), ("conv2", "kernel")]


def test_apply_resets_the_slots_of_every_replaced_variable(cli, adam, tmp_path) -> None:
    out = tmp_path / "out.keras"
    result = cli("apply", adam.keras_file, write_plan(tmp_path), "-o", out, "--no-smoke", "--json")
    assert result.exit_code == 0, result.stderr
    assert adam.slots_of("frozen", "kernel") == []  # Keras keeps no slots for a frozen layer
    reset = sorted(i for layer, variable in TRAINED_EDITS for i in adam.slots_of(layer, variable))
    assert len(reset) == 2 * len(TRAINED_EDITS)
    check_slots(adam, adam.keras_file, out, reset, layer_datasets=5)
    document = json.loads(result.stdout)["optimizer"]
    assert {**document, "variables": sorted(document["variables"])} == {
        "policy": "reset", "state": True, "class": "Adam",
        "variables": sorted(f"{layer}/{variable}" for layer, variable in TRAINED_EDITS),
        "slots_reset": len(reset), "averages_set": 0, "without_slots": ["frozen/kernel"]}


def test_apply_with_optimizer_keep_changes_no_slot(cli, adam, tmp_path) -> None:
    out = tmp_path / "out.keras"
    result = cli("apply", adam.keras_file, write_plan(tmp_path), "-o", out, "--no-smoke", "--optimizer", "keep")
    assert result.exit_code == 0, result.stderr
    check_slots(adam, adam.keras_file, out, [], layer_datasets=5)
    assert OPTIMIZER_LINE_KEPT.format("5 replaced variables") + "\n" in result.stdout


@pytest.mark.slow
def test_the_edited_model_loads_compiled_and_trains_on(cli, keras, adam, tmp_path) -> None:
    out = tmp_path / "out.keras"
    result = cli("apply", adam.keras_file, write_plan(tmp_path), "-o", out)  # with the smoke test
    assert result.exit_code == 0, result.stderr
    model = keras.saving.load_model(out)  # compiled, with its optimizer state
    state = {v.path: np.asarray(v.numpy()) for v in model.optimizer.variables}
    assert tuple(state) == adam.names
    reset = {adam.names[i] for layer, variable in TRAINED_EDITS for i in adam.slots_of(layer, variable)}
    assert all(not state[name].any() for name in reset)
    moments = [name for name in adam.names if name.endswith(("_momentum", "_velocity"))]
    assert all(state[name].any() for name in moments if name not in reset)  # trained moments kept
    assert int(model.optimizer.iterations.numpy()) == adam.iterations
    rng = np.random.default_rng(1)
    history = model.fit(rng.normal(size=(2, 8, 8, 3)), rng.normal(size=(2, 2)), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(model.optimizer.iterations.numpy()) == adam.iterations + 1
    assert all(np.asarray(v.numpy()).any() for v in model.optimizer.variables if v.path in reset)


# --- the other formats that hold optimizer state --------------------------------------------------


def test_legacy_h5_optimizer_weights_are_reset_by_name(cli, adam, tmp_path) -> None:
    out = tmp_path / "out.h5"
    result = cli(*set_args(adam.h5_file, out))
    assert result.exit_code == 0, result.stderr
    check_slots(adam, adam.h5_file, out, adam.slots_of("conv1", "kernel"), layer_datasets=1, legacy=True)
    assert "optimizer (Adam): reset 2 slots" in result.stdout


def test_weights_only_save_places_its_slots_with_config(cli, adam, tmp_path) -> None:
    out = tmp_path / "out.weights.h5"
    result = cli(*set_args(adam.weights_file, out, "--config", adam.keras_file))
    assert result.exit_code == 0, result.stderr
    check_slots(adam, adam.weights_file, out, adam.slots_of("conv1", "kernel"), layer_datasets=1)


def test_weights_only_save_without_config_is_refused_unless_kept(cli, adam, tmp_path) -> None:
    out = tmp_path / "out.weights.h5"
    result = cli(*set_args(adam.weights_file, out))
    assert_one_error_line(result, 1, "no model config", "--config MODEL", "--optimizer keep")
    assert listing(tmp_path) == {}
    kept = cli(*set_args(adam.weights_file, out, "--optimizer", "keep"))
    assert kept.exit_code == 0, kept.stderr
    check_slots(adam, adam.weights_file, out, [], layer_datasets=1)


def test_sharded_save_resets_slots_in_whichever_shard_holds_them(cli, adam, tmp_path) -> None:
    shards = sorted(adam.sharded_file.parent.glob("sharded_*.weights.h5"))
    assert len(shards) > 2
    out = tmp_path / "out.weights.json"
    result = cli(*set_args(adam.sharded_file, out, "--config", adam.keras_file))
    assert result.exit_code == 0, result.stderr
    check_slots(adam, adam.sharded_file, out, adam.slots_of("conv1", "kernel"), layer_datasets=1)


# --- optimizers whose slots are not all moments ---------------------------------------------------


def test_a_moving_average_of_the_weights_starts_at_the_new_value(cli, keras, tmp_path) -> None:
    model = _model(keras, keras.optimizers.Adam(use_ema=True))
    model.save(tmp_path / "ema.keras")
    names = [v.path.split("/", 1)[1] for v in model.optimizer.variables]  # without "adam_1/"
    out = tmp_path / "out.keras"
    result = cli(*set_args(tmp_path / "ema.keras", out, "--json"))
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)["optimizer"]
    assert (document["slots_reset"], document["averages_set"]) == (2, 1)
    after = store_datasets(out)
    kernel = cs.get_weights(out, "conv1")["kernel"]
    assert after[f"optimizer/vars/{names.index('conv1_kernel_average')}"] == kernel.tobytes()
    for slot in ("momentum", "velocity"):
        assert not np.frombuffer(after[f"optimizer/vars/{names.index(f'conv1_kernel_{slot}')}"], np.float32).any()


@pytest.fixture(scope="module")
def nadam(keras, tmp_path_factory) -> Path:
    """Nadam keeps a scalar of its own after the slots: the shapes no longer say which is which."""
    path = tmp_path_factory.mktemp("nadam") / "nadam.keras"
    _model(keras, keras.optimizers.Nadam()).save(path)
    return path


def test_a_state_whose_layout_cannot_be_recovered_is_refused_unless_kept(cli, nadam, tmp_path) -> None:
    out = tmp_path / "out.keras"
    result = cli(*set_args(nadam, out))
    assert_one_error_line(result, 1, "nadam.keras", "optimizer state", "--optimizer keep")
    assert not out.exists()
    kept = cli(*set_args(nadam, out, "--optimizer", "keep"))
    assert kept.exit_code == 0, kept.stderr
    assert OPTIMIZER_LINE_KEPT.format("1 replaced variable") + "\n" in kept.stdout


# --- the Python API -------------------------------------------------------------------------------


def test_api_takes_the_policy_and_reports_it(adam, tmp_path) -> None:
    report = cs.set_weights(adam.keras_file, "conv1", out=tmp_path / "a.keras", inits={"kernel": "zeros"},
                            smoke=False)
    assert (report.optimizer_slots.policy, report.optimizer_slots.variables) == ("reset", ("conv1/kernel",))
    kept = cs.apply(adam.keras_file, write_plan(tmp_path), out=tmp_path / "b.keras", smoke=False, optimizer="keep")
    assert kept.optimizer_slots.policy == "keep" and kept.optimizer_slots.slots_reset == 0
    check_slots(adam, adam.keras_file, tmp_path / "b.keras", [], layer_datasets=5)


def test_api_error_names_the_keyword_argument(nadam, tmp_path) -> None:
    with pytest.raises(cs.ConvSurgeonError, match='optimizer="keep"'):
        cs.set_weights(nadam, "conv1", out=tmp_path / "out.keras", inits={"kernel": "zeros"},
                       smoke=False)
