"""A gradient with the right values in the wrong places gets a hint saying which.

A transposed square weight's gradient, a gradient shifted by one index along an axis,
two same-shape blocks' gradients swapped: the engine compares the rearranged analytic
gradient with the numeric values it already has (`_shapes`), and the report says what
the bug looks like. Controls: a correct gradient, a constant factor, a single wrong
entry and a symmetric gradient get no such hint.
"""

import re
import warnings

import numpy as np
import pytest

from pytest_gradcheck import GradcheckError, gradcheck
from pytest_gradcheck._notices import SHAPE_NOTICE, alarming
from pytest_gradcheck._text import hints

rng = np.random.default_rng(2)
N, D = 12, 8
X = rng.standard_normal((N, D))
Y = rng.standard_normal((N, D))
W1 = rng.standard_normal((D, D)) * 0.3
W2 = rng.standard_normal((D, D)) * 0.3
B = rng.standard_normal(D) * 0.1


def f(W1, W2, b):
    H = np.tanh(X @ W1 + b)
    return 0.5 * np.sum((H @ W2 - Y) ** 2)


def grads(W1, W2, b):
    H = np.tanh(X @ W1 + b)
    dout = H @ W2 - Y
    dZ = (dout @ W2.T) * (1 - H**2)
    return X.T @ dZ, H.T @ dout, dZ.sum(0)


def buggy(bug):
    def g(W1, W2, b):
        dW1, dW2, db = grads(W1, W2, b)
        if bug == "transpose":
            dW1 = dW1.T
        elif bug == "roll_axis0":
            dW2 = np.roll(dW2, 1, axis=0)
        elif bug == "roll_axis1":
            dW2 = np.roll(dW2, -1, axis=1)
        elif bug == "roll_flat":
            dW1 = np.roll(dW1, 1)
        elif bug == "roll_bias":
            db = np.roll(db, -1)
        elif bug == "swap":
            dW1, dW2 = dW2, dW1
        elif bug == "factor":
            dW1 = 0.5 * dW1
        elif bug == "entry":
            dW1 = dW1.copy()
            dW1[3, 5] *= 1.3
        return dW1, dW2, db

    return g


def check(bug, **kw):
    return gradcheck(f, W1, W2, B, grad=buggy(bug), raise_on_fail=False, **kw)


def shape_hints(result):
    return [
        h
        for h in hints(result)
        if "look" in h and ("shifted" in h or "transposed" in h or "swapped" in h)
    ]


def assert_one_hint(result, expected):
    """One rearrangement hint, starting with `expected`, and its notice in the warnings
    (and the JSON report), not issued as a GradcheckWarning."""
    found = shape_hints(result)
    assert len(found) == 1, hints(result)
    assert found[0].startswith(expected), found
    notices = [w for w in result.warnings if SHAPE_NOTICE in w]
    assert len(notices) == 1 and not alarming(notices)


@pytest.mark.parametrize(
    ("bug", "expected"),
    [
        ("transpose", "block 'args[0]' looks transposed"),
        (
            "roll_axis0",
            "block 'args[1]' looks shifted by one index: its analytic gradient is "
            "the numeric one shifted by +1 along axis 0",
        ),
        (
            "roll_axis1",
            "block 'args[1]' looks shifted by one index: its analytic gradient is "
            "the numeric one shifted by -1 along axis 1",
        ),
        (
            "roll_flat",
            "block 'args[0]' looks shifted by one index: its analytic gradient is "
            "the numeric one shifted by +1 along its flat index",
        ),
        (
            "roll_bias",
            "block 'args[2]' looks shifted by one index: its analytic gradient is "
            "the numeric one shifted by -1 along axis 0",
        ),
        ("swap", "blocks 'args[0]' and 'args[1]' look swapped"),
    ],
)
def test_rearranged_gradient_gets_its_hint(bug, expected):
    with _no_shape_warning():
        result = check(bug)
    assert not result.passed
    assert_one_hint(result, expected)
    with pytest.raises(GradcheckError, match=re.escape("hint: " + expected)):
        gradcheck(f, W1, W2, B, grad=buggy(bug))


class _no_shape_warning:
    """No GradcheckWarning carries the notice (it is one, like the dominance notice)."""

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self._seen = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self._seen if SHAPE_NOTICE in str(w.message)]


@pytest.mark.parametrize("bug", [None, "factor", "entry"])
def test_no_rearrangement_hint_for_other_bugs(bug):
    result = check(bug)
    assert result.passed is (bug is None)
    assert shape_hints(result) == []
    assert not [w for w in result.warnings if SHAPE_NOTICE in w]


def test_symmetric_gradient_is_not_called_transposed():
    """f(S) = sum(tanh(S + S.T)) has a symmetric gradient, so its transpose is the
    gradient itself: a wrong symmetric gradient (a shifted diagonal) is called no
    transpose, and a transposed correct one passes."""
    S = rng.standard_normal((6, 6)) * 0.5

    def fs(S):
        return np.sum(np.tanh(S + S.T))

    def gs(S, bug=False):
        g = 2 / np.cosh(S + S.T) ** 2
        if bug:
            g = g + np.diag(np.full(6, 0.3))
        return (g,)

    ok = gradcheck(fs, S, grad=gs, raise_on_fail=False)
    assert ok.passed
    bad = gradcheck(
        fs, S, grad=lambda S: gs(S, bug=True), raise_on_fail=False, samples_per_block=36
    )
    assert not bad.passed
    assert shape_hints(bad) == []
    # and a transposed symmetric gradient is the gradient: it passes
    assert gradcheck(fs, S, grad=lambda S: (gs(S)[0].T,), raise_on_fail=False).passed


def test_a_passing_check_never_carries_the_notice(monkeypatch):
    """The search runs only for a failing check: a passing one never calls it."""
    import pytest_gradcheck._engine as engine

    def boom(*a, **k):
        raise AssertionError("shape_warnings ran on a passing check")

    monkeypatch.setattr(engine, "shape_warnings", boom)
    assert check(None).passed
    with pytest.raises(AssertionError, match="passing check"):
        check("transpose")


@pytest.mark.parametrize("bug", ["transpose", "roll_axis0", "roll_flat", "swap"])
def test_rearranged_gradient_gets_its_hint_from_coordinates_alone(bug):
    """mode="coords" (no direction): the sampled coordinates alone name the bug."""
    assert len(shape_hints(check(bug, mode="coords"))) == 1


# a gradient that looks like its own rearrangement, with wrong entries: the analytic
# gradient rearranged is nearly the analytic gradient, so it agrees wherever the
# analytic one does, and at a wrong entry where the entries around it are right. Without
# the direction (mode="coords") nothing else tells the two apart: each wrong entry is one
# failure, not a rearrangement (a false hint is worse than none)


def test_near_constant_gradient_with_a_wrong_entry_is_not_called_shifted():
    """f = 3 sum(x) + 1e-10 sum(x**2): its gradient is 3 to 1e-9, and rolling it by one
    index gives it back, but at the one wrong entry (the largest, always sampled), where
    its right neighbour stands: "shifted by one" would agree with every coordinate
    compared."""
    x = np.random.default_rng(0).standard_normal(40)

    def fc(x):
        return 3.0 * np.sum(x) + 1e-10 * np.sum(x**2)

    def gc(x):
        g = 3.0 + 2e-10 * x
        g[7] = 3.5
        return (g,)

    for seed in range(4):
        for mode in ("coords", "both"):
            result = gradcheck(fc, x, grad=gc, raise_on_fail=False, mode=mode, seed=seed)
            assert not result.passed
            assert shape_hints(result) == [], (seed, mode, hints(result))
            assert not [w for w in result.warnings if SHAPE_NOTICE in w]


@pytest.mark.parametrize("seed", [2, 4, 5])
def test_symmetric_gradient_with_a_wrong_entry_is_not_called_transposed(seed):
    """f(S) = sum(tanh(S + S.T)) has a symmetric gradient; one wrong entry, whose mirror
    the sample (10 of 36) misses, agrees with the transpose there (these seeds' samples
    miss it)."""
    S = np.random.default_rng(0).standard_normal((6, 6))

    def gs(S):
        g = 2 / np.cosh(S + S.T) ** 2
        g[1, 4] *= 1.5
        return (g,)

    result = gradcheck(
        lambda S: np.sum(np.tanh(S + S.T)),
        S,
        grad=gs,
        raise_on_fail=False,
        mode="coords",
        seed=seed,
    )
    assert not result.passed
    assert shape_hints(result) == [], hints(result)


@pytest.mark.parametrize("seed", [3, 5, 8, 11])
def test_blocks_with_equal_gradients_and_wrong_entries_are_not_called_swapped(seed):
    """f(A, B) = sum(tanh(A + B)): both blocks have one gradient; each block's one wrong
    entry (its largest, always sampled) agrees with the other block's analytic gradient
    there (these seeds' samples miss the other's wrong entry)."""
    rng_ab = np.random.default_rng(0)
    A, Bm = rng_ab.standard_normal((5, 5)), rng_ab.standard_normal((5, 5))

    def gab(A, B):
        g = 1 / np.cosh(A + B) ** 2
        g1, g2 = g.copy(), g.copy()
        g1[0, 1] = 1.5
        g2[3, 2] = 1.5
        return g1, g2

    result = gradcheck(
        lambda A, B: np.sum(np.tanh(A + B)),
        A,
        Bm,
        grad=gab,
        raise_on_fail=False,
        mode="coords",
        seed=seed,
    )
    assert not result.passed
    assert shape_hints(result) == [], hints(result)


# a rearranged part of a loss returned as one sum: the data gradient transposed or
# swapped beside a right weight decay. No whole rearrangement of the total's gradient
# agrees (the weight decay's part moves too), but the decay cancels in the analytic
# minus the numeric gradient, which is antisymmetric (transposed) or the other block's
# negated (swapped): checked against the numeric values at the mirrored coordinates,
# which the check has where it compared the whole block
LAMBDA = 0.05


def f_sum(W1, W2, b):
    return f(W1, W2, b) + LAMBDA * (np.sum(W1**2) + np.sum(W2**2))


def buggy_sum(bug):
    def g(W1, W2, b):
        dW1, dW2, db = buggy(bug)(W1, W2, b)
        return dW1 + 2 * LAMBDA * W1, dW2 + 2 * LAMBDA * W2, db

    return g


@pytest.mark.parametrize("mode", ["both", "coords"])
@pytest.mark.parametrize(
    ("bug", "expected"),
    [
        ("transpose", "block 'args[0]' looks transposed in part"),
        ("swap", "blocks 'args[0]' and 'args[1]' look swapped in part"),
    ],
)
def test_rearranged_part_of_a_summed_loss_gets_its_hint(bug, expected, mode):
    kw = {"mode": mode, "samples_per_block": None}
    with _no_shape_warning():
        result = gradcheck(f_sum, W1, W2, B, grad=buggy_sum(bug), raise_on_fail=False, **kw)
    assert not result.passed
    assert_one_hint(result, expected)
    with pytest.raises(GradcheckError, match=re.escape("hint: " + expected)):
        gradcheck(f_sum, W1, W2, B, grad=buggy_sum(bug), **kw)


@pytest.mark.parametrize("bug", ["transpose", "swap", "roll_axis0", "factor", "entry"])
def test_summed_loss_hints_only_what_its_comparisons_decide(bug):
    """With a sample (10 of 64 coordinates), the mirrored coordinates were mostly not
    compared: the part cannot be checked at every comparison, and gets no hint; a part
    shifted by one index is never searched (any error summing to 0 along the axis fits
    it), nor is a constant factor or a wrong entry anything rearranged."""
    sampled = gradcheck(f_sum, W1, W2, B, grad=buggy_sum(bug), raise_on_fail=False)
    assert not sampled.passed
    assert shape_hints(sampled) == [], hints(sampled)
    if bug in ("roll_axis0", "factor", "entry"):
        whole = gradcheck(
            f_sum, W1, W2, B, grad=buggy_sum(bug), raise_on_fail=False, samples_per_block=None
        )
        assert not whole.passed
        assert shape_hints(whole) == [], hints(whole)
