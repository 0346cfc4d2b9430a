"""Checks on the checked blocks' own values, made once before the check starts.

A block the check cannot learn anything from must not pass: a block with no entries
has no coordinate to compare (a check of it alone would report "happy" after comparing
nothing), and a NaN or infinity in a block makes the loss or the gradient non-finite,
which a later message would blame on the loss or on the user's gradient. The
contract's bad-input rule asks for an error that names the block and says what to do;
the backends know nothing of it, so the check is framework-free and runs on the
`BlockSpec`s every backend hands the engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .backends._base import BlockSpec, first_nonfinite, index_text


def check_blocks(specs: Sequence[BlockSpec]) -> None:
    """Raise ValueError for a block with no entries or with a NaN or infinity, naming
    the block (and the entry) and what to do."""
    for spec in specs:
        if spec.size == 0:
            raise ValueError(
                f"gradcheck: block {spec.name!r} has no entries (shape {spec.shape}), so "
                "there is nothing of it to check; leave it out with wrt= (a list of the "
                "other blocks' names, or a predicate), or give it entries"
            )
        idx = _nonfinite(spec.values)
        if idx is not None:
            value = float(spec.values[idx])
            raise ValueError(
                f"gradcheck: block {spec.name!r} holds {value} at "
                f"{index_text(idx, spec.shape)}; the check needs a finite point: pass "
                "finite values"
                + (
                    ""
                    if math.isnan(value)
                    else " (a mask of -inf is data, not a block: leave it out with wrt=)"
                )
            )


def _nonfinite(flat: np.ndarray) -> int | None:
    """The flat index of the first NaN or infinity, None if all are finite.

    One sum first: finite for all-finite values (a sum of finite values can overflow,
    so only a non-finite sum asks for the mask).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.sum(flat))):
            return None
    return first_nonfinite(flat)
