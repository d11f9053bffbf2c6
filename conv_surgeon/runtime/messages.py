"""What the check's messages share: Keras's failures told in one line (with the traceback
kept for ``--debug``), the way out of the check, shapes as text.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence

from ..model.naming import format_shape

SKIP_HINT = "or skip the check with --no-smoke"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ForwardFailure(Exception):
    """The model raised while running an input; the message is the short reason, ``detail``
    Keras's traceback."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def uncoloured(text: str) -> str:
    """``text`` without the terminal colour codes Keras puts in its messages."""
    return _ANSI.sub("", text)


def keras_traceback(exc: BaseException) -> str:
    """The traceback of what Keras (or the user's code) raised, for ``--debug``."""
    return _ANSI.sub("", "".join(traceback.format_exception(exc)))


def short_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, without Keras's call banner, argument dump and colours."""
    text = _ANSI.sub("", str(exc)).split("Arguments received by", 1)[0]
    banner = re.match(r"\s*Exception encountered when calling (\w+)\.call\(\)\.", text)
    if banner:
        text = f"{banner.group(1)}: {text[banner.end():]}"
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def shapes_text(shapes: Sequence[tuple[int, ...]]) -> str:
    """``(1, 28, 28, 1) and (1, 10)``: shapes for a message."""
    return " and ".join(format_shape(s) for s in shapes)
