"""Session gates for CI: a tier ceiling and a comparison with a baseline JSON report.

Both work on the checks of the session (plain dicts, as in the JSON report), so they
give the same verdict under pytest-xdist as in a serial run. A gate failure sets the
session's exit status; it never raises, so pytest prints no traceback for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._report import SCHEMA_VERSION
from ._tiers import Tier

#: relative errors below this are compared as this (round-off noise, not a regression)
BASELINE_FLOOR = 1e-10

DEFAULT_FACTOR = 10.0

#: a check's identity across runs: its test's node id and its place in the test (for a
#: Hypothesis test, its place in each example; the examples are folded together)
Key = tuple[str, int]


@dataclass
class Gates:
    """The gates in force for the session (None: off)."""

    fail_tier: Tier | None = None
    baseline: Path | None = None
    baseline_factor: float = DEFAULT_FACTOR
    save_baseline: Path | None = None
    #: the settings as given, for messages (``--gradcheck-fail-tier=ok``, or
    #: ``gradcheck_fail_tier = ok (ini)``), and the baseline's path as given
    fail_tier_given: str = ""
    baseline_given: str = ""
    baseline_shown: str = ""
    #: the loaded baseline: worst (max rel error, tier) of each check
    expected: dict[Key, tuple[float, str]] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.fail_tier is not None or self.baseline is not None

    def describe(self) -> dict[str, Any]:
        return {
            "fail_tier": None if self.fail_tier is None else self.fail_tier.label,
            "baseline": None if self.baseline is None else str(self.baseline),
            "baseline_factor": self.baseline_factor,
        }


@dataclass
class Verdict:
    """What the gates found: one message per offending check, by gate."""

    fail_tier: list[str] = field(default_factory=list)
    baseline: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.fail_tier or self.baseline)


def worst_by_key(checks: Iterable[Mapping[str, Any]]) -> dict[Key, tuple[float, str]]:
    """The worst (max rel error, tier) of each check key, folding Hypothesis examples."""
    out: dict[Key, tuple[float, str]] = {}
    for c in checks:
        if c.get("error") is not None:
            continue  # it raised: no tier, no error to compare (see `raised_by_key`)
        key = (str(c["nodeid"]), int(c.get("index", 0)))
        err = c.get("max_rel_error")
        err = float("inf") if err is None else float(err)  # null: non-finite in JSON
        tier = str(c["tier"])
        prev = out.get(key)
        if prev is None or (Tier.parse(tier), err) > (Tier.parse(prev[1]), prev[0]):
            out[key] = (err, tier)
    return out


def raised_by_key(checks: Iterable[Mapping[str, Any]]) -> dict[Key, str]:
    """What each check key that raised raised (``ValueError: ...``), any example's."""
    out: dict[Key, str] = {}
    for c in checks:
        error = c.get("error")
        if error is not None:
            key = (str(c["nodeid"]), int(c.get("index", 0)))
            message = str(error.get("message", "")).splitlines()
            out.setdefault(key, f"{error.get('type')}: {message[0] if message else ''}")
    return out


def _short(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _labels(keys: Iterable[Key]) -> dict[Key, str]:
    keys = set(keys)
    counts: dict[str, int] = {}
    for nodeid, _ in keys:
        counts[nodeid] = counts.get(nodeid, 0) + 1
    return {
        (nodeid, i): nodeid if counts[nodeid] == 1 and i == 0 else f"{nodeid} #{i + 1}"
        for nodeid, i in keys
    }


def load_baseline(path: Path) -> dict[Key, tuple[float, str]]:
    """Read a baseline (any ``--gradcheck-json`` report); ValueError if unusable."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"baseline {path} does not exist; write one with --gradcheck-save-baseline {path}"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"baseline {path} cannot be read as JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("checks"), list):
        raise ValueError(f"baseline {path} is not a pytest-gradcheck JSON report")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(
            f"baseline {path} has schema_version {version!r}; this pytest-gradcheck reads "
            f"up to {SCHEMA_VERSION}: upgrade it or save the baseline again"
        )
    try:
        return worst_by_key(doc["checks"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"baseline {path}: a check lacks a field ({err})") from None


def evaluate(gates: Gates, checks: list[Mapping[str, Any]]) -> Verdict:
    """Apply the gates to the session's checks."""
    verdict = Verdict()
    now = worst_by_key(checks)
    raised = {key: text for key, text in raised_by_key(checks).items() if key not in now}
    labels = _labels([*now, *raised, *gates.expected])
    if gates.fail_tier is not None:
        for key, text in raised.items():
            verdict.fail_tier.append(f"{labels[key]}: raised {_short(text)}")
        for key, (err, tier) in now.items():
            if Tier.parse(tier) > gates.fail_tier:
                verdict.fail_tier.append(
                    f"{labels[key]}: tier {tier} (max rel error {err:.2e}) is worse than "
                    f"{gates.fail_tier.label}"
                )
    if gates.baseline is not None:
        factor = gates.baseline_factor
        for key, (old, _) in gates.expected.items():
            if key in raised:
                verdict.baseline.append(
                    f"{labels[key]}: raised {_short(raised[key])} "
                    f"(baseline max rel error {old:.2e})"
                )
                continue
            if key not in now:
                verdict.baseline.append(
                    f"{labels[key]}: check disappeared (baseline max rel error {old:.2e})"
                )
                continue
            verdict.compared += 1
            new = now[key][0]
            if new > factor * max(old, BASELINE_FLOOR):
                grew = new / max(old, BASELINE_FLOOR)
                verdict.baseline.append(
                    f"{labels[key]}: max rel error grew {old:.2e} -> {new:.2e} "
                    f"(x{grew:.3g}, more than the allowed x{factor:g})"
                )
    return verdict


def report_lines(gates: Gates, verdict: Verdict) -> list[str]:
    """The lines explaining a failed gate (empty when every gate passed)."""
    lines: list[str] = []
    if verdict.fail_tier:
        assert gates.fail_tier is not None
        given = gates.fail_tier_given or f"--gradcheck-fail-tier={gates.fail_tier.label}"
        lines.append(
            f"{given}: {len(verdict.fail_tier)} check(s) worse than {gates.fail_tier.label}:"
        )
        lines.extend(f"  {m}" for m in verdict.fail_tier)
    if verdict.baseline:
        given = gates.baseline_given or f"--gradcheck-baseline={gates.baseline}"
        lines.append(
            f"{given}: {len(verdict.baseline)} check(s) "
            f"regressed or disappeared (factor {gates.baseline_factor:g}):"
        )
        lines.extend(f"  {m}" for m in verdict.baseline)
    return lines
