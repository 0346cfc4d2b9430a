"""Shared set-up of the whole test suite."""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The suite asserts on `Result.warnings`: the GradcheckWarnings its many checks
    issue (tests/plugin/test_plugin_warnings.py checks that they are issued) would only
    fill the warnings summary. Only this suite's own tests ignore them: the demo suite
    (examples/), run from the same root, shows them."""
    for item in items:
        item.add_marker(pytest.mark.filterwarnings("ignore::pytest_gradcheck.GradcheckWarning"))
