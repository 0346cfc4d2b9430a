"""Compiled programs are reused across checks, and never for another computation.

The JAX backend keys its programs on the traced computation (see `_Program`), so a
second check of the same function at the same shapes compiles nothing, while a check
of a different computation, however alike (a custom rule's bwd wrong in one entry,
under the same Python names), gets programs of its own. The values a closure captures
are arguments of the programs: a changed array is used without a recompile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from pytest_gradcheck import gradcheck  # noqa: E402
from pytest_gradcheck.backends._base import Point, Settings  # noqa: E402
from pytest_gradcheck.backends.jax import JaxBackend, _Program  # noqa: E402

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def _compiles() -> Iterator[list[int]]:
    """Count XLA compilations inside the block: ``count[0]``."""
    count = [0]

    def listener(event: str, duration: float, **kwargs: object) -> None:
        if event == _COMPILE_EVENT:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _check(f, *args, **options):
    with _compiles() as count:
        result = gradcheck(f, *args, raise_on_fail=False, **options)
    return result, count[0]


def _assert_same(a, b) -> None:
    assert (a.passed, a.tier, a.evaluations, a.kinks_present, a.kinks_crossed) == (
        b.passed,
        b.tier,
        b.evaluations,
        b.kinks_present,
        b.kinks_crossed,
    )
    assert len(a.blocks) == len(b.blocks)
    for x, y in zip(a.blocks, b.blocks, strict=True):
        assert x.indices == y.indices
        np.testing.assert_array_equal(x.analytic, y.analytic)
        np.testing.assert_array_equal(x.numeric, y.numeric)
        np.testing.assert_array_equal(x.rel_error, y.rel_error)
        np.testing.assert_array_equal(x.kink_crossed, y.kink_crossed)


def _analytic(result, block: int) -> np.ndarray:
    return np.asarray(result.blocks[block].analytic)


def _expected(grad: np.ndarray, result, block: int) -> np.ndarray:
    return np.array([np.asarray(grad)[i] for i in result.blocks[block].indices])


def _f64(a) -> jax.Array:
    """A float64 JAX array, whatever the session's x64 setting."""
    with jax.enable_x64(True):
        return jnp.asarray(np.asarray(a, np.float64))


def _grad64(f, w) -> np.ndarray:
    """The gradient of f at w, in float64."""
    with jax.enable_x64(True):
        return np.asarray(jax.grad(f)(_f64(w)))


def _backend(f, *args, **settings) -> JaxBackend:
    return JaxBackend(f, args, None, None, Settings(**settings))


# ---------------------------------------------------------------- the same check again


def _mlp_loss(x, y):
    def loss(w1, b1, w2):
        h = jnp.tanh(x @ w1 + b1)
        logp = jax.nn.log_softmax(h @ w2)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)) + 0.1 * jnp.max(w2)

    return loss


def _relu_loss(x, y):
    def loss(w1, b1, w2):
        h = jax.nn.relu(x @ w1 + b1)  # a custom_jvp call: the gradient is traced first
        z = jax.lax.cond(jnp.sum(h) > 0, lambda v: v * 2.0, lambda v: v - 1.0, h @ w2)
        return jnp.sum((z - y[:, None]) ** 2) + jnp.max(w1)

    return loss


@pytest.mark.parametrize("make", [_mlp_loss, _relu_loss], ids=["mlp", "relu_custom_jvp"])
@pytest.mark.parametrize("options", [{}, {"batch": False}], ids=["batched", "unbatched"])
def test_a_second_check_of_the_same_function_compiles_nothing_and_agrees(make, options):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(9, 7)))
    y = jnp.asarray(rng.integers(0, 3, size=9))
    args = (
        jnp.asarray(rng.normal(size=(7, 5))),
        jnp.asarray(rng.normal(size=5) * 0.1),
        jnp.asarray(rng.normal(size=(5, 3))),
    )
    first, _ = _check(make(x, y), *args, **options)
    # a new closure over the same arrays: traced again, same computation
    second, compiles = _check(make(x, y), *args, **options)
    assert first.passed
    assert first.kinks_present  # the site hashes came back from the reused programs
    assert compiles == 0
    _assert_same(first, second)


def test_a_recheck_after_burn_in_and_in_directions_mode_compiles_nothing():
    w = jnp.linspace(-1.0, 1.0, 13)

    def loss(w):
        return jnp.sum(jnp.sin(w) * w**2) + jnp.max(w)

    for options in ({"mode": "directions"}, {"burn_in": 2}):
        first, _ = _check(loss, w, **options)
        second, compiles = _check(loss, w, **options)
        assert first.passed and compiles == 0
        _assert_same(first, second)


# ---------------------------------------------------------------- custom rules


def _custom_vjp_loss(planted: bool):
    """sum(sin(w) * c), its bwd planted wrong by 1% in entry 0 (same names either way)."""

    @jax.custom_vjp
    def layer(w):
        return jnp.sin(w)

    def fwd(w):
        return jnp.sin(w), w

    def bwd(w, g):
        grad = g * jnp.cos(w)
        if planted:
            grad = grad.at[0].multiply(1.01)
        return (grad,)

    layer.defvjp(fwd, bwd)

    def loss(w):
        return jnp.sum(layer(w) * jnp.arange(1.0, w.shape[0] + 1.0))

    return loss


def _custom_jvp_loss(planted: bool):
    """sum(tanh(w) * c), its jvp rule planted wrong by 1% in entry 0."""

    def rule(w):
        d = 1.0 - jnp.tanh(w) ** 2
        return d.at[0].multiply(1.01) if planted else d

    return _jvp_rule_loss(jnp.tanh, rule)


def _jvp_rule_loss(
    primal: Callable[[jax.Array], jax.Array], rule: Callable[[jax.Array], jax.Array]
):
    """sum(primal(w) * c) through a custom_jvp whose derivative is `rule(w)` at call time."""

    @jax.custom_jvp
    def layer(w):
        return primal(w)

    @layer.defjvp
    def layer_jvp(primals, tangents):
        (w,), (t,) = primals, tangents
        return primal(w), rule(w) * t

    def loss(w):
        return jnp.sum(layer(w) * jnp.arange(1.0, w.shape[0] + 1.0))

    return loss


@pytest.mark.parametrize("kind", ["custom_vjp", "custom_jvp"])
@pytest.mark.parametrize("wrong_first", [False, True], ids=["right_first", "wrong_first"])
def test_a_rule_wrong_in_one_entry_is_never_given_the_right_rules_program(kind, wrong_first):
    make = _custom_vjp_loss if kind == "custom_vjp" else _custom_jvp_loss
    # a size of its own per case, so that each case starts with nothing compiled
    n = 5 + 2 * wrong_first + (kind == "custom_jvp")
    w = jnp.linspace(0.1, 0.9, n)
    order = [True, False] if wrong_first else [False, True]
    for planted in order + order:
        result, _ = _check(make(planted), w, mode="coords")
        assert result.passed is (not planted)
        block = result.blocks[0]
        # the analytic gradient is that of this function's own rule
        x = np.asarray(w, np.float64)  # the check runs in float64
        expected = np.cos(x) * np.arange(1.0, n + 1.0)
        if kind == "custom_jvp":
            expected = (1.0 - np.tanh(x) ** 2) * np.arange(1.0, n + 1.0)
        if planted:
            expected[0] *= 1.01
        np.testing.assert_allclose(_analytic(result, 0), _expected(expected, result, 0))
        if planted:
            assert (0,) in [block.indices[i] for i in np.flatnonzero(block.rel_error > 1e-3)]
    # both computations are compiled now: checking either again compiles nothing
    for planted in order:
        _, compiles = _check(make(planted), w, mode="coords")
        assert compiles == 0


def test_the_point_programs_never_run_the_custom_rules():
    """Why leaving the rules out of the evaluation programs' key is safe."""
    calls = {"fwd": 0, "bwd": 0, "jvp": 0}

    @jax.custom_vjp
    def f(w):
        return jnp.sin(w)

    def fwd(w):
        calls["fwd"] += 1
        return jnp.sin(w), w

    def bwd(w, g):
        calls["bwd"] += 1
        return (g * jnp.cos(w),)

    f.defvjp(fwd, bwd)

    @jax.custom_jvp
    def h(w):
        return jnp.tanh(w)

    @h.defjvp
    def h_jvp(primals, tangents):
        calls["jvp"] += 1
        return jnp.tanh(primals[0]), tangents[0] * (1.0 - jnp.tanh(primals[0]) ** 2)

    def loss(w):
        return jnp.sum(f(w) * h(w)) + jnp.max(w)

    w = jnp.linspace(0.1, 0.7, 4)
    points = [Point(((0, np.array([i]), np.array([1e-3])),)) for i in range(4)]
    for batch in (True, False):
        backend = _backend(loss, w, batch=batch)
        # (the custom_jvp rule was traced for the program's key, not run by a program)
        calls["jvp"] = 0
        try:
            assert backend._program.rules  # the custom_vjp rule is left out of the key
            for track in (False, True):
                evals = backend.evaluate(points, track)
                for i, e in enumerate(evals):
                    v = np.asarray(w, np.float64)
                    v[i] += 1e-3
                    assert e.loss == pytest.approx(float(np.sum(np.sin(v) * np.tanh(v)) + v.max()))
        finally:
            backend.close()
    assert calls == {"fwd": 0, "bwd": 0, "jvp": 0}


def _program(f, *args) -> _Program:
    """f's program as the backend keys it (traced under x64, as every check's is)."""
    with jax.enable_x64(True):
        return _Program(jax.make_jaxpr(f)(*args).jaxpr, len(args))


def test_a_custom_jvp_rule_is_keyed_by_what_it_computes_so_relu_reuses_its_gradient():
    """jax.nn.relu is a custom_jvp: its rule, new at every trace, is keyed by the jaxpr of
    its JVP, so the gradient program is reused instead of traced again in every check;
    a custom_vjp rule (its backward is Python) is still left out of the key."""
    w = _f64(np.linspace(-0.9, 0.8, 6))
    relu = _program(lambda w: jnp.sum(jax.nn.relu(w) ** 2), w)
    again = _program(lambda w: jnp.sum(jax.nn.relu(w) ** 2), w)
    assert not relu.rules and relu == again
    assert relu != _program(lambda w: jnp.sum(jnp.maximum(w, 0.0) ** 2), w)
    assert _program(_custom_vjp_loss(False), w).rules
    right, wrong = _program(_custom_jvp_loss(False), w), _program(_custom_jvp_loss(True), w)
    assert not right.rules and not wrong.rules and right != wrong

    def loss(w):
        return jnp.sum(jax.nn.relu(w * jnp.arange(1.0, 7.0)) ** 3)

    backend = _backend(loss, w)
    try:
        backend.gradient(False)
        assert backend._grad_traced == {}  # the gradient program ran as compiled
    finally:
        backend.close()
    first, _ = _check(loss, w)
    second, compiles = _check(loss, w)
    assert first.passed and compiles == 0
    _assert_same(first, second)


@pytest.mark.parametrize("how", ["global", "closure_in_place"])
def test_a_custom_jvp_rule_that_now_computes_otherwise_gets_a_program_of_its_own(how):
    """A rule reading a global, or a NumPy array its closure holds, changed between two
    checks of the same f: the second check differentiates the rule as it is now (a
    program keyed on the rule's old JVP would pass the planted 1% error)."""
    global _RULE_FACTOR
    factor = np.ones(7)
    _RULE_FACTOR = 1.0

    def rule(w):
        scale = _RULE_FACTOR if how == "global" else jnp.asarray(factor)
        return jnp.cos(w) * scale

    loss = _jvp_rule_loss(jnp.sin, rule)
    w = _f64(np.linspace(0.1, 0.9, 7))
    try:
        assert gradcheck(loss, w, mode="coords", raise_on_fail=False).passed
        if how == "global":
            _RULE_FACTOR = 1.01
        else:
            factor[...] = 1.01  # the very same array, new contents
        wrong = gradcheck(loss, w, mode="coords", raise_on_fail=False)
        assert not wrong.passed
        expected = np.cos(np.asarray(w, np.float64)) * np.arange(1.0, 8.0) * 1.01
        np.testing.assert_allclose(_analytic(wrong, 0), _expected(expected, wrong, 0))
        if how == "global":
            _RULE_FACTOR = 1.0
        else:
            factor[...] = 1.0
        assert gradcheck(loss, w, mode="coords", raise_on_fail=False).passed
    finally:
        _RULE_FACTOR = 1.0


_RULE_FACTOR = 1.0


def _symbolic_zeros_loss(planted: bool):
    """sum((sin(w) * x)**2) through a custom_jvp with symbolic zeros, x data: its rule is
    planted wrong (1%) only where x's tangent is a symbolic zero, the one pattern a
    check (which differentiates w alone) asks for; the dense pattern is right."""

    @jax.custom_jvp
    def mul(w, x):
        return jnp.sin(w) * x

    def mul_jvp(primals, tangents):
        (w, x), (tw, tx) = primals, tangents
        out = jnp.sin(w) * x
        if isinstance(tx, jax.custom_derivatives.SymbolicZero):
            return out, jnp.cos(w) * x * tw * (1.01 if planted else 1.0)
        t = jnp.sin(w) * tx
        if not isinstance(tw, jax.custom_derivatives.SymbolicZero):
            t = t + jnp.cos(w) * x * tw
        return out, t

    mul.defjvp(mul_jvp, symbolic_zeros=True)
    x = _f64(np.linspace(1.0, 2.0, 5))
    return lambda w: jnp.sum(mul(w, x) ** 2)


def test_a_custom_jvp_rule_with_symbolic_zeros_is_keyed_on_every_zero_pattern():
    """Keyed on the dense pattern alone, the planted rule would get the right one's
    program (their dense JVPs are the same computation) and pass."""
    w = _f64(np.linspace(0.2, 0.6, 5))
    right, wrong = _program(_symbolic_zeros_loss(False), w), _program(_symbolic_zeros_loss(True), w)
    assert not right.rules and right != wrong
    for planted in (False, True, False, True):
        result = gradcheck(_symbolic_zeros_loss(planted), w, mode="coords", raise_on_fail=False)
        assert result.passed is (not planted)


# ---------------------------------------------------------------- closures and shapes


@pytest.mark.parametrize("kind", ["jax", "numpy", "numpy_in_place"])
def test_a_changed_closure_array_is_used_without_a_recompile(kind):
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(2, 8, 6))
    data = {"x": _f64(x1) if kind == "jax" else x1.copy()}

    def loss(w):
        return jnp.sum(jnp.tanh(data["x"] @ w) ** 2)

    w = _f64(rng.normal(size=6) * 0.3)
    first, _ = _check(loss, w, mode="coords")
    if kind == "numpy_in_place":
        data["x"][...] = x2  # the very same array object, new contents
    else:
        data["x"] = _f64(x2) if kind == "jax" else x2.copy()
    second, compiles = _check(loss, w, mode="coords")
    assert compiles == 0
    assert first.passed and second.passed
    want1 = _grad64(lambda w: jnp.sum(jnp.tanh(x1 @ w) ** 2), w)
    want2 = _grad64(lambda w: jnp.sum(jnp.tanh(x2 @ w) ** 2), w)
    np.testing.assert_allclose(_analytic(first, 0), _expected(want1, first, 0), rtol=1e-12)
    np.testing.assert_allclose(_analytic(second, 0), _expected(want2, second, 0), rtol=1e-12)
    assert not np.allclose(_analytic(first, 0), _analytic(second, 0))


def test_a_changed_closure_array_reaches_the_evaluations_too():
    x = {"x": jnp.arange(6.0).reshape(2, 3)}

    def loss(w):
        return jnp.sum(x["x"] @ w)

    w = jnp.ones(3)
    point = [Point(((0, np.array([1]), np.array([0.5])),))]
    losses = []
    for scale in (1.0, 3.0):
        x["x"] = jnp.arange(6.0).reshape(2, 3) * scale
        backend = _backend(loss, w)
        try:
            with _compiles() as count:
                grad = backend.gradient(True)
                ev = backend.evaluate(point, True)[0]
            losses.append((grad.center.loss, ev.loss, count[0]))
        finally:
            backend.close()
    assert losses[0][:2] == (15.0, 15.0 + 0.5 * 5.0)
    assert losses[1][:2] == (45.0, 45.0 + 0.5 * 15.0)
    assert losses[1][2] == 0


def test_other_shapes_get_programs_of_their_own():
    def make(n):
        x = _f64(np.linspace(-1.0, 1.0, 3 * n).reshape(3, n))

        def loss(w):
            return jnp.sum(jnp.sin(x @ w) * jnp.arange(1.0, 4.0))

        return loss

    results = []
    for n in (4, 6, 4):
        loss = make(n)
        w = _f64(np.linspace(0.2, 0.8, n))
        result, compiles = _check(loss, w, mode="coords")
        want = _grad64(loss, w)
        assert result.passed
        assert len(result.blocks[0].indices) == n
        np.testing.assert_allclose(_analytic(result, 0), _expected(want, result, 0), rtol=1e-12)
        results.append(compiles)
    assert results[1] > 0  # new shapes compile
    assert results[2] == 0  # the first shapes again: reused


def test_literals_and_inner_jit_constants_tell_computations_apart():
    """Values baked into the program (literals, an inner jit's constants) are in its key."""

    def with_literal(c):
        return lambda w: jnp.sum(w * c)

    def with_inner_jit(c):
        inner = jax.jit(lambda w: w * jnp.asarray(c))  # c becomes the inner jaxpr's const

        return lambda w: jnp.sum(inner(w))

    w = jnp.linspace(0.5, 1.5, 3)
    for make in (with_literal, with_inner_jit):
        for c in (2.0, 3.0, 2.0):
            c_arr = np.array([c, c, c]) if make is with_inner_jit else c
            result, _ = _check(make(c_arr), w, mode="coords")
            assert result.passed
            np.testing.assert_allclose(_analytic(result, 0), [c, c, c])


@pytest.mark.parametrize("size", [12, 600_000], ids=["small", "large"])
def test_a_numpy_array_an_inner_jit_captures_is_read_again_after_an_in_place_change(size):
    """The inner jaxpr is JAX's cached one, its const a view of the user's array."""
    data = np.ones(size)
    inner = jax.jit(lambda w: w * jnp.sum(data) / size)

    def loss(w):
        return jnp.sum(inner(w) * jnp.arange(1.0, 4.0))

    w = jnp.ones(3)
    first, _ = _check(loss, w, mode="coords")
    data[...] = 5.0
    second, _ = _check(loss, w, mode="coords")
    np.testing.assert_allclose(_analytic(first, 0), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(_analytic(second, 0), [5.0, 10.0, 15.0])


def test_programs_are_equal_only_for_the_same_computation():
    w = jnp.linspace(0.1, 0.9, 4)

    def program(f):
        with jax.enable_x64(True):
            closed = jax.make_jaxpr(f)(w)
        return _Program(closed.jaxpr, 1), closed

    a, _ = program(_mlp_like(1.0))
    b, _ = program(_mlp_like(1.0))
    c, _ = program(_mlp_like(1.5))
    assert a == b and hash(a) == hash(b)
    assert a != c
    # the same operations wired differently (the operands of a subtraction swapped)
    d1, _ = program(lambda w: jnp.sum(jnp.sin(w) - jnp.cos(w)))
    d2, _ = program(lambda w: jnp.sum(jnp.cos(w) - jnp.sin(w)))
    d3, _ = program(lambda w: jnp.sum(jnp.sin(w) - jnp.cos(w)))
    assert d1 != d2 and d1 == d3
    # a type of its own (float32 inside) and a literal of its own
    e1, _ = program(lambda w: jnp.sum(w.astype(jnp.float32)))
    e2, _ = program(lambda w: jnp.sum(w.astype(jnp.float16)))
    assert e1 != e2
    f1, _ = program(lambda w: jnp.sum(w + 1.0))
    f2, _ = program(lambda w: jnp.sum(w + 1.0000001))  # one float32 ulp apart
    assert f1 != f2
    assert _Program(a.jaxpr, 1) != _Program(a.jaxpr, 0)  # another split into blocks
    # a custom rule's bwd is left out of the key of the (never differentiated) programs
    good, _ = program(_custom_vjp_loss(False))
    bad, _ = program(_custom_vjp_loss(True))
    assert good.rules and bad.rules and good == bad
    # the closure's values are not in the key
    x = {"x": jnp.ones((2, 4))}
    d, cd = program(lambda w: jnp.sum(x["x"] @ w))
    x["x"] = jnp.zeros((2, 4))
    e, ce = program(lambda w: jnp.sum(x["x"] @ w))
    assert d == e
    assert float(ce.consts[0].sum()) == 0.0 and float(cd.consts[0].sum()) == 8.0


def _mlp_like(scale):
    return lambda w: jnp.sum(jnp.tanh(w * scale)) + jnp.max(w)


# ---------------------------------------------------------------- settings in the key


def test_another_device_context_compiles_its_own_programs():
    def loss(w):
        return jnp.sum(jnp.cos(w * 1.2345) * jnp.arange(11.0))

    w = jnp.linspace(-1.0, 1.0, 11)
    first, _ = _check(loss, w, mode="coords")
    on_cpu, compiles = _check(loss, w, mode="coords", device="cpu")
    again, compiles_again = _check(loss, w, mode="coords", device="cpu")
    assert compiles > 0  # jax.default_device is part of JAX's jit key
    assert compiles_again == 0
    _assert_same(first, on_cpu)
    _assert_same(first, again)


def test_another_matmul_precision_compiles_its_own_program():
    """A program compiled under one precision is not run under another (JAX's jit key)."""
    x = jnp.linspace(0.0, 1.0, 12).reshape(4, 3)

    def loss(w):
        return jnp.sum(jnp.tanh(x @ w) * 0.987)

    backend = _backend(loss, jnp.ones(3))
    try:
        with backend._scope():
            backend._grad_jit(False)
            with _compiles() as same:
                backend._grad_jit(False)
            with _compiles() as other, jax.default_matmul_precision("bfloat16"):
                backend._grad_jit(False)
    finally:
        backend.close()
    assert same[0] == 0
    assert other[0] > 0


def test_the_programs_kept_between_checks_are_bounded(monkeypatch):
    from pytest_gradcheck.backends import jax as jax_backend

    def programs():
        return sum(fn._cache_size() for fn in jax_backend._JITTED)

    monkeypatch.setattr(jax_backend, "_MAX_PROGRAMS", 3)
    for n in (3, 4, 5):  # each shape compiles programs of its own
        gradcheck(lambda x: jnp.sum(jnp.sin(x)), jnp.linspace(0.1, 1.0, n))
        assert programs() <= 3 + 6  # at most the bound, plus one check's programs
    assert programs() > 0
