"""The environment Keras runs in: TensorFlow's settings, the quiet import, which Keras and
engine a check ran on, and the import warmed up in the background.

TensorFlow's start-up chatter comes from C++ before Python logging exists, so the
only way to keep it off the user's terminal is to point file descriptor 2 at
/dev/null around the import, the load and the forward pass (``TF_CPP_MIN_LOG_LEVEL=3``
does not silence it in TensorFlow 2.21).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import raise_if_stopped


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (C++ logs) and Python warnings; restore both afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
    if threading.current_thread() is threading.main_thread():
        raise_if_stopped()  # a Ctrl-C that TensorFlow's code caught meanwhile


# TensorFlow reads this once, when it is imported. Its oneDNN CPU kernels compute some
# convolutions wrong on some CPUs (a 64x1 kernel over 922 channels off by 8 on a scale of
# 50 on an AMD EPYC where they were on by default, NaN over 200 channels); the check must
# not trust them. The README's smoke-test section says what it costs.
ONEDNN_SWITCH = "TF_ENABLE_ONEDNN_OPTS"


def _tensorflow_environment() -> None:
    """Quiet TensorFlow's logs and turn its oneDNN kernels off, unless it is imported already
    (then :func:`engine_label` says how it runs)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        os.environ[ONEDNN_SWITCH] = "0"


def import_keras() -> Any:
    """Keras with TensorFlow's start-up noise kept off stderr and its oneDNN kernels off."""
    _tensorflow_environment()
    with quiet_stderr():
        import keras

        keras.utils.disable_interactive_logging()
    return keras


def import_tf_keras() -> Any:
    """tf-keras (Keras 2, which reads every Keras 2 file), set up as :func:`import_keras`."""
    _tensorflow_environment()
    with quiet_stderr():
        import tf_keras

        tf_keras.utils.disable_interactive_logging()
    return tf_keras


def tf_keras_available() -> bool:
    """Whether tf-keras is installed (``pip install 'conv-surgeon[keras2]'``)."""
    import importlib.util

    return importlib.util.find_spec("tf_keras") is not None


def keras_label(keras: Any) -> str:
    """Which Keras this is, for reports: ``Keras 3.15.1`` or ``tf-keras 2.21.0``."""
    name = "tf-keras" if keras.__name__ == "tf_keras" else "Keras"
    return f"{name} {keras.__version__}"


def onednn_enabled() -> bool | None:
    """Whether this process's TensorFlow runs its oneDNN kernels; None when it cannot tell."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def engine_label(keras: Any) -> str:
    """What computes the check: ``TensorFlow 2.21.0, oneDNN off`` (or another backend)."""
    backend = keras.backend.backend() if hasattr(keras.backend, "backend") else "tensorflow"
    if backend != "tensorflow":
        return f"the {backend} backend"
    import tensorflow as tf

    onednn = onednn_enabled()
    state = "" if onednn is None else f", oneDNN {'on' if onednn else 'off'}"
    return f"TensorFlow {tf.__version__}{state}"


class KerasWarmUp:
    """Import TensorFlow in the background while the model file is being written."""

    def __init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keras-import", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            import_keras()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc

    def start(self) -> KerasWarmUp:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def wait(self) -> None:
        """Join, and raise what the import raised."""
        self.join()
        if self._error is not None:
            raise self._error

