"""The real engine: our model and `generate`, with prompt-cache slots. Worker thread only."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..engine.generate import TokenEvent, generate
from .engine import Cancelled, EngineInfo, Job, Notify
from .slots import SlotPool


class MlxEngine:
    def __init__(
        self, model: Any, tokenizer: Any, info: EngineInfo, *, cache_slots: int = 2
    ) -> None:
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.stop_ids = frozenset(tokenizer.stop_ids)
        self.vocab_size = tokenizer.vocab_size
        self.slots = SlotPool(cache_slots, model.make_cache)

    # ── tokenizer (any thread) ──

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special)

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.render_chat(
            list(messages), add_generation_prompt=add_generation_prompt
        )

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_bytes(self, id: int) -> bytes:
        return self.tokenizer.token_bytes(id)

    # ── decoding (the worker thread) ──

    def stream(self, job: Job, cancel: threading.Event, notify: Notify) -> Iterator[TokenEvent]:
        """Decode `job` in the best-matching slot; afterwards the slot holds prompt + answer.

        Closing the iterator early (a cancel after a token) keeps the slot consistent; a cancel
        during prefill keeps the chunks already evaluated; any other error rewinds the slot to
        the prefix it had reused.
        """
        ids = list(job.ids)
        slot, keep = self.slots.acquire(ids, reuse=job.cache_prompt)
        notify("cached", keep)

        def progress(done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled
            notify("prefill", keep + done, len(ids))

        events: list[int] = []
        stream = generate(
            self.model,
            self.tokenizer,
            ids[keep:],
            sampler=job.sampler,
            max_tokens=job.max_tokens,
            seed=job.seed,
            config=job.config,
            params=job.params,
            cache=slot.cache,
            stop_strings=job.stop,
            context_limit=self.info.n_ctx,
            progress=progress,
            top_logprobs=job.top_logprobs,
        )
        try:
            for ev in stream:
                events.append(ev.token_id)
                yield ev
        except GeneratorExit:  # the worker stopped reading: every yielded token is in the cache
            slot.settle(ids + events)
            raise
        except Cancelled:  # between prefill chunks: the evaluated chunks are consistent
            slot.settle(ids)
            raise
        except BaseException:
            slot.settle(ids, keep)
            raise
        finally:
            stream.close()
        slot.settle(ids + events)


def load_engine(model: str | None, *, cache_slots: int = 2) -> MlxEngine:
    """Load a model (on the calling thread, which must be the worker) into an `MlxEngine`."""
    from ..model.load import load

    net, tokenizer, info = load(model)
    engine_info = EngineInfo(
        name=info.name,
        n_ctx=info.context_length,
        n_params=info.params,
        quantization=info.quantization,
        layout=info.layout,
        device=info.device,
        path=str(info.path.resolve()),
    )
    return MlxEngine(net, tokenizer, engine_info, cache_slots=cache_slots)
