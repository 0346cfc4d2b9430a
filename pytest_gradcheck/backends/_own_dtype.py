"""The gradient in the dtypes the user gave: which entries are not finite, and the warning.

A check runs in float64, so inputs in lower precision (float32, float16, bfloat16) are
cast for it (`_notices.CAST_NOTICE`). That is right for comparing with finite
differences, but it hides a whole class of bugs: a backward that overflows or divides
badly in the user's own dtype. A sigmoid's derivative written as ``e / (1 + e)**2`` with
``e = exp(-z)`` is fine in float64 at z = -95, while in float32 ``e`` overflows to inf
and the gradient is inf/inf = NaN: the check passes as happy and training in float32
gets NaN.

So where a backend cast lower-precision inputs, it evaluates f and its analytic gradient
once more at the checked point in the user's own dtypes (`Backend.own_dtype_pass`) and
hands what came back to `judge`, which is the same for every framework: a non-finite
loss there, or else every block whose gradient holds NaN or inf while the loss is
finite, gets a warning (an alarm, not a notice: a `GradcheckWarning`). The check's
verdict and tier are the float64 comparison's, unchanged. A pass that raises (f cannot
run in its own dtypes without the check's casts: a float32 batch beside a float64
model, say) is no finding about the gradient: `failed` says so as a notice.

Framework-free (NumPy only): the backends convert their gradients to flat float64 NumPy
arrays first, which keeps NaN and inf as they are.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .._notices import CAST_NOTICE
from ._base import index_text

#: how many non-finite entries of a block a warning names
SHOWN = 3


@dataclass(frozen=True)
class OwnGradient:
    """One block's analytic gradient from the pass in the user's own dtypes."""

    name: str
    shape: tuple[int, ...]
    #: the dtype the user gave the block (what the warning names)
    dtype: str
    #: flat float64 (NaN and inf kept); None where the pass gave the block no gradient
    values: np.ndarray | None


#: what a backend's pass returns: the loss, and per block its flat float64 gradient
#: (None where the block got none); no gradients where the loss is not finite
Taken = tuple[float, Sequence[np.ndarray | None]]


def look(
    dtypes: Sequence[str],
    scope: contextlib.AbstractContextManager[object],
    take: Callable[[], Taken],
    blocks: Callable[[], Sequence[tuple[str, tuple[int, ...], str]]],
) -> tuple[str, ...] | None:
    """Run a backend's pass in the user's own dtypes and judge it: what
    `Backend.own_dtype_pass` returns, for every framework.

    `dtypes` are the user's dtypes the check cast (none: no pass, None); `take` is the
    backend's pass, run inside `scope` with Python warnings off (what overflows is what
    it looks for); `blocks` gives each block's (name, shape, the user's dtype). A pass
    that raises gives `failed`'s notice.
    """
    if not dtypes:
        return None
    try:
        with warnings.catch_warnings(), scope:
            warnings.simplefilter("ignore")
            loss, grads = take()
    except Exception as err:
        return (failed(dtypes, err),)
    if not grads:  # the loss is not finite there: no gradient was taken
        return judge(dtypes, loss, [])
    found = [
        OwnGradient(name, shape, dtype, g)
        for (name, shape, dtype), g in zip(blocks(), grads, strict=True)
    ]
    return judge(dtypes, loss, found)


def given(dtypes: Sequence[str]) -> str:
    """The dtypes f was given, for messages ("float32", "bfloat16/float32")."""
    return "/".join(sorted(set(dtypes)))


def _as_given(where: str) -> str:
    """'float32, the dtype f was given' (or '... the dtypes ...' for several)."""
    return f"{where}, the dtype{'s' if '/' in where else ''} f was given"


def judge(dtypes: Sequence[str], loss: float, gradients: Sequence[OwnGradient]) -> tuple[str, ...]:
    """The warnings about the pass in the user's own dtypes `dtypes` (those below float64
    that the check cast): the loss if it is not finite there, else each block whose
    gradient holds NaN or inf; none where everything is finite."""
    where = given(dtypes)
    if not math.isfinite(loss):
        return (_loss_warning(where, loss),)
    found = []
    for g in gradients:
        if g.values is None:
            continue
        bad = np.flatnonzero(~np.isfinite(g.values))
        if bad.size:
            found.append(_gradient_warning(where, loss, g, bad))
    return tuple(found)


def failed(dtypes: Sequence[str], error: BaseException) -> str:
    """The notice that the pass in the user's own dtypes raised, so it found nothing.

    A notice (it starts with `CAST_NOTICE`), not a `GradcheckWarning`: f may need the
    check's own casts to run at all (a float32 batch beside a float64 model), which says
    nothing about its gradient; the float64 check stands as it is.
    """
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return (
        f"{CAST_NOTICE}f and its gradient could not also be evaluated in "
        f"{_as_given(given(dtypes))}, to look for a gradient that overflows there: "
        f"{type(error).__name__}: {text}"
    )


def _gradient_warning(where: str, loss: float, g: OwnGradient, bad: np.ndarray) -> str:
    values = g.values
    assert values is not None
    entries = ", ".join(
        f"{float(values[i])!r} at {index_text(int(i), g.shape)}" for i in bad[:SHOWN].tolist()
    )
    more = f" and {bad.size - SHOWN} more" if bad.size > SHOWN else ""
    count = f"{bad.size} of its {values.size} entries" if values.size > 1 else "its entry"
    return (
        f"block {g.name!r} ({g.dtype}): in {_as_given(where)}, its analytic "
        f"gradient at the checked point is not finite in {count}: {entries}{more}, while "
        f"the loss there is finite ({loss:.6g}). The check compares gradients in float64, "
        f"where this one is finite, so it passes there; training in {where} gets NaN or "
        f"inf. The backward overflows or divides by zero in {where} (an exp of a large "
        "argument, inf/inf, a division by a value that underflows to 0): rewrite it in a "
        "stable form, e.g. from the forward's output (a sigmoid's derivative as "
        "s * (1 - s), not exp(-z) / (1 + exp(-z))**2), or compute it in float64 inside"
    )


def _loss_warning(where: str, loss: float) -> str:
    return (
        f"the loss at the checked point is {loss!r} in {_as_given(where)}, "
        "while it is finite in float64, where the check runs, so the check cannot show "
        f"it: the forward overflows or divides by zero in {where} (a value past the "
        f"largest finite {_largest(where)}, an exp of a large argument, a log of a value "
        f"that underflows to 0), and training in {where} gets NaN or inf. Keep the "
        "values in range (scale the loss or its inputs, reduce with a mean rather than "
        "a sum) and compute it in a stable form (logsumexp, log1p, softplus, "
        "log_softmax, a clamp before exp)"
    )


#: the largest finite value of each lower-precision dtype
_MAX = {"float16": 65504.0, "bfloat16": 3.3895e38, "float32": 3.4028e38}


def _largest(where: str) -> str:
    """'float16 value (65504)', for the dtypes in `where` ("float16/float32")."""
    parts = [f"{d} value ({_MAX[d]:.5g})" for d in where.split("/") if d in _MAX]
    return " or ".join(parts) if parts else f"{where} value"
