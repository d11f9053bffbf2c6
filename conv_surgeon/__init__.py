"""conv-surgeon: convolution weight surgery on saved Keras models.

    import conv_surgeon as cs
    model = cs.inspect("model.keras")
    k = cs.get_weights("model.keras", "conv1")
    cs.set_weights("model.keras", "conv1", out="out.keras", kernel=k["kernel"] * 2)

Importing the package is cheap: numpy, h5py and TensorFlow load only when a function
needs them.
"""

__version__ = "0.1.0"

from .api import apply, assign, diff, get_weights, inspect, set_weights  # noqa: E402
from .errors import (  # noqa: E402
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
    "get_weights",
    "inspect",
    "set_weights",
]
