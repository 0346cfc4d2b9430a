"""The link between a running check and the pytest item it runs in.

The plugin sets `CURRENT` around each test call; `gradcheck()` reads the option layers
(marker > CLI > ini) from it and hands its result back to it. Outside pytest,
`CURRENT` is unset and a check uses its call keywords over the defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    record: Callable[[Result], None] = field(default=lambda result: None)


CURRENT: ContextVar[TestContext | None] = ContextVar("gradcheck_test", default=None)
