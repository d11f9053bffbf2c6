"""The read side of `show`: the variables a picture draws, with their values. No TensorFlow.

A filter grid draws one kernel of one convolution layer; histograms draw every variable
of a layer (or the one ``weight`` names), or of every convolution layer. ``against``
reads the same variables of a second model, matched by layer path and variable name.
Drawing is :mod:`conv_surgeon.pictures`' job; this module only chooses and reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ..errors import ConvSurgeonError, UsageError
from ..model.naming import format_shape
from ..model.selection import main_kernel, resolve_layer, resolve_variable
from ..model.structure import Layer, ModelStructure, Variable, read_structure, read_variables

if TYPE_CHECKING:
    import numpy as np

    from ..store.source import ModelSource


@dataclass(frozen=True)
class ShownVariable:
    """One variable to draw: its layer, where it is stored, and its values as float32
    (float64 stays float64), with the ``against`` model's values of it."""

    layer: Layer
    variable: Variable
    value: np.ndarray
    against: np.ndarray | None = None

    @cached_property
    def difference(self) -> np.ndarray | None:
        """``value - against`` (A - B), when there is an ``against``."""
        if self.against is None:
            return None
        import numpy as np

        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as it should be
            difference: np.ndarray = self.value - self.against
        return difference


@dataclass(frozen=True)
class ShowData:
    """What one picture draws: a kernel (``histograms`` False) or variables' histograms."""

    source: str  # the model's label
    against: str | None  # the --against model's label
    histograms: bool
    shown: tuple[ShownVariable, ...]  # in model order, a layer's variables together


def read_shown(
    source: ModelSource,
    layer_query: str | None,
    *,
    weight: str | None = None,
    histograms: bool = False,
    against: ModelSource | None = None,
) -> ShowData:
    """The variables a picture of ``layer_query`` draws; ``None`` means every convolution
    layer, which only histograms can show (one row per layer).

    >>> from conv_surgeon.store.source import ModelSource
    >>> data = read_shown(ModelSource.from_path("sample_models/tiny_cnn.keras"), "conv1")
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
    values = _float_values(read_variables(source, [v for _, v in chosen]))
    theirs: dict[str, np.ndarray] = {}
    matched: list[Variable | None] = [None] * len(chosen)
    if against is not None:
        matched = list(_matching(read_structure(against), chosen, source.label, against.label))
        theirs = _float_values(read_variables(against, [v for v in matched if v is not None]))
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


def _float_values(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every value as float32 (float64 kept): bfloat16, float16 and integers draw as floats."""
    import numpy as np

    return {key: value if value.dtype in (np.float32, np.float64) else value.astype(np.float32)
            for key, value in values.items()}
