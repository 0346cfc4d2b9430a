"""The plain attributes of the modules a check takes: saved before it, put back after it.

A forward may rebind a plain attribute of its module: ``self.last = y.detach()``,
``self.cache = {...}``, or the pre-hook of the old ``weight_norm`` and
``spectral_norm`` (``module.weight = ...`` before every forward). After a check such an
attribute would hold what the check's last evaluation left: a value at a perturbed
point, in float64 and, under batching, a tensor of `torch.func.vmap`'s that raises when
used outside it. So the backend saves the plain entries of the ``__dict__`` of every
module in ``params`` and every module f reaches directly (`_torch_state.modules_of`:
``params=dict(model.named_parameters())`` with ``lambda x: model(x)``), and of their
submodules, before its first call of f, and puts
them back when the check ends, however it ends: each saved name bound to the same
object again, a name f added deleted, one f deleted restored.

What `nn.Module` keeps in ``__dict__`` for itself (its registries of parameters,
buffers and submodules, its hook dicts, ``training``) is left alone: the backend puts
back the parameters, buffers and train/eval flags on its own, and the hooks are the
user's to add and remove. Bindings only: an object f changes in place (a list a forward
hook appends to, a dict whose entries it sets) is the same object after the check, with
what f put in it; so is a parameter, buffer or submodule a forward registers.

The cost is two passes over each module's ``__dict__`` per check (a few microseconds
for a small model), none per evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: the names `nn.Module.__init__` binds in ``__dict__`` for the module's own bookkeeping
#: (read from a fresh module, so a torch version's additions are included), and the
#: compiled forward ``Module.compile()`` sets
_OWN: frozenset[str] = frozenset(torch.nn.Module().__dict__) | {"_compiled_call_impl"}

_MISSING = object()


#: one module's ``__dict__`` as saved: the module, every name in it (the module's own
#: included) and its plain attributes with their objects (a plain tuple: this is built
#: for every module of every check)
_Saved = tuple[torch.nn.Module, frozenset[str], Mapping[str, Any]]

_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True)
class ModuleAttributes:
    """The plain attributes of some modules and of their submodules at one moment."""

    saved: tuple[_Saved, ...]

    @classmethod
    def of(cls, modules: Iterable[torch.nn.Module]) -> ModuleAttributes:
        """Save the plain attributes of `modules` and of all their submodules."""
        seen: set[int] = set()
        saved = []
        for root in modules:
            for module in root.modules():
                if id(module) in seen:
                    continue
                seen.add(id(module))
                d = module.__dict__
                names = frozenset(d)
                plain = names - _OWN
                saved.append((module, names, {n: d[n] for n in plain} if plain else _EMPTY))
        return cls(tuple(saved))

    def restore(self) -> None:
        """Bind every saved name to its saved object again; delete the names added since.

        A module whose names are those it had and whose plain attributes are bound to
        the same objects (nearly every module) costs a comparison of the two sets of
        names and an identity test per attribute.
        """
        for module, names, attributes in self.saved:
            d = module.__dict__
            if d.keys() != names:
                for name in d.keys() - names - _OWN:
                    del d[name]
            for name, value in attributes.items():
                if d.get(name, _MISSING) is not value:
                    d[name] = value
