"""What each class of layer with weights stores, and what every axis of every variable means.

Keras 3 layouts (channels_last and channels_first alike; the README's *Layouts* lists
PyTorch's beside them):

| kind       | variables in store order                                                    |
|------------|-----------------------------------------------------------------------------|
| conv       | kernel = k + (in_channels/groups, filters); bias (filters,)                  |
| transpose  | kernel = k + (filters, in_channels); bias (filters,)                         |
| depthwise  | kernel = k + (in_channels, depth_multiplier); bias (in_channels*multiplier,) |
| separable  | depthwise_kernel = k + (in_channels, depth_multiplier);                      |
|            | pointwise_kernel = (1,)*rank + (in_channels*multiplier, filters); bias       |

The other layers with weights (:class:`LayerClass`), as Keras 3.15 builds and saves them:

| family        | classes                          | variables in store order                       |
|---------------|----------------------------------|------------------------------------------------|
| dense         | Dense                            | kernel (in_features, units); bias (units,)     |
| einsum_dense  | EinsumDense                      | kernel, bias: axes named by the equation       |
| batch_norm    | BatchNormalization               | gamma (if scale), beta (if center),            |
|               |                                  | moving_mean, moving_variance: (features,)      |
| normalization | LayerNormalization,              | gamma (if scale or rms_scaling), beta (if      |
|               | GroupNormalization               | center and not rms_scaling): the normalized    |
|               |                                  | axes (features,) / (channels,)                 |
| prelu         | PReLU                            | alpha: the input's axes, 1 where shared        |
| embedding     | Embedding                        | embeddings (input_dim, output_dim)             |
| recurrent     | LSTMCell, GRUCell, SimpleRNNCell | kernel (input_dim, G*units); recurrent_kernel  |
|               | (and Keras 2's LSTM, GRU, ...)   | (units, G*units); bias (G*units,), GRU with    |
|               |                                  | reset_after (2, 3*units); G = 4, 3, 1          |

A quantized layer (int8, int4, float8, GPTQ, ... dtype policies) stores other variables
in other layouts: the catalogue does not name its axes, and its variables go by their
stored names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ConvKind = Literal["conv", "transpose", "depthwise", "separable"]
LayerFamily = Literal["conv", "dense", "einsum_dense", "batch_norm", "normalization", "prelu", "embedding",
                      "recurrent"]


_SPATIAL_AXES = {1: ("k",), 2: ("kh", "kw"), 3: ("kd", "kh", "kw")}


@dataclass(frozen=True)
class LayerClass:
    """A class of layer with weights that the catalogue knows: what each axis of each of its
    variables means, PyTorch's names for them, and which config setting leaves one out."""

    name: str

    @property
    def family(self) -> LayerFamily:
        return _FAMILIES[self.name]

    @property
    def torch_names(self) -> Mapping[str, str]:
        """PyTorch's names of the variables, each to the Keras name (``running_var`` ->
        ``moving_variance``); `--weight` takes either."""
        return _TORCH_NAMES.get(self.family, {})

    def keras_name(self, wanted: str) -> str:
        """The Keras name of a variable the user named, by its Keras or PyTorch name."""
        return self.torch_names.get(wanted, wanted)

    def why_absent(self, variable: str, config: Mapping[str, Any] | None = None) -> str | None:
        """The config setting that builds the layer without ``variable`` (``use_bias=False``),
        or None when the class never holds a variable of that name."""
        config = config or {}
        name = self.keras_name(variable)
        if name == "bias" and self.family in ("conv", "dense", "einsum_dense", "recurrent"):
            return "bias_axes=None" if self.family == "einsum_dense" else "use_bias=False"
        if self.family == "normalization" and config.get("rms_scaling") and name == "beta":
            return "rms_scaling=True"
        if self.family in ("batch_norm", "normalization") and name in ("gamma", "beta"):
            return "scale=False" if name == "gamma" else "center=False"
        return None

    def axis_names(self, variable: str, config: Mapping[str, Any] | None = None,
                   shape: tuple[int, ...] | None = None) -> tuple[str, ...] | None:
        """The meaning of each axis of ``variable`` in a layer of this ``config`` holding it
        with ``shape``; None where the catalogue cannot tell (a quantized layer, a variable
        the class does not hold)."""
        config = config or {}
        if quantization_mode(config) is not None:
            return None
        names = _axis_names(self, canonical_variable_name(variable), config, shape)
        if names is None or (shape is not None and len(names) != len(shape)):
            return None
        return names


@dataclass(frozen=True)
class ConvClass(LayerClass):
    """One convolution class: its kind and its number of spatial dimensions."""

    kind: ConvKind
    rank: int

    @property
    def family(self) -> LayerFamily:
        return "conv"

    @property
    def torch_names(self) -> Mapping[str, str]:
        return {} if self.kind == "separable" else {"weight": "kernel"}

    @property
    def kernel_names(self) -> tuple[str, ...]:
        """The variables that ``--kernel`` could mean (two for a separable conv)."""
        if self.kind == "separable":
            return ("depthwise_kernel", "pointwise_kernel")
        return ("kernel",)

    def variable_names(self, use_bias: bool) -> tuple[str, ...]:
        """Keras 3 variable names in store order."""
        return self.kernel_names + (("bias",) if use_bias else ())

    def axis_names(self, variable: str, config: Mapping[str, Any] | None = None,
                   shape: tuple[int, ...] | None = None) -> tuple[str, ...]:
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


# The classes with weights beyond the convolutions, by family. Keras 2 saved an RNN's
# variables on the RNN layer itself (``lstm_1/kernel:0``); Keras 3 on its cell.
_FAMILIES: dict[str, LayerFamily] = {
    "Dense": "dense",
    "EinsumDense": "einsum_dense",
    "BatchNormalization": "batch_norm",
    "SyncBatchNormalization": "batch_norm",
    "LayerNormalization": "normalization",
    "GroupNormalization": "normalization",
    "PReLU": "prelu",
    "Embedding": "embedding",
    **{name: "recurrent" for name in ("LSTMCell", "GRUCell", "SimpleRNNCell", "LSTM", "GRU", "SimpleRNN")},
}
LAYER_CLASSES: dict[str, LayerClass] = {
    **CONV_CLASSES, **{name: LayerClass(name) for name in _FAMILIES},
}

# PyTorch's names for the variables of each family (its Linear, BatchNorm*d, LayerNorm,
# GroupNorm, Embedding and PReLU modules), to the Keras names.
_TORCH_NAMES: dict[LayerFamily, dict[str, str]] = {
    "dense": {"weight": "kernel"},
    "batch_norm": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                   "running_var": "moving_variance"},
    "normalization": {"weight": "gamma", "bias": "beta"},
    "embedding": {"weight": "embeddings"},
    "prelu": {"weight": "alpha"},
}

# The gates an RNN cell stacks along its kernels' last axis (LSTM: i, f, c, o; GRU: z, r, h).
_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def layer_class(class_name: str) -> LayerClass | None:
    """The catalogue entry of any layer class with weights it knows (convolutions
    included), or None: then the layer's variables go by their stored names only."""
    return LAYER_CLASSES.get(_CLASS_ALIASES.get(class_name, class_name))


def _axis_names(cls: LayerClass, variable: str, config: Mapping[str, Any],
                shape: tuple[int, ...] | None) -> tuple[str, ...] | None:
    """The axis names of a variable of a non-convolution class (see the module's table)."""
    family = cls.family
    if family == "dense":
        return {"kernel": ("in_features", "units"), "bias": ("units",)}.get(variable)
    if family == "embedding":
        return ("input_dim", "output_dim") if variable == "embeddings" else None
    if family == "batch_norm":
        return ("features",) if variable in ("gamma", "beta", "moving_mean", "moving_variance") else None
    if family == "normalization":
        if variable not in ("gamma", "beta"):
            return None
        axis = config.get("axis", -1)
        if cls.name == "GroupNormalization":
            return ("channels",)
        if isinstance(axis, list) and len(axis) > 1:
            return tuple(f"input axis {a}" for a in sorted(axis))
        return ("features",)
    if family == "prelu":
        if variable != "alpha" or shape is None:
            return None
        shared = set(config.get("shared_axes") or ())
        return tuple("1" if i in shared else f"input axis {i}" for i in range(1, len(shape) + 1))
    if family == "einsum_dense":
        return _einsum_axis_names(variable, config, shape)
    if family == "recurrent":
        gates = _GATES[cls.name.removesuffix("Cell")]
        units = f"{gates}*units" if gates > 1 else "units"
        if variable == "bias" and shape is not None and len(shape) == 2:
            return ("input|recurrent", units)  # GRU with reset_after: two biases
        return {"kernel": ("input_dim", units), "recurrent_kernel": ("units", units), "bias": (units,)}.get(variable)
    return None


def _einsum_axis_names(variable: str, config: Mapping[str, Any],
                       shape: tuple[int, ...] | None) -> tuple[str, ...] | None:
    """An EinsumDense's axes by the letters of its equation: ``abc,cd->abd`` gives the
    kernel ``(c, d)``; the bias spans the output's letters from the first one in
    ``bias_axes``, 1 on the others (``_analyze_split_string`` in Keras's einsum_dense.py)."""
    match = re.fullmatch(r"([a-zA-Z.]+),([a-zA-Z]+)->([a-zA-Z.]+)", str(config.get("equation", "")))
    if match is None:
        return None
    if variable == "kernel":
        return tuple(match.group(2))
    bias_axes = config.get("bias_axes")
    if variable != "bias" or not isinstance(bias_axes, str) or not bias_axes:
        return None
    output = match.group(3).replace(".", "")
    if any(letter not in output for letter in bias_axes):
        return None
    spanned = output[min(output.find(letter) for letter in bias_axes):]
    names = tuple(letter if letter in bias_axes else "1" for letter in spanned)
    # Axes an ellipsis left of the output's end adds are 1 too.
    return names + ("1",) * max(0, len(shape or ()) - len(names))


def canonical_variable_name(stored: str) -> str:
    """A stored variable name as the Keras 3 name the user types.

    Keras 2 writes ``kernel:0``; it also names a DepthwiseConv2D kernel
    ``depthwise_kernel`` where Keras 3 says ``kernel``; the caller maps that alias
    with the class in hand (see :func:`stored_name_matches`).
    """
    base = stored.rsplit("/", 1)[-1]
    return base.split(":", 1)[0]


def stored_name_matches(cls: LayerClass | None, stored: str, wanted: str) -> bool:
    """Whether the user's variable name ``wanted`` (its Keras name, or PyTorch's:
    ``running_var``) designates the stored variable."""
    name = canonical_variable_name(stored)
    if name == wanted or (cls is not None and cls.keras_name(wanted) == name):
        return True
    # Keras 2 calls a depthwise conv's only kernel `depthwise_kernel`.
    return (
        isinstance(cls, ConvClass)
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


def quantization_mode(config: Mapping[str, Any]) -> str | None:
    """The mode of a quantized layer's dtype policy (``int8``, ``int4``, ``float8``), if any."""
    policy = config.get("dtype")
    if isinstance(policy, dict) and "Quantized" in str(policy.get("class_name")):
        return str(policy.get("config", {}).get("mode") or "") or None
    return None


# Variables of layers, as (name, trainable) in Keras's weight order: names for what
# `inspect` shows, and the order that places a nested model's variables in a legacy
# `.h5`, where Keras 2 and 3 store them flattened, trainable ones first.
def layer_variables(
    class_name: str, config: dict[str, Any], count: int | None = None
) -> list[tuple[str, bool]] | None:
    """The variables a layer holds, or None if the class is not known here.

    ``count``, the number of variables found, stands in for the config where there is
    none (a class inferred from the store): one variable fewer means no bias.
    """
    cls = conv_class(class_name)
    use_bias = bool(config.get("use_bias", True)) if "use_bias" in config or count is None else None
    if cls is not None:
        if use_bias is None:
            use_bias = count == len(cls.kernel_names) + 1
        return [(n, True) for n in cls.variable_names(use_bias)]
    if class_name in ("Dense", "EinsumDense"):
        if use_bias is None:
            use_bias = count in (2, 3)
        mode = quantization_mode(config)
        if mode in ("int8", "int4") or (mode is None and count == 3 and not config):
            return [("kernel", True)] + ([("bias", True)] if use_bias else []) + [("kernel_scale", False)]
        return [("kernel", True)] + ([("bias", True)] if use_bias else [])
    if class_name in ("BatchNormalization", "SyncBatchNormalization"):
        out = []
        if config.get("scale", True if count is None else count >= 3):
            out.append(("gamma", True))
        if config.get("center", True if count is None else count == 4):
            out.append(("beta", True))
        return out + [("moving_mean", False), ("moving_variance", False)]
    if class_name in ("LayerNormalization", "GroupNormalization"):
        # LayerNormalization's rms_scaling keeps gamma and drops beta.
        rms = bool(config.get("rms_scaling", False))
        out = []
        if config.get("scale", True) or rms:
            out.append(("gamma", True))
        if config.get("center", True) and not rms:
            out.append(("beta", True))
        return out
    if class_name == "Embedding":
        return [("embeddings", True)]
    if class_name == "PReLU":
        return [("alpha", True)]
    if class_name in ("LSTMCell", "GRUCell", "SimpleRNNCell"):
        return [("kernel", True), ("recurrent_kernel", True)] + (
            [("bias", True)] if config.get("use_bias", True if count is None else count == 3) else [])
    if class_name == "SeedGenerator":
        return [("seed_generator_state", False)]
    if class_name in WEIGHTLESS_CLASSES:
        return []
    return None


# Classes whose snake-cased name identifies them in a store path or a default layer name.
KNOWN_CLASSES = tuple(CONV_CLASSES) + (
    "Dense", "EinsumDense", "BatchNormalization", "SyncBatchNormalization", "LayerNormalization",
    "GroupNormalization", "Embedding", "PReLU", "LSTMCell", "GRUCell", "SimpleRNNCell", "LSTM",
    "GRU", "SimpleRNN", "SeedGenerator",
)


def class_for_snake_name(name: str) -> str | None:
    """The known class a snake-cased store key or default layer name stands for:
    ``conv2d_3`` -> ``Conv2D``, ``batch_normalization`` -> ``BatchNormalization``."""
    from .naming import to_snake_case

    base = re.sub(r"_\d+$", "", name)
    for class_name in KNOWN_CLASSES:
        if to_snake_case(class_name) == base:
            return class_name
    return None


def infer_class(shapes: list[tuple[int, ...]]) -> str | None:
    """The class a layer's variable shapes can only belong to, or None when they could
    be several (a 4-D kernel whose bias matches its second-to-last axis is a transposed
    conv or a depthwise one)."""
    if not shapes or len(shapes) > 4:
        return None
    kernel = shapes[0]
    rest = shapes[1:]
    if 3 <= len(kernel) <= 5 and len(rest) <= 1 and all(len(s) == 1 for s in rest):
        # The common case, a plain conv; a bias that only fits the second-to-last axis
        # belongs to a transposed or depthwise conv, which shapes cannot tell apart.
        if not rest or rest[0][0] == kernel[-1]:
            return f"Conv{len(kernel) - 2}D"
        return None
    if (len(shapes) == 3 and len(kernel) in (3, 4) and len(shapes[1]) == len(kernel)
            and all(d == 1 for d in shapes[1][:-2]) and shapes[2] == (shapes[1][-1],)
            and shapes[1][-2] == kernel[-2] * kernel[-1]):
        return f"SeparableConv{len(kernel) - 2}D"
    if len(kernel) == 2 and len(rest) <= 1 and all(s == (kernel[1],) for s in rest):
        return "Dense"
    if len(shapes) == 4 and all(len(s) == 1 and s == kernel for s in shapes):
        return "BatchNormalization"
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


# --- what the configs conv-surgeon computes with must hold --------------------------------

# The largest whole number a config may hold where conv-surgeon computes with it (a size,
# a count, an axis): far beyond any real layer, and small enough for every sum and product.
MAX_CONFIG_INT = 2**31 - 1


@dataclass(frozen=True)
class ValueRule:
    """What one key of a layer config must hold: ``expected`` says it in a message."""

    expected: str
    holds: Callable[[Any], bool]


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_CONFIG_INT


def _count(value: Any) -> bool:
    return _whole(value, 1)


def _axis(value: Any) -> bool:
    return _whole(value, -MAX_CONFIG_INT)


def _dimension(value: Any) -> bool:
    return value is None or _whole(value, 0)


def _list_of(test: Callable[[Any], bool], value: Any) -> bool:
    return isinstance(value, list) and all(test(item) for item in value)


_COUNT = "a whole number from 1 to 2**31-1"
_COUNTS = ValueRule(f"{_COUNT}, or a list of them", lambda v: _count(v) or (_list_of(_count, v) and bool(v)))
_OPTIONAL_COUNT = ValueRule(f"{_COUNT}, or null", lambda v: v is None or _count(v))
_TEXT = ValueRule("a string", lambda v: isinstance(v, str))
_OPTIONAL_TEXT = ValueRule("a string, or null", lambda v: v is None or isinstance(v, str))
_FLAG = ValueRule("true or false, or null", lambda v: v is None or isinstance(v, bool))
_ACTIVATION = ValueRule("an activation's name or object, or null", lambda v: v is None or isinstance(v, (str, dict)))
_AXIS = ValueRule("an axis number", _axis)
_AXES = ValueRule("an axis number, or a list of them", lambda v: _axis(v) or _list_of(_axis, v))
_OPTIONAL_AXES = ValueRule("a list of axis numbers, or null", lambda v: v is None or _list_of(_axis, v))
_EPSILON = ValueRule("a finite number >= 0",
                     lambda v: (isinstance(v, float) and math.isfinite(v) and v >= 0) or _whole(v, 0))
_SHAPE = ValueRule("a shape: a list of sizes from 0 to 2**31-1 or null, or null",
                   lambda v: v is None or _list_of(_dimension, v))
_TARGET_SHAPE = ValueRule("a list of sizes from 1 to 2**31-1 (or -1 for one of them)",
                          lambda v: _list_of(lambda d: d == -1 or _count(d), v))

_CONV_RULES = {
    "filters": _OPTIONAL_COUNT, "kernel_size": _COUNTS, "strides": _COUNTS, "dilation_rate": _COUNTS,
    "groups": _OPTIONAL_COUNT, "depth_multiplier": _OPTIONAL_COUNT, "padding": _TEXT, "data_format": _OPTIONAL_TEXT,
    "use_bias": _FLAG, "activation": _ACTIVATION,
}
_NORMALIZATION_RULES = {"axis": _AXES, "epsilon": _EPSILON}
# Per class, the keys conv-surgeon reads to place variables, prune channels, fold and
# count (the surgery modules); a key a config leaves out is not checked, nor are the
# keys of classes not listed (custom layers hold whatever their authors chose).
VALUE_RULES: dict[str, dict[str, ValueRule]] = {
    "BatchNormalization": _NORMALIZATION_RULES,
    "SyncBatchNormalization": _NORMALIZATION_RULES,
    "LayerNormalization": _NORMALIZATION_RULES,
    "Concatenate": {"axis": _AXIS},
    "Reshape": {"target_shape": _TARGET_SHAPE},
    "PReLU": {"shared_axes": _OPTIONAL_AXES},
    "InputLayer": {"batch_shape": _SHAPE, "batch_input_shape": _SHAPE},
    **{cls.name: _CONV_RULES for cls in CONV_CLASSES.values()},
}


def config_value_problem(class_name: str, config: dict[str, Any]) -> tuple[str, str, Any] | None:
    """The first key of a layer config that does not hold what conv-surgeon computes
    with: (its key, what it should hold, what it holds), e.g. ``("kernel_size", "a whole
    number ...", "3")``; None when every key it reads is sound."""
    cls = conv_class(class_name)
    rules = VALUE_RULES.get(cls.name if cls is not None else class_name, {})
    for key, rule in rules.items():
        if key in config and not rule.holds(config[key]):
            return key, rule.expected, config[key]
    policy = config.get("dtype")
    if isinstance(policy, dict) and not isinstance(policy.get("config", {}), dict):
        return "dtype.config", "an object", policy["config"]
    return None
