"""The PyTorch backend through the engine's protocol: blocks, restoration, gradients,
seeding, winner tracking, errors and devices. Real torch, no mocks."""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from pytest_gradcheck.backends._base import COTANGENT, Point, Settings  # noqa: E402
from pytest_gradcheck.backends.torch import TorchBackend  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def backend(f, *args, params=None, seed=0, device=None, wrt=None):
    return TorchBackend(f, args, params, None, Settings(seed=seed, device=device, wrt=wrt))


def at(block: int, index: int, delta: float) -> Point:
    return Point(((block, np.array([index]), np.array([delta])),))


def bits(t):
    return t.detach().cpu().numpy().tobytes()


# ---------------------------------------------------------------------------- blocks


def test_blocks_of_nested_args_skip_non_floating_leaves():
    x = torch.randn(2, 3)
    w1 = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    mask = torch.tensor([True, False])
    seen = {}

    def f(x, layers, labels, k, flag):
        seen.update(labels=labels, k=k, flag=flag, mask=layers["mask"])
        h = x @ layers["W1"]
        return h[labels].sum() * k + layers["scale"][0] * h.sum()

    scale = [torch.tensor(2.0)]
    b = backend(f, x, {"W1": w1, "mask": mask, "scale": scale}, labels, 3, True)
    try:
        names = [s.name for s in b.blocks()]
        assert names == ["args[0]", "args[1]['W1']", "args[1]['scale'][0]"]
        assert [s.dtype for s in b.blocks()] == ["float32", "float64", "float32"]
        assert [s.shape for s in b.blocks()] == [(2, 3), (3, 4), ()]
        b.gradient(False)
        assert seen["labels"] is labels and seen["mask"] is mask  # passed through untouched
        assert seen["k"] == 3 and seen["flag"] is True
    finally:
        b.close()


def test_blocks_of_module_dict_and_list_params():
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(3, 2))
    b = backend(lambda x: model(x).sum(), torch.randn(4, 3), params=model)
    assert [s.name for s in b.blocks()] == ["args[0]", "fc1.weight", "fc1.bias"]
    b.close()

    w = torch.randn(3, 3)
    b = backend(lambda: (w * w).sum(), params={"W1": w})
    assert [s.name for s in b.blocks()] == ["W1"]
    b.close()

    ws = [torch.randn(2), torch.randn(2)]
    b = backend(lambda: (ws[0] * ws[1]).sum(), params=ws)
    assert [s.name for s in b.blocks()] == ["params[0]", "params[1]"]
    b.close()


def test_wrt_selects_blocks_and_rejects_non_floating_names():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    b = backend(lambda x: model(x).sum(), x, params=model, wrt=["weight"])
    assert [s.name for s in b.blocks()] == ["weight"]
    g = b.gradient(False)
    assert len(g.total) == 1
    b.close()
    b = backend(lambda x: model(x).sum(), x, params=model, wrt=lambda n: n.endswith("bias"))
    assert [s.name for s in b.blocks()] == ["bias"]
    b.close()
    with pytest.raises(TypeError, match="not floating point"):
        backend(lambda x, i: model(x)[i].sum(), x, torch.tensor([0]), params=model, wrt=["args[1]"])
    assert model.weight.dtype == torch.float32


def test_grad_argument_is_refused():
    with pytest.raises(TypeError, match="grad= is only for NumPy"):
        TorchBackend(lambda x: x.sum(), (torch.randn(3),), None, lambda x: x, Settings())


def test_closure_reading_a_module():
    model = nn.Linear(3, 1)
    data = torch.randn(5, 3)
    b = backend(lambda: model(data).pow(2).mean(), params=model)
    try:
        g = b.gradient(False)
        ref = nn.Linear(3, 1).double()
        ref.load_state_dict(model.state_dict())
        loss = ref(data.double()).pow(2).mean()
        expected = torch.autograd.grad(loss, list(ref.parameters()))
        for got, want in zip(g.total, expected, strict=True):
            np.testing.assert_allclose(got, want.numpy().ravel(), rtol=1e-12, atol=1e-15)
    finally:
        b.close()


# ------------------------------------------------------------------ restoration


def _state(model):
    """Every field the check must leave as it was, by object identity and by bits."""
    return {
        "params": {
            n: (p, bits(p), p.dtype, p.device, p.requires_grad, p.grad, bits(p.grad))
            if p.grad is not None
            else (p, bits(p), p.dtype, p.device, p.requires_grad, None, None)
            for n, p in model.named_parameters()
        },
        "buffers": {n: (buf, bits(buf), buf.dtype, buf.device) for n, buf in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "rng": (bits(torch.get_rng_state()), random.getstate(), np.random.get_state()[1].tobytes()),
        "flags": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch._C._get_cublas_allow_fp16_reduced_precision_reduction(),
            torch._C._get_cublas_allow_bf16_reduced_precision_reduction(),
            torch._C._get_fp32_precision_getter("cuda", "matmul"),
            torch._C._get_fp32_precision_getter("cuda", "conv"),
            torch.get_float32_matmul_precision(),
        ),
    }


def _assert_same_state(before, model):
    after = _state(model)
    for name, (p, value, dtype, device, rg, grad, grad_bits) in before["params"].items():
        q = dict(model.named_parameters())[name]
        assert q is p, name
        assert bits(q) == value and q.dtype == dtype and q.device == device, name
        assert q.requires_grad == rg, name
        assert q.grad is grad, name
        if grad is not None:
            assert bits(q.grad) == grad_bits and q.grad.dtype == dtype, name
    for name, (buf, value, dtype, device) in before["buffers"].items():
        now = dict(model.named_buffers())[name]
        assert now is buf and bits(now) == value and now.dtype == dtype and now.device == device
    assert after["training"] == before["training"]
    assert after["rng"] == before["rng"]
    assert after["flags"] == before["flags"]


def _float32_model():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.4), nn.Linear(6, 3)
    )
    model.train()
    model[4].eval()  # one submodule in eval mode: each flag is restored on its own
    model[0].bias.requires_grad_(False)
    x = torch.randn(5, 4)
    model(x).sum().backward()  # existing .grad fields (the frozen bias has none)
    return model, x


def test_float32_train_mode_module_is_restored_field_by_field():
    model, x = _float32_model()
    y = torch.tensor([0, 1, 2, 1, 0])
    x_before = bits(x)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = _state(model)
    b = backend(lambda x: F.cross_entropy(model(x), y), x, params=model, seed=3)
    # during the check: float64, deterministic, no TF32
    assert model[0].weight.dtype == torch.float64 and model[1].running_mean.dtype == torch.float64
    assert (
        model[0].weight.requires_grad
        and model[0].bias.requires_grad
        and model[0].weight.grad is None
    )
    assert torch.are_deterministic_algorithms_enabled()
    assert torch._C._get_fp32_precision_getter("cuda", "matmul") == "ieee"
    assert torch.get_float32_matmul_precision() == "highest"
    assert any("checked in float64" in w for w in b.warnings)
    g = b.gradient(True)
    n = len(b.blocks())
    b.evaluate([at(i, 0, 1e-3) for i in range(n)] + [at(1, 3, -1e-2)], True)
    b.step([np.full(s.size, 1e-3) for s in b.blocks()])
    b.gradient(False)
    b.close()
    b.close()  # idempotent
    _assert_same_state(before, model)
    assert bits(x) == x_before
    assert g.center.decisions > 0
    # autograd still works on the restored float32 module (its grad accumulators reset)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert model[0].weight.grad.dtype == torch.float32


def test_restored_after_an_error_in_the_check():
    model, x = _float32_model()
    before = _state(model)
    unused = nn.Parameter(torch.randn(2))
    model.register_parameter("unused", unused)
    before = _state(model)
    b = backend(lambda x: model(x).sum(), x, params=model)
    with pytest.raises(ValueError, match="'unused'"):
        b.gradient(False)
    b.close()
    _assert_same_state(before, model)


def test_restored_when_construction_fails():
    model, x = _float32_model()
    before = _state(model)
    with pytest.raises(ValueError, match="not a block"):
        backend(lambda x: model(x).sum(), x, params=model, wrt=["nope"])
    _assert_same_state(before, model)


def test_dict_params_keep_their_objects_and_values():
    w = torch.randn(3, 3, requires_grad=True)
    v = torch.randn(3) * 2  # not a leaf: computed
    params = {"W": w, "v": v}
    w_bits, v_bits = bits(w), bits(v)
    b = backend(lambda x: (x @ params["W"] + v).pow(2).sum(), torch.randn(2, 3), params=params)
    assert params["W"] is w and w.dtype == torch.float64
    b.gradient(False)
    b.evaluate([at(1, 4, 1e-4), at(2, 0, -1e-4)], False)
    b.close()
    assert params["W"] is w and params["v"] is v
    assert w.dtype == torch.float32 and bits(w) == w_bits and bits(v) == v_bits
    assert w.requires_grad and w.grad is None and w.is_leaf


def test_evaluate_undoes_deltas_exactly_and_step_moves_the_base():
    x = torch.randn(4, dtype=torch.float64)
    b = backend(lambda x: (x.sin() * x).sum(), x)
    values = b.blocks()[0].values
    assert not values.flags.writeable  # a view of the base point: the engine cannot write it
    base = values.copy()  # valid until `step` moves the base point
    b.evaluate([at(0, 1, 1e-3), Point(((0, np.array([2, 2]), np.array([0.1, 0.2])),))], False)
    assert b.blocks()[0].values.tobytes() == base.tobytes()
    # duplicate indices add up: base + 0.1 + 0.2
    (ev,) = b.evaluate([Point(((0, np.array([2, 2]), np.array([0.1, 0.2])),))], False)
    moved = base.copy()
    moved[2] += 0.1 + 0.2
    assert ev.loss == pytest.approx(float((np.sin(moved) * moved).sum()), rel=1e-14)
    b.step([np.array([0.5, 0.0, 0.0, 0.0])])
    assert b.blocks()[0].values[0] == base[0] + 0.5
    b.close()
    assert bits(x) == base.tobytes()


@pytest.mark.parametrize("host", [True, False], ids=["numpy-views", "torch-aliases"])
def test_points_are_written_and_undone_alike_through_numpy_and_torch(monkeypatch, host):
    """CPU blocks take their deltas through NumPy views; other devices through torch
    aliases. Both give f the same values and leave the blocks bit for bit as before."""
    if not host:
        monkeypatch.setattr("pytest_gradcheck.backends.torch._Block.host", lambda self: None)
    x = torch.randn(6, dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    f = lambda x, w: (x.sin() * w.reshape(-1)).sum()  # noqa: E731
    b = TorchBackend(f, (x, w), None, None, Settings(batch=False))  # point by point
    xs, ws = (s.values.copy() for s in b.blocks())
    v = np.linspace(-1e-3, 1e-3, 6)
    points = [
        Point(((0, range(6), v),)),  # a direction: dense
        Point(((1, np.array([4, 4, 0]), np.array([1e-3, 2e-3, -5e-4])),)),  # duplicates add
        Point(((0, range(6), v), (1, np.array([5]), np.array([1e-4])))),  # two blocks
        Point(((1, [1, 2], 1e-3),)),  # a list of indices and one value for both
    ]
    evs = b.evaluate(points, False)

    def loss(dx, dw):
        return float((np.sin(xs + dx) * (ws.reshape(-1) + dw)).sum())

    dw = np.zeros(6)
    np.add.at(dw, [4, 4, 0], [1e-3, 2e-3, -5e-4])
    want = [
        loss(v, 0.0),
        loss(0.0, dw),
        loss(v, np.eye(6)[5] * 1e-4),
        loss(0.0, np.array([0, 1e-3, 1e-3, 0, 0, 0])),
    ]
    assert [e.loss for e in evs] == pytest.approx(want, rel=1e-14)
    assert b.blocks()[0].values.tobytes() == xs.tobytes()
    assert b.blocks()[1].values.tobytes() == ws.tobytes()
    b.close()
    assert bits(x) == xs.tobytes() and bits(w) == ws.tobytes()


def test_f_writing_into_its_inputs_cannot_move_the_base_point():
    def f(x, w):
        with torch.no_grad():
            x.mul_(2)  # in place, under no_grad: autograd cannot see it
            w.add_(1)
        return (x * w).sum()

    x = torch.randn(3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    b = backend(f, x, w, wrt=["args[0]"])  # w is not a block, but is guarded too
    base = b.blocks()[0].values.copy()
    g = b.gradient(False)
    evs = b.evaluate([Point(()), Point(()), at(0, 1, 1e-3)], False)
    assert evs[0].loss == evs[1].loss == g.center.loss
    assert b.blocks()[0].values.tobytes() == base.tobytes()
    assert any("'args[0]' in place" in m for m in b.warnings)
    assert any("'args[1]' in place" in m for m in b.warnings)
    b.close()


def test_an_in_place_op_that_changes_no_value_is_put_back_without_a_warning():
    """``mul_(1)`` moves a tensor's version but not its values: the check restores it
    as after any write, and says nothing, at the base point (the gradient pass, its
    evaluations) and at perturbed points, where the values f was called with are the
    block's base plus the point's deltas."""
    calls = []

    def f(x, w):
        calls.append((x._version, w._version))
        with torch.no_grad():
            x.mul_(1.0)
            w.mul_(1.0)
        return (x * w).sum()

    x = torch.randn(3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    xs, ws = bits(x), bits(w)
    b = backend(f, x, w, wrt=["args[0]"])  # w is not a block, but is guarded too
    try:
        g = b.gradient(False)
        evs = b.evaluate([Point(()), at(0, 1, 1e-3), at(0, 1, -1e-3)], False)
        assert evs[0].loss == g.center.loss
        assert evs[1].loss != evs[2].loss  # the deltas reached f
        assert not any("in place" in m for m in b.warnings), b.warnings
        assert len({v for v, _ in calls}) > 1  # the writes were seen (and put back)
    finally:
        b.close()
    assert bits(x) == xs and bits(w) == ws


def test_a_write_that_undoes_the_perturbation_is_a_write():
    """f copying the base values back over its argument changes no value at the base
    point but does at every perturbed one (it undoes the deltas): it is warned about,
    and the differences it leaves (all 0) fail against the gradient."""
    x = torch.randn(4, dtype=torch.float64)
    x0 = x.clone()

    def f(x):
        with torch.no_grad():
            x.copy_(x0)
        return (x * x).sum()

    b = backend(f, x)
    try:
        g = b.gradient(False)
        assert not any("in place" in m for m in b.warnings)
        evs = b.evaluate([at(0, 2, 1e-3), at(0, 2, -1e-3)], False)
        assert evs[0].loss == evs[1].loss == g.center.loss
        assert any("f writes into 'args[0]' in place" in m for m in b.warnings)
    finally:
        b.close()
    assert torch.equal(x, x0)


# ---------------------------------------------------------------------- gradients


def test_gradients_match_autograd_for_each_output_kind():
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(4, 2, dtype=torch.float64)

    b = backend(lambda x, w: (x @ w).tanh().sum(), x, w)
    g = b.gradient(False)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ex = torch.autograd.grad((xr @ wr).tanh().sum(), [xr, wr])
    for got, want in zip(g.total, ex, strict=True):
        np.testing.assert_allclose(got, want.numpy().ravel(), rtol=1e-13)
    b.close()

    # a non-scalar output is reduced with the fixed projection weights
    from pytest_gradcheck.backends._base import projection_weights

    b = backend(lambda x, w: (x @ w).tanh(), x, w, seed=7)
    g = b.gradient(False)
    proj = torch.as_tensor(projection_weights((3, 2), 7))
    ex = torch.autograd.grad(((xr @ wr).tanh() * proj).sum(), [xr, wr])
    for got, want in zip(g.total, ex, strict=True):
        np.testing.assert_allclose(got, want.numpy().ravel(), rtol=1e-13)
    (ev,) = b.evaluate([Point(())], False)
    assert ev.loss == pytest.approx(g.center.loss, rel=1e-15)
    b.close()

    # named terms: the total is their sum, each term has its own gradient
    def f(x, w):
        return {"data": (x @ w).pow(2).sum(), "reg": 0.1 * w.pow(2).sum()}

    b = backend(f, x, w)
    g = b.gradient(False)
    assert set(g.terms) == {"data", "reg"}
    np.testing.assert_allclose(g.terms["reg"][0], 0.0)  # reg does not depend on x
    np.testing.assert_allclose(g.terms["reg"][1], 0.2 * w.numpy().ravel(), rtol=1e-13)
    np.testing.assert_allclose(g.total[1], g.terms["data"][1] + g.terms["reg"][1], rtol=1e-13)
    assert g.center.terms["reg"] == pytest.approx(0.1 * float(w.pow(2).sum()))
    (ev,) = b.evaluate([at(1, 0, 1e-3)], False)
    assert set(ev.terms) == {"data", "reg"}
    b.close()


def test_float32_inputs_are_checked_in_float64():
    x = torch.randn(5)
    b = backend(lambda x: x.exp().sum(), x)
    g = b.gradient(False)
    np.testing.assert_allclose(g.total[0], x.double().exp().numpy(), rtol=1e-15)
    assert any("checked in float64" in w and "args[0] (float32)" in w for w in b.warnings)
    b.close()
    assert x.dtype == torch.float32


def test_lower_precision_inside_f_is_warned():
    x = torch.randn(5, dtype=torch.float64)
    b = backend(lambda x: (x.float().exp()).sum(), x)
    b.gradient(False)
    assert any("lower precision inside" in w and "float32" in w for w in b.warnings)
    b.close()
    # a float32 constant created inside f is not a loss of precision
    b = backend(lambda x: (x + torch.ones(5)).exp().sum(), x)
    b.gradient(False)
    assert not any("lower precision" in w for w in b.warnings)
    b.close()


class _Float32Backward(torch.autograd.Function):
    """exp whose backward computes in float32: the forward graph alone looks clean."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (g.float() * x.float().exp()).double()


def test_lower_precision_inside_a_custom_backward_is_warned():
    # the forward pass is float64 throughout: only watching the backward finds it
    x = torch.randn(5, dtype=torch.float64)
    b = backend(lambda x: _Float32Backward.apply(x).sum(), x)
    b.gradient(False)
    assert any("lower precision inside" in w and "float32" in w for w in b.warnings), b.warnings
    b.close()

    # autocast leaves float64 tensors alone: nothing is lowered
    def under_autocast(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (x[:, None] @ x[None, :]).sum()

    b = backend(under_autocast, x)
    b.gradient(False)
    assert b.warnings == []
    b.close()


def test_unused_parameter_is_named():
    model = nn.ModuleDict({"used": nn.Linear(2, 2), "spare": nn.Linear(2, 2)})
    b = backend(lambda x: model["used"](x).sum(), torch.randn(3, 2), params=model)
    with pytest.raises(ValueError, match=r"'spare.weight', 'spare.bias'.*wrt") as info:
        b.gradient(False)
    assert "no gradient" in str(info.value)
    b.close()


def test_detached_loss_is_an_error():
    b = backend(lambda x: torch.tensor(x.detach().sum().item()), torch.randn(3))
    with pytest.raises(ValueError, match="no autograd graph"):
        b.gradient(False)
    b.close()


def test_wrong_shape_custom_backward_is_reraised_chained_and_named():
    class Bad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g @ w.T, (x.T @ g).T  # transposed: (3, 2) for a (2, 3) weight

    x = torch.randn(4, 2, dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    b = backend(lambda: Bad.apply(x, w).sum(), params={"W": w})
    with pytest.raises(ValueError, match=r"backward pass failed for block 'W'") as info:
        b.gradient(False)
    assert isinstance(info.value.__cause__, RuntimeError)
    b.close()


def test_a_wrong_shaped_gradient_names_the_block_it_is_for_not_one_of_its_shape():
    """The gradient for input 1 of the Function is wrong ((4,) for the expanded (3, 4)
    it got): the block behind that input is w, though the shape torch expects is x's.
    Both blocks' own backward passes fail (they run the same bad backward), so only
    the graph tells them apart."""

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x * w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g * w, (g * x).sum(0)  # the (4,) of w, not of the (3, 4) input

    w = torch.randn(4, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    b = backend(lambda x: Scale.apply(x, w[None].expand(3, 4)).pow(2).sum(), x, params=[w])
    with pytest.raises(ValueError, match=r"backward pass failed for block 'params\[0\]'") as info:
        b.gradient(False)
    assert "'args[0]'" not in str(info.value)
    b.close()


def test_backward_returning_none_counts_as_a_zero_gradient():
    class ForgetsBias(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, bias):
            return x + bias

        @staticmethod
        def backward(ctx, g):
            return g, None

    bias = torch.randn(3, dtype=torch.float64)
    b = backend(lambda x: ForgetsBias.apply(x, bias).pow(2).sum(), torch.randn(2, 3), params=[bias])
    g = b.gradient(False)
    np.testing.assert_array_equal(g.total[1], 0.0)
    b.close()


def test_float32_tensors_f_reaches_by_closure_are_promoted():
    model = nn.Linear(3, 1)  # float32, read by f but not passed as params
    data = torch.randn(2, 3)  # float32 data captured by the closure
    x = torch.randn(3, dtype=torch.float64)
    b = backend(lambda x: model(data * x).pow(2).sum(), x)
    g = b.gradient(True)
    assert model.weight.dtype == torch.float32
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(
        F.linear(data.double() * xr, model.weight.double(), model.bias.double()).pow(2).sum(), xr
    )
    np.testing.assert_allclose(g.total[0], want.numpy(), rtol=1e-13)
    assert not any("lower precision" in w for w in b.warnings)
    b.close()


def test_dtype_error_inside_f_gets_a_hint():
    b = backend(lambda x: torch.mm(x, torch.ones(3, 3, dtype=torch.int64)).sum(), torch.randn(2, 3))
    with pytest.raises(TypeError, match="params=") as info:
        b.gradient(False)
    assert isinstance(info.value.__cause__, RuntimeError)
    b.close()


def test_f_that_needs_autograd_inside_is_evaluated_with_grad():
    def penalty(x):  # a gradient penalty: f itself calls torch.autograd.grad
        y = (x.sin() * x).sum()
        (gx,) = torch.autograd.grad(y, x, create_graph=True)
        return gx.pow(2).sum()

    x = torch.randn(3, dtype=torch.float64)
    b = backend(penalty, x)
    g = b.gradient(False)
    h = 1e-6
    plus, minus = b.evaluate([at(0, 0, h), at(0, 0, -h)], False)
    assert (plus.loss - minus.loss) / (2 * h) == pytest.approx(g.total[0][0], rel=1e-6)
    b.close()


# ------------------------------------------------------------------------ seeding


def test_rng_reset_makes_dropout_evaluations_identical():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1)).train()
    x = torch.randn(6, 5)

    def f(x):
        noise = np.random.rand() + random.random()  # numpy and random are reset too
        return model(x).pow(2).mean() * (1 + 0 * noise) + noise

    b = backend(f, x, params=model, seed=11)
    g = b.gradient(False)
    evs = b.evaluate([Point(()), Point(()), at(1, 0, 1e-7), Point(())], False)
    assert evs[0].loss == evs[1].loss == evs[3].loss == pytest.approx(g.center.loss, rel=1e-15)
    assert evs[2].loss != evs[0].loss
    b.close()
    other = backend(f, x, params=model, seed=12)
    assert other.evaluate([Point(())], False)[0].loss != evs[0].loss
    other.close()


def test_seeded_dropout_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 1)).train()
    b = backend(lambda x: model(x).pow(2).sum(), torch.randn(3, 4), params=model)
    g = b.gradient(False)
    h = 1e-6
    for blk in range(len(b.blocks())):
        plus, minus = b.evaluate([at(blk, 0, h), at(blk, 0, -h)], False)
        assert (plus.loss - minus.loss) / (2 * h) == pytest.approx(g.total[blk][0], abs=1e-7)
    b.close()


# ----------------------------------------------------------------- winner tracking

NEAR = 1e-3  # the coordinate sits this far from its kink
ACROSS, ALONG = 2e-3, 1e-4  # steps that cross it / stay on one side

hinge_target = torch.tensor([0, 1])


def _hinge(s):
    s = s.view(2, 3)
    correct = s.gather(1, hinge_target[:, None])
    return (1 - correct + s).clamp(min=0).sum() - 2


def _x(first, rest=(0.5, -0.7, 1.2, -0.3, 0.8)):
    return [first, *rest]


KINKS = {
    # name: (f, x0, index): x0[index] is NEAR from a kink of f
    "nn.ReLU": (lambda x: nn.ReLU()(x).sum(), _x(NEAR), 0),
    "F.relu": (lambda x: F.relu(x).pow(2).sum() + F.relu(x).sum(), _x(NEAR), 0),
    "relu_ in place": (lambda x: F.relu(x * 1.0, inplace=True).sum(), _x(NEAR), 0),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1).sum(), _x(-NEAR), 0),
    "elu": (lambda x: F.elu(x).sum(), _x(-NEAR), 0),
    "selu": (lambda x: F.selu(x).sum(), _x(NEAR), 0),
    "celu": (lambda x: F.celu(x, alpha=0.5).sum(), _x(-NEAR), 0),
    "hardtanh": (lambda x: F.hardtanh(x).sum(), _x(1 + NEAR), 0),
    "relu6": (lambda x: F.relu6(x * 6).sum(), _x(1 - NEAR / 6), 0),
    "clamp": (lambda x: x.clamp(-0.5, 0.5).sum(), _x(0.5 + NEAR), 0),
    "clamp_min": (lambda x: x.clamp_min(0.2).sum(), _x(0.2 - NEAR), 0),
    "clamp_max": (lambda x: torch.clamp(x, max=0.2).sum(), _x(0.2 + NEAR), 0),
    "clamp_ in place": (lambda x: (x * 1.0).clamp_(min=0.0).sum(), _x(NEAR), 0),
    "maximum": (lambda x: torch.maximum(x, x.new_tensor(_x(0.0, (0,) * 5))).sum(), _x(NEAR), 0),
    "minimum": (lambda x: torch.minimum(x, torch.zeros_like(x)).sum(), _x(-NEAR), 0),
    "max()": (lambda x: x.max() * 3, _x(1.0, (1.0 - NEAR, 0.1, 0.2, 0.3, 0.4)), 0),
    "min()": (lambda x: x.min() * 3, _x(-1.0, (-1.0 + NEAR, 0.1, 0.2, 0.3, 0.4)), 0),
    "max(dim)": (lambda x: x.view(2, 3).max(dim=1).values.sum(), _x(0.5 + NEAR), 0),
    "min(dim)": (lambda x: x.view(2, 3).min(dim=1).values.sum(), _x(-0.7 + NEAR), 0),
    "amax": (lambda x: x.view(2, 3).amax(dim=1).sum(), _x(0.5 + NEAR), 0),
    "argmax": (lambda x: x[x.argmax()] + x.sum(), _x(1.2 - NEAR), 0),
    "argmin": (lambda x: x[x.argmin()] + x.sum(), _x(-0.7 + NEAR), 0),
    "nn.MaxPool1d": (lambda x: nn.MaxPool1d(2)(x.view(1, 1, 6)).sum(), _x(0.5 + NEAR), 0),
    "nn.MaxPool2d": (lambda x: nn.MaxPool2d(2)(x[:4].view(1, 1, 2, 2)).sum(), _x(1.2 - NEAR), 0),
    "F.max_pool3d": (
        lambda x: F.max_pool3d(torch.cat([x, x[:2]]).view(1, 1, 2, 2, 2), 2).sum(),
        _x(1.2 - NEAR),
        0,
    ),
    "adaptive_max_pool1d": (
        lambda x: F.adaptive_max_pool1d(x.view(1, 2, 3), 1).sum(),
        _x(0.5 + NEAR),
        0,
    ),
    "abs": (lambda x: x.abs().sum(), _x(NEAR), 0),
    "sign": (lambda x: (x.sign() * x.pow(2)).sum(), _x(NEAR), 0),
    "sort": (lambda x: (x.sort().values * torch.arange(6.0)).sum(), _x(0.5 + NEAR), 0),
    "topk": (lambda x: (x.topk(3).values * torch.arange(3.0)).sum(), _x(1.2 - NEAR), 0),
    "where(x > 0)": (lambda x: torch.where(x > 0, x, 0.1 * x).sum(), _x(NEAR), 0),
    "where(x < y)": (lambda x: torch.where(x < x.flip(0), x, 2 * x).sum(), _x(0.8 + NEAR), 0),
    "masked_fill(x >= 0)": (lambda x: x.masked_fill(x >= 0, 0.0).sum(), _x(NEAR), 0),
    "smooth_l1": (
        lambda x: F.smooth_l1_loss(x, torch.zeros_like(x), beta=0.5),
        _x(0.5 + NEAR),
        0,
    ),
    "huber": (lambda x: F.huber_loss(x, torch.zeros_like(x), delta=0.5), _x(-0.5 - NEAR), 0),
    "l1_loss": (lambda x: F.l1_loss(x, torch.zeros_like(x)), _x(NEAR), 0),
    "multi_margin_loss": (
        lambda x: F.multi_margin_loss(x.view(2, 3), hinge_target),
        _x(1.0, (NEAR, -0.5, 0.2, 0.3, -0.1)),
        1,
    ),
    "multilabel_margin_loss": (
        lambda x: F.multilabel_margin_loss(x.view(2, 3), torch.tensor([[0, -1, 0], [1, 2, -1]])),
        _x(1.0, (NEAR, -0.5, 0.2, 0.3, -0.1)),
        1,
    ),
    "hinge via clamp": (_hinge, _x(1.0, (NEAR, -0.5, 0.2, 0.3, -0.1)), 1),
    "norm(p=1)": (lambda x: x.norm(p=1), _x(NEAR), 0),
    "floor": (lambda x: x.floor().sum() + x.sum(), _x(1 + NEAR), 0),
}


@pytest.mark.parametrize("name", list(KINKS))
def test_tracker_sees_the_kink(name):
    f, x0, i = KINKS[name]
    b = backend(f, torch.tensor(x0, dtype=torch.float64))
    try:
        center = b.gradient(True).center
        assert center.decisions > 0 and center.signature is not None
        near_plus, near_minus, far_plus, far_minus = b.evaluate(
            [at(0, i, ALONG), at(0, i, -ALONG), at(0, i, ACROSS), at(0, i, -ACROSS)], True
        )
        assert near_plus.signature == near_minus.signature == center.signature
        assert far_plus.signature != far_minus.signature
    finally:
        b.close()


def test_smooth_functions_and_integer_comparisons_record_no_decision():
    labels = torch.tensor([0, 2, 1])
    b = backend(
        lambda x: (x.tanh() * (labels > 0)).sum() + x.softmax(0).max(dim=0).values.sum() / 2,
        torch.randn(3, dtype=torch.float64),
    )
    center = b.gradient(True).center
    assert center.decisions == 1  # the max(dim) only; the integer comparison is not recorded
    b.close()
    b = backend(lambda x: x.tanh().sum() + F.softplus(x).sum(), torch.randn(3))
    center = b.gradient(True).center
    assert center.decisions == 0
    (ev,) = b.evaluate([Point(())], True)
    assert ev.signature == center.signature and ev.decisions == 0
    b.close()


def test_untracked_evaluations_carry_no_signature():
    b = backend(lambda x: F.relu(x).sum(), torch.randn(3))
    assert b.gradient(False).center.signature is None
    assert b.evaluate([Point(())], False)[0].signature is None
    b.close()


# ---------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    x = torch.randn(3)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        backend(lambda x: x.sum(), x, device="cuda")


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="device"):
        backend(lambda x: x.sum(), torch.randn(3), device="tpu")


def test_device_cpu_keeps_cpu_inputs():
    x = torch.randn(3)
    b = backend(lambda x: x.exp().sum(), x, device="cpu")
    g = b.gradient(False)
    np.testing.assert_allclose(g.total[0], x.double().exp().numpy(), rtol=1e-15)
    b.close()


@cuda
def test_cuda_device_moves_the_check_and_restores_the_module():
    model, x = _float32_model()
    y = torch.tensor([0, 1, 2, 1, 0])
    before = _state(model)
    cuda_rng = torch.cuda.get_rng_state_all()
    b = backend(lambda x: F.cross_entropy(model(x), y.to(x.device)), x, params=model, device="cuda")
    assert model[0].weight.device.type == "cuda" and model[0].weight.dtype == torch.float64
    g = b.gradient(True)
    h = 1e-6
    plus, minus = b.evaluate([at(1, 0, h), at(1, 0, -h)], True)
    assert (plus.loss - minus.loss) / (2 * h) == pytest.approx(g.total[1][0], abs=1e-7)
    b.close()
    _assert_same_state(before, model)
    assert all(
        torch.equal(a, c) for a, c in zip(cuda_rng, torch.cuda.get_rng_state_all(), strict=True)
    )


@cuda
def test_inputs_on_the_gpu_are_checked_there():
    model = nn.Linear(3, 2).cuda()
    x = torch.randn(4, 3, device="cuda")
    b = backend(lambda x: F.relu(model(x)).sum(), x, params=model)
    g = b.gradient(True)
    assert model.weight.device.type == "cuda"
    ref = nn.Linear(3, 2).double().cuda()
    ref.load_state_dict(model.state_dict())
    xr = x.double().requires_grad_()
    want = torch.autograd.grad(F.relu(ref(xr)).sum(), [xr, *ref.parameters()])
    for got, w in zip(g.total, want, strict=True):
        np.testing.assert_allclose(got, w.cpu().numpy().ravel(), rtol=1e-12, atol=1e-14)
    b.close()
    assert model.weight.dtype == torch.float32 and model.weight.device.type == "cuda"


@cuda
def test_dropout_on_the_gpu_is_seeded():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1)).cuda().train()
    b = backend(lambda x: model(x).pow(2).sum(), torch.randn(3, 4, device="cuda"), params=model)
    g = b.gradient(False)
    evs = b.evaluate([Point(()), Point(())], False)
    assert evs[0].loss == evs[1].loss == pytest.approx(g.center.loss, rel=1e-14)
    b.close()


def test_a_backward_returning_its_input_is_copied_before_the_block_moves():
    """A custom backward that returns the block itself (a real bug: d/dx of x**2/2
    written as `return x`, forgetting `g *`) hands back the tensor the check perturbs in
    place: the analytic gradient must be the one at the checked point, not whatever the
    block holds later; a gradient only autograd holds is taken without a copy."""

    class ReturnsInput(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x * x).sum() / 2

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return x  # the saved input itself, g ignored (see `_base.COTANGENT`)

    x = torch.randn(5, dtype=torch.float64)
    b = backend(lambda x: ReturnsInput.apply(x), x)
    try:  # (closed whatever happens: an open backend leaves torch's flags changed)
        grad = b.gradient(False)
        at_center = grad.total[0].copy()
        # the loss's cotangent is COTANGENT, not 1: a backward ignoring it is found out
        np.testing.assert_array_equal(at_center, x.numpy() / COTANGENT)
        b.step([np.full(5, 0.5)])  # moves the block in place (burn-in)
        b.evaluate([at(0, 2, 0.5), at(0, 4, -0.25)], False)
        np.testing.assert_array_equal(grad.total[0], at_center)  # not moved with the block
    finally:
        b.close()

    plain = backend(lambda x: (x * x).sum() / 2, x)
    g = plain.gradient(False).total[0]
    assert not g.flags.writeable  # a read-only view of the backward's tensor, not a copy
    np.testing.assert_allclose(g, x.numpy(), rtol=4e-16)  # (x * 3 / 3: 1 ulp at most)
    plain.close()


def test_a_numpy_array_in_a_torch_check_is_data_and_said_so():
    """A NumPy float array beside a tensor is passed to f as data, unchecked: the
    result says so, naming it, instead of checking one block silently."""
    from pytest_gradcheck import gradcheck

    x = np.random.default_rng(0).standard_normal(5)
    t = torch.randn(5, dtype=torch.float64)
    result = gradcheck(lambda a, b: (b * torch.as_tensor(a)).sum(), x, t)
    assert [block.name for block in result.blocks] == ["args[1]"]
    (warning,) = [w for w in result.warnings if "NumPy array" in w]
    assert "args[0] is a NumPy array in a PyTorch check" in warning and "not checked" in warning
    plain = gradcheck(lambda b: (b * 2).sum(), t)
    assert not any("NumPy" in w for w in plain.warnings)
