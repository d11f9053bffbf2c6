"""How a filter grid is drawn, as the user chose it: light enough for the command line
to offer the choices without importing numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import UsageError

Reduce = Literal["mean", "l2"]
Scale = Literal["layer", "each"]
REDUCTIONS: tuple[Reduce, ...] = get_args(Reduce)
SCALES: tuple[Scale, ...] = get_args(Scale)
DEFAULT_COLUMNS = 8


@dataclass(frozen=True)
class GridOptions:
    """How a filter grid is drawn; ``None`` is the default (8 columns, the channels as
    RGB when there are three and their mean otherwise, one scale for the layer)."""

    columns: int | None = None
    input_channel: int | None = None
    reduce: Reduce | None = None
    scale: Scale | None = None

    def check(self, histograms: bool) -> None:
        """Refuse what cannot be drawn, before anything is read."""
        given = [name for name, value in (("--columns", self.columns), ("--input-channel", self.input_channel),
                                          ("--reduce", self.reduce), ("--scale", self.scale)) if value is not None]
        if histograms and given:
            raise UsageError(f"{', '.join(given)} only shape the filter grid; drop {'them' if len(given) > 1 else 'it'} "
                             "with --hist")
        if self.input_channel is not None and self.reduce is not None:
            raise UsageError("give --input-channel N (one channel) or --reduce (all of them), not both")
        if self.columns is not None and self.columns < 1:
            raise UsageError(f"--columns {self.columns}: expected 1 or more tiles per row")
        if self.input_channel is not None and self.input_channel < 0:
            raise UsageError(f"--input-channel {self.input_channel}: expected 0 or more")
        if self.reduce is not None and self.reduce not in REDUCTIONS:
            raise UsageError(f"--reduce {self.reduce}: expected one of {', '.join(REDUCTIONS)}")
        if self.scale is not None and self.scale not in SCALES:
            raise UsageError(f"--scale {self.scale}: expected one of {', '.join(SCALES)}")

    @property
    def tiles_per_row(self) -> int:
        return self.columns or DEFAULT_COLUMNS

    @property
    def per_filter(self) -> bool:
        return self.scale == "each"
