"""Float32 data beside the check's float64 weights, where torch checks dtypes early.

Convolutions, bilinear and prelu refuse mixed dtypes before torch's dispatcher (where
the tracker casts stray inputs), and a recurrent module compares its input's dtype
with its weights' in Python: these modules, checked with `params=` on float32 data
a closure holds, used to fail with torch's dtype error. Each must check, batched and
looped alike, catch a planted error, and leave the module, its hooks and the data as
they were.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from pytest_gradcheck import Tier, gradcheck  # noqa: E402
from pytest_gradcheck.backends._torch_promote import Promoting  # noqa: E402


def _state(module):
    """What the check must leave as it was: each tensor's identity, bits and dtype,
    the train flags and the forward hooks."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return (
        [(n, t, t.dtype, t.requires_grad, t.detach().clone()) for n, t in tensors],
        [m.training for m in module.modules()],
        [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in module.modules()],
    )


def _assert_same_state(before, module):
    tensors, training, hooks = _state(module)
    for (n, t, dtype, rg, value), (n2, t2, dtype2, rg2, _) in zip(before[0], tensors, strict=True):
        assert n == n2 and t is t2 and dtype == dtype2 and rg == rg2, n
        assert torch.equal(t.detach(), value), n
    assert training == before[1]
    assert hooks == before[2]


def _cases():
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    x1, x2, h, c = randn(5, 4), randn(5, 4), randn(1, 3, 3), randn(1, 3, 3)
    v1, v2, v3 = randn(2, 2, 6), randn(2, 2, 5, 5), randn(1, 2, 3, 3, 3)
    seq = randn(3, 5, 4)
    packed = pack_padded_sequence(seq, torch.tensor([5, 3, 2]), batch_first=True)
    return {
        "conv1d": (nn.Conv1d(2, 3, 3), lambda m: m(v1)),
        "conv2d": (nn.Conv2d(2, 3, 3, padding=1), lambda m: m(v2)),
        "conv3d": (nn.Conv3d(2, 3, 2), lambda m: m(v3)),
        "bilinear": (nn.Bilinear(4, 4, 3), lambda m: m(x1, x2)),
        "prelu": (nn.PReLU(4), lambda m: m(x1)),
        "lstm": (nn.LSTM(4, 3, batch_first=True), lambda m: m(seq)[0]),
        "lstm-hidden": (nn.LSTM(4, 3, batch_first=True), lambda m: m(seq, (h, c))[0]),
        "gru-packed": (nn.GRU(4, 3, batch_first=True), lambda m: m(packed)[0].data),
        "rnn": (nn.RNN(4, 3), lambda m: m(seq)[1]),
    }


CASES = _cases()


# torch's own batching rule for prelu resizes an output (with or without the check)
@pytest.mark.filterwarnings("ignore:An output with one or more elements was resized")
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("batch", [True, False])
def test_module_on_float32_data_checks_and_is_restored(name, batch):
    torch.manual_seed(0)
    module, forward = CASES[name]
    before = _state(module)
    result = gradcheck(lambda: forward(module).square().sum(), params=module, batch=batch)
    assert result.passed and result.tier is Tier.HAPPY
    assert result.coordinates > 0
    _assert_same_state(before, module)  # the check's hooks are gone too
    assert not module._forward_pre_hooks_with_kwargs
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_a_cnn_in_train_mode_with_dropout_on_float32_data():
    """The mission's case: a small CNN (conv, batch norm, ReLU, max-pool, dropout) in
    train mode, float32 data, params=model: it checks, and nothing of it changes."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16, 3),
    ).train()
    x = torch.randn(5, 2, 4, 4)
    y = torch.randint(0, 3, (5,))
    before = _state(net)
    result = gradcheck(lambda: F.cross_entropy(net(x), y), params=net)
    assert result.passed and result.tier <= Tier.OK
    _assert_same_state(before, net)
    assert x.dtype == torch.float32


class _ScaledConvGrad(torch.autograd.Function):
    """conv2d whose backward scales the weight's gradient: a planted error."""

    @staticmethod
    def forward(ctx, x, w, b, factor):
        ctx.save_for_backward(x, w)
        ctx.factor = factor
        return F.conv2d(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = torch.nn.grad.conv2d_input(x.shape, w, g)
        gw = torch.nn.grad.conv2d_weight(x, w.shape, g) * ctx.factor
        return gx, gw, g.sum((0, 2, 3)), None


@pytest.mark.parametrize("factor", [1.0, 1.0 + 1e-6])
def test_functional_conv_of_captured_float32_data_catches_a_planted_error(factor):
    """A hand-written conv backward checked on float32 data: the weight and bias are
    arguments (float64 in the check), the data a closure's float32 tensor (a float32
    input beside a float64 bias is refused before dispatch)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 5, generator=g)
    w = torch.randn(4, 3, 3, 3, generator=g)
    b = torch.randn(4, generator=g)
    target = torch.randn(2, 4, 3, 3, generator=g)

    def f(w, b):
        return (_ScaledConvGrad.apply(x, w, b, factor) * target).sum()

    result = gradcheck(f, w, b, raise_on_fail=False)
    assert result.passed == (factor == 1.0)
    assert [block.passed for block in result.blocks] == [factor == 1.0, True]
    if factor != 1.0:
        assert result.max_rel_error == pytest.approx(1e-6, rel=1e-2)
    assert x.dtype == w.dtype == b.dtype == torch.float32
    assert not torch.overrides._get_current_function_mode_stack()  # no mode left behind


def test_promoting_never_casts_an_argument_the_function_writes():
    """In-place methods, `out=` and `__setitem__` write into their float32 argument
    itself (a cast would send the write to a copy); a pure function reading float32
    beside float64 gets float64 inputs."""
    w = torch.full((3,), 0.5, dtype=torch.float64)
    x = torch.ones(3)
    out = torch.empty(3)
    with Promoting():
        x.add_(w)
        torch.mul(x, w, out=out)
        x[0] = w[0]
        y = torch.nn.functional.conv1d(torch.ones(1, 1, 3), w.view(1, 1, 3))
    assert x.dtype == torch.float32 and x.tolist() == [0.5, 1.5, 1.5]
    assert out.dtype == torch.float32 and out.tolist() == [0.75, 0.75, 0.75]
    assert y.dtype == torch.float64 and y.item() == 1.5


def test_an_f_that_fails_for_another_reason_is_not_retried():
    """Only a dtype mismatch earns the cast-ahead retry: other errors surface as they
    are, f called once."""
    calls = []

    def f(w):
        calls.append(1)
        raise RuntimeError("shape mismatch in my layer")

    with pytest.raises(RuntimeError, match="shape mismatch in my layer"):
        gradcheck(f, torch.ones(3))
    assert len(calls) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_conv_and_an_lstm_on_float32_data_check():
    """device="cuda": the modules' float64 copies and the data on the GPU, the data
    still float32 (cuDNN refuses mixed dtypes up front too)."""
    torch.manual_seed(0)
    conv, lstm = nn.Conv2d(2, 3, 3).cuda(), nn.LSTM(3, 4, batch_first=True).cuda()
    images = torch.randn(2, 2, 5, 5, device="cuda")

    def loss():
        features = conv(images).mean(dim=(2, 3))
        return lstm(features.unsqueeze(1).repeat(1, 3, 1))[0].square().sum()

    before = [p.detach().clone() for p in [*conv.parameters(), *lstm.parameters()]]
    result = gradcheck(loss, params={"conv": conv, "lstm": lstm}, device="cuda")
    assert result.passed and result.tier is Tier.HAPPY
    after = [p.detach() for p in [*conv.parameters(), *lstm.parameters()]]
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b) and b.dtype == torch.float32


# -- casts that the user's own dtype would not lower ------------------------------------


class _Loop(nn.Module):
    """A float32 recurrent loop that fills a preallocated buffer (the seq2seq tutorial's
    ``outputs = torch.zeros(T, B, H)``) and ends in ``logits.float()``."""

    def __init__(self, cast):
        super().__init__()
        self.cell = nn.RNNCell(3, 4)
        self.head = nn.Linear(4, 2)
        self.cast = cast

    def forward(self, x):
        h = torch.zeros(x.shape[1], 4)
        outputs = torch.zeros(x.shape[0], x.shape[1], 4)
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            outputs[t] = h
        return self.cast(self.head(outputs)).pow(2).mean()


CASTS = {
    "float()": lambda t: t.float(),
    "to(float32)": lambda t: t.to(torch.float32),
    "to(dtype=float32)": lambda t: t.to(dtype=torch.float32),
    "type(float32)": lambda t: t.type(torch.float32),
    "type('torch.FloatTensor')": lambda t: t.type("torch.FloatTensor"),
    "type(torch.FloatTensor)": lambda t: t.type(torch.FloatTensor),
}


@pytest.mark.parametrize("cast", CASTS)
def test_a_float32_model_s_own_casts_and_buffers_stay_in_float64(cast):
    torch.manual_seed(0)
    model = _Loop(CASTS[cast])
    x = torch.randn(5, 2, 3)
    before = _state(model)
    result = gradcheck(lambda x: model(x), x, params=model)
    assert result.passed and result.tier is Tier.HAPPY
    assert not any("computes in lower precision" in w for w in result.warnings)
    assert torch.get_default_dtype() is torch.float32
    _assert_same_state(before, model)


def test_a_cast_below_the_model_s_own_dtype_is_still_named():
    torch.manual_seed(0)
    model = _Loop(lambda t: t.half())
    result = gradcheck(lambda x: model(x), torch.randn(5, 2, 3), params=model, raise_on_fail=False)
    assert any("computes in lower precision" in w and "float16" in w for w in result.warnings)
    assert torch.get_default_dtype() is torch.float32


def test_a_float64_model_s_cast_to_float32_is_still_named():
    torch.manual_seed(0)
    model = _Loop(lambda t: t.float()).double()
    result = gradcheck(
        lambda x: model(x),
        torch.randn(5, 2, 3, dtype=torch.float64),
        params=model,
        raise_on_fail=False,
    )
    assert any("computes in lower precision" in w for w in result.warnings)


def test_a_bfloat16_model_s_float_upcast_is_kept_and_a_planted_error_caught():
    torch.manual_seed(0)
    w = torch.randn(4, 3).to(torch.bfloat16)
    x = torch.randn(6, 3).to(torch.bfloat16)

    def f(w, factor=1.0):
        return ((x @ w.T).float() ** 2).sum() * factor

    assert gradcheck(f, w).tier is Tier.HAPPY

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            return v.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.001

    with pytest.raises(AssertionError):
        gradcheck(lambda w: f(Scaled.apply(w)), w)
    assert torch.get_default_dtype() is torch.float32


def test_an_f_that_needs_its_float32_cast_runs_as_it_was():
    """A bit view of the cast (``.float().view(torch.int32)``) needs float32 itself:
    kept in float64 it fails, so the check runs f as it was and names the cast."""
    torch.manual_seed(0)
    w = torch.randn(3, 4)

    def f(w):
        z = (w * 2.0).float()
        bits = z.view(torch.int32)  # one int32 per float32 (two per float64)
        return (z**2).sum() + 0.0 * (bits.float() * z).sum()

    result = gradcheck(f, w, raise_on_fail=False)
    assert any("computes in lower precision" in m for m in result.warnings)
    assert torch.get_default_dtype() is torch.float32


@pytest.mark.parametrize("outcome", ["passes", "fails", "raises"])
def test_an_f_that_sets_the_default_dtype_gets_the_user_s_back(outcome):
    """The contract's "dtypes exactly as before" includes torch's default dtype, also
    where f itself changes it (a script's `set_default_dtype(float64)` inside f)."""
    w = torch.randn(3, 4)
    calls = []

    def f(w):
        torch.set_default_dtype(torch.float64)
        calls.append(1)
        if outcome == "raises" and len(calls) > 1:  # after the gradient pass
            raise RuntimeError("boom")
        return (w**2).sum()

    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            return v.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.1

    assert torch.get_default_dtype() is torch.float32
    if outcome == "raises":
        with pytest.raises(RuntimeError, match="boom"):
            gradcheck(f, w)
    elif outcome == "fails":
        result = gradcheck(lambda w: f(Off.apply(w)), w, raise_on_fail=False)
        assert not result.passed
    else:
        assert gradcheck(f, w).passed
    assert torch.get_default_dtype() is torch.float32


def _linear(cast, factor=1.0):
    """x @ W with a hand-written backward computing dW through `cast` (a float32
    model's backward written for its own dtype), times `factor` (a planted bug)."""

    class Lin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            dw = (cast(x.T) @ cast(g)).to(g.dtype) * factor
            return g @ w.T, dw

    return Lin.apply


@pytest.mark.parametrize(
    ("cast", "passes"),
    [(lambda t: t.float(), True), (lambda t: t.half(), False)],
    ids=["float", "half"],
)
def test_a_float32_model_s_custom_backward_keeps_its_casts_in_float64(cast, passes):
    """Autograd runs backward passes without torch function modes, so the keep-float64
    mode of the forward cannot see a custom backward's ``g.float()``: the dispatch
    watch keeps it in float64 (it failed as *ok* with advice to remove the cast); a
    cast below the model's dtype is still named and fails."""
    torch.manual_seed(0)
    x, w = torch.randn(16, 8), torch.randn(8, 8) / 3
    lin = _linear(cast)
    result = gradcheck(lambda w: (torch.tanh(lin(x, w)) ** 2).sum(), w, raise_on_fail=False)
    assert result.passed is passes
    assert any("computes in lower precision" in m for m in result.warnings) is not passes
    assert torch.get_default_dtype() is torch.float32
    if passes:
        wrong = _linear(cast, 1.001)
        planted = gradcheck(lambda w: (torch.tanh(wrong(x, w)) ** 2).sum(), w, raise_on_fail=False)
        assert not planted.passed and planted.tier is Tier.UNCOMFORTABLE
