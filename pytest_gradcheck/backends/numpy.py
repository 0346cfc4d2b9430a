"""The NumPy backend: hand-written gradients (`grad=`) checked in float64.

f receives float64 copies of the floating arguments (rebuilt for every evaluation, so
an f that writes into its inputs cannot corrupt the check); the entries of `params`
are perturbed in place, float64 arrays in the very objects f reads, and restored bit
for bit afterwards. With `params=`, the blocks are the entries of `params` and the
positional arguments are data; without it, the blocks are the floating leaves of args.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from .._kinks import EMPTY_SIGNATURE, shift_invariant, shift_testable
from .._notices import CAST_NOTICE
from ._base import (
    BlockSpec,
    Evaluation,
    Gradient,
    Point,
    Settings,
    check_gradient_array,
    complex_warning,
    lowered_warning,
    projection_weights,
    reduce_output,
    select_blocks,
    whole,
)
from ._numpy_tracker import Session, tracking
from ._numpy_tracker import track as track_value
from ._own_dtype import look
from ._rng import GlobalRng
from ._tree import child_name, iter_leaves, map_leaves

_NO_GRAD = (
    "gradcheck: f works on NumPy arrays, so pass grad=: a callable with f's signature "
    "returning the gradients (a tuple with one entry per positional argument, None for "
    "non-floating ones; with params=, a dict keyed like params). If f is a PyTorch or "
    "JAX function, pass its inputs as tensors or jax arrays: the analytic gradient then "
    "comes from autograd or jax.grad"
)


def _is_floating_leaf(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return np.issubdtype(x.dtype, np.floating)
    return isinstance(x, (float, np.floating)) and not isinstance(x, bool)


def _dtype_name(x: Any) -> str:
    return str(x.dtype) if isinstance(x, (np.ndarray, np.generic)) else type(x).__name__


class _ParamSlot:
    """One entry of `params`: its container and key, the original object, the live array."""

    def __init__(self, container: MutableMapping | list, key: Any, original: Any) -> None:
        self.container, self.key, self.original = container, key, original
        in_place = (
            isinstance(original, np.ndarray)
            and original.dtype == np.float64
            and original.flags.writeable
        )
        self.saved = np.array(original, dtype=np.float64, copy=True)
        # a float64 writeable array is perturbed in place; anything else is swapped out
        self.live = original if in_place else self.saved.copy()
        if not in_place:
            container[key] = self.live

    def expose(self, value: Any) -> None:
        self.container[self.key] = value

    def restore(self) -> None:
        if self.live is self.original:
            np.copyto(self.original, self.saved)
        self.container[self.key] = self.original


class NumpyBackend:
    """Checks a NumPy function against its hand-written `grad`."""

    framework = "numpy"

    def __init__(
        self,
        f: Callable[..., Any],
        args: tuple,
        params: Any,
        grad: Callable[..., Any] | None,
        settings: Settings,
    ) -> None:
        if grad is None:
            raise TypeError(_NO_GRAD)
        if not callable(grad):
            raise TypeError(f"gradcheck: grad must be callable, got {type(grad).__name__}")
        if settings.device not in (None, "cpu"):
            raise ValueError(_cpu_only(settings.device))
        self.f, self.grad, self.settings = f, grad, settings
        self.params = params
        self.warnings: list[str] = []
        self._rng = GlobalRng(settings.seed)
        self._kind: str | None = None
        self._weights: np.ndarray | None = None
        self._slots: list[_ParamSlot] = []
        #: the checked point's max/min reductions are shifts, not kinks: not recorded
        self._quiet = False
        self._lowered_said = False  # the lower-precision warning, once per check
        try:
            self._prepare(args, params)
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------
    def _prepare(self, args: tuple, params: Any) -> None:
        floating, others = [], []
        if params is None:
            leaves = list(iter_leaves(tuple(args), "args"))
        else:
            if not isinstance(params, (MutableMapping, list)):
                raise TypeError(
                    "gradcheck: params must be a dict (or list) of NumPy arrays that f "
                    f"reads, got {type(params).__name__}"
                )
            leaves = list(self._param_leaves(params))
        for name, leaf in leaves:
            (floating if _is_floating_leaf(leaf) else others).append(name)
        complex_ = [name for name, leaf in leaves if np.iscomplexobj(leaf)]
        chosen = set(select_blocks(floating, others, self.settings.wrt, complex_))
        self.warnings.extend(complex_warning(complex_, self.settings.wrt))
        lowp = sorted(
            {_dtype_name(leaf) for name, leaf in leaves if name in chosen} - {"float64", "float"}
        )
        if lowp:
            self.warnings.append(
                f"{CAST_NOTICE}inputs of dtype {', '.join(lowp)} were cast for the check "
                "(it always runs in double precision)"
            )
        #: the lower-precision dtypes of the blocks, cast for the check (see `own_dtype_pass`)
        self._given: tuple[str, ...] = tuple(lowp)
        # args: float64 base copies, rebuilt for each evaluation
        self._arg_base: dict[str, np.ndarray] = {}
        self._args = tuple(args)
        specs: list[BlockSpec] = []
        if params is None:
            for name, leaf in leaves:
                if name in chosen:
                    base = np.array(leaf, dtype=np.float64, copy=True)
                    self._arg_base[name] = base
                    specs.append(
                        BlockSpec(name, base.shape, _dtype_name(leaf), base.reshape(-1).copy())
                    )
        else:
            for name, container, key, leaf in self._param_slots(params):
                if name in chosen:
                    slot = _ParamSlot(container, key, leaf)
                    self._slots.append(slot)
                    specs.append(
                        BlockSpec(
                            name, slot.saved.shape, _dtype_name(leaf), slot.saved.reshape(-1).copy()
                        )
                    )
        self._specs = specs
        self._base = [s.values.reshape(s.shape).copy() for s in specs]
        #: each block's own dtype ("float", a Python float, is float64)
        self._dtypes = [np.dtype("float64" if s.dtype == "float" else s.dtype) for s in specs]

    def _param_leaves(self, params: Any) -> list[tuple[str, Any]]:
        return [(name, leaf) for name, _, _, leaf in self._param_slots(params)]

    def _param_slots(self, params: Any) -> list[tuple[str, Any, Any, Any]]:
        """(name, container, key, leaf) for each leaf of params, named as the contract says."""
        out: list[tuple[str, Any, Any, Any]] = []

        def walk(obj: Any, name: str) -> None:
            items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
            for key, value in items:
                if name:
                    child = child_name(name, key)
                else:
                    child = str(key) if isinstance(obj, Mapping) else f"params[{key}]"
                if isinstance(value, (MutableMapping, list)):
                    walk(value, child)
                else:
                    out.append((child, obj, key, value))

        walk(params, "")
        return out

    # -- protocol ---------------------------------------------------------------------
    def blocks(self) -> Sequence[BlockSpec]:
        return self._specs

    def _call(
        self, point: Point | None, track: bool, shift: bool = False
    ) -> tuple[Any, Session | None]:
        """Set the point, reset RNGs, call f (tracked or not); return (output, session).

        With `shift`, the call is the shift test's (see `_shift_invariant`).
        """
        values = [base.copy() for base in self._base]
        if point is not None:
            for b, idx, delta in point.deltas:
                flat = values[b].reshape(-1)
                if whole(idx, flat.size):
                    flat += delta
                else:
                    flat[idx] += delta
        n_args = len(self._arg_base)
        arg_values = dict(zip(list(self._arg_base), values[:n_args], strict=True))
        for slot, value in zip(self._slots, values[n_args:], strict=True):
            np.copyto(slot.live, value)

        def arg_leaf(name: str, leaf: Any) -> Any:
            if name in arg_values:
                v = arg_values[name]
                return track_value(v) if track else v
            return _data_copy(leaf)

        call_args = map_leaves(self._args, "args", arg_leaf)
        if track:
            for slot in self._slots:
                slot.expose(track_value(slot.live))
        self._rng.reseed()
        try:
            if track:
                with tracking(shift=shift, quiet=self._quiet) as session:
                    out = self.f(*call_args)
                return out, session
            return self.f(*call_args), None
        finally:
            if track:
                for slot in self._slots:
                    slot.expose(slot.live)
            for slot, base in zip(self._slots, self._base[n_args:], strict=True):
                np.copyto(slot.live, base)

    def _reduce(self, out: Any) -> tuple[float, dict[str, float]]:
        kind = self._kind = reduce_output(out, self._kind)
        if kind == "scalar":
            return _to_float(out, "the loss"), {}
        if kind == "terms":
            terms = {str(k): _to_float(v, f"term {k!r}") for k, v in out.items()}
            return float(sum(terms.values())), terms
        arr = np.asarray(out, dtype=np.float64)
        if self._weights is None:
            self._weights = projection_weights(arr.shape, self.settings.seed)
        if arr.shape != self._weights.shape:
            raise ValueError(
                f"gradcheck: f returned shape {arr.shape} at one point and "
                f"{self._weights.shape} at another"
            )
        return float(np.sum(arr * self._weights)), {}

    def evaluate(self, points: Sequence[Point], track: bool) -> list[Evaluation]:
        out = []
        for point in points:
            value, session = self._call(point, track)
            loss, terms = self._reduce(value)
            out.append(_evaluation(loss, terms, session))
        return out

    def gradient(self, track: bool) -> Gradient:
        self._quiet = False  # decided anew at every checked point
        value, session = self._call(None, track)
        loss, terms = self._reduce(value)
        center = _evaluation(loss, terms, session)
        if session is not None and session.lowered and not self._lowered_said:
            self._lowered_said = True
            self.warnings.append(lowered_warning(", ".join(session.lowered), "astype, dtype="))
        evaluations = 1
        if session is not None and shift_testable(
            session.reductions, session.others, session.flippable, session.winners
        ):
            evaluations += 1
            if self._shift_invariant(center):
                self._quiet = True
                center = Evaluation(loss, terms, EMPTY_SIGNATURE, 0)
        call_args = map_leaves(
            self._args,
            "args",
            lambda name, leaf: (
                self._base[list(self._arg_base).index(name)].copy()
                if name in self._arg_base
                else leaf
            ),
        )
        kwargs = {"dout": self._weights.copy()} if self._kind == "array" else {}
        if kwargs and not _takes_dout(self.grad):
            raise TypeError(
                f"gradcheck: f returns an array of shape {self._weights.shape}, not a scalar "
                "loss, so the check reduces it to sum(out * dout) with a fixed random dout "
                "and calls grad(..., dout=dout); grad has no dout parameter. Give it one "
                "(the upstream gradient, shaped like f's output, as a layer's backward "
                "takes), or make f return a scalar loss"
            )
        self._rng.reseed()
        raw = self.grad(*call_args, **kwargs)
        if self._kind == "terms":
            if not isinstance(raw, Mapping):
                raise TypeError(
                    "gradcheck: f returned named terms, so grad must return a dict "
                    f"{{term: gradients}}; it returned {type(raw).__name__}"
                )
            if set(map(str, raw)) != set(terms):
                raise ValueError(
                    f"gradcheck: grad returned gradients for terms {sorted(map(str, raw))}, "
                    f"but f returned terms {sorted(terms)}; return one entry per term"
                )
            per_term = {str(t): self._unpack(g, str(t), allow_missing=True) for t, g in raw.items()}
            per_term = {t: per_term[t] for t in terms}
            total = []
            for b, spec in enumerate(self._specs):
                parts = [per_term[t][b] for t in terms if per_term[t][b] is not None]
                if not parts:
                    raise ValueError(_no_gradient(spec.name))
                total.append(np.sum(parts, axis=0))
            filled = {
                t: tuple(
                    g if g is not None else np.zeros(spec.size)
                    for g, spec in zip(per_term[t], self._specs, strict=True)
                )
                for t in terms
            }
            return Gradient(center, tuple(total), filled, evaluations)
        grads = self._unpack(raw, None, allow_missing=False)
        return Gradient(center, tuple(g for g in grads if g is not None), {}, evaluations)

    def _shift_invariant(self, center: Evaluation) -> bool:
        """Whether f's loss and terms ignore the values of its max/min reductions and
        the branches of its two-way decisions.

        Called where `_kinks.shift_testable` says so: f is evaluated once more with the
        reductions' values moved (`_kinks.shift_offsets`) and every two-way decision
        flipped (a stable sigmoid computes the same on either side). An f
        that cannot take the move (it raises, or its output changes form) is not
        shift-invariant; what it warns about is not the user's concern.
        """
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                value, _ = self._call(None, True, shift=True)
                loss, terms = self._reduce(value)
        except Exception:
            return False
        return shift_invariant((center.loss, center.terms), (loss, terms))

    def _unpack(self, raw: Any, term: str | None, allow_missing: bool) -> list[np.ndarray | None]:
        """Match grad's return value to the blocks, validating each array."""
        found = self._found(raw, term)
        if self.params is not None:
            self._refuse_extra(found, term)
        out: list[np.ndarray | None] = []
        for spec in self._specs:
            g = found.get(spec.name)
            if g is None:
                if allow_missing:
                    out.append(None)
                    continue
                raise ValueError(_no_gradient(spec.name))
            out.append(check_gradient_array(spec.name, g, spec.shape, term))
        return out

    def _found(self, raw: Any, term: str | None) -> dict[str, Any]:
        """grad's return value (for one term) as ``{leaf name: gradient}``, its form checked."""
        if self.params is None:
            if isinstance(raw, Mapping) and not any(isinstance(a, Mapping) for a in self._args):
                raise ValueError(
                    f"gradcheck: grad returned a dict{f' for term {term!r}' if term else ''}, "
                    "but f was given no params= and no dict argument: return a tuple with "
                    f"one entry per positional argument of f ({len(self._args)}), in order. "
                    "A dict is grad's form for the blocks of params= (keyed like params)"
                    + ("" if term else ", or, for f returning named terms, one per term")
                )
            if len(self._args) == 1 and not isinstance(raw, (tuple, list)):
                raw = (raw,)
            if not isinstance(raw, (tuple, list)) or len(raw) != len(self._args):
                got = len(raw) if isinstance(raw, (tuple, list)) else type(raw).__name__
                raise ValueError(
                    f"gradcheck: grad must return a tuple with one entry per positional "
                    f"argument of f ({len(self._args)}), got {got}"
                    + (f" for term {term!r}" if term else "")
                )
            return dict(iter_leaves(tuple(raw), "args"))
        if not isinstance(raw, (Mapping, list)):
            raise TypeError(
                "gradcheck: with params=, grad must return a dict keyed like params, "
                f"got {type(raw).__name__}" + (f" for term {term!r}" if term else "")
            )
        return dict(self._param_leaves(raw))

    def _refuse_extra(self, found: Mapping[str, Any], term: str | None) -> None:
        """A gradient for a key params lacks is a typo that would go unchecked: an error.

        A gradient for a positional argument (``args[0]``, a backward's dx) is allowed:
        with params= the arguments are data, so it is not checked.
        """
        known = {name for name, _ in self._param_leaves(self.params)}
        data = {name for name, _ in iter_leaves(self._args, "args")}
        extra = [name for name in found if name not in known and name not in data]
        if extra:
            entries = ", ".join(map(repr, sorted(known)))
            raise ValueError(
                f"gradcheck: grad returned a gradient for {', '.join(map(repr, extra))}"
                + (f" of term {term!r}" if term else "")
                + f", which params does not hold (its entries: {entries}); "
                "key grad's dict exactly like params"
            )

    def own_dtype_pass(self) -> tuple[str, ...] | None:
        """f and `grad` once more at the base point, on the blocks in their own dtypes.

        Only where a block came in lower precision (None otherwise): `grad` on float32
        arrays is what the user's float32 code runs, and a backward that overflows there
        (``np.exp(-z)`` of a large -z) is finite in the check's float64 (see
        `_own_dtype`). NumPy's floating-point warnings and errors (`np.seterr`) are off
        for the pass: what overflows is what it looks for. A pass that raises gives a
        notice, and the check stands as it is.
        """
        return look(
            self._given,
            np.errstate(all="ignore"),
            self._own_gradient,
            lambda: [(spec.name, spec.shape, spec.dtype) for spec in self._specs],
        )

    def _own_gradient(self) -> tuple[float, list[np.ndarray | None]]:
        """The loss and each block's gradient (flat float64, None where grad gave none)
        with the blocks in their own dtypes: params entries exposed as such copies
        while f and grad run, put back after; f and grad get copies of the arguments."""
        own = [base.astype(dtype) for base, dtype in zip(self._base, self._dtypes, strict=True)]
        n_args = len(self._arg_base)
        named = dict(zip(list(self._arg_base), own[:n_args], strict=True))

        def call_args() -> Any:
            return map_leaves(
                self._args,
                "args",
                lambda name, leaf: named[name].copy() if name in named else _data_copy(leaf),
            )

        try:
            for slot, value in zip(self._slots, own[n_args:], strict=True):
                slot.expose(value)
            self._rng.reseed()
            out = self.f(*call_args())
            loss, _ = self._reduce(out)
            if not np.isfinite(loss):
                return loss, []
            kwargs = {}
            if self._kind == "array":
                assert self._weights is not None
                dtype = np.asarray(out).dtype  # dout in the output's dtype, as training has it
                kwargs["dout"] = self._weights.astype(dtype if dtype.kind == "f" else np.float64)
            self._rng.reseed()
            raw = self.grad(*call_args(), **kwargs)
        finally:
            for slot in self._slots:
                slot.expose(slot.live)
        parts = (
            [self._found(g, str(t)) for t, g in raw.items()]
            if self._kind == "terms" and isinstance(raw, Mapping)
            else [self._found(raw, None)]
        )
        grads: list[np.ndarray | None] = []
        for spec in self._specs:
            arrays = [np.asarray(p[spec.name]) for p in parts if p.get(spec.name) is not None]
            arrays = [a for a in arrays if a.shape == spec.shape and a.dtype.kind in "iuf"]
            grads.append(
                np.sum([a.astype(np.float64).reshape(-1) for a in arrays], axis=0)
                if arrays
                else None
            )
        return loss, grads

    def step(self, update: Sequence[np.ndarray]) -> None:
        for b, u in enumerate(update):
            self._base[b] += np.asarray(u, dtype=np.float64).reshape(self._base[b].shape)
        n_args = len(self._arg_base)
        for slot, base in zip(self._slots, self._base[n_args:], strict=True):
            np.copyto(slot.live, base)

    def close(self) -> None:
        for slot in getattr(self, "_slots", []):
            slot.restore()
        self._rng.restore()


def _evaluation(loss: float, terms: dict[str, float], session: Session | None) -> Evaluation:
    if session is None:
        return Evaluation(loss, terms, None, 0)
    return Evaluation(loss, terms, session.recorder.digest(), session.recorder.count)


def _data_copy(leaf: Any) -> Any:
    """A copy of an array argument that is not checked, so f cannot change the user's."""
    return leaf.copy() if isinstance(leaf, np.ndarray) else leaf


def _takes_dout(grad: Callable[..., Any]) -> bool:
    """Whether `grad` accepts the keyword `dout` (True where its signature is unknown)."""
    try:
        parameters = inspect.signature(grad).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == "dout" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


def _cpu_only(device: str) -> str:
    """The error for a device NumPy cannot run on: never a silent run on the CPU."""
    return (
        f"gradcheck: device={device!r}, but f works on NumPy arrays, which live on the "
        "CPU only: a NumPy check cannot run on a GPU. Use device=None or 'cpu' for it; "
        "where --gradcheck-device or the ini key gradcheck_device asks for a GPU for the "
        "whole run, give the NumPy tests @pytest.mark.gradcheck(device=None)"
    )


def _no_gradient(name: str) -> str:
    return (
        f"gradcheck: block {name!r} receives no gradient: grad returned None or nothing "
        f"for it. Return its gradient, or leave it out of the check with wrt"
    )


def _to_float(value: Any, what: str) -> float:
    arr = np.asarray(value)
    real = np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    if arr.shape != () or not real:
        raise TypeError(
            f"gradcheck: {what} must be a real scalar, got {type(value).__name__} of "
            f"dtype {arr.dtype} and shape {arr.shape}; return a float (take .real or "
            "reduce an array to one value)"
        )
    return float(arr)
