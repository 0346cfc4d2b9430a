"""The winner-signature protocol and the kink-crossing policy.

A tracker (one per backend) watches an evaluation of f and feeds every max-like
decision it sees (a ReLU mask, which argument of `maximum` won, the arg-max of a
pooling window, the side of a clip, a sort order, a comparison) into a
`SignatureRecorder`. Two evaluations took the same branches exactly when their
digests are equal; if the digests of f(x+h) and f(x-h) differ, the difference quotient
straddles a kink.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import numpy as np


class SignatureRecorder:
    """Accumulates the decisions of one evaluation into a digest."""

    __slots__ = ("_hash", "count")

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.count = 0

    def record(self, op: str, decision: bytes) -> None:
        """Record one decision: the op's name and the bytes of its outcome."""
        self._hash.update(op.encode())
        self._hash.update(len(decision).to_bytes(8, "little"))
        self._hash.update(decision)
        self.count += 1

    def digest(self) -> bytes:
        return self._hash.digest()


#: The signature of an evaluation that recorded no decision (the backends' fast paths
#: give it without running a tracker).
EMPTY_SIGNATURE: bytes = SignatureRecorder().digest()

#: The step divisors tried, in order, when a difference crosses a kink.
RETRY_DIVISORS: tuple[float, ...] = (10.0, 100.0)


def crossed(plus: bytes | None, minus: bytes | None) -> bool:
    """Whether two tracked evaluations took different branches."""
    return plus is not None and minus is not None and plus != minus


# -- the shift test -------------------------------------------------------------------
#
# A max or min reduction is a decision (which entry wins) whose value the loss may not
# depend on at all: the stabilizing max of a softmax or a log-sum-exp, ``s - max(s)``,
# cancels exactly. Such a max is no kink of the loss, and must not relax the default
# tolerance. Where every decision at the checked point comes from such reductions, the
# backend evaluates f once more with each reduction's value moved by `shift_offsets`;
# if no loss changes (`unchanged`), the reductions are shifts, not kinks: the check's
# evaluations no longer record them.

#: the offsets lie in [SHIFT, 2 SHIFT): O(1), so an exp of a shifted score neither
#: overflows nor loses its digits, yet far above round-off for a loss that reads them
SHIFT = 0.5

#: a loss counts as unchanged by the shift within this relative difference: its
#: round-off, for softmax cross-entropies of 3 to 100 classes and scores up to 100, is
#: 0 to 2e-16; a genuine dependence is the offset times the loss's derivative in the
#: max, so the tighter the bound, the smaller a kink it still sees (a loss far from
#: 0 whose max enters with a weight below 1e-12 of it passes for a shift)
SHIFT_RTOL = 1e-12

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def shift_offsets(count: int, ordinal: int) -> np.ndarray:
    """The offsets added to the `count` values of an evaluation's `ordinal`-th reduction.

    Distinct for every value and reduction (a Weyl sequence), so that no combination of
    genuine dependences cancels out: ``max(a) - max(b)`` changes, as does the difference
    of two rows' maxima.
    """
    start = (ordinal + 1) * 0.7548776662466927  # the plastic ratio's inverse: another step
    return SHIFT * (1.0 + (start + np.arange(count) * _GOLDEN) % 1.0)


def unchanged(a: float, b: float) -> bool:
    """Whether the shift test left a loss as it was (to round-off)."""
    if a == b:
        return True
    return abs(a - b) <= SHIFT_RTOL * max(abs(a), abs(b))


def shift_invariant(
    center: tuple[float, Mapping[str, float]], shifted: tuple[float, Mapping[str, float]]
) -> bool:
    """Whether the shift test's ``(loss, terms)`` are the checked point's: the same terms,
    each value `unchanged`."""
    (loss, terms), (moved, moved_terms) = center, shifted
    return (
        unchanged(moved, loss)
        and set(moved_terms) == set(terms)
        and all(unchanged(v, terms[k]) for k, v in moved_terms.items())
    )


def shift_testable(reductions: int, others: int, flippable: int, winners: int) -> bool:
    """Whether the shift test is worth its evaluation at a checked point.

    Every decision must be one it can move (`reductions`) or flip (`flippable` of the
    `others`). Where the flippable ones are all maxima or minima of two values
    (`winners`: ReLUs, hinges, one-sided clamps), they are the kinks of a ReLU network
    or a margin loss, not one of the stable formulas (those also compare, or take an
    abs), and the test is skipped: it would only confirm the kinks.
    """
    if others != flippable:
        return False
    return flippable > winners if flippable else reductions > 0
