"""The finite-difference step h and the round-off floor of a difference quotient."""

from __future__ import annotations

import math

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


def step_for(eps: float | str, value: float) -> float:
    """`steps` for one value (a direction's step, from the block's rms value)."""
    return AUTO_STEP * max(1.0, abs(value)) if eps == "auto" else float(eps)


def noise_floor(f_plus: float, f_minus: float, h: float) -> float:
    """The absolute error a centered difference can have from round-off alone."""
    return NOISE_ULPS * EPS64 * max(abs(f_plus), abs(f_minus)) / h


def value_floor(largest_gradient: float, largest_value: float) -> float:
    """Round-off of f implied by a block's scale, before dividing by h.

    |f| alone underestimates the round-off of f when f is small next to its own
    intermediate values (a normalisation, a cancellation): a block whose gradients reach
    G at values of size X makes f handle quantities of at least G * max(1, X). Takes the
    block's max |g| and max |x| (`absmax`), which the engine computes once per block.
    """
    return NOISE_ULPS * EPS64 * largest_gradient * max(1.0, largest_value)


def absmax(a: np.ndarray) -> float:
    """max |a| (0 for an empty array), without the temporary array that np.abs makes."""
    if a.size == 0:
        return 0.0
    return max(float(a.max()), -float(a.min()))


def measured_noise(values: np.ndarray) -> float:
    """How far round-off moves f, from f at equally spaced points along a line.

    Two readings of the same values; the larger is returned:

    * random round-off, after Moré and Wild's ECnoise ("Estimating computational
      noise", SIAM J. Sci. Comput. 33, 2011): once the spacing d makes f's smooth part
      negligible in them (d^k f^(k); from the 4th order on, for a check's step), the
      k-th differences of the values are those of the round-off, whose mean square
      is its variance times (2k)! / (k!)^2. The median over the orders whose
      differences change sign (noise does, a smooth part does not);
    * round-off in whole quanta: f = 11 - 10.99999 lands on the lattice of the ulps of
      11, whatever |f| is. The differences of the values are then multiples of that
      quantum; the largest power of two dividing all of them measures it (half of it
      bounds the round-off). Without cancellation this is an ulp of |f| or so.

    0.0 when neither shows anything: f is exact along the line.
    """
    v = np.asarray(values, dtype=np.float64)
    d = v
    rms: list[float] = []
    for k in range(1, v.size - 1):
        d = np.diff(d)
        if k >= 4 and bool(np.any(d[:-1] * d[1:] < 0)):
            gamma = math.factorial(k) ** 2 / math.factorial(2 * k)
            rms.append(math.sqrt(gamma * float(np.mean(d * d))))
    random_part = float(np.median(rms)) if rms else 0.0
    steps_ = np.abs(v[1:] - v[0])
    steps_ = steps_[steps_ > 0]
    quantum = 0.0
    if steps_.size:
        # the largest power of two dividing every difference: the smallest of their
        # lowest set bits (frexp's mantissa times 2**53 is an integer for doubles)
        mantissa, exponent = np.frexp(steps_)
        ints = (mantissa * 2.0**53).astype(np.int64)
        low = ints & -ints
        quantum = float(np.min(np.ldexp(low.astype(np.float64), exponent - 53)))
    return max(random_part, quantum / 2.0)


def norm(g: np.ndarray, largest: float) -> float:
    """||g|| (``numpy.linalg.norm``'s value) given max |g|; inf where it overflows."""
    if largest * math.sqrt(g.size) < 1e150:  # g · g cannot overflow
        return math.sqrt(float(g.dot(g)))
    with np.errstate(over="ignore"):  # |g| of huge gradients: inf, harmless
        return float(np.linalg.norm(g))
