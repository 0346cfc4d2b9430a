"""Gradient checks inside Hypothesis `@given` tests, NumPy side (inner pytest runs).

Planted shape-dependent bugs are found and shrunk to a minimal shape, a correct layer
passes 100 examples with no health check firing, every example records into its test,
the summary collapses the examples into one row, and ``--hypothesis-show-statistics``
shows the tier events and the target.
"""

from __future__ import annotations

import json
import re

import numpy  # noqa: F401  (imported here: in-process inner runs cannot load it twice)
import pytest

import pytest_gradcheck.strategies  # noqa: F401  (likewise)

#: inner tests: NumPy layers, correct and with planted bugs, checked over random shapes
NUMPY_TESTS = """
import numpy as np
from hypothesis import Phase, given, settings, strategies as st

import pytest_gradcheck
from pytest_gradcheck import strategies as gst

# no explain phase: it replays the failure dozens of times, which these tests don't need
QUICK = settings(
    deadline=None,
    database=None,
    derandomize=True,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
)
DIMS = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))


def affine(x, W, b):
    return x @ W + b


def affine_grad(x, W, b, *, dout):
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


def affine_grad_batch_bug(x, W, b, *, dout):
    return dout @ W.T, x.T @ dout, dout[0]  # right for a batch of one row only


def scaled(x, W):
    return x @ W / np.sqrt(W.shape[0])


def scaled_grad_square_bug(x, W, *, dout):
    s = 1.0 / np.sqrt(W.shape[1])  # fan-out instead of fan-in: right for square W only
    return dout @ W.T * s, x.T @ dout * s


def tanh_mlp(x, p):
    h = x
    for i in range(1, len(p) // 2 + 1):
        h = np.tanh(h @ p[f"W{i}"] + p[f"b{i}"])
    return h


def tanh_mlp_grad(x, p, *, dout):
    hs, h = [x], x
    n = len(p) // 2
    for i in range(1, n + 1):
        h = np.tanh(h @ p[f"W{i}"] + p[f"b{i}"])
        hs.append(h)
    grads, dh = {}, dout
    for i in range(n, 0, -1):
        dz = dh * (1.0 - hs[i] ** 2)
        grads[f"W{i}"], grads[f"b{i}"] = hs[i - 1].T @ dz, dz.sum(axis=0)
        dh = dz @ p[f"W{i}"].T
    return grads


@QUICK
@given(data=st.data(), shape=DIMS)
def test_batch_bug(gradcheck, data, shape):
    n, i, o = shape
    x = data.draw(gst.arrays("numpy", (n, i)), label="x")
    W = data.draw(gst.arrays("numpy", (i, o)), label="W")
    b = data.draw(gst.arrays("numpy", (o,)), label="b")
    gradcheck(affine, x, W, b, grad=affine_grad_batch_bug)


@QUICK
@given(data=st.data(), shape=DIMS)
def test_square_bug(gradcheck, data, shape):
    n, i, o = shape
    x = data.draw(gst.arrays("numpy", (n, i)), label="x")
    W = data.draw(gst.arrays("numpy", (i, o)), label="W")
    gradcheck(scaled, x, W, grad=scaled_grad_square_bug)


# default settings but the example count: no deadline, no health check suppressed
@settings(max_examples=100, database=None, derandomize=True)
@given(data=st.data(), shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
def test_correct_layer(gradcheck, data, shape):
    n, i, o = shape
    x = data.draw(gst.arrays("numpy", (n, i)), label="x")
    W = data.draw(gst.arrays("numpy", (i, o)), label="W")
    b = data.draw(gst.arrays("numpy", (o,)), label="b")
    with open("examples.log", "a") as log:
        log.write(f"{shape}\\n")
    gradcheck(affine, x, W, b, grad=affine_grad, samples_per_block=4)


# the direct call, parameters from mlp_params, random initialisation scales
@settings(max_examples=30, database=None, derandomize=True)
@given(
    data=st.data(),
    params=gst.mlp_params("numpy", max_layers=2, max_width=3, scale=st.sampled_from([0.1, 1.0])),
)
def test_direct_call_mlp(data, params):
    x = data.draw(gst.arrays("numpy", (2, params["W1"].shape[0])), label="x")
    pytest_gradcheck.gradcheck(
        lambda x: tanh_mlp(x, params),
        x,
        params=params,
        grad=lambda x, *, dout: tanh_mlp_grad(x, params, dout=dout),
        samples_per_block=3,
    )
"""

#: a function-scoped fixture inside @given: Hypothesis's health check does fire
FUNCTION_SCOPED = """
import pytest
from hypothesis import given, settings

import pytest_gradcheck
from pytest_gradcheck import strategies as gst


@pytest.fixture
def my_check():
    return pytest_gradcheck.gradcheck


@settings(max_examples=5, database=None)
@given(x=gst.arrays("numpy", 3))
def test_function_scoped(my_check, x):
    my_check(lambda x: (x**2).sum(), x, grad=lambda x: (2 * x,))
"""


def compact(text: str) -> str:
    """The output without Hypothesis's ``# or any other generated value`` and spaces."""
    return re.sub(r"\s+", "", re.sub(r"#[^\n]*", "", text))


def summary_rows(text: str) -> list[str]:
    """The rows of the "gradient checks" terminal section, one string per check row.

    A long test id may stand on a line of its own with the row's columns on the next,
    and notes that do not fit beside the columns (the example count) on indented
    lines below: they are joined.
    """
    section = re.split(r"=+ gradient checks =+", text)[1].split("\n=")[0]
    rows: list[str] = []
    for line in section.splitlines():
        first = line.split()[0] if line.strip() else ""
        if "::" in first:
            rows.append(line.strip())
        elif rows and line.startswith(" "):  # the row's cells, or what did not fit beside
            rows[-1] += " " + line.strip()
    return rows


def examples_in(rows: list[str], test: str) -> int:
    """The N of the one row of `test` reading "(N examples ...)" (1 without the note)."""
    mine = [r for r in rows if r.split()[0].endswith(f"::{test}")]
    assert len(mine) == 1, f"expected one summary row for {test}, got {mine}"
    found = re.search(r"\((\d+) examples\b", mine[0])
    return int(found.group(1)) if found else 1


@pytest.fixture
def numpy_tests(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_inner=NUMPY_TESTS)
    return pytester


def test_batch_size_bug_is_found_and_shrunk_to_two_rows(numpy_tests: pytest.Pytester) -> None:
    result = numpy_tests.runpytest("-p", "no:cacheprovider", "-k", "batch_bug")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "GradcheckError" in out
    # the minimal failing shape: two rows, one input, one output feature
    assert "shape=(2,1,1" in compact(out), out
    # the check's message names the failing block and its shape
    assert "block 'args[2]' (shape (1,), float64): tier wrong" in out
    rows = summary_rows(out)
    assert examples_in(rows, "test_batch_bug") > 1
    assert "FAILED" in rows[0]


def test_square_weight_bug_is_found_and_shrunk(numpy_tests: pytest.Pytester) -> None:
    result = numpy_tests.runpytest("-p", "no:cacheprovider", "-k", "square_bug")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "GradcheckError" in out
    # one row, and the smallest non-square weight: 1x2 or 2x1
    assert re.search(r"shape=\(1,(1,2|2,1),?\)", compact(out)), out
    assert re.search(r"Draw 2 \(W\): array\(\[\[[^\]]*\]\]\)", out)


def test_correct_layers_pass_without_health_checks(numpy_tests: pytest.Pytester) -> None:
    result = numpy_tests.runpytest(
        "-p",
        "no:cacheprovider",
        "-k",
        "correct_layer or direct_call",
        "--gradcheck-json=checks.json",
    )
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "HealthCheck" not in out and "health check" not in out.lower()
    rows = summary_rows(out)
    assert len(rows) == 2, rows
    assert examples_in(rows, "test_correct_layer") >= 100
    assert examples_in(rows, "test_direct_call_mlp") >= 30
    # each example recorded its check into the test
    ran = (numpy_tests.path / "examples.log").read_text().splitlines()
    checks = json.loads((numpy_tests.path / "checks.json").read_text())["checks"]
    mine = [c for c in checks if c["nodeid"].endswith("::test_correct_layer")]
    assert len(mine) == len(ran) >= 100
    assert all(c["passed"] and c["tier"] == "happy" for c in mine)
    assert {tuple(c["blocks"][1]["shape"]) for c in mine} == {
        tuple(int(s) for s in re.findall(r"\d+", line)[1:]) for line in ran
    }


def test_statistics_show_tier_events_and_the_target(numpy_tests: pytest.Pytester) -> None:
    result = numpy_tests.runpytest(
        "-p",
        "no:cacheprovider",
        "-k",
        "correct_layer or square_bug",
        "--hypothesis-show-statistics",
    )
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert re.search(r"\d+\.\d+%, gradcheck tier: happy", out), out
    assert re.search(r"\d+\.\d+%, gradcheck tier: wrong", out), out
    assert "label='log10(gradcheck rel error)'" in out


def test_a_function_scoped_fixture_would_trip_the_health_check(
    pytester: pytest.Pytester,
) -> None:
    """The control for the test above: the health check is live in these runs."""
    pytester.makepyfile(test_inner=FUNCTION_SCOPED)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "function_scoped_fixture" in result.stdout.str()


TWO_CHECKS = """
import numpy as np
from hypothesis import given, settings

from pytest_gradcheck import strategies as gst


@settings(max_examples=5, database=None)
@given(x=gst.arrays("numpy", 3))
def test_two_checks(gradcheck, x):
    gradcheck(lambda x: (x**2).sum(), x, grad=lambda x: (2 * x,))
    gradcheck(lambda x: np.sin(x).sum(), x, grad=lambda x: (np.cos(x),))
"""


def test_two_checks_in_one_example(pytester: pytest.Pytester) -> None:
    """target() takes one value per label and example: the second check must not trip it."""
    pytester.makepyfile(test_inner=TWO_CHECKS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "would overwrite target" not in out
    result.assert_outcomes(passed=1)
    rows = summary_rows(out)
    assert len(rows) == 2, rows  # one row per check of the test, examples collapsed
    assert all(re.search(r"\(5 examples", row) for row in rows), rows


def test_target_ignores_round_off_noise(numpy_tests: pytest.Pytester) -> None:
    result = numpy_tests.runpytest(
        "-p", "no:cacheprovider", "-k", "correct_layer", "--hypothesis-show-statistics"
    )
    result.assert_outcomes(passed=1)
    score = re.search(r"Highest target score: (\S+)", result.stdout.str())
    assert score is not None and float(score.group(1)) < -4
