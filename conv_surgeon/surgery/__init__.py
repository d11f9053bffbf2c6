"""Graph surgery and the optimizer state that follows changed variables. No Keras."""

from __future__ import annotations

from typing import Literal, get_args

# What `set` and `apply` do to the optimizer slots of the variables they replace: start
# them at zero (what resumed training expects), or leave them as they are. Kept here,
# light, so that the command line can offer them without importing numpy.
OptimizerPolicy = Literal["reset", "keep"]
OPTIMIZER_POLICIES: tuple[OptimizerPolicy, ...] = get_args(OptimizerPolicy)
