"""The one exception family of conv-surgeon.

The library raises these; only the CLI turns them into exit codes. Every message is a
single line that says what was expected, what was received and what to do.
"""

from __future__ import annotations


class ConvSurgeonError(Exception):
    """A user-facing failure: bad input, refused operation. Exit code 1."""

    exit_code = 1


class UsageError(ConvSurgeonError):
    """The command line itself is wrong (missing option, conflicting flags). Exit code 2."""

    exit_code = 2


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


class SmokeTestError(ConvSurgeonError):
    """The written model failed the forward-pass smoke test. Exit code 3; nothing written."""

    exit_code = 3
