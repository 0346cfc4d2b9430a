"""The protocol between the framework-free engine and a framework backend.

The engine never touches a framework array. It sees the check's blocks as flat
float64 NumPy arrays (`BlockSpec.values`, read-only), asks the backend for the analytic
gradient at the base point, and asks it to evaluate the loss at points near the base
point (`Point`: deltas added at flat indices of some blocks). A backend owns the
user's objects: it casts to float64, perturbs in place, resets the RNGs before every
evaluation, records winner signatures, and restores everything in `close()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Wrt = Callable[[str], bool] | Sequence[str] | str | None

#: the loss's cotangent in the analytic pass (its gradients are divided by it): not 1,
#: where a backward that ignores its grad_output (a fused softmax + cross-entropy
#: returning p - y, not g * (p - y)) gives the right gradient, while in training the
#: loss is scaled (a mean over micro-batches, AMP's loss scale) and that backward is
#: wrong; and no power of two, which a common factor of the loss (0.5, 1/N, 2**16)
#: would cancel. Dividing by 3 costs at most an ulp
COTANGENT = 3.0

#: on a CPU, the points perturbing a block larger than this (bytes) are evaluated one
#: at a time even where they could be batched: each row of a batch is a fresh copy of
#: the block, written and read once from memory, while one point at a time perturbs
#: (torch) or rebuilds (JAX) one copy that stays in the cache. Measured on one CPU
#: thread (an MLP's first weight, 22 points): torch 1.3x slower batched at 148 KB, 1.5x
#: slower at 774 KB, about even from 18 to 72 KB (within 3%; 1.7x faster at 72 KB before
#: the loop's writes went through NumPy); JAX 3.5x slower at 8 MB, 1.1x at 774 KB. Not
#: applied on a GPU, where the rows are computed in parallel.
CPU_LOOP_BYTES = 96 * 2**10


@dataclass(frozen=True)
class BlockSpec:
    """One checked block: its name, shape, the user's dtype and its base values."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    #: float64, flat: the base point's values, read-only. A backend may share them with
    #: its own base point (no copy of a large block), so they hold until the base
    #: point moves (`Backend.step`): the engine copies them before a burn-in.
    values: np.ndarray

    @property
    def size(self) -> int:
        return int(self.values.size)


@dataclass(frozen=True)
class Point:
    """A point near the base point.

    `deltas` holds ``(block index, flat indices, values)`` triples: the values are
    added to the base point at those flat indices of that block (float64). The flat
    indices are an integer array, or a ``range``: ``range(size)`` is the whole block
    in order (a direction), which a backend can add as one dense array without
    looking at the indices (see `whole`).
    """

    deltas: tuple[tuple[int, np.ndarray | range, np.ndarray], ...]


def whole(flat_indices: np.ndarray | range, size: int) -> bool:
    """Whether `flat_indices` covers a block of `size` entries whole and in order.

    Only a ``range`` says so (an O(1) test); an index array is always treated as
    scattered indices, which gives the same values, more slowly.
    """
    return isinstance(flat_indices, range) and flat_indices == range(size)


def index_count(flat_indices: np.ndarray | range) -> int:
    """How many indices a delta has (a range is not turned into an array for it)."""
    return len(flat_indices) if isinstance(flat_indices, range) else int(np.size(flat_indices))


def index_array(flat_indices: np.ndarray | range) -> np.ndarray:
    """The flat indices as a 1-d int64 array (a ``range`` converted without a Python loop)."""
    if isinstance(flat_indices, range):
        r = flat_indices
        return np.arange(r.start, r.stop, r.step, dtype=np.int64)
    return np.asarray(flat_indices, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class Evaluation:
    """The loss at one point: the total, the named terms, the winner signature."""

    loss: float
    terms: Mapping[str, float] = field(default_factory=dict)
    signature: bytes | None = None  # None when the evaluation was not tracked
    decisions: int = 0  # how many max-like decisions the tracker saw


@dataclass(frozen=True)
class Gradient:
    """The analytic gradient at the base point, of the total and of each named term.

    Every array is flat float64 with one entry per coordinate of the matching block.
    """

    center: Evaluation
    total: tuple[np.ndarray, ...]
    terms: Mapping[str, tuple[np.ndarray, ...]] = field(default_factory=dict)
    #: the evaluations of f it took: 1, or 2 with a shift test (see `_kinks`)
    evaluations: int = 1


@dataclass(frozen=True)
class Settings:
    """What a backend needs to know of the options."""

    seed: int = 0
    device: str | None = None
    wrt: Wrt = None
    #: evaluate a pass's points as one batch (vmap) where the framework allows it
    batch: bool = True


class Backend(Protocol):
    """A framework adapter. Constructed with ``(f, args, params, grad, settings)``."""

    #: warnings found while preparing the check (float32 inputs, ...)
    warnings: list[str]

    def blocks(self) -> Sequence[BlockSpec]:
        """The checked blocks, in a stable order."""

    def gradient(self, track: bool) -> Gradient:
        """The analytic gradient at the base point: one call of f, RNGs reset first.

        With `track`, `Gradient.center` carries the winner signature of that call.
        """

    def evaluate(self, points: Sequence[Point], track: bool) -> list[Evaluation]:
        """The loss at each point, RNGs reset to the seed before each evaluation."""

    def step(self, update: Sequence[np.ndarray]) -> None:
        """Add `update` (flat float64 per block) to the base point, in place (burn-in)."""

    def own_dtype_pass(self) -> tuple[str, ...] | None:
        """f and its analytic gradient once more at the base point, in the user's dtypes.

        Only where the check cast inputs of lower precision to float64; None otherwise
        (no pass ran: a float64 check pays nothing). Returns the warnings
        `_own_dtype.judge` finds (a loss or gradient entries that are not finite there),
        or `_own_dtype.failed`'s notice where the pass raised. It changes nothing the
        check's evaluations see: RNGs reseeded before it, the user's objects and the
        backend's state as they were after it.
        """

    def close(self) -> None:
        """Restore every user object, flag and RNG state exactly as before the check."""


#: how to check a function of complex values: what the errors and the warning about
#: complex leaves advise
_COMPLEX_ADVICE = (
    "pass the real and imaginary parts as real arrays (z.real and z.imag; in PyTorch "
    "also torch.view_as_real(z)) and build the complex value inside f (x + 1j * y; "
    "torch.view_as_complex), so each part is a block"
)


def select_blocks(
    floating: Sequence[str],
    others: Sequence[str],
    wrt: Wrt,
    complex_: Sequence[str] = (),
) -> list[str]:
    """Apply the `wrt` option to the floating block names, validating it.

    `others` are the names of non-floating leaves: naming one in `wrt` is an error.
    A name that is not a block selects every block under it (a subtree: ``dense1``
    selects ``dense1['kernel']`` and ``dense1['bias']``; ``fc1`` selects ``fc1.weight``).
    `complex_` names the complex leaves among `others`: the errors about them say how
    to check a function of complex values (see `complex_warning` for the leaves left
    out beside real blocks).
    """
    if wrt is None:
        chosen = list(floating)
    elif callable(wrt):
        chosen = [name for name in floating if wrt(name)]
    else:
        wanted = [wrt] if isinstance(wrt, str) else list(wrt)
        selected: set[str] = set()
        for name in wanted:
            if name in complex_:
                raise TypeError(
                    f"gradcheck: wrt names {name!r}, which is complex; {_COMPLEX_ADVICE}"
                )
            if name in others:
                raise TypeError(
                    f"gradcheck: wrt names {name!r}, which is not floating point; "
                    "only floating-point blocks have gradients. Remove it from wrt."
                )
            under = _under(name, floating)
            if not under:
                non_floating = bool(_under(name, others))
                raise (TypeError if non_floating else ValueError)(
                    f"gradcheck: wrt names {name!r}, which is "
                    + (
                        "a subtree of non-floating leaves only; remove it from wrt"
                        if non_floating
                        else "not a block of this check, nor a subtree of blocks; "
                        f"the blocks are: {', '.join(floating) or '(none)'}"
                    )
                )
            selected.update(under)
        chosen = [name for name in floating if name in selected]
    if not chosen:
        raise ValueError(
            "gradcheck: there is no floating-point block to check"
            + (f" (wrt={wrt!r} selected none of: {', '.join(floating)})" if floating else "")
            + ". Pass floating-point arrays in args or params."
            + (
                f" {', '.join(complex_)} {'is' if len(complex_) == 1 else 'are'} complex, "
                f"and the check takes real blocks only: {_COMPLEX_ADVICE}."
                if complex_
                else ""
            )
        )
    return chosen


def complex_warning(complex_: Sequence[str], wrt: Wrt) -> list[str]:
    """The warning that complex leaves were left out beside the real blocks checked
    (none where `wrt` chose the blocks: the user then said which to check)."""
    if not complex_ or wrt is not None:
        return []
    return [
        f"{', '.join(map(repr, complex_))} {'is' if len(complex_) == 1 else 'are'} complex "
        "and went unchecked (the check takes real blocks only): "
        f"{_COMPLEX_ADVICE}; to leave {'it' if len(complex_) == 1 else 'them'} "
        "out on purpose, choose the blocks with wrt="
    ]


def _under(name: str, blocks: Sequence[str]) -> list[str]:
    """The blocks `name` selects in `wrt`: itself where it is a block, else every block
    of the subtree it names (``args[0]`` or ``dense1`` for ``dense1['kernel']``, ``fc1``
    for ``fc1.weight``): the names that continue it with ``[`` or ``.``."""
    if name in blocks:
        return [name]
    return [b for b in blocks if b.startswith(name) and b[len(name) : len(name) + 1] in "[."]


def projection_weights(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The fixed random weight `w` that reduces a non-scalar output to sum(out * w)."""
    rng = np.random.default_rng([seed, 0x9E3779B9])
    return rng.standard_normal(shape)


def lowered_warning(sites: str, casts: str, note: str = "") -> str:
    """The warning that f turns float64 values into a lower precision at `sites` (the
    same words from every backend: the failure hint looks for them). `casts` names the
    casts to remove; `note` adds a sentence."""
    return (
        f"gradcheck: f computes in lower precision inside ({sites}): those operations turn "
        "float64 values into lower precision, so part of the check does not run in "
        "float64 and a correct gradient can show large relative errors; remove the cast "
        f"({casts}) inside f for the check{note}"
    )


def check_finite_loss(value: float, what: str) -> None:
    """Raise ValueError when a loss value is NaN or infinite."""
    if not np.isfinite(value):
        raise ValueError(
            f"gradcheck: {what} is {value}; the loss must be finite at the checked point "
            "(look for a log of zero, a division by zero or an overflow)"
        )


#: below this many entries a finiteness mask costs less than an overflow-safe sum
_SMALL = 4096


def check_gradient_array(
    name: str, g: Any, shape: tuple[int, ...], term: str | None, copy: bool = True
) -> np.ndarray:
    """Validate one analytic gradient block and return it flat float64.

    A copy, unless `copy` is false: the caller then owns `g` and nothing writes into it
    during the check (an immutable JAX array, a gradient only autograd holds), and the
    array returned (a read-only view where it can be) spares a copy of a large block.
    """
    arr = np.asarray(g)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"gradcheck: the analytic gradient of {_where(name, term)} has shape {arr.shape}, "
            f"but the block has shape {tuple(shape)}; return one gradient per input entry"
        )
    if arr.dtype.kind not in "iufc":  # np.number's kinds (bool and object are not numbers)
        raise TypeError(
            f"gradcheck: the analytic gradient of {_where(name, term)} is not numeric ({arr.dtype})"
        )
    if copy:
        flat = np.array(arr, dtype=np.float64).reshape(-1)
    else:
        flat = np.asarray(arr, dtype=np.float64).reshape(-1)
        if flat.base is not None:  # a view of the caller's memory: the engine only reads
            flat.flags.writeable = False
    if flat.size <= _SMALL:
        if np.isfinite(flat).all():  # (no floating-point state to save and restore)
            return flat
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(flat.sum())
        if math.isfinite(total):  # one pass, no mask: all finite (a sum of finite values
            return flat  # can overflow, so only this side is certain)
    idx = first_nonfinite(flat)
    if idx is not None:
        raise ValueError(
            f"gradcheck: the analytic gradient of {_where(name, term)} holds {flat[idx]} at "
            f"{index_text(idx, shape)}; gradients must be finite"
        )
    return flat


def first_nonfinite(flat: np.ndarray) -> int | None:
    """The flat index of the first NaN or infinity in `flat`, None if all are finite."""
    bad = ~np.isfinite(flat)
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def index_text(idx: int, shape: tuple[int, ...]) -> str:
    """Where flat index `idx` lies in a block of `shape`, for messages.

    The block's own index is what the user can look up; the flat one is what a
    reshape(-1) shows.
    """
    if len(shape) > 1:
        multi = tuple(int(i) for i in np.unravel_index(idx, tuple(shape)))
        return f"index {multi} (flat index {idx})"
    if len(shape) == 1:
        return f"index {idx}"
    return "its only entry"


def _where(name: str, term: str | None) -> str:
    return f"block {name!r}" + (f" of term {term!r}" if term else "")


def reduce_output(out: Any, expected: str | None = None) -> str:
    """Classify a loss value: "scalar", "terms" or "array".

    `expected` is the kind an earlier evaluation of the same check returned: f must
    return the same kind everywhere. An empty mapping is rejected.
    """
    kind = _output_kind(out)
    if expected is not None and kind != expected:
        raise TypeError(
            f"gradcheck: f returned a {kind} at one point and a {expected} at another; "
            "it must return the same kind of loss everywhere"
        )
    if kind == "terms" and not out:
        raise ValueError("gradcheck: f returned an empty mapping; return at least one named term")
    return kind


def _output_kind(out: Any) -> str:
    """Classify a loss value: "scalar", "terms" or "array"."""
    if isinstance(out, Mapping):
        return "terms"
    if isinstance(out, (bool, str, bytes)) or out is None:
        raise TypeError(
            f"gradcheck: f returned {type(out).__name__}; it must return a scalar loss, a "
            "mapping of named scalar terms, or an array (reduced with a fixed random weight)"
        )
    shape = getattr(out, "shape", None)
    if shape is None:
        if isinstance(out, (int, float)):
            return "scalar"
        raise TypeError(
            f"gradcheck: f returned {type(out).__name__}; it must return a scalar loss, a "
            "mapping of named scalar terms, or an array (reduced with a fixed random weight)"
        )
    return "scalar" if len(shape) == 0 else "array"
