"""torch's generator is one of the global RNGs for every backend: a NumPy or JAX
function that draws its dropout mask from ``torch.rand`` sees the same mask at every
evaluation, and torch's state comes back exactly after the check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_gradcheck import gradcheck


def test_a_numpy_function_drawing_from_torch_is_deterministic_and_restored():
    torch.manual_seed(123)
    torch.rand(5)  # mid-stream
    before = torch.get_rng_state()
    masks = []

    def f(x):
        mask = (torch.rand(x.shape, dtype=torch.float64) > 0.5).numpy()
        masks.append(mask)
        return float(np.sum((x * mask) ** 2))

    def grad(x):
        mask = (torch.rand(x.shape, dtype=torch.float64) > 0.5).numpy()
        return (2 * x * mask,)

    x = np.linspace(-1.0, 1.0, 12)
    result = gradcheck(f, x, grad=grad, seed=7)
    assert result.passed and result.tier.name == "HAPPY"
    assert len(masks) == result.evaluations
    assert all(np.array_equal(m, masks[0]) for m in masks)
    assert torch.equal(torch.get_rng_state(), before)
    seeded = torch.Generator().manual_seed(7)
    expected = torch.rand(12, dtype=torch.float64, generator=seeded) > 0.5
    assert np.array_equal(masks[0], expected.numpy())


def test_torch_state_is_restored_after_a_failing_numpy_check():
    torch.manual_seed(5)
    before = torch.get_rng_state()

    def f(x):
        torch.rand(3)
        return float(np.sum(x**2))

    with pytest.raises(AssertionError):
        gradcheck(f, np.ones(4), grad=lambda x: (3 * x,))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_jax_function_drawing_from_torch_leaves_its_state():
    jnp = pytest.importorskip("jax.numpy")
    torch.manual_seed(9)
    before = torch.get_rng_state()

    def f(x):
        torch.rand(3)
        return (x**2).sum()

    assert gradcheck(f, jnp.linspace(-1.0, 1.0, 4), batch=False).passed
    assert torch.equal(torch.get_rng_state(), before)


def _torch_draws():
    return torch.rand(4).tolist(), torch.randn(3).tolist(), torch.randn(1).tolist()


def test_every_reseed_gives_torch_what_its_seed_gives():
    """torch's CPU generator is seeded again only where f drew from it since the last
    reset (its state is compared with the seeded one): whatever f drew before (normals
    leave a cached sample), whether it drew or not, and after f seeded it itself, the
    next draws are those after manual_seed; the user's state comes back after."""
    from pytest_gradcheck.backends._rng import GlobalRng

    torch.manual_seed(3)
    torch.randn(1)  # mid-stream, a normal cached
    before = torch.get_rng_state()
    expected = _torch_draws_after_seed(5)
    torch.set_rng_state(before)
    rng = GlobalRng(5)
    for act in ("draw", "none", "none", "draw", "seed", "draw", "none"):
        rng.reseed()
        if act == "draw":
            assert _torch_draws() == expected
        elif act == "seed":
            torch.manual_seed(99)  # f seeds torch itself and draws nothing
    rng.reseed()
    assert _torch_draws() == expected
    rng.restore()
    assert torch.equal(torch.get_rng_state(), before)


def _torch_draws_after_seed(seed):
    torch.default_generator.manual_seed(seed)
    return _torch_draws()
