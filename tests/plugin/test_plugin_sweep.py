"""--gradcheck-h-sweep: the step-size sweep table in the terminal section."""

import pytest

TEST = """
import numpy as np

def test_exp(gradcheck):
    x = np.array([0.5, 1.0, 2.0])
    gradcheck(lambda x: np.sum(np.exp(x)), x, grad=lambda x: (np.exp(x),))
"""


def test_h_sweep_flag_prints_a_v_shaped_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sweep=TEST)
    result = pytester.runpytest("--gradcheck-h-sweep", "test_sweep.py", "-p", "no:randomly")
    assert result.ret == 0
    lines = result.outlines
    # the ten steps come in as many tables as 80 columns need, each row under its head
    heads = [i for i, line in enumerate(lines) if line.strip().startswith("h-sweep")]
    assert len(heads) == 2 and all(len(lines[i + 1]) <= 80 for i in heads)
    steps = [h for i in heads for h in lines[i].split()[1:]]
    assert steps[0] == "1e-01" and steps[-1] == "1e-10" and len(steps) == 10
    errors = [float(v) for i in heads for v in lines[i + 1].split()[1:]]
    best = errors.index(min(errors))
    assert 0 < best < 9  # truncation error to the left, round-off to the right
    assert errors[0] > 100 * errors[best] and errors[-1] > 10 * errors[best]


def test_without_the_flag_there_is_no_sweep(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sweep=TEST)
    result = pytester.runpytest("test_sweep.py")
    assert result.ret == 0
    assert not any(line.strip().startswith("h-sweep") for line in result.outlines)
