"""Reading a ``torch.save`` file with numpy alone, as ``torch.load(weights_only=True)`` reads it.

Importing torch costs about 1.3 s here, more than the rest of a ResNet50 port. A file written
by ``torch.save`` (since PyTorch 1.6) is a zip whose members are stored uncompressed, 64-byte
aligned: ``<folder>/data.pkl`` (the object, pickled), ``<folder>/data/<key>`` (each storage's
raw bytes), ``<folder>/byteorder`` (``little`` or ``big``). The pickle is read by a restricted
unpickler that knows exactly the globals weights-only loading allows for a state dict
(torch/_weights_only_unpickler.py): ``collections.OrderedDict``, the tensor rebuild functions
of ``torch._utils``, the storage classes (a storage comes as the persistent id
``('storage', storage_type, key, location, numel)``), the dtypes, and the builtins of plain
containers. Each maps to a numpy stand-in; the tensors come out as read-only numpy views of the
file's bytes (strides and offset honoured, one storage shared by several tensors).

Any other global is refused (:class:`PtRefused`), as weights-only loading refuses it: nothing
named in the file is imported or called. What weights-only loading allows but numpy cannot hold
here (a sparse, quantized or subclassed tensor, the pre-1.6 format) raises
:class:`PtUnsupported`, and the caller may ask torch itself.
"""

from __future__ import annotations

import _compat_pickle
import io
import mmap
import pickle
import struct
import sys
import zipfile
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import IO, Any, Union, cast

import numpy as np

Buffer = Union[bytes, mmap.mmap]


class PtError(Exception):
    """The file cannot be read by this reader (the subclasses say why)."""


class PtRefused(PtError):
    """The pickle names a Python object weights-only loading refuses (``name``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unsupported GLOBAL {name}")
        self.name = name


class PtUnsupported(PtError):
    """Weights-only loading reads it, this reader does not: torch itself may."""


class PtCorrupt(PtError):
    """The file is truncated, damaged or inconsistent."""


@dataclass(frozen=True)
class _DType:
    """A torch dtype: its name (``float32``) and the numpy type that holds it."""

    __slots__ = ("name",)
    name: str

    def __setstate__(self, state: object) -> None:
        raise PtCorrupt("a dtype given a state")


@dataclass(frozen=True)
class _StorageType:
    """``torch.FloatStorage`` and its kin (``dtype`` None: ``torch.UntypedStorage``)."""

    __slots__ = ("dtype",)
    dtype: _DType | None

    def __setstate__(self, state: object) -> None:
        raise PtCorrupt("a storage class given a state")


class _Storage:
    """One storage's raw bytes (a uint8 view of the file) and the dtype it was saved as."""

    __slots__ = ("raw", "dtype")

    def __init__(self, raw: np.ndarray, dtype: _DType) -> None:
        self.raw, self.dtype = raw, dtype

    def __setstate__(self, state: object) -> None:
        raise PtCorrupt("a storage given a state")


class _Tensor:
    """A tensor as ``torch._utils._rebuild_tensor_v2`` gets it, turned into numpy later."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                 dtype: _DType) -> None:
        self.storage, self.offset, self.size, self.stride, self.dtype = storage, offset, size, stride, dtype

    def __setstate__(self, state: object) -> None:
        raise PtUnsupported("a tensor with Python attributes")


# torch dtype name -> numpy type name (those numpy lacks come from ml_dtypes, when met).
_NUMPY_TYPES = {
    "float32": "f4", "float64": "f8", "float16": "f2", "int64": "i8", "int32": "i4", "int16": "i2",
    "int8": "i1", "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8", "bool": "?",
    "complex64": "c8", "complex128": "c16",
}
_ML_DTYPES = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}
# The legacy storage classes torch.save still names for the dtypes they cover.
_STORAGE_CLASSES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
# What weights-only loading allows beyond what this reader maps (torch/_weights_only_unpickler.py,
# _get_allowed_globals): met in a file, torch is asked instead of refusing the file.
_TORCH_ONLY = frozenset({
    "torch.nn.parameter.Parameter", "torch.serialization._get_layout", "torch.Tensor",
    "torch._utils._rebuild_qtensor", "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage", "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_wrapper_subclass", "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor", "torch._tensor._rebuild_from_type_v2",
    "torch.per_tensor_affine", "torch.per_tensor_symmetric", "torch.per_channel_affine",
    "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams",
    "torch.QInt8Storage", "torch.QUInt8Storage", "torch.QInt32Storage", "torch.QUInt4x2Storage",
    "torch.QUInt2x4Storage", "torch.ComplexHalfStorage", "torch.storage.TypedStorage",
})
_TORCH_ONLY_DTYPES = frozenset({
    "complex32", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e8m0fnu", "float4_e2m1fn_x2", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16",
    *(f"uint{n}" for n in range(1, 8)), *(f"int{n}" for n in range(1, 8)),
})


def read_pt(data: Buffer) -> Any:
    """The object a ``torch.save`` zip file holds, every tensor a read-only numpy array (a view
    of ``data`` where the file's byte order is the machine's).

    Raises :class:`PtRefused` for a global weights-only loading refuses, :class:`PtUnsupported`
    for what only torch reads, :class:`PtCorrupt` for a damaged file.
    """
    if data[:4] != b"PK\x03\x04":
        raise PtUnsupported("not a zip file (the format torch.save wrote before PyTorch 1.6)")
    try:
        with zipfile.ZipFile(zip_stream(data)) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            pickles = [name for name in infos if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise PtCorrupt(f"expected one <folder>/data.pkl, found {len(pickles)}")
            folder = pickles[0][: -len("data.pkl")]
            order = archive.read(folder + "byteorder").decode("ascii", "replace") \
                if folder + "byteorder" in infos else sys.byteorder
            if order not in ("little", "big"):
                raise PtCorrupt(f"unknown byte order {order!r}")
            pickled = archive.read(pickles[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise PtCorrupt(str(exc) or type(exc).__name__) from exc
    members = _Members(data, infos, folder)
    unpickler = _Unpickler(io.BytesIO(pickled), members)
    try:
        loaded = unpickler.load()
    except PtError:
        raise
    except RecursionError as exc:
        raise PtCorrupt("the pickle nests too deep") from exc
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, MemoryError) as exc:
        raise PtCorrupt(f"a damaged pickle ({type(exc).__name__}: {exc})") from exc
    return _to_numpy(loaded, order, {})


def zip_stream(data: Buffer) -> IO[bytes]:
    """A file over ``data`` for :class:`zipfile.ZipFile`: bytes are shared by BytesIO, a mapped
    file read in place (Python 3.11's mmap is no seekable file object)."""
    if isinstance(data, mmap.mmap):
        return cast(IO[bytes], io.BufferedReader(_MappedRaw(data)))
    return io.BytesIO(data)


class _MappedRaw(io.RawIOBase):
    def __init__(self, data: mmap.mmap) -> None:
        super().__init__()
        self.view, self.position = memoryview(data), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.view)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        chunk = self.view[self.position: self.position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)

    def close(self) -> None:
        self.view.release()
        super().close()


class _Members:
    """The storages of the archive, each a uint8 view of the file's bytes (CRC checked once)."""

    def __init__(self, data: Buffer, infos: dict[str, zipfile.ZipInfo], folder: str) -> None:
        self.data, self.infos, self.folder = data, infos, folder
        self.storages: dict[str, _Storage] = {}

    def storage(self, key: str, dtype: _DType, numel: int) -> _Storage:
        if key in self.storages:
            return self.storages[key]
        name = f"{self.folder}data/{key}"
        info = self.infos.get(name)
        if info is None:
            raise PtCorrupt(f"no member {name} for storage {key!r}")
        nbytes = numel * _itemsize(dtype)
        if info.file_size != nbytes:
            raise PtCorrupt(f"member {name} holds {info.file_size} bytes, its storage {nbytes}")
        raw = self._member_bytes(info)
        found = self.storages[key] = _Storage(raw, dtype)
        return found

    def _member_bytes(self, info: zipfile.ZipInfo) -> np.ndarray:
        if info.compress_type != zipfile.ZIP_STORED:
            # torch.save stores its members; a file zipped again with compression is read
            # whole, once its declared size is shown possible (no decompression bomb).
            from .sources import check_inflatable  # sources imports this module

            check_inflatable(info, len(self.data), f"PyTorch file member '{info.filename}'",
                             remedy="save it again with torch.save")
            try:
                with zipfile.ZipFile(zip_stream(self.data)) as z:
                    return np.frombuffer(z.read(info.filename), np.uint8)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
                raise PtCorrupt(f"member {info.filename}: {exc}") from exc
        header = bytes(self.data[info.header_offset: info.header_offset + 30])
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise PtCorrupt(f"member {info.filename}: no local header at {info.header_offset}")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if info.compress_size != info.file_size or start + info.file_size > len(self.data):
            raise PtCorrupt(f"member {info.filename}: its bytes run past the end of the file")
        if zlib.crc32(memoryview(self.data)[start: start + info.file_size]) != info.CRC:
            raise PtCorrupt(f"member {info.filename} fails its CRC check")
        return np.frombuffer(self.data, np.uint8, info.file_size, start)


def _itemsize(dtype: _DType) -> int:
    if dtype.name in _ML_DTYPES:
        return _ML_DTYPES[dtype.name]
    return np.dtype(_NUMPY_TYPES[dtype.name]).itemsize


class _Unpickler(pickle.Unpickler):
    """Unpickles only what weights-only loading allows for a state dict, into stand-ins."""

    def __init__(self, file: io.BytesIO, members: _Members) -> None:
        super().__init__(file, encoding="utf-8")
        self.members = members
        self.allowed: dict[str, Any] = {
            "collections.OrderedDict": OrderedDict,
            "collections.Counter": Counter,
            "builtins.set": set,
            "builtins.bytearray": bytearray,
            "builtins.complex": complex,
            "_codecs.encode": _encode,
            "torch.Size": tuple,
            "torch.device": _device,
            "torch._utils._rebuild_tensor": self._rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor_v2,
            "torch._utils._rebuild_tensor_v3": self._rebuild_tensor_v3,
            "torch._utils._rebuild_parameter": _rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
            "torch.storage.UntypedStorage": _StorageType(None),
            **{f"torch.{name}": _StorageType(_DType(dtype)) for name, dtype in _STORAGE_CLASSES.items()},
            **{f"torch.{name}": _DType(name) for name in (*_NUMPY_TYPES, *_ML_DTYPES)},
        }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2: Python 2's names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full in self.allowed:
            return self.allowed[full]
        if full in _TORCH_ONLY or (module == "torch" and name in _TORCH_ONLY_DTYPES):
            raise PtUnsupported(f"the file holds {full}, which numpy cannot hold")
        raise PtRefused(name if module == "builtins" else full)  # named as torch names it

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise PtCorrupt(f"an unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _count(numel):
            raise PtCorrupt(f"a malformed storage id {pid!r:.80}")
        return self.members.storage(key, storage_type.dtype or _DType("uint8"), numel)

    @staticmethod
    def _tensor(storage: object, offset: object, size: object, stride: object, dtype: _DType | None = None) -> _Tensor:
        if not isinstance(storage, _Storage):
            raise PtCorrupt("a tensor without a storage")
        if not (_count(offset) and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                and all(_count(n) for n in size) and all(_count(n) for n in stride)):
            raise PtCorrupt("a tensor with a malformed offset, size or stride")
        if dtype is not None and not isinstance(dtype, _DType):
            raise PtCorrupt("a tensor with a malformed dtype")
        return _Tensor(storage, cast(int, offset), size, stride, dtype or storage.dtype)

    def _rebuild_tensor(self, storage: object, offset: object, size: object, stride: object) -> _Tensor:
        return self._tensor(storage, offset, size, stride)

    def _rebuild_tensor_v2(self, storage: object, offset: object, size: object, stride: object,
                           requires_grad: object, hooks: object, metadata: object = None) -> _Tensor:
        if metadata:  # the conjugate or negative bit
            raise PtUnsupported("a tensor with conjugate or negative-bit metadata")
        return self._tensor(storage, offset, size, stride)

    def _rebuild_tensor_v3(self, storage: object, offset: object, size: object, stride: object,
                           requires_grad: object, hooks: object, dtype: object, metadata: object = None) -> _Tensor:
        if metadata:
            raise PtUnsupported("a tensor with conjugate or negative-bit metadata")
        if not isinstance(dtype, _DType):
            raise PtCorrupt("a tensor with a malformed dtype")
        return self._tensor(storage, offset, size, stride, dtype)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 pickles bytes: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PtRefused("_codecs.encode")
    return text.encode("latin-1")


def _device(name: object, index: object = None) -> str:
    if not isinstance(name, str):
        raise PtCorrupt("a malformed device")
    return name


def _rebuild_parameter(data: object, requires_grad: object, hooks: object) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise PtCorrupt("a parameter without a tensor")
    return data


def _rebuild_parameter_with_state(data: object, requires_grad: object, hooks: object, state: object) -> _Tensor:
    if state:
        raise PtUnsupported("a parameter with Python attributes")
    return _rebuild_parameter(data, requires_grad, hooks)


def _to_numpy(value: Any, order: str, seen: dict[int, Any]) -> Any:
    """``value`` with every tensor stand-in turned into its numpy array (containers rebuilt)."""
    if isinstance(value, _Tensor):
        return _array(value, order)
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return seen[id(value)]
        if isinstance(value, dict):
            out: Any = type(value)() if isinstance(value, (OrderedDict, Counter)) else {}
            seen[id(value)] = out
            for key, item in value.items():
                out[key] = _to_numpy(item, order, seen)
            return out
        if isinstance(value, list):
            items: list[Any] = []
            seen[id(value)] = items
            items.extend(_to_numpy(item, order, seen) for item in value)
            return items
        return tuple(_to_numpy(item, order, seen) for item in value)
    if isinstance(value, (_Storage, _StorageType, _DType)):
        raise PtUnsupported("a storage or dtype outside a tensor")
    return value


def _numpy_dtype(name: str) -> np.dtype:
    if name in _ML_DTYPES:
        import ml_dtypes  # imported only for such a tensor: it costs 0.6 s here

        found: np.dtype = np.dtype(getattr(ml_dtypes, name))
        return found
    return np.dtype(_NUMPY_TYPES[name])


def _array(tensor: _Tensor, order: str) -> np.ndarray:
    """The tensor as a read-only numpy array over its storage's bytes, strides honoured."""
    dtype = _numpy_dtype(tensor.dtype.name)
    raw = tensor.storage.raw
    if len(raw) % dtype.itemsize:
        raise PtCorrupt(f"a {tensor.dtype.name} tensor over a storage of {len(raw)} bytes")
    if order != sys.byteorder and dtype.itemsize > 1:
        if dtype.kind in "fiuc" and tensor.dtype.name not in _ML_DTYPES:
            base = raw.view(dtype.newbyteorder("<" if order == "little" else ">")).astype(dtype)
        else:  # bfloat16: swap its two bytes as an integer's
            bits = np.dtype(f"u{dtype.itemsize}")
            base = raw.view(bits.newbyteorder("<" if order == "little" else ">")).astype(bits).view(dtype)
        base.flags.writeable = False
    else:
        base = raw.view(dtype)
    count = len(base)
    if 0 in tensor.size:
        return np.empty(tensor.size, dtype)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= count:
        raise PtCorrupt(f"a tensor of size {tensor.size} (stride {tensor.stride}, offset {tensor.offset}) reaches "
                        f"past its storage of {count} elements")
    # as_strided goes through __array_interface__, which knows no ml_dtypes type: stride the bits.
    plain = base.view(np.dtype(f"u{dtype.itemsize}")) if tensor.dtype.name in _ML_DTYPES else base
    view = np.lib.stride_tricks.as_strided(
        plain[tensor.offset:], shape=tensor.size, strides=tuple(s * dtype.itemsize for s in tensor.stride),
        writeable=False)
    return view.view(dtype)
