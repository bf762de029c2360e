"""The decode loop: prefill, one sampler decision per token, and a stream of `TokenEvent`s."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

import mlx.core as mx

from ..errors import ContextFullError
from ..model import backend
from ..model.cache import KVCache
from ..model.llama import Model, ModelOutput
from ..model.ops import logsumexp
from ..tokenize.tokenizer import Tokenizer
from .config import SamplerConfig
from .metrics import Metrics, step_metrics
from .options import random_seed
from .sampler import Sampler, SamplingParams, make_sampler
from .textstream import TextStream


@dataclass(frozen=True)
class TokenEvent:
    """Everything a renderer or exporter needs about one generated token."""

    index: int
    token_id: int
    text: str  # the printable text this token completed (may be "" mid-character or at a stop)
    logprob: float  # natural-log probability of the token at temperature 1
    metrics: Metrics
    quadrant: str
    strategy: str
    params: SamplingParams
    inserted: bool  # a clarify token inserted rather than sampled
    elapsed: float  # seconds from the end of prefill until this token was ready
    prompt_tokens: int
    prefill_seconds: float
    finish_reason: str | None = None  # "stop" | "length" | "context" on the last event
    # The k most likely (token id, log p) at temperature 1, most likely first (generate's
    # `top_logprobs`); empty for the later tokens of a clarify insertion.
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Summary:
    """Per-response totals, derived from the events alone so replays and exports agree."""

    tokens: int
    prompt_tokens: int
    prefill_tps: float
    decode_tps: float
    finish_reason: str | None
    strategies: dict[str, int] = field(default_factory=dict)
    quadrants: dict[str, int] = field(default_factory=dict)
    mean_entropy: float = 0.0

    @classmethod
    def from_events(cls, events: Sequence[TokenEvent]) -> Summary:
        if not events:
            return cls(0, 0, 0.0, 0.0, None)
        first, last = events[0], events[-1]
        decode_time = last.elapsed - first.elapsed
        return cls(
            tokens=len(events),
            prompt_tokens=first.prompt_tokens,
            prefill_tps=first.prompt_tokens / max(first.prefill_seconds, 1e-9),
            decode_tps=(len(events) - 1) / decode_time if decode_time > 0 else 0.0,
            finish_reason=last.finish_reason,
            strategies=dict(Counter(e.strategy for e in events)),
            quadrants=dict(Counter(e.quadrant for e in events)),
            mean_entropy=sum(e.metrics.entropy for e in events) / len(events),
        )


# Prompt tokens per model call. Measured (SmolLM2 dense, 2-core CPU, best of 2, interleaved,
# on a machine shared at load ~20, so ±2x noise): 300 tokens in chunks of 128/256/512/1024:
# 21.2/21.1/9.8/11.8 s; 1000 tokens: 55.7/60.0/53.7/47.7 s. Nothing below 512 was faster (an
# earlier, quieter run saw 256 5-15 % ahead: within this noise), and a 512-token chunk's
# activations stay ~20 MB (prompt attention runs in 128-query blocks), so 512 it is.
PREFILL_CHUNK = 512

# A prompt of this many tokens leaves its activations in glibc's heap; give them back (default
# model, packed, 500-token prompt: RSS 261 → 168 MiB right after, 184 after 128 decoded tokens;
# ~28 ms once).
RELEASE_AFTER_PROMPT = 256


def prefill(
    model: Model,
    ids: Sequence[int],
    cache: list[KVCache],
    *,
    chunk: int = PREFILL_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> ModelOutput:
    """Feed the prompt in chunks (bounded memory on long prompts); the last position's output."""
    if not ids:
        raise ValueError("prefill needs at least one token")
    for start in range(0, len(ids), chunk):
        out = model(mx.array([ids[start : start + chunk]]), cache)
        if start + chunk < len(ids):
            mx.eval([c.state for c in cache])  # earlier chunks only fill the cache
        else:
            mx.eval(out.logits, out.scores)
        if progress is not None:
            progress(min(start + chunk, len(ids)), len(ids))
    if len(ids) >= RELEASE_AFTER_PROMPT:
        backend.release_memory()
    return out


def _token_logprob(logits: mx.array, token: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    return logits[token] - logsumexp(logits)


def _top_logprobs(logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """The k best (ids, log p) of `logits` (V,), unordered (sorted on the host)."""
    logits = logits.astype(mx.float32)
    logprobs = logits - logsumexp(logits)
    ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
    return ids, logprobs[ids]


def generate(
    model: Model,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    *,
    sampler: Sampler | str = "greedy",
    max_tokens: int = 256,
    seed: int | None = None,
    config: SamplerConfig | None = None,
    params: SamplingParams | None = None,
    cache: list[KVCache] | None = None,
    stop_strings: Sequence[str] = (),
    stop_ids: Collection[int] | None = None,
    context_limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    top_logprobs: int = 0,
) -> Iterator[TokenEvent]:
    """Decode up to `max_tokens` after `prompt_ids`, yielding one event per token.

    With a `cache`, `prompt_ids` continue what it already holds (chat turns). Afterwards the cache
    holds a prefix of prompt + yielded tokens; callers that reuse it compare against `cache.offset`.
    The stop token itself is yielded (text "") so its metrics are visible; `finish_reason` says why
    the stream ended. `stop_ids` defaults to the tokenizer's end-of-turn ids (empty: never stop).

    `sampler` is a `Sampler` from `make_sampler`; a name (with `config` and `params`) builds one
    here, a convenience for scripts. `top_logprobs` k > 0 adds each step's k most likely tokens
    to its event (the server's `logprobs`).
    """
    if isinstance(sampler, str):
        sampler = make_sampler(sampler, config, tokenizer=tokenizer, params=params)
    elif config is not None or params is not None:
        raise ValueError("pass config and params to make_sampler, not with a Sampler object")
    choose, config = sampler, sampler.config
    cache = cache if cache is not None else model.make_cache()
    limit = context_limit or model.args.max_position_embeddings
    if cache[0].offset + len(prompt_ids) >= limit:
        raise ContextFullError(
            f"the prompt ({cache[0].offset + len(prompt_ids)} tokens) does not fit the context "
            f"of {limit}; shorten it or start a new conversation"
        )
    key = mx.random.key(seed if seed is not None else random_seed())
    stops = frozenset(tokenizer.stop_ids if stop_ids is None else stop_ids)
    text = TextStream(tokenizer, stop_strings)

    t0 = time.perf_counter()
    out = prefill(model, prompt_ids, cache, progress=progress)
    timing = {"prompt_tokens": len(prompt_ids), "prefill_seconds": time.perf_counter() - t0}
    t_decode = time.perf_counter()
    layers = config.attention_layers
    clarify_left = config.clarify_max
    index = 0
    while index < max_tokens:
        logits = out.logits[0]  # (V,)
        key, step_key = mx.random.split(key)
        # Before the next step is queued: on 2 CPU cores host work that overlaps OpenBLAS slows it
        # (measured: greedy decoded 5 % slower than entropix when its metrics came afterwards).
        metrics = step_metrics(out.logits, out.scores, layers)
        decision = choose(logits, metrics, step_key, clarify_left=clarify_left)
        clarify_left -= bool(decision.inserted)
        first = mx.array(decision.inserted[0]) if decision.inserted else decision.token
        logprob = _token_logprob(logits, first)
        top = _top_logprobs(logits, min(top_logprobs, logits.shape[-1])) if top_logprobs else ()
        mx.async_eval(logprob, *top)  # queued before the next step: fetching them never waits

        # Queue the next step before fetching this token: the device works while the host renders.
        next_ids = (
            mx.array([decision.inserted]) if decision.inserted else decision.token.reshape(1, 1)
        )
        room = cache[0].offset + next_ids.shape[1] < limit
        last = index + next_ids.shape[1] >= max_tokens or not room
        next_out = None if last else model(next_ids, cache)
        if next_out is not None:
            mx.async_eval(next_out.logits, next_out.scores)
        token_ids = list(decision.inserted) or [decision.token.item()]
        first_logprob = logprob.item()
        best = sorted(zip(*(a.tolist() for a in top)), key=lambda t: -t[1]) if top else ()
        for i, token_id in enumerate(token_ids):
            at_stop = token_id in stops and not decision.inserted
            piece, hit = ("", False) if at_stop else text.push(token_id)
            ends_room = not room and i == len(token_ids) - 1
            finish = _finish_reason(at_stop or hit, index + 1 >= max_tokens, ends_room)
            if finish is not None and not hit:
                piece += text.flush()
            yield TokenEvent(
                index=index,
                token_id=token_id,
                text=piece,
                logprob=first_logprob if i == 0 else math.nan,
                metrics=metrics,
                quadrant=decision.quadrant,
                strategy=decision.strategy,
                params=decision.params,
                inserted=bool(decision.inserted),
                elapsed=time.perf_counter() - t_decode,
                finish_reason=finish,
                top_logprobs=tuple(best) if i == 0 else (),
                **timing,
            )
            index += 1
            if finish is not None:
                return
        out = next_out


def _finish_reason(stopped: bool, at_max_tokens: bool, context_full: bool) -> str | None:
    if stopped:
        return "stop"
    if at_max_tokens:
        return "length"
    return "context" if context_full else None
