"""The winner-signature protocol and the kink-crossing policy.

A tracker (one per backend) watches an evaluation of f and feeds every max-like
decision it sees (a ReLU mask, which argument of `maximum` won, the arg-max of a
pooling window, the side of a clip, a sort order, a comparison) into a
`SignatureRecorder`. Two evaluations took the same branches exactly when their
digests are equal; if the digests of f(x+h) and f(x-h) differ, the difference quotient
straddles a kink.
"""

from __future__ import annotations

import hashlib


class SignatureRecorder:
    """Accumulates the decisions of one evaluation into a digest."""

    __slots__ = ("_hash", "count")

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.count = 0

    def record(self, op: str, decision: bytes) -> None:
        """Record one decision: the op's name and the bytes of its outcome."""
        self._hash.update(op.encode())
        self._hash.update(len(decision).to_bytes(8, "little"))
        self._hash.update(decision)
        self.count += 1

    def digest(self) -> bytes:
        return self._hash.digest()


#: The signature of an evaluation that recorded no decision (the backends' fast paths
#: give it without running a tracker).
EMPTY_SIGNATURE: bytes = SignatureRecorder().digest()

#: The step divisors tried, in order, when a difference crosses a kink.
RETRY_DIVISORS: tuple[float, ...] = (10.0, 100.0)


def crossed(plus: bytes | None, minus: bytes | None) -> bool:
    """Whether two tracked evaluations took different branches."""
    return plus is not None and minus is not None and plus != minus
