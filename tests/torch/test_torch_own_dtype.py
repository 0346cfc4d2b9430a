"""A check of float32 tensors also looks at the gradient in float32 (`backends/_own_dtype.py`).

The check runs in float64, where a backward that overflows in float32 is finite: a
sigmoid whose derivative is written ``e / (1 + e)**2`` with ``e = exp(-z)`` passes as
happy at z = -95 while float32 training gets inf/inf = NaN. Where the check cast lower
precision, the backend runs f and its backward once more in the dtypes the user gave
and warns; that pass must leave every object of the user's as it was.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from gradcheck_own_dtype_util import gradcheck_warnings, own_dtype_warnings
from torch import nn

from pytest_gradcheck import Tier, gradcheck

#: z = -95 overflows exp(-z) in float32 (exp(95) = 1.8e41 > 3.4e38), not in float64
Z = [-95.0, -1.0, 0.5, 2.0]

#: the dtypes each backward was called with, per Function (cleared by each test)
SEEN: dict[str, list[torch.dtype]] = {"unstable": [], "stable": []}


class UnstableSigmoid(torch.autograd.Function):
    """sigmoid, its derivative from exp(-z): inf/inf in float32 at z = -95."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return 1 / (1 + torch.exp(-z))

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        SEEN["unstable"].append(z.dtype)
        e = torch.exp(-z)
        return g * e / (1 + e) ** 2


class StableSigmoid(torch.autograd.Function):
    """sigmoid, its derivative from the forward's output: s * (1 - s), finite everywhere."""

    @staticmethod
    def forward(ctx, z):
        s = torch.sigmoid(z)
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        SEEN["stable"].append(s.dtype)
        return g * s * (1 - s)


@pytest.fixture(autouse=True)
def _clear_seen():
    for seen in SEEN.values():
        seen.clear()


def test_a_float32_backward_that_overflows_passes_in_float64_and_is_warned():
    z = torch.tensor(Z, dtype=torch.float32)
    result, issued = gradcheck_warnings(lambda z: UnstableSigmoid.apply(z).sum(), z)
    assert result.passed and result.tier is Tier.HAPPY  # float64 is right: the tier stays
    [found] = own_dtype_warnings(result)
    assert found.startswith("block 'args[0]' (float32): in float32, the dtype f was given")
    assert "not finite in 1 of its 4 entries: nan at index 0," in found
    assert "rewrite it in a stable form" in found
    assert found in issued  # a GradcheckWarning, not a notice
    assert z.dtype == torch.float32 and z.grad is None


def test_a_module_names_each_block_and_the_entries_that_overflow():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([-95.0, 0.0]))
        model.weight.mul_(0.01)
    x = torch.randn(4, 3)
    result = gradcheck(lambda x: UnstableSigmoid.apply(model(x)).sum(), x, params=model)
    assert result.passed
    by_block = {w.split("'")[1]: w for w in own_dtype_warnings(result)}
    assert set(by_block) == {"args[0]", "weight", "bias"}
    assert "nan at index 0, while" in by_block["bias"]  # the unit at -95
    assert "nan at index (0, 0) (flat index 0)" in by_block["weight"]
    assert "nan at index (0, 0) (flat index 0)" in by_block["args[0]"]
    assert model.weight.dtype == torch.float32 and model.weight.grad is None


def test_a_stable_float32_backward_gets_no_warning():
    z = torch.tensor(Z, dtype=torch.float32)
    result, issued = gradcheck_warnings(lambda z: StableSigmoid.apply(z).sum(), z)
    assert result.passed and result.tier is Tier.HAPPY
    assert own_dtype_warnings(result) == [] and issued == []
    assert SEEN["stable"].count(torch.float32) == 1  # the pass ran, and found nothing


def test_a_float64_check_runs_no_pass_in_another_dtype():
    z64 = torch.tensor(Z, dtype=torch.float64)
    result = gradcheck(lambda z: UnstableSigmoid.apply(z).sum(), z64)
    assert result.passed and own_dtype_warnings(result) == []
    assert SEEN["unstable"] == [torch.float64]  # the analytic pass's backward, alone
    SEEN["unstable"].clear()
    gradcheck(lambda z: UnstableSigmoid.apply(z).sum(), z64.float())
    assert SEEN["unstable"] == [torch.float64, torch.float32]


def test_the_pass_draws_the_dropout_mask_of_the_checks_seed():
    # every entry at -95: the dropout mask decides which overflow in float32 (kept ones,
    # doubled to -190) and which do not (dropped ones, 0); the quadratic keeps the
    # float64 gradient in the active range
    z = torch.full((16,), -95.0)

    def f(z):
        return UnstableSigmoid.apply(nn.functional.dropout(z, 0.5)).sum() + 1e-3 * (z**2).sum()

    result = gradcheck(f, z, seed=3)
    torch.manual_seed(3)  # what every evaluation of the check starts from
    kept = torch.nonzero(nn.functional.dropout(torch.ones(16), 0.5)).flatten().tolist()
    assert 0 < len(kept) < 16
    [found] = own_dtype_warnings(result)
    assert f"not finite in {len(kept)} of its 16 entries: " in found
    first = ", ".join(f"nan at index {i}" for i in kept[:3])
    assert f"entries: {first}" in found


def test_a_loss_that_overflows_in_float32_is_warned():
    z = torch.tensor([100.0, 1.0], dtype=torch.float32)  # exp(100) = 2.7e43: inf in float32
    result, issued = gradcheck_warnings(lambda z: torch.exp(z).sum(), z)
    assert result.passed
    [found] = [w for w in result.warnings if w.startswith("the loss at the checked point")]
    assert found.startswith("the loss at the checked point is inf in float32, the dtype f was")
    assert found in issued


def test_an_f_that_cannot_run_in_its_own_dtypes_gets_a_notice_and_its_check():
    model = nn.Linear(3, 2).double()  # float32 data beside a float64 model: torch refuses
    x = torch.randn(4, 3)
    result, issued = gradcheck_warnings(
        lambda x: torch.tanh(model(x)).sum(), x, params=model, wrt=["weight", "bias"]
    )
    assert result.passed and result.tier is Tier.HAPPY
    [notice] = [w for w in result.warnings if "could not also be evaluated" in w]
    assert notice.startswith("checked in float64: f and its gradient could not also be")
    assert "in float32, the dtype f was given" in notice and "RuntimeError" in notice
    assert issued == []  # a notice, not a GradcheckWarning


# ------------------------------------------------------------------ nothing of the user's changes


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().numpy().tobytes()


def _state(model: nn.Module) -> dict:
    """Every field the pass could change, by identity, bits, dtype and flags."""
    return {
        "params": [
            (
                n,
                p,
                _bits(p),
                p.dtype,
                p.requires_grad,
                p.grad,
                None if p.grad is None else _bits(p.grad),
            )
            for n, p in model.named_parameters()
        ],
        "buffers": [(n, b, _bits(b), b.dtype) for n, b in model.named_buffers()],
        "training": [m.training for m in model.modules()],
        "rng": (
            _bits(torch.get_rng_state()),
            random.getstate(),
            np.random.get_state()[1].tobytes(),
        ),
    }


def _assert_unchanged(before: dict, model: nn.Module) -> None:
    after = _state(model)
    for (name, p, value, dtype, rg, grad, grad_bits), now in zip(
        before["params"], after["params"], strict=True
    ):
        assert now[1] is p and now[2] == value and now[3] == dtype, name
        assert now[4] == rg and now[5] is grad and now[6] == grad_bits, name
    for (name, b, value, dtype), now in zip(before["buffers"], after["buffers"], strict=True):
        assert now[1] is b and now[2] == value and now[3] == dtype, name
    assert after["training"] == before["training"]
    assert after["rng"] == before["rng"]


def _batchnorm_model() -> tuple[nn.Module, torch.Tensor]:
    """A float32 model in training mode whose BatchNorm writes its running statistics and
    whose last unit sits at -95 (the unstable backward overflows there in float32)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.3), nn.Linear(4, 2))
    model.train()
    with torch.no_grad():
        model[3].bias.copy_(torch.tensor([-95.0, 0.0]))
        model[3].weight.mul_(0.01)
    model[0].bias.grad = torch.ones(4)  # an existing .grad stays; None stays None
    return model, torch.randn(8, 3)


@pytest.mark.parametrize("given", ["module", "dict", "closure"])
@pytest.mark.parametrize("backward", ["unstable", "stable", "raising"])
def test_the_pass_leaves_a_float32_batchnorm_model_as_it_was(given, backward):
    model, x = _batchnorm_model()
    sigmoid = UnstableSigmoid if backward == "unstable" else StableSigmoid

    def loss(x):
        h = model(x)
        if backward == "raising" and h.dtype != torch.float64:
            raise RuntimeError("this f runs in float64 only")  # after BatchNorm wrote
        return sigmoid.apply(h).sum()

    params = {"module": model, "dict": dict(model.named_parameters()), "closure": None}[given]
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = _state(model)
    result = gradcheck(loss, x, params=params)
    assert result.passed
    found = own_dtype_warnings(result)
    assert bool(found) == (backward == "unstable")
    if backward == "raising":
        assert any("could not also be evaluated" in w for w in result.warnings)
    _assert_unchanged(before, model)
    assert model[1].num_batches_tracked.item() == 0


def test_the_pass_leaves_a_failing_checks_model_as_it_was():
    model, x = _batchnorm_model()

    class Wrong(UnstableSigmoid):
        @staticmethod
        def backward(ctx, g):
            return 1.1 * UnstableSigmoid.backward(ctx, g)

    before = _state(model)
    result = gradcheck(lambda x: Wrong.apply(model(x)).sum(), x, params=model, raise_on_fail=False)
    assert not result.passed and own_dtype_warnings(result)
    _assert_unchanged(before, model)
