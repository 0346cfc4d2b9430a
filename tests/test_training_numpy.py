"""Training-aware checks in NumPy: term isolation, burn-in, active range, step size."""

import warnings

import numpy as np
import pytest

from pytest_gradcheck import GradcheckError, GradcheckWarning, Tier, gradcheck
from pytest_gradcheck._notices import alarming

N, D, C = 6, 4, 3


def softmax_net(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y = rng.integers(0, C, N)
    params = {"W": rng.standard_normal((D, C)), "b": rng.standard_normal(C) * 0.1}
    return X, y, params


def softmax_terms(X, y, p, reg):
    s = X @ p["W"] + p["b"]
    s = s - s.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return {"data": -logp[np.arange(N), y].mean(), "reg": reg * np.sum(p["W"] ** 2)}


def softmax_terms_grad(X, y, p, reg, data_scale=1.0, reg_scale=1.0):
    s = X @ p["W"] + p["b"]
    probs = np.exp(s - s.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(N), y] -= 1
    ds = probs / N
    return {
        "data": {"W": data_scale * X.T @ ds, "b": ds.sum(axis=0)},
        "reg": {"W": reg_scale * 2 * reg * p["W"], "b": np.zeros(C)},
    }


def check_terms(reg, options=None, **bug):
    X, y, p = softmax_net(0)
    return gradcheck(
        lambda X, y: softmax_terms(X, y, p, reg),
        X,
        y,
        params=p,
        grad=lambda X, y: softmax_terms_grad(X, y, p, reg, **bug),
        raise_on_fail=False,
        **(options or {}),
    )


def test_correct_terms_pass_total_and_each_term():
    result = check_terms(reg=0.3)
    assert result.passed
    assert set(result.terms) == {"data", "reg"}
    assert all(t.passed and t.tier is Tier.HAPPY for t in result.terms.values())


def test_reg_bug_under_tiny_strength_is_caught_in_the_reg_term():
    result = check_terms(reg=1e-9, reg_scale=2.0)
    X, y, p = softmax_net(0)
    assert not result.passed
    # invisible in the total: the reg gradient is ~1e-9 of the data gradient
    assert result.blocks[0].tier <= Tier.OK
    reg_w = result.terms["reg"].blocks[0]
    assert reg_w.name == "W" and reg_w.tier is Tier.WRONG
    assert result.terms["data"].passed
    with pytest.raises(GradcheckError, match="term 'reg' · block 'W'"):
        gradcheck(
            lambda X, y: softmax_terms(X, y, p, 1e-9),
            X,
            y,
            params=p,
            grad=lambda X, y: softmax_terms_grad(X, y, p, 1e-9, reg_scale=2.0),
        )


def test_data_bug_under_huge_strength_is_caught_in_the_data_term_and_warned():
    result = check_terms(reg=1e6, data_scale=1.5)
    assert not result.passed
    assert result.blocks[0].name == "W" and result.blocks[0].tier <= Tier.OK  # hidden in total
    assert result.terms["data"].blocks[0].tier is Tier.WRONG
    assert result.terms["reg"].passed
    dominance = [w for w in result.warnings if "dominates" in w]
    assert dominance and "'reg'" in dominance[0] and "'data'" in dominance[0]


def test_dominance_under_correct_terms_is_a_notice_not_a_gradcheck_warning():
    """Each term is checked on its own, so a dominated term hides nothing: a correct
    check under -W error::pytest_gradcheck.GradcheckWarning must not fail on it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradcheckWarning)
        result = check_terms(reg=1e6)
    assert result.passed
    dominance = [w for w in result.warnings if "dominates" in w]
    assert dominance  # still said, in Result.warnings
    assert not alarming(result.warnings)


def test_dominance_ratio_is_configurable():
    quiet = check_terms(reg=1e6, options={"dominance": 1e12})
    assert not any("dominates" in w for w in quiet.warnings)


# --- burn-in ---------------------------------------------------------------------


def svm_problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 5))
    y = rng.integers(0, 3, 8)
    params = {"W": 1e-4 * rng.standard_normal((5, 3))}

    def loss(X, y):
        s = X @ params["W"]
        m = np.maximum(0, s - s[np.arange(8), y][:, None] + 1)
        m[np.arange(8), y] = 0
        return m.sum() / 8

    def grad(X, y, bug=True):
        s = X @ params["W"]
        m = s - s[np.arange(8), y][:, None] + 1
        # the planted bug lives in the branch of satisfied margins only
        d = np.where(m > 0, 1.0, 0.3 if bug else 0.0)
        d[np.arange(8), y] = 0
        d[np.arange(8), y] = -d.sum(1)
        return {"W": X.T @ d / 8}

    return X, y, params, loss, grad


def test_svm_bug_hidden_at_tiny_init_is_caught_after_burn_in():
    X, y, params, loss, grad = svm_problem()
    before = params["W"].copy()
    at_init = gradcheck(loss, X, y, params=params, grad=grad, raise_on_fail=False)
    assert at_init.passed  # all margins violated: the buggy branch never runs
    burned = gradcheck(
        loss, X, y, params=params, grad=grad, burn_in=30, burn_in_lr=0.5, raise_on_fail=False
    )
    assert not burned.passed and burned.tier is Tier.WRONG
    assert len(burned.burn_in_losses) == 31
    assert burned.burn_in_losses[-1] < burned.burn_in_losses[0]
    assert np.array_equal(params["W"], before)  # restored exactly
    correct = gradcheck(
        loss, X, y, params=params, grad=lambda X, y: grad(X, y, bug=False), burn_in=30,
        burn_in_lr=0.5,
    )  # fmt: skip
    assert correct.passed


def test_burn_in_on_positional_args_and_warning_when_loss_rises():
    x0 = np.array([1.0, -2.0, 0.5])
    x = x0.copy()
    r = gradcheck(lambda x: np.sum(x**2), x, grad=lambda x: (2 * x,), burn_in=5)
    assert r.burn_in_losses[-1] < r.burn_in_losses[0] and not r.warnings
    assert np.array_equal(x, x0)
    # gradient ascent disguised as a custom step: the loss goes up, and we say so
    r = gradcheck(
        lambda x: np.sum(x**2),
        x,
        grad=lambda x: (2 * x,),
        burn_in=3,
        burn_in_step=lambda grads: {name: 0.1 * g.reshape(-1) for name, g in grads.items()},
    )
    assert any("did not lower the loss" in w for w in r.warnings)
    assert np.array_equal(x, x0)


# --- active range and scale --------------------------------------------------------


def test_tiny_loss_warns_and_scale_auto_checks_cleanly():
    x = np.random.default_rng(1).standard_normal(5)

    def f(x):
        return np.sum(np.tanh(x) ** 2) / 1e12

    def g(x):
        return (2 * np.tanh(x) * (1 - np.tanh(x) ** 2) / 1e12,)

    plain = gradcheck(f, x, grad=g)
    assert any("tiny gradients" in w for w in plain.warnings)
    scaled = gradcheck(f, x, grad=g, scale="auto")
    assert not any("tiny gradients" in w for w in scaled.warnings)
    assert scaled.scale > 1e9 and scaled.passed and scaled.tier is Tier.HAPPY
    assert any("scale='auto'" in w for w in scaled.warnings)
    assert 0.1 < np.max(np.abs(scaled.blocks[0].analytic)) < 10


# --- step size -------------------------------------------------------------------------


def test_sweep_shows_a_v_shaped_error_curve():
    x = np.random.default_rng(2).standard_normal(4) + 2.0
    r = gradcheck(lambda x: np.sum(np.exp(x)), x, grad=lambda x: (np.exp(x),), sweep=True)
    assert r.sweep
    for _, _, row in r.sweep:
        steps = sorted(row, reverse=True)
        errors = [row[h] for h in steps]
        best = int(np.argmin(errors))
        assert 0 < best < len(steps) - 1  # truncation on the left, round-off on the right
        assert errors[0] > 100 * errors[best] and errors[-1] > 100 * errors[best]
    assert "step-size sweep" in r.report()


def test_eps_auto_scales_the_step_with_the_coordinate():
    x = np.array([1e-3, 1.0, 30.0])
    r = gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: (3 * x**2,), eps="auto")
    steps = r.blocks[0].step
    assert steps[0] == steps[1] < steps[2]
    assert steps[2] == pytest.approx(steps[1] * 30.0)
    assert r.passed and r.tier is Tier.HAPPY


def test_a_block_on_exact_ties_is_checked_at_a_point_moved_off_them():
    """|x| at x == 0: every step crosses the kink, so no comparison of the block counted
    and a wrong gradient passed unseen; the block is now checked off the tie."""
    x = np.array([0.0, 0.0, 0.0])  # |x| exactly at its kink: the tie matches neither side
    r = gradcheck(lambda x: np.abs(x).sum(), x, grad=lambda x: (np.sign(x),))
    assert r.passed and r.kinks_crossed == 0
    assert len(r.blocks[0].indices) == 3 and r.blocks[0].counted.all()
    assert np.abs(r.blocks[0].analytic).tolist() == [1.0, 1.0, 1.0]  # the moved point's
    assert any("'args[0]' sits on exact ties" in w for w in r.warnings)
    assert not any("was not checked" in w for w in r.warnings)
    assert x.tolist() == [0.0, 0.0, 0.0]
    assert not alarming(r.warnings)  # a notice: the block was checked

    wrong = gradcheck(
        lambda x: np.abs(x).sum(), x, grad=lambda x: (2.0 * np.sign(x),), raise_on_fail=False
    )
    assert not wrong.passed and wrong.tier is Tier.WRONG


def test_a_block_with_kinks_everywhere_near_it_is_reported_unchecked():
    """A staircase finer than any step: every difference crosses a stair, here and off
    the ties alike, so no comparison counts and the report says the block was not
    checked."""
    x = np.array([0.25, 0.5])
    r = gradcheck(
        lambda x: float(np.sum(x + 1e-12 * np.floor(x * 1e12))),
        x,
        grad=lambda x: (np.ones_like(x),),
    )
    assert r.passed
    assert any("'args[0]' was not checked" in w for w in r.warnings)


def test_off_the_ties_a_side_that_shows_a_gradient_is_kept():
    """ReLU inputs all exactly 0: on one side of the move some units are below their
    tie and pass no gradient. Where both sides agree, the report keeps one whose
    gradient is not all 0, and no exactly-zero warning is given."""
    x, w = np.zeros(3), np.array([1.0, 2.0, 3.0])
    r = gradcheck(
        lambda x: float(np.sum(np.maximum(x, 0.0) * w)),
        x,
        grad=lambda x: ((x > 0) * w,),
    )
    assert r.passed and np.any(r.blocks[0].analytic != 0.0)
    assert not any("analytic gradient of exactly 0" in m for m in r.warnings)
