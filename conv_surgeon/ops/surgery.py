"""The write side: `set` as one library call.

Read the structure, check every new value with the assignment engine, write an edited
copy beside the destination, smoke-test it with Keras, and only then move it into place
(or stream it to stdout). Nothing is written when any step fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .. import __version__
from ..edits.assign import Assignment, plan_assignments
from ..edits.targets import TargetVariable
from ..model.catalogue import conv_class, stored_name_matches
from ..errors import AssignmentError, ConvSurgeonError, PlanError, UsageError
from ..store.fileio import atomic_output, check_output_dir, same_file
from ..edits import LAYOUTS, Layout
from ..edits.layout import from_torch, torch_axis_names, torch_shape, variable_role
from ..store.source import FOLDER_FORMATS, ModelSource
from ..store.hdf5 import HDF5_MAGIC
from ..store.worker import PARSE_TIMEOUT_S, run_bounded
from ..model.structure import (
    Layer,
    ModelStructure,
    Variable,
    read_own_variables,
    read_structure,
    read_variables,
)
from ..model.naming import format_shape
from ..edits import check_seed
from ..edits.initializers import draw_seed
from ..edits.plan import Plan
from ..store.provenance import EditRecord, make_record, read_history
from ..edits.targets import layer_targets
from ..model.selection import main_kernel, resolve_layer, resolve_variable
from ..transaction.keras_runtime import KerasWarmUp
from ..transaction.smoke import (
    ExpectedValue,
    SmokeReport,
    SmokeTarget,
    Tolerance,
    run_smoke_test,
)
from ..store.writer import EditPlan, apply_edits, commit_folder, plan_edits, stage_folder

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class WeightRequest:
    """One variable to set: ``variable`` None means the layer's main kernel."""

    variable: str | None
    source: str | None = None  # SRC: file.npy, file.npz:KEY, file.h5:PATH, -
    init: str | None = None  # SPEC: he_normal, constant:value=0.1, ...
    array: np.ndarray | None = field(default=None, compare=False)  # already loaded (bundles)
    origin: str | None = None  # what to call ``array`` in reports
    sha256: str | None = None  # of the file ``array`` came from, for the provenance record

    @property
    def label(self) -> str:
        return self.variable or "kernel"


@dataclass(frozen=True)
class Donor:
    """Another model to copy a layer's variables from (``--from A.keras[:LAYER]``)."""

    source: ModelSource
    layer: str | None = None  # default: the target layer's name


@dataclass(frozen=True)
class LayerEdit:
    """Everything to set in one layer; ``place`` says where a plan asked for it."""

    layer: str
    requests: tuple[WeightRequest, ...] = ()
    layout: Layout = "keras"
    donor: Donor | None = None
    place: str | None = None


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
    layers: tuple[Layer, ...]
    changes: tuple[VariableChange, ...]
    seed: int | None  # the base seed initializers used (drawn when not given)
    seed_drawn: bool
    smoke: SmokeReport | None  # None when skipped or dry-run
    dry_run: bool
    smoke_skipped: str | None = None  # why no smoke test ran though it was not turned off

    @property
    def layer(self) -> Layer:
        """The edited layer of a one-layer edit (the first one otherwise)."""
        return self.layers[0]


@dataclass(frozen=True)
class Destination:
    """Where the edited model goes: a path (replaced atomically) or a binary stream."""

    path: Path | None = None
    stream: BinaryIO | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "<stdout>"


@dataclass(frozen=True)
class SmokeOptions:
    """How the written model is checked; ``enabled`` False skips Keras entirely."""

    enabled: bool = True
    input_shapes: list[tuple[int, ...]] | None = None
    unsafe: bool = False
    compare: bool = False  # also run the original model and compare outputs
    expect_same: Tolerance | None = None
    load_inputs: Path | None = None
    save_inputs: Path | None = None
    imports: tuple[str, ...] = ()  # modules that register custom layers, imported before Keras loads


NO_SMOKE = SmokeOptions(enabled=False)


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
    if model not in (None, "-") and same_file(out, model):
        raise UsageError(
            f"-o {output} is the input model; use --in-place to overwrite it, or choose "
            "another output file"
        )
    if model not in (None, "-") and Path(model).is_dir():
        if not out.parent.is_dir():
            raise ConvSurgeonError(f"{out}: output directory {out.parent} does not exist; create it first")
    else:
        check_output_dir(out)
    return Destination(path=out)


def require_requests(requests: list[WeightRequest], donor: Donor | None = None) -> None:
    """Naming a layer but no weight is a usage error that lists the weight options."""
    if not requests and donor is None:
        raise UsageError(
            "no weight to set; give --kernel SRC, --bias SRC, --weight NAME=SRC, "
            "--kernel-init SPEC, --bias-init SPEC, --weight-init NAME=SPEC or --from MODEL"
        )


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
    stdin: BinaryIO | None = None,
    layout: Layout = "keras",
    donor: Donor | None = None,
    checks: SmokeOptions | None = None,
    command: Sequence[str] = (),
) -> SetReport:
    """Set variables of one convolution layer; ``destination`` None is a dry run.

    >>> set_weights(ModelSource.from_path("in.keras"), "conv1",
    ...             [WeightRequest(None, source="k.npy")], Destination(Path("out.keras")),
    ...             checks=NO_SMOKE)
    """
    require_requests(requests, donor)
    edit = LayerEdit(layer_query, tuple(requests), layout, donor)
    return edit_model(source, [edit], destination, seed=seed, checks=checks, stdin=stdin,
                      command=command)


@dataclass(frozen=True)
class _PlannedLayer:
    layer: Layer
    assignments: list[Assignment]


def edit_model(
    source: ModelSource,
    edits: list[LayerEdit],
    destination: Destination | None,
    *,
    seed: int | None = None,
    checks: SmokeOptions | None = None,
    stdin: BinaryIO | None = None,
    progress: Progress | None = None,
    command: Sequence[str] = (),
) -> SetReport:
    """Apply ``edits`` (one per layer) with one read, one write and one smoke test.

    Every edit is checked before anything is written. With one edit its error is
    raised as it is; with several, one :class:`PlanError` lists every problem.
    ``progress(done, total, step)`` hears of each edit checked, the write and the smoke test.
    The written model records what was done (``command`` and every edit's source) in
    its history, after the records already there.
    """
    checks = checks or SmokeOptions()
    total = len(edits) + 1 + (1 if checks.enabled else 0)

    def step(done: int, what: str) -> None:
        if progress is not None:
            progress(done, total, what)

    structure = read_structure(source)
    if destination is not None and destination.path is not None and not (
            source.path is not None and same_file(destination.path, source.path)):
        _check_suffix(destination.path, structure.format)
    if seed is not None:
        seed = check_seed(seed)
    seeded = _needs_seed(edits)
    seed_drawn = seeded and seed is None
    if seed_drawn:
        seed = draw_seed()
    planned: list[_PlannedLayer] = []
    records: list[EditRecord] = []
    problems: list[tuple[LayerEdit, ConvSurgeonError]] = []
    seen: dict[str, LayerEdit] = {}
    for edit in edits:
        try:
            layer = _resolve_conv_layer(structure, edit.layer, source.label)
            if layer.path in seen:
                raise ConvSurgeonError(
                    f"layer '{layer.path}' is edited twice ({_place(seen[layer.path])} and "
                    f"{_place(edit)}); merge the two edits"
                )
            seen[layer.path] = edit
            candidates, notes, sources = _load_candidates(source, layer, edit, seed, stdin)
            try:
                assignments = plan_assignments(layer_targets(layer), candidates)
            except AssignmentError as exc:
                if edit.donor is None:
                    raise
                raise AssignmentError(f"{source.label} <- {edit.donor.source.label}: {exc}") from None
            assignments = [
                replace(a, notes=a.notes + (notes[a.target.name],)) if a.target.name in notes else a
                for a in assignments
            ]
            planned.append(_PlannedLayer(layer, assignments))
            records += [
                EditRecord(layer=layer.path, variable=a.target.name, layout=edit.layout,
                           source=sources[a.target.name])  # type: ignore[typeddict-item]
                for a in assignments
            ]
        except ConvSurgeonError as exc:
            if len(edits) == 1:
                raise
            problems.append((edit, exc))
        step(len(planned) + len(problems), f"checked {_place(edit)}")
    if problems:
        lines = tuple(f"{_place(edit)}: {exc}" for edit, exc in problems)
        raise PlanError(
            f"{source.label}: {len(problems)} of {len(edits)} edits are invalid, nothing was "
            "written:\n" + "\n".join(f"  {line}" for line in lines),
            lines,
        )
    edited = [
        (layer_plan.layer, a, _variable_named(layer_plan.layer, a.target.name))
        for layer_plan in planned
        for a in layer_plan.assignments
    ]
    layers = tuple(p.layer for p in planned)
    if destination is None:
        changes = _changes(source, edited)
        return SetReport(source.label, None, layers, changes, seed if seeded else None,
                         seed_drawn, None, True)

    # Everything that reads the (untrusted) input runs in bounded worker processes, so it
    # is done before TensorFlow starts importing in a thread: fork and threads mix badly.
    changes = _changes(source, edited)
    plan = plan_edits(source, {v.dataset: a.value for _, a, v in edited})
    history = read_history(source) + [make_record(list(command), records, __version__,
                                                  imports=list(checks.imports))]
    smoke_target = _smoke_kind(structure, source, checks)
    # Every value is valid: TensorFlow can start importing while the file is written.
    warm_up = KerasWarmUp().start() if smoke_target is not None else None
    try:
        with _staged(source, structure, plan, destination, history) as (staged, load_path, commit):
            _verify_written(staged, structure, edited)
            step(len(edits) + 1, "written")
            report = None
            if warm_up is not None and smoke_target is not None:
                warm_up.wait()
                expected = [_expected(structure, layer, v, a.value) for layer, a, v in edited]
                with _reference_file(source, structure.format, checks.compare) as reference:
                    report = run_smoke_test(
                        smoke_target(load_path), expected, input_shapes=checks.input_shapes,
                        unsafe=checks.unsafe,
                        reference=smoke_target(reference) if reference is not None else None,
                        expect_same=checks.expect_same, load_inputs=checks.load_inputs,
                        save_inputs=checks.save_inputs, imports=checks.imports,
                    )
                step(total, "smoke test passed")
            commit()
    finally:
        if warm_up is not None:
            # The import silences fd 2: let it finish before any error is printed.
            warm_up.join()
    skipped = _smoke_skipped(checks, smoke_target is not None)
    return SetReport(source.label, destination.label, layers, changes, seed if seeded else None,
                     seed_drawn, report, False, skipped)


def _smoke_kind(structure: ModelStructure, source: ModelSource,
                checks: SmokeOptions) -> Callable[[Path], SmokeTarget] | None:
    """How Keras loads the written model, or None when it cannot be smoke-tested."""
    if not checks.enabled:
        return None
    if structure.format in ("weights", "sharded"):
        if source.config is None:
            return None
        config = source.config
        return lambda path: SmokeTarget(path, "weights", config)
    kind = "preset" if structure.format == "preset" else "model"
    return lambda path: SmokeTarget(path, kind)  # type: ignore[arg-type]


def _smoke_skipped(checks: SmokeOptions, ran: bool) -> str | None:
    if ran or not checks.enabled:
        return None
    return ("no smoke test: a weights-only file holds no model to run; pass --config MODEL "
            "(the .keras, .h5, folder or preset it belongs to) to smoke-test it")


def _expected(structure: ModelStructure, layer: Layer, variable: Variable, value: np.ndarray) -> ExpectedValue:
    label = f"layer '{layer.path}' {variable.name}"
    if structure.legacy:
        top = variable.dataset.split("/")
        top_layer = top[1] if top[0] == "model_weights" else top[0]
        return ExpectedValue(label, value, h5_layer=top_layer, h5_position=variable.position)
    return ExpectedValue(label, value, store_object=layer.store_path,
                         store_index=int(variable.dataset.rpartition("/")[2]))


def apply_plan(
    source: ModelSource,
    plan: Plan,
    destination: Destination | None,
    *,
    checks: SmokeOptions | None = None,
    progress: Progress | None = None,
    command: Sequence[str] = (),
) -> SetReport:
    """Every edit of a plan, all or nothing, with one write and one smoke test."""
    edits = [
        LayerEdit(
            edit.layer,
            tuple(
                WeightRequest(None if w.variable == "kernel" else w.variable, source=w.source, init=w.init)
                for w in edit.weights
            ),
            edit.layout,
            place=edit.place,
        )
        for edit in plan.edits
    ]
    return edit_model(source, edits, destination, seed=plan.seed, checks=checks, progress=progress,
                      command=command)


def _place(edit: LayerEdit) -> str:
    return edit.place or f"layer '{edit.layer}'"


def _needs_seed(edits: list[LayerEdit]) -> bool:
    """Whether any initializer takes a seed; bad specs are reported later, with their place."""
    from ..edits.initializers import parse_initializer_spec

    def takes_seed(spec: str) -> bool:
        try:
            return parse_initializer_spec(spec).takes_seed
        except ConvSurgeonError:
            return False

    return any(takes_seed(r.init) for edit in edits for r in edit.requests if r.init is not None)


def _resolve_conv_layer(structure: ModelStructure, query: str, label: str) -> Layer:
    layer = resolve_layer(structure, query, label)
    if layer.conv is None:
        raise ConvSurgeonError(
            f"{label}: layer '{layer.path}' is a {layer.class_name}, not a convolution; "
            "conv-surgeon sets the weights of Conv, ConvTranspose, DepthwiseConv and "
            "SeparableConv layers"
        )
    return layer


def _variable_named(layer: Layer, name: str) -> Variable:
    return next(v for v in layer.variables if v.name == name)


SUFFIXES: dict[str, tuple[str, ...]] = {
    "keras": (".keras",), "h5": (".h5", ".hdf5"), "weights": (".weights.h5", ".h5", ".hdf5"),
    "sharded": (".weights.json",),
}


def _check_suffix(path: Path, fmt: str) -> None:
    """Keras picks its loader by extension: an output must not claim another format."""
    name = path.name.lower()
    if fmt in ("dir", "preset"):
        if name.endswith((".keras", ".h5", ".hdf5", ".json")):
            raise UsageError(
                f"-o {path.name}: the model is a saved folder and conv-surgeon keeps its format; "
                "name an output folder (without a file extension)"
            )
        return
    if fmt == "sharded":
        if not name.endswith(".weights.json"):
            raise UsageError(
                f"-o {path.name}: the model is a sharded weights map and Keras loads one only "
                f"from a .weights.json name; name the output {path.stem}.weights.json"
            )
        return
    other = {"keras": SUFFIXES["h5"], "h5": SUFFIXES["keras"], "weights": SUFFIXES["keras"]}[fmt]
    if name.endswith(other) or (fmt == "h5" and name.endswith(".weights.h5")):
        kind = {"keras": "a .keras archive", "h5": "a legacy .h5 file",
                "weights": "a weights-only HDF5 file"}[fmt]
        wanted = {"keras": ".keras", "h5": ".h5", "weights": ".weights.h5"}[fmt]
        raise UsageError(
            f"-o {path.name}: the model is {kind} and conv-surgeon keeps its format, but "
            f"Keras would read that name as another format; name the output "
            f"{path.name.split('.')[0]}{wanted}"
        )


def _load_candidates(
    source: ModelSource, layer: Layer, edit: LayerEdit, seed: int | None, stdin: BinaryIO | None
) -> tuple[list[tuple[str, np.ndarray, str]], dict[str, str], dict[str, dict[str, Any]]]:
    """Every value the edit names, as (variable name, array, origin), in Keras layout.

    Also returns, by variable name, notes (a file array in Keras layout whose shape
    would fit the PyTorch layout too is taken as Keras, and the report says so) and
    where each value came from, for the provenance record.
    """
    from ..edits.initializers import parse_initializer_spec, variable_seed
    from ..transaction.keras_runtime import draw_initializer
    from ..edits.sources import load_source

    requests = edit.requests
    if sum(r.source == "-" for r in requests) > 1:
        raise UsageError("only one weight can be read from stdin ('-')")
    if source.path is None and any(r.source == "-" for r in requests):
        raise UsageError("the model is read from stdin, so no weight can be read from '-' too")
    if edit.layout not in LAYOUTS:
        raise UsageError(f"layout '{edit.layout}': expected one of {', '.join(LAYOUTS)}")
    targets = {t.name: t for t in layer_targets(layer)}
    candidates: list[tuple[str, np.ndarray, str]] = []
    notes: dict[str, str] = {}
    sources: dict[str, dict[str, Any]] = {}
    if edit.donor is not None:
        donated = _donor_candidates(source, layer, edit.donor)
        candidates += donated
        digest = _file_sha256(edit.donor.source)
        sources.update({name: {"from": origin, "sha256": digest} for name, _, origin in donated})
    specs = [(r, parse_initializer_spec(r.init)) for r in requests if r.init is not None]
    for request in requests:
        if request.source is None and request.array is None:
            continue
        variable = _variable_for(layer, request, source.label)
        name = variable.name if variable is not None else request.label
        if request.array is not None:
            array, origin, digest = request.array, request.origin or "array", request.sha256
        elif request.source == "-":
            loaded = load_source("-", stdin)
            array, origin, digest = loaded.array, loaded.origin, loaded.sha256
        else:
            spec = request.source
            if _names_hdf5(spec):
                # HDF5 parsing can spin forever on a corrupt file: bound it like a model's.
                loaded = run_bounded(lambda: load_source(spec), PARSE_TIMEOUT_S, spec)
            else:
                loaded = load_source(spec)
            array, origin, digest = loaded.array, loaded.origin, loaded.sha256
        sources[name] = {"file": origin, "sha256": digest}
        target = targets.get(name)
        if edit.layout == "torch" and target is not None:
            array = from_torch(target, array)
            origin += " (torch layout)"
        elif target is not None and _fits_both_layouts(target, array):
            notes[name] = (
                f"{format_shape(array.shape)} also fits the PyTorch layout "
                f"({', '.join(torch_axis_names(target))}); it was taken as Keras layout, "
                "pass --layout torch if it comes from PyTorch"
            )
        candidates.append((name, array, origin))
    for request, spec in specs:
        variable = _variable_for(layer, request, source.label)
        if variable is None:
            candidates.append((request.label, np.zeros(0, np.float32), f"init {spec.text}"))
            continue
        # Each variable draws from its own seed (the base seed + its position in the
        # layer), so a kernel and a bias are independent and still reproducible.
        seed_of_variable = None if seed is None else variable_seed(seed, variable.index)
        drawn = draw_initializer(spec, variable.shape, seed_of_variable)
        origin = f"init {spec.text}" + (f" (seed {seed_of_variable})" if spec.takes_seed else "")
        candidates.append((variable.name, drawn, origin))
        sources[variable.name] = {"init": spec.text, "seed": seed_of_variable if spec.takes_seed else None}
    return candidates, notes, sources


def _names_hdf5(spec: str) -> bool:
    """Whether a source spec names an HDF5 file (told by its first bytes)."""
    from ..edits.sources import split_source_spec

    try:
        path, _ = split_source_spec(spec)
        with open(path, "rb") as handle:
            return handle.read(len(HDF5_MAGIC)) == HDF5_MAGIC
    except (OSError, ConvSurgeonError):
        return False  # load_source reports what is wrong with it


def _fits_both_layouts(target: TargetVariable, array: np.ndarray) -> bool:
    return (
        variable_role(target) != "bias"
        and array.shape == target.shape
        and torch_shape(target) == target.shape
    )


def bundle_edits(path: Path, layout: Layout = "keras") -> list[LayerEdit]:
    """The edits an npz bundle of ``<layer path>/<variable>`` keys asks for.

    The bundle is read once; each layer becomes one edit, so a bundle costs one
    write and one smoke test like any plan.
    """
    from ..edits.sources import load_npz_arrays

    by_layer: dict[str, list[WeightRequest]] = {}
    arrays, digest = load_npz_arrays(path)
    for key, array in arrays.items():
        layer, slash, variable = key.rpartition("/")
        if not slash or not layer or not variable:
            raise ConvSurgeonError(
                f"{path}: bundle key '{key}' is not '<layer path>/<variable>' (e.g. "
                "'block/conv1/kernel'); write bundles with `conv-surgeon get MODEL --all -o FILE.npz`"
            )
        by_layer.setdefault(layer, []).append(
            WeightRequest(variable, array=array, origin=f"{path.name}:{key}", sha256=digest)
        )
    return [
        LayerEdit(layer, tuple(requests), layout, place=f"{path.name}: layer '{layer}'")
        for layer, requests in by_layer.items()
    ]


def _file_sha256(source: ModelSource) -> str:
    digest = hashlib.sha256()
    with source.open_binary() as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_donor(spec: str) -> Donor:
    """``A.keras`` or ``A.keras:LAYER`` (the path may itself contain ':')."""
    if os.path.exists(spec) or ":" not in spec:
        return Donor(ModelSource.from_path(spec))
    path, _, layer = spec.rpartition(":")
    return Donor(ModelSource.from_path(path), layer or None)


def _donor_candidates(source: ModelSource, layer: Layer, donor: Donor) -> list[tuple[str, np.ndarray, str]]:
    """Every variable of the donor layer, matched to the target's by name."""
    donor_label = donor.source.label
    structure = read_structure(donor.source)
    query = donor.layer or layer.name
    try:
        donor_layer = resolve_layer(structure, query, donor_label)
    except ConvSurgeonError as exc:
        raise ConvSurgeonError(f"donor model {exc}") from None
    if conv_class(donor_layer.class_name) != layer.conv:
        raise ConvSurgeonError(
            f"donor layer '{donor_layer.path}' in {donor_label} is a {donor_layer.class_name}, "
            f"but '{layer.path}' in {source.label} is a {layer.class_name}; choose a donor "
            "layer of the same class with --from MODEL:LAYER"
        )
    pairs = [
        (target, next((d for d in donor_layer.variables
                       if stored_name_matches(layer.conv, target.name, d.name)), None))
        for target in layer.variables
    ]
    if any(d is None for _, d in pairs) or len(donor_layer.variables) != len(layer.variables):
        raise ConvSurgeonError(
            f"donor layer '{donor_layer.path}' in {donor_label} holds "
            f"{', '.join(v.name for v in donor_layer.variables)}, but '{layer.path}' in "
            f"{source.label} holds {', '.join(v.name for v in layer.variables)}; a transplant "
            "copies every variable, so choose a donor layer built the same way (use_bias...)"
        )
    values = read_variables(donor.source, [d for _, d in pairs if d is not None])
    return [
        (target.name, values[d.dataset], f"{donor_label}:{donor_layer.path}")
        for target, d in pairs
        if d is not None
    ]


def _changes(
    source: ModelSource, edited: list[tuple[Layer, Assignment, Variable]]
) -> tuple[VariableChange, ...]:
    old_values = read_variables(source, [v for _, _, v in edited])
    return tuple(_change(a, old_values[v.dataset]) for _, a, v in edited)


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
def _staged(
    source: ModelSource, structure: ModelStructure, plan: EditPlan, destination: Destination,
    history: list[dict[str, Any]],
) -> Iterator[tuple[ModelSource, Path, Callable[[], None]]]:
    """Write the edited model beside its destination; yields (the written model as a
    source, what Keras loads, the commit that moves it into place)."""
    if structure.format in FOLDER_FORMATS:
        if destination.path is None:
            raise UsageError(
                f"{source.label}: a {structure.format} save is several files and cannot go to "
                "stdout; use -o OUT or --in-place"
            )
        target = destination.path
        in_place = source.path is not None and same_file(target, source.path)
        parent = target.parent if str(target.parent) else Path(".")
        if structure.format == "sharded":
            check_output_dir(target)
        try:
            folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staged", dir=parent))
        except OSError as exc:
            raise ConvSurgeonError(f"{target}: cannot write in {parent} ({exc.strerror}); choose another output") from None
        try:
            staged = stage_folder(source, plan, folder, target.name, history, keep_names=in_place)
            yield (ModelSource.from_path(staged.load_path), staged.load_path,
                   lambda: commit_folder(staged, source, target, in_place))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    with _staging_file(destination, "h5" if structure.legacy else structure.format) as path:
        apply_edits(source, plan, path, history=history)
        yield ModelSource.from_path(path), path, lambda: _deliver(path, destination)


@contextmanager
def _staging_file(destination: Destination, fmt: str) -> Iterator[Path]:
    """A temporary file for the edited model: beside the target, or in a temp dir."""
    suffix = {"keras": ".keras", "weights": ".weights.h5"}.get(fmt, ".h5")
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


def _verify_written(staged: ModelSource, structure: ModelStructure,
                    edited: list[tuple[Layer, Assignment, Variable]]) -> None:
    """Read the written datasets back: the bytes on disk are the intended values."""
    values = read_own_variables(staged, [v for _, _, v in edited])
    for _, assignment, variable in edited:
        got = values[variable.dataset]
        if got.shape != assignment.value.shape or got.tobytes() != assignment.value.tobytes():
            raise RuntimeError(f"read-back of {variable.dataset} differs from what was written")


@contextmanager
def _reference_file(source: ModelSource, fmt: str, wanted: bool) -> Iterator[Path | None]:
    """The original model as a path Keras can load, for --compare."""
    if not wanted:
        yield None
    elif source.path is not None and (fmt in FOLDER_FORMATS or source.path.name.lower().endswith(SUFFIXES[fmt])):
        yield source.path
    else:
        with tempfile.TemporaryDirectory(prefix="conv-surgeon-") as folder:
            copy = Path(folder) / ("original" + {"keras": ".keras", "weights": ".weights.h5"}.get(fmt, ".h5"))
            if source.data is not None:
                copy.write_bytes(source.data)
            else:
                assert source.path is not None
                shutil.copyfile(source.path, copy)
            yield copy


def _deliver(staged: Path, destination: Destination) -> None:
    if destination.stream is not None:
        with open(staged, "rb") as handle:
            shutil.copyfileobj(handle, destination.stream, 1 << 20)
        destination.stream.flush()
