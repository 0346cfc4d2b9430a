"""What the errors about option names and values say: the name meant by a typo, where a
bad value came from, and what a flag takes when its text is no number."""

from __future__ import annotations

import pytest

from pytest_gradcheck import gradcheck
from pytest_gradcheck._options import parse_text


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("sample_per_block", "samples_per_block"), ("samples", "samples_per_block"), ("esp", "eps")],
)
def test_an_unknown_call_keyword_names_the_option_it_likely_meant(typo: str, meant: str) -> None:
    import numpy as np

    with pytest.raises(TypeError, match=rf"'{typo}' \(did you mean '{meant}'\?\)"):
        gradcheck(lambda x: np.sum(x**2), np.ones(3), grad=lambda x: 2 * x, **{typo: 3})


def test_marker_typos_bad_values_and_call_arguments_are_named(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_m="""
        import pytest
        from pytest_gradcheck import gradcheck
        from gc_helpers import X, square, square_grad

        @pytest.mark.gradcheck(sample_per_block=3)
        def test_typo():
            gradcheck(square, X, grad=square_grad)

        @pytest.mark.gradcheck(eps="big")
        def test_bad_value():
            gradcheck(square, X, grad=square_grad)

        @pytest.mark.gradcheck(raise_on_fail=False)
        def test_call_argument():
            gradcheck(square, X, grad=square_grad)
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    assert "'sample_per_block' (did you mean 'samples_per_block'?)" in out
    assert (
        "the gradcheck marker of test_m.py::test_bad_value holds a bad value: eps must be "
        "a float in (0, 1) or 'auto', got 'big'"
    ) in out
    assert "'raise_on_fail' (an argument of the gradcheck(...) call only" in out


@pytest.mark.parametrize(
    ("name", "text", "takes"),
    [
        ("eps", "abc", "'auto'"),
        ("samples_per_block", "2.5", "'all'"),
        ("seed", "x", "an int in [0, 2**32)"),
        ("burn_in", "1.5", "an int >= 0"),
        ("burn_in_lr", "fast", "a positive float"),
        ("dominance", "big", "a ratio > 1"),
    ],
)
def test_text_that_is_no_number_says_what_the_option_takes(
    name: str, text: str, takes: str
) -> None:
    with pytest.raises(ValueError) as info:
        parse_text(name, text)
    message = str(info.value)
    assert message.startswith(f"gradcheck: {name} must be") and takes in message
    assert repr(text) in message and "convert" not in message and "literal" not in message


def test_a_flag_that_is_no_number_is_a_usage_error_with_the_allowed_values(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile("def test_x():\n    pass\n")
    result = inner.runpytest("--gradcheck-samples=2.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "--gradcheck-samples: gradcheck: samples_per_block must be a positive int or 'all'"
        in result.stderr.str()
    )
