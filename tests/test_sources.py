"""Weight sources: real .npy, .npz, HDF5, safetensors and PyTorch files written to
tmp_path by the libraries themselves, and stdin bytes."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from conv_surgeon.errors import SourceError
from conv_surgeon.edits.sources import LoadedArray, load_source, split_source_spec

KERNEL = np.arange(36, dtype=np.float32).reshape(3, 3, 1, 4)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def error_of(spec: str, stdin: io.BytesIO | None = None) -> str:
    with pytest.raises(SourceError) as caught:
        load_source(spec, stdin=stdin)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work inside tmp_path so that specs read as the user would type them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def torch() -> Any:
    """PyTorch, imported once for the module; its tests skip where it is not installed."""
    return pytest.importorskip("torch")


def test_modules_import_without_tensorflow_keras_or_torch() -> None:
    code = (
        "import sys\n"
        "import conv_surgeon.edits.sources, conv_surgeon.edits.assign, conv_surgeon.edits.initializers\n"
        "import conv_surgeon.edits.layout\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_npy(here: Path) -> None:
    np.save("k.npy", KERNEL)
    loaded = load_source("k.npy")
    assert isinstance(loaded, LoadedArray)
    np.testing.assert_array_equal(loaded.array, KERNEL)
    assert loaded.origin == "k.npy"
    assert loaded.sha256 == hashlib.sha256(Path("k.npy").read_bytes()).hexdigest()


def test_format_is_told_by_content_not_extension(here: Path) -> None:
    Path("weights.bin").write_bytes(npy_bytes(KERNEL))
    np.testing.assert_array_equal(load_source("weights.bin").array, KERNEL)


def test_npz_with_key_and_single_member(here: Path) -> None:
    np.savez("bank.npz", w1=KERNEL, w2=KERNEL * 2)
    np.testing.assert_array_equal(load_source("bank.npz:w2").array, KERNEL * 2)
    np.testing.assert_array_equal(load_source("bank.npz:w2.npy").array, KERNEL * 2)
    np.savez_compressed("one.npz", only=KERNEL)
    np.testing.assert_array_equal(load_source("one.npz").array, KERNEL)


def test_npz_without_key_lists_the_keys(here: Path) -> None:
    np.savez("bank.npz", w1=KERNEL, w2=KERNEL)
    message = error_of("bank.npz")
    assert "holds 2 arrays" in message
    assert "'bank.npz:KEY'" in message
    assert "w1, w2" in message


def test_npz_wrong_key_suggests_close_matches(here: Path) -> None:
    np.savez("bank.npz", conv1_kernel=KERNEL, conv2_kernel=KERNEL, bias=KERNEL[0, 0, 0])
    message = error_of("bank.npz:conv1_kernal")
    assert "has no array 'conv1_kernal'" in message
    assert "did you mean 'conv1_kernel'" in message
    assert "available (3): conv1_kernel, conv2_kernel, bias" in message


def test_zip_without_npy_members_is_refused(here: Path) -> None:
    import zipfile

    with zipfile.ZipFile("model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    message = error_of("model.keras")
    assert "zip archive without .npy members" in message


def test_corrupt_npz(here: Path) -> None:
    np.savez("bank.npz", w1=KERNEL)
    data = Path("bank.npz").read_bytes()
    Path("cut.npz").write_bytes(data[: len(data) // 2])
    message = error_of("cut.npz")
    assert "truncated or corrupt .npz" in message


def test_hdf5_dataset_path_and_single_dataset(here: Path) -> None:
    with h5py.File("w.h5", "w") as h5:
        h5["group/kernel"] = KERNEL
        h5["group/bias"] = np.zeros(4, np.float32)
    np.testing.assert_array_equal(load_source("w.h5:group/kernel").array, KERNEL)
    np.testing.assert_array_equal(load_source("w.h5:/group/kernel").array, KERNEL)
    with h5py.File("one.hdf5", "w") as h5:
        h5["deep/inside/only"] = KERNEL
    np.testing.assert_array_equal(load_source("one.hdf5").array, KERNEL)


def test_hdf5_keras2_dataset_name_with_colon(here: Path) -> None:
    with h5py.File("model.h5", "w") as h5:
        h5["model_weights/conv1/conv1/kernel:0"] = KERNEL
        h5["model_weights/conv1/conv1/bias:0"] = np.ones(4, np.float32)
    loaded = load_source("model.h5:model_weights/conv1/conv1/kernel:0")
    np.testing.assert_array_equal(loaded.array, KERNEL)


def test_hdf5_group_key_lists_datasets_below(here: Path) -> None:
    with h5py.File("w.h5", "w") as h5:
        h5["layers/conv2d/vars/0"] = KERNEL
        h5["layers/conv2d/vars/1"] = np.zeros(4, np.float32)
        h5["other"] = np.zeros(1)
    message = error_of("w.h5:layers/conv2d")
    assert "'layers/conv2d' in 'w.h5' is a group, not a dataset" in message
    assert "layers/conv2d/vars/0, layers/conv2d/vars/1" in message
    assert "other" not in message


def test_hdf5_wrong_path_and_no_key(here: Path) -> None:
    with h5py.File("w.h5", "w") as h5:
        h5["group/kernel"] = KERNEL
        h5["group/bias"] = np.zeros(4, np.float32)
    message = error_of("w.h5:group/kernal")
    assert "has no dataset 'group/kernal'" in message
    assert "did you mean 'group/kernel'" in message
    message = error_of("w.h5")
    assert "holds 2 datasets" in message
    assert "group/bias, group/kernel" in message


def test_hdf5_bfloat16_opaque_storage(here: Path) -> None:
    values = np.array([0.5, -1.25, 3.0, 1e-3], dtype=ml_dtypes.bfloat16)
    with h5py.File("bf.h5", "w") as h5:
        dataset = h5.create_dataset("vars/0", data=values)
        dataset.attrs["dtype"] = "bfloat16"
    loaded = load_source("bf.h5").array
    assert loaded.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(loaded, values)


def test_hdf5_truncated(here: Path) -> None:
    with h5py.File("w.h5", "w") as h5:
        h5["kernel"] = np.zeros((64, 64), np.float32)
    data = Path("w.h5").read_bytes()
    Path("cut.h5").write_bytes(data[:600])
    message = error_of("cut.h5")
    assert "'cut.h5' is a truncated or corrupt HDF5 file" in message


def test_pickled_npy_is_refused_without_unpickling(here: Path) -> None:
    np.save("evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    message = error_of("evil.npy")
    assert "pickled object array" in message
    assert "never unpickles" in message


def test_raw_pickle_is_an_unknown_format(here: Path) -> None:
    Path("evil.npy").write_bytes(pickle.dumps(KERNEL))
    message = error_of("evil.npy")
    assert "not a .npy, .npz, HDF5, safetensors or PyTorch file" in message
    assert "accepted: file.npy, file.npz:KEY, file.h5:PATH, file.safetensors:KEY" in message


def test_pickled_npz_member_is_refused(here: Path) -> None:
    np.savez("bank.npz", evil=np.array([{"a": 1}], dtype=object))
    assert "pickled object array" in error_of("bank.npz:evil")


@pytest.mark.parametrize("cut", [8, 40, -3])
def test_truncated_npy(here: Path, cut: int) -> None:
    Path("k.npy").write_bytes(npy_bytes(KERNEL)[:cut])
    message = error_of("k.npy")
    assert "source 'k.npy'" in message
    assert "npy" in message


def test_empty_file_missing_file_and_directory(here: Path) -> None:
    Path("empty.npy").write_bytes(b"")
    assert "'empty.npy' is empty" in error_of("empty.npy")
    assert "file 'nothere.npy' not found" in error_of("nothere.npy")
    assert "file 'nothere.npz' not found" in error_of("nothere.npz:w1")
    os.mkdir("weights.npy")
    assert "'weights.npy' is a directory" in error_of("weights.npy")


def test_key_on_a_npy_is_refused(here: Path) -> None:
    np.save("k.npy", KERNEL)
    message = error_of("k.npy:kernel")
    assert "takes no key" in message and "'k.npy'" in message


def test_path_containing_colons(here: Path) -> None:
    os.mkdir("run:3")
    np.save("run:3/k.npy", KERNEL)
    np.testing.assert_array_equal(load_source("run:3/k.npy").array, KERNEL)
    np.savez("run:3/bank.npz", a=KERNEL, b=KERNEL * 3)
    np.testing.assert_array_equal(load_source("run:3/bank.npz:b").array, KERNEL * 3)
    assert split_source_spec("run:3/bank.npz:b") == ("run:3/bank.npz", "b")


def test_stdin() -> None:
    data = npy_bytes(KERNEL)
    loaded = load_source("-", stdin=io.BytesIO(data))
    np.testing.assert_array_equal(loaded.array, KERNEL)
    assert loaded.origin == "stdin"
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()


def test_stdin_errors() -> None:
    assert "stdin is empty" in error_of("-", io.BytesIO(b""))
    buffer = io.BytesIO()
    np.savez(buffer, w=KERNEL)
    message = error_of("-", io.BytesIO(buffer.getvalue()))
    assert "stdin holds a zip (.npz) archive" in message
    assert "only .npy bytes" in message
    assert "not a valid .npy file" in error_of("-", io.BytesIO(b"\x93NUMPY\x01"))


def test_stdin_names_safetensors_and_pytorch_bytes(here: Path, torch: Any) -> None:
    save_file({"w": KERNEL}, "w.safetensors")
    message = error_of("-", io.BytesIO(Path("w.safetensors").read_bytes()))
    assert "stdin holds a safetensors file" in message
    assert "file.safetensors:KEY" in message
    torch.save({"w": torch.ones(2)}, "w.pt")
    assert "stdin holds a PyTorch file" in error_of("-", io.BytesIO(Path("w.pt").read_bytes()))


# --- safetensors -------------------------------------------------------------------------

MODULE_STATE = {
    "backbone.conv1.weight": KERNEL,
    "backbone.conv1.bias": np.arange(4, dtype=np.float32),
    "head.fc.weight": np.ones((2, 4), np.float16),
}


def test_safetensors_single_tensor_needs_no_key(here: Path) -> None:
    save_file({"only": KERNEL}, "one.safetensors")
    loaded = load_source("one.safetensors")
    np.testing.assert_array_equal(loaded.array, KERNEL)
    assert loaded.sha256 == hashlib.sha256(Path("one.safetensors").read_bytes()).hexdigest()
    np.testing.assert_array_equal(load_source("one.safetensors:only").array, KERNEL)


def test_safetensors_module_prefix_keys(here: Path) -> None:
    save_file(MODULE_STATE, "model.safetensors")
    for key, expected in MODULE_STATE.items():
        array = load_source(f"model.safetensors:{key}").array
        assert array.dtype == expected.dtype
        np.testing.assert_array_equal(array, expected)
    message = error_of("model.safetensors")
    assert "'model.safetensors' holds 3 tensors; name one as 'model.safetensors:KEY'" in message
    assert "backbone.conv1.bias, backbone.conv1.weight, head.fc.weight" in message


def test_safetensors_told_by_content_not_extension(here: Path) -> None:
    save_file(MODULE_STATE, "weights.bin")
    array = load_source("weights.bin:backbone.conv1.weight").array
    np.testing.assert_array_equal(array, KERNEL)


def test_safetensors_missing_key_lists_close_keys_and_count(here: Path) -> None:
    save_file(MODULE_STATE, "model.safetensors")
    message = error_of("model.safetensors:backbone.conv1.wieght")
    assert "'model.safetensors' has no tensor 'backbone.conv1.wieght'" in message
    assert "did you mean 'backbone.conv1.weight'" in message
    assert "available (3): " in message
    save_file({f"blocks.{i}.conv.weight": KERNEL for i in range(30)}, "deep.safetensors")
    message = error_of("deep.safetensors:blocks.7.conv.kernel")
    assert "did you mean 'blocks.7.conv.weight'" in message
    assert "available (30): " in message and "(18 more)" in message


def test_safetensors_prefix_key_lists_tensors_below(here: Path) -> None:
    save_file(MODULE_STATE, "model.safetensors")
    message = error_of("model.safetensors:backbone.conv1")
    assert "'backbone.conv1' in 'model.safetensors' is a prefix, not a tensor" in message
    assert "tensors below it: backbone.conv1.bias, backbone.conv1.weight" in message
    assert "head.fc" not in message


def test_safetensors_truncated(here: Path) -> None:
    save_file(MODULE_STATE, "model.safetensors")
    data = Path("model.safetensors").read_bytes()
    Path("cut.safetensors").write_bytes(data[:-10])
    message = error_of("cut.safetensors:head.fc.weight")
    assert "'cut.safetensors' is a truncated or corrupt safetensors file" in message
    Path("junk.safetensors").write_bytes(b"not a safetensors file at all")
    assert "truncated or corrupt safetensors file" in error_of("junk.safetensors")


def test_safetensors_bfloat16_and_float8_written_by_torch(here: Path, torch: Any) -> None:
    from safetensors.torch import save_file as save_torch_file

    bf16 = torch.tensor([[0.5, -1.25, 3.0], [1e-3, 7.0, -0.0078125]], dtype=torch.bfloat16)
    fp8 = torch.tensor([0.5, -2.0, 448.0], dtype=torch.float8_e4m3fn)
    save_torch_file({"conv.weight": bf16, "scale": fp8}, "bf.safetensors")
    array = load_source("bf.safetensors:conv.weight").array
    assert array.dtype == np.dtype(ml_dtypes.bfloat16)
    assert array.shape == (2, 3)
    np.testing.assert_array_equal(array.astype(np.float32), bf16.float().numpy())
    array = load_source("bf.safetensors:scale").array
    assert array.dtype == np.dtype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(array.astype(np.float32), [0.5, -2.0, 448.0])


# --- PyTorch -----------------------------------------------------------------------------


class _PlantsMarker:
    """Unpickling this runs code: it creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.path!r}, 'w').close()",))


def module_state(torch: Any) -> dict[str, Any]:
    """A real module's state dict: keys such as ``backbone.conv1.weight``."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"backbone": torch.nn.ModuleDict({"conv1": torch.nn.Conv2d(1, 4, 3)})}
    )
    return model.state_dict()


def test_pt_state_dict_module_prefix_keys(here: Path, torch: Any) -> None:
    state = module_state(torch)
    torch.save(state, "model.pt")
    loaded = load_source("model.pt:backbone.conv1.weight")
    assert loaded.origin == "model.pt:backbone.conv1.weight"
    assert loaded.sha256 == hashlib.sha256(Path("model.pt").read_bytes()).hexdigest()
    assert loaded.array.dtype == np.float32
    np.testing.assert_array_equal(loaded.array, state["backbone.conv1.weight"].numpy())
    bias = load_source("model.pt:backbone.conv1.bias").array
    np.testing.assert_array_equal(bias, state["backbone.conv1.bias"].numpy())
    message = error_of("model.pt")
    assert "'model.pt' holds 2 tensors; name one as 'model.pt:KEY'" in message
    message = error_of("model.pt:backbone.conv1")
    assert "'backbone.conv1' in 'model.pt' is a prefix, not a tensor" in message


def test_pt_nested_checkpoint_keys_are_joined(here: Path, torch: Any) -> None:
    state = module_state(torch)
    checkpoint = {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}
    torch.save(checkpoint, "ckpt.pth")
    array = load_source("ckpt.pth:state_dict.backbone.conv1.weight").array
    np.testing.assert_array_equal(array, state["backbone.conv1.weight"].numpy())
    message = error_of("ckpt.pth:backbone.conv1.weight")
    assert "'ckpt.pth' has no tensor 'backbone.conv1.weight'" in message
    assert "did you mean 'state_dict.backbone.conv1.weight'" in message
    assert "available (2): " in message
    assert "'epoch' in 'ckpt.pth' holds int, not a tensor" in error_of("ckpt.pth:epoch")
    torch.save({"model": {"w": torch.ones(3)}}, "one.pt")
    np.testing.assert_array_equal(load_source("one.pt").array, np.ones(3, np.float32))


def test_pt_single_tensor_and_legacy_format(here: Path, torch: Any) -> None:
    tensor = torch.from_numpy(KERNEL.copy())
    torch.save(tensor, "k.pt")
    np.testing.assert_array_equal(load_source("k.pt").array, KERNEL)
    message = error_of("k.pt:weight")
    assert "'k.pt' holds one tensor and takes no key; name it as 'k.pt'" in message
    # The pre-1.6 pickle format is told by its magic number, whatever the file's name.
    torch.save({"w": tensor}, "old.bin", _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(load_source("old.bin:w").array, KERNEL)


def test_pt_bfloat16_is_bit_exact(here: Path, torch: Any) -> None:
    tensor = torch.tensor([0.5, -1.25, 3.0, 1e-3], dtype=torch.bfloat16)
    torch.save({"w": tensor}, "bf.pt")
    array = load_source("bf.pt").array
    assert array.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(array.view(np.int16), tensor.view(torch.int16).numpy())


def test_pt_with_python_object_is_refused_and_its_code_never_runs(
    here: Path, torch: Any
) -> None:
    marker = here / "marker"
    torch.save({"w": torch.ones(2), "payload": _PlantsMarker(marker)}, "evil.pt")
    message = error_of("evil.pt:w")
    assert "'evil.pt' holds more than tensors (it names the Python object 'exec')" in message
    assert "refuses to run pickled code" in message
    assert not marker.exists()
    # The payload is live: a plain unpickling would have run it.
    torch.load("evil.pt", weights_only=False)
    assert marker.exists()


def test_plain_pickle_named_pt_is_refused(here: Path, torch: Any) -> None:
    Path("plain.pt").write_bytes(pickle.dumps({"w": KERNEL}))
    message = error_of("plain.pt")
    assert "'plain.pt' holds pickled data that weights-only loading cannot read" in message
    assert "refuses to run pickled code" in message


def test_torchscript_archive_is_refused(here: Path, torch: Any) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), "scripted.pt")
    assert "'scripted.pt' is a TorchScript archive" in error_of("scripted.pt")


def test_pt_truncated(here: Path, torch: Any) -> None:
    torch.save(module_state(torch), "model.pt")
    data = Path("model.pt").read_bytes()
    Path("cut.pt").write_bytes(data[: len(data) // 2])
    assert "'cut.pt' is a truncated or corrupt PyTorch file" in error_of("cut.pt")


def test_pt_without_torch_says_what_to_do(here: Path, torch: Any) -> None:
    torch.save({"w": torch.ones(2)}, "w.pt")
    torch.save({"w": torch.ones(2)}, "old.pt", _use_new_zipfile_serialization=False)  # before PyTorch 1.6
    save_file({"w": KERNEL}, "w.safetensors")
    # sys.modules['torch'] = None makes `import torch` raise ImportError, exactly as on
    # a machine without PyTorch: safetensors and torch.save's zip are read there, the
    # format of PyTorch before 1.6 says how to get it.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from conv_surgeon.errors import SourceError\n"
        "from conv_surgeon.edits.sources import load_source\n"
        "print(load_source('w.safetensors').array.shape)\n"
        "print(load_source('w.pt:w').array.tolist())\n"
        "try:\n"
        "    load_source('old.pt:w')\n"
        "except SourceError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    shape, values, message = result.stdout.splitlines()
    assert (shape, values) == ("(3, 3, 1, 4)", "[1.0, 1.0]")
    assert message.startswith(
        "source 'old.pt:w': reading this .pt needs PyTorch (pip install 'conv-surgeon[torch]'); or export "
        "the tensors with safetensors/numpy"
    )
