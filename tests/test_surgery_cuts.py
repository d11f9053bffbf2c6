"""prune's cuts (conv_surgeon.surgery.cuts) on committed configs of real Keras saves, without
Keras: the indices each variable loses, the sliced values, and the rewritten config.

The oracle is a *twin* of each hand-built model that Keras built with fewer filters
(tests/data/configs/make_configs.py): its config is what the pruned config must be, and
its variables have the shapes the sliced ones must have.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conv_surgeon.model.catalogue import conv_class
from conv_surgeon.model.graph import TensorRef, model_graphs
from conv_surgeon.surgery.channels import ChannelGroup, find_groups
from conv_surgeon.surgery.cuts import (
    Cut,
    check_cuts,
    conv_output_shape,
    pruned_config,
    sliced,
    sliced_shape,
    spatial_positions,
    tensor_cuts,
    variable_cuts,
)

from configs import config as _config, facts as _facts

# The channels each twin was built without (its filters are the model's less these many),
# by the first member of each group.
CUTS = {
    "junctions": {"stem": (0, 3, 7), "a": (0, 5), "c": (1,), "sep": (2, 4), "tr": (1, 3)},
    "channels_first_flat": {"c1": (1, 5), "a": (4,), "c2": (0,)},
    "nested_prune": {"c1": (0, 1), "inner/iconv": (2, 6), "inner/iout": (0, 4), "c2": (3,), "seq/sconv": (1, 2)},
    "mixed": {"c1": (1,)},
}



def _comparable(value: Any, drop: tuple[str, ...] = ()) -> Any:
    """Without what differs between two saves of one architecture (shared dtype policies'
    ids, the compile config's automatic optimizer name) and the keys in ``drop``."""
    if isinstance(value, dict):
        return {k: _comparable(v, drop) for k, v in value.items()
                if k not in ("shared_object_id", "compile_config", *drop)}
    if isinstance(value, list):
        return [_comparable(v, drop) for v in value]
    return value


def _cuts(name: str, config: dict[str, Any] | None = None) -> list[Cut]:
    groups = {group.members[0]: group for group in find_groups(config or _config(name))}
    return [Cut(groups[first], channels) for first, channels in CUTS[name].items()]


def _group(name: str, first: str) -> ChannelGroup:
    return next(g for g in find_groups(_config(name)) if g.members[0] == first)


# --- the rewritten config ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["junctions", "channels_first_flat", "mixed", "nested_prune"])
def test_pruned_config_is_the_config_keras_writes_with_fewer_filters(name):
    config = _config(name)
    pruned = pruned_config(config, _cuts(name, config))
    assert _comparable(pruned) == _comparable(_config(f"{name}.pruned"))
    assert config == _config(name)  # the original is left as it was


def test_pruned_config_of_nested_models_narrows_their_inputs():
    """Every shape the nested models' layers record, their InputLayers' batch_shape, and a
    nested Sequential's own build_input_shape."""
    pruned = pruned_config(_config("nested_prune"), _cuts("nested_prune"))
    seq = next(e for e in pruned["config"]["layers"] if e["name"] == "seq")
    twin = next(e for e in _config("nested_prune.pruned")["config"]["layers"] if e["name"] == "seq")
    assert seq["config"]["build_input_shape"] == twin["config"]["build_input_shape"] == [None, 8, 8, 3]  # 4 - 1
    inner = next(e for e in pruned["config"]["layers"] if e["name"] == "inner")
    assert inner["config"]["layers"][0]["config"]["batch_shape"] == [None, 10, 10, 4]  # 6 - 2


def test_cutting_a_resnet50_stage_changes_its_filters_and_every_shape_it_runs_along():
    config = _config("resnet50")
    group = _group("resnet50", "conv2_block1_0_conv")
    assert group.channels == 256
    pruned = pruned_config(config, [Cut(group, (7, 100))])
    changes = _differences(config, pruned)
    members = set(group.members)
    filters = {name for name, key, old, new in changes if key == "filters"}
    assert filters == members and all((old, new) == (256, 254) for _, key, old, new in changes if key == "filters")
    shapes = [(name, old, new) for name, key, old, new in changes if key != "filters"]
    # Every other change is a recorded shape whose channels go from 256 to 254: the inputs
    # of the BNs, Adds, ReLUs and convs on the stage's path (64 x 64 input: 16 x 16 here).
    assert {(tuple(old), tuple(new)) for _, old, new in shapes} == {((None, 16, 16, 256), (None, 16, 16, 254))}
    readers = {name for name, _, _ in shapes}
    assert {"conv2_block2_1_conv", "conv2_block3_1_conv", "conv3_block1_0_conv", "conv3_block1_1_conv"} <= readers
    assert {f"conv2_block{b}_add" for b in (1, 2, 3)} | {"conv2_block1_0_bn", "conv2_block3_3_bn"} <= readers
    assert not readers & {"conv2_block2_2_conv", "conv3_block1_2_conv", "conv2_block1_1_conv"}


def test_cutting_an_efficientnet_expansion_narrows_its_squeeze_and_excite():
    config = _config("efficientnetb0")
    group = _group("efficientnetb0", "block2a_expand_conv")
    assert group.members == ("block2a_expand_conv", "block2a_se_expand") and group.channels == 96
    pruned = pruned_config(config, [Cut(group, (0, 1, 2))])
    layers = {e["name"]: e["config"] for e in pruned["config"]["layers"]}
    assert layers["block2a_expand_conv"]["filters"] == layers["block2a_se_expand"]["filters"] == 93
    assert layers["block2a_se_reshape"]["target_shape"] == [1, 1, 93]
    assert layers["block2a_se_reduce"]["filters"] == 4  # its own filters stay
    changed = {name for name, key, _, _ in _differences(config, pruned) if key not in ("filters", "target_shape")}
    assert {"block2a_dwconv", "block2a_se_reduce", "block2a_se_excite", "block2a_project_conv"} <= changed


def _differences(old: Any, new: Any, name: str = "", key: str = "") -> list[tuple[str, str, Any, Any]]:
    """(layer, key, old, new) of every value that differs; a shape list as one value."""
    if isinstance(old, dict):
        name = old.get("name", name) if "class_name" in old and "name" in old else name
        return [d for k in old for d in _differences(old[k], new[k], name, k)]
    if isinstance(old, list) and not (old and all(v is None or isinstance(v, int) for v in old)):
        return [d for a, b in zip(old, new, strict=True) for d in _differences(a, b, name, key)]
    return [] if old == new else [(name, key, old, new)]


# --- the variables --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["junctions", "channels_first_flat",
                                  "nested_prune", "mixed"])
def test_each_variable_takes_the_shape_keras_gives_the_pruned_model(name):
    facts = _facts(name)
    cuts = variable_cuts(_cuts(name))
    twin = facts["twins"]["pruned"]["variables"]
    assert set(twin) == set(facts["variables"])
    for layer, variables in facts["variables"].items():
        for (variable, shape, _), (_, twin_shape, _) in zip(variables, twin[layer], strict=True):
            axes = cuts.get((layer, variable), {})
            assert list(sliced_shape(tuple(shape), axes)) == twin_shape, (layer, variable, axes)


def test_the_indices_each_variable_loses():
    cuts = variable_cuts(_cuts("junctions"))
    assert cuts[("stem", "kernel")] == {-1: (0, 3, 7)} and cuts[("stem_bn", "moving_mean")] == {-1: (0, 3, 7)}
    # a reads the stem's channels and is a member of {a, b, m}: both axes of its kernel.
    assert cuts[("a", "kernel")] == {-2: (0, 3, 7), -1: (0, 5)} and cuts[("c", "kernel")] == {-2: (0, 3, 7), -1: (1,)}
    # cat holds {a, b, m}'s 8 channels, then c's 4: two cuts on one tensor, their union.
    assert cuts[("cat_bn", "gamma")] == {-1: (0, 5, 8 + 1)}
    assert cuts[("dw", "kernel")] == {-2: (0, 5, 9)}
    # After the depthwise conv (multiplier 2), input channel i is outputs 2i and 2i + 1.
    assert cuts[("dw", "bias")] == {-1: (0, 1, 10, 11, 18, 19)}
    assert cuts[("sep", "depthwise_kernel")] == {-2: (0, 1, 10, 11, 18, 19)}
    assert cuts[("sep", "pointwise_kernel")] == {-2: (0, 1, 10, 11, 18, 19), -1: (2, 4)}
    assert cuts[("tr", "kernel")] == {-1: (2, 4), -2: (1, 3)}  # read on its last axis, filters second to last
    assert cuts[("dense_gap", "kernel")] == {0: (1, 3)}
    layout = _facts("junctions")["flatten"]["flat"]  # Keras: the channel of each flattened feature
    assert cuts[("dense_flat", "kernel")] == {0: tuple(f for f, c in enumerate(layout) if c in (1, 3))}
    assert ("d", "kernel") not in cuts and ("se_reshape", "target_shape") not in cuts


def test_sliced_values():
    value = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    out = sliced(value, {-1: (0, 3), -2: (1,), 0: (1,)})
    expected = np.delete(np.delete(np.delete(value, [0, 3], axis=3), [1], axis=2), [1], axis=0)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and out.shape == (1, 3, 3, 3)
    assert sliced_shape(value.shape, {-1: (0, 3), -2: (1,), 0: (1,)}) == out.shape
    assert sliced(value, {}).tobytes() == value.tobytes()


@pytest.mark.parametrize("axes, problem", [
    ({-1: (0, 4)}, None),
    ({4: (0,)}, "layer 'c' kernel (3, 3, 2, 5) has no axis 4"),
    ({-5: (0,)}, "layer 'c' kernel (3, 3, 2, 5) has no axis -5"),
    ({-1: (1, 5)}, "layer 'c' kernel (3, 3, 2, 5): index 5 out of range on axis -1 (5)"),
    ({-2: (0, 1)}, "layer 'c' kernel (3, 3, 2, 5): every entry of axis -2 would be removed"),
])
def test_check_cuts(axes, problem):
    assert check_cuts((3, 3, 2, 5), axes, "layer 'c' kernel") == problem


# --- the tensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["junctions", "channels_first_flat", "nested_prune", "mixed"])
def test_every_narrowed_tensor_has_the_width_keras_gives_it(name):
    narrowed = tensor_cuts(_cuts(name))
    old = {g.path: g.shapes for g in model_graphs(_config(name))}
    new = {g.path: g.shapes for g in model_graphs(_config(f"{name}.pruned"))}
    for (graph, ref), (axis, count) in narrowed.items():
        if ref in old[graph]:
            assert old[graph][ref][axis] - count == new[graph][ref][axis], (graph, ref)
    # ... and every tensor whose recorded shape differs in the twin is one of them.
    differ = {(g, ref) for g in old for ref in old[g] if old[g][ref] != new[g][ref]}
    assert differ <= set(narrowed)


def test_a_tensor_two_cuts_run_along_loses_both():
    narrowed = tensor_cuts(_cuts("junctions"))
    assert narrowed[("", TensorRef("cat"))] == (-1, 2 + 1)
    assert narrowed[("", TensorRef("dw"))] == (-1, 2 * 3)
    assert narrowed[("", TensorRef("flat"))] == (-1, 2 * 64)


# --- shapes and positions -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2", "xception", "efficientnetb0", "densenet121",
                                  "conv_kinds", "channels_first_flat"])
def test_conv_output_shape_is_the_shape_keras_recorded(name):
    convs = checked = 0
    for graph in model_graphs(_config(name)):
        shapes = graph.shapes
        for layer in graph.layers:
            cls = conv_class(layer.class_name)
            if cls is None or cls.kind == "transpose":
                continue
            convs += 1
            predicted = conv_output_shape(shapes[layer.calls[0][0]], layer.config)
            recorded = shapes[TensorRef(layer.name)]  # the input shape of what it feeds
            if cls.kind == "depthwise":  # it predicts the positions, not the channels (all MACs need)
                channel = 1 if layer.config.get("data_format") == "channels_first" else len(recorded) - 1
                predicted, recorded = ([d for i, d in enumerate(shape) if i != channel]
                                       for shape in (predicted, recorded))
            assert predicted == recorded, layer.name
            checked += 1
    assert checked == convs > 0  # no conv of these is a model output: Keras recorded every one


def test_spatial_positions():
    assert spatial_positions([None, 8, 8, 5], -1) == 64
    assert spatial_positions([None, 4, 8, 8], 1) == 64
    assert spatial_positions([None, 6, 6, 6, 2], -1) == 216
    assert spatial_positions([None, 5], -1) == 1  # a Dense's input: one position
    assert spatial_positions([None, None, 8, 3], -1) is None
    assert spatial_positions(None, -1) is None
