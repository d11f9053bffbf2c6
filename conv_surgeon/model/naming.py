"""Keras's own naming rules, reproduced without importing Keras."""

from __future__ import annotations

import re


def to_snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case``: ``Conv2DTranspose`` -> ``conv2d_transpose``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def format_shape(shape: tuple[int, ...] | list[int]) -> str:
    """A shape as a Python tuple literal: ``(3, 3, 1, 4)``, ``(4,)``, ``()``."""
    return repr(tuple(int(d) for d in shape))


def format_epsilon(value: float) -> str:
    """A small number as people write it: ``1e-5``, ``0.001``."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:g}")
