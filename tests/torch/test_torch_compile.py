"""torch.compile'd code in a check: checked eagerly, and still compiled afterwards.

The check runs f under a TorchDispatchMode, and Dynamo answers a frame it intercepts
under a dispatch mode by marking the frame's code object "skip" for the rest of the
process: after a check the user's compiled function or module never compiled again
(and, through the code object Dynamo wraps every compiled built-in module's top frame
in, no compiled built-in module at all). The check now runs compiled code eagerly
(`backends/_torch_compiled.py`). Each test counts compilations with a backend of its
own (a fresh backend is also a fresh cache: Dynamo does not reuse another backend's
graphs) and asserts that a plain call after the check compiles (a graph or more: Dynamo
may split f at a graph break).
"""

import warnings

import pytest

from pytest_gradcheck import GradcheckError, gradcheck
from pytest_gradcheck._notices import COMPILE_NOTICE, alarming

torch = pytest.importorskip("torch")
eval_frame = pytest.importorskip("torch._dynamo.eval_frame")

from gradcheck_torch_functions import Cube as _Cube  # noqa: E402


def counting():
    """A compile backend that runs Dynamo's graph as it is, and the list it counts in."""
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    return backend, compiles


class _BadCube(_Cube):
    """... wrong by 10%."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3.3 * x**2


class _Net(torch.nn.Module):
    """A user-defined forward (a frame Dynamo compiles) with a helper it calls."""

    def __init__(self, cube=_Cube):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2, dtype=torch.float64)
        self.cube = cube

    def forward(self, x):
        return _squash(self.cube.apply(self.lin(x))).sum()


def _squash(y):
    return torch.tanh(y) * 0.5


def _x(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _check(*args, **kwargs):
    """gradcheck with warnings as errors: the notice must not be a GradcheckWarning."""
    stance = eval_frame._stance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            result = gradcheck(*args, **kwargs)
        finally:
            assert eval_frame._stance is stance  # the user's stance is back
    notices = [w for w in result.warnings if COMPILE_NOTICE in w]
    assert len(notices) == 1, result.warnings
    assert not alarming(result.warnings)
    return result


def _failing(*args, **kwargs):
    stance = eval_frame._stance
    with pytest.raises(GradcheckError) as raised:
        gradcheck(*args, **kwargs)
    assert eval_frame._stance is stance
    assert not raised.value.result.passed
    assert any(COMPILE_NOTICE in w for w in raised.value.result.warnings)
    return raised.value.result


def test_a_compiled_function_is_checked_and_still_compiles_afterwards():
    backend, compiles = counting()

    @torch.compile(backend=backend)
    def f(x, w):
        return _squash(_Cube.apply(x @ w)).sum()

    x, w = _x(4, 3), _x(3, 2, seed=1)
    assert _check(f, x, w).passed
    assert compiles == []  # the check ran the eager code: nothing compiled for it
    xr = x.clone().requires_grad_()
    f(xr, w).backward()
    assert compiles  # before the fix: 0, f ran eagerly for good


def test_a_compiled_function_with_a_wrong_backward_fails_and_still_compiles_afterwards():
    backend, compiles = counting()

    @torch.compile(backend=backend)
    def f(x):
        return _BadCube.apply(torch.sin(x)).sum()

    x = _x(5)
    result = _failing(f, x)
    assert [b.name for b in result.blocks if not b.passed] == ["args[0]"]
    assert compiles == []
    f(x.clone().requires_grad_())
    assert compiles


def test_a_compiled_module_as_f_and_params_is_checked_and_still_compiles_afterwards():
    backend, compiles = counting()
    net = torch.compile(_Net(), backend=backend)
    x = _x(4, 3)
    result = _check(net, x, params=net)
    assert result.passed
    # named as the model names them: torch.compile's `_orig_mod` level left out
    assert {b.name for b in result.blocks} >= {"lin.weight", "lin.bias"}
    assert not any("_orig_mod" in b.name for b in result.blocks)
    assert compiles == []
    net(x)
    assert compiles  # before the fix: 0 (the forward and _squash were marked)


def test_a_compiled_module_with_a_wrong_backward_fails_and_still_compiles_afterwards():
    backend, compiles = counting()
    module = _Net(cube=_BadCube)
    net = torch.compile(module, backend=backend)
    x = _x(4, 3)
    result = _failing(lambda x: net(x), x, params=module)
    assert not all(b.passed for b in result.blocks)
    assert compiles == []
    net(x)
    assert compiles


def test_a_compiled_builtin_module_leaves_every_compiled_builtin_module_compiling():
    """Dynamo runs every compiled built-in module through one wrapper code object
    (``external_utils.wrap_inline``'s ``inner``): a check of one compiled Linear,
    reached through f's closure, used to mark it and so stop all of them compiling."""
    backend, compiles = counting()
    lin = torch.nn.Linear(3, 2, dtype=torch.float64)
    compiled = torch.compile(lin, backend=backend)
    x = _x(4, 3)
    assert _check(lambda x: compiled(x).pow(2).sum(), x, params=lin).passed
    assert compiles == []
    other_backend, other_compiles = counting()
    other = torch.compile(torch.nn.Linear(5, 1, dtype=torch.float64), backend=other_backend)
    other(_x(2, 5))
    assert other_compiles  # before the fix: 0
    compiled(x)
    assert compiles


def test_a_module_compiled_in_place_is_checked_and_still_compiles_afterwards():
    backend, compiles = counting()
    net = _Net()
    net.compile(backend=backend)
    x = _x(4, 3)
    assert _check(net, x, params=net).passed
    assert compiles == []
    net(x)
    assert compiles
