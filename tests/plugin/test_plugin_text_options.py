"""Options as text: on/off flags with an optional value, and unknown ``gradcheck_*``
ini keys as usage errors."""

from __future__ import annotations

import pytest

from pytest_gradcheck._cli import ini_keys
from pytest_gradcheck._options import CLI, SWITCHES

SHOW = """
from pytest_gradcheck import gradcheck
from gc_helpers import X, square, square_grad

def test_it():
    r = gradcheck(square, X, grad=square_grad)
    print("OPTIONS", "sweep=%s" % r.options["sweep"], "batch=%s" % r.options["batch"])
"""


def _shown(result: pytest.RunResult) -> str:
    (line,) = [line for line in result.outlines if "OPTIONS sweep=" in line]
    return line


def _has_sweep_table(result: pytest.RunResult) -> bool:
    return any(line.strip().startswith("h-sweep") for line in result.outlines)


def test_the_switches_are_sweep_and_batch() -> None:
    assert SWITCHES == ("sweep", "batch")


@pytest.mark.parametrize("name", ["sweep", "batch"])
@pytest.mark.parametrize("off", ["off", "false", "No", "0"])
def test_a_flag_turns_off_what_the_ini_file_turned_on(
    inner: pytest.Pytester, name: str, off: str
) -> None:
    inner.makepyfile(test_show=SHOW)
    inner.makeini("[pytest]\n" + "".join(f"gradcheck_{n} = on\n" for n in {"sweep", name}))
    on = inner.runpytest("-s")
    assert on.ret == 0
    assert f"{name}=True" in _shown(on)
    result = inner.runpytest("-s", f"--gradcheck-{CLI[name][0]}={off}")
    assert result.ret == 0, result.stderr.str()
    assert f"{name}=False" in _shown(result)
    if name == "sweep":  # the effect: no sweep table in the report
        assert _has_sweep_table(on) and not _has_sweep_table(result)


@pytest.mark.parametrize("name", ["sweep", "batch"])
def test_a_bare_flag_means_on_and_leaves_a_test_path_to_pytest(
    inner: pytest.Pytester, name: str
) -> None:
    inner.makepyfile(test_show=SHOW, test_other="def test_other():\n    pass\n")
    inner.makeini(f"[pytest]\ngradcheck_{name} = off\n")
    result = inner.runpytest("-s", "-v", f"--gradcheck-{CLI[name][0]}", "test_show.py")
    assert result.ret == 0, result.stderr.str()
    assert f"{name}=True" in _shown(result)
    result.assert_outcomes(passed=1)  # test_show.py only: the path was not swallowed
    assert "test_other" not in result.stdout.str()
    # a value separated by a space is taken too when it is an on/off word
    result = inner.runpytest("-s", f"--gradcheck-{CLI[name][0]}", "off", "test_show.py")
    assert f"{name}=False" in _shown(result)


@pytest.mark.parametrize("value", ["maybe", "nothere.py"])
def test_a_bad_switch_value_is_a_usage_error_naming_the_flag(
    inner: pytest.Pytester, value: str
) -> None:
    inner.makepyfile(test_show=SHOW)
    result = inner.runpytest(f"--gradcheck-h-sweep={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "argument --gradcheck-h-sweep: takes on or off" in err
    assert f"got {value!r}" in err
    assert "Traceback" not in err


def test_a_bad_switch_value_in_the_ini_file_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_show=SHOW)
    inner.makeini("[pytest]\ngradcheck_batch = sometimes\n")
    result = inner.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini key gradcheck_batch: gradcheck: batch must be on or off" in result.stderr.str()


# -- unknown ini keys ---------------------------------------------------------------


def _write_config(pytester: pytest.Pytester, kind: str, lines: dict[str, str]) -> None:
    if kind == "pytest.ini":
        text = "[pytest]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items())
        pytester.makefile(".ini", pytest=text)
    else:
        pytester.makepyprojecttoml(
            "[tool.pytest.ini_options]\n" + "".join(f'{k} = "{v}"\n' for k, v in lines.items())
        )


@pytest.mark.parametrize("kind", ["pytest.ini", "pyproject.toml"])
@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("gradcheck_samples", "gradcheck_samples_per_block"),  # the flag's spelling
        ("gradcheck_h_sweep", "gradcheck_sweep"),
        ("gradcheck_fail_teir", "gradcheck_fail_tier"),  # a typo
        ("gradcheck_colour", None),
    ],
)
def test_an_unknown_gradcheck_ini_key_is_a_usage_error(
    inner: pytest.Pytester, kind: str, key: str, meant: str | None
) -> None:
    inner.makepyfile(test_show=SHOW)
    _write_config(inner, kind, {"gradcheck_seed": "3", key: "3"})
    result = inner.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"gradcheck: unknown ini key(s) {key!r}" in err
    assert f"in {kind}" in err
    if meant:
        assert f"(did you mean {meant!r}?)" in err
    else:
        assert "did you mean" not in err
    assert "valid keys: " + ", ".join(ini_keys()) in err
    assert "Traceback" not in err
    assert "OPTIONS" not in result.stdout.str()  # stopped before any test ran


def test_unknown_keys_without_the_prefix_are_left_to_pytest(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_show=SHOW)
    inner.makeini("[pytest]\ngradcheck_seed = 3\nsomething_else = 1\n")
    result = inner.runpytest()
    assert result.ret == 0
    assert "Unknown config option: something_else" in result.stdout.str()


def test_an_unknown_key_given_with_dash_o_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_show=SHOW)
    result = inner.runpytest("-o", "gradcheck_samples=3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown ini key(s) 'gradcheck_samples'" in result.stderr.str()
