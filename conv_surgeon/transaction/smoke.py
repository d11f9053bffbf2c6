"""The forward-pass smoke test of a written model. Keras is imported here, lazily.

TensorFlow's start-up chatter comes from C++ before Python logging exists, so the
only way to keep it off the user's terminal is to point file descriptor 2 at
/dev/null around the import, the load and the forward pass (DESIGN.md §3).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ConvSurgeonError, SmokeTestError, UsageError
from ..model.catalogue import conv_class
from ..model.naming import format_shape
from ..store.rewrite import ValueDigest
from ..store.worker import Worker
from .keras_runtime import import_keras, quiet_stderr

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


@dataclass(frozen=True)
class SmokeTarget:
    """What Keras loads for the smoke test."""

    # A .keras/.h5 file, a `model.save(dir, zipped=False)` directory, a keras-hub preset
    # directory, or a weights file (.weights.h5, or the .weights.json map of a sharded save).
    path: Path
    kind: Literal["model", "preset", "weights"] = "model"
    # kind "weights": the model whose architecture to build (a .keras file, a
    # zipped=False directory or a keras-hub preset directory).
    config: Path | None = None

    def __post_init__(self) -> None:
        if (self.kind == "weights") != (self.config is not None):
            raise ValueError(f"SmokeTarget {self.path}: a config is needed for kind 'weights' and only for it")


@dataclass(frozen=True)
class ExpectedValue:
    """A variable the smoke test checks, where the saved file keeps it, and its intended value."""

    label: str  # for messages: "layer 'td/conv2d' kernel"
    value: np.ndarray | ValueDigest  # a digest: a value graph surgery derived in its worker
    # .keras/.weights.h5/sharded/dir/preset: the object's group in the weight store, e.g.
    # "layers/time_distributed/layer" (the variable is "<store_object>/vars/<store_index>").
    store_object: str | None = None
    store_index: int = 0
    h5_layer: str | None = None  # legacy .h5: the top-level group name under model_weights
    h5_position: int = 0  # legacy .h5: position in that group's `weight_names` attribute
    # The edited layer as `inspect` names it ("block_1_depthwise", "td/conv2d"); --compare
    # compares its output. "" compares no layer output for this value.
    layer_path: str = ""


@dataclass(frozen=True)
class OutputSummary:
    name: str
    shape: tuple[int, ...]
    min: float
    max: float


@dataclass(frozen=True)
class Tolerance:
    """``|edited - original| <= atol + rtol * |original|`` for each value, as numpy.allclose;
    with ``float32_sums`` the rounding of float32 sums run in another order is allowed on
    top (:func:`float32_rounding`)."""

    atol: float = 1e-5
    rtol: float = 1e-5
    float32_sums: bool = False


# What "the edit keeps the function" means (fold-bn, prune --zeros): the same outputs but
# for float32 rounding. A user's --atol/--rtol add to it.
FUNCTION_KEPT = Tolerance(atol=0.0, rtol=0.0, float32_sums=True)

# The float32 rounding allowed, per output: ROUNDING_FACTOR * eps32 * sqrt(n) * max|original|,
# n the total length of the model's sums (:func:`sums_length`): roundings of relative size
# eps32 add up like a random walk over the products behind an output, and a normalized
# network keeps its activations near its output's scale. Measured here (prune --zeros and
# fold-bn on ResNet50, MobileNetV2, DenseNet121, EfficientNetB0 and Xception, 32 to 224
# pixels, oneDNN on and off) the errors reach 4.5e-7 of the scale, a factor of 0.024; the
# 2.4e-5 issue 17 reports would need 2 on MobileNetV2 (n = 10,094). A change of 1e-3 of the
# scale would pass only with 26 on DenseNet121 (n = 101,299, the longest sums of the five).
ROUNDING_FACTOR = 4.0
EPS32 = float(np.finfo(np.float32).eps)  # 2**-23


@dataclass(frozen=True)
class ToleranceCheck:
    """How one output of the edited model stood against the tolerance it had to keep."""

    name: str
    tolerance: Tolerance
    max_abs: float  # the largest |edited - original|
    scale: float  # max |original|
    sums: int  # the length of the model's sums (with float32_sums), else 0
    rounding: float  # the float32 rounding allowed, absolute (0 without float32_sums)
    used: float  # the largest |edited - original| / allowed over the values: <= 1 passed

    @property
    def allowance(self) -> str:
        """``atol=0, rtol=0 + float32 rounding (1.1e-04 of the output scale 1.28 over 54,931-term sums)``."""
        text = f"atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g}"
        if not self.tolerance.float32_sums:
            return text
        return (f"{text} + float32 rounding ({float32_rounding(1.0, self.sums):.1e} of the output scale "
                f"{self.scale:.3g} over {self.sums:,}-term sums)")


@dataclass(frozen=True)
class OutputComparison:
    """How far one output of the edited model is from the original's."""

    name: str
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float


@dataclass(frozen=True)
class SmokeReport:
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[OutputSummary, ...]
    checked_variables: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    comparisons: tuple[OutputComparison, ...] = field(default_factory=tuple)
    # --compare: the output of each edited layer that is a layer of the model's graph,
    # named by its layer path, in the order of the edits.
    layer_comparisons: tuple[OutputComparison, ...] = field(default_factory=tuple)
    # --expect-same: each output against the tolerance it kept.
    tolerance_checks: tuple[ToleranceCheck, ...] = field(default_factory=tuple)


class _ForwardFailure(Exception):
    """The model raised while running an input; the message is the short reason."""


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
            ) from None


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
        ) from None


def _cannot_load(keras: Any, exc: Exception, what: str) -> SmokeTestError:
    message = " ".join(_ANSI.sub("", str(exc)).split())
    if "safe_mode" in message or "Lambda" in message and "unsafe" in message.lower():
        return SmokeTestError(
            "the model holds a Lambda layer with Python code, which Keras refuses to "
            "load in safe mode; pass --unsafe if you trust this file, or --no-smoke "
            "to write it without the check"
        )
    unknown = _UNKNOWN_CLASS.search(message)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        return SmokeTestError(
            f"Keras {keras.__version__} could not load the {what}: it uses class '{name}', which "
            "no imported module registers, so nothing was written; pass --import MODULE naming "
            "the module that registers it (with @keras.saving.register_keras_serializable), "
            "or --no-smoke to write it without the check"
        )
    return SmokeTestError(
        f"Keras {keras.__version__} could not load the {what} "
        f"({_load_failure_reason(exc, message)}), so nothing was written; "
        "--no-smoke writes it without the check"
    )


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
            f"Keras {keras.__version__} could not load the {what} {target.path.name} into the "
            f"architecture of {target.config.name} ({_short_error(exc)}), so nothing was written; "
            "--no-smoke writes it without the check"
        ) from None
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


def _forward(keras: Any, model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    try:
        outputs = _as_list(model(inputs if len(inputs) > 1 else inputs[0], training=False))
        return [np.asarray(keras.ops.convert_to_numpy(o)) for o in outputs]
    except Exception as exc:  # noqa: BLE001
        raise _ForwardFailure(_short_error(exc)) from None


def _given_shapes(symbolic: list[tuple[Any, ...]], given: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The --input-shape sizes checked against the model's inputs, with a batch axis of 1.

    A shape the model's inputs cannot take is a mistake on the command line (a usage
    error), not a failure of the written model.
    """
    if len(given) != len(symbolic):
        raise UsageError(
            f"--input-shape: the model has {len(symbolic)} input(s) "
            f"{', '.join(str(s) for s in symbolic)}, received {len(given)} shape(s); give "
            "one --input-shape per input, without the batch axis"
        )
    shapes = []
    for i, shape in enumerate(symbolic):
        body, wanted = shape[1:], tuple(given[i])
        if len(wanted) == len(shape):
            wanted = wanted[1:]
        if not _fits(body, wanted):
            raise UsageError(
                f"--input-shape {tuple(wanted)} does not fit model input {i} "
                f"{shape} (batch axis excluded: {body}); give the sizes for its None axes"
            )
        shapes.append((1,) + tuple(int(w) for w in wanted))
    return shapes


def _fits(symbolic: Sequence[Any], shape: Sequence[int]) -> bool:
    """Whether an array of ``shape`` fits a symbolic shape: same rank, every known size equal."""
    return len(shape) == len(symbolic) and all(d is None or d == s for d, s in zip(symbolic, shape))


def _filled(symbolic: list[tuple[Any, ...]], size: int) -> list[tuple[int, ...]]:
    return [(1,) + tuple(size if d is None else int(d) for d in shape[1:]) for shape in symbolic]


def _ladder(symbolic: list[tuple[Any, ...]], free: list[int]) -> list[int]:
    """The sizes to try for unknown axes: cheapest first, bounded per input."""
    sizes = [LADDER_START]
    while all(
        math.prod(2 * sizes[-1] if d is None else int(d) for d in symbolic[i][1:]) <= MAX_INPUT_ELEMENTS
        for i in free
    ):
        sizes.append(2 * sizes[-1])
    return sizes


def _sizes_text(sizes: list[int]) -> str:
    return ", ".join(map(str, sizes)) if len(sizes) <= 3 else f"{sizes[0]}, {sizes[1]}, ..., {sizes[-1]}"


def _run_seeded(
    keras: Any, model: Any, given: Sequence[tuple[int, ...]] | None, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Inputs the model accepts, its outputs on them, and notes on the sizes chosen.

    Unknown sizes not given are searched: each size of the ladder in turn, until the
    forward pass runs and gives a non-empty output. Each try draws its input from a
    fresh generator, so the inputs found are those ``--input-shape`` would give.
    """
    symbolic = [tuple(t.shape) for t in model.inputs]
    dtypes = [str(t.dtype) for t in model.inputs]

    def attempt(shapes: list[tuple[int, ...]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        rng = np.random.default_rng(seed)
        inputs = [_seeded_input(rng, shape, dtype) for shape, dtype in zip(shapes, dtypes)]
        return inputs, _forward(keras, model, inputs)

    free = [i for i, shape in enumerate(symbolic) if None in shape[1:]]
    if given is not None or not free:
        shapes = _given_shapes(symbolic, given) if given is not None else _filled(symbolic, LADDER_START)
        try:
            inputs, arrays = attempt(shapes)
        except _ForwardFailure as failure:
            if given is None:
                raise SmokeTestError(
                    f"the forward pass failed on the input {_shapes_text(shapes)} ({failure}); "
                    f"nothing was written; {_SKIP_HINT}"
                ) from None
            raise SmokeTestError(
                f"the forward pass failed on the input {_shapes_text(shapes)} given by --input-shape "
                f"({failure}); nothing was written; give sizes that "
                f"{_inputs_text(symbolic, range(len(symbolic)))} accepts with --input-shape SHAPE "
                f"(without the batch axis), {_SKIP_HINT}"
            ) from None
        return inputs, arrays, []
    rejected: list[int] = []
    last = ""
    for size in _ladder(symbolic, free):
        shapes = _filled(symbolic, size)
        try:
            inputs, arrays = attempt(shapes)
        except _ForwardFailure as failure:
            rejected.append(size)
            last = f"on {_shapes_text(shapes)}: {failure}"
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
        return inputs, arrays, notes
    raise SmokeTestError(
        f"the forward pass failed at every input size tried: the unknown sizes of "
        f"{_inputs_text(symbolic, free)} at "
        f"{_sizes_text(rejected)} (last error {last}); nothing was written; give the sizes "
        f"with --input-shape SHAPE (without the batch axis), {_SKIP_HINT}"
    )


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
        if not _fits(expects, array.shape):
            batch = _fits(expects, (1,) + array.shape)
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


def compare_outputs(name: str, original: np.ndarray, edited: np.ndarray) -> OutputComparison:
    a = original.astype(np.float64).ravel()
    b = edited.astype(np.float64).ravel()
    diff = np.abs(b - a)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    # Where the original is 0 the relative error is unbounded: inf, without numpy's warning
    # on the user's terminal (this runs after stderr is restored).
    with np.errstate(over="ignore"):
        relative = diff / np.maximum(np.abs(a), np.finfo(np.float64).tiny)
    return OutputComparison(
        name=name,
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float(relative.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=float(np.dot(a, b) / denominator) if denominator > 0 else float(np.array_equal(a, b)),
    )


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
                        f"{load_inputs} ({failure}); nothing was written") from None
            else:
                inputs, outputs, _ = _run_seeded(keras, model, input_shapes, seed)
        return [tuple(a.shape) for a in inputs], _digest(inputs), outputs

    return Worker(work, REFERENCE_TIMEOUT_S, "the original model")


def _digest(arrays: Sequence[np.ndarray]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


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
) -> SmokeReport:
    """Load ``target`` with Keras, run one seeded forward pass, check outputs and values.

    ``imports`` are modules imported first (they register custom classes). Unknown input
    sizes not given by ``input_shapes`` are searched (see ``_run_seeded``). With
    ``reference`` (the original model) both run on the same inputs and their outputs,
    and the outputs of the edited layers, are compared; ``expect_same`` turns a
    difference of the model's outputs beyond it into a failure. ``reference_run``, the
    original already running in its own process (:func:`start_reference_run`), gives the
    original's outputs in its place when its inputs are the edited model's; it compares the
    outputs only, not the edited layers'.
    """
    edited = target if isinstance(target, SmokeTarget) else SmokeTarget(target)
    # A wrong inputs file is refused before Keras loads anything.
    stored = _read_inputs_file(load_inputs) if load_inputs is not None else None
    keras = import_keras()
    with quiet_stderr():
        _import_modules(imports)
        model = _load_target(keras, edited, unsafe, "written model")
        if load_inputs is not None and stored is not None:
            inputs = _matched_inputs(load_inputs, stored, model)
            notes = [f"inputs from {load_inputs}"]
            try:
                arrays = _forward(keras, model, inputs)
            except _ForwardFailure as failure:
                raise SmokeTestError(
                    f"the forward pass failed on the input {_shapes_text([a.shape for a in inputs])} "
                    f"from --load-inputs {load_inputs} ({failure}); nothing was written; "
                    f"check the arrays of --load-inputs, {_SKIP_HINT}"
                ) from None
        else:
            inputs, arrays, notes = _run_seeded(keras, model, input_shapes, seed)
        symbolic = [tuple(t.shape) for t in _as_list(model.outputs)]
        legacy_file = _legacy_weights_file(edited)
        loaded = _Loaded(model, _locate_variables(model, expected, legacy_file))
        checked = _check_variables(keras, expected, loaded.variables, legacy=legacy_file is not None)
        original = None
        if reference_run is not None:
            shapes_run, digest, outputs_run = reference_run.result()
            if shapes_run == [tuple(a.shape) for a in inputs] and digest == _digest(inputs):
                original = _Original(outputs_run, [], [], True)
        if original is None and reference is not None:
            original = _run_original(
                keras, reference if isinstance(reference, SmokeTarget) else SmokeTarget(reference),
                unsafe, expected, inputs, loaded,
            )
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
    if original is not None:
        comparisons = tuple(
            compare_outputs(f"output {i}", a, b) for i, (a, b) in enumerate(zip(original.outputs, arrays))
        )
        if expect_same is not None:
            tolerance_checks = _check_tolerance(original.outputs, arrays, comparisons, expect_same,
                                                sums_length(model) if expect_same.float32_sums else 0)
        layer_comparisons = tuple(compare_outputs(path, a, b) for path, a, b in original.layers)
        notes += original.notes + _comparison_notes(original, comparisons, layer_comparisons,
                                                            expect_same is not None)
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
    )


# --- the comparison with the original model ----------------------------------------------


def _run_original(
    keras: Any,
    reference: SmokeTarget,
    unsafe: bool,
    expected: Sequence[ExpectedValue],
    inputs: list[np.ndarray],
    edited: _Loaded,
) -> _Original:
    """Run the original model, and the edited layers of both models, on ``inputs``."""
    model = _load_target(keras, reference, unsafe, "original model")
    try:
        outputs = _forward(keras, model, inputs)
    except _ForwardFailure as failure:
        raise SmokeTestError(
            f"the forward pass of the original model failed on the input "
            f"{_shapes_text([a.shape for a in inputs])} the edited model ran on ({failure}); "
            "nothing was written; drop --compare to skip the comparison"
        ) from None
    loaded = _Loaded(model, _locate_variables(model, expected, _legacy_weights_file(reference)))
    changed = any(
        variable is not None and not _holds(keras, variable, item.value)
        for item, variable in zip(expected, loaded.variables)
    )
    layers, notes = _layer_outputs(keras, loaded, edited, expected, inputs)
    return _Original(outputs, layers, notes, changed)


def _layer_outputs(
    keras: Any,
    original: _Loaded,
    edited: _Loaded,
    expected: Sequence[ExpectedValue],
    inputs: list[np.ndarray],
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
        before = _forward(keras, keras.Model(original.model.inputs, [p[1] for p in probes]), inputs)
        after = _forward(keras, keras.Model(edited.model.inputs, [p[2] for p in probes]), inputs)
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


def float32_rounding(scale: float, sums: int) -> float:
    """The error float32 rounding may make in an output of ``scale`` (its max |value|) of
    a model whose sums total ``sums`` terms, when the sums run in another order."""
    return ROUNDING_FACTOR * EPS32 * math.sqrt(sums) * scale


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


def _store_variables(model: Any) -> dict[str, dict[str, Any]]:
    """What ``model.save`` would put in the weight store, by object path, without writing.

    Runs Keras's own saver walk (``saving_lib._save_state``: "layers" first, then
    attributes, class-name counters inside containers, each object once) over a store
    that only records, so paths and variable order are those Keras loads by.
    """
    from keras.src.saving import saving_lib

    class Recorder(saving_lib.H5IOStore):  # type: ignore[misc]  # Keras has no types: its base is Any
        def __init__(self) -> None:  # no file behind it
            self.objects: dict[str, dict[str, Any]] = {}

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
            return self.objects.setdefault(path, {})

    recorder = Recorder()
    saving_lib._save_state(model, weights_store=recorder, assets_store=None, inner_path="", visited_saveables=set())
    return recorder.objects


def _legacy_variables(model: Any, path: Path) -> dict[str, list[Any]]:
    """Each weight group of a legacy .h5 with the variables Keras assigned it by position.

    As ``load_weights_from_hdf5_group``: the groups that list weights pair in order with
    the model's layers that have weights, and a group's ``weight_names`` pair with the
    layer's ``trainable_weights + non_trainable_weights`` (``_legacy_weights``).
    """
    import h5py
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


def _locate_variables(model: Any, expected: Sequence[ExpectedValue], legacy_file: Path | None) -> list[Any]:
    """The model's variable for each expected value, None where the file's place for it is empty."""
    if not expected:
        return []
    if legacy_file is not None:
        by_group = _legacy_variables(model, legacy_file)
        groups = [by_group.get(item.h5_layer or "", []) for item in expected]
        return [group[item.h5_position] if 0 <= item.h5_position < len(group) else None
                for item, group in zip(expected, groups)]
    store = _store_variables(model)
    return [store.get(item.store_object, {}).get(str(item.store_index)) if item.store_object is not None else None
            for item in expected]


def _where(item: ExpectedValue, legacy: bool) -> str:
    if legacy:
        return f"weight {item.h5_position} of group '{item.h5_layer}' in the .h5 file"
    return f"'{item.store_object}/vars/{item.store_index}' in the weight store"


def _holds(keras: Any, variable: Any, value: np.ndarray | ValueDigest) -> bool:
    """Whether ``variable`` holds exactly ``value`` (compared as float32, as written)."""
    got = np.asarray(keras.ops.convert_to_numpy(variable)).astype(np.float32)
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
