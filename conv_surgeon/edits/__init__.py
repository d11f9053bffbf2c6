"""Edits: where new values come from (sources, initializers), how they are checked and
converted (the assignment engine, layouts), and plans of many edits. No TensorFlow."""

from __future__ import annotations

import numbers
from typing import Literal, get_args

from ..errors import UsageError

# Array layouts a user can name: Keras's own, or PyTorch / ONNX (see layout.py). Kept
# here, light, so that the command line can offer them without importing numpy.
Layout = Literal["keras", "torch"]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)

# The one seed range, for --seed, plans and the Python API: a non-negative int64.
SEED_LIMIT = 2**63


def check_seed(seed: object, what: str = "--seed") -> int:
    """``seed`` if it is an integer from 0 to 2**63-1; otherwise a usage error."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < SEED_LIMIT:
        long = isinstance(seed, numbers.Integral) and abs(int(seed)).bit_length() > 100
        raise seed_range_error(what, "(an integer of over 30 digits)" if long else repr(seed))
    return int(seed)


def seed_range_error(what: str, shown: str) -> UsageError:
    """The usage error of a seed outside the range, shown as ``shown``."""
    return UsageError(
        f"{what} {shown}: expected an integer from 0 to 2**63-1; give e.g. 7, or no seed to have one drawn"
    )
