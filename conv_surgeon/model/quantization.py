"""How much a kernel loses to symmetric integer quantization, per tensor and per output
channel (`inspect --quant`). Pure numpy, float64; no Keras.

scale = max|w| / qmax (over the tensor, or over each output channel),
q = clip(round(w / scale), -qmax, qmax), w' = q * scale, and
SQNR = 10 log10(sum w^2 / sum (w - w')^2) in dB: inf when w' == w (an all-zero kernel too).
A channel whose values are all zero has scale 0 and quantizes to exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

QuantBits = Literal["int8", "int4"]
QUANT_BITS: tuple[QuantBits, ...] = ("int8", "int4")
QMAX: dict[str, int] = {"int8": 127, "int4": 7}

# The axis names (model/catalogue.py) of a kernel's output channels.
_OUTPUT_AXES = ("filters", "units")
_DEPTHWISE_AXES = ("in_channels", "depth_multiplier")


@dataclass(frozen=True)
class KernelQuantization:
    sqnr_per_tensor_db: float  # inf when exact
    sqnr_per_channel_db: float
    range_ratio: float  # largest channel max|w| / smallest nonzero one; nan if every one is 0

    @property
    def loss_db(self) -> float:
        """What per-tensor quantization loses against per-channel (dB); 0 when both are exact."""
        return quantization_loss(self.sqnr_per_tensor_db, self.sqnr_per_channel_db)


def quantization_loss(per_tensor_db: float, per_channel_db: float) -> float:
    if per_tensor_db == per_channel_db:  # both inf: nothing lost
        return 0.0
    return per_channel_db - per_tensor_db


def output_channel_axes(axis_names: Sequence[str]) -> tuple[int, ...] | None:
    """The axes that index a kernel's output channels, from its catalogue axis names: the
    ``filters`` or ``units`` axis, or a depthwise kernel's last two axes together (its
    output channels are in_channels x depth_multiplier); None when none is named."""
    names = tuple(axis_names)
    if names[-2:] == _DEPTHWISE_AXES:
        return (len(names) - 2, len(names) - 1)
    for wanted in _OUTPUT_AXES:
        if wanted in names:
            return (names.index(wanted),)
    return None


def _quantized(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round(w / safe), -qmax, qmax)
    return np.where(scale > 0, q * scale, 0.0)


def sqnr_db(w: np.ndarray, quantized: np.ndarray) -> float:
    noise = float(np.sum((w - quantized) ** 2))
    if noise == 0.0:
        return float("inf")
    signal = float(np.sum(w * w))
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def kernel_quantization(value: np.ndarray, channel_axes: Sequence[int], bits: QuantBits) -> KernelQuantization:
    """The SQNR of ``value`` quantized per tensor and per output channel (``channel_axes``
    index the output channels), and the spread of the channels' ranges."""
    qmax = QMAX[bits]
    w = np.asarray(value, dtype=np.float64)
    axes = tuple(a % w.ndim for a in channel_axes)
    others = [a for a in range(w.ndim) if a not in axes]
    channels = int(np.prod([w.shape[a] for a in axes], dtype=np.int64))
    rows = np.transpose(w, others + list(axes)).reshape(-1, channels)  # one column per channel
    peak = float(np.max(np.abs(w))) if w.size else 0.0
    per_tensor = _quantized(rows, np.asarray(peak / qmax), qmax)
    channel_peaks = np.max(np.abs(rows), axis=0) if rows.shape[0] else np.zeros(channels)
    per_channel = _quantized(rows, channel_peaks / qmax, qmax)
    nonzero = channel_peaks[channel_peaks > 0]
    ratio = float(nonzero.max() / nonzero.min()) if nonzero.size else float("nan")
    return KernelQuantization(sqnr_db(rows, per_tensor), sqnr_db(rows, per_channel), ratio)


def per_tensor_sqnr_db(value: np.ndarray, bits: QuantBits = "int8") -> float:
    """The SQNR of ``value`` quantized symmetric per tensor (``equalize`` reports it before
    and after): :func:`kernel_quantization`'s first figure without the per-channel work."""
    w = np.asarray(value, dtype=np.float64)
    peak = float(np.max(np.abs(w))) if w.size else 0.0
    return sqnr_db(w, _quantized(w, np.asarray(peak / QMAX[bits]), QMAX[bits]))
