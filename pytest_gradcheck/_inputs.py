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

from ._steps import absmax
from .backends._base import BlockSpec, first_nonfinite, index_text


def check_blocks(specs: Sequence[BlockSpec]) -> list[float]:
    """Raise ValueError for a block with no entries or with a NaN or infinity, naming
    the block (and the entry) and what to do; return each block's largest |value|.

    The largest |value| is what the engine needs of every block anyway (its round-off
    floor), and it is NaN or infinite exactly where the block holds a NaN or an
    infinity: the check costs nothing beside it.
    """
    maxima = []
    for spec in specs:
        if spec.size == 0:
            raise ValueError(
                f"gradcheck: block {spec.name!r} has no entries (shape {spec.shape}), so "
                "there is nothing of it to check; leave it out with wrt= (a list of the "
                "other blocks' names, or a predicate), or give it entries"
            )
        largest = absmax(spec.values)
        if not math.isfinite(largest):
            _nonfinite(spec)
        maxima.append(largest)
    return maxima


def _nonfinite(spec: BlockSpec) -> None:
    """Raise the error for a block holding a NaN or an infinity, naming the first."""
    idx = first_nonfinite(spec.values)
    assert idx is not None
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
