"""Every kind of Keras save in the zoo: inspect lists every variable Keras holds, and
get/set round-trip them byte-exactly with every other variable unchanged.

The zoo (tests/zoo.py) writes each kind with real Keras or keras-hub, and records
the shape, dtype and bytes of every variable the live model held before saving.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import zoo
from zoo import ExpectedVariable, ZooModel, copy_of, zoo_model, zoo_models  # noqa: F401  (fixtures)

from conv_surgeon.model.catalogue import KNOWN_CLASSES
from conv_surgeon.errors import InternalError
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.model.structure import read_structure, read_variables
from conv_surgeon.store.worker import run_bounded

# Kinds that hold no model config: their classes come from the store.
WEIGHTS_ONLY = {"weights_only", "sharded", "keras2_weights_only"}
# Kinds Keras 3.15 itself cannot load: edited with --no-smoke only.
NOT_LOADABLE = {"keras2_convs"}
# A custom layer's own variable (ConvPairBlock's `scale`) is taken for trainable, but its
# place among its sub-layers' in Keras's order is its code's: the optimizer state does not
# split in that order, so the default `--optimizer reset` refuses rather than guess.
# Edited with --optimizer keep.
SLOTS_NOT_PLACED = {"custom_block", "custom_block_h5"}


def _optimizer_option(kind: str) -> tuple[str, ...]:
    return ("--optimizer", "keep") if kind in SLOTS_NOT_PLACED else ()


def _multiset(items: list[ExpectedVariable]) -> collections.Counter[tuple[tuple[int, ...], str, str]]:
    return collections.Counter((tuple(v.shape), v.dtype, v.sha256) for v in items)


def _listed(source: ModelFile) -> list[ExpectedVariable]:
    """What conv-surgeon lists, with each variable's bytes read through it."""
    structure = read_structure(source)
    variables = [v for layer in structure.layers for v in layer.variables]
    values = read_variables(source, variables)
    return [
        ExpectedVariable(v.shape, v.dtype, hashlib.sha256(np.ascontiguousarray(values[v.dataset]).tobytes()).hexdigest())
        for v in variables
    ]


def test_inspect_all_lists_every_variable_keras_holds(cli, zoo_model: ZooModel) -> None:
    result = cli("inspect", zoo_model.path, "--all", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    listed = [(tuple(w["shape"]), w["dtype"]) for layer in document["layers"] for w in layer["weights"].values()]
    assert collections.Counter(listed) == collections.Counter((v.shape, v.dtype) for v in zoo_model.expected)
    assert document["totals"]["unplaced"] == []
    assert document["totals"]["variables"] == len(zoo_model.expected) == document["totals"]["store_variables"]
    for layer in document["layers"]:  # known classes: variable names that mean something
        if layer["class"] in KNOWN_CLASSES:
            assert all(not name.isdigit() for name in layer["weights"]), layer
    # The bytes too: every variable Keras held, read through conv-surgeon.
    assert _multiset(_listed(ModelFile.from_path(zoo_model.path))) == _multiset(zoo_model.expected)


def _first_conv(structure):  # type: ignore[no-untyped-def]
    return next(layer for layer in structure.layers if layer.conv is not None)


def test_get_then_set_round_trips_a_conv_kernel_and_keeps_everything_else(
    cli, zoo_model: ZooModel, tmp_path: Path
) -> None:
    model = copy_of(zoo_model, tmp_path / "in")
    source = ModelFile.from_path(model.path)
    conv = _first_conv(read_structure(source))
    got = tmp_path / "kernel.npy"
    assert cli("get", model.path, "--layer", conv.path, "-o", got).exit_code == 0
    kernel = np.load(got)
    assert kernel.shape == conv.variables[0].shape
    changed = (kernel.astype(np.float32) + 1).astype(kernel.dtype)
    np.save(got, changed)
    out = tmp_path / "out" / (model.path.name if not model.path.is_dir() else "edited")
    out.parent.mkdir()
    before = {p: p.read_bytes() for p in model.path.parent.rglob("*") if p.is_file()}

    result = cli("set", model.path, "--layer", conv.path, "--kernel", got, "-o", out, "--no-smoke",
                 *_optimizer_option(zoo_model.kind))

    assert result.exit_code == 0, result.stderr
    assert {p: p.read_bytes() for p in model.path.parent.rglob("*") if p.is_file()} == before  # input untouched
    edited = _multiset(_listed(ModelFile.from_path(out)))
    original = _multiset(zoo_model.expected)
    dtype = conv.variables[0].dtype

    def stored(value: np.ndarray) -> bytes:  # `get` gives bfloat16 as float32 (exact)
        return value.astype(ml_dtypes.bfloat16).tobytes() if dtype == "bfloat16" else value.tobytes()

    old_kernel = ExpectedVariable(kernel.shape, dtype, hashlib.sha256(stored(kernel)).hexdigest())
    new_kernel = ExpectedVariable(kernel.shape, dtype, hashlib.sha256(stored(changed)).hexdigest())
    assert edited == original - _multiset([old_kernel]) + _multiset([new_kernel])
    back = tmp_path / "back.npy"
    assert cli("get", out, "--layer", conv.path, "-o", back).exit_code == 0
    # set rounds a float32 source to a bfloat16 variable (nearest even); get exports it exactly.
    written = changed.astype(ml_dtypes.bfloat16).astype(np.float32) if dtype == "bfloat16" else changed
    assert np.load(back).tobytes() == written.tobytes()


@pytest.mark.parametrize("kind", ["cropping_1d", "fixed_time_axis"])
def test_set_with_the_default_smoke_test_finds_an_input_size_the_model_accepts(
    cli, zoo_models, kind: str, tmp_path: Path
) -> None:
    model = zoo_models(kind)
    conv = _first_conv(read_structure(ModelFile.from_path(model.path)))
    out = tmp_path / "out.keras"
    result = cli("set", model.path, "--layer", conv.path, "--kernel-init", "zeros", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    smoke = json.loads(result.stdout)["smoke"]
    (length,) = {shape[1] for shape in (i["shape"] for i in smoke["inputs"])}
    assert length > (1000 if kind == "cropping_1d" else 0)
    assert any("unknown sizes set to" in note for note in smoke["notes"]), smoke["notes"]


@pytest.mark.parametrize("kind", ["time_distributed", "bidirectional", "custom_block", "keras_hub_resnet",
                                  "keras_hub_mobilenet_preset", "unzipped_dir", "quantized_dense"])
def test_set_smoke_tests_wrappers_custom_blocks_and_keras_hub(
    cli, zoo_models, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = copy_of(zoo_models(kind), tmp_path / "in")
    structure = read_structure(ModelFile.from_path(model.path))
    conv = _first_conv(structure)
    out = tmp_path / ("out" if model.path.is_dir() else "out" + "".join(model.path.suffixes))
    monkeypatch.chdir(Path(zoo.__file__).parent)  # --import zoo registers the custom blocks
    result = cli("set", model.path, "--layer", conv.path, "--kernel-init", "ones", "-o", out,
                 "--import", "zoo", "--json", *_optimizer_option(kind))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["smoke"]["checked_variables"] == 1
    loaded = zoo.load(model, out)
    ones = [v for v in zoo.model_variables(loaded) if tuple(v.shape) == conv.variables[0].shape
            and np.all(np.asarray(v.numpy(), dtype=np.float32) == 1)]
    assert ones, "Keras does not hold the edited kernel"
    assert read_variables(ModelFile.from_path(out), [conv.variables[0]])  # readable again


def test_a_wrapped_conv_answers_to_its_path_its_attribute_path_and_its_name(zoo_models) -> None:
    structure = read_structure(ModelFile.from_path(zoo_models("time_distributed").path))
    from conv_surgeon.model.selection import resolve_layer

    layer = resolve_layer(structure, "td/layer", "m")
    assert layer.class_name == "Conv2D" and layer.class_source == "config"
    assert resolve_layer(structure, layer.path, "m") is layer
    assert resolve_layer(structure, layer.name, "m") is layer
    h5 = read_structure(ModelFile.from_path(zoo_models("time_distributed_h5").path))
    assert [v.shape for v in resolve_layer(h5, layer.path, "m").variables] == [v.shape for v in layer.variables]


def test_bidirectional_halves_keep_apart_in_h5_and_keras(zoo_models) -> None:
    for kind in ("bidirectional", "bidirectional_h5"):
        structure = read_structure(ModelFile.from_path(zoo_models(kind).path))
        paths = [layer.path for layer in structure.layers]
        assert len(paths) == len(set(paths))
        forward = [p for p in paths if "/forward_" in p]
        backward = [p for p in paths if "/backward_" in p]
        assert forward and [p.replace("/forward_", "/backward_") for p in forward] == backward, paths
        for layer in structure.layers:
            if layer.path in forward + backward:
                assert [v.name for v in layer.variables] == ["kernel", "recurrent_kernel", "bias"]


def test_weights_only_set_skips_the_smoke_test_and_says_so_unless_config_is_given(
    cli, zoo_models, tmp_path: Path
) -> None:
    model = zoo_models("weights_only")
    conv = _first_conv(read_structure(ModelFile.from_path(model.path)))
    out = tmp_path / "out.weights.h5"
    result = cli("set", model.path, "--layer", conv.path, "--kernel-init", "zeros", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "no smoke test: a weights-only file holds no model to run; pass --config" in result.stdout
    result = cli("set", model.path, "--layer", conv.path, "--kernel-init", "zeros", "-o", out,
                 "--config", model.extra["config"], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["smoke"]["checked_variables"] == 1
    with_config = json.loads(cli("inspect", model.path, "--config", model.extra["config"], "--json").stdout)
    assert {layer["class_from"] for layer in with_config["layers"]} == {"config"}


def test_sharded_in_place_edit_rewrites_only_the_shard_it_touches(cli, zoo_models, tmp_path: Path) -> None:
    model = copy_of(zoo_models("sharded"), tmp_path)
    structure = read_structure(ModelFile.from_path(model.path))
    assert len(structure.files) >= 3
    conv = _first_conv(structure)
    shards = sorted(tmp_path.glob("*_0*.weights.h5"))
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in shards}
    result = cli("set", model.path, "--layer", conv.path, "--kernel-init", "ones", "--in-place", "--no-smoke")
    assert result.exit_code == 0, result.stderr
    after = {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(tmp_path.glob("*_0*.weights.h5"))}
    changed = [name for name in before if before[name] != after[name]]
    assert changed == [structure.files[conv.variables[0].file].path.name]  # type: ignore[union-attr]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert json.loads(model.path.read_text())["conv_surgeon"]["history"]


@pytest.mark.parametrize("problem", ["missing shard", "outside", "preset without weights", "config mismatch"])
def test_bad_stores_get_one_line(cli, zoo_models, tmp_path: Path, problem: str) -> None:
    if problem == "missing shard":
        model = copy_of(zoo_models("sharded"), tmp_path)
        next(tmp_path.glob("*_00001.weights.h5")).unlink()
        target, extra, expected = model.path, (), "is missing"
    elif problem == "outside":
        model = copy_of(zoo_models("sharded"), tmp_path)
        document = json.loads(model.path.read_text())
        key = next(iter(document["weight_map"]))
        document["weight_map"][key] = "../elsewhere.weights.h5"
        model.path.write_text(json.dumps(document))
        target, extra, expected = model.path, (), "outside the map's folder"
    elif problem == "preset without weights":
        model = copy_of(zoo_models("keras_hub_resnet_preset"), tmp_path)
        (model.path / "model.weights.h5").unlink()
        target, extra, expected = model.path, (), "preset without weights"
    else:
        model = zoo_models("weights_only")
        other = zoo_models("custom_block").path
        target, extra, expected = model.path, ("--config", other), "does not match --config"
    result = cli("inspect", target, *extra)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr


def test_a_bug_in_the_worker_comes_back_with_its_traceback() -> None:
    def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(InternalError, match="boom") as info:
        run_bounded(broken, 10.0, "m")
    assert "ValueError: boom" in info.value.worker_traceback and "broken" in info.value.worker_traceback


@pytest.mark.parametrize("kind", ["sharded", "unzipped_dir"])
def test_a_copy_shares_no_file_with_its_source(cli, zoo_models, kind: str, tmp_path: Path) -> None:
    """Keras saves over a file by truncating it: an output hard-linked to its source would
    change with it."""
    model = copy_of(zoo_models(kind), tmp_path / "in")
    conv = _first_conv(read_structure(ModelFile.from_path(model.path)))
    out = tmp_path / "out" / ("edited.weights.json" if kind == "sharded" else "edited")
    out.parent.mkdir()
    result = cli("set", model.path, "--layer", conv.path, "--kernel-init", "zeros", "-o", out, "--no-smoke")
    assert result.exit_code == 0, result.stderr
    inputs = {p.stat().st_ino for p in (tmp_path / "in").rglob("*") if p.is_file()}
    outputs = {p.stat().st_ino for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert len(outputs) >= 2 and not inputs & outputs


def test_diff_of_a_save_with_itself_is_identical_and_with_an_edit_names_the_layer(
    cli, zoo_model: ZooModel, tmp_path: Path
) -> None:
    same = cli("diff", zoo_model.path, zoo_model.path, "--all")
    assert same.exit_code == 0, same.stdout + same.stderr
    model = copy_of(zoo_model, tmp_path / "in")
    conv = _first_conv(read_structure(ModelFile.from_path(model.path)))
    result = cli("set", model.path, "--layer", conv.path, "--kernel-init", "ones", "--in-place", "--no-smoke",
                 *_optimizer_option(zoo_model.kind))
    assert result.exit_code == 0, result.stderr
    changed = cli("diff", zoo_model.path, model.path, "--json")
    assert changed.exit_code == 1
    assert [layer["path"] for layer in json.loads(changed.stdout)["layers"] if layer["status"] != "same"] == [conv.path]


def test_a_weights_only_file_is_a_donor_for_set_from(cli, zoo_models, tmp_path: Path) -> None:
    donor = zoo_models("weights_only")
    conv = _first_conv(read_structure(ModelFile.from_path(donor.path)))
    zeroed = tmp_path / "zeroed.keras"  # the model the weights were saved from, that conv zeroed
    assert cli("set", donor.extra["config"], "--layer", conv.path, "--kernel-init", "zeros",
               "--bias-init", "zeros", "-o", zeroed, "--no-smoke").exit_code == 0
    out = tmp_path / "out.keras"
    result = cli("set", zeroed, "--layer", conv.path, "--from", donor.path, "-o", out, "--no-smoke", "--json")
    assert result.exit_code == 0, result.stderr
    values = read_variables(ModelFile.from_path(donor.path), list(conv.variables))
    edited = read_structure(ModelFile.from_path(out))
    got = read_variables(ModelFile.from_path(out), list(_first_conv(edited).variables))
    assert np.any(values[conv.variables[0].dataset] != 0)  # the kernel (a fresh bias is zeros)
    assert [a.tobytes() for a in values.values()] == [a.tobytes() for a in got.values()]
