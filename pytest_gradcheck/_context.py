"""The link between a running check and the pytest item it runs in.

The plugin sets `CURRENT` around each test call; `gradcheck()` reads the option layers
(marker > CLI > ini) from it and hands its result back to it (with the warning it raised,
where a warnings filter made one an error). Outside pytest, `CURRENT` is unset and a
check uses its call keywords over the defaults.

A thread starts with an empty context, so a check that a test runs in a thread of its
own (a `ThreadPoolExecutor`) finds `CURRENT` unset: `current()` then falls back to the
test this process is running (`running`), so that the check takes the test's options
and reaches its report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._result import Result


@dataclass(frozen=True)
class TestContext:
    """What the plugin tells a check about the test it runs in."""

    nodeid: str
    layers: tuple[Mapping[str, Any], ...] = ()  # highest precedence first
    #: a check's result, and the text of its warning that a warnings filter raised as
    #: an error (``-W error::pytest_gradcheck.GradcheckWarning``), or None
    record: Callable[[Result, str | None], None] = field(
        default=lambda result, warning_raised: None
    )
    #: a check that raised instead of returning a result (bad input, an error in f)
    record_error: Callable[[BaseException], None] = field(default=lambda error: None)


CURRENT: ContextVar[TestContext | None] = ContextVar("gradcheck_test", default=None)

#: the test this process runs, for checks in threads it started (see the docstring):
#: the plugin's per-session state, which `running` sets and resets
_RUNNING: list[TestContext] = []


def current() -> TestContext | None:
    """The test a check runs in: this context's, else the one this process runs."""
    ctx = CURRENT.get()
    if ctx is None and _RUNNING:
        return _RUNNING[-1]
    return ctx


@contextlib.contextmanager
def running(ctx: TestContext) -> Iterator[None]:
    """Make `ctx` the current test, here and for the threads started meanwhile."""
    token = CURRENT.set(ctx)
    _RUNNING.append(ctx)
    try:
        yield
    finally:
        _RUNNING.remove(ctx)
        CURRENT.reset(token)
