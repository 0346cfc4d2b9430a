"""Batched evaluation in the PyTorch backend (``torch.func.vmap``, `Settings.batch`).

Batched and unbatched (``batch=False``) checks must agree: the same losses (within
float64 round-off), the same winner signatures, the same verdicts. Functions vmap cannot
run fall back to the loop and still check correctly, and every user object is restored
either way. Real torch, no mocks; small shapes.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from pytest_gradcheck import GradcheckError, gradcheck  # noqa: E402
from pytest_gradcheck.backends import _torch_batch  # noqa: E402
from pytest_gradcheck.backends._base import Point, Settings  # noqa: E402
from pytest_gradcheck.backends.torch import TorchBackend  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def counts(monkeypatch):
    """``(batched, looped, fallback reasons)`` of every backend a check closes, in order."""
    seen: list[tuple[int, int, list[str]]] = []
    close = TorchBackend.close

    def counting_close(self):
        if not self._closed:
            seen.append((self.batched_points, self.looped_points, list(self.batch_fallbacks)))
        return close(self)

    monkeypatch.setattr(TorchBackend, "close", counting_close)
    return seen


# ------------------------------------------------------------------------ functions


def mlp(dropout: float = 0.0) -> nn.Module:
    with torch.random.fork_rng():  # the global RNG is left alone
        torch.manual_seed(0)
        layers = [nn.Linear(5, 8), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers, nn.Linear(8, 3)).train()


def data(n: int = 6):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def relu_pool_hinge(x, w1, b1, w2, b2):
    """Max-pool windows with ties, ReLU and a multi-class hinge: kinks everywhere."""
    h = F.max_pool2d(x, 2).flatten(1)
    scores = F.linear(F.relu(F.linear(h, w1, b1)), w2, b2)
    return F.multi_margin_loss(scores, torch.tensor([0, 2, 1]))


def kinky_inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (3, 1, 4, 4), generator=gen).double() / 4  # ties in the pools
    shapes = [(5, 4), (5,), (3, 5), (3,)]
    return (x, *(torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes))


NAMES = [
    "mlp relu cross-entropy",
    "dropout in train mode",
    "named terms",
    "non-scalar output",
    "kinks crossed",
    "dict params read by a closure",
    "batch norm in train mode",
    "tied weights",
    "random draws inside f",
]


@functools.cache
def scenarios():
    """``name -> (f, args, params)``: one check each, batched and unbatched."""
    out = {}
    model = mlp()
    x, y = data()
    out["mlp relu cross-entropy"] = (lambda x: F.cross_entropy(model(x), y), (x,), model)
    drop = mlp(dropout=0.4)
    out["dropout in train mode"] = (lambda x: F.cross_entropy(drop(x), y), (x,), drop)
    terms = mlp()
    out["named terms"] = (
        lambda x: {
            "data": F.cross_entropy(terms(x), y),
            "reg": 0.1 * sum((p * p).sum() for p in terms.parameters()),
        },
        (x,),
        terms,
    )
    vector = mlp()
    out["non-scalar output"] = (lambda x: vector(x).tanh(), (x,), vector)
    out["kinks crossed"] = (relu_pool_hinge, kinky_inputs(3), None)
    gen = torch.Generator().manual_seed(2)
    weights = {
        "W": torch.randn(5, 4, dtype=torch.float64, generator=gen),
        "b": [torch.randn(4, dtype=torch.float64, generator=gen)],
    }
    out["dict params read by a closure"] = (
        lambda x: (x @ weights["W"] + weights["b"][0]).clamp(-0.5, 0.5).pow(2).sum(),
        (x.double(),),
        weights,
    )
    with torch.random.fork_rng():
        torch.manual_seed(4)
        bn = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1))
        tied = Tied()
    out["batch norm in train mode"] = (lambda x: bn(x).pow(2).mean(), (x,), bn.train())
    out["tied weights"] = (tied, (x,), tied)

    def noisy(x):
        keep = (torch.rand_like(x) < 0.6).to(x.dtype)  # torch's generator
        scale = torch.as_tensor(np.random.rand(*x.shape[1:]), dtype=x.dtype)  # NumPy's
        return ((x * keep * scale).tanh() + 0.1 * torch.randn(x.shape, dtype=x.dtype)).sum()

    out["random draws inside f"] = (noisy, (x.double(),), None)
    assert list(out) == NAMES
    return out


class Tied(nn.Module):
    """An autoencoder whose decoder is its encoder: one parameter under two names."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(5, 5)
        self.decode = nn.Linear(5, 5, bias=False)
        self.decode.weight = self.encode.weight

    def forward(self, x):
        return (self.decode(self.encode(x).tanh()) - x).pow(2).sum()


# -------------------------------------------------------------------------- helpers


def assert_same_result(a, b):
    """Identical verdicts: tiers, kinks, coordinates, and numeric values up to round-off."""
    assert (a.passed, a.tier, a.tolerance) == (b.passed, b.tier, b.tolerance)
    assert (a.kinks_present, a.kinks_crossed, a.evaluations) == (
        b.kinks_present,
        b.kinks_crossed,
        b.evaluations,
    )
    for x, y in zip(a.blocks, b.blocks, strict=True):
        assert (x.name, x.indices, x.tier, x.passed, x.localized) == (
            y.name,
            y.indices,
            y.tier,
            y.passed,
            y.localized,
        )
        np.testing.assert_array_equal(x.kink_crossed, y.kink_crossed)
        np.testing.assert_array_equal(x.one_sided, y.one_sided)
        np.testing.assert_allclose(x.numeric, y.numeric, rtol=1e-6, atol=1e-9)
        if x.direction is not None:
            assert y.direction is not None
            assert (x.direction.tier, x.direction.kink_crossed) == (
                y.direction.tier,
                y.direction.kink_crossed,
            )
    assert a.terms.keys() == b.terms.keys()
    for name in a.terms:
        assert_same_result(a.terms[name], b.terms[name])


def probe_points(b: TorchBackend, steps=(1e-5, 0.3)) -> list[Point]:
    """± coordinate steps in every block (small and large, to cross kinks) and a direction."""
    points = []
    gen = np.random.default_rng(0)
    for i, spec in enumerate(b.blocks()):
        for flat in sorted({0, spec.size // 2, spec.size - 1}):
            for h in steps:
                for sign in (1.0, -1.0):
                    points.append(Point(((i, np.array([flat]), np.array([sign * h])),)))
        v = gen.standard_normal(spec.size)
        # a direction as the engine sends it (a range: one dense addition) and as
        # scattered indices: both must give the same values
        points.append(Point(((i, range(spec.size), 0.1 * v),)))
        points.append(Point(((i, np.arange(spec.size), 0.1 * v),)))
    return points


def evaluate_both(f, args, params, points=None, track=True, seed=0):
    """Evaluations of the same points by a batched and an unbatched backend."""
    out = []
    for batch in (True, False):
        b = TorchBackend(f, args, params, None, Settings(seed=seed, batch=batch))
        try:
            b.gradient(track)
            pts = probe_points(b) if points is None else points
            evaluations = b.evaluate(pts, track)
            out.append((evaluations, b.batched_points, b.looped_points, b.batch_fallbacks))
        finally:
            b.close()
    return out


def assert_same_losses(batched, unbatched):
    for eb, eu in zip(batched, unbatched, strict=True):
        assert math.isclose(eb.loss, eu.loss, rel_tol=1e-12, abs_tol=1e-300)
        assert eb.terms.keys() == eu.terms.keys()
        for k in eb.terms:
            assert math.isclose(eb.terms[k], eu.terms[k], rel_tol=1e-12, abs_tol=1e-300)
        assert (eb.signature, eb.decisions) == (eu.signature, eu.decisions)


# ---------------------------------------------------------- batched == unbatched


@pytest.mark.parametrize("name", NAMES)
def test_batched_losses_and_signatures_equal_the_loop(name):
    f, args, params = scenarios()[name]
    (eb, nb, lb, wb), (eu, nu, lu, _) = evaluate_both(f, args, params)
    assert nb == len(eb) and lb == 0, wb  # every point went through vmap
    assert nu == 0 and lu == len(eu)
    assert_same_losses(eb, eu)
    if name == "kinks crossed":
        assert len({e.signature for e in eb}) > 1  # the steps crossed kinks


@pytest.mark.parametrize("name", NAMES)
def test_batched_check_gives_the_verdicts_of_the_loop(name, counts):
    f, args, params = scenarios()[name]
    batched = gradcheck(f, *args, params=params, raise_on_fail=False)
    batched_points, looped_points, reasons = counts[-1]
    assert batched_points > 10 * looped_points and not reasons, reasons  # lone points: loop
    unbatched = gradcheck(f, *args, params=params, raise_on_fail=False, batch=False)
    assert counts[-1][0] == 0
    assert_same_result(batched, unbatched)
    assert batched.passed
    assert batched.warnings == unbatched.warnings


def test_kinks_crossed_batched_seed_after_seed(counts):
    """The kink-heavy function with ties: crossings, retries and one-sided rescues agree."""
    crossed = 0
    for seed in range(4):
        inputs = kinky_inputs(seed)
        batched = gradcheck(relu_pool_hinge, *inputs, seed=seed, raise_on_fail=False)
        unbatched = gradcheck(relu_pool_hinge, *inputs, seed=seed, batch=False, raise_on_fail=False)
        assert_same_result(batched, unbatched)
        assert batched.passed
        crossed += batched.kinks_crossed
    assert crossed > 0
    assert all(b > 0 and not why for b, _, why in counts[::2])


def test_a_planted_bug_fails_the_same_way_batched(counts):
    class Doubled(torch.autograd.Function):
        generate_vmap_rule = True  # so vmap can run it

        @staticmethod
        def forward(x):
            return x.tanh()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return 2 * g * (1 - y * y)

    x = torch.randn(4, 3, dtype=torch.float64)
    f = lambda x: Doubled.apply(x).sum()  # noqa: E731
    with pytest.raises(GradcheckError, match="args\\[0\\]"):
        gradcheck(f, x)
    assert counts[-1][0] > 0
    assert_same_result(
        gradcheck(f, x, raise_on_fail=False), gradcheck(f, x, raise_on_fail=False, batch=False)
    )


def test_small_chunks_and_an_ambiguous_batch_size_give_the_same_evaluations(monkeypatch):
    """Chunks of a few points; a batch size equal to a decision's size is padded."""
    monkeypatch.setattr(_torch_batch, "MAX_BATCH", 4)
    monkeypatch.setattr(_torch_batch, "CALL_BYTES", -(2**60))
    x = torch.randn(4, 4, dtype=torch.float64)  # relu mask (4, 4): 3 points + 1 row is ambiguous
    f = lambda x: (x.relu() * x.flip(0)).sum()  # noqa: E731
    points = [Point(((0, np.array([i]), np.array([0.7 * (-1) ** i])),)) for i in range(7)]
    (eb, nb, lb, _), (eu, _, _, _) = evaluate_both(f, (x,), None, points)
    assert (nb, lb) == (7, 0)
    assert_same_losses(eb, eu)


# ---------------------------------------------------------- per-element decisions

_t = torch.tensor
DECISIONS = {
    "relu": lambda x: x.relu(),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "clamp": lambda x: x.clamp(-0.3, 0.3),
    "clamp tensor bound": lambda x: x.clamp(min=x.flip(0)),
    "abs": lambda x: x.abs(),
    "maximum": lambda x: torch.maximum(x, x.flip(-1)),
    "max": lambda x: x.max() * x,
    "max dim": lambda x: x.max(dim=0).values,
    "amax": lambda x: x.amax(dim=1, keepdim=True) * x,
    "median": lambda x: x.median() * x,
    "sort": lambda x: x.sort(dim=-1).values,
    "topk": lambda x: x.topk(2, dim=-1).values,
    "where gt": lambda x: torch.where(x > 0.1, x, 2 * x),
    "in-place gt": lambda x: (x * 1.0).gt_(0.2) * x,
    "hardtanh": lambda x: F.hardtanh(x),
    "smooth l1": lambda x: F.smooth_l1_loss(x, torch.full_like(x, 0.1), reduction="none"),
    "huber": lambda x: F.huber_loss(x, torch.full_like(x, 0.1)),
    "multi margin": lambda x: F.multi_margin_loss(x, _t([1, 2, 0, 4])),
    "inf norm": lambda x: torch.linalg.vector_norm(x, float("inf"), dim=1),
    "round": lambda x: torch.round(x * 3) + x,
    "max pool 2d": lambda x: F.max_pool2d(x.reshape(1, 1, 4, 5), 2),
    "adaptive max pool": lambda x: F.adaptive_max_pool1d(x.unsqueeze(0), 2),
}


@pytest.mark.parametrize("name", list(DECISIONS))
def test_decisions_split_per_point_match_the_unbatched_signatures(name):
    """Large steps make every point take other branches: each batch element's signature
    must equal that point's unbatched signature."""
    op = DECISIONS[name]
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def f(x):
        y = op(x)
        return (y * torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).reshape(y.shape)).sum()

    gen = np.random.default_rng(1)
    points = [Point(((0, np.arange(20), 0.8 * gen.standard_normal(20)),)) for _ in range(8)] + [
        Point(((0, np.array([i]), np.array([0.9])),)) for i in range(0, 20, 3)
    ]
    (eb, nb, lb, wb), (eu, _, _, _) = evaluate_both(f, (x,), None, points)
    assert (nb, lb) == (len(points), 0), wb
    assert_same_losses(eb, eu)
    assert len({e.signature for e in eu}) > 1  # the points do differ in their decisions


# ------------------------------------------------------------------- fallbacks


def in_place_into_a_fresh_tensor(x):
    total = torch.zeros(3, dtype=x.dtype)
    total.add_(x.sin().sum(0))  # an unbatched tensor written with batched values
    return total.pow(2).sum()


def data_dependent_branch(x):
    if x.sum() > 0:  # Python control flow on a value
        return (x.tanh() ** 2).sum()
    return x.exp().sum()


def item_inside(x):
    scale = x.abs().max().item()  # a Python number out of a batched tensor
    assert math.isfinite(scale)
    return (x.sin() * x).sum()


FALLBACKS = {  # the function, and how the reason vmap gives starts
    "in-place": (in_place_into_a_fresh_tensor, "RuntimeError: output with shape [3]"),
    "control flow": (data_dependent_branch, "RuntimeError: vmap: It looks like you're attempt"),
    ".item()": (item_inside, "RuntimeError: vmap: It looks like you're calling .item()"),
}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_unbatchable_functions_fall_back_and_check_correctly(name, counts):
    f, reason = FALLBACKS[name]
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    before = x.clone()
    batched = gradcheck(f, x)
    assert batched.passed
    batched_points, looped_points, reasons = counts[-1]
    # the gradient's pass; where f decides (the branch's comparison, the abs and max
    # behind .item()), also the shift test's, which shows them to be kinks
    extra = 1 if name == "in-place" else 2
    assert batched_points == 0 and looped_points == batched.evaluations - extra
    assert len(reasons) == 1 and reasons[0].startswith(f"args[0]: {reason}"), reasons
    assert_same_result(batched, gradcheck(f, x, batch=False))
    assert torch.equal(x, before)


def test_a_captured_tensor_is_detected_and_evaluated_in_the_loop(counts):
    """params names W, but f reads the tensor it captured, not params['W']: substituting
    the dict entry would leave f at the base point (a zero numeric gradient). The read of
    the unsubstituted tensor is seen, and the loop, which perturbs W in place, decides."""
    W = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    params = {"W": W}

    def f():
        return (x @ W).tanh().sum()

    result = gradcheck(f, params=params)
    assert result.passed and counts[-1][0] == 0
    assert counts[-1][2] == [
        "W: Leak: f reads a checked tensor through aten.mm.default without going through the "
        "substituted module parameter, argument or params entry (a tensor captured by a "
        "closure, or aliasing another block)"
    ]
    assert params["W"] is W


def test_a_function_that_needs_autograd_inside_is_evaluated_in_the_loop(counts):
    def gradient_penalty(x):
        y = (x**3).sum()
        (g,) = torch.autograd.grad(y, x, create_graph=True)
        return (g**2).sum()

    x = torch.randn(5, dtype=torch.float64)
    assert gradcheck(gradient_penalty, x).passed
    assert counts[-1][0] == 0


def test_a_failing_group_leaves_other_blocks_batched(counts, monkeypatch):
    """An in-place write that only the bias's batch cannot do: the weight's points stay
    batched, the bias's go to the loop, and the failure is remembered. (Merged into one
    batch, both blocks are batched and the write works: merging is off here.)"""
    monkeypatch.setattr(_torch_batch, "CALL_BYTES", -(2**60))
    W = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)

    def f(W, b):
        h = x @ W  # batched only when W is perturbed
        h.add_(b)  # in place: fails when b is batched and h is not
        return h.tanh().sum()

    batched = gradcheck(f, W, b)
    nb, nl, reasons = counts[-1]
    assert batched.passed and nb > 0 and nl > 0
    assert len(reasons) == 1 and reasons[0].startswith("args[1]: RuntimeError: output with")
    assert_same_result(batched, gradcheck(f, W, b, batch=False))


class _NoVmapSquare(torch.autograd.Function):
    """A custom layer without vmap support (no setup_context): every batch fails."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_a_failing_merged_batch_gives_up_after_two_of_its_groups(counts):
    """Four small blocks merged into one batch, under a custom Function vmap refuses: the
    merged batch fails, its groups are retried one by one, and the check stops retrying
    after `GIVE_UP` failing groups with none batched, as it does between groups, instead
    of trying every group of the merge (each a vmapped call that fails)."""
    gen = torch.Generator().manual_seed(3)
    params = {
        name: torch.randn(shape, dtype=torch.float64, generator=gen)
        for name, shape in (("W1", (3, 4)), ("b1", (4,)), ("W2", (4, 2)), ("b2", (2,)))
    }
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen)

    def f():
        h = _NoVmapSquare.apply(x @ params["W1"] + params["b1"])
        return (h @ params["W2"] + params["b2"]).tanh().sum()

    batched = gradcheck(f, params=params)
    nb, nl, reasons = counts[-1]
    assert batched.passed and nb == 0 and nl > 0
    assert len(reasons) == _torch_batch.GIVE_UP, reasons
    assert all("autograd.Function" in reason for reason in reasons), reasons
    unbatched = gradcheck(f, params=params, batch=False)
    assert counts[-1][2] == []
    assert_same_result(batched, unbatched)


def test_a_large_block_on_the_cpu_is_left_to_the_loop(counts, monkeypatch):
    """A block above LOOP_ROW_BYTES (a fresh copy per row would cost more than the loop's
    one copy in cache) goes to the loop, not as a failure; the small block beside it is
    still batched, and the verdict is the loop's. With the limit raised, it is batched."""
    W = torch.randn(120, 110, dtype=torch.float64)  # 105,600 bytes per row
    b = torch.randn(110, dtype=torch.float64)
    x = torch.randn(3, 120, dtype=torch.float64)
    assert 8 * W.numel() > _torch_batch.LOOP_ROW_BYTES > 8 * b.numel()

    def f(W, b):
        return torch.tanh(x @ W + b).sum()

    looped = gradcheck(f, W, b)
    nb, nl, reasons = counts[-1]
    assert looped.passed and not reasons  # a plan, not a fallback
    assert nl == 22 and nb == 22  # W's 10 coordinates and direction, twice each; b's batched
    unbatched = gradcheck(f, W, b, batch=False)
    assert_same_result(looped, unbatched)

    monkeypatch.setattr(_torch_batch, "LOOP_ROW_BYTES", 2**40)
    batched = gradcheck(f, W, b)
    assert counts[-1][:2] == (44, 0)
    assert_same_result(batched, unbatched)


# ------------------------------------------------------------------- restoration


def snapshot(model: nn.Module, *tensors):
    return (
        [
            (n, p.dtype, p.requires_grad, p.detach().clone(), p.grad)
            for n, p in model.named_parameters()
        ],
        [(n, b.dtype, b.detach().clone()) for n, b in model.named_buffers()],
        [m.training for m in model.modules()],
        [t.detach().clone() for t in tensors],
        torch.get_rng_state(),
        np.random.get_state()[1].copy(),
        random.getstate(),
    )


def assert_same_snapshot(a, b):
    pa, ba, ta, xa, ra, na, pya = a
    pb, bb, tb, xb, rb, nb, pyb = b
    for (n1, d1, r1, v1, g1), (n2, d2, r2, v2, g2) in zip(pa, pb, strict=True):
        assert (n1, d1, r1) == (n2, d2, r2) and torch.equal(v1, v2) and g1 is g2
    for (n1, d1, v1), (n2, d2, v2) in zip(ba, bb, strict=True):
        assert (n1, d1) == (n2, d2) and torch.equal(v1, v2)
    assert ta == tb and all(torch.equal(u, v) for u, v in zip(xa, xb, strict=True))
    assert torch.equal(ra, rb) and np.array_equal(na, nb) and pya == pyb


def test_state_is_restored_after_a_batched_check_and_after_a_fallback(counts):
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 3)
    ).train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    x, y = data()
    before = snapshot(model, x)

    assert gradcheck(lambda x: F.cross_entropy(model(x), y), x, params=model).passed
    assert counts[-1][0] > 0
    assert_same_snapshot(before, snapshot(model, x))

    def unbatchable(x):
        out = model(x)
        if out.sum() > -1e9:  # data-dependent control flow: vmap refuses it
            return F.cross_entropy(out, y)
        return out.sum()

    assert gradcheck(unbatchable, x, params=model).passed
    assert counts[-1][0] == 0
    assert_same_snapshot(before, snapshot(model, x))

    with pytest.raises(GradcheckError, match="args\\[0\\]"):  # a failing batched check
        gradcheck(lambda x: F.cross_entropy(model(_Half.apply(x)), y), x, params=model)
    assert counts[-1][0] > 0
    assert_same_snapshot(before, snapshot(model, x))


class _Half(torch.autograd.Function):
    """Bug: the gradient is halved (identity forward)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g / 2


def test_dict_entries_are_put_back_after_a_batched_check():
    W = torch.randn(5, 4, dtype=torch.float32)
    bias = [torch.randn(4, dtype=torch.float32)]
    params = {"W": W, "b": bias}
    x = torch.randn(3, 5)
    result = gradcheck(lambda: (x @ params["W"] + params["b"][0]).relu().sum(), params=params)
    assert result.passed
    assert params["W"] is W and params["b"] is bias and bias[0].dtype == torch.float32


# ------------------------------------------------------------------------ cuda


@cuda
def test_cuda_batched_and_unbatched_agree():
    model = mlp(dropout=0.3)
    x, y = data()
    f = lambda x: F.cross_entropy(model(x), y)  # noqa: E731
    batched = gradcheck(f, x, params=model, device="cuda", raise_on_fail=False)
    unbatched = gradcheck(f, x, params=model, device="cuda", raise_on_fail=False, batch=False)
    assert_same_result(batched, unbatched)
    assert batched.passed


# ------------------------------------------------------------------------ batch rows


def test_batch_rows_are_the_base_plus_each_points_deltas_on_both_paths(monkeypatch):
    """`stacks` builds CPU rows in NumPy and other devices' in torch: both give, row by
    row, the base plus the point's deltas (one float64 addition each, duplicates added
    up), base rows after the points, and convert deltas not in the engine's own form."""
    gen = np.random.default_rng(3)
    base = [torch.from_numpy(gen.standard_normal(6)), torch.from_numpy(gen.standard_normal(4))]
    blocks = [(base[0], (2, 3)), (base[1], (4,))]
    v = gen.standard_normal(6)
    points = [
        Point(((0, range(6), v),)),
        Point(((0, np.array([1]), np.array([1e-3])),)),
        Point(((1, np.array([3, 3]), np.array([1e-3, 2e-3])),)),
        Point(((0, range(6), -v), (1, np.array([0]), np.array([5e-4])))),
        Point(((0, range(2, 4), np.array([1e-3, -1e-3])),)),  # a range, not the whole block
        Point(((1, [1, 2], 1e-4),)),  # a list of indices and one value for both
    ]
    n = len(points) + 2
    want = [b.numpy().copy()[None].repeat(n, 0) for b in base]
    want[0][0] = base[0].numpy() + v
    want[0][1, 1] += 1e-3
    want[1][2, 3] = want[1][2, 3] + 1e-3 + 2e-3
    want[0][3] = base[0].numpy() + -v
    want[1][3, 0] += 5e-4
    want[0][4, 2:4] += [1e-3, -1e-3]
    want[1][5, 1:3] += 1e-4
    got = _torch_batch.stacks(blocks, (0, 1), points, n)
    assert [tuple(g.shape) for g in got] == [(n, 2, 3), (n, 4)]
    for g, w in zip(got, want, strict=True):
        assert g.reshape(n, -1).numpy().tobytes() == w.tobytes()
    # the torch path (other devices), on the same rows
    monkeypatch.setattr(_torch_batch, "_on_host", lambda t: False)
    again = _torch_batch.stacks(blocks, (0, 1), points, n)
    for g, w in zip(again, want, strict=True):
        assert g.reshape(n, -1).numpy().tobytes() == w.tobytes()
