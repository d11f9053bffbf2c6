"""Small file helpers shared by the test modules."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


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
