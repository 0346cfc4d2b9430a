"""Checks on the checked blocks' own values, made once before the check starts.

A block the check cannot learn anything from must not pass: a block with no entries
has no coordinate to compare (a check of it alone would report "happy" after comparing
nothing). The contract's bad-input rule asks for an error that names the block and
says what to do; the backends know nothing of it, so the check is framework-free and
runs on the `BlockSpec`s every backend hands the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from .backends._base import BlockSpec


def check_blocks(specs: Sequence[BlockSpec]) -> None:
    """Raise ValueError for a block with no entries, naming it and what to do."""
    for spec in specs:
        if spec.size == 0:
            raise ValueError(
                f"gradcheck: block {spec.name!r} has no entries (shape {spec.shape}), so "
                "there is nothing of it to check; leave it out with wrt= (a list of the "
                "other blocks' names, or a predicate), or give it entries"
            )
