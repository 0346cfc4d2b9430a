"""The shift test over random shapes and scores (Hypothesis, NumPy and PyTorch).

A hand-written stable softmax cross-entropy is held to HAPPY at every shape and
scale drawn, and a gradient 1e-5 off fails at every one: the shift test never
mistakes the stabilizing max for a kink, and never lets a tiny error through.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_gradcheck import GradcheckError, Tier, gradcheck
from pytest_gradcheck import strategies as gst

QUICK = settings(max_examples=25, deadline=None, database=None, derandomize=True)


@st.composite
def problems(draw):
    n, c = draw(st.integers(1, 12)), draw(st.integers(2, 8))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 50.0]))
    scores = draw(gst.arrays("numpy", (n, c), min_value=-1, max_value=1)) * scale
    labels = np.asarray(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    return scores, labels


def nll(scores, y):
    z = scores - scores.max(axis=1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean()


def nll_grad(scores, y, factor=1.0):
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p / len(y) * factor, None


@QUICK
@given(problems())
def test_numpy_stable_softmax_is_happy_and_a_tiny_error_fails(problem):
    scores, y = problem
    result = gradcheck(nll, scores, y, grad=nll_grad)
    assert result.passed and result.tolerance is Tier.HAPPY
    with pytest.raises(GradcheckError):
        gradcheck(nll, scores, y, grad=lambda s, y: nll_grad(s, y, 1.0 + 1e-5))


@QUICK
@given(problems())
def test_torch_stable_softmax_is_happy_and_a_tiny_error_fails(problem):
    torch = pytest.importorskip("torch")
    scores, y = problem
    labels = torch.as_tensor(y)

    class Nll(torch.autograd.Function):
        @staticmethod
        def forward(ctx, s, factor):
            z = s - s.amax(1, keepdim=True)
            ctx.save_for_backward(s)
            ctx.factor = factor
            return -(z.gather(1, labels[:, None])[:, 0] - z.exp().sum(1).log()).mean()

        @staticmethod
        def backward(ctx, g):
            (s,) = ctx.saved_tensors
            d = torch.as_tensor(nll_grad(s.detach().numpy(), y, ctx.factor)[0])
            return g * d, None

    s = torch.as_tensor(scores)
    result = gradcheck(lambda s: Nll.apply(s, 1.0), s)
    assert result.passed and result.tolerance is Tier.HAPPY
    with pytest.raises(GradcheckError):
        gradcheck(lambda s: Nll.apply(s, 1.0 + 1e-5), s)


@st.composite
def logits(draw):
    n = draw(st.integers(1, 40))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 30.0]))
    x = draw(gst.arrays("numpy", (n,), min_value=-1, max_value=1)) * scale
    z = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)))  # data: not checked
    return x, z


def logistic(x, z):
    return np.mean(np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x))))


def logistic_grad(x, z, factor=1.0):
    return factor * (1 / (1 + np.exp(-x)) - z) / len(x), None


@QUICK
@given(logits())
def test_numpy_stable_logistic_loss_is_happy_or_tied_and_a_tiny_error_fails(problem):
    # held to happy unless an entry sits exactly at 0 (drawn as a bound's product):
    # a tie keeps the decisions kinks; either way a gradient 1e-5 off fails at happy
    x, z = problem
    result = gradcheck(logistic, x, z, grad=logistic_grad)
    tied = bool(np.any(x == 0))
    assert result.passed and result.kinks_present == tied
    assert result.tolerance is (Tier.OK if tied else Tier.HAPPY)
    if not tied:
        with pytest.raises(GradcheckError):
            gradcheck(logistic, x, z, grad=lambda x, z: logistic_grad(x, z, 1.0 + 1e-5))


@st.composite
def relu_layers(draw):
    """A ReLU layer's input with some entries exactly 0 (ties), and output weights."""
    n = draw(st.integers(2, 40))
    x = draw(gst.arrays("numpy", (n,), min_value=-2, max_value=2, at_kinks=True))
    w = draw(gst.arrays("numpy", (n,), min_value=-1, max_value=1))
    return x, w


@QUICK
@given(relu_layers(), st.sampled_from(["x>0", "x>=0"]))
def test_numpy_relu_with_exact_zeros_passes_for_either_convention(layer, convention):
    x, w = layer

    def grad(x):
        return ((x > 0 if convention == "x>0" else x >= 0) * w,)

    result = gradcheck(lambda x: float(np.sum(w * np.where(x > 0, x, 0.0))), x, grad=grad)
    assert result.passed


@QUICK
@given(relu_layers(), st.integers(0, 39))
def test_numpy_relu_with_exact_zeros_still_fails_a_wrong_entry_off_the_ties(layer, at):
    x, w = layer
    at %= x.size
    x[at] = 0.5 + abs(x[at])  # off the ties, on the ReLU's active side
    w[at] = 1.0

    def grad(x):
        g = (x > 0) * w
        g[at] *= 1.01
        return (g,)

    with pytest.raises(GradcheckError):
        gradcheck(lambda x: float(np.sum(w * np.where(x > 0, x, 0.0))), x, grad=grad)
