"""Benchmarks for conv-surgeon: what a user waits for, and how much memory it takes.

Run from the repository root (``make bench`` does this):

    .venv/bin/python bench/bench.py                   # every section
    .venv/bin/python bench/bench.py --only inspect    # one section (comma list allowed)
    .venv/bin/python bench/bench.py --only inspect-sharded,inspect-preset,set-sharded
    .venv/bin/python bench/bench.py --repeat 5        # more runs per case

What is measured
    Every case is one command run in a fresh child process (stdout to /dev/null,
    stderr kept only to be shown if the command fails). The wall time covers the
    whole child, from spawn to exit, interpreter and imports included: that is
    what a user waits for. The peak memory is the child's own maximum resident set
    size, read from ``os.wait4`` for that child alone (it includes any of its own
    children it waited for). Each case runs once untimed to warm the page cache,
    then ``--repeat`` times (default 3); the table shows the median time and the
    largest peak RSS.

Sections
    inspect          ``conv-surgeon inspect resnet50.keras`` versus a plain-Keras
                     script that loads the model (``keras.saving.load_model(...,
                     compile=False)``) and lists its conv layers with kernel shapes.
                     Ratio row: Keras / ours for time and memory, checked against
                     the target (ours at least 15x faster). A miss prints MISS but
                     never fails the run: timings are noisy on shared machines.
    inspect-scaling  ``conv-surgeon inspect`` on ResNet50 versus on the tiny sample
                     model, with the ratios of time, file size and layer count.
                     Time should follow the number of layers, not the bytes of
                     weights.
    set              Replace the kernel of ResNet50's ``conv1_conv`` (7, 7, 3, 64) with
                     a seeded random-normal array (``bench/.cache/conv1_conv_kernel_seed0
                     .npy``, made once). Three cases, each writing its output into the
                     cache folder (deleted after every run): (a) ``conv-surgeon set
                     --layer conv1_conv --kernel K -o OUT`` with its smoke test (the
                     default); (b) the same with ``--no-smoke``; (c) a plain-Keras script
                     doing the same job: ``load_model(compile=False)`` (the file is saved
                     uncompiled, so this changes nothing), ``set_weights([k, old_bias])``,
                     ``model.save``, ``load_model`` of the result, one forward pass on a
                     seeded (1, 224, 224, 3) input, outputs checked finite (stderr
                     silenced). Ratio rows: (a)/(c) time <= 0.8x and peak RSS <= 1.0x;
                     (b)/(c) time <= 0.15x. Misses print MISS, never fail the run; a
                     non-zero exit of any run does (its stderr is shown, exit 1).
    apply            ``conv-surgeon apply resnet50.keras PLAN -o OUT`` of a 20-layer plan
                     versus the one-layer ``set`` of case (a) above (measured once if both
                     sections run), both with the smoke test. The plan, made once into
                     ``bench/.cache/plan20/``, edits the kernels of the first 20 conv
                     layers ``conv-surgeon inspect --json`` lists: every other one from a
                     seeded random-normal ``.npy`` beside the plan (10), the rest
                     ``{"init": "he_normal"}`` (10), with ``"seed": 1``. Outputs are
                     deleted after every run. Ratio row: apply / set, time <= 1.3x
                     (peak RSS ratio shown, no target).
    diff             ``conv-surgeon diff resnet50.keras resnet50_b.keras`` (exit 1,
                     expected: the files differ) and ``diff`` of resnet50.keras against
                     itself (exit 0), versus a plain-Keras script that loads both models
                     (``load_model(compile=False)``) and compares every conv layer's
                     weights with numpy (``np.array_equal``, max abs diff), exiting 1 as
                     they differ. ``resnet50_b.keras`` is made once in the cache by
                     ``conv-surgeon set --layer conv1_conv --kernel-init zeros
                     --no-smoke``. Ratio row: Keras / ours (A vs B), no target.
    inspect-walk     ``conv-surgeon inspect resnet50.keras`` versus the least a structure
                     read can do: a bare script that opens the archive's weight store in
                     place with h5py and lists every dataset's shape and dtype (H5PY_WALK).
                     Ratio row: ours / walk, time <= 1.3x. Then ``inspect`` of
                     ``resnet50_h5py_read.keras``, the same model whose store h5py wrote
                     again with ``libver="latest"``, which conv-surgeon's pure-Python HDF5
                     reader leaves to h5py (same-listing check as below): what that reader
                     saves. And ``cs.inspect()`` of resnet50.keras in a warm process (the
                     package imported, one call made; median of 7 more), target < 50 ms.
    inspect-sharded  ``conv-surgeon inspect`` of ResNet50 saved as sharded weights (a map
                     and 5 shards) versus ``inspect`` of ``resnet50.keras``; both listings
                     (``--json``, untimed) must name the same layers and shapes. Ratio row:
                     sharded / .keras, time <= 1.2x.
    inspect-preset   ``conv-surgeon inspect`` of a keras-hub ResNet50 backbone saved with
                     ``save_to_preset`` versus the same backbone saved as one ``.keras``
                     (same-listing check as above). Ratio rows: preset / hub .keras, time
                     <= 1.2x; hub .keras / ``resnet50.keras`` (keras.applications), for
                     information.
    set-sharded      The set section's edit (``--kernel`` of ``conv1_conv``) with
                     ``--no-smoke`` on the sharded ResNet50: (a) ``-o NEW.weights.json``
                     into a fresh folder in the cache; (b) ``--in-place`` on a real copy of
                     the sharded folder (re-copied after every run); (c) set's case (b) on
                     ``resnet50.keras`` (measured once if both sections run). One further
                     untimed run of each shows what it changed: shards whose sha256 differs
                     from the source's (and, for (a), how many are hard links to the
                     source's; for (b), how many were replaced: a new inode or mtime), the
                     source left untouched, and the bytes the child wrote (its rusage
                     ``ru_oublock``: pages it dirtied, accounted on ext4/xfs, not on tmpfs)
                     next to the kernel's own size. Target: exactly one shard differs in
                     (a) and in (b) (FAIL otherwise, which never fails the run). Ratio rows:
                     (a)/(c) and (b)/(c), no target.
    prune            ``conv-surgeon prune resnet50.keras --all --smallest-l1 10%`` with its
                     output comparison (a) and with ``--no-smoke`` (b), versus a plain-Keras
                     script (c) that finds the same groups from the live graph, rebuilds the
                     model with fewer filters, copies the sliced weights, saves, reloads and
                     runs a forward pass. Ratio rows: (a)/(c) <= 0.8x, (b)/(c) <= 0.2x (MISS
                     never fails the run). Run it alone: ``bench.py --only prune``.
    equalize         ``conv-surgeon equalize mobilenetv2_bn.keras -o OUT`` with its output
                     comparison (a) and with ``--no-smoke`` (b), no other flag (ReLU6 stops
                     a pair), versus a plain-Keras script (c, KERAS_EQUALIZE) doing the same
                     job: ``load_model(compile=False)``, one forward pass of the original on a
                     seeded (1, 224, 224, 3) input, in numpy from ``get_weights``: every conv
                     -> BN folded (each BN left as an identity carrying the bias: a script
                     cannot remove layers), the pairs conv -> ReLU/linear/padding/pooling ->
                     conv or depthwise (or -> GlobalAveragePooling -> Dense) found from the
                     layers' inbound nodes and equalized in sweeps until no scale moves by
                     1e-6 (at most 200); ``set_weights``, ``model.save``, ``load_model`` of the
                     result, its forward pass, max abs difference checked. The script's
                     folds and pairs are checked against ``equalize --dry-run --json``'s
                     (untimed; FAIL in the note, which never fails the run). Ratio rows:
                     (a)/(c) <= 0.8x, (b)/(c) <= 0.15x (MISS never fails the run). Then (d)
                     ``--relu6-to-relu --no-smoke``, the paper's MobileNetV2 job, where the
                     sweeps run: its time alone, no target. Run it alone: ``bench.py --only
                     equalize``.
    port             ``conv-surgeon port resnet50.keras --from resnet50_torch.pt --no-smoke -o
                     OUT`` (a), a ResNet50-sized PyTorch state dict (keras.applications'
                     ResNet50 written in PyTorch with torchvision's module names, random
                     weights; BUILD_TORCH_RESNET50, made once; needs torch, else the
                     section says so), with ``--bn-epsilon 1.001e-5``, the model's own: the
                     weights patched, as the plain script leaves the config too; versus a
                     plain script (b): ``torch.load``, a hand-written name table and loop of
                     ``set_weights`` (transposing kernels), ``model.save`` (KERAS_PORT).
                     Ratio row: (a)/(b) time <= 0.3x. Checked against PyTorch: (c) ``port
                     --reference resnet50_twin.py:build --expect-same`` (the smoke test, then
                     the PyTorch twin of keras.applications.ResNet50, TORCH_RESNET50, with the
                     state dict loaded, on the same seeded input), versus (d): the plain
                     script (b) plus the twin built, the state loaded and one forward pass.
                     Ratio row: (c)/(d) time <= 1.2x (MISS never fails the run); and (e), port
                     with its smoke test but no reference: (c)-(e) is what the reference
                     costs. Run it alone: ``bench.py --only port``.
    show             ``conv-surgeon show resnet50.keras --layer conv1_conv -o X.png`` (the
                     64-tile RGB filter grid) versus ``inspect resnet50.keras``, and ``show
                     --all --hist -o X.png`` (histograms of every conv variable, a row per
                     layer) versus ``inspect --stats``; the picture is written into the cache
                     and deleted after every run. Ratio rows: show / inspect time <= 1.5x;
                     show --all --hist / inspect --stats time <= 2x (MISS never fails the
                     run). Run it alone: ``bench.py --only show``.

    onednn           ResNet50's forward pass (batch 1 and 32 at 224x224, median of 10 after
                     one warm-up, the load not timed) in a child with
                     ``TF_ENABLE_ONEDNN_OPTS=0``, as the smoke test runs it, and in one
                     with ``=1``. Ratio rows: off / on, the cost of a check that does not
                     trust TensorFlow's oneDNN CPU kernels (no target).

Models
    ResNet50 (``keras.applications.ResNet50(weights=None)``) is built once, in a
    child process, into ``bench/.cache/resnet50.keras`` (git-ignored) and reused.
    ``bench/.cache/resnet50_h5py_read.keras`` is that archive with its weight store
    copied by h5py into a ``libver="latest"`` file (BUILD_H5PY_READ; Keras loads it).
    ``bench/.cache/resnet50_sharded/`` holds the same model's weights (loaded from
    resnet50.keras) saved with ``save_weights(..., max_shard_size=0.022)`` (GiB: 5
    shards). ``bench/.cache/resnet50_hub/`` holds one random-weight
    ``keras_hub.models.ResNetBackbone`` with ResNet50's arguments (HUB_RESNET50_ARGS;
    nothing downloaded, no ``from_preset``), saved as ``resnet50_hub.keras`` and with
    ``save_to_preset`` into ``preset/``. Each folder is built aside and renamed into place.
    ``bench/.cache/mobilenetv2_bn.keras`` is ``keras.applications.MobileNetV2(weights=None,
    input_shape=(224, 224, 3))``, seeded, with random statistics in every BatchNormalization
    (BUILD_MOBILENETV2_BN: variances e^uniform(-4, 2) per channel, gamma uniform(0.2, 2), 5%
    of them negative, beta and moving mean normal(0, 0.5)).
    The tiny model is ``sample_models/tiny_cnn.keras``; if that file is missing a
    similar tiny CNN is built into the cache instead.

Child processes inherit this environment plus ``TF_CPP_MIN_LOG_LEVEL=3``. The
``conv_surgeon`` package is byte-compiled first (``compileall``, as ``pip install``
does): with ``PYTHONDONTWRITEBYTECODE`` set, as on some machines, every run would
otherwise compile the package's sources again (about 35 ms of an ``inspect`` here),
which no installed copy does and which h5py, rich and Keras, compiled at install, never
pay. The benchmark itself never imports TensorFlow. Exit status: 0 (misses included),
1 if a benchmarked or set-up command fails (exits with a status other than
the expected one: 0, or 1 for ``diff`` of differing models), 2 on bad arguments.

Adding a section: write ``def bench_NAME(ctx: Context) -> list[Row]`` and
register it in ``SECTIONS``; use ``ctx.measure(...)`` so a case shared by two
sections is measured once per run.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
PYTHON = sys.executable
BIN = Path(PYTHON).parent
CLI = str(BIN / "conv-surgeon")
SAMPLE_TINY = ROOT / "sample_models" / "tiny_cnn.keras"

CHILD_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
DEFAULT_REPEAT = 3
INSPECT_SPEEDUP_TARGET = 20.0
SET_LAYER = "conv1_conv"  # ResNet50's first conv: kernel (7, 7, 3, 64), with a bias
SET_KERNEL_SHAPE = (7, 7, 3, 64)
SET_SEED = 0
SET_SMOKE_TIME_TARGET = 0.8  # (a)/(c): conv-surgeon set (smoke test on) vs plain Keras
SET_NO_SMOKE_TIME_TARGET = 0.08  # (b)/(c): conv-surgeon set --no-smoke vs plain Keras
SET_SMOKE_MEMORY_TARGET = 1.0  # (a)/(c): peak RSS
APPLY_LAYERS = 20  # the first 20 conv layers of ResNet50, as `inspect --json` lists them
APPLY_SEED = 1  # the plan's "seed" (its initializers) and the seed of its .npy kernels
APPLY_INIT = "he_normal"
APPLY_TIME_TARGET = 1.3  # apply (20 layers) / set (1 layer), both with the smoke test
SET_KERNEL_BYTES = math.prod(SET_KERNEL_SHAPE) * 4  # float32, as MAKE_KERNEL writes it
SHARD_GB = 0.022  # save_weights(max_shard_size=...), in GiB: ResNet50 in 5 shards of <= 23.6 MB
WALK_INSPECT_TARGET = 1.3  # conv-surgeon inspect / a bare h5py walk of the same store
API_INSPECT_WARM_MS_TARGET = 50.0  # cs.inspect() of ResNet50 in a warm process
FOLD_TIME_TARGET = 0.8  # conv-surgeon fold-bn (outputs compared) / the plain-Keras script
FOLD_NO_SMOKE_TIME_TARGET = 0.15  # conv-surgeon fold-bn --no-smoke / the plain-Keras script
EQUALIZE_TIME_TARGET = 0.8  # conv-surgeon equalize (outputs compared) / the plain-Keras script
EQUALIZE_NO_SMOKE_TIME_TARGET = 0.15  # conv-surgeon equalize --no-smoke / the plain-Keras script
PRUNE_TIME_TARGET = 0.8  # conv-surgeon prune --all --smallest-l1 10% (outputs compared) / plain Keras
PRUNE_NO_SMOKE_TIME_TARGET = 0.2  # the same with --no-smoke / the plain-Keras script
SHARDED_INSPECT_TARGET = 1.2  # inspect of the sharded weights / inspect of the .keras
SHOW_GRID_TARGET = 1.5  # show --layer conv1_conv -o X.png / inspect, same file
SHOW_HIST_TARGET = 2.0  # show --all --hist -o X.png / inspect --stats, same file
PRESET_INSPECT_TARGET = 1.2  # inspect of the keras-hub preset / inspect of its .keras
PORT_NO_SMOKE_TIME_TARGET = 0.3  # conv-surgeon port --no-smoke / torch.load + set_weights loop + save
PORT_REFERENCE_TIME_TARGET = 1.2  # port --reference / the same plain script with one torch forward pass
# keras_hub.models.ResNetBackbone arguments of ResNet50: keras-hub 0.32 ships no config for
# its presets (resnet_presets.py only names Kaggle handles); these are the ones its timm
# converter (keras_hub/src/utils/timm/convert_resnet.py) builds for "resnet50". The build
# checks the parameter count against resnet_presets.py's "resnet_50_imagenet" metadata.
HUB_RESNET50_ARGS = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64, 128, 256, 512],
    "stackwise_num_blocks": [3, 4, 6, 3],
    "stackwise_num_strides": [1, 2, 2, 2],
    "block_type": "bottleneck_block",
    "use_pre_activation": False,
}
HUB_RESNET50_PARAMS = 23_561_152


# --------------------------------------------------------------------------- measuring


class Measurement(NamedTuple):
    median_s: float
    max_rss_mb: float


class CommandFailed(Exception):
    def __init__(self, cmd: list[str], code: int, stderr: str) -> None:
        shown = ["<script>" if i and cmd[i - 1] == "-c" else arg for i, arg in enumerate(cmd)]
        super().__init__(f"command failed with exit status {code}: {' '.join(shown)}")
        self.cmd, self.code, self.stderr = cmd, code, stderr


def run_child(cmd: list[str], ok_codes: tuple[int, ...] = (0,)
              ) -> tuple[float, resource.struct_rusage]:
    """Run cmd in a fresh child; return (wall seconds, the child's own rusage).

    An exit status outside ok_codes raises CommandFailed (e.g. ``diff`` exits 1
    when the models differ: pass ``ok_codes=(1,)`` or ``(0, 1)`` for it).

    The child is reaped with os.wait4, whose rusage belongs to that child only
    (RUSAGE_CHILDREN of this process would be a running maximum over all children
    so far, useless once a bigger one has run).
    """
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=CHILD_ENV, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped: tell Popen
        if code not in ok_codes:
            err.seek(0)
            raise CommandFailed(cmd, code, err.read().decode("utf-8", "replace"))
    return elapsed, usage


def run_once(cmd: list[str], ok_codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Run cmd in a fresh child; return (wall seconds, the child's peak RSS in MB)."""
    elapsed, usage = run_child(cmd, ok_codes)
    return elapsed, usage.ru_maxrss / 1024.0  # Linux reports KiB


def measure(cmd: list[str], repeat: int = DEFAULT_REPEAT, warmup: int = 1,
            after: Callable[[], None] | None = None,
            ok_codes: tuple[int, ...] = (0,)) -> Measurement:
    """Median wall time and largest peak RSS of `repeat` fresh runs of cmd.

    Any exit status outside `ok_codes` fails the run (CommandFailed).

    `after`, if given, runs after every run (warm-up included, failed ones too),
    outside the timing: e.g. to delete what the command wrote.
    """
    def one() -> tuple[float, float]:
        try:
            return run_once(cmd, ok_codes)
        finally:
            if after is not None:
                after()

    for _ in range(warmup):
        one()
    runs = [one() for _ in range(repeat)]
    return Measurement(statistics.median(t for t, _ in runs), max(m for _, m in runs))


@dataclass
class Context:
    repeat: int
    _memo: dict[tuple[str, ...], Measurement] = field(default_factory=dict)

    def measure(self, cmd: list[str], after: Callable[[], None] | None = None,
                ok_codes: tuple[int, ...] = (0,)) -> Measurement:
        key = tuple(cmd)
        if key not in self._memo:
            self._memo[key] = measure(cmd, self.repeat, after=after, ok_codes=ok_codes)
        return self._memo[key]


# --------------------------------------------------------------------------- models

BUILD_RESNET50 = """
import sys, keras
keras.applications.ResNet50(weights=None).save(sys.argv[1])
"""

BUILD_TINY = """
import sys, keras
from keras import layers
keras.utils.set_random_seed(0)
keras.Sequential([
    keras.Input((28, 28, 1), name="image"),
    layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
    layers.Conv2D(8, 3, activation="relu", name="conv2"),
    layers.MaxPooling2D(2, name="pool"),
    layers.Conv2D(8, 3, padding="same", activation="relu", name="conv3"),
    layers.GlobalAveragePooling2D(name="gap"),
    layers.Dense(10, activation="softmax", name="head"),
], name="tiny_cnn").save(sys.argv[1])
"""


def _build_cached(name: str, script: str, *args: str) -> Path:
    """CACHE/name, made once by ``script TMP *args`` and renamed into place."""
    path = CACHE / name
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{name}.partial.keras"  # Keras insists on the .keras suffix
    print(f"building {path.relative_to(ROOT)} (once) ...", flush=True)
    start = time.perf_counter()
    run_once([PYTHON, "-c", script, str(tmp), *args])
    tmp.replace(path)  # atomic: an interrupted build never leaves a half file behind
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def resnet50() -> Path:
    return _build_cached("resnet50.keras", BUILD_RESNET50)


# ResNet50 with random, non-trivial statistics in every BatchNormalization (fold-bn).
BUILD_RESNET50_BN = """
import sys, keras, numpy as np
rng = np.random.default_rng(0)
model = keras.applications.ResNet50(weights=None)
for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        g, b, m, v = (np.asarray(w) for w in layer.weights)
        layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.5, b.shape),
                           rng.normal(0, 0.5, m.shape), rng.uniform(0.3, 3.0, v.shape)])
model.save(sys.argv[1])
"""


def resnet50_bn() -> Path:
    return _build_cached("resnet50_bn.keras", BUILD_RESNET50_BN)


# MobileNetV2 with random statistics in every BatchNormalization, variances spread over
# e^6 (about 400x), as trained BNs have them: the folded channels' ranges then differ by
# orders of magnitude, which is what equalize evens out (equalize). Wider (e^-6..e^3) makes
# this random net amplify the float32 rounding of folded weights past fold-bn's own check
# (6.9e-5 of 0.38 where 1.8e-5 is allowed); a trained net is far better conditioned.
BUILD_MOBILENETV2_BN = """
import os, sys
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # TensorFlow's oneDNN CPU kernels are wrong on some CPUs here
import keras, numpy as np
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        n = layer.gamma.shape[0]
        sign = np.where(rng.uniform(size=n) < 0.05, -1.0, 1.0)  # a few negative gammas
        layer.set_weights([sign * rng.uniform(0.2, 2.0, n), rng.normal(0, 0.5, n),
                           rng.normal(0, 0.5, n), np.exp(rng.uniform(-4, 2, n))])
model.save(sys.argv[1])
"""


def mobilenetv2_bn() -> Path:
    return _build_cached("mobilenetv2_bn.keras", BUILD_MOBILENETV2_BN)


# resnet50.keras with its weight store written again by h5py with libver="latest"
# (every group, dataset and attribute copied; the other members as they are): HDF5
# that conv-surgeon's pure-Python reader leaves to h5py. argv: target, source.
BUILD_H5PY_READ = """
import io, sys, zipfile, h5py
target, source = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(source) as old:
    store = io.BytesIO()
    with h5py.File(io.BytesIO(old.read("model.weights.h5")), "r") as a, \\
            h5py.File(store, "w", libver="latest") as b:
        def copy(name, obj):
            made = b.require_group(name) if isinstance(obj, h5py.Group) else b.create_dataset(name, data=obj[()])
            for key, value in obj.attrs.items():
                made.attrs[key] = value
        a.visititems(copy)
    with zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, store.getvalue() if info.filename == "model.weights.h5" else old.read(info))
"""


def resnet50_h5py_read() -> Path:
    """resnet50.keras with a store only h5py reads (BUILD_H5PY_READ), made once."""
    return _build_cached("resnet50_h5py_read.keras", BUILD_H5PY_READ, str(resnet50()))


def _build_cached_folder(name: str, script: str, *args: str) -> Path:
    """CACHE/name, made once by ``script FOLDER *args`` aside and renamed into place."""
    folder = CACHE / name
    if folder.exists():
        return folder
    tmp = CACHE / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted earlier build
    tmp.mkdir(parents=True)
    print(f"building {rel(folder)}/ (once) ...", flush=True)
    start = time.perf_counter()
    run_once([PYTHON, "-c", script, str(tmp), *args])
    tmp.rename(folder)
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return folder


# The same ResNet50 as resnet50.keras (its weights loaded), saved as sharded weights.
BUILD_RESNET50_SHARDED = """
import sys, keras
folder, source, shard_gb = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = keras.saving.load_model(source, compile=False)
model.save_weights(f"{folder}/resnet50.weights.json", max_shard_size=shard_gb)
"""


def resnet50_sharded() -> Path:
    """The map of resnet50.keras saved as weights in shards of SHARD_GB, made once."""
    folder = _build_cached_folder("resnet50_sharded", BUILD_RESNET50_SHARDED,
                                  str(resnet50()), str(SHARD_GB))
    return folder / "resnet50.weights.json"


def shard_files(weights_map: Path) -> list[Path]:
    """The shard files a sharded-weights map names, in file-name order."""
    names = {name for shards in json.loads(weights_map.read_text())["weight_map"].values()
             for name in shards}
    return [weights_map.parent / name for name in sorted(names)]


# One random-weight keras-hub ResNet50 backbone, saved both ways. argv: folder,
# constructor arguments (JSON), expected parameter count.
BUILD_RESNET50_HUB = """
import json, sys, keras_hub
folder, kwargs, params = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
backbone = keras_hub.models.ResNetBackbone(**kwargs)
if backbone.count_params() != params:
    sys.exit(f"ResNetBackbone has {backbone.count_params()} parameters, expected {params}")
backbone.save(f"{folder}/resnet50_hub.keras")
backbone.save_to_preset(f"{folder}/preset")
"""


def resnet50_hub() -> tuple[Path, Path]:
    """(backbone .keras, preset folder) of one keras-hub ResNet50 backbone, made once."""
    folder = _build_cached_folder("resnet50_hub", BUILD_RESNET50_HUB,
                                  json.dumps(HUB_RESNET50_ARGS), str(HUB_RESNET50_PARAMS))
    return folder / "resnet50_hub.keras", folder / "preset"


def tiny_model() -> Path:
    if SAMPLE_TINY.exists():
        return SAMPLE_TINY
    print(f"note: {SAMPLE_TINY.relative_to(ROOT)} not found; using a built fallback", flush=True)
    return _build_cached("tiny_cnn.keras", BUILD_TINY)


MAKE_KERNEL = """
import sys, numpy as np
shape, seed = tuple(int(d) for d in sys.argv[2].split(",")), int(sys.argv[3])
np.save(sys.argv[1], np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
"""


def set_kernel() -> Path:
    """The replacement kernel for SET_LAYER: seeded random normal, float32, made once."""
    path = CACHE / f"{SET_LAYER}_kernel_seed{SET_SEED}.npy"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{path.stem}.partial.npy"  # np.save would append .npy otherwise
    run_once([PYTHON, "-c", MAKE_KERNEL, str(tmp), ",".join(map(str, SET_KERNEL_SHAPE)),
              str(SET_SEED)])
    tmp.replace(path)
    return path


def count_layers(path: Path) -> int:
    """Layers in a .keras archive's config.json, nested models' layers included."""
    with zipfile.ZipFile(path) as zf:
        config = json.loads(zf.read("config.json"))

    def walk(entry: dict) -> int:
        layers = entry.get("config", {}).get("layers")
        if not isinstance(layers, list):
            return 1
        return sum(walk(child) for child in layers)

    return walk(config)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- sections

# What both plain-Keras scripts need: the conv classes, and every layer of a model.
KERAS_CONVS_PRELUDE = """
from keras import layers as L
CONV = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose,
        L.Conv3DTranspose, L.DepthwiseConv1D, L.DepthwiseConv2D,
        L.SeparableConv1D, L.SeparableConv2D)
def walk(layer):
    for child in getattr(layer, "layers", []):
        yield child
        yield from walk(child)
"""

# The plain-Keras way a user would answer "which convs, which shapes" today.
KERAS_LIST_CONVS = """
import sys, keras
""" + KERAS_CONVS_PRELUDE + """
model = keras.saving.load_model(sys.argv[1], compile=False)
found = 0
for layer in walk(model):
    if isinstance(layer, CONV):
        found += 1
        shapes = [tuple(v.shape) for v in layer.weights if "kernel" in v.path]
        print(layer.name, *shapes)
sys.exit(0 if found else 3)  # listing nothing means the script is broken
"""

Row = tuple[str, str, str, str, str]  # section, case, time, memory, note


def bench_inspect(ctx: Context) -> list[Row]:
    model = resnet50()
    ours = ctx.measure([CLI, "inspect", str(model)])
    keras_ = ctx.measure([PYTHON, "-c", KERAS_LIST_CONVS, str(model)])
    t_ratio = keras_.median_s / ours.median_s
    m_ratio = keras_.max_rss_mb / ours.max_rss_mb
    verdict = "PASS" if t_ratio >= INSPECT_SPEEDUP_TARGET else "MISS"
    return [
        ("inspect", "conv-surgeon inspect", f"{ours.median_s:.2f}", f"{ours.max_rss_mb:.0f}",
         f"{model.name}"),
        ("inspect", "keras load + list", f"{keras_.median_s:.2f}", f"{keras_.max_rss_mb:.0f}",
         "load_model(compile=False)"),
        ("inspect", "ratio (keras/ours)", f"{t_ratio:.1f}x", f"{m_ratio:.1f}x",
         f"target >= {INSPECT_SPEEDUP_TARGET:g}x: {verdict}"),
    ]


def bench_inspect_scaling(ctx: Context) -> list[Row]:
    big, small = resnet50(), tiny_model()
    m_big = ctx.measure([CLI, "inspect", str(big)])
    m_small = ctx.measure([CLI, "inspect", str(small)])
    size_ratio = big.stat().st_size / small.stat().st_size
    n_big, n_small = count_layers(big), count_layers(small)
    s = "inspect-scaling"
    return [
        (s, f"inspect {small.name}", f"{m_small.median_s:.2f}", f"{m_small.max_rss_mb:.0f}",
         f"{n_small} layers, {small.stat().st_size / 1e6:.2f} MB"),
        (s, f"inspect {big.name}", f"{m_big.median_s:.2f}", f"{m_big.max_rss_mb:.0f}",
         f"{n_big} layers, {big.stat().st_size / 1e6:.1f} MB"),
        (s, "ratio (resnet50/tiny)", f"{m_big.median_s / m_small.median_s:.2f}x",
         f"{m_big.max_rss_mb / m_small.max_rss_mb:.2f}x",
         f"layers {n_big / n_small:.0f}x, file size {size_ratio:.0f}x"),
    ]


# The plain-Keras way to do what `conv-surgeon set` does, smoke test included.
# stderr (fd 2: TensorFlow's C++ logs) goes to /dev/null; a failure's traceback is
# written to the original stderr so the benchmark can still show it.
KERAS_SET_KERNEL = """
import os, sys, traceback
saved = os.dup(2)
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 2)
try:
    import numpy as np, keras
    src, layer_name, kernel_path, out = sys.argv[1:5]
    model = keras.saving.load_model(src, compile=False)
    layer = model.get_layer(layer_name)
    kernel = np.load(kernel_path)
    old_kernel, old_bias = layer.get_weights()
    assert kernel.shape == old_kernel.shape, (kernel.shape, old_kernel.shape)
    layer.set_weights([kernel, old_bias])
    model.save(out)
    reloaded = keras.saving.load_model(out, compile=False)
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    y = keras.ops.convert_to_numpy(reloaded(x, training=False))
    status = 0 if np.isfinite(y).all() else 3  # 3: the output holds NaN or Inf
except BaseException:
    os.write(saved, traceback.format_exc().encode())
    status = 1
sys.exit(status)  # a normal exit, as a user's script would; fd 2 stays silenced
"""


def _remover(path: Path) -> Callable[[], None]:
    """Delete path and any staging file written beside it (``.NAME.*``)."""
    def remove() -> None:
        for leftover in [path, *path.parent.glob(f".{path.name}.*")]:
            leftover.unlink(missing_ok=True)
    return remove


def _set_base_cmd() -> list[str]:
    return [CLI, "set", str(resnet50()), "--layer", SET_LAYER, "--kernel", str(set_kernel())]


def _set_outs() -> dict[str, Path]:
    return {case: CACHE / f"set-{case}.out.keras" for case in ("a", "b", "c")}


def measure_set_smoke(ctx: Context) -> Measurement:
    """Case (a) of the set section; the apply section compares against it too."""
    out = _set_outs()["a"]
    try:
        return ctx.measure([*_set_base_cmd(), "-o", str(out)], after=_remover(out))
    finally:
        _remover(out)()


def _set_no_smoke_cmd() -> list[str]:
    return [*_set_base_cmd(), "--no-smoke", "-o", str(_set_outs()["b"])]


def measure_set_no_smoke(ctx: Context) -> Measurement:
    """Case (b) of the set section; the set-sharded section compares against it too."""
    out = _set_outs()["b"]
    try:
        return ctx.measure(_set_no_smoke_cmd(), after=_remover(out))
    finally:
        _remover(out)()


def bench_set(ctx: Context) -> list[Row]:
    model, kernel = resnet50(), set_kernel()
    outs = _set_outs()
    try:
        a = measure_set_smoke(ctx)
        b = measure_set_no_smoke(ctx)
        c = ctx.measure([PYTHON, "-c", KERAS_SET_KERNEL, str(model), SET_LAYER, str(kernel),
                         str(outs["c"])], after=_remover(outs["c"]))
    finally:  # e.g. after Ctrl-C mid-run
        for out in outs.values():
            _remover(out)()

    def verdict(ratio: float, target: float) -> str:
        return f"target <= {target:g}x: {'PASS' if ratio <= target else 'MISS'}"

    a_t, b_t, a_m = a.median_s / c.median_s, b.median_s / c.median_s, a.max_rss_mb / c.max_rss_mb
    shape = "x".join(map(str, SET_KERNEL_SHAPE))
    return [
        ("set", "(a) conv-surgeon set", f"{a.median_s:.2f}", f"{a.max_rss_mb:.0f}",
         f"{SET_LAYER} kernel {shape}, smoke test on"),
        ("set", "(b) conv-surgeon set --no-smoke", f"{b.median_s:.2f}", f"{b.max_rss_mb:.0f}",
         "no Keras import"),
        ("set", "(c) keras set_weights+save+check", f"{c.median_s:.2f}", f"{c.max_rss_mb:.0f}",
         "load_model(compile=False), save, reload, 1 forward pass"),
        ("set", "ratio (a)/(c) time", f"{a_t:.2f}x", "", verdict(a_t, SET_SMOKE_TIME_TARGET)),
        ("set", "ratio (b)/(c) time", f"{b_t:.2f}x", "", verdict(b_t, SET_NO_SMOKE_TIME_TARGET)),
        ("set", "ratio (a)/(c) memory", "", f"{a_m:.2f}x", verdict(a_m, SET_SMOKE_MEMORY_TARGET)),
    ]


def inspect_json(model: Path) -> dict:
    """What ``conv-surgeon inspect MODEL --json`` prints, parsed (untimed)."""
    cmd = [CLI, "inspect", str(model), "--json"]
    proc = subprocess.run(cmd, check=False, capture_output=True, env=CHILD_ENV, cwd=ROOT,
                          text=True)
    if proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, proc.stderr)
    return json.loads(proc.stdout)


# Writes the apply section's plan into a folder: one seeded random-normal kernel
# per .npy edit (k_LAYER.npy), then plan.json. argv: folder, JSON spec.
MAKE_PLAN = """
import json, sys, numpy as np
folder, spec = sys.argv[1], json.loads(sys.argv[2])
rng = np.random.default_rng(spec["seed"])
edits = []
for i, (path, shape) in enumerate(spec["layers"]):
    if i % 2 == 0:
        name = "k_" + path.replace("/", "__") + ".npy"
        np.save(f"{folder}/{name}", rng.standard_normal(shape).astype(np.float32))
        kernel = name
    else:
        kernel = {"init": spec["init"]}
    edits.append({"layer": path, "weights": {"kernel": kernel}})
with open(f"{folder}/plan.json", "w") as f:
    json.dump({"seed": spec["seed"], "edits": edits}, f, indent=2)
"""


def apply_plan() -> Path:
    """A plan editing the kernels of ResNet50's first APPLY_LAYERS conv layers, made once.

    Layers come from ``conv-surgeon inspect --json`` in inspect order; even ones get a
    seeded random-normal .npy kernel (relative path, beside the plan), odd ones the
    APPLY_INIT initializer. The folder is built aside and renamed into place.
    """
    folder = CACHE / f"plan{APPLY_LAYERS}"
    plan = folder / "plan.json"
    if plan.exists():
        return plan
    print(f"building {rel(plan)} (once) ...", flush=True)
    layers = [(entry["path"], entry["weights"]["kernel"]["shape"])
              for entry in inspect_json(resnet50())["layers"] if "kernel" in entry["weights"]]
    if len(layers) < APPLY_LAYERS:
        raise CommandFailed([CLI, "inspect", str(resnet50()), "--json"], 0,
                            f"only {len(layers)} layers with a kernel listed")
    spec = {"seed": APPLY_SEED, "init": APPLY_INIT, "layers": layers[:APPLY_LAYERS]}
    tmp = CACHE / f".{folder.name}.partial"
    if tmp.exists():
        for leftover in tmp.iterdir():
            leftover.unlink()
    tmp.mkdir(parents=True, exist_ok=True)
    run_once([PYTHON, "-c", MAKE_PLAN, str(tmp), json.dumps(spec)])
    if folder.exists():  # a plan folder without plan.json: an older interrupted build
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()
    tmp.rename(folder)
    return plan


def bench_apply(ctx: Context) -> list[Row]:
    model, plan = resnet50(), apply_plan()
    out = CACHE / "apply.out.keras"
    try:
        ours = ctx.measure([CLI, "apply", str(model), str(plan), "-o", str(out)],
                           after=_remover(out))
    finally:
        _remover(out)()
    one = measure_set_smoke(ctx)
    t_ratio, m_ratio = ours.median_s / one.median_s, ours.max_rss_mb / one.max_rss_mb
    n_npy = (APPLY_LAYERS + 1) // 2
    verdict = "PASS" if t_ratio <= APPLY_TIME_TARGET else "MISS"
    return [
        ("apply", f"conv-surgeon apply ({APPLY_LAYERS} layers)", f"{ours.median_s:.2f}",
         f"{ours.max_rss_mb:.0f}",
         f"{n_npy} .npy + {APPLY_LAYERS - n_npy} {APPLY_INIT} kernels, smoke test on"),
        ("apply", "conv-surgeon set (1 layer)", f"{one.median_s:.2f}", f"{one.max_rss_mb:.0f}",
         f"{SET_LAYER} kernel .npy, smoke test on (= set (a))"),
        ("apply", "ratio apply/set", f"{t_ratio:.2f}x", f"{m_ratio:.2f}x",
         f"time target <= {APPLY_TIME_TARGET:g}x: {verdict}"),
    ]


def resnet50_b() -> Path:
    """ResNet50 with conv1_conv's kernel zeroed (``set --kernel-init zeros``), made once."""
    path = CACHE / "resnet50_b.keras"
    if path.exists():
        return path
    tmp = CACHE / ".resnet50_b.partial.keras"
    print(f"building {rel(path)} (once) ...", flush=True)
    run_once([CLI, "set", str(resnet50()), "--layer", SET_LAYER, "--kernel-init", "zeros",
              "--no-smoke", "-o", str(tmp)])
    tmp.replace(path)
    return path


# The plain-Keras way to compare the conv weights of two models. Exit status as
# `conv-surgeon diff`: 0 identical, 1 different, 2 the models' conv layers differ.
KERAS_DIFF = """
import sys
import numpy as np, keras
""" + KERAS_CONVS_PRELUDE + """
def convs(path):
    model = keras.saving.load_model(path, compile=False)
    return {layer.path: layer for layer in walk(model) if isinstance(layer, CONV)}
a, b = convs(sys.argv[1]), convs(sys.argv[2])
if not a or a.keys() != b.keys():
    sys.exit(2)
differ = 0
for name, layer in a.items():
    pairs = zip(layer.get_weights(), b[name].get_weights())
    changed = [float(np.abs(x - y).max()) for x, y in pairs if not np.array_equal(x, y)]
    if changed:
        differ += 1
        print(name, "max |a-b|", max(changed))
print(f"{differ} of {len(a)} conv layers differ")
sys.exit(1 if differ else 0)
"""


def bench_diff(ctx: Context) -> list[Row]:
    a, b = resnet50(), resnet50_b()
    # diff exits 1 when the models differ (as diff(1)): that is the expected outcome here.
    ours = ctx.measure([CLI, "diff", str(a), str(b)], ok_codes=(1,))
    same = ctx.measure([CLI, "diff", str(a), str(a)])
    keras_ = ctx.measure([PYTHON, "-c", KERAS_DIFF, str(a), str(b)], ok_codes=(1,))
    t_ratio, m_ratio = keras_.median_s / ours.median_s, keras_.max_rss_mb / ours.max_rss_mb
    return [
        ("diff", "conv-surgeon diff A B", f"{ours.median_s:.2f}", f"{ours.max_rss_mb:.0f}",
         f"{b.name}: {SET_LAYER} kernel zeroed, exit 1"),
        ("diff", "conv-surgeon diff A A", f"{same.median_s:.2f}", f"{same.max_rss_mb:.0f}",
         "identical, exit 0"),
        ("diff", "keras load both + compare", f"{keras_.median_s:.2f}",
         f"{keras_.max_rss_mb:.0f}", "A B: load_model(compile=False) x2, np.array_equal"),
        ("diff", "ratio (keras/ours) A B", f"{t_ratio:.1f}x", f"{m_ratio:.1f}x", "no target"),
    ]


def _same_layers(a: Path, b: Path) -> bool:
    """Whether ``inspect --json`` lists the same layer paths and variable shapes for both."""
    def listing(model: Path) -> list[tuple[str, dict[str, list[int]]]]:
        return [(entry["path"], {name: var["shape"] for name, var in entry["weights"].items()})
                for entry in inspect_json(model)["layers"]]
    return listing(a) == listing(b)


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def bench_inspect_sharded(ctx: Context) -> list[Row]:
    single, sharded = resnet50(), resnet50_sharded()
    shards = shard_files(sharded)
    ours = ctx.measure([CLI, "inspect", str(sharded)])
    base = ctx.measure([CLI, "inspect", str(single)])
    t_ratio, m_ratio = ours.median_s / base.median_s, ours.max_rss_mb / base.max_rss_mb
    same = "same layers" if _same_layers(sharded, single) else "LAYERS DIFFER from .keras"
    verdict = "PASS" if t_ratio <= SHARDED_INSPECT_TARGET else "MISS"
    s = "inspect-sharded"
    return [
        (s, "inspect sharded weights", f"{ours.median_s:.2f}", f"{ours.max_rss_mb:.0f}",
         f"{sharded.name} + {len(shards)} shards, "
         f"{_folder_size(sharded.parent) / 1e6:.1f} MB; {same}"),
        (s, "inspect .keras", f"{base.median_s:.2f}", f"{base.max_rss_mb:.0f}",
         f"{single.name}, {single.stat().st_size / 1e6:.1f} MB (= inspect section)"),
        (s, "ratio (sharded/.keras)", f"{t_ratio:.2f}x", f"{m_ratio:.2f}x",
         f"time target <= {SHARDED_INSPECT_TARGET:g}x: {verdict}"),
    ]


def bench_inspect_preset(ctx: Context) -> list[Row]:
    hub_keras, preset = resnet50_hub()
    apps_keras = resnet50()
    ours = ctx.measure([CLI, "inspect", str(preset)])
    hub = ctx.measure([CLI, "inspect", str(hub_keras)])
    apps = ctx.measure([CLI, "inspect", str(apps_keras)])
    t_ratio, m_ratio = ours.median_s / hub.median_s, ours.max_rss_mb / hub.max_rss_mb
    same = "same layers" if _same_layers(preset, hub_keras) else "LAYERS DIFFER from .keras"
    verdict = "PASS" if t_ratio <= PRESET_INSPECT_TARGET else "MISS"
    s = "inspect-preset"
    return [
        (s, "inspect keras-hub preset", f"{ours.median_s:.2f}", f"{ours.max_rss_mb:.0f}",
         f"ResNetBackbone save_to_preset, {_folder_size(preset) / 1e6:.1f} MB; {same}"),
        (s, "inspect keras-hub .keras", f"{hub.median_s:.2f}", f"{hub.max_rss_mb:.0f}",
         f"the same backbone, {hub_keras.stat().st_size / 1e6:.1f} MB"),
        (s, "inspect applications .keras", f"{apps.median_s:.2f}", f"{apps.max_rss_mb:.0f}",
         f"keras.applications.ResNet50 {apps_keras.name} (= inspect section)"),
        (s, "ratio (preset/hub .keras)", f"{t_ratio:.2f}x", f"{m_ratio:.2f}x",
         f"time target <= {PRESET_INSPECT_TARGET:g}x: {verdict}"),
        (s, "ratio (hub/applications .keras)", f"{hub.median_s / apps.median_s:.2f}x",
         f"{hub.max_rss_mb / apps.max_rss_mb:.2f}x", "for information, no target"),
    ]


class FileState(NamedTuple):
    inode: int
    mtime_ns: int
    sha256: str


def file_states(paths: list[Path]) -> dict[str, FileState]:
    def state(path: Path) -> FileState:
        st = path.stat()
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return FileState(st.st_ino, st.st_mtime_ns, digest)
    return {path.name: state(path) for path in paths}


def _fresh_folder(folder: Path, copy_of: Path | None = None) -> Callable[[], None]:
    """A callable that makes folder empty, or a real copy of the folder copy_of."""
    def reset() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if copy_of is None:
            folder.mkdir(parents=True)
        else:  # copied, not hard-linked: an in-place edit must never reach the cache
            shutil.copytree(copy_of, folder)
    return reset


def _written(usage: resource.struct_rusage) -> str:
    """Bytes the child wrote to files, from its rusage (dirtied pages, on ext4/xfs)."""
    written = usage.ru_oublock * 512
    return f"wrote {written / 1e6:.1f} MB" if written else "writes not accounted"


def bench_set_sharded(ctx: Context) -> list[Row]:
    source, kernel = resnet50_sharded(), set_kernel()
    source_shards = shard_files(source)
    fresh = CACHE / "set-sharded-o"  # (a) writes its new map and shards in here
    new_map = fresh / "resnet50_edit.weights.json"
    copy = CACHE / "set-sharded-in-place"  # (b) edits a real copy of the cached folder
    copy_map = copy / source.name
    edit = ["--layer", SET_LAYER, "--kernel", str(kernel), "--no-smoke"]
    cmd_a = [CLI, "set", str(source), *edit, "-o", str(new_map)]
    cmd_b = [CLI, "set", str(copy_map), *edit, "--in-place"]
    reset_a, reset_b = _fresh_folder(fresh), _fresh_folder(copy, copy_of=source.parent)
    try:
        reset_a()
        a = ctx.measure(cmd_a, after=reset_a)
        reset_b()
        b = ctx.measure(cmd_b, after=reset_b)
        c = measure_set_no_smoke(ctx)

        # One more run of each, untimed, to see what it changed on disk.
        source_before = file_states([source, *source_shards])
        reset_a()
        _, usage_a = run_child(cmd_a)
        out_shards = shard_files(new_map)
        out_states = file_states(out_shards)
        differ_a = sum(out_states[o.name].sha256 != source_before[s.name].sha256
                       for o, s in zip(out_shards, source_shards))
        source_inodes = {st.inode for st in source_before.values()}
        linked_a = sum(st.inode in source_inodes for st in out_states.values())
        source_kept = file_states([source, *source_shards]) == source_before
        reset_a()

        reset_b()
        before_b = file_states(shard_files(copy_map))
        _, usage_b = run_child(cmd_b)
        after_b = file_states(shard_files(copy_map))
        leftovers_b = sorted(f.name for f in copy.iterdir()) != sorted(
            f.name for f in source.parent.iterdir())
        rewritten_b = sum(after_b[n][:2] != before_b[n][:2] for n in before_b)
        differ_b = sum(after_b[n].sha256 != before_b[n].sha256 for n in before_b)
        shards_same_b = after_b.keys() == before_b.keys()
        reset_b()

        _, usage_c = run_child(_set_no_smoke_cmd())
    finally:  # e.g. after Ctrl-C mid-run
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        _remover(_set_outs()["b"])()

    n = len(source_shards)
    counts_ok = (differ_a == 1 and len(out_shards) == n and differ_b == 1 and shards_same_b
                 and source_kept and not leftovers_b)
    kernel_note = f"kernel {SET_KERNEL_BYTES / 1e3:.1f} kB"
    s = "set-sharded"
    return [
        (s, "(a) set --no-smoke -o NEW.weights.json", f"{a.median_s:.2f}", f"{a.max_rss_mb:.0f}",
         f"{differ_a} of {len(out_shards)} shards differ from the source, {linked_a} "
         f"hard-linked to it; {_written(usage_a)} ({kernel_note})"
         + ("" if source_kept else "; SOURCE CHANGED")),
        (s, "(b) set --no-smoke --in-place", f"{b.median_s:.2f}", f"{b.max_rss_mb:.0f}",
         f"{differ_b} of {len(before_b)} shards differ, {rewritten_b} rewritten "
         f"(inode/mtime); {_written(usage_b)}"
         + ("" if shards_same_b else "; SHARD FILES CHANGED")
         + ("; FILES ADDED OR REMOVED" if leftovers_b else "")),
        (s, "(c) set --no-smoke on .keras", f"{c.median_s:.2f}", f"{c.max_rss_mb:.0f}",
         f"{resnet50().name} -o (= set (b)); {_written(usage_c)}"),
        (s, "shards differing (a), (b)", f"{differ_a}, {differ_b}", "",
         f"target exactly 1 of {n}: {'PASS' if counts_ok else 'FAIL'}"),
        (s, "ratio (a)/(c)", f"{a.median_s / c.median_s:.2f}x",
         f"{a.max_rss_mb / c.max_rss_mb:.2f}x", "no target"),
        (s, "ratio (b)/(c)", f"{b.median_s / c.median_s:.2f}x",
         f"{b.max_rss_mb / c.max_rss_mb:.2f}x", "no target"),
    ]


# The least a structure read can do: open the archive's weight store in place with
# h5py and list every dataset's shape and dtype. What inspect is measured against.
H5PY_WALK = """
import sys, zipfile, struct, io, h5py
path = sys.argv[1]
raw = open(path, "rb")
info = zipfile.ZipFile(raw).getinfo("model.weights.h5")
raw.seek(info.header_offset + 26)
name_len, extra_len = struct.unpack("<HH", raw.read(4))
start = info.header_offset + 30 + name_len + extra_len
class Window(io.RawIOBase):
    def __init__(self): self.pos = 0
    def readable(self): return True
    def seekable(self): return True
    def tell(self): return self.pos
    def seek(self, pos, whence=0):
        self.pos = {0: 0, 1: self.pos, 2: info.file_size}[whence] + pos
        return self.pos
    def readinto(self, buffer):
        n = max(0, min(len(buffer), info.file_size - self.pos))
        raw.seek(start + self.pos)
        got = raw.readinto(memoryview(buffer)[:n])
        self.pos += got
        return got
found = []
with h5py.File(Window(), "r") as h5:
    h5.visititems(lambda n, o: found.append((n, o.shape, o.dtype)) if isinstance(o, h5py.Dataset) else None)
print(len(found))
"""

# cs.inspect() in a warm process: the package imported and one call made, then timed.
API_INSPECT_WARM = """
import sys, time, statistics
import conv_surgeon as cs
cs.inspect(sys.argv[1])
times = []
for _ in range(7):
    start = time.perf_counter()
    cs.inspect(sys.argv[1])
    times.append(time.perf_counter() - start)
print(f"{statistics.median(times) * 1000:.1f}")
"""


def bench_inspect_walk(ctx: Context) -> list[Row]:
    """inspect against the least a structure read can do, and against itself where the
    store goes through h5py: does the pure-Python reader earn its place?"""
    model, h5py_read = resnet50(), resnet50_h5py_read()
    ours = ctx.measure([CLI, "inspect", str(model)])
    walk = ctx.measure([PYTHON, "-c", H5PY_WALK, str(model)])
    through_h5py = ctx.measure([CLI, "inspect", str(h5py_read)])
    same = "same layers" if _same_layers(h5py_read, model) else "LAYERS DIFFER"
    ratio = ours.median_s / walk.median_s
    verdict = "PASS" if ratio <= WALK_INSPECT_TARGET else "MISS"
    warm = subprocess.run([PYTHON, "-c", API_INSPECT_WARM, str(model)], capture_output=True, text=True,
                          env=CHILD_ENV, check=True)
    warm_ms = float(warm.stdout.strip().splitlines()[-1])
    warm_verdict = "PASS" if warm_ms < API_INSPECT_WARM_MS_TARGET else "MISS"
    return [
        ("inspect-walk", "bare h5py walk of the store", f"{walk.median_s:.2f}", f"{walk.max_rss_mb:.0f}",
         "open in place, visititems: shapes and dtypes"),
        ("inspect-walk", "conv-surgeon inspect", f"{ours.median_s:.2f}", f"{ours.max_rss_mb:.0f}",
         "(= inspect section)"),
        ("inspect-walk", "ratio (ours/walk)", f"{ratio:.2f}x", "",
         f"target <= {WALK_INSPECT_TARGET:g}x: {verdict}"),
        ("inspect-walk", "inspect, store read by h5py", f"{through_h5py.median_s:.2f}",
         f"{through_h5py.max_rss_mb:.0f}",
         f"its store rewritten with libver='latest' ({same}): the pure reader saves "
         f"{(through_h5py.median_s - ours.median_s) * 1000:.0f} ms"),
        ("inspect-walk", "cs.inspect() warm", f"{warm_ms / 1000:.3f}", "",
         f"{warm_ms:.1f} ms, target < {API_INSPECT_WARM_MS_TARGET:g} ms: {warm_verdict}"),
    ]


# The plain-Keras way to fold every conv -> BatchNormalization pair: load, rebuild the
# graph without the BNs (config surgery, the way a user would), copy and fold the weights,
# save, reload, and compare outputs with the original on one seeded batch.
KERAS_FOLD = """
import sys, json, keras, numpy as np
src, out = sys.argv[1], sys.argv[2]
model = keras.saving.load_model(src, compile=False)
config = json.loads(json.dumps(model.get_config()))  # tuples as lists, as in config.json
entries = {l["config"]["name"]: l for l in config["layers"]}
def producer(entry):
    nodes = entry.get("inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0]["args"]) != 1 or not isinstance(nodes[0]["args"][0], dict):
        return None
    return nodes[0]["args"][0]["config"]["keras_history"][0]
def history(value):
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield value["config"]["keras_history"][0]
        else:
            for item in value.values():
                yield from history(item)
    elif isinstance(value, list):
        for item in value:
            yield from history(item)
consumers = {}
for entry in config["layers"]:
    for name in history(entry.get("inbound_nodes", [])):
        consumers[name] = consumers.get(name, 0) + 1
pairs = {}
for name, entry in entries.items():
    up = producer(entry)
    if (entry["class_name"] == "BatchNormalization" and up and entries[up]["class_name"] == "Conv2D"
            and entries[up]["config"]["activation"] == "linear" and consumers.get(up) == 1):
        pairs[name] = up
def rewire(value):
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__" and value["config"]["keras_history"][0] in pairs:
            value["config"]["keras_history"][0] = pairs[value["config"]["keras_history"][0]]
        return {k: rewire(v) for k, v in value.items()}
    return [rewire(v) for v in value] if isinstance(value, list) else value
config["layers"] = [rewire(l) for l in config["layers"] if l["config"]["name"] not in pairs]
config["output_layers"] = rewire(config["output_layers"])
for conv in pairs.values():
    entries[conv]["config"]["use_bias"] = True
folded = keras.Model.from_config(config)
for layer in folded.layers:
    old = model.get_layer(layer.name)
    if layer.name in pairs.values():
        bn = model.get_layer(next(b for b, c in pairs.items() if c == layer.name))
        gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.weights)
        s = gamma / np.sqrt(var + bn.epsilon)
        kernel, *bias = (np.asarray(w, np.float64) for w in old.weights)
        bias = bias[0] if bias else np.zeros_like(s)
        layer.set_weights([(kernel * s).astype("float32"), (bias * s + beta - mean * s).astype("float32")])
    elif layer.weights:
        layer.set_weights(old.get_weights())
folded.save(out)
reloaded = keras.saving.load_model(out, compile=False)
x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype("float32")
err = float(np.abs(np.asarray(model(x)) - np.asarray(reloaded(x))).max())
assert len(pairs) == 53 and err < 1e-4, (len(pairs), err)
"""

# Forward-pass time of the original and the folded model: median of 10 calls after a warm-up.
FORWARD_TIMES = """
import sys, time, statistics, keras, numpy as np
for path in sys.argv[1:]:
    model = keras.saving.load_model(path, compile=False)
    for batch in (1, 32):
        x = np.random.default_rng(0).normal(size=(batch, 224, 224, 3)).astype("float32")
        model(x, training=False)
        times = []
        for _ in range(10):
            start = time.perf_counter()
            model(x, training=False)
            times.append(time.perf_counter() - start)
        print(path, batch, statistics.median(times))
"""


def _forward_times(model: Path, onednn: str) -> dict[int, float]:
    """FORWARD_TIMES of ``model`` in a child with ``TF_ENABLE_ONEDNN_OPTS=onednn``: batch -> s."""
    timed = subprocess.run([PYTHON, "-c", FORWARD_TIMES, str(model)], capture_output=True, text=True,
                           env={**CHILD_ENV, "TF_ENABLE_ONEDNN_OPTS": onednn}, check=True)
    return {int(line.rsplit(" ", 2)[1]): float(line.rsplit(" ", 2)[2]) for line in timed.stdout.strip().splitlines()}


def bench_onednn(ctx: Context) -> list[Row]:
    """What the check pays for not trusting TensorFlow's oneDNN CPU kernels: ResNet50's
    forward pass (the smoke test's own work) with them off, as the check runs it, and on."""
    model = resnet50()
    off, on = _forward_times(model, "0"), _forward_times(model, "1")
    rows = []
    for batch in (1, 32):
        rows += [
            ("onednn", f"forward pass, batch {batch}, oneDNN off", f"{off[batch]:.3f}", "", "as the check runs it"),
            ("onednn", f"forward pass, batch {batch}, oneDNN on", f"{on[batch]:.3f}", "", "TF_ENABLE_ONEDNN_OPTS=1"),
            ("onednn", f"ratio (off/on), batch {batch}", f"{off[batch] / on[batch]:.2f}x", "",
             "the cost of a check that does not trust oneDNN (no target)"),
        ]
    return rows


def bench_fold(ctx: Context) -> list[Row]:
    model = resnet50_bn()
    outs = {case: CACHE / f"fold-{case}.out.keras" for case in ("a", "b", "c")}
    try:
        a = ctx.measure([CLI, "fold-bn", str(model), "-o", str(outs["a"])], after=_remover(outs["a"]))
        b = ctx.measure([CLI, "fold-bn", str(model), "--no-smoke", "-o", str(outs["b"])],
                        after=_remover(outs["b"]))
        c = ctx.measure([PYTHON, "-c", KERAS_FOLD, str(model), str(outs["c"])], after=_remover(outs["c"]))
        run_once([CLI, "fold-bn", str(model), "--no-smoke", "-o", str(outs["b"])])
        timed = subprocess.run([PYTHON, "-c", FORWARD_TIMES, str(model), str(outs["b"])],
                               capture_output=True, text=True, env=CHILD_ENV, check=True)
    finally:
        for out in outs.values():
            _remover(out)()
    forward = {}
    for line in timed.stdout.strip().splitlines():
        path, batch, seconds = line.rsplit(" ", 2)
        forward[(path == str(model), int(batch))] = float(seconds)

    def verdict(ratio: float, target: float) -> str:
        return f"target <= {target:g}x: {'PASS' if ratio <= target else 'MISS'}"

    a_t, b_t = a.median_s / c.median_s, b.median_s / c.median_s
    rows = [
        ("fold-bn", "(a) conv-surgeon fold-bn", f"{a.median_s:.2f}", f"{a.max_rss_mb:.0f}",
         "53 pairs, outputs compared (--expect-same)"),
        ("fold-bn", "(b) conv-surgeon fold-bn --no-smoke", f"{b.median_s:.2f}", f"{b.max_rss_mb:.0f}",
         "no Keras import"),
        ("fold-bn", "(c) keras rebuild+fold+save+check", f"{c.median_s:.2f}", f"{c.max_rss_mb:.0f}",
         "config surgery, from_config, set_weights, save, reload, compare"),
        ("fold-bn", "ratio (a)/(c) time", f"{a_t:.2f}x", "", verdict(a_t, FOLD_TIME_TARGET)),
        ("fold-bn", "ratio (b)/(c) time", f"{b_t:.2f}x", "", verdict(b_t, FOLD_NO_SMOKE_TIME_TARGET)),
    ]
    for batch in (1, 32):
        before, after = forward[(True, batch)], forward[(False, batch)]
        rows.append(("fold-bn", f"forward pass, batch {batch}", f"{after:.3f}", "",
                     f"folded vs original {before:.3f} s: {after / before:.2f}x"))
    return rows


# The plain-Keras way to equalize (data-free cross-layer equalization, Nagel et al. 2019)
# what `conv-surgeon equalize` does by default: load; fold every conv -> BN in numpy (a
# script cannot remove layers, so each BN stays as an identity, gamma 1, mean 0, variance
# 1 - eps, carrying the folded bias as beta); find the pairs conv -> f -> conv/depthwise
# (or -> global average pooling -> Dense) from the live layers' inbound nodes, f keeping a
# positive per-channel scale (identity BN, ReLU, LeakyReLU, PReLU, padding, pooling; ReLU6
# stops, as in the tool without --relu6-to-relu); sweep s = sqrt(r1 / r2) over the pairs
# until no scale moves by 1e-6; set_weights, save, reload, compare one seeded forward pass
# with the original's. argv: model, out, summary (JSON: what it did, read by the bench).
KERAS_EQUALIZE = """
import os, sys, json
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # TensorFlow's oneDNN CPU kernels are wrong on some CPUs here
import keras, numpy as np
from keras import layers as L
src, out, summary = sys.argv[1], sys.argv[2], sys.argv[3]
model = keras.saving.load_model(src, compile=False)
x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype("float32")
before = np.asarray(model(x))
readers = {layer.name: [] for layer in model.layers}
for layer in model.layers:
    for node in layer._inbound_nodes:
        for tensor in node.input_tensors:
            readers[tensor._keras_history.operation.name].append(layer)
for tensor in model.outputs:  # a model output must keep its values: it counts as a reader
    readers[tensor._keras_history.operation.name].append(None)
def only_reader(layer):
    found = readers[layer.name]
    return found[0] if len(found) == 1 else None
def conv(layer, first):
    if not (isinstance(layer, L.DepthwiseConv2D) or (type(layer) is L.Conv2D and layer.groups == 1)):
        return False
    homogeneous = layer.activation in (keras.activations.linear, keras.activations.relu)
    return len(layer._inbound_nodes) == 1 and (homogeneous or not first)
w = {l.name: [np.asarray(v, np.float64) for v in l.get_weights()] for l in model.layers if l.weights}
folded, bias_of = [], {}  # bias_of: a conv -> (the layer holding its output's bias, index)
for bn in model.layers:
    if not isinstance(bn, L.BatchNormalization) or len(bn._inbound_nodes) != 1:
        continue
    up = bn._inbound_nodes[0].input_tensors[0]._keras_history.operation
    if not (conv(up, first=True) and only_reader(up) is bn and up.activation is keras.activations.linear):
        continue
    gamma, beta, mean, var = w[bn.name]
    s = gamma / np.sqrt(var + bn.epsilon)
    kernel = w[up.name][0]
    w[up.name][0] = kernel * s.reshape(kernel.shape[2:]) if isinstance(up, L.DepthwiseConv2D) else kernel * s
    bias = np.zeros_like(s)
    if up.use_bias:
        bias, w[up.name][1] = w[up.name][1], bias
    w[bn.name] = [np.ones_like(s), (bias - mean) * s + beta, np.zeros_like(s), np.ones_like(s) - bn.epsilon]
    folded.append(bn.name)
    bias_of[up.name] = (bn.name, 1)
for layer in model.layers:
    if layer.name not in bias_of and conv(layer, first=True) and layer.use_bias:
        bias_of[layer.name] = (layer.name, 1)
def through(layer):
    if isinstance(layer, L.BatchNormalization):
        return layer.name in folded
    if isinstance(layer, L.ReLU):
        return layer.max_value is None and float(layer.threshold) == 0
    if isinstance(layer, L.Activation):
        return layer.activation in (keras.activations.linear, keras.activations.relu)
    return isinstance(layer, (L.LeakyReLU, L.PReLU, L.ZeroPadding2D, L.MaxPooling2D, L.AveragePooling2D))
pairs = []
for first in model.layers:
    if not conv(first, first=True):
        continue
    node = only_reader(first)
    while node is not None and through(node) and len(node._inbound_nodes) == 1:
        node = only_reader(node)
    if isinstance(node, L.GlobalAveragePooling2D):
        node = only_reader(node)
        if isinstance(node, L.Dense) and len(node._inbound_nodes) == 1:
            pairs.append((first, node))
    elif node is not None and conv(node, first=False):
        pairs.append((first, node))
def out_range(layer):
    k = np.abs(w[layer.name][0])
    if isinstance(layer, L.DepthwiseConv2D):
        return k.max(axis=(0, 1)).reshape(-1)
    return k.reshape(-1, k.shape[-1]).max(axis=0)
def in_range(layer):
    k = np.abs(w[layer.name][0])
    return k.max(axis=1) if isinstance(layer, L.Dense) else k.max(axis=(0, 1, 3))
sweeps = 0
while sweeps < 200:
    sweeps += 1
    moved = 0.0
    for first, second in pairs:
        r1, r2 = out_range(first), in_range(second)
        s = np.sqrt(r1 / np.where(r2 > 0, r2, 1.0))
        s = np.where((r1 > 0) & (r2 > 0), s, 1.0)  # a dead channel keeps its scale
        k1 = w[first.name][0]
        w[first.name][0] = k1 / s.reshape(k1.shape[2:]) if isinstance(first, L.DepthwiseConv2D) else k1 / s
        if first.name in bias_of:
            holder, index = bias_of[first.name]
            w[holder][index] = w[holder][index] / s
        w[second.name][0] = w[second.name][0] * s[:, None]  # the input axis is second to last
        moved = max(moved, float(np.abs(s - 1).max()))
    if moved < 1e-6:
        break
for layer in model.layers:
    if layer.name in w:
        layer.set_weights([v.astype("float32") for v in w[layer.name]])
model.save(out)
after = np.asarray(keras.saving.load_model(out, compile=False)(x))
err = float(np.abs(before - after).max())
assert err < 1e-5, err
with open(summary, "w") as f:
    json.dump({"folded": len(folded), "pairs": [[a.name, b.name] for a, b in pairs],
               "sweeps": sweeps, "max_abs_diff": err}, f)
"""


def _equalized_edges(groups: list[dict]) -> set[tuple[str, str]]:
    """The layer pairs (first, second) a scale runs between: a triple (A, D, C) is two."""
    return {(g["layers"][i], g["layers"][i + 1]) for g in groups for i in range(len(g["layers"]) - 1)}


def bench_equalize(ctx: Context) -> list[Row]:
    model = mobilenetv2_bn()
    outs = {case: CACHE / f"equalize-{case}.out.keras" for case in ("a", "b", "c", "d")}
    summary = CACHE / "equalize-c.summary.json"
    try:
        a = ctx.measure([CLI, "equalize", str(model), "-o", str(outs["a"])], after=_remover(outs["a"]))
        b = ctx.measure([CLI, "equalize", str(model), "--no-smoke", "-o", str(outs["b"])],
                        after=_remover(outs["b"]))
        c = ctx.measure([PYTHON, "-c", KERAS_EQUALIZE, str(model), str(outs["c"]), str(summary)],
                        after=_remover(outs["c"]))
        # The paper's MobileNetV2 job, where the sweeps run (no plain script to compare: information).
        d = ctx.measure([CLI, "equalize", str(model), "--relu6-to-relu", "--no-smoke", "-o", str(outs["d"])],
                        after=_remover(outs["d"]))
    finally:
        for out in outs.values():
            _remover(out)()
    # The same job? What the tool would do (untimed) against what the script did.
    def dry_run(*flags: str) -> dict:
        return json.loads(subprocess.run([CLI, "equalize", str(model), "--no-smoke", "--dry-run", "--json", *flags],
                                         capture_output=True, text=True, env=CHILD_ENV, cwd=ROOT, check=True).stdout)

    tool, relu = dry_run(), dry_run("--relu6-to-relu")
    script = json.loads(summary.read_text())
    summary.unlink()
    same = (len(tool["folded"]) == script["folded"]
            and _equalized_edges(tool["equalized"]) == {tuple(pair) for pair in script["pairs"]})

    def verdict(ratio: float, target: float) -> str:
        return f"target <= {target:g}x: {'PASS' if ratio <= target else 'MISS'}"

    a_t, b_t = a.median_s / c.median_s, b.median_s / c.median_s
    return [
        ("equalize", "(a) conv-surgeon equalize", f"{a.median_s:.2f}", f"{a.max_rss_mb:.0f}",
         f"{len(tool['folded'])} BNs folded, {len(tool['equalized'])} groups, {tool['sweeps']} sweeps; "
         "outputs compared"),
        ("equalize", "(b) conv-surgeon equalize --no-smoke", f"{b.median_s:.2f}", f"{b.max_rss_mb:.0f}",
         "no Keras import"),
        ("equalize", "(c) keras fold+equalize+set_weights+save+check", f"{c.median_s:.2f}",
         f"{c.max_rss_mb:.0f}", f"{script['folded']} BNs folded, {len(script['pairs'])} pairs, "
         f"{script['sweeps']} sweeps, max abs diff {script['max_abs_diff']:.1e}; "
         f"{'the same folds and pairs as (a)' if same else 'FAIL: other folds or pairs than (a)'}"),
        ("equalize", "ratio (a)/(c) time", f"{a_t:.2f}x", "", verdict(a_t, EQUALIZE_TIME_TARGET)),
        ("equalize", "ratio (b)/(c) time", f"{b_t:.2f}x", "", verdict(b_t, EQUALIZE_NO_SMOKE_TIME_TARGET)),
        ("equalize", "(d) equalize --relu6-to-relu --no-smoke", f"{d.median_s:.2f}", f"{d.max_rss_mb:.0f}",
         f"{len(relu['equalized'])} groups, {relu['sweeps']} sweeps (no target: the sweeps' cost)"),
    ]


# The plain-Keras way to prune 10% of every group of ResNet50's filters (smallest L1, a
# residual stage's convs scored together): find the groups from the live graph, rebuild the
# model with fewer filters, copy the sliced weights, save, reload, forward.
KERAS_PRUNE = """
import sys, json, keras, numpy as np
src, out = sys.argv[1], sys.argv[2]
model = keras.saving.load_model(src, compile=False)
parents = {l.name: [p.operation.name for p in l._inbound_nodes[0].parent_nodes] if l._inbound_nodes else []
           for l in model.layers}
kind = {l.name: type(l).__name__ for l in model.layers}
def source(name):
    while kind[name] != "Conv2D":
        name = parents[name][0]
    return name
group = {l.name: l.name for l in model.layers if kind[l.name] == "Conv2D"}
def find(name):
    while group[name] != name:
        name = group[name]
    return name
for name in kind:
    if kind[name] == "Add":
        roots = [find(source(p)) for p in parents[name]]
        for root in roots[1:]:
            group[root] = roots[0]
members = {}
for conv in group:
    members.setdefault(find(conv), []).append(conv)
keep_out = {}
for convs in members.values():
    filters = model.get_layer(convs[0]).filters
    score = sum(np.abs(np.asarray(model.get_layer(c).kernel)).reshape(-1, filters).sum(0) for c in convs)
    kept = np.sort(np.argsort(score, kind="stable")[filters // 10:])
    for conv in convs:
        keep_out[conv] = kept
keep = {}
for layer in model.layers:
    name = layer.name
    if kind[name] == "InputLayer":
        keep[name] = np.arange(layer.output.shape[-1])
    elif name in keep_out:
        keep[name] = keep_out[name]
    elif kind[name] != "Dense":
        keep[name] = keep[parents[name][0]]
config = model.get_config()
for entry in config["layers"]:
    entry.pop("build_config", None)
    if entry["config"]["name"] in keep_out:
        entry["config"]["filters"] = len(keep_out[entry["config"]["name"]])
pruned = keras.Model.from_config(config)
for layer in pruned.layers:
    old = model.get_layer(layer.name)
    if not old.weights:
        continue
    inputs = keep[parents[layer.name][0]]
    values = [np.asarray(w) for w in old.weights]
    if kind[layer.name] == "Conv2D":
        values = [values[0][:, :, inputs][..., keep[layer.name]], values[1][keep[layer.name]]]
    elif kind[layer.name] == "BatchNormalization":
        values = [v[inputs] for v in values]
    else:
        values = [values[0][inputs], values[1]]
    layer.set_weights(values)
pruned.save(out)
reloaded = keras.saving.load_model(out, compile=False)
x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype("float32")
y = np.asarray(reloaded(x))
assert np.isfinite(y).all() and len(members) == 37, len(members)
"""


def bench_prune(ctx: Context) -> list[Row]:
    model = resnet50()
    args = ["prune", str(model), "--all", "--smallest-l1", "10%"]
    outs = {case: CACHE / f"prune-{case}.out.keras" for case in ("a", "b", "c")}
    try:
        a = ctx.measure([CLI, *args, "-o", str(outs["a"])], after=_remover(outs["a"]))
        b = ctx.measure([CLI, *args, "--no-smoke", "-o", str(outs["b"])], after=_remover(outs["b"]))
        c = ctx.measure([PYTHON, "-c", KERAS_PRUNE, str(model), str(outs["c"])], after=_remover(outs["c"]))
    finally:
        for out in outs.values():
            _remover(out)()

    def verdict(ratio: float, target: float) -> str:
        return f"target <= {target:g}x: {'PASS' if ratio <= target else 'MISS'}"

    a_t, b_t = a.median_s / c.median_s, b.median_s / c.median_s
    return [
        ("prune", "(a) conv-surgeon prune --all --smallest-l1 10%", f"{a.median_s:.2f}", f"{a.max_rss_mb:.0f}",
         "37 groups, outputs compared"),
        ("prune", "(b) the same, --no-smoke", f"{b.median_s:.2f}", f"{b.max_rss_mb:.0f}", "no Keras import"),
        ("prune", "(c) keras rebuild+slice+save+reload+forward", f"{c.median_s:.2f}", f"{c.max_rss_mb:.0f}",
         "groups from the live graph, from_config, set_weights"),
        ("prune", "ratio (a)/(c) time", f"{a_t:.2f}x", "", verdict(a_t, PRUNE_TIME_TARGET)),
        ("prune", "ratio (b)/(c) time", f"{b_t:.2f}x", "", verdict(b_t, PRUNE_NO_SMOKE_TIME_TARGET)),
    ]


def bench_show(ctx: Context) -> list[Row]:
    model = resnet50()
    picture = CACHE / "show.out.png"
    try:
        grid = ctx.measure([CLI, "show", str(model), "--layer", SET_LAYER, "-o", str(picture)],
                           after=_remover(picture))
        inspect = ctx.measure([CLI, "inspect", str(model)])
        hist = ctx.measure([CLI, "show", str(model), "--all", "--hist", "-o", str(picture)],
                           after=_remover(picture))
        stats = ctx.measure([CLI, "inspect", str(model), "--stats"])
    finally:
        _remover(picture)()
    grid_ratio, hist_ratio = grid.median_s / inspect.median_s, hist.median_s / stats.median_s
    s = "show"
    return [
        (s, f"show --layer {SET_LAYER} -o X.png", f"{grid.median_s:.2f}", f"{grid.max_rss_mb:.0f}",
         f"{model.name}: 64 RGB tiles of {SET_KERNEL_SHAPE}"),
        (s, "inspect", f"{inspect.median_s:.2f}", f"{inspect.max_rss_mb:.0f}", "(= inspect section)"),
        (s, "ratio (show/inspect)", f"{grid_ratio:.2f}x", f"{grid.max_rss_mb / inspect.max_rss_mb:.2f}x",
         f"time target <= {SHOW_GRID_TARGET:g}x: {'PASS' if grid_ratio <= SHOW_GRID_TARGET else 'MISS'}"),
        (s, "show --all --hist -o X.png", f"{hist.median_s:.2f}", f"{hist.max_rss_mb:.0f}",
         "histograms of every conv variable, a row per layer"),
        (s, "inspect --stats", f"{stats.median_s:.2f}", f"{stats.max_rss_mb:.0f}", "reads the same variables"),
        (s, "ratio (show --all --hist/--stats)", f"{hist_ratio:.2f}x", f"{hist.max_rss_mb / stats.max_rss_mb:.2f}x",
         f"time target <= {SHOW_HIST_TARGET:g}x: {'PASS' if hist_ratio <= SHOW_HIST_TARGET else 'MISS'}"),
    ]


def torch_resnet50() -> Path | None:
    """The PyTorch state dict of the port section, made once; None without torch."""
    path = CACHE / "resnet50_torch.pt"
    if path.exists():
        return path
    if subprocess.run([PYTHON, "-c", "import torch"], capture_output=True, env=CHILD_ENV).returncode != 0:
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / ".resnet50_torch.partial.pt"
    print(f"building {path.relative_to(ROOT)} (once) ...", flush=True)
    run_once([PYTHON, "-c", BUILD_TORCH_RESNET50, str(tmp)])
    tmp.replace(path)
    return path


# keras.applications.ResNet50 written in PyTorch (v1: the stride on each block's first 1x1
# conv; convs with biases) with torchvision's module names, and its forward pass: the
# state dict of the port section (BUILD_TORCH_RESNET50) and the reference of
# `port --reference resnet50_twin.py:build`. Keras pads conv1 with ZeroPadding2D(3) and pool1 with zeros
# (after a ReLU, the same as max pooling's -inf); its stride-2 convs are 1x1, so 'same'
# padding never differs; its BN epsilon is 1.001e-5, as `port --bn-epsilon 1.001e-5` says.
# The twin and Keras agree to 2e-6 of the output's scale.
TORCH_RESNET50 = """
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1.001e-5


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride, project):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, stride), nn.BatchNorm2d(width, eps=EPS)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width, eps=EPS)
        self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1), nn.BatchNorm2d(width * 4, eps=EPS)
        self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride),
                                        nn.BatchNorm2d(width * 4, eps=EPS)) if project else None

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + shortcut)


class ResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3), nn.BatchNorm2d(64, eps=EPS)
        cin = 64
        for stage, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layers = []
            for block in range(blocks):
                layers.append(Bottleneck(cin, width, stride if block == 0 else 1, block == 0))
                cin = width * 4
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.softmax(self.fc(x.mean((2, 3))), dim=1)


def build():
    return ResNet50()
"""

# The twin's state dict, random weights, saved to the path given.
BUILD_TORCH_RESNET50 = TORCH_RESNET50 + """
import sys
torch.manual_seed(0)
torch.save(build().state_dict(), sys.argv[1])
"""


def torch_twin() -> Path:
    """The PyTorch twin of keras.applications.ResNet50 (TORCH_RESNET50), written once."""
    path = CACHE / "resnet50_twin.py"
    if not path.exists() or path.read_text() != TORCH_RESNET50:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = CACHE / ".resnet50_twin.partial.py"
        tmp.write_text(TORCH_RESNET50)
        tmp.replace(path)
    return path


# The plain way: torch.load, a name table written for this architecture, set_weights, save;
# with a fourth argument, the twin (TORCH_RESNET50) in that file is built, the state dict
# loaded into it and one forward pass run: what checking the port against PyTorch costs a script.
KERAS_PORT = """
import os, sys, traceback
saved = os.dup(2)
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 2)
try:
    import torch, keras
    src, state_path, out = sys.argv[1:4]
    state = {k: v.numpy() for k, v in torch.load(state_path, weights_only=True).items()}
    model = keras.saving.load_model(src, compile=False)
    def keras_name(module):
        if module in ("conv1", "bn1", "fc"):
            return {"conv1": "conv1_conv", "bn1": "conv1_bn", "fc": "predictions"}[module]
        layer, block, part = module.split(".", 2)
        prefix = f"conv{int(layer[5:]) + 1}_block{int(block) + 1}_"
        if part.startswith("downsample"):
            return prefix + ("0_conv" if part.endswith("0") else "0_bn")
        return prefix + part[-1] + ("_conv" if part.startswith("conv") else "_bn")
    modules = {}
    for name, value in state.items():
        module, _, leaf = name.rpartition(".")
        if leaf != "num_batches_tracked":
            modules.setdefault(module, {})[leaf] = value
    for module, tensors in modules.items():
        layer = model.get_layer(keras_name(module))
        if "running_var" in tensors:
            values = [tensors[k] for k in ("weight", "bias", "running_mean", "running_var")]
        elif tensors["weight"].ndim == 4:
            values = [tensors["weight"].transpose(2, 3, 1, 0), tensors["bias"]]
        else:
            values = [tensors["weight"].T, tensors["bias"]]
        layer.set_weights(values)
    model.save(out)
    status = 0
    if len(sys.argv) > 4:
        import numpy as np
        sys.path.insert(0, os.path.dirname(sys.argv[4]))
        from resnet50_twin import build
        net = build()
        net.load_state_dict(torch.load(state_path, weights_only=True), strict=True)
        net.eval()
        with torch.no_grad():
            x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
            status = 0 if torch.isfinite(net(torch.from_numpy(x))).all() else 3
except BaseException:
    os.write(saved, traceback.format_exc().encode())
    status = 1
sys.exit(status)
"""


def bench_port(ctx: Context) -> list[Row]:
    model, state = resnet50(), torch_resnet50()
    if state is None:
        return [("port", "(skipped)", "", "", "torch is not installed: pip install 'conv-surgeon[torch]'")]
    twin = torch_twin()
    outs = {case: CACHE / f"port-{case}.out.keras" for case in ("a", "b", "c", "d", "e")}
    port = [CLI, "port", str(model), "--from", str(state), "--bn-epsilon", "1.001e-5"]
    try:
        a = ctx.measure([*port, "--no-smoke", "-o", str(outs["a"])], after=_remover(outs["a"]))
        b = ctx.measure([PYTHON, "-c", KERAS_PORT, str(model), str(state), str(outs["b"])],
                        after=_remover(outs["b"]))
        c = ctx.measure([*port, "--reference", f"{twin}:build", "--expect-same", "-o", str(outs["c"])],
                        after=_remover(outs["c"]))
        d = ctx.measure([PYTHON, "-c", KERAS_PORT, str(model), str(state), str(outs["d"]), str(twin)],
                        after=_remover(outs["d"]))
        e = ctx.measure([*port, "-o", str(outs["e"])], after=_remover(outs["e"]))
    finally:
        for out in outs.values():
            _remover(out)()

    def verdict(ratio: float, target: float) -> str:
        return f"target <= {target:g}x: {'PASS' if ratio <= target else 'MISS'}"

    plain = [
        ("port", "(b) torch.load + set_weights loop + save", f"{b.median_s:.2f}", f"{b.max_rss_mb:.0f}",
         "a name table written for ResNet50"),
        ("port", "(d) (b) + one torch forward pass", f"{d.median_s:.2f}", f"{d.max_rss_mb:.0f}",
         "the twin built, load_state_dict, (1, 3, 224, 224)"),
    ]
    a_t, c_t = a.median_s / b.median_s, c.median_s / d.median_s
    return [
        ("port", "(a) conv-surgeon port --no-smoke", f"{a.median_s:.2f}", f"{a.max_rss_mb:.0f}",
         "320 tensors mapped by shape and order, patched"),
        plain[0],
        ("port", "ratio (a)/(b) time", f"{a_t:.2f}x", "", verdict(a_t, PORT_NO_SMOKE_TIME_TARGET)),
        ("port", "(c) conv-surgeon port --reference", f"{c.median_s:.2f}", f"{c.max_rss_mb:.0f}",
         "smoke test + the PyTorch twin on its input, --expect-same"),
        plain[1],
        ("port", "ratio (c)/(d) time", f"{c_t:.2f}x", f"{c.max_rss_mb / d.max_rss_mb:.2f}x",
         verdict(c_t, PORT_REFERENCE_TIME_TARGET)),
        ("port", "(e) conv-surgeon port (smoke test)", f"{e.median_s:.2f}", f"{e.max_rss_mb:.0f}",
         f"without --reference: the reference itself costs (c)-(e) = {c.median_s - e.median_s:.2f} s"),
    ]


SECTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "inspect": bench_inspect,
    "inspect-scaling": bench_inspect_scaling,
    "inspect-walk": bench_inspect_walk,
    "set": bench_set,
    "apply": bench_apply,
    "diff": bench_diff,
    "inspect-sharded": bench_inspect_sharded,
    "inspect-preset": bench_inspect_preset,
    "set-sharded": bench_set_sharded,
    "fold-bn": bench_fold,
    "equalize": bench_equalize,
    "prune": bench_prune,
    "show": bench_show,
    "port": bench_port,
    "onednn": bench_onednn,
}


# --------------------------------------------------------------------------- output


def print_table(rows: list[Row]) -> None:
    header: Row = ("section", "case", "median s", "max RSS MB", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:4], widths)]
        print("  ".join([*cells, r[4]]).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time and peak memory of conv-surgeon against plain Keras.",
        epilog=f"sections: {', '.join(SECTIONS)}")
    parser.add_argument("--only", metavar="SECTION[,SECTION]",
                        help="run only these sections (comma-separated)")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"timed runs per case, after one warm-up (default {DEFAULT_REPEAT})")
    args = parser.parse_args(argv)
    names = list(SECTIONS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        parser.error(f"unknown section {', '.join(unknown) or '(none)'}; choose from {', '.join(SECTIONS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    compileall.compile_dir(ROOT / "conv_surgeon", quiet=1)
    print(f"cache: {rel(CACHE)}/   cpus: {os.cpu_count()}   runs per case: "
          f"{args.repeat} (+1 warm-up), median time, max peak RSS; conv_surgeon byte-compiled",
          flush=True)
    ctx = Context(repeat=args.repeat)
    rows: list[Row] = []
    start = time.perf_counter()
    try:
        for name in names:
            rows += SECTIONS[name](ctx)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(exc.stderr.rstrip(), file=sys.stderr)
        return 1
    print()
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
