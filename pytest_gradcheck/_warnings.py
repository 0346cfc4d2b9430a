"""What a check says beside its verdict: warnings about where it could not see well.

A term's gradient swamping another's, gradients outside the active range or zero up to
round-off, a block whose check saw only zeros, round-off that excuses a disagreement,
comparisons mostly excluded at kinks, steps shrunk to stay in f's domain. Each takes
what the engine measured and appends sentences to its list; none evaluates f.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ._notices import DOMINANCE_NOTICE
from ._pairs import NOISE_SIGMAS, NOISE_USABLE, TOTAL, Counter, Pair
from ._result import BlockResult, Result
from ._steps import TINY, norm
from ._tiers import THRESHOLDS, Tier
from .backends._base import BlockSpec, Gradient


def dominance_warnings(
    specs: Sequence[BlockSpec],
    grad: Gradient,
    term_names: Sequence[str],
    ratio: float,
    warnings: list[str],
) -> None:
    """Warn where one term's gradient swamps another's in a block (the seed's reg trap).

    Only named terms can be compared, so f returned a dict of terms here and the check
    already checks each term on its own: the warning says where the total alone would
    hide an error, and that the small term's own check is the one to read.
    """
    if len(term_names) < 2:
        return
    for b, spec in enumerate(specs):
        norms = sorted(
            ((float(np.linalg.norm(grad.terms[t][b])), t) for t in term_names), reverse=True
        )
        (top, big), (second, small) = norms[0], norms[1]
        if second > 0 and top / second >= ratio:
            warnings.append(
                f"in block {spec.name!r} the gradient of term {big!r} dominates that of "
                f"{small!r} ({top / second:.3g}x): an error in {small!r} would hide in the "
                f"total; {DOMINANCE_NOTICE}, so read the verdict of term "
                f"{small!r} (its table, Result.terms) rather than the total's"
            )


def noise_warning(
    spec: BlockSpec,
    pairs: Sequence[Pair],
    block: BlockResult,
    scale: float,
    largest: float,
    warnings: list[str],
) -> None:
    """Say where f's round-off was measured, what it hides, and what became of it.

    Nothing is said where what it hides is below the happy tier's share of the block's
    largest gradient (`largest`, unscaled): the measurement then changes nothing a
    reader of the report could act on (a wrong entry is confirmed, and noise measured,
    even where f is exact to 1e-9).
    """
    measured = [p for p in pairs if p.noise]
    if not measured:
        return
    worst = max(measured, key=lambda p: p.noise.get(TOTAL, 0.0) / p.step)
    limit = NOISE_SIGMAS * worst.noise.get(TOTAL, 0.0) / worst.step * scale
    if limit <= THRESHOLDS[Tier.HAPPY] * largest * scale:
        return
    judged = int(np.count_nonzero(block.within_noise))
    if block.direction is not None and block.direction.within_noise:
        judged += 1
    verdict = (
        f"{judged} comparison(s) there were judged within noise"
        if block.passed
        else f"where that exceeds {NOISE_USABLE:g} of the values compared, a disagreement "
        "is not excused: the check cannot tell a correct gradient there"
    )
    warnings.append(
        f"f loses precision to round-off in block {spec.name!r} (f is far smaller than "
        "values it is computed from, or is computed in low precision): measured along "
        f"{len(measured)} comparison(s), it hides gradient errors below about "
        f"{limit:.2g} (absolute) at h={worst.step:.2g}; {verdict}. A larger eps lowers "
        "this limit in proportion (and raises the truncation error); computing f without "
        "the cancellation, in float64, removes it"
    )


def resolution_warnings(
    total: Result,
    largests: Sequence[float],
    directions: Sequence[float],
    loss: float,
    tiny: set[int],
    warnings: list[str],
) -> None:
    """Warn where round-off of f let a sizeable disagreement pass.

    A disagreement within f's round-off counts as happy (shown as "noise"), and rightly:
    the difference quotient cannot resolve it. Where that excuses a disagreement above
    the *ok* tier's share of the block's largest gradient (`largests`, scaled as the
    report is; the direction's against `directions`, the size of the gradient it moves),
    the reader of a passing report must know
    that a gradient wrong by as much would have passed: f changes little over a step
    next to its own size (a loss of 1e8, a constant plus what the parameters move,
    hides a 10% error at the default step; a block that moves f only weakly, like a
    LayerScale branch of 1e-6). A zero entry beside large ones, whose numeric value is
    round-off, is no such case; blocks in `tiny` get the active-range warning instead.
    """
    limit = THRESHOLDS[Tier.OK]
    for b, block in enumerate(total.blocks):
        largest = largests[b]
        d = block.direction
        rel = block.rel_error
        if (
            b in tiny
            or largest == 0.0
            or not ((rel.size and rel.max() > limit) or (d is not None and d.rel_error > limit))
        ):  # nothing to measure a disagreement against, or nothing above the tier
            continue
        gap = np.abs(block.analytic - block.numeric)
        excused = block.counted & block.within_noise & (gap > limit * largest)
        shares = [float(x) / largest for x in gap[excused]]
        size = directions[b]
        gap_d = abs(d.analytic - d.numeric) if d is not None else 0.0
        if d is not None and d.counted and d.within_noise and gap_d > limit * size > 0.0:
            shares.append(gap_d / size)
        if shares:
            warnings.append(
                f"in block {block.name!r}, {len(shares)} comparison(s) disagree by up to "
                f"{max(shares):.2g} of the block's largest gradient and were let pass as "
                f"round-off of f: f ({loss:.3g} at the checked point) changes little over a "
                "step next to its own size, so a gradient wrong by that much cannot be "
                "told from a correct one here. Subtract from the loss what does not depend "
                "on the checked values (a constant changes no gradient), or check this "
                "block with a larger eps (or scale it up, for a block that moves f only "
                "weakly)"
            )


def stationary_warnings(
    total: Result,
    pairs: Callable[[int], tuple[Sequence[Pair], Pair | None]],
    warnings: list[str],
) -> set[int]:
    """Say where a block fails only along comparisons where f is stationary; return
    those blocks (their gradients are tiny for that reason: no active-range advice).

    There (`Pair.stationary`: what a step changes is curvature alone) the checked point
    is at or very near a minimum, where the gradient is zero up to round-off that the
    check cannot bound: a correct backward and a wrong one disagree with the differences
    alike (a distillation loss with the student equal to its teacher fails at rel 1).
    The verdict stands; the warning says what it can mean and what to do. `pairs(b)`
    gives block b's pairs in the order of its rows, and its direction's.
    """
    found: set[int] = set()
    for b, block in enumerate(total.blocks):
        if block.passed:
            continue
        rows, dpair = pairs(b)
        failing = [
            rows[i].stationary(TOTAL)
            for i, (tier, counted) in enumerate(
                zip(block.coordinate_tiers, block.counted.tolist(), strict=True)
            )
            if counted and tier > total.tolerance
        ]
        d = block.direction
        if d is not None and dpair is not None and d.counted and d.tier > total.tolerance:
            failing.append(dpair.stationary(TOTAL))
        if failing and all(failing):
            found.add(b)
            warnings.append(
                f"block {block.name!r} fails only along comparisons where f is stationary "
                "(what a step changes is curvature alone): the checked point is at or very "
                "near a minimum of the loss (a student equal to its teacher), where the "
                "gradient is zero up to round-off of f that the check cannot bound, and a "
                "wrong gradient and round-off look alike; check at a point away from the "
                "minimum"
            )
    return found


def _excluded(block: BlockResult) -> tuple[int, int]:
    """(comparisons, of which excluded at a kink) of a block, its direction included."""
    n, counted = len(block.indices), int(block.counted.sum())
    if block.direction is not None:
        n, counted = n + 1, counted + int(block.direction.counted)
    return n, n - counted


def mostly_excluded(total: Result) -> bool:
    """Whether more than half of some block's comparisons were excluded at kinks: random
    decisions (a mask drawn from a generator the check cannot reset) look like kinks
    crossed everywhere, so such a check is then tested for determinism too."""
    return any(excluded > n / 2 for n, excluded in map(_excluded, total.blocks))


def excluded_warnings(total: Result, warnings: list[str]) -> None:
    """Warn about blocks that kink exclusions left unchecked (every comparison)."""
    for block in total.blocks:
        n, excluded = _excluded(block)
        if n and excluded == n:
            warnings.append(
                f"block {block.name!r} was not checked: all {n} of its comparisons "
                "crossed a kink and were excluded, also off its exact ties: f has kinks "
                "closer than a step all around the point; check at another point (fewer "
                "datapoints, after burn_in= steps) or with a smaller eps"
            )


def smooth_warnings(total: Result, warnings: list[str]) -> None:
    """Warn where a passing block's smooth comparisons disagree beyond *happy*.

    Called for a function with kinks under the default tolerance, which is then *ok*:
    a difference that crosses a kink may be that far off. A comparison that crossed
    none is as smooth as one of a kink-free function, where a correct gradient agrees
    to better than 1e-7 and what still disagrees after confirmation (a Richardson
    step, a wide step, f's round-off measured) fails. Such a check passes, rightly by
    the contract, but the reader must know: an error spread thinly over a block (a
    backward that leaves out an eps, 1e-5 on every entry) looks exactly like this, and
    would pass or fail with the seed.
    """
    happy = THRESHOLDS[Tier.HAPPY]
    for block in total.blocks:
        if not block.passed:
            continue
        above = block.rel_error >= happy
        smooth = ~block.kink_crossed & ~block.within_noise
        n, worst = int(np.count_nonzero(smooth & above)), 0.0
        if n:
            worst = float(block.rel_error[smooth & above].max())
        m = int(np.count_nonzero(~block.kink_crossed))
        d = block.direction
        if d is not None and not d.kink_crossed:
            m += 1
            if not d.within_noise and d.rel_error >= happy:
                n, worst = n + 1, max(worst, d.rel_error)
        if n:
            warnings.append(
                f"in block {block.name!r}, {n} of {m} comparison(s) that crossed no kink "
                f"disagree beyond the happy tier (relative error up to {worst:.2g}): the "
                "kinks elsewhere in f relax the tolerance to ok, so the block passes, but "
                "these differences are smooth, where a correct gradient agrees to about "
                "1e-7; a small error in the backward (an eps left out, an approximate "
                "derivative) looks like this. tolerance='happy' makes it fail"
            )


def domain_warnings(specs: Sequence[BlockSpec], counter: Counter, warnings: list[str]) -> None:
    """Say where a comparison was made at a smaller step to stay in f's domain."""
    for _, shrunk in sorted(counter.shrunk.items()):
        where = shrunk[0][0]
        more = f" and {len(shrunk) - 1} more" if len(shrunk) > 1 else ""
        smallest = max(d for _, d in shrunk)
        warnings.append(
            f"f is not finite within one step of the checked point for {where}{more}: "
            f"{'it was' if len(shrunk) == 1 else 'they were'} checked at a smaller step, "
            f"down to h/{smallest:g}, well inside the domain (a log, a square root or a "
            "division close to 0 at the checked point)"
        )


#: half the relative spacing of float64 numbers: two doubles within 2**-53 · |f| of f
#: are at most one apart
HALF_ULP = 2.0**-53


#: a gradient below this share of the largest one in the check is round-off of a zero:
#: a few thousand ulps (2**-52 ≈ 2.2e-16) of the values the backward sums
ROUNDOFF_ZERO = 1e-12


def zero_warnings(
    specs: Sequence[BlockSpec],
    grads: Sequence[Gradient],
    largests: Sequence[dict[str | None, float]],
    coord_pairs: Sequence[Sequence[Pair]],
    dir_pairs: Sequence[Pair | None],
    total: Result,
    warnings: list[str],
) -> set[int]:
    """Warn about passing blocks whose check saw only a zero gradient; return them.

    Such a check is vacuous: any backward that also returns ~0 there passes, a wrong
    one included. Two kinds, one warning each (naming every such block, so that a
    network with many of them gets one line, not one per layer):

    * exactly 0 (analytic, of the total and every term): the point hides the block (a
      zero-initialised layer downstream, dead ReLUs), or f does not use it;
    * zero up to round-off, when two things hold. (1) Differences cannot resolve it:
      over the largest step the check took in the block, the gradient changes f by at
      most 2·h·||g|| across a centered difference (|v · g| <= ||g|| for a unit
      direction, |g_i| <= ||g|| for a coordinate). Below 2**-53 · |f| that is less than
      the spacing of float64 numbers near f: f(x + h) and f(x - h) round to the same or
      adjacent doubles whatever g is, so no difference quotient can resolve g (f's real
      round-off, many ulps, only widens this; for f = 0 exactly nothing is claimed).
      (2) It is what round-off leaves of an exact zero: at most `ROUNDOFF_ZERO` times
      the largest gradient the backward computed in any block (a sum that cancels, such
      as a bias's gradient through a normalization, keeps a few ulps of its terms).
      Scaling the loss, f and g alike, cannot help there. A gradient that is only (1),
      tiny beside a large f (f = 1 + 1e-12 · x**3), keeps the active-range warning.

    A failing block is left out: its numeric gradient disagrees, so the check did see
    something there.
    """
    exact: list[int] = []
    rounded: list[int] = []
    overall = max((m[TOTAL] for m in largests), default=0.0)
    for b in range(len(specs)):
        if not total.blocks[b].passed:
            continue
        if all(m == 0.0 for m in largests[b].values()):
            exact.append(b)
            continue
        steps_ = [p.step for p in coord_pairs[b]]
        dp = dir_pairs[b]
        if dp is not None:
            steps_.append(dp.step)
        if not steps_ or largests[b][TOTAL] > ROUNDOFF_ZERO * overall:
            continue
        h = max(steps_)
        grad = grads[b]
        centers = {TOTAL: grad.center.loss, **grad.center.terms}
        raw = {TOTAL: grad.total[b], **{t: grad.terms[t][b] for t in grad.terms}}
        if all(
            2.0 * h * norm(g, largests[b][loss]) < HALF_ULP * abs(centers[loss])
            for loss, g in raw.items()
        ):
            rounded.append(b)
    if exact:
        names = ", ".join(repr(specs[b].name) for b in exact)
        one = len(exact) == 1
        warnings.append(
            f"{'block' if one else 'blocks'} {names} {'has' if one else 'have'} an "
            "analytic gradient of exactly 0 at the checked point (the numeric one agrees), "
            f"so {'its' if one else 'their'} check cannot catch a wrong gradient there. If "
            "the zero comes from the point (a zero-initialised layer downstream, ReLUs that "
            "are all inactive), check after burn_in= steps or at a non-zero initialisation; "
            f"if f does not depend on {'it' if one else 'them'}, leave "
            f"{'it' if one else 'them'} out with wrt="
        )
    if rounded:
        names = ", ".join(
            f"{specs[b].name!r} (largest |g| = {largests[b][TOTAL]:.2e})" for b in rounded
        )
        one = len(rounded) == 1
        it, this = ("it", "this block") if one else ("them", "these blocks")
        warnings.append(
            f"the gradient of {'block' if one else 'blocks'} {names} is zero up to "
            "round-off: over the check's step it changes f by less than f's float64 "
            "round-off, so no difference can resolve it, and the check cannot catch a wrong "
            f"gradient there. The loss does not depend on {this} (e.g. a bias followed by "
            f"a normalization) or depends on {it} only through terms that cancel; if that "
            f"is expected, leave {it} out of the check with wrt="
        )
    return set(exact) | set(rounded)


def active_range_warnings(
    specs: Sequence[BlockSpec], largests: Sequence[float], scale: float, warnings: list[str]
) -> None:
    """Warn where a block's gradients are all tiny (outside the active range).

    `largests` holds each block's largest |g| of the total loss (unscaled).
    """
    for spec, unscaled in zip(specs, largests, strict=True):
        largest = unscaled * scale
        if 0.0 < largest <= TINY:
            warnings.append(
                f"block {spec.name!r} has tiny gradients (largest |g| = {largest:.2e}, "
                f"below ~{TINY:.0e}), outside the active range of floating point: scale "
                "the loss up inside f (for example, do not divide by the batch size) so "
                "the values compared are near 1; scale='auto' only rescales the report"
            )
