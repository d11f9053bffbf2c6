"""The variables an edit targets: a layer's variables with the meaning of each axis."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model.catalogue import ConvClass, LayerClass
from ..model.structure import Layer


@dataclass(frozen=True)
class TargetVariable:
    """One variable of a layer, as stored in the model file.

    ``kind`` is the catalogue's entry for the layer's class (None when the catalogue
    cannot name its variables: they are then taken by their stored names, without axis
    names); ``config`` the layer's config, which some classes' axes depend on (an
    EinsumDense's equation, a PReLU's shared axes).
    """

    layer: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: LayerClass | None
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def conv(self) -> ConvClass | None:
        return self.kind if isinstance(self.kind, ConvClass) else None

    @property
    def axis_names(self) -> tuple[str, ...] | None:
        """What each axis of the variable means, from the catalogue; None where it cannot tell."""
        return None if self.kind is None else self.kind.axis_names(self.name, self.config, self.shape)

    @property
    def label(self) -> str:
        """How messages name the variable: ``layer 'conv1' kernel``."""
        return f"layer '{self.layer}' {self.name}"


def layer_targets(layer: Layer) -> list[TargetVariable]:
    """The assignment engine's view of a layer's variables."""
    return [TargetVariable(layer.path, v.name, v.shape, v.dtype, layer.kind, layer.config) for v in layer.variables]
