"""JAX: a max that only stabilizes a softmax, a sign that cannot change, a variance
clipped at 0, or the branches of JAX's own `logaddexp`, are no kinks.

`jax.nn.log_softmax` takes its max through `stop_gradient`; `jax.nn.logsumexp` adds
the max back and takes the `abs` of a sum of exponentials, positive by construction
(the tracker's positivity analysis). A hand-written stable softmax has neither: the
shift test (one more evaluation, every max/min reduction moved) shows that the loss
does not read the max. Each is held to HAPPY, so an error of 1e-5 fails. So are the
stable sigmoid and logistic loss: the same evaluation flips their two-way decisions
(comparisons, max and min, abs), and either branch computes the same function.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from pytest_gradcheck import GradcheckError, Tier, gradcheck  # noqa: E402
from pytest_gradcheck.backends import jax as backend_module  # noqa: E402

X = np.random.default_rng(4).standard_normal((6, 4))
Y = np.array([0, 1, 2, 0, 1, 2])


def _w():
    return jnp.asarray(np.random.default_rng(5).standard_normal((4, 3)))


def manual_nll(s):
    """Cross-entropy through a hand-written stable log-sum-exp (the max taken twice)."""
    z = s - s.max(axis=1, keepdims=True)
    lse = jnp.log(jnp.exp(z).sum(axis=1)) + s.max(axis=1)
    return jnp.mean(lse - s[jnp.arange(len(Y)), Y])


def library_nll(s):
    """The optax-style form: jax.nn.logsumexp minus the label's score."""
    return jnp.mean(jax.nn.logsumexp(s, axis=1) - s[jnp.arange(len(Y)), Y])


def smooth_nll(s):
    return -jnp.mean(jax.nn.log_softmax(s, axis=1)[jnp.arange(len(Y)), Y])


def test_logsumexp_records_no_decision():
    # its abs(sum(exp(...))) is of a positive value; its max is under stop_gradient
    smooth = gradcheck(lambda W: smooth_nll(X @ W), _w())
    result = gradcheck(lambda W: library_nll(X @ W), _w())
    assert result.passed and not result.kinks_present
    assert result.tolerance is Tier.HAPPY
    assert result.evaluations == smooth.evaluations  # no shift test was needed


@pytest.mark.parametrize(
    "f, kink",
    [
        (lambda x: jnp.sum(jnp.abs(jnp.exp(x) + 1.0)), False),
        (lambda x: jnp.sum(jnp.sign(jnp.exp(x).sum()) * x), False),
        (lambda x: jnp.sum(jnp.abs(x)), True),  # not positive: a kink at 0
        (lambda x: jnp.sum(jnp.abs(jnp.exp(x) - 1.0)), True),
    ],
    ids=["abs-of-positive", "sign-of-positive", "abs", "abs-of-difference"],
)
def test_the_sign_of_a_positive_value_is_no_decision(f, kink):
    result = gradcheck(f, jnp.asarray([0.3, -0.2, 0.5]))
    assert result.passed
    assert result.kinks_present is kink


@pytest.mark.parametrize(
    "f",
    [
        lambda x: jax.nn.softplus(x).sum(),
        lambda x: jax.nn.log_sigmoid(x).sum(),  # optax's sigmoid_binary_cross_entropy
        lambda x: jnp.logaddexp(x, 0.3).sum(),
        lambda x: jnp.logaddexp2(x, 0.3).sum(),
        lambda x: jax.nn.mish(x).sum(),
    ],
    ids=["softplus", "log_sigmoid", "logaddexp", "logaddexp2", "mish"],
)
def test_jax_logaddexp_is_smooth(f):
    # max(a, b) + log1p(exp(-|a - b|)): two decisions inside JAX's logaddexp, no kink
    x = jnp.asarray([0.3, -0.2, 0.5, 0.3 + 1e-9, -2.0])  # entry 3: a near tie with 0.3
    result = gradcheck(f, x, mode="coords", samples_per_block=None)
    assert result.passed and not result.kinks_present
    assert result.tolerance is Tier.HAPPY
    assert result.kinks_crossed == 0


def test_a_logaddexp_of_ones_own_is_tracked():
    # the same name outside JAX's sources: its decisions count
    @jax.jit
    def logaddexp(a, b):
        return jnp.maximum(a, b) + 0.1 * jnp.abs(a - b)  # a kink at a == b

    result = gradcheck(lambda x: logaddexp(x, 0.3).sum(), jnp.asarray([0.3, -0.2, 0.5]))
    assert result.passed
    assert result.kinks_present
    assert result.tolerance is Tier.OK


@pytest.mark.parametrize("jit", [False, True], ids=["plain", "jitted"])
def test_a_hand_written_stable_softmax_is_held_to_happy(jit):
    f = (lambda W: manual_nll(X @ W)) if not jit else jax.jit(lambda W: manual_nll(X @ W))
    smooth = gradcheck(lambda W: smooth_nll(X @ W), _w())
    for _ in range(2):  # the second check finds the compiled programs, and the sites
        result = gradcheck(f, _w())
        assert result.passed and not result.kinks_present
        assert result.tolerance is Tier.HAPPY
        assert result.evaluations == smooth.evaluations + 1  # the shift test


@jax.custom_vjp
def stable_nll(s, factor):
    return manual_nll(s)


def _stable_fwd(s, factor):
    return manual_nll(s), (s, factor)


def _stable_bwd(res, g):
    s, factor = res
    p = jax.nn.softmax(s, axis=1)
    d = (p - jax.nn.one_hot(Y, 3)) / len(Y)
    return g * d * factor, None


stable_nll.defvjp(_stable_fwd, _stable_bwd)


def test_a_small_error_in_a_stable_softmax_rule_fails():
    ok = gradcheck(lambda W: stable_nll(X @ W, 1.0), _w())
    assert ok.passed and ok.tolerance is Tier.HAPPY
    with pytest.raises(GradcheckError) as info:  # relative error 1e-5: tier OK
        gradcheck(lambda W: stable_nll(X @ W, 1.0 + 1e-5), _w())
    result = info.value.result
    assert result.tolerance is Tier.HAPPY
    assert result.tier is Tier.OK


@pytest.mark.parametrize(
    "loss",
    [
        lambda s: s.max(axis=1).sum(),
        lambda s: s[0].max() - s[1].max(),
        lambda s: manual_nll(s) + 0.1 * s.max(),
    ],
    ids=["max", "difference", "softmax plus max"],
)
def test_a_max_the_loss_reads_stays_a_kink(loss):
    result = gradcheck(lambda W: loss(X @ W), _w())
    assert result.passed
    assert result.kinks_present
    assert result.tolerance is Tier.OK


def test_a_near_tie_under_a_shift_max_is_no_crossing(monkeypatch):
    W = np.asarray(_w()).copy()
    s = X[0] @ W
    row, other = int(np.argmax(s)), (int(np.argmax(s)) + 1) % 3
    W[:, other] += (s[row] - s[other] + 1e-9) * X[0] / (X[0] @ X[0])
    untracked = []
    run = backend_module.JaxBackend._run_chunk

    def spy(self, idx, val, track, loop=False):
        untracked.append(not track)
        return run(self, idx, val, track, loop)

    monkeypatch.setattr(backend_module.JaxBackend, "_run_chunk", spy)
    result = gradcheck(
        lambda W: manual_nll(X @ W), jnp.asarray(W), mode="coords", samples_per_block=None
    )
    assert result.passed and result.tier is Tier.HAPPY
    assert result.kinks_crossed == 0
    assert untracked and all(untracked)  # the shift's max is no longer tracked


SEGMENTS = jnp.array([0, 0, 1, 1, 1, 2])


def test_a_segment_softmax_is_held_to_happy():
    # jraph's segment softmax: the segment maxima (a scatter-max) are a shift
    w = jnp.asarray(np.random.default_rng(6).standard_normal(6))

    def f(x):
        z = x - jax.ops.segment_max(x, SEGMENTS, num_segments=3)[SEGMENTS]
        e = jnp.exp(z)
        return jnp.sum(e / jax.ops.segment_sum(e, SEGMENTS, num_segments=3)[SEGMENTS] * w)

    x = jnp.asarray(np.random.default_rng(7).standard_normal(6))
    result = gradcheck(f, x)
    assert result.passed and not result.kinks_present
    assert result.tolerance is Tier.HAPPY
    # the maxima themselves, read by the loss: kinks
    pooled = gradcheck(lambda x: jax.ops.segment_max(x, SEGMENTS, num_segments=3) @ w[:3], x)
    assert pooled.passed and pooled.kinks_present and pooled.tolerance is Tier.OK


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU visible to JAX")
def test_on_a_gpu_a_stable_softmax_is_a_shift():
    result = gradcheck(lambda W: manual_nll(X @ W), _w(), device="gpu")
    assert result.passed and not result.kinks_present
    assert result.tolerance is Tier.HAPPY


GAIN = jnp.asarray(np.random.default_rng(8).standard_normal(6))


def flax_layer_norm(x, eps=1e-6):
    """flax.linen.LayerNorm's fast variance: max(0, mean(x**2) - mean(x)**2)."""
    mu, mu2 = x.mean(-1), jnp.square(x).mean(-1)
    var = jnp.maximum(0.0, mu2 - jnp.square(mu))
    return (x - mu[:, None]) * jax.lax.rsqrt(var[:, None] + eps) * GAIN


@jax.jit
def _mean_sq(x):
    return jnp.square(x).mean(-1)


@jax.jit
def _sq(m):
    return jnp.square(m)


@jax.jit
def _sq_mean_of_double(x):
    return jnp.square((2.0 * x).mean(-1))  # the mean of a value made inside the jit


@pytest.mark.parametrize(
    "f, kink",
    [
        (lambda x: jnp.sum(jax.nn.standardize(x, axis=-1) * GAIN), False),
        (lambda x: jnp.sum(flax_layer_norm(x) ** 2), False),
        (jax.jit(lambda x: jnp.sum(flax_layer_norm(x) ** 2)), False),
        # not a variance: the square of another value's mean, or over other axes
        (
            lambda x: jnp.maximum(
                0.0, jnp.square(x).mean(-1) - jnp.square((1.5 * x).mean(-1))
            ).sum(),
            True,
        ),
        (
            lambda x: jnp.maximum(0.0, jnp.square(x).mean(-1) - jnp.square(x.mean(0)).mean()).sum(),
            True,
        ),
        (lambda x: jnp.maximum(0.0, x).sum(), True),  # a ReLU
        # the two moments computed in jitted helpers: followed through the calls
        (lambda x: jnp.maximum(0.0, _mean_sq(x) - _sq(x.mean(-1))).sum(), False),
        (lambda x: jnp.maximum(0.0, _mean_sq(x) - _sq_mean_of_double(x)).sum(), True),
    ],
    ids=[
        "standardize",
        "flax LayerNorm",
        "jitted",
        "other value",
        "other axes",
        "relu",
        "through calls",
        "inner value",
    ],
)
def test_a_variance_clipped_at_zero_is_no_kink(f, kink):
    x = jnp.asarray(np.random.default_rng(9).standard_normal((4, 6)))
    result = gradcheck(f, x)
    assert result.passed
    assert result.kinks_present is kink
    assert result.tolerance is (Tier.OK if kink else Tier.HAPPY)


# -- two-way decisions with one function on both branches ----------------------------

LOGITS = jnp.asarray(np.random.default_rng(8).standard_normal(24) * 4)
LABELS = jnp.asarray(np.random.default_rng(9).random(24) > 0.5, LOGITS.dtype)


def stable_sigmoid(x):
    return jnp.where(x >= 0, 1 / (1 + jnp.exp(-x)), jnp.exp(x) / (1 + jnp.exp(x)))


@jax.custom_vjp
def logistic_loss(x, factor):
    """max(x, 0) - x z + log1p(exp(-|x|)), with a hand-written rule `factor` off."""
    return jnp.sum(jnp.maximum(x, 0) - x * LABELS + jnp.log1p(jnp.exp(-jnp.abs(x))))


def _logistic_fwd(x, factor):
    return logistic_loss(x, factor), (x, factor)


def _logistic_bwd(res, g):
    x, factor = res
    return g * factor * (jax.nn.sigmoid(x) - LABELS), None


logistic_loss.defvjp(_logistic_fwd, _logistic_bwd)


@pytest.mark.parametrize(
    "f",
    [
        lambda x: jnp.sum(stable_sigmoid(x) * LABELS),
        lambda x: jnp.sum(jax.nn.relu(x) - x * LABELS + jnp.log1p(jnp.exp(-jnp.abs(x)))),
        jax.jit(lambda x: logistic_loss(x, 1.0)),
    ],
    ids=["sigmoid-where", "logistic-relu", "logistic-jitted"],
)
def test_stable_sigmoid_forms_are_held_to_happy(f):
    """Comparisons inverted, max and min swapped, abs negated (the shift test): each
    entry takes the other form of one function, so the loss does not change."""
    result = gradcheck(f, LOGITS)
    assert result.passed and result.tier is Tier.HAPPY
    assert not result.kinks_present and result.tolerance is Tier.HAPPY


def test_a_small_error_in_a_stable_logistic_rule_fails_and_a_tie_stays_a_kink():
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x: logistic_loss(x, 1.0 + 1e-5), LOGITS)
    assert info.value.result.tier is Tier.OK
    # an entry exactly at 0: both branches agree there, the test cannot tell
    tied = LOGITS.at[5].set(0.0)
    result = gradcheck(lambda x: logistic_loss(x, 1.0), tied)
    assert result.passed and result.kinks_present and result.tolerance is Tier.OK


@pytest.mark.parametrize(
    "f",
    [
        lambda x: jnp.sum(jax.nn.relu(x) ** 2 * LABELS),
        lambda x: jnp.sum(jnp.abs(x) * LABELS),
        lambda x: jnp.sum(jnp.where(x > 0, x, 0.1 * x) * LABELS),
        lambda x: jnp.sum(jnp.maximum(1 - x, 0) * LABELS),
        lambda x: jnp.sum(jnp.clip(x, -1, 1) * LABELS),
    ],
    ids=["relu", "l1", "leaky", "hinge", "clip"],
)
def test_two_way_decisions_the_loss_depends_on_stay_kinks(f):
    result = gradcheck(f, LOGITS)
    assert result.passed and result.kinks_present and result.tolerance is Tier.OK


@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU visible to JAX")
def test_on_a_gpu_a_stable_logistic_loss_is_held_to_happy():
    result = gradcheck(jax.jit(lambda x: logistic_loss(x, 1.0)), LOGITS, device="gpu")
    assert result.passed and result.tolerance is Tier.HAPPY
    relu = gradcheck(lambda x: jnp.sum(jax.nn.relu(x) ** 2), LOGITS, device="gpu")
    assert relu.passed and relu.tolerance is Tier.OK


@pytest.mark.parametrize("convention", ["x>0", "x>=0"])
def test_either_subgradient_of_a_where_at_an_exact_zero_passes(convention):
    """where(x > 0, x, 0) at x == 0 exactly: the comparison's tie is a decision of its
    own, so a hand-written backward taking either side passes."""

    @jax.custom_vjp
    def relu(x):
        return jnp.where(x > 0, x, 0.0)

    def derivative(x):
        return (x > 0) if convention == "x>0" else (x >= 0)

    relu.defvjp(lambda x: (relu(x), x), lambda x, g: (g * derivative(x),))
    x = jnp.array([0.7, -0.4, 0.0, 1.2, 0.0, -2.0])
    w = jnp.array([0.3, -1.1, 0.8, 0.5, -0.6, 0.9])
    result = gradcheck(lambda x: (relu(x) * w).sum(), x)
    assert result.passed and result.kinks_crossed >= 2
