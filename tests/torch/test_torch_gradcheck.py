"""`gradcheck` on PyTorch functions, end to end: planted bugs fail and name their block,
correct modules pass, agreement with torch.autograd.gradcheck, and kinks where
torch.autograd.gradcheck is fooled. Real torch, no mocks; small shapes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from gradcheck_torch_functions import Cube  # noqa: E402

from pytest_gradcheck import GradcheckError, Tier, gradcheck  # noqa: E402
from pytest_gradcheck._notices import LONE_NOTICE, alarming  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def failing_blocks(result):
    return {b.name for b in result.blocks if not b.passed}


def assert_fails_naming(check, block):
    """The check raises GradcheckError, names `block`, and only `block` fails."""
    with pytest.raises(GradcheckError) as info:
        check(raise_on_fail=True)
    assert f"'{block}'" in str(info.value)
    result = check(raise_on_fail=False)
    assert not result.passed and result.tier == Tier.WRONG
    assert failing_blocks(result) == {block}


def test_a_custom_module_subclass_is_checked_with_torch():
    """A user's own nn.Module subclass (defined outside torch) selects the torch backend."""

    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.randn(3))

        def forward(self):
            return (self.scale * torch.arange(3.0)).sin().sum()

    model = Affine()
    result = gradcheck(model, params=model)
    assert result.passed and [b.name for b in result.blocks] == ["scale"]


# ------------------------------------------------------------------- planted bugs


class ScaledTanh(torch.autograd.Function):
    """Bug: the gradient is scaled by 2."""

    @staticmethod
    def forward(ctx, x):
        y = x.tanh()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return 2 * g * (1 - y * y)


class TransposedLinear(torch.autograd.Function):
    """Bug: the weight gradient is transposed (invisible to shape checks: W is square)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x @ w.T + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, (g.T @ x).T, g.sum(0)


class ForgetfulLinear(torch.autograd.Function):
    """Bug: the bias gradient is forgotten (None)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x @ w.T + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, g.T @ x, None


class SumReducedMSE(torch.autograd.Function):
    """Bug: the forward averages, the backward forgets to divide by N."""

    @staticmethod
    def forward(ctx, x, target):
        ctx.save_for_backward(x, target)
        return ((x - target) ** 2).mean()

    @staticmethod
    def backward(ctx, g):
        x, target = ctx.saved_tensors
        return g * 2 * (x - target), None


class FreshMaskDropout(torch.autograd.Function):
    """Bug: the backward draws a new dropout mask instead of reusing the forward's."""

    @staticmethod
    def forward(ctx, x, p):
        ctx.p = p
        return x * (torch.rand_like(x) > p) / (1 - p)

    @staticmethod
    def backward(ctx, g):
        return g * (torch.rand_like(g) > ctx.p) / (1 - ctx.p), None


class Linear(nn.Module):
    def __init__(self, fn, n_in, n_out):
        super().__init__()
        self.fn = fn
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return self.fn.apply(x, self.weight, self.bias)


def test_scaled_gradient_fails_naming_the_input():
    x = torch.randn(3, 4, dtype=torch.float64)
    assert_fails_naming(
        lambda **kw: gradcheck(lambda x: ScaledTanh.apply(x).pow(2).sum(), x, **kw), "args[0]"
    )


def test_transposed_weight_gradient_fails_naming_the_weight():
    torch.manual_seed(0)
    layer = Linear(TransposedLinear, 4, 4)
    x = torch.randn(5, 4)
    assert_fails_naming(
        lambda **kw: gradcheck(lambda x: layer(x).tanh().sum(), x, params=layer, **kw), "weight"
    )
    assert layer.weight.dtype == torch.float32


def test_forgotten_bias_gradient_fails_naming_the_bias():
    torch.manual_seed(0)
    layer = Linear(ForgetfulLinear, 3, 2)
    x = torch.randn(4, 3)
    assert_fails_naming(
        lambda **kw: gradcheck(lambda: layer(x).pow(2).sum(), params=layer, **kw), "bias"
    )


def test_wrong_reduction_fails_naming_the_input():
    x, target = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    assert_fails_naming(
        lambda **kw: gradcheck(lambda x: SumReducedMSE.apply(x, target), x, **kw), "args[0]"
    )


def test_dropout_backward_with_a_fresh_mask_fails_naming_the_input():
    x = torch.randn(4, 5, dtype=torch.float64)
    assert_fails_naming(
        lambda **kw: gradcheck(lambda x: FreshMaskDropout.apply(x, 0.5).pow(2).sum(), x, **kw),
        "args[0]",
    )


class EpslessLayerNorm(torch.autograd.Function):
    """LayerNorm whose backward leaves out the eps its forward used: every entry of the
    gradient is off by about eps / (2 var), 5e-6 relative for unit variance."""

    @staticmethod
    def forward(ctx, x):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        ctx.save_for_backward(x - mu, var)
        return (x - mu) / torch.sqrt(var + 1e-5)

    @staticmethod
    def backward(ctx, g):
        xc, var = ctx.saved_tensors
        rstd = 1 / torch.sqrt(var)  # the bug: no eps
        xh = xc * rstd
        return rstd * (g - g.mean(-1, keepdim=True) - xh * (g * xh).mean(-1, keepdim=True))


def test_a_layernorm_backward_without_eps_in_a_relu_net_never_passes_silently():
    """An audit's bug: in a ReLU net (tolerance ok) it failed at half the seeds and
    passed silently at the others; where it passes now, a warning says it."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 32, dtype=torch.float64), torch.randint(0, 4, (16,))
    params = {
        "W1": torch.randn(32, 32, dtype=torch.float64) / 6,
        "b1": torch.randn(32, dtype=torch.float64) / 10,
        "W2": torch.randn(32, 4, dtype=torch.float64) / 6,
    }

    def f():
        h = torch.relu(EpslessLayerNorm.apply(x @ params["W1"] + params["b1"]))
        return F.cross_entropy(h @ params["W2"], y)

    verdicts = []
    for seed in range(4):
        result = gradcheck(f, params=params, seed=seed, raise_on_fail=False)
        warned = any("crossed no kink disagree beyond the happy tier" in w for w in result.warnings)
        assert warned or not result.passed, (seed, result.report())
        verdicts.append(result.passed)
    assert any(verdicts), "no seed passed: the warning was not what caught it"


def test_wrong_shape_backward_is_a_value_error_naming_the_block():
    class WrongShape(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g @ w.T, g.T @ x  # (3, 2) for a (2, 3) weight

    w = torch.randn(2, 3, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="'W'") as info:
        gradcheck(lambda: WrongShape.apply(x, w).sum(), params={"W": w})
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not isinstance(info.value, GradcheckError)


# ---------------------------------------------------------------- correct modules


def _check_module(model, f, *args):
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    result = gradcheck(f, *args, params=model)
    assert result.passed, result
    assert {n: p.dtype for n, p in model.named_parameters()} == dtypes
    return result


def test_mlp_relu_cross_entropy_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(4, 5), torch.tensor([0, 2, 1, 2])
    result = _check_module(model, lambda x: F.cross_entropy(model(x), y), x)
    assert [b.name for b in result.blocks] == [
        "args[0]",
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]
    assert any("float64" in w for w in result.warnings)


def test_conv2d_maxpool_passes():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2)
    )
    x = torch.randn(2, 2, 4, 4)
    _check_module(model, lambda x: model(x).pow(2).sum(), x)


def test_dropout_in_train_mode_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    x = torch.randn(3, 4)
    _check_module(model, lambda x: model(x).pow(2).mean(), x)
    assert model.training


def test_batchnorm1d_in_train_mode_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).train()
    x = torch.randn(6, 3)
    stats = model[1].running_mean.clone(), model[1].num_batches_tracked.clone()
    _check_module(model, lambda x: model(x).pow(2).mean(), x)
    assert torch.equal(model[1].running_mean, stats[0])
    assert torch.equal(model[1].num_batches_tracked, stats[1])


def test_small_lstm_passes():
    torch.manual_seed(0)

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    model = Tagger()
    x = torch.randn(2, 3, 3)
    _check_module(model, lambda x: F.cross_entropy(model(x), torch.tensor([0, 1])), x)


def test_named_terms_and_vector_output():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)

    def loss(x):
        return {"data": model(x).pow(2).mean(), "reg": 1e-2 * model.weight.pow(2).sum()}

    result = gradcheck(loss, x, params=model)
    assert result.passed and set(result.terms) == {"data", "reg"}
    assert gradcheck(lambda x: model(x).tanh(), x, params=model).passed


def test_burn_in_moves_the_point_and_the_module_is_restored_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    model.half().float()  # round the weights so a bit-for-bit comparison is meaningful
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = gradcheck(lambda: F.cross_entropy(model(x), y), params=model, burn_in=5)
    assert result.passed
    assert result.burn_in_losses[-1] < result.burn_in_losses[0]
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def test_half_precision_module_is_checked_in_float64_and_restored():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).half()
    x = torch.randn(2, 4)
    result = gradcheck(lambda x: model(x).pow(2).sum(), x, params=model)
    assert result.passed
    assert any("float16" in w for w in result.warnings)
    assert model.weight.dtype == torch.float16


def test_a_float32_cast_inside_f_is_reported():
    x = torch.randn(3, 4, dtype=torch.float64)
    result = gradcheck(lambda x: x.float().tanh().double().sum(), x, raise_on_fail=False)
    assert any("lower precision inside" in w for w in result.warnings), result.warnings


# ------------------------------------------- agreement with torch.autograd.gradcheck

_labels = torch.tensor([1, 0, 3])

OPS = {
    "sin": (lambda x: x.sin(), [(3, 4)]),
    "exp": (lambda x: x.exp(), [(3, 4)]),
    "tanh": (torch.tanh, [(3, 4)]),
    "sigmoid": (torch.sigmoid, [(3, 4)]),
    "softmax": (lambda x: x.softmax(-1), [(3, 4)]),
    "log_softmax": (lambda x: x.log_softmax(-1), [(3, 4)]),
    "matmul": (lambda a, b: a @ b, [(3, 4), (4, 2)]),
    "conv1d": (lambda x, w: F.conv1d(x, w, padding=1), [(1, 2, 5), (3, 2, 3)]),
    "layer_norm": (lambda x: F.layer_norm(x, (4,)), [(3, 4)]),
    "cumprod": (lambda x: x.cumprod(-1), [(3, 4)]),
    "logsumexp": (lambda x: x.logsumexp(-1), [(3, 4)]),
    "atan2": (torch.atan2, [(3, 4), (3, 4)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, _labels), [(3, 4)]),
    "vector norm": (lambda x: x.norm(dim=-1), [(3, 4)]),
}


@pytest.mark.parametrize("name", list(OPS))
def test_agrees_with_torch_gradcheck_on_correct_ops(name):
    fn, shapes = OPS[name]
    gen = torch.Generator().manual_seed(len(name))
    inputs = [torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes]
    assert torch.autograd.gradcheck(fn, [t.clone().requires_grad_() for t in inputs])
    result = gradcheck(fn, *inputs)
    assert result.passed and result.tier == Tier.HAPPY


class CubeWithSquareGradient(Cube):
    """Bug: d(x^3)/dx written as 3x instead of 3x^2."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x


def test_agrees_with_torch_gradcheck_on_a_planted_bug():
    x = torch.randn(3, 4, dtype=torch.float64)
    assert not torch.autograd.gradcheck(
        CubeWithSquareGradient.apply, [x.clone().requires_grad_()], raise_exception=False
    )
    result = gradcheck(CubeWithSquareGradient.apply, x, raise_on_fail=False)
    assert not result.passed and result.tier == Tier.WRONG
    with pytest.raises(GradcheckError, match="args\\[0\\]"):
        gradcheck(CubeWithSquareGradient.apply, x)


# --------------------------------------------------------------------------- kinks


def _relu_pool_hinge(x, w1, b1, w2, b2):
    """A ReLU net with max-pooling and a multi-class hinge (SVM) loss."""
    h = F.max_pool2d(x, 2).flatten(1)
    scores = F.linear(F.relu(F.linear(h, w1, b1)), w2, b2)
    return F.multi_margin_loss(scores, torch.tensor([0, 2, 1]))


def _kinky_inputs(seed):
    """Images quantized like pixels (k/4), so max-pool windows hold ties: kinks sit at
    the checked point itself, as they do with real 8-bit data."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (3, 1, 4, 4), generator=gen).double() / 4
    w1 = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    b1 = torch.randn(5, dtype=torch.float64, generator=gen)
    w2 = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    b2 = torch.randn(3, dtype=torch.float64, generator=gen)
    return x, w1, b1, w2, b2


def test_kinks_pass_where_torch_gradcheck_is_fooled():
    """Side by side: torch.autograd.gradcheck differentiates straight across the ties
    of the max-pool windows (the numeric derivative averages both sides), so it fails a
    correct function; winner tracking sees the crossing and passes it, seed after seed."""
    torch_failures = 0
    seeds = range(8)
    for seed in seeds:
        inputs = _kinky_inputs(seed)
        result = gradcheck(_relu_pool_hinge, *inputs, seed=seed)
        assert result.passed, (seed, result)
        assert result.tolerance == Tier.OK  # kinks present: the threshold for kinks
        ok = torch.autograd.gradcheck(
            _relu_pool_hinge,
            [t.clone().requires_grad_() for t in inputs],
            raise_exception=False,
        )
        torch_failures += not ok
    assert torch_failures >= 1
    # with kinks="off", the same check falls into the same trap on some seed
    assert any(
        not gradcheck(_relu_pool_hinge, *_kinky_inputs(s), kinks="off", raise_on_fail=False).passed
        for s in seeds
    )


# ---------------------------------------------------------------------------- cuda


@cuda
def test_cuda_device_option_checks_on_the_gpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 2)).train()
    x = torch.randn(3, 4)
    result = gradcheck(lambda x: model(x).pow(2).sum(), x, params=model, device="cuda")
    assert result.passed
    assert model[0].weight.device.type == "cpu" and model[0].weight.dtype == torch.float32


@cuda
def test_cuda_planted_bug_fails_on_the_gpu():
    torch.manual_seed(0)
    layer = Linear(TransposedLinear, 4, 4).cuda()
    x = torch.randn(5, 4, device="cuda")
    with pytest.raises(GradcheckError, match="'weight'"):
        gradcheck(lambda x: layer(x).tanh().sum(), x, params=layer)
    assert layer.weight.device.type == "cuda"


@cuda
def test_cuda_conv_and_numerics_flags_are_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1)).cuda()
    x = torch.randn(2, 1, 4, 4, device="cuda")
    flags = (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    )
    assert gradcheck(lambda x: model(x).sum(), x, params=model).passed
    after = (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    )
    assert after == flags
    np.testing.assert_equal(model[0].weight.dtype, torch.float32)


def test_an_embedding_renormalizing_in_place_fails_and_says_why():
    """nn.Embedding(max_norm=1) renormalizes the rows it reads in place, under no_grad:
    autograd's gradient leaves that out, the differences do not. The check fails (the
    gradient is not the derivative of what f computes), says f writes into the weight
    in place, hints at the cause, and puts the weight back."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, max_norm=1.0)
    before = emb.weight.detach().clone()
    ids = torch.tensor([1, 2, 3])
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda: emb(ids).sum(), params=emb)
    message = str(info.value)
    assert "f writes into 'weight' in place; the check put" in message
    assert "hint: f writes into 'weight' in place, outside autograd" in message
    assert torch.equal(emb.weight.detach(), before)
    # without the renormalization, the same check passes
    plain = torch.nn.Embedding(10, 4)
    assert gradcheck(lambda: plain(ids).sum(), params=plain).passed


def test_an_embedding_whose_rows_are_within_max_norm_passes_without_a_warning():
    """With every row already within max_norm, torch's embedding_renorm_ still runs in
    place (the weight's version moves) but changes no value: the check passes, says
    nothing about a write (a correct test under ``-W error::GradcheckWarning`` stays
    green), and the weight is as it was."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(6, 4, max_norm=10.0)
    before = emb.weight.detach().clone()
    ids = torch.tensor([0, 2, 3, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = gradcheck(lambda i: emb(i).pow(2).sum(), ids, params=emb)
    assert result.passed
    assert not any("in place" in w for w in result.warnings), result.warnings
    assert torch.equal(emb.weight.detach(), before)
    # a row above max_norm is renormalized: that write changes values, and is said
    with torch.no_grad():
        emb.weight[2].mul_(100.0)
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda i: emb(i).pow(2).sum(), ids, params=emb)
    assert "f writes into 'weight' in place; the check put" in str(info.value)


def test_a_no_op_in_place_write_into_a_parameter_passes_without_a_warning():
    """``w.mul_(1.0)`` under no_grad inside f (a parameter perturbed by the check)."""
    w = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)

    def f(x):
        with torch.no_grad():
            w.mul_(1.0)
        return (x @ w).tanh().sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = gradcheck(f, x, params=[w])
        assert result.passed and not result.warnings, result.warnings
        # one tensor under two names: two blocks, both perturbing it, both guarding it
        result = gradcheck(f, x, params={"a": w, "b": w}, batch=False)
        assert result.passed and not result.warnings, result.warnings


def _matmul_forgetting_dw(true_zero: bool):
    """x @ w by a custom Function whose backward returns None for w; with `true_zero`
    the forward reads w only through a comparison, so None (zero) is its gradient."""

    class MatMul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ (w > 10).to(w.dtype) if true_zero else x @ w

        @staticmethod
        def backward(ctx, g):
            _, w = ctx.saved_tensors
            used = (w > 10).to(w.dtype) if true_zero else w
            return g @ used.t(), None

    return MatMul.apply


def test_a_backward_returning_none_is_checked_as_zero_and_said():
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x, w: _matmul_forgetting_dw(False)(x, w).sum(), x, w)
    result = info.value.result
    assert [b.passed for b in result.blocks] == [True, False]
    assert not result.blocks[1].analytic.any()
    said = [w for w in result.warnings if "'args[1]'" in w and "returned None" in w]
    assert len(said) == 1 and "checked as 0" in said[0]
    # where the gradient is zero indeed, the check passes (and still says so)
    result = gradcheck(lambda x, w: _matmul_forgetting_dw(True)(x, w).sum(), x, w)
    assert result.passed and any("returned None" in w for w in result.warnings)


# -- checks that saw only a zero gradient, and hints about the failing blocks --------


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))


ZERO_BIAS = (
    "the gradient of block '0.bias' (largest |g| = {g}) is zero up to round-off: over "
    "the check's step it changes f by less than f's float64 round-off, so no difference "
    "can resolve it, and the check cannot catch a wrong gradient there. The loss does not "
    "depend on this block (e.g. a bias followed by a normalization) or depends on it only "
    "through terms that cancel; if that is expected, leave it out of the check with wrt="
)


def test_a_bias_followed_by_batchnorm_is_called_zero_up_to_round_off_not_tiny():
    # BatchNorm removes any per-channel constant: the bias's gradient is 0 in theory and
    # ~1e-17 in float64, which no scaling of the loss can bring into range
    net, x = _bn_net(), torch.randn(6, 3)
    result = gradcheck(lambda x: (net(x) ** 2).sum(), x, params=net)
    assert result.passed
    largest = float(np.abs(result.blocks[2].analytic).max())
    assert 0 < largest < 1e-14
    (zero,) = [w for w in result.warnings if w.startswith("the gradient of block")]
    assert zero == ZERO_BIAS.format(g=zero.split("= ")[1].split(")")[0])
    assert not any("tiny gradients" in w for w in result.warnings)


def test_a_failure_in_one_block_gets_no_hint_about_a_passing_blocks_zero_gradient():
    class Wrong(torch.autograd.Function):  # the last layer's weight gradient, times 1.5
        @staticmethod
        def forward(ctx, h, w):
            ctx.save_for_backward(h, w)
            return h @ w.t()

        @staticmethod
        def backward(ctx, g):
            h, w = ctx.saved_tensors
            return g @ w, 1.5 * g.t() @ h

    net, x = _bn_net(), torch.randn(6, 3)

    def f(x):
        h = net[2](net[1](net[0](x)))
        return (Wrong.apply(h, net[3].weight) + net[3].bias).pow(2).sum()

    result = gradcheck(f, x, params=net, raise_on_fail=False)
    assert failing_blocks(result) == {"3.weight"}
    assert any(w.startswith("the gradient of block '0.bias'") for w in result.warnings)
    message = str(GradcheckError(result))
    assert "hint: in block '3.weight' analytic / numeric = 1.5 at every checked" in message
    assert "tiny" not in message.split("hint:", 1)[1]


def test_a_zero_initialised_head_warns_that_the_earlier_blocks_saw_only_zeros():
    # the seed's "a check at initialization where a bug cannot show": with the last
    # layer at 0 every earlier gradient is exactly 0, a wrong tanh backward included
    class BadTanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            t = torch.tanh(a)
            ctx.save_for_backward(t)
            return t

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            return g * (1 - t)  # should be 1 - t**2

    torch.manual_seed(0)
    l1, l2 = nn.Linear(4, 8), nn.Linear(8, 1)
    nn.init.zeros_(l2.weight)
    model = nn.ModuleDict({"l1": l1, "l2": l2})
    x, y = torch.randn(6, 4), torch.randn(6, 1)

    def f(x):
        return ((l2(BadTanh.apply(l1(x))) - y) ** 2).sum()

    result = gradcheck(f, x, params=model, wrt=lambda n: n.startswith("l"))
    assert result.passed  # the bug cannot show here...
    assert (
        "blocks 'l1.weight', 'l1.bias' have an analytic gradient of exactly 0 at the "
        "checked point (the numeric one agrees), so their check cannot catch a wrong "
        "gradient there. If the zero comes from the point (a zero-initialised layer "
        "downstream, ReLUs that are all inactive), check after burn_in= steps or at a "
        "non-zero initialisation; if f does not depend on them, leave them out with wrt="
    ) in result.warnings
    # ...and shows after the burn-in the warning suggests, which has nothing to warn
    burned = gradcheck(f, x, params=model, wrt=lambda n: n.startswith("l"), burn_in=3,
                       raise_on_fail=False)  # fmt: skip
    assert not burned.passed and "l1.weight" in failing_blocks(burned)
    assert not any("exactly 0" in w for w in burned.warnings)


EIGH_HINT = (
    "in block 'args[0]' the numeric gradient is zero on the upper triangle while the "
    "analytic one is not, and the lower triangle passes or is off by a factor 2: f reads "
    "only the lower triangle of a matrix it treats as symmetric (torch.linalg.eigh, "
    "torch.linalg.cholesky, jnp.linalg.eigh with symmetrize_input=False), while the "
    "gradient is that of a symmetric input; symmetrize the input inside f, (A + A.T) / 2 "
    "(A + A.mT for a batch), so that the function checked depends on both triangles"
)


def test_eigh_reading_one_triangle_gets_the_symmetrize_hint_not_a_constant_factor():
    # eigh reads the lower triangle; autograd returns the symmetric gradient. The ratio
    # is 0.5 on the lower triangle but the numeric gradient is 0 on the upper one:
    # no constant factor
    torch.manual_seed(0)
    s = torch.randn(4, 4, dtype=torch.float64)
    s = s + s.T
    result = gradcheck(lambda s: torch.linalg.eigh(s)[0], s, raise_on_fail=False)
    assert not result.passed
    message = str(GradcheckError(result))
    assert "constant factor" not in message
    assert message.endswith("hint: " + EIGH_HINT)
    fixed = gradcheck(lambda s: torch.linalg.eigh((s + s.T) / 2)[0], s)
    assert fixed.passed


class _GatedLinear(torch.autograd.Function):
    """x @ W whose backward computes each gradient under a ctx.needs_input_grad entry:
    its own (right), or dW under x's entry (the wrong index)."""

    @staticmethod
    def forward(ctx, x, w, wrong_index):
        ctx.save_for_backward(x, w)
        ctx.wrong_index = wrong_index
        return x @ w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        dx = g @ w.T if ctx.needs_input_grad[0] else None
        gate = ctx.needs_input_grad[0] if ctx.wrong_index else ctx.needs_input_grad[1]
        dw = x.T @ g if gate else None
        return dx, dw, None


@pytest.mark.parametrize("wrong_index", [False, True], ids=["own index", "x's index"])
def test_a_gradient_gated_on_another_inputs_needs_input_grad_fails(wrong_index):
    """The analytic pass made x and W both require grad, so dW computed under x's flag
    passed as happy, although in training (x is data) W.grad stays None."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    module = nn.Module()
    module.w = w
    x = torch.randn(4, 3, dtype=torch.float64)

    def f(x):
        return _GatedLinear.apply(x, module.w, wrong_index).pow(2).sum()

    result = gradcheck(f, x, params=module, raise_on_fail=False)
    lone = [m for m in result.warnings if "gets no gradient when it alone requires one" in m]
    assert not [m for m in result.warnings if LONE_NOTICE in m]  # 2 blocks: both taken
    assert result.passed is (not wrong_index)
    if wrong_index:
        assert failing_blocks(result) == {"w"} and lone and "'w'" in lone[0]
    else:
        assert not lone and result.tier is Tier.HAPPY
    # the flags the check toggled are the user's again
    assert w.requires_grad and not x.requires_grad and w.grad is None


class _FusedCrossEntropy(torch.autograd.Function):
    """softmax + cross-entropy in one Function, its one input needing a gradient the
    logits; with `forgets_g`, its backward leaves out `g *`."""

    @staticmethod
    def forward(ctx, s, y, forgets_g):
        p = torch.softmax(s, 1)
        ctx.save_for_backward(p, y)
        ctx.forgets_g = forgets_g
        return -torch.log(p[torch.arange(len(y)), y]).mean()

    @staticmethod
    def backward(ctx, g):
        p, y = ctx.saved_tensors
        d = p.clone()
        d[torch.arange(len(y)), y] -= 1
        return (d if ctx.forgets_g else g * d) / len(y), None, None


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_a_backward_that_ignores_its_grad_output_fails_as_the_last_op(factor):
    """As the last op its grad_output was 1, so the bug passed as happy; under any loss
    scale (0.5, AMP's) training gets wrong gradients."""
    torch.manual_seed(0)
    s, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 0])
    result = gradcheck(
        lambda s: factor * _FusedCrossEntropy.apply(s, y, True), s, raise_on_fail=False
    )
    assert not result.passed and result.tier is Tier.WRONG


def test_a_full_backward_hook_passes_and_its_lone_pass_warns_nothing():
    """A full backward hook puts a Python backward in the graph, so each block is taken
    again alone; torch's warning for those passes (no input requires grad) is theirs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    fired = []
    model[0].register_full_backward_hook(lambda module, gin, gout: fired.append(1))
    x = torch.randn(3, 4, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = gradcheck(lambda x: model(x).pow(2).sum(), x, params=model)
    assert result.passed and result.tier is Tier.HAPPY and fired
    assert not [w for w in record if "backward hook" in str(w.message)]


def test_the_lone_passes_take_the_blocks_under_a_python_backward_in_a_large_model():
    """A model of 20 blocks under one custom layer: its weight, gated on the input's
    needs_input_grad, is taken again alone first (an input of the Python backward), so
    the bug fails there too; of the 19 others upstream, 15 more are taken alone (16 in
    all) and a notice (no warning) names the 4 that were not."""
    torch.manual_seed(0)
    trunk = nn.Sequential(*[nn.Linear(3, 3) for _ in range(9)], nn.Tanh()).double()
    head = nn.Module()
    head.w = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    model = nn.ModuleDict({"trunk": trunk, "head": head})
    x = torch.randn(4, 3, dtype=torch.float64)

    def f(x):
        return _GatedLinear.apply(trunk(x), head.w, True).pow(2).sum()

    result = gradcheck(f, x, params=model, raise_on_fail=False, mode="directions")
    assert len(result.blocks) == 20
    assert not result.passed and failing_blocks(result) == {"head.w"}
    assert any("'head.w' gets no gradient when it alone requires one" in m for m in result.warnings)
    notices = [m for m in result.warnings if LONE_NOTICE in m]
    assert len(notices) == 1 and "4 of the 20 blocks" in notices[0]
    assert "'trunk.7.weight'" in notices[0] and "'head.w'" not in notices[0]
    assert not [m for m in alarming(result.warnings) if LONE_NOTICE in m]


def test_a_custom_loss_of_one_input_costs_no_lone_pass():
    """The model's blocks are all upstream of the custom loss, whose backward has no
    other input's needs_input_grad to misread: no block is taken again alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 2, 1, 0, 1])
    result = gradcheck(
        lambda: _FusedCrossEntropy.apply(model(x), y, False), params=model, mode="directions"
    )
    assert result.passed and result.tier is Tier.HAPPY
    assert result.evaluations == 1 + 2 * len(result.blocks)  # the floor: no lone pass


class _SparseLookup(torch.autograd.Function):
    """An embedding lookup whose backward returns a sparse gradient, `factor` times
    the right one."""

    @staticmethod
    def forward(ctx, weight, idx, factor):
        ctx.save_for_backward(idx)
        ctx.shape, ctx.factor = weight.shape, factor
        return weight[idx]

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        grad = torch.sparse_coo_tensor(idx[None], ctx.factor * g, ctx.shape, check_invariants=True)
        return grad, None, None


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_a_sparse_gradient_is_checked_as_its_dense_form(factor):
    """nn.Embedding(sparse=True) and a custom backward returning a sparse COO tensor:
    the gradient is compared in its dense form, not a TypeError from NumPy (audit s10)."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(8, 3, sparse=True)
    idx = torch.tensor([1, 2, 2, 5])
    assert gradcheck(lambda i: emb(i).pow(2).sum(), idx, params=emb).passed
    weight = torch.randn(8, 3, dtype=torch.float64)
    result = gradcheck(
        lambda w: _SparseLookup.apply(w, idx, factor).pow(2).sum(),
        weight,
        raise_on_fail=False,
        samples_per_block=None,
    )
    assert result.passed is (factor == 1.0)
