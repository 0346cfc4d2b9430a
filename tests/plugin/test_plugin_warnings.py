"""A check's warnings reach the user: a passing check's as `GradcheckWarning` (pytest's
warnings summary, its filters) and as a mark on its row of the "gradient checks"
section; a check that raises lists them in its failure message instead."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from gc_plugin_util import load_json, section, validate_report

import pytest_gradcheck
from pytest_gradcheck import GradcheckError, GradcheckWarning, gradcheck

# a wrong gradient (6e-12 instead of 3e-12) below the active range: every comparison is
# round-off, so the check passes; only its warning says it proved nothing
TINY = """
import numpy as np
from pytest_gradcheck import gradcheck
from gc_helpers import X, square, square_grad, square_wrong

def test_tiny(gradcheck):
    gradcheck(lambda x: 1.0 + 1e-12 * np.sum(x**3), X, grad=lambda x: 6e-12 * x**2)

def test_zero_block(gradcheck):
    gradcheck(lambda x, y: np.sum(x**2), X, X.copy(), grad=lambda x, y: (2 * x, 0 * y))

def test_clean(gradcheck):
    gradcheck(square, X, grad=square_grad)
"""


def test_a_passing_checks_warnings_are_in_the_warnings_summary(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_w=TINY)
    # in a process of its own: this suite's own filter (pyproject.toml) ignores them
    result = inner.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, warnings=2)
    out = result.stdout.str()
    summary = out.split("warnings summary")[1].split("gradient checks")[0]
    # attributed to the test, at the line that called gradcheck
    assert "test_w.py::test_tiny\n" in summary
    assert "test_w.py:6: GradcheckWarning: block 'args[0]' has tiny gradients" in summary
    assert "test_w.py::test_zero_block\n" in summary
    assert "GradcheckWarning: block 'args[1]' has an analytic gradient of exactly 0" in summary
    assert "test_clean" not in summary


def test_rows_of_checks_with_warnings_are_marked(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_w=TINY)
    lines = section(inner.runpytest().stdout.str())
    rows = {line.split()[0].split("::")[1]: line for line in lines if "::" in line}
    assert rows["test_tiny"].split()[5:] == ["happy", "!"]
    assert rows["test_zero_block"].split()[5:] == ["happy", "!"]
    assert rows["test_clean"].split()[5:] == ["happy"]
    assert lines[-1].startswith("! the check has warnings: see the warnings summary")
    assert all(len(line) <= 80 for line in lines)


def test_the_warnings_can_be_made_errors(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_w=TINY)
    result = inner.runpytest("-W", "error::pytest_gradcheck.GradcheckWarning")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*GradcheckWarning: block ?args?0?? has tiny gradients*"])
    # the check still has its row
    assert sum("::test_tiny" in line for line in section(result.stdout.str())) == 1
    inner.makeini("[pytest]\nfilterwarnings =\n    error::pytest_gradcheck.GradcheckWarning\n")
    inner.runpytest().assert_outcomes(passed=1, failed=2)


def test_a_warning_raised_as_an_error_shows_in_the_section_and_the_json(
    inner: pytest.Pytester,
) -> None:
    # the checks pass their tolerance; the filter makes their calls raise the warning,
    # so their tests fail: the report must say so, not show two plain happy passes
    inner.makepyfile(test_w=TINY)
    result = inner.runpytest(
        "-W", "error::pytest_gradcheck.GradcheckWarning", "--gradcheck-json=w.json"
    )
    result.assert_outcomes(passed=1, failed=2)
    lines = section(result.stdout.str())
    at = {line.split()[0].split("::")[1]: i for i, line in enumerate(lines) if "::" in line}
    assert lines[at["test_zero_block"]].split()[5:] == ["happy", "RAISED", "!"]
    assert lines[at["test_zero_block"] + 1].startswith(
        "    raised GradcheckWarning: block 'args[1]' has an analytic gradient of exac"
    )
    assert lines[at["test_tiny"]].split()[5:] == ["happy", "RAISED", "!"]
    assert lines[at["test_tiny"] + 1].startswith(
        "    raised GradcheckWarning: block 'args[0]' has tiny gradients"
    )
    assert lines[at["test_clean"]].split()[5:] == ["happy"]
    assert lines[-2] == "3 check(s) in 3 test(s): 3 happy; 2 with a warning raised as an error"
    assert all(len(line) <= 80 for line in lines)

    doc = load_json(inner.path / "w.json")
    validate_report(doc)
    checks = {c["nodeid"].split("::")[1]: c for c in doc["checks"]}
    zero = checks["test_zero_block"]
    # the result is kept whole; what the call then raised is beside it
    assert (zero["passed"], zero["tier"], zero["test_outcome"]) == (True, "happy", "failed")
    assert zero["warning_raised"].startswith(
        "block 'args[1]' has an analytic gradient of exactly 0 at the checked point"
    )
    assert zero["warning_raised"] in zero["warnings"]
    assert checks["test_tiny"]["warning_raised"].startswith("block 'args[0]' has tiny gradients")
    assert checks["test_clean"]["warning_raised"] is None
    s = doc["summary"]
    assert (s["checks"], s["passed"], s["failed"], s["errors"]) == (3, 3, 0, 0)
    assert s["warnings_raised"] == 2

    # without the filter the same checks warn and raise nothing
    plain = inner.runpytest("--gradcheck-json=p.json")
    plain.assert_outcomes(passed=3)
    assert "RAISED" not in "\n".join(section(plain.stdout.str()))
    doc = load_json(inner.path / "p.json")
    assert doc["summary"]["warnings_raised"] == 0
    assert all(c["warning_raised"] is None for c in doc["checks"])


def test_a_returned_failure_whose_warning_is_raised_shows_both(inner: pytest.Pytester) -> None:
    # raise_on_fail=False: the failing result returns, so its warnings are issued too
    inner.makepyfile(
        test_f="""
        import numpy as np
        from pytest_gradcheck import gradcheck

        def test_fails_quietly(gradcheck):
            x = np.array([1.0, 2.0])
            gradcheck(
                lambda x, y: np.sum(x**2), x, x.copy(), grad=lambda x, y: (3 * x, 0 * y),
                raise_on_fail=False,
            )
        """
    )
    result = inner.runpytest(
        "-W", "error::pytest_gradcheck.GradcheckWarning", "--gradcheck-json=f.json"
    )
    result.assert_outcomes(failed=1)
    lines = section(result.stdout.str())
    i = next(n for n, line in enumerate(lines) if "::test_fails_quietly" in line)
    # the id stands on its own line (too long for its column), the cells below it
    assert lines[i + 1].split()[4:] == ["wrong", "FAILED", "!"]
    assert lines[i + 2].startswith("    raised GradcheckWarning: block 'args[1]' has an")
    assert lines[-2] == "1 check(s) in 1 test(s): 1 wrong; 1 with a warning raised as an error"
    doc = load_json(inner.path / "f.json")
    validate_report(doc)
    (check,) = doc["checks"]
    assert check["passed"] is False and check["warning_raised"].startswith("block 'args[1]'")
    s = doc["summary"]
    assert (s["passed"], s["failed"], s["warnings_raised"]) == (0, 1, 1)


def test_a_check_that_raises_lists_its_warnings_in_the_message(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_f="""
        import numpy as np
        from pytest_gradcheck import gradcheck

        def test_fails(gradcheck):
            x = np.array([1.0, 2.0])
            gradcheck(lambda x, y: np.sum(x**2), x, x.copy(), grad=lambda x, y: (3 * x, 0 * y))
        """
    )
    result = inner.runpytest("-W", "error::pytest_gradcheck.GradcheckWarning")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "GradcheckError: gradcheck FAILED" in out  # not the warning, raised first
    assert "E       warning: block 'args[1]' has an analytic gradient of exactly 0" in out


def test_gradcheck_warns_outside_pytest_too() -> None:
    x = np.random.default_rng(0).standard_normal(5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = gradcheck(lambda x: 1.0 + 1e-12 * np.sum(x**3), x, grad=lambda x: 6e-12 * x**2)
        clean = gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: 3 * x**2)
    assert result.passed and clean.passed and not clean.warnings
    assert [str(w.message) for w in caught] == list(result.warnings)
    (w,) = caught
    assert w.category is GradcheckWarning and issubclass(GradcheckWarning, UserWarning)
    assert Path(w.filename) == Path(__file__)  # the caller's line, not ours
    # one that returns a failure warns as well; one that raises does not
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = gradcheck(
            lambda x, y: np.sum(x**2), x, x.copy(), grad=lambda x, y: (3 * x, 0 * y),
            raise_on_fail=False,
        )  # fmt: skip
        with pytest.raises(GradcheckError):
            gradcheck(lambda x, y: np.sum(x**2), x, x.copy(), grad=lambda x, y: (3 * x, 0 * y))
    assert not bad.passed and [str(w.message) for w in caught] == list(bad.warnings)
    assert pytest_gradcheck.GradcheckWarning is GradcheckWarning
    assert "GradcheckWarning" in pytest_gradcheck.__all__


def test_the_scale_auto_factor_is_a_notice_not_a_warning(inner: pytest.Pytester) -> None:
    # scale="auto" multiplies the loss by a power of two because the user asked for it:
    # exact, no verdict changes, nothing the check could not see. Issued as a
    # GradcheckWarning, it failed every correct check under -W error and marked its row
    inner.makepyfile(
        test_s="""
        from gc_helpers import X, square, square_grad

        def test_scaled(gradcheck):
            result = gradcheck(square, X, grad=square_grad, scale="auto")
            assert result.scale != 1.0
            assert any("scale='auto' multiplied the loss" in w for w in result.warnings)
        """
    )
    result = inner.runpytest("-W", "error::pytest_gradcheck.GradcheckWarning")
    result.assert_outcomes(passed=1)
    rows = [line for line in section(result.stdout.str()) if "::test_scaled" in line]
    assert len(rows) == 1 and not rows[0].rstrip().endswith("!")
