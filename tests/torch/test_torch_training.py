"""Training-aware checks on PyTorch: term isolation, burn-in on modules, active range."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from pytest_gradcheck import GradcheckError, Tier, gradcheck  # noqa: E402


class BuggyLinear(torch.autograd.Function):
    """x @ W.T + b with a hand-written backward whose W gradient is scaled by `w_scale`."""

    @staticmethod
    def forward(ctx, x, weight, bias, w_scale):
        ctx.save_for_backward(x, weight)
        ctx.w_scale = w_scale
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        return dout @ weight, ctx.w_scale * dout.T @ x, dout.sum(0), None


class BuggyL2(torch.autograd.Function):
    """strength * sum(W**2) with a backward scaled by `scale`."""

    @staticmethod
    def forward(ctx, weight, strength, scale):
        ctx.save_for_backward(weight)
        ctx.strength, ctx.scale = strength, scale
        return strength * (weight**2).sum()

    @staticmethod
    def backward(ctx, dout):
        (weight,) = ctx.saved_tensors
        return ctx.scale * dout * 2 * ctx.strength * weight, None, None


def make_loss(strength, data_scale=1.0, reg_scale=1.0):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(6, 4)
    y = torch.randint(0, 3, (6,))

    def loss():
        logits = BuggyLinear.apply(x, model.weight, model.bias, data_scale)
        return {
            "data": F.cross_entropy(logits, y),
            "reg": BuggyL2.apply(model.weight, strength, reg_scale),
        }

    return model, loss


def test_reg_bug_under_tiny_strength_is_caught_in_the_reg_term():
    model, loss = make_loss(strength=1e-9, reg_scale=2.0)
    result = gradcheck(loss, params=model, raise_on_fail=False)
    assert not result.passed
    total_w = next(b for b in result.blocks if b.name == "weight")
    assert total_w.tier <= Tier.OK  # invisible in the total
    reg_w = next(b for b in result.terms["reg"].blocks if b.name == "weight")
    assert reg_w.tier is Tier.WRONG and result.terms["data"].passed
    with pytest.raises(GradcheckError, match="term 'reg' · block 'weight'"):
        gradcheck(loss, params=model)


def test_data_bug_under_huge_strength_is_caught_in_the_data_term_and_warned():
    model, loss = make_loss(strength=1e5, data_scale=1.5)
    result = gradcheck(loss, params=model, raise_on_fail=False)
    assert not result.passed
    total_w = next(b for b in result.blocks if b.name == "weight")
    assert total_w.tier <= Tier.OK  # hidden by the regularization in the total
    data_w = next(b for b in result.terms["data"].blocks if b.name == "weight")
    assert data_w.tier is Tier.WRONG
    assert any("dominates" in w and "'reg'" in w for w in result.warnings)


def test_correct_terms_pass():
    model, loss = make_loss(strength=0.1)
    result = gradcheck(loss, params=model)
    assert result.passed and set(result.terms) == {"data", "reg"}


def test_burn_in_on_a_module_checks_the_trained_point_and_restores_it():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).float()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    result = gradcheck(lambda: F.cross_entropy(model(x), y), params=model, burn_in=10,
                       burn_in_lr=0.5)  # fmt: skip
    assert result.passed
    assert len(result.burn_in_losses) == 11
    assert result.burn_in_losses[-1] < result.burn_in_losses[0]
    for k, v in model.state_dict().items():
        assert v.dtype == dtypes[k]
        assert torch.equal(v, before[k])


def test_tiny_loss_warns_and_scale_auto_checks_cleanly():
    x = torch.randn(5, dtype=torch.float64)
    plain = gradcheck(lambda x: torch.tanh(x).pow(2).sum() / 1e12, x)
    assert any("tiny gradients" in w for w in plain.warnings)
    scaled = gradcheck(lambda x: torch.tanh(x).pow(2).sum() / 1e12, x, scale="auto")
    assert scaled.passed and scaled.tier is Tier.HAPPY and scaled.scale > 1e9
    assert not any("tiny gradients" in w for w in scaled.warnings)


def test_a_private_generator_is_reported_even_when_its_mask_looks_like_kinks():
    """`rand(...) < p` from a private generator changes at every evaluation: the tracker
    sees branches flip everywhere, so the check tests determinism instead of passing."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, dtype=torch.float64)

    def f(x):
        mask = (torch.rand(x.shape, generator=gen, dtype=x.dtype) < 0.5) / 0.5
        return torch.tanh(x * mask).sum()

    with pytest.raises(ValueError, match="not deterministic"):
        gradcheck(f, x)
