"""Per-layer key/value cache, grown lazily in steps so decode never reallocates per token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import numpy as np


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
        B, H, L, Dk = keys.shape
        self._reserve(B, H, Dk, values.shape[3], keys.dtype, prev + L)
        self.offset += L
        self.keys[..., prev : self.offset, :] = keys
        self.values[..., prev : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def append(
        self,
        write: Callable[[mx.array, mx.array, int], tuple[mx.array, mx.array]],
        shape: tuple[int, int, int],
        dtype: mx.Dtype,
    ) -> None:
        """Append one position through `write(keys, values, slot)`, which returns both buffers
        with it written: a native kernel (RoPE included) that reuses the buffers in place. `shape`
        is (B, heads, head_dim). Afterwards `keys`/`values` are the whole buffers, valid up to
        `offset`."""
        B, H, D = shape
        self._reserve(B, H, D, D, dtype, self.offset + 1)
        self.keys, self.values = write(self.keys, self.values, self.offset)
        self.offset += 1

    def _reserve(self, B: int, H: int, Dk: int, Dv: int, dtype: mx.Dtype, needed: int) -> None:
        if self.keys is not None and needed <= self.keys.shape[2]:
            return
        size = ((needed + self.step - 1) // self.step) * self.step
        new_k = mx.zeros((B, H, size, Dk), dtype)
        new_v = mx.zeros((B, H, size, Dv), dtype)
        if self.keys is not None and self.offset:
            new_k[..., : self.offset, :] = self.keys[..., : self.offset, :]
            new_v[..., : self.offset, :] = self.values[..., : self.offset, :]
        self.keys, self.values = new_k, new_v

    @property
    def positions(self) -> int:
        """The position the next token takes (RoPE)."""
        return self.offset

    def make_mask(self, L: int) -> Any:
        """The attention mask for `L` new tokens: causal among them, everything cached visible."""
        return "causal" if L > 1 else None

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


class BatchKVCache(KVCache):
    """One layer's keys/values for rows of different lengths, aligned to the right (left padding).

    Row b's own tokens fill slots `[left_padding[b], offset)`; the slots before them are padding
    that `make_mask` hides from every query (a padding query sees only itself, so its numbers stay
    finite). RoPE positions are each row's own: `offset - left_padding`. `filter` drops finished
    rows, `extend` appends rows (e.g. a new prompt prefilled alone), both re-aligning the padding.
    """

    def __init__(self, left_padding: Sequence[int]):
        super().__init__()
        self.left_padding = np.asarray(left_padding, dtype=np.int64)  # (B,) host ints

    @property
    def positions(self) -> np.ndarray:  # type: ignore[override]
        """Each row's next position, (B,) host ints."""
        return self.offset - self.left_padding

    def make_mask(self, L: int) -> Any:
        if not self.left_padding.any():
            return super().make_mask(L)
        T = self.offset + L
        keys = mx.arange(T)[None, None, None, :]  # (1, 1, 1, T)
        queries = mx.arange(self.offset, T)[None, None, :, None]  # (1, 1, L, 1)
        pad = mx.array(self.left_padding)[:, None, None, None]  # (B, 1, 1, 1)
        return (keys <= queries) & ((keys >= pad) | (keys == queries))  # (B, 1, L, T)

    def filter(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (indices, in the new order); drop padding every remaining row has."""
        index = np.asarray(rows, dtype=np.int64)
        self.left_padding = self.left_padding[index]
        if self.keys is None or not len(index):
            self.keys = self.values = None
            self.offset = 0
            return
        take = mx.array(index)
        self.keys, self.values = self.keys[take], self.values[take]
        shift = int(self.left_padding.min())
        if shift:
            self.keys, self.values = self.keys[..., shift:, :], self.values[..., shift:, :]
            self.offset -= shift
            self.left_padding = self.left_padding - shift

    def extend(self, other: KVCache) -> None:
        """Append `other`'s rows after ours (a `KVCache` counts as rows without padding)."""
        pad = getattr(other, "left_padding", None)
        pad = np.zeros(other.keys.shape[0], np.int64) if pad is None else pad
        if self.keys is None:
            self.keys, self.values, self.offset = other.keys, other.values, other.offset
            self.left_padding = pad.copy()
            return
        T = max(self.offset, other.offset)
        size = (T // self.step + 1) * self.step  # room for the next token
        parts = []
        for cache in (self, other):
            before, after = T - cache.offset, size - T
            widths = [(0, 0), (0, 0), (before, after), (0, 0)]
            parts.append(
                [mx.pad(x[..., : cache.offset, :], widths) for x in (cache.keys, cache.values)]
            )
        self.keys = mx.concatenate([parts[0][0], parts[1][0]], axis=0)
        self.values = mx.concatenate([parts[0][1], parts[1][1]], axis=0)
        self.left_padding = np.concatenate(
            [self.left_padding + T - self.offset, pad + T - other.offset]
        )
        self.offset = T
