"""Gradient checks of torch layers inside Hypothesis `@given` tests (inner pytest run in a
subprocess, since it imports torch).

Custom autograd functions with planted shape-dependent bugs in their backward pass are
found and shrunk to a minimal shape; correct layers pass 100 examples; values kept a
margin away from ReLU's kink cross no kink.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")

TORCH_TESTS = '''
import torch
from hypothesis import Phase, given, settings, strategies as st

import pytest_gradcheck
from pytest_gradcheck import strategies as gst

QUICK = settings(
    deadline=None,
    database=None,
    derandomize=True,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
)
DIMS = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))


class BatchBugAffine(torch.autograd.Function):
    """x @ W + b, with a bias gradient right for a batch of one row only."""

    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return x @ W + b

    @staticmethod
    def backward(ctx, dout):
        x, W = ctx.saved_tensors
        return dout @ W.T, x.T @ dout, dout[0]  # should be dout.sum(0)


class SquareBugScaled(torch.autograd.Function):
    """x @ W / sqrt(fan_in), with a backward scaled by the fan-out: right for square W."""

    @staticmethod
    def forward(ctx, x, W):
        ctx.save_for_backward(x, W)
        return x @ W / W.shape[0] ** 0.5

    @staticmethod
    def backward(ctx, dout):
        x, W = ctx.saved_tensors
        s = 1.0 / W.shape[1] ** 0.5
        return dout @ W.T * s, x.T @ dout * s


@QUICK
@given(data=st.data(), shape=DIMS)
def test_batch_bug(gradcheck, data, shape):
    n, i, o = shape
    x = data.draw(gst.arrays("torch", (n, i)), label="x")
    W = data.draw(gst.arrays("torch", (i, o)), label="W")
    b = data.draw(gst.arrays("torch", (o,)), label="b")
    gradcheck(BatchBugAffine.apply, x, W, b)


@QUICK
@given(data=st.data(), shape=DIMS)
def test_square_bug(gradcheck, data, shape):
    n, i, o = shape
    x = data.draw(gst.arrays("torch", (n, i)), label="x")
    W = data.draw(gst.arrays("torch", (i, o)), label="W")
    gradcheck(SquareBugScaled.apply, x, W)


@settings(max_examples=100, database=None, deadline=None, derandomize=True)
@given(data=st.data(), shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
def test_correct_layer(gradcheck, data, shape):
    n, i, o = shape
    x = data.draw(gst.arrays("torch", (n, i)), label="x")
    W = data.draw(gst.arrays("torch", (i, o)), label="W")
    b = data.draw(gst.arrays("torch", (o,)), label="b")
    gradcheck(lambda x, W, b: torch.tanh(x @ W + b), x, W, b, samples_per_block=4)


@settings(max_examples=30, database=None, deadline=None, derandomize=True)
@given(data=st.data(), params=gst.mlp_params("torch", max_layers=2, max_width=3))
def test_mlp_direct_call(data, params):
    x = data.draw(gst.arrays("torch", (2, params["W1"].shape[0])), label="x")

    def mlp(x):
        h = x
        for i in range(1, len(params) // 2 + 1):
            h = torch.tanh(h @ params[f"W{i}"] + params[f"b{i}"])
        return h.sum()

    pytest_gradcheck.gradcheck(mlp, x, params=params, samples_per_block=3)


@settings(max_examples=30, database=None, deadline=None, derandomize=True)
@given(x=gst.arrays("torch", gst.shapes(max_dims=2, max_side=4), kink_margin=1e-3))
def test_relu_away_from_its_kink(gradcheck, x):
    gradcheck(lambda x: torch.relu(x) * x, x, tolerance="happy")
'''


def summary_rows(text: str) -> list[str]:
    """The check rows of the "gradient checks" section (a wrapped test id and the notes
    below the columns joined)."""
    section = re.split(r"=+ gradient checks =+", text)[1].split("\n=")[0]
    rows: list[str] = []
    for line in section.splitlines():
        first = line.split()[0] if line.strip() else ""
        if "::" in first:
            rows.append(line.strip())
        elif rows and line.startswith(" "):  # the row's cells, or what did not fit beside
            rows[-1] += " " + line.strip()
    return rows


def compact(text: str) -> str:
    return re.sub(r"\s+", "", re.sub(r"#[^\n]*", "", text))


def test_torch_layers_under_given(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=TORCH_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rA", "--gradcheck-json=checks.json"
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=3, failed=2)
    for test in ("test_correct_layer", "test_mlp_direct_call", "test_relu_away_from_its_kink"):
        assert f"PASSED test_inner.py::{test}" in out
    assert "HealthCheck" not in out

    # the failures, shrunk to the minimal shapes: two rows; a 1x2 (or 2x1) weight
    batch, square = out.split("_ test_batch_bug _")[1].split("_ test_square_bug _")
    assert "GradcheckError" in batch and "shape=(2,1,1" in compact(batch), batch
    assert "block 'args[2]' (shape (1,), float64): tier wrong" in batch
    assert "GradcheckError" in square, square
    assert re.search(r"shape=\(1,(1,2|2,1),?\)", compact(square)), square
    assert "Draw 2 (W): from_numpy(array([[" in square  # the falsifying draws are shown

    checks = json.loads((pytester.path / "checks.json").read_text())["checks"]

    def of(test: str) -> list[dict]:
        return [c for c in checks if c["nodeid"].endswith(f"::{test}")]

    assert len(of("test_correct_layer")) >= 100
    assert all(c["passed"] and c["framework"] == "torch" for c in of("test_correct_layer"))
    assert len(of("test_mlp_direct_call")) >= 30
    relu = of("test_relu_away_from_its_kink")
    assert len(relu) >= 30 and all(c["passed"] and c["kinks_crossed"] == 0 for c in relu)
    # one summary row per test, examples collapsed
    rows = summary_rows(out)
    assert len(rows) == 5, rows
    assert all(re.search(r"\(\d+ examples", row) for row in rows), rows
