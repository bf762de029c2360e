"""Prompt-cache slots: K KV caches, each with the exact token ids it holds (SERVE.md §1.7).

A request takes the slot sharing the longest prefix with its prompt (ties: least recently used),
rewinds it to that prefix and prefills only the rest. Only the worker thread touches slots.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Cache(Protocol):
    """What a slot needs of one layer's cache (`KVCache`)."""

    offset: int

    def trim(self, n: int) -> int: ...


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Slot:
    """One prompt cache (a list of per-layer caches) and the ids it holds (`len(ids) == offset`)."""

    def __init__(self, cache: list[Any]) -> None:
        self.cache = cache
        self.ids: list[int] = []
        self.used = 0  # tick of the last use, for least-recently-used ties

    def settle(self, known: Sequence[int], limit: int | None = None) -> int:
        """Rewind every layer to the longest prefix of `known` they all hold (at most `limit`)."""
        offset = min(
            [len(known), *(c.offset for c in self.cache)] + ([limit] if limit is not None else [])
        )
        for c in self.cache:
            c.trim(c.offset - offset)
        self.ids = list(known[:offset])
        return offset


class SlotPool:
    """`size` slots, their caches made on first use by `make_cache`."""

    def __init__(self, size: int, make_cache: Callable[[], list[Any]]) -> None:
        if size < 1:
            raise ValueError(f"cache slots={size} must be at least 1")
        self._make_cache = make_cache
        self.slots: list[Slot | None] = [None] * size
        self._tick = itertools.count(1)

    def acquire(self, ids: Sequence[int], *, reuse: bool = True) -> tuple[Slot, int]:
        """The slot for a prompt and how many of its tokens it already holds (≤ len(ids) − 1,
        so at least one token is fed for logits); the slot is rewound to that prefix."""

        def score(n: int) -> tuple[int, int]:
            slot = self.slots[n]
            if slot is None:
                return (0, 0)  # unused: taken before evicting a slot whose prefix may serve later
            return (common_prefix(slot.ids, ids) if reuse else 0, -slot.used)

        best = max(range(len(self.slots)), key=score)
        slot = self.slots[best]
        if slot is None:
            slot = self.slots[best] = Slot(self._make_cache())
        slot.used = next(self._tick)
        keep = min(common_prefix(slot.ids, ids), len(ids) - 1) if reuse else 0
        return slot, slot.settle(ids, keep)
