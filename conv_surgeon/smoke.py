"""The forward-pass smoke test of a written model. Keras is imported here, lazily.

TensorFlow's start-up chatter comes from C++ before Python logging exists, so the
only way to keep it off the user's terminal is to point file descriptor 2 at
/dev/null around the import, the load and the forward pass (DESIGN.md §3).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SmokeTestError

DEFAULT_SPATIAL = 32


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (C++ logs) and Python warnings; restore both afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_keras() -> Any:
    """Keras with TensorFlow's start-up noise kept off stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_stderr():
        import keras

        keras.utils.disable_interactive_logging()
    return keras


class KerasWarmUp:
    """Import TensorFlow in the background while the model file is being written."""

    def __init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keras-import", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            import_keras()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc

    def start(self) -> KerasWarmUp:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def wait(self) -> None:
        """Join, and raise what the import raised."""
        self.join()
        if self._error is not None:
            raise self._error


@dataclass(frozen=True)
class ExpectedValue:
    """A variable the smoke test checks: where Keras holds it, and its intended value."""

    layer_path: str
    index: int  # position in the Keras layer's `weights`
    name: str
    value: np.ndarray


@dataclass(frozen=True)
class OutputSummary:
    name: str
    shape: tuple[int, ...]
    min: float
    max: float


@dataclass(frozen=True)
class Tolerance:
    """``|edited - original| <= atol + rtol * |original|``, as numpy.allclose."""

    atol: float = 1e-5
    rtol: float = 1e-5


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


def _find_layer(model: Any, path: str) -> Any:
    layer = model
    for name in path.split("/"):
        layer = layer.get_layer(name)
    return layer


def _input_shapes(model: Any, given: list[tuple[int, ...]] | None) -> tuple[list[tuple[int, ...]], list[str]]:
    notes: list[str] = []
    shapes: list[tuple[int, ...]] = []
    symbolic = [tuple(t.shape) for t in model.inputs]
    if given is not None and len(given) != len(symbolic):
        raise SmokeTestError(
            f"--input-shape: the model has {len(symbolic)} input(s) "
            f"{', '.join(str(s) for s in symbolic)}, received {len(given)} shape(s); give "
            "one --input-shape per input, without the batch axis"
        )
    for i, shape in enumerate(symbolic):
        body = shape[1:]
        if given is not None:
            wanted = given[i]
            if len(wanted) == len(shape):
                wanted = wanted[1:]
            if len(wanted) != len(body) or any(
                d is not None and d != w for d, w in zip(body, wanted)
            ):
                raise SmokeTestError(
                    f"--input-shape {tuple(wanted)} does not fit model input {i} "
                    f"{shape} (batch axis excluded: {body}); give the sizes for its None axes"
                )
            shapes.append((1,) + tuple(int(w) for w in wanted))
            continue
        if any(d is None for d in body):
            notes.append(
                f"input {i} {shape}: unknown sizes set to {DEFAULT_SPATIAL}; use --input-shape to choose them"
            )
        shapes.append((1,) + tuple(DEFAULT_SPATIAL if d is None else int(d) for d in body))
    return shapes, notes


def _seeded_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random values an input of ``dtype`` accepts: noise for floats, 0/1 otherwise."""
    if "float" in dtype:
        return rng.standard_normal(shape).astype(np.float32)
    if "int" in dtype or dtype == "bool":
        # Small non-negative integers are valid token ids and lookup indices.
        return rng.integers(0, 2, size=shape).astype(dtype)
    return np.full(shape, "a" if dtype == "string" else 0, dtype=object if dtype == "string" else dtype)


def _load_failure_reason(exc: Exception, message: str) -> str:
    """The cause Keras gives, without the layer config it prints around it."""
    layer = re.search(r"deserializing class '([^']+)'", message)
    cause = message.rsplit("Exception encountered:", 1)[-1].strip()
    if len(cause) > 240:
        cause = cause[:240] + "..."
    prefix = f"{layer.group(1)}: " if layer and "Exception encountered:" in message else ""
    return f"{prefix}{cause}" if cause else type(exc).__name__


def _as_list(outputs: Any) -> list[Any]:
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def _load(keras: Any, path: Path, unsafe: bool, what: str) -> Any:
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; all mean "cannot load"
        message = " ".join(str(exc).split())
        if "safe_mode" in message or "Lambda" in message and "unsafe" in message.lower():
            raise SmokeTestError(
                "the model holds a Lambda layer with Python code, which Keras refuses to "
                "load in safe mode; pass --unsafe if you trust this file, or --no-smoke "
                "to write it without the check"
            ) from None
        raise SmokeTestError(
            f"Keras {keras.__version__} could not load the {what} "
            f"({_load_failure_reason(exc, message)}), so nothing was written; "
            "--no-smoke writes it without the check"
        ) from None


def _forward(keras: Any, model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    try:
        outputs = _as_list(model(inputs if len(inputs) > 1 else inputs[0], training=False))
    except Exception as exc:  # noqa: BLE001
        raise SmokeTestError(
            f"the forward pass failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
            "nothing was written"
        ) from None
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in outputs]


def _loaded_inputs(path: Path, model: Any) -> list[np.ndarray]:
    """Inputs saved by --save-inputs (keys input_0, input_1, ...) or named like the model's."""
    try:
        with np.load(path, allow_pickle=False) as bundle:
            stored = {key: bundle[key] for key in bundle.files}
    except (OSError, ValueError, EOFError) as exc:
        raise SmokeTestError(f"--load-inputs {path}: not a readable .npz file ({exc})") from None
    inputs = []
    for i, tensor in enumerate(model.inputs):
        name = str(getattr(tensor, "name", ""))
        key = f"input_{i}" if f"input_{i}" in stored else name
        if key not in stored:
            raise SmokeTestError(
                f"--load-inputs {path}: no array for model input {i} ('{name}'); expected key "
                f"input_{i} or {name}, found: {', '.join(sorted(stored)) or 'none'}"
            )
        inputs.append(stored[key])
    return inputs


def compare_outputs(name: str, original: np.ndarray, edited: np.ndarray) -> OutputComparison:
    a = original.astype(np.float64).ravel()
    b = edited.astype(np.float64).ravel()
    diff = np.abs(b - a)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return OutputComparison(
        name=name,
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float((diff / np.maximum(np.abs(a), np.finfo(np.float64).tiny)).max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=float(np.dot(a, b) / denominator) if denominator > 0 else float(np.array_equal(a, b)),
    )


def run_smoke_test(
    path: Path,
    expected: list[ExpectedValue],
    *,
    input_shapes: list[tuple[int, ...]] | None = None,
    unsafe: bool = False,
    seed: int = 0,
    reference: Path | None = None,
    expect_same: Tolerance | None = None,
    load_inputs: Path | None = None,
    save_inputs: Path | None = None,
) -> SmokeReport:
    """Load ``path`` with Keras, run one seeded forward pass, check outputs and values.

    With ``reference`` (the original model) both run on the same inputs and their
    outputs are compared; ``expect_same`` turns a difference beyond it into a failure.
    """
    keras = import_keras()
    with quiet_stderr():
        model = _load(keras, path, unsafe, "written model")
        if load_inputs is not None:
            inputs = _loaded_inputs(load_inputs, model)
            shapes, notes = [tuple(a.shape) for a in inputs], [f"inputs from {load_inputs}"]
        else:
            shapes, notes = _input_shapes(model, input_shapes)
            rng = np.random.default_rng(seed)
            dtypes = [str(t.dtype) for t in model.inputs]
            inputs = [_seeded_input(rng, shape, dtype) for shape, dtype in zip(shapes, dtypes)]
        arrays = _forward(keras, model, inputs)
        symbolic = [tuple(t.shape) for t in _as_list(model.outputs)]
        checked = _check_variables(model, expected)
        originals = None
        if reference is not None:
            originals = _forward(keras, _load(keras, reference, unsafe, "original model"), inputs)
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
    if originals is not None:
        comparisons = tuple(
            compare_outputs(f"output {i}", a, b) for i, (a, b) in enumerate(zip(originals, arrays))
        )
        if expect_same is not None:
            _check_tolerance(originals, arrays, comparisons, expect_same)
    if save_inputs is not None:
        from .fileio import npz_bytes, write_atomically

        data = npz_bytes({f"input_{i}": a for i, a in enumerate(inputs)})
        write_atomically(save_inputs, lambda handle: handle.write(data))
        notes.append(f"inputs saved to {save_inputs}")
    return SmokeReport(
        inputs=tuple((f"input {i}", s) for i, s in enumerate(shapes)),
        outputs=tuple(summaries),
        checked_variables=checked,
        notes=tuple(notes),
        comparisons=comparisons,
    )


def _check_tolerance(
    originals: list[np.ndarray],
    edited: list[np.ndarray],
    comparisons: tuple[OutputComparison, ...],
    tolerance: Tolerance,
) -> None:
    for a, b, comparison in zip(originals, edited, comparisons):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        excess = np.abs(b64 - a64) - (tolerance.atol + tolerance.rtol * np.abs(a64))
        if excess.size and excess.max() > 0:
            worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
            raise SmokeTestError(
                f"{comparison.name}: the edited model differs from the original beyond "
                f"atol={tolerance.atol:g}, rtol={tolerance.rtol:g} (max abs error "
                f"{comparison.max_abs:.3g}, at index {tuple(int(i) for i in worst)}: "
                f"{a64[worst]:.6g} -> {b64[worst]:.6g}); nothing was written"
            )


def _check_variables(model: Any, expected: list[ExpectedValue]) -> int:
    for item in expected:
        try:
            layer = _find_layer(model, item.layer_path)
            loaded = np.asarray(layer.weights[item.index].numpy())
        except (ValueError, IndexError, AttributeError) as exc:
            raise SmokeTestError(
                f"layer '{item.layer_path}' {item.name}: not found in the model Keras loaded "
                f"({exc}); nothing was written"
            ) from None
        want = item.value.astype(np.float32)
        got = loaded.astype(np.float32)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise SmokeTestError(
                f"layer '{item.layer_path}' {item.name}: Keras loaded values that differ from "
                "the ones written; nothing was written (please report this bug)"
            )
    return len(expected)
