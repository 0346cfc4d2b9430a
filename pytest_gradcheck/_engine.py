"""The framework-free check: burn-in, sampling, terms, verdict.

The comparisons themselves (centered differences, kink retries, confirmation) are
`_pairs`'s, a direction's localization `_directions`'s, the warnings `_warnings`'s.
The engine talks to a backend through `backends._base.Backend` only. Its cost is the
number of evaluations of f: one analytic pass (and one more in the user's own dtypes
where the check cast lower precision), two per checked coordinate, two per block's
direction, plus retries at smaller steps where a kink was crossed and about 2·log2(n)
to localize a failing direction that no sampled coordinate explains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._directions import around_ties, beside_the_sample, bisect, localize_above
from ._inputs import check_blocks
from ._notices import OFF_TIES_NOTICE, SCALE_NOTICE
from ._options import Options
from ._pairs import (
    TOTAL,
    Counter,
    Pair,
    best,
    check_finite,
    confirm,
    coordinate_pair,
    fails,
    is_finite,
    make_pair,
    pair_tier,
)
from ._result import BlockResult, DirectionResult, Result
from ._sampling import Streams, direction, off_ties, sample_coordinates
from ._shapes import shape_warnings
from ._steps import TINY, absmax, norm, step_for, steps, value_floor
from ._tiers import Tier, default_tolerance, relative_error
from ._warnings import (
    active_range_warnings,
    domain_warnings,
    dominance_warnings,
    excluded_warnings,
    mostly_excluded,
    noise_warning,
    resolution_warnings,
    smooth_warnings,
    stationary_warnings,
    zero_warnings,
)
from .backends._base import Backend, BlockSpec, Evaluation, Gradient, Point

#: the sweep's steps, h = 1e-1 ... 1e-10
SWEEP_STEPS: tuple[float, ...] = tuple(10.0**-k for k in range(1, 11))
#: how many of the worst coordinates the sweep covers
SWEEP_COORDINATES = 3
#: how far a block none of whose comparisons counted is moved off its ties, in steps h
#: of its direction: far enough that no step (nor the retries' larger ones) reaches a
#: tie the move broke, near enough to be the same region of f
OFF_TIES_STEPS = 100.0


def run_check(backend: Backend, opts: Options, framework: str) -> Result:
    """Check the backend's function with the given options and return the Result."""
    started = time.perf_counter()
    track = opts.kinks == "track"
    counter = Counter(backend, track)
    specs = list(backend.blocks())
    maxima = check_blocks(specs)  # no empty block, no NaN in one
    counter.blocks = [(s.name, s.shape) for s in specs]
    # the backend's specs hold copies of the values; burn-in moves its own copy
    base = [s.values.copy() for s in specs] if opts.burn_in else [s.values for s in specs]
    warnings: list[str] = list(backend.warnings)

    burn_losses: tuple[float, ...] = ()
    if opts.burn_in:
        burn_losses = _burn_in(backend, opts, specs, base)
        counter.count += opts.burn_in

    grad = backend.gradient(track)
    counter.count += grad.evaluations
    counter.center = grad.center
    check_finite(grad.center, "the checked point", near=False)
    # the gradient in the user's own dtypes, where the check cast lower precision: a
    # backward that overflows there is finite in float64 (see `backends._own_dtype`).
    # Here, at the checked point and before any comparison: nothing moved it yet, and
    # the pass changes nothing the evaluations see
    own = backend.own_dtype_pass()
    if own is not None:
        counter.count += 1
        warnings.extend(own)
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
    # the default tolerance of a function with kinks allows for crossing them; a
    # direction that crossed none is smooth, and an error there is localized all the
    # same (the localized coordinate's own error then decides, see `_directions.localize_above`)
    strict = kinks_present and opts.tolerance is None

    if burn_losses:
        burn_losses = (*burn_losses, grad.center.loss)
        if not burn_losses[-1] < burn_losses[0]:
            warnings.append(
                f"burn-in did not lower the loss ({burn_losses[0]:.6g} -> "
                f"{burn_losses[-1]:.6g} in {opts.burn_in} steps): lower burn_in_lr"
            )

    scale = _scale(grad, opts, warnings)
    losses: list[str | None] = [TOTAL, *term_names]
    streams = Streams(opts.seed)
    if opts.burn_in:
        maxima = [absmax(x) for x in base]
    blocks = [_plan(b, s, grad, base[b], maxima[b], opts, streams) for b, s in enumerate(specs)]
    counter.run(
        [p for c in blocks for p in c.coords] + [c.dpair for c in blocks if c.dpair is not None]
    )

    # a direction through an exact tie is excluded: take it again without the parts
    # of the block that move the tie, so the rest of the block stays covered (unless
    # the coordinates cover the whole block already)
    for b, c in enumerate(blocks):
        p, v = c.dpair, c.direction
        if p is not None and v is not None and not p.usable() and c.index.size < c.spec.size:
            found = around_ties(counter, b, v, c.dstep, p)
            if found is not None:
                c.direction, c.dpair, c.coverage = found

    analytic = _Analytic([grad] * len(blocks), scale, blocks)
    judge = _Judge(counter, tuple(losses), scale, tolerance, strict, opts.eps)
    _confirm(judge, blocks, analytic)
    _localize(judge, blocks, analytic, base)

    public = _public_options(opts)

    def assemble() -> dict[str | None, Result]:
        return {
            loss: _assemble(
                [_block_result(c, analytic, loss, scale, tolerance, strict) for c in blocks],
                tolerance,
                kinks_present,
                framework,
                loss,
                public,
                scale,
                counter.count,
            )
            for loss in losses
        }

    results = assemble()
    # what follows evaluates f at the checked point: before any block moves off its ties
    crossed = results[TOTAL].kinks_crossed > 0  # (none crossed: none excluded)
    if not all(r.passed for r in results.values()) or (crossed and mostly_excluded(results[TOTAL])):
        _check_deterministic(counter, grad.center)
    sweep_rows = _sweep(counter, specs, results[TOTAL], scale) if opts.sweep else ()

    grads = [grad] * len(blocks)  # per block, the gradient at its comparisons' point
    unjudged = [c for c in blocks if c.pairs() and not any(p.usable() for p in c.pairs())]
    uncovered = [c for c in blocks if c.uncovered() and all(c is not u for u in unjudged)]
    if unjudged or uncovered:
        moved_by = _off_the_ties(
            judge, blocks, grads, unjudged, uncovered, base, opts, streams, track
        )
        analytic = _Analytic(grads, scale, blocks)
        results = assemble()
        for b, delta in moved_by.items():
            why = (
                "each of its comparisons crossed a kink at every step (a ReLU input of "
                "exactly 0, from a zero bias on zero padding, say)"
                if any(c.block == b for c in unjudged)
                else "its direction crossed a kink at every step, in every part of the "
                "block, leaving the coordinates the sample missed unchecked (ties "
                "scattered over it: integer-valued inputs under a ReLU or a max-pool, say)"
            )
            warnings.append(
                f"block {specs[b].name!r} {OFF_TIES_NOTICE}: {why}, so it was checked at "
                f"points moved off the ties, {delta:.2g} to either side in each of its "
                "entries (seeded signs), where its gradient is unambiguous; its rows in "
                "the report are from the side that agreed worse"
            )

    warnings.extend(backend.warnings)  # what the backend learnt while evaluating f
    domain_warnings(specs, counter, warnings)
    dominance_warnings(specs, grad, term_names, opts.dominance, warnings)
    largests = [c.largest for c in blocks]
    coord_pairs = [c.coords for c in blocks]
    dir_pairs = [c.dpair for c in blocks]
    vacuous = zero_warnings(
        specs, grads, largests, coord_pairs, dir_pairs, results[TOTAL], warnings
    )
    tiny = {b for b, m in enumerate(largests) if 0.0 < m[TOTAL] * scale <= TINY}
    resolution_warnings(
        results[TOTAL],
        [m[TOTAL] * scale for m in largests],
        [c.dpair.reference.get(TOTAL, 0.0) * scale if c.dpair else 0.0 for c in blocks],
        grad.center.loss,
        vacuous | tiny,
        warnings,
    )
    vacuous |= stationary_warnings(
        results[TOTAL],
        lambda b: (blocks[b].rows()[1], blocks[b].dpair),
        warnings,
    )
    active_range_warnings(
        [s for b, s in enumerate(specs) if b not in vacuous],
        [m[TOTAL] for b, m in enumerate(largests) if b not in vacuous],
        scale,
        warnings,
    )
    for c, block in zip(blocks, results[TOTAL].blocks, strict=True):
        noise_warning(c.spec, c.pairs(), block, scale, c.largest[TOTAL], warnings)

    if results[TOTAL].kinks_crossed:
        excluded_warnings(results[TOTAL], warnings)
    if strict and not untracked:  # (untracked, "crossed no kink" is not known)
        smooth_warnings(results[TOTAL], warnings)
    if not all(r.passed for r in results.values()):  # (a passing check pays nothing)
        shape_warnings(results, blocks, analytic.of, grads.__getitem__, scale, warnings)

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
        options=dict(public),
        seconds=time.perf_counter() - started,
        burn_in_losses=burn_losses,
        sweep=sweep_rows,
        scale=scale,
    )


@dataclass
class _Checked:
    """One block's comparisons in flight: its sampled coordinates, its direction and
    the coordinates its direction's localization added."""

    block: int  # the block's position among the backend's blocks
    spec: BlockSpec
    #: the sampled flat indices, and their pairs
    index: np.ndarray
    coords: list[Pair]
    #: per loss (None: the total), the round-off floor of the block's values and its
    #: largest |g| (see `_steps.value_floor`)
    floor: dict[str | None, float]
    largest: dict[str | None, float]
    #: the block's direction v (None: none), its pair and step, and the share of the
    #: block it covers (less than 1 after `around_ties`)
    direction: np.ndarray | None = None
    dpair: Pair | None = None
    dstep: float = 0.0
    coverage: float = 1.0
    #: (flat index, pair) of each coordinate found by bisecting the direction
    localized: list[tuple[int, Pair]] = field(default_factory=list)

    def rows(self) -> tuple[np.ndarray, list[Pair]]:
        """The flat indices and pairs of the block's report rows: the sampled
        coordinates, then those localized."""
        if not self.localized:
            return self.index, self.coords
        extra = np.array([i for i, _ in self.localized], dtype=np.int64)
        return np.concatenate([self.index, extra]), [*self.coords, *(p for _, p in self.localized)]

    def uncovered(self) -> bool:
        """Whether some of the block's coordinates took part in no counted comparison:
        its direction crossed a kink at every step, also in every part `around_ties`
        tried, and the sample is not the whole block."""
        p = self.dpair
        return p is not None and not p.usable() and self.index.size < self.spec.size

    def pairs(self) -> list[Pair]:
        """Every pair of the block: coordinates, localized ones, the direction."""
        found = self.rows()[1]
        return found if self.dpair is None else [*found, self.dpair]


def _plan(
    b: int,
    spec: BlockSpec,
    grad: Gradient,
    x: np.ndarray,
    values_max: float,
    opts: Options,
    streams: Streams,
) -> _Checked:
    """Block b's comparisons: its sampled coordinates and its direction (not yet run)."""
    raw = {None: grad.total[b], **{t: g[b] for t, g in grad.terms.items()}}
    largest = {loss: absmax(g) for loss, g in raw.items()}
    vf = {loss: value_floor(m, values_max) for loss, m in largest.items()}
    if opts.mode == "directions":
        # a block of one entry has no direction but its coordinate (the same 2
        # evaluations): without it, the block would pass unseen
        idx = np.zeros(int(spec.size == 1), dtype=np.int64)
    else:
        idx = sample_coordinates(
            spec.name, spec.size, list(raw.values()), opts.samples_per_block, opts.seed
        )
    coords = []
    if idx.size:
        h = steps(opts.eps, x[idx])
        coords = [
            coordinate_pair(b, i, hi, vf, largest)
            for i, hi in zip(idx.tolist(), h.tolist(), strict=True)
        ]
    checked = _Checked(b, spec, idx, coords, vf, largest)
    if opts.mode in ("directions", "both") and spec.size > 1:
        v = direction(spec.name, spec.size, opts.seed, streams)
        v, moved = beside_the_sample(v, list(raw.values()), idx)
        rms = math.sqrt(float(x @ x) / x.size) if opts.eps == "auto" else 0.0
        hd = step_for(opts.eps, rms)
        dvf, dlargest, dgrads = vf, largest, raw
        if moved is not None:  # the round-off and size of what the direction moves
            dgrads = {loss: g[moved] for loss, g in raw.items()}
            dlargest = {loss: absmax(g) for loss, g in dgrads.items()}
            dmax = absmax(x[moved])
            dvf = {loss: value_floor(m, dmax) for loss, m in dlargest.items()}
        norms = {loss: norm(g, dlargest[loss]) for loss, g in dgrads.items()}
        checked.direction = v
        checked.dpair = make_pair(b, range(spec.size), v, hd, dvf, norms)
        checked.dstep = hd
    return checked


class _Analytic:
    """The analytic side of the comparisons: per loss and block, the gradient times the
    loss factor, and v · g of the block's direction (each computed once, read-only)."""

    def __init__(self, grads: Sequence[Gradient], scale: float, blocks: Sequence[_Checked]) -> None:
        #: per block, the gradient at the point its comparisons were made
        self._grads, self._scale, self._blocks = grads, scale, blocks
        self._scaled: dict[tuple[str | None, int], np.ndarray] = {}
        self._along: dict[tuple[str | None, int], float] = {}

    def of(self, loss: str | None, b: int) -> np.ndarray:
        g = self._scaled.get((loss, b))
        if g is None:
            grad = self._grads[b]
            g = grad.total[b] if loss is None else grad.terms[loss][b]
            g = self._scaled[(loss, b)] = g if self._scale == 1.0 else g * self._scale
        return g

    def along(self, loss: str | None, b: int) -> float:
        a = self._along.get((loss, b))
        if a is None:
            v = self._blocks[b].direction
            assert v is not None
            a = self._along[(loss, b)] = float(v @ self.of(loss, b))
        return a


@dataclass(frozen=True)
class _Judge:
    """What judging a comparison takes: the evaluations' counter, the losses judged
    (the total, then each term), the loss factor, the tolerance, whether a smooth
    direction of a kinked f is localized at *happy* (`strict`) and the step option."""

    counter: Counter
    losses: tuple[str | None, ...]
    scale: float
    tolerance: Tier
    strict: bool
    eps: float | str


def _confirm(judge: _Judge, blocks: Sequence[_Checked], analytic: _Analytic) -> None:
    """Confirm before condemning: failing comparisons get a Richardson step, a wide step
    and, where round-off may explain what still fails, a measurement of f's noise. With
    `strict`, every smooth comparison above *happy* is confirmed at *happy*: a direction
    (it will be localized) and a coordinate (what still disagrees is warned of, see
    `_warnings.smooth_warnings`), also one that fails the tolerance, so that the smaller
    steps a correct gradient near a singularity needs are taken until it agrees to
    *happy* (confirmed at *ok*, `log(b)` at b = 3e-4 beside a ReLU stopped at 3e-7 and
    drew that warning)."""
    counter, losses, scale = judge.counter, judge.losses, judge.scale
    # (`fails` leaves out the comparisons that crossed a kink, confirmed by neither)
    limit = Tier.HAPPY if judge.strict else judge.tolerance
    suspects: list[tuple[Pair, list[float]]] = []
    for c in blocks:
        b = c.block
        gs = [analytic.of(loss, b) for loss in losses]
        for i, pp in zip(c.index, c.coords, strict=True):
            values = [float(g[i]) for g in gs]
            if fails(pp, values, losses, scale, limit):
                suspects.append((pp, values))
        dp = c.dpair
        if dp is not None and c.direction is not None:
            values = [analytic.along(loss, b) for loss in losses]
            if fails(dp, values, losses, scale, limit):
                suspects.append((dp, values))
    confirm(counter, suspects, losses, scale, limit)


def _localize(
    judge: _Judge, blocks: Sequence[_Checked], analytic: _Analytic, base: Sequence[np.ndarray]
) -> None:
    """Localize each direction that fails while no sampled coordinate does: bisect it to
    an entry, and compare that entry on its own (added to `localized`)."""
    counter, losses, scale, tolerance = judge.counter, judge.losses, judge.scale, judge.tolerance
    strict, eps = judge.strict, judge.eps
    for c in blocks:
        b, p, v = c.block, c.dpair, c.direction
        if p is None or v is None or not p.usable():
            continue
        limit = localize_above(p, tolerance, strict)
        for loss in losses:
            g = analytic.of(loss, b)
            if pair_tier(p, analytic.along(loss, b), loss, scale) <= limit:
                continue
            if any(
                pair_tier(pp, float(g[i]), loss, scale) > limit
                for i, pp in zip(c.index, c.coords, strict=True)
                if pp.usable()
            ):
                continue  # a sampled coordinate already shows the error
            spot = bisect(counter, b, v, p, g, loss, scale)
            if spot is None or spot in c.index or any(spot == i for i, _ in c.localized):
                continue
            h = step_for(eps, float(base[b][spot]))
            pair = make_pair(b, np.array([spot]), np.ones(1), h, c.floor, c.largest)
            counter.run([pair])
            values = [float(analytic.of(lo, b)[spot]) for lo in losses]
            if fails(pair, values, losses, scale, tolerance):
                confirm(counter, [(pair, values)], losses, scale, tolerance)
            c.localized.append((spot, pair))


def _off_the_ties(
    judge: _Judge,
    blocks: list[_Checked],
    grads: list[Gradient],
    unjudged: Sequence[_Checked],
    uncovered: Sequence[_Checked],
    base: Sequence[np.ndarray],
    opts: Options,
    streams: Streams,
    track: bool,
) -> dict[int, float]:
    """Check at points moved off the ties the blocks none of whose comparisons counted
    (`unjudged`) and those whose direction was lost to ties (`uncovered`).

    At an exact tie (a ReLU input of exactly 0, from a zero bias on zero padding) every
    step crosses the kink, however small, so a block whose every coordinate moves a tie
    had no comparison at all, and a wrong gradient in it passed unseen. Moved by
    `OFF_TIES_STEPS` steps with seeded signs, each tie the block breaks lies on one
    side, far beyond a step, and the block is compared there like any other; then at
    the opposite move, since one side of a ReLU may hide what the other shows (a unit
    moved below its tie passes no gradient). Per block, the side that agrees worse
    replaces its comparisons in `blocks` (and its gradient in `grads`); the other
    blocks' comparisons stand (f's determinism was checked at the checked point).

    Ties scattered over a block (a ReLU of an image of small integers: 16 zeros in 144
    entries) leave its coordinates counted but cross in every part of its direction,
    so the entries the sample missed went unchecked (a wrong last column passed as
    happy). Such an uncovered block is moved off its ties too, and its comparisons at
    the checked point stay a candidate: a side replaces them where it agrees worse, or
    alike with its direction counted.

    Returns each replaced block's move; a side where f or its gradient is not finite
    is skipped.
    """
    counter, losses, scale, tolerance = judge.counter, judge.losses, judge.scale, judge.tolerance
    backend = counter.backend
    at = [x for x in base]  # where the backend's blocks are
    moves: dict[int, np.ndarray] = {}
    moved_by: dict[int, float] = {}
    unjudged = [*unjudged, *uncovered]
    for c in unjudged:
        x = base[c.block]
        rms = math.sqrt(float(x @ x) / x.size) if opts.eps == "auto" else 0.0
        moved_by[c.block] = OFF_TIES_STEPS * step_for(opts.eps, rms)
        moves[c.block] = moved_by[c.block] * off_ties(c.spec.name, x.size, opts.seed, streams)
    judged = {c.block for c in uncovered}  # (their comparisons at the checked point)
    moved: set[int] = set()
    for side in (1.0, -1.0):
        update = [np.zeros_like(x) for x in base]
        for c in unjudged:
            update[c.block] = (base[c.block] + side * moves[c.block]) - at[c.block]
        backend.step(update)
        at = [x + u for x, u in zip(at, update, strict=True)]
        point = backend.gradient(track)
        counter.count += point.evaluations
        finite = [*point.total, *(g for t in point.terms.values() for g in t)]
        if not is_finite(point.center) or not all(np.isfinite(g).all() for g in finite):
            continue
        counter.center = point.center
        here = [
            _plan(c.block, c.spec, point, at[c.block], absmax(at[c.block]), opts, streams)
            for c in unjudged
        ]
        counter.run([p for c in here for p in c.pairs()])
        for c in here:
            p, v = c.dpair, c.direction
            if p is not None and v is not None and not p.usable() and c.index.size < c.spec.size:
                found = around_ties(counter, c.block, v, c.dstep, p)
                if found is not None:
                    c.direction, c.dpair, c.coverage = found
        trial, trial_grads = list(blocks), list(grads)
        for c in here:
            trial[c.block], trial_grads[c.block] = c, point
        analytic = _Analytic(trial_grads, scale, trial)
        _confirm(judge, here, analytic)
        _localize(judge, here, analytic, at)
        previous = _Analytic(grads, scale, blocks)
        for c in here:
            if not any(p.usable() for p in c.pairs()):
                continue
            worst = max(
                _block_result(c, analytic, lo, scale, tolerance, judge.strict).tier for lo in losses
            )
            if c.block in judged:
                kept = blocks[c.block]
                before = max(
                    _block_result(kept, previous, lo, scale, tolerance, judge.strict).tier
                    for lo in losses
                )
                # the side that agrees worse; where both agree alike, the one whose
                # gradient is not all 0 (a side where every unit moved below its tie
                # shows nothing), else the one whose direction counted
                seen = c.largest[TOTAL] > 0.0 and kept.largest[TOTAL] == 0.0
                covers = kept.uncovered() and not c.uncovered()
                if worst < before or (worst == before and not seen and not covers):
                    continue
            blocks[c.block], grads[c.block] = c, point
            judged.add(c.block)
            moved.add(c.block)
    return {b: d for b, d in moved_by.items() if b in moved}


def _block_result(
    c: _Checked,
    analytic: _Analytic,
    loss: str | None,
    scale: float,
    tolerance: Tier,
    strict: bool,
) -> BlockResult:
    """Compare analytic and numeric values of one block for one loss.

    A direction that the block's failing coordinates account for (`_explained`) is
    marked `explained_by` and left out of the block's tier. `strict`: the check's
    tolerance is the default one of a function with kinks, under which a direction
    that crossed no kink must agree to *happy* to be explained (the tier at which it is
    localized, `_directions.localize_above`).
    """
    spec = c.spec
    idx, pairs = c.rows()
    tiers: list[Tier] = []
    failing: list[int] = []  # the rows that count and are worse than the tolerance
    if pairs:
        values = np.array(analytic.of(loss, c.block)[idx], dtype=np.float64)
        numerics, floors, steps_, kinks, sides, rels = [], [], [], [], [], []
        for a, p in zip(values.tolist(), pairs, strict=True):
            n, fl, h, _ = best(p, a, loss, scale)
            crossed, one_sided = p.crossed(), p.one_sided is not None
            rel = relative_error(a, n)
            numerics.append(n)
            floors.append(fl)
            steps_.append(h)
            kinks.append(crossed)
            sides.append(one_sided)
            rels.append(rel)
            if one_sided or not crossed:
                tiers.append(Tier.HAPPY if abs(a - n) <= fl else Tier.of(rel))
                if tiers[-1] > tolerance:
                    failing.append(len(rels) - 1)
        numeric = np.array(numerics, dtype=np.float64)
        within = np.abs(values - numeric) <= np.array(floors, dtype=np.float64)
        rel_error, step = np.array(rels, dtype=np.float64), np.array(steps_, dtype=np.float64)
        kink_crossed, one_sided_ = np.array(kinks, dtype=bool), np.array(sides, dtype=bool)
    else:  # a direction alone (mode="directions"): the rows are shared empty arrays
        values = numeric = rel_error = step = _NO_VALUES
        within = kink_crossed = one_sided_ = _NO_FLAGS
    d = None
    dpair = c.dpair
    if dpair is not None and c.direction is not None:
        a = analytic.along(loss, c.block)
        n, fl, h, tier = best(dpair, a, loss, scale)
        explained_by: tuple[tuple[int, ...], ...] = ()
        residual = None
        limit = localize_above(dpair, tolerance, strict)
        if dpair.usable() and failing and tier > limit:
            rows = np.asarray(failing, dtype=np.int64)
            gaps = values[rows] - numeric[rows]
            residual, ok = _explained(c.direction, dpair, a, idx[rows], gaps, loss, scale, limit)
            if ok:
                explained_by = _multi_indices(idx[rows], spec.shape)
        d = DirectionResult(
            analytic=a,
            numeric=n,
            rel_error=relative_error(a, n),
            step=h,
            kink_crossed=dpair.crossed(),
            within_noise=abs(a - n) <= fl,
            tier=tier,
            one_sided=dpair.one_sided is not None,
            coverage=c.coverage,
            explained_by=explained_by,
            residual_rel_error=residual,
        )
        if dpair.usable() and not explained_by:
            tiers.append(d.tier)
    tier = max(tiers, default=Tier.HAPPY)
    return BlockResult(
        name=spec.name,
        shape=tuple(spec.shape),
        dtype=spec.dtype,
        indices=_multi_indices(idx, spec.shape),
        analytic=values,
        numeric=numeric,
        rel_error=rel_error,
        kink_crossed=kink_crossed,
        step=step,
        within_noise=within,
        one_sided=one_sided_,
        tier=tier,
        passed=tier <= tolerance,
        direction=d,
        localized=_multi_indices([i for i, _ in c.localized], spec.shape),
    )


def _explained(
    v: np.ndarray,
    dpair: Pair,
    along: float,
    flat: np.ndarray,
    gaps: np.ndarray,
    loss: str | None,
    scale: float,
    limit: Tier,
) -> tuple[float, bool]:
    """Whether a failing direction is accounted for by failing coordinates.

    ``v·g`` moves by ``v_i (a_i - n_i)`` for each coordinate i whose analytic value
    a_i is off its numeric derivative n_i (`gaps`, at the flat indices `flat`). Where
    v·g is small next to the entries it sums, one entry 1% off can make the
    direction's relative error 1e-2 or more: the direction then says "wrong" of an
    error its coordinate shows is *uncomfortable*. With the analytic values of those
    coordinates replaced by their numeric derivatives, a direction they account for
    agrees with its difference within `limit` (the tier above which it is localized,
    see `_directions.localize_above`); an error spread over entries the check did not
    find leaves it failing. Returns (that relative error, whether it is within
    `limit`)."""
    fixed = along - float(v[flat] @ gaps)
    n, _, _, tier = best(dpair, fixed, loss, scale)
    return relative_error(fixed, n), tier <= limit


def _empty(dtype: type) -> np.ndarray:
    a = np.zeros(0, dtype=dtype)
    a.flags.writeable = False
    return a


#: the rows of a block compared along its direction alone (read-only, shared)
_NO_VALUES, _NO_FLAGS = _empty(np.float64), _empty(bool)


def _multi_indices(flat: np.ndarray | Sequence[int], shape: tuple[int, ...]) -> tuple:
    """The multi-indices in `shape` of flat indices (() for a 0-d block)."""
    if len(flat) == 0:
        return ()
    if not shape:
        return tuple(() for _ in flat)
    columns = [c.tolist() for c in np.unravel_index(np.asarray(flat, dtype=np.int64), shape)]
    return tuple(zip(*columns, strict=True))


def _burn_in(
    backend: Backend, opts: Options, specs: Sequence[BlockSpec], base: list[np.ndarray]
) -> tuple[float, ...]:
    """Take `opts.burn_in` optimisation steps on the loss; return the losses seen."""
    losses = []
    for step in range(opts.burn_in):
        g = backend.gradient(False)
        check_finite(g.center, f"burn-in step {step}", near=False)
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
        f"scale='auto' {SCALE_NOTICE}{k} ({2.0**k:.3g}) so the largest "
        f"gradient ({largest:.3g}) is near 1.0; values in the report are scaled"
    )
    return 2.0**k


def _same_values(a: Evaluation, b: Evaluation, rel: float) -> bool:
    """Whether two evaluations agree in the loss and every term, up to `rel`."""
    if set(a.terms) != set(b.terms):
        return False
    pairs = [(a.loss, b.loss), *((a.terms[k], b.terms[k]) for k in a.terms)]
    return all(x == y or abs(x - y) <= rel * max(abs(x), abs(y)) for x, y in pairs)


def _check_deterministic(counter: Counter, center: Evaluation) -> None:
    """Before condemning a gradient, make sure f gives one value at one point.

    A function drawing from a generator the check cannot reset (a NumPy Generator or a
    torch.Generator created outside f, a data loader's shuffle) differs between
    evaluations, and every difference quotient is then noise. Costs one evaluation
    (two where the first differs), spent only on a failing check.
    """
    first, again = center, counter.backend.evaluate([Point(())], counter.track)[0]
    counter.count += 1
    if _same_values(again, first, 0.0):
        return
    # the checked point's value came from the gradient pass, a compiled program other
    # than the evaluations' (JAX: a vjp beside a jitted f), which may add in another
    # order: a last-digit difference, or far more where f computes in bfloat16 inside
    # (its round-off ~1e-3 relative). A third evaluation, by the same path as the
    # second, tells round-off from randomness.
    third = counter.backend.evaluate([Point(())], counter.track)[0]
    counter.count += 1
    if _same_values(third, again, 0.0):
        return
    raise ValueError(
        "gradcheck: f is not deterministic: two evaluations at the same point gave "
        f"{first.loss!r} and {again.loss!r}. It draws from randomness the check "
        "cannot reset to the seed (a generator created outside f, such as "
        "np.random.default_rng(...) or torch.Generator) or keeps state between calls. "
        "Draw from the global RNGs (random, np.random, torch), create the generator "
        "inside f, or pass the random values in as arguments."
    )


def _sweep(
    counter: Counter, specs: Sequence[BlockSpec], total: Result, scale: float
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
        pairs = [make_pair(b, np.array([flat]), np.ones(1), h, {}) for h in SWEEP_STEPS]
        counter._evaluate(pairs)
        row = {p.step: relative_error(a, p.quotient(None)[0] * scale) for p in pairs}
        rows.append((specs[b].name, _multi_indices([flat], specs[b].shape)[0], row))
    return tuple(rows)


def _assemble(
    blocks: list[BlockResult],
    tolerance: Tier,
    kinks_present: bool,
    framework: str,
    loss: str | None,
    options: dict[str, object],
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
        options=dict(options),
        scale=scale,
    )


def _public_options(opts: Options) -> dict[str, object]:
    d = opts.as_dict()
    if callable(d.get("wrt")):
        d["wrt"] = getattr(d["wrt"], "__name__", "<predicate>")
    if d.get("burn_in_step") is not None:
        d["burn_in_step"] = getattr(d["burn_in_step"], "__name__", "<callable>")
    return d
