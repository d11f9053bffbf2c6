"""What graph surgery (``fold-bn``, ``prune``) reads from a model file before it rewrites
it: the config, and the checks that the weight store sits where the config says."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Sequence

from ..errors import ModelFileError
from ..model.graph import container_keys, model_graphs
from ..model.structure import Layer, ModelStructure, Variable
from ..store.hdf5 import attr_list, damaged_store_is_an_error
from ..store.provenance import EditRecord, read_history
from ..store.rewrite import ValueDigest
from ..store.source import ModelSource, open_store
from ..store.worker import PARSE_TIMEOUT_S, Worker, run_bounded
from ..transaction.keras_runtime import KerasWarmUp
from ..transaction.smoke import ReferenceResult, SmokeTarget, start_reference_run
from ..transaction.transaction import WriteOptions, Written, WrittenValue, write_transaction


def format_name(structure: ModelStructure) -> str:
    return {"h5": "legacy .h5 file", "weights": "weights-only file", "sharded": "sharded weights map",
            "dir": "saved folder", "preset": "keras-hub preset"}.get(structure.format, structure.format)


def read_config(source: ModelSource, command: str) -> tuple[dict[str, Any], list[str] | None]:
    """The model config, and a legacy .h5's `layer_names` (None for a Keras 3 store)."""
    def work() -> tuple[dict[str, Any] | None, list[str] | None]:
        with damaged_store_is_an_error(source.label), open_store(source) as store:
            if not store.legacy:
                return store.config, None
            root = store.h5s[0]["model_weights"]
            return store.config, attr_list(root, "layer_names")

    config, names = run_bounded(work, PARSE_TIMEOUT_S, source.label)
    if config is None:
        raise ModelFileError(f"{source.label}: holds no model config; {command} needs the model's graph")
    return config, names


def check_store_places(config: dict[str, Any], by_path: dict[str, Layer], label: str, command: str) -> None:
    """Every layer with weights sits where the config's order says Keras put it: the
    rewrite moves objects by that rule, so a store that breaks it is refused."""
    for graph in model_graphs(config):
        keys = container_keys(graph, [layer.name for layer in graph.layers])
        for name, key in keys.items():
            layer = by_path.get(graph.layer_path(name))
            expected = "/".join(p for p in (graph.store_path, "layers", key) if p)
            if layer is not None and layer.store_path != expected:
                raise ModelFileError(
                    f"{label}: layer '{layer.path}' is stored at '{layer.store_path}', not at "
                    f"'{expected}' where Keras would look for it; {command} cannot rewrite this store"
                )


def store_layer(by_path: dict[str, Layer], path: str, label: str) -> Layer:
    """The layer of the store at ``path``, which the config says has weights."""
    layer = by_path.get(path)
    if layer is None:
        raise ModelFileError(f"{label}: layer '{path}' of the config has no weights in the store")
    return layer


def layer_variable(layer: Layer, name: str) -> Variable | None:
    return next((v for v in layer.variables if v.name == name), None)


def write_rewritten(
    source: ModelSource, structure: ModelStructure, prepare: Callable[[Path], dict[str, ValueDigest]],
    stage: Callable[[Path, Path, list[dict[str, Any]]], None], written: Sequence[WrittenValue],
    derived: Sequence[tuple[Layer, Variable]], records: list[EditRecord], options: WriteOptions,
    step: Callable[[str], None] | None,
) -> Written:
    """Write a model whose graph changed through the write transaction.

    ``prepare(path)`` writes the new weight store (or file) from the untrusted input, in a
    bounded worker, and returns the digest of each value it derived there, by dataset;
    ``stage(prepared, path, history)`` makes the model to deliver from it. ``written`` are
    the new values known here, ``derived`` the variables (placed in the new store) whose
    values the worker derives: the smoke test checks every one of both.
    The bounded reads fork, so they all start before TensorFlow's import (a thread) does;
    the rewrite's worker then runs beside that import.
    """
    recorded = read_history(source)
    with tempfile.TemporaryDirectory(prefix="conv-surgeon-") as folder:
        prepared = Path(folder) / "prepared"
        worker = Worker(lambda: prepare(prepared), PARSE_TIMEOUT_S, source.label)
        reference = _reference_run(source, options)
        warm_up = KerasWarmUp().start() if options.smoke.enabled else None
        try:
            digests = worker.result()
            values = [*written, *(WrittenValue(layer, variable, digests[variable.dataset], compare_layer=False)
                                  for layer, variable in derived)]
            return write_transaction(source, structure, lambda path, history: stage(prepared, path, history),
                                     values, records, options, step, history=recorded, warm_up=warm_up,
                                     reference_run=reference)
        finally:
            if reference is not None:
                reference.discard()  # it has answered, or is no longer wanted
            if warm_up is not None:
                warm_up.join()  # the import silences fd 2: let it finish before any error is printed


def _reference_run(source: ModelSource, options: WriteOptions) -> Worker[ReferenceResult] | None:
    """The original model's forward pass for --compare, started in its own process before
    any thread, so that it runs beside the rest of the write (for a model file Keras can
    open by its name; a model from stdin is compared after the edited one).

    Not when this process has imported TensorFlow already (a notebook that built the model,
    then called ``cs.fold_bn``): TensorFlow's threads hold locks a forked child never gets
    back, and the child's forward pass hangs. The original is then run here, after the
    edited one."""
    checks = options.smoke
    if not (checks.enabled and checks.compare) or source.path is None \
            or not source.path.name.lower().endswith((".keras", ".h5", ".hdf5")) \
            or "tensorflow" in sys.modules:
        return None
    return start_reference_run(SmokeTarget(source.path), input_shapes=checks.input_shapes,
                               unsafe=checks.unsafe, load_inputs=checks.load_inputs, imports=checks.imports)
