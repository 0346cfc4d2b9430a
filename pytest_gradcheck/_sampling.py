"""Which coordinates and which direction each block is checked at.

Every block gets its own sample, so a bias of 10 entries beside a weight of 1e6 is
never skipped (the seed's "check a few dimensions of every parameter"). The choice is
a pure function of the seed, the block's name and the analytic gradient, so a failing
check is reproduced exactly by running it again.
"""

from __future__ import annotations

import functools
import math
import threading
import zlib
from collections.abc import Sequence

import numpy as np

#: the purposes of a block's streams
_COORDINATES, _DIRECTION, _OFF_TIES = 1, 2, 3


def _rng(seed: int, name: str, purpose: int) -> np.random.Generator:
    """Block `name`'s stream for `purpose`: where every draw of a check comes from."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), purpose])


@functools.lru_cache(maxsize=4096)
def _start(seed: int, name: str, purpose: int) -> tuple[int, int]:
    """The PCG64 ``(state, increment)`` that `_rng` starts from (a pure function, memoised)."""
    state = _rng(seed, name, purpose).bit_generator.state["state"]
    return state["state"], state["inc"]


#: one scratch generator per thread for `Streams` (its state is set before every use,
#: so nothing passes from one check to the next through it)
_SCRATCH = threading.local()


class Streams:
    """The streams of one check: `_rng`'s draws, from one generator restarted per stream.

    Seeding a new generator (hashing the seed, building it) costs more than drawing the
    direction of a block of a few hundred entries (some 200 µs when NumPy's code is
    out of the CPU caches, as it is at the start of a check), and a check draws one per
    block; a scratch generator restarted at each stream's memoised start draws the same
    numbers. The scratch generator is the thread's own (a generator is not safe across
    threads), and a stream is drawn from at once, before any other is started.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, name: str, purpose: int) -> np.random.Generator:
        state, inc = _start(self.seed, name, purpose)
        gen = getattr(_SCRATCH, "generator", None)
        if gen is None:
            gen = _SCRATCH.generator = np.random.Generator(np.random.PCG64(0))
        gen.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": inc},
            "has_uint32": 0,
            "uinteger": 0,
        }
        return gen


def _stream(seed: int, name: str, purpose: int, streams: Streams | None) -> np.random.Generator:
    return streams(name, purpose) if streams is not None else _rng(seed, name, purpose)


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
    with coordinates drawn uniformly without replacement (`_picked`).
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
        taken = sorted(chosen)
        for position in _picked(seed, name, pool, min(rest, pool)):
            index = position
            for c in taken:  # the position-th coordinate that is not taken
                if c <= index:
                    index += 1
                else:
                    break
            chosen.append(index)
    return np.array(sorted(chosen), dtype=np.int64)


@functools.lru_cache(maxsize=1024)
def _picked(seed: int, name: str, pool: int, count: int) -> tuple[int, ...]:
    """`count` positions drawn without replacement from `pool`, in the block's stream:
    a pure function of its arguments, memoised like `direction` (``choice`` took two
    thirds of a block's sampling)."""
    rng = Streams(seed)(name, _COORDINATES)
    return tuple(rng.choice(pool, size=count, replace=False).tolist())


#: the directions of blocks of at most this many entries are memoised (`_memoised`),
#: the last `_MEMOISED` of them: at most 8 MiB held
_MEMOISED_SIZE = 16384
_MEMOISED = 64


def direction(name: str, size: int, seed: int, streams: Streams | None = None) -> np.ndarray:
    """A seeded random unit vector over the block's coordinates (read-only).

    Each entry has a random sign and a magnitude drawn uniformly from [0.5, 1) before
    normalising: every coordinate weighs at least half as much as any other in v · g,
    so an error in any single entry moves v · g by a known share (a Gaussian v gives
    some entries a weight near zero, where an error hides), and the distribution is
    continuous, so v · g cannot cancel exactly (random signs of equal magnitude would,
    for a gradient with equal entries). It also costs a third of a Gaussian draw.

    A pure function of the seed, the name and the size, so a small block's is drawn
    once per process: a suite checks the same model in many tests (parametrized ones,
    Hypothesis's examples of one shape), and restarting a generator and drawing from it
    was some 4 % of a direction check of a small model.
    """
    if size <= _MEMOISED_SIZE:
        return _memoised(seed, name, size)
    return _drawn(name, size, seed, streams)


@functools.lru_cache(maxsize=_MEMOISED)
def _memoised(seed: int, name: str, size: int) -> np.ndarray:
    return _drawn(name, size, seed, Streams(seed))


def _drawn(name: str, size: int, seed: int, streams: Streams | None) -> np.ndarray:
    v = _stream(seed, name, _DIRECTION, streams).random(size)
    # u < 0.5 becomes u - 1 in [-1, -0.5), u >= 0.5 stays: a sign and a magnitude in
    # [0.5, 1) from one uniform draw (both exact in float64)
    np.subtract(v, v < 0.5, out=v)  # (a masked `where=` subtraction is 20x slower)
    norm = math.sqrt(float(v @ v))
    if norm > 0:
        v *= 1.0 / norm
    v.flags.writeable = False  # shared: see `direction`
    return v


def off_ties(name: str, size: int, seed: int, streams: Streams | None = None) -> np.ndarray:
    """The seeded move of a block off exact ties: per entry, a random sign and a size in
    [0.5, 1) (see `direction`), not normalised, so every entry moves and none by much
    more than another: each tie its coordinates break moves to a side."""
    v = _stream(seed, name, _OFF_TIES, streams).random(size)
    np.subtract(v, v < 0.5, out=v)
    return v
