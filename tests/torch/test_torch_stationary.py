"""A loss at its minimum of value 0 (a student equal to its teacher): the gradient is
zero up to round-off, which the quotient's floors from |f| and from the gradients (both
about 0 there) do not bound; a correct backward failed as *wrong* at rel 1, with advice
to scale the loss up. A backward that is not zero there still fails."""

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
def test_a_distillation_loss_at_its_minimum(kind, planted):
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
    assert result.passed is (not planted)
    if planted:
        assert result.tier is Tier.WRONG
    else:
        assert not any("scale the loss up" in w for w in result.warnings)
