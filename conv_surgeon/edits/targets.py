"""The variables an edit targets: a convolution layer's variables with the meaning of each axis."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConvSurgeonError
from ..model.catalogue import ConvClass
from ..model.structure import Layer


@dataclass(frozen=True)
class TargetVariable:
    """One variable of a convolution layer, as stored in the model file."""

    layer: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    conv: ConvClass

    @property
    def axis_names(self) -> tuple[str, ...]:
        """What each axis of the variable means, from the catalogue."""
        return self.conv.axis_names(self.name)

    @property
    def label(self) -> str:
        """How messages name the variable: ``layer 'conv1' kernel``."""
        return f"layer '{self.layer}' {self.name}"



def layer_targets(layer: Layer) -> list[TargetVariable]:
    """The assignment engine's view of a convolution layer's variables."""
    conv = layer.conv
    if conv is None:
        raise ConvSurgeonError(f"layer '{layer.path}' is a {layer.class_name}, not a convolution")
    return [TargetVariable(layer.path, v.name, v.shape, v.dtype, conv) for v in layer.variables]
