"""The JAX backend: pytrees in, float64 under a scoped x64 setting, jit + vmap batches.

How a check runs:

* The leaves of `args` (any pytree: dicts, lists, tuples, registered nodes such as
  Equinox modules) and of `params` (a dict or list that `f` reads through a closure)
  are walked with JAX key paths. Floating leaves (JAX or NumPy arrays) are the blocks,
  named like ``args[1]['W1']``, ``W1``, ``W1['b']`` or ``params[0]``; they are cast to
  float64. Integer, boolean and PRNG-key leaves (typed or legacy uint32) pass through
  untouched, so dropout driven by a key argument draws the same mask every time.
* Every call into JAX runs under ``jax.enable_x64(True)`` and
  ``jax.default_matmul_precision("highest")`` (and ``jax.default_device`` when a
  device was asked for), entered per call. Nothing is set globally, so nothing can
  leak into the rest of the test session, whatever happens in between.
* `f` is traced once to a jaxpr, with the blocks as flat float64 vectors. The
  analytic gradient is ``jax.vjp`` of that jaxpr under ``jit`` (custom_vjp and
  custom_jvp rules included). Perturbed points are evaluated as a batch: one jitted
  ``vmap`` over the points, each point being the base vectors plus its deltas (a
  dense add, or a scatter-add of one entry for coordinates of large blocks). A small
  model goes as one batch; past _DENSE_COORDINATES each large block is a batch lane
  of its own and the small blocks share one, so a point carries copies of the blocks
  of its lane only; on CPU a block over _LOOP_BLOCK_BYTES is evaluated one point at a
  time instead (a copy per row costs more than one copy in cache), by one program that
  loops over the points inside XLA (up to _MAP_BLOCK_BYTES; one call per point past it,
  and with ``batch=False``). Batches
  are padded to fixed sizes (four per octave), so a check compiles few programs; on CPU, small
  functions are compiled without LLVM optimisation, since compiling is then nearly
  all the cost. Where `f` cannot be vmapped, points are evaluated one at a time with
  the same jitted function; where `f` cannot even be traced (Python control flow on
  array values), everything runs eagerly and winner tracking is off.
* Winner tracking evaluates the jaxpr through `_jax_tracker`, which returns a hash
  of every max-like decision beside the loss, inside the same jit and vmap. The
  decision sites are a property of the jaxpr: where the checked point's tracked pass
  found none, the points are evaluated by the untracked program (the same
  computation without the hashing) and get the empty signature.
* Compiled programs outlive the check, in JAX's own jit cache: the programs are
  module-level jitted functions whose static argument is a `_Program`, hashed and
  compared on the jaxpr's structure (`_jax_tracker.fingerprint`: its printed form
  plus every parameter and literal, by value, or by identity where only identity is
  safe). The arrays `f` captures are arguments, not constants of the program. So a
  second check of the same computation at the same shapes compiles nothing, and any
  difference in the computation (a literal, a custom rule) compiles anew. JAX's key
  adds the argument types, the static flags and the x64/precision/device context.
  A custom_jvp rule counts in the key by the jaxpr of its JVP (`fingerprint`), so the
  gradient program of an `f` with one (`jax.nn.relu`) is reused like any other; the
  gradient of an `f` with a custom_vjp rule (Python run at transposition) is traced
  first and its program keyed on the jaxpr of that trace, which contains the rule.
* `params` dict or list entries are replaced by the perturbed values only while `f`
  is being traced (or called eagerly), and the very same objects are put back after.
"""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._kinks import EMPTY_SIGNATURE, SignatureRecorder, shift_invariant, shift_testable
from .._notices import CAST_NOTICE
from ._base import (
    COTANGENT,
    CPU_LOOP_BYTES,
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
from ._jax_tracker import (
    CUSTOM_CALLS,
    FLIPPED_PRIMITIVES,
    SHIFTED_PRIMITIVES,
    eval_open,
    input_dependencies,
    live_inputs,
    make_tracked,
    safe_fingerprint,
)
from ._jaxpr import all_eqns
from ._own_dtype import look
from ._rng import GlobalRng

#: errors that mean `f` needs concrete values (Python control flow on array values)
_NEEDS_CONCRETE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.NonConcreteBooleanIndexError,
)

#: floating dtypes below float64 (a cast into one lowers f's precision)
_LOWER_FLOATS = frozenset({"float32", "float16", "bfloat16"})

#: the message of a lax operation refusing mixed dtypes (conv_general_dilated & co.)
_MIXED_DTYPES = re.compile(r"same dtypes?\b", re.IGNORECASE)

#: memory one vmapped chunk of points may use (estimated from the jaxpr's values)
_CHUNK_BYTES = 512 * 2**20
#: most points evaluated in one vmapped call; a batch is padded to one of _BATCH_SIZES
_MAX_CHUNK = 512
#: the batch sizes compiled (each one a program): 1, 2, 3 and then four per octave
#: (4, 5, 6, 7 times a power of two), so that a padded batch computes less than a
#: quarter more rows than it needs (powers of two alone padded the 88 points of a
#: default check to 128, and 66 to 128); a check uses one size per group of points
_BATCH_SIZES = tuple(
    sorted({1, 2, 3} | {m << k for m in (4, 5, 6, 7) for k in range(8) if m << k <= 512})
)
#: checks with at most this many coordinates in all send every delta as a whole block
_DENSE_COORDINATES = 4096
#: on CPU, the points perturbing a block larger than this (bytes) are evaluated one at a
#: time, not as a vmapped batch (see `_base.CPU_LOOP_BYTES`)
_LOOP_BLOCK_BYTES = CPU_LOOP_BYTES
#: ... but one call runs them all, looping inside XLA, up to this size: a call from
#: Python per point costs more than the loop (an MLP's first weight, 20 points, on one
#: CPU thread: 6.3 -> 3.5 ms at 774 KB, 12.7 -> 9.3 ms at 3.2 MB), while at 8 MB the
#: loop inside XLA was the slower (24.4 vs 23.0 ms)
_MAP_BLOCK_BYTES = 4 * 2**20

#: on CPU, functions whose values (per point) fit in this are compiled without LLVM
#: optimisation: compiling is most of the cost of checking them. Past it, running the
#: unoptimised code costs more than compiling saves: measured on one CPU thread, an MLP
#: of 3e4 parameters (about 400 KB of values per point) checks in 18 ms optimised and
#: 28 ms not, for the same first-call time (0.6-0.7 s, mostly compiling either way)
_QUICK_COMPILE_BYTES = 256 * 2**10
_QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


_CUSTOM_RULE_ERROR = re.compile(r"custom[ _]?(vjp|jvp)|bwd rule|\bbwd\b|\bfwd\b", re.IGNORECASE)
_BWD_OUTPUT = re.compile(
    r"at output\[(\d+)\].*?corresponding to an input of type \S*?\[([\d, ]*)\]", re.DOTALL
)


@dataclass
class _Leaf:
    """One leaf of `args` or `params`."""

    name: str
    value: Any  # the user's object
    floating: bool
    array: bool  # a JAX array (traced as an input) rather than a static Python object


@dataclass
class _Slot:
    """A mutable place in `params` (a dict key or list index) replaced during tracing."""

    container: Any
    key: Any
    original: Any
    treedef: Any
    leaves: list[int]  # indices into the backend's leaf list


def _is_complex(value: Any) -> bool:
    # (a PRNG key's extended dtype is no NumPy dtype: its kind is not "c")
    return getattr(getattr(value, "dtype", None), "kind", None) == "c"


def _is_floating(value: Any) -> bool:
    if isinstance(value, jax.Array):
        return bool(jnp.issubdtype(value.dtype, jnp.floating))
    if isinstance(value, (np.ndarray, np.generic)):
        return bool(np.issubdtype(value.dtype, np.floating))
    return False


def _keystr(path: Sequence[Any]) -> str:
    return jax.tree_util.keystr(tuple(path))


def _resolve_device(device: Any) -> Any:
    """The JAX device for ``settings.device``: None, "cpu", "cuda"/"gpu" (":N" allowed)."""
    if device is None:
        return None
    if isinstance(device, jax.Device):
        return device
    if not isinstance(device, str):
        raise TypeError(
            f"gradcheck: device must be None, 'cpu' or 'cuda' (alias 'gpu'), got {device!r}"
        )
    kind, _, index = device.strip().lower().partition(":")
    platform = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "tpu": "tpu"}.get(kind)
    if platform is None or (index and not index.isdigit()):
        raise ValueError(
            f"gradcheck: unknown device {device!r}; use None (where the inputs live), "
            "'cpu' or 'cuda' (alias 'gpu', optionally with an index such as 'cuda:1')"
        )
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        devices = []
    if not devices:
        available = ", ".join(sorted({d.platform for d in jax.devices()}))
        raise ValueError(
            f"gradcheck: device={device!r} was asked for, but JAX sees no {platform.upper()} "
            f"(available platforms: {available}). Install a jaxlib with {platform.upper()} "
            "support, or check with device='cpu' or device=None."
        )
    i = int(index) if index else 0
    if i >= len(devices):
        raise ValueError(
            f"gradcheck: device={device!r} does not exist; JAX sees {len(devices)} "
            f"{platform.upper()} device(s)"
        )
    return devices[i]


class _Program:
    """A jaxpr to compile: the static argument of the module-level jitted functions.

    Hashed and compared on the jaxpr's `fingerprint` (and the number of blocks, which
    sets the taint of the tracker), so that JAX's own jit cache gives back the
    compiled program of an earlier check of the same computation at the same shapes
    and settings. The values of the jaxpr's constvars are not part of it: they are
    arguments of the programs.
    """

    __slots__ = ("_hash", "_keep", "_key", "jaxpr", "n_blocks", "rules")

    def __init__(self, jaxpr: Any, n_blocks: int) -> None:
        key, keep, rules = safe_fingerprint(jaxpr)
        self.jaxpr = jaxpr
        self.n_blocks = n_blocks
        #: whether the jaxpr holds custom rules that the key leaves out (a custom_vjp's;
        #: see `fingerprint`): then it must not be differentiated inside a program
        self.rules = rules
        self._key = (n_blocks, key)
        self._keep = keep  # the objects the key names by id
        self._hash = hash(self._key)

    @property
    def taint(self) -> list[bool]:
        n = len(self.jaxpr.invars)
        return [True] * self.n_blocks + [False] * (n - self.n_blocks)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, _Program) or other._hash != self._hash:
            return False
        try:
            return bool(self._key == other._key)
        except Exception:  # an object in the key that cannot be compared
            return False


def _vjps(fn: Callable[..., tuple], blocks: list) -> tuple:
    """The outputs, the gradient of the total and the gradient of each term."""
    outs, vjp = jax.vjp(fn, *blocks)
    zeros = [jnp.zeros_like(o) for o in outs]

    def cotangent(k: int) -> tuple:
        ct = list(zeros)
        ct[k] = jnp.full_like(outs[k], COTANGENT)  # (see `_base.COTANGENT`)
        return tuple(ct)

    def scaled(grads: Sequence[Any]) -> list:
        return [g / COTANGENT for g in grads]

    g_total = scaled(vjp(cotangent(0)))
    g_terms = [scaled(vjp(cotangent(k))) for k in range(1, len(outs))]
    return list(outs), g_total, g_terms


def _grad_body(program: _Program, track: bool, consts: list, blocks: list, dyns: list) -> tuple:
    """The gradient program; with `track`, also the base point's decisions."""
    grads = _vjps(lambda *bl: tuple(eval_open(program.jaxpr, consts, *bl, *dyns)), blocks)
    if track:
        tracked = make_tracked(program.jaxpr, program.taint)
        hashes = tracked(consts, *blocks, *dyns)[1]
        _SITE_NAMES[program] = tracked.names  # at trace time: kept with the program
    else:
        hashes = jnp.zeros((0,), jnp.uint64)
    return (*grads, hashes)


def _point_body(
    program: _Program, track: bool, consts: list, base: list, idx: list, val: list, dyns: list
) -> tuple:
    """f at one point: the base blocks plus deltas (whole, or at indices; a block whose
    values are None is not perturbed, and not batched under `_batched_body`)."""
    blocks = [
        b if v is None else b + v if i is None else b.at[i].add(v)
        for b, i, v in zip(base, idx, val, strict=False)
    ]
    if track:
        outs, hashes = make_tracked(program.jaxpr, program.taint)(consts, *blocks, *dyns)
    else:
        outs = eval_open(program.jaxpr, consts, *blocks, *dyns)
        hashes = jnp.zeros((0,), jnp.uint64)
    return jnp.stack([jnp.asarray(o, jnp.float64) for o in outs]), hashes


def _batched_body(
    program: _Program, track: bool, consts: list, base: list, idx: list, val: list, dyns: list
) -> tuple:
    """`_point_body` at a batch of points (idx and val have a leading points axis)."""
    point = functools.partial(_point_body, program, track)
    return jax.vmap(point, in_axes=(None, None, 0, 0, None))(consts, base, idx, val, dyns)


def _mapped_body(
    program: _Program,
    track: bool,
    consts: list,
    base: list,
    idx: list,
    val: list,
    dyns: list,
    rows: jax.Array,
) -> tuple:
    """`_point_body` at the first `rows` points of a padded batch, one after another in
    one program: a loop inside XLA, holding one point's values at a time, without a
    call from Python per point (`_MAP_BLOCK_BYTES`)."""

    def row(r: Any) -> tuple:
        return _point_body(
            program,
            track,
            consts,
            base,
            [None if a is None else a[r] for a in idx],
            [None if a is None else a[r] for a in val],
            dyns,
        )

    size = next(a.shape[0] for a in val if a is not None)
    init = tuple(jnp.zeros((size, *s.shape), s.dtype) for s in jax.eval_shape(row, 0))

    def body(r: Any, acc: tuple) -> tuple:
        return tuple(a.at[r].set(o) for a, o in zip(acc, row(r), strict=True))

    return jax.lax.fori_loop(0, rows, body, init)


def _shift_body(program: _Program, consts: list, blocks: list, dyns: list) -> tuple:
    """The shift test's evaluation at the checked point (see `_kinks`): f's outputs
    with the values of its max/min reductions moved and its two-way decisions flipped,
    and whether one of those had an entry at its tie."""
    shifted = make_tracked(program.jaxpr, program.taint, shift=True)
    outs = shifted(consts, *blocks, *dyns)[0]
    return jnp.stack([jnp.asarray(o, jnp.float64) for o in outs]), shifted.tied


def _eval_body(program: _Program, consts: list, args: tuple) -> list:
    """A traced jaxpr (the gradient program of an f with custom rules)."""
    return eval_open(program.jaxpr, consts, *jax.tree_util.tree_leaves(args))


def _jitted(fn: Callable, n_static: int) -> tuple[Callable, Callable]:
    """`fn` jitted with its leading static arguments: (default, quick compile)."""
    static = tuple(range(n_static))
    return (
        jax.jit(fn, static_argnums=static),
        jax.jit(fn, static_argnums=static, compiler_options=_QUICK_COMPILE),
    )


# The compiled programs live in the caches of these jitted functions, keyed by JAX
# on the `_Program` (the computation), the static flags, the arguments' types and
# shardings, and the x64/precision/device context: a check of a computation already
# compiled, at the same shapes and settings, compiles nothing. Index 1: quick compile.
_GRAD = _jitted(_grad_body, 2)
#: XLA's YNN fusions (jaxlib 0.10, CPU) fuse a product that the batch does not change
#: (x @ W1 for the points that perturb b2) into the batched computation that reads it,
#: which then recomputes it for every row: the 66 rows of the small blocks of a 1e5
#: MLP took 5.3 ms with them and 2.2 ms without (one CPU thread). For optimised batch
#: programs on CPU only: unoptimised (quick) ones measured faster with them
_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}
_NO_YNN_SINCE = (0, 10)
#: index 2: optimised, without YNN fusions (`_NO_YNN`)
_BATCHED = (
    *_jitted(_batched_body, 2),
    jax.jit(_batched_body, static_argnums=(0, 1), compiler_options=_NO_YNN),
)
_SINGLE = _jitted(_point_body, 2)
_MAPPED = _jitted(_mapped_body, 2)
_EVAL = _jitted(_eval_body, 1)
_SHIFTED = _jitted(_shift_body, 1)
_JITTED = (*_GRAD, *_BATCHED, *_SINGLE, *_MAPPED, *_EVAL, *_SHIFTED)

#: the names of a tracked program's decision sites, in hash order, recorded when its
#: gradient program is traced (a later check of the same computation finds the
#: program compiled, and its names here); dropped with the programs
_SITE_NAMES: dict[Any, tuple[str, ...]] = {}

#: the most compiled programs kept between checks: past it, they are all dropped (a
#: session checking many models or shapes, Hypothesis's random shapes, would otherwise
#: hold every program it ever compiled, up to JAX's own limit of thousands)
_MAX_PROGRAMS = 256


def _bound_programs() -> None:
    """Drop the compiled programs when they exceed _MAX_PROGRAMS (called per check)."""
    if sum(fn._cache_size() for fn in _JITTED) > _MAX_PROGRAMS:
        for fn in _JITTED:
            fn.clear_cache()
        _SITE_NAMES.clear()


class JaxBackend:
    """Checks JAX functions; see the module docstring for how."""

    def __init__(
        self,
        f: Callable[..., Any],
        args: Sequence[Any],
        params: Any,
        grad: Any,
        settings: Settings,
    ) -> None:
        if grad is not None:
            raise TypeError(
                "gradcheck: grad= was given for a JAX function; JAX gradients come from "
                "jax.grad/jax.vjp of f (custom_vjp and custom_jvp rules included). "
                "Remove grad=, or define the backward pass with jax.custom_vjp."
            )
        if not callable(f):
            raise TypeError(f"gradcheck: f must be callable, got {type(f).__name__}")
        self.warnings: list[str] = []
        #: why points went to the loop instead of a vmap batch (results are the same)
        self.batch_fallbacks: list[str] = []
        self._f = f
        self._settings = settings
        self._rng = GlobalRng(settings.seed)
        self._slots: list[_Slot] = []
        self._closed = False
        try:
            self._device = _resolve_device(settings.device)
            # read outside the scope, which turns x64 on: the float32 warning says
            # whether the check turned it on or found it on
            self._x64_global = bool(getattr(jax.config, "jax_enable_x64", False))
            with self._scope():
                self._prepare(tuple(args), params)
                self._trace()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup
    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """x64, highest matmul precision and the device, for one call into JAX."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(_enable_x64())
            stack.enter_context(jax.default_matmul_precision("highest"))
            if self._device is not None:
                stack.enter_context(jax.default_device(self._device))
            yield

    def _prepare(self, args: tuple, params: Any) -> None:
        leaves: list[_Leaf] = []
        flat, self._args_def = jax.tree_util.tree_flatten_with_path(args)
        self._n_args_leaves = len(flat)
        for path, value in flat:
            leaves.append(self._leaf("args" + _keystr(path), value))
        if params is not None:
            if not isinstance(params, (dict, list)):
                raise TypeError(
                    f"gradcheck: params for a JAX function must be a dict or a list that f "
                    f"reads (its entries are replaced while f is traced), got "
                    f"{type(params).__name__}. Pass an immutable pytree such as an Equinox "
                    "module in args instead: f(model, x)."
                )
            self._walk_params(params, None, leaves)
        self._leaves = leaves
        floating = [leaf.name for leaf in leaves if leaf.floating]
        others = [leaf.name for leaf in leaves if not leaf.floating]
        dupes = {n for n in floating if floating.count(n) > 1}
        if dupes:
            raise ValueError(f"gradcheck: two blocks share the name(s) {sorted(dupes)}")
        complex_ = [leaf.name for leaf in leaves if _is_complex(leaf.value)]
        chosen = set(select_blocks(floating, others, self._settings.wrt, complex_))
        self.warnings.extend(complex_warning(complex_, self._settings.wrt))
        self._block_leaves = [i for i, leaf in enumerate(leaves) if leaf.name in chosen]
        low = [leaf.name for leaf in leaves if leaf.floating and _dtype(leaf.value) != "float64"]
        #: the lower-precision dtypes the check cast (see `own_dtype_pass`)
        self._given: tuple[str, ...] = ()
        if low:
            dtypes = sorted({_dtype(leaf.value) for leaf in leaves if leaf.name in low})
            self._given = tuple(dtypes)
            x64 = (
                "JAX x64 was already enabled"
                if self._x64_global
                else "JAX x64 is enabled for the check only"
            )
            # the round-off of f (~1e-7 relative in float32, ~1e-3 in float16 and
            # bfloat16) divided by the step h (1e-5) is the error of the difference
            half = [d for d in dtypes if d in ("float16", "bfloat16")]
            size = "near 1e-2" if not half else "near 1 or larger"
            self.warnings.append(
                f"gradcheck: {CAST_NOTICE}{', '.join(low[:5])}{' ...' if len(low) > 5 else ''} "
                f"{'is' if len(low) == 1 else 'are'} {'/'.join(dtypes)}; the check casts the "
                f"floating inputs to float64 ({x64}), because computing in "
                f"{'/'.join(dtypes)} alone can give relative errors {size} for a correct "
                "gradient"
            )
        # base point (flat float64) of each block; inputs of the traced function
        self._shapes: list[tuple[int, ...]] = []
        self._base_np: list[np.ndarray] = []
        self._base_dev: list[jax.Array] = []
        for i in self._block_leaves:
            value = leaves[i].value
            self._shapes.append(tuple(np.shape(value)))
            dev = self._place(value, float64=True)
            self._base_dev.append(dev.reshape(-1))
            self._base_np.append(_read_only(np.asarray(dev, dtype=np.float64).reshape(-1)))
        # dynamic (traced) non-block inputs, and static values for everything else
        self._dyn_leaves: list[int] = []
        self._dyn_vals: list[jax.Array] = []
        self._static: dict[int, Any] = {}
        block_set = set(self._block_leaves)
        for i, leaf in enumerate(leaves):
            if i in block_set:
                continue
            if leaf.array:
                self._dyn_leaves.append(i)
                self._dyn_vals.append(self._place(leaf.value, float64=leaf.floating))
            elif leaf.floating:  # an unchecked NumPy float block: float64, kept NumPy
                self._static[i] = np.asarray(leaf.value, dtype=np.float64)
            else:
                self._static[i] = leaf.value

    def _leaf(self, name: str, value: Any) -> _Leaf:
        return _Leaf(name, value, _is_floating(value), isinstance(value, jax.Array))

    def _walk_params(self, container: Any, prefix: str | None, leaves: list[_Leaf]) -> None:
        """Record a slot for each entry of the mutable dicts and lists in `params`."""
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in list(items):
            if prefix is None:
                name = key if isinstance(key, str) and isinstance(container, dict) else None
                name = name if name is not None else f"params[{key!r}]"
            else:
                name = f"{prefix}[{key!r}]"
            if isinstance(value, (dict, list)):
                self._walk_params(value, name, leaves)
                continue
            flat, treedef = jax.tree_util.tree_flatten_with_path(value)
            start = len(leaves)
            for path, leaf in flat:
                leaves.append(self._leaf(name + _keystr(path), leaf))
            if flat:
                self._slots.append(
                    _Slot(container, key, value, treedef, list(range(start, len(leaves))))
                )

    def _place(self, value: Any, float64: bool) -> jax.Array:
        arr = jnp.asarray(value, dtype=jnp.float64) if float64 else value
        if self._device is not None:
            return jax.device_put(arr, self._device)
        return jnp.asarray(arr)

    # ------------------------------------------------------------------ calling f
    def _assemble(
        self, blocks: Sequence[Any], dyns: Sequence[Any], static: dict[int, Any] | None = None
    ) -> tuple[tuple, list]:
        """f's arguments and every leaf's value from the blocks, the dynamic leaves and
        the static ones (`static`: the check's, with unchecked NumPy floats in float64)."""
        values: list[Any] = [None] * len(self._leaves)
        for i, shape, b in zip(self._block_leaves, self._shapes, blocks, strict=False):
            values[i] = jnp.reshape(b, shape)
        for i, d in zip(self._dyn_leaves, dyns, strict=False):
            values[i] = d
        for i, s in (self._static if static is None else static).items():
            values[i] = s
        args = jax.tree_util.tree_unflatten(self._args_def, values[: self._n_args_leaves])
        return args, values

    @contextlib.contextmanager
    def _installed(self, values: list[Any]) -> Iterator[None]:
        """Put the perturbed params entries in place; put the originals back after."""
        try:
            for slot in self._slots:
                slot.container[slot.key] = jax.tree_util.tree_unflatten(
                    slot.treedef, [values[i] for i in slot.leaves]
                )
            yield
        finally:
            self._restore_params()

    def _restore_params(self) -> None:
        for slot in self._slots:
            slot.container[slot.key] = slot.original

    def _raw(self, blocks: Sequence[Any], dyns: Sequence[Any]) -> list[Any]:
        """f at the given block values, reduced to ``[total, *terms]``."""
        args, values = self._assemble(blocks, dyns)
        self._rng.reseed()
        with self._installed(values):
            out = self._f(*args)
        return self._reduce(out)

    def _reduce(self, out: Any) -> list[Any]:
        """f's output as ``[total, *terms]``; keeps its kind, term names and dtype."""
        parts, kind, names = self._parts(out)
        self._kind, self._term_names = kind, names
        self._out_dtype = str(jnp.result_type(jnp.asarray(out) if kind != "terms" else parts[0]))
        return parts

    def _parts(self, out: Any) -> tuple[list[Any], str, tuple[str, ...]]:
        """f's output as ``[total, *terms]``, its kind and its term names (validated)."""
        kind = reduce_output(out)
        names: tuple[str, ...] = ()
        if kind == "scalar":
            parts = [jnp.asarray(out)]
        elif kind == "terms":
            names = tuple(str(k) for k in out)
            terms = []
            for key, value in out.items():
                if isinstance(value, (bool, str, bytes)) or value is None:
                    raise TypeError(
                        f"gradcheck: the term {key!r} returned by f is "
                        f"{type(value).__name__}; every named term must be a scalar"
                    )
                term = jnp.asarray(value)
                if term.ndim != 0:
                    raise TypeError(
                        f"gradcheck: the term {key!r} returned by f has shape {term.shape}; "
                        "every named term must be a scalar (reduce it, e.g. with .sum())"
                    )
                terms.append(term)
            if not terms:
                raise ValueError("gradcheck: f returned an empty mapping of terms")
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            parts = [total, *terms]
        else:
            arr = jnp.asarray(out)
            w = projection_weights(tuple(arr.shape), self._settings.seed)
            parts = [jnp.sum(arr * w)]
        for name, part in zip(("the loss", *names), parts, strict=False):
            if not jnp.issubdtype(part.dtype, jnp.floating):
                what = name if name == "the loss" else f"the term {name!r}"
                raise TypeError(
                    f"gradcheck: {what} returned by f has dtype {part.dtype}; the loss must "
                    "be floating point"
                )
        return parts, kind, names

    def _trace(self) -> None:
        """Trace f once; choose jit (with tracking) or eager mode."""
        self._mode = "jit"
        # None: not tried yet; False: evaluate one point at a time
        batch = None if getattr(self._settings, "batch", True) else False
        self._vmap_ok: dict[bool, bool | None] = {False: batch, True: batch}
        self._map_ok: dict[bool, bool | None] = {False: batch, True: batch}
        try:
            self._closed_jaxpr = jax.make_jaxpr(self._raw)(self._base_dev, self._dyn_vals)
        except _NEEDS_CONCRETE as err:
            self._mode = "eager"
            self._closed_jaxpr = None
            self._raw(self._base_dev, self._dyn_vals)  # f must at least run eagerly
            self.warnings.append(
                "gradcheck: f cannot be traced by jax.jit (it needs concrete values: "
                f"{type(err).__name__}), so it is evaluated eagerly, one point at a time, "
                "and winner tracking is off (kinks are not detected)"
            )
        except TypeError as err:  # after _NEEDS_CONCRETE: those are TypeErrors too
            if not _MIXED_DTYPES.search(str(err)):
                raise
            raise TypeError(
                f"gradcheck: f failed in float64: {str(err).splitlines()[0]}\n"
                "The check runs f on float64 copies of the checked arrays. An array f "
                "reads without the check (data in a closure) is still in lower precision, "
                "and this lax operation does not promote mixed dtypes (jnp functions and "
                "flax layers do). Cast it where f combines it with a checked array "
                "(x.astype(w.dtype)), or pass it in float64."
            ) from err
        if self._mode == "jit":
            self._warn_lowered(self._closed_jaxpr.jaxpr)
        if self._out_dtype not in ("float64", "complex128"):
            self.warnings.append(
                f"gradcheck: f returns {self._out_dtype} although its inputs are float64; "
                "the loss is computed in reduced precision (look for an explicit astype or "
                "dtype= inside f)"
            )
        self._n_out = 1 + len(self._term_names)
        if self._mode == "jit":
            closed = self._closed_jaxpr
            # the closure's arrays are arguments of the programs, not baked into them
            self._consts = [self._place_const(c) for c in closed.consts]
            self._program = _Program(closed.jaxpr, len(self._base_dev))
            #: how many decision sites the tracked programs hash (set by the first)
            self._n_sites: int | None = None
            #: the sites are shift reductions, not kinks: evaluations are untracked
            self._quiet = False
            self._grad_traced: dict[bool, tuple] = {}
            per_point = sum(_nbytes(v) for v in closed.jaxpr.invars) + sum(
                _nbytes(v) for eqn in closed.jaxpr.eqns for v in eqn.outvars
            )
            chunk = max(1, min(_MAX_CHUNK, _CHUNK_BYTES // max(per_point, 1)))
            self._chunk = 1 << (chunk.bit_length() - 1)
            self._dense = sum(b.size for b in self._base_np) <= _DENSE_COORDINATES
            self._platform = self._find_platform()
            self._quick = int(self._platform == "cpu" and per_point <= _QUICK_COMPILE_BYTES)
            no_ynn = self._platform == "cpu" and not self._quick and _jaxlib() >= _NO_YNN_SINCE
            self._batch_program = 2 if no_ynn else self._quick
            _bound_programs()

    def _warn_lowered(self, jaxpr: Any) -> None:
        """Warn where f casts float64 values to a lower precision (torch's precision
        watch, for JAX): such an f does not run in float64 throughout, whatever the
        check does, and a correct gradient can fail by round-off there."""
        sites: dict[str, None] = {}
        for eqn in all_eqns(jaxpr):
            if eqn.primitive.name != "convert_element_type" or not eqn.invars:
                continue
            source = getattr(getattr(eqn.invars[0], "aval", None), "dtype", None)
            target = eqn.params.get("new_dtype")
            if source != np.float64 or str(target) not in _LOWER_FLOATS:
                continue
            sites[f"float64 -> {target}{_where(eqn)}"] = None
        if sites:
            listed = "; ".join(list(sites)[:3]) + (" and more" if len(sites) > 3 else "")
            note = (
                ". A library function may cast on its own (jax.nn.dot_product_attention "
                "computes its softmax in float32): no check of it gets past that precision"
            )
            self.warnings.append(lowered_warning(listed, "astype, dtype=", note))

    def _place_const(self, value: Any) -> Any:
        """A const of the traced jaxpr, on the check's device, as a program argument."""
        if self._device is not None:
            return jax.device_put(value, self._device)
        if isinstance(value, jax.Array):
            return value
        return jax.device_put(value)

    def _grad_jit(self, track: bool) -> tuple:
        """Run the gradient program: (outs, g_total, g_terms, hashes) on the device."""
        return self._run_grad(
            self._program, track, self._consts, self._base_dev, self._dyn_vals, self._grad_traced
        )

    def _run_grad(
        self,
        program: _Program,
        track: bool,
        consts: list,
        blocks: list,
        dyns: list,
        traced: dict[bool, tuple],
    ) -> tuple:
        """The gradient program of `program` at these values (`_grad_jit`; the pass in the
        user's own dtypes runs its own program through it too).

        Without custom rules, or with custom_jvp rules only (keyed by what they compute,
        see `fingerprint`), the program is keyed on f's jaxpr. Where the key leaves a
        rule out (a custom_vjp's), the gradient is traced here first, the rules with
        it, and its program is keyed on the jaxpr of that trace (kept in `traced` per
        `track`).
        """
        if not program.rules:
            return _GRAD[self._quick](program, track, consts, blocks, dyns)
        if track not in traced:
            body = functools.partial(_grad_body, program, track)
            closed, shape = jax.make_jaxpr(body, return_shape=True)(consts, blocks, dyns)
            traced[track] = (
                _Program(closed.jaxpr, 0),
                list(closed.consts),
                jax.tree_util.tree_structure(shape),
            )
        rules, rule_consts, tree = traced[track]
        flat = _EVAL[self._quick](rules, rule_consts, (consts, blocks, dyns))
        return jax.tree_util.tree_unflatten(tree, flat)

    def _find_platform(self) -> str:
        """The platform the check computes on ("cpu", "gpu", "tpu").

        On CPU, small functions are compiled quickly (unoptimised XLA): a check of a
        small function spends nearly all its time compiling (two or three programs per
        check; JAX's threefry PRNG alone takes a second at the default optimisation
        level), while running them takes microseconds. LLVM's optimisation does not
        change IEEE results (XLA keeps fast-math off), so the values agree. On CPU too,
        the points of large blocks are evaluated one at a time (`_LOOP_BLOCK_BYTES`).
        """
        if self._device is not None:
            return self._device.platform
        arrays = self._base_dev + [d for d in self._dyn_vals if isinstance(d, jax.Array)]
        platforms = {dev.platform for a in arrays for dev in a.devices()}
        return platforms.pop() if len(platforms) == 1 else jax.default_backend()

    # ------------------------------------------------------------------ protocol
    def blocks(self) -> list[BlockSpec]:
        return [
            BlockSpec(
                name=self._leaves[i].name,
                shape=shape,
                dtype=_dtype(self._leaves[i].value),
                values=base,  # read-only (a view of the device array on CPU): no copy
            )
            for i, shape, base in zip(self._block_leaves, self._shapes, self._base_np, strict=False)
        ]

    def gradient(self, track: bool) -> Gradient:
        with self._scope():
            if self._mode == "jit":
                self._check_receives_gradient()
            self._rng.reseed()
            try:
                if self._mode == "jit":
                    result = self._grad_jit(track)
                else:
                    result = self._grad_eager(self._base_dev, self._dyn_vals)
                outs, g_total, g_terms, hashes = jax.device_get(result)
            except Exception as err:
                wrapped = self._rule_error(err)
                if wrapped is None:
                    raise
                raise wrapped from err
            loss = float(outs[0])
            check_finite_loss(loss, "the loss at the checked point")
            terms = {}
            for name, value in zip(self._term_names, outs[1:], strict=False):
                check_finite_loss(float(value), f"term {name!r} at the checked point")
                terms[name] = float(value)
            total = tuple(
                check_gradient_array(self._name(b), np.reshape(g, shape), shape, None, copy=False)
                for b, (g, shape) in enumerate(zip(g_total, self._shapes, strict=False))
            )
            term_grads = {
                name: tuple(
                    check_gradient_array(
                        self._name(b), np.reshape(g, shape), shape, name, copy=False
                    )
                    for b, (g, shape) in enumerate(zip(grads, self._shapes, strict=False))
                )
                for name, grads in zip(self._term_names, g_terms, strict=False)
            }
            signature, decisions = None, 0
            evaluations = 1
            self._quiet = False  # decided anew at every checked point
            if track and self._mode == "jit":
                signature, decisions = self._signature(hashes)
                if decisions and self._shift_testable():
                    evaluations += 1
                    if self._shift_invariant(loss, terms):
                        self._quiet = True
                        signature, decisions = EMPTY_SIGNATURE, 0
            center = Evaluation(loss=loss, terms=terms, signature=signature, decisions=decisions)
            return Gradient(center=center, total=total, terms=term_grads, evaluations=evaluations)

    def _shift_testable(self) -> bool:
        """Whether every decision site of f is a max/min reduction or a two-way decision
        (see `_kinks.shift_testable`): what the shift test moves or flips."""
        names = _SITE_NAMES.get(self._program)
        if names is None or len(names) != self._n_sites:
            return False
        kinds = [n.rsplit("/", 1)[-1] for n in names]
        reductions = sum(k in SHIFTED_PRIMITIVES for k in kinds)
        flippable = sum(k in FLIPPED_PRIMITIVES for k in kinds)
        winners = sum(k in ("max", "min") for k in kinds)
        return shift_testable(reductions, len(kinds) - reductions, flippable, winners)

    def _shift_invariant(self, loss: float, terms: dict[str, float]) -> bool:
        """Whether f's loss and terms ignore the values of its max/min reductions and
        the branches of its two-way decisions: f evaluated once more with them moved
        and flipped. An f that cannot take it is not, nor one with an entry at a tie."""
        self._rng.reseed()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs, tied = jax.device_get(
                    _SHIFTED[self._quick](
                        self._program, self._consts, self._base_dev, self._dyn_vals
                    )
                )
        except Exception:
            return False
        if bool(tied):
            return False
        values = [float(v) for v in np.asarray(outs).reshape(-1)]
        if len(values) != 1 + len(self._term_names):
            return False
        moved = dict(zip(self._term_names, values[1:], strict=True))
        return shift_invariant((loss, terms), (values[0], moved))

    def evaluate(self, points: Sequence[Point], track: bool) -> list[Evaluation]:
        if not points:
            return []
        with self._scope():
            return self._evaluate(points, track)

    def step(self, update: Sequence[np.ndarray]) -> None:
        if len(update) != len(self._base_np):
            raise ValueError(
                f"gradcheck: step got {len(update)} updates for {len(self._base_np)} blocks"
            )
        with self._scope():
            for b, u in enumerate(update):
                u = np.asarray(u, dtype=np.float64).reshape(-1)
                if u.shape != self._base_np[b].shape:
                    raise ValueError(
                        f"gradcheck: the update of block {self._name(b)!r} has {u.size} "
                        f"entries; the block has {self._base_np[b].size}"
                    )
                self._base_np[b] = _read_only(self._base_np[b] + u)
                self._base_dev[b] = jax.device_put(self._base_np[b], self._base_dev[b].sharding)

    def own_dtype_pass(self) -> tuple[str, ...] | None:
        """f and its gradient once more at the base point, with every leaf in its own dtype.

        Only where the check cast floating leaves of lower precision (None otherwise):
        the gradient of f at the blocks cast back to their dtypes, the other leaves as the
        user gave them, under the user's own x64 setting (not the check's), so that a
        custom_vjp rule computing ``exp(-z)`` in float32 overflows here as it does in
        training (see `_own_dtype`). f is traced at those dtypes and its gradient
        program compiled like the check's (keyed on the computation: a second check of
        the same f compiles nothing); an f that needs concrete values runs eagerly. A
        pass that raises gives a notice, and the check stands as it is.

        JAX caches some constants of a trace without the x64 setting in the key: once
        the check has traced f with x64, tracing it without x64 can fail on dtypes JAX
        itself mixed (an index array of the closure, ``s[jnp.arange(n), y]``: "lax.add
        requires arguments to have the same dtypes, got int64, int32"). There the pass
        is taken again with x64, the blocks still in their own dtypes (a float64 NumPy
        constant of the closure then computes in float64, as it would for a user with
        x64 on). JAX's traceback filtering is off for the pass, whose failures are
        caught: it walked the file system for each and cost some 8 ms.
        """
        return look(
            self._given,
            self._own_scope(),
            self._own_gradient_retried,
            lambda: [
                (self._name(b), self._shapes[b], _dtype(self._leaves[i].value))
                for b, i in enumerate(self._block_leaves)
            ],
        )

    def _own_gradient_retried(self) -> tuple[float, list[np.ndarray]]:
        """`_own_gradient`, taken again with x64 where JAX mixed its own dtypes."""
        try:
            return self._own_gradient()
        except TypeError as err:
            if jax.config.jax_enable_x64 or not _MIXED_DTYPES.search(str(err)):
                raise
        with _enable_x64():
            return self._own_gradient()

    @contextlib.contextmanager
    def _own_scope(self) -> Iterator[None]:
        """`_scope` without x64: the highest matmul precision and the device only (and
        no traceback filtering: see `own_dtype_pass`)."""
        from jax._src import config as jax_config

        with contextlib.ExitStack() as stack:
            stack.enter_context(jax_config.traceback_filtering("off"))
            stack.enter_context(jax.default_matmul_precision("highest"))
            if self._device is not None:
                stack.enter_context(jax.default_device(self._device))
            yield

    def _own_gradient(self) -> tuple[float, list[np.ndarray]]:
        """The loss and each block's gradient (flat float64) at the base point, the blocks
        cast to their own dtypes and the other leaves as given (no gradient where the
        loss is not finite)."""
        leaves = self._leaves
        blocks = [
            self._own_place(leaves[i].value, base)
            for i, base in zip(self._block_leaves, self._base_np, strict=True)
        ]
        dyns = [self._place(leaves[i].value, float64=False) for i in self._dyn_leaves]
        static = {i: leaves[i].value for i in self._static}  # NumPy floats as given

        def raw(blocks: Sequence[Any], dyns: Sequence[Any]) -> list[Any]:
            args, values = self._assemble(blocks, dyns, static)
            self._rng.reseed()
            with self._installed(values):
                out = self._f(*args)
            return self._parts(out)[0][:1]  # the total only: one backward pass

        if self._mode == "eager":
            outs, vjp = jax.vjp(lambda *bl: raw(bl, dyns), *blocks)
            loss = float(outs[0])
            grads = jax.device_get(vjp([jnp.ones_like(outs[0])])) if np.isfinite(loss) else []
        else:
            closed = jax.make_jaxpr(raw)(blocks, dyns)
            program = _Program(closed.jaxpr, len(blocks))
            consts = [self._place_const(c) for c in closed.consts]
            self._rng.reseed()
            outs, grads, _, _ = jax.device_get(
                self._run_grad(program, False, consts, blocks, dyns, {})
            )
            loss = float(outs[0])
        if not np.isfinite(loss):
            return loss, []
        return loss, [np.asarray(g, dtype=np.float64).reshape(-1) for g in grads]

    def _own_place(self, value: Any, base: np.ndarray) -> jax.Array:
        """A block's flat base values in the dtype of the user's `value`, where it lives."""
        arr = np.asarray(base).astype(np.dtype(getattr(value, "dtype", np.float64)))
        if self._device is not None:
            return jax.device_put(arr, self._device)
        if isinstance(value, jax.Array):
            return jax.device_put(arr, next(iter(value.devices())))
        return jnp.asarray(arr)

    def close(self) -> None:
        """Put back the params entries and the global RNG states (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._restore_params()
        self._rng.restore()

    # ------------------------------------------------------------------ gradient helpers
    def _name(self, b: int) -> str:
        return self._leaves[self._block_leaves[b]].name

    def _grad_eager(self, blocks: list, dyns: list) -> tuple:
        grads = _vjps(lambda *bl: tuple(self._raw(list(bl), dyns)), blocks)
        return (*grads, np.zeros(0, np.uint64))

    def _check_receives_gradient(self) -> None:
        live = live_inputs(self._closed_jaxpr, [True] + [False] * (self._n_out - 1))
        dead = [self._name(b) for b in range(len(self._base_dev)) if not live[b]]
        if dead:
            raise ValueError(
                f"gradcheck: block(s) {', '.join(map(repr, dead))} receive no gradient: the "
                "loss does not depend on them (or only through stop_gradient). Exclude "
                "them with wrt=..., or check that f reads them (a jax.jit-decorated f that "
                "reads params through a closure keeps the values of its first trace)."
            )

    def _rule_error(self, err: Exception) -> ValueError | None:
        """A ValueError naming the blocks behind a custom rule that failed, or None."""
        text = f"{type(err).__name__}: {err}"
        if self._mode != "jit":
            if not _CUSTOM_RULE_ERROR.search(text):
                return None
            return ValueError(
                "gradcheck: JAX failed while computing the analytic gradient through a "
                f"custom_vjp/custom_jvp rule: {text}. Make the backward rule return one "
                "cotangent per primal input, each with that input's shape and dtype."
            )
        names = [self._name(b) for b in range(len(self._base_dev))]
        names += [None] * len(self._dyn_vals)
        calls = input_dependencies(self._closed_jaxpr, names)
        m = _BWD_OUTPUT.search(text)
        if m is not None:
            i = int(m.group(1))
            shape = tuple(int(s) for s in m.group(2).replace(" ", "").split(",") if s)
            hits = [
                (fname, ops[i][1])
                for prim, fname, ops in calls
                if prim != "custom_jvp_call"
                and i < len(ops)
                and getattr(ops[i][0], "shape", None) == shape
            ]
            if hits:
                fnames = sorted({h[0] for h in hits})
                blocks = sorted(set().union(*(h[1] for h in hits)))
                return ValueError(
                    f"gradcheck: the custom_vjp backward rule of {', '.join(fnames)} returned "
                    f"a gradient of the wrong shape for its input {i} (shape {shape}), which "
                    f"is computed from block(s) {', '.join(map(repr, blocks)) or '(none)'}. "
                    "Make the bwd rule return one cotangent per primal input, each with that "
                    f"input's shape and dtype. JAX said: {text}"
                )
        customs = [(fname, ops) for prim, fname, ops in calls if prim in CUSTOM_CALLS]
        if customs:
            fnames = sorted({c[0] for c in customs})
            blocks = sorted(set().union(*(d for c in customs for _, d in c[1])))
            return ValueError(
                f"gradcheck: computing the analytic gradient failed in a custom rule "
                f"(custom function(s) {', '.join(fnames)}, fed by block(s) "
                f"{', '.join(map(repr, blocks)) or '(none)'}): {text}. Check that its "
                "fwd/bwd (or jvp) rule runs and returns one cotangent per primal input, each "
                "with that input's shape and dtype."
            )
        return ValueError(
            f"gradcheck: JAX could not differentiate f with respect to "
            f"{', '.join(map(repr, names[: len(self._base_dev)]))}: {text}"
        )

    # ------------------------------------------------------------------ evaluation helpers
    def _encode(
        self, points: Sequence[Point], batched: frozenset[int] | None = None
    ) -> tuple[list, list[np.ndarray | None]]:
        """Per block, the deltas of every point: (points, K) flat indices and values.

        The indices are None where the values cover the whole block (dense); both are
        None for a block outside `batched` (None: all), which no point perturbs. Padding
        values are -0.0, since ``x + (-0.0) == x`` for every x, -0.0 included. A delta
        over a whole block (`whole`: a direction) is added as one dense row.
        """
        n_blocks, n = len(self._base_np), len(points)
        # per block: the whole-block deltas (point, values), and the scattered entries
        # as parallel lists of (point, flat indices, values) collected over the points
        dense_rows: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n_blocks)]
        entries: list[tuple[list[int], list[np.ndarray], list[np.ndarray]]] = [
            ([], [], []) for _ in range(n_blocks)
        ]
        for p, point in enumerate(points):
            for b, indices, values in point.deltas:
                if not 0 <= b < n_blocks:
                    raise IndexError(f"gradcheck: point names block {b}; there are {n_blocks}")
                size = self._base_np[b].size
                values = np.asarray(values, dtype=np.float64).reshape(-1)
                if whole(indices, size):
                    if values.size != size:
                        values = np.broadcast_to(values, (size,))
                    dense_rows[b].append((p, values))
                    continue
                ind = index_array(indices)
                if values.size != ind.size:
                    values = np.broadcast_to(values, ind.shape)
                owners, inds, vals = entries[b]
                owners.append(p)
                inds.append(ind)
                vals.append(values)
        idx_arrays: list[np.ndarray | None] = []
        val_arrays: list[np.ndarray | None] = []
        for b in range(n_blocks):
            if batched is not None and b not in batched:
                idx_arrays.append(None)
                val_arrays.append(None)
                continue
            size = self._base_np[b].size
            owners, inds, vals = entries[b]
            counts = [i.size for i in inds]
            flat = np.concatenate(inds) if inds else np.zeros(0, np.int64)
            if flat.size and (flat.min() < 0 or flat.max() >= size):
                raise IndexError(
                    f"gradcheck: flat index out of range for block {self._name(b)!r} "
                    f"of {size} entries"
                )
            rows = np.repeat(np.asarray(owners, np.int64), counts)
            values = np.concatenate(vals) if vals else np.zeros(0)
            # every shape compiles a program: small blocks always travel whole (one
            # shape), large ones as one index (coordinates) or whole (directions)
            per_point = np.bincount(rows, minlength=n) if rows.size else np.zeros(n, np.int64)
            for p, _ in dense_rows[b]:
                per_point[p] += size
            if self._dense or per_point.max(initial=0) > 1:
                dense = np.full((n, size), -0.0)
                for p, v in dense_rows[b]:
                    dense[p] += v
                np.add.at(dense, (rows, flat), values)
                idx_arrays.append(None)
                val_arrays.append(dense)
                continue
            # at most one entry per point
            idx = np.zeros((n, 1), np.int32 if size < 2**31 else np.int64)
            val = np.full((n, 1), -0.0)
            idx[rows, 0] = flat
            val[rows, 0] = values
            idx_arrays.append(idx)
            val_arrays.append(val)
        return idx_arrays, val_arrays

    def _evaluate(self, points: Sequence[Point], track: bool) -> list[Evaluation]:
        if self._mode == "eager":
            return [self._eager_point(point) for point in points]
        results: list[Evaluation | None] = [None] * len(points)
        for batched, members, how in self._groups(points):
            group = [points[i] for i in members]
            evaluations = self._evaluate_group(group, batched, track, how)
            for i, evaluation in zip(members, evaluations, strict=True):
                results[i] = evaluation
        return [r for r in results if r is not None]

    def _groups(
        self, points: Sequence[Point]
    ) -> list[tuple[frozenset[int] | None, list[int], str]]:
        """Points grouped by the blocks a batch of them must carry per point.

        Returns ``(batched blocks, members, how)``. A small model goes as one group,
        every block batched (one program, few rows). Otherwise each large block (over
        _DENSE_COORDINATES entries) is a lane of its own and the small blocks share
        one: a point perturbing W1 then carries a copy of W1 only, and the computation
        that does not depend on the batched blocks (x @ W1 for the points that perturb
        b2) is done once for the batch, not once per point. A large block's points
        that add one entry (coordinates) and those that add the whole block
        (directions) go apart, so that the first travel as one index each; on CPU a
        block over _LOOP_BLOCK_BYTES is evaluated point by point (`how`: "vmap", "map"
        up to _MAP_BLOCK_BYTES, "loop" past it).
        """
        if self._dense:
            return [(None, list(range(len(points))), "vmap")]
        small = frozenset(
            b for b, base in enumerate(self._base_np) if base.size <= _DENSE_COORDINATES
        )
        groups: dict[tuple[frozenset[int], bool], list[int]] = {}
        for p, point in enumerate(points):
            lanes: set[int] = set()
            whole_block = False
            for b, indices, _ in point.deltas:
                lanes |= small if b in small else {b}
                whole_block = whole_block or index_count(indices) > 1
            # a point that perturbs nothing still needs a batched block to count its row
            key = frozenset(lanes or small or {0})
            groups.setdefault((key, whole_block and not key <= small), []).append(p)
        out = []
        for (key, _), members in sorted(groups.items(), key=lambda item: item[1][0]):
            how = "vmap"
            if self._platform == "cpu":
                largest = max(self._base_np[b].nbytes for b in key)
                if largest > _LOOP_BLOCK_BYTES:
                    how = "map" if largest <= _MAP_BLOCK_BYTES else "loop"
            out.append((key, members, how))
        return out

    def _evaluate_group(
        self,
        points: Sequence[Point],
        batched: frozenset[int] | None,
        track: bool,
        how: str = "vmap",
    ) -> list[Evaluation]:
        idx, val = self._encode(points, batched)
        n = len(points)
        outs = np.zeros((n, self._n_out))
        hashes: np.ndarray | None = None
        # the jaxpr's decision sites are fixed: where the checked point's tracked pass
        # hashed none, every point's signature is the empty one, and the untracked
        # program (the same computation, without the tracker's hashing: ~30% less per
        # point for an MLP) is evaluated instead (torch's fast path, for JAX)
        tracked = track and self._n_sites != 0 and not self._quiet
        start = 0
        while start < n:
            stop = min(n, start + self._chunk)
            o, h = self._run_chunk(
                [None if a is None else a[start:stop] for a in idx],
                [None if a is None else a[start:stop] for a in val],
                tracked,
                how,
            )
            outs[start:stop] = o
            if tracked:
                if hashes is None:
                    hashes = np.zeros((n, h.shape[1]), np.uint64)
                hashes[start:stop] = h
            start = stop
        results = []
        for p in range(n):
            loss = float(outs[p, 0])
            terms = {name: float(outs[p, 1 + k]) for k, name in enumerate(self._term_names)}
            signature, decisions = None, 0
            if hashes is not None:
                signature, decisions = self._signature(hashes[p])
            elif track:
                signature = EMPTY_SIGNATURE
            results.append(Evaluation(loss, terms, signature, decisions))
        return results

    def _signature(self, hashes: np.ndarray) -> tuple[bytes, int]:
        """The digest and count of the decision sites of one evaluation.

        Every tracked program of a check evaluates the same jaxpr through the same
        interpreter, so its hashes come in the same site order: the position is the
        site's identity within the check (digests are only compared within a check).
        """
        hashes = np.asarray(hashes, np.uint64).reshape(-1)
        if self._n_sites is None:
            self._n_sites = hashes.size
        elif hashes.size != self._n_sites:
            raise RuntimeError(
                f"gradcheck: internal error: {hashes.size} decision hashes where the "
                f"check's first tracked evaluation had {self._n_sites}"
            )
        recorder = SignatureRecorder()
        for value in hashes:
            recorder.record("site", int(value).to_bytes(8, "little"))
        return recorder.digest(), recorder.count

    def _run_chunk(
        self, idx: list, val: list, track: bool, how: str = "vmap"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Evaluate rows of deltas: one vmapped call, one call looping over the rows
        inside XLA (`how` "map"), or one call per row ("loop", or where batching failed
        or is off)."""
        rows = next((a.shape[0] for a in val if a is not None), 1)
        self._rng.reseed()
        batching = how != "loop" and self._vmap_ok[track] is not False
        if batching:
            size = next((b for b in _BATCH_SIZES if b >= rows), _BATCH_SIZES[-1])
            pad = min(self._chunk, size) - rows
            pidx = [_pad_rows(a, pad, 0) for a in idx]
            pval = [_pad_rows(a, pad, -0.0) for a in val]
            common = (self._program, track, self._consts, self._base_dev, pidx, pval)
        if batching and how == "map" and self._map_ok[track] is not False:
            # the rows' count is an argument: the padding rows are not evaluated
            got = self._attempt(
                self._map_ok,
                track,
                lambda: _MAPPED[self._quick](*common, self._dyn_vals, np.int32(rows)),
            )
            if got is not None:
                return got[0][:rows], got[1][:rows]
        if batching and how == "vmap":
            got = self._attempt(self._vmap_ok, track, lambda: self._vmapped(common))
            if got is not None:
                return got[0][:rows], got[1][:rows]
        outs, hashes = [], []
        for r in range(rows):
            self._rng.reseed()
            o, h = _SINGLE[self._quick](
                self._program,
                track,
                self._consts,
                self._base_dev,
                [None if a is None else a[r] for a in idx],
                [None if a is None else a[r] for a in val],
                self._dyn_vals,
            )
            o, h = jax.device_get((o, h))
            outs.append(np.asarray(o))
            hashes.append(np.asarray(h))
        return np.stack(outs), np.stack(hashes)

    def _attempt(
        self, ok: dict[bool, bool | None], track: bool, call: Callable[[], Any]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """One batched call's (outputs, hashes), or None where this kind of batch fails
        for the first time: `ok` remembers it, `batch_fallbacks` says why, and the
        loop takes the rows (no warning: the results are the same, only slower, as in
        torch). A failure after a success is f's own error, raised."""
        try:
            o, h = jax.device_get(call())
        except Exception as err:
            if ok[track]:
                raise
            ok[track] = False
            self.batch_fallbacks.append(_describe(err))
            return None
        ok[track] = True
        return np.asarray(o), np.asarray(h)

    def _vmapped(self, common: tuple) -> Any:
        """The vmapped batch program on `common` arguments; a jaxlib that does not know
        the option of the YNN-free program gets the default one (the same values)."""
        try:
            return _BATCHED[self._batch_program](*common, self._dyn_vals)
        except Exception as err:
            if self._batch_program != 2 or "compile option" not in str(err):
                raise
            self._batch_program = self._quick
            self.batch_fallbacks.append(_describe(err))
            return _BATCHED[self._batch_program](*common, self._dyn_vals)

    def _eager_point(self, point: Point) -> Evaluation:
        blocks = [b.copy() for b in self._base_np]
        for b, indices, values in point.deltas:
            values = np.asarray(values, dtype=np.float64)
            if whole(indices, blocks[b].size):
                blocks[b] += values.reshape(blocks[b].shape)
            else:
                np.add.at(blocks[b], index_array(indices), values)
        dev = [jax.device_put(x, d.sharding) for x, d in zip(blocks, self._base_dev, strict=False)]
        outs = [float(o) for o in self._raw(dev, self._dyn_vals)]
        return Evaluation(outs[0], dict(zip(self._term_names, outs[1:], strict=False)), None, 0)


def _jaxlib() -> tuple[int, ...]:
    """jaxlib's version as numbers (a dev build or release candidate as its release)."""
    import jaxlib

    numbers = []
    for part in jaxlib.__version__.split(".")[:3]:
        digits = re.match(r"\d+", part)
        numbers.append(int(digits.group()) if digits else 0)
    return tuple(numbers)


def _pad_rows(a: np.ndarray | None, pad: int, fill: float) -> np.ndarray | None:
    """`a` with `pad` rows of `fill` appended (`a` itself without padding; np.pad costs
    tens of microseconds a call, a copy of a large block's rows for nothing)."""
    if a is None or pad == 0:
        return a
    out = np.full((a.shape[0] + pad, *a.shape[1:]), fill, a.dtype)
    out[: a.shape[0]] = a
    return out


def _where(eqn: Any) -> str:
    """ " at file:line (function)" of the user code behind an equation, where known."""
    try:
        from jax._src import source_info_util

        return f" at {source_info_util.summarize(eqn.source_info)}"
    except Exception:  # a private helper: absent or changed in another release
        return ""


def _describe(err: Exception) -> str:
    """One line naming why a batch fell back to the loop."""
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def _enable_x64() -> contextlib.AbstractContextManager:
    """A context enabling 64-bit types in JAX for the current thread only."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover - older releases

    return enable_x64()  # pragma: no cover


def _read_only(a: np.ndarray) -> np.ndarray:
    """`a`, marked read-only: the base point is replaced, never written in place."""
    a.flags.writeable = False
    return a


def _dtype(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return str(dtype) if dtype is not None else type(value).__name__


def _nbytes(v: Any) -> int:
    aval = getattr(v, "aval", None)
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    try:
        return int(np.prod(shape)) * np.dtype(dtype).itemsize
    except TypeError:
        return 0
