"""The forward-pass smoke test of a written model. Keras is imported here, lazily.

TensorFlow's start-up chatter comes from C++ before Python logging exists, so the
only way to keep it off the user's terminal is to point file descriptor 2 at
/dev/null around the import, the load and the forward pass (``TF_CPP_MIN_LOG_LEVEL=3``
does not silence it in TensorFlow 2.21).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
import traceback
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ConvSurgeonError, SmokeTestError, UsageError
from ..model.catalogue import conv_class
from ..model.inputs import DeclaredInput, declared_inputs, extra_axes, fits, reconcile
from ..model.naming import format_shape
from ..surgery.rewrite import ValueDigest
from ..store.worker import Worker
from .checks import (ExpectedValue, OutputComparison, OutputSummary, SmokeReport, SmokeTarget, Tolerance,
                     ToleranceCheck, compare_outputs, float32_rounding)
from .environment import (engine_label, import_keras, import_tf_keras, keras_label, quiet_stderr,
                            tf_keras_available)

# Unknown input sizes are tried from LADDER_START, doubling while every input that has
# unknown sizes stays within MAX_INPUT_ELEMENTS values (2**22: 16 MB of float32, so
# up to 1024 x 1024 x 3 for an image, 128**3 for a volume, a million steps for a signal).
LADDER_START = 32
MAX_INPUT_ELEMENTS = 1 << 22

# --compare counts values within this fraction of an output's largest magnitude as equal:
# a few float32 roundings, far below the effect of any edit worth checking.
INDISTINCT = 1e-6

_SKIP_HINT = "or skip the check with --no-smoke"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KERAS_HUB_CONFIG = re.compile(r'"(?:module|registered_name)"\s*:\s*"keras_hub[.>"]')
_UNKNOWN_CLASS = re.compile(
    r"Could not locate (?:class|function) '([^']+)'|Unknown (?:layer|object|class)\w*: '?([\w.>]+)"
)


class _ForwardFailure(Exception):
    """The model raised while running an input; the message is the short reason, ``detail``
    Keras's traceback."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class _NotProbed(Exception):
    """An edited layer whose output cannot be computed alone; the message says why."""


@dataclass(frozen=True)
class _Loaded:
    """A model Keras loaded, with its variable for each expected value (None where absent)."""

    model: Any
    variables: list[Any]


@dataclass(frozen=True)
class _Original:
    """What --compare learnt from the original model on the edited model's inputs."""

    outputs: list[np.ndarray]
    layers: list[tuple[str, np.ndarray, np.ndarray]]  # (layer path, original output, edited output)
    notes: list[str]  # the edited layers not compared, and why
    changed: bool  # some edited variable holds another value than in the original


def keras_traceback(exc: BaseException) -> str:
    """The traceback of what Keras (or the user's code) raised, for ``--debug``."""
    return _ANSI.sub("", "".join(traceback.format_exception(exc)))


def _short_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, without Keras's call banner, argument dump and colours."""
    text = _ANSI.sub("", str(exc)).split("Arguments received by", 1)[0]
    banner = re.match(r"\s*Exception encountered when calling (\w+)\.call\(\)\.", text)
    if banner:
        text = f"{banner.group(1)}: {text[banner.end():]}"
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_failure_reason(exc: Exception, message: str) -> str:
    """The cause Keras gives, without the layer config it prints around it."""
    layer = re.search(r"deserializing class '([^']+)'", message)
    cause = message.rsplit("Exception encountered:", 1)[-1].strip()
    if len(cause) > 240:
        cause = cause[:240] + "..."
    prefix = f"{layer.group(1)}: " if layer and "Exception encountered:" in message else ""
    return f"{prefix}{cause}" if cause else type(exc).__name__


def _shapes_text(shapes: Sequence[tuple[int, ...]]) -> str:
    return " and ".join(format_shape(s) for s in shapes)


def _inputs_text(symbolic: Sequence[tuple[Any, ...]], indices: Iterable[int]) -> str:
    """``input 0 (None, None, 1)``: model inputs with their batch and unknown axes as None."""
    return " and ".join(f"input {i} {symbolic[i]}" for i in indices)


# --- what is loaded ---------------------------------------------------------------------


def _import_modules(names: Sequence[str]) -> None:
    """Import the modules that register custom classes; the current directory comes first, as with ``python -m``."""
    here = os.getcwd()
    if names and here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of user code means "cannot import"
            hint = f" (a module name, not a file: --import {name[:-3].replace('/', '.')})" if name.endswith(".py") else ""
            raise ConvSurgeonError(
                f"--import {name}: the module could not be imported ({_short_error(exc)}); give the "
                f"name of a module importable from the current directory ({here}) or the Python "
                f"path{hint}, e.g. --import my_layers for ./my_layers.py"
            ).with_detail(keras_traceback(exc)) from None


def _config_text(path: Path) -> str:
    """The ``config.json`` of a .keras archive or a model directory; "" when there is none."""
    try:
        if path.is_dir():
            return (path / "config.json").read_text(encoding="utf-8")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return archive.read("config.json").decode("utf-8")
    except (OSError, KeyError, UnicodeDecodeError, zipfile.BadZipFile):
        pass  # Keras says what is wrong with the file when it loads it
    return ""


def _is_preset(path: Path) -> bool:
    """A keras-hub preset directory: its metadata.json names the keras-hub version."""
    try:
        metadata = json.loads((path / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and "keras_hub_version" in metadata


def _require_keras_hub(what: str) -> None:
    """Import keras_hub: it registers the ``keras_hub>...`` classes the config names."""
    try:
        import keras_hub  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a missing or broken install is not a bug of ours
        if isinstance(exc, ModuleNotFoundError) and exc.name == "keras_hub":
            raise SmokeTestError(
                f"the {what} is a keras-hub model and keras-hub is not installed; "
                f"`pip install keras-hub` to smoke-test it, {_SKIP_HINT}"
            ) from None
        raise SmokeTestError(
            f"the {what} is a keras-hub model and keras-hub failed to import "
            f"({_short_error(exc)}); repair the keras-hub install, {_SKIP_HINT}"
        ).with_detail(keras_traceback(exc)) from None


class KerasCannotLoad(SmokeTestError):
    """Keras could not load a model for a reason other than a missing class or a Lambda:
    perhaps the edit, perhaps a file this Keras cannot read at all (the check then tries
    the original, and tf-keras for a Keras 2 file)."""

    def __init__(self, message: str, reason: str = "", keras: str = "") -> None:
        super().__init__(message)
        self.reason, self.keras = reason, keras


def _cannot_load(keras: Any, exc: Exception, what: str) -> SmokeTestError:
    message = " ".join(_ANSI.sub("", str(exc)).split())
    label = keras_label(keras)
    if "safe_mode" in message or "Lambda" in message and "unsafe" in message.lower():
        return SmokeTestError(
            "the model holds a Lambda layer with Python code, which Keras refuses to "
            "load in safe mode; pass --unsafe if you trust this file, or --no-smoke "
            "to write it without the check"
        ).with_detail(keras_traceback(exc))
    unknown = _UNKNOWN_CLASS.search(message)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        return SmokeTestError(
            f"{label} could not load the {what}: it uses class '{name}', which "
            "no imported module registers, so nothing was written; pass --import MODULE naming "
            "the module that registers it (with @keras.saving.register_keras_serializable), "
            "or --no-smoke to write it without the check"
        ).with_detail(keras_traceback(exc))
    reason = _load_failure_reason(exc, message)
    return KerasCannotLoad(
        f"{label} could not load the {what} ({reason}), so nothing was written; "
        "--no-smoke writes it without the check", reason, label,
    ).with_detail(keras_traceback(exc))


def _load_model(keras: Any, path: Path, unsafe: bool, what: str) -> Any:
    if _KERAS_HUB_CONFIG.search(_config_text(path)):
        _require_keras_hub(what)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; all mean "cannot load"
        raise _cannot_load(keras, exc, what) from None


def _load_preset(keras: Any, path: Path, unsafe: bool, what: str, load_weights: bool) -> Any:
    _require_keras_hub(what)
    import keras_hub
    from keras.src.saving.serialization_lib import SafeModeScope

    try:
        # An absolute path: keras-hub reads a bare name such as "resnet_50_imagenet" as a
        # built-in preset and downloads it.
        with SafeModeScope(not unsafe):
            return keras_hub.models.Backbone.from_preset(str(path.resolve()), load_weights=load_weights)
    except Exception as exc:  # noqa: BLE001
        raise _cannot_load(keras, exc, what) from None


def _load_target(keras: Any, target: SmokeTarget, unsafe: bool, what: str) -> Any:
    if target.kind == "preset":
        return _load_preset(keras, target.path, unsafe, what, load_weights=True)
    if target.kind == "model":
        return _load_model(keras, target.path, unsafe, what)
    assert target.config is not None
    architecture = f"model {target.config.name} (the architecture for the {what})"
    if _is_preset(target.config):
        model = _load_preset(keras, target.config, unsafe, architecture, load_weights=False)
    else:
        model = _load_model(keras, target.config, unsafe, architecture)
    try:
        model.load_weights(str(target.path))
    except Exception as exc:  # noqa: BLE001
        raise SmokeTestError(
            f"{keras_label(keras)} could not load the {what} {target.path.name} into the "
            f"architecture of {target.config.name} ({_short_error(exc)}), so nothing was written; "
            "--no-smoke writes it without the check"
        ).with_detail(keras_traceback(exc)) from None
    return model


def _legacy_weights_file(target: SmokeTarget) -> Path | None:
    """The legacy .h5 file Keras read the weights from by position, or None for a weight store.

    Keras chooses its loader by the name's ending, and so does this.
    """
    name = str(target.path)
    if target.kind == "preset" or name.endswith((".keras", ".weights.h5", ".weights.json")):
        return None
    if name.endswith((".h5", ".hdf5")) and not target.path.is_dir():
        return target.path
    return None


# --- inputs and the forward pass ----------------------------------------------------------


def _seeded_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random values an input of ``dtype`` accepts: noise for floats, 0/1 otherwise."""
    if "float" in dtype:
        return rng.standard_normal(shape).astype(np.float32)
    if "int" in dtype or dtype == "bool":
        # Small non-negative integers are valid token ids and lookup indices.
        return rng.integers(0, 2, size=shape).astype(dtype)
    return np.full(shape, "a" if dtype == "string" else 0, dtype=object if dtype == "string" else dtype)


def _as_list(outputs: Any) -> list[Any]:
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def to_numpy(keras: Any, value: Any) -> np.ndarray:
    """A tensor or variable of either Keras as a numpy array (tf-keras has no ``keras.ops``)."""
    convert = getattr(getattr(keras, "ops", None), "convert_to_numpy", None)
    return np.asarray(convert(value) if convert is not None else value)


# TensorFlow's CPU convolutions without oneDNN take channels_last data only; XLA compiles
# channels_first ones with its own kernels.
_CHANNELS_LAST_ONLY = "only supports the NHWC tensor format"
ONEDNN_NOTE = ("TensorFlow was imported with its oneDNN CPU kernels on before this check, and they "
               "compute some convolutions wrong on some CPUs: set TF_ENABLE_ONEDNN_OPTS=0 before "
               "importing TensorFlow to check without them")
XLA_NOTE = ("TensorFlow's CPU kernels without oneDNN run channels_last convolutions only: "
            "the model ran compiled by XLA")


def _forward(keras: Any, model: Any, inputs: list[np.ndarray], notes: set[str] | None = None) -> list[np.ndarray]:
    """The model's outputs on ``inputs``; a channels_first model runs through XLA (and
    ``notes`` hears of it)."""
    feed = inputs if len(inputs) > 1 else inputs[0]
    try:
        outputs = _as_list(model(feed, training=False))
    except Exception as exc:  # noqa: BLE001
        if _CHANNELS_LAST_ONLY not in str(exc):
            raise _ForwardFailure(_short_error(exc), keras_traceback(exc)) from None
        import tensorflow as tf

        try:
            outputs = _as_list(tf.function(lambda x: model(x, training=False), jit_compile=True)(feed))
        except Exception as xla_exc:  # noqa: BLE001
            raise _ForwardFailure(_short_error(xla_exc), keras_traceback(xla_exc)) from None
        if notes is not None:
            notes.add(XLA_NOTE)
    return [to_numpy(keras, o) for o in outputs]


@dataclass(frozen=True)
class _Inputs:
    """The shapes the smoke test feeds, and where they came from."""

    bases: list[tuple[Any, ...]]  # per input: batch axis, then sizes (None where still unknown)
    symbolic: list[tuple[Any, ...]]  # what Keras built
    declared: list[DeclaredInput | None]  # what the file declares, where it fits

    @property
    def origins(self) -> list[str]:
        """Per input, for the report: DECLARED or BUILT."""
        return [BUILT if claim is None else DECLARED for claim in self.declared]


# Where an input's shape came from, as the report says it.
DECLARED, BUILT, GIVEN, SEARCHED, LOADED = (
    "declared by the file", "as Keras built the model", "from --input-shape", "sizes searched",
    "from --load-inputs")


def _planned_inputs(model: Any, declared: Sequence[DeclaredInput]) -> tuple[_Inputs, list[str]]:
    """Each input's shape from the file first, reconciled with the one Keras built; and a
    note for each input Keras built with another shape than the file declares."""
    symbolic = [tuple(t.shape) for t in model.inputs]
    bases: list[tuple[Any, ...]] = []
    fitting: list[DeclaredInput | None] = []
    notes = []
    for i, built in enumerate(symbolic):
        claim = declared[i] if len(declared) == len(symbolic) else None
        merged = reconcile(built, claim.shape) if claim is not None else None
        if claim is None or merged is None:
            bases.append(built)
            fitting.append(None)
            continue
        if extra_axes(built, claim.shape):
            notes.append(f"input {i}: the file declares {claim.shape} ({claim.origin}), Keras built "
                         f"{built}; its extra axis gets size 1")
        bases.append(merged)
        fitting.append(claim)
    return _Inputs(bases, symbolic, fitting), notes


def _given_shapes(plan: _Inputs, given: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The --input-shape sizes checked against the model's inputs, with a batch axis of 1.

    A size fits the shape Keras built, or the shape the file declares (then mapped onto
    Keras's, as :func:`reconcile` does). A shape the model's inputs cannot take is a
    mistake on the command line (a usage error), not a failure of the written model.
    """
    symbolic = plan.symbolic
    if len(given) != len(symbolic):
        raise UsageError(
            f"--input-shape: the model has {len(symbolic)} input(s) "
            f"{', '.join(str(s) for s in symbolic)}, received {len(given)} shape(s); give "
            "one --input-shape per input, without the batch axis"
        )
    shapes = []
    for i, base in enumerate(plan.bases):
        wanted = tuple(int(w) for w in given[i])
        found = _given_shape(base, symbolic[i], plan.declared[i], wanted)
        if found is None:
            claim = plan.declared[i]
            declared = (f", or the shape the file declares {claim.shape[1:]}"
                        if claim is not None and len(claim.shape) != len(base) else "")
            raise UsageError(
                f"--input-shape {wanted} does not fit model input {i} {symbolic[i]} (batch axis "
                f"excluded: {tuple(base[1:])}{declared}); give the sizes for its None axes"
            )
        shapes.append(found)
    return shapes


def _given_shape(base: tuple[Any, ...], built: tuple[Any, ...], claim: DeclaredInput | None,
                 wanted: tuple[int, ...]) -> tuple[int, ...] | None:
    """``wanted`` as an input of shape ``base`` (``built`` reconciled with the file's ``claim``)
    takes it: sizes for ``base``, or for the declared shape, mapped onto ``built``; None
    when neither fits. Either may include the batch axis."""
    sizes = wanted[1:] if len(wanted) == len(base) else wanted
    if fits(base[1:], sizes):
        return (1, *sizes)
    if claim is None:
        return None
    sizes = wanted[1:] if len(wanted) == len(claim.shape) else wanted
    mapped = reconcile(built, (1, *sizes)) if fits(claim.shape[1:], sizes) else None
    known = tuple(d for d in (mapped or ())[1:] if d is not None)
    return (1, *known) if mapped is not None and len(known) == len(mapped) - 1 else None


def _filled(bases: list[tuple[Any, ...]], size: int) -> list[tuple[int, ...]]:
    return [(1,) + tuple(size if d is None else int(d) for d in shape[1:]) for shape in bases]


def _ladder(bases: list[tuple[Any, ...]], free: list[int]) -> list[int]:
    """The sizes to try for unknown axes: cheapest first, bounded per input; then 1, which
    an axis Keras added to the file's shape takes where the file says nothing."""
    sizes = [LADDER_START]
    while all(
        math.prod(2 * sizes[-1] if d is None else int(d) for d in bases[i][1:]) <= MAX_INPUT_ELEMENTS
        for i in free
    ):
        sizes.append(2 * sizes[-1])
    return sizes + [1]


def _sizes_text(sizes: list[int]) -> str:
    return ", ".join(map(str, sizes)) if len(sizes) <= 3 else f"{sizes[0]}, {sizes[1]}, ..., {sizes[-1]}"


@dataclass(frozen=True)
class _Run:
    """Inputs the model accepted, its outputs on them, and what the report says of them."""

    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    origins: list[str]
    notes: list[str]


def _run_seeded(
    keras: Any, model: Any, given: Sequence[tuple[int, ...]] | None, seed: int,
    declared: Sequence[DeclaredInput] = (), engine_notes: set[str] | None = None,
) -> _Run:
    """Inputs the model accepts, its outputs on them, and notes on the sizes chosen.

    Each input's shape comes from the file's config first (:func:`_planned_inputs`).
    Unknown sizes not given are searched: each size of the ladder in turn, until the
    forward pass runs and gives a non-empty output. Each try draws its input from a
    fresh generator, so the inputs found are those ``--input-shape`` would give.
    """
    plan, shape_notes = _planned_inputs(model, declared)
    symbolic, bases = plan.symbolic, plan.bases
    dtypes = [str(t.dtype) for t in model.inputs]

    def attempt(shapes: list[tuple[int, ...]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        rng = np.random.default_rng(seed)
        inputs = [_seeded_input(rng, shape, dtype) for shape, dtype in zip(shapes, dtypes)]
        return inputs, _forward(keras, model, inputs, engine_notes)

    free = [i for i, shape in enumerate(bases) if None in shape[1:]]
    if given is not None or not free:
        shapes = _given_shapes(plan, given) if given is not None else _filled(bases, LADDER_START)
        try:
            inputs, arrays = attempt(shapes)
        except _ForwardFailure as failure:
            if given is None:
                raise SmokeTestError(
                    f"the forward pass failed on the input {_shapes_text(shapes)} ({failure}); "
                    f"nothing was written; {_SKIP_HINT}"
                ).with_detail(failure.detail) from None
            raise SmokeTestError(
                f"the forward pass failed on the input {_shapes_text(shapes)} given by --input-shape "
                f"({failure}); nothing was written; give sizes that "
                f"{_inputs_text(symbolic, range(len(symbolic)))} accepts with --input-shape SHAPE "
                f"(without the batch axis), {_SKIP_HINT}"
            ).with_detail(failure.detail) from None
        origins = [GIVEN] * len(shapes) if given is not None else plan.origins
        return _Run(inputs, arrays, origins, shape_notes if given is None else [])
    rejected: list[int] = []
    last = ""
    detail = None
    for size in _ladder(bases, free):
        shapes = _filled(bases, size)
        try:
            inputs, arrays = attempt(shapes)
        except _ForwardFailure as failure:
            rejected.append(size)
            if size != 1 or not last:  # the error at the largest size says the most
                last, detail = f"on {_shapes_text(shapes)}: {failure}", failure.detail
            continue
        empty = next((a.shape for a in arrays if a.size == 0), None)
        if empty is not None:
            # A too-small input can shrink to nothing without an error: nothing to check then.
            rejected.append(size)
            last = f"on {_shapes_text(shapes)}: the output {format_shape(empty)} is empty"
            continue
        tried = ""
        if rejected:
            tried = f" ({rejected[0]} was rejected)" if len(rejected) == 1 else f" ({rejected[0]}..{rejected[-1]} were rejected)"
        notes = [
            f"input {i} {symbolic[i]}: unknown sizes set to {size}{tried}; use --input-shape to choose them"
            for i in free
        ]
        origins = [(SEARCHED if i in free else origin) for i, origin in enumerate(plan.origins)]
        return _Run(inputs, arrays, origins, shape_notes + notes)
    raise SmokeTestError(
        f"the forward pass failed at every input size tried: the unknown sizes of "
        f"{_inputs_text(symbolic, free)} at "
        f"{_sizes_text(rejected[:-1])} and 1 (the error at the largest, {last}); nothing was written; give the sizes "
        f"with --input-shape SHAPE (without the batch axis), {_SKIP_HINT}"
    ).with_detail(detail)


def _read_inputs_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a --load-inputs file: an .npz as --save-inputs writes it."""
    redo = "save the inputs with np.savez('inputs.npz', input_0=x) (one key per model input)"
    try:
        # A memory map: a .npy given by mistake is only opened to read its shape.
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise ConvSurgeonError(f"--load-inputs {path}: not a readable .npz file ({exc}); {redo}") from None
    if isinstance(loaded, np.ndarray):
        raise ConvSurgeonError(
            f"--load-inputs {path}: expected an .npz file with one array per model input, received "
            f"a single .npy array {format_shape(loaded.shape)}; save it with "
            f"np.savez('{path.with_suffix('.npz')}', input_0=np.load('{path}')) and pass that file"
        )
    try:
        with loaded as bundle:
            return {key: bundle[key] for key in bundle.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConvSurgeonError(f"--load-inputs {path}: not a readable .npz file ({exc}); {redo}") from None


def _matched_inputs(path: Path, stored: dict[str, np.ndarray], model: Any) -> list[np.ndarray]:
    """The arrays for the model's inputs (keys input_0, input_1, ... or the inputs' names),
    each checked against its input's shape before anything runs."""
    inputs = []
    for i, tensor in enumerate(model.inputs):
        name = str(getattr(tensor, "name", ""))
        key = f"input_{i}" if f"input_{i}" in stored else name
        if key not in stored:
            raise ConvSurgeonError(
                f"--load-inputs {path}: no array for model input {i} ('{name}'); expected key "
                f"input_{i} or {name}, found: {', '.join(sorted(stored)) or 'none'}"
            )
        array, expects = stored[key], tuple(tensor.shape)
        if not fits(expects, array.shape):
            batch = fits(expects, (1,) + array.shape)
            raise ConvSurgeonError(
                f"--load-inputs {path}: model input {i} expects {expects}, received {array.shape} "
                f"(array '{key}'); "
                + (f"add the batch axis: np.savez(FILE, input_{i}=x[None])" if batch else
                   f"save arrays of that shape with np.savez(FILE, input_{i}=...)")
            )
        inputs.append(array)
    batches = {a.shape[0] for a in inputs if a.ndim}
    if len(batches) > 1:
        raise ConvSurgeonError(
            f"--load-inputs {path}: the arrays hold {_shapes_text([a.shape for a in inputs])}, "
            "different numbers of samples; give every input the same first axis"
        )
    return inputs


# The original model run in a process of its own: (input shapes, input digest, outputs).
ReferenceResult = tuple[list[tuple[int, ...]], str, list[np.ndarray]]
REFERENCE_TIMEOUT_S = 3600.0  # a bound for a hung process, not for a slow model


def start_reference_run(
    reference: SmokeTarget, *, input_shapes: Sequence[tuple[int, ...]] | None = None,
    unsafe: bool = False, seed: int = 0, load_inputs: Path | None = None, imports: Sequence[str] = (),
) -> Worker[ReferenceResult]:
    """Run the original model for ``--compare`` in a forked process, beside the edited one:
    its load and forward pass then cost no time of their own on a machine with two cores.

    Fork before any thread starts (before :class:`KerasWarmUp`): the child imports
    TensorFlow itself. It draws the same seeded inputs as :func:`run_smoke_test` (or reads
    ``load_inputs``), and :func:`run_smoke_test` checks that they are the same.
    """
    def work() -> ReferenceResult:
        keras = import_keras()
        with quiet_stderr():
            _import_modules(imports)
            model = _load_target(keras, reference, unsafe, "original model")
            if load_inputs is not None:
                inputs = _matched_inputs(load_inputs, _read_inputs_file(load_inputs), model)
                try:
                    outputs = _forward(keras, model, inputs)
                except _ForwardFailure as failure:
                    raise SmokeTestError(
                        f"the forward pass of the original model failed on the inputs of --load-inputs "
                        f"{load_inputs} ({failure}); nothing was written").with_detail(failure.detail) from None
            else:
                run = _run_seeded(keras, model, input_shapes, seed, _declared(reference))
                inputs, outputs = run.inputs, run.outputs
        return [tuple(a.shape) for a in inputs], _digest(inputs), outputs

    return Worker(work, REFERENCE_TIMEOUT_S, "the original model")


def _digest(arrays: Sequence[np.ndarray]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class NoKerasLoads(SmokeTestError):
    """Keras cannot load the original model either: the check cannot run, and the edit is
    not the cause. ``attempts`` holds (which Keras, why) for each Keras tried."""

    def __init__(self, attempts: Sequence[tuple[str, str]], written_by: str | None = None,
                 tf_keras_hint: bool = False) -> None:
        self.attempts, self.written_by, self.tf_keras_hint = list(attempts), written_by, tf_keras_hint
        if len(self.attempts) == 1:
            (label, reason), = self.attempts
            said = f"{label} cannot load the original model either ({reason})"
        else:
            said = "no Keras here can load the original model: " + "; ".join(
                f"{label}: {reason}" for label, reason in self.attempts)
        hint = ""
        if tf_keras_hint:
            hint = (f"; the file was written by Keras {written_by or '2'}, which tf-keras reads: "
                    "pip install 'conv-surgeon[keras2]' to check it with tf-keras")
        super().__init__(
            f"{said}, so the check cannot run (the edit is not the cause); nothing was written; "
            f"--no-smoke writes the edit without the check{hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.attempts, self.written_by, self.tf_keras_hint), self.__dict__)


def written_by_keras2(version: str | None) -> bool:
    """Whether a file's ``keras_version`` says Keras 1 or 2 wrote it (None: it does not say)."""
    return version is None or version.split(".")[0] in ("1", "2")


def _load_written(keras: Any, edited: SmokeTarget, original: SmokeTarget | None, unsafe: bool) -> Any:
    """The written model, loaded; when Keras cannot load the original either, NoKerasLoads."""
    try:
        return _load_target(keras, edited, unsafe, "written model")
    except KerasCannotLoad as failure:
        if original is None:
            raise
        try:
            _load_target(keras, original, unsafe, "original model")
        except KerasCannotLoad as original_failure:
            raise NoKerasLoads([(original_failure.keras, original_failure.reason)]).with_detail(
                original_failure.detail) from None
        except SmokeTestError:
            pass
        raise


def _declared(target: SmokeTarget) -> list[DeclaredInput]:
    """The input shapes the config of the model Keras loads declares ([] if none)."""
    path = target.config if target.kind == "weights" else target.path
    if path is None or target.kind == "preset":
        return []
    text = _config_text(path)
    if not text and path.suffix.lower() in (".h5", ".hdf5") and path.is_file():
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                value = handle.attrs.get("model_config")
        except OSError:
            return []
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
    try:
        config = json.loads(text) if text else None
    except ValueError:
        return []
    return declared_inputs(config if isinstance(config, dict) else None)


def _as_target(path: Path | SmokeTarget) -> SmokeTarget:
    return path if isinstance(path, SmokeTarget) else SmokeTarget(path)


def run_smoke_test(
    target: Path | SmokeTarget,
    expected: Sequence[ExpectedValue],
    *,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    unsafe: bool = False,
    seed: int = 0,
    reference: Path | SmokeTarget | None = None,
    reference_run: Worker[ReferenceResult] | None = None,
    expect_same: Tolerance | None = None,
    load_inputs: Path | None = None,
    save_inputs: Path | None = None,
    imports: Sequence[str] = (),
    original: Path | SmokeTarget | None = None,
    written_by: str | None = None,
    runtime: Literal["keras", "tf-keras"] = "keras",
) -> SmokeReport:
    """Load ``target`` with Keras, run one seeded forward pass, check outputs and values.

    ``imports`` are modules imported first (they register custom classes). Each input's
    shape comes from the file's config first; unknown sizes not given by ``input_shapes``
    are searched (see ``_run_seeded``). With ``reference`` (the original model) both run on
    the same inputs and their outputs, and the outputs of the edited layers, are compared;
    ``expect_same`` turns a difference of the model's outputs beyond it into a failure.
    ``reference_run``, the original already running in its own process
    (:func:`start_reference_run`), gives the original's outputs in its place when its inputs
    are the edited model's; it compares the outputs only, not the edited layers'.

    When Keras cannot load the written model, ``original`` (the unedited model) tells
    whether the edit is the cause: if Keras 3 cannot load the original either and the file
    was ``written_by`` Keras 2, the whole check runs again under tf-keras in a process of
    its own (``runtime`` "tf-keras" is that process's).
    """
    edited = _as_target(target)
    # A wrong inputs file is refused before Keras loads anything.
    stored = _read_inputs_file(load_inputs) if load_inputs is not None else None
    keras = import_tf_keras() if runtime == "tf-keras" else import_keras()
    engine_notes: set[str] = set()
    try:
        with quiet_stderr():
            _import_modules(imports)
            model = _load_written(keras, edited, _as_target(original) if original is not None else None, unsafe)
    except NoKerasLoads as failure:
        if reference_run is not None:
            reference_run.discard()
        keras2 = runtime == "keras" and written_by_keras2(written_by)
        if not keras2 or not tf_keras_available():
            raise NoKerasLoads(failure.attempts, written_by, tf_keras_hint=keras2).with_detail(failure.detail) from None
        return _checked_by_tf_keras(failure, written_by, dict(
            target=edited, expected=list(expected), input_shapes=input_shapes, unsafe=unsafe,
            seed=seed, reference=reference, expect_same=expect_same, load_inputs=load_inputs,
            save_inputs=save_inputs, imports=tuple(imports), original=original, written_by=written_by))
    with quiet_stderr():
        if load_inputs is not None and stored is not None:
            inputs = _matched_inputs(load_inputs, stored, model)
            origins = [LOADED] * len(inputs)
            notes = [f"inputs from {load_inputs}"]
            try:
                arrays = _forward(keras, model, inputs, engine_notes)
            except _ForwardFailure as failure:
                raise SmokeTestError(
                    f"the forward pass failed on the input {_shapes_text([a.shape for a in inputs])} "
                    f"from --load-inputs {load_inputs} ({failure}); nothing was written; "
                    f"check the arrays of --load-inputs, {_SKIP_HINT}"
                ).with_detail(failure.detail) from None
        else:
            run = _run_seeded(keras, model, input_shapes, seed, _declared(edited), engine_notes)
            inputs, arrays, origins, notes = run.inputs, run.outputs, run.origins, run.notes
        symbolic = [tuple(t.shape) for t in _as_list(model.outputs)]
        legacy_file = _legacy_weights_file(edited)
        loaded = _Loaded(model, _locate_variables(keras, model, expected, legacy_file))
        checked = _check_variables(keras, expected, loaded.variables, legacy=legacy_file is not None)
        original_run = None
        if reference_run is not None:
            shapes_run, digest, outputs_run = reference_run.result()
            if shapes_run == [tuple(a.shape) for a in inputs] and digest == _digest(inputs):
                original_run = _Original(outputs_run, [], [], True)
        if original_run is None and reference is not None:
            original_run = _run_original(keras, _as_target(reference), unsafe, expected, inputs, loaded,
                                         engine_notes)
        engine = engine_label(keras)
        if engine.endswith("oneDNN on"):
            engine_notes.add(ONEDNN_NOTE)
    shapes = [tuple(a.shape) for a in inputs]
    summaries = []
    for i, (array, shape) in enumerate(zip(arrays, symbolic)):
        name = f"output {i}"
        if len(array.shape) != len(shape) or any(
            d is not None and d != a for d, a in zip(shape, array.shape)
        ):
            raise SmokeTestError(
                f"{name}: expected shape {shape}, received {array.shape}; nothing was written"
            )
        values = array.astype(np.float64)
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise SmokeTestError(
                f"{name} {array.shape}: {bad} of {values.size} values are NaN or Inf after the "
                "edit (the new weights overflow); nothing was written"
            )
        summaries.append(OutputSummary(name, tuple(array.shape), float(values.min()), float(values.max())))
    comparisons: tuple[OutputComparison, ...] = ()
    layer_comparisons: tuple[OutputComparison, ...] = ()
    tolerance_checks: tuple[ToleranceCheck, ...] = ()
    if original_run is not None:
        comparisons = tuple(
            compare_outputs(f"output {i}", a, b) for i, (a, b) in enumerate(zip(original_run.outputs, arrays))
        )
        if expect_same is not None:
            tolerance_checks = _check_tolerance(original_run.outputs, arrays, comparisons, expect_same,
                                                sums_length(model) if expect_same.float32_sums else 0)
        layer_comparisons = tuple(compare_outputs(path, a, b) for path, a, b in original_run.layers)
        notes += original_run.notes + _comparison_notes(original_run, comparisons, layer_comparisons,
                                                        expect_same is not None)
    notes += sorted(engine_notes)
    if save_inputs is not None:
        from ..store.fileio import npz_bytes, write_atomically

        data = npz_bytes({f"input_{i}": a for i, a in enumerate(inputs)})
        write_atomically(save_inputs, lambda handle: handle.write(data))
        notes.append(f"inputs saved to {save_inputs}")
    return SmokeReport(
        inputs=tuple((f"input {i}", s) for i, s in enumerate(shapes)),
        outputs=tuple(summaries),
        checked_variables=checked,
        notes=tuple(notes),
        comparisons=comparisons,
        layer_comparisons=layer_comparisons,
        tolerance_checks=tolerance_checks,
        checked_by=keras_label(keras),
        engine=engine,
        input_origins=tuple(origins),
    )


def _checked_by_tf_keras(keras3: NoKerasLoads, written_by: str | None, request: dict[str, Any]) -> SmokeReport:
    """The whole check again under tf-keras, in a fresh process: Keras 3 could not load the
    file, and both Kerases cannot share one process's TensorFlow state."""
    import pickle
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-m", "conv_surgeon.runtime.tf_keras_check"],
                              input=pickle.dumps(request), capture_output=True, timeout=REFERENCE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SmokeTestError(f"the check under tf-keras did not finish within {REFERENCE_TIMEOUT_S:.0f} s; "
                             f"nothing was written; {_SKIP_HINT}") from None
    try:
        kind, value = pickle.loads(done.stdout)
    except Exception:  # noqa: BLE001 - the child died before it could answer
        from ..errors import InternalError

        raise InternalError(f"the check under tf-keras ended with exit code {done.returncode} and no answer",
                            done.stderr.decode("utf-8", "replace")[-4000:]) from None
    if kind == "bug":
        from ..errors import InternalError

        raise InternalError(f"the check under tf-keras failed: {value[0]}", value[1])
    if isinstance(value, NoKerasLoads):
        raise NoKerasLoads(keras3.attempts + value.attempts, written_by).with_detail(
            "\n".join(d for d in (keras3.detail, value.detail) if d)) from None
    if isinstance(value, BaseException):
        raise value
    report: SmokeReport = value
    (label, reason), = keras3.attempts[:1]
    note = (f"{label} cannot load this file{f' (written by Keras {written_by})' if written_by else ''}: "
            f"{reason}; {report.checked_by} checked it")
    return replace(report, notes=(note, *report.notes))


# --- the comparison with the original model ----------------------------------------------


def _run_original(
    keras: Any,
    reference: SmokeTarget,
    unsafe: bool,
    expected: Sequence[ExpectedValue],
    inputs: list[np.ndarray],
    edited: _Loaded,
    engine_notes: set[str],
) -> _Original:
    """Run the original model, and the edited layers of both models, on ``inputs``."""
    model = _load_target(keras, reference, unsafe, "original model")
    try:
        outputs = _forward(keras, model, inputs, engine_notes)
    except _ForwardFailure as failure:
        raise SmokeTestError(
            f"the forward pass of the original model failed on the input "
            f"{_shapes_text([a.shape for a in inputs])} the edited model ran on ({failure}); "
            "nothing was written; drop --compare to skip the comparison"
        ).with_detail(failure.detail) from None
    loaded = _Loaded(model, _locate_variables(keras, model, expected, _legacy_weights_file(reference)))
    changed = any(
        variable is not None and not _holds(keras, variable, item.value)
        for item, variable in zip(expected, loaded.variables)
    )
    layers, notes = _layer_outputs(keras, loaded, edited, expected, inputs, engine_notes)
    return _Original(outputs, layers, notes, changed)


def _layer_outputs(
    keras: Any,
    original: _Loaded,
    edited: _Loaded,
    expected: Sequence[ExpectedValue],
    inputs: list[np.ndarray],
    engine_notes: set[str],
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[str]]:
    """Each edited layer's output in the original and the edited model, by layer path;
    and a note for each edited layer that cannot be run alone.

    A layer is found by the variables the weight-store walk located for it, and run as
    a sub-model from the model's inputs to that layer's output, one for all the layers.
    """
    probes: list[tuple[str, Any, Any]] = []  # layer path, original output, edited output
    notes: list[str] = []
    seen: set[str] = set()
    for i, item in enumerate(expected):
        if not item.layer_path or item.layer_path in seen:
            continue
        seen.add(item.layer_path)
        try:
            probes.append((
                item.layer_path,
                _layer_output(keras, original.model, item.layer_path, original.variables[i]),
                _layer_output(keras, edited.model, item.layer_path, edited.variables[i]),
            ))
        except _NotProbed as reason:
            notes.append(f"layer '{item.layer_path}' is not compared: {reason}")
    if not probes:
        return [], notes
    try:
        before = _forward(keras, keras.Model(original.model.inputs, [p[1] for p in probes]), inputs, engine_notes)
        after = _forward(keras, keras.Model(edited.model.inputs, [p[2] for p in probes]), inputs, engine_notes)
    except _ForwardFailure as failure:
        return [], notes + [f"the edited layers are not compared: running them alone failed ({failure})"]
    return [(path, a, b) for (path, _, _), a, b in zip(probes, before, after)], notes


def _layer_output(keras: Any, model: Any, path: str, variable: Any) -> Any:
    """The symbolic output of the model's layer ``path``, the layer that holds ``variable``."""
    owner = None if variable is None else next(
        (layer for layer in model.layers if any(w is variable for w in layer.weights)), None)
    if owner is None:
        raise _NotProbed("no layer of the model Keras loaded holds its variables")
    if owner.name != path:
        raise _NotProbed(f"it is inside layer '{owner.name}', and only the model's own layers have an output to run to")
    # Each build of a Sequential model adds a call to every layer, and it can hold a layer once.
    calls = 1 if isinstance(model, keras.Sequential) else len(owner._inbound_nodes)
    if calls != 1:
        raise _NotProbed(f"the model calls it {calls} times, so it has no single output")
    try:
        output = owner.output
        keras.Model(model.inputs, output)  # raises unless the model's inputs lead to it
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; all mean "no output in the graph"
        raise _NotProbed(f"it has no output in the model's graph ({_short_error(exc)})") from None
    if isinstance(output, (list, tuple, dict)):
        raise _NotProbed(f"it has {len(output)} outputs")
    return output


def _comparison_notes(
    original: _Original, comparisons: Sequence[OutputComparison], layers: Sequence[OutputComparison],
    expect_same: bool = False,
) -> list[str]:
    """Say when the inputs cannot show the edit's effect on an output.

    That is when the original's output is (nearly) constant, or the same for every input,
    or, though the edit changed variables, the same in both models (unless the same
    output is what the edit must keep: ``expect_same``).
    """
    moved = [c for c, (_, a, _) in zip(layers, original.layers) if not _indistinct(a, c)]
    widest = max(moved, key=lambda c: c.max_abs, default=None)
    notes = []
    for array, comparison in zip(original.outputs, comparisons):
        values = array.astype(np.float64)
        if not values.size:
            continue
        scale = INDISTINCT * float(np.abs(values).max())
        spread = float(values.max() - values.min())
        if spread <= scale:
            within = f" within {spread:.3g}" if spread else ""
            reason = f"is constant on these inputs (every value {values.flat[0]:.6g}{within})"
        elif values.ndim and len(values) > 1 and float(np.abs(values - values[:1]).max()) <= scale:
            reason = f"is the same for each of the {len(values)} inputs"
        elif original.changed and not expect_same and _indistinct(array, comparison):
            reason = (f"is the same in the original and the edited model (max abs difference "
                      f"{comparison.max_abs:.3g}) though the edit changed variables")
        else:
            continue
        shown = ""
        if widest is not None and _indistinct(array, comparison):
            shown = f", while the output of layer '{widest.name}' changed by up to {widest.max_abs:.3g}"
        notes.append(
            f"{comparison.name} {format_shape(array.shape)} {reason}{shown}; the comparison cannot "
            "show the edit's effect: use --load-inputs with real data"
        )
    return notes


def _indistinct(original: np.ndarray, comparison: OutputComparison) -> bool:
    """Whether the edited values equal the original ones but for float roundings."""
    return comparison.max_abs <= INDISTINCT * float(np.abs(original.astype(np.float64)).max(initial=0.0))


def _check_tolerance(
    originals: list[np.ndarray],
    edited: list[np.ndarray],
    comparisons: tuple[OutputComparison, ...],
    tolerance: Tolerance,
    sums: int,
) -> tuple[ToleranceCheck, ...]:
    """Each output within ``tolerance`` of the original's, or a SmokeTestError naming the
    worst value; ``sums`` is the length of the model's sums (for ``float32_sums``)."""
    checks = []
    for a, b, comparison in zip(originals, edited, comparisons):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        scale = float(np.abs(a64).max(initial=0.0))
        rounding = float32_rounding(scale, sums) if tolerance.float32_sums else 0.0
        error = np.abs(b64 - a64)
        allowed = tolerance.atol + rounding + tolerance.rtol * np.abs(a64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(error == 0, 0.0, error / allowed)  # inf where nothing is allowed
        check = ToleranceCheck(comparison.name, tolerance, comparison.max_abs, scale,
                               sums if tolerance.float32_sums else 0, rounding,
                               float(ratio.max(initial=0.0)))
        if check.used > 1:
            worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            raise SmokeTestError(
                f"{comparison.name}: the edited model differs from the original beyond "
                f"{check.allowance} (max abs error {comparison.max_abs:.3g}; at index "
                f"{tuple(int(i) for i in worst)}: {a64[worst]:.6g} -> {b64[worst]:.6g}, "
                f"{float(error[worst]):.3g} where {float(allowed[worst]):.3g} is allowed); nothing was "
                "written; --atol and --rtol allow more"
            )
        checks.append(check)
    return tuple(checks)


def sums_length(model: Any) -> int:
    """The total length of the model's sums: for each kernel, the number of products one
    of its outputs adds up (its fan-in: a conv's window times its input channels, a
    depthwise kernel's window, a Dense layer's inputs)."""
    owners: dict[int, tuple[Any, Any]] = {}
    for layer in model._flatten_layers(include_self=False):
        for variable in layer.weights:
            owners[id(variable)] = (layer, variable)  # a wrapper's layers come before it: the innermost wins
    total = 0
    for layer, variable in owners.values():
        name = str(variable.name).rpartition("/")[2].split(":")[0]
        shape = tuple(int(d) for d in variable.shape)
        if not name.endswith("kernel") or len(shape) < 2:
            continue
        cls = conv_class(type(layer).__name__)
        if cls is not None and (cls.kind == "depthwise" or name == "depthwise_kernel"):
            total += math.prod(shape[:-2])  # each output channel sums its window alone
        elif cls is not None and cls.kind == "transpose":
            total += math.prod(shape[:-2]) * shape[-1]  # (window, filters, in_channels)
        else:
            total += math.prod(shape[:-1])
    return total


# --- the edited variables -------------------------------------------------------------------


def _store_variables(keras: Any, model: Any) -> dict[str, dict[str, Any]]:
    """What ``model.save`` would put in the weight store, by object path, without writing.

    Runs Keras's own saver walk (``saving_lib._save_state``: "layers" first, then
    attributes, class-name counters inside containers, each object once) over a store
    that only records, so paths and variable order are those Keras loads by.
    """
    if keras.__name__ == "tf_keras":
        from tf_keras.src.saving import saving_lib
    else:
        from keras.src.saving import saving_lib

    class Recorder(saving_lib.H5IOStore):  # type: ignore[misc]  # Keras has no types: its base is Any
        def __init__(self) -> None:  # no file behind it
            self.objects: dict[str, dict[str, Any]] = {}

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
            return self.objects.setdefault(path, {})

    recorder = Recorder()
    # Positional: the two Kerases name the last argument differently.
    saving_lib._save_state(model, recorder, None, "", set())
    return recorder.objects


def _legacy_variables(keras: Any, model: Any, path: Path) -> dict[str, list[Any]]:
    """Each weight group of a legacy .h5 with the variables Keras assigned it by position.

    As ``load_weights_from_hdf5_group``: the groups that list weights pair in order with
    the model's layers that have weights, and a group's ``weight_names`` pair with the
    layer's ``trainable_weights + non_trainable_weights`` (``_legacy_weights``).
    """
    import h5py

    if keras.__name__ == "tf_keras":
        from tf_keras.src.saving.legacy import hdf5_format as legacy
    else:
        from keras.src.legacy.saving import legacy_h5_format as legacy

    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "layer_names" not in handle.attrs and "model_weights" in handle else handle
        names = [
            name
            for name in legacy.load_attributes_from_hdf5_group(group, "layer_names")
            if legacy.load_attributes_from_hdf5_group(group[name], "weight_names")
        ]
    layers = [layer for layer in model.layers if legacy._legacy_weights(layer)]
    return {name: legacy._legacy_weights(layer) for name, layer in zip(names, layers)}


def _locate_variables(keras: Any, model: Any, expected: Sequence[ExpectedValue], legacy_file: Path | None) -> list[Any]:
    """The model's variable for each expected value, None where the file's place for it is empty."""
    if not expected:
        return []
    if legacy_file is not None:
        by_group = _legacy_variables(keras, model, legacy_file)
        groups = [by_group.get(item.h5_layer or "", []) for item in expected]
        return [group[item.h5_position] if 0 <= item.h5_position < len(group) else None
                for item, group in zip(expected, groups)]
    store = _store_variables(keras, model)
    return [store.get(item.store_object, {}).get(str(item.store_index)) if item.store_object is not None else None
            for item in expected]


def _where(item: ExpectedValue, legacy: bool) -> str:
    if legacy:
        return f"weight {item.h5_position} of group '{item.h5_layer}' in the .h5 file"
    return f"'{item.store_object}/vars/{item.store_index}' in the weight store"


def _holds(keras: Any, variable: Any, value: np.ndarray | ValueDigest) -> bool:
    """Whether ``variable`` holds exactly ``value`` (compared as float32, as written)."""
    got = to_numpy(keras, variable).astype(np.float32)
    if isinstance(value, ValueDigest):
        return value.matches(got)
    want = value.astype(np.float32)
    return got.shape == want.shape and np.array_equal(got, want)


def _check_variables(keras: Any, expected: Sequence[ExpectedValue], variables: Sequence[Any], legacy: bool) -> int:
    """Check that Keras loaded each expected value into its variable (``_locate_variables``)."""
    for item, variable in zip(expected, variables):
        if variable is None:
            raise SmokeTestError(
                f"{item.label}: not found in the model Keras loaded (looked for {_where(item, legacy)}); "
                "nothing was written (please report this bug)"
            )
        if not _holds(keras, variable, item.value):
            raise SmokeTestError(
                f"{item.label}: Keras loaded values that differ from the ones written; "
                "nothing was written (please report this bug)"
            )
    return len(expected)
