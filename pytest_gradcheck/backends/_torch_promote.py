"""Float64 ahead of torch's dispatcher, for what checks dtypes before an op reaches it.

f reads the checked blocks in float64, but it may read other tensors in float32: data
and labels a closure captured. The tracker casts those per op, at dispatch
(`_torch_tracker.promote`). Some callers compare dtypes before that: convolutions,
``bilinear`` and ``prelu`` check their inputs against their weights before dispatch,
and a recurrent module (``nn.RNNBase``) compares its input's dtype with its weights'
in Python, so f fails with "Input type (float) and bias type (double) should be the
same" while the same f with a linear layer checks fine.

The same mode keeps f in float64 where the user's model, in its own dtype, would not
have lowered precision (`Promoting`'s `home`): a float32 model's ``logits.float()``,
or a buffer it makes without a dtype, would otherwise turn the check's float64 into
float32.

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

from ._torch_tracker import LOW_PRECISION, MANTISSA_BITS


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


#: mantissa bits: how precise each floating dtype is (bfloat16 and float16 by what they
#: resolve, not by their range)

#: the methods that cast to one fixed dtype
_FIXED_CASTS = {
    torch.Tensor.float: torch.float32,
    torch.Tensor.half: torch.float16,
    torch.Tensor.bfloat16: torch.bfloat16,
}
_CASTS = frozenset({torch.Tensor.to, torch.Tensor.type, torch.Tensor.type_as})
#: the floating tensor types ``Tensor.type`` takes by name
_TYPE_NAMES = {
    "FloatTensor": torch.float32,
    "HalfTensor": torch.float16,
    "BFloat16Tensor": torch.bfloat16,
}


def home_dtype(dtypes: Iterable[torch.dtype]) -> torch.dtype | None:
    """The least precise of the lower-precision floating dtypes among `dtypes` (the
    dtype the user's model computes in), or None when there is none."""
    low = [d for d in dtypes if d in LOW_PRECISION]
    return min(low, key=MANTISSA_BITS.__getitem__) if low else None


class Promoting(TorchFunctionMode):
    """Float64 ahead of dispatch, as f needs it (see the module's docstring).

    With `mix`: cast the lower-precision floating inputs of torch functions that mix
    them with float64 ones. With `home` (the dtype of the user's blocks before the
    check cast them to float64): keep f in float64 where, in the user's dtype, it
    would not have lowered precision: a cast of a float64 value to a dtype at least as
    precise as `home` (``logits.float()`` in a float32 model, a no-op there) leaves it
    in float64, and tensors made without a dtype (``torch.zeros(T, B, H)`` to fill
    with outputs) are float64 (torch's default dtype, for the duration). A cast below
    `home` (``.half()`` in a float32 model) is the user's, and stays.
    """

    def __init__(self, mix: bool = True, home: torch.dtype | None = None) -> None:
        super().__init__()
        self._mix = mix
        self._home = home
        self._default: torch.dtype | None = None

    def __enter__(self) -> Promoting:
        if self._home is not None:
            self._default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self._default is not None:
                torch.set_default_dtype(self._default)
                self._default = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._home is not None and args and _is_f64(args[0]):
            if func in _FIXED_CASTS:
                if self._keeps(_FIXED_CASTS[func]):
                    return args[0]
            elif func in _CASTS:
                args, kwargs = self._kept(func, args, kwargs)
        if self._mix:
            found = [False, False]
            _scan(args, found)
            _scan(tuple(kwargs.values()), found)
            if found[0] and found[1] and not _writes(func, kwargs):
                args = tuple(_lift(a) for a in args)
                kwargs = {k: _lift(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)

    def _keeps(self, dtype: Any) -> bool:
        """Whether a cast to `dtype` is one the user's dtype would not have lowered."""
        home = self._home
        return (
            home is not None
            and dtype in LOW_PRECISION
            and MANTISSA_BITS[dtype] >= MANTISSA_BITS[home]
        )

    def _kept(self, func: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """`.to`, `.type` and `.type_as` with a kept target dtype replaced by float64."""
        if func is torch.Tensor.type_as:
            other = args[1] if len(args) > 1 else kwargs.get("other")
            if isinstance(other, torch.Tensor) and self._keeps(other.dtype):
                return (args[0], other.to(torch.float64)), {}
            return args, kwargs
        if func is torch.Tensor.type:
            target = args[1] if len(args) > 1 else kwargs.get("dtype")
            name = target if isinstance(target, str) else getattr(target, "__name__", None)
            if isinstance(name, str):  # a tensor type: "torch.FloatTensor", torch.cuda.HalfTensor
                dtype = _TYPE_NAMES.get(name.rsplit(".", 1)[-1])
                if dtype is None or not self._keeps(dtype):
                    return args, kwargs
                prefix = name.rsplit(".", 1)[0] if "." in name else "torch"
                if not isinstance(target, str):
                    prefix = target.__module__
                return (args[0], f"{prefix}.DoubleTensor", *args[2:]), {
                    k: v for k, v in kwargs.items() if k != "dtype"
                }
        new_args = list(args)
        for i, a in enumerate(args[1:], start=1):
            if isinstance(a, torch.dtype) and self._keeps(a):
                new_args[i] = torch.float64
            elif isinstance(a, torch.Tensor) and func is torch.Tensor.to and self._keeps(a.dtype):
                new_args[i] = a.to(torch.float64)  # .to(other): its device, float64
        new_kwargs = dict(kwargs)
        if isinstance(kwargs.get("dtype"), torch.dtype) and self._keeps(kwargs["dtype"]):
            new_kwargs["dtype"] = torch.float64
        return tuple(new_args), new_kwargs


def _is_f64(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype is torch.float64


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
