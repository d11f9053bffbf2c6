"""Untrusted files read through h5py are parsed in a forked worker that is killed after
a time limit, and whose memory is limited.

HDF5 can loop forever on a corrupt file inside C code that no Python signal can
interrupt (seen on 5 of 500 byte-damaged .h5 files); a separate process is the only bound
that always works. The pure-Python structure reader (:mod:`.hdf5_tree`) needs no worker:
its loops are bounded.

The memory limit is the time limit's counterpart: a file whose data is corrupt or crafted
can have libhdf5 or numpy allocate without end (16 million empty chunks took one worker to
12 GB within its 20 s). The worker's address space may grow by :func:`memory_budget` past
its size when it starts; an allocation past that fails, and the worker reports it as one
line.
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

from ..errors import ConvSurgeonError, InternalError, ModelFileError, UsageError

PARSE_TIMEOUT_S = 20.0
MIN_MEMORY_BUDGET = 4 << 30
# What a worker may need per byte of its input: the values read, their copy pickled for
# the pipe, float64 copies for pruning, the values a rewrite derives.
MEMORY_PER_INPUT_BYTE = 8
MEMORY_ENVIRONMENT = "CONV_SURGEON_WORKER_MEMORY_GIB"  # a budget in GiB, instead of the default

T = TypeVar("T")


def run_bounded(work: Callable[[], T], timeout: float, label: str, input_bytes: int = 0) -> T:
    """Run ``work`` in a forked worker, killed after ``timeout`` seconds, its memory
    limited to :func:`memory_budget` of ``input_bytes`` (the size of what it reads).

    ``work``'s result and any :class:`ConvSurgeonError` it raises come back pickled.

    HDF5 can loop forever on a corrupt file inside C code that no Python signal can
    interrupt; a separate process is the only bound that always works.
    """
    if not hasattr(os, "fork"):
        return work()
    return Worker(work, timeout, label, memory_budget(input_bytes)).result()


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
    """``work`` running in a forked child; :meth:`result` waits for it, up to a deadline.

    ``memory``: how many bytes the child's address space may grow past its size at the
    fork (None: no limit, for a run of Keras itself, whose TensorFlow reserves address
    space freely).
    """

    def __init__(self, work: Callable[[], T], timeout: float, label: str, memory: int | None = None) -> None:
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
                    _limit_memory(memory)
                    payload = pickle.dumps(("ok", work()))
                except ConvSurgeonError as exc:
                    payload = pickle.dumps(("error", exc))
                except MemoryError:
                    payload = pickle.dumps(("error", _out_of_memory(label, memory)))
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


def memory_budget(input_bytes: int = 0) -> int:
    """How many bytes a worker's address space may grow: :data:`MEMORY_PER_INPUT_BYTE`
    times the size of its input, at least :data:`MIN_MEMORY_BUDGET`; or the GiB that the
    environment variable :data:`MEMORY_ENVIRONMENT` says."""
    text = os.environ.get(MEMORY_ENVIRONMENT, "").strip()
    if not text:
        return max(MIN_MEMORY_BUDGET, MEMORY_PER_INPUT_BYTE * input_bytes)
    try:
        gib = float(text)
    except ValueError:
        gib = 0.0
    if not 0 < gib < 1 << 30:
        raise UsageError(
            f"{MEMORY_ENVIRONMENT}={text!r}: expected the memory a worker may use in GiB, a number "
            "above 0 (e.g. 16); set it so or unset it"
        )
    return int(gib * (1 << 30))


def _limit_memory(budget: int | None) -> None:
    """Let this process's address space grow by ``budget`` bytes past its size now, which
    is measured here, in the child: a parent holding TensorFlow has reserved gigabytes."""
    if budget is None:
        return
    try:
        with open("/proc/self/statm", "rb") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return  # no /proc (not Linux): the time limit only
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = min([size + budget, *(bound for bound in (soft, hard) if bound != resource.RLIM_INFINITY)])
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _out_of_memory(label: str, budget: int | None) -> ModelFileError:
    if budget is None:
        return ModelFileError(f"{label}: the machine ran out of memory reading it; free memory or use a machine with more")
    return ModelFileError(
        f"{label}: reading it needed more than {budget / (1 << 30):.3g} GiB of memory; its data is "
        f"probably corrupt (if the model is that large, allow more with {MEMORY_ENVIRONMENT}=GIB)"
    )
