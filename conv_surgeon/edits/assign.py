"""The assignment engine: check a candidate array against a variable, return what to write.

Pure numpy (and ml_dtypes, imported only when a bfloat16 or float8 value is involved:
it costs most of a second): no TensorFlow. Every refusal is one
:class:`AssignmentError` line naming the layer, the variable, what was expected, what
was received and, when one applies, a hint.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import AssignmentError
from ..model.catalogue import quantization_mode, stored_name_matches
from ..model.naming import format_shape
from .layout import from_torch_code, torch_axis_names, torch_shape
from .targets import TargetVariable

# The stored dtypes conv-surgeon writes; bfloat16 is ml_dtypes', the others numpy's.
TARGET_DTYPES = ("float16", "bfloat16", "float32", "float64")

# Float64 holds every integer up to 2**53 exactly; larger ones need an exact check.
_EXACT_IN_FLOAT64 = 2**53


@dataclass(frozen=True)
class Assignment:
    """A checked value, exactly as it will be written into ``target``."""

    target: TargetVariable
    value: np.ndarray
    origin: str
    cast: str | None
    notes: tuple[str, ...]


def check_assignments(
    targets: Sequence[TargetVariable],
    candidates: Sequence[tuple[str, np.ndarray, str]],
) -> list[Assignment]:
    """Check each ``(variable name, array, origin)`` against one layer's variables.

    ``targets`` are all variables of the layer; the result follows their store order.
    The first refusal is raised.
    """
    assignments, refusals = check_every_assignment(targets, candidates)
    if refusals:
        raise refusals[0]
    return assignments


def check_every_assignment(
    targets: Sequence[TargetVariable],
    candidates: Sequence[tuple[str, np.ndarray, str]],
) -> tuple[list[Assignment], list[AssignmentError]]:
    """As :func:`check_assignments`, but every candidate is checked: the values that
    pass, and the refusal of each one that does not (a plan lists them all)."""
    refusals: list[AssignmentError] = []
    chosen: dict[int, tuple[np.ndarray, str]] = {}
    for wanted, array, origin in candidates:
        try:
            index = _find_target(targets, wanted)
        except AssignmentError as exc:
            refusals.append(exc)
            continue
        if index in chosen:
            first_origin = chosen[index][1]
            refusals.append(AssignmentError(
                f"{targets[index].label} is given twice ({first_origin} and {origin}); "
                "give one source per variable"
            ))
            continue
        chosen[index] = (array, origin)
    assignments: list[Assignment] = []
    for i in range(len(targets)):
        if i in chosen:
            try:
                assignments.append(check_assignment(targets[i], *chosen[i]))
            except AssignmentError as exc:
                refusals.append(exc)
    return assignments, refusals


def check_assignment(target: TargetVariable, array: np.ndarray, origin: str) -> Assignment:
    """Validate ``array`` for ``target`` and convert it to the stored dtype.

    >>> check_assignment(conv1_kernel, np.ones((3, 3, 1, 4), np.int64), "k.npy").cast
    'int64 -> float32'
    """
    array = np.asarray(array)
    target_dtype = _target_dtype(target)
    _check_dtype(target, array, origin)
    _check_shape(target, array, origin)
    _check_finite(target, array, origin)
    value, notes = _cast(target, array, origin, target_dtype)
    # A byte-order change alone (a big-endian .npy) changes no value: not a cast.
    cast = None if array.dtype.name == target.dtype else f"{array.dtype.name} -> {target.dtype}"
    return Assignment(
        target=target,
        value=np.ascontiguousarray(value),
        origin=origin,
        cast=cast,
        notes=notes,
    )


def _find_target(targets: Sequence[TargetVariable], wanted: str) -> int:
    for index, target in enumerate(targets):
        if stored_name_matches(target.kind, target.name, wanted):
            return index
    layer = targets[0].layer if targets else "?"
    names = [t.name for t in targets]
    kind = targets[0].kind if targets else None
    if kind is not None:
        setting = kind.why_absent(wanted, targets[0].config)
        if setting is not None:
            name = kind.keras_name(wanted)
            raise AssignmentError(
                f"layer '{layer}' has no {name}: it was built with {setting}; "
                f"drop the {name} source"
            )
    conv = targets[0].conv if targets else None
    if wanted == "kernel" and conv is not None and conv.kind == "separable":
        raise AssignmentError(
            f"layer '{layer}' is a {conv.name} with two kernels "
            f"({', '.join(conv.kernel_names)}); name each one: "
            "--weight depthwise_kernel=SRC, --weight pointwise_kernel=SRC"
        )
    close = difflib.get_close_matches(wanted, names, n=1)
    suggestion = f"did you mean '{close[0]}'? " if close else ""
    raise AssignmentError(
        f"layer '{layer}' has no variable '{wanted}'; {suggestion}"
        f"its variables: {', '.join(names)}"
    )


def _target_dtype(target: TargetVariable) -> np.dtype:
    if target.dtype not in TARGET_DTYPES:
        mode = quantization_mode(target.config)
        quantized = (f" (the layer is quantized, {mode}: set the float model's weights and quantize "
                     "it again)") if mode is not None else ""
        raise AssignmentError(
            f"{target.label} is stored as {target.dtype}; conv-surgeon writes "
            f"{', '.join(TARGET_DTYPES)} variables only{quantized}"
        )
    if target.dtype == "bfloat16":
        import ml_dtypes

        bfloat16: np.dtype = np.dtype(ml_dtypes.bfloat16)  # ml_dtypes types it as np.generic
        return bfloat16
    return np.dtype(target.dtype)


def _is_real_number_dtype(dtype: np.dtype) -> bool:
    if dtype.kind in "iuf":
        return True
    if dtype.kind != "V":
        return False
    # ml_dtypes floats (bfloat16, float8_*) report kind 'V' like raw records; an array
    # of one means ml_dtypes is already imported.
    import ml_dtypes

    try:
        ml_dtypes.finfo(dtype)
    except (ValueError, TypeError):
        return False
    return True


def _check_dtype(target: TargetVariable, array: np.ndarray, origin: str) -> None:
    if not _is_real_number_dtype(array.dtype):
        raise AssignmentError(
            f"{target.label}: {origin} holds {array.dtype} values; expected a real-valued "
            f"numeric array (integer or float) to store as {target.dtype}"
        )


def _check_shape(target: TargetVariable, array: np.ndarray, origin: str) -> None:
    expected, received = target.shape, array.shape
    if received == expected:
        return
    # A variable the catalogue cannot name has its axes numbered.
    axis_names = target.axis_names
    named = f" ({', '.join(axis_names)})" if axis_names is not None else ""
    message = (
        f"{target.label}: expected {format_shape(expected)}{named}, "
        f"received {format_shape(received)} from {origin}"
    )
    if len(received) != len(expected):
        message += f": rank {len(received)} != {len(expected)}"
    else:
        message += ": " + ", ".join(
            _axis_difference(i, name, got, want)
            for i, (name, got, want) in enumerate(zip(axis_names or (None,) * len(expected), received, expected))
            if got != want
        )
    hint = _shape_hint(target, received)
    raise AssignmentError(message + (f" — hint: {hint}" if hint else ""))


def _axis_difference(index: int, name: str | None, received: int, expected: int) -> str:
    # A pointwise kernel's leading axes are named "1", an unnamed variable's not at all:
    # say which axis instead.
    label = f"axis {index}" if name is None or name == "1" else name
    return f"{label} {received} != {expected}"


def _shape_hint(target: TargetVariable, received: tuple[int, ...]) -> str | None:
    """What the received shape most likely is, when that can be told."""
    expected = target.shape
    if received == torch_shape(target) and received != expected:
        layout = ", ".join(torch_axis_names(target))
        return (
            f"this is the PyTorch/ONNX layout ({layout}); pass --layout torch, or convert "
            f"it to the Keras layout with {from_torch_code(target)}"
        )
    if _squeezed(received) == _squeezed(expected):
        verb = "np.squeeze(a)" if 1 not in expected else f"np.reshape(a, {format_shape(expected)})"
        return (
            f"it differs only by axes of length 1; {verb} would fit, if that is what "
            "the source means"
        )
    if sorted(received) == sorted(expected):
        return (
            "it holds the expected axes in another order; check what each axis means "
            "and transpose it (np.transpose)"
        )
    if int(np.prod(received)) == int(np.prod(expected)):
        return (
            f"it has the same number of elements ({int(np.prod(expected))}); a reshape "
            "may be intended, but check what each axis means first"
        )
    return None


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _check_finite(target: TargetVariable, array: np.ndarray, origin: str) -> None:
    if array.dtype.kind in "iu":
        return
    wide = array.astype(np.float64)
    nan, inf = np.isnan(wide), np.isinf(wide)
    bad = nan | inf
    if not bad.any():
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise AssignmentError(
        f"{target.label}: {origin} holds {int(nan.sum())} NaN and {int(inf.sum())} Inf "
        f"values (first at index {first}); expected finite numbers: fix the source"
    )


def _cast(
    target: TargetVariable, array: np.ndarray, origin: str, dtype: np.dtype
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``array`` as ``dtype`` (round to nearest even), refusing overflow and inexact ints."""
    if array.dtype == dtype:
        # A copy: the caller's array may change after the checks passed.
        return array.copy(order="C"), ()
    with np.errstate(over="ignore"):
        value = array.astype(dtype)
    wide = value.astype(np.float64)
    overflow = np.isinf(wide)
    if overflow.any():
        index = tuple(int(i) for i in np.argwhere(overflow)[0])
        limit = _largest_finite(dtype)
        raise AssignmentError(
            f"{target.label}: {origin} value {array[index]} at index {index} overflows "
            f"{target.dtype} (largest finite value {limit:g}); scale the source into range"
        )
    if array.dtype.kind in "iu":
        _check_exact_integers(target, array, origin, value)
        return value, ()
    flushed = int(np.count_nonzero((array != 0) & (wide == 0)))
    if flushed:
        return value, (
            f"{flushed} nonzero values too small for {target.dtype} became 0",
        )
    return value, ()


def _largest_finite(dtype: np.dtype) -> float:
    if dtype.kind == "f":
        return float(np.finfo(dtype).max)
    import ml_dtypes  # bfloat16: the value was just cast to it, so this costs nothing

    return float(ml_dtypes.finfo(dtype).max)


def _check_exact_integers(
    target: TargetVariable, array: np.ndarray, origin: str, value: np.ndarray
) -> None:
    approx = array.astype(np.float64)
    wide = value.astype(np.float64)
    inexact = approx != wide
    # Beyond 2**53 the float64 view of the source rounds too: compare as Python ints.
    for flat in np.flatnonzero((np.abs(approx) >= _EXACT_IN_FLOAT64) & ~inexact):
        if int(array.flat[flat]) != int(wide.flat[flat]):
            inexact.flat[flat] = True
            break
    if not inexact.any():
        return
    index = tuple(int(i) for i in np.argwhere(inexact)[0])
    raise AssignmentError(
        f"{target.label}: {origin} integer {int(array[index])} at index {index} is not "
        f"exactly representable as {target.dtype} (it would become {wide[index]:.17g}); "
        "convert the source to floats yourself if the rounding is intended"
    )
