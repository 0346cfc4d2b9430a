"""Only decisions that depend on the checked blocks are kinks (the torch tracker's taint).

A comparison of the data, a normalisation by the data's max, a mask of the labels give
the same decision at every point of a check: recording them would relax the tolerance
to *ok* (kinks present) and keep every evaluation under the dispatch mode. Decisions on
anything computed from a block, through views and in-place writes too, must still be
recorded, or a kink crossing would be judged as an error. Real torch, small shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_gradcheck import Tier, gradcheck  # noqa: E402
from pytest_gradcheck.backends._base import Settings  # noqa: E402
from pytest_gradcheck.backends.torch import TorchBackend  # noqa: E402

F64 = torch.float64


def _data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, dtype=F64, generator=g)
    labels = torch.randint(0, 3, (6,), generator=g)
    W = torch.randn(4, 3, dtype=F64, generator=g)
    return x, labels, W


def _center_decisions(f, *args, batch=True):
    backend = TorchBackend(f, args, None, None, Settings(seed=0, batch=batch))
    try:
        gradient = backend.gradient(True)
        return gradient.center.decisions, gradient.center.signature, backend.fast_path
    finally:
        backend.close()


def test_decisions_on_the_data_alone_are_not_kinks():
    x, labels, W = _data()

    def f(W):
        xs = x / x.abs().max()  # abs and max of the data
        h = torch.where(x > 0, xs, 0.1 * xs)  # a comparison of the data
        keep = (labels != 2).to(F64)  # a mask of the labels
        return (torch.tanh(h @ W).sum(1) * keep).sum()

    decisions, _, fast = _center_decisions(f, W)
    assert decisions == 0 and fast  # no decision: evaluations skip the dispatch mode
    result = gradcheck(f, W)
    assert result.passed and not result.kinks_present
    assert result.tolerance == Tier.HAPPY  # not relaxed to ok


def test_a_real_kink_beside_data_decisions_is_recorded_alone():
    x, _, W = _data()

    def with_data(W):
        return torch.relu(x @ W / x.abs().max()).sum()

    scale = float(x.abs().max())

    def without(W):
        return torch.relu(x @ W / scale).sum()

    d1, s1, fast1 = _center_decisions(with_data, W)
    d2, s2, fast2 = _center_decisions(without, W)
    assert d1 == d2 > 0 and s1 == s2  # the relu's decision only, in both
    assert not fast1 and not fast2
    batched = gradcheck(with_data, W)
    unbatched = gradcheck(with_data, W, batch=False)
    assert batched.passed and batched.kinks_present and batched.tolerance == Tier.OK
    assert (batched.tier, batched.evaluations, batched.kinks_crossed) == (
        unbatched.tier,
        unbatched.evaluations,
        unbatched.kinks_crossed,
    )
    for a, b in zip(batched.blocks, unbatched.blocks, strict=True):
        np.testing.assert_allclose(a.numeric, b.numeric, rtol=1e-9)


def test_a_decision_on_a_view_written_from_a_block_is_recorded():
    """The view is taken before the block's values are written into its storage: the
    storage carries the dependence, so relu on the view is a kink, and a step that
    crosses it is retried rather than condemned."""
    W = torch.tensor([0.3, -2e-6, 0.5, 3e-6, -0.4], dtype=F64)

    def f(W):
        buffer = torch.zeros(6, dtype=F64)
        view = buffer[1:]  # before the write
        buffer[1:].copy_(W)  # the block's values, written in place
        return torch.relu(view).sum() + 0.5 * (W * W).sum()

    decisions, _, fast = _center_decisions(f, W)
    assert decisions > 0 and not fast
    result = gradcheck(f, W, samples_per_block=None)
    assert result.passed and result.kinks_present  # the crossings were seen and retried
    untracked = gradcheck(f, W, samples_per_block=None, kinks="off", raise_on_fail=False)
    assert not untracked.passed  # what a missed decision would have done


def test_a_decision_inside_a_custom_function_reading_a_block_is_recorded():
    class Clip(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            ctx.save_for_backward(w)
            return w.clamp(min=0.0)

        @staticmethod
        def backward(ctx, g):
            (w,) = ctx.saved_tensors
            return g * (w > 0).to(g.dtype)

    W = torch.tensor([0.2, -1e-6, 0.7, 2e-6], dtype=F64)
    decisions, _, _ = _center_decisions(lambda W: Clip.apply(W).sum(), W)
    assert decisions > 0
    result = gradcheck(lambda W: Clip.apply(W).sum(), W, samples_per_block=None)
    assert result.passed and result.kinks_present
    untracked = gradcheck(
        lambda W: Clip.apply(W).sum(), W, samples_per_block=None, kinks="off", raise_on_fail=False
    )
    assert not untracked.passed


# ------------------------------------------------------ Dynamo and Inductor stay unloaded

_FRESH_PROCESS = r"""
import sys, warnings
import torch
from pytest_gradcheck import gradcheck
from pytest_gradcheck.backends import _torch_tracker as tt
import pytest_gradcheck.backends.torch as backend

made = []
tracker = tt.tracker
def spy(*args, **kwargs):
    mode = tracker(*args, **kwargs)
    made.append(type(mode).__name__)
    return mode
backend.tracker = spy

seen = {}
def f(x):
    seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
    return (torch.relu(x) * x - torch.tanh(x)).sum()

x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
warnings.simplefilter("error")
plain = gradcheck(f, x)
print(plain.passed, plain.kinks_present, seen["deterministic"],
      torch.are_deterministic_algorithms_enabled(), "torch._dynamo" in sys.modules,
      "torch._inductor.config" in sys.modules, sorted(set(made)))
made.clear()
g = lambda z: torch.relu(z) * z - torch.tanh(z)
inside = gradcheck(lambda x: torch.compile(g, backend="eager")(x).sum(), x)  # Dynamo loads in f
print(inside.passed, inside.kinks_present, made[0])
made.clear()
compiled = torch.compile(g, backend="eager")
outside = gradcheck(lambda x: compiled(x).sum(), x)
print(outside.passed, outside.kinks_present, sorted(set(made)))
"""


def test_a_check_loads_neither_dynamo_nor_inductor_and_compiled_code_still_checks(tmp_path):
    """A process's first check used to import Inductor and Dynamo (about a second):
    `use_deterministic_algorithms` sets Inductor's flag, and TorchDispatchMode's guard
    against Dynamo imports Dynamo. Now neither is loaded by a check (determinism is
    still on inside f, off after), the tracker's handler is marked for Dynamo to skip
    instead, and a torch.compile region inside f, compiled there (Dynamo loading in
    the middle of the check) or before, is checked with its kinks recorded and no
    warning (warnings are errors in the script)."""
    import subprocess
    import sys

    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_PROCESS)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "True True True False False False ['_UnguardedTracker']",
        "True True _UnguardedTracker",
        "True True ['_UnguardedTracker']",
    ]
