"""The strategies of `pytest_gradcheck.strategies`, drawn for real by Hypothesis."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from pytest_gradcheck import strategies as gst

FAST = settings(max_examples=30, deadline=None, database=None)
TINY = np.finfo(np.float64).tiny  # the smallest normal float64


def _normal_finite_bounded(a: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> None:
    assert a.dtype == np.float64
    assert np.all(np.isfinite(a))
    assert np.all((a >= lo) & (a <= hi))
    assert not np.any((a != 0) & (np.abs(a) < TINY)), "subnormal element"


def test_import_pulls_in_neither_torch_nor_jax() -> None:
    code = (
        "import sys; import pytest_gradcheck.strategies as s; "
        "s.arrays('numpy', 3); s.shapes(); s.mlp_params('numpy'); "
        "bad = [m for m in ('torch', 'jax') if m in sys.modules]; "
        "assert not bad, bad; assert 'hypothesis' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_package_does_not_import_hypothesis() -> None:
    code = (
        "import sys; import pytest_gradcheck, pytest_gradcheck.plugin; "
        "assert 'hypothesis' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@FAST
@given(gst.shapes(min_dims=2, max_dims=3, min_side=2, max_side=4))
def test_shapes_respect_bounds(shape: tuple[int, ...]) -> None:
    assert 2 <= len(shape) <= 3
    assert all(2 <= side <= 4 for side in shape)


@FAST
@given(gst.batch_features(min_batch=2, max_batch=5, min_features=3, max_features=4))
def test_batch_features_respect_bounds(bf: tuple[int, int]) -> None:
    batch, features = bf
    assert 2 <= batch <= 5 and 3 <= features <= 4


def test_shapes_shrink_to_the_smallest() -> None:
    from hypothesis import find

    assert find(gst.shapes(min_dims=1, max_dims=3), lambda s: True) == (1,)
    assert find(gst.batch_features(), lambda bf: bf[0] > 1) == (2, 1)


@FAST
@given(gst.arrays("numpy", gst.shapes(max_dims=3)))
def test_numpy_arrays_are_finite_bounded_normal_float64(a: np.ndarray) -> None:
    _normal_finite_bounded(a)
    assert a.flags.c_contiguous and a.flags.writeable


@FAST
@given(gst.arrays("numpy", (4, 3), min_value=-3.0, max_value=0.5))
def test_bounds_are_kept(a: np.ndarray) -> None:
    assert a.shape == (4, 3)
    _normal_finite_bounded(a, -3.0, 0.5)


@FAST
@given(gst.arrays("numpy", 5, kink_margin=0.1))
def test_kink_margin_keeps_values_away_from_zero(a: np.ndarray) -> None:
    assert a.shape == (5,)
    assert np.all(np.abs(a) >= 0.1)
    _normal_finite_bounded(a)


@FAST
@given(gst.arrays("numpy", 6, min_value=-2.0, max_value=2.0, kink_margin=0.05, kinks=(-1, 0, 1)))
def test_kink_margin_around_several_kinks(a: np.ndarray) -> None:
    for k in (-1.0, 0.0, 1.0):
        assert np.all(np.abs(a - k) >= 0.05)


def test_kink_margin_shrinks_to_the_positive_side() -> None:
    from hypothesis import find

    found = find(gst.elements(kink_margin=0.25), lambda v: True)
    assert 0.25 <= found <= 1.0


@FAST
@given(gst.arrays("numpy", 8, min_value=-2.0, max_value=2.0, kinks=(-1, 0, 5), at_kinks=True))
def test_at_kinks_draws_values_on_the_kinks_in_range(a: np.ndarray) -> None:
    _normal_finite_bounded(a, -2.0, 2.0)
    assert not np.any(a == 5.0)  # out of range: never drawn


def test_at_kinks_does_put_values_exactly_on_a_kink() -> None:
    from hypothesis import find

    mixed = find(
        gst.arrays("numpy", 6, at_kinks=True),
        lambda a: bool(np.any(a == 0.0) and np.any(np.abs(a) > 0.1)),
    )
    assert np.any(mixed == 0.0)
    assert find(gst.elements(kinks=(0.7,), at_kinks=True), lambda v: True) == 0.7


@FAST
@given(gst.arrays("numpy", 4, unique=True))
def test_unique_elements(a: np.ndarray) -> None:
    assert len(set(a.tolist())) == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_value": 1.0, "max_value": -1.0},
        {"min_value": math.inf},
        {"kink_margin": 0.0},
        {"kink_margin": 2.0},  # nothing in [-1, 1] is 2 away from 0
        {"at_kinks": True, "kink_margin": 0.1},
        {"at_kinks": True, "kinks": (3.0,)},  # no kink in [-1, 1]
    ],
)
def test_invalid_element_options(kwargs: dict) -> None:
    with pytest.raises(InvalidArgument):
        gst.arrays("numpy", 3, **kwargs).example()


def test_invalid_framework_and_mixed_options() -> None:
    with pytest.raises(InvalidArgument, match="framework"):
        gst.arrays("tensorflow", 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="either"):
        gst.arrays("numpy", 3, elements=st.just(1.0), kink_margin=0.1)
    with pytest.raises(InvalidArgument):
        gst.batch_features(min_batch=3, max_batch=2)
    with pytest.raises(InvalidArgument, match="sizes"):
        gst.mlp_params("numpy", sizes=[4])
    with pytest.raises(InvalidArgument, match="scale"):
        gst.mlp_params("numpy", scale=-1.0)


@FAST
@given(gst.arrays("numpy", (2, 2), elements=st.sampled_from([0.5, -0.5])))
def test_custom_elements(a: np.ndarray) -> None:
    assert set(np.abs(a).ravel().tolist()) == {0.5}


def _check_mlp(params: dict, to_numpy, bias: bool = True) -> list[int]:
    names = list(params)
    layers = len([n for n in names if n.startswith("W")])
    expected = [f"{p}{i}" for i in range(1, layers + 1) for p in (("W", "b") if bias else ("W",))]
    assert names == expected
    widths = [to_numpy(params["W1"]).shape[0]]
    for i in range(1, layers + 1):
        w = to_numpy(params[f"W{i}"])
        assert w.shape[0] == widths[-1]
        widths.append(w.shape[1])
        if bias:
            assert to_numpy(params[f"b{i}"]).shape == (w.shape[1],)
    for value in params.values():
        _normal_finite_bounded(to_numpy(value), -2.0, 2.0)
    return widths


@FAST
@given(gst.mlp_params("numpy", min_layers=1, max_layers=3, max_width=5, scale=2.0))
def test_mlp_params_have_consistent_shapes(params: dict) -> None:
    widths = _check_mlp(params, np.asarray)
    assert 2 <= len(widths) <= 4
    assert all(1 <= w <= 5 for w in widths)


@FAST
@given(gst.mlp_params("numpy", in_features=7, out_features=1, bias=False))
def test_mlp_params_pinned_ends_without_bias(params: dict) -> None:
    widths = _check_mlp(params, np.asarray, bias=False)
    assert widths[0] == 7 and widths[-1] == 1


@FAST
@given(gst.mlp_params("numpy", sizes=[9, 4, 2], scale=0.5, fan_in=True))
def test_mlp_params_fixed_sizes_fan_in_scale(params: dict) -> None:
    assert params["W1"].shape == (9, 4) and params["W2"].shape == (4, 2)
    assert np.all(np.abs(params["W1"]) <= 0.5 / 3.0)
    assert np.all(np.abs(params["W2"]) <= 0.5 / 2.0)
    assert np.all(np.abs(params["b1"]) <= 0.5)


@FAST
@given(gst.mlp_params("numpy", sizes=st.just([3, 3]), scale=st.sampled_from([1e-3, 1.0])))
def test_mlp_params_scale_strategy(params: dict) -> None:
    bound = max(np.abs(v).max() for v in params.values())
    assert bound <= 1.0


def test_torch_tensors() -> None:
    torch = pytest.importorskip("torch")

    @FAST
    @given(
        x=gst.arrays("torch", gst.shapes(max_dims=2), kink_margin=0.01),
        p=gst.mlp_params("torch", max_width=4),
    )
    def check(x, p) -> None:
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float64
        assert x.device.type == "cpu" and not x.requires_grad
        assert bool((x.abs() >= 0.01).all())
        _normal_finite_bounded(x.numpy())
        assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in p.values())
        _check_mlp(p, lambda t: t.numpy())

    check()


def test_jax_arrays_are_float64_without_global_x64() -> None:
    jax = pytest.importorskip("jax")

    @FAST
    @given(x=gst.arrays("jax", (2, 3)), p=gst.mlp_params("jax", max_width=4))
    def check(x, p) -> None:
        assert isinstance(x, jax.Array) and str(x.dtype) == "float64"
        _normal_finite_bounded(np.asarray(x))
        assert all(str(v.dtype) == "float64" for v in p.values())
        _check_mlp(p, np.asarray)

    before = jax.config.jax_enable_x64
    check()
    assert jax.config.jax_enable_x64 == before  # the 64-bit setting was scoped to the draw


def test_the_same_draw_gives_the_same_values_in_every_framework() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    from hypothesis import find

    found = {
        fw: np.asarray(find(gst.arrays(fw, 3), lambda a: float(np.asarray(a).sum()) > 1.5))
        for fw in ("numpy", "torch", "jax")
    }
    assert np.array_equal(found["numpy"], found["torch"])
    assert np.array_equal(found["numpy"], found["jax"])
