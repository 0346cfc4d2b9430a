"""The fast path: evaluations without the dispatch mode when the checked point needs none."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_gradcheck import gradcheck  # noqa: E402
from pytest_gradcheck.backends import torch as backend_module  # noqa: E402


@pytest.fixture
def seen(monkeypatch):
    """The fast-path counters of every backend closed during the test."""
    records: list[tuple[int, bool, int]] = []
    close = backend_module.TorchBackend.close

    def spy(self):
        if not self._closed:
            records.append((self.fast_points, self.fast_path, self.looped_points))
        close(self)

    monkeypatch.setattr(backend_module.TorchBackend, "close", spy)
    return records


def _data(low=torch.float64):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 5, dtype=low, generator=g)
    W = torch.randn(3, 5, dtype=torch.float64, generator=g)
    b = torch.randn(3, dtype=torch.float64, generator=g)
    return X, W, b


@pytest.mark.parametrize("mode", ["directions", "both"])
def test_smooth_function_takes_the_fast_path_with_the_same_verdict(seen, mode):
    X, W, b = _data()

    def loss(W, b):
        return torch.tanh(X @ W.T + b).pow(2).sum()

    fast = gradcheck(loss, W, b, mode=mode)
    assert seen[-1][0] > 0 and seen[-1][1]
    slow = gradcheck(loss, W, b, mode=mode, kinks="track", batch=False)
    assert fast.passed and slow.passed
    assert fast.kinks_present is False
    assert fast.max_rel_error == pytest.approx(slow.max_rel_error, rel=1e-3, abs=1e-9)


def test_fast_and_tracked_losses_are_equal():
    X, W, b = _data()

    def loss(W, b):
        return torch.tanh(X @ W.T + b).pow(2).sum()

    from pytest_gradcheck.backends._base import Point, Settings

    settings = Settings()
    be = backend_module.TorchBackend(loss, (W, b), None, None, settings)
    try:
        center = be.gradient(True).center
        assert be.fast_path
        import numpy as np

        points = [
            Point(((0, np.arange(15), np.full(15, 1e-3)),)),
            Point(((1, np.array([1]), np.array([-1e-3])),)),
            Point(()),
        ]
        fast = be.evaluate(points, True)
        assert be.fast_points >= 3
        be._clean = False  # force the tracked path
        tracked = be.evaluate(points, True)
        for a, t in zip(fast, tracked, strict=True):
            assert a.loss == t.loss
            assert a.signature == t.signature == center.signature
            assert a.decisions == t.decisions == 0
    finally:
        be.close()


def test_decisions_at_the_checked_point_keep_the_mode(seen):
    X, W, b = _data()

    def loss(W, b):
        return torch.relu(X @ W.T + b).sum()

    gradcheck(loss, W, b, mode="directions")
    assert seen[-1][0] == 0 and not seen[-1][1]


def test_promotion_keeps_the_mode(seen):
    X, W, b = _data(low=torch.float32)  # captured float32 data: the mode casts it

    def loss(W, b):
        return torch.tanh(X @ W.T + b).sum()

    result = gradcheck(loss, W, b, mode="directions")
    assert result.passed
    assert seen[-1][0] == 0 and not seen[-1][1]
