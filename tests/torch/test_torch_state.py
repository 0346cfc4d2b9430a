"""State f writes into that the check did not take (`backends/_torch_state.py`).

A train-mode BatchNorm read through params=dict, a list or a closure, a hand-written
cache: whatever f writes in place is as it was after the check (values and storage),
passing, failing or raising, and every evaluation starts from it. Real torch, no mocks.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from gradcheck_torch_functions import WrongTanh as _WrongTanh  # noqa: E402

from pytest_gradcheck import GradcheckError, gradcheck  # noqa: E402
from pytest_gradcheck.backends._base import Settings  # noqa: E402
from pytest_gradcheck.backends.torch import TorchBackend  # noqa: E402


def _bn_model(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1))
    model.to(dtype).train()
    with torch.no_grad():  # non-default statistics: a reset to the defaults would show
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].num_batches_tracked.fill_(7)
    return model, torch.randn(8, 4, dtype=dtype)


def _buffers(model):
    """Each buffer: the object, its storage address and its bytes."""
    return {
        name: (b, b.untyped_storage().data_ptr(), b.detach().clone())
        for name, b in model.named_buffers()
    }


def _assert_same_buffers(before, model):
    for name, b in model.named_buffers():
        obj, at, values = before[name]
        assert b is obj and b.untyped_storage().data_ptr() == at, name
        assert b.dtype == values.dtype and torch.equal(b, values), name


def _params(kind, model):
    if kind == "dict":
        return dict(model.named_parameters())
    if kind == "list":
        return list(model.parameters())
    return None  # the module only through f's closure


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("kind", ["dict", "list", "closure"])
def test_batchnorm_statistics_are_restored_when_params_is_not_the_module(kind, batch):
    model, x = _bn_model()
    before = _buffers(model)
    result = gradcheck(
        lambda x: model(x).pow(2).mean(), x, params=_params(kind, model), batch=batch
    )
    assert result.passed
    _assert_same_buffers(before, model)
    assert not any("updates" in w for w in result.warnings)  # not read back: nothing to say


def test_float32_batchnorm_counter_is_restored():
    # the float32 statistics are promoted to float64 copies for the check (the user's
    # are never written); num_batches_tracked is written in place
    model, x = _bn_model(torch.float32)
    before = _buffers(model)
    assert gradcheck(lambda x: model(x).pow(2).mean(), x, params=dict(model.named_parameters()))
    _assert_same_buffers(before, model)


def test_restored_after_a_failing_check():
    model, x = _bn_model()
    before = _buffers(model)
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: _WrongTanh.apply(model(x)).sum(), x, params=list(model.parameters()))
    _assert_same_buffers(before, model)


@pytest.mark.parametrize("fail_at", [1, 5])
def test_restored_when_f_raises(fail_at):
    # at the first call (inside the checked point's pass, which finds the statistics) and
    # at a later one (an evaluation that only puts back what is known)
    model, x = _bn_model()
    before = _buffers(model)
    calls = []

    def f(x):
        out = model(x).pow(2).mean()
        calls.append(1)
        if len(calls) == fail_at:
            raise KeyError("boom")
        return out

    with pytest.raises(KeyError, match="boom"):
        gradcheck(f, x, params=dict(model.named_parameters()), batch=False)
    _assert_same_buffers(before, model)


def test_every_evaluation_starts_from_the_state_before_the_check():
    # f reads a tensor it then updates: without the reset each difference would see a
    # state moved by every earlier call, and the check would fail (or call f random)
    state = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    before = state.clone()
    at = state.untyped_storage().data_ptr()

    def f(x):
        out = (x + state).sin().sum()
        state.add_(0.25)
        return out

    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    result = gradcheck(f, x)
    assert result.passed
    assert torch.equal(state, before) and state.untyped_storage().data_ptr() == at


def test_a_function_that_writes_nothing_saves_nothing():
    model = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    b = TorchBackend(lambda x: model(x).pow(2).sum(), (x,), model, None, Settings())
    try:
        b.gradient(True)
        assert b._state.entries == []
    finally:
        b.close()


def test_tensors_f_creates_and_writes_into_are_not_saved():
    # new storages (factories, copies, torch.tensor) and views of them are f's own;
    # only the statistics, which existed before f, are saved
    model, x = _bn_model()

    def f(x):
        scratch = torch.zeros(3, dtype=torch.float64)
        scratch[0] = x.sum()
        scratch.add_(1.0)
        offset = torch.tensor([0.5], dtype=torch.float64)
        offset.mul_(2.0)
        y = x.clone()
        y[:, 0].add_(offset)
        return model(y).pow(2).mean() + scratch.sum()

    b = TorchBackend(f, (x,), None, None, Settings())
    try:
        b.gradient(True)
        saved = {e.tensor.untyped_storage().data_ptr() for e in b._state.entries}
        expected = {t.untyped_storage().data_ptr() for n, t in model[1].named_buffers()}
        assert saved == expected
    finally:
        b.close()


# -- what f reads back of what it updated: spectral_norm in training mode ------------


def _spectral(train: bool):
    torch.manual_seed(0)
    model = nn.utils.spectral_norm(nn.Linear(6, 4).double())
    model.train(train)
    return model, torch.randn(5, 6, dtype=torch.float64)


@pytest.mark.parametrize("as_dict", [False, True])
def test_spectral_norm_in_train_mode_names_its_buffers_and_hints_eval_mode(as_dict):
    model, x = _spectral(train=True)
    u, v = model.weight_u.clone(), model.weight_v.clone()
    params = dict(model.named_parameters()) if as_dict else model
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x: torch.tanh(model(x)).pow(2).sum(), x, params=params)
    message = str(info.value)
    assert "f updates 'weight_v'" in message and "'weight_u'" in message
    assert "hint: f updates" in message and "model.eval()" in message
    assert torch.equal(model.weight_u, u) and torch.equal(model.weight_v, v)


def test_spectral_norm_in_eval_mode_passes_without_the_warning():
    model, x = _spectral(train=False)
    result = gradcheck(lambda x: torch.tanh(model(x)).pow(2).sum(), x, params=model)
    assert result.passed and not any("updates" in w for w in result.warnings)


# -- nn.Embedding's padding row --------------------------------------------------------


def _embedding():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, padding_idx=0).double()
    head = nn.Linear(4, 1).double()
    idx = torch.tensor([[0, 3, 3, 9], [1, 0, 2, 2]])
    return emb, nn.ModuleDict({"emb": emb, "head": head}), idx


def test_failing_padding_row_gets_a_hint_naming_padding_idx():
    emb, model, idx = _embedding()
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda idx: model["head"](emb(idx)).pow(2).sum(), idx, params=model)
    message = str(info.value)
    assert "f reads row 0 of 'emb.weight' through an embedding with padding_idx=0" in message
    assert "hint: every failing coordinate of block 'emb.weight' is in row 0" in message


def test_padding_row_hint_is_not_given_for_another_row():
    # a wrong gradient elsewhere in the weight: the padding row is not the explanation
    emb, model, idx = _embedding()
    emb.padding_idx = None  # full gradient: the padding row passes
    result = gradcheck(
        lambda idx: _WrongTanh.apply(model["head"](emb(idx))).sum(),
        idx,
        params=model,
        raise_on_fail=False,
    )
    assert not result.passed
    assert not any("padding" in w for w in result.warnings)
    emb.padding_idx = 0
    result = gradcheck(
        lambda idx: _WrongTanh.apply(model["head"](emb(idx))).sum(),
        idx,
        params=model,
        raise_on_fail=False,
    )
    assert not result.passed and "every failing coordinate" not in result.report()


def test_padding_idx_none_for_the_check_passes():
    emb, model, idx = _embedding()
    emb.padding_idx = None
    assert gradcheck(lambda idx: model["head"](emb(idx)).pow(2).sum(), idx, params=model)
