"""The PyTorch backend: tensors, nn.Modules and closures, on CPU and CUDA.

What it does for the engine (see `_base.py` for the protocol):

- Blocks are the floating tensors anywhere in `args` (cloned to float64: the user's
  tensors are never written) and the floating entries of `params`: an `nn.Module`
  (blocks named as in `named_parameters()`), a dict of tensors (named by key) or a
  list of tensors (``params[0]``). `params` entries are perturbed in place because f
  reads them (often through a closure), so for the check each one gets new float64
  storage through ``tensor.data = ...``: the same Python object (the same
  `nn.Parameter`) that f sees, with the original storage put back, untouched, in
  `close()`. The module's buffers (BatchNorm running statistics, which a train-mode
  forward overwrites) are swapped the same way and reset to their starting values
  before every evaluation, so f(x+h) and f(x-h) see the same state. Any other tensor
  f writes into in place (the buffers of a module read through a closure or given as
  a dict or list of its parameters, a cache) is found by the dispatch mode of the
  checked point's pass and put back after every call (`_torch_state.py`). The plain
  attributes of the params modules (``self.last = y.detach()`` in a forward) are
  saved before the first call of f and put back in `close()` (`_torch_attrs.py`).
- The analytic gradient comes from `torch.autograd.grad` (never `.backward()`, so the
  user's `.grad` fields are never written).
- Every evaluation starts from the same RNG state: Python's `random`, NumPy's global
  RNG and torch's CPU (and, once initialised, CUDA) generators are reset to the seed,
  so dropout draws the same mask in f(x+h), f(x-h) and the analytic pass.
- For the check's duration TF32, reduced-precision reductions and non-deterministic
  algorithms are switched off; `close()` restores every flag, every RNG state, the
  module's train/eval flags and all the swapped storage exactly.
- Winner tracking runs f under `WinnerTracker`, a `TorchDispatchMode` (see
  `_torch_tracker.py`), which also reports ops that drop below float64 inside f.
- Where the check cast tensors of lower precision, f and its backward run once more at
  the checked point in the user's own dtypes (`own_dtype_pass`, judged by `_own_dtype`):
  a custom backward that overflows in float32 is finite in the check's float64.

Batched evaluation (``Settings.batch``, the option ``batch``, on by default)
---------------------------------------------------------------------------

`evaluate` receives every point of a pass at once. It groups them by the blocks they
perturb (a coordinate pass: one group per block) and evaluates a group as one call of
``torch.func.vmap(call, randomness="same")``, chunked to at most `MAX_BATCH` rows and an
estimated `BATCH_BYTES` (see `_torch_batch.py`). `call` gets one batched tensor per
perturbed block, built as the base values expanded into a fresh tensor plus each
point's deltas added at its flat indices (the same single float64 addition the loop
makes, so the inputs are bit for bit those of the loop), and runs f with it
substituted where f reads the block: in the argument tree; through
``torch.func.functional_call`` on a module holding the user's modules (tied parameters
follow, ``tie_weights``); or as the entry of the user's dict or list in ``params``, put
back on the way out. Blocks the group does not perturb stay unbatched, so the work
upstream of the perturbed block runs once per batch, not once per point, and only that
block is copied per row. Small groups are merged into one call where the extra batched
work (estimated from the bytes f's ops return from the first op reading each block, at
the checked point) costs less than a call. Modules in training mode get a copy of their
floating buffers per row (BatchNorm writes its running statistics in place).

Randomness: the RNGs are reset once before the call, and ``randomness="same"`` draws one
value of the logical shape for every row, which on the CPU is exactly what the unbatched
call draws (dropout's bernoulli mask, ``rand_like``; checked in
tests/torch/test_torch_batched.py). Every batch ends with a row at the checked point
itself (last: a draw that differed per row would give the first row the unbatched
values), and its loss, terms and signature must reproduce the unbatched evaluation there
(from `gradient`) to 1e-9 relative, or the batch is discarded: a function whose random
draws differ under vmap (CUDA's fused dropout kernel, say) is evaluated in the loop.

Winner tracking under vmap: the dispatch mode sits below vmap's batching layer
(``FuncTorchBatched`` is above the ``Python`` key), so it sees the physical tensors
that the batching rules compute on: a decision computed from batched values carries the
batch as one extra dimension (at dim 0 for nearly every rule), one computed from values
every row shares carries none. `WinnerTracker.finish_batched` splits them per row
against the unbatched decision layout ``(op, shape, dtype)`` of the checked point: the
batch size is chosen to differ from every size in that layout (more rows at the checked
point pad it), which makes the batch dimension unambiguous; pooling and smooth-L1 rules
that fold the batch into the first dimension or flatten each element, ops without a
batching rule (vmap runs them once per row, in order) and full max/min/median
reductions (run along one flattened dim) are recognised too. Each row then records
exactly the bytes the unbatched evaluation of that point records, so its signature
equals the loop's (the engine compares them with the checked point's signature for
one-sided differences), and the last row's signature is checked against the
unbatched one in every batch. Anything that does not fit sends the batch to the loop.
The alternative, a batched pass for the values and a tracked pass per point for the
signatures, costs the loop itself under the default ``kinks="track"``; the split costs
one host copy per decision per batch.

Fallback: a batch that vmap refuses or f fails in (in-place writes into unbatched
tensors, data-dependent control flow, ``.item()``, an ``autograd.Function`` without vmap
support, an op without a batching rule and no fallback, autograd inside f), one where f
reads a perturbed block's own tensor instead of the substituted one (a tensor captured
by a closure: the mode sees its storage, `Leak`), an output that is not a batch of
losses, or a last row that does not reproduce the checked point, leaves its points to
the loop, which gives the verdict. The failure is remembered for the rest of the check
per (blocks, tracked), a merged batch is retried group by group, and after two failing
groups with none batched the check stops trying. A batched evaluation writes nothing of
the user's: the blocks are not touched, dict entries are put back, buffers are reset
before every evaluation and in-place writes into other tensors are repaired as in the
loop. The reasons are kept in `batch_fallbacks` (no warning: the results are the same).

Large blocks on a CPU: a group whose perturbed blocks hold more than
`_torch_batch.LOOP_ROW_BYTES` (96 KiB) per row is left to the loop, by plan rather than
as a failure. Each row of its batch would be a fresh copy of the block, written and read
once from memory, while the loop perturbs one copy in place that stays in the cache:
measured on one CPU thread (an MLP's first weight, 22 points), a 148 KB block 1.3x
slower batched and a 774 KB one 1.5x slower; below the threshold the two were about
even once the loop's writes went through NumPy (18-72 KB: within 3%). On a GPU every
group is batched. The gain that remains at 1e5 parameters on a CPU is the other groups'
(the work upstream of their block is done once per batch); see docs/performance.md.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from .._kinks import EMPTY_SIGNATURE, SignatureRecorder, shift_invariant
from .._notices import CAST_NOTICE, COMPILE_NOTICE, LONE_NOTICE
from . import _torch_batch as tb
from ._base import (
    COTANGENT,
    BlockSpec,
    Evaluation,
    Gradient,
    Point,
    Settings,
    check_finite_loss,
    check_gradient_array,
    complex_warning,
    index_array,
    index_count,
    lowered_warning,
    projection_weights,
    reduce_output,
    select_blocks,
    whole,
)
from ._own_dtype import look
from ._rng import GlobalRng
from ._torch_attrs import ModuleAttributes
from ._torch_compiled import compiled_in, force_eager
from ._torch_promote import Promoting, home_dtype, hook_recurrent
from ._torch_state import SavedState, StateWatch, Written, modules_of, tensor_names, uncompiled_name
from ._torch_tracker import WinnerTracker, tracker
from ._tree import iter_leaves, map_leaves

_F64 = torch.float64


class _GradMode:
    """``torch.set_grad_enabled(mode)`` as a context, without its Python layers.

    The loop enters one per evaluation (torch's costs a few microseconds, as much as
    an op of a small model).
    """

    __slots__ = ("mode", "previous")

    def __init__(self, mode: bool) -> None:
        self.mode = mode
        self.previous = True

    def __enter__(self) -> None:
        self.previous = torch.is_grad_enabled()
        torch._C._set_grad_enabled(self.mode)

    def __exit__(self, *exc: object) -> None:
        torch._C._set_grad_enabled(self.previous)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


#: autograd's own errors about the gradients a backward returned (their count or shape)
_BAD_GRADIENTS = re.compile(
    r"returned an invalid gradient|incorrect number of gradients|"
    r"expected shape compatible with|returned (?:a )?gradient of (?:the )?wrong",
    re.I,
)
#: torch.utils.checkpoint(use_reentrant=True) refusing torch.autograd.grad
_REENTRANT = re.compile(r"use_reentrant=True.*incompatible with \.grad\(\)", re.S)


#: the errors of an f that needs autograd itself when the check evaluates it without
#: grad (an inner torch.autograd.grad or .backward(), a gradient penalty)
_NEEDS_GRAD = re.compile(
    r"requires?[_ ]grad|grad_fn|autograd|backward|differentiated|grad mode|no_grad", re.I
)


def _numpy(t: torch.Tensor) -> np.ndarray:
    """``t.detach().cpu().numpy()``, without the two dispatches where `t` is a plain CPU
    tensor already (a gradient, a block's base values): each costs microseconds."""
    if t.is_cpu and not t.requires_grad:
        try:
            return t.numpy()
        except (RuntimeError, TypeError):  # a conjugate or negative view, a subclass
            pass
    return t.detach().cpu().numpy()


def _dense(g: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient in the strided layout: a sparse one (``nn.Embedding(sparse=True)``,
    ``torch.sparse.mm``) has no NumPy form, and its dense form is the same gradient."""
    return g if g is None or g.layout == torch.strided else g.to_dense()


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------------
# devices and global numerics flags


def _resolve_device(setting: Any) -> torch.device | None:
    """The device the check is moved to (None: every tensor stays where it is)."""
    if setting is None:
        return None
    if isinstance(setting, str) and setting.startswith("gpu"):
        setting = "cuda" + setting[3:]  # 'gpu' (JAX's word) is an alias of 'cuda'
    try:
        device = torch.device(setting)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"gradcheck: device={setting!r} is not a device; use None (where the inputs "
            "live), 'cpu' or 'cuda'"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"gradcheck: device={setting!r} but no CUDA GPU is available "
                "(torch.cuda.is_available() is False: no GPU, or a CPU-only torch build); "
                "use device=None or 'cpu', or skip this test where there is no GPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"gradcheck: device={setting!r} but only {torch.cuda.device_count()} CUDA "
                "device(s) are present"
            )
        return device
    if device.type != "cpu":
        raise ValueError(
            f"gradcheck: device={setting!r} is not supported; use None, 'cpu' or 'cuda'"
        )
    return device


def _refuse_meta(leaves: Sequence[tuple[str, Any]], chosen: set[str]) -> None:
    """A checked tensor on the ``meta`` device has no values to perturb (torch's own
    "Cannot copy out of meta tensor" names no block): a ValueError naming it."""
    for name, leaf in leaves:
        if name in chosen and isinstance(leaf, torch.Tensor) and leaf.device.type == "meta":
            raise ValueError(
                f"gradcheck: block {name!r} is on the 'meta' device, which holds shapes but "
                "no values, so there is nothing to check; materialise it first (for a "
                "module: .to_empty(device='cpu') and initialise its parameters), or leave "
                "it out with wrt="
            )


def _try(getter: Callable[[], Any]) -> tuple[bool, Any]:
    """Read a global flag that torch refuses to read in some states (mixed TF32 APIs)."""
    try:
        return True, getter()
    except (RuntimeError, AttributeError):
        return False, None


def _deterministic(mode: bool, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms``, without importing Inductor to set its flag.

    That import (Inductor, Dynamo, sympy: about a second) was most of a process's first
    check. Where Inductor is loaded its flag is set as torch sets it; where it is not,
    torch's own flag is set alone (only a torch.compile first made inside f, which loads
    Inductor in the middle of the check, then compiles without Inductor's flag).
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


class _Numerics:
    """TF32, reduced-precision reductions, determinism and the fused attention path:
    off/on for the check.

    TF32 is held by torch twice, by a legacy API (``allow_tf32``, the float32 matmul
    precision) and by the ``fp32_precision`` strings, and torch refuses to read the
    legacy flags when the two disagree. So both are saved where they can be read, both
    are set for the check (keeping them consistent), and both are written back.
    """

    _PRECISION_KEYS = (
        ("generic", "all"),
        ("cuda", "all"),
        ("cuda", "matmul"),
        ("cuda", "conv"),
        ("cuda", "rnn"),
        ("mkldnn", "all"),
        ("mkldnn", "matmul"),
        ("mkldnn", "conv"),
        ("mkldnn", "rnn"),
    )

    def __init__(self) -> None:
        C = torch._C
        #: without a usable CUDA device no CUDA kernel can run: its flags are left alone
        cuda = torch.cuda.is_available()
        self._strings: dict[tuple[str, str], str] = {}
        if hasattr(C, "_get_fp32_precision_getter"):
            for key in self._PRECISION_KEYS:
                if key[0] == "cuda" and not cuda:
                    continue
                ok, value = _try(lambda key=key: C._get_fp32_precision_getter(*key))
                if ok:
                    self._strings[key] = value
        self._matmul = _try(C._get_float32_matmul_precision)
        self._cuda = cuda
        self._cudnn_tf32: tuple[bool, Any] = (False, None)
        self._reductions: dict[str, Any] = {}
        self._fp16_accumulation: tuple[bool, Any] = (False, None)
        if cuda:
            self._cudnn_tf32 = _try(C._get_cudnn_allow_tf32)
            for kind in ("fp16", "bf16"):
                getter = getattr(C, f"_get_cublas_allow_{kind}_reduced_precision_reduction")
                ok, value = _try(getter)
                if ok:
                    self._reductions[kind] = value
            self._fp16_accumulation = _try(
                getattr(C, "_get_cublas_allow_fp16_accumulation", lambda: None)
            )
            self._cudnn_deterministic = torch.backends.cudnn.deterministic
            self._cudnn_benchmark = torch.backends.cudnn.benchmark
        self._deterministic = torch.are_deterministic_algorithms_enabled()
        self._warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        #: not changed by the check outside the keep-float64 mode, which restores it;
        #: an f that sets it itself gets it back as it was, with everything else
        self._default_dtype = torch.get_default_dtype()
        #: the fused inference path of MultiheadAttention and the Transformer layers,
        #: taken under no_grad in eval mode: the check evaluates f under no_grad, so
        #: its differences would measure another computation than the gradient pass's
        #: (another kernel; with a padding mask, nested tensors that zero the padded
        #: positions). Off for the check, so both run the same ops.
        mha = getattr(torch.backends, "mha", None)
        self._mha = mha if mha is not None and hasattr(mha, "set_fastpath_enabled") else None
        self._mha_fastpath = self._mha.get_fastpath_enabled() if self._mha is not None else None

    def apply(self) -> None:
        C = torch._C
        if self._matmul[0]:
            C._set_float32_matmul_precision("highest")
        if self._cudnn_tf32[0]:
            C._set_cudnn_allow_tf32(False)
        for key in (("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn")):
            if key in self._strings:
                C._set_fp32_precision_setter(*key, "ieee")
        for kind, value in self._reductions.items():
            setter = getattr(C, f"_set_cublas_allow_{kind}_reduced_precision_reduction")
            if isinstance(value, tuple):
                setter(False, *value[1:])
            else:
                setter(False)
        if self._fp16_accumulation[0] and self._fp16_accumulation[1] is not None:
            C._set_cublas_allow_fp16_accumulation(False)
        if not self._deterministic:
            _deterministic(True, True)
        if self._cuda:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        if self._mha_fastpath:
            self._mha.set_fastpath_enabled(False)

    def restore(self) -> None:
        C = torch._C
        if torch.get_default_dtype() is not self._default_dtype:
            torch.set_default_dtype(self._default_dtype)
        if self._mha is not None and self._mha.get_fastpath_enabled() != self._mha_fastpath:
            self._mha.set_fastpath_enabled(self._mha_fastpath)
        if self._cuda:
            torch.backends.cudnn.benchmark = self._cudnn_benchmark
            torch.backends.cudnn.deterministic = self._cudnn_deterministic
        _deterministic(self._deterministic, self._warn_only)
        if self._fp16_accumulation[0] and self._fp16_accumulation[1] is not None:
            C._set_cublas_allow_fp16_accumulation(self._fp16_accumulation[1])
        for kind, value in self._reductions.items():
            setter = getattr(C, f"_set_cublas_allow_{kind}_reduced_precision_reduction")
            if isinstance(value, tuple):
                setter(*value)
            else:
                setter(value)
        if self._matmul[0]:
            C._set_float32_matmul_precision(self._matmul[1])
        if self._cudnn_tf32[0]:
            C._set_cudnn_allow_tf32(self._cudnn_tf32[1])
        for key, value in self._strings.items():  # parents before children
            C._set_fp32_precision_setter(*key, value)


# ----------------------------------------------------------------------------------
# the user's objects, swapped for the check and put back


@dataclass
class _Swap:
    """A tensor of the user's whose storage is replaced for the check (``.data = ...``)."""

    tensor: torch.Tensor
    original: torch.Tensor  # `tensor.data` before the check: never written
    requires_grad: bool
    grad: torch.Tensor | None
    is_leaf: bool

    def restore(self) -> None:
        self.tensor.data = self.original
        if self.is_leaf:
            self.tensor.requires_grad_(self.requires_grad)
            self.tensor.grad = self.grad


@dataclass
class _Buffer:
    """A module buffer: where it is registered, and the values each evaluation starts from."""

    module: torch.nn.Module
    name: str
    obj: torch.Tensor  # the user's buffer object
    work: torch.Tensor  # the storage it has during the check
    start: torch.Tensor  # a copy of `work` before any evaluation


@dataclass
class _Block:
    """A checked block: the float64 tensor f reads and the base point it is perturbed around."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # the user's dtype
    tensor: torch.Tensor
    base: torch.Tensor  # flat float64, on the tensor's device

    #: NumPy views of the tensor's values and of `base` where both live in host
    #: memory (see `host`), and the storage address the first was taken from
    _host: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _host_at: int = field(default=0, repr=False)

    def flat(self) -> torch.Tensor:
        return self.tensor.detach().view(-1)

    def host(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(values, base)`` as NumPy views of a float64 CPU block, else None.

        A point's deltas are written through them: a NumPy addition costs a microsecond,
        a torch one several (the dispatcher), and a check writes and undoes every point
        it evaluates one at a time. Taken again if f gave the tensor another storage.
        """
        t = self.tensor
        at = t.data_ptr()
        if self._host is None or at != self._host_at:
            if t.device.type != "cpu" or not t.is_contiguous() or t.dtype is not torch.float64:
                return None
            self._host = (t.detach().view(-1).numpy(), self.base.numpy())
            self._host_at = at
        return self._host


_MISMATCH = re.compile(
    r"dtype|scalar type|same device|be on the same|device type|Expected all tensors", re.I
)


#: messages of dtype checks made before dispatch (convolution, bilinear, prelu, RNNs)
_EARLY_DTYPE = re.compile(r"dtype|scalar type|Input type|Type promoting", re.I)


def _dtype_mismatch(err: BaseException) -> bool:
    """Whether `err` (or what it wraps) reports mixed dtypes."""
    cause = err.__cause__
    return bool(_EARLY_DTYPE.search(str(err)) or (cause and _EARLY_DTYPE.search(str(cause))))


@dataclass(frozen=True)
class _Reference:
    """f at the checked point, unbatched: what every batched evaluation is checked against."""

    evaluation: Evaluation
    #: ``(op, shape, dtype)`` of each decision (None when the evaluation was not tracked)
    layout: list[tuple[str, tuple[int, ...], torch.dtype]] | None
    #: bytes of every tensor f's ops returned (an upper bound of f's memory per point)
    nbytes: int
    #: per block: the bytes f's ops returned from the first op that reads the block on
    #: (what a batch perturbing that block computes per row; blocks f reads first cost most)
    after: dict[int, int]

    def row_bytes(self, blocks: Sequence[_Block], key: tuple[int, ...]) -> int:
        """Estimated bytes per row of a batch perturbing the blocks `key`."""
        values = max(self.after.get(b, self.nbytes) for b in key)
        return values + 8 * sum(blocks[b].base.numel() for b in key)

    @property
    def sizes(self) -> frozenset[int]:
        """Every size of every decision's shape (a batch must not have one of these sizes)."""
        return frozenset(d for _, shape, _ in self.layout or () for d in shape)


def _describe(entry: Written, name: str | None) -> str:
    """How a warning names a tensor f writes into: its name in a module f reaches, and
    its shape and dtype."""
    t = entry.tensor
    what = f"a {_dtype_name(t.dtype)} tensor of shape {tuple(t.shape)}"
    return f"{name!r} ({what})" if name is not None else what


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same values, NaN equal to NaN (and -0.0 to 0.0)."""
    if torch.equal(a, b):
        return True
    return a.shape == b.shape and bool(a.eq(b).logical_or_(a.isnan() & b.isnan()).all())


def _detached(leaf: Any) -> Any:
    return leaf.detach() if isinstance(leaf, torch.Tensor) and leaf.requires_grad else leaf


def _graph(loss: torch.Tensor) -> list[Any]:
    """Every node of the autograd graph of `loss`, once each (depth first)."""
    return _below([loss.grad_fn])


def _below(starts: Sequence[Any]) -> list[Any]:
    """Every node reachable from the autograd nodes `starts`, once each (depth first).

    A plain loop that builds a list: every check walks its graph once, and a generator
    with a generator expression per node took 2.5 times as long."""
    seen: set[Any] = set()
    found: list[Any] = []
    stack = [node for node in starts if node is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        found.append(node)
        for next_node, _ in node.next_functions:
            if next_node is not None:
                stack.append(next_node)
    return found


def _under_python_nodes(loss: torch.Tensor) -> tuple[frozenset[int], frozenset[int]]:
    """The ids of the leaf tensors whose gradient passes through a Python backward (a
    custom ``autograd.Function``) of two or more inputs that require a gradient in the
    graph of `loss`, and of those among them that are one of its inputs (a custom
    layer's weight). A backward with one such input (a custom loss of the logits) has
    no other input's ``needs_input_grad`` to gate its gradient on by mistake."""
    python = [
        node
        for node in _graph(loss)
        if isinstance(node, _PYTHON_NODE)
        and sum(next_node is not None for next_node, _ in node.next_functions) > 1
    ]
    direct = [next_node for node in python for next_node, _ in node.next_functions]
    return _leaves(_below(python)), _leaves(direct)


def _leaves(nodes: Iterable[Any]) -> frozenset[int]:
    """The ids of the leaf tensors the AccumulateGrad nodes among `nodes` feed."""
    return frozenset(
        id(variable) for node in nodes if (variable := getattr(node, "variable", None)) is not None
    )


_INVALID_GRADIENT = re.compile(r"Function (\S+) returned an invalid gradient at index (\d+)")
_EXPECTED_SHAPE = re.compile(r"expected shape compatible with \[([0-9, ]*)\]")


def _under_bad_gradient(loss: torch.Tensor, msg: str) -> tuple[set[Any], frozenset[int]] | None:
    """Where autograd's "Function F returned an invalid gradient at index i" leads: the
    nodes at and below input i of every node F in the graph of `loss` (those whose input
    there has the shape the error expects, where it names one and torch says), and the
    ids of the leaf tensors among them. None where the message names no such gradient
    or the graph holds no F.

    The gradient is wrong for the tensor F got as input i, so the blocks to name are
    those that tensor is computed from: ``F.apply(x, w[None].expand(3, 4))`` returning
    a (4,) gradient for input 1 is about `w`, though the expanded (3, 4) it expects is
    the shape of `x`."""
    match = _INVALID_GRADIENT.search(msg)
    if match is None:
        return None
    name, index = match.group(1), int(match.group(2))
    shaped = _EXPECTED_SHAPE.search(msg)
    expected = (
        [int(s) for s in shaped.group(1).replace(" ", "").split(",") if s] if shaped else None
    )
    starts = []
    for node in _graph(loss):
        if node.name() != name or index >= len(node.next_functions):
            continue
        next_node, input_nr = node.next_functions[index]
        if next_node is None:
            continue
        if expected is not None:
            try:
                shape = list(next_node._input_metadata[input_nr].shape)
            except Exception:  # a private attribute: without it, every F counts
                shape = expected
            if shape != expected:
                continue
        starts.append(next_node)
    if not starts:
        return None
    nodes = _below(starts)
    return set(nodes), _leaves(nodes)


def _reached(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[bool]:
    """Whether each input is in the autograd graph of `loss` (a path exists to it)."""
    nodes = set(_graph(loss))
    leaves = _leaves(nodes)
    return [id(t) in leaves if t.grad_fn is None else t.grad_fn in nodes for t in inputs]


def _only_torch_nodes(loss: torch.Tensor) -> bool:
    """Whether every node of the autograd graph of `loss` is one of torch's own.

    A Python backward (a custom ``autograd.Function``, which module backward hooks and
    ``torch.library`` custom ops are built on) can compute in any precision; torch's
    own derivative formulas compute in the dtypes of the forward pass.
    """
    return not any(isinstance(node, _PYTHON_NODE) for node in _graph(loss))


_PYTHON_NODE = torch.autograd.function.BackwardCFunction


#: the most blocks whose gradients are taken again one by one where a custom backward
#: is on their way (`TorchBackend._lone`: one more call of f each; the first ones)
LONE_BLOCKS = 16


class TorchBackend:
    """The protocol of `_base.Backend` for functions of torch tensors and modules."""

    framework = "torch"

    def __init__(
        self, f: Callable[..., Any], args: tuple, params: Any, grad: Any, settings: Settings
    ) -> None:
        if grad is not None:
            raise TypeError(
                "gradcheck: grad= is only for NumPy functions; for a PyTorch function the "
                "analytic gradient comes from torch.autograd. Remove grad=."
            )
        if not callable(f):
            raise TypeError(f"gradcheck: f must be callable, got {type(f).__name__}")
        if torch.is_inference_mode_enabled():
            # autograd is off for good there (no version counters, no graph): a check
            # could compute no gradient, and torch's own error names none of this
            raise ValueError(
                "gradcheck: called inside torch.inference_mode(), where autograd cannot "
                "compute gradients; run the check outside it (or inside "
                "torch.inference_mode(False))"
            )
        self.f = f
        self.warnings: list[str] = []
        self._seed = settings.seed
        self._closed = False
        self._swaps: list[_Swap] = []
        self._buffers: list[_Buffer] = []
        self._training: list[tuple[torch.nn.Module, bool]] = []
        #: the plain attributes of the params modules (``self.last = ...`` in a forward),
        #: saved before the first call of f and put back in `close()` (`_torch_attrs`)
        self._attributes: ModuleAttributes | None = None
        self._blocks: list[_Block] = []
        #: (name, tensor, flat values) of every float64 tensor the check gave f: put back
        #: if f writes into it (an in-place op under no_grad leaves no other trace)
        self._guards: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self._written_seen: set[str] = set()
        #: tensors f writes into that the check did not take (running statistics of a
        #: module f reads through a closure, a cache): saved and put back after every
        #: call (see `_torch_state`); ``storage address -> name`` of a params module's
        #: buffers, which are swapped and reset instead (None: not built yet)
        self._state = SavedState()
        self._buffer_at: dict[int, str] | None = None
        self._padding_seen: set[tuple[str, int]] = set()
        self._args: tuple = ()
        self._weights: torch.Tensor | None = None
        self._kind: str | None = None
        self._eval_with_grad = False
        self._lowered_seen: set[str] = set()
        self._numerics: _Numerics | None = None
        # batched evaluation (see evaluate)
        self._batch = bool(getattr(settings, "batch", True))
        self._arg_blocks: set[str] = set()
        self._slots: list[list[tb.Slot]] = []  # per block: where f reads it
        self._modules: tb.Modules | None = None
        self._reference: _Reference | None = None
        #: (perturbed blocks, track) that cannot be batched: evaluated point by point
        self._unbatchable: set[tuple[tuple[int, ...], bool]] = set()
        self._batch_failures = 0
        self._batch_worked = False
        #: why groups of points were evaluated one at a time ("blocks: reason")
        self.batch_fallbacks: list[str] = []
        #: points evaluated in a batch and one at a time (for tests and benchmarks)
        self.batched_points = 0
        self.looped_points = 0
        self._last_mode: WinnerTracker | None = None
        #: the storage address of each block's tensor (the taint sources of `_mode`)
        self._block_storages: list[int] | None = None
        # the fast path (see `_fast`): set by every `gradient` from its forward pass
        self._clean = False  # the dispatch mode fixed nothing up (no cast, no move)
        #: the analytic pass's graph holds a Python backward (see `_lone`), and the ids
        #: of the leaves whose gradient passes through one
        self._custom_graph = False
        self._custom_leaves: frozenset[int] = frozenset()
        self._custom_inputs: frozenset[int] = frozenset()  # ... and those it takes
        self._clean_tracked = False  # ... and the pass was tracked and saw no decision
        #: the checked point's max/min reductions are shifts, not kinks: not recorded
        self._quiet = False
        #: points evaluated without the dispatch mode (for tests and benchmarks)
        self.fast_points = 0
        #: f needs its inputs cast before dispatch (`_torch_promote`); the hooks on
        #: the recurrent modules of params that do so for those modules
        self._promoting = False
        self._hooks: list[RemovableHandle] = []
        #: the dtypes of the floating tensors the check cast to float64; with `_keeping`,
        #: f runs where casts to a dtype at least as precise as the least precise of
        #: them keep float64 (`_torch_promote.Promoting`'s `home`)
        self._cast_from: set[torch.dtype] = set()
        self._keeping = False
        #: the user's arguments and the lower-precision dtypes the check cast, for the
        #: pass in the user's own dtypes (`own_dtype_pass`)
        self._user_args: tuple = ()
        self._given: tuple[str, ...] = ()
        #: puts the user's torch.compile stance back (the check runs compiled code
        #: eagerly, `_torch_compiled`); None where the check set none
        self._stance: Callable[[], None] | None = None

        self._device = _resolve_device(settings.device)
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.init()
        self._rng = GlobalRng(settings.seed)  # validates the seed; saves every global RNG
        try:
            self._numerics = _Numerics()
            self._numerics.apply()
            self._stance = force_eager()
            self._prepare(tuple(args), params, settings)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ preparation

    def _place(self, t: torch.Tensor) -> torch.device:
        return self._device if self._device is not None else t.device

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        """An argument f reads as it is (an integer tensor), moved to the check's device
        where one is set."""
        moved = self._device is not None and t.device != self._device
        return t.to(self._device) if moved else t

    def _float64_copy(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous float64 copy of `t` on the check's device (flat indices are C order)."""
        out = torch.empty(tuple(t.shape), dtype=_F64, device=self._place(t))
        out.copy_(t.detach())  # `out` requires no grad: no graph is recorded
        return out

    def _param_leaves(self, params: Any) -> list[tuple[str, Any]]:
        """``(name, leaf)`` for every entry of `params`; modules are expanded."""
        if params is None:
            return []
        if isinstance(params, torch.nn.Module):
            return self._module_leaves(params, "")
        if isinstance(params, torch.Tensor):
            raise TypeError(
                "gradcheck: params is a single tensor; pass an nn.Module, a dict of tensors "
                "(params={'W': W}) or a list of tensors (params=[W])"
            )
        if isinstance(params, Mapping):
            leaves = []
            for key, value in params.items():
                leaves.extend(self._expand(iter_leaves(value, str(key))))
            return leaves
        if isinstance(params, (list, tuple)):
            return self._expand(iter_leaves(params, "params"))
        raise TypeError(
            f"gradcheck: params is a {type(params).__name__}; pass an nn.Module, a dict of "
            "tensors or a list of tensors"
        )

    def _expand(self, leaves: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for name, leaf in leaves:
            if isinstance(leaf, torch.nn.Module):
                out.extend(self._module_leaves(leaf, name + "."))
            else:
                out.append((name, leaf))
        return out

    def _module_leaves(self, module: torch.nn.Module, prefix: str) -> list[tuple[str, Any]]:
        if all(m is not module for m in self._modules_seen):
            self._modules_seen.append(module)
        leaves = []
        for name, p in module.named_parameters():
            if isinstance(p, torch.nn.parameter.UninitializedParameter):
                raise TypeError(
                    f"gradcheck: parameter {prefix + name!r} of a lazy module is not "
                    "initialised yet; run one forward pass before the check"
                )
            leaves.append((prefix + uncompiled_name(name), p))
        return leaves

    def _swap(self, t: torch.Tensor, new: torch.Tensor, requires_grad: bool) -> None:
        is_leaf = t.is_leaf
        record = _Swap(t, t.data, t.requires_grad, t.grad if is_leaf else None, is_leaf)
        self._swaps.append(record)  # before any change, so close() can undo a partial one
        if is_leaf and t.grad is not None:
            t.grad = None
        t.data = new
        if is_leaf:
            t.requires_grad_(requires_grad)

    def _prepare(self, args: tuple, params: Any, settings: Settings) -> None:
        self._modules_seen: list[torch.nn.Module] = []
        arg_leaves = list(iter_leaves(args, "args"))
        param_leaves = self._param_leaves(params)

        floating: list[str] = []
        others: list[str] = []
        seen: set[str] = set()
        for name, leaf in arg_leaves + param_leaves:
            if name in seen:
                raise ValueError(
                    f"gradcheck: two inputs are both named {name!r}; rename a params key"
                )
            seen.add(name)
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                floating.append(name)
            else:
                others.append(name)
        complex_ = [
            name
            for name, leaf in arg_leaves + param_leaves
            if isinstance(leaf, torch.Tensor) and leaf.is_complex()
        ]
        chosen = set(select_blocks(floating, others, settings.wrt, complex_))
        self.warnings.extend(complex_warning(complex_, settings.wrt))
        _refuse_meta(arg_leaves + param_leaves, chosen)
        arrays = [
            name
            for name, leaf in arg_leaves + param_leaves
            if isinstance(leaf, np.ndarray) and np.issubdtype(leaf.dtype, np.floating)
        ]
        if arrays:
            verb = "is a NumPy array" if len(arrays) == 1 else "are NumPy arrays"
            self.warnings.append(
                f"gradcheck: {', '.join(arrays[:6])} {verb} in a PyTorch check: passed to "
                "f as they are, as data, and not checked; pass torch tensors to check them"
            )

        low = [
            (name, _dtype_name(leaf.dtype))
            for name, leaf in arg_leaves + param_leaves
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dtype != _F64
        ]
        lowered = [f"{name} ({dtype})" for name, dtype in low]
        self._given = tuple(sorted({dtype for _, dtype in low}))
        if lowered:
            self.warnings.append(
                f"gradcheck: {CAST_NOTICE}these inputs were in lower precision and were "
                f"cast for the check: {', '.join(lowered[:6])}"
                + (f" and {len(lowered) - 6} more" if len(lowered) > 6 else "")
            )

        blocks: dict[str, _Block] = {}

        def take_arg(name: str, leaf: Any) -> Any:
            if not isinstance(leaf, torch.Tensor):
                return leaf
            if not leaf.is_floating_point():
                return self._on_device(leaf)
            self._cast_from.add(leaf.dtype)
            t = self._float64_copy(leaf)
            t.requires_grad_(name in chosen)
            if name in chosen:
                blocks[name] = _Block(name, tuple(leaf.shape), _dtype_name(leaf.dtype), t, None)
                self._arg_blocks.add(name)
            else:
                self._guards.append((name, t, t.detach().view(-1).clone()))
            return t

        self._args = tuple(map_leaves(args, "args", take_arg))
        self._user_args = args

        # a tensor listed twice (under two keys) is swapped once and checked under each name
        wanted: dict[int, bool] = {}
        for name, leaf in param_leaves:
            if isinstance(leaf, torch.Tensor):
                wanted[id(leaf)] = wanted.get(id(leaf), False) or name in chosen
        for name, leaf in param_leaves:
            if not isinstance(leaf, torch.Tensor):
                continue
            dtype = _dtype_name(leaf.dtype)
            if id(leaf) in wanted:
                requires_grad = wanted.pop(id(leaf))
                if leaf.is_floating_point():
                    self._cast_from.add(leaf.dtype)
                    self._swap(leaf, self._float64_copy(leaf), requires_grad)
                    if not requires_grad:
                        self._guards.append((name, leaf, leaf.detach().view(-1).clone()))
                elif self._device is not None and leaf.device != self._device:
                    self._swap(leaf, leaf.detach().to(self._device), False)
            if name in chosen:
                blocks[name] = _Block(name, tuple(leaf.shape), dtype, leaf, None)

        # the params modules, and those f reaches in its closure (params=dict(...) of one)
        self._attributes = ModuleAttributes.of([*self._modules_seen, *modules_of(self.f)])
        if self._stance is not None and compiled_in(self.f, self._modules_seen):
            self.warnings.append(
                "gradcheck: f holds torch.compile'd code, which "
                f"{COMPILE_NOTICE} (as under torch.compiler.set_stance('force_eager')): "
                "the gradient checked is the eager code's, which the compiled graph is "
                "traced from, since the check's dispatch mode cannot run inside a "
                "compiled graph. The compiled code is left as it was and runs compiled "
                "after the check"
            )
        for module in self._modules_seen:
            self._take_module_state(module)

        for name in floating:
            if name in chosen:
                block = blocks[name]
                block.base = block.flat().clone()
                self._blocks.append(block)
                self._guards.append((name, block.tensor, block.base))
        if self._batch:
            self._find_slots(params)

    def _find_slots(self, params: Any) -> None:
        """Where f reads each block, for batched evaluation (see `_batched_call`)."""
        keys = tb.module_keys(self._modules_seen)
        if keys:
            self._modules = tb.Modules(self.f, self._modules_seen)
        items: dict[int, list[tb.Slot]] = {}
        for _, tensor, slot in tb.item_slots(params):
            if slot is not None:
                items.setdefault(id(tensor), []).append(slot)
        for block in self._blocks:
            if block.name in self._arg_blocks:
                slots = [tb.Slot("arg", block.name)]
            else:
                slots = list(items.get(id(block.tensor), []))
                if id(block.tensor) in keys:
                    slots.append(tb.Slot("module", keys[id(block.tensor)]))
            self._slots.append(slots)

    def _take_module_state(self, module: torch.nn.Module) -> None:
        """Save train/eval flags; give every buffer float64 (or copied) storage."""
        swapped = {id(s.tensor) for s in self._swaps}
        self._training.extend((m, m.training) for m in module.modules())
        self._hooks.extend(hook_recurrent(module.modules()))
        works: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for sub in module.modules():
            for name, buf in sub._buffers.items():
                if buf is None:
                    continue
                if id(buf) not in works:
                    if id(buf) in swapped:  # registered in two modules: already swapped
                        continue
                    if buf.is_floating_point():
                        new = self._float64_copy(buf)
                    else:
                        new = buf.detach().to(self._place(buf), copy=True)
                    self._swap(buf, new, buf.requires_grad)
                    swapped.add(id(buf))
                    works[id(buf)] = (new, new.clone())
                work, start = works[id(buf)]
                self._buffers.append(_Buffer(sub, name, buf, work, start))

    # ------------------------------------------------------------------ protocol

    def blocks(self) -> list[BlockSpec]:
        """The checked blocks in a stable order: args first, then params.

        The values are a read-only view of the base point where it is on the CPU (a copy
        of a large block costs as much as a forward pass of a small model).
        """
        specs = []
        for b in self._blocks:
            values = _numpy(b.base)
            values.flags.writeable = False
            specs.append(BlockSpec(b.name, b.shape, b.dtype, values))
        return specs

    def gradient(self, track: bool) -> Gradient:
        """The analytic gradient at the base point, from one call of f with the seed reset.

        An f that fails on a dtype mismatch the tracker could not fix (a convolution of
        float32 data with the check's float64 weights is refused before dispatch) is
        called again with its inputs cast ahead of dispatch, for the rest of the check
        (`_torch_promote`).
        """
        warned, lowered = len(self.warnings), set(self._lowered_seen)
        try:
            gradient = self._gradient_pass(track)
        except (RuntimeError, ValueError, TypeError) as err:
            if self._promoting or not _dtype_mismatch(err):
                raise
            self._promoting = True
            gradient = self._gradient_pass(track)
        if self._lowered_seen != lowered and not self._keeping and home_dtype(self._cast_from):
            # f lowered the check's float64 (a .float() of logits, a float32 zeros
            # buffer filled with outputs) in a model whose own dtype that would not
            # lower: again, with those casts kept in float64 (`Promoting`'s `home`)
            said, seen = self.warnings[warned:], self._lowered_seen
            del self.warnings[warned:]
            self._lowered_seen = lowered
            self._keeping = True
            try:
                gradient = self._gradient_pass(track)
            except Exception:
                # f needs the cast's own dtype (a bit view, .view(torch.int32), of the
                # float32): as it was, the lowering named
                self._keeping = False
                self.warnings[warned:], self._lowered_seen = said, seen
                gradient = self._gradient_pass(track)
        return self._lone(gradient)

    def _lone(self, gradient: Gradient) -> Gradient:
        """The gradient, with each block's taken again with it alone requiring one.

        The analytic pass makes every checked block require a gradient, so a custom
        autograd.Function sees ``ctx.needs_input_grad`` all True. A backward that
        computes ``dW`` under the wrong index (``needs_input_grad[0]``, the input's)
        then passes, while in training, where the input is data, ``W.grad`` stays None.
        Where the graph holds such a Python backward, f runs once more per block whose
        gradient passes through one, with that block alone requiring a gradient (at
        most `LONE_BLOCKS` such blocks, however many the check has: the inputs of a
        Python backward first, then the blocks upstream of one); a block
        whose gradient is then None or all 0, and was not before, is checked as 0 (it
        fails) and a warning says why. Values are not compared (the pass runs without
        the check's dispatch mode); a pass that raises is left out.
        """
        blocks = self._blocks
        if not self._custom_graph or len(blocks) < 2:
            return gradient
        tensors = [b.tensor for b in blocks]
        total = list(gradient.total)
        # the blocks with a Python backward on their way and something to lose, the
        # inputs of one first (a custom layer's weight, behind all upstream blocks)
        lone = sorted(
            (b for b, t in enumerate(tensors) if id(t) in self._custom_leaves and total[b].any()),
            key=lambda b: id(tensors[b]) not in self._custom_inputs,
        )
        if len(lone) > LONE_BLOCKS:
            left = [blocks[b].name for b in lone[LONE_BLOCKS:]]
            shown = ", ".join(repr(name) for name in left[:3]) + (", ..." if len(left) > 3 else "")
            self.warnings.append(
                f"{len(left)} of the {len(lone)} blocks under a custom backward "
                f"({shown}) {LONE_NOTICE}: the first {LONE_BLOCKS} were, looking for a "
                "gradient gated on another input's ctx.needs_input_grad; check a custom "
                "layer's blocks with wrt= to take them all"
            )
        lone = lone[:LONE_BLOCKS]
        flags = [t.requires_grad for t in tensors]
        runs = 0
        try:
            for b in lone:
                block = blocks[b]
                for j, t in enumerate(tensors):
                    t.requires_grad_(j == b)
                runs += 1
                try:
                    # (torch's own warnings about the flags, a full backward hook's
                    # "no inputs require gradients", are about this pass, not f)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        g = self._lone_gradient(tensors[b])
                except Exception:  # an extra look, not the check: left out
                    continue
                if g is None or not bool(g.ne(0).any()):
                    total[b] = np.zeros_like(total[b])
                    self.warnings.append(
                        f"block {block.name!r} gets no gradient when it alone requires one "
                        "(its backward returns None or 0 for it), although it does when "
                        "every checked block requires one: a custom autograd.Function's "
                        "backward gates its gradient on another input's "
                        "ctx.needs_input_grad (the wrong index), so in training, where "
                        "that input is data, it stays None. It is checked as 0: compute "
                        "each gradient under its own needs_input_grad entry"
                    )
        finally:
            for t, flag in zip(tensors, flags, strict=True):
                t.requires_grad_(flag)
        return Gradient(gradient.center, tuple(total), gradient.terms, gradient.evaluations + runs)

    def _lone_gradient(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The gradient of f's total for `tensor` alone, from a plain forward pass."""
        versions = self._versions()
        try:
            total, _ = self._reduce(self._forward(True, None))
            if not total.requires_grad:
                return None
            (g,) = torch.autograd.grad(total, [tensor], allow_unused=True)
            return _dense(g)
        finally:
            self._repair(versions)

    def _gradient_pass(self, track: bool) -> Gradient:
        self._quiet = False  # decided anew at every checked point (`_shift_invariant`)
        recorder = SignatureRecorder() if track else None
        mode = self._mode(recorder, watch_precision=True, measure=True, watch=self._watch())
        versions = self._versions()
        try:
            gradient = self._gradient(mode, recorder)
        finally:
            self._repair(versions, mode)  # after the backward passes, which may need f's writes
        self._note_padding(mode)
        self._clean = not mode.fixed
        self._clean_tracked = self._clean and recorder is not None and not mode.layout
        layout = list(mode.layout) if track else None
        self._reference = _Reference(gradient.center, layout, mode.bytes_out, mode.bytes_after())
        return gradient

    def _watch(self) -> dict[int, int]:
        """Storage address -> block index, for the reference evaluation's measurements."""
        watch: dict[int, int] = {}
        if self._batch:
            for i, block in enumerate(self._blocks):
                address = self._storage(block.tensor)
                if address:
                    watch.setdefault(address, i)
        return watch

    def _gradient(self, mode: WinnerTracker, recorder: SignatureRecorder | None) -> Gradient:
        out = self._forward(True, mode)
        mode.finish()
        self._note_precision(mode)
        total, terms = self._reduce(out)
        loss = float(total.item())
        check_finite_loss(loss, "the loss at the checked point")
        term_values = {}
        for name, value in terms.items():
            term_values[name] = float(value.item())
            check_finite_loss(term_values[name], f"term {name!r} at the checked point")
        center = Evaluation(
            loss,
            term_values,
            recorder.digest() if recorder is not None else None,
            recorder.count if recorder is not None else 0,
        )
        inputs = [b.tensor for b in self._blocks]
        if not total.requires_grad:
            raise ValueError(
                "gradcheck: the loss returned by f has no autograd graph, so no checked block "
                f"({_names([b.name for b in self._blocks])}) receives a gradient. f detached "
                "it (.item(), .detach(), .numpy(), torch.no_grad, a reentrant "
                "torch.utils.checkpoint whose inputs do not require grad) or does not use "
                "the blocks; "
                "return the loss as a tensor computed from the inputs"
            )
        # the backward passes run under a precision watch too, unless they cannot lower
        # precision: the forward pass needed no fix-up, lowered nothing, and its graph
        # holds only torch's own derivative formulas (the watch costs a Python call per
        # op, as much as the whole backward pass of a small model)
        self._custom_graph = not _only_torch_nodes(total)
        self._custom_leaves, self._custom_inputs = (
            _under_python_nodes(total) if self._custom_graph else (frozenset(), frozenset())
        )
        plain = not mode.fixed and not mode.lowered and not self._custom_graph
        keep = home_dtype(self._cast_from) if self._keeping else None
        watch = None if plain else self._mode(None, watch_precision=True, keep=keep)
        grads = self._backward(total, inputs, watch, None)
        grads = list(grads)
        if any(g is None for g in grads):
            # None is "no path to the loss" or "a backward returned None" (a custom
            # Function forgetting a gradient): the first is an unused block, the second
            # a zero gradient that the comparison then judges
            reached = _reached(total, inputs)
            for i, (g, seen) in enumerate(zip(grads, reached, strict=True)):
                if g is None and seen:
                    grads[i] = torch.zeros_like(inputs[i])
                    self.warnings.append(
                        f"block {self._blocks[i].name!r} is in the graph of the loss but "
                        "its backward returned None, which autograd reads as a zero "
                        "gradient: it is checked as 0 (a custom autograd.Function whose "
                        "backward returns None for an input that needs a gradient)"
                    )
        unused = [b.name for b, g in zip(self._blocks, grads, strict=True) if g is None]
        if unused:
            which = "block " if len(unused) == 1 else "blocks "
            raise ValueError(
                f"gradcheck: {which}{_names(unused)} receive{'s' if len(unused) == 1 else ''} "
                "no gradient: autograd found no path from it to the loss, so the loss does "
                "not depend on it. If that is intended (an unused or frozen parameter), "
                f"exclude it from the check with wrt=, e.g. wrt=lambda name: name not in "
                f"{unused!r}"
            )
        # torch's own derivative formulas return tensors made in the backward pass, which
        # only autograd holds: no copy. A custom backward may return a tensor of f's (even
        # a block, which the check then perturbs in place): copied
        total_grads = tuple(
            check_gradient_array(b.name, _numpy(g), b.shape, None, copy=not plain)
            for b, g in zip(self._blocks, grads, strict=True)
        )
        term_grads: dict[str, tuple[np.ndarray, ...]] = {}
        for name, value in terms.items():
            if value.requires_grad:
                gs = self._backward(value, inputs, watch, name)
            else:
                gs = [None] * len(inputs)
            term_grads[name] = tuple(
                np.zeros(int(np.prod(b.shape, dtype=np.int64)))
                if g is None
                else check_gradient_array(b.name, _numpy(g), b.shape, name, copy=not plain)
                for b, g in zip(self._blocks, gs, strict=True)
            )
        if watch is not None:
            self._note_precision(watch)
        evaluations = 1
        if recorder is not None and mode.shiftable:
            evaluations += 1
            if self._shift_invariant(center):
                self._quiet = True
                mode.layout = []
                center = Evaluation(center.loss, center.terms, EMPTY_SIGNATURE, 0)
        return Gradient(center, total_grads, term_grads, evaluations)

    def _shift_invariant(self, center: Evaluation) -> bool:
        """Whether f's loss and terms ignore the values of its max/min reductions and
        the branches of its two-way decisions.

        Called where the checked point's pass found the test worth running
        (`WinnerTracker.shiftable`): f is evaluated once more with the reductions'
        values moved (`_kinks.shift_offsets`) and the two-way decisions flipped. An f
        that cannot take the move (it raises, or its output changes form) is not
        shift-invariant; what it warns about is not the user's concern.
        """
        mode = self._mode(SignatureRecorder(), watch_precision=False, shift=True)
        versions = self._versions()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self._forward(False, mode)
                total, terms = self._reduce(out)
                loss = float(total.item())
                values = {k: float(v.item()) for k, v in terms.items()}
        except Exception:
            return False
        finally:
            self._repair(versions)
        return shift_invariant((center.loss, center.terms), (loss, values))

    def evaluate(self, points: Sequence[Point], track: bool) -> list[Evaluation]:
        """The loss at each point, from the seeded RNGs and the starting buffers.

        With `Settings.batch`, points are evaluated in vmapped batches where f allows
        it (`_evaluate_batched`); the others one at a time: deltas written in place,
        RNGs reset, f called, deltas undone.
        """
        results: list[Evaluation | None] = [None] * len(points)
        if self._batch:
            self._evaluate_batched(points, track, results)
        for i, point in enumerate(points):
            if results[i] is None:
                results[i] = self._evaluate_point(point, track)
        return [r for r in results if r is not None]

    def _fast(self, track: bool) -> bool:
        """Whether f can run without the dispatch mode (the fast path).

        True when the forward pass of the last `gradient` needed no fix-up from the mode
        (no input cast to float64, none moved to the check's device) and, for a tracked
        evaluation, that pass was tracked and recorded no decision: f's ops then have no
        max-like decision to record, and an evaluation's signature is the empty one, equal
        to the checked point's. (A later point taking a branch the checked point did not,
        through Python control flow on values, is the same risk as with the mode: the
        mode sees aten ops, not Python branches.) Any decision at the checked point keeps
        the mode for every evaluation.
        """
        return self._clean and (self._clean_tracked or not track)

    @property
    def fast_path(self) -> bool:
        """Whether tracked evaluations currently take the fast path (see `_fast`)."""
        return self._fast(True)

    def _evaluate_point(self, point: Point, track: bool) -> Evaluation:
        touched = self._apply(point)
        try:
            evaluation = self._evaluate_once(track, False, point)
        finally:
            self._undo(touched)
        self.looped_points += 1
        return evaluation

    def step(self, update: Sequence[np.ndarray]) -> None:
        """Move the base point by `update` (burn-in); `close()` still restores the original."""
        if len(update) != len(self._blocks):
            raise ValueError(
                f"gradcheck: step got {len(update)} updates for {len(self._blocks)} blocks"
            )
        with torch.no_grad():
            for block, u in zip(self._blocks, update, strict=True):
                delta = np.asarray(u, dtype=np.float64).reshape(-1)
                block.base += torch.as_tensor(delta, device=block.base.device)
                block.flat().copy_(block.base)
        self._reference = None  # the checked point moved
        self._clean = self._clean_tracked = False  # until the next `gradient`

    def own_dtype_pass(self) -> tuple[str, ...] | None:
        """f and its backward once more at the checked point, in the user's own dtypes.

        Only where the check cast floating tensors of lower precision (None otherwise):
        a custom backward computing ``exp(-z)`` overflows in float32 and not in the
        check's float64 (see `_own_dtype`). One forward under a dispatch mode that only
        watches for writes into state (no promotion: f computes in its own dtypes), and
        one ``torch.autograd.grad`` (no ``.grad`` written). What it changes is put back as
        after any evaluation (`_own_gradient`). A pass that raises gives a notice, and
        the check stands as it is.
        """
        return look(
            self._given,
            contextlib.nullcontext(),
            self._own_gradient,
            lambda: [(b.name, b.shape, b.dtype) for b in self._blocks],
        )

    def _own_gradient(self) -> tuple[float, list[np.ndarray | None]]:
        """The loss and each block's gradient (flat float64, None where autograd gave
        none) at the checked point, every tensor in the dtype the user gave it.

        The tensors the check swapped (parameters and buffers of ``params``) get copies
        in their own dtypes for the call (the blocks' base values, the buffers' starting
        values), and their float64 storage back after it; the arguments are copies of
        the user's, the blocks' from their base values. So nothing the check holds is
        written, and what f writes that the check does not hold (a BatchNorm read
        through a closure) is found and put back like after any evaluation
        (`_torch_state`). RNGs are reseeded first; the dtypes, devices, requires_grad
        and train/eval flags of the user's objects are never touched.
        """
        starts = {id(b.obj): b.start for b in self._buffers}
        held: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tensor, the check's storage)
        own: list[torch.Tensor] = []  # the tensors made for this call
        versions = self._versions()
        mode = None
        try:
            for swap in self._swaps:
                t, start = swap.tensor, starts.get(id(swap.tensor))
                if not swap.original.is_floating_point() and start is None:
                    continue  # an integer tensor moved to the device: f reads it as is
                source = (start if start is not None else t).detach()
                copy = source.to(dtype=swap.original.dtype, copy=True)
                held.append((t, t.data))
                t.data = copy
                own.append(copy)
            args, inputs = self._own_args(own)
            mode = tracker(None, measure=True, state=self._state_watch(own))
            self._reseed()
            with _GradMode(True):
                with mode:
                    out = self.f(*args)
                total, _ = self._reduce(out)
            loss = float(total.detach().item())
            if not np.isfinite(loss):
                return loss, []
            grads = [_dense(g) for g in torch.autograd.grad(total, inputs, allow_unused=True)]
        finally:
            for t, data in reversed(held):
                t.data = data
            self._repair(versions, mode)
        return loss, [
            None if g is None else g.detach().to(_F64).cpu().numpy().reshape(-1) for g in grads
        ]

    def _own_args(self, own: list[torch.Tensor]) -> tuple[tuple, list[torch.Tensor]]:
        """The user's arguments for the pass in their own dtypes, and the tensors whose
        gradients it takes (per block: its argument copy, or its parameter). Floating
        tensors are copied (blocks from their base values), on the check's device; the
        copies are added to `own`."""
        arg_blocks = {b.name: b for b in self._blocks if b.name in self._arg_blocks}
        made: dict[str, torch.Tensor] = {}

        def take(name: str, leaf: Any) -> Any:
            if not isinstance(leaf, torch.Tensor):
                return leaf
            if not leaf.is_floating_point():
                return self._on_device(leaf)
            block = arg_blocks.get(name)
            source = leaf.detach() if block is None else block.base.view(block.shape)
            t = source.to(device=self._place(leaf), dtype=leaf.dtype, copy=True)
            own.append(t)
            if block is not None:
                made[name] = t.requires_grad_(True)
            return t

        args = tuple(map_leaves(self._user_args, "args", take))
        return args, [made.get(b.name, b.tensor) for b in self._blocks]

    def close(self) -> None:
        """Put back every swapped storage, buffer, flag, module attribute and RNG state.

        Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []

        def attempt(fn: Callable[[], Any]) -> None:
            try:
                fn()
            except BaseException as err:  # keep restoring the rest
                errors.append(err)

        for handle in self._hooks:
            attempt(handle.remove)
        self._hooks = []
        attempt(self._state.restore)
        for buffer in self._buffers:
            attempt(lambda b=buffer: b.module._buffers.__setitem__(b.name, b.obj))
        for swap in reversed(self._swaps):
            attempt(swap.restore)
        for module, flag in self._training:
            module.training = flag
        if self._attributes is not None:
            attempt(self._attributes.restore)
        if self._numerics is not None:
            attempt(self._numerics.restore)
        if self._stance is not None:
            attempt(self._stance)
            self._stance = None
        attempt(self._rng.restore)
        self._blocks, self._buffers, self._swaps, self._args = [], [], [], ()
        self._user_args = ()
        self._guards, self._state, self._attributes = [], SavedState(), None
        self._slots, self._modules, self._last_mode = [], None, None
        self._weights = None
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ internals

    def _mode(
        self,
        recorder: SignatureRecorder | None,
        watch_precision: bool,
        measure: bool = False,
        guard: frozenset[int] = frozenset(),
        batched: bool = False,
        watch: dict[int, int] | None = None,
        stand_ins: Sequence[torch.Tensor] = (),
        shift: bool = False,
        keep: torch.dtype | None = None,
    ) -> WinnerTracker:
        """f always runs under the dispatch mode: it promotes what f reads to float64 (and
        to the check's device), and records decisions when `recorder` is given: those
        that depend on the checked blocks (or on `stand_ins`, the batched values a
        vmapped call substitutes for them), when every block's storage can be read."""
        sources = None
        if recorder is not None:
            if self._block_storages is None:  # fixed for the check: blocks move in place
                self._block_storages = [self._storage(b.tensor) for b in self._blocks]
            addresses = self._block_storages + [self._storage(t) for t in stand_ins]
            if all(addresses):
                sources = frozenset(addresses)
        return tracker(
            recorder,
            watch_precision,
            promote=True,
            device=self._device,
            guard=guard,
            measure=measure,
            batched=batched,
            watch=watch,
            sources=sources,
            shift=shift,
            quiet=self._quiet,
            ties=measure,  # the checked point's own pass: it decides on the shift test
            keep=keep,
            state=self._state_watch() if measure else None,
        )

    def _reseed(self) -> None:
        self._rng.reseed()

    def _versions(self) -> list[int | None]:
        """The version counters of the guarded tensors, then of the saved state's."""
        return [t._version for _, t, _ in self._guards] + self._state.versions()

    def _repair(
        self,
        versions: list[int | None],
        mode: WinnerTracker | None = None,
        point: Point | None = None,
    ) -> None:
        """Put back the values of any tensor f wrote into in place (seen by its version),
        and the saved state's (with what `mode`, a measuring pass, found first).

        A write is put back whenever the version moved; it is warned about only where
        it changed values: the tensor's values after f are compared with those f was
        called with (a block's base point moved by `point`, the call's deltas; the
        saved values of anything else). An in-place op that leaves the values as they
        were (``embedding_renorm_`` on rows already within ``max_norm``, a ``mul_(1)``)
        still moves the version, and is no write the check needs to mention.
        """
        guarded = len(self._guards)
        if mode is not None and mode.state is not None:
            self._note_state(mode)
        self._state.repair(versions[guarded:])
        written = None
        for (name, t, values), before in zip(self._guards, versions[:guarded], strict=True):
            if t._version == before:
                continue
            flat = t.detach().view(-1)  # a detached alias: no graph
            if name not in self._written_seen and not _same(flat, self._at_call(t, values, point)):
                self._written_seen.add(name)
                self.warnings.append(
                    f"gradcheck: f writes into {name!r} in place; the check put its "
                    "values back after every call of f, so each evaluation starts "
                    "from the same point"
                )
            if written is None:
                written = []
            written.append((flat, values))
        if written is not None:
            # put back once all are compared: one tensor under two names is two guards
            for flat, values in written:
                flat.copy_(values)

    def _at_call(self, t: torch.Tensor, values: torch.Tensor, point: Point | None) -> torch.Tensor:
        """The values the guarded tensor `t` had when f was called: its saved `values`,
        moved by `point`'s deltas into the blocks that are `t` (one tensor given under
        two names is two blocks), as `_apply` moved them (the same additions, so the
        same bits)."""
        deltas = [
            d for d in (point.deltas if point is not None else ()) if self._blocks[d[0]].tensor is t
        ]
        if not deltas:
            return values
        block = self._blocks[deltas[0][0]]
        m = values.numel()
        host = block.host() is not None
        start = values.clone()
        flat = start.numpy() if host else start
        for _, flat_indices, delta in deltas:
            idx = None if whole(flat_indices, m) else index_array(flat_indices)
            val = tb.delta_values(delta, m if idx is None else idx.size)
            if host:
                if idx is None:
                    np.add(flat, val, out=flat)
                else:
                    np.add.at(flat, idx, val)
            elif idx is None:
                start.add_(torch.tensor(val, device=values.device))
            else:
                start.index_put_(
                    (torch.as_tensor(idx, device=values.device),),
                    torch.tensor(val, device=values.device),
                    accumulate=True,
                )
        return start

    def _state_watch(self, own: Sequence[torch.Tensor] = ()) -> StateWatch:
        """A `StateWatch` for one measuring call of f: the guarded tensors are the
        backend's to put back, a params module's buffers are reset: neither is saved, both
        are watched for what f reads back. `own`: tensors made for the call alone (the
        pass in the user's dtypes), thrown away after it: not saved either."""
        tensors = [t for _, t, _ in self._guards] + list(own)
        skip = frozenset(self._storage(t) for t in tensors) - {0}
        return self._state.watch(skip, frozenset(self._buffer_names()))

    def _buffer_names(self) -> dict[int, str]:
        """``storage address -> name`` of the buffers of the modules in params."""
        if self._buffer_at is None:
            self._buffer_at = tensor_names(self._modules_seen, buffers_only=True)
        return self._buffer_at

    def _note_state(self, mode: WinnerTracker) -> None:
        """Keep what a measuring call found f writing into, and say what f reads back.

        An f that updates a tensor from the checked values and reads it again in the
        same call (spectral_norm's power iteration in training mode) computes a
        function whose differences follow the update; autograd does not where the
        update runs under ``torch.no_grad``. Said once per tensor; the hint on a
        failing check builds on it (`_text.hints`).
        """
        watch = mode.state
        assert watch is not None
        self._state.adopt(watch)
        names = [self._state_name(at) for at in watch.written if at in watch.fed]
        new = [n for n in dict.fromkeys(names) if n not in self._written_seen]
        if new:
            self._written_seen.update(new)
            them = "it" if len(new) == 1 else "them"
            self.warnings.append(
                f"gradcheck: f updates {', '.join(new)} in place and reads {them} again in "
                f"the same call (a power iteration, a running state fed back); the check "
                f"puts {them} back after every call of f, so the differences follow how "
                "that update depends on the checked values, which autograd leaves out "
                "where the update runs under torch.no_grad"
            )

    def _note_padding(self, mode: WinnerTracker) -> None:
        """Say where f reads the padding row of a checked embedding weight: torch gives
        that row no gradient by design (`_text` hints at it where the row fails)."""
        if not mode.padding_rows:
            return
        blocks = {self._storage(b.tensor): b.name for b in self._blocks}
        for at, row in mode.padding_rows.items():
            name = blocks.get(at)
            if name is not None and (name, row) not in self._padding_seen:
                self._padding_seen.add((name, row))
                self.warnings.append(
                    f"gradcheck: f reads row {row} of {name!r} through an embedding with "
                    f"padding_idx={row}: by torch's convention that row receives no "
                    "gradient although f's value depends on it, so its analytic gradient "
                    "is 0 where the differences are not"
                )

    def _state_name(self, at: int) -> str:
        """A name for a storage f writes into: a params module's buffer, a buffer or
        parameter of a module f reaches, or the shape and dtype of the tensor."""
        buffers = self._buffer_names()
        if at in buffers:
            return repr(buffers[at])
        entry = next((e for e in self._state.entries if self._storage(e.tensor) == at), None)
        if entry is None:
            return "a tensor"
        if entry.name is None:
            entry.name = _describe(entry, tensor_names(modules_of(self.f)).get(at))
        return entry.name

    def _reset_buffers(self) -> None:
        if not self._buffers:
            return
        with torch.no_grad():
            for buffer in self._buffers:
                if buffer.module._buffers.get(buffer.name) is not buffer.obj:
                    buffer.module._buffers[buffer.name] = buffer.obj
                buffer.work.copy_(buffer.start)

    def _promotion(self) -> contextlib.AbstractContextManager:
        """Casts ahead of dispatch, for an f that needs them (see `gradient`)."""
        if not (self._promoting or self._keeping):
            return contextlib.nullcontext()
        home = home_dtype(self._cast_from) if self._keeping else None
        return Promoting(mix=self._promoting, home=home)

    def _forward(self, grad_enabled: bool, mode: WinnerTracker | None) -> Any:
        """One call of f from the seeded RNGs and the starting buffers (mode None: plain)."""
        self._reseed()
        self._reset_buffers()
        try:
            if mode is None:
                with _GradMode(grad_enabled), self._promotion():
                    return self.f(*self._args)
            with _GradMode(grad_enabled), self._promotion(), mode:
                return self.f(*self._args)
        except RuntimeError as err:
            if _MISMATCH.search(str(err)):
                where = f" on {self._device}" if self._device is not None else ""
                raise TypeError(
                    f"gradcheck: f failed during the check{where}: {err}\n"
                    "The check runs f in float64: it casts the tensors in args and params "
                    "(and the modules' buffers) to float64, and brings other floating "
                    "tensors f reads to float64 where an operation mixes them with the "
                    "checked ones. Pass every module f uses as params= and every tensor in "
                    "args or params, and make sure the tensors f combines share a device."
                ) from err
            raise

    def _scalar(self, value: Any, what: str, device: torch.device) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            if value.dim() != 0:
                raise TypeError(
                    f"gradcheck: {what} has shape {tuple(value.shape)}; each named term "
                    "must be a scalar"
                )
            if value.is_complex():
                raise TypeError(f"gradcheck: {what} is complex; the loss must be real")
            return value
        if isinstance(value, (bool, str, bytes)) or value is None:
            raise TypeError(f"gradcheck: {what} is {type(value).__name__}; it must be a scalar")
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"gradcheck: {what} is {type(value).__name__}; it must be a scalar"
            ) from err
        return torch.tensor(number, dtype=_F64, device=device)

    def _reduce(self, out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss as a 0-d tensor, and the named terms."""
        if (
            self._kind == "scalar"
            and type(out) is torch.Tensor
            and out.dim() == 0
            and not out.is_complex()
        ):  # what f returned before, again (every evaluation of a check comes here)
            return out, {}
        device = self._blocks[0].base.device
        kind = self._kind = reduce_output(out, self._kind)
        if kind == "scalar":
            return self._scalar(out, "the loss", device), {}
        if kind == "terms":
            terms = {str(k): self._scalar(v, f"term {k!r}", device) for k, v in out.items()}
            values = list(terms.values())
            total = values[0]
            for v in values[1:]:
                total = total + v
            return total, terms
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"gradcheck: f returned a {type(out).__name__} of shape {tuple(out.shape)}; "
                "a PyTorch function must return a torch tensor (or a scalar, or a mapping)"
            )
        if not out.is_floating_point():
            raise TypeError(
                f"gradcheck: f returned a {_dtype_name(out.dtype)} tensor; the loss must be "
                "floating point"
            )
        if self._weights is None:
            w = projection_weights(tuple(out.shape), self._seed)
            self._weights = torch.as_tensor(w, dtype=_F64, device=out.device)
        elif tuple(self._weights.shape) != tuple(out.shape):
            raise ValueError(
                f"gradcheck: f returned shape {tuple(out.shape)} here but "
                f"{tuple(self._weights.shape)} at the checked point; the output shape must "
                "not depend on the perturbation"
            )
        w = self._weights if self._weights.device == out.device else self._weights.to(out.device)
        return (out * w).sum(), {}

    def _backward(
        self,
        loss: torch.Tensor,
        inputs: list[torch.Tensor],
        watch: WinnerTracker | None,
        term: Any,
    ) -> Sequence[torch.Tensor | None]:
        seed = torch.full_like(loss, COTANGENT)
        try:
            with watch or contextlib.nullcontext():
                grads = torch.autograd.grad(
                    loss, inputs, seed, retain_graph=True, allow_unused=True
                )
            grads = [_dense(g) for g in grads]
            # (one call for every block: a division each cost some 5 us)
            found = [g for g in grads if g is not None]
            divided = iter(torch._foreach_div(found, COTANGENT) if found else ())
            return [None if g is None else next(divided) for g in grads]
        except RuntimeError as err:
            raise self._backward_error(loss, inputs, term, err) from err

    def _backward_error(
        self, loss: torch.Tensor, inputs: list[torch.Tensor], term: Any, err: RuntimeError
    ) -> ValueError:
        """The error for a failed backward pass, with the advice that fits its cause.

        A backward returning the wrong count or shape of gradients names the blocks it
        concerns and says what a backward must return. A reentrant checkpoint refuses
        ``autograd.grad``: that says to pass ``use_reentrant=False``. A backward that
        raised inside names the blocks whose gradients need it only where not all do
        (where every block fails, naming them all says nothing), and points at the
        chained traceback.
        """
        msg = str(err)
        where = f" of term {term!r}" if term is not None else ""
        first = msg.splitlines()[0] if msg else type(err).__name__
        if _REENTRANT.search(msg):
            return ValueError(
                f"gradcheck: the backward pass{where} failed: torch.utils.checkpoint with "
                "use_reentrant=True cannot compute gradients with torch.autograd.grad, "
                "which the check uses. Pass use_reentrant=False to checkpoint() (for a "
                "Hugging Face model: gradient_checkpointing_enable(gradient_checkpointing_"
                "kwargs={'use_reentrant': False})), or turn checkpointing off for the check"
            )
        culprits = self._failing_blocks(loss, inputs, msg)
        if _BAD_GRADIENTS.search(msg):
            named = f" for block {_names(culprits)}" if culprits else ""
            return ValueError(
                f"gradcheck: the backward pass{where} failed{named}: {first}\nA custom "
                "torch.autograd.Function's backward must return one gradient per forward "
                "input, shaped like that input (None where no gradient is needed). Fix "
                "the backward, or leave the block out with wrt=."
            )
        some = culprits and len(culprits) < len(self._blocks)
        named = f" (the gradient of {_names(culprits)} goes through it)" if some else ""
        return ValueError(
            f"gradcheck: the backward pass{where} raised an error{named}: {first}\nThe "
            "error came from inside a backward function (a custom "
            "torch.autograd.Function's backward, or a derivative torch computes); the "
            "chained traceback above shows where. Fix that backward."
        )

    def _failing_blocks(self, loss: torch.Tensor, inputs: list[torch.Tensor], msg: str) -> list:
        """The blocks whose own backward fails, narrowed to those whose gradient comes
        through the bad one where the error says which (`_under_bad_gradient`)."""
        failing = []
        for block, t in zip(self._blocks, inputs, strict=True):
            try:
                torch.autograd.grad(loss, [t], retain_graph=True, allow_unused=True)
            except RuntimeError:
                failing.append(block)
        under = _under_bad_gradient(loss, msg)
        if under is not None:
            nodes, leaves = under
            narrowed = [
                b
                for b, t in zip(self._blocks, inputs, strict=True)
                if b in failing and (id(t) in leaves if t.grad_fn is None else t.grad_fn in nodes)
            ]
            if narrowed:
                failing = narrowed
        return [b.name for b in failing]

    def _note_precision(self, mode: WinnerTracker) -> None:
        new = {op: dt for op, dt in mode.lowered.items() if op not in self._lowered_seen}
        if not new:
            return
        self._lowered_seen.update(new)
        ops = ", ".join(f"aten.{op} -> {dt}" for op, dt in new.items())
        self.warnings.append(lowered_warning(ops, ".float(), .half(), dtype="))

    def _apply(self, point: Point) -> list[tuple[_Block, Any]]:
        """Add a point's deltas to the blocks in place (a direction: one dense addition).

        The writes go through NumPy views of CPU blocks (`_Block.host`) or detached
        aliases of the others (`_Block.flat`), which autograd does not record, so no
        ``no_grad`` context is needed. Returns what `_undo` needs.
        """
        touched: list[tuple[_Block, Any]] = []
        for index, flat_indices, values in point.deltas:
            block = self._blocks[index]
            host = block.host()
            m = block.base.numel()
            idx = None if whole(flat_indices, m) else index_array(flat_indices)
            val = tb.delta_values(values, m if idx is None else idx.size)
            touched.append((block, idx))
            if host is not None:
                flat = host[0]
                if idx is None:
                    np.add(flat, val, out=flat)
                else:
                    np.add.at(flat, idx, val)
                continue
            device = block.base.device  # values copied: a broadcast one is read-only
            flat = block.flat()
            if idx is None:
                flat.add_(torch.tensor(val, device=device))
            else:
                flat.index_put_(
                    (torch.as_tensor(idx, device=device),),
                    torch.tensor(val, device=device),
                    accumulate=True,
                )
        return touched

    def _undo(self, touched: list[tuple[_Block, Any]]) -> None:
        """Write back the base values of what `_apply` changed."""
        for block, idx in reversed(touched):
            host = block.host()
            if host is not None:
                flat, base = host
                if idx is None:
                    np.copyto(flat, base)
                else:
                    flat[idx] = base[idx]
            elif idx is None:
                block.flat().copy_(block.base)
            else:
                t = torch.as_tensor(idx, device=block.base.device)
                block.flat().index_put_((t,), block.base[t])

    def _evaluate_once(
        self, track: bool, measure: bool = False, point: Point | None = None
    ) -> Evaluation:
        """One evaluation at the blocks' current values: the base point moved by
        `point`'s deltas, which `_apply` wrote (None: at the base point itself)."""
        fast = not measure and self._fast(track)
        if self._eval_with_grad:
            return self._attempt(fast, track, measure, True, point)
        try:
            # no graph is needed for a loss value; f computes the same values either way
            return self._attempt(fast, track, measure, False, point)
        except RuntimeError as err:
            if not _NEEDS_GRAD.search(str(err)):
                raise  # f's own failure, not grad mode's: a retry would hide it
            # f needs autograd itself (an inner torch.autograd.grad, a gradient penalty)
            result = self._attempt(fast, track, measure, True, point)
            self._eval_with_grad = True
            return result

    def _attempt(
        self, fast: bool, track: bool, measure: bool, grad_enabled: bool, point: Point | None
    ) -> Evaluation:
        """One call of f at the current values (the base point moved by `point`, see
        `_evaluate_once`): plain (`fast`, see `_fast`: the empty signature) or under the
        dispatch mode."""
        mode = recorder = None
        if not fast:
            recorder = SignatureRecorder() if track else None
            watch = self._watch() if measure else None
            mode = self._mode(recorder, watch_precision=False, measure=measure, watch=watch)
        versions = self._versions()
        try:
            out = self._forward(grad_enabled, mode)
        finally:
            self._repair(versions, mode, point)
        if mode is None:
            self.fast_points += 1
            signature, decisions = (EMPTY_SIGNATURE if track else None), 0
        else:
            mode.finish()
            self._last_mode = mode
            signature = recorder.digest() if recorder is not None else None
            decisions = recorder.count if recorder is not None else 0
        total, terms = self._reduce(out)
        return Evaluation(
            float(total.item()),
            {k: float(v.item()) for k, v in terms.items()} if terms else {},
            signature,
            decisions,
        )

    # ------------------------------------------------------------------ batched evaluation

    def _evaluate_batched(
        self, points: Sequence[Point], track: bool, results: list[Evaluation | None]
    ) -> None:
        """Fill `results` for the points that can be evaluated in vmapped batches.

        Points are grouped by the blocks they perturb (a coordinate pass gives one group
        per block). Groups whose batched blocks and values are small are merged into one
        batch (fewer calls for small models); a group is evaluated in chunks, each one
        call of f under ``torch.func.vmap``. A group that cannot be batched is remembered
        and left to the loop, here and in later passes; a failed chunk leaves its points
        to the loop, a failed merge is retried group by group (until `_gave_up`, which
        counts the groups of a merge like any others).
        """
        if self._eval_with_grad or self._gave_up():
            return
        # without the dispatch mode, f called point by point beats a vmapped call (its
        # fixed cost) for a few points: a direction pass's
        few = tb.FAST_LOOP_POINTS if self._fast(track) else 1
        if len(points) <= few:
            return
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, point in enumerate(points):
            deltas = point.deltas
            if len(deltas) == 1:  # nearly every point: one block, no set to build
                b, idx, _ = deltas[0]
                key = (b,) if index_count(idx) else ()
            else:
                key = tuple(sorted({b for b, idx, _ in deltas if index_count(idx)}))
            if key:
                groups.setdefault(key, []).append(i)
        eligible = []
        for key, members in sorted(groups.items()):
            if (key, track) in self._unbatchable or self._loop_is_cheaper(key):
                continue
            if not self._substitutable(key):
                self._cannot_batch(key, track, "a perturbed block has no place to substitute")
                continue
            eligible.append((key, members))
        if not eligible:
            return
        reference = self._reference_for(track)
        for key, members, parts in self._merge(eligible, reference):
            if len(members) <= few:
                continue
            done = self._run_group(key, members, points, track, reference, results, len(parts) == 1)
            if not done and len(parts) > 1:
                for part_key, part_members in parts:
                    if self._gave_up():  # as between groups: two failed parts, none batched
                        return
                    if len(part_members) >= 2:
                        self._run_group(
                            part_key, part_members, points, track, reference, results, True
                        )
            if self._gave_up():
                return

    def _loop_is_cheaper(self, key: tuple[int, ...]) -> bool:
        """Whether the loop beats a batch for these blocks: large ones, on a CPU.

        See `_torch_batch.LOOP_ROW_BYTES`. Not a failure: nothing is remembered.
        """
        if any(self._blocks[b].base.device.type != "cpu" for b in key):
            return False
        return 8 * sum(self._blocks[b].base.numel() for b in key) > tb.LOOP_ROW_BYTES

    def _substitutable(self, key: tuple[int, ...]) -> bool:
        """Whether every block has a place to substitute, none shared with another block."""
        seen_tensors: set[int] = set()
        for b in key:
            if not self._slots[b] or id(self._blocks[b].tensor) in seen_tensors:
                return False
            seen_tensors.add(id(self._blocks[b].tensor))
        return True

    def _merge(
        self, groups: list[tuple[tuple[int, ...], list[int]]], reference: _Reference
    ) -> list[tuple[tuple[int, ...], list[int], list[tuple[tuple[int, ...], list[int]]]]]:
        """Consecutive groups merged into one batch where that costs less than a call.

        A batch's cost is estimated in bytes: per row, the batched blocks and the values
        f computes from the first op that reads one of them. Merging two groups makes
        every row compute from the earlier block on; it is done when the extra bytes stay
        under `CALL_BYTES`, the fixed cost of one vmapped call (tiny models: one call).
        """
        merged: list[tuple[tuple[int, ...], list[int], list[tuple[tuple[int, ...], list[int]]]]]
        merged = []
        for key, members in groups:
            if merged:
                last_key, last_members, parts = merged[-1]
                union = tuple(sorted(set(last_key) | set(key)))
                rows = len(last_members) + len(members) + 1
                cost = rows * reference.row_bytes(self._blocks, union)
                apart = (len(last_members) + 1) * reference.row_bytes(self._blocks, last_key) + (
                    len(members) + 1
                ) * reference.row_bytes(self._blocks, key)
                if (
                    rows <= tb.MAX_BATCH
                    and cost <= apart + tb.CALL_BYTES
                    and cost <= tb.BATCH_BYTES
                    and not self._loop_is_cheaper(union)
                    and self._substitutable(union)
                ):
                    merged[-1] = (union, last_members + members, [*parts, (key, members)])
                    continue
            merged.append((key, list(members), [(key, members)]))
        return merged

    def _run_group(
        self,
        key: tuple[int, ...],
        members: list[int],
        points: Sequence[Point],
        track: bool,
        reference: _Reference,
        results: list[Evaluation | None],
        remember: bool,
    ) -> bool:
        """Evaluate one group in chunks; False when a chunk could not be batched."""
        size = self._chunk_size(key, reference)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            evaluations = self._run_batch(
                key, [points[i] for i in chunk], track, reference, remember
            )
            if evaluations is None:
                return False
            for i, evaluation in zip(chunk, evaluations, strict=True):
                results[i] = evaluation
        return True

    def _gave_up(self) -> bool:
        """Batching is off for the check once groups keep failing and none has succeeded."""
        return self._batch_failures >= tb.GIVE_UP and not self._batch_worked

    def _reference_for(self, track: bool) -> _Reference:
        """f at the checked point, unbatched (from `gradient`, or evaluated once here)."""
        reference = self._reference
        if reference is None or (track and reference.layout is None):
            evaluation = self._evaluate_once(track, measure=True)
            mode = self._last_mode
            assert mode is not None
            layout = list(mode.layout) if track else None
            reference = _Reference(evaluation, layout, mode.bytes_out, mode.bytes_after())
            self._reference = reference
        return reference

    def _chunk_size(self, key: tuple[int, ...], reference: _Reference) -> int:
        """Points per vmapped call: the memory budget over the estimated bytes per row."""
        per_row = reference.row_bytes(self._blocks, key)
        rows = min(tb.MAX_BATCH, tb.BATCH_BYTES // max(per_row, 1))
        return max(1, rows - 1)  # one row is the checked point itself

    def _run_batch(
        self,
        key: tuple[int, ...],
        points: Sequence[Point],
        track: bool,
        reference: _Reference,
        remember: bool = True,
    ) -> list[Evaluation] | None:
        """Evaluate `points` (all perturbing the blocks `key`) in one vmapped call of f.

        The batch ends with rows at the checked point itself: their loss, terms and
        (tracked) signature must reproduce `reference`, the unbatched evaluation there,
        or the batch is discarded (dropout drawing other masks under vmap, decisions the
        split cannot attribute to elements). They come last: a draw that differed per
        row would still give the first row the unbatched values. Returns None where the
        batch cannot be used; nothing of the user's is left changed either way. With
        `remember`, a failure is remembered for the rest of the check (`_cannot_batch`).
        """
        fail = self._cannot_batch if remember else lambda *reason: None
        sizes = reference.sizes if track else frozenset()
        p = len(points)
        n = p + 1
        while n in sizes:  # the batch size must be unambiguous: pad with checked points
            n += 1
        bases = [(block.base, block.shape) for block in self._blocks]
        inputs = tb.stacks(bases, key, points, n)
        guard = frozenset(self._storage(self._blocks[b].tensor) for b in key) - {0}
        fast = self._fast(track)
        recorder = SignatureRecorder() if track and not fast else None
        mode: Any
        if not fast:
            mode = self._mode(recorder, False, guard=guard, batched=True, stand_ins=inputs)
        elif all(slot.kind == "arg" for b in key for slot in self._slots[b]):
            # f reads these blocks only through its arguments (the check's own copies,
            # which nothing else holds): nothing to guard, no dispatch mode at all
            mode = contextlib.nullcontext()
        else:  # a closure may hold the user's tensor: keep only the guard (see `Leak`)
            mode = tracker(None, guard=guard)
        call = self._batched_call(key)
        versions = self._versions()
        self._reseed()
        self._reset_buffers()
        try:
            buffers = self._batched_buffers(n)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=tb.PERFORMANCE_WARNING)
                with torch.no_grad(), self._promotion(), mode:
                    out = torch.func.vmap(call, randomness="same")(buffers, *inputs)
            values = tb.batch_losses(out, n, self._kind, self._weights)
        except Exception as err:  # vmap's refusals, and anything f raises: the loop decides
            first_line = str(err).splitlines()[0][:200] if str(err) else ""
            fail(key, track, f"{type(err).__name__}: {first_line}")
            return None
        finally:
            self._repair(versions)
        if values is None:
            fail(key, track, "its output under vmap is not a batch of losses")
            return None
        totals, terms = values
        recorders = mode.finish_batched(n, reference.layout or []) if recorder is not None else None
        if recorder is not None and recorders is None:
            fail(key, True, "its decisions could not be split per point")
            return None
        center = reference.evaluation
        for r in range(p, n):
            same = (
                set(terms) == set(center.terms)
                and tb.close(totals[r], center.loss)
                and all(tb.close(terms[k][r], v) for k, v in center.terms.items())
            )
            if recorders is not None:
                same = same and recorders[r].digest() == center.signature
            if not same:
                fail(key, track, "the batch did not reproduce f at the checked point")
                return None
        self._batch_worked = True
        self.batched_points += len(points)
        if fast:
            self.fast_points += len(points)
            signature = EMPTY_SIGNATURE if track else None
            return [
                Evaluation(totals[r], {k: v[r] for k, v in terms.items()}, signature, 0)
                for r in range(p)
            ]
        return [
            Evaluation(
                totals[r],
                {k: v[r] for k, v in terms.items()},
                recorders[r].digest() if recorders is not None else None,
                recorders[r].count if recorders is not None else 0,
            )
            for r in range(p)
        ]

    def _batched_call(self, key: tuple[int, ...]) -> Callable[..., Any]:
        """f as a function of the perturbed blocks' values (one argument per block in `key`).

        Each value is put where f reads the block: in the argument tree, as a module
        parameter through ``torch.func.functional_call``, or as the entry of the user's
        dict or list in `params` (put back on the way out, whatever happens).
        """
        slots = [self._slots[b] for b in key]
        # the arguments without their requires_grad flag (detached here, outside vmap and
        # the dispatch mode): a batched weight meets an input that requires grad in a
        # slower matmul under vmap (linear's batching rule), although no graph is built
        plain = tuple(map_leaves(self._args, "args", lambda name, leaf: _detached(leaf)))

        def call(buffers: dict[str, torch.Tensor], *values: torch.Tensor) -> Any:
            named: dict[str, torch.Tensor] = {}
            parameters: dict[str, torch.Tensor] = dict(buffers)
            items: list[tuple[Any, Any, torch.Tensor]] = []
            for places, value in zip(slots, values, strict=True):
                for slot in places:
                    if slot.kind == "arg":
                        named[slot.where] = value
                    elif slot.kind == "module":
                        parameters[slot.where] = value
                    else:
                        items.append((slot.where, slot.key, value))
            args = plain
            if named:
                args = tuple(map_leaves(plain, "args", lambda name, leaf: named.get(name, leaf)))
            saved: list[tuple[Any, Any, Any]] = []
            try:
                for container, k, value in items:
                    saved.append((container, k, container[k]))
                    container[k] = value
                if parameters:
                    assert self._modules is not None
                    return torch.func.functional_call(self._modules, parameters, args)
                return self.f(*args)
            finally:
                for container, k, old in reversed(saved):
                    container[k] = old

        return call

    def _batched_buffers(self, n: int) -> dict[str, torch.Tensor]:
        """One copy per row of the floating buffers of modules in training mode.

        A train-mode forward writes its batch statistics into its buffers in place
        (BatchNorm's running mean and variance), which vmap refuses for an unbatched
        buffer; given a copy per row, each row writes its own. The values f computes do
        not change, and every evaluation starts from the saved buffers anyway.
        """
        if self._modules is None:
            return {}
        training = {id(m) for m in self._modules.modules() if m.training and m is not self._modules}
        if not training:
            return {}
        out: dict[str, torch.Tensor] = {}
        for prefix, module in self._modules.named_modules(remove_duplicate=False):
            if id(module) not in training:
                continue
            for name, buf in module._buffers.items():
                if buf is not None and buf.is_floating_point():
                    key = f"{prefix}.{name}" if prefix else name
                    out[key] = buf.detach().expand(n, *buf.shape).clone()
        return out

    @staticmethod
    def _storage(t: torch.Tensor) -> int:
        try:
            return t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError, TypeError):
            return 0

    def _cannot_batch(self, key: tuple[int, ...], track: bool, reason: str) -> None:
        """Remember that these points go to the loop (and why, in `batch_fallbacks`).

        Not a warning: the loop gives the same results, only slower, and the commonest
        cause is a custom ``autograd.Function`` written without vmap support, which is
        what a gradient check is for.
        """
        self._unbatchable.add((key, track))
        if not track:
            self._unbatchable.add((key, True))  # tracking cannot make it batchable
        self._batch_failures += 1
        names = ", ".join(self._blocks[b].name for b in key)
        self.batch_fallbacks.append(f"{names}: {reason}")
