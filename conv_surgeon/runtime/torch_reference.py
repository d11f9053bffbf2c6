"""Checked against PyTorch: the Keras model and a PyTorch reference run on the same inputs,
and each output of the one is measured against the other's.

The reference is a TorchScript file (``torch.jit.save``), a ``torch.export`` archive
(``.pt2``), or ``module:factory``, a function of the user's code that returns the
``nn.Module``, into which the state dict of the port is loaded (strictly). The inputs are
those the smoke test feeds the Keras model (seeded, or ``--load-inputs``), in its layout: a
channels_last model's inputs go to PyTorch channels first, and its outputs of rank 3 and
more come back channels last.

torch is an optional extra: nothing here imports it before a reference runs, and without
it :func:`require_torch` says how to install it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConvSurgeonError, SmokeTestError, UsageError
from ..model.catalogue import conv_class
from ..model.naming import format_shape
from .checks import (ReferenceKind, ReferenceOutput, SmokeOptions, SmokeTarget, Tolerance, TorchComparison, TorchReference,
                     compare_outputs)
from .environment import import_keras, quiet_stderr
from .input_shapes import LOADED, declared_shapes, read_inputs_file, run_loaded, run_seeded
from .loading import import_modules, load_target
from .messages import ForwardFailure, keras_traceback, shapes_text, short_error
from .running import forward, sums_length

TORCH_EXTRA = "pip install 'conv-surgeon[torch]'"
KINDS_TEXT = ("a TorchScript file (torch.jit.save), a torch.export archive (.pt2, torch.export.save) "
              "or module:factory (a function of your code that returns the nn.Module)")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# Layers whose data_format says how the model's inputs are laid out (a Flatten or a
# Reshape has one too, but computes the same on any layout).
_SPATIAL = re.compile(r"(Pooling|UpSampling|Cropping|ZeroPadding)[123]D$")
# The axes of an input by rank, channels last and channels first, for the report.
_AXES = {3: ("NWC", "NCW"), 4: ("NHWC", "NCHW"), 5: ("NDHWC", "NCDHW")}


def torch_available() -> bool:
    """Whether PyTorch can be imported here (without importing it: that takes seconds)."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None  # None: its import is blocked
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require_torch(spec: str) -> None:
    """Refuse ``--reference spec`` where PyTorch is not installed, before any work."""
    if not torch_available():
        raise ConvSurgeonError(
            f"--reference {spec}: running a PyTorch reference needs PyTorch, which is not installed; "
            f"{TORCH_EXTRA}, or drop --reference (the smoke test runs without it)")


def import_torch(spec: str) -> Any:
    """torch, or the error of :func:`require_torch`."""
    require_torch(spec)
    try:
        import torch
    except ImportError as exc:
        raise ConvSurgeonError(
            f"--reference {spec}: PyTorch is installed but cannot be imported ({short_error(exc)}); "
            f"repair it ({TORCH_EXTRA}) or drop --reference").with_detail(keras_traceback(exc)) from None
    return torch


def parse_reference(spec: str) -> TorchReference:
    """What ``--reference spec`` names, checked without importing torch or the user's code:
    an existing TorchScript or torch.export file, or ``module:factory``."""
    if os.path.exists(spec):
        return TorchReference(spec, _file_kind(spec), Path(spec))
    module, colon, factory = spec.rpartition(":")
    if not colon:
        raise ConvSurgeonError(f"--reference {spec}: no such file, and not module:factory; give {KINDS_TEXT}")
    if not _DOTTED.fullmatch(factory):
        raise UsageError(f"--reference {spec}: '{factory}' is not a Python name; give module:factory, "
                         "e.g. my_nets:build_resnet")
    if module.endswith(".py") or "/" in module or os.sep in module:
        if not os.path.isfile(module):
            raise ConvSurgeonError(f"--reference {spec}: the module file {module} does not exist; check the path")
        return TorchReference(spec, "factory", Path(module), factory=factory)
    if not _DOTTED.fullmatch(module):
        raise UsageError(f"--reference {spec}: '{module}' is neither a module name nor a .py file; give "
                         "module:factory, e.g. my_nets:build_resnet or path/to/nets.py:build_resnet")
    return TorchReference(spec, "factory", None, module=module, factory=factory)


def _file_kind(spec: str) -> ReferenceKind:
    """"torchscript" or "export", told by the archive's members, or an error saying what it is."""
    if os.path.isdir(spec):
        raise ConvSurgeonError(f"--reference {spec}: a folder; give {KINDS_TEXT}")
    try:
        with zipfile.ZipFile(spec) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ConvSurgeonError(f"--reference {spec}: not a TorchScript or torch.export archive ({exc}); "
                               f"give {KINDS_TEXT}") from None
    # Each keeps one top folder: torch.export.save writes archive_format in it,
    # torch.jit.save code/ and constants.pkl, torch.save only data.pkl.
    members = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in members:
        return "export"
    if "constants.pkl" in members or any(m.startswith("code/") for m in members):
        return "torchscript"
    if "data.pkl" in members:
        raise ConvSurgeonError(
            f"--reference {spec}: a state dict (torch.save), which holds weights but no model to run; "
            f"give it as --from STATE, and as --reference {KINDS_TEXT}")
    raise ConvSurgeonError(f"--reference {spec}: a zip archive, but not one torch wrote; give {KINDS_TEXT}")


def load_reference(reference: TorchReference) -> tuple[Any, int, list[str]]:
    """The reference, ready to run in eval mode on the CPU; the number of the state dict's
    tensors loaded into it; notes for the report."""
    torch = import_torch(reference.spec)
    notes: list[str] = []
    if reference.kind == "factory":
        module = _factory_module(torch, reference)
        loaded = 0
        if reference.state is None:
            notes.append(f"{reference.factory}() returned its module with the weights it was built with "
                         "(no state dict given)")
        else:
            loaded = _load_state(torch, module, reference)
        module.eval()
        return module, loaded, notes
    assert reference.path is not None
    try:
        if reference.kind == "torchscript":
            module = torch.jit.load(str(reference.path), map_location="cpu")
        else:
            module = torch.export.load(str(reference.path)).module()
    except Exception as exc:  # noqa: BLE001 - torch raises many types; all mean "cannot load"
        what = "TorchScript file" if reference.kind == "torchscript" else "torch.export archive"
        raise ConvSurgeonError(f"--reference {reference.spec}: torch {torch.__version__} could not load the "
                               f"{what} ({short_error(exc)}); save it again with this torch").with_detail(
            keras_traceback(exc)) from None
    try:
        module.eval()
    except NotImplementedError:
        pass  # an exported program runs as it was exported (in eval mode, one hopes: the README says so)
    if reference.state is not None:
        notes += _own_weights_note(module, reference)
    return module, 0, notes


def _factory_module(torch: Any, reference: TorchReference) -> Any:
    """What ``module:factory`` returns: the module imported (a file by its path, a name from
    the current directory first, as ``python -m`` does) and the factory called."""
    try:
        if reference.path is not None:
            module = _import_file(reference.path)
        else:
            here = os.getcwd()
            if here not in sys.path and "" not in sys.path:
                sys.path.insert(0, here)
            module = importlib.import_module(reference.module)
    except Exception as exc:  # noqa: BLE001 - any failure of user code means "cannot import"
        where = reference.path or f"{reference.module} (from {os.getcwd()} or the Python path)"
        raise ConvSurgeonError(
            f"--reference {reference.spec}: the module {where} could not be imported ({short_error(exc)}); "
            "fix it, or name the .py file: path/to/nets.py:factory").with_detail(keras_traceback(exc)) from None
    target: Any = module
    for part in reference.factory.split("."):
        if not hasattr(target, part):
            found = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ConvSurgeonError(
                f"--reference {reference.spec}: the module has no '{reference.factory}'; it defines "
                f"{', '.join(found[:12]) or 'nothing callable'}")
        target = getattr(target, part)
    if not callable(target):
        raise ConvSurgeonError(f"--reference {reference.spec}: '{reference.factory}' is a "
                               f"{type(target).__name__}, not a function that returns the nn.Module")
    try:
        made = target()
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise ConvSurgeonError(
            f"--reference {reference.spec}: {reference.factory}() raised {short_error(exc)}; it is called "
            "with no arguments and must return the nn.Module").with_detail(keras_traceback(exc)) from None
    if not isinstance(made, torch.nn.Module):
        raise ConvSurgeonError(f"--reference {reference.spec}: {reference.factory}() returned a "
                               f"{type(made).__name__}; expected the torch.nn.Module to run")
    return made


def _import_file(path: Path) -> Any:
    """The module of a .py file, run as ``python path`` would see it: its folder first on the
    path, so that it imports the modules beside it."""
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # classes the module defines pickle and print by this name
    spec.loader.exec_module(module)
    return module


def _load_state(torch: Any, module: Any, reference: TorchReference) -> int:
    """Load the port's state dict into the factory's module (strict: every tensor of both
    sides matched by name and shape), or an error that lists what does not fit."""
    assert reference.state is not None
    state = reference.state
    own = module.state_dict()
    # torch's BatchNorm fills in a missing num_batches_tracked itself (eval mode ignores it).
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {format_shape(tuple(own[k].shape))} != {format_shape(np.shape(state[k]))}"
                  for k in own if k in state and tuple(own[k].shape) != np.shape(state[k])]
    problems = [f"{label}: {', '.join(items[:4])}{f' (+{len(items) - 4} more)' if len(items) > 4 else ''}"
                for label, items in (("missing from the state dict", missing), ("not in the module", unexpected),
                                     ("shape (module != state dict)", mismatched)) if items]
    if problems:
        raise ConvSurgeonError(
            f"--reference {reference.spec}: the state dict does not fit the module {reference.factory}() "
            f"returns ({'; '.join(problems)}); make the factory build the architecture the weights come from")
    try:
        module.load_state_dict({k: _as_tensor(torch, v) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ConvSurgeonError(f"--reference {reference.spec}: the state dict does not load into the module "
                               f"({short_error(exc)})").with_detail(keras_traceback(exc)) from None
    return len(state)


def _as_tensor(torch: Any, array: np.ndarray) -> Any:
    """A numpy array as a CPU tensor; bfloat16 and the other ml_dtypes by their bits."""
    array = np.asarray(array, order="C")  # (np.ascontiguousarray would make a scalar's () a (1,))
    if not array.dtype.isnative:  # a big-endian file's tensors, which torch.from_numpy refuses
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype.kind == "V" or array.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        bits = np.int16 if array.dtype.itemsize == 2 else np.uint8
        return torch.from_numpy(array.view(bits)).view(getattr(torch, array.dtype.name))
    return torch.from_numpy(array)


def _own_weights_note(module: Any, reference: TorchReference) -> list[str]:
    """A note when a reference file's own weights are not the port's: it runs with its own."""
    assert reference.state is not None
    own = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    shared = [k for k in own if k in reference.state and not k.endswith("num_batches_tracked")]
    differing = [k for k in shared if tuple(own[k].shape) != np.shape(reference.state[k])
                 or not np.array_equal(own[k].float().numpy(), np.asarray(reference.state[k], np.float32))]
    if not differing:
        return []
    return [f"the reference runs with the weights its file holds, and {len(differing)} of the "
            f"{len(shared)} tensors it shares with the state dict differ (first '{differing[0]}'): "
            "export it from the model the state dict comes from"]


def channels_last(model: Any) -> bool:
    """Whether the model's inputs are channels last: the first conv or spatial layer says so
    by its data_format. A model with neither takes the same layout in both frameworks."""
    for layer in model._flatten_layers(include_self=False):
        name = type(layer).__name__
        fmt = getattr(layer, "data_format", None)
        if fmt in ("channels_last", "channels_first") and (conv_class(name) is not None or _SPATIAL.search(name)):
            return bool(fmt == "channels_last")
    return False


def _layout_text(last: bool, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> str:
    """``inputs NHWC -> NCHW for PyTorch; outputs NCHW -> NHWC back``, or that nothing moved."""
    def moved(arrays: Sequence[np.ndarray], back: bool) -> str:
        pairs = [_AXES.get(rank, ("channels last", "channels first")) for rank in sorted({a.ndim for a in arrays})
                 if rank >= 3]
        return ", ".join(f"{b} -> {a}" if back else f"{a} -> {b}" for a, b in pairs)

    into, back = moved(inputs, False), moved(outputs, True)
    if not last or not (into or back):
        return "the same layout in both"
    return "; ".join(part for part in (f"inputs {into} for PyTorch" if into else "",
                                       f"outputs {back} back" if back else "") if part)


def _threads() -> int:
    """The CPUs this process may run on (its affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_reference(torch: Any, module: Any, reference: TorchReference, inputs: Sequence[np.ndarray],
                  last: bool) -> list[np.ndarray]:
    """The reference's outputs on ``inputs`` (the Keras model's layout), in that layout."""
    feed = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1) if last and a.ndim >= 3 else a))
            for a in inputs]
    threads = torch.get_num_threads()
    torch.set_num_threads(_threads())
    try:
        with torch.no_grad():
            result = module(*feed)
    except Exception as exc:  # noqa: BLE001 - the user's model
        shapes = shapes_text([tuple(t.shape) for t in feed])
        raise SmokeTestError(
            f"the PyTorch reference {reference.spec} failed on the input {shapes} ({short_error(exc)}); "
            "nothing was written; give a reference that takes the Keras model's inputs"
            + (" channels first" if last else "")).with_detail(keras_traceback(exc)) from None
    finally:
        torch.set_num_threads(threads)
    outputs = []
    for tensor in _tensors(torch, result, reference):
        array = tensor.detach().cpu().float().numpy() if tensor.is_floating_point() else tensor.cpu().numpy()
        outputs.append(np.moveaxis(array, 1, -1) if last and array.ndim >= 3 else array)
    return outputs


def _tensors(torch: Any, result: Any, reference: TorchReference) -> list[Any]:
    """The tensors of a module's result: one, or those of a tuple, list or dict, in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, Mapping):
        result = list(result.values())
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in _tensors(torch, item, reference)]
    raise SmokeTestError(f"the PyTorch reference {reference.spec} returned a {type(result).__name__}, "
                         "not tensors; nothing was written; return a tensor, or a tuple, list or dict of them")


def _compare(name: str, keras_out: np.ndarray, torch_out: np.ndarray) -> ReferenceOutput:
    numbers = compare_outputs(name, torch_out, keras_out)
    error = np.abs(keras_out.astype(np.float64) - torch_out.astype(np.float64))
    worst = np.unravel_index(int(np.argmax(error)), error.shape) if error.size else ()
    return ReferenceOutput(
        name=name, shape=tuple(keras_out.shape), max_abs=numbers.max_abs,
        scale=float(np.abs(torch_out.astype(np.float64)).max(initial=0.0)), cosine=numbers.cosine,
        worst=tuple(int(i) for i in worst),
        keras_value=float(keras_out[worst]) if error.size else 0.0,
        torch_value=float(torch_out[worst]) if error.size else 0.0)


def reference_comparison(model: Any, reference: TorchReference, inputs: Sequence[np.ndarray],
                         outputs: Sequence[np.ndarray], origins: Sequence[str]) -> TorchComparison:
    """Run ``reference`` on the ``inputs`` the Keras ``model`` gave ``outputs`` for, and measure
    each output against the reference's (the smoke test's step for ``--reference``)."""
    with quiet_stderr():  # torch warns (TorchScript's deprecation, its own kernels) on stderr
        torch = import_torch(reference.spec)
        module, loaded, notes = load_reference(reference)
        last = channels_last(model)
        theirs = run_reference(torch, module, reference, inputs, last)
        threads = _threads()
    if len(theirs) != len(outputs):
        raise SmokeTestError(
            f"the PyTorch reference {reference.spec} gives {len(theirs)} output(s) "
            f"{shapes_text([a.shape for a in theirs])}, the Keras model {len(outputs)} "
            f"{shapes_text([a.shape for a in outputs])}; nothing was written; give a reference whose outputs "
            "are the Keras model's")
    compared = []
    for i, (mine, other) in enumerate(zip(outputs, theirs)):
        name = f"output {i}"
        if mine.shape != other.shape:
            moved = " (channels moved last)" if last and other.ndim >= 3 else ""
            raise SmokeTestError(
                f"{name}: the PyTorch reference {reference.spec} gives {format_shape(other.shape)}{moved}, "
                f"the Keras model {format_shape(mine.shape)}; nothing was written; check that both are the "
                "same architecture")
        bad = int(other.size - np.count_nonzero(np.isfinite(other.astype(np.float64))))
        if bad:
            raise SmokeTestError(
                f"{name}: {bad} of {other.size} values of the PyTorch reference {reference.spec} are NaN "
                "or Inf, so it cannot be compared; nothing was written; check the reference on these inputs")
        compared.append(_compare(name, mine, other))
    return TorchComparison(
        reference=reference, torch_version=str(torch.__version__), threads=threads,
        layout=_layout_text(last, inputs, outputs), inputs=tuple(tuple(a.shape) for a in inputs),
        input_origins=tuple(origins), outputs=tuple(compared), sums=sums_length(model),
        state_tensors=loaded, notes=tuple(notes))


def check_reference(comparison: TorchComparison, tolerance: Tolerance) -> TorchComparison:
    """``comparison`` with the tolerance it kept, or a SmokeTestError naming the first output
    beyond it, by how much and where."""
    for output in comparison.outputs:
        if output.used(tolerance, comparison.sums) > 1:
            raise SmokeTestError(
                f"{output.name}: the Keras model differs from the PyTorch reference {comparison.reference.spec} "
                f"beyond {output.allowance(tolerance, comparison.sums)}: max abs error {output.max_abs:.3g} "
                f"({output.max_rel:.3g} of the scale; at index {output.worst}: Keras {output.keras_value:.6g}, "
                f"PyTorch {output.torch_value:.6g}); nothing was written; a weight is in the wrong place or "
                "layout, or the architectures differ (padding, epsilon); --atol and --rtol allow more")
    return replace(comparison, tolerance=tolerance)


def compare_with_torch(
    model: str | Path | SmokeTarget | Any,
    reference: str | TorchReference,
    state: Mapping[str, np.ndarray] | None = None,
    inputs: Sequence[np.ndarray] | SmokeOptions | None = None,
    tolerance: Tolerance | None = None,
) -> TorchComparison:
    """Run a Keras model (a file, or a model already loaded) and a PyTorch reference on the
    same inputs and measure each output against the reference's.

    ``reference`` is what ``--reference`` takes; ``state`` the state dict loaded into a
    ``module:factory`` reference. ``inputs`` are arrays in the Keras model's layout, or the
    smoke test's options that draw them (seeded by ``input_seed``, ``input_shapes``, or read
    from ``load_inputs``); None draws them as the smoke test does by default. With a
    ``tolerance``, an output beyond it raises a SmokeTestError.
    """
    parsed = reference if isinstance(reference, TorchReference) else parse_reference(reference)
    if state is not None:
        parsed = replace(parsed, state=state)
    require_torch(parsed.spec)
    options = inputs if isinstance(inputs, SmokeOptions) else SmokeOptions()
    stored = read_inputs_file(options.load_inputs) if options.load_inputs is not None else None
    keras = import_keras()
    with quiet_stderr():
        import_modules(options.imports)
        live, declared = model, []
        if isinstance(model, (str, Path, SmokeTarget)):
            target = model if isinstance(model, SmokeTarget) else SmokeTarget(Path(model))
            live, declared = load_target(keras, target, options.unsafe, "model"), declared_shapes(target)

        def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
            return forward(keras, live, arrays)

        if inputs is not None and not isinstance(inputs, SmokeOptions):
            arrays = [np.asarray(a) for a in inputs]
            try:
                fed_inputs, fed_outputs, origins = arrays, run(arrays), ["given"] * len(arrays)
            except ForwardFailure as failure:
                raise SmokeTestError(f"the Keras model failed on the inputs {shapes_text([a.shape for a in arrays])} "
                                     f"({failure}); give inputs in its layout").with_detail(failure.detail) from None
        elif options.load_inputs is not None and stored is not None:
            fed = run_loaded(options.load_inputs, stored, live, run)
            fed_inputs, fed_outputs, origins = fed.inputs, fed.outputs, [LOADED] * len(fed.inputs)
        else:
            fed = run_seeded(live, run, options.input_shapes, options.input_seed, declared)
            fed_inputs, fed_outputs, origins = fed.inputs, fed.outputs, fed.origins
    comparison = reference_comparison(live, parsed, fed_inputs, fed_outputs, origins)
    return check_reference(comparison, tolerance) if tolerance is not None else comparison
