"""Benchmarks for conv-surgeon: what a user waits for, and how much memory it takes.

Run from the repository root (``make bench`` does this):

    .venv/bin/python bench/bench.py                   # every section
    .venv/bin/python bench/bench.py --only inspect    # one section (comma list allowed)
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

Models
    ResNet50 (``keras.applications.ResNet50(weights=None)``) is built once, in a
    child process, into ``bench/.cache/resnet50.keras`` (git-ignored) and reused.
    The tiny model is ``sample_models/tiny_cnn.keras``; if that file is missing a
    similar tiny CNN is built into the cache instead.

Child processes inherit this environment plus ``TF_CPP_MIN_LOG_LEVEL=3``. The
benchmark itself never imports TensorFlow. Exit status: 0 (misses included),
1 if a benchmarked or set-up command fails, 2 on bad arguments.

Adding a section: write ``def bench_NAME(ctx: Context) -> list[Row]`` and
register it in ``SECTIONS``; use ``ctx.measure(...)`` so a case shared by two
sections is measured once per run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
PYTHON = sys.executable
BIN = Path(PYTHON).parent
CLI = str(BIN / "conv-surgeon")
SAMPLE_TINY = ROOT / "sample_models" / "tiny_cnn.keras"

CHILD_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
DEFAULT_REPEAT = 3
INSPECT_SPEEDUP_TARGET = 15.0


# --------------------------------------------------------------------------- measuring


class Measurement(NamedTuple):
    median_s: float
    max_rss_mb: float


class CommandFailed(Exception):
    def __init__(self, cmd: list[str], code: int, stderr: str) -> None:
        shown = ["<script>" if i and cmd[i - 1] == "-c" else arg for i, arg in enumerate(cmd)]
        super().__init__(f"command failed with exit status {code}: {' '.join(shown)}")
        self.cmd, self.code, self.stderr = cmd, code, stderr


def run_once(cmd: list[str]) -> tuple[float, float]:
    """Run cmd in a fresh child; return (wall seconds, the child's peak RSS in MB).

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
        if code != 0:
            err.seek(0)
            raise CommandFailed(cmd, code, err.read().decode("utf-8", "replace"))
    return elapsed, usage.ru_maxrss / 1024.0  # Linux reports KiB


def measure(cmd: list[str], repeat: int = DEFAULT_REPEAT, warmup: int = 1) -> Measurement:
    """Median wall time and largest peak RSS of `repeat` fresh runs of cmd."""
    for _ in range(warmup):
        run_once(cmd)
    runs = [run_once(cmd) for _ in range(repeat)]
    return Measurement(statistics.median(t for t, _ in runs), max(m for _, m in runs))


@dataclass
class Context:
    repeat: int
    _memo: dict[tuple[str, ...], Measurement] = field(default_factory=dict)

    def measure(self, cmd: list[str]) -> Measurement:
        key = tuple(cmd)
        if key not in self._memo:
            self._memo[key] = measure(cmd, self.repeat)
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


def _build_cached(name: str, script: str) -> Path:
    path = CACHE / name
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{name}.partial.keras"  # Keras insists on the .keras suffix
    print(f"building {path.relative_to(ROOT)} (once) ...", flush=True)
    start = time.perf_counter()
    run_once([PYTHON, "-c", script, str(tmp)])
    tmp.replace(path)  # atomic: an interrupted build never leaves a half file behind
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def resnet50() -> Path:
    return _build_cached("resnet50.keras", BUILD_RESNET50)


def tiny_model() -> Path:
    if SAMPLE_TINY.exists():
        return SAMPLE_TINY
    print(f"note: {SAMPLE_TINY.relative_to(ROOT)} not found; using a built fallback", flush=True)
    return _build_cached("tiny_cnn.keras", BUILD_TINY)


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

# The plain-Keras way a user would answer "which convs, which shapes" today.
KERAS_LIST_CONVS = """
import sys, keras
from keras import layers as L
CONV = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose,
        L.Conv3DTranspose, L.DepthwiseConv1D, L.DepthwiseConv2D,
        L.SeparableConv1D, L.SeparableConv2D)
def walk(layer):
    for child in getattr(layer, "layers", []):
        yield child
        yield from walk(child)
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


SECTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "inspect": bench_inspect,
    "inspect-scaling": bench_inspect_scaling,
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

    print(f"cache: {rel(CACHE)}/   cpus: {os.cpu_count()}   runs per case: "
          f"{args.repeat} (+1 warm-up), median time, max peak RSS", flush=True)
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
