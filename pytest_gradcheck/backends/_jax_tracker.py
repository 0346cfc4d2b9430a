"""Winner tracking for JAX: a jaxpr interpreter that returns the decisions as outputs.

The loss is first traced to a jaxpr. `make_tracked` turns that jaxpr into a plain JAX
function that computes the same outputs and, beside them, one uint64 hash per
*decision site*: every equation whose result depends on a discrete choice made from
the checked inputs (which argument of `max` won, the mask of a comparison, the arg-max
of a reduction or of a pooling window, a sort order, the side of a clamp, the branch
of a `cond`, ...). The function is ordinary JAX code, so it is jitted and vmapped like
the loss itself: a batch of perturbed points yields a batch of site hashes, and only
those hashes (8 bytes per site and point) travel back to the host, where they feed a
`SignatureRecorder`.

Three analyses keep the count of decisions honest, because the engine relaxes the
default tolerance when a function has kinks:

* taint: a decision is recorded only when its operands depend on the checked blocks.
  Comparisons of loop counters, index normalisation (``i < 0`` in ``x[i]``) and a
  dropout mask drawn from a key are not kinks and are not recorded;
* differentiable liveness: a decision is recorded only when its result reaches the
  loss through a path that is not cut by ``stop_gradient``. The shift
  ``x - stop_gradient(max(x))`` inside ``log_softmax`` is not a kink of the loss;
* signs (`_jax_signs`): a decision that cannot change by construction is not
  recorded: the ``abs`` or ``sign`` of a positive value (``logsumexp``'s sum of
  exponentials), a variance clipped at 0 (``max(0, mean(x**2) - mean(x)**2)``).

JAX's own ``logaddexp`` (behind ``softplus``, ``log_sigmoid``, ``mish``) branches to
stay stable but is smooth: its decisions are not recorded (`smooth_library_call`).
A hand-written stable formula is left to the shift test (`Interpreter` with `shift`):
its reductions moved and its two-way decisions flipped, the loss does not change.

The interpreter inlines ``jit``/``pjit``, ``closed_call``, ``remat`` and the primal
functions of ``custom_jvp``/``custom_vjp`` (the tracked evaluation is never
differentiated), and rebuilds ``cond`` (branch index plus the taken branch's
decisions, the others padded with zeros), ``scan`` (each iteration's decisions,
stacked then hashed) and ``while`` (decisions folded into a running hash carried
through the loop, plus the trip count). Other higher-order primitives (``shard_map``,
Pallas kernels, callbacks) are evaluated as they are, without looking inside.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._kinks import shift_offsets
from ._jax_signs import UNKNOWN, Sign, Signs, literal_sign, no_kink
from ._jaxpr import (
    CUSTOM_CALLS,
    ClosedJaxpr,
    Jaxpr,
    Literal,
    call_jaxpr,
    eval_jaxpr,
    forward,
    is_var,
    jaxpr_as_fun,
)

_COMPARISONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})

#: windows with more positions than this are tracked by win counts, not per position
_MAX_WINDOW_POSITIONS = 64

_WHILE_PRIME = 0x100000001B3  # odd, so folding never cancels a single change


#: JAX's own functions that are smooth although they branch, to stay stable:
#: ``max(a, b) + log1p(exp(-|a - b|))`` is ``log(exp(a) + exp(b))`` however a and b
#: compare (softplus, log_sigmoid and mish call it), so its decisions are no kinks
_SMOOTH_LIBRARY = frozenset({"logaddexp", "logaddexp2"})
_JAX_SOURCE = os.path.join(os.path.dirname(os.path.abspath(jax.__file__)), "")


def smooth_library_call(eqn: Any) -> bool:
    """Whether a call-like equation is one of `_SMOOTH_LIBRARY`, defined inside JAX."""
    found = call_jaxpr(eqn)
    info = getattr(found[0], "debug_info", None) if found is not None else None
    src = getattr(info, "func_src_info", None)
    if not isinstance(src, str) or " at " not in src:
        return False
    name, where = src.split(" at ", 1)
    return name in _SMOOTH_LIBRARY and os.path.abspath(where).startswith(_JAX_SOURCE)


def call_name(eqn: Any) -> str | None:
    """The user-facing name of a call-like equation (the jitted or custom function)."""
    name = eqn.params.get("name")
    if isinstance(name, str):
        return name
    found = call_jaxpr(eqn)
    info = getattr(found[0], "debug_info", None) if found is not None else None
    src = getattr(info, "func_src_info", None)
    if isinstance(src, str) and src:
        return src.split(" at ")[0]
    return None


class Unsupported(Exception):
    """A control-flow equation whose parameters this JAX release lays out differently.

    Such an equation is evaluated as it is, without looking inside: its decisions are
    not tracked, and the analyses treat it conservatively.
    """


def parts(obj: Any) -> tuple[Jaxpr, Sequence[Any]]:
    """(jaxpr, consts) of a closed jaxpr, or of an open one without constvars.

    Releases differ: control-flow parameters hold ClosedJaxprs in some, open Jaxprs
    (consts passed as operands) in others.
    """
    if isinstance(obj, ClosedJaxpr):
        return obj.jaxpr, obj.consts
    if isinstance(obj, Jaxpr) and not obj.constvars:
        return obj, ()
    raise Unsupported(type(obj).__name__)


def _count_leaves(tree: Any) -> int:
    if tree is None:
        return 1
    num = getattr(tree, "num_leaves", None)
    if isinstance(num, int):
        return num
    try:
        items = list(tree)
    except TypeError:
        return 1
    return sum(_count_leaves(t) for t in items)


def _scan_layout_fits(eqn: Any, body: Jaxpr, nc: int, ncar: int) -> bool:
    """Whether (nc, ncar) fits a scan's types: consts, carries, then stacked xs/ys."""
    length = eqn.params.get("length")
    n_in, n_out = len(eqn.invars), len(eqn.outvars)
    if not (nc >= 0 and 0 <= ncar <= n_out and nc + ncar <= n_in):
        return False
    if len(body.invars) != n_in or len(body.outvars) != n_out:
        return False

    def aval(v: Any) -> Any:
        return getattr(v, "aval", None)

    def same(a: Any, b: Any) -> bool:
        return (
            getattr(a, "shape", None) is not None
            and getattr(a, "shape", None) == getattr(b, "shape", None)
            and getattr(a, "dtype", None) == getattr(b, "dtype", None)
        )

    def stacked(outer: Any, inner: Any) -> bool:
        shape, inner_shape = getattr(outer, "shape", None), getattr(inner, "shape", None)
        return (
            shape is not None
            and inner_shape is not None
            and tuple(shape) == (length, *inner_shape)
            and getattr(outer, "dtype", None) == getattr(inner, "dtype", None)
        )

    ei, eo, bi, bo = eqn.invars, eqn.outvars, body.invars, body.outvars
    return (
        all(same(aval(ei[i]), aval(bi[i])) for i in range(nc))
        and all(
            same(aval(ei[nc + i]), aval(bi[nc + i]))
            and same(aval(bo[i]), aval(bi[nc + i]))
            and same(aval(eo[i]), aval(bo[i]))
            for i in range(ncar)
        )
        and all(stacked(aval(ei[i]), aval(bi[i])) for i in range(nc + ncar, n_in))
        and all(stacked(aval(eo[i]), aval(bo[i])) for i in range(ncar, n_out))
    )


def scan_layout(eqn: Any) -> tuple[int, int]:
    """(number of consts, number of carries) of a scan equation.

    Read from ``num_consts``/``num_carry`` where the release has them, else from the
    ``ft_in`` trees of newer releases, else inferred from the types (when only one
    layout fits them).
    """
    p = eqn.params
    if "num_consts" in p and "num_carry" in p:
        return int(p["num_consts"]), int(p["num_carry"])
    body = parts(p.get("jaxpr"))[0]
    ft = p.get("ft_in")
    try:
        trees = list(ft) if ft is not None else []
    except TypeError:
        trees = []
    if len(trees) == 3:
        nc, ncar = _count_leaves(trees[0]), _count_leaves(trees[1])
        if _scan_layout_fits(eqn, body, nc, ncar):
            return nc, ncar
    n_in, n_out = len(eqn.invars), len(eqn.outvars)
    fits = [
        (nc, ncar)
        for ncar in range(n_out + 1)
        for nc in range(n_in - ncar + 1)
        if _scan_layout_fits(eqn, body, nc, ncar)
    ]
    if len(fits) == 1:
        return fits[0]
    raise Unsupported(eqn.primitive.name)


def while_layout(eqn: Any) -> tuple[int, int]:
    """(cond consts, body consts) of a while equation."""
    p = eqn.params
    if "cond_nconsts" in p and "body_nconsts" in p:
        return int(p["cond_nconsts"]), int(p["body_nconsts"])
    raise Unsupported(eqn.primitive.name)


def _supported(eqn: Any) -> bool:
    """Whether a cond/scan/while equation has the layout the tracker understands."""
    name = eqn.primitive.name
    p = eqn.params
    try:
        if name == "scan":
            scan_layout(eqn)
            parts(p.get("jaxpr"))
        elif name == "while":
            while_layout(eqn)
            parts(p.get("cond_jaxpr"))
            parts(p.get("body_jaxpr"))
        elif name == "cond":
            branches = p.get("branches")
            if not isinstance(branches, (tuple, list)):
                return False
            for b in branches:
                parts(b)
    except Unsupported:
        return False
    return True


# --------------------------------------------------------------------------- analyses


class Analysis:
    """Taint (depends on a checked block), differentiable liveness and signs, memoised."""

    def __init__(self) -> None:
        self._taint: dict[tuple, tuple[Jaxpr, dict, tuple[bool, ...]]] = {}
        self._live: dict[tuple, tuple[Jaxpr, list, tuple[bool, ...]]] = {}
        self.signs = Signs()  # what values are by construction (see `_jax_signs`)

    def taint(self, jaxpr: Jaxpr, in_taint: Sequence[bool]) -> tuple[dict, tuple[bool, ...]]:
        """Per-variable taint and the taint of the outputs, given the inputs' taint."""
        key = (id(jaxpr), tuple(in_taint))
        hit = self._taint.get(key)
        if hit is None:
            flags = [bool(t) for t in in_taint]
            env, out = forward(jaxpr, flags, lambda v: False, self._eqn_taint, False)
            hit = self._taint[key] = (jaxpr, env, out)
        return hit[1], hit[2]

    def _eqn_taint(self, eqn: Any, ins: list[bool]) -> list[bool]:
        n_out = len(eqn.outvars)
        if not _supported(eqn):
            return [any(ins)] * n_out
        name = eqn.primitive.name
        inner = call_jaxpr(eqn)
        if inner is not None:
            return list(self.taint(inner[0], ins)[1])
        if name == "cond":
            outs = [False] * n_out
            for br in eqn.params["branches"]:
                bo = self.taint(parts(br)[0], ins[1:])[1]
                outs = [a or b for a, b in zip(outs, bo, strict=False)]
            return [True] * n_out if ins[0] else outs
        if name == "scan":
            body_in = self.scan_body_taint(eqn, ins)
            body_out = self.taint(parts(eqn.params["jaxpr"])[0], body_in)[1]
            nc, ncar = scan_layout(eqn)
            return [
                a or b for a, b in zip(body_in[nc : nc + ncar], body_out[:ncar], strict=False)
            ] + list(body_out[ncar:])
        if name == "while":
            carry, pred = self.while_taint(eqn, ins)
            return [True] * n_out if pred else list(carry)
        return [any(ins)] * n_out

    def scan_body_taint(self, eqn: Any, ins: Sequence[bool]) -> tuple[bool, ...]:
        """The taint of a scan body's inputs at the fixpoint over the carry."""
        nc, ncar = scan_layout(eqn)
        body = parts(eqn.params["jaxpr"])[0]
        consts, carry, xs = list(ins[:nc]), list(ins[nc : nc + ncar]), list(ins[nc + ncar :])
        while True:
            out = self.taint(body, consts + carry + xs)[1]
            new = [a or b for a, b in zip(carry, out[:ncar], strict=False)]
            if new == carry:
                return tuple(consts + carry + xs)
            carry = new

    def while_taint(self, eqn: Any, ins: Sequence[bool]) -> tuple[tuple[bool, ...], bool]:
        """The carry's taint at the fixpoint and whether the loop predicate is tainted."""
        cn, bn = while_layout(eqn)
        cconsts, bconsts = list(ins[:cn]), list(ins[cn : cn + bn])
        carry = list(ins[cn + bn :])
        body = parts(eqn.params["body_jaxpr"])[0]
        while True:
            out = self.taint(body, bconsts + carry)[1]
            new = [a or b for a, b in zip(carry, out, strict=False)]
            if new == carry:
                break
            carry = new
        pred = self.taint(parts(eqn.params["cond_jaxpr"])[0], cconsts + carry)[1][0]
        return tuple(carry), pred

    # ---- differentiable liveness (backward)
    def live(self, jaxpr: Jaxpr, out_live: Sequence[bool]) -> tuple[list, tuple[bool, ...]]:
        """Which outputs of each equation reach a live output, not through stop_gradient.

        Returns the per-equation output liveness and the liveness of the inputs.
        """
        key = (id(jaxpr), tuple(out_live))
        hit = self._live.get(key)
        if hit is not None:
            return hit[1], hit[2]
        live: set = set()
        for v, flag in zip(jaxpr.outvars, out_live, strict=False):
            if flag and is_var(v):
                live.add(v)
        per_eqn: list = [None] * len(jaxpr.eqns)
        for i in range(len(jaxpr.eqns) - 1, -1, -1):
            eqn = jaxpr.eqns[i]
            olive = [is_var(v) and v in live for v in eqn.outvars]
            per_eqn[i] = olive
            if not any(olive):
                continue
            for v, flag in zip(eqn.invars, self._eqn_live(eqn, olive), strict=False):
                if flag and is_var(v):
                    live.add(v)
        in_live = tuple(v in live for v in jaxpr.invars)
        self._live[key] = (jaxpr, per_eqn, in_live)
        return per_eqn, in_live

    def _eqn_live(self, eqn: Any, olive: list[bool]) -> list[bool]:
        name = eqn.primitive.name
        n_in = len(eqn.invars)
        if not _supported(eqn):
            return [True] * n_in
        if name == "stop_gradient":
            return [False] * n_in
        inner = call_jaxpr(eqn)
        if inner is not None:
            if name in CUSTOM_CALLS:
                return [True] * n_in  # the user's rule decides what gets a gradient
            return list(self.live(inner[0], olive)[1])
        if name == "cond":
            ops = [False] * (n_in - 1)
            for br in eqn.params["branches"]:
                bl = self.live(parts(br)[0], olive)[1]
                ops = [a or b for a, b in zip(ops, bl, strict=False)]
            return [True, *ops]
        if name == "scan":
            body_out = self.scan_body_live(eqn, olive)
            nc, ncar = scan_layout(eqn)
            bl = self.live(parts(eqn.params["jaxpr"])[0], body_out)[1]
            carry = [a or b for a, b in zip(bl[nc : nc + ncar], olive[:ncar], strict=False)]
            return list(bl[:nc]) + carry + list(bl[nc + ncar :])
        if name == "while":
            cn, bn = while_layout(eqn)
            carry = self.while_carry_live(eqn, olive)
            cl = self.live(parts(eqn.params["cond_jaxpr"])[0], [True])[1]
            bl = self.live(parts(eqn.params["body_jaxpr"])[0], carry)[1]
            return list(cl[:cn]) + list(bl[:bn]) + list(carry)
        return [True] * n_in

    def scan_body_live(self, eqn: Any, olive: Sequence[bool]) -> list[bool]:
        """The liveness of a scan body's outputs at the fixpoint over the carry."""
        nc, ncar = scan_layout(eqn)
        body = parts(eqn.params["jaxpr"])[0]
        carry, ys = list(olive[:ncar]), list(olive[ncar:])
        while True:
            bl = self.live(body, carry + ys)[1]
            new = [a or b for a, b in zip(carry, bl[nc : nc + ncar], strict=False)]
            if new == carry:
                return carry + ys
            carry = new

    def while_carry_live(self, eqn: Any, olive: Sequence[bool]) -> list[bool]:
        """The liveness of a while loop's carry at the fixpoint (the predicate is live)."""
        cn, bn = while_layout(eqn)
        cl = self.live(parts(eqn.params["cond_jaxpr"])[0], [True])[1][cn:]
        carry = [a or b for a, b in zip(olive, cl, strict=False)]
        body = parts(eqn.params["body_jaxpr"])[0]
        while True:
            bl = self.live(body, carry)[1][bn:]
            new = [a or b for a, b in zip(carry, bl, strict=False)]
            if new == carry:
                return carry
            carry = new


def input_dependencies(closed: ClosedJaxpr, names: Sequence[str | None]) -> list[tuple]:
    """Find every custom_vjp/custom_jvp call and the named inputs each operand depends on.

    `names` gives a name per top-level input (None for one that is not a block).
    Returns ``(primitive, function name, [(aval, frozenset of names)] per operand)``,
    the operands without the call's leading consts; used to name the block behind a
    custom rule that JAX rejected.
    """
    found: list[tuple] = []

    def walk(jaxpr: Jaxpr, deps_in: Sequence[frozenset]) -> list[frozenset]:
        env: dict[Any, frozenset] = {}
        for v, d in zip(jaxpr.invars, deps_in, strict=False):
            env[v] = d

        def read(v: Any) -> frozenset:
            return frozenset() if isinstance(v, Literal) else env.get(v, frozenset())

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            inner = call_jaxpr(eqn)
            if eqn.primitive.name in CUSTOM_CALLS:
                skip = int(eqn.params.get("num_consts", 0) or 0)
                ops = [(getattr(v, "aval", None), d) for v, d in zip(eqn.invars, ins, strict=False)]
                found.append((eqn.primitive.name, call_name(eqn) or "?", ops[skip:]))
            if inner is not None:
                outs = walk(inner[0], ins)
            else:
                union = frozenset().union(*ins) if ins else frozenset()
                outs = [union] * len(eqn.outvars)
                for sub in _sub_jaxprs(eqn):
                    walk(sub, [union] * len(sub.invars))
            for v, d in zip(eqn.outvars, outs, strict=False):
                if is_var(v):
                    env[v] = d
        return [read(v) for v in jaxpr.outvars]

    walk(closed.jaxpr, [frozenset([n]) if n else frozenset() for n in names])
    return found


def _sub_jaxprs(eqn: Any) -> list[Jaxpr]:
    subs = []
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, ClosedJaxpr):
                subs.append(item.jaxpr)
            elif isinstance(item, Jaxpr):
                subs.append(item)
    return subs


# --------------------------------------------------------------------------- hashing


def _mix(z: jax.Array) -> jax.Array:
    """The splitmix64 finaliser, elementwise on uint64."""
    z = (z ^ (z >> jnp.uint64(30))) * jnp.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> jnp.uint64(27))) * jnp.uint64(0x94D049BB133111EB)
    return z ^ (z >> jnp.uint64(31))


def _as_u64(d: jax.Array) -> jax.Array:
    """Exact integer image of a decision array, as uint64 (floats by their bits)."""
    d = jnp.asarray(d)
    dt = d.dtype
    if dt == jnp.bool_:
        return d.astype(jnp.uint64)
    if jnp.issubdtype(dt, jnp.floating):
        bits = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[dt.itemsize]
        d = lax.bitcast_convert_type(d, bits)
        dt = d.dtype
    if dt == jnp.uint64:
        return d
    return lax.bitcast_convert_type(d.astype(jnp.int64), jnp.uint64)


def hash_decision(d: jax.Array) -> jax.Array:
    """A uint64 hash of a decision array.

    ``sum(v_j * w_j) mod 2**64`` with odd pseudo-random weights per position: any
    single changed entry always changes the hash (odd weights are invertible modulo
    2**64); several changes collide with probability about 2**-64.
    """
    v = _as_u64(d).reshape(-1)
    n = v.shape[0]
    i = lax.iota(jnp.uint64, n)
    w = _mix(i * jnp.uint64(0x9E3779B97F4A7C15) + jnp.uint64(n + 1)) | jnp.uint64(1)
    return jnp.sum(v * w, dtype=jnp.uint64) + jnp.uint64(n)


# --------------------------------------------------------------------------- decisions


def _three_way(a: Any, b: Any) -> jax.Array:
    return (a > b).astype(jnp.int8) - (a < b).astype(jnp.int8)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _reduce_mask(ins: list, outs: list, params: dict) -> jax.Array:
    x, out = ins[0], outs[0]
    axes = tuple(params["axes"])
    kept = tuple(d for d in range(x.ndim) if d not in axes)
    return x == lax.broadcast_in_dim(out, x.shape, kept)


def _sort_permutation(ins: list, outs: list, params: dict) -> jax.Array:
    num_keys = params.get("num_keys", 1)
    dim = params["dimension"]
    keys = list(ins[:num_keys])
    iota = lax.broadcasted_iota(jnp.int32, keys[0].shape, dim)
    return lax.sort([*keys, iota], dimension=dim, is_stable=True, num_keys=num_keys)[-1]


def _clamp_side(ins: list, outs: list, params: dict) -> jax.Array:
    lo, x, hi = ins
    return (x > hi).astype(jnp.int8) - (x < lo).astype(jnp.int8)


def _window_winners(ins: list, outs: list, params: dict) -> jax.Array:
    """Which element of each pooling window won: one mask per window position."""
    x, out = ins[0], outs[0]
    dims = tuple(params["window_dimensions"])
    strides = tuple(params["window_strides"])
    padding = tuple(params["padding"])
    base = tuple(params.get("base_dilation") or (1,) * x.ndim)
    wdil = tuple(params.get("window_dilation") or (1,) * x.ndim)
    if int(np.prod(dims)) > _MAX_WINDOW_POSITIONS:
        # large windows: how many windows each element won (vjp of the pooling)
        prim = params["_gradcheck_primitive"]
        bind_params = {k: v for k, v in params.items() if not k.startswith("_gradcheck")}
        _, vjp = jax.vjp(lambda y: prim.bind(y, **bind_params), x)
        return vjp(jnp.ones_like(out))[0]
    fill = jnp.asarray(jnp.nan, x.dtype) if _is_float(x) else jnp.asarray(0, x.dtype)
    xp = lax.pad(x, fill, [(lo, hi, b - 1) for (lo, hi), b in zip(padding, base, strict=False)])
    masks = []
    for offs in itertools.product(*[range(k) for k in dims]):
        start = [o * dl for o, dl in zip(offs, wdil, strict=False)]
        limit = [s + (n - 1) * st + 1 for s, n, st in zip(start, out.shape, strides, strict=False)]
        masks.append(lax.slice(xp, start, limit, strides) == out)
    return jnp.stack(masks)


def _convert_decision(ins: list, outs: list, params: dict) -> jax.Array | None:
    """A float rounded to an integer or a bool decides; a float made complex does not."""
    if _is_float(ins[0]) and not jnp.issubdtype(jnp.result_type(outs[0]), jnp.inexact):
        return outs[0]
    return None


def _rem_quotient(ins: list, outs: list, params: dict) -> jax.Array | None:
    if not _is_float(ins[0]):
        return None
    return jnp.round((ins[0] - outs[0]) / ins[1])


def _scatter_winners(ins: list, outs: list, params: dict) -> jax.Array:
    """Which updates won their position in a scatter-max/min (`segment_max`,
    ``x.at[i].max(v)``): the weights JAX's own derivative gives them (ties share one).
    Whether the operand kept a position follows: it does where no update won it."""
    eqn = params["_gradcheck_eqn"]
    indices = ins[1]
    _, vjp = jax.vjp(lambda o, u: _bind(eqn, [o, indices, u])[0], ins[0], ins[2])
    return vjp(jnp.ones_like(outs[0]))[1]


#: primitive -> (which inputs must be tainted, decision function)
_RULES: dict[str, tuple[str, Callable[[list, list, dict], Any]]] = {
    "max": ("any", lambda i, o, p: _three_way(i[0], i[1])),
    "min": ("any", lambda i, o, p: _three_way(i[0], i[1])),
    # which side of the other operand, or at it: an exact tie (x == 0 under
    # where(x > 0, ...)) is a decision of its own, taken by neither side
    **{c: ("any", lambda i, o, p: _three_way(i[0], i[1])) for c in _COMPARISONS},
    "select_n": ("first", lambda i, o, p: i[0]),
    "abs": ("first", lambda i, o, p: _three_way(i[0], 0)),
    "sign": ("first", lambda i, o, p: _three_way(i[0], 0)),
    "argmax": ("first", lambda i, o, p: o[0]),
    "argmin": ("first", lambda i, o, p: o[0]),
    "reduce_max": ("first", _reduce_mask),
    "reduce_min": ("first", _reduce_mask),
    "sort": ("keys", _sort_permutation),
    "top_k": ("first", lambda i, o, p: o[1]),
    "approx_top_k": ("first", lambda i, o, p: o[1]),
    "clamp": ("any", _clamp_side),
    "scatter-max": ("any", _scatter_winners),
    "scatter-min": ("any", _scatter_winners),
    "scatter_max": ("any", _scatter_winners),  # the name in some releases
    "scatter_min": ("any", _scatter_winners),
    "reduce_window_max": ("first", _window_winners),
    "reduce_window_min": ("first", _window_winners),
    "cummax": ("first", lambda i, o, p: i[0] == o[0]),
    "cummin": ("first", lambda i, o, p: i[0] == o[0]),
    "floor": ("first", lambda i, o, p: o[0]),
    "ceil": ("first", lambda i, o, p: o[0]),
    "round": ("first", lambda i, o, p: o[0]),
    "convert_element_type": ("first", _convert_decision),
    "rem": ("any", _rem_quotient),
}

#: the primitives whose decisions are tracked (for documentation and tests)
TRACKED_PRIMITIVES = frozenset(_RULES) | {"cond", "scan", "while"}


def _decision(eqn: Any, ins: list, outs: list, taint: list[bool], signs: list[Sign]) -> Any:
    """The decision of one equation, or None (also where the operands' `signs` show that
    it cannot change: see `_jax_signs.no_kink`)."""
    rule = _RULES.get(eqn.primitive.name)
    if rule is None or no_kink(eqn.primitive.name, signs):
        return None
    if eqn.primitive.name in ("abs", "sign") and jnp.iscomplexobj(ins[0]):
        return None  # a complex modulus (or z / |z|) is smooth away from 0: no branches
    which, fn = rule
    if which == "any":
        hot = any(taint)
    elif which == "keys":
        hot = any(taint[: eqn.params.get("num_keys", 1)])
    else:
        hot = bool(taint) and taint[0]
    if not hot:
        return None
    params = dict(eqn.params)
    params["_gradcheck_primitive"] = eqn.primitive
    params["_gradcheck_eqn"] = eqn
    return fn(ins, outs, params)


# --------------------------------------------------------------------------- interpreter


class _Sites:
    """The decision sites of one (sub)evaluation: names and uint64 hashes."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.values: list[jax.Array] = []

    def add(self, name: str, value: jax.Array) -> None:
        self.names.append(name)
        self.values.append(jnp.asarray(value, jnp.uint64))


def _bind(eqn: Any, invals: list) -> list:
    """Evaluate one equation as JAX itself would."""
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older releases: (subfuns, params)
        subfuns, params = params
        ans = eqn.primitive.bind(*subfuns, *invals, **params)
    else:
        manager = getattr(getattr(eqn, "ctx", None), "manager", None)
        with manager if manager is not None else contextlib.nullcontext():
            ans = eqn.primitive.bind(*invals, **params)
    return list(ans) if eqn.primitive.multiple_results else [ans]


def _spec(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


#: the reductions the shift test moves (see `_kinks`): a scatter-max's result too, the
#: segment maxima that a segment softmax subtracts
SHIFTED_PRIMITIVES = frozenset(
    {"reduce_max", "reduce_min", "scatter-max", "scatter-min", "scatter_max", "scatter_min"}
)


#: the two-way decisions the shift test flips: comparisons inverted (the selects they
#: feed follow), max and min of two values swapped (a ReLU is one), abs and sign negated
FLIPPED_PRIMITIVES = frozenset({"max", "min", "abs", "sign", "select_n"} | _COMPARISONS)


class Interpreter:
    """Evaluates a jaxpr while recording decision sites (see the module docstring).

    With `shift`, it is the shift test's evaluation (see `_kinks`): the value of every
    max/min reduction that is a decision site is moved by `shift_offsets`, and every
    two-way decision site takes its other branch (`FLIPPED_PRIMITIVES`); `ties` then
    holds, per flipped site, whether an entry sat at the tie, where both branches agree
    and the test cannot tell the decision from a smooth choice.
    """

    def __init__(self, analysis: Analysis | None = None, shift: bool = False) -> None:
        self.analysis = analysis or Analysis()
        self.shift = shift
        self._shifts: dict[tuple, int] = {}
        self.ties: list[jax.Array] = []

    def _flipped(self, name: str, invals: list, outs: list) -> list:
        """A two-way decision's other branch, and whether it had an entry at its tie."""
        if name in ("max", "min"):
            a, b = invals
            self.ties.append(jnp.any(a == b))
            return [lax.min(a, b) if name == "max" else lax.max(a, b)]
        if name in ("abs", "sign"):
            self.ties.append(jnp.any(invals[0] == 0))
            return [-outs[0]]
        if name in _COMPARISONS:
            self.ties.append(jnp.any(invals[0] == invals[1]))
            return [jnp.logical_not(outs[0])]
        return outs  # select_n: its predicate, if a comparison's, is already flipped

    def _shifted(self, eqn: Any, out: Any) -> Any:
        """A reduction's value moved; one shift for one reduction of one value."""
        kind = eqn.primitive.name
        key = (kind, *(id(v) for v in eqn.invars), tuple(eqn.params.get("axes", ())))
        ordinal = self._shifts.setdefault(key, len(self._shifts))
        offsets = shift_offsets(int(np.prod(jnp.shape(out))), ordinal)
        return out + jnp.asarray(offsets.reshape(jnp.shape(out)), jnp.result_type(out))

    def run(
        self,
        jaxpr: Jaxpr,
        consts: Sequence[Any],
        args: Sequence[Any],
        in_taint: Sequence[bool],
        out_live: Sequence[bool],
        sites: _Sites,
        prefix: str,
        in_signs: Sequence[Sign] = (),
    ) -> list:
        var_taint, _ = self.analysis.taint(jaxpr, in_taint)
        eqn_live, _ = self.analysis.live(jaxpr, out_live)
        var_signs, _ = self.analysis.signs.run(jaxpr, in_signs)
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, consts, strict=False):
            env[v] = c
        for v, a in zip(jaxpr.invars, args, strict=False):
            env[v] = a

        def read(v: Any) -> Any:
            return v.val if isinstance(v, Literal) else env[v]

        def tainted(v: Any) -> bool:
            return False if isinstance(v, Literal) else var_taint.get(v, False)

        def sign(v: Any) -> Sign:
            return literal_sign(v) if isinstance(v, Literal) else var_signs.get(v, UNKNOWN)

        for eqn, olive in zip(jaxpr.eqns, eqn_live, strict=False):
            invals = [read(v) for v in eqn.invars]
            taint = [tainted(v) for v in eqn.invars]
            name = eqn.primitive.name
            inner = call_jaxpr(eqn)
            hot = any(olive) and _supported(eqn)
            if inner is not None and hot and any(taint) and not smooth_library_call(eqn):
                label = call_name(eqn)
                sub = f"{prefix}{name}" + (f"({label})" if label else "") + "/"
                signs = [sign(v) for v in eqn.invars]
                outs = self.run(inner[0], inner[1], invals, taint, olive, sites, sub, signs)
            elif name == "cond" and hot and any(taint):
                outs = self._cond(eqn, invals, taint, olive, sites, prefix)
            elif name == "scan" and hot and any(taint):
                outs = self._scan(eqn, invals, taint, olive, sites, prefix)
            elif name == "while" and hot and any(taint):
                outs = self._while(eqn, invals, taint, olive, sites, prefix)
            else:
                outs = _bind(eqn, invals)
                if hot:
                    d = _decision(eqn, invals, outs, taint, [sign(v) for v in eqn.invars])
                    if d is not None:
                        if self.shift and name in SHIFTED_PRIMITIVES:
                            outs = [self._shifted(eqn, outs[0])]
                        elif self.shift and name in FLIPPED_PRIMITIVES:
                            outs = self._flipped(name, invals, outs)
                        sites.add(prefix + name, hash_decision(d))
            for v, val in zip(eqn.outvars, outs, strict=False):
                if is_var(v):
                    env[v] = val
        return [read(v) for v in jaxpr.outvars]

    # ---- control flow
    def _cond(self, eqn, invals, taint, olive, sites, prefix) -> list:
        index, ops = invals[0], invals[1:]
        branches = eqn.params["branches"]
        path = f"{prefix}cond/"

        def branch_fn(k: int, names: list[str]) -> Callable:
            br_jaxpr, br_consts = parts(branches[k])

            def fn(*operands: Any) -> tuple[list, list]:
                s = _Sites()
                outs = self.run(br_jaxpr, br_consts, operands, taint[1:], olive, s, f"{path}{k}/")
                names[:] = s.names
                return outs, s.values

            return fn

        names_per = [[] for _ in branches]
        specs = [_spec(x) for x in ops]
        counts = []
        for k in range(len(branches)):
            jax.eval_shape(branch_fn(k, names_per[k]), *specs)
            counts.append(len(names_per[k]))
        if taint[0]:
            sites.add(f"{prefix}cond", hash_decision(index))
        if not any(counts):
            return _bind(eqn, invals)
        total = sum(counts)
        offsets = list(itertools.accumulate([0, *counts[:-1]]))

        def padded(k: int) -> Callable:
            fn = branch_fn(k, [])

            def wrapped(*operands: Any) -> tuple[list, list]:
                outs, values = fn(*operands)
                zero = jnp.zeros((), jnp.uint64)
                before, after = offsets[k], total - offsets[k] - counts[k]
                return outs, [zero] * before + list(values) + [zero] * after

            return wrapped

        outs, values = lax.switch(index, [padded(k) for k in range(len(branches))], *ops)
        for k in range(len(branches)):
            for name, value in zip(
                names_per[k], values[offsets[k] : offsets[k] + counts[k]], strict=False
            ):
                sites.add(name, value)
        return list(outs)

    def _scan(self, eqn, invals, taint, olive, sites, prefix) -> list:
        p = eqn.params
        nc, ncar = scan_layout(eqn)
        body_jaxpr, body_consts = parts(p["jaxpr"])
        consts, init, xs = invals[:nc], invals[nc : nc + ncar], invals[nc + ncar :]
        body_taint = self.analysis.scan_body_taint(eqn, taint)
        body_live = self.analysis.scan_body_live(eqn, olive)
        names: list[str] = []

        def step(carry: list, x: Any) -> tuple[list, tuple[list, list]]:
            s = _Sites()
            args = list(consts) + list(carry) + (list(x) if x is not None else [])
            outs = self.run(
                body_jaxpr, body_consts, args, body_taint, body_live, s, f"{prefix}scan/"
            )
            names[:] = s.names
            return outs[:ncar], (outs[ncar:], s.values)

        carry, (ys, stacks) = lax.scan(
            step,
            list(init),
            list(xs) if xs else None,
            length=p["length"],
            reverse=p["reverse"],
            unroll=p.get("unroll", 1),
        )
        for name, stack in zip(names, stacks, strict=False):
            sites.add(name, hash_decision(stack))
        return list(carry) + list(ys)

    def _while(self, eqn, invals, taint, olive, sites, prefix) -> list:
        p = eqn.params
        cn, bn = while_layout(eqn)
        cconsts, bconsts, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
        carry_taint, pred_taint = self.analysis.while_taint(eqn, taint)
        carry_live = self.analysis.while_carry_live(eqn, olive)
        body_jaxpr, body_consts = parts(p["body_jaxpr"])
        cond_jaxpr, cond_consts = parts(p["cond_jaxpr"])
        cond_taint = [False] * len(cond_jaxpr.invars)
        body_taint = tuple(taint[cn : cn + bn]) + tuple(carry_taint)
        names: list[str] = []

        def run_body(carry: Sequence[Any]) -> tuple[list, list]:
            s = _Sites()
            outs = self.run(
                body_jaxpr,
                body_consts,
                list(bconsts) + list(carry),
                body_taint,
                carry_live,
                s,
                f"{prefix}while/",
            )
            names[:] = s.names
            return outs, s.values

        jax.eval_shape(lambda *c: run_body(c)[1], *[_spec(x) for x in init])
        n_sites = len(names)
        if n_sites == 0 and not pred_taint:
            return _bind(eqn, invals)

        def loop_cond(state: tuple) -> Any:
            carry, _, _ = state
            args = list(cconsts) + list(carry)
            return self.run(cond_jaxpr, cond_consts, args, cond_taint, [True], _Sites(), "")[0]

        def loop_body(state: tuple) -> tuple:
            carry, trips, accs = state
            new, values = run_body(carry)
            prime = jnp.uint64(_WHILE_PRIME)
            accs = [a * prime + v for a, v in zip(accs, values, strict=False)]
            return list(new), trips + jnp.uint64(1), accs

        zero = jnp.zeros((), jnp.uint64)
        carry, trips, accs = lax.while_loop(
            loop_cond, loop_body, (list(init), zero, [zero] * n_sites)
        )
        if pred_taint:
            sites.add(f"{prefix}while", trips)
        for name, acc in zip(names, accs, strict=False):
            sites.add(name, acc)
        return list(carry)


class Tracked:
    """``fn(consts, *inputs) -> (outputs, site hashes)``: see `make_tracked`.

    After a call (a trace, under jit), `names` holds the sites' names, in hash order.
    """

    def __init__(self, jaxpr: Jaxpr, in_taint: Sequence[bool], shift: bool) -> None:
        self.jaxpr, self.in_taint, self.shift = jaxpr, tuple(in_taint), shift
        self.names: tuple[str, ...] = ()
        #: after a call with `shift`: whether a flipped decision had an entry at a tie
        self.tied: Any = False

    def __call__(self, consts: Sequence[Any], *inputs: Any) -> tuple[list, jax.Array]:
        sites = _Sites()
        interp = Interpreter(shift=self.shift)
        live = (True,) * len(self.jaxpr.outvars)
        outs = interp.run(self.jaxpr, consts, inputs, self.in_taint, live, sites, "")
        self.names = tuple(sites.names)
        self.tied = jnp.any(jnp.stack(interp.ties)) if interp.ties else jnp.bool_(False)
        hashes = jnp.stack(sites.values) if sites.values else jnp.zeros((0,), jnp.uint64)
        return outs, hashes


def make_tracked(jaxpr: Jaxpr, in_taint: Sequence[bool], shift: bool = False) -> Tracked:
    """Turn the open `jaxpr` into ``fn(consts, *inputs) -> (outputs, site hashes)``.

    The site hashes are a uint64 vector, one entry per decision site, in an order
    fixed by the jaxpr and `in_taint` alone (the backend identifies sites by position). The
    consts are arguments, not captured: a compiled `fn` serves any const values.
    Every output counts as live. `fn` is pure JAX: jit and vmap it. With `shift`, the
    outputs are the shift test's (see `Interpreter`).
    """
    return Tracked(jaxpr, in_taint, shift)


def eval_open(jaxpr: Jaxpr, consts: Sequence[Any], *args: Any) -> list:
    """Evaluate an open jaxpr at the given consts and inputs (which may be tracers)."""
    if eval_jaxpr is not None:
        return list(eval_jaxpr(jaxpr, list(consts), *args))
    return list(jaxpr_as_fun(ClosedJaxpr(jaxpr, list(consts)))(*args))  # pragma: no cover


# --------------------------------------------------------------------------- fingerprints

#: parameters of custom_jvp/custom_vjp calls that hold the user's rules. XLA never
#: sees them: such a call is lowered from its primal ``call_jaxpr`` alone, and the
#: rules only matter when the jaxpr is differentiated.
_RULE_PARAMS = frozenset(
    {"jvp_jaxpr_fun", "jvp_jaxpr_thunk", "jvp", "fwd_jaxpr_thunk", "fwd", "bwd", "out_trees"}
)
#: NumPy arrays up to this size are compared by content; a program holding a larger
#: one is never reused (its contents may change in place between checks)
_CONTENT_BYTES = 4 << 20
_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def fingerprint(jaxpr: Jaxpr, rules: bool = True) -> tuple[tuple, list, bool]:
    """What makes the code XLA generates for evaluating `jaxpr`: ``(key, keep, rules)``.

    `key` is hashable and equal for two jaxprs only when evaluating them (without
    differentiating) generates the same program, for any values of the constvars,
    which are inputs of the program, not part of it. It is built by walking every
    equation, sub-jaxprs included: the wiring (each use of a variable by the position
    of its definition), each variable's type, literals by content, the primitive
    objects, the equation contexts, every parameter and each jaxpr's effects. (The
    printed form, ``str(jaxpr)``, which earlier versions added to the key, holds
    nothing more and cost as much as the walk.) A parameter that is a plain value counts by its
    ``repr``, a NumPy array or scalar by its content (a NumPy array too large to
    compare makes the key equal to no other, since it may be changed in place), a
    jaxpr by its own walk, and any other object (the consts of inner closed jaxprs,
    callbacks, shardings, ...) as itself where it is hashable (functions are equal
    only to themselves) or by identity where it is not (JAX arrays are immutable):
    `keep` holds those objects, so that their ids stay theirs while the key lives.

    The rules of custom_jvp/custom_vjp calls (`_RULE_PARAMS`) are objects made anew
    by every trace. XLA lowers such a call from its primal function, so they only
    matter for a jaxpr that is differentiated. A custom_jvp rule counts by what it
    computes (`_jvp_rule`): the jaxpr of its JVP at each pattern of zero tangents that
    differentiation can ask for, walked like any jaxpr, and its constants by content. So
    the gradient program of an f using `jax.nn.relu`, whose rule is a custom_jvp, is
    keyed and reused like any other, and a rule that computes something else (a
    global or a closure it reads has changed) makes another key. A rule that cannot be
    read so (a custom_vjp rule, whose backward is Python run at transposition; a rule
    whose JVP does not trace) is left out, and `rules` says so: such a jaxpr must not
    be differentiated inside a program keyed on it, whose key must then be the jaxpr
    of the derivative. With `rules=False` (the walk of a rule's own JVP), every rule is
    left out without saying so: the calls inside a JVP rule are evaluated, not
    differentiated, by a first-order derivative.
    """
    items: list[Any] = []
    keep: list[Any] = []
    found = [False]

    def value(x: Any) -> None:
        if isinstance(x, _PLAIN):
            items.append((type(x).__name__, repr(x)))
            return
        if isinstance(x, (np.ndarray, np.generic)):
            if x.dtype != object and x.nbytes <= _CONTENT_BYTES:
                items.append(("nd", type(x).__name__, x.dtype.str, x.shape, x.tobytes()))
                return
            if isinstance(x, np.ndarray):
                # mutable in place, not compared by content: equal to no other key
                items.append(("never", object()))
                return
        try:
            hash(x)
        except Exception:
            keep.append(x)
            items.append(("id", id(x)))
        else:
            items.append(x)

    def param(x: Any) -> None:
        if isinstance(x, Jaxpr):
            walk(x)
        elif isinstance(x, ClosedJaxpr):
            walk(x.jaxpr)
            items.append(("consts", len(x.consts)))
            for c in x.consts:
                value(c)
        elif isinstance(x, (tuple, list)):
            items.append((type(x).__name__, len(x)))
            for y in x:
                param(y)
        elif isinstance(x, dict):
            items.append(("dict", len(x)))
            for k, y in x.items():
                param(k)
                param(y)
        else:
            value(x)

    def literal(v: Any) -> None:
        try:
            lit = np.asarray(v.val)
        except Exception:  # an extended dtype (PRNG keys): the object itself
            lit = None
        if lit is None or lit.dtype == object:
            value(v.val)
        else:
            items.append(("lit", lit.dtype.str, lit.shape, lit.tobytes()))
        value(getattr(v, "aval", None))

    def walk(j: Jaxpr) -> None:
        index: dict[Any, int] = {}

        def define(vs: Sequence[Any]) -> None:
            for v in vs:
                value(getattr(v, "aval", None))
                if is_var(v):
                    index[v] = len(index)
                else:
                    items.append(("drop",))

        def use(vs: Sequence[Any]) -> None:
            for v in vs:
                if isinstance(v, Literal):
                    literal(v)
                else:
                    items.append(("var", index.get(v, -1)))

        items.append(("jaxpr", len(j.constvars), len(j.invars), len(j.eqns)))
        items.append(("effects", len(j.effects)))
        for effect in sorted(j.effects, key=repr):
            value(effect)
        define(j.constvars)
        define(j.invars)
        for eqn in j.eqns:
            value(eqn.primitive)
            use(eqn.invars)
            value(getattr(eqn, "ctx", None))
            custom = eqn.primitive.name in CUSTOM_CALLS
            for k, x in eqn.params.items():
                items.append(("param", k))
                if custom and k in _RULE_PARAMS and not isinstance(x, _PLAIN):
                    rule = _jvp_rule(eqn, k, x) if rules else None
                    if rule is None:
                        found[0] = found[0] or rules
                    else:
                        items.append(rule[0])
                        keep.extend(rule[1])
                    continue
                param(x)
            define(eqn.outvars)
        items.append(("out", len(j.outvars)))
        use(j.outvars)

    walk(jaxpr)
    return tuple(items), keep, found[0]


#: the JVP rule parameters of a custom_jvp call, by JAX version: a function of the
#: tangents' zero pattern returning (jvp jaxpr, its consts, the outputs' zero pattern)
_JVP_RULE_PARAMS = frozenset({"jvp_jaxpr_fun", "jvp_jaxpr_thunk"})
#: most inputs of a custom_jvp call with symbolic zeros whose every zero pattern is
#: traced for its key; past it, the rule is left out (as before rules were keyed)
_MAX_PATTERN_INPUTS = 4


def _jvp_rule(eqn: Any, name: str, rule: Any) -> tuple[tuple, list] | None:
    """``(key, keep)`` of a custom_jvp call's rule: what its JVP computes; None where it
    cannot be read so (then the rule is left out of the fingerprint, as it was before).

    Differentiation calls the rule only where some tangent is not zero, and, unless the
    call has ``symbolic_zeros``, with every tangent made a dense zero: the one pattern
    "no tangent is zero". With symbolic zeros, each pattern but "all zero" can occur,
    so each is traced (a few inputs at most). The rule's function memoises each
    pattern's trace, so differentiating this jaxpr later traces nothing again. Its
    constants are compared by content (they are new arrays at every trace).
    """
    if eqn.primitive.name != "custom_jvp_call" or name not in _JVP_RULE_PARAMS:
        return None
    try:
        call = getattr(rule, "call_wrapped", None) or rule
        n = len(eqn.invars) - int(eqn.params.get("num_consts", 0))
        if eqn.params.get("symbolic_zeros", False):
            if n > _MAX_PATTERN_INPUTS:
                return None
            patterns = [p for p in itertools.product((False, True), repeat=n) if not all(p)]
        else:
            patterns = [(False,) * n]
        items: list[Any] = [("jvp rule", n)]
        keep: list[Any] = []
        for pattern in patterns:
            out = call(*pattern)
            if not (isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], Jaxpr)):
                return None
            jvp, consts, out_zeros = out
            key, kept, _ = fingerprint(jvp, rules=False)
            items.append((pattern, key, tuple(bool(z) for z in out_zeros), len(consts)))
            keep.extend(kept)
            for c in consts:
                a = np.asarray(c)
                if a.dtype == object or a.nbytes > _CONTENT_BYTES:
                    return None
                items.append(("const", a.dtype.str, a.shape, a.tobytes()))
        return tuple(items), keep
    except Exception:  # a JAX whose rules take other arguments: left out, as before
        return None


def safe_fingerprint(jaxpr: Jaxpr) -> tuple[tuple, list, bool]:
    """`fingerprint`, or where the jaxpr holds something it cannot walk, a key equal
    to no other (the programs are then compiled for this check alone, as they would
    be without the reuse), with `rules` set so that nothing is differentiated under it.
    """
    try:
        return fingerprint(jaxpr)
    except Exception:
        return ("never", object()), [], True


def live_inputs(closed: ClosedJaxpr, out_live: Sequence[bool]) -> tuple[bool, ...]:
    """Which inputs of `closed` reach a live output through a differentiable path."""
    return Analysis().live(closed.jaxpr, out_live)[1]
