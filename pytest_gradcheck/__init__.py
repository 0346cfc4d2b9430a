"""pytest-gradcheck: check hand-written gradients against finite differences.

    from pytest_gradcheck import gradcheck, Tier, Result, BlockResult, GradcheckError
    from pytest_gradcheck import GradcheckWarning  # what a passing check warns about

Importing this package imports no numerical framework (not even NumPy); frameworks
are imported when a check first needs them.
"""

from __future__ import annotations

from ._api import gradcheck
from ._result import BlockResult, DirectionResult, GradcheckError, GradcheckWarning, Result
from ._tiers import Tier

__all__ = [
    "BlockResult",
    "DirectionResult",
    "GradcheckError",
    "GradcheckWarning",
    "Result",
    "Tier",
    "gradcheck",
]
__version__ = "0.1.0"
