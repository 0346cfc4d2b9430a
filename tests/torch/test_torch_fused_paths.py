"""Modules with a fused inference path (MultiheadAttention, the Transformer layers).

In eval mode under no_grad, torch swaps their ops for fused kernels, and a
TransformerEncoder given a padding mask computes on nested tensors that zero the padded
positions. The check evaluates f under no_grad and takes its gradient with grad
enabled: unless the fused path is off for the check, its differences measure another
computation (every comparison then "crossed a kink", or the loss differs between the
two and f is called non-deterministic).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_gradcheck import Tier, gradcheck  # noqa: E402

E, L, B = 8, 5, 2


class Twice(torch.autograd.Function):
    """A wrong backward: twice the gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def _layer():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(E, 2, dim_feedforward=16, batch_first=True)
    return layer.double().eval()


def test_an_eval_mode_encoder_layer_is_checked_not_excluded():
    layer, x = _layer(), torch.randn(B, L, E, dtype=torch.float64)
    result = gradcheck(lambda x: (layer(x) ** 2).sum(), x, params=layer)
    assert result.passed
    assert all(b.direction is None or not b.direction.kink_crossed for b in result.blocks)
    assert not any("was not checked" in w for w in result.warnings)
    assert torch.backends.mha.get_fastpath_enabled()


def test_a_wrong_head_after_an_eval_mode_encoder_layer_is_caught():
    layer, x = _layer(), torch.randn(B, L, E, dtype=torch.float64)
    head = torch.nn.Linear(E, 1).double()
    model = torch.nn.ModuleDict({"enc": layer, "head": head})
    result = gradcheck(
        lambda x: head(Twice.apply(layer(x))).pow(2).sum(), x, params=model, raise_on_fail=False
    )
    assert not result.passed and result.tier is Tier.WRONG
    assert result.blocks[0].rel_error.max() == pytest.approx(0.5, rel=1e-6)


def test_an_encoder_with_a_padding_mask_is_not_called_non_deterministic():
    torch.manual_seed(0)
    stack = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(E, 2, dim_feedforward=16, batch_first=True),
        2,
        enable_nested_tensor=True,
    ).double()
    stack.eval()
    x = torch.randn(B, L, E, dtype=torch.float64)
    mask = torch.tensor([[False] * L, [False, False, False, True, True]])
    result = gradcheck(
        lambda x: (stack(x, src_key_padding_mask=mask) ** 2).sum(),
        x,
        params=stack,
        wrt=["args[0]", "layers.0.linear1.weight", "layers.1.linear2.bias"],
    )
    assert result.passed


def test_the_user_s_fast_path_setting_is_put_back():
    layer, x = _layer(), torch.randn(B, L, E, dtype=torch.float64)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        gradcheck(lambda x: (layer(x) ** 2).sum(), x, wrt=["args[0]"])
        assert not torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    gradcheck(lambda x: (layer(x) ** 2).sum(), x, wrt=["args[0]"])
    assert torch.backends.mha.get_fastpath_enabled()
