"""Text tables of results: the body of `GradcheckError` and of `Result.report()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._result import BlockResult, Result

_HEADER = (
    f"  {'index':<14} {'analytic':>15} {'numeric':>15} {'rel error':>10}  "
    f"{'tier':<13} {'h':>8}  kink"
)


def _fmt_index(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(i) for i in index) + ("," if len(index) == 1 else "") + ")"


def block_table(block: BlockResult, term: str | None, limit: int) -> list[str]:
    """Lines for one block: a title, then its `limit` worst coordinates and its direction."""
    where = f"term {term!r} · " if term is not None else ""
    title = (
        f"{where}block {block.name!r} (shape {tuple(block.shape)}, {block.dtype}): "
        f"tier {block.tier.label}, max rel error {block.max_rel_error:.2e}, "
        f"{len(block.indices)} coordinate(s) checked, {block.kinks_crossed} kink(s) crossed"
    )
    lines = [title, _HEADER]
    order = sorted(
        range(len(block.indices)),
        key=lambda i: (
            bool(block.counted[i]) and not block.within_noise[i],
            float(block.rel_error[i]),
        ),
        reverse=True,
    )
    counted = block.counted
    for i in order[:limit]:
        tier = block.coordinate_tiers[i].label if counted[i] else "excluded"
        if block.within_noise[i] and counted[i]:
            tier = "noise"
        if counted[i] and block.kink_crossed[i]:
            tier += " 1-sided"
        lines.append(
            f"  {_fmt_index(block.indices[i]):<14} {block.analytic[i]:>15.8e} "
            f"{block.numeric[i]:>15.8e} {block.rel_error[i]:>10.2e}  {tier:<13} "
            f"{block.step[i]:>8.1e}  {'yes' if block.kink_crossed[i] else 'no'}"
        )
    if len(order) > limit:
        lines.append(f"  ... {len(order) - limit} more coordinate(s)")
    d = block.direction
    if d is not None:
        tier = "excluded" if not d.counted else ("noise" if d.within_noise else d.tier.label)
        if d.counted and d.kink_crossed:
            tier += " 1-sided"
        lines.append(
            f"  {'direction v':<14} {d.analytic:>15.8e} {d.numeric:>15.8e} "
            f"{d.rel_error:>10.2e}  {tier:<13} {d.step:>8.1e}  "
            f"{'yes' if d.kink_crossed else 'no'}"
        )
    if block.localized:
        spots = ", ".join(_fmt_index(i) for i in block.localized)
        lines.append(f"  localized by bisection of the direction: {spots}")
    return lines


def result_table(result: Result, limit: int = 5, only_failing: bool = False) -> str:
    """The report of a whole result: every (failing) block of the total and the terms."""
    lines: list[str] = []
    sections: list[tuple[str | None, Result]] = [(None, result)]
    sections += list(result.terms.items())
    for term, sub in sections:
        for block in sub.blocks:
            if only_failing and block.passed:
                continue
            lines.extend(block_table(block, term, limit))
    if result.sweep:
        lines.append(sweep_table(result))
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    for hint in hints(result):
        lines.append(f"hint: {hint}")
    return "\n".join(lines)


def sweep_table(result: Result) -> str:
    """The step-size sweep: relative error at each h for the worst coordinates."""
    steps = sorted({h for _, _, row in result.sweep for h in row}, reverse=True)
    head = f"  {'block':<12} {'index':<10} " + " ".join(f"{h:>8.0e}" for h in steps)
    rows = ["step-size sweep (relative error at each h):", head]
    for name, index, row in result.sweep:
        cells = " ".join(f"{row[h]:>8.1e}" if h in row else f"{'-':>8}" for h in steps)
        rows.append(f"  {name:<12} {_fmt_index(index):<10} {cells}")
    return "\n".join(rows)


def hints(result: Result) -> list[str]:
    """At most one line per known pitfall that the failure looks like."""
    out: list[str] = []
    if result.passed:
        return out
    text = " ".join(result.warnings)
    if "float32" in text or "float16" in text or "lower precision" in text:
        out.append(
            "the function computes in lower precision; gradient checks need float64 "
            "throughout (remove .float()/autocast inside f)"
        )
    if "tiny" in text:
        out.append("the values are tiny: scale the loss up (scale='auto') and check again")
    if "dominates" in text:
        out.append("one loss term dominates a block: check each term on its own (see terms)")
    if result.kinks_crossed and all(b.kinks_crossed for _, b in result.failing()):
        out.append(
            "kinks were crossed in the failing blocks: use fewer datapoints or a smaller eps"
        )
    return out
