"""conv-surgeon: convolution weight surgery on saved Keras models.

    import conv_surgeon as cs
    model = cs.inspect("model.keras")
    k = cs.get_weights("model.keras", "conv1")
    cs.set_weights("model.keras", "conv1", out="out.keras", kernel=k["kernel"] * 2)
    picture = cs.show("model.keras", "conv1", out="conv1.png")   # picture.image: RGB array

Importing the package is cheap: numpy, h5py and TensorFlow load only when a function
needs them.
"""

from ._version import __version__
from .api import apply, assign, diff, equalize, fold_bn, get_weights, inspect, port, prune, set_weights, show
from .errors import (
    AssignmentError,
    ConvSurgeonError,
    ExitCode,
    InitializerError,
    LayerNotFoundError,
    ModelFileError,
    PlanError,
    SmokeTestError,
    SourceError,
    UsageError,
)

__all__ = [
    "AssignmentError",
    "ConvSurgeonError",
    "ExitCode",
    "InitializerError",
    "LayerNotFoundError",
    "ModelFileError",
    "PlanError",
    "SmokeTestError",
    "SourceError",
    "UsageError",
    "__version__",
    "apply",
    "assign",
    "diff",
    "equalize",
    "fold_bn",
    "get_weights",
    "inspect",
    "port",
    "prune",
    "set_weights",
    "show",
]
