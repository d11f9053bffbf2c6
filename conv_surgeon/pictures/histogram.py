"""A variable's histogram as numbers, and its bars as pixels, with numpy (imported when
a histogram is made: a filter grid needs none).

Bins are even over the finite values' range (a constant variable gets a range around
its value). Zeros and non-finite values are counted by the variable's statistics
(:func:`conv_surgeon.instruments.reading.variable_stats`) and printed beside the bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..instruments.reading import VariableStats
from .colours import DIM, PLOT_AREA, diverging

if TYPE_CHECKING:
    import numpy as np

BINS = 48


@dataclass(frozen=True)
class Histogram:
    counts: np.ndarray  # (BINS,) int64, of the finite values
    low: float  # the edges of the first and last bin
    high: float


def value_range(stats: list[VariableStats]) -> tuple[float, float]:
    """The smallest and largest finite value over variables' statistics, widened around a
    constant (and to (-1, 1) when nothing is finite), so that bins always have a width."""
    lows = [s.min for s in stats if math.isfinite(s.min)]
    highs = [s.max for s in stats if math.isfinite(s.max)]
    if not lows:
        return -1.0, 1.0
    low, high = min(lows), max(highs)
    if low == high:
        half = abs(low) / 2 or 0.5
        return low - half, high + half
    return low, high


def histogram(values: np.ndarray, bounds: tuple[float, float]) -> Histogram:
    """Counts of the finite ``values`` in :data:`BINS` even bins over ``bounds``."""
    import numpy as np

    flat = np.asarray(values).ravel()
    finite = np.isfinite(flat)
    counts, _ = np.histogram(flat if finite.all() else flat[finite], bins=BINS, range=bounds)
    return Histogram(counts.astype(np.int64), bounds[0], bounds[1])


def bar_pixels(hist: Histogram, width: int, height: int, headroom: int) -> bytes:
    """The bars, RGB bytes ``width`` x ``height``, on the plot area's colour: one bar per bin,
    coloured by the sign of the bin's centre (the grid's map), the tallest reaching
    ``headroom`` pixels below the top (room for the counts printed there). A dim line
    below the headroom marks zero when the range spans it."""
    import numpy as np

    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = PLOT_AREA
    edges = np.linspace(hist.low, hist.high, BINS + 1)
    reach = max(abs(hist.low), abs(hist.high))
    if hist.low < 0 < hist.high:
        pixels[headroom:, column_of(0.0, hist, width)] = DIM
    colours = [diverging(x) for x in ((edges[:-1] + edges[1:]) / 2 / reach).tolist()]
    tallest = int(hist.counts.max(initial=0))
    columns = np.arange(width) * BINS // width  # the bin each pixel column shows
    for column, bin_index in enumerate(columns):
        count = int(hist.counts[bin_index])
        if count:
            # Any non-empty bin is at least one pixel tall.
            bar = max(1, round(count / tallest * (height - headroom)))
            pixels[height - bar:, column] = colours[bin_index]
    return pixels.tobytes()


def column_of(x: float, hist: Histogram, width: int) -> int:
    return min(width - 1, int((x - hist.low) / (hist.high - hist.low) * width))
