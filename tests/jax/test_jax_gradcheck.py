"""`gradcheck` on JAX functions, end to end: planted bugs fail, correct models pass.

The planted bugs live in `jax.custom_vjp` layers (JAX's own gradients are right), the
way a hand-written backward rule of a Pallas or FFI kernel can be wrong.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from pytest_gradcheck import GradcheckError, Tier, gradcheck  # noqa: E402
from pytest_gradcheck._text import hints  # noqa: E402

X64_AT_IMPORT = bool(jax.config.jax_enable_x64)


# ---------------------------------------------------------------- layers with custom rules


def _make_dense(scale_dw=1.0):
    """y = x @ W + b with a hand-written backward rule (dW optionally scaled: a bug)."""

    @jax.custom_vjp
    def dense(w, b, x):
        return x @ w + b

    def fwd(w, b, x):
        return x @ w + b, (w, x)

    def bwd(res, g):
        w, x = res
        return scale_dw * (x.T @ g), g.sum(0), g @ w.T

    dense.defvjp(fwd, bwd)
    return dense


def _make_affine(swap=False):
    """y = a * x + c (per feature); the buggy rule sends da into c and dc into a."""

    @jax.custom_vjp
    def affine(a, c, x):
        return a * x + c

    def fwd(a, c, x):
        return a * x + c, (a, x)

    def bwd(res, g):
        a, x = res
        da, dc = (g * x).sum(0), g.sum(0)
        if swap:
            da, dc = dc, da
        return da, dc, g * a

    affine.defvjp(fwd, bwd)
    return affine


def _make_relu(wrong_mask=False):
    """ReLU with a hand-written backward; the bug masks with out >= 0 (always true)."""

    @jax.custom_vjp
    def relu(x):
        return jnp.maximum(x, 0.0)

    def fwd(x):
        out = jnp.maximum(x, 0.0)
        return out, (x, out)

    def bwd(res, g):
        x, out = res
        mask = out >= 0 if wrong_mask else x > 0
        return (g * mask,)

    relu.defvjp(fwd, bwd)
    return relu


# Test data comes from NumPy: every eager jax.random call would compile a program.


def _normal(seed, shape, scale=1.0):
    values = np.random.default_rng(seed).standard_normal(shape) * scale
    return jnp.asarray(values, jnp.float32)


def _init(seed, sizes):
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes), start=1):
        params[f"W{i}"] = _normal((seed, i), (n_in, n_out), 1 / np.sqrt(n_in))
        params[f"b{i}"] = _normal((seed, i, 1), (n_out,), 0.1)
    return params


def _data(seed, n=4, d=5, classes=3):
    rng = np.random.default_rng(1000 + seed)
    return _normal((1000, seed), (n, d)), jnp.asarray(rng.integers(0, classes, n))


def _cross_entropy(scores, y):
    logp = jax.nn.log_softmax(scores)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _hinge(scores, y):
    correct = jnp.take_along_axis(scores, y[:, None], axis=1)
    margins = jnp.maximum(0.0, scores - correct + 1.0)
    margins = jnp.where(jax.nn.one_hot(y, scores.shape[1]) > 0, 0.0, margins)
    return jnp.mean(jnp.sum(margins, axis=1))


def _model(dense=None, relu=None, affine=None, loss=_cross_entropy):
    dense = dense or _make_dense()
    relu = relu or jax.nn.relu

    def f(p, x, y):
        h = relu(dense(p["W1"], p["b1"], x))
        if affine is not None:
            h = affine(p["a"], p["c"], h)
        return loss(dense(p["W2"], p["b2"], h), y)

    return f


def _failing_names(result):
    return {block.name for _, block in result.failing()}


# ---------------------------------------------------------------- planted bugs


def test_scaled_gradient_fails_and_names_the_block():
    p = _init(0, [5, 6, 3])
    x, y = _data(0)
    f = _model(dense=_make_dense(scale_dw=1.1))
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, p, x, y)
    result = info.value.result
    assert _failing_names(result) == {"args[0]['W1']", "args[0]['W2']"}
    assert result.tier == Tier.WRONG
    assert "args[0]['W1']" in str(info.value)
    gradcheck(_model(), p, x, y)  # the same model with the right rule passes


def test_gradient_into_the_wrong_block_fails_and_names_both():
    p = _init(1, [5, 6, 3])
    p["a"] = jnp.linspace(0.5, 1.5, 6)
    p["c"] = jnp.linspace(-0.2, 0.3, 6)
    x, y = _data(1)
    with pytest.raises(GradcheckError) as info:
        gradcheck(_model(affine=_make_affine(swap=True)), p, x, y)
    failing = _failing_names(info.value.result)
    assert {"args[0]['a']", "args[0]['c']"} <= failing
    assert "args[0]['W2']" not in failing  # upstream of the bug: its gradient is right
    gradcheck(_model(affine=_make_affine()), p, x, y)


def test_relu_backward_with_the_wrong_mask_fails():
    p = _init(2, [5, 8, 3])
    x, y = _data(2)
    with pytest.raises(GradcheckError) as info:
        gradcheck(_model(relu=_make_relu(wrong_mask=True)), p, x, y)
    failing = _failing_names(info.value.result)
    assert "args[0]['W1']" in failing and "args[0]['b1']" in failing
    assert "args[0]['W2']" not in failing
    result = gradcheck(_model(relu=_make_relu()), p, x, y)
    assert result.kinks_present  # the ReLU inside the custom rule is tracked


# ---------------------------------------------------------------- correct models pass


SEEDS = range(4)


@pytest.mark.parametrize("seed", SEEDS)
def test_relu_softmax_mlp_passes(seed):
    p = _init(seed, [5, 8, 3])
    x, y = _data(seed)
    result = gradcheck(_model(), p, x, y, seed=seed)
    assert result.passed and result.kinks_present
    assert result.tier <= Tier.OK


@pytest.mark.parametrize("seed", SEEDS)
def test_hinge_loss_mlp_passes(seed):
    p = _init(10 + seed, [5, 8, 3])
    x, y = _data(10 + seed)

    def f(p, x, y):
        h = jax.nn.relu(x @ p["W1"] + p["b1"])
        return _hinge(h @ p["W2"] + p["b2"], y)

    result = gradcheck(f, p, x, y, seed=seed)
    assert result.passed and result.kinks_present


@pytest.mark.parametrize("seed", SEEDS)
def test_dropout_with_a_key_passes(seed):
    p = _init(20 + seed, [5, 8, 3])
    x, y = _data(20 + seed)

    def f(p, x, y, key):
        h = jax.nn.relu(x @ p["W1"] + p["b1"])
        keep = jax.random.bernoulli(key, 0.7, h.shape)
        h = jnp.where(keep, h / 0.7, 0.0)
        return _cross_entropy(h @ p["W2"] + p["b2"], y)

    key = jax.random.key(seed)
    result = gradcheck(f, p, x, y, key, seed=seed)
    assert result.passed
    assert [b.name for b in result.blocks] == [
        "args[0]['W1']",
        "args[0]['W2']",
        "args[0]['b1']",
        "args[0]['b2']",
        "args[1]",
    ]


def test_params_dict_read_through_a_closure_passes_and_is_restored():
    params = _init(5, [5, 6, 3])
    originals = dict(params)
    x, y = _data(5)

    def f(x, y):
        h = jnp.tanh(x @ params["W1"] + params["b1"])
        return {
            "data": _cross_entropy(h @ params["W2"] + params["b2"], y),
            "reg": 1e-2 * jnp.sum(params["W1"] ** 2),
        }

    result = gradcheck(f, x, y, params=params)
    assert result.passed and not result.kinks_present
    assert result.tolerance == Tier.HAPPY
    assert set(result.terms) == {"data", "reg"}
    assert [b.name for b in result.blocks] == ["args[0]", "W1", "b1", "W2", "b2"]
    assert all(params[k] is originals[k] for k in params)


def test_a_scan_rnn_passes():
    p = {"Wx": _normal(71, (3, 4), 0.5), "Wh": _normal(72, (4, 4), 0.5)}
    xs = _normal(73, (5, 3))

    def f(p, xs):
        def step(h, x):
            h = jax.nn.relu(x @ p["Wx"] + h @ p["Wh"])
            return h, h.sum()

        h, ys = jax.lax.scan(step, jnp.zeros(4), xs)
        return jnp.sum(h**2) + jnp.sum(ys)

    result = gradcheck(f, p, xs)
    assert result.passed and result.kinks_present


def test_max_pooling_with_reduce_window_passes():
    img = _normal(81, (1, 6, 6, 1))
    w = _normal(82, (9, 2))

    def f(img, w):
        pooled = jax.lax.reduce_window(
            img, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
        )
        return jnp.sum(jnp.tanh(pooled.reshape(1, 9) @ w))

    result = gradcheck(f, img, w)
    assert result.passed and result.kinks_present


# ---------------------------------------------------------------- against check_grads


def _smooth_models():
    w = _normal(31, (4, 3))
    x = _normal(32, (5, 4))
    y = jnp.array([0, 2, 1, 1, 0])

    def tanh_mlp(w, x):
        return jnp.sum(jnp.tanh(x @ w) ** 2)

    def softmax_ce(w, x):
        return _cross_entropy(x @ w, y)

    def vector_output(w, x):
        return jnp.sin(x @ w)  # projected: the check covers the vector-Jacobian product

    return [(tanh_mlp, (w, x)), (softmax_ce, (w, x)), (vector_output, (w, x))]


@pytest.mark.parametrize("index", range(3), ids=["tanh_mlp", "softmax_ce", "vector_output"])
def test_agrees_with_check_grads_on_correct_functions(index):
    from jax.test_util import check_grads

    f, args = _smooth_models()[index]
    with jax.enable_x64(True):
        args64 = tuple(jnp.asarray(a, jnp.float64) for a in args)
        check_grads(jax.jit(f), args64, order=1, modes=("rev",))
    result = gradcheck(f, *args)
    assert result.passed and result.tier == Tier.HAPPY


def test_agrees_with_check_grads_on_a_grossly_wrong_rule():
    from jax.test_util import check_grads

    dense = _make_dense(scale_dw=1.5)

    def f(w, x):
        return jnp.sum(jnp.tanh(dense(w, jnp.zeros(w.shape[1]), x)))

    with jax.enable_x64(True):
        w = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
        x = jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)
        with pytest.raises(AssertionError):
            check_grads(jax.jit(f), (w, x), order=1, modes=("rev",))
    with pytest.raises(GradcheckError):
        gradcheck(f, w, x)


def test_catches_one_wrong_entry_that_check_grads_misses():
    from jax.test_util import check_grads

    @jax.custom_vjp
    def project(w, x):
        return x @ w

    def bwd(res, g):
        w, x = res
        dw = (x.T @ g).at[17, 9].add(1e-4)  # one wrong entry of 1024
        return dw, g @ w.T

    project.defvjp(lambda w, x: (x @ w, (w, x)), bwd)

    def f(w, x):
        return jnp.sum(jnp.tanh(project(w, x)))

    with jax.enable_x64(True):
        w = jnp.asarray(np.random.default_rng(0).standard_normal((32, 32)) / 6)
        x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 32)))
        check_grads(jax.jit(f), (w, x), order=1, modes=("rev",))  # passes: the error is diluted
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, w, x)
    (block,) = [b for _, b in info.value.result.failing()]
    assert block.name == "args[0]"
    assert (17, 9) in block.indices  # found by bisecting the failing direction


# ---------------------------------------------------------------- nothing leaks


def test_x64_is_off_after_passing_failing_and_raising_checks():
    p = _init(0, [5, 6, 3])
    x, y = _data(0)
    gradcheck(_model(), p, x, y)
    assert jnp.ones(1).dtype == (jnp.float64 if X64_AT_IMPORT else jnp.float32)
    with pytest.raises(GradcheckError):
        gradcheck(_model(dense=_make_dense(scale_dw=2.0)), p, x, y)
    assert bool(jax.config.jax_enable_x64) == X64_AT_IMPORT
    with pytest.raises(ValueError):
        gradcheck(lambda a: jnp.sum(jnp.log(a - 10.0)), x)
    assert bool(jax.config.jax_enable_x64) == X64_AT_IMPORT
    assert p["W1"].dtype == jnp.float32 or X64_AT_IMPORT  # the user's arrays are untouched


def test_the_next_test_still_sees_float32_defaults():
    assert bool(jax.config.jax_enable_x64) == X64_AT_IMPORT
    if not X64_AT_IMPORT:
        assert jnp.zeros(3).dtype == jnp.float32
        assert jnp.asarray(1.5).dtype == jnp.float32


@pytest.mark.gradcheck(samples_per_block=4)
def test_fixture_and_marker_work_with_jax(gradcheck):
    result = gradcheck(lambda w: jnp.sum(jnp.sin(w) ** 2), jnp.linspace(0.1, 1.0, 6))
    assert result.passed and result.framework == "jax"
    assert all(len(b.indices) == 4 for b in result.blocks)


def test_float32_data_meeting_a_lax_conv_names_the_cast_to_make():
    """lax.conv refuses a float32 input beside the check's float64 kernel (it does not
    promote, unlike jnp and flax): the error says why and what to do, and f with the
    cast it suggests checks."""
    gen = np.random.default_rng(0)
    x32 = jnp.asarray(gen.standard_normal((2, 3, 6, 6)), jnp.float32)
    w = jnp.asarray(gen.standard_normal((4, 3, 3, 3)), jnp.float32)

    def f(w):
        return jnp.sum(jax.lax.conv(x32, w, (1, 1), "SAME") ** 2)

    with pytest.raises(TypeError, match="requires arguments to have the same dtypes") as info:
        gradcheck(f, w)
    assert "x.astype(w.dtype)" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)

    def cast(w):
        return jnp.sum(jax.lax.conv(x32.astype(w.dtype), w, (1, 1), "SAME") ** 2)

    assert gradcheck(cast, w).tier is Tier.HAPPY
    assert x32.dtype == w.dtype == jnp.float32


def test_a_cast_to_float32_inside_f_is_reported_and_hinted():
    """JAX's answer to torch's precision watch: a float64 value cast to float32 inside
    f (here in a scan's body, as jax.nn.dot_product_attention does in its softmax)
    is named with the user's line, and a failure points at it; f in float64 passes
    without any such warning."""
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 6)))

    def f(x, low=True):
        def step(carry, row):
            z = row.astype(jnp.float32) if low else row
            return carry + jnp.sum(jnp.exp(z) ** 2).astype(carry.dtype), None

        return jax.lax.scan(step, jnp.zeros((), x.dtype), x)[0]

    result = gradcheck(f, x, raise_on_fail=False)
    (warning,) = [w for w in result.warnings if "lower precision inside" in w]
    assert "float64 -> float32 at " in warning and "test_jax_gradcheck.py" in warning
    assert not result.passed  # float32 round-off over h: far from happy
    assert any("f computes in lower precision inside" in h for h in hints(result))
    clean = gradcheck(lambda x: f(x, low=False), x)
    assert clean.tier is Tier.HAPPY
    assert not any("lower precision" in w for w in clean.warnings)


def test_a_cast_to_bfloat16_inside_f_fails_the_check_not_as_randomness():
    """bfloat16 inside f makes the gradient pass's value of the loss (a vjp program)
    differ from the evaluations' (a jitted f) far beyond a last digit; f is
    deterministic all the same, so the check fails on the gradient with the
    precision hint, not with a ValueError calling f random (audit s10)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)), jnp.float32)

    def f(x):
        return jnp.tanh(x.astype(jnp.bfloat16)).astype(jnp.float32).sum()

    with pytest.raises(GradcheckError) as info:
        gradcheck(f, x)
    assert "f computes in lower precision inside" in str(info.value)


@pytest.mark.parametrize("n", [14, 30])
def test_a_wrong_custom_vjp_is_reported_not_called_non_deterministic(n):
    """The checked point's loss comes from the vjp, the evaluations' from a jitted f:
    sums that differ in the last digit at some sizes. A failing check must still report
    the gradient, localized, instead of blaming randomness f does not have."""

    @jax.custom_vjp
    def sq(x):
        return x**2

    sq.defvjp(lambda x: (x**2, x), lambda x, g: (g * jnp.where(x < 0, x, 2 * x),))
    x = jnp.abs(jax.random.normal(jax.random.key(3), (n, n))) + 0.1
    x = x.at[n - 1, n - 1].set(-0.5)
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x: sq(x).sum(), x)
    block = info.value.result.blocks[0]
    assert block.tier is Tier.WRONG and (n - 1, n - 1) in block.localized


def test_eigh_without_symmetrizing_gets_the_symmetrize_hint():
    # symmetrize_input=False reads the lower triangle only (the default symmetrizes)
    s = np.random.default_rng(0).standard_normal((4, 4))
    s = jnp.asarray(s + s.T)
    result = gradcheck(
        lambda s: jnp.linalg.eigh(s, symmetrize_input=False)[0], s, raise_on_fail=False
    )
    assert not result.passed
    (hint,) = hints(result)
    assert hint.startswith(
        "in block 'args[0]' the numeric gradient is zero on the upper triangle while the "
        "analytic one is not, and the lower triangle passes or is off by a factor 2: f reads "
        "only the lower triangle"
    )
    assert gradcheck(lambda s: jnp.linalg.eigh(s)[0], s).passed


def test_an_untracked_f_gets_no_smooth_comparison_warning():
    """Evaluated eagerly, f's kinks are not tracked: a comparison crossing a ReLU 3e-8
    from the point (closer than the smallest step tried) shows an error of ok size,
    which the warning about comparisons that "crossed no kink" would misname."""
    with jax.enable_x64(True):
        w = jnp.asarray([0.3, -0.2, 0.5 + 3e-8, 0.1, -0.4, 0.7])

    def f(w):
        s = jnp.sum(jnp.tanh(w) ** 2) + 1e-4 * jnp.sum(jnp.maximum(w - 0.5, 0.0))
        if s > 0:  # a Python branch on a value: evaluated eagerly, winner tracking off
            return s
        return -s

    result = gradcheck(f, w)
    assert any("winner tracking was unavailable" in m for m in result.warnings)
    assert result.tier is Tier.OK  # the crossing, unseen, at ok: the tolerance allows it
    assert not [m for m in result.warnings if "crossed no kink" in m]


def test_a_custom_vjp_that_ignores_its_cotangent_fails_as_the_last_op():
    """sum(x**2) / 2 with a rule returning x, not g * x: right only for a cotangent of 1."""

    @jax.custom_vjp
    def half_square(x):
        return jnp.sum(x**2) / 2

    half_square.defvjp(lambda x: (half_square(x), x), lambda x, g: (x,))
    result = gradcheck(half_square, jnp.asarray([0.3, -1.2, 2.0]), raise_on_fail=False)
    assert not result.passed and result.tier is Tier.WRONG
