"""The seam between the HTTP side and the model: what the worker thread drives.

`Engine` is a protocol so protocol tests run on a scripted fake in milliseconds; `MlxEngine`
(mlx_engine.py) is the real one. No MLX here: the app imports this module.

Continuous batching: once the engine has a batched `generate_batch`, an engine that takes several
jobs at step boundaries slots in behind `Worker` (worker.py) without touching the app.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..engine.config import SamplerConfig
    from ..engine.generate import TokenEvent
    from ..engine.sampler import SamplingParams

# notify("cached", n) once the prompt cache is chosen; notify("prefill", done, total) per chunk.
Notify = Callable[..., None]


class Cancelled(Exception):
    """Raised inside the engine (from the prefill progress hook) when the client went away."""


@dataclass(frozen=True)
class EngineInfo:
    name: str
    n_ctx: int
    n_params: int
    quantization: str
    layout: str
    device: str
    path: str = ""


@dataclass(frozen=True)
class Job:
    """Everything that decides one answer's tokens."""

    ids: tuple[int, ...]
    sampler: str
    config: SamplerConfig
    params: SamplingParams | None
    max_tokens: int
    seed: int
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0
    cache_prompt: bool = True


class Engine(Protocol):
    """A loaded model as the server sees it. Only the worker thread calls `stream`; the
    tokenizer methods are called from request handlers too (they touch no MLX)."""

    info: EngineInfo
    stop_ids: frozenset[int]
    vocab_size: int

    def encode(self, text: str, *, add_special: bool = False) -> list[int]: ...

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self, id: int) -> bytes: ...

    def stream(self, job: Job, cancel: threading.Event, notify: Notify) -> Iterator[TokenEvent]: ...


def prompt_ids(
    engine: Engine, kind: str, messages: Sequence[dict[str, str]], prompt: str | None
) -> list[int]:
    """A request's prompt as token ids: the chat template, or the raw text (like `run --raw`).

    A final assistant message is a prefill the answer continues (as llama-server does): the
    template renders the turns before it with the generation prompt, and its text follows.
    """
    if kind == "completion":
        return engine.encode(prompt or "", add_special=True)
    if messages[-1]["role"] == "assistant":
        text = engine.render_chat(list(messages[:-1]), add_generation_prompt=True)
        return engine.encode(text + messages[-1]["content"], add_special=True)
    return engine.encode(
        engine.render_chat(list(messages), add_generation_prompt=True), add_special=True
    )


def describe(info: EngineInfo) -> dict[str, Any]:
    return {
        "n_ctx": info.n_ctx,
        "n_params": info.n_params,
        "quantization": info.quantization,
        "layout": info.layout,
        "device": info.device,
    }
