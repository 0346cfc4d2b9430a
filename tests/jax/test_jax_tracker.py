"""Winner tracking from the jaxpr: every max-like decision is seen, and only those.

Each case puts one coordinate of the input half a step (5e-4) from a kink. A
perturbation of 1e-3 toward the kink crosses it and must change the signature; one of
1e-3 away from it (or 1e-4 toward it) stays on the same side and must not.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
lax = jax.lax

from pytest_gradcheck.backends._base import Point, Settings  # noqa: E402
from pytest_gradcheck.backends.jax import JaxBackend  # noqa: E402

NEAR = 5e-4  # distance from the kink
CROSS = 1e-3  # a step that crosses it
WEIGHTS = np.array([1.0, 2.0, 3.0, 4.0])


def _point(block: int, index: int, delta: float) -> Point:
    return Point(((block, np.array([index]), np.array([delta])),))


def _signatures(f, x, moves, extra=()):
    """The signature at x and at x + delta e_index for each (index, delta) move."""
    backend = JaxBackend(f, (jnp.asarray(x), *extra), None, None, Settings())
    try:
        points = [Point(())] + [_point(0, i, d) for i, d in moves]
        evals = backend.evaluate(points, True)
    finally:
        backend.close()
    return evals


@jax.custom_jvp
def _my_relu(x):
    return jnp.maximum(x, 0.0)


@_my_relu.defjvp
def _my_relu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _my_relu(x), jnp.where(x > 0, t, 0.0)


@jax.custom_vjp
def _vjp_max(x):
    return jnp.maximum(x, 0.0)


_vjp_max.defvjp(lambda x: (jnp.maximum(x, 0.0), x), lambda x, g: (jnp.where(x > 0, g, 0.0),))


def _pool(x, window=(2, 2), strides=(2, 2), padding="VALID"):
    img = x.reshape(1, 4, 4, 1)
    return lax.reduce_window(img, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), padding)


def _while_trips(x):
    # adds x[0] until the sum reaches 1: the trip count is a decision
    def body(c):
        return c[0] + x[0], c[1] + x[1]

    return lax.while_loop(lambda c: c[0] < 1.0, body, (0.0, 0.0))[1]


def _while_body(x):
    def body(c):
        i, acc = c
        return i + 1, acc + jnp.abs(x[i])

    return lax.while_loop(lambda c: c[0] < 3, body, (0, 0.0))[1]


# name, f, base point, index, crossing move (the same-side move is its opposite)
CASES = [
    ("relu", lambda x: jnp.sum(jax.nn.relu(x) * WEIGHTS[:3]), [0.3, -NEAR, 1.0], 1, CROSS),
    ("maximum", lambda x: jnp.maximum(x[0], x[1]) * 3 + x[0], [1.0, 1.0 + NEAR], 0, CROSS),
    ("minimum", lambda x: jnp.minimum(x[0], x[1]) * 3 + x[0], [1.0, 1.0 + NEAR], 0, CROSS),
    (
        "hinge",
        lambda x: jnp.sum(jnp.maximum(0.0, x[1:] - x[0] + 1.0)),
        [0.0, -1.0 - NEAR, 0.5],
        1,
        CROSS,
    ),
    ("where", lambda x: jnp.sum(jnp.where(x > 0, x**2, -x)), [-NEAR, 1.0], 0, CROSS),
    (
        "select_n",
        lambda x: lax.select_n(x[0] > x[1], x[0] * 2, x[1] * 3),
        [1.0, 1.0 + NEAR],
        0,
        CROSS,
    ),
    ("abs", lambda x: jnp.sum(jnp.abs(x) * WEIGHTS[:2]), [-NEAR, 1.0], 0, CROSS),
    ("sign", lambda x: jnp.sum(jnp.sign(x) * x**2), [-NEAR, 1.0], 0, CROSS),
    ("argmax", lambda x: x[jnp.argmax(x)] * 2 + x[2], [1.0, 1.0 + NEAR, 0.2], 0, CROSS),
    ("argmin", lambda x: x[jnp.argmin(x)] * 2 + x[2], [1.0, 1.0 - NEAR, 2.0], 0, -CROSS),
    ("reduce_max", lambda x: jnp.max(x) + x[2], [1.0, 1.0 + NEAR, 0.2], 0, CROSS),
    ("reduce_min", lambda x: jnp.min(x) + x[2], [1.0, 1.0 - NEAR, 2.0], 0, -CROSS),
    ("sort", lambda x: jnp.sort(x) @ WEIGHTS[:3], [1.0, 1.0 + NEAR, 0.2], 0, CROSS),
    (
        "segment_max",
        lambda x: jax.ops.segment_max(x, jnp.array([0, 0, 1]), num_segments=2) @ WEIGHTS[:2],
        [1.0, 1.0 + NEAR, 0.2],
        0,
        CROSS,
    ),
    (
        "scatter_min",
        lambda x: x.at[jnp.array([0, 0])].min(x[2]) @ WEIGHTS[:3],
        [1.0, 2.0, 1.0 - NEAR],
        2,
        CROSS,
    ),
    ("clip", lambda x: jnp.sum(jnp.clip(x, -1.0, 1.0) * x), [1.0 - NEAR, 0.0], 0, CROSS),
    ("top_k", lambda x: lax.top_k(x, 2)[0] @ WEIGHTS[:2], [1.0, 1.0 + NEAR, 0.2], 0, CROSS),
    (
        "max_pool",
        lambda x: jnp.sum(_pool(x) * WEIGHTS.reshape(1, 2, 2, 1)),
        (np.arange(16) * 0.1).tolist(),
        0,
        None,  # filled below: x[0] is put NEAR below the window's winner x[5]
    ),
    (
        "max_pool_same_padding",
        lambda x: jnp.sum(_pool(x, (3, 3), (1, 1), "SAME")),
        (np.arange(16) * 0.1).tolist(),
        0,
        None,
    ),
    (
        "cond",
        lambda x: lax.cond(x[0] > 0, lambda: x[1] * 2, lambda: x[1] * 3),
        [-NEAR, 1.0],
        0,
        CROSS,
    ),
    (
        "scan",
        lambda x: lax.scan(lambda c, a: (c + jax.nn.relu(a) * c, None), 1.0, x)[0],
        [0.3, -NEAR, 1.0],
        1,
        CROSS,
    ),
    ("while_trip_count", _while_trips, [0.25 + NEAR / 4, 1.0], 0, -CROSS),
    ("while_body", _while_body, [0.3, -NEAR, 1.0], 1, CROSS),
    ("custom_jvp", lambda x: jnp.sum(_my_relu(x) * WEIGHTS[:2]), [-NEAR, 1.0], 0, CROSS),
    ("custom_vjp", lambda x: jnp.sum(_vjp_max(x) * WEIGHTS[:2]), [-NEAR, 1.0], 0, CROSS),
    (
        "nested_jit",
        lambda x: jnp.sum(jax.jit(lambda y: jnp.maximum(y, 0.0))(x) * WEIGHTS[:2]),
        [-NEAR, 1.0],
        0,
        CROSS,
    ),
    (
        "vmap_inside",
        lambda x: jnp.sum(jax.vmap(jax.nn.relu)(x) * WEIGHTS[:2]),
        [-NEAR, 1.0],
        0,
        CROSS,
    ),
]


def _case_point(name, base):
    x = np.array(base, dtype=np.float64)
    if name.startswith("max_pool"):
        x[0] = x[5] - NEAR  # window 0 holds x[0], x[1], x[4], x[5]; x[5] wins
        return x, CROSS
    return x, None


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_crossing_changes_signature_same_side_does_not(case):
    name, f, base, index, cross = case
    x, filled = _case_point(name, base)
    cross = filled if cross is None else cross
    center, crossed, same, small = _signatures(
        f, x, [(index, cross), (index, -cross), (index, cross / 10)]
    )
    assert center.decisions > 0, f"{name}: no decision recorded"
    assert crossed.signature != center.signature, f"{name}: the kink crossing was not seen"
    assert same.signature == center.signature, f"{name}: a move away from the kink changed it"
    assert small.signature == center.signature, f"{name}: a move short of the kink changed it"


def test_large_pooling_window_is_tracked():
    # 81 positions per window: tracked by how many windows each element won
    def f(x):
        img = x.reshape(1, 9, 9, 1)
        out = lax.reduce_window(img, -jnp.inf, lax.max, (1, 9, 9, 1), (1, 1, 1, 1), "SAME")
        return jnp.sum(out)

    x = np.linspace(0.0, 1.0, 81)
    x[40] = x[80] - NEAR  # the center window's runner-up
    center, crossed, same = _signatures(f, x, [(40, CROSS), (40, -CROSS)])
    assert center.decisions > 0
    assert crossed.signature != center.signature
    assert same.signature == center.signature


@pytest.mark.parametrize(
    "f",
    [
        lambda x: -jax.nn.log_softmax(x)[0],  # its max shift is under stop_gradient
        lambda x: jnp.sum(jax.nn.softmax(x) * WEIGHTS[:3]),
        lambda x: jnp.sum(jnp.tanh(x) ** 2),
        lambda x: lax.fori_loop(0, 3, lambda i, c: c * jnp.tanh(x[i]), 1.0),  # loop counter
        lambda x: x[jnp.int32(1)] * x[0],  # index normalisation compares integers
        lambda x: jnp.sum(x * lax.stop_gradient(jnp.maximum(x, 0.0))),
        # a float made complex, and a complex modulus: no rounding, no branches
        lambda x: jnp.sum(jnp.abs(x * jnp.asarray([1 + 2j, -0.5 + 1j, 2 - 1j])) ** 2),
    ],
    ids=[
        "log_softmax",
        "softmax",
        "tanh",
        "fori_loop",
        "int_index",
        "stop_gradient_max",
        "complex_modulus",
    ],
)
def test_smooth_functions_record_no_decision(f):
    (center,) = _signatures(f, [0.3, -0.2, 0.5], [])
    assert center.decisions == 0


def test_dropout_mask_from_a_key_is_not_a_decision():
    def f(x, key):
        keep = jax.random.bernoulli(key, 0.5, x.shape)
        return jnp.sum(jnp.where(keep, x, 0.0) ** 2)

    center, moved = _signatures(f, [0.3, -0.2, 0.5, 0.1], [(1, 0.1)], (jax.random.key(0),))
    assert center.decisions == 0
    assert moved.signature == center.signature


def test_decisions_agree_batched_and_one_at_a_time():
    def f(x):
        return jnp.sum(jnp.maximum(x, 0.0) * WEIGHTS) + jnp.max(x)

    x = jnp.array([0.3, -NEAR, 1.0, 0.9])
    points = [Point(())] + [_point(0, i, d) for i in range(4) for d in (CROSS, -CROSS)]
    results = []
    for batch in (True, False):
        backend = JaxBackend(f, (x,), None, None, Settings(batch=batch))
        try:
            results.append(backend.evaluate(points, True))
        finally:
            backend.close()
    batched, looped = results
    assert [e.signature for e in batched] == [e.signature for e in looped]
    np.testing.assert_allclose([e.loss for e in batched], [e.loss for e in looped], rtol=1e-15)


def test_gradient_center_signature_matches_evaluate():
    def f(x):
        return jnp.sum(jax.nn.relu(x) * WEIGHTS[:3])

    backend = JaxBackend(f, (jnp.array([0.3, -NEAR, 1.0]),), None, None, Settings())
    try:
        grad = backend.gradient(True)
        (center,) = backend.evaluate([Point(())], True)
    finally:
        backend.close()
    assert grad.center.signature == center.signature
    assert grad.center.decisions == center.decisions == 1
