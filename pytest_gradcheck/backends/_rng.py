"""Python's `random` and NumPy's global RNG: reset before each evaluation, restored after.

Framework generators (torch's CPU and CUDA ones) are handled by their backends,
on top of this.
"""

from __future__ import annotations

import random

import numpy as np


class GlobalRng:
    """Saves the global RNG states on creation; `reseed` before each evaluation."""

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ValueError(f"gradcheck: seed must be an int in [0, 2**32), got {seed!r}")
        self.seed = seed
        self._py = random.getstate()
        self._np = np.random.get_state()

    def reseed(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)

    def restore(self) -> None:
        random.setstate(self._py)
        np.random.set_state(self._np)
