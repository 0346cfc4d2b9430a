"""Batched evaluation for the PyTorch backend: the pieces `TorchBackend.evaluate` uses.

A pass's points are grouped by the set of blocks they perturb, and each group is
evaluated in chunks by one call of ``torch.func.vmap(call, randomness="same")``. The
vmapped `call` receives one batched tensor per perturbed block (the base values
repeated, the deltas of each point added at its flat indices) and runs f with those
tensors substituted where f reads the block: in the argument tree (arguments), through
``torch.func.functional_call`` on a module holding the user's modules (module
parameters, tied ones included), or as the entry of the user's dict or list (plain
tensors in ``params``, put back afterwards). Blocks no point of the group perturbs are
not substituted: f reads them unbatched, so the work upstream of the perturbed block
is done once per chunk instead of once per point. See `torch.py` for the whole design.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._base import CPU_LOOP_BYTES, Point, index_array, whole
from ._tree import child_name

#: most rows (points and reference rows) in one vmapped call
MAX_BATCH = 256
#: memory one vmapped call may take for its batched blocks and f's intermediate values,
#: estimated per row from the blocks' sizes and the bytes f's ops returned at the
#: checked point
BATCH_BYTES = 256 * 2**20
#: the fixed cost of one vmapped call, in the bytes of batched values that cost as much
#: (about a millisecond on a CPU core): groups are merged into one batch where that adds
#: less than this (small models: fewer calls; larger ones keep a batch per block, so the
#: work upstream of the perturbed block is shared by the batch)
CALL_BYTES = 2 * 2**20
#: on a CPU, a group whose perturbed blocks hold more than this many bytes per row is
#: left to the loop (see `_base.CPU_LOOP_BYTES`)
LOOP_ROW_BYTES = CPU_LOOP_BYTES
#: on the fast path (no dispatch mode), batches of at most this many points are left
#: to the loop: measured on one CPU thread, f called once per point costs less there
FAST_LOOP_POINTS = 8
#: groups that fail to batch, with none succeeding, before batching is off for a check
GIVE_UP = 2
#: the warning vmap gives for an op without a batching rule (it then loops internally)
PERFORMANCE_WARNING = r"There is a performance drop"


@dataclass(frozen=True)
class Slot:
    """One place where f reads a block: ``kind`` is "arg", "module" or "item".

    "arg": `where` is the block's name in the argument tree; "module": the key of the
    parameter in `Modules`; "item": `where` is the user's dict or list and `key` the
    entry holding the tensor.
    """

    kind: str
    where: Any
    key: Any = None


class Modules(torch.nn.Module):
    """A module holding the user's modules, whose forward calls f (for functional_call).

    The user's modules become its children ``"0"``, ``"1"``...; registering them here
    changes nothing in them. f is kept outside the module's registries, so a module
    passed as f is not registered a second time.
    """

    def __init__(self, f: Any, modules: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        for i, module in enumerate(modules):
            self.add_module(str(i), module)
        object.__setattr__(self, "_call", f)

    def forward(self, *args: Any) -> Any:
        return self._call(*args)


def module_keys(modules: Sequence[torch.nn.Module]) -> dict[int, str]:
    """``id(parameter) -> key in Modules`` for every parameter of the user's modules."""
    keys: dict[int, str] = {}
    for i, module in enumerate(modules):
        for name, p in module.named_parameters(remove_duplicate=False):
            keys.setdefault(id(p), f"{i}.{name}")
    return keys


def item_slots(params: Any) -> Iterator[tuple[str, torch.Tensor, Slot | None]]:
    """``(name, tensor, slot)`` for every tensor held by a dict or list in `params`.

    Names follow the backend's naming of `params` entries; the slot is None where the
    container cannot be written (a tuple, a read-only mapping).
    """
    if params is None or isinstance(params, (torch.nn.Module, torch.Tensor)):
        return
    if isinstance(params, Mapping):
        for key, value in params.items():
            yield from _walk(value, str(key), params, key)
    elif isinstance(params, (list, tuple)):
        for i, value in enumerate(params):
            yield from _walk(value, child_name("params", i), params, i)


def _walk(
    obj: Any, name: str, container: Any, key: Any
) -> Iterator[tuple[str, torch.Tensor, Slot | None]]:
    if isinstance(obj, torch.nn.Module):
        return
    if isinstance(obj, torch.Tensor):
        writable = isinstance(container, (dict, list))
        yield name, obj, Slot("item", container, key) if writable else None
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, child_name(name, k), obj, k)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, child_name(name, i), obj, i)


def stacks(
    blocks: Sequence[tuple[torch.Tensor, tuple[int, ...]]],
    key: Sequence[int],
    points: Sequence[Point],
    n: int,
) -> list[torch.Tensor]:
    """The batched values of the blocks `key`: a row per point, then base values up to `n`.

    `blocks[b]` is block b's ``(flat base values, shape)``. Each row is the base point
    plus the point's deltas for the block, added at their flat indices exactly as the
    unbatched evaluation adds them (one float64 addition): a delta over the whole block
    in order (a direction) as one dense addition written straight into its row, the
    others (coordinates) gathered into one scatter-add per block. The points are read
    once for all blocks: a pass holds many points and each perturbs one block or two.
    A block on the CPU is built in NumPy and shared with torch (a few microseconds per
    operation instead of a torch dispatch each: a coordinate pass of a small model
    spent more building its rows than evaluating them).
    """
    where = {b: j for j, b in enumerate(key)}
    sizes = [blocks[b][0].numel() for b in key]
    dense: list[list[tuple[int, Any]]] = [[] for _ in key]
    rows: list[list[int]] = [[] for _ in key]  # per scattered delta: its row,
    cols: list[list[Any]] = [[] for _ in key]  # its flat indices
    vals: list[list[Any]] = [[] for _ in key]  # and its values
    for r, point in enumerate(points):
        for index, flat_indices, values in point.deltas:
            j = where.get(index)
            if j is None:
                continue
            if (
                type(flat_indices) is range
                and whole(flat_indices, sizes[j])
                and (not dense[j] or dense[j][-1][0] != r)
            ):
                dense[j].append((r, values))
                continue
            rows[j].append(r)
            cols[j].append(flat_indices)
            vals[j].append(values)
    out = []
    for j, b in enumerate(key):
        base, shape = blocks[b]
        scattered = _scattered(rows[j], cols[j], vals[j])
        out.append(_stack_rows(base, shape, dense[j], scattered, n, _on_host(base)))
    return out


def _scattered(
    rows: list[int], cols: list[Any], vals: list[Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(rows, flat indices, values)`` of a block's scattered deltas, one entry each.

    The engine's own form (1-d int64 indices, float64 values of the same length) is
    concatenated as it is; anything else (a range, a scalar value to broadcast) is
    converted delta by delta.
    """
    if not rows:
        return None
    try:
        c = np.concatenate(cols)
        v = np.concatenate(vals)
        counts = [len(x) for x in cols]
        ok = (
            c.ndim == 1
            and v.shape == c.shape
            and c.dtype.kind in "iu"
            and v.dtype == np.float64
            and counts == [len(x) for x in vals]
        )
    except (TypeError, ValueError):  # a 0-d value, ragged shapes
        ok = False
    if not ok:
        cs, vs, counts = [], [], []
        for flat_indices, values in zip(cols, vals, strict=True):
            idx = index_array(flat_indices)
            cs.append(idx)
            vs.append(delta_values(values, idx.size))
            counts.append(idx.size)
        c, v = np.concatenate(cs), np.concatenate(vs)
    row_index = np.repeat(np.asarray(rows, dtype=np.int64), counts)
    return row_index, c.astype(np.int64, copy=False), v


def delta_values(values: Any, size: int) -> np.ndarray:
    """A delta's values as `size` float64 entries (one value is broadcast, read-only)."""
    val = np.asarray(values, dtype=np.float64).reshape(-1)
    return val if val.size == size else np.broadcast_to(val, (size,))


def _on_host(t: torch.Tensor) -> bool:
    """Whether a block's rows are built in NumPy (its base lives in host memory)."""
    return t.device.type == "cpu"


def _stack_rows(
    base: torch.Tensor,
    shape: tuple[int, ...],
    dense: list[tuple[int, Any]],
    scattered: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    n: int,
    host: bool,
) -> torch.Tensor:
    """One block's `n` rows: the base values, each dense delta added into its own row,
    the scattered ones added in place (duplicates add up). `host`: in NumPy, shared
    with torch; else with torch operations, on the block's device."""
    m = base.numel()
    if host:
        b = base.detach().numpy()
        rows = np.empty((n, m), dtype=np.float64)
        rows[:] = b
        for r, values in dense:
            np.add(b, delta_values(values, m), out=rows[r])
        if scattered is not None:
            np.add.at(rows, scattered[:2], scattered[2])
        return torch.from_numpy(rows).view(n, *shape)
    device = base.device
    out = base.expand(n, m).contiguous()
    for r, values in dense:
        torch.add(base, torch.tensor(delta_values(values, m), device=device), out=out[r])
    if scattered is not None:
        at_rows, cols, vals = (torch.as_tensor(a, device=device) for a in scattered)
        out.index_put_((at_rows, cols), vals, accumulate=True)
    return out.view(n, *shape)


def batch_losses(
    out: Any, n: int, kind: str | None, weights: torch.Tensor | None
) -> tuple[list[float], dict[str, list[float]]] | None:
    """The total and the named terms of each row of a vmapped f's output.

    `kind` is what f returned unbatched ("scalar", "terms", "array"), `weights` the
    projection of an array output. None when the output is not a batch of that kind
    (the caller then evaluates point by point, where the unbatched checks report it).
    """

    def column(value: Any) -> torch.Tensor | None:
        if not isinstance(value, torch.Tensor) or value.is_complex():
            return None
        if not value.is_floating_point() or tuple(value.shape) != (n,):
            return None
        return value.detach()

    terms: dict[str, torch.Tensor] = {}
    if isinstance(out, Mapping):
        if kind != "terms" or not out:
            return None
        for key, value in out.items():
            col = column(value)
            if col is None:
                return None
            terms[str(key)] = col
        values = list(terms.values())
        total = values[0]
        for value in values[1:]:
            total = total + value
    elif isinstance(out, torch.Tensor) and out.dim() == 1:
        if kind != "scalar":
            return None
        total = column(out)
        if total is None:
            return None
    elif isinstance(out, torch.Tensor):
        if kind != "array" or weights is None or tuple(weights.shape) != tuple(out.shape[1:]):
            return None
        if not out.is_floating_point() or out.is_complex():
            return None
        w = weights if weights.device == out.device else weights.to(out.device)
        total = (out.detach() * w).reshape(n, -1).sum(1)
    else:
        return None
    return total.cpu().tolist(), {k: v.cpu().tolist() for k, v in terms.items()}


def close(a: float, b: float) -> bool:
    """Whether a batched value reproduces the unbatched one (up to float64 round-off)."""
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
