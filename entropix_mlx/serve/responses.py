"""TokenEvents → OpenAI response objects: stream chunks and whole responses.

One `Answer` per choice collects the events of one request and cuts them into chunks the way
SERVE.md §1.4 says: a token whose text is "" (half a UTF-8 character) waits for the next one, so
each chunk's `delta`, `logprobs.content` and `entropix.tokens` list the same tokens; the
end-of-turn token is not content (only in `entropix.tokens`); the summary rides on the last chunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ..engine.generate import Summary, TokenEvent
from ..engine.records import event_record, summary_record
from .protocol import NON_FINITE_LOGPROB

FINISH = {"stop": "stop", "length": "length", "context": "length", None: "stop"}


def _logprob(x: float) -> float:
    return x if math.isfinite(x) else NON_FINITE_LOGPROB


@dataclass
class Answer:
    """One choice of one request: its events so far and how to render them."""

    kind: str  # "chat" | "completion"
    id: str
    model: str
    fingerprint: str
    stop_ids: Collection[int]
    token_bytes: Callable[[int], bytes]
    logprobs: bool = False
    metrics: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    events: list[TokenEvent] = field(default_factory=list)
    pending: list[TokenEvent] = field(default_factory=list)
    text_offset: int = 0

    # ── pieces ──

    def is_end_of_turn(self, ev: TokenEvent) -> bool:
        return ev.token_id in self.stop_ids and not ev.inserted and ev.text == ""

    def _top(self, ev: TokenEvent) -> list[dict[str, Any]]:
        out = []
        for token_id, lp in ev.top_logprobs:
            data = self.token_bytes(token_id)
            out.append(
                {
                    "token": data.decode("utf-8", "replace"),
                    "logprob": _logprob(lp),
                    "bytes": list(data),
                }
            )
        return out

    def _logprob_entry(self, ev: TokenEvent) -> dict[str, Any]:
        return {
            "token": ev.text,
            "logprob": _logprob(ev.logprob),
            "bytes": list(ev.text.encode()),
            "top_logprobs": self._top(ev),
        }

    def _legacy_logprobs(self, events: list[TokenEvent]) -> dict[str, Any]:
        offsets = []
        for ev in events:
            offsets.append(self.text_offset)
            self.text_offset += len(ev.text)
        return {
            "tokens": [ev.text for ev in events],
            "token_logprobs": [_logprob(ev.logprob) for ev in events],
            "top_logprobs": [{t["token"]: t["logprob"] for t in self._top(ev)} for ev in events],
            "text_offset": offsets,
        }

    def _choice(self, events: list[TokenEvent], finish: str | None, summary: dict | None) -> dict:
        content = [ev for ev in events if not self.is_end_of_turn(ev)]
        text = "".join(ev.text for ev in content)
        choice: dict[str, Any] = {"index": 0}
        if self.kind == "chat":
            choice["delta"] = {"content": text} if content else {}
            choice["logprobs"] = (
                {"content": [self._logprob_entry(ev) for ev in content]}
                if self.logprobs and content
                else None
            )
        else:
            choice["text"] = text
            choice["logprobs"] = self._legacy_logprobs(content) if self.logprobs else None
        choice["finish_reason"] = finish
        if self.metrics and (events or summary):
            extra: dict[str, Any] = {"tokens": [event_record(ev) for ev in events]}
            if summary is not None:
                extra["summary"] = summary
            choice["entropix"] = extra
        return choice

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            **extra,
        }

    # ── streaming ──

    def role_chunk(self) -> dict[str, Any]:
        """The first chat chunk: the role, no content."""
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._chunk([choice])

    def add(self, ev: TokenEvent) -> dict[str, Any] | None:
        """Take one event; a chunk when it completes text (end-of-turn waits for `finish`)."""
        self.events.append(ev)
        self.pending.append(ev)
        if ev.text == "":  # half a character, or the end-of-turn token: wait
            return None
        events, self.pending = self.pending, []
        return self._chunk([self._choice(events, None, None)])

    def finish(self, summary: dict[str, Any] | None) -> dict[str, Any]:
        """The last chunk: `finish_reason`, leftover tokens (end-of-turn) and the summary."""
        events, self.pending = self.pending, []
        last = self.events[-1].finish_reason if self.events else None
        choice = self._choice(events, FINISH[last], summary)
        if self.kind == "chat":
            choice["delta"] = {}
        return self._chunk([choice])

    def usage(self, prompt_tokens: int, cached_tokens: int) -> dict[str, Any]:
        completion = len(self.events)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }

    def usage_chunk(self, prompt_tokens: int, cached_tokens: int) -> dict[str, Any]:
        return self._chunk([], usage=self.usage(prompt_tokens, cached_tokens))

    # ── whole responses ──

    def response(
        self, summary: dict[str, Any] | None, prompt_tokens: int, cached_tokens: int
    ) -> dict:
        """The non-streaming response: message (or text), logprobs, entropix, usage."""
        choice = self._choice(
            self.events, FINISH[self.events[-1].finish_reason if self.events else None], summary
        )
        if self.kind == "chat":
            choice.pop("delta")
            content = "".join(ev.text for ev in self.events)
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
            } | {k: v for k, v in choice.items() if k != "index"}
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [choice],
            "usage": self.usage(prompt_tokens, cached_tokens),
        }


def summary_of(events: list[TokenEvent], **context: Any) -> dict[str, Any]:
    """The inner object of `summary_record` (what `run --jsonl` writes after an answer)."""
    return summary_record(Summary.from_events(events), **context)["summary"]
