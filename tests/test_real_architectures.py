"""fold-bn and prune end to end on real architectures (``keras.applications``, ``weights=None``).

Each architecture is built once per session (tests/architectures.py) with random, non-trivial
BatchNormalization statistics and biases, so that a wrong fold or a wrong slice shows in
the outputs. Both instruments run on that one model and one reference output: fold-bn first
(it only reads the model), then prune (which zeroes filters of it). Building and saving
the model once, not once per instrument, saves its build, its save and one forward pass
(DenseNet121: about 7 CPU-s). The checks are test_fold_bn.py's and test_prune.py's.

Between them the five cover the graph patterns both instruments follow: residual Add
(ResNet50, MobileNetV2, Xception, EfficientNetB0), depthwise (MobileNetV2, EfficientNetB0),
separable (Xception), squeeze-and-excite Multiply (EfficientNetB0) and concatenation
(DenseNet121, whose pre-activation BatchNormalizations fold-bn must leave). A plain chain
(VGG16) and hand-built models are test_prune.py's own.
"""

from __future__ import annotations

import pytest
from test_fold_bn import _randomize_batchnorms, check_fold_end_to_end
from test_prune import _inputs, _outputs, _randomize, check_prune_end_to_end

APPLICATIONS = ["ResNet50", "MobileNetV2", "Xception", "EfficientNetB0", "DenseNet121"]


def _randomize_for_both(keras, model) -> None:
    """Biases (and BN statistics) drawn as test_prune.py draws them, then the BN statistics
    drawn again as test_fold_bn.py does, over a wider range (moving means N(0, 0.5))."""
    _randomize(keras, model)
    _randomize_batchnorms(keras, model)


@pytest.mark.slow
@pytest.mark.parametrize("name", APPLICATIONS)
def test_fold_and_prune_real_architectures(keras, cli, architectures, tmp_path, name):
    # Built once per session, no softmax; a model of its own here (built, or loaded).
    path, model = architectures.built(name, "bn-and-bias-random", linear_head=True, prepare=_randomize_for_both)
    inputs = _inputs(model)
    expected = _outputs(model, inputs)
    (tmp_path / "fold").mkdir()
    check_fold_end_to_end(keras, cli, tmp_path / "fold", name, path, model, inputs, expected)
    (tmp_path / "prune").mkdir()
    check_prune_end_to_end(keras, cli, tmp_path / "prune", name, path, model, inputs, expected)
