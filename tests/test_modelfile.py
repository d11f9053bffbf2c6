"""The model reader on real files written by Keras 3 and by tf-keras 2."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conv_surgeon.errors import ModelFileError
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.model.structure import read_structure, read_variables
from conv_surgeon.store.worker import run_bounded
from conv_surgeon.instruments.reading import get_weights, inspect_model

EVERY_CONV_CLASS = {
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
}


def keras_weights_by_path(model) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}

    def walk(layer, prefix: str) -> None:
        for child in getattr(layer, "layers", []):
            path = prefix + child.name
            if child.weights and not hasattr(child, "layers"):
                out[path] = [np.asarray(w.numpy()) for w in child.weights]
            walk(child, path + "/")

    walk(model, "")
    return out


@pytest.mark.parametrize(
    "name",
    [
        "sample_models/all_convs.keras",
        "sample_models/all_convs.h5",
        "sample_models/tiny_cnn.keras",
        "sample_models/tiny_cnn.h5",
        "sample_models/tiny_bf16.keras",
        "tests/data/keras35_nested.keras",
        "tests/data/keras2_tiny.h5",
    ],
)
def test_every_variable_matches_what_keras_loads(name: str) -> None:
    keras = pytest.importorskip("keras")
    path = Path(__file__).resolve().parent.parent / name
    model = keras.saving.load_model(path, compile=False)
    expected = keras_weights_by_path(model)
    source = ModelFile.from_path(path)
    structure = read_structure(source)
    values = read_variables(source, [v for layer in structure.layers for v in layer.variables])
    got = {layer.path: [values[v.dataset] for v in layer.variables] for layer in structure.layers}
    assert set(got) == set(expected)
    for path, arrays in expected.items():
        assert [a.shape for a in got[path]] == [a.shape for a in arrays], path
        for ours, theirs in zip(got[path], arrays):
            np.testing.assert_array_equal(ours.astype(np.float32), theirs.astype(np.float32))


def test_all_conv_classes_and_nested_paths(samples: Path) -> None:
    for name in ("all_convs.keras", "all_convs.h5"):
        structure = read_structure(ModelFile.from_path(samples / name))
        classes = {layer.class_name for layer in structure.conv_layers}
        assert classes == EVERY_CONV_CLASS
        paths = {layer.path for layer in structure.conv_layers}
        # Two nested models each hold a layer called "conv"; one model is nested two deep.
        assert {"seq_block/conv", "func_block/conv", "func_block/deep_block/deep_conv"} <= paths
        by_path = {layer.path: layer for layer in structure.layers}
        assert [v.name for v in by_path["c2d_nobias"].variables] == ["kernel"]
        assert by_path["c2d_grouped"].config["groups"] == 2
        assert [v.name for v in by_path["sep2d"].variables] == ["depthwise_kernel", "pointwise_kernel", "bias"]


def test_bfloat16_variables_are_decoded(samples: Path) -> None:
    source = ModelFile.from_path(samples / "tiny_bf16.keras")
    conv1 = next(layer for layer in read_structure(source).layers if layer.name == "conv1")
    assert [v.dtype for v in conv1.variables] == ["bfloat16", "bfloat16"]
    kernel = read_variables(source, [conv1.variables[0]])[conv1.variables[0].dataset]
    assert str(kernel.dtype) == "bfloat16" and kernel.shape == conv1.variables[0].shape
    assert np.isfinite(kernel.astype(np.float32)).all() and np.abs(kernel.astype(np.float32)).max() > 0


def test_keras2_files_show_stored_names(data_dir: Path) -> None:
    structure = read_structure(ModelFile.from_path(data_dir / "keras2_convs.h5"))
    assert structure.keras_version and structure.keras_version.startswith("2.")
    by_path = {layer.path: layer for layer in structure.layers}
    assert [v.name for v in by_path["dwconv"].variables] == ["depthwise_kernel", "bias"]
    assert all(":" not in v.name for layer in structure.layers for v in layer.variables)
    assert {"inner_block/inner_conv", "frozen_block/frozen_conv"} <= set(by_path)
    # `--kernel`/`get` mean the main kernel whatever the stored name.
    export = get_weights(ModelFile.from_path(data_dir / "keras2_convs.h5"), "dwconv")
    assert list(export.arrays) == ["depthwise_kernel"]


def test_keras2_nested_and_frozen_models_place_weights_by_config(data_dir: Path) -> None:
    """Nested weights are stored trainable-first; a frozen sub-model flips that."""
    import h5py

    source = ModelFile.from_path(data_dir / "keras2_convs.h5")
    by_path = {layer.path: layer for layer in read_structure(source).layers}
    with h5py.File(data_dir / "keras2_convs.h5") as h5:
        for path in ("inner_block/inner_conv", "frozen_block/frozen_conv", "frozen_block/frozen_post"):
            layer = by_path[path]
            for variable in layer.variables:
                # tf-keras names each dataset after its own layer: the placement agrees.
                assert f"/{layer.name}/" in "/" + variable.dataset + "/", variable.dataset
                assert h5[variable.dataset].shape == variable.shape


def test_model_from_bytes_reads_like_the_file(samples: Path) -> None:
    path = samples / "all_convs.keras"
    from_bytes = read_structure(ModelFile.from_stream(io.BytesIO(path.read_bytes())))
    assert from_bytes.layers == read_structure(ModelFile.from_path(path)).layers


def test_inspect_stats(samples: Path) -> None:
    report = inspect_model(ModelFile.from_path(samples / "tiny_cnn.keras"), stats=True)
    conv1 = report.layers[0]
    kernel = read_variables(ModelFile.from_path(samples / "tiny_cnn.keras"), [conv1.variables[0]])
    values = next(iter(kernel.values())).astype(np.float64)
    stats = report.stats[conv1.variables[0].dataset]
    assert stats.min == pytest.approx(values.min()) and stats.max == pytest.approx(values.max())
    assert stats.l2 == pytest.approx(np.linalg.norm(values))
    assert stats.nonfinite == 0


def _zip_with(tmp_path: Path, src: Path, replace: dict[str, bytes]) -> Path:
    out = tmp_path / "edited.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, replace.get(info.filename, zin.read(info.filename)))
    return out


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp, s: tmp / "missing.keras", "no such file"),
        (lambda tmp, s: (tmp / "r.keras").write_bytes(np.random.default_rng(0).bytes(4096)) and tmp / "r.keras", "not a Keras model"),
        (lambda tmp, s: (tmp / "t.keras").write_bytes((s / "tiny_cnn.keras").read_bytes()[:3000]) and tmp / "t.keras", "truncated or corrupt"),
        (lambda tmp, s: (tmp / "t.h5").write_bytes((s / "tiny_cnn.h5").read_bytes()[:3000]) and tmp / "t.h5", "truncated or corrupt"),
        (lambda tmp, s: _zip_with(tmp, s / "tiny_cnn.keras", {"config.json": b'{"class_name": "Seq'}), "config.json is broken"),
        (lambda tmp, s: tmp, "is a directory"),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path: Path, samples: Path, make, expected: str) -> None:
    with pytest.raises(ModelFileError, match=expected) as info:
        read_structure(ModelFile.from_path(make(tmp_path, samples)))
    assert "\n" not in str(info.value)


def test_savedmodel_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(ModelFileError, match="SavedModel directory.*\\.keras and \\.h5"):
        read_structure(ModelFile.from_path(tmp_path))


def test_empty_stdin_is_an_error() -> None:
    with pytest.raises(ModelFileError, match="no model received"):
        ModelFile.from_stream(io.BytesIO(b""))


def test_a_parser_that_never_returns_is_stopped() -> None:
    def spin() -> None:
        while True:
            pass

    start = time.monotonic()
    with pytest.raises(ModelFileError, match="did not finish within 1 s"):
        run_bounded(spin, 1.0, "spin.h5")
    assert time.monotonic() - start < 10


def test_errors_raised_in_the_worker_keep_their_message() -> None:
    def fail() -> None:
        raise ModelFileError("x.keras: broken")

    with pytest.raises(ModelFileError, match="^x.keras: broken$"):
        run_bounded(fail, 5.0, "x.keras")


def test_read_path_never_imports_tensorflow(samples: Path) -> None:
    code = (
        "import sys\n"
        "from conv_surgeon.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"r = CliRunner().invoke(app, ['inspect', {str(samples / 'all_convs.keras')!r}, '--stats'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(app, ['get', {str(samples / 'tiny_cnn.h5')!r}, '--layer', 'conv1', '-o', '-'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_keras35_files_without_name_attributes_get_paths_from_config(data_dir: Path) -> None:
    """Keras < 3.6 wrote no `name` attribute: paths are derived from config.json."""
    import h5py

    path = data_dir / "keras35_nested.keras"
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as member:
        with h5py.File(io.BytesIO(member.read())) as h5:
            names: list[str] = []
            h5.visititems(lambda n, o: names.append(n) if "name" in o.attrs else None)
    assert names == []
    structure = read_structure(ModelFile.from_path(path))
    by_path = {layer.path: layer for layer in structure.layers}
    assert by_path["conv_b"].variables[0].dataset == "layers/conv2d_1/vars/0"
    assert by_path["block/conv_1x1"].variables[0].dataset == "layers/sequential/layers/conv2d_1/vars/0"
    assert by_path["fblock/dw"].variables[0].shape == (3, 3, 4, 1)
    assert by_path["fblock/dw"].variables[0].dataset == "layers/functional/layers/depthwise_conv2d/vars/0"
