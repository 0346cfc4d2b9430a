"""Python's `random` and NumPy's global RNG: reset before each evaluation, restored after.

Framework generators (torch's CPU and CUDA ones) are handled by their backends,
on top of this.
"""

from __future__ import annotations

import ctypes
import random

import numpy as np

#: NumPy's MT19937 state in memory: 624 32-bit words and the position in them
_MT_WORDS = 624
_MT_BYTES = 4 * _MT_WORDS + 4


class GlobalRng:
    """Saves the global RNG states on creation; `reseed` before each evaluation."""

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ValueError(f"gradcheck: seed must be an int in [0, 2**32), got {seed!r}")
        self.seed = seed
        self._py = random.getstate()
        self._np = np.random.get_state(legacy=False)  # (the legacy tuple: MT19937 only)
        self._np_memory = _mt_memory(self._np)

    def reseed(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)

    def restore(self) -> None:
        random.setstate(self._py)
        if self._np_memory is None:
            np.random.set_state(self._np)
            return
        # ``set_state`` converts the 624 words one Python object at a time (~35 µs);
        # the same state is written back in one copy: a seed clears the cached
        # Gaussian (none was cached, see `_mt_memory`), then the words and position
        address, saved = self._np_memory
        np.random.seed(0)
        ctypes.memmove(address, saved, _MT_BYTES)


def _mt_memory(state: dict) -> tuple[int, bytes] | None:
    """``(address, bytes)`` of NumPy's global MT19937 state, where a copy restores it.

    Only for the legacy MT19937 with no Gaussian cached (then the words and the position
    are the whole state) and where the memory holds exactly what ``get_state`` returned
    (the layout is NumPy's ``mt19937_state``: checked, not assumed); None otherwise.
    """
    bit_generator = np.random.mtrand._rand._bit_generator
    if not isinstance(bit_generator, np.random.MT19937) or state.get("bit_generator") != "MT19937":
        return None
    if state.get("has_gauss") or state.get("gauss") != 0.0:
        return None
    key, pos = state["state"]["key"], state["state"]["pos"]
    if len(key) != _MT_WORDS:
        return None
    address = bit_generator.ctypes.state_address
    saved = ctypes.string_at(address, _MT_BYTES)
    expected = np.asarray(key, dtype=np.uint32).tobytes() + int(pos).to_bytes(
        4, "little" if np.little_endian else "big", signed=True
    )
    return (address, saved) if saved == expected else None
