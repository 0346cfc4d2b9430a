"""The session's gradient-check report: checks collected from test reports, the rows of
the terminal section "gradient checks", and the JSON document.

Works on plain dicts (`Result.to_dict()` plus where the check ran), the form in which
results travel with test reports, also across pytest-xdist workers. Checks are kept in
the tests' collection order (every xdist worker collects the same items in the same
order), so the section and the JSON file are the same under ``-n N`` as in a serial run.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._tiers import Tier

#: bumped when the JSON layout changes incompatibly (new fields do not bump it)
SCHEMA_VERSION = 2

#: terminal markup of each tier (TerminalWriter keywords)
COLOURS: dict[str, dict[str, bool]] = {
    "happy": {"green": True},
    "ok": {"cyan": True},
    "uncomfortable": {"yellow": True},
    "wrong": {"red": True, "bold": True},
    "error": {"red": True, "bold": True},  # a check that raised
}

#: one piece of a terminal line: text and its markup
Segment = tuple[str, Mapping[str, bool]]

_NO_MARKUP: Mapping[str, bool] = {}

#: the mark of a row whose check has warnings, and the line explaining it: a passing
#: check's warnings say where it could not see a wrong gradient
WARNED = "!"
LEGEND = " the check has warnings: see the warnings summary, or its failure message"


def tier_of(check: Mapping[str, Any]) -> Tier:
    return Tier.parse(check["tier"])


def raised(check: Mapping[str, Any]) -> bool:
    """Whether the check raised (bad input, an error in f) instead of giving a result."""
    return check.get("error") is not None


def _rank(check: Mapping[str, Any]) -> tuple[int, float]:
    """Worse checks rank higher: by tier, then error; one that raised above all."""
    if raised(check):
        return (len(Tier), math.inf)
    return (int(tier_of(check)), check["max_rel_error"])


def raised_entry(error: BaseException) -> dict[str, Any]:
    """The fields of a check that raised, in place of `Result.to_dict()` (no tier, no
    error measured): the exception's type and message under ``error``."""
    return {
        "passed": False,
        "tier": None,
        "max_rel_error": None,
        "tolerance": None,
        "kinks_crossed": 0,
        "evaluations": 0,
        "coordinates": 0,
        "framework": None,
        "seconds": 0.0,
        "options": {},
        "warnings": [],
        "blocks": [],
        "terms": {},
        "error": {"type": type(error).__name__, "message": str(error)},
    }


@dataclass
class Row:
    """One row of the section: a check, or the collapsed examples of a Hypothesis check."""

    nodeid: str
    index: int
    label: str
    check: dict[str, Any]  # the (worst) check of the row
    examples: int = 1
    coordinates: int = 0
    kinks_crossed: int = 0
    passed: bool = True
    warned: bool = False  # any of its checks has warnings (its examples', for Hypothesis)

    @property
    def tier(self) -> str:
        """The tier's label, or ``error`` for a check that raised."""
        return "error" if raised(self.check) else self.check["tier"]

    @property
    def max_rel_error(self) -> float | None:
        return self.check["max_rel_error"]


@dataclass
class SessionReport:
    """Every check of the session (call `sorted_checks()` for the stable order)."""

    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        entries: Iterable[Mapping[str, Any]],
        *,
        position: int | None = None,
        outcome: str | None = None,
    ) -> None:
        """Add the checks carried by one test report.

        `position` is the test's place in the collection (None: unknown, sorted last),
        `outcome` the test phase's outcome (passed, failed, skipped, xfailed, xpassed).
        """
        for entry in entries:
            check = dict(entry)
            check["position"] = position
            check["test_outcome"] = outcome
            self.checks.append(check)

    def sorted_checks(self) -> list[dict[str, Any]]:
        """Checks in collection order, each test's checks in the order they ran."""

        def key(c: Mapping[str, Any]) -> tuple[float, str]:
            pos = c.get("position")
            return (math.inf if pos is None else float(pos), c["nodeid"])

        return sorted(self.checks, key=key)  # stable: keeps each test's order

    def rows(self) -> list[Row]:
        """One row per check; a Hypothesis check's examples collapse into one row."""
        rows: list[Row] = []
        collapsed: dict[tuple[str, int], Row] = {}
        per_test: dict[str, int] = {}
        for check in self.sorted_checks():
            nodeid, index = check["nodeid"], int(check.get("index", 0))
            if check.get("example") is not None:
                row = collapsed.get((nodeid, index))
                if row is not None:
                    row.examples += 1
                    row.coordinates += check["coordinates"]
                    row.kinks_crossed += check["kinks_crossed"]
                    row.passed = row.passed and check["passed"]
                    row.warned = row.warned or bool(check.get("warnings"))
                    if _rank(check) > _rank(row.check):
                        row.check = check
                    continue
            row = Row(
                nodeid=nodeid,
                index=index,
                label=nodeid,
                check=check,
                coordinates=check["coordinates"],
                kinks_crossed=check["kinks_crossed"],
                passed=check["passed"],
                warned=bool(check.get("warnings")),
            )
            if check.get("example") is not None:
                collapsed[(nodeid, index)] = row
            per_test[nodeid] = per_test.get(nodeid, 0) + 1
            rows.append(row)
        for row in rows:
            if per_test[row.nodeid] > 1:
                row.label = f"{row.nodeid} #{row.index + 1}"
        return rows

    def summary(self) -> dict[str, Any]:
        """Counts over the session: tests, checks, tiers, the worst."""
        checks = self.checks
        results = [c for c in checks if not raised(c)]
        tiers = {t.label: 0 for t in Tier}
        for c in results:
            tiers[c["tier"]] += 1
        worst = max((tier_of(c) for c in results), default=None)
        return {
            "tests": len({c["nodeid"] for c in checks}),
            "checks": len(checks),
            "passed": sum(1 for c in results if c["passed"]),
            "failed": sum(1 for c in results if not c["passed"]),
            "errors": len(checks) - len(results),
            "tiers": tiers,
            "worst_tier": None if worst is None else worst.label,
            "max_rel_error": max((c["max_rel_error"] for c in results), default=None),
            "kinks_crossed": sum(c["kinks_crossed"] for c in checks),
            "evaluations": sum(c["evaluations"] for c in checks),
            "seconds": sum(c.get("seconds", 0.0) for c in checks),
        }

    def per_test(self) -> dict[str, tuple[Tier, float]]:
        """Each test's worst tier and largest max relative error."""
        out: dict[str, tuple[Tier, float]] = {}
        for c in self.checks:
            if raised(c):
                continue
            tier, err = tier_of(c), c["max_rel_error"]
            prev = out.get(c["nodeid"])
            out[c["nodeid"]] = (
                (tier, err) if prev is None else (max(prev[0], tier), max(prev[1], err))
            )
        return out

    def document(
        self,
        *,
        version: str,
        pytest_version: str,
        defaults: Mapping[str, Any],
        gates: Mapping[str, Any],
        created: str,
    ) -> dict[str, Any]:
        """The JSON document (see docs/json-schema.md)."""
        checks = []
        for c in self.sorted_checks():
            c = dict(c)
            c.pop("position", None)
            checks.append(c)
        return {
            "schema_version": SCHEMA_VERSION,
            "pytest_gradcheck": version,
            "pytest": pytest_version,
            "python": platform.python_version(),
            "created": created,
            "defaults": plain(dict(defaults)),
            "summary": self.summary(),
            "gates": dict(gates),
            "checks": checks,
        }


def plain(value: Any) -> Any:
    """`value` as built-in JSON types only: dict (str keys), list, str, int, float, bool,
    None. Tiers become their labels, other enums and NumPy scalars their Python value,
    anything else its repr. What travels with an xdist report must be this plain."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    if isinstance(value, Tier):
        return value.label
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)  # a NumPy scalar or 0-d array
    if callable(item):
        try:
            return plain(item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN/inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps(document: Mapping[str, Any]) -> str:
    return json.dumps(finite_json(document), indent=1, allow_nan=False) + "\n"


# -- the terminal section ---------------------------------------------------------


def _clip(text: str, width: int) -> str:
    """`text` cut to `width` columns at its end."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[len(text) - width + 3 :]


def _tier(label: str) -> Segment:
    return (label, COLOURS.get(label, _NO_MARKUP))


def section_lines(report: SessionReport, detail: str, width: int = 80) -> list[list[Segment]]:
    """The lines of the "gradient checks" section, as segments with markup.

    ``detail="blocks"`` adds one line per block (of the total and of each term):
    name, shape, coordinates checked, kinks crossed, worst relative error, tier. A
    collapsed Hypothesis row shows the blocks of its worst example.
    """
    rows = report.rows()
    if not rows:
        return []
    name_w = max(len(r.label) for r in rows)
    name_w = max(4, min(name_w, max(30, width - 46)))
    lines: list[list[Segment]] = [
        [
            (
                f"{'test':<{name_w}}  {'blocks':>6}  {'coords':>6}  {'kinks':>5}  "
                f"{'max rel err':>11}  tier",
                _NO_MARKUP,
            )
        ]
    ]
    for r in rows:
        check = r.check
        label = r.label
        if len(label) > name_w:  # the whole test id on its own line, the cells below it
            lines.append([(label, _NO_MARKUP)])
            label = ""
        if raised(check):  # no result: what it raised, on a line of its own
            cells = f"{label:<{name_w}}  {'-':>6}  {'-':>6}  {'-':>5}  {'-':>11}  "
            lines.append([(cells, _NO_MARKUP), _tier(r.tier)])
            error = check["error"]
            text = f"{error['type']}: {error['message']}".splitlines()[0]
            lines.append([("    " + _clip(text, width - 4), _NO_MARKUP)])
            continue
        cells = (
            f"{label:<{name_w}}  {len(check['blocks']):>6}  "
            f"{r.coordinates:>6}  {r.kinks_crossed:>5}  {r.max_rel_error:>11.2e}  "
        )
        line: list[Segment] = [(cells, _NO_MARKUP), _tier(r.tier)]
        extra = ""
        if not r.passed:
            line.append(("  FAILED", COLOURS["wrong"]))
        if r.warned:
            line.append(("  " + WARNED, COLOURS["uncomfortable"]))
        if r.examples > 1:
            extra += f"  ({r.examples} examples, worst shown)"
        terms = check.get("terms") or {}
        if terms:
            extra += "  terms: " + ", ".join(f"{t}={sub['tier']}" for t, sub in terms.items())
        if extra:
            line.append((extra, _NO_MARKUP))
        lines.append(line)
        if detail == "blocks":
            for term, sub in [(None, check), *terms.items()]:
                for b in sub["blocks"]:
                    name = b["name"] if term is None else f"{term}: {b['name']}"
                    shape = (
                        "("
                        + ", ".join(str(s) for s in b["shape"])
                        + (",)" if len(b["shape"]) == 1 else ")")
                    )
                    lines.append(
                        [
                            (
                                f"    {_fit(name, 28):<28} {shape:<14} "
                                f"{len(b['indices']):>6}  {b['kinks_crossed']:>5}  "
                                f"{b['max_rel_error']:>11.2e}  ",
                                _NO_MARKUP,
                            ),
                            _tier(b["tier"]),
                        ]
                    )
        lines.extend(_sweep_lines(check))
    s = report.summary()
    counts = ", ".join(f"{n} {t}" for t, n in [*s["tiers"].items(), ("raised", s["errors"])] if n)
    lines.append([(f"{s['checks']} check(s) in {s['tests']} test(s): {counts}", _NO_MARKUP)])
    if any(r.warned for r in rows):
        lines.append([(WARNED, COLOURS["uncomfortable"]), (LEGEND, _NO_MARKUP)])
    return lines


def _sweep_lines(check: Mapping[str, Any]) -> list[list[Segment]]:
    """The step-size sweep of a check (``sweep=True``, ``--gradcheck-h-sweep``), if any."""
    rows = check.get("sweep") or []
    if not rows:
        return []
    steps = sorted({float(h) for row in rows for h in row["rel_error"]}, reverse=True)
    head = f"    {'h-sweep':<20} " + " ".join(f"{h:>8.0e}" for h in steps)
    out: list[list[Segment]] = [[(head, _NO_MARKUP)]]
    for row in rows:
        errors = {float(h): e for h, e in row["rel_error"].items()}
        where = f"{row['block']}[{', '.join(str(i) for i in row['index'])}]"
        cells = " ".join(
            f"{errors[h]:>8.1e}" if errors.get(h) is not None else f"{'-':>8}" for h in steps
        )
        out.append([(f"    {_fit(where, 20):<20} {cells}", _NO_MARKUP)])
    return out
