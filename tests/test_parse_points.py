"""Every parse point of a file conv-surgeon did not write refuses what it cannot read in
one `Error:` line, exit 1 (2 for the command line), never an internal error (exit 70):
deep nesting, overlong integers, NaN, a value of the wrong type, a header that declares
more than its file holds. Each case below was an exit 70 before (issue 19)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import archive_with, assert_one_error_line, copy_into, sha256

from conv_surgeon.errors import MAX_LISTED_PROBLEMS
from conv_surgeon.store.documents import MAX_NESTING, DocumentError, check_nesting, parse_json

DEEP = 100_000


def _config(samples: Path, name: str = "tiny_cnn.keras") -> dict:
    with zipfile.ZipFile(samples / name) as archive:
        return json.loads(archive.read("config.json"))


def _with_config(samples: Path, tmp_path: Path, text: str, name: str = "tiny_cnn.keras") -> Path:
    return archive_with(samples / name, tmp_path / name, {"config.json": text.encode()})


def _layer_config(config: dict, name: str) -> dict:
    return next(layer["config"] for layer in config["config"]["layers"] if layer["config"].get("name") == name)


# --- documents ------------------------------------------------------------------------------


def test_nesting_is_counted_without_recursion_and_bounded() -> None:
    nested: list = []
    inner = nested
    for _ in range(MAX_NESTING - 1):
        inner.append([])
        inner = inner[0]
    check_nesting(nested)  # MAX_NESTING levels: read
    inner.append({})
    with pytest.raises(DocumentError, match=f"nested deeper than {MAX_NESTING} levels"):
        check_nesting(nested)
    with pytest.raises(DocumentError, match="nested deeper"):
        parse_json("[" * DEEP + "]" * DEEP)
    with pytest.raises(DocumentError, match="integer of more than 4300 digits"):
        parse_json('{"seed": ' + "9" * 5000 + "}")


# --- config.json, model_config ----------------------------------------------------------------


@pytest.mark.parametrize("command", [("inspect",), ("get", "--layer", "conv1", "-o", "OUT"),
                                     ("prune", "--layer", "conv1", "--filters", "0", "--dry-run")])
def test_config_json_nested_100000_deep(cli, samples: Path, tmp_path: Path, command: tuple[str, ...]) -> None:
    config = _config(samples)
    text = json.dumps(config).replace('"trainable": true', '"trainable": ' + "[" * DEEP + "]" * DEEP, 1)
    model = _with_config(samples, tmp_path, text)
    result = cli(command[0], model, *(str(tmp_path / "k.npy") if word == "OUT" else word for word in command[1:]))
    assert_one_error_line(result, 1, f"{model}: the model's config.json is nested deeper than {MAX_NESTING} levels",
                          "re-save the model with Keras")


def test_model_config_of_a_legacy_h5_nested_100000_deep(cli, samples: Path, tmp_path: Path) -> None:
    import h5py

    model = copy_into(tmp_path, samples / "tiny_cnn.h5")
    with h5py.File(model, "r+") as h5:
        h5.attrs["model_config"] = '{"class_name": "Sequential", "config": ' + "[" * DEEP + "]" * DEEP + "}"
    result = cli("inspect", model)
    assert_one_error_line(result, 1, "the model config (model_config) is nested deeper than")


def test_a_saved_folder_whose_config_holds_a_5000_digit_integer(cli, samples: Path, tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    with zipfile.ZipFile(samples / "tiny_cnn.keras") as archive:
        archive.extractall(folder)
    text = (folder / "config.json").read_text().replace('"filters": 4', '"filters": ' + "9" * 5000, 1)
    (folder / "config.json").write_text(text)
    result = cli("inspect", folder)
    assert_one_error_line(result, 1, "config.json holds an integer of more than 4300 digits")


@pytest.mark.parametrize("entry, received", [("[1, 2]", "an array"), ("7", "the number 7")])
def test_a_layer_entry_that_is_a_list_or_an_int(cli, samples: Path, tmp_path: Path, entry: str, received: str) -> None:
    config = _config(samples)
    config["config"]["layers"][2] = "\0entry\0"
    model = _with_config(samples, tmp_path, json.dumps(config).replace('"\\u0000entry\\u0000"', entry))
    for command in (("inspect",), ("prune", "--layer", "conv1", "--filters", "0", "--dry-run"), ("fold-bn", "--dry-run")):
        result = cli(command[0], model, *command[1:])
        assert_one_error_line(result, 1, "the model config is broken at config.layers[2]: expected a layer object "
                              f"with 'class_name' and 'config', received {received}")


@pytest.mark.parametrize("key, value, received", [
    ("kernel_size", '"3"', 'the string "3"'),
    ("kernel_size", '[3, "3"]', "an array"),
    ("filters", '"four"', 'the string "four"'),
    ("filters", "NaN", "the number NaN"),
    ("filters", "1e400", "the number Infinity"),
    ("filters", str(2**70), "the number 1180591620717411303424"),
    ("strides", "0", "the number 0"),
])
def test_a_conv_value_of_the_wrong_type(cli, samples: Path, tmp_path: Path, key: str, value: str,
                                        received: str) -> None:
    config = _config(samples)
    _layer_config(config, "conv1")[key] = "\0value\0"
    model = _with_config(samples, tmp_path, json.dumps(config).replace('"\\u0000value\\u0000"', value))
    for command in (("inspect",), ("prune", "--layer", "conv1", "--filters", "0", "--dry-run"),
                    ("set", "--layer", "conv1", "--kernel-init", "zeros", "--dry-run")):
        result = cli(command[0], model, *command[1:])
        assert_one_error_line(
            result, 1, f"the model config is broken at config.layers[1].config.{key} (layer 'conv1', Conv2D): "
            f"expected a whole number from 1 to 2**31-1", f"received {received}; re-save the model with Keras")


def test_nan_filters_are_refused_before_prune_computes_with_them(cli, samples: Path, tmp_path: Path) -> None:
    config = _config(samples)
    _layer_config(config, "conv2")["filters"] = float("nan")
    model = _with_config(samples, tmp_path, json.dumps(config))
    result = cli("prune", model, "--layer", "conv2", "--smallest-l1", "2", "-o", tmp_path / "out.keras", "--no-smoke")
    assert_one_error_line(result, 1, "config.layers[2].config.filters (layer 'conv2', Conv2D)", "received the number NaN")
    assert not (tmp_path / "out.keras").exists()


def test_a_nan_epsilon_is_refused_before_fold_bn_folds_with_it(cli, tmp_path: Path) -> None:
    original = Path(__file__).resolve().parent / "data" / "configs" / "mixed.keras"
    with zipfile.ZipFile(original) as archive:
        config = json.loads(archive.read("config.json"))
    bn = next(layer["config"] for layer in config["config"]["layers"] if layer["config"]["name"] == "b1")
    bn["epsilon"] = float("nan")
    model = archive_with(original, tmp_path / "mixed.keras", {"config.json": json.dumps(config).encode()})
    result = cli("fold-bn", model, "-o", tmp_path / "out.keras", "--no-smoke")
    assert_one_error_line(result, 1, "config.epsilon (layer 'b1', BatchNormalization): expected a finite number >= 0",
                          "received the number NaN")


# --- metadata.json ---------------------------------------------------------------------------


def test_metadata_json_nested_100000_deep(cli, samples: Path, tmp_path: Path) -> None:
    deep = b'{"keras_version": "3.15.1", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    model = archive_with(samples / "tiny_cnn.keras", tmp_path / "m.keras", {"metadata.json": deep})
    digest = sha256(model)
    # Reading the history is lenient, as for any metadata.json that cannot be parsed: none.
    shown = cli("inspect", model, "--history")
    assert shown.exit_code == 0 and "Traceback" not in shown.stderr, shown.stderr
    # A write would have to replace what it cannot read: refused, nothing written.
    for command in (("set", "--layer", "conv1", "--kernel", str(samples / "sobel.npy")),
                    ("prune", "--layer", "conv2", "--filters", "0")):
        out = tmp_path / f"{command[0]}.keras"
        result = cli(command[0], model, *command[1:], "--no-smoke", "-o", out)
        assert_one_error_line(result, 1, f"{model}: the archive's metadata.json is nested deeper than {MAX_NESTING} levels",
                              "refusing to replace what cannot be read")
        assert not out.exists()
    assert sha256(model) == digest


# --- plans ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, text", [
    ("plan.json", '{"edits": ' + "[" * DEEP + "]" * DEEP + "}"),
    ("plan.toml", "edits = " + "[" * DEEP + "]" * DEEP + "\n"),
    ("plan.toml", "[" + ".".join(["a"] * DEEP) + "]\nx = 1\n"),
])
def test_plans_nested_100000_deep(cli, samples: Path, tmp_path: Path, name: str, text: str) -> None:
    plan = tmp_path / name
    plan.write_text(text)
    result = cli("apply", samples / "tiny_cnn.keras", plan, "--dry-run")
    assert_one_error_line(result, 1, f"{plan}: the plan is nested deeper than {MAX_NESTING} levels")


@pytest.mark.parametrize("name, text", [
    ("plan.json", '{"seed": ' + "7" * 5000 + ', "edits": []}'),
    ("plan.toml", "seed = " + "7" * 5000 + "\n"),
])
def test_plans_with_a_5000_digit_seed(cli, samples: Path, tmp_path: Path, name: str, text: str) -> None:
    plan = tmp_path / name
    plan.write_text(text)
    result = cli("apply", samples / "tiny_cnn.keras", plan, "--dry-run")
    assert_one_error_line(result, 1, "the plan holds an integer of more than 4300 digits")


def test_a_5000_digit_seed_on_the_command_line(cli, samples: Path) -> None:
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel-init", "he_normal",
                 "--seed", "9" * 5000, "--dry-run")
    assert result.stderr == ("Error: --seed (an integer of 5000 digits): expected an integer from 0 to 2**63-1; "
                             "give e.g. 7, or no seed to have one drawn\n")
    assert result.exit_code == 2 and result.stdout == ""


def test_a_million_bad_edits_list_twenty_problems_and_count_them_all(cli, samples: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"edits": [' + ", ".join(["7"] * 1_000_000) + "]}")
    result = cli("apply", samples / "tiny_cnn.keras", plan, "--dry-run")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"Error: {plan}: 1000000 problems; the plan is all or nothing, so nothing was applied"
    assert lines[1] == '  edits[0]: expected an edit such as {"layer": "conv1", "weights": {"kernel": "k.npy"}}, ' \
                       "received the number 7"
    assert len(lines) == 1 + MAX_LISTED_PROBLEMS + 1 and lines[-1] == "  ... and 999980 more problems"
    as_json = cli("apply", samples / "tiny_cnn.keras", plan, "--dry-run", "--json")
    document = json.loads(as_json.stdout)
    assert document["problem_count"] == 1_000_000 and len(document["problems"]) == MAX_LISTED_PROBLEMS
    assert document["problems"][0].startswith("edits[0]: expected an edit")


def test_many_edits_of_unknown_layers_list_twenty(cli, samples: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "k.npy", np.zeros((3, 3, 1, 4), np.float32))
    edits = [{"layer": f"nope{i}", "weights": {"kernel": "k.npy"}} for i in range(500)]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"edits": edits}))
    result = cli("apply", samples / "tiny_cnn.keras", plan, "--dry-run")
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and lines[0].startswith("Error: ") and "500 of 500 edits are invalid" in lines[0]
    assert len(lines) == 1 + MAX_LISTED_PROBLEMS + 1 and lines[-1] == "  ... and 480 more problems"


# --- weight sources ---------------------------------------------------------------------------


def test_an_npy_header_that_declares_petabytes(cli, samples: Path, tmp_path: Path) -> None:
    source = tmp_path / "k.npy"
    np.save(source, np.zeros((3, 3, 1, 4), np.float32))
    source.write_bytes(_npy_with_shape(source.read_bytes(), "(1000000, 1000000, 1000, 1)"))
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", source, "--dry-run")
    assert_one_error_line(result, 1, f"source '{source}': its header declares about 4 PB ((1000000, 1000000, 1000, 1) "
                          "float32), the file holds 144 bytes after it; it is truncated or its header is damaged")


def _npy_with_shape(data: bytes, shape: str) -> bytes:
    """``.npy`` bytes (version 1.0) with their header's shape replaced, padded as numpy pads."""
    length = struct.unpack("<H", data[8:10])[0]
    header = data[10:10 + length].decode("latin1")
    start = header.index("'shape': ") + len("'shape': ")
    end = header.index(")", start) + 1
    new = (header[:start] + shape + header[end:]).rstrip()
    new = new + " " * ((-(10 + len(new) + 1)) % 64) + "\n"
    return data[:8] + struct.pack("<H", len(new)) + new.encode("latin1") + data[10 + length:]


def test_an_npz_member_that_declares_4_gib(cli, samples: Path, tmp_path: Path) -> None:
    bank = tmp_path / "bank.npz"
    np.savez_compressed(bank, w=np.zeros((3, 3, 1, 4), np.float32))
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(_declared_size(bank.read_bytes(), "w.npy", 0xFFFF_FFF0))
    with zipfile.ZipFile(bomb) as archive:
        info = archive.getinfo("w.npy")
        assert info.file_size == 0xFFFF_FFF0 and info.compress_size < 1000
    for command in (("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", f"{bomb}:w", "--dry-run"),
                    ("set", samples / "tiny_cnn.keras", "--from-npz", bomb, "--dry-run")):
        result = cli(*command)
        assert_one_error_line(result, 1, "member 'w.npy' declares about 4.29 GB inflated from",
                              "more than deflate can give (1032:1)", "refusing to inflate it")


def _declared_size(data: bytes, name: str, size: int) -> bytes:
    """A zip's bytes with member ``name``'s uncompressed size set to ``size`` in its local
    header and in the central directory (what a decompression bomb declares)."""
    patched = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
        directory = archive.start_dir  # type: ignore[attr-defined]
    struct.pack_into("<I", patched, info.header_offset + 22, size)
    at = patched.index(b"PK\x01\x02", directory)
    while patched[at + 46:at + 46 + len(name)] != name.encode():
        at = patched.index(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", patched, at + 24, size)
    return bytes(patched)


# --- command-line values ------------------------------------------------------------------------


@pytest.mark.parametrize("option, value", [("--filters", "9" * 5000), ("--filters", "²"), ("--filters", "1,٣")])
def test_prune_filters_that_int_cannot_read(cli, samples: Path, option: str, value: str) -> None:
    result = cli("prune", samples / "tiny_cnn.keras", "--layer", "conv2", option, value, "--dry-run")
    assert_one_error_line(result, 2, "--filters", "expected filter indices separated by commas")


def test_an_input_shape_of_5000_digits(cli, samples: Path, tmp_path: Path) -> None:
    result = cli("set", samples / "tiny_cnn.keras", "--layer", "conv1", "--kernel", samples / "sobel.npy",
                 "--input-shape", "9" * 5000, "-o", tmp_path / "out.keras")
    assert_one_error_line(result, 2, "--input-shape", "expected positive sizes without the batch axis")
    assert not (tmp_path / "out.keras").exists()


def test_an_archive_member_name_flagged_utf8_that_is_not(cli, samples: Path, tmp_path: Path) -> None:
    data = bytearray((samples / "tiny_cnn.keras").read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        directory = archive.start_dir  # type: ignore[attr-defined]
    at = data.index(b"PK\x01\x02", directory)
    struct.pack_into("<H", data, at + 8, struct.unpack_from("<H", data, at + 8)[0] | 0x800)  # names are UTF-8
    data[at + 46] = 0xFF  # which the first byte of this name is not
    model = tmp_path / "m.keras"
    model.write_bytes(bytes(data))
    for command in (("inspect",), ("inspect", "--history")):
        assert_one_error_line(cli(*command[:1], model, *command[1:]), 1, "not a readable .keras archive",
                              "the file may be truncated or corrupt")
