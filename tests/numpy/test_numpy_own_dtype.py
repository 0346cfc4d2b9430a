"""A check of float32 arrays also looks at `grad` in float32 (`backends/_own_dtype.py`).

The check casts float32 blocks to float64, where a gradient function that overflows in
float32 is finite: ``e / (1 + e)**2`` with ``e = np.exp(-z)`` passes as happy at z = -95
while the same code on the user's float32 arrays returns inf/inf = NaN. Where a block
came in lower precision, f and grad are called once more on it in its own dtype.
"""

from __future__ import annotations

import copy
import random
import warnings

import numpy as np
import pytest
from gradcheck_own_dtype_util import gradcheck_warnings, own_dtype_warnings

from pytest_gradcheck import Tier, gradcheck
from pytest_gradcheck._notices import alarming
from pytest_gradcheck.backends._own_dtype import OwnGradient, failed, judge

#: z = -95 overflows exp(-z) in float32 (exp(95) = 1.8e41 > 3.4e38), not in float64
Z = [-95.0, -1.0, 0.5, 2.0]


def f(z):
    return np.sum(1 / (1 + np.exp(-z)))


def unstable_grad(z, seen=None):
    if seen is not None:
        seen.append(z.dtype)
    e = np.exp(-z)
    return e / (1 + e) ** 2


def stable_grad(z):
    s = 1 / (1 + np.exp(-z))
    return s * (1 - s)


def test_a_float32_gradient_that_overflows_passes_in_float64_and_is_warned():
    z = np.array(Z, dtype=np.float32)
    before = z.tobytes()
    result, issued = gradcheck_warnings(f, z, grad=unstable_grad)
    assert result.passed and result.tier is Tier.HAPPY
    [found] = own_dtype_warnings(result)
    assert found.startswith("block 'args[0]' (float32): in float32, the dtype f was given")
    assert "not finite in 1 of its 4 entries: nan at index 0," in found
    assert found in issued
    assert z.dtype == np.float32 and z.tobytes() == before


def test_a_stable_float32_gradient_gets_no_warning():
    result, issued = gradcheck_warnings(f, np.array(Z, dtype=np.float32), grad=stable_grad)
    assert result.passed and result.tier is Tier.HAPPY
    assert own_dtype_warnings(result) == [] and issued == []


def test_a_float64_check_runs_no_pass_in_another_dtype():
    seen: list[np.dtype] = []
    result = gradcheck(f, np.array(Z), grad=lambda z: unstable_grad(z, seen))
    assert result.passed and own_dtype_warnings(result) == []
    assert seen == [np.float64]  # the analytic pass alone
    seen.clear()
    z32 = gradcheck(f, np.array(Z, dtype=np.float32), grad=lambda z: unstable_grad(z, seen))
    assert seen == [np.float64, np.float32]
    assert z32.evaluations == result.evaluations + 1  # the pass counts as an evaluation


def test_params_are_exposed_in_their_own_dtype_and_put_back():
    w = np.array([[-95.0, 1.0], [0.5, 2.0]], dtype=np.float32)
    params = {"w": w, "scale": 2.0}
    snapshot = copy.deepcopy(params)
    seen: list[np.dtype] = []

    def loss():
        return params["scale"] * f(params["w"])

    def grad():
        seen.append(params["w"].dtype)
        return {"w": params["scale"] * unstable_grad(params["w"])}

    random.seed(3)
    np.random.seed(3)
    rng = (random.getstate(), np.random.get_state()[1].tobytes())
    result = gradcheck(loss, params=params, grad=grad, wrt="w")
    [found] = own_dtype_warnings(result)
    assert found.startswith("block 'w' (float32)")
    assert "nan at index (0, 0) (flat index 0)," in found
    assert seen == [np.float64, np.float32]
    assert params["w"] is w and w.dtype == np.float32
    assert w.tobytes() == snapshot["w"].tobytes() and params["scale"] == 2.0
    assert (random.getstate(), np.random.get_state()[1].tobytes()) == rng


def test_the_pass_is_warning_free_and_ignores_np_seterr():
    # the overflow is what the pass looks for: NumPy's RuntimeWarning about it, or an
    # error under np.seterr(over="raise"), must not replace the finding
    z = np.array(Z, dtype=np.float32)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = gradcheck(f, z, grad=unstable_grad)
    assert own_dtype_warnings(result)
    assert not [r for r in record if issubclass(r.category, RuntimeWarning)]
    with np.errstate(over="raise", invalid="raise"):
        result = gradcheck(f, z, grad=unstable_grad)
        assert np.geterr()["over"] == "raise"
    assert own_dtype_warnings(result)


def test_an_array_output_gets_dout_in_its_dtype():
    douts: list[np.dtype] = []

    def g(z):
        return 1 / (1 + np.exp(-z))

    def grad(z, dout):
        douts.append(dout.dtype)
        return dout * unstable_grad(z)

    result = gradcheck(g, np.array(Z, dtype=np.float32), grad=grad)
    assert douts == [np.float64, np.float32]
    [found] = own_dtype_warnings(result)
    assert "nan at index 0," in found


def test_named_terms_are_summed_before_judging():
    def terms(z):
        return {"data": f(z), "reg": 1e-3 * np.sum(z**2)}

    def grad(z):
        return {"data": (unstable_grad(z),), "reg": (2e-3 * z,)}

    result = gradcheck(terms, np.array(Z, dtype=np.float32), grad=grad)
    [found] = own_dtype_warnings(result)
    assert "not finite in 1 of its 4 entries: nan at index 0," in found


def test_a_loss_that_overflows_in_float32_is_warned():
    z = np.array([100.0, 1.0], dtype=np.float32)  # exp(100) = 2.7e43: inf in float32
    result, issued = gradcheck_warnings(lambda z: np.sum(np.exp(z)), z, grad=np.exp)
    assert result.passed
    [found] = [w for w in result.warnings if w.startswith("the loss at the checked point")]
    assert found.startswith("the loss at the checked point is inf in float32, the dtype f was")
    assert found in issued


def test_an_f_that_cannot_run_in_its_own_dtype_gets_a_notice_and_its_check():
    def only64(z):
        if z.dtype != np.float64:
            raise TypeError("this f computes in float64 only")
        return np.sum(np.sin(z))

    result, issued = gradcheck_warnings(only64, np.array(Z, dtype=np.float32), grad=np.cos)
    assert result.passed and result.tier is Tier.HAPPY
    [notice] = [w for w in result.warnings if "could not also be evaluated" in w]
    assert notice.startswith("checked in float64: ")
    assert "TypeError: this f computes in float64 only" in notice
    assert issued == []


# ---------------------------------------------------------------- the judging itself


def test_judge_names_the_first_entries_and_counts_the_rest():
    g = np.array([1.0, np.nan, 2.0, np.inf, -np.inf, np.nan, 3.0])
    [found] = judge(["float16"], 0.25, [OwnGradient("W", (7,), "float16", g)])
    assert found.startswith("block 'W' (float16): in float16, the dtype f was given")
    assert "not finite in 4 of its 7 entries: nan at index 1, inf at index 3, " in found
    assert "-inf at index 4 and 1 more, while the loss there is finite (0.25)" in found


def test_judge_says_nothing_of_finite_gradients_or_blocks_without_one():
    fine = OwnGradient("a", (2,), "float32", np.array([1.0, -2.0]))
    missing = OwnGradient("b", (2,), "float32", None)
    assert judge(["float32"], 1.0, [fine, missing]) == ()


def test_judge_warns_of_the_loss_alone_where_it_is_not_finite():
    bad = OwnGradient("a", (1,), "float32", np.array([np.nan]))
    [found] = judge(["float32", "bfloat16"], float("nan"), [bad])
    assert found.startswith("the loss at the checked point is nan in bfloat16/float32, the dtypes")


@pytest.mark.parametrize("error", [TypeError("float64 only"), RuntimeError("")])
def test_a_failed_pass_is_a_notice_not_an_alarm(error):
    notice = failed(["float32"], error)
    assert alarming([notice]) == []
    assert type(error).__name__ in notice
