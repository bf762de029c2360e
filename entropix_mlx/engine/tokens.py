"""Comparing token-id streams: where a chat reuses its cache, where samplers part, where a replay
differs from its recording."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def first_difference(*streams: Sequence[Any]) -> int | None:
    """The first index where the streams are not all equal (a stream that has ended differs from
    one that goes on); None when they are identical or there are fewer than two."""
    if len(streams) < 2:
        return None
    shortest = min(len(s) for s in streams)
    for i in range(shortest):
        if any(s[i] != streams[0][i] for s in streams[1:]):
            return i
    return None if all(len(s) == shortest for s in streams) else shortest
