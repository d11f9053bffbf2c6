"""The tolerance of a check that an edit keeps the function (fold-bn, prune --zeros): float32
rounding, growing with the output's scale and with the length of the model's sums, and no more.

The five real architectures are checked in test_prune.py (prune --zeros) and test_fold_bn.py;
here, the length of the sums on a model whose every kernel's fan-in is known by hand, and the
check itself on a model whose sums are as long as DenseNet121's (the longest of the five).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conv_surgeon.errors import ExitCode, SmokeTestError
from conv_surgeon.runtime.running import sums_length
from conv_surgeon.runtime.smoke import run_smoke_test
from conv_surgeon.runtime.checks import FUNCTION_KEPT, SmokeOptions, float32_rounding

DENSENET121_SUMS = 101_299  # sums_length(keras.applications.DenseNet121(weights=None))


def test_the_sums_are_each_kernels_fan_in_counted_once(keras) -> None:
    L = keras.layers
    inner_in = keras.Input((3, 3, 3))
    inner = keras.Model(inner_in, L.Conv2D(2, 1, name="inner_conv")(inner_in), name="inner")
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3)(i)                                    # 3*3 window x 3 inputs: 27
    x = L.BatchNormalization()(x)                            # no sums
    x = L.Conv2D(6, 3, groups=2)(x)                          # 3*3 x 4/2: 18
    x = L.DepthwiseConv2D(3, depth_multiplier=2)(x)          # the window alone: 9
    x = L.SeparableConv2D(5, 2, depth_multiplier=2)(x)       # 2*2 window, then 12*2 inputs: 4 + 24
    x = L.Conv2DTranspose(3, 3)(x)                           # 3*3 x 5 inputs: 45
    x = inner(x)                                             # a nested model's conv, once: 3
    x = L.Dense(7)(L.GlobalAveragePooling2D()(x))            # 2 inputs: 2
    model = keras.Model(i, x)
    assert sums_length(model) == 27 + 18 + 9 + 4 + 24 + 45 + 3 + 2


def test_the_allowance_is_the_readme_formula_and_keeps_its_promise() -> None:
    assert FUNCTION_KEPT.atol == 0 and FUNCTION_KEPT.rtol == 0 and FUNCTION_KEPT.float32_sums
    # README: 4 * 2**-23 * sqrt(n) * max|original output|.
    assert float32_rounding(2.0, 10_000) == 4 * 2.0**-23 * 100 * 2.0
    # The promise: on a model whose sums total a million terms (ten times DenseNet121's),
    # an output moved by 1e-3 of its scale is still refused.
    assert float32_rounding(1.0, 1_000_000) < 1e-3 / 2


def test_an_output_moved_by_a_thousandth_of_its_scale_is_refused(keras, tmp_path: Path) -> None:
    """One Dense layer over DenseNet121's number of terms: the same allowance, 1.5e-4 of the
    output's scale. Its bias moves one output by 1e-3 of the scale (refused, exit 3) or by
    1e-4 (within float32 rounding over sums this long, so it passes)."""
    model = keras.Sequential([keras.Input((DENSENET121_SUMS,)), keras.layers.Dense(4, name="head")])
    original = tmp_path / "original.keras"
    model.save(original)
    x = np.random.default_rng(0).standard_normal((1, DENSENET121_SUMS)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", input_0=x)
    scale = float(np.abs(np.asarray(model(x))).max())
    kernel, bias = model.get_layer("head").get_weights()

    def moved_by(fraction: float) -> Path:
        shifted = bias.copy()
        shifted[2] += np.float32(fraction * scale)
        model.get_layer("head").set_weights([kernel, shifted])
        path = tmp_path / f"moved_{fraction:g}.keras"
        model.save(path)
        return path

    def check(path: Path):
        return run_smoke_test(path, SmokeOptions(compare=True, expect_same=FUNCTION_KEPT,
                                                 load_inputs=tmp_path / "inputs.npz"), original=original)

    with pytest.raises(SmokeTestError) as refused:
        check(moved_by(1e-3))
    assert refused.value.exit_code == ExitCode.SMOKE_FAILED == 3
    message = str(refused.value)
    assert message.startswith("output 0: the edited model differs from the original beyond atol=0, rtol=0 + "
                              "float32 rounding (1.5e-04 of the output scale "), message
    assert "over 101,299-term sums)" in message and "at index (0, 2)" in message
    [kept] = check(moved_by(1e-4)).tolerance_checks
    assert kept.sums == DENSENET121_SUMS and 0.5 < kept.used < 1
