"""Weight surgery: `set`, bundles and `apply` as library calls.

Read the structure, resolve each edit's layer, gather its values (files, initializers,
a donor model), check every one with the assignment engine, and hand the exact values
to the write transaction (:mod:`conv_surgeon.transaction.transaction`), which stages,
verifies, smoke-tests and delivers. Nothing is written when any step fails.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from ..edits import LAYOUTS, Layout, check_seed
from ..edits.assign import Assignment, check_every_assignment
from ..edits.initializers import (draw_seed,
                                  parse_initializer_spec, variable_seed)
from ..edits.layout import (from_torch, torch_axis_names, torch_shape,
                            variable_role)
from ..edits.plan import Plan, in_plan
from ..edits.targets import TargetVariable, layer_targets
from ..errors import AssignmentError, ConvSurgeonError, PlanError, UsageError
from ..model.catalogue import stored_name_matches
from ..model.naming import format_shape
from ..model.selection import main_kernel, resolve_layer, resolve_variable
from ..model.structure import (Layer, ModelStructure, Variable, read_structure,
                               read_variables)
from ..store.hdf5 import HDF5_MAGIC
from ..store.model_file import ModelFile
from ..store.patches import StorePatches, locate_patches
from ..store.provenance import EditRecord, EditSource
from ..store.worker import PARSE_TIMEOUT_S, run_bounded
from ..surgery import OPTIMIZER_POLICIES, OptimizerPolicy
from ..surgery.optimizer import StoredSlot, read_optimizer_state, variable_slots
from ..transaction.transaction import (Patching, WriteOptions, Written,
                                       WrittenValue, check_destination,
                                       one_writer, write_transaction)
from .writing import (PLAIN_CHECKS, CheckDefaults, Progress, WriteReport,
                      counted)


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

    source: ModelFile
    layer: str | None = None  # default: the target layer's name


@dataclass(frozen=True)
class LayerEdit:
    """Everything to set in one layer; ``place`` says where a plan or bundle asked for it,
    ``from_plan`` that its messages name the plan's keys, not the command line's options."""

    layer: str
    requests: tuple[WeightRequest, ...] = ()
    layout: Layout = "keras"
    donor: Donor | None = None
    place: str | None = None
    from_plan: bool = False


@dataclass(frozen=True)
class SetRequest:
    """What `set` and `apply` write: new values for variables of one or more layers, in one
    write, with initializers drawn from ``seed`` (drawn and reported when None).

    ``optimizer`` says what becomes of the optimizer slots of every variable replaced:
    ``reset`` starts them at zero (Adam's m and v, any gradient accumulator; a moving
    average of the weights, ``use_ema``, starts at the new value), as if the variable had
    just been created; ``keep`` leaves them as they are. The optimizer's own scalars
    (iteration, learning rate) are the model's, not a variable's: both keep them."""

    edits: tuple[LayerEdit, ...]
    seed: int | None = None
    optimizer: OptimizerPolicy = "reset"
    # The written model must load and run; its outputs are compared with the original's
    # only when the user asks (--compare), and held to a tolerance only with --expect-same.
    checks: ClassVar[CheckDefaults] = PLAIN_CHECKS

    @classmethod
    def from_plan(cls, plan: Plan, optimizer: OptimizerPolicy = "reset") -> SetRequest:
        """The request of an `apply` plan file (the optimizer policy is the run's, not the plan's)."""
        return cls(tuple(
            LayerEdit(
                edit.layer,
                tuple(WeightRequest(None if w.variable == "kernel" else w.variable, source=w.source, init=w.init)
                      for w in edit.weights),
                edit.layout,
                place=edit.place,
                from_plan=True,
            )
            for edit in plan.edits
        ), plan.seed, optimizer)


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
class SlotOutcome:
    """What a write did (a dry run: would do) to the optimizer slots of the variables it
    replaced. With ``keep`` the slots are not looked up: ``variables`` are all those replaced."""

    policy: OptimizerPolicy
    state: bool  # whether the file holds optimizer state at all
    optimizer: str | None = None  # the optimizer's class, when the file records it ("Adam")
    variables: tuple[str, ...] = ()  # the replaced variables whose slots follow the policy ("conv1/kernel")
    slots_reset: int = 0  # slots set to zero
    averages_set: int = 0  # moving averages of the weights (use_ema) set to the new values
    without_slots: tuple[str, ...] = ()  # replaced variables with no slots (not trainable)


@dataclass(frozen=True, kw_only=True)
class SetReport(WriteReport):
    """What `set` and `apply` changed: each variable's old and new values, and the write."""

    layers: tuple[Layer, ...]
    changes: tuple[VariableChange, ...]
    seed: int | None  # the base seed initializers used (drawn when not given)
    seed_drawn: bool
    optimizer_slots: SlotOutcome  # what became of the replaced variables' optimizer slots

    @property
    def layer(self) -> Layer:
        """The edited layer of a one-layer edit (the first one otherwise)."""
        return self.layers[0]


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
    kind = layer.kind
    if (kind is not None and kind.why_absent(request.variable, layer.config) is not None
            and not any(stored_name_matches(kind, v.name, request.variable) for v in layer.variables)):
        return None  # the engine explains a bias (gamma, beta) for a layer built without one
    return resolve_variable(layer, request.variable, label)


def set_weights(
    source: ModelFile,
    layer_query: str,
    requests: list[WeightRequest],
    options: WriteOptions,
    *,
    seed: int | None = None,
    stdin: BinaryIO | None = None,
    layout: Layout = "keras",
    donor: Donor | None = None,
    optimizer: OptimizerPolicy = "reset",
    progress: Progress | None = None,
) -> SetReport:
    """Set variables of one layer (``options.destination`` None: a dry run).

    >>> from conv_surgeon.runtime.checks import NO_SMOKE
    >>> from conv_surgeon.transaction.transaction import Destination
    >>> set_weights(ModelFile.from_path("in.keras"), "conv1",
    ...             [WeightRequest(None, source="k.npy")],
    ...             WriteOptions(Destination(Path("out.keras")), NO_SMOKE))
    """
    require_requests(requests, donor)
    edit = LayerEdit(layer_query, tuple(requests), layout, donor)
    return edit_model(source, SetRequest((edit,), seed, optimizer), options, stdin=stdin, progress=progress)


@dataclass(frozen=True)
class _CheckedLayer:
    layer: Layer
    assignments: list[Assignment]


@dataclass(frozen=True)
class CheckedEdits:
    """What a request writes, every value checked: each variable with its exact new value,
    the optimizer slots that follow them, the provenance records, and where every value
    goes in the store (with the values there now). Nothing is written yet."""

    structure: ModelStructure
    layers: tuple[Layer, ...]
    edited: list[tuple[Layer, Assignment, Variable]]
    slots: list[tuple[StoredSlot, np.ndarray]]
    outcome: SlotOutcome
    records: list[EditRecord]
    patches: StorePatches
    changes: tuple[VariableChange, ...]
    seed: int | None  # the base seed initializers used (None when none takes one)
    seed_drawn: bool


@one_writer
def edit_model(
    source: ModelFile,
    request: SetRequest,
    options: WriteOptions,
    *,
    stdin: BinaryIO | None = None,
    progress: Progress | None = None,
) -> SetReport:
    """Apply the request's edits (one per layer) with one read, one write and one smoke test.

    Every edit is checked before anything is written (:func:`check_edits`).
    ``progress(done, total, step)`` hears of each edit checked, the write and the smoke test.
    The written model records what was done (``options.command`` and every edit's
    source) in its history, after the records already there.
    """
    step = counted(progress, len(request.edits) + 1 + (1 if options.smoke.enabled else 0))
    checked = check_edits(source, request, options, stdin=stdin, step=step)
    report = SetReport(source=source.label, destination=None, dry_run=True, layers=checked.layers,
                       changes=checked.changes, seed=checked.seed, seed_drawn=checked.seed_drawn,
                       optimizer_slots=checked.outcome)
    if options.destination is None:
        return report
    written = write_patched(source, checked, options, step)
    return replace(report, destination=written.destination, dry_run=False, smoke=written.smoke,
                   smoke_skipped=written.smoke_skipped, notes=written.notes, replaced=written.replaced)


def check_edits(
    source: ModelFile,
    request: SetRequest,
    options: WriteOptions,
    *,
    stdin: BinaryIO | None = None,
    step: Callable[[str], None] | None = None,
    structure: ModelStructure | None = None,
) -> CheckedEdits:
    """Check every edit of ``request`` and find where its values go (``structure``: the
    model's, when the caller has read it already).

    With one edit (`set`) its first error is raised as it is; a plan, or several edits,
    raise one :class:`PlanError` that lists every problem of every edit, a plan's worded
    with its keys (``edits[2].layout``). ``step(what)`` hears of each edit checked.
    """
    edits, seed = list(request.edits), request.seed
    if request.optimizer not in OPTIMIZER_POLICIES:
        raise UsageError(f"optimizer policy {request.optimizer!r}: expected one of {', '.join(OPTIMIZER_POLICIES)}")
    if structure is None:
        structure = read_structure(source)
    check_destination(source, structure, options)
    if seed is not None:
        seed = check_seed(seed)
    seeded = _needs_seed(edits)
    seed_drawn = seeded and seed is None
    if seed_drawn:
        seed = draw_seed()
    checked: list[_CheckedLayer] = []
    records: list[EditRecord] = []
    problems: list[str] = []
    invalid = 0
    seen: dict[str, LayerEdit] = {}
    for edit in edits:
        every = len(edits) > 1 or edit.from_plan  # list every problem, not only the first
        refusals: list[ConvSurgeonError] = []
        try:
            layer = resolve_layer(structure, edit.layer, source.label)
            if layer.path in seen:
                raise ConvSurgeonError(
                    f"layer '{layer.path}' is edited twice ({_place(seen[layer.path])} and "
                    f"{_place(edit)}); merge the two edits"
                )
            seen[layer.path] = edit
            candidates, notes, sources = _load_candidates(source, layer, edit, seed, stdin,
                                                          refusals if every else None)
            assignments, refused = check_every_assignment(layer_targets(layer), candidates)
            refusals += refused if edit.donor is None else [
                AssignmentError(f"{source.label} <- {edit.donor.source.label}: {exc}") for exc in refused]
            assignments = [
                replace(a, notes=a.notes + (notes[a.target.name],)) if a.target.name in notes else a
                for a in assignments
            ]
            checked.append(_CheckedLayer(layer, assignments))
            records += [
                EditRecord(layer=layer.path, variable=a.target.name, layout=edit.layout,
                           source=sources[a.target.name])
                for a in assignments
            ]
        except ConvSurgeonError as exc:
            refusals.append(exc)
        if refusals:
            if not every:
                raise refusals[0]  # `set`: one error line
            invalid += 1
            problems += [f"{_place(edit)}: {_worded(edit, str(exc))}" for exc in refusals]
        if step is not None:
            step(f"checked {_place(edit)}")
    if problems:
        raise PlanError.listing(
            f"{source.label}: {invalid} of {len(edits)} edit{'' if len(edits) == 1 else 's'} "
            f"{'is' if invalid == 1 else 'are'} invalid, nothing was written; {len(problems)} "
            f"problem{'' if len(problems) == 1 else 's'}:", problems)
    edited = [
        (one.layer, a, _variable_named(one.layer, a.target.name))
        for one in checked
        for a in one.assignments
    ]
    slots, outcome = _optimizer_slots(source, structure, request.optimizer, edited)
    # Where every value goes, and the values there now, in one bounded read of the store
    # (a dry run too: it shows the file can be patched).
    patches = locate_patches(source, {v.dataset: a.value for _, a, v in edited} | {
        slot.dataset: value for slot, value in slots})
    changes = tuple(_change(a, patches.old_values[v.dataset]) for _, a, v in edited)
    return CheckedEdits(structure, tuple(p.layer for p in checked), edited, slots, outcome, records, patches,
                        changes, seed if seeded else None, seed_drawn)


def write_patched(source: ModelFile, checked: CheckedEdits, options: WriteOptions,
                  step: Callable[[str], None] | None = None) -> Written:
    """Write the checked edits as byte patches, through the write transaction."""
    staging = Patching(checked.patches, [WrittenValue(layer, v, a.value) for layer, a, v in checked.edited],
                       [(_slot_variable(slot), value) for slot, value in checked.slots])
    return write_transaction(source, checked.structure, staging, checked.records, options, step)


def apply_plan(
    source: ModelFile,
    plan: Plan,
    options: WriteOptions,
    *,
    optimizer: OptimizerPolicy = "reset",
    progress: Progress | None = None,
) -> SetReport:
    """Every edit of a plan, all or nothing, with one write and one smoke test."""
    return edit_model(source, SetRequest.from_plan(plan, optimizer), options, progress=progress)


def _optimizer_slots(
    source: ModelFile, structure: ModelStructure, policy: OptimizerPolicy,
    edited: list[tuple[Layer, Assignment, Variable]],
) -> tuple[list[tuple[StoredSlot, np.ndarray]], SlotOutcome]:
    """The optimizer slots to write as ``policy`` says, each with its new value, and what
    the report says of them. ``reset`` refuses a state whose slots it cannot place."""
    replaced = tuple(f"{layer.path}/{v.name}" for layer, _, v in edited)
    if not structure.optimizer_variables:
        return [], SlotOutcome(policy, state=False)
    if policy == "keep":
        return [], SlotOutcome(policy, state=True, variables=replaced)
    state = read_optimizer_state(source)
    try:
        found = variable_slots(state, {layer.path: layer for layer in structure.layers},
                               [(layer.path, v.name) for layer, _, v in edited])
    except ConvSurgeonError as exc:
        raise ConvSurgeonError(f"{source.label}: {exc}; pass --optimizer keep to leave the optimizer "
                               "state as it is (the replaced variables then keep their old slots)") from None
    slots: list[tuple[StoredSlot, np.ndarray]] = []
    with_slots: list[str] = []
    for (layer, assignment, variable), name in zip(edited, replaced):
        own = found[(layer.path, variable.name)]
        slots += [(slot, np.zeros(slot.shape, _numpy_dtype(slot.dtype))) for slot in own.moments]
        slots += [(slot, assignment.value.astype(_numpy_dtype(slot.dtype))) for slot in own.averages]
        if own.moments or own.averages:
            with_slots.append(name)
    return slots, SlotOutcome(
        policy, state=True, optimizer=state.class_name, variables=tuple(with_slots),
        slots_reset=sum(len(found[(layer.path, v.name)].moments) for layer, _, v in edited),
        averages_set=sum(len(found[(layer.path, v.name)].averages) for layer, _, v in edited),
        without_slots=tuple(name for name in replaced if name not in with_slots))


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        bfloat16: np.dtype = np.dtype(ml_dtypes.bfloat16)  # ml_dtypes types it as np.generic
        return bfloat16
    return np.dtype(name)


def _slot_variable(slot: StoredSlot) -> Variable:
    """An optimizer slot as a variable of the store, to be read back like one."""
    return Variable(slot.dataset, slot.dataset, slot.shape, slot.dtype, index=-1, file=slot.file)


def _place(edit: LayerEdit) -> str:
    return edit.place or f"layer '{edit.layer}'"


def _worded(edit: LayerEdit, message: str) -> str:
    """A message about ``edit`` in the words of where it was asked for: a plan's keys, or
    the command line's options."""
    return in_plan(message, edit.place) if edit.from_plan and edit.place else message


def _needs_seed(edits: list[LayerEdit]) -> bool:
    """Whether any initializer takes a seed; bad specs are reported later, with their place."""

    def takes_seed(spec: str) -> bool:
        try:
            return parse_initializer_spec(spec).takes_seed
        except ConvSurgeonError:
            return False

    return any(takes_seed(r.init) for edit in edits for r in edit.requests if r.init is not None)


def _variable_named(layer: Layer, name: str) -> Variable:
    return next(v for v in layer.variables if v.name == name)


def _load_candidates(
    source: ModelFile, layer: Layer, edit: LayerEdit, seed: int | None, stdin: BinaryIO | None,
    refusals: list[ConvSurgeonError] | None,
) -> tuple[list[tuple[str, np.ndarray, str]], dict[str, str], dict[str, EditSource]]:
    """Every value the edit names, as (variable name, array, origin), in Keras layout.

    Also returns, by variable name, notes (a file array in Keras layout whose shape
    would fit the PyTorch layout too is taken as Keras, and the report says so) and
    where each value came from, for the provenance record. A value that cannot be had
    (an unknown variable, a missing file, a bad initializer) raises its error, or with
    ``refusals`` adds it there and the others are still loaded: a plan lists every problem.
    """
    from ..runtime.initializers import draw_initializer

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
    sources: dict[str, EditSource] = {}
    if edit.donor is not None:
        donated = _donor_candidates(source, layer, edit.donor)
        candidates += donated
        donor_digest = _file_sha256(edit.donor.source)
        sources.update({name: {"from": origin, "sha256": donor_digest} for name, _, origin in donated})
    for request in requests:
        if request.source is None and request.array is None:
            continue  # an initializer: drawn below
        try:
            variable = _variable_for(layer, request, source.label)
            name = variable.name if variable is not None else request.label
            array, origin, file_digest = _requested_array(request, stdin)
            target = targets.get(name)
            if edit.layout == "torch" and target is not None:
                array = from_torch(target, array)
                origin += " (torch layout)"
            elif target is not None and _fits_both_layouts(target, array):
                notes[name] = _worded(edit, (
                    f"{format_shape(array.shape)} also fits the PyTorch layout "
                    f"({', '.join(torch_axis_names(target))}); it was taken as Keras layout, "
                    "pass --layout torch if it comes from PyTorch"
                ))
        except ConvSurgeonError as exc:
            if refusals is None:
                raise
            refusals.append(exc)
            continue
        sources[name] = {"file": origin, "sha256": file_digest}
        candidates.append((name, array, origin))
    for request in requests:
        if request.init is None:
            continue
        try:
            initializer = parse_initializer_spec(request.init)
            variable = _variable_for(layer, request, source.label)
            if variable is None:
                candidates.append((request.label, np.zeros(0, np.float32), f"init {initializer.text}"))
                continue
            # Each variable draws from its own seed (the base seed + its position in the
            # layer), so a kernel and a bias are independent and still reproducible.
            seed_of_variable = None if seed is None else variable_seed(seed, variable.index)
            drawn = draw_initializer(initializer, variable.shape, seed_of_variable)
        except ConvSurgeonError as exc:
            if refusals is None:
                raise
            refusals.append(exc)
            continue
        origin = f"init {initializer.text}" + (f" (seed {seed_of_variable})" if initializer.takes_seed else "")
        candidates.append((variable.name, drawn, origin))
        sources[variable.name] = {
            "init": initializer.text, "seed": seed_of_variable if initializer.takes_seed else None,
        }
    return candidates, notes, sources


def _requested_array(request: WeightRequest, stdin: BinaryIO | None) -> tuple[np.ndarray, str, str | None]:
    """The array a request gives or names the source of, what reports call it, and the
    sha256 of the file it came from (None for an array given in memory)."""
    from ..edits.sources import load_source

    if request.array is not None:
        return request.array, request.origin or "array", request.sha256
    source_spec = request.source
    assert source_spec is not None, "an initializer's request names no array"
    if source_spec == "-":
        loaded = load_source("-", stdin)
    elif _names_hdf5(source_spec):
        # HDF5 parsing can spin forever on a corrupt file: bound it like a model's.
        loaded = run_bounded(lambda: load_source(source_spec), PARSE_TIMEOUT_S, source_spec)
    else:
        loaded = load_source(source_spec)
    return loaded.array, loaded.origin, loaded.sha256


def _names_hdf5(spec: str) -> bool:
    """Whether a source spec names an HDF5 file (told by its first bytes)."""
    from ..edits.sources import split_source_spec

    try:
        path, _ = split_source_spec(spec)
        if not os.path.isfile(path):
            return False  # a pipe is read once, by load_source
        with open(path, "rb") as handle:
            return handle.read(len(HDF5_MAGIC)) == HDF5_MAGIC
    except (OSError, ConvSurgeonError):
        return False  # load_source reports what is wrong with it


def _fits_both_layouts(target: TargetVariable, array: np.ndarray) -> bool:
    return (
        variable_role(target) not in (None, "same")
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


def _file_sha256(source: ModelFile) -> str:
    digest = hashlib.sha256()
    with source.open_binary() as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_donor(spec: str) -> Donor:
    """``A.keras`` or ``A.keras:LAYER`` (the path may itself contain ':')."""
    if os.path.exists(spec) or ":" not in spec:
        return Donor(ModelFile.from_path(spec))
    path, _, layer = spec.rpartition(":")
    return Donor(ModelFile.from_path(path), layer or None)


def _donor_candidates(source: ModelFile, layer: Layer, donor: Donor) -> list[tuple[str, np.ndarray, str]]:
    """Every variable of the donor layer, matched to the target's by name."""
    donor_label = donor.source.label
    structure = read_structure(donor.source)
    query = donor.layer or layer.name
    try:
        donor_layer = resolve_layer(structure, query, donor_label)
    except ConvSurgeonError as exc:
        raise ConvSurgeonError(f"donor model {exc}") from None
    if _class_key(donor_layer) != _class_key(layer):
        raise ConvSurgeonError(
            f"donor layer '{donor_layer.path}' in {donor_label} is a {donor_layer.class_name}, "
            f"but '{layer.path}' in {source.label} is a {layer.class_name}; choose a donor "
            "layer of the same class with --from MODEL:LAYER"
        )
    pairs = [
        (target, next((d for d in donor_layer.variables
                       if stored_name_matches(layer.kind, target.name, d.name)), None))
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


def _class_key(layer: Layer) -> str:
    """The layer's class as the catalogue names it (Keras 2 aliases too: Convolution2D)."""
    return layer.kind.name if layer.kind is not None else layer.class_name


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
