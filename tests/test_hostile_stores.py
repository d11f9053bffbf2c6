"""Hostile weight stores inside real Keras saves: what Keras refuses to read (data stored in
another file, virtual datasets, soft and external links) and datasets that declare more
than their file holds (shape bombs). Every command refuses them with one line and exit 1,
never 70, writes nothing, and shows no byte of another file.

Each hostile file is a committed sample model (written by Keras) whose conv1 kernel
dataset real h5py replaced; the same commands on the same model rewritten without the
hostile edit succeed, so a refusal is the hostile dataset's doing.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from helpers import assert_one_error_line

from conv_surgeon.errors import ModelFileError, UsageError
from conv_surgeon.store.worker import MEMORY_ENVIRONMENT, memory_budget, run_bounded

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
KERNEL = (3, 3, 1, 4)  # tiny_cnn's conv1 kernel, float32: 144 bytes
SECRET = b"TOP-SECRET-1234!" * 9  # 144 bytes of another file, which must never come out

# An edit replaces dataset `name` of `group` (in a real Keras save) by a hostile one; the
# folder holds secret.txt (SECRET) and secret.h5 (SECRET as a float32 kernel at /data).
Edit = Callable[[h5py.Group, str, Path], None]


def _untouched(group: h5py.Group, name: str, secrets: Path) -> None:
    pass


def _stored_elsewhere(group: h5py.Group, name: str, secrets: Path) -> None:
    del group[name]
    group.create_dataset(name, KERNEL, "f4", external=[(str(secrets / "secret.txt"), 0, len(SECRET))])


def _virtual(group: h5py.Group, name: str, secrets: Path) -> None:
    del group[name]
    layout = h5py.VirtualLayout(KERNEL, "f4")
    layout[...] = h5py.VirtualSource(str(secrets / "secret.h5"), "data", KERNEL)
    group.create_virtual_dataset(name, layout)


def _soft_link(group: h5py.Group, name: str, secrets: Path) -> None:
    group.file.create_dataset("elsewhere", data=np.frombuffer(SECRET, "f4").reshape(KERNEL))
    del group[name]
    group[name] = h5py.SoftLink("/elsewhere")


def _external_link(group: h5py.Group, name: str, secrets: Path) -> None:
    del group[name]
    group[name] = h5py.ExternalLink(str(secrets / "secret.h5"), "/data")


def _never_stored(group: h5py.Group, name: str, secrets: Path) -> None:
    del group[name]
    group.create_dataset(name, (100000, 100000, 3, 64), "f4")  # 7.7 TB declared, no byte stored


def _empty_chunks(group: h5py.Group, name: str, secrets: Path) -> None:
    del group[name]
    group.create_dataset(name, (4096, 4096, 4, 1), "f4", chunks=(1, 1, 4, 1))  # 256 MiB in 16M chunks, none stored


def _sparse_chunks(group: h5py.Group, name: str, secrets: Path) -> None:
    # 2 MB compressed in 2 million one-byte chunks, 2000 of them stored: within what deflate
    # can expand, but reading it walks 2 million chunks.
    del group[name]
    dataset = group.create_dataset(name, (2_000_000, 1, 1, 1), "u1", chunks=(1, 1, 1, 1), compression="gzip")
    dataset[:2000] = 1


HOSTILE: dict[str, tuple[Edit, tuple[str, ...]]] = {
    "stored_elsewhere": (_stored_elsewhere, ("its data is stored in another file (", "secret.txt)",
                                             "which Keras refuses to read")),
    "virtual": (_virtual, ("is a virtual dataset", "which Keras refuses to read")),
    "soft_link": (_soft_link, ("is a soft link to /elsewhere, which Keras refuses to follow",)),
    "external_link": (_external_link, ("is an external link to /data in ", "secret.h5",
                                       "which Keras refuses to follow")),
    "never_stored": (_never_stored, ("declares 7.7 TB (shape (100000, 100000, 3, 64) float32) but the file "
                                     "stores 0 bytes for it; the file is corrupt or crafted",)),
    "empty_chunks": (_empty_chunks, ("declares 268.4 MB (shape (4096, 4096, 4, 1) float32) but the file "
                                     "stores 0 bytes for it",)),
    "sparse_chunks": (_sparse_chunks, ("declares 2000000 chunks (shape (2000000, 1, 1, 1) uint8) in ",)),
}


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    with h5py.File(folder / "secret.h5", "w") as h5:
        h5["data"] = np.frombuffer(SECRET, "f4").reshape(KERNEL)
    return folder


def _keras_model(folder: Path, edit: Edit, secrets: Path) -> Path:
    """tiny_cnn.keras with its weight store edited, zipped back as Keras stored it."""
    with zipfile.ZipFile(SAMPLES / "tiny_cnn.keras") as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    store = folder / "model.weights.h5"
    store.write_bytes(next(data for info, data in members if info.filename == store.name))
    with h5py.File(store, "r+") as h5:
        edit(h5["layers/conv2d/vars"], "0", secrets)
    path = folder / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            archive.writestr(info, store.read_bytes() if info.filename == store.name else data)
    store.unlink()
    return path


def _h5_model(folder: Path, edit: Edit, secrets: Path) -> Path:
    """tiny_cnn.h5 (the legacy layout, read through h5py) with conv1's kernel edited."""
    path = folder / "model.h5"
    shutil.copyfile(SAMPLES / "tiny_cnn.h5", path)
    with h5py.File(path, "r+") as h5:
        group = h5["model_weights/conv1"]
        found: list[str] = []
        group.visit(lambda name: found.append(name) if name.endswith("kernel") else None)
        parent, _, leaf = found[0].rpartition("/")
        edit(group[parent], leaf, secrets)
    return path


MODELS = {"keras": _keras_model, "h5": _h5_model}


def _commands(model: Path, out: Path) -> dict[str, list[object]]:
    commands: dict[str, list[object]] = {
        "inspect": ["inspect", model],
        "inspect --stats": ["inspect", model, "--stats"],
        "get": ["get", model, "--layer", "conv1", "-o", out / "kernel.npy"],
        "get --all": ["get", model, "--all", "-o", out / "all.npz"],
        "show": ["show", model, "--layer", "conv1", "-o", out / "conv1.png"],
        "set": ["set", model, "--layer", "conv1", "--kernel", SAMPLES / "sobel.npy", "-o", out / f"set{model.suffix}",
                "--no-smoke"],
    }
    if model.suffix == ".keras":  # prune rewrites archives only
        commands["prune"] = ["prune", model, "--layer", "conv1", "--filters", "0", "-o", out / "pruned.keras", "--no-smoke"]
    return commands


def _no_secret_in(result: Any, out: Path) -> None:
    shown = result.stdout_bytes + result.stderr_bytes
    assert SECRET[:10] not in shown
    for file in out.iterdir():
        assert SECRET[:10] not in file.read_bytes(), file


@pytest.mark.parametrize("kind", MODELS)
def test_the_same_commands_read_the_model_rewritten_without_a_hostile_edit(cli, tmp_path: Path, secrets: Path,
                                                                           kind: str) -> None:
    model = MODELS[kind](tmp_path, _untouched, secrets)
    out = tmp_path / "out"
    out.mkdir()
    for name, args in _commands(model, out).items():
        result = cli(*args)
        assert result.exit_code == 0, (name, result.stderr)
    assert len(list(out.iterdir())) == len(_commands(model, out)) - 2  # what each command but inspect wrote


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_command_refuses_a_hostile_store_in_one_line(cli, tmp_path: Path, secrets: Path, kind: str,
                                                           hostile: str) -> None:
    edit, message = HOSTILE[hostile]
    model = MODELS[kind](tmp_path, edit, secrets)
    out = tmp_path / "out"
    out.mkdir()
    for name, args in _commands(model, out).items():
        result = cli(*args)
        assert_one_error_line(result, 1, f"Error: {model}: ", *message)
        _no_secret_in(result, out)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", MODELS)
def test_a_hostile_store_on_stdin_is_refused_alike(cli, tmp_path: Path, secrets: Path, kind: str) -> None:
    model = MODELS[kind](tmp_path, _stored_elsewhere, secrets)
    result = cli("inspect", "-", "--stats", input=model.read_bytes())
    assert_one_error_line(result, 1, "Error: <stdin>: ", "its data is stored in another file")
    assert SECRET[:10] not in result.stdout_bytes + result.stderr_bytes


def _source(folder: Path, edit: Edit, secrets: Path) -> Path:
    """An HDF5 weight source holding conv1's bias at /b, edited."""
    path = folder / "evil.h5"
    with h5py.File(path, "w") as h5:
        h5["b"] = np.zeros(4, "f4")
        edit(h5, "b", secrets)
    return path


@pytest.mark.parametrize("hostile", ["stored_elsewhere", "virtual", "soft_link", "external_link", "never_stored"])
def test_a_hostile_hdf5_source_is_refused_in_one_line(cli, tmp_path: Path, secrets: Path, hostile: str) -> None:
    edit, message = HOSTILE[hostile]
    source = _source(tmp_path, edit, secrets)
    out = tmp_path / "out"
    out.mkdir()
    result = cli("set", SAMPLES / "tiny_cnn.keras", "--layer", "conv1", "--bias", f"{source}:b",
                 "-o", out / "o.keras", "--no-smoke")
    assert_one_error_line(result, 1, f"Error: source '{source}:b': ", *message)
    _no_secret_in(result, out)
    assert list(out.iterdir()) == []


def test_a_plain_hdf5_source_is_read(cli, tmp_path: Path, secrets: Path) -> None:
    source = _source(tmp_path, lambda group, name, secrets: None, secrets)
    result = cli("set", SAMPLES / "tiny_cnn.keras", "--layer", "conv1", "--bias", f"{source}:b",
                 "-o", tmp_path / "o.keras", "--no-smoke")
    assert result.exit_code == 0, result.stderr


# --- the worker's memory limit ---------------------------------------------------------------


def test_a_worker_that_needs_more_memory_than_its_budget_fails_in_one_line(monkeypatch) -> None:
    monkeypatch.setenv(MEMORY_ENVIRONMENT, "1")
    # 2 GiB of zeros is mapped lazily: without the limit this returns at once, using no memory.
    with pytest.raises(ModelFileError, match=r"^big.keras: reading it needed more than 1 GiB of memory; its data "
                                             r"is probably corrupt \(if the model is that large, allow more with "
                                             f"{MEMORY_ENVIRONMENT}=GIB\\)$"):
        run_bounded(lambda: len(np.zeros(2 << 30, np.uint8)), 20, "big.keras")


def test_the_budget_counts_from_the_worker_s_size_not_from_zero(monkeypatch) -> None:
    import mmap

    monkeypatch.setenv(MEMORY_ENVIRONMENT, "1")
    reserved = mmap.mmap(-1, 8 << 30)  # address space as TensorFlow reserves it, untouched
    try:
        assert run_bounded(lambda: len(np.zeros(512 << 20, np.uint8)), 20, "m.keras") == 512 << 20
    finally:
        reserved.close()


def test_the_budget_grows_with_the_input_and_the_environment_can_set_it(monkeypatch) -> None:
    monkeypatch.delenv(MEMORY_ENVIRONMENT, raising=False)
    assert memory_budget() == memory_budget(100 << 20) == 4 << 30
    assert memory_budget(1 << 30) == 8 << 30
    monkeypatch.setenv(MEMORY_ENVIRONMENT, "0.5")
    assert memory_budget(1 << 30) == 512 << 20
    monkeypatch.setenv(MEMORY_ENVIRONMENT, "lots")
    with pytest.raises(UsageError, match=f"^{MEMORY_ENVIRONMENT}='lots': expected the memory a worker may use"):
        memory_budget()
