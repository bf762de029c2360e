"""Per-layer key/value cache, grown lazily in steps so decode never reallocates per token."""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Keys/values of one attention layer; `update_and_fetch` returns only the valid prefix.

    The cache never evaluates anything: the caller decides when to `mx.eval`.
    """

    step = 256

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append `(B, H, L, D)` keys/values; return all valid ones so far."""
        prev = self.offset
        L = keys.shape[2]
        if self.keys is None or prev + L > self.keys.shape[2]:
            self._grow(keys, values, prev + L)
        self.offset += L
        self.keys[..., prev : self.offset, :] = keys
        self.values[..., prev : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def _grow(self, keys: mx.array, values: mx.array, needed: int) -> None:
        B, H, _, Dk = keys.shape
        Dv = values.shape[3]
        size = ((needed + self.step - 1) // self.step) * self.step
        new_k = mx.zeros((B, H, size, Dk), keys.dtype)
        new_v = mx.zeros((B, H, size, Dv), values.dtype)
        if self.keys is not None and self.offset:
            new_k[..., : self.offset, :] = self.keys[..., : self.offset, :]
            new_v[..., : self.offset, :] = self.values[..., : self.offset, :]
        self.keys, self.values = new_k, new_v

    def trim(self, n: int) -> int:
        """Forget the newest `n` positions (for /retry and stop-string rewinds); how many it did."""
        n = max(0, min(self.offset, n))
        self.offset -= n
        return n

    def reset(self) -> None:
        self.offset = 0

    @property
    def state(self) -> list[mx.array]:
        """What to evaluate to materialise the cache (empty before the first update)."""
        return [] if self.keys is None else [self.keys, self.values]

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes
