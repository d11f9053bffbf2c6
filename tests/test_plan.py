"""The plan file of `apply`: parsing, every structural problem at once, and the schema."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conv_surgeon.errors import ConvSurgeonError, PlanError
from conv_surgeon.edits.plan import (
    Plan,
    PlanEdit,
    PlanWeight,
    load_plan,
    plan_from_mapping,
    plan_schema,
)
from conv_surgeon.edits.sources import split_source_spec

GOOD_JSON = """\
{
  "$schema": "./plan.schema.json",
  "seed": 7,
  "edits": [
    {"layer": "conv1", "weights": {"kernel": "k.npy", "bias": {"init": "zeros"}}},
    {"layer": "block/conv", "layout": "torch",
     "weights": {"kernel": {"source": "torch.npz:block.conv.weight"}}},
    {"layer": "sep2d",
     "weights": {"depthwise_kernel": {"init": "he_normal"}, "pointwise_kernel": "pw.npy"}}
  ]
}
"""

GOOD_TOML = """\
"$schema" = "./plan.schema.json"
seed = 7

[[edits]]
layer = "conv1"
weights.kernel = "k.npy"
weights.bias = { init = "zeros" }

[[edits]]
layer = "block/conv"
layout = "torch"
weights.kernel = { source = "torch.npz:block.conv.weight" }

[[edits]]
layer = "sep2d"
weights.depthwise_kernel = { init = "he_normal" }
weights.pointwise_kernel = "pw.npy"
"""

MINIMAL = {"edits": [{"layer": "conv1", "weights": {"kernel": "k.npy"}}]}


def from_mapping(document: Any, base_dir: Path = Path("/plans")) -> Plan:
    return plan_from_mapping(document, base_dir=base_dir, label="plan.json")


def problems_of(document: Any) -> tuple[str, ...]:
    """The problems of a plan that must be refused, after checking the message lists them."""
    with pytest.raises(PlanError) as caught:
        from_mapping(document)
    error = caught.value
    lines = str(error).splitlines()
    count = len(error.problems)
    assert lines[0].startswith(f"plan.json: {count} problem{'' if count == 1 else 's'}; ")
    assert lines[1:] == [f"  {problem}" for problem in error.problems]
    return error.problems


def only_problem(document: Any) -> str:
    problems = problems_of(document)
    assert len(problems) == 1, problems
    return problems[0]


def with_edit(**edit: Any) -> dict[str, Any]:
    return {"edits": [edit]}


def file_error(path: Path) -> PlanError:
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert "\n" not in str(caught.value)
    assert caught.value.problems == (str(caught.value).removeprefix(f"{path}: "),)
    return caught.value


# Reading good plans


def test_json_and_toml_plans_with_the_same_content_are_equal(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(GOOD_JSON)
    (tmp_path / "plan.toml").write_text(GOOD_TOML)
    from_json = load_plan(tmp_path / "plan.json")
    from_toml = load_plan(tmp_path / "plan.toml")
    assert from_json.path == str(tmp_path / "plan.json")
    assert dataclasses.replace(from_toml, path=from_json.path) == from_json
    assert from_json == Plan(
        path=str(tmp_path / "plan.json"),
        seed=7,
        edits=(
            PlanEdit(
                place="edits[0]",
                layer="conv1",
                layout="keras",
                weights=(
                    PlanWeight("kernel", str(tmp_path / "k.npy"), None),
                    PlanWeight("bias", None, "zeros"),
                ),
            ),
            PlanEdit(
                place="edits[1]",
                layer="block/conv",
                layout="torch",
                weights=(
                    PlanWeight("kernel", str(tmp_path / "torch.npz:block.conv.weight"), None),
                ),
            ),
            PlanEdit(
                place="edits[2]",
                layer="sep2d",
                layout="keras",
                weights=(
                    PlanWeight("depthwise_kernel", None, "he_normal"),
                    PlanWeight("pointwise_kernel", str(tmp_path / "pw.npy"), None),
                ),
            ),
        ),
    )


def test_seed_is_optional_and_place_of_names_each_weight() -> None:
    plan = from_mapping(
        {"edits": [{"layer": "c", "weights": {"kernel": "k.npy", "odd name": "o.npy"}}]}
    )
    assert plan.seed is None
    edit = plan.edits[0]
    assert [edit.place_of(weight) for weight in edit.weights] == [
        "edits[0].weights.kernel",
        'edits[0].weights["odd name"]',
    ]


@pytest.mark.parametrize("seed", [0, 7, 2**63 - 1])
def test_seed_range(seed: int) -> None:
    assert from_mapping({"seed": seed, **MINIMAL}).seed == seed


def test_an_integral_float_seed_counts_as_an_integer_as_in_json_schema() -> None:
    seed = from_mapping({"seed": 7.0, **MINIMAL}).seed
    assert seed == 7 and isinstance(seed, int)


@pytest.mark.parametrize(
    ("name", "text", "expected_seed"),
    [
        ("plan", '  {"seed": 1, "edits": [{"layer": "c", "weights": {"kernel": "k.npy"}}]}', 1),
        ("plan.txt", 'seed = 2\n[[edits]]\nlayer = "c"\nweights.kernel = "k.npy"\n', 2),
        ("plan.JSON", '{"seed": 3, "edits": [{"layer": "c", "weights": {"kernel": "k.npy"}}]}', 3),
        ("plan.Toml", 'seed = 4\n[[edits]]\nlayer = "c"\nweights.kernel = "k.npy"\n', 4),
    ],
)
def test_format_is_told_by_extension_then_by_content(
    tmp_path: Path, name: str, text: str, expected_seed: int
) -> None:
    (tmp_path / name).write_text(text)
    assert load_plan(tmp_path / name).seed == expected_seed


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(MINIMAL).encode())
    assert load_plan(tmp_path / "plan.json").edits[0].layer == "conv1"


# Source paths


def test_relative_sources_are_read_from_the_plan_directory_and_keep_their_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans = tmp_path / "plans"
    (plans / "arrays").mkdir(parents=True)
    np.savez(plans / "arrays" / "bank.npz", w1=np.zeros(3))
    absolute = str(tmp_path / "elsewhere.npy")
    document = {
        "edits": [
            {
                "layer": "conv1",
                "weights": {
                    "kernel": "arrays/bank.npz:w1",
                    "bias": {"source": "../b.npy"},
                    "gamma": absolute,
                    "beta": "w.h5:model_weights/conv1/kernel:0",
                },
            }
        ]
    }
    (plans / "plan.json").write_text(json.dumps(document))
    monkeypatch.chdir(tmp_path)

    plan = load_plan("plans/plan.json")

    assert plan.path == "plans/plan.json"
    sources = [weight.source for weight in plan.edits[0].weights]
    assert sources == [
        str(plans / "arrays" / "bank.npz:w1"),
        str(plans / ".." / "b.npy"),
        absolute,
        str(plans / "w.h5:model_weights/conv1/kernel:0"),
    ]
    # The resolved spec splits as the typed one would beside the plan.
    assert split_source_spec(sources[0]) == (str(plans / "arrays" / "bank.npz"), "w1")


def test_existence_of_sources_is_left_to_the_caller(tmp_path: Path) -> None:
    plan = from_mapping(MINIMAL, base_dir=tmp_path)
    assert plan.edits[0].weights[0].source == str(tmp_path / "k.npy")
    assert not (tmp_path / "k.npy").exists()


# Files that cannot be read as a plan


def test_json_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{\n  "seed": 7\n  "edits": []\n}\n')
    error = file_error(path)
    assert str(error) == (
        f"{path}: not valid JSON: line 3, column 3: Expecting ',' delimiter; fix the syntax"
    )


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text('seed = 7\n[[edits]]\nlayer = "conv1"\nlayer = "conv2"\n')
    error = file_error(path)
    assert str(error) == (
        f"{path}: not valid TOML: line 4, column 16: Cannot overwrite a value; fix the syntax"
    )


def test_toml_error_at_the_end_and_the_content_rule_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "plan"
    path.write_text("seed = ")
    assert str(file_error(path)) == (
        f"{path}: not valid TOML (read as TOML: the name ends in neither .json nor .toml "
        "and the text does not start with '{'): end of file: Invalid value; fix the syntax"
    )


def test_a_json_extension_is_read_as_json_whatever_the_content(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(GOOD_TOML)
    assert "not valid JSON: line 1, column 11: Extra data; " in str(file_error(path))


def test_missing_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    assert str(file_error(path)) == (
        f"{path}: cannot read the plan file: No such file or directory; check the path"
    )


def test_plan_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_bytes(b'seed = 7\nname = "\xff"\n')
    assert "not UTF-8 text (byte 0xff at offset 17)" in str(file_error(path))


def test_plan_error_is_a_user_error() -> None:
    assert issubclass(PlanError, ConvSurgeonError)
    assert PlanError.exit_code == 1


# Structural problems, each with its place


def test_unknown_keys_at_every_level_with_suggestions() -> None:
    document = {
        "sed": 7,
        "edits": [
            {
                "layer": "conv1",
                "layot": "torch",
                "weights": {"kernel": {"sorce": "k.npy", "source": "k.npy"}},
            },
            {"layer": "conv2", "weights": {"bias": {"init": "zeros"}}, "colour": "red"},
        ],
    }
    assert problems_of(document) == (
        "sed: unknown key; did you mean 'seed'? a plan takes '$schema', 'seed' and 'edits'",
        (
            "edits[0].layot: unknown key; did you mean 'layout'? an edit takes 'layer', "
            "'layout' and 'weights'"
        ),
        (
            "edits[0].weights.kernel.sorce: unknown key; did you mean 'source'? a weight takes "
            "'source' and 'init'"
        ),
        "edits[1].colour: unknown key; an edit takes 'layer', 'layout' and 'weights'",
    )


def test_a_layer_named_twice_names_both_places() -> None:
    document = {
        "edits": [
            {"layer": "conv1", "weights": {"kernel": "a.npy"}},
            {"layer": "conv2", "weights": {"kernel": "b.npy"}},
            {"layer": "conv1", "weights": {"bias": "c.npy"}},
        ]
    }
    assert only_problem(document) == (
        "edits[2].layer: layer 'conv1' is named twice, here and at edits[0]; "
        "merge the two edits into one"
    )


def test_a_layer_named_twice_is_found_even_when_both_edits_have_other_problems() -> None:
    document = {
        "edits": [
            {"layer": "conv1", "weights": {}},
            {"layer": "conv1", "layout": "tf", "weights": {"kernel": "a.npy"}},
        ]
    }
    places = [problem.split(":")[0] for problem in problems_of(document)]
    assert places == ["edits[0].weights", "edits[1].layout", "edits[1].layer"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            {"weights": {"kernel": "k.npy"}},
            (
                "edits[0].layer: missing; name the layer as `conv-surgeon inspect` lists it, "
                'e.g. "layer": "conv1"'
            ),
        ),
        ({"layer": 3, "weights": {"kernel": "k.npy"}}, "edits[0].layer: expected a string, "),
        ({"layer": "", "weights": {"kernel": "k.npy"}}, "edits[0].layer: empty; "),
        (
            {"layer": "c"},
            'edits[0].weights: missing; name the variables to set, e.g. {"kernel": "k.npy", ',
        ),
        ({"layer": "c", "weights": {}}, "edits[0].weights: empty; name at least one variable"),
        (
            {"layer": "c", "weights": ["k.npy"]},
            "edits[0].weights: expected an object from variable names to sources",
        ),
        (
            {"layer": "c", "weights": {"": "k.npy"}},
            'edits[0].weights[""]: empty variable name; ',
        ),
        (
            {"layer": "c", "layout": "pytorch", "weights": {"kernel": "k.npy"}},
            (
                "edits[0].layout: expected 'keras' (the default) or 'torch', received the string "
                "\"pytorch\"; did you mean 'torch'? "
            ),
        ),
        (
            {"layer": "c", "layout": None, "weights": {"kernel": "k.npy"}},
            "edits[0].layout: expected 'keras' (the default) or 'torch', received null; torch ",
        ),
        (
            {"layer": "c", "weights": {"kernel": {"source": "k.npy", "init": "zeros"}}},
            'edits[0].weights.kernel: gives both "source" and "init"; keep one',
        ),
        (
            {"layer": "c", "weights": {"kernel": {}}},
            'edits[0].weights.kernel: needs "source" or "init"',
        ),
        (
            {"layer": "c", "weights": {"kernel": 0.5}},
            "edits[0].weights.kernel: expected a source string (file.npy, file.npz:KEY, ",
        ),
        (
            {"layer": "c", "weights": {"kernel": {"source": ["k.npy"]}}},
            "edits[0].weights.kernel.source: expected a string (file.npy, ",
        ),
        (
            {"layer": "c", "weights": {"kernel": {"init": ""}}},
            "edits[0].weights.kernel.init: expected an initializer spec such as he_normal",
        ),
        ({"layer": "c", "weights": {"kernel": ""}}, "edits[0].weights.kernel: empty source; "),
        (
            {"layer": "c", "weights": {"kernel": "-"}},
            "edits[0].weights.kernel: '-' (stdin) cannot be a source in a plan: ",
        ),
        (
            {"layer": "c", "weights": {"kernel": {"source": "-"}}},
            "edits[0].weights.kernel.source: '-' (stdin) cannot be a source in a plan: ",
        ),
    ],
)
def test_each_problem_of_an_edit_has_its_place(edit: dict[str, Any], expected: str) -> None:
    assert only_problem(with_edit(**edit)).startswith(expected)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({}, 'edits: missing; a plan lists its edits as "edits": [{"layer": '),
        ({"edits": []}, "edits: empty; list at least one edit"),
        ({"edits": {"layer": "c"}}, "edits: expected an array of edits such as "),
        ({"edits": ["conv1"]}, 'edits[0]: expected an edit such as {"layer": '),
        ({"$schema": 1, **MINIMAL}, "$schema: expected a string"),
        ({"seed": -1, **MINIMAL}, "seed: expected an integer from 0 to 2**63-1, received "),
        ({"seed": 2**63, **MINIMAL}, "seed: expected an integer from 0 to 2**63-1, received "),
        ({"seed": True, **MINIMAL}, "seed: expected an integer from 0 to 2**63-1, received true"),
        ({"seed": "7", **MINIMAL}, "seed: expected an integer from 0 to 2**63-1, received the "),
        ({"seed": 1.5, **MINIMAL}, "seed: expected an integer from 0 to 2**63-1, received the "),
        ([MINIMAL], 'top level: expected an object with an "edits" array, received an array'),
    ],
)
def test_each_problem_of_the_plan_has_its_place(document: Any, expected: str) -> None:
    assert only_problem(document).startswith(expected)


def test_every_problem_is_listed_not_just_the_first() -> None:
    document = {
        "seed": -3,
        "edits": [
            {"layer": "conv1", "weights": {"kernel": "-"}},
            {"layer": "conv2", "layout": "onnx", "weights": {}},
            "conv3",
            {"layer": "conv1", "weights": {"bias": {"init": "zeros", "source": "b.npy"}}},
        ],
    }
    places = [problem.split(": ")[0] for problem in problems_of(document)]
    assert places == [
        "seed",
        "edits[0].weights.kernel",
        "edits[1].layout",
        "edits[1].weights",
        "edits[2]",
        "edits[3].weights.bias",
        "edits[3].layer",
    ]


def test_json_keys_given_twice_are_problems_not_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(
        '{"edits": [{"layer": "c", "layer": "d",'
        ' "weights": {"kernel": "a.npy", "kernel": {"init": "zeros", "init": "ones"}}}]}'
    )
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert caught.value.problems == (
        (
            "edits[0].layer: given more than once in one object; JSON keeps only the last, so "
            "keep one"
        ),
        (
            "edits[0].weights.kernel: given more than once in one object; JSON keeps only the "
            "last, so keep one"
        ),
        (
            "edits[0].weights.kernel.init: given more than once in one object; JSON keeps only "
            "the last, so keep one"
        ),
    )


def test_toml_places_count_tables_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(
        '[[edits]]\nlayer = "conv1"\nweights.kernel = "k.npy"\n\n'
        '[[edits]]\nlayer = "conv2"\nlayout = "TORCH"\nweights.bias = { init = 0 }\n'
    )
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert [problem.split(": ")[0] for problem in caught.value.problems] == [
        "edits[1].layout",
        "edits[1].weights.bias.init",
    ]
    assert str(caught.value).startswith(f"{path}: 2 problems; ")


def test_a_toml_date_is_named_as_such() -> None:
    import datetime

    problem = only_problem({"seed": datetime.date(2024, 1, 2), **MINIMAL})
    assert "received a TOML date/time 2024-01-02" in problem


def test_plan_module_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import conv_surgeon.edits.plan\n"
        "loaded = sorted(m for m in ('numpy', 'tensorflow', 'keras') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


# The JSON Schema

# Keywords the hand check below understands, and annotations it may ignore.
CHECKED_KEYWORDS = {
    "$ref", "type", "properties", "required", "additionalProperties", "items", "minItems",
    "minProperties", "propertyNames", "enum", "const", "minimum", "maximum", "minLength",
    "not", "oneOf",
}  # fmt: skip
ANNOTATIONS = {"$schema", "$defs", "title", "description", "default"}


def test_schema_loads_with_its_top_level_keys() -> None:
    schema = plan_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"$schema", "seed", "edits"}
    assert schema["required"] == ["edits"]
    assert schema["additionalProperties"] is False
    assert set(schema["$defs"]) == {"edit", "weight", "source", "init"}
    assert set(schema["$defs"]["edit"]["properties"]) == {"layer", "layout", "weights"}
    assert schema["properties"]["seed"]["maximum"] == 2**63 - 1


def test_schema_is_a_fresh_copy_each_time() -> None:
    plan_schema()["title"] = "changed"
    assert plan_schema()["title"] == "conv-surgeon plan"


def test_schema_documents_every_field_and_uses_only_checked_keywords() -> None:
    schema = plan_schema()
    fields = [schema, *schema["properties"].values(), *schema["$defs"].values()]
    fields += schema["$defs"]["edit"]["properties"].values()
    for field in fields:
        assert field["title"] and field["description"], field

    def keywords(node: Any) -> set[str]:
        if isinstance(node, list):
            return set().union(*(keywords(item) for item in node))
        if not isinstance(node, dict):
            return set()
        found = set(node)
        for key, value in node.items():
            if key in ("properties", "$defs"):
                found |= set().union(*(keywords(sub) for sub in value.values()))
            elif key not in ("enum", "const", "required", "default"):
                found |= keywords(value)
        return found

    assert keywords(schema) <= CHECKED_KEYWORDS | ANNOTATIONS


def is_valid(instance: Any, node: dict[str, Any], root: dict[str, Any]) -> bool:
    """Draft 2020-12 for the keywords in CHECKED_KEYWORDS, nothing more."""
    if "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        if not is_valid(instance, target, root):
            return False
    if "type" in node and not has_type(instance, node["type"]):
        return False
    if "enum" in node and not any(equal(instance, option) for option in node["enum"]):
        return False
    if "const" in node and not equal(instance, node["const"]):
        return False
    if "not" in node and is_valid(instance, node["not"], root):
        return False
    if "oneOf" in node and sum(is_valid(instance, sub, root) for sub in node["oneOf"]) != 1:
        return False
    if isinstance(instance, str) and len(instance) < node.get("minLength", 0):
        return False
    if has_type(instance, "number"):
        if instance < node.get("minimum", -float("inf")):
            return False
        if instance > node.get("maximum", float("inf")):
            return False
    if isinstance(instance, list):
        if len(instance) < node.get("minItems", 0):
            return False
        if "items" in node and not all(is_valid(item, node["items"], root) for item in instance):
            return False
    if isinstance(instance, dict):
        if len(instance) < node.get("minProperties", 0):
            return False
        if any(key not in instance for key in node.get("required", ())):
            return False
        properties = node.get("properties", {})
        for key, value in instance.items():
            if "propertyNames" in node and not is_valid(key, node["propertyNames"], root):
                return False
            if key in properties:
                sub = properties[key]
            elif "additionalProperties" in node:
                sub = node["additionalProperties"]
            else:
                continue
            if sub is False or (sub is not True and not is_valid(value, sub, root)):
                return False
    return True


def has_type(instance: Any, name: str) -> bool:
    if isinstance(instance, bool):
        return name == "boolean"
    if name == "integer":
        return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())
    python_types = {
        "object": dict,
        "array": list,
        "string": str,
        "number": (int, float),
        "null": type(None),
    }
    return isinstance(instance, python_types[name])


def equal(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def edit(**weights: Any) -> dict[str, Any]:
    return {"edits": [{"layer": "conv1", "weights": weights}]}


AGREED_GOOD = [
    json.loads(GOOD_JSON),
    MINIMAL,
    {"seed": 0, **MINIMAL},
    {"seed": 2**63 - 1, **MINIMAL},
    {"seed": 7.0, **MINIMAL},
    {"$schema": "x", **MINIMAL},
    edit(kernel={"source": "k.npy"}),
    edit(kernel={"init": "random_normal:stddev=0.02"}),
    edit(**{"any variable": "v.npy"}),
    {"edits": [{"layer": "c", "layout": "torch", "weights": {"kernel": "k.npy"}}]},
    {"edits": [{"layer": "a", "weights": {"k": "k"}}, {"layer": "b", "weights": {"k": "k"}}]},
]

AGREED_BAD = [
    [MINIMAL],
    {},
    {"edits": []},
    {"edits": {}},
    {"edits": ["conv1"]},
    {"edit": MINIMAL["edits"]},
    {"seed": 1, "edits": MINIMAL["edits"], "extra": 0},
    {"$schema": 3, **MINIMAL},
    {"seed": -1, **MINIMAL},
    {"seed": 2**63, **MINIMAL},
    {"seed": 1.5, **MINIMAL},
    {"seed": True, **MINIMAL},
    {"seed": "7", **MINIMAL},
    {"seed": None, **MINIMAL},
    {"edits": [{"weights": {"kernel": "k.npy"}}]},
    {"edits": [{"layer": "", "weights": {"kernel": "k.npy"}}]},
    {"edits": [{"layer": 1, "weights": {"kernel": "k.npy"}}]},
    {"edits": [{"layer": "c"}]},
    {"edits": [{"layer": "c", "weights": "k.npy"}]},
    {"edits": [{"layer": "c", "layout": "Torch", "weights": {"kernel": "k.npy"}}]},
    {"edits": [{"layer": "c", "layout": None, "weights": {"kernel": "k.npy"}}]},
    {"edits": [{"layer": "c", "name": "c", "weights": {"kernel": "k.npy"}}]},
    edit(),
    edit(kernel=""),
    edit(kernel="-"),
    edit(kernel=1),
    edit(kernel=None),
    edit(kernel=["k.npy"]),
    edit(kernel={}),
    edit(kernel={"source": "k.npy", "init": "zeros"}),
    edit(kernel={"source": "-"}),
    edit(kernel={"source": 1}),
    edit(kernel={"init": ""}),
    edit(kernel={"init": None}),
    edit(kernel={"init": "zeros", "seed": 1}),
    edit(**{"": "k.npy"}),
]


@pytest.mark.parametrize("document", AGREED_GOOD, ids=range(len(AGREED_GOOD)))
def test_schema_and_validator_accept_the_same_good_plans(document: Any) -> None:
    assert is_valid(document, plan_schema(), plan_schema())
    from_mapping(copy.deepcopy(document))


@pytest.mark.parametrize("document", AGREED_BAD, ids=range(len(AGREED_BAD)))
def test_schema_and_validator_refuse_the_same_bad_plans(document: Any) -> None:
    assert not is_valid(document, plan_schema(), plan_schema())
    problems_of(copy.deepcopy(document))


def test_the_validator_is_stricter_than_the_schema_only_on_repeated_layers() -> None:
    # JSON Schema cannot say "each layer once" (nor see JSON's repeated keys).
    document = {"edits": [MINIMAL["edits"][0], MINIMAL["edits"][0]]}
    assert is_valid(document, plan_schema(), plan_schema())
    problems_of(document)


def test_the_hand_check_agrees_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = plan_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for document in AGREED_GOOD:
        assert validator.is_valid(document), document
    for document in AGREED_BAD:
        assert not validator.is_valid(document), document
