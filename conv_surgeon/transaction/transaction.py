"""The write transaction: every command that writes a model ends in it.

Stage the edited model beside its destination (one file, or a folder of files), verify
that the written datasets hold exactly the intended values, smoke-test it with Keras
(:mod:`conv_surgeon.runtime.smoke`), deliver it (rename, commit a
folder's files together, or stream it to stdout) and record the provenance of the edit
in the file. Nothing reaches the destination when any step fails.

The options every writing command shares are one typed value, :class:`WriteOptions`,
built once (by the command line's shared option group, or by the Python API).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import (Any, BinaryIO, Concatenate, Literal, ParamSpec, TypeVar,
                    Union)

import numpy as np

from .._version import __version__
from ..errors import ConvSurgeonError, UsageError, raise_if_stopped
from ..model.structure import (Layer, ModelStructure, Variable,
                               read_own_variables)
from ..runtime.checks import (ExpectedValue, SmokeOptions, SmokeReport,
                              SmokeTarget)
from ..runtime.environment import KerasWarmUp
from ..runtime.running import ReferenceResult, start_reference_run
from ..runtime.smoke import run_smoke_test
from ..store.fileio import (atomic_output, check_output_dir, fresh_name, output_stream,
                            same_file)
from ..store.locking import (Claim, check_unchanged, claim_model, locked,
                             model_files, say_waiting)
from ..store.model_file import FOLDER_FORMATS, ModelFile
from ..store.patches import (StorePatches, apply_patches, commit_folder,
                             stage_folder)
from ..store.provenance import EditRecord, make_record, read_history
from ..store.worker import PARSE_TIMEOUT_S, Worker, memory_budget
from ..surgery.rewrite import ValueDigest

Step = Callable[[str], None]  # hears of each step done: "staged and read back", "smoke test passed"
# Writes the whole edited model at the path given, with the provenance history given.
MakeModel = Callable[[Path, list[dict[str, Any]]], None]


@dataclass(frozen=True)
class Destination:
    """Where the edited model goes: a path (replaced atomically) or a binary stream."""

    path: Path | None = None
    stream: BinaryIO | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "<stdout>"


def choose_destination(
    model: str | None, output: str | None, in_place: bool, stdout: BinaryIO | None
) -> Destination:
    """Apply the contract: the input is only ever overwritten with --in-place. ``stdout``
    is the stream for ``-o -``; None where there is none (the Python API)."""
    if in_place:
        if model in (None, "-"):
            raise UsageError("--in-place needs a MODEL path; a model on stdin has no file to update")
        if output is not None:
            raise UsageError("give either -o OUT or --in-place, not both")
        if os.path.exists(model) and not (os.path.isfile(model) or os.path.isdir(model)):
            raise UsageError(f"--in-place {model}: not a regular file, nothing to update in place; use -o OUT")
        return Destination(path=Path(model))
    if output in (None, "-"):
        if output is None and model not in (None, "-"):
            raise UsageError(
                f"say where the edited model goes: -o OUT.keras, -o - for stdout, or "
                f"--in-place to overwrite {model}"
            )
        if stdout is None:
            raise UsageError("out='-' means stdout, which the Python API does not write to; give a path")
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

@dataclass(frozen=True)
class WriteOptions:
    """Where a written model goes and how it is checked: the options every writer shares."""

    destination: Destination | None = None  # None: a dry run, nothing is written
    smoke: SmokeOptions = field(default_factory=SmokeOptions)
    command: tuple[str, ...] = ()  # what the user typed, for the provenance record
    clobber: bool = True  # False (--no-clobber): an existing output file is never replaced

    @property
    def dry_run(self) -> bool:
        return self.destination is None


@dataclass(frozen=True)
class WrittenValue:
    """One value the transaction writes: the layer's variable and its exact new value (or,
    for a value graph surgery derives in its worker, the digest of what it wrote)."""

    layer: Layer
    variable: Variable
    value: np.ndarray | ValueDigest
    # --compare also compares the layer's own output before and after; not for a rewrite
    # that moves what a layer computes (a folded conv now computes its BatchNorm's output).
    compare_layer: bool = True


@dataclass(frozen=True)
class Written:
    """What the transaction did."""

    destination: str
    smoke: SmokeReport | None
    smoke_skipped: str | None  # why no smoke test ran though it was not turned off
    notes: tuple[str, ...] = ()  # what the delivery could not keep (an owner, a hard link)
    replaced: bool = False  # the destination held a file (or folder) before, now replaced


@dataclass(frozen=True)
class Patching:
    """How `set` and `apply` stage a model: byte patches to a copy of the input
    (:func:`conv_surgeon.store.patches.locate_patches`), every new value known here."""

    patches: StorePatches
    values: Sequence[WrittenValue]
    # What the patches write beside the layers' variables (the optimizer slots of the
    # variables replaced), each with its exact value: read back like ``values``.
    optimizer: Sequence[tuple[Variable, np.ndarray]] = ()


@dataclass(frozen=True)
class Rewriting:
    """How graph surgery (`fold-bn`, `prune`) stages a model whose graph changed.

    ``prepare(path)`` writes the new weight store (or file) from the untrusted input, in a
    bounded worker, and returns the digest of each value it derived there, by dataset;
    ``stage(prepared, path, history)`` makes the model to deliver from it. ``written`` are
    the new values known here, ``derived`` the variables (placed in the new store) whose
    values the worker derives: the smoke test checks every one of both.
    """

    prepare: Callable[[Path], dict[str, ValueDigest]]
    stage: Callable[[Path, Path, list[dict[str, Any]]], None]
    written: Sequence[WrittenValue] = ()
    derived: Sequence[tuple[Layer, Variable]] = ()


# The one way a model is staged: one of the two.
Staging = Union[Patching, Rewriting]


P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def one_writer(
    instrument: Callable[Concatenate[ModelFile, R, WriteOptions, P], T],
) -> Callable[Concatenate[ModelFile, R, WriteOptions, P], T]:
    """An instrument that writes ``options.destination`` from ``source``, run under the
    locks of :mod:`conv_surgeon.store.locking`: exclusive on the file it replaces (the
    source itself with --in-place), shared on the source it reads, from its first read
    to its final rename. Two runs on one file take turns; none loses the other's edit."""

    @functools.wraps(instrument)
    def run(source: ModelFile, request: R, options: WriteOptions, /, *args: P.args, **kwargs: P.kwargs) -> T:
        target = options.destination.path if options.destination is not None else None
        in_place = target is not None and source.path is not None and same_file(target, source.path)
        claims = claim_model(source, exclusive=in_place)
        if target is not None and not in_place and os.path.lexists(target):
            claims.append(Claim(target, True, tuple(model_files(target))))
        with locked(claims, say_waiting):
            return instrument(source, request, options, *args, **kwargs)

    return run


def check_destination(source: ModelFile, structure: ModelStructure, options: WriteOptions) -> None:
    """Refuse a destination whose name Keras would read as another format, before any work."""
    destination = options.destination
    if destination is None or destination.path is None or (
            source.path is not None and same_file(destination.path, source.path)):
        return
    if output_stream(destination.path):
        if structure.format in FOLDER_FORMATS:
            raise UsageError(f"-o {destination.path}: a {structure.format} save is several files and cannot go "
                             "to a pipe or a device; name an output folder")
        return  # a pipe or /dev/null: no name for Keras to read
    _check_suffix(destination.path, structure.format)


def write_transaction(
    source: ModelFile,
    structure: ModelStructure,
    staging: Staging,
    records: list[EditRecord],
    options: WriteOptions,
    step: Step | None = None,
) -> Written:
    """Stage the edited model as ``staging`` says, verify it, check it and deliver it to
    ``options.destination``, with the provenance record of ``records`` appended.

    The order is this module's to keep. Everything that reads the (untrusted) input runs
    in a bounded worker process, and the original model's run for --compare runs in a
    process of its own: they all fork before TensorFlow starts importing in a thread, as
    fork and threads mix badly. Then the import runs beside the write.
    """
    destination = options.destination
    assert destination is not None, "a dry run does not write"
    checks = options.smoke
    before = read_history(source)
    history = before + [make_record(list(options.command), records, __version__,
                                    imports=list(checks.imports))]
    smoke_target = _smoke_kind(structure, source, checks)
    notes: list[str] = []
    replaced = False
    with _file_errors(Path(tempfile.gettempdir())):
        scratch = tempfile.TemporaryDirectory(prefix="conv-surgeon-")
    with scratch as folder:
        prepared = Path(folder) / "prepared"
        worker = (Worker(partial(staging.prepare, prepared), PARSE_TIMEOUT_S, source.label,
                         memory_budget(source.size()))
                  if isinstance(staging, Rewriting) else None)
        # A rewrite's original runs beside the write: it compares outputs only. A patch
        # compares the edited layers' own outputs too, which needs the original here.
        reference = (_reference_run(source, options)
                     if smoke_target is not None and isinstance(staging, Rewriting) else None)
        # The edit is checked: TensorFlow can start importing while the model is written.
        warm_up = KerasWarmUp().start() if smoke_target is not None else None
        try:
            if isinstance(staging, Rewriting):
                assert worker is not None
                values = _rewritten_values(staging, worker.result())
                make: StorePatches | MakeModel = partial(staging.stage, prepared)
            else:
                values, make = list(staging.values), staging.patches
            report = None
            with _staged(source, structure, make, destination, history, notes) as (staged, load_path, commit):
                _verify_written(staged, [(item.variable, item.value) for item in values]
                                + list(staging.optimizer if isinstance(staging, Patching) else ()))
                if step is not None:
                    step("staged and read back")  # beside the destination, not in place yet
                if warm_up is not None and smoke_target is not None:
                    warm_up.wait()
                    expected = [_expected(structure, item) for item in values]
                    # The original, to compare with, and to tell a file Keras cannot read
                    # from an edit that broke it.
                    with _original_file(source, structure.format) as original:
                        report = run_smoke_test(smoke_target(load_path), checks, expected=expected,
                                                original=smoke_target(original),
                                                written_by=structure.keras_version, reference=reference)
                    if step is not None:
                        step("smoke test passed")
                if destination.path is not None:
                    check_unchanged(destination.path)
                    replaced = _replaces(destination.path, source)
                    if replaced and not options.clobber:
                        refuse_clobbering(destination.path)
                if source.path is not None:
                    check_unchanged(source.path)
                raise_if_stopped()  # a Ctrl-C some library swallowed still stops the write
                commit()
        finally:
            if reference is not None:
                reference.discard()  # it has answered, or is no longer wanted
            if warm_up is not None and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
                # The import silences fd 2: let it finish before any error is printed
                # (not when the user stopped the command: the error line has its own
                # descriptor, and the user is not kept waiting for an import).
                warm_up.join()
    return Written(destination.label, report, _smoke_skipped(checks, smoke_target is not None), tuple(notes),
                   replaced)


def refuse_clobbering(path: Path) -> None:
    """--no-clobber: an existing output is refused, as `cp -n` and `mv -n` leave it."""
    if os.path.lexists(path) and not output_stream(path):
        raise ConvSurgeonError(f"-o {path}: exists, and --no-clobber keeps it; nothing was written, "
                               "choose another name or drop --no-clobber")


def _replaces(target: Path, source: ModelFile) -> bool:
    """Whether delivering to ``target`` replaces another model (not the input edited in place)."""
    if not os.path.lexists(target) or output_stream(target):
        return False
    return not (source.path is not None and same_file(target, source.path))


def _rewritten_values(staging: Rewriting, digests: dict[str, ValueDigest]) -> list[WrittenValue]:
    """The values a rewrite wrote: those known here, and the digests of those its worker derived."""
    return [*staging.written, *(WrittenValue(layer, variable, digests[variable.dataset], compare_layer=False)
                                for layer, variable in staging.derived)]


def _smoke_kind(structure: ModelStructure, source: ModelFile,
                checks: SmokeOptions) -> Callable[[Path], SmokeTarget] | None:
    """How Keras loads the written model, or None when it cannot be smoke-tested."""
    if not checks.enabled:
        return None
    if structure.format in ("weights", "sharded"):
        if source.config is None:
            return None
        config = source.config
        return lambda path: SmokeTarget(path, "weights", config)
    kind: Literal["preset", "model"] = "preset" if structure.format == "preset" else "model"
    return lambda path: SmokeTarget(path, kind)


def _smoke_skipped(checks: SmokeOptions, ran: bool) -> str | None:
    if ran or not checks.enabled:
        return None
    return ("no smoke test: a weights-only file holds no model to run; pass --config MODEL "
            "(the .keras, .h5, folder or preset it belongs to) to smoke-test it")


def _expected(structure: ModelStructure, item: WrittenValue) -> ExpectedValue:
    layer, variable = item.layer, item.variable
    label = f"layer '{layer.path}' {variable.name}"
    compared = layer.path if item.compare_layer else ""
    if structure.legacy:
        top = variable.dataset.split("/")
        top_layer = top[1] if top[0] == "model_weights" else top[0]
        return ExpectedValue(label, item.value, h5_layer=top_layer, h5_position=variable.position,
                             layer_path=compared)
    return ExpectedValue(label, item.value, store_object=layer.store_path,
                         store_index=int(variable.dataset.rpartition("/")[2]), layer_path=compared)


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
    kind = {"keras": "a .keras archive", "h5": "a legacy .h5 file",
            "weights": "a weights-only HDF5 file"}[fmt]
    wanted = {"keras": ".keras", "h5": ".h5", "weights": ".weights.h5"}[fmt]
    other = {"keras": SUFFIXES["h5"], "h5": SUFFIXES["keras"], "weights": SUFFIXES["keras"]}[fmt]
    if name.endswith(other) or (fmt == "h5" and name.endswith(".weights.h5")):
        raise UsageError(
            f"-o {path.name}: the model is {kind} and conv-surgeon keeps its format, but "
            f"Keras would read that name as another format; name the output "
            f"{path.name.split('.')[0]}{wanted}"
        )
    if not name.endswith(SUFFIXES[fmt]):
        raise UsageError(
            f"-o {path.name}: the model is {kind} and Keras opens one only from a name ending in "
            f"{' or '.join(SUFFIXES[fmt])}; name the output {path.name.split('.')[0]}{wanted}"
        )


@contextmanager
def _staged(
    source: ModelFile, structure: ModelStructure, make: StorePatches | MakeModel, destination: Destination,
    history: list[dict[str, Any]], notes: list[str],
) -> Iterator[tuple[ModelFile, Path, Callable[[], None]]]:
    """Write the edited model beside its destination; yields (the written model as a
    source, what Keras loads, the commit that moves it into place)."""
    if structure.format in FOLDER_FORMATS:
        assert isinstance(make, StorePatches), "a rewrite writes single-file models only"
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
        folder = fresh_name(parent, f".{target.name}.", ".staged")
        try:
            try:
                folder.mkdir(0o700)
            except OSError as exc:
                folder = parent  # not ours (or never made): nothing for the cleanup to remove
                raise ConvSurgeonError(f"{target}: cannot write in {parent} ({exc.strerror}); "
                                       "choose another output") from None
            with _file_errors(target):
                staged = stage_folder(source, make, folder, target.name, history, keep_names=in_place)

            def commit() -> None:
                with _file_errors(target):
                    commit_folder(staged, source, target, in_place, notes)

            yield ModelFile.from_path(staged.load_path), staged.load_path, commit
        finally:
            if folder != parent:
                shutil.rmtree(folder, ignore_errors=True)
        return
    with _staging_file(destination, "h5" if structure.legacy else structure.format, notes) as path:
        with _file_errors(destination.path or path):
            if isinstance(make, StorePatches):
                apply_patches(source, make, path, history=history)
            else:
                make(path, history)
        yield ModelFile.from_path(path), path, lambda: _deliver(path, destination)


@contextmanager
def _file_errors(target: Path) -> Iterator[None]:
    """A failing file operation (a full disk, no permission) as one line, not a crash."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ConvSurgeonError(
            f"{target}: writing failed: {exc.strerror or exc}{where}; nothing was written, check "
            "the free space and permissions of its folder"
        ) from None


@contextmanager
def _staging_file(destination: Destination, fmt: str, notes: list[str]) -> Iterator[Path]:
    """A temporary file for the edited model: beside the target, or in a temp dir."""
    suffix = {"keras": ".keras", "weights": ".weights.h5"}.get(fmt, ".h5")
    if destination.path is not None:
        # Keras picks its loader by extension, so the staged file keeps the right one.
        with atomic_output(destination.path, notes) as tmp:
            staged = tmp.with_name(tmp.name + suffix)
            try:
                yield staged
                os.replace(staged, tmp)
            finally:
                staged.unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="conv-surgeon-") as folder:
        yield Path(folder) / f"model{suffix}"


def _verify_written(staged: ModelFile, values: Sequence[tuple[Variable, np.ndarray | ValueDigest]]) -> None:
    """Read the written datasets back: the bytes on disk are the intended values. (A value
    known by its digest was read back where it was made, in the rewrite's worker.)"""
    arrays = [(variable, value) for variable, value in values if isinstance(value, np.ndarray)]
    read = read_own_variables(staged, [variable for variable, _ in arrays])
    for variable, value in arrays:
        got = read[variable.dataset]
        if got.shape != value.shape or got.tobytes() != value.tobytes():
            raise RuntimeError(f"read-back of {variable.dataset} differs from what was written")


@contextmanager
def _original_file(source: ModelFile, fmt: str) -> Iterator[Path]:
    """The original model as a path Keras can load (a copy for a model read from stdin)."""
    if source.path is not None and (fmt in FOLDER_FORMATS or source.path.name.lower().endswith(SUFFIXES[fmt])):
        yield source.path
    else:
        with tempfile.TemporaryDirectory(prefix="conv-surgeon-") as folder:
            copy = Path(folder) / ("original" + {"keras": ".keras", "weights": ".weights.h5"}.get(fmt, ".h5"))
            with _file_errors(copy):
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


def _reference_run(source: ModelFile, options: WriteOptions) -> Worker[ReferenceResult] | None:
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
    return start_reference_run(SmokeTarget(source.path), checks)
