"""One writer at a time, and reads that see one version of a file.

Every command that reads a model holds a shared lock on it, and every command that
replaces a file holds an exclusive lock on it, from its first read to its final rename:
an open-file-description lock (``F_OFD_SETLK``) on the file itself, ``flock`` on the
folder of a saved folder; the kernel drops either when the process ends however it ends,
so no lock file is ever left behind. Not ``flock`` on files: HDF5 takes ``flock`` locks
itself when it opens a file, so Keras could not load the original `.h5` beside an edit
holding one; the two kinds of lock do not meet on Linux. A writer
replaces a file by renaming another onto it, so a lock taken on the old file may come
too late: after each lock the path is checked to still name the locked file, and the
lock is taken again on the new one if not (as git's and pip's lock-and-verify loops do).

Before its final rename a writer checks that the file is still the one it read (inode,
size, modification time): a program that does not take these locks (a training script
saving the model) may have written it meanwhile, and its work must not be lost.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from ..errors import ConvSurgeonError
from .model_file import CONFIG_MEMBER, WEIGHTS_MAP, ModelFile, shard_names

P = ParamSpec("P")
T = TypeVar("T")

# How long a command waits for another run that holds the file, before it gives up.
LOCK_WAIT_S = 120.0
LOCK_WAIT_VARIABLE = "CONV_SURGEON_LOCK_WAIT"
_POLL_S = 0.05

FileState = tuple[str, int, int, int, int]  # (relative name, device, inode, size, mtime_ns)


@dataclass(frozen=True)
class Claim:
    """A path to lock: shared to read it, exclusive to replace it. ``files`` are the files
    whose state must not change behind the lock (the path itself when empty)."""

    path: Path
    exclusive: bool
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Held:
    path: Path
    exclusive: bool
    state: tuple[FileState, ...]
    files: tuple[Path, ...]


_held: ContextVar[tuple[Held, ...]] = ContextVar("conv_surgeon_locks", default=())


def lock_wait() -> float:
    """The longest wait for a lock: ``CONV_SURGEON_LOCK_WAIT`` seconds, or :data:`LOCK_WAIT_S`."""
    text = os.environ.get(LOCK_WAIT_VARIABLE)
    if text is None:
        return LOCK_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise ConvSurgeonError(
            f"{LOCK_WAIT_VARIABLE}={text!r}: expected a number of seconds between 0 and 86400; "
            "fix or unset it"
        )
    return value


@contextmanager
def locked(claims: Sequence[Claim], on_wait: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Hold every claim's lock for the block: all of them, taken in one order (the paths
    sorted) so that two runs never wait for each other in a circle.

    A path that does not exist, or is not a regular file or a folder, is not locked
    (there is nothing to replace, or no way to lock it). Waits up to :func:`lock_wait`
    seconds for another run, calling ``on_wait(path)`` once when it starts waiting; then
    refuses in one line.
    """
    wanted: dict[str, Claim] = {}
    for claim in claims:
        key = os.path.realpath(claim.path)
        earlier = wanted.get(key)
        if earlier is None or (claim.exclusive and not earlier.exclusive):
            wanted[key] = claim
    descriptors: list[int] = []
    held: list[Held] = []
    try:
        for key in sorted(wanted):
            claim = wanted[key]
            got = _lock(Path(key), claim.exclusive, on_wait, claim.path)
            if got is None:
                continue
            descriptors.append(got)
            files = claim.files or (Path(key),)
            held.append(Held(Path(key), claim.exclusive, file_states(files, Path(key)), files))
        token = _held.set(_held.get() + tuple(held))
        try:
            yield
        finally:
            _held.reset(token)
    finally:
        for fd in descriptors:
            os.close(fd)  # closing the last descriptor of the file drops its lock


def check_unchanged(path: Path) -> None:
    """Refuse, in one line, when a file this run locked (to replace it, or to read it in
    place) changed since the lock was taken. Nothing to check for an unlocked path."""
    key = Path(os.path.realpath(path))
    for held in _held.get():
        if held.path == key and file_states(held.files, held.path) != held.state:
            raise ConvSurgeonError(
                f"{path}: changed by another process while conv-surgeon worked on it; nothing was "
                "written, run the command again on the new file"
            )


def file_states(files: Sequence[Path], base: Path) -> tuple[FileState, ...]:
    """What identifies each file's content: device, inode, size, modification time."""
    states = []
    for file in files:
        try:
            info = os.stat(file)
        except OSError:
            info = None
        name = os.path.relpath(file, base) if base.is_dir() else file.name
        states.append((name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) if info is not None
                      else (name, -1, -1, -1, -1))
    return tuple(states)


def _lock(path: Path, exclusive: bool, on_wait: Callable[[Path], None] | None, shown: Path) -> int | None:
    """A descriptor holding the lock on the file ``path`` names now; None when ``path`` is
    not something to lock."""
    deadline = None
    while True:
        try:
            info = os.stat(path)
        except OSError:
            return None
        folder = stat.S_ISDIR(info.st_mode)
        if not (stat.S_ISREG(info.st_mode) or folder):
            return None
        fd, exclusive_here = _open_to_lock(path, exclusive and not folder)
        if fd is None:
            return None  # unreadable: the read itself will say so
        take = functools.partial(_flock, fd, exclusive) if folder else functools.partial(_file_lock, fd, exclusive_here)
        try:
            if not take():
                if deadline is None:
                    deadline = time.monotonic() + lock_wait()
                    if on_wait is not None:
                        on_wait(shown)
                while not take():
                    if time.monotonic() >= deadline:
                        raise ConvSurgeonError(
                            f"{shown}: another conv-surgeon run is {'using' if exclusive else 'writing'} "
                            f"it; waited {lock_wait():.0f} s and gave up{', nothing was written' if exclusive else ''}; "
                            f"run the command again when it has finished (or set {LOCK_WAIT_VARIABLE} to "
                            "wait longer)"
                        )
                    time.sleep(_POLL_S)
            now = os.fstat(fd)
            try:
                current = os.stat(path)
            except OSError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced while we waited: lock the new file


def _open_to_lock(path: Path, write: bool) -> tuple[int | None, bool]:
    """A descriptor to lock ``path`` through, and whether it can hold an exclusive lock (a
    write lock needs a descriptor open for writing; a file the user may replace but not
    write gets a shared one, and the check before the rename guards it)."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    if write:
        try:
            return os.open(path, os.O_RDWR | flags), True
        except OSError:
            pass
    try:
        return os.open(path, os.O_RDONLY | flags), False
    except OSError:
        return None, False


_WHOLE_FILE_LOCK = "hhqqi4x"  # struct flock: type, whence, start, length (0: to the end), pid (0)


def _file_lock(fd: int, exclusive: bool) -> bool:
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_WHOLE_FILE_LOCK, kind, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return True  # a file system without locks (some network mounts): go on unlocked
        raise
    return True


def _flock(fd: int, exclusive: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return True  # a file system without locks (some network mounts): go on unlocked
        raise
    return True


def claim_model(model: ModelFile, exclusive: bool) -> list[Claim]:
    """The claims that cover a model's files: the file, or the folder (or shard map) and
    every file of it; its ``--config`` model read-only. None for a model read from stdin."""
    claims = []
    if model.path is not None:
        claims.append(Claim(model.path, exclusive, tuple(model_files(model.path))))
    if model.config is not None:
        claims.append(Claim(model.config, False))
    return claims


def model_files(path: Path) -> list[Path]:
    """The files whose content makes the model at ``path``: the file, every file of a
    folder, or a shard map and its shards (as far as they can be told; reading the model
    reports what is wrong with it)."""
    if path.is_dir():
        if not (path / CONFIG_MEMBER).is_file():
            return [path]  # not a saved model (a folder an output goes into): not walked
        return sorted(entry for entry in path.rglob("*") if entry.is_file() and not entry.is_symlink())
    if path.name.lower().endswith(".json") or path.name == WEIGHTS_MAP:
        try:
            return [path, *(path.parent / name for name in shard_names(path, str(path)))]
        except (ConvSurgeonError, OSError, RecursionError, ValueError, TypeError):
            return [path]
    return [path]


def say_waiting(path: Path) -> None:
    sys.stderr.write(f"conv-surgeon: waiting for another run to finish with {path} "
                     f"(up to {lock_wait():.0f} s)\n")
    sys.stderr.flush()


def reading_models(instrument: Callable[P, T]) -> Callable[P, T]:
    """An instrument that reads the models it is given under a shared lock on each: no
    writer replaces them while it reads them, however often it opens them."""

    @functools.wraps(instrument)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        models = [value for value in (*args, *kwargs.values()) if isinstance(value, ModelFile)]
        with locked([claim for model in models for claim in claim_model(model, False)], say_waiting):
            return instrument(*args, **kwargs)

    return run
