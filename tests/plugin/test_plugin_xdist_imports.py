"""Runs in a fresh interpreter: ``-n 2`` (real pytest-xdist) against a serial run, and
what importing the plugin imports."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from gc_plugin_util import section, validate_report

SUITE = """
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from pytest_gradcheck import gradcheck
from gc_helpers import X, square, square_grad, square_off, square_wrong, terms, terms_grad

def test_happy():
    gradcheck(square, X, grad=square_grad)

def test_caught():
    with pytest.raises(AssertionError):
        gradcheck(square, X, grad=square_off)

def test_fails(gradcheck):
    gradcheck(square, X, grad=square_wrong, raise_on_fail=False)

def test_terms():
    gradcheck(terms, X, grad=terms_grad)
    gradcheck(square, X, grad=square_grad, tolerance="ok")

@pytest.mark.parametrize("n", range(6))
def test_param(n):
    gradcheck(square, np.arange(1.0, n + 2), grad=square_grad)

@settings(max_examples=8, derandomize=True, database=None, deadline=None)
@given(st.floats(0.5, 2.0))
def test_hyp(v):
    gradcheck(square, np.array([v, 1.0]), grad=square_grad)

def test_none():
    pass
"""


def _run(p: pytest.Pytester, name: str, *extra: str) -> tuple[pytest.RunResult, dict, dict]:
    """A run in a fresh interpreter (the same for the serial run: nothing of this
    process, such as a Hypothesis profile loaded by another test, can make them differ)."""
    result = p.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "--gradcheck-report=blocks",
        f"--gradcheck-json={name}.json",
        f"--junitxml={name}.xml",
        *extra,
    )
    doc = json.loads((p.path / f"{name}.json").read_text())
    props = {}
    for case in ET.parse(p.path / f"{name}.xml").iter("testcase"):
        props[case.get("name")] = {q.get("name"): q.get("value") for q in case.iter("property")}
    return result, doc, props


def _comparable(doc: dict) -> dict:
    """The document without what legitimately differs between two runs."""
    doc = json.loads(json.dumps(doc))
    doc.pop("created")
    doc["summary"].pop("seconds")
    for check in doc["checks"]:
        check.pop("seconds")
        for term in check["terms"].values():
            term.pop("seconds")
    return doc


def test_xdist_run_equals_the_serial_run(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_x=SUITE)
    # a baseline in which test_caught was better and a since-deleted test existed
    inner.runpytest("--gradcheck-save-baseline=base.json")
    base = json.loads((inner.path / "base.json").read_text())
    validate_report(base)
    gone = dict(base["checks"][0], nodeid="test_x.py::test_deleted")
    for check in base["checks"]:
        if check["nodeid"] == "test_x.py::test_caught":
            check["max_rel_error"] = 1e-5
    base["checks"].append(gone)
    (inner.path / "base.json").write_text(json.dumps(base))

    gates = ("--gradcheck-fail-tier=ok", "--gradcheck-baseline=base.json")
    serial, serial_doc, serial_props = _run(inner, "serial", *gates)
    xdist, xdist_doc, xdist_props = _run(inner, "xdist", *gates, "-n", "2")
    assert "2 workers [" in xdist.stdout.str()  # really distributed
    serial.assert_outcomes(passed=12)
    xdist.assert_outcomes(passed=12)
    # the gates: every test passed, yet the session fails; same explanation, no traceback
    assert serial.ret == xdist.ret == pytest.ExitCode.TESTS_FAILED
    gate = [line for line in serial.stdout.lines if line.startswith("  test_x.py::")]
    assert gate == [line for line in xdist.stdout.lines if line.startswith("  test_x.py::")]
    assert [line.split(":")[2].split()[0] for line in gate] == [
        "test_caught",  # fail-tier: uncomfortable is worse than ok
        "test_fails",
        "test_caught",  # baseline: grew past the factor
        "test_deleted",  # baseline: disappeared
    ]
    assert "Traceback" not in xdist.stdout.str() + xdist.stderr.str()
    # the section, row for row (blocks mode, Hypothesis collapse included)
    assert section(serial.stdout.str()) == section(xdist.stdout.str())
    assert any("examples, worst shown" in line for line in section(xdist.stdout.str()))
    # the JSON file
    validate_report(xdist_doc)
    assert _comparable(serial_doc) == _comparable(xdist_doc)
    assert xdist_doc["gates"]["passed"] is False and len(xdist_doc["gates"]["failures"]) == 4
    # the junit properties
    assert serial_props == xdist_props
    assert xdist_props["test_fails"]["gradcheck_tier"] == "wrong"
    assert xdist_props["test_param[5]"]["gradcheck_tier"] == "happy"


# -- imports ----------------------------------------------------------------------------

FRAMEWORKS = ("numpy", "torch", "jax", "jaxlib", "hypothesis", "scipy")


def test_importing_the_plugin_imports_no_framework() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "import pytest_gradcheck, pytest_gradcheck.plugin",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "pytest_gradcheck" in imported and "pytest" in imported
    assert not imported & set(FRAMEWORKS), sorted(imported & set(FRAMEWORKS))


def test_a_session_without_checks_imports_no_numpy(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        f"""
        import sys

        def pytest_sessionfinish(session):
            loaded = [m for m in {FRAMEWORKS!r} if m in sys.modules]
            print("\\nFRAMEWORKS LOADED:", loaded)
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gradcheck(seed=1)
        def test_marked():
            pass

        def test_fixture(gradcheck):
            assert callable(gradcheck)
        """
    )
    result = pytester.runpytest_subprocess(
        "-s", "--gradcheck-report=blocks", "--gradcheck-json=r.json", "--gradcheck-fail-tier=ok"
    )
    result.assert_outcomes(passed=2)
    assert "gradcheck: pytest-gradcheck" in result.stdout.str()  # the plugin was active
    result.stdout.fnmatch_lines(["FRAMEWORKS LOADED: []"])
