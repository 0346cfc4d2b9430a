"""Bad input never passes silently, on every backend alike.

Inputs the check cannot learn anything from, options a backend cannot honour and
values the check cannot compute with raise a ValueError or TypeError that names the
block or the option and says what to do, never a GradcheckError and never a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pytest_gradcheck import gradcheck

FRAMEWORKS = ("numpy", "torch", "jax")


def square_check(framework: str, x: np.ndarray) -> tuple[Callable[..., Any], tuple, dict]:
    """``sum(x**2)`` in `framework` with `x` as its one block: (f, args, keywords)."""
    if framework == "torch":
        torch = pytest.importorskip("torch")
        return (lambda t: t.pow(2).sum()), (torch.from_numpy(x.copy()),), {}
    if framework == "jax":
        jax = pytest.importorskip("jax")
        jnp = jax.numpy
        return (lambda a: jnp.sum(a**2)), (jnp.asarray(x),), {}
    return (lambda a: np.sum(a**2)), (x.copy(),), {"grad": lambda a: 2 * a}


# -- empty blocks -------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_empty_block_is_an_error_naming_it(framework):
    f, args, kw = square_check(framework, np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"block 'args\[0\]' has no entries.*wrt="):
        gradcheck(f, *args, **kw)


def test_an_empty_block_beside_a_real_one_is_an_error_and_wrt_leaves_it_out():
    x, empty = np.arange(1.0, 4.0), np.zeros(0)

    def f(a, b):
        return np.sum(a**2) + np.sum(b**2)

    def g(a, b):
        return 2 * a, 2 * b

    with pytest.raises(ValueError, match=r"block 'args\[1\]' has no entries"):
        gradcheck(f, x, empty, grad=g)
    assert gradcheck(f, x, empty, grad=g, wrt=["args[0]"]).passed


def test_an_empty_module_parameter_is_named():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2).double()
    model.register_parameter("extra", torch.nn.Parameter(torch.zeros(0, dtype=torch.float64)))
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"block 'extra' has no entries"):
        gradcheck(lambda x: model(x).sum(), x, params=model)
    assert gradcheck(lambda x: model(x).sum(), x, params=model, wrt=["weight", "bias"]).passed
