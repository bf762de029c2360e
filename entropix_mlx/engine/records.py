"""The per-token JSONL record of DESIGN.md: what plots, comparisons and replays read."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import EntropixError
from .generate import Summary, TokenEvent
from .metrics import METRIC_NAMES, Metrics
from .sampler import SamplingParams

RECORD_FIELDS = (
    "index",
    "token_id",
    "text",
    "logprob",
    *METRIC_NAMES,
    "quadrant",
    "strategy",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "inserted",
    "elapsed",
)
# `elapsed` (seconds since prefill) came later than DESIGN.md's list: older files lack it. It
# makes a replay's live status show the recorded speed.
REQUIRED_FIELDS = RECORD_FIELDS[:-1]


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
        "elapsed": ev.elapsed,
    }


def summary_record(summary: Summary, **context: Any) -> dict[str, Any]:
    """The closing `{"summary": …}` object: totals plus whatever context the caller names."""
    body = dataclasses.asdict(summary)
    for name, value in context.items():
        body[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return {"summary": json.loads(json.dumps(body, default=str))}


_INTS = ("index", "token_id", "top_k")
_STRINGS = ("text", "quadrant", "strategy")
_NULLABLE = ("logprob", "temperature")  # non-finite numbers are written as null


def _record_problem(record: Any) -> str | None:
    """What is wrong with one parsed line, or None for a token record or a summary."""
    if isinstance(record, dict) and set(record) in ({"summary"}, {"chat"}):
        name = next(iter(record))
        return None if isinstance(record[name], dict) else f'"{name}" must be an object'
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return f"not a token record (missing {', '.join(missing)})"
    for name in RECORD_FIELDS:
        value = record.get(name, 0.0)
        if name in _STRINGS:
            ok = isinstance(value, str)
        elif name == "inserted":
            ok = isinstance(value, bool)
        elif isinstance(value, bool):
            ok = False
        elif name in _INTS:
            ok = isinstance(value, int)
        else:
            ok = isinstance(value, (int, float)) or (value is None and name in _NULLABLE)
        if not ok:
            return f"{name}={value!r} has the wrong type"
    return None


def read_run(path: Path) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Read a `--jsonl` file back: token records grouped per answer, and the summaries.

    `{"chat": …}` lines (a chat session's changes between answers) are skipped.
    Each summary closes a group, so `records[i]` belongs to `summaries[i]`; tokens after the last
    summary (a run that was killed) form one more group. Raises `EntropixError` naming the file
    and line of the first malformed line.
    """
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise EntropixError(
            f"{path}: no such file; pass a file written by `entropix run --jsonl`"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise EntropixError(f"{path}: cannot read it ({why}); pass a run's .jsonl file") from None
    records: list[list[dict[str, Any]]] = [[]]
    summaries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EntropixError(
                f"{path}:{number}: not JSON ({e.msg}); each line must be one record"
            ) from None
        problem = _record_problem(record)
        if problem:
            raise EntropixError(
                f'{path}:{number}: {problem}; expected a token record or {{"summary": …}}'
            )
        if "chat" in record:
            continue  # a chat session's change without an answer (chat/store.py)
        if "summary" in record:
            summaries.append(record["summary"])
            records.append([])
        else:
            records[-1].append(record)
    if not records[-1]:
        records.pop()
    if not any(records):
        raise EntropixError(
            f"{path}: no token records; pass a file written by `entropix run --jsonl`"
        )
    return records, summaries


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

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(Summary))


def summary_from_record(body: dict[str, Any]) -> Summary:
    """The `Summary` a `{"summary": …}` record was written from."""
    missing = [name for name in SUMMARY_FIELDS if name not in body]
    if missing:
        raise ValueError(f"the summary lacks {', '.join(missing)}")
    return Summary(**{name: body[name] for name in SUMMARY_FIELDS})


def events_from_records(
    records: Sequence[dict[str, Any]], summary: Summary | None
) -> list[TokenEvent]:
    """Token records → `TokenEvent`s; the summary supplies prompt size, prefill time and finish."""
    prompt_tokens = summary.prompt_tokens if summary else 0
    prefill = prompt_tokens / summary.prefill_tps if summary and summary.prefill_tps > 0 else 0.0
    events = []
    for i, rec in enumerate(records):
        if rec["temperature"] is None:
            raise ValueError(f"token {rec['index']}: temperature is null; cannot rebuild it")
        last = i == len(records) - 1
        events.append(
            TokenEvent(
                index=rec["index"],
                token_id=rec["token_id"],
                text=rec["text"],
                logprob=math.nan if rec["logprob"] is None else float(rec["logprob"]),
                metrics=Metrics.from_values([rec[name] for name in METRIC_NAMES]),
                quadrant=rec["quadrant"],
                strategy=rec["strategy"],
                params=SamplingParams(rec["temperature"], rec["top_k"], rec["top_p"], rec["min_p"]),
                inserted=rec["inserted"],
                elapsed=float(rec.get("elapsed", 0.0)),
                prompt_tokens=prompt_tokens,
                prefill_seconds=prefill,
                finish_reason=summary.finish_reason if summary and last else None,
            )
        )
    return events
