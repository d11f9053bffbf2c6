"""Initializer specs (``NAME[:key=value,...]``): parse them statically, draw with Keras.

Keras only checks an argument's value when the initializer is called, with a message
that does not name the argument, and turns a misspelled keyword into a generic
deserialization error (checked on Keras 3.15). So every name, argument and value is checked here
against a static table of the Keras 3.15 built-ins first; Keras itself is imported only
to draw, so that fan-in and fan-out follow its rules exactly.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np

from ..errors import InitializerError
from ..model.naming import format_shape, to_snake_case
from . import SEED_LIMIT, check_seed

ArgumentValue = Union[float, str, bool, tuple[int, ...], None]
ArgumentKind = Literal["number", "choice", "bool", "axes", "text"]
Sign = Literal["any", "positive", "non_negative"]



@dataclass(frozen=True)
class ArgumentRule:
    """One constructor argument of a Keras initializer."""

    name: str
    kind: ArgumentKind
    default: ArgumentValue
    choices: tuple[str, ...] = ()
    # "none" is accepted and passed as None (STFT's window and scaling).
    nullable: bool = False
    sign: Sign = "any"


@dataclass(frozen=True)
class InitializerEntry:
    """A built-in Keras initializer: its names, arguments and shape requirements."""

    name: str
    arguments: tuple[ArgumentRule, ...]
    takes_seed: bool
    aliases: tuple[str, ...] = ()
    min_rank: int = 0
    max_rank: int | None = None
    # (low, high): the first must not exceed the second.
    ordered: tuple[str, str] | None = None
    # Arguments Keras ignores unless both are given.
    paired: tuple[str, str] | None = None

    @property
    def snake_name(self) -> str:
        """The name users type most often: ``he_normal``."""
        return to_snake_case(self.name)

    def rule(self, argument: str) -> ArgumentRule | None:
        """The rule for ``argument``, or None if the initializer has no such argument."""
        return next((r for r in self.arguments if r.name == argument), None)


def _number(name: str, default: float, sign: Sign = "any") -> ArgumentRule:
    return ArgumentRule(name, "number", default, sign=sign)


_AXES = (ArgumentRule("input_axes", "axes", None), ArgumentRule("output_axes", "axes", None))


def _fan_scaled(name: str) -> InitializerEntry:
    return InitializerEntry(name, _AXES, takes_seed=True, paired=("input_axes", "output_axes"))


# Checked against the installed Keras by tests/test_initializers.py.
INITIALIZERS: dict[str, InitializerEntry] = {
    e.name: e
    for e in (
        InitializerEntry("Zeros", (), takes_seed=False, aliases=("zero",)),
        InitializerEntry("Ones", (), takes_seed=False, aliases=("one",)),
        InitializerEntry("Constant", (_number("value", 0.0),), takes_seed=False),
        InitializerEntry(
            "Identity",
            (_number("gain", 1.0),),
            takes_seed=False,
            aliases=("IdentityInitializer",),
            min_rank=2,
            max_rank=2,
        ),
        InitializerEntry(
            "STFT",
            (
                ArgumentRule("side", "choice", "real", choices=("real", "imag")),
                ArgumentRule("window", "text", "hann", nullable=True),
                ArgumentRule(
                    "scaling", "choice", "density", choices=("density", "spectrum"), nullable=True
                ),
                ArgumentRule("periodic", "bool", False),
            ),
            takes_seed=False,
            aliases=("STFTInitializer",),
            min_rank=3,
            max_rank=3,
        ),
        InitializerEntry(
            "RandomNormal",
            (_number("mean", 0.0), _number("stddev", 0.05, "non_negative")),
            takes_seed=True,
            aliases=("normal",),
        ),
        InitializerEntry(
            "TruncatedNormal",
            (_number("mean", 0.0), _number("stddev", 0.05, "non_negative")),
            takes_seed=True,
        ),
        InitializerEntry(
            "RandomUniform",
            (_number("minval", -0.05), _number("maxval", 0.05)),
            takes_seed=True,
            aliases=("uniform",),
            ordered=("minval", "maxval"),
        ),
        InitializerEntry(
            "VarianceScaling",
            (
                _number("scale", 1.0, "positive"),
                ArgumentRule("mode", "choice", "fan_in", choices=("fan_in", "fan_out", "fan_avg")),
                ArgumentRule(
                    "distribution",
                    "choice",
                    "truncated_normal",
                    # Keras reads "normal" as "truncated_normal".
                    choices=("truncated_normal", "untruncated_normal", "uniform", "normal"),
                ),
            )
            + _AXES,
            takes_seed=True,
            paired=("input_axes", "output_axes"),
        ),
        _fan_scaled("GlorotNormal"),
        _fan_scaled("GlorotUniform"),
        _fan_scaled("HeNormal"),
        _fan_scaled("HeUniform"),
        _fan_scaled("LecunNormal"),
        _fan_scaled("LecunUniform"),
        InitializerEntry(
            "Orthogonal",
            (_number("gain", 1.0),),
            takes_seed=True,
            aliases=("OrthogonalInitializer",),
            min_rank=2,
        ),
    )
}


def _lookup_key(name: str) -> str:
    """Names match case-insensitively and with or without underscores."""
    return name.lower().replace("_", "")


_BY_KEY: dict[str, InitializerEntry] = {
    _lookup_key(alias): entry
    for entry in INITIALIZERS.values()
    for alias in (entry.name, *entry.aliases)
}


@dataclass(frozen=True)
class InitializerSpec:
    """A parsed, validated initializer spec."""

    name: str
    arguments: tuple[tuple[str, ArgumentValue], ...]
    text: str
    takes_seed: bool

    @property
    def config(self) -> dict[str, ArgumentValue]:
        """The arguments as a Keras config (without the seed)."""
        return dict(self.arguments)


def parse_initializer_spec(text: str) -> InitializerSpec:
    """Parse and validate ``NAME[:key=value,...]`` without importing Keras.

    >>> parse_initializer_spec("random_normal:stddev=0.02").arguments
    (('stddev', 0.02),)
    """
    name_text, _, argument_text = text.partition(":")
    entry = _resolve_name(text, name_text.strip())
    values: dict[str, ArgumentValue] = {}
    for item in _split_arguments(text, argument_text):
        key, equals, raw = item.partition("=")
        key = key.strip()
        if not equals or not key:
            advice = (
                f"write e.g. {entry.snake_name}:{_example(entry)}"
                if entry.arguments
                else f"{entry.snake_name} takes no arguments"
            )
            raise InitializerError(f"initializer '{text}': '{item}' is not key=value; {advice}")
        rule = _rule_for(text, entry, key)
        if key in values:
            raise InitializerError(f"initializer '{text}': argument {key} is given twice")
        values[key] = _parse_value(text, entry, rule, raw.strip())
    _check_together(text, entry, values)
    ordered = tuple((r.name, values[r.name]) for r in entry.arguments if r.name in values)
    return InitializerSpec(
        name=entry.name, arguments=ordered, text=text, takes_seed=entry.takes_seed
    )


def keras_config(spec: InitializerSpec, shape: tuple[int, ...], seed: int | None) -> dict[str, Any]:
    """The checked Keras config that draws ``spec`` for ``shape`` (``seed`` ignored by
    initializers that take none: Zeros, Ones, Constant, ...)."""
    entry = INITIALIZERS[spec.name]
    _check_shape(spec, entry, shape)
    config: dict[str, Any] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in spec.arguments
    }
    if spec.takes_seed:
        config["seed"] = _check_seed(spec, seed)
    return {"class_name": spec.name, "config": config}


def drawing_failed(spec: InitializerSpec, shape: tuple[int, ...], exc: Exception) -> InitializerError:
    """The error for an initializer Keras could not draw (a bad argument value only fails then)."""
    if isinstance(exc, ImportError):
        return InitializerError(
            f"initializer '{spec.text}' needs a module that is not installed "
            f"({_one_line(exc)})"
            + ("; or pass window=none" if spec.name == "STFT" else "")
        )
    return InitializerError(
        f"initializer '{spec.text}' cannot draw {format_shape(shape)}: {_one_line(exc)}"
    )


def check_drawn(spec: InitializerSpec, shape: tuple[int, ...], array: np.ndarray) -> np.ndarray:
    if array.shape != shape:
        raise InitializerError(
            f"initializer '{spec.text}' drew {format_shape(array.shape)} for "
            f"{format_shape(shape)}; it does not fit this variable, choose another initializer"
        )
    return array


def initializer_names() -> list[str]:
    """The names of the built-in initializers as users type them (``he_normal``), sorted."""
    return sorted(e.snake_name for e in INITIALIZERS.values())


def _resolve_name(text: str, name: str) -> InitializerEntry:
    entry = _BY_KEY.get(_lookup_key(name))
    if entry is not None:
        return entry
    known = initializer_names()
    typed = to_snake_case(name) if name else name
    close = difflib.get_close_matches(typed.lower(), known, n=3, cutoff=0.6)
    advice = (
        f"did you mean {', '.join(repr(c) for c in close)}?"
        if close
        else f"known: {', '.join(known)}"
    )
    raise InitializerError(f"initializer '{text}': unknown initializer '{name}'; {advice}")


def _split_arguments(text: str, argument_text: str) -> list[str]:
    """Split at commas outside brackets, so that ``input_axes=[0,1,2]`` stays whole."""
    items: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(argument_text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(argument_text[start:index])
            start = index + 1
        if depth < 0:
            break
    if depth != 0:
        raise InitializerError(
            f"initializer '{text}': unbalanced brackets; write a list as input_axes=[0,1,2]"
        )
    items.append(argument_text[start:])
    return [item.strip() for item in items if item.strip()]


def _rule_for(text: str, entry: InitializerEntry, key: str) -> ArgumentRule:
    rule = entry.rule(key)
    if rule is not None:
        return rule
    if key == "seed":
        if entry.takes_seed:
            raise InitializerError(
                f"initializer '{text}': the seed is not part of the spec; give it "
                "separately (--seed N)"
            )
        raise InitializerError(
            f"initializer '{text}': {entry.snake_name} takes no seed (it is not random); "
            "drop seed="
        )
    valid = [r.name for r in entry.arguments]
    if not valid:
        raise InitializerError(
            f"initializer '{text}': {entry.snake_name} takes no arguments, received {key}; "
            f"write {entry.snake_name}"
        )
    close = difflib.get_close_matches(key, valid, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    raise InitializerError(
        f"initializer '{text}': {entry.snake_name} has no argument {key}; {suggestion}"
        f"valid arguments: {', '.join(valid)}"
    )


def _parse_value(
    text: str, entry: InitializerEntry, rule: ArgumentRule, raw: str
) -> ArgumentValue:
    def refuse(expected: str) -> InitializerError:
        return InitializerError(
            f"initializer '{text}': argument {rule.name} of {entry.snake_name} expects "
            f"{expected}, received '{raw}'"
        )

    if rule.nullable and raw.lower() == "none":
        return None
    if rule.kind == "number":
        try:
            number = float(raw)
        except ValueError:
            raise refuse("a number") from None
        if not math.isfinite(number):
            raise refuse("a finite number")
        if rule.sign == "positive" and number <= 0:
            raise refuse("a number > 0")
        if rule.sign == "non_negative" and number < 0:
            raise refuse("a number >= 0")
        return number
    if rule.kind == "choice":
        choice = raw.lower()
        if choice not in rule.choices:
            options = rule.choices + (("none",) if rule.nullable else ())
            raise refuse(f"one of {', '.join(options)}")
        return choice
    if rule.kind == "bool":
        truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if raw.lower() not in truth:
            raise refuse("true or false")
        return truth[raw.lower()]
    if rule.kind == "axes":
        inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
        try:
            axes = tuple(int(part) for part in inner.split(",") if part.strip())
        except ValueError:
            raise refuse("a list of axis numbers such as [0,1,2]") from None
        if not axes:
            raise refuse("a list of axis numbers such as [0,1,2]")
        return axes
    if not raw:
        raise refuse("a name")
    return raw


def _check_together(
    text: str, entry: InitializerEntry, values: dict[str, ArgumentValue]
) -> None:
    if entry.paired is not None:
        given = [name for name in entry.paired if values.get(name) is not None]
        if len(given) == 1:
            missing = next(n for n in entry.paired if n not in given)
            raise InitializerError(
                f"initializer '{text}': {given[0]} needs {missing} too (Keras ignores one "
                f"without the other); give both, e.g. {entry.paired[0]}=[0,1,2],"
                f"{entry.paired[1]}=[3]"
            )
    if entry.ordered is not None:
        low_name, high_name = entry.ordered
        low, high = _number_value(entry, values, low_name), _number_value(entry, values, high_name)
        if low > high:
            raise InitializerError(
                f"initializer '{text}': {low_name} {low} is above {high_name} {high}; "
                f"give {low_name} <= {high_name}"
            )


def _number_value(entry: InitializerEntry, values: dict[str, ArgumentValue], argument: str) -> float:
    """A number argument's value: as given, or its default."""
    value = values.get(argument, _default(entry, argument))
    assert isinstance(value, float), f"{entry.name} table orders {argument}, which is no number"
    return value


def _default(entry: InitializerEntry, argument: str) -> ArgumentValue:
    rule = entry.rule(argument)
    assert rule is not None, f"{entry.name} table names unknown argument {argument}"
    return rule.default


def _check_shape(spec: InitializerSpec, entry: InitializerEntry, shape: tuple[int, ...]) -> None:
    rank = len(shape)
    if rank < entry.min_rank or (entry.max_rank is not None and rank > entry.max_rank):
        wanted = (
            f"rank {entry.min_rank}"
            if entry.min_rank == entry.max_rank
            else f"rank >= {entry.min_rank}"
        )
        raise InitializerError(
            f"initializer '{spec.text}': {entry.snake_name} needs a variable of {wanted}, "
            f"received {format_shape(shape)} (rank {rank}); choose another initializer"
        )
    for name, value in spec.arguments:
        if isinstance(value, tuple) and any(not -rank <= axis < rank for axis in value):
            raise InitializerError(
                f"initializer '{spec.text}': {name} {list(value)} names an axis outside "
                f"{format_shape(shape)} (rank {rank}); use axes 0 to {rank - 1}"
            )


def variable_seed(seed: int, index: int) -> int:
    """The seed of a layer's ``index``-th variable: the base seed plus its position, so a
    kernel and a bias drawn in one call are independent, and still in the seed range."""
    return (seed + index) % SEED_LIMIT


def draw_seed() -> int:
    """A base seed for a run that gave none (reported, so the run can be repeated)."""
    import secrets

    return secrets.randbelow(2**31)


def _check_seed(spec: InitializerSpec, seed: int | None) -> int | None:
    return None if seed is None else check_seed(seed, f"initializer '{spec.text}': seed")


def _example(entry: InitializerEntry) -> str:
    rule = entry.arguments[0]
    value = rule.choices[0] if rule.choices else rule.default
    return f"{rule.name}={value}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
