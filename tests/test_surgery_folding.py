"""fold-bn's graph surgery (conv_surgeon.surgery.folding) on committed configs of real Keras
saves, without Keras: which conv -> BatchNormalization pairs fold and why the others do
not, the rewritten config, where every object of the weight store goes, and the folded
values.

The oracles were recorded when Keras built each model (tests/data/configs/make_configs.py):
the BNs that Keras's live graph says follow a linear conv feeding nothing else, and a
*twin* of each model built by Keras without its foldable BNs, whose config, order and
store keys are what the fold must produce.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from typing import Any

import h5py
import numpy as np
import pytest

from conv_surgeon.model.catalogue import conv_class
from conv_surgeon.surgery.folding import (
    BatchNormValues,
    find_pairs,
    folded_bias,
    folded_config,
    folded_kernel,
    identity_values,
    output_channels,
    scale_and_shift,
    store_moves,
    variance_problem,
)

from configs import CONFIGS, config as _config, facts as _facts

APPLICATIONS = {"resnet50": 53, "mobilenetv2": 52, "densenet121": 59, "xception": 40, "efficientnetb0": 49}
FOLD_TWINS = ("fold_cases", "conv_kinds", "swap", "sequential_fold", "mixed")


def _comparable(value: Any) -> Any:
    """A config without what differs between two saves of one architecture: the ids Keras
    gives shared dtype policies (which copy carries it depends on the order of
    serialization) and the compile config (the optimizer's automatic name)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in ("shared_object_id", "compile_config")}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _bns_after_a_conv(config: dict[str, Any]) -> dict[str, str]:
    """Counted here from the root config's entries: each BN whose input is a conv's output."""
    layers = {entry["name"]: entry for entry in config["config"]["layers"]}
    found = {}
    for name, entry in layers.items():
        if entry["class_name"] == "BatchNormalization":
            producer = entry["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0]
            if conv_class(layers[producer]["class_name"]) is not None:
                found[name] = producer
    return found


def _refs(value: Any) -> list[str]:
    """The layers an entry's inbound nodes reference, in order."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        return [name for key in value for name in _refs(value[key])]
    if isinstance(value, list):
        return [name for item in value for name in _refs(item)]
    return []


# --- which pairs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", APPLICATIONS)
def test_pairs_of_the_applications(name):
    config, facts = _config(name), _facts(name)
    search = find_pairs(config)
    pairs = {pair.bn_path: pair.conv_path for pair in search.pairs}
    assert len(pairs) == APPLICATIONS[name]
    assert set(pairs) == set(facts["foldable"])  # Keras's live graph
    assert pairs == _bns_after_a_conv(config)  # every BN after a conv folds, with that conv
    if name != "densenet121":
        assert search.not_folded == ()  # every BN of these follows a conv


def test_mobilenetv2_folds_its_depthwise_convs_and_gives_every_conv_a_bias():
    search = find_pairs(_config("mobilenetv2"))
    kinds = Counter(pair.conv_class.kind for pair in search.pairs)
    # Conv1, 17 expansions and projections... : 35 Conv2D; 17 DepthwiseConv2D, one a block.
    assert kinds == {"conv": 35, "depthwise": 17}
    assert all(pair.conv.config["use_bias"] is False for pair in search.pairs)
    folded = folded_config(_config("mobilenetv2"), list(search.pairs), keep_layers=False)
    biased = [e["name"] for e in folded["config"]["layers"]
              if conv_class(e["class_name"]) is not None and e["config"]["use_bias"] is True]
    assert sorted(biased) == sorted(pair.conv.name for pair in search.pairs)


def test_densenet121_keeps_its_preactivation_batchnorms_and_says_why():
    search = find_pairs(_config("densenet121"))
    refused = {r.layer: r for r in search.not_folded}
    # Every dense layer is BN -> ReLU -> conv: its first BN (58 of them) follows the block's
    # input; so do the transitions' BNs (3) and the last one: 62 stay.
    assert len(refused) == 58 + 3 + 1 == 62
    assert Counter(r.reason.split("'")[2] for r in refused.values()) == {
        " (Concatenate), not a convolution": 58,
        " (AveragePooling2D), not a convolution": 3,
        " (MaxPooling2D), not a convolution": 1,
    }
    assert refused["conv2_block1_0_bn"].after == "pool1"
    assert [refused[f"conv{b}_block1_0_bn"].after for b in (3, 4, 5)] == ["pool2_pool", "pool3_pool", "pool4_pool"]
    blocks = {2: 6, 3: 12, 4: 24, 5: 16}
    assert [refused[f"pool{b}_bn"].after for b in (2, 3, 4)] == [f"conv{b}_block{blocks[b]}_concat" for b in (2, 3, 4)]
    assert refused["bn"].after == "conv5_block16_concat"
    assert refused["conv4_block7_0_bn"].reason == \
        "it follows 'conv4_block6_concat' (Concatenate), not a convolution"


def test_every_reason_a_batchnorm_is_not_folded():
    search = find_pairs(_config("fold_cases"))
    assert [pair.bn_path for pair in search.pairs] == ["bn_nobias", "bn_head", "inner/ibn", "seq/sbn"]
    assert {pair.bn_path: pair.conv_path for pair in search.pairs} == {
        "bn_nobias": "c_nobias", "bn_head": "c_head", "inner/ibn": "inner/iconv", "seq/sbn": "seq/sconv"}
    assert {r.layer: (r.reason, r.after) for r in search.not_folded} == {
        "bn_two": ("the output of 'c_two' also feeds 'sum_two'", "c_two"),
        "bn_after_bn": ("it follows 'bn_nobias' (BatchNormalization), not a convolution", "bn_nobias"),
        "bn_relu": ("'c_relu' has an activation of its own (relu) between it and the BatchNormalization", "c_relu"),
        "bn_fork_a": ("the output of 'c_fork' also feeds 'bn_fork_b'", "c_fork"),
        "bn_fork_b": ("the output of 'c_fork' also feeds 'bn_fork_a'", "c_fork"),
        "bn_after_pool": ("it follows 'pool' (AveragePooling2D), not a convolution", "pool"),
        "bn_shared": ("it is called 2 times (a shared layer); a fold would change every call", None),
        "bn_after_model": ("it follows the nested model 'inner': folding would cross a model boundary", "inner"),
        "bn_out": ("the output of 'c_out' also feeds the model's output", "c_out"),
        "bn_sync": ("it is a synchronized BatchNormalization", "c_sync"),
        "bn_renorm": ("it uses batch renormalization (renorm=True)", "c_renorm"),
    }
    # Keras's graph agrees on the structure; the last two are refused for their config.
    assert {p.bn_path for p in search.pairs} == set(_facts("fold_cases")["foldable"]) - {"bn_sync", "bn_renorm"}


def test_every_kind_of_conv_and_the_channel_axis():
    search = find_pairs(_config("conv_kinds"))
    assert {pair.bn_path: (pair.conv_class.kind, pair.conv_class.rank) for pair in search.pairs} == {
        "bn_cf": ("conv", 2), "bn_1d": ("conv", 1), "bn_3d": ("conv", 3), "bn_dw": ("depthwise", 2),
        "bn_sep": ("separable", 2), "bn_tr": ("transpose", 2), "bn_dw1d": ("depthwise", 1),
        "bn_sep1d": ("separable", 1), "bn_tr1d": ("transpose", 1), "bn_tr3d": ("transpose", 3)}
    assert {p.bn_path for p in search.pairs} == set(_facts("conv_kinds")["foldable"]) - {"bn_wrong_axis"}
    [refused] = search.not_folded
    assert (refused.layer, refused.reason) == (
        "bn_wrong_axis", "it normalises axis 2, not the conv's channel axis (1, channels_first)")


@pytest.mark.parametrize("axis, refusal", [
    (3, None),  # the last axis of a 2D conv's output, counted from the front
    ([-1], None),
    ([3], None),
    (1, "it normalises axis 1, not the conv's channel axis (-1, channels_last)"),
    ([1, 2], "it normalises axes [1, 2], not the conv's channel axis"),
])
def test_the_axis_a_batchnorm_normalises(axis, refusal):
    config = _config("sequential_fold")
    bn = next(e for e in config["config"]["layers"] if e["config"]["name"] == "a_bn")
    bn["config"]["axis"] = axis
    search = find_pairs(config)
    reasons = {r.layer: r.reason for r in search.not_folded}
    assert reasons.get("a_bn") == refusal
    assert ("a_bn" in {p.bn_path for p in search.pairs}) == (refusal is None)


def test_ops_and_keras2_configs():
    search = find_pairs(_config("with_ops"))
    assert [p.bn_path for p in search.pairs] == ["b2", "b3"] == _facts("with_ops")["foldable"]
    assert [(r.layer, r.reason) for r in search.not_folded] == [
        ("b_op", "it follows 'relu_1' (Relu), not a convolution")]
    search = find_pairs(_config("keras2_convs"))
    assert [(p.conv_path, p.bn_path) for p in search.pairs] == [
        ("conv", "bn"), ("inner_block/inner_conv", "inner_block/inner_bn"),
        ("frozen_block/frozen_conv", "frozen_block/frozen_bn")]
    assert search.not_folded == ()


# --- the rewritten config ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FOLD_TWINS)
def test_folded_config_is_the_config_keras_writes_for_the_folded_model(name):
    config = _config(name)
    pairs = list(find_pairs(config).pairs)
    folded = folded_config(config, pairs, keep_layers=False)
    assert _comparable(folded) == _comparable(_config(f"{name}.folded"))
    assert config == _config(name)  # the original is left as it was


@pytest.mark.parametrize("name", APPLICATIONS)
def test_folding_an_application_rewires_its_consumers_in_kerass_order(name):
    config, facts = _config(name), _facts(name)
    pairs = list(find_pairs(config).pairs)
    renames = {pair.bn.name: pair.conv.name for pair in pairs}
    folded = folded_config(config, pairs, keep_layers=False)
    layers = folded["config"]["layers"]
    # The layers Keras lists for the model built without those BNs, in its order.
    assert [entry["name"] for entry in layers] == facts["twins"]["folded"]["operations"][""]
    before = {entry["name"]: entry for entry in config["config"]["layers"]}
    changed = 0
    for entry in layers:
        old = before[entry["name"]]
        # Each reference to a removed BN now names its conv; nothing else moves.
        assert _refs(entry) == [renames.get(ref, ref) for ref in _refs(old)], entry["name"]
        changed += _refs(entry) != _refs(old)
        rest = {k: v for k, v in entry.items() if k != "inbound_nodes"}
        old_rest = {k: v for k, v in old.items() if k != "inbound_nodes"}
        if entry["name"] in renames.values():
            assert rest["config"].pop("use_bias") is True
            old_rest["config"].pop("use_bias")
        assert rest == old_rest, entry["name"]
    # Every consumer of a removed BN (a ReLU, an Add fed by two of them, ...) is rewired.
    consumers = {e["name"] for e in config["config"]["layers"] if set(_refs(e)) & set(renames)}
    assert changed == len(consumers) > 0
    assert folded["config"]["output_layers"] == config["config"]["output_layers"]


def test_keep_layers_only_gives_the_convs_a_bias():
    config = _config("mobilenetv2")
    pairs = list(find_pairs(config).pairs)
    kept = folded_config(config, pairs, keep_layers=True)
    convs = {pair.conv.name for pair in pairs}
    for old, new in zip(config["config"]["layers"], kept["config"]["layers"], strict=True):
        if old["name"] in convs:
            assert (old["config"]["use_bias"], new["config"]["use_bias"]) == (False, True)
            new = json.loads(json.dumps(new))
            new["config"]["use_bias"] = False
        assert new == old


# --- where the store's objects go ------------------------------------------------------------


@pytest.mark.parametrize("name", [*APPLICATIONS, *FOLD_TWINS])
def test_store_moves_put_every_object_where_keras_stores_the_folded_model(name):
    config, facts = _config(name), _facts(name)
    twin = facts["twins"]["folded"]["store"]
    pairs = list(find_pairs(config).pairs)
    removed = {pair.bn_path for pair in pairs}
    moves = store_moves(config, folded_config(config, pairs, keep_layers=False), removed)
    assert moves.new_paths == twin
    assert moves.drops == {facts["store"][bn] for bn in removed}
    assert moves.renames == {facts["store"][path]: new for path, new in twin.items() if facts["store"][path] != new}


def test_store_moves_when_removing_batchnorms_reorders_same_class_layers():
    """Without bn_second, c_second is no deeper than c_first: Keras lists c_first first,
    so the two convs swap store keys, and so do the nested models, whose layers follow them."""
    config = _config("swap")
    pairs = list(find_pairs(config).pairs)
    moves = store_moves(config, folded_config(config, pairs, keep_layers=False), {p.bn_path for p in pairs})
    assert moves.renames == {
        "layers/conv2d": "layers/conv2d_1", "layers/conv2d_1": "layers/conv2d",
        "layers/functional": "layers/functional_1", "layers/functional_1": "layers/functional",
        **{f"layers/functional/layers/{key}": f"layers/functional_1/layers/{key}"
           for key in ("conv2d", "input_layer", "re_lu")},
        **{f"layers/functional_1/layers/{key}": f"layers/functional/layers/{key}"
           for key in ("conv2d", "input_layer", "re_lu")},
    }
    assert moves.drops == {"layers/batch_normalization", "layers/functional/layers/batch_normalization",
                           "layers/functional_1/layers/batch_normalization"}
    assert moves.new_paths["model_a/model_a_conv"] == "layers/functional_1/layers/conv2d"


def test_store_moves_of_densenet121_renumber_the_batchnorms_that_stay():
    config, facts = _config("densenet121"), _facts("densenet121")
    pairs = list(find_pairs(config).pairs)
    removed = {pair.bn_path for pair in pairs}
    moves = store_moves(config, folded_config(config, pairs, keep_layers=False), removed)
    # The 62 BNs that stay are counted again without the 59 removed: the k-th is batch_normalization_k.
    staying = [e["name"] for e in config["config"]["layers"]
               if e["class_name"] == "BatchNormalization" and e["name"] not in removed]
    assert len(staying) == 62 == len(moves.renames)
    assert [moves.new_paths[bn] for bn in staying] == \
        ["layers/batch_normalization"] + [f"layers/batch_normalization_{k}" for k in range(1, 62)]
    # conv1_bn, the first BN of all, goes: every one that stays moves down.
    assert moves.renames == {facts["store"][bn]: moves.new_paths[bn] for bn in staying}
    assert facts["store"]["conv1_bn"] == "layers/batch_normalization" and "conv1_bn" in removed


def test_store_moves_without_removing_anything_move_nothing():
    config = _config("fold_cases")
    pairs = list(find_pairs(config).pairs)
    moves = store_moves(config, folded_config(config, pairs, keep_layers=True), set())
    assert moves.renames == {} and moves.drops == set()
    assert moves.new_paths == _facts("fold_cases")["store"]


# --- the values ----------------------------------------------------------------------------


def _stored(name: str) -> dict[str, np.ndarray]:
    """The variables of the committed mixed.keras, by "layer/variable", read with h5py."""
    facts = _facts(name)
    with zipfile.ZipFile(CONFIGS / f"{name}.keras") as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
            return {f"{layer}/{var[0]}": h5[f"{facts['store'][layer]}/vars/{i}"][()]
                    for layer, variables in facts["variables"].items() for i, var in enumerate(variables)}


def _bn(stored: dict[str, np.ndarray], name: str, epsilon: float = 1e-3) -> BatchNormValues:
    return BatchNormValues(stored.get(f"{name}/gamma"), stored.get(f"{name}/beta"), stored[f"{name}/moving_mean"],
                           stored[f"{name}/moving_variance"], epsilon)


def _conv2d_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """A stride-1 'same' Conv2D, channels last, in float64."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    height, width = x.shape[1:3]
    return sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + height, j:j + width, :], kernel[i, j])
               for i in range(kh) for j in range(kw))


def test_a_folded_conv_computes_what_conv_then_batchnorm_computed():
    """c1 (no bias) -> b1 of the committed mixed.keras, with the statistics it was saved with."""
    stored = _stored("mixed")
    kernel, bn = stored["c1/kernel"], _bn(stored, "b1")
    assert "c1/bias" not in stored
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3))
    conv = _conv2d_same(x, kernel.astype(np.float64))
    expected = bn.gamma * (conv - bn.mean) / np.sqrt(bn.variance.astype(np.float64) + bn.epsilon) + bn.beta
    s, t = scale_and_shift(bn)
    new_kernel = folded_kernel(conv_class("Conv2D"), kernel, s)
    new_bias = folded_bias(None, s, t, np.dtype("float32"))
    assert new_kernel.dtype == new_bias.dtype == np.float32 and new_kernel.shape == kernel.shape
    got = _conv2d_same(x, new_kernel.astype(np.float64)) + new_bias
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 1  # not trivially small


def test_scale_and_shift_without_scale_or_center():
    stored = _stored("mixed")
    b2, b3 = _bn(stored, "b2"), _bn(stored, "b3")  # scale=False: no gamma; center=False: no beta
    assert b2.gamma is None and b3.beta is None
    s, t = scale_and_shift(b2)
    np.testing.assert_array_equal(s, 1 / np.sqrt(b2.variance.astype(np.float64) + 1e-3))
    np.testing.assert_array_equal(t, b2.beta.astype(np.float64) - b2.mean.astype(np.float64) * s)
    s, t = scale_and_shift(b3)
    np.testing.assert_array_equal(t, -b3.mean.astype(np.float64) * s)


def test_which_axis_of_each_kernel_is_an_output_channel():
    """Keras's BN after each conv of mixed.keras has as many channels as output_channels
    counts in its (scaled) kernel; each output channel is scaled by its own factor."""
    stored = _stored("mixed")
    cases = {"c1": ("Conv2D", "kernel", "b1"), "dw": ("DepthwiseConv2D", "kernel", "b3"),
             "sep": ("SeparableConv2D", "pointwise_kernel", "b4"), "tr": ("Conv2DTranspose", "kernel", "b5")}
    for conv, (cls_name, variable, bn) in cases.items():
        cls = conv_class(cls_name)
        kernel = stored[f"{conv}/{variable}"]
        channels = stored[f"{bn}/moving_variance"].size
        assert output_channels(cls.kind, kernel.shape) == channels, conv
        s = np.arange(1, channels + 1, dtype=np.float64)  # channel c scaled by c + 1
        scaled = folded_kernel(cls, kernel, s)
        for c in range(channels):
            if cls.kind == "transpose":  # kernel (kh, kw, filters, in)
                pick = (..., c, slice(None))
            elif cls.kind == "depthwise":  # (kh, kw, in, multiplier): channel c = i * multiplier + m
                pick = (..., c // kernel.shape[-1], c % kernel.shape[-1])
            else:
                pick = (..., c)
            np.testing.assert_allclose(scaled[pick], kernel[pick] * (c + 1), rtol=1e-6, err_msg=f"{conv} {c}")


def test_a_float16_kernel_is_scaled_in_float32_and_stays_float16():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 4)).astype(np.float16)
    s = np.array([0.1, 3.0, 7.7, 1e-3])
    scaled = folded_kernel(conv_class("Conv2D"), kernel, s)
    assert scaled.dtype == np.float16
    np.testing.assert_array_equal(scaled, (kernel.astype(np.float32) * s.astype(np.float32)).astype(np.float16))


def test_folded_bias():
    s, t = np.array([2.0, 0.5]), np.array([1.0, -1.0])
    assert folded_bias(None, s, t, np.dtype("float32")).tolist() == [1.0, -1.0]
    bias = folded_bias(np.array([3.0, 4.0], np.float32), s, t, np.dtype("float16"))
    assert bias.dtype == np.float16 and bias.tolist() == [7.0, 1.0]


@pytest.mark.parametrize("change, problem", [
    ({}, None),
    ({"variance": [np.nan, 1.0, np.inf, 1.0]}, "its moving variance has 2 non-finite values"),
    ({"variance": [1.0, -1e-3, -2.0, 0.0]}, "its moving variance has 2 values at or below -epsilon"),
    ({"gamma": [1.0, np.inf, 1.0, 1.0]}, "its gamma has non-finite values"),
    ({"beta": [np.nan, 0.0, 0.0, 0.0]}, "its beta has non-finite values"),
    ({"mean": [0.0, 0.0, 0.0, -np.inf]}, "its moving mean has non-finite values"),
])
def test_statistics_that_cannot_be_folded(change, problem):
    values = {"gamma": [1.0] * 4, "beta": [0.0] * 4, "mean": [0.5] * 4, "variance": [1.0] * 4} | change
    bn = BatchNormValues(**{k: np.array(v, np.float32) for k, v in values.items()}, epsilon=1e-3)
    assert variance_problem(bn) == problem


def test_identity_values_make_the_batchnorm_the_identity():
    stored = _stored("mixed")
    for name in ("b1", "b2", "b3"):
        bn = _bn(stored, name)
        identity = identity_values(bn)
        assert (identity.gamma is None) == (bn.gamma is None) and (identity.beta is None) == (bn.beta is None)
        assert identity.variance.dtype == bn.variance.dtype
        s, t = scale_and_shift(identity)
        np.testing.assert_allclose(s, 1.0, rtol=1e-7)  # float32(1 - eps) + eps
        assert not t.any()
