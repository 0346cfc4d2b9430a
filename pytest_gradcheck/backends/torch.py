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
  before every evaluation, so f(x+h) and f(x-h) see the same state.
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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._kinks import SignatureRecorder
from ._base import (
    BlockSpec,
    Evaluation,
    Gradient,
    Point,
    Settings,
    check_finite_loss,
    check_gradient_array,
    projection_weights,
    reduce_output,
    select_blocks,
)
from ._rng import GlobalRng
from ._torch_tracker import WinnerTracker
from ._tree import iter_leaves, map_leaves

_F64 = torch.float64


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------------
# devices and global numerics flags


def _resolve_device(setting: Any) -> torch.device | None:
    """The device the check is moved to (None: every tensor stays where it is)."""
    if setting is None:
        return None
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


def _try(getter: Callable[[], Any]) -> tuple[bool, Any]:
    """Read a global flag that torch refuses to read in some states (mixed TF32 APIs)."""
    try:
        return True, getter()
    except (RuntimeError, AttributeError):
        return False, None


class _Numerics:
    """TF32, reduced-precision reductions and determinism: off/on for the check.

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
        self._strings: dict[tuple[str, str], str] = {}
        if hasattr(C, "_get_fp32_precision_getter"):
            for key in self._PRECISION_KEYS:
                ok, value = _try(lambda key=key: C._get_fp32_precision_getter(*key))
                if ok:
                    self._strings[key] = value
        self._matmul = _try(C._get_float32_matmul_precision)
        self._cudnn_tf32 = _try(C._get_cudnn_allow_tf32)
        self._reductions: dict[str, Any] = {}
        for kind in ("fp16", "bf16"):
            ok, value = _try(getattr(C, f"_get_cublas_allow_{kind}_reduced_precision_reduction"))
            if ok:
                self._reductions[kind] = value
        self._fp16_accumulation = _try(
            getattr(C, "_get_cublas_allow_fp16_accumulation", lambda: None)
        )
        self._deterministic = torch.are_deterministic_algorithms_enabled()
        self._warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self._cudnn_deterministic = torch.backends.cudnn.deterministic
        self._cudnn_benchmark = torch.backends.cudnn.benchmark

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
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False

    def restore(self) -> None:
        C = torch._C
        torch.backends.cudnn.benchmark = self._cudnn_benchmark
        torch.backends.cudnn.deterministic = self._cudnn_deterministic
        torch.use_deterministic_algorithms(self._deterministic, warn_only=self._warn_only)
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

    def flat(self) -> torch.Tensor:
        return self.tensor.detach().view(-1)


_MISMATCH = re.compile(
    r"dtype|scalar type|same device|be on the same|device type|Expected all tensors", re.I
)


def _reached(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[bool]:
    """Whether each input is in the autograd graph of `loss` (a path exists to it)."""
    seen: set[Any] = set()
    leaves: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it feeds
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return [id(t) in leaves if t.grad_fn is None else t.grad_fn in seen for t in inputs]


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
        self.f = f
        self.warnings: list[str] = []
        self._seed = settings.seed
        self._closed = False
        self._swaps: list[_Swap] = []
        self._buffers: list[_Buffer] = []
        self._training: list[tuple[torch.nn.Module, bool]] = []
        self._blocks: list[_Block] = []
        #: (name, tensor, flat values) of every float64 tensor the check gave f: put back
        #: if f writes into it (an in-place op under no_grad leaves no other trace)
        self._guards: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self._written_seen: set[str] = set()
        self._args: tuple = ()
        self._weights: torch.Tensor | None = None
        self._kind: str | None = None
        self._eval_with_grad = False
        self._lowered_seen: set[str] = set()
        self._numerics: _Numerics | None = None
        self._cuda_rng: list[torch.Tensor] | None = None

        self._rng = GlobalRng(settings.seed)  # validates the seed; saves random and numpy
        self._device = _resolve_device(settings.device)
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.init()
        self._cpu_rng = torch.get_rng_state()
        if torch.cuda.is_initialized():
            self._cuda_rng = torch.cuda.get_rng_state_all()
        try:
            self._numerics = _Numerics()
            self._numerics.apply()
            self._prepare(tuple(args), params, settings)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ preparation

    def _place(self, t: torch.Tensor) -> torch.device:
        return self._device if self._device is not None else t.device

    def _float64_copy(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous float64 copy of `t` on the check's device (flat indices are C order)."""
        out = torch.empty(tuple(t.shape), dtype=_F64, device=self._place(t))
        with torch.no_grad():
            out.copy_(t.detach())
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
            leaves.append((prefix + name, p))
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
        chosen = set(select_blocks(floating, others, settings.wrt))

        lowered = [
            f"{name} ({_dtype_name(leaf.dtype)})"
            for name, leaf in arg_leaves + param_leaves
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dtype != _F64
        ]
        if lowered:
            self.warnings.append(
                "gradcheck: checked in float64; these inputs were in lower precision and were "
                f"cast for the check: {', '.join(lowered[:6])}"
                + (f" and {len(lowered) - 6} more" if len(lowered) > 6 else "")
            )

        blocks: dict[str, _Block] = {}

        def take_arg(name: str, leaf: Any) -> Any:
            if not isinstance(leaf, torch.Tensor):
                return leaf
            if not leaf.is_floating_point():
                moved = self._device is not None and leaf.device != self._device
                return leaf.to(self._device) if moved else leaf
            t = self._float64_copy(leaf)
            t.requires_grad_(name in chosen)
            if name in chosen:
                blocks[name] = _Block(name, tuple(leaf.shape), _dtype_name(leaf.dtype), t, None)
            else:
                self._guards.append((name, t, t.detach().view(-1).clone()))
            return t

        self._args = tuple(map_leaves(args, "args", take_arg))

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
                    self._swap(leaf, self._float64_copy(leaf), requires_grad)
                    if not requires_grad:
                        self._guards.append((name, leaf, leaf.detach().view(-1).clone()))
                elif self._device is not None and leaf.device != self._device:
                    self._swap(leaf, leaf.detach().to(self._device), False)
            if name in chosen:
                blocks[name] = _Block(name, tuple(leaf.shape), dtype, leaf, None)

        for module in self._modules_seen:
            self._take_module_state(module)

        for name in floating:
            if name in chosen:
                block = blocks[name]
                block.base = block.flat().clone()
                self._blocks.append(block)
                self._guards.append((name, block.tensor, block.base))

    def _take_module_state(self, module: torch.nn.Module) -> None:
        """Save train/eval flags; give every buffer float64 (or copied) storage."""
        swapped = {id(s.tensor) for s in self._swaps}
        self._training.extend((m, m.training) for m in module.modules())
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
        """The checked blocks in a stable order: args first, then params."""
        return [
            BlockSpec(b.name, b.shape, b.dtype, b.base.detach().cpu().numpy().copy())
            for b in self._blocks
        ]

    def gradient(self, track: bool) -> Gradient:
        """The analytic gradient at the base point, from one call of f with the seed reset."""
        recorder = SignatureRecorder() if track else None
        mode = self._mode(recorder, watch_precision=True)
        versions = self._versions()
        try:
            return self._gradient(mode, recorder)
        finally:
            self._repair(versions)  # after the backward passes, which may need f's writes

    def _gradient(self, mode: WinnerTracker, recorder: SignatureRecorder | None) -> Gradient:
        out = self._forward(True, mode)
        mode.finish()
        self._note_precision(mode)
        total, terms = self._reduce(out)
        loss = float(total.detach().item())
        check_finite_loss(loss, "the loss at the checked point")
        term_values = {}
        for name, value in terms.items():
            term_values[name] = float(value.detach().item())
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
                "it (.item(), .detach(), .numpy(), torch.no_grad) or does not use the blocks; "
                "return the loss as a tensor computed from the inputs"
            )
        watch = self._mode(None, watch_precision=True)
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
        total_grads = tuple(
            check_gradient_array(b.name, g.detach().cpu().numpy(), b.shape, None)
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
                else check_gradient_array(b.name, g.detach().cpu().numpy(), b.shape, name)
                for b, g in zip(self._blocks, gs, strict=True)
            )
        self._note_precision(watch)
        return Gradient(center, total_grads, term_grads)

    def evaluate(self, points: Sequence[Point], track: bool) -> list[Evaluation]:
        """The loss at each point: deltas written in place, RNGs reset, f called, deltas undone."""
        results = []
        for point in points:
            touched = self._apply(point)
            try:
                results.append(self._evaluate_once(track))
            finally:
                self._undo(touched)
        return results

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

    def close(self) -> None:
        """Put back every swapped storage, buffer, flag and RNG state. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []

        def attempt(fn: Callable[[], Any]) -> None:
            try:
                fn()
            except BaseException as err:  # keep restoring the rest
                errors.append(err)

        for buffer in self._buffers:
            attempt(lambda b=buffer: b.module._buffers.__setitem__(b.name, b.obj))
        for swap in reversed(self._swaps):
            attempt(swap.restore)
        for module, flag in self._training:
            module.training = flag
        if self._numerics is not None:
            attempt(self._numerics.restore)
        attempt(lambda: torch.set_rng_state(self._cpu_rng))
        if self._cuda_rng is not None:
            attempt(lambda: torch.cuda.set_rng_state_all(self._cuda_rng))
        attempt(self._rng.restore)
        self._blocks, self._buffers, self._swaps, self._args = [], [], [], ()
        self._guards = []
        self._weights = None
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ internals

    def _mode(self, recorder: SignatureRecorder | None, watch_precision: bool) -> WinnerTracker:
        """f always runs under the dispatch mode: it promotes what f reads to float64 (and
        to the check's device), and records decisions when `recorder` is given."""
        return WinnerTracker(recorder, watch_precision, promote=True, device=self._device)

    def _reseed(self) -> None:
        self._rng.reseed()
        if torch.cuda.is_initialized():
            torch.manual_seed(self._seed)  # the CPU and every CUDA generator
        else:
            # torch.manual_seed would queue a seed for CUDA's lazy initialisation,
            # changing the user's CUDA RNG after the check; seed only the CPU generator
            torch.default_generator.manual_seed(self._seed)

    def _versions(self) -> list[int]:
        return [t._version for _, t, _ in self._guards]

    def _repair(self, versions: list[int]) -> None:
        """Put back the values of any tensor f wrote into in place (seen by its version)."""
        with torch.no_grad():
            for (name, t, values), before in zip(self._guards, versions, strict=True):
                if t._version != before:
                    t.detach().view(-1).copy_(values)
                    if name not in self._written_seen:
                        self._written_seen.add(name)
                        self.warnings.append(
                            f"gradcheck: f writes into {name!r} in place; the check put its "
                            "values back after every call of f, so each evaluation starts "
                            "from the same point"
                        )

    def _reset_buffers(self) -> None:
        with torch.no_grad():
            for buffer in self._buffers:
                if buffer.module._buffers.get(buffer.name) is not buffer.obj:
                    buffer.module._buffers[buffer.name] = buffer.obj
                buffer.work.copy_(buffer.start)

    def _forward(self, grad_enabled: bool, mode: WinnerTracker) -> Any:
        """One call of f from the seeded RNGs and the starting buffers."""
        self._reseed()
        self._reset_buffers()
        try:
            with torch.set_grad_enabled(grad_enabled), mode:
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
        device = self._blocks[0].base.device
        kind = reduce_output(out)
        if self._kind is None:
            self._kind = kind
        elif kind != self._kind:
            raise TypeError(
                f"gradcheck: f returned a {kind} at one point and a {self._kind} at another; "
                "it must return the same kind of loss everywhere"
            )
        if kind == "scalar":
            return self._scalar(out, "the loss", device), {}
        if kind == "terms":
            if not out:
                raise ValueError(
                    "gradcheck: f returned an empty mapping; return at least one named term"
                )
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
        self, loss: torch.Tensor, inputs: list[torch.Tensor], watch: WinnerTracker, term: Any
    ) -> Sequence[torch.Tensor | None]:
        try:
            with watch:
                return torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        except RuntimeError as err:
            culprits = self._failing_blocks(loss, inputs, str(err))
            where = f" of term {term!r}" if term is not None else ""
            named = f" for block {_names(culprits)}" if culprits else ""
            raise ValueError(
                f"gradcheck: the backward pass{where} failed{named}: "
                f"{str(err).splitlines()[0]}\nA custom torch.autograd.Function's backward "
                "must return one gradient per forward input, shaped like that input (None "
                "where no gradient is needed). Fix the backward, or leave the block out "
                "with wrt=."
            ) from err

    def _failing_blocks(self, loss: torch.Tensor, inputs: list[torch.Tensor], msg: str) -> list:
        """The blocks whose own backward fails, narrowed by the shape the error expects."""
        failing = []
        for block, t in zip(self._blocks, inputs, strict=True):
            try:
                torch.autograd.grad(loss, [t], retain_graph=True, allow_unused=True)
            except RuntimeError:
                failing.append(block)
        match = re.search(r"expected shape compatible with \[([0-9, ]*)\]", msg)
        if match:
            expected = tuple(int(s) for s in match.group(1).replace(" ", "").split(",") if s)
            narrowed = [b for b in failing if b.shape == expected]
            if narrowed:
                failing = narrowed
        return [b.name for b in failing]

    def _note_precision(self, mode: WinnerTracker) -> None:
        new = {op: dt for op, dt in mode.lowered.items() if op not in self._lowered_seen}
        if not new:
            return
        self._lowered_seen.update(new)
        ops = ", ".join(f"aten.{op} -> {dt}" for op, dt in new.items())
        self.warnings.append(
            f"gradcheck: f computes in lower precision inside ({ops}): those operations turn "
            "float64 values into lower precision, so part of the check does not run in "
            "float64 and a correct gradient can show large relative errors; remove the cast "
            "(.float(), .half(), dtype=) inside f for the check"
        )

    def _apply(self, point: Point) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        touched = []
        with torch.no_grad():
            for index, flat_indices, values in point.deltas:
                block = self._blocks[index]
                device = block.base.device
                idx = torch.as_tensor(np.asarray(flat_indices, dtype=np.int64), device=device)
                val = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)
                flat = block.flat()
                touched.append((flat, idx, block.base))
                flat.index_put_((idx,), val, accumulate=True)
        return touched

    def _undo(self, touched: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        with torch.no_grad():
            for flat, idx, base in reversed(touched):
                flat.index_put_((idx,), base[idx])  # write back the saved base values

    def _evaluate_once(self, track: bool) -> Evaluation:
        def attempt(grad_enabled: bool) -> Evaluation:
            recorder = SignatureRecorder() if track else None
            mode = self._mode(recorder, watch_precision=False)
            versions = self._versions()
            try:
                out = self._forward(grad_enabled, mode)
            finally:
                self._repair(versions)
            mode.finish()
            total, terms = self._reduce(out)
            return Evaluation(
                float(total.detach().item()),
                {k: float(v.detach().item()) for k, v in terms.items()},
                recorder.digest() if recorder is not None else None,
                recorder.count if recorder is not None else 0,
            )

        if self._eval_with_grad:
            return attempt(True)
        try:
            # no graph is needed for a loss value; f computes the same values either way
            return attempt(False)
        except RuntimeError:
            # f needs autograd itself (an inner torch.autograd.grad, a gradient penalty)
            result = attempt(True)
            self._eval_with_grad = True
            return result
