"""Gradient checks of hand-written NumPy layers: some pass, some fail on purpose.

The failing ones are marked ``xfail(strict=True)``: the check must catch the planted
bug. The "gradient checks" section at the end of the run shows every check's tier.
"""

import numpy as np
import pytest

from pytest_gradcheck import GradcheckError, Tier

# --- layers, CS231n style: forward and a hand-written backward ---------------------


def two_layer_loss(X, y, p, reg, *, bug=None):
    """Affine - ReLU - affine - softmax, with L2 regularization as a separate term."""
    h = X @ p["W1"] + p["b1"]
    a = np.maximum(0, h)
    s = a @ p["W2"] + p["b2"]
    s = s - s.max(axis=1, keepdims=True)
    probs = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    n = X.shape[0]
    data = -np.log(probs[np.arange(n), y]).mean()
    l2 = 0.5 * reg * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))
    return {"data": data, "reg": l2}


def two_layer_grad(X, y, p, reg, *, bug=None):
    h = X @ p["W1"] + p["b1"]
    a = np.maximum(0, h)
    s = a @ p["W2"] + p["b2"]
    s = s - s.max(axis=1, keepdims=True)
    probs = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    n = X.shape[0]
    ds = probs.copy()
    ds[np.arange(n), y] -= 1
    ds /= n
    dW2 = a.T @ ds
    db2 = ds.sum(axis=0)
    da = ds @ p["W2"].T
    dh = da if bug == "no relu mask" else da * (h > 0)
    dW1 = X.T @ dh
    db1 = dh.sum(axis=0)
    reg_scale = 2.0 if bug == "reg doubled" else 1.0
    zeros = {k: np.zeros_like(v) for k, v in p.items()}
    return {
        "data": {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2},
        "reg": {**zeros, "W1": reg_scale * reg * p["W1"], "W2": reg * p["W2"]},
    }


def make_net(seed=0, n=4, d=5, hidden=6, classes=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, classes, n)
    p = {
        "W1": rng.standard_normal((d, hidden)) * 0.5,
        "b1": rng.standard_normal(hidden) * 0.1,
        "W2": rng.standard_normal((hidden, classes)) * 0.5,
        "b2": np.zeros(classes),
    }
    return X, y, p


# --- checks that pass ------------------------------------------------------------


@pytest.mark.gradcheck
def test_tanh_layer_is_happy(gradcheck):
    """A smooth function: the tolerance is HAPPY (< 1e-7) and it meets it."""
    x = np.random.default_rng(1).standard_normal((3, 4))
    w = np.random.default_rng(2).standard_normal((4, 2))
    result = gradcheck(
        lambda x, w: np.tanh(x @ w).sum(),
        x,
        w,
        grad=lambda x, w: ((1 - np.tanh(x @ w) ** 2) @ w.T, x.T @ (1 - np.tanh(x @ w) ** 2)),
    )
    assert result.tier is Tier.HAPPY


def test_two_layer_net_with_terms(gradcheck):
    """ReLU kinks are tracked; the data and regularization terms are checked on their own."""
    X, y, p = make_net()
    result = gradcheck(
        lambda X, y: two_layer_loss(X, y, p, reg=0.1),
        X,
        y,
        params=p,
        grad=lambda X, y: two_layer_grad(X, y, p, reg=0.1),
    )
    assert set(result.terms) == {"data", "reg"}


@pytest.mark.gradcheck(eps=1e-3)
def test_large_step_on_a_kinked_net_is_ok(gradcheck):
    """A large step leaves a truncation error near 1e-6: tier OK, fine with kinks."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))

    def f(x, w):
        return (np.maximum(0, x @ w) + np.tanh(x @ w)).sum()

    def g(x, w):
        h = x @ w
        dh = (h > 0) + (1 - np.tanh(h) ** 2)
        return dh @ w.T, x.T @ dh

    result = gradcheck(f, x, w, grad=g)
    assert result.kinks_present and result.tolerance is Tier.OK


def softmax_loss(s, y):
    """Cross-entropy of the stable softmax: the row max is subtracted first."""
    z = s - s.max(axis=1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean()


def softmax_grad(s, y, factor=1.0):
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return factor * p / len(y), None


def test_stable_softmax_is_held_to_happy(gradcheck):
    """The stabilizing max is a decision, but the loss does not read its value: one
    more evaluation with it moved shows that, so the tolerance stays HAPPY."""
    s, y = np.random.default_rng(7).standard_normal((5, 4)), np.array([0, 3, 1, 2, 3])
    result = gradcheck(softmax_loss, s, y, grad=softmax_grad)
    assert not result.kinks_present and result.tolerance is Tier.HAPPY


def test_dropout_is_checked_exactly(gradcheck):
    """Dropout draws its mask from np.random: every evaluation is reset to the same seed."""
    x = np.random.default_rng(4).standard_normal((5, 6))

    def f(x):
        mask = (np.random.rand(*x.shape) < 0.5) / 0.5
        return np.sum((x * mask) ** 2)

    def g(x):
        mask = (np.random.rand(*x.shape) < 0.5) / 0.5
        return (2 * x * mask * mask,)

    gradcheck(f, x, grad=g)


# --- checks that fail on purpose --------------------------------------------------


@pytest.mark.xfail(raises=GradcheckError, strict=True, reason="planted: gradient scaled by 1.01")
def test_planted_scaled_gradient(gradcheck):
    x = np.random.default_rng(5).standard_normal((3, 3))
    gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: (1.01 * 3 * x**2,))


@pytest.mark.xfail(raises=GradcheckError, strict=True, reason="planted: gradient 1e-5 off")
def test_planted_tiny_error_behind_a_stable_softmax(gradcheck):
    s, y = np.random.default_rng(7).standard_normal((5, 4)), np.array([0, 3, 1, 2, 3])
    gradcheck(softmax_loss, s, y, grad=lambda s, y: softmax_grad(s, y, 1.0 + 1e-5))


@pytest.mark.xfail(raises=GradcheckError, strict=True, reason="planted: ReLU mask forgotten")
def test_planted_missing_relu_mask(gradcheck):
    X, y, p = make_net(seed=6)
    gradcheck(
        lambda X, y: two_layer_loss(X, y, p, reg=0.1),
        X,
        y,
        params=p,
        grad=lambda X, y: two_layer_grad(X, y, p, reg=0.1, bug="no relu mask"),
    )


@pytest.mark.xfail(raises=GradcheckError, strict=True, reason="planted: reg gradient doubled")
def test_planted_reg_bug_under_tiny_strength(gradcheck):
    """Invisible in the total (reg is tiny), caught in the 'reg' term on its own."""
    X, y, p = make_net(seed=7)
    gradcheck(
        lambda X, y: two_layer_loss(X, y, p, reg=1e-6),
        X,
        y,
        params=p,
        grad=lambda X, y: two_layer_grad(X, y, p, reg=1e-6, bug="reg doubled"),
    )
