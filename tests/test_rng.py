"""`GlobalRng`: Python's and NumPy's global generators come back exactly as they were,
whatever f drew from them, on the fast path (a copy of NumPy's state in memory) and on
the others (a cached Gaussian, another bit generator installed by the user)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pytest_gradcheck.backends._rng import GlobalRng


def _numpy_state():
    state = np.random.get_bit_generator().state
    legacy = np.random.get_state(legacy=False)
    return repr(state), legacy.get("has_gauss"), legacy.get("gauss")


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    bit_generator = np.random.get_bit_generator()
    saved_np, saved_py = np.random.get_state(), random.getstate()
    yield
    np.random.set_bit_generator(bit_generator)
    np.random.set_state(saved_np)
    random.setstate(saved_py)


def _draw_like_f(rng: GlobalRng) -> None:
    for _ in range(3):  # evaluations: reseeded, then f draws from both
        rng.reseed()
        np.random.rand(700)  # past the 624 words: the state is regenerated
        np.random.randn(3)  # leaves a Gaussian cached
        random.gauss(0.0, 1.0)


@pytest.mark.parametrize("gaussian", [False, True], ids=["words-only", "gaussian-cached"])
def test_global_generators_come_back_exactly(gaussian):
    np.random.seed(11)
    np.random.rand(100)  # mid-stream
    if gaussian:
        np.random.randn()  # a cached Gaussian is part of the state: the slow path
    random.seed(3)
    random.random()
    before, py_before = _numpy_state(), random.getstate()
    rng = GlobalRng(5)
    assert (rng._np_memory is not None) is (not gaussian)
    _draw_like_f(rng)
    rng.restore()
    assert _numpy_state() == before
    assert random.getstate() == py_before
    # and the next draws are the ones the user would have had
    np.random.seed(11)
    np.random.rand(100)
    if gaussian:
        np.random.randn()
    start = np.random.get_state()
    expected = np.random.rand(5), np.random.randn(2)
    np.random.set_state(start)
    rng = GlobalRng(5)
    _draw_like_f(rng)
    rng.restore()
    np.testing.assert_array_equal(np.random.rand(5), expected[0])
    np.testing.assert_array_equal(np.random.randn(2), expected[1])


def test_another_bit_generator_installed_by_the_user_comes_back():
    np.random.set_bit_generator(np.random.PCG64(7))
    np.random.rand(3)
    before = _numpy_state()
    rng = GlobalRng(5)
    assert rng._np_memory is None  # not the legacy MT19937: the general path
    _draw_like_f(rng)
    rng.restore()
    assert _numpy_state() == before
    assert isinstance(np.random.get_bit_generator(), np.random.PCG64)


def _draws():
    return (
        random.random(),
        random.gauss(0.0, 1.0),
        np.random.rand(3).tolist(),
        np.random.randn(3).tolist(),
    )


def _seeded_draws(seed):
    random.seed(seed)
    np.random.seed(seed)
    return _draws()


@pytest.mark.parametrize("python_layout", [True, False], ids=["written", "random.seed"])
def test_every_reseed_gives_what_seeding_gives(monkeypatch, python_layout):
    """A reseed writes Python's seeded words (or calls random.seed where the layout is
    not CPython's) and seeds NumPy only where f drew from it: whatever f drew before,
    and whether it drew or not, the next draws are those after random.seed and
    np.random.seed, a cached Gaussian of either included."""
    from pytest_gradcheck.backends import _rng

    if not python_layout:
        monkeypatch.setattr(_rng, "_python_layout_known", lambda: False)
    expected = _seeded_draws(9)
    random.seed(1)
    np.random.seed(1)
    random.gauss(0.0, 1.0)  # a Gaussian cached in Python's generator before the check
    rng = GlobalRng(9)
    assert (rng._py_seeded is not None) is python_layout
    for drew in (True, False, False, True, True, False):
        rng.reseed()
        if drew:
            assert _draws() == expected  # (leaves Gaussians cached in both generators)
        else:
            assert random.random.__self__.gauss_next is None
    rng.reseed()
    assert _draws() == expected
    rng.restore()


def test_a_reseed_seeds_numpy_again_after_f_reseeded_it_itself():
    expected = _seeded_draws(4)
    rng = GlobalRng(4)
    rng.reseed()
    np.random.seed(123)  # f seeds NumPy itself, and draws nothing
    rng.reseed()
    assert _draws() == expected
    rng.restore()


@pytest.mark.parametrize("f_draws", [False, True], ids=["f-draws-nothing", "f-draws"])
@pytest.mark.parametrize("python_layout", [True, False], ids=["memory", "getstate"])
def test_the_states_come_back_whether_f_drew_or_not(monkeypatch, f_draws, python_layout):
    """Python's state comes back from a copy of its memory (or getstate), a cached
    Gaussian included; NumPy's from its words alone where nothing was drawn since the
    last seed (no Gaussian can be cached then), or through a seed that clears one."""
    from pytest_gradcheck.backends import _rng

    if not python_layout:
        monkeypatch.setattr(_rng, "_python_layout_known", lambda: False)
    random.seed(21)
    random.gauss(0.0, 1.0)  # leaves gauss_next set
    np.random.seed(22)
    np.random.rand(5)
    py_before, np_before = random.getstate(), _numpy_state()
    assert py_before[2] is not None
    rng = GlobalRng(3)
    assert (rng._py_memory is not None) is python_layout
    for _ in range(3):
        rng.reseed()
        if f_draws:
            _draws()
    rng.restore()
    assert random.getstate() == py_before
    assert _numpy_state() == np_before
    expected = (random.gauss(0.0, 1.0), np.random.randn(3).tolist())
    random.setstate(py_before)
    np.random.seed(22)
    np.random.rand(5)
    assert (random.gauss(0.0, 1.0), np.random.randn(3).tolist()) == expected


def test_a_generator_f_installs_is_seeded_and_the_users_comes_back():
    """f installing another bit generator (``np.random.set_bit_generator``) gets it
    seeded like the global one, and the user's own generator object, with its state,
    is the global one again after the check: its memory, read and written by address,
    is held by the check all along."""
    np.random.seed(31)
    np.random.rand(3)
    user_generator, before = np.random.get_bit_generator(), _numpy_state()
    rng = GlobalRng(6)
    rng.reseed()
    np.random.set_bit_generator(np.random.PCG64(2))  # f installs another, then draws
    np.random.rand(2)
    rng.reseed()
    expected = np.random.RandomState(np.random.PCG64(6))  # np.random.seed's way
    assert np.random.rand(3).tolist() == expected.rand(3).tolist()
    rng.restore()
    assert np.random.get_bit_generator() is user_generator
    assert _numpy_state() == before


def test_a_monkeypatched_random_function_falls_back_to_getstate(monkeypatch):
    random.seed(8)
    before = random.getstate()
    monkeypatch.setattr(random, "random", lambda: 0.5)  # a plain function: no __self__
    rng = GlobalRng(2)
    assert rng._py_memory is None and rng._py_seeded is None
    rng.reseed()
    assert random.randint(0, 10**9) == random.Random(2).randint(0, 10**9)
    rng.restore()
    assert random.getstate() == before
