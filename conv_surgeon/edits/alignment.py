"""Sequence alignment of two ordered lists under a compatibility test, and whether it is
the only one.

`port` lines up a Keras model's layers (in the model's order) with a state dict's modules
(in the file's order). Neither list need be complete, so this is an alignment, not a zip:
it keeps both orders, pairs only compatible items, and makes as many pairs as it can
(the longest common subsequence under ``score``; a pair's score adds a small bonus for
a name that hints at it). It is not a greedy guess: every alignment that scores as well
is considered, and the result says, for each item, every partner (or none) it has in one
of them. The alignment is the answer only when that is one partner for every item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A pair's score: None when the two items are not compatible, else a positive int.
Score = Callable[[int, int], "int | None"]


@dataclass(frozen=True)
class Alignment:
    """The best alignments of a left list (length ``m``) and a right one (``n``).

    ``left_options[i]``: the right items that left item ``i`` is paired with in one best
    alignment or another, with None among them when some best alignment leaves it out;
    ``right_options`` the same from the right. ``pairs`` is one best alignment (the one
    when :attr:`unique`), in order.
    """

    left_options: tuple[tuple[int | None, ...], ...]
    right_options: tuple[tuple[int | None, ...], ...]
    pairs: tuple[tuple[int, int], ...]
    score: int

    @property
    def unique(self) -> bool:
        return all(len(o) == 1 for o in self.left_options) and all(len(o) == 1 for o in self.right_options)

    def first_ambiguity(self) -> tuple[str, int, tuple[int | None, ...]] | None:
        """The first item that has more than one option: ("left" or "right", its index,
        its options); None when the alignment is unique."""
        for side, options in (("left", self.left_options), ("right", self.right_options)):
            for index, found in enumerate(options):
                if len(found) > 1:
                    return side, index, found
        return None


def align(m: int, n: int, score: Score) -> Alignment:
    """Align ``m`` left items with ``n`` right ones, keeping both orders, maximizing the
    summed score of the pairs (``score(i, j)``, None when ``i`` and ``j`` cannot pair)."""
    scores = [[score(i, j) for j in range(n)] for i in range(m)]
    # forward[i][j]: best over the first i left and first j right items;
    # backward[i][j]: best over left items i.. and right items j.. .
    forward = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        row, above, cells = forward[i], forward[i - 1], scores[i - 1]
        for j in range(1, n + 1):
            best = max(above[j], row[j - 1])
            pair = cells[j - 1]
            if pair is not None and above[j - 1] + pair > best:
                best = above[j - 1] + pair
            row[j] = best
    backward = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(m - 1, -1, -1):
        row, below, cells = backward[i], backward[i + 1], scores[i]
        for j in range(n - 1, -1, -1):
            best = max(below[j], row[j + 1])
            pair = cells[j]
            if pair is not None and below[j + 1] + pair > best:
                best = below[j + 1] + pair
            row[j] = best
    total = forward[m][n]
    left: list[list[int | None]] = [[] for _ in range(m)]
    right: list[list[int | None]] = [[] for _ in range(n)]
    for i in range(m):
        for j in range(n):
            pair = scores[i][j]
            if pair is not None and forward[i][j] + pair + backward[i + 1][j + 1] == total:
                left[i].append(j)
                right[j].append(i)
        # Left out: some best path steps from (i, j) to (i + 1, j).
        if any(forward[i][j] + backward[i + 1][j] == total for j in range(n + 1)):
            left[i].append(None)
    for j in range(n):
        if any(forward[i][j] + backward[i][j + 1] == total for i in range(m + 1)):
            right[j].append(None)
    return Alignment(tuple(tuple(o) for o in left), tuple(tuple(o) for o in right),
                     _one_best(scores, forward, m, n), total)


def _one_best(scores: Sequence[Sequence[int | None]], forward: Sequence[Sequence[int]],
              m: int, n: int) -> tuple[tuple[int, int], ...]:
    """One best alignment, traced back through ``forward``."""
    pairs: list[tuple[int, int]] = []
    i, j = m, n
    while i > 0 and j > 0:
        pair = scores[i - 1][j - 1]
        if pair is not None and forward[i - 1][j - 1] + pair == forward[i][j]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif forward[i - 1][j] == forward[i][j]:
            i -= 1
        else:
            j -= 1
    return tuple(reversed(pairs))
