"""A multi-turn conversation over one KV cache.

`ChatSession` renders the conversation with the model's chat template, reuses the cache for the
longest common prefix with what it already holds, prefills only the new tokens and streams
`TokenEvent`s. It renders nothing; `chat.loop` drives it and a view (`ui.chat_view`) shows it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx

from ..engine.config import SamplerConfig, check_sampler
from ..engine.generate import Summary, TokenEvent, generate
from ..engine.options import random_seed
from ..engine.records import JsonlWriter, event_record, summary_record
from ..engine.sampler import SamplingParams
from ..engine.tokens import first_difference
from ..errors import EntropixError
from ..tokenize.chat_template import chat_messages


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    events: tuple[TokenEvent, ...] = ()  # an assistant answer's tokens, for /stats and /save
    interrupted: bool = False  # stopped with Ctrl-C: the partial text is kept


@dataclass(frozen=True)
class ChatStats:
    answers: int
    tokens: int
    interrupted: int
    mean_entropy: float
    strategies: dict[str, int] = field(default_factory=dict)
    quadrants: dict[str, int] = field(default_factory=dict)


class ChatSession:
    """Messages, the KV cache and the exact token ids the cache holds (`len(ids) == offset`)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        system: str | None = None,
        sampler: str = "entropix",
        config: SamplerConfig | None = None,
        params: SamplingParams | None = None,
        seed: int | None = None,
        max_tokens: int = 512,
        context_limit: int | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.config, self.params = config or SamplerConfig(), params
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.context_limit = context_limit
        self.messages: list[Message] = []
        self.cache = model.make_cache()
        self.cached_ids: list[int] = []
        self.set_seed(seed)

    # ── settings ──

    def set_seed(self, seed: int | None) -> None:
        """Answers after this draw their seeds from `seed` in order, so a rerun repeats them."""
        self.seed = seed if seed is not None else random_seed()
        self._seeds = random.Random(self.seed)

    def set_sampler(self, name: str) -> None:
        self.sampler = check_sampler(name)

    def set_system(self, text: str | None) -> None:
        """Replace the system message; the conversation continues under it."""
        self.system = text or None

    def clear(self) -> None:
        """Forget the conversation; the cache is kept so the system prompt's prefix is reused."""
        self.messages = []

    # ── turns ──

    def turn(
        self, text: str, progress: Callable[[int, int], None] | None = None
    ) -> Iterator[TokenEvent]:
        """Answer `text`; the answer joins the history when the stream ends or is closed early."""
        if not text.strip():
            raise ValueError("the message is empty; type something to send")
        return self._answer([*self.messages, Message("user", text)], progress)

    def retry(self, progress: Callable[[int, int], None] | None = None) -> Iterator[TokenEvent]:
        """Answer the last user message again, replacing the answer it had."""
        history = (
            self.messages[:-1]
            if self.messages and self.messages[-1].role == "assistant"
            else self.messages
        )
        if not history or history[-1].role != "user":
            raise EntropixError("nothing to retry yet; send a message first")
        return self._answer(list(history), progress)

    def template_messages(self, messages: Sequence[Message]) -> list[dict[str, str]]:
        return chat_messages(system=self.system, history=[(m.role, m.content) for m in messages])

    def _answer(
        self, history: list[Message], progress: Callable[[int, int], None] | None
    ) -> Iterator[TokenEvent]:
        ids = self.tokenizer.apply_chat_template(
            self.template_messages(history), add_generation_prompt=True
        )
        # Reuse the longest prefix the cache holds; at least one token is fed to get logits.
        at = first_difference(self.cached_ids, ids)
        keep = min(len(ids) if at is None else at, len(ids) - 1)
        self._settle(ids, keep)
        events: list[TokenEvent] = []
        stream = generate(
            self.model,
            self.tokenizer,
            ids[keep:],
            sampler=self.sampler,
            max_tokens=self.max_tokens,
            seed=self._seeds.getrandbits(32),
            config=self.config,
            params=self.params,
            cache=self.cache,
            context_limit=self.context_limit,
            progress=progress,
        )
        try:
            for ev in stream:
                events.append(ev)
                yield ev
        except GeneratorExit:  # the consumer stopped reading (Ctrl-C): the cache is consistent
            self._commit(history, ids + [e.token_id for e in events], events, interrupted=True)
            raise
        except KeyboardInterrupt:  # raised inside a model step: only the old prefix is certain
            self._settle(ids, keep)
            self._commit(history, self.cached_ids, events, interrupted=True)
            raise
        except BaseException:
            self._settle(ids, keep)
            raise
        finally:
            stream.close()
        self._commit(history, ids + [e.token_id for e in events], events, interrupted=False)

    def _settle(self, known: list[int], limit: int | None = None) -> None:
        """Rewind every layer to the longest prefix of `known` that all of them hold."""
        offset = min(
            [len(known), *(c.offset for c in self.cache)] + ([limit] if limit is not None else [])
        )
        for c in self.cache:
            c.trim(c.offset - offset)
        self.cached_ids = list(known[:offset])

    def _commit(
        self,
        history: list[Message],
        known: list[int],
        events: list[TokenEvent],
        *,
        interrupted: bool,
    ) -> None:
        self._settle(known)
        text = "".join(e.text for e in events)
        if interrupted and not text.strip():
            return  # nothing was said: the turn leaves no trace
        self.messages = [*history, Message("assistant", text, tuple(events), interrupted)]

    # ── views of the conversation ──

    def stats(self) -> ChatStats:
        answers = [m for m in self.messages if m.role == "assistant"]
        events = [e for m in answers for e in m.events]
        return ChatStats(
            answers=len(answers),
            tokens=len(events),
            interrupted=sum(m.interrupted for m in answers),
            mean_entropy=sum(e.metrics.entropy for e in events) / len(events) if events else 0.0,
            strategies=dict(Counter(e.strategy for e in events)),
            quadrants=dict(Counter(e.quadrant for e in events)),
        )

    def transcript(self, title: str = "entropix chat") -> str:
        """The conversation as Markdown."""
        lines = [f"# {title}", "", f"- sampler: {self.sampler}", f"- seed: {self.seed}", ""]
        if self.system:
            lines += ["## System", "", self.system, ""]
        for m in self.messages:
            lines += [f"## {m.role.capitalize()}", "", m.content.strip()]
            lines += ["", "*(stopped with Ctrl-C)*"] if m.interrupted else []
            lines.append("")
        return "\n".join(lines)

    def save(self, path: Path, **context: Any) -> tuple[Path, Path]:
        """Write PATH.md (transcript) and PATH.jsonl (each answer's tokens, then its summary)."""
        base = path.with_suffix("") if path.suffix in (".md", ".jsonl") else path
        md, jsonl = base.with_name(base.name + ".md"), base.with_name(base.name + ".jsonl")
        try:
            md.write_text(
                self.transcript(str(context.get("model", "entropix chat"))), encoding="utf-8"
            )
            with JsonlWriter(jsonl) as writer:
                for turn, m in enumerate(m for m in self.messages if m.role == "assistant"):
                    for ev in m.events:
                        writer.write(event_record(ev))
                    writer.write(
                        summary_record(
                            Summary.from_events(m.events),
                            turn=turn,
                            interrupted=m.interrupted,
                            sampler=self.sampler,
                            config=self.config,
                            seed=self.seed,
                            **context,
                        )
                    )
        except OSError as e:
            raise EntropixError(
                f"/save {path}: cannot write it ({e.strerror}); pick another path"
            ) from None
        return md, jsonl

    @property
    def peak_memory(self) -> int:
        return mx.get_peak_memory()
