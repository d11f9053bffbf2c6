"""The architecture at run time: what a command and the lower parts leave unimported.

The import rules between the parts are import-linter contracts in pyproject.toml, which
`make test` checks statically; these tests run the code and look at ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _last_line_as_json(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; its last line of stdout is a JSON object."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return found


def test_set_without_smoke_test_on_a_float32_model_imports_neither_tensorflow_nor_ml_dtypes(
    samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.keras"
    argv = ["conv-surgeon", "set", str(samples / "tiny_cnn.keras"), "--layer", "conv1",
            "--kernel", str(samples / "sobel.npy"), "--no-smoke", "-o", str(out)]
    # The console script (conv_surgeon.entry) ends in os._exit, so call the Typer app itself.
    code = (
        "import json, sys\n"
        f"sys.argv = {argv!r}\n"
        "from conv_surgeon.cli import main\n"
        "try:\n"
        "    main()\n"
        "    status = 0\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "loaded = sorted(m for m in ('ml_dtypes', 'tensorflow', 'keras') if m in sys.modules)\n"
        "print(json.dumps({'status': status, 'loaded': loaded}))\n"
    )
    assert _last_line_as_json(code) == {"status": 0, "loaded": []}
    assert out.is_file()


def test_store_model_edits_and_render_import_without_tensorflow_or_keras() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "names = ['conv_surgeon.render']\n"
        "for part in ('store', 'model', 'edits'):\n"
        "    package = importlib.import_module('conv_surgeon.' + part)\n"
        "    names += [package.__name__] + [m.name for m in pkgutil.iter_modules(package.__path__, package.__name__ + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras', 'keras_hub') if m in sys.modules)\n"
        "print(json.dumps({'modules': len(names), 'loaded': loaded}))\n"
    )
    found = _last_line_as_json(code)
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
    assert _last_line_as_json(code) == {"layers": 19, "loaded": []}
