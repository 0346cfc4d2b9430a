"""A custom autograd.Function whose backward returns dW.T for a square W gets the
transposed-gradient hint, on the term whose gradient it is (see `_shapes`), and, where f
returns the terms' sum, the partly-transposed hint where every coordinate was compared."""

import re

import pytest

from pytest_gradcheck import GradcheckError, gradcheck
from pytest_gradcheck._text import hints

torch = pytest.importorskip("torch")


def _layer(transpose: bool):
    class Layer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W):
            ctx.save_for_backward(x, W)
            return torch.tanh(x @ W.T)

        @staticmethod
        def backward(ctx, dout):
            x, W = ctx.saved_tensors
            dZ = dout * (1 - torch.tanh(x @ W.T) ** 2)
            dW = dZ.T @ x
            return None, dW.T if transpose else dW

    return Layer


@pytest.mark.parametrize("transpose", [False, True])
def test_torch_transposed_backward_gets_its_hint(transpose):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, dtype=torch.float64, generator=g)
    W = (0.3 * torch.randn(6, 6, dtype=torch.float64, generator=g)).requires_grad_()
    layer = _layer(transpose)

    def f(W):
        return {"data": (layer.apply(x, W) ** 2).sum(), "reg": 0.05 * (W**2).sum()}

    result = gradcheck(f, W, raise_on_fail=False)
    assert result.passed is not transpose
    found = [h for h in hints(result) if "looks transposed" in h]
    if not transpose:
        assert found == []
        return
    # the total (data + reg) is no transpose of anything; the term 'data' is
    assert found and len(found) == 1, hints(result)
    assert found[0].startswith("block 'args[0]' of term 'data' looks transposed")
    with pytest.raises(GradcheckError, match=re.escape("hint: block 'args[0]' of term 'data'")):
        gradcheck(f, W)


def test_torch_transposed_backward_in_a_summed_loss_gets_its_hint():
    """f returns data + weight decay as one scalar: the total's gradient is no transpose
    of anything, but the analytic minus the numeric gradient is antisymmetric, which
    the check sees where it compared every coordinate of W (samples_per_block=None)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, dtype=torch.float64, generator=g)
    W = (0.3 * torch.randn(6, 6, dtype=torch.float64, generator=g)).requires_grad_()
    layer = _layer(True)

    def f(W):
        return (layer.apply(x, W) ** 2).sum() + 0.05 * (W**2).sum()

    sampled = gradcheck(f, W, raise_on_fail=False)
    assert not sampled.passed
    assert not [h for h in hints(sampled) if "transposed" in h], hints(sampled)
    whole = gradcheck(f, W, raise_on_fail=False, samples_per_block=None)
    found = [h for h in hints(whole) if "transposed" in h]
    assert len(found) == 1, hints(whole)
    assert found[0].startswith("block 'args[0]' looks transposed in part")
    with pytest.raises(
        GradcheckError, match=re.escape("hint: block 'args[0]' looks transposed in part")
    ):
        gradcheck(f, W, samples_per_block=None)
