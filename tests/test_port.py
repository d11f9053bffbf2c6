"""`port`: a PyTorch state dict mapped onto a Keras model, checked against PyTorch itself.

Each net is built twice by hand, once in PyTorch and once in Keras, with random weights
and random BatchNorm statistics; PyTorch's state dict is saved as `torch.save` writes it
and ported with the command line; the ported Keras model must then compute what the
PyTorch module computes (NCHW in torch, NHWC in Keras) to 1e-4 of the output's scale.
Nothing is downloaded. The nets: a VGG-style one with a Flatten -> Linear head (the rows
PyTorch orders C·H·W), a MobileNetV2-style one with depthwise convs and BatchNorm (the
Keras default epsilon refused, then rewritten), a ResNet-style one whose modules PyTorch
lists in another order than Keras lists its layers (the shortcut), and two parallel
branches alike, which structure cannot tell apart (refused, then decided by --map).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from helpers import assert_one_error_line

import conv_surgeon as cs


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


@dataclass(frozen=True)
class Net:
    """A net built in both frameworks: the Keras model (trained a step, so that it holds
    Adam's slots), PyTorch's state dict, and PyTorch's outputs on ``x`` (NCHW); the module
    traced, as TorchScript, for --reference."""

    keras_file: Path
    state: Path
    x: np.ndarray
    y: np.ndarray
    tensors: dict[str, np.ndarray]
    traced: Path | None = None  # the module as TorchScript, where a test needs one


def _randomize(torch, module) -> None:
    """Random weights and random, non-trivial BatchNorm statistics, in eval mode."""
    generator = torch.Generator().manual_seed(1)
    for sub in module.modules():
        if isinstance(sub, torch.nn.BatchNorm2d):
            with torch.no_grad():
                sub.weight.uniform_(0.5, 1.5, generator=generator)
                sub.bias.uniform_(-0.5, 0.5, generator=generator)
                sub.running_mean.uniform_(-0.5, 0.5, generator=generator)
                sub.running_var.uniform_(0.3, 2.0, generator=generator)
    module.eval()


def _save(folder: Path, name: str, torch, module, keras, model, size: int) -> Net:
    """PyTorch's state dict and outputs, and the Keras model compiled with Adam, its slots
    holding values as a training step leaves them (none of them zero)."""
    torch.save(module.state_dict(), folder / f"{name}.pt")
    x = np.random.default_rng(5).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    model.compile(keras.optimizers.Adam(), "mse")
    # The slots built and filled directly: fit's tracing costs seconds a net.
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for variable in model.optimizer.variables:
        variable.assign(rng.integers(1, 100, variable.shape).astype(variable.dtype))
    model.save(folder / f"{name}.keras")
    tensors = {k: v.numpy() for k, v in module.state_dict().items()}
    torch.jit.save(torch.jit.trace(module, torch.from_numpy(x)), folder / f"{name}_traced.pt")
    return Net(folder / f"{name}.keras", folder / f"{name}.pt", x, y, tensors, folder / f"{name}_traced.pt")


# --- the nets ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg(keras, torch, tmp_path_factory) -> Net:
    """Conv-BN-ReLU-pool twice, Flatten, Linear, ReLU, Linear; no Keras name hints at PyTorch's."""
    nn = torch.nn
    torch.manual_seed(0)

    class VGG(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    module = VGG()
    _randomize(torch, module)
    L = keras.layers
    i = keras.Input((16, 16, 3))
    x = i
    for block, filters in ((1, 8), (2, 16)):
        x = L.Conv2D(filters, 3, padding="same", name=f"block{block}_conv")(x)
        x = L.BatchNormalization(epsilon=1e-5, name=f"block{block}_bn")(x)
        x = L.MaxPooling2D(name=f"block{block}_pool")(L.ReLU(name=f"block{block}_relu")(x))
    x = L.Dense(32, activation="relu", name="dense")(L.Flatten(name="flatten")(x))
    model = keras.Model(i, L.Dense(10, name="logits")(x))
    return _save(tmp_path_factory.mktemp("vgg"), "vgg", torch, module, keras, model, 16)


def _mobilenet_torch(torch):
    nn = torch.nn

    def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6())

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            self.residual = stride == 1 and cin == cout
            layers = [conv_bn(cin, hidden, 1)] if expand != 1 else []
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                       nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(conv_bn(3, 16, 3, 2), InvertedResidual(16, 8, 1, 1),
                                          InvertedResidual(8, 12, 2, 6), InvertedResidual(12, 12, 1, 6),
                                          conv_bn(12, 32, 1))
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    return MobileNet()


def _mobilenet_keras(keras):
    """The same net in Keras, its BatchNormalizations with Keras's default epsilon (1e-3);
    a stride-2 conv pads 1 on every side first, as PyTorch's padding=1 does."""
    L = keras.layers

    def conv_bn(x, filters: int | None, kernel: int, stride: int, name: str):
        if stride > 1:
            x = L.ZeroPadding2D(kernel // 2, name=name + "_pad")(x)
        padding = "valid" if stride > 1 else "same"
        if filters is None:
            x = L.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=name)(x)
        else:
            x = L.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=name)(x)
        return L.ReLU(6.0, name=name + "_relu")(L.BatchNormalization(name=name + "_bn")(x))

    def inverted_residual(x, cout: int, stride: int, expand: int, name: str):
        cin = x.shape[-1]
        y = conv_bn(x, cin * expand, 1, 1, name + "_expand") if expand != 1 else x
        y = conv_bn(y, None, 3, stride, name + "_dw")
        y = L.BatchNormalization(name=name + "_project_bn")(L.Conv2D(cout, 1, use_bias=False, name=name + "_project")(y))
        return L.Add(name=name + "_add")([x, y]) if stride == 1 and cin == cout else y

    i = keras.Input((16, 16, 3))
    x = conv_bn(i, 16, 3, 2, "stem")
    x = inverted_residual(x, 8, 1, 1, "b1")
    x = inverted_residual(x, 12, 2, 6, "b2")
    x = inverted_residual(x, 12, 1, 6, "b3")
    x = L.GlobalAveragePooling2D(name="pool")(conv_bn(x, 32, 1, 1, "head"))
    return keras.Model(i, L.Dense(10, name="logits")(L.Dropout(0.2, name="dropout")(x)))


@pytest.fixture(scope="module")
def mobilenet(keras, torch, tmp_path_factory) -> Net:
    torch.manual_seed(0)
    module = _mobilenet_torch(torch)
    _randomize(torch, module)
    keras.utils.set_random_seed(0)
    return _save(tmp_path_factory.mktemp("mobilenet"), "mobilenet", torch, module, keras, _mobilenet_keras(keras), 16)


def _resnet_torch(torch):
    """torchvision's Bottleneck and its names (conv1, bn1, ..., downsample.0/1, fc): in
    layer1.0, conv3 and downsample.0 are both (64, 16, 1, 1)."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int, project: bool) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(width * 4)
            self.relu = nn.ReLU()
            self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4)) if project else None

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (self.downsample(x) if self.downsample is not None else x))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU()
            self.layer1 = nn.Sequential(Bottleneck(16, 16, 1, True), Bottleneck(64, 16, 1, False))
            self.layer2 = nn.Sequential(Bottleneck(64, 32, 2, True), Bottleneck(128, 32, 1, False))
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
            return self.fc(x.mean((2, 3)))

    return ResNet()


def _resnet_keras(keras):
    """As keras.applications builds its ResNets: the shortcut first in the code (`_0_conv`),
    so that Keras lists it between the main path's layers."""
    L = keras.layers

    def conv_bn(x, filters: int, kernel: int, stride: int, name: str):
        if stride > 1 and kernel > 1:
            x = L.ZeroPadding2D(kernel // 2, name=name + "_pad")(x)
        padding = "valid" if stride > 1 else "same"
        x = L.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=name + "_conv")(x)
        return L.BatchNormalization(epsilon=1e-5, name=name + "_bn")(x)

    def block(x, width: int, stride: int, project: bool, name: str):
        shortcut = conv_bn(x, width * 4, 1, stride, name + "_0") if project else x
        y = L.ReLU()(conv_bn(x, width, 1, 1, name + "_1"))
        y = L.ReLU()(conv_bn(y, width, 3, stride, name + "_2"))
        y = conv_bn(y, width * 4, 1, 1, name + "_3")
        return L.ReLU()(L.Add()([shortcut, y]))

    i = keras.Input((16, 16, 3))
    x = L.ReLU()(conv_bn(i, 16, 3, 1, "stem"))
    x = block(block(x, 16, 1, True, "s1b1"), 16, 1, False, "s1b2")
    x = block(block(x, 32, 2, True, "s2b1"), 32, 1, False, "s2b2")
    return keras.Model(i, L.Dense(10, name="fc")(L.GlobalAveragePooling2D()(x)))


@pytest.fixture(scope="module")
def resnet(keras, torch, tmp_path_factory) -> Net:
    torch.manual_seed(0)
    module = _resnet_torch(torch)
    _randomize(torch, module)
    keras.utils.set_random_seed(0)
    return _save(tmp_path_factory.mktemp("resnet"), "resnet", torch, module, keras, _resnet_keras(keras), 16)


@pytest.fixture(scope="module")
def branches(keras, torch, tmp_path_factory) -> Net:
    """Two parallel convs alike, added: nothing but a name or --map tells them apart."""
    nn = torch.nn
    torch.manual_seed(0)

    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.branch1 = nn.Conv2d(3, 8, 3, padding=1)
            self.branch2 = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.branch1(x) * 2 + self.branch2(x)).mean((2, 3)))

    module = Branches()
    module.eval()
    L = keras.layers
    i = keras.Input((8, 8, 3))
    left, right = L.Conv2D(8, 3, padding="same", name="left")(i), L.Conv2D(8, 3, padding="same", name="right")(i)
    x = L.ReLU()(L.Add()([L.Rescaling(2.0)(left), right]))
    model = keras.Model(i, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x)))
    return _save(tmp_path_factory.mktemp("branches"), "branches", torch, module, keras, model, 8)


# --- helpers ----------------------------------------------------------------------------------


def ported_outputs(keras, path: Path, x: np.ndarray) -> np.ndarray:
    model = keras.saving.load_model(path)
    return np.asarray(model(x.transpose(0, 2, 3, 1), training=False))


def assert_computes_as_torch(keras, path: Path, net: Net) -> None:
    got = ported_outputs(keras, path, net.x)
    scale = float(np.abs(net.y).max())
    assert np.abs(got - net.y).max() <= 1e-4 * scale, (np.abs(got - net.y).max(), scale)


def port_json(cli, *args: object) -> dict[str, Any]:
    result = cli("port", *args, "--json")
    assert result.exit_code == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def store_datasets(path: Path) -> dict[str, bytes]:
    """Every dataset of a .keras archive's weight store (or a .h5 file) as its bytes, by path."""
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            handle: Any = io.BytesIO(archive.read("model.weights.h5"))
    else:
        handle = path
    found: dict[str, bytes] = {}
    with h5py.File(handle, "r") as h5:
        h5.visititems(lambda name, item: found.__setitem__(name, item[()].tobytes())
                      if isinstance(item, h5py.Dataset) else None)
    return found


def archive_config(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        config: dict[str, Any] = json.loads(archive.read("config.json"))
    return config


def history(path: Path) -> list[dict[str, Any]]:
    with zipfile.ZipFile(path) as archive:
        records: list[dict[str, Any]] = json.loads(archive.read("metadata.json"))["conv_surgeon"]["history"]
    return records


def layer_weights(keras, path: Path) -> dict[str, list[np.ndarray]]:
    model = keras.saving.load_model(path, compile=False)
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


# --- the nets, ported with no name table, compute what PyTorch computes ------------------------


@pytest.mark.slow
def test_vgg_flatten_dense_rows_are_reordered_and_the_outputs_are_torchs(cli, keras, vgg: Net, tmp_path) -> None:
    out = tmp_path / "ported.keras"
    report = port_json(cli, vgg.keras_file, "--from", vgg.state, "-o", out)
    assert report["smoke"]["passed"] and report["left_in_state"] == [] and report["refusals"] == []
    dense = next(row for row in report["mapping"] if row["source"] == "classifier.1.weight")
    assert dense["layer"] == "dense" and dense["variable"] == "kernel" and dense["shape"] == [256, 32]
    assert "rows C·H·W -> H·W·C (4x4x16 from 'flatten')" in dense["transform"]
    assert_computes_as_torch(keras, out, vgg)


@pytest.mark.slow
def test_mobilenet_epsilon_is_refused_then_rewritten_and_the_outputs_are_torchs(cli, keras, mobilenet: Net,
                                                                               tmp_path) -> None:
    out = tmp_path / "ported.keras"
    result = cli("port", mobilenet.keras_file, "--from", mobilenet.state, "-o", out)
    assert_one_error_line(result, 1, "ported BatchNormalizations", "have epsilon 0.001, PyTorch's BatchNorm 1e-5",
                          "pass --bn-epsilon 1e-5")
    assert not out.exists()
    report = port_json(cli, mobilenet.keras_file, "--from", mobilenet.state, "--bn-epsilon", "1e-5", "-o", out)
    batch_norms = [layer["config"]["name"] for layer in archive_config(mobilenet.keras_file)["config"]["layers"]
                   if layer["class_name"] == "BatchNormalization"]
    assert sorted(e["layer"] for e in report["bn_epsilon"]) == sorted(batch_norms)
    assert all(e["before"] == 1e-3 and e["after"] == 1e-5 for e in report["bn_epsilon"])
    # Depthwise kernels: PyTorch's (in, 1, kh, kw) reshaped and transposed.
    depthwise = [row for row in report["mapping"] if row["layer"].endswith("_dw")]
    assert [row["source"] for row in depthwise] == [
        "features.1.conv.0.0.weight", "features.2.conv.1.0.weight", "features.3.conv.1.0.weight"]
    assert all(row["transform"] == "transpose(a, (2, 3, 0, 1))" for row in depthwise)
    assert {layer["config"]["epsilon"] for layer in archive_config(out)["config"]["layers"]
            if layer["class_name"] == "BatchNormalization"} == {1e-5}
    assert_computes_as_torch(keras, out, mobilenet)


@pytest.mark.slow
def test_resnet_shortcut_listed_elsewhere_by_pytorch_is_mapped_by_the_graph(cli, keras, resnet: Net,
                                                                           tmp_path) -> None:
    out = tmp_path / "ported.keras"
    report = port_json(cli, resnet.keras_file, "--from", resnet.state, "-o", out)
    where = {row["source"]: row["layer"] for row in report["mapping"]}
    # conv3 and downsample.0 of layer1.0 have one shape: the graph says which is which.
    assert where["layer1.0.conv3.weight"] == "s1b1_3_conv"
    assert where["layer1.0.downsample.0.weight"] == "s1b1_0_conv"
    assert where["layer1.0.downsample.1.running_var"] == "s1b1_0_bn"
    assert report["order"] == "branches longest first"
    assert_computes_as_torch(keras, out, resnet)


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [("vgg", ()), ("mobilenet", ("--bn-epsilon", "1e-5")), ("resnet", ())])
def test_each_net_ported_without_a_map_agrees_with_its_pytorch_reference(cli, request, tmp_path, name: str,
                                                                         options: tuple[str, ...]) -> None:
    net: Net = request.getfixturevalue(name)
    out = tmp_path / "ported.keras"
    report = port_json(cli, net.keras_file, "--from", net.state, *options, "--reference", net.traced,
                       "--expect-same", "-o", out)
    reference = report["smoke"]["reference"]
    assert reference["kind"] == "torchscript" and reference["reference"] == str(net.traced)
    assert reference["expect_same"]["float32_sums"] and reference["layout"].startswith("inputs NHWC -> NCHW")
    (output,) = reference["outputs"]
    assert output["shape"] == [1, 10] and output["scale"] > 0.1
    assert output["max_rel"] <= 1e-4 and output["cosine"] == pytest.approx(1.0, abs=1e-6) and output["used"] <= 1
    assert out.exists()


def test_two_branches_alike_are_refused_with_the_map_that_decides(cli, branches: Net, tmp_path) -> None:
    out = tmp_path / "ported.keras"
    result = cli("port", branches.keras_file, "--from", branches.state, "-o", out)
    assert_one_error_line(result, 1, "the mapping is ambiguous: layer 'left' takes 'branch1'", "'branch2'",
                          "--map 'branch")
    assert not out.exists()


@pytest.mark.slow
def test_map_decides_the_branches_and_the_outputs_are_torchs(cli, keras, branches: Net, tmp_path) -> None:
    out = tmp_path / "ported.keras"
    report = port_json(cli, branches.keras_file, "--from", branches.state, "--map", "branch2=>right", "-o", out)
    mapped = {row["source"]: (row["layer"], row["mapped_by"]) for row in report["mapping"]}
    assert mapped["branch2.weight"] == ("right", "--map") and mapped["branch1.weight"] == ("left", None)
    weights = layer_weights(keras, out)
    assert np.array_equal(weights["left"][0], branches.tensors["branch1.weight"].transpose(2, 3, 1, 0))
    assert_computes_as_torch(keras, out, branches)


# --- the mapping as a dry run shows it ---------------------------------------------------------


@pytest.mark.slow  # 0.5 s and more here
def test_dry_run_lists_every_tensor_its_variable_and_transform_and_writes_nothing(cli, vgg: Net,
                                                                                tmp_path) -> None:
    out = tmp_path / "never.keras"
    report = port_json(cli, vgg.keras_file, "--from", vgg.state, "--dry-run")
    assert report["dry_run"] is True and report["output"] is None and not out.exists()
    assert [row["source"] for row in report["mapping"]] == [n for n in vgg.tensors if "num_batches" not in n]
    assert report["mapping"][0] == {"source": "features.0.weight", "source_shape": [8, 3, 3, 3], "layer": "block1_conv",
                                    "variable": "kernel", "shape": [3, 3, 3, 8],
                                    "transform": "transpose(a, (2, 3, 1, 0))", "mapped_by": None}
    assert {row["variable"] for row in report["mapping"] if row["layer"] == "block1_bn"} == {
        "gamma", "beta", "moving_mean", "moving_variance"}
    running_var = next(row for row in report["mapping"] if row["source"] == "features.1.running_var")
    assert running_var["variable"] == "moving_variance" and running_var["transform"] == "as is"
    assert report["skipped"] == ["features.1.num_batches_tracked", "features.5.num_batches_tracked"]
    assert report["state"]["sha256"] == hashlib.sha256(vgg.state.read_bytes()).hexdigest()
    table = cli("port", vgg.keras_file, "--from", vgg.state, "--dry-run").stdout
    assert "16 tensors of" in table and "into 6 layers; would write (dry run)" in table
    assert any(line.split() == ["│", "features.4.weight", "│", "(16,", "8,", "3,", "3)", "│", "block2_conv", "│",
                                "kernel", "│", "(3,", "3,", "8,", "16)", "│", "transpose(a,", "(2,", "3,", "1,",
                                "0))", "│"] for line in table.splitlines()), table


def _state_with(tmp_path: Path, tensors: dict[str, np.ndarray], name: str = "state.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **tensors)
    return path


@pytest.mark.slow  # 0.5 s and more here
def test_a_tensor_left_over_is_refused_and_listed_then_written_with_allow_partial(cli, keras, vgg: Net,
                                                                                 tmp_path) -> None:
    extra = _state_with(tmp_path, {**vgg.tensors, "aux.weight": np.ones((5, 7), np.float32)})
    out = tmp_path / "partial.keras"
    result = cli("port", vgg.keras_file, "--from", extra, "-o", out, "--no-smoke")
    assert_one_error_line(result, 1, "1 tensor of", "fit no layer (aux.weight (5, 7))", "--allow-partial")
    assert not out.exists()
    dry = port_json(cli, vgg.keras_file, "--from", extra, "--dry-run")
    assert dry["left_in_state"] == [{"name": "aux.weight", "shape": [5, 7]}]
    assert dry["refusals"][0].endswith("pass --allow-partial to write the layers that were mapped")
    written = port_json(cli, vgg.keras_file, "--from", extra, "--allow-partial", "--no-smoke", "-o", out)
    assert written["partial"] is True and written["left_in_state"] == dry["left_in_state"]
    assert np.array_equal(layer_weights(keras, out)["logits"][1], vgg.tensors["classifier.3.bias"])


def test_a_layer_no_tensor_fits_keeps_its_values_and_the_report_says_so(cli, vgg: Net, tmp_path) -> None:
    headless = _state_with(tmp_path, {k: v for k, v in vgg.tensors.items() if not k.startswith("classifier.3")})
    out = tmp_path / "headless.keras"
    report = port_json(cli, vgg.keras_file, "--from", headless, "--no-smoke", "-o", out)
    assert report["left_in_model"] == [{"layer": "logits", "class": "Dense", "variables": {
        "kernel": [32, 10], "bias": [10]}, "reason": None}]
    assert "1 layer with weights got no tensor and keeps its values: 'logits'" in report["notes"]
    before, after = store_datasets(vgg.keras_file), store_datasets(out)
    kept = [name for name in before if name.startswith("layers/dense_1/")]  # the second Dense's object
    assert kept and all(before[name] == after[name] for name in kept)


@pytest.mark.slow  # 0.5 s and more here
def test_safetensors_and_npz_map_as_the_pt_does(cli, vgg: Net, tmp_path) -> None:
    from safetensors.numpy import save_file

    safetensors = tmp_path / "vgg.safetensors"
    save_file(vgg.tensors, safetensors)
    npz = _state_with(tmp_path, vgg.tensors, "vgg.npz")
    reports = [port_json(cli, vgg.keras_file, "--from", source, "--dry-run") for source in (vgg.state, safetensors, npz)]
    mappings = [sorted((row["source"], row["layer"], row["variable"]) for row in r["mapping"]) for r in reports]
    assert mappings[0] == mappings[1] == mappings[2]
    assert [r["state"]["format"] for r in reports] == ["torch", "safetensors", "npz"]
    assert any("keeps no module order" in note for note in reports[1]["notes"])


TORCH_NAMES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_variance": "running_var", "embeddings": "weight"}


@pytest.mark.parametrize("model", ["all_convs.keras", pytest.param("all_convs.h5", marks=pytest.mark.slow)])
def test_what_get_exports_in_torch_layout_ports_back_to_the_same_bytes(cli, samples: Path, tmp_path,
                                                                       model: str) -> None:
    """Every conv class (1-3D, transposed, depthwise, grouped, without bias, in nested models)
    and BatchNormalization: modules named m0, m1, ... (no hint), in the model's order."""
    source = samples / model
    tensors = {}
    for index, layer in enumerate(cs.inspect(source, all_layers=True).layers):
        if not layer.class_name.startswith("Separable"):
            for name, value in cs.get_weights(source, layer.path, layout="torch").items():
                tensors[f"m{index}.{TORCH_NAMES[name]}"] = value
    state = _state_with(tmp_path, tensors)
    out = tmp_path / f"back{source.suffix}"
    # 1e-3 is the BatchNormalizations' own epsilon: nothing to rewrite.
    report = port_json(cli, source, "--from", state, "--bn-epsilon", "1e-3", "--no-smoke", "-o", out)
    assert report["left_in_state"] == []
    assert sorted(row["source"] for row in report["mapping"]) == sorted(tensors)
    assert {x["layer"]: x["reason"].split(";")[0] for x in report["left_in_model"]} == {
        "sep2d": "a SeparableConv is two PyTorch convs (depthwise, then pointwise)",
        "sep1d": "a SeparableConv is two PyTorch convs (depthwise, then pointwise)"}
    assert all(change["max_abs_change"] == 0.0 for change in report["changes"])
    before, after = store_datasets(source), store_datasets(out)
    assert before.keys() == after.keys()
    assert [name for name in before if before[name] != after[name] and "optimizer" not in name] == []


@pytest.mark.parametrize("layout, flatten, reordered", [
    ("channels_last", "channels_last", True),  # (H, W, C) flattened H·W·C
    ("channels_first", "channels_last", False),  # (C, H, W) flattened C·H·W, as PyTorch does
    ("channels_first", "channels_first", True),  # Keras's Flatten moves the channels last first
])
@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
def test_a_dense_after_a_flatten_has_its_rows_reordered_only_where_keras_flattens_hwc(
        cli, keras, tmp_path, layout: str, flatten: str, reordered: bool, sequential: bool) -> None:
    L = keras.layers
    shape = (6, 5, 3) if layout == "channels_last" else (3, 6, 5)
    layers = [L.Conv2D(4, 3, data_format=layout, name="conv"), L.Dropout(0.1, name="drop"),
              L.Flatten(data_format=flatten, name="flat"), L.Dense(2, name="fc")]
    if sequential:
        model = keras.Sequential([keras.Input(shape), *layers[:1], *layers[2:]])  # Flatten right after the conv
    else:
        x = i = keras.Input(shape)
        for layer in layers:
            x = layer(x)
        model = keras.Model(i, x)
    model.save(tmp_path / "flat.keras")  # never run: CPU convs take channels_last only
    state = _state_with(tmp_path, {"conv.weight": np.ones((4, 3, 3, 3), np.float32), "conv.bias": np.zeros(4, np.float32),
                                   "fc.weight": np.arange(2 * 48, dtype=np.float32).reshape(2, 48),
                                   "fc.bias": np.zeros(2, np.float32)})
    report = port_json(cli, tmp_path / "flat.keras", "--from", state, "--no-smoke", "-o", tmp_path / "out.keras")
    fc = next(row for row in report["mapping"] if row["source"] == "fc.weight")
    # Row r of the kernel holds PyTorch's feature r of its (C, H, W) = (4, 4, 3) where nothing
    # is reordered; else the feature at Keras's (h, w, c): c * 12 + h * 3 + w.
    torch_feature = cs.get_weights(tmp_path / "out.keras", "fc")["kernel"][:, 0].astype(int)
    if reordered:
        held = "4x3x4" if layout == "channels_last" else "4x4x3"
        assert fc["transform"] == f"transpose(a), rows C·H·W -> H·W·C ({held} from 'flat')"
        h, w, c = np.meshgrid(np.arange(4), np.arange(3), np.arange(4), indexing="ij")
        assert np.array_equal(torch_feature, (c * 12 + h * 3 + w).reshape(-1))
    else:
        assert fc["transform"] == "transpose(a)"
        assert np.array_equal(torch_feature, np.arange(48))


# --- named mismatches -------------------------------------------------------------------------


def test_a_stride_2_same_conv_is_named_with_its_fix_and_still_written(cli, keras, tmp_path) -> None:
    L = keras.layers
    i = keras.Input((9, 9, 3))
    x = L.Conv2D(4, 3, strides=2, padding="same", name="down")(i)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    keras.Model(i, x).save(tmp_path / "strided.keras")
    rng = np.random.default_rng(0)
    state = _state_with(tmp_path, {"0.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                                   "0.bias": np.zeros(4, np.float32),
                                   "1.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
                                   "1.bias": np.zeros(4, np.float32)})
    report = port_json(cli, tmp_path / "strided.keras", "--from", state, "--no-smoke", "-o", tmp_path / "out.keras")
    assert report["output"] == str(tmp_path / "out.keras")
    assert [m["layer"] for m in report["mismatches"]] == ["down"]
    (mismatch,) = report["mismatches"]
    assert "padding 'same'" in mismatch["problem"] and "outputs differ at the borders" in mismatch["problem"]
    assert mismatch["fix"] == "to compute as PyTorch's padding=1: ZeroPadding2D(1) before it and padding='valid'"
    table = cli("port", tmp_path / "strided.keras", "--from", state, "--dry-run").stdout
    assert "warning: 1 layer will compute otherwise than PyTorch:" in table


def test_an_uneven_zero_padding_before_a_strided_conv_is_named(cli, keras, tmp_path) -> None:
    """Keras's own MobileNetV2 pads ((0, 1), (0, 1)) before its stride-2 convs."""
    L = keras.layers
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, strides=2, name="down")(L.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(i))
    keras.Model(i, x).save(tmp_path / "padded.keras")
    state = _state_with(tmp_path, {"conv.weight": np.ones((4, 3, 3, 3), np.float32), "conv.bias": np.zeros(4, np.float32)})
    report = port_json(cli, tmp_path / "padded.keras", "--from", state, "--dry-run")
    (mismatch,) = report["mismatches"]
    assert mismatch["layer"] == "down" and "after ZeroPadding2D 'pad' padding ((0, 1), (0, 1))" in mismatch["problem"]


# --- written like every edit ----------------------------------------------------------------


def test_provenance_names_every_tensor_and_the_state_dicts_sha256(cli, vgg: Net, tmp_path) -> None:
    out = tmp_path / "ported.keras"
    report = port_json(cli, vgg.keras_file, "--from", vgg.state, "--no-smoke", "-o", out)
    (record,) = history(out)
    digest = hashlib.sha256(vgg.state.read_bytes()).hexdigest()
    assert record["command"][:2] == ["conv-surgeon", "port"]
    assert [(e["layer"], e["variable"]) for e in record["edits"]] == [
        (row["layer"], row["variable"]) for row in report["mapping"]]
    assert all(e["layout"] == "torch" and e["source"]["sha256"] == digest for e in record["edits"])
    assert record["edits"][0]["source"]["file"] == f"{vgg.state}:features.0.weight (torch layout)"
    dense = next(e for e in record["edits"] if e["layer"] == "dense" and e["variable"] == "kernel")
    assert "rows C·H·W -> H·W·C" in dense["source"]["file"]


def _trainable_slots(path: Path) -> tuple[bytes, list[str]]:
    """The iteration count's bytes and the names of Adam's m and v slots (optimizer/vars/2..)."""
    datasets = store_datasets(path)
    slots = sorted((name for name in datasets if name.startswith("optimizer/vars/")), key=lambda n: int(n.rsplit("/")[-1]))
    return datasets["optimizer/vars/0"], slots[2:]


@pytest.mark.parametrize("epsilon", [False, True], ids=["patched", "rewritten"])
def test_every_replaced_variables_slots_start_at_zero_and_nothing_else_changes(cli, mobilenet: Net, tmp_path,
                                                                               epsilon: bool) -> None:
    out = tmp_path / "ported.keras"
    args = ["--bn-epsilon", "1e-5"] if epsilon else ["--bn-epsilon", "1e-3"]  # 1e-3: the model's own, no rewrite
    report = port_json(cli, mobilenet.keras_file, "--from", mobilenet.state, *args, "--no-smoke", "-o", out)
    assert bool(report["bn_epsilon"]) is epsilon
    trainable = [row for row in report["mapping"] if not row["variable"].startswith("moving_")]
    assert report["optimizer"]["slots_reset"] == 2 * len(trainable)
    before, after = store_datasets(mobilenet.keras_file), store_datasets(out)
    assert before.keys() == after.keys()
    iteration, slots = _trainable_slots(out)
    assert iteration == before["optimizer/vars/0"] and len(slots) == 2 * len(trainable)
    assert all(after[name] == bytes(len(after[name])) and before[name] != after[name] for name in slots)
    # Every variable of this model is ported; what is neither a variable nor a reset slot is kept.
    variables = [name for name in before if name.startswith("layers/")]
    assert len(variables) == len(report["mapping"]) and all(before[name] != after[name] for name in variables)
    others = [name for name in before if name not in variables and name not in slots]
    assert others and all(before[name] == after[name] for name in others)
    old, new = archive_config(mobilenet.keras_file), archive_config(out)
    for layer in new["config"]["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["epsilon"] = 1e-3
    assert new == old


def test_optimizer_keep_leaves_every_slot(cli, vgg: Net, tmp_path) -> None:
    out = tmp_path / "kept.keras"
    report = port_json(cli, vgg.keras_file, "--from", vgg.state, "--optimizer", "keep", "--no-smoke", "-o", out)
    assert report["optimizer"]["policy"] == "keep" and report["optimizer"]["slots_reset"] == 0
    before, after = store_datasets(vgg.keras_file), store_datasets(out)
    assert all(before[name] == after[name] for name in before if name.startswith("optimizer/"))
    with zipfile.ZipFile(vgg.keras_file) as a, zipfile.ZipFile(out) as b:
        assert a.read("config.json") == b.read("config.json")


@pytest.mark.slow  # 0.5 s and more here
def test_a_legacy_h5_takes_the_epsilon_in_its_model_config(cli, keras, mobilenet: Net, tmp_path) -> None:
    h5 = tmp_path / "mobilenet.h5"
    keras.saving.load_model(mobilenet.keras_file).save(h5)
    out = tmp_path / "ported.h5"
    report = port_json(cli, h5, "--from", mobilenet.state, "--bn-epsilon", "1e-5", "--no-smoke", "-o", out)
    assert report["bn_epsilon"] and report["output"] == str(out)
    with h5py.File(out, "r") as f:
        config = json.loads(f.attrs["model_config"])
    assert {layer["config"]["epsilon"] for layer in config["config"]["layers"]
            if layer["class_name"] == "BatchNormalization"} == {1e-5}
    dw = cs.get_weights(out, "b1_dw")["kernel"]
    assert np.array_equal(dw, mobilenet.tensors["features.1.conv.0.0.weight"].transpose(2, 3, 0, 1))


def test_model_on_stdin_and_stdout(cli, vgg: Net, tmp_path) -> None:
    result = cli("port", "--from", vgg.state, "--no-smoke", input=vgg.keras_file.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes[:2] == b"PK" and "16 tensors of" in result.stderr
    (tmp_path / "piped.keras").write_bytes(result.stdout_bytes)
    assert len(history(tmp_path / "piped.keras")[0]["edits"]) == 16


# --- refusals, in one line ----------------------------------------------------------------------


def test_map_mistakes_are_one_line(cli, vgg: Net) -> None:
    model, state = vgg.keras_file, vgg.state
    assert_one_error_line(cli("port", model, "--from", state, "--map", "nothing\\.here=>dense", "--dry-run"), 1,
                          "matches no module of the state dict")
    assert_one_error_line(cli("port", model, "--from", state, "--map", "features\\..*=>dense", "--dry-run"), 1,
                          "matches 4 modules", "make the expression match one")
    assert_one_error_line(cli("port", model, "--from", state, "--map", "classifier\\.1=>logits", "--dry-run"), 1,
                          "module 'classifier.1' (weight (32, 256), bias (32,)) does not fit layer 'logits'",
                          "its weight is (32, 256), the layer needs (10, 32)")
    assert_one_error_line(cli("port", model, "--from", state, "--map", "([=>dense", "--dry-run"), 2,
                          "is not a regular expression")
    assert_one_error_line(cli("port", model, "--from", state, "--map", "no arrow", "--dry-run"), 2,
                          "expected 'REGEX=>LAYER'")


def test_a_state_dict_of_another_net_is_refused(cli, vgg: Net, tmp_path) -> None:
    other = _state_with(tmp_path, {"encoder.weight": np.ones((5, 7), np.float32)})
    assert_one_error_line(cli("port", vgg.keras_file, "--from", other, "--dry-run"), 1,
                          "no layer with weights fits a module of", "'encoder' (weight (5, 7))",
                          "is it the state dict of this architecture?")


@pytest.mark.parametrize("state, message", [
    ("missing.pt", "state dict 'missing.pt': cannot read it (No such file or directory)"),
    (".", "is a directory; expected a PyTorch state dict saved with torch.save(model.state_dict(), 'w.pt')"),
    ("sample_models/tiny_cnn.keras", "is a Keras model (.keras), not a state dict"),
    ("sample_models/sobel.npy", "holds one .npy array; expected a PyTorch state dict"),
])
def test_what_is_no_state_dict_is_refused_in_one_line(cli, samples: Path, monkeypatch, state: str,
                                                      message: str) -> None:
    monkeypatch.chdir(samples.parent)
    assert_one_error_line(cli("port", samples / "tiny_cnn.keras", "--from", state, "--dry-run"), 1, message)


def test_a_reference_that_cannot_run_is_refused_before_anything_is_written(cli, vgg: Net, tmp_path) -> None:
    out = tmp_path / "o.keras"
    assert_one_error_line(cli("port", vgg.keras_file, "--from", vgg.state, "--reference", "ref.pt", "-o", out), 1,
                          "--reference ref.pt: no such file, and not module:factory")
    assert_one_error_line(cli("port", vgg.keras_file, "--from", vgg.state, "--reference", vgg.traced, "--no-smoke",
                              "-o", out), 2, "--reference runs the written model with Keras beside PyTorch; drop "
                          "--no-smoke")
    assert_one_error_line(cli("port", vgg.keras_file, "--from", vgg.state, "--expect-same", "-o", out), 2,
                          "--expect-same needs --compare or --reference")
    assert not out.exists()


def test_from_is_required_and_a_bad_epsilon_is_a_usage_error(cli, vgg: Net, tmp_path) -> None:
    assert_one_error_line(cli("port", vgg.keras_file, "-o", tmp_path / "o.keras"), 2, "missing --from STATE")
    assert_one_error_line(cli("port", vgg.keras_file, "--from", vgg.state, "--bn-epsilon", "-1", "--dry-run"), 2,
                          "--bn-epsilon -1.0: expected a positive number")


@pytest.mark.slow  # 0.5 s and more here
def test_safetensors_and_npz_need_no_torch_and_pt_says_how_to_install_it(vgg: Net, torch, tmp_path) -> None:
    """Without PyTorch: safetensors and torch.save's zip are read; a file in the format of
    PyTorch before 1.6 says how to install it."""
    from safetensors.numpy import save_file

    save_file(vgg.tensors, tmp_path / "vgg.safetensors")
    state = torch.load(vgg.state, weights_only=True)
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)

    def run(state: Path) -> subprocess.CompletedProcess[str]:
        code = ("import sys\nsys.modules['torch'] = None\n"  # as if PyTorch were not installed
                f"sys.argv = ['conv-surgeon', 'port', {str(vgg.keras_file)!r}, '--from', {str(state)!r}, '--dry-run',"
                " '--json']\nfrom conv_surgeon.cli import main\nmain()\n")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    for state in (tmp_path / "vgg.safetensors", vgg.state):
        found = run(state)
        assert found.returncode == 0, found.stderr
        assert len(json.loads(found.stdout)["mapping"]) == 16
    refused = run(tmp_path / "old.pt")
    assert refused.returncode == 1 and "pip install 'conv-surgeon[torch]'" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1


# --- the Python API ---------------------------------------------------------------------------------


@pytest.mark.slow  # 0.5 s and more here
def test_the_api_ports_and_speaks_python(vgg: Net, mobilenet: Net, tmp_path) -> None:
    report = cs.port(vgg.keras_file, vgg.state, dry_run=True)
    assert report.layers_ported == 6 and report.tensors[0].source == "features.0.weight"
    assert repr(report).startswith("<PortReport dry run: 16 tensors of")
    with pytest.raises(cs.ConvSurgeonError, match=r"pass bn_epsilon=1e-5"):
        cs.port(mobilenet.keras_file, mobilenet.state, out=tmp_path / "o.keras", smoke=False)
    written = cs.port(mobilenet.keras_file, mobilenet.state, out=tmp_path / "o.keras", smoke=False, bn_epsilon=1e-5)
    batch_norms = [layer for layer in cs.inspect(mobilenet.keras_file, all_layers=True).layers
                   if layer.class_name == "BatchNormalization"]
    assert written.destination == str(tmp_path / "o.keras") and len(written.epsilon) == len(batch_norms) > 0


# --- the README's cookbook --------------------------------------------------------------------


@pytest.mark.slow
def test_the_readme_cookbook_ports_a_whole_net_exactly(torch) -> None:
    import os
    import re

    root = Path(__file__).resolve().parent.parent
    section = (root / "README.md").read_text().split("### Cookbook: port a whole PyTorch network", 1)[1]
    (block,) = re.findall(r"```sh\n(.*?)```", section.split("\n### ", 1)[0], flags=re.S)
    result = subprocess.run(["bash", "-e", "-c", block], cwd=root, env=dict(os.environ), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # The dry run shows the Flatten's rows and says what a write would refuse; the port writes.
    assert "rows C·H·W -> H·W·C (8x8x32 from 'flatten')" in result.stdout
    assert "would refuse: build/port-net/net.keras: 2 ported BatchNormalizations" in result.stdout
    assert "wrote build/port-net/ported.keras" in result.stdout
    # The port was checked against the PyTorch net: the output's largest error and its scale.
    scale, difference = map(float, re.search(r"output 0 the same as PyTorch within atol=0, rtol=0 of the output "
                                             r"scale (\S+) \+ .*: max abs error (\S+),", result.stdout).groups())
    assert difference <= 1e-4 * scale


# --- a real architecture: keras.applications.ResNet50 -----------------------------------------


def _keras_resnet50_in_torch(torch):
    """keras.applications.ResNet50 written in PyTorch with torchvision's module names: v1
    (the stride on each block's first 1x1 conv), convs with biases, a fully connected head."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int, project: bool) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, stride), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1), nn.BatchNorm2d(width * 4)
            self.relu = nn.ReLU()
            self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride),
                                            nn.BatchNorm2d(width * 4)) if project else None

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
            return self.relu(out + (self.downsample(x) if self.downsample is not None else x))

    class ResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1, self.relu = nn.Conv2d(3, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for stage, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
                layers = []
                for block in range(blocks):
                    layers.append(Bottleneck(cin, width, stride if block == 0 else 1, block == 0))
                    cin = width * 4
                setattr(self, f"layer{stage}", nn.Sequential(*layers))
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(x.mean((2, 3)))

    return ResNet50()


@pytest.mark.slow
def test_keras_applications_resnet50_takes_a_pytorch_state_dict_exactly(cli, keras, torch, architectures,
                                                                        tmp_path) -> None:
    model = architectures.file("ResNet50", "linear-head", linear_head=True)
    torch.manual_seed(0)
    module = _keras_resnet50_in_torch(torch)
    _randomize(torch, module)
    torch.save(module.state_dict(), tmp_path / "resnet50.pt")
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        net = Net(model, tmp_path / "resnet50.pt", x, module(torch.from_numpy(x)).numpy(), {})
    layers = cs.inspect(model, all_layers=True).layers
    batch_norms = [layer.path for layer in layers if layer.class_name == "BatchNormalization"]
    out = tmp_path / "ported.keras"
    # Keras's ResNet50 builds its BatchNormalizations with epsilon 1.001e-5.
    assert_one_error_line(cli("port", model, "--from", net.state, "-o", out), 1,
                          f"{len(batch_norms)} ported BatchNormalizations", "have epsilon 1.001e-5")
    report = port_json(cli, model, "--from", net.state, "--bn-epsilon", "1e-5", "-o", out)
    assert report["left_in_state"] == [] and report["left_in_model"] == [] and report["mismatches"] == []
    assert sorted(e["layer"] for e in report["bn_epsilon"]) == sorted(batch_norms)
    assert report["layers_ported"] == len(layers)
    where = {row["source"]: row["layer"] for row in report["mapping"]}
    assert where["layer1.0.conv3.weight"] == "conv2_block1_3_conv"
    assert where["layer1.0.downsample.0.weight"] == "conv2_block1_0_conv"
    assert where["layer4.2.bn3.running_var"] == "conv5_block3_3_bn" and where["fc.weight"] == "predictions"
    assert_computes_as_torch(keras, out, net)


# --- keras-hub's own timm converter is the truth ------------------------------------------------


def _timm_resnet50(torch):
    """timm's resnet50 (torchvision's too): the stride on each block's 3x3 conv, convs without
    bias, its names (conv1, bn1, layer1.0.conv1, ..., downsample.0/1, fc)."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int, project: bool) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
            self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4)) if project else None

    net = nn.Module()
    net.conv1, net.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
    cin = 64
    for stage, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
        layers = []
        for block in range(blocks):
            layers.append(Bottleneck(cin, width, stride if block == 0 else 1, block == 0))
            cin = width * 4
        setattr(net, f"layer{stage}", nn.Sequential(*layers))
    net.fc = nn.Linear(2048, 1000)
    return net


@pytest.mark.slow
def test_a_timm_resnet50_goes_into_keras_hubs_backbone_as_keras_hubs_own_converter_puts_it(
        cli, keras, torch, tmp_path) -> None:
    """The backbone's config lists no layers (Keras reads its graph); in stage 1, conv3 and
    downsample.0 have one shape; the .safetensors file keeps no order."""
    import keras_hub
    from keras_hub.src.utils.timm import convert_resnet
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader
    from safetensors.torch import save_file

    torch.manual_seed(0)
    module = _timm_resnet50(torch)
    _randomize(torch, module)
    preset = tmp_path / "timm_resnet50"
    preset.mkdir()
    save_file(module.state_dict(), preset / "model.safetensors")
    timm_config = {"architecture": "resnet50"}
    (preset / "config.json").write_text(json.dumps(timm_config))
    arguments = convert_resnet.convert_backbone_config(timm_config)
    keras.utils.set_random_seed(0)
    truth = keras_hub.models.ResNetBackbone(**arguments)
    with SafetensorLoader(str(preset), fname="model.safetensors") as loader:
        convert_resnet.convert_weights(truth, loader, timm_config)
    keras.utils.set_random_seed(1)
    keras_hub.models.ResNetBackbone(**arguments).save(tmp_path / "backbone.keras")
    out = tmp_path / "ported.keras"
    report = port_json(cli, tmp_path / "backbone.keras", "--from", preset / "model.safetensors", "--allow-partial",
                       "--no-smoke", "-o", out)
    assert [t["name"] for t in report["left_in_state"]] == ["fc.bias", "fc.weight"]  # the backbone has no head
    assert report["left_in_model"] == [] and report["refusals"] == [] and report["bn_epsilon"] == []
    assert any("Keras loaded the model" in note for note in report["notes"])
    ported = layer_weights(keras, out)
    expected = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in truth.layers if layer.weights}
    assert ported.keys() == expected.keys()
    assert all(len(ported[name]) == len(values) and all(np.array_equal(a, b) for a, b in zip(ported[name], values))
               for name, values in expected.items())
