"""Framework backends: one module per framework, imported lazily on first use.

`select_backend` inspects the inputs of a check (without importing any framework the
user has not imported already) and returns the backend class that handles them.
"""

from __future__ import annotations

import sys
from typing import Any

from ._tree import iter_leaves


def _framework_of(leaf: Any) -> str | None:
    """Name "torch" or "jax" for their arrays (and torch modules), else None.

    Only frameworks the user has imported already are asked: a leaf of a framework
    that is not in `sys.modules` cannot exist.
    """
    if "torch" in sys.modules:
        import torch

        if isinstance(leaf, (torch.Tensor, torch.nn.Module)):
            return "torch"
    if "jax" in sys.modules:
        import jax

        if isinstance(leaf, jax.Array):
            return "jax"
    return None


def detect_framework(args: tuple, params: Any) -> str:
    """Name the framework whose arrays appear in `args` and `params` ("numpy" if none)."""
    found: set[str] = set()
    for container in (args, params):
        if container is None:
            continue
        if _framework_of(container) is not None:
            found.add(_framework_of(container))  # a torch.nn.Module as params
            continue
        for _, leaf in iter_leaves(container, ""):
            kind = _framework_of(leaf)
            if kind is not None:
                found.add(kind)
    if len(found) > 1:
        raise TypeError(
            f"gradcheck: the inputs mix frameworks ({', '.join(sorted(found))}); "
            "pass arrays of one framework per check"
        )
    return found.pop() if found else "numpy"


def load_backend(framework: str) -> type:
    """Import the backend module for `framework` and return its `Backend` class."""
    if framework == "torch":
        from .torch import TorchBackend

        return TorchBackend
    if framework == "jax":
        from .jax import JaxBackend

        return JaxBackend
    from .numpy import NumpyBackend

    return NumpyBackend
