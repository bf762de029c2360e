"""One prompt decoded by several samplers, side by side: where they part, and how each behaved.

Pure data: finished event streams in, columns out (where they part is `first_difference` of their
`token_ids`); `ui.compare` renders them, so they work the same on live decodes and hand-made events.
"""

from __future__ import annotations

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
