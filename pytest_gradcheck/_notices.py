"""Which of a check's warnings are notices: what the check did, not what it could not see.

A check always runs in float64, so inputs in lower precision are cast for it (where f
cannot also run in those dtypes, for the look at its gradient there, `backends/_own_dtype`
says so with the same prefix); a block sitting on exact ties is checked just off them;
where one term's gradient dominates another's, each term is checked on its own, so
an error in the small one fails that term's check instead of hiding in the total; and
torch.compile'd code in a PyTorch f runs eagerly for the check (the check verifies the
gradient of the code a compiled graph is traced from; `backends/_torch_compiled`); and
``scale="auto"`` multiplied the loss by a power of two, as the user asked (exact: it
changes no relative error and no verdict); and a failing block's analytic gradient
is the numeric one rearranged (`_shapes`: the failure says so, and a hint says what
the bug looks like); and past 16 blocks under a custom autograd.Function, the rest
were not taken again each alone requiring a gradient (`backends/torch.py`, `_lone`). The
check says so in `Result.warnings`, but these are notices, no alarms: they are not
issued as `GradcheckWarning`s nor marked in the terminal report, where the first would
stand beside nearly every check of a float32 model and teach users to ignore the
warnings that matter (a check that cannot see a wrong gradient). Free of NumPy and the
frameworks: the plugin's report reads it at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable

#: how the backends' notice that lower-precision inputs were checked in float64 starts
CAST_NOTICE = "checked in float64: "
#: what the engine's notice that a block was checked off its exact ties says of it
OFF_TIES_NOTICE = "sits on exact ties at the checked point"
#: what the engine's notice that one term's gradient dominates another's says of it
DOMINANCE_NOTICE = "each term is also checked on its own"
#: what the PyTorch backend's notice that compiled code ran eagerly says of it
COMPILE_NOTICE = "ran eagerly for the check"
#: what the engine's notice that scale="auto" multiplied the loss says of it
SCALE_NOTICE = "multiplied the loss by 2**"
#: what the engine's notice that a failing block's analytic gradient is the numeric one
#: rearranged (transposed, shifted by one index, swapped with another block's) says of it
SHAPE_NOTICE = "the way a rearranged gradient does"
#: what the PyTorch backend's notice that blocks past `LONE_BLOCKS` under a custom
#: backward were not taken again with them alone requiring a gradient says of them
LONE_NOTICE = "were not taken again alone"


def alarming(warnings: Iterable[str]) -> list[str]:
    """The warnings that say where a check could not see well (all but the notices)."""
    return [
        w
        for w in warnings
        if not (
            w.removeprefix("gradcheck: ").startswith(CAST_NOTICE)
            or OFF_TIES_NOTICE in w
            or DOMINANCE_NOTICE in w
            or COMPILE_NOTICE in w
            or SHAPE_NOTICE in w
            or LONE_NOTICE in w
            or w.removeprefix("gradcheck: ").startswith("scale='auto' " + SCALE_NOTICE)
        )
    ]
