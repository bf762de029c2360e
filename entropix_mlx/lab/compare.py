"""One prompt decoded by several samplers, side by side: where they part, and how each behaved.

Pure data: finished event streams in, columns and the divergence index out; `ui.compare` renders
them, so they work the same on live decodes and on hand-made events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One sampler's answer: its events and their summary (a `generate.Summary`)."""

    sampler: str
    events: tuple[Any, ...]
    summary: Any

    @property
    def token_ids(self) -> list[int]:
        return [ev.token_id for ev in self.events]


def first_divergence(streams: Sequence[Sequence[int]]) -> int | None:
    """The first token index where the streams are not all equal (a stream that has ended differs
    from one that goes on); None when they are identical or there is only one."""
    if len(streams) < 2:
        return None
    for i in range(max(len(s) for s in streams)):
        if len({s[i] if i < len(s) else None for s in streams}) > 1:
            return i
    return None
