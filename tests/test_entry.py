"""The console-script entry: exit codes and streams of the installed script, which exits
without the interpreter's teardown."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "conv-surgeon"


@pytest.mark.skipif(not CLI.exists(), reason="needs the installed console script")
def test_console_script_exit_codes_and_output(samples: Path, tmp_path: Path) -> None:
    ok = subprocess.run([CLI, "inspect", samples / "tiny_cnn.keras", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.rstrip().endswith("}") and ok.stderr == ""
    missing = subprocess.run([CLI, "inspect", tmp_path / "nope.keras"], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("Error: ") and missing.stdout == ""
    usage = subprocess.run([CLI, "get", samples / "tiny_cnn.keras"], capture_output=True, text=True)
    assert usage.returncode == 2
    different = subprocess.run([CLI, "diff", samples / "tiny_cnn.keras", samples / "all_convs.keras"],
                               capture_output=True, text=True)
    assert different.returncode == 1
