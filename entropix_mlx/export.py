"""The per-token JSONL record of DESIGN.md: what plots, comparisons and replays read.

Kept apart from tui.py (DESIGN.md lists no exporter) because it is data, not rendering.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import IO, Any

from .generate import Summary, TokenEvent

RECORD_FIELDS = (
    "index", "token_id", "text", "logprob", "entropy", "varentropy", "attn_entropy",
    "attn_varentropy", "agreement", "interaction_strength", "quadrant", "strategy",
    "temperature", "top_k", "top_p", "min_p", "inserted",
)  # fmt: skip


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def event_record(ev: TokenEvent) -> dict[str, Any]:
    """One JSON object per token; non-finite numbers become null (JSON has no NaN)."""
    m, p = ev.metrics, ev.params
    return {
        "index": ev.index,
        "token_id": ev.token_id,
        "text": ev.text,
        "logprob": _finite(ev.logprob),
        "entropy": m.entropy,
        "varentropy": m.varentropy,
        "attn_entropy": m.attn_entropy,
        "attn_varentropy": m.attn_varentropy,
        "agreement": m.agreement,
        "interaction_strength": m.interaction_strength,
        "quadrant": ev.quadrant,
        "strategy": ev.strategy,
        "temperature": _finite(p.temperature),
        "top_k": p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "inserted": ev.inserted,
    }


def summary_record(summary: Summary, **context: Any) -> dict[str, Any]:
    """The closing `{"summary": …}` object: totals plus whatever context the caller names."""
    body = dataclasses.asdict(summary)
    for name, value in context.items():
        body[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return {"summary": json.loads(json.dumps(body, default=str))}


class JsonlWriter:
    """Streams records to a file, one flushed line per token, so a killed run keeps what it made."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
