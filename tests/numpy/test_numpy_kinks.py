"""Kinks in NumPy functions: winner tracking, the crossing policy, the tolerance rule.

The seed's "Kinks in the objective": a centered difference that straddles a kink of
max(0, x) (ReLU, hinge loss, max-pool) is not the derivative. Winner tracking notices
that f(x+h) and f(x-h) took different branches, retries at h/10 and h/100 and, if the
crossing persists, keeps that coordinate out of the verdict (counted, never silently).
"""

from __future__ import annotations

import gradcheck_numpy_layers as L
import numpy as np
import pytest

from pytest_gradcheck import GradcheckError, GradcheckWarning, Tier, gradcheck

EPS = 1e-5
REG = 0.05
#: the warning for smooth comparisons of a kinked f that disagree beyond happy
SMOOTH = "comparison(s) that crossed no kink disagree beyond the happy tier"


def relu_svm_net(seed, n=5, d=4, h=6, c=3):
    rng = np.random.default_rng(seed)
    params = L.init_two_layer(rng, d, h, c)
    x = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    return params, x, y


def check_relu_svm(params, x, y, **options):
    """The ReLU + SVM two-layer net, as named terms (each checked on its own too)."""

    def f(x, y):
        data, reg = L.two_layer_terms(params, x, y, REG, loss="svm")
        return {"data": data, "reg": reg}

    def grad(x, y):
        gd, gr = L.two_layer_grads(params, x, y, REG, loss="svm")
        return {"data": gd, "reg": gr}

    return gradcheck(f, x, y, params=params, grad=grad, **options)


# -- no false alarm ------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
@pytest.mark.parametrize("seed", range(20))
def test_correct_relu_svm_network_never_fails(seed, eps):
    params, x, y = relu_svm_net(seed)
    result = check_relu_svm(params, x, y, seed=seed, eps=eps, raise_on_fail=False)
    assert result.passed, result.report()
    assert result.kinks_present
    assert result.tolerance is Tier.OK
    assert result.tier <= Tier.OK
    for term in result.terms.values():
        assert term.passed
    # its comparisons that crossed no kink agree as a smooth function's do
    assert not [w for w in result.warnings if SMOOTH in w], result.warnings


def test_large_step_crossings_are_retried_not_reported():
    """At eps=1e-2 untracked checks of correct nets fail (fewer than they would: a
    comparison whose smaller steps converge is rescued by them, see `_pairs.confirm`);
    tracked ones retry and pass."""
    untracked_failures = 0
    for seed in range(10):
        params, x, y = relu_svm_net(seed)
        tracked = check_relu_svm(params, x, y, seed=seed, eps=1e-2)
        untracked = check_relu_svm(
            params, x, y, seed=seed, eps=1e-2, kinks="off", tolerance=Tier.OK, raise_on_fail=False
        )
        assert tracked.passed
        assert untracked.kinks_crossed == 0  # nothing is tracked
        if not untracked.passed:
            untracked_failures += 1
            # the tracked check saw those crossings and shrank the step there
            steps = [b.step for b in tracked.blocks]
            steps += [[b.direction.step] for b in tracked.blocks if b.direction is not None]
            assert np.any(np.concatenate(steps) < 1e-2 * 0.99)
            plain = 1 + 2 * tracked.coordinates + 2 * len(tracked.blocks)
            assert tracked.evaluations > plain  # the retries cost evaluations
    assert untracked_failures >= 1


# -- pre-activations placed at the kink -------------------------------------------------


def near_kink_net():
    """A ReLU + SVM net with two hidden pre-activations within 1e-7 of zero."""
    params, x, y = relu_svm_net(3)
    a1 = x @ params["W1"] + params["b1"]
    params["b1"][0] += 3e-8 - a1[0, 0]  # sample 0, unit 0: just above the kink
    params["b1"][1] += -4e-8 - a1[1, 1]  # sample 1, unit 1: just below it
    a1 = x @ params["W1"] + params["b1"]
    assert abs(a1[0, 0]) < 1e-7 and abs(a1[1, 1]) < 1e-7
    return params, x, y


def _coordinates(result, name):
    (block,) = [b for b in result.blocks if b.name == name]
    return block


def test_crossings_make_the_untracked_check_fail_where_the_tracked_one_passes():
    params, x, y = near_kink_net()
    tracked = check_relu_svm(params, x, y)
    assert tracked.passed
    assert tracked.kinks_crossed > 0
    assert tracked.tolerance is Tier.OK

    with pytest.raises(GradcheckError) as info:
        check_relu_svm(params, x, y, kinks="off", tolerance=Tier.OK)
    untracked = info.value.result
    assert untracked.kinks_crossed == 0
    failing = {b.name for b in untracked.blocks if not b.passed}
    assert failing and failing <= {"W1", "b1"}  # the first layer, where the kinks are
    for name in failing:
        assert repr(name) in str(info.value)
        assert _coordinates(untracked, name).tier > _coordinates(tracked, name).tier

    # every coordinate the untracked check got wrong is one the tracked check retried
    # at a smaller step or reported as kink-crossed
    for name in ("W1", "b1"):
        off, on = _coordinates(untracked, name), _coordinates(tracked, name)
        assert off.indices == on.indices  # the same sample
        bad = [
            Tier.of(float(r)) > Tier.OK and not w
            for r, w in zip(off.rel_error, off.within_noise, strict=True)
        ]
        handled = on.kink_crossed | (on.step < EPS * 0.99)
        assert not np.any(np.array(bad) & ~handled)
        assert np.any(on.kink_crossed)
    # the second layer has no kink in front of it: the same numbers either way
    for name in ("W2", "b2"):
        np.testing.assert_array_equal(
            _coordinates(untracked, name).numeric, _coordinates(tracked, name).numeric
        )
        assert not np.any(_coordinates(tracked, name).kink_crossed)


# -- the crossing policy, coordinate by coordinate -------------------------------------

C = np.array([1.5, -2.0, 0.7, 3.0, 1.1])
D = np.array([0.4, 0.9, 2.5, 0.3, 0.8])
GAP = 1e-9


def kinked(x):
    """sum(c·max(0, x)) + sum(d·max(0, -x - 1e-9)): two kinks 1e-9 apart around 0."""
    n = x.shape[0]
    return np.sum(C[:n] * np.maximum(0, x)) + np.sum(D[:n] * np.maximum(0, -x - GAP))


def kinked_grad(x):
    n = x.shape[0]
    return (C[:n] * (x > 0) - D[:n] * (-x - GAP > 0),)


def test_a_crossing_is_retried_at_smaller_steps_then_excluded_and_counted():
    # 0.5 and -0.7: far from the kinks; 3e-6: crosses at h, not at h/10;
    # 0.0: crosses at h, h/10, h/100, and the center takes neither side's branches
    x = np.array([0.5, 3e-6, 0.0, -0.7])
    result = gradcheck(kinked, x, grad=kinked_grad, mode="coords", samples_per_block=None)
    (block,) = result.blocks
    assert result.passed
    assert block.indices == ((0,), (1,), (2,), (3,))
    assert block.kink_crossed.tolist() == [False, False, True, False]
    assert result.kinks_crossed == 1
    assert block.kinks_crossed == 1
    np.testing.assert_allclose(block.step, [EPS, EPS / 10, EPS / 100, EPS], rtol=1e-12)
    # 1 analytic pass (no shift test: maxima of two values alone are the kinks of a
    # ReLU); 2 per coordinate; 2 more per retry (1 retry, then 2 retries)
    assert result.evaluations == 1 + 2 * 4 + 2 * 1 + 2 * 2
    # the resolved retry gives the exact slope
    assert block.numeric[1] == pytest.approx(C[1], rel=1e-9)
    # the excluded coordinate is far off, yet it does not fail the block
    assert block.rel_error[2] > 1e-2
    assert block.tier <= Tier.OK
    assert block.passed
    assert "excluded" in result.report()


def test_without_tracking_the_exact_kink_fails():
    x = np.array([0.5, 3e-6, 0.0, -0.7])
    with pytest.raises(GradcheckError) as info:
        gradcheck(kinked, x, grad=kinked_grad, mode="coords", samples_per_block=None, kinks="off")
    result = info.value.result
    (block,) = result.blocks
    # no retries; the two failing coordinates get a confirming half step and a wide step
    # each; at 3e-6 the half step's Richardson value comes closer (the kink is crossed
    # at h, not at h/2), so a tenth of the step is tried, with its half step, and
    # agrees: 3e-6 is a smooth point for steps below it. The failing check evaluates
    # the center once more to rule out a non-deterministic f.
    assert result.evaluations == 1 + 2 * 4 + 4 * 2 + 4 + 1
    assert result.kinks_crossed == 0
    assert not np.any(block.kink_crossed)
    np.testing.assert_allclose(block.step, [EPS, EPS / 10, EPS, EPS])
    tiers = [Tier.of(float(r)) for r in block.rel_error]
    assert tiers[0] is Tier.HAPPY and tiers[1] is Tier.HAPPY and tiers[3] is Tier.HAPPY
    assert tiers[2] is Tier.WRONG  # exactly at the kink: no step converges
    assert block.tier is Tier.WRONG


def test_a_persistent_crossing_on_one_side_is_judged_one_sided():
    """docs/design.md: a crossing whose center shares one side's branches is judged by a
    one-sided difference on that side (1 more evaluation), still counted as crossed."""
    x = np.array([0.5, 5e-8])  # 5e-8 - h/100 < 0 < 5e-8: only the minus side crosses
    result = gradcheck(kinked, x, grad=kinked_grad, mode="coords", samples_per_block=None)
    (block,) = result.blocks
    assert result.passed
    assert block.kink_crossed.tolist() == [False, True]
    assert result.kinks_crossed == 1
    assert result.evaluations == 1 + 2 * 2 + 2 * 2 + 1
    assert block.numeric[1] == pytest.approx(C[1], rel=1e-7)

    def wrong(x):
        return (kinked_grad(x)[0] * np.array([1.0, 2.0]),)

    with pytest.raises(GradcheckError) as info:
        gradcheck(kinked, x, grad=wrong, mode="coords", samples_per_block=None)
    assert info.value.result.blocks[0].tier is Tier.WRONG


def test_max_pool_near_tie_is_a_tracked_kink():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4) / 4.0
    x[0, 0, 1, 1] = x[0, 0, 1, 0] + 5e-8  # window (0, 0): two entries 5e-8 apart

    def f(x):
        return L.max_pool_forward(x)[0]

    def grad(x, dout):
        return (L.max_pool_backward(dout, L.max_pool_forward(x)[1]),)

    options = {"mode": "coords", "samples_per_block": None}
    tracked = gradcheck(f, x, grad=grad, **options)
    (block,) = tracked.blocks
    crossed = {block.indices[i] for i in np.flatnonzero(block.kink_crossed)}
    assert crossed == {(0, 0, 1, 0), (0, 0, 1, 1)}
    assert tracked.kinks_crossed == 2

    with pytest.raises(GradcheckError) as info:
        gradcheck(f, x, grad=grad, kinks="off", tolerance=Tier.OK, **options)
    (off,) = info.value.result.blocks
    wrong = {off.indices[i] for i, r in enumerate(off.rel_error) if r >= 1e-2}
    assert wrong == {(0, 0, 1, 0), (0, 0, 1, 1)}


# -- the tolerance rule ---------------------------------------------------------------


def tanh_softmax_check(shift, bug=None, **options):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3))
    y = rng.integers(0, 3, 4)
    params = {"W1": rng.standard_normal((3, 5)), "W2": rng.standard_normal((5, 3))}

    def f(x, y):
        h = np.tanh(x @ params["W1"])
        return L.softmax_loss(h @ params["W2"], y, shift=shift)[0]

    def grad(x, y):
        h = np.tanh(x @ params["W1"])
        ds = L.softmax_loss(h @ params["W2"], y, bug=bug, shift=shift)[1]
        return {"W1": x.T @ ((ds @ params["W2"].T) * (1 - h**2)), "W2": h.T @ ds}

    return gradcheck(f, x, y, params=params, grad=grad, **options)


def test_smooth_function_is_held_to_happy():
    result = tanh_softmax_check(shift=False)
    assert result.passed
    assert not result.kinks_present
    assert result.tolerance is Tier.HAPPY
    assert result.tier is Tier.HAPPY


def test_relu_function_is_held_to_ok():
    params, x, y = relu_svm_net(0)
    result = check_relu_svm(params, x, y)
    assert result.kinks_present
    assert result.tolerance is Tier.OK


def test_an_explicit_tolerance_overrides_the_rule():
    # dW2 scaled by 1.01 (relative error 0.0099) fails the default HAPPY ...
    with pytest.raises(GradcheckError):
        tanh_softmax_check(shift=False, bug="scale")
    # ... and passes a tolerance of UNCOMFORTABLE, given as a Tier or by name
    for tolerance in (Tier.UNCOMFORTABLE, "uncomfortable"):
        result = tanh_softmax_check(shift=False, bug="scale", tolerance=tolerance)
        assert result.passed
        assert result.tolerance is Tier.UNCOMFORTABLE
        assert result.tier is Tier.UNCOMFORTABLE


def thinly_wrong_relu_svm(seed, **options):
    """The ReLU + SVM net's total loss with every gradient entry 3e-5 too large: *ok*
    at every coordinate, so under the *ok* tolerance of a kinked f it fails only where
    a direction happens to sum the error past 1e-4."""
    params, x, y = relu_svm_net(seed)

    def f(x, y):
        return sum(L.two_layer_terms(params, x, y, REG, loss="svm"))

    def grad(x, y):
        gd, gr = L.two_layer_grads(params, x, y, REG, loss="svm")
        return {k: (gd[k] + (gr.get(k) if gr.get(k) is not None else 0.0)) * (1 + 3e-5) for k in gd}

    return gradcheck(f, x, y, params=params, grad=grad, seed=seed, **options)


def test_an_error_spread_thinly_over_a_kinked_f_is_warned_of_where_it_passes():
    passed_with_warning = 0
    for seed in range(6):
        result = thinly_wrong_relu_svm(seed, raise_on_fail=False)
        assert result.tolerance is Tier.OK
        warned = [w for w in result.warnings if SMOOTH in w]
        assert warned or not result.passed, (seed, result.report())
        if result.passed:
            passed_with_warning += 1
            assert result.tier is Tier.OK
            # it names the block, and how far off the smooth comparisons are
            assert any("in block 'W1'" in w or "in block 'W2'" in w for w in warned)
            assert "relative error up to 3" in warned[0] or "relative error up to 2" in warned[0]
    # the warning is what catches it at these seeds
    assert passed_with_warning
    # as a Python warning, which -W error::pytest_gradcheck.GradcheckWarning gates on
    with pytest.warns(GradcheckWarning, match="crossed no kink"):
        thinly_wrong_relu_svm(0, raise_on_fail=False)


def test_a_correct_gradient_near_a_singularity_beside_a_kink_is_happy_and_unwarned():
    """log(b) at b = 2e-4..4e-4 beside a ReLU: the plain difference fails *ok* by
    truncation, the Richardson value lands in *ok*; confirmed only at *ok*, the smaller
    steps that settle it were never taken, and the smooth-comparison warning fired on
    a correct gradient (an audit's false alarm)."""
    a = np.array([-1.0, 0.5, 2.0])
    b = np.linspace(2e-4, 4e-4, 12)
    result = gradcheck(
        lambda b, a: np.log(b).sum() + np.maximum(a, 0).sum(),
        b,
        a,
        grad=lambda b, a: (1 / b, (a > 0).astype(float)),
    )
    assert result.tolerance is Tier.OK
    assert result.tier is Tier.HAPPY, result.report()
    assert not [w for w in result.warnings if SMOOTH in w]


def test_a_thinly_wrong_kinked_f_fails_under_happy_and_an_explicit_ok_is_not_second_guessed():
    with pytest.raises(GradcheckError):
        thinly_wrong_relu_svm(0, tolerance="happy")
    result = thinly_wrong_relu_svm(0, tolerance="ok", raise_on_fail=False)
    assert result.passed
    assert not [w for w in result.warnings if SMOOTH in w]


def test_without_tracking_no_kink_is_seen_so_the_default_is_happy():
    params, x, y = relu_svm_net(0)
    result = check_relu_svm(params, x, y, kinks="off")
    assert not result.kinks_present
    assert result.tolerance is Tier.HAPPY


def test_stable_softmax_is_smooth_and_held_to_happy():
    # the row max of the usual stable softmax is a decision (which score wins), but the
    # loss does not depend on its value: the shift test (one more evaluation, with the
    # max moved) shows it, and the check is held to HAPPY as for the unshifted softmax
    result = tanh_softmax_check(shift=True)
    unshifted = tanh_softmax_check(shift=False)
    assert result.passed
    assert not result.kinks_present
    assert result.tolerance is Tier.HAPPY
    assert result.evaluations == unshifted.evaluations + 1  # the shift test


def test_a_small_error_behind_a_stable_softmax_fails():
    # a gradient 1e-5 off (tier OK): held to OK, the stable softmax let it pass
    for shift in (True, False):
        with pytest.raises(GradcheckError) as info:
            tanh_softmax_check(shift=shift, bug="tiny")
        result = info.value.result
        assert result.tolerance is Tier.HAPPY
        assert result.tier is Tier.OK


def softmax_rows(extra):
    """A stable log-sum-exp loss of scores; `extra` adds a use of the row max."""
    rng = np.random.default_rng(3)
    s = rng.standard_normal((4, 5))

    def f(s):
        m = np.max(s, axis=1, keepdims=True)
        loss = np.sum(np.log(np.sum(np.exp(s - m), axis=1)) + m[:, 0])
        return loss + (0.1 * m.sum() if extra else 0.0)

    def grad(s):
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        if extra:  # the max's own gradient: 0.1 at each row's winner
            p[np.arange(len(s)), np.argmax(s, axis=1)] += 0.1
        return (p,)

    return f, grad, s


def test_a_max_the_loss_reads_is_a_kink():
    f, grad, s = softmax_rows(extra=False)
    assert gradcheck(f, s, grad=grad).tolerance is Tier.HAPPY
    # the same max, read once more by the loss: a kink, and the shift test sees it
    f, grad, s = softmax_rows(extra=True)
    result = gradcheck(f, s, grad=grad)
    assert result.passed
    assert result.kinks_present
    assert result.tolerance is Tier.OK


def test_max_pooling_reductions_stay_kinks():
    # the naive max-pool's np.max per window: reductions whose values the loss reads
    x = np.random.default_rng(2).standard_normal((1, 1, 4, 4))
    result = gradcheck(
        lambda x: np.sum(L.max_pool_forward(x)[0] ** 2),
        x,
        grad=lambda x: (L.max_pool_backward(2 * L.max_pool_forward(x)[0], x),),
    )
    assert result.passed
    assert result.kinks_present
    assert result.tolerance is Tier.OK


def test_a_segment_max_by_ufunc_at_is_a_tracked_kink():
    # np.maximum.at, NumPy's segment max (graph pooling): which value wins a segment is
    # a decision; near a tie, untracked, the crossing failed a correct gradient
    segments = np.array([0, 0, 1, 1, 1, 2, 2])
    w = np.array([0.5, -1.5, 2.0])
    x = np.random.default_rng(0).standard_normal(7)
    x[0], x[1] = 0.7, 0.7 + 1e-9

    def f(x):
        out = np.full(3, -np.inf)
        np.maximum.at(out, segments, x)
        return out @ w

    def grad(x):
        out = np.full(3, -np.inf)
        np.maximum.at(out, segments, x)
        return (np.where(x == out[segments], w[segments], 0.0),)

    options = {"mode": "coords", "samples_per_block": None}
    result = gradcheck(f, x, grad=grad, **options)
    assert result.passed and result.kinks_present
    crossed = {result.blocks[0].indices[i] for i in np.flatnonzero(result.blocks[0].kink_crossed)}
    assert crossed == {(0,), (1,)}
    with pytest.raises(GradcheckError):
        gradcheck(f, x, grad=grad, kinks="off", **options)


def test_a_segment_softmax_by_ufunc_at_is_held_to_happy():
    # the segment maxima are a shift: the shift test moves them, and nothing changes
    segments = np.array([0, 0, 1, 1, 1, 2, 2])
    w = np.random.default_rng(1).standard_normal(7)

    def parts(x):
        m = np.full(3, -np.inf)
        np.maximum.at(m, segments, x)
        e = np.exp(x - m[segments])
        total = np.zeros(3)
        np.add.at(total, segments, e)
        return e / total[segments]

    def grad(x):
        p = parts(x)
        mean_w = np.zeros(3)
        np.add.at(mean_w, segments, p * w)
        return (p * (w - mean_w[segments]),)

    x = np.random.default_rng(0).standard_normal(7)
    result = gradcheck(lambda x: parts(x) @ w, x, grad=grad)
    assert result.passed and not result.kinks_present
    assert result.tolerance is Tier.HAPPY


def test_a_shift_max_changing_winner_is_no_crossing():
    # two scores of a row 1e-9 apart: the step of either changes which one is the max,
    # which no longer counts as crossing a kink once the max is known to be a shift
    f, grad, s = softmax_rows(extra=False)
    s[1, 2] = s[1].max() + 1e-9
    result = gradcheck(f, s, grad=grad, mode="coords", samples_per_block=None)
    assert result.passed
    assert result.tier is Tier.HAPPY
    assert result.kinks_crossed == 0
    assert not result.blocks[0].kink_crossed.any()


def test_the_shift_test_survives_an_f_that_refuses_it():
    # an f that checks its own max: the moved max breaks it, so the max stays a kink
    def f(s):
        m = np.max(s, axis=1, keepdims=True)
        z = s - m
        if np.asarray(z).max() != 0.0:  # read as a plain array: no decision recorded
            raise ValueError("the max moved")
        return np.sum(np.log(np.sum(np.exp(z), axis=1)) + m[:, 0])

    _, grad, s = softmax_rows(extra=False)
    result = gradcheck(f, s, grad=grad)
    assert result.passed
    assert result.kinks_present
    assert result.tolerance is Tier.OK
    assert result.evaluations == gradcheck(f, s, grad=grad, kinks="off").evaluations + 1


# -- comparisons that choose between two forms of one function -----------------------

SIG_X = np.random.default_rng(5).standard_normal(24) * 4
SIG_W = np.random.default_rng(6).standard_normal(24)


def sigmoid_where(x):
    """The stable sigmoid as one np.where over both forms."""
    with np.errstate(over="ignore"):
        s = np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))
    return np.sum(SIG_W * s)


def sigmoid_masks(x):
    """CS231n's stable sigmoid (rnn_layers.py): boolean masks, one form on each side."""
    pos = x >= 0
    neg = ~pos
    z = np.zeros_like(x)
    z[pos] = np.exp(-x[pos])
    z[neg] = np.exp(x[neg])
    top = np.ones_like(x)
    top[neg] = z[neg]
    return np.sum(SIG_W * top / (1 + z))


def sigmoid_grad(x, factor=1.0):
    s = 1 / (1 + np.exp(-x))
    return (factor * SIG_W * s * (1 - s),)


SIG_Z = (np.random.default_rng(7).random(24) > 0.5).astype(float)


def logistic_loss(x):
    """The stable logistic (sigmoid cross-entropy) loss: max, abs, log1p of exp."""
    return np.sum(SIG_W * (np.maximum(x, 0) - x * SIG_Z + np.log1p(np.exp(-np.abs(x)))))


def logistic_grad(x, factor=1.0):
    return (factor * SIG_W * (1 / (1 + np.exp(-x)) - SIG_Z),)


@pytest.mark.parametrize(
    ("f", "grad"),
    [(sigmoid_where, sigmoid_grad), (sigmoid_masks, sigmoid_grad), (logistic_loss, logistic_grad)],
    ids=["sigmoid-where", "sigmoid-masks", "logistic-loss"],
)
def test_a_stable_sigmoid_or_logistic_loss_is_smooth_and_held_to_happy(f, grad):
    # the sign of x decides which of two forms of one function computes each entry:
    # taking every decision's other branch (the shift test: comparisons inverted, max
    # and min swapped, abs negated) leaves the loss as it was, so they are no kink
    result = gradcheck(f, SIG_X, grad=grad)
    assert result.passed and result.tier is Tier.HAPPY
    assert not result.kinks_present
    assert result.tolerance is Tier.HAPPY
    assert result.evaluations == gradcheck(f, SIG_X, grad=grad, kinks="off").evaluations + 1
    # held to happy, a gradient 1e-5 off fails (held to OK, it passed)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, SIG_X, grad=lambda x: grad(x, 1 + 1e-5))
    assert info.value.result.tier is Tier.OK


def _kinked_by_comparisons():
    """Functions whose comparisons are kinks of the loss, with their gradients."""
    w = SIG_W

    def leaky(x):
        return np.sum(w * np.where(x > 0, x, 0.1 * x))

    def hinge_mask(x):
        m = 1 - x
        return np.sum((m > 0) * m * w)

    def positive_part(x):
        return np.sum(x[x > 0] ** 2)

    def piecewise(x):
        return np.sum(w * np.select([x < -1, x < 1], [-x, x**3], 2 * x - 1))

    def python_if(x):
        total = 0.0
        for xi, wi in zip(x, w, strict=True):
            if xi > 0.5:
                total = total + wi * xi
        return total

    def relu_max(x):
        return np.sum(w * np.maximum(0, x) ** 2)

    def l1(x):
        return np.sum(w * np.abs(x))

    def abs_sign(x):  # |x| rebuilt as x * sign(x): negating both cancels
        return np.sum(w * np.sign(x) * np.abs(x) ** 2)

    return {
        "relu-max": (relu_max, lambda x: (2 * w * np.maximum(0, x),)),
        "l1": (l1, lambda x: (w * np.sign(x),)),
        "leaky": (leaky, lambda x: (w * np.where(x > 0, 1.0, 0.1),)),
        "hinge_mask": (hinge_mask, lambda x: (-w * (1 - x > 0),)),
        "positive_part": (positive_part, lambda x: (2 * x * (x > 0),)),
        "piecewise": (
            piecewise,
            lambda x: (w * np.select([x < -1, x < 1], [-1.0, 3 * x**2], 2.0),),
        ),
        "python_if": (python_if, lambda x: (w * (x > 0.5),)),
        "abs-sign": (abs_sign, lambda x: (2 * w * np.abs(x),)),
    }


KINKED = _kinked_by_comparisons()


@pytest.mark.parametrize("name", list(KINKED))
def test_comparisons_the_loss_depends_on_stay_kinks(name):
    f, grad = KINKED[name]
    result = gradcheck(f, SIG_X, grad=grad)
    assert result.passed
    assert result.kinks_present and result.tolerance is Tier.OK


def test_a_stable_sigmoid_beside_a_stable_softmax_is_held_to_happy():
    # one shift test for both: the row max moved and the comparisons inverted together
    x = SIG_X.reshape(4, 6)

    def f(x):
        with np.errstate(over="ignore"):
            s = np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))
        z = s - s.max(axis=1, keepdims=True)
        return np.sum(np.log(np.sum(np.exp(z), axis=1)) + s.max(axis=1))

    def grad(x):
        s = 1 / (1 + np.exp(-x))
        p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
        return (p * s * (1 - s),)

    result = gradcheck(f, x, grad=grad)
    assert result.passed and not result.kinks_present and result.tolerance is Tier.HAPPY


# -- naive loops (CS231n's svm_loss_naive) -------------------------------------------


def svm_naive_setup():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    y = np.array([0, 1, 2, 1])
    w = 0.5 * rng.standard_normal((3, 3))
    # put the margin of sample 0, class 1 at 3e-8: just above the hinge
    s = x[0] @ w
    w[:, 1] += (3e-8 - (s[1] - s[0] + 1.0)) / (x[0] @ x[0]) * x[0]
    return x, y, w


def svm_naive(w, x, y):
    """CS231n's svm_loss_naive: loops over samples and classes, indexing scalars."""
    loss = 0.0
    for i in range(x.shape[0]):
        scores = x[i].dot(w)
        correct = scores[y[i]]
        for j in range(w.shape[1]):
            if j == y[i]:
                continue
            margin = scores[j] - correct + 1
            if margin > 0:
                loss += margin
    return loss / x.shape[0]


def svm_naive_grad(w, x, y):
    dw = np.zeros_like(w)
    for i in range(x.shape[0]):
        scores = x[i].dot(w)
        for j in range(w.shape[1]):
            if j != y[i] and scores[j] - scores[y[i]] + 1 > 0:
                dw[:, j] += x[i]
                dw[:, y[i]] -= x[i]
    return dw / x.shape[0], None, None


def test_naive_svm_gradient_is_correct_away_from_the_kink():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    y = np.array([0, 1, 2, 1])
    w = 0.5 * rng.standard_normal((3, 3))
    result = gradcheck(svm_naive, w, x, y, grad=svm_naive_grad, wrt=["args[0]"])
    assert result.passed


def test_naive_svm_loop_kinks_are_tracked():
    x, y, w = svm_naive_setup()
    result = gradcheck(
        svm_naive,
        w,
        x,
        y,
        grad=svm_naive_grad,
        wrt=["args[0]"],
        samples_per_block=None,
        raise_on_fail=False,
    )
    assert result.kinks_present
    assert result.tolerance is Tier.OK
    assert result.kinks_crossed > 0 or any(np.any(b.step < EPS * 0.99) for b in result.blocks)
    assert result.passed


def test_naive_svm_near_the_kink_fails_without_tracking():
    """The setup of the test above does cross the hinge: untracked, it fails."""
    x, y, w = svm_naive_setup()
    with pytest.raises(GradcheckError):
        gradcheck(
            svm_naive,
            w,
            x,
            y,
            grad=svm_naive_grad,
            wrt=["args[0]"],
            samples_per_block=None,
            kinks="off",
            tolerance=Tier.OK,
        )


@pytest.mark.parametrize("convention", ["x>0", "x>=0"])
@pytest.mark.parametrize("form", ["where", "mask"])
def test_either_subgradient_of_a_comparison_at_an_exact_zero_passes(form, convention):
    """x > 0 at x == 0 exactly is a tie, not the 'false' side: a backward taking either
    side passes, as for np.maximum."""
    x = np.array([0.7, -0.4, 0.0, 1.2, 0.0, -2.0])
    w = np.array([0.3, -1.1, 0.8, 0.5, -0.6, 0.9])

    def f(x):
        y = np.where(x > 0, x, 0.0) if form == "where" else x * (x > 0)
        return float(np.sum(y * w))

    def grad(x):
        return ((x > 0 if convention == "x>0" else x >= 0) * w,)

    result = gradcheck(f, x, grad=grad)
    assert result.passed and result.kinks_crossed >= 2


def test_a_one_sided_failure_gets_its_own_hint_not_the_kink_advice():
    """A safe log's backward g / max(x, eps) at x = 0, where f is flat: the crossings
    are rescued one-sidedly and those comparisons fail; the hint says so, instead of
    advising fewer datapoints or a smaller eps, which cannot help."""
    w = np.arange(1.0, 6.0)
    x = np.array([0.0, 1.0, 2.0, 1e-14, 0.1])
    result = gradcheck(
        lambda x: np.sum(np.log(np.maximum(x, 1e-12)) * w),
        x,
        grad=lambda x: (w / np.maximum(x, 1e-12),),
        raise_on_fail=False,
    )
    assert not result.passed
    block = result.blocks[0]
    assert block.one_sided is not None and block.one_sided.sum() == 2
    text = result.report()
    assert "3 failing comparison(s) were taken one-sidedly" in text  # 2 entries, direction
    assert "surrogate gradient" in text
    assert "smaller eps" not in text
