"""JSON and TOML documents from files conv-surgeon did not write (a model's config and
metadata, a plan, a safetensors header): parsed within limits, and their values described
for messages.

Python's parsers recurse once per level of nesting: a document nested 100,000 deep raises
RecursionError, and one nested a few hundred deep still parses, then breaks whatever
walks it later (our readers, ``copy.deepcopy``, ``json.dumps``, pickling it out of a
worker). An integer of more than 4300 digits raises ValueError (Python's
``int_max_str_digits``). Both become a :class:`DocumentError` here, whose message says
which limit was passed. No numpy, no h5py.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

# Levels of arrays and objects a document may nest. serde_json (safetensors' headers)
# stops at 128 too; a Keras config nests about four levels per nested model.
MAX_NESTING = 128


class DocumentError(ValueError):
    """A document beyond what conv-surgeon reads. The message is a predicate (``is nested
    deeper than 128 levels ...``, ``holds an integer of ...``) that follows the document's
    name in the caller's one line."""


def too_deep() -> DocumentError:
    return DocumentError(f"is nested deeper than {MAX_NESTING} levels (at most {MAX_NESTING} are read)")


def parse_json(data: bytes | str, *,
               object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """``json.loads(data)``, with deep nesting and overlong integers as DocumentError;
    any other fault of the text is the ValueError ``json`` raises (JSONDecodeError,
    UnicodeDecodeError)."""
    try:
        value = json.loads(data, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise too_deep() from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        if is_long_integer_error(exc):
            raise long_integer() from None
        raise
    check_nesting(value)
    return value


def is_long_integer_error(exc: ValueError) -> bool:
    """Whether ``exc`` is Python refusing to convert an integer of too many digits."""
    return "integer string conversion" in str(exc)


def long_integer() -> DocumentError:
    return DocumentError(
        f"holds an integer of more than {sys.get_int_max_str_digits()} digits, which no "
        "setting, seed or size needs"
    )


def check_nesting(value: Any) -> None:
    """Raise :func:`too_deep` if ``value`` nests lists and dicts deeper than MAX_NESTING.
    Level by level: it never recurses itself."""
    kinds = (dict, list)
    level = [value] if isinstance(value, kinds) else []
    depth = 1
    while level:
        if depth > MAX_NESTING:
            raise too_deep()
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, kinds)]
        depth += 1


def described(value: Any) -> str:
    """A value as JSON names its type, with the value itself when it is short:
    ``the string "abc"``, ``the number NaN``, ``an array``, ``null``."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int and -(10**12) < value < 10**12:  # the common case, fast: a plan of a million 7s
        return f"the number {value}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, (datetime.date, datetime.time)):
        return f"a TOML date/time {value.isoformat()}"
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, (int, float, str)):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        if isinstance(value, str):
            return f"the string {shown}" if value else "an empty string"
        return f"the number {shown}"
    return f"a {kind.__name__}"
