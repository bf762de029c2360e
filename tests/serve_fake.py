"""A scripted `Engine` for the server's protocol tests: no model, milliseconds per request.

Vocabulary: ids 0–255 are single bytes, then the end-of-turn token, BOS and a few words. Answers
are chosen from the seed and the prompt, and always hold a two-byte character split over two
tokens (the first one's text is ""), a clarify insertion of two tokens (the second with a NaN
logprob) and, room permitting, the end-of-turn token.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from entropix_mlx.engine.generate import TokenEvent
from entropix_mlx.engine.metrics import Metrics
from entropix_mlx.engine.sampler import SamplingParams
from entropix_mlx.engine.textstream import TextStream
from entropix_mlx.serve.engine import Cancelled, EngineInfo, Job, Notify
from entropix_mlx.serve.slots import SlotPool
from entropix_mlx.tokenize.tokenizer import StreamingDetokenizer

EOT, BOS = 256, 257
WORDS = [" Paris", " is", " the", " capital", " of", " France", ".", " Hello", " world", "!"]
WORD0 = 258
CLARIFY = (WORD0 + len(WORDS), WORD0 + len(WORDS) + 1)  # " ." and ".." : the inserted pair
VOCAB = WORD0 + len(WORDS) + 2
SPECIAL = {EOT: b"<eot>", BOS: b"<bos>", CLARIFY[0]: b" .", CLARIFY[1]: b".."}


class FakeLayer:
    def __init__(self) -> None:
        self.offset = 0

    def trim(self, n: int) -> int:
        n = max(0, min(self.offset, n))
        self.offset -= n
        return n


@dataclass
class FakeEngine:
    token_delay: float = 0.0  # seconds per token (cancellation tests)
    prefill_delay: float = 0.0  # seconds per prefill chunk
    prefill_chunk: int = 8
    n_ctx: int = 4096
    fail: bool = False  # raise mid-answer (the error-after-start path)

    def __post_init__(self) -> None:
        self.info = EngineInfo(
            "fake-model", self.n_ctx, 1000, "none", "dense float32", "cpu", "/fake"
        )
        self.stop_ids = frozenset([EOT])
        self.vocab_size = VOCAB
        self.slots = SlotPool(2, lambda: [FakeLayer()])
        self.jobs: list[Job] = []

    # ── tokenizer ──

    def token_bytes(self, id: int) -> bytes:
        if id < 256:
            return bytes([id])
        if id in SPECIAL:
            return SPECIAL[id]
        return WORDS[id - WORD0].encode()

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        ids = []
        for part in text.split("<eot>"):
            ids += list(part.encode()) + [EOT]
        ids = ids[:-1]
        return ([BOS] if add_special else []) + ids

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        text = "".join(f"[{m['role']}]{m['content']}<eot>" for m in messages)
        return text + ("[assistant]" if add_generation_prompt else "")

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", "replace")

    # ── decoding ──

    def script(self, job: Job) -> list[tuple[int, bool]]:
        """(token id, inserted) for the whole answer, from the seed and the prompt."""
        rng = random.Random(hash((job.seed, tuple(job.ids))) if job.sampler != "greedy" else 0)
        words = [WORD0 + rng.randrange(len(WORDS)) for _ in range(3)]
        e_acute = list("é".encode())  # two byte tokens: the first completes no text
        body = [(w, False) for w in words[:1]] + [(b, False) for b in e_acute]
        body += [(CLARIFY[0], True), (CLARIFY[1], True)]
        body += [(w, False) for w in words[1:]]
        filler = [(WORD0 + rng.randrange(len(WORDS)), False) for _ in range(10_000)]
        return body + [(EOT, False)] + filler if job.max_tokens < 1000 else body + filler

    def stream(self, job: Job, cancel: threading.Event, notify: Notify) -> Iterator[TokenEvent]:
        self.jobs.append(job)
        ids = list(job.ids)
        slot, keep = self.slots.acquire(ids, reuse=job.cache_prompt)
        notify("cached", keep)
        layer = slot.cache[0]
        for start in range(keep, len(ids), self.prefill_chunk):
            time.sleep(self.prefill_delay)
            layer.offset = min(start + self.prefill_chunk, len(ids))
            if cancel.is_set():
                slot.settle(ids)
                raise Cancelled
            notify("prefill", layer.offset, len(ids))
        made: list[int] = []
        try:
            yield from self._decode(job, made, layer)
        finally:
            slot.settle(ids + made)

    def detokenizer(self) -> StreamingDetokenizer:
        return StreamingDetokenizer(self.token_bytes)

    def _decode(self, job: Job, made: list[int], layer: FakeLayer) -> Iterator[TokenEvent]:
        text = TextStream(self, job.stop)  # generate's own stop-string hold-back
        t0 = time.perf_counter()
        for index, (token, inserted) in enumerate(self.script(job)):
            time.sleep(self.token_delay)
            if self.fail and index == 3:
                raise RuntimeError("scripted failure")
            at_eot = token == EOT
            piece, hit = ("", False) if at_eot else text.push(token)
            finish = "stop" if at_eot or hit else "length" if index + 1 >= job.max_tokens else None
            if finish is not None and not hit:
                piece += text.flush()
            second_inserted = inserted and token == CLARIFY[1]
            lp = math.nan if second_inserted else -0.1 * (index % 5) - 0.05
            top = self._top(token, lp, job.top_logprobs) if not second_inserted else ()
            strategy = (
                "greedy" if job.sampler == "greedy" else ("clarify" if inserted else "argmax")
            )
            made.append(token)
            layer.offset += 1
            yield TokenEvent(
                index=index,
                token_id=token,
                text=piece,
                logprob=lp,
                metrics=Metrics(0.5 + index % 3, 1.0, 2.0, 0.5, 0.1, 3.0),
                quadrant="HELV" if inserted else "LELV",
                strategy=strategy,
                params=SamplingParams(0.0, 0, 1.0, 0.0),
                inserted=inserted,
                elapsed=time.perf_counter() - t0,
                prompt_tokens=len(job.ids),
                prefill_seconds=0.001,
                finish_reason=finish,
                top_logprobs=top,
            )
            if finish is not None:
                return

    def _top(self, token: int, lp: float, k: int) -> tuple[tuple[int, float], ...]:
        others = [i for i in range(WORD0, WORD0 + len(WORDS)) if i != token]
        return tuple([(token, lp)] + [(o, lp - 1.0 - n) for n, o in enumerate(others)])[:k]
