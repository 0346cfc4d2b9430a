"""The marker, the fixture, direct calls, ``-m gradcheck`` and option precedence."""

from __future__ import annotations

import itertools

import pytest
from gc_plugin_util import load_json, section

from pytest_gradcheck._options import CLI


def test_marker_options_apply_to_every_check_in_the_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest
        from pytest_gradcheck import gradcheck, Tier
        from gc_helpers import X, square, square_grad, square_off

        @pytest.mark.gradcheck(seed=7, samples_per_block=2, tolerance="uncomfortable")
        def test_marked():
            a = gradcheck(square, X, grad=square_grad)
            b = gradcheck(square, X, grad=square_off)  # passes: tolerance uncomfortable
            for r in (a, b):
                assert r.options["seed"] == 7
                assert r.coordinates == 2
                assert r.tolerance is Tier.UNCOMFORTABLE
            assert b.tier is Tier.UNCOMFORTABLE and b.passed
        """
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_checks_in_threads_the_test_starts_take_its_options_and_reach_its_report(
    inner: pytest.Pytester,
) -> None:
    # a new thread starts with an empty contextvars context: without the process's
    # running test to fall back on, these checks ignored the marker and the CLI, and
    # were missing from the report and the JSON
    inner.makepyfile(
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor
        import pytest
        from pytest_gradcheck import gradcheck, Tier
        from gc_helpers import X, square, square_grad, square_off

        @pytest.mark.gradcheck(samples_per_block=2)
        def test_threads():
            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(
                    lambda g: gradcheck(square, X, grad=g, raise_on_fail=False),
                    [square_grad, square_off],
                ))
            assert [r.coordinates for r in results] == [2, 2]  # the marker
            assert results[1].passed  # --gradcheck-tolerance=uncomfortable
            box = []
            check = lambda: box.append(gradcheck(square, X, grad=square_grad))  # noqa: E731
            worker = threading.Thread(target=check)
            worker.start()
            worker.join()
            assert box[0].coordinates == 2
        """
    )
    out = inner.path / "report.json"
    result = inner.runpytest(
        "--gradcheck-tolerance=uncomfortable", f"--gradcheck-json={out}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    checks = load_json(out)["checks"]
    assert len(checks) == 3
    assert {c["nodeid"].split("::")[1] for c in checks} == {"test_threads"}
    assert sorted(c["index"] for c in checks) == [0, 1, 2]
    rows = [line for line in section(result.stdout.str()) if "test_threads" in line]
    assert len(rows) == 3


def test_class_and_module_markers_merge_closest_first(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad

        pytestmark = pytest.mark.gradcheck(seed=1, samples_per_block=1)

        @pytest.mark.gradcheck(seed=2)
        class TestIt:
            @pytest.mark.gradcheck(seed=3)
            def test_closest(self):
                r = gradcheck(square, X, grad=square_grad)
                assert (r.options["seed"], r.coordinates) == (3, 1)

            def test_class(self):
                assert gradcheck(square, X, grad=square_grad).options["seed"] == 2
        """
    )
    inner.runpytest().assert_outcomes(passed=2)


def test_unknown_marker_keyword_fails_the_test_listing_valid_ones(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.gradcheck(epsilon=1e-6)
        def test_typo():
            pass

        @pytest.mark.gradcheck(eps=-1.0)
        def test_bad_value():
            pass

        @pytest.mark.gradcheck(1e-6)
        def test_positional():
            pass
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    assert "unknown option(s) 'epsilon'" in out
    assert "valid options: eps, samples_per_block, seed, kinks, tolerance" in out
    assert "eps must be a float in (0, 1)" in out
    assert "takes keyword options only" in out
    assert "Traceback" not in out and "plugin.py" not in out


def test_fixture_is_the_function_and_session_scoped(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest_gradcheck
        from gc_helpers import X, square, square_grad

        def test_one(gradcheck):
            assert gradcheck is pytest_gradcheck.gradcheck
            assert gradcheck(square, X, grad=square_grad).passed

        def test_two(gradcheck, request):
            assert request.fixturenames.count("gradcheck") == 1
            fixturedef = request._fixturemanager.getfixturedefs("gradcheck", request.node)[-1]
            assert fixturedef.scope == "session"
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=2)
    assert "test_fixture_is_the_function_and_session_scoped.py::test_one" in section(
        result.stdout.str()
    )


def test_direct_call_and_fixture_record_into_the_running_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_rec="""
        from pytest_gradcheck import gradcheck as direct
        from gc_helpers import X, square, square_grad

        def test_direct():
            direct(square, X, grad=square_grad)

        def test_fixture(gradcheck):
            gradcheck(square, X, grad=square_grad)
            gradcheck(square, X, grad=square_grad)

        def test_none():
            pass
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=3)
    rows = [
        line.split()[0] + (" " + line.split()[1] if "#" in line else "")
        for line in section(result.stdout.str())[1:-1]
    ]
    assert rows == [
        "test_rec.py::test_direct",
        "test_rec.py::test_fixture #1",
        "test_rec.py::test_fixture #2",
    ]


def test_dash_m_gradcheck_selects_marked_and_fixture_tests(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.gradcheck
        def test_marked():
            pass

        @pytest.mark.gradcheck(seed=1)
        def test_marked_with_options():
            pass

        def test_uses_fixture(gradcheck):
            pass

        def test_plain():
            pass
        """
    )
    result = inner.runpytest("-m", "gradcheck", "-v")
    result.assert_outcomes(passed=3, deselected=1)
    assert "test_plain" not in result.stdout.str()
    result = inner.runpytest("-m", "not gradcheck", "-v")
    result.assert_outcomes(passed=1, deselected=3)
    assert "test_plain PASSED" in result.stdout.str()


def test_marker_is_registered(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.gradcheck(**options): a gradient-check test*"])
    inner.makepyfile("import pytest\n@pytest.mark.gradcheck\ndef test_x():\n    pass\n")
    inner.runpytest("--strict-markers").assert_outcomes(passed=1)


# -- precedence: call > marker > CLI > ini > default, each pair -------------------------

LAYERS = ("call", "marker", "cli", "ini")
SEEDS = {"call": 11, "marker": 22, "cli": 33, "ini": 44}


@pytest.mark.parametrize(
    "present",
    [c for n in range(len(LAYERS) + 1) for c in itertools.combinations(LAYERS, n)],
    ids=lambda c: "+".join(c) or "default",
)
def test_precedence(inner: pytest.Pytester, present: tuple[str, ...]) -> None:
    expected = SEEDS[present[0]] if present else 0
    marker = f"@pytest.mark.gradcheck(seed={SEEDS['marker']})" if "marker" in present else ""
    call = f", seed={SEEDS['call']}" if "call" in present else ""
    inner.makepyfile(
        f"""
        import pytest
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad

        {marker}
        def test_it():
            r = gradcheck(square, X, grad=square_grad{call})
            assert r.options["seed"] == {expected}
        """
    )
    if "ini" in present:
        inner.makeini(f"[pytest]\ngradcheck_seed = {SEEDS['ini']}\n")
    args = [f"--gradcheck-seed={SEEDS['cli']}"] if "cli" in present else []
    inner.runpytest(*args).assert_outcomes(passed=1)


def test_a_flag_given_empty_means_none_over_its_ini_key(inner: pytest.Pytester) -> None:
    # docs/options.md: "none or an empty value means None"; an empty flag fell back to
    # the ini key instead, as if it were not given
    inner.makepyfile(
        """
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad

        def test_it():
            r = gradcheck(square, X, grad=square_grad)
            assert r.options["tolerance"] is None
            assert r.options["samples_per_block"] is None
        """
    )
    inner.makeini("[pytest]\ngradcheck_tolerance = ok\ngradcheck_samples_per_block = 2\n")
    inner.runpytest("--gradcheck-tolerance=", "--gradcheck-samples=").assert_outcomes(passed=1)
    # an option that takes no None: an empty flag is a bad value, named
    result = inner.runpytest("--gradcheck-eps=")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --gradcheck-eps: *got ''"])


# -- every option has a CLI flag and an ini key, parsed from text -------------------------

#: option -> (text given, value the check sees)
SAMPLES = {
    "eps": ("1e-6", 1e-6),
    "samples_per_block": ("all", None),
    "seed": ("5", 5),
    "kinks": ("off", "off"),
    "tolerance": ("OK", "ok"),
    "burn_in": ("2", 2),
    "device": ("cpu", "cpu"),
    "wrt": ("args[0]", ["args[0]"]),
    "mode": ("coords", "coords"),
    "burn_in_lr": ("0.001", 0.001),
    "scale": ("auto", "auto"),
    "sweep": ("on", True),
    "dominance": ("50", 50.0),
    "batch": ("off", False),
}


def test_every_cli_option_has_a_flag_and_an_ini_key(inner: pytest.Pytester) -> None:
    out = inner.runpytest("--help").stdout.str()
    for name, (flag, _) in CLI.items():
        assert f"--gradcheck-{flag}" in out, name
        assert f"gradcheck_{name} " in out or f"gradcheck_{name}\n" in out, name
    for flag in ("json", "report", "fail-tier", "baseline", "baseline-factor", "save-baseline"):
        assert f"--gradcheck-{flag}" in out


def test_every_flags_help_says_its_default(inner: pytest.Pytester) -> None:
    for flag, help_text in CLI.values():
        assert "default" in help_text, f"--gradcheck-{flag} gives no default"
    out = " ".join(inner.runpytest("--help").stdout.str().split())  # unwrapped
    assert "wrong (default: auto, happy for a smooth f, ok where kinks are present)" in out
    assert "(default off; the bare flag means on, =off turns it off)" in out
    assert "'cpu' or 'cuda' (alias 'gpu'; 'cuda:N' picks a GPU); default: where the" in out


@pytest.mark.parametrize("source", ["cli", "ini"])
def test_options_from_text(inner: pytest.Pytester, source: str) -> None:
    samples = {k: v for k, v in SAMPLES.items() if k in CLI}
    inner.makepyfile(
        f"""
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad

        EXPECTED = {dict((k, v[1]) for k, v in samples.items())!r}

        def test_it():
            r = gradcheck(square, X, grad=square_grad, raise_on_fail=False)
            seen = {{k: r.options[k] for k in EXPECTED}}
            seen["tolerance"] = r.options["tolerance"].label
            assert seen == EXPECTED
        """
    )
    if source == "cli":
        args = [f"--gradcheck-{CLI[k][0]}={text}" for k, (text, _) in samples.items()]
    else:
        inner.makeini(
            "[pytest]\n" + "".join(f"gradcheck_{k} = {text}\n" for k, (text, _) in samples.items())
        )
        args = []
    inner.runpytest(*args).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--gradcheck-eps=big"], "", "--gradcheck-eps: gradcheck: eps must be a float"),
        (["--gradcheck-tolerance=fine"], "", "'fine' is not a tier"),
        ([], "gradcheck_samples_per_block = 0", "ini key gradcheck_samples_per_block"),
        (["--gradcheck-report=verbose"], "", "must be summary, blocks or off"),
        (["--gradcheck-fail-tier=great"], "", "'great' is not a tier"),
        (["--gradcheck-baseline-factor=0.5"], "", "must be a number > 1"),
    ],
)
def test_bad_option_text_is_a_usage_error(
    inner: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    inner.makepyfile("def test_x():\n    pass\n")
    if ini:
        inner.makeini(f"[pytest]\n{ini}\n")
    result = inner.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_checks_in_fixtures_record_into_the_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_fx="""
        import pytest
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad

        @pytest.fixture
        def checked():
            r = gradcheck(square, X, grad=square_grad)
            yield r
            gradcheck(square, X, grad=square_grad)

        @pytest.mark.gradcheck(seed=4)
        def test_it(checked):
            assert checked.options["seed"] == 4
        """
    )
    result = inner.runpytest("--gradcheck-json=r.json")
    result.assert_outcomes(passed=1)
    doc = load_json(inner.path / "r.json")
    assert [(c["when"], c["index"]) for c in doc["checks"]] == [("setup", 0), ("teardown", 1)]
