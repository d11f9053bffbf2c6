"""Small file helpers shared by the test modules."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> dict[str, str]:
    """Every file in ``folder``, hidden temporaries included, with its hash."""
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def copy_into(folder: Path, src: Path, name: str | None = None) -> Path:
    """A copy of ``src`` in ``folder`` (under ``name`` if given)."""
    dst = folder / (name or src.name)
    shutil.copyfile(src, dst)
    return dst


def assert_one_error_line(result, exit_code: int, *parts: str) -> None:
    """A CLI result that failed with ``exit_code`` and one ``Error:`` line naming ``parts``."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr, (part, result.stderr)


def loaded_after_command(argv: list[str], modules: tuple[str, ...], then: str = "") -> dict[str, object]:
    """Run the Typer app on ``argv`` in a fresh interpreter, then the Python code ``then``:
    ``{"status": the command's exit status, "loaded": which of modules were imported}``."""
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
        f"{then}\n"
        f"loaded = sorted(m for m in {modules!r} if m in sys.modules)\n"
        "print(json.dumps({'status': status, 'loaded': loaded}))\n"
    )
    return last_line_as_json(code)


def last_line_as_json(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; its last line of stdout is a JSON object."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return found


def model_outputs(model, inputs) -> list:
    """A Keras model's outputs as numpy arrays. TensorFlow's CPU kernels without oneDNN (as
    the tests and the tool's check run them) take channels_last convolutions only; a
    channels_first model runs compiled by XLA, as the check runs it."""
    import numpy as np

    feed = inputs if len(inputs) > 1 else inputs[0]
    try:
        out = model(feed, training=False)
    except Exception as exc:  # noqa: BLE001 - only the channels_last-only refusal is retried
        if "only supports the NHWC tensor format" not in str(exc):
            raise
        import tensorflow as tf

        out = tf.function(lambda x: model(x, training=False), jit_compile=True)(feed)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def archive_with(src: Path, out: Path, members: dict[str, bytes]) -> Path:
    """A copy of the zip archive ``src`` at ``out`` with some members' bytes replaced:
    the same members in the same order, each stored as in ``src``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, members.get(info.filename, zin.read(info.filename)))
    return out
