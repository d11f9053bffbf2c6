"""The plan file of ``conv-surgeon apply``: edits to many layers, checked all at once.

A plan is JSON or TOML. A name ending in ``.json`` or ``.toml`` says which; any other name
is read as JSON when its text starts with ``{`` and as TOML otherwise. The format is
described by ``plan.schema.json`` in this package (:func:`plan_schema`).

This module checks the plan's structure only and reports every problem at once, each
with its place (``edits[2].weights.kernel``). Whether the layers, variables and source
files exist is for the caller to check against the model, with the same place strings.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import PlanError
from ..store.documents import (
    MAX_NESTING,
    DocumentError,
    check_nesting,
    described,
    is_long_integer_error,
    long_integer,
    parse_json,
    too_deep,
)
from . import LAYOUTS, SEED_LIMIT, Layout


SCHEMA_RESOURCE = "plan.schema.json"

_TOP_KEYS = ("$schema", "seed", "edits")
_EDIT_KEYS = ("layer", "layout", "weights")
_WEIGHT_KEYS = ("source", "init")

_ROOT = "top level"
_SOURCES = "file.npy, file.npz:KEY, file.h5:PATH, file.safetensors:KEY or file.pt:KEY"
_EDIT_EXAMPLE = '{"layer": "conv1", "weights": {"kernel": "k.npy"}}'
_NEITHER_SUFFIX = "the name ends in neither .json nor .toml and the text does not start with '{'"
_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_TOML_AT = re.compile(r"(?P<message>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)")
_TOML_AT_END = re.compile(r"(?P<message>.*) \(at end of document\)")
# tomllib joins a dotted key one part at a time, in time quadratic in its parts (13 s for
# 100,000): a key of more parts than a plan may nest is refused before tomllib reads it.
_LONG_DOTTED_KEY = re.compile(r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')){%d}""" % MAX_NESTING)


@dataclass(frozen=True)
class PlanWeight:
    """One variable's new value: read from a source, or drawn by an initializer."""

    variable: str  # as the plan names it; "kernel" means the layer's main kernel
    source: str | None  # resolved against the plan's directory, ":KEY" kept
    init: str | None  # an initializer spec such as "random_normal:stddev=0.02"


@dataclass(frozen=True)
class PlanEdit:
    """The new values of some variables of one layer."""

    place: str  # "edits[2]", counted from 0 in JSON and TOML alike
    layer: str
    layout: Layout
    weights: tuple[PlanWeight, ...]

    def place_of(self, weight: PlanWeight) -> str:
        """Where ``weight`` is in the plan: ``edits[2].weights.kernel``."""
        return _key_place(f"{self.place}.weights", weight.variable)


@dataclass(frozen=True)
class Plan:
    """A plan whose structure is valid: every edit, in the plan's order."""

    path: str
    seed: int | None
    edits: tuple[PlanEdit, ...]


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and check the plan at ``path``; raise one PlanError listing every problem.

    >>> load_plan("plan.toml").edits[0].weights[0].source
    '/home/me/work/k.npy'
    """
    label = os.fspath(path)
    document = _parse(Path(path), label)
    return plan_from_mapping(document, base_dir=Path(path).absolute().parent, label=label)


def plan_from_mapping(document: object, *, base_dir: Path, label: str) -> Plan:
    """Check a parsed plan and build it; ``label`` names the plan in messages.

    Relative sources are joined to ``base_dir``. Whichever ':' ``split_source_spec``
    later splits a source at, the file is the part before it, so joining ``base_dir`` in
    front resolves the file and leaves any ``:KEY`` as it was; which split is meant is
    decided when the files are read.

    >>> plan_from_mapping({"edits": [{"layer": "c", "weights": {"bias": {"init": "zeros"}}}]},
    ...                   base_dir=Path("."), label="inline").edits[0].layout
    'keras'
    """
    if not isinstance(document, Mapping):
        problem = (
            f'{_ROOT}: expected an object with an "edits" array, received {described(document)}'
        )
        raise _refuse(label, [problem])
    problems: list[str] = []
    _check_keys(document, "", _TOP_KEYS, "a plan", problems)
    if "$schema" in document and not isinstance(document["$schema"], str):
        problems.append(
            f"$schema: expected a string (where editors find the schema), "
            f"received {described(document['$schema'])}"
        )
    seed = _read_seed(document, problems)
    edits = _read_edits(document, base_dir, problems)
    if problems:
        raise _refuse(label, problems)
    return Plan(path=label, seed=seed, edits=edits)


# The library's messages say what to type on the command line; inside a plan, the same
# thing is a key of the edit (or the plan's seed). Each pattern, and what it is there.
_OPTION_IN_PLAN = (
    (re.compile(r"pass one of these to --weight(?![\w-])"), "use one of these names as a key of {place}.weights"),
    (re.compile(r"pass one of these paths to --layer(?![\w-])"), "write one of these paths as {place}.layer"),
    (re.compile(r"--weight (?:NAME|(?P<name>[A-Za-z_]\w*))(?:=(?:SRC|\.\.\.))?(?![\w-])"),
     "{place}.weights.{name}"),
    (re.compile(r"pass --layout torch(?![\w-])"), 'set {place}.layout to "torch"'),
    (re.compile(r"--seed N(?![\w-])"), '"seed" at the top of the plan'),
)


def in_plan(message: str, place: str) -> str:
    """A message about the edit at ``place`` (``edits[2]``) as a plan's author reads it:
    ``set edits[2].layout to "torch"``, not ``pass --layout torch``."""
    for pattern, words in _OPTION_IN_PLAN:
        message = pattern.sub(lambda match: words.format(place=place, name=match.groupdict().get("name") or "NAME"),
                              message)
    return message


def plan_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a plan, as shipped in the package."""
    resource = resources.files("conv_surgeon.edits").joinpath(SCHEMA_RESOURCE)
    text = resource.read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers the keys it was given more than once.

    ``json`` keeps the last of repeated keys without a word; in a plan that would drop an
    edit's variable silently, so repeats are reported as problems.
    """

    repeated_keys: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        made = cls(pairs)
        if len(made) < len(pairs):
            counts = Counter(key for key, _ in pairs)
            made.repeated_keys = tuple(key for key, count in counts.items() if count > 1)
        return made


def _parse(path: Path, label: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        problem = f"cannot read the plan file: {exc.strerror}; check the path"
        raise _refuse_file(label, problem) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refuse_file(
            label,
            f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
            "save the plan as UTF-8 JSON or TOML",
        ) from exc
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix != ".toml" and text.lstrip().startswith("{")):
        try:
            return parse_json(text, object_pairs_hook=_JsonObject.from_pairs)
        except DocumentError as exc:
            raise _refuse_file(label, _beyond_limits(exc)) from exc
        except json.JSONDecodeError as exc:
            raise _refuse_file(
                label,
                f"not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}; fix the syntax",
            ) from exc
    try:
        if _LONG_DOTTED_KEY.search(text):
            raise too_deep()
        document = tomllib.loads(text)
        check_nesting(document)
    except tomllib.TOMLDecodeError as exc:
        why = "" if suffix == ".toml" else f" (read as TOML: {_NEITHER_SUFFIX})"
        problem = f"not valid TOML{why}: {_toml_where(exc)}; fix the syntax"
        raise _refuse_file(label, problem) from exc
    except RecursionError:
        raise _refuse_file(label, _beyond_limits(too_deep())) from None
    except DocumentError as exc:
        raise _refuse_file(label, _beyond_limits(exc)) from exc
    except ValueError as exc:  # tomllib converts integers without catching Python's digit limit
        if not is_long_integer_error(exc):
            raise
        raise _refuse_file(label, _beyond_limits(long_integer())) from None
    return document


def _beyond_limits(exc: DocumentError) -> str:
    return (f"the plan {exc}; a plan is a list of edits a few levels deep, write it as "
            "`conv-surgeon apply --schema` shows")


def _toml_where(exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's message with the place first, worded as for JSON."""
    message = str(exc)
    if match := _TOML_AT.fullmatch(message):
        return f"line {match['line']}, column {match['column']}: {match['message']}"
    if match := _TOML_AT_END.fullmatch(message):
        return f"end of file: {match['message']}"
    return message


def _refuse_file(label: str, problem: str) -> PlanError:
    return PlanError(f"{label}: {problem}", [problem])


def _refuse(label: str, problems: list[str]) -> PlanError:
    count = len(problems)
    head = (
        f"{label}: {count} problem{'' if count == 1 else 's'}; "
        "the plan is all or nothing, so nothing was applied"
    )
    return PlanError.listing(head, problems)


def _check_keys(
    mapping: Mapping[str, Any],
    place: str,
    allowed: tuple[str, ...],
    what: str,
    problems: list[str],
) -> None:
    """Report keys that ``what`` does not take, and keys a JSON object repeats."""
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f"did you mean '{close[0]}'? " if close else ""
            problems.append(
                f"{_key_place(place, key)}: unknown key; {suggestion}"
                f"{what} takes {_listing(allowed)}"
            )
    _check_repeats(mapping, place, problems)


def _check_repeats(mapping: Mapping[str, Any], place: str, problems: list[str]) -> None:
    for key in getattr(mapping, "repeated_keys", ()):
        problems.append(
            f"{_key_place(place, key)}: given more than once in one object; JSON keeps "
            "only the last, so keep one"
        )


def _read_seed(document: Mapping[str, Any], problems: list[str]) -> int | None:
    if "seed" not in document:
        return None
    value = document["seed"]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema counts 7.0 as an integer; so does the plan
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        problems.append(
            f"seed: expected an integer from 0 to 2**63-1, received {described(value)}; "
            "write e.g. 7, or leave the seed out to have one drawn"
        )
        return None
    return value


def _read_edits(
    document: Mapping[str, Any], base_dir: Path, problems: list[str]
) -> tuple[PlanEdit, ...]:
    if "edits" not in document:
        problems.append(
            f'edits: missing; a plan lists its edits as "edits": [{_EDIT_EXAMPLE}] '
            "in JSON, or as [[edits]] tables in TOML"
        )
        return ()
    entries = document["edits"]
    if not isinstance(entries, list):
        problems.append(
            f"edits: expected an array of edits such as [{_EDIT_EXAMPLE}], "
            f"received {described(entries)}"
        )
        return ()
    if not entries:
        problems.append(f"edits: empty; list at least one edit, e.g. {_EDIT_EXAMPLE}")
        return ()
    edits: list[PlanEdit] = []
    first_place: dict[str, str] = {}
    for index, entry in enumerate(entries):
        place = f"edits[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{place}: expected an edit such as {_EDIT_EXAMPLE}, received {described(entry)}")
            continue
        edit = _read_edit(entry, place, base_dir, problems)
        if edit is None:
            layer = entry.get("layer")
        else:
            edits.append(edit)
            layer = edit.layer
        if isinstance(layer, str) and layer:
            if layer in first_place:
                problems.append(
                    f"{place}.layer: layer '{layer}' is named twice, here and at "
                    f"{first_place[layer]}; merge the two edits into one"
                )
            else:
                first_place[layer] = place
    return tuple(edits)


def _read_edit(entry: Mapping[str, Any], place: str, base_dir: Path, problems: list[str]) -> PlanEdit | None:
    """The edit at ``place``, or None after adding its problems to ``problems``."""
    known = len(problems)
    _check_keys(entry, place, _EDIT_KEYS, "an edit", problems)
    layer = _read_layer(entry, place, problems)
    layout = _read_layout(entry, place, problems)
    weights = _read_weights(entry, place, base_dir, problems)
    if len(problems) > known or layer is None:
        return None
    return PlanEdit(place=place, layer=layer, layout=layout, weights=weights)


def _read_layer(entry: Mapping[str, Any], place: str, problems: list[str]) -> str | None:
    advice = 'name the layer as `conv-surgeon inspect` lists it, e.g. "layer": "conv1"'
    if "layer" not in entry:
        problems.append(f"{place}.layer: missing; {advice}")
        return None
    layer = entry["layer"]
    if not isinstance(layer, str):
        problems.append(f"{place}.layer: expected a string, received {described(layer)}; {advice}")
        return None
    if not layer:
        problems.append(f"{place}.layer: empty; {advice}")
        return None
    return layer


def _read_layout(entry: Mapping[str, Any], place: str, problems: list[str]) -> Layout:
    layout = entry.get("layout", LAYOUTS[0])
    for known in LAYOUTS:
        if layout == known:
            return known
    typed = layout.lower() if isinstance(layout, str) else ""
    close = difflib.get_close_matches(typed, LAYOUTS, n=1)
    suggestion = f"did you mean '{close[0]}'? " if close else ""
    problems.append(
        f"{place}.layout: expected 'keras' (the default) or 'torch', received "
        f"{described(layout)}; {suggestion}torch reads PyTorch/ONNX axis order"
    )
    return LAYOUTS[0]


def _read_weights(
    entry: Mapping[str, Any], place: str, base_dir: Path, problems: list[str]
) -> tuple[PlanWeight, ...]:
    weights_place = f"{place}.weights"
    example = '{"kernel": "k.npy", "bias": {"init": "zeros"}}'
    if "weights" not in entry:
        problems.append(f"{weights_place}: missing; name the variables to set, e.g. {example}")
        return ()
    weights = entry["weights"]
    if not isinstance(weights, Mapping):
        problems.append(
            f"{weights_place}: expected an object from variable names to sources or "
            f"initializers, e.g. {example}, received {described(weights)}"
        )
        return ()
    if not weights:
        problems.append(f"{weights_place}: empty; name at least one variable, e.g. {example}")
        return ()
    _check_repeats(weights, weights_place, problems)
    read: list[PlanWeight] = []
    for variable, value in weights.items():
        place_of_weight = _key_place(weights_place, variable)
        weight = _read_weight(variable, value, place_of_weight, base_dir, problems)
        if weight is not None:
            read.append(weight)
    return tuple(read)


def _read_weight(
    variable: str, value: Any, place: str, base_dir: Path, problems: list[str]
) -> PlanWeight | None:
    if not variable:
        problems.append(
            f"{place}: empty variable name; use the layer's own names: kernel, bias, "
            "depthwise_kernel, ..."
        )
        return None
    if isinstance(value, str):
        source = _resolve_source(value, place, base_dir, problems)
        return None if source is None else PlanWeight(variable, source, None)
    if not isinstance(value, Mapping):
        problems.append(
            f"{place}: expected a source string ({_SOURCES}) or an object "
            f'{{"source": SRC}} or {{"init": SPEC}}, received {described(value)}'
        )
        return None
    known = len(problems)
    _check_keys(value, place, _WEIGHT_KEYS, "a weight", problems)
    if "source" in value and "init" in value:
        problems.append(
            f'{place}: gives both "source" and "init"; keep one: a variable takes its '
            "value from a file or from an initializer"
        )
    elif "source" not in value and "init" not in value:
        problems.append(
            f'{place}: needs "source" or "init", e.g. {{"source": "k.npy"}} or {{"init": "zeros"}}'
        )
    source = init = None
    if "source" in value:
        if isinstance(value["source"], str):
            source = _resolve_source(value["source"], f"{place}.source", base_dir, problems)
        else:
            problems.append(
                f"{place}.source: expected a string ({_SOURCES}), "
                f"received {described(value['source'])}"
            )
    if "init" in value:
        init = value["init"]
        if not isinstance(init, str) or not init:
            problems.append(
                f"{place}.init: expected an initializer spec such as he_normal or "
                f"random_normal:stddev=0.02, received {described(init)}"
            )
    if len(problems) > known:
        return None
    return PlanWeight(variable, source, init)


def _resolve_source(spec: str, place: str, base_dir: Path, problems: list[str]) -> str | None:
    if spec == "-":
        problems.append(
            f"{place}: '-' (stdin) cannot be a source in a plan: a plan names many "
            "arrays and stdin is one stream, and a plan should read the same files each "
            "time it runs; save the array with np.save and name the .npy file"
        )
        return None
    if not spec:
        problems.append(f"{place}: empty source; name a file: {_SOURCES}")
        return None
    return spec if os.path.isabs(spec) else os.path.join(base_dir, spec)


def _key_place(parent: str, key: str) -> str:
    """``parent.key``, or ``parent["odd key"]`` for keys that are not plain names."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key)}]"


def _listing(keys: tuple[str, ...]) -> str:
    quoted = [f"'{key}'" for key in keys]
    return f"{', '.join(quoted[:-1])} and {quoted[-1]}"
