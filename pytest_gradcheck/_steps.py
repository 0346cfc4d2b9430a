"""The finite-difference step h and the round-off floor of a difference quotient."""

from __future__ import annotations

import numpy as np

#: float64 machine epsilon
EPS64 = float(np.finfo(np.float64).eps)

#: h for eps="auto": the cube root of machine epsilon balances the O(h^2) truncation
#: error of the centered formula against its O(eps/h) round-off error.
AUTO_STEP = EPS64 ** (1.0 / 3.0)

#: How many ulps of |f| the evaluation of f may be off by before a disagreement is
#: more than round-off. Generous enough for sums of thousands of terms.
NOISE_ULPS = 32.0

#: Below this, gradient values are outside the "active range" the seed warns about.
TINY = 1e-10


def steps(eps: float | str, values: np.ndarray) -> np.ndarray:
    """The step of each coordinate: `eps`, or for "auto" cbrt(eps64) * max(1, |x|)."""
    if eps == "auto":
        return AUTO_STEP * np.maximum(1.0, np.abs(values))
    return np.full(values.shape, float(eps))


def noise_floor(f_plus: float, f_minus: float, h: float) -> float:
    """The absolute error a centered difference can have from round-off alone."""
    return NOISE_ULPS * EPS64 * max(abs(f_plus), abs(f_minus)) / h


def value_floor(gradient: np.ndarray, values: np.ndarray) -> float:
    """Round-off of f implied by a block's scale, before dividing by h.

    |f| alone underestimates the round-off of f when f is small next to its own
    intermediate values (a normalisation, a cancellation): a block whose gradients reach
    G at values of size X makes f handle quantities of at least G * max(1, X).
    """
    if gradient.size == 0:
        return 0.0
    return NOISE_ULPS * EPS64 * absmax(gradient) * max(1.0, absmax(values))


def absmax(a: np.ndarray) -> float:
    """max |a| (0 for an empty array), without the temporary array that np.abs makes."""
    if a.size == 0:
        return 0.0
    return max(float(np.max(a)), -float(np.min(a)))
