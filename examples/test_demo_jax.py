"""Gradient checks of JAX code: a pytree MLP with a hinge loss, and a custom_vjp whose
backward rule is wrong on purpose (xfail)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from pytest_gradcheck import GradcheckError  # noqa: E402


def test_pytree_mlp_with_a_hinge_loss(gradcheck):
    """ReLU and hinge kinks are tracked from the jaxpr; float64 only during the check."""
    rng = np.random.default_rng(0)
    params = {
        "W1": jnp.asarray(rng.standard_normal((4, 6)), jnp.float32),
        "W2": jnp.asarray(rng.standard_normal((6, 3)), jnp.float32),
    }
    x, y = jnp.asarray(rng.standard_normal((5, 4))), jnp.asarray(rng.integers(0, 3, 5))

    def loss(p, x, y):
        s = jax.nn.relu(x @ p["W1"]) @ p["W2"]
        correct = jnp.take_along_axis(s, y[:, None], axis=1)
        return jnp.sum(jnp.maximum(0.0, s - correct + 1.0)) / x.shape[0]

    gradcheck(loss, params, x, y)


@jax.custom_vjp
def leaky(x):
    return jnp.where(x > 0, x, 0.1 * x)


leaky.defvjp(
    lambda x: (leaky(x), x),
    lambda x, g: (jnp.where(x > 0, g, 0.01 * g),),  # planted: the slope should be 0.1
)


@pytest.mark.xfail(raises=GradcheckError, strict=True, reason="planted: wrong negative slope")
def test_planted_custom_vjp(gradcheck):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)))
    gradcheck(lambda x: jnp.sum(leaky(x) ** 2), x)
