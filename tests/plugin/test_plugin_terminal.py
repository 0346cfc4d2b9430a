"""The terminal: the "gradient checks" section, its colours and modes, the Hypothesis
collapse, the header line, and the failure message of a failing check."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from gc_plugin_util import section

from pytest_gradcheck import BlockResult, Result, Tier
from pytest_gradcheck._text import hints
from pytest_gradcheck._tiers import relative_error

SUITE = """
import pytest
from pytest_gradcheck import gradcheck
from gc_helpers import X, square, square_grad, square_off, square_wrong, terms, terms_grad

def test_happy():
    gradcheck(square, X, grad=square_grad)

@pytest.mark.gradcheck(tolerance="uncomfortable")
def test_uncomfortable():
    gradcheck(square, X, grad=square_off)

def test_wrong():
    gradcheck(square, X, grad=square_wrong, raise_on_fail=False)

def test_terms():
    gradcheck(terms, X, grad=terms_grad)

def test_two_checks(gradcheck):
    gradcheck(square, X, grad=square_grad)
    gradcheck(lambda d: square(d["w"]), {"w": X}, grad=lambda d: ({"w": 2 * d["w"]},))
"""


def _rows(output: str) -> dict[str, str]:
    """Each check's row, a test id on a line of its own and the notes below the
    columns joined to it."""
    rows: dict[str, str] = {}
    name = ""
    for line in section(output)[1:-1]:
        if "::" in line and not line.startswith(" "):
            name = line.split("::")[1].split()[0]
            if "#" in line:
                name += line.split("::")[1].split()[1]
            rows[name] = line
        elif name and line.startswith(" "):
            rows[name] += " " + line.strip() if rows[name].strip() else line
    return rows


def test_summary_section_one_row_per_check(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_s=SUITE)
    result = inner.runpytest()
    result.assert_outcomes(passed=5)
    lines = section(result.stdout.str())
    assert lines[0].split() == ["test", "blocks", "coords", "kinks", "max", "rel", "err", "tier"]
    rows = _rows(result.stdout.str())
    assert set(rows) == {"test_happy", "test_uncomfortable", "test_wrong", "test_terms",
                         "test_two_checks#1", "test_two_checks#2"}  # fmt: skip
    # test id, blocks, coordinates, kinks crossed, worst relative error, tier
    cells = rows["test_happy"].split()
    assert cells[0] == "test_s.py::test_happy"
    assert cells[1:4] == ["1", "3", "0"]
    assert float(cells[4]) < 1e-7 and cells[5] == "happy"
    assert rows["test_uncomfortable"].split()[5] == "uncomfortable"
    assert rows["test_wrong"].split()[5:7] == ["wrong", "FAILED"]
    assert "terms: data=" in rows["test_terms"] and "reg=" in rows["test_terms"]
    assert lines[-1].startswith("6 check(s) in 5 test(s): 4 happy, 1 uncomfortable, 1 wrong")


def test_blocks_mode_adds_one_line_per_block(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_s=SUITE)
    out = inner.runpytest("--gradcheck-report=blocks").stdout.str()
    lines = section(out)
    i = next(n for n, line in enumerate(lines) if "::test_happy" in line)
    # name, shape, coordinates checked, kinks crossed, worst relative error, tier
    assert lines[i + 1].split()[:4] == ["args[0]", "(3,)", "3", "0"]
    assert lines[i + 1].split()[-1] == "happy"
    j = next(n for n, line in enumerate(lines) if "::test_terms" in line)
    assert lines[j + 1].startswith("    terms: data=")  # below the columns, at 80
    block_lines = [line.split()[0] for line in lines[j + 2 : j + 5]]
    assert block_lines == ["args[0]", "data:", "reg:"]
    k = next(n for n, line in enumerate(lines) if "::test_two_checks #2" in line)
    assert lines[k + 2].split()[0] == "args[0]['w']"  # below the row's cells


def test_report_off_hides_the_section_and_ini_key(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_s=SUITE)
    out = inner.runpytest("--gradcheck-report=off").stdout.str()
    assert "gradient checks" not in out
    inner.makeini("[pytest]\ngradcheck_report = off\n")
    assert "gradient checks" not in inner.runpytest().stdout.str()
    assert "gradient checks" in inner.runpytest("--gradcheck-report=summary").stdout.str()


def test_colours_per_tier_and_none_without_a_terminal(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_s=SUITE)
    coloured = inner.runpytest("--color=yes").stdout.str()
    text = "\n".join(section(coloured))
    assert "\x1b[32mhappy" in text  # green
    assert "\x1b[33muncomfortable" in text  # yellow
    assert re.search(r"\x1b\[31m(\x1b\[1m)?wrong", text)  # red (bold)
    blocks = "\n".join(
        section(inner.runpytest("--color=yes", "--gradcheck-report=blocks").stdout.str())
    )
    assert "\x1b[32mhappy" in blocks
    for args in (["--color=no"], []):  # the inline run's output is not a terminal
        plain = inner.runpytest(*args).stdout.str()
        assert "\x1b[" not in plain
        assert "happy" in "\n".join(section(plain))


def test_ok_tier_is_cyan(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_ok="""
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_scaled

        def test_ok():
            gradcheck(square, X, grad=square_scaled(1 + 1e-6), tolerance="ok")
        """
    )
    out = inner.runpytest("--color=yes").stdout.str()
    assert "\x1b[36mok" in "\n".join(section(out))


def test_hypothesis_examples_collapse_into_one_row(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_h="""
        import numpy as np
        from hypothesis import given, settings, strategies as st
        from pytest_gradcheck import gradcheck
        from gc_helpers import square, square_grad, square_off

        @settings(max_examples=12, derandomize=True, database=None, deadline=None)
        @given(st.floats(0.5, 2.0))
        def test_hyp(v):
            x = np.array([v, 1.0])
            gradcheck(square, x, grad=square_grad)
            gradcheck(square, x, grad=square_off, tolerance="uncomfortable")

        def test_plain(gradcheck):
            gradcheck(square, np.array([1.0, 2.0]), grad=square_grad)
        """
    )
    result = inner.runpytest("--gradcheck-report=blocks")
    result.assert_outcomes(passed=2)
    lines = section(result.stdout.str())
    # the example count below the cells (it does not fit beside them at 80 columns)
    heads = [i for i, line in enumerate(lines) if "::test_hyp" in line]
    assert len(heads) == 2  # one row per check of the example, not one per example
    hyp = [" ".join(lines[i : i + 2]) for i in heads]
    for line in hyp:
        m = re.search(r"\((\d+) examples, worst shown\)", line)
        assert m and int(m.group(1)) >= 12
    assert hyp[0].split()[1] == "#1" and hyp[0].split()[6] == "happy"
    assert hyp[1].split()[1] == "#2" and "uncomfortable" in hyp[1]
    # the collapsed row sums the coordinates of its examples
    assert int(hyp[0].split()[3]) == 2 * int(re.search(r"\((\d+) examples", hyp[0]).group(1))
    assert lines[heads[0] + 2].split()[:2] == ["args[0]", "(2,)"]  # the worst example's blocks
    assert sum("::test_plain" in line for line in lines) == 1


def test_header_line_shows_version_and_defaults(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_x():\n    pass\n")
    inner.makeini("[pytest]\ngradcheck_seed = 9\n")
    out = inner.runpytest("--gradcheck-eps=auto", "--gradcheck-fail-tier=ok").stdout.str()
    (line,) = [line for line in out.splitlines() if line.startswith("gradcheck: ")]
    from pytest_gradcheck import __version__

    assert f"pytest-gradcheck {__version__}" in line
    for part in ("eps=auto", "samples_per_block=10", "seed=9", "kinks=track",
                 "tolerance=auto", "mode=both", "report=summary", "fail-tier=ok"):  # fmt: skip
        assert part in line


# -- failure messages ------------------------------------------------------------------


def test_failure_message_shows_worst_coordinates_and_hides_our_frames(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        test_f="""
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_off

        def test_fails():
            gradcheck(square, X, grad=square_off)
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "GradcheckError: gradcheck FAILED: tier uncomfortable" in out
    assert "block 'args[0]' (shape (3,), float64): tier uncomfortable" in out
    assert re.search(r"index\s+analytic\s+numeric\s+rel error\s+tier\s+h\s+kink", out)
    # raw analytic and numeric values, the step and the kink flag of the worst coordinates
    row = next(line for line in out.splitlines() if line.lstrip("E ").startswith("(2,)"))
    cells = row.lstrip("E ").split()
    assert float(cells[1]) == pytest.approx(6.06, rel=1e-12)
    assert float(cells[2]) == pytest.approx(6.0, rel=1e-8)
    assert cells[4:] == ["uncomfortable", "1.0e-05", "no"]
    assert "hint: in block 'args[0]' analytic / numeric = 1.01" in out
    assert sum(line.startswith("E       hint:") for line in out.splitlines()) == 1
    # the traceback points at the test's line, none of our modules
    assert "test_f.py:5: GradcheckError" in out
    for internal in ("_api.py", "_engine.py", "backends", "plugin.py"):
        assert internal not in out


def test_bad_input_error_hides_our_frames_but_keeps_user_code(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_e="""
        import numpy as np
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square

        def bad_shape(x):
            return (x[:2],)

        def broken(x):
            raise RuntimeError("bug in user code")

        def test_shape():
            gradcheck(square, X, grad=bad_shape)

        def test_user_error():
            gradcheck(broken, X, grad=bad_shape)
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "ValueError: gradcheck: the analytic gradient of block 'args[0]' has shape" in out
    assert 'raise RuntimeError("bug in user code")' in out  # the user's frame is shown
    for internal in ("_api.py", "_engine.py", "backends", "plugin.py"):
        assert internal not in out
    full = inner.runpytest("--full-trace").stdout.str()
    assert "_engine.py" in full


def test_float32_and_tiny_hints_in_the_message(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_hints="""
        import numpy as np
        from pytest_gradcheck import gradcheck

        def f32(x):
            return np.sum(np.asarray(x, dtype=np.float32) ** 3).astype(np.float64)

        def f32_grad(x):
            return (3 * x ** 2,)

        def test_float32():
            x = np.array([1.1, -2.3, 3.7], dtype=np.float32)
            gradcheck(f32, x, grad=f32_grad)

        def tiny(x):
            return 1e-13 * np.sum(x ** 2)

        def test_tiny():
            gradcheck(tiny, np.array([1.0, 2.0]), grad=lambda x: (2.4e-13 * x,))
        """
    )
    out = inner.runpytest().stdout.str()
    assert "hint: block(s) 'args[0]' are low precision" in out
    assert "hint: the gradients in block(s) 'args[0]' are tiny" in out


def _block(name="w", analytic=(2.0, 4.0), numeric=(1.0, 2.0), dtype="float64", kinks=None):
    a, n = np.array(analytic, float), np.array(numeric, float)
    rel = np.array([relative_error(x, y) for x, y in zip(a, n, strict=True)])
    k = np.zeros(len(a), bool) if kinks is None else np.array(kinks)
    tier = max(Tier.of(float(r)) for r in rel[~k]) if (~k).any() else Tier.HAPPY
    return BlockResult(
        name=name, shape=(len(a),), dtype=dtype, indices=tuple((i,) for i in range(len(a))),
        analytic=a, numeric=n, rel_error=rel, kink_crossed=k, step=np.full(len(a), 1e-5),
        within_noise=np.zeros(len(a), bool), tier=tier, passed=tier <= Tier.HAPPY,
    )  # fmt: skip


def _result(*blocks, warnings=(), terms=None, **kw):
    return Result(
        passed=all(b.passed for b in blocks), tier=max(b.tier for b in blocks),
        max_rel_error=max(b.max_rel_error for b in blocks), tolerance=Tier.HAPPY,
        blocks=tuple(blocks), terms=terms or {}, warnings=tuple(warnings),
        kinks_crossed=sum(b.kinks_crossed for b in blocks), **kw,
    )  # fmt: skip


def test_hints_name_each_known_pitfall() -> None:
    assert hints(_result(_block(analytic=(1.0, 1.0), numeric=(1.0, 1.0)))) == []
    (factor,) = hints(_result(_block()))
    assert "analytic / numeric = 2" in factor
    (sign,) = hints(_result(_block(analytic=(-1.0, 3.0), numeric=(1.0, -3.0))))
    assert "sign is flipped" in sign
    lowp = hints(_result(_block(analytic=(1.0, 2.0), numeric=(1.1, 2.5), dtype="float32")))
    assert len(lowp) == 1 and "low precision" in lowp[0] and "float64" in lowp[0]
    # torch and JAX cast float32 inputs and report a cast inside f: an input's dtype
    # alone explains nothing there (the check ran in float64)
    f32 = _block(analytic=(1.0, 2.0), numeric=(1.1, 2.5), dtype="float32")
    assert hints(_result(f32, framework="torch")) == [] != hints(_result(f32))
    (inside,) = hints(
        _result(
            f32,
            framework="torch",
            warnings=["gradcheck: f computes in lower precision inside (aten.mm -> float32)"],
        )
    )
    assert "f computes in lower precision inside" in inside and "autocast" in inside
    (jax_inside,) = hints(
        _result(
            _block(analytic=(1.0, 2.0), numeric=(1.1, 2.5)),
            framework="jax",
            warnings=["f returns float32 ...; the loss is computed in reduced precision"],
        )
    )
    assert jax_inside == inside
    (written,) = hints(
        _result(
            _block(analytic=(1.0, 1.0), numeric=(0.3, 0.5)),
            framework="torch",
            warnings=["gradcheck: f writes into 'weight' in place; the check put its values back"],
        )
    )
    assert "f writes into 'weight' in place, outside autograd" in written
    assert "max_norm" in written
    tiny = hints(_result(_block(analytic=(1e-12, 3e-12), numeric=(2e-12, 1e-12))))
    assert len(tiny) == 1 and "tiny" in tiny[0] and "scale='auto'" in tiny[0]
    kinks = _block(analytic=(1.0, 2.0, 5.0), numeric=(1.5, 2.0, 3.0), kinks=[False, False, True])
    (kink,) = hints(_result(kinks))
    assert "1 difference(s) crossed a kink" in kink
    off = hints(_result(_block(analytic=(1.0, 2.0), numeric=(1.5, 2.9)), kinks_present=True,
                        options={"kinks": "off"}))  # fmt: skip
    assert len(off) == 1 and "kinks='track'" in off[0]
    dom = hints(
        _result(
            _block("W1", analytic=(1.0, 2.0), numeric=(1.5, 2.9)),
            warnings=["in block 'W1' the gradient of term 'reg' dominates that of 'data'"],
        )
    )
    assert dom == [
        "in block(s) 'W1' one term's gradient dominates another's (see the warning), so the "
        "total's relative error is mostly the large term's: each term is checked on its own, "
        "and its table above says which term's gradient is wrong"
    ]


def test_hints_read_block_names_written_in_double_quotes() -> None:
    # a dict entry's block, args[0]['w'], is written "args[0]['w']" by the warnings
    # (!r): the tiny-gradient and dominance hints must still find it
    name = "args[0]['w']"
    bad = _block(name, analytic=(1.0, 2.0), numeric=(1.5, 2.9))
    tiny = hints(_result(bad, warnings=[f"block {name!r} has tiny gradients (largest ...)"]))
    assert any("are tiny" in h and repr(name) in h for h in tiny)
    warning = f"in block {name!r} the gradient of term 'reg' dominates that of 'data' (9x)"
    dom = hints(_result(bad, warnings=[warning]))
    assert any("one term's gradient dominates" in h and repr(name) in h for h in dom)


def test_dominance_hint_only_where_the_dominated_term_fails() -> None:
    # 'data' dominates 'reg' in W1; where 'reg' passes there, the error is data's own,
    # shown by the total's table as it is: no hint that the total hides it
    warning = "in block 'W1' the gradient of term 'data' dominates that of 'reg' (140x): ..."
    bad = _block("W1", analytic=(1.0, 2.0), numeric=(1.5, 2.9))
    good = _block("W1", analytic=(1.0, 2.0), numeric=(1.0, 2.0))
    passing_reg = _result(
        bad, warnings=[warning], terms={"data": _result(bad), "reg": _result(good)}
    )
    assert not any("dominates" in h for h in hints(passing_reg))
    failing_reg = _result(
        bad, warnings=[warning], terms={"data": _result(good), "reg": _result(bad)}
    )
    assert any("dominates" in h for h in hints(failing_reg))


def test_zero_hint_where_the_analytic_gradient_is_exactly_zero_at_every_failure() -> None:
    # a slice of the gradient left unwritten: analytic exactly 0 where the numeric is not
    unwritten = _block("W", analytic=(0.0, 0.0, 3.0), numeric=(1.5, -2.0, 3.0))
    zero = [h for h in hints(_result(unwritten)) if "exactly 0" in h]
    assert len(zero) == 1 and "block 'W'" in zero[0] and "(2 of them)" in zero[0]
    # a failure with a non-zero analytic value is not that, nor one across a kink
    assert not any("exactly 0" in h for h in hints(_result(_block(analytic=(0.0, 1.0)))))
    # (a derivative wrong where f is flat, one-sided at a kink, has its own hint)
    kinked = dataclasses.replace(
        _block("W", analytic=(0.0, 3.0), numeric=(1.5, 3.0), kinks=[True, False]),
        one_sided=np.array([True, False]), tier=Tier.WRONG, passed=False,
    )  # fmt: skip
    kinked_hints = hints(_result(kinked))
    assert any("one-sidedly" in h for h in kinked_hints)
    assert not any("exactly 0" in h for h in kinked_hints)


def test_hints_are_about_the_blocks_that_failed() -> None:
    # warnings about a passing block (its tiny gradients, a dominating term there) and
    # kinks crossed in it explain nothing about the block that fails
    bad = _block("W2", analytic=(1.0, 2.0), numeric=(1.5, 2.9))
    good = _block("b1", analytic=(1e-17, 2.0), numeric=(1e-17, 2.0), kinks=[True, False])
    result = _result(
        bad,
        good,
        warnings=[
            "block 'b1' has tiny gradients (largest |g| = 8.33e-17, below ~1e-10)",
            "in block 'b1' the gradient of term 'reg' dominates that of 'data' (1e+03x)",
        ],
    )
    assert hints(result) == []
    named = _result(bad, warnings=["block 'W2' has tiny gradients (largest |g| = 1e-11)"])
    assert hints(named) == [
        "the gradients in block(s) 'W2' are tiny (<= 1e-10), where round-off dominates the "
        "relative error: scale the loss up (scale='auto') or check with larger inputs"
    ]


def test_the_constant_factor_hint_needs_the_same_finite_ratio_everywhere() -> None:
    # numeric 0 where analytic is not (a ratio of inf), or a passing coordinate (ratio
    # 1) beside a factor 0.5: no constant factor
    zeros = _block(analytic=(0.5, 1.0, 3.0), numeric=(1.0, 2.0, 0.0))
    assert hints(_result(zeros)) == []
    mixed = _block(analytic=(0.5, 1.0, 3.0), numeric=(1.0, 2.0, 3.0))
    assert hints(_result(mixed)) == []
    # both ~0 fits any factor
    (factor,) = hints(_result(_block(analytic=(0.5, 1.0, 0.0), numeric=(1.0, 2.0, 0.0))))
    assert factor.startswith("in block 'w' analytic / numeric = 0.5 at every checked")


def test_the_constant_factor_hint_holds_for_a_loss_scaled_tiny() -> None:
    # a loss scaled by 1e-12 (every value under the absolute 1e-10) keeps its factor:
    # ~0 is relative to the block's largest value (audit s10)
    tiny = _block(analytic=(1.1e-12, 2.2e-13, 0.0), numeric=(1e-12, 2e-13, 0.0))
    factor = [h for h in hints(_result(tiny)) if "analytic / numeric" in h]
    assert len(factor) == 1 and "analytic / numeric = 1.1 at every checked" in factor[0]
    # ... and a value ~0 next to them, against a non-zero one, is still no factor
    mixed = _block(analytic=(1.1e-12, 2.2e-13, 3e-13), numeric=(1e-12, 2e-13, 0.0))
    assert not [h for h in hints(_result(mixed)) if "analytic / numeric" in h]


def test_a_square_block_read_on_one_triangle_gets_the_symmetrize_hint() -> None:
    a = np.array([[1.0, 0.4], [0.4, 2.0]])  # symmetric analytic gradient
    n = np.array([[1.0, 0.0], [0.8, 2.0]])  # f reads the lower triangle only
    rel = np.abs(a - n).ravel() / np.maximum(np.abs(a), np.abs(n)).ravel()
    block = BlockResult(
        name="S", shape=(2, 2), dtype="float64",
        indices=((0, 0), (0, 1), (1, 0), (1, 1)), analytic=a.ravel(), numeric=n.ravel(),
        rel_error=rel, kink_crossed=np.zeros(4, bool), step=np.full(4, 1e-5),
        within_noise=np.zeros(4, bool), tier=Tier.WRONG, passed=False,
    )  # fmt: skip
    (hint,) = hints(_result(block))
    assert hint.startswith(
        "in block 'S' the numeric gradient is zero on the upper triangle while the "
        "analytic one is not, and the lower triangle passes or is off by a factor 2: f "
        "reads only the lower triangle of a matrix it treats as symmetric"
    )


WIDE = """
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from pytest_gradcheck import gradcheck
from gc_helpers import X, square, square_grad, square_off, square_scaled

def long_terms(w):
    return {"data_cross_entropy_of_the_batch": np.sum(w ** 2),
            "l2_regularisation_of_every_weight": 0.5 * np.sum(w ** 4), "kl": np.sum(w)}

def long_terms_grad(w):
    return {"data_cross_entropy_of_the_batch": (2 * w,),
            "l2_regularisation_of_every_weight": (2 * w ** 3,), "kl": (np.ones_like(w),)}

NAME = "a_block_with_a_rather_long_name"

def test_terms_with_long_names():
    gradcheck(lambda d: long_terms(d[NAME]), {NAME: X},
              grad=lambda d: {k: ({NAME: v[0]},) for k, v in long_terms_grad(d[NAME]).items()})

@settings(max_examples=5, derandomize=True, database=None, deadline=None)
@given(st.floats(0.5, 2.0))
def test_hyp(v):
    gradcheck(square, np.array([v, 1.0]), grad=square_grad)

def test_uncomfortable():
    gradcheck(square, X, grad=square_off, raise_on_fail=False)

def test_ok():
    gradcheck(square, X, grad=square_scaled(1 + 1e-6), raise_on_fail=False)

def test_warned():
    gradcheck(lambda x, y: np.sum(x**2), X, X.copy(), grad=lambda x, y: (2 * x, 0 * y))
"""


@pytest.mark.parametrize("detail", ["summary", "blocks"])
def test_the_section_fits_80_columns(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, detail: str
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    inner.makepyfile(test_wide=WIDE)
    result = inner.runpytest(f"--gradcheck-report={detail}", "--gradcheck-h-sweep")
    result.assert_outcomes(passed=5)
    lines = section(result.stdout.str())
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)
    text = "\n".join(lines)
    assert "(5 examples, worst shown)" in text
    assert "data_cross_entropy_of_the_batch=happy" in text and "kl=happy" in text
    # FAILED in one column, whatever the tier before it; the warnings mark in the next
    failed = [line for line in lines if line.endswith("FAILED")]
    assert len(failed) == 2 and len({line.index("FAILED") for line in failed}) == 1
    (warned,) = [line for line in lines if line.endswith("!")]
    assert warned.index("!") == failed[0].index("FAILED") + len("FAILED  ")
    if detail == "blocks":  # a block's numbers under the header's columns
        header = lines[0]
        ends = {name: header.index(name) + len(name) for name in ("coords", "kinks", "err")}
        blocks = [line for line in lines if re.match(r"    \S.* \(\d+(, \d+)*,?\)\s+\d", line)]
        assert len(blocks) >= 6
        for line in blocks:
            cells = re.search(r"\s(\d+)\s+(\d+)\s+(\S+e[-+]\d\d)\s+\w+$", line)
            assert cells, line
            assert cells.end(1) == ends["coords"] and cells.end(2) == ends["kinks"], line
            assert cells.end(3) == ends["err"], line


def test_a_long_count_line_continues_between_its_counts() -> None:
    from pytest_gradcheck._terminal import _count_lines

    summary = {
        "checks": 249,
        "tests": 50,
        "tiers": {"happy": 131, "ok": 62, "uncomfortable": 27, "wrong": 25},
        "errors": 4,
        "warnings_raised": 3,
    }
    for width in (60, 80):
        lines = [line[0][0] for line in _count_lines(summary, width)]
        assert len(lines) > 1 and all(len(line) <= width for line in lines)
        assert all(line.startswith("    ") for line in lines[1:])
        # broken only between counts, never inside one
        words = " ".join(line.strip() for line in lines)
        assert words == (
            "249 check(s) in 50 test(s): 131 happy, 62 ok, 27 uncomfortable, 25 wrong, "
            "4 raised; 3 with a warning raised as an error"
        )
    (line,) = _count_lines({**summary, "warnings_raised": 0}, 200)
    assert line[0][0].endswith("25 wrong, 4 raised")
