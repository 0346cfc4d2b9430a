"""Nothing is lost, bad input never passes silently.

After any check (passing, failing, raising) the user's arrays are the same objects with
the same bits and dtypes, and Python's and NumPy's global RNG states are exactly as
before. Bad input raises ValueError/TypeError naming the block or argument, never a
GradcheckError.
"""

from __future__ import annotations

import random
import warnings

import gradcheck_numpy_layers as L
import numpy as np
import pytest

from pytest_gradcheck import GradcheckError, Tier, gradcheck

# -- snapshots -------------------------------------------------------------------------


def snapshot(obj):
    """Identity, type, dtype, shape, strides, flags and raw bytes, recursively."""
    if isinstance(obj, np.ndarray):
        return (
            "array",
            id(obj),
            type(obj),
            obj.dtype.str,
            obj.shape,
            obj.strides,
            obj.flags.writeable,
            obj.tobytes(),
        )
    if isinstance(obj, dict):
        return ("dict", id(obj), type(obj), [(k, snapshot(v)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return ("seq", id(obj), type(obj), [snapshot(v) for v in obj])
    return ("value", id(obj), type(obj), repr(obj))


def snapshots(*objs):
    return [snapshot(o) for o in objs]


def rng_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return random.getstate(), (kind, keys.tobytes(), pos, has_gauss, cached)


@pytest.fixture
def unusual_rng_state():
    """Both global RNGs mid-stream, with a cached Gaussian each (part of the state)."""
    saved_py, saved_np = random.getstate(), np.random.get_state()
    np.random.seed(1234)
    np.random.rand(7)
    np.random.randn()  # leaves has_gauss = 1 and a cached value
    random.seed(99)
    random.gauss(0.0, 1.0)  # leaves gauss_next set
    assert np.random.get_state()[3] == 1
    yield rng_state()
    random.setstate(saved_py)
    np.random.set_state(saved_np)


class World:
    """The user's objects: float64, float32, read-only, -0.0, a float and int entries."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.x32 = rng.standard_normal((4, 3)).astype(np.float32)
        self.x64 = rng.standard_normal((4, 3))
        self.y = np.array([0, 2, 1, 0])
        frozen = rng.standard_normal(3)
        frozen.flags.writeable = False
        self.params = {
            "W": rng.standard_normal((3, 3)),
            "W32": rng.standard_normal((3, 3)).astype(np.float32),
            "b": np.array([0.0, -0.0, 0.25]),
            "s": 0.5,
            "frozen": frozen,
            "steps": np.arange(3),
            "nested": {"V": rng.standard_normal(3).astype(np.float32)},
        }

    def state(self):
        return snapshots(self.x32, self.x64, self.y, self.params)

    # a params-style check: a dropout-ed SVM over scores that read every params entry
    def f(self, x, y):
        p = self.params
        w = p["W"] + 0.5 * p["W32"] + p["nested"]["V"][:, None]
        scores = x @ w + p["s"] * p["b"] + p["frozen"]
        scores, _ = L.dropout_forward(scores, 0.8)
        noise = random.random()  # Python's RNG, seeded too
        return L.svm_loss(scores + noise, y)[0]

    def grad(self, x, y, scale=1.0):
        p = {k: v for k, v in self.params.items()}
        x = np.asarray(x, dtype=np.float64)
        w = p["W"] + 0.5 * p["W32"] + p["nested"]["V"][:, None]
        scores = x @ w + p["s"] * p["b"] + p["frozen"]
        scores, mask = L.dropout_forward(scores, 0.8)
        noise = random.random()
        ds = L.dropout_backward(L.svm_loss(scores + noise, y)[1], mask)
        dw = x.T @ ds
        return {
            "W": scale * dw,
            "W32": 0.5 * dw,
            "b": p["s"] * ds.sum(axis=0),
            "s": float(np.sum(ds.sum(axis=0) * p["b"])),
            "frozen": ds.sum(axis=0),
            "nested": {"V": dw.sum(axis=1)},
        }

    def check(self, **options):
        return gradcheck(self.f, self.x32, self.y, params=self.params, grad=self.grad, **options)

    # a positional check: float32 and float64 arrays as blocks
    @staticmethod
    def g(a, b, y):
        return np.sum(np.tanh(a.astype(np.float64)) * b) + 0.0 * y.sum()

    @staticmethod
    def g_grad(a, b, y):
        return (1 - np.tanh(a) ** 2) * b, np.tanh(a), None


class Boom(Exception):
    pass


class Interrupt(BaseException):
    pass


def _raise_on_call(n, exc):
    calls = []

    def wrap(fn):
        def inner(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise exc
            return fn(*args, **kwargs)

        return inner

    return wrap


def _nan_on_call(n, fn):
    """f whose value is NaN from its n-th call on: no smaller step gets it back."""
    calls = []

    def inner(*args):
        calls.append(1)
        return np.nan if len(calls) >= n else fn(*args)

    return inner


def _positional(world, **options):
    return gradcheck(world.g, world.x32, world.x64, world.y, grad=world.g_grad, **options)


SCENARIOS = {
    "params-pass": (lambda w: w.check(), None),
    # see test_layers.py::test_scalar_blocks_after_burn_in for whether it passes
    "params-burn-in": (lambda w: w.check(burn_in=3, raise_on_fail=False), "any"),
    "params-pass-untracked": (lambda w: w.check(kinks="off", samples_per_block=None), None),
    "params-fail": (
        lambda w: gradcheck(
            w.f, w.x32, w.y, params=w.params, grad=lambda x, y: w.grad(x, y, scale=1.5)
        ),
        GradcheckError,
    ),
    "params-f-raises-mid-check": (
        lambda w: gradcheck(
            _raise_on_call(9, Boom("boom"))(w.f), w.x32, w.y, params=w.params, grad=w.grad
        ),
        Boom,
    ),
    "params-f-interrupted-mid-check": (
        lambda w: gradcheck(
            _raise_on_call(4, Interrupt())(w.f), w.x32, w.y, params=w.params, grad=w.grad
        ),
        Interrupt,
    ),
    "params-grad-raises": (
        lambda w: gradcheck(
            w.f, w.x32, w.y, params=w.params, grad=_raise_on_call(1, Boom("boom"))(w.grad)
        ),
        Boom,
    ),
    "params-bad-gradient-shape": (
        lambda w: gradcheck(
            w.f, w.x32, w.y, params=w.params, grad=lambda x, y: {**w.grad(x, y), "b": np.ones(4)}
        ),
        ValueError,
    ),
    "positional-pass": (lambda w: _positional(w), None),
    "positional-fail": (
        lambda w: gradcheck(
            w.g,
            w.x32,
            w.x64,
            w.y,
            grad=lambda a, b, y: (w.g_grad(a, b, y)[0] * 1.1, w.g_grad(a, b, y)[1], None),
        ),
        GradcheckError,
    ),
    "positional-f-raises": (
        lambda w: gradcheck(_raise_on_call(6, Boom("boom"))(w.g), w.x32, w.x64, w.y, grad=w.g_grad),
        Boom,
    ),
    "positional-nan-at-a-step": (
        lambda w: gradcheck(_nan_on_call(5, w.g), w.x32, w.x64, w.y, grad=w.g_grad),
        ValueError,
    ),
    "params-nan-at-a-step": (
        lambda w: gradcheck(_nan_on_call(7, w.f), w.x32, w.y, params=w.params, grad=w.grad),
        ValueError,
    ),
    "unknown-option": (lambda w: w.check(epsilon=1e-3), TypeError),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_user_objects_and_rng_states_survive(scenario, unusual_rng_state):
    run, expected = SCENARIOS[scenario]
    world = World()
    before = world.state()
    assert rng_state() == unusual_rng_state
    if expected is None:
        result = run(world)
        assert result.passed
    elif expected == "any":
        result = run(world)
        assert len(result.burn_in_losses) == 4  # 3 steps, then the checked point
        assert result.burn_in_losses[-1] < result.burn_in_losses[0]
    else:
        with pytest.raises(expected):
            run(world)
    assert world.state() == before
    assert rng_state() == unusual_rng_state
    for key in ("W", "W32", "b", "frozen", "steps"):
        assert type(world.params[key]) is np.ndarray  # no tracker view left behind
    assert world.params["W32"].dtype == np.float32
    assert not world.params["frozen"].flags.writeable


def test_the_params_check_covers_every_floating_entry():
    result = World().check()
    assert [b.name for b in result.blocks] == ["W", "W32", "b", "s", "frozen", "nested['V']"]
    dtypes = {b.name: b.dtype for b in result.blocks}
    assert dtypes["W32"] == "float32"
    assert dtypes["W"] == "float64"
    assert any("float32" in w for w in result.warnings)


def test_rng_after_a_check_continues_the_users_stream():
    np.random.seed(5)
    random.seed(5)
    expected = (np.random.RandomState(5).rand(3), random.Random(5).random())
    _positional(World())
    np.testing.assert_array_equal(np.random.rand(3), expected[0])
    assert random.random() == expected[1]


# -- seeding: every evaluation, and grad, see the same random numbers ----------------------


@pytest.mark.parametrize("seed", [0, 7])
def test_every_evaluation_and_grad_see_rngs_reset_to_the_seed(seed):
    seen_f, seen_grad = [], []
    x = np.linspace(-1.0, 1.0, 6)

    def f(x):
        seen_f.append((np.random.rand(), random.random()))
        return np.sum(np.sin(x))

    def grad(x):
        seen_grad.append((np.random.rand(), random.random()))
        return (np.cos(x),)

    result = gradcheck(f, x, grad=grad, seed=seed)
    expected = (np.random.RandomState(seed).rand(), random.Random(seed).random())
    assert len(seen_f) == result.evaluations  # evaluations counts the calls of f
    assert set(seen_f) == {expected}
    assert seen_grad == [expected]


def test_dropout_masks_agree_between_f_and_grad_so_it_checks_exactly():
    x = np.random.default_rng(1).standard_normal((6, 5))

    def f(x):
        return L.dropout_forward(x, 0.5)[0]

    def grad(x, dout):
        return (L.dropout_backward(dout, L.dropout_forward(x, 0.5)[1]),)

    dropped = []
    for seed in (0, 1, 2):
        result = gradcheck(f, x, grad=grad, seed=seed, samples_per_block=None)
        assert result.tier is Tier.HAPPY
        assert result.tolerance is Tier.HAPPY
        (block,) = result.blocks
        # a dropped unit is exactly zero both ways; a kept one agrees to round-off
        zero = block.analytic == 0.0
        assert 5 <= zero.sum() <= 25
        assert np.all(np.abs(block.numeric[zero]) < 1e-9)
        np.testing.assert_allclose(block.numeric[~zero], block.analytic[~zero], rtol=1e-8)
        dropped.append(tuple(np.flatnonzero(zero)))
    assert len(set(dropped)) == 3  # each seed draws its own mask


def test_dropout_from_an_unseeded_private_generator_is_reported_as_bad_input():
    """What the seeding buys: a mask that changes between evaluations cannot check.

    The check notices (two evaluations at one point differ) and says what to do
    instead of blaming the gradient."""
    private = np.random.default_rng()  # not the global RNG: the check cannot reset it
    x = np.random.default_rng(1).standard_normal((6, 5))

    def f(x):
        return x * (private.random(x.shape) < 0.5) / 0.5

    def grad(x, dout):
        return (dout * (private.random(x.shape) < 0.5) / 0.5,)

    with pytest.raises(ValueError, match="not deterministic") as info:
        gradcheck(f, x, grad=grad, samples_per_block=None)
    assert not isinstance(info.value, GradcheckError)
    assert "create the generator inside f" in str(info.value)


def _ulp_apart_at_first_call(alternate, off=None):
    """A wrong gradient of sum(x**2); f's first call (the checked point's value, from
    the gradient pass) is one ulp off the later ones, as a compiled program adding in
    another order gives; with `alternate`, every call flips the last digit (noise);
    with `off`, the first call is that much off, relatively (a program in bfloat16)."""
    calls = [0]

    def f(x):
        calls[0] += 1
        value = float(np.sum(x**2))
        if calls[0] == 1 and off is not None:
            return value * (1 + off)
        if calls[0] == 1 or (alternate and calls[0] % 2):
            value = float(np.nextafter(value, np.inf))
        return value

    return f, (lambda x: (3.0 * x,))


def test_a_last_digit_between_compiled_paths_is_not_called_randomness():
    f, grad = _ulp_apart_at_first_call(alternate=False)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, np.linspace(0.5, 1.5, 4), grad=grad)
    assert info.value.result.tier is Tier.WRONG


def test_a_gradient_pass_far_off_the_evaluations_is_not_called_randomness():
    # f in bfloat16 inside: the gradient pass's program rounds ~1e-3 away from the
    # evaluations', which agree with each other (audit s10)
    f, grad = _ulp_apart_at_first_call(alternate=False, off=1e-3)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, np.linspace(0.5, 1.5, 4), grad=grad)
    assert info.value.result.tier is Tier.WRONG


def test_values_that_keep_changing_by_a_last_digit_are_still_called_non_deterministic():
    f, grad = _ulp_apart_at_first_call(alternate=True)
    with pytest.raises(ValueError, match="not deterministic"):
        gradcheck(f, np.linspace(0.5, 1.5, 4), grad=grad)


def test_f_writing_into_params_cannot_corrupt_the_check_or_the_user():
    params = {"W": np.array([0.5, -0.3, 1.2])}
    before = snapshot(params)

    def f():
        out = np.sum(np.tanh(params["W"]) ** 2)
        params["W"][...] = 7.0  # a careless f
        return out

    def grad():
        t = np.tanh(params["W"])
        return {"W": 2 * t * (1 - t**2)}

    result = gradcheck(f, params=params, grad=grad)
    assert result.passed
    assert snapshot(params) == before


def test_f_writing_into_its_checked_args_cannot_corrupt_the_user():
    x = np.array([[1.0, 2.0], [3.0, 5.0], [-1.0, 0.5]])
    w = np.array([0.5, -0.3])
    before = snapshots(x, w)

    def f(x, w):
        x -= x.mean(axis=0)  # in-place centering of the input
        return np.sum(np.exp(x @ w))

    def grad(x, w):
        xc = x - x.mean(axis=0)
        e = np.exp(xc @ w)
        return np.outer(e, w) - np.outer(e, w).mean(axis=0), xc.T @ e

    result = gradcheck(f, x, w, grad=grad)
    assert result.passed
    assert snapshots(x, w) == before


@pytest.mark.parametrize("style", ["params", "wrt"])
def test_f_writing_into_its_data_args_cannot_corrupt_the_user(style):
    x = np.array([[1.0, 2.0], [3.0, 5.0], [-1.0, 0.5]])
    before = snapshot(x)
    params = {"W": np.array([0.5, -0.3])}

    def f(x, w=None):
        x -= x.mean(axis=0)  # in-place centering of the data
        return np.sum(np.exp(x @ (params["W"] if w is None else w)))

    def dw(x, w):
        xc = x - x.mean(axis=0)
        return xc.T @ np.exp(xc @ w)

    if style == "params":
        result = gradcheck(
            f, x, params=params, grad=lambda x: {"W": dw(x, params["W"])}, raise_on_fail=False
        )
    else:
        w = params["W"].copy()
        result = gradcheck(
            f, x, w, grad=lambda x, w: (None, dw(x, w)), wrt=["args[1]"], raise_on_fail=False
        )
    assert result.passed  # centering is idempotent: the check itself is not disturbed
    assert snapshot(x) == before


# -- bad input: ValueError / TypeError naming the block or argument ------------------------


X = np.array([0.5, -1.0, 2.0])
Y = np.array([1, 2, 0])
W = np.arange(6.0).reshape(3, 2) / 10


def _sum2(x, w):
    return np.sum(np.tanh(x)) + np.sum(w**2)


def _sum2_grad(x, w):
    return 1 - np.tanh(x) ** 2, 2 * w


def _params_case(grad):
    params = {"W": W.copy(), "b": X.copy()}
    return gradcheck(
        lambda: np.sum(params["W"] ** 2) + np.sum(params["b"]), params=params, grad=grad
    )


def _on_the_edge_of_the_domain():
    """x**1.5 at x = 0: finite there, with gradient 0, and NaN at every step below."""
    with np.errstate(invalid="ignore"):
        return gradcheck(
            lambda x: np.sum(np.sqrt(x) ** 3), np.array([0.0, 1.0]), grad=lambda x: (1.5 * x**0.5,)
        )


BAD = {
    "loss-is-a-string": (
        lambda: gradcheck(lambda x: "0.5", X, grad=lambda x: (X,)),
        TypeError,
        ["str"],
    ),
    "loss-is-None": (
        lambda: gradcheck(lambda x: None, X, grad=lambda x: (X,)),
        TypeError,
        ["NoneType"],
    ),
    "loss-is-a-list": (
        lambda: gradcheck(lambda x: [1.0, 2.0], X, grad=lambda x: (X,)),
        TypeError,
        ["list"],
    ),
    "loss-is-nan": (
        lambda: gradcheck(lambda x: np.sum(x) * np.nan, X, grad=lambda x: (np.ones(3),)),
        ValueError,
        ["nan", "loss"],
    ),
    "loss-is-inf": (
        lambda: gradcheck(lambda x: np.sum(x) + np.inf, X, grad=lambda x: (np.ones(3),)),
        ValueError,
        ["inf", "loss"],
    ),
    "loss-nan-at-a-step": (
        _on_the_edge_of_the_domain,
        ValueError,
        ["nan", "f(x - h) for block 'args[0]' at index (0,)", "every step down to h/1000"],
    ),
    "term-is-nan": (
        lambda: gradcheck(
            lambda x: {"data": np.sum(x), "reg": np.nan},
            X,
            grad=lambda x: {"data": (np.ones(3),), "reg": (np.zeros(3),)},
        ),
        ValueError,
        ["nan"],
    ),
    "inf-in-gradient": (
        lambda: gradcheck(lambda x: np.sum(x), X, grad=lambda x: (np.array([1.0, np.inf, 1.0]),)),
        ValueError,
        ["'args[0]'", "inf"],
    ),
    "nan-in-params-gradient": (
        lambda: _params_case(lambda: {"W": np.full((3, 2), np.nan), "b": np.ones(3)}),
        ValueError,
        ["'W'", "nan"],
    ),
    "no-gradient-for-a-floating-arg": (
        lambda: gradcheck(_sum2, X, W, grad=lambda x, w: (_sum2_grad(x, w)[0], None)),
        ValueError,
        ["'args[1]'"],
    ),
    "no-gradient-for-a-params-entry": (
        lambda: _params_case(lambda: {"W": 2 * W}),
        ValueError,
        ["'b'"],
    ),
    "missing-grad": (lambda: gradcheck(_sum2, X, W), TypeError, ["grad"]),
    "grad-not-callable": (lambda: gradcheck(_sum2, X, W, grad=(X, W)), TypeError, ["grad"]),
    "f-not-callable": (lambda: gradcheck(1.0, X, grad=lambda x: (X,)), TypeError, ["f"]),
    "gradient-of-the-wrong-shape": (
        lambda: gradcheck(_sum2, X, W, grad=lambda x, w: (_sum2_grad(x, w)[0], 2 * w.T)),
        ValueError,
        ["'args[1]'", "(2, 3)", "(3, 2)"],
    ),
    "gradient-tuple-too-short": (
        lambda: gradcheck(_sum2, X, W, grad=lambda x, w: (_sum2_grad(x, w)[0],)),
        ValueError,
        ["tuple", "2"],
    ),
    "params-grad-not-a-dict": (
        lambda: _params_case(lambda: (2 * W, np.ones(3))),
        TypeError,
        ["dict"],
    ),
    "terms-grad-not-a-mapping": (
        lambda: gradcheck(lambda x: {"a": np.sum(x)}, X, grad=lambda x: (np.ones(3),)),
        TypeError,
        ["term"],
    ),
    "terms-grad-other-terms": (
        lambda: gradcheck(
            lambda x: {"data": np.sum(x), "reg": np.sum(x**2)},
            X,
            grad=lambda x: {"data": (np.ones(3),)},
        ),
        ValueError,
        ["'reg'"],
    ),
    "wrt-names-a-non-floating-block": (
        lambda: gradcheck(
            lambda x, y: np.sum(x), X, Y, grad=lambda x, y: (np.ones(3), None), wrt=["args[1]"]
        ),
        TypeError,
        ["'args[1]'", "floating"],
    ),
    "wrt-names-an-unknown-block": (
        lambda: gradcheck(
            lambda x, y: np.sum(x), X, Y, grad=lambda x, y: (np.ones(3), None), wrt=["W9"]
        ),
        ValueError,
        ["'W9'", "args[0]"],
    ),
    "no-floating-block": (
        lambda: gradcheck(lambda y: float(np.sum(y)), Y, grad=lambda y: (None,)),
        ValueError,
        ["floating"],
    ),
    "unknown-option": (
        lambda: gradcheck(lambda x: np.sum(x), X, grad=lambda x: (np.ones(3),), epsilon=1e-3),
        TypeError,
        ["'epsilon'", "eps"],
    ),
    "bad-option-value-eps": (
        lambda: gradcheck(lambda x: np.sum(x), X, grad=lambda x: (np.ones(3),), eps=-1.0),
        ValueError,
        ["eps"],
    ),
    "bad-option-value-mode": (
        lambda: gradcheck(lambda x: np.sum(x), X, grad=lambda x: (np.ones(3),), mode="all"),
        ValueError,
        ["mode"],
    ),
    "bad-option-value-kinks": (
        lambda: gradcheck(lambda x: np.sum(x), X, grad=lambda x: (np.ones(3),), kinks="on"),
        ValueError,
        ["kinks"],
    ),
    "bad-option-value-tolerance": (
        lambda: gradcheck(lambda x: np.sum(x), X, grad=lambda x: (np.ones(3),), tolerance="fine"),
        ValueError,
        ["fine"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_a_clear_error_not_a_gradcheck_error(case, unusual_rng_state):
    run, expected, fragments = BAD[case]
    before = snapshots(X, Y, W)
    with pytest.raises(expected) as info:
        run()
    err = info.value
    assert not isinstance(err, GradcheckError)
    assert not isinstance(err, AssertionError)
    message = str(err)
    assert message.startswith("gradcheck")
    for fragment in fragments:
        assert fragment in message
    assert snapshots(X, Y, W) == before
    assert rng_state() == unusual_rng_state


def test_a_nan_term_is_named():
    with pytest.raises(ValueError, match="'reg'"):
        BAD["term-is-nan"][0]()


def test_a_complex_loss_is_rejected_with_a_gradcheck_message():
    with pytest.raises(TypeError, match="gradcheck"):
        gradcheck(lambda x: np.sum(x) + 1j, X, grad=lambda x: (np.ones(3),))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_analytic_gradient_is_named_with_its_index(bad):
    x = np.array([0.5, -1.0, 2.0])

    def grad(x):
        g = 2 * x
        g[1] = bad
        return (g,)

    with pytest.raises(
        ValueError, match=r"block 'args\[0\]' holds .* at index 1; gradients must be finite"
    ):
        gradcheck(lambda x: np.sum(x**2), x, grad=grad)


def test_a_non_finite_entry_of_a_matrix_gradient_is_named_by_its_multi_index():
    # a flat index (19) makes the user unravel it by hand; the block's index is (3, 4)
    w = np.arange(20.0).reshape(4, 5) / 10

    def grad(w):
        g = 2 * w
        g[3, 4] = np.nan
        return (g,)

    with pytest.raises(
        ValueError,
        match=r"block 'args\[0\]' holds nan at index \(3, 4\) \(flat index 19\); gradients",
    ):
        gradcheck(lambda w: np.sum(w**2), w, grad=grad)


def test_huge_finite_gradients_whose_sum_overflows_are_not_called_non_finite():
    # the sum of the entries overflows to inf: the per-entry check must decide
    x = np.full(1000, 0.01)  # f = 5e306, each gradient entry 1e306, their sum 1e309
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor an overflow warning of ours
        result = gradcheck(
            lambda x: 5e307 * np.sum(x**2), x, grad=lambda x: (1e308 * x,), raise_on_fail=False
        )
    assert np.all(result.blocks[0].analytic == 1e306)


def test_an_array_output_needs_a_grad_that_takes_dout():
    """f returning an array is reduced with a fixed random dout, which grad receives as
    a keyword: a grad without it is told so (not a bare TypeError from the call), while
    one with it (or **kwargs) checks."""
    x = np.random.default_rng(0).standard_normal(5)
    with pytest.raises(TypeError, match="grad has no dout parameter") as info:
        gradcheck(lambda a: a**2, x, grad=lambda a: (2 * a,))
    assert "shape (5,)" in str(info.value)
    assert gradcheck(lambda a: a**2, x, grad=lambda a, dout: (2 * a * dout,)).passed
    assert gradcheck(lambda a: a**2, x, grad=lambda a, **kw: (2 * a * kw["dout"],)).passed

    def grad_raising(a, *, dout):  # a TypeError inside grad stays grad's own
        raise TypeError("my backward is broken")

    with pytest.raises(TypeError, match="my backward is broken"):
        gradcheck(lambda a: a**2, x, grad=grad_raising)


@pytest.mark.parametrize(
    ("f", "op"),
    [
        (lambda x: np.sum(x.astype(np.float32) ** 3).astype(np.float64), "astype -> float32"),
        (lambda x: float(np.sum(np.multiply(x, x, dtype=np.float32) * x)), "multiply -> float32"),
    ],
    ids=["astype", "dtype="],
)
def test_a_cast_to_float32_inside_f_is_named_and_hinted(f, op):
    """As torch's and JAX's backends do: the operation that lowered float64 values is
    named in a warning, and the failure it causes hints at it; float64 inputs, so the
    input's dtype is no clue here."""
    x = np.array([1.1, -2.3, 3.7])
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, x, grad=lambda x: (3 * x**2,))
    message = str(info.value)
    assert f"f computes in lower precision inside ({op})" in message
    assert "hint: f computes in lower precision inside" in message
    plain = gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: (3 * x**2,))
    assert plain.tier is Tier.HAPPY
    assert not any("lower precision" in w for w in plain.warnings)
