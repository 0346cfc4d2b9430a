"""CS231n-style NumPy layers: each correct layer passes, each planted bug fails and names
its block.

Calling styles covered: positional args with `grad` returning a tuple, `params=` dicts
with `grad` returning a dict, nested dict args (``args[0]['W1']``) with `wrt`; losses
as a scalar, as named terms ``{"data": ..., "reg": ...}`` and as a non-scalar output
(a forward pass returning an array, `grad` called with ``dout=``).
"""

from __future__ import annotations

import gradcheck_numpy_layers as L
import numpy as np
import pytest

from pytest_gradcheck import GradcheckError, Tier, gradcheck

#: the relative error of a gradient scaled by 1.01
SCALED = 0.01 / 1.01


# -- the checks, one per layer; `bug` plants a mistake in the backward pass only ------


def check_affine(bug=None, **options):
    """Non-scalar output: the forward returns an array, grad gets dout (N == M == 4)."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 2, 3))
    w = rng.standard_normal((6, 4))
    b = rng.standard_normal(4)

    def f(x, w, b):
        return L.affine_forward(x, w, b)[0]

    def grad(x, w, b, dout):
        return L.affine_backward(dout, L.affine_forward(x, w, b)[1], bug=bug)

    return gradcheck(f, x, w, b, grad=grad, **options)


def check_relu(bug=None, **options):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 4))
    x += np.sign(x) * 0.05  # keep every entry at least 0.05 away from the kink

    def f(x):
        return L.relu_forward(x)[0]

    def grad(x, dout):
        return (L.relu_backward(dout, L.relu_forward(x)[1], bug=bug),)

    return gradcheck(f, x, grad=grad, **options)


def check_softmax(bug=None, **options):
    """Scalar loss of (scores, integer labels): the labels are not a block."""
    rng = np.random.default_rng(12)
    scores = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, 5)

    def f(scores, y):
        return L.softmax_loss(scores, y)[0]

    def grad(scores, y):
        return L.softmax_loss(scores, y, bug=bug)[1], None

    return gradcheck(f, scores, y, grad=grad, **options)


def check_svm(bug=None, **options):
    rng = np.random.default_rng(13)
    scores = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, 5)

    def f(scores, y):
        return L.svm_loss(scores, y)[0]

    def grad(scores, y):
        return L.svm_loss(scores, y, bug=bug)[1], None

    return gradcheck(f, scores, y, grad=grad, **options)


def check_batchnorm(bug=None, **options):
    """Non-scalar output; N == D so that the wrong-axis dgamma has the right shape."""
    rng = np.random.default_rng(14)
    x = 2.0 * rng.standard_normal((4, 4)) + 1.0
    gamma = rng.standard_normal(4)
    beta = rng.standard_normal(4)

    def f(x, gamma, beta):
        return L.batchnorm_forward(x, gamma, beta)[0]

    def grad(x, gamma, beta, dout):
        return L.batchnorm_backward(dout, L.batchnorm_forward(x, gamma, beta)[1], bug=bug)

    return gradcheck(f, x, gamma, beta, grad=grad, **options)


def check_dropout(bug=None, **options):
    """The mask comes from np.random; the check's seeding makes f and grad agree."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((5, 6))

    def f(x):
        return L.dropout_forward(x, 0.6)[0]

    def grad(x, dout):
        return (L.dropout_backward(dout, L.dropout_forward(x, 0.6)[1], bug=bug),)

    return gradcheck(f, x, grad=grad, **options)


def check_max_pool(bug=None, **options):
    rng = np.random.default_rng(16)
    x = rng.permutation(64).reshape(2, 2, 4, 4) / 8.0  # distinct values: no near-ties

    def f(x):
        return L.max_pool_forward(x)[0]

    def grad(x, dout):
        return (L.max_pool_backward(dout, L.max_pool_forward(x)[1], bug=bug),)

    return gradcheck(f, x, grad=grad, **options)


def two_layer_setup(seed=17, n=5, d=4, h=5, c=3):
    """(params, X, y) with N == H, so that the wrong-axis db1 has the right shape."""
    rng = np.random.default_rng(seed)
    params = L.init_two_layer(rng, d, h, c)
    x = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    return params, x, y


REG = 0.1


def check_two_layer(bug=None, **options):
    """params= dict, scalar loss (data + reg), grad returning a dict."""
    params, x, y = two_layer_setup()

    def f(x, y):
        data, reg = L.two_layer_terms(params, x, y, REG)
        return data + reg

    def grad(x, y):
        return L.two_layer_loss(params, x, y, REG, bug=bug)[1]

    return gradcheck(f, x, y, params=params, grad=grad, **options)


def check_two_layer_terms(bug=None, **options):
    """params= dict, named terms, grad returning {term: dict}."""
    params, x, y = two_layer_setup()

    def f(x, y):
        data, reg = L.two_layer_terms(params, x, y, REG)
        return {"data": data, "reg": reg}

    def grad(x, y):
        gd, gr = L.two_layer_grads(params, x, y, REG, bug=bug)
        return {"data": gd, "reg": gr}

    return gradcheck(f, x, y, params=params, grad=grad, **options)


def check_two_layer_nested(bug=None, **options):
    """The parameters as a nested positional argument; wrt (a predicate) skips X."""
    params, x, y = two_layer_setup()

    def f(p, x, y):
        return sum(L.two_layer_terms(p, x, y, REG))

    def grad(p, x, y):
        return L.two_layer_loss(p, x, y, REG, bug=bug)[1], None, None

    return gradcheck(
        f, params, x, y, grad=grad, wrt=lambda name: name.startswith("args[0]"), **options
    )


# -- correct layers pass ------------------------------------------------------------


SMOOTH = [check_affine, check_batchnorm, check_dropout]
KINKED = [check_relu, check_svm, check_max_pool]
# the softmax loss subtracts the row max (seen by the tracker): see test_kinks.py
OTHERS = [check_softmax, check_two_layer, check_two_layer_terms, check_two_layer_nested]


@pytest.mark.parametrize("check", SMOOTH + KINKED + OTHERS, ids=lambda c: c.__name__)
def test_correct_layer_passes(check):
    result = check()
    assert result.passed
    assert result.framework == "numpy"
    assert all(b.passed for b in result.blocks)
    assert result.tier <= result.tolerance
    assert result.kinks_crossed == 0


@pytest.mark.parametrize("check", SMOOTH, ids=lambda c: c.__name__)
def test_smooth_layers_are_held_to_happy(check):
    result = check()
    assert not result.kinks_present
    assert result.tolerance is Tier.HAPPY
    assert result.tier is Tier.HAPPY


@pytest.mark.parametrize("check", KINKED, ids=lambda c: c.__name__)
def test_layers_with_max_like_decisions_are_held_to_ok(check):
    result = check()
    assert result.kinks_present
    assert result.tolerance is Tier.OK
    assert result.tier <= Tier.OK


def test_affine_blocks_are_the_positional_args():
    result = check_affine()
    assert [b.name for b in result.blocks] == ["args[0]", "args[1]", "args[2]"]
    assert [b.shape for b in result.blocks] == [(4, 2, 3), (6, 4), (4,)]
    assert all(len(i) == len(b.shape) for b in result.blocks for i in b.indices)


def test_integer_labels_are_not_a_block():
    result = check_softmax()
    assert [b.name for b in result.blocks] == ["args[0]"]


def test_two_layer_dict_passes_with_blocks_named_by_key():
    result = check_two_layer()
    assert result.passed
    assert [b.name for b in result.blocks] == ["W1", "b1", "W2", "b2"]
    # W1 (20 entries) and W2 (15) are sampled down to 10; b1 and b2 are checked whole
    assert [len(b.indices) for b in result.blocks] == [10, 5, 10, 3]


def test_two_layer_terms_pass_total_and_each_term():
    result = check_two_layer_terms()
    assert result.passed
    assert set(result.terms) == {"data", "reg"}
    for term in result.terms.values():
        assert term.passed
        assert [b.name for b in term.blocks] == ["W1", "b1", "W2", "b2"]


def test_two_layer_nested_args_named_like_python_indexing():
    result = check_two_layer_nested()
    assert result.passed
    assert [b.name for b in result.blocks] == [
        "args[0]['W1']",
        "args[0]['b1']",
        "args[0]['W2']",
        "args[0]['b2']",
    ]


def test_scalar_loss_as_python_float_and_0d_array():
    rng = np.random.default_rng(18)
    x = rng.standard_normal(6)
    for wrap in (float, np.asarray):
        result = gradcheck(
            lambda x, wrap=wrap: wrap(np.sum(np.tanh(x))), x, grad=lambda x: (1 - np.tanh(x) ** 2,)
        )
        assert result.passed
        assert result.tier is Tier.HAPPY


# -- planted bugs fail and name their block -------------------------------------------


BUGS = [
    # (check, bug, failing blocks of the total, expected tier of each, or None: worse only)
    (check_affine, "db_axis", {"args[2]"}, Tier.WRONG),
    (check_affine, "dw_scale", {"args[1]"}, Tier.UNCOMFORTABLE),
    (check_relu, "no_mask", {"args[0]"}, Tier.WRONG),
    (check_softmax, "no_correct", {"args[0]"}, Tier.WRONG),
    (check_softmax, "scale", {"args[0]"}, Tier.UNCOMFORTABLE),
    (check_svm, "no_correct", {"args[0]"}, Tier.WRONG),
    (check_svm, "scale", {"args[0]"}, Tier.UNCOMFORTABLE),
    (check_batchnorm, "dgamma_axis", {"args[1]"}, Tier.WRONG),
    (check_batchnorm, "no_mean_term", {"args[0]"}, Tier.WRONG),
    (check_batchnorm, "dbeta_scale", {"args[2]"}, Tier.UNCOMFORTABLE),
    (check_dropout, "no_scale", {"args[0]"}, Tier.WRONG),
    (check_max_pool, "first", {"args[0]"}, Tier.WRONG),
    (check_max_pool, "scale", {"args[0]"}, Tier.UNCOMFORTABLE),
    (check_two_layer, "no_reg_grad", {"W1"}, None),
    (check_two_layer, "no_mask", {"W1", "b1"}, None),
    (check_two_layer, "b1_axis", {"b1"}, None),
    (check_two_layer, "w2_scale", {"W2"}, None),
    (check_two_layer, "reg_half", {"W1", "W2"}, None),
    (check_two_layer_nested, "b1_axis", {"args[0]['b1']"}, None),
    (check_two_layer_nested, "no_mask", {"args[0]['W1']", "args[0]['b1']"}, None),
]


def _failing(result):
    return {b.name for b in result.blocks if not b.passed}


@pytest.mark.parametrize(
    ("check", "bug", "blocks", "tier"),
    BUGS,
    ids=[f"{c.__name__}-{bug}" for c, bug, _, _ in BUGS],
)
def test_planted_bug_fails_naming_its_block(check, bug, blocks, tier):
    with pytest.raises(GradcheckError) as info:
        check(bug)
    err = info.value
    assert isinstance(err, AssertionError)
    result = err.result
    assert not result.passed
    assert _failing(result) == blocks
    message = str(err)
    for block in result.blocks:
        if block.name in blocks:
            assert repr(block.name) in message
            assert block.tier > result.tolerance
            assert not block.passed
            if tier is not None:
                assert block.tier is tier
                assert block.tier.label in message
            if tier is Tier.UNCOMFORTABLE:  # exactly the 1.01 scale, nothing else
                assert block.max_rel_error == pytest.approx(SCALED, rel=1e-3)
        else:
            assert block.passed
    assert "analytic" in message
    assert "numeric" in message


@pytest.mark.parametrize(
    ("check", "bug"),
    [(c, bug) for c, bug, _, _ in BUGS],
    ids=[f"{c.__name__}-{bug}" for c, bug, _, _ in BUGS],
)
def test_planted_bug_without_raising_returns_a_failed_result(check, bug):
    result = check(bug, raise_on_fail=False)
    assert not result.passed
    assert result.tier > result.tolerance
    threshold = 1e-4 if result.tolerance is Tier.OK else 1e-7
    assert result.max_rel_error >= threshold


def test_reg_gradient_forgotten_fails_in_the_reg_term_only():
    with pytest.raises(GradcheckError) as info:
        check_two_layer_terms("no_reg_grad")
    result = info.value.result
    assert _failing(result) == {"W1"}
    assert _failing(result.terms["reg"]) == {"W1"}
    assert _failing(result.terms["data"]) == set()
    (w1,) = [b for b in result.terms["reg"].blocks if b.name == "W1"]
    assert w1.tier is Tier.WRONG
    assert np.all(w1.analytic == 0.0)  # the forgotten term: nothing came back for W1
    assert np.all(w1.numeric != 0.0)
    message = str(info.value)
    assert "'reg'" in message
    assert "'W1'" in message


def test_missing_relu_mask_fails_in_the_data_term_only():
    with pytest.raises(GradcheckError) as info:
        check_two_layer_terms("no_mask")
    result = info.value.result
    assert _failing(result.terms["data"]) == {"W1", "b1"}
    assert _failing(result.terms["reg"]) == set()
    assert "'data'" in str(info.value)


def test_halved_reg_gradient_fails_in_the_reg_term_with_half_the_value():
    result = check_two_layer_terms("reg_half", raise_on_fail=False)
    assert _failing(result.terms["reg"]) == {"W1", "W2"}
    for block in result.terms["reg"].blocks:
        if block.name in ("W1", "W2"):
            np.testing.assert_allclose(block.analytic, 0.5 * block.numeric, rtol=1e-6)
            np.testing.assert_allclose(block.rel_error, 0.5, rtol=1e-6)


def test_wrong_axis_reports_the_raw_values():
    result = check_affine("db_axis", raise_on_fail=False)
    b = result.blocks[2]
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 2, 3))
    w = rng.standard_normal((6, 4))
    bias = rng.standard_normal(4)
    out = L.affine_forward(x, w, bias)[0]
    dout = _captured_dout(x, w, bias, out.shape)
    flat = [i[0] for i in b.indices]
    np.testing.assert_allclose(b.analytic, dout.sum(axis=1)[flat], rtol=1e-12)
    np.testing.assert_allclose(b.numeric, dout.sum(axis=0)[flat], rtol=1e-7)


def _captured_dout(x, w, b, shape):
    """The projection weight the check hands grad (captured from a passing check)."""
    seen = []

    def grad(x, w, b, dout):
        seen.append(dout.copy())
        return L.affine_backward(dout, L.affine_forward(x, w, b)[1])

    gradcheck(lambda x, w, b: L.affine_forward(x, w, b)[0], x, w, b, grad=grad)
    assert len(seen) == 1
    assert seen[0].shape == shape
    return seen[0]


# -- the non-scalar projection ------------------------------------------------------


def _linear_check(seed, use_dout=True, **options):
    rng = np.random.default_rng(19)
    a = rng.standard_normal((3, 5))
    x = rng.standard_normal(5)
    seen = []

    def grad(x, dout):
        seen.append(dout.copy())
        return (a.T @ (dout if use_dout else np.ones(3)),)

    result = gradcheck(lambda x: a @ x, x, grad=grad, seed=seed, **options)
    return result, seen


def test_non_scalar_output_grad_receives_a_seeded_dout():
    r1, seen1 = _linear_check(seed=3)
    r2, seen2 = _linear_check(seed=3)
    r3, seen3 = _linear_check(seed=4)
    assert r1.passed and r2.passed and r3.passed
    assert len(seen1) == 1
    (d1,), (d2,), (d3,) = seen1, seen2, seen3
    assert d1.shape == (3,)
    assert d1.dtype == np.float64
    np.testing.assert_array_equal(d1, d2)  # the same seed: the same projection
    assert not np.allclose(d1, d3)  # another seed: another projection
    assert not np.allclose(d1, np.ones(3))  # random, not a plain sum


def test_non_scalar_output_grad_ignoring_dout_fails():
    with pytest.raises(GradcheckError) as info:
        _linear_check(seed=3, use_dout=False)
    assert "'args[0]'" in str(info.value)
    assert info.value.result.blocks[0].tier is Tier.WRONG


def test_wrt_restricts_the_blocks_of_a_params_dict():
    result = check_two_layer(wrt=["W2", "b1"])
    assert [b.name for b in result.blocks] == ["b1", "W2"]
    # a bug in a block left out of the check goes unseen
    result = check_two_layer("no_reg_grad", wrt=["W2", "b2"])
    assert result.passed


# -- scalar blocks: a Python float or a 0-d array ---------------------------------------


def _scalar_check(style, **options):
    """loss = (s * sum(b))**2 with s a scalar block (Python float or 0-d array)."""
    b0 = np.array([1.0, 2.0, -0.5])

    def loss(s, b):
        return np.sum(s * b) ** 2

    def dloss(s, b):
        v = np.sum(s * b)
        return 2 * v * np.sum(b), 2 * v * s * np.ones_like(b)

    if style in ("float", "0-d"):
        s0 = 0.5 if style == "float" else np.array(0.5)
        return gradcheck(loss, s0, b0.copy(), grad=dloss, **options)
    params = {"s": 0.5 if style == "params-float" else np.array(0.5), "b": b0.copy()}

    def grad():
        ds, db = dloss(params["s"], params["b"])
        return {"s": ds, "b": db}

    return gradcheck(lambda: loss(params["s"], params["b"]), params=params, grad=grad, **options)


SCALAR_STYLES = ["float", "0-d", "params-float", "params-0-d"]


@pytest.mark.parametrize("style", SCALAR_STYLES)
def test_scalar_blocks(style):
    result = _scalar_check(style)
    assert result.passed
    assert result.blocks[0].shape == ()
    assert result.blocks[0].indices == ((),)
    assert result.blocks[0].numeric[0] == pytest.approx(result.blocks[0].analytic[0], rel=1e-7)


@pytest.mark.parametrize("style", SCALAR_STYLES)
def test_scalar_blocks_after_burn_in(style):
    result = _scalar_check(style, burn_in=2, burn_in_lr=1e-3, raise_on_fail=False)
    assert result.blocks[0].numeric[0] != 0.0
    assert result.passed
