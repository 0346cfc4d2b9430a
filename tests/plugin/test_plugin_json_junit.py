"""`--gradcheck-json`: the document and its schema; junit XML properties."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from gc_plugin_util import SCHEMA_PATH, load_json, schema_errors, section, validate_report

from pytest_gradcheck._report import SCHEMA_VERSION, SessionReport, dumps

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
    gradcheck(square, X, grad=square_wrong)

@pytest.mark.gradcheck(samples_per_block=None, eps="auto", wrt=["args[0]"], sweep=True)
def test_terms():
    gradcheck(terms, X, grad=terms_grad)

@pytest.mark.parametrize("n", [2, 3])
def test_param(n):
    gradcheck(square, np.ones((n, 2)), grad=square_grad, mode="coords")

@settings(max_examples=5, derandomize=True, database=None, deadline=None)
@given(st.floats(0.5, 2.0))
def test_hyp(v):
    gradcheck(square, np.array([v]), grad=square_grad)

def test_no_check():
    pass
"""


@pytest.fixture
def suite(inner: pytest.Pytester) -> pytest.Pytester:
    inner.makepyfile(test_j=SUITE)
    return inner


def test_json_has_every_check_and_validates_against_the_schema(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--gradcheck-json=out/report.json")
    result.assert_outcomes(passed=7, failed=1)
    doc = load_json(suite.path / "out" / "report.json")
    validate_report(doc)
    assert doc["schema_version"] == SCHEMA_VERSION
    from pytest_gradcheck import __version__

    assert doc["pytest_gradcheck"] == __version__ and doc["pytest"] == pytest.__version__
    nodeids = [c["nodeid"] for c in doc["checks"]]
    # collection order; a Hypothesis test contributes every example
    assert nodeids[:6] == [
        "test_j.py::test_happy",
        "test_j.py::test_caught",
        "test_j.py::test_fails",
        "test_j.py::test_terms",
        "test_j.py::test_param[2]",
        "test_j.py::test_param[3]",
    ]
    hyp = [c for c in doc["checks"] if c["nodeid"] == "test_j.py::test_hyp"]
    assert len(hyp) >= 5 and [c["example"] for c in hyp] == list(range(len(hyp)))
    assert all(c["index"] == 0 for c in hyp)
    by_id = {c["nodeid"]: c for c in doc["checks"]}
    happy, caught, fails = (by_id[f"test_j.py::test_{n}"] for n in ("happy", "caught", "fails"))
    assert (happy["tier"], happy["passed"], happy["test_outcome"]) == ("happy", True, "passed")
    assert (caught["tier"], caught["passed"], caught["test_outcome"]) == (
        "uncomfortable",
        False,
        "passed",
    )
    assert (fails["tier"], fails["test_outcome"], fails["when"]) == ("wrong", "failed", "call")
    assert happy["example"] is None and happy["index"] == 0
    # options, blocks, coordinates, values, relative errors, tiers, evaluations, time
    assert happy["options"]["eps"] == 1e-5 and happy["options"]["seed"] == 0
    (block,) = happy["blocks"]
    assert block["name"] == "args[0]" and block["shape"] == [3]
    assert block["indices"] == [[0], [1], [2]] or sorted(block["indices"]) == [[0], [1], [2]]
    analytic = dict(zip(map(tuple, block["indices"]), block["analytic"], strict=True))
    assert analytic == {(0,): 2.0, (1,): -4.0, (2,): 6.0}
    assert len(block["numeric"]) == len(block["rel_error"]) == len(block["step"]) == 3
    assert all(r < 1e-7 for r in block["rel_error"]) and block["tier"] == "happy"
    assert happy["evaluations"] > 0 and happy["seconds"] > 0 and happy["coordinates"] == 3
    terms = by_id["test_j.py::test_terms"]
    assert set(terms["terms"]) == {"data", "reg"}
    assert terms["options"]["eps"] == "auto" and terms["options"]["wrt"] == ["args[0]"]
    assert terms["sweep"] and terms["terms"]["reg"]["term"] == "reg"
    s = doc["summary"]
    assert s["checks"] == len(doc["checks"]) and s["tests"] == 7
    assert s["worst_tier"] == "wrong" and s["failed"] == 2
    assert doc["gates"]["passed"] is None and doc["defaults"]["samples_per_block"] == 10


def test_json_path_from_ini_is_relative_to_the_ini_file(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\ngradcheck_json = reports/gc.json\n")
    sub = suite.mkdir("elsewhere")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sub)
        suite.runpytest(str(suite.path))
    validate_report(load_json(suite.path / "reports" / "gc.json"))


def test_an_output_path_that_cannot_be_written_is_a_usage_error(inner: pytest.Pytester) -> None:
    # found before any test runs (exit status 4), not as a traceback at the session's end
    inner.makepyfile(test_x="def test_x():\n    raise AssertionError('must not run')\n")
    inner.mkdir("adir")
    inner.makefile(".txt", afile="")
    cases = [
        (["--gradcheck-json=adir"], "--gradcheck-json: * is a directory; give the path of a file"),
        (["--gradcheck-save-baseline=afile.txt/b.json"],
         "--gradcheck-save-baseline: cannot write *b.json: *afile.txt is not a directory"),
        (["--gradcheck-json=afile.txt/deeper/r.json"],
         "--gradcheck-json: cannot write *: *afile.txt is not a directory"),
    ]  # fmt: skip
    for args, message in cases:
        result = inner.runpytest(*args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, args
        result.stderr.fnmatch_lines([f"ERROR: {message}"])
        assert "must not run" not in result.stdout.str()
    inner.makeini("[pytest]\ngradcheck_json = adir\n")
    result = inner.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini key gradcheck_json: * is a directory*"])
    # a missing parent directory is fine: it is created at the end
    inner.makeini("[pytest]\n")
    inner.runpytest("--gradcheck-json=new/dir/r.json").assert_outcomes(failed=1)
    assert (inner.path / "new" / "dir" / "r.json").is_file()


def test_an_output_path_the_run_made_unwritable_is_reported_without_a_traceback(
    inner: pytest.Pytester,
) -> None:
    # writable at the start (a missing directory is created at the end), but a test
    # put a file where that directory was to be: the end of the session said so with an
    # INTERNALERROR traceback; now a section names the flag, and the run does not pass
    inner.makepyfile(
        test_x="""
        from pathlib import Path
        from gc_helpers import X, square, square_grad

        def test_x(gradcheck):
            gradcheck(square, X, grad=square_grad)
            Path("out").write_text("a file, not a directory")
        """
    )
    result = inner.runpytest("--gradcheck-json=out/r.json")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        ["*= gradcheck report not written =*", "--gradcheck-json: cannot write *r.json: *"]
    )
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text and "Traceback" not in text


def test_json_written_with_no_checks_and_non_finite_numbers_as_null(tmp_path) -> None:
    report = SessionReport()
    doc = report.document(
        version="0", pytest_version="0", defaults={"eps": 1e-5, "samples_per_block": 10,
        "seed": 0, "kinks": "track", "tolerance": None, "mode": "both"},
        gates={"fail_tier": None, "baseline": None, "baseline_factor": 10.0, "passed": None,
               "failures": []}, created="now",
    )  # fmt: skip
    validate_report(json.loads(dumps(doc)))
    assert json.loads(dumps({"x": [float("nan"), float("inf"), 1.5]})) == {"x": [None, None, 1.5]}


def test_schema_file_is_strict_enough_to_catch_mistakes(suite: pytest.Pytester) -> None:
    suite.runpytest("--gradcheck-json=r.json")
    doc = load_json(suite.path / "r.json")
    schema = json.loads(SCHEMA_PATH.read_text())
    assert not list(schema_errors(doc, schema, schema))
    broken = json.loads(json.dumps(doc))
    broken["checks"][0]["tier"] = "fine"
    del broken["checks"][1]["blocks"][0]["rel_error"]
    broken["checks"][2]["nodeid"] = 3
    broken["schema_version"] = SCHEMA_VERSION + 1
    errors = "\n".join(schema_errors(broken, schema, schema))
    assert "$.checks[0].tier" in errors
    assert "missing required 'rel_error'" in errors
    assert "$.checks[2].nodeid" in errors
    assert "$.schema_version" in errors


def test_junit_xml_has_tier_and_max_rel_error_properties(suite: pytest.Pytester) -> None:
    suite.runpytest("--junitxml=junit.xml")
    tree = ET.parse(suite.path / "junit.xml")
    props = {}
    for case in tree.iter("testcase"):
        name = case.get("name")
        props[name] = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["test_happy"]["gradcheck_tier"] == "happy"
    assert float(props["test_happy"]["gradcheck_max_rel_error"]) < 1e-7
    assert props["test_caught"]["gradcheck_tier"] == "uncomfortable"
    assert props["test_fails"]["gradcheck_tier"] == "wrong"
    assert float(props["test_fails"]["gradcheck_max_rel_error"]) == pytest.approx(1 / 3)
    assert props["test_param[3]"]["gradcheck_checks"] == "1"
    assert int(props["test_hyp"]["gradcheck_checks"]) >= 5
    assert "gradcheck_tier" not in props["test_no_check"]


def test_user_properties_of_the_test_are_kept(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_p="""
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad

        def test_it(record_property):
            record_property("mine", "1")
            gradcheck(square, X, grad=square_grad)
        """
    )
    inner.runpytest("--junitxml=j.xml")
    names = [p.get("name") for p in ET.parse(inner.path / "j.xml").iter("property")]
    assert names == ["mine", "gradcheck_tier", "gradcheck_max_rel_error", "gradcheck_checks"]


def test_the_docs_example_document_is_valid() -> None:
    page = (SCHEMA_PATH.parent / "json-schema.md").read_text()
    example = page.split("```json\n", 1)[1].split("\n```", 1)[0]
    validate_report(json.loads(example))


RAISING = """
import pytest
from pytest_gradcheck import gradcheck
from gc_helpers import X, square, square_grad

def bad_shape(x):
    return (x[:2],)

def test_raises(gradcheck):
    gradcheck(square, X, grad=square_grad)
    gradcheck(square, X, grad=bad_shape)

def test_caught():
    with pytest.raises(TypeError):
        gradcheck(square, X, grad=square_grad, sample_per_block=3)
"""


def test_a_check_that_raised_is_in_the_json_the_section_and_the_gates(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(test_r=RAISING)
    result = inner.runpytest("--gradcheck-json=r.json", "--junitxml=j.xml")
    result.assert_outcomes(passed=1, failed=1)
    doc = load_json(inner.path / "r.json")
    validate_report(doc)
    checks = {(c["nodeid"].split("::")[1], c["index"]): c for c in doc["checks"]}
    assert sorted(checks) == [("test_caught", 0), ("test_raises", 0), ("test_raises", 1)]
    assert "error" not in checks["test_raises", 0] and checks["test_raises", 0]["tier"] == "happy"
    bad = checks["test_raises", 1]
    assert bad["error"]["type"] == "ValueError"
    assert bad["error"]["message"].startswith(
        "gradcheck: the analytic gradient of block 'args[0]' has shape"
    )
    assert (bad["passed"], bad["tier"], bad["max_rel_error"], bad["test_outcome"]) == (
        False, None, None, "failed",
    )  # fmt: skip
    caught = checks["test_caught", 0]
    assert caught["error"]["type"] == "TypeError" and caught["test_outcome"] == "passed"
    s = doc["summary"]
    assert (s["checks"], s["passed"], s["failed"], s["errors"]) == (3, 1, 0, 2)
    assert s["worst_tier"] == "happy"
    lines = section(result.stdout.str())
    i = next(n for n, line in enumerate(lines) if "::test_raises #2" in line)
    assert lines[i].split()[2:] == ["-", "-", "-", "-", "error"]
    assert lines[i + 1].startswith("    ValueError: gradcheck: the analytic gradient of block")
    assert all(len(line) <= 80 for line in lines)
    assert lines[-1] == "3 check(s) in 2 test(s): 1 happy, 2 raised"
    props = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(inner.path / "j.xml").iter("testcase")
    }
    assert props["test_raises"]["gradcheck_checks"] == "2"
    assert props["test_raises"]["gradcheck_tier"] == "happy"
    assert "gradcheck_tier" not in props["test_caught"]
    # the gates name what it raised; a baseline check that raises now is not "disappeared"
    gated = inner.runpytest("--gradcheck-fail-tier=wrong", "--gradcheck-baseline=r.json")
    out = gated.stdout.str()
    assert "test_r.py::test_caught: raised TypeError: gradcheck: " in out
    assert "disappeared" not in out
    inner.makepyfile(test_r=RAISING.replace("grad=bad_shape", "grad=square_grad"))
    inner.runpytest("--gradcheck-save-baseline=ok.json").assert_outcomes(passed=2)
    inner.makepyfile(test_r=RAISING)
    rerun = inner.runpytest("--gradcheck-baseline=ok.json").stdout.str()
    assert re.search(r"test_r.py::test_raises #2: raised ValueError: .* \(baseline max rel", rerun)


def test_an_xfail_tests_checks_say_xfailed_or_xpassed(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_x="""
        import pytest
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad, square_wrong

        @pytest.mark.xfail(reason="known bug")
        def test_xfailed():
            gradcheck(square, X, grad=square_wrong)

        @pytest.mark.xfail(reason="fixed since")
        def test_xpassed():
            gradcheck(square, X, grad=square_grad)

        @pytest.mark.xfail(reason="fixed since", strict=True)
        def test_strict():
            gradcheck(square, X, grad=square_grad)
        """
    )
    run = inner.runpytest("--gradcheck-json=r.json")
    run.assert_outcomes(xfailed=1, xpassed=1, failed=1)
    # the terminal row of the expected failure says so, not a plain FAILED
    row = [line for line in run.stdout.lines if line.startswith("test_x.py::test_xfailed")]
    assert row and "XFAIL" in row[0] and "FAILED" not in row[0], run.stdout.str()
    doc = load_json(inner.path / "r.json")
    validate_report(doc)
    outcomes = {c["nodeid"].split("::")[1]: c["test_outcome"] for c in doc["checks"]}
    assert outcomes == {
        "test_xfailed": "xfailed",
        "test_xpassed": "xpassed",
        "test_strict": "failed",
    }


AMPLIFIED = """
import numpy as np
from pytest_gradcheck import gradcheck
from pytest_gradcheck._sampling import direction, sample_coordinates

N = 2000
v = direction("args[0]", N, 0)
w = np.random.default_rng(21).standard_normal(N)
X = w - (v @ w - 0.02) * v  # v·g small: one entry's 1% is 1.8% of it
SAMPLE = set(sample_coordinates("args[0]", N, [X], 10, seed=0).tolist())
K = next(int(i) for i in np.argsort(-np.abs(X)) if i not in SAMPLE and abs(X[i]) < 2.5)

def grad(x):
    g = x.copy()
    g[K] *= 1.01
    return (g,)

def test_one_entry_off():
    gradcheck(lambda x: 0.5 * float(np.sum(x**2)), X, grad=grad)
"""


def test_an_explained_direction_is_in_the_json_and_the_tier_is_the_entrys(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(test_amp=AMPLIFIED)
    result = inner.runpytest("--gradcheck-json=r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*9.90e-03  uncomfortable*FAILED*"])
    doc = load_json(inner.path / "r.json")
    validate_report(doc)
    (check,) = doc["checks"]
    (block,) = check["blocks"]
    d = block["direction"]
    assert d["tier"] == "wrong" and d["rel_error"] > 1e-2  # the direction's own numbers
    assert d["explained_by"] == block["localized"] and len(d["explained_by"]) == 1
    assert d["residual_rel_error"] < 1e-5
    assert check["tier"] == block["tier"] == doc["summary"]["worst_tier"] == "uncomfortable"
    assert check["max_rel_error"] == block["max_rel_error"] == max(block["rel_error"]) < 1e-2
