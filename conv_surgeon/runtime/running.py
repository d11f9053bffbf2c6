"""Running the models a check loads: the forward pass (through XLA for a channels_first
model), the outputs of the edited layers, the original model in a process of its own for
``--compare``, and what the outputs say: their summaries, the notes when the inputs cannot
show the edit, and the tolerance the edited model's outputs must keep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SmokeTestError
from ..model.catalogue import conv_class
from ..model.naming import format_shape
from ..store.worker import Worker
from .checks import (ExpectedValue, OutputComparison, OutputSummary, SmokeOptions, SmokeTarget, Tolerance,
                     ToleranceCheck, float32_rounding)
from .environment import import_keras, quiet_stderr
from .input_shapes import declared_shapes, matched_inputs, read_inputs_file, run_seeded
from .loading import import_modules, load_target
from .messages import ForwardFailure, keras_traceback, short_error

# TensorFlow's CPU convolutions without oneDNN take channels_last data only; XLA compiles
# channels_first ones with its own kernels.
_CHANNELS_LAST_ONLY = "only supports the NHWC tensor format"
ONEDNN_NOTE = ("TensorFlow was imported with its oneDNN CPU kernels on before this check, and they "
               "compute some convolutions wrong on some CPUs: set TF_ENABLE_ONEDNN_OPTS=0 before "
               "importing TensorFlow to check without them")
XLA_NOTE = ("TensorFlow's CPU kernels without oneDNN run channels_last convolutions only: "
            "the model ran compiled by XLA")


def as_list(outputs: Any) -> list[Any]:
    """A model's outputs as a list: a dict's values, a list or tuple, or the one output."""
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def to_numpy(keras: Any, value: Any) -> np.ndarray:
    """A tensor or variable of either Keras as a numpy array (tf-keras has no ``keras.ops``)."""
    convert = getattr(getattr(keras, "ops", None), "convert_to_numpy", None)
    return np.asarray(convert(value) if convert is not None else value)


def forward(keras: Any, model: Any, inputs: list[np.ndarray], notes: set[str] | None = None) -> list[np.ndarray]:
    """The model's outputs on ``inputs``; a channels_first model runs through XLA (and
    ``notes`` hears of it)."""
    feed = inputs if len(inputs) > 1 else inputs[0]
    try:
        outputs = as_list(model(feed, training=False))
    except Exception as exc:  # noqa: BLE001
        if _CHANNELS_LAST_ONLY not in str(exc):
            raise ForwardFailure(short_error(exc), keras_traceback(exc)) from None
        import tensorflow as tf

        try:
            outputs = as_list(tf.function(lambda x: model(x, training=False), jit_compile=True)(feed))
        except Exception as xla_exc:  # noqa: BLE001
            raise ForwardFailure(short_error(xla_exc), keras_traceback(xla_exc)) from None
        if notes is not None:
            notes.add(XLA_NOTE)
    return [to_numpy(keras, o) for o in outputs]


def output_summaries(arrays: Sequence[np.ndarray], symbolic: Sequence[tuple[Any, ...]]) -> list[OutputSummary]:
    """Each output's shape and range; a SmokeTestError for an output of another shape than
    the one Keras built (``symbolic``) or with NaN or Inf values."""
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
    return summaries


# The original model run in a process of its own: (input shapes, input digest, outputs).
ReferenceResult = tuple[list[tuple[int, ...]], str, list[np.ndarray]]
REFERENCE_TIMEOUT_S = 3600.0  # a bound for a hung process, not for a slow model


def start_reference_run(reference: SmokeTarget, options: SmokeOptions) -> Worker[ReferenceResult]:
    """Run the original model for ``--compare`` in a forked process, beside the edited one:
    its load and forward pass then cost no time of their own on a machine with two cores.

    Fork before any thread starts (before :class:`.environment.KerasWarmUp`): the child
    imports TensorFlow itself. Given the same ``options``, it draws the same seeded inputs
    as :func:`.smoke.run_smoke_test` (or reads ``options.load_inputs``), and
    :func:`.smoke.run_smoke_test` checks that they are the same.
    """
    load_inputs = options.load_inputs

    def work() -> ReferenceResult:
        keras = import_keras()
        with quiet_stderr():
            import_modules(options.imports)
            model = load_target(keras, reference, options.unsafe, "original model")
            if load_inputs is not None:
                inputs = matched_inputs(load_inputs, read_inputs_file(load_inputs), model)
                try:
                    outputs = forward(keras, model, inputs)
                except ForwardFailure as failure:
                    raise SmokeTestError(
                        f"the forward pass of the original model failed on the inputs of --load-inputs "
                        f"{load_inputs} ({failure}); nothing was written").with_detail(failure.detail) from None
            else:
                run = run_seeded(model, lambda arrays: forward(keras, model, arrays), options.input_shapes,
                                 options.input_seed, declared_shapes(reference))
                inputs, outputs = run.inputs, run.outputs
        return [tuple(a.shape) for a in inputs], inputs_digest(inputs), outputs

    return Worker(work, REFERENCE_TIMEOUT_S, "the original model")


def inputs_digest(arrays: Sequence[np.ndarray]) -> str:
    """A SHA-256 of the arrays' bytes: whether the reference run fed the same inputs."""
    import hashlib

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# --compare counts values within this fraction of an output's largest magnitude as equal:
# a few float32 roundings, far below the effect of any edit worth checking.
INDISTINCT = 1e-6


class _NotProbed(Exception):
    """An edited layer whose output cannot be computed alone; the message says why."""


@dataclass(frozen=True)
class Loaded:
    """A model Keras loaded, with its variable for each expected value (None where absent)."""

    model: Any
    variables: list[Any]


@dataclass(frozen=True)
class Original:
    """What --compare learnt from the original model on the edited model's inputs."""

    outputs: list[np.ndarray]
    layers: list[tuple[str, np.ndarray, np.ndarray]]  # (layer path, original output, edited output)
    notes: list[str]  # the edited layers not compared, and why
    changed: bool  # some edited variable holds another value than in the original


def layer_outputs(
    keras: Any,
    original: Loaded,
    edited: Loaded,
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
        before = forward(keras, keras.Model(original.model.inputs, [p[1] for p in probes]), inputs, engine_notes)
        after = forward(keras, keras.Model(edited.model.inputs, [p[2] for p in probes]), inputs, engine_notes)
    except ForwardFailure as failure:
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
        raise _NotProbed(f"it has no output in the model's graph ({short_error(exc)})") from None
    if isinstance(output, (list, tuple, dict)):
        raise _NotProbed(f"it has {len(output)} outputs")
    return output


def comparison_notes(
    original: Original, comparisons: Sequence[OutputComparison], layers: Sequence[OutputComparison],
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


def check_tolerance(
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
