"""CS231n-style layers written for these tests, each with a correct backward pass and
planted bugs.

Every ``*_backward`` (and loss) takes ``bug=None``; a bug name plants one classic
mistake in the gradient while the forward pass stays correct:

- a wrong axis in a reduction (``"db_axis"``, ``"dgamma_axis"``),
- a gradient scaled by 1.01 (``"dw_scale"``, ``"scale"``),
- a missing ReLU mask (``"no_mask"``),
- a missing term (``"no_mean_term"``, ``"no_correct"``, ``"no_reg_grad"``, ...).

Forward passes are plain NumPy, so the winner tracker sees their max-like decisions
(``np.maximum``, comparisons, ``np.max``).
"""

from __future__ import annotations

import numpy as np


def _check_bug(bug: str | None, allowed: tuple[str, ...]) -> None:
    if bug is not None and bug not in allowed:
        raise ValueError(f"unknown bug {bug!r}; this layer plants {allowed}")


# -- affine --------------------------------------------------------------------------


def affine_forward(x, w, b):
    """out = x.reshape(N, -1) @ w + b."""
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


AFFINE_BUGS = ("db_axis", "dw_scale")


def affine_backward(dout, cache, bug=None):
    """(dx, dw, db). Bugs: db summed over axis 1 ("db_axis"), dw scaled by 1.01."""
    _check_bug(bug, AFFINE_BUGS)
    x, w, _ = cache
    x2 = x.reshape(x.shape[0], -1)
    dx = (dout @ w.T).reshape(x.shape)
    dw = x2.T @ dout
    db = dout.sum(axis=1) if bug == "db_axis" else dout.sum(axis=0)
    if bug == "dw_scale":
        dw = dw * 1.01
    return dx, dw, db


# -- ReLU ----------------------------------------------------------------------------


def relu_forward(x):
    return np.maximum(0, x), x


RELU_BUGS = ("no_mask",)


def relu_backward(dout, cache, bug=None):
    """dx = dout * (x > 0). Bug: the mask forgotten ("no_mask")."""
    _check_bug(bug, RELU_BUGS)
    x = cache
    if bug == "no_mask":
        return dout.copy()
    return dout * (x > 0)


# -- softmax loss ----------------------------------------------------------------------


SOFTMAX_BUGS = ("no_correct", "scale", "tiny")


def softmax_loss(scores, y, bug=None, shift=True):
    """Mean cross-entropy of softmax(scores) and its gradient.

    `shift` subtracts the row max first (the usual stability trick; the winner tracker
    sees that max). Bugs: the -1 at the correct class forgotten ("no_correct"), the
    gradient scaled by 1.01 ("scale") or by 1 + 1e-5 ("tiny": relative error 1e-5, the
    tier OK).
    """
    _check_bug(bug, SOFTMAX_BUGS)
    n = scores.shape[0]
    s = scores - np.max(scores, axis=1, keepdims=True) if shift else scores
    e = np.exp(s)
    p = e / np.sum(e, axis=1, keepdims=True)
    loss = -np.sum(np.log(p[np.arange(n), y])) / n
    dscores = np.array(p, dtype=np.float64)
    if bug != "no_correct":
        dscores[np.arange(n), y] -= 1.0
    dscores /= n
    if bug == "scale":
        dscores *= 1.01
    if bug == "tiny":
        dscores *= 1.0 + 1e-5
    return loss, dscores


# -- multiclass SVM loss -----------------------------------------------------------------


SVM_BUGS = ("no_correct", "scale")


def svm_loss(scores, y, bug=None):
    """Mean multiclass hinge loss (margin 1) and its gradient.

    Bugs: the correct class's column never receives its -count ("no_correct"), the
    gradient scaled by 1.01 ("scale") or by 1 + 1e-5 ("tiny": relative error 1e-5, the
    tier OK).
    """
    _check_bug(bug, SVM_BUGS)
    n = scores.shape[0]
    correct = scores[np.arange(n), y]
    margins = np.maximum(0, scores - correct[:, None] + 1.0)
    margins[np.arange(n), y] = 0
    loss = np.sum(margins) / n
    binary = (np.asarray(margins) > 0).astype(np.float64)
    if bug != "no_correct":
        binary[np.arange(n), y] = -binary.sum(axis=1)
    dscores = binary / n
    if bug == "scale":
        dscores *= 1.01
    if bug == "tiny":
        dscores *= 1.0 + 1e-5
    return loss, dscores


# -- batchnorm (train mode) -----------------------------------------------------------------


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Train-mode batch normalisation over axis 0."""
    mu = x.mean(axis=0)
    xc = x - mu
    var = (xc**2).mean(axis=0)
    std = np.sqrt(var + eps)
    xhat = xc / std
    return gamma * xhat + beta, (xhat, gamma, std)


BATCHNORM_BUGS = ("dgamma_axis", "no_mean_term", "dbeta_scale")


def batchnorm_backward(dout, cache, bug=None):
    """(dx, dgamma, dbeta). Bugs: dgamma summed over axis 1 ("dgamma_axis"), the
    mean term of dx dropped ("no_mean_term"), dbeta scaled by 1.01 ("dbeta_scale")."""
    _check_bug(bug, BATCHNORM_BUGS)
    xhat, gamma, std = cache
    n = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=1 if bug == "dgamma_axis" else 0)
    dxhat = dout * gamma
    mean_term = 0.0 if bug == "no_mean_term" else dxhat.sum(axis=0)
    dx = (n * dxhat - mean_term - xhat * (dxhat * xhat).sum(axis=0)) / (n * std)
    if bug == "dbeta_scale":
        dbeta = dbeta * 1.01
    return dx, dgamma, dbeta


# -- inverted dropout ------------------------------------------------------------------------


def dropout_forward(x, p):
    """Inverted dropout (train mode): keep each unit with probability p, scale by 1/p.

    The mask comes from NumPy's global RNG, so it is random for every call unless the
    caller seeds it: the gradient check resets it to its seed before each evaluation.
    """
    mask = (np.random.rand(*x.shape) < p) / p
    return x * mask, mask


DROPOUT_BUGS = ("no_scale",)


def dropout_backward(dout, cache, bug=None):
    """dx = dout * mask. Bug: the 1/p scaling forgotten ("no_scale")."""
    _check_bug(bug, DROPOUT_BUGS)
    mask = cache
    if bug == "no_scale":
        return dout * (mask > 0)
    return dout * mask


# -- max-pool 2x2, stride 2 ---------------------------------------------------------------


def max_pool_forward(x):
    """2x2 max-pool with stride 2 over (N, C, H, W), naive loops."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h // 2, w // 2))
    for i in range(n):
        for k in range(c):
            for r in range(h // 2):
                for s in range(w // 2):
                    out[i, k, r, s] = np.max(x[i, k, 2 * r : 2 * r + 2, 2 * s : 2 * s + 2])
    return out, x


MAX_POOL_BUGS = ("first", "scale")


def max_pool_backward(dout, cache, bug=None):
    """Routes each dout entry to its window's arg-max. Bugs: routed to the window's
    top-left entry ("first"), scaled by 1.01 ("scale")."""
    _check_bug(bug, MAX_POOL_BUGS)
    x = np.asarray(cache)
    n, c, h, w = x.shape
    dx = np.zeros_like(x, dtype=np.float64)
    for i in range(n):
        for k in range(c):
            for r in range(h // 2):
                for s in range(w // 2):
                    window = x[i, k, 2 * r : 2 * r + 2, 2 * s : 2 * s + 2]
                    a = 0 if bug == "first" else int(np.argmax(window))
                    dx[i, k, 2 * r + a // 2, 2 * s + a % 2] += dout[i, k, r, s]
    if bug == "scale":
        dx *= 1.01
    return dx


# -- two-layer net: affine - relu - affine - softmax, L2 regularization ------------------


TWO_LAYER_BUGS = ("no_reg_grad", "no_mask", "b1_axis", "w2_scale", "reg_half")


def init_two_layer(rng, d, h, c, dtype=np.float64, scale=0.5):
    """Parameters of a two-layer net as a dict W1, b1, W2, b2."""
    return {
        "W1": (scale * rng.standard_normal((d, h))).astype(dtype),
        "b1": (0.1 * rng.standard_normal(h)).astype(dtype),
        "W2": (scale * rng.standard_normal((h, c))).astype(dtype),
        "b2": (0.1 * rng.standard_normal(c)).astype(dtype),
    }


def two_layer_terms(params, x, y, reg, loss="softmax"):
    """The data and regularization losses of the two-layer net: (data, reg)."""
    h, _ = relu_forward(affine_forward(x, params["W1"], params["b1"])[0])
    scores, _ = affine_forward(h, params["W2"], params["b2"])
    data = (softmax_loss if loss == "softmax" else svm_loss)(scores, y)[0]
    reg_loss = 0.5 * reg * (np.sum(params["W1"] ** 2) + np.sum(params["W2"] ** 2))
    return data, reg_loss


def two_layer_grads(params, x, y, reg, bug=None, loss="softmax"):
    """The gradients of the data and regularization terms: (data_grads, reg_grads).

    Bugs: the reg gradient of W1 forgotten ("no_reg_grad"), the ReLU mask forgotten
    ("no_mask"), db1 summed over the wrong axis ("b1_axis", needs N == H), dW2 scaled by
    1.01 ("w2_scale"), the reg gradient halved ("reg_half", i.e. reg*W/2)."""
    _check_bug(bug, TWO_LAYER_BUGS)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    a1, c1 = affine_forward(x, p["W1"], p["b1"])
    h, cr = relu_forward(a1)
    scores, c2 = affine_forward(h, p["W2"], p["b2"])
    dscores = (softmax_loss if loss == "softmax" else svm_loss)(scores, y)[1]
    dh, dw2, db2 = affine_backward(dscores, c2, bug="dw_scale" if bug == "w2_scale" else None)
    da1 = relu_backward(dh, cr, bug="no_mask" if bug == "no_mask" else None)
    _, dw1, db1 = affine_backward(da1, c1, bug="db_axis" if bug == "b1_axis" else None)
    data = {"W1": dw1, "b1": db1, "W2": dw2, "b2": db2}
    factor = 0.5 if bug == "reg_half" else 1.0
    reg_grads = {
        "W1": np.zeros_like(p["W1"]) if bug == "no_reg_grad" else factor * reg * p["W1"],
        "b1": None,
        "W2": factor * reg * p["W2"],
        "b2": None,
    }
    return data, reg_grads


def two_layer_loss(params, x, y, reg, bug=None, loss="softmax"):
    """CS231n's ``loss, grads = model.loss(X, y)``: the total loss and its gradients."""
    data, reg_loss = two_layer_terms(params, x, y, reg, loss)
    gd, gr = two_layer_grads(params, x, y, reg, bug, loss)
    grads = {k: gd[k] + (gr[k] if gr[k] is not None else 0.0) for k in gd}
    return data + reg_loss, grads
