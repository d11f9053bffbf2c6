"""Drawing an initializer's values with Keras, for ``set --kernel-init he_normal`` and the like.

The spec is parsed and checked Keras-free in :mod:`conv_surgeon.edits.initializers`; only
the draw itself runs Keras.
"""

from __future__ import annotations

import numpy as np

from ..edits.initializers import InitializerSpec, check_drawn, drawing_failed, keras_config
from .environment import import_keras, quiet_stderr


def draw_initializer(spec: InitializerSpec, shape: tuple[int, ...], seed: int | None) -> np.ndarray:
    """Draw a float32 array of ``shape`` with Keras; the same seed gives the same array.

    The spec, shape and seed are checked first (:func:`keras_config`), so Keras only
    ever sees arguments it accepts.
    """
    shape = tuple(int(d) for d in shape)
    config = keras_config(spec, shape, seed)
    keras = import_keras()
    try:
        with quiet_stderr():
            initializer = keras.initializers.get(config)
            drawn = keras.ops.convert_to_numpy(initializer(shape, dtype="float32"))
    except (ImportError, ValueError, TypeError) as exc:
        raise drawing_failed(spec, shape, exc) from exc
    return check_drawn(spec, shape, np.asarray(drawn, dtype=np.float32))
