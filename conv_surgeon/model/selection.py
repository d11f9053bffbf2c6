"""Choosing a layer and a variable by what the user typed."""

from __future__ import annotations

import difflib

from ..errors import ConvSurgeonError, LayerNotFoundError
from .catalogue import stored_name_matches
from .structure import Layer, ModelStructure, Variable


def resolve_layer(structure: ModelStructure, query: str, source_label: str) -> Layer:
    """The one layer that ``query`` names: a full path (by layer names, or by attribute
    names such as ``td/layer``), a unique path suffix, or a name. A name that several
    layers answer to is ambiguous even when one of them sits at the top level; a leading
    ``/`` (``/conv``) anchors the path at the top."""
    anchored = query.startswith("/")  # --layer /conv: the top-level one, not block/conv
    wanted = query[1:] if anchored else query
    matches = [layer for layer in structure.layers if wanted in (layer.path, layer.alias)]
    if not anchored:
        matches += [
            layer for layer in structure.layers
            if all(layer is not m for m in matches)
            and (any(p is not None and p.endswith("/" + wanted) for p in (layer.path, layer.alias))
                 or layer.name == wanted)
        ]
    if not matches:
        # An RNN layer holds no variable itself: its name (`lstm`) stands for its cell.
        matches = [layer for layer in structure.layers if _is_cell_of(layer, wanted, anchored)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        paths = ", ".join(_unambiguous_path(structure, layer) for layer in matches)
        raise LayerNotFoundError(
            f"{source_label}: layer name '{query}' is ambiguous: it matches {paths}; "
            "pass one of these paths to --layer"
        )
    candidates = [layer.path for layer in structure.layers] + [
        layer.name for layer in structure.layers
    ] + [layer.alias for layer in structure.layers if layer.alias]
    close = difflib.get_close_matches(query, candidates, n=4, cutoff=0.5)
    known_hint = (
        f"did you mean {', '.join(repr(c) for c in dict.fromkeys(close))}?"
        if close
        else f"run `conv-surgeon inspect {source_label} --all` to list the layers"
    )
    raise LayerNotFoundError(
        f"{source_label}: no layer with weights named '{query}'; {known_hint}"
    )


def _is_cell_of(layer: Layer, wanted: str, anchored: bool) -> bool:
    """Whether ``layer`` is the cell of the RNN layer ``wanted`` names (``lstm/lstm_cell``)."""
    if layer.kind is None or layer.kind.family != "recurrent" or "/" not in layer.path:
        return False
    owner = layer.path.rpartition("/")[0]
    return owner == wanted or (not anchored and (owner.endswith("/" + wanted)))


def _unambiguous_path(structure: ModelStructure, layer: Layer) -> str:
    """The path that names ``layer`` alone: anchored with a leading ``/`` where its
    plain path also ends another layer's path or is another layer's name."""
    shadowed = any(other is not layer and (other.path.endswith("/" + layer.path) or other.name == layer.path)
                   for other in structure.layers)
    return "/" + layer.path if shadowed else layer.path


def resolve_variable(layer: Layer, name: str, source_label: str) -> Variable:
    """The layer's variable called ``name`` (Keras 2 and 3 names, and PyTorch's names of
    the catalogue's classes: ``running_var`` for a BatchNormalization's ``moving_variance``)."""
    for variable in layer.variables:
        if stored_name_matches(layer.kind, variable.name, name):
            return variable
    names = ", ".join(v.name for v in layer.variables)
    raise ConvSurgeonError(
        f"{source_label}: layer '{layer.path}' has no variable '{name}' (it has: {names}); "
        "pass one of these to --weight"
    )


def main_kernel(layer: Layer, source_label: str, option: str = "--weight NAME=...") -> Variable:
    """The variable ``--kernel`` means; a separable conv has two and must be told which.

    ``option`` is how the command names one variable (``--weight NAME=SRC`` for set,
    ``--weight NAME`` for get), so the message shows what to type.
    """
    conv = layer.conv
    if conv is not None and conv.kind == "separable":
        raise ConvSurgeonError(
            f"{source_label}: layer '{layer.path}' ({layer.class_name}) has two kernels; "
            f"name one with {option.replace('NAME', 'depthwise_kernel')} or "
            f"{option.replace('NAME', 'pointwise_kernel')}"
        )
    for variable in layer.variables:
        if stored_name_matches(conv, variable.name, "kernel"):
            return variable
    raise ConvSurgeonError(
        f"{source_label}: layer '{layer.path}' ({layer.class_name}) has no kernel "
        f"(variables: {', '.join(v.name for v in layer.variables)}); name one with {option}"
    )
