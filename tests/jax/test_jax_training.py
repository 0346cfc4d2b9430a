"""Training-aware checks on JAX pytrees: term isolation and burn-in."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from pytest_gradcheck import Tier, gradcheck  # noqa: E402


def _scaled_identity(scale):
    """x -> x whose backward multiplies the cotangent by `scale` (a planted bug)."""

    @jax.custom_vjp
    def ident(x):
        return x

    ident.defvjp(lambda x: (x, None), lambda _, g: (scale * g,))
    return ident


def make(strength, data_scale=1.0, reg_scale=1.0):
    rng = np.random.default_rng(0)
    params = {
        "W": jnp.asarray(rng.standard_normal((4, 3)), dtype=jnp.float32),
        "b": jnp.asarray(0.1 * rng.standard_normal(3), dtype=jnp.float32),
    }
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    data_w, reg_w = _scaled_identity(data_scale), _scaled_identity(reg_scale)

    def loss(p):
        logits = x @ data_w(p["W"]) + p["b"]
        logp = jax.nn.log_softmax(logits)
        data = -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=1))
        return {"data": data, "reg": strength * jnp.sum(reg_w(p["W"]) ** 2)}

    return params, loss


def test_reg_bug_under_tiny_strength_is_caught_in_the_reg_term():
    params, loss = make(1e-9, reg_scale=2.0)
    result = gradcheck(loss, params, raise_on_fail=False)
    assert not result.passed
    total_w = next(b for b in result.blocks if b.name.endswith("['W']"))
    assert total_w.tier <= Tier.OK
    reg_w = next(b for b in result.terms["reg"].blocks if b.name.endswith("['W']"))
    assert reg_w.tier is Tier.WRONG and result.terms["data"].passed


def test_data_bug_under_huge_strength_is_caught_in_the_data_term_and_warned():
    params, loss = make(1e5, data_scale=1.5)
    result = gradcheck(loss, params, raise_on_fail=False)
    assert not result.passed
    data_w = next(b for b in result.terms["data"].blocks if b.name.endswith("['W']"))
    assert data_w.tier is Tier.WRONG
    assert any("dominates" in w for w in result.warnings)


def test_burn_in_on_a_pytree_lowers_the_loss_and_leaves_the_arrays_alone():
    params, loss = make(0.01)
    before = {k: np.array(v) for k, v in params.items()}
    result = gradcheck(loss, params, burn_in=5, burn_in_lr=0.5)
    assert result.passed and len(result.burn_in_losses) == 6
    assert result.burn_in_losses[-1] < result.burn_in_losses[0]
    for k, v in params.items():
        assert np.array_equal(np.asarray(v), before[k])
