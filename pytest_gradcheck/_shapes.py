"""Failing blocks whose analytic gradient is the right one rearranged.

Three common backward bugs give a gradient with the right values in the wrong places:
a square weight's gradient returned transposed (``dW.T``), a gradient shifted by one
index along an axis (an off-by-one in a loop or a convolution's backward, like
``np.roll(g, 1, axis)``), and two same-shape blocks' gradients returned in each other's
place (``return dW2, dW1``). Each fails the check, but the constant-factor and the
zero hints say nothing about it. Here each candidate rearrangement of a failing block's
analytic gradient is compared with the numeric values the check already has (no
evaluation of f): one that agrees at every comparison that counts, the direction
included where it counts, and tells itself from the analytic gradient there (see
`_agrees`), explains the failure, and the engine says so in a notice (`SHAPE_NOTICE`)
that `_text.hints` turns into a hint. In a loss returned as one sum (data + weight
decay), a rearranged part of the gradient is searched too (`_parts`), where the
comparisons decide it.

Runs only for the losses whose check failed, and only over their failing blocks: a
passing check pays nothing, and no verdict changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ._notices import SHAPE_NOTICE
from ._pairs import Pair, pair_tier
from ._result import Result
from ._tiers import Tier

#: fewest comparisons a candidate must agree at that tell it from the analytic gradient
#: (it agrees there, the analytic gradient does not; coordinates and direction)
MIN_COMPARISONS = 2


class _Block(Protocol):
    """What this module reads of the engine's `_Checked`."""

    block: int
    direction: np.ndarray | None
    dpair: Pair | None

    def rows(self) -> tuple[np.ndarray, list[Pair]]: ...


def _agrees(
    c: _Block,
    at: Callable[[np.ndarray], np.ndarray | None],
    moved: Callable[[np.ndarray], np.ndarray],
    whole: Callable[[], np.ndarray | None],
    g: np.ndarray,
    loss: str | None,
    scale: float,
    limit: Tier,
) -> int:
    """How many comparisons of block `c` a candidate gradient agrees with, up to
    `limit`; 0 where it disagrees with one, or where it does not tell itself from the
    analytic gradient `g` (comparisons that crossed a kink are left out). `at(idx)`
    gives the candidate's values at flat indices (None: not known at all of them),
    `moved(idx)` whether the candidate reads each elsewhere than `g` does (the diagonal
    of a transpose does not), `whole()` all of it (None: not known), built only for
    the direction, once every coordinate agreed.

    A candidate tells itself from `g` at a comparison where it agrees and `g` does not.
    At one where both agree, the candidate only inherits `g`'s agreement: a nearly
    constant gradient shifted, a symmetric one transposed, or a block's gradient equal
    to another's is nearly the same gradient, so it agrees wherever `g` does and, at a
    single wrong entry, where the entries around it are right. So it must tell itself
    from `g` at `MIN_COMPARISONS` comparisons at least, and at more of the comparisons
    it moves than those where it only inherits `g`'s agreement."""
    idx, pairs = c.rows()
    values = at(idx) if len(idx) else np.zeros(0)
    if values is None:
        return 0
    shifted = moved(idx).tolist() if len(idx) else []
    own = g[idx].tolist() if len(idx) else []
    count = telling = inherited = 0
    for value, mine, m, p in zip(values.tolist(), own, shifted, pairs, strict=True):
        if p.crossed():
            continue
        if pair_tier(p, float(value), loss, scale) > limit:
            return 0
        count += 1
        if not m:
            continue
        if pair_tier(p, float(mine), loss, scale) > limit:
            telling += 1
        else:
            inherited += 1
    p, v = c.dpair, c.direction
    if p is not None and v is not None and p.usable():
        full = whole()
        if full is None or pair_tier(p, float(v @ full), loss, scale) > limit:
            return 0
        count += 1
        if pair_tier(p, float(v @ g), loss, scale) > limit:
            telling += 1
        else:
            inherited += 1
    return count if telling >= MIN_COMPARISONS and telling > inherited else 0


#: a candidate: (kind, shift s, axis or None, the flat index of `g` it reads at each
#: flat index, all of it)
_Candidate = tuple[
    str, int, "int | None", Callable[[np.ndarray], np.ndarray], Callable[[], np.ndarray]
]


def _mirror(shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """The flat index of each flat index's transpose (the last two axes swapped)."""

    def at(idx: np.ndarray) -> np.ndarray:
        multi = list(np.unravel_index(idx, shape))
        multi[-1], multi[-2] = multi[-2], multi[-1]
        return np.ravel_multi_index(tuple(multi), shape)

    return at


def _square(shape: tuple[int, ...]) -> bool:
    """Whether a block is a square matrix (or a batch of them)."""
    return len(shape) >= 2 and shape[-1] == shape[-2] >= 2


def _rearranged(g: np.ndarray, shape: tuple[int, ...]) -> list[_Candidate]:
    """Candidate true gradients, if the analytic one `g` (flat) were rearranged:
    ``"transposed"`` for a square block (or a batch of square matrices), then
    ``"shifted"`` by s = ±1 along each axis (axis None: the flat index), undone. Each
    says where it reads `g` at the sampled indices without building the whole
    candidate."""
    out: list[_Candidate] = []
    x = g.reshape(shape)
    n = g.size

    def moved(axis: int, by: int) -> Callable[[np.ndarray], np.ndarray]:
        def at(idx: np.ndarray) -> np.ndarray:
            multi = list(np.unravel_index(idx, shape))
            multi[axis] = (multi[axis] + by) % shape[axis]
            return np.ravel_multi_index(tuple(multi), shape)

        return at

    if _square(shape):
        out.append(
            (
                "transposed",
                0,
                None,
                _mirror(shape),
                lambda: np.ascontiguousarray(np.swapaxes(x, -1, -2)).ravel(),
            )
        )
    axes: list[int | None] = [a for a in range(len(shape)) if shape[a] >= 2]
    if len(shape) != 1 and n >= 2:
        axes.append(None)  # (a 1-d block's flat shift is its axis 0's)
    for axis in axes:
        for s in (1, -1):
            # the analytic gradient is the true one rolled by s: the true one at i is
            # the analytic one at i + s
            if axis is None:
                out.append(
                    (
                        "shifted",
                        s,
                        None,
                        lambda idx, s=s: (idx + s) % n,
                        lambda s=s: np.roll(g, -s),
                    )
                )
            else:
                out.append(
                    (
                        "shifted",
                        s,
                        axis,
                        moved(axis, s),
                        lambda s=s, axis=axis: np.roll(x, -s, axis=axis).ravel(),
                    )
                )
    return out


def _numeric(c: _Block, loss: str | None, scale: float) -> dict[int, float]:
    """The numeric values of block `c`'s counted coordinates (none that crossed a
    kink), by flat index, times the loss factor: what the parts' candidates read."""
    idx, pairs = c.rows()
    out = {}
    for i, p in zip(idx.tolist(), pairs, strict=True):
        if not p.crossed():
            out[i] = p.quotient(loss)[0] * scale
    return out


def _known(n: dict[int, float], size: int) -> np.ndarray | None:
    """The whole numeric gradient of a block, where every coordinate was compared."""
    if len(n) < size:
        return None
    return np.array([n[i] for i in range(size)])


def _with(n: dict[int, float], idx: np.ndarray) -> np.ndarray | None:
    """The numeric values at flat indices `idx`, None where one was not compared."""
    try:
        return np.array([n[i] for i in idx.tolist()], dtype=np.float64)
    except KeyError:
        return None


def _everywhere(idx: np.ndarray) -> np.ndarray:
    """Every index moved: another block's gradient read in place of the block's own."""
    return np.ones(len(idx), dtype=bool)


def shape_warnings(
    results: dict[str | None, Result],
    blocks: Sequence[_Block],
    gradient_of: Callable[[str | None, int], np.ndarray],
    point_of: Callable[[int], object],
    scale: float,
    warnings: list[str],
) -> None:
    """Notice each failing block that a rearranged analytic gradient explains.

    `results` are the check's per loss (None: the total), `blocks` its comparisons,
    `gradient_of(loss, b)` block b's flat analytic gradient for a loss (times the loss
    factor `scale`), `point_of(b)` the point block b was compared at (blocks moved off
    their ties were compared elsewhere: no swap across points). A candidate must agree
    at every comparison that counts, at the check's tolerance and no looser than *ok*,
    and tell itself from the analytic gradient (see `_agrees`): a symmetric block's
    transpose (nearly the same gradient) explains nothing.

    Then, for the failing blocks no rearrangement of a whole loss's gradient explains,
    a rearranged part (`_parts`): a term's gradient transposed or swapped beside a
    right one, in a loss returned as their sum.
    """
    seen: set[tuple[str, ...]] = set()
    explained: set[int] = set()  # (in any loss: each explanation is given once)
    failed: list[tuple[str | None, Result, Tier, str, list[int]]] = []
    for loss, result in results.items():
        if result.passed:
            continue
        limit = min(result.tolerance, Tier.OK)
        where = f" of term {loss!r}" if loss is not None else ""
        failing = [b for b, r in enumerate(result.blocks) if not r.passed]
        failed.append((loss, result, limit, where, failing))
        here: set[int] = set()
        # two same-shape failing blocks, each explained by the other's analytic gradient
        for b1, b2 in _same_shape(result, failing, point_of):
            if b1 in here or b2 in here:
                continue
            g1, g2 = gradient_of(loss, b1), gradient_of(loss, b2)
            k1 = _agrees(
                blocks[b1], g2.__getitem__, _everywhere, lambda g=g2: g, g1, loss, scale, limit
            )
            k2 = k1 and _agrees(
                blocks[b2], g1.__getitem__, _everywhere, lambda g=g1: g, g2, loss, scale, limit
            )
            if not k2:
                continue
            here |= {b1, b2}
            _swapped(result, b1, b2, where, k1 + k2, False, seen, warnings)
        for b in failing:
            if b in here:
                continue
            r = result.blocks[b]
            g = gradient_of(loss, b)
            for kind, s, axis, src, whole in _rearranged(g, tuple(r.shape)):
                k = _agrees(
                    blocks[b],
                    lambda idx, src=src, g=g: g[src(idx)],
                    lambda idx, src=src: src(idx) != idx,
                    whole,
                    g,
                    loss,
                    scale,
                    limit,
                )
                if not k:
                    continue
                here.add(b)
                key = (kind, r.name, str(s), str(axis))
                if key not in seen:
                    seen.add(key)
                    if kind == "transposed":
                        what = "transposed"
                    else:
                        along = "its flat index" if axis is None else f"axis {axis}"
                        roll = (
                            f"np.roll(g, {s})" if axis is None else f"np.roll(g, {s}, axis={axis})"
                        )
                        what = f"shifted by {s:+d} along {along} ({roll})"
                    warnings.append(
                        f"block {r.name!r}{where} fails {SHAPE_NOTICE}: its analytic gradient is "
                        f"the numeric one {what}, at each of the {k} comparisons that count"
                    )
                break
        explained |= here
    for loss, result, limit, where, failing in failed:
        _parts(
            loss,
            result,
            [b for b in failing if b not in explained],
            blocks,
            gradient_of,
            point_of,
            scale,
            limit,
            where,
            seen,
            warnings,
        )


def _same_shape(
    result: Result, failing: list[int], point_of: Callable[[int], object]
) -> list[tuple[int, int]]:
    """The pairs of failing blocks of one shape compared at one point."""
    return [
        (b1, b2)
        for j, b1 in enumerate(failing)
        for b2 in failing[j + 1 :]
        if result.blocks[b1].shape == result.blocks[b2].shape and point_of(b1) is point_of(b2)
    ]


def _swapped(
    result: Result,
    b1: int,
    b2: int,
    where: str,
    k: int,
    part: bool,
    seen: set[tuple[str, ...]],
    warnings: list[str],
) -> None:
    """Notice blocks b1 and b2 swapped (`part`: a part of each), once."""
    r1, r2 = result.blocks[b1], result.blocks[b2]
    key = ("swapped", r1.name, r2.name)
    if key in seen:
        return
    seen.add(key)
    if part:
        what = (
            "a part of the analytic gradient of each is the numeric gradient of the other "
            "(the analytic minus the numeric gradient of one is the numeric minus the "
            "analytic gradient of the other: g1 = D2 + R1 and g2 = D1 + R2 where the "
            "numeric ones are D1 + R1 and D2 + R2)"
        )
    else:
        what = "the analytic gradient of each is the numeric gradient of the other"
    warnings.append(
        f"blocks {r1.name!r} and {r2.name!r}{where} both fail {SHAPE_NOTICE}: {what}, at "
        f"each of the {k} comparisons that count"
    )


def _parts(
    loss: str | None,
    result: Result,
    failing: list[int],
    blocks: Sequence[_Block],
    gradient_of: Callable[[str | None, int], np.ndarray],
    point_of: Callable[[int], object],
    scale: float,
    limit: Tier,
    where: str,
    seen: set[tuple[str, ...]],
    warnings: list[str],
) -> None:
    """Notice the failing blocks whose analytic gradient is a part rearranged beside a
    right rest, in a loss returned as one sum (data + weight decay): g = D.T + R where
    the numeric gradient is n = D + R. The rest R makes no whole rearrangement agree,
    but it cancels in g - n = D.T - D, which is antisymmetric: the candidate true value
    at (i, j) is g[i, j] + g[j, i] - n[j, i] (and, for two swapped blocks, g1 = D2 + R1
    and g2 = D1 + R2, the candidate at k of one is g1[k] + g2[k] - n2[k]). It reads
    the numeric value at the mirrored coordinate (the other block's), so it can be
    checked only where that was compared, and the direction only where the whole block
    was: a candidate that cannot be checked at every comparison that counts explains
    nothing (with a sample smaller than the block, in practice, `samples_per_block=None`
    decides). A part shifted by one index is not searched: D rolled minus D is any
    error whose sums along the axis are 0, which many other bugs make (a softmax's)."""
    numeric = {b: _numeric(blocks[b], loss, scale) for b in failing}
    here: set[int] = set()
    for b1, b2 in _same_shape(result, failing, point_of):
        if b1 in here or b2 in here:
            continue
        g1, g2 = gradient_of(loss, b1), gradient_of(loss, b2)
        n1, n2 = numeric[b1], numeric[b2]
        k1 = _part_agrees(blocks[b1], g1, g2, n2, None, loss, scale, limit)
        k2 = k1 and _part_agrees(blocks[b2], g2, g1, n1, None, loss, scale, limit)
        if not k2:
            continue
        here |= {b1, b2}
        _swapped(result, b1, b2, where, k1 + k2, True, seen, warnings)
    for b in failing:
        r = result.blocks[b]
        shape = tuple(r.shape)
        if b in here or not _square(shape):
            continue
        g = gradient_of(loss, b)
        k = _part_agrees(blocks[b], g, g, numeric[b], _mirror(shape), loss, scale, limit)
        if not k:
            continue
        key = ("transposed part", r.name)
        if key in seen:
            continue
        seen.add(key)
        warnings.append(
            f"block {r.name!r}{where} fails {SHAPE_NOTICE}: its analytic gradient is the "
            "numeric one with a part transposed (the analytic minus the numeric gradient "
            "is antisymmetric: g = D.T + R where the numeric one is D + R), at each of the "
            f"{k} comparisons that count"
        )


def _part_agrees(
    c: _Block,
    g: np.ndarray,
    other: np.ndarray,
    n: dict[int, float],
    mirror: Callable[[np.ndarray], np.ndarray] | None,
    loss: str | None,
    scale: float,
    limit: Tier,
) -> int:
    """`_agrees` for the candidate g + (other - n), `other` and the numeric values `n`
    read at the mirrored index (at the same index where `mirror` is None): unknown
    where a numeric value it reads was not compared, and as a whole unless every
    coordinate was."""

    def source(idx: np.ndarray) -> np.ndarray:
        return idx if mirror is None else mirror(idx)

    def at(idx: np.ndarray) -> np.ndarray | None:
        src = source(idx)
        known = _with(n, src)
        return None if known is None else g[idx] + other[src] - known

    def whole() -> np.ndarray | None:
        known = _known(n, g.size)
        if known is None:
            return None
        src = source(np.arange(g.size))
        return g + other[src] - known[src]

    moved = _everywhere if mirror is None else (lambda idx: mirror(idx) != idx)
    return _agrees(c, at, moved, whole, g, loss, scale, limit)
