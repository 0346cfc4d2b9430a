"""torch.compile'd code in a check: run eagerly, so that Dynamo leaves it as it was.

Why: the check runs f under a `TorchDispatchMode` (`_torch_tracker`), and Dynamo
refuses to compile a frame while a dispatch mode is active. Worse, it remembers the
refusal for good. Its frame callback (``CatchErrorsWrapper.__call__`` in
``torch/_dynamo/convert_frame.py``; torch 2.13: lines 2538-2570) answers a frame
intercepted under a non-infra dispatch mode with ``ConvertFrameReturn(skip_reason=...)``,
whose defaults (``torch/_dynamo/types.py``, lines 75-87) are the strategy (SKIP,
DEFAULT) with ``apply_to_code=True``: the frame's code object is marked "skip" for the
rest of the process, and so is every frame it calls that the callback intercepts. Those
are the compiled function's own code, the forward of a compiled module and the helpers
either calls, and, for a compiled built-in module (``torch.compile(nn.Linear(...))``),
the one code object that Dynamo wraps every such module's top frame in
(``torch/_dynamo/external_utils.py``, ``wrap_inline``'s ``inner``), so after a check of
one compiled ``Linear`` no compiled built-in module in the process compiles again. The
compiled functions stay callable but run eagerly from then on, and only
``torch._dynamo.reset()``, which drops every compiled graph of the process, undoes it.
(Not the check's own `_torch_tracker._skip_dynamo`: that marks the code of the mode's
handler alone, and (SKIP, SKIP) switches the callback off for the frames it calls
without marking them.)

What: for the check's duration the compiler's stance is ``force_eager``
(``torch.compiler.set_stance``, torch 2.6 and later), where every torch.compile wrapper
calls its function without Dynamo's frame callback, so no frame is intercepted and none
marked; the user's earlier stance comes back when the check ends. Every evaluation and the
gradient pass then run the eager code, with the dispatch mode where the check uses it,
and the cached compiled graphs are neither run nor added to. So the check verifies the
gradient of the eager code, which is what a compiled graph was traced from; a bug of
the compiler itself (a miscompiled kernel) is outside it, as it would be anyway: the
dispatch mode cannot see into a compiled graph. Where f visibly holds compiled code
(`compiled_in`), a notice says so.

The stance is set only where Dynamo is loaded already: without it nothing can have been
compiled, and importing it costs about a second. The stance is global, not per thread,
so compiled code that another thread runs during the check runs eagerly too. Where the
stance cannot be set (torch before 2.6; a check called inside a compiled region), the
check runs as before.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._torch_state import reach


def force_eager() -> Callable[[], None] | None:
    """Set the compiler's stance to ``force_eager``; the function that puts the user's
    stance back, or None where nothing was set (see the module's docstring)."""
    if "torch._dynamo" not in sys.modules:
        return None
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None:
        return None
    try:
        stance = set_stance("force_eager")  # sets it now; its __exit__ puts back the prior
    except (RuntimeError, TypeError, ValueError):  # inside a compiled region
        return None
    return lambda: stance.__exit__(None, None, None)


def _compiled_module(module: torch.nn.Module) -> bool:
    """A module compiled by ``torch.compile(module)`` or ``module.compile()``."""
    if getattr(module, "_compiled_call_impl", None) is not None:
        return True
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is None or not isinstance(module, eval_frame.OptimizedModule):
        return False
    return not isinstance(module.dynamo_ctx, eval_frame.DisableContext)


def _compiled(obj: Any) -> bool:
    """A torch.compile'd function or module, or a module holding one."""
    if isinstance(obj, torch.nn.Module):
        return any(_compiled_module(m) for m in obj.modules())
    try:
        return getattr(obj, "_torchdynamo_orig_callable", None) is not None and not getattr(
            obj, "_torchdynamo_disable", False
        )
    except Exception:  # an object whose __getattr__ raises something else
        return False


def compiled_in(f: Callable[..., Any], modules: Iterable[torch.nn.Module]) -> bool:
    """Whether f, what it reaches directly (`_torch_state.reach`: a lambda over a
    compiled model) or a module of `params` is torch.compile'd or holds compiled code.

    Only looked for where Dynamo is loaded. Compiled code reached deeper (a compiled
    function that a helper of f calls) is run eagerly all the same; it is only not
    named in the notice.
    """
    if "torch._dynamo" not in sys.modules:
        return False
    return any(_compiled(c) for c in (*reach(f), *modules) if c is not None)
