"""The JAX backend through the engine's protocol: blocks, gradients, points, restoring."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from pytest_gradcheck.backends import jax as jax_backend  # noqa: E402
from pytest_gradcheck.backends._base import Point, Settings, projection_weights  # noqa: E402
from pytest_gradcheck.backends.jax import JaxBackend  # noqa: E402

X64_AT_IMPORT = bool(jax.config.jax_enable_x64)


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


HAS_GPU = _has_gpu()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a GPU visible to JAX")


@dataclasses.dataclass
class Linear:
    """An Equinox-style module: a dataclass registered as a pytree."""

    weight: jax.Array
    bias: jax.Array
    activation: str = "tanh"


jax.tree_util.register_dataclass(Linear, data_fields=["weight", "bias"], meta_fields=["activation"])


def _backend(f, *args, params=None, **settings):
    return JaxBackend(f, args, params, None, Settings(**settings))


def _run(f, *args, params=None, points=(), track=False, **settings):
    """(gradient, evaluations, warnings) of f, the backend closed afterwards."""
    backend = _backend(f, *args, params=params, **settings)
    try:
        grad = backend.gradient(track)
        evals = backend.evaluate(list(points), track) if points else []
        return grad, evals, list(backend.warnings), backend.blocks()
    finally:
        backend.close()


def _coord(block, index, delta):
    return Point(((block, np.array([index]), np.array([delta])),))


def _x64_off():
    assert bool(jax.config.jax_enable_x64) == X64_AT_IMPORT
    if not X64_AT_IMPORT:
        assert jnp.ones(2).dtype == jnp.float32
        assert jnp.asarray(1.0).dtype == jnp.float32


# ---------------------------------------------------------------- blocks and names


def test_block_names_follow_key_paths():
    key = jax.random.key(0)
    layer = Linear(jnp.ones((2, 3)), jnp.zeros(2))
    params = {"W1": jnp.ones((3, 3)), "enc": {"W": jnp.ones(3), "pair": (jnp.ones(2), 1)}}

    def f(x, tree, layer, key, n, labels):
        h = jnp.tanh(layer.weight @ (params["W1"] @ x) + layer.bias)
        h = h * tree["a"][0] + tree["b"] * params["enc"]["W"][:2] + params["enc"]["pair"][0]
        return jnp.sum(h) * n + jnp.sum(labels) + jax.random.normal(key) * 0

    tree = {"a": [jnp.ones(2)], "b": np.ones(2)}
    labels = jnp.arange(2)
    backend = _backend(f, jnp.ones(3), tree, layer, key, 3, labels, params=params)
    try:
        names = [b.name for b in backend.blocks()]
    finally:
        backend.close()
    assert names == [
        "args[0]",
        "args[1]['a'][0]",
        "args[1]['b']",
        "args[2].weight",
        "args[2].bias",
        "W1",
        "enc['W']",
        "enc['pair'][0]",
    ]


def test_list_params_are_named_by_index():
    params = [jnp.ones(2), jnp.full(2, 2.0)]

    def f(x):
        return jnp.sum(params[0] * x + params[1] ** 2)

    grad, _, _, blocks = _run(f, jnp.arange(2.0), params=params)
    assert [b.name for b in blocks] == ["args[0]", "params[0]", "params[1]"]
    np.testing.assert_allclose(grad.total[1], [0.0, 1.0])
    np.testing.assert_allclose(grad.total[2], [4.0, 4.0])


def test_blocks_keep_user_dtype_and_warn_about_float32():
    x32 = jnp.ones(3, jnp.float32)
    xbf = jnp.ones(2, jnp.bfloat16)
    grad, _, warnings, blocks = _run(
        lambda a, b: jnp.sum(a**2) + jnp.sum(b.astype(a.dtype)), x32, xbf
    )
    assert [b.dtype for b in blocks] == ["float32", "bfloat16"]
    assert all(b.values.dtype == np.float64 for b in blocks)
    assert any("float32" in w and "float64" in w for w in warnings)
    assert grad.total[0].dtype == np.float64


@pytest.mark.skipif(X64_AT_IMPORT, reason="x64 is on globally in this session")
def test_the_float32_warning_says_the_check_enabled_x64_and_names_the_dtype():
    _, _, warnings, _ = _run(lambda a: jnp.sum(a**2), jnp.ones(3, jnp.float32))
    assert warnings == [
        "gradcheck: checked in float64: args[0] is float32; the check casts the floating "
        "inputs to float64 "
        "(JAX x64 is enabled for the check only), because computing in float32 alone can "
        "give relative errors near 1e-2 for a correct gradient"
    ]


def test_the_low_precision_warning_says_x64_was_on_and_names_half_precision():
    # x64 on around the check (as jax.config.update("jax_enable_x64", True) would set
    # it): the check did not enable it; and bfloat16 is not "single precision"
    with jax_backend._enable_x64():
        _, _, warnings, _ = _run(
            lambda a: jnp.sum(a.astype(jnp.float64) ** 2), jnp.ones(2, jnp.bfloat16)
        )
    assert warnings == [
        "gradcheck: checked in float64: args[0] is bfloat16; the check casts the floating "
        "inputs to float64 "
        "(JAX x64 was already enabled), because computing in bfloat16 alone can give "
        "relative errors near 1 or larger for a correct gradient"
    ]


def test_wrt_selects_blocks_and_rejects_keys():
    def f(x, y, key):
        return jnp.sum(x * y) + jax.random.uniform(key)

    args = (jnp.ones(2), jnp.ones(2), jax.random.key(1))
    backend = _backend(f, *args, wrt=["args[1]"])
    try:
        assert [b.name for b in backend.blocks()] == ["args[1]"]
    finally:
        backend.close()
    backend = _backend(f, *args, wrt=lambda name: name.endswith("[0]"))
    try:
        assert [b.name for b in backend.blocks()] == ["args[0]"]
    finally:
        backend.close()
    with pytest.raises(TypeError, match="not floating point"):
        _backend(f, *args, wrt=["args[2]"])


def test_grad_argument_is_refused():
    with pytest.raises(TypeError, match=r"jax\.grad"):
        JaxBackend(lambda x: jnp.sum(x), (jnp.ones(2),), None, lambda x: x, Settings())


def test_immutable_params_are_refused():
    with pytest.raises(TypeError, match="dict or a list"):
        _backend(lambda x: jnp.sum(x), jnp.ones(2), params=(jnp.ones(2),))


# ---------------------------------------------------------------- gradients


def test_gradient_matches_jax_grad_on_a_pytree():
    layer = Linear(jnp.arange(6.0).reshape(2, 3) / 6, jnp.array([0.1, -0.2]))
    params = {"scale": jnp.array(1.5)}

    def f(layer, x):
        return jnp.sum(jnp.tanh(layer.weight @ x + layer.bias) ** 2) * params["scale"]

    x = jnp.array([0.3, -0.1, 0.7])
    grad, _, _, blocks = _run(f, layer, x, params=params)
    with jax.enable_x64(True):
        cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (layer, x))

        def g(layer, x, scale):
            return jnp.sum(jnp.tanh(layer.weight @ x + layer.bias) ** 2) * scale

        expected = jax.grad(g, argnums=(0, 1, 2))(*cast, jnp.float64(1.5))
        flat = [np.asarray(e).reshape(-1) for e in jax.tree_util.tree_leaves(expected)]
    assert [b.name for b in blocks] == ["args[0].weight", "args[0].bias", "args[1]", "scale"]
    for got, want in zip(grad.total, flat, strict=False):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    _x64_off()


def test_named_terms_have_their_own_gradients():
    def f(w):
        return {"data": jnp.sum(jnp.sin(w)), "reg": 0.5 * jnp.sum(w**2)}

    w = np.array([0.1, 0.2, 0.3])  # NumPy float64: the base point is exact
    grad, evals, _, _ = _run(f, w, points=[_coord(0, 1, 1e-3)])
    np.testing.assert_allclose(grad.terms["data"][0], np.cos([0.1, 0.2, 0.3]), rtol=1e-6)
    np.testing.assert_allclose(grad.terms["reg"][0], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(grad.total[0], np.cos(w) + w, rtol=1e-6)
    assert set(grad.center.terms) == {"data", "reg"}
    (ev,) = evals
    moved = w + np.array([0.0, 1e-3, 0.0])
    assert ev.terms["reg"] == pytest.approx(0.5 * np.sum(moved**2), rel=1e-14)
    assert ev.loss == pytest.approx(ev.terms["data"] + ev.terms["reg"], rel=1e-14)


def test_array_output_is_projected_with_fixed_weights():
    def f(x):
        return jnp.outer(x, x)

    x = jnp.array([1.0, 2.0], dtype=jnp.float32)
    grad, _, _, _ = _run(f, x, seed=3)
    w = projection_weights((2, 2), 3)
    xf = np.array([1.0, 2.0])
    assert grad.center.loss == pytest.approx(float(np.sum(np.outer(xf, xf) * w)), rel=1e-14)
    np.testing.assert_allclose(grad.total[0], (w + w.T) @ xf, rtol=1e-14)


def test_nan_loss_and_nan_gradient_raise_value_errors():
    with pytest.raises(ValueError, match=r"nan|finite"):
        _run(lambda x: jnp.sum(jnp.log(x)), jnp.array([-1.0, 1.0]))
    with pytest.raises(ValueError, match=r"args\[0\]"):
        _run(lambda x: jnp.sum(jnp.sqrt(x)), jnp.array([0.0, 1.0]))
    _x64_off()


def test_block_without_gradient_is_an_error():
    with pytest.raises(ValueError, match=r"args\[1\].*no gradient"):
        _run(lambda x, y: jnp.sum(x**2) + 0 * y.shape[0], jnp.ones(2), jnp.ones(3))
    with pytest.raises(ValueError, match="no gradient"):
        _run(lambda x: jnp.sum(jax.lax.stop_gradient(x) ** 2), jnp.ones(2))


@jax.custom_vjp
def _linear(w, x):
    return w @ x


def _linear_fwd(w, x):
    return w @ x, (w, x)


def _linear_bad_bwd(res, g):
    w, x = res
    return jnp.outer(g, x), (w.T @ g)[:-1]  # the gradient of x is one entry short


_linear.defvjp(_linear_fwd, _linear_bad_bwd)


def test_custom_vjp_with_wrong_shape_names_the_block():
    def f(w, x):
        return jnp.sum(jnp.tanh(_linear(w, x)))

    with pytest.raises(ValueError, match=r"'args\[1\]'") as info:
        _run(f, jnp.ones((2, 3)), jnp.ones(3))
    assert "_linear" in str(info.value)
    assert "shape" in str(info.value)
    assert info.value.__cause__ is not None
    _x64_off()


@jax.custom_vjp
def _broken(x):
    return jnp.sin(x)


def _broken_bwd(x, g):
    raise RuntimeError("bwd exploded")


_broken.defvjp(lambda x: (jnp.sin(x), x), _broken_bwd)


def test_custom_vjp_whose_bwd_raises_names_the_function_and_block():
    with pytest.raises(ValueError, match=r"_broken.*args\[0\]") as info:
        _run(lambda x, y: jnp.sum(_broken(x)) + jnp.sum(y), jnp.ones(2), jnp.ones(2))
    assert isinstance(info.value.__cause__, RuntimeError)


# ---------------------------------------------------------------- evaluations


def test_evaluate_adds_deltas_to_the_float64_base():
    def f(x, y):
        return jnp.sum(x**3) + jnp.sum(jnp.cos(y))

    x, y = np.array([0.5, -1.0]), np.array([0.25, 2.0, 3.0])
    points = [
        Point(()),
        _coord(0, 1, 1e-5),
        Point(
            ((1, np.array([0, 2]), np.array([1e-3, -2e-3])), (0, np.array([0]), np.array([1.0])))
        ),
        Point(((1, np.arange(3), np.array([0.1, 0.2, 0.3])),)),
    ]
    _, evals, _, _ = _run(f, jnp.asarray(x), y, points=points)

    def exact(x, y):
        return float(np.sum(x**3) + np.sum(np.cos(y)))

    xf = np.asarray(jnp.asarray(x)).astype(np.float64)  # the float32 base, widened
    expected = [
        exact(xf, y),
        exact(xf + np.array([0, 1e-5]), y),
        exact(xf + np.array([1.0, 0]), y + np.array([1e-3, 0, -2e-3])),
        exact(xf, y + np.array([0.1, 0.2, 0.3])),
    ]
    np.testing.assert_allclose([e.loss for e in evals], expected, rtol=1e-14)


def test_batched_and_one_at_a_time_evaluations_agree():
    def f(w, x):
        h = jax.nn.relu(x @ w["W"] + w["b"])
        return {"data": jnp.sum(h**2), "reg": jnp.sum(w["W"] ** 2)}

    w = {"W": jnp.linspace(-1, 1, 6).reshape(3, 2), "b": jnp.array([0.1, -0.1])}
    x = jnp.array([[0.5, -0.2, 0.1], [0.3, 0.3, -0.6]])
    points = [_coord(b, i, s * 1e-4) for b in range(3) for i in range(2) for s in (1, -1)]
    results = []
    for batch in (True, False):
        _, evals, _, _ = _run(f, w, x, points=points, track=True, batch=batch)
        results.append(evals)
    a, b = results
    np.testing.assert_allclose([e.loss for e in a], [e.loss for e in b], rtol=1e-14)
    np.testing.assert_allclose(
        [e.terms["data"] for e in a], [e.terms["data"] for e in b], rtol=1e-14
    )
    assert [e.signature for e in a] == [e.signature for e in b]


def test_a_large_model_is_batched_per_lane_and_agrees_with_the_loop():
    """Past _DENSE_COORDINATES, a large block is a batch lane of its own and the small
    blocks share one: points perturbing W carry copies of W only. The values, the
    decisions and a mixed point (two lanes at once) agree with one-at-a-time evaluation."""
    gen = np.random.default_rng(0)
    x = jnp.asarray(gen.standard_normal((4, 80)))

    def f(W, b, v):
        return jnp.sum(jax.nn.relu(x @ W + b) @ v)

    W = jnp.asarray(gen.standard_normal((80, 70)) / 9)  # 5600 entries: a lane of its own
    b, v = jnp.asarray(gen.standard_normal(70)), jnp.asarray(gen.standard_normal(70))
    points = [_coord(k, i, s * 1e-4) for k in range(3) for i in (0, 7, 69) for s in (1, -1)]
    points.append(Point(((0, range(5600), np.full(5600, 1e-5)),)))  # a direction of W
    points.append(
        Point(((0, np.array([3]), np.array([1e-3])), (2, np.array([1]), np.array([2e-3]))))
    )
    results = []
    for batch in (True, False):
        backend = _backend(f, W, b, v, batch=batch)
        try:
            backend.gradient(True)
            results.append(backend.evaluate(points, True))
            groups = backend._groups(points)
        finally:
            backend.close()
    a, c = results
    np.testing.assert_allclose([e.loss for e in a], [e.loss for e in c], rtol=1e-13)
    assert [e.signature for e in a] == [e.signature for e in c]
    lanes = {batched for batched, _, _ in groups}
    assert lanes == {frozenset({0}), frozenset({1, 2}), frozenset({0, 1, 2})}
    # W's coordinates and its direction travel apart (one index each vs the whole block)
    w_groups = [members for batched, members, _ in groups if batched == frozenset({0})]
    assert sorted(map(len, w_groups)) == [1, 6]
    assert {how for _, _, how in groups} == {"vmap"}  # W (45 KB) is small enough to batch


def test_a_large_block_on_the_cpu_is_looped_inside_xla_or_point_by_point(monkeypatch):
    """A block over _LOOP_BLOCK_BYTES is not vmapped on CPU (a batch would copy it per
    row): its points are evaluated one after another by one program looping inside XLA
    up to _MAP_BLOCK_BYTES, one call per point past it. The values and the decisions
    are those of the vmapped batch and of batch=False."""
    gen = np.random.default_rng(1)
    x = jnp.asarray(gen.standard_normal((3, 120)))

    def f(W, b):
        z = x @ W + b
        return jnp.sum(jnp.tanh(z)) + jnp.sum(jnp.maximum(z, 0.0))  # decisions to hash

    W = jnp.asarray(gen.standard_normal((120, 110)) / 11)  # 105,600 bytes
    b = jnp.asarray(gen.standard_normal(110))
    assert jax_backend._LOOP_BLOCK_BYTES < W.size * 8 <= jax_backend._MAP_BLOCK_BYTES
    # an odd number of coordinates, so the map's padded rows are not evaluated
    points = [_coord(k, i, s * 1e-4) for k in range(2) for i in (0, 9, 101) for s in (1, -1)]
    points += [_coord(0, 7, 0.5), Point(((0, range(W.size), np.full(W.size, 1e-5)),))]

    def run(batch):
        backend = _backend(f, W, b, batch=batch)
        try:
            backend.gradient(True)
            return backend.evaluate(points, True), backend._groups(points)
        finally:
            backend.close()

    mapped, groups = run(True)
    assert {(batched, how) for batched, _, how in groups} == {
        (frozenset({0}), "map"),
        (frozenset({1}), "vmap"),
    }
    unbatched, _ = run(False)
    monkeypatch.setattr(jax_backend, "_MAP_BLOCK_BYTES", jax_backend._LOOP_BLOCK_BYTES)
    looped, groups = run(True)
    assert {how for _, _, how in groups} == {"loop", "vmap"}
    monkeypatch.setattr(jax_backend, "_LOOP_BLOCK_BYTES", 2**40)
    batched, groups = run(True)
    assert {how for _, _, how in groups} == {"vmap"}
    # the large step at W[7] moves some z across 0: a signature of its own
    assert mapped[-2].signature != mapped[0].signature
    for other in (unbatched, looped, batched):
        np.testing.assert_allclose([e.loss for e in mapped], [e.loss for e in other], rtol=1e-13)
        assert [e.signature for e in mapped] == [e.signature for e in other]
        assert [e.decisions for e in mapped] == [e.decisions for e in other]


def _small_block_points(gen):
    x = jnp.asarray(gen.standard_normal((4, 30)))

    def f(W, b):
        return jnp.sum(jnp.maximum(x @ W + b, 0.0) ** 2)

    W = jnp.asarray(gen.standard_normal((30, 20)))
    b = jnp.asarray(gen.standard_normal(20))
    points = [_coord(k, i, s * 1e-3) for k in range(2) for i in (0, 7, 19) for s in (1, -1)]
    return f, (W, b), points


def test_optimised_cpu_batches_are_compiled_without_ynn_fusions(monkeypatch):
    """Optimised batch programs on CPU are compiled without XLA's YNN fusions (which
    recompute per row a product the batch does not change); unoptimised ones keep
    them. The values are those of one point at a time."""
    f, args, points = _small_block_points(np.random.default_rng(3))
    results = {}
    for quick_bytes in (2**40, 0):
        monkeypatch.setattr(jax_backend, "_QUICK_COMPILE_BYTES", quick_bytes)
        backend = _backend(f, *args)
        try:
            backend.gradient(True)
            results[quick_bytes] = backend.evaluate(points, True)
            program, fallbacks = backend._batch_program, list(backend.batch_fallbacks)
        finally:
            backend.close()
        assert not fallbacks
        assert program == (1 if quick_bytes else 2)
    _, looped, _, _ = _run(f, *args, points=points, track=True, batch=False)
    for evaluations in results.values():
        np.testing.assert_allclose(
            [e.loss for e in evaluations], [e.loss for e in looped], rtol=1e-13
        )
        assert [e.signature for e in evaluations] == [e.signature for e in looped]


def test_a_jaxlib_without_the_ynn_option_gets_the_default_batch_program(monkeypatch):
    """A compile option this jaxlib does not know (as an older one would not know the
    YNN one) is recorded as a batch fallback and the default program runs instead: the
    points are still batched, with the same values."""
    f, args, points = _small_block_points(np.random.default_rng(4))
    unknown = jax.jit(
        jax_backend._batched_body,
        static_argnums=(0, 1),
        compiler_options={"xla_cpu_no_such_option_of_pytest_gradcheck": ""},
    )
    monkeypatch.setattr(jax_backend, "_BATCHED", (*jax_backend._BATCHED[:2], unknown))
    monkeypatch.setattr(jax_backend, "_QUICK_COMPILE_BYTES", 0)
    backend = _backend(f, *args)
    try:
        backend.gradient(True)
        assert backend._batch_program == 2
        evaluations = backend.evaluate(points, True)
        program, fallbacks = backend._batch_program, list(backend.batch_fallbacks)
        vmapped = backend._vmap_ok[True]
    finally:
        backend.close()
    assert program == 0 and vmapped is True
    assert len(fallbacks) == 1 and "no_such_option" in fallbacks[0]
    _, looped, _, _ = _run(f, *args, points=points, track=True, batch=False)
    np.testing.assert_allclose([e.loss for e in evaluations], [e.loss for e in looped], rtol=1e-13)


@jax.custom_vjp
def _host_sin(x):
    # a kernel outside JAX (think FFI), with a backward rule
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return jax.pure_callback(lambda a: np.sin(a).astype(a.dtype), spec, x)


_host_sin.defvjp(lambda x: (_host_sin(x), x), lambda x, g: (g * jnp.cos(x),))


def test_function_that_cannot_be_vmapped_falls_back_to_a_loop():
    def f(x):
        return jnp.sum(_host_sin(x) * jnp.array([1.0, 2.0, 3.0]))

    x = jnp.array([0.1, 0.2, 0.3])
    points = [_coord(0, i, 1e-3) for i in range(3)]
    backend = _backend(f, x)
    try:
        grad = backend.gradient(True)
        evals = backend.evaluate(points, True)
        fallbacks, warnings = list(backend.batch_fallbacks), list(backend.warnings)
    finally:
        backend.close()
    base = np.asarray(x, np.float64)
    np.testing.assert_allclose(grad.total[0], np.cos(base) * [1, 2, 3], rtol=1e-6)
    expected = [np.sum(np.sin(base + 1e-3 * np.eye(3)[i]) * [1, 2, 3]) for i in range(3)]
    np.testing.assert_allclose([e.loss for e in evals], expected, rtol=1e-12)
    # the fallback is recorded, not warned about: the results are the same (as in torch)
    assert fallbacks and not any("vmap" in w for w in warnings)


def test_python_control_flow_runs_eagerly_without_tracking():
    def f(x):
        if jnp.sum(x) > 0:  # needs a concrete value: no jit, no vmap
            return jnp.sum(x**2)
        return -jnp.sum(x)

    x = jnp.array([0.5, 0.25])
    grad, evals, warnings, _ = _run(f, x, points=[_coord(0, 0, 1e-3)], track=True)
    np.testing.assert_allclose(grad.total[0], [1.0, 0.5])
    assert evals[0].loss == pytest.approx(0.501**2 + 0.25**2, rel=1e-14)
    assert evals[0].signature is None
    assert any("eagerly" in w for w in warnings)


def test_prng_keys_pass_through_so_dropout_is_deterministic():
    def f(x, key, legacy):
        keep = jax.random.bernoulli(key, 0.5, x.shape)
        noise = jax.random.normal(legacy, x.shape)
        return jnp.sum(jnp.where(keep, x, 0.0) ** 2 + noise * x)

    x = jnp.linspace(-1.0, 1.0, 8)
    key, legacy = jax.random.key(42), jax.random.PRNGKey(7)
    pts = [Point(()), Point(())]
    grad, evals, _, blocks = _run(f, x, key, legacy, points=pts, track=True)
    assert [b.name for b in blocks] == ["args[0]"]
    assert evals[0].loss == evals[1].loss == pytest.approx(grad.center.loss, rel=1e-14)
    assert grad.center.decisions == 0  # the mask does not depend on x
    assert key.dtype == jax.random.key(42).dtype  # untouched
    assert np.array_equal(np.asarray(legacy), np.asarray(jax.random.PRNGKey(7)))


def test_numpy_leaves_mix_in():
    labels = np.array([0, 2])

    def f(scores, bias):
        assert isinstance(labels, np.ndarray)
        logp = jax.nn.log_softmax(scores + bias)
        return -jnp.sum(logp[np.arange(2), labels])

    scores = np.array([[0.1, 0.2, 0.3], [0.3, -0.1, 0.0]])
    grad, _, _, blocks = _run(f, scores, jnp.zeros(3))
    assert [b.name for b in blocks] == ["args[0]", "args[1]"]
    assert grad.total[0].shape == (6,)


# ---------------------------------------------------------------- restoring


def test_params_entries_are_restored_as_the_same_objects():
    w1, inner, b = jnp.ones((2, 2)), jnp.ones(2), jnp.zeros(2)
    nested = {"inner": inner}
    pair = (b, "tag")
    params = {"W1": w1, "nested": nested, "pair": pair, "n": 4}
    seen = []

    def f(x):
        seen.append(params["W1"] is w1)
        return jnp.sum(params["W1"] @ x + params["nested"]["inner"] + params["pair"][0])

    grad, _, _, blocks = _run(f, jnp.ones(2), params=params, points=[_coord(1, 0, 0.5)])
    assert [b.name for b in blocks] == ["args[0]", "W1", "nested['inner']", "pair[0]"]
    assert params["W1"] is w1 and params["nested"] is nested and nested["inner"] is inner
    assert params["pair"] is pair and params["n"] == 4
    assert seen and not any(seen)  # f saw the perturbed values, never the originals
    np.testing.assert_allclose(grad.total[1], [1.0, 1.0, 1.0, 1.0])


def test_params_restored_when_f_raises():
    w = jnp.ones(2)
    params = {"w": w}

    def f(x):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        _backend(f, jnp.ones(2), params=params)
    assert params["w"] is w


def test_rng_states_are_reset_per_evaluation_and_restored():
    random.seed(123)
    np.random.seed(123)
    py_state, np_state = random.getstate(), np.random.get_state()

    def f(x):
        # Python-side randomness: the same draw every time thanks to the reseed
        return jnp.sum(x * np.random.rand(2)) + random.random()

    _, evals, _, _ = _run(f, jnp.ones(2), points=[Point(()), Point(())], seed=5)
    assert evals[0].loss == evals[1].loss
    assert random.getstate() == py_state
    restored = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(restored[1:2], np_state[1:2], strict=True))


def test_step_moves_the_base_point():
    backend = _backend(lambda x: jnp.sum(x**2), jnp.array([1.0, 2.0]))
    try:
        backend.step([np.array([0.5, -1.0])])
        np.testing.assert_allclose(backend.blocks()[0].values, [1.5, 1.0])
        np.testing.assert_allclose(backend.gradient(False).total[0], [3.0, 2.0])
        (ev,) = backend.evaluate([Point(())], False)
        assert ev.loss == pytest.approx(3.25)
    finally:
        backend.close()


def test_x64_is_scoped_to_each_call():
    backend = _backend(lambda x: jnp.sum(x**2), jnp.ones(2))
    try:
        _x64_off()
        backend.gradient(True)
        _x64_off()
        backend.evaluate([Point(())], True)
        _x64_off()
    finally:
        backend.close()
    _x64_off()


def test_x64_still_off_in_the_next_test():
    _x64_off()


# ---------------------------------------------------------------- devices


def test_cpu_device():
    grad, _, _, _ = _run(lambda x: jnp.sum(x**2), jnp.ones(2), device="cpu")
    np.testing.assert_allclose(grad.total[0], [2.0, 2.0])


@pytest.mark.skipif(HAS_GPU, reason="checks the error raised without a GPU")
@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:0"])
def test_gpu_device_without_gpu_is_a_clear_error(device):
    with pytest.raises(ValueError, match="no GPU"):
        _backend(lambda x: jnp.sum(x), jnp.ones(2), device=device)


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="unknown device"):
        _backend(lambda x: jnp.sum(x), jnp.ones(2), device="quantum")


@needs_gpu
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_gpu_device_runs_the_check_on_the_gpu(device):
    def f(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    with jax.default_device(jax.devices("cpu")[0]):
        w = jnp.linspace(-1, 1, 12).reshape(4, 3)
        x = jnp.linspace(0, 1, 8).reshape(2, 4)
    backend = _backend(f, w, x, device=device)
    try:
        assert {d.platform for d in backend._base_dev[0].devices()} == {"gpu"}
        grad = backend.gradient(True)
        (ev,) = backend.evaluate([_coord(0, 0, 1e-5)], True)
    finally:
        backend.close()
    assert ev.signature is not None
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        wf, xf = jnp.asarray(w, jnp.float64), jnp.asarray(x, jnp.float64)
        want = jax.grad(lambda w: jnp.sum(jnp.tanh(xf @ w)))(wf)
    np.testing.assert_allclose(grad.total[0], np.asarray(want).reshape(-1), rtol=1e-12)
    _x64_off()


# ------------------------------------------------------------------ the fast path


@pytest.fixture
def tracked_runs(monkeypatch):
    """Whether each group of points the backend evaluates goes to the tracked program."""
    seen: list[bool] = []
    run_chunk = JaxBackend._run_chunk

    def spy(self, idx, val, track, loop=False):
        seen.append(track)
        return run_chunk(self, idx, val, track, loop)

    monkeypatch.setattr(JaxBackend, "_run_chunk", spy)
    return seen


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "point-by-point"])
def test_points_of_a_function_without_decisions_run_untracked_with_the_same_values(
    tracked_runs, batch
):
    """Where the checked point's tracked pass hashed no decision site (a tanh MLP), the
    points go to the untracked program: the empty signature, the tracked values."""
    seen = tracked_runs
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.standard_normal((4, 3))), jnp.asarray(rng.standard_normal((3, 2)))
    b = _backend(lambda x, w: jnp.sum(jnp.tanh(x @ w) ** 2), x, w, batch=batch)
    try:
        center = b.gradient(True).center
        assert center.decisions == 0
        points = [_coord(1, i, d) for i in range(6) for d in (1e-4, -1e-4)]
        fast = b.evaluate(points, True)
        assert seen and not any(seen)  # the untracked program only
        assert all(e.signature == center.signature and e.decisions == 0 for e in fast)
        seen.clear()
        b._n_sites = None  # as before the checked point was tracked: the tracked program
        tracked = b.evaluate(points, True)
        assert seen and all(seen)
        assert [e.signature for e in tracked] == [e.signature for e in fast]
        np.testing.assert_allclose(
            [e.loss for e in fast], [e.loss for e in tracked], rtol=1e-14, atol=0
        )
    finally:
        b.close()


def test_points_of_a_function_with_decisions_stay_tracked(tracked_runs):
    seen = tracked_runs
    x = jnp.asarray(np.random.default_rng(1).standard_normal(5))
    b = _backend(lambda x: jnp.sum(jax.nn.relu(x) * x), x)
    try:
        assert b.gradient(True).center.decisions > 0
        evals = b.evaluate([_coord(0, 2, 1e-4), _coord(0, 2, -1e-4)], True)
        assert seen and all(seen)
        assert all(e.decisions > 0 for e in evals)
    finally:
        b.close()
