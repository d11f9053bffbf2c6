"""The edited variables in the model Keras loaded: found where Keras's saver puts them
(the weight store's object paths, or a legacy .h5 file's groups by position), and checked
to hold exactly the values written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SmokeTestError
from ..surgery.rewrite import ValueDigest
from .checks import ExpectedValue
from .running import to_numpy


def _store_variables(keras: Any, model: Any) -> dict[str, dict[str, Any]]:
    """What ``model.save`` would put in the weight store, by object path, without writing.

    Runs Keras's own saver walk (``saving_lib._save_state``: "layers" first, then
    attributes, class-name counters inside containers, each object once) over a store
    that only records, so paths and variable order are those Keras loads by.
    """
    if keras.__name__ == "tf_keras":
        from tf_keras.src.saving import saving_lib
    else:
        from keras.src.saving import saving_lib

    class Recorder(saving_lib.H5IOStore):  # type: ignore[misc]  # Keras has no types: its base is Any
        def __init__(self) -> None:  # no file behind it
            self.objects: dict[str, dict[str, Any]] = {}

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
            return self.objects.setdefault(path, {})

    recorder = Recorder()
    # Positional: the two Kerases name the last argument differently.
    saving_lib._save_state(model, recorder, None, "", set())
    return recorder.objects


def _legacy_variables(keras: Any, model: Any, path: Path) -> dict[str, list[Any]]:
    """Each weight group of a legacy .h5 with the variables Keras assigned it by position.

    As ``load_weights_from_hdf5_group``: the groups that list weights pair in order with
    the model's layers that have weights, and a group's ``weight_names`` pair with the
    layer's ``trainable_weights + non_trainable_weights`` (``_legacy_weights``).
    """
    import h5py

    if keras.__name__ == "tf_keras":
        from tf_keras.src.saving.legacy import hdf5_format as legacy
    else:
        from keras.src.legacy.saving import legacy_h5_format as legacy

    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "layer_names" not in handle.attrs and "model_weights" in handle else handle
        names = [
            name
            for name in legacy.load_attributes_from_hdf5_group(group, "layer_names")
            if legacy.load_attributes_from_hdf5_group(group[name], "weight_names")
        ]
    layers = [layer for layer in model.layers if legacy._legacy_weights(layer)]
    return {name: legacy._legacy_weights(layer) for name, layer in zip(names, layers)}


def locate_variables(keras: Any, model: Any, expected: Sequence[ExpectedValue], legacy_file: Path | None) -> list[Any]:
    """The model's variable for each expected value, None where the file's place for it is empty."""
    if not expected:
        return []
    if legacy_file is not None:
        by_group = _legacy_variables(keras, model, legacy_file)
        groups = [by_group.get(item.h5_layer or "", []) for item in expected]
        return [group[item.h5_position] if 0 <= item.h5_position < len(group) else None
                for item, group in zip(expected, groups)]
    store = _store_variables(keras, model)
    return [store.get(item.store_object, {}).get(str(item.store_index)) if item.store_object is not None else None
            for item in expected]


def _where(item: ExpectedValue, legacy: bool) -> str:
    if legacy:
        return f"weight {item.h5_position} of group '{item.h5_layer}' in the .h5 file"
    return f"'{item.store_object}/vars/{item.store_index}' in the weight store"


def holds(keras: Any, variable: Any, value: np.ndarray | ValueDigest) -> bool:
    """Whether ``variable`` holds exactly ``value`` (compared as float32, as written)."""
    got = to_numpy(keras, variable).astype(np.float32)
    if isinstance(value, ValueDigest):
        return value.matches(got)
    want = value.astype(np.float32)
    return got.shape == want.shape and np.array_equal(got, want)


def check_variables(keras: Any, expected: Sequence[ExpectedValue], variables: Sequence[Any], legacy: bool) -> int:
    """Check that Keras loaded each expected value into its variable (``locate_variables``)."""
    for item, variable in zip(expected, variables):
        if variable is None:
            raise SmokeTestError(
                f"{item.label}: not found in the model Keras loaded (looked for {_where(item, legacy)}); "
                "nothing was written (please report this bug)"
            )
        if not holds(keras, variable, item.value):
            raise SmokeTestError(
                f"{item.label}: Keras loaded values that differ from the ones written; "
                "nothing was written (please report this bug)"
            )
    return len(expected)
