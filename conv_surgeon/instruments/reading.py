"""The read side: `inspect` and `get` as library calls. No TensorFlow here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..edits import LAYOUTS, Layout
from ..edits.targets import layer_targets
from ..errors import ConvSurgeonError
from ..model.catalogue import canonical_variable_name
from ..model.selection import main_kernel, resolve_layer, resolve_variable
from ..model.structure import (Layer, ModelStructure, Variable, read_structure,
                               read_variables)
from ..store.locking import reading_models
from ..store.model_file import ModelFile

if TYPE_CHECKING:
    import numpy as np

    from ..model.quantization import KernelQuantization, QuantBits


@dataclass(frozen=True)
class VariableStats:
    min: float
    max: float
    mean: float
    std: float
    l2: float
    zeros: int
    nonfinite: int


_QUANTIZED_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


@dataclass(frozen=True)
class KernelQuantRow:
    """One kernel of a conv or Dense layer, quantized for `inspect --quant`."""

    path: str  # the layer's path
    variable: str  # "kernel"; a separable conv has a depthwise_kernel and a pointwise_kernel
    shape: tuple[int, ...]
    result: KernelQuantization


@dataclass(frozen=True)
class QuantReport:
    bits: QuantBits
    rows: tuple[KernelQuantRow, ...]  # the most lost by per-tensor quantization first


@dataclass(frozen=True)
class InspectReport:
    source: str
    structure: ModelStructure
    layers: tuple[Layer, ...]  # the layers shown: convolutions, or all with --all
    stats: dict[str, VariableStats] | None  # keyed by dataset path, only with --stats
    history: list[dict[str, Any]] | None = None  # conv-surgeon's records, only with --history
    quant: QuantReport | None = None  # only with --quant

    @property
    def total_parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)


def variable_stats(value: np.ndarray) -> VariableStats:
    import numpy as np

    data = np.asarray(value, dtype=np.float64).ravel()
    finite = np.isfinite(data)
    good = data[finite]
    if good.size == 0:
        nan = float("nan")
        return VariableStats(nan, nan, nan, nan, nan, int(np.count_nonzero(data == 0)),
                             int(data.size - good.size))
    return VariableStats(
        min=float(good.min()),
        max=float(good.max()),
        mean=float(good.mean()),
        std=float(good.std()),
        l2=float(np.sqrt(np.dot(good, good))),
        zeros=int(np.count_nonzero(good == 0)),
        nonfinite=int(data.size - good.size),
    )


def _quantized_kernels(structure: ModelStructure) -> list[tuple[Layer, Variable, tuple[int, ...]]]:
    """Every conv and Dense kernel with its output-channel axes. EinsumDense and layers
    Keras already quantized are left out: their output channels are not one axis."""
    from ..model.quantization import output_channel_axes

    found = []
    for layer in structure.layers:
        kind = layer.kind
        if kind is None or kind.family not in ("conv", "dense"):
            continue
        for variable in layer.variables:
            if canonical_variable_name(variable.name) not in _QUANTIZED_KERNELS:
                continue
            names = kind.axis_names(variable.name, layer.config, variable.shape)
            axes = None if names is None else output_channel_axes(names)
            if axes is not None:
                found.append((layer, variable, axes))
    return found


def quant_report(source: ModelFile, structure: ModelStructure, bits: QuantBits) -> QuantReport:
    from ..model.quantization import kernel_quantization

    kernels = _quantized_kernels(structure)
    values = read_variables(source, [v for _, v, _ in kernels])
    rows = [KernelQuantRow(layer.path, variable.name, variable.shape,
                           kernel_quantization(values[variable.dataset], axes, bits))
            for layer, variable, axes in kernels]

    def order(row: KernelQuantRow) -> float:
        loss = row.result.loss_db
        return float("inf") if loss != loss else -loss  # NaN (non-finite weights) last

    return QuantReport(bits, tuple(sorted(rows, key=order)))


@reading_models
def inspect_model(
    source: ModelFile, *, all_layers: bool = False, stats: bool = False, history: bool = False,
    quant: QuantBits | None = None,
) -> InspectReport:
    """List the model's convolution layers (every layer with weights if ``all_layers``).

    Only ``stats`` and ``quant`` read weight bytes; ``quant`` ("int8" or "int4") measures
    every conv and Dense kernel quantized per tensor and per output channel; everything else
    comes from the file's structure.

    >>> report = inspect_model(ModelFile.from_path("sample_models/tiny_cnn.keras"))
    >>> [layer.path for layer in report.layers][:2]
    ['conv1', 'conv2']
    """
    if quant is not None and quant not in ("int8", "int4"):
        raise ConvSurgeonError(f"--quant {quant}: expected int8 or int4")
    structure = read_structure(source)
    layers = structure.layers if all_layers else structure.conv_layers
    values = None
    if stats:
        wanted = [v for layer in layers for v in layer.variables]
        values = {k: variable_stats(a) for k, a in read_variables(source, wanted).items()}
    records = None
    if history:
        from ..store.provenance import read_history

        records = read_history(source)
    quantized = None if quant is None else quant_report(source, structure, quant)
    return InspectReport(source.label, structure, layers, values, records, quantized)


@dataclass(frozen=True)
class WeightsExport:
    """Arrays ready for .npy/.npz: one layer's variables, or a bundle of many layers'."""

    layers: tuple[Layer, ...]
    arrays: dict[str, np.ndarray]  # variable name (bundle: <layer path>/<variable>) -> value
    notes: tuple[str, ...] = ()


def _exported(layers: list[tuple[Layer, list[Variable]]], source: ModelFile, layout: Layout,
              key: Callable[[Layer, Variable], str]) -> WeightsExport:
    """Read the variables and make them .npy-ready: PyTorch layout if asked, and
    bfloat16 as float32 (.npy has no bfloat16; float32 holds each value exactly)."""
    import numpy as np

    if layout not in LAYOUTS:
        raise ConvSurgeonError(f"layout '{layout}': expected one of {', '.join(LAYOUTS)}")
    values = read_variables(source, [v for _, chosen in layers for v in chosen])
    arrays: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for layer, chosen in layers:
        targets = {t.name: t for t in layer_targets(layer)} if layout == "torch" else {}
        for variable in chosen:
            value = values[variable.dataset]
            if variable.name in targets:
                from ..edits.layout import to_torch

                value = to_torch(targets[variable.name], value)
            if variable.dtype == "bfloat16":
                value = value.astype(np.float32)
                notes.append(f"{layer.path} {variable.name}: bfloat16 exported as float32 (exact)")
            arrays[key(layer, variable)] = value
    return WeightsExport(tuple(layer for layer, _ in layers), arrays, tuple(notes))


@reading_models
def get_weights(
    source: ModelFile,
    layer_query: str,
    *,
    weight: str | None = None,
    every: bool = False,
    layout: Layout = "keras",
) -> WeightsExport:
    """One variable of a layer (the kernel by default), or all of them with ``every``.

    ``layout="torch"`` exports them in PyTorch / ONNX layout (:mod:`conv_surgeon.edits.layout`).
    """
    structure = read_structure(source)
    layer = resolve_layer(structure, layer_query, source.label)
    if every:
        chosen = list(layer.variables)
    elif weight is not None:
        chosen = [resolve_variable(layer, weight, source.label)]
    elif layer.conv is not None:
        chosen = [main_kernel(layer, source.label, "--weight NAME")]
    else:
        chosen = [layer.variables[0]]
    return _exported([(layer, chosen)], source, layout, lambda _, v: v.name)


@reading_models
def export_bundle(source: ModelFile, *, layout: Layout = "keras") -> WeightsExport:
    """Every convolution variable under ``<layer path>/<variable>`` keys, for `set --from-npz`."""
    structure = read_structure(source)
    if not structure.conv_layers:
        raise ConvSurgeonError(
            f"{source.label}: the model has no convolution layers, so there is no bundle to "
            "write; use get --layer L for another layer's weights"
        )
    layers = [(layer, list(layer.variables)) for layer in structure.conv_layers]
    return _exported(layers, source, layout, lambda layer, v: f"{layer.path}/{v.name}")
