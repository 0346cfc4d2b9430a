"""The session's gradient-check report: checks collected from test reports, the rows of
the terminal section "gradient checks" (laid out by `_terminal`), and the JSON document.

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

from ._notices import alarming
from ._tiers import Tier

#: bumped when the JSON layout changes incompatibly (new fields do not bump it)
SCHEMA_VERSION = 2


def tier_of(check: Mapping[str, Any]) -> Tier:
    return Tier.parse(check["tier"])


def raised(check: Mapping[str, Any]) -> bool:
    """Whether the check raised (bad input, an error in f) instead of giving a result."""
    return check.get("error") is not None


def warning_raised(check: Mapping[str, Any]) -> str | None:
    """The text of the check's warning that a warnings filter raised as an error
    (``-W error::pytest_gradcheck.GradcheckWarning``): the call raised it after its
    result was known, so its test failed although the result may have passed."""
    return check.get("warning_raised")


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
    #: the warning a filter raised as an error (the first of its examples' to raise one)
    warning_raised: str | None = None

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
                    row.warned = row.warned or bool(alarming(check.get("warnings") or ()))
                    row.warning_raised = row.warning_raised or warning_raised(check)
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
                warned=bool(alarming(check.get("warnings") or ())),
                warning_raised=warning_raised(check),
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
            # counted in passed or failed by their result as well: a subset, not an outcome
            "warnings_raised": sum(1 for c in checks if warning_raised(c)),
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
