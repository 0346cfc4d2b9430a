"""Centered differences in flight: evaluation, kink retries, confirmation, verdicts.

A `Pair` is one comparison's two points and what came back; the `Counter` runs pairs
through the backend (counting evaluations), retries kink crossings at smaller steps
and one-sidedly, and confirms failures before the engine condemns them: a half step
(Richardson), a wide step and, where round-off may explain what is left, a
measurement of f's round-off. `best` and `pair_tier` judge a pair against an analytic
value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._kinks import RETRY_DIVISORS, crossed
from ._steps import measured_noise, noise_floor
from ._tiers import Tier, relative_error
from .backends._base import Backend, Evaluation, Point, index_count

#: a smaller step's estimate counts when its error is below this fraction of the
#: larger step's (truncation error shrinks like the step squared, or faster)
TRUNCATION_SHRINK = 0.5
#: the smaller steps, relative to the pair's, of the truncation ladder (`confirm`)
NARROW_DIVISORS = (10.0, 100.0)
#: the smaller steps, relative to the first, at which a difference that left f's
#: domain is retried; the first that stays inside is divided by DOMAIN_MARGIN
DOMAIN_DIVISORS = (10.0, 100.0, 1000.0)
DOMAIN_MARGIN = 100.0

TOTAL = None  # the key of the total loss among the per-loss arrays

#: the wide step of a failing comparison's confirmation, as a multiple of its step:
#: round-off of f divided by 8, truncation (O(h^2)) multiplied by 64
WIDE = 8.0
#: a comparison still failing by less than NOISE_PLAUSIBLE (relative) after the
#: half and the wide step may be round-off of f: f's noise is then measured from f
#: at x + k h u, k = -NOISE_REACH .. NOISE_REACH (see `_steps.measured_noise`), and a
#: measured noise r allows a centered difference at step h an error of
#: NOISE_SIGMAS * r / h (two round-offs of f divided by 2h: r / h when bounded by r)
NOISE_PLAUSIBLE = 1e-2
NOISE_REACH = 4
NOISE_SIGMAS = 2.0
#: measured noise excuses a disagreement only where it limits the comparison to
#: better than this (relative): a check that cannot resolve errors of 1e-4 (f computed
#: in float32 inside, say) is no evidence that the gradient is right
NOISE_USABLE = 1e-4
#: f is stationary along a comparison where its centered difference is below
#: STATIONARY of the one-sided change of f over the step (which is then curvature,
#: f'' h / 2): at or very near a minimum. There the gradient is zero up to round-off
#: that the quotient's floors (from |f| and from the gradients, both about 0 at a
#: minimum of value 0) do not bound, and that curvature cannot bound either (a stiff
#: penalty at its constraint is stationary along a comparison whose gradient is 1):
#: it is only said (`_warnings.stationary_warnings`), never excused
STATIONARY = 1e-3


@dataclass(slots=True)  # (a check builds one per comparison, retry and step)
class Pair:
    """A centered difference in flight: where, how far, and what came back."""

    point_plus: Point
    point_minus: Point
    step: float
    plus: Evaluation | None = None
    minus: Evaluation | None = None
    #: the same difference at step/2, for Richardson extrapolation (see `refine`)
    half: Pair | None = None
    #: the same difference at WIDE * step, against round-off (see `refine`)
    wide: Pair | None = None
    #: the same difference at a tenth or a hundredth of the step, with its own half
    #: step, where the error shrank like truncation (see `narrow`)
    narrow: Pair | None = None
    #: per loss, the round-off of f measured along this pair's delta (`measure_noise`)
    noise: Mapping[str | None, float] = field(default_factory=dict)
    #: per loss, the size of the gradient the comparison stands for (the block's
    #: largest |g| for a coordinate, |g| for a direction): measured round-off excuses a
    #: disagreement only where it resolves NOISE_USABLE of it
    reference: Mapping[str | None, float] = field(default_factory=dict)
    #: whether f was finite at both points (always, for a pair whose values are used
    #: at all; a wide or ladder pair may leave f's domain and is then ignored)
    finite: bool = True
    #: after a persistent crossing: (side, f at side*step/2, f at the center), see
    #: `Counter.one_sided`
    one_sided: tuple[int, Evaluation, Evaluation] | None = None
    #: per loss (None: the total), the round-off of f scaled by h that the size of the
    #: block's values and gradients implies (see `_steps.value_floor`)
    value_floor: Mapping[str | None, float] = field(default_factory=dict)
    #: the checked point's signature, where tracked (set by `Counter._evaluate`)
    center: bytes | None = None
    #: f at the checked point (set by `Counter._evaluate`): with it, whether f is
    #: stationary along the pair (see STATIONARY)
    at: Evaluation | None = None

    def take(self, other: Pair) -> None:
        """Become `other`'s difference (its points, step and values): a retry at a
        smaller step stands for this comparison from now on."""
        self.point_plus, self.point_minus = other.point_plus, other.point_minus
        self.step, self.plus, self.minus = other.step, other.plus, other.minus
        self.finite = other.finite

    def crossed(self) -> bool:
        """Whether the difference went through a kink: its two points took different
        branches, or the same ones but not the checked point's. The latter is a
        checked point at an exact tie that either side breaks alike (an entry of a
        tied median moved up or down): f is not differentiable there, and which of
        the valid values its gradient takes is the backward's convention, not a bug."""
        assert self.plus is not None and self.minus is not None
        plus, minus = self.plus.signature, self.minus.signature
        if crossed(plus, minus):
            return True
        return self.center is not None and plus is not None and plus != self.center

    def usable(self) -> bool:
        """Whether the numeric value is exact up to truncation (no kink in the way)."""
        return not self.crossed() or self.one_sided is not None

    def quotient(self, term: str | None) -> tuple[float, float]:
        """(numeric derivative, round-off floor) of the total (None) or one term.

        Once refined, the Richardson extrapolation (4 D(h/2) - D(h)) / 3, whose
        truncation error is O(h^4) instead of O(h^2).
        """
        assert self.plus is not None and self.minus is not None
        fp = value_of(self.plus, term)
        fm = value_of(self.minus, term)
        if self.one_sided is not None:
            side, half, center = self.one_sided
            f_far, f_half, f_0 = (
                (fp if side > 0 else fm),
                value_of(half, term),
                value_of(center, term),
            )
            d_far = side * (f_far - f_0) / self.step
            d_half = side * (f_half - f_0) / (self.step / 2.0)
            # Richardson on the one-sided quotient: O(h^2) like the centered formula
            return 2.0 * d_half - d_far, 6.0 * self._floor(f_far, f_0, term)
        d, floor = (fp - fm) / (2.0 * self.step), self._floor(fp, fm, term)
        if self.half is None:
            return d, floor
        d_half, floor_half = self.half.quotient(term)
        return (4.0 * d_half - d) / 3.0, (4.0 * floor_half + floor) / 3.0

    def estimates(self, term: str | None) -> list[tuple[float, float, float, float]]:
        """(numeric derivative, round-off floor, measured-noise floor, step) of each
        estimate this pair has: `quotient`, and for a refined pair the wide step."""
        r = NOISE_SIGMAS * self.noise.get(term, 0.0)
        n, floor = self.quotient(term)
        # the Richardson value (4 D(h/2) - D(h)) / 3 carries (4 * 2 + 1) / 3 = 3 times
        # the round-off of D(h)
        richardson = self.half is not None and self.one_sided is None
        found = [(n, floor, r / self.step * (3.0 if richardson else 1.0), self.step)]
        if self.wide is not None:
            nw, fw = self.wide.quotient(term)
            found.append((nw, fw, r / self.wide.step, self.wide.step))
        if self.narrow is not None:
            nn, fn = self.narrow.quotient(term)
            found.append((nn, fn, 3.0 * r / self.narrow.step, self.narrow.step))
        return found

    def centered(self, term: str | None) -> float:
        """The plain centered difference at `step` (no extrapolation)."""
        assert self.plus is not None and self.minus is not None
        return (value_of(self.plus, term) - value_of(self.minus, term)) / (2.0 * self.step)

    def _floor(self, fa: float, fb: float, term: str | None) -> float:
        return max(
            noise_floor(fa, fb, self.step),
            self.value_floor.get(term, 0.0) / self.step,
        )

    def stationary(self, term: str | None) -> bool:
        """Whether f is stationary along this difference (see STATIONARY)."""
        if self.at is None or self.plus is None or self.minus is None:
            return False
        fp, fm = value_of(self.plus, term), value_of(self.minus, term)
        return _stationary_change(fp, fm, value_of(self.at, term)) > 0.0


def _stationary_change(fa: float, fb: float, f0: float) -> float:
    """The one-sided change of f over a difference where f is stationary along it (see
    STATIONARY), else 0."""
    change = max(abs(fa - f0), abs(fb - f0))
    return change if abs(fa - fb) <= STATIONARY * change else 0.0


def value_of(ev: Evaluation, term: str | None) -> float:
    return ev.loss if term is None else ev.terms[term]


def make_pair(
    block: int,
    indices: np.ndarray | range,
    delta: np.ndarray,
    h: float,
    value_floor: Mapping[str | None, float],
    reference: Mapping[str | None, float] | None = None,
) -> Pair:
    plus = delta * h
    return Pair(
        Point(((block, indices, plus),)),
        Point(((block, indices, -plus),)),  # -(delta h) is (-delta) h, exactly
        h,
        value_floor=value_floor,
        reference=reference or {},
    )


def coordinate_pair(
    block: int,
    index: int,
    h: float,
    value_floor: Mapping[str | None, float],
    reference: Mapping[str | None, float],
) -> Pair:
    """`make_pair` for one coordinate, built directly (a check builds many)."""
    at = np.array([index])
    return Pair(
        Point(((block, at, np.array([h])),)),
        Point(((block, at, np.array([-h])),)),
        h,
        value_floor=value_floor,
        reference=reference,
    )


class Counter:
    """Runs evaluations through the backend and counts them."""

    def __init__(self, backend: Backend, track: bool) -> None:
        self.backend = backend
        self.track = track
        self.count = 0
        #: the tracked evaluation at the base point, once known
        self.center: Evaluation | None = None
        #: (name, shape) of each block, to say where f left its domain
        self.blocks: Sequence[tuple[str, tuple[int, ...]]] = ()
        #: per block, the comparisons whose step was shrunk to stay in f's domain:
        #: (where, the divisor of the step)
        self.shrunk: dict[int, list[tuple[str, float]]] = {}

    def run(self, pairs: Sequence[Pair]) -> None:
        """Evaluate the pairs, retrying crossings at smaller steps (kinks="track")."""
        self._evaluate((), lenient=pairs)
        self._stay_in_domain([p for p in pairs if not p.finite])
        if not self.track:
            return
        todo = [
            (
                p,
                Pair(
                    p.point_plus,
                    p.point_minus,
                    p.step,
                    value_floor=p.value_floor,
                    reference=p.reference,
                ),
            )
            for p in pairs
            if p.crossed()
        ]
        for divisor in RETRY_DIVISORS:  # relative to the original step: h/10, h/100
            if not todo:
                break
            retries = [smaller(first, divisor) for _, first in todo]
            self._evaluate(retries)
            still = []
            for (original, first), retry in zip(todo, retries, strict=True):
                original.take(retry)
                if original.crossed():
                    still.append((original, first))
            todo = still
        todo = [p for p, _ in todo]
        if todo:
            self.one_sided(todo)

    def _stay_in_domain(self, pairs: Sequence[Pair]) -> None:
        """Retry, at smaller steps, the pairs where f is not finite at x + h or x - h.

        A correct f can leave its domain within a step of the checked point (a log or a
        square root of a variance of 3e-6, a step of 1e-5). The steps h/10, h/100,
        h/1000 are tried until f is finite at both points, at h/d: the edge is then
        between h/d and 10 h/d away, too close for an accurate difference at h/d
        (the truncation error grows with (step / distance)^2), so the pair is taken
        at h/(100 d), a hundredth of the distance or less. `shrunk` records it for a
        warning. Still not finite at h/1000: the checked point is on the edge of f's
        domain, or f overflows, and the error says where.
        """
        todo = list(pairs)  # (their steps stay until the end: retries are relative to them)
        found: list[tuple[Pair, float]] = []
        for divisor in DOMAIN_DIVISORS:
            if not todo:
                break
            retries = [smaller(p, divisor) for p in todo]
            self._evaluate((), lenient=retries)
            still = []
            for p, retry in zip(todo, retries, strict=True):
                if retry.finite:
                    found.append((p, divisor * DOMAIN_MARGIN))
                else:
                    still.append(p)
            todo = still
        for p in todo:
            assert p.plus is not None and p.minus is not None
            for ev, side in ((p.plus, "+"), (p.minus, "-")):
                check_finite(
                    ev,
                    f"f(x {side} h) for {self._where(p)}, at h = {p.step:.1e} and at "
                    f"every step down to h/{DOMAIN_DIVISORS[-1]:g}",
                )
        if not found:
            return
        finals = [smaller(p, divisor) for p, divisor in found]
        self._evaluate(finals)
        for (p, divisor), final in zip(found, finals, strict=True):
            p.take(final)
            self.shrunk.setdefault(p.point_plus.deltas[0][0], []).append((self._where(p), divisor))

    def _where(self, p: Pair) -> str:
        """Which comparison a pair is, in words: a coordinate or a block's direction."""
        b, idx, _ = p.point_plus.deltas[0]
        if b >= len(self.blocks):
            return f"block {b}"
        name, shape = self.blocks[b]
        if type(idx) is range:
            return f"the direction of block {name!r}"
        flat = np.asarray(idx).reshape(-1)
        if flat.size == 1:
            at = tuple(int(i) for i in np.unravel_index(int(flat[0]), shape)) if shape else ()
            return f"block {name!r} at index {at}"
        return f"{flat.size} coordinates of block {name!r}"

    def one_sided(self, pairs: Sequence[Pair]) -> None:
        """Rescue persistent crossings whose center shares one side's branches.

        If f(x+h) took the same branches as f(x), the kink lies on the other side and
        the one-sided quotient from x toward x+h stays on one smooth piece (likewise
        for x-h). A half step on that side confirms it and gives a Richardson
        estimate. Crossings where the center matches neither side stay excluded.
        """
        c = self.center
        if c is None or c.signature is None:
            return
        todo = []
        for p in pairs:
            assert p.plus is not None and p.minus is not None
            if p.plus.signature == c.signature:
                side, point = 1, p.point_plus
            elif p.minus.signature == c.signature:
                side, point = -1, p.point_minus
            else:
                continue
            todo.append((p, side, Point(tuple((b, i, d / 2.0) for b, i, d in point.deltas))))
        if not todo:
            return
        evals = self.backend.evaluate([t[2] for t in todo], True)
        self.count += len(todo)
        for (p, side, _), ev in zip(todo, evals, strict=True):
            check_finite(ev, "a one-sided half step")
            if ev.signature == c.signature:
                p.one_sided = (side, ev, c)

    def _evaluate(self, pairs: Sequence[Pair], lenient: Sequence[Pair] = ()) -> None:
        """Evaluate both points of each pair of `pairs` and `lenient`, in one call.

        A non-finite value raises, except in a `lenient` pair, which is then marked as
        not `finite` (a step beyond f's domain).
        """
        everything = [*pairs, *lenient]
        points: list[Point] = []
        for p in everything:
            points += [p.point_plus, p.point_minus]
        if not points:
            return
        evals = self.backend.evaluate(points, self.track)
        self.count += len(points)
        center = self.center.signature if self.track and self.center is not None else None
        for i, p in enumerate(everything):
            p.plus, p.minus = evals[2 * i], evals[2 * i + 1]
            p.center, p.at = center, self.center
            if i < len(pairs):
                check_finite(p.plus, "f(x + h)")
                check_finite(p.minus, "f(x - h)")
            else:
                p.finite = is_finite(p.plus) and is_finite(p.minus)

    def refine(self, pairs: Sequence[Pair]) -> None:
        """Add a half step (Richardson extrapolation) and a wide step to each pair.

        Used on comparisons that fail, to confirm before condemning. A disagreement of
        a correct gradient is the centered formula's truncation error, O(h^2), or the
        round-off of f divided by h, O(1/h); an error of the gradient does not depend
        on h. The Richardson value at h/2 removes the first, the difference at
        WIDE * h divides the second by WIDE (f may lose far more than |f| suggests to
        cancellation: log-softmax of a confident score), so a correct gradient agrees
        with one of them and a wrong one with neither (see `best`). A step that
        crosses a kink is discarded.
        """
        halves = [smaller(p, 2.0) for p in pairs]
        wides = [smaller(p, 1.0 / WIDE) for p in pairs]
        self._evaluate(halves, lenient=wides)  # 8h may leave f's domain: then unused
        for p, half, wide in zip(pairs, halves, wides, strict=True):
            if not (self.track and half.crossed()):
                p.half = half
            if wide.finite and not (self.track and wide.crossed()):
                p.wide = wide

    def narrow(self, pairs: Sequence[Pair], divisor: float) -> list[Pair]:
        """Add to each pair the difference at step/`divisor` with its half step (a
        Richardson estimate), where f is finite and no kink is crossed there; returns
        the pairs that got one."""
        narrows = [smaller(p, divisor) for p in pairs]
        halves = [smaller(n, 2.0) for n in narrows]
        self._evaluate((), lenient=[*narrows, *halves])
        got = []
        for p, n, half in zip(pairs, narrows, halves, strict=True):
            if not (n.finite and half.finite):
                continue
            if self.track and (n.crossed() or half.crossed()):
                continue
            n.half = half
            p.narrow = n
            got.append(p)
        return got

    def measure_noise(self, pairs: Sequence[Pair], losses: Sequence[str | None]) -> None:
        """Measure the round-off of f along each pair's delta (`measured_noise`).

        f is evaluated at x + k h u for k = -NOISE_REACH .. NOISE_REACH, at the pair's
        own spacing: the round-off that matters is the one at the pair's points (at a
        finer spacing f's rounding falls on a regular pattern that hides it). The
        pair's f(x +- h u) are reused; the checked point is evaluated again like the
        others (its first value came from the gradient pass, which may round
        differently). The pair's estimates then allow the measured noise in their
        floors (see `estimates`, `best`). A line that leaves f's domain or crosses a
        kink measures nothing.
        """
        c = self.center
        if c is None or not pairs:
            return
        ks = [k for k in range(-NOISE_REACH, NOISE_REACH + 1) if abs(k) != 1]
        points = [
            Point(tuple((b, i, d * float(k)) for b, i, d in p.point_plus.deltas))
            for p in pairs
            for k in ks
        ]
        evals = self.backend.evaluate(points, self.track)
        self.count += len(points)
        for j, p in enumerate(pairs):
            assert p.plus is not None and p.minus is not None
            got = dict(zip(ks, evals[j * len(ks) : (j + 1) * len(ks)], strict=True))
            got[1], got[-1] = p.plus, p.minus
            line = [got[k] for k in range(-NOISE_REACH, NOISE_REACH + 1)]
            if not all(is_finite(ev) for ev in line):
                continue
            if self.track and any(ev.signature != c.signature for ev in line):
                continue
            noise = {
                loss: measured_noise(np.array([value_of(ev, loss) for ev in line]))
                for loss in losses
            }
            p.noise = noise


def smaller(p: Pair, divisor: float) -> Pair:
    def shrink(point: Point) -> Point:
        return Point(tuple((b, i, d / divisor) for b, i, d in point.deltas))

    return Pair(
        shrink(p.point_plus),
        shrink(p.point_minus),
        p.step / divisor,
        value_floor=p.value_floor,
        reference=p.reference,
    )


def is_finite(ev: Evaluation) -> bool:
    return math.isfinite(ev.loss) and all(math.isfinite(v) for v in ev.terms.values())


def check_finite(ev: Evaluation, what: str, near: bool = True) -> None:
    """Raise ValueError when the loss or a term of `ev` is not finite.

    `near`: `ev` is a perturbed point, where a smaller eps may help; at the checked
    point itself (or a burn-in step) it cannot, and the message does not suggest it.
    """
    if is_finite(ev):
        return
    values = {**{f"term {k!r}": v for k, v in ev.terms.items()}, "the loss": ev.loss}
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(
                f"gradcheck: {name} is {value} at {what}; the loss must be finite "
                + ("near the checked point" if near else "there")
                + " (look for a log of zero, a division by zero or an overflow"
                + (", or use a smaller eps)" if near else ")")
            )


def fails(
    pair: Pair,
    analytic: Sequence[float],
    losses: Sequence[str | None],
    scale: float,
    tolerance: Tier,
) -> bool:
    """Whether a (kink-free) comparison is worse than the tolerance for some loss."""
    if pair.crossed() or pair.half is not None:
        return False
    return any(
        pair_tier(pair, a, loss, scale) > tolerance
        for a, loss in zip(analytic, losses, strict=True)
    )


def confirm(
    counter: Counter,
    suspects: Sequence[tuple[Pair, Sequence[float]]],
    losses: Sequence[str | None],
    scale: float,
    tolerance: Tier,
) -> None:
    """Refine failing comparisons (a half step and a wide step); where some still fail
    by less than NOISE_PLAUSIBLE, which round-off of f may explain, measure it.

    The round-off of f is a property of f near x, in f's units: it is measured once
    per block (along the block's direction when that is among the comparisons, which
    moves every coordinate), and every such comparison of the block allows for it.
    """
    counter.refine([p for p, _ in suspects])
    plausible: dict[int, list[Pair]] = {}
    for p, values in suspects:
        for a, loss in zip(values, losses, strict=True):
            n, _, _, tier = best(p, a, loss, scale)
            if tier > tolerance and relative_error(a, n) < NOISE_PLAUSIBLE:
                plausible.setdefault(p.point_plus.deltas[0][0], []).append(p)
                break
    lines = [max(ps, key=lambda p: support(p)) for ps in plausible.values()]
    counter.measure_noise(lines, losses)
    for line, ps in zip(lines, plausible.values(), strict=True):
        for p in ps:
            p.noise = line.noise
    _narrow_ladder(counter, suspects, losses, scale, tolerance)


def _narrow_ladder(
    counter: Counter,
    suspects: Sequence[tuple[Pair, Sequence[float]]],
    losses: Sequence[str | None],
    scale: float,
    tolerance: Tier,
) -> None:
    """Smaller steps for failing comparisons whose error behaves like truncation.

    Near a singularity of f (1/x or log x at x = 1e-4, a norm of entries of 1e-7, a
    step that had to shrink to stay in f's domain) the centered difference at h can be
    off by percents for a correct gradient, and the Richardson value at h/2 only
    partly corrects it. The sign of such an error: the Richardson value is much closer
    to the analytic value than the plain difference (an error of the gradient does not
    depend on the step, so both are as far from it). Only those comparisons are taken
    again at h/10, then h/100 (each with its half step), and a smaller step counts only
    while it keeps closing in on the analytic value (its error below TRUNCATION_SHRINK
    of the larger step's): an estimate that converges to it is the derivative's limit,
    which a wrong gradient is not.
    """
    current: dict[int, float] = {}
    ladder = []
    for p, values in suspects:
        if p.half is None or p.one_sided is not None:
            continue
        for a, loss in zip(values, losses, strict=True):
            if pair_tier(p, a, loss, scale) <= tolerance:
                continue
            plain = abs(a - p.centered(loss) * scale)
            extrapolated = abs(a - p.quotient(loss)[0] * scale)
            if extrapolated < TRUNCATION_SHRINK * plain:
                ladder.append((p, a, loss))
                current[id(p)] = extrapolated
                break
    for divisor in NARROW_DIVISORS:
        if not ladder:
            return
        previous = {id(p): p.narrow for p, _, _ in ladder}
        got = set(map(id, counter.narrow([p for p, _, _ in ladder], divisor)))
        still = []
        for p, a, loss in ladder:
            if id(p) not in got:
                continue
            assert p.narrow is not None
            error = abs(a - p.narrow.quotient(loss)[0] * scale)
            if error >= TRUNCATION_SHRINK * current[id(p)]:
                p.narrow = previous[id(p)]  # not converging: no estimate from it
                continue
            current[id(p)] = error
            if pair_tier(p, a, loss, scale) > tolerance:
                still.append((p, a, loss))
        ladder = still


def support(p: Pair) -> int:
    """How many coordinates a pair moves."""
    return index_count(p.point_plus.deltas[0][1])


def pair_tier(pair: Pair, analytic: float, loss: str | None, scale: float) -> Tier:
    """The tier of one pair's numeric value against an analytic value, for one loss."""
    return best(pair, analytic, loss, scale)[3]


def best(
    pair: Pair, analytic: float, loss: str | None, scale: float
) -> tuple[float, float, float, Tier]:
    """(numeric, floor, step, tier) of the pair's estimate that agrees best with `analytic`.

    An unrefined pair has one estimate. A refined one (see `Counter.refine`) also has
    the Richardson value and the wide-step difference: a correct gradient agrees with
    the one whose error (truncation or round-off) is small, while an error of the
    gradient shows in every one of them. Ties go to the first.
    """
    if pair.wide is None and pair.narrow is None and not pair.noise:  # one estimate: quickly
        n, floor = pair.quotient(loss)
        n, floor = n * scale, floor * scale
        return n, floor, pair.step, verdict(analytic, n, floor)
    best: tuple[float, float, float, Tier] | None = None
    for n, floor, noise, step in pair.estimates(loss):
        n, floor, noise = n * scale, floor * scale, noise * scale
        if noise <= NOISE_USABLE * max(
            abs(analytic), abs(n), pair.reference.get(loss, 0.0) * scale
        ):
            floor = max(floor, noise)
        tier = verdict(analytic, n, floor)
        if best is None or tier < best[3]:
            best = (n, floor, step, tier)
    assert best is not None
    return best


def verdict(a: float, n: float, floor: float) -> Tier:
    """The tier of one comparison; a disagreement within round-off counts as HAPPY."""
    if abs(a - n) <= floor:
        return Tier.HAPPY
    return Tier.of(relative_error(a, n))
