"""inspect lists exactly the convolutions Keras itself reports, on real architectures."""

from __future__ import annotations


import pytest

from conv_surgeon.model.catalogue import CONV_CLASSES
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.model.structure import read_structure

keras = pytest.importorskip("keras")

# Built once per session and saved as .keras and .h5 (tests/architectures.py).
ARCHITECTURES = ["MobileNetV2", "Xception", "ConvNeXtTiny"]


def keras_conv_layers(model) -> dict[str, list[tuple[int, ...]]]:
    """Every conv layer Keras sees, by path of nested model names, with weight shapes."""
    found: dict[str, list[tuple[int, ...]]] = {}

    def walk(layer, prefix: str) -> None:
        for child in getattr(layer, "layers", []):
            path = f"{prefix}{child.name}"
            if type(child).__name__ in CONV_CLASSES:
                found[path] = [tuple(w.shape) for w in child.weights]
            walk(child, path + "/")

    walk(model, "")
    return found


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def saved_application(request, architectures):
    path, model = architectures.built(request.param)
    return keras_conv_layers(model), {"keras": path, "h5": architectures.file(request.param, fmt="h5")}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_inspect_lists_the_conv_layers_keras_reports(saved_application, fmt: str) -> None:
    expected, paths = saved_application
    structure = read_structure(ModelFile.from_path(paths[fmt]))
    listed = {layer.path: [v.shape for v in layer.variables] for layer in structure.conv_layers}
    assert expected, "the architecture has convolutions"
    assert listed == expected
