"""What each convolution class stores, and what every axis of every variable means.

Keras 3 layouts (channels_last and channels_first alike, DESIGN.md §4):

| kind       | variables in store order                                                    |
|------------|-----------------------------------------------------------------------------|
| conv       | kernel = k + (in_channels/groups, filters); bias (filters,)                  |
| transpose  | kernel = k + (filters, in_channels); bias (filters,)                         |
| depthwise  | kernel = k + (in_channels, depth_multiplier); bias (in_channels*multiplier,) |
| separable  | depthwise_kernel = k + (in_channels, depth_multiplier);                      |
|            | pointwise_kernel = (1,)*rank + (in_channels*multiplier, filters); bias       |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ConvKind = Literal["conv", "transpose", "depthwise", "separable"]

# Array layouts a user can name: Keras's own, or PyTorch / ONNX (see layout.py).
LAYOUTS = ("keras", "torch")

_SPATIAL_AXES = {1: ("k",), 2: ("kh", "kw"), 3: ("kd", "kh", "kw")}


@dataclass(frozen=True)
class ConvClass:
    """One convolution class: its kind and its number of spatial dimensions."""

    name: str
    kind: ConvKind
    rank: int

    @property
    def kernel_names(self) -> tuple[str, ...]:
        """The variables that ``--kernel`` could mean (two for a separable conv)."""
        if self.kind == "separable":
            return ("depthwise_kernel", "pointwise_kernel")
        return ("kernel",)

    def variable_names(self, use_bias: bool) -> tuple[str, ...]:
        """Keras 3 variable names in store order."""
        return self.kernel_names + (("bias",) if use_bias else ())

    def axis_names(self, variable: str) -> tuple[str, ...]:
        """The meaning of each axis of ``variable`` (Keras 3 name or Keras 2 alias)."""
        spatial = _SPATIAL_AXES[self.rank]
        variable = canonical_variable_name(variable)
        if variable == "bias":
            return {
                "depthwise": ("in_channels*depth_multiplier",),
            }.get(self.kind, ("filters",))
        if variable == "pointwise_kernel":
            return ("1",) * self.rank + ("in_channels*depth_multiplier", "filters")
        if self.kind == "conv":
            return spatial + ("in_channels/groups", "filters")
        if self.kind == "transpose":
            return spatial + ("filters", "in_channels")
        return spatial + ("in_channels", "depth_multiplier")


CONV_CLASSES: dict[str, ConvClass] = {
    c.name: c
    for c in (
        ConvClass("Conv1D", "conv", 1),
        ConvClass("Conv2D", "conv", 2),
        ConvClass("Conv3D", "conv", 3),
        ConvClass("Conv1DTranspose", "transpose", 1),
        ConvClass("Conv2DTranspose", "transpose", 2),
        ConvClass("Conv3DTranspose", "transpose", 3),
        ConvClass("DepthwiseConv1D", "depthwise", 1),
        ConvClass("DepthwiseConv2D", "depthwise", 2),
        ConvClass("SeparableConv1D", "separable", 1),
        ConvClass("SeparableConv2D", "separable", 2),
    )
}

# Keras 2 / tf-keras aliases: the class names and the variable names it stored.
_CLASS_ALIASES = {
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution3D": "Conv3D",
    "Conv2DTranspose": "Conv2DTranspose",
    "Convolution2DTranspose": "Conv2DTranspose",
    "Convolution3DTranspose": "Conv3DTranspose",
    "SeparableConvolution1D": "SeparableConv1D",
    "SeparableConvolution2D": "SeparableConv2D",
}


def conv_class(class_name: str) -> ConvClass | None:
    """The catalogue entry for a Keras class name, or None if it is not a convolution."""
    return CONV_CLASSES.get(_CLASS_ALIASES.get(class_name, class_name))


def canonical_variable_name(stored: str) -> str:
    """A stored variable name as the Keras 3 name the user types.

    Keras 2 writes ``kernel:0``; it also names a DepthwiseConv2D kernel
    ``depthwise_kernel`` where Keras 3 says ``kernel``; the caller maps that alias
    with the class in hand (see :func:`stored_name_matches`).
    """
    base = stored.rsplit("/", 1)[-1]
    return base.split(":", 1)[0]


def stored_name_matches(cls: ConvClass | None, stored: str, wanted: str) -> bool:
    """Whether the user's variable name ``wanted`` designates the stored variable."""
    name = canonical_variable_name(stored)
    if name == wanted:
        return True
    # Keras 2 calls a depthwise conv's only kernel `depthwise_kernel`.
    return (
        cls is not None
        and cls.kind == "depthwise"
        and {name, wanted} == {"kernel", "depthwise_kernel"}
    )


CONFIG_KEYS = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "dilation_rate",
    "groups",
    "depth_multiplier",
    "use_bias",
    "activation",
    "data_format",
)


def main_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a layer config that inspect shows."""
    return {k: config[k] for k in CONFIG_KEYS if k in config}


# Variables of common non-convolution layers, as (name, trainable) in Keras's weight
# order. Only used to place the variables of a nested model inside a legacy `.h5`,
# where Keras 2 and 3 store a nested model's weights flattened: trainable ones first.
def layer_variables(class_name: str, config: dict[str, Any]) -> list[tuple[str, bool]] | None:
    """The variables a layer holds, or None if the class is not known here."""
    cls = conv_class(class_name)
    use_bias = bool(config.get("use_bias", True))
    if cls is not None:
        return [(n, True) for n in cls.variable_names(use_bias)]
    if class_name in ("Dense", "EinsumDense"):
        return [("kernel", True)] + ([("bias", True)] if use_bias else [])
    if class_name in ("BatchNormalization", "SyncBatchNormalization"):
        out = []
        if config.get("scale", True):
            out.append(("gamma", True))
        if config.get("center", True):
            out.append(("beta", True))
        return out + [("moving_mean", False), ("moving_variance", False)]
    if class_name in ("LayerNormalization", "GroupNormalization"):
        out = []
        if config.get("scale", True):
            out.append(("gamma", True))
        if config.get("center", True):
            out.append(("beta", True))
        return out
    if class_name == "Embedding":
        return [("embeddings", True)]
    if class_name == "PReLU":
        return [("alpha", True)]
    if class_name in WEIGHTLESS_CLASSES:
        return []
    return None


WEIGHTLESS_CLASSES = frozenset(
    {
        "InputLayer", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout",
        "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "Flatten", "Reshape",
        "Permute", "RepeatVector", "Add", "Subtract", "Multiply", "Average", "Maximum",
        "Minimum", "Concatenate", "Dot", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
        "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
        "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D",
        "GlobalAveragePooling2D", "GlobalAveragePooling3D", "ZeroPadding1D",
        "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
        "UpSampling1D", "UpSampling2D", "UpSampling3D", "Rescaling", "Identity",
        "GaussianNoise", "GaussianDropout", "ActivityRegularization", "Lambda",
        "TFOpLambda", "SlicingOpLambda",
    }
)
