"""Hand-written torch backwards that several torch test files check (one copy each).

Importable from every test directory (tests/ is on sys.path, see
`gradcheck_own_dtype_util`); imported only by test files that have imported torch.
"""

from __future__ import annotations

import torch


class WrongTanh(torch.autograd.Function):
    """tanh with a backward 10% too large: a planted wrong gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 1.1 * (1 - torch.tanh(x) ** 2)


class Cube(torch.autograd.Function):
    """x**3 with a hand-written backward (right); subclasses plant wrong backwards."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3.0 * x**2
