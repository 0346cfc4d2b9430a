"""A block's direction beyond its first comparison: localizing the coordinate behind
a failing direction (bisection), how bad a direction may be before that is done, and
a direction through an exact tie taken again around it.

Each evaluates f through the engine's `Counter`, so its evaluations are counted.
"""

from __future__ import annotations

import numpy as np

from ._pairs import Counter, Pair, make_pair
from ._tiers import Tier


def localize_above(pair: Pair, tolerance: Tier, strict: bool) -> Tier:
    """The worst tier a block's direction may show before bisection looks for the
    coordinate behind it.

    The tolerance, except in a check of a function with kinks under the default
    tolerance (`strict`): that tolerance (ok) allows for the error of a difference
    that crosses a kink, but a direction that crossed none is a smooth comparison,
    which a correct gradient passes as happy. An error of ok size there is what a wrong
    entry among many looks like (one entry 10% off in a 500 x 500 block moves v·g by
    1e-4), so it is localized as a failing direction is; the verdict is still the
    tolerance's, on the errors of the direction and of the coordinate found.
    """
    if strict and not pair.crossed():
        return Tier.HAPPY
    return tolerance


def bisect(
    counter: Counter,
    b: int,
    v: np.ndarray,
    whole: Pair,
    g: np.ndarray,
    loss: str | None,
    scale: float,
) -> int | None:
    """Find the coordinate that makes a direction fail, halving its support each time."""
    idx = np.flatnonzero(v)  # (a direction around ties is zero on their parts)
    a_all = float(v @ g)
    n_all = whole.quotient(loss)[0] * scale
    while idx.size > 1:
        half, other = idx[: idx.size // 2], idx[idx.size // 2 :]
        pair = make_pair(b, half, v[half], whole.step, whole.value_floor, whole.reference)
        counter.run([pair])
        if pair.crossed():
            return None
        a_half = float(v[half] @ g[half])
        n_half = pair.quotient(loss)[0] * scale
        err_half = abs(a_half - n_half)
        err_other = abs((a_all - a_half) - (n_all - n_half))
        if err_half >= err_other:
            idx, a_all, n_all = half, a_half, n_half
        else:
            idx, a_all, n_all = other, a_all - a_half, n_all - n_half
    return int(idx[0])


#: how many times a direction through an exact tie is halved, at most, to find the
#: parts of its block that do not move the tie (with one tie, all but a 2**-depth
#: share of the block stays covered)
TIE_SPLIT_DEPTH = 4


#: the most parts of a block evaluated while looking for them
TIE_SPLIT_PARTS = 16


def around_ties(
    counter: Counter, b: int, v: np.ndarray, step: float, whole: Pair
) -> tuple[np.ndarray, Pair, float] | None:
    """Block b's direction restricted to the parts of the block that cross no tie.

    A direction moves every coordinate of its block, so an exact tie anywhere in what
    they feed (a ReLU input of exactly 0 from a zero bias on zero padding, tied values
    under a median) excludes the whole direction, and with it the check of every
    coordinate the sample left out. The direction's support is halved, and halved
    again where a half still crosses at every step, down to `TIE_SPLIT_DEPTH`; the
    halves that do not are joined into one direction, checked like the block's own.
    Returns (that direction over the whole block, zero elsewhere; its pair; the share
    of the block it covers), or None when no part avoids the ties.
    """
    kept: list[np.ndarray] = []
    pending = _halves(np.arange(v.size))
    spent = 0
    for depth in range(TIE_SPLIT_DEPTH):
        pending = pending[: max(0, TIE_SPLIT_PARTS - spent)]
        if not pending or (depth >= 2 and not kept):
            break  # (ties all over the block: every quarter crossed one)
        spent += len(pending)
        pairs = [
            make_pair(b, part, v[part], step, whole.value_floor, whole.reference)
            for part in pending
        ]
        counter.run(pairs)
        halved: list[np.ndarray] = []
        for part, pair in zip(pending, pairs, strict=True):
            if pair.usable():
                kept.append(part)
            else:
                halved += _halves(part)
        pending = halved
    if not kept:
        return None
    idx = np.sort(np.concatenate(kept))
    pair = make_pair(b, idx, v[idx], step, whole.value_floor, whole.reference)
    counter.run([pair])
    if not pair.usable():
        return None
    around = np.zeros_like(v)
    around[idx] = v[idx]
    return around, pair, idx.size / v.size


def _halves(part: np.ndarray) -> list[np.ndarray]:
    """The two halves of a part of a block (none of a single coordinate)."""
    if part.size <= 1:
        return []
    return [part[: part.size // 2], part[part.size // 2 :]]


#: the share of ``sum |v_i g_i|`` the sampled coordinates may hold before the direction
#: leaves them out (see `beside_the_sample`)
DOMINATED_SHARE = 0.9


def beside_the_sample(
    v: np.ndarray, grads: list[np.ndarray], sampled: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """The block's direction, without the sampled coordinates where they dominate it.

    ``v·g`` weighs each coordinate by ``|v_i g_i|``. Where a few entries hold nearly all
    of it (a gradient of 3e5 at a log's argument of 3e-6 beside entries of order 1),
    an error elsewhere moves ``v·g`` by less than the happy tier: one entry 2% off among
    400 passed. Those large entries are in the sample (it holds the largest |g| of the
    total and of each term) and checked on their own, so the direction then leaves them
    out (zero there, unit norm) and checks the rest of the block. Returns the direction
    and the coordinates it moves (None: all of them; `v` is returned as it is where the
    sample does not dominate, or is the whole block).
    """
    if sampled.size == 0 or sampled.size >= v.size:
        return v, None
    for g in grads:
        weights = np.abs(v * g)
        total = float(weights.sum())
        if total > 0.0 and float(weights[sampled].sum()) >= DOMINATED_SHARE * total:
            break
    else:
        return v, None
    rest = v.copy()
    rest[sampled] = 0.0
    size = float(np.linalg.norm(rest))
    if size == 0.0:
        return v, None
    moved = np.ones(v.size, dtype=bool)
    moved[sampled] = False
    return rest / size, np.flatnonzero(moved)
