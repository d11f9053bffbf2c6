"""Make the Keras 2 (tf-keras) legacy .h5 fixtures in tests/data/.

Needs tf-keras, which the project venv does not have. Made with:

    python3 -m venv /tmp/tfk
    /tmp/tfk/bin/pip install tensorflow==2.21.0 tf-keras==2.21.0
    # (this pulled numpy 2.4.6, h5py 3.14.0; python 3.11.7)
    /tmp/tfk/bin/python tests/data/make_keras2_fixtures.py          # small fixtures
    /tmp/tfk/bin/python tests/data/make_keras2_fixtures.py --mobilenet
    # --mobilenet also writes /tmp/keras2_mobilenetv2.h5 (too big to commit)

TF_USE_LEGACY_KERAS=1 is set below before TensorFlow is imported. Seeded
(tf_keras.utils.set_random_seed(0)), so the weights are the same every run.

Writes:
  keras2_tiny.h5    Sequential "keras2_tiny", input (8, 8, 1): conv1, conv2,
                    flatten, dense; compiled adam + loss="mse", trained one
                    step, so the file has optimizer_weights. Keras 3.15 loads
                    it only with compile=False (with compile=True: "Could not
                    deserialize 'keras.metrics.mse' because it is not a
                    KerasSaveable subclass").
  keras2_convs.h5   Functional "keras2_convs", inputs "image" (8, 8, 3) and
                    "sequence" (8, 3): conv (Conv2D), bn (BatchNormalization),
                    dwconv (DepthwiseConv2D, variable "depthwise_kernel"),
                    sepconv (SeparableConv2D), inner_block (nested Sequential:
                    inner_conv, inner_bn, inner_post), frozen_block (nested
                    Functional, trainable=False: frozen_conv, frozen_bn,
                    frozen_post), tconv (Conv2DTranspose, strides 2),
                    conv1d (Conv1D), gap2d, gap1d, concat, head (Dense).
                    Compiled adam + "mse", trained one step; then every
                    BatchNormalization gets distinct values (gamma, beta,
                    moving_mean, moving_variance all different), so mixing
                    them up is detectable. Keras 3.15 cannot load_model it
                    (compile=False too): "Unrecognized keyword arguments
                    passed to DepthwiseConv2D: {'groups': 1}". Separately,
                    Keras 3.15 also rejects tf-keras SeparableConv2D
                    ('groups', kernel_initializer/regularizer/constraint) and
                    Conv2DTranspose ('groups') configs, and a Keras 2 nested
                    model called from an outer model (inbound node index 1):
                    "The graph of the Functional model either has loops or
                    disconnected nodes" (keras-team/keras#19669 mentions it).
                    Its weights do load by position with Keras 3.15
                    model.load_weights() into the same architecture built in
                    Keras 3, and then every variable equals the dataset its
                    weight_names entry names (checked).
  /tmp/keras2_mobilenetv2.h5 (only with --mobilenet; NOT in the repo: 2.19 MB,
                    423,018 params) tf_keras.applications.MobileNetV2(
                    alpha=0.35, input_shape=(96, 96, 3), weights=None,
                    classes=10). Keras 3.15 load_model fails on it with
                    "Unrecognized keyword arguments passed to DepthwiseConv2D:
                    {'groups': 1}" (checked); keras2_convs.h5 fails the same way.

What the files look like (checked with h5py; printed by this script):
  - file attrs keras_version="2.21.0", backend="tensorflow", model_config,
    training_config; model_weights.attrs["layer_names"] lists every layer in
    config order, weightless ones too (inputs, pooling, concat).
  - datasets are named with the ":0" suffix: model_weights/conv1/conv1/kernel:0,
    and weight_names holds the same paths relative to the layer group
    ("conv1/kernel:0", "conv1/bias:0").
  - DepthwiseConv2D: "dwconv/depthwise_kernel:0", "dwconv/bias:0".
  - SeparableConv2D: "sepconv/depthwise_kernel:0", "sepconv/pointwise_kernel:0",
    "sepconv/bias:0".
  - A nested model is ONE group under its own name holding all its layers'
    variables, named by the inner layer's name without the nested model's
    name: model_weights/inner_block/inner_conv/kernel:0.
    weight_names inside inner_block (trainable first, then non-trainable):
      inner_conv/kernel:0, inner_conv/bias:0, inner_bn/gamma:0, inner_bn/beta:0,
      inner_post/kernel:0, inner_post/bias:0,
      inner_bn/moving_mean:0, inner_bn/moving_variance:0
    inside the frozen frozen_block every variable is non-trainable, so the
    order is plain layer order (BN's moving statistics right after its
    beta, before frozen_post):
      frozen_conv/kernel:0, frozen_conv/bias:0, frozen_bn/gamma:0,
      frozen_bn/beta:0, frozen_bn/moving_mean:0, frozen_bn/moving_variance:0,
      frozen_post/kernel:0, frozen_post/bias:0
  - optimizer_weights: weight_names "iteration:0", "Adam/m/conv1/kernel:0",
    "Adam/v/conv1/kernel:0", ... (13 in keras2_tiny, 43 in keras2_convs).
"""

import os
import sys
import tempfile

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MOBILENET_PATH = os.path.join(tempfile.gettempdir(), "keras2_mobilenetv2.h5")


def out(name):
    return os.path.join(HERE, name)


def make_tiny():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(4, 3, activation="relu", name="conv2"),
            layers.Flatten(name="flatten"),
            layers.Dense(2, name="dense"),
        ],
        name="keras2_tiny",
    )
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.random((4, 8, 8, 1), dtype=np.float32), rng.random((4, 2), dtype=np.float32))
    model.save(out("keras2_tiny.h5"))
    return model


def distinct_bn_values(model, seed):
    """Give every BatchNormalization (nested ones too) distinct values, so
    that a reader which mixes up gamma/beta/moving_mean/moving_variance (or
    the trainable-first order in a nested group) gets different numbers."""
    rng = np.random.default_rng(seed)
    for layer in model.submodules:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, n).astype(np.float32),   # gamma
                rng.uniform(-0.5, 0.5, n).astype(np.float32),  # beta
                rng.uniform(-0.5, 0.5, n).astype(np.float32),  # moving_mean
                rng.uniform(0.5, 2.0, n).astype(np.float32),   # moving_variance
            ])


def make_convs():
    keras.utils.set_random_seed(0)

    inner_block = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            layers.Conv2D(4, 3, padding="same", name="inner_conv"),
            layers.BatchNormalization(name="inner_bn"),
            layers.Conv2D(4, 1, name="inner_post"),
        ],
        name="inner_block",
    )

    fin = keras.Input((8, 8, 4), name="frozen_in")
    f = layers.Conv2D(4, 3, padding="same", name="frozen_conv")(fin)
    f = layers.BatchNormalization(name="frozen_bn")(f)
    f = layers.Conv2D(4, 1, name="frozen_post")(f)
    frozen_block = keras.Model(fin, f, name="frozen_block")
    frozen_block.trainable = False

    img = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="conv")(img)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dwconv")(x)
    x = layers.SeparableConv2D(4, 3, padding="same", name="sepconv")(x)
    x = inner_block(x)
    x = frozen_block(x)
    x = layers.Conv2DTranspose(2, 3, strides=2, padding="same", name="tconv")(x)
    x = layers.GlobalAveragePooling2D(name="gap2d")(x)

    seq = keras.Input((8, 3), name="sequence")
    s = layers.Conv1D(2, 3, padding="same", name="conv1d")(seq)
    s = layers.GlobalAveragePooling1D(name="gap1d")(s)

    y = layers.Concatenate(name="concat")([x, s])
    y = layers.Dense(2, name="head")(y)
    model = keras.Model([img, seq], y, name="keras2_convs")
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    model.train_on_batch(
        [rng.random((4, 8, 8, 3), dtype=np.float32), rng.random((4, 8, 3), dtype=np.float32)],
        rng.random((4, 2), dtype=np.float32),
    )
    distinct_bn_values(model, seed=1)
    model.save(out("keras2_convs.h5"))
    return model


def make_mobilenet():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(96, 96, 3), weights=None, classes=10
    )
    model.save(MOBILENET_PATH)
    return model


def describe(path):
    print(f"== {os.path.basename(path)}  {os.path.getsize(path)} bytes")
    with h5py.File(path, "r") as f:
        print("  keras_version", f.attrs["keras_version"], "backend", f.attrs["backend"])
        mw = f["model_weights"]
        print("  layer_names", [n.decode() if isinstance(n, bytes) else n for n in mw.attrs["layer_names"]])
        for name in mw.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            wn = [w.decode() if isinstance(w, bytes) else w for w in mw[name].attrs["weight_names"]]
            if wn:
                print(f"  {name}: {wn}")
        if "optimizer_weights" in f:
            wn = f["optimizer_weights"].attrs["weight_names"]
            print("  optimizer_weights", len(wn), [w.decode() if isinstance(w, bytes) else w for w in wn[:4]], "...")


def main():
    make_tiny()
    describe(out("keras2_tiny.h5"))
    make_convs()
    describe(out("keras2_convs.h5"))
    if "--mobilenet" in sys.argv[1:]:
        m = make_mobilenet()
        print(MOBILENET_PATH, "params", m.count_params(), "size", os.path.getsize(MOBILENET_PATH))


if __name__ == "__main__":
    main()
