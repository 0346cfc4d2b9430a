"""CI gates: ``--gradcheck-fail-tier`` and the baseline comparison, failing and passing
with the right exit status and no traceback."""

from __future__ import annotations

import pytest
from gc_plugin_util import load_json, validate_report

CAUGHT = """
import pytest
from pytest_gradcheck import GradcheckError, gradcheck
from gc_helpers import X, square, square_grad, square_off

def test_happy():
    gradcheck(square, X, grad=square_grad)

def test_caught_by_raises():
    with pytest.raises(GradcheckError):
        gradcheck(square, X, grad=square_off)

def test_not_raised():
    assert not gradcheck(square, X, grad=square_off, raise_on_fail=False).passed
"""


def _no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text
    for internal in ("_gates.py", "plugin.py", "INTERNALERROR"):
        assert internal not in text


def test_fail_tier_fails_the_session_even_where_the_test_caught_the_error(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(test_g=CAUGHT)
    result = inner.runpytest("--gradcheck-fail-tier=ok")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= gradcheck gate failed =*",
            "--gradcheck-fail-tier=ok: 2 check(s) worse than ok:",
            "  test_g.py::test_caught_by_raises: tier uncomfortable (max rel error 9.90e-03)*",
            "  test_g.py::test_not_raised: tier uncomfortable*",
        ]
    )
    _no_traceback(result)


@pytest.mark.parametrize("tier", ["uncomfortable", "wrong"])
def test_fail_tier_passes_when_no_check_is_worse(inner: pytest.Pytester, tier: str) -> None:
    inner.makepyfile(test_g=CAUGHT)
    result = inner.runpytest(f"--gradcheck-fail-tier={tier}")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"gradcheck gates passed: no check worse than {tier}"])
    assert "gate failed" not in result.stdout.str()


def test_fail_tier_from_ini_and_json_records_the_verdict(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_g=CAUGHT)
    inner.makeini("[pytest]\ngradcheck_fail_tier = happy\n")
    result = inner.runpytest("--gradcheck-json=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    doc = load_json(inner.path / "r.json")
    validate_report(doc)
    assert doc["gates"]["fail_tier"] == "happy" and doc["gates"]["passed"] is False
    assert len(doc["gates"]["failures"]) == 2
    assert inner.runpytest("--gradcheck-fail-tier=wrong").ret == pytest.ExitCode.OK


def test_a_gate_set_in_the_ini_file_names_the_ini_key_not_a_flag(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_g=CAUGHT)
    inner.makeini("[pytest]\ngradcheck_fail_tier = OK\n")
    result = inner.runpytest()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*= gradcheck gate failed =*", "gradcheck_fail_tier = OK (ini): 2 check(s) worse than ok:"]
    )
    assert "--gradcheck-fail-tier" not in result.stdout.str()
    # the flag, when given, is named as given
    result = inner.runpytest("--gradcheck-fail-tier=happy")
    result.stdout.fnmatch_lines(["--gradcheck-fail-tier=happy: 2 check(s) worse than happy:"])


def test_failing_tests_keep_their_exit_status(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_g="""
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_wrong

        def test_fails():
            gradcheck(square, X, grad=square_wrong)
        """
    )
    result = inner.runpytest("--gradcheck-fail-tier=ok")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "gradcheck gate failed" in result.stdout.str()


BASE = """
from pytest_gradcheck import gradcheck
from gc_helpers import X, square, square_grad, square_scaled

def test_a():
    gradcheck(square, X, grad=square_grad)
    gradcheck(square, X, grad=square_scaled({a2}), tolerance="wrong")

def test_b():
    gradcheck(square, X, grad=square_scaled({b}), tolerance="wrong")
"""


def test_baseline_save_then_compare_passes(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_base=BASE.format(a2="1 + 1e-5", b="1"))
    result = inner.runpytest("--gradcheck-save-baseline=ci/base.json")
    assert result.ret == pytest.ExitCode.OK
    doc = load_json(inner.path / "ci" / "base.json")
    validate_report(doc)
    assert len(doc["checks"]) == 3
    result = inner.runpytest("--gradcheck-baseline=ci/base.json")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["gradcheck gates passed: 3 check(s) within the baseline"])
    header = next(line for line in result.stdout.lines if line.startswith("gradcheck: "))
    assert "; baseline=ci/base.json (x10))" in header  # the path as given


def test_baseline_fails_when_an_error_grew_past_the_factor(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_base=BASE.format(a2="1 + 1e-5", b="1"))
    inner.runpytest("--gradcheck-save-baseline=base.json")
    # test_a #2: 1e-5 -> 2e-5 (x2, allowed); test_b: ~1e-10 -> 1e-6 (x10^4, not)
    inner.makepyfile(test_base=BASE.format(a2="1 + 2e-5", b="1 + 1e-6"))
    result = inner.runpytest("--gradcheck-baseline=base.json")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= gradcheck gate failed =*",
            "--gradcheck-baseline=base.json: 1 check(s) regressed or disappeared (factor 10):",
            "  test_base.py::test_b: max rel error grew * -> 1.00e-06 (x*, more than the "
            "allowed x10)",
        ]
    )
    assert "test_a" not in "\n".join(result.stdout.lines[-6:])
    _no_traceback(result)
    # a larger factor lets it pass; the factor also comes from the ini file
    assert (
        inner.runpytest("--gradcheck-baseline=base.json", "--gradcheck-baseline-factor=1e6").ret
        == 0
    )
    inner.makeini("[pytest]\ngradcheck_baseline = base.json\ngradcheck_baseline_factor = 1e6\n")
    assert inner.runpytest().ret == pytest.ExitCode.OK


def test_baseline_fails_when_a_check_disappeared(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_base=BASE.format(a2="1 + 1e-5", b="1"))
    inner.runpytest("--gradcheck-save-baseline=base.json")
    inner.makepyfile(
        test_base="""
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad

        def test_a():
            gradcheck(square, X, grad=square_grad)
        """
    )
    result = inner.runpytest("--gradcheck-baseline=base.json")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*2 check(s) regressed or disappeared*",
            "  test_base.py::test_a #2: check disappeared (baseline max rel error *)",
            "  test_base.py::test_b: check disappeared (baseline max rel error *)",
        ]
    )
    _no_traceback(result)


def test_baseline_from_ini_and_save_from_ini(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_base=BASE.format(a2="1 + 1e-5", b="1"))
    inner.makeini("[pytest]\ngradcheck_save_baseline = b.json\n")
    assert inner.runpytest().ret == 0
    inner.makeini("[pytest]\ngradcheck_baseline = b.json\n")
    inner.makepyfile(test_base=BASE.format(a2="1 + 1e-5", b="1.001"))
    result = inner.runpytest()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # named as given: the ini key, and the path relative as written
    result.stdout.fnmatch_lines(["gradcheck_baseline = b.json (ini): 1 check(s) regressed *"])
    assert str(inner.path) not in "\n".join(result.stdout.lines[-4:])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist; write one with --gradcheck-save-baseline"),
        ("{not json", "cannot be read as JSON"),
        ('{"checks": []}', "has schema_version None"),
        ('{"schema_version": 99, "checks": []}', "has schema_version 99"),
        ('{"schema_version": 1, "checks": [{"tier": "ok"}]}', "a check lacks a field"),
    ],
)
def test_unusable_baseline_is_a_usage_error(
    inner: pytest.Pytester, content: str | None, message: str
) -> None:
    inner.makepyfile("def test_x():\n    pass\n")
    if content is not None:
        (inner.path / "base.json").write_text(content)
    result = inner.runpytest("--gradcheck-baseline=base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_collect_only_neither_gates_nor_overwrites_the_baseline(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_base=BASE.format(a2="1 + 1e-5", b="1"))
    inner.runpytest("--gradcheck-save-baseline=base.json")
    before = (inner.path / "base.json").read_text()
    result = inner.runpytest(
        "--collect-only", "--gradcheck-baseline=base.json", "--gradcheck-save-baseline=base.json"
    )
    assert result.ret == pytest.ExitCode.OK
    assert (inner.path / "base.json").read_text() == before


def test_an_empty_flag_turns_off_the_gate_its_ini_key_set(inner: pytest.Pytester) -> None:
    # a local run of a narrower selection under a project's ini gates: the baseline gate
    # reports every check left out as disappeared; `--gradcheck-baseline=` must turn it
    # off (it fell back to the ini key, as if the flag were not given)
    inner.makepyfile(test_g=CAUGHT)
    inner.runpytest("--gradcheck-save-baseline=base.json")
    inner.makeini("[pytest]\ngradcheck_baseline = base.json\ngradcheck_fail_tier = ok\n")
    narrow = inner.runpytest("-k", "test_happy")
    assert narrow.ret == pytest.ExitCode.TESTS_FAILED
    narrow.stdout.fnmatch_lines(["*check disappeared*"])
    result = inner.runpytest("-k", "test_happy", "--gradcheck-baseline=", "--gradcheck-json=")
    result.assert_outcomes(passed=1, deselected=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["gradcheck gates passed: no check worse than ok"])  # ini's
    assert "baseline" not in result.stdout.str() and not (inner.path / "None").exists()
    result = inner.runpytest("--gradcheck-fail-tier=", "--gradcheck-baseline=")
    assert result.ret == pytest.ExitCode.OK
