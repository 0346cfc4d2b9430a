"""Relative error and the seed's four tiers of it.

The thresholds are those of CS231n's "Gradient Checks": above 1e-2 the gradient is
probably wrong, 1e-4 to 1e-2 should make you uncomfortable, below 1e-4 is fine for an
objective with kinks, and below 1e-7 you should be happy.
"""

from __future__ import annotations

import enum
import math


class Tier(enum.IntEnum):
    """How far apart the analytic and numeric gradients are, best first.

    Ordered: ``Tier.HAPPY < Tier.OK < Tier.UNCOMFORTABLE < Tier.WRONG``, so the worst
    of several tiers is their `max`.

    Attributes:
        HAPPY: relative error < 1e-7.
        OK: < 1e-4: fine for objectives with kinks, too high for smooth ones.
        UNCOMFORTABLE: < 1e-2.
        WRONG: >= 1e-2: the gradient is probably wrong.
    """

    HAPPY = 0  #: relative error < 1e-7
    OK = 1  #: < 1e-4: fine for objectives with kinks, too high for smooth ones
    UNCOMFORTABLE = 2  #: < 1e-2
    WRONG = 3  #: >= 1e-2: the gradient is probably wrong

    @classmethod
    def of(cls, rel_error: float) -> Tier:
        """The tier of one relative error (NaN is `WRONG`)."""
        if not rel_error < THRESHOLDS[Tier.UNCOMFORTABLE]:
            return cls.WRONG
        if rel_error < THRESHOLDS[Tier.HAPPY]:
            return cls.HAPPY
        if rel_error < THRESHOLDS[Tier.OK]:
            return cls.OK
        return cls.UNCOMFORTABLE

    @classmethod
    def parse(cls, value: Tier | str) -> Tier:
        """A tier from itself or its name, case-insensitive ("ok", "HAPPY")."""
        if isinstance(value, Tier):
            return value
        if isinstance(value, str) and value.strip().upper() in cls.__members__:
            return cls[value.strip().upper()]
        raise ValueError(
            f"gradcheck: {value!r} is not a tier; use one of "
            + ", ".join(t.name.lower() for t in cls)
        )

    @property
    def label(self) -> str:
        """The lower-case name shown in reports: happy, ok, uncomfortable, wrong."""
        return self.name.lower()


#: The upper bound (exclusive) of each tier's relative error.
THRESHOLDS: dict[Tier, float] = {
    Tier.HAPPY: 1e-7,
    Tier.OK: 1e-4,
    Tier.UNCOMFORTABLE: 1e-2,
    Tier.WRONG: math.inf,
}


def relative_error(analytic: float, numeric: float) -> float:
    """``|a - n| / max(|a|, |n|)``, with both zero counted as an exact match (0.0)."""
    scale = max(abs(analytic), abs(numeric))
    if scale == 0.0:
        return 0.0
    return abs(analytic - numeric) / scale


def default_tolerance(kinks_present: bool) -> Tier:
    """The worst passing tier when the user sets none: OK with kinks, HAPPY without."""
    return Tier.OK if kinks_present else Tier.HAPPY
