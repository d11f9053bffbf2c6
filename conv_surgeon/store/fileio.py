"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import io
import os
import select
import shutil
import stat
import secrets
import tempfile
import time
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


# How long a named pipe may stay silent before its reader gives up.
PIPE_TIMEOUT_S = 60.0
PIPE_TIMEOUT_VARIABLE = "CONV_SURGEON_PIPE_TIMEOUT"


def memory_bound() -> int:
    """The most bytes a stream (a pipe, stdin) may hold: half the machine's memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 1 << 34


def read_input(path: str | os.PathLike[str], what: str) -> bytes:
    """The whole content of an input file, read with bounds: a regular file as it is; a
    named pipe (``<(cmd)`` too) until its writer ends it, giving up after
    :data:`PIPE_TIMEOUT_S` seconds of silence or past :func:`memory_bound`; a device
    (``/dev/zero``) or a socket refused. ``what`` names it in messages. OSError of a
    missing or unreadable file is the caller's to word."""
    info = os.stat(path)
    if stat.S_ISREG(info.st_mode):
        with open(path, "rb") as handle:
            return handle.read()
    if stat.S_ISFIFO(info.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return read_bounded(fd, what, _pipe_timeout())
        finally:
            os.close(fd)
    raise ConvSurgeonError(f"{what}: {path} is {_kind(info.st_mode)}, not a file; give a file, or pipe "
                           "the bytes in on stdin")


def read_stream(stream: BinaryIO, what: str) -> bytes:
    """Everything ``stream`` (stdin) holds, with :func:`read_input`'s bounds: a pipe is read up
    to :func:`memory_bound`, a device other than a terminal (``< /dev/zero``) is refused."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return stream.read()  # an in-memory stream
    if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and not os.isatty(fd):
        raise ConvSurgeonError(f"{what}: stdin is {_kind(mode)}, not a file or a pipe; pipe a file in "
                               "(`< model.keras`)")
    if stat.S_ISFIFO(mode):
        # The pipe itself, bounded (nothing has read stdin before: its buffer is empty).
        return read_bounded(fd, what, None)
    return stream.read()


def read_bounded(fd: int, what: str, timeout: float | None) -> bytes:
    """Everything a pipe holds until its end, failing past :func:`memory_bound` bytes or
    (``timeout`` not None) after ``timeout`` seconds without a byte."""
    limit = memory_bound()
    chunks: list[bytes] = []
    total = 0
    while True:
        if timeout is not None:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise ConvSurgeonError(
                    f"{what}: nothing arrived for {timeout:.0f} s (a named pipe whose writer has not "
                    f"started, or stopped); start the writer first, or set {PIPE_TIMEOUT_VARIABLE}"
                )
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise ConvSurgeonError(
                f"{what}: more than {limit / 2**30:.1f} GiB arrived and it has not ended (half of this "
                "machine's memory); save it to a file and give the file"
            )
        chunks.append(chunk)


def output_stream(path: Path) -> bool:
    """Whether ``-o path`` names a named pipe or a character device (``/dev/null``,
    ``/dev/stdout``): written as a stream, like ``-o -``, never replaced by a file. A
    block device or a socket is refused."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return True
    if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise ConvSurgeonError(f"{path}: is {_kind(mode)}, not a file; -o needs a file, a named pipe or - for stdout")
    return False


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "not a regular file"


def _pipe_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get(PIPE_TIMEOUT_VARIABLE, PIPE_TIMEOUT_S)))
    except ValueError:
        return PIPE_TIMEOUT_S


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
def atomic_output(path: Path, notes: list[str] | None = None) -> Iterator[Path]:
    """A temporary path beside ``path``; moved onto it only if the block succeeds.

    The temporary file is fsynced before the rename and removed on any failure, so
    ``path`` holds either its old content or the complete new one. A symlink is
    written through, as `cp` would. Failing I/O (no permission, a full disk) is a
    :class:`ConvSurgeonError`, not a crash.
    """
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    if output_stream(path):
        yield from _streamed_output(path)
        return
    check_output_dir(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = fresh_name(folder, f".{path.name}.", ".tmp")
    try:
        try:
            os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            tmp = folder / ""  # not ours (or never made): nothing for the cleanup to remove
            raise ConvSurgeonError(
                f"{path}: cannot write in {folder} ({exc.strerror}); choose another output"
            ) from None
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if path.exists():
            take_over(tmp, path, notes)
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
        if tmp != folder:
            tmp.unlink(missing_ok=True)


def fresh_name(folder: Path, prefix: str, suffix: str) -> Path:
    """A name for a staging file or folder in ``folder`` that nothing else uses, chosen
    before it is created (``tempfile.mkstemp`` tells the name only once the file exists): a
    SIGTERM raised the moment the file appears still finds the name its cleanup removes."""
    return folder / f"{prefix}{secrets.token_hex(8)}{suffix}"


def _streamed_output(path: Path) -> Iterator[Path]:
    """:func:`atomic_output` for a named pipe or a device: the file is staged in the temp
    folder, then copied into ``path`` (a pipe's reader sees the whole file or nothing)."""
    folder = tempfile.mkdtemp(prefix="conv-surgeon-")
    try:
        tmp = Path(folder) / path.name
        yield tmp
        try:
            with open(tmp, "rb") as staged, open(path, "wb") as out:
                shutil.copyfileobj(staged, out, 1 << 20)
        except OSError as exc:
            raise ConvSurgeonError(f"{path}: writing failed ({exc.strerror or exc}); check the reader of the pipe") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def take_over(new: Path, old: Path, notes: list[str] | None) -> None:
    """Give ``new``, about to replace ``old``, the old file's owner, group and mode, as
    `sed -i` does; what cannot be kept (another user's file edited by a non-root user, a
    hard link the rename splits) goes into ``notes``."""
    before = old.stat()
    now = new.stat()
    if (before.st_uid, before.st_gid) != (now.st_uid, now.st_gid):
        try:
            os.chown(new, before.st_uid, before.st_gid)
        except PermissionError:
            try:
                os.chown(new, -1, before.st_gid)
            except PermissionError:
                pass
            if notes is not None:
                notes.append(f"{old} is now owned by user {now.st_uid}: its owner (user {before.st_uid}) "
                             "could not be kept, only root can give a file away")
    os.chmod(new, before.st_mode & 0o7777)  # after chown, which clears set-id bits
    if before.st_nlink > 1 and notes is not None:
        notes.append(f"{old} had {before.st_nlink} hard links: the edit replaced this name only, "
                     "the other links still hold the old model")


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


def replace_files_together(moves: list[tuple[Path, Path]], notes: list[str] | None = None) -> None:
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
                take_over(staged, destination, notes)
                backup = destination.with_name(f".{destination.name}.{os.urandom(6).hex()}.bak")
                os.link(destination, backup)
                backups.append((backup, destination))
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
