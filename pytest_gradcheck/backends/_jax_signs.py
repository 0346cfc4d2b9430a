"""What a jaxpr's values are known to be by construction: positive, non-negative, a
constant, or a moment of another value.

The JAX tracker asks it before recording a decision whose outcome cannot change:

* the ``abs`` or ``sign`` of a positive value (``logsumexp`` takes the ``abs`` of its sum
  of exponentials);
* the ``max`` of a non-negative value and a constant at most 0: the variance clipped at
  0, as ``jax.nn.standardize`` and flax's LayerNorm compute it,
  ``max(0, mean(x**2) - mean(x)**2)``. The difference is a variance, never negative in
  exact arithmetic; round-off makes it so only for nearly constant features (the
  reason for the clip), where the clip then decides, untracked.

Sound for finite values, not complete: what it cannot show is unknown, and the decision
is recorded as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ._jaxpr import Jaxpr, call_jaxpr, forward, is_var


class Moment(NamedTuple):
    """A value built from one variable x: x**2 ("sq"), a sum or mean of x ("sum",
    "mean") or of x**2 ("sumsq", "meansq"), or the square of a mean of x ("sqmean")."""

    kind: str
    var: int  # id of x's variable
    axes: tuple[int, ...] = ()  # the axes a sum or mean reduced
    count: int = 0  # how many entries each reduced value sums
    ops: tuple = ()  # the shape ops applied since the reduction, in order


class Sign(NamedTuple):
    """What is known of one value."""

    positive: bool = False  # > 0 wherever finite
    nonneg: bool = False  # >= 0
    const: float | None = None  # a known scalar (a literal, or converted from one)
    moment: Moment | None = None


UNKNOWN = Sign()
_POSITIVE = Sign(True, True)

#: positive wherever finite, whatever the operand
_ALWAYS_POSITIVE = frozenset({"exp", "exp2", "logistic"})
#: shape ops that keep each element's value: what is known passes through
_KEEP = frozenset(
    {"broadcast_in_dim", "reshape", "squeeze", "expand_dims", "copy", "copy_p"}
    | {"reduce_precision", "convert_element_type"}
)
#: ops that keep values but reorder or select them: the sign passes, not the moment
_SELECT = frozenset({"transpose", "slice", "rev", "gather", "dynamic_slice"})
#: positive (non-negative) where all operands are
_ALL = frozenset({"add", "mul", "min", "concatenate", "pad", "cumsum", "cumprod", "cummin"})


def literal_sign(v: Any) -> Sign:
    """What a literal operand is."""
    try:
        value = np.asarray(v.val)
    except Exception:  # an object that is not an array
        return UNKNOWN
    if value.size == 0 or value.dtype.kind not in "biuf":
        return UNKNOWN
    flat = value.reshape(-1)
    const = float(flat[0]) if bool(np.all(flat == flat[0])) else None
    return Sign(bool(np.all(value > 0)), bool(np.all(value >= 0)), const)


def no_kink(name: str, signs: Sequence[Sign]) -> bool:
    """Whether a decision of `name` on operands of these signs can never change.

    ``abs``/``sign`` of a positive value; ``max(c, v)`` (either order) with a constant
    c <= 0 and v >= 0; ``clamp(lo, v, hi)`` with lo <= 0 <= v and no upper bound.
    """
    if name in ("abs", "sign"):
        return bool(signs) and signs[0].positive
    if name == "max" and len(signs) == 2:
        a, b = signs
        return (_at_most_zero(a) and b.nonneg) or (_at_most_zero(b) and a.nonneg)
    if name == "clamp" and len(signs) == 3:
        lo, x, hi = signs
        return _at_most_zero(lo) and x.nonneg and hi.const == math.inf
    return False


def _at_most_zero(s: Sign) -> bool:
    return s.const is not None and s.const <= 0


class Signs:
    """The sign analysis of jaxprs, memoised (a forward pass; calls are followed)."""

    def __init__(self) -> None:
        self._memo: dict[tuple, tuple[Jaxpr, dict, tuple[Sign, ...]]] = {}

    def run(self, jaxpr: Jaxpr, in_signs: Sequence[Sign]) -> tuple[dict, tuple[Sign, ...]]:
        """Per-variable signs and the outputs', given the inputs'."""
        key = (id(jaxpr), tuple(in_signs))
        hit = self._memo.get(key)
        if hit is None:
            env, out = forward(jaxpr, in_signs, literal_sign, self._eqn, UNKNOWN)
            hit = self._memo[key] = (jaxpr, env, out)
        return hit[1], hit[2]

    def _eqn(self, eqn: Any, ins: list[Sign]) -> list[Sign]:
        inner = call_jaxpr(eqn)
        if inner is not None:
            return self._call(eqn, inner[0], ins)
        if len(eqn.outvars) != 1 or not ins:
            return [UNKNOWN] * len(eqn.outvars)
        return [_rule(eqn, ins)]

    def _call(self, eqn: Any, inner: Jaxpr, ins: list[Sign]) -> list[Sign]:
        """An inner jaxpr's outputs, its moments told in the caller's variables: of an
        inner input, of the caller's operand; of another inner variable, unknown (the
        caller cannot name it); of a caller's variable passed in, unchanged."""
        rename = {id(v): id(o) for v, o in zip(inner.invars, eqn.invars, strict=False)}
        local = {id(v) for e in inner.eqns for v in e.outvars} | {id(v) for v in inner.constvars}
        outs = []
        for s in self.run(inner, ins)[1]:
            m = s.moment
            if m is not None and m.var in rename:
                s = s._replace(moment=m._replace(var=rename[m.var]))
            elif m is not None and m.var in local:
                s = s._replace(moment=None)
            outs.append(s)
        return outs


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(getattr(getattr(v, "aval", None), "shape", ()))


def _rule(eqn: Any, ins: list[Sign]) -> Sign:
    name = eqn.primitive.name
    x = ins[0]
    if name in _ALWAYS_POSITIVE:
        return _POSITIVE
    if name in _KEEP:
        if name == "convert_element_type":
            dtype = getattr(getattr(eqn.outvars[0], "aval", None), "dtype", None)
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                return UNKNOWN
        moment = x.moment
        if moment is not None and moment.kind != "sq":  # a shape op after a reduction
            dims = tuple(eqn.params.get("broadcast_dimensions", ()))
            moment = moment._replace(ops=(*moment.ops, (name, _shape(eqn.outvars[0]), dims)))
        return x._replace(moment=moment)
    if name in _SELECT:
        return Sign(x.positive, x.nonneg)
    if name in ("square", "integer_pow") or (
        name == "mul" and len(eqn.invars) == 2 and eqn.invars[0] is eqn.invars[1]
    ):
        if name == "integer_pow" and eqn.params.get("y", 1) % 2:
            return Sign(x.positive, x.positive)  # an odd power keeps the sign
        if x.moment is not None and x.moment.kind == "mean":
            return Sign(x.positive, True, None, x.moment._replace(kind="sqmean"))
        var = eqn.invars[0]
        return Sign(x.positive, True, None, Moment("sq", id(var)) if is_var(var) else None)
    if name == "reduce_sum":
        axes = tuple(eqn.params.get("axes", ()))
        shape = _shape(eqn.invars[0])
        count = math.prod(shape[a] for a in axes) if shape else 0
        var = eqn.invars[0]
        moment = None
        if x.moment is not None and x.moment.kind == "sq" and not x.moment.ops:
            moment = Moment("sumsq", x.moment.var, axes, count)
        elif x.moment is None and is_var(var):
            moment = Moment("sum", id(var), axes, count)
        return Sign(x.positive and count > 0, x.nonneg, None, moment)
    if name in ("reduce_max", "reduce_min"):
        shape = _shape(eqn.invars[0])
        full = all(shape[a] > 0 for a in eqn.params.get("axes", ())) if shape else True
        return Sign(x.positive and full, x.nonneg and full)
    if name == "div" and len(ins) == 2:
        d = ins[1]
        sign = Sign(x.positive and d.positive, x.nonneg and d.positive)
        m = x.moment
        if m is not None and m.kind in ("sum", "sumsq") and m.count and d.const == m.count:
            sign = sign._replace(moment=m._replace(kind="mean" if m.kind == "sum" else "meansq"))
        return sign
    if name == "sub" and len(ins) == 2:
        a, b = ins[0].moment, ins[1].moment
        if (
            a is not None
            and b is not None
            and (a.kind, b.kind) == ("meansq", "sqmean")
            and a._replace(kind="") == b._replace(kind="")
        ):
            return Sign(False, True)  # mean(x**2) - mean(x)**2: a variance
        return UNKNOWN
    if name in ("sqrt", "rsqrt", "cbrt", "pow"):
        return Sign(x.positive, x.positive or (name == "sqrt" and x.nonneg))
    if name == "abs":
        return Sign(x.positive, True)
    if name == "max":
        return Sign(any(s.positive for s in ins), any(s.nonneg for s in ins))
    if name in _ALL:
        return Sign(all(s.positive for s in ins), all(s.nonneg for s in ins))
    if name == "select_n":
        cases = ins[1:]
        return Sign(all(s.positive for s in cases), all(s.nonneg for s in cases))
    return UNKNOWN
