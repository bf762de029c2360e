"""`entropix serve` on the real default model (SmolLM2-135M), ≤ 8 tokens a request, through the
official `openai` client: metrics on every token, greedy logprobs, seeds, prompt-cache reuse, stop
strings, a saved answer that `entropix replay --check` re-decodes, and the slot after a cancel."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.engine.config import SamplerConfig
from entropix_mlx.engine.records import read_run
from entropix_mlx.serve.app import Server, Settings
from entropix_mlx.serve.engine import Cancelled, Job
from entropix_mlx.serve.mlx_engine import load_engine
from entropix_mlx.serve.runner import Background
from entropix_mlx.serve.worker import Worker

pytestmark = pytest.mark.slow
N = 8
Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def real(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    save = tmp_path_factory.mktemp("runs")
    worker = Worker(lambda: load_engine(str(smollm2_gguf), cache_slots=2), queue_size=4)
    bg = Background(Server(worker, Settings(max_tokens=N, save_dir=save))).start()
    while worker.state == "loading":
        threading.Event().wait(0.05)
    assert worker.state == "ready", worker.error
    bg.save = save
    yield bg
    bg.stop()


def api(bg: Background) -> OpenAI:
    return OpenAI(base_url=bg.url + "/v1", api_key="x", max_retries=0, timeout=60)


def ask(bg: Background, messages=Q, **extra):
    return api(bg).chat.completions.create(model="m", messages=messages, max_tokens=N, **extra)


COLD = {"entropix": {"cache_prompt": False}}


def test_stream_and_not_agree_with_metrics_on_every_token(real):
    chunks = list(
        ask(
            real,
            seed=3,
            stream=True,
            logprobs=True,
            top_logprobs=2,
            extra_body=COLD,
            stream_options={"include_usage": True},
        )
    )
    text, records, summary = "", [], None
    for chunk in chunks[:-1]:
        text += chunk.choices[0].delta.content or ""
        extra = chunk.choices[0].model_extra.get("entropix") or {}
        records += extra.get("tokens", [])
        summary = extra.get("summary", summary)
    usage = chunks[-1].usage
    assert usage.completion_tokens == len(records) == summary["tokens"] <= N
    assert {"entropy", "varentropy", "attn_entropy", "quadrant", "strategy"} <= set(records[0])
    whole = ask(real, seed=3, extra_body=COLD)
    assert whole.choices[0].message.content == text
    assert whole.system_fingerprint == chunks[0].system_fingerprint


def test_greedy_logprobs_are_the_top_choice(real):
    out = ask(
        real, seed=1, logprobs=True, top_logprobs=3, extra_body={"entropix": {"sampler": "greedy"}}
    )
    entries = out.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == out.choices[0].message.content
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-5)
        assert [t.logprob for t in e.top_logprobs] == sorted(
            (t.logprob for t in e.top_logprobs), reverse=True
        )
    records = out.choices[0].model_extra["entropix"]["tokens"]
    assert {r["strategy"] for r in records} == {"greedy"}
    plain = ask(real, seed=1, extra_body={"entropix": {"sampler": "greedy"}})
    assert tokens(plain) == [r["token_id"] for r in records]  # top_logprobs change no token


def tokens(r) -> list[int]:
    return [t["token_id"] for t in r.choices[0].model_extra["entropix"]["tokens"]]


def test_seeds_and_cache_reuse(real):
    # Equal prefill paths give equal tokens. A warm and a cold prefill compute the last prompt
    # positions with different matrix shapes (float rounding ~1e-5), so only greedy is compared
    # across them (as llama-server documents for cache_prompt).
    assert tokens(ask(real, seed=9, extra_body=COLD)) == tokens(ask(real, seed=9, extra_body=COLD))
    first = ask(real, seed=9)
    again = ask(real, seed=9)
    assert tokens(first) == tokens(again)
    assert again.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1
    turn2 = [
        *Q,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And of Italy?"},
    ]
    greedy = {"entropix": {"sampler": "greedy"}}
    warm = ask(real, turn2, seed=4, extra_body=greedy)
    assert warm.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1
    cold = ask(
        real, turn2, seed=4, extra_body={"entropix": {"sampler": "greedy", "cache_prompt": False}}
    )
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert tokens(cold) == tokens(warm)


def test_a_stop_string_over_two_tokens_never_appears(real):
    greedy = {"entropix": {"sampler": "greedy"}}
    out = ask(real, seed=1, logprobs=True, extra_body=greedy)
    entries = [e.token for e in out.choices[0].logprobs.content if e.token]
    stop = entries[1][-2:] + entries[2][:2]
    stopped = ask(real, seed=1, stop=[stop], extra_body=greedy)
    content = stopped.choices[0].message.content
    assert stop not in content and out.choices[0].message.content.startswith(content)
    assert stopped.choices[0].finish_reason == "stop"


def test_saved_answer_replays_identically(real):
    out = ask(real, seed=12, extra_body=COLD)  # replay --check prefills cold too
    path = real.save / f"{out.id}.jsonl"
    groups, summaries = read_run(path)
    assert len(groups[0]) == out.usage.completion_tokens and summaries[0]["messages"] == Q
    check = CliRunner().invoke(cli.make_app(), ["replay", str(path), "--check"])
    assert check.exit_code == 0, check.output
    assert "identical" in check.stdout


def test_raw_http_completion(real):
    r = httpx.post(
        real.url + "/v1/completions", json={"prompt": "The sky is", "max_tokens": 4, "seed": 2}
    )
    body = json.loads(r.text)
    assert (
        r.status_code == 200
        and body["object"] == "text_completion"
        and body["usage"]["completion_tokens"] <= 4
    )


def test_slot_stays_consistent_after_a_cancel(smollm2_gguf: Path):
    engine = load_engine(str(smollm2_gguf), cache_slots=1)
    ids = tuple(engine.tokenizer.apply_chat_template(Q))
    job = Job(ids, "greedy", SamplerConfig(), None, N, 0)
    cancel = threading.Event()
    stream = engine.stream(job, cancel, lambda *a: None)
    made = [next(stream).token_id, next(stream).token_id]
    stream.close()  # what the worker does when a client leaves after a token
    slot = engine.slots.slots[0]
    assert slot.ids == [*ids, *made] and slot.cache[0].offset == len(ids) + 2
    full = [ev.token_id for ev in engine.stream(job, cancel, lambda *a: None)]
    assert full[:2] == made  # the rewound slot decodes the same answer
    cancel.set()
    with pytest.raises(Cancelled):  # a cancel during prefill stops between chunks
        list(engine.stream(job, cancel, lambda *a: None))
