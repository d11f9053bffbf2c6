"""Issue 20's screens on MobileNetV2 (keras.applications, weights=None) at 60, 80 and 120
columns: `inspect --all --stats`, `diff` of a model pruned by the real `prune`, `prune`,
`apply` and `set`.

On every whole screen: no line is wider than the terminal, and every layer name, shape and
number the report holds (read from its --json, or computed here from the file with h5py
and numpy) stands whole on a line. Slices of each screen, or all of it, are compared
character for character (trailing padding aside): a width chooses the layout (the boxed
table, a compact one whose words and paths wrap, one record per block), and the slices
show each one.

Run in process from a folder holding the model as `mobilenet_v2.keras`, so that the paths
are the ones typed. Nothing here runs the model (--dry-run, --no-smoke).
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conv_surgeon.cli import app

pytestmark = pytest.mark.slow  # MobileNetV2 is built once per session: seconds

WIDTHS = (60, 80, 120)


@pytest.fixture(scope="module")
def folder(architectures, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model, and a copy pruned by the real `prune` (2 filters off every group)."""
    here = tmp_path_factory.mktemp("screens")
    shutil.copyfile(architectures.file("MobileNetV2"), here / "mobilenet_v2.keras")
    pruned = invoke(here, None, "prune", "mobilenet_v2.keras", "--all", "--smallest-l1", "2", "--no-smoke",
                    "-o", "pruned.keras")
    assert pruned.exit_code == 0, pruned.stderr
    return here


def invoke(folder: Path, width: int | None, *args: str):
    """The app, run in ``folder`` in a terminal ``width`` columns wide (None: off a terminal)."""
    env = {"COLUMNS": str(width) if width else None, "NO_COLOR": None}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def screen(folder: Path, width: int, *args: str) -> str:
    result = invoke(folder, width, *args)
    assert result.exit_code in (0, 1) and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, too_wide
    return "\n".join(line.rstrip() for line in lines) + "\n"


def report(folder: Path, *args: str) -> dict:
    return json.loads(invoke(folder, None, *args, "--json").stdout)


def assert_whole(text: str, *words: str) -> None:
    """Each word on one line, not part of a longer name or number."""
    tokens = set(text.split())
    for word in words:
        if " " in word:
            assert re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w.])", text), word
        else:
            assert word in tokens, word


def stored(path: Path, layer: str) -> np.ndarray:
    """A layer's first variable as Keras stored it, read with h5py."""
    with zipfile.ZipFile(path) as archive:
        store = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(store), "r") as h5:
        found: list[np.ndarray] = []

        def visit(name: str, node: object) -> None:
            if isinstance(node, h5py.Group) and name.endswith("vars") and node.attrs.get("name") == layer:
                found.append(node["0"][()])

        h5.visititems(visit)
    assert len(found) == 1, layer
    return found[0].astype(np.float64)


def g(x: float) -> str:
    return f"{x:.4g}"


def shape(values: list[int]) -> str:
    return str(tuple(values))


# --- inspect --all --stats -------------------------------------------------------------

INSPECT_120 = """\
mobilenet_v2.keras: Functional 'mobilenetv2_1.00_32' (keras, Keras 3.15.1)
layer                       class               weights                           config
────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
Conv1                       Conv2D              kernel (3, 3, 3, 32) float32      filters=32 kernel=3x3 strides=2x2 same
                                                                                  no bias
bn_Conv1                    BatchNormalization  gamma (32,) float32
                                                beta (32,) float32
                                                moving_mean (32,) float32
                                                moving_variance (32,) float32
expanded_conv_depthwise     DepthwiseConv2D     kernel (3, 3, 32, 1) float32      kernel=3x3 same no bias
"""

STATS_120 = """\
weight statistics
layer                       variable              min      max        mean      std     L2  zeros  non-finite
─────────────────────────────────────────────────────────────────────────────────────────────────────────────
{conv1}
bn_Conv1                    gamma                   1        1           1        0  5.657      0           0
bn_Conv1                    beta                    0        0           0        0      0     32           0
bn_Conv1                    moving_mean             0        0           0        0      0     32           0
bn_Conv1                    moving_variance         1        1           1        0  5.657      0           0
"""

INSPECT_RECORDS = """\
layer:     Conv1
  class:   Conv2D
  weights: kernel (3, 3, 3, 32) float32
  config:  filters=32 kernel=3x3 strides=2x2 same no bias

layer:     bn_Conv1
  class:   BatchNormalization
  weights: gamma (32,) float32
           beta (32,) float32
           moving_mean (32,) float32
           moving_variance (32,) float32

layer:     expanded_conv_depthwise
"""

# One record per layer, a line per variable, its statistics side by side as many to a line
# as fit (bn_Conv1's numbers are the same at every width: gamma 1, moving_variance 1).
STATS_RECORDS = {
    80: """\
layer:      bn_Conv1
  variable: gamma
  min: 1  max: 1  mean: 1  std: 0  L2: 5.657  zeros: 0  non-finite: 0
  variable: beta
  min: 0  max: 0  mean: 0  std: 0  L2: 0  zeros: 32  non-finite: 0
  variable: moving_mean
  min: 0  max: 0  mean: 0  std: 0  L2: 0  zeros: 32  non-finite: 0
  variable: moving_variance
  min: 1  max: 1  mean: 1  std: 0  L2: 5.657  zeros: 0  non-finite: 0

""",
    60: """\
layer:      bn_Conv1
  variable: gamma
  min: 1  max: 1  mean: 1  std: 0  L2: 5.657  zeros: 0
  non-finite: 0
  variable: beta
  min: 0  max: 0  mean: 0  std: 0  L2: 0  zeros: 32
  non-finite: 0
  variable: moving_mean
  min: 0  max: 0  mean: 0  std: 0  L2: 0  zeros: 32
  non-finite: 0
  variable: moving_variance
  min: 1  max: 1  mean: 1  std: 0  L2: 5.657  zeros: 0
  non-finite: 0

""",
}


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_all_stats(folder: Path, width: int) -> None:
    text = screen(folder, width, "inspect", "mobilenet_v2.keras", "--all", "--stats")
    document = report(folder, "inspect", "mobilenet_v2.keras", "--all", "--stats")
    assert len(document["layers"]) == 105
    for layer in document["layers"]:
        assert_whole(text, layer["name"], layer["class"])
        for name, weight in layer["weights"].items():
            stats = weight["stats"]
            assert_whole(text, f"{name} {shape(weight['shape'])} {weight['dtype']}",
                         *(g(stats[key]) for key in ("min", "max", "mean", "std", "l2")), str(stats["zeros"]))

    kernel = stored(folder / "mobilenet_v2.keras", "Conv1")
    numbers = {"min": g(kernel.min()), "max": g(kernel.max()), "mean": g(kernel.mean()), "std": g(kernel.std()),
               "l2": g(math.sqrt((kernel ** 2).sum()))}
    if width == 120:  # both tables fit: paths whole, the config wraps between words
        assert text.startswith(INSPECT_120)
        conv1 = f"{'Conv1':<26}  {'kernel':<15}  " + "  ".join(
            f"{numbers[key]:>{size}}" for key, size in (("min", 8), ("max", 7), ("mean", 10), ("std", 7), ("l2", 5))
        ) + f"  {0:>5}  {0:>10}"
        assert STATS_120.format(conv1=conv1) in text
    else:  # one record per layer, per variable
        records = text.split("\n", 1 if width == 80 else 2)[-1]  # after the title: one line, or two
        assert records.startswith(INSPECT_RECORDS)
        assert STATS_RECORDS[width] in text
        conv1 = text.split("weight statistics\nlayer:      Conv1\n  variable: kernel\n", 1)[1].split("\n\n", 1)[0]
        assert all(line.startswith("  ") and len(line) <= width for line in conv1.split("\n")), conv1
        assert "  ".join(line.strip() for line in conv1.split("\n")) == "  ".join(
            f"{label}: {numbers[key]}" for label, key in (("min", "min"), ("max", "max"), ("mean", "mean"),
                                                          ("std", "std"), ("L2", "l2"))) + "  zeros: 0  non-finite: 0"
    assert text.endswith("105 layers with weights, 3,538,984 parameters\n"
                         + ("262 variables in 105 layers; 0 optimizer variables; 0 not placed on a layer\n"
                            if width > 60 else "262 variables in 105 layers; 0 optimizer variables; 0 not\n"
                                               "placed on a layer\n"))


# --- diff of a pruned model -------------------------------------------------------------

DIFF_120_HEAD = """\
a: mobilenet_v2.keras
b: pruned.keras
layer                    status                           variable  shape                                   dtype
───────────────────────────────────────────────────────────────────────────────────────────────────────────────────
Conv1                    2 of 32 filters removed          kernel    (3, 3, 3, 32) -> (3, 3, 3, 30)          float32
expanded_conv_depthwise  2 of 32 channels removed         kernel    (3, 3, 32, 1) -> (3, 3, 30, 1)          float32
expanded_conv_project    2 of 32 input channels removed   kernel    (1, 1, 32, 16) -> (1, 1, 30, 14)        float32
                         2 of 16 filters removed
block_1_expand           2 of 16 input channels removed   kernel    (1, 1, 16, 96) -> (1, 1, 14, 94)        float32
                         2 of 96 filters removed
"""

DIFF_120_TAIL = """\
block_16_project         2 of 960 input channels removed  kernel    (1, 1, 960, 320) -> (1, 1, 958, 318)    float32
                         2 of 320 filters removed
Conv_1                   2 of 320 input channels removed  kernel    (1, 1, 320, 1280) -> (1, 1, 318, 1278)  float32
                         2 of 1280 filters removed
52 layers differ; 0 of 52 layers the same
"""

DIFF_RECORDS_HEAD = """\
a: mobilenet_v2.keras
b: pruned.keras
layer:      Conv1
  status:   2 of 32 filters removed
  variable: kernel
  shape:    (3, 3, 3, 32) -> (3, 3, 3, 30)
  dtype:    float32

layer:      expanded_conv_depthwise
  status:   2 of 32 channels removed
  variable: kernel
  shape:    (3, 3, 32, 1) -> (3, 3, 30, 1)
  dtype:    float32

layer:      expanded_conv_project
  status:   2 of 32 input channels removed
            2 of 16 filters removed
  variable: kernel
  shape:    (1, 1, 32, 16) -> (1, 1, 30, 14)
  dtype:    float32

"""

DIFF_RECORDS_TAIL = """\

layer:      Conv_1
  status:   2 of 320 input channels removed
            2 of 1280 filters removed
  variable: kernel
  shape:    (1, 1, 320, 1280) -> (1, 1, 318, 1278)
  dtype:    float32

52 layers differ; 0 of 52 layers the same
"""


@pytest.mark.parametrize("width", WIDTHS)
def test_diff_of_a_pruned_model(folder: Path, width: int) -> None:
    text = screen(folder, width, "diff", "mobilenet_v2.keras", "pruned.keras")
    document = report(folder, "diff", "mobilenet_v2.keras", "pruned.keras")
    assert {layer["status"] for layer in document["layers"]} == {"resized"}
    for layer in document["layers"]:
        assert_whole(text, layer["path"])
        for change in layer["resized"]:
            removed = change["before"] - change["after"]
            assert_whole(text, f"{removed} of {change['before']} {change['axis']} removed")
        for variable in layer["variables"]:
            assert_whole(text, f"{shape(variable['shape_a'])} -> {shape(variable['shape_b'])}")
    # The BatchNormalizations and the classifier lost channels too: not listed without --all,
    # but named last.
    others = document["others_differing"]
    assert len(others) == 53 and others[-1] == "predictions"  # the Dense after the last conv
    assert all(name.endswith(("_BN", "_bn")) or name == "bn_Conv1" for name in others[:-1])
    text, last = text.split("52 layers differ; 0 of 52 layers the same\n")
    assert all(len(line) <= width for line in last.splitlines())
    assert " ".join(last.split()) == (f"53 other layers with weights differ: {', '.join(others[:5])} and 48 more; "
                                      "--all compares every layer")
    text += "52 layers differ; 0 of 52 layers the same\n"
    if width == 120:  # the two columns without numbers are left out: the table fits
        assert text.startswith(DIFF_120_HEAD) and text.endswith(DIFF_120_TAIL)
    else:  # a change a line: it cannot fit beside the shapes in 80 columns
        assert text.startswith(DIFF_RECORDS_HEAD) and text.endswith(DIFF_RECORDS_TAIL)


# --- prune ------------------------------------------------------------------------------

PRUNE_TITLE = "mobilenet_v2.keras: 3 filters removed from 1 group (filters); would write (dry run)\n"

PRUNE_GROUPS = """\
┏━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━┓
┃ group (convs)       ┃    filters ┃ removed ┃
┡━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━┩
│ block_13_project +2 │ 160 -> 157 │ 3, 7, 9 │
└─────────────────────┴────────────┴─────────┘
layers changed: 9
"""

PRUNE_END = """\
parameters: 3,538,984 -> 3,522,820 (-16,164, -0.5%)
MACs: 7,392,128 -> 7,376,000 (-16,128, -0.2%)
"""

PRUNE_LAYERS = {
    120: """\
┏━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┓
┃ layer               ┃ class              ┃ shapes                                      ┃
┡━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┩
│ block_13_project    │ Conv2D             │ kernel (1, 1, 576, 160) -> (1, 1, 576, 157) │
│ block_13_project_BN │ BatchNormalization │ gamma (160,) -> (157,)                      │
│                     │                    │ beta (160,) -> (157,)                       │
│                     │                    │ moving_mean (160,) -> (157,)                │
│                     │                    │ moving_variance (160,) -> (157,)            │
│ block_14_expand     │ Conv2D             │ kernel (1, 1, 160, 960) -> (1, 1, 157, 960) │
│ block_14_project    │ Conv2D             │ kernel (1, 1, 960, 160) -> (1, 1, 960, 157) │
│ block_14_project_BN │ BatchNormalization │ gamma (160,) -> (157,)                      │
│                     │                    │ beta (160,) -> (157,)                       │
│                     │                    │ moving_mean (160,) -> (157,)                │
│                     │                    │ moving_variance (160,) -> (157,)            │
│ block_15_expand     │ Conv2D             │ kernel (1, 1, 160, 960) -> (1, 1, 157, 960) │
│ block_15_project    │ Conv2D             │ kernel (1, 1, 960, 160) -> (1, 1, 960, 157) │
│ block_15_project_BN │ BatchNormalization │ gamma (160,) -> (157,)                      │
│                     │                    │ beta (160,) -> (157,)                       │
│                     │                    │ moving_mean (160,) -> (157,)                │
│                     │                    │ moving_variance (160,) -> (157,)            │
│ block_16_expand     │ Conv2D             │ kernel (1, 1, 160, 960) -> (1, 1, 157, 960) │
└─────────────────────┴────────────────────┴─────────────────────────────────────────────┘
""",
    80: """\
layer                class               shapes
────────────────────────────────────────────────────────────────────────────────
block_13_project     Conv2D              kernel (1, 1, 576, 160) ->
                                         (1, 1, 576, 157)
block_13_project_BN  BatchNormalization  gamma (160,) -> (157,)
                                         beta (160,) -> (157,)
                                         moving_mean (160,) -> (157,)
                                         moving_variance (160,) -> (157,)
block_14_expand      Conv2D              kernel (1, 1, 160, 960) ->
                                         (1, 1, 157, 960)
block_14_project     Conv2D              kernel (1, 1, 960, 160) ->
                                         (1, 1, 960, 157)
block_14_project_BN  BatchNormalization  gamma (160,) -> (157,)
                                         beta (160,) -> (157,)
                                         moving_mean (160,) -> (157,)
                                         moving_variance (160,) -> (157,)
block_15_expand      Conv2D              kernel (1, 1, 160, 960) ->
                                         (1, 1, 157, 960)
block_15_project     Conv2D              kernel (1, 1, 960, 160) ->
                                         (1, 1, 960, 157)
block_15_project_BN  BatchNormalization  gamma (160,) -> (157,)
                                         beta (160,) -> (157,)
                                         moving_mean (160,) -> (157,)
                                         moving_variance (160,) -> (157,)
block_16_expand      Conv2D              kernel (1, 1, 160, 960) ->
                                         (1, 1, 157, 960)
""",
    60: """\
layer:    block_13_project
  class:  Conv2D
  shapes: kernel (1, 1, 576, 160) -> (1, 1, 576, 157)

layer:    block_13_project_BN
  class:  BatchNormalization
  shapes: gamma (160,) -> (157,)
          beta (160,) -> (157,)
          moving_mean (160,) -> (157,)
          moving_variance (160,) -> (157,)

layer:    block_14_expand
  class:  Conv2D
  shapes: kernel (1, 1, 160, 960) -> (1, 1, 157, 960)

layer:    block_14_project
  class:  Conv2D
  shapes: kernel (1, 1, 960, 160) -> (1, 1, 960, 157)

layer:    block_14_project_BN
  class:  BatchNormalization
  shapes: gamma (160,) -> (157,)
          beta (160,) -> (157,)
          moving_mean (160,) -> (157,)
          moving_variance (160,) -> (157,)

layer:    block_15_expand
  class:  Conv2D
  shapes: kernel (1, 1, 160, 960) -> (1, 1, 157, 960)

layer:    block_15_project
  class:  Conv2D
  shapes: kernel (1, 1, 960, 160) -> (1, 1, 960, 157)

layer:    block_15_project_BN
  class:  BatchNormalization
  shapes: gamma (160,) -> (157,)
          beta (160,) -> (157,)
          moving_mean (160,) -> (157,)
          moving_variance (160,) -> (157,)

layer:    block_16_expand
  class:  Conv2D
  shapes: kernel (1, 1, 160, 960) -> (1, 1, 157, 960)

""",
}


@pytest.mark.parametrize("width", WIDTHS)
def test_prune_one_group(folder: Path, width: int) -> None:
    text = screen(folder, width, "prune", "mobilenet_v2.keras", "--layer", "block_13_project", "--filters", "3,7,9",
                  "--dry-run")
    title = {120: PRUNE_TITLE, 80: PRUNE_TITLE.replace(" (dry run)", "\n(dry run)"),
             60: PRUNE_TITLE.replace(" (filters)", "\n(filters)")}[width]
    assert text == title + PRUNE_GROUPS + PRUNE_LAYERS[width] + PRUNE_END


@pytest.mark.parametrize("width", WIDTHS)
def test_prune_every_group(folder: Path, width: int) -> None:
    """Every group and every layer changed, down to the Dense layer after the pooling."""
    args = ("prune", "mobilenet_v2.keras", "--all", "--smallest-l1", "2", "--dry-run")
    text = screen(folder, width, *args)
    document = report(folder, *args)
    assert document["layers"][-1]["layer"] == "predictions"
    for group in document["groups"]:
        assert_whole(text, group["members"][0], f"{group['channels']} -> {group['kept']}",
                     ", ".join(str(i) for i in group["removed"]))
    for layer in document["layers"]:
        assert_whole(text, layer["layer"], layer["class"])
        for name, change in layer["variables"].items():
            assert_whole(text, f"{name} {shape(change['before'])} -> {shape(change['after'])}")
    counts = [(what, document[key]["before"], document[key]["after"]) for what, key in
              (("parameters", "parameters"), ("MACs", "macs"))]
    assert text.endswith("".join(
        f"{what}: {before:,} -> {after:,} ({after - before:+,}, {(after - before) / before:+.1%})\n"
        for what, before, after in counts))


# --- apply and set ----------------------------------------------------------------------

APPLY_PLAN = {"edits": [
    {"layer": "expanded_conv_depthwise", "weights": {"kernel": {"init": "zeros"}}},
    {"layer": "block_16_project", "weights": {"kernel": {"init": "constant:value=0.5"}}},
    {"layer": "Conv_1", "weights": {"kernel": {"init": "ones"}}},
]}


NO_OPTIMIZER = "optimizer: no optimizer state in the file\n"  # MobileNetV2 as built, never compiled


def changes(folder: Path) -> list[tuple[str, str, str, str, str, str]]:
    """Each edit of APPLY_PLAN as the report should show it, computed from the file."""
    rows = []
    for edit, value in zip(APPLY_PLAN["edits"], (0.0, 0.5, 1.0)):
        old = stored(folder / "mobilenet_v2.keras", edit["layer"])
        new = np.full_like(old, value)
        rows.append((edit["layer"], shape(list(old.shape)), "init " + edit["weights"]["kernel"]["init"],
                     g(math.sqrt((old ** 2).sum())), g(math.sqrt((new ** 2).sum())), g(np.abs(new - old).max())))
    return rows


@pytest.mark.parametrize("width", WIDTHS)
def test_apply(folder: Path, width: int) -> None:
    (folder / "plan.json").write_text(json.dumps(APPLY_PLAN))
    text = screen(folder, width, "apply", "mobilenet_v2.keras", "plan.json", "--no-smoke", "--dry-run")
    rows = changes(folder)
    title = "mobilenet_v2.keras: 3 layers; would write (dry run)\n"
    if width == 120:  # the table fits: the numbers are as wide as their headers
        assert all(len(old) <= 6 and len(new) <= 6 for *_, old, new, _ in rows)
        assert text == title + (
            "layer                    variable  shape              dtype    source                   old L2  new L2"
            "  max |change|\n" + "─" * 116 + "\n") + "".join(
            f"{layer:<23}  kernel    {dims:<17}  float32  {source:<23}  {old:>6}  {new:>6}  {change:>12}\n"
            for layer, dims, source, old, new, change in rows) + NO_OPTIMIZER
    else:  # one record per layer
        assert text == title + "\n".join(
            f"layer:          {layer}\n  variable:     kernel\n  shape:        {dims}\n  dtype:        float32\n"
            f"  source:       {source}\n  old L2:       {old}\n  new L2:       {new}\n  max |change|: {change}\n"
            for layer, dims, source, old, new, change in rows) + "\n" + NO_OPTIMIZER


@pytest.mark.parametrize("width", WIDTHS)
def test_apply_folds_a_source_path_after_its_slashes(folder: Path, width: int) -> None:
    """A source is a path and a key: it folds after a '/' (or before the key), never inside a name."""
    np.savez(folder / "bundle.npz", **{"block_16_project/kernel": np.zeros((1, 1, 960, 320), np.float32),
                                       "expanded_conv_depthwise/kernel": np.ones((3, 3, 32, 1), np.float32)})
    plan = {"edits": [{"layer": layer, "weights": {"kernel": f"bundle.npz:{layer}/kernel"}}
                      for layer in ("expanded_conv_depthwise", "block_16_project")]}
    (folder / "bundle_plan.json").write_text(json.dumps(plan))
    text = screen(folder, width, "apply", "mobilenet_v2.keras", "bundle_plan.json", "--no-smoke", "--dry-run")
    for change in report(folder, "apply", "mobilenet_v2.keras", "bundle_plan.json", "--no-smoke", "--dry-run")["changes"]:
        parts = re.findall(r"[^/:]*[/:]|[^/:]+$", change["source"])  # "/", "tmp/", ..., "bundle.npz:", "kernel"
        assert "".join(parts) == change["source"] and parts[-2:] == [f"{change['layer']}/", "kernel"]
        for part in parts:
            assert part in text, part
        assert_whole(text, change["layer"])


@pytest.mark.parametrize("width", WIDTHS)
def test_set(folder: Path, width: int) -> None:
    text = screen(folder, width, "set", "mobilenet_v2.keras", "--layer", "expanded_conv_depthwise",
                  "--kernel-init", "zeros", "--no-smoke", "--dry-run")
    [(layer, dims, source, old, new, change)] = changes(folder)[:1]
    title = "mobilenet_v2.keras: layer 'expanded_conv_depthwise' (DepthwiseConv2D); would write (dry run)\n"
    assert len(old) <= 6 and len(change) <= 12
    expected = {
        120: title + (
            "┏━━━━━━━━━━┳━━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━┓\n"
            "┃ variable ┃ shape         ┃ dtype   ┃ source     ┃ old L2 ┃ new L2 ┃ max |change| ┃\n"
            "┡━━━━━━━━━━╇━━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━━━┩\n"
            f"│ kernel   │ {dims:<13} │ float32 │ {source:<10} │ {old:>6} │ {new:>6} │ {change:>12} │\n"
            "└──────────┴───────────────┴─────────┴────────────┴────────┴────────┴──────────────┘\n"),
        80: title.replace(" write (dry run)", "\nwrite (dry run)")  # a line of text wraps between words
        + "variable  shape          dtype    source      old L2  new L2  max |change|\n" + "─" * 74 + "\n"
        + f"kernel    {dims:<13}  float32  {source:<10}  {old:>6}  {new:>6}  {change:>12}\n",
        60: title.replace(" (DepthwiseConv2D)", "\n(DepthwiseConv2D)")
        + f"variable:       kernel\n  shape:        {dims}\n  dtype:        float32\n  source:       {source}\n"
          f"  old L2:       {old}\n  new L2:       {new}\n  max |change|: {change}\n\n",
    }[width]
    assert text == expected + NO_OPTIMIZER
