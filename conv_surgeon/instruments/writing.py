"""What every writing instrument (`set`, `apply`, `fold-bn`, `prune`) shares: the request
for a write as a user makes it, the one factory that turns it into the transaction's
:class:`~conv_surgeon.transaction.transaction.WriteOptions`, and the part of every report
that says what was written and how it was checked.

The command line and the Python API both build a :class:`WriteRequest` and call
:func:`write_options` with the instrument's own :class:`CheckDefaults`; neither holds a
rule or a default number of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from ..errors import ConvSurgeonError, UsageError
from ..runtime.checks import FUNCTION_KEPT, SmokeOptions, SmokeReport, Tolerance
from ..store.fileio import check_output_dir, refuse_overwriting
from ..transaction.transaction import Destination, WriteOptions, choose_destination, refuse_clobbering


@dataclass(frozen=True)
class CheckRequest:
    """How the user asked the written model to be checked. ``None`` for a tolerance means
    "not given": the instrument's default holds."""

    smoke: bool = True
    input_shapes: tuple[tuple[int, ...], ...] = ()
    unsafe: bool = False
    compare: bool = False
    expect_same: bool = False
    atol: float | None = None
    rtol: float | None = None
    load_inputs: Path | None = None
    save_inputs: Path | None = None
    imports: tuple[str, ...] = ()


@dataclass(frozen=True)
class WriteRequest:
    """Where the written model goes, as the user said it, and how it is checked."""

    model: str | None  # the input: a path, or None / "-" for stdin
    output: str | None = None  # a path, "-" for stdout, None: not given
    in_place: bool = False
    dry_run: bool = False
    checks: CheckRequest = CheckRequest()
    command: tuple[str, ...] = ()  # what the user typed, for the provenance record
    no_clobber: bool = False  # refuse to replace an existing output file


@dataclass(frozen=True)
class CheckDefaults:
    """What an instrument checks when the user does not say: whether the original model
    runs beside the edited one, and whether (and how closely) their outputs must agree.
    A user's --atol/--rtol replace the tolerance's own."""

    compare: bool = False
    expect_same: Tolerance | None = None
    # A PyTorch model runs beside the smoke test (`port --reference`): True; the command
    # could run one but was not asked: False; it has no --reference: None. --expect-same then
    # holds for that comparison, within float32 rounding (FUNCTION_KEPT) unless told otherwise.
    reference: bool | None = None

    def smoke_options(self, checks: CheckRequest) -> SmokeOptions:
        """The smoke test this instrument runs for ``checks``."""
        compare = self.compare or checks.compare
        if checks.expect_same and not compare and not self.reference:
            raise UsageError("--expect-same needs --compare" + (" or --reference" if self.reference is False else "")
                             + " (it checks the comparison's result)")
        if self.reference and not checks.smoke:
            raise UsageError("--reference runs the written model with Keras beside PyTorch; drop --no-smoke")
        if not checks.smoke:
            if checks.compare or checks.load_inputs or checks.save_inputs:
                raise UsageError("--compare, --load-inputs and --save-inputs run Keras; drop --no-smoke")
            if checks.imports:
                raise UsageError("--import is for the smoke test; drop it or drop --no-smoke")
            return SmokeOptions(enabled=False, input_shapes=list(checks.input_shapes) or None,
                                unsafe=checks.unsafe)
        asked = FUNCTION_KEPT if self.reference else Tolerance()
        tolerance = self.expect_same if self.expect_same is not None else asked if checks.expect_same else None
        if tolerance is not None:
            tolerance = replace(tolerance, atol=tolerance.atol if checks.atol is None else checks.atol,
                                rtol=tolerance.rtol if checks.rtol is None else checks.rtol)
        return SmokeOptions(
            enabled=True, input_shapes=list(checks.input_shapes) or None, unsafe=checks.unsafe,
            compare=compare, expect_same=tolerance, load_inputs=checks.load_inputs,
            save_inputs=checks.save_inputs, imports=checks.imports,
        )


# `set` and `apply` check the written model alone unless asked to compare.
PLAIN_CHECKS = CheckDefaults()


def write_options(request: WriteRequest, defaults: CheckDefaults, stdout: BinaryIO | None) -> WriteOptions:
    """The transaction's options for ``request``, with ``defaults`` the instrument's own.

    ``stdout`` is where ``-o -`` (or a model from stdin with no ``-o``) sends the model;
    None where there is no such stream (the Python API).
    """
    checks = request.checks
    if checks.save_inputs is not None:
        check_output_dir(checks.save_inputs)
        for protected in (request.model, request.output):
            refuse_overwriting(checks.save_inputs, protected, "--save-inputs")
    if checks.load_inputs is not None and not checks.load_inputs.is_file():
        raise ConvSurgeonError(f"--load-inputs {checks.load_inputs}: no such file; check the path")
    smoke = defaults.smoke_options(checks)
    destination: Destination | None = None
    if not request.dry_run:
        destination = choose_destination(request.model, request.output, request.in_place, stdout)
    if destination is not None and destination.path is not None and request.no_clobber and not request.in_place:
        refuse_clobbering(destination.path)
    return WriteOptions(destination, smoke, request.command, clobber=not request.no_clobber)


@dataclass(frozen=True, kw_only=True)
class WriteReport:
    """What every writing instrument reports about its write: the model read, where the
    result went (None for a dry run or nothing to do) and how it was checked."""

    source: str
    destination: str | None
    dry_run: bool
    optimizer: str | None = None  # what happened to the optimizer state, when anything did
    replaced: bool = False  # the destination was an existing file (or folder), now replaced
    notes: tuple[str, ...] = ()
    smoke: SmokeReport | None = None  # None when skipped, for a dry run, or with nothing written
    smoke_skipped: str | None = None  # why no smoke test ran though it was not turned off

    @property
    def changed(self) -> bool:
        """Whether the instrument changed anything (with nothing to change, nothing is written)."""
        return True


# Hears of each step of a write: progress(done, total, what).
Progress = Callable[[int, int, str], None]


def counted(progress: Progress | None, total: int) -> Callable[[str], None]:
    """A ``step(what)`` callback that tells ``progress`` (if any) of step 1, 2, ... of ``total``."""
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    return step


def surgery_steps(progress: Progress | None, options: WriteOptions) -> Callable[[str], None]:
    """The ``step`` callback of a graph-surgery write (`fold-bn`, `prune`): the model is
    written, then checked unless the check is off."""
    return counted(progress, 2 if options.smoke.enabled else 1)
