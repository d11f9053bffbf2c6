"""Every kind of Keras save, found and opened: which files hold its weight store, and
the config and version beside them. No TensorFlow, and no knowledge of layers.

| kind      | what it is                                   | weight store              | config            |
|-----------|----------------------------------------------|---------------------------|-------------------|
| `keras`   | a `.keras` zip archive                        | its `model.weights.h5`    | `config.json`     |
| `h5`      | a legacy whole-model `.h5`                    | `model_weights/...`       | `model_config`    |
| `weights` | `save_weights("x.weights.h5")`, or a Keras 2 weights-only `.h5` | the file | `--config` only |
| `sharded` | `save_weights("x.weights.json", max_shard_size=...)` | the map's shards  | `--config` only   |
| `dir`     | `model.save("dir", zipped=False)`            | `model.weights.h5` (or a sharded map) | `config.json` |
| `preset`  | a keras-hub preset directory (`save_to_preset`) | as `dir`               | `config.json`     |
"""

from __future__ import annotations

import io
import math
import mmap
import os
import stat
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from ..errors import ModelFileError
from .archive import ZIP_FAULTS, ZIP_MAGIC, Member, Window, locate_member
from .documents import DocumentError, described, parse_json
from .fileio import read_input, read_stream
from .hdf5 import HDF5_MAGIC, Visitor, attr_text, h5_file, walk_h5py
from .hdf5_tree import Buffer, Dataset, HDF5Tree, UnsupportedHDF5

if TYPE_CHECKING:
    import h5py
    import numpy as np

ModelFormat = Literal["keras", "h5", "weights", "sharded", "dir", "preset"]
# Kinds whose store is several files in a folder: written by staging a folder.
FOLDER_FORMATS = ("sharded", "dir", "preset")

WEIGHTS_MEMBER = "model.weights.h5"
WEIGHTS_MAP = "model.weights.json"
CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"


@dataclass(frozen=True)
class StoreFile:
    """One HDF5 file of a weight store."""

    label: str  # how messages name it
    path: Path | None  # the file on disk holding it (the archive, for a member); None: stdin bytes
    member: Member | None = None  # a `.keras` archive's weight store member

@dataclass(frozen=True)
class ModelFile:
    """A model given as a path (file or folder), or as the bytes read from stdin.

    ``config`` names another save of the same model whose config gives a weights-only
    store its classes (``--config``).
    """

    label: str
    path: Path | None = None
    data: bytes | None = None
    config: Path | None = None

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
    ) -> ModelFile:
        config_path = Path(config) if config is not None else None
        if _is_pipe(path):  # `inspect <(curl ...)`: read once, as stdin is
            try:
                data = read_input(path, os.fspath(path))
            except OSError as exc:
                raise ModelFileError(f"{os.fspath(path)}: cannot read it ({exc.strerror})") from None
            return cls._received(data, os.fspath(path), config_path)
        if _is_device(path):
            raise ModelFileError(f"{os.fspath(path)}: is a device, not a model file; give the .keras or .h5 file")
        return cls(label=os.fspath(path), path=Path(path), config=config_path)

    @classmethod
    def from_stream(
        cls, stream: BinaryIO, label: str = "<stdin>", config: str | os.PathLike[str] | None = None
    ) -> ModelFile:
        data = read_stream(stream, label)
        return cls._received(data, label, Path(config) if config is not None else None)

    @classmethod
    def _received(cls, data: bytes, label: str, config: Path | None) -> ModelFile:
        if not data:
            raise ModelFileError(
                f"{label}: no model received (0 bytes); expected a .keras or .h5 file piped "
                "in, e.g. `< model.keras`"
            )
        return cls(label=label, data=data, config=config)

    def size(self) -> int:
        """How many bytes the model takes: the file, the files in its folder, or a shard
        map's shards; 0 where that cannot be told. For budgets."""
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        try:
            if self.path.is_dir():
                return sum(entry.stat().st_size for entry in self.path.iterdir() if entry.is_file())
            if detect_format(self) == "sharded":
                return sum((self.path.parent / name).stat().st_size for name in shard_names(self.path, self.label))
            return self.path.stat().st_size
        except (OSError, ModelFileError):
            return 0

    @contextmanager
    def open_binary(self) -> Iterator[BinaryIO]:
        if self.data is not None:
            yield io.BytesIO(self.data)
            return
        assert self.path is not None
        with open(self.path, "rb") as handle:
            yield handle

def _is_pipe(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _is_device(path: str | os.PathLike[str]) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode)


def _check_path(path: Path) -> None:
    try:
        path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read it ({exc.strerror})") from None


def sniff_format(head: bytes, label: str) -> Literal["keras", "h5", "sharded"]:
    """What a file is, told by its first bytes (never by its name)."""
    if head.startswith(ZIP_MAGIC):
        return "keras"
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head.lstrip()[:1] == b"{":
        return "sharded"
    raise ModelFileError(
        f"{label}: not a Keras model (expected a .keras zip archive, an HDF5 .h5 or "
        f".weights.h5 file, a .weights.json shard map or a saved model folder, received "
        f"bytes starting {head[:8]!r}); check the path"
    )


def detect_format(source: ModelFile) -> ModelFormat:
    """The kind of save, from the folder's files or the file's first bytes.

    An HDF5 file says "h5" here; whether it is a whole model or weights only is told
    by its attributes once it is open (:func:`open_store`).
    """
    if source.path is not None:
        _check_path(source.path)
        if source.path.is_dir():
            return _folder_kind(source.path)
    with source.open_binary() as handle:
        head = handle.read(8)
    kind = sniff_format(head, source.label)
    if kind == "sharded" and source.path is None:
        raise ModelFileError(
            f"{source.label}: a sharded weights map cannot come from stdin (its shards are "
            "files beside it); pass the .weights.json path"
        )
    return kind


def _folder_kind(path: Path) -> ModelFormat:
    if (path / "saved_model.pb").exists():
        raise ModelFileError(
            f"{path}: this is a TensorFlow SavedModel directory, which Keras 3 cannot load; "
            "conv-surgeon works on Keras .keras and .h5 files and Keras save folders. If tf.keras "
            "(Keras 2) saved it, convert it with tf-keras (pip install tf-keras): python -c "
            f"\"import tf_keras; tf_keras.models.load_model('{path}').save('model.h5')\""
        )
    if not (path / CONFIG_MEMBER).is_file():
        raise ModelFileError(
            f"{path}: is a directory without {CONFIG_MEMBER}; expected a .keras or .h5 model "
            "file, a `model.save(dir, zipped=False)` folder or a keras-hub preset folder"
        )
    metadata = _json_file(path / METADATA_MEMBER, str(path)) if (path / METADATA_MEMBER).is_file() else {}
    kind: ModelFormat = "preset" if isinstance(metadata, dict) and "keras_hub_version" in metadata else "dir"
    if not (path / WEIGHTS_MEMBER).is_file() and not (path / WEIGHTS_MAP).is_file():
        what = "keras-hub preset" if kind == "preset" else "saved model folder"
        raise ModelFileError(
            f"{path}: {what} without weights (no {WEIGHTS_MEMBER} or {WEIGHTS_MAP}); save it "
            "again with its weights"
        )
    return kind


def _json_file(path: Path, label: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{label}: cannot read {path.name} ({exc.strerror})") from None
    try:
        return parse_json(data)
    except DocumentError as exc:
        raise ModelFileError(f"{label}: {path.name} {exc}; re-save the model with Keras") from None
    except ValueError as exc:
        raise ModelFileError(f"{label}: {path.name} is not valid JSON ({exc}); re-save the model with Keras") from None


def shard_names(map_path: Path, label: str) -> list[str]:
    """The shard files a `.weights.json` map lists, in order, each checked to be a file
    beside the map."""
    document = _json_file(map_path, label)
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelFileError(
            f"{label}: not a Keras shard map (expected a JSON object with a 'weight_map' "
            "object, as save_weights('x.weights.json', max_shard_size=...) writes)"
        )
    names: list[str] = []
    for key, value in weight_map.items():
        for name in value if isinstance(value, list) else [value]:
            if not isinstance(name, str) or not name:
                raise ModelFileError(f"{label}: weight_map['{key}'] is {name!r}, expected a shard file name")
            if name in (".", "..") or Path(name).name != name or "\\" in name:
                raise ModelFileError(
                    f"{label}: weight_map['{key}'] names {name!r}, outside the map's folder; "
                    "shards must lie beside the map, refusing to read it"
                )
            if name not in names:
                names.append(name)
    missing = [n for n in names if not (map_path.parent / n).is_file()]
    if missing:
        raise ModelFileError(
            f"{label}: shard {missing[0]} is missing (the map lists {len(names)} shards, "
            f"{len(missing)} not found in {map_path.parent}); copy every shard beside the map"
        )
    return names


@dataclass
class OpenStore:
    """An open weight store: its HDF5 files, and the config and version beside them."""

    format: ModelFormat
    files: tuple[StoreFile, ...]
    h5s: tuple[h5py.File, ...]
    config: dict[str, Any] | None
    keras_version: str | None
    legacy: bool = False

    def dataset(self, file: int, path: str) -> h5py.Dataset:
        return self.h5s[file][path]

    def walk(self, file: int, visitor: Visitor) -> None:
        """Call ``visitor`` for every group and dataset of one file of the store."""
        walk_h5py(self.h5s[file], visitor)


@dataclass
class OutlinedStore:
    """A Keras 3 weight store read by the pure-Python reader (:mod:`.hdf5_tree`): the
    files, config and version :class:`OpenStore` has, and each file's tree, no h5py."""

    format: ModelFormat
    files: tuple[StoreFile, ...]
    trees: tuple[HDF5Tree, ...]
    config: dict[str, Any] | None
    keras_version: str | None

    def walk(self, file: int, visitor: Visitor) -> None:
        for path, entry in self.trees[file].walk():
            visitor(path, entry)

    def value(self, file: int, path: str) -> np.ndarray:
        """A dataset's value, equal to what :func:`~.hdf5.read_dataset` reads through
        h5py (dtype, shape, bytes; a writable copy), without h5py; a dataset it cannot
        read so (never allocated, a void type that is not bfloat16, a boolean byte
        outside 0 and 1) raises :class:`UnsupportedHDF5`."""
        import numpy as np

        found = self._located(file, path)
        if found.dtype == "bfloat16":
            import ml_dtypes

            dtype = native = np.dtype(ml_dtypes.bfloat16)
        else:
            native = np.dtype(found.dtype)
            dtype = native.newbyteorder("<")  # as stored; h5py hands out the native order
        count = math.prod(found.shape)
        value: np.ndarray = np.frombuffer(found.buffer, dtype, count, found.start).reshape(found.shape).astype(native)
        return value

    def raw(self, file: int, path: str) -> RawValue:
        """A dataset's bytes as stored, without numpy: :meth:`value`'s, checked alike."""
        found = self._located(file, path)
        return RawValue(bytes(found.buffer[found.start:found.start + found.size]), found.dtype, found.shape)

    def _located(self, file: int, path: str) -> _Located:
        dataset = self.trees[file].find(path)
        if not isinstance(dataset, Dataset):
            raise UnsupportedHDF5(f"{path} is a group, not a dataset: h5py words the error")
        shape, name = dataset.shape, dataset.dtype
        if name.startswith("void"):
            raise UnsupportedHDF5(f"{path}: opaque records that are not bfloat16 are read through h5py")
        buffer, start, size = dataset.data_span()
        count = math.prod(shape)
        if size != count * _ITEM_SIZES[name]:
            raise UnsupportedHDF5(f"{path}: {size} bytes for {count} values of {name}")
        if name == "bool" and buffer[start:start + size].strip(b"\0\1"):
            raise UnsupportedHDF5(f"{path}: boolean bytes other than 0 and 1")
        return _Located(name, shape, buffer, start, size)


@dataclass(frozen=True)
class RawValue:
    """A dataset's value as bytes: little-endian, C order, in numpy's dtype name for it
    (``float32``, ``int64``, ``bool``, ``bfloat16``), with its shape."""

    data: bytes
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, value: np.ndarray) -> RawValue:
        """The bytes of a value read through h5py (:func:`~.hdf5.read_dataset`)."""
        name = str(value.dtype)
        if name != "bfloat16" and value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("<"))
        return cls(value.tobytes(), name, tuple(value.shape))


@dataclass(frozen=True)
class _Located:
    dtype: str
    shape: tuple[int, ...]
    buffer: Buffer
    start: int
    size: int


# Bytes per value of every dtype name the pure reader gives (hdf5_tree._numeric_dtype).
_ITEM_SIZES = {"bool": 1, "bfloat16": 2, "float16": 2, "float32": 4, "float64": 8,
               **{f"{sign}int{bits}": bits // 8 for sign in ("", "u") for bits in (8, 16, 32, 64)}}


def _store_files(folder: Path, label: str) -> list[StoreFile]:
    """The files of a folder's weight store: ``model.weights.h5`` or a shard map's shards."""
    if (folder / WEIGHTS_MEMBER).is_file():
        return [StoreFile(str(folder / WEIGHTS_MEMBER), folder / WEIGHTS_MEMBER)]
    return _shard_files(folder / WEIGHTS_MAP, label)


def _shard_files(map_path: Path, label: str) -> list[StoreFile]:
    """The shards a `.weights.json` map lists, as the files of its store."""
    return [StoreFile(str(map_path.parent / n), map_path.parent / n) for n in shard_names(map_path, label)]


def _folder_store(source: ModelFile, kind: ModelFormat) -> tuple[list[StoreFile], dict[str, Any] | None, str | None]:
    """(store files, config, Keras version) of a saved folder, preset or shard map."""
    assert source.path is not None
    if kind == "sharded":
        return _shard_files(source.path, source.label), None, None
    config = _json_file(source.path / CONFIG_MEMBER, source.label)
    metadata = (_json_file(source.path / METADATA_MEMBER, source.label)
                if (source.path / METADATA_MEMBER).is_file() else {})
    files = _store_files(source.path, source.label)
    return files, _checked_config(config, source.label), _version_of(metadata)


def _archive_store(stack: ExitStack, raw: BinaryIO, label: str) -> tuple[zipfile.ZipFile, dict[str, Any], str | None, Member]:
    """(archive, config, Keras version, weight store member) of a `.keras` archive."""
    try:
        archive = stack.enter_context(zipfile.ZipFile(raw))
    except ZIP_FAULTS as exc:
        raise ModelFileError(
            f"{label}: not a readable .keras archive ({exc}); the file may be "
            "truncated or corrupt"
        ) from None
    config, version = _keras_meta(archive, label)
    return archive, config, version, locate_member(archive, raw, WEIGHTS_MEMBER, label)


def _store_file(stack: ExitStack, store_file: StoreFile) -> BinaryIO:
    assert store_file.path is not None
    try:
        return stack.enter_context(open(store_file.path, "rb"))
    except OSError as exc:
        raise ModelFileError(f"{store_file.label}: cannot read it ({exc.strerror})") from None


@contextmanager
def open_store(source: ModelFile) -> Iterator[OpenStore]:
    """Open the model's weight store read-only, with its config (if it has one)."""
    kind = detect_format(source)
    with ExitStack() as stack:
        if kind in FOLDER_FORMATS:
            files, config, version = _folder_store(source, kind)
            yield _opened(stack, kind, files, config, version)
            return
        raw = stack.enter_context(source.open_binary())
        if kind == "h5":
            h5 = stack.enter_context(h5_file(raw, source.label))
            legacy, config, version = _h5_meta(h5, source.label)
            fmt: ModelFormat = "h5" if config is not None else "weights"
            yield OpenStore(fmt, (StoreFile(source.label, source.path),), (h5,), config, version, legacy)
            return
        archive, config, version, member = _archive_store(stack, raw, source.label)
        if member.stored:
            store: BinaryIO | Window = Window(raw, member.data_offset, member.size)
        else:
            store = io.BytesIO(archive.read(WEIGHTS_MEMBER))
        h5 = stack.enter_context(h5_file(store, source.label))
        yield OpenStore("keras", (StoreFile(source.label, source.path, member),), (h5,), config, version)


def _opened(stack: ExitStack, kind: ModelFormat, files: list[StoreFile],
            config: dict[str, Any] | None, version: str | None) -> OpenStore:
    h5s = []
    for store_file in files:
        h5 = stack.enter_context(h5_file(_store_file(stack, store_file), store_file.label))
        if "model_config" in h5.attrs or "layer_names" in h5.attrs:
            raise ModelFileError(
                f"{store_file.label}: a legacy .h5 file where a Keras 3 weight store was "
                "expected; inspect it on its own"
            )
        h5s.append(h5)
    return OpenStore(kind, tuple(files), tuple(h5s), config, version)


@contextmanager
def outline_store(source: ModelFile) -> Iterator[OutlinedStore]:
    """:func:`open_store` for a structure read, through the pure-Python HDF5 reader.

    The same files, configs and checks in the same order, so every error that is not
    about HDF5 is the same one; where the HDF5 side would need h5py (a legacy `.h5`, a
    compressed archive member, anything :mod:`.hdf5_tree` does not read exactly) it
    raises :class:`~.hdf5_tree.UnsupportedHDF5`, and the caller opens the store with
    :func:`open_store` instead. What neither may read (:mod:`.untrusted`) is refused here
    already where that reader tells it.
    """
    kind = detect_format(source)
    with ExitStack() as stack:
        if kind in FOLDER_FORMATS:
            files, config, version = _folder_store(source, kind)
            trees = []
            for store_file in files:
                tree = HDF5Tree(_mapped(stack, _store_file(stack, store_file)), label=store_file.label)
                if tree.root.has_attribute("model_config") or tree.root.has_attribute("layer_names"):
                    raise UnsupportedHDF5("a legacy .h5 in a folder: h5py words the error")
                trees.append(tree)
            yield OutlinedStore(kind, tuple(files), tuple(trees), config, version)
            return
        raw = stack.enter_context(source.open_binary())
        buffer = source.data if source.data is not None else _mapped(stack, raw)
        if kind == "h5":
            tree = HDF5Tree(buffer, label=source.label)
            root = tree.root
            if root.has_attribute("model_config") or root.has_attribute("layer_names"):
                raise UnsupportedHDF5("the legacy .h5 layout is read through h5py")
            version = root.scalar_text_attribute("keras_version")
            if not (root.has_member("layers") or root.has_member("vars")):
                raise UnsupportedHDF5("not a Keras weight store: h5py words the error")
            yield OutlinedStore("weights", (StoreFile(source.label, source.path),), (tree,), None, version)
            return
        _, config, version, member = _archive_store(stack, raw, source.label)
        if not member.stored:
            raise UnsupportedHDF5("a compressed weight store is read through h5py")
        tree = HDF5Tree(buffer, member.data_offset, member.size, source.label)
        yield OutlinedStore("keras", (StoreFile(source.label, source.path, member),), (tree,), config, version)


def _mapped(stack: ExitStack, handle: BinaryIO) -> mmap.mmap:
    """A file mapped into memory, read-only, unmapped when ``stack`` closes."""
    try:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:  # an empty file, a pipe
        raise UnsupportedHDF5(f"cannot map the file ({exc})") from None
    stack.callback(mapped.close)
    return mapped


def _checked_config(config: Any, label: str, name: str = CONFIG_MEMBER) -> dict[str, Any]:
    """The model config's top: an object with a 'class_name' string and a 'config' object.
    (What lies below, the layers, is checked where it is read: :mod:`..model.structure`.)"""
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        received = described(config.get("class_name")) + " as its class_name" if isinstance(config, dict) \
            else described(config)
        raise ModelFileError(
            f"{label}: the model's {name} is broken (expected an object with a 'class_name' "
            f"string and a 'config' object, received {received}); re-save the model with Keras"
        )
    if "config" in config and not isinstance(config["config"], dict):
        raise ModelFileError(
            f"{label}: the model's {name} is broken (expected a 'config' object, received "
            f"{described(config['config'])}); re-save the model with Keras"
        )
    return config


def _keras_meta(archive: zipfile.ZipFile, label: str) -> tuple[dict[str, Any], str | None]:
    try:
        data = archive.read(CONFIG_MEMBER)
    except KeyError:
        raise ModelFileError(
            f"{label}: zip archive without {CONFIG_MEMBER}; not a Keras 3 .keras file"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        # zipfile raises RuntimeError for an encrypted member.
        raise _broken_config(label, exc) from None
    try:
        config = parse_json(data)
    except DocumentError as exc:
        raise ModelFileError(f"{label}: the model's {CONFIG_MEMBER} {exc}; re-save the model with Keras") from None
    except ValueError as exc:
        raise _broken_config(label, exc) from None
    version = None
    try:
        version = _version_of(parse_json(archive.read(METADATA_MEMBER)))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError, EOFError, RuntimeError):
        pass  # the version is shown when known; metadata.json is for Keras, not for reading weights
    return _checked_config(config, label), version


def _broken_config(label: str, exc: Exception) -> ModelFileError:
    return ModelFileError(
        f"{label}: the model's {CONFIG_MEMBER} is broken ({exc}); the archive cannot be "
        "used, re-save the model with Keras"
    )


def _version_of(metadata: Any) -> str | None:
    """The Keras version a ``metadata.json`` names, when it names one as a string."""
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) else None


def _h5_meta(h5: h5py.File, label: str) -> tuple[bool, dict[str, Any] | None, str | None]:
    """(legacy layout, model config or None for weights only, Keras version)."""
    version = h5.attrs.get("keras_version")
    version_text = attr_text(version) if version is not None else None
    if "model_config" not in h5.attrs:
        if "layer_names" in h5.attrs:
            return True, None, version_text  # Keras 2 save_weights
        if "layers" in h5 or "vars" in h5:
            return False, None, version_text  # Keras 3 save_weights
        raise ModelFileError(
            f"{label}: an HDF5 file that is not a Keras save (no model_config, no layer_names, "
            "no layers group); expected a model .h5, a .weights.h5 or a .keras file"
        )
    try:
        config = parse_json(attr_text(h5.attrs["model_config"]))
    except DocumentError as exc:
        raise ModelFileError(f"{label}: the model config (model_config) {exc}; re-save the model with Keras") from None
    except ValueError as exc:
        raise ModelFileError(
            f"{label}: the model config is broken ({exc}); re-save the model with Keras"
        ) from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{label}: the model config is not a JSON object; re-save the model with Keras")
    return True, _checked_config(_modern_config(config), label, "model_config"), version_text


def _modern_config(config: dict[str, Any]) -> dict[str, Any]:
    """Keras <= 2.1 wrote a Sequential's config as a plain list of layer configs."""
    if isinstance(config.get("config"), list):
        return {**config, "config": {"name": "sequential", "layers": config["config"]}}
    return config
