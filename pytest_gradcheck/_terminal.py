"""The terminal section "gradient checks": the session report's rows laid out in columns
that fit the terminal (80 columns and up).

A row is: test id, blocks, coordinates, kinks crossed, worst relative error, tier,
then ``FAILED`` (``XFAIL`` in a test that failed as expected; ``RAISED``: a warning of
the check raised as an error) and the
warnings mark ``!``, each in a column of its own where any row has it. What does not
fit beside the cells goes elsewhere: a long test id on a line of its own above them,
the Hypothesis example count and the terms' tiers on indented lines below them, the
warning a row raised on a line below it. Block lines (``--gradcheck-report blocks``),
step sweeps and the count line keep to the same width.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from ._report import Row, SessionReport, raised

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

FAILED = "FAILED"
#: a failing check in a test marked xfail that failed as expected
XFAIL = "XFAIL"
#: the mark of a row whose check gave a result but whose call raised one of its warnings,
#: which a warnings filter made an error (``-W error::pytest_gradcheck.GradcheckWarning``):
#: its test failed, whatever its tier says; the warning is on the line below
RAISED = "RAISED"
_VERDICT_W = max(len(FAILED), len(RAISED))

#: the columns after the test id: blocks, coords, kinks, max rel err (each after two
#: spaces), and the two spaces before the tier
_CELLS_W = 2 + 6 + 2 + 6 + 2 + 5 + 2 + 11 + 2
_MIN_NAME = 10  # the test column never narrower (a longer id stands on its own line)
_INDENT = "    "


def _clip(text: str, width: int) -> str:
    """`text` cut to `width` columns at its end."""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _fit(text: str, width: int) -> str:
    """`text` cut to `width` columns at its start (a name's end says most)."""
    return text if len(text) <= width else "..." + text[len(text) - width + 3 :]


def _tier(label: str) -> Segment:
    return (label, COLOURS.get(label, _NO_MARKUP))


def _verdict(row: Row) -> str:
    """The row's verdict mark: FAILED for a result worse than its tolerance (XFAIL where
    its test was expected to fail: a planted bug), RAISED for one whose warning was
    raised as an error, none otherwise (and for a call that raised instead of giving a
    result: its tier says ``error``)."""
    if raised(row.check):
        return ""
    if not row.passed:
        return XFAIL if row.check.get("test_outcome") == "xfailed" else FAILED
    return RAISED if row.warning_raised else ""


def _length(line: Sequence[Segment]) -> int:
    return sum(len(text) for text, _ in line)


class _Layout:
    """The column widths of one section."""

    def __init__(self, rows: Sequence[Row], width: int) -> None:
        self.width = width
        self.tier_w = max(4, *(len(r.tier) for r in rows))
        self.verdict = any(_verdict(r) for r in rows)
        self.warned = any(r.warned for r in rows)
        tail = self.tier_w + (2 + _VERDICT_W) * self.verdict + (2 + len(WARNED)) * self.warned
        longest = max(len(r.label) for r in rows)
        self.name_w = max(4, min(longest, max(_MIN_NAME, width - _CELLS_W - tail)))

    def header(self) -> list[Segment]:
        return [
            (
                f"{'test':<{self.name_w}}  {'blocks':>6}  {'coords':>6}  {'kinks':>5}  "
                f"{'max rel err':>11}  tier",
                _NO_MARKUP,
            )
        ]

    def cells(self, label: str, blocks: str, coords: str, kinks: str, err: str) -> str:
        return f"{label:<{self.name_w}}  {blocks:>6}  {coords:>6}  {kinks:>5}  {err:>11}  "

    def flags(self, tier: str, verdict: str, warned: bool) -> list[Segment]:
        """The tier, the verdict mark (FAILED, RAISED or none) and the warnings mark,
        each in its column (no trailing blanks)."""
        out: list[Segment] = [_tier(tier)]
        pad = " " * (self.tier_w - len(tier))
        if verdict:
            out.append((f"{pad}  {verdict:<{_VERDICT_W}}".rstrip(), COLOURS["wrong"]))
            pad = " " * (_VERDICT_W - len(verdict))
        elif self.verdict and warned:
            pad += " " * (2 + _VERDICT_W)
        if warned:
            out.append((f"{pad}  {WARNED}", COLOURS["uncomfortable"]))
        return out

    def below(self, text: str) -> list[list[Segment]]:
        """`text` on indented lines of its own, wrapped to the width."""
        wrapped = textwrap.wrap(
            text, self.width - len(_INDENT), break_on_hyphens=False, break_long_words=True
        )
        return [[(_INDENT + part, _NO_MARKUP)] for part in wrapped]


def section_lines(report: SessionReport, detail: str, width: int = 80) -> list[list[Segment]]:
    """The lines of the "gradient checks" section, as segments with markup.

    ``detail="blocks"`` adds one line per block (of the total and of each term):
    name and shape, coordinates checked, kinks crossed, worst relative error, tier,
    aligned with the row's columns. A collapsed Hypothesis row shows the blocks of its
    worst example.
    """
    rows = report.rows()
    if not rows:
        return []
    width = max(width, 60)
    layout = _Layout(rows, width)
    lines: list[list[Segment]] = [layout.header()]
    for r in rows:
        lines.extend(_row_lines(r, layout, detail))
    lines.extend(_count_lines(report.summary(), width))
    if layout.warned:
        lines.append([(WARNED, COLOURS["uncomfortable"]), (LEGEND, _NO_MARKUP)])
    return lines


def _count_lines(s: Mapping[str, Any], width: int) -> list[list[Segment]]:
    """The count line (checks, tests, tiers, raised, warnings raised), continued on
    indented lines between its counts where it is wider than the terminal."""
    counts = [f"{n} {t}" for t, n in [*s["tiers"].items(), ("raised", s["errors"])] if n]
    pieces = [f"{c}," for c in counts[:-1]] + counts[-1:]
    if s["warnings_raised"]:  # a subset of the checks counted before it
        pieces[-1:] = [f"{p};" for p in pieces[-1:]]
        pieces.append(f"{s['warnings_raised']} with a warning raised as an error")
    lines = [f"{s['checks']} check(s) in {s['tests']} test(s):"]
    for piece in pieces:
        if len(lines[-1]) + 1 + len(piece) <= width:
            lines[-1] += " " + piece
        else:
            lines.append(_INDENT + piece)
    return [[(line, _NO_MARKUP)] for line in lines]


def _row_lines(r: Row, layout: _Layout, detail: str) -> list[list[Segment]]:
    """A row's lines: its test id (if too long for its column), its cells, then what
    did not fit beside them, its blocks and its step sweep."""
    lines: list[list[Segment]] = []
    label = r.label
    if len(label) > layout.name_w:  # the whole test id on its own line, the cells below it
        lines.append([(label, _NO_MARKUP)])
        label = ""
    check = r.check
    if raised(check):  # no result: what it raised, on a line of its own
        cells = layout.cells(label, "-", "-", "-", "-")
        lines.append([(cells, _NO_MARKUP), *layout.flags(r.tier, "", r.warned)])
        error = check["error"]
        text = f"{error['type']}: {error['message']}".splitlines()[0]
        lines.append([(_INDENT + _clip(text, layout.width - len(_INDENT)), _NO_MARKUP)])
        return lines
    cells = layout.cells(
        label,
        str(len(check["blocks"])),
        str(r.coordinates),
        str(r.kinks_crossed),
        f"{r.max_rel_error:.2e}",
    )
    line: list[Segment] = [(cells, _NO_MARKUP), *layout.flags(r.tier, _verdict(r), r.warned)]
    terms = check.get("terms") or {}
    extras = []
    if r.examples > 1:
        extras.append(f"({r.examples} examples, worst shown)")
    if terms:
        extras.append("terms: " + ", ".join(f"{t}={sub['tier']}" for t, sub in terms.items()))
    lines.append(line)
    for extra in extras:
        if _length(lines[-1]) + 2 + len(extra) <= layout.width and lines[-1] is line:
            line.append(("  " + extra, _NO_MARKUP))
        else:
            lines.extend(layout.below(extra))
    if r.warning_raised:  # the warning the call raised, as a raised row's error
        text = f"raised GradcheckWarning: {r.warning_raised}".splitlines()[0]
        lines.append([(_INDENT + _clip(text, layout.width - len(_INDENT)), _NO_MARKUP)])
    if detail == "blocks":
        for term, sub in [(None, check), *terms.items()]:
            lines.extend(_block_line(b, term, layout) for b in sub["blocks"])
    lines.extend(_sweep_lines(check, layout.width))
    return lines


def _block_line(block: Mapping[str, Any], term: str | None, layout: _Layout) -> list[Segment]:
    """One block under its row: name and shape in the test and blocks columns, then
    coordinates, kinks, error and tier under theirs."""
    shape = block["shape"]
    shape_text = "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")
    name = block["name"] if term is None else f"{term}: {block['name']}"
    room = layout.name_w + 2 + 6 - len(_INDENT)  # the test and blocks columns
    name = _fit(name, max(room - len(shape_text) - 1, 8))
    left = f"{_INDENT}{name} {shape_text}"
    cells = (
        f"{left:<{layout.name_w + 8}}  {len(block['indices']):>6}  "
        f"{block['kinks_crossed']:>5}  {block['max_rel_error']:>11.2e}  "
    )
    return [(cells, _NO_MARKUP), _tier(block["tier"])]


def _sweep_lines(check: Mapping[str, Any], width: int) -> list[list[Segment]]:
    """The step-size sweep of a check (``sweep=True``, ``--gradcheck-h-sweep``), if any,
    in as many tables as the steps need to fit the width."""
    rows = check.get("sweep") or []
    if not rows:
        return []
    steps = sorted({float(h) for row in rows for h in row["rel_error"]}, reverse=True)
    where_w = 20
    per_line = max(1, (width - len(_INDENT) - where_w) // 9)
    out: list[list[Segment]] = []
    for start in range(0, len(steps), per_line):
        chunk = steps[start : start + per_line]
        head = f"{_INDENT}{'h-sweep':<{where_w}}" + "".join(f" {h:>8.0e}" for h in chunk)
        out.append([(head, _NO_MARKUP)])
        for row in rows:
            errors = {float(h): e for h, e in row["rel_error"].items()}
            where = f"{row['block']}[{', '.join(str(i) for i in row['index'])}]"
            cells = "".join(
                f" {errors[h]:>8.1e}" if errors.get(h) is not None else f" {'-':>8}" for h in chunk
            )
            out.append([(f"{_INDENT}{_fit(where, where_w):<{where_w}}{cells}", _NO_MARKUP)])
    return out
