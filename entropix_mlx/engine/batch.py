"""Batched decoding: many prompts at once, each row the same tokens as decoding it alone.

A decode step of a small model on the CPU is bound by reading the weights; B rows read them once.
Rows are left-padded into one `BatchKVCache` per layer (each row's RoPE positions are its own, and
the mask hides the padding from attention and from the metrics). Every row keeps what `generate`
keeps for one prompt: its sampler, its key (from its own seed, split once per decision), its
clarify budget, stop ids / strings, `max_tokens` and context room. A row that finishes leaves the
batch at once (the cache is compacted) and the next waiting job takes its slot, so `batch_size`
rows stay busy until the jobs run out.

One step of the batch feeds exactly one token per row: a sampled token, or the next token of a
clarify insertion (fed one per step; the row decides again after the last one, as `generate` does
after feeding the whole insertion).
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import mlx.core as mx
import numpy as np

from ..errors import ContextFullError
from ..model.backend import on_cpu
from ..model.cache import BatchKVCache
from ..model.llama import Model, ModelOutput
from ..tokenize.tokenizer import Tokenizer
from .config import SamplerConfig
from .generate import PREFILL_CHUNK, TokenEvent, _finish_reason, _token_logprob
from .metrics import Metrics, row_metrics
from .options import random_seed
from .sampler import Decision, Sampler, SamplingParams, make_sampler
from .textstream import TextStream


@dataclass(frozen=True)
class Job:
    """One prompt and how to decode it: what `generate` takes for a single prompt."""

    prompt_ids: Sequence[int]
    sampler: str | Sampler = "greedy"
    seed: int | None = None
    max_tokens: int = 256
    config: SamplerConfig | None = None
    params: SamplingParams | None = None
    stop_strings: Sequence[str] = ()
    stop_ids: Collection[int] | None = None  # None: the tokenizer's end-of-turn ids


@dataclass(frozen=True)
class BatchEvent:
    """One token of job number `job` (its index in the list given to `generate_batch`)."""

    job: int
    event: TokenEvent


@dataclass(eq=False)
class _Row:
    """A job's decoding state while it holds a batch slot."""

    job: int
    sampler: Sampler
    key: mx.array
    clarify_left: int
    layers: str
    stops: frozenset[int]
    text: TextStream
    limit: int
    max_tokens: int
    prompt_tokens: int
    position: int  # tokens in the cache: the prompt and every token fed so far
    index: int = 0  # tokens emitted
    forced: list[int] = field(default_factory=list)  # clarify tokens still to feed, in order
    prefill_seconds: float = 0.0
    t_decode: float = 0.0


@dataclass(eq=False)
class _Part:
    """Rows whose newest outputs came from the same model call, and where their keys start."""

    rows: list[_Row]
    out: ModelOutput
    starts: np.ndarray  # (B,) first valid key slot of each row in `out.scores`


def default_batch_size() -> int:
    """Rows decoded together when the caller does not say: 16 on the CPU (benchmarks/batch.py:
    the throughput gain flattens past it while per-row latency keeps growing), 32 on a GPU."""
    return 16 if on_cpu() else 32


def _make_row(job_index: int, job: Job, tokenizer: Tokenizer, limit: int) -> _Row:
    sampler = job.sampler
    if isinstance(sampler, str):  # a new sampler per job: some keep state within a response
        sampler = make_sampler(sampler, job.config, tokenizer=tokenizer, params=job.params)
    config = sampler.config
    seed = job.seed if job.seed is not None else random_seed()
    return _Row(
        job=job_index,
        sampler=sampler,
        key=mx.random.key(seed),
        clarify_left=config.clarify_max,
        layers=config.attention_layers,
        stops=frozenset(tokenizer.stop_ids if job.stop_ids is None else job.stop_ids),
        text=TextStream(tokenizer, job.stop_strings),
        limit=limit,
        max_tokens=job.max_tokens,
        prompt_tokens=len(job.prompt_ids),
        position=len(job.prompt_ids),
    )


def prefill_batch(
    model: Model, prompts: Sequence[Sequence[int]], *, chunk: int = PREFILL_CHUNK
) -> tuple[list[BatchKVCache], ModelOutput]:
    """Prompts of any lengths, left-padded into one batch; the last position's output.

    Fed in chunks of at most `chunk` tokens in all (B rows × chunk // B positions): memory stays
    bounded whatever the batch size.
    """
    T = max(len(p) for p in prompts)
    pads = [T - len(p) for p in prompts]
    cache = [BatchKVCache(pads) for _ in model.layers]
    ids = mx.array([[0] * pad + list(p) for pad, p in zip(pads, prompts)])  # (B, T)
    step = max(1, chunk // len(prompts))
    for start in range(0, T, step):
        out = model(ids[:, start : start + step], cache)
        if start + step < T:
            mx.eval([c.state for c in cache])  # earlier chunks only fill the cache
    mx.eval(out.logits, out.scores)
    return cache, out


@dataclass(eq=False)
class _Step:
    """What each row does this step: feed a token, and (at a decision) emit tokens."""

    feeds: list[mx.array]  # one lazy int32 scalar per row
    logprobs: list[mx.array]  # per row (0 where no decision)
    decisions: list[tuple[Decision, Metrics] | None]  # None: a clarify token fed, no decision


def _decide(parts: list[_Part]) -> _Step:
    """Metrics and a sampler decision for every row at a decision point; forced feeds for others."""
    step = _Step([], [], [])
    for part in parts:
        deciding = [None if r.forced else r.layers for r in part.rows]
        metrics = row_metrics(part.out.logits, part.out.scores, part.starts, deciding)
        for i, row in enumerate(part.rows):
            if row.forced:
                step.feeds.append(mx.array(row.forced.pop(0), dtype=mx.int32))
                step.logprobs.append(mx.array(0.0))
                step.decisions.append(None)
                continue
            logits = part.out.logits[i]  # (V,)
            row.key, key = mx.random.split(row.key)
            decision = row.sampler(logits, metrics[i], key, clarify_left=row.clarify_left)
            row.clarify_left -= bool(decision.inserted)
            if decision.inserted:
                first = mx.array(decision.inserted[0], dtype=mx.int32)
                row.forced = list(decision.inserted[1:])
            else:
                first = decision.token
            step.feeds.append(first)
            step.logprobs.append(_token_logprob(logits, first))
            step.decisions.append((decision, metrics[i]))
    return step


def _ends_now(row: _Row, decided: tuple[Decision, Metrics] | None) -> tuple[bool, bool]:
    """(whether the row ends at this decision whatever it draws, whether the context has room)."""
    if decided is None:
        return False, True
    n = len(decided[0].inserted) or 1
    room = row.position + n < row.limit
    return row.index + n >= row.max_tokens or not room, room


def _emit(
    row: _Row, decided: tuple[Decision, Metrics], token: int, logprob: float, room: bool, now: float
) -> Iterator[TokenEvent]:
    """The events of one decision, with `generate`'s stop / length / context rules."""
    decision, metrics = decided
    token_ids = list(decision.inserted) or [token]
    for i, token_id in enumerate(token_ids):
        at_stop = token_id in row.stops and not decision.inserted
        piece, hit = ("", False) if at_stop else row.text.push(token_id)
        ends_room = not room and i == len(token_ids) - 1
        finish = _finish_reason(at_stop or hit, row.index + 1 >= row.max_tokens, ends_room)
        if finish is not None and not hit:
            piece += row.text.flush()
        yield TokenEvent(
            index=row.index,
            token_id=token_id,
            text=piece,
            logprob=logprob if i == 0 else math.nan,
            metrics=metrics,
            quadrant=decision.quadrant,
            strategy=decision.strategy,
            params=decision.params,
            inserted=bool(decision.inserted),
            elapsed=now - row.t_decode,
            prompt_tokens=row.prompt_tokens,
            prefill_seconds=row.prefill_seconds,
            finish_reason=finish,
        )
        row.index += 1
        if finish is not None:
            return


def generate_batch(
    model: Model,
    tokenizer: Tokenizer,
    jobs: Sequence[Job],
    *,
    batch_size: int | None = None,
    context_limit: int | None = None,
) -> Iterator[BatchEvent]:
    """Decode every job, up to `batch_size` at a time, yielding each token as a `BatchEvent`.

    A job's events come in order and are the events `generate` yields for it alone (the same
    tokens; metrics equal up to float32 rounding); different jobs' events interleave step by step.
    A finished job's slot goes to the next waiting job. `batch_size` None: `default_batch_size()`.
    """
    batch_size = batch_size or default_batch_size()
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be ≥ 1")
    limit = context_limit or model.args.max_position_embeddings
    for i, job in enumerate(jobs):
        if not job.prompt_ids or job.max_tokens < 1:
            raise ValueError(f"job {i}: needs a prompt and max_tokens ≥ 1")
        if len(job.prompt_ids) >= limit:
            raise ContextFullError(
                f"job {i}: the prompt ({len(job.prompt_ids)} tokens) does not fit the context "
                f"of {limit}; shorten it"
            )
    waiting = iter(enumerate(jobs))
    cache = [BatchKVCache([]) for _ in model.layers]
    rows: list[_Row] = []  # in cache order
    parts: list[_Part] = []  # their newest outputs, in the same order
    while True:
        admitted = list(islice(waiting, batch_size - len(rows)))
        if admitted:
            newcomers = [_make_row(i, job, tokenizer, limit) for i, job in admitted]
            parts.append(_admit(model, cache, newcomers, [job.prompt_ids for _, job in admitted]))
            rows = rows + newcomers
        if not rows:
            return
        step = _decide(parts)
        feed, logprobs = mx.stack(step.feeds), mx.stack(step.logprobs)  # (B,) each
        mx.async_eval(feed, logprobs)
        # Rows that end at this decision whatever they draw (length, context) are not fed again.
        ends = [_ends_now(r, d) for r, d in zip(rows, step.decisions)]
        going = [b for b, (end, _) in enumerate(ends) if not end]
        if len(going) < len(rows):
            for c in cache:
                c.filter(going)
        nxt = None
        if going:
            starts = cache[0].left_padding.copy()
            ids = feed if len(going) == len(rows) else feed[mx.array(going)]
            out = model(ids[:, None], cache)  # (B', 1)
            mx.async_eval(out.logits, out.scores)
            nxt = (out, starts)
        fed, lps = feed.tolist(), logprobs.tolist()
        stopped = set()
        now = time.perf_counter()
        for b, (row, decided) in enumerate(zip(rows, step.decisions)):
            row.position += 1
            if decided is None:
                continue
            for event in _emit(row, decided, fed[b], lps[b], ends[b][1], now):
                yield BatchEvent(row.job, event)
                if event.finish_reason is not None:
                    stopped.add(b)
        keep = [k for k, b in enumerate(going) if b not in stopped]
        if len(keep) < len(going):
            for c in cache:
                c.filter(keep)
        rows = [rows[going[k]] for k in keep]
        parts = []
        if nxt is not None and keep:
            out, starts = nxt
            if len(keep) < len(going):
                index = mx.array(keep)
                out, starts = ModelOutput(out.logits[index], out.scores[index]), starts[keep]
            parts.append(_Part(rows, out, starts))


def _admit(
    model: Model, cache: list[BatchKVCache], rows: list[_Row], prompts: list[Sequence[int]]
) -> _Part:
    """Prefill the newcomers together and append them to the batch's cache."""
    t0 = time.perf_counter()
    theirs, out = prefill_batch(model, prompts)
    now = time.perf_counter()
    for row in rows:
        row.prefill_seconds, row.t_decode = now - t0, now
    for c, new in zip(cache, theirs):
        c.extend(new)
    return _Part(rows, out, theirs[0].left_padding.copy())


def decode_jobs(
    model: Model,
    tokenizer: Tokenizer,
    jobs: Sequence[Job],
    *,
    batch_size: int | None = None,
    context_limit: int | None = None,
    ordered: bool = True,
) -> Iterator[tuple[int, list[TokenEvent]]]:
    """Each job's whole event list as `(job index, events)` once it is done.

    `ordered`: in job order (a job that finished early waits for those before it), else in the
    order they finish. This is the seam for callers that consume whole answers (eval, calibrate,
    `run` over a .jsonl of prompts).
    """
    events: dict[int, list[TokenEvent]] = {i: [] for i in range(len(jobs))}
    done: set[int] = set()
    next_out = 0
    for item in generate_batch(
        model, tokenizer, jobs, batch_size=batch_size, context_limit=context_limit
    ):
        events[item.job].append(item.event)
        if item.event.finish_reason is None:
            continue
        if not ordered:
            yield item.job, events.pop(item.job)
            continue
        done.add(item.job)
        while next_out in done:
            yield next_out, events.pop(next_out)
            next_out += 1
