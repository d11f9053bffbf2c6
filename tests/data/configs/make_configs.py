"""Make tests/data/configs/: the config.json of real Keras saves, and what Keras itself
says about each model, for the Keras-free tests of graph surgery (tests/test_surgery_*.py).

Run with the project venv (Keras 3.15, TensorFlow 2.21), from anywhere:

    TF_ENABLE_ONEDNN_OPTS=0 /work/main/.venv/bin/python tests/data/configs/make_configs.py [STEP ...]

The steps, in order (all of them without arguments): keras2, fold, ops, prune, mixed,
applications (the five keras.applications models with weights=None: a minute or two),
application_twins (reads what "applications" wrote; run it after it).

It builds every model below, saves it with ``model.save(...)`` to a temporary `.keras`
and writes, per model NAME:

  NAME.json        the archive's ``config.json`` member, with every ``*_initializer``,
                   ``*_regularizer`` and ``*_constraint`` key dropped from the layer
                   configs (conv_surgeon reads none of them; they are most of the bytes).
                   Nothing else is changed; the JSON is written compactly.
  NAME.facts.json  what live Keras says, for the tests to compare with (the oracle):
                   "operations": per model path ("" for the root), the names of
                       ``model.operations`` (a Sequential: ``model.layers``), Keras's order;
                   "store": layer path -> its object's group in ``model.weights.h5``,
                       read from the saved store (every ``vars`` group carries the layer's
                       name as its ``name`` attribute);
                   "foldable": the BatchNormalization paths that follow a linear conv that
                       feeds nothing else and is no model output, by Keras's live graph
                       (the rule of tests/test_fold_bn.py);
                   "variables": layer path -> [[name, shape, trainable], ...] in the
                       layer's weight order;
                   "trainable": [[layer path, name, shape], ...] in the order of
                       ``model.trainable_variables``;
                   plus model-specific entries (below).

Twins. For a hand-built model (and, for its order and store only, each application), a
*twin* is the same model built by Keras as graph surgery should leave it: without the
BatchNormalizations fold-bn removes (the convs given a bias), or with fewer filters
where prune cuts channels. Its stripped config is written as NAME.TWIN.json and its
facts under "twins" in NAME.facts.json.

The trained mixed model is also kept whole for the store rewrite tests: mixed.keras
and mixed.h5 (the same model saved as .keras and as a legacy .h5, with Adam's state).

And the Keras 2 (tf-keras) configs of tests/data/keras2_convs.h5 and keras2_tiny.h5
are copied out as keras2_convs.json and keras2_tiny.json, with the files' own
``layer_names`` (the order Keras 2 listed the layers in) as their facts.

Seeded (keras.utils.set_random_seed(0)). The configs do not depend on the seed; the
``shared_object_id`` values in them are Python object ids and change on every run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
L = keras.layers
CONV_CLASSES = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")
UNREAD = re.compile(r"_(initializer|regularizer|constraint)$")


# --- what is written ----------------------------------------------------------------------


def strip(value: Any) -> Any:
    """The config without the keys conv_surgeon never reads (see the module doc)."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not UNREAD.search(k)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def dump(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, separators=(",", ":")) + "\n")
    print(f"  {path.name}: {path.stat().st_size:,} bytes")


def saved(model: keras.Model, folder: Path, name: str) -> tuple[dict[str, Any], dict[str, str], Path]:
    """Save ``model`` as Keras does; its config.json, its store's layer map, the archive."""
    path = folder / f"{name}.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        with h5py.File(BytesIO(archive.read("model.weights.h5")), "r") as h5:
            store = store_map(h5)
    return config, store, path


def store_map(h5: h5py.File) -> dict[str, str]:
    """Layer path -> object group, from the saved store's ``vars`` name attributes."""
    found: dict[str, str] = {}

    def walk(group: h5py.Group, object_path: str, prefix: str) -> None:
        layers = group.get("layers")
        if layers is None:
            return
        for key in layers:
            child = layers[key]
            name = child["vars"].attrs["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            path = f"{object_path}/layers/{key}" if object_path else f"layers/{key}"
            found[prefix + name] = path
            walk(child, path, f"{prefix}{name}/")

    walk(h5, "", "")
    return found


def operations(model: keras.Model, prefix: str = "") -> dict[str, list[str]]:
    """Per model path, its operations in Keras's order (a Sequential: its layers)."""
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
    else:
        names = [op.name for op in model.operations]
    found = {prefix.rstrip("/"): names}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(operations(layer, f"{prefix}{layer.name}/"))
    return found


def layer_paths(model: keras.Model, prefix: str = "") -> dict[str, keras.layers.Layer]:
    found: dict[str, keras.layers.Layer] = {}
    for layer in model.layers:
        found[prefix + layer.name] = layer
        if isinstance(layer, keras.Model):
            found.update(layer_paths(layer, f"{prefix}{layer.name}/"))
    return found


def variables(model: keras.Model) -> tuple[dict[str, list[Any]], list[list[Any]]]:
    """Per layer path its variables; the model's trainable variables in Keras's order."""
    per_layer: dict[str, list[Any]] = {}
    owner: dict[int, tuple[str, str]] = {}
    for path, layer in layer_paths(model).items():
        if isinstance(layer, keras.Model):
            continue
        own = []
        for variable in layer.weights:
            name = variable.path.rpartition("/")[2]
            own.append([name, list(variable.shape), bool(variable.trainable)])
            owner[id(variable)] = (path, name)
        if own:
            per_layer[path] = own
    trainable = [[*owner[id(v)], list(v.shape)] for v in model.trainable_variables]
    return per_layer, trainable


def foldable(model: keras.Model, prefix: str = "") -> list[str]:
    """BatchNormalizations after a linear conv that feeds nothing else, by Keras's graph."""
    found: list[str] = []
    if isinstance(model, keras.Sequential):  # a chain: each layer feeds the next alone
        return [prefix + b.name for a, b in zip(model.layers, model.layers[1:])
                if type(b).__name__ == "BatchNormalization" and type(a).__name__ in CONV_CLASSES
                and a.activation.__name__ == "linear"]
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += foldable(layer, f"{prefix}{layer.name}/")
            continue
        if type(layer).__name__ != "BatchNormalization" or len(layer._inbound_nodes) != 1:
            continue
        parents = layer._inbound_nodes[0].parent_nodes
        if len(parents) != 1:
            continue
        conv = parents[0].operation
        if (type(conv).__name__ in CONV_CLASSES and len(conv._outbound_nodes) == 1
                and conv.activation.__name__ == "linear" and conv.name not in model.output_names):
            found.append(prefix + layer.name)
    return found


def facts_of(model: keras.Model, store: dict[str, str]) -> dict[str, Any]:
    per_layer, trainable = variables(model)
    return {"operations": operations(model), "store": store, "foldable": foldable(model),
            "variables": per_layer, "trainable": trainable}


def optimizer_facts(model: keras.Model) -> dict[str, Any]:
    """The optimizer's variables in order: path, shape, and the trainable variable
    (index into "trainable") each slot belongs to (None: the optimizer's own scalars)."""
    keys = [v.path.replace("/", "_") for v in model.trainable_variables]
    slots = []
    for variable in model.optimizer.variables:
        leaf = variable.path.split("/", 1)[1]
        owners = [i for i, key in enumerate(keys) if leaf.startswith(key + "_")
                  and not any(k != key and k.startswith(key) and leaf.startswith(k + "_") for k in keys)]
        assert len(owners) <= 1, (variable.path, owners)
        owner = owners[0] if owners else None
        if owner is not None:
            assert tuple(variable.shape) == tuple(model.trainable_variables[owner].shape), variable.path
        slots.append([variable.path, list(variable.shape), str(variable.dtype), owner])
    return {"optimizer": slots}


def write(name: str, model: keras.Model, folder: Path, extra: dict[str, Any] | None = None,
          twins: dict[str, keras.Model] | None = None) -> dict[str, Any]:
    config, store, _ = saved(model, folder, name)
    dump(HERE / f"{name}.json", strip(config))
    facts = facts_of(model, store) | (extra or {})
    if twins:
        facts["twins"] = {}
        for twin_name, twin in twins.items():
            twin_config, twin_store, _ = saved(twin, folder, f"{name}.{twin_name}")
            dump(HERE / f"{name}.{twin_name}.json", strip(twin_config))
            facts["twins"][twin_name] = facts_of(twin, twin_store)
    dump(HERE / f"{name}.facts.json", facts)
    return facts


# --- keras.applications -------------------------------------------------------------------

APPLICATIONS = {
    "resnet50": ("ResNet50", (64, 64, 3)),
    "mobilenetv2": ("MobileNetV2", (64, 64, 3)),
    "densenet121": ("DenseNet121", (64, 64, 3)),
    "xception": ("Xception", (71, 71, 3)),  # its smallest input
    "efficientnetb0": ("EfficientNetB0", (64, 64, 3)),
}


def applications(folder: Path) -> None:
    for name, (cls, shape) in APPLICATIONS.items():
        model = getattr(keras.applications, cls)(weights=None, input_shape=shape, classes=10,
                                                 classifier_activation=None)
        write(name, model, folder)


def application_twins(folder: Path) -> None:
    """Each application without the BatchNormalizations its facts call foldable, their
    convs given a bias: the committed config edited here (its own few lines, not
    conv_surgeon's), then built and saved by Keras, which decides the layer order and
    the store keys. Only those are kept (to keep the files small), under "twins" in
    NAME.facts.json. Run after "applications", which rewrites NAME.facts.json."""
    for name in APPLICATIONS:
        config = json.loads((HERE / f"{name}.json").read_text())
        facts = json.loads((HERE / f"{name}.facts.json").read_text())
        model = keras.saving.deserialize_keras_object(without_batchnorms(config, set(facts["foldable"])))
        _, twin_store, _ = saved(model, folder, f"{name}.folded")
        facts["twins"] = {"folded": {"operations": operations(model), "store": twin_store}}
        dump(HERE / f"{name}.facts.json", facts)


def without_batchnorms(config: dict[str, Any], removed: set[str]) -> dict[str, Any]:
    """A root model's config without the BatchNormalizations ``removed`` (each fed by one
    conv): their consumers fed by the conv, the conv given a bias."""
    layers = config["config"]["layers"]
    by_name = {layer["name"]: layer for layer in layers}
    feeds: dict[str, list[Any]] = {}
    for layer in layers:
        if layer["name"] in removed:
            [node] = layer["inbound_nodes"]
            history = node["args"][0]["config"]["keras_history"]
            feeds[layer["name"]] = history
            by_name[history[0]]["config"]["use_bias"] = True

    def rewire(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                history = value["config"]["keras_history"]
                value["config"]["keras_history"] = feeds.get(history[0], history)
                return value
            return {k: rewire(v) for k, v in value.items()}
        if isinstance(value, list):
            if len(value) == 3 and isinstance(value[0], str) and value[0] in feeds:
                return list(feeds[value[0]])
            return [rewire(v) for v in value]
        return value

    config["config"]["layers"] = [rewire(layer) for layer in layers if layer["name"] not in removed]
    config["config"]["output_layers"] = rewire(config["config"]["output_layers"])
    return config


# --- hand-built models: fold-bn -------------------------------------------------------------


def fold_cases(twin: bool = False) -> keras.Model:
    """Every reason a BatchNormalization is or is not folded, in one model. The twin is the
    model fold-bn should make: the foldable BNs gone, their convs with a bias."""
    def bn(name: str, **kwargs: Any) -> Any:
        return (lambda x: x) if twin else L.BatchNormalization(name=name, **kwargs)

    img = keras.Input((8, 8, 3), name="img")
    conv = dict(kernel_size=3, padding="same")
    tails = []
    # use_bias=False: folds, and the conv is given a bias. The BN feeds two layers.
    nobias = bn("bn_nobias")(L.Conv2D(4, **conv, use_bias=twin, name="c_nobias")(img))
    tails += [L.ReLU(name="relu_nobias")(nobias), L.BatchNormalization(name="bn_after_bn")(nobias)]
    # The conv's own activation sits between: refused.
    tails.append(L.BatchNormalization(name="bn_relu")(L.Conv2D(4, **conv, activation="relu", name="c_relu")(img)))
    # The conv's output also feeds an Add: refused.
    c_two = L.Conv2D(4, **conv, name="c_two")(img)
    tails.append(L.Add(name="sum_two")([L.BatchNormalization(name="bn_two")(c_two), c_two]))
    # One conv feeding two BNs: both refused.
    c_fork = L.Conv2D(4, **conv, name="c_fork")(img)
    tails += [L.BatchNormalization(name="bn_fork_a")(c_fork), L.BatchNormalization(name="bn_fork_b")(c_fork)]
    # After a pooling layer, not a conv: refused.
    pooled = L.AveragePooling2D(3, strides=1, padding="same", name="pool")(img)
    tails.append(L.BatchNormalization(name="bn_after_pool")(pooled))
    # One BN called on two convs (a shared layer): refused.
    shared = L.BatchNormalization(name="bn_shared")
    tails += [shared(L.Conv2D(4, **conv, name="c_sa")(img)), shared(L.Conv2D(4, **conv, name="c_sb")(img))]
    # A nested Functional: its own pair folds; a BN after the nested model is refused.
    inner_in = keras.Input((8, 8, 3), name="inner_in")
    inner = keras.Model(inner_in, bn("ibn")(L.Conv2D(4, **conv, name="iconv")(inner_in)), name="inner")
    tails.append(L.BatchNormalization(name="bn_after_model")(inner(img)))
    # A nested Sequential: its pair folds.
    seq_layers = [keras.Input((8, 8, 3), name="seq_in"), L.Conv2D(4, **conv, name="sconv")]
    seq_layers += [] if twin else [L.BatchNormalization(name="sbn")]
    tails.append(keras.Sequential([*seq_layers, L.ReLU(name="srelu")], name="seq")(img))
    # A conv that is also a model output: refused.
    c_out = L.Conv2D(4, **conv, name="c_out")(img)
    tails.append(L.BatchNormalization(name="bn_out")(c_out))
    # Synchronized and renormalising BNs: refused.
    tails.append(L.BatchNormalization(name="bn_sync", synchronized=True)(L.Conv2D(4, **conv, name="c_sync")(img)))
    tails.append(L.BatchNormalization(name="bn_renorm", renorm=True)(L.Conv2D(4, **conv, name="c_renorm")(img)))
    # A BN that is a model output: folds (the output then is the conv's).
    head = bn("bn_head")(L.Conv2D(4, **conv, name="c_head")(img))
    merged = L.Concatenate(name="merge")(tails)
    return keras.Model(img, [merged, c_out, head], name="fold_cases")


def conv_kinds(twin: bool = False) -> keras.Model:
    """A BN after each kind of conv, channels_first, 1D and 3D; one BN on the wrong axis."""
    def bn(name: str, **kwargs: Any) -> Any:
        return (lambda x: x) if twin else L.BatchNormalization(name=name, **kwargs)

    cf = keras.Input((3, 12, 12), name="cf")
    seq = keras.Input((16, 2), name="seq")
    vol = keras.Input((6, 6, 6, 2), name="vol")
    img = keras.Input((8, 8, 3), name="img")
    outs = [
        bn("bn_cf", axis=1)(L.Conv2D(4, 3, data_format="channels_first", name="cf_conv")(cf)),
        L.BatchNormalization(axis=2, name="bn_wrong_axis")(L.Conv2D(4, 3, data_format="channels_first",
                                                                    name="cf_conv2")(cf)),
        bn("bn_1d")(L.Conv1D(3, 5, name="c1d")(seq)),
        bn("bn_3d")(L.Conv3D(2, 3, name="c3d")(vol)),
        bn("bn_dw")(L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(img)),
        bn("bn_sep")(L.SeparableConv2D(5, 3, padding="same", name="sep")(img)),
        bn("bn_tr")(L.Conv2DTranspose(3, 3, strides=2, padding="same", name="tr")(img)),
        bn("bn_dw1d")(L.DepthwiseConv1D(3, name="dw1d")(seq)),
        bn("bn_sep1d")(L.SeparableConv1D(4, 3, name="sep1d")(seq)),
        bn("bn_tr1d")(L.Conv1DTranspose(2, 3, name="tr1d")(seq)),
        bn("bn_tr3d")(L.Conv3DTranspose(2, 3, name="tr3d")(vol)),
    ]
    outs = [L.ReLU(name=f"relu_{i}")(x) for i, x in enumerate(outs)]
    return keras.Model([cf, seq, vol, img], outs, name="conv_kinds")


def swap(twin: bool = False) -> keras.Model:
    """Removing a BN changes Keras's order of same-class layers, so store keys move: two
    convs and two nested models swap their keys (and the nested layers move with them)."""
    def bn(name: str) -> Any:
        return (lambda x: x) if twin else L.BatchNormalization(name=name)

    def nested(name: str) -> keras.Model:
        x_in = keras.Input((8, 8, 3), name=f"{name}_in")
        y = bn(f"{name}_bn")(L.Conv2D(3, 3, padding="same", name=f"{name}_conv")(x_in))
        return keras.Model(x_in, L.ReLU(name=f"{name}_relu")(y), name=name)

    img = keras.Input((8, 8, 3), name="img")
    first = L.Conv2D(4, 1, name="c_first")(nested("model_b")(img))
    second = bn("bn_second")(L.Conv2D(4, 1, name="c_second")(nested("model_a")(img)))
    return keras.Model(img, L.Add(name="add")([first, second]), name="swap")


def sequential_fold(twin: bool = False) -> keras.Model:
    layers = [keras.Input((16, 16, 3), name="image"), L.Conv2D(4, 3, name="a")]
    layers += [] if twin else [L.BatchNormalization(name="a_bn")]
    layers += [L.ReLU(name="relu"), L.Conv2D(4, 3, use_bias=twin, name="b")]
    layers += [] if twin else [L.BatchNormalization(name="b_bn")]
    layers += [L.GlobalAveragePooling2D(name="gap"), L.Dense(3, name="head")]
    return keras.Sequential(layers, name="sequential_fold")


def mixed(twin: str | None = None) -> keras.Model:
    """tests/test_fold_bn.py's mixed model: nested, no bias, scale=False, center=False,
    depthwise x2, separable, transposed, a BN after a BN. Twin "folded": fold-bn's result;
    twin "pruned": the group {c1, c2} cut from 4 channels to 3."""
    def bn(name: str, **kwargs: Any) -> Any:
        return (lambda x: x) if twin == "folded" else L.BatchNormalization(name=name, **kwargs)

    width = 3 if twin == "pruned" else 4
    inner_in = keras.Input((8, 8, width), name="inner_in")
    x = L.Conv2D(4, 3, padding="same", name="iconv")(inner_in)
    inner = keras.Model(inner_in, bn("ibn")(x), name="inner")
    i = keras.Input((8, 8, 3), name="image")
    a = bn("b1")(L.Conv2D(width, 3, padding="same", use_bias=twin == "folded", name="c1")(i))
    b = bn("b2", scale=False)(L.Conv2D(width, 1, name="c2")(i))
    x = inner(L.Add(name="add")([a, b]))
    x = bn("b3", center=False)(L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x))
    x = bn("b4")(L.SeparableConv2D(5, 3, padding="same", name="sep")(L.ReLU(name="relu")(x)))
    x = bn("b5")(L.Conv2DTranspose(3, 3, strides=2, padding="same", name="tr")(x))
    x = L.BatchNormalization(name="b6")(x)
    return keras.Model(i, L.Dense(2, name="d")(L.GlobalAveragePooling2D(name="gap")(x)), name="mixed")


def randomize(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial BatchNormalization statistics and biases."""
    rng = np.random.default_rng(seed)
    for layer in layer_paths(model).values():
        if isinstance(layer, keras.Model) or not layer.weights:
            continue
        values = []
        for variable in layer.weights:
            name = variable.path.rpartition("/")[2]
            shape = tuple(variable.shape)
            if name == "moving_variance":
                values.append(rng.uniform(0.3, 3.0, shape))
            elif name == "gamma":
                values.append(rng.uniform(0.5, 1.5, shape))
            elif name in ("beta", "moving_mean", "bias"):
                values.append(rng.normal(0.0, 0.5, shape))
            else:
                values.append(np.asarray(variable))
        layer.set_weights([v.astype("float32") for v in values])


def trained(model: keras.Model, optimizer: Any = "adam") -> keras.Model:
    model.compile(optimizer, "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    model.fit(x, rng.normal(size=(4, 2)).astype("float32"), verbose=0)
    return model


def mixed_models(folder: Path) -> None:
    keras.utils.set_random_seed(0)
    model = mixed()
    randomize(model)
    trained(model)
    extra = optimizer_facts(model)
    # The slot shapes other optimizers write for the same model (their layouts differ).
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)
    others = {"adam_amsgrad": keras.optimizers.Adam(amsgrad=True), "sgd_momentum": keras.optimizers.SGD(momentum=0.9),
              "sgd": keras.optimizers.SGD(), "adam_schedule": keras.optimizers.Adam(schedule)}
    extra["other_optimizers"] = {name: optimizer_facts(trained(mixed(), opt))["optimizer"]
                                 for name, opt in others.items()}
    twins = {"folded": trained(mixed("folded")), "pruned": trained(mixed("pruned"))}
    facts = write("mixed", model, folder, extra, twins)
    for name, twin in twins.items():
        facts["twins"][name] |= optimizer_facts(twin)
    dump(HERE / "mixed.facts.json", facts)
    # The whole model, as .keras and as a legacy .h5, for the store rewrite tests.
    shutil.copyfile(folder / "mixed.keras", HERE / "mixed.keras")
    model.save(HERE / "mixed.h5")
    for suffix in ("keras", "h5"):
        print(f"  mixed.{suffix}: {(HERE / f'mixed.{suffix}').stat().st_size:,} bytes")


# --- hand-built models: prune ---------------------------------------------------------------


def junctions(stem: int = 8, abm: int = 8, c: int = 4, sep: int = 6, tr: int = 5) -> keras.Model:
    """Add, Multiply and Concatenate junctions, a depthwise conv (multiplier 2) into a
    separable one, squeeze-and-excite (GAP -> Reshape -> conv -> Multiply), a transposed
    conv, and Dense heads after a global pooling and after a Flatten. The arguments are
    the filters of each channel group; a twin is the same model with fewer."""
    img = keras.Input((16, 16, 3), name="img")
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(
        L.Conv2D(stem, 3, padding="same", name="stem")(img)))
    added = L.Add(name="add")([L.Conv2D(abm, 1, name="a")(x), L.Conv2D(abm, 3, padding="same", name="b")(x)])
    multiplied = L.Multiply(name="mul")([added, L.Conv2D(abm, 1, name="m")(x)])
    cat = L.Concatenate(name="cat")([multiplied, L.Conv2D(c, 1, name="c")(x)])
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(L.BatchNormalization(name="cat_bn")(cat))
    x = L.ReLU(name="sep_relu")(L.SeparableConv2D(sep, 3, padding="same", name="sep")(x))
    se = L.Reshape((1, 1, sep), name="se_reshape")(L.GlobalAveragePooling2D(name="se_gap")(x))
    x = L.Multiply(name="se_mul")([x, L.Conv2D(sep, 1, activation="sigmoid", name="se")(se)])
    x = L.Conv2DTranspose(tr, 3, strides=2, padding="same", name="tr")(x)  # 32 x 32
    gap = L.Dense(3, name="dense_gap")(L.GlobalAveragePooling2D(name="gap")(x))
    flat = L.Dense(2, name="dense_flat")(L.Flatten(name="flat")(L.MaxPooling2D(4, name="pool")(x)))
    return keras.Model(img, [gap, flat], name="junctions")


def channels_first_flat(c1: int = 6, ab: int = 5, c2: int = 4) -> keras.Model:
    """channels_first convs, an Add, and two Flattens into Dense layers: one flattening
    the channels-first tensor as it is, one (data_format=channels_first) channels last."""
    cf = keras.Input((3, 12, 12), name="cf")
    x = L.BatchNormalization(axis=1, name="bn1")(L.Conv2D(c1, 3, data_format="channels_first", name="c1")(cf))
    a = L.Conv2D(ab, 1, data_format="channels_first", name="a")(x)
    b = L.Conv2D(ab, 3, padding="same", data_format="channels_first", name="b")(x)
    x = L.ReLU(name="relu")(L.Add(name="add")([a, b]))
    x = L.Conv2D(c2, 3, data_format="channels_first", name="c2")(x)  # (c2, 8, 8)
    flat = L.Dense(2, name="d")(L.Flatten(name="flat")(x))
    flat_cf = L.Dense(2, name="d_cf")(L.Flatten(data_format="channels_first", name="flat_cf")(x))
    return keras.Model(cf, [flat, flat_cf], name="channels_first_flat")


def nested_prune(c1: int = 6, iconv: int = 7, iout: int = 5, c2: int = 4, sconv: int = 4) -> keras.Model:
    """Channels that enter a nested Functional through its input (a BN first, so the inner
    BN's channels are tied to the outer conv), a depthwise conv inside, channels that leave
    it through its output, and a nested Sequential."""
    inner_in = keras.Input((10, 10, c1), name="inner_in")
    y = L.ReLU(name="irelu")(L.BatchNormalization(name="ibn")(inner_in))
    y = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="idw")(L.Conv2D(iconv, 3, padding="same", name="iconv")(y))
    inner = keras.Model(inner_in, L.Conv2D(iout, 1, name="iout")(y), name="inner")
    seq = keras.Sequential([keras.Input((8, 8, c2), name="seq_in"), L.Conv2D(sconv, 1, name="sconv"),
                            L.ReLU(name="srelu")], name="seq")
    img = keras.Input((10, 10, 3), name="img")
    x = inner(L.Conv2D(c1, 3, padding="same", name="c1")(img))
    x = seq(L.Conv2D(c2, 3, name="c2")(x))
    return keras.Model(img, L.Dense(3, name="d")(L.GlobalAveragePooling2D(name="gap")(x)), name="nested_prune")


def prune_refusals() -> keras.Model:
    """tests/test_prune.py's refusals, and a shared conv (called twice)."""
    i = keras.Input((8, 8, 4), name="img")
    g = L.Conv2D(4, 3, padding="same", groups=2, name="grouped")(L.Conv2D(4, 1, name="feeds_grouped")(i))
    r = L.Reshape((8, 16, 2), name="reshape")(L.Conv2D(4, 1, name="feeds_reshape")(i))
    lam = L.Lambda(lambda t: t * 2.0, name="lam")(L.Conv2D(4, 1, name="feeds_lambda")(i))
    tied = L.Add(name="tied_add")([L.Conv2D(4, 1, name="tied")(i), i])
    shared = L.Conv2D(4, 1, name="shared")
    twice = L.Add(name="twice")([shared(L.Conv2D(4, 1, name="feeds_shared")(i)), shared(i)])
    x = L.Concatenate(name="cat")([g, L.Reshape((8, 8, 4), name="back")(r), lam, tied, twice])
    out = L.Conv2D(3, 1, name="last")(x)
    return keras.Model(i, [out, L.Conv2D(2, 1, name="head")(L.Conv2D(5, 1, name="body")(i))], name="prune_refusals")


def flatten_layout(model: keras.Model, flattens: dict[str, int]) -> dict[str, list[int]]:
    """For each Flatten (name -> the channel axis of its input, batch excluded), the
    channel each output feature comes from, as Keras computes it: the input holds its
    channel index at every position."""
    found = {}
    for name, axis in flattens.items():
        layer = model.get_layer(name)
        shape = [int(d) for d in layer.input.shape[1:]]
        axis %= len(shape)
        index = np.arange(shape[axis], dtype="float32").reshape([-1 if a == axis else 1 for a in range(len(shape))])
        marks = np.broadcast_to(index, shape)[None].copy()
        found[name] = [int(v) for v in np.asarray(layer(marks))[0]]
    return found


def prune_models(folder: Path) -> None:
    model = junctions()
    write("junctions", model, folder, {"flatten": flatten_layout(model, {"flat": -1})},
          {"pruned": junctions(stem=5, abm=6, c=3, sep=4, tr=3)})
    model = channels_first_flat()
    write("channels_first_flat", model, folder, {"flatten": flatten_layout(model, {"flat": 0, "flat_cf": 0})},
          {"pruned": channels_first_flat(c1=4, ab=4, c2=3)})
    write("nested_prune", nested_prune(), folder, None,
          {"pruned": nested_prune(c1=4, iconv=5, iout=3, c2=3, sconv=2)})
    write("prune_refusals", prune_refusals(), folder)


def fold_models(folder: Path) -> None:
    write("fold_cases", fold_cases(), folder, None, {"folded": fold_cases(twin=True)})
    write("conv_kinds", conv_kinds(), folder, None, {"folded": conv_kinds(twin=True)})
    write("swap", swap(), folder, None, {"folded": swap(twin=True)})
    write("sequential_fold", sequential_fold(), folder, None, {"folded": sequential_fold(twin=True)})


def with_ops() -> keras.Model:
    """keras.ops calls in a functional graph: config entries that are operations, not
    layers (no weights, no store key), which neither fold-bn nor prune can go through."""
    img = keras.Input((8, 8, 3), name="img")
    x = keras.ops.relu(L.Conv2D(4, 3, padding="same", name="c1")(img))
    x = L.BatchNormalization(name="b2")(L.Conv2D(4, 3, padding="same", name="c2")(x))
    x = L.BatchNormalization(name="b3")(L.Conv2D(4, 1, name="c3")(keras.ops.add(x, 0.5)))
    x = L.BatchNormalization(name="b_op")(keras.ops.relu(x))
    # An op adding a constant vector to the channels: the config holds the constant.
    y = keras.ops.add(L.Conv2D(4, 1, name="c4")(img), np.arange(4, dtype="float32"))
    return keras.Model(img, [L.Conv2D(2, 1, name="head")(x), L.Conv2D(2, 1, name="c5")(y)], name="with_ops")


def keras2_configs() -> None:
    """The Keras 2 configs of the committed tf-keras fixtures, with their layer_names."""
    for name in ("keras2_convs", "keras2_tiny"):
        with h5py.File(DATA / f"{name}.h5", "r") as h5:
            text = h5.attrs["model_config"]
            config = json.loads(text.decode() if isinstance(text, bytes) else text)
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in h5["model_weights"].attrs["layer_names"]]
        dump(HERE / f"{name}.json", strip(config))
        dump(HERE / f"{name}.facts.json", {"layer_names": names})


def main() -> None:
    print("keras", keras.__version__, "backend", keras.backend.backend())
    keras.utils.set_random_seed(0)
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        steps = {"keras2": keras2_configs, "fold": lambda: fold_models(folder),
                 "ops": lambda: write("with_ops", with_ops(), folder),
                 "prune": lambda: prune_models(folder), "mixed": lambda: mixed_models(folder),
                 "applications": lambda: applications(folder),
                 "application_twins": lambda: application_twins(folder)}
        for step, run in steps.items():
            if not only or step in only:
                print(step)
                run()


if __name__ == "__main__":
    main()
