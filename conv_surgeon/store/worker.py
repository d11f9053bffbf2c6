"""Untrusted files read through h5py are parsed in a forked worker that is killed after
a time limit.

HDF5 can loop forever on a corrupt file inside C code that no Python signal can
interrupt (seen on 5 of 500 byte-damaged .h5 files); a separate process is the only bound
that always works. The pure-Python structure reader (:mod:`.hdf5_tree`) needs no worker:
its loops are bounded.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import pickle
import select
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from ..errors import ConvSurgeonError, InternalError, ModelFileError

PARSE_TIMEOUT_S = 20.0

T = TypeVar("T")


def run_bounded(work: Callable[[], T], timeout: float, label: str) -> T:
    """Run ``work`` in a forked worker, killed after ``timeout`` seconds.

    ``work``'s result and any :class:`ConvSurgeonError` it raises come back pickled.

    HDF5 can loop forever on a corrupt file inside C code that no Python signal can
    interrupt; a separate process is the only bound that always works.
    """
    if not hasattr(os, "fork"):
        return work()
    return Worker(work, timeout, label).result()


def _die_with_parent(parent: int) -> None:
    """In a worker: end when the parent ends, however it ends (SIGKILL included), and
    leave signals to it. A terminal's SIGTERM or SIGHUP to the whole group ends the worker
    at once; Ctrl-C is the parent's to handle (it stops the worker in its cleanup)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


_PR_SET_PDEATHSIG = 1
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _failure(exc: BaseException, label: str) -> tuple[str, object]:
    """What the parent hears of a worker's failure: a full disk is the user's to fix (a
    rewrite's worker writes the new store); anything else is a bug."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        return "error", ConvSurgeonError(
            f"{label}: writing the edited model failed: {exc.strerror} ({exc.filename or tempfile.gettempdir()}); "
            "nothing was written, free some space (or point TMPDIR at a larger disk) and run it again")
    return "bug", (f"{type(exc).__name__}: {exc}", traceback.format_exc())


class Worker(Generic[T]):
    """``work`` running in a forked child; :meth:`result` waits for it, up to a deadline."""

    def __init__(self, work: Callable[[], T], timeout: float, label: str) -> None:
        self.label, self.timeout = label, timeout
        self.deadline = time.monotonic() + timeout
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            _die_with_parent(parent)
            # A short-lived child: the collector would only walk (and so copy, page by
            # page) every object it shares with its parent.
            gc.disable()
            os.close(read_end)
            code = 0
            try:
                try:
                    payload = pickle.dumps(("ok", work()))
                except ConvSurgeonError as exc:
                    payload = pickle.dumps(("error", exc))
                except BaseException as exc:  # noqa: BLE001 - reported by the parent
                    payload = pickle.dumps(_failure(exc, label))
                with os.fdopen(write_end, "wb") as out:
                    out.write(payload)
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        os.close(write_end)
        self.pid, self.read_end = pid, read_end
        self.reaped = False  # waited for: its pid may belong to another process now

    def result(self) -> T:
        chunks: list[bytes] = []
        try:
            while True:
                remaining = self.deadline - time.monotonic()
                ready, _, _ = select.select([self.read_end], [], [], max(0.0, remaining))
                if not ready:
                    self.kill()
                    raise ModelFileError(
                        f"{self.label}: reading it did not finish within {self.timeout:.0f} s; "
                        "its HDF5 data is probably corrupt"
                    )
                chunk = os.read(self.read_end, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.read_end)
        os.waitpid(self.pid, 0)
        self.reaped = True
        if not chunks:
            raise ModelFileError(f"{self.label}: the reader crashed on this file; it is probably corrupt")
        kind, value = pickle.loads(b"".join(chunks))
        if kind == "ok":
            return cast(T, value)  # what work() returned, pickled by the child
        if kind == "error":
            raise value
        message, worker_traceback = value
        raise InternalError(f"reading {self.label} failed inside the worker: {message}", worker_traceback)

    def kill(self) -> None:
        """Stop the worker if it still runs (its result is no longer wanted)."""
        if self.reaped:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.reaped = True

    def discard(self) -> None:
        """Stop the worker if it still runs, and close its pipe: its result is not wanted."""
        unread = not self.reaped
        self.kill()
        if unread:
            try:
                os.close(self.read_end)
            except OSError:
                pass  # result() closed it before failing
