"""A model's layer graph as Keras builds it, for a file whose config holds none.

A keras-hub backbone saves its constructor's arguments, not its layers; a functional
subclass likewise. `port` needs the graph to tell the branches of a residual block apart
(the store lists layers class by class). Keras loads the model, in a process of its own,
and the functional model it builds is serialized as a plain Functional's config is: its
layers, their calls and the shapes they record (:func:`functional_config`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import ConvSurgeonError
from ..store.worker import Worker
from .checks import SmokeTarget
from .environment import import_keras, quiet_stderr
from .loading import import_modules, load_target
from .messages import short_error
from .running import REFERENCE_TIMEOUT_S

# The config of the graph, or None and why it could not be had.
GraphRead = tuple["dict[str, Any] | None", "str | None"]


def read_graph(target: SmokeTarget, unsafe: bool, imports: tuple[str, ...] = ()) -> GraphRead:
    """Load ``target`` with Keras and read its graph: in a forked process, or in this one
    when it has imported TensorFlow already (whose threads' locks a forked child would not
    get back)."""

    def work() -> GraphRead:
        try:
            keras = import_keras()
            with quiet_stderr():
                import_modules(imports)
                model = load_target(keras, target, unsafe, "model")
                return functional_config(keras, model), None
        except ConvSurgeonError as exc:
            return None, str(exc)

    if "tensorflow" in sys.modules:
        return work()
    return Worker(work, REFERENCE_TIMEOUT_S, "the model's graph").result()


def functional_config(keras: Any, model: Any) -> dict[str, Any] | None:
    """``model``'s graph as a Functional's config (``{"class_name": "Functional", "config":
    {"layers": [...], ...}}``); None for a model that is no functional one (subclassed).

    A functional subclass (a keras-hub backbone) serializes its constructor's arguments
    only: a plain Functional over the same inputs and outputs, which shares its layers and
    their names, gives the graph."""
    from keras.src.models.functional import Functional

    if not isinstance(model, Functional) or not model.inputs:
        return None
    try:
        plain = keras.Model(inputs=model.inputs, outputs=model.outputs, name=model.name)
        # As a .keras archive holds it: JSON (lists, not tuples).
        config: dict[str, Any] = json.loads(json.dumps(keras.saving.serialize_keras_object(plain)))
    except Exception as exc:  # noqa: BLE001 - a layer Keras cannot serialize: no graph
        raise ConvSurgeonError(f"Keras could not describe its graph ({short_error(exc)})") from None
    return config
