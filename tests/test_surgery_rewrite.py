"""The weight store rewrite of graph surgery (conv_surgeon.surgery.rewrite) and what surgery
reads first (conv_surgeon.surgery.stored_graph), on the stores Keras wrote for the
committed mixed model (tests/data/configs/mixed.keras and mixed.h5), without Keras.

What a user relies on: every object the rewrite does not touch is in the new store bit
for bit (same bytes, dtype, shape, attributes, layout), renamed groups carry their whole
content to the new name, dropped ones are gone, and the new variables hold the values
given or derived.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from conv_surgeon.errors import ModelFileError
from conv_surgeon.model.structure import read_structure
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.surgery.folding import find_pairs, folded_config, store_moves
from conv_surgeon.surgery.optimizer import remapped_slots
from conv_surgeon.surgery.rewrite import (
    Derived,
    LegacyRewrite,
    StoreRewrite,
    ValueDigest,
    legacy_optimizer_names,
    rewrite_legacy,
    rewrite_store,
    rewrite_weights,
    write_keras_archive,
)
from conv_surgeon.surgery.stored_graph import check_store_places, layer_variable, read_config, store_layer

from configs import CONFIGS, config as _config, facts as _facts

MIXED = CONFIGS / "mixed.keras"
MIXED_H5 = CONFIGS / "mixed.h5"


def _weights(tmp_path: Path) -> Path:
    """mixed.keras's model.weights.h5, as Keras wrote it."""
    path = tmp_path / "old.weights.h5"
    with zipfile.ZipFile(MIXED) as archive:
        path.write_bytes(archive.read("model.weights.h5"))
    return path


def _tree(h5: h5py.File) -> dict[str, h5py.Dataset | h5py.Group]:
    """Every group and dataset under the root, by path."""
    found: dict[str, Any] = {}

    def add(name: str, obj: Any) -> None:  # visititems stops at the first value returned
        found[name] = obj

    h5.visititems(add)
    return found


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {key: (np.asarray(value).dtype.str, np.asarray(value).tolist()) for key, value in obj.attrs.items()}


def _same_dataset(a: h5py.Dataset, b: h5py.Dataset) -> None:
    assert (a.dtype, a.shape, a.chunks, a.compression, a.fillvalue) == (b.dtype, b.shape, b.chunks, b.compression,
                                                                        b.fillvalue), a.name
    assert a[()].tobytes() == b[()].tobytes(), a.name
    assert _attrs(a) == _attrs(b), a.name


def _fold_rewrite() -> tuple[StoreRewrite, dict[str, Any]]:
    """The rewrite fold-bn makes of mixed.keras, shortened: the BNs removed (objects renamed
    and dropped as the folded model's store has them), c1 given a doubled kernel (derived
    in the rewrite) and a bias, and the optimizer's slots remapped."""
    config, facts, twin = _config("mixed"), _facts("mixed"), _facts("mixed.folded")
    pairs = list(find_pairs(config).pairs)
    moves = store_moves(config, folded_config(config, pairs, keep_layers=False), {p.bn_path for p in pairs})
    trainable = [((layer, name), tuple(shape)) for layer, name, shape in facts["trainable"]]
    new = [((layer, name), tuple(shape)) for layer, name, shape in twin["trainable"]]
    changed = {("c1", "kernel"), ("c1", "bias")} | {(p.bn_path, v[0]) for p in pairs for v in facts["variables"][p.bn_path]}
    # The folded model has the variables Keras gives the twin: c1's bias new, the BNs' gone.
    slots, *_ = remapped_slots([(tuple(s), d) for _, s, d, _ in facts["optimizer"]], trainable, new,
                               dict.fromkeys(changed))
    bias = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    rewrite = StoreRewrite(dict(moves.renames), frozenset(moves.drops), {
        "layers/conv2d/vars": (Derived(0, lambda kernel: kernel * 2), bias),
        "optimizer/vars": slots,
    })
    return rewrite, {"moves": moves, "bias": bias, "slots": slots}


def test_the_fold_rewrite_of_mixed_keras_is_what_store_moves_said():
    rewrite, _ = _fold_rewrite()
    # b6, the one BN that stays, takes the key of b1, the first BN, which goes.
    assert rewrite.renames == {"layers/batch_normalization_5": "layers/batch_normalization"}
    assert rewrite.drops == {f"layers/batch_normalization{s}" for s in ("", "_1", "_2", "_3", "_4")} | {
        "layers/functional/layers/batch_normalization"}
    assert rewrite.touched() == {
        "layers", "layers/functional", "layers/functional/layers", "layers/functional/layers/batch_normalization",
        "layers/conv2d", "layers/conv2d/vars", "optimizer", "optimizer/vars",
        *rewrite.renames, *rewrite.drops}


def test_rewrite_store_keeps_every_untouched_object_bit_for_bit(tmp_path):
    rewrite, made = _fold_rewrite()
    old_path, new_path = _weights(tmp_path), tmp_path / "new.weights.h5"
    with h5py.File(old_path, "r") as old, h5py.File(new_path, "w") as new:
        derived = rewrite_store(old, new, rewrite)
        old_tree, new_tree = _tree(old), _tree(new)
        assert _attrs(new) == _attrs(old)

        def moved(path: str) -> str | None:
            """Where an old object is in the new store: dropped, renamed, or where it was."""
            for group in rewrite.drops:
                if path == group or path.startswith(group + "/"):
                    return None
            for group, target in rewrite.renames.items():
                if path == group or path.startswith(group + "/"):
                    return target + path[len(group):]
            return path

        untouched = 0
        for path, obj in old_tree.items():
            target = moved(path)
            if target is None:
                continue
            if isinstance(obj, h5py.Group):
                assert _attrs(new_tree[target]) == _attrs(obj), path  # the vars groups' "name"
            elif not path.startswith(("layers/conv2d/vars/", "optimizer/vars/")):
                _same_dataset(obj, new_tree[target])
                untouched += 1
        # Every variable of the layers but c1 and the BNs dropped: 17 of the 40.
        kept = {layer for layer in _facts("mixed")["variables"]} - {"c1", "b1", "b2", "b3", "b4", "b5", "inner/ibn"}
        assert untouched == sum(len(_facts("mixed")["variables"][layer]) for layer in kept) == 17
        # Nothing else is in the new store: c1's new bias, and as many slots as the origins.
        expected = {moved(p) for p in old_tree if not p.startswith("optimizer/vars/")} - {None}
        slots = {f"optimizer/vars/{i}" for i in range(len(made["slots"]))}
        assert set(new_tree) == expected | {"layers/conv2d/vars/1"} | slots
        assert len(made["slots"]) == len(_facts("mixed.folded")["optimizer"]) < len(old["optimizer/vars"])
        assert new_tree["layers/batch_normalization/vars"].attrs["name"] == "b6"
        # c1: its kernel derived from the old one, its new bias as given; the group's name kept.
        assert list(derived) == ["layers/conv2d/vars/0"]
        np.testing.assert_array_equal(new["layers/conv2d/vars/0"][()], old["layers/conv2d/vars/0"][()] * 2)
        np.testing.assert_array_equal(derived["layers/conv2d/vars/0"], new["layers/conv2d/vars/0"][()])
        assert new["layers/conv2d/vars/1"][()].tobytes() == made["bias"].tobytes()
        assert new["layers/conv2d/vars"].attrs["name"] == "c1"
        # The optimizer: each kept slot the old one bit for bit, each other one zero.
        for index, origin in enumerate(made["slots"]):
            dataset = new[f"optimizer/vars/{index}"]
            if isinstance(origin, int):
                _same_dataset(old[f"optimizer/vars/{origin}"], dataset)
            else:
                assert dataset.shape == origin.shape and not dataset[()].any()
        assert len(new["optimizer/vars"]) == len(made["slots"])


def test_rewrite_weights_reads_the_archive_and_returns_the_digest_of_each_derived_value(tmp_path):
    rewrite, _ = _fold_rewrite()
    destination = tmp_path / "new.weights.h5"
    digests = rewrite_weights(ModelFile.from_path(MIXED), rewrite, destination)
    with h5py.File(_weights(tmp_path), "r") as old:
        expected = old["layers/conv2d/vars/0"][()] * 2
    assert set(digests) == {"layers/conv2d/vars/0"}
    assert digests["layers/conv2d/vars/0"] == ValueDigest.of(expected)
    assert digests["layers/conv2d/vars/0"].matches(expected)
    with h5py.File(destination, "r") as new:
        np.testing.assert_array_equal(new["layers/conv2d/vars/0"][()], expected)


def test_a_value_digest_tells_a_float32_step_apart():
    value = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    digest = ValueDigest.of(value)
    assert digest.shape == (3, 4)
    assert digest.matches(value.astype(np.float64))  # the same numbers, compared as float32
    nudged = value.copy()
    nudged[1, 2] = np.nextafter(nudged[1, 2], np.float32(2))
    assert not digest.matches(nudged)
    assert not digest.matches(value.reshape(4, 3))


def test_write_keras_archive_replaces_config_metadata_and_weights_and_copies_the_rest(tmp_path):
    source = tmp_path / "source.keras"
    shutil.copyfile(MIXED, source)
    with zipfile.ZipFile(source, "a") as archive:  # a member Keras writes for some layers
        archive.writestr("assets/vocabulary.txt", "a\nb\n")
    weights = tmp_path / "new.weights.h5"
    weights.write_bytes(b"not really HDF5, copied as it is")
    config = _config("mixed.folded")
    history = [{"tool": "conv_surgeon", "operation": "fold_bn"}]
    out = tmp_path / "out.keras"
    write_keras_archive(ModelFile.from_path(source), out, config, weights, history)
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(out) as b:
        assert b.namelist() == a.namelist()
        assert json.loads(b.read("config.json")) == config
        assert b.read("model.weights.h5") == weights.read_bytes()
        assert b.read("assets/vocabulary.txt") == a.read("assets/vocabulary.txt")
        old, new = json.loads(a.read("metadata.json")), json.loads(b.read("metadata.json"))
        assert new == {**old, "conv_surgeon": {"history": history}}
        assert [i.compress_type for i in b.infolist()] == [i.compress_type for i in a.infolist()]


# --- the legacy .h5 -----------------------------------------------------------------------------


def _h5_tree(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as h5:
        return {name: (obj[()].tobytes(), obj.dtype.str, _attrs(obj)) if isinstance(obj, h5py.Dataset)
                else _attrs(obj) for name, obj in _tree(h5).items()}


def test_rewrite_legacy_changes_only_what_it_is_given(tmp_path):
    config = _config("mixed.folded")
    with h5py.File(MIXED_H5, "r") as h5:
        names = [str(n) for n in h5["model_weights"].attrs["layer_names"]]
        optimizer = legacy_optimizer_names(h5)
        kernel = h5["model_weights/c2/c2/kernel"][()]
    assert optimizer[:3] == ["adam/iteration", "adam/learning_rate", "adam/c1_kernel_momentum"]
    bias = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    zeros = np.zeros((3, 3, 3, 4), np.float32)
    rewrite = LegacyRewrite(
        config=config, layer_names=tuple(n for n in names if n != "b1"), drops=frozenset({"b1"}),
        values={"model_weights/c1/c1/bias": bias, "model_weights/c2/c2/kernel": Derived(0, lambda k: k * 3)},
        optimizer=(0, 1, zeros, 3))
    out = tmp_path / "out.h5"
    digests = rewrite_legacy(ModelFile.from_path(MIXED_H5), rewrite, out)
    assert digests == {"model_weights/c2/c2/kernel": ValueDigest.of(kernel * 3)}
    before, after = _h5_tree(MIXED_H5), _h5_tree(out)
    with h5py.File(out, "r") as h5:
        assert json.loads(h5.attrs["model_config"]) == config and isinstance(h5.attrs["model_config"], str)
        with h5py.File(MIXED_H5, "r") as original:
            assert {k: v for k, v in _attrs(h5).items() if k != "model_config"} == {
                k: v for k, v in _attrs(original).items() if k != "model_config"}  # keras_version, training_config
        assert [str(n) for n in h5["model_weights"].attrs["layer_names"]] == [n for n in names if n != "b1"]
        assert isinstance(h5["model_weights"].attrs["layer_names"][0], str)  # as the file had them
        assert "b1" not in h5["model_weights"]
        assert [str(n) for n in h5["model_weights/c1"].attrs["weight_names"]] == ["c1/kernel", "c1/bias"]
        assert h5["model_weights/c1/c1/bias"][()].tobytes() == bias.tobytes()
        np.testing.assert_array_equal(h5["model_weights/c2/c2/kernel"][()], kernel * 3)
        assert legacy_optimizer_names(h5) == [optimizer[0], optimizer[1], "conv_surgeon/reset_2", optimizer[3]]
        assert not h5["optimizer_weights/conv_surgeon/reset_2"][()].any()
        assert h5[f"optimizer_weights/{optimizer[3]}"][()].tobytes() == before[f"optimizer_weights/{optimizer[3]}"][0]
    changed = {"model_weights", "model_weights/c1", "model_weights/c1/c1", "model_weights/c1/c1/bias",
               "model_weights/c2/c2/kernel"}
    for name, value in before.items():
        if name.startswith(("model_weights/b1", "optimizer_weights")) or name in changed:
            continue
        assert after[name] == value, name  # every other dataset and group as it was
    assert set(after) - set(before) - changed == {n for n in after if n.startswith("optimizer_weights")} - set(before)


def test_rewrite_legacy_refuses_a_layer_list_too_long_for_one_attribute(tmp_path):
    rewrite = LegacyRewrite(config=_config("mixed"), layer_names=tuple(f"layer_{i:05d}" for i in range(6000)))
    with pytest.raises(ModelFileError, match="the list 'layer_names' is too long to rewrite in one HDF5 attribute"):
        rewrite_legacy(ModelFile.from_path(MIXED_H5), rewrite, tmp_path / "out.h5")


# --- what surgery reads first ---------------------------------------------------------------------


def test_read_config_of_both_formats():
    config, names = read_config(ModelFile.from_path(MIXED), "fold-bn")
    assert names is None
    assert config["config"]["name"] == "mixed" and [e["name"] for e in config["config"]["layers"]] == \
        _facts("mixed")["operations"][""]
    config, names = read_config(ModelFile.from_path(MIXED_H5), "fold-bn")
    assert names == ["image", "c1", "c2", "b1", "b2", "add", "inner", "dw", "b3", "relu", "sep", "b4", "tr", "b5",
                     "b6", "gap", "d"]
    assert [e["name"] for e in config["config"]["layers"]] == names


def test_the_store_must_sit_where_the_config_says(tmp_path):
    by_path = {layer.path: layer for layer in read_structure(ModelFile.from_path(MIXED)).layers}
    config = _config("mixed")
    check_store_places(config, by_path, "mixed.keras", "fold-bn")  # as Keras wrote it: accepted
    assert {path: layer.store_path for path, layer in by_path.items()} == {
        path: store for path, store in _facts("mixed")["store"].items() if path in by_path}
    # Two layers of one class listed in the other order than their store keys say.
    layers = config["config"]["layers"]
    c1, c2 = (next(i for i, e in enumerate(layers) if e["name"] == n) for n in ("c1", "c2"))
    layers[c1], layers[c2] = layers[c2], layers[c1]
    with pytest.raises(ModelFileError, match=(
            "mixed.keras: layer 'c2' is stored at 'layers/conv2d_1', not at 'layers/conv2d' where Keras would look "
            "for it; fold-bn cannot rewrite this store")):
        check_store_places(config, by_path, "mixed.keras", "fold-bn")
    assert layer_variable(by_path["c2"], "bias").shape == (4,) and layer_variable(by_path["c1"], "bias") is None
    with pytest.raises(ModelFileError, match="layer 'gap' of the config has no weights in the store"):
        store_layer(by_path, "gap", "mixed.keras")
