"""Real architectures (``keras.applications``, ``weights=None``), built once per session.

Building ResNet50 or DenseNet121 and saving it takes seconds; several test modules need
the same ones (fold-bn, prune, inspect, the check). Each (application, variant) is built
by the first test that asks for it and saved under a folder every pytest-xdist worker of
the session shares; a lock file (``fcntl.flock``) per file makes the other workers wait
for it instead of building it again.

Every application is built at ONE input size, the smallest it accepts: 32x32, and 71x71
for Xception. A variant is the same application with something done to it before saving
(BatchNormalization statistics drawn at random, say): ``prepare(keras, model)``. The
variant name stands for what was done; a test module names its own variants.

The session fixture ``architectures`` gives an :class:`Architectures`:

- ``architectures.file(name)``: the application as Keras builds it by default (1000
  classes, softmax), saved as ``.keras``; ``fmt="h5"`` for the same model as legacy .h5.
- ``architectures.file(name, variant, linear_head=True, prepare=f)``: a variant.
- ``architectures.built(...)``: that file and a Keras model of its own (yours to edit):
  the one just built if this call built the file (no load), else loaded from it.

The fixture is registered in conftest.py. The files are shared: never edit them in place
(write outputs to ``tmp_path``).
"""

from __future__ import annotations

import fcntl
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

SIZE = 32
MINIMUM = {"Xception": 71}  # keras.applications refuses anything smaller
SEED = 0


def input_shape(name: str) -> tuple[int, int, int]:
    size = MINIMUM.get(name, SIZE)
    return (size, size, 3)


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every xdist worker of this session sees (the session's own folder when
    pytest runs without xdist)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' basetemps are popen-gw0, popen-gw1, ... in it
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (created if missing); other processes wait."""
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(keras: Any, name: str, linear_head: bool = False) -> Any:
    """``keras.applications.<name>`` with random weights at its input size, seeded."""
    keras.utils.set_random_seed(SEED)
    return getattr(keras.applications, name)(
        weights=None, input_shape=input_shape(name), classifier_activation=None if linear_head else "softmax")


Prepare = Callable[[Any, Any], None]


class Architectures:
    def __init__(self, folder: Path, keras: Any) -> None:
        self.folder, self.keras = folder, keras

    def file(self, name: str, variant: str = "plain", *, linear_head: bool = False,
             prepare: Prepare | None = None, fmt: str = "keras") -> Path:
        """The shared file of ``name`` (``variant``), built on first use. The ``plain``
        variant is saved as .keras and .h5, the others as .keras."""
        path, _ = self._saved(name, variant, linear_head, prepare)
        path = path.with_suffix(f".{fmt}")
        if not path.exists():
            raise FileNotFoundError(f"{path}: the {variant!r} variant is saved as .keras only")
        return path

    def built(self, name: str, variant: str = "plain", *, linear_head: bool = False,
              prepare: Prepare | None = None) -> tuple[Path, Any]:
        """The shared .keras file and a Keras model of its own (to run, or to edit): the
        model this call just built and saved, or else the file loaded by Keras."""
        path, model = self._saved(name, variant, linear_head, prepare)
        return path, model if model is not None else self.keras.saving.load_model(path)

    def _saved(self, name: str, variant: str, linear_head: bool, prepare: Prepare | None) -> tuple[Path, Any]:
        """The .keras file, and the model if this call built it (None if it was there)."""
        if variant == "plain" and (linear_head or prepare is not None):
            raise ValueError("the plain variant is Keras's default model: name your variant")
        stem = f"{name}-{variant}"
        path = self.folder / f"{stem}.keras"
        with locked(self.folder / f"{stem}.lock"):
            if path.exists():
                return path, None
            model = build(self.keras, name, linear_head)
            if prepare is not None:
                prepare(self.keras, model)
            for suffix in ("h5", "keras") if variant == "plain" else ("keras",):
                partial = self.folder / f"{stem}.partial.{suffix}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the legacy .h5 warning
                    model.save(partial)
                os.replace(partial, self.folder / f"{stem}.{suffix}")  # .keras last: it marks the end
            return path, model


@pytest.fixture(scope="session")
def architectures(tmp_path_factory: pytest.TempPathFactory, keras: Any) -> Architectures:
    return Architectures(shared_folder(tmp_path_factory, "architectures"), keras)
