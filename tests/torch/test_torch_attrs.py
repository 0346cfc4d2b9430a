"""The plain attributes of the modules in params (`backends/_torch_attrs.py`).

A forward that rebinds an attribute of its module (``self.last = y.detach()``) or adds
one (``self.cache = {...}``) leaves the module as it was before the check: the same
objects bound, usable outside vmap, the added ones gone; passing, failing or raising,
batched or not. Real torch, no mocks.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from gradcheck_torch_functions import WrongTanh as _WrongTanh  # noqa: E402

from pytest_gradcheck import GradcheckError, gradcheck  # noqa: E402


class Keeps(nn.Module):
    """A layer that keeps its last output, and a cache it creates on its first forward."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.wrong = wrong
        self.last: torch.Tensor | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        y = _WrongTanh.apply(h) if self.wrong else torch.tanh(h)
        self.last = y.detach()  # rebinds a plain attribute at every call
        self.cache = {"y": y.detach()}  # created by the first forward
        self.calls += 1
        return y


class Outer(nn.Module):
    """`Keeps` as a submodule, and a plain attribute of the outer module too."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.inner = Keeps(wrong)
        self.scale = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.scale = self.scale + 1.0  # rebinds a float: a new object every call
        return self.inner(x)


def _setup(wrong: bool = False):
    torch.manual_seed(0)
    model = Outer(wrong)
    x = torch.randn(4, 3, dtype=torch.float64)
    before = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(4, 2)
    model.inner.last = before  # the object the user holds before the check
    return model, x, before


def _assert_as_before(model: Outer, before: torch.Tensor) -> None:
    inner = model.inner
    assert inner.last is before
    assert torch.equal(inner.last, torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(4, 2))
    assert torch.equal(inner.last + 1, before + 1)  # usable here, outside any vmap
    assert not hasattr(inner, "cache") and "cache" not in inner.__dict__
    assert inner.calls == 0 and model.scale == 2.0
    assert isinstance(inner.lin, nn.Linear) and "lin" in inner._modules  # registries kept


@pytest.mark.parametrize("batch", [True, False])
def test_a_passing_check_puts_the_attributes_back(batch: bool) -> None:
    model, x, before = _setup()
    result = gradcheck(lambda x: model(x).pow(2).sum(), x, params=model, batch=batch)
    assert result.passed
    _assert_as_before(model, before)


def test_the_batched_check_did_leave_a_vmapped_value_to_put_back() -> None:
    # what the restore undoes: inside the check, the forward ran under vmap and bound
    # a batched tensor; a tensor bound during the check's last evaluation is caught
    model, x, before = _setup()
    seen: list[torch.Tensor] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        out = model(x).pow(2).sum()
        seen.append(model.inner.last)
        return out

    gradcheck(f, x, params=model)
    assert all(s is not before for s in seen)
    escaped = 0
    for value in seen:  # the batched calls' values cannot be used out here
        try:
            value + 1
        except RuntimeError:
            escaped += 1
    assert escaped >= 1
    _assert_as_before(model, before)


@pytest.mark.parametrize("batch", [True, False])
def test_a_failing_check_puts_the_attributes_back(batch: bool) -> None:
    model, x, before = _setup(wrong=True)
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: model(x).pow(2).sum(), x, params=model, batch=batch)
    _assert_as_before(model, before)


@pytest.mark.parametrize(
    ("batch", "fail_from"), [(True, 1), (True, 2), (False, 1), (False, 2), (False, 6)]
)
def test_a_check_where_f_raises_puts_the_attributes_back(batch: bool, fail_from: int) -> None:
    # from the first call (the checked point's pass), from the second (batched: the
    # whole pass in one call, which raises after the forward bound a vmapped tensor,
    # and the loop it falls back to raises again) or from a later evaluation
    model, x, before = _setup()
    calls: list[int] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        out = model(x).pow(2).sum()
        calls.append(1)
        if len(calls) >= fail_from:
            raise KeyError("boom")
        return out

    with pytest.raises(KeyError, match="boom"):
        gradcheck(f, x, params=model, batch=batch)
    assert len(calls) >= fail_from
    _assert_as_before(model, before)


@pytest.mark.parametrize("as_list", [True, False])
def test_a_module_inside_a_params_list_or_dict_is_covered(as_list: bool) -> None:
    model, x, before = _setup()
    params = [model] if as_list else {"model": model}
    assert gradcheck(lambda x: model(x).pow(2).sum(), x, params=params)
    _assert_as_before(model, before)


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("how", ["named_parameters", "submodule"])
def test_a_module_f_reaches_through_its_closure_is_covered(how: str, batch: bool) -> None:
    """params=dict(model.named_parameters()), or a submodule as params with its parent
    called through the closure: the modules f reaches are covered too (an audit found
    the attributes left bound, a vmapped value among them)."""
    model, x, before = _setup()
    params = dict(model.named_parameters()) if how == "named_parameters" else model.inner.lin
    assert gradcheck(lambda x: model(x).pow(2).sum(), x, params=params, batch=batch)
    _assert_as_before(model, before)


@pytest.mark.parametrize("batch", [True, False])
def test_an_attribute_the_first_forward_creates_is_deleted(batch: bool) -> None:
    class Caches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.lin(x)
            if not hasattr(self, "cache"):
                self.cache = {"first": y.detach()}
            return y.pow(2).sum()

    torch.manual_seed(0)
    model = Caches()
    assert gradcheck(model, torch.randn(2, 3, dtype=torch.float64), params=model, batch=batch)
    assert "cache" not in model.__dict__ and not hasattr(model, "cache")


def test_an_attribute_the_forward_deletes_is_restored() -> None:
    class Forgets(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1).double()
            self.note = "kept"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.__dict__.pop("note", None)
            return self.lin(x).sum()

    torch.manual_seed(0)
    model = Forgets()
    note = model.note
    assert gradcheck(model, torch.randn(2, 3, dtype=torch.float64), params=model)
    assert model.note is note


def test_old_weight_norm_keeps_its_computed_weight() -> None:
    # the old weight_norm's pre-hook rebinds module.weight (a plain attribute computed
    # from weight_g and weight_v) before every forward
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of parametrizations
        layer = nn.utils.weight_norm(nn.Linear(3, 2).double())
    x = torch.randn(4, 3, dtype=torch.float64)
    layer(x)
    weight = layer.weight
    values = weight.detach().clone()
    assert gradcheck(lambda x: layer(x).pow(2).sum(), x, params=layer)
    assert layer.weight is weight and torch.equal(layer.weight, values)
    assert layer.weight.dtype == torch.float64 and torch.isfinite(layer.weight + 1).all()


def test_what_f_changes_in_place_is_out_of_scope() -> None:
    # a forward hook appending to a list the user owns mutates that list, it rebinds
    # nothing: the list is the same object, with the check's entries in it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    seen: list[torch.Tensor] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o))
    model.log = seen  # also bound as a plain attribute: the binding is kept
    assert gradcheck(lambda x: model(x).sum(), torch.randn(2, 3, dtype=torch.float64), params=model)
    assert model.log is seen and len(seen) > 0
