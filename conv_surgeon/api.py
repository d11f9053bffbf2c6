"""The public Python API: every command of the CLI as a typed function, for notebooks.

Reading (:func:`inspect`, :func:`get_weights`, :func:`diff`, :func:`show`) never imports
TensorFlow.
Writing (:func:`set_weights`, :func:`apply`, :func:`fold_bn`, :func:`equalize`, :func:`prune`, :func:`port`) goes through the same write transaction as
the command line: staged beside the destination, verified, smoke-tested with Keras
(unless ``smoke=False``) and only then moved into place. :func:`assign` does the same
checks on a live Keras layer.

Heavy modules are imported inside the functions, so ``import conv_surgeon`` stays cheap.

>>> import conv_surgeon as cs
>>> [layer.path for layer in cs.inspect("sample_models/tiny_cnn.keras").layers]
['conv1', 'conv2', 'conv3']
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Union

from .edits import Layout
from .errors import ConvSurgeonError, PlanError
from .surgery import OptimizerPolicy

if TYPE_CHECKING:
    import numpy as np

    from .edits.assign import Assignment
    from .instruments.diff import DiffReport
    from .instruments.equalize import EqualizeReport
    from .instruments.fold import FoldReport
    from .instruments.port import PortReport
    from .instruments.prune import PruneReport
    from .instruments.reading import InspectReport
    from .model.quantization import QuantBits
    from .instruments.set_weights import SetReport, WeightRequest
    from .pictures.options import Kind, Reduce, Scale
    from .pictures.picture import Picture
    from .store.model_file import ModelFile
    from .instruments.writing import CheckDefaults, CheckRequest
    from .transaction.transaction import WriteOptions

P = ParamSpec("P")
T = TypeVar("T")

# The library's messages name the command line's options; from Python they name the
# keyword arguments that do the same. Longest first, so that a whole option is replaced.
_IN_PYTHON = [
    ("--layout torch", 'layout="torch"'),
    ("--optimizer keep", 'optimizer="keep"'),
    ("--input-shape SHAPE", "input_shapes=[(...)]"),
    ("--input-shape", "input_shapes="),
    ("--import MODULE", 'imports=["module"]'),
    ("--config MODEL", "config=PATH"),
    ("--no-smoke", "smoke=False"),
    ("--unsafe", "unsafe=True"),
    ("--keep-layers", "keep_layers=True"),
    ("--allow-partial", "allow_partial=True"),
    ("--bn-epsilon 1e-5", "bn_epsilon=1e-5"),
    ("--bn-epsilon", "bn_epsilon"),
    ("--map 'REGEX=>LAYER'", "maps=['REGEX=>LAYER']"),
    ("--map", "maps"),
    ("--reference", "reference"),
    ("--expect-same", "expect_same=True"),
    ("--atol", "atol"),
    ("--rtol", "rtol"),
    ("--dry-run", "dry_run=True"),
    ("--in-place", "in_place=True"),
    ("--seed", "seed"),
    ("pass one of these to --weight", "use one of these names as a key of weights= or inits="),
]
_OPTION = re.compile("|".join(re.escape(option) for option, _ in _IN_PYTHON) + r"(?![\w-])")


def _in_python(text: str) -> str:
    """A message as a Python caller reads it: `pass layout="torch"`, not `pass --layout torch`."""
    words = dict(_IN_PYTHON)
    return _OPTION.sub(lambda match: words[match.group(0)], text)


def _speaks_python(function: Callable[P, T]) -> Callable[P, T]:
    """A public function whose errors name its keyword arguments, not the CLI's options."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except ConvSurgeonError as exc:
            if exc.args and isinstance(exc.args[0], str):
                exc.args = (_in_python(exc.args[0]), *exc.args[1:])
            if isinstance(exc, PlanError):
                exc.problems = tuple(_in_python(problem) for problem in exc.problems)
            raise

    return call


def _reads_well(*, tables: bool) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A public function whose result (or each item of it) reads well in Python: one short
    line as its repr and, with ``tables``, in a notebook the tables the command line prints
    (``_repr_html_``); a picture shows itself already (``_repr_png_``)."""

    def decorate(function: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(function)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            result = function(*args, **kwargs)
            values: list[object] = list(result) if isinstance(result, list) else [result]
            for value in values:
                _give_reprs(type(value), tables)
            return result

        return call

    return decorate


def _give_reprs(kind: type, tables: bool) -> None:
    """The methods of :mod:`.render.notebook`, given to ``kind`` (again: it costs nothing):
    its class sits below render/ (an instrument's report, show's picture, assign's
    assignment) and cannot use it."""
    from .render.notebook import short_repr

    setattr(kind, "__repr__", short_repr)
    if tables:
        setattr(kind, "_repr_html_", _report_html)


def _report_html(report: Any) -> str:
    """The report's tables, as HTML, in the API's words (``smoke=False``, not ``--no-smoke``)."""
    from .render.notebook import report_html

    return _in_python(report_html(report))


PathLike = Union[str, "os.PathLike[str]"]
# A new value: an array, or a source spec as the CLI takes it ("k.npy", "bank.npz:dw", ...).
Value = Union["np.ndarray", str]


def _source(model: PathLike | bytes, config: PathLike | None = None) -> ModelFile:
    from .store.model_file import ModelFile

    if isinstance(model, bytes):
        import io

        return ModelFile.from_stream(io.BytesIO(model), "<bytes>", config=config)
    return ModelFile.from_path(model, config=config)


@_speaks_python
@_reads_well(tables=True)
def inspect(
    model: PathLike | bytes, *, all_layers: bool = False, stats: bool = False,
    config: PathLike | None = None, quant: QuantBits | None = None,
) -> InspectReport:
    """The model's convolution layers (every layer with weights if ``all_layers``): each
    with its ``path``, ``class_name`` and ``variables`` (name, shape, dtype).

    ``model`` is any Keras save (``.keras``, ``.h5``, weights-only, a shard map, a saved
    folder or a keras-hub preset) or the bytes of one; ``config`` gives a weights-only
    save its model's classes. ``quant="int8"`` (or ``"int4"``) adds ``quant``: every conv
    and Dense kernel's SQNR quantized symmetric per tensor and per output channel.
    """
    from .instruments.reading import inspect_model

    return inspect_model(_source(model, config), all_layers=all_layers, stats=stats, quant=quant)


@_speaks_python
def get_weights(
    model: PathLike | bytes, layer: str, *, layout: Layout = "keras", config: PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Every variable of ``layer``, by name: ``{"kernel": ..., "bias": ...}``.

    ``layout="torch"`` gives them in PyTorch / ONNX layout (convolutions, Dense as Linear,
    normalizations and embeddings as they are).
    """
    from .instruments.reading import get_weights as export

    return export(_source(model, config), layer, every=True, layout=layout).arrays


@_speaks_python
@_reads_well(tables=True)
def set_weights(
    model: PathLike,
    layer: str,
    *,
    out: PathLike | None = None,
    in_place: bool = False,
    kernel: Value | None = None,
    bias: Value | None = None,
    weights: Mapping[str, Value] | None = None,
    inits: Mapping[str, str] | None = None,
    seed: int | None = None,
    layout: Layout = "keras",
    smoke: bool = True,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    imports: Sequence[str] = (),
    unsafe: bool = False,
    dry_run: bool = False,
    config: PathLike | None = None,
    optimizer: OptimizerPolicy = "reset",
) -> SetReport:
    """Set variables of one layer (any layer with weights) and write the model to ``out`` (or over
    ``model`` with ``in_place``); ``dry_run`` checks and reports without writing.

    ``kernel``, ``bias`` and ``weights`` (other variables by name, e.g.
    ``{"depthwise_kernel": dw}``) take arrays or source specs; ``inits`` takes
    initializer specs by variable name (``{"kernel": "he_normal", "bias": "zeros"}``),
    drawn with ``seed``. Arrays are in Keras layout unless ``layout="torch"``.
    ``optimizer="reset"`` starts the optimizer slots of every replaced variable at zero;
    ``"keep"`` leaves them (``report.optimizer_slots`` says what was done).

    >>> import conv_surgeon as cs, numpy as np
    >>> report = cs.set_weights("sample_models/tiny_cnn.keras", "conv1", out="build/api.keras",
    ...                         kernel=np.zeros((3, 3, 1, 4), np.float32), smoke=False)
    """
    from .instruments.set_weights import SetRequest, set_weights as set_layer
    from .instruments.writing import CheckRequest

    requests = _requests(kernel, bias, weights, inits)
    checks = CheckRequest(smoke=smoke, input_shapes=tuple(input_shapes or ()), unsafe=unsafe, imports=tuple(imports))
    options = _write_options(model, out, in_place, dry_run, checks, SetRequest.checks,
                             ("conv_surgeon.set_weights", os.fspath(model), layer))
    return set_layer(_source(model, config), layer, requests, options, seed=seed, layout=layout,
                     optimizer=optimizer)


@_speaks_python
@_reads_well(tables=True)
def apply(
    model: PathLike, plan: PathLike, *, out: PathLike | None = None, in_place: bool = False,
    smoke: bool = True, dry_run: bool = False, config: PathLike | None = None,
    optimizer: OptimizerPolicy = "reset",
) -> SetReport:
    """Every edit of a JSON or TOML plan (see ``conv-surgeon apply --schema``), all or
    nothing, with one write and one smoke test; ``optimizer`` as for :func:`set_weights`."""
    from .edits.plan import load_plan
    from .instruments.set_weights import SetRequest, apply_plan
    from .instruments.writing import CheckRequest

    options = _write_options(model, out, in_place, dry_run, CheckRequest(smoke=smoke), SetRequest.checks,
                             ("conv_surgeon.apply", os.fspath(model), os.fspath(plan)))
    return apply_plan(_source(model, config), load_plan(plan), options, optimizer=optimizer)


@_speaks_python
@_reads_well(tables=True)
def fold_bn(
    model: PathLike,
    *,
    out: PathLike | None = None,
    in_place: bool = False,
    layers: Sequence[str] | None = None,
    keep_layers: bool = False,
    smoke: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    load_inputs: PathLike | None = None,
    imports: Sequence[str] = (),
    unsafe: bool = False,
    dry_run: bool = False,
) -> FoldReport:
    """Fold each BatchNormalization into the convolution it follows (only the pairs of the
    convs or BatchNormalizations named in ``layers``, if given) and write the model to
    ``out``. Unless ``smoke=False``, Keras runs both models on the same inputs (seeded,
    or ``load_inputs``) and nothing is written if the outputs differ by more than float32
    rounding plus ``atol``/``rtol`` (by default none: see ``FoldRequest.checks``).
    ``keep_layers`` leaves each BatchNormalization in place as an identity. The report
    lists the pairs folded and, for every other BatchNormalization, why not.
    """
    from .instruments.fold import FoldRequest, fold_bn as fold

    request = FoldRequest(tuple(layers or ()), keep_layers)
    checks = _compared_checks(smoke, input_shapes, unsafe, imports, atol, rtol, load_inputs)
    options = _write_options(model, out, in_place, dry_run, checks, request.checks,
                             ("conv_surgeon.fold_bn", os.fspath(model)))
    return fold(_source(model), request, options)


@_speaks_python
@_reads_well(tables=True)
def equalize(
    model: PathLike,
    *,
    out: PathLike | None = None,
    in_place: bool = False,
    fold: bool = True,
    relu6_to_relu: bool = False,
    absorb_bias: bool = False,
    smoke: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    load_inputs: PathLike | None = None,
    imports: Sequence[str] = (),
    unsafe: bool = False,
    dry_run: bool = False,
) -> EqualizeReport:
    """Cross-layer equalization for per-tensor quantization: fold each BatchNormalization
    (``fold=False`` refuses a conv followed by one instead), then rescale the channels of
    every conv -> ReLU -> conv pair and conv -> depthwise -> conv triple so their ranges
    meet, and write the model to ``out``. ``relu6_to_relu`` replaces ReLU6 by ReLU (so
    MobileNet's blocks can pair); ``absorb_bias`` moves what each folded
    BatchNormalization's statistics say a channel always carries into the next layer's
    bias. Unless ``smoke=False``, Keras runs both models on the same inputs: the outputs
    must agree within float32 rounding plus ``atol``/``rtol``, or, when a flag changed the
    function, their difference is measured and reported. The report lists the groups
    equalized and, for every other layer's output, why not.
    """
    from .instruments.equalize import EqualizeRequest, equalize as run

    request = EqualizeRequest(fold=fold, relu6_to_relu=relu6_to_relu, absorb_bias=absorb_bias)
    checks = _compared_checks(smoke, input_shapes, unsafe, imports, atol, rtol, load_inputs)
    options = _write_options(model, out, in_place, dry_run, checks, request.checks,
                             ("conv_surgeon.equalize", os.fspath(model)))
    return run(_source(model), request, options)


@_speaks_python
@_reads_well(tables=True)
def prune(
    model: PathLike,
    *,
    out: PathLike | None = None,
    in_place: bool = False,
    layers: Sequence[str] | None = None,
    every: bool = False,
    filters: Sequence[int] | None = None,
    smallest_l1: str | int | None = None,
    zeros: bool = False,
    smoke: bool = True,
    expect_same: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    load_inputs: PathLike | None = None,
    imports: Sequence[str] = (),
    unsafe: bool = False,
    dry_run: bool = False,
) -> PruneReport:
    """Remove convolution filters and fix up every layer downstream, then write the model
    to ``out``: the filters of ``layers`` (and of every conv whose channels meet theirs
    in an Add/Multiply), or of every prunable group with ``every`` (or ``zeros`` alone).
    Which filters: ``filters`` (indices, with one layer), ``smallest_l1`` (a count, or a
    percentage such as ``"25%"``; a group is scored summed over its members) or ``zeros``
    (only filters zero all along their path: the outputs must then stay equal).

    Unless ``smoke=False`` (then TensorFlow is never imported), Keras runs both models on
    the same inputs and the report holds the difference; with ``expect_same`` nothing is
    written if they differ beyond ``atol``/``rtol`` (by default those of ``Tolerance()``), with
    ``zeros`` if they differ by more than float32 rounding plus ``atol``/``rtol`` (by default
    none: see ``PruneRequest.checks``).

    >>> import conv_surgeon as cs
    >>> report = cs.prune("sample_models/tiny_cnn.keras", layers=["conv1"], filters=[0],
    ...                   out="build/pruned.keras", smoke=False)
    >>> report.groups[0].removed
    (0,)
    """
    from .instruments.prune import PruneRequest, prune as prune_model

    request = PruneRequest(tuple(layers or ()), every, tuple(filters) if filters is not None else None,
                           None if smallest_l1 is None else str(smallest_l1), zeros)
    checks = _compared_checks(smoke, input_shapes, unsafe, imports, atol, rtol, load_inputs,
                              expect_same=expect_same and smoke)
    options = _write_options(model, out, in_place, dry_run, checks, request.checks,
                             ("conv_surgeon.prune", os.fspath(model)))
    return prune_model(_source(model), request, options)


@_speaks_python
@_reads_well(tables=True)
def port(
    model: PathLike,
    state: PathLike,
    *,
    out: PathLike | None = None,
    in_place: bool = False,
    maps: Sequence[str] = (),
    allow_partial: bool = False,
    bn_epsilon: float | None = None,
    optimizer: OptimizerPolicy = "reset",
    reference: str | None = None,
    expect_same: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
    smoke: bool = True,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    load_inputs: PathLike | None = None,
    imports: Sequence[str] = (),
    unsafe: bool = False,
    dry_run: bool = False,
    config: PathLike | None = None,
) -> PortReport:
    """Map the PyTorch state dict ``state`` (``.pt``/``.pth``, ``.safetensors`` or ``.npz``)
    onto the Keras model and write it to ``out``; ``dry_run`` reports the mapping only.

    Each tensor goes into the variable it fits by kind and shape, in the order of both
    (no name table); ``maps`` (``"REGEX=>LAYER"``) decides what that cannot. Nothing is
    written while a tensor is left over (``allow_partial`` writes the rest) or a ported
    BatchNormalization's epsilon differs from ``bn_epsilon`` (PyTorch's 1e-5 by default;
    given, it is written into their config). ``optimizer`` as for :func:`set_weights`.
    ``report.tensors`` lists where every tensor went.

    ``reference`` checks the port against PyTorch: a TorchScript file, a ``torch.export``
    ``.pt2`` archive, or ``"module:factory"`` (a function returning the ``nn.Module``, into
    which the state dict is loaded), run on the smoke test's inputs (or ``load_inputs``);
    ``report.smoke.reference`` gives per output the largest absolute error, the error
    relative to the output's scale and the cosine. With ``expect_same`` nothing is written
    if an output differs by more than float32 rounding plus ``atol`` + ``rtol`` x its scale.
    """
    from .instruments.port import PortRequest, port as port_state
    from .instruments.writing import CheckRequest

    request = PortRequest(os.fspath(state), tuple(maps), allow_partial, bn_epsilon, optimizer, reference,
                          Path(load_inputs) if load_inputs is not None else None)
    checks = CheckRequest(smoke=smoke, input_shapes=tuple(input_shapes or ()), unsafe=unsafe, imports=tuple(imports),
                          expect_same=expect_same, atol=atol, rtol=rtol, load_inputs=request.load_inputs)
    options = _write_options(model, out, in_place, dry_run, checks, request.checks,
                             ("conv_surgeon.port", os.fspath(model), os.fspath(state)))
    return port_state(_source(model, config), request, options)


@_speaks_python
@_reads_well(tables=True)
def diff(a: PathLike | bytes, b: PathLike | bytes, *, all_layers: bool = False) -> DiffReport:
    """Compare the convolution weights of two models (every layer's with ``all_layers``)."""
    from .instruments.diff import diff_models

    return diff_models(_source(a), _source(b), all_layers=all_layers)


@_speaks_python
@_reads_well(tables=False)
def show(
    model: PathLike | bytes,
    layer: str | None = None,
    *,
    out: PathLike | None = None,
    against: PathLike | bytes | None = None,
    weight: str | None = None,
    hist: bool = False,
    columns: int | None = None,
    input_channel: int | None = None,
    reduce: Reduce | None = None,
    scale: Scale | None = None,
    kind: Kind | None = None,
    config: PathLike | None = None,
) -> Picture:
    """A picture of ``layer``'s kernel, or with ``hist`` the histograms of its variables
    (``layer=None``: of every convolution layer, a row each). The kernel is drawn as
    ``kind``: "tiles" (one per output filter), "matrix" (a 1x1 kernel: input channels x
    filters) or "taps" (a row of taps per filter); by default the one its shape calls for.

    Returns a :class:`~conv_surgeon.pictures.picture.Picture`: ``.image`` is the RGB
    array, ``.variables`` the numbers it shows (scale, statistics with the counts of zeros
    and non-finite values); a notebook displays it. ``out`` also writes it as PNG,
    atomically. ``against`` draws the model, the other model and their difference side
    by side on one scale. ``input_channel``, ``reduce`` ("mean" or "l2") and ``scale``
    ("layer", "each" or, with ``against``, "panel") choose what a tile shows, as
    ``conv-surgeon show`` does.

    >>> import conv_surgeon as cs
    >>> cs.show("sample_models/tiny_cnn.keras", "conv1").variables[0].tiles
    4
    """
    from .instruments.show import read_shown
    from .pictures.options import GridOptions
    from .pictures.picture import check_picture_path, draw_picture, write_png

    options = GridOptions(columns, input_channel, reduce, scale, kind)
    options.check(hist, against is not None)
    if out is not None:
        check_picture_path(out, [None if isinstance(m, bytes) or m is None else os.fspath(m) for m in (model, against)])
    data = read_shown(_source(model, config), layer, weight=weight, histograms=hist,
                      against=None if against is None else _source(against))
    picture = draw_picture(data, options)
    if out is not None:
        write_png(picture, out)
    return picture


@_speaks_python
@_reads_well(tables=False)
def assign(
    layer: Any, *, kernel: np.ndarray | None = None, bias: np.ndarray | None = None,
    layout: Layout = "keras", **weights: np.ndarray,
) -> list[Assignment]:
    """Put new values into a live Keras convolution layer, built or not.

    The recipe most tutorials teach (``conv.kernel = tf.Variable(...)``) raises on
    Keras 3. This checks every array with the same engine and messages as ``set``,
    builds an unbuilt layer from the kernel's shape, converts from PyTorch layout if
    asked, and assigns. Returns what was assigned.
    """
    from .instruments.live import assign_live

    return assign_live(layer, kernel=kernel, bias=bias, layout=layout, named=weights)


def _requests(kernel: Value | None, bias: Value | None, weights: Mapping[str, Value] | None,
              inits: Mapping[str, str] | None) -> list[WeightRequest]:
    from .instruments.set_weights import WeightRequest

    def request(name: str, value: Value) -> WeightRequest:
        variable = None if name == "kernel" else name
        if isinstance(value, str):
            return WeightRequest(variable, source=value)
        import numpy as np

        return WeightRequest(variable, array=np.asarray(value), origin=f"{name} array")

    named: dict[str, Value] = dict(weights or {})
    for name, value in (("kernel", kernel), ("bias", bias)):
        if value is not None:
            if name in named:
                raise _usage(f"{name} is given twice (as {name}= and in weights=); give it once")
            named[name] = value
    requests = [request(name, value) for name, value in named.items()]
    requests += [WeightRequest(None if name == "kernel" else name, init=spec) for name, spec in (inits or {}).items()]
    if not requests:
        raise _usage("no weight to set; give kernel=, bias=, weights={...} or inits={...}")
    return requests


def _usage(message: str) -> Exception:
    from .errors import UsageError

    return UsageError(message)


def _compared_checks(smoke: bool, input_shapes: Sequence[tuple[int, ...]] | None, unsafe: bool,
                     imports: Sequence[str], atol: float | None, rtol: float | None,
                     load_inputs: PathLike | None, expect_same: bool = False) -> CheckRequest:
    """The checks of a graph surgery (`fold_bn`, `equalize`, `prune`): its smoke test, and
    the comparison with the original as the caller asks."""
    from .instruments.writing import CheckRequest

    return CheckRequest(smoke=smoke, input_shapes=tuple(input_shapes or ()), unsafe=unsafe, imports=tuple(imports),
                        expect_same=expect_same, atol=atol, rtol=rtol,
                        load_inputs=Path(load_inputs) if load_inputs is not None else None)


def _write_options(model: PathLike, out: PathLike | None, in_place: bool, dry_run: bool, checks: CheckRequest,
                   defaults: CheckDefaults, command: tuple[str, ...]) -> WriteOptions:
    """The options of a write from Python, by the factory the command line uses too."""
    from .instruments.writing import WriteRequest, write_options

    if dry_run == (out is not None or in_place):
        raise _usage("give out=PATH or in_place=True to write, or dry_run=True to only check (not both)")
    request = WriteRequest(os.fspath(model), os.fspath(out) if out is not None else None, in_place, dry_run,
                           checks, command)
    return write_options(request, defaults, stdout=None)
