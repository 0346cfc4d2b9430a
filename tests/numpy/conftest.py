"""Makes tests/numpy/layers.py importable as `gradcheck_numpy_layers`.

A unique module name, so that a `layers.py` helper elsewhere in the test tree (another
framework's directory) can never shadow this one or be shadowed by it.
"""

import importlib.util
import sys
from pathlib import Path

_NAME = "gradcheck_numpy_layers"

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("layers.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
