"""What graph surgery (``fold-bn``, ``prune``) reads from a model file before it rewrites
it: the config, and the checks that the weight store sits where the config says."""

from __future__ import annotations

from typing import Any

from ..errors import ModelFileError
from ..model.graph import container_keys, model_graphs
from ..model.structure import Layer, ModelStructure, Variable, checked_config
from ..store.hdf5 import attr_list, damaged_store_is_an_error
from ..store.model_file import ModelFile, open_store
from ..store.worker import PARSE_TIMEOUT_S, run_bounded


def format_name(structure: ModelStructure) -> str:
    return {"h5": "legacy .h5 file", "weights": "weights-only file", "sharded": "sharded weights map",
            "dir": "saved folder", "preset": "keras-hub preset"}.get(structure.format, structure.format)


def read_config(source: ModelFile, command: str) -> tuple[dict[str, Any], list[str] | None]:
    """The model config, and a legacy .h5's `layer_names` (None for a Keras 3 store)."""
    def work() -> tuple[dict[str, Any] | None, list[str] | None]:
        with damaged_store_is_an_error(source.label), open_store(source) as store:
            if not store.legacy:
                return store.config, None
            root = store.h5s[0]["model_weights"]
            return store.config, attr_list(root, "layer_names")

    config, names = run_bounded(work, PARSE_TIMEOUT_S, source.label)
    if config is None:
        raise ModelFileError(f"{source.label}: holds no model config; {command} needs the model's graph")
    return checked_config(config, source.label), names


def check_store_places(config: dict[str, Any], by_path: dict[str, Layer], label: str, command: str) -> None:
    """Every layer with weights sits where the config's order says Keras put it: the
    rewrite moves objects by that rule, so a store that breaks it is refused."""
    for graph in model_graphs(config):
        keys = container_keys(graph, [layer.name for layer in graph.layers])
        for name, key in keys.items():
            layer = by_path.get(graph.layer_path(name))
            expected = "/".join(p for p in (graph.store_path, "layers", key) if p)
            if layer is not None and layer.store_path != expected:
                raise ModelFileError(
                    f"{label}: layer '{layer.path}' is stored at '{layer.store_path}', not at "
                    f"'{expected}' where Keras would look for it; {command} cannot rewrite this store"
                )


def store_layer(by_path: dict[str, Layer], path: str, label: str) -> Layer:
    """The layer of the store at ``path``, which the config says has weights."""
    layer = by_path.get(path)
    if layer is None:
        raise ModelFileError(f"{label}: layer '{path}' of the config has no weights in the store")
    return layer


def layer_variable(layer: Layer, name: str) -> Variable | None:
    return next((v for v in layer.variables if v.name == name), None)


def kernel_variable(layer: Layer) -> Variable | None:
    """A conv's or Dense's kernel: Keras 2 named a DepthwiseConv2D's `depthwise_kernel`."""
    return layer_variable(layer, "kernel") or layer_variable(layer, "depthwise_kernel")
