"""The numpy reader of torch.save files (edits/pt_reader), checked against real files that
torch wrote and against torch.load(weights_only=True) itself: every weight dtype, views with
strides and offsets, shared storages, both byte orders, checkpoints, and hostile pickles."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from conv_surgeon.edits.pt_reader import PtCorrupt, PtRefused, read_pt
from conv_surgeon.edits.sources import load_source, load_state_dict
from conv_surgeon.errors import SourceError

torch = pytest.importorskip("torch")

# What torch writes for weights; those numpy lacks are checked bit for bit through ml_dtypes.
DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
          "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"]


def saved(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def as_numpy(tensor: Any) -> np.ndarray:
    """torch's own values, as bits where numpy has no such dtype."""
    name = str(tensor.dtype).removeprefix("torch.")
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        bits = torch.int16 if tensor.element_size() == 2 else torch.uint8
        return tensor.contiguous().view(bits).numpy().view(getattr(ml_dtypes, name))
    if name in ("uint16", "uint32", "uint64"):
        return tensor.to(torch.int64).numpy().astype(name)
    return tensor.numpy()


@pytest.mark.parametrize("name", DTYPES)
def test_every_weight_dtype_reads_as_torch_reads_it(tmp_path: Path, name: str) -> None:
    dtype = getattr(torch, name)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=generator) * 7
    tensor = base > 0 if name == "bool" else base.to(torch.complex64).to(dtype) if name.startswith("complex") \
        else base.abs().to(dtype) if name.startswith("uint") else base.to(dtype)
    path = saved({"w": tensor, "t": tensor.t()[1:, ::2]}, tmp_path / "w.pt")
    read, truth = read_pt(path.read_bytes()), torch.load(path, weights_only=True)
    for key, shape in (("w", (3, 5)), ("t", (4, 2))):  # the second a strided view of the first's storage
        expected = as_numpy(truth[key])
        assert read[key].dtype == expected.dtype and read[key].shape == shape
        assert read[key].tobytes() == expected.tobytes()


def test_views_keep_their_strides_offsets_and_shared_storage(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {"whole": base, "transposed": base.t(), "strided": base[1:, ::2], "column": base[:, 3],
             "scalar": base[2, 5], "permuted": base.reshape(2, 3, 4).permute(2, 0, 1)}
    path = saved(views, tmp_path / "views.pt")
    read = read_pt(path.read_bytes())
    for key, tensor in views.items():
        np.testing.assert_array_equal(read[key], tensor.numpy(), err_msg=key)
    # One storage in the file, one buffer here: the views share it and none is a copy.
    assert all(np.shares_memory(read["whole"], read[key]) for key in views if key != "scalar")
    assert not read["whole"].flags.writeable and not read["whole"].flags.owndata


def test_a_big_endian_file_reads_as_torch_reads_it(tmp_path: Path) -> None:
    """torch.save writes the machine's order; a file from a big-endian machine has every
    storage swapped and says `big`: made so here from a little-endian save."""
    tensors = {"f": torch.randn(2, 3), "d": torch.randn(4, dtype=torch.float64), "h": torch.randn(3).half(),
               "b": torch.randn(5).bfloat16(), "i": torch.arange(-3, 3), "u": torch.arange(4, dtype=torch.uint8)}
    little = saved(tensors, tmp_path / "little.pt")
    dtypes = {str(i): t for i, t in enumerate(tensors.values())}
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(little) as source, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            folder, _, rest = info.filename.partition("/")
            if rest == "byteorder":
                data = b"big"
            elif rest.startswith("data/") and rest[5:] in dtypes:
                size = dtypes[rest[5:]].element_size()
                data = np.frombuffer(data, f"<u{size}" if size > 1 else "u1").astype(f">u{size}" if size > 1
                                                                                      else "u1").tobytes()
            target.writestr(info, data)
    truth = torch.load(big, weights_only=True)
    read = read_pt(big.read_bytes())
    for key, tensor in tensors.items():
        assert torch.equal(truth[key], tensor)  # the file is what a big-endian machine writes
        assert read[key].tobytes() == as_numpy(tensor).tobytes(), key
        assert read[key].dtype.isnative


def test_a_checkpoint_and_parameters_are_read_without_importing_torch(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    state = net.state_dict()
    path = saved({"state_dict": state, "epoch": 3, "params": dict(net.named_parameters())}, tmp_path / "ck.pt")
    script = ("import sys; from conv_surgeon.edits.sources import load_state_dict; "
              f"s = load_state_dict({str(path)!r}); print(s.inner, len(s.tensors), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["state_dict", str(len(state)), "False"]
    loaded = load_state_dict(path)
    assert list(loaded.tensors) == list(state)  # the module order is kept
    for key, tensor in state.items():
        np.testing.assert_array_equal(loaded.tensors[key], tensor.numpy())
    params = read_pt(path.read_bytes())["params"]
    np.testing.assert_array_equal(params["0.weight"], net[0].weight.detach().numpy())


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickles_are_refused_as_weights_only_refuses_them(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = saved({"w": torch.ones(2), "x": _RunsShell(marker)}, tmp_path / "evil.pt")
    with pytest.raises(PtRefused) as refused:
        read_pt(evil.read_bytes())
    assert refused.value.name == f"{os.system.__module__}.system"
    with pytest.raises(Exception, match=refused.value.name):  # torch refuses the same global
        torch.load(evil, weights_only=True)
    assert not marker.exists()
    # A global that is no code but is not on weights-only's list either: refused too.
    other = saved({"w": torch.ones(2), "q": __import__("collections").deque([1])}, tmp_path / "deque.pt")
    with pytest.raises(PtRefused, match="collections.deque"):
        read_pt(other.read_bytes())
    message = str(pytest.raises(SourceError, load_state_dict, evil).value)
    assert "holds more than tensors (it names the Python object" in message and "\n" not in message
    message = str(pytest.raises(SourceError, load_source, f"{evil}:w").value)
    assert f"'{evil}' holds more than tensors" in message and "refuses to run pickled code" in message
    assert not marker.exists()


def test_a_damaged_storage_fails_its_crc(tmp_path: Path) -> None:
    path = saved({"w": torch.randn(64, 64)}, tmp_path / "w.pt")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    lengths = data[info.header_offset + 26: info.header_offset + 30]  # the local header's name and extra
    start = info.header_offset + 30 + int.from_bytes(lengths[:2], "little") + int.from_bytes(lengths[2:], "little")
    data[start + 1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PtCorrupt, match="CRC"):
        read_pt(bytes(data))
    message = str(pytest.raises(SourceError, load_state_dict, path).value)
    assert "truncated or corrupt PyTorch file" in message


def test_a_file_zipped_again_with_deflate_reads_and_a_member_that_cannot_be_refuses_before_inflating(
        tmp_path: Path) -> None:
    """torch.save stores its members; a .pt zipped again with compression is read whole,
    but only once each member's declared sizes are shown possible (no decompression bomb)."""
    weight = torch.randn(64, 64)
    plain = saved({"w": weight}, tmp_path / "w.pt")
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    assert np.array_equal(read_pt(deflated.read_bytes())["w"], weight.numpy())
    # The storage's central-directory entry now declares more compressed bytes than the file holds.
    data = bytearray(deflated.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        name = next(i.filename for i in archive.infolist() if i.filename.endswith("data/0")).encode()
    at = data.rindex(name) - 46  # the central directory's record of that member
    assert data[at: at + 4] == b"PK\x01\x02"
    data[at + 20: at + 24] = (2 ** 31).to_bytes(4, "little")  # compressed size
    message = str(pytest.raises(SourceError, read_pt, bytes(data)).value)
    assert "declares about 2.15 GB of data" in message and "save it again with torch.save" in message, message
