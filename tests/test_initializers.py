"""Initializer specs: static parsing, the table against real Keras, and drawing.

The only test module that imports Keras.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

from conv_surgeon.errors import InitializerError
from conv_surgeon.edits.initializers import (
    INITIALIZERS,
    InitializerSpec,
    parse_initializer_spec,
)
from conv_surgeon.errors import UsageError
from conv_surgeon.runtime.initializers import draw_initializer

KERNEL = (3, 3, 2, 4)


def parse_error(text: str) -> str:
    with pytest.raises(InitializerError) as caught:
        parse_initializer_spec(text)
    message = str(caught.value)
    assert "\n" not in message
    assert f"initializer '{text}'" in message
    return message


def draw_error(text: str, shape: tuple[int, ...], seed: int | None = 1) -> str:
    with pytest.raises(InitializerError) as caught:
        draw_initializer(parse_initializer_spec(text), shape, seed)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- the table against the installed Keras -------------------------------------------


@pytest.fixture(scope="module")
def keras_initializers():
    from keras.src import initializers

    return initializers


def test_table_covers_every_keras_builtin(keras_initializers) -> None:
    builtins = {cls.__name__ for cls in keras_initializers.ALL_OBJECTS} - {"Initializer"}
    assert set(INITIALIZERS) == builtins


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_table_entry_matches_keras_signature(keras_initializers, name: str) -> None:
    entry = INITIALIZERS[name]
    parameters = inspect.signature(keras_initializers.ALL_OBJECTS_DICT[name]).parameters
    keras_arguments = {p for p in parameters if p != "seed"}
    assert {r.name for r in entry.arguments} == keras_arguments
    assert entry.takes_seed == ("seed" in parameters)
    for rule in entry.arguments:
        assert rule.default == parameters[rule.name].default, rule.name


def test_every_keras_alias_resolves_to_the_same_class(keras_initializers) -> None:
    for alias, cls in keras_initializers.ALL_OBJECTS_DICT.items():
        if cls.__name__ == "Initializer":
            continue
        assert parse_initializer_spec(alias).name == cls.__name__, alias


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name",
    [
        ("he_normal", "HeNormal"),
        ("HeNormal", "HeNormal"),
        ("HE_NORMAL", "HeNormal"),
        ("glorotuniform", "GlorotUniform"),
        ("zeros", "Zeros"),
        ("normal", "RandomNormal"),
    ],
)
def test_names_resolve_case_insensitively(text: str, name: str) -> None:
    spec = parse_initializer_spec(text)
    assert spec == InitializerSpec(name=name, arguments=(), text=text,
                                   takes_seed=INITIALIZERS[name].takes_seed)


def test_arguments_are_typed_and_kept_in_signature_order() -> None:
    spec = parse_initializer_spec("random_normal:stddev=0.02, mean=0")
    assert spec.arguments == (("mean", 0.0), ("stddev", 0.02))
    assert spec.takes_seed
    spec = parse_initializer_spec(
        "variance_scaling:scale=2,mode=FAN_OUT,distribution=truncated_normal,"
        "input_axes=[0,1,2],output_axes=[3]"
    )
    assert spec.config == {
        "scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal",
        "input_axes": (0, 1, 2), "output_axes": (3,),
    }
    assert parse_initializer_spec("constant:value=0.1").config == {"value": 0.1}
    assert not parse_initializer_spec("constant:value=0.1").takes_seed
    assert parse_initializer_spec("stft:window=none,periodic=true").config == {
        "window": None, "periodic": True,
    }


def test_unknown_name_lists_close_matches() -> None:
    message = parse_error("he_normall")
    assert "unknown initializer 'he_normall'" in message
    assert "did you mean 'he_normal'" in message
    message = parse_error("xavier")
    assert "known: constant, glorot_normal" in message


def test_unknown_argument_names_it_and_lists_valid_ones() -> None:
    message = parse_error("random_normal:stdev=1")
    assert "random_normal has no argument stdev" in message
    assert "did you mean 'stddev'" in message
    assert "valid arguments: mean, stddev" in message
    message = parse_error("zeros:value=1")
    assert "zeros takes no arguments, received value" in message


def test_seed_in_the_spec() -> None:
    assert "takes no seed" in parse_error("zeros:seed=1")
    assert "seed is not part of the spec" in parse_error("he_normal:seed=1")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("random_normal:stddev=abc",
         "argument stddev of random_normal expects a number, received 'abc'"),
        ("random_normal:stddev=-1",
         "argument stddev of random_normal expects a number >= 0, received '-1'"),
        ("random_normal:mean=nan", "expects a finite number, received 'nan'"),
        ("variance_scaling:scale=0", "argument scale of variance_scaling expects a number > 0"),
        ("variance_scaling:mode=fan", "expects one of fan_in, fan_out, fan_avg, received 'fan'"),
        ("variance_scaling:distribution=gauss",
         "expects one of truncated_normal, untruncated_normal, uniform, normal"),
        ("stft:scaling=l2", "expects one of density, spectrum, none"),
        ("stft:periodic=maybe", "expects true or false"),
        ("he_normal:input_axes=[a]", "expects a list of axis numbers"),
    ],
)
def test_bad_values_name_the_argument(text: str, fragment: str) -> None:
    assert fragment in parse_error(text)


def test_malformed_specs() -> None:
    assert "'stddev' is not key=value" in parse_error("random_normal:stddev")
    assert "zeros takes no arguments" in parse_error("zeros:x")
    assert "argument mean is given twice" in parse_error("random_normal:mean=0,mean=1")
    assert "unbalanced brackets" in parse_error("he_normal:input_axes=[0,1")
    assert "input_axes needs output_axes too" in parse_error("he_normal:input_axes=[0,1,2]")
    assert "minval 1.0 is above maxval 0.05" in parse_error("random_uniform:minval=1")


# --- drawing ---------------------------------------------------------------------------


def test_draw_is_float32_of_the_shape_and_seeded() -> None:
    spec = parse_initializer_spec("he_normal")
    first = draw_initializer(spec, KERNEL, seed=7)
    assert first.dtype == np.float32 and first.shape == KERNEL
    np.testing.assert_array_equal(first, draw_initializer(spec, KERNEL, seed=7))
    assert not np.array_equal(first, draw_initializer(spec, KERNEL, seed=8))


def test_draw_follows_keras_fan_in_from_the_stored_shape() -> None:
    shape = (3, 3, 64, 128)
    drawn = draw_initializer(parse_initializer_spec("he_uniform"), shape, seed=0)
    limit = np.sqrt(6 / (3 * 3 * 64))
    assert np.abs(drawn).max() <= limit
    assert np.abs(drawn).max() > 0.95 * limit


def test_draw_constants_ignore_the_seed() -> None:
    drawn = draw_initializer(parse_initializer_spec("constant:value=0.1"), (4,), seed=3)
    np.testing.assert_array_equal(drawn, np.full(4, 0.1, np.float32))
    np.testing.assert_array_equal(
        draw_initializer(parse_initializer_spec("ones"), (2, 2), seed=None), np.ones((2, 2))
    )


def test_draw_with_axes_and_orthogonal() -> None:
    spec = parse_initializer_spec(
        "variance_scaling:scale=2,mode=fan_out,input_axes=[0,1,2],output_axes=[3]"
    )
    assert draw_initializer(spec, KERNEL, seed=1).shape == KERNEL
    drawn = draw_initializer(parse_initializer_spec("orthogonal:gain=2"), (1, 1, 4, 4), seed=1)
    matrix = drawn.reshape(4, 4)
    np.testing.assert_allclose(matrix.T @ matrix, 4 * np.eye(4), atol=1e-5)


def test_draw_refuses_shapes_the_initializer_cannot_fill() -> None:
    message = draw_error("orthogonal", (4,))
    assert "orthogonal needs a variable of rank >= 2, received (4,) (rank 1)" in message
    assert "identity needs a variable of rank 2, received (3, 3, 2, 4)" in draw_error(
        "identity", KERNEL
    )
    message = draw_error("he_normal:input_axes=[0,1,5],output_axes=[3]", KERNEL)
    assert "input_axes [0, 1, 5] names an axis outside (3, 3, 2, 4)" in message


@pytest.mark.parametrize("seed", ["1", -1, 2**63, 2**64, True])
def test_draw_refuses_seeds_outside_the_one_seed_range(seed: object) -> None:
    with pytest.raises(UsageError, match=r"seed .*: expected an integer from 0 to 2\*\*63-1"):
        draw_initializer(parse_initializer_spec("he_normal"), KERNEL, seed=seed)  # type: ignore[arg-type]


def test_the_top_of_the_seed_range_draws() -> None:
    assert draw_initializer(parse_initializer_spec("he_normal"), KERNEL, seed=2**63 - 1).shape == KERNEL


def test_draw_stft_without_scipy_or_with_window_none() -> None:
    try:
        import scipy  # noqa: F401
    except ImportError:
        message = draw_error("stft", (8, 1, 5))
        assert "needs a module that is not installed" in message
        assert "window=none" in message
    drawn = draw_initializer(parse_initializer_spec("stft:window=none"), (8, 1, 5), seed=None)
    assert drawn.shape == (8, 1, 5)
    assert "drew (8, 1, 5) for (8, 2, 5)" in draw_error("stft:window=none", (8, 2, 5))


def test_draw_is_reproducible_across_processes() -> None:
    code = (
        "import json, sys\n"
        "from conv_surgeon.edits.initializers import parse_initializer_spec\n"
        "from conv_surgeon.runtime.initializers import draw_initializer\n"
        "spec = parse_initializer_spec('variance_scaling:scale=2,distribution=uniform')\n"
        "a = draw_initializer(spec, (3, 3, 2, 4), seed=123)\n"
        "print(json.dumps(a.ravel().tolist()))\n"
    )
    # A fresh process against this one, which in the suite has run other tests first (some
    # set Keras's global seed): the same numbers. (A second fresh process would add a
    # TensorFlow import, about 7 CPU-s, and nothing this comparison lacks.)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads(done.stdout.strip().splitlines()[-1])
    in_process = draw_initializer(
        parse_initializer_spec("variance_scaling:scale=2,distribution=uniform"),
        (3, 3, 2, 4),
        seed=123,
    )
    np.testing.assert_array_equal(np.asarray(first, np.float32).reshape(3, 3, 2, 4), in_process)
