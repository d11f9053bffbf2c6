"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import ConvSurgeonError

if TYPE_CHECKING:  # numpy only where arrays are written: a picture's PNG needs none
    import numpy as np


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one existing file (through links, ./, absolute paths)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting(output: str | Path, protected: str | Path | None, option: str) -> None:
    """An output must never be the input model: that is what --in-place is for."""
    if protected not in (None, "-") and same_file(output, protected):
        raise ConvSurgeonError(
            f"{option} {output} is the input model {protected}; refusing to overwrite it, "
            "choose another file"
        )


def check_output_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ConvSurgeonError(f"{path}: {parent} is a file, not a directory; choose another -o")
    if not parent.is_dir():
        raise ConvSurgeonError(
            f"{path}: output directory {parent} does not exist; create it first or choose "
            "another -o"
        )
    if path.is_dir():
        raise ConvSurgeonError(f"{path}: is a directory; -o needs a file name")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``; moved onto it only if the block succeeds.

    The temporary file is fsynced before the rename and removed on any failure, so
    ``path`` holds either its old content or the complete new one. A symlink is
    written through, as `cp` would. Failing I/O (no permission, a full disk) is a
    :class:`ConvSurgeonError`, not a crash.
    """
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    check_output_dir(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConvSurgeonError(
            f"{path}: cannot write in {folder} ({exc.strerror}); choose another output"
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if path.exists():
            # Keep the permissions of the file being replaced, as `cp` would.
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConvSurgeonError(
            f"{path}: writing failed ({exc.strerror or exc}); nothing was written, check the "
            "free space and permissions of its folder"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through ``write`` (its result is ignored) with :func:`atomic_output`."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def npy_bytes(array: np.ndarray) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive of ``arrays``, written member by member: ``np.savez`` would also
    store a stray ``allow_pickle`` array on numpy < 2.1, and refuse a key named ``file``."""
    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def safetensors_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return bytes(save({name: np.ascontiguousarray(array) for name, array in arrays.items()}))


def h5_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An HDF5 file with one dataset per array, named by its key (``conv1/kernel`` makes a group)."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for name, array in arrays.items():
            h5.create_dataset(name, data=array)
    return buffer.getvalue()


def replace_files_together(moves: list[tuple[Path, Path]]) -> None:
    """Move each staged file onto its destination: all of them, or (on any failure) none.

    Each staged file is fsynced first; each destination that exists is kept as a hard
    link until every move has succeeded, and put back if one fails. Failing I/O is a
    :class:`ConvSurgeonError`, as in :func:`atomic_output`.
    """
    backups: list[tuple[Path, Path]] = []  # (backup, destination)
    created: list[Path] = []
    try:
        for staged, _ in moves:
            with open(staged, "rb+") as handle:
                os.fsync(handle.fileno())
        for staged, destination in moves:
            if destination.exists():
                # os.link refuses an existing name, so a clash fails the commit, never a file.
                backup = destination.with_name(f".{destination.name}.{os.urandom(6).hex()}.bak")
                os.link(destination, backup)
                backups.append((backup, destination))
                os.chmod(staged, destination.stat().st_mode & 0o7777)
            else:
                created.append(destination)
            os.replace(staged, destination)
    except OSError as exc:
        for backup, destination in backups:
            os.replace(backup, destination)
        for destination in created:
            destination.unlink(missing_ok=True)
        raise ConvSurgeonError(
            f"{moves[0][1].parent}: writing failed ({exc.strerror or exc}); nothing was "
            "changed, check the free space and permissions of the folder"
        ) from None
    for backup, _ in backups:
        backup.unlink(missing_ok=True)
