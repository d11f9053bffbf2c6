"""Cross-layer equalization's own logic, without Keras: which layers pair up (from configs
written the way Keras writes them), the scales, the new values and bias absorption, each
checked against a numpy forward pass of the same layers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conv_surgeon.surgery.equalization import (CONVERGED, absorbed_amount, absorbed_bias, border_shift_ratio,
                                               find_edges, scaled_bias, scaled_kernel, solve_scales,
                                               without_relu6)


def _layer(class_name: str, name: str, **config: Any) -> dict[str, Any]:
    return {"class_name": class_name, "config": {"name": name, **config}}


def _sequential(*layers: dict[str, Any]) -> dict[str, Any]:
    return {"class_name": "Sequential", "config": {"name": "seq", "layers": [
        _layer("InputLayer", "input", batch_shape=[None, 8, 8, 4]), *layers]}}


def _ref(name: str) -> dict[str, Any]:
    return {"class_name": "__keras_tensor__", "config": {"shape": [None], "dtype": "float32",
                                                          "keras_history": [name, 0, 0]}}


def _functional(layers: list[tuple[dict[str, Any], list[str]]], outputs: list[str]) -> dict[str, Any]:
    """A Keras 3 Functional config: each layer with the layers whose outputs it takes."""
    entries = [_layer("InputLayer", "input", batch_shape=[None, 8, 8, 4]) | {"inbound_nodes": []}]
    for entry, inputs in layers:
        args = [_ref(n) for n in inputs]
        entries.append(entry | {"inbound_nodes": [{"args": [args if len(args) > 1 else args[0]], "kwargs": {}}]})
    return {"class_name": "Functional", "config": {
        "name": "model", "layers": entries, "input_layers": [["input", 0, 0]],
        "output_layers": [[n, 0, 0] for n in outputs]}}


def conv(name: str, filters: int = 8, **config: Any) -> dict[str, Any]:
    return _layer("Conv2D", name, filters=filters, kernel_size=[1, 1], padding="valid", **config)


def test_a_chain_pairs_through_activations_padding_and_pooling() -> None:
    search = find_edges(_sequential(
        conv("a", activation="relu"), _layer("ZeroPadding2D", "pad", padding=[[1, 1], [1, 1]]),
        _layer("Conv2D", "b", filters=8, kernel_size=[3, 3], padding="valid"), _layer("PReLU", "prelu"),
        _layer("MaxPooling2D", "pool"), _layer("DepthwiseConv2D", "d", kernel_size=[3, 3], padding="same"),
        _layer("LeakyReLU", "leaky"), _layer("Dropout", "drop", rate=0.5), conv("c"),
        _layer("GlobalAveragePooling2D", "gap"), _layer("Dense", "dense", units=3)))
    assert [(e.first_path, e.second_path, e.path, e.padded) for e in search.edges] == [
        ("a", "b", "relu", True), ("b", "d", "leaky", True), ("d", "c", "leaky", False),
        ("c", "dense", "linear", False)]
    assert [(s.layer, s.reason) for s in search.stops] == [("dense", "its output is an output of the model")]


@pytest.mark.parametrize("between, reason", [
    (_layer("ReLU", "r6", max_value=6.0), "'r6' (ReLU) is a ReLU6 (max_value=6), bounded: a positive scale does "
                                          "not commute with it; --relu6-to-relu replaces it by ReLU"),
    (_layer("Activation", "sig", activation="sigmoid"), "'sig' (Activation) applies sigmoid, which is not "
                                                        "positively homogeneous"),
    (_layer("ReLU", "r1", max_value=1.0), "'r1' (ReLU) is bounded (max_value=1.0): a positive scale does not "
                                          "commute with it"),
    (_layer("Flatten", "flat"), "'flat' (Flatten) does not commute with a per-channel scale (equalize passes "
                                "only activations, zero padding and pooling)"),
    (_layer("BatchNormalization", "bn"), "'bn' (BatchNormalization) is a BatchNormalization left unfolded"),
])
def test_a_layer_that_would_change_the_function_stops_the_pair_with_its_reason(between, reason) -> None:
    search = find_edges(_sequential(conv("a"), between, conv("b")))
    assert search.edges == ()
    assert (search.stops[0].layer, search.stops[0].reason) == ("a", reason)


def test_a_conv_with_its_own_bounded_activation_is_named() -> None:
    search = find_edges(_sequential(conv("a", activation="relu6"), conv("b")))
    assert search.stops[0].reason == ("it applies ReLU6, bounded at 6: a positive scale does not commute with "
                                      "it; --relu6-to-relu replaces it by ReLU")


def test_residual_junctions_branches_and_shared_layers_stop_pairs() -> None:
    config = _functional([
        (conv("a"), ["input"]), (conv("b"), ["a"]), (conv("c"), ["a"]),
        (_layer("Add", "add"), ["b", "c"]), (conv("d"), ["add"]),
    ], ["d"])
    stops = {s.layer: s.reason for s in find_edges(config).stops}
    assert stops["a"] == "its output feeds 2 layers: one scale would have to hold for each"
    assert stops["b"] == "'add' (Add) is a residual junction: one scale would have to hold for every branch it joins"
    shared = _functional([(conv("a"), ["input"]), (conv("s"), ["a"])], ["s"])
    shared["config"]["layers"][2]["inbound_nodes"].append({"args": [_ref("input")], "kwargs": {}})
    assert {s.layer: s.reason for s in find_edges(shared).stops}["a"] == "'s' is called 2 times (a shared layer)"


def test_a_dense_takes_channels_only_where_they_are_its_last_axis() -> None:
    channels_first = dict(data_format="channels_first")
    search = find_edges(_sequential(conv("a", **channels_first), _layer("Dense", "dense", units=3)))
    assert search.stops[0].reason == "'dense' (Dense) acts on the last axis, not on the channels (channels_first)"
    pooled = find_edges(_sequential(conv("a", **channels_first), _layer("GlobalAveragePooling2D", "gap", **channels_first),
                                    _layer("Dense", "dense", units=3)))
    assert [(e.first_path, e.second_path) for e in pooled.edges] == [("a", "dense")]
    grouped = find_edges(_sequential(conv("a"), conv("g", groups=2)))
    assert grouped.stops[0].reason == ("'g' is a grouped convolution (groups=2): its input channels do not reach "
                                       "every filter")


# --- the scales, checked on a numpy forward pass ----------------------------------------------


def _conv1x1(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return x @ kernel.reshape(kernel.shape[-2], kernel.shape[-1]) + bias


def _depthwise1x1(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return x * kernel.reshape(-1) + bias


def _chain(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """a (1x1 conv) -> ReLU -> d (depthwise) -> ReLU -> c (1x1 conv) -> ReLU -> e, with
    channel scales spread over orders of magnitude, as folded BatchNormalizations leave them."""
    config = _sequential(conv("a", 6, activation="relu"), _layer("DepthwiseConv2D", "d", kernel_size=[1, 1]),
                         _layer("ReLU", "r"), conv("c", 5, activation="relu"), conv("e", 3))
    spread = lambda n: np.exp(rng.uniform(-4, 4, n))  # noqa: E731
    kernels = {"a": rng.normal(size=(1, 1, 4, 6)) * spread(6), "d": rng.normal(size=(1, 1, 6, 1)) * spread(6)[:, None],
               "c": rng.normal(size=(1, 1, 6, 5)) * spread(5), "e": rng.normal(size=(1, 1, 5, 3))}
    biases = {name: rng.normal(size=k.shape[-1] if name != "d" else 6) for name, k in kernels.items()}
    return config, kernels, biases


def _forward(x: np.ndarray, kernels: dict[str, np.ndarray], biases: dict[str, np.ndarray]) -> np.ndarray:
    h = np.maximum(_conv1x1(x, kernels["a"], biases["a"]), 0)
    h = np.maximum(_depthwise1x1(h, kernels["d"], biases["d"]), 0)
    h = np.maximum(_conv1x1(h, kernels["c"], biases["c"]), 0)
    return _conv1x1(h, kernels["e"], biases["e"])


def _equalized(config, kernels, biases):
    edges = find_edges(config).edges
    scales = solve_scales(edges, kernels)
    scale_in = {e.second_path: s for e, s in zip(edges, scales.edges)}
    scale_out = {e.first_path: s for e, s in zip(edges, scales.edges)}
    kinds = {e.first_path: e.first_kind for e in edges} | {e.second_path: e.second_kind for e in edges}
    new_k = {p: scaled_kernel(kinds[p], k, scale_in.get(p), scale_out.get(p)) for p, k in kernels.items()}
    new_b = {p: scaled_bias(b, scale_out[p]) if p in scale_out else b for p, b in biases.items()}
    return edges, scales, new_k, new_b


def test_equalizing_a_chain_keeps_its_function_and_meets_every_range() -> None:
    rng = np.random.default_rng(0)
    config, kernels, biases = _chain(rng)
    edges, scales, new_k, new_b = _equalized(config, kernels, biases)
    assert [g.layers for g in scales.groups] == [("a", "d", "c"), ("c", "e")]
    assert scales.converged and scales.sweeps > 2  # a chain: the groups share c
    x = rng.normal(size=(64, 4))
    np.testing.assert_allclose(_forward(x, new_k, new_b), _forward(x, kernels, biases), rtol=1e-9, atol=1e-9)
    a_out = np.abs(new_k["a"]).max(axis=(0, 1, 2))
    d = np.abs(new_k["d"]).reshape(-1)
    c_in, c_out = np.abs(new_k["c"]).max(axis=(0, 1, 3)), np.abs(new_k["c"]).max(axis=(0, 1, 2))
    e_in = np.abs(new_k["e"]).max(axis=(0, 1, 3))
    # The three-layer rule leaves a, d and c's input at one range per channel; the pair, c's
    # output and e's input: both at the converged fixed point.
    np.testing.assert_allclose(a_out, d, rtol=10 * CONVERGED)
    np.testing.assert_allclose(d, c_in, rtol=10 * CONVERGED)
    np.testing.assert_allclose(c_out, e_in, rtol=10 * CONVERGED)
    before = np.abs(kernels["d"]).reshape(-1)
    assert d.max() / d.min() < before.max() / before.min() / 3  # 60x -> 15x


def test_a_channel_with_zero_range_is_left_as_it_was() -> None:
    rng = np.random.default_rng(1)
    config = _sequential(conv("a", 4, activation="relu"), conv("b", 3))
    kernels = {"a": rng.normal(size=(1, 1, 4, 4)), "b": rng.normal(size=(1, 1, 4, 3))}
    kernels["a"][..., 2] = 0.0
    scales = solve_scales(find_edges(config).edges, kernels)
    assert scales.zero_channels == {0: 1}
    assert scales.edges[0][2] == 1.0 and np.all(np.isfinite(scales.edges[0]))


def test_bias_absorption_on_a_linear_path_keeps_the_function_exactly() -> None:
    """c = beta on a linear path: a's bias loses it, b's bias gains b's kernel times it."""
    rng = np.random.default_rng(2)
    config = _sequential(conv("a", 5), conv("b", 3))
    kernels = {"a": rng.normal(size=(1, 1, 4, 5)), "b": rng.normal(size=(1, 1, 5, 3))}
    biases = {"a": rng.normal(size=5) + 3.0, "b": rng.normal(size=3)}
    edges, scales, new_k, new_b = _equalized(config, kernels, biases)
    beta = rng.normal(size=5) + 3.0
    c = absorbed_amount("linear", beta, np.ones(5), scales.edges[0])
    np.testing.assert_allclose(c, beta / scales.edges[0])
    absorbed = {"a": new_b["a"] - c, "b": absorbed_bias("conv", new_b["b"], new_k["b"], c)}
    x = rng.normal(size=(16, 4))
    expected = _conv1x1(_conv1x1(x, kernels["a"], biases["a"]), kernels["b"], biases["b"])
    got = _conv1x1(_conv1x1(x, new_k["a"], absorbed["a"]), new_k["b"], absorbed["b"])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_bias_absorption_after_a_relu_takes_only_what_stays_positive() -> None:
    beta, gamma, s = np.array([4.0, 1.0, 5.0]), np.array([1.0, 1.0, -1.0]), np.array([1.0, 2.0, 0.5])
    np.testing.assert_allclose(absorbed_amount("relu", beta, gamma, s), [1.0, 0.0, 4.0])
    depthwise = np.arange(2 * 2 * 3 * 2, dtype=np.float64).reshape(2, 2, 3, 2)
    got = absorbed_bias("depthwise", np.zeros(6), depthwise, np.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(got, (depthwise.sum(axis=(0, 1)) * np.array([1.0, 0.0, 2.0])[:, None]).reshape(-1))


def test_relu6_to_relu_rewrites_layers_and_activations_and_names_them() -> None:
    config = _sequential(conv("a", activation="relu6"), _layer("ReLU", "r6", max_value=6.0),
                         _layer("ReLU", "r2", max_value=2.0), _layer("Activation", "act", activation="relu6"))
    new, changed = without_relu6(config)
    layers = {entry["config"]["name"]: entry["config"] for entry in new["config"]["layers"]}
    assert changed == ["a", "r6", "act"]
    assert layers["a"]["activation"] == "relu" and layers["act"]["activation"] == "relu"
    assert layers["r6"]["max_value"] is None and layers["r2"]["max_value"] == 2.0
    assert config["config"]["layers"][2]["config"]["max_value"] == 6.0  # the original untouched


def test_the_border_shift_of_an_absorbed_channel_is_measured_against_the_outputs_size() -> None:
    """At the border a zero stands where c_i was: an output moves by up to the window's
    summed |W| times c_i; over the output's typical size (its BN's |gamma|)."""
    kernel = np.zeros((3, 3, 2, 1))
    kernel[..., 0, 0] = 0.5  # channel 0: summed |W| 4.5
    kernel[..., 1, 0] = -2.0  # channel 1: 18
    ratio = border_shift_ratio("depthwise", kernel, np.array([1.0, 0.5]), np.array([3.0, 0.1]))
    np.testing.assert_allclose(ratio, [1.5, 90.0])
    # On a linear path c is beta, of either sign: a negative one moves the border as far.
    np.testing.assert_allclose(border_shift_ratio("depthwise", kernel, np.array([-1.0, -0.5]), np.array([3.0, 0.1])),
                               [1.5, 90.0])
    dense_like = np.ones((3, 2, 4))  # Conv1D: (taps, in, out)
    np.testing.assert_allclose(border_shift_ratio("conv", dense_like, np.array([2.0, 0.0]), np.array([1, 2, 3, 6.0])),
                               [6.0, 0.0])
