"""The zoo: "models people really have", written by real Keras 3.15 into a folder.

Each ``build_<kind>(folder)`` function builds one tiny, seeded model with real
Keras (or keras-hub), saves it the way people do, and returns a
:class:`ZooModel`: where the file is, what kind it is, the variables Keras held
right before saving (shape, dtype, sha256 of the raw bytes) and notes.
``KINDS`` maps each kind name to its builder so tests can parametrize.

The expected variables are the model's own variables (``model.weights`` plus any
sub-layer variable that list would miss, each variable once; optimizer state is
never included), in ``model.weights`` order. A bfloat16 variable is hashed as its
raw 2-byte records.

Weights-only kinds (``weights_only``, ``sharded``, ``keras2_weights_only``)
carry the full model beside them in ``extra["config"]``.

Pytest fixtures (import them into a test module, ``from zoo import zoo_models``):

- ``zoo_models``: session-scoped; a function ``zoo_models(kind) -> ZooModel``
  that builds each kind at most once per session in a tmp folder, shared by
  the pytest-xdist workers (the first to ask builds it; a lock file per kind
  makes the others wait, then read its record, ``zoo.json``).
- ``zoo_model``: session-scoped, parametrized over every kind.

The files are shared by the whole session: edit a ``copy_of(zm, tmp_path)``.
``load(zm, path=None)`` loads a zoo file (or an edited copy) back with Keras the
way its kind needs (``NotLoadable`` for keras2_convs).

Keras 2 files cannot be written here (tf-keras is not installed); they are
committed under tests/data (see tests/data/make_keras2_fixtures.py) with their
expected variables in tests/data/keras2_expected.json, and the ``keras2_*`` /
``keras21_sequential`` kinds hand out copies of them.

Run ``python tests/zoo.py OUT_DIR [KIND ...]`` to build the zoo into a folder.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

SEED = 0


@dataclass(frozen=True)
class ExpectedVariable:
    shape: tuple[int, ...]
    dtype: str
    sha256: str


@dataclass
class ZooModel:
    path: Path
    kind: str
    expected: list[ExpectedVariable]
    notes: str
    # Extra files a test may need ("config": the full model beside a
    # weights-only file). Optional; the four fields above are the contract.
    extra: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Expected variables
# ---------------------------------------------------------------------------


def expected_of(v) -> ExpectedVariable:
    value = np.asarray(v.numpy())
    return ExpectedVariable(
        shape=tuple(int(d) for d in value.shape),
        dtype=keras.backend.standardize_dtype(v.dtype),
        sha256=hashlib.sha256(value.tobytes()).hexdigest(),
    )


def model_variables(model) -> list:
    """Every variable the model holds, once each, optimizer excluded.

    ``model.weights`` walks sub-layers (wrappers, custom layers, lists of
    layers) already; the walk over ``_flatten_layers`` is a safety net that
    appends anything it would miss.
    """
    seen: set[int] = set()
    found = []
    for v in model.weights:
        if id(v) not in seen:
            seen.add(id(v))
            found.append(v)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for v in layer.weights:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)
    return found


def expected_variables(model) -> list[ExpectedVariable]:
    return [expected_of(v) for v in model_variables(model)]


# ---------------------------------------------------------------------------
# Custom layers (module level so that importing zoo registers them)
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="zoo")
class ConvBNBlock(keras.layers.Layer):
    """A block holding ``self.conv`` (Conv2D) and ``self.bn`` (BatchNormalization)."""

    def __init__(self, filters, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.conv = keras.layers.Conv2D(filters, kernel_size, padding="same", name="conv")
        self.bn = keras.layers.BatchNormalization(name="bn")

    def build(self, input_shape):
        input_shape = tuple(input_shape)  # a list when Keras rebuilds from config.json
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        return keras.ops.relu(self.bn(self.conv(inputs), training=training))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(tuple(input_shape))

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size})
        return config


@keras.saving.register_keras_serializable(package="zoo")
class ConvPairBlock(keras.layers.Layer):
    """A block holding a list ``self.convs = [Conv2D, Conv2D]`` and a variable of its own."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.convs = [
            keras.layers.Conv2D(filters, 3, padding="same", name="first"),
            keras.layers.Conv2D(filters, 1, name="second"),
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.scale = self.add_weight(
            shape=(self.filters,), initializer="random_uniform", name="scale"
        )

    def call(self, inputs):
        x = inputs
        for conv in self.convs:
            x = conv(x)
        return x * self.scale

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters})
        return config


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _fresh() -> None:
    """Start every model from the same global state, whatever was built before.

    clear_session resets Keras's name counters, so auto-generated names
    (``input_layer``, ``activation_3``, the optimizer's ``adam``) and hence the
    saved files do not depend on which models were built earlier in the process.
    """
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(SEED)


def _rng(seed: int = SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def _fit_one_step(model, x, y) -> None:
    """Compile (adam + MeanSquaredError) and fit one step: optimizer state exists.

    The step runs eagerly (no tf.function to trace: ~2 s saved on an RNN), set
    after compile so the saved compile_config keeps run_eagerly=False.
    """
    model.compile(optimizer="adam", loss=keras.losses.MeanSquaredError())
    model.run_eagerly = True
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    model.run_eagerly = False


def _out(folder: Path, name: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _save(model, path: Path, kind: str, notes: str, **extra) -> ZooModel:
    """Record the variables right before saving, then save."""
    expected = expected_variables(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy .h5 warning
        model.save(path)
    return ZooModel(Path(path), kind, expected, notes, dict(extra))


# ---------------------------------------------------------------------------
# Wrappers and custom layers
# ---------------------------------------------------------------------------


def _time_distributed_model():
    _fresh()
    inputs = keras.Input((5, 8, 8, 3), name="frames")
    x = keras.layers.TimeDistributed(
        keras.layers.Conv2D(4, 3, activation="relu", name="frame_conv"), name="td"
    )(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs, name="time_distributed")
    rng = _rng()
    _fit_one_step(model, rng.random((2, 5, 8, 8, 3), dtype=np.float32), rng.random((2, 2), dtype=np.float32))
    return model


def _bidirectional_model():
    _fresh()
    inputs = keras.Input((12, 3), name="sequence")
    x = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="conv1d")(inputs)
    x = keras.layers.Bidirectional(
        keras.layers.LSTM(3, return_sequences=True, name="lstm"), name="bilstm"
    )(x)
    x = keras.layers.Bidirectional(keras.layers.GRU(2, name="gru"), name="bigru")(x)
    outputs = keras.layers.Dense(1, name="head")(x)
    model = keras.Model(inputs, outputs, name="bidirectional")
    rng = _rng()
    _fit_one_step(model, rng.random((2, 12, 3), dtype=np.float32), rng.random((2, 1), dtype=np.float32))
    return model


def _custom_block_model():
    _fresh()
    inputs = keras.Input((8, 8, 3), name="image")
    x = ConvBNBlock(4, name="block_a")(inputs)
    x = ConvBNBlock(4, name="block_b")(x)
    pair = ConvPairBlock(4, name="pair")
    x = pair(x)
    x = pair(x)  # one instance called twice: shared weights, saved once
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs, name="custom_block")
    rng = _rng()
    _fit_one_step(model, rng.random((2, 8, 8, 3), dtype=np.float32), rng.random((2, 2), dtype=np.float32))
    return model


_TD_NOTES = (
    "Functional 'time_distributed': frames (5, 8, 8, 3) -> TimeDistributed(Conv2D 'frame_conv' 3x3x3->4) "
    "named 'td' -> Flatten -> Dense 'head' (2). Compiled adam + MeanSquaredError, fitted one step: "
    "optimizer state in the file."
)
_BI_NOTES = (
    "Functional 'bidirectional': sequence (12, 3) -> Conv1D 'conv1d' (4) -> Bidirectional(LSTM(3, "
    "return_sequences)) 'bilstm' -> Bidirectional(GRU(2)) 'bigru' -> Dense 'head' (1). Compiled adam + "
    "MeanSquaredError, fitted one step."
)
_CB_NOTES = (
    "Functional 'custom_block': image (8, 8, 3) -> ConvBNBlock 'block_a' -> ConvBNBlock 'block_b' "
    "(each: self.conv Conv2D 'conv' + self.bn BatchNormalization 'bn') -> ConvPairBlock 'pair' called "
    "twice (shared; self.convs = [Conv2D 'first' 3x3, Conv2D 'second' 1x1] + own variable 'scale') -> "
    "GAP -> Dense 'head'. Classes registered as 'zoo>ConvBNBlock', 'zoo>ConvPairBlock': import zoo "
    "before loading. Compiled adam + MeanSquaredError, fitted one step."
)


def build_time_distributed(folder: Path) -> ZooModel:
    return _save(_time_distributed_model(), _out(folder, "time_distributed.keras"), "time_distributed", _TD_NOTES)


def build_time_distributed_h5(folder: Path) -> ZooModel:
    return _save(_time_distributed_model(), _out(folder, "time_distributed.h5"), "time_distributed_h5", _TD_NOTES)


def build_bidirectional(folder: Path) -> ZooModel:
    return _save(_bidirectional_model(), _out(folder, "bidirectional.keras"), "bidirectional", _BI_NOTES)


def build_bidirectional_h5(folder: Path) -> ZooModel:
    return _save(_bidirectional_model(), _out(folder, "bidirectional.h5"), "bidirectional_h5", _BI_NOTES)


def build_custom_block(folder: Path) -> ZooModel:
    return _save(_custom_block_model(), _out(folder, "custom_block.keras"), "custom_block", _CB_NOTES)


def build_custom_block_h5(folder: Path) -> ZooModel:
    return _save(_custom_block_model(), _out(folder, "custom_block.h5"), "custom_block_h5", _CB_NOTES)


# ---------------------------------------------------------------------------
# Quantized, bfloat16, odd input lengths
# ---------------------------------------------------------------------------


def build_quantized_dense(folder: Path) -> ZooModel:
    _fresh()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(3, name="dense"),
        ],
        name="quantized_dense",
    )
    with warnings.catch_warnings():
        # Conv2D.quantize raises NotImplementedError; Model.quantize turns it
        # into a warning and leaves the conv in float32.
        warnings.simplefilter("ignore")
        model.quantize("int8")
    notes = (
        "Sequential 'quantized_dense': (8, 8, 1) -> Conv2D 'conv' (float32: Conv2D cannot be quantized "
        "in Keras 3.15, model.quantize only warns) -> Flatten -> Dense 'dense' quantized int8 "
        "(dtype policy int8_from_float32: kernel int8, bias float32, kernel_scale float32). Not compiled."
    )
    return _save(model, _out(folder, "quantized_dense.keras"), "quantized_dense", notes)


def build_bf16(folder: Path) -> ZooModel:
    _fresh()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", dtype="bfloat16", name="conv_bf16"),
            keras.layers.BatchNormalization(dtype="bfloat16", name="bn_bf16"),
            keras.layers.Conv2D(4, 3, dtype="mixed_bfloat16", name="conv_mixed"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(2, dtype="float32", name="head"),
        ],
        name="bf16",
    )
    notes = (
        "Sequential 'bf16': (8, 8, 3) -> Conv2D 'conv_bf16' and BatchNormalization 'bn_bf16' with dtype "
        "policy 'bfloat16' (bfloat16 variables) -> Conv2D 'conv_mixed' with 'mixed_bfloat16' (float32 "
        "variables, bfloat16 compute) -> GAP -> Dense 'head' float32. Not compiled."
    )
    return _save(model, _out(folder, "bf16.keras"), "bf16", notes)


def build_cropping_1d(folder: Path) -> ZooModel:
    _fresh()
    model = keras.Sequential(
        [
            keras.Input((None, 4)),
            keras.layers.Conv1D(3, 5, padding="same", activation="relu", name="conv_in"),
            keras.layers.Cropping1D((500, 500), name="crop"),
            keras.layers.Conv1D(2, 1, name="conv_out"),
        ],
        name="cropping_1d",
    )
    notes = (
        "Sequential 'cropping_1d' (SpliceAI-like): input (None, 4) -> Conv1D 'conv_in' (3, k=5, same) -> "
        "Cropping1D((500, 500)) -> Conv1D 'conv_out' (2, k=1). Runs only on length > 1000 "
        "(a length of 32 fails). Not compiled."
    )
    return _save(model, _out(folder, "cropping_1d.keras"), "cropping_1d", notes)


def build_fixed_time_axis(folder: Path) -> ZooModel:
    _fresh()
    # Flatten of an unknown time axis has an unknown size, so the head is built
    # beforehand for a time axis of 256 (Keras rebuilds it from its build_config
    # on load): the file says input (None, 1), the kernel only fits 256 * 2.
    head = keras.layers.Dense(2, name="head")
    head.build((None, 256 * 2))
    model = keras.Sequential(
        [
            keras.Input((None, 1)),
            keras.layers.Conv1D(2, 3, padding="same", activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            head,
        ],
        name="fixed_time_axis",
    )
    notes = (
        "Sequential 'fixed_time_axis' (tempocnn-like): input (None, 1) -> Conv1D 'conv' (2, same) -> "
        "Flatten -> Dense 'head' with kernel (512, 2): only a time axis of 256 runs. Not compiled."
    )
    return _save(model, _out(folder, "fixed_time_axis.keras"), "fixed_time_axis", notes)


# ---------------------------------------------------------------------------
# Other ways to write the weights
# ---------------------------------------------------------------------------


def _small_conv_model(name: str):
    _fresh()
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", name="conv1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.DepthwiseConv2D(3, name="dw"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(2, name="head"),
        ],
        name=name,
    )


def build_weights_only(folder: Path) -> ZooModel:
    model = _small_conv_model("weights_only")
    expected = expected_variables(model)
    weights = _out(folder, "weights_only.weights.h5")
    config = _out(folder, "weights_only.keras")
    model.save_weights(weights)
    model.save(config)
    notes = (
        "model.save_weights('weights_only.weights.h5') of Sequential 'weights_only': (8, 8, 3) -> "
        "Conv2D 'conv1' -> BatchNormalization 'bn' -> DepthwiseConv2D 'dw' -> GAP -> Dense 'head'. "
        "The full model is beside it as weights_only.keras (use it as --config)."
    )
    return ZooModel(weights, "weights_only", expected, notes, {"config": config})


SHARD_BYTES = 36_900


def build_sharded(folder: Path) -> ZooModel:
    _fresh()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(16, 3, padding="same", name="conv1"),  # 1728 + 64 bytes
            keras.layers.Conv2D(32, 3, padding="same", name="conv2"),  # 18432 + 128
            keras.layers.Conv2D(32, 3, padding="same", name="conv3"),  # 36864 + 128
            keras.layers.Conv2D(16, 3, padding="same", name="conv4"),  # 18432 + 64
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(2, name="head"),
        ],
        name="sharded",
    )
    expected = expected_variables(model)
    weights = _out(folder, "sharded.weights.json")
    config = _out(folder, "sharded.keras")
    # Keras opens a new shard when the next variable would pass the limit.
    # 36,900 bytes: shard 0 holds conv1 and conv2 (20,352 bytes); conv3's kernel
    # (36,864) opens shard 1 and its bias (128) no longer fits, so conv3 is
    # split over shards 1 and 2; shard 2 also holds conv4 and head.
    model.save_weights(weights, max_shard_size=SHARD_BYTES / 1024**3)
    model.save(config)
    notes = (
        "model.save_weights('sharded.weights.json', max_shard_size=36900/1024**3 GB) of Sequential "
        "'sharded': (8, 8, 3) -> Conv2D conv1 (16) -> conv2 (32) -> conv3 (32) -> conv4 (16) -> GAP -> "
        "Dense 'head'. Writes the JSON map plus sharded_00000..00002.weights.h5: conv1+conv2 in shard 0, "
        "conv3's kernel in shard 1, conv3's bias + conv4 + head in shard 2 (conv3's vars group is split "
        "over two shards). The full model is beside it as sharded.keras (use it as --config)."
    )
    return ZooModel(weights, "sharded", expected, notes, {"config": config})


def build_unzipped_dir(folder: Path) -> ZooModel:
    model = _small_conv_model("unzipped_dir")
    path = _out(folder, "unzipped_dir")
    expected = expected_variables(model)
    model.save(path, zipped=False)
    notes = (
        "model.save('unzipped_dir', zipped=False) of the weights_only architecture (Sequential "
        "'unzipped_dir'): a directory holding the archive's members."
    )
    return ZooModel(path, "unzipped_dir", expected, notes)


# ---------------------------------------------------------------------------
# keras-hub backbones (random weights, nothing downloaded)
# ---------------------------------------------------------------------------


def _hub():
    import keras_hub

    return keras_hub


def _resnet_backbone():
    keras_hub = _hub()
    _fresh()
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],  # a basic block's identity shortcut needs 64 channels in
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],  # the first stack must have 64 filters
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(32, 32, 3),
    )


def _mobilenet_backbone():
    keras_hub = _hub()
    _fresh()
    return keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[16, 24]],  # expanded channel counts, not ratios
        stackwise_num_blocks=[2],
        stackwise_num_filters=[[8, 8]],
        stackwise_kernel_size=[[3, 3]],
        stackwise_num_strides=[[2, 1]],
        stackwise_se_ratio=[[None, 0.25]],
        stackwise_activation=[["relu", "hard_swish"]],
        stackwise_padding=[[1, 1]],  # ZeroPadding2D amounts (kernel 3)
        output_num_filters=16,
        depthwise_filters=8,
        depthwise_stride=1,
        depthwise_residual=False,
        last_layer_filter=16,
        squeeze_and_excite=0.5,
        input_num_filters=8,
        image_shape=(32, 32, 3),
    )


def _efficientnet_backbone():
    keras_hub = _hub()
    _fresh()
    return keras_hub.models.EfficientNetBackbone(
        stackwise_width_coefficients=[1.0, 1.0, 1.0],
        stackwise_depth_coefficients=[1.0, 1.0, 1.0],
        stackwise_kernel_sizes=[3, 3, 3],
        stackwise_num_repeats=[1, 1, 2],
        stackwise_input_filters=[8, 8, 8],
        stackwise_output_filters=[8, 8, 16],
        stackwise_expansion_ratios=[1, 2, 2],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.0, 0.25],
        stackwise_strides=[1, 2, 2],
        stackwise_block_types=["v1", "fused", "unfused"],
        stackwise_force_input_filters=[0, 0, 0],
        stackwise_nores_option=[False, False, False],
        # num_features stays 1280: keras-hub 0.32.0's get_config() leaves it
        # (and stackwise_nores_option) out, so any other value cannot reload
        # (top_conv kernel (1, 1, 16, 32) vs (1, 1, 16, 1280)).
        input_shape=(32, 32, 3),
    )


_HUB = {
    "resnet": (
        _resnet_backbone,
        "keras_hub.models.ResNetBackbone(basic_block, input_conv_filters=[64] (3x3), stacks [64, 16] x 1 block, "
        "image_shape (32, 32, 3)), random weights",
    ),
    "mobilenet": (
        _mobilenet_backbone,
        "keras_hub.models.MobileNetBackbone(one stack of 2 inverted residual blocks, 8 filters, "
        "image_shape (32, 32, 3)), random weights",
    ),
    "efficientnet": (
        _efficientnet_backbone,
        "keras_hub.models.EfficientNetBackbone(3 stacks: 'v1' (plain layers), 'fused' (FusedMBConvBlock), "
        "'unfused' (MBConvBlock x 2), num_features 1280 (the default: keras-hub 0.32.0 does not save it), "
        "input_shape (32, 32, 3)), random weights",
    ),
}


def _build_hub(folder: Path, arch: str) -> ZooModel:
    make, description = _HUB[arch]
    return _save(
        make(),
        _out(folder, f"keras_hub_{arch}.keras"),
        f"keras_hub_{arch}",
        description + "; saved with backbone.save('...keras'). Load with keras_hub imported.",
    )


def _build_hub_preset(folder: Path, arch: str) -> ZooModel:
    make, description = _HUB[arch]
    backbone = make()
    expected = expected_variables(backbone)
    path = _out(folder, f"keras_hub_{arch}_preset")
    backbone.save_to_preset(str(path))
    notes = description + "; saved with backbone.save_to_preset(dir). Load with keras_hub.models.Backbone.from_preset(dir)."
    return ZooModel(path, f"keras_hub_{arch}_preset", expected, notes)


def build_keras_hub_resnet(folder: Path) -> ZooModel:
    return _build_hub(folder, "resnet")


def build_keras_hub_mobilenet(folder: Path) -> ZooModel:
    return _build_hub(folder, "mobilenet")


def build_keras_hub_efficientnet(folder: Path) -> ZooModel:
    return _build_hub(folder, "efficientnet")


def build_keras_hub_resnet_preset(folder: Path) -> ZooModel:
    return _build_hub_preset(folder, "resnet")


def build_keras_hub_mobilenet_preset(folder: Path) -> ZooModel:
    return _build_hub_preset(folder, "mobilenet")


def build_keras_hub_efficientnet_preset(folder: Path) -> ZooModel:
    return _build_hub_preset(folder, "efficientnet")


# ---------------------------------------------------------------------------
# Keras 2 files (committed under tests/data, made by make_keras2_fixtures.py)
# ---------------------------------------------------------------------------

DATA = Path(__file__).resolve().parent / "data"
KERAS2_EXPECTED = DATA / "keras2_expected.json"


def keras2_expected(name: str) -> list[ExpectedVariable]:
    """The expected variables of a committed Keras 2 file, from keras2_expected.json."""
    import json

    entries = json.loads(KERAS2_EXPECTED.read_text())[name]
    return [ExpectedVariable(tuple(e["shape"]), e["dtype"], e["sha256"]) for e in entries]


def _copy_data(folder: Path, name: str) -> Path:
    import shutil

    dst = _out(folder, name)
    shutil.copyfile(DATA / name, dst)
    return dst


def build_keras2_weights_only(folder: Path) -> ZooModel:
    path = _copy_data(folder, "keras2_weights_only.h5")
    config = _copy_data(folder, "keras2_weights_only_model.h5")
    notes = (
        "tf-keras 2.21 model.save_weights('keras2_weights_only.h5') of Functional 'keras2_weights_only': "
        "image (8, 8, 3) -> conv1 -> bn -> relu -> conv2 -> gap -> head. Root attrs layer_names/"
        "backend/keras_version, no model_config; layer groups at the root. The full model is beside it "
        "as keras2_weights_only_model.h5 (use it as --config; Keras 3.15 loads it)."
    )
    return ZooModel(path, "keras2_weights_only", keras2_expected("keras2_weights_only.h5"), notes, {"config": config})


def build_keras21_sequential(folder: Path) -> ZooModel:
    path = _copy_data(folder, "keras21_sequential.h5")
    notes = (
        "Keras <= 2.1 style Sequential .h5 'keras21_sequential' (rewritten from tf-keras): model_config "
        "'config' is a plain list of layer configs (first one has batch_input_shape), attrs are fixed-"
        "length bytes. Keras 3.15 load_model fails on it (TypeError: pop expected at most 1 argument, got "
        "2, in legacy saving_utils.model_from_config); load_keras21_sequential() rebuilds it."
    )
    return ZooModel(path, "keras21_sequential", keras2_expected("keras21_sequential.h5"), notes)


def build_keras2_tiny(folder: Path) -> ZooModel:
    path = _copy_data(folder, "keras2_tiny.h5")
    notes = (
        "tf-keras 2.21 Sequential 'keras2_tiny' .h5 with optimizer_weights (compiled loss='mse'): Keras "
        "3.15 loads it only with compile=False."
    )
    return ZooModel(path, "keras2_tiny", keras2_expected("keras2_tiny.h5"), notes)


def build_keras2_convs(folder: Path) -> ZooModel:
    path = _copy_data(folder, "keras2_convs.h5")
    notes = (
        "tf-keras 2.21 Functional 'keras2_convs' .h5 (Conv2D, BN, DepthwiseConv2D, SeparableConv2D, nested "
        "Sequential and frozen Functional, Conv2DTranspose, Conv1D). Keras 3.15 cannot load_model it "
        "(\"Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 1}\")."
    )
    return ZooModel(path, "keras2_convs", keras2_expected("keras2_convs.h5"), notes)


# ---------------------------------------------------------------------------
# Loading a zoo file back with Keras
# ---------------------------------------------------------------------------


class NotLoadable(Exception):
    """Keras 3.15 cannot load this kind of file at all."""


def load_keras21_sequential(path: Path):
    """Rebuild a Keras <= 2.1 Sequential .h5 in Keras 3 and load its weights.

    Keras 3.15's load_model fails on the list-shaped config, and deserializing
    the layers one by one through its legacy path turns batch_input_shape into
    input_shape with the batch axis still in it; so the input comes first here.
    """
    import copy
    import json

    import h5py
    from keras.src.legacy.saving import saving_utils

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    layer_configs = copy.deepcopy(config["config"])
    batch_input_shape = layer_configs[0]["config"].pop("batch_input_shape")
    model = keras.Sequential(
        [keras.Input(tuple(batch_input_shape[1:]))]
        + [saving_utils.model_from_config(c) for c in layer_configs]
    )
    model.load_weights(path)
    return model


def load(zm: ZooModel, path: Path | None = None):
    """Load ``zm``'s file (or an edited copy of it at ``path``) with Keras.

    Weights-only and sharded files are loaded into the full model beside them
    (``zm.extra["config"]``) after every variable of that model was zeroed, so
    what the result holds comes from the weights file.
    """
    path = Path(path or zm.path)
    kind = zm.kind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "keras2_convs":
            raise NotLoadable(zm.notes)
        if kind == "keras21_sequential":
            return load_keras21_sequential(path)
        if kind.startswith("keras_hub_"):
            keras_hub = _hub()
            if kind.endswith("_preset"):
                return keras_hub.models.Backbone.from_preset(str(path))
            return keras.saving.load_model(path)
        if "config" in zm.extra:
            model = keras.saving.load_model(zm.extra["config"], compile=False)
            for v in model_variables(model):
                v.assign(np.zeros(v.shape, dtype=keras.backend.standardize_dtype(v.dtype)))
            model.load_weights(path)
            return model
        if kind == "keras2_tiny":
            return keras.saving.load_model(path, compile=False)
        return keras.saving.load_model(path)


# ---------------------------------------------------------------------------
# Registry and fixtures
# ---------------------------------------------------------------------------

KINDS: dict[str, Callable[[Path], ZooModel]] = {
    "time_distributed": build_time_distributed,
    "bidirectional": build_bidirectional,
    "custom_block": build_custom_block,
    "time_distributed_h5": build_time_distributed_h5,
    "bidirectional_h5": build_bidirectional_h5,
    "custom_block_h5": build_custom_block_h5,
    "quantized_dense": build_quantized_dense,
    "keras_hub_resnet": build_keras_hub_resnet,
    "keras_hub_mobilenet": build_keras_hub_mobilenet,
    "keras_hub_efficientnet": build_keras_hub_efficientnet,
    "keras_hub_resnet_preset": build_keras_hub_resnet_preset,
    "keras_hub_mobilenet_preset": build_keras_hub_mobilenet_preset,
    "keras_hub_efficientnet_preset": build_keras_hub_efficientnet_preset,
    "weights_only": build_weights_only,
    "sharded": build_sharded,
    "unzipped_dir": build_unzipped_dir,
    "bf16": build_bf16,
    "cropping_1d": build_cropping_1d,
    "fixed_time_axis": build_fixed_time_axis,
    # Keras 2 files: copies of the committed tests/data files.
    "keras2_weights_only": build_keras2_weights_only,
    "keras21_sequential": build_keras21_sequential,
    "keras2_tiny": build_keras2_tiny,
    "keras2_convs": build_keras2_convs,
}


def build(kind: str, folder: Path) -> ZooModel:
    """Build one kind into its own subfolder of ``folder``."""
    return KINDS[kind](Path(folder) / kind)


try:
    import pytest
except ImportError:  # zoo.py used as a script without pytest
    pytest = None

# Built models, shared by every test module of the session (a fixture imported
# into two modules is two fixture definitions; this cache makes them one).
_BUILT: dict[tuple[str, str], ZooModel] = {}
RECORD = "zoo.json"


def _write_record(zm: ZooModel, path: Path) -> None:
    import json
    from dataclasses import asdict

    record = {"path": str(zm.path), "kind": zm.kind, "expected": [asdict(e) for e in zm.expected],
              "notes": zm.notes, "extra": {key: str(value) for key, value in zm.extra.items()}}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def _read_record(path: Path) -> ZooModel:
    import json

    record = json.loads(path.read_text())
    expected = [ExpectedVariable(tuple(e["shape"]), e["dtype"], e["sha256"]) for e in record["expected"]]
    extra = {key: Path(value) for key, value in record["extra"].items()}
    return ZooModel(Path(record["path"]), record["kind"], expected, record["notes"], extra)


def build_shared(kind: str, folder: Path) -> ZooModel:
    """``build(kind, folder)`` once for every process that shares ``folder``: the first
    builds it and writes its record, the others wait on the lock and read the record."""
    from architectures import locked

    record = Path(folder) / kind / RECORD
    Path(folder).mkdir(parents=True, exist_ok=True)
    with locked(Path(folder) / f"{kind}.lock"):
        if record.exists():
            return _read_record(record)
        zm = build(kind, folder)
        _write_record(zm, record)
        return zm


def copy_of(zm: ZooModel, folder: Path) -> ZooModel:
    """A copy of ``zm``'s files in ``folder`` (the same expected variables).

    The session's zoo files are shared: a test that edits a file (--in-place,
    or anything that writes beside it) must work on a copy.
    """
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def copy(src: Path) -> Path:
        dst = folder / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
            if src.name.endswith(".weights.json"):  # and its shards
                stem = src.name[: -len(".weights.json")]
                for shard in sorted(src.parent.glob(f"{stem}_*.weights.h5")):
                    shutil.copyfile(shard, folder / shard.name)
        return dst

    extra = {key: copy(value) for key, value in zm.extra.items()}
    return ZooModel(copy(zm.path), zm.kind, list(zm.expected), zm.notes, extra)


if pytest is not None:

    @pytest.fixture(scope="session")
    def zoo_models(tmp_path_factory):
        """``zoo_models(kind)``: the ZooModel of that kind, built once per session.

        The files are shared by every test: copy them (``copy_of``) before editing.
        """
        from architectures import shared_folder

        root = shared_folder(tmp_path_factory, "zoo")

        def get(kind: str) -> ZooModel:
            key = (str(root), kind)
            if key not in _BUILT:
                _BUILT[key] = build_shared(kind, root)
            return _BUILT[key]

        return get

    @pytest.fixture(scope="session", params=list(KINDS))
    def zoo_model(request, zoo_models):
        """Every kind of the zoo in turn (shared files: copy before editing)."""
        return zoo_models(request.param)


if __name__ == "__main__":
    import sys

    out_dir = Path(sys.argv[1])
    for kind in sys.argv[2:] or KINDS:
        zm = build(kind, out_dir)
        print(f"{kind}: {zm.path} ({len(zm.expected)} variables)")
