"""The shift test in PyTorch: a max that only stabilizes a softmax is not a kink.

``s - s.amax(1, keepdim=True)`` is a decision (which score wins) whose value the loss
does not read: the check evaluates f once more with every max/min reduction moved and,
where no loss changes, holds f to HAPPY and stops recording those reductions. A max
whose value the loss reads stays a kink. The same evaluation inverts every comparison:
a stable sigmoid's ``torch.where(x >= 0, ...)`` picks between two forms of one
function, so it is no kink either, while a leaky ReLU's or a hinge's comparison is.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_gradcheck import GradcheckError, Tier, gradcheck  # noqa: E402
from pytest_gradcheck.backends import torch as backend_module  # noqa: E402
from pytest_gradcheck.backends._base import Point, Settings  # noqa: E402

F = torch.nn.functional


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, dtype=dtype, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    W = torch.randn(3, 4, dtype=torch.float64, generator=g)
    return x, y, W


def stable_nll(s, y):
    """Cross-entropy through a hand-written stable log-softmax (the max computed twice)."""
    z = s - s.amax(1, keepdim=True)
    lse = z.exp().sum(1).log() + s.amax(1)
    return (lse - s.gather(1, y[:, None])[:, 0]).mean()


class StableSoftmaxNLL(torch.autograd.Function):
    """The same loss with a hand-written backward, `factor` times the right one."""

    @staticmethod
    def forward(ctx, s, y, factor):
        m = s.max(dim=1, keepdim=True).values
        p = (s - m).exp()
        p = p / p.sum(1, keepdim=True)
        ctx.save_for_backward(p, y)
        ctx.factor = factor
        return -(p.gather(1, y[:, None]).log()).mean()

    @staticmethod
    def backward(ctx, grad):
        p, y = ctx.saved_tensors
        d = p.clone()
        d[torch.arange(len(y)), y] -= 1.0
        return grad * d / len(y) * ctx.factor, None, None


def test_a_stable_softmax_is_held_to_happy_and_takes_the_fast_path():
    x, y, W = _data()
    library = gradcheck(lambda W: F.cross_entropy(x @ W.T, y), W)
    result = gradcheck(lambda W: stable_nll(x @ W.T, y), W)
    assert result.passed
    assert not result.kinks_present
    assert result.tolerance is Tier.HAPPY
    assert result.evaluations == library.evaluations + 1  # the shift test

    backend = backend_module.TorchBackend(
        lambda W: stable_nll(x @ W.T, y), (W,), None, None, Settings()
    )
    try:
        center = backend.gradient(True).center
        assert center.decisions == 0
        assert backend.fast_path  # evaluations no longer need the dispatch mode
        (ev,) = backend.evaluate([Point(((0, [0], [1e-3]),))], True)
        assert ev.signature == center.signature
    finally:
        backend.close()


def test_a_small_error_in_a_stable_softmax_backward_fails():
    x, y, W = _data()
    ok = gradcheck(lambda W: StableSoftmaxNLL.apply(x @ W.T, y, 1.0), W)
    assert ok.passed and ok.tolerance is Tier.HAPPY
    # relative error 1e-5: tier OK, which the default tolerance for kinks would pass
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda W: StableSoftmaxNLL.apply(x @ W.T, y, 1.0 + 1e-5), W)
    result = info.value.result
    assert result.tolerance is Tier.HAPPY
    assert result.tier is Tier.OK


@pytest.mark.parametrize(
    "loss",
    [
        lambda s: s.amax(1).sum(),  # the max's value is the loss
        lambda s: s[0].max() - s[1].max(),  # two maxima of different rows
        lambda s: stable_nll(s, torch.zeros(6, dtype=torch.long)) + 0.1 * s.max(),
        # the winners' positions, not the values: s[argmax] is max(s), a kink
        lambda s: s.gather(1, s.max(1).indices[:, None]).sum(),
        lambda s: s[torch.arange(6), torch.max(s, 1)[1]].sum(),
    ],
    ids=["amax", "difference", "softmax plus max", "gather indices", "index by indices"],
)
def test_a_max_the_loss_reads_stays_a_kink(loss):
    x, _, W = _data()
    result = gradcheck(lambda W: loss(x @ W.T), W)
    assert result.passed
    assert result.kinks_present
    assert result.tolerance is Tier.OK


def test_dropout_before_a_stable_softmax_is_still_a_shift():
    # the shift test reseeds the RNGs like every evaluation: the same dropout masks
    x, y, W = _data()

    def loss(W):
        s = F.dropout(x @ W.T, p=0.3, training=True)
        return stable_nll(s, y)

    result = gradcheck(loss, W)
    assert result.passed
    assert result.tolerance is Tier.HAPPY


def test_data_that_needs_the_dispatch_mode_is_quiet_too(monkeypatch):
    # float32 data: f runs under the mode at every point (it casts the data), which no
    # longer records the shift's max, so a near tie of two scores is no crossing
    fast_paths = []
    close = backend_module.TorchBackend.close

    def spy(self):
        if not self._closed:
            fast_paths.append(self.fast_path)
        close(self)

    monkeypatch.setattr(backend_module.TorchBackend, "close", spy)
    x, y, W = _data(torch.float32)
    s = x.double() @ W.T
    row = int(s[0].argmax())
    other = (row + 1) % 3
    # move W so that score `other` of sample 0 is 1e-9 above the max
    W = W.clone()
    gap = s[0, row] - s[0, other] + 1e-9
    W[other] += gap * x[0].double() / (x[0].double() @ x[0].double())
    result = gradcheck(lambda W: stable_nll(x @ W.T, y), W, mode="coords", samples_per_block=None)
    assert result.passed
    assert result.tier is Tier.HAPPY
    assert result.kinks_crossed == 0
    assert fast_paths == [False]


class StableSigmoid(torch.autograd.Function):
    """The stable sigmoid, one form on each side of 0, with a backward `factor` off."""

    @staticmethod
    def forward(ctx, x, factor):
        e = torch.exp(-x.abs())
        s = torch.where(x >= 0, 1 / (1 + e), e / (1 + e))
        ctx.save_for_backward(s)
        ctx.factor = factor
        return s

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensors
        return grad * s * (1 - s) * ctx.factor, None


def _sigmoid_data():
    g = torch.Generator().manual_seed(4)
    return 4 * torch.randn(24, dtype=torch.float64, generator=g), torch.randn(
        24, dtype=torch.float64, generator=g
    )


def test_a_stable_sigmoid_is_held_to_happy_and_a_tiny_error_fails():
    # torch.where(x >= 0, ...) over exp(-|x|): the comparison inverted and the abs
    # negated, each entry takes the other form of the same function
    x, w = _sigmoid_data()
    result = gradcheck(lambda x: (StableSigmoid.apply(x, 1.0) * w).sum(), x)
    assert result.passed and result.tier is Tier.HAPPY
    assert not result.kinks_present and result.tolerance is Tier.HAPPY
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x: (StableSigmoid.apply(x, 1 + 1e-5) * w).sum(), x)
    assert info.value.result.tier is Tier.OK


@pytest.mark.parametrize(
    "positive_part",
    [
        lambda x: x.clamp(min=0),
        lambda x: torch.clamp_min(x, 0.0),
        F.relu,
        lambda x: torch.maximum(x, torch.zeros_like(x)),
    ],
    ids=["clamp", "clamp_min", "relu", "maximum"],
)
def test_a_stable_logistic_loss_is_held_to_happy(positive_part):
    """max(x, 0) - x z + log1p(exp(-|x|)), TensorFlow's formula for the sigmoid
    cross-entropy: with the other branch of every decision (min(x, 0), -|x|) the same
    loss. Held to happy; with an entry exactly at 0 (a tie, where the branches agree
    and the test cannot tell) it stays a kink."""
    x, w = _sigmoid_data()
    z = (w > 0).to(torch.float64)

    def loss(x):
        return (positive_part(x) - x * z + torch.log1p(torch.exp(-x.abs()))).sum()

    result = gradcheck(loss, x)
    assert result.passed and result.tier is Tier.HAPPY
    assert not result.kinks_present and result.tolerance is Tier.HAPPY
    tied = x.clone()
    tied[5] = 0.0
    assert gradcheck(loss, tied).kinks_present


@pytest.mark.parametrize(
    "loss",
    [
        lambda x, w: (torch.where(x > 0, x, 0.1 * x) * w).sum(),  # leaky ReLU
        lambda x, w: ((1 - x > 0) * (1 - x) * w).sum(),  # hinge by mask
        lambda x, w: (x[x > 0] ** 2).sum(),  # positive part by indexing
        lambda x, w: (x.abs() * w).sum(),  # an L1 term
        lambda x, w: (F.relu(x) ** 2 * w).sum(),  # a ReLU
        lambda x, w: (x.clamp(-1, 1) * w).sum(),  # a two-sided clamp: three branches
        # a ReLU beside a stable sigmoid: flipped together, the loss changes
        lambda x, w: (StableSigmoid.apply(x, 1.0) * w).sum() + x.clamp_min(0).sum(),
    ],
    ids=["leaky", "hinge", "indexing", "l1", "relu", "clamp", "beside-relu"],
)
def test_comparisons_the_loss_depends_on_stay_kinks(loss):
    x, w = _sigmoid_data()
    result = gradcheck(lambda x: loss(x, w), x)
    assert result.passed
    assert result.kinks_present and result.tolerance is Tier.OK


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_stable_softmax_is_a_shift_and_a_segment_max_a_kink():
    x, y, W = _data()
    shift = gradcheck(lambda W: stable_nll(x @ W.T, y), W, device="cuda")
    assert shift.passed and shift.tolerance is Tier.HAPPY
    segments = torch.tensor([0, 0, 1, 1, 1, 2])
    index = segments[:, None].expand(-1, 3)

    def pooled(W):
        s = x @ W.T
        base = torch.zeros(3, 3, dtype=s.dtype, device=s.device)
        return base.scatter_reduce(0, index.to(s.device), s, "amax", include_self=False).sum()

    kink = gradcheck(pooled, W, device="cuda")
    assert kink.passed and kink.kinks_present and kink.tolerance is Tier.OK


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_stable_logistic_loss_is_held_to_happy_and_relu_stays_a_kink():
    x, w = _sigmoid_data()
    z = (w > 0).to(torch.float64)

    def loss(x):
        return (x.clamp(min=0) - x * z.to(x.device) + torch.log1p(torch.exp(-x.abs()))).sum()

    result = gradcheck(loss, x, device="cuda")
    assert result.passed and result.tolerance is Tier.HAPPY
    relu = gradcheck(lambda x: (F.relu(x) ** 2).sum(), x, device="cuda")
    assert relu.passed and relu.tolerance is Tier.OK
