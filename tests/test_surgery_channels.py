"""prune's channel walk (conv_surgeon.surgery.channels) on committed configs of real Keras
saves, without Keras: which convolutions form one group of channels, and every variable
axis the group's channels run along.

The expected groups are derived here from each architecture as its paper and Keras's
code build it (ResNet50's stages of 3, 4, 6, 3 blocks joined by Adds, DenseNet121's
concatenations growing by 32 channels a layer, ...), by layer name; for the Flatten
layouts, from Keras itself (make_configs.py recorded which input channel each flattened
feature comes from).
"""

from __future__ import annotations

import functools

import pytest

from conv_surgeon.model.graph import TensorRef
from conv_surgeon.surgery.channels import ChannelGroup, Flat, Span, find_groups

from configs import config as _config, facts as _facts

BN = ("gamma", "beta", "moving_mean", "moving_variance")

# A slice as compared here: (layer, variable, axis, span offset, span width).
Piece = tuple[str, str, int, int, int]


@functools.cache
def _groups(name: str) -> tuple[ChannelGroup, ...]:
    """find_groups of a committed config, once per session (DenseNet121's takes a while)."""
    return tuple(find_groups(_config(name)))


def _pieces(group: ChannelGroup) -> set[Piece]:
    assert all(piece.span.flat is None for piece in group.slices)
    return {(p.layer, p.variable, p.axis, p.span.offset, p.span.width) for p in group.slices}


def _by_members(name: str) -> dict[frozenset[str], ChannelGroup]:
    groups = _groups(name)
    found = {frozenset(group.members): group for group in groups}
    assert len(found) == len(groups)  # no conv is in two groups
    return found


def _bn(layer: str, offset: int = 0, width: int = 1) -> set[Piece]:
    return {(layer, variable, -1, offset, width) for variable in BN}


def _filters(conv: str, bias: bool) -> set[Piece]:
    return {(conv, "kernel", -1, 0, 1)} | ({(conv, "bias", -1, 0, 1)} if bias else set())


def _inputs(conv: str, offset: int = 0, width: int = 1) -> set[Piece]:
    return {(conv, "kernel", -2, offset, width)}


# --- applications ------------------------------------------------------------------------------


def test_resnet50_groups_are_its_stages_joined_by_adds():
    blocks = {2: 3, 3: 4, 4: 6, 5: 3}
    expected: dict[frozenset[str], tuple[int, set[Piece]]] = {}

    def own(conv: str) -> set[Piece]:
        return _filters(conv, bias=True) | _bn(conv.replace("_conv", "_bn"))

    expected[frozenset({"conv1_conv"})] = (64, own("conv1_conv") | _inputs("conv2_block1_0_conv")
                                           | _inputs("conv2_block1_1_conv"))
    for stage, count in blocks.items():
        width = 64 * 2 ** (stage - 2)
        for b in range(1, count + 1):
            p = f"conv{stage}_block{b}"
            expected[frozenset({f"{p}_1_conv"})] = (width, own(f"{p}_1_conv") | _inputs(f"{p}_2_conv"))
            expected[frozenset({f"{p}_2_conv"})] = (width, own(f"{p}_2_conv") | _inputs(f"{p}_3_conv"))
        # The shortcut conv and every block's last conv feed the stage's Adds: one group.
        members = [f"conv{stage}_block1_0_conv", *(f"conv{stage}_block{b}_3_conv" for b in range(1, count + 1))]
        pieces = set().union(*(own(m) for m in members))
        pieces |= set().union(*(_inputs(f"conv{stage}_block{b}_1_conv") for b in range(2, count + 1)))
        if stage < 5:
            pieces |= _inputs(f"conv{stage + 1}_block1_0_conv") | _inputs(f"conv{stage + 1}_block1_1_conv")
        else:  # -> avg_pool (GlobalAveragePooling2D) -> predictions: the Dense kernel's rows
            pieces |= {("predictions", "kernel", 0, 0, 1)}
        expected[frozenset(members)] = (4 * width, pieces)
    groups = _by_members("resnet50")
    assert len(groups) == 1 + 16 * 2 + 4 == 37
    assert {m: (g.channels, _pieces(g)) for m, g in groups.items()} == expected
    assert all(group.prunable for group in groups.values())
    # The channels run along every Add and block output of their stage.
    stage4 = next(group for members, group in groups.items() if "conv4_block1_0_conv" in members)
    on = {t.ref.layer for t in stage4.tensors}
    assert {f"conv4_block{b}_{what}" for b in range(1, 7) for what in ("add", "out")} <= on
    assert all(t.axis == -1 and t.span == Span() for t in stage4.tensors)


def test_mobilenetv2_groups_follow_the_residual_stages_through_the_depthwise_convs():
    residual = [(1, 2), (3, 4, 5), (6, 7, 8, 9), (10, 11, 12), (13, 14, 15), (16,)]
    widths = [24, 32, 64, 96, 160, 320]
    expected: dict[frozenset[str], tuple[int, set[Piece]]] = {}

    def through_depthwise(block: str) -> set[Piece]:  # -> depthwise (no bias) -> its BN -> project
        return _inputs(f"{block}_depthwise") | _bn(f"{block}_depthwise_BN") | _inputs(f"{block}_project")

    expected[frozenset({"Conv1"})] = (32, _filters("Conv1", bias=False) | _bn("bn_Conv1") | _inputs(
        "expanded_conv_depthwise") | _bn("expanded_conv_depthwise_BN") | _inputs("expanded_conv_project"))
    expected[frozenset({"expanded_conv_project"})] = (16, _filters("expanded_conv_project", bias=False)
                                                      | _bn("expanded_conv_project_BN") | _inputs("block_1_expand"))
    channels_in = 16
    for blocks, width in zip(residual, widths):
        for n in blocks:
            block = f"block_{n}"
            expected[frozenset({f"{block}_expand"})] = (6 * channels_in, _filters(f"{block}_expand", bias=False)
                                                        | _bn(f"{block}_expand_BN") | through_depthwise(block))
            channels_in = width
        members = [f"block_{n}_project" for n in blocks]
        pieces = set().union(*(_filters(m, bias=False) | _bn(f"{m}_BN") for m in members))
        pieces |= set().union(*(_inputs(f"block_{n + 1}_expand") for n in blocks if n < 16))
        expected[frozenset(members)] = (width, pieces | (_inputs("Conv_1") if blocks == (16,) else set()))
    expected[frozenset({"Conv_1"})] = (1280, _filters("Conv_1", bias=False) | _bn("Conv_1_bn")
                                       | {("predictions", "kernel", 0, 0, 1)})
    groups = _by_members("mobilenetv2")
    assert len(groups) == 25
    assert {m: (g.channels, _pieces(g)) for m, g in groups.items()} == expected
    assert all(group.prunable for group in groups.values())


def _densenet121_expected() -> dict[frozenset[str], tuple[int, set[Piece]]]:
    """Each dense block j concatenates 32 new channels per layer onto its input (64, 128,
    256, 512 channels); every later layer's first BN and 1x1 conv read them, then the
    transition (pool{j}_bn, pool{j}_conv) or, after the last block, bn and predictions."""
    layers = {2: 6, 3: 12, 4: 24, 5: 16}
    base = {2: 64, 3: 128, 4: 256, 5: 512}

    def reach(block: int, offset: int, first: int) -> set[Piece]:
        found: set[Piece] = set()
        for k in range(first, layers[block] + 1):
            found |= _bn(f"conv{block}_block{k}_0_bn", offset) | _inputs(f"conv{block}_block{k}_1_conv", offset)
        if block < 5:
            return found | _bn(f"pool{block}_bn", offset) | _inputs(f"pool{block}_conv", offset)
        return found | _bn("bn", offset) | {("predictions", "kernel", 0, offset, 1)}

    expected = {frozenset({"conv1_conv"}): (64, _filters("conv1_conv", bias=False) | _bn("conv1_bn") | reach(2, 0, 1))}
    for block in (2, 3, 4):
        expected[frozenset({f"pool{block}_conv"})] = (base[block + 1], _filters(f"pool{block}_conv", bias=False)
                                                      | reach(block + 1, 0, 1))
    for block, count in layers.items():
        for k in range(1, count + 1):
            p = f"conv{block}_block{k}"
            expected[frozenset({f"{p}_1_conv"})] = (128, _filters(f"{p}_1_conv", bias=False) | _bn(f"{p}_1_bn")
                                                    | _inputs(f"{p}_2_conv"))
            expected[frozenset({f"{p}_2_conv"})] = (32, _filters(f"{p}_2_conv", bias=False)
                                                    | reach(block, base[block] + 32 * (k - 1), k + 1))
    return expected


def test_densenet121_groups_sit_side_by_side_in_the_concatenations():
    groups = _by_members("densenet121")
    assert len(groups) == 1 + 3 + 2 * 58 == 120  # every conv its own group: no Add anywhere
    assert {m: (g.channels, _pieces(g)) for m, g in groups.items()} == _densenet121_expected()
    assert all(group.prunable for group in groups.values())
    # The 5th layer of block 3 adds its 32 channels at 128 + 4 * 32 in every later concatenation.
    group = groups[frozenset({"conv3_block5_2_conv"})]
    concatenations = {t.ref.layer: t.span for t in group.tensors if t.ref.layer.endswith("_concat")}
    assert concatenations == {f"conv3_block{k}_concat": Span(256) for k in range(5, 13)}


def test_xception_residual_groups():
    groups = _by_members("xception")
    joined = {m: g.channels for m, g in groups.items() if len(m) > 1}
    middle = frozenset({"block4_sepconv2", "conv2d_2", *(f"block{b}_sepconv3" for b in range(5, 13))})
    assert joined == {frozenset({"block2_sepconv2", "conv2d"}): 128, frozenset({"block3_sepconv2", "conv2d_1"}): 256,
                      middle: 728, frozenset({"block13_sepconv2", "conv2d_3"}): 1024}
    assert len(groups) == 28 and all(group.prunable for group in groups.values())
    # The middle flow: eight blocks add their output to their input; every block's first
    # separable conv reads the channels (its depthwise kernel, then its pointwise kernel).
    convs = {(p[0], p[1], p[2]) for p in _pieces(groups[middle]) if p[1] != "bias" and "kernel" in p[1]}
    members = {("block4_sepconv2", "pointwise_kernel", -1), ("conv2d_2", "kernel", -1)}
    members |= {(f"block{b}_sepconv3", "pointwise_kernel", -1) for b in range(5, 13)}
    readers = {(f"block{b}_sepconv1", kernel, -2) for b in range(5, 14) for kernel in ("depthwise_kernel", "pointwise_kernel")}
    assert convs == members | readers | {("conv2d_3", "kernel", -2)}
    assert len({p[0] for p in _pieces(groups[middle]) if p[1] == "moving_variance"}) == 10  # each member's BN


def test_efficientnetb0_squeeze_and_excite_ties_the_expansion_to_the_excitation():
    groups = _by_members("efficientnetb0")
    blocks = ["1a", "2a", "2b", "3a", "3b", "4a", "4b", "4c", "5a", "5b", "5c", "6a", "6b", "6c", "6d", "7a"]
    # The expanded channels are multiplied by the SE's excitation: its last conv is in the group.
    se = {frozenset({"stem_conv" if b == "1a" else f"block{b}_expand_conv", f"block{b}_se_expand"}): b for b in blocks}
    residual = [("2a", "2b"), ("3a", "3b"), ("4a", "4b", "4c"), ("5a", "5b", "5c"), ("6a", "6b", "6c", "6d")]
    joined = {frozenset(f"block{b}_project_conv" for b in stage) for stage in residual}
    assert {m for m in groups if len(m) > 1} == set(se) | joined
    assert len(groups) == 40 and all(group.prunable for group in groups.values())
    for members, block in se.items():
        group = groups[members]
        assert group.reshapes == ((f"block{block}_se_reshape", 2, Span()),)  # target (1, 1, C)
    expected = _filters("block2a_expand_conv", bias=False) | _bn("block2a_expand_bn") | _inputs("block2a_dwconv")
    expected |= _bn("block2a_bn") | _inputs("block2a_se_reduce") | _filters("block2a_se_expand", bias=True)
    expected |= _inputs("block2a_project_conv")
    assert _pieces(groups[frozenset({"block2a_expand_conv", "block2a_se_expand"})]) == expected


# --- hand-built cases ----------------------------------------------------------------------------


def test_add_multiply_and_concatenate_junctions():
    groups = _by_members("junctions")
    assert set(groups) == {frozenset(m) for m in ({"stem"}, {"a", "b", "m"}, {"c"}, {"sep", "se"}, {"tr"})}
    assert all(group.prunable for group in groups.values())
    assert _pieces(groups[frozenset({"stem"})]) == _filters("stem", True) | _bn("stem_bn") | set().union(
        *(_inputs(conv) for conv in "abmc"))
    # a + b, times m: one group; then the first 8 channels of cat (8 + 4), through the
    # depthwise conv (multiplier 2: channel g is outputs 2g, 2g + 1) into the separable conv.
    tail = _bn("cat_bn") | _inputs("dw") | {("dw", "bias", -1, 0, 2), ("sep", "depthwise_kernel", -2, 0, 2),
                                           ("sep", "pointwise_kernel", -2, 0, 2)}
    assert _pieces(groups[frozenset("abm")]) == _filters("a", True) | _filters("b", True) | _filters("m", True) | tail
    assert groups[frozenset("abm")].channels == 8 and groups[frozenset({"c"})].channels == 4
    # c's channels come after those 8 in cat: offset 8, and 16 after the depthwise conv.
    tail = _bn("cat_bn", 8) | _inputs("dw", 8) | {("dw", "bias", -1, 16, 2), ("sep", "depthwise_kernel", -2, 16, 2),
                                                 ("sep", "pointwise_kernel", -2, 16, 2)}
    assert _pieces(groups[frozenset({"c"})]) == _filters("c", True) | tail
    # The transposed conv's filters are its kernel's second to last axis.
    tr = groups[frozenset({"tr"})]
    assert {p for p in tr.slices if p.layer == "tr"} == {
        p for p in tr.slices if (p.variable, p.axis) in (("kernel", -2), ("bias", -1))}
    dense = {p.layer: p for p in tr.slices if p.class_name == "Dense"}
    assert dense["dense_gap"].span == Span() and dense["dense_gap"].axis == 0
    assert dense["dense_flat"].span == Span(0, 1, Flat(positions=64, channels=5, channels_last=True))


def test_a_conv_that_reads_and_joins_the_same_group():
    group = _by_members("junctions")[frozenset({"sep", "se"})]
    assert group.channels == 6 and group.reshapes == (("se_reshape", 2, Span()),)
    # sep's filters (its pointwise kernel's last axis), se's filters and its inputs, and tr
    # (a transposed conv reads its kernel's last axis).
    assert _pieces(group) == {("sep", "pointwise_kernel", -1, 0, 1), ("sep", "bias", -1, 0, 1)} | _filters(
        "se", True) | _inputs("se") | {("tr", "kernel", -1, 0, 1)}


@pytest.mark.parametrize("name, flatten, layer, channels", [
    ("junctions", "flat", "dense_flat", [1, 3]),  # channels_last: feature s * 5 + c
    ("channels_first_flat", "flat", "d", [0, 2]),  # a channels_first tensor flattened as it is: c * 64 + s
    ("channels_first_flat", "flat_cf", "d_cf", [3]),  # Flatten(data_format="channels_first"): channels last first
])
def test_a_flatten_spreads_each_channel_over_every_position_as_keras_lays_it_out(name, flatten, layer, channels):
    group = next(g for g in _groups(name) if any(p.layer == layer for p in g.slices))
    [piece] = [p for p in group.slices if p.layer == layer]
    assert (piece.variable, piece.axis) == ("kernel", 0)
    layout = _facts(name)["flatten"][flatten]  # Keras: the input channel of each flattened feature
    assert piece.span.indices(channels) == [f for f, c in enumerate(layout) if c in channels]
    assert len(piece.span.indices(channels)) == len(channels) * 64


def test_channels_first_add():
    groups = _by_members("channels_first_flat")
    assert _pieces(groups[frozenset({"c1"})]) == _filters("c1", True) | _bn("bn1") | _inputs("a") | _inputs("b")
    assert _pieces(groups[frozenset("ab")]) == _filters("a", True) | _filters("b", True) | _inputs("c2")
    assert {(t.ref.layer, t.axis) for t in groups[frozenset("ab")].tensors} == {
        ("a", 1), ("b", 1), ("add", 1), ("relu", 1)}  # the channel axis of (N, C, H, W)


def test_channels_enter_and_leave_nested_models():
    groups = _by_members("nested_prune")
    assert set(groups) == {frozenset({m}) for m in ("c1", "c2", "inner/iconv", "inner/iout", "seq/sconv")}
    # Into the nested model through its input; its BN there is sliced with the outer conv.
    c1 = groups[frozenset({"c1"})]
    assert _pieces(c1) == _filters("c1", True) | _bn("inner/ibn") | _inputs("inner/iconv")
    assert ("inner", TensorRef("inner_in")) in {(t.graph, t.ref) for t in c1.tensors}
    # Through the depthwise conv (multiplier 2) inside.
    assert _pieces(groups[frozenset({"inner/iconv"})]) == _filters("inner/iconv", True) | _inputs("inner/idw") | {
        ("inner/idw", "bias", -1, 0, 2), ("inner/iout", "kernel", -2, 0, 2)}
    # Out of the nested model through its output, and into a nested Sequential.
    assert _pieces(groups[frozenset({"inner/iout"})]) == _filters("inner/iout", True) | _inputs("c2")
    assert _pieces(groups[frozenset({"c2"})]) == _filters("c2", True) | _inputs("seq/sconv")
    assert _pieces(groups[frozenset({"seq/sconv"})]) == _filters("seq/sconv", True) | {("d", "kernel", 0, 0, 1)}
    assert all(group.prunable for group in groups.values())


def test_what_prune_cannot_follow_is_a_reason():
    problems = {group.members[0]: group.problems for group in _groups("prune_refusals")}
    assert problems["body"] == ()
    assert problems["feeds_grouped"][0] == \
        "'grouped' is a grouped conv (groups=2): removing some of its input channels would split its groups"
    assert problems["grouped"][0] == "'grouped' is a grouped conv (groups=2): removing its filters would unbalance its groups"
    assert problems["feeds_reshape"][0] == "'reshape' (Reshape) is on the path of the channels and prune cannot follow it"
    assert problems["feeds_lambda"][0] == "'lam' (Lambda) is on the path of the channels and prune cannot follow it"
    assert problems["last"] == ("the channels reach the model's output through 'last' (its width is part of the model's contract)",)
    assert problems["head"] == ("the channels reach the model's output through 'head' (its width is part of the model's contract)",)
    assert problems["feeds_shared"] == ("'shared' is called 2 times (a shared layer); pruning it would change every call",)
    assert "'shared' is called 2 times (a shared layer); pruning it would change every call" in problems["shared"]
    # Added to the model's input: tied to it (the input also reaches a shared conv).
    assert "the channels are tied to the model's input 'img'" in problems["tied"]
    assert set(problems) == {"feeds_reshape", "feeds_shared", "feeds_grouped", "feeds_lambda", "tied", "shared",
                             "grouped", "body", "last", "head"}


def test_keras_ops_on_the_path():
    problems = {group.members[0]: group.problems for group in _groups("with_ops")}
    assert problems["c1"] == ("'relu' (Relu) is on the path of the channels and prune cannot follow it",)
    assert problems["c3"] == ("'relu_1' (Relu) is on the path of the channels and prune cannot follow it",)
    # ops.add(x, 0.5): a scalar is added to every channel alike; the channels go on to c3.
    c2 = next(g for g in _groups("with_ops") if g.members == ("c2",))
    assert c2.prunable and _pieces(c2) == _filters("c2", True) | _bn("b2") | _inputs("c3")


def test_an_op_adding_a_constant_per_channel_stops_the_channels():
    c4 = next(g for g in _groups("with_ops") if g.members == ("c4",))
    assert not c4.prunable


def test_only_the_variables_a_batchnorm_has_are_sliced():
    [group] = [g for g in _groups("mixed") if g.members == ("c1", "c2")]
    # b2 has scale=False: beta, moving_mean, moving_variance (Keras's own list, in the facts).
    assert {p.variable for p in group.slices if p.layer == "b2"} == {
        v[0] for v in _facts("mixed")["variables"]["b2"]}


def test_the_group_of_two_convs_that_meet_in_an_add_enters_the_nested_model():
    [group] = [g for g in _groups("mixed") if g.members == ("c1", "c2")]
    assert group.channels == 4 and group.prunable
    layers = {(p.layer, p.variable, p.axis) for p in group.slices if p.class_name != "BatchNormalization"}
    assert layers == {("c1", "kernel", -1), ("c2", "kernel", -1), ("c2", "bias", -1), ("inner/iconv", "kernel", -2)}
    assert {p.layer for p in group.slices if p.class_name == "BatchNormalization"} == {"b1", "b2"}


def test_span_indices():
    assert Span().indices([2, 0]) == [0, 2]
    assert Span(8, 2).indices([1]) == [10, 11]  # offset + g * width + j
    flat = Span(1, 1, Flat(positions=3, channels=4, channels_last=True))
    assert flat.indices([0]) == [1, 5, 9]  # s * channels + c
    flat = Span(1, 1, Flat(positions=3, channels=4, channels_last=False))
    assert flat.indices([0]) == [3, 4, 5]  # c * positions + s
