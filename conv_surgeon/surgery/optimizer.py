"""The optimizer state of a model whose variables change: which slot belongs to which variable.

Keras 3 stores an optimizer's variables as ``optimizer/vars/0..N-1`` in the order of
``optimizer.variables``: its own scalars first (``iteration``, then ``learning_rate``
unless it is a schedule), then, for each call of ``add_optimizer_variables`` in its
``build``, one slot per name *interleaved* over the model's trainable variables (Adam:
``m0 v0 m1 v1 ...``; a second call, amsgrad's ``velocity_hat``, adds a block after).
The model's trainable variables come in layer order, nested models in place, each
layer's in its own order (keras/src/optimizers/base_optimizer.py, layers/layer.py).

The layout is not written down in the file, so it is recovered from the shapes: the
state must split into scalars and blocks whose shapes repeat the trainable variables'
in exactly one way, or the state is refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import ConvSurgeonError, ModelFileError
from ..model.catalogue import layer_variables
from ..model.graph import model_graphs
from ..model.structure import Layer, ModelStructure, checked_config
from ..store.documents import parse_json
from ..store.hdf5 import damaged_store_is_an_error, dataset_dtype
from ..store.model_file import ModelFile, OpenStore, open_store
from ..store.worker import PARSE_TIMEOUT_S, run_bounded
from .rewrite import Derived, VarOrigin, legacy_optimizer_names

OPTIMIZER_VARS = "optimizer/vars"
MAX_SLOTS_PER_NAME_GROUP = 4  # Adam/AdamW/Lion/... add at most a few slots per variable at once

Slot = tuple[tuple[int, ...], str]  # shape, dtype
TrainableKey = tuple[str, str]  # layer path, variable name


@dataclass(frozen=True)
class SlotChanges:
    vars_group: str
    origins: tuple[VarOrigin, ...]
    note: str


@dataclass(frozen=True)
class StoredSlot:
    """One variable of the optimizer state, where the weight store holds it."""

    dataset: str  # its path in its file: optimizer/vars/3, optimizer_weights/adam/conv1_kernel_momentum
    file: int  # which file of the store (a shard) holds it
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class OptimizerState:
    """A weight store's optimizer state: its variables in the optimizer's order, the model
    config whose trainable variables they follow, and the optimizer as the model's compile
    config records it (``{"class_name": "Adam", "config": {...}}``), when it does."""

    slots: tuple[StoredSlot, ...]
    model_config: dict[str, Any] | None
    optimizer: dict[str, Any] | None

    @property
    def class_name(self) -> str | None:
        name = (self.optimizer or {}).get("class_name")
        return name if isinstance(name, str) else None

    @property
    def averages_weights(self) -> bool:
        """``use_ema``: the optimizer's first block of slots is a moving average of each
        trainable variable's values, not a moment that starts at zero."""
        config = (self.optimizer or {}).get("config")
        return isinstance(config, dict) and config.get("use_ema") is True


def _stored_slots(store: OpenStore, label: str) -> list[StoredSlot]:
    """The optimizer's variables in its order: ``optimizer/vars/<i>`` of any file of the
    store (a sharded save may spread them), or a legacy .h5's ``optimizer_weights``."""
    if store.legacy:
        legacy = store.h5s[0].get("optimizer_weights")
        return [] if legacy is None else [
            _slot(legacy[name], f"optimizer_weights/{name}", 0) for name in legacy_optimizer_names(store.h5s[0])]
    found: dict[int, StoredSlot] = {}
    for file, h5 in enumerate(store.h5s):
        group = h5.get(OPTIMIZER_VARS)
        if not isinstance(group, h5py.Group):
            continue
        for key, item in group.items():
            if key.isdigit() and isinstance(item, h5py.Dataset):
                found[int(key)] = _slot(item, f"{OPTIMIZER_VARS}/{key}", file)
    if sorted(found) != list(range(len(found))):
        raise ModelFileError(f"{label}: the optimizer's variables in {OPTIMIZER_VARS} are not numbered 0 to "
                             f"{len(found) - 1}; the optimizer state is damaged, re-save the model with Keras")
    return [found[i] for i in range(len(found))]


def _slot(dataset: h5py.Dataset, path: str, file: int) -> StoredSlot:
    return StoredSlot(path, file, tuple(int(d) for d in dataset.shape), dataset_dtype(dataset))


def read_optimizer_shapes(source: ModelFile) -> list[Slot]:
    """Shape and dtype of each ``optimizer/vars/<i>``, in order (bounded read)."""
    def work() -> list[Slot]:
        with damaged_store_is_an_error(source.label), open_store(source) as store:
            if store.legacy:
                legacy = store.h5s[0]["optimizer_weights"]
                return [(tuple(int(d) for d in legacy[name].shape), legacy[name].dtype.name)
                        for name in legacy_optimizer_names(store.h5s[0])]
            group = store.h5s[0].get(OPTIMIZER_VARS)
            if group is None:
                return []
            return [(tuple(int(d) for d in group[str(i)].shape), group[str(i)].dtype.name)
                    for i in range(len(group))]

    return run_bounded(work, PARSE_TIMEOUT_S, source.label)


def read_optimizer_state(source: ModelFile) -> OptimizerState:
    """The optimizer state of ``source``, with the model and optimizer configs that place
    its slots (a weights-only save's from ``--config``), in one bounded read."""
    def work() -> OptimizerState:
        with damaged_store_is_an_error(source.label), open_store(source) as store:
            slots = _stored_slots(store, source.label)
            config, optimizer = store.config, _compiled_optimizer(store)
        if config is None and source.config is not None:
            config, optimizer = _configs_of(source.config)
        return OptimizerState(tuple(slots), checked_config(config, source.label), optimizer)

    return run_bounded(work, PARSE_TIMEOUT_S, source.label)


def _configs_of(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The model config and the optimizer of another save of the model (``--config``)."""
    with damaged_store_is_an_error(str(path)), open_store(ModelFile.from_path(path)) as store:
        return store.config, _compiled_optimizer(store)


def _compiled_optimizer(store: OpenStore) -> dict[str, Any] | None:
    """The optimizer the model was compiled with: ``compile_config.optimizer`` of a Keras 3
    config, ``training_config.optimizer_config`` of a legacy .h5."""
    found: Any = None
    if store.legacy:
        text = store.h5s[0].attrs.get("training_config")
        if isinstance(text, (bytes, str)):
            try:
                found = parse_json(text).get("optimizer_config")
            except (ValueError, AttributeError):
                found = None
    elif isinstance(store.config, dict) and isinstance(store.config.get("compile_config"), dict):
        found = store.config["compile_config"].get("optimizer")
    return found if isinstance(found, dict) else None


def trainable_variables(config: dict[str, Any],
                        variables_of: Callable[[str], list[tuple[str, tuple[int, ...], bool]] | None]
                        ) -> list[tuple[TrainableKey, tuple[int, ...]]]:
    """The model's trainable variables in Keras's order, from its config (layers in
    config order, which fold-bn keeps equal to Keras's). ``variables_of(path)`` gives a
    layer's (name, shape, trainable) list, or None for a layer it does not know."""
    graphs = {graph.path: graph for graph in model_graphs(config)}
    found: list[tuple[TrainableKey, tuple[int, ...]]] = []

    def walk(path: str) -> None:
        graph = graphs[path]
        for layer in graph.layers:
            if layer.is_op or layer.config.get("trainable", True) is False:
                continue
            layer_path = graph.layer_path(layer.name)
            if layer.is_model:
                walk(layer_path)
                continue
            own = variables_of(layer_path)
            if own is None:
                raise ConvSurgeonError(
                    f"layer '{layer_path}' ({layer.class_name}) holds variables conv-surgeon cannot "
                    "tell trainable or not, so its optimizer slots cannot be placed")
            found.extend(((layer_path, name), shape) for name, shape, trainable in own if trainable)

    walk("")
    return found


def structure_variables(by_path: dict[str, Layer], assume_trainable: bool = False
                        ) -> Callable[[str], list[tuple[str, tuple[int, ...], bool]] | None]:
    """``variables_of`` for :func:`trainable_variables` over a read structure: a layer's own
    variables and its sub-layers' (wrappers), each flagged by the catalogue.

    A class the catalogue does not know (a custom layer) has no flags: None, unless
    ``assume_trainable`` takes every variable it stores for trainable, as Keras's
    ``add_weight`` makes them by default. Only a caller that checks the guess may ask for
    it: the state must then split into slots of these variables in exactly one way."""
    def variables_of(path: str) -> list[tuple[str, tuple[int, ...], bool]] | None:
        owned = [layer for p, layer in by_path.items() if p == path or p.startswith(path + "/")]
        out: list[tuple[str, tuple[int, ...], bool]] = []
        for layer in owned:
            if not layer.variables:
                continue
            flags = layer_variables(layer.class_name, layer.config, len(layer.variables))
            if flags is None and assume_trainable:
                flags = [(v.name, True) for v in layer.variables]
            if flags is None or len(flags) != len(layer.variables):
                return None
            prefix = layer.path[len(path) + 1:] + "/" if layer.path != path else ""
            out += [(prefix + v.name, v.shape, trainable) for v, (_, trainable) in zip(layer.variables, flags)]
        return out

    return variables_of


def slot_layout(slots: list[Slot], trainable: list[tuple[int, ...]]) -> tuple[int, list[int]] | None:
    """(scalars first, slots per variable of each block) if ``slots`` splits so in exactly one way."""
    count = len(trainable)
    found: list[tuple[int, list[int]]] = []

    def blocks(position: int, sofar: list[int]) -> None:
        if len(found) > 1:
            return
        if position == len(slots):
            found.append((prefix, list(sofar)))
            return
        for k in range(1, MAX_SLOTS_PER_NAME_GROUP + 1):
            end = position + k * count
            if count == 0 or end > len(slots):
                break
            if all(slots[position + t * k + j][0] == trainable[t] for t in range(count) for j in range(k)):
                blocks(end, sofar + [k])

    for prefix in range(min(2, len(slots)), -1, -1):
        if all(slots[i][0] == () for i in range(prefix)):
            blocks(prefix, [])
    if count == 0 and len(slots) <= 2:
        return len(slots), []
    return found[0] if len(found) == 1 else None


# How a changed variable's slots follow it: None starts them at zero (the value changed
# meaning: fold-bn), a function derives each new slot from its old one (prune slices it).
SlotChange = Callable[[np.ndarray], np.ndarray] | None


def remapped_slots(
    slots: list[Slot], old: list[tuple[TrainableKey, tuple[int, ...]]],
    new: list[tuple[TrainableKey, tuple[int, ...]]], changed: Mapping[TrainableKey, SlotChange],
) -> tuple[tuple[VarOrigin, ...], int, int, int]:
    """The new optimizer variables: the scalars, and per block a slot for each new trainable
    variable: copied from its old slot, or for a variable of ``changed`` zero or derived from
    the old slot as it says (zero as well where the variable is new).
    Returns (origins, kept, changed, removed) counts of variables."""
    layout = slot_layout(slots, [shape for _, shape in old])
    if layout is None:
        raise ConvSurgeonError(
            f"the optimizer state ({len(slots)} variables) does not split into slots of the "
            f"model's {len(old)} trainable variables in one way, so it cannot be carried over")
    prefix, blocks = layout
    index = {key: i for i, (key, _) in enumerate(old)}
    origins: list[VarOrigin] = list(range(prefix))
    position = prefix
    for k in blocks:
        dtype = slots[position][1] if position < len(slots) else "float32"
        for key, shape in new:
            for j in range(k):
                slot = position + index[key] * k + j if key in index else None
                change = changed.get(key)
                if slot is not None and key not in changed:
                    origins.append(slot)
                elif slot is not None and change is not None:
                    origins.append(Derived(slot, change))
                else:
                    origins.append(np.zeros(shape, dtype))
        position += k * len(old)
    kept = sum(1 for key, _ in new if key in index and key not in changed)
    removed = sum(1 for key, _ in old if key not in {k for k, _ in new})
    return tuple(origins), kept, len(new) - kept, removed


def slot_changes(structure: ModelStructure, config: dict[str, Any], new_config: dict[str, Any],
                   by_path: dict[str, Layer], new_variables: dict[str, list[tuple[str, tuple[int, ...], bool]]],
                   changed: Mapping[TrainableKey, SlotChange], slots: list[Slot]) -> SlotChanges | None:
    """How the optimizer state follows the rewrite (None without optimizer state).
    ``new_variables`` overrides the variables of the layers whose variables change."""
    if not structure.optimizer_variables or not slots:
        return None
    before = structure_variables(by_path)

    def after(path: str) -> list[tuple[str, tuple[int, ...], bool]] | None:
        return new_variables[path] if path in new_variables else before(path)

    old = trainable_variables(config, before)
    new = trainable_variables(new_config, after)
    origins, kept, altered, removed = remapped_slots(slots, old, new, changed)
    what = "sliced like their variables" if any(c is not None for c in changed.values()) \
        else "reset to zero (their values changed)"
    note = f"optimizer state: the slots of {kept} variables kept, of {altered} {what}, of {removed} removed"
    return SlotChanges(OPTIMIZER_VARS, origins, note)


@dataclass(frozen=True)
class VariableSlots:
    """The optimizer variables that belong to one model variable."""

    moments: tuple[StoredSlot, ...]  # moments, accumulators: zero for a variable that starts over
    averages: tuple[StoredSlot, ...] = ()  # its values' moving average (use_ema): its new value


def variable_slots(state: OptimizerState, by_path: dict[str, Layer],
                   variables: Sequence[TrainableKey]) -> dict[TrainableKey, VariableSlots]:
    """The slots of each of ``variables`` (layer path, variable name, as the structure names
    them); a variable that is not trainable (a frozen layer's, BatchNormalization's moving
    statistics) has none. Raises a ConvSurgeonError that says why when the state cannot
    be placed: the layout is recovered, never guessed."""
    if state.model_config is None:
        raise ConvSurgeonError("holds optimizer state but no model config to place its slots by "
                               "(--config MODEL gives a weights-only save one)")
    # A custom layer's variables are taken for trainable: a wrong guess (one of them is
    # not) leaves slots over, and the layout below refuses it.
    trainable = trainable_variables(state.model_config, structure_variables(by_path, assume_trainable=True))
    layout = slot_layout([(slot.shape, slot.dtype) for slot in state.slots], [shape for _, shape in trainable])
    if layout is None or (state.averages_weights and layout[1][:1] != [1]):
        raise ConvSurgeonError(
            f"the optimizer state ({len(state.slots)} variables) does not split into slots of the model's "
            f"{len(trainable)} trainable variables in one way, so the slots of the replaced variables "
            "cannot be found")
    prefix, blocks = layout
    index = {key: i for i, (key, _) in enumerate(trainable)}
    found: dict[TrainableKey, VariableSlots] = {}
    for wanted in variables:
        key = _trainable_key(wanted, index)
        if key is None:
            found[wanted] = VariableSlots(())
            continue
        moments: list[StoredSlot] = []
        averages: list[StoredSlot] = []
        position = prefix
        for block, k in enumerate(blocks):
            own = state.slots[position + index[key] * k:position + (index[key] + 1) * k]
            (averages if block == 0 and state.averages_weights else moments).extend(own)
            position += k * len(trainable)
        found[wanted] = VariableSlots(tuple(moments), tuple(averages))
    return found


def _trainable_key(variable: TrainableKey, index: Mapping[TrainableKey, int]) -> TrainableKey | None:
    """The key :func:`trainable_variables` gives ``variable``: its layer's own, or a wrapper's
    that owns the layer (``("td", "layer/kernel")`` for ``("td/layer", "kernel")``)."""
    path, name = variable
    parts = path.split("/")
    for cut in range(len(parts), 0, -1):
        rest = "/".join(parts[cut:])
        key = ("/".join(parts[:cut]), f"{rest}/{name}" if rest else name)
        if key in index:
            return key
    return None
