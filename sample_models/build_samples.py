"""Build the small sample models shipped with conv-surgeon.

Run from the repository root with the project's virtualenv:

    .venv/bin/python sample_models/build_samples.py

Written with keras 3.15.1 on tensorflow 2.21.0 (numpy 2.x, h5py 3.14).
Deterministic: keras.utils.set_random_seed(0) before each model, so the
weights (model.weights.h5, and the whole .h5 files) are byte-identical on
every run. The .keras zips still differ: metadata.json holds the save date
and config.json a "shared_object_id" that is a Python id(). Don't commit a
rebuilt .keras whose only change is that noise.

Files written beside this script:

  tiny_cnn.keras / tiny_cnn.h5   Sequential "tiny_cnn", input (28, 28, 1):
                                 conv1, conv2, pool, conv3, gap, head;
                                 compiled (adam, sparse CE) and fitted one
                                 epoch so optimizer state is in the file.
  sobel.npy                      float32 (3, 3, 1, 4) Sobel-x kernel for
                                 tiny_cnn's conv1 (same filter x4).
  all_convs.keras / all_convs.h5 Functional "all_convs", three inputs, one
                                 layer of every conv class, grouped conv,
                                 bias-free conv, depth_multiplier=2, strided
                                 transposes, BatchNormalization, an op in the
                                 graph (.keras only, see build_all_convs),
                                 nested Sequential "seq_block" and Functional
                                 "func_block" each holding a Conv2D named
                                 "conv", and "deep_block" nested inside
                                 func_block.
  tiny_bf16.keras                Conv2D model with bfloat16 layers.
  tiny_cnn_lambda.keras          Lambda(x * 2.0) + Conv2D "conv1" (needs
                                 safe_mode=False to load).

What Keras 3.15 wrote (checked with h5py):
  - .keras members metadata.json, config.json, model.weights.h5, all stored
    (compress_type 0). Every vars group has the `name` attribute, including
    nested models' own (empty) vars groups and the optimizer's ("adam").
    Layers are stored under layers/<snake_case class name>, numbered _1, _2, ...
    in the config's order (model/naming.py); in all_convs the config order interleaves
    the branches, so in2d -> layers/input_layer, in1d -> input_layer_1,
    in3d -> input_layer_2; ReLU -> re_lu; func_block/deep_block/deep_conv ->
    layers/functional/layers/functional/layers/conv2d.
  - tiny_bf16.keras: kernels/biases are HDF5 OPAQUE 2-byte records (numpy
    dtype |V2) with dataset attribute dtype="bfloat16"; .view(ml_dtypes.bfloat16)
    gives exactly the values Keras loads.
  - legacy .h5 (Keras 3): datasets without ":0"; a layer's datasets are
    named by the variable path at build time: tiny_cnn -> model_weights/conv1/
    tiny_cnn/conv1/kernel (the root model's name inside!); all_convs (built as
    a Functional) -> model_weights/c2d/c2d/kernel. Nested: the Sequential
    seq_block's datasets keep its name (seq_block/conv/kernel), the
    Functional func_block's do not (conv/kernel, deep_conv/kernel: the
    two-deep model's name does not appear). weight_names in seq_block:
    conv k/b, bn gamma/beta, post_conv k/b, then bn moving_mean/variance
    (trainable first). Weightless layers have weight_names = empty float64
    array.
  - Keras 3.15 cannot load a legacy .h5 whose graph has an op in it
    ("Only input tensors may be passed as positional arguments" for x + 1.0,
    "Unknown layer: 'Relu'" for keras.ops.relu), hence all_convs.h5 has none.
  - tiny_cnn.h5 loads with its optimizer; tiny_cnn.keras restores all 18
    optimizer variables (iterations = 2).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def out(name):
    return os.path.join(HERE, name)


def build_tiny_cnn():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(8, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Conv2D(8, 3, padding="same", activation="relu", name="conv3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(10, activation="softmax", name="head"),
        ],
        name="tiny_cnn",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((16, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=(16,))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return model


def sobel_kernel():
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
    k = np.repeat(sobel_x[:, :, None, None], 4, axis=3)  # (3, 3, 1, 4)
    return np.ascontiguousarray(k, dtype=np.float32)


def build_all_convs(with_op=True):
    """with_op=False drops the `+ 1.0` op: Keras 3.15 cannot load a legacy
    .h5 whose graph holds an op (`Only input tensors may be passed as
    positional arguments`, or `Unknown layer: 'Relu'` for keras.ops.relu),
    so all_convs.h5 is written without it. Same weights either way."""
    keras.utils.set_random_seed(0)

    # Nested Sequential with a Conv2D named "conv", a BatchNormalization and a
    # conv after it (so the legacy .h5 weight_names order, trainable first,
    # differs from the layer order).
    seq_block = keras.Sequential(
        [
            keras.Input((16, 16, 2)),
            layers.Conv2D(4, 3, padding="same", name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.Conv2D(4, 1, name="post_conv"),
        ],
        name="seq_block",
    )

    # Model nested two deep: lives inside func_block.
    deep_in = keras.Input((16, 16, 4), name="deep_in")
    deep_out = layers.Conv2D(2, 1, name="deep_conv")(deep_in)
    deep_block = keras.Model(deep_in, deep_out, name="deep_block")

    # Nested Functional with its own Conv2D named "conv" (same name as in seq_block).
    fb_in = keras.Input((16, 16, 4), name="fb_in")
    fb = layers.Conv2D(4, 3, padding="same", name="conv")(fb_in)
    fb = layers.ReLU(name="relu")(fb)
    fb = deep_block(fb)
    func_block = keras.Model(fb_in, fb, name="func_block")

    # --- 1D branch
    in1 = keras.Input((8, 3), name="in1d")
    a = layers.Conv1D(4, 3, padding="same", name="c1d")(in1)
    a = layers.Conv1DTranspose(3, 3, strides=2, padding="same", name="t1d")(a)  # -> (16, 3)
    a = layers.DepthwiseConv1D(3, padding="same", name="dw1d")(a)
    a = layers.SeparableConv1D(4, 3, padding="same", name="sep1d")(a)
    a = layers.GlobalAveragePooling1D(name="gap1d")(a)

    # --- 2D branch
    in2 = keras.Input((8, 8, 4), name="in2d")
    b = layers.Conv2D(4, 3, padding="same", name="c2d")(in2)
    b = layers.BatchNormalization(name="bn2d")(b)
    if with_op:
        b = b + 1.0  # an op entry in config.json (keras.src.ops.numpy Add)
    b = layers.Conv2D(4, 3, padding="same", groups=2, name="c2d_grouped")(b)
    b = layers.Conv2D(4, 1, use_bias=False, name="c2d_nobias")(b)
    b = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw2d")(b)  # -> 8 ch
    b = layers.SeparableConv2D(4, 3, padding="same", name="sep2d")(b)
    b = layers.Conv2DTranspose(2, 3, strides=2, padding="same", name="t2d")(b)  # -> (16, 16, 2)
    b = seq_block(b)
    b = func_block(b)
    b = layers.GlobalAveragePooling2D(name="gap2d")(b)

    # --- 3D branch
    in3 = keras.Input((4, 4, 4, 2), name="in3d")
    c = layers.Conv3D(2, 3, padding="same", name="c3d")(in3)
    c = layers.Conv3DTranspose(2, 2, strides=2, name="t3d")(c)  # -> (8, 8, 8, 2)
    c = layers.GlobalAveragePooling3D(name="gap3d")(c)

    x = layers.Concatenate(name="concat")([a, b, c])
    y = layers.Dense(3, name="out")(x)
    return keras.Model([in1, in2, in3], y, name="all_convs")


def build_tiny_bf16():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(4, 3, padding="same", dtype="bfloat16", name="conv1"),
            layers.Conv2D(2, 3, dtype="bfloat16", name="conv2"),
            layers.GlobalAveragePooling2D(dtype="bfloat16", name="gap"),
        ],
        name="tiny_bf16",
    )
    return model


def build_tiny_lambda():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Lambda(lambda x: x * 2.0, name="double"),
            layers.Conv2D(4, 3, padding="same", name="conv1"),
        ],
        name="tiny_cnn_lambda",
    )
    return model


def forward_check(model):
    shapes = model.inputs
    rng = np.random.default_rng(1)
    xs = [rng.random((2,) + tuple(t.shape[1:]), dtype=np.float32) for t in shapes]
    y = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    assert np.all(np.isfinite(np.asarray(y, dtype=np.float32))), model.name
    return y.shape


def main():
    written = []

    m = build_tiny_cnn()
    forward_check(m)
    for ext in (".keras", ".h5"):
        m.save(out("tiny_cnn" + ext))
        written.append("tiny_cnn" + ext)

    k = sobel_kernel()
    assert k.shape == tuple(m.get_layer("conv1").kernel.shape)
    np.save(out("sobel.npy"), k, allow_pickle=False)
    written.append("sobel.npy")

    m = build_all_convs(with_op=True)
    forward_check(m)
    m.save(out("all_convs.keras"))
    written.append("all_convs.keras")
    m_h5 = build_all_convs(with_op=False)
    forward_check(m_h5)
    for a, b in zip(m.weights, m_h5.weights):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    m_h5.save(out("all_convs.h5"))
    written.append("all_convs.h5")

    m = build_tiny_bf16()
    forward_check(m)
    m.save(out("tiny_bf16.keras"))
    written.append("tiny_bf16.keras")

    m = build_tiny_lambda()
    forward_check(m)
    m.save(out("tiny_cnn_lambda.keras"))
    written.append("tiny_cnn_lambda.keras")

    total = 0
    for name in written:
        size = os.path.getsize(out(name))
        total += size
        print(f"{name:24s} {size:8d} bytes")
    print(f"{'total':24s} {total:8d} bytes")
    if total > 1_000_000:
        print("warning: samples exceed 1 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
