"""Winner tracking for plain NumPy code: an ndarray subclass that records decisions.

During a tracked evaluation the checked inputs are handed to f as `Tracked` views.
Every ufunc and array function applied to them returns `Tracked` again, and the
max-like ones (maximum/minimum and their segment form ``maximum.at``, comparisons,
abs, sign, clip, rounding, max/min reductions, argmax/argmin, sort, where) record
their outcome into the recorder of the running evaluation.

The max/min reductions (and segment maxima) also serve the shift test (see
`_kinks.shift_offsets`): a session with `shift` adds offsets to their values, and one
with `quiet` no longer records them, once the test has shown that the loss does not
depend on them. The two-way decisions serve the same test by taking their other
branch: comparisons are inverted (and with them the ``where``/``select`` choices they
feed), ``maximum`` and ``minimum`` swapped, ``abs`` and ``sign`` negated. A stable
sigmoid, ``np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))`` or
CS231n's boolean-mask version, and a stable softplus or logistic loss,
``np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))``, compute one function
on either branch, so the loss stays as it was; a ReLU, a hinge, an L1 term or an
``if`` on a value do not.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

from .._kinks import SignatureRecorder, shift_offsets


class Session:
    """One tracked evaluation: its recorder, what it recorded, how it treats reductions
    and two-way decisions.

    `reductions` counts the max/min reductions recorded, `others` every other decision,
    of which `flippable` are two-way decisions the shift test can flip (`winners` of
    those, maxima and minima of two arrays). With `shift` (the shift test), each
    reduction's value is moved by `shift_offsets` and each two-way decision takes its
    other branch; with `quiet`, neither is recorded at all.
    """

    __slots__ = (
        "flippable",
        "lowered",
        "others",
        "quiet",
        "recorder",
        "reductions",
        "shift",
        "shifts",
        "winners",
    )

    def __init__(self, shift: bool = False, quiet: bool = False) -> None:
        self.recorder = SignatureRecorder()
        self.reductions = 0
        self.shifts: dict[tuple, int] = {}  # a reduction's key -> its shift's number
        self.others = 0
        self.flippable = 0
        self.winners = 0  # of which maxima/minima of two arrays (ReLUs, hinges)
        #: the operations that turned float64 values into a lower precision ("astype
        #: -> float32"): f then runs below the float64 the check gives it
        self.lowered: dict[str, None] = {}
        self.shift = shift
        self.quiet = quiet

    def offsets(self, key: tuple, shape: tuple[int, ...]) -> np.ndarray:
        """The shift test's offsets for one reduction: the same for the same `key`."""
        ordinal = self.shifts.setdefault(key, len(self.shifts))
        self.reductions += 1
        return shift_offsets(math.prod(shape), ordinal).reshape(shape)


_SESSION: ContextVar[Session | None] = ContextVar("gradcheck_numpy_session", default=None)

_WINNER = {np.maximum, np.fmax, np.minimum, np.fmin}
_COMPARISONS = {np.greater, np.greater_equal, np.less, np.less_equal, np.equal, np.not_equal}
_SIGNS = {np.absolute, np.sign, np.fabs, np.heaviside, np.copysign}
_STEPS = {np.floor, np.ceil, np.rint, np.trunc, np.floor_divide, np.remainder, np.fmod}
_ARG_FUNCS = {np.argmax, np.argmin, np.nanargmax, np.nanargmin}
_ORDER_FUNCS = {np.sort, np.argsort, np.partition, np.argpartition, np.median, np.percentile,
                np.quantile, np.nanmedian, np.nanpercentile, np.nanquantile, np.unique}  # fmt: skip


def _raw(x: Any) -> Any:
    if isinstance(x, Tracked):
        return x.view(np.ndarray)
    if isinstance(x, tuple):
        return tuple(_raw(v) for v in x)
    if isinstance(x, list):
        return [_raw(v) for v in x]
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray) and not isinstance(x, Tracked):
        return x.view(Tracked)
    if isinstance(x, np.generic):
        return np.asarray(x).view(Tracked)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


#: the shift test's other branch of a two-way decision: the other of max and min, the
#: negated abs or sign (-|x| is x's other branch), the inverted comparison
_OTHER = {np.maximum: np.minimum, np.minimum: np.maximum, np.fmax: np.fmin, np.fmin: np.fmax}
_NEGATED = {np.absolute, np.fabs, np.sign}


def _flippable(ufunc: np.ufunc, method: str, kwargs: dict) -> bool:
    """Whether the shift test takes this call's other branch (elementwise, no `out=`)."""
    return (
        method == "__call__"
        and "out" not in kwargs
        and (ufunc in _COMPARISONS or ufunc in _OTHER or ufunc in _NEGATED)
    )


def _other_branch(ufunc: np.ufunc, inputs: tuple, kwargs: dict, result: Any) -> Any:
    """The value of a flippable call had each of its decisions gone the other way."""
    if ufunc in _COMPARISONS:
        return np.logical_not(result)
    if ufunc in _OTHER:
        return _OTHER[ufunc](*inputs, **kwargs)
    return np.negative(result)


_LOWER = (np.float32, np.float16)


def _note_lowered(session: Session, name: str, inputs: tuple, result: Any) -> None:
    """Note `name` where it turned a float64 input into a lower-precision result."""
    if not isinstance(result, (np.ndarray, np.generic)) or result.dtype not in _LOWER:
        return
    if any(np.asarray(x).dtype == np.float64 for x in inputs if isinstance(x, np.ndarray)):
        session.lowered[f"{name} -> {result.dtype}"] = None


def _is_floating(x: Any) -> bool:
    return np.issubdtype(np.asarray(x).dtype, np.floating)


def _record(
    op: str, decision: Any, reduction: bool = False, flippable: bool = False, winner: bool = False
) -> None:
    session = _SESSION.get()
    if session is not None:
        if flippable and (session.shift or session.quiet):
            return  # the shift test flips it, or has shown it does not matter
        if not reduction:
            session.others += 1
            session.flippable += flippable
            session.winners += flippable and winner
        arr = np.ascontiguousarray(decision)
        session.recorder.record(
            op, arr.dtype.str.encode() + repr(arr.shape).encode() + arr.tobytes()
        )


def _shifted(ufunc: np.ufunc, x: Any, axis: Any, result: Any, session: Session, out: Any) -> Any:
    """A reduction's value moved by the shift test's offsets (into `out` if given).

    The same input array reduced over the same axes gets the same offsets: a max
    computed twice is one value, whose shift cancels as the max does.
    """
    value = np.asarray(result)
    x = np.asarray(x)
    axes = None if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)
    if axes is not None:
        axes = tuple(sorted(a % max(x.ndim, 1) for a in axes))
    kind = "max" if ufunc in (np.maximum, np.fmax) else "min"
    key = (kind, x.__array_interface__["data"][0], x.shape, x.strides, x.dtype.str, axes)
    offsets = session.offsets(key, value.shape)
    if out is not None:
        target = out[0] if isinstance(out, tuple) else out
        np.add(target, offsets, out=target)
        return result
    return value + offsets


def _shift_segments(ufunc: np.ufunc, inputs: tuple, session: Session) -> None:
    """A segment max's (``np.maximum.at``) array moved by the shift test, in place."""
    target, where, values = inputs
    values = np.asarray(values)
    kind = "max.at" if ufunc in (np.maximum, np.fmax) else "min.at"
    key = (
        kind,
        target.__array_interface__["data"][0],
        id(where),
        values.__array_interface__["data"][0],
    )
    np.add(target, session.offsets(key, target.shape), out=target)


def _arg_along(x: np.ndarray, axis: Any, fn: Any) -> np.ndarray:
    """The winning index of a max/min reduction over `axis` (None, int or tuple)."""
    x = np.asarray(x)
    if axis is None:
        return np.asarray(fn(x.reshape(-1)))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % x.ndim for a in axes)
    keep = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, keep + list(axes))
    flat = moved.reshape((*moved.shape[: len(keep)], -1))
    return np.asarray(fn(flat, axis=-1))


def _ties_along(x: np.ndarray, axis: Any, result: Any) -> np.ndarray:
    """How many entries share the winning value in each reduced slice (exact ties)."""
    x = np.asarray(x)
    if axis is None:
        return np.asarray(np.count_nonzero(x == np.asarray(result)))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    win = np.expand_dims(np.asarray(result), tuple(a % x.ndim for a in axes))
    if win.ndim != x.ndim:  # keepdims=True already kept them
        win = np.asarray(result)
    return np.count_nonzero(x == win, axis=axes)


class Tracked(np.ndarray):
    """An ndarray view whose max-like operations are recorded."""

    __array_priority__ = 100.0  # so plain_array.dot(tracked) returns Tracked

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        raw_inputs = _raw(inputs)
        if "out" in kwargs:
            kwargs["out"] = _raw(kwargs["out"])
        result = getattr(ufunc, method)(*raw_inputs, **kwargs)
        floating = any(_is_floating(x) for x in raw_inputs if not isinstance(x, np.ufunc))
        if floating:
            session = _SESSION.get()
            if session is not None:
                _note_lowered(session, ufunc.__name__, raw_inputs, result)
            if session is not None and session.shift and _flippable(ufunc, method, kwargs):
                result = _other_branch(ufunc, raw_inputs, kwargs, result)
            segment = method == "at" and len(raw_inputs) == 3
            if (method == "reduce" or segment) and ufunc in _WINNER and session is not None:
                if session.shift and segment:
                    _shift_segments(ufunc, raw_inputs, session)
                elif session.shift:
                    axis = kwargs.get("axis", 0)
                    out = kwargs.get("out")
                    result = _shifted(ufunc, raw_inputs[0], axis, result, session, out)
                elif not session.quiet:
                    self._decide(ufunc, method, raw_inputs, kwargs, result)
                    session.reductions += 1
            else:
                self._decide(ufunc, method, raw_inputs, kwargs, result)
        return _wrap(result)

    @staticmethod
    def _decide(ufunc: np.ufunc, method: str, inputs: tuple, kwargs: dict, result: Any) -> None:
        name = ufunc.__name__
        if method == "__call__":
            # an entry at an exact tie has equal branches there (|0| = -|0|): the shift
            # test cannot tell that decision from a smooth choice, so it is not offered
            flippable = _flippable(ufunc, method, kwargs)
            if ufunc in _WINNER:
                # three states: an exact tie is a branch of its own, so a difference
                # from a tie matches neither side and is not judged one-sidedly
                decision = np.sign(np.subtract(inputs[0], inputs[1])).astype(np.int8)
                flip = flippable and bool(np.all(decision))
                _record(name, decision, flippable=flip, winner=True)
            elif ufunc in _COMPARISONS:
                # which side, or at the tie (x == 0 under where(x > 0, ...)): three
                # states, as for the winners above
                a, b = inputs[0], inputs[1]
                side = np.greater(a, b).astype(np.int8) - np.less(a, b).astype(np.int8)
                _record(name, side, flippable=flippable and bool(np.all(side)))
            elif ufunc in _SIGNS:
                decision = np.sign(inputs[0]).astype(np.int8)
                _record(name, decision, flippable=flippable and bool(np.all(decision)))
            elif ufunc in _STEPS:
                _record(name, result)
            elif name == "clip":
                x, lo, hi = ([*list(inputs), None, None])[:3]
                lo = -np.inf if lo is None else lo
                hi = np.inf if hi is None else hi
                # below, at the lower bound, inside, at the upper bound, above
                side = np.sign(np.subtract(x, lo)).astype(np.int8) + np.sign(
                    np.subtract(x, hi)
                ).astype(np.int8)
                _record(name, side)
        elif method == "at" and ufunc in _WINNER and len(inputs) == 3:
            # a segment max or min, in place: which of the values won their position
            # (the array has been updated: a value won where it equals the result)
            target, where, values = inputs
            won = np.broadcast_to(values, np.shape(target[where])) == target[where]
            _record(name + ".at", won, reduction=True)
        elif method in ("reduce", "accumulate", "reduceat") and ufunc in _WINNER:
            if method == "reduce":
                fn = np.argmax if ufunc in (np.maximum, np.fmax) else np.argmin
                axis = kwargs.get("axis", 0)
                _record(name + ".reduce", _arg_along(inputs[0], axis, fn), reduction=True)
                _record(name + ".ties", _ties_along(inputs[0], axis, result), reduction=True)
            else:
                _record(f"{name}.{method}", result)

    def __array_function__(self, func: Any, types: tuple, args: tuple, kwargs: dict) -> Any:
        result = super().__array_function__(func, types, args, kwargs)
        if func in _ARG_FUNCS:
            pass  # recorded by the argmax/argmin methods the default implementation calls
        elif func in _ORDER_FUNCS and func is not np.sort and args and _is_floating(_raw(args[0])):
            x = np.asarray(_raw(args[0]))
            axis = kwargs.get("axis", -1 if func in (np.sort, np.argsort) else None)
            order = np.argsort(x, axis=axis, kind="stable") if x.ndim else np.zeros(0)
            _record(func.__name__, order)
        elif func is np.where and len(args) == 3:
            _record("where", np.asarray(_raw(args[0]), dtype=bool), flippable=True)
        elif func is np.select and args:
            conditions = np.asarray([np.asarray(_raw(c), dtype=bool) for c in args[0]])
            _record("select", conditions, flippable=True)
        return _wrap(result)

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:
        result = self.view(np.ndarray).astype(dtype, *args, **kwargs)
        session = _SESSION.get()
        if session is not None:
            _note_lowered(session, "astype", (self,), result)
        return _wrap(result)

    # ndarray methods that np.argmax & co. call back into: compute on the raw array
    def argmax(self, *args: Any, **kwargs: Any) -> Any:
        result = self.view(np.ndarray).argmax(*args, **kwargs)
        _record("argmax", result)
        return _wrap(result)

    def argmin(self, *args: Any, **kwargs: Any) -> Any:
        result = self.view(np.ndarray).argmin(*args, **kwargs)
        _record("argmin", result)
        return _wrap(result)

    def argsort(self, *args: Any, **kwargs: Any) -> Any:
        result = self.view(np.ndarray).argsort(*args, **kwargs)
        _record("argsort", result)
        return _wrap(result)

    def sort(self, axis: int = -1, **kwargs: Any) -> None:
        raw = self.view(np.ndarray)
        _record("sort", np.argsort(raw, axis=axis, kind="stable"))
        raw.sort(axis=axis, **kwargs)

    # indexing a single element gives a 0-d Tracked, so loop code (`if scores[j] > 0`)
    # is tracked too
    def __getitem__(self, key: Any) -> Any:
        return _wrap(super().__getitem__(key))

    def __iter__(self) -> Any:
        for i in range(len(self)):
            yield self[i]

    def __bool__(self) -> bool:
        return bool(self.view(np.ndarray))

    def __float__(self) -> float:
        return float(self.view(np.ndarray))


@contextlib.contextmanager
def tracking(shift: bool = False, quiet: bool = False) -> Iterator[Session]:
    """Record the decisions of everything computed on `Tracked` arrays inside the block.

    With `shift`, the evaluation is the shift test's: reductions are moved and two-way
    decisions flipped, nothing about either is recorded. With `quiet`, neither is
    recorded.
    """
    session = Session(shift, quiet)
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


def track(value: Any) -> Any:
    """A `Tracked` view of a floating NumPy value (other values unchanged)."""
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return value.view(Tracked)
    return value
