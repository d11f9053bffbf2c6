"""Reading a saved Keras model's structure and weights without TensorFlow.

Two formats (DESIGN.md §3):

- ``.keras``: a zip whose ``model.weights.h5`` member holds every variable at an
  object-graph path (``layers/conv2d/vars/0``). The member is stored uncompressed, so it
  is read in place at its byte offset inside the archive.
- legacy ``.h5``: the model config in a file attribute, weights under
  ``model_weights/<layer>/...`` listed by ``weight_names`` attributes.

Parsing untrusted HDF5 can spin forever, so :func:`read_structure` parses in a forked
worker that is killed after a time limit.
"""

from __future__ import annotations

import atexit
import io
import json
import math
import os
import pickle
import select
import signal
import stat
import struct
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar

from .catalogue import (
    ConvClass,
    canonical_variable_name,
    conv_class,
    layer_variables,
)
from .errors import ConvSurgeonError, ModelFileError
from .naming import to_snake_case

if TYPE_CHECKING:
    # Imported where used: `inspect` parses in a worker, and the CLI process itself
    # never needs h5py or numpy to print what the worker read.
    import h5py
    import numpy as np

ModelFormat = Literal["keras", "h5"]

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
WEIGHTS_MEMBER = "model.weights.h5"
PARSE_TIMEOUT_S = 20.0

T = TypeVar("T")


@dataclass(frozen=True)
class Variable:
    """One variable of a layer, where it lives in the weight store."""

    name: str  # as stored: "kernel", "bias", "depthwise_kernel"; Keras 2's ":0" dropped
    dataset: str  # path of the dataset inside the weight store
    shape: tuple[int, ...]
    dtype: str  # "float32", "float16", "bfloat16", ...
    index: int  # position in the layer's weight list (Keras's `layer.weights` order)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layer:
    """A layer that holds variables, with its place in the model."""

    name: str
    path: str  # names of the enclosing models and the layer, root excluded
    class_name: str
    config: dict[str, Any]
    variables: tuple[Variable, ...]

    @property
    def conv(self) -> ConvClass | None:
        return conv_class(self.class_name)

    @property
    def parameters(self) -> int:
        return sum(v.size for v in self.variables)


@dataclass(frozen=True)
class ModelStructure:
    """Everything `inspect` shows, read from the file's structure alone."""

    format: ModelFormat
    keras_version: str | None
    model_name: str
    model_class: str
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    @property
    def conv_layers(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.conv is not None)


@dataclass(frozen=True)
class ModelSource:
    """A model given as a path, or as the bytes read from stdin."""

    label: str
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def from_path(cls, path: str | Path) -> ModelSource:
        return cls(label=str(path), path=Path(path))

    @classmethod
    def from_stream(cls, stream: BinaryIO, label: str = "<stdin>") -> ModelSource:
        data = stream.read()
        if not data:
            raise ModelFileError(
                f"{label}: no model received (0 bytes); expected a .keras or .h5 file piped "
                "in, e.g. `< model.keras`"
            )
        return cls(label=label, data=data)

    @contextmanager
    def open_binary(self) -> Iterator[BinaryIO]:
        if self.data is not None:
            yield io.BytesIO(self.data)
            return
        assert self.path is not None
        with open(self.path, "rb") as handle:
            yield handle


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes at ``offset`` of a seekable binary file.

    h5py reads the weight store through it in place inside the zip: a
    ``zipfile.open()`` stream would re-read from the member's start on every seek.
    """

    def __init__(self, raw: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        self._raw, self._offset, self._size, self._pos = raw, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + pos
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        if n == 0:
            return 0
        self._raw.seek(self._offset + self._pos)
        got = self._raw.readinto(view[:n]) or 0
        self._pos += got
        return got


@dataclass(frozen=True)
class WeightMember:
    """Where a `.keras` archive keeps its weight store."""

    data_offset: int  # offset of the member's first byte in the archive
    size: int
    crc: int
    stored: bool  # uncompressed, so readable and patchable in place
    local_header_offset: int
    flag_bits: int


def sniff_format(head: bytes, label: str) -> ModelFormat:
    if head.startswith(ZIP_MAGIC):
        return "keras"
    if head.startswith(HDF5_MAGIC):
        return "h5"
    raise ModelFileError(
        f"{label}: not a Keras model (expected a .keras zip archive or a legacy .h5 "
        f"HDF5 file, received bytes starting {head[:8]!r}); check the path"
    )


def _check_path(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read it ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        if (path / "saved_model.pb").exists():
            raise ModelFileError(
                f"{path}: this is a TensorFlow SavedModel directory; conv-surgeon works on "
                "Keras .keras and .h5 files: load it in Keras and save it with "
                "model.save('model.keras')"
            )
        raise ModelFileError(
            f"{path}: is a directory; expected a .keras or .h5 model file"
        )


def detect_format(source: ModelSource) -> ModelFormat:
    """Tell `.keras` from `.h5` by the first bytes, never by the extension."""
    if source.path is not None:
        _check_path(source.path)
    with source.open_binary() as handle:
        head = handle.read(8)
    return sniff_format(head, source.label)


def locate_weight_member(archive: zipfile.ZipFile, raw: BinaryIO, label: str) -> WeightMember:
    try:
        info = archive.getinfo(WEIGHTS_MEMBER)
    except KeyError:
        raise ModelFileError(
            f"{label}: zip archive without {WEIGHTS_MEMBER} (members: "
            f"{', '.join(archive.namelist()[:6]) or 'none'}); not a Keras 3 .keras file"
        ) from None
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != ZIP_MAGIC:
        raise ModelFileError(f"{label}: the zip archive is damaged (bad local header)")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return WeightMember(
        data_offset=info.header_offset + 30 + name_len + extra_len,
        size=info.file_size,
        crc=info.CRC,
        stored=info.compress_type == zipfile.ZIP_STORED,
        local_header_offset=info.header_offset,
        flag_bits=info.flag_bits,
    )


@contextmanager
def open_weight_store(source: ModelSource) -> Iterator[tuple[h5py.File, dict[str, Any]]]:
    """Open the model's weight store read-only, with the model's config beside it.

    Yields the h5py file and a dict with ``format``, ``config``, ``keras_version`` and,
    for `.keras`, ``member`` (a :class:`WeightMember`).
    """
    fmt = detect_format(source)
    with source.open_binary() as raw:
        if fmt == "h5":
            with h5_file(raw, source.label) as h5:
                yield h5, {"format": fmt, **_h5_meta(h5, source.label)}
            return
        try:
            archive = zipfile.ZipFile(raw)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelFileError(
                f"{source.label}: not a readable .keras archive ({exc}); the file may be "
                "truncated or corrupt"
            ) from None
        with archive:
            meta = _keras_meta(archive, source.label)
            member = locate_weight_member(archive, raw, source.label)
            if member.stored:
                store: BinaryIO = _Window(raw, member.data_offset, member.size)  # type: ignore[assignment]
            else:
                store = io.BytesIO(archive.read(WEIGHTS_MEMBER))
            with h5_file(store, source.label) as h5:
                yield h5, {"format": fmt, "member": member, **meta}


@contextmanager
def h5_file(handle: BinaryIO, label: str) -> Iterator[h5py.File]:
    """An HDF5 file over a Python file object, read-only, closed before the object."""
    import h5py

    try:
        h5 = h5py.File(handle, "r")
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"{label}: the HDF5 weight store cannot be read ({exc}); the file may be "
            "truncated or corrupt"
        ) from None
    # Close the HDF5 file before the Python file object under it (DESIGN §3).
    try:
        yield h5
    finally:
        h5.close()


def _keras_meta(archive: zipfile.ZipFile, label: str) -> dict[str, Any]:
    try:
        config = json.loads(archive.read("config.json"))
    except KeyError:
        raise ModelFileError(
            f"{label}: zip archive without config.json; not a Keras 3 .keras file"
        ) from None
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        # zipfile raises RuntimeError for an encrypted member.
        raise ModelFileError(
            f"{label}: the model's config.json is broken ({exc}); the archive cannot be "
            "used, re-save the model with Keras"
        ) from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFileError(
            f"{label}: the model's config.json is broken (expected an object with "
            "'class_name' and 'config'); re-save the model with Keras"
        )
    version = None
    try:
        version = json.loads(archive.read("metadata.json")).get("keras_version")
    except (KeyError, ValueError, AttributeError, zipfile.BadZipFile, OSError, EOFError, RuntimeError):
        pass
    return {"config": config, "keras_version": version}


def _attr_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _h5_meta(h5: h5py.File, label: str) -> dict[str, Any]:
    if "model_config" not in h5.attrs:
        raise ModelFileError(
            f"{label}: HDF5 file without a model_config attribute (a weights-only file?); "
            "conv-surgeon needs a whole model saved with model.save('model.h5')"
        )
    try:
        config = json.loads(_attr_text(h5.attrs["model_config"]))
    except ValueError as exc:
        raise ModelFileError(
            f"{label}: the model config is broken ({exc}); re-save the model with Keras"
        ) from None
    version = h5.attrs.get("keras_version")
    return {"config": config, "keras_version": _attr_text(version) if version is not None else None}


def dataset_dtype(dataset: h5py.Dataset) -> str:
    if dataset.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        return "bfloat16"
    return str(dataset.dtype)


def read_dataset(dataset: h5py.Dataset) -> np.ndarray:
    """A dataset as numpy, bfloat16 records decoded through ml_dtypes."""
    import numpy as np

    value = dataset[()]
    if dataset_dtype(dataset) == "bfloat16":
        import ml_dtypes

        value = np.frombuffer(np.ascontiguousarray(value).tobytes(), dtype=ml_dtypes.bfloat16)
        value = value.reshape(dataset.shape)
    return np.asarray(value)


# --- structure ---------------------------------------------------------------------


def _is_model_config(entry: dict[str, Any]) -> bool:
    return isinstance(entry.get("config"), dict) and isinstance(
        entry["config"].get("layers"), list
    )


def _is_op(entry: dict[str, Any]) -> bool:
    return str(entry.get("module") or "").startswith("keras.src.ops")


def _layer_name(entry: dict[str, Any]) -> str:
    return str(entry.get("config", {}).get("name") or entry.get("name") or "")


def _keras_layers(
    h5: h5py.File, model_entry: dict[str, Any], prefix: str, path: tuple[str, ...]
) -> Iterator[Layer]:
    """Walk one model level of a `.keras` weight store (DESIGN §3)."""
    import h5py

    entries = model_entry["config"]["layers"]
    is_sequential = model_entry.get("class_name") == "Sequential"
    children = prefix + "layers/"
    # Each child's `vars` group, by store key, and the key each layer name maps to.
    vars_groups: dict[str, h5py.Group] = {}
    by_name: dict[str, str] = {}
    group = h5.get(children.rstrip("/"))
    if isinstance(group, h5py.Group):
        for key, child in group.items():
            vars_group = child.get("vars") if isinstance(child, h5py.Group) else None
            if not isinstance(vars_group, h5py.Group):
                continue
            vars_groups[key] = vars_group
            if "name" in vars_group.attrs:
                by_name[_attr_text(vars_group.attrs["name"])] = key
    counters: dict[str, int] = {}
    for position, entry in enumerate(entries):
        if _is_op(entry):
            continue
        if is_sequential and position == 0 and entry.get("class_name") == "InputLayer":
            continue
        snake = to_snake_case(str(entry.get("class_name", "")))
        count = counters.get(snake, 0)
        counters[snake] = count + 1
        derived = snake if count == 0 else f"{snake}_{count}"
        name = _layer_name(entry)
        key = by_name.get(name, derived)
        layer_prefix = f"{children}{key}/"
        if _is_model_config(entry):
            yield from _keras_layers(h5, entry, layer_prefix, path + (name,))
            continue
        vars_group = vars_groups.get(key)
        if vars_group is None or len(vars_group) == 0:
            continue
        variables = _vars_of(vars_group, layer_prefix + "vars/", entry)
        yield Layer(name, "/".join(path + (name,)), str(entry.get("class_name")),
                    dict(entry.get("config", {})), variables)


def _vars_of(vars_group: h5py.Group, prefix: str, entry: dict[str, Any]) -> tuple[Variable, ...]:
    """The datasets of one `vars` group, read with h5py's low-level API.

    High-level lookups dominate the time of `inspect` on large models; the
    low-level calls cost a third as much.
    """
    import h5py

    found = []
    for raw_name in vars_group.id:
        name = raw_name.decode()
        if not name.isdigit():
            continue
        dsid = h5py.h5d.open(vars_group.id, raw_name)
        is_bf16 = h5py.h5a.exists(dsid, b"dtype") and vars_group[name].attrs["dtype"] in (
            "bfloat16", b"bfloat16")
        found.append((int(name), tuple(int(d) for d in dsid.shape),
                      "bfloat16" if is_bf16 else str(dsid.dtype)))
    found.sort()
    names = _variable_names(entry, len(found))
    return tuple(
        Variable(name=names[i], dataset=f"{prefix}{k}", shape=shape, dtype=dtype, index=i)
        for i, (k, shape, dtype) in enumerate(found)
    )


def _variable_names(entry: dict[str, Any], count: int) -> list[str]:
    known = layer_variables(str(entry.get("class_name")), entry.get("config", {}))
    if known is not None and len(known) == count:
        return [name for name, _ in known]
    return [str(i) for i in range(count)]


def _h5_attr_list(group: h5py.Group, name: str) -> list[str]:
    """A list attribute that Keras may have split into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [_attr_text(v) for v in values]


def _flatten_nested(
    entry: dict[str, Any], path: tuple[str, ...], trainable: bool
) -> Iterator[tuple[dict[str, Any], tuple[str, ...], bool]]:
    """Every leaf layer of a nested model, with whether its variables are trainable."""
    trainable = trainable and bool(entry.get("config", {}).get("trainable", True))
    for child in entry["config"]["layers"]:
        if _is_op(child):
            continue
        child_path = path + (_layer_name(child),)
        if _is_model_config(child):
            yield from _flatten_nested(child, child_path, trainable)
        else:
            yield child, child_path, trainable and bool(
                child.get("config", {}).get("trainable", True)
            )


def _h5_layers(h5: h5py.File, config: dict[str, Any], label: str) -> Iterator[Layer]:
    import h5py

    root = h5["model_weights"] if "model_weights" in h5 else h5
    for entry in config.get("config", {}).get("layers", []):
        if _is_op(entry):
            continue
        name = _layer_name(entry)
        group = root.get(name)
        if not isinstance(group, h5py.Group):
            continue
        weight_names = _h5_attr_list(group, "weight_names")
        if not weight_names:
            continue
        if _is_model_config(entry):
            yield from _h5_nested_layers(group, entry, weight_names, label)
            continue
        cls = conv_class(str(entry.get("class_name")))
        yield Layer(name, name, str(entry.get("class_name")), dict(entry.get("config", {})),
                    tuple(_h5_variable(group, wn, i, cls) for i, wn in enumerate(weight_names)))


def _h5_variable(group: h5py.Group, weight_name: str, index: int, cls: ConvClass | None) -> Variable:
    dataset = group[weight_name]
    return Variable(
        name=canonical_variable_name(weight_name),
        dataset=dataset.name.lstrip("/"),
        shape=tuple(int(d) for d in dataset.shape),
        dtype=dataset_dtype(dataset),
        index=index,
    )


def _h5_nested_layers(
    group: h5py.Group, entry: dict[str, Any], weight_names: list[str], label: str
) -> Iterator[Layer]:
    """Place a nested model's flattened weights on its layers.

    Keras stores them as ``trainable_weights + non_trainable_weights`` of the nested
    model (a frozen sub-model has only the latter), so positions follow from the
    config; dataset names cannot be trusted (they may hold the root model's name).
    """
    leaves = list(_flatten_nested(entry, (_layer_name(entry),), True))
    slots: list[tuple[int, str, bool]] = []  # (leaf index, variable name, trainable)
    for leaf_index, (leaf, _, trainable) in enumerate(leaves):
        known = layer_variables(str(leaf.get("class_name")), leaf.get("config", {}))
        if known is None:
            raise ModelFileError(
                f"{label}: nested model '{_layer_name(entry)}' holds a "
                f"{leaf.get('class_name')} layer whose weight layout conv-surgeon does not "
                "know, so its convolutions cannot be placed in this .h5; save the model "
                "as .keras to edit it"
            )
        slots.extend((leaf_index, name, trainable and t) for name, t in known)
    ordered = [s for s in slots if s[2]] + [s for s in slots if not s[2]]
    if len(ordered) != len(weight_names):
        raise ModelFileError(
            f"{label}: nested model '{_layer_name(entry)}' stores {len(weight_names)} "
            f"weights but its config describes {len(ordered)}; save the model as .keras "
            "to edit it"
        )
    per_leaf: dict[int, list[tuple[str, str]]] = {}
    for (leaf_index, var_name, _), weight_name in zip(ordered, weight_names):
        per_leaf.setdefault(leaf_index, []).append((var_name, weight_name))
    for leaf_index, (leaf, path, _) in enumerate(leaves):
        pairs = per_leaf.get(leaf_index)
        if not pairs:
            continue
        # Restore Keras's own per-layer order (the flattening moved non-trainables).
        known_order = [n for n, _ in layer_variables(str(leaf.get("class_name")), leaf.get("config", {})) or []]
        pairs.sort(key=lambda p: known_order.index(p[0]))
        cls = conv_class(str(leaf.get("class_name")))
        variables = tuple(
            _h5_variable(group, weight_name, i, cls) for i, (_, weight_name) in enumerate(pairs)
        )
        yield Layer(path[-1], "/".join(path), str(leaf.get("class_name")),
                    dict(leaf.get("config", {})), variables)


@contextmanager
def damaged_store_is_an_error(label: str) -> Iterator[None]:
    """h5py's errors on a damaged file (bad heap signature, truncated buffers, missing
    objects) are bad input, not bugs: one clear line, exit 1."""
    try:
        yield
    except ModelFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(
            f"{label}: the HDF5 weight store is damaged ({' '.join(str(exc).split())}); "
            "restore the file from a good copy"
        ) from None


def _parse_structure(source: ModelSource) -> ModelStructure:
    with damaged_store_is_an_error(source.label), open_weight_store(source) as (h5, meta):
        config = meta["config"]
        if meta["format"] == "keras":
            if not _is_model_config(config):
                raise ModelFileError(
                    f"{source.label}: the model is a {config.get('class_name')} whose "
                    "config lists no layers (a subclassed model?); conv-surgeon reads "
                    "Sequential and Functional models"
                )
            layers = tuple(_keras_layers(h5, config, "", ()))
        else:
            layers = tuple(_h5_layers(h5, config, source.label))
        return ModelStructure(
            format=meta["format"],
            keras_version=meta["keras_version"],
            model_name=str(config.get("config", {}).get("name", "")),
            model_class=str(config.get("class_name", "")),
            layers=layers,
        )


def read_structure(source: ModelSource, timeout: float = PARSE_TIMEOUT_S) -> ModelStructure:
    """The model's layers and variables, read from structure alone (no weight bytes).

    If :func:`prefetch_structures` already started reading this file, its worker's
    result is used.
    """
    pending = _claim_prefetched(source)
    if pending is not None:
        return pending.result()
    return run_bounded(lambda: _parse_structure(source), timeout, source.label)


def run_bounded(work: Callable[[], T], timeout: float, label: str) -> T:
    """Run ``work`` in a forked worker, killed after ``timeout`` seconds.

    ``work``'s result and any :class:`ConvSurgeonError` it raises come back pickled.

    HDF5 can loop forever on a corrupt file inside C code that no Python signal can
    interrupt; a separate process is the only bound that always works.
    """
    if not hasattr(os, "fork"):
        return work()
    return _Worker(work, timeout, label).result()


class _Worker:
    """``work`` running in a forked child; :meth:`result` waits for it, up to a deadline."""

    def __init__(self, work: Callable[[], Any], timeout: float, label: str) -> None:
        self.label, self.timeout = label, timeout
        self.deadline = time.monotonic() + timeout
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_end)
            code = 0
            try:
                try:
                    payload = pickle.dumps(("ok", work()))
                except ConvSurgeonError as exc:
                    payload = pickle.dumps(("error", exc))
                except BaseException as exc:  # noqa: BLE001 - reported by the parent as a bug
                    payload = pickle.dumps(("bug", f"{type(exc).__name__}: {exc}"))
                with os.fdopen(write_end, "wb") as out:
                    out.write(payload)
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        os.close(write_end)
        self.pid, self.read_end = pid, read_end

    def result(self) -> Any:
        chunks: list[bytes] = []
        try:
            while True:
                remaining = self.deadline - time.monotonic()
                ready, _, _ = select.select([self.read_end], [], [], max(0.0, remaining))
                if not ready:
                    self.kill()
                    raise ModelFileError(
                        f"{self.label}: reading it did not finish within {self.timeout:.0f} s; "
                        "its HDF5 data is probably corrupt"
                    )
                chunk = os.read(self.read_end, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.read_end)
        os.waitpid(self.pid, 0)
        if not chunks:
            raise ModelFileError(f"{self.label}: the reader crashed on this file; it is probably corrupt")
        kind, value = pickle.loads(b"".join(chunks))
        if kind == "ok":
            return value
        if kind == "error":
            raise value
        raise RuntimeError(f"reading {self.label} failed inside the worker: {value}")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


_prefetched: dict[tuple[str, int, int], _Worker] = {}


def _file_key(path: Path) -> tuple[str, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (os.path.realpath(path), info.st_mtime_ns, info.st_size)


def prefetch_structures(paths: list[str]) -> None:
    """Start reading these model files now, each in its own worker.

    Called before the command line is even parsed, so that parsing the file (and
    importing h5py and numpy for it) runs beside the start-up of everything else; a
    prefetched file nobody reads is abandoned at exit.
    """
    if not hasattr(os, "fork"):
        return
    for path in paths:
        source = ModelSource.from_path(path)
        key = _file_key(Path(path))
        if key is not None and key not in _prefetched:
            _prefetched[key] = _Worker(lambda s=source: _parse_structure(s), PARSE_TIMEOUT_S, path)
    if _prefetched:
        atexit.register(abandon_prefetched)


def _claim_prefetched(source: ModelSource) -> _Worker | None:
    if source.path is None or not _prefetched:
        return None
    key = _file_key(source.path)
    worker = _prefetched.pop(key, None) if key is not None else None
    if worker is not None:
        worker.label = source.label
    return worker


def abandon_prefetched() -> None:
    """Kill the workers of prefetched files that no command read."""
    while _prefetched:
        _, worker = _prefetched.popitem()
        worker.kill()
        os.close(worker.read_end)


def read_variables(source: ModelSource, variables: list[Variable]) -> dict[str, np.ndarray]:
    """The values of ``variables``, keyed by dataset path."""
    with damaged_store_is_an_error(source.label), open_weight_store(source) as (h5, _):
        return {v.dataset: read_dataset(h5[v.dataset]) for v in variables}
