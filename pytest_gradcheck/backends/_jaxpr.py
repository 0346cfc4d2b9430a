"""What the JAX tracker and its analyses share: reading jaxprs across JAX releases.

The jaxpr types (where each release keeps them), the call-like equations whose inner
jaxpr maps the call's inputs and outputs one to one, and which operands are variables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

# jaxpr_as_fun evaluates open jaxprs where jax.core.eval_jaxpr is missing
try:
    from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, jaxpr_as_fun
except ImportError:  # pragma: no cover - older releases
    from jax.core import ClosedJaxpr, Jaxpr, Literal, jaxpr_as_fun  # type: ignore

try:  # a public evaluator of open jaxprs (consts passed apart)
    from jax.core import eval_jaxpr
except ImportError:  # pragma: no cover - releases without it
    eval_jaxpr = None

try:  # DropVar lives in jax.extend.core in current releases
    from jax.extend.core import DropVar
except ImportError:  # pragma: no cover - older releases
    from jax._src.core import DropVar  # type: ignore[no-redef]

__all__ = [
    "CUSTOM_CALLS",
    "ClosedJaxpr",
    "DropVar",
    "Jaxpr",
    "Literal",
    "all_eqns",
    "call_jaxpr",
    "eval_jaxpr",
    "forward",
    "is_var",
    "jaxpr_as_fun",
]

#: primitives that call one inner jaxpr with the same inputs and outputs as the call
_CALL_PARAMS = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}

#: calls whose gradient is defined by a user rule, not by the primal function
CUSTOM_CALLS = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


def call_jaxpr(eqn: Any) -> tuple[Jaxpr, Sequence[Any]] | None:
    """The inner jaxpr and consts of a call-like equation, if it maps inputs 1:1."""
    key = _CALL_PARAMS.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    inner = eqn.params[key]
    if isinstance(inner, ClosedJaxpr):
        jaxpr, consts = inner.jaxpr, inner.consts
    elif isinstance(inner, Jaxpr) and not inner.constvars:
        jaxpr, consts = inner, ()
    else:
        return None
    if len(jaxpr.invars) != len(eqn.invars) or len(jaxpr.outvars) != len(eqn.outvars):
        return None
    return jaxpr, consts


def is_var(v: Any) -> bool:
    """Whether an equation's operand or result is a variable (not a literal or dropped)."""
    return not isinstance(v, (Literal, DropVar))


def forward(
    jaxpr: Jaxpr,
    inputs: Sequence[Any],
    literal: Callable[[Any], Any],
    rule: Callable[[Any, list[Any]], list[Any]],
    default: Any,
) -> tuple[dict[Any, Any], tuple[Any, ...]]:
    """A forward analysis: each variable's value, from its equation's `rule` over its
    operands' (a literal's from `literal`, an unknown one `default`), and the outputs'."""
    env: dict[Any, Any] = dict.fromkeys(jaxpr.constvars, default)
    env.update(zip(jaxpr.invars, inputs, strict=False))

    def read(v: Any) -> Any:
        return literal(v) if isinstance(v, Literal) else env.get(v, default)

    for eqn in jaxpr.eqns:
        outs = rule(eqn, [read(v) for v in eqn.invars])
        for v, value in zip(eqn.outvars, outs, strict=False):
            if is_var(v):
                env[v] = value
    return env, tuple(read(v) for v in jaxpr.outvars)


def _inner_jaxprs(value: Any) -> list[Jaxpr]:
    """The jaxprs in one equation parameter (a jaxpr, a closed one, or a tuple of them)."""
    if isinstance(value, ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _inner_jaxprs(v)]
    return []


def all_eqns(jaxpr: Jaxpr) -> Iterator[Any]:
    """Every equation of `jaxpr` and of the jaxprs inside it (calls, loops, branches)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for inner in _inner_jaxprs(value):
                yield from all_eqns(inner)
