"""A loss at its minimum of value 0 (a student equal to its teacher): the gradient is
zero up to round-off, which the quotient's floors from |f| and from the gradients (both
about 0 there) do not bound, and which curvature cannot bound either (a stiff penalty at
its constraint is just as stationary along a comparison whose gradient is 1). The check
fails there, correct gradient or not, and says why and what to do, where it advised
scaling the loss up; a stiff penalty's wrong data gradient fails too."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from pytest_gradcheck import Tier, gradcheck  # noqa: E402


def _pair():
    torch.manual_seed(0)
    student = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5)
    ).double()
    teacher = copy.deepcopy(student).requires_grad_(False)
    return student, teacher, torch.randn(6, 4, dtype=torch.float64)


class _Off(torch.autograd.Function):
    """Identity whose backward adds 1e-6: not zero at the minimum."""

    @staticmethod
    def forward(ctx, v):
        return v.clone()

    @staticmethod
    def backward(ctx, g):
        return g + 1e-6


@pytest.mark.parametrize("kind", ["kl", "mse"])
@pytest.mark.parametrize("planted", [False, True], ids=["right", "off by 1e-6"])
def test_a_distillation_loss_at_its_minimum_is_said_to_be_one(kind, planted):
    student, teacher, x = _pair()

    def loss(x):
        s = student(x)
        if planted:
            s = _Off.apply(s)
        if kind == "mse":
            return F.mse_loss(s, teacher(x))
        return F.kl_div(
            F.log_softmax(s / 2.0, 1),
            F.log_softmax(teacher(x) / 2.0, 1),
            reduction="batchmean",
            log_target=True,
        )

    assert loss(x).item() == pytest.approx(0.0, abs=1e-15)
    result = gradcheck(loss, x, params=student, wrt=["0.weight", "2.bias"], raise_on_fail=False)
    assert not result.passed
    said = [w for w in result.warnings if "fails only along comparisons where f is stationary" in w]
    assert said or planted
    assert not any("scale the loss up" in w for w in result.warnings)


def test_a_stiff_penalty_at_its_constraint_does_not_hide_a_wrong_data_gradient():
    """lam * (sum(x) - 1)**2 at the constraint is stationary along every coordinate (its
    curvature dwarfs the data term's slope), yet the data gradient is 1: doubled, it
    fails (an allowance from the curvature passed it as happy)."""
    import numpy as np

    a = np.linspace(-1.0, 1.0, 8)
    x = np.full(8, 1.0 / 8)

    def f(x):
        return float(1e8 * (np.sum(x) - 1.0) ** 2 + a @ x)

    def grad(x, factor):
        return (2e8 * (np.sum(x) - 1.0) * np.ones_like(x) + factor * a,)

    assert gradcheck(f, x, grad=lambda x: grad(x, 1.0), tolerance="ok").passed
    wrong = gradcheck(f, x, grad=lambda x: grad(x, 2.0), raise_on_fail=False)
    assert not wrong.passed and wrong.tier is Tier.WRONG
