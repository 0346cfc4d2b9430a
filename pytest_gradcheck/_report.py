"""The session's gradient-check report: rows collected from test reports, the
terminal section, and the JSON file. Works on plain dicts (`Result.to_dict()`), the
form in which results travel with test reports, also across pytest-xdist workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._tiers import Tier

#: bumped when the JSON layout changes incompatibly
SCHEMA_VERSION = 1

COLOURS: dict[str, dict[str, bool]] = {
    "happy": {"green": True},
    "ok": {"cyan": True},
    "uncomfortable": {"yellow": True},
    "wrong": {"red": True, "bold": True},
}


@dataclass
class SessionReport:
    """Every check of the session, in the order their tests reported."""

    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, nodeid: str, results: Iterable[Mapping[str, Any]], hypothesis: bool) -> None:
        for i, result in enumerate(results):
            self.checks.append({"nodeid": nodeid, "index": i, "hypothesis": hypothesis, **result})

    def rows(self) -> list[dict[str, Any]]:
        """One row per check; a Hypothesis test's examples collapse into one row."""
        rows: list[dict[str, Any]] = []
        by_test: dict[str, dict[str, Any]] = {}
        for check in self.checks:
            row = _row(check)
            if check.get("hypothesis"):
                prev = by_test.get(check["nodeid"])
                if prev is not None:
                    prev["examples"] += 1
                    prev["coordinates"] += row["coordinates"]
                    prev["kinks_crossed"] += row["kinks_crossed"]
                    prev["blocks"] = max(prev["blocks"], row["blocks"])
                    if Tier[row["tier"].upper()] > Tier[prev["tier"].upper()] or (
                        row["tier"] == prev["tier"] and row["max_rel_error"] > prev["max_rel_error"]
                    ):
                        prev.update(tier=row["tier"], max_rel_error=row["max_rel_error"])
                    prev["passed"] = prev["passed"] and row["passed"]
                    continue
                by_test[check["nodeid"]] = row
            rows.append(row)
        return rows

    def to_json(self, version: str) -> str:
        return json.dumps(
            {"schema_version": SCHEMA_VERSION, "pytest_gradcheck": version, "checks": self.checks},
            indent=1,
            allow_nan=True,
        )


def _row(check: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "nodeid": check["nodeid"],
        "blocks": len(check["blocks"]),
        "coordinates": check["coordinates"],
        "kinks_crossed": check["kinks_crossed"],
        "max_rel_error": check["max_rel_error"],
        "tier": check["tier"],
        "passed": check["passed"],
        "terms": list(check.get("terms", {})),
        "examples": 1,
        "check": check,
    }


def write_section(write_line: Callable[..., None], report: SessionReport, detail: str) -> None:
    """Write the "gradient checks" rows (and, for detail="blocks", one line per block)."""
    rows = report.rows()
    width = max([len(r["nodeid"]) for r in rows] + [4])
    width = min(width, 70)
    write_line(
        f"{'test':<{width}}  {'blocks':>6}  {'coords':>6}  {'kinks':>5}  {'max rel err':>11}  tier"
    )
    for r in rows:
        name = r["nodeid"] if len(r["nodeid"]) <= width else "..." + r["nodeid"][-width + 3 :]
        extra = f"  ({r['examples']} examples)" if r["examples"] > 1 else ""
        if r["terms"]:
            extra += "  terms: " + ", ".join(
                f"{t}={r['check']['terms'][t]['tier']}" for t in r["terms"]
            )
        verdict = "" if r["passed"] else "  FAILED"
        write_line(
            f"{name:<{width}}  {r['blocks']:>6}  {r['coordinates']:>6}  "
            f"{r['kinks_crossed']:>5}  {r['max_rel_error']:>11.2e}  "
            f"{r['tier']}{verdict}{extra}",
            **COLOURS.get(r["tier"], {}),
        )
        if detail == "blocks" and r["examples"] == 1:
            for b in r["check"]["blocks"]:
                write_line(
                    f"    {b['name']:<24} {tuple(b['shape'])!s:<14} "
                    f"{len(b['indices']):>6}  {b['kinks_crossed']:>5}  "
                    f"{b['max_rel_error']:>11.2e}  {b['tier']}",
                    **COLOURS.get(b["tier"], {}),
                )
