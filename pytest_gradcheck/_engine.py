"""The framework-free check: burn-in, sampling, terms, verdict, warnings.

The comparisons themselves (centered differences, kink retries, confirmation) are
`_pairs`'s. The engine talks to a backend through `backends._base.Backend` only. Its cost is the
number of evaluations of f: one analytic pass, two per checked coordinate, two per
block's direction, plus retries at smaller steps where a kink was crossed and about
2·log2(n) to localize a failing direction that no sampled coordinate explains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from ._options import Options
from ._pairs import (
    NOISE_SIGMAS,
    NOISE_USABLE,
    TOTAL,
    Counter,
    Pair,
    best,
    check_finite,
    confirm,
    coordinate_pair,
    fails,
    make_pair,
    pair_tier,
)
from ._result import BlockResult, DirectionResult, Result
from ._sampling import Streams, direction, sample_coordinates
from ._steps import TINY, absmax, step_for, steps, value_floor
from ._tiers import THRESHOLDS, Tier, default_tolerance, relative_error
from .backends._base import Backend, BlockSpec, Evaluation, Gradient, Point

#: the sweep's steps, h = 1e-1 ... 1e-10
SWEEP_STEPS: tuple[float, ...] = tuple(10.0**-k for k in range(1, 11))
#: how many of the worst coordinates the sweep covers
SWEEP_COORDINATES = 3


def run_check(backend: Backend, opts: Options, framework: str) -> Result:
    """Check the backend's function with the given options and return the Result."""
    started = time.perf_counter()
    track = opts.kinks == "track"
    counter = Counter(backend, track)
    specs = list(backend.blocks())
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
    check_finite(grad.center, "the checked point")
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
    # same (the localized coordinate's own error then decides, see `_localize_above`)
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

    scaled: dict[tuple[str | None, int], np.ndarray] = {}

    def analytic(loss: str | None, b: int) -> np.ndarray:
        """The gradient of one loss in one block, times `scale` (computed once; read-only)."""
        g = scaled.get((loss, b))
        if g is None:
            g = grad.total[b] if loss is None else grad.terms[loss][b]
            g = scaled[(loss, b)] = g if scale == 1.0 else g * scale
        return g

    projected: dict[tuple[str | None, int], float] = {}

    def along(loss: str | None, b: int) -> float:
        """v · g of block b's direction for one loss, scaled (computed once)."""
        a = projected.get((loss, b))
        if a is None:
            v = dirs[b]
            assert v is not None
            a = projected[(loss, b)] = float(v @ analytic(loss, b))
        return a

    # coordinates of every block, then one direction per block
    coord_pairs: list[list[Pair]] = []
    coord_index: list[np.ndarray] = []
    dir_pairs: list[Pair | None] = []
    dirs: list[np.ndarray | None] = []
    dir_steps: list[float] = []
    floors: list[dict[str | None, float]] = []
    largests: list[dict[str | None, float]] = []
    streams = Streams(opts.seed)
    for b, spec in enumerate(specs):
        raw = {None: grad.total[b], **{t: grad.terms[t][b] for t in term_names}}
        largest = {loss: absmax(g) for loss, g in raw.items()}
        largests.append(largest)
        values_max = absmax(base[b])
        vf = {loss: value_floor(m, values_max) for loss, m in largest.items()}
        floors.append(vf)
        if opts.mode == "directions":
            idx = np.zeros(0, dtype=np.int64)
        else:
            grads = [grad.total[b], *(grad.terms[t][b] for t in term_names)]
            idx = sample_coordinates(
                spec.name, spec.size, grads, opts.samples_per_block, opts.seed, streams
            )
        coord_index.append(idx)
        if idx.size:
            h = steps(opts.eps, base[b][idx])
            coord_pairs.append(
                [
                    coordinate_pair(b, i, hi, vf, largest)
                    for i, hi in zip(idx.tolist(), h.tolist(), strict=True)
                ]
            )
        else:
            coord_pairs.append([])
        if opts.mode in ("directions", "both") and spec.size > 1:
            v = direction(spec.name, spec.size, opts.seed, streams)
            x = base[b]
            rms = math.sqrt(float(x @ x) / x.size) if opts.eps == "auto" else 0.0
            hd = step_for(opts.eps, rms)
            dirs.append(v)
            norms = {loss: _norm(g, largest[loss]) for loss, g in raw.items()}
            dir_pairs.append(make_pair(b, range(spec.size), v, hd, vf, norms))
            dir_steps.append(hd)
        else:
            dirs.append(None)
            dir_pairs.append(None)
            dir_steps.append(0.0)
    counter.run([p for ps in coord_pairs for p in ps] + [p for p in dir_pairs if p is not None])

    # a direction through an exact tie is excluded: take it again without the parts
    # of the block that move the tie, so the rest of the block stays covered
    coverage = [1.0] * len(specs)
    for b in range(len(specs)):
        p, v = dir_pairs[b], dirs[b]
        if p is not None and v is not None and not p.usable():
            found = _around_ties(counter, b, v, dir_steps[b], p)
            if found is not None:
                dirs[b], dir_pairs[b], coverage[b] = found

    # confirm before condemning: failing comparisons get a Richardson step, a wide step
    # and, where round-off may explain what still fails, a measurement of f's noise
    suspects: list[tuple[Pair, list[float]]] = []
    strict_suspects: list[tuple[Pair, list[float]]] = []
    for b in range(len(specs)):
        gs = [analytic(loss, b) for loss in losses]
        for i, pp in zip(coord_index[b], coord_pairs[b], strict=True):
            values = [float(g[i]) for g in gs]
            if fails(pp, values, losses, scale, tolerance):
                suspects.append((pp, values))
        dp, v = dir_pairs[b], dirs[b]
        if dp is not None and v is not None:
            values = [along(loss, b) for loss in losses]
            if fails(dp, values, losses, scale, tolerance):
                suspects.append((dp, values))
            elif fails(dp, values, losses, scale, _localize_above(dp, tolerance, strict)):
                strict_suspects.append((dp, values))
    confirm(counter, suspects, losses, scale, tolerance)
    confirm(counter, strict_suspects, losses, scale, Tier.HAPPY)

    # localize directions that fail while no sampled coordinate does (bisection)
    localized: list[list[tuple[int, Pair]]] = [[] for _ in specs]
    for b in range(len(specs)):
        p, v = dir_pairs[b], dirs[b]
        if p is None or v is None or not p.usable():
            continue
        limit = _localize_above(p, tolerance, strict)
        for loss in losses:
            g = analytic(loss, b)
            if pair_tier(p, along(loss, b), loss, scale) <= limit:
                continue
            if any(
                pair_tier(pp, float(g[i]), loss, scale) > limit
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
                h = step_for(opts.eps, float(base[b][spot]))
                pair = make_pair(b, np.array([spot]), np.ones(1), h, floors[b], largests[b])
                counter.run([pair])
                values = [float(analytic(lo, b)[spot]) for lo in losses]
                if fails(pair, values, losses, scale, tolerance):
                    confirm(counter, [(pair, values)], losses, scale, tolerance)
                localized[b].append((spot, pair))

    results: dict[str | None, Result] = {}
    public = _public_options(opts)
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
                    along(loss, b) if dirs[b] is not None else None,
                    tuple(i for i, _ in extra),
                    loss,
                    coverage[b],
                )
            )
        results[loss] = _assemble(
            blocks, tolerance, kinks_present, framework, loss, public, scale, counter.count
        )

    warnings.extend(backend.warnings)  # what the backend learnt while evaluating f
    _domain_warnings(specs, counter, warnings)
    _dominance_warnings(specs, grad, term_names, opts.dominance, warnings)
    vacuous = _zero_warnings(
        specs, grad, largests, coord_pairs, dir_pairs, results[TOTAL], warnings
    )
    _active_range_warnings(
        [s for b, s in enumerate(specs) if b not in vacuous],
        [m[TOTAL] for b, m in enumerate(largests) if b not in vacuous],
        scale,
        warnings,
    )
    for b, spec in enumerate(specs):
        pairs = [*coord_pairs[b], *(pp for _, pp in localized[b])]
        dp = dir_pairs[b]
        if dp is not None:
            pairs.append(dp)
        _noise_warning(spec, pairs, results[TOTAL].blocks[b], scale, largests[b][TOTAL], warnings)

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
        options=dict(public),
        seconds=time.perf_counter() - started,
        burn_in_losses=burn_losses,
        sweep=sweep_rows,
        scale=scale,
    )


def _block_result(
    spec: BlockSpec,
    idx: np.ndarray,
    pairs: Sequence[Pair],
    g: np.ndarray,
    scale: float,
    tolerance: Tier,
    dpair: Pair | None,
    along: float | None,
    localized: tuple[int, ...],
    loss: str | None,
    coverage: float = 1.0,
) -> BlockResult:
    """Compare analytic and numeric values of one block for one loss.

    `along` is v · g of the block's direction for this loss (None without a direction).
    """
    analytic = np.array(g[idx], dtype=np.float64)
    numerics, floors, steps_, kinks, sides, rels, tiers = [], [], [], [], [], [], []
    for a, p in zip(analytic.tolist(), pairs, strict=True):
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
    numeric = np.array(numerics, dtype=np.float64)
    within = (
        np.abs(analytic - numeric) <= np.array(floors, dtype=np.float64)
        if numerics
        else np.zeros(0, dtype=bool)
    )
    d = None
    if dpair is not None and along is not None:
        a = along
        n, fl, h, tier = best(dpair, a, loss, scale)
        d = DirectionResult(
            analytic=a,
            numeric=n,
            rel_error=relative_error(a, n),
            step=h,
            kink_crossed=dpair.crossed(),
            within_noise=abs(a - n) <= fl,
            tier=tier,
            one_sided=dpair.one_sided is not None,
            coverage=coverage,
        )
        if dpair.usable():
            tiers.append(d.tier)
    tier = max(tiers, default=Tier.HAPPY)
    indices = _multi_indices(idx, spec.shape)
    return BlockResult(
        name=spec.name,
        shape=tuple(spec.shape),
        dtype=spec.dtype,
        indices=indices,
        analytic=analytic,
        numeric=numeric,
        rel_error=np.array(rels, dtype=np.float64),
        kink_crossed=np.array(kinks, dtype=bool),
        step=np.array(steps_, dtype=np.float64),
        within_noise=within,
        one_sided=np.array(sides, dtype=bool),
        tier=tier,
        passed=tier <= tolerance,
        direction=d,
        localized=_multi_indices(localized, spec.shape),
    )


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
        check_finite(g.center, f"burn-in step {step}")
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


def _localize_above(pair: Pair, tolerance: Tier, strict: bool) -> Tier:
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


def _bisect(
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


def _around_ties(
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
    for _ in range(TIE_SPLIT_DEPTH):
        pending = pending[: max(0, TIE_SPLIT_PARTS - spent)]
        if not pending:
            break
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


def _dominance_warnings(
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
                f"total; each term is also checked on its own, so read the verdict of term "
                f"{small!r} (its table, Result.terms) rather than the total's"
            )


def _noise_warning(
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


#: relative difference of two float64 evaluations of f at one point that two compiled
#: programs of the same f may show (summation order: a few units in the last place)
_PATH_ROUND_OFF = 1e-13


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
    evaluations, and every difference quotient is then noise. Costs one evaluation,
    spent only on a failing check.
    """
    first, again = center, counter.backend.evaluate([Point(())], counter.track)[0]
    counter.count += 1
    if _same_values(again, first, 0.0):
        return
    if _same_values(again, first, _PATH_ROUND_OFF):
        # the checked point's value came from the gradient pass, a compiled program
        # other than the evaluations' (JAX: a vjp beside a jitted f), which may add in
        # another order: a last-digit difference. A third evaluation, by the same path
        # as the second, tells round-off from randomness.
        first, again = again, counter.backend.evaluate([Point(())], counter.track)[0]
        counter.count += 1
        if _same_values(again, first, 0.0):
            return
    raise ValueError(
        "gradcheck: f is not deterministic: two evaluations at the same point gave "
        f"{first.loss!r} and {again.loss!r}. It draws from randomness the check "
        "cannot reset to the seed (a generator created outside f, such as "
        "np.random.default_rng(...) or torch.Generator) or keeps state between calls. "
        "Draw from the global RNGs (random, np.random, torch), create the generator "
        "inside f, or pass the random values in as arguments."
    )


def _domain_warnings(specs: Sequence[BlockSpec], counter: Counter, warnings: list[str]) -> None:
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


def _zero_warnings(
    specs: Sequence[BlockSpec],
    grad: Gradient,
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
    centers = {TOTAL: grad.center.loss, **grad.center.terms}
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
        raw = {TOTAL: grad.total[b], **{t: grad.terms[t][b] for t in grad.terms}}
        if all(
            2.0 * h * _norm(g, largests[b][loss]) < HALF_ULP * abs(centers[loss])
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


def _active_range_warnings(
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


def _norm(g: np.ndarray, largest: float) -> float:
    """||g|| (``numpy.linalg.norm``'s value) given max |g|; inf where it overflows."""
    if largest * math.sqrt(g.size) < 1e150:  # g · g cannot overflow
        return math.sqrt(float(g.dot(g)))
    with np.errstate(over="ignore"):  # |g| of huge gradients: inf, harmless
        return float(np.linalg.norm(g))


def _public_options(opts: Options) -> dict[str, object]:
    d = opts.as_dict()
    if callable(d.get("wrt")):
        d["wrt"] = getattr(d["wrt"], "__name__", "<predicate>")
    if d.get("burn_in_step") is not None:
        d["burn_in_step"] = getattr(d["burn_in_step"], "__name__", "<callable>")
    return d
