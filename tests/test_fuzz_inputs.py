"""Structure-aware fuzzing of what conv-surgeon parses from files it did not write: the
config.json of a `.keras` archive (and a legacy `.h5`'s model_config, a saved folder's
config.json), metadata.json, and plan files (JSON and TOML).

Every case starts from a real save written by Keras (sample_models/, tests/data/) or a
plan that applies cleanly, changes one value where the readers look (a type swapped, a
key deleted, 100,000 levels of nesting, NaN or Infinity, an integer of 5000 digits, a
string where a number was), and runs the commands people run on it in this process. None
may end in an internal error (exit 70) or print a traceback; a refusal is one `Error:`
line (a plan's lists its problems below it). Exit 0 is fine where the change is harmless.

Seeded: the same cases on every run. The commands chosen stay Keras-free where they can
(inspect, get, --dry-run, --no-smoke); `set --kernel-init` imports Keras once.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from helpers import archive_with

from conv_surgeon.store.provenance import make_record

SEED = 19
DATA = Path(__file__).resolve().parent / "data"

# Values json.dumps cannot write (or would take 100,000 frames to): a marker string
# stands in for each while the document is built, then its text replaces the marker's.
DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a": ' * 100_000 + "1" + "}" * 100_000
HUGE_INTEGER = "9" * 5000
_MARKERS = {"\0deep-array\0": DEEP_ARRAY, "\0deep-object\0": DEEP_OBJECT, "\0huge\0": HUGE_INTEGER}
# TOML has no null and writes the others its own way.
_TOML_MARKERS = {"\0deep-array\0": DEEP_ARRAY, "\0deep-object\0": "{a = " * 100_000 + "1" + "}" * 100_000,
                 "\0huge\0": HUGE_INTEGER}

# What a value may be swapped for: every JSON type, edge numbers, and wrappers.
SWAPS: tuple[Any, ...] = (
    {}, [], 0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1.5, -0.0, "", "x", "3", None, True, False,
    math.nan, math.inf, -math.inf,
)
# Keys of a Keras config where the readers look; mutations go there half the time.
HOT_KEYS = frozenset({
    "class_name", "config", "name", "module", "layers", "inbound_nodes", "keras_history", "args", "kwargs",
    "shape", "batch_shape", "batch_input_shape", "build_config", "input_shape", "input_layers", "output_layers",
    "filters", "kernel_size", "strides", "dilation_rate", "groups", "depth_multiplier", "use_bias", "padding",
    "data_format", "activation", "axis", "epsilon", "scale", "center", "target_shape", "keepdims", "dtype",
    "layer", "cell", "trainable", "keras_version", "conv_surgeon", "history", "edits", "weights", "seed",
    "source", "init", "layout", "command", "tool", "time",
})


@dataclass(frozen=True)
class Mutation:
    """One change to a document: what, and where (a path of keys and indices)."""

    kind: str
    path: tuple[Any, ...]
    value: Any = None

    def __str__(self) -> str:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path) or "(the document)"
        shown = repr(self.value)
        return f"{self.kind} at {where}" + (f" -> {shown[:40]}" if self.kind in ("swap", "wrap") else "")


def _places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every value of a document with its path, the document itself first."""
    yield path, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _places(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _places(child, path + (index,))


def mutations(document: Any, rng: random.Random, count: int) -> list[Mutation]:
    """``count`` seeded mutations of ``document``: half at hot keys, half anywhere."""
    places = list(_places(document))
    hot = [(p, v) for p, v in places if any(isinstance(k, str) and k in HOT_KEYS for k in p[-2:])]
    found = []
    for i in range(count):
        path, value = rng.choice(hot if hot and i % 2 == 0 else places)
        kind = rng.choice(("swap", "swap", "delete", "deep", "huge", "nonfinite", "text", "wrap"))
        if kind == "delete" and not path:
            kind = "swap"
        if kind == "swap":
            found.append(Mutation(kind, path, rng.choice(SWAPS)))
        elif kind == "deep":
            found.append(Mutation(kind, path, rng.choice(("\0deep-array\0", "\0deep-object\0"))))
        elif kind == "huge":
            found.append(Mutation(kind, path, "\0huge\0"))
        elif kind == "nonfinite":
            found.append(Mutation(kind, path, rng.choice((math.nan, math.inf, -math.inf))))
        elif kind == "text":
            found.append(Mutation(kind, path, _as_text(value)))
        elif kind == "wrap":
            found.append(Mutation(kind, path, rng.choice(([value], {"value": value}))))
        else:
            found.append(Mutation(kind, path))
    return found


def _as_text(value: Any) -> Any:
    """A number (or the numbers of a list) as strings: "3" where 3 was."""
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return str(value) if value is not None else "null"


def applied(document: Any, mutation: Mutation) -> Any:
    """A copy of ``document`` with ``mutation`` made."""
    copy = json.loads(json.dumps(document))
    if not mutation.path:
        return mutation.value
    parent = copy
    for key in mutation.path[:-1]:
        parent = parent[key]
    last = mutation.path[-1]
    if mutation.kind == "delete":
        del parent[last]
    else:
        parent[last] = mutation.value
    return copy


def json_text(document: Any) -> str:
    text = json.dumps(document)
    for marker, replacement in _MARKERS.items():
        text = text.replace(json.dumps(marker), replacement)
    return text


def toml_text(document: Any) -> str | None:
    """``document`` (an object) as TOML, inline tables and arrays; None when TOML cannot
    hold it (null, a top level that is no object)."""
    if not isinstance(document, dict):
        return None

    def value(item: Any) -> str | None:
        if item is None:
            return None
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, str) and item in _TOML_MARKERS:
            return _TOML_MARKERS[item]
        if isinstance(item, float) and not math.isfinite(item):
            return "nan" if math.isnan(item) else ("inf" if item > 0 else "-inf")
        if isinstance(item, (int, float, str)):
            return json.dumps(item)
        if isinstance(item, list):
            parts = [value(x) for x in item]
            return None if None in parts else "[" + ", ".join(p for p in parts if p is not None) + "]"
        pairs = [(json.dumps(k), value(v)) for k, v in item.items()]
        if any(v is None for _, v in pairs):
            return None
        return "{" + ", ".join(f"{k} = {v}" for k, v in pairs) + "}"

    lines = [(json.dumps(k), value(v)) for k, v in document.items()]
    if any(v is None for _, v in lines):
        return None
    return "".join(f"{k} = {v}\n" for k, v in lines)


# --- running the commands -----------------------------------------------------------------


@dataclass
class Outcomes:
    """Exit codes seen, and every case that broke the rule."""

    codes: dict[int, int]
    broken: list[str]

    def check(self, result: Any, case: str) -> None:
        self.codes[result.exit_code] = self.codes.get(result.exit_code, 0) + 1
        internal = result.exit_code == 70 or "Traceback" in result.stderr or "Internal error" in result.stderr
        unruly = result.exit_code not in (0, 1, 2, 3) or (result.exit_code and not result.stderr.startswith("Error: "))
        if internal or unruly:
            self.broken.append(f"{case}: exit {result.exit_code}: {result.stderr.strip()[:300]}")

    def assert_clean(self, least: int) -> None:
        assert not self.broken, f"{len(self.broken)} cases failed:\n" + "\n".join(self.broken[:30])
        assert sum(self.codes.values()) >= least, self.codes
        assert self.codes.get(1, 0) > 0, self.codes  # the fuzz did reach refusals


def _outcomes() -> Outcomes:
    return Outcomes({}, [])


@dataclass(frozen=True)
class Base:
    """A real save to mutate, and layers to name on the command line."""

    path: Path
    conv: str  # a conv with filters to get, set and prune


def _bases(samples: Path) -> list[Base]:
    return [
        Base(samples / "tiny_cnn.keras", "conv2"),
        Base(samples / "all_convs.keras", "c2d"),
        Base(DATA / "configs" / "mixed.keras", "c1"),
        Base(DATA / "keras35_nested.keras", "fblock/conv"),
    ]


def _commands(model: Path, conv: str, out: Path) -> list[tuple[str, ...]]:
    """The commands people run on a model, Keras-free but for `set`'s initializer."""
    return [
        ("get", str(model), "--layer", conv, "-o", str(out / "k.npy")),
        ("set", str(model), "--layer", conv, "--kernel-init", "zeros", "--dry-run"),
        ("prune", str(model), "--layer", conv, "--filters", "0", "--dry-run"),
        ("fold-bn", str(model), "--dry-run"),
        ("inspect", str(model), "--json"),
    ]


def test_fuzzed_config_json_never_ends_in_an_internal_error(cli, samples: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    outcomes = _outcomes()
    for base in _bases(samples):
        with zipfile.ZipFile(base.path) as archive:
            config = json.loads(archive.read("config.json"))
        for index, mutation in enumerate(mutations(config, rng, 40)):
            model = archive_with(base.path, tmp_path / f"m{index}.keras",
                                 {"config.json": json_text(applied(config, mutation)).encode()})
            case = f"{base.path.name} config.json {mutation}"
            outcomes.check(cli("inspect", model), f"{case}: inspect")
            command = _commands(model, base.conv, tmp_path)[index % 5]
            outcomes.check(cli(*command), f"{case}: {command[0]}")
            model.unlink()
    outcomes.assert_clean(300)


def test_fuzzed_model_config_of_a_legacy_h5_and_a_saved_folder(cli, samples: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    outcomes = _outcomes()
    original = samples / "tiny_cnn.h5"
    with h5py.File(original, "r") as h5:
        config = json.loads(h5.attrs["model_config"])
    for index, mutation in enumerate(mutations(config, rng, 15)):
        model = tmp_path / f"m{index}.h5"
        shutil.copyfile(original, model)
        with h5py.File(model, "r+") as h5:
            h5.attrs["model_config"] = json_text(applied(config, mutation))
        outcomes.check(cli("inspect", model), f"tiny_cnn.h5 model_config {mutation}: inspect")
    folder = tmp_path / "saved"
    with zipfile.ZipFile(samples / "tiny_cnn.keras") as archive:
        archive.extractall(folder)
        config = json.loads(archive.read("config.json"))
    for mutation in mutations(config, rng, 15):
        (folder / "config.json").write_text(json_text(applied(config, mutation)))
        outcomes.check(cli("inspect", folder), f"saved folder config.json {mutation}: inspect")
        outcomes.check(cli("get", folder, "--layer", "conv1", "-o", tmp_path / "k.npy"),
                       f"saved folder config.json {mutation}: get")
    outcomes.assert_clean(40)


def _metadata(samples: Path) -> dict[str, Any]:
    """The metadata.json Keras wrote, with a history of two records."""
    with zipfile.ZipFile(samples / "tiny_cnn.keras") as archive:
        metadata = json.loads(archive.read("metadata.json"))
    records = [
        make_record(["conv-surgeon", "set", "m.keras", "--layer", "conv1", "--kernel-init", "zeros", "-o", "o.keras"],
                    [{"layer": "conv1", "variable": "kernel", "layout": "keras",
                      "source": {"init": "zeros", "seed": None}}], "0.1.0"),
        make_record(["conv-surgeon", "prune", "m.keras"],
                    [{"layer": "conv2", "variable": "kernel", "layout": "keras",
                      "source": {"prune": {"-1": [0, 3]}}}], "0.1.0"),
    ]
    return {**metadata, "conv_surgeon": {"history": records}}


def test_fuzzed_metadata_json_never_ends_in_an_internal_error(cli, samples: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    outcomes = _outcomes()
    metadata = _metadata(samples)
    original = samples / "tiny_cnn.keras"
    for index, mutation in enumerate(mutations(metadata, rng, 40)):
        model = archive_with(original, tmp_path / f"m{index}.keras",
                             {"metadata.json": json_text(applied(metadata, mutation)).encode()})
        case = f"metadata.json {mutation}"
        outcomes.check(cli("inspect", model, "--history"), f"{case}: inspect --history")
        if index % 2:
            command: tuple[str, ...] = ("set", str(model), "--layer", "conv1", "--kernel", str(samples / "sobel.npy"),
                                        "--no-smoke", "-o", str(tmp_path / "out.keras"))
        else:
            command = ("prune", str(model), "--layer", "conv2", "--filters", "0", "--no-smoke",
                       "-o", str(tmp_path / "out.keras"))
        outcomes.check(cli(*command), f"{case}: {command[0]}")
        model.unlink()
    outcomes.assert_clean(80)


def _plan_files(folder: Path) -> dict[str, Any]:
    """A plan that applies cleanly to tiny_cnn.keras, and the arrays it names."""
    rng = np.random.default_rng(0)
    np.save(folder / "k1.npy", rng.standard_normal((3, 3, 1, 4)).astype(np.float32))
    np.savez(folder / "bank.npz", w=rng.standard_normal((8, 4, 3, 3)).astype(np.float32))
    return {
        "$schema": "./plan.schema.json",
        "seed": 7,
        "edits": [
            {"layer": "conv1", "weights": {"kernel": "k1.npy", "bias": {"init": "zeros"}}},
            {"layer": "conv2", "layout": "torch", "weights": {"kernel": {"source": "bank.npz:w"}}},
        ],
    }


def test_fuzzed_plans_never_end_in_an_internal_error(cli, samples: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED + 3)
    outcomes = _outcomes()
    plan = _plan_files(tmp_path)
    model = samples / "tiny_cnn.keras"
    clean = tmp_path / "clean.json"
    clean.write_text(json_text(plan))
    assert cli("apply", model, clean, "--dry-run").exit_code == 0
    for index, mutation in enumerate(mutations(plan, rng, 100)):
        changed = applied(plan, mutation)
        if index % 2:
            text = toml_text(changed)
            if text is None:
                continue
            path = tmp_path / "plan.toml"
            path.write_text(text)
        else:
            path = tmp_path / "plan.json"
            path.write_text(json_text(changed))
        outcomes.check(cli("apply", model, path, "--dry-run"), f"{path.name} {mutation}: apply --dry-run")
    outcomes.assert_clean(80)
