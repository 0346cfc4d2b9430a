"""Fixtures of the plugin tests (helpers live in gc_plugin_util.py)."""

from __future__ import annotations

import sys
from pathlib import Path

# Imported once here, so pytester's inline runs keep them: NumPy cannot be imported twice
# in a process, and re-importing Hypothesis (which its pytest plugin does at the end of
# every run) costs a second or more.
import hypothesis  # noqa: F401
import numpy  # noqa: F401
import pytest

if str(Path(__file__).parent) not in sys.path:  # also under --import-mode=importlib
    sys.path.insert(0, str(Path(__file__).parent))

from gc_plugin_util import HELPERS


@pytest.fixture(autouse=True)
def _no_forced_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    """Colour only where a test asks for it (the environment may force it)."""
    for name in ("PY_COLORS", "FORCE_COLOR", "NO_COLOR", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester project with `gc_helpers.py` (NumPy functions for the inner tests)."""
    pytester.makepyfile(gc_helpers=HELPERS)
    return pytester
