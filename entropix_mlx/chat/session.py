"""A multi-turn conversation over one KV cache.

`ChatSession` renders the conversation with the model's chat template, reuses the cache for the
longest common prefix with what it already holds, prefills only the new tokens and streams
`TokenEvent`s. It renders nothing: `loop.py` drives it, `store.py` keeps it on disk and
`ui/chat_view.py` shows it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import mlx.core as mx

from ..engine.config import SamplerConfig, check_sampler
from ..engine.generate import TokenEvent, generate, prefill
from ..engine.options import random_seed
from ..engine.sampler import SamplingParams
from ..engine.tokens import first_difference
from ..errors import ContextFullError, EntropixError
from ..tokenize.chat_template import chat_messages


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    events: tuple[TokenEvent, ...] = ()  # an assistant answer's tokens, for /stats and /save
    interrupted: bool = False  # stopped with Ctrl-C: the partial text is kept
    seed: int | None = None  # the seed the answer was decoded with


@dataclass(frozen=True)
class ChatStats:
    answers: int
    tokens: int
    interrupted: int
    mean_entropy: float
    strategies: dict[str, int] = field(default_factory=dict)
    quadrants: dict[str, int] = field(default_factory=dict)
    context_used: int = 0
    context_limit: int = 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share."""
    at = first_difference(a, b)
    return min(len(a), len(b)) if at is None else at


def _turn_starts(messages: Sequence[Message]) -> list[int]:
    """Where each turn (a user message and the answers after it) begins."""
    return [i for i, m in enumerate(messages) if m.role == "user"]


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

    def set_seed(self, seed: int | None, draws: int = 0) -> None:
        """Answers after this draw their seeds from `seed` in order, so a rerun repeats them;
        `draws` skips the seeds answers already used (a resumed chat goes on where it was)."""
        self.seed = seed if seed is not None else random_seed()
        self._seeds = random.Random(self.seed)
        for _ in range(draws):
            self._seeds.getrandbits(32)
        self.draws = draws

    def set_config(self, config: SamplerConfig, *, base: Sequence[str] | None = None) -> None:
        """Use `config`; `sample` takes its base parameters (T0, k0, p0, m0) from it too: the
        ones named in `base`, or all when `base` is None (a new profile)."""
        names = ("temperature", "top_k", "top_p", "min_p")
        fresh = SamplingParams.from_config(config)
        current = self.params or fresh
        self.params = replace(
            current, **{n: getattr(fresh, n) for n in names if base is None or n in base}
        )
        self.config = config

    def set_max_tokens(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"max_tokens={n} must be at least 1")
        self.max_tokens = n

    def set_sampler(self, name: str) -> None:
        self.sampler = check_sampler(name)

    def set_system(self, text: str | None) -> None:
        """Replace the system message; the conversation continues under it."""
        self.system = text or None

    def clear(self) -> None:
        """Forget the conversation; the cache is kept so the system prompt's prefix is reused."""
        self.messages = []

    def restore(self, messages: Sequence[Message], system: str | None) -> None:
        """Take over a saved conversation (call `prefill` next to have it in the cache)."""
        for m in messages:
            if m.role not in ("user", "assistant"):
                raise ValueError(f"a chat message's role must be user or assistant, not {m.role!r}")
        self.messages, self.system = list(messages), system or None

    def set_model(self, model: Any, tokenizer: Any, context_limit: int | None) -> None:
        """Continue the conversation on another model: a new, empty cache (call `prefill`)."""
        self.model, self.tokenizer, self.context_limit = model, tokenizer, context_limit
        self.cache = model.make_cache()
        self.cached_ids = []

    # ── context ──

    @property
    def limit(self) -> int:
        """The context size answers must fit in."""
        return self.context_limit or self.model.args.max_position_embeddings

    def conversation_ids(self, messages: Sequence[Message] | None = None) -> list[int]:
        """The conversation as the model reads it, without the prompt for the next answer."""
        rendered = self.template_messages(self.messages if messages is None else messages)
        if not rendered:
            return []
        return self.tokenizer.apply_chat_template(rendered, add_generation_prompt=False)

    def context_used(self) -> int:
        return len(self.conversation_ids())

    def prefill(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Put the whole conversation into the cache now (after a resume or a model switch), so
        the next message prefills only itself. Returns how many tokens were fed."""
        ids = self.conversation_ids()
        keep = common_prefix(self.cached_ids, ids)
        self._settle(ids, keep)
        if keep == len(ids):
            return 0
        if len(ids) >= self.limit:
            raise ContextFullError(
                f"the conversation ({len(ids):,} tokens) does not fit the context of {self.limit:,}"
            )
        try:
            prefill(self.model, ids[keep:], self.cache, progress=progress)
        finally:  # interrupted between layers: keep what every layer holds
            self._settle(ids)
        return len(ids) - keep

    def compact(self, reserve: int) -> int:
        """Drop the oldest turns (a user message and its answer; the system message stays) until
        the conversation plus `reserve` tokens fits, at least one. Returns how many were dropped."""
        turns = _turn_starts(self.messages)
        if len(turns) < 1:
            raise EntropixError("nothing to compact: the conversation has no turns yet")
        dropped = 0
        messages = self.messages
        for n in range(1, len(turns) + 1):
            messages = self.messages[turns[n] if n < len(turns) else len(self.messages) :]
            dropped = n
            if len(self.conversation_ids(messages)) + reserve < self.limit:
                break
        self.messages = list(messages)
        return dropped

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
        seed = self._seeds.getrandbits(32)
        self.draws += 1
        stream = generate(
            self.model,
            self.tokenizer,
            ids[keep:],
            sampler=self.sampler,
            max_tokens=self.max_tokens,
            seed=seed,
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
            self._commit(history, ids + [e.token_id for e in events], events, seed, True)
            raise
        except KeyboardInterrupt:  # raised inside a model step: only the old prefix is certain
            self._settle(ids, keep)
            self._commit(history, self.cached_ids, events, seed, True)
            raise
        except BaseException:
            self._settle(ids, keep)
            raise
        finally:
            stream.close()
        self._commit(history, ids + [e.token_id for e in events], events, seed, False)

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
        seed: int,
        interrupted: bool,
    ) -> None:
        self._settle(known)
        text = "".join(e.text for e in events)
        if interrupted and not text.strip():
            return  # nothing was said: the turn leaves no trace
        self.messages = [*history, Message("assistant", text, tuple(events), interrupted, seed)]

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
            context_used=self.context_used(),
            context_limit=self.limit,
        )

    def last_answer(self) -> Message:
        """The newest assistant message; EntropixError when there is none."""
        for m in reversed(self.messages):
            if m.role == "assistant":
                return m
        raise EntropixError("no answer yet; send a message first")

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

    @property
    def peak_memory(self) -> int:
        return mx.get_peak_memory()
