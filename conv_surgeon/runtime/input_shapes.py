"""The inputs a check feeds the model: each input's shape (declared by the file, as Keras
built it, given by ``--input-shape``, searched, or loaded), the ladder of sizes searched,
the seeded inputs drawn, and the arrays of a ``--load-inputs`` file.

Running the model is not done here: the search is handed the forward pass
(:func:`.running.forward`) as a function of the inputs.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConvSurgeonError, SmokeTestError, UsageError
from ..model.inputs import DeclaredInput, declared_inputs, extra_axes, fits, reconcile
from ..model.naming import format_shape
from ..store.documents import parse_json
from .checks import SmokeTarget
from .loading import config_text
from .messages import SKIP_HINT, ForwardFailure, shapes_text

# Unknown input sizes are tried from LADDER_START, doubling while every input that has
# unknown sizes stays within MAX_INPUT_ELEMENTS values (2**22: 16 MB of float32, so
# up to 1024 x 1024 x 3 for an image, 128**3 for a volume, a million steps for a signal).
LADDER_START = 32
MAX_INPUT_ELEMENTS = 1 << 22

# The model's outputs on the inputs given, or a ForwardFailure: the forward pass with its
# model bound (:func:`.running.forward`).
Forward = Callable[[list[np.ndarray]], list[np.ndarray]]


# Where an input's shape came from, as the report says it.
DECLARED, BUILT, GIVEN, SEARCHED, LOADED = (
    "declared by the file", "as Keras built the model", "from --input-shape", "sizes searched",
    "from --load-inputs")


@dataclass(frozen=True)
class _Inputs:
    """The shapes the smoke test feeds, and where they came from."""

    bases: list[tuple[Any, ...]]  # per input: batch axis, then sizes (None where still unknown)
    symbolic: list[tuple[Any, ...]]  # what Keras built
    declared: list[DeclaredInput | None]  # what the file declares, where it fits

    @property
    def origins(self) -> list[str]:
        """Per input, for the report: DECLARED or BUILT."""
        return [BUILT if claim is None else DECLARED for claim in self.declared]


def declared_shapes(target: SmokeTarget) -> list[DeclaredInput]:
    """The input shapes the config of the model Keras loads declares ([] if none)."""
    path = target.config if target.kind == "weights" else target.path
    if path is None or target.kind == "preset":
        return []
    text = config_text(path)
    if not text and path.suffix.lower() in (".h5", ".hdf5") and path.is_file():
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                value = handle.attrs.get("model_config")
        except OSError:
            return []
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
    try:
        config = parse_json(text) if text else None
    except ValueError:
        return []
    return declared_inputs(config if isinstance(config, dict) else None)


def _known_inputs(model: Any, declared: Sequence[DeclaredInput]) -> tuple[_Inputs, list[str]]:
    """Each input's shape from the file first, reconciled with the one Keras built; and a
    note for each input Keras built with another shape than the file declares."""
    symbolic = [tuple(t.shape) for t in model.inputs]
    bases: list[tuple[Any, ...]] = []
    fitting: list[DeclaredInput | None] = []
    notes = []
    for i, built in enumerate(symbolic):
        claim = declared[i] if len(declared) == len(symbolic) else None
        merged = reconcile(built, claim.shape) if claim is not None else None
        if claim is None or merged is None:
            bases.append(built)
            fitting.append(None)
            continue
        if extra_axes(built, claim.shape):
            notes.append(f"input {i}: the file declares {claim.shape} ({claim.origin}), Keras built "
                         f"{built}; its extra axis gets size 1")
        bases.append(merged)
        fitting.append(claim)
    return _Inputs(bases, symbolic, fitting), notes


def _given_shapes(known: _Inputs, given: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The --input-shape sizes checked against the model's inputs, with a batch axis of 1.

    A size fits the shape Keras built, or the shape the file declares (then mapped onto
    Keras's, as :func:`reconcile` does). A shape the model's inputs cannot take is a
    mistake on the command line (a usage error), not a failure of the written model.
    """
    symbolic = known.symbolic
    if len(given) != len(symbolic):
        raise UsageError(
            f"--input-shape: the model has {len(symbolic)} input(s) "
            f"{', '.join(str(s) for s in symbolic)}, received {len(given)} shape(s); give "
            "one --input-shape per input, without the batch axis"
        )
    shapes = []
    for i, base in enumerate(known.bases):
        wanted = tuple(int(w) for w in given[i])
        found = _given_shape(base, symbolic[i], known.declared[i], wanted)
        if found is None:
            claim = known.declared[i]
            declared = (f", or the shape the file declares {claim.shape[1:]}"
                        if claim is not None and len(claim.shape) != len(base) else "")
            raise UsageError(
                f"--input-shape {wanted} does not fit model input {i} {symbolic[i]} (batch axis "
                f"excluded: {tuple(base[1:])}{declared}); give the sizes for its None axes"
            )
        shapes.append(found)
    return shapes


def _given_shape(base: tuple[Any, ...], built: tuple[Any, ...], claim: DeclaredInput | None,
                 wanted: tuple[int, ...]) -> tuple[int, ...] | None:
    """``wanted`` as an input of shape ``base`` (``built`` reconciled with the file's ``claim``)
    takes it: sizes for ``base``, or for the declared shape, mapped onto ``built``; None
    when neither fits. Either may include the batch axis."""
    sizes = wanted[1:] if len(wanted) == len(base) else wanted
    if fits(base[1:], sizes):
        return (1, *sizes)
    if claim is None:
        return None
    sizes = wanted[1:] if len(wanted) == len(claim.shape) else wanted
    mapped = reconcile(built, (1, *sizes)) if fits(claim.shape[1:], sizes) else None
    known = tuple(d for d in (mapped or ())[1:] if d is not None)
    return (1, *known) if mapped is not None and len(known) == len(mapped) - 1 else None


def _filled(bases: list[tuple[Any, ...]], size: int) -> list[tuple[int, ...]]:
    return [(1,) + tuple(size if d is None else int(d) for d in shape[1:]) for shape in bases]


def _ladder(bases: list[tuple[Any, ...]], free: list[int]) -> list[int]:
    """The sizes to try for unknown axes: cheapest first, bounded per input; then 1, which
    an axis Keras added to the file's shape takes where the file says nothing."""
    sizes = [LADDER_START]
    while all(
        math.prod(2 * sizes[-1] if d is None else int(d) for d in bases[i][1:]) <= MAX_INPUT_ELEMENTS
        for i in free
    ):
        sizes.append(2 * sizes[-1])
    return sizes + [1]


def _sizes_text(sizes: list[int]) -> str:
    return ", ".join(map(str, sizes)) if len(sizes) <= 3 else f"{sizes[0]}, {sizes[1]}, ..., {sizes[-1]}"


def _inputs_text(symbolic: Sequence[tuple[Any, ...]], indices: Iterable[int]) -> str:
    """``input 0 (None, None, 1)``: model inputs with their batch and unknown axes as None."""
    return " and ".join(f"input {i} {symbolic[i]}" for i in indices)


def _seeded_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random values an input of ``dtype`` accepts: noise for floats, 0/1 otherwise."""
    if "float" in dtype:
        return rng.standard_normal(shape).astype(np.float32)
    if "int" in dtype or dtype == "bool":
        # Small non-negative integers are valid token ids and lookup indices.
        return rng.integers(0, 2, size=shape).astype(dtype)
    return np.full(shape, "a" if dtype == "string" else 0, dtype=object if dtype == "string" else dtype)


@dataclass(frozen=True)
class Feed:
    """Inputs the model accepted, its outputs on them, and what the report says of them."""

    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    origins: list[str]
    notes: list[str]


def run_seeded(
    model: Any, run: Forward, given: Sequence[tuple[int, ...]] | None, seed: int,
    declared: Sequence[DeclaredInput] = (),
) -> Feed:
    """Inputs the model accepts, its outputs on them (``run``), and notes on the sizes chosen.

    Each input's shape comes from the file's config first (:func:`_known_inputs`).
    Unknown sizes not given are searched: each size of the ladder in turn, until the
    forward pass runs and gives a non-empty output. Each try draws its input from a
    fresh generator, so the inputs found are those ``--input-shape`` would give.
    """
    known, shape_notes = _known_inputs(model, declared)
    symbolic, bases = known.symbolic, known.bases
    dtypes = [str(t.dtype) for t in model.inputs]

    def attempt(shapes: list[tuple[int, ...]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        rng = np.random.default_rng(seed)
        inputs = [_seeded_input(rng, shape, dtype) for shape, dtype in zip(shapes, dtypes)]
        return inputs, run(inputs)

    free = [i for i, shape in enumerate(bases) if None in shape[1:]]
    if given is not None or not free:
        shapes = _given_shapes(known, given) if given is not None else _filled(bases, LADDER_START)
        try:
            inputs, arrays = attempt(shapes)
        except ForwardFailure as failure:
            if given is None:
                raise SmokeTestError(
                    f"the forward pass failed on the input {shapes_text(shapes)} ({failure}); "
                    f"nothing was written; {SKIP_HINT}"
                ).with_detail(failure.detail) from None
            raise SmokeTestError(
                f"the forward pass failed on the input {shapes_text(shapes)} given by --input-shape "
                f"({failure}); nothing was written; give sizes that "
                f"{_inputs_text(symbolic, range(len(symbolic)))} accepts with --input-shape SHAPE "
                f"(without the batch axis), {SKIP_HINT}"
            ).with_detail(failure.detail) from None
        origins = [GIVEN] * len(shapes) if given is not None else known.origins
        return Feed(inputs, arrays, origins, shape_notes if given is None else [])
    rejected: list[int] = []
    last = ""
    detail = None
    for size in _ladder(bases, free):
        shapes = _filled(bases, size)
        try:
            inputs, arrays = attempt(shapes)
        except ForwardFailure as failure:
            rejected.append(size)
            if size != 1 or not last:  # the error at the largest size says the most
                last, detail = f"on {shapes_text(shapes)}: {failure}", failure.detail
            continue
        empty = next((a.shape for a in arrays if a.size == 0), None)
        if empty is not None:
            # A too-small input can shrink to nothing without an error: nothing to check then.
            rejected.append(size)
            last = f"on {shapes_text(shapes)}: the output {format_shape(empty)} is empty"
            continue
        tried = ""
        if rejected:
            tried = f" ({rejected[0]} was rejected)" if len(rejected) == 1 else f" ({rejected[0]}..{rejected[-1]} were rejected)"
        notes = [
            f"input {i} {symbolic[i]}: unknown sizes set to {size}{tried}; use --input-shape to choose them"
            for i in free
        ]
        origins = [(SEARCHED if i in free else origin) for i, origin in enumerate(known.origins)]
        return Feed(inputs, arrays, origins, shape_notes + notes)
    raise SmokeTestError(
        f"the forward pass failed at every input size tried: the unknown sizes of "
        f"{_inputs_text(symbolic, free)} at "
        f"{_sizes_text(rejected[:-1])} and 1 (the error at the largest, {last}); nothing was written; give the sizes "
        f"with --input-shape SHAPE (without the batch axis), {SKIP_HINT}"
    ).with_detail(detail)


def read_inputs_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a --load-inputs file: an .npz as --save-inputs writes it."""
    redo = "save the inputs with np.savez('inputs.npz', input_0=x) (one key per model input)"
    try:
        # A memory map: a .npy given by mistake is only opened to read its shape.
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise ConvSurgeonError(f"--load-inputs {path}: not a readable .npz file ({exc}); {redo}") from None
    if isinstance(loaded, np.ndarray):
        raise ConvSurgeonError(
            f"--load-inputs {path}: expected an .npz file with one array per model input, received "
            f"a single .npy array {format_shape(loaded.shape)}; save it with "
            f"np.savez('{path.with_suffix('.npz')}', input_0=np.load('{path}')) and pass that file"
        )
    try:
        with loaded as bundle:
            return {key: bundle[key] for key in bundle.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConvSurgeonError(f"--load-inputs {path}: not a readable .npz file ({exc}); {redo}") from None


def matched_inputs(path: Path, stored: dict[str, np.ndarray], model: Any) -> list[np.ndarray]:
    """The arrays for the model's inputs (keys input_0, input_1, ... or the inputs' names),
    each checked against its input's shape before anything runs."""
    inputs = []
    for i, tensor in enumerate(model.inputs):
        name = str(getattr(tensor, "name", ""))
        key = f"input_{i}" if f"input_{i}" in stored else name
        if key not in stored:
            raise ConvSurgeonError(
                f"--load-inputs {path}: no array for model input {i} ('{name}'); expected key "
                f"input_{i} or {name}, found: {', '.join(sorted(stored)) or 'none'}"
            )
        array, expects = stored[key], tuple(tensor.shape)
        if not fits(expects, array.shape):
            batch = fits(expects, (1,) + array.shape)
            raise ConvSurgeonError(
                f"--load-inputs {path}: model input {i} expects {expects}, received {array.shape} "
                f"(array '{key}'); "
                + (f"add the batch axis: np.savez(FILE, input_{i}=x[None])" if batch else
                   f"save arrays of that shape with np.savez(FILE, input_{i}=...)")
            )
        inputs.append(array)
    batches = {a.shape[0] for a in inputs if a.ndim}
    if len(batches) > 1:
        raise ConvSurgeonError(
            f"--load-inputs {path}: the arrays hold {shapes_text([a.shape for a in inputs])}, "
            "different numbers of samples; give every input the same first axis"
        )
    return inputs


def run_loaded(path: Path, stored: dict[str, np.ndarray], model: Any, run: Forward) -> Feed:
    """The arrays of the --load-inputs file ``path`` (read as ``stored``) and the model's
    outputs on them (``run``)."""
    inputs = matched_inputs(path, stored, model)
    try:
        arrays = run(inputs)
    except ForwardFailure as failure:
        raise SmokeTestError(
            f"the forward pass failed on the input {shapes_text([a.shape for a in inputs])} "
            f"from --load-inputs {path} ({failure}); nothing was written; "
            f"check the arrays of --load-inputs, {SKIP_HINT}"
        ).with_detail(failure.detail) from None
    return Feed(inputs, arrays, [LOADED] * len(inputs), [f"inputs from {path}"])
