"""The architecture at run time: what a command and the lower parts leave unimported.

The import rules between the parts are import-linter contracts in pyproject.toml, which
`make test` checks statically; these tests run the code and look at ``sys.modules``.
"""

from __future__ import annotations

from pathlib import Path

from helpers import last_line_as_json, loaded_after_command


def test_set_without_smoke_test_on_a_float32_model_imports_neither_tensorflow_nor_ml_dtypes(
    samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.keras"
    argv = ["conv-surgeon", "set", str(samples / "tiny_cnn.keras"), "--layer", "conv1",
            "--kernel", str(samples / "sobel.npy"), "--no-smoke", "-o", str(out)]
    assert loaded_after_command(argv, ("ml_dtypes", "tensorflow", "keras")) == {"status": 0, "loaded": []}
    assert out.is_file()


def test_fold_bn_and_equalize_without_smoke_test_never_import_tensorflow(samples: Path, tmp_path: Path) -> None:
    """Graph surgery is computed from the file: TensorFlow only checks it."""
    for command in ("fold-bn", "equalize"):
        out = tmp_path / f"{command}.keras"
        argv = ["conv-surgeon", command, str(samples / "tiny_cnn.keras"), "--no-smoke", "-o", str(out)]
        assert loaded_after_command(argv, ("tensorflow", "keras")) == {"status": 0, "loaded": []}


def test_store_model_edits_render_and_pictures_import_without_tensorflow_or_keras() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "names = ['conv_surgeon.render']\n"
        "for part in ('store', 'model', 'edits', 'pictures'):\n"
        "    package = importlib.import_module('conv_surgeon.' + part)\n"
        "    names += [package.__name__] + [m.name for m in pkgutil.iter_modules(package.__path__, package.__name__ + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras', 'keras_hub') if m in sys.modules)\n"
        "print(json.dumps({'modules': len(names), 'loaded': loaded}))\n"
    )
    found = last_line_as_json(code)
    assert found["loaded"] == []
    assert isinstance(found["modules"], int) and found["modules"] > 15  # every module was found


def test_inspect_of_a_keras_3_save_imports_neither_numpy_nor_h5py(samples: Path) -> None:
    # The pure-Python HDF5 reader reads the structure; nothing needs numpy for it.
    model = str(samples / "all_convs.keras")
    code = (
        "import contextlib, io, json, sys\n"
        "import conv_surgeon as cs\n"
        f"layers = len(cs.inspect({model!r}, all_layers=True).layers)\n"
        "from conv_surgeon.cli import main\n"
        f"sys.argv = ['conv-surgeon', 'inspect', {model!r}]\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main()\n"
        "loaded = sorted(m for m in ('numpy', 'h5py') if m in sys.modules)\n"
        "print(json.dumps({'layers': layers, 'loaded': loaded}))\n"
    )
    assert last_line_as_json(code) == {"layers": 19, "loaded": []}
