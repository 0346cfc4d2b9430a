"""Which coordinates and which direction each block is checked at.

Every block gets its own sample, so a bias of 10 entries beside a weight of 1e6 is
never skipped (the seed's "check a few dimensions of every parameter"). The choice is
a pure function of the seed, the block's name and the analytic gradient, so a failing
check is reproduced exactly by running it again.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np


def _rng(seed: int, name: str, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), purpose])


def sample_coordinates(
    name: str,
    size: int,
    gradients: Sequence[np.ndarray],
    samples: int | None,
    seed: int,
) -> np.ndarray:
    """Sorted flat indices to check in one block.

    A block no larger than `samples` (or `samples=None`) is checked whole. Otherwise
    the sample holds the coordinate of largest analytic magnitude of each gradient in
    `gradients` (the total first, then each named term) and is filled up to `samples`
    with coordinates drawn uniformly without replacement.
    """
    if samples is None or size <= samples:
        return np.arange(size, dtype=np.int64)
    chosen: list[int] = []
    for g in gradients:
        top = int(np.argmax(np.abs(g)))
        if top not in chosen:
            chosen.append(top)
    rest = samples - len(chosen)
    if rest > 0:
        # positions in the pool of the coordinates not chosen yet, drawn as
        # ``choice(pool, ...)`` draws them, mapped to coordinates without building the
        # pool (O(samples), not O(size))
        pool = size - len(chosen)
        picked = _rng(seed, name, 1).choice(pool, size=min(rest, pool), replace=False)
        taken = sorted(chosen)
        for position in picked.tolist():
            index = position
            for c in taken:  # the position-th coordinate that is not taken
                if c <= index:
                    index += 1
                else:
                    break
            chosen.append(index)
    return np.array(sorted(chosen), dtype=np.int64)


def direction(name: str, size: int, seed: int) -> np.ndarray:
    """A seeded random unit vector over the block's coordinates.

    Each entry has a random sign and a magnitude drawn uniformly from [0.5, 1) before
    normalising: every coordinate weighs at least half as much as any other in v · g,
    so an error in any single entry moves v · g by a known share (a Gaussian v gives
    some entries a weight near zero, where an error hides), and the distribution is
    continuous, so v · g cannot cancel exactly (random signs of equal magnitude would,
    for a gradient with equal entries). It also costs a third of a Gaussian draw.
    """
    v = _rng(seed, name, 2).random(size)
    # u < 0.5 becomes u - 1 in [-1, -0.5), u >= 0.5 stays: a sign and a magnitude in
    # [0.5, 1) from one uniform draw (both exact in float64)
    np.subtract(v, v < 0.5, out=v)  # (a masked `where=` subtraction is 20x slower)
    norm = math.sqrt(float(v @ v))
    if norm > 0:
        v *= 1.0 / norm
    return v
