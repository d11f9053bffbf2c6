"""A written model checked against PyTorch (``--reference``), as a table or JSON: per output
the largest absolute and relative error and the cosine similarity, and the tolerance kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..model.naming import format_shape
from .text import Column, finite_or_none, plural, print_table

if TYPE_CHECKING:
    from rich.console import Console

    from ..runtime.checks import ReferenceOutput, Tolerance, TorchComparison


def reference_document(comparison: TorchComparison) -> dict[str, Any]:
    tolerance = comparison.tolerance
    return {
        "reference": comparison.reference.spec,
        "kind": comparison.reference.kind,
        "torch": comparison.torch_version,
        "threads": comparison.threads,
        "layout": comparison.layout,
        "inputs": [{"shape": list(s), "origin": o} for s, o in zip(comparison.inputs, comparison.input_origins)],
        "state_tensors": comparison.state_tensors,
        "outputs": [
            {"name": o.name, "shape": list(o.shape), "max_abs": o.max_abs, "max_rel": finite_or_none(o.max_rel),
             "scale": o.scale, "cosine": o.cosine,
             "worst": {"index": list(o.worst), "keras": o.keras_value, "torch": o.torch_value},
             **({"allowed": o.allowed(tolerance, comparison.sums),
                 "used": finite_or_none(o.used(tolerance, comparison.sums))} if tolerance is not None else {})}
            for o in comparison.outputs
        ],
        "expect_same": None if tolerance is None else {
            "atol": tolerance.atol, "rtol": tolerance.rtol, "float32_sums": tolerance.float32_sums,
            "sums": comparison.sums},
        "notes": list(comparison.notes),
    }


def print_reference(out: Console, comparison: TorchComparison) -> None:
    """How the written model's outputs stood against the PyTorch reference's."""
    loaded = (f"; {plural(comparison.state_tensors, 'tensor')} of the state dict loaded into it"
              if comparison.state_tensors else "")
    out.print(f"checked against PyTorch {comparison.torch_version} ({comparison.reference.label}, "
              f"{plural(comparison.threads, 'thread')}): {comparison.layout}{loaded}")
    print_table(out, [Column("output", keep=False), Column("shape"), *(
        Column(header, right=True) for header in ("max abs err", "max rel err", "scale", "cosine"))],
        [(o.name, format_shape(o.shape), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.scale:.3g}",
          f"{o.cosine:.6f}") for o in comparison.outputs])
    if comparison.tolerance is not None:
        for output in comparison.outputs:
            out.print(_within(output, comparison.tolerance, comparison.sums))
    for note in comparison.notes:
        out.print(f"note: {note}")


def _within(output: ReferenceOutput, tolerance: Tolerance, sums: int) -> str:
    return (f"{output.name} the same as PyTorch within {output.allowance(tolerance, sums)}: max abs error "
            f"{output.max_abs:.3g}, {output.used(tolerance, sums):.1%} of what is allowed")
