"""`gradcheck()`: resolve the options, pick the backend, run the engine, record, raise."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

from ._context import TestContext, current
from ._notices import alarming
from ._options import check_names, resolve
from ._result import GradcheckError, GradcheckWarning, Result


def gradcheck(
    f: Callable[..., Any],
    *args: Any,
    params: Any = None,
    grad: Callable[..., Any] | None = None,
    raise_on_fail: bool = True,
    **options: Any,
) -> Result:
    """Check the analytic gradient of `f` against centered finite differences in float64.

    `f(*args)` returns the loss: a scalar, a mapping of named scalar terms (checked as
    their sum and each on its own), or an array (reduced as ``sum(out * w)`` with a
    fixed random `w`). The blocks checked are the floating leaves of `args` and the
    floating entries of `params` (a `torch.nn.Module`, a dict or a list that f reads,
    perturbed in place and restored exactly); integer, boolean and PRNG-key leaves are
    passed through, never perturbed. Tensors get their gradient from autograd, JAX
    arrays from `jax.vjp`. NumPy functions need `grad`, a callable with f's signature
    returning the gradients with the structure of `args` (a tuple, one entry per
    positional argument, None for a non-floating one; with one argument, the gradient
    itself may do) or, with `params`, a dict keyed like `params`; where f returns named
    terms, a mapping from term name to such gradients; where f returns an array, `grad`
    is called with the keyword `dout` (the projection `w`, shaped like the output) and
    returns the vector-Jacobian product.

    Every RNG is reset to `seed` before each evaluation, a few coordinates of every
    block and one random direction per block are checked, and kink crossings are
    detected by tracking the winners of max-like operations. Options (`eps`,
    `samples_per_block`, `seed`, `kinks`, `tolerance`, `burn_in`, `device`, `wrt`,
    `mode`, `burn_in_lr`, `scale`, `sweep`, `dominance`, `burn_in_step`, `batch`) resolve as:
    this call > the test's ``gradcheck`` marker > CLI flag > ini key > default.

    Returns the `Result`. When the check fails and `raise_on_fail` is true, raises
    `GradcheckError` (an `AssertionError`) listing the worst coordinates and the
    check's warnings. A check that returns issues each of its `Result.warnings` as a
    `GradcheckWarning` (in pytest: in the warnings summary, attributed to the test).
    Bad input raises `ValueError` or `TypeError` naming the block or argument.
    """
    __tracebackhide__ = True
    ctx = current()
    try:
        if not isinstance(raise_on_fail, bool):  # "no" or 0 would read as true or false
            raise TypeError(
                f"gradcheck: raise_on_fail must be True or False, got {raise_on_fail!r}"
            )
        result = _check(f, args, params, grad, options, ctx)
    except Exception as error:  # bad input, or f itself raised: the check has no result
        if ctx is not None:
            ctx.record_error(error)
        raise
    if not result.passed and raise_on_fail:
        _done(result, ctx, None)
        raise GradcheckError(result)  # its message lists the warnings
    try:
        _warn(result)
    except BaseException as error:  # a warnings filter made a GradcheckWarning an error
        raised = str(error) if isinstance(error, GradcheckWarning) else None
        _done(result, ctx, raised)
        raise
    _done(result, ctx, None)
    return result


def _check(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    params: Any,
    grad: Callable[..., Any] | None,
    options: dict[str, Any],
    ctx: TestContext | None,
) -> Result:
    """Resolve the options, run the check on its backend and return the `Result`."""
    __tracebackhide__ = True
    if not callable(f):
        raise TypeError(f"gradcheck: f must be callable, got {type(f).__name__}")
    check_names(options, "the gradcheck call")
    layers = (options, *(ctx.layers if ctx else ()))
    opts = resolve(*layers)

    from ._engine import run_check
    from .backends import detect_framework, load_backend
    from .backends._base import Settings

    framework = detect_framework(args, params)
    backend_cls = load_backend(framework)
    settings = Settings(seed=opts.seed, device=opts.device, wrt=opts.wrt, batch=opts.batch)
    backend = backend_cls(f, args, params, grad, settings)
    try:
        return run_check(backend, opts, framework)
    finally:
        backend.close()


def _done(result: Result, ctx: TestContext | None, warning_raised: str | None) -> None:
    """Record the result in the test's report and tell Hypothesis about it.

    After the warnings are issued, not before: a filter that turns a `GradcheckWarning`
    into an error (``-W error::pytest_gradcheck.GradcheckWarning``) makes the call
    raise and the test fail, and the report must say so (`warning_raised`, the
    warning's text), not show the check as a plain pass.
    """
    if ctx is not None:
        ctx.record(result, warning_raised)
    _tell_hypothesis(result)


def _warn(result: Result) -> None:
    """Issue each warning of a returning check as a `GradcheckWarning` at the caller.

    A passing check's warnings say where it could not see a wrong gradient (tiny or
    exactly-zero gradients, comparisons excluded at kinks, a float32 cast), so they
    must reach the user the way Python and pytest show warnings, not only
    `Result.warnings`; pytest filters (``-W error::pytest_gradcheck.GradcheckWarning``)
    then apply to them.
    """
    __tracebackhide__ = True
    for text in alarming(result.warnings):
        warnings.warn(GradcheckWarning(text), stacklevel=3)  # gradcheck's caller


def _tell_hypothesis(result: Result) -> None:
    """Inside a Hypothesis test, steer it toward the worst inputs and count tiers."""
    if "hypothesis" not in sys.modules:
        return
    import math

    from hypothesis import event, target
    from hypothesis.control import currently_in_test_context

    if not currently_in_test_context():
        return
    from hypothesis.errors import InvalidArgument

    event(f"gradcheck tier: {result.tier.label}")
    # a second check in the same example: target() takes one value per label
    with contextlib.suppress(InvalidArgument):
        target(math.log10(max(result.max_rel_error, 1e-300)), label="log10(gradcheck rel error)")
