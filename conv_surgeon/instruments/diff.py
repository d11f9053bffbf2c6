"""`diff`: compare the weights of two saved models layer by layer. No TensorFlow here.

Layers are matched by path (``outer/inner/conv1``), variables by name. Only layers that
line up (same class, same variable names, same shapes) have their values compared; the
others are reported, never compared, so two different architectures give a report,
not a crash. A layer whose variables differ only in the length of some axes (a pruned
conv) is ``resized``, and says which: ``3 of 64 filters removed``.

Numbers, per compared variable (``a`` is the first model, ``b`` the second):

- ``identical``: equal raw bytes, checked first; otherwise equal values elementwise,
  where two NaNs at the same position count as equal (and ``-0.0`` equals ``0.0``). A
  dtype change is never identical, even when every value survived the cast.
- ``max_abs``: ``max |b - a|`` in float64 over the elements; equal elements contribute
  0, an element NaN on one side only (or infinities of opposite sign) contributes inf.
- ``rel_l2``: ``||b - a|| / ||a||`` with the same elementwise differences and the norm
  of ``a`` over its finite elements. When that norm is 0 (an all-zero ``a``),
  ``rel_l2`` is ``inf`` if anything changed and ``0.0`` if nothing did: a number either
  way, so results sort and compare; ``None`` is kept for "not compared".
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import h5py
import numpy as np

from ..model.structure import Layer, Variable, read_structure
from ..store.hdf5 import read_dataset
from ..store.locking import reading_models
from ..store.model_file import ModelFile, OpenStore, open_store
from ..store.worker import PARSE_TIMEOUT_S, run_bounded

LayerStatus = Literal["same", "changed", "resized", "only_a", "only_b", "incompatible"]


@dataclass(frozen=True)
class VariableDiff:
    """One variable of a matched layer; the ``_b`` side is None when it is only in A."""

    name: str
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    dtype_a: str | None
    dtype_b: str | None
    identical: bool | None  # None when the values were not compared
    max_abs: float | None
    rel_l2: float | None


# What an axis holds, in words, and its singular; the others are lengths, not counts
# ("kernel height: 3 -> 5").
_COUNTED = {
    "filters": "filter", "input channels": "input channel", "input channels per group": "input channel per group",
    "channels": "channel", "units": "unit", "input features": "input feature",
}


@dataclass(frozen=True)
class AxisChange:
    """An axis whose length differs between the two models: what it holds, in words
    (``filters``, ``input channels``, ``kernel height``), and its length in A and in B."""

    axis: str
    before: int
    after: int

    def __str__(self) -> str:
        """``3 of 64 filters removed``, ``1 filter added (64 -> 65)``, ``kernel height: 3 -> 5``."""
        if self.axis not in _COUNTED:
            return f"{self.axis}: {self.before} -> {self.after}"
        if self.after < self.before:
            return f"{self.before - self.after} of {self.before} {self.axis} removed"
        added = self.after - self.before
        return f"{added} {self.axis if added > 1 else _COUNTED[self.axis]} added ({self.before} -> {self.after})"


@dataclass(frozen=True)
class LayerDiff:
    path: str
    class_a: str | None  # None when the layer is only in B
    class_b: str | None  # None when the layer is only in A
    status: LayerStatus
    variables: tuple[VariableDiff, ...]
    resized: tuple[AxisChange, ...] = ()  # a ``resized`` layer's axes whose length changed

    @property
    def summary(self) -> str | None:
        """What changed in a ``resized`` layer, in one line: ``3 of 64 filters removed``."""
        return ", ".join(str(change) for change in self.resized) if self.status == "resized" else None

    @property
    def reason(self) -> str | None:
        """Why an ``incompatible`` layer was not compared, in one line."""
        if self.status != "incompatible":
            return None
        if self.class_a != self.class_b:
            return f"class {self.class_a} != {self.class_b}"
        unpaired = [v.name for v in self.variables if v.shape_a is None or v.shape_b is None]
        if unpaired:
            names_a = [v.name for v in self.variables if v.shape_a is not None]
            names_b = [v.name for v in self.variables if v.shape_b is not None]
            return f"variables ({', '.join(names_a)}) != ({', '.join(names_b)})"
        return "; ".join(
            f"{v.name} shape {v.shape_a} != {v.shape_b}"
            for v in self.variables
            if v.shape_a != v.shape_b
        )


@dataclass(frozen=True)
class DiffReport:
    a: str  # the models' labels (paths, or "<stdin>")
    b: str
    layers: tuple[LayerDiff, ...]
    # Without all_layers: the other layers with weights (Dense, BatchNormalization, ...)
    # that differ. They are compared too, never shown, and never silently passed over.
    others_differing: tuple[str, ...] = ()

    @property
    def identical(self) -> bool:
        """Every compared layer is the same and none is in only one model."""
        return not self.others_differing and all(layer.status == "same" for layer in self.layers)


@dataclass(frozen=True)
class _Store:
    """An open weight store, with the bytes under it when its datasets can be addressed.

    Comparing two variables' stored bytes where they lie (a memory map of the file, or
    the bytes read from stdin) is the fast path of a diff: most variables of two related
    models are equal, and for ResNet50 against itself it takes 0.1 s where decoding
    each variable through h5py first took 0.35 s.
    """

    store: OpenStore
    buffers: tuple[tuple[bytes | mmap.mmap | None, int], ...]  # per file: (bytes under it, where the HDF5 starts); None: a compressed .keras member

    def stored_bytes(self, variable: Variable) -> np.ndarray | None:
        """The variable's bytes as stored (no copy), or None if not stored contiguously."""
        buffer, base = self.buffers[variable.file]
        if buffer is None:
            return None
        dataset = h5py.h5d.open(self.store.h5s[variable.file].id, variable.dataset.encode())
        offset = dataset.get_offset()  # None for chunked, compressed or unallocated data
        size = variable.size * dataset.dtype.itemsize
        if offset is None or dataset.get_storage_size() != size:
            return None
        start = base + offset
        if start + size > len(buffer):
            return None
        return np.frombuffer(buffer, dtype=np.uint8, count=size, offset=start)

    def value(self, variable: Variable) -> np.ndarray:
        return read_dataset(self.store.dataset(variable.file, variable.dataset))


@contextmanager
def _open_store(source: ModelFile) -> Iterator[_Store]:
    with open_store(source) as store, ExitStack() as stack:
        buffers: list[tuple[bytes | mmap.mmap | None, int]] = []
        for store_file in store.files:
            member = store_file.member
            if member is not None and not member.stored:
                buffers.append((None, 0))
            elif store_file.path is None:
                assert source.data is not None
                buffers.append((source.data, member.data_offset if member is not None else 0))
            else:
                handle = stack.enter_context(open(store_file.path, "rb"))
                mapped = stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
                buffers.append((mapped, member.data_offset if member is not None else 0))
        yield _Store(store, tuple(buffers))


@reading_models
def diff_models(a: ModelFile, b: ModelFile, *, all_layers: bool = False) -> DiffReport:
    """Compare the convolution layers of two models (every layer with weights if ``all_layers``).

    Without ``all_layers`` the other layers with weights are compared as well, and those
    that differ are named in ``others_differing``: the models are not identical then.

    Weights are read one variable at a time through both weight stores, opened once, so
    memory stays at about one layer's worth whatever the model's size.

    >>> report = diff_models(ModelFile.from_path("sample_models/tiny_cnn.keras"),
    ...                      ModelFile.from_path("sample_models/tiny_cnn.h5"))
    >>> report.identical, [layer.status for layer in report.layers]
    (True, ['same', 'same', 'same'])

    Both files are untrusted: the comparison runs in a bounded worker.
    """
    return run_bounded(lambda: _diff_models(a, b, all_layers), PARSE_TIMEOUT_S, f"{a.label} and {b.label}",
                       a.size() + b.size())


def _diff_models(a: ModelFile, b: ModelFile, all_layers: bool) -> DiffReport:
    layers_a = {layer.path: layer for layer in read_structure(a).layers}
    layers_b = {layer.path: layer for layer in read_structure(b).layers}

    def shown(path: str) -> bool:
        # A layer that is a convolution in either model is shown, with both sides.
        twins = (layers_a.get(path), layers_b.get(path))
        return all_layers or any(layer is not None and layer.conv is not None for layer in twins)

    paths = list(_merged_paths(list(layers_a), list(layers_b)))
    with _open_store(a) as store_a, _open_store(b) as store_b:
        diffs = [_diff_layer(layers_a.get(path), layers_b.get(path), store_a, store_b) for path in paths]
    others = tuple(diff.path for path, diff in zip(paths, diffs) if not shown(path) and diff.status != "same")
    return DiffReport(a.label, b.label, tuple(diff for path, diff in zip(paths, diffs) if shown(path)), others)


def _merged_paths(paths_a: list[str], paths_b: list[str]) -> Iterator[str]:
    """A's paths in A's order, each B-only path placed before the next path both share."""
    in_a, in_b = set(paths_a), set(paths_b)
    pending_b = iter(paths_b)
    emitted: set[str] = set()
    for path in paths_a:
        if path in in_b:
            for b_path in pending_b:
                if b_path == path:
                    break
                if b_path not in in_a and b_path not in emitted:
                    emitted.add(b_path)
                    yield b_path
        emitted.add(path)
        yield path
    for b_path in paths_b:
        if b_path not in emitted:
            emitted.add(b_path)
            yield b_path


def _variable_key(layer: Layer, variable: Variable) -> str:
    # Keras 2 calls a DepthwiseConv2D's kernel `depthwise_kernel`, Keras 3 `kernel`.
    conv = layer.conv
    if conv is not None and conv.kind == "depthwise" and variable.name == "depthwise_kernel":
        return "kernel"
    return variable.name


def _is_positional(names: list[str]) -> bool:
    """Names that are only store positions: the class's variables are not catalogued."""
    return all(name.isdigit() for name in names)


def _pair_variables(
    layer_a: Layer, layer_b: Layer
) -> list[tuple[str, Variable | None, Variable | None]]:
    """Variables of the two layers paired by name, A's order first then B-only ones.

    A `.keras` file names the variables of a class the catalogue does not know by
    position ("0", "1"), a `.h5` by their stored names: those pair by position, which
    is Keras's weight order in both formats.
    """
    names_a = [_variable_key(layer_a, v) for v in layer_a.variables]
    names_b = [_variable_key(layer_b, v) for v in layer_b.variables]
    if len(names_a) == len(names_b) and (_is_positional(names_a) or _is_positional(names_b)):
        return [
            (nb if _is_positional(names_a) else na, va, vb)
            for na, nb, va, vb in zip(names_a, names_b, layer_a.variables, layer_b.variables)
        ]
    by_name_b = dict(zip(names_b, layer_b.variables))
    pairs: list[tuple[str, Variable | None, Variable | None]] = [
        (name, variable, by_name_b.get(name)) for name, variable in zip(names_a, layer_a.variables)
    ]
    pairs.extend(
        (name, None, variable)
        for name, variable in zip(names_b, layer_b.variables)
        if name not in names_a
    )
    return pairs


def _class_key(layer: Layer) -> str:
    return layer.conv.name if layer.conv is not None else layer.class_name


def _unpaired(name: str, a: Variable | None, b: Variable | None) -> VariableDiff:
    return VariableDiff(
        name=name,
        shape_a=a.shape if a is not None else None,
        shape_b=b.shape if b is not None else None,
        dtype_a=a.dtype if a is not None else None,
        dtype_b=b.dtype if b is not None else None,
        identical=None,
        max_abs=None,
        rel_l2=None,
    )


def _diff_layer(
    layer_a: Layer | None, layer_b: Layer | None, store_a: _Store, store_b: _Store
) -> LayerDiff:
    if layer_a is None or layer_b is None:
        layer = layer_a or layer_b
        assert layer is not None
        only_a = layer_a is not None
        return LayerDiff(
            path=layer.path,
            class_a=layer.class_name if only_a else None,
            class_b=None if only_a else layer.class_name,
            status="only_a" if only_a else "only_b",
            variables=tuple(
                _unpaired(_variable_key(layer, v), v if only_a else None, None if only_a else v)
                for v in layer.variables
            ),
        )
    pairs = _pair_variables(layer_a, layer_b)
    paired = _class_key(layer_a) == _class_key(layer_b) and all(
        va is not None and vb is not None and len(va.shape) == len(vb.shape) for _, va, vb in pairs
    )
    if not paired or any(va.shape != vb.shape for _, va, vb in pairs if va is not None and vb is not None):
        unpaired = tuple(_unpaired(name, va, vb) for name, va, vb in pairs)
        if not paired:
            return LayerDiff(layer_a.path, layer_a.class_name, layer_b.class_name, "incompatible", unpaired)
        return LayerDiff(layer_a.path, layer_a.class_name, layer_b.class_name, "resized", unpaired,
                         _axis_changes(layer_a, unpaired))
    variables = []
    for name, va, vb in pairs:
        assert va is not None and vb is not None
        variables.append(_compare_variable(name, va, vb, store_a, store_b))
    status: LayerStatus = "same" if all(v.identical for v in variables) else "changed"
    return LayerDiff(layer_a.path, layer_a.class_name, layer_b.class_name, status, tuple(variables))


def _axis_changes(layer: Layer, variables: tuple[VariableDiff, ...]) -> tuple[AxisChange, ...]:
    """The axes whose length changed, each told once (a conv's kernel and bias both lose
    the filters); the lengths that follow from others (a depthwise conv's outputs) only
    when nothing else changed."""
    changes: list[AxisChange] = []
    following: list[AxisChange] = []
    for variable in variables:
        assert variable.shape_a is not None and variable.shape_b is not None
        words = _axis_words(layer, variable.name, len(variable.shape_a))
        for (word, follows), before, after in zip(words, variable.shape_a, variable.shape_b):
            if before != after:
                (following if follows else changes).append(AxisChange(word, before, after))
    return tuple(dict.fromkeys(changes or following))


_SPATIAL_WORDS = {"k": "kernel size", "kd": "kernel depth", "kh": "kernel height", "kw": "kernel width"}


def _axis_words(layer: Layer, variable: str, rank: int) -> list[tuple[str, bool]]:
    """What each axis of ``variable`` holds, in words, and whether its length follows
    from the others'."""
    conv = layer.conv
    names = conv.axis_names(variable) if conv is not None else ()
    if len(names) == rank and conv is not None:
        grouped = layer.config.get("groups", 1) not in (1, None)
        words = {
            "filters": ("filters", False),
            "in_channels/groups": ("input channels per group" if grouped else "input channels", False),
            "in_channels": ("channels" if conv.kind == "depthwise" else "input channels", False),
            "depth_multiplier": ("depth multiplier", False),
            "in_channels*depth_multiplier": ("channels", True),
            "1": ("1", True),
        }
        return [words.get(name) or (_SPATIAL_WORDS.get(name, name), False) for name in names]
    if layer.class_name == "Dense" and rank in (1, 2):
        return [("input features", False), ("units", False)][2 - rank:]
    if rank == 1 and all(len(v.shape) == 1 for v in layer.variables):
        return [("channels", False)]  # BatchNormalization, LayerNormalization, ...
    return [(f"{variable} axis {axis}", False) for axis in range(rank)]


def _compare_variable(
    name: str, va: Variable, vb: Variable, store_a: _Store, store_b: _Store
) -> VariableDiff:
    if va.dtype == vb.dtype and _same_stored_bytes(va, vb, store_a, store_b):
        identical, max_abs, rel_l2 = True, 0.0, 0.0
    else:
        equal, max_abs, rel_l2 = value_difference(store_a.value(va), store_b.value(vb))
        identical = equal and va.dtype == vb.dtype
    return VariableDiff(name, va.shape, vb.shape, va.dtype, vb.dtype, identical, max_abs, rel_l2)


def _same_stored_bytes(va: Variable, vb: Variable, store_a: _Store, store_b: _Store) -> bool:
    # The views pin the memory maps: they must not outlive this call, or closing the
    # maps fails (a traceback keeps its frames' locals alive).
    stored_a, stored_b = store_a.stored_bytes(va), store_b.stored_bytes(vb)
    if stored_a is None or stored_b is None:
        return False
    return bool(np.array_equal(stored_a, stored_b))


def value_difference(a: np.ndarray, b: np.ndarray) -> tuple[bool, float, float]:
    """``(equal, max_abs, rel_l2)`` of two same-shape arrays, as the module docstring defines.

    >>> value_difference(np.array([3.0, 4.0]), np.array([3.0, 5.0]))
    (False, 1.0, 0.2)
    """
    fa = np.asarray(a, dtype=np.float64).ravel()
    fb = np.asarray(b, dtype=np.float64).ravel()
    equal = (fa == fb) | (np.isnan(fa) & np.isnan(fb))
    with np.errstate(invalid="ignore", over="ignore"):
        delta = np.abs(fb - fa)
    delta[equal] = 0.0
    delta[np.isnan(delta)] = np.inf
    max_abs = float(delta.max()) if delta.size else 0.0
    norm_delta = math.sqrt(float(np.dot(delta, delta)))
    finite_a = fa[np.isfinite(fa)]
    norm_a = math.sqrt(float(np.dot(finite_a, finite_a)))
    if norm_a > 0:
        rel_l2 = norm_delta / norm_a
    else:
        rel_l2 = math.inf if norm_delta > 0 else 0.0
    return bool(equal.all()), max_abs, rel_l2
