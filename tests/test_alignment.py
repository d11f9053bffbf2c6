"""The sequence alignment under `port`: both orders kept, as many pairs as can be, and the
answer only when no other alignment scores as well."""

from __future__ import annotations

from conv_surgeon.edits.alignment import align


def aligned(left: list[str], right: list[str], hints: dict[tuple[int, int], int] | None = None):
    """Items pair when their kinds (the text before ':') are equal; a hint adds to the score."""
    def score(i: int, j: int) -> int | None:
        if left[i].split(":")[0] != right[j].split(":")[0]:
            return None
        return len(left) + 1 + (hints or {}).get((i, j), 0)

    return align(len(left), len(right), score)


def test_both_orders_are_kept_and_what_fits_nothing_is_left_out() -> None:
    result = aligned(["conv", "bn", "extra", "fc"], ["conv", "bn", "fc"])
    assert result.unique
    assert result.pairs == ((0, 0), (1, 1), (3, 2))
    assert result.left_options[2] == (None,)


def test_a_repeated_kind_pairs_in_order_when_both_sides_hold_as_many() -> None:
    result = aligned(["conv", "conv", "conv"], ["conv", "conv", "conv"])
    assert result.unique and result.pairs == ((0, 0), (1, 1), (2, 2))


def test_one_too_many_of_a_kind_is_ambiguous_and_says_where() -> None:
    result = aligned(["conv", "conv"], ["conv"])
    assert not result.unique
    assert result.first_ambiguity() == ("left", 0, (0, None))
    assert result.right_options == ((0, 1),)


def test_crossed_orders_cannot_pair_everything() -> None:
    # Keras lists the shortcut (0) between the main path's convs; PyTorch after them.
    result = aligned(["a:1", "a:0", "b:2"], ["a:c1", "b:c2", "a:ds"])
    assert len(result.pairs) == 2 and not result.unique


def test_a_name_hint_decides_between_alignments_that_pair_as_many() -> None:
    plain = aligned(["conv", "conv"], ["conv"])
    hinted = aligned(["conv", "conv"], ["conv"], hints={(1, 0): 1})
    assert not plain.unique
    assert hinted.unique and hinted.pairs == ((1, 0),)
