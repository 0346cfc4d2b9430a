"""A custom autograd.Function whose backward returns dW.T for a square W gets the
transposed-gradient hint, on the term whose gradient it is (see `_shapes`)."""

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
