"""A zoo of realistic gradient checks: what a default check costs on models a user tests.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_zoo.py [--only TEXT] [--repeat 3]

Where `bench_gradcheck.py` measures one MLP at four sizes, this runs the checks a user
would put in CI: PyTorch modules in float32 (the user's default dtype) and float64 (a
CNN with batchnorm, max-pool and dropout in train and eval mode, a LeNet with zero
biases on zero-bordered images, LSTM and GRU heads, nn.TransformerEncoderLayer, an
embedding with LayerNorm, deep MLPs of 60-80 blocks, one block of 1e6 entries, custom
autograd.Functions, a torch.compile'd module, and the options mode=, batch=False,
burn_in=, wrt=), JAX (MLP pytrees with jax.nn.relu, jnp.maximum and tanh, jitted, float32
inputs, a lax.scan RNN, a custom_vjp layer) and a CS231n two-layer net in NumPy with a
hand-written gradient.

For each check it prints a Markdown row: the verdict, the evaluations (`Result.evaluations`)
and the Python calls of f, the median wall time of `--repeat` runs after one warm-up (the
"first call"), that time over one forward+backward of the same loss in float64 (torch:
`autograd.grad` on a float64 copy of the model; JAX: a jitted `value_and_grad`; NumPy:
the loss and the hand-written gradient), the same for `torch.autograd.gradcheck(...,
fast_mode=True)` or `jax.test_util.check_grads(..., modes=("rev",))` on the same
function where that is cheap (with its verdict), and the reasons batching fell back to
the loop (the backend's `batch_fallbacks`). Checks run one after another, not in turns:
on a shared machine compare rows of one run, and never assert on these times in tests.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import pytest_gradcheck.backends as _backends
from pytest_gradcheck import gradcheck

jax.config.update("jax_enable_x64", True)
torch.set_num_threads(1)

#: the backend of the last check, for its `batch_fallbacks`
_LAST: list = []
_load_backend = _backends.load_backend


def _recording_load_backend(framework: str) -> type:
    cls = _load_backend(framework)

    class Recorded(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _LAST[:] = [self]

    Recorded.__name__ = cls.__name__
    return Recorded


_backends.load_backend = _recording_load_backend


class Calls:
    """f, counting its Python calls."""

    def __init__(self, f: Callable) -> None:
        self.f, self.n = f, 0

    def __call__(self, *args, **kwargs):
        self.n += 1
        return self.f(*args, **kwargs)


@dataclass
class Case:
    check: Callable[[], tuple]  # -> (Result, calls of f)
    unit: Callable[[], None]  # one forward+backward
    reference: Callable[[], bool] | None = None  # -> passed


def median_time(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- torch


def torch_case(model, loss, dtype, *, train=True, reference=True, **options) -> Case:
    """`loss(model, dtype)` checked with `params=model`, the model in `dtype`."""
    torch.manual_seed(0)
    model = model.to(dtype).train(train)
    twin = copy.deepcopy(model).double()  # the unit and the reference, in float64
    names = [name for name, _ in twin.named_parameters()]
    leaves = tuple(p.detach().clone().requires_grad_(True) for p in twin.parameters())

    def check():
        torch.manual_seed(0)
        f = Calls(lambda: loss(model, dtype))
        return gradcheck(f, params=model, raise_on_fail=False, **options), f.n

    def unit():
        torch.manual_seed(0)
        torch.autograd.grad(loss(twin, torch.float64), list(twin.parameters()))

    def functional(*values):
        torch.manual_seed(0)  # the dropout masks of every evaluation alike, as ours
        params = dict(zip(names, values, strict=True))
        return loss(lambda *a: torch.func.functional_call(twin, params, a), torch.float64)

    def theirs():
        return torch.autograd.gradcheck(functional, leaves, fast_mode=True, raise_exception=False)

    return Case(check, unit, theirs if reference else None)


class Swish(torch.autograd.Function):
    """x·sigmoid(x) with a hand-written backward (no vmap support: no setup_context)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s + x * s * (1 - s))


class MLP(nn.Module):
    def __init__(self, act: Callable, widths=(16, 32, 16)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.act = act

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class RecurrentHead(nn.Module):
    def __init__(self, cell: type) -> None:
        super().__init__()
        self.rnn = cell(8, 12, batch_first=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class EmbeddingLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.ln = nn.LayerNorm(16)
        self.out = nn.Linear(16, 5)

    def forward(self, ids):
        return self.out(self.ln(self.emb(ids)).mean(1))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def lenet() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 10),
    )
    for module in model:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(module.bias)
    return model


def encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)


def torch_cases() -> dict[str, Callable[[], Case]]:
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randn(4, 3, 8, 8, generator=gen), torch.tensor([0, 3, 7, 1])
    digits = torch.zeros(4, 1, 12, 12)  # a zero border, as MNIST's
    digits[:, :, 3:9, 3:9] = torch.rand(4, 1, 6, 6, generator=gen)
    seq, seq_target = torch.randn(3, 6, 8, generator=gen), torch.randn(3, 4, generator=gen)
    tokens = torch.randn(2, 5, 16, generator=gen)
    ids, id_labels = torch.randint(0, 50, (4, 7), generator=gen), torch.randint(0, 5, (4,))
    x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 16, (8,), generator=gen)
    wide = torch.randn(4, 1000, generator=gen)

    def images_loss(m, dt):
        return F.cross_entropy(m(images.to(dt)), labels)

    def digits_loss(m, dt):
        return F.cross_entropy(m(digits.to(dt)), labels)

    def seq_loss(m, dt):
        return F.mse_loss(m(seq.to(dt)), seq_target.to(dt))

    def tokens_loss(m, dt):
        return (m(tokens.to(dt)) ** 2).mean()

    def mlp_loss(m, dt):
        return F.cross_entropy(m(x.to(dt)), y)

    def compiled() -> Case:
        model = MLP(torch.tanh)
        fast = torch.compile(model)
        return torch_case(
            model,
            lambda m, dt: F.cross_entropy((fast if m is model else m)(x.to(dt)), y),
            torch.float32,
            reference=False,
        )

    f32, f64 = torch.float32, torch.float64
    deep_tanh, deep_relu, deep_swish = (16,) * 41, (16,) * 31, (16,) * 31
    return {
        "torch CNN train f32": lambda: torch_case(cnn(), images_loss, f32),
        "torch CNN eval f32": lambda: torch_case(cnn(), images_loss, f32, train=False),
        "torch CNN train f64": lambda: torch_case(cnn(), images_loss, f64),
        "torch CNN eval f64": lambda: torch_case(cnn(), images_loss, f64, train=False),
        "torch CNN train f32, mode=coords": lambda: torch_case(
            cnn(), images_loss, f32, mode="coords"
        ),
        "torch CNN train f32, mode=directions": lambda: torch_case(
            cnn(), images_loss, f32, mode="directions"
        ),
        "torch CNN train f32, batch=False": lambda: torch_case(
            cnn(), images_loss, f32, batch=False
        ),
        "torch CNN train f32, burn_in=3": lambda: torch_case(cnn(), images_loss, f32, burn_in=3),
        "torch LeNet, zero biases, zero-border images f32": lambda: torch_case(
            lenet(), digits_loss, f32
        ),
        "torch LSTM f32": lambda: torch_case(RecurrentHead(nn.LSTM), seq_loss, f32),
        "torch LSTM f64": lambda: torch_case(RecurrentHead(nn.LSTM), seq_loss, f64),
        "torch GRU f32": lambda: torch_case(RecurrentHead(nn.GRU), seq_loss, f32),
        "torch GRU f64": lambda: torch_case(RecurrentHead(nn.GRU), seq_loss, f64),
        "torch TransformerEncoderLayer train f32": lambda: torch_case(
            encoder_layer(), tokens_loss, f32
        ),
        "torch TransformerEncoderLayer train f64": lambda: torch_case(
            encoder_layer(), tokens_loss, f64
        ),
        "torch TransformerEncoderLayer eval f32": lambda: torch_case(
            encoder_layer(), tokens_loss, f32, train=False
        ),
        "torch TransformerEncoderLayer train f32, wrt=[linear1, norm2]": lambda: torch_case(
            encoder_layer(), tokens_loss, f32, wrt=["linear1", "norm2"]
        ),
        "torch Embedding + LayerNorm f32": lambda: torch_case(
            EmbeddingLayerNorm(), lambda m, dt: F.cross_entropy(m(ids), id_labels), f32
        ),
        "torch tanh MLP, 80 blocks f64": lambda: torch_case(
            MLP(torch.tanh, deep_tanh), mlp_loss, f64
        ),
        "torch ReLU MLP, 60 blocks f32": lambda: torch_case(
            MLP(torch.relu, deep_relu), mlp_loss, f32
        ),
        "torch one block of 1e6 entries f32": lambda: torch_case(
            nn.Linear(1000, 1000, bias=False),
            lambda m, dt: torch.tanh(m(wide.to(dt))).pow(2).mean(),
            f32,
        ),
        "torch tanh MLP f32": lambda: torch_case(MLP(torch.tanh), mlp_loss, f32),
        "torch tanh MLP f32, torch.compile'd": compiled,
        "torch custom Function MLP f32": lambda: torch_case(MLP(Swish.apply), mlp_loss, f32),
        "torch custom Function MLP f64": lambda: torch_case(MLP(Swish.apply), mlp_loss, f64),
        "torch custom Function MLP, 60 blocks f64": lambda: torch_case(
            MLP(Swish.apply, deep_swish), mlp_loss, f64
        ),
    }


# ----------------------------------------------------------------------------- jax


def jax_case(f, args, *, reference=True) -> Case:
    def check():
        counted = Calls(f)
        return gradcheck(counted, *args, raise_on_fail=False), counted.n

    value_and_grad = jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args)))))

    def unit():
        jax.block_until_ready(value_and_grad(*args))

    def theirs():
        from jax.test_util import check_grads

        try:
            check_grads(f, args, order=1, modes=("rev",))
        except AssertionError:
            return False
        return True

    return Case(check, unit, theirs if reference else None)


def jax_cases() -> dict[str, Callable[[], Case]]:
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    x = jax.random.normal(keys[0], (16, 12))
    y = jax.random.randint(keys[1], (16,), 0, 5)

    def init(dtype):
        return {
            "dense1": {
                "kernel": jax.random.normal(keys[2], (12, 32), dtype) * 0.3,
                "bias": jnp.zeros(32, dtype),
            },
            "dense2": {
                "kernel": jax.random.normal(keys[3], (32, 5), dtype) * 0.3,
                "bias": jnp.zeros(5, dtype),
            },
        }

    def mlp(act):
        def loss(p):
            d1, d2 = p["dense1"], p["dense2"]
            h = act(x.astype(d1["kernel"].dtype) @ d1["kernel"] + d1["bias"])
            logits = h @ d2["kernel"] + d2["bias"]
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), y])

        return loss

    @jax.custom_vjp
    def softplus(z):
        return jnp.logaddexp(z, 0.0)

    softplus.defvjp(lambda z: (softplus(z), z), lambda z, g: (g * jax.nn.sigmoid(z),))

    xs = jax.random.normal(keys[4], (10, 3, 6))
    rnn_params = {
        "Wx": jax.random.normal(keys[5], (6, 8)) * 0.3,
        "Wh": jax.random.normal(keys[6], (8, 8)) * 0.3,
        "b": jnp.zeros(8),
        "Wo": jax.random.normal(keys[7], (8, 2)),
    }

    def rnn(p):
        def step(h, xt):
            h = jnp.tanh(xt @ p["Wx"] + h @ p["Wh"] + p["b"])
            return h, h

        h, _ = jax.lax.scan(step, jnp.zeros((3, 8)), xs)
        return jnp.sum(h @ p["Wo"] ** 2)

    f64, f32 = jnp.float64, jnp.float32
    relu, tanh = mlp(jax.nn.relu), mlp(jnp.tanh)
    return {
        "jax MLP pytree, jax.nn.relu f64": lambda: jax_case(relu, (init(f64),)),
        "jax MLP pytree, jnp.maximum(z, 0) f64": lambda: jax_case(
            mlp(lambda z: jnp.maximum(z, 0.0)), (init(f64),)
        ),
        "jax MLP pytree, tanh f64": lambda: jax_case(tanh, (init(f64),)),
        "jax MLP pytree, jax.nn.relu, jitted f64": lambda: jax_case(jax.jit(relu), (init(f64),)),
        "jax MLP pytree, jax.nn.relu f32 inputs": lambda: jax_case(
            relu, (init(f32),), reference=False
        ),
        "jax MLP pytree, tanh f32 inputs": lambda: jax_case(tanh, (init(f32),), reference=False),
        "jax lax.scan RNN f64": lambda: jax_case(rnn, (rnn_params,)),
        "jax custom_vjp softplus MLP f64": lambda: jax_case(mlp(softplus), (init(f64),)),
    }


# --------------------------------------------------------------------------- numpy


def numpy_cases() -> dict[str, Callable[[], Case]]:
    rng = np.random.default_rng(0)
    n, d, h, c, reg = 5, 4, 10, 3, 0.05
    X, y = rng.standard_normal((n, d)), rng.integers(0, c, n)
    params = {
        "W1": 1e-1 * rng.standard_normal((d, h)),
        "b1": np.zeros(h),
        "W2": 1e-1 * rng.standard_normal((h, c)),
        "b2": np.zeros(c),
    }

    def scores(X):
        z = X @ params["W1"] + params["b1"]
        hidden = np.maximum(0, z)
        s = hidden @ params["W2"] + params["b2"]
        return z, hidden, s - s.max(axis=1, keepdims=True)

    def loss(X):
        _, _, s = scores(X)
        log_p = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        data = -log_p[np.arange(n), y].mean()
        return {"data": data, "reg": reg * (np.sum(params["W1"] ** 2) + np.sum(params["W2"] ** 2))}

    def grad(X):
        z, hidden, s = scores(X)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(n), y] -= 1
        ds = p / n
        dz = (ds @ params["W2"].T) * (z > 0)
        data = {"W1": X.T @ dz, "b1": dz.sum(0), "W2": hidden.T @ ds, "b2": ds.sum(0)}
        zero = {"b1": np.zeros(h), "b2": np.zeros(c)}
        return {
            "data": data,
            "reg": {"W1": 2 * reg * params["W1"], "W2": 2 * reg * params["W2"], **zero},
        }

    def case() -> Case:
        def check():
            counted = Calls(loss)
            return gradcheck(counted, X, params=params, grad=grad, raise_on_fail=False), counted.n

        def unit():
            loss(X)
            grad(X)

        return Case(check, unit)

    return {"numpy CS231n two-layer net (data + reg terms)": case}


# ---------------------------------------------------------------------------- main


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the checks whose name contains this")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per check")
    parser.add_argument("--no-reference", action="store_true", help="skip the other tools")
    options = parser.parse_args()
    warnings.simplefilter("ignore")
    cases = {**torch_cases(), **jax_cases(), **numpy_cases()}
    print(
        "| check | verdict | evaluations | calls of f | median | first call | × fwd+bwd "
        "| ours / theirs (their verdict) | batching fell back |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|---|")
    for name, make in cases.items():
        if options.only.lower() not in name.lower():
            continue
        case = make()
        start = time.perf_counter()
        result, calls = case.check()
        first = time.perf_counter() - start
        fallbacks = list(getattr(_LAST[0], "batch_fallbacks", []) if _LAST else [])
        median = median_time(case.check, options.repeat)
        case.unit()
        unit = median_time(case.unit, max(5, options.repeat))
        theirs = ""
        if case.reference is not None and not options.no_reference:
            passed = case.reference()
            ratio = median / median_time(case.reference, options.repeat)
            theirs = f"{ratio:.2f} ({'pass' if passed else 'FAIL'})"
        verdict = f"{result.tier.label}" if result.passed else f"FAIL ({result.tier.label})"
        reasons = sorted({r.split(": ", 1)[1][:60] for r in fallbacks})
        fell_back = f"{len(fallbacks)}× {'; '.join(reasons)}" if fallbacks else ""
        print(
            f"| {name} | {verdict} | {result.evaluations} | {calls} | {_time(median)} "
            f"| {_time(first)} | {median / unit:.0f}× | {theirs} | {fell_back} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
