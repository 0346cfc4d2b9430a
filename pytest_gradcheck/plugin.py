"""The pytest plugin: hooks that wire options, the marker, the fixture, the per-test
context, the report, the JSON file, junit properties and the CI gates. The checking
itself lives in `_api` and `_engine`.

How a result reaches the report: a wrapper around each test phase (setup, call,
teardown) sets `_context.CURRENT` to a `TestContext` holding the option layers (marker
> CLI > ini) and a recorder; `gradcheck()` resolves its options over those layers and
hands its `Result` to the recorder. `pytest_runtest_makereport` puts the phase's checks
on the report as plain data (``report.gradcheck``), which pytest-xdist serialises with
the report, and the session's `_Collector` gathers them in `pytest_runtest_logreport`,
in the controller as in a serial run.

Importing this module imports no numerical framework.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from . import __version__
from ._cli import SESSION, Switch, flag, given, unknown_ini_keys, unknown_ini_message
from ._context import TestContext, running
from ._gates import Gates, Verdict, evaluate, load_baseline, report_lines
from ._options import CLI, NAMES, SWITCHES, Options, check_names, parse_text, resolve
from ._report import SessionReport, dumps, plain, raised_entry
from ._terminal import section_lines
from ._tiers import Tier

RECORDER = pytest.StashKey["_Recorder"]()
STATE = pytest.StashKey["_State"]()
POSITIONS = pytest.StashKey[dict]()

REPORT_CHOICES = ("summary", "blocks", "off")
_THIS_FILE = os.path.abspath(__file__)
_PACKAGE_DIR = os.path.dirname(_THIS_FILE) + os.sep

MARKER_HELP = (
    "gradcheck(**options): a gradient-check test; its keywords are the defaults of every "
    f"check in the test ({', '.join(NAMES)})"
)


class _State:
    """Per-session plugin state: the option layers, report detail, gates and the report."""

    def __init__(self, cli: dict[str, Any], ini: dict[str, Any], detail: str, gates: Gates) -> None:
        self.cli, self.ini, self.detail, self.gates = cli, ini, detail, gates
        self.report = SessionReport()
        self.verdict: Verdict | None = None
        #: the output files that could not be written at the end of the session, and why
        self.unwritten: list[str] = []


# -- options ------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradcheck", "gradient checks (pytest-gradcheck)")
    for name, (_, help_text) in CLI.items():
        # an on/off option's flag takes an optional value: bare means on, =off off
        switch = {"action": Switch} if name in SWITCHES else {}
        group.addoption(
            flag(name), dest=f"gradcheck_{name}", default=None, help=help_text, **switch
        )
        parser.addini(f"gradcheck_{name}", help=f"gradcheck: {help_text}", default=None)
    for name, (metavar, help_text) in SESSION.items():
        group.addoption(
            flag(name), dest=f"gradcheck_{name}", default=None, metavar=metavar, help=help_text
        )
        parser.addini(f"gradcheck_{name}", help=f"gradcheck: {help_text}", default=None)


class _Setting(NamedTuple):
    """A setting's raw value and where it came from."""

    value: Any  # None: not set
    where: str  # for usage errors: "--gradcheck-x" or "ini key gradcheck_x"
    base: Path  # the directory a relative path in it is relative to
    source: str  # "cli", "ini" or "" (not set)


def _raw(config: pytest.Config, name: str) -> _Setting:
    """A setting from the CLI, else the ini file. A flag given empty (``--gradcheck-x=``)
    is given: it turns off what the ini key set."""
    value = config.getoption(f"gradcheck_{name}")
    if value is not None:
        value = None if str(value).strip() == "" else value
        return _Setting(value, flag(name), config.invocation_params.dir, "cli")
    value = config.getini(f"gradcheck_{name}")
    if value is not None and value != "" and value != []:
        base = config.inipath.parent if config.inipath else config.rootpath
        return _Setting(value, f"ini key gradcheck_{name}", base, "ini")
    return _Setting(None, "", config.rootpath, "")


def _layer(config: pytest.Config, source: str) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name in CLI:
        raw = (
            config.getoption(f"gradcheck_{name}")
            if source == "cli"
            else config.getini(f"gradcheck_{name}")
        )
        # an ini key left empty is unset; a flag given empty is given (None where the
        # option takes it), overriding the ini key
        if raw is None or (source == "ini" and (raw == "" or raw == [])):
            continue
        where = flag(name) if source == "cli" else f"ini key gradcheck_{name}"
        try:
            layer[name] = parse_text(name, str(raw))
            resolve({name: layer[name]})
        except (TypeError, ValueError) as err:
            raise pytest.UsageError(f"{where}: {err}") from None
    return layer


def _path(config: pytest.Config, name: str) -> Path | None:
    value, _, base, _ = _raw(config, name)
    return None if value is None else base / Path(str(value)).expanduser()


def _writable(path: Path | None, where: str) -> None:
    """A usage error unless the session can write an output file at `path`.

    Checked at configure time, so a bad path stops the run before any test does (the
    file itself is written at the end). Missing parent directories are fine (they are
    created then); a directory at `path`, a file among its parents or a directory we
    may not write into are not.
    """
    if path is None:
        return
    if path.is_dir():
        raise pytest.UsageError(f"{where}: {path} is a directory; give the path of a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise pytest.UsageError(f"{where}: {path} exists and is not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise pytest.UsageError(f"{where}: cannot write {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"{where}: cannot write {path}: {parent} is not writable")


def _gates(config: pytest.Config) -> Gates:
    gates = Gates()
    tier = _raw(config, "fail_tier")
    if tier.value is not None:
        try:
            gates.fail_tier = Tier.parse(str(tier.value))
        except ValueError as err:
            raise pytest.UsageError(f"{tier.where}: {err}") from None
        gates.fail_tier_given = given("fail_tier", str(tier.value).strip(), tier.source)
    factor, where, _, _ = _raw(config, "baseline_factor")
    if factor is not None:
        try:
            gates.baseline_factor = float(factor)
        except ValueError:
            gates.baseline_factor = -1.0
        if not gates.baseline_factor > 1.0 or gates.baseline_factor == float("inf"):
            raise pytest.UsageError(f"{where}: must be a number > 1, got {factor!r}")
    baseline = _raw(config, "baseline")
    gates.baseline = _path(config, "baseline")
    if baseline.value is not None:
        gates.baseline_shown = str(baseline.value).strip()
        gates.baseline_given = given("baseline", gates.baseline_shown, baseline.source)
    gates.save_baseline = _path(config, "save_baseline")
    _writable(gates.save_baseline, _raw(config, "save_baseline").where)
    if gates.baseline is not None and not hasattr(config, "workerinput"):
        try:
            gates.expected = load_baseline(gates.baseline)
        except ValueError as err:
            raise pytest.UsageError(f"gradcheck: {err}") from None
    return gates


def _ini_names(config: pytest.Config) -> Iterable[str]:
    """The keys of the ini file (and of ``-o`` overrides) pytest read."""
    inicfg = getattr(config, "_inicfg", None)  # pytest >= 9: config.inicfg is deprecated
    return list(inicfg if inicfg is not None else config.inicfg)


def _check_ini_keys(config: pytest.Config) -> None:
    """An unknown ``gradcheck_*`` ini key is a usage error (pytest would only warn)."""
    unknown = unknown_ini_keys(_ini_names(config))
    if unknown:
        where = config.inipath.name if config.inipath else "the ini options (-o)"
        raise pytest.UsageError(unknown_ini_message(unknown, where))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    _check_ini_keys(config)
    detail, where, _, _ = _raw(config, "report")
    detail = str(detail or "summary").strip().lower()
    if detail not in REPORT_CHOICES:
        raise pytest.UsageError(f"{where}: must be summary, blocks or off, got {detail!r}")
    _writable(_path(config, "json"), _raw(config, "json").where)
    state = _State(_layer(config, "cli"), _layer(config, "ini"), detail, _gates(config))
    config.stash[STATE] = state
    config.pluginmanager.register(_Collector(config, state), "gradcheck-collector")


def _defaults(state: _State) -> dict[str, Any]:
    """The options every check starts from: defaults, then ini, then CLI."""
    merged = {**Options().as_dict(), **state.ini, **state.cli}
    merged.pop("burn_in_step", None)
    return {k: (v.label if isinstance(v, Tier) else v) for k, v in merged.items()}


def pytest_report_header(config: pytest.Config) -> str:
    state = config.stash[STATE]
    merged = _defaults(state)
    shown = ("eps", "samples_per_block", "seed", "kinks", "tolerance", "mode")
    text = ", ".join(
        f"{k}={'auto' if k == 'tolerance' and merged[k] is None else merged[k]}" for k in shown
    )
    line = f"gradcheck: pytest-gradcheck {__version__} ({text}; report={state.detail}"
    g = state.gates
    if g.fail_tier is not None:
        line += f"; fail-tier={g.fail_tier.label}"
    if g.baseline is not None:
        line += f"; baseline={g.baseline_shown} (x{g.baseline_factor:g})"
    return line + ")"


# -- marker, fixture, selection -------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using the fixture are gradient checks too (for ``-m gradcheck``)."""
    for item in items:
        if "gradcheck" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "gradcheck"
        ):
            item.add_marker("gradcheck")


def pytest_collection_finish(session: pytest.Session) -> None:
    session.stash[POSITIONS] = {item.nodeid: i for i, item in enumerate(session.items)}


def _marker_options(item: pytest.Item) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for marker in reversed(list(item.iter_markers("gradcheck"))):
        if marker.args:
            raise TypeError(
                f"gradcheck: the gradcheck marker of {item.nodeid} takes keyword options "
                f"only, got positional {marker.args!r}; valid options: {', '.join(NAMES)}"
            )
        merged.update(marker.kwargs)
    check_names(merged, f"the gradcheck marker of {item.nodeid}")
    return merged


@pytest.fixture(scope="session")
def gradcheck() -> Callable[..., Any]:
    """The `pytest_gradcheck.gradcheck` function; its checks record into the running test."""
    from ._api import gradcheck as check

    return check


# -- the per-test context -------------------------------------------------------------


def _build_context() -> Any:
    """The current Hypothesis example's build context, or None outside one."""
    if "hypothesis" not in sys.modules:
        return None
    try:
        from hypothesis.control import current_build_context, currently_in_test_context

        return current_build_context() if currently_in_test_context() else None
    except Exception:  # an unexpected Hypothesis version: no example tracking
        return None


class _Recorder:
    """Collects a test's check results as plain dicts, with where they ran.

    Inside a Hypothesis test, each example is told apart by its build context; a
    check's `index` is then its place within its example, so the examples of one
    check collapse into one row of the report.
    """

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self._lock = threading.Lock()  # checks may run in threads the test started
        self.entries: list[dict[str, Any]] = []
        self.attached = 0
        self.when = "setup"
        self._plain = 0
        self._example: Any = None  # held, so a new example never reuses its id
        self._examples = 0
        self._in_example = 0

    def __call__(self, result: Any, warning_raised: str | None) -> None:
        """Record a check's result; `warning_raised`: the text of its warning that a
        filter raised as an error (the call raised it, failing the test), or None."""
        with self._lock:
            self._record(result.to_dict(), warning_raised)

    def error(self, error: BaseException) -> None:
        """Record a check that raised (bad input, an error in f) instead of a result."""
        with self._lock:
            self._record(raised_entry(error), None)

    def _record(self, fields: dict[str, Any], warning_raised: str | None) -> None:
        ctx = _build_context()
        if ctx is None:
            index, example = self._plain, None
            self._plain += 1
        else:
            if ctx is not self._example:
                self._example, self._examples, self._in_example = ctx, self._examples + 1, 0
            index, example = self._in_example, self._examples - 1
            self._in_example += 1
        where = {"nodeid": self.nodeid, "index": index, "example": example, "when": self.when}
        self.entries.append(plain({**where, **fields, "warning_raised": warning_raised}))

    def take(self) -> list[dict[str, Any]]:
        """The entries recorded since the last call."""
        with self._lock:
            new = self.entries[self.attached :]
            self.attached = len(self.entries)
        return new


def _recorder(item: pytest.Item) -> _Recorder:
    rec = item.stash.get(RECORDER, None)
    if rec is None:
        rec = item.stash[RECORDER] = _Recorder(item.nodeid)
    return rec


def _with_context(item: pytest.Item, when: str, marker: dict[str, Any]) -> TestContext:
    state = item.config.stash[STATE]
    rec = _recorder(item)
    rec.when = when
    return TestContext(
        nodeid=item.nodeid,
        layers=(marker, state.cli, state.ini),
        record=rec,
        record_error=rec.error,
    )


def _lenient_marker(item: pytest.Item) -> dict[str, Any]:
    try:
        return _marker_options(item)
    except TypeError:
        return {}  # reported by the call phase, as the test's failure


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item.stash[RECORDER] = _Recorder(item.nodeid)  # afresh, should the test run again
    with running(_with_context(item, "setup", _lenient_marker(item))):
        return (yield)


def _bad_values(item: pytest.Item, marker: dict[str, Any], state: _State) -> str | None:
    """The error of a bad option value, before the test runs; one the marker holds is
    said to come from it (flags and ini keys were checked when the session started)."""
    try:
        resolve(marker)
    except (TypeError, ValueError) as err:
        text = str(err).removeprefix("gradcheck: ")
        return f"gradcheck: the gradcheck marker of {item.nodeid} holds a bad value: {text}"
    try:
        resolve(marker, state.cli, state.ini)
    except (TypeError, ValueError) as err:
        return str(err)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    state = item.config.stash[STATE]
    problem = None
    try:
        marker = _marker_options(item)
    except (TypeError, ValueError) as err:
        problem = str(err)
    else:
        problem = _bad_values(item, marker, state)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    with running(_with_context(item, "call", marker)):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with running(_with_context(item, "teardown", _lenient_marker(item))):
        return (yield)


# -- reports: plain data on each test report, junit properties, hidden frames -----------


def _is_ours(entry: Any) -> bool:
    return str(entry.path).startswith(_PACKAGE_DIR)


def _deliberate(exc: BaseException) -> bool:
    """Our own errors: GradcheckError, and ValueError/TypeError saying "gradcheck: ..."."""
    from ._result import GradcheckError

    return isinstance(exc, GradcheckError) or (
        isinstance(exc, (ValueError, TypeError)) and str(exc).startswith("gradcheck")
    )


def _hide_policy(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    """`__tracebackhide__` of our modules' frames: hidden unless the error is a bug of ours.

    Hidden for our deliberate errors and for errors raised in code a check called (the
    user's f or grad); an unexpected error raised inside pytest-gradcheck keeps its
    frames. ``--full-trace`` shows every frame.
    """
    try:
        if _deliberate(excinfo.value):
            return True
        return not _is_ours(excinfo.traceback[-1])
    except Exception:
        return False


def _hide_internal_frames(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Mark the frames of our modules in a failing test's traceback as hidden.

    pytest hides a frame whose locals or globals hold ``__tracebackhide__`` (a bool,
    or a callable given the ExceptionInfo); the modules of pytest-gradcheck that appear
    in the traceback get `_hide_policy` as their module-level ``__tracebackhide__``
    (not this module, whose hook wrappers sit above the test's frame).
    """
    for entry in excinfo.traceback:
        if _is_ours(entry) and str(entry.path) != _THIS_FILE:
            entry.frame.f_globals.setdefault("__tracebackhide__", _hide_policy)


def _user_properties(item: pytest.Item, rec: _Recorder) -> None:
    """The test's worst tier and max rel error, as junit properties."""
    if not rec.entries:
        return
    props = [p for p in item.user_properties if not str(p[0]).startswith("gradcheck_")]
    results = [c for c in rec.entries if c.get("error") is None]  # not the ones that raised
    if results:
        worst = max(results, key=lambda c: (Tier.parse(c["tier"]), c["max_rel_error"]))
        err = max(c["max_rel_error"] for c in results)
        props += [
            ("gradcheck_tier", worst["tier"]),
            ("gradcheck_max_rel_error", repr(float(err))),
        ]
    props.append(("gradcheck_checks", str(len(rec.entries))))
    item.user_properties[:] = props


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    rec = item.stash.get(RECORDER, None)
    if rec is not None:
        _user_properties(item, rec)  # before the report copies item.user_properties
    if call.excinfo is not None and not item.config.getoption("fulltrace", False):
        with contextlib.suppress(Exception):  # never let cosmetics break a report
            _hide_internal_frames(call.excinfo)
    report = yield
    if rec is not None:
        new = rec.take()
        if new:
            # plain data, so it travels with the report (pytest-xdist serialises __dict__)
            report.gradcheck = new
            positions = item.session.stash.get(POSITIONS, {})
            report.gradcheck_position = positions.get(item.nodeid)
    return report


# -- the session: summary section, JSON, gates ----------------------------------------


def _outcome(report: pytest.TestReport) -> str:
    """The phase's outcome as pytest reports it to the user: an xfail test's
    ``xfailed`` or ``xpassed``, where ``report.outcome`` says skipped or passed."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


class _Collector:
    """Registered per session: gathers checks from test reports, writes the outputs.

    Reports arrive here from local tests and, under pytest-xdist, from the workers
    (their ``gradcheck`` attribute travels with the serialised report).
    """

    def __init__(self, config: pytest.Config, state: _State) -> None:
        self.config, self.state = config, state

    @property
    def _controller(self) -> bool:
        return not hasattr(self.config, "workerinput")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        checks = getattr(report, "gradcheck", None)
        if checks:
            self.state.report.add(
                checks,
                position=getattr(report, "gradcheck_position", None),
                outcome=_outcome(report),
            )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self._controller:
            return  # an xdist worker: the controller gates and writes the files
        if self.config.option.collectonly:
            return  # no check ran: nothing to gate, no report to overwrite a baseline with
        state = self.state
        if state.gates.active:
            state.verdict = evaluate(state.gates, state.report.sorted_checks())
            if state.verdict.failed and session.exitstatus in (
                pytest.ExitCode.OK,
                pytest.ExitCode.NO_TESTS_COLLECTED,
            ):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            if state.verdict.failed and not self.config.pluginmanager.has_plugin(
                "terminalreporter"
            ):
                sys.stderr.write(
                    "gradcheck gate failed\n"
                    + "\n".join(report_lines(state.gates, state.verdict))
                    + "\n"
                )
        json_path = _path(self.config, "json")
        targets = [
            (p, _raw(self.config, name).where)
            for p, name in ((json_path, "json"), (state.gates.save_baseline, "save_baseline"))
            if p is not None
        ]
        if targets:
            text = dumps(self._document())
            for path, where in targets:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
                except OSError as err:
                    # checked writable at the start, but the run may have changed that
                    # (a file where a directory was to be, a full disk): say so, plainly
                    state.unwritten.append(f"{where}: cannot write {path}: {err}")
            if state.unwritten:
                if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
                    session.exitstatus = pytest.ExitCode.USAGE_ERROR
                if not self.config.pluginmanager.has_plugin("terminalreporter"):
                    sys.stderr.write("\n".join(state.unwritten) + "\n")

    def _document(self) -> dict[str, Any]:
        state = self.state
        gates = state.gates.describe()
        verdict = state.verdict
        gates["passed"] = None if verdict is None else not verdict.failed
        gates["failures"] = [] if verdict is None else verdict.fail_tier + verdict.baseline
        return state.report.document(
            version=__version__,
            pytest_version=pytest.__version__,
            defaults=_defaults(state),
            gates=gates,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        state = self.state
        tr = terminalreporter
        if state.detail != "off" and state.report.checks:
            tr.write_sep("=", "gradient checks")
            width = getattr(getattr(tr, "_tw", None), "fullwidth", 80)
            for line in section_lines(state.report, state.detail, width):
                for text, markup in line:
                    tr.write(text, **markup)
                tr.line("")
        if state.unwritten:
            tr.write_sep("=", "gradcheck report not written", red=True, bold=True)
            for text in state.unwritten:
                tr.write_line(text, red=True)
        verdict = state.verdict
        if verdict is None:
            return
        if verdict.failed:
            tr.write_sep("=", "gradcheck gate failed", red=True, bold=True)
            for text in report_lines(state.gates, verdict):
                tr.write_line(text, red=not text.startswith("  "))
        else:
            parts = []
            if state.gates.fail_tier is not None:
                parts.append(f"no check worse than {state.gates.fail_tier.label}")
            if state.gates.baseline is not None:
                parts.append(f"{verdict.compared} check(s) within the baseline")
            tr.write_line("gradcheck gates passed: " + "; ".join(parts), green=True)
