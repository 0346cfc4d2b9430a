"""An entry exactly at a kink (x == 0 under a ReLU, a clamp at its bound, tied values
under a median) is a decision of its own: f is not differentiable there, both
one-sided derivatives are valid, and the backward's convention must not fail the
check. Hand-written backwards taking the other side, and torch's own, pass; a wrong
gradient beside the tie still fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pytest_gradcheck import GradcheckError, Tier, gradcheck

X = torch.tensor([0.7, -0.4, 0.0, 1.2, 0.0, -2.0], dtype=torch.float64)
W = torch.tensor([0.3, -1.1, 0.8, 0.5, -0.6, 0.9], dtype=torch.float64)


def _custom(forward, derivative):
    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * derivative(x)

    return Op.apply


FORWARDS = {
    "relu": torch.relu,
    "clamp": lambda x: x.clamp(min=0),
    "where": lambda x: torch.where(x > 0, x, 0.0),
    "mask": lambda x: x * (x > 0),
    "threshold": lambda x: F.threshold(x, 0.0, 0.0),
}
CONVENTIONS = {"x>0": lambda x: (x > 0).to(x.dtype), "x>=0": lambda x: (x >= 0).to(x.dtype)}


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("forward", FORWARDS)
def test_either_subgradient_at_an_exact_kink_passes(forward, convention):
    op = _custom(FORWARDS[forward], CONVENTIONS[convention])
    result = gradcheck(lambda x: (op(x) * W).sum(), X)
    assert result.passed and result.kinks_present
    block = result.blocks[0]
    for i in (2, 4):  # the exact zeros: at a kink, not judged one-sidedly
        assert block.kink_crossed[block.indices.index((i,))]


@pytest.mark.parametrize(
    "op",
    [F.hardtanh, F.relu6, F.hardswish, F.hardsigmoid],
    ids=["hardtanh", "relu6", "hardswish", "hardsigmoid"],
)
def test_torch_s_own_gradient_at_exact_bounds_passes(op):
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0, 6.0, 0.4, -2.2], dtype=torch.float64)
    assert gradcheck(lambda x: (op(x) * torch.linspace(0.5, 1.2, 8)).sum(), x).passed


def test_a_median_of_tied_values_passes():
    x = torch.tensor([0.0] * 6 + [0.5, -1.2, 0.3, 2.0, -0.7, 1.1], dtype=torch.float64)
    result = gradcheck(lambda x: 3.0 * torch.median(x), x)
    assert result.passed and result.kinks_crossed >= 6


def test_a_wrong_gradient_beside_an_exact_kink_still_fails():
    op = _custom(torch.relu, lambda x: (x > 0).to(x.dtype) * torch.where(x > 1.0, 1.01, 1.0))
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x: (op(x) * W).sum(), X)
    block = info.value.result.blocks[0]
    assert block.tier is Tier.UNCOMFORTABLE
    judged = [
        (e, i)
        for e, i, k in zip(block.rel_error, block.indices, block.kink_crossed, strict=True)
        if not k
    ]
    assert max(judged)[1] == (3,)  # the only entry above 1


IMAGE = torch.tensor(
    [[[[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0], [3.0, 0.0, 5.0, 5.0], [0.0, 3.0, 5.0, 4.0]]]],
    dtype=torch.float64,
)  # windows tied 4, 3 and 2 ways, and one with a single maximum


def _pool(route):
    """max_pool2d(x, 2) with a hand-written backward sending each window's gradient to
    its first or last maximum, or (a bug) to the window's last entry."""

    class Pool(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            out, idx = F.max_pool2d(x, 2, return_indices=True)
            ctx.save_for_backward(x, idx)
            return out

        @staticmethod
        def backward(ctx, g):
            x, idx = ctx.saved_tensors
            if route == "first":
                return F.max_unpool2d(g, idx, 2, output_size=x.shape[-2:])
            if route == "corner":
                return F.interpolate(g, scale_factor=2) * torch.tensor(
                    [[0.0, 0.0], [0.0, 1.0]]
                ).repeat(2, 2)
            flipped = x.flip(-1, -2)
            _, last = F.max_pool2d(flipped, 2, return_indices=True)
            out = F.max_unpool2d(g.flip(-1, -2), last, 2, output_size=x.shape[-2:])
            return out.flip(-1, -2)

    return Pool.apply


@pytest.mark.filterwarnings("ignore:max_unpooling2d")
@pytest.mark.parametrize("route", ["first", "last"])
@pytest.mark.parametrize("batch", [True, False])
def test_a_max_pool_backward_may_pick_any_tied_maximum(route, batch):
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    result = gradcheck(lambda x: (_pool(route)(x) * w).sum(), IMAGE, batch=batch)
    assert result.passed and result.kinks_crossed > 0


@pytest.mark.filterwarnings("ignore:max_unpooling2d")
def test_a_max_pool_backward_routing_off_the_maximum_still_fails():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: (_pool("corner")(x) * w).sum(), IMAGE, samples_per_block=None)


class _Linear(torch.autograd.Function):
    """x @ W.T + b, with the bias gradient summed over the batch or (a planted bug)
    averaged."""

    @staticmethod
    def forward(ctx, x, w, b, mean):
        ctx.save_for_backward(x, w)
        ctx.mean = mean
        return x @ w.T + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        db = g.mean(0) if ctx.mean else g.sum(0)
        return g @ w, g.T @ x, db, None


@pytest.mark.parametrize("mean", [False, True], ids=["right", "bias mean"])
def test_a_zero_bias_on_zero_rows_is_checked_off_its_ties(mean):
    """Every bias entry moves the ties of the zero rows (z = b = 0 under a ReLU): no
    comparison of the bias counted, and its planted bug passed unseen."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64)
    x[::2] = 0.0  # padding rows
    w = torch.randn(5, 4, dtype=torch.float64)
    b = torch.zeros(5, dtype=torch.float64)
    v = torch.randn(5, dtype=torch.float64)

    def f(w, b):
        return (torch.relu(_Linear.apply(x, w, b, mean)) @ v).sum()

    result = gradcheck(f, w, b, raise_on_fail=False)
    assert any("'args[1]' sits on exact ties" in m for m in result.warnings)
    assert result.blocks[1].counted.all()
    assert result.passed is (not mean)
    if mean:
        assert result.blocks[1].tier is Tier.WRONG and result.blocks[0].passed
    assert b.abs().sum().item() == 0.0


class _ReluForgettingLastColumn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, buggy):
        ctx.save_for_backward(x)
        ctx.buggy = buggy
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        dx = g * (x > 0)
        if ctx.buggy:
            dx[:, -1] = 0.0  # a border column gets no gradient
        return dx, None


@pytest.mark.parametrize("buggy", [False, True], ids=["right", "last column dropped"])
def test_ties_scattered_over_a_block_leave_no_coordinate_unchecked(buggy):
    """An image of small integers under a ReLU: 16 exact zeros in 144 entries, so the
    block's direction crosses a tie in every part of it, and only the sampled
    coordinates counted: a backward dropping the last column passed as happy."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.integers(-3, 4, size=(12, 12)), dtype=torch.float64)
    w = torch.tensor(rng.standard_normal((12, 12)))
    before = x.clone()

    def f(x):
        return (_ReluForgettingLastColumn.apply(x, buggy) * w).sum()

    result = gradcheck(f, x, raise_on_fail=False)
    assert any("'args[0]' sits on exact ties" in m for m in result.warnings)
    block = result.blocks[0]
    assert block.direction is not None and block.direction.counted
    assert result.passed is (not buggy)
    if buggy:
        assert block.tier is Tier.WRONG
        assert block.localized and block.localized[0][1] == 11  # found in the last column
    assert torch.equal(x, before)
