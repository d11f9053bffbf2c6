"""The input shapes a model's config declares, and how they meet the shapes Keras builds.

The smoke test feeds a model inputs of the shape its own file declares before it guesses
anything. Keras 3 reads some Keras 2 files with another shape than they declare: a
Sequential whose first layer says ``batch_input_shape: [null, 68, 24]`` (Keras <= 2.3
wrote no InputLayer entry) is built with an extra axis, ``(None, None, 68, 24)``
(``saving_utils.model_from_config`` turns the batch shape into an ``input_shape``, and the
InputLayer made from it adds a batch axis of its own). :func:`reconcile` maps the declared
shape onto the built one: the extra axis gets size 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Shape = tuple[int | None, ...]  # batch axis included, None where the size is not fixed


@dataclass(frozen=True)
class DeclaredInput:
    """One model input's shape as the config declares it, and where it says so."""

    shape: Shape
    origin: str  # "batch_input_shape of layer 'conv1'", "InputLayer 'image'", ...


def declared_inputs(config: dict[str, Any] | None) -> list[DeclaredInput]:
    """The input shapes a model config declares, in the model's input order; [] when the
    config declares none it can be trusted for (subclassed models, keras-hub backbones)."""
    if not isinstance(config, dict):
        return []
    body = config.get("config")
    if isinstance(body, list):  # Keras <= 2.1: a Sequential's config is its list of layers
        body = {"layers": body}
        sequential = True
    else:
        sequential = config.get("class_name") == "Sequential"
    if not isinstance(body, dict):
        return []
    layers = [entry for entry in body.get("layers", []) if isinstance(entry, dict)]
    if sequential:
        found = _first_layer_input(layers[0]) if layers else None
        if found is None:
            found = _shape_input(body.get("build_input_shape"), "build_input_shape of the Sequential")
        if found is None:
            found = _build_config_input(config, "the model")
        return [found] if found is not None else []
    names = _input_layer_names(body.get("input_layers"))
    by_name = {_entry_name(entry): entry for entry in layers}
    shapes = []
    for name in names:
        entry = by_name.get(name)
        found = _first_layer_input(entry) if entry is not None else None
        if found is None:
            return []
        shapes.append(found)
    return shapes


def _entry_name(entry: dict[str, Any]) -> str:
    inner = entry.get("config")
    return str((inner.get("name") if isinstance(inner, dict) else None) or entry.get("name") or "")


def _input_layer_names(value: Any) -> list[str]:
    """``input_layers``: one ``[name, node, tensor]`` or a list (or dict) of them."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value[0]]
    if isinstance(value, list):
        return [name for item in value for name in _input_layer_names(item)]
    if isinstance(value, dict):
        return [name for key in sorted(value) for name in _input_layer_names(value[key])]
    return []


def _first_layer_input(entry: dict[str, Any]) -> DeclaredInput | None:
    """The shape an InputLayer entry, or a first layer's ``batch_input_shape``, declares."""
    inner = entry.get("config")
    if not isinstance(inner, dict):
        return None
    name = _entry_name(entry)
    if entry.get("class_name") == "InputLayer":
        for key in ("batch_shape", "batch_input_shape"):
            found = _shape_input(inner.get(key), f"InputLayer '{name}'")
            if found is not None:
                return found
        return None
    for key in ("batch_input_shape", "batch_shape"):
        found = _shape_input(inner.get(key), f"{key} of layer '{name}'")
        if found is not None:
            return found
    return _build_config_input(entry, f"layer '{name}'")


def _build_config_input(entry: dict[str, Any], what: str) -> DeclaredInput | None:
    build = entry.get("build_config")
    return _shape_input(build.get("input_shape") if isinstance(build, dict) else None,
                        f"build_config of {what}")


def _shape_input(value: Any, origin: str) -> DeclaredInput | None:
    if not isinstance(value, list) or not value:
        return None
    if not all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in value):
        return None
    return DeclaredInput(tuple(value), origin)


def reconcile(built: Shape, declared: Shape) -> Shape | None:
    """The shape to feed an input Keras built as ``built`` whose file declares ``declared``
    (both with the batch axis), with every size the two fix; None when they disagree.

    The same rank: each axis takes the size either fixes. One axis more in ``built``
    (Keras 3's extra axis on a Keras 2 Sequential): the unknown axis after the batch gets
    size 1 and the rest must agree with the declared shape.
    """
    if len(built) == len(declared):
        merged = []
        for b, d in zip(built[1:], declared[1:]):
            if b is not None and d is not None and b != d:
                return None
            merged.append(b if b is not None else d)
        return (built[0], *merged)
    if len(built) == len(declared) + 1 and len(built) >= 2 and built[1] is None:
        rest = reconcile((built[0], *built[2:]), declared)
        return None if rest is None else (rest[0], 1, *rest[1:])
    return None


def extra_axes(built: Shape, declared: Shape) -> int:
    """How many axes Keras added to the declared shape (0 or 1 where :func:`reconcile` fits)."""
    return len(built) - len(declared)


def fits(symbolic: Sequence[int | None], shape: Sequence[int]) -> bool:
    """Whether an array of ``shape`` fits a symbolic shape: same rank, every known size equal."""
    return len(shape) == len(symbolic) and all(d is None or d == s for d, s in zip(symbolic, shape))
