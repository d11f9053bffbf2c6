"""The read side of `show`: the variables a picture draws, with their values. No TensorFlow.

A filter grid draws one kernel of one convolution layer; histograms draw every variable
of a layer (or the one ``weight`` names), or of every convolution layer. ``against``
reads the same variables of a second model, matched by layer path and variable name.
Drawing is :mod:`conv_surgeon.pictures`' job; this module only chooses and reads.

Values come as :class:`Values`, flat floats over the stored bytes, without numpy: a
filter grid of a small kernel is drawn in less time than numpy takes to import.
"""

from __future__ import annotations

import operator
import sys
from array import array
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Sequence, cast

from ..errors import ConvSurgeonError, UsageError
from ..model.naming import format_shape
from ..model.selection import main_kernel, resolve_layer, resolve_variable
from ..model.structure import (Layer, ModelStructure, Variable,
                               read_raw_variables, read_structure)
from ..store.locking import reading_models

if TYPE_CHECKING:
    import numpy as np

    from ..store.model_file import ModelFile, RawValue

Code = Literal["f", "d"]  # float32, float64: the array module's codes
_CODES: dict[str, Code] = {"float32": "f", "float64": "d"}  # the dtypes kept as they are
# From this many values on, numpy's import (about 100 ms) costs less than a loop in Python.
NUMPY_FROM = 1 << 20


@dataclass(frozen=True)
class Values:
    """A variable's values as floats, flat in C order, with its shape: float32 and float64
    as stored, every other dtype (float16, bfloat16, integers) as float32, as drawn."""

    flat: Sequence[float]  # a memoryview or array of ``code``
    shape: tuple[int, ...]
    code: Code

    @classmethod
    def decode(cls, raw: RawValue) -> Values:
        code = _CODES.get(raw.dtype)
        if code is None:  # rare for kernels: numpy converts them exactly as it always did
            import numpy as np

            if raw.dtype == "bfloat16":
                import ml_dtypes

                dtype = np.dtype(ml_dtypes.bfloat16)
            else:
                dtype = np.dtype(raw.dtype).newbyteorder("<")
            data = np.frombuffer(raw.data, dtype).astype(np.float32).tobytes()
            code = "f"
        else:
            data = raw.data
        if sys.byteorder == "little":
            return cls(memoryview(data).cast(code), raw.shape, code)
        swapped = array(code, data)  # stored little-endian
        swapped.byteswap()
        return cls(swapped, raw.shape, code)

    def minus(self, other: Values) -> Values:
        """``self - other``, elementwise, in float64 if either is (numpy's promotion);
        float32 differences round as numpy's do (a double difference of two float32s
        rounds to the same float32)."""
        code: Code = "d" if "d" in (self.code, other.code) else "f"
        if len(self.flat) < NUMPY_FROM:
            return Values(array(code, map(operator.sub, self.flat, other.flat)), self.shape, code)
        import numpy as np

        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as it should be
            difference = self.numpy() - other.numpy()  # the same numbers, sooner
        return Values(memoryview(difference.tobytes()).cast(code), self.shape, code)

    def numpy(self) -> np.ndarray:
        """The values as a numpy array (a view, no copy)."""
        import numpy as np

        value: np.ndarray = np.frombuffer(cast(Any, self.flat), np.float64 if self.code == "d" else np.float32)
        return value.reshape(self.shape)


@dataclass(frozen=True)
class ShownVariable:
    """One variable to draw: its layer, where it is stored, and its values, with the
    ``against`` model's values of it."""

    layer: Layer
    variable: Variable
    value: Values
    against: Values | None = None

    @cached_property
    def difference(self) -> Values | None:
        """``value - against`` (A - B), when there is an ``against``."""
        return None if self.against is None else self.value.minus(self.against)


@dataclass(frozen=True)
class ShowData:
    """What one picture draws: a kernel (``histograms`` False) or variables' histograms."""

    source: str  # the model's label
    against: str | None  # the --against model's label
    histograms: bool
    shown: tuple[ShownVariable, ...]  # in model order, a layer's variables together


@reading_models
def read_shown(
    source: ModelFile,
    layer_query: str | None,
    *,
    weight: str | None = None,
    histograms: bool = False,
    against: ModelFile | None = None,
) -> ShowData:
    """The variables a picture of ``layer_query`` draws; ``None`` means every convolution
    layer, which only histograms can show (one row per layer).

    >>> from conv_surgeon.store.model_file import ModelFile
    >>> data = read_shown(ModelFile.from_path("sample_models/tiny_cnn.keras"), "conv1")
    >>> [(s.variable.name, s.value.shape) for s in data.shown]
    [('kernel', (3, 3, 1, 4))]
    """
    if layer_query is None and not histograms:
        raise UsageError("a filter grid draws one layer: give --layer L, or add --hist for every "
                         "convolution layer's histograms")
    if layer_query is None and weight is not None:
        raise UsageError("--weight names a variable of one layer; give --layer L with it")
    structure = read_structure(source)
    chosen = _chosen(structure, source.label, layer_query, weight, histograms)
    values = _values(read_raw_variables(source, [v for _, v in chosen]))
    theirs: dict[str, Values] = {}
    matched: list[Variable | None] = [None] * len(chosen)
    if against is not None:
        matched = list(_matching(read_structure(against), chosen, source.label, against.label))
        theirs = _values(read_raw_variables(against, [v for v in matched if v is not None]))
    shown = tuple(
        ShownVariable(layer, variable, values[variable.dataset],
                      None if other is None else theirs[other.dataset])
        for (layer, variable), other in zip(chosen, matched)
    )
    return ShowData(source.label, None if against is None else against.label, histograms, shown)


def _chosen(structure: ModelStructure, label: str, layer_query: str | None, weight: str | None,
            histograms: bool) -> list[tuple[Layer, Variable]]:
    if not structure.layers:
        raise ConvSurgeonError(f"{label}: the model has no layers with weights, so there is nothing to draw")
    if layer_query is None:
        if not structure.conv_layers:
            raise ConvSurgeonError(
                f"{label}: the model has no convolution layers, so --all has no rows to draw; "
                "use --layer L --hist for another layer's weights"
            )
        return [(layer, v) for layer in structure.conv_layers for v in layer.variables]
    layer = resolve_layer(structure, layer_query, label)
    if histograms:
        variables = [resolve_variable(layer, weight, label)] if weight is not None else list(layer.variables)
        return [(layer, v) for v in variables]
    if layer.conv is None:
        raise ConvSurgeonError(
            f"{label}: layer '{layer.path}' is a {layer.class_name} layer, not a convolution: the "
            "filter grid draws convolution kernels; use --hist for its weights' histograms"
        )
    variable = resolve_variable(layer, weight, label) if weight is not None else main_kernel(
        layer, label, "--weight NAME")
    if len(variable.shape) < 3:
        raise ConvSurgeonError(
            f"{label}: layer '{layer.path}' {variable.name} {format_shape(variable.shape)} is not a "
            "kernel: the filter grid draws kernels; use --hist to see its values"
        )
    return [(layer, variable)]


def _matching(structure: ModelStructure, chosen: list[tuple[Layer, Variable]], label: str,
              against_label: str) -> list[Variable]:
    """The variables of the --against model that stand where the chosen ones stand."""
    layers = {layer.path: layer for layer in structure.layers}
    found = []
    for layer, variable in chosen:
        theirs = layers.get(layer.path)
        if theirs is None:
            raise ConvSurgeonError(
                f"--against {against_label}: has no layer '{layer.path}' to compare with {label}; "
                "--against needs a model of the same architecture"
            )
        other = next((v for v in theirs.variables if v.name == variable.name), None)
        if other is None or other.shape != variable.shape:
            received = "no such variable" if other is None else format_shape(other.shape)
            raise ConvSurgeonError(
                f"--against {against_label}: layer '{layer.path}' {variable.name}: expected "
                f"{format_shape(variable.shape)} as in {label}, received {received}; --against "
                "needs a model of the same architecture"
            )
        found.append(other)
    return found


def _values(raw: dict[str, RawValue]) -> dict[str, Values]:
    return {key: Values.decode(value) for key, value in raw.items()}
