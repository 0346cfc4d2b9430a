"""Bad input never passes silently, on every backend alike.

Inputs the check cannot learn anything from, options a backend cannot honour and
values the check cannot compute with raise a ValueError or TypeError that names the
block or the option and says what to do, never a GradcheckError and never a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pytest_gradcheck import gradcheck

FRAMEWORKS = ("numpy", "torch", "jax")


def square_check(framework: str, x: np.ndarray) -> tuple[Callable[..., Any], tuple, dict]:
    """``sum(x**2)`` in `framework` with `x` as its one block: (f, args, keywords)."""
    if framework == "torch":
        torch = pytest.importorskip("torch")
        return (lambda t: t.pow(2).sum()), (torch.from_numpy(x.copy()),), {}
    if framework == "jax":
        jax = pytest.importorskip("jax")
        jnp = jax.numpy
        return (lambda a: jnp.sum(a**2)), (jnp.asarray(x),), {}
    return (lambda a: np.sum(a**2)), (x.copy(),), {"grad": lambda a: 2 * a}


# -- empty blocks -------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_empty_block_is_an_error_naming_it(framework):
    f, args, kw = square_check(framework, np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"block 'args\[0\]' has no entries.*wrt="):
        gradcheck(f, *args, **kw)


def test_an_empty_block_beside_a_real_one_is_an_error_and_wrt_leaves_it_out():
    x, empty = np.arange(1.0, 4.0), np.zeros(0)

    def f(a, b):
        return np.sum(a**2) + np.sum(b**2)

    def g(a, b):
        return 2 * a, 2 * b

    with pytest.raises(ValueError, match=r"block 'args\[1\]' has no entries"):
        gradcheck(f, x, empty, grad=g)
    assert gradcheck(f, x, empty, grad=g, wrt=["args[0]"]).passed


def test_an_empty_module_parameter_is_named():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2).double()
    model.register_parameter("extra", torch.nn.Parameter(torch.zeros(0, dtype=torch.float64)))
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"block 'extra' has no entries"):
        gradcheck(lambda x: model(x).sum(), x, params=model)
    assert gradcheck(lambda x: model(x).sum(), x, params=model, wrt=["weight", "bias"]).passed


# -- devices ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:3", "gpu:1"])
def test_numpy_refuses_a_gpu_device_rather_than_running_on_the_cpu(device):
    f, args, kw = square_check("numpy", np.arange(1.0, 4.0))
    with pytest.raises(ValueError, match=rf"device='{device}'.*NumPy.*device=None"):
        gradcheck(f, *args, device=device, **kw)
    assert gradcheck(f, *args, device="cpu", **kw).options["device"] == "cpu"


@pytest.mark.parametrize("device", ["gpu:1", "cuda:1", "gpu", "cuda", "cpu"])
def test_every_documented_device_spelling_is_a_valid_option(device):
    from pytest_gradcheck._options import resolve

    assert resolve({"device": device}).device == device


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:0", "CUDA", 3])
def test_a_bad_device_names_every_accepted_spelling(device):
    f, args, kw = square_check("numpy", np.arange(1.0, 4.0))
    with pytest.raises(ValueError, match=r"'cpu', 'cuda' or 'gpu'.*'gpu:1'.*torch\.device"):
        gradcheck(f, *args, device=device, **kw)


def test_jax_takes_an_indexed_gpu_as_documented():
    f, args, kw = square_check("jax", np.arange(1.0, 4.0))
    with pytest.raises(ValueError) as info:  # no such GPU here: JAX's own refusal
        gradcheck(f, *args, device="gpu:99", **kw)
    assert "device must be" not in str(info.value)
    assert "gpu:99" in str(info.value)


def test_torch_takes_a_torch_device_and_records_its_text():
    torch = pytest.importorskip("torch")
    f, args, kw = square_check("torch", np.arange(1.0, 4.0))
    result = gradcheck(f, *args, device=torch.device("cpu"), **kw)
    assert result.passed and result.options["device"] == "cpu"


def test_torch_takes_gpu_as_an_alias_of_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("the refusal is for a machine without a GPU")
    f, args, kw = square_check("torch", np.arange(1.0, 4.0))
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        gradcheck(f, *args, device="gpu", **kw)


def test_a_run_wide_gpu_device_fails_each_numpy_check_saying_how_to_opt_out(pytester):
    pytester.makepyfile(
        test_np="""
        import numpy as np
        import pytest
        from pytest_gradcheck import gradcheck

        def test_plain():
            gradcheck(lambda x: np.sum(x**2), np.ones(3), grad=lambda x: 2 * x)

        @pytest.mark.gradcheck(device=None)
        def test_opted_out():
            gradcheck(lambda x: np.sum(x**2), np.ones(3), grad=lambda x: 2 * x)
        """
    )
    result = pytester.runpytest("--gradcheck-device=cuda")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*device='cuda'*NumPy*"])


# -- NaN and infinity in a block ----------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_nan_in_a_block_is_named_with_its_index(framework):
    x = np.arange(1.0, 7.0).reshape(2, 3)
    x[1, 2] = np.nan
    f, args, kw = square_check(framework, x)
    with pytest.raises(
        ValueError, match=r"block 'args\[0\]' holds nan at index \(1, 2\).*pass finite values"
    ):
        gradcheck(f, *args, **kw)


def test_an_infinity_in_a_params_entry_is_named_and_wrt_is_suggested():
    params = {"W": np.ones(3), "mask": np.array([0.0, -np.inf, 0.0])}

    def f():
        return np.sum(params["W"] ** 2 + np.exp(params["mask"]))

    def g():
        return {"W": 2 * params["W"], "mask": np.exp(params["mask"])}

    with pytest.raises(ValueError, match=r"block 'mask' holds -inf at index 1.*wrt="):
        gradcheck(f, params=params, grad=g)
    assert gradcheck(f, params=params, grad=g, wrt=["W"]).passed


def test_a_loss_that_is_nan_at_the_checked_point_does_not_suggest_a_smaller_eps():
    x = -np.ones(3)  # log of negatives: NaN at the point itself, whatever the step
    # (np.errstate: NumPy's own warning about the log is not the point here)
    with (
        pytest.raises(ValueError, match="the checked point") as info,
        np.errstate(invalid="ignore"),
    ):
        gradcheck(lambda x: np.sum(np.log(x)), x, grad=lambda x: 1 / x)
    assert "eps" not in str(info.value)


def test_jax_and_torch_say_checked_point_alike():
    jax = pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    jnp = jax.numpy
    messages = []
    for f, x in [
        (lambda x: jnp.sum(jnp.log(x)), jnp.asarray(-np.ones(3))),
        (lambda x: x.log().sum(), torch.from_numpy(-np.ones(3))),
    ]:
        with pytest.raises(ValueError) as info:
            gradcheck(f, x)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "the loss at the checked point is nan" in messages[0]


# -- failed backward passes (PyTorch) -----------------------------------------------------


def _linear_function(backward):
    """A custom ``x @ W.T`` Function with the given backward(ctx, g, x, W)."""
    torch = pytest.importorskip("torch")

    class Lin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ w.T

        @staticmethod
        def backward(ctx, g):
            return backward(g, *ctx.saved_tensors)

    return Lin


def test_a_backward_that_raises_inside_gets_no_advice_about_returned_shapes():
    torch = pytest.importorskip("torch")
    lin = _linear_function(lambda g, x, w: (g @ w.T, g.T @ x))  # bug: dx is g @ w
    x = torch.randn(8, 6, dtype=torch.float64)
    params = {
        "W1": torch.randn(5, 6, dtype=torch.float64),
        "W2": torch.randn(3, 5, dtype=torch.float64),
    }

    def f():
        return lin.apply(torch.tanh(x @ params["W1"].T), params["W2"]).pow(2).sum()

    with pytest.raises(ValueError, match="raised an error") as info:
        gradcheck(f, params=params)
    text = str(info.value)
    assert "shaped like that input" not in text and "wrt=" not in text
    assert "'W1'" not in text and "'W2'" not in text  # both fail: naming them says nothing
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_backward_returning_too_few_gradients_gets_the_advice_and_the_block():
    torch = pytest.importorskip("torch")
    lin = _linear_function(lambda g, x, w: (g @ w,))  # one gradient for two inputs
    x = torch.randn(4, 3, dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="incorrect number of gradients") as info:
        gradcheck(lambda: lin.apply(x, w).sum(), params={"W": w})
    assert "one gradient per forward input" in str(info.value)


def test_a_reentrant_checkpoint_says_to_pass_use_reentrant_false():
    torch = pytest.importorskip("torch")
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh()).double()
    x = torch.randn(5, 4, dtype=torch.float64)

    def f(x):
        return checkpoint(block, x, use_reentrant=True).pow(2).sum()

    with pytest.raises(ValueError, match=r"use_reentrant=False") as info:
        gradcheck(f, x, params=block)
    assert "shaped like that input" not in str(info.value)
    assert gradcheck(lambda x: checkpoint(block, x, use_reentrant=False).pow(2).sum(), x).passed


def test_a_check_inside_inference_mode_says_to_leave_it():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.inference_mode(), pytest.raises(ValueError, match=r"inference_mode\(\).*outside"):
        gradcheck(lambda x: model(x).pow(2).sum(), x, params=model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with torch.inference_mode(), torch.inference_mode(False):  # as the message says
        assert gradcheck(lambda x: model(x).pow(2).sum(), x, params=model).passed


# -- wrt naming a subtree -----------------------------------------------------------------


def _nested(framework: str) -> tuple[Callable[..., Any], dict]:
    """A two-layer function of nested params in `framework`: (f(params, x), params)."""
    rng = np.random.default_rng(0)
    raw = {
        "dense1": {"kernel": rng.standard_normal((2, 3)), "bias": rng.standard_normal(3)},
        "dense10": {"kernel": rng.standard_normal((3, 1))},
    }
    if framework == "jax":
        jax = pytest.importorskip("jax")
        jnp = jax.numpy
        params = jax.tree_util.tree_map(jnp.asarray, raw)
        tanh, total = jnp.tanh, jnp.sum
    else:
        torch = pytest.importorskip("torch")
        params = {k: {n: torch.from_numpy(v) for n, v in d.items()} for k, d in raw.items()}
        tanh, total = torch.tanh, torch.sum

    def f(p, x):
        h = tanh(x @ p["dense1"]["kernel"] + p["dense1"]["bias"])
        return total(h @ p["dense10"]["kernel"])

    return f, params


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_wrt_naming_a_subtree_of_args_selects_every_block_under_it(framework):
    f, params = _nested(framework)
    x = params["dense1"]["bias"][None, :2] * 0 + 1  # a (1, 2) input of the same framework
    result = gradcheck(f, params, x, wrt=["args[0]['dense1']"])
    assert sorted(b.name for b in result.blocks) == [
        "args[0]['dense1']['bias']",
        "args[0]['dense1']['kernel']",
    ]  # not dense10, whose name only starts with the same letters
    assert {b.name for b in gradcheck(f, params, x, wrt="args[0]").blocks} == {
        "args[0]['dense1']['bias']",
        "args[0]['dense1']['kernel']",
        "args[0]['dense10']['kernel']",
    }


def test_wrt_naming_a_subtree_of_params_selects_every_block_under_it():
    params = {"dense1": {"W": np.ones((2, 2)), "b": np.zeros(2)}, "out": np.ones(2)}

    def f():
        return np.sum(np.tanh(params["dense1"]["W"] @ params["out"] + params["dense1"]["b"]))

    def g():
        h = np.tanh(params["dense1"]["W"] @ params["out"] + params["dense1"]["b"])
        d = 1 - h**2
        return {
            "dense1": {"W": np.outer(d, params["out"]), "b": d},
            "out": params["dense1"]["W"].T @ d,
        }

    result = gradcheck(f, params=params, grad=g, wrt=["dense1"])
    assert sorted(b.name for b in result.blocks) == ["dense1['W']", "dense1['b']"]


def test_wrt_naming_a_submodule_selects_its_parameters():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model.double()
    x = torch.randn(5, 3, dtype=torch.float64)
    result = gradcheck(lambda x: model(x).sum(), x, params=model, wrt=["2"])
    assert [b.name for b in result.blocks] == ["2.weight", "2.bias"]


def test_an_exact_block_name_wins_over_a_subtree():
    params = {"a": np.ones(2), "a.b": np.ones(3)}

    def f():
        return np.sum(params["a"] ** 2) + np.sum(params["a.b"] ** 2)

    def g():
        return {"a": 2 * params["a"], "a.b": 2 * params["a.b"]}

    assert [b.name for b in gradcheck(f, params=params, grad=g, wrt=["a"]).blocks] == ["a"]


def test_wrt_naming_nothing_says_block_or_subtree():
    f, args, kw = square_check("numpy", np.ones(3))
    with pytest.raises(ValueError, match=r"'args\[1\]', which is not a block.*nor a subtree"):
        gradcheck(f, *args, wrt=["args[1]"], **kw)


# -- smaller things -----------------------------------------------------------------------


def test_a_meta_tensor_block_is_named():
    torch = pytest.importorskip("torch")
    x = torch.randn(3, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match=r"block 'args\[0\]' is on the 'meta' device"):
        gradcheck(lambda x: x.pow(2).sum(), x)


def test_a_grad_key_that_params_lacks_is_an_error():
    params = {"W": np.ones(3)}

    def f():
        return np.sum(params["W"] ** 2)

    with pytest.raises(ValueError, match=r"'w2', which params does not hold.*'W'"):
        gradcheck(f, params=params, grad=lambda: {"W": 2 * params["W"], "w2": np.ones(3)})


def test_a_grad_for_a_params_entry_left_out_by_wrt_is_fine():
    params = {"W": np.ones(3), "b": np.zeros(3)}

    def f():
        return np.sum(params["W"] ** 2 + params["b"])

    def g():
        return {"W": 2 * params["W"], "b": np.ones(3)}

    assert gradcheck(f, params=params, grad=g, wrt=["W"]).passed


@pytest.mark.parametrize("value", ["no", 0, None])
def test_raise_on_fail_must_be_a_bool(value):
    f, args, kw = square_check("numpy", np.ones(3))
    with pytest.raises(TypeError, match="raise_on_fail must be True or False"):
        gradcheck(f, *args, raise_on_fail=value, **kw)


# -- f's own errors while the check evaluates it without grad (PyTorch) --------------------


@pytest.mark.parametrize("batch", [False, True])
def test_a_runtime_error_of_f_at_a_perturbed_point_is_not_swallowed(batch):
    torch = pytest.importorskip("torch")
    calls = []

    def f(x):
        calls.append(torch.is_grad_enabled())
        if len(calls) == 2:  # once, at the first perturbed point (no grad there)
            raise RuntimeError("flaky data loader")
        return x.pow(2).sum()

    with pytest.raises(RuntimeError, match="flaky data loader"):
        gradcheck(f, torch.ones(3, dtype=torch.float64), batch=batch, kinks="off")


def test_an_f_that_needs_autograd_itself_is_still_evaluated_with_grad():
    torch = pytest.importorskip("torch")

    def penalty(x):
        y = x.pow(3).sum()
        (g,) = torch.autograd.grad(y, x, create_graph=True)  # needs grad even at x + h
        return g.pow(2).sum()

    assert gradcheck(penalty, torch.linspace(0.5, 1.5, 4, dtype=torch.float64)).passed


# -- complex inputs ------------------------------------------------------------------


def _complex(framework: str, z: np.ndarray) -> Any:
    if framework == "torch":
        return pytest.importorskip("torch").from_numpy(z.copy())
    if framework == "jax":
        return pytest.importorskip("jax").numpy.asarray(z)  # complex64 without x64
    return z.copy()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_complex_input_is_named_with_how_to_check_it(framework):
    """Complex leaves are not blocks; alone, the error says so and how to check them;
    beside a real block, a warning says they went unchecked (never a silent pass)."""
    z = np.array([1.0 + 2.0j, -0.5 + 0.25j, 3.0 - 1.0j])
    f, (x,), kw = square_check(framework, np.array([0.5, -1.5]))
    c = _complex(framework, z)
    with pytest.raises(ValueError, match=r"args\[0\] is complex.*real and imaginary parts"):
        gradcheck(lambda c: f(x), c, **({"grad": lambda c: (None,)} if kw else {}))
    grad = {"grad": lambda c, x: (None, 2 * x)} if kw else {}
    with pytest.warns(UserWarning, match=r"'args\[0\]' is complex and went unchecked"):
        result = gradcheck(lambda c, x: f(x), c, x, **grad)
    assert [b.name for b in result.blocks] == ["args[1]"]
    # chosen with wrt=, the complex leaf is left out on purpose: no warning
    assert not [
        w
        for w in gradcheck(lambda c, x: f(x), c, x, wrt=["args[1]"], **grad).warnings
        if "complex" in w
    ]
    with pytest.raises(TypeError, match=r"wrt names 'args\[0\]', which is complex"):
        gradcheck(lambda c, x: f(x), c, x, wrt=["args[0]"], **grad)


def test_the_advised_real_and_imaginary_parts_check_a_complex_function():
    torch = pytest.importorskip("torch")
    z = torch.tensor([1.0 + 2.0j, -0.5 + 0.25j, 3.0 - 1.0j], dtype=torch.complex128)
    parts = torch.view_as_real(z).clone()

    def f(parts):
        return (torch.view_as_complex(parts) ** 2).abs().sum()

    result = gradcheck(f, parts)
    assert result.passed and result.blocks[0].shape == (3, 2)


def test_a_numpy_grad_returning_a_dict_without_params_says_to_return_a_tuple():
    # a student's grad={"x": 2 * x} for f(x): it was told block 'args[0]' "receives no
    # gradient: grad returned None or nothing for it", which is not what grad did
    x = np.array([1.0, -2.0, 3.0])
    with pytest.raises(ValueError, match=r"grad returned a dict, but f was given no params="):
        gradcheck(lambda x: np.sum(x**2), x, grad=lambda x: {"x": 2 * x})
    with pytest.raises(ValueError, match=r"grad returned a dict for term 'a'"):
        gradcheck(lambda x: {"a": np.sum(x**2)}, x, grad=lambda x: {"a": {"x": 2 * x}})
    # a dict argument's gradient is a dict: still fine
    w = {"W": np.array([1.0, 2.0])}
    gradcheck(lambda w: np.sum(w["W"] ** 2), w, grad=lambda w: {"W": 2 * w["W"]})


def test_a_result_is_true_exactly_where_the_check_passed():
    """``assert gradcheck(..., raise_on_fail=False)``, as torch users write it, fails
    where the check failed: a Result's truth is its `passed`."""
    x = np.linspace(-1.0, 1.0, 5)
    right = gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: 3 * x**2)
    wrong = gradcheck(lambda x: np.sum(x**3), x, grad=lambda x: 3.1 * x**2, raise_on_fail=False)
    assert right.passed and bool(right) is True
    assert not wrong.passed and bool(wrong) is False
