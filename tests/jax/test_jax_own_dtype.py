"""A check of float32 arrays also looks at the gradient in float32 (`backends/_own_dtype.py`).

The check runs in float64 under a scoped x64 setting, where a custom_vjp rule that
overflows in float32 is finite: ``e / (1 + e)**2`` with ``e = exp(-z)`` passes as happy at
z = -95 while float32 training gets inf/inf = NaN. Where the check cast lower precision,
the backend takes the gradient once more in the dtypes the user gave, under the user's
own x64 setting, and warns.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from gradcheck_own_dtype_util import gradcheck_warnings, own_dtype_warnings  # noqa: E402

from pytest_gradcheck import Tier, gradcheck  # noqa: E402

X64_AT_IMPORT = bool(jax.config.jax_enable_x64)

#: z = -95 overflows exp(-z) in float32 (exp(95) = 1.8e41 > 3.4e38), not in float64
Z = [-95.0, -1.0, 0.5, 2.0]


def _sigmoid(stable: bool, seen: list[str] | None = None):
    """sigmoid with a custom_vjp rule: from exp(-z) (unstable in float32) or from the
    forward's output s * (1 - s) (stable); `seen` gets the dtype of every bwd trace."""

    @jax.custom_vjp
    def sigmoid(z):
        return 1 / (1 + jnp.exp(-z))

    def fwd(z):
        return sigmoid(z), z

    def bwd(z, g):
        if seen is not None:
            seen.append(str(z.dtype))
        if stable:
            s = 1 / (1 + jnp.exp(-z))
            return (g * s * (1 - s),)
        e = jnp.exp(-z)
        return (g * e / (1 + e) ** 2,)

    sigmoid.defvjp(fwd, bwd)
    return sigmoid


def test_a_float32_custom_vjp_that_overflows_passes_in_float64_and_is_warned():
    sigmoid = _sigmoid(stable=False)
    z = jnp.asarray(Z, dtype=jnp.float32)
    result, issued = gradcheck_warnings(lambda z: sigmoid(z).sum(), z)
    assert result.passed and result.tier is Tier.HAPPY
    [found] = own_dtype_warnings(result)
    assert found.startswith("block 'args[0]' (float32): in float32, the dtype f was given")
    assert "not finite in 1 of its 4 entries: nan at index 0," in found
    assert found in issued
    assert bool(jax.config.jax_enable_x64) == X64_AT_IMPORT


def test_params_entries_name_the_block_and_are_put_back():
    sigmoid = _sigmoid(stable=False)
    w = jnp.asarray([[-95.0, 1.0], [0.5, 2.0]], dtype=jnp.float32)
    params = {"w": w}
    result = gradcheck(lambda: sigmoid(params["w"]).sum(), params=params)
    [found] = own_dtype_warnings(result)
    assert found.startswith("block 'w' (float32)")
    assert "nan at index (0, 0) (flat index 0)," in found
    assert params["w"] is w


def test_a_stable_custom_vjp_gets_no_warning():
    seen: list[str] = []
    sigmoid = _sigmoid(stable=True, seen=seen)
    z = jnp.asarray(Z, dtype=jnp.float32)
    result, issued = gradcheck_warnings(lambda z: sigmoid(z).sum(), z)
    assert result.passed and result.tier is Tier.HAPPY
    assert own_dtype_warnings(result) == [] and issued == []
    assert "float32" in seen  # the pass ran, and found nothing


def test_a_float64_check_runs_no_pass_in_another_dtype():
    seen: list[str] = []
    sigmoid = _sigmoid(stable=False, seen=seen)
    with jax.enable_x64(True):
        z64 = jnp.asarray(Z, dtype=jnp.float64)
    dtypes: list[str] = []

    def f(z):
        dtypes.append(str(z.dtype))
        return sigmoid(z).sum()

    result = gradcheck(f, z64)
    assert result.passed and own_dtype_warnings(result) == []
    assert set(dtypes) == {"float64"} and set(seen) == {"float64"}
    gradcheck(f, jnp.asarray(Z, dtype=jnp.float32))
    assert dtypes.count("float32") == 1 and "float32" in seen


@pytest.mark.skipif(X64_AT_IMPORT, reason="x64 is on globally in this session")
def test_the_pass_runs_under_the_users_x64_setting_not_the_checks():
    # under the check's x64, jnp.zeros(4) is float64 and promotes z: nothing overflows;
    # under the user's setting it is float32, as in their training
    sigmoid = _sigmoid(stable=False)
    z = jnp.asarray(Z, dtype=jnp.float32)
    result = gradcheck(lambda z: sigmoid(z + jnp.zeros(4)).sum(), z)
    [found] = own_dtype_warnings(result)
    assert "nan at index 0," in found


def test_float32_inputs_under_x64_enabled_by_the_user_are_still_looked_at_in_float32():
    sigmoid = _sigmoid(stable=False)
    z = jnp.asarray(Z, dtype=jnp.float32)
    with jax.enable_x64(True):
        result = gradcheck(lambda z: sigmoid(z).sum(), z)
    [found] = own_dtype_warnings(result)
    assert "(float32): in float32" in found


def test_an_f_jit_cannot_trace_is_looked_at_eagerly():
    sigmoid = _sigmoid(stable=False)
    z = jnp.asarray(Z, dtype=jnp.float32)

    def f(z):
        scale = 1.0 if z[3] > 0 else 2.0  # Python control flow on a value: no jit
        return scale * sigmoid(z).sum()

    result = gradcheck(f, z)
    assert any("evaluated eagerly" in w for w in result.warnings)
    [found] = own_dtype_warnings(result)
    assert "nan at index 0," in found


def test_an_index_array_of_the_closure_does_not_stop_the_pass():
    """``log_softmax(s)[jnp.arange(n), y]`` with y a NumPy int array: traced without x64
    after the check's x64 trace, JAX mixed int64 and int32 in its own index code, and
    the pass raised (a notice, no look at the gradient); it is taken with x64 then."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((6, 4)), dtype=jnp.float32)
    x = jnp.asarray(rng.standard_normal((8, 6)), dtype=jnp.float32)
    y = rng.integers(0, 4, 8)
    sigmoid = _sigmoid(stable=False)

    def f(w):
        s = x @ w
        return -jnp.mean(jax.nn.log_softmax(s)[jnp.arange(8), y]) + sigmoid(w[0] - 95).sum()

    result = gradcheck(f, w)
    assert result.passed
    assert not [m for m in result.warnings if "could not also be evaluated" in m]
    [found] = own_dtype_warnings(result)  # the pass ran: the overflow in row 0 is seen
    assert "(float32): in float32" in found and "index (0, 0)" in found


def test_a_loss_that_overflows_in_float32_is_warned():
    z = jnp.asarray([100.0, 1.0], dtype=jnp.float32)  # exp(100) = 2.7e43: inf in float32
    result, issued = gradcheck_warnings(lambda z: jnp.exp(z).sum(), z)
    assert result.passed
    [found] = [w for w in result.warnings if w.startswith("the loss at the checked point")]
    assert found.startswith("the loss at the checked point is inf in float32, the dtype f was")
    assert found in issued


def test_an_f_that_cannot_run_in_its_own_dtypes_gets_a_notice_and_its_check():
    def f(z):
        if z.dtype != jnp.float64:
            raise TypeError("this f computes in float64 only")
        return jnp.sum(jnp.sin(z))

    result, issued = gradcheck_warnings(f, jnp.asarray(Z, dtype=jnp.float32))
    assert result.passed and result.tier is Tier.HAPPY
    [notice] = [w for w in result.warnings if "could not also be evaluated" in w]
    assert notice.startswith("checked in float64: ")
    assert "TypeError: this f computes in float64 only" in notice
    assert issued == []


def test_bfloat16_names_its_dtype():
    sigmoid = _sigmoid(stable=False)
    z = jnp.asarray([-95.0, 0.5], dtype=jnp.bfloat16)  # bfloat16 has float32's range
    result = gradcheck(lambda z: sigmoid(z).sum(), z)
    [found] = own_dtype_warnings(result)
    assert found.startswith("block 'args[0]' (bfloat16): in bfloat16, the dtype f was given")
    assert np.isnan(float(jax.grad(lambda z: sigmoid(z).sum())(z)[0]))  # as training sees
