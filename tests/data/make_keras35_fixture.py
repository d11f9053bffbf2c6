"""Make tests/data/keras35_nested.keras: a .keras archive written by Keras 3.5.

Keras < 3.6 did not write the `name` attribute on the `vars` groups of
model.weights.h5, so a reader has to derive each layer's weight path from
config.json (the class-name counters of Keras's saver). This file is the real thing for that case.

Made with a side venv (the project venv has Keras 3.15, which writes `name`):

    python3 -m venv /tmp/k35
    /tmp/k35/bin/pip install keras==3.5.0 "jax[cpu]==0.4.31" numpy==1.26.4 h5py
    # (pulled jaxlib 0.4.31, ml_dtypes 0.5.4, h5py 3.16.0; python 3.11.7)
    KERAS_BACKEND=jax /tmp/k35/bin/python tests/data/make_keras35_fixture.py

(The numpy backend of Keras 3.5 imports jax too, so jax is needed either way.)
Seeded with keras.utils.set_random_seed(0).

Model "keras35_nested" (Functional), input "image" (8, 8, 3):
  conv_a   Conv2D             -> ops.relu (an op entry in config.json)
  conv_b   Conv2D             (same class as conv_a: path layers/conv2d_1)
  block    Sequential: conv (Conv2D), bn (BatchNormalization), conv_1x1 (Conv2D)
  fblock   Functional: conv (Conv2D), ops.add (op), dw (DepthwiseConv2D)
  gap, head (Dense)
Compiled with adam + MeanSquaredError and fitted one step: optimizer state
is in the file.

Weight paths Keras 3.5 wrote (no `name` attribute on any vars group):
  layers/conv2d/vars            conv_a
  layers/conv2d_1/vars          conv_b
  layers/sequential/layers/conv2d/vars               block/conv
  layers/sequential/layers/batch_normalization/vars  block/bn
  layers/sequential/layers/conv2d_1/vars             block/conv_1x1
  layers/functional/layers/conv2d/vars               fblock/conv
  layers/functional/layers/depthwise_conv2d/vars     fblock/dw
  layers/dense/vars             head
  optimizer/vars/0..N
(The script prints the real tree after saving.)
"""

import os
import zipfile
import io

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "keras35_nested.keras")


def build():
    keras.utils.set_random_seed(0)
    block = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            layers.Conv2D(4, 3, padding="same", name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.Conv2D(4, 1, name="conv_1x1"),
        ],
        name="block",
    )
    fin = keras.Input((8, 8, 4), name="fblock_in")
    f = layers.Conv2D(4, 3, padding="same", name="conv")(fin)
    f = keras.ops.add(f, 0.5)
    f = layers.DepthwiseConv2D(3, padding="same", name="dw")(f)
    fblock = keras.Model(fin, f, name="fblock")

    inp = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    x = keras.ops.relu(x)
    x = layers.Conv2D(4, 3, padding="same", name="conv_b")(x)
    x = block(x)
    x = fblock(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    y = layers.Dense(2, name="head")(x)
    model = keras.Model(inp, y, name="keras35_nested")
    model.compile(optimizer="adam", loss=keras.losses.MeanSquaredError())
    rng = np.random.default_rng(0)
    model.fit(rng.random((4, 8, 8, 3), dtype=np.float32), rng.random((4, 2), dtype=np.float32),
              batch_size=4, epochs=1, verbose=0)
    return model


def main():
    print("keras", keras.__version__, "backend", keras.backend.backend())
    model = build()
    model.save(OUT)
    print(OUT, os.path.getsize(OUT), "bytes")
    with zipfile.ZipFile(OUT) as z:
        print("members", [(i.filename, i.compress_type) for i in z.infolist()])
        print("metadata", z.read("metadata.json").decode())
        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
            def show(name, obj):
                if isinstance(obj, h5py.Group) and name.endswith("vars"):
                    print(f"  {name:55s} attrs={dict(obj.attrs)} n={len(obj)}")
            f.visititems(show)


if __name__ == "__main__":
    main()
