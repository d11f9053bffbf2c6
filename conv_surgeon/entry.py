"""The console-script entry point: run the command, then exit without the interpreter's
teardown.

(It used to fork a worker that read the model's structure while Typer and rich were
imported. Since the structure is read in pure Python without h5py or numpy, that read
takes about 20 ms, and the bench showed the prefetch saved nothing, so it went.)
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from .errors import ExitCode, Terminated, keep_error_descriptor, stop, write_error


def main() -> None:
    keep_error_descriptor()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        # Imported after the handlers are in place: a signal during the imports (a quarter
        # of a second) ends the command as one during its work does.
        from .cli import main as cli_main

        cli_main()
        code = 0
    except KeyboardInterrupt as exc:  # before the command's own error boundary was entered
        what = f"stopped by {exc.name}" if isinstance(exc, Terminated) else "interrupted"
        write_error(f"Error: {what}; nothing was written\n")
        code = 128 + exc.signum if isinstance(exc, Terminated) else int(ExitCode.INTERRUPTED)
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    _exit_now(code)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP stop the command as Ctrl-C does: every cleanup runs (the staged
    file, the workers), then the exit status is 128 + the signal. A second one while the
    cleanup runs is ignored, so that the cleanup finishes."""
    for other in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(other, signal.SIG_IGN)
    raise stop(Terminated(signum, signal.Signals(signum).name))


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    """Ctrl-C raises KeyboardInterrupt, as Python's own handler does, and is remembered
    (errors.raise_if_stopped) in case a library swallows the exception."""
    raise stop(KeyboardInterrupt())


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown of numpy, h5py and TensorFlow.

    Tearing those modules down takes 40-130 ms here, longer than a whole `inspect` of
    a small model. Every file the command wrote is closed (and fsynced) by then; only
    the standard streams still need flushing.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # the reader went away; the exit code already says so
    os._exit(code)
