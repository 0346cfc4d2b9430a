"""Gradient checks of PyTorch code: a module with dropout and batch norm in train mode,
a CNN and an LSTM on float32 data, and a custom autograd.Function whose backward is
wrong on purpose (xfail)."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from pytest_gradcheck import GradcheckError  # noqa: E402


def test_mlp_with_dropout_and_batchnorm_in_train_mode(gradcheck):
    """float32 parameters are checked in float64; dropout sees the same mask every time."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)
    ).train()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    gradcheck(lambda: F.cross_entropy(model(x), y), params=model)
    assert model.training and model[0].weight.dtype == torch.float32  # all restored


def test_cnn_and_lstm_on_float32_data(gradcheck):
    """A convolution and an LSTM read their float32 data in float64 too (both check
    their inputs' dtype against their weights' before computing anything)."""
    torch.manual_seed(0)
    conv, lstm = nn.Conv2d(2, 3, 3, padding=1), nn.LSTM(3, 4, batch_first=True)
    images = torch.randn(2, 2, 4, 4)

    def loss():
        features = torch.relu(conv(images)).mean(dim=(2, 3))  # (2, 3)
        out, _ = lstm(features.unsqueeze(1).repeat(1, 3, 1))  # a 3-step sequence
        return out.square().sum()

    gradcheck(loss, params={"conv": conv, "lstm": lstm})
    assert conv.weight.dtype == lstm.weight_hh_l0.dtype == images.dtype == torch.float32


class Swish(torch.autograd.Function):
    """x * sigmoid(x), with a hand-written backward that forgets one term."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return dout * s  # planted: the x * s * (1 - s) term is missing


@pytest.mark.xfail(raises=GradcheckError, strict=True, reason="planted: a backward term missing")
def test_planted_custom_function(gradcheck):
    x = torch.randn(4, 5, dtype=torch.float64)
    gradcheck(lambda x: Swish.apply(x).sum(), x)
