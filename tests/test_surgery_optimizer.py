"""The optimizer state through graph surgery (conv_surgeon.surgery.optimizer), without Keras:
which slot belongs to which variable, and which slots are kept, reset or sliced when
fold-bn or prune change the variables.

The oracle is Keras's own optimizer, recorded when make_configs.py trained the mixed
model (and its twins) one step: the path, shape and owner of every optimizer variable,
for Adam, AMSGrad, SGD with and without momentum, and Adam with a schedule.
"""

from __future__ import annotations

import io
import zipfile
from functools import partial
from typing import Any

import h5py
import numpy as np
import pytest

from conv_surgeon.errors import ConvSurgeonError
from conv_surgeon.model.structure import read_structure
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.surgery.channels import find_groups
from conv_surgeon.surgery.cuts import Cut, sliced, variable_cuts
from conv_surgeon.surgery.folding import find_pairs, folded_config
from conv_surgeon.surgery.optimizer import (
    read_optimizer_shapes,
    remapped_slots,
    slot_changes,
    slot_layout,
    structure_variables,
    trainable_variables,
)
from conv_surgeon.surgery.rewrite import Derived

from configs import CONFIGS, config as _config, facts as _facts

MIXED = CONFIGS / "mixed.keras"
WITH_VARIABLES = ["resnet50", "mobilenetv2", "densenet121", "xception", "efficientnetb0", "fold_cases", "conv_kinds",
                  "swap", "sequential_fold", "mixed", "junctions", "channels_first_flat", "nested_prune",
                  "prune_refusals", "with_ops", "mixed.folded", "mixed.pruned", "junctions.pruned"]


def _variables_of(facts: dict[str, Any]):
    """A layer's (name, shape, trainable) list as Keras built it; [] for a layer without."""
    def variables_of(path: str) -> list[tuple[str, tuple[int, ...], bool]]:
        return [(name, tuple(shape), trainable) for name, shape, trainable in facts["variables"].get(path, [])]

    return variables_of


def _trainable(facts: dict[str, Any]) -> list[tuple[tuple[str, str], tuple[int, ...]]]:
    """Keras's model.trainable_variables, in its order."""
    return [((layer, name), tuple(shape)) for layer, name, shape in facts["trainable"]]


def _slots(optimizer: list[list[Any]]) -> list[tuple[tuple[int, ...], str]]:
    return [(tuple(shape), dtype) for _, shape, dtype, _ in optimizer]


def _slot_name(path: str) -> str:
    """An optimizer variable's path without the optimizer's own (automatic) name."""
    return path.partition("/")[2]


@pytest.mark.parametrize("name", WITH_VARIABLES)
def test_trainable_variables_come_in_kerass_order(name):
    facts = _facts(name)
    assert trainable_variables(_config(name), _variables_of(facts)) == _trainable(facts)


def test_a_frozen_layer_has_no_trainable_variables():
    config = _config("mixed")
    inner = next(e for e in config["config"]["layers"] if e["name"] == "inner")
    inner["config"]["trainable"] = False  # Keras: a frozen model's variables are not trained
    found = trainable_variables(config, _variables_of(_facts("mixed")))
    assert found == [entry for entry in _trainable(_facts("mixed")) if not entry[0][0].startswith("inner/")]


def test_a_layer_whose_variables_are_unknown_is_refused():
    def unknown(path: str):
        return None if path == "sep" else _variables_of(_facts("mixed"))(path)

    with pytest.raises(ConvSurgeonError, match=r"layer 'sep' \(SeparableConv2D\) holds variables conv-surgeon cannot"):
        trainable_variables(_config("mixed"), unknown)


def test_the_stores_variables_give_kerass_trainable_variables():
    """What fold-bn and prune pass: the variables read from the file, flagged by the catalogue."""
    by_path = {layer.path: layer for layer in read_structure(ModelFile.from_path(MIXED)).layers}
    assert trainable_variables(_config("mixed"), structure_variables(by_path)) == _trainable(_facts("mixed"))


def test_read_optimizer_shapes_of_both_formats():
    facts = _facts("mixed")
    assert read_optimizer_shapes(ModelFile.from_path(MIXED)) == _slots(facts["optimizer"])
    # A legacy .h5 lists them by name, in the optimizer's order: the same shapes.
    assert [s for s, _ in read_optimizer_shapes(ModelFile.from_path(CONFIGS / "mixed.h5"))] == \
        [s for s, _ in _slots(facts["optimizer"])]


@pytest.mark.parametrize("optimizer, layout", [
    ("adam", (2, [2])),  # iteration, learning_rate; then m, v of each variable, interleaved
    ("adam_amsgrad", (2, [2, 1])),  # ... and a block of velocity_hat after
    ("sgd_momentum", (2, [1])),
    ("sgd", (2, [])),
    ("adam_schedule", (1, [2])),  # a schedule is no variable: the iteration alone
])
def test_slot_layout_places_every_slot_with_its_variable(optimizer, layout):
    facts = _facts("mixed")
    recorded = facts["optimizer"] if optimizer == "adam" else facts["other_optimizers"][optimizer]
    trainable = [shape for _, shape in _trainable(facts)]
    found = slot_layout(_slots(recorded), trainable)
    assert found == layout
    prefix, blocks = found
    owners: list[int | None] = [None] * prefix
    for k in blocks:
        owners += [t for t in range(len(trainable)) for _ in range(k)]
    assert owners == [owner for *_, owner in recorded]  # Keras's: whose slot each one is


def test_slot_layout_refuses_to_guess():
    # Two variables of one shape and four slots: two per variable, or two blocks of one.
    assert slot_layout([((), "int64"), ((), "float32")] + [((4,), "float32")] * 4, [(4,), (4,)]) is None
    # Slots that repeat no variable's shape.
    assert slot_layout([((), "int64"), ((), "float32"), ((3,), "float32")], [(4,)]) is None
    # Shapes that tell the variables apart: one way only.
    slots = [((), "int64"), ((), "float32"), ((4,), "float32"), ((4,), "float32"), ((3,), "float32"), ((3,), "float32")]
    assert slot_layout(slots, [(4,), (3,)]) == (2, [2])
    assert slot_layout(slots[:3] + slots[4:5], [(4,), (3,)]) == (2, [1])


def test_fold_keeps_the_slots_of_untouched_variables_and_resets_the_folded_ones():
    facts, twin = _facts("mixed"), _facts("mixed.folded")
    config = _config("mixed")
    pairs = list(find_pairs(config).pairs)
    changed = {(p.conv_path, v) for p in pairs for v in (
        ("pointwise_kernel", "bias") if p.conv_class.kind == "separable" else ("kernel", "bias"))}
    changed |= {(p.bn_path, v[0]) for p in pairs for v in facts["variables"][p.bn_path]}
    old, new = _trainable(facts), _trainable(twin)
    origins, kept, altered, removed = remapped_slots(_slots(facts["optimizer"]), old, new, dict.fromkeys(changed))
    # Kept: sep's depthwise kernel, b6's gamma and beta, d's kernel and bias. Reset: the
    # kernels and biases of the six folded convs (c1's bias new). Removed: the BNs' gammas and betas.
    assert (kept, altered, removed) == (5, 12, 10)
    assert origins[:2] == (0, 1)
    assert len(origins) == len(twin["optimizer"])  # the optimizer Keras builds for the folded model
    for origin, (path, shape, dtype, owner) in zip(origins[2:], twin["optimizer"][2:], strict=True):
        key = tuple(twin["trainable"][owner][:2])
        if key in changed:
            assert isinstance(origin, np.ndarray) and origin.shape == tuple(shape) and not origin.any(), path
        else:  # the same variable's same slot, copied
            assert isinstance(origin, int), path
            old_path, _, _, old_owner = facts["optimizer"][origin]
            assert tuple(facts["trainable"][old_owner][:2]) == key, path
            assert _slot_name(old_path) == _slot_name(path), path  # e.g. c1_kernel_momentum


def _stored_slots() -> list[np.ndarray]:
    with zipfile.ZipFile(MIXED) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        group = h5["optimizer/vars"]
        return [group[str(i)][()] for i in range(len(group))]


def test_prune_slices_the_slots_of_the_sliced_variables():
    facts, twin = _facts("mixed"), _facts("mixed.pruned")
    [group] = [g for g in find_groups(_config("mixed")) if g.members == ("c1", "c2")]
    cuts = variable_cuts([Cut(group, (1,))])
    changed = {key: partial(sliced, axes=axes) for key, axes in cuts.items()}
    origins, kept, altered, removed = remapped_slots(_slots(facts["optimizer"]), _trainable(facts), _trainable(twin),
                                                     changed)
    assert (kept, altered, removed) == (26 - 7, 7, 0)
    stored = _stored_slots()
    # Channel 1 goes from c1's and c2's filters, b1's and b2's vectors, and inner/iconv's inputs.
    remove = {("c1", "kernel"): -1, ("c2", "kernel"): -1, ("c2", "bias"): 0, ("b1", "gamma"): 0, ("b1", "beta"): 0,
              ("b2", "beta"): 0, ("inner/iconv", "kernel"): -2}
    derived = 0
    for origin, (path, shape, _, owner) in zip(origins, twin["optimizer"], strict=True):
        key = tuple(twin["trainable"][owner][:2]) if owner is not None else None
        if key in remove:
            assert isinstance(origin, Derived), path
            old_path = facts["optimizer"][origin.index][0]
            assert _slot_name(old_path) == _slot_name(path)  # the same variable's slot of the same kind
            value = origin.compute(stored[origin.index])
            assert list(value.shape) == shape  # what Keras builds for the pruned model
            np.testing.assert_array_equal(value, np.delete(stored[origin.index], 1, axis=remove[key]))
            derived += 1
        else:
            assert isinstance(origin, int) and _slot_name(facts["optimizer"][origin][0]) == _slot_name(path), path
    assert derived == 2 * len(remove)  # Adam: m and v


def test_slot_changes_says_what_happened_to_the_optimizer_state():
    source = ModelFile.from_path(MIXED)
    structure = read_structure(source)
    by_path = {layer.path: layer for layer in structure.layers}
    config = _config("mixed")
    pairs = list(find_pairs(config).pairs)
    new_config = folded_config(config, pairs, keep_layers=False)
    new_variables = {p.conv_path: [(n, tuple(s), t) for n, s, t in _facts("mixed.folded")["variables"][p.conv_path]]
                     for p in pairs}
    changed = {(p.conv_path, n) for p in pairs for n, _, _ in new_variables[p.conv_path]
               if n != "depthwise_kernel"} | {(p.bn_path, v.name) for p in pairs for v in by_path[p.bn_path].variables}
    result = slot_changes(structure, config, new_config, by_path, new_variables, dict.fromkeys(changed),
                          read_optimizer_shapes(source))
    assert result is not None and result.vars_group == "optimizer/vars"
    assert result.note == "optimizer state: the slots of 5 variables kept, of 12 reset to zero (their values changed), of 10 removed"
    assert len(result.origins) == len(_facts("mixed.folded")["optimizer"])
