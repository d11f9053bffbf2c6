"""Checked against PyTorch (runtime/torch_reference): a Keras model and the PyTorch model it
was ported from run on the same inputs, and each output is measured against the other's.

Small PyTorch nets (conv + BN + ReLU, depthwise, a Linear head; a Conv1d net; an MLP over
a sequence) are written into a module file, built with random weights and random BN
statistics, and ported by hand into their Keras twins with numpy (the transposes of
DESIGN.md's table), saved by Keras. Each is then checked against each kind of reference:
TorchScript (scripted and traced), a torch.export archive, and module:factory.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from conv_surgeon.errors import ConvSurgeonError, ExitCode, SmokeTestError, UsageError
from conv_surgeon.runtime.checks import FUNCTION_KEPT, SmokeOptions, Tolerance
from conv_surgeon.runtime.smoke import run_smoke_test
from conv_surgeon.runtime.torch_reference import compare_with_torch, parse_reference

NETS = '''\
import torch
from torch import nn


class Net2d(nn.Module):
    """conv -> BN -> ReLU, depthwise -> BN -> ReLU (the features), pooled, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw_bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.bn(self.conv(x)))
        features = torch.relu(self.dw_bn(self.dw(x)))
        return features, self.fc(features.mean((2, 3)))


class Net1d(nn.Module):
    """A signal in, a signal out: conv -> BN -> ReLU -> 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Conv1d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


class SequenceMlp(nn.Module):
    """Linear layers over the last axis of (batch, steps, features): one layout in both."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def build_2d():
    return Net2d()


def build_1d():
    return Net1d()


def build_mlp():
    return SequenceMlp()


def build_nothing():
    return "a net"


def build_broken():
    raise ValueError("no such checkpoint")
'''

# Inputs as the Keras twins take them (channels last), without the batch axis; the signal's
# length is free (the smoke test then searches one, from 32).
INPUTS = {"2d": (16, 16, 3), "1d": (None, 4), "mlp": (6, 4)}


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


def _keras_twin(keras: Any, kind: str) -> Any:
    L = keras.layers
    x = inputs = keras.Input(INPUTS[kind])
    if kind == "2d":
        x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(x)
        x = L.ReLU()(L.BatchNormalization(epsilon=1e-5, name="bn")(x))
        x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
        features = L.ReLU()(L.BatchNormalization(epsilon=1e-5, name="dw_bn")(x))
        logits = L.Dense(5, name="fc")(L.GlobalAveragePooling2D()(features))
        return keras.Model(inputs, [features, logits])
    if kind == "1d":
        x = L.Conv1D(6, 5, padding="same", name="conv")(x)
        x = L.ReLU()(L.BatchNormalization(epsilon=1e-5, name="bn")(x))
        return keras.Model(inputs, L.Conv1D(3, 1, name="head")(x))
    x = L.Dense(16, name="fc1")(x)
    x = L.ReLU()(L.LayerNormalization(epsilon=1e-5, name="norm")(x))
    return keras.Model(inputs, L.Dense(3, name="fc2")(x))


def _port(model: Any, state: dict[str, np.ndarray]) -> None:
    """The state dict into the Keras twin, by hand: each layer's variables in PyTorch's names."""
    for layer in model.layers:
        name = layer.name
        kind = type(layer).__name__
        if kind == "Conv2D":
            values = [state[f"{name}.weight"].transpose(2, 3, 1, 0)]
        elif kind == "DepthwiseConv2D":
            values = [state[f"{name}.weight"].transpose(2, 3, 0, 1)]
        elif kind == "Conv1D":
            values = [state[f"{name}.weight"].transpose(2, 1, 0)]
        elif kind == "Dense":
            values = [state[f"{name}.weight"].T]
        elif kind == "BatchNormalization":
            values = [state[f"{name}.{v}"] for v in ("weight", "bias", "running_mean", "running_var")]
        elif kind == "LayerNormalization":
            values = [state[f"{name}.weight"], state[f"{name}.bias"]]
        else:
            continue
        if f"{name}.bias" in state and kind not in ("BatchNormalization", "LayerNormalization"):
            values.append(state[f"{name}.bias"])
        layer.set_weights(values)


class Ported:
    """One net in both frameworks, and its references on disk."""

    def __init__(self, folder: Path, nets: ModuleType, torch: Any, keras: Any, kind: str) -> None:
        torch.manual_seed({"2d": 0, "1d": 1, "mlp": 2}[kind])
        net = getattr(nets, f"build_{kind}")()
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0, 0.5)
                if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    module.running_mean.normal_(0, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
        self.net = net.eval()
        self.state = {k: v.numpy().copy() for k, v in net.state_dict().items()}
        self.state_file = folder / f"{kind}_state.pt"
        torch.save(net.state_dict(), self.state_file)
        model = _keras_twin(keras, kind)
        self.target = folder / f"{kind}_target.keras"  # the twin as built, for `port` to fill
        model.save(self.target)
        _port(model, self.state)
        self.keras = folder / f"{kind}.keras"
        model.save(self.keras)
        self.folder, self.kind, self.torch = folder, kind, torch
        self.factory = f"{folder / 'ported_nets.py'}:build_{kind}"

    def _example(self) -> Any:
        example = self.torch.from_numpy(np.zeros((1, *(d or 32 for d in INPUTS[self.kind])), np.float32))
        return example if self.kind == "mlp" else example.moveaxis(-1, 1)

    # The reference files, each written when a test first asks for it.
    @functools.cached_property
    def script(self) -> Path:
        path = self.folder / f"{self.kind}_script.pt"
        self.torch.jit.save(self.torch.jit.script(self.net), path)
        return path

    @functools.cached_property
    def trace(self) -> Path:
        path = self.folder / f"{self.kind}_trace.pt"
        self.torch.jit.save(self.torch.jit.trace(self.net, self._example()), path)
        return path

    @functools.cached_property
    def export(self) -> Path:
        path = self.folder / f"{self.kind}.pt2"
        self.torch.export.save(self.torch.export.export(self.net, (self._example(),)), path)
        return path


@pytest.fixture(scope="module")
def nets_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("torch_reference")
    (folder / "ported_nets.py").write_text(NETS)
    return folder / "ported_nets.py"


@pytest.fixture(scope="module")
def ported(nets_file: Path, torch: Any, keras: Any) -> dict[str, Ported]:
    # The test's own copy of the module, under a name of its own (TorchScript reads the
    # classes' source through sys.modules); the references import the file themselves.
    spec = importlib.util.spec_from_file_location("torch_reference_test_nets", nets_file)
    assert spec is not None and spec.loader is not None
    nets = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = nets
    spec.loader.exec_module(nets)
    return {kind: Ported(nets_file.parent, nets, torch, keras, kind) for kind in INPUTS}


def _reference(net: Ported, kind: str) -> str:
    return {"script": str(net.script), "trace": str(net.trace), "export": str(net.export),
            "factory": net.factory}[kind]


@pytest.mark.parametrize("kind", ["script", "trace", "export", "factory"])
def test_each_kind_of_reference_agrees_with_the_port_of_a_conv_bn_depthwise_linear_net(
        ported: dict[str, Ported], kind: str) -> None:
    net = ported["2d"]
    comparison = compare_with_torch(net.keras, _reference(net, kind), state=net.state, tolerance=FUNCTION_KEPT)
    assert comparison.reference.kind == {"script": "torchscript", "trace": "torchscript"}.get(kind, kind)
    assert [(o.name, o.shape) for o in comparison.outputs] == [("output 0", (1, 16, 16, 8)), ("output 1", (1, 5))]
    for output in comparison.outputs:
        assert output.max_rel <= 1e-4 and output.max_abs <= 1e-4 * output.scale, output
        assert output.cosine == pytest.approx(1.0, abs=1e-6), output
        assert output.scale > 0.1  # the outputs are not nearly zero: the check can see a mistake
    assert comparison.layout == "inputs NHWC -> NCHW for PyTorch; outputs NCHW -> NHWC back"
    assert comparison.inputs == ((1, 16, 16, 3),)
    assert comparison.tolerance == FUNCTION_KEPT and comparison.passed(FUNCTION_KEPT)
    # Only a factory's module takes the state dict; the files run with the weights they hold.
    assert comparison.state_tensors == (len(net.state) if kind == "factory" else 0)
    assert comparison.notes == ()


def test_a_factory_is_found_by_module_name_from_the_current_directory(
        ported: dict[str, Ported], nets_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = ported["2d"]
    monkeypatch.chdir(nets_file.parent)
    comparison = compare_with_torch(net.keras, "ported_nets:build_2d", state=net.state)
    assert comparison.reference.module == "ported_nets" and comparison.reference.path is None
    assert comparison.passed(FUNCTION_KEPT), comparison.outputs


def test_one_scaled_kernel_fails_the_check_naming_the_output_and_the_error(
        ported: dict[str, Ported], keras: Any, tmp_path: Path) -> None:
    net = ported["2d"]
    model = keras.saving.load_model(net.keras, compile=False)
    kernel, bias = model.get_layer("dw").get_weights()
    kernel[..., 3, :] *= 1.5  # the depthwise filter of channel 3
    model.get_layer("dw").set_weights([kernel, bias])
    wrong = tmp_path / "wrong.keras"
    model.save(wrong)

    comparison = compare_with_torch(wrong, str(net.export))
    assert not comparison.passed(FUNCTION_KEPT)
    features, logits = comparison.outputs
    assert features.worst[-1] == 3  # the largest error sits in the channel scaled
    # One channel of 8 scaled moves the cosine little; the error relative to the scale shows it.
    assert features.max_rel > 1e-2 and 1 - features.cosine > 1e-6

    reference = parse_reference(str(net.export))
    with pytest.raises(SmokeTestError) as failed:
        run_smoke_test(wrong, SmokeOptions(reference=reference, expect_same=FUNCTION_KEPT))
    message = str(failed.value)
    assert failed.value.exit_code == ExitCode.SMOKE_FAILED
    assert message.startswith("output 0: the Keras model differs from the PyTorch reference"), message
    assert f"max abs error {features.max_abs:.3g}" in message and "nothing was written" in message, message
    assert "\n" not in message


def test_the_smoke_test_reports_the_reference_and_keeps_the_tolerance(ported: dict[str, Ported]) -> None:
    net = ported["2d"]
    reference = parse_reference(net.factory)
    reference = type(reference)(**{**reference.__dict__, "state": net.state})
    report = run_smoke_test(net.keras, SmokeOptions(reference=reference, expect_same=FUNCTION_KEPT,
                                                    input_seed=7))
    assert report.reference is not None
    assert report.reference.tolerance == FUNCTION_KEPT
    assert report.reference.inputs == report.inputs[0][1:] and report.input_origins == ("declared by the file",)
    # A tolerance that allows nothing fails: the two frameworks do round differently.
    with pytest.raises(SmokeTestError, match="beyond atol=0, rtol=0 of the output scale"):
        run_smoke_test(net.keras, SmokeOptions(reference=reference, expect_same=Tolerance(0.0, 0.0)))


@pytest.mark.parametrize("kind", ["1d", "mlp"])
def test_a_conv1d_net_is_moved_channels_first_and_a_sequence_mlp_is_not(ported: dict[str, Ported],
                                                                       kind: str) -> None:
    net = ported[kind]
    comparison = compare_with_torch(net.keras, str(net.script), tolerance=FUNCTION_KEPT)
    (output,) = comparison.outputs
    assert output.shape == {"1d": (1, 32, 3), "mlp": (1, 6, 3)}[kind]  # the 1-D output moved back
    assert output.max_rel <= 1e-4 and output.cosine == pytest.approx(1.0, abs=1e-6)
    expected = "inputs NWC -> NCW for PyTorch; outputs NCW -> NWC back" if kind == "1d" else "the same layout in both"
    assert comparison.layout == expected


def test_load_inputs_are_the_inputs_both_run(ported: dict[str, Ported], tmp_path: Path) -> None:
    net = ported["1d"]
    x = np.random.default_rng(5).standard_normal((3, 40, 4)).astype(np.float32)  # another length, 3 samples
    np.savez(tmp_path / "inputs.npz", input_0=x)
    # (A torch.export archive is specialized to the shape it was exported with: TorchScript here.)
    comparison = compare_with_torch(net.keras, str(net.script), inputs=SmokeOptions(load_inputs=tmp_path / "inputs.npz"))
    assert comparison.inputs == ((3, 40, 4),) and comparison.input_origins == ("from --load-inputs",)
    assert comparison.outputs[0].shape == (3, 40, 3) and comparison.passed(FUNCTION_KEPT)


def test_a_reference_file_whose_weights_are_not_the_state_dicts_says_so(ported: dict[str, Ported]) -> None:
    net = ported["1d"]
    other = {k: (v * 2 if k == "head.weight" else v) for k, v in net.state.items()}
    comparison = compare_with_torch(net.keras, str(net.script), state=other)
    assert comparison.passed(FUNCTION_KEPT)  # the file runs with its own weights, the Keras model's
    (note,) = comparison.notes
    assert "1 of the 8 tensors it shares with the state dict differ (first 'head.weight')" in note, note


def test_a_state_dict_of_big_endian_arrays_and_scalars_loads_into_the_factory(ported: dict[str, Ported]) -> None:
    net = ported["1d"]
    # As a big-endian .pt reads: numpy arrays of another byte order; num_batches_tracked a scalar.
    state = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in net.state.items()}
    assert state["bn.num_batches_tracked"].shape == ()
    comparison = compare_with_torch(net.keras, net.factory, state=state)
    assert comparison.state_tensors == len(state) and comparison.passed(FUNCTION_KEPT)


def test_a_state_dict_that_does_not_fit_the_factory_is_named(ported: dict[str, Ported]) -> None:
    net = ported["2d"]
    state = {k: v for k, v in net.state.items() if k != "fc.bias"}
    state["conv.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    state["head.weight"] = np.zeros((5, 8), np.float32)
    with pytest.raises(ConvSurgeonError) as refused:
        compare_with_torch(net.keras, net.factory, state=state)
    message = str(refused.value)
    assert "the state dict does not fit the module build_2d() returns" in message, message
    for part in ("missing from the state dict: fc.bias", "not in the module: head.weight",
                 "conv.weight (8, 3, 3, 3) != (8, 3, 5, 5)"):
        assert part in message, (part, message)


@pytest.mark.parametrize("factory, expected", [
    ("build_nothing", "build_nothing() returned a str; expected the torch.nn.Module to run"),
    ("build_broken", "build_broken() raised ValueError: no such checkpoint"),
    ("build_3d", "the module has no 'build_3d'; it defines Net1d, Net2d, SequenceMlp, build_1d"),
])
def test_a_factory_that_gives_no_module_is_refused(ported: dict[str, Ported], nets_file: Path,
                                                   factory: str, expected: str) -> None:
    with pytest.raises(ConvSurgeonError) as refused:
        compare_with_torch(ported["mlp"].keras, f"{nets_file}:{factory}")
    assert expected in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


def test_references_that_are_not_one_are_refused_before_torch_runs(torch: Any, tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    cases = {
        str(tmp_path / "state.pt"): "a state dict (torch.save), which holds weights but no model to run",
        str(tmp_path / "notes.txt"): "not a TorchScript or torch.export archive",
        str(tmp_path): "a folder; give a TorchScript file (torch.jit.save)",
        str(tmp_path / "missing.pt"): "no such file, and not module:factory",
        f"{tmp_path / 'missing.py'}:build": f"the module file {tmp_path / 'missing.py'} does not exist",
    }
    for spec, expected in cases.items():
        with pytest.raises(ConvSurgeonError) as refused:
            parse_reference(spec)
        assert str(refused.value).startswith(f"--reference {spec}: ") and expected in str(refused.value), (
            spec, str(refused.value))
    with pytest.raises(UsageError, match="'build-net' is not a Python name"):
        parse_reference("nets:build-net")


def test_without_torch_a_reference_says_how_to_install_it(ported: dict[str, Ported]) -> None:
    net = ported["mlp"]
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as where PyTorch is not installed\n"
        "from conv_surgeon.errors import ConvSurgeonError\n"
        "from conv_surgeon.runtime.torch_reference import compare_with_torch\n"
        "try:\n"
        "    compare_with_torch(sys.argv[1], sys.argv[2])\n"
        "except ConvSurgeonError as exc:\n"
        "    print(exc)\n"
        "    print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(net.keras), str(net.script)],
                          capture_output=True, text=True, check=True)
    message, loaded = done.stdout.splitlines()
    assert message == (f"--reference {net.script}: running a PyTorch reference needs PyTorch, which is not "
                       "installed; pip install 'conv-surgeon[torch]', or drop --reference (the smoke test "
                       "runs without it)")
    assert loaded == "[]"  # said before Keras is imported


def test_the_comparison_renders_as_a_table_and_as_json(ported: dict[str, Ported]) -> None:
    from conv_surgeon.render.reference import print_reference, reference_document
    from conv_surgeon.render.text import console

    net = ported["2d"]
    comparison = compare_with_torch(net.keras, net.factory, state=net.state, tolerance=FUNCTION_KEPT)
    stream = io.StringIO()
    print_reference(console(stream), comparison)
    text = stream.getvalue()
    assert f"checked against PyTorch {comparison.torch_version} (module:factory {net.factory}" in text, text
    assert f"{len(net.state)} tensors of the state dict loaded into it" in text
    for output in comparison.outputs:
        assert f"{output.max_abs:.3g}" in text and f"{output.cosine:.6f}" in text
        assert f"{output.name} the same as PyTorch within atol=0, rtol=0 of the output scale" in text
    document = json.loads(json.dumps(reference_document(comparison)))
    assert document["kind"] == "factory" and document["state_tensors"] == len(net.state)
    assert [o["shape"] for o in document["outputs"]] == [[1, 16, 16, 8], [1, 5]]
    assert document["outputs"][0]["max_abs"] == comparison.outputs[0].max_abs
    assert 0 <= document["outputs"][1]["used"] <= 1
    assert document["expect_same"] == {"atol": 0.0, "rtol": 0.0, "float32_sums": True, "sums": comparison.sums}


# --- through `conv-surgeon port --reference` ------------------------------------------------------


def test_port_with_a_reference_reports_each_output_against_pytorch(cli, ported: dict[str, Ported],
                                                                   tmp_path: Path) -> None:
    net = ported["2d"]
    out = tmp_path / "ported.keras"
    result = cli("port", net.target, "--from", net.state_file, "--reference", net.factory, "--expect-same",
                 "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    reference = json.loads(result.stdout)["smoke"]["reference"]
    assert reference["kind"] == "factory" and reference["state_tensors"] == len(net.state)
    assert reference["inputs"] == [{"shape": [1, 16, 16, 3], "origin": "declared by the file"}]
    assert [o["shape"] for o in reference["outputs"]] == [[1, 16, 16, 8], [1, 5]]
    assert all(o["max_rel"] <= 1e-4 and o["used"] <= 1 for o in reference["outputs"]), reference["outputs"]
    text = cli("port", net.target, "--from", net.state_file, "--reference", net.factory, "--dry-run")
    assert text.exit_code == 0, text.stderr
    assert f"note: --reference {net.factory} runs when the model is written, not in a dry run" in text.stdout


def test_port_of_a_state_dict_with_a_scaled_kernel_fails_against_the_models_own_torchscript(
        cli, ported: dict[str, Ported], torch: Any, tmp_path: Path) -> None:
    net = ported["2d"]
    state = {k: torch.from_numpy(v) for k, v in net.state.items()}
    state["conv.weight"] = state["conv.weight"] * 1.01  # one kernel, 1% off
    torch.save(state, tmp_path / "wrong.pt")
    out = tmp_path / "ported.keras"
    result = cli("port", net.target, "--from", tmp_path / "wrong.pt", "--reference", net.script, "--expect-same",
                 "-o", out)
    assert result.exit_code == ExitCode.SMOKE_FAILED and result.stdout == "", result.stderr
    assert result.stderr.startswith("Error: output 0: the Keras model differs from the PyTorch reference "
                                    f"{net.script} beyond atol=0, rtol=0 of the output scale "), result.stderr
    assert result.stderr.count("\n") == 1 and "max abs error " in result.stderr
    assert not out.exists()


def test_a_stride_2_same_conv_that_port_names_is_caught_by_the_reference(cli, keras: Any, torch: Any,
                                                                         tmp_path: Path) -> None:
    """Keras pads a stride-2 'same' conv bottom/right, PyTorch's padding=1 on every side:
    port names the layer and writes it; the reference shows how far the outputs are."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1)).eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    torch.jit.save(torch.jit.script(net), tmp_path / "net_script.pt")
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, strides=2, padding="same", name="down"),
                              L.ReLU(), L.Conv2D(2, 1, name="head")])
    model.save(tmp_path / "target.keras")
    args = ["port", tmp_path / "target.keras", "--from", tmp_path / "net.pt", "--reference", tmp_path / "net_script.pt"]
    written = cli(*args, "-o", tmp_path / "ported.keras", "--json")
    assert written.exit_code == 0, written.stderr
    (output,) = json.loads(written.stdout)["smoke"]["reference"]["outputs"]
    assert output["max_rel"] > 1e-2  # the borders differ
    refused = cli(*args, "--expect-same", "-o", tmp_path / "checked.keras")
    assert refused.exit_code == ExitCode.SMOKE_FAILED and "Error: output 0: the Keras model differs" in refused.stderr
    assert not (tmp_path / "checked.keras").exists()


def test_port_reference_without_torch_says_how_to_install_it(ported: dict[str, Ported], tmp_path: Path) -> None:
    net = ported["mlp"]
    np.savez(tmp_path / "state.npz", **net.state)  # an .npz needs no torch to port
    code = ("import sys\nsys.modules['torch'] = None\n"  # as if PyTorch were not installed
            f"sys.argv = ['conv-surgeon', 'port', {str(net.target)!r}, '--from', {str(tmp_path / 'state.npz')!r}, "
            f"'--reference', {str(net.script)!r}, '-o', {str(tmp_path / 'o.keras')!r}]\n"
            "from conv_surgeon.cli import main\nmain()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"Error: --reference {net.script}: running a PyTorch reference needs PyTorch, which is "
                           "not installed; pip install 'conv-surgeon[torch]', or drop --reference (the smoke test "
                           "runs without it)\n")
    assert not (tmp_path / "o.keras").exists()
