"""The smoke test of a written model: load it with Keras, run it on seeded (or loaded)
inputs, check its outputs and the edited values, and compare it with the original; when
Keras 3 cannot load a Keras 2 file, the same check under tf-keras in a process of its own.

The parts are the modules beside this one: :mod:`.loading`, :mod:`.input_shapes`,
:mod:`.running`, :mod:`.variables`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import SmokeTestError
from ..store.worker import Worker
from .checks import (ExpectedValue, OutputComparison, SmokeOptions, SmokeReport, SmokeTarget, ToleranceCheck,
                     compare_outputs)
from .environment import engine_label, import_keras, import_tf_keras, keras_label, quiet_stderr, tf_keras_available
from .input_shapes import declared_shapes, read_inputs_file, run_loaded, run_seeded
from .loading import NoKerasLoads, import_modules, legacy_weights_file, load_target, load_written, written_by_keras2
from .messages import SKIP_HINT, ForwardFailure, shapes_text
from .running import (ONEDNN_NOTE, REFERENCE_TIMEOUT_S, Loaded, Original, ReferenceResult, as_list, check_tolerance,
                      comparison_notes, forward, inputs_digest, layer_outputs, output_summaries, sums_length)
from .torch_reference import check_reference, reference_comparison
from .variables import check_variables, holds, locate_variables


def _as_target(path: Path | SmokeTarget) -> SmokeTarget:
    """A path as what Keras loads: a model file or folder."""
    return path if isinstance(path, SmokeTarget) else SmokeTarget(path)


def run_smoke_test(
    target: Path | SmokeTarget,
    options: SmokeOptions,
    *,
    expected: Sequence[ExpectedValue] = (),
    original: Path | SmokeTarget | None = None,
    written_by: str | None = None,
    reference: Worker[ReferenceResult] | None = None,
    runtime: Literal["keras", "tf-keras"] = "keras",
) -> SmokeReport:
    """Load ``target`` with Keras, run one seeded forward pass, check outputs and ``expected`` values.

    ``options.imports`` are modules imported first (they register custom classes). Each
    input's shape comes from the file's config first; unknown sizes not given by
    ``options.input_shapes`` are searched (:func:`.input_shapes.run_seeded`). With
    ``options.compare`` the ``original`` (unedited) model runs on the same inputs and the
    outputs, and the outputs of the edited layers, are compared; ``options.expect_same``
    turns a difference of the model's outputs beyond it into a failure. ``reference``, the
    original already running in its own process (:func:`.running.start_reference_run`),
    gives the original's outputs in its place when its inputs are the edited model's; it
    compares the outputs only, not the edited layers'.

    ``options.reference`` (``--reference``) runs a PyTorch model on the same inputs and
    measures the outputs against its (:mod:`.torch_reference`); ``expect_same`` holds for
    that comparison too.

    When Keras cannot load the written model, ``original`` tells whether the edit is the
    cause: if Keras 3 cannot load the original either and the file was ``written_by``
    Keras 2, the whole check runs again under tf-keras in a process of its own
    (``runtime`` "tf-keras" is that process's).
    """
    if options.compare and original is None:
        raise ValueError("run_smoke_test: options.compare needs the original model to compare with")
    edited = _as_target(target)
    unedited = _as_target(original) if original is not None else None
    load_inputs, expect_same = options.load_inputs, options.expect_same
    # A wrong inputs file is refused before Keras loads anything.
    stored = read_inputs_file(load_inputs) if load_inputs is not None else None
    keras = import_tf_keras() if runtime == "tf-keras" else import_keras()
    engine_notes: set[str] = set()
    try:
        with quiet_stderr():
            import_modules(options.imports)
            model = load_written(keras, edited, unedited, options.unsafe)
    except NoKerasLoads as failure:
        if reference is not None:
            reference.discard()
        keras2 = runtime == "keras" and written_by_keras2(written_by)
        if not keras2 or not tf_keras_available():
            raise NoKerasLoads(failure.attempts, written_by, tf_keras_hint=keras2).with_detail(failure.detail) from None
        return _checked_by_tf_keras(failure, written_by, dict(
            target=edited, options=options, expected=list(expected), original=unedited, written_by=written_by))
    with quiet_stderr():
        def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
            return forward(keras, model, arrays, engine_notes)

        if load_inputs is not None and stored is not None:
            fed = run_loaded(load_inputs, stored, model, run)
        else:
            fed = run_seeded(model, run, options.input_shapes, options.input_seed, declared_shapes(edited))
        inputs, arrays, notes = fed.inputs, fed.outputs, list(fed.notes)
        symbolic = [tuple(t.shape) for t in as_list(model.outputs)]
        legacy_file = legacy_weights_file(edited)
        loaded = Loaded(model, locate_variables(keras, model, expected, legacy_file))
        checked = check_variables(keras, expected, loaded.variables, legacy=legacy_file is not None)
        original_run = None
        if reference is not None:
            shapes_run, digest, outputs_run = reference.result()
            if shapes_run == [tuple(a.shape) for a in inputs] and digest == inputs_digest(inputs):
                original_run = Original(outputs_run, [], [], True)
        if original_run is None and options.compare and unedited is not None:
            original_run = _run_original(keras, unedited, options.unsafe, expected, inputs, loaded, engine_notes)
        engine = engine_label(keras)
        if engine.endswith("oneDNN on"):
            engine_notes.add(ONEDNN_NOTE)
    shapes = [tuple(a.shape) for a in inputs]
    summaries = output_summaries(arrays, symbolic)
    comparisons: tuple[OutputComparison, ...] = ()
    layer_comparisons: tuple[OutputComparison, ...] = ()
    tolerance_checks: tuple[ToleranceCheck, ...] = ()
    if original_run is not None:
        comparisons = tuple(
            compare_outputs(f"output {i}", a, b) for i, (a, b) in enumerate(zip(original_run.outputs, arrays))
        )
        if expect_same is not None:
            tolerance_checks = check_tolerance(original_run.outputs, arrays, comparisons, expect_same,
                                               sums_length(model) if expect_same.float32_sums else 0)
        layer_comparisons = tuple(compare_outputs(path, a, b) for path, a, b in original_run.layers)
        notes += original_run.notes + comparison_notes(original_run, comparisons, layer_comparisons,
                                                       expect_same is not None)
    torch_check = None
    if options.reference is not None:
        torch_check = reference_comparison(model, options.reference, inputs, arrays, fed.origins)
        if expect_same is not None:
            torch_check = check_reference(torch_check, expect_same)
    notes += sorted(engine_notes)
    save_inputs = options.save_inputs
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
        input_origins=tuple(fed.origins),
        reference=torch_check,
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
                             f"nothing was written; {SKIP_HINT}") from None
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


def _run_original(
    keras: Any,
    reference: SmokeTarget,
    unsafe: bool,
    expected: Sequence[ExpectedValue],
    inputs: list[np.ndarray],
    edited: Loaded,
    engine_notes: set[str],
) -> Original:
    """Run the original model, and the edited layers of both models, on ``inputs``."""
    model = load_target(keras, reference, unsafe, "original model")
    try:
        outputs = forward(keras, model, inputs, engine_notes)
    except ForwardFailure as failure:
        raise SmokeTestError(
            f"the forward pass of the original model failed on the input "
            f"{shapes_text([a.shape for a in inputs])} the edited model ran on ({failure}); "
            "nothing was written; drop --compare to skip the comparison"
        ).with_detail(failure.detail) from None
    loaded = Loaded(model, locate_variables(keras, model, expected, legacy_weights_file(reference)))
    changed = any(
        variable is not None and not holds(keras, variable, item.value)
        for item, variable in zip(expected, loaded.variables)
    )
    layers, notes = layer_outputs(keras, loaded, edited, expected, inputs, engine_notes)
    return Original(outputs, layers, notes, changed)
