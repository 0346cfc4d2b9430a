"""Walking nested tuples, lists and dicts: leaf names and rebuilding with new leaves.

Names follow Python's indexing syntax so a user can paste them: ``args[0]``,
``args[1]['W1']``, ``params['layer'][2]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any


def child_name(prefix: str, key: Any) -> str:
    """The name of the child `key` of the container named `prefix`."""
    return f"{prefix}[{key!r}]"


def iter_leaves(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, leaf)`` for every non-container leaf of `obj`, depth first."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from iter_leaves(value, child_name(prefix, key))
    elif isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj):
            yield from iter_leaves(value, child_name(prefix, i))
    else:
        yield prefix, obj


def map_leaves(obj: Any, prefix: str, fn: Callable[[str, Any], Any]) -> Any:
    """Rebuild `obj` with every leaf replaced by ``fn(name, leaf)``.

    Tuples (named tuples included), lists and dicts keep their types.
    """
    if isinstance(obj, Mapping):
        items = {k: map_leaves(v, child_name(prefix, k), fn) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, tuple):
        values = [map_leaves(v, child_name(prefix, i), fn) for i, v in enumerate(obj)]
        if hasattr(obj, "_fields"):
            return type(obj)(*values)
        return tuple(values)
    if isinstance(obj, list):
        return [map_leaves(v, child_name(prefix, i), fn) for i, v in enumerate(obj)]
    return fn(prefix, obj)
