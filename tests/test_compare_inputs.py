"""--compare on inputs that hide the edit, the edited layers' own outputs, and the checks
of --load-inputs and --input-shape that come before any forward pass.

Every model is built and saved by real Keras in tmp_path; the numbers of a layer
comparison are checked against the layer's output computed here with Keras itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conv_surgeon.errors import ConvSurgeonError, ExitCode
from conv_surgeon.instruments.set_weights import WeightRequest, set_weights
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.runtime.smoke import run_smoke_test
from conv_surgeon.runtime.checks import SmokeReport
from conv_surgeon.transaction.transaction import Destination, WriteOptions
from conv_surgeon.runtime.checks import SmokeOptions

ADVICE = "the comparison cannot show the edit's effect: use --load-inputs with real data"


def depthwise_then(keras, path: Path, *head, input_shape=(16, 16, 3)) -> Path:
    """Input -> DepthwiseConv2D 'dw' -> ``head``, saved at ``path``."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(input_shape), keras.layers.DepthwiseConv2D(3, padding="same", name="dw"),
                              *head])
    model.save(path)
    return path


def dead_relu(keras, path: Path, *head) -> Path:
    """The depthwise conv feeds a ReLU that nothing passes: the pooled output is 0 for any input."""
    return depthwise_then(
        keras, path, keras.layers.Conv2D(4, 1, name="mix", bias_initializer=keras.initializers.Constant(-100.0)),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), *head)


def edited_kernel(keras, model_path: Path, layer: str, tmp_path: Path, scale: float = 1.5, noise: float = 0.1) -> Path:
    """A new depthwise kernel for ``layer``: the old one scaled, plus noise, as a .npy."""
    old = keras.saving.load_model(model_path).get_layer(layer).kernel.numpy()
    drawn = np.random.default_rng(7).standard_normal(old.shape).astype(np.float32)
    path = tmp_path / f"{layer.replace('/', '_')}.npy"
    np.save(path, (scale * old + noise * drawn).astype(np.float32))
    return path


def compare(model_path: Path, layer: str, kernel: Path, out: Path, **smoke) -> SmokeReport:
    report = set_weights(ModelFile.from_path(model_path), layer,
                         [WeightRequest("depthwise_kernel", source=str(kernel))],
                         WriteOptions(Destination(path=out), SmokeOptions(compare=True, **smoke)))
    assert report.smoke is not None
    return report.smoke


def layer_output(keras, model_path: Path, layer: str, inputs: np.ndarray) -> np.ndarray:
    model = keras.saving.load_model(model_path)
    return keras.Model(model.inputs, model.get_layer(layer).output)([inputs]).numpy().astype(np.float64)


# --- inputs that make the output constant ----------------------------------------------


def test_a_constant_output_is_named_and_the_edited_layer_shows_the_change(keras, tmp_path: Path) -> None:
    model = dead_relu(keras, tmp_path / "dead.keras")
    out, saved = tmp_path / "out.keras", tmp_path / "inputs.npz"
    smoke = compare(model, "dw", edited_kernel(keras, model, "dw", tmp_path), out, save_inputs=saved)

    (output,) = smoke.comparisons
    assert (output.max_abs, output.cosine) == (0.0, 1.0)  # what --compare said before: nothing changed
    (dw,) = smoke.layer_comparisons
    with np.load(saved) as bundle:
        x = bundle["input_0"]
    a, b = layer_output(keras, model, "dw", x), layer_output(keras, out, "dw", x)
    assert dw.name == "dw"
    assert dw.max_abs == pytest.approx(np.abs(b - a).max(), rel=1e-6) and dw.max_abs > 0.1
    assert dw.mean_abs == pytest.approx(np.abs(b - a).mean(), rel=1e-6)
    assert dw.cosine == pytest.approx(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-9)
    assert dw.cosine < 0.999
    assert smoke.notes == (
        f"output 0 (1, 4) is constant on these inputs (every value 0), while the output of layer 'dw' "
        f"changed by up to {dw.max_abs:.3g}; {ADVICE}",
        f"inputs saved to {saved}",
    )


def test_a_saturated_softmax_is_the_same_after_the_edit_and_says_so(keras, tmp_path: Path) -> None:
    # Logits thousands apart: the softmax is one-hot before and after the conv's kernel is
    # scaled (which scales the logits, so the largest stays the largest).
    model = depthwise_then(
        keras, tmp_path / "saturated.keras", keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(stddev=1e4, seed=1)),
        keras.layers.Softmax())
    kernel = edited_kernel(keras, model, "dw", tmp_path, scale=1.1, noise=0.0)
    smoke = compare(model, "dw", kernel, tmp_path / "out.keras")
    (dw,) = smoke.layer_comparisons
    assert smoke.outputs[0].min == 0.0 and smoke.outputs[0].max == 1.0
    assert smoke.comparisons[0].max_abs == 0.0 and dw.max_abs > 0
    assert smoke.notes == (
        "output 0 (1, 3) is the same in the original and the edited model (max abs difference 0) though "
        f"the edit changed variables, while the output of layer 'dw' changed by up to {dw.max_abs:.3g}; {ADVICE}",
    )


def test_an_output_that_ignores_its_inputs_is_named(keras, tmp_path: Path) -> None:
    # Behind the dead ReLU, a Dense answers its bias whatever the input.
    model = dead_relu(keras, tmp_path / "bias.keras",
                      keras.layers.Dense(3, bias_initializer=keras.initializers.RandomNormal(seed=2)))
    inputs = tmp_path / "three.npz"
    np.savez(inputs, input_0=np.random.default_rng(3).standard_normal((3, 16, 16, 3)).astype(np.float32))
    smoke = compare(model, "dw", edited_kernel(keras, model, "dw", tmp_path), tmp_path / "out.keras",
                    load_inputs=inputs)
    (dw,) = smoke.layer_comparisons
    assert smoke.notes == (
        f"inputs from {inputs}",
        f"output 0 (3, 3) is the same for each of the 3 inputs, while the output of layer 'dw' changed by "
        f"up to {dw.max_abs:.3g}; {ADVICE}",
    )


def test_an_output_the_edit_changes_gets_no_note(keras, tmp_path: Path) -> None:
    model = depthwise_then(keras, tmp_path / "plain.keras", keras.layers.GlobalAveragePooling2D())
    smoke = compare(model, "dw", edited_kernel(keras, model, "dw", tmp_path), tmp_path / "out.keras")
    assert smoke.comparisons[0].max_abs > 0 and smoke.layer_comparisons[0].max_abs > 0
    assert smoke.notes == ()


def test_the_same_model_compared_with_itself_is_not_suspicious(keras, tmp_path: Path) -> None:
    model = depthwise_then(keras, tmp_path / "plain.keras", keras.layers.GlobalAveragePooling2D())
    smoke = run_smoke_test(model, SmokeOptions(compare=True), original=model)
    assert smoke.comparisons[0].max_abs == 0.0 and smoke.layer_comparisons == () and smoke.notes == ()


def test_expect_same_judges_the_model_outputs_only(cli, keras, tmp_path: Path) -> None:
    model = dead_relu(keras, tmp_path / "dead.keras")
    result = cli("set", model, "--layer", "dw", "--weight", f"depthwise_kernel={edited_kernel(keras, model, 'dw', tmp_path)}",
                 "-o", tmp_path / "out.keras", "--compare", "--expect-same", "--json")
    assert result.exit_code == 0, result.stderr
    (note,) = json.loads(result.stdout)["smoke"]["notes"]
    assert note.startswith("output 0 (1, 4) is constant on these inputs (every value 0), while the output of layer 'dw'")


def test_an_untrained_mobilenet_v2_says_its_output_is_constant(keras, architectures, tmp_path: Path) -> None:
    """The report of the issue: a depthwise edit changed its layer's output, --compare said cosine 1."""
    model = architectures.file("MobileNetV2")  # built once per session (tests/architectures.py)
    kernel = edited_kernel(keras, model, "block_1_depthwise", tmp_path)
    smoke = compare(model, "block_1_depthwise", kernel, tmp_path / "out.keras")
    (layer,) = smoke.layer_comparisons
    assert layer.name == "block_1_depthwise" and layer.max_abs > 0.01 and layer.cosine < 0.999
    assert smoke.comparisons[0].cosine == pytest.approx(1.0)
    (note,) = smoke.notes
    assert note.startswith("output 0 (1, 1000) is constant on these inputs (every value 0.001")
    assert note.endswith(f", while the output of layer 'block_1_depthwise' changed by up to {layer.max_abs:.3g}; {ADVICE}")


# --- which edited layers can be run alone ------------------------------------------------


def test_a_layer_of_a_legacy_h5_model_is_compared(keras, tmp_path: Path) -> None:
    model = depthwise_then(keras, tmp_path / "legacy.h5", keras.layers.GlobalAveragePooling2D())
    out = tmp_path / "out.h5"
    smoke = compare(model, "dw", edited_kernel(keras, model, "dw", tmp_path), out, save_inputs=tmp_path / "x.npz")
    with np.load(tmp_path / "x.npz") as bundle:
        x = bundle["input_0"]
    (dw,) = smoke.layer_comparisons
    assert dw.max_abs == pytest.approx(
        np.abs(layer_output(keras, out, "dw", x) - layer_output(keras, model, "dw", x)).max(), rel=1e-6)


def test_a_layer_inside_another_is_skipped_with_a_note(keras, tmp_path: Path) -> None:
    inner_input = keras.Input((8, 8, 3))
    block = keras.Model(inner_input, keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(inner_input),
                        name="block")
    x = keras.Input((8, 8, 3))
    model = tmp_path / "nested.keras"
    keras.Model(x, keras.layers.GlobalAveragePooling2D()(block(x))).save(model)
    kernel = tmp_path / "dw.npy"
    np.save(kernel, np.ones((3, 3, 3, 1), np.float32))
    smoke = compare(model, "block/dw", kernel, tmp_path / "out.keras")
    assert smoke.layer_comparisons == ()
    assert smoke.notes == ("layer 'block/dw' is not compared: it is inside layer 'block', and only the "
                           "model's own layers have an output to run to",)
    assert smoke.comparisons[0].max_abs > 0


def test_a_shared_layer_is_skipped_with_a_note(keras, tmp_path: Path) -> None:
    x = keras.Input((8, 8, 3))
    shared = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")
    model = tmp_path / "shared.keras"
    keras.Model(x, keras.layers.GlobalAveragePooling2D()(shared(shared(x)))).save(model)
    kernel = tmp_path / "dw.npy"
    np.save(kernel, np.ones((3, 3, 3, 1), np.float32))
    smoke = compare(model, "dw", kernel, tmp_path / "out.keras")
    assert smoke.layer_comparisons == ()
    assert smoke.notes == ("layer 'dw' is not compared: the model calls it 2 times, so it has no single output",)


def test_a_layer_after_a_relu_compares_without_a_warning(keras, tmp_path: Path, recwarn) -> None:
    # Where the ReLU let nothing through, 'mix' gives its bias, 0 in the original; a bias of
    # 1000 there is a relative error beyond float64.
    model = depthwise_then(keras, tmp_path / "relu.keras", keras.layers.ReLU(name="act"),
                           keras.layers.Conv2D(2, 1, name="mix"), keras.layers.GlobalAveragePooling2D())
    bias = tmp_path / "bias.npy"
    np.save(bias, np.full((2,), 1e3, np.float32))
    report = set_weights(ModelFile.from_path(model), "mix", [WeightRequest("bias", source=str(bias))],
                         WriteOptions(Destination(path=tmp_path / "out.keras"), SmokeOptions(compare=True)))
    assert report.smoke is not None
    (mix,) = report.smoke.layer_comparisons
    assert mix.name == "mix" and mix.max_abs > 1 and mix.max_rel == float("inf")
    assert [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)] == []


# --- --load-inputs: checked before any forward pass --------------------------------------


def mnist_like(keras, path: Path) -> Path:
    return depthwise_then(keras, path, keras.layers.GlobalAveragePooling2D(), input_shape=(28, 28, 1))


def set_cli(cli, model: Path, tmp_path: Path, *extra: str, channels: int = 1):
    kernel = tmp_path / "dw.npy"
    np.save(kernel, np.ones((3, 3, channels, 1), np.float32))
    return cli("set", model, "--layer", "dw", "--weight", f"depthwise_kernel={kernel}", "-o", tmp_path / "out.keras",
               *extra)


def test_an_npy_given_to_load_inputs_says_how_to_make_an_npz(cli, keras, tmp_path: Path) -> None:
    model = mnist_like(keras, tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28, 1), np.float32))
    result = set_cli(cli, model, tmp_path, "--load-inputs", tmp_path / "x.npy", "--compare")
    assert result.exit_code == ExitCode.FAILED
    assert result.stderr == (
        f"Error: --load-inputs {tmp_path / 'x.npy'}: expected an .npz file with one array per model input, "
        f"received a single .npy array (1, 28, 28, 1); save it with np.savez('{tmp_path / 'x.npz'}', "
        f"input_0=np.load('{tmp_path / 'x.npy'}')) and pass that file\n"
    )
    assert not (tmp_path / "out.keras").exists()


def test_the_npy_is_refused_before_keras_loads_the_model(keras, tmp_path: Path) -> None:
    model = tmp_path / "lambda.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)]).save(model)
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    # Loading this model without --unsafe fails: the inputs file is looked at first.
    with pytest.raises(ConvSurgeonError, match=r"received a single \.npy array \(1, 4\)") as info:
        run_smoke_test(model, SmokeOptions(load_inputs=tmp_path / "x.npy"))
    assert info.value.exit_code == ExitCode.FAILED


def test_an_unreadable_inputs_file_is_bad_input_not_a_smoke_failure(cli, keras, tmp_path: Path) -> None:
    model = mnist_like(keras, tmp_path / "m.keras")
    (tmp_path / "x.npz").write_text("not an archive")
    result = set_cli(cli, model, tmp_path, "--load-inputs", tmp_path / "x.npz")
    assert result.exit_code == ExitCode.FAILED
    assert result.stderr.startswith(f"Error: --load-inputs {tmp_path / 'x.npz'}: not a readable .npz file (")
    assert result.stderr.endswith("; save the inputs with np.savez('inputs.npz', input_0=x) (one key per model input)\n")
    assert not (tmp_path / "out.keras").exists()


def test_inputs_of_another_shape_name_both_shapes(cli, keras, tmp_path: Path) -> None:
    model = mnist_like(keras, tmp_path / "m.keras")
    np.savez(tmp_path / "x.npz", input_0=np.zeros((1, 32, 32, 1), np.float32))
    result = set_cli(cli, model, tmp_path, "--load-inputs", tmp_path / "x.npz")
    assert result.exit_code == ExitCode.FAILED
    assert result.stderr == (
        f"Error: --load-inputs {tmp_path / 'x.npz'}: model input 0 expects (None, 28, 28, 1), received "
        "(1, 32, 32, 1) (array 'input_0'); save arrays of that shape with np.savez(FILE, input_0=...)\n"
    )
    assert not (tmp_path / "out.keras").exists()


def test_inputs_without_the_batch_axis_say_to_add_it(keras, tmp_path: Path) -> None:
    model = mnist_like(keras, tmp_path / "m.keras")
    np.savez(tmp_path / "x.npz", input_0=np.zeros((28, 28, 1), np.float32))
    with pytest.raises(ConvSurgeonError) as info:
        run_smoke_test(model, SmokeOptions(load_inputs=tmp_path / "x.npz"))
    assert str(info.value) == (
        f"--load-inputs {tmp_path / 'x.npz'}: model input 0 expects (None, 28, 28, 1), received (28, 28, 1) "
        "(array 'input_0'); add the batch axis: np.savez(FILE, input_0=x[None])"
    )


def test_inputs_with_different_sample_counts_are_refused(keras, tmp_path: Path) -> None:
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    model = tmp_path / "two.keras"
    keras.Model([a, b], keras.layers.Add()([a, b])).save(model)
    np.savez(tmp_path / "x.npz", input_0=np.zeros((2, 4), np.float32), input_1=np.zeros((3, 4), np.float32))
    with pytest.raises(ConvSurgeonError, match=r"\(2, 4\) and \(3, 4\), different numbers of samples"):
        run_smoke_test(model, SmokeOptions(load_inputs=tmp_path / "x.npz"))


# --- --input-shape mistakes are usage errors ----------------------------------------------


def test_an_input_shape_of_another_size_is_a_usage_error(cli, keras, tmp_path: Path) -> None:
    model = mnist_like(keras, tmp_path / "m.keras")
    result = set_cli(cli, model, tmp_path, "--input-shape", "32,32,1")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr == (
        "Error: --input-shape (32, 32, 1) does not fit model input 0 (None, 28, 28, 1) (batch axis "
        "excluded: (28, 28, 1)); give the sizes for its None axes\n"
    )
    assert not (tmp_path / "out.keras").exists()


@pytest.mark.parametrize("shapes", [["28,28"], ["28,28,1,1"], ["28,28,1", "28,28,1"]])
def test_an_input_shape_of_another_rank_or_count_is_a_usage_error(cli, keras, tmp_path: Path, shapes) -> None:
    model = mnist_like(keras, tmp_path / "m.keras")
    result = set_cli(cli, model, tmp_path, *[arg for shape in shapes for arg in ("--input-shape", shape)])
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert result.stderr.startswith("Error: --input-shape") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out.keras").exists()


def test_an_input_shape_that_fits_but_fails_is_still_a_smoke_failure(cli, keras, tmp_path: Path) -> None:
    model = depthwise_then(keras, tmp_path / "free.keras", keras.layers.Reshape((-1, 12)), input_shape=(None, None, 3))
    result = set_cli(cli, model, tmp_path, "--input-shape", "5,5,3", channels=3)
    assert result.exit_code == ExitCode.SMOKE_FAILED, result.stderr
    assert "--input-shape" in result.stderr and not (tmp_path / "out.keras").exists()

