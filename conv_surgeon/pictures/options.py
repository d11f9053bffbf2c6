"""How a kernel's picture is drawn, as the user chose it: light enough for the command
line to offer the choices without importing numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import UsageError

Reduce = Literal["mean", "l2"]
Scale = Literal["layer", "each", "panel"]
Kind = Literal["tiles", "matrix", "taps"]  # what a kernel is drawn as (histograms are not a kernel's picture)
REDUCTIONS: tuple[Reduce, ...] = get_args(Reduce)
SCALES: tuple[Scale, ...] = get_args(Scale)
KINDS: tuple[Kind, ...] = get_args(Kind)
DEFAULT_COLUMNS = 8


@dataclass(frozen=True)
class GridOptions:
    """How a kernel's picture is drawn; ``None`` is the default: the kind that fits the
    kernel's shape (tiles for kh and kw > 1, a matrix for 1x1, taps for one axis > 1),
    8 tiles per row, the channels as RGB when there are three and their mean otherwise,
    one scale for the layer."""

    columns: int | None = None
    input_channel: int | None = None
    reduce: Reduce | None = None
    scale: Scale | None = None
    kind: Kind | None = None

    def check(self, histograms: bool, against: bool | None = None) -> None:
        """Refuse what cannot be drawn, before anything is read (``against``: whether
        another model is drawn beside; None when not known yet)."""
        given = [name for name, value in (("--columns", self.columns), ("--input-channel", self.input_channel),
                                          ("--reduce", self.reduce), ("--scale", self.scale),
                                          ("--kind", self.kind)) if value is not None]
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
        if self.kind is not None and self.kind not in KINDS:
            raise UsageError(f"--kind {self.kind}: expected one of {', '.join(KINDS)}")
        if self.kind in ("matrix", "taps") and self.columns is not None:
            raise UsageError(f"--columns {self.columns} sets tiles per row; --kind {self.kind} draws one heat map: "
                             "drop --columns")
        if self.kind == "matrix" and (self.input_channel is not None or self.reduce is not None):
            raise UsageError("--kind matrix draws every input channel as a row or column of its own; drop "
                             f"{'--input-channel' if self.input_channel is not None else '--reduce'}")
        if self.scale == "panel" and against is False:
            raise UsageError("--scale panel gives A, B and A - B each a scale of their own; it needs --against B "
                             "(use --scale layer or each for one model)")

    @property
    def tiles_per_row(self) -> int:
        return self.columns or DEFAULT_COLUMNS

    @property
    def per_filter(self) -> bool:
        return self.scale == "each"

    @property
    def per_panel(self) -> bool:
        return self.scale == "panel"
