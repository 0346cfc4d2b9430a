"""State outside the check's reach that f writes into in place: found, saved, put back.

The check promises that nothing of the user's changes, but f may write into tensors the
check never took: a train-mode BatchNorm updates its running statistics and
``num_batches_tracked`` whether its module came as ``params=``, as a dict or list of its
parameters, or only through f's closure; the old ``spectral_norm`` updates its power
iteration's vectors; a hand-written cache calls ``buf.add_(...)``. The tensors the check
did take (the blocks, its copies of the arguments, the buffers of a module passed as
``params``) are put back by the backend itself; this module covers every other one.

How: the dispatch mode of a pass that measures f (the checked point's pass, which runs
before any evaluation without the mode) hands each op's written arguments to a
`StateWatch`. A written tensor whose storage no op of this call created existed before f
was called: the bytes of its whole storage are saved once, before the first write, and
the backend (`SavedState`) writes them back after every later call of f that changed
them, and at the end of the check. The storage stays the user's (values are copied into
it; nothing is swapped), so views, tied buffers and an optimizer holding the tensor all
see the original values again.

Why after every call and not only at the end: the buffers of a module given as
``params`` are reset before every evaluation, so that f(x+h) and f(x-h) start from the
same state; an f that reads what it updated (a cumulative average, a cache, spectral
norm's vectors) would otherwise be evaluated at a state that drifts with every call,
and the difference of two calls would measure the drift. Resetting makes the other
kinds of ``params`` behave like a module, at the cost of a copy of each such tensor per
evaluation that wrote it (a few hundred bytes for a BatchNorm layer).

Only a pass with the watch finds new tensors; every other evaluation only puts back
the known ones. An f that writes into a new tensor only away from the checked point (a
Python branch on values) is not covered: the mode sees ops, not Python branches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


def address(t: torch.Tensor) -> int:
    """The address of a tensor's storage (0 where it has none that can be read)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return 0


def version(t: torch.Tensor) -> int | None:
    """The tensor's version counter (None where it has none: an inference tensor)."""
    try:
        return t._version
    except RuntimeError:
        return None


@dataclass
class Written:
    """A storage f writes into that existed before f was called, and its bytes before."""

    tensor: torch.Tensor  # the tensor f wrote through (its version counter: later writes)
    whole: torch.Tensor  # a uint8 tensor over the whole storage
    saved: torch.Tensor  # the storage's bytes before f's first write
    #: whether every write seen bumps `tensor`'s version counter (an op whose schema
    #: does not mark its write, BatchNorm's running statistics, does not): else the
    #: storage is put back after every call of f
    versioned: bool = True
    #: what to call it in a warning (found when first needed)
    name: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, t: torch.Tensor, versioned: bool) -> Written:
        """Save the storage of `t` (called inside the dispatch mode, before the write)."""
        whole = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
        return cls(t, whole, whole.clone(), versioned)

    def version(self) -> int | None:
        return version(self.tensor) if self.versioned else None

    def restore(self) -> None:
        self.whole.copy_(self.saved)


class StateWatch:
    """What one call of f writes into storages it did not create (see the module doc).

    The dispatch mode calls `before` with an op's written arguments ahead of running it
    (the storages it reads, too) and `fresh` with the new storages an op returned. Storages in
    `skip` are the backend's own to put back (blocks, argument copies); those in
    `known` are saved already (or are a params module's buffers): both are watched for
    reads after a write, neither is saved here.
    """

    def __init__(self, skip: frozenset[int], known: frozenset[int]) -> None:
        self.skip = skip
        self.known = known
        #: storages created during this call (op outputs that are not an input's)
        self.born: set[int] = set()
        #: storages saved during this call, in order of their first write
        self.found: dict[int, Written] = {}
        #: pre-existing storages written, and whether a write depended on the checked
        #: blocks (True also where the mode does not follow dependence)
        self.written: dict[int, bool] = {}
        #: written storages that a later op of the call read: f uses what it updated
        self.fed: set[int] = set()

    def before(
        self,
        targets: Sequence[torch.Tensor],
        inputs: Sequence[torch.Tensor],
        dependent: bool | None,
        versioned: bool,
    ) -> None:
        """An op is about to write `targets` (and read `inputs`); `dependent`: whether it
        reads the checked blocks (None: not followed)."""
        written = self.written
        if written:
            ids = {id(t) for t in targets}
            for t in inputs:
                if id(t) not in ids:
                    at = address(t)
                    if written.get(at):
                        self.fed.add(at)
        for t in targets:
            at = address(t)
            if not at or at in self.born or at in self.skip:
                continue
            if at not in self.known:
                entry = self.found.get(at)
                if entry is None:
                    try:
                        self.found[at] = Written.of(t, versioned)
                    except (RuntimeError, NotImplementedError, TypeError):
                        continue  # no plain storage to save (a subclass, a meta tensor)
                elif not versioned:
                    entry.versioned = False
            written[at] = written.get(at, False) or dependent is not False

    def fresh(self, tensors: Sequence[torch.Tensor]) -> None:
        """Tensors created during the call: the outputs of an op whose schema says they
        alias no input, and the mode's own casts."""
        for t in tensors:
            at = address(t)
            if at:
                self.born.add(at)


class SavedState:
    """The storages f writes into that the backend did not take, with their saved bytes."""

    def __init__(self) -> None:
        self.entries: list[Written] = []
        self._addresses: set[int] = set()

    def watch(self, skip: frozenset[int], known: frozenset[int]) -> StateWatch:
        """A watch for one call of f (`known`: storages the backend keeps otherwise)."""
        return StateWatch(skip, known | frozenset(self._addresses))

    def adopt(self, watch: StateWatch) -> None:
        """Keep what `watch` saved; those storages are put back by the next `repair`."""
        for at, entry in watch.found.items():
            if at not in self._addresses:
                self._addresses.add(at)
                self.entries.append(entry)

    def versions(self) -> list[int | None]:
        return [entry.version() for entry in self.entries] if self.entries else []

    def repair(self, versions: Sequence[int | None]) -> None:
        """Put back what the call since `versions` wrote (entries found since: all)."""
        for i, entry in enumerate(self.entries):
            before = versions[i] if i < len(versions) else None
            if before is None or entry.version() != before:
                entry.restore()

    def restore(self) -> None:
        """Put every saved storage back (the end of the check)."""
        for entry in self.entries:
            entry.restore()


# -- names, for warnings (only looked up when one is written) ----------------------


def reach(f: Callable[..., Any]) -> list[Any]:
    """What f reaches directly: itself, its bound ``self``, its closure cells, defaults
    and the globals its code names (a lambda over a model); duplicates and Nones kept."""
    candidates: list[Any] = [f, getattr(f, "__self__", None)]
    fn = getattr(f, "__func__", f)
    candidates += [
        cell.cell_contents for cell in getattr(fn, "__closure__", None) or () if _filled(cell)
    ]
    candidates += list(getattr(fn, "__defaults__", None) or ())
    code, names = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    if code is not None:
        candidates += [names[n] for n in code.co_names if n in names]
    return candidates


def modules_of(f: Callable[..., Any]) -> list[torch.nn.Module]:
    """The modules f reaches directly (`reach`)."""
    found: list[torch.nn.Module] = []
    for c in reach(f):
        if isinstance(c, torch.nn.Module) and all(c is not m for m in found):
            found.append(c)
    return found


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def uncompiled_name(name: str) -> str:
    """A parameter's name without the ``_orig_mod`` level ``torch.compile`` inserts.

    ``torch.compile(model)`` wraps the model in a module whose only child is
    ``_orig_mod``; its parameters are the model's, and the user knows them by the
    model's names (``fc.weight``, not ``_orig_mod.fc.weight``).
    """
    if "_orig_mod" not in name:
        return name
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def tensor_names(modules: Iterable[torch.nn.Module], buffers_only: bool = False) -> dict[int, str]:
    """``storage address -> dotted name`` of the buffers (and parameters) of `modules`."""
    out: dict[int, str] = {}
    for module in modules:
        named = list(module.named_buffers(remove_duplicate=False))
        if not buffers_only:
            named += list(module.named_parameters(remove_duplicate=False))
        for name, t in named:
            at = address(t)
            if at:
                out.setdefault(at, uncompiled_name(name))
    return out
