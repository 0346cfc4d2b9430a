"""Results of a check (`Result`, `BlockResult`), `GradcheckError` and their text forms."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._tiers import THRESHOLDS, Tier

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DirectionResult:
    """The directional check of a block: analytic v·g against the difference along v.

    v is a seeded random unit vector over all of the block's coordinates, so the
    direction covers every coordinate in two evaluations.

    Attributes:
        analytic: v·g, from the analytic gradient.
        numeric: (f(x + h v) - f(x - h v)) / 2h.
        rel_error: |analytic - numeric| / max(|analytic|, |numeric|).
        step: the step h used (smaller than eps after kink retries).
        kink_crossed: whether the difference crossed a kink at every step tried.
        within_noise: whether the disagreement is within float64 round-off.
        tier: the tier of this comparison (HAPPY when within noise).
        one_sided: a crossing rescued by a one-sided difference on the center's side.
        coverage: the share of the block's coordinates v moves: 1.0, or less where the
            direction through the whole block crossed an exact tie (a ReLU input of
            exactly 0) at every step, and was taken again over the parts of the block
            that do not move it.
        explained_by: the block's failing coordinates that account for this direction's
            failure: with their numeric derivatives in place of the analytic values,
            v·g agrees with the difference along v within the direction's tolerance.
            The block's tier and `max_rel_error` then come from its coordinates, not
            from `rel_error` (which a small v·g can amplify); empty where the direction
            passed or the failing coordinates do not account for it (then its own
            error counts, as for any comparison).
        residual_rel_error: the direction's relative error with the analytic values
            at the block's failing coordinates replaced by their numeric derivatives
            (what `explained_by` is judged on); None where it was not computed (the
            direction passed, did not count, or no checked coordinate failed).
    """

    analytic: float
    numeric: float
    rel_error: float
    step: float
    kink_crossed: bool
    within_noise: bool
    tier: Tier
    #: the crossing was rescued by a one-sided difference on the center's side
    one_sided: bool = False
    #: the share of the block's coordinates the direction moves (see above)
    coverage: float = 1.0
    #: the failing coordinates that account for this direction's failure (see above)
    explained_by: tuple[tuple[int, ...], ...] = ()
    #: the direction's relative error with those coordinates' numeric values (see above)
    residual_rel_error: float | None = None

    @property
    def counted(self) -> bool:
        """Whether this comparison takes part in the verdict."""
        return not self.kink_crossed or self.one_sided

    @property
    def explained(self) -> bool:
        """Whether the block's failing coordinates account for this direction's failure
        (`explained_by` is not empty): its error then counts through theirs."""
        return bool(self.explained_by)


@dataclass(frozen=True)
class BlockResult:
    """The check of one block (one parameter array or input) of one loss (total or term).

    The arrays hold one entry per checked coordinate; `indices` gives each one's
    position in the block (a tuple, the multi-index).

    Attributes:
        name: the block's name: ``args[0]``, ``args[1]['W1']``, ``fc1.weight``, ``W1``.
        shape: the block's shape.
        dtype: the user's dtype (the check itself ran in float64).
        indices: the multi-index of each checked coordinate.
        analytic: the analytic gradient at each checked coordinate (float64).
        numeric: the centered difference at each checked coordinate (float64).
        rel_error: |analytic - numeric| / max(|analytic|, |numeric|), 0 where both are 0.
        kink_crossed: whether the coordinate's difference crossed a kink at every step.
        step: the step h used for each coordinate.
        within_noise: whether the disagreement is within float64 round-off (judged HAPPY).
        tier: the worst tier of the coordinates and direction that count (a direction
            explained by failing coordinates counts through theirs, see
            `DirectionResult.explained_by`).
        passed: whether `tier` is no worse than the check's tolerance.
        one_sided: kink-crossed coordinates rescued by a one-sided difference (they count).
        direction: the directional check of the block (None for 1-element blocks or
            ``mode="coords"``).
        localized: coordinates found by bisection after the direction failed (they are
            also in `indices`).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    indices: tuple[tuple[int, ...], ...]
    analytic: np.ndarray
    numeric: np.ndarray
    rel_error: np.ndarray
    kink_crossed: np.ndarray
    step: np.ndarray
    within_noise: np.ndarray
    tier: Tier
    passed: bool
    #: kink-crossed coordinates rescued by a one-sided difference (they count)
    one_sided: np.ndarray | None = None
    direction: DirectionResult | None = None
    #: coordinates found by bisection after the direction failed (also in `indices`)
    localized: tuple[tuple[int, ...], ...] = ()

    @property
    def kinks_crossed(self) -> int:
        """Coordinates (and the direction) whose difference crossed a kink."""
        crossed = int(self.kink_crossed.sum()) if self.kink_crossed.size else 0
        return crossed + int(bool(self.direction and self.direction.kink_crossed))

    @property
    def max_rel_error(self) -> float:
        """The worst relative error among the comparisons that count.

        Comparisons excluded by a kink are left out. A comparison whose disagreement
        is within float64 round-off (shown as "noise") is judged happy, and its
        relative error counts here only when it is below the happy threshold: above
        it, the number measures the noise of a tiny difference quotient, not the
        gradient. A direction explained by the block's failing coordinates
        (`DirectionResult.explained_by`) is left out too: their errors are what it
        measured, which a small v·g can amplify.
        """
        worst = self.coordinates_max_rel_error
        d = self.direction
        if (
            d is not None
            and d.counted
            and not d.explained
            and (not d.within_noise or d.rel_error < THRESHOLDS[Tier.HAPPY])
        ):
            worst = max(worst, d.rel_error)
        return worst

    @property
    def coordinates_max_rel_error(self) -> float:
        """`max_rel_error` over the checked coordinates alone (0 where there are none)."""
        if not self.rel_error.size:  # (a direction-only check has no coordinates)
            return 0.0
        noise_ok = self.within_noise & (self.rel_error < THRESHOLDS[Tier.HAPPY])
        judged = self.counted & (~self.within_noise | noise_ok)
        return float(self.rel_error[judged].max()) if judged.any() else 0.0

    @property
    def counted(self) -> np.ndarray:
        """Which coordinates take part in the verdict (not excluded by a kink)."""
        if self.one_sided is None:
            return ~self.kink_crossed
        return ~self.kink_crossed | self.one_sided

    @property
    def coordinate_tiers(self) -> list[Tier]:
        """Each checked coordinate's tier (`HAPPY` where within round-off noise)."""
        return [
            Tier.HAPPY if noise else Tier.of(float(r))
            for r, noise in zip(self.rel_error, self.within_noise, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (lists and floats)."""
        d = self.direction
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "indices": [list(i) for i in self.indices],
            "analytic": self.analytic.tolist(),
            "numeric": self.numeric.tolist(),
            "rel_error": self.rel_error.tolist(),
            "kink_crossed": self.kink_crossed.tolist(),
            "within_noise": self.within_noise.tolist(),
            "one_sided": self.one_sided.tolist() if self.one_sided is not None else None,
            "step": self.step.tolist(),
            "tier": self.tier.label,
            "passed": self.passed,
            "max_rel_error": self.max_rel_error,
            "kinks_crossed": self.kinks_crossed,
            "direction": None
            if d is None
            else {
                "analytic": d.analytic,
                "numeric": d.numeric,
                "rel_error": d.rel_error,
                "step": d.step,
                "kink_crossed": d.kink_crossed,
                "within_noise": d.within_noise,
                "one_sided": d.one_sided,
                "coverage": d.coverage,
                "tier": d.tier.label,
                "explained_by": [list(i) for i in d.explained_by],
                "residual_rel_error": d.residual_rel_error,
            },
            "localized": [list(i) for i in self.localized],
        }


@dataclass(frozen=True)
class Result:
    """The outcome of one `gradcheck` call.

    `blocks` are the checks of the total loss; `terms` holds one `Result` per named
    term when f returned a mapping. `passed` is false when any block, in the total or
    in any term, is worse than `tolerance`; `tier` and `max_rel_error` are the worst
    over the total and the terms.

    Attributes:
        passed: whether every block, in the total and in each term, met the tolerance.
        tier: the worst tier over the total and the terms.
        max_rel_error: the worst relative error that counts (see
            `BlockResult.max_rel_error`).
        tolerance: the worst tier that passes.
        blocks: one `BlockResult` per checked block, for the total loss.
        terms: one `Result` per named term (empty unless f returned a mapping).
        kinks_crossed: coordinates and directions whose difference crossed a kink.
        evaluations: calls of f, the analytic pass, burn-in and the pass in the user's
            own dtypes (where lower precision was cast) included.
        warnings: what the check noticed: float32 inputs, a gradient that is not finite
            in them, tiny gradients, a dominating term, a burn-in that did not lower the
            loss.
        kinks_present: whether winner tracking saw any max-like decision.
        framework: "numpy", "torch" or "jax".
        term: the term this result is for (None for the total).
        options: the resolved options of the check.
        seconds: wall time of the check.
        burn_in_losses: the loss before each burn-in step and at the checked point.
        sweep: step-size sweep rows ``(block, index, {h: rel_error})``.
        scale: the power of two the loss was multiplied by (``scale="auto"``).
    """

    passed: bool
    tier: Tier
    max_rel_error: float
    tolerance: Tier
    blocks: tuple[BlockResult, ...]
    terms: Mapping[str, Result] = field(default_factory=dict)
    kinks_crossed: int = 0
    evaluations: int = 0
    warnings: tuple[str, ...] = ()
    #: whether winner tracking saw any max-like decision (sets the default tolerance)
    kinks_present: bool = False
    framework: str = "numpy"
    term: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: burn-in losses, first to last (empty without burn-in)
    burn_in_losses: tuple[float, ...] = ()
    #: step-size sweep rows: (block, index, {h: rel_error}) for the worst coordinates
    sweep: tuple[tuple[str, tuple[int, ...], Mapping[float, float]], ...] = ()
    #: the factor the loss was multiplied by (scale="auto"), 1.0 otherwise
    scale: float = 1.0

    def __bool__(self) -> bool:
        """`passed`, as ``torch.autograd.gradcheck`` returns True or False: so that
        ``assert gradcheck(f, x, raise_on_fail=False)`` fails where the check failed,
        instead of passing on a result that is always there."""
        return self.passed

    @property
    def coordinates(self) -> int:
        """How many coordinates were checked in the total (directions not counted)."""
        return sum(len(b.indices) for b in self.blocks)

    def failing(self) -> list[tuple[str | None, BlockResult]]:
        """``(term, block)`` for every failing block, total first (term None)."""
        out: list[tuple[str | None, BlockResult]] = [(None, b) for b in self.blocks if not b.passed]
        for name, sub in self.terms.items():
            out.extend((name, b) for b in sub.blocks if not b.passed)
        return out

    def summary(self) -> str:
        """One line: verdict, tier, worst error, blocks, coordinates, kinks."""
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"gradcheck {verdict}: tier {self.tier.label} (max rel error "
            f"{self.max_rel_error:.2e}, tolerance {self.tolerance.label}) over "
            f"{len(self.blocks)} block(s), {self.coordinates} coordinate(s), "
            f"{self.kinks_crossed} kink(s) crossed, {self.evaluations} evaluation(s)"
        )

    def __str__(self) -> str:
        """`summary()`, and for a failing check the table of its failing blocks (what
        `print(result)` shows; the dataclass repr, with every array, stays `repr`)."""
        if self.passed:
            return self.summary()
        return self.summary() + "\n" + self.report(only_failing=True)

    def report(self, limit: int = 5, only_failing: bool = False) -> str:
        """A text table of the worst coordinates of each (failing) block."""
        from ._text import result_table

        return result_table(self, limit=limit, only_failing=only_failing)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the whole result, terms included."""
        return {
            "passed": self.passed,
            "tier": self.tier.label,
            "max_rel_error": self.max_rel_error,
            "tolerance": self.tolerance.label,
            "kinks_present": self.kinks_present,
            "kinks_crossed": self.kinks_crossed,
            "evaluations": self.evaluations,
            "coordinates": self.coordinates,
            "framework": self.framework,
            "term": self.term,
            "seconds": self.seconds,
            "scale": self.scale,
            "options": {k: _jsonable(v) for k, v in self.options.items()},
            "warnings": list(self.warnings),
            "burn_in_losses": list(self.burn_in_losses),
            "sweep": [
                {"block": b, "index": list(i), "rel_error": {repr(h): e for h, e in row.items()}}
                for b, i, row in self.sweep
            ],
            "blocks": [b.to_dict() for b in self.blocks],
            "terms": {name: sub.to_dict() for name, sub in self.terms.items()},
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tier):  # before int: Tier is an IntEnum
        return value.label
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


class GradcheckError(AssertionError):
    """A gradient check failed: some block is worse than the tolerance.

    A subclass of `AssertionError`, so pytest shows it as a test failure. The message
    lists the worst coordinates; `.result` holds the whole `Result`.
    """

    __module__ = "pytest_gradcheck"

    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(str(result))


class GradcheckWarning(UserWarning):
    """What a check that returned noticed beside its verdict: one warning per entry of
    `Result.warnings` (tiny gradients, a block whose gradient is exactly 0, comparisons
    excluded at kinks, a cast inside f to lower precision, a dominating term...), but
    for the notices that float32 inputs were cast to float64 and that a block on exact
    ties was checked just off them: the check saw what it had to there (they stay in
    `Result.warnings`).

    `gradcheck` issues them, in pytest and outside it, for a check that returns (it
    passed, or failed with ``raise_on_fail=False``); a check that raises
    `GradcheckError` lists them in its message instead. They say where a passing check
    could not see a wrong gradient, so they are warnings rather than a line of the
    result alone: pytest shows them in its warnings summary, attributed to the test,
    and ``-W error::pytest_gradcheck.GradcheckWarning`` (or a ``filterwarnings`` entry)
    turns them into failures; ``warnings.filterwarnings("ignore",
    category=GradcheckWarning)`` silences them.
    """

    __module__ = "pytest_gradcheck"
