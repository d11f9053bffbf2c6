"""What a check of a written model is asked to do and what it found: plain values, no Keras.

The commands, the transaction and the renderer use these; :mod:`.smoke` fills them in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # numpy is imported where it computes: the command line reads these at start-up
    import numpy as np

    from ..surgery.rewrite import ValueDigest


@dataclass(frozen=True)
class SmokeTarget:
    """What Keras loads for the smoke test."""

    # A .keras/.h5 file, a `model.save(dir, zipped=False)` directory, a keras-hub preset
    # directory, or a weights file (.weights.h5, or the .weights.json map of a sharded save).
    path: Path
    kind: Literal["model", "preset", "weights"] = "model"
    # kind "weights": the model whose architecture to build (a .keras file, a
    # zipped=False directory or a keras-hub preset directory).
    config: Path | None = None

    def __post_init__(self) -> None:
        if (self.kind == "weights") != (self.config is not None):
            raise ValueError(f"SmokeTarget {self.path}: a config is needed for kind 'weights' and only for it")


@dataclass(frozen=True)
class ExpectedValue:
    """A variable the smoke test checks, where the saved file keeps it, and its intended value."""

    label: str  # for messages: "layer 'td/conv2d' kernel"
    value: np.ndarray | ValueDigest  # a digest: a value graph surgery derived in its worker
    # .keras/.weights.h5/sharded/dir/preset: the object's group in the weight store, e.g.
    # "layers/time_distributed/layer" (the variable is "<store_object>/vars/<store_index>").
    store_object: str | None = None
    store_index: int = 0
    h5_layer: str | None = None  # legacy .h5: the top-level group name under model_weights
    h5_position: int = 0  # legacy .h5: position in that group's `weight_names` attribute
    # The edited layer as `inspect` names it ("block_1_depthwise", "td/conv2d"); --compare
    # compares its output. "" compares no layer output for this value.
    layer_path: str = ""


@dataclass(frozen=True)
class OutputSummary:
    name: str
    shape: tuple[int, ...]
    min: float
    max: float


@dataclass(frozen=True)
class Tolerance:
    """``|edited - original| <= atol + rtol * |original|`` for each value, as numpy.allclose;
    with ``float32_sums`` the rounding of float32 sums run in another order is allowed on
    top (:func:`float32_rounding`)."""

    atol: float = 1e-5
    rtol: float = 1e-5
    float32_sums: bool = False


# What "the edit keeps the function" means (fold-bn, prune --zeros): the same outputs but
# for float32 rounding. A user's --atol/--rtol add to it.
FUNCTION_KEPT = Tolerance(atol=0.0, rtol=0.0, float32_sums=True)

# The float32 rounding allowed, per output: ROUNDING_FACTOR * eps32 * sqrt(n) * max|original|,
# n the total length of the model's sums (:func:`.running.sums_length`): roundings of
# relative size eps32 add up like a random walk over the products behind an output, and a
# normalized network keeps its activations near its output's scale. Measured here (prune
# --zeros and fold-bn on ResNet50, MobileNetV2, DenseNet121, EfficientNetB0 and Xception,
# 32 to 224 pixels, oneDNN on and off) the errors reach 4.5e-7 of the scale, a factor of
# 0.024; an error of 2.4e-5 of the scale, as once reported on MobileNetV2, would need 2
# (n = 10,094). A change of 1e-3 of the scale would pass only with 26 on DenseNet121
# (n = 101,299, the longest sums of the five).
ROUNDING_FACTOR = 4.0
EPS32 = 2.0**-23  # float32's machine epsilon, numpy.finfo(numpy.float32).eps


@dataclass(frozen=True)
class ToleranceCheck:
    """How one output of the edited model stood against the tolerance it had to keep."""

    name: str
    tolerance: Tolerance
    max_abs: float  # the largest |edited - original|
    scale: float  # max |original|
    sums: int  # the length of the model's sums (with float32_sums), else 0
    rounding: float  # the float32 rounding allowed, absolute (0 without float32_sums)
    used: float  # the largest |edited - original| / allowed over the values: <= 1 passed

    @property
    def allowance(self) -> str:
        """``atol=0, rtol=0 + float32 rounding (1.1e-04 of the output scale 1.28 over 54,931-term sums)``."""
        text = f"atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g}"
        if not self.tolerance.float32_sums:
            return text
        return (f"{text} + float32 rounding ({float32_rounding(1.0, self.sums):.1e} of the output scale "
                f"{self.scale:.3g} over {self.sums:,}-term sums)")


@dataclass(frozen=True)
class OutputComparison:
    """How far one output of the edited model is from the original's."""

    name: str
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float


@dataclass(frozen=True)
class SmokeReport:
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[OutputSummary, ...]
    checked_variables: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    comparisons: tuple[OutputComparison, ...] = field(default_factory=tuple)
    # --compare: the output of each edited layer that is a layer of the model's graph,
    # named by its layer path, in the order of the edits.
    layer_comparisons: tuple[OutputComparison, ...] = field(default_factory=tuple)
    # --expect-same: each output against the tolerance it kept.
    tolerance_checks: tuple[ToleranceCheck, ...] = field(default_factory=tuple)
    checked_by: str = ""  # which Keras loaded and ran the model: "Keras 3.15.1", "tf-keras 2.21.0"
    engine: str = ""  # what computed it: "TensorFlow 2.21.0, oneDNN off"
    input_origins: tuple[str, ...] = ()  # per input, where its shape came from
    reference: TorchComparison | None = None  # --reference: the written model against PyTorch


ReferenceKind = Literal["torchscript", "export", "factory"]


@dataclass(frozen=True)
class TorchReference:
    """A PyTorch model to check a Keras model against, as ``--reference`` names it.

    ``kind`` is "torchscript" (a ``torch.jit.save`` file), "export" (a ``torch.export.save``
    archive, ``.pt2``) or "factory" (``module:factory``: a function of the user's code that
    returns the ``nn.Module``). Only a factory's module takes ``state``, the state dict the
    port used (loaded strictly); the two files run with the weights they hold.
    """

    spec: str  # as the user gave it
    kind: ReferenceKind
    path: Path | None  # the file; for a factory, its module's .py file (None: a module name)
    module: str = ""  # a factory's module name, when it is imported by name
    factory: str = ""  # a factory's name in its module (dots reach attributes)
    state: Mapping[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``TorchScript ref.pt`` for reports."""
        return {"torchscript": "TorchScript", "export": "torch.export", "factory": "module:factory"}[
            self.kind] + f" {self.spec}"


@dataclass(frozen=True)
class ReferenceOutput:
    """How far one output of the Keras model is from the PyTorch reference's (both in the
    Keras model's layout)."""

    name: str  # "output 0"
    shape: tuple[int, ...]
    max_abs: float  # the largest |keras - torch|
    scale: float  # max |torch|: errors are relative to it
    cosine: float
    worst: tuple[int, ...]  # where the largest |keras - torch| is
    keras_value: float
    torch_value: float

    @property
    def max_rel(self) -> float:
        """The largest |keras - torch| relative to the output's scale (max |torch|)."""
        if self.max_abs == 0:
            return 0.0
        return self.max_abs / self.scale if self.scale > 0 else math.inf

    def allowed(self, tolerance: Tolerance, sums: int) -> float:
        """The largest |keras - torch| ``tolerance`` allows this output: ``atol + rtol *
        scale``, and float32 rounding on top with ``float32_sums``."""
        rounding = float32_rounding(self.scale, sums) if tolerance.float32_sums else 0.0
        return tolerance.atol + rounding + tolerance.rtol * self.scale

    def allowance(self, tolerance: Tolerance, sums: int) -> str:
        """``atol=0, rtol=1e-05 of the output scale 12.3 + float32 rounding (...)``."""
        text = f"atol={tolerance.atol:g}, rtol={tolerance.rtol:g} of the output scale {self.scale:.3g}"
        if not tolerance.float32_sums:
            return text
        return f"{text} + float32 rounding ({float32_rounding(1.0, sums):.1e} of the scale over {sums:,}-term sums)"

    def used(self, tolerance: Tolerance, sums: int) -> float:
        """The share of what ``tolerance`` allows that the largest error takes: <= 1 passed."""
        allowed = self.allowed(tolerance, sums)
        if self.max_abs == 0:
            return 0.0
        return self.max_abs / allowed if allowed > 0 else math.inf


@dataclass(frozen=True)
class TorchComparison:
    """The Keras model and a PyTorch reference on the same inputs: per output, the largest
    absolute and relative error and the cosine similarity.

    With ``--expect-same`` the run passes when every output keeps ``|keras - torch| <= atol
    + rtol * scale`` (+ float32 rounding with ``float32_sums``): across frameworks the
    rounding follows an output's scale, not each value, so ``rtol`` is relative to the scale
    here, as ``max_rel`` is.
    """

    reference: TorchReference
    torch_version: str  # "2.13.0+cpu"
    threads: int  # torch's CPU threads for the run
    layout: str  # how the inputs and outputs were moved between the frameworks
    inputs: tuple[tuple[int, ...], ...]  # as the Keras model takes them
    input_origins: tuple[str, ...]
    outputs: tuple[ReferenceOutput, ...]
    sums: int  # the length of the Keras model's sums (for ``float32_sums``)
    state_tensors: int = 0  # tensors of the state dict loaded into the reference
    notes: tuple[str, ...] = ()
    tolerance: Tolerance | None = None  # the tolerance the outputs kept, when one was asked

    def passed(self, tolerance: Tolerance) -> bool:
        """Whether every output is within ``tolerance`` of the reference's."""
        return all(output.used(tolerance, self.sums) <= 1 for output in self.outputs)


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
    input_seed: int = 0  # seeds the random inputs; the original's run in its own process draws the same
    # --reference: the PyTorch model the written model's outputs are compared with, on its
    # inputs; ``expect_same`` holds for that comparison when there is no --compare.
    reference: TorchReference | None = None


NO_SMOKE = SmokeOptions(enabled=False)


def float32_rounding(scale: float, sums: int) -> float:
    """The error float32 rounding may make in an output of ``scale`` (its max |value|) of
    a model whose sums total ``sums`` terms, when the sums run in another order."""
    return ROUNDING_FACTOR * EPS32 * math.sqrt(sums) * scale


def compare_outputs(name: str, original: np.ndarray, edited: np.ndarray) -> OutputComparison:
    import numpy as np

    a = original.astype(np.float64).ravel()
    b = edited.astype(np.float64).ravel()
    diff = np.abs(b - a)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    # Where the original is 0 the relative error is unbounded: inf, without numpy's warning
    # on the user's terminal (this runs after stderr is restored).
    with np.errstate(over="ignore"):
        relative = diff / np.maximum(np.abs(a), np.finfo(np.float64).tiny)
    return OutputComparison(
        name=name,
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float(relative.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=float(np.dot(a, b) / denominator) if denominator > 0 else float(np.array_equal(a, b)),
    )
