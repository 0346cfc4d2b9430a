"""Gradient checks of JAX functions inside Hypothesis `@given` tests (inner pytest run in
a subprocess, since it imports JAX; 64-bit mode stays off globally there).

A JAX check compiles per shape, so these runs keep to few examples: a correct MLP over
random layer sizes and initialisations, and a custom VJP right only for a batch of one
row, found and shrunk to two rows.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("jax")

JAX_TESTS = """
import jax
import jax.numpy as jnp
from hypothesis import Phase, given, settings, strategies as st

from pytest_gradcheck import strategies as gst

assert not jax.config.jax_enable_x64  # the strategies scope 64-bit mode themselves


@jax.custom_vjp
def affine(x, W, b):
    return x @ W + b


def affine_fwd(x, W, b):
    return x @ W + b, (x, W)


def affine_bwd(res, dout):
    x, W = res
    return dout @ W.T, x.T @ dout, dout[0]  # should be dout.sum(0)


affine.defvjp(affine_fwd, affine_bwd)


@settings(
    max_examples=10,
    deadline=None,
    database=None,
    derandomize=True,
    report_multiple_bugs=False,
    phases=[Phase.generate, Phase.shrink],
)
@given(data=st.data(), batch=st.integers(1, 4))
def test_batch_bug(gradcheck, data, batch):
    x = data.draw(gst.arrays("jax", (batch, 1)), label="x")
    W = data.draw(gst.arrays("jax", (1, 1)), label="W")
    b = data.draw(gst.arrays("jax", (1,)), label="b")
    gradcheck(affine, x, W, b, samples_per_block=2)


@settings(max_examples=4, deadline=None, database=None, derandomize=True)
@given(
    data=st.data(),
    params=gst.mlp_params("jax", max_layers=2, max_width=3, scale=st.sampled_from([0.5, 2.0])),
)
def test_mlp(gradcheck, data, params):
    x = data.draw(gst.arrays("jax", (2, params["W1"].shape[0])), label="x")
    assert x.dtype == jnp.float64 and all(v.dtype == jnp.float64 for v in params.values())

    def mlp(x, params):
        h = x
        for i in range(1, len(params) // 2 + 1):
            h = jnp.tanh(h @ params[f"W{i}"] + params[f"b{i}"])
        return h.sum()

    gradcheck(mlp, x, params, samples_per_block=2)
"""


def test_jax_functions_under_given(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=JAX_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rA", "--gradcheck-json=checks.json"
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    assert "PASSED test_inner.py::test_mlp" in out
    assert "HealthCheck" not in out
    failure = out.split("_ test_batch_bug _")[1]
    assert "GradcheckError" in failure
    assert "batch=2," in failure, failure  # shrunk to the smallest failing batch
    assert "block 'args[2]' (shape (1,), float64): tier wrong" in failure

    checks = json.loads((pytester.path / "checks.json").read_text())["checks"]
    mlp = [c for c in checks if c["nodeid"].endswith("::test_mlp")]
    assert len(mlp) >= 4
    assert all(c["passed"] and c["framework"] == "jax" for c in mlp)
    assert all(b["dtype"] == "float64" for c in mlp for b in c["blocks"])
    assert re.search(r"::test_mlp\s[^:]*\(\d+ examples", out), out
