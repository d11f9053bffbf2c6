"""Turn what the user named as a weight source into a numpy array.

A source is ``file.npy``, ``file.npz:KEY``, ``file.h5:PATH`` (or ``.hdf5``),
``file.safetensors:KEY``, ``file.pt:KEY`` (or ``.pth``), or ``-`` for ``.npy`` bytes on
stdin. A file holding exactly one array needs no key. The format is told by the file's
first bytes; the extension only decides for a file too damaged to tell.

Nothing is ever unpickled by conv-surgeon's own hand: ``.npy`` files are loaded with
``allow_pickle=False`` and PyTorch files with ``weights_only=True``, which refuses any
Python object beyond tensors and plain containers. PyTorch is imported only to read a
PyTorch file. Keys of safetensors files and state dicts are the '.'-joined names PyTorch
gives (``backbone.conv1.weight``); dicts nested in a checkpoint
(``{"state_dict": {...}}``) are joined the same way (``state_dict.conv1.weight``).
bfloat16 and float8 tensors come back bit-exact as ml_dtypes arrays, the way Keras'
own bfloat16 HDF5 datasets are read.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import math
import mmap
import os
import pickle
import stat
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

from ..errors import SourceError
from ..store.archive import ZIP_FAULTS, ZIP_MAGIC
from ..store.documents import parse_json
from ..store.fileio import read_input, read_stream
from ..store.hdf5 import HDF5_MAGIC, read_dataset, refuse_untrusted_content
from .pt_reader import PtCorrupt, PtRefused, PtUnsupported, read_pt, zip_stream

if TYPE_CHECKING:
    import h5py

NPY_MAGIC = b"\x93NUMPY"
# torch.save's legacy (pre-zip) format opens with its magic number pickled at protocol 2.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
SOURCE_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)

ACCEPTED = (
    "accepted: file.npy, file.npz:KEY, file.h5:PATH, file.safetensors:KEY, "
    "file.pt:KEY (or .pth), or - for .npy bytes on stdin"
)

# Float formats numpy lacks, read bit-exactly through ml_dtypes: safetensors dtype code
# to the name that ml_dtypes and torch both use.
_ML_DTYPE_NAMES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
# safetensors dtype codes that safetensors' numpy API returns as native numpy arrays.
_NUMPY_DTYPE_CODES = frozenset(
    {"BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64", "F64"}
)

# Keys shown in one error line before the list is cut short.
_MAX_LISTED_KEYS = 12

# Deflate never shrinks data more than 1032:1 (zlib's technical notes): a member that
# declares more is lying about its size.
_DEFLATE_MAX_RATIO = 1032


@dataclass(frozen=True)
class LoadedArray:
    """An array read from a source, with what the user typed and the bytes' hash."""

    array: np.ndarray
    origin: str  # the spec as typed ("bank.npz:w1"), or "stdin" for "-"
    sha256: str  # of the source file's bytes (of stdin's bytes for "-")


def load_source(spec: str, stdin: BinaryIO | None = None) -> LoadedArray:
    """Read the array that ``spec`` names.

    >>> load_source("bank.npz:w1").array.shape
    (3, 3, 1, 4)
    """
    if spec == "-":
        return _load_stdin(stdin if stdin is not None else sys.stdin.buffer)
    path, key = split_source_spec(spec)
    if os.path.isdir(path):
        raise SourceError(f"source '{spec}': '{path}' is a directory; {ACCEPTED}")
    try:
        data = read_input(path, f"source '{spec}'")
    except OSError as exc:
        raise SourceError(f"source '{spec}': cannot read '{path}': {exc.strerror}") from exc
    if not os.path.isfile(path) and _format_of(data, path) in ("hdf5", "safetensors"):
        raise SourceError(f"source '{spec}': '{path}' is a pipe; an HDF5 or safetensors source is read "
                          "in place and must be a file: save it to one first")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise SourceError(f"source '{spec}': '{path}' is empty; {ACCEPTED}")

    kind = _format_of(data, path)
    if kind == "npy":
        if key is not None:
            raise SourceError(
                f"source '{spec}': '{path}' is a .npy file holding one array and takes "
                f"no key; name it as '{path}'"
            )
        array = _load_npy_bytes(data, f"source '{spec}'")
    elif kind == "npz":
        array = _load_npz(data, spec, path, key)
    elif kind == "hdf5":
        array = _load_hdf5(spec, path, key)
    elif kind == "safetensors":
        array = _load_safetensors(data, spec, path, key)
    elif kind == "torch":
        array = _load_torch(data, spec, path, key)
    elif kind == "torchscript":
        raise SourceError(
            f"source '{spec}': '{path}' is a TorchScript archive (torch.jit.save), which "
            "conv-surgeon does not load; save the weights instead: "
            "torch.save(model.state_dict(), 'w.pt')"
        )
    else:
        raise SourceError(
            f"source '{spec}': '{path}' is not a .npy, .npz, HDF5, safetensors or "
            f"PyTorch file (first bytes {data[:8]!r}); {ACCEPTED}"
        )
    return LoadedArray(array=array, origin=spec, sha256=digest)


def split_source_spec(spec: str) -> tuple[str, str | None]:
    """Split ``path:key`` into the path and the key (None when there is no key).

    A path may itself hold ':'. The whole spec is a path if such a file exists;
    otherwise it splits at the last ':' whose left side is an existing file, so that
    keys holding ':' (Keras 2 datasets such as ``kernel:0``) stay whole.
    """
    if os.path.exists(spec):
        return spec, None
    for index in range(len(spec) - 1, 0, -1):
        if spec[index] == ":" and os.path.isfile(spec[:index]):
            key = spec[index + 1 :]
            return spec[:index], key if key else None
    raise SourceError(
        f"source '{spec}': file '{_missing_path(spec)}' not found; check the path"
    )


def _missing_path(spec: str) -> str:
    """The part of a spec the user most likely meant as the file name."""
    for index, char in enumerate(spec):
        if char == ":" and spec[:index].lower().endswith(SOURCE_SUFFIXES):
            return spec[:index]
    return spec


def _format_of(data: bytes | mmap.mmap, path: str) -> str | None:
    """The format of a source's bytes: npy, npz, hdf5, safetensors, torch, torchscript.

    The content decides. ``path``'s extension is asked only when the bytes are too
    damaged to tell (a cut-short zip named .pt), so that the error names the right format.
    """
    suffix = os.path.splitext(path)[1].lower()
    head = data[:64]
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(zip_stream(data)) as archive:
                names = archive.namelist()
        except ZIP_FAULTS:
            return "torch" if suffix in TORCH_SUFFIXES else "npz"
        # torch.save writes one top folder holding data.pkl; torch.jit.save adds
        # constants.pkl and code/ beside it.
        folders = {
            n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")
        }
        if not folders:
            return "npz"
        if any(f"{folder}/constants.pkl" in names for folder in folders):
            return "torchscript"
        return "torch"
    if _looks_like_safetensors(data) or suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    if head.startswith(TORCH_LEGACY_MAGIC) or suffix in TORCH_SUFFIXES:
        return "torch"
    return None


def _looks_like_safetensors(data: bytes | mmap.mmap) -> bool:
    """An 8-byte little-endian header length, then a JSON object that long."""
    header_length = int.from_bytes(data[:8], "little")
    return len(data) >= 10 and 2 <= header_length <= len(data) - 8 and data[8:9] == b"{"


def _load_stdin(stdin: BinaryIO) -> LoadedArray:
    data = read_stream(stdin, "source '-'")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise SourceError("source '-': stdin is empty; expected the bytes of a .npy file")
    kind = _format_of(data, "")
    if kind != "npy":
        described = {
            "npz": "a zip (.npz) archive",
            "hdf5": "an HDF5 file",
            "safetensors": "a safetensors file",
            "torch": "a PyTorch file",
            "torchscript": "a TorchScript archive",
        }.get(kind or "", f"data that is not .npy (first bytes {data[:8]!r})")
        raise SourceError(
            f"source '-': stdin holds {described}; only .npy bytes can be read from stdin: "
            "save the archive to a file and name it as file.npz:KEY, file.h5:PATH, "
            "file.safetensors:KEY or file.pt:KEY"
        )
    return LoadedArray(
        array=_load_npy_bytes(data, "source '-' (stdin)"), origin="stdin", sha256=digest
    )


def _load_npy_bytes(data: bytes, what: str) -> np.ndarray:
    """Load ``.npy`` bytes, refusing object arrays before numpy would unpickle them, and a
    header that declares more data than the bytes hold before numpy would allocate it."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, EOFError) as exc:
        raise SourceError(f"{what}: not a valid .npy file ({_one_line(exc)})") from exc
    if dtype.hasobject:
        raise SourceError(
            f"{what}: holds a pickled object array (dtype {dtype}); conv-surgeon never "
            "unpickles (it can run code): save a numeric array instead, e.g. "
            "np.save(path, np.asarray(a, dtype=np.float32))"
        )
    if any(size < 0 for size in shape):
        raise SourceError(f"{what}: its header declares the shape {shape}, with a negative size; "
                          "the file is damaged, write it again with np.save")
    declared = math.prod(shape) * dtype.itemsize
    held = len(data) - stream.tell()
    if declared > held:
        raise SourceError(
            f"{what}: its header declares {_bytes(declared)} ({_shape_text(shape)} {dtype}), the "
            f"file holds {_bytes(held)} after it; it is truncated or its header is damaged, "
            "write it again with np.save"
        )
    try:
        # allow_pickle=False always: a pickled .npy runs code when loaded.
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
    except (ValueError, EOFError, OSError) as exc:
        raise SourceError(
            f"{what}: truncated or corrupt .npy data ({_one_line(exc)}); write it again "
            "with np.save"
        ) from exc


def _shape_text(shape: tuple[int, ...]) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 60 else text[:57] + "..."


def _bytes(count: int) -> str:
    """A byte count for a message: ``1,024 bytes``, ``about 4.5 PB``, ``over 2**200 bytes``."""
    if count < 10**6:
        return f"{count:,} bytes"
    if count >= 10**21:
        return f"over 2**{count.bit_length() - 1} bytes"
    unit, size = next((u, s) for u, s in (("EB", 10**18), ("PB", 10**15), ("TB", 10**12), ("GB", 10**9),
                                          ("MB", 10**6)) if count >= s)
    return f"about {count / size:.3g} {unit}"



def _load_npz(data: bytes, spec: str, path: str, key: str | None) -> np.ndarray:
    what = f"source '{spec}'"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [n for n in archive.namelist() if n.endswith(".npy")]
            keys = [n[: -len(".npy")] for n in members]
            if not keys:
                raise SourceError(
                    f"source '{spec}': '{path}' is a zip archive without .npy members "
                    "(a .keras model?); expected a .npz written by np.savez"
                )
            chosen = _choose_key(spec, path, key, keys, "array")
            member_bytes = _read_member(archive, chosen + ".npy", len(data), what, 0)
    except ZIP_FAULTS as exc:
        raise SourceError(
            f"source '{spec}': '{path}' is a truncated or corrupt .npz archive "
            f"({_one_line(exc)}); write it again with np.savez"
        ) from exc
    return _load_npy_bytes(member_bytes, what)


def load_npz_arrays(path: str | os.PathLike[str], label: str | None = None,
                    empty_hint: str = "write one with `conv-surgeon get MODEL --all -o FILE.npz`",
                    ) -> tuple[dict[str, np.ndarray], str]:
    """Every array of an ``.npz`` (a bundle; ``label`` names it otherwise in messages), read
    once and never unpickled, with the sha256 of the file's bytes."""
    label = label or f"bundle '{path}'"
    if os.path.isdir(path):
        raise SourceError(f"{label}: is a directory; expected an .npz written by np.savez")
    try:
        data = read_input(path, label)
    except OSError as exc:
        raise SourceError(f"{label}: cannot read it ({exc.strerror}); check the path") from exc
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [n for n in archive.namelist() if n.endswith(".npy")]
            arrays = {}
            read = 0
            for name in members:
                member_bytes = _read_member(archive, name, len(data), label, read)
                read += len(member_bytes)
                arrays[name[: -len(".npy")]] = _load_npy_bytes(member_bytes, f"{label} key '{name[:-4]}'")
    except ZIP_FAULTS as exc:
        raise SourceError(
            f"{label}: not a readable .npz archive ({_one_line(exc)}); write it with np.savez"
        ) from exc
    if not arrays:
        raise SourceError(f"{label}: holds no arrays; {empty_hint}")
    return arrays, hashlib.sha256(data).hexdigest()


def _read_member(archive: zipfile.ZipFile, name: str, held: int, what: str, already: int) -> bytes:
    """A member's bytes, once its declared sizes are shown possible: no more compressed
    bytes than the archive holds, no more than deflate can give from them, and room in
    memory beside the ``already`` bytes read. A decompression bomb (a few MB that inflate
    to 4 GiB), or a header that lies about the size, is refused before any is inflated."""
    check_inflatable(archive.getinfo(name), held, f"{what}: member '{name}'", already)
    return archive.read(name)


def check_inflatable(info: zipfile.ZipInfo, held: int, member: str, already: int = 0,
                     remedy: str = "write it again with np.savez") -> None:
    """Refuse a zip member whose declared sizes are not possible (see _read_member)."""
    compressed, size = info.compress_size, info.file_size
    if compressed > held:
        raise SourceError(f"{member} declares {_bytes(compressed)} of data, the archive holds {_bytes(held)}; "
                          f"it is truncated or damaged, {remedy}")
    if info.compress_type == zipfile.ZIP_STORED and size != compressed:
        raise SourceError(f"{member} is stored uncompressed yet declares {_bytes(size)} in {_bytes(compressed)}; "
                          f"the archive is damaged, {remedy}")
    if info.compress_type == zipfile.ZIP_DEFLATED and size > _DEFLATE_MAX_RATIO * compressed:
        raise SourceError(
            f"{member} declares {_bytes(size)} inflated from {_bytes(compressed)}, more than deflate "
            f"can give ({_DEFLATE_MAX_RATIO}:1); the archive is damaged, refusing to inflate it")
    room = _memory_for_arrays()
    if room is not None and already + size > room:
        raise SourceError(
            f"{member} declares {_bytes(size)} uncompressed, more than the memory conv-surgeon may use "
            f"for arrays ({_bytes(room)}, half of what is available); refusing to inflate it, "
            "split the arrays into smaller files")


def _memory_for_arrays() -> int | None:
    """Half the memory available now (Linux's MemAvailable), None where it cannot be told:
    an array read from a file is held twice on its way (the bytes, then the array)."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return None


def _load_hdf5(spec: str, path: str, key: str | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            refuse_untrusted_content(h5, f"source '{spec}'", SourceError)
            datasets = _datasets_below(h5)
            if not datasets:
                raise SourceError(f"source '{spec}': '{path}' holds no datasets")
            if key is None:
                name = _choose_key(spec, path, None, datasets, "dataset")
            else:
                name = key.strip("/")
                node = h5.get(name) if name else h5
                if isinstance(node, h5py.Group):
                    below = [
                        f"{node.name.strip('/')}/{d}".lstrip("/")
                        for d in _datasets_below(node)
                    ]
                    raise SourceError(
                        f"source '{spec}': '{key}' in '{path}' is a group, not a dataset; "
                        f"datasets below it: {_list_keys(below) if below else 'none'}"
                    )
                if not isinstance(node, h5py.Dataset):
                    name = _choose_key(spec, path, key, datasets, "dataset")
            return _read_dataset(h5[name], spec)
    except (OSError, KeyError) as exc:
        raise SourceError(
            f"source '{spec}': '{path}' is a truncated or corrupt HDF5 file "
            f"({_one_line(exc)})"
        ) from exc


def _load_safetensors(data: bytes, spec: str, path: str, key: str | None) -> np.ndarray:
    from safetensors import SafetensorError, safe_open

    try:
        # safe_open maps the file and reads only the tensor asked for.
        with safe_open(path, framework="numpy") as tensors:
            names = sorted(tensors.keys())
            if not names:
                raise SourceError(f"source '{spec}': '{path}' holds no tensors")
            name = _choose_tensor(spec, path, key, names, {})
            code = tensors.get_slice(name).get_dtype()
            if code in _ML_DTYPE_NAMES:
                return _read_safetensor_bits(data, name, _ML_DTYPE_NAMES[code])
            if code not in _NUMPY_DTYPE_CODES:
                raise SourceError(
                    f"source '{spec}': tensor '{name}' in '{path}' has dtype {code}, which "
                    "numpy cannot hold; save it as float32 instead"
                )
            return np.asarray(tensors.get_tensor(name))
    except (SafetensorError, ValueError, KeyError) as exc:
        raise SourceError(
            f"source '{spec}': '{path}' is a truncated or corrupt safetensors file "
            f"({_one_line(exc)}); write it again with safetensors' save_file"
        ) from exc


def _read_safetensor_bits(data: bytes, name: str, dtype_name: str) -> np.ndarray:
    """One tensor's raw bytes, found through the header's offsets, as an ml_dtypes array."""
    import ml_dtypes

    header_length = int.from_bytes(data[:8], "little")
    entry = parse_json(data[8 : 8 + header_length])[name]  # safe_open has read this header
    start, end = entry["data_offsets"]
    body = data[8 + header_length + start : 8 + header_length + end]
    dtype = np.dtype(getattr(ml_dtypes, dtype_name))
    return np.frombuffer(body, dtype=dtype).reshape(entry["shape"]).copy()


def _load_torch(data: bytes, spec: str, path: str, key: str | None) -> np.ndarray:
    loaded, is_tensor = _read_torch_file(data, f"source '{spec}': '{path}'", (
        f"source '{spec}': reading this .pt needs PyTorch (pip install 'conv-surgeon[torch]'); or export "
        "the tensors with safetensors/numpy where torch is installed, e.g. "
        "safetensors.torch.save_file(model.state_dict(), 'w.safetensors')"))
    if is_tensor(loaded):
        if key is not None:
            raise SourceError(
                f"source '{spec}': '{path}' holds one tensor and takes no key; name it "
                f"as '{path}'"
            )
        return _tensor_to_numpy(loaded, spec, f"'{path}'")
    tensors, non_tensors = _flatten_state(loaded, spec, path, is_tensor)
    if not tensors:
        raise SourceError(
            f"source '{spec}': '{path}' holds no tensors (it holds "
            f"{type(loaded).__name__}); save a state dict: torch.save(model.state_dict(), path)"
        )
    name = _choose_tensor(spec, path, key, list(tensors), non_tensors)
    return _tensor_to_numpy(tensors[name], spec, f"tensor '{name}' in '{path}'")


def _read_torch_file(data: bytes | mmap.mmap, lead: str, needs_torch: str) -> tuple[Any, Callable[[object], bool]]:
    """What a PyTorch file holds, read as ``torch.load(weights_only=True)`` reads it, and the
    test of its tensors (``lead`` begins each error line: "source 'w.pt:k': 'w.pt'"). A ``torch.save`` zip is read with numpy alone (:mod:`.pt_reader`: the
    same globals allowed, tensors as numpy views of the file); torch itself is asked only for
    what that reader cannot hold (the pre-1.6 format, a sparse or quantized tensor)."""
    try:
        return read_pt(data), _is_array
    except PtRefused as exc:
        raise SourceError(_refusal(lead, exc.name)) from None
    except PtCorrupt as exc:
        raise SourceError(f"{lead} is a truncated or corrupt PyTorch file ({exc}); write it again with "
                          "torch.save") from None
    except PtUnsupported:
        pass
    try:
        import torch
    except ImportError as exc:
        raise SourceError(needs_torch) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SourceError(_refusal(lead, _refused_global(exc))) from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{lead} is a truncated or corrupt PyTorch file ({_one_line(exc)}); write it again "
                          "with torch.save") from exc
    return loaded, lambda value: isinstance(value, torch.Tensor)


def _is_array(value: object) -> bool:
    return isinstance(value, np.ndarray)


def _refusal(lead: str, refused: str | None) -> str:
    held = (f"holds more than tensors (it names the Python object '{refused}')" if refused
            else "holds pickled data that weights-only loading cannot read")
    return (f"{lead} {held}; conv-surgeon loads PyTorch files with weights_only=True and refuses to run "
            "pickled code: save only the weights, e.g. torch.save(model.state_dict(), path)")


def _refused_global(exc: BaseException) -> str | None:
    """The Python object weights-only unpickling refused to import, when torch names it."""
    words = str(exc).split()
    for index, word in enumerate(words[:-1]):
        if word == "GLOBAL":
            return words[index + 1]
    return None


def _flatten_state(
    loaded: object, spec: str, path: str, is_tensor: Callable[[object], bool]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every tensor under ``loaded`` by its '.'-joined key, and the type of every other leaf.

    List items are keyed by their index, as ``nn.ModuleList`` names its children.
    """
    tensors: dict[str, Any] = {}
    non_tensors: dict[str, str] = {}

    def visit(value: object, name: str) -> None:
        if isinstance(value, Mapping):
            for child_key, child in value.items():
                visit(child, f"{name}.{child_key}" if name else str(child_key))
        elif isinstance(value, (list, tuple)):
            for index, child in enumerate(value):
                visit(child, f"{name}.{index}" if name else str(index))
        elif is_tensor(value):
            if name in tensors:
                raise SourceError(
                    f"source '{spec}': '{path}' holds two tensors named '{name}' once "
                    "nested keys are joined with '.'; save them under distinct keys"
                )
            tensors[name] = value
        else:
            non_tensors[name] = type(value).__name__

    visit(loaded, "")
    return tensors, non_tensors


def _tensor_to_numpy(tensor: Any, spec: str, what: str) -> np.ndarray:
    if isinstance(tensor, np.ndarray):  # read without torch
        return tensor
    import torch

    tensor = tensor.detach().cpu()
    for dtype_name in _ML_DTYPE_NAMES.values():
        if tensor.dtype == getattr(torch, dtype_name):
            # Imported only for such a tensor: the import costs 0.6 s beside torch here.
            import ml_dtypes

            dtype = np.dtype(getattr(ml_dtypes, dtype_name))
            bits = torch.int16 if dtype.itemsize == 2 else torch.uint8
            return np.asarray(tensor.contiguous().view(bits).numpy()).view(dtype)
    try:
        return np.asarray(tensor.numpy())
    except (TypeError, RuntimeError) as exc:
        raise SourceError(
            f"source '{spec}': {what} ({tensor.dtype}, {tensor.layout}) has no numpy "
            f"equivalent ({_one_line(exc)}); save it as a dense float32 tensor"
        ) from exc


def _choose_tensor(
    spec: str, path: str, key: str | None, names: list[str], non_tensors: dict[str, str]
) -> str:
    """The tensor ``key`` names among '.'-joined names, or the only one when no key."""
    if key is not None and key not in names:
        if key in non_tensors:
            raise SourceError(
                f"source '{spec}': '{key}' in '{path}' holds {non_tensors[key]}, not a "
                "tensor; name a tensor"
            )
        below = [n for n in names if n.startswith(key.rstrip(".") + ".")]
        if below:
            raise SourceError(
                f"source '{spec}': '{key}' in '{path}' is a prefix, not a tensor; "
                f"tensors below it: {_list_keys(below)}"
            )
    return _choose_key(spec, path, key, names, "tensor")


def _datasets_below(group: h5py.Group) -> list[str]:
    """Paths of every dataset below ``group``, relative to it."""
    import h5py

    found: list[str] = []

    def visit(name: str, node: object) -> None:
        if isinstance(node, h5py.Dataset):
            found.append(name)

    group.visititems(visit)
    return found


def _read_dataset(dataset: object, spec: str) -> np.ndarray:
    import h5py

    assert isinstance(dataset, h5py.Dataset)
    if dataset.shape is None:
        raise SourceError(f"source '{spec}': dataset '{dataset.name}' is empty (no data)")
    room = _memory_for_arrays()
    if room is not None and dataset.nbytes > room:
        raise SourceError(
            f"source '{spec}': dataset '{dataset.name}' declares {_bytes(dataset.nbytes)} ({_shape_text(dataset.shape)} "
            f"{dataset.dtype}), more than the memory conv-surgeon may use for arrays ({_bytes(room)}); "
            "refusing to read it")
    value = read_dataset(dataset)  # decodes Keras's bfloat16 records, as for a model
    if value.dtype.hasobject:
        raise SourceError(
            f"source '{spec}': dataset '{dataset.name}' holds {value.dtype} data, not "
            "numbers; name a numeric dataset"
        )
    return value


def _choose_key(spec: str, path: str, key: str | None, keys: list[str], noun: str) -> str:
    """The key the user meant, or the only one when none was given."""
    if key is None:
        if len(keys) == 1:
            return keys[0]
        raise SourceError(
            f"source '{spec}': '{path}' holds {len(keys)} {noun}s; name one as "
            f"'{path}:KEY': {_list_keys(keys)}"
        )
    if noun == "dataset":
        wanted = key.strip("/")
    elif noun == "array":
        wanted = key.removesuffix(".npy")
    else:
        wanted = key
    if wanted in keys:
        return wanted
    close = _close_keys(wanted, keys)
    suggestion = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise SourceError(
        f"source '{spec}': '{path}' has no {noun} '{key}'; {suggestion}"
        f"available ({len(keys)}): {_list_keys(keys)}"
    )


def _close_keys(wanted: str, keys: list[str]) -> list[str]:
    """Up to three keys the user may have meant: first those that end in ``wanted``
    (the key without a wrapper such as ``state_dict.``), then the most alike."""
    ending = [k for k in keys if k.endswith(("." + wanted, "/" + wanted))]
    alike = difflib.get_close_matches(wanted, keys, n=3)
    return list(dict.fromkeys(ending + alike))[:3]


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    if len(keys) > _MAX_LISTED_KEYS:
        shown += f", ... ({len(keys) - _MAX_LISTED_KEYS} more)"
    return shown


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__



# --- whole state dicts (`port`) ---------------------------------------------------------------

StateFormat = Literal["torch", "safetensors", "npz"]
STATE_ACCEPTED = ("expected a PyTorch state dict saved with torch.save(model.state_dict(), 'w.pt') (.pt or "
                  ".pth), a .safetensors file, or an .npz of named arrays")
# Keys under which training scripts save the weights beside other things (an optimizer,
# an epoch): a checkpoint {"state_dict": {...}, "epoch": 3} is read as its state dict.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


@dataclass(frozen=True)
class LoadedState:
    """Every tensor of a state dict by its '.'-joined name, as numpy arrays.

    ``ordered``: whether the names come in the order the model registered its modules
    (``torch.save`` and ``np.savez`` keep it; a safetensors header is sorted by name).
    ``inner``: the key of a checkpoint the state dict was found under, if any.
    """

    tensors: dict[str, np.ndarray]
    format: StateFormat
    ordered: bool
    sha256: str
    inner: str | None = None


def load_state_dict(path: str | os.PathLike[str]) -> LoadedState:
    """Every tensor of the state dict at ``path``: a ``.pt``/``.pth`` (read with
    ``weights_only=True``), ``.safetensors`` or ``.npz``; the format is told by its bytes.

    >>> sorted(load_state_dict("w.pt").tensors)[:2]
    ['bn1.bias', 'bn1.num_batches_tracked']
    """
    spec = os.fspath(path)
    what = f"state dict '{spec}'"
    if os.path.isdir(spec):
        raise SourceError(f"{what}: is a directory; {STATE_ACCEPTED}")
    try:
        mapped = _mapped_file(spec)
        data: bytes | mmap.mmap = mapped if mapped is not None else read_input(spec, what)
    except OSError as exc:
        raise SourceError(f"{what}: cannot read it ({exc.strerror}); check the path") from exc
    if not data:
        raise SourceError(f"{what}: the file is empty; {STATE_ACCEPTED}")
    digest = hashlib.sha256(data).hexdigest()
    kind = _format_of(data, spec)
    if kind == "torch":
        # A torch.save file's tensors are views of the mapped file: none is copied.
        tensors, inner = _torch_state(data, spec)
        return LoadedState(tensors, "torch", True, digest, inner)
    if isinstance(data, mmap.mmap):
        data = data[:]
    if kind == "safetensors":
        if not os.path.isfile(spec):
            raise SourceError(f"{what}: is a pipe; a safetensors file is read in place and must be a file")
        return LoadedState(_safetensors_state(data, spec), "safetensors", False, digest)
    if kind == "npz":
        if _is_keras_archive(data):
            raise SourceError(f"{what}: is a Keras model (.keras), not a state dict; {STATE_ACCEPTED} (`set --from "
                              "MODEL:LAYER` copies a layer from another Keras model)")
        arrays, _ = load_npz_arrays(spec, what, STATE_ACCEPTED)
        return LoadedState(arrays, "npz", True, digest)
    described = {"npy": "one .npy array", "hdf5": "an HDF5 file (a Keras model? `set --from` copies a layer "
                 "from one)", "torchscript": "a TorchScript archive (torch.jit.save)"}.get(
        kind or "", f"no format conv-surgeon reads (first bytes {data[:8]!r})")
    raise SourceError(f"{what}: holds {described}; {STATE_ACCEPTED}")


def _mapped_file(path: str) -> mmap.mmap | None:
    """A regular, non-empty file mapped read-only into memory (None for anything else: a pipe
    is read with bounds by read_input)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None  # opened here, a named pipe would block
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return None
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _is_keras_archive(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "model.weights.h5" in archive.namelist()
    except ZIP_FAULTS:
        return False


def _torch_state(data: bytes | mmap.mmap, spec: str) -> tuple[dict[str, np.ndarray], str | None]:
    what = f"state dict '{spec}'"
    loaded, is_tensor = _read_torch_file(data, f"{what}: the file", (
        f"{what}: reading this .pt needs PyTorch: pip install 'conv-surgeon[torch]'; or, where torch is "
        "installed, save the weights as safetensors (safetensors.torch.save_file(model.state_dict(), "
        "'w.safetensors')), which conv-surgeon reads without it"))
    if is_tensor(loaded):
        raise SourceError(f"{what}: holds one tensor, not a state dict; save torch.save(model.state_dict(), path)")
    inner = None
    if isinstance(loaded, Mapping) and not all(is_tensor(v) for v in loaded.values()):
        wrapped = [key for key in STATE_DICT_KEYS if isinstance(loaded.get(key), Mapping)]
        if len(wrapped) == 1:
            inner = wrapped[0]
            loaded = loaded[inner]
    tensors, _ = _flatten_state(loaded, spec, spec, is_tensor)
    if not tensors:
        raise SourceError(f"{what}: holds no tensors (it holds {type(loaded).__name__}); save a state dict: "
                          "torch.save(model.state_dict(), path)")
    return {name: _tensor_to_numpy(tensor, spec, f"tensor '{name}'") for name, tensor in tensors.items()}, inner


def _safetensors_state(data: bytes, spec: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    what = f"state dict '{spec}'"
    found: dict[str, np.ndarray] = {}
    try:
        with safe_open(spec, framework="numpy") as tensors:
            for name in tensors.keys():
                code = tensors.get_slice(name).get_dtype()
                if code in _ML_DTYPE_NAMES:
                    found[name] = _read_safetensor_bits(data, name, _ML_DTYPE_NAMES[code])
                elif code in _NUMPY_DTYPE_CODES:
                    found[name] = np.asarray(tensors.get_tensor(name))
                else:
                    raise SourceError(f"{what}: tensor '{name}' has dtype {code}, which numpy cannot hold; "
                                      "save it as float32 instead")
    except (SafetensorError, ValueError, KeyError) as exc:
        raise SourceError(f"{what}: a truncated or corrupt safetensors file ({_one_line(exc)}); write it again "
                          "with safetensors' save_file") from exc
    if not found:
        raise SourceError(f"{what}: holds no tensors")
    return found
