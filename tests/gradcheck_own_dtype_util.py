"""What the own-dtype tests of the three frameworks read from a check (one copy).

Importable from every test directory: tests/ is on sys.path (pytest's rootdir-relative
import of tests/conftest.py); the name is unique, so no helper elsewhere shadows it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from pytest_gradcheck import GradcheckWarning, Result, gradcheck


def own_dtype_warnings(result: Result) -> list[str]:
    """The warnings of the pass in the user's own dtypes about a non-finite gradient."""
    return [w for w in result.warnings if "analytic gradient at the checked point" in w]


def gradcheck_warnings(
    f: Callable[..., Any], *args: Any, **options: Any
) -> tuple[Result, list[str]]:
    """The check's result and the messages of the GradcheckWarnings it issued."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = gradcheck(f, *args, **options)
    return result, [str(r.message) for r in record if issubclass(r.category, GradcheckWarning)]
