"""Engine units: tiers, relative error, sampling, modes, bisection, Richardson, costs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pytest_gradcheck import GradcheckError, Tier, _sampling, gradcheck
from pytest_gradcheck._kinks import SHIFT, shift_offsets, shift_testable, unchanged
from pytest_gradcheck._sampling import Streams, direction, sample_coordinates
from pytest_gradcheck._steps import measured_noise
from pytest_gradcheck._tiers import relative_error
from pytest_gradcheck.backends._base import whole

# -- tiers ---------------------------------------------------------------------------


def below(x):
    return float(np.nextafter(x, 0.0))


@pytest.mark.parametrize(
    ("rel", "tier"),
    [
        (0.0, Tier.HAPPY),
        (below(1e-7), Tier.HAPPY),
        (1e-7, Tier.OK),
        (below(1e-4), Tier.OK),
        (1e-4, Tier.UNCOMFORTABLE),
        (below(1e-2), Tier.UNCOMFORTABLE),
        (1e-2, Tier.WRONG),
        (1.0, Tier.WRONG),
        (2.0, Tier.WRONG),
        (math.inf, Tier.WRONG),
        (math.nan, Tier.WRONG),
    ],
)
def test_tier_thresholds(rel, tier):
    assert Tier.of(rel) is tier


def test_tiers_are_ordered_best_first():
    assert Tier.HAPPY < Tier.OK < Tier.UNCOMFORTABLE < Tier.WRONG
    assert sorted([Tier.WRONG, Tier.HAPPY, Tier.UNCOMFORTABLE, Tier.OK]) == list(Tier)
    assert max(Tier.OK, Tier.HAPPY) is Tier.OK
    assert max([Tier.HAPPY, Tier.WRONG, Tier.OK]) is Tier.WRONG
    assert [t.label for t in Tier] == ["happy", "ok", "uncomfortable", "wrong"]


@pytest.mark.parametrize(
    ("text", "tier"),
    [
        ("happy", Tier.HAPPY),
        ("OK", Tier.OK),
        ("  Uncomfortable ", Tier.UNCOMFORTABLE),
        ("wrong", Tier.WRONG),
        (Tier.OK, Tier.OK),
    ],
)
def test_tier_parse(text, tier):
    assert Tier.parse(text) is tier


@pytest.mark.parametrize("bad", ["fine", "", "HAPPY!", 1, None])
def test_tier_parse_rejects_anything_else(bad):
    with pytest.raises(ValueError, match="happy, ok, uncomfortable, wrong"):
        Tier.parse(bad)


# -- relative error --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "n", "expected"),
    [
        (0.0, 0.0, 0.0),  # both zero: an exact match
        (-0.0, 0.0, 0.0),
        (0.0, 3.0, 1.0),  # one zero: 1 whatever the other
        (-2e-9, 0.0, 1.0),
        (1.0, -1.0, 2.0),  # opposite signs, same size: the maximum, 2
        (-3.0, 3.0, 2.0),
        (1.0, -0.5, 1.5),
        (2.0, 1.0, 0.5),
        (3.0, 4.0, 0.25),
        (1e-300, 2e-300, 0.5),  # tiny values: still relative
        (5e-324, 0.0, 1.0),  # the smallest subnormal
        (5e-324, 5e-324, 0.0),
        (1e-20, 1e-20 * (1 + 1e-6), 1e-6 / (1 + 1e-6)),
    ],
)
def test_relative_error(a, n, expected):
    assert relative_error(a, n) == pytest.approx(expected, rel=1e-9, abs=0.0)
    assert relative_error(n, a) == relative_error(a, n)  # symmetric


def test_relative_error_is_scale_free():
    for scale in (1e-12, 1.0, 1e12):
        assert relative_error(1.01 * scale, scale) == pytest.approx(0.01 / 1.01, rel=1e-12)


# -- sampling ------------------------------------------------------------------------


def test_a_block_no_larger_than_the_sample_is_checked_whole():
    g = [np.arange(10.0)]
    for size in (1, 5, 10):
        idx = sample_coordinates("b", size, [np.arange(float(size))], 10, seed=0)
        np.testing.assert_array_equal(idx, np.arange(size))
    assert len(sample_coordinates("b", 11, [np.arange(11.0)], 10, seed=0)) == 10
    np.testing.assert_array_equal(sample_coordinates("b", 10, g, None, seed=0), np.arange(10))


def test_samples_none_checks_everything():
    g = np.random.default_rng(0).standard_normal(1000)
    np.testing.assert_array_equal(sample_coordinates("W", 1000, [g], None, seed=0), np.arange(1000))


def test_the_sample_is_sorted_distinct_in_range_and_holds_the_argmax():
    rng = np.random.default_rng(1)
    for trial in range(20):
        g = rng.standard_normal(500)
        top = int(rng.integers(500))
        g[top] = -10.0  # the largest magnitude, negative
        idx = sample_coordinates("W", 500, [g], 7, seed=trial)
        assert len(idx) == 7
        assert len(set(idx.tolist())) == 7
        assert np.all(np.diff(idx) > 0)
        assert idx.min() >= 0 and idx.max() < 500
        assert top in idx


def test_the_sample_holds_the_argmax_of_every_term():
    rng = np.random.default_rng(2)
    total, data, reg = (rng.standard_normal(300) for _ in range(3))
    total[10], data[20], reg[30] = 9.0, -9.0, 9.0
    idx = sample_coordinates("W", 300, [total, data, reg], 5, seed=0)
    assert {10, 20, 30} <= set(idx.tolist())
    assert len(idx) == 5


def test_the_sample_is_reproducible_from_the_seed():
    g = np.random.default_rng(3).standard_normal(10_000)
    a = sample_coordinates("W", 10_000, [g], 10, seed=4)
    b = sample_coordinates("W", 10_000, [g.copy()], 10, seed=4)
    np.testing.assert_array_equal(a, b)
    others = {tuple(sample_coordinates("W", 10_000, [g], 10, seed=s)) for s in range(5, 10)}
    assert tuple(a) not in others
    assert len(others) == 5
    # each block has its own sample
    assert tuple(sample_coordinates("V", 10_000, [g], 10, seed=4)) != tuple(a)


def test_the_direction_is_a_reproducible_unit_vector_weighing_every_entry():
    v = direction("W", 10_000, seed=4)
    assert v.shape == (10_000,)
    assert math.isclose(float(v @ v), 1.0, rel_tol=1e-12)
    np.testing.assert_array_equal(v, direction("W", 10_000, seed=4))
    assert not np.array_equal(v, direction("V", 10_000, seed=4))
    assert not np.array_equal(v, direction("W", 10_000, seed=5))
    # every entry weighs at least half of any other (magnitudes in [0.5, 1) before
    # normalising), so no entry hides behind a near-zero weight; both signs occur
    a = np.abs(v)
    assert a.min() >= 0.5 * a.max()
    assert 0.45 < float(np.mean(v > 0)) < 0.55
    # continuous magnitudes: v . g does not cancel for a gradient of equal entries
    for size in (2, 3, 4, 10):
        assert abs(float(direction("b", size, seed=0) @ np.ones(size))) > 1e-3


def test_a_checks_streams_draw_what_a_fresh_generator_per_block_draws():
    """`Streams` restarts one generator at each block's stream: the same draws, in any
    order, after a draw that leaves half a 64-bit word buffered (``choice``); the
    memoised positions of a sample are a fresh generator's draws."""
    streams = Streams(3)
    _sampling._picked.cache_clear()  # (so that each is drawn here, in this order)
    for name, size in [("W", 5000), ("b", 17), ("W", 5000), ("args[0]", 4000), ("b", 17)]:
        fresh = _sampling._rng(3, name, _sampling._COORDINATES)
        expected = fresh.choice(size - 1, size=6, replace=False).tolist()
        assert _sampling._picked(3, name, size - 1, 6) == tuple(expected)
        np.testing.assert_array_equal(
            _sampling._drawn(name, size, 3, streams), _sampling._drawn(name, size, 3, None)
        )
    assert not np.array_equal(direction("W", 50, 3, streams), direction("W", 50, seed=4))


def test_a_small_blocks_direction_is_drawn_once_and_shared_read_only():
    """Memoised per seed, name and size up to `_MEMOISED_SIZE` entries: the same values
    as a fresh draw, the same array at every check, and read-only, so no caller can
    change what the next check gets; a larger block's is drawn each time."""
    small, large = _sampling._MEMOISED_SIZE, _sampling._MEMOISED_SIZE + 1
    v = direction("W_small", small, seed=8)
    assert direction("W_small", small, seed=8) is v
    np.testing.assert_array_equal(v, _sampling._drawn("W_small", small, 8, None))
    assert not v.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        v[0] = 1.0
    w = direction("W_large", large, seed=8)
    assert direction("W_large", large, seed=8) is not w
    np.testing.assert_array_equal(w, direction("W_large", large, seed=8))


def test_only_a_range_of_the_block_size_is_a_whole_block():
    assert whole(range(5), 5)
    assert not whole(range(4), 5)
    assert not whole(range(1, 6), 5)
    assert not whole(range(0, 10, 2), 5)
    assert not whole(np.arange(5), 5)  # an array is always scattered indices


def _big_and_tiny(seed=0, **options):
    """A 1-element block beside a 1e5-element one, in a real check."""
    big = np.random.default_rng(7).uniform(-1.0, 1.0, 100_000)
    big[31_415] = 0.0  # |cos(0)| = 1: the largest analytic magnitude
    tiny = np.array([0.3])

    def f(big, tiny):
        return np.sum(np.sin(big)) + 3.0 * tiny[0] ** 2

    def grad(big, tiny):
        return np.cos(big), 6.0 * tiny

    return gradcheck(f, big, tiny, grad=grad, seed=seed, **options)


def test_every_block_is_sampled_even_a_1_element_one_beside_1e5():
    result = _big_and_tiny()
    assert result.passed
    big, tiny = result.blocks
    assert (big.name, big.shape) == ("args[0]", (100_000,))
    assert (tiny.name, tiny.shape) == ("args[1]", (1,))
    assert len(big.indices) == 10
    assert len(set(big.indices)) == 10
    assert tiny.indices == ((0,),)
    assert tiny.analytic[0] == pytest.approx(1.8)
    assert tiny.numeric[0] == pytest.approx(1.8, rel=1e-7)
    assert (31_415,) in big.indices  # the largest analytic magnitude
    assert big.direction is not None
    assert tiny.direction is None  # a direction through one coordinate adds nothing
    assert result.coordinates == 11
    assert result.evaluations == 1 + 2 * 11 + 2 * 1


def test_a_real_check_samples_reproducibly():
    first, again, other = _big_and_tiny(seed=3), _big_and_tiny(seed=3), _big_and_tiny(seed=4)
    assert first.blocks[0].indices == again.blocks[0].indices
    np.testing.assert_array_equal(first.blocks[0].numeric, again.blocks[0].numeric)
    assert first.blocks[0].indices != other.blocks[0].indices
    assert (31_415,) in other.blocks[0].indices


def test_a_real_check_with_samples_none_checks_every_coordinate():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((3, 7)), rng.standard_normal(13)
    result = gradcheck(
        lambda a, b: np.sum(np.tanh(a)) + np.sum(b**2),
        a,
        b,
        grad=lambda a, b: (1 - np.tanh(a) ** 2, 2 * b),
        samples_per_block=None,
    )
    ba, bb = result.blocks
    assert ba.indices == tuple(np.ndindex(3, 7))
    assert bb.indices == tuple((i,) for i in range(13))
    assert result.coordinates == 21 + 13


# -- modes and the cost of a check -------------------------------------------------------


def _smooth(mode, **options):
    """Blocks of 12, 5 and 1 entries; a smooth f whose plain differences are happy."""
    rng = np.random.default_rng(9)
    a, b, c = rng.uniform(-1.5, 1.5, (3, 4)), rng.standard_normal(5), np.array([0.3])

    def f(a, b, c):
        return np.sum(np.tanh(a)) + np.sum(b**2) + np.sin(c[0])

    def grad(a, b, c):
        return 1 - np.tanh(a) ** 2, 2 * b, np.cos(c)

    return gradcheck(f, a, b, c, grad=grad, mode=mode, **options)


@pytest.mark.parametrize(
    ("mode", "coords", "directions"),
    [
        ("both", [10, 5, 1], [True, True, False]),
        ("coords", [10, 5, 1], [False, False, False]),
        # the block of one entry has no direction: its coordinate is checked instead
        ("directions", [0, 0, 1], [True, True, False]),
    ],
)
def test_modes(mode, coords, directions):
    result = _smooth(mode)
    assert result.passed
    assert result.tier is Tier.HAPPY
    assert [len(b.indices) for b in result.blocks] == coords
    assert [len(b.analytic) for b in result.blocks] == coords
    assert [b.direction is not None for b in result.blocks] == directions
    for b in result.blocks:
        if b.direction is not None:
            assert b.direction.tier is Tier.HAPPY
            assert b.direction.numeric == pytest.approx(b.direction.analytic, rel=1e-7)
    # 1 analytic pass, 2 evaluations per coordinate and per direction (blocks of size > 1)
    n_dirs = sum(directions)
    assert result.evaluations == 1 + 2 * sum(coords) + 2 * n_dirs
    assert result.coordinates == sum(coords)


@pytest.mark.parametrize("shape", [(1,), ()])
def test_directions_mode_checks_a_block_of_one_entry(shape):
    """A scalar temperature with a sign error: `mode="directions"` gives such a block no
    direction, and passed it unseen (happy) before its coordinate was checked."""
    w, t = np.linspace(-1.0, 1.0, 6), np.full(shape, 0.7)

    def f(w, t):
        return float(np.sum(np.tanh(w * t)))

    def grad(w, t):
        s = 1 - np.tanh(w * t) ** 2
        return s * t, np.full(shape, -np.sum(s * w))  # the sign of dt is wrong

    result = gradcheck(f, w, t, grad=grad, mode="directions", raise_on_fail=False)
    assert not result.passed
    assert result.blocks[1].tier is Tier.WRONG
    assert result.blocks[1].indices == (() if not shape else (0,),)


def test_evaluations_count_the_calls_of_f():
    calls = []
    x = np.linspace(-1.0, 1.0, 30)

    def f(x):
        calls.append(1)
        return np.sum(np.tanh(x))

    result = gradcheck(f, x, grad=lambda x: (1 - np.tanh(x) ** 2,))
    assert result.evaluations == len(calls) == 1 + 2 * 10 + 2


# -- bisection: a failing direction is localized ---------------------------------------------

N_BIG = 2000
SAMPLES = 3


def _quadratic_with_one_wrong_entry(k=None):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(N_BIG)
    x[1234] = 5.0  # the largest magnitude: always sampled

    def grad(x):
        g = x.copy()  # d/dx of 0.5 * sum(x**2)
        if k is not None:
            g[k] *= 1.01
        return (g,)

    return x, grad


def _pick_wrong_entry():
    """An entry the sample misses, not the largest, with a sizeable gradient."""
    x, _ = _quadratic_with_one_wrong_entry()
    sample = set(sample_coordinates("args[0]", N_BIG, [x], SAMPLES, seed=0).tolist())
    candidates = [i for i in np.argsort(-np.abs(x)) if i not in sample and abs(x[i]) < 3.0]
    return int(candidates[0])


def test_bisection_localizes_a_single_wrong_entry_the_sample_misses():
    k = _pick_wrong_entry()
    x, grad = _quadratic_with_one_wrong_entry(k)
    options = {"samples_per_block": SAMPLES, "raise_on_fail": False}

    def f(x):
        return 0.5 * np.sum(x**2)

    # the sampled coordinates alone miss the bug
    coords_only = gradcheck(f, x, grad=grad, mode="coords", **options)
    assert coords_only.passed
    assert (k,) not in coords_only.blocks[0].indices

    baseline = gradcheck(f, x, grad=_quadratic_with_one_wrong_entry()[1], **options)
    assert baseline.passed
    result = gradcheck(f, x, grad=grad, **options)
    (block,) = result.blocks
    assert not result.passed
    assert block.direction is not None
    assert block.direction.tier > Tier.HAPPY  # the direction saw it ...
    assert block.localized == ((k,),)  # ... and bisection found it
    j = block.indices.index((k,))
    assert block.analytic[j] == pytest.approx(1.01 * x[k])
    assert block.numeric[j] == pytest.approx(x[k], rel=1e-7)
    assert block.rel_error[j] == pytest.approx(0.01 / 1.01, rel=1e-6)
    assert block.tier is Tier.UNCOMFORTABLE
    # about 2 evaluations per halving, plus a few to confirm: for the direction and for
    # the localized entry (2 for its own pair), a pair at h/2 and one at 8h and, as
    # both disagree by less than 1% (round-off could be the cause), 7 evaluations that
    # measure f's noise (at most: once per block and pass); and one more evaluation of
    # the center, spent by every failing check to rule out a non-deterministic f
    extra = result.evaluations - baseline.evaluations
    levels = math.log2(N_BIG)
    confirm = 4 + 7
    assert 2 * math.floor(levels) <= extra <= 2 * math.ceil(levels) + confirm + 2 + confirm + 1
    with pytest.raises(GradcheckError, match=str(k)):
        gradcheck(f, x, grad=grad, samples_per_block=SAMPLES)


# -- Richardson: confirm before condemning -------------------------------------------------


def _cubic(wrong=1.0):
    x = np.random.default_rng(12).uniform(0.5e-3, 2e-3, 5)

    def f(x):
        return np.sum(x**3)

    def grad(x):
        return (wrong * 3 * x**2,)

    return f, x, grad


def test_richardson_passes_a_correct_gradient_with_a_large_truncation_error():
    f, x, grad = _cubic()
    h = 1e-5
    plain = ((x + h) ** 3 - (x - h) ** 3) / (2 * h)  # 3x^2 + h^2
    assert all(
        Tier.of(relative_error(a, n)) > Tier.HAPPY for a, n in zip(3 * x**2, plain, strict=True)
    )
    result = gradcheck(f, x, grad=grad, mode="coords", tolerance=Tier.HAPPY)
    assert result.passed
    assert result.tier is Tier.HAPPY
    (block,) = result.blocks
    np.testing.assert_allclose(block.numeric, 3 * x**2, rtol=1e-9)
    # every coordinate failed at h and was confirmed with a pair at h/2 and one at 8h
    assert result.evaluations == 1 + 2 * 5 + 4 * 5
    np.testing.assert_allclose(block.step, 1e-5)  # judged on the Richardson value


def test_richardson_still_fails_a_wrong_gradient():
    f, x, grad = _cubic(wrong=1.01)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, x, grad=grad, mode="coords")
    (block,) = info.value.result.blocks
    assert block.tier is Tier.UNCOMFORTABLE
    np.testing.assert_allclose(block.rel_error, 0.01 / 1.01, rtol=1e-6)


# -- round-off that |f| does not show: the wide step and the measured noise -----------


def _confident_softmax(top, wrong=1.0):
    """Cross-entropy of one confident row: f ~ 3 exp(-(top + 4)) is computed as
    top - (top + f), so it carries the round-off of `top`, far more than |f| suggests."""
    scores = np.array([[top, -4.0, -4.0, -4.0]])

    def f(s):
        log_probs = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        return -log_probs[0, 0]

    def grad(s):
        p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
        p[0, 0] -= 1.0
        return wrong * p

    return f, scores, grad


def _plain_error(f, s, g, h):
    """The worst relative error of plain centered differences at step h."""
    units = np.eye(s.size).reshape(s.size, *s.shape)
    numeric = [(f(s + h * e) - f(s - h * e)) / (2 * h) for e in units]
    return max(relative_error(a, n) for a, n in zip(g.reshape(-1), numeric, strict=True))


def test_round_off_a_wide_step_resolves_passes():
    f, s, grad = _confident_softmax(6.0)
    g = grad(s)
    assert _plain_error(f, s, g, 1e-5) > 1e-7  # plain differences miss the happy tier
    assert _plain_error(f, s, g, 8e-5) < 1e-7  # ... by round-off: 8h agrees
    result = gradcheck(f, s, grad=grad, tolerance=Tier.HAPPY)
    assert result.passed, result
    assert result.tier is Tier.HAPPY
    assert not any("round-off" in w for w in result.warnings)


def test_round_off_beyond_the_wide_step_is_measured_judged_as_noise_and_said():
    f, s, grad = _confident_softmax(11.0)
    g = grad(s)
    assert _plain_error(f, s, g, 1e-5) > 1e-5
    assert _plain_error(f, s, g, 8e-5) > 1e-6  # round-off beyond the wide step too
    result = gradcheck(f, s, grad=grad, tolerance=Tier.HAPPY)
    assert result.passed, result
    (block,) = result.blocks
    assert block.within_noise.all()  # judged against the measured noise of f
    (warning,) = [w for w in result.warnings if "round-off" in w]
    assert "'args[0]'" in warning and "within noise" in warning and "eps" in warning
    # each failing comparison is confirmed with 4 evaluations; then 7 more, once for the
    # block, measure the noise of f along its direction
    assert result.evaluations == 1 + 2 * 4 + 2 + 5 * 4 + 7


@pytest.mark.parametrize("top", [6.0, 9.0])
def test_a_wrong_gradient_still_fails_where_f_is_noisy(top):
    f, s, grad = _confident_softmax(top, wrong=1.001)
    result = gradcheck(f, s, grad=grad, raise_on_fail=False)
    assert not result.passed
    (block,) = result.blocks
    assert block.tier is Tier.UNCOMFORTABLE  # relative error 1e-3
    assert not block.within_noise.all()
    assert float(np.max(block.rel_error)) == pytest.approx(1e-3, rel=0.05)


def test_an_error_below_the_round_off_of_f_is_not_passed_silently():
    # at top=11 f carries the ulps of 11 while the gradient entries are ~1e-6: an error
    # of 1e-5 is below what centered differences at h=1e-5 resolve there. The check
    # passes (it cannot tell) and says so, with the limit.
    f, s, grad = _confident_softmax(11.0, wrong=1.00001)
    result = gradcheck(f, s, grad=grad, raise_on_fail=False)
    assert result.passed
    (warning,) = [w for w in result.warnings if "round-off" in w]
    assert "hides gradient errors below" in warning and "judged within noise" in warning


def test_noise_too_large_to_resolve_1e_4_excuses_nothing():
    # at top=13 the round-off limit is beyond 1e-4 of the values compared: a correct
    # gradient cannot be told from a wrong one, so the disagreement stands (and the
    # warning says why)
    f, s, grad = _confident_softmax(13.0)
    result = gradcheck(f, s, grad=grad, raise_on_fail=False)
    assert not result.passed
    (warning,) = [w for w in result.warnings if "round-off" in w]
    assert "cannot tell a correct gradient" in warning


def test_measured_noise_reads_quanta_and_random_round_off():
    # values on the lattice of a quantum q (the ulps of a large intermediate)
    q = 2.0**-40
    assert measured_noise(1.0 + q * np.array([0, 3, 5, 6, 9, 12, 13, 15, 18])) == q / 2
    # random round-off of standard deviation s: read within a factor of 3
    x = 1.0 + np.arange(-4, 5) * 1e-5
    gen = np.random.default_rng(0)
    reads = [measured_noise(np.sin(x) + 1e-12 * gen.standard_normal(9)) for _ in range(200)]
    assert 1e-12 / 3 < float(np.median(reads)) < 3e-12
    # a smooth function computed in float64: about an ulp of its values
    assert measured_noise(np.sin(x)) < 1e-15


def test_round_off_is_weighed_against_the_block_not_a_small_entry():
    # the entry for the score -5 has a gradient of 1e-7 beside 3e-5 in the same block:
    # the round-off of f (the ulps of 11) is 1e-3 of that entry but 1e-5 of the block's
    # scale, so it resolves the block to 1e-4 and excuses the entry (and the direction,
    # whose v . g cancels since softmax gradients sum to zero)
    scores, labels = np.array([[-5.0, 11.0, 0.0, 0.0]]), np.array([1])

    def f(s, y):
        log_probs = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        return -log_probs[np.arange(len(y)), y].mean()

    def grad(s, y):
        p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        return p / len(y), None

    result = gradcheck(f, scores, labels, grad=grad)
    assert result.passed
    (block,) = result.blocks
    assert block.within_noise[0] and block.direction.within_noise


def test_shift_offsets_are_distinct_bounded_and_repeatable():
    a = shift_offsets(1000, 0)
    assert a.shape == (1000,)
    assert np.all(a >= SHIFT) and np.all(a < 2 * SHIFT)
    assert len(np.unique(a)) == 1000  # no two values moved alike
    np.testing.assert_array_equal(a, shift_offsets(1000, 0))
    b = shift_offsets(1000, 1)
    assert not np.any(np.isclose(a, b, rtol=0, atol=1e-12))  # another reduction, other moves


def test_unchanged_allows_round_off_only():
    assert unchanged(0.0, 0.0) and unchanged(1.0, 1.0 + 2e-16)
    assert unchanged(2.5, 2.5 * (1 + 5e-13))
    assert not unchanged(2.5, 2.5 * (1 + 5e-12))
    assert not unchanged(0.0, 1e-300)  # nothing is round-off of an exact zero


def test_print_result_is_the_summary_and_for_a_failure_the_failing_blocks():
    """str(result) (what print shows): the summary line, plus the table of the failing
    blocks when the check failed; no arrays. repr stays the dataclass's."""
    x = np.random.default_rng(0).standard_normal((4, 3))
    y = np.random.default_rng(1).standard_normal(5)

    def f(x, y):
        return np.exp(x).sum() + np.sin(y).sum()

    good = gradcheck(f, x, y, grad=lambda x, y: (np.exp(x), np.cos(y)))
    assert str(good) == good.summary()
    assert "\n" not in str(good) and "array(" not in str(good)
    assert "array(" in repr(good)

    bad = gradcheck(f, x, y, grad=lambda x, y: (np.exp(x), 1.001 * np.cos(y)), raise_on_fail=False)
    text = str(bad)
    first, rest = text.split("\n", 1)
    assert first == bad.summary() and first.startswith("gradcheck FAILED")
    assert rest == bad.report(only_failing=True)
    assert "'args[1]'" in rest and "'args[0]'" not in rest  # only the failing block
    assert "array(" not in text
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, x, y, grad=lambda x, y: (np.exp(x), 1.001 * np.cos(y)))
    assert str(info.value) == text


def test_a_real_error_in_an_exact_f_brings_no_round_off_warning():
    """Confirming a wrong entry measures f's noise along it; where that noise hides
    nothing the tiers tell apart (below 1e-7 of the block's largest gradient), the
    report does not talk about it: the failure is the error, not round-off."""
    gen = np.random.default_rng(0)
    x = gen.standard_normal((8, 100))
    w = gen.standard_normal((50, 100)) / 10

    def f(w):
        return np.tanh(x @ w.T).sum()

    def grad(w):
        g = (1 - np.tanh(x @ w.T) ** 2).T @ x
        g[3, 7] *= 1.01
        return g

    result = gradcheck(f, w, grad=grad, raise_on_fail=False)
    assert not result.passed
    (block,) = result.blocks
    assert (3, 7) in block.indices or (3, 7) in block.localized
    assert not any("round-off" in w for w in result.warnings), result.warnings


def test_the_shift_test_runs_where_it_can_show_something():
    # (reductions, other decisions, flippable among them, maxima of two among those)
    assert shift_testable(2, 0, 0, 0)  # a stable softmax's maxima
    assert shift_testable(0, 3, 3, 1)  # a stable logistic loss: max, abs, comparison
    assert shift_testable(1, 2, 2, 0)  # a stable sigmoid beside a stable softmax
    assert not shift_testable(0, 0, 0, 0)  # no decision: nothing to test
    assert not shift_testable(0, 4, 4, 4)  # ReLUs or hinges alone: kinks, skipped
    assert not shift_testable(2, 4, 4, 4)  # a ReLU network with a stable softmax head
    assert not shift_testable(1, 2, 1, 0)  # a sort or a clip of two bounds: unflippable


def test_a_relu_network_pays_no_shift_test():
    gen = np.random.default_rng(3)
    x, w = gen.standard_normal((5, 4)), gen.standard_normal((4, 3))

    def f(w):
        return np.sum(np.maximum(0, x @ w) ** 2)

    def grad(w):
        return (x.T @ (2 * np.maximum(0, x @ w)),)

    result = gradcheck(f, w, grad=grad)
    assert result.passed and result.kinks_present
    assert result.evaluations == 1 + 2 * 10 + 2  # the floor: no shift test


# -- option values: types named, bool is no int -----------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("samples_per_block", True, "samples_per_block must be a positive int"),
        ("samples_per_block", 2.0, "samples_per_block must be a positive int"),
        ("seed", True, "seed must be an int"),
        ("burn_in", True, "burn_in must be an int >= 0"),
        ("burn_in", False, "burn_in must be an int >= 0"),
        ("burn_in_lr", True, "burn_in_lr must be a positive float"),
        ("eps", True, "eps must be a float in (0, 1)"),
        ("dominance", True, "dominance must be a ratio > 1"),
    ],
)
def test_a_bool_is_no_number_for_an_option(option, value, fragment):
    x = np.linspace(-1.0, 1.0, 4)
    with pytest.raises(ValueError) as info:
        gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: (3 * x**2,), **{option: value})
    assert str(info.value).startswith(f"gradcheck: {fragment}")
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("wrt", [5, 1.5, [0], ["args[0]", 1], b"args[0]", {"args[0]": 1}])
def test_wrt_of_the_wrong_type_names_wrt_and_what_it_takes(wrt):
    x = np.linspace(-1.0, 1.0, 4)
    with pytest.raises(TypeError) as info:
        gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: (3 * x**2,), wrt=wrt)
    message = str(info.value)
    assert message.startswith("gradcheck: wrt must be")
    assert "a list of block names" in message and "a predicate" in message
    assert repr(wrt) in message


@pytest.mark.parametrize(
    "wrt", [None, "args[0]", ["args[0]"], ("args[0]",), {"args[0]"}, lambda name: True]
)
def test_wrt_takes_names_or_a_predicate(wrt):
    x = np.linspace(-1.0, 1.0, 4)
    result = gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: (3 * x**2,), wrt=wrt)
    assert [b.name for b in result.blocks] == ["args[0]"]


# -- near an edge of f's domain, near a singularity ------------------------------------


def _log_of_small(wrong=1.0):
    """sum(mu / sqrt(v)) + sum(log v) at v[2] = 3e-6: x - h leaves the domain there."""
    mu = np.array([0.3, -1.2, 0.8, 0.5])
    v = np.array([0.5, 2.0, 3e-6, 1.0])

    def f(v):
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.sum(mu / np.sqrt(v)) + np.sum(np.log(v)))

    def grad(v):
        g = -0.5 * mu * v**-1.5 + 1.0 / v
        g[2] *= wrong
        return (g,)

    return f, grad, v


def test_a_step_past_the_domain_is_retried_smaller_and_said():
    f, grad, v = _log_of_small()
    result = gradcheck(f, v, grad=grad)
    assert result.passed and result.tier is Tier.HAPPY
    (block,) = result.blocks
    at = block.indices.index((2,))
    # f(v - h/10) is finite, its edge lies between h/10 and h: taken at h/1000
    assert block.step[at] == pytest.approx(1e-5 / 1000)
    (said,) = [w for w in result.warnings if "not finite within one step" in w]
    assert "block 'args[0]' at index (2,)" in said and "h/1000" in said


def test_a_wrong_gradient_past_the_domain_edge_still_fails():
    f, grad, v = _log_of_small(wrong=1.01)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, v, grad=grad)
    (block,) = info.value.result.blocks
    assert block.rel_error[block.indices.index((2,))] == pytest.approx(0.01 / 1.01, rel=1e-3)


def test_f_undefined_on_one_side_at_every_step_names_the_coordinate():
    where = r"f\(x - h\) for block 'args\[0\]' at index \(1, 0\)"
    with pytest.raises(ValueError, match=where), np.errstate(invalid="ignore"):
        gradcheck(
            lambda x: np.sum(np.sqrt(x) ** 3),
            np.array([[1.0, 2.0], [0.0, 3.0]]),
            grad=lambda x: (1.5 * np.sqrt(x),),
        )


@pytest.mark.parametrize("wrong", [1.0, 1.001])
def test_smaller_steps_rescue_a_correct_gradient_near_a_singularity_only(wrong):
    """1/x at x = 1e-4: the difference at h = 1e-5 is 1% off, its Richardson value
    1e-4. Smaller steps converge to a correct gradient; a gradient 0.1% off stays off."""
    x = np.array([1e-4, 0.5, 2.0])

    def grad(x):
        g = -1.0 / x**2
        g[0] *= wrong
        return (g,)

    result = gradcheck(lambda x: float(np.sum(1.0 / x)), x, grad=grad, raise_on_fail=False)
    (block,) = result.blocks
    at = block.indices.index((0,))
    if wrong == 1.0:
        assert result.passed and result.tier is Tier.HAPPY
        assert block.step[at] < 1e-5  # the comparison that counted took a smaller step
    else:
        assert not result.passed and block.tier is Tier.UNCOMFORTABLE
        assert block.rel_error[at] == pytest.approx(1e-3, rel=0.05)


def _zero_head_net(w2, bug):
    """A tanh layer and a linear head; `bug` uses 1 - t for tanh's derivative."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 4)), rng.standard_normal(5)
    params = {"W1": rng.standard_normal((4, 6)) * 0.5, "W2": w2}

    def f(x):
        return np.sum((np.tanh(x @ params["W1"]) @ params["W2"] - y) ** 2)

    def grad(x):
        t = np.tanh(x @ params["W1"])
        r = t @ params["W2"] - y
        dt = np.outer(2 * r, params["W2"]) * ((1 - t) if bug else (1 - t**2))
        return {"args[0]": dt @ params["W1"].T, "W1": x.T @ dt, "W2": 2 * t.T @ r}

    return f, grad, x, params


ZERO_W1 = (
    "block 'W1' has an analytic gradient of exactly 0 at the checked point (the numeric "
    "one agrees), so its check cannot catch a wrong gradient there. If the zero comes "
    "from the point (a zero-initialised layer downstream, ReLUs that are all inactive), "
    "check after burn_in= steps or at a non-zero initialisation; if f does not depend on "
    "it, leave it out with wrt="
)


def test_a_block_whose_gradient_is_exactly_zero_is_called_a_vacuous_check():
    f, grad, x, params = _zero_head_net(np.zeros(6), bug=True)
    result = gradcheck(f, x, params=params, grad=grad, wrt=["W1", "W2"])
    assert result.passed and ZERO_W1 in result.warnings  # the bug cannot show here


def test_no_zero_gradient_warning_where_the_gradient_is_not_zero():
    f, grad, x, params = _zero_head_net(np.linspace(-1.0, 1.0, 6), bug=False)
    result = gradcheck(f, x, params=params, grad=grad, wrt=["W1", "W2"])
    assert result.passed
    assert not any("exactly 0" in w or "zero up to round-off" in w for w in result.warnings)


# -- a direction through an exact tie -----------------------------------------------------


def _relu_with_a_tie(bug_at=None):
    """sum(w * max(x, 0)) over 40 entries, one of them exactly 0 (a tie), with the
    gradient of entry `bug_at` 1% off."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(40)
    x[7] = 0.0
    w = rng.standard_normal(40)

    def grad(x):
        g = w * (x > 0)
        if bug_at is not None:
            g[bug_at] *= 1.01
        return (g,)

    return (lambda x: float(np.sum(w * np.maximum(x, 0.0)))), grad, x


def test_a_direction_through_a_tie_is_taken_around_it():
    f, grad, x = _relu_with_a_tie()
    result = gradcheck(f, x, grad=grad, samples_per_block=3)
    (block,) = result.blocks
    d = block.direction
    assert result.passed and d is not None and d.counted
    assert 0.9 <= d.coverage < 1.0  # all but the part holding entry 7
    assert "direction v moves" in result.report()


def test_a_wrong_entry_the_sample_misses_is_found_around_a_tie():
    f, grad, x = _relu_with_a_tie()
    sampled = {i for (i,) in gradcheck(f, x, grad=grad, samples_per_block=3).blocks[0].indices}
    bug = next(i for i in range(40) if i not in sampled and i != 7 and x[i] > 0)
    f, grad, x = _relu_with_a_tie(bug_at=bug)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, x, grad=grad, samples_per_block=3)
    (block,) = info.value.result.blocks
    assert block.localized == ((bug,),)
    assert block.direction is not None and block.direction.coverage < 1.0


# -- a smooth direction in a function with kinks -----------------------------------------


def _big_relu_layer(wrong):
    """sum(w * max(x, 0)) over a 300 x 300 block, the gradient of one ordinary entry
    `wrong` times its value: an error the direction sees at the 1e-5 level."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 300))
    w = rng.standard_normal((300, 300))
    spot = (211, 97)
    x[spot] = abs(x[spot]) + 0.5

    def grad(x):
        g = w * (x > 0)
        g[spot] *= wrong
        return (g,)

    return (lambda x: float(np.sum(w * np.maximum(x, 0.0)))), grad, x, spot


@pytest.mark.parametrize("wrong", [1.003, 1.01])
def test_an_error_of_ok_size_on_a_smooth_direction_is_localized_in_a_kinked_f(wrong):
    """The default tolerance of a function with kinks is ok; the direction crossed no
    kink, so its error of ok size is bisected, and the entry found fails on its own."""
    f, grad, x, spot = _big_relu_layer(wrong)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, x, grad=grad)
    result = info.value.result
    assert result.kinks_present and result.tolerance is Tier.OK
    (block,) = result.blocks
    assert block.localized == (spot,)
    assert block.direction is not None and block.direction.tier is Tier.OK


def test_a_correct_kinked_f_pays_nothing_for_it():
    f, grad, x, _ = _big_relu_layer(1.0)
    result = gradcheck(f, x, grad=grad)
    assert result.passed and result.evaluations == 1 + 2 * 10 + 2


def test_no_direction_around_ties_where_every_coordinate_is_checked():
    f, grad, x = _relu_with_a_tie()
    result = gradcheck(f, x, grad=grad, samples_per_block=None)
    (block,) = result.blocks
    assert result.passed and block.direction is not None
    assert block.direction.coverage == 1.0 and not block.direction.counted
    # the tied coordinate is retried at h/10 and h/100; nothing else is spent
    assert result.evaluations == 1 + 2 * 40 + 2 + 2 * 2 + 2 * 2


# -- a direction dominated by the sampled coordinates -------------------------------------


def _log_with_one_huge_gradient(wrong_at=None):
    """sum(c * log x) over 400 entries, one at 3e-6 (gradient ~3e5, the others ~1)."""
    rng = np.random.default_rng(0)
    x = rng.random(400) + 0.5
    x[7] = 3e-6
    c = rng.standard_normal(400)

    def grad(x):
        g = c / x
        if wrong_at is not None:
            g[wrong_at] *= 1.02
        return (g,)

    def f(x):
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.sum(c * np.log(x)))

    return f, grad, x


def test_a_direction_dominated_by_one_huge_entry_checks_the_rest_of_the_block():
    """The entry of gradient 3e5 holds nearly all of v·g, so a 2% error elsewhere moved
    it by less than 1e-7 and passed; it is sampled (the largest |g|), so the direction
    leaves it out and checks the other 399 entries."""
    f, grad, x = _log_with_one_huge_gradient()
    result = gradcheck(f, x, grad=grad)
    (block,) = result.blocks
    assert result.passed and (7,) in block.indices
    sampled = {i for (i,) in block.indices}
    wrong = next(i for i in range(400) if i not in sampled)
    f, grad, x = _log_with_one_huge_gradient(wrong_at=wrong)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, x, grad=grad)
    (block,) = info.value.result.blocks
    assert block.localized == ((wrong,),)


@pytest.mark.parametrize("factor", [1.0, 1.1])
def test_a_large_constant_in_the_loss_that_hides_errors_is_said(factor):
    """A loss of 1e8 (a constant plus what x changes): round-off of f at the default
    step excuses disagreements of 10%, so a gradient wrong by 10% passes as noise. The
    check cannot resolve it, and says so, correct gradient or not."""
    x = np.array([0.3, -1.2, 0.8])

    def f(x):
        return float(np.sum(np.sin(x)) + 1e8)

    result = gradcheck(f, x, grad=lambda x: (factor * np.cos(x),))
    said = [w for w in result.warnings if "were let pass as round-off of f" in w]
    assert len(said) == 1 and "'args[0]'" in said[0] and "1e+08" in said[0]


def test_a_loss_of_ordinary_size_gets_no_resolution_warning():
    x = np.array([0.3, -1.2, 0.8])
    result = gradcheck(lambda x: float(np.sum(np.sin(x)) + 1e4), x, grad=lambda x: (np.cos(x),))
    assert result.tier is Tier.HAPPY
    assert not any("round-off of f" in w for w in result.warnings)


def test_the_float64_cast_is_a_notice_not_a_gradcheck_warning():
    """A float32 input is cast for the check as it always is: said in Result.warnings,
    but not issued as a GradcheckWarning (it would stand beside every float32 model's
    check); a warning that the check could not see well is issued."""
    import warnings

    from pytest_gradcheck import GradcheckWarning

    x = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = gradcheck(lambda x: float(np.sum(x**2)), x, grad=lambda x: (2 * x,))
        tiny = gradcheck(lambda x: 1e-12 * float(np.sum(x**2)), x, grad=lambda x: (2e-12 * x,))
    assert any(w.startswith("checked in float64: ") for w in result.warnings)
    issued = [str(w.message) for w in seen if issubclass(w.category, GradcheckWarning)]
    assert not any("checked in float64" in m for m in issued)
    assert any("tiny gradients" in m for m in issued) and tiny.passed


# -- a direction amplified by a small v·g, explained by the entries found ------------------

N_SMALL_DOT = 2000


def _small_dot(dot=0.02):
    """x for 0.5 * sum(x**2) (gradient x) with v·x = `dot`, v the block's direction:
    an error e at entry k moves v·g by v_k e, which is `|v_k x_k| / dot` times e in
    relative terms (about 1.9 for the entry chosen below at dot = 0.02)."""
    v = direction("args[0]", N_SMALL_DOT, 0)
    w = np.random.default_rng(21).standard_normal(N_SMALL_DOT)
    x = w - (v @ w - dot) * v
    sample = set(sample_coordinates("args[0]", N_SMALL_DOT, [x], 10, seed=0).tolist())
    k = next(int(i) for i in np.argsort(-np.abs(x)) if i not in sample and abs(x[i]) < 2.5)
    return x, k


def _half_square(x):
    return 0.5 * float(np.sum(x**2))


def _half_square_max(x):
    """0.5 * sum(x**2) through a max that no entry is near: kinks present, none crossed."""
    return 0.5 * float(np.sum(np.maximum(x, -10.0) ** 2))


def _entries_off(factor, where):
    def grad(x):
        g = x.copy()
        g[where] *= factor
        return (g,)

    return grad


@pytest.mark.parametrize("f", [_half_square, _half_square_max])
def test_a_direction_amplified_by_a_small_v_dot_g_is_explained_by_the_entry_found(f):
    """One entry 1% off: its own error is 9.9e-3 (uncomfortable), but v·g is small, so
    the direction is 1.8% off (wrong). Bisection finds the entry, and with its numeric
    derivative in place v·g agrees: the block's tier and worst error are the entry's,
    the direction keeps its own numbers and is marked explained. Also in a function with
    kinks (default tolerance ok, the direction smooth): the same."""
    x, k = _small_dot()
    result = gradcheck(f, x, grad=_entries_off(1.01, k), raise_on_fail=False)
    (block,) = result.blocks
    d = block.direction
    assert not result.passed and not block.passed
    assert block.localized == ((k,),)
    assert d is not None and d.tier is Tier.WRONG and d.rel_error > 1.5e-2  # its own numbers
    assert d.explained and d.explained_by == ((k,),)
    assert d.residual_rel_error is not None and d.residual_rel_error < 1e-5
    assert block.tier is result.tier is Tier.UNCOMFORTABLE
    assert block.max_rel_error == result.max_rel_error == pytest.approx(0.01 / 1.01, rel=1e-6)
    assert "direction v is explained by (" + str(k) + ",)" in result.report()
    assert "tier uncomfortable (max rel error 9.90e-03" in str(result)
    with pytest.raises(GradcheckError, match="tier uncomfortable"):
        gradcheck(f, x, grad=_entries_off(1.01, k))


@pytest.mark.parametrize(
    ("factor", "where", "coordinates"),
    [(1.01, slice(None, None, 5), Tier.UNCOMFORTABLE), (1.02, slice(None), Tier.WRONG)],
    ids=["every-5th-entry-1%", "whole-block-2%"],
)
def test_a_diffuse_error_leaves_the_direction_unexplained_and_counting(factor, where, coordinates):
    """Many entries off (every 5th by 1%, or the whole gradient by 2%): the sampled
    coordinates among them fail, but with their numeric values in place v·g is still
    off, so the direction is not explained and its error counts as before. Every 5th
    entry 1% off: the coordinates are uncomfortable, the direction (and so the block)
    wrong, its error the block's worst."""
    x, _ = _small_dot()
    result = gradcheck(_half_square, x, grad=_entries_off(factor, where), raise_on_fail=False)
    (block,) = result.blocks
    d = block.direction
    assert not result.passed
    assert d is not None and d.tier is Tier.WRONG
    assert not d.explained and d.explained_by == ()
    assert d.residual_rel_error is not None and d.residual_rel_error >= 1e-2
    assert max(t for t in block.coordinate_tiers) is coordinates
    assert block.tier is result.tier is Tier.WRONG
    assert (
        block.max_rel_error
        == result.max_rel_error
        == max(d.rel_error, block.coordinates_max_rel_error)
    )
    if coordinates is Tier.UNCOMFORTABLE:
        assert result.max_rel_error == d.rel_error > 1e-2
        assert "direction v is not explained" in result.report()


def test_a_direction_beside_passing_coordinates_is_never_explained():
    """Tolerance ok (kinks present), one entry 8e-5 off: the entry passes at ok, the
    direction, amplified past 1e-4 by a small v·g, fails. Only failing coordinates
    explain a direction, so the check still fails, on the direction's error."""
    x, k = _small_dot(dot=0.002)
    result = gradcheck(_half_square_max, x, grad=_entries_off(1 + 8e-5, k), raise_on_fail=False)
    (block,) = result.blocks
    d = block.direction
    assert result.tolerance is Tier.OK and not result.passed
    assert block.localized == ((k,),) and block.coordinates_max_rel_error < 1e-4
    assert d is not None and d.tier is Tier.UNCOMFORTABLE and not d.explained
    assert d.residual_rel_error is None  # (no failing coordinate to replace)
    assert block.tier is result.tier is Tier.UNCOMFORTABLE
    assert result.max_rel_error == d.rel_error


def test_a_correct_gradient_has_nothing_to_explain():
    x, _ = _small_dot()
    result = gradcheck(_half_square, x, grad=lambda x: (x.copy(),))
    d = result.blocks[0].direction
    assert result.passed and d is not None and d.explained_by == ()
    assert d.residual_rel_error is None


def test_the_explanation_is_in_to_dict_and_json():
    x, k = _small_dot()
    result = gradcheck(_half_square, x, grad=_entries_off(1.01, k), raise_on_fail=False)
    doc = json.loads(json.dumps(result.to_dict()))
    (block,) = doc["blocks"]
    d = block["direction"]
    assert d["explained_by"] == [[k]] and d["tier"] == "wrong"
    assert d["residual_rel_error"] == result.blocks[0].direction.residual_rel_error
    assert (block["tier"], doc["tier"]) == ("uncomfortable", "uncomfortable")
    assert block["max_rel_error"] == doc["max_rel_error"] < 1e-2 < d["rel_error"]
    passing = gradcheck(_half_square, x, grad=lambda x: (x.copy(),)).to_dict()
    d = passing["blocks"][0]["direction"]
    assert d["explained_by"] == [] and d["residual_rel_error"] is None
