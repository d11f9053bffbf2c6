"""The write side: `set` as one library call.

Read the structure, check every new value with the assignment engine, write an edited
copy beside the destination, smoke-test it with Keras, and only then move it into place
(or stream it to stdout). Nothing is written when any step fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .assign import Assignment, TargetVariable, plan_assignments
from .errors import ConvSurgeonError, UsageError
from .fileio import atomic_output, check_output_dir
from .modelfile import (
    PARSE_TIMEOUT_S,
    Layer,
    ModelSource,
    Variable,
    read_structure,
    read_variables,
    run_bounded,
)
from .naming import format_shape
from .reading import main_kernel, resolve_layer, resolve_variable
from .smoke import ExpectedValue, KerasWarmUp, SmokeReport, import_keras, quiet_stderr, run_smoke_test
from .writer import apply_edits, plan_edits


@dataclass(frozen=True)
class WeightRequest:
    """One variable to set: ``variable`` None means the layer's main kernel."""

    variable: str | None
    source: str | None = None  # SRC: file.npy, file.npz:KEY, file.h5:PATH, -
    init: str | None = None  # SPEC: he_normal, constant:value=0.1, ...

    @property
    def label(self) -> str:
        return self.variable or "kernel"


@dataclass(frozen=True)
class VariableChange:
    layer: str
    variable: str
    shape: tuple[int, ...]
    dtype: str
    origin: str
    cast: str | None
    notes: tuple[str, ...]
    old_l2: float
    new_l2: float
    max_abs_change: float


@dataclass(frozen=True)
class SetReport:
    source: str
    destination: str | None  # None for --dry-run
    layer: Layer
    changes: tuple[VariableChange, ...]
    seed: int | None  # the seed initializers used (drawn when not given)
    seed_drawn: bool
    smoke: SmokeReport | None  # None when skipped or dry-run
    dry_run: bool


@dataclass(frozen=True)
class Destination:
    """Where the edited model goes: a path (replaced atomically) or a binary stream."""

    path: Path | None = None
    stream: BinaryIO | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "<stdout>"


def choose_destination(
    model: str | None, output: str | None, in_place: bool, stdout: BinaryIO
) -> Destination:
    """Apply the contract: the input is only ever overwritten with --in-place."""
    if in_place:
        if model in (None, "-"):
            raise UsageError("--in-place needs a MODEL path; a model on stdin has no file to update")
        if output is not None:
            raise UsageError("give either -o OUT or --in-place, not both")
        return Destination(path=Path(model))
    if output in (None, "-"):
        if output is None and model not in (None, "-"):
            raise UsageError(
                f"say where the edited model goes: -o OUT.keras, -o - for stdout, or "
                f"--in-place to overwrite {model}"
            )
        return Destination(stream=stdout)
    out = Path(output)
    if model not in (None, "-") and out.exists() and os.path.samefile(out, model):
        raise UsageError(
            f"-o {output} is the input model; use --in-place to overwrite it, or choose "
            "another output file"
        )
    check_output_dir(out)
    return Destination(path=out)


def require_requests(requests: list[WeightRequest]) -> None:
    """Naming a layer but no weight is a usage error that lists the weight options."""
    if not requests:
        raise UsageError(
            "no weight to set; give --kernel SRC, --bias SRC, --weight NAME=SRC, "
            "--kernel-init SPEC, --bias-init SPEC or --weight-init NAME=SPEC"
        )


def _targets(layer: Layer) -> list[TargetVariable]:
    conv = layer.conv
    assert conv is not None
    return [TargetVariable(layer.path, v.name, v.shape, v.dtype, conv) for v in layer.variables]


def _variable_for(layer: Layer, request: WeightRequest, label: str) -> Variable | None:
    if request.variable is None:
        return main_kernel(layer, label)
    if request.variable == "bias" and not any(v.name == "bias" for v in layer.variables):
        return None  # the engine explains a bias for a layer built without one
    return resolve_variable(layer, request.variable, label)


def set_weights(
    source: ModelSource,
    layer_query: str,
    requests: list[WeightRequest],
    destination: Destination | None,
    *,
    seed: int | None = None,
    smoke: bool = True,
    input_shapes: list[tuple[int, ...]] | None = None,
    unsafe: bool = False,
    stdin: BinaryIO | None = None,
) -> SetReport:
    """Set variables of one convolution layer; ``destination`` None is a dry run.

    >>> set_weights(ModelSource.from_path("in.keras"), "conv1",
    ...             [WeightRequest(None, source="k.npy")], Destination(Path("out.keras")))
    """
    require_requests(requests)
    structure = read_structure(source)
    if destination is not None and destination.path is not None:
        _check_suffix(destination.path, structure.format)
    layer = resolve_layer(structure, layer_query, source.label)
    if layer.conv is None:
        raise ConvSurgeonError(
            f"{source.label}: layer '{layer.path}' is a {layer.class_name}, not a convolution; "
            "conv-surgeon sets the weights of Conv, ConvTranspose, DepthwiseConv and "
            "SeparableConv layers"
        )
    candidates, seed_used, seed_drawn = _load_candidates(source, layer, requests, seed, stdin)
    assignments = plan_assignments(_targets(layer), candidates)
    by_name = {v.name: v for v in layer.variables}
    edited = [by_name[a.target.name] for a in assignments]
    if destination is None:
        changes = _changes(source, assignments, edited)
        return SetReport(source.label, None, layer, changes, seed_used, seed_drawn, None, True)

    # Every value is valid: TensorFlow can start importing while the file is written.
    warm_up = KerasWarmUp().start() if smoke else None
    try:
        changes = _changes(source, assignments, edited)
        plan = plan_edits(source, {v.dataset: a.value for a, v in zip(assignments, edited)})
        with _staging_file(destination, structure.format) as staged:
            apply_edits(source, plan, staged)
            _verify_written(staged, edited, assignments)
            report = None
            if warm_up is not None:
                warm_up.wait()
                expected = [
                    ExpectedValue(layer.path, v.index, v.name, a.value)
                    for a, v in zip(assignments, edited)
                ]
                report = run_smoke_test(staged, expected, input_shapes=input_shapes, unsafe=unsafe)
            _deliver(staged, destination)
    finally:
        if warm_up is not None:
            # The import silences fd 2: let it finish before any error is printed.
            warm_up.join()
    return SetReport(source.label, destination.label, layer, changes, seed_used, seed_drawn, report, False)


SUFFIXES = {"keras": (".keras",), "h5": (".h5", ".hdf5")}


def _check_suffix(path: Path, fmt: str) -> None:
    """Keras picks its loader by extension: an output must not claim the other format."""
    suffix = path.suffix.lower()
    other = "h5" if fmt == "keras" else "keras"
    if suffix in SUFFIXES[other]:
        kind = "a .keras archive" if fmt == "keras" else "a legacy .h5 file"
        raise UsageError(
            f"-o {path.name}: the model is {kind} and conv-surgeon keeps its format, but "
            f"Keras would read a {suffix} name as the other format; name the output "
            f"{path.with_suffix(SUFFIXES[fmt][0]).name}"
        )


def _load_candidates(
    source: ModelSource,
    layer: Layer,
    requests: list[WeightRequest],
    seed: int | None,
    stdin: BinaryIO | None,
) -> tuple[list[tuple[str, np.ndarray, str]], int | None, bool]:
    from .initializers import draw_initializer, parse_initializer_spec
    from .sources import load_source

    if sum(r.source == "-" for r in requests) > 1:
        raise UsageError("only one weight can be read from stdin ('-')")
    if source.path is None and any(r.source == "-" for r in requests):
        raise UsageError("the model is read from stdin, so no weight can be read from '-' too")
    specs = [(r, parse_initializer_spec(r.init)) for r in requests if r.init is not None]
    seeded = any(spec.takes_seed for _, spec in specs)
    seed_drawn = seeded and seed is None
    if seed_drawn:
        seed = secrets.randbelow(2**31)
    candidates: list[tuple[str, np.ndarray, str]] = []
    for request in requests:
        if request.source is None:
            continue
        variable = _variable_for(layer, request, source.label)
        name = variable.name if variable is not None else request.label
        if request.source == "-":
            loaded = load_source("-", stdin)
        else:
            # An HDF5 source is untrusted input too: bound its parsing like a model's.
            spec = request.source
            loaded = run_bounded(lambda: load_source(spec), PARSE_TIMEOUT_S, spec)
        candidates.append((name, loaded.array, loaded.origin))
    if specs:
        import_keras()
    for request, spec in specs:
        variable = _variable_for(layer, request, source.label)
        if variable is None:
            candidates.append((request.label, np.zeros(0, np.float32), f"init {spec.text}"))
            continue
        # Each variable draws from its own seed (the base seed + its position in the
        # layer), so a kernel and a bias are independent and still reproducible.
        variable_seed = None if seed is None else seed + variable.index
        with quiet_stderr():
            drawn = draw_initializer(spec, variable.shape, variable_seed)
        origin = f"init {spec.text}" + (f" (seed {variable_seed})" if spec.takes_seed else "")
        candidates.append((variable.name, drawn, origin))
    return candidates, seed if seeded else None, seed_drawn


def _changes(
    source: ModelSource, assignments: list[Assignment], edited: list[Variable]
) -> tuple[VariableChange, ...]:
    old_values = read_variables(source, edited)
    return tuple(_change(a, old_values[v.dataset]) for a, v in zip(assignments, edited))


def _change(assignment: Assignment, old: np.ndarray) -> VariableChange:
    new64 = assignment.value.astype(np.float64)
    old64 = old.astype(np.float64)
    target = assignment.target
    return VariableChange(
        layer=target.layer,
        variable=target.name,
        shape=target.shape,
        dtype=target.dtype,
        origin=assignment.origin,
        cast=assignment.cast,
        notes=assignment.notes,
        old_l2=float(np.linalg.norm(old64)),
        new_l2=float(np.linalg.norm(new64)),
        max_abs_change=float(np.max(np.abs(new64 - old64))) if new64.size else 0.0,
    )


@contextmanager
def _staging_file(destination: Destination, fmt: str) -> Iterator[Path]:
    """A temporary file for the edited model: beside the target, or in a temp dir."""
    suffix = ".keras" if fmt == "keras" else ".h5"
    if destination.path is not None:
        # Keras picks its loader by extension, so the staged file keeps the right one.
        with atomic_output(destination.path) as tmp:
            staged = tmp.with_name(tmp.name + suffix)
            try:
                yield staged
                os.replace(staged, tmp)
            finally:
                staged.unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="conv-surgeon-") as folder:
        yield Path(folder) / f"model{suffix}"


def _verify_written(staged: Path, edited: list[Variable], assignments: list[Assignment]) -> None:
    """Read the written datasets back: the bytes on disk are the intended values."""
    values = read_variables(ModelSource.from_path(staged), edited)
    for variable, assignment in zip(edited, assignments):
        got = values[variable.dataset]
        if got.shape != assignment.value.shape or got.tobytes() != assignment.value.tobytes():
            raise RuntimeError(f"read-back of {variable.dataset} differs from what was written")


def _deliver(staged: Path, destination: Destination) -> None:
    if destination.stream is not None:
        with open(staged, "rb") as handle:
            shutil.copyfileobj(handle, destination.stream, 1 << 20)
        destination.stream.flush()


def describe_change(change: VariableChange) -> str:
    return f"{change.layer} {change.variable} {format_shape(change.shape)} {change.dtype} <- {change.origin}"
