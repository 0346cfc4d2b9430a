"""Text tables of results: the body of `GradcheckError` and of `Result.report()`.

A failing block is shown by its worst coordinates, each with the raw analytic and
numeric values, the relative error, the coordinate's tier, the step h of its difference
and whether the difference crossed a kink. After the tables come the check's warnings
and one ``hint:`` line for each known pitfall that the failure looks like.

Works on the result's arrays element by element: importing this module imports no
numerical framework.
"""

from __future__ import annotations

import ast
import math
import re
from typing import TYPE_CHECKING

from ._notices import SHAPE_NOTICE
from ._tiers import Tier

if TYPE_CHECKING:
    from ._result import BlockResult, Result

#: dtypes whose round-off swamps a difference quotient at the default step
LOW_PRECISION = ("float32", "float16", "bfloat16", "complex64", "half", "single")

#: below this, values are outside the "active range" (as `_steps.TINY`)
TINY = 1e-10

_HEADER = (
    f"  {'index':<14} {'analytic':>16} {'numeric':>16} {'rel error':>10}  "
    f"{'tier':<13} {'h':>8}  kink"
)


def _fmt_index(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(i) for i in index) + ("," if len(index) == 1 else "") + ")"


def _num(x: float, width: int) -> str:
    return f"{float(x):>{width}.8e}"


def _worst_order(block: BlockResult) -> list[int]:
    """Coordinates worst first: counted ones by relative error, then the excluded."""
    counted = block.counted
    return sorted(
        range(len(block.indices)),
        key=lambda i: (
            bool(counted[i]) and not block.within_noise[i],
            float(block.rel_error[i]) if not math.isnan(block.rel_error[i]) else math.inf,
        ),
        reverse=True,
    )


def _coordinate_label(block: BlockResult, i: int, tiers: list) -> str:
    """The tier column: the tier, "noise", "excluded", and "1-sided" for a rescue."""
    if not block.counted[i]:
        return "excluded"
    label = "noise" if block.within_noise[i] else tiers[i].label
    if block.kink_crossed[i]:
        label += " 1-sided"  # crossed a kink, rescued by a one-sided difference
    return label


def block_table(block: BlockResult, term: str | None, limit: int) -> list[str]:
    """Lines for one block: a title, then its `limit` worst coordinates and its direction."""
    where = f"term {term!r} · " if term is not None else ""
    size = math.prod(block.shape) if block.shape else 1
    title = (
        f"{where}block {block.name!r} (shape {tuple(block.shape)}, {block.dtype}): "
        f"tier {block.tier.label}, max rel error {block.max_rel_error:.2e}, "
        f"{len(block.indices)} of {size} coordinate(s) checked, "
        f"{block.kinks_crossed} kink(s) crossed"
    )
    lines = [title, _HEADER]
    order = _worst_order(block)
    tiers = block.coordinate_tiers
    for i in order[:limit]:
        tier = _coordinate_label(block, i, tiers)
        lines.append(
            f"  {_fmt_index(block.indices[i]):<14} {_num(block.analytic[i], 16)} "
            f"{_num(block.numeric[i], 16)} {float(block.rel_error[i]):>10.2e}  {tier:<13} "
            f"{float(block.step[i]):>8.1e}  {'yes' if block.kink_crossed[i] else 'no'}"
        )
    if len(order) > limit:
        lines.append(f"  ... {len(order) - limit} more coordinate(s)")
    d = block.direction
    if d is not None:
        tier = "excluded" if not d.counted else ("noise" if d.within_noise else d.tier.label)
        if d.counted and d.kink_crossed:
            tier += " 1-sided"
        lines.append(
            f"  {'direction v':<14} {_num(d.analytic, 16)} {_num(d.numeric, 16)} "
            f"{d.rel_error:>10.2e}  {tier:<13} {d.step:>8.1e}  "
            f"{'yes' if d.kink_crossed else 'no'}"
        )
        if d.coverage < 1.0:
            lines.append(
                f"  direction v moves {d.coverage:.1%} of the block: the rest holds an exact "
                "tie (a kink at the checked point) that every step crossed"
            )
        # (said only where the direction's own error is well above its coordinates', in
        # tier or twice as large: there the reader needs to know which one the title is)
        coords = block.coordinates_max_rel_error
        amplified = Tier.of(d.rel_error) > Tier.of(coords) or d.rel_error > 2.0 * coords
        if d.explained and amplified:
            spots = ", ".join(_fmt_index(i) for i in d.explained_by)
            lines.append(
                f"  direction v is explained by {spots}: with the numeric value(s) there, "
                "v·g agrees within the direction's tolerance or round-off (rel error "
                f"{d.residual_rel_error:.1e}), so the block's tier is its coordinates'"
            )
        elif d.residual_rel_error is not None and not d.explained and amplified:
            lines.append(
                "  direction v is not explained by the failing coordinate(s): with their "
                f"numeric values, v·g still disagrees (rel error {d.residual_rel_error:.1e}), "
                "so entries not in the table are wrong too"
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
    if result.scale != 1.0:
        lines.append(
            f"note: the loss was multiplied by {result.scale:.6g} (scale='auto'); the values "
            "above are those of the scaled loss"
        )
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


# -- hints --------------------------------------------------------------------------


def _factor_hint(failing: list[tuple[str | None, BlockResult]]) -> str | None:
    """A constant analytic/numeric ratio (a missing 1/N, a 2 or 0.5) or a sign flip.

    "At every checked coordinate" must hold: every counted coordinate whose values are
    not both ~0 (0 = c · 0 for any c) has a finite ratio, numeric non-zero, equal to the
    others', and a counted direction agrees. A coordinate where only one side is ~0, or
    one that passes (ratio 1) beside failing ones, is no constant factor. "~0" is
    relative to the block's largest value below 1: a loss scaled by 1e-12 (a mean over
    a huge batch) keeps its factor, where every value sits under an absolute 1e-10.
    """
    for term, block in failing:
        where = f"block {block.name!r}" + (f" of term {term!r}" if term is not None else "")
        counted = block.counted
        d = block.direction
        seen = [
            abs(float(v))
            for i in range(len(block.indices))
            if counted[i]
            for v in (block.analytic[i], block.numeric[i])
        ]
        if d is not None and d.counted:
            seen += [abs(float(d.analytic)), abs(float(d.numeric))]
        finite = [v for v in seen if math.isfinite(v)]
        zero = TINY * min(1.0, max(finite, default=1.0))
        ratios = []
        for i in range(len(block.indices)):
            if not counted[i]:
                continue
            a, n = float(block.analytic[i]), float(block.numeric[i])
            if abs(a) <= zero and abs(n) <= zero:
                continue
            ratios.append(a / n if abs(n) > zero and abs(a) > zero else math.nan)
        if d is not None and d.counted and not (abs(d.analytic) <= zero and abs(d.numeric) <= zero):
            direction = d.analytic / d.numeric if abs(d.numeric) > zero else math.nan
        else:
            direction = None
        if len(ratios) < 2 or not all(math.isfinite(r) for r in ratios):
            continue
        r0 = ratios[0]
        if abs(r0 - 1.0) < 1e-6 or any(abs(r - r0) > 1e-4 * abs(r0) for r in ratios):
            continue
        # the direction's numeric value sums many entries: a looser match
        if direction is not None and not abs(direction - r0) <= 1e-3 * abs(r0):
            continue
        if abs(r0 + 1.0) < 1e-4:
            return (
                f"in {where} the analytic gradient is minus the numeric one at "
                "every checked coordinate: a sign is flipped (gradient ascent vs descent, "
                "or a - written as +)"
            )
        return (
            f"in {where} analytic / numeric = {r0:.6g} at every checked "
            "coordinate: the gradient is off by a constant factor (a missing 1/N of a mean, "
            "a 2 or 0.5 of a squared term, a regularisation strength applied twice)"
        )
    return None


def _zero_hint(
    failing: list[tuple[str | None, BlockResult]], tolerance: Tier, skip: set[str]
) -> str | None:
    """The analytic gradient is exactly 0 at every failing coordinate, the numeric not.

    A backward that leaves part of its output unwritten (a slice of a ``zeros_like``
    never filled, a branch of the forward it leaves out) or a term's gradient forgotten
    altogether. Only comparisons that crossed no kink (a derivative wrong where f is
    flat has its own hint), and not the blocks in `skip` (an embedding's padding row,
    whose hint says more).
    """
    for term, block in failing:
        if block.name in skip:
            continue
        tiers = block.coordinate_tiers
        bad = [
            i
            for i in range(len(block.indices))
            if block.counted[i] and not block.within_noise[i] and tiers[i] > tolerance
        ]
        if not bad or any(
            block.kink_crossed[i] or float(block.analytic[i]) != 0.0 or block.numeric[i] == 0
            for i in bad
        ):
            continue
        where = f"block {block.name!r}" + (f" of term {term!r}" if term is not None else "")
        return (
            f"in {where} the analytic gradient is exactly 0 at every failing coordinate "
            f"({len(bad)} of them) while the numeric one is not: part of the gradient is "
            "never computed (a slice of a zeros_like left unwritten, a branch or mask of "
            "the forward that the backward leaves out, a term whose gradient is forgotten)"
        )
    return None


def _failing_one_sided(failing: list[tuple[str | None, BlockResult]], tolerance: Tier) -> int:
    """How many comparisons of the failing blocks were rescued one-sidedly from a kink
    crossing, and fail."""
    count = 0
    for _, block in failing:
        if block.one_sided is not None:
            tiers = block.coordinate_tiers
            count += sum(1 for i, t in enumerate(tiers) if block.one_sided[i] and t > tolerance)
        d = block.direction
        if d is not None and d.one_sided and d.tier > tolerance:
            count += 1
    return count


def _triangle_hint(failing: list[tuple[str | None, BlockResult]], tolerance: Tier) -> str | None:
    """f reads one triangle of a matrix it takes as symmetric (eigh, cholesky).

    Such an f does not change when an entry of the other strict triangle moves, so the
    numeric gradient is 0 there, while autograd returns the gradient of a symmetric
    input (PyTorch's documented convention), non-zero on both triangles; on the read
    triangle the numeric value then counts both mirrored entries, twice the analytic one
    (or equal to it, where the analytic gradient is the one-triangle one). The pattern
    looked for, on a square block (or a batch of square matrices): every checked
    coordinate of one strict triangle with an analytic value has numeric ~0 (at least
    one such), every one of the other strict triangle passes or has analytic / numeric
    ~0.5, and the diagonal passes.
    """
    for term, block in failing:
        shape = tuple(block.shape)
        if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] < 2:
            continue
        counted, tiers = block.counted, block.coordinate_tiers
        zero = {"upper": True, "lower": True}
        seen = {"upper": False, "lower": False}
        ok = {"upper": True, "lower": True}
        diagonal_ok = True
        for i, index in enumerate(block.indices):
            if not counted[i]:
                continue
            a, n = float(block.analytic[i]), float(block.numeric[i])
            passes = bool(block.within_noise[i]) or tiers[i] <= tolerance
            r, c = index[-2], index[-1]
            if r == c:
                diagonal_ok = diagonal_ok and passes
                continue
            side = "upper" if r < c else "lower"
            if abs(a) > TINY:
                seen[side] = True
                zero[side] = zero[side] and abs(n) <= 1e-3 * abs(a)
            elif abs(n) > TINY:
                zero[side] = False
            half = abs(n) > TINY and abs(a / n - 0.5) <= 0.05
            ok[side] = ok[side] and (passes or half)
        if not diagonal_ok:
            continue
        for unread, read in (("upper", "lower"), ("lower", "upper")):
            if seen[unread] and zero[unread] and ok[read]:
                where = f"block {block.name!r}" + (f" of term {term!r}" if term is not None else "")
                return (
                    f"in {where} the numeric gradient is zero on the {unread} triangle while "
                    f"the analytic one is not, and the {read} triangle passes or is off by a "
                    f"factor 2: f reads only the {read} triangle of a matrix it treats as "
                    "symmetric (torch.linalg.eigh, torch.linalg.cholesky, jnp.linalg.eigh "
                    "with symmetrize_input=False), while the gradient is that of a symmetric "
                    "input; symmetrize the input inside f, (A + A.T) / 2 (A + A.mT for a "
                    "batch), so that the function checked depends on both triangles"
                )
    return None


def _padding_hint(
    failing: list[tuple[str | None, BlockResult]], rows: list[tuple[str, str]], tolerance: Tier
) -> str | None:
    """The failing coordinates of an embedding weight are all in its padding row.

    torch gives ``nn.Embedding(padding_idx=p)``'s row p no gradient, by design, although
    the output reads it; the differences see the dependence. `rows` are the
    ``(row, block)`` pairs the torch backend warned about.
    """
    padding = {block: int(row) for row, block in rows}
    for term, block in failing:
        row = padding.get(block.name)
        if row is None:
            continue
        tiers = block.coordinate_tiers
        bad = [
            index
            for i, index in enumerate(block.indices)
            if block.counted[i] and not block.within_noise[i] and tiers[i] > tolerance
        ]
        if bad and all(index[0] == row for index in bad):
            where = f"block {block.name!r}" + (f" of term {term!r}" if term is not None else "")
            return (
                f"every failing coordinate of {where} is in row {row}, the padding_idx of "
                "the embedding that reads it (see the warning): torch gives that row no "
                "gradient by design; check without it (set the module's padding_idx = None "
                "for the check, or use inputs without the padding index)"
            )
    return None


#: the torch backend's warning that f wrote into a checked block (names the block)
_WRITTEN = re.compile(r"f writes into ('[^']*') in place")

#: the torch backend's warning that f updates a tensor in place and reads it back
_UPDATED = re.compile(r"f updates (.+?) in place and reads")

#: the torch backend's warning that f reads an embedding's padding row
_PADDING = re.compile(r"f reads row (\d+) of '([^']*)' through an embedding with padding_idx")

#: a name as the warnings write it, with `!r`: in single quotes, or in double quotes
#: where it holds one (a dict entry's block, ``"args[0]['W']"``)
_REPR = r"""(?:'[^'\\]*(?:\\.[^'\\]*)*'|"[^"\\]*(?:\\.[^"\\]*)*")"""

#: the engine's warnings that name a block with tiny gradients, or a block where one
#: term dominates another (captured: the block, then the dominated term)
_TINY_WARNED = re.compile(rf"block ({_REPR}) has tiny gradients")
_DOMINATED = re.compile(
    rf"in block ({_REPR}) the gradient of term {_REPR} dominates that of ({_REPR})"
)

#: the engine's notices that a failing block's analytic gradient is the numeric one
#: rearranged (see `_shapes`): captured, the block(s), the term (or ""), what was done
_REARRANGED = re.compile(
    rf"block ({_REPR})( of term {_REPR})? fails {re.escape(SHAPE_NOTICE)}: "
    r"its analytic gradient is the numeric one "
    r"(transposed|with a part transposed|shifted by [+-]1 along (?:its flat index|axis \d+))"
)
_SWAPPED = re.compile(
    rf"blocks ({_REPR}) and ({_REPR})( of term {_REPR})? both fail {re.escape(SHAPE_NOTICE)}: "
    r"(a part of )?"
)

#: the backends' warnings that f lowers the precision of what it computes
_LOWERED_INSIDE = ("computes in lower precision inside", "computed in reduced precision")


def _passes_in(result: Result, term: str, block: str) -> bool:
    """Whether the check of `term` passed in `block` (False where it is not known)."""
    sub = result.terms.get(term)
    if sub is None:
        return False
    return any(b.name == block and b.passed for b in sub.blocks)


def _rearranged_hints(text: str) -> list[str]:
    """A transposed, shifted or swapped gradient, from the engine's notices (which it
    gives for failing blocks only, see `_shapes`)."""
    out = []
    for a, b, term, part in _SWAPPED.findall(text):
        if part:
            out.append(
                f"blocks {a} and {b}{term} look swapped in part: the analytic minus the "
                "numeric gradient of each is the numeric minus the analytic gradient of the "
                "other at every comparison that counts (see the warning): the backward "
                "returns one term's gradients in the wrong order (return dW1, dW2, not dW2, "
                "dW1), beside a right rest (a weight decay, say)"
            )
            continue
        out.append(
            f"blocks {a} and {b}{term} look swapped: each one's numeric gradient matches the "
            "other's analytic gradient at every comparison that counts (see the warning): "
            "the backward returns their gradients in the wrong order (return dW1, dW2, "
            "not dW2, dW1)"
        )
    for name, term, what in _REARRANGED.findall(text):
        if what == "with a part transposed":
            out.append(
                f"block {name}{term} looks transposed in part: the analytic minus the "
                "numeric gradient is antisymmetric at every comparison that counts (see the "
                "warning): one term's gradient is returned transposed (return dW, not dW.T; "
                "x.T @ dy, not dy.T @ x), beside a right rest (a weight decay, say)"
            )
        elif what == "transposed":
            out.append(
                f"block {name}{term} looks transposed: its numeric gradient matches the "
                "analytic gradient transposed at every comparison that counts (see the "
                "warning): return dW, not dW.T (x.T @ dy, not dy.T @ x)"
            )
        else:
            out.append(
                f"block {name}{term} looks shifted by one index: its analytic gradient is "
                f"the numeric one {what} at every comparison that "
                "counts (see the warning): an off-by-one index in the backward (a loop "
                "bound, a slice start, a convolution's or a pooling's offset)"
            )
    return out


def hints(result: Result) -> list[str]:
    """One line for each known pitfall that the failure looks like (none if it passed).

    The pitfalls: low-precision inputs or computation (float32), values too tiny for
    the differences to resolve, kinks crossed near the point, a loss term dominating
    another; and, from the numbers themselves, which named term fails on its own, a
    gradient transposed, shifted by one index or swapped with another block's, or a part
    of it transposed or swapped (the engine's notices, see `_shapes`), a constant
    factor or a flipped sign.
    """
    out: list[str] = []
    if result.passed:
        return out
    failing = result.failing()
    text = " ".join(result.warnings)

    # the check evaluates f on float64 copies whatever the inputs' dtype: low precision
    # explains a failure only where f itself computes in it (which torch and JAX report;
    # NumPy cannot see a cast inside f, so there a float32 input is the clue)
    lowp = sorted({b.name for _, b in failing if str(b.dtype).lower() in LOW_PRECISION})
    if any(w in text for w in _LOWERED_INSIDE):
        out.append(
            "f computes in lower precision inside (see the warning): in float32 the "
            "round-off of f (~1e-7 relative) divided by the step h swamps the difference; "
            "remove the .float()/astype/dtype=/autocast inside f for the check"
        )
    elif lowp and result.framework == "numpy":
        out.append(
            f"block(s) {', '.join(map(repr, lowp))} are low precision in your code; the "
            "check evaluates f on float64 copies, but a cast inside f back to float32 "
            "(np.asarray(x, dtype=np.float32), x.astype(np.float32)) makes its round-off "
            "(~1e-7 relative) divided by the step h swamp the difference: remove such a cast"
        )

    # the hints below are about the blocks that failed: a warning about a passing block
    # (its tiny gradients, its dominating term, its kinks) explains nothing here
    failing_names = {b.name for _, b in failing}
    tiny = {n for n in map(ast.literal_eval, _TINY_WARNED.findall(text)) if n in failing_names}
    for _, block in failing:
        values = [abs(float(v)) for v in (*block.analytic, *block.numeric)]
        if values and max(values) <= TINY:
            tiny.add(block.name)
    if tiny:
        out.append(
            f"the gradients in block(s) {', '.join(map(repr, sorted(tiny)))} are tiny "
            f"(<= {TINY:.0e}), where round-off dominates the relative error: scale the loss "
            "up (scale='auto') or check with larger inputs"
        )

    crossed = sum(b.kinks_crossed for _, b in failing)
    one_sided = _failing_one_sided(failing, result.tolerance)
    if one_sided:
        out.append(
            f"{one_sided} failing comparison(s) were taken one-sidedly, on the checked "
            "point's side of a kink, where f's slope is the numeric value: the backward "
            "disagrees with f on that side. A derivative wrong in a clamped or masked "
            "region looks like this (a safe log's g / max(x, eps) where f is flat below "
            "eps), and so does a deliberate surrogate gradient (straight-through, "
            "clipped), which no finite difference confirms"
        )
    if crossed > one_sided:
        out.append(
            f"{crossed} difference(s) crossed a kink (excluded, or rescued one-sidedly): f "
            "is not differentiable near the point; use fewer datapoints, a smaller eps, or "
            "move the inputs away from the kinks (e.g. a ReLU input exactly at 0)"
        )
    elif result.options.get("kinks") == "off" and result.kinks_present:
        out.append(
            "kinks='off' but f takes max-like decisions: a difference across a kink looks "
            "like a wrong gradient; check again with kinks='track'"
        )

    written = sorted(set(_WRITTEN.findall(text)))
    if written:
        out.append(
            f"f writes into {', '.join(written)} in place, outside autograd "
            "(nn.Embedding(max_norm=...) renormalizes the rows it reads, spectral_norm "
            "updates its vectors): the gradient autograd returns leaves out how those "
            "writes depend on the values, the differences do not; check without the "
            "write (max_norm=None, eval mode) or at a point it leaves unchanged"
        )

    updated = _UPDATED.findall(text)
    if updated:
        out.append(
            f"f updates {', '.join(updated)} in place in every call and reads the result "
            "(see the warning): where the update runs under torch.no_grad (the old "
            "torch.nn.utils.spectral_norm in training mode, its weight_u and weight_v) "
            "autograd treats the new values as constants while the differences follow "
            "them, so the two disagree by design; check in eval mode (model.eval()), "
            "where the update is not made"
        )

    padding = _padding_hint(failing, _PADDING.findall(text), result.tolerance)
    if padding:
        out.append(padding)

    # where the dominated term passes in that block, the error is the dominating term's,
    # which the total's table shows as it is: the hint is for an error the total hides
    dominated = sorted(
        {
            name
            for name, small in (tuple(map(ast.literal_eval, m)) for m in _DOMINATED.findall(text))
            if name in failing_names and not _passes_in(result, small, name)
        }
    )
    if dominated:
        out.append(
            f"in block(s) {', '.join(map(repr, dominated))} one term's gradient dominates "
            "another's (see the warning), so the total's relative error is mostly the large "
            "term's: each term is checked on its own, and its table above says which "
            "term's gradient is wrong"
        )

    if result.terms:
        bad = [name for name, sub in result.terms.items() if not sub.passed]
        good = [name for name, sub in result.terms.items() if sub.passed]
        if bad and good:
            out.append(
                f"term(s) {', '.join(map(repr, bad))} fail on their own while "
                f"{', '.join(map(repr, good))} pass: the error is in the gradient of "
                f"{', '.join(map(repr, bad))}"
            )

    out.extend(_rearranged_hints(text))
    factor = _factor_hint(failing)
    if factor:
        out.append(factor)
    padded = {block for _, block in _PADDING.findall(text)} if padding else set()
    zero = _zero_hint(failing, result.tolerance, padded)
    if zero:
        out.append(zero)
    triangle = _triangle_hint(failing, result.tolerance)
    if triangle:
        out.append(triangle)
    return out
