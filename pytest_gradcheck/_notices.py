"""Which of a check's warnings are notices: what the check did, not what it could not see.

A check always runs in float64, so inputs in lower precision are cast for it; the
backends say so in `Result.warnings`, but that is a notice, no alarm: it is not issued
as a `GradcheckWarning` nor marked in the terminal report, where it would stand beside
nearly every check of a float32 model and teach users to ignore the warnings that
matter (a check that cannot see a wrong gradient). Free of NumPy and the frameworks:
the plugin's report reads it at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable

#: how the backends' notice that lower-precision inputs were checked in float64 starts
CAST_NOTICE = "checked in float64: "


def alarming(warnings: Iterable[str]) -> list[str]:
    """The warnings that say where a check could not see well (all but the notices)."""
    return [w for w in warnings if not w.removeprefix("gradcheck: ").startswith(CAST_NOTICE)]
