"""Failing blocks whose analytic gradient is the right one rearranged.

Three common backward bugs give a gradient with the right values in the wrong places:
a square weight's gradient returned transposed (``dW.T``), a gradient shifted by one
index along an axis (an off-by-one in a loop or a convolution's backward, like
``np.roll(g, 1, axis)``), and two same-shape blocks' gradients returned in each other's
place (``return dW2, dW1``). Each fails the check, but the constant-factor and the
zero hints say nothing about it. Here each candidate rearrangement of a failing block's
analytic gradient is compared with the numeric values the check already has (no
evaluation of f): one that agrees at every comparison that counts, the direction
included where it counts, explains the failure, and the engine says so in a notice
(`SHAPE_NOTICE`) that `_text.hints` turns into a hint.

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

#: fewest comparisons (coordinates and direction) a candidate must agree at
MIN_COMPARISONS = 2


class _Block(Protocol):
    """What this module reads of the engine's `_Checked`."""

    block: int
    direction: np.ndarray | None
    dpair: Pair | None

    def rows(self) -> tuple[np.ndarray, list[Pair]]: ...


def _agrees(
    c: _Block,
    at: Callable[[np.ndarray], np.ndarray],
    whole: Callable[[], np.ndarray],
    loss: str | None,
    scale: float,
    limit: Tier,
) -> int:
    """How many comparisons of block `c` a candidate gradient agrees with, up to
    `limit`; 0 where it disagrees with one, or agrees with fewer than `MIN_COMPARISONS`
    (comparisons that crossed a kink are left out). `at(idx)` gives the candidate's
    values at flat indices; `whole()` all of it, built only for the direction, once
    every coordinate agreed."""
    idx, pairs = c.rows()
    values = at(idx).tolist() if len(idx) else []
    count = 0
    for value, p in zip(values, pairs, strict=True):
        if p.crossed():
            continue
        if pair_tier(p, float(value), loss, scale) > limit:
            return 0
        count += 1
    p, v = c.dpair, c.direction
    if p is not None and v is not None and p.usable():
        if pair_tier(p, float(v @ whole()), loss, scale) > limit:
            return 0
        count += 1
    return count if count >= MIN_COMPARISONS else 0


#: a candidate: (kind, shift s, axis or None, its values at flat indices, all of it)
_Candidate = tuple[
    str, int, "int | None", Callable[[np.ndarray], np.ndarray], Callable[[], np.ndarray]
]


def _rearranged(g: np.ndarray, shape: tuple[int, ...]) -> list[_Candidate]:
    """Candidate true gradients, if the analytic one `g` (flat) were rearranged:
    ``"transposed"`` for a square block (or a batch of square matrices), then
    ``"shifted"`` by s = ±1 along each axis (axis None: the flat index), undone. Each
    reads `g` at the sampled indices without building the whole candidate."""
    out: list[_Candidate] = []
    x = g.reshape(shape)
    n = g.size

    def moved(axis: int, by: int) -> Callable[[np.ndarray], np.ndarray]:
        def at(idx: np.ndarray) -> np.ndarray:
            multi = list(np.unravel_index(idx, shape))
            if by == 0:  # transposed: swap the last two indices
                multi[-1], multi[-2] = multi[-2], multi[-1]
            else:
                multi[axis] = (multi[axis] + by) % shape[axis]
            return g[np.ravel_multi_index(tuple(multi), shape)]

        return at

    if len(shape) >= 2 and shape[-1] == shape[-2] >= 2:
        out.append(
            (
                "transposed",
                0,
                None,
                moved(-1, 0),
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
                        lambda idx, s=s: g[(idx + s) % n],
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
    at every comparison that counts, at the check's tolerance and no looser than *ok*;
    the analytic gradient itself fails there, so a symmetric block's transpose (the
    same gradient) explains nothing.
    """
    seen: set[tuple[str, ...]] = set()
    for loss, result in results.items():
        if result.passed:
            continue
        limit = min(result.tolerance, Tier.OK)
        where = f" of term {loss!r}" if loss is not None else ""
        failing = [b for b, r in enumerate(result.blocks) if not r.passed]
        explained: set[int] = set()
        # two same-shape failing blocks, each explained by the other's analytic gradient
        for j, b1 in enumerate(failing):
            for b2 in failing[j + 1 :]:
                r1, r2 = result.blocks[b1], result.blocks[b2]
                if b1 in explained or b2 in explained or r1.shape != r2.shape:
                    continue
                if point_of(b1) is not point_of(b2):
                    continue
                g1, g2 = gradient_of(loss, b1), gradient_of(loss, b2)
                k1 = _agrees(blocks[b1], g2.__getitem__, lambda g=g2: g, loss, scale, limit)
                k2 = k1 and _agrees(blocks[b2], g1.__getitem__, lambda g=g1: g, loss, scale, limit)
                if not k2:
                    continue
                explained |= {b1, b2}
                key = ("swapped", r1.name, r2.name)
                if key in seen:
                    continue
                seen.add(key)
                warnings.append(
                    f"blocks {r1.name!r} and {r2.name!r}{where} both fail {SHAPE_NOTICE}: the "
                    "analytic "
                    "gradient of each is the numeric gradient of the other, at each of the "
                    f"{k1 + k2} comparisons that count"
                )
        for b in failing:
            if b in explained:
                continue
            r = result.blocks[b]
            for kind, s, axis, at, whole in _rearranged(gradient_of(loss, b), tuple(r.shape)):
                k = _agrees(blocks[b], at, whole, loss, scale, limit)
                if not k:
                    continue
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
