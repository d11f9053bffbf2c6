"""The one exception family of conv-surgeon, and the stderr its messages go to.

The library raises these; only the CLI turns them into exit codes. Every message is a
single line that says what was expected, what was received and what to do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from enum import IntEnum
from typing import Self, TextIO


class ExitCode(IntEnum):
    """Every exit status of the command line, in one table."""

    OK = 0
    FAILED = 1  # the operation was refused or failed: bad input, mismatch, unreadable file
    USAGE = 2  # the command line itself is wrong
    SMOKE_FAILED = 3  # the written model failed its smoke test; nothing was written
    INTERNAL = 70  # a bug in conv-surgeon (EX_SOFTWARE)
    HANGUP = 129  # SIGHUP: the terminal went away (128 + 1)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    TERMINATED = 143  # SIGTERM: `kill`, `timeout`, a job scheduler (128 + 15)
    BROKEN_PIPE = 141  # the reader of stdout went away


class ConvSurgeonError(Exception):
    """A user-facing failure: bad input, refused operation. Exit code 1."""

    exit_code: ExitCode = ExitCode.FAILED
    # What ``--debug`` shows after the one line: the traceback inside the library that
    # failed (Keras's, when it could not load or run a model); None when there is none.
    detail: str | None = None

    def with_detail(self, detail: str | None) -> Self:
        self.detail = detail
        return self


class UsageError(ConvSurgeonError):
    """The command line itself is wrong (missing option, conflicting flags). Exit code 2."""

    exit_code = ExitCode.USAGE


class ModelFileError(ConvSurgeonError):
    """The model file is missing, unreadable, or not a Keras model."""


class LayerNotFoundError(ConvSurgeonError):
    """No layer (or more than one layer) answers to the name the user gave."""


class SourceError(ConvSurgeonError):
    """A weight source (.npy, .npz, .h5, stdin) could not be read."""


class InitializerError(ConvSurgeonError):
    """An initializer spec names an unknown initializer or a bad argument."""


class AssignmentError(ConvSurgeonError):
    """A candidate array does not fit the variable it is meant for."""


# Problems an error message (and a JSON error) lists, one a line, before it says how many
# more there are: a plan of a million bad edits must not print a million lines.
MAX_LISTED_PROBLEMS = 20


class PlanError(ConvSurgeonError):
    """The plan file is unreadable, not JSON or TOML, or lists invalid edits; nothing is changed.

    A plan is all or nothing, so this error carries every problem found, each starting
    with its place in the plan (``edits[2].weights.kernel: ...``). The message is the
    plan's name and the count on the first line, then one problem a line (the first
    MAX_LISTED_PROBLEMS, then how many more); a plan that cannot be parsed at all has one
    problem and a one-line message.
    """

    def __init__(self, message: str, problems: Sequence[str]) -> None:
        super().__init__(message)
        self.problems = tuple(problems)

    @classmethod
    def listing(cls, head: str, problems: Sequence[str]) -> PlanError:
        """``head``, then the problems one a line, cut short after MAX_LISTED_PROBLEMS."""
        return cls("\n".join([head, *(f"  {line}" for line in listed_problems(problems))]), problems)


def listed_problems(problems: Sequence[str]) -> list[str]:
    """The problems to show: the first MAX_LISTED_PROBLEMS, then ``... and N more problems``."""
    shown = list(problems[:MAX_LISTED_PROBLEMS])
    rest = len(problems) - len(shown)
    if rest:
        shown.append(f"... and {rest} more problem{'' if rest == 1 else 's'}")
    return shown


class SmokeTestError(ConvSurgeonError):
    """The written model failed the forward-pass smoke test. Exit code 3; nothing written."""

    exit_code = ExitCode.SMOKE_FAILED


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: raised like Ctrl-C's KeyboardInterrupt, so that the same
    cleanup runs (no staged file, no worker left behind); exit 128 + the signal."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum, self.name = signum, name


# The signal that stopped the command, kept by the console script's handlers: a library
# that catches everything (TensorFlow's import, in places) can swallow the exception it
# raised, and a stopped command must not go on to write (see raise_if_stopped).
_stopped: list[KeyboardInterrupt] = []


def stop(exc: KeyboardInterrupt) -> KeyboardInterrupt:
    """Remember the interruption a signal handler is about to raise, and return it."""
    if not _stopped:
        _stopped.append(exc)
    return exc


def stopped() -> KeyboardInterrupt | None:
    """The interruption a signal started, if one did: whatever fails after it (a module
    whose import it cut short, say) failed because of it."""
    return _stopped[0] if _stopped else None


def raise_if_stopped() -> None:
    """Raise again the interruption a signal started, if something swallowed it.

    Called after each stretch of third-party code (the Keras import and runs) and before
    a write is delivered: a Ctrl-C or SIGTERM is never lost, whatever caught it."""
    if _stopped:
        raise _stopped[0]


class InternalError(Exception):
    """A bug in conv-surgeon found in a worker process: exit 70, with the worker's
    traceback shown under ``--debug``."""

    def __init__(self, message: str, worker_traceback: str) -> None:
        super().__init__(message)
        self.worker_traceback = worker_traceback


# The stderr the command started with, kept by the console script: TensorFlow's import
# points fd 2 at /dev/null for a while (runtime.environment.quiet_stderr), and an error
# (a Ctrl-C then) must not be lost.
_error_fd: int | None = None


def keep_error_descriptor() -> None:
    """Keep a descriptor of the process's stderr for errors, that no import can silence."""
    global _error_fd
    try:
        _error_fd = os.dup(2)
    except OSError:
        _error_fd = None  # no stderr at all: nothing to keep


def write_error(text: str) -> None:
    """Write to stderr, through the kept descriptor when stderr is the process's own."""
    stream: TextIO = sys.stderr
    if _error_fd is None or stream is not sys.__stderr__:
        stream.write(text)
        stream.flush()
        return
    try:
        stream.flush()
    except (OSError, ValueError):
        pass
    data = text.encode(stream.encoding or "utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(_error_fd, data):]
    except OSError:
        pass  # stderr went away; the exit code still says what happened
