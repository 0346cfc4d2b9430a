"""Float64 ahead of torch's dispatcher, for what checks dtypes before an op reaches it.

f reads the checked blocks in float64, but it may read other tensors in float32: data
and labels a closure captured. The tracker casts those per op, at dispatch
(`_torch_tracker.promote`). Some callers compare dtypes before that: convolutions,
``bilinear`` and ``prelu`` check their inputs against their weights before dispatch,
and a recurrent module (``nn.RNNBase``) compares its input's dtype with its weights'
in Python, so f fails with "Input type (float) and bias type (double) should be the
same" while the same f with a linear layer checks fine.

So the modules of a check get a forward pre-hook on every recurrent module (its
input and hidden state cast to float64 when its weights are), and an f that still
fails on a dtype mismatch is run under `Promoting`: a torch function mode that casts
the lower-precision floating inputs of any torch function that also reads a float64
one. Casting float32 to float64 is exact, so the values f computes are those it
would compute on float64 data. An argument the function writes (an in-place method,
``out=``, ``__setitem__``'s target) is never cast: its write would go to the copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from ._torch_tracker import LOW_PRECISION


def _scan(value: Any, found: list[bool]) -> None:
    """Set found[0] for a float64 tensor and found[1] for a lower-precision one."""
    if isinstance(value, torch.Tensor):
        dtype = value.dtype
        if dtype is torch.float64:
            found[0] = True
        elif dtype in LOW_PRECISION:
            found[1] = True
    elif isinstance(value, (list, tuple)):
        for v in value:
            _scan(v, found)


def _lift(value: Any) -> Any:
    """`value` with its lower-precision floating tensors cast to float64 (lists, plain
    tuples and packed sequences followed)."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64) if value.dtype in LOW_PRECISION else value
    if isinstance(value, PackedSequence):
        return value.to(torch.float64) if value.data.dtype in LOW_PRECISION else value
    if type(value) in (list, tuple):
        return type(value)(_lift(v) for v in value)
    return value


def _writes(func: Any, kwargs: dict) -> bool:
    """Whether `func` writes into one of its arguments (in place, or `out=`)."""
    name = getattr(func, "__name__", "")
    return (
        "out" in kwargs
        or name.endswith("_")
        or name in ("__setitem__", "__set__")
        or (name.startswith("__i") and name.endswith("__"))
    )


class Promoting(TorchFunctionMode):
    """Cast the lower-precision floating inputs of torch functions that mix them with
    float64 ones, before the function runs (see the module's docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = [False, False]
        _scan(args, found)
        _scan(tuple(kwargs.values()), found)
        if found[0] and found[1] and not _writes(func, kwargs):
            args = tuple(_lift(a) for a in args)
            kwargs = {k: _lift(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _recurrent_pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    """Cast a recurrent module's input and hidden state to float64 when its weights are."""
    weights = getattr(module, "_flat_weights", None)
    if not weights or not isinstance(weights[0], torch.Tensor):
        return None
    if weights[0].dtype is not torch.float64:
        return None
    return tuple(_lift(a) for a in args), {k: _lift(v) for k, v in kwargs.items()}


def hook_recurrent(modules: Iterable[torch.nn.Module]) -> list[RemovableHandle]:
    """Pre-hooks on the recurrent modules among `modules` (remove them after the check)."""
    return [
        m.register_forward_pre_hook(_recurrent_pre_hook, with_kwargs=True)
        for m in modules
        if isinstance(m, torch.nn.RNNBase)
    ]
