"""Segment maxima in PyTorch: ``scatter_reduce``/``index_reduce`` with amax or amin.

PyG's max aggregation and its segment softmax scatter by max. Which source entry wins
a segment is a decision: near a tie, a centered difference straddles the kink, and
without tracking a correct gradient failed. A segment softmax subtracts the maxima
again, which the shift test recognises, so it is held to HAPPY.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from pytest_gradcheck import Tier, gradcheck  # noqa: E402

SEGMENTS = torch.tensor([0, 0, 1, 1, 1, 2, 2])


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64, generator=g)
    w = torch.randn(7, 3, dtype=torch.float64, generator=g)
    return x, w


def segment_max(src, how):
    """The per-segment max of src's rows, by one of torch's scattering ops."""
    base = torch.zeros(3, src.shape[1], dtype=src.dtype)
    index = SEGMENTS[:, None].expand(-1, src.shape[1])
    if how == "scatter_reduce":
        return base.scatter_reduce(0, index, src, "amax", include_self=False)
    if how == "scatter_reduce_":
        return base.scatter_reduce_(0, index, src, "amax", include_self=False)
    if how == "include_self":  # the zeros compete: a max with 0 where all are negative
        return base.scatter_reduce(0, index, src, "amax", include_self=True)
    with warnings.catch_warnings():  # a beta API, which says so once per process
        warnings.simplefilter("ignore", UserWarning)
        return base.index_reduce(0, SEGMENTS, src, "amax", include_self=False)


HOWS = ["scatter_reduce", "scatter_reduce_", "include_self", "index_reduce"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("batch", [True, False], ids=["batched", "looped"])
def test_a_near_tie_in_a_segment_is_a_tracked_kink(how, batch):
    x, w = _data()
    x[0, 0], x[1, 0] = 0.7, 0.7 + 1e-9  # segment 0, column 0: two entries 1e-9 apart

    def f(x):
        return (segment_max(x, how) * w[:3]).sum()

    result = gradcheck(f, x, mode="coords", samples_per_block=None, batch=batch)
    assert result.passed
    assert result.kinks_present and result.tolerance is Tier.OK
    assert result.kinks_crossed == 2  # the two tied entries
    crossed = {result.blocks[0].indices[i] for i in result.blocks[0].kink_crossed.nonzero()[0]}
    assert crossed == {(0, 0), (1, 0)}

    with pytest.raises(AssertionError):  # untracked, the crossing fails a correct gradient
        gradcheck(f, x, mode="coords", samples_per_block=None, kinks="off", batch=batch)


@pytest.mark.parametrize("how", ["scatter_reduce", "scatter_reduce_"])
def test_a_segment_softmax_is_held_to_happy(how):
    x, w = _data()

    def f(x):
        z = x - segment_max(x, how)[SEGMENTS]
        e = z.exp()
        total = torch.zeros(3, 3, dtype=torch.float64).index_add(0, SEGMENTS, e)
        return (e / total[SEGMENTS] * w).sum()

    result = gradcheck(f, x)
    assert result.passed
    assert not result.kinks_present
    assert result.tolerance is Tier.HAPPY
