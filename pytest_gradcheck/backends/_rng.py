"""The global RNGs f may draw from: reset before each evaluation, restored after.

Python's `random`, NumPy's global generator and, once torch is imported, torch's CPU
generator and its CUDA ones (if CUDA is initialised): a NumPy or JAX function may draw
its dropout mask from ``torch.rand`` as well. torch is never imported here: a process
that has not imported it has no torch generator to reset.

A reset happens before every evaluation, so it is cheap: Python's generator gets the
seeded words copied into its memory (what ``random.seed`` computes, computed once per
seed), and NumPy's is seeded only where f drew from it since the last reset (its words
are compared with the seeded ones), torch's CPU generator likewise. ``random.seed``,
``np.random.seed`` and torch's ``manual_seed`` cost a microsecond or a few each in a
loop, but several times that at the start of an evaluation, with f's code in the CPU
caches: together they were some 10 % of a direction check of a small model.
"""

from __future__ import annotations

import ctypes
import functools
import random
import struct
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
        #: the generator `random`'s functions draw from; its state, as a copy of its
        #: memory and cached Gaussian where the layout is known (`getstate` builds a
        #: tuple of 625 ints, and `setstate` reads it back), or as `getstate` gives it
        self._py_inst = getattr(random.random, "__self__", None)  # (None: monkeypatched)
        known = _python_layout_known() and type(self._py_inst) is random.Random
        self._py_memory: tuple[bytes, Any] | None = None
        self._py: Any = None
        if known:
            address = id(self._py_inst) + _PY_OFFSET
            self._py_memory = (ctypes.string_at(address, _MT_BYTES), self._py_inst.gauss_next)
        else:
            self._py = random.getstate()
        #: NumPy's global bit generator, held: its memory is read and written by
        #: address, and f may install another (`np.random.set_bit_generator`)
        self._np_generator = np.random.mtrand._rand._bit_generator
        self._np_memory, self._np = _save_numpy()
        #: the seeded words of each generator, where they can be written or compared
        self._py_seeded = _python_seeded(seed) if known else None
        self._np_seeded = _numpy_seeded(seed) if self._np_memory is not None else None
        self._torch: _TorchRng | None = None
        if "torch" in sys.modules:
            self._torch = _TorchRng()

    def reseed(self) -> None:
        if self._py_seeded is not None:
            # random.seed's result, written: its words and position, no Gaussian cached
            ctypes.memmove(id(self._py_inst) + _PY_OFFSET, self._py_seeded, _MT_BYTES)
            self._py_inst.gauss_next = None
        else:
            random.seed(self.seed)
        if (
            self._np_memory is None
            or self._np_seeded is None
            or np.random.mtrand._rand._bit_generator is not self._np_generator
        ):
            np.random.seed(self.seed)
        elif ctypes.string_at(self._np_memory[0], _MT_BYTES) != self._np_seeded:
            # f drew from it (unchanged words: nothing drawn since the last seed, which
            # also cleared the cached Gaussian that a draw of normals leaves)
            np.random.seed(self.seed)
        if self._torch is None:
            if "torch" not in sys.modules:
                return
            # f imported torch in the check: its generators are saved as the import
            # left them, before the first seed
            self._torch = _TorchRng()
        self._torch.reseed(self.seed)

    def restore(self) -> None:
        if self._py_memory is not None:
            words, gaussian = self._py_memory
            ctypes.memmove(id(self._py_inst) + _PY_OFFSET, words, _MT_BYTES)
            self._py_inst.gauss_next = gaussian
        else:
            random.setstate(self._py)
        if np.random.mtrand._rand._bit_generator is not self._np_generator:
            np.random.set_bit_generator(self._np_generator)  # f installed another
        if self._np_memory is None:
            np.random.set_state(self._np)
        elif ctypes.string_at(self._np_memory[0], _MT_BYTES) == self._np_seeded:
            # nothing drawn since the last seed: no Gaussian cached, the words suffice
            ctypes.memmove(*self._np_memory, _MT_BYTES)
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
        #: the CPU generator's state just after the seed (see `reseed`)
        self._seeded: bytes | None = None
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def reseed(self, seed: int) -> None:
        torch = self._module
        if self._cuda is None and torch.cuda.is_initialized():
            # initialised in the check (f moved a tensor to the GPU): saved as that left it
            self._cuda = torch.cuda.get_rng_state_all()
        if self._cuda is not None:
            torch.manual_seed(seed)  # the CPU and every CUDA generator
            return
        # torch.manual_seed would queue a seed for CUDA's lazy initialisation, changing
        # the user's CUDA RNG after the check; seed only the CPU generator, and only
        # where f drew from it since the last seed (its state is compared with the
        # seeded one: a seed, cheap in a loop, costs more than the comparison at the
        # start of an evaluation)
        generator = torch.default_generator
        if self._seeded is None:
            generator.manual_seed(seed)
            self._seeded = generator.get_state().numpy().tobytes()
        elif generator.get_state().numpy().tobytes() != self._seeded:
            generator.manual_seed(seed)

    def restore(self) -> None:
        torch = self._module
        try:
            torch.set_rng_state(self._cpu)
        finally:
            if self._cuda is not None:
                torch.cuda.set_rng_state_all(self._cuda)


#: where a CPython `random.Random` keeps its state: after the object header, the
#: position (a C int) and then the 624 words (checked by `_python_layout_known`)
_PY_OFFSET = object.__basicsize__


@functools.cache
def _python_layout_known() -> bool:
    """Whether a `random.Random` holds its position and words at `_PY_OFFSET` (CPython's
    layout; anything else reseeds with ``random.seed``)."""
    if sys.implementation.name != "cpython":
        return False
    generator = random.Random(12345)
    generator.random()
    words = generator.getstate()[1]
    expected = struct.pack(f"=i{_MT_WORDS}I", words[-1], *words[:-1])
    return ctypes.string_at(id(generator) + _PY_OFFSET, _MT_BYTES) == expected


@functools.lru_cache(maxsize=64)
def _python_seeded(seed: int) -> bytes:
    """The memory of a `random.Random` just after ``seed(seed)``."""
    generator = random.Random(seed)
    return ctypes.string_at(id(generator) + _PY_OFFSET, _MT_BYTES)


@functools.lru_cache(maxsize=64)
def _numpy_seeded(seed: int) -> bytes:
    """The MT19937 memory of NumPy's global generator just after ``np.random.seed(seed)``."""
    generator = np.random.RandomState(seed)
    return ctypes.string_at(generator._bit_generator.ctypes.state_address, _MT_BYTES)


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
