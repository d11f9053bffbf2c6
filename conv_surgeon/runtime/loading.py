"""Loading the model a check runs: a model file or folder, a keras-hub preset, or a
weights-only save into the architecture of its config; the modules of ``--import`` first.

When Keras cannot load the written model, the original tells whether the edit is the
cause (:func:`load_written`): if it cannot load that either, :class:`NoKerasLoads`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConvSurgeonError, SmokeTestError
from ..store.documents import parse_json
from .checks import SmokeTarget
from .environment import keras_label
from .messages import SKIP_HINT, keras_traceback, short_error, uncoloured

_KERAS_HUB_CONFIG = re.compile(r'"(?:module|registered_name)"\s*:\s*"keras_hub[.>"]')
_UNKNOWN_CLASS = re.compile(
    r"Could not locate (?:class|function) '([^']+)'|Unknown (?:layer|object|class)\w*: '?([\w.>]+)"
)


def import_modules(names: Sequence[str]) -> None:
    """Import the modules that register custom classes; the current directory comes first, as with ``python -m``."""
    here = os.getcwd()
    if names and here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of user code means "cannot import"
            hint = f" (a module name, not a file: --import {name[:-3].replace('/', '.')})" if name.endswith(".py") else ""
            raise ConvSurgeonError(
                f"--import {name}: the module could not be imported ({short_error(exc)}); give the "
                f"name of a module importable from the current directory ({here}) or the Python "
                f"path{hint}, e.g. --import my_layers for ./my_layers.py"
            ).with_detail(keras_traceback(exc)) from None


def config_text(path: Path) -> str:
    """The ``config.json`` of a .keras archive or a model directory; "" when there is none."""
    try:
        if path.is_dir():
            return (path / "config.json").read_text(encoding="utf-8")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return archive.read("config.json").decode("utf-8")
    except (OSError, KeyError, UnicodeDecodeError, zipfile.BadZipFile):
        pass  # Keras says what is wrong with the file when it loads it
    return ""


def _is_preset(path: Path) -> bool:
    """A keras-hub preset directory: its metadata.json names the keras-hub version."""
    try:
        metadata = parse_json((path / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and "keras_hub_version" in metadata


def _require_keras_hub(what: str) -> None:
    """Import keras_hub: it registers the ``keras_hub>...`` classes the config names."""
    try:
        import keras_hub  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a missing or broken install is not a bug of ours
        if isinstance(exc, ModuleNotFoundError) and exc.name == "keras_hub":
            raise SmokeTestError(
                f"the {what} is a keras-hub model and keras-hub is not installed; "
                f"`pip install keras-hub` to smoke-test it, {SKIP_HINT}"
            ) from None
        raise SmokeTestError(
            f"the {what} is a keras-hub model and keras-hub failed to import "
            f"({short_error(exc)}); repair the keras-hub install, {SKIP_HINT}"
        ).with_detail(keras_traceback(exc)) from None


class KerasCannotLoad(SmokeTestError):
    """Keras could not load a model for a reason other than a missing class or a Lambda:
    perhaps the edit, perhaps a file this Keras cannot read at all (the check then tries
    the original, and tf-keras for a Keras 2 file)."""

    def __init__(self, message: str, reason: str = "", keras: str = "") -> None:
        super().__init__(message)
        self.reason, self.keras = reason, keras


def _cannot_load(keras: Any, exc: Exception, what: str) -> SmokeTestError:
    message = " ".join(uncoloured(str(exc)).split())
    label = keras_label(keras)
    if "safe_mode" in message or "Lambda" in message and "unsafe" in message.lower():
        return SmokeTestError(
            "the model holds a Lambda layer with Python code, which Keras refuses to "
            "load in safe mode; pass --unsafe if you trust this file, or --no-smoke "
            "to write it without the check"
        ).with_detail(keras_traceback(exc))
    unknown = _UNKNOWN_CLASS.search(message)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        return SmokeTestError(
            f"{label} could not load the {what}: it uses class '{name}', which "
            "no imported module registers, so nothing was written; pass --import MODULE naming "
            "the module that registers it (with @keras.saving.register_keras_serializable), "
            "or --no-smoke to write it without the check"
        ).with_detail(keras_traceback(exc))
    reason = _load_failure_reason(exc, message)
    return KerasCannotLoad(
        f"{label} could not load the {what} ({reason}), so nothing was written; "
        "--no-smoke writes it without the check", reason, label,
    ).with_detail(keras_traceback(exc))


def _load_failure_reason(exc: Exception, message: str) -> str:
    """The cause Keras gives, without the layer config it prints around it."""
    layer = re.search(r"deserializing class '([^']+)'", message)
    cause = message.rsplit("Exception encountered:", 1)[-1].strip()
    if len(cause) > 240:
        cause = cause[:240] + "..."
    prefix = f"{layer.group(1)}: " if layer and "Exception encountered:" in message else ""
    return f"{prefix}{cause}" if cause else type(exc).__name__


def _load_model(keras: Any, path: Path, unsafe: bool, what: str) -> Any:
    if _KERAS_HUB_CONFIG.search(config_text(path)):
        _require_keras_hub(what)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; all mean "cannot load"
        raise _cannot_load(keras, exc, what) from None


def _load_preset(keras: Any, path: Path, unsafe: bool, what: str, load_weights: bool) -> Any:
    _require_keras_hub(what)
    import keras_hub
    from keras.src.saving.serialization_lib import SafeModeScope

    try:
        # An absolute path: keras-hub reads a bare name such as "resnet_50_imagenet" as a
        # built-in preset and downloads it.
        with SafeModeScope(not unsafe):
            return keras_hub.models.Backbone.from_preset(str(path.resolve()), load_weights=load_weights)
    except Exception as exc:  # noqa: BLE001
        raise _cannot_load(keras, exc, what) from None


def load_target(keras: Any, target: SmokeTarget, unsafe: bool, what: str) -> Any:
    """``target`` loaded by ``keras`` (``what`` names it in messages), or a SmokeTestError."""
    if target.kind == "preset":
        return _load_preset(keras, target.path, unsafe, what, load_weights=True)
    if target.kind == "model":
        return _load_model(keras, target.path, unsafe, what)
    assert target.config is not None
    architecture = f"model {target.config.name} (the architecture for the {what})"
    if _is_preset(target.config):
        model = _load_preset(keras, target.config, unsafe, architecture, load_weights=False)
    else:
        model = _load_model(keras, target.config, unsafe, architecture)
    try:
        model.load_weights(str(target.path))
    except Exception as exc:  # noqa: BLE001
        raise SmokeTestError(
            f"{keras_label(keras)} could not load the {what} {target.path.name} into the "
            f"architecture of {target.config.name} ({short_error(exc)}), so nothing was written; "
            "--no-smoke writes it without the check"
        ).with_detail(keras_traceback(exc)) from None
    return model


def legacy_weights_file(target: SmokeTarget) -> Path | None:
    """The legacy .h5 file Keras read the weights from by position, or None for a weight store.

    Keras chooses its loader by the name's ending, and so does this.
    """
    name = str(target.path)
    if target.kind == "preset" or name.endswith((".keras", ".weights.h5", ".weights.json")):
        return None
    if name.endswith((".h5", ".hdf5")) and not target.path.is_dir():
        return target.path
    return None


class NoKerasLoads(SmokeTestError):
    """Keras cannot load the original model either: the check cannot run, and the edit is
    not the cause. ``attempts`` holds (which Keras, why) for each Keras tried."""

    def __init__(self, attempts: Sequence[tuple[str, str]], written_by: str | None = None,
                 tf_keras_hint: bool = False) -> None:
        self.attempts, self.written_by, self.tf_keras_hint = list(attempts), written_by, tf_keras_hint
        if len(self.attempts) == 1:
            (label, reason), = self.attempts
            said = f"{label} cannot load the original model either ({reason})"
        else:
            said = "no Keras here can load the original model: " + "; ".join(
                f"{label}: {reason}" for label, reason in self.attempts)
        hint = ""
        if tf_keras_hint:
            hint = (f"; the file was written by Keras {written_by or '2'}, which tf-keras reads: "
                    "pip install 'conv-surgeon[keras2]' to check it with tf-keras")
        super().__init__(
            f"{said}, so the check cannot run (the edit is not the cause); nothing was written; "
            f"--no-smoke writes the edit without the check{hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.attempts, self.written_by, self.tf_keras_hint), self.__dict__)


def written_by_keras2(version: str | None) -> bool:
    """Whether a file's ``keras_version`` says Keras 1 or 2 wrote it (None: it does not say)."""
    return version is None or version.split(".")[0] in ("1", "2")


def load_written(keras: Any, edited: SmokeTarget, original: SmokeTarget | None, unsafe: bool) -> Any:
    """The written model, loaded; when Keras cannot load the original either, NoKerasLoads."""
    try:
        return load_target(keras, edited, unsafe, "written model")
    except KerasCannotLoad:
        if original is None:
            raise
        try:
            load_target(keras, original, unsafe, "original model")
        except KerasCannotLoad as original_failure:
            raise NoKerasLoads([(original_failure.keras, original_failure.reason)]).with_detail(
                original_failure.detail) from None
        except SmokeTestError:
            pass
        raise
