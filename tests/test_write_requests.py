"""Each writing instrument owns its checks: what it compares and the tolerance it holds by
default, and how a user's --compare/--expect-same/--atol/--rtol change that. The command
line and the Python API reach the same options through one factory. No Keras here."""

from __future__ import annotations

from pathlib import Path

import pytest

import conv_surgeon as cs
from conv_surgeon.cli.write_options import WriteArgs
from conv_surgeon.errors import UsageError
from conv_surgeon.instruments.fold import FoldRequest
from conv_surgeon.instruments.prune import PruneRequest
from conv_surgeon.instruments.set_weights import SetRequest
from conv_surgeon.instruments.writing import CheckRequest, WriteRequest, write_options
from conv_surgeon.runtime.checks import FUNCTION_KEPT, SmokeOptions, Tolerance

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "sample_models" / "tiny_cnn.keras"


def test_set_compares_only_when_asked() -> None:
    assert SetRequest.checks.smoke_options(CheckRequest()) == SmokeOptions()
    asked = SetRequest.checks.smoke_options(CheckRequest(compare=True, expect_same=True, rtol=1e-3))
    assert asked.compare and asked.expect_same == Tolerance(atol=Tolerance().atol, rtol=1e-3)
    with pytest.raises(UsageError, match="--expect-same needs --compare"):
        SetRequest.checks.smoke_options(CheckRequest(expect_same=True))


def test_fold_compares_and_expects_the_function_kept() -> None:
    options = FoldRequest().checks.smoke_options(CheckRequest())
    assert options.compare and options.expect_same == FUNCTION_KEPT
    loose = FoldRequest().checks.smoke_options(CheckRequest(atol=1e-4))
    assert loose.expect_same == Tolerance(atol=1e-4, rtol=0.0, float32_sums=True)
    # --expect-same is implied: given, it changes nothing and needs no --compare.
    assert FoldRequest().checks.smoke_options(CheckRequest(expect_same=True)) == options
    assert FoldRequest().checks.smoke_options(CheckRequest(smoke=False)) == SmokeOptions(enabled=False)


def test_prune_compares_and_expects_the_same_only_for_zeros() -> None:
    plain = PruneRequest(("conv1",), smallest_l1="1").checks.smoke_options(CheckRequest())
    assert plain.compare and plain.expect_same is None
    asked = PruneRequest(("conv1",), smallest_l1="1").checks.smoke_options(CheckRequest(expect_same=True))
    assert asked.expect_same == Tolerance()
    zeros = PruneRequest(every=True, zeros=True).checks.smoke_options(CheckRequest(rtol=1e-6))
    assert zeros.expect_same == Tolerance(atol=0.0, rtol=1e-6, float32_sums=True)


def test_no_smoke_refuses_what_needs_keras() -> None:
    for checks in (CheckRequest(smoke=False, compare=True), CheckRequest(smoke=False, imports=("m",)),
                   CheckRequest(smoke=False, load_inputs=Path("x.npz"))):
        with pytest.raises(UsageError, match="drop"):
            SetRequest.checks.smoke_options(checks)


def test_the_command_line_and_the_api_build_the_same_options(tmp_path: Path) -> None:
    """`fold-bn --atol 1e-4 -o OUT` and the API's request meet in one factory."""
    out = tmp_path / "o.keras"
    cli = WriteArgs(output=str(out), atol=1e-4).options_for(str(TINY), FoldRequest.checks)
    api = write_options(WriteRequest(str(TINY), str(out), checks=CheckRequest(atol=1e-4), command=cli.command),
                        FoldRequest.checks, stdout=None)
    assert cli == api
    assert cli.smoke.expect_same == Tolerance(atol=1e-4, rtol=0.0, float32_sums=True)


def test_the_api_has_no_stdout(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not write to"):
        write_options(WriteRequest(str(TINY), "-"), SetRequest.checks, stdout=None)
    with pytest.raises(UsageError, match="give out=PATH"):
        cs.fold_bn(TINY)


def test_help_states_the_defaults_the_instruments_hold(cli) -> None:
    text = " ".join(cli("set", "--help").stdout.split())
    assert f"default {Tolerance().atol:g}" in text and f"default {FUNCTION_KEPT.atol:g} there" in text
