"""apply plans, npz bundles, diff and provenance through the real CLI."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_into, listing

from conv_surgeon.errors import MAX_LISTED_PROBLEMS
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.instruments.reading import get_weights
from conv_surgeon.render import progress_callback


def weights(path: Path, layer: str) -> dict[str, np.ndarray]:
    return get_weights(ModelFile.from_path(path), layer, every=True).arrays


def weight_store(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read("model.weights.h5")


# --- apply ------------------------------------------------------------------------------


def test_apply_toml_plan_edits_every_layer_in_one_write(cli, keras, samples: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "k.npy", np.ones((3, 3, 1, 4), np.float32))
    (tmp_path / "plan.toml").write_text(
        'seed = 3\n'
        '[[edits]]\nlayer = "conv1"\nweights.kernel = "k.npy"\nweights.bias = { init = "zeros" }\n'
        '[[edits]]\nlayer = "conv3"\nweights.kernel = { init = "he_normal" }\n'
    )
    out = tmp_path / "out.keras"
    result = cli("apply", samples / "tiny_cnn.keras", tmp_path / "plan.toml", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [layer["path"] for layer in doc["layers"]] == ["conv1", "conv3"]
    assert doc["smoke"]["passed"] and doc["seed"] == 3
    conv1 = weights(out, "conv1")
    np.testing.assert_array_equal(conv1["kernel"], np.ones((3, 3, 1, 4)))
    np.testing.assert_array_equal(conv1["bias"], np.zeros(4))
    # The seed of the plan makes the run repeatable.
    again = tmp_path / "again.keras"
    assert cli("apply", samples / "tiny_cnn.keras", tmp_path / "plan.toml", "-o", again, "--no-smoke").exit_code == 0
    np.testing.assert_array_equal(weights(again, "conv3")["kernel"], weights(out, "conv3")["kernel"])
    # conv2 was not in the plan: untouched.
    np.testing.assert_array_equal(weights(out, "conv2")["kernel"], weights(samples / "tiny_cnn.keras", "conv2")["kernel"])


def test_one_bad_edit_refuses_the_whole_plan_and_lists_every_problem(cli, samples: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path, samples / "all_convs.keras")
    np.save(tmp_path / "wrong.npy", np.ones((3, 3, 3, 4), np.float32))
    (tmp_path / "plan.json").write_text(json.dumps({"edits": [
        {"layer": "c2d", "weights": {"kernel": {"init": "zeros"}}},
        {"layer": "nope", "weights": {"kernel": {"init": "zeros"}}},
        {"layer": "c2d_grouped", "weights": {"kernel": "wrong.npy"}},
        {"layer": "c2d_nobias", "weights": {"bias": {"init": "zeros"}}},
    ]}))
    before = listing(tmp_path)
    result = cli("apply", model, tmp_path / "plan.json", "-o", tmp_path / "out.keras")
    assert result.exit_code == 1
    assert "3 of 4 edits are invalid, nothing was written" in result.stderr
    for place in ("edits[1]", "edits[2]", "edits[3]"):
        assert place in result.stderr
    assert "no layer with weights named 'nope'" in result.stderr
    assert "(3, 3, 2, 4)" in result.stderr and "use_bias=False" in result.stderr
    assert "edits[0]" not in result.stderr and "Traceback" not in result.stderr
    assert listing(tmp_path) == before


def test_a_plan_lists_every_problem_of_every_edit_in_the_plan_s_own_words(cli, samples: Path,
                                                                          tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.ones((3, 3, 3, 4), np.float32))  # c2d holds (3, 3, 4, 4)
    np.save(tmp_path / "torch.npy", np.ones((4, 2, 3, 3), np.float32))  # c2d_grouped's (3, 3, 2, 4), from PyTorch
    (tmp_path / "plan.json").write_text(json.dumps({"edits": [
        {"layer": "c2d", "weights": {"kernel": "wrong.npy", "bias": {"init": "he_normall"}, "gamma": {"init": "zeros"}}},
        {"layer": "c2d_grouped", "weights": {"kernel": "torch.npy", "bias": {"init": "random_normal:seed=3"}}},
        {"layer": "conv", "weights": {"kernel": {"init": "zeros"}}},
        {"layer": "sep2d", "weights": {"kernel": {"init": "zeros"}}},
    ]}))
    before = listing(tmp_path)
    result = cli("apply", samples / "all_convs.keras", tmp_path / "plan.json", "-o", tmp_path / "out.keras")
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.stderr
    head, *problems = result.stderr.splitlines()
    assert head.endswith("4 of 4 edits are invalid, nothing was written; 7 problems:")
    assert [line.split(":", 1)[0].strip() for line in problems] == ["edits[0]"] * 3 + ["edits[1]"] * 2 + [
        "edits[2]", "edits[3]"]
    text = "\n".join(problems)
    # Every problem of the first edit, not only the first one found.
    assert "unknown initializer 'he_normall'" in text and "(3, 3, 4, 4)" in text and "no variable 'gamma'" in text
    # Said as a plan says it: the edit's keys and the plan's seed, never a command-line option.
    assert "use one of these names as a key of edits[0].weights" in text
    assert 'set edits[1].layout to "torch"' in text
    assert '"seed" at the top of the plan' in text
    assert "write one of these paths as edits[2].layer" in text
    assert "edits[3].weights.depthwise_kernel or edits[3].weights.pointwise_kernel" in text
    assert re.search(r"(?<![\w-])--[a-z]", text) is None, text
    assert listing(tmp_path) == before


def test_a_plan_of_many_problems_lists_the_first_ones_and_counts_them_all(cli, samples: Path, tmp_path: Path) -> None:
    names = [f"gamma{i}" for i in range(MAX_LISTED_PROBLEMS + 5)]
    (tmp_path / "plan.json").write_text(json.dumps({"edits": [
        {"layer": "conv1", "weights": {name: {"init": "zeros"} for name in names}}]}))
    result = cli("apply", samples / "tiny_cnn.keras", tmp_path / "plan.json", "--dry-run", "--json")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].endswith(f"1 of 1 edit is invalid, nothing was written; {len(names)} problems:")
    assert len(lines) == 1 + MAX_LISTED_PROBLEMS + 1 and lines[-1] == "  ... and 5 more problems"
    document = json.loads(result.stdout)
    assert document["problem_count"] == len(names) and len(document["problems"]) == MAX_LISTED_PROBLEMS
    assert all(f"no variable '{name}'" in line for name, line in zip(names, document["problems"]))


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", '{"edits": [\n  {"layer": "conv1",}\n]}', "line 2, column"),
        ("bad.toml", 'seed = 1\n[[edits]\nlayer = "conv1"\n', "line 2"),
        ("keys.json", '{"edits": [{"layer": "conv1", "wieghts": {"kernel": "k.npy"}}]}', "did you mean 'weights'"),
        ("twice.json", '{"edits": [{"layer": "conv1", "weights": {"kernel": {"init": "zeros"}}},'
                       ' {"layer": "conv1", "weights": {"bias": {"init": "zeros"}}}]}', "named twice"),
    ],
)
def test_bad_plans_are_refused_with_their_place(cli, samples: Path, tmp_path: Path, name, text, message) -> None:
    (tmp_path / name).write_text(text)
    before = listing(tmp_path)
    result = cli("apply", samples / "tiny_cnn.keras", tmp_path / name, "-o", tmp_path / "out.keras")
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert listing(tmp_path) == before


def test_apply_schema_is_the_packaged_json_schema(cli) -> None:
    from conv_surgeon.edits.plan import plan_schema

    result = cli("apply", "--schema")
    assert result.exit_code == 0 and json.loads(result.stdout) == plan_schema()


# --- bundles ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["all_convs.keras", "tiny_bf16.keras", "all_convs.h5"])
def test_bundle_round_trip_keeps_the_weight_store_byte_identical(cli, samples: Path, tmp_path: Path, name: str) -> None:
    bundle = tmp_path / "bundle.npz"
    assert cli("get", samples / name, "--all", "-o", bundle).exit_code == 0
    with np.load(bundle) as arrays:
        assert "func_block/deep_block/deep_conv/kernel" in arrays.files or name == "tiny_bf16.keras"
    out = tmp_path / ("out" + Path(name).suffix)
    result = cli("set", samples / name, "--from-npz", bundle, "-o", out, "--no-smoke")
    assert result.exit_code == 0, result.stderr
    if name.endswith(".keras"):
        assert weight_store(out) == weight_store(samples / name)
    else:
        import h5py

        with h5py.File(samples / name) as a, h5py.File(out) as b:
            names: list[str] = []
            a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for dataset in names:
                assert a[dataset][()].tobytes() == b[dataset][()].tobytes(), dataset


def test_bundle_edit_via_numpy_and_bad_keys(cli, samples: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.npz"
    assert cli("get", samples / "all_convs.keras", "--all", "-o", bundle).exit_code == 0
    with np.load(bundle) as loaded:
        arrays = dict(loaded)
    arrays["seq_block/conv/kernel"] = np.zeros_like(arrays["seq_block/conv/kernel"])
    np.savez(tmp_path / "edited.npz", **arrays)
    out = tmp_path / "out.keras"
    assert cli("set", samples / "all_convs.keras", "--from-npz", tmp_path / "edited.npz", "-o", out, "--no-smoke").exit_code == 0
    assert not weights(out, "seq_block/conv")["kernel"].any()
    assert weights(out, "func_block/conv")["kernel"].any()

    np.savez(tmp_path / "bad.npz", **{"c2d/kernel": arrays["c2d/kernel"], "missing_layer/kernel": arrays["c2d/kernel"]})
    before = listing(tmp_path)
    result = cli("set", samples / "all_convs.keras", "--from-npz", tmp_path / "bad.npz", "-o", tmp_path / "x.keras")
    assert result.exit_code == 1 and "missing_layer" in result.stderr and "nothing was written" in result.stderr
    assert listing(tmp_path) == before


# --- diff -------------------------------------------------------------------------------


def test_diff_exit_codes_and_json(cli, samples: Path, tmp_path: Path) -> None:
    same = cli("diff", samples / "all_convs.keras", samples / "all_convs.h5")
    assert same.exit_code == 0 and "identical" in same.stdout
    edited = tmp_path / "e.keras"
    assert cli("set", samples / "all_convs.keras", "--layer", "c2d", "--kernel-init", "zeros", "-o", edited, "--no-smoke").exit_code == 0
    different = cli("diff", samples / "all_convs.keras", edited, "--json")
    assert different.exit_code == 1
    doc = json.loads(different.stdout)
    assert doc["schema"] == 1 and doc["identical"] is False
    changed = [layer for layer in doc["layers"] if layer["status"] != "same"]
    assert [layer["path"] for layer in changed] == ["c2d"]
    kernel = next(v for v in changed[0]["variables"] if v["name"] == "kernel")
    original = weights(samples / "all_convs.keras", "c2d")["kernel"]
    assert kernel["max_abs"] == pytest.approx(float(np.abs(original).max()))
    assert kernel["rel_l2"] == pytest.approx(1.0)
    architectures = cli("diff", samples / "tiny_cnn.keras", samples / "all_convs.keras")
    assert architectures.exit_code == 1 and "only a" in architectures.stdout and "only b" in architectures.stdout
    missing = cli("diff", samples / "tiny_cnn.keras", tmp_path / "nope.keras")
    assert missing.exit_code == 2 and missing.stderr.startswith("Error: ")


# --- provenance -------------------------------------------------------------------------


def test_history_is_recorded_kept_and_keras_still_loads(cli, keras, samples: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one.keras", tmp_path / "two.keras"
    assert cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", samples / "sobel.npy", "-o", first).exit_code == 0
    assert cli("set", first, "--layer", "conv2", "--kernel-init", "he_normal", "--seed", "9", "-o", second).exit_code == 0
    doc = json.loads(cli("inspect", second, "--history", "--json").stdout)
    one, two = doc["history"]
    assert one["command"][:2] == ["conv-surgeon", "set"] and one["tool"] == "conv-surgeon"
    (edit,) = one["edits"]
    assert edit["layer"] == "conv1" and edit["variable"] == "kernel" and edit["layout"] == "keras"
    import hashlib

    assert edit["source"]["sha256"] == hashlib.sha256((samples / "sobel.npy").read_bytes()).hexdigest()
    assert two["edits"][0]["source"] == {"init": "he_normal", "seed": 9}
    with zipfile.ZipFile(second) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["keras_version"] == "3.15.1" and "date_saved" in metadata
    model = keras.saving.load_model(second, compile=True)
    assert int(model.optimizer.iterations.numpy()) > 0
    table = cli("inspect", second, "--history")
    assert "history: 2 writes" in table.stdout and "init he_normal (seed 9)" in table.stdout


def test_progress_is_one_rewritten_line_and_only_on_a_terminal(cli, samples: Path, tmp_path: Path) -> None:
    stream = io.StringIO()
    report = progress_callback(stream)
    report(1, 3, "checked edits[0]")
    report(3, 3, "smoke test passed")
    assert stream.getvalue() == "\r\x1b[K[1/3] checked edits[0]\r\x1b[K[3/3] smoke test passed\n"
    (tmp_path / "plan.json").write_text('{"edits": [{"layer": "conv1", "weights": {"kernel": {"init": "zeros"}}}]}')
    result = cli("apply", samples / "tiny_cnn.keras", tmp_path / "plan.json", "-o", tmp_path / "o.keras", "--no-smoke")
    assert result.exit_code == 0 and "[1/" not in result.stderr
