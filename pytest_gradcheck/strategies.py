"""Hypothesis strategies for gradient checks: shapes, float64 arrays and MLP parameters.

    from hypothesis import given, settings
    from pytest_gradcheck import strategies as gst

    @settings(deadline=None)
    @given(x=gst.arrays("torch", gst.shapes(min_dims=2, max_dims=2)))
    def test_tanh(gradcheck, x):
        gradcheck(lambda x: x.tanh().sum(), x)

Importing this module is the only way pytest-gradcheck imports Hypothesis. It imports
NumPy (Hypothesis's NumPy extra needs it) but neither torch nor JAX: a strategy for
``"torch"`` or ``"jax"`` imports its framework when it is created.

Every array is drawn as a float64 NumPy array by `hypothesis.extra.numpy.arrays` and
then handed to the framework with its values unchanged: `torch.from_numpy` for torch,
`jax.numpy.asarray` under a scoped 64-bit setting for JAX. So one draw gives
bit-identical values in the three frameworks, and every framework shrinks the same way.
(`hypothesis.extra.array_api` was considered for the frameworks: torch is not an Array
API namespace, and for ``jax.numpy`` it builds an array element by element, about 20
times slower per example than drawing through NumPy.)

Elements are finite, bounded and never subnormal; `kink_margin` keeps them a margin
away from the kinks of the function under test (zero by default, for ReLU, ``abs``
and friends) when crossing a kink is not what the test is about.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

__all__ = [
    "Framework",
    "arrays",
    "batch_features",
    "elements",
    "layer_sizes",
    "mlp_params",
    "shapes",
]

#: The frameworks the strategies produce arrays for.
Framework = Literal["numpy", "torch", "jax"]
_FRAMEWORKS = ("numpy", "torch", "jax")

#: A shape, a single side, or a strategy of shapes.
ShapeLike = int | tuple[int, ...] | st.SearchStrategy[tuple[int, ...]]


# -- shapes -----------------------------------------------------------------------------


def shapes(
    min_dims: int = 1,
    max_dims: int | None = None,
    min_side: int = 1,
    max_side: int | None = None,
) -> st.SearchStrategy[tuple[int, ...]]:
    """Array shapes with `min_dims`..`max_dims` dimensions of `min_side`..`max_side` each.

    A thin wrapper over `hypothesis.extra.numpy.array_shapes` with defaults suited to
    gradient checks: at least one element per side (``min_side=1``) and small sides
    (``max_side`` defaults to ``min_side + 4``), since a check costs two evaluations of
    the function per checked coordinate. Shapes shrink toward fewer dimensions and
    toward ``min_side``.
    """
    if max_side is None:
        max_side = min_side + 4
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


def batch_features(
    min_batch: int = 1,
    max_batch: int = 8,
    min_features: int = 1,
    max_features: int = 8,
) -> st.SearchStrategy[tuple[int, int]]:
    """``(batch, features)`` pairs: a batch dimension and a feature dimension, each bounded.

    Shrinks toward ``(min_batch, min_features)``, so a bug that needs two rows in the
    batch shrinks to ``batch == 2``.
    """
    _check_range("batch", min_batch, max_batch, 0)
    _check_range("features", min_features, max_features, 0)
    return st.tuples(
        st.integers(min_batch, max_batch),
        st.integers(min_features, max_features),
    )


def layer_sizes(
    min_layers: int = 1,
    max_layers: int = 3,
    min_width: int = 1,
    max_width: int = 8,
    in_features: int | None = None,
    out_features: int | None = None,
) -> st.SearchStrategy[list[int]]:
    """The widths ``[d0, d1, ..., dL]`` of an MLP with `min_layers`..`max_layers` layers.

    Layer ``i`` maps ``d(i-1)`` features to ``di``. `in_features` and `out_features`
    pin ``d0`` and ``dL``; the other widths lie in `min_width`..`max_width`. Shrinks
    toward one layer of the smallest widths.
    """
    _check_range("layers", min_layers, max_layers, 1)
    _check_range("width", min_width, max_width, 1)
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InvalidArgument(f"layer_sizes: {name}={value!r} must be a positive int")
    width = st.integers(min_width, max_width)

    @st.composite
    def sizes(draw: Callable[..., Any]) -> list[int]:
        layers = draw(st.integers(min_layers, max_layers))
        first = in_features if in_features is not None else draw(width)
        hidden = [draw(width) for _ in range(layers - 1)]
        last = out_features if out_features is not None else draw(width)
        return [first, *hidden, last]

    return sizes()


# -- elements and arrays ----------------------------------------------------------------


def elements(
    min_value: float = -1.0,
    max_value: float = 1.0,
    kink_margin: float | None = None,
    kinks: Sequence[float] = (0.0,),
    at_kinks: bool = False,
) -> st.SearchStrategy[float]:
    """Finite, non-subnormal float64 values in ``[min_value, max_value]``.

    With `kink_margin`, every value keeps at least that distance from each point of
    `kinks` (``|x - k| >= kink_margin``; by default the one kink at zero of ReLU, ``abs``
    and ``max(x, 0)``), so the finite differences of a check never straddle a kink
    unless the step exceeds the margin. Values shrink toward simple values (Hypothesis
    prefers integers) of the allowed interval nearest zero, the positive one on a tie.

    With `at_kinks`, the opposite: some values are exactly a kink of `kinks` (those in
    the range), the others anywhere in it, and values shrink toward the kinks. An input
    exactly at a kink is an exact tie (a ReLU input of 0, a zero-padded row): the test
    of the check's tie handling, where any valid subgradient must pass.
    """
    for name, value in (("min_value", min_value), ("max_value", max_value)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgument(f"elements: {name}={value!r} must be a finite number")
    if min_value > max_value:
        raise InvalidArgument(f"elements: min_value={min_value} exceeds max_value={max_value}")
    if at_kinks:
        if kink_margin is not None:
            raise InvalidArgument("elements: at_kinks and kink_margin exclude each other")
        inside = sorted({float(k) for k in kinks if min_value <= k <= max_value}, key=abs)
        if not inside:
            raise InvalidArgument(
                f"elements: at_kinks, but no kink of {tuple(kinks)} is in "
                f"[{min_value}, {max_value}]"
            )
        return st.one_of(st.sampled_from(inside), _floats(min_value, max_value))
    if kink_margin is None:
        return _floats(min_value, max_value)
    if not isinstance(kink_margin, (int, float)) or not kink_margin > 0:
        raise InvalidArgument(f"elements: kink_margin={kink_margin!r} must be a positive number")
    intervals = _away_from(float(min_value), float(max_value), kinks, float(kink_margin))
    if not intervals:
        raise InvalidArgument(
            f"elements: no value in [{min_value}, {max_value}] keeps kink_margin={kink_margin} "
            f"from the kinks {tuple(kinks)}; widen the range or shrink the margin"
        )
    # the interval nearest zero first (positive on a tie), so that values shrink into it
    intervals.sort(key=lambda iv: (_distance_to_zero(*iv), iv[0] < 0))
    return st.one_of(*(_floats(lo, hi) for lo, hi in intervals))


def arrays(
    framework: Framework,
    shape: ShapeLike,
    *,
    min_value: float = -1.0,
    max_value: float = 1.0,
    kink_margin: float | None = None,
    kinks: Sequence[float] = (0.0,),
    elements: st.SearchStrategy[float] | None = None,
    unique: bool = False,
    at_kinks: bool = False,
) -> st.SearchStrategy[Any]:
    """Float64 arrays of `framework` ("numpy", "torch" or "jax") with the given `shape`.

    `shape` is an int, a tuple or a strategy of shapes (for example `shapes()`).
    Elements are finite, non-subnormal and in ``[min_value, max_value]``; `kink_margin`
    keeps them ``|x - k| >= kink_margin`` away from each kink ``k`` in `kinks` (see
    `elements`); `at_kinks` puts some of them exactly on a kink instead (exact ties,
    see `elements`). Pass `elements` to draw from your own strategy of floats instead
    (it cannot be combined with the bounds). With `unique`, no two elements are equal,
    which keeps ties out of ``max``, sorting and pooling.

    Drawn by `hypothesis.extra.numpy.arrays` as a float64 NumPy array, then:

    * ``"numpy"``: returned as is (C-contiguous, writeable);
    * ``"torch"``: ``torch.from_numpy`` of it, a float64 CPU tensor with
      ``requires_grad=False`` (the check turns on what it needs);
    * ``"jax"``: ``jax.numpy.asarray(..., dtype=float64)`` created under a scoped
      ``jax.enable_x64(True)``, so the array is float64 even when 64-bit mode is off
      globally. Operations on it *outside* the check then compute in float32 (with a
      JAX warning); inside ``gradcheck`` the JAX backend evaluates in float64. Turn
      64-bit mode on globally (``jax.config.update("jax_enable_x64", True)``) if your
      test computes with the arrays itself.

    The torch and JAX imports happen when this function is called, not when this module
    is imported.
    """
    convert = _converter(framework)
    if elements is None:
        elems = _elements_strategy(min_value, max_value, kink_margin, kinks, at_kinks)
    else:
        defaults = (-1.0, 1.0, None, (0.0,), False)
        if (min_value, max_value, kink_margin, tuple(kinks), at_kinks) != defaults:
            raise InvalidArgument(
                "arrays: pass either elements= or "
                "min_value/max_value/kink_margin/kinks/at_kinks, not both"
            )
        elems = elements
    if isinstance(shape, int):
        shape = (shape,)
    drawn = hnp.arrays(np.float64, shape, elements=elems, unique=unique)
    return drawn if convert is None else drawn.map(convert)


def mlp_params(
    framework: Framework,
    sizes: Sequence[int] | st.SearchStrategy[Sequence[int]] | None = None,
    *,
    min_layers: int = 1,
    max_layers: int = 3,
    min_width: int = 1,
    max_width: int = 8,
    in_features: int | None = None,
    out_features: int | None = None,
    scale: float | st.SearchStrategy[float] = 1.0,
    fan_in: bool = False,
    bias: bool = True,
    weight_name: str = "W",
    bias_name: str = "b",
) -> st.SearchStrategy[dict[str, Any]]:
    """Parameter-block dicts of an MLP: ``{"W1": ..., "b1": ..., "W2": ..., "b2": ...}``.

    Layer ``i`` has a weight ``W{i}`` of shape ``(d(i-1), di)`` and a bias ``b{i}`` of
    shape ``(di,)``, the CS231n layout (``h = x @ W1 + b1``), as float64 arrays of
    `framework`. The widths ``[d0, ..., dL]`` come from `sizes` (a fixed sequence or a
    strategy of them) or, by default, from ``layer_sizes(min_layers, max_layers,
    min_width, max_width, in_features, out_features)``; read them back from the shapes
    (``params["W1"].shape[0]`` is the input width).

    Elements are Hypothesis floats in ``[-scale, scale]`` (finite, non-subnormal);
    `scale` is a number or a strategy of positive numbers, drawn once per example, to
    check over random initialisation scales. With `fan_in`, the bound of ``W{i}`` is
    ``scale / sqrt(d(i-1))`` (LeCun-style), which keeps activations of deep stacks O(1).
    `bias=False` leaves the biases out. The dict's keys are ``weight_name + str(i)`` and
    ``bias_name + str(i)``, counted from 1, in layer order.
    """
    convert = _converter(framework)
    if sizes is None:
        size_strategy: st.SearchStrategy[Sequence[int]] = layer_sizes(
            min_layers, max_layers, min_width, max_width, in_features, out_features
        )
    elif isinstance(sizes, st.SearchStrategy):
        size_strategy = sizes
    else:
        size_strategy = st.just(_check_sizes(sizes))
    scale_strategy = scale if isinstance(scale, st.SearchStrategy) else st.just(_check_scale(scale))

    @st.composite
    def params(draw: Callable[..., Any]) -> dict[str, Any]:
        widths = _check_sizes(draw(size_strategy))
        bound = _check_scale(draw(scale_strategy))
        out: dict[str, Any] = {}
        for i, (fan, width) in enumerate(itertools.pairwise(widths), start=1):
            w_bound = bound / math.sqrt(fan) if fan_in else bound
            blocks = [(f"{weight_name}{i}", (fan, width), w_bound)]
            if bias:
                blocks.append((f"{bias_name}{i}", (width,), bound))
            for name, shape, b in blocks:
                value = draw(hnp.arrays(np.float64, shape, elements=_floats(-b, b)))
                out[name] = value if convert is None else convert(value)
        return out

    return params()


# -- helpers ----------------------------------------------------------------------------


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=lo,
        max_value=hi,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
        width=64,
    )


def _distance_to_zero(lo: float, hi: float) -> float:
    return 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))


def _elements_strategy(
    min_value: float,
    max_value: float,
    kink_margin: float | None,
    kinks: Sequence[float],
    at_kinks: bool,
) -> st.SearchStrategy[float]:
    return elements(min_value, max_value, kink_margin, kinks, at_kinks)


def _away_from(
    lo: float, hi: float, kinks: Sequence[float], margin: float
) -> list[tuple[float, float]]:
    """``[lo, hi]`` minus the open intervals ``(k - margin, k + margin)``, as closed pieces."""
    pieces = [(lo, hi)]
    for k in sorted(float(k) for k in kinks):
        if not math.isfinite(k):
            raise InvalidArgument(f"elements: kink {k!r} must be finite")
        cut_lo, cut_hi = k - margin, k + margin
        nxt: list[tuple[float, float]] = []
        for a, b in pieces:
            if b < cut_lo or a > cut_hi:
                nxt.append((a, b))
                continue
            if a <= cut_lo:
                nxt.append((a, cut_lo))
            if b >= cut_hi:
                nxt.append((cut_hi, b))
        pieces = nxt
    return pieces


def _converter(framework: str) -> Callable[[np.ndarray], Any] | None:
    if framework == "numpy":
        return None
    if framework == "torch":
        import torch

        # Hypothesis shows a falsifying draw as ``from_numpy(array([...]))``
        return torch.from_numpy
    if framework == "jax":
        import jax.numpy as jnp

        def jax_float64(value: np.ndarray) -> Any:
            with _x64():
                return jnp.asarray(value, dtype=jnp.float64)

        return jax_float64
    raise InvalidArgument(
        f"framework must be one of {', '.join(map(repr, _FRAMEWORKS))}, got {framework!r}"
    )


def _x64() -> Any:
    """A context manager that turns on JAX's 64-bit mode for its body only."""
    import jax

    state = getattr(jax, "enable_x64", None)
    if callable(state):  # jax >= 0.6: a config state, called with the value
        return state(True)
    from jax.experimental import enable_x64  # older releases

    return enable_x64()


def _check_range(name: str, lo: int, hi: int, least: int) -> None:
    if not isinstance(lo, int) or not isinstance(hi, int) or lo < least or lo > hi:
        raise InvalidArgument(
            f"min_{name}={lo!r} and max_{name}={hi!r} must be ints with {least} <= "
            f"min_{name} <= max_{name}"
        )


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    widths = list(sizes)
    if len(widths) < 2 or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise InvalidArgument(
            f"mlp_params: sizes={sizes!r} must list at least two positive widths "
            "(input, ..., output)"
        )
    return widths


def _check_scale(scale: float) -> float:
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise InvalidArgument(f"mlp_params: scale={scale!r} must be a positive finite number")
    return float(scale)
