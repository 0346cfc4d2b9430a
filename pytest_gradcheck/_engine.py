"""The framework-free check: burn-in, sampling, differences, kinks, terms, verdict.

The engine talks to a backend through `backends._base.Backend` only. Its cost is the
number of evaluations of f: one analytic pass, two per checked coordinate, two per
block's direction, plus retries at smaller steps where a kink was crossed and about
2·log2(n) to localize a failing direction that no sampled coordinate explains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._kinks import RETRY_DIVISORS, crossed
from ._options import Options
from ._result import BlockResult, DirectionResult, Result
from ._sampling import direction, sample_coordinates
from ._steps import TINY, absmax, measured_noise, noise_floor, steps, value_floor
from ._tiers import Tier, default_tolerance, relative_error
from .backends._base import Backend, BlockSpec, Evaluation, Gradient, Point

#: the sweep's steps, h = 1e-1 ... 1e-10
SWEEP_STEPS: tuple[float, ...] = tuple(10.0**-k for k in range(1, 11))
#: how many of the worst coordinates the sweep covers
SWEEP_COORDINATES = 3

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


@dataclass
class _Pair:
    """A centered difference in flight: where, how far, and what came back."""

    point_plus: Point
    point_minus: Point
    step: float
    plus: Evaluation | None = None
    minus: Evaluation | None = None
    #: the same difference at step/2, for Richardson extrapolation (see `refine`)
    half: _Pair | None = None
    #: the same difference at WIDE * step, against round-off (see `refine`)
    wide: _Pair | None = None
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
    #: `_Counter.one_sided`
    one_sided: tuple[int, Evaluation, Evaluation] | None = None
    #: per loss (None: the total), the round-off of f scaled by h that the size of the
    #: block's values and gradients implies (see `_steps.value_floor`)
    value_floor: Mapping[str | None, float] = field(default_factory=dict)

    def crossed(self) -> bool:
        assert self.plus is not None and self.minus is not None
        return crossed(self.plus.signature, self.minus.signature)

    def usable(self) -> bool:
        """Whether the numeric value is exact up to truncation (no kink in the way)."""
        return not self.crossed() or self.one_sided is not None

    def quotient(self, term: str | None) -> tuple[float, float]:
        """(numeric derivative, round-off floor) of the total (None) or one term.

        Once refined, the Richardson extrapolation (4 D(h/2) - D(h)) / 3, whose
        truncation error is O(h^4) instead of O(h^2).
        """
        assert self.plus is not None and self.minus is not None
        fp = _value(self.plus, term)
        fm = _value(self.minus, term)
        if self.one_sided is not None:
            side, half, center = self.one_sided
            f_far, f_half, f_0 = (fp if side > 0 else fm), _value(half, term), _value(center, term)
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
        return found

    def _floor(self, fa: float, fb: float, term: str | None) -> float:
        return max(
            noise_floor(fa, fb, self.step),
            self.value_floor.get(term, 0.0) / self.step,
        )


def _value(ev: Evaluation, term: str | None) -> float:
    return ev.loss if term is None else ev.terms[term]


def _pair(
    block: int,
    indices: np.ndarray | range,
    delta: np.ndarray,
    h: float,
    value_floor: Mapping[str | None, float],
    reference: Mapping[str | None, float] | None = None,
) -> _Pair:
    return _Pair(
        Point(((block, indices, delta * h),)),
        Point(((block, indices, -delta * h),)),
        h,
        value_floor=value_floor,
        reference=reference or {},
    )


def _coordinate_pair(
    block: int,
    index: int,
    h: float,
    value_floor: Mapping[str | None, float],
    reference: Mapping[str | None, float],
) -> _Pair:
    """`_pair` for one coordinate, built directly (a check builds many)."""
    at = np.array([index])
    return _Pair(
        Point(((block, at, np.array([h])),)),
        Point(((block, at, np.array([-h])),)),
        h,
        value_floor=value_floor,
        reference=reference,
    )


class _Counter:
    """Runs evaluations through the backend and counts them."""

    def __init__(self, backend: Backend, track: bool) -> None:
        self.backend = backend
        self.track = track
        self.count = 0
        #: the tracked evaluation at the base point, once known
        self.center: Evaluation | None = None

    def run(self, pairs: Sequence[_Pair]) -> None:
        """Evaluate the pairs, retrying crossings at smaller steps (kinks="track")."""
        self._evaluate(pairs)
        if not self.track:
            return
        todo = [
            (
                p,
                _Pair(
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
            retries = [_smaller(first, divisor) for _, first in todo]
            self._evaluate(retries)
            still = []
            for (original, first), retry in zip(todo, retries, strict=True):
                original.point_plus, original.point_minus = retry.point_plus, retry.point_minus
                original.step, original.plus, original.minus = retry.step, retry.plus, retry.minus
                if original.crossed():
                    still.append((original, first))
            todo = still
        todo = [p for p, _ in todo]
        if todo:
            self.one_sided(todo)

    def one_sided(self, pairs: Sequence[_Pair]) -> None:
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
            _check_finite(ev, "a one-sided half step")
            if ev.signature == c.signature:
                p.one_sided = (side, ev, c)

    def _evaluate(self, pairs: Sequence[_Pair], strict: bool = True) -> None:
        """Evaluate both points of each pair; a non-finite value raises, or with
        `strict` False marks the pair as not `finite` (a step beyond f's domain)."""
        points: list[Point] = []
        for p in pairs:
            points += [p.point_plus, p.point_minus]
        if not points:
            return
        evals = self.backend.evaluate(points, self.track)
        self.count += len(points)
        for i, p in enumerate(pairs):
            p.plus, p.minus = evals[2 * i], evals[2 * i + 1]
            if strict:
                _check_finite(p.plus, "f(x + h)")
                _check_finite(p.minus, "f(x - h)")
            else:
                p.finite = _finite(p.plus) and _finite(p.minus)

    def refine(self, pairs: Sequence[_Pair]) -> None:
        """Add a half step (Richardson extrapolation) and a wide step to each pair.

        Used on comparisons that fail, to confirm before condemning. A disagreement of
        a correct gradient is the centered formula's truncation error, O(h^2), or the
        round-off of f divided by h, O(1/h); an error of the gradient does not depend
        on h. The Richardson value at h/2 removes the first, the difference at
        WIDE * h divides the second by WIDE (f may lose far more than |f| suggests to
        cancellation: log-softmax of a confident score), so a correct gradient agrees
        with one of them and a wrong one with neither (see `_best`). A step that
        crosses a kink is discarded.
        """
        halves = [_smaller(p, 2.0) for p in pairs]
        wides = [_smaller(p, 1.0 / WIDE) for p in pairs]
        self._evaluate(halves)
        self._evaluate(wides, strict=False)  # 8h may leave f's domain: then unused
        for p, half, wide in zip(pairs, halves, wides, strict=True):
            if not (self.track and half.crossed()):
                p.half = half
            if wide.finite and not (self.track and wide.crossed()):
                p.wide = wide

    def measure_noise(self, pairs: Sequence[_Pair], losses: Sequence[str | None]) -> None:
        """Measure the round-off of f along each pair's delta (`measured_noise`).

        f is evaluated at x + k h u for k = -NOISE_REACH .. NOISE_REACH, at the pair's
        own spacing: the round-off that matters is the one at the pair's points (at a
        finer spacing f's rounding falls on a regular pattern that hides it). The
        pair's f(x +- h u) are reused; the checked point is evaluated again like the
        others (its first value came from the gradient pass, which may round
        differently). The pair's estimates then allow the measured noise in their
        floors (see `estimates`, `_best`). A line that leaves f's domain or crosses a
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
            if not all(_finite(ev) for ev in line):
                continue
            if self.track and any(ev.signature != c.signature for ev in line):
                continue
            noise = {
                loss: measured_noise(np.array([_value(ev, loss) for ev in line])) for loss in losses
            }
            p.noise = noise


def _smaller(p: _Pair, divisor: float) -> _Pair:
    def shrink(point: Point) -> Point:
        return Point(tuple((b, i, d / divisor) for b, i, d in point.deltas))

    return _Pair(
        shrink(p.point_plus),
        shrink(p.point_minus),
        p.step / divisor,
        value_floor=p.value_floor,
        reference=p.reference,
    )


def _finite(ev: Evaluation) -> bool:
    return math.isfinite(ev.loss) and all(math.isfinite(v) for v in ev.terms.values())


def _check_finite(ev: Evaluation, what: str) -> None:
    if _finite(ev):
        return
    values = {**{f"term {k!r}": v for k, v in ev.terms.items()}, "the loss": ev.loss}
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(
                f"gradcheck: {name} is {value} at {what}; the loss must be finite near the "
                "checked point (look for a log of zero, a division by zero or an overflow, "
                "or use a smaller eps)"
            )


def run_check(backend: Backend, opts: Options, framework: str) -> Result:
    """Check the backend's function with the given options and return the Result."""
    started = time.perf_counter()
    track = opts.kinks == "track"
    counter = _Counter(backend, track)
    specs = list(backend.blocks())
    # the backend's specs hold copies of the values; burn-in moves its own copy
    base = [s.values.copy() for s in specs] if opts.burn_in else [s.values for s in specs]
    warnings: list[str] = list(backend.warnings)

    burn_losses: tuple[float, ...] = ()
    if opts.burn_in:
        burn_losses = _burn_in(backend, opts, specs, base)
        counter.count += opts.burn_in

    grad = backend.gradient(track)
    counter.count += 1
    counter.center = grad.center
    _check_finite(grad.center, "the checked point")
    term_names = tuple(grad.terms)
    # a tracked center without a signature means the backend could not track this f
    # (e.g. JAX eager fallback): kinks are then possible, not absent
    untracked = track and grad.center.signature is None
    kinks_present = track and (grad.center.decisions > 0 or untracked)
    if untracked:
        warnings.append(
            "winner tracking was unavailable for this function: kink crossings cannot be "
            "detected, so the tolerance allows for kinks (ok)"
        )
    tolerance = opts.tolerance if opts.tolerance is not None else default_tolerance(kinks_present)

    if burn_losses:
        burn_losses = (*burn_losses, grad.center.loss)
        if not burn_losses[-1] < burn_losses[0]:
            warnings.append(
                f"burn-in did not lower the loss ({burn_losses[0]:.6g} -> "
                f"{burn_losses[-1]:.6g} in {opts.burn_in} steps): lower burn_in_lr"
            )

    scale = _scale(grad, opts, warnings)
    losses: list[str | None] = [TOTAL, *term_names]

    scaled: dict[tuple[str | None, int], np.ndarray] = {}

    def analytic(loss: str | None, b: int) -> np.ndarray:
        """The gradient of one loss in one block, times `scale` (computed once; read-only)."""
        g = scaled.get((loss, b))
        if g is None:
            g = grad.total[b] if loss is None else grad.terms[loss][b]
            g = scaled[(loss, b)] = g if scale == 1.0 else g * scale
        return g

    # coordinates of every block, then one direction per block
    coord_pairs: list[list[_Pair]] = []
    coord_index: list[np.ndarray] = []
    dir_pairs: list[_Pair | None] = []
    dirs: list[np.ndarray | None] = []
    floors: list[dict[str | None, float]] = []
    largests: list[dict[str | None, float]] = []
    for b, spec in enumerate(specs):
        raw = {None: grad.total[b], **{t: grad.terms[t][b] for t in term_names}}
        vf = {loss: value_floor(g, base[b]) for loss, g in raw.items()}
        floors.append(vf)
        largest = {loss: absmax(g) for loss, g in raw.items()}
        largests.append(largest)
        if opts.mode == "directions":
            idx = np.zeros(0, dtype=np.int64)
        else:
            grads = [grad.total[b], *(grad.terms[t][b] for t in term_names)]
            idx = sample_coordinates(spec.name, spec.size, grads, opts.samples_per_block, opts.seed)
        h = steps(opts.eps, base[b][idx])
        coord_index.append(idx)
        coord_pairs.append(
            [
                _coordinate_pair(b, int(i), float(hi), vf, largest)
                for i, hi in zip(idx, h, strict=True)
            ]
        )
        if opts.mode in ("directions", "both") and spec.size > 1:
            v = direction(spec.name, spec.size, opts.seed)
            rms = float(np.sqrt(np.mean(base[b] ** 2))) if opts.eps == "auto" else 0.0
            hd = float(steps(opts.eps, np.array([rms]))[0])
            dirs.append(v)
            norms = {loss: float(np.linalg.norm(g)) for loss, g in raw.items()}
            dir_pairs.append(_pair(b, range(spec.size), v, hd, vf, norms))
        else:
            dirs.append(None)
            dir_pairs.append(None)
    counter.run([p for ps in coord_pairs for p in ps] + [p for p in dir_pairs if p is not None])

    # confirm before condemning: failing comparisons get a Richardson step, a wide step
    # and, where round-off may explain what still fails, a measurement of f's noise
    suspects: list[tuple[_Pair, list[float]]] = []
    for b in range(len(specs)):
        gs = [analytic(loss, b) for loss in losses]
        for i, pp in zip(coord_index[b], coord_pairs[b], strict=True):
            values = [float(g[i]) for g in gs]
            if _fails(pp, values, losses, scale, tolerance):
                suspects.append((pp, values))
        dp, v = dir_pairs[b], dirs[b]
        if dp is not None and v is not None:
            values = [float(v @ g) for g in gs]
            if _fails(dp, values, losses, scale, tolerance):
                suspects.append((dp, values))
    _confirm(counter, suspects, losses, scale, tolerance)

    # localize directions that fail while no sampled coordinate does (bisection)
    localized: list[list[tuple[int, _Pair]]] = [[] for _ in specs]
    for b in range(len(specs)):
        p, v = dir_pairs[b], dirs[b]
        if p is None or v is None or not p.usable():
            continue
        for loss in losses:
            g = analytic(loss, b)
            if _pair_tier(p, float(v @ g), loss, scale) <= tolerance:
                continue
            if any(
                _pair_tier(pp, float(g[i]), loss, scale) > tolerance
                for i, pp in zip(coord_index[b], coord_pairs[b], strict=True)
                if pp.usable()
            ):
                continue  # a sampled coordinate already shows the error
            spot = _bisect(counter, b, v, p, g, loss, scale)
            if (
                spot is not None
                and spot not in coord_index[b]
                and all(spot != i for i, _ in localized[b])
            ):
                h = float(steps(opts.eps, base[b][[spot]])[0])
                pair = _pair(b, np.array([spot]), np.ones(1), h, floors[b], largests[b])
                counter.run([pair])
                values = [float(analytic(lo, b)[spot]) for lo in losses]
                if _fails(pair, values, losses, scale, tolerance):
                    _confirm(counter, [(pair, values)], losses, scale, tolerance)
                localized[b].append((spot, pair))

    results: dict[str | None, Result] = {}
    for loss in losses:
        blocks = []
        for b, spec in enumerate(specs):
            extra = localized[b]
            idx = np.concatenate([coord_index[b], np.array([i for i, _ in extra], dtype=np.int64)])
            pairs = coord_pairs[b] + [pp for _, pp in extra]
            blocks.append(
                _block_result(
                    spec,
                    idx,
                    pairs,
                    analytic(loss, b),
                    scale,
                    tolerance,
                    dir_pairs[b],
                    dirs[b],
                    tuple(i for i, _ in extra),
                    loss,
                )
            )
        results[loss] = _assemble(
            blocks, tolerance, kinks_present, framework, loss, opts, scale, counter.count
        )

    warnings.extend(backend.warnings)  # what the backend learnt while evaluating f
    _dominance_warnings(specs, grad, term_names, opts.dominance, warnings)
    _active_range_warnings(specs, grad, scale, warnings)
    for b, spec in enumerate(specs):
        pairs = [*coord_pairs[b], *(pp for _, pp in localized[b])]
        dp = dir_pairs[b]
        if dp is not None:
            pairs.append(dp)
        _noise_warning(spec, pairs, results[TOTAL].blocks[b], scale, warnings)

    mostly_excluded = _excluded_warnings(results[TOTAL], warnings)
    if mostly_excluded or not all(r.passed for r in results.values()):
        _check_deterministic(counter, grad.center)
    sweep_rows = _sweep(counter, specs, results[TOTAL], scale) if opts.sweep else ()

    total = results[TOTAL]
    terms = {t: results[t] for t in term_names}
    worst_tier = max([total.tier, *(r.tier for r in terms.values())])
    worst_err = max([total.max_rel_error, *(r.max_rel_error for r in terms.values())])
    passed = total.passed and all(r.passed for r in terms.values())
    return Result(
        passed=passed,
        tier=worst_tier,
        max_rel_error=worst_err,
        tolerance=tolerance,
        blocks=total.blocks,
        terms=terms,
        kinks_crossed=total.kinks_crossed,
        evaluations=counter.count,
        warnings=tuple(dict.fromkeys(w.removeprefix("gradcheck: ") for w in warnings)),
        kinks_present=kinks_present,
        framework=framework,
        term=None,
        options=_public_options(opts),
        seconds=time.perf_counter() - started,
        burn_in_losses=burn_losses,
        sweep=sweep_rows,
        scale=scale,
    )


def _fails(
    pair: _Pair,
    analytic: Sequence[float],
    losses: Sequence[str | None],
    scale: float,
    tolerance: Tier,
) -> bool:
    """Whether a (kink-free) comparison is worse than the tolerance for some loss."""
    if pair.crossed() or pair.half is not None:
        return False
    return any(
        _pair_tier(pair, a, loss, scale) > tolerance
        for a, loss in zip(analytic, losses, strict=True)
    )


def _confirm(
    counter: _Counter,
    suspects: Sequence[tuple[_Pair, Sequence[float]]],
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
    plausible: dict[int, list[_Pair]] = {}
    for p, values in suspects:
        for a, loss in zip(values, losses, strict=True):
            n, _, _, tier = _best(p, a, loss, scale)
            if tier > tolerance and relative_error(a, n) < NOISE_PLAUSIBLE:
                plausible.setdefault(p.point_plus.deltas[0][0], []).append(p)
                break
    lines = [max(ps, key=lambda p: _support(p)) for ps in plausible.values()]
    counter.measure_noise(lines, losses)
    for line, ps in zip(lines, plausible.values(), strict=True):
        for p in ps:
            p.noise = line.noise


def _support(p: _Pair) -> int:
    """How many coordinates a pair moves."""
    _, indices, _ = p.point_plus.deltas[0]
    return len(indices) if isinstance(indices, range) else int(np.size(indices))


def _pair_tier(pair: _Pair, analytic: float, loss: str | None, scale: float) -> Tier:
    """The tier of one pair's numeric value against an analytic value, for one loss."""
    return _best(pair, analytic, loss, scale)[3]


def _best(
    pair: _Pair, analytic: float, loss: str | None, scale: float
) -> tuple[float, float, float, Tier]:
    """(numeric, floor, step, tier) of the pair's estimate that agrees best with `analytic`.

    An unrefined pair has one estimate. A refined one (see `_Counter.refine`) also has
    the Richardson value and the wide-step difference: a correct gradient agrees with
    the one whose error (truncation or round-off) is small, while an error of the
    gradient shows in every one of them. Ties go to the first.
    """
    if pair.wide is None and not pair.noise:  # one estimate: the common case, quickly
        n, floor = pair.quotient(loss)
        n, floor = n * scale, floor * scale
        return n, floor, pair.step, _verdict(analytic, n, floor)
    best: tuple[float, float, float, Tier] | None = None
    for n, floor, noise, step in pair.estimates(loss):
        n, floor, noise = n * scale, floor * scale, noise * scale
        if noise <= NOISE_USABLE * max(
            abs(analytic), abs(n), pair.reference.get(loss, 0.0) * scale
        ):
            floor = max(floor, noise)
        tier = _verdict(analytic, n, floor)
        if best is None or tier < best[3]:
            best = (n, floor, step, tier)
    assert best is not None
    return best


def _verdict(a: float, n: float, floor: float) -> Tier:
    """The tier of one comparison; a disagreement within round-off counts as HAPPY."""
    if abs(a - n) <= floor:
        return Tier.HAPPY
    return Tier.of(relative_error(a, n))


def _block_result(
    spec: BlockSpec,
    idx: np.ndarray,
    pairs: Sequence[_Pair],
    g: np.ndarray,
    scale: float,
    tolerance: Tier,
    dpair: _Pair | None,
    v: np.ndarray | None,
    localized: tuple[int, ...],
    loss: str | None,
) -> BlockResult:
    """Compare analytic and numeric values of one block for one loss."""
    k = len(pairs)
    analytic = np.array(g[idx], dtype=np.float64)
    numeric = np.empty(k)
    floor = np.empty(k)
    step = np.empty(k)
    kink = np.zeros(k, dtype=bool)
    one_sided = np.zeros(k, dtype=bool)
    for j, p in enumerate(pairs):
        numeric[j], floor[j], step[j], _ = _best(p, float(analytic[j]), loss, scale)
        kink[j], one_sided[j] = p.crossed(), p.one_sided is not None
    rel = np.array([relative_error(a, n) for a, n in zip(analytic, numeric, strict=True)])
    within = np.abs(analytic - numeric) <= floor
    tiers = [
        Tier.HAPPY if w else Tier.of(float(r))
        for r, w, c, o in zip(rel, within, kink, one_sided, strict=True)
        if o or not c
    ]
    d = None
    if dpair is not None and v is not None:
        a = float(v @ g)
        n, fl, h, tier = _best(dpair, a, loss, scale)
        d = DirectionResult(
            analytic=a,
            numeric=n,
            rel_error=relative_error(a, n),
            step=h,
            kink_crossed=dpair.crossed(),
            within_noise=abs(a - n) <= fl,
            tier=tier,
            one_sided=dpair.one_sided is not None,
        )
        if dpair.usable():
            tiers.append(d.tier)
    tier = max(tiers, default=Tier.HAPPY)
    indices = tuple(_multi_index(int(i), spec.shape) for i in idx)
    return BlockResult(
        name=spec.name,
        shape=tuple(spec.shape),
        dtype=spec.dtype,
        indices=indices,
        analytic=analytic,
        numeric=numeric,
        rel_error=rel,
        kink_crossed=kink,
        step=step,
        within_noise=within,
        one_sided=one_sided,
        tier=tier,
        passed=tier <= tolerance,
        direction=d,
        localized=tuple(_multi_index(i, spec.shape) for i in localized),
    )


def _multi_index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    if not shape:
        return ()
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def _burn_in(
    backend: Backend, opts: Options, specs: Sequence[BlockSpec], base: list[np.ndarray]
) -> tuple[float, ...]:
    """Take `opts.burn_in` optimisation steps on the loss; return the losses seen."""
    losses = []
    for step in range(opts.burn_in):
        g = backend.gradient(False)
        _check_finite(g.center, f"burn-in step {step}")
        losses.append(g.center.loss)
        if opts.burn_in_step is not None:
            named = {s.name: g.total[b].reshape(s.shape) for b, s in enumerate(specs)}
            out = opts.burn_in_step(named)
            update = []
            for s in specs:
                if not isinstance(out, Mapping) or s.name not in out:
                    raise ValueError(
                        f"gradcheck: burn_in_step must return a dict with an update for "
                        f"every block; {s.name!r} is missing"
                    )
                u = np.asarray(out[s.name], dtype=np.float64)
                if u.size != s.size:
                    raise ValueError(
                        f"gradcheck: burn_in_step returned shape {u.shape} for block "
                        f"{s.name!r}, which has shape {s.shape}"
                    )
                update.append(u.reshape(-1))
        else:
            update = [-opts.burn_in_lr * gb for gb in g.total]
        backend.step(update)
        for b, u in enumerate(update):
            base[b] += u
    return tuple(losses)


def _scale(grad: Gradient, opts: Options, warnings: list[str]) -> float:
    """The loss factor for scale="auto": a power of two bringing max |g| near 1."""
    if opts.scale != "auto":
        return 1.0
    largest = max((absmax(g) for g in grad.total), default=0.0)
    if largest == 0.0:
        return 1.0
    k = -round(math.log2(largest))
    if k == 0:
        return 1.0
    warnings.append(
        f"scale='auto' multiplied the loss by 2**{k} ({2.0**k:.3g}) so the largest "
        f"gradient ({largest:.3g}) is near 1.0; values in the report are scaled"
    )
    return 2.0**k


def _bisect(
    counter: _Counter,
    b: int,
    v: np.ndarray,
    whole: _Pair,
    g: np.ndarray,
    loss: str | None,
    scale: float,
) -> int | None:
    """Find the coordinate that makes a direction fail, halving its support each time."""
    idx = np.arange(v.size)
    a_all = float(v @ g)
    n_all = whole.quotient(loss)[0] * scale
    while idx.size > 1:
        half, other = idx[: idx.size // 2], idx[idx.size // 2 :]
        pair = _pair(b, half, v[half], whole.step, whole.value_floor, whole.reference)
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


def _dominance_warnings(
    specs: Sequence[BlockSpec],
    grad: Gradient,
    term_names: Sequence[str],
    ratio: float,
    warnings: list[str],
) -> None:
    """Warn where one term's gradient swamps another's in a block (the seed's reg trap)."""
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
                f"total; check the terms on their own (Result.terms)"
            )


def _noise_warning(
    spec: BlockSpec, pairs: Sequence[_Pair], block: BlockResult, scale: float, warnings: list[str]
) -> None:
    """Say where f's round-off was measured, what it hides, and what became of it."""
    measured = [p for p in pairs if p.noise]
    if not measured:
        return
    worst = max(measured, key=lambda p: p.noise.get(TOTAL, 0.0) / p.step)
    limit = NOISE_SIGMAS * worst.noise.get(TOTAL, 0.0) / worst.step * scale
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


def _excluded_warnings(total: Result, warnings: list[str]) -> bool:
    """Warn about blocks that kink exclusions left (nearly) unchecked.

    Returns whether more than half of some block's comparisons were excluded: random
    decisions (a mask drawn from a generator the check cannot reset) look like kinks
    crossed everywhere, so such a check is then tested for determinism too.
    """
    suspicious = False
    for block in total.blocks:
        counted = int(block.counted.sum())
        total_n = len(block.indices)
        if block.direction is not None:
            counted += int(block.direction.counted)
            total_n += 1
        if total_n and total_n - counted > total_n / 2:
            suspicious = True
        if total_n and counted == 0:
            warnings.append(
                f"block {block.name!r} was not checked: all {total_n} of its comparisons "
                "crossed a kink and were excluded; check at another point (another seed or "
                "fewer datapoints) or with a smaller eps"
            )
    return suspicious


def _check_deterministic(counter: _Counter, center: Evaluation) -> None:
    """Before condemning a gradient, make sure f gives one value at one point.

    A function drawing from a generator the check cannot reset (a NumPy Generator or a
    torch.Generator created outside f, a data loader's shuffle) differs between
    evaluations, and every difference quotient is then noise. Costs one evaluation,
    spent only on a failing check.
    """
    again = counter.backend.evaluate([Point(())], counter.track)[0]
    counter.count += 1
    if again.loss != center.loss or dict(again.terms) != dict(center.terms):
        raise ValueError(
            "gradcheck: f is not deterministic: two evaluations at the same point gave "
            f"{center.loss!r} and {again.loss!r}. It draws from randomness the check "
            "cannot reset to the seed (a generator created outside f, such as "
            "np.random.default_rng(...) or torch.Generator) or keeps state between calls. "
            "Draw from the global RNGs (random, np.random, torch), create the generator "
            "inside f, or pass the random values in as arguments."
        )


def _active_range_warnings(
    specs: Sequence[BlockSpec], grad: Gradient, scale: float, warnings: list[str]
) -> None:
    """Warn where a block's gradients are all tiny (outside the active range)."""
    for b, spec in enumerate(specs):
        largest = absmax(grad.total[b]) * scale
        if 0.0 < largest <= TINY:
            warnings.append(
                f"block {spec.name!r} has tiny gradients (largest |g| = {largest:.2e}, "
                f"below ~{TINY:.0e}), outside the active range of floating point: scale "
                "the loss up inside f (for example, do not divide by the batch size) so "
                "the values compared are near 1; scale='auto' only rescales the report"
            )


def _sweep(
    counter: _Counter, specs: Sequence[BlockSpec], total: Result, scale: float
) -> tuple[tuple[str, tuple[int, ...], dict[float, float]], ...]:
    """Relative error at h = 1e-1 ... 1e-10 for the worst coordinates of the total."""
    worst: list[tuple[float, int, int, float]] = []
    for b, block in enumerate(total.blocks):
        for j, index in enumerate(block.indices):
            if not block.kink_crossed[j]:
                flat = int(np.ravel_multi_index(index, block.shape)) if block.shape else 0
                worst.append((float(block.rel_error[j]), b, flat, float(block.analytic[j])))
    worst.sort(reverse=True)
    rows = []
    for _, b, flat, a in worst[:SWEEP_COORDINATES]:
        pairs = [_pair(b, np.array([flat]), np.ones(1), h, {}) for h in SWEEP_STEPS]
        counter._evaluate(pairs)
        row = {p.step: relative_error(a, p.quotient(None)[0] * scale) for p in pairs}
        rows.append((specs[b].name, _multi_index(flat, specs[b].shape), row))
    return tuple(rows)


def _assemble(
    blocks: list[BlockResult],
    tolerance: Tier,
    kinks_present: bool,
    framework: str,
    loss: str | None,
    opts: Options,
    scale: float,
    evaluations: int,
) -> Result:
    tier = max((b.tier for b in blocks), default=Tier.HAPPY)
    return Result(
        passed=all(b.passed for b in blocks),
        tier=tier,
        max_rel_error=max((b.max_rel_error for b in blocks), default=0.0),
        tolerance=tolerance,
        blocks=tuple(blocks),
        kinks_crossed=sum(b.kinks_crossed for b in blocks),
        evaluations=evaluations,
        kinks_present=kinks_present,
        framework=framework,
        term=loss,
        options=_public_options(opts),
        scale=scale,
    )


def _public_options(opts: Options) -> dict[str, object]:
    d = opts.as_dict()
    if callable(d.get("wrt")):
        d["wrt"] = getattr(d["wrt"], "__name__", "<predicate>")
    if d.get("burn_in_step") is not None:
        d["burn_in_step"] = getattr(d["burn_in_step"], "__name__", "<callable>")
    return d
