"""The provenance record: what conv-surgeon did to a model, kept inside the model file.

Every write appends one record to the file's history:

- ``.keras``: ``metadata.json`` gains a key ``conv_surgeon`` holding ``{"history": [...]}``;
  every key Keras wrote there (``keras_version``, ``date_saved``) is kept. Keras never
  reads ``metadata.json`` when loading, so the addition cannot disturb it.
- legacy ``.h5``: a root attribute ``conv_surgeon_history`` holding the list as a JSON
  string (Keras reads only the attributes it knows).

A record, as :func:`make_record` builds it::

    {
      "tool": "conv-surgeon",
      "version": "0.1.0",
      "time": "2026-11-29T15:30:00Z",           # UTC, ISO 8601, whole seconds
      "command": ["conv-surgeon", "set", ...],  # argv as typed
      "edits": [
        {"layer": "conv1", "variable": "kernel", "layout": "keras",
         "source": {"file": "k.npy", "sha256": "9f86d0..."}},
        {"layer": "conv1", "variable": "bias", "layout": "keras",
         "source": {"init": "zeros", "seed": None}},
        {"layer": "block/conv2", "variable": "kernel", "layout": "torch",
         "source": {"from": "donor.keras:conv2", "sha256": "..."}},
      ],
    }

The history is read back leniently: anything in the file that is not a list of records
shaped as :func:`make_record` makes them is ignored, so a hand-edited or damaged record
never stops a model from being inspected or edited (the next write stores only the
records that were readable). A `metadata.json` that cannot be parsed at all (not JSON,
nested too deep) reads as no history too, but a write refuses to replace it: it would
lose what it could not read.

No TensorFlow here.
"""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from ..errors import ModelFileError
from .archive import ZIP_FAULTS
from .documents import DocumentError, parse_json
from .hdf5 import h5_file
from .model_file import METADATA_MEMBER, ModelFile, detect_format
from .worker import PARSE_TIMEOUT_S, run_bounded

TOOL_NAME = "conv-surgeon"
METADATA_KEY = "conv_surgeon"  # in metadata.json: {"conv_surgeon": {"history": [...]}}
HISTORY_ATTRIBUTE = "conv_surgeon_history"  # root attribute of a legacy .h5


class FileSource(TypedDict):
    """Values read from a file (``.npy``, ``.npz:KEY``, ``.h5:PATH``, ``-`` for stdin)."""

    file: str
    sha256: str | None  # of the file's bytes (of stdin's bytes for "-"); None: an array in memory


class InitSource(TypedDict):
    """Values drawn from a Keras initializer."""

    init: str  # the spec as given: "he_normal", "constant:value=0.1"
    seed: int | None  # None for initializers that take no seed (zeros, ones, constant)


DonorSource = TypedDict("DonorSource", {"from": str, "sha256": str})
"""Values copied from another model: ``{"from": "donor.keras:layer", "sha256": ...}``."""

FoldSource = TypedDict("FoldSource", {"fold": str})
"""Values folded from a BatchNormalization: ``{"fold": "conv1_bn"}`` (its layer path)."""

PruneSource = TypedDict("PruneSource", {"prune": dict[str, list[int]]})
"""Values sliced by ``prune``: ``{"prune": {"-1": [3, 7]}}``, the indices removed per axis."""

class EqualizeSource(TypedDict, total=False):
    """Values scaled by ``equalize``: ``{"equalize": ["conv1", "conv2"]}`` (the layers
    equalized together), with ``"fold"`` the BatchNormalization folded in first and
    ``"absorb": true`` when a bias took part in high-bias absorption."""

    equalize: list[str]
    fold: str
    absorb: bool


EditSource = FileSource | InitSource | DonorSource | FoldSource | PruneSource | EqualizeSource


class EditRecord(TypedDict):
    """One variable written, and where its values came from."""

    layer: str  # the layer's path (``outer/inner/conv1``)
    variable: str  # the variable's name as stored (``kernel``, ``depthwise_kernel``)
    layout: Literal["keras", "torch"]  # the layout the values were given in
    source: EditSource


def make_record(
    command: list[str], edits: list[EditRecord], version: str, *, now: datetime | None = None,
    imports: list[str] | None = None,
) -> dict[str, Any]:
    """One history record for a write; raises ValueError if it is not plain JSON.

    >>> make_record(["conv-surgeon", "set", "m.keras", "--layer", "conv1",
    ...              "--kernel-init", "zeros", "-o", "out.keras"],
    ...             [{"layer": "conv1", "variable": "kernel", "layout": "keras",
    ...               "source": {"init": "zeros", "seed": None}}], "0.1.0")["tool"]
    'conv-surgeon'
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    record: dict[str, Any] = {
        "tool": TOOL_NAME,
        "version": version,
        "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": [str(arg) for arg in command],
        "edits": [dict(edit) for edit in edits],
    }
    if imports:
        record["imports"] = list(imports)  # modules the smoke test needed to load the model
    encode_history([record])
    return record


def encode_history(history: list[dict[str, Any]]) -> str:
    """The history as the JSON text stored in the file.

    A value JSON cannot hold (a numpy scalar, NaN) is a bug in the caller: ValueError.
    """
    try:
        return json.dumps(history, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"provenance record is not plain JSON: {exc}") from None


def read_history(source: ModelFile, timeout: float = PARSE_TIMEOUT_S) -> list[dict[str, Any]]:
    """The records already in the model file, oldest first; [] when there are none.

    Records not shaped as :func:`make_record` makes them are skipped; a history that is
    not a list (or not JSON at all) reads as [].
    """
    kind = detect_format(source)
    if kind == "h5":
        # Untrusted HDF5 can hang the parser: read it in a bounded worker.
        text = run_bounded(lambda: _h5_history_text(source), timeout, source.label)
        return _parse_history(text)
    if kind in ("dir", "preset", "sharded"):
        assert source.path is not None
        folder_file = source.path / METADATA_MEMBER if kind != "sharded" else source.path
        metadata = _json_object(folder_file.read_bytes()) if folder_file.is_file() else None
    else:
        metadata = _read_metadata(source)
    section = metadata.get(METADATA_KEY) if metadata is not None else None
    return _records(section.get("history") if isinstance(section, dict) else None)


def metadata_with_history(old: bytes | None, history: list[dict[str, Any]], label: str) -> bytes:
    """New ``metadata.json`` bytes: every old key and value, and the history.

    ``old`` is the archive's current ``metadata.json`` (None when it has none). Other
    keys under ``conv_surgeon`` are kept; ``history`` is replaced by ``history``.
    """
    metadata: dict[str, Any] = {}
    if old is not None:
        try:
            loaded = parse_json(old)
        except DocumentError as exc:
            raise ModelFileError(
                f"{label}: the archive's {METADATA_MEMBER} {exc}; refusing to replace what "
                "cannot be read, re-save the model with Keras"
            ) from None
        except ValueError:
            loaded = None
        if not isinstance(loaded, dict):
            raise ModelFileError(
                f"{label}: the archive's {METADATA_MEMBER} is not a JSON object (received "
                f"{old[:40]!r}); refusing to replace it, re-save the model with Keras"
            )
        metadata = loaded
    encode_history(history)
    section = metadata.get(METADATA_KEY)
    metadata[METADATA_KEY] = {**(section if isinstance(section, dict) else {}), "history": history}
    return json.dumps(metadata).encode("utf-8")


def read_metadata_bytes(archive: zipfile.ZipFile, label: str) -> bytes | None:
    """The archive's ``metadata.json`` (CRC checked), or None when it has none."""
    try:
        return archive.read(METADATA_MEMBER)
    except KeyError:
        return None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ModelFileError(
            f"{label}: the archive's {METADATA_MEMBER} cannot be read ({exc}); the file "
            "may be corrupt, re-save the model with Keras"
        ) from None


def _read_metadata(source: ModelFile) -> dict[str, Any] | None:
    with source.open_binary() as raw:
        try:
            with zipfile.ZipFile(raw) as archive:
                data = read_metadata_bytes(archive, source.label)
        except ZIP_FAULTS as exc:
            raise ModelFileError(
                f"{source.label}: not a readable .keras archive ({exc}); the file may be "
                "truncated or corrupt"
            ) from None
    return _json_object(data) if data is not None else None


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        metadata = parse_json(data)
    except ValueError:  # not JSON, or nested too deep: no history can be read from it
        return None
    return metadata if isinstance(metadata, dict) else None


def _h5_history_text(source: ModelFile) -> str | None:
    with source.open_binary() as raw, h5_file(raw, source.label) as h5:
        value = h5.attrs.get(HISTORY_ATTRIBUTE)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _parse_history(text: str | None) -> list[dict[str, Any]]:
    if text is None:
        return []
    try:
        return _records(parse_json(text))
    except ValueError:
        return []


def _records(history: Any) -> list[dict[str, Any]]:
    if not isinstance(history, list):
        return []
    return [record for record in history if _readable(record)]


def _readable(record: Any) -> bool:
    """Whether ``record`` has the shape :func:`make_record` gives it where readers look:
    an object whose ``edits`` (if any) are objects with an object as ``source`` and a
    string as its ``sha256``, and whose ``command`` (if any) is a list; and is plain JSON
    (no NaN), as the next write must store it."""
    if not isinstance(record, dict):
        return False
    try:
        encode_history([record])
    except ValueError:
        return False
    edits, command = record.get("edits") or [], record.get("command") or []
    if not isinstance(edits, list) or not isinstance(command, list):
        return False
    for edit in edits:
        source = (edit.get("source") or {}) if isinstance(edit, dict) else None
        if not isinstance(source, dict) or not isinstance(source.get("sha256") or "", str):
            return False
    return True
