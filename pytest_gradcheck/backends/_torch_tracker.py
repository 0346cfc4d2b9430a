"""Winner tracking for PyTorch: a `TorchDispatchMode` that sees every aten op of f.

The mode sits below autograd, so it sees the ops an evaluation actually runs, whatever
Python-level API produced them (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.clamp``),
after composite ops have been decomposed. For every op whose output depends on a
max-like decision (a ReLU or ELU mask, which argument of ``maximum`` won, the arg-max of
a pooling window, the side of a clamp, the sign under ``abs``, a sort order, a
comparison that feeds ``where``, the active margins of a hinge loss) it records the
decision. Two
evaluations of f took the same branches exactly when their digests are equal, so a
difference between the digests of f(x+h) and f(x-h) means the centered difference
straddled a kink.

Decisions are recorded only for ops with floating-point inputs that depend on the
checked blocks: a comparison of integer labels, a comparison of the data or a
normalisation by the data's max is the same at every point of a check, not a kink of
the loss. Dependence is followed through storages (`WinnerTracker`'s `sources`): every
op that reads a dependent tensor makes the storages it writes dependent, so views and
in-place writes carry it too.

For the shift test (see `_kinks`), the mode moves the values of max/min reductions
(`_shifted`) and takes the other branch of two-way decisions (`_FLIPS`: comparisons,
abs, the max of two tensors, ReLU and one-sided clamps); a checked point whose loss
does not change is held to the happy tier, its reductions and flips unrecorded.

The same mode also watches for lower precision inside f: an op that reads a float64
tensor and writes a float32, float16 or bfloat16 one (``x.float()``, ``x.half()``, a
``copy_`` into a float32 buffer) means part of f ran in less than the float64 the check
needs, and the backend warns about it.

Nothing here is imported until a torch check runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .._kinks import SignatureRecorder, shift_offsets, shift_testable
from ._torch_state import StateWatch

aten = torch.ops.aten

#: dtypes below float64 that the precision watch reports
LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)
_F64 = torch.float64
#: the mantissa bits of each floating dtype: which one is more precise
MANTISSA_BITS = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24, torch.float64: 53}

#: ops whose output does not depend on their input's values (factories "like" it):
#: a float32 `rand_like(x)` of a float64 `x` is not a loss of precision
_SHAPE_ONLY = frozenset(
    {
        "empty_like",
        "zeros_like",
        "ones_like",
        "full_like",
        "rand_like",
        "randn_like",
        "randint_like",
        "new_empty",
        "new_empty_strided",
        "new_zeros",
        "new_ones",
        "new_full",
    }
)


def _is_float(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _any_float(*xs: Any) -> bool:
    return any(_is_float(x) for x in xs)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in an aten op's arguments or outputs (flat, lists and tuples), in order.

    Called several times for every op f runs, so it is lean: an aten list argument
    holds one type (``int[]``, ``Tensor[]``, ``Tensor?[]``...), and a list whose first
    entry is a number (a shape, a dim list) is skipped without walking it.
    """
    if isinstance(obj, torch.Tensor):
        return [obj]
    found: list[torch.Tensor] = []
    if isinstance(obj, (list, tuple)):
        _collect(obj, found)
    elif isinstance(obj, dict):
        _collect(obj.values(), found)
    return found


def _inputs(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """`_tensors` of an op's ``(args, kwargs)``, without walking the pair itself."""
    found: list[torch.Tensor] = []
    _collect(args, found)
    if kwargs:
        _collect(kwargs.values(), found)
    return found


def _collect(items: Any, found: list[torch.Tensor]) -> None:
    for item in items:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            if item and not isinstance(item[0], _NUMBERS):
                _collect(item, found)
        elif isinstance(item, dict):
            _collect(item.values(), found)


_NUMBERS = (int, float, bool, complex)


_POSITIONS: dict[Any, dict[str, tuple[int, bool, Any]]] = {}


def _arg(func: Any, args: tuple, kwargs: dict, name: str) -> Any:
    """The argument `name` of an aten call, wherever it was passed, or its default.

    Arguments left at their schema default may be omitted from a dispatched call, so
    the default comes from the op's schema.
    """
    positions = _POSITIONS.get(func)
    if positions is None:
        positions = {}
        for i, a in enumerate(func._schema.arguments):
            default = a.default_value if a.has_default_value() else None
            positions[a.name] = (i, a.kwarg_only, default)
        _POSITIONS[func] = positions
    i, kwarg_only, default = positions[name]
    if not kwarg_only and i < len(args):
        return args[i]
    return kwargs.get(name, default)


def _side(x: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
    """-2 below `lo`, +2 above `hi`, 0 between, -1 or +1 exactly at a bound (either
    bound may be None or a tensor).

    An entry exactly at a bound is a decision of its own, taken by neither side: both
    one-sided derivatives are valid there, so a difference through it is not judged by
    one side (see `_pairs.Counter.one_sided`), whichever side the op's convention (or
    a hand-written backward) picks.
    """
    side = torch.zeros((), dtype=torch.int8, device=x.device)
    if lo is not None:
        side = side - 2 * (x < lo).to(torch.int8) - (x == lo).to(torch.int8)
    if hi is not None:
        side = side + 2 * (x > hi).to(torch.int8) + (x == hi).to(torch.int8)
    return side.expand(torch.broadcast_shapes(side.shape, x.shape))


def _sign(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(torch.int8) - (x < 0).to(torch.int8)


def _out(i: int | None = None) -> Callable[..., Any]:
    """A decision read from the op's output (index `i` of a tuple), if the input is float."""

    def decide(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
        if not _any_float(*args[:2]):
            return None
        value = out if i is None else out[i]
        return value.detach().clone()

    return decide


# Decisions computed from the inputs run before the op, so in-place ops are seen
# before they overwrite their input; decisions read from the output run after it.


# Two-way decisions are recorded as signs, an exact tie (x == 0 under a ReLU) its own
# value: see `_side`.


def _positive(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x = args[0]
    return _sign(x) if _is_float(x) else None


def _threshold(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x = args[0]
    return _sign(x - _arg(func, args, kwargs, "threshold")) if _is_float(x) else None


def _hardtanh(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x = args[0]
    if not _is_float(x):
        return None
    return _side(x, _arg(func, args, kwargs, "min_val"), _arg(func, args, kwargs, "max_val"))


def _relu6(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return _side(args[0], 0.0, 6.0) if _is_float(args[0]) else None


def _clamp(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x = args[0]
    name = func.overloadpacket.__name__.rstrip("_")
    lo = _arg(func, args, kwargs, "min") if name in ("clamp", "clamp_min", "clip") else None
    hi = _arg(func, args, kwargs, "max") if name in ("clamp", "clamp_max", "clip") else None
    if not _any_float(x, lo, hi):
        return None
    return _side(x, lo, hi)


def _shrink(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x = args[0]
    if not _is_float(x):
        return None
    lambd = _arg(func, args, kwargs, "lambd")
    return _side(x, -lambd, lambd)


def _hard3(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return _side(args[0], -3.0, 3.0) if _is_float(args[0]) else None


def _winner(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    a, b = args[0], args[1]
    if not _any_float(a, b):
        return None
    return _sign(a - b)


def _sign_of_input(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return _sign(args[0]) if _is_float(args[0]) else None


def _sign_of_other(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    other = args[1] if len(args) > 1 else kwargs.get("other")
    return _sign(other) if _is_float(other) else None


def _keepdim_mask(x: torch.Tensor, reduced: torch.Tensor, dims: Any, keepdim: bool) -> Any:
    """The mask of the entries of `x` equal to their reduction (the winners, ties included)."""
    if not keepdim and reduced.dim() > 0:
        if isinstance(dims, int):
            dims = [dims]
        for d in sorted(d % x.dim() for d in dims):
            reduced = reduced.unsqueeze(d)
    return x == reduced


def _max_like(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """``max``/``min`` overloads: the winners of a full reduction, the indices along a
    dim, or which argument won for the binary form."""
    x = args[0]
    overload = func._overloadname
    if overload == "other":
        return _winner(func, args, kwargs, out)
    if not _is_float(x):
        return None
    if overload == "default":
        return x == out
    if overload == "dim":
        return out[1].detach().clone()
    return None


def _amax(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x = args[0]
    if not _is_float(x):
        return None
    dims = _arg(func, args, kwargs, "dim")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return x == out
    return _keepdim_mask(x, out, dims, bool(_arg(func, args, kwargs, "keepdim")))


def _median(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x = args[0]
    if not _is_float(x):
        return None
    if func._overloadname == "default":
        return x == out
    return out[1].detach().clone() if isinstance(out, (tuple, list)) else None


_POOL_PARAMS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
#: the most tied entries of a pooling window counted (a 2 x 2 window holds 4)
_POOL_TIES = 4


def _pool_indices(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """``max_pool{1,2,3}d`` without indices: the winners of the windows (`_pool_winners`)."""
    x = args[0]
    if not _is_float(x):
        return None
    name = func.overloadpacket.__name__
    with_indices = getattr(aten, f"{name}_with_indices")
    params = [_arg(func, args, kwargs, key) for key in _POOL_PARAMS]
    values, indices = with_indices(x, *params)
    return _pool_winners(x, values, indices, with_indices, params, _pool_dims(name))


def _pool_with_indices(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """``max_pool{1,2,3}d_with_indices``: the winners of the windows (`_pool_winners`)."""
    x = args[0]
    if not _is_float(x):
        return None
    params = [_arg(func, args, kwargs, key) for key in _POOL_PARAMS]
    return _pool_winners(x, out[0], out[1], func, params, _pool_dims(func.overloadpacket.__name__))


def _pool_dims(name: str) -> int:
    """The spatial dimensions of ``max_pool{n}d``'s windows."""
    return int(name[len("max_pool")])


def _pool_winners(
    x: Any, values: Any, indices: Any, with_indices: Any, params: list, n: int
) -> Any:
    """Each window's arg-max, and how many entries share its maximum:
    ``8 * index + count`` (count up to `_POOL_TIES`).

    A window whose maximum several entries share is an exact tie, a decision of its own
    (see `_side`): moving any of them, up or down, changes the count, so a difference
    through it is not judged one-sidedly by the first entry's convention. The count is
    found by taking the winner out (-inf) and pooling again, while the maximum stays;
    in overlapping windows a winner taken out of a neighbour's window can hide a tie
    there, which is then judged as before.
    """
    count = torch.ones_like(indices)
    others = x.detach().flatten(-n).clone()
    winners = indices
    target = values.detach()
    for _ in range(_POOL_TIES - 1):
        others.scatter_(-1, winners.flatten(-n), float("-inf"))
        again, winners = with_indices(others.view(x.shape), *params)
        same = again == target
        if not bool(same.any()):
            break
        count = count + same.to(count.dtype)
    return 8 * indices + count


def _compare(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    a = args[0]
    b = args[1] if len(args) > 1 else kwargs.get("other")
    if not _any_float(a, b):
        return None
    # which side of b, or at it: run before the op (an in-place one overwrites `a`)
    return _sign(a - b)


def _smooth_l1(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x, target = args[0], args[1]
    if not _any_float(x, target):
        return None
    name = func.overloadpacket.__name__
    beta = _arg(func, args, kwargs, "beta" if name == "smooth_l1_loss" else "delta")
    diff = x - target
    if beta == 0:  # smooth_l1 with beta 0 is the L1 loss: the kink is at diff == 0
        return _sign(diff)
    return diff.abs() < beta


def _l1(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    x, target = args[0], args[1]
    return _sign(x - target) if _any_float(x, target) else None


def _multi_margin(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """The active margins of the multi-class hinge loss: margin - x[y] + x[j] > 0, j != y."""
    x, target = args[0], args[1]
    if not _is_float(x):
        return None
    margin = _arg(func, args, kwargs, "margin")
    if x.dim() == 1:
        x, target = x.unsqueeze(0), target.reshape(1)
    target = target.reshape(-1, 1).long()
    active = (margin - x.gather(1, target) + x) > 0
    return active.scatter(1, target, False)


def _multilabel_margin(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """The active hinges 1 - (x[y] - x[j]) > 0 of the multi-label margin loss."""
    x, target = args[0], args[1]
    if not _is_float(x):
        return None
    if x.dim() == 1:
        x, target = x.unsqueeze(0), target.unsqueeze(0)
    target = target.long()
    valid = torch.cumprod((target >= 0).to(torch.int64), dim=1).bool()  # before the first -1
    labels = target.clamp_min(0)
    is_target = torch.zeros_like(x, dtype=torch.bool)
    is_target.scatter_(1, torch.where(valid, labels, 0), valid)
    scores = x.gather(1, labels)  # (N, C): score of the k-th listed label
    hinge = (1 - scores.unsqueeze(2) + x.unsqueeze(1)) > 0  # (N, label k, class j)
    return hinge & valid.unsqueeze(2) & ~is_target.unsqueeze(1)


def _scatter_extremum(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a ``scatter_reduce``/``index_reduce`` call takes a max or a min."""
    return _arg(func, args, kwargs, "reduce") in ("amax", "amin")


def _scatter_source(func: Any, args: tuple, kwargs: dict) -> Any:
    """The values a ``scatter_reduce`` (`src`) or ``index_reduce`` (`source`) scatters."""
    scatter = func.overloadpacket.__name__.startswith("scatter")
    return _arg(func, args, kwargs, "src" if scatter else "source")


def _scatter_winners(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """Which source entries won their position in a max/min ``scatter_reduce`` or
    ``index_reduce`` (ties included): PyG's max aggregation, segment maxima.

    Computed from the inputs, out of place (an in-place op has not run yet). Whether
    `self` kept a position follows: it does where no source entry won it.
    """
    if not _scatter_extremum(func, args, kwargs):
        return None
    scatter = func.overloadpacket.__name__.startswith("scatter")
    x = args[0]
    src = _scatter_source(func, args, kwargs)
    if not _any_float(x, src):
        return None
    dim = _arg(func, args, kwargs, "dim")
    index = _arg(func, args, kwargs, "index")
    reduce = _arg(func, args, kwargs, "reduce")
    include_self = _arg(func, args, kwargs, "include_self")
    op = aten.scatter_reduce.two if scatter else aten.index_reduce.default
    result = op(x, dim, index, src, reduce, include_self=include_self)
    if scatter:  # only the part of src that index covers takes part
        used = src[tuple(slice(0, n) for n in index.shape)]
        return used == result.gather(dim, index)
    return src == result.index_select(dim, index)


def _rounded(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return out.detach().clone() if _is_float(args[0]) else None


def _frac(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return torch.trunc(args[0]) if _is_float(args[0]) else None


def _modulo(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    a, b = args[0], args[1]
    if not _any_float(a, b):
        return None
    quotient = torch.div(a, b)
    if func.overloadpacket.__name__.startswith("fmod"):
        return torch.trunc(quotient)
    return torch.floor(quotient)


def _searchsorted(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return out.detach().clone() if _any_float(args[0], args[1]) else None


def _vector_norm(func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """Kinks of a vector norm: ord inf/-inf picks winners, ord <= 1 has |x| kinks at 0."""
    x = args[0]
    if not _is_float(x):
        return None
    order = float(_arg(func, args, kwargs, "ord"))
    dims = _arg(func, args, kwargs, "dim")
    if math.isinf(order):
        a = x.abs()
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            best = a.amax() if order > 0 else a.amin()
            return a == best
        best = a.amax(dims, keepdim=True) if order > 0 else a.amin(dims, keepdim=True)
        return a == best
    if order == 0:
        return x != 0
    if order <= 1:
        return _sign(x)
    return None


@dataclass(frozen=True)
class _Rule:
    fn: Callable[..., Any]
    before: bool  # computed from the inputs, before the op runs


def _rules() -> dict[Any, _Rule]:
    table: dict[str, tuple[Callable[..., Any], bool]] = {}

    def add(names: str, fn: Callable[..., Any], before: bool, inplace: bool = True) -> None:
        for name in names.split():
            table[name] = (fn, before)
            if inplace:  # in place: decide before the op overwrites its input
                table[name + "_"] = (fn, before if fn is _rounded else True)

    add("relu leaky_relu rrelu_with_noise", _positive, True)
    # ELU and CELU: alpha (e^x - 1) below 0, x above: a kink of the second derivative
    # (of the first, for SELU's scale and ELU's alpha != 1), which puts a centered
    # difference that straddles it about h/4 off. (softplus's switch to the identity
    # at beta x > 20, a jump of 2e-9, is not tracked: every softplus would count as a
    # kink for an input that is almost never within a step of it.)
    add("elu celu", _positive, True)
    add("_prelu_kernel", _positive, True, inplace=False)
    add("threshold", _threshold, True)
    add("hardtanh", _hardtanh, True)
    add("relu6", _relu6, True)
    add("clamp clamp_min clamp_max clip", _clamp, True)
    add("hardshrink softshrink", _shrink, True, inplace=False)
    add("hardsigmoid hardswish", _hard3, True)
    add("maximum minimum fmax fmin", _winner, True, inplace=False)
    add("max min", _max_like, False, inplace=False)
    add("amax amin", _amax, False, inplace=False)
    add("median nanmedian", _median, False, inplace=False)
    add("argmax argmin", _out(), False, inplace=False)
    add("sort topk kthvalue mode cummax cummin", _out(1), False, inplace=False)
    add("argsort", _out(), False, inplace=False)
    for n in (1, 2, 3):
        add(f"max_pool{n}d_with_indices", _pool_with_indices, False, inplace=False)
        add(f"adaptive_max_pool{n}d", _out(1), False, inplace=False)
        add(f"max_pool{n}d", _pool_indices, True, inplace=False)
    add("fractional_max_pool2d fractional_max_pool3d", _out(1), False, inplace=False)
    add("abs sign sgn", _sign_of_input, True)
    add("copysign", _sign_of_other, True)
    add("heaviside", _sign_of_input, True)
    add("gt ge lt le eq ne", _compare, True)
    add("smooth_l1_loss huber_loss", _smooth_l1, True, inplace=False)
    add("l1_loss", _l1, True, inplace=False)
    add("multi_margin_loss", _multi_margin, True, inplace=False)
    add("multilabel_margin_loss_forward", _multilabel_margin, True, inplace=False)
    add("floor ceil round trunc", _rounded, False)
    add("frac", _frac, True)
    add("remainder fmod", _modulo, True)
    add("searchsorted bucketize", _searchsorted, False, inplace=False)
    add("linalg_vector_norm", _vector_norm, True, inplace=False)
    add("scatter_reduce index_reduce", _scatter_winners, True)

    rules: dict[Any, _Rule] = {}
    for name, (fn, before) in table.items():
        packet = getattr(aten, name, None)
        if packet is not None:
            rules[packet] = _Rule(fn, before)
    return rules


_RULES = _rules()


def decision_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a decision tensor, its shape included (bool masks packed to bits)."""
    t = t.detach()
    header = np.asarray(t.shape, dtype=np.int64).tobytes() + str(t.dtype).encode()
    array = t.contiguous().cpu().numpy()
    if array.dtype == np.bool_:
        return header + np.packbits(array.reshape(-1)).tobytes()
    return header + array.tobytes()


_WRITTEN: dict[Any, tuple[frozenset[str], tuple[str, ...]]] = {}


def _schema_info(func: Any) -> tuple[frozenset[str], tuple[str, ...]]:
    """The names of the arguments an op writes to, and of all its arguments in order."""
    info = _WRITTEN.get(func)
    if info is None:
        arguments = func._schema.arguments
        written = frozenset(
            a.name for a in arguments if a.alias_info is not None and a.alias_info.is_write
        )
        info = (written, tuple(a.name for a in arguments))
        _WRITTEN[func] = info
    return info


def _unmarked_writes() -> dict[Any, tuple[str, ...]]:
    """Ops that write arguments their schema does not mark as written, in training mode.

    BatchNorm's kernels update the running statistics in place, but their schemas
    (``native_batch_norm``, ``cudnn_batch_norm``, ``miopen_batch_norm``) carry no write
    annotation, and the writes bump no version counter.
    """
    out = {}
    for name in ("native_batch_norm", "cudnn_batch_norm", "miopen_batch_norm"):
        packet = getattr(aten, name, None)
        if packet is not None:
            out[packet] = ("running_mean", "running_var")
    return out


_UNMARKED_WRITES = _unmarked_writes()


@dataclass(frozen=True)
class Effects:
    """What an op does to storages, from its schema (see `effects`)."""

    writes: bool  # it writes some argument in place
    #: its outputs alias none of its inputs: each is a new storage (a view, an in-place
    #: op or an ``out=`` returns an input's; ``lift_fresh`` returns a tensor that
    #: ``torch.tensor(...)`` made in f)
    fresh: bool


_EFFECTS: dict[Any, Effects] = {}


def effects(func: Any) -> Effects:
    """`Effects` of an op, cached (one dict lookup per op of a measuring pass)."""
    found = _EFFECTS.get(func)
    if found is None:
        written, _ = _schema_info(func)
        returns = func._schema.returns
        found = Effects(
            bool(written) or func.overloadpacket in _UNMARKED_WRITES,
            func.overloadpacket is aten.lift_fresh or all(r.alias_info is None for r in returns),
        )
        _EFFECTS[func] = found
    return found


def written_arguments(func: Any, args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], bool]:
    """The tensors an op writes in place (``self`` of ``add_``, ``out=``, BatchNorm's
    running statistics), and whether each such write bumps a version counter."""
    written, names = _schema_info(func)
    unmarked = _UNMARKED_WRITES.get(func.overloadpacket)
    targets: list[torch.Tensor] = []
    if written:
        for i, value in enumerate(args):
            if i < len(names) and names[i] in written:
                targets.extend(_tensors(value))
        for key, value in kwargs.items():
            if key in written:
                targets.extend(_tensors(value))
    versioned = True
    if unmarked is not None and _arg(func, args, kwargs, "training"):
        for name in unmarked:
            value = _arg(func, args, kwargs, name)
            if isinstance(value, torch.Tensor):
                targets.append(value)
                versioned = False
    return targets, versioned


#: tensor arguments torch requires on the CPU whatever the device of the data
_CPU_ARGUMENTS = frozenset({"lengths", "batch_sizes"})


def promote(
    func: Any,
    args: tuple,
    kwargs: dict,
    device: torch.device | None,
    tensors: list[torch.Tensor] | None = None,
) -> tuple:
    """Bring the tensors an op reads to float64 and to the check's device.

    f reads the check's blocks in float64 (on the check's device), but it may also
    read tensors the check cannot reach: data and labels captured by a closure, a
    frozen module not passed as params. ``float64 @ float32`` is an error in torch, and
    so is a CPU tensor beside a CUDA one. So where an op reads a float64 tensor, its
    other floating inputs are cast to float64 (exact), and where `device` is set and
    the op reads a floating tensor there, its inputs elsewhere follow (except the few
    arguments torch wants on the CPU). Arguments the op writes to (in place, ``out=``)
    are left alone.
    """
    if tensors is None:
        tensors = _tensors((args, kwargs))
    has64 = low = False
    for t in tensors:  # one pass: every op f runs comes through here
        dtype = t.dtype
        if dtype is _F64:
            has64 = True
        elif dtype in LOW_PRECISION:
            low = True
    cast = has64 and low
    if device is None and not cast:
        return args, kwargs
    floats = [t for t in tensors if t.is_floating_point()]
    move = (
        device is not None
        and any(_same_device(t.device, device) for t in floats)
        and any(not _same_device(t.device, device) and t.dim() > 0 for t in tensors)
    )
    if not (cast or move):
        return args, kwargs
    written, names = _schema_info(func)

    def fix(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if cast and value.dtype in LOW_PRECISION:
                value = value.to(torch.float64)
            if move and value.dim() > 0 and not _same_device(value.device, device):
                value = value.to(device)
            return value
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(fix(v) for v in value)
        return value

    def keep(name: str | None) -> bool:
        return name in written or name in _CPU_ARGUMENTS

    new_args = tuple(
        value if keep(names[i] if i < len(names) else None) else fix(value)
        for i, value in enumerate(args)
    )
    new_kwargs = {k: (v if keep(k) else fix(v)) for k, v in kwargs.items()}
    return new_args, new_kwargs


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class WinnerTracker(TorchDispatchMode):
    """Records the max-like decisions of one evaluation, and watches for lower precision.

    `recorder` receives the decisions (None: decisions are not tracked). With
    `watch_precision`, every op that turns a float64 input into a lower-precision
    floating output is noted in `lowered` (op name -> dtype). With `promote`, the
    floating inputs of each op are brought to float64 and to `device` (see
    `promote`). Call `finish()` after the evaluation: decisions are kept as tensors
    during it (no device synchronisation per op) and hashed at the end.

    With `sources` (the storage addresses of the checked blocks, and of the batched
    values that stand in for them), a decision is recorded only where the op reads a
    tensor that depends on them: the storages every op writes from such a tensor join
    the set (views share their storage, in-place writes keep theirs), and a tensor
    whose storage cannot be read counts as dependent. A comparison of the data, a
    normalisation by the data's max, a mask of the labels: the same at every point,
    so not a kink (the JAX tracker's taint, at the granularity of storages).
    """

    def __init__(
        self,
        recorder: SignatureRecorder | None,
        watch_precision: bool = False,
        promote: bool = False,
        device: torch.device | None = None,
        guard: frozenset[int] = frozenset(),
        measure: bool = False,
        batched: bool = False,
        watch: dict[int, int] | None = None,
        sources: frozenset[int] | None = None,
        shift: bool = False,
        quiet: bool = False,
        ties: bool = False,
        state: StateWatch | None = None,
        keep: torch.dtype | None = None,
    ):
        super().__init__()
        #: with `keep` (the model's own dtype), a cast of a float64 tensor to a floating
        #: dtype at least as precise as `keep` is made to float64 instead: a custom
        #: backward's ``g.float()`` in a float32 model, which `_torch_promote.Promoting`
        #: cannot see (autograd runs backward passes without torch function modes)
        self.keep = keep
        self.recorder = recorder
        #: the shift test (see `_kinks`): with `shift`, max/min reductions are moved by
        #: `shift_offsets`, two-way decisions flipped (`_FLIPS`), and neither recorded;
        #: with `quiet`, neither is recorded
        self.shift = shift
        self.quiet = quiet
        #: the reductions shifted, or recorded (in `_reduction`, per pending decision)
        self.reductions = 0
        self._reduction: list[bool] = []
        self._flippable: list[bool] = []  # ... and the two-way decisions, likewise
        self._winner: list[bool] = []  # ... and the maxima of two values among them
        #: with `ties`, whether each two-way decision had an entry at an exact tie,
        #: where its branches agree and the shift test cannot tell it from a smooth
        #: choice (tensors, read once by `shiftable`)
        self.ties = ties
        self._ties: list[torch.Tensor] = []
        self._shifts: dict[tuple, int] = {}
        #: the indices that ``max``/``min`` over a dim return, held so that their
        #: storages stay theirs: an op that reads one uses the winner's position (a
        #: gather of the arg-max), which no shift of the values can test
        self._indices: list[torch.Tensor] = []
        self._index_storages: set[int] = set()
        self.indices_read = False
        #: storages of tensors that depend on the checked blocks (None: no taint, every
        #: decision counts)
        self._taint: set[int] | None = set(sources) if sources is not None else None
        self.watch_precision = watch_precision
        self.promote = promote
        self.device = device
        #: storage addresses f must not read (see `Leak`)
        self.guard = guard
        #: with `measure`: the bytes of every tensor the ops returned (a bound on memory)
        self.measure = measure
        self.bytes_out = 0
        #: with `measure`: the bytes each op returned, in order, and for each storage
        #: address in `watch` (a block's), the index of the first op that read it
        self.op_bytes: list[int] = []
        self.first_use: dict[int, int] = {}
        self._watch_storage = watch or {}
        self._watched = len(set(self._watch_storage.values()))  # blocks to find first uses of
        self.lowered: dict[str, str] = {}
        #: ``(op, shape, dtype)`` of each decision, in order, once `finish()` has run
        self.layout: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        self._pending: list[tuple[str, torch.Tensor]] = []
        #: f runs under vmap: `_hints` keeps, per decision, what `finish_batched` needs
        self.batched = batched
        self._hints: list[tuple[bool, torch.Tensor | None]] = []
        #: whether `promote` had to cast or move an input of some op (f then needs this
        #: mode to run at all: the backend's fast path is off)
        self.fixed = False
        #: with `measure`: what f writes into tensors it did not create (see
        #: `_torch_state`), and ``storage address -> padding_idx`` of the embedding
        #: weights f reads at their padding row (a row torch gives no gradient)
        self.state = state if measure else None
        self.padding_rows: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self._handle(func, types, args, kwargs)

    def _handle(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.keep is not None and func is aten._to_copy.default:
            kwargs = _kept(args, kwargs, self.keep)
        # the tensors an op reads, found once for the guard, promotion and the watches
        inputs = _inputs(args, kwargs) if self.guard or self.promote else None
        if self.guard:
            _check_guard(func, inputs, self.guard)
        state = self.state
        if self.promote:
            new_args, new_kwargs = promote(func, args, kwargs, self.device, inputs)
            if new_args is not args or new_kwargs is not kwargs:
                self.fixed = True
                args, kwargs = new_args, new_kwargs
                if state is not None and inputs is not None:  # the casts are f's own
                    old = {id(t) for t in inputs}
                    state.fresh([t for t in _inputs(args, kwargs) if id(t) not in old])
                inputs = None
        if self._index_storages and not self.indices_read:
            if inputs is None:
                inputs = _inputs(args, kwargs)
            self.indices_read = any(_address(t) in self._index_storages for t in inputs)
        rule = _RULES.get(func.overloadpacket) if self.recorder is not None else None
        taint = self._taint
        tainted = False
        if taint is not None:
            if inputs is None:
                inputs = _inputs(args, kwargs)
            tainted = _reads_from(inputs, taint)
            if not tainted:
                rule = None  # the same decision at every point: not a kink
        reduction = rule is not None and (
            func in _REDUCTIONS
            or (func.overloadpacket in _SCATTERS and _scatter_extremum(func, args, kwargs))
        )
        # a two-way decision takes its other branch in the shift test, as a reduction
        # is moved: a stable sigmoid's torch.where(x >= 0, ...) or a stable logistic
        # loss's x.clamp(min=0) + log1p(exp(-x.abs())) computes one function either way
        flip = _FLIPS.get(func) if rule is not None else None
        if (reduction or flip is not None) and (self.shift or self.quiet):
            rule = None
        effect = None
        if state is not None:
            effect = effects(func)
            if effect.writes or state.written:
                targets, versioned = (
                    written_arguments(func, args, kwargs) if effect.writes else ([], True)
                )
                if inputs is None:
                    inputs = _inputs(args, kwargs)
                dependent = tainted if taint is not None else None
                state.before(targets, inputs, dependent, versioned)
        decision = None
        if rule is not None and rule.before:
            decision = rule.fn(func, args, kwargs, None)
        out = func(*args, **kwargs)
        if rule is not None and not rule.before:
            decision = rule.fn(func, args, kwargs, out)
        if reduction and self.shift:
            in_place = func.overloadpacket.__name__.endswith("_")
            out = _shifted(out, self._ordinal(func, args, kwargs), in_place)
        elif flip is not None and self.shift:
            out = flip.other(args, kwargs, out)
        if decision is not None:
            self._pending.append((func.overloadpacket.__name__.rstrip("_"), decision))
            self._reduction.append(reduction)
            self._flippable.append(flip is not None)
            self._winner.append(func in _WINNER_FLIPS)
            if flip is not None and self.ties:
                self._ties.append(flip.tied(args, kwargs))
            self.reductions += reduction
            if reduction and not isinstance(out, torch.Tensor):
                self._indices.append(out[1])
                self._index_storages.add(_address(out[1]))
            if self.batched:
                self._hints.append(_hint(func, args, kwargs, out))
        outputs = None
        if tainted:
            assert taint is not None
            outputs = _tensors(out)
            for t in outputs:
                address = _address(t)
                if address:
                    taint.add(address)
        if self.watch_precision or self.measure:
            if inputs is None:
                inputs = _inputs(args, kwargs)
            if outputs is None:
                outputs = _tensors(out)
            if self.watch_precision:
                self._watch(func, inputs, outputs)
            if self.measure:
                self._measure(inputs, outputs)
                if effect is not None and effect.fresh:
                    state.fresh(outputs)
                if func.overloadpacket is aten.embedding:
                    self._note_padding(func, args, kwargs)
        return out

    def _note_padding(self, func: Any, args: tuple, kwargs: dict) -> None:
        """Note an embedding whose indices include its padding_idx (see `padding_rows`)."""
        padding = _arg(func, args, kwargs, "padding_idx")
        weight, indices = args[0], args[1]
        if (
            isinstance(padding, int)
            and 0 <= padding < weight.shape[0]
            and bool((indices == padding).any())
        ):
            self.padding_rows.setdefault(_address(weight), padding)

    def _measure(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        nbytes = 0
        for t in outputs:
            nbytes += t.numel() * t.element_size()  # (`nbytes` refuses sparse tensors)
        self.bytes_out += nbytes
        if self._watch_storage and len(self.first_use) < self._watched:
            for t in inputs:
                block = self._watch_storage.get(_address(t))
                if block is not None and block not in self.first_use:
                    self.first_use[block] = len(self.op_bytes)
        self.op_bytes.append(nbytes)

    def bytes_after(self) -> dict[int, int]:
        """For each watched block: the bytes f's ops returned from its first use on."""
        suffix = [0] * (len(self.op_bytes) + 1)
        for i in range(len(self.op_bytes) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + self.op_bytes[i]
        return {block: suffix[i] for block, i in self.first_use.items()}

    def _watch(self, func: Any, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        for t in outputs:
            if t.dtype in LOW_PRECISION:
                break
        else:
            return
        if func.overloadpacket.__name__ in _SHAPE_ONLY:
            return
        if not any(t.dtype is _F64 for t in inputs):
            return
        for t in outputs:
            if t.dtype in LOW_PRECISION:
                name = str(func.overloadpacket).removeprefix("aten.")
                self.lowered.setdefault(name, str(t.dtype).removeprefix("torch."))
                return

    def _ordinal(self, func: Any, args: tuple, kwargs: dict) -> int:
        """The shift test's number for a reduction: the same for the same input and dims.

        A max computed twice from one tensor (``s - s.amax(1, keepdim=True)``, then
        ``+ s.amax(1)``) is one value, so it gets one shift, which cancels as the max does.
        """
        x = args[0]
        if func.overloadpacket in _SCATTERS:  # the same sources into the same places
            src = _scatter_source(func, args, kwargs)
            index = _arg(func, args, kwargs, "index")
            key = (
                func.overloadpacket.__name__.rstrip("_"),
                _arg(func, args, kwargs, "reduce"),
                _arg(func, args, kwargs, "dim"),
                _address(src),
                _address(index),
            )
        else:
            dims = _arg(func, args, kwargs, "dim") if func._overloadname != "default" else None
            if isinstance(dims, int):
                dims = [dims]
            axes = tuple(sorted(d % max(x.dim(), 1) for d in dims)) if dims else None
            kind = func.overloadpacket.__name__.lstrip("a")  # amax and max: one kind
            key = (kind, _address(x), x.storage_offset(), tuple(x.shape), tuple(x.stride()), axes)
        if key not in self._shifts:
            self._shifts[key] = len(self._shifts)
        self.reductions += 1
        return self._shifts[key]

    @property
    def shiftable(self) -> bool:
        """Whether every decision recorded came from a max/min reduction whose values
        alone f used (none of the indices they returned) or from a two-way decision
        with no entry at a tie (tracked with `ties`): what the shift test can move or
        flip."""
        if not self._reduction or self.indices_read:
            return False
        flags = list(zip(self._reduction, self._flippable, self._winner, strict=True))
        reductions = sum(r for r, _, _ in flags)
        flippable = sum(c for r, c, _ in flags if not r)
        winners = sum(w for r, c, w in flags if c and not r)
        if not shift_testable(reductions, len(flags) - reductions, flippable, winners):
            return False
        return not any(bool(t) for t in self._ties)

    def finish(self) -> None:
        """Feed the recorded decisions, in order, into the recorder."""
        self._indices.clear()
        self.layout = [(op, tuple(d.shape), d.dtype) for op, d in self._pending]
        if self.recorder is not None:
            for op, decision in self._pending:
                self.recorder.record(op, decision_bytes(decision))
        self._pending.clear()

    def finish_batched(
        self, batch: int, layout: Sequence[tuple[str, tuple[int, ...], torch.dtype]]
    ) -> list[SignatureRecorder] | None:
        """Split the decisions of a vmapped evaluation into one recorder per batch element.

        Under ``torch.func.vmap`` this mode sits below the batching layer, so it sees the
        physical tensors: a decision computed from batched values carries the batch as an
        extra dimension, one computed from values every element shares has none. `layout`
        is the ``(op, shape, dtype)`` sequence of an unbatched evaluation of the same f
        (`self.layout` after `finish()`). Each decision must match it: the same op and
        dtype, and a physical shape that is the logical one (shared by every element), or
        the logical one with `batch` inserted at one position, or, for the few ops whose
        batching rule folds the batch into their first dimension or flattens each
        element (`_FOLDED`), that folded shape. The caller chooses `batch` so that it is
        none of the logical sizes, which makes the position of the batch unambiguous.
        An op without a batching rule is run by vmap once per element: its decisions
        then come as `batch` consecutive logical ones, in element order. A full
        ``max``/``min``/``median`` reduction (a mask of the winners unbatched) reaches
        this mode as a reduction along one flattened dim, whose winners' mask is kept
        for it. The mode must have been created with ``batched=True``.
        Element i's recorder then receives exactly the bytes an unbatched evaluation of
        element i would record, so its digest equals that evaluation's signature.
        Returns None when a decision does not fit (the caller evaluates point by point).
        """
        pending, self._pending = self._pending, []
        hints, self._hints = self._hints, []
        if self.recorder is None or len(hints) != len(pending):
            return None
        recorders = [SignatureRecorder() for _ in range(batch)]
        j = 0
        for op0, shape0, dtype0 in layout:
            if j >= len(pending):
                return None
            op, decision = pending[j]
            looped, mask = hints[j]
            if op != op0:
                return None
            run = pending[j : j + batch]
            if (
                looped
                and len(run) == batch
                and all(o == op and tuple(d.shape) == shape0 and d.dtype == dtype0 for o, d in run)
            ):
                # no batching rule: vmap called the op once per element, in order
                for recorder, (_, d) in zip(recorders, run, strict=True):
                    recorder.record(op, decision_bytes(d))
                j += batch
                continue
            if decision.dtype != dtype0 and mask is not None and dtype0 == torch.bool:
                # a full max/min/median reduction, which vmap runs along a flattened dim
                if tuple(mask.shape) != (batch, math.prod(shape0)):
                    return None
                decision = mask.reshape(batch, *shape0)
            if decision.dtype != dtype0:
                return None
            rows = _batch_rows(op, decision.detach(), shape0, batch)
            if rows is None:
                return None
            if isinstance(rows, bytes):
                for recorder in recorders:
                    recorder.record(op, rows)
            else:
                for recorder, data in zip(recorders, rows, strict=True):
                    recorder.record(op, data)
            j += 1
        return recorders if j == len(pending) else None


def _skip_dynamo(code: Any) -> bool:
    """Mark `code`, and what it calls, as never traced by Dynamo; False where torch cannot.

    This is what TorchDispatchMode's guard around a handler achieves (Dynamo must never
    trace a dispatch mode), without its costs: the guard imports Dynamo on its first
    call (about a second, sympy included: most of a process's first check) and switches
    frame evaluation off and on at every op. The mark is torch's own per-code setting
    (``torch._dynamo.eval_frame.skip_code``'s, applied to the frames it calls too).
    """
    try:
        from torch._C._dynamo.eval_frame import (
            _FrameAction,
            _FrameExecStrategy,
            set_code_exec_strategy,
        )

        skip = _FrameAction.SKIP
        set_code_exec_strategy(code, _FrameExecStrategy(skip, skip))
    except (ImportError, AttributeError, RuntimeError, TypeError):
        return False
    return True


class _UnguardedTracker(WinnerTracker):
    """`WinnerTracker` whose handler is marked for Dynamo to skip (`_skip_dynamo`)
    instead of wrapped by TorchDispatchMode's guard."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    __torch_dispatch__ = WinnerTracker._handle


#: the tracker class the backend uses: the unguarded one where Dynamo can be told
_TRACKER = _UnguardedTracker if _skip_dynamo(WinnerTracker._handle.__code__) else WinnerTracker


def _kept(args: tuple, kwargs: dict, keep: torch.dtype) -> dict:
    """`_to_copy`'s kwargs, its dtype float64 where it would lower a float64 tensor to
    a floating dtype at least as precise as `keep` (see `WinnerTracker.keep`)."""
    dtype = kwargs.get("dtype")
    if (
        dtype is None
        or dtype is _F64
        or not dtype.is_floating_point
        or not args
        or getattr(args[0], "dtype", None) is not _F64
        or MANTISSA_BITS.get(dtype, 0) < MANTISSA_BITS.get(keep, 0)
    ):
        return kwargs
    return {**kwargs, "dtype": _F64}


def tracker(*args: Any, **kwargs: Any) -> WinnerTracker:
    """A `WinnerTracker` (arguments as its): Dynamo skips its handler, one way or another."""
    return _TRACKER(*args, **kwargs)


class Leak(RuntimeError):
    """f read a tensor that a batched evaluation replaces (it holds the unperturbed values)."""


def _address(t: torch.Tensor) -> int:
    """The address of a tensor's storage (0 where it has none that can be read)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return 0


def _reads_from(tensors: list[torch.Tensor], taint: set[int]) -> bool:
    """Whether any of the tensors depends on the checked blocks (see `WinnerTracker`).

    A tensor without a readable storage (0: empty, sparse, a subclass) counts as
    dependent: a decision is then recorded, as it would be without taint.
    """
    for t in tensors:
        address = _address(t)
        if not address or address in taint:
            return True
    return False


def _check_guard(func: Any, inputs: list[torch.Tensor], guard: frozenset[int]) -> None:
    for t in inputs:
        address = _address(t)
        if address and address in guard:
            raise Leak(
                f"f reads a checked tensor through {func} without going through the "
                "substituted module parameter, argument or params entry (a tensor captured "
                "by a closure, or aliasing another block)"
            )


#: decisions whose batching rule folds the batch into the first dimension (batch-major:
#: (B*N, ...) for a logical (N, ...)) or flattens each element ((B, N*M*...)); checked
#: against the unbatched decisions of distinct elements in tests/torch/test_torch_batched.py
_FOLDED = frozenset(
    {
        "max_pool1d_with_indices",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "fractional_max_pool2d",
        "smooth_l1_loss",
        "huber_loss",
    }
)

_UNBATCHED: dict[Any, bool] = {}


@dataclass(frozen=True)
class _Flip:
    """A two-way decision's other branch (`other`: its value had every entry gone the
    other way) and whether an entry sits at the tie (`tied`: a bool tensor)."""

    other: Callable[[tuple, dict, Any], Any]
    tied: Callable[[tuple, dict], torch.Tensor]


def _equal_operands(args: tuple, kwargs: dict) -> torch.Tensor:
    return torch.eq(args[0], args[1]).any()


def _zero_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return (args[0] == 0).any()


def _one_bound(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """(min, max) of a ``clamp`` call (None where unbounded)."""
    low = args[1] if len(args) > 1 else kwargs.get("min")
    high = args[2] if len(args) > 2 else kwargs.get("max")
    return low, high


def _clamp_other(args: tuple, kwargs: dict, out: Any) -> Any:
    low, high = _one_bound(args, kwargs)
    return torch.clamp(args[0], max=low) if high is None else torch.clamp(args[0], min=high)


def _clamp_tied(args: tuple, kwargs: dict) -> torch.Tensor:
    """A one-sided clamp's tie; a clamp with both bounds has three branches, no single
    other one, so it counts as tied: the shift test is not run for it."""
    low, high = _one_bound(args, kwargs)
    if (low is None) == (high is None):
        return torch.ones((), dtype=torch.bool)
    return torch.eq(args[0], low if high is None else high).any()


def _flips() -> dict[Any, _Flip]:
    """The two-way decisions the shift test flips: comparisons (inverted), abs and
    sign (negated), max and min of two tensors (swapped), ReLU and one-sided clamps
    (the other side). Out-of-place overloads only."""
    table: dict[Any, _Flip] = {}
    invert = _Flip(lambda a, k, out: torch.logical_not(out), _equal_operands)
    for name in ("gt", "ge", "lt", "le", "eq", "ne"):
        for overload in ("Tensor", "Scalar"):
            table[getattr(getattr(aten, name), overload)] = invert
    negate = _Flip(lambda a, k, out: torch.neg(out), _zero_input)
    for name in ("abs", "sgn", "sign"):
        table[getattr(aten, name).default] = negate
    for one, two in (("maximum", "minimum"), ("fmax", "fmin")):
        first, second = getattr(aten, one).default, getattr(aten, two).default
        table[first] = _Flip(lambda a, k, out, op=second: op(*a, **k), _equal_operands)
        table[second] = _Flip(lambda a, k, out, op=first: op(*a, **k), _equal_operands)
    table[aten.relu.default] = _Flip(lambda a, k, out: torch.clamp(a[0], max=0), _zero_input)
    table[aten.clamp_min.default] = _Flip(
        lambda a, k, out: torch.clamp(a[0], max=a[1]), _equal_operands
    )
    table[aten.clamp_max.default] = _Flip(
        lambda a, k, out: torch.clamp(a[0], min=a[1]), _equal_operands
    )
    table[aten.clamp.default] = _Flip(_clamp_other, _clamp_tied)
    return table


_FLIPS = _flips()
#: of those, the maxima of two values (ReLUs, hinges): see `_kinks.shift_testable`
_WINNER_FLIPS = frozenset(
    {aten.maximum.default, aten.minimum.default, aten.fmax.default, aten.fmin.default}
    | {aten.relu.default, aten.clamp_min.default, aten.clamp_max.default, aten.clamp.default}
)

#: reductions along a dim whose full-reduction form records the mask of the winners
_FULL_REDUCTIONS = frozenset({aten.max.dim, aten.min.dim, aten.median.dim, aten.nanmedian.dim})


#: the max/min reductions: the shift test moves their values (see `_kinks`); and the
#: scatters that reduce by max or min (segment maxima), whose results it moves too
_REDUCTIONS = frozenset(
    {aten.amax.default, aten.amin.default, aten.max.default, aten.min.default}
    | {aten.max.dim, aten.min.dim}
)
_SCATTERS = frozenset(
    {aten.scatter_reduce, aten.scatter_reduce_, aten.index_reduce, aten.index_reduce_}
)


def _shifted(out: Any, ordinal: int, in_place: bool = False) -> Any:
    """A reduction's output with its values moved by `shift_offsets` (indices kept);
    an in-place scatter's result is moved where it is."""
    values = out if isinstance(out, torch.Tensor) else out[0]
    offsets = shift_offsets(values.numel(), ordinal).reshape(tuple(values.shape))
    offsets = torch.as_tensor(offsets, dtype=values.dtype, device=values.device)
    if in_place:
        values.add_(offsets)
        return out
    moved = values + offsets
    return moved if isinstance(out, torch.Tensor) else (moved, *tuple(out)[1:])


def _hint(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple[bool, torch.Tensor | None]:
    """(whether vmap runs `func` once per element, the winners' mask of a dim reduction)."""
    looped = _UNBATCHED.get(func)
    if looped is None:
        try:
            looped = not torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), "FuncTorchBatched"
            )
        except (AttributeError, RuntimeError, TypeError):
            looped = False  # unknown: a per-element run is then not recognised
        _UNBATCHED[func] = looped
    mask = None
    if func in _FULL_REDUCTIONS and _is_float(args[0]):
        dim = _arg(func, args, kwargs, "dim")
        values = out[0] if _arg(func, args, kwargs, "keepdim") else out[0].unsqueeze(dim)
        mask = args[0] == values
    return looped, mask


def _batch_rows(
    op: str, decision: torch.Tensor, shape: tuple[int, ...], batch: int
) -> bytes | list[bytes] | None:
    """The bytes of each element's decision (bytes: one value every element shares)."""
    physical = tuple(decision.shape)
    if physical == shape:
        return decision_bytes(decision)
    rows: torch.Tensor | None = None
    if len(physical) == len(shape) + 1:
        at = [p for p in range(len(physical)) if physical[p] == batch]
        if len(at) == 1 and physical[: at[0]] + physical[at[0] + 1 :] == shape:
            rows = decision.movedim(at[0], 0)
    elif op in _FOLDED and decision.numel() == batch * math.prod(shape) and shape:
        folded = physical == (batch * shape[0], *shape[1:])
        flat = physical == (batch, math.prod(shape))
        if folded or flat:
            rows = decision.reshape(batch, *shape)
    if rows is None:
        return None
    header = np.asarray(shape, dtype=np.int64).tobytes() + str(decision.dtype).encode()
    array = rows.contiguous().cpu().numpy().reshape(batch, -1)
    if array.dtype == np.bool_:
        array = np.packbits(array, axis=1)
    return [header + row.tobytes() for row in array]
