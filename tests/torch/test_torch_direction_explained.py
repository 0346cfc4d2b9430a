"""A torch block whose direction is amplified by a small v·g: the tier is the entry's.

The audit's case (one entry of a 100 x 100 block 1% off): the sampled coordinates miss
the entry, the block's direction is 1.2% off because v·g happens to be small, and
bisection finds the entry, 0.99% off on its own. The report's tier and worst error are
the entry's (uncomfortable), the direction keeps its own numbers, marked explained.
"""

from __future__ import annotations

import pytest
import torch

from pytest_gradcheck import GradcheckError, Tier, gradcheck

SPOT = (77, 3)


def _sin_times(wrong_at=None, factor=1.01):
    class SinTimes(torch.autograd.Function):
        """sum(sin(z) * z), its backward `factor` off at `wrong_at` (all: None)."""

        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return (torch.sin(z) * z).sum()

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            out = g * (torch.cos(z) * z + torch.sin(z))
            if wrong_at is None:
                return out * factor
            out = out.clone()
            out[wrong_at] *= factor
            return out

    return SinTimes.apply


def _z():
    gen = torch.Generator().manual_seed(0)
    for shape in [(16, 16), (16, 16), (16, 16), (16, 16), (16,)]:
        torch.randn(*shape, dtype=torch.float64, generator=gen)  # (the audit's draws)
    return torch.randn(100, 100, dtype=torch.float64, generator=gen, requires_grad=True)


def test_one_entry_off_reads_uncomfortable_not_the_amplified_direction():
    z = _z()
    result = gradcheck(_sin_times(SPOT), z, raise_on_fail=False)
    (block,) = result.blocks
    d = block.direction
    assert not result.passed and block.localized == (SPOT,)
    assert d is not None and d.tier is Tier.WRONG and d.rel_error > 1e-2  # its own numbers
    assert d.explained and d.explained_by == (SPOT,)
    assert block.tier is result.tier is Tier.UNCOMFORTABLE
    j = block.indices.index(SPOT)
    assert block.rel_error[j] == pytest.approx(0.01 / 1.01, rel=1e-4)
    assert result.max_rel_error == block.max_rel_error == block.rel_error[j]
    with pytest.raises(GradcheckError) as info:
        gradcheck(_sin_times(SPOT), z)
    message = str(info.value)
    assert message.startswith("gradcheck FAILED: tier uncomfortable (max rel error 9.90e-03")
    assert "direction v is explained by (77, 3)" in message
    assert z.grad is None


def test_the_whole_gradient_off_is_not_explained():
    z = _z()
    result = gradcheck(_sin_times(None, 1.02), z, raise_on_fail=False)
    d = result.blocks[0].direction
    assert not result.passed and result.tier is Tier.WRONG
    assert d is not None and not d.explained and d.residual_rel_error is not None
    assert result.max_rel_error >= d.rel_error > 1e-2
