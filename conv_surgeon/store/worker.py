"""Untrusted files read through h5py are parsed in a forked worker that is killed after
a time limit.

HDF5 can loop forever on a corrupt file inside C code that no Python signal can
interrupt (seen on 5 of 500 byte-damaged .h5 files); a separate process is the only bound
that always works. The pure-Python structure reader (:mod:`.hdf5_tree`) needs no worker:
its loops are bounded.
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
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


class Worker(Generic[T]):
    """``work`` running in a forked child; :meth:`result` waits for it, up to a deadline."""

    def __init__(self, work: Callable[[], T], timeout: float, label: str) -> None:
        self.label, self.timeout = label, timeout
        self.deadline = time.monotonic() + timeout
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
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
                except BaseException as exc:  # noqa: BLE001 - reported by the parent as a bug
                    payload = pickle.dumps(("bug", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
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
