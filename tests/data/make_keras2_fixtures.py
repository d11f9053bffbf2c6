"""Make the Keras 2 (tf-keras) legacy .h5 fixtures in tests/data/.

Needs tf-keras, which the project venv does not have. Made with:

    python3 -m venv /tmp/tfk
    /tmp/tfk/bin/pip install tensorflow==2.21.0 tf-keras==2.21.0
    # (this pulled numpy 2.4.6, h5py 3.14.0; python 3.11.7)
    /tmp/tfk/bin/python tests/data/make_keras2_fixtures.py          # small fixtures
    /tmp/tfk/bin/python tests/data/make_keras2_fixtures.py --mobilenet
    # --mobilenet also writes /tmp/keras2_mobilenetv2.h5 (too big to commit)
    /tmp/tfk/bin/python tests/data/make_keras2_fixtures.py --zoo-only
    # --zoo-only writes only the zoo files (keras2_weights_only*.h5,
    # keras21_sequential.h5, keras2_expected.json), not keras2_tiny/convs.h5
    # --out DIR writes into DIR instead of tests/data (to compare a re-run)

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

  keras2_weights_only.h5   tf-keras model.save_weights("keras2_weights_only.h5")
                    of Functional "keras2_weights_only", input "image"
                    (8, 8, 3): conv1 (Conv2D 3x3, 4), bn
                    (BatchNormalization, distinct values), relu (Activation),
                    conv2 (Conv2D 3x3 valid, 4), gap, head (Dense 2). Not
                    compiled. Root attributes layer_names (every layer,
                    "image" included), backend, keras_version; no
                    model_config, no model_weights group: the layer groups sit
                    at the root (conv1/conv1/kernel:0 ...), plus an empty
                    top_level_model_weights group.
  keras2_weights_only_model.h5   the same model, model.save() (full .h5):
                    pass it as --config; Keras 3.15 load_model()s it and
                    load_weights("keras2_weights_only.h5") then works.
  keras21_sequential.h5   a Keras <= 2.1 style Sequential, made by rewriting a
                    tf-keras .h5 (tf-keras cannot write the old format):
                    Sequential "keras21_sequential", input (8, 8, 1): conv1
                    (Conv2D 3x3 same, 4), bn (BatchNormalization), pool
                    (MaxPooling2D), conv2 (Conv2D 3x3, 2), flatten, dense
                    (Dense 3). Rewritten as Keras 2.1.6 + h5py 2 wrote it:
                    model_config = {"class_name": "Sequential", "config":
                    [<layer configs, plain list>]}, no InputLayer entry, the
                    first layer carrying "batch_input_shape" and "dtype"; each
                    layer config reduced to {"class_name", "config"} (no
                    "module"/"registered_name"), "groups" dropped from the
                    convs, initializers written as Keras 2.1 did
                    (glorot_uniform = VarianceScaling(scale=1, fan_avg,
                    uniform)); root attrs keras_version="2.1.6",
                    backend="tensorflow", model_config as fixed-length byte
                    strings (numpy.bytes_); model_weights attrs layer_names
                    and each layer's weight_names as numpy arrays of fixed-
                    length bytes (dtype 'S..'), not variable-length strings;
                    no top_level_model_weights group, no training_config.
                    The datasets themselves are the ones tf-keras wrote
                    (model_weights/conv1/conv1/kernel:0 ...).
                    Keras 3.15 load_model (compile=False too) fails on it:
                    "TypeError: pop expected at most 1 argument, got 2"
                    (legacy saving_utils.model_from_config calls
                    config["config"].pop(...) on the list);
                    keras.Sequential.from_config(list) refuses a list; and
                    the legacy per-layer model_from_config turns
                    batch_input_shape into input_shape WITH the batch axis
                    ("Kernel shape must have the same length as input").
                    Rebuilt as Sequential([Input(batch_input_shape[1:])] +
                    per-layer legacy model_from_config), load_weights() of
                    the file then gives exactly the expected variables
                    (tests/zoo.py load_keras21_sequential, checked).
  keras2_expected.json  {file name: [{"name", "shape", "dtype", "sha256"}]}
                    for every file above (the tf-keras variable name, e.g.
                    "conv1/kernel:0"; the sha256 of the raw C-order bytes).
                    keras2_tiny.h5 and keras2_convs.h5 entries are computed
                    from tf-keras load_model() of the committed files; the
                    others from the live model right before saving. Order:
                    layer by layer in model.layers order, a nested model's
                    layers recursively, each layer's weights in its own
                    order (BN: gamma, beta, moving_mean, moving_variance),
                    i.e. Keras 3's model.weights order, NOT the .h5
                    weight_names order (trainable first) of nested models.

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

import hashlib
import json
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


OUT_DIR = HERE


def out(name):
    return os.path.join(OUT_DIR, name)


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


# --- the zoo's Keras 2 files -------------------------------------------------


def ordered_weights(model):
    """Keras 3's model.weights order: layer by layer, nested models recursed."""
    found, seen = [], set()

    def walk(layer):
        if isinstance(layer, keras.Model):
            for child in layer.layers:
                walk(child)
            rest = layer._trainable_weights + layer._non_trainable_weights
        else:
            rest = layer.weights
        for w in rest:
            if id(w) not in seen:
                seen.add(id(w))
                found.append(w)

    walk(model)
    assert len(found) == len(model.weights), (len(found), len(model.weights))
    return found


def expected_of(model):
    entries = []
    for w in ordered_weights(model):
        value = np.asarray(w.numpy())
        entries.append({
            "name": w.name,
            "shape": list(value.shape),
            "dtype": w.dtype.name,
            "sha256": hashlib.sha256(value.tobytes()).hexdigest(),
        })
    return entries


def make_weights_only():
    keras.utils.set_random_seed(0)
    img = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="conv1")(img)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("relu", name="relu")(x)
    x = layers.Conv2D(4, 3, name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    y = layers.Dense(2, name="head")(x)
    model = keras.Model(img, y, name="keras2_weights_only")
    distinct_bn_values(model, seed=2)
    expected = expected_of(model)
    model.save_weights(out("keras2_weights_only.h5"))
    model.save(out("keras2_weights_only_model.h5"))
    return expected


KERAS21_INITIALIZERS = {
    # Keras 2.1 serialized glorot_uniform as the VarianceScaling it is.
    "GlorotUniform": {"class_name": "VarianceScaling", "config": {
        "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
}


def keras21_style(obj):
    """A tf-keras serialized object as Keras 2.1 wrote it: only class_name and
    config, glorot_uniform spelled as VarianceScaling, no 'groups'."""
    if isinstance(obj, dict):
        if "class_name" in obj and "config" in obj:
            if obj["class_name"] in KERAS21_INITIALIZERS:
                return KERAS21_INITIALIZERS[obj["class_name"]]
            return {"class_name": obj["class_name"], "config": keras21_style(obj["config"])}
        return {k: keras21_style(v) for k, v in obj.items() if k != "groups"}
    if isinstance(obj, list):
        return [keras21_style(v) for v in obj]
    return obj


def as_fixed_bytes(strings):
    """A numpy array of fixed-length byte strings, as h5py 2 stored a list of bytes."""
    values = [s.encode("utf8") if isinstance(s, str) else s for s in strings]
    return np.array(values, dtype="S%d" % max([len(v) for v in values] + [1]))


def make_keras21_sequential():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
            layers.BatchNormalization(name="bn"),
            layers.MaxPooling2D(name="pool"),
            layers.Conv2D(2, 3, activation="relu", name="conv2"),
            layers.Flatten(name="flatten"),
            layers.Dense(3, name="dense"),
        ],
        name="keras21_sequential",
    )
    distinct_bn_values(model, seed=3)
    expected = expected_of(model)
    path = out("keras21_sequential.h5")
    model.save(path)

    config = model.get_config()
    layer_configs = [c for c in config["layers"] if c["class_name"] != "InputLayer"]
    inputs = [c for c in config["layers"] if c["class_name"] == "InputLayer"]
    layer_configs = keras21_style(layer_configs)
    first = layer_configs[0]["config"]
    # Keras 2.1: the first layer carries the input shape; keys in that order.
    shaped = {"name": first.pop("name"), "trainable": first.pop("trainable"),
              "batch_input_shape": inputs[0]["config"]["batch_input_shape"],
              "dtype": first.pop("dtype")}
    shaped.update(first)
    layer_configs[0]["config"] = shaped
    model_config = {"class_name": "Sequential", "config": layer_configs}

    with h5py.File(path, "r+") as f:
        for key in list(f.attrs):
            del f.attrs[key]
        # h5py 2 stored Python bytes as fixed-length strings: numpy.bytes_.
        f.attrs["keras_version"] = np.bytes_(b"2.1.6")
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        f.attrs["model_config"] = np.bytes_(json.dumps(model_config).encode("utf8"))
        mw = f["model_weights"]
        names = [n.decode() if isinstance(n, bytes) else n for n in mw.attrs["layer_names"]]
        if "top_level_model_weights" in mw:
            del mw["top_level_model_weights"]
        for key in list(mw.attrs):
            del mw.attrs[key]
        mw.attrs["layer_names"] = as_fixed_bytes(names)
        mw.attrs["backend"] = np.bytes_(b"tensorflow")
        mw.attrs["keras_version"] = np.bytes_(b"2.1.6")
        for name in names:
            g = mw[name]
            wn = [w.decode() if isinstance(w, bytes) else w for w in g.attrs["weight_names"]]
            if wn:  # an empty list stays what both wrote: an empty float64 array
                del g.attrs["weight_names"]
                g.attrs["weight_names"] = as_fixed_bytes(wn)
    # h5py leaves the freed attribute space in the file: repack small.
    tmp = path + ".tmp"
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key in src:
            src.copy(src[key], dst, name=key)
    os.replace(tmp, path)
    return expected


def expected_of_file(name):
    model = keras.models.load_model(out(name), compile=False)
    return expected_of(model)


def expected_json(expected):
    """One line per variable, files in name order."""
    lines = ["{"]
    for i, name in enumerate(sorted(expected)):
        lines.append(f"  {json.dumps(name)}: [")
        entries = [json.dumps(e, sort_keys=True) for e in expected[name]]
        lines.append(",\n".join("    " + e for e in entries))
        lines.append("  ]" + ("," if i < len(expected) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_zoo(with_committed=True):
    expected = {}
    weights_only = make_weights_only()
    expected["keras2_weights_only.h5"] = weights_only
    expected["keras2_weights_only_model.h5"] = weights_only
    expected["keras21_sequential.h5"] = make_keras21_sequential()
    if with_committed:
        for name in ("keras2_tiny.h5", "keras2_convs.h5"):
            expected[name] = expected_of_file(name)
    with open(out("keras2_expected.json"), "w") as f:
        f.write(expected_json(expected))
    return expected


def describe_any(path):
    """Every group and dataset, with attributes and their numpy types."""
    print(f"== {os.path.basename(path)}  {os.path.getsize(path)} bytes")
    with h5py.File(path, "r") as f:
        for key, value in f.attrs.items():
            shown = value if len(repr(value)) < 100 else repr(value)[:100] + "..."
            print(f"  @{key} ({type(value).__name__}, {getattr(value, 'dtype', '')}): {shown}")

        def visit(name, obj):
            kind = "G" if isinstance(obj, h5py.Group) else f"D {obj.shape} {obj.dtype}"
            attrs = {k: (v, getattr(v, "dtype", type(v).__name__)) for k, v in obj.attrs.items()}
            print(f"  {kind} {name} {attrs if attrs else ''}")

        f.visititems(visit)


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
    global OUT_DIR
    args = sys.argv[1:]
    if "--out" in args:
        OUT_DIR = args[args.index("--out") + 1]
        os.makedirs(OUT_DIR, exist_ok=True)
    if "--zoo-only" not in args:
        make_tiny()
        describe(out("keras2_tiny.h5"))
        make_convs()
        describe(out("keras2_convs.h5"))
    # keras2_tiny/convs entries are read back from the files in OUT_DIR (or,
    # with --zoo-only, from the committed ones in tests/data).
    if "--zoo-only" in args and OUT_DIR != HERE:
        for name in ("keras2_tiny.h5", "keras2_convs.h5"):
            if not os.path.exists(out(name)):
                import shutil
                shutil.copyfile(os.path.join(HERE, name), out(name))
    write_zoo()
    for name in ("keras2_weights_only.h5", "keras2_weights_only_model.h5", "keras21_sequential.h5"):
        describe_any(out(name))
    if "--mobilenet" in sys.argv[1:]:
        m = make_mobilenet()
        print(MOBILENET_PATH, "params", m.count_params(), "size", os.path.getsize(MOBILENET_PATH))


if __name__ == "__main__":
    main()
