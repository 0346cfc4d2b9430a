"""The global RNGs f may draw from: reset before each evaluation, restored after.

Python's `random`, NumPy's global generator and, once torch is imported, torch's CPU
generator and its CUDA ones (if CUDA is initialised): a NumPy or JAX function may draw
its dropout mask from ``torch.rand`` as well. torch is never imported here: a process
that has not imported it has no torch generator to reset.
"""

from __future__ import annotations

import ctypes
import functools
import random
import sys
from typing import Any

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
        self._np_memory, self._np = _save_numpy()
        self._torch: _TorchRng | None = None
        if "torch" in sys.modules:
            self._torch = _TorchRng()

    def reseed(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
        if self._torch is None:
            if "torch" not in sys.modules:
                return
            # f imported torch in the check: its generators are saved as the import
            # left them, before the first seed
            self._torch = _TorchRng()
        self._torch.reseed(self.seed)

    def restore(self) -> None:
        random.setstate(self._py)
        if self._np_memory is None:
            np.random.set_state(self._np)
        else:
            _write_mt(*self._np_memory)
        if self._torch is not None:
            self._torch.restore()


class _TorchRng:
    """torch's CPU generator, and its CUDA ones where CUDA is initialised."""

    def __init__(self) -> None:
        import torch

        self._module = torch
        self._cpu = torch.get_rng_state()
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def reseed(self, seed: int) -> None:
        torch = self._module
        if self._cuda is None and torch.cuda.is_initialized():
            # initialised in the check (f moved a tensor to the GPU): saved as that left it
            self._cuda = torch.cuda.get_rng_state_all()
        if self._cuda is not None:
            torch.manual_seed(seed)  # the CPU and every CUDA generator
        else:
            # torch.manual_seed would queue a seed for CUDA's lazy initialisation,
            # changing the user's CUDA RNG after the check; seed only the CPU generator
            torch.default_generator.manual_seed(seed)

    def restore(self) -> None:
        torch = self._module
        try:
            torch.set_rng_state(self._cpu)
        finally:
            if self._cuda is not None:
                torch.cuda.set_rng_state_all(self._cuda)


def _write_mt(address: int, saved: bytes) -> None:
    """Put NumPy's global MT19937 back to `saved` words and position, no Gaussian cached
    (a seed clears the cache, then the memory is written back in one copy)."""
    np.random.seed(0)
    ctypes.memmove(address, saved, _MT_BYTES)


def _save_numpy() -> tuple[tuple[int, bytes] | None, dict[str, Any] | None]:
    """NumPy's global generator state: ``((address, bytes), None)`` or ``(None, state)``.

    ``get_state`` converts the 624 words one Python object at a time (~30 µs, and as
    much again for ``set_state``); a copy of the memory takes a microsecond. It holds
    the whole state of the legacy MT19937 when no Gaussian is cached, which one
    standard-normal draw tells: a cached one is returned without touching the words
    (the state is then put back as it was, with it, and saved whole). Another bit
    generator, or a layout other than NumPy's ``mt19937_state``: saved whole.
    """
    rs = np.random.mtrand._rand
    bit_generator = rs._bit_generator
    if not isinstance(bit_generator, np.random.MT19937) or not _layout_known():
        return None, np.random.get_state(legacy=False)  # (legacy tuple: MT19937 only)
    address = bit_generator.ctypes.state_address
    saved = ctypes.string_at(address, _MT_BYTES)
    gaussian = rs.standard_normal()
    if ctypes.string_at(address, _MT_BYTES) != saved:  # drawn from the words: none cached
        _write_mt(address, saved)
        return (address, saved), None
    key = np.frombuffer(saved, dtype=np.uint32, count=_MT_WORDS).copy()
    pos = int(np.frombuffer(saved, dtype=np.int32, count=1, offset=4 * _MT_WORDS)[0])
    state = {
        "bit_generator": "MT19937",
        "state": {"key": key, "pos": pos},
        "has_gauss": 1,
        "gauss": gaussian,
    }
    np.random.set_state(state)
    return None, state


@functools.cache
def _layout_known() -> bool:
    """Whether NumPy's MT19937 memory holds the words and position ``get_state`` gives."""
    generator = np.random.MT19937(12345)
    generator.random_raw(7)
    state = generator.state["state"]
    expected = (
        np.asarray(state["key"], dtype=np.uint32).tobytes() + np.int32(state["pos"]).tobytes()
    )
    return ctypes.string_at(generator.ctypes.state_address, _MT_BYTES) == expected
