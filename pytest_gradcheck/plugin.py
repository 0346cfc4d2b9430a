"""The pytest plugin: hooks that wire options, the marker, the fixture, the per-test
context and the report. The checking itself lives in `_api` and `_engine`.

Importing this module imports no numerical framework.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import __version__
from ._context import CURRENT, TestContext
from ._options import CLI, NAMES, Options, check_names, parse_text
from ._report import SessionReport, write_section

RESULTS = pytest.StashKey[list]()
STATE = pytest.StashKey["_State"]()

MARKER_HELP = (
    "gradcheck(**options): a gradient-check test; its keywords are the defaults of every "
    f"check in the test ({', '.join(NAMES)})"
)


class _State:
    """Per-session plugin state: the parsed CLI and ini option layers and the report."""

    def __init__(self, cli: dict[str, Any], ini: dict[str, Any], detail: str) -> None:
        self.cli, self.ini, self.detail = cli, ini, detail
        self.report = SessionReport()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradcheck", "gradient checks (pytest-gradcheck)")
    for name, (flag, help_text) in CLI.items():
        group.addoption(
            f"--gradcheck-{flag}", dest=f"gradcheck_{name}", default=None, help=help_text
        )
        parser.addini(f"gradcheck_{name}", help=f"gradcheck: {help_text}", default=None)
    group.addoption(
        "--gradcheck-json",
        dest="gradcheck_json",
        default=None,
        metavar="PATH",
        help="write every gradient check's result as JSON to PATH",
    )
    group.addoption(
        "--gradcheck-report",
        dest="gradcheck_report",
        default=None,
        choices=("summary", "blocks", "off"),
        help="the 'gradient checks' terminal section: summary (default), blocks, off",
    )
    parser.addini("gradcheck_report", help="gradcheck: summary, blocks or off", default=None)
    parser.addini("gradcheck_json", help="gradcheck: write results as JSON here", default=None)


def _layer(config: pytest.Config, source: str) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, (flag, _) in CLI.items():
        raw = (
            config.getoption(f"gradcheck_{name}")
            if source == "cli"
            else config.getini(f"gradcheck_{name}")
        )
        if raw is None or raw == "":
            continue
        where = f"--gradcheck-{flag}" if source == "cli" else f"ini key gradcheck_{name}"
        try:
            layer[name] = parse_text(name, str(raw))
            Options(**{name: layer[name]})  # type errors surface here
        except (TypeError, ValueError) as err:
            raise pytest.UsageError(f"{where}: {err}") from None
    try:
        from ._options import resolve

        resolve(layer)
    except (TypeError, ValueError) as err:
        raise pytest.UsageError(f"gradcheck options from {source}: {err}") from None
    return layer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    detail = config.getoption("gradcheck_report") or config.getini("gradcheck_report") or "summary"
    if detail not in ("summary", "blocks", "off"):
        raise pytest.UsageError(f"gradcheck_report must be summary, blocks or off, got {detail!r}")
    state = _State(_layer(config, "cli"), _layer(config, "ini"), detail)
    config.stash[STATE] = state
    config.pluginmanager.register(_Collector(config, state), "gradcheck-collector")


def pytest_report_header(config: pytest.Config) -> str:
    state = config.stash[STATE]
    merged = {**Options().as_dict(), **state.ini, **state.cli}
    shown = ("eps", "samples_per_block", "seed", "kinks", "tolerance", "mode")
    text = ", ".join(f"{k}={merged[k]!r}" for k in shown)
    return f"gradcheck: pytest-gradcheck {__version__}, {text}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using the fixture are gradient checks too (for ``-m gradcheck``)."""
    for item in items:
        if "gradcheck" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "gradcheck"
        ):
            item.add_marker("gradcheck")


def _marker_options(item: pytest.Item) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for marker in reversed(list(item.iter_markers("gradcheck"))):
        if marker.args:
            raise TypeError(
                f"gradcheck marker of {item.nodeid}: takes keyword options only, got "
                f"positional {marker.args!r}"
            )
        merged.update(marker.kwargs)
    check_names(merged, f"the gradcheck marker of {item.nodeid}")
    return merged


def pytest_runtest_setup(item: pytest.Item) -> None:
    _marker_options(item)  # unknown marker keywords fail the test at set-up


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    state = item.config.stash[STATE]
    results: list = []
    item.stash[RESULTS] = results
    ctx = TestContext(
        nodeid=item.nodeid,
        layers=(_marker_options(item), state.cli, state.ini),
        record=results.append,
    )
    token = CURRENT.set(ctx)
    try:
        return (yield)
    finally:
        CURRENT.reset(token)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    report = yield
    if call.when == "call":
        results = item.stash.get(RESULTS, [])
        if results:
            # plain data, so it travels with the report (pytest-xdist serialises __dict__)
            report.gradcheck = [r.to_dict() for r in results]
            report.gradcheck_hypothesis = bool(
                getattr(getattr(item, "obj", None), "is_hypothesis_test", False)
            )
    return report


@pytest.fixture(scope="session")
def gradcheck() -> Callable[..., Any]:
    """The `pytest_gradcheck.gradcheck` function; its checks record into the running test."""
    from ._api import gradcheck as check

    return check


class _Collector:
    """Registered per session: gathers results from test reports, writes the outputs.

    Reports arrive here from local tests and, under pytest-xdist, from the workers
    (their `gradcheck` attribute travels with the serialised report).
    """

    def __init__(self, config: pytest.Config, state: _State) -> None:
        self.config, self.state = config, state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        checks = getattr(report, "gradcheck", None)
        if report.when == "call" and checks:
            hypothesis = bool(getattr(report, "gradcheck_hypothesis", False))
            self.state.report.add(report.nodeid, checks, hypothesis)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.state.detail == "off" or not self.state.report.checks:
            return
        terminalreporter.write_sep("=", "gradient checks")
        write_section(terminalreporter.write_line, self.state.report, self.state.detail)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # an xdist worker: the controller writes the file
        path = self.config.getoption("gradcheck_json") or self.config.getini("gradcheck_json")
        if path:
            Path(path).write_text(self.state.report.to_json(__version__))
