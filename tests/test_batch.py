"""Batched decoding: every row of a batch yields what decoding its prompt alone yields."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from checkpoints import make_tiny_checkpoint
from conftest import run_main

from entropix_mlx.engine.batch import Job, decode_jobs, generate_batch, prefill_batch
from entropix_mlx.engine.generate import generate
from entropix_mlx.engine.metrics import METRIC_NAMES
from entropix_mlx.engine.sampler import SamplerConfig
from entropix_mlx.errors import ContextFullError
from entropix_mlx.lab.calibrate import collect_samples
from entropix_mlx.model import quant
from entropix_mlx.model.cache import BatchKVCache, KVCache
from entropix_mlx.model.load import load

# Thresholds that put the random model's steps in HELV: clarify inserts several tokens at once.
CLARIFY_EVERYWHERE = {
    "low_ent": "0.01",
    "med_ent": "0.02",
    "high_ent": "0.05",
    "low_vent": "1000",
    "high_vent": "2000",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    model, tok, _ = load(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny")))
    return model, tok


def _prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(5, 300, n).tolist()


def _alone(model, tok, job: Job) -> list:
    return list(
        generate(
            model,
            tok,
            job.prompt_ids,
            sampler=job.sampler,
            max_tokens=job.max_tokens,
            seed=job.seed,
            config=job.config,
            stop_strings=job.stop_strings,
            stop_ids=job.stop_ids,
        )
    )


def _assert_same(batched: list, alone: list, where: str, rel: float = 1e-4) -> None:
    assert [e.token_id for e in batched] == [e.token_id for e in alone], where
    assert [e.text for e in batched] == [e.text for e in alone], where
    assert [e.finish_reason for e in batched] == [e.finish_reason for e in alone], where
    assert [(e.quadrant, e.strategy, e.inserted) for e in batched] == [
        (e.quadrant, e.strategy, e.inserted) for e in alone
    ], where
    for a, b in zip(batched, alone):
        assert a.params == b.params or a.strategy in ("adaptive", "explore", "resample", "clarify")
        for name in METRIC_NAMES:
            x, y = getattr(a.metrics, name), getattr(b.metrics, name)
            assert x == pytest.approx(y, rel=rel, abs=rel / 100), f"{where} {name} at {a.index}"
        if not math.isnan(b.logprob):
            assert a.logprob == pytest.approx(b.logprob, rel=rel, abs=rel / 10), where


def _by_job(items) -> dict[int, list]:
    out: dict[int, list] = {}
    for item in items:
        out.setdefault(item.job, []).append(item.event)
    return out


@pytest.mark.parametrize("sampler", ["greedy", "sample", "entropix"])
def test_each_row_equals_decoding_its_prompt_alone(tiny, sampler: str) -> None:
    """Very different lengths in one batch (left padding up to 247 slots), one row crossing the
    cache's 256-slot growth while decoding, rows stopping at different times."""
    model, tok = tiny
    lengths_and_budgets = [(3, 20), (250, 14), (40, 5), (120, 9)]
    jobs = [
        Job(_prompt(n, seed=i), sampler=sampler, seed=100 + i, max_tokens=m, stop_ids=())
        for i, (n, m) in enumerate(lengths_and_budgets)
    ]
    got = _by_job(generate_batch(model, tok, jobs, batch_size=4))
    assert sorted(got) == [0, 1, 2, 3]
    for i, job in enumerate(jobs):
        _assert_same(got[i], _alone(model, tok, job), f"job {i}")
        assert len(got[i]) == job.max_tokens


def test_rows_end_on_their_own_stop_ids_strings_and_budgets(tiny) -> None:
    model, tok = tiny
    base = _alone(model, tok, Job(_prompt(30, 1), sampler="sample", seed=5, max_tokens=30))
    text = "".join(e.text for e in base)
    jobs = [
        Job(_prompt(30, 1), sampler="sample", seed=5, max_tokens=30, stop_ids=()),
        # Stops at the 6th token of what it would otherwise say.
        Job(_prompt(30, 1), sampler="sample", seed=5, max_tokens=30, stop_ids={base[5].token_id}),
        Job(_prompt(30, 1), sampler="sample", seed=5, max_tokens=30, stop_strings=(text[8:11],)),
        Job(_prompt(7, 2), sampler="sample", seed=6, max_tokens=3, stop_ids=()),
    ]
    got = _by_job(generate_batch(model, tok, jobs, batch_size=4))
    for i, job in enumerate(jobs):
        _assert_same(got[i], _alone(model, tok, job), f"job {i}")
    assert got[1][-1].finish_reason == "stop" and len(got[1]) <= 6
    assert got[2][-1].finish_reason == "stop"
    assert got[3][-1].finish_reason == "length" and len(got[3]) == 3


def test_clarify_insertions_feed_one_token_a_step_and_match_the_single_stream(tiny) -> None:
    model, tok = tiny
    config = SamplerConfig().with_overrides(CLARIFY_EVERYWHERE)
    assert len(tok.encode(config.clarify_text)) > 1  # several tokens to feed
    jobs = [
        Job(_prompt(n, n), sampler="entropix", seed=n, max_tokens=9, config=config, stop_ids=())
        for n in (4, 60)
    ] + [Job(_prompt(20, 3), sampler="greedy", max_tokens=9, stop_ids=())]
    got = _by_job(generate_batch(model, tok, jobs, batch_size=3))
    assert any(e.inserted for e in got[0])
    for i, job in enumerate(jobs):
        _assert_same(got[i], _alone(model, tok, job), f"job {i}")


def test_more_jobs_than_slots_refill_finished_slots_and_come_back_in_order(tiny) -> None:
    model, tok = tiny
    jobs = [
        Job(_prompt(5 + 37 * i % 200, i), sampler="sample", seed=i, max_tokens=3 + 5 * i % 11)
        for i in range(7)
    ]
    results = list(decode_jobs(model, tok, jobs, batch_size=3))
    assert [i for i, _ in results] == list(range(7))
    for i, events in results:
        _assert_same(events, _alone(model, tok, jobs[i]), f"job {i}")
    finish_order = [i for i, _ in decode_jobs(model, tok, jobs, batch_size=3, ordered=False)]
    assert sorted(finish_order) == list(range(7)) and finish_order != list(range(7))


def test_a_prompt_over_the_context_fails_before_anything_is_decoded(tiny) -> None:
    model, tok = tiny
    jobs = [Job([5] * 10), Job([5] * 50)]
    with pytest.raises(ContextFullError, match="job 1"):
        next(generate_batch(model, tok, jobs, context_limit=40))


def test_context_full_ends_only_that_row(tiny) -> None:
    model, tok = tiny
    jobs = [Job(_prompt(30, 0), max_tokens=50, stop_ids=()), Job(_prompt(5, 1), max_tokens=50)]
    got = _by_job(generate_batch(model, tok, jobs, context_limit=40))
    assert got[0][-1].finish_reason == "context" and len(got[0]) == 10
    alone = list(
        generate(model, tok, jobs[0].prompt_ids, max_tokens=50, stop_ids=(), context_limit=40)
    )
    assert [e.token_id for e in got[0]] == [e.token_id for e in alone]
    assert len(got[1]) > 10


def test_padding_never_reaches_attention_or_its_statistics(tiny) -> None:
    """Padded slots get huge keys and values: a row's output and valid scores must not change
    (unmasked, a 1e3 key would take all of the attention and its 1e6 value the output)."""
    model, tok = tiny
    short, long = _prompt(6, 0), _prompt(70, 1)
    cache, out = prefill_batch(model, [short, long], chunk=32)
    alone = model(mx.array([short]))
    pad = int(cache[0].left_padding[0])
    assert pad == 64
    for c in cache:
        c.keys[0, :, :pad] = 1e3
        c.values[0, :, :pad] = 1e6
    step = model(mx.array([[7], [7]]), cache)
    solo_cache = model.make_cache()
    model(mx.array([short]), solo_cache)
    solo = model(mx.array([[7]]), solo_cache)
    assert np.allclose(np.array(step.logits[0]), np.array(solo.logits[0]), atol=1e-4)
    valid = np.array(step.scores[0, ..., pad:])
    assert np.isfinite(valid).all()
    np.testing.assert_allclose(valid, np.array(solo.scores[0]), atol=1e-4)
    np.testing.assert_allclose(np.array(out.logits[0]), np.array(alone.logits[0]), atol=1e-4)


def test_batch_cache_filter_and_extend_keep_each_rows_keys() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((1, 2, n, 4)).astype(np.float32) for n in (3, 9, 5)]
    cache = BatchKVCache([6, 0])
    both = np.concatenate([np.pad(rows[0], [(0, 0), (0, 0), (6, 0), (0, 0)]), rows[1]])
    cache.update_and_fetch(mx.array(both), mx.array(both))
    single = KVCache()
    single.update_and_fetch(mx.array(rows[2]), mx.array(rows[2]))
    cache.extend(single)
    assert cache.offset == 9 and cache.left_padding.tolist() == [6, 0, 4]
    assert cache.positions.tolist() == [3, 9, 5]
    for b, row in enumerate(rows):
        pad = int(cache.left_padding[b])
        np.testing.assert_array_equal(np.array(cache.keys[b : b + 1, :, pad:9]), row)
    cache.filter([2, 0])  # drops the long row: 4 slots of padding common to both go
    assert cache.offset == 5 and cache.left_padding.tolist() == [0, 2]
    np.testing.assert_array_equal(np.array(cache.keys[1:2, :, 2:5]), rows[0])
    np.testing.assert_array_equal(np.array(cache.values[0:1, :, :5]), rows[2])
    mask = np.array(cache.make_mask(1))  # (B, 1, 1, T + 1)
    assert (
        mask.shape == (2, 1, 1, 6)
        and mask[0].all()
        and mask[1, 0, 0].tolist() == [0, 0, 1, 1, 1, 1]
    )
    cache.filter([])
    assert cache.keys is None and cache.offset == 0


# Packed weights quantize each activation row to int8: a difference of 1e-7 in a row's input (a
# padded batch's attention sums in another order) can move a value across a rounding step, which
# moves the logits by up to ~1e-3; the tokens stay the same.
@pytest.mark.slow
@pytest.mark.parametrize("layout, rel", [("dense", 1e-4), ("packed", 2e-3)])
def test_default_model_rows_of_mixed_lengths_equal_decoding_alone(
    smollm2_gguf: Path, layout: str, rel: float
) -> None:
    if layout == "packed" and quant.native() is None:
        pytest.skip(f"the packed kernels are not built: {quant.native_error()}")
    model, tok, _ = load(smollm2_gguf, layout=layout)
    prompts = [
        "What is 2 + 2?",
        "Write a haiku about the sea, then explain in one sentence why it is a haiku. " * 3,
        "Name three primes.",
    ]
    jobs = [
        Job(
            tok.apply_chat_template([{"role": "user", "content": p}]),
            sampler=s,
            seed=1,
            max_tokens=m,
        )
        for p, s, m in zip(prompts, ("greedy", "entropix", "sample"), (24, 16, 8))
    ]
    got = _by_job(generate_batch(model, tok, jobs, batch_size=3))
    for i, job in enumerate(jobs):
        _assert_same(got[i], _alone(model, tok, job), f"{layout} job {i}", rel)


# ── the commands that decode many prompts ─────────────────────────────────────────────────────

QUESTIONS = [
    {"id": "sum", "question": "What is two plus two?", "number": 4},
    {
        "id": "any",
        "question": "Say anything at all, at length, about anything you like.",
        "regex": ".",
    },
    {"id": "cap", "question": "Capital of France?", "answer": "Paris"},
]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-cli") / "tiny-llama")


def test_eval_answers_the_same_at_any_batch_size(monkeypatch, capsys, tmp_path, tiny_path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    answers = {}
    for size in (1, 4):
        out = tmp_path / f"a{size}.jsonl"
        args = ["eval", "-q", str(questions), "-s", "greedy,entropix,sample", "-m", str(tiny_path)]
        args += ["-n", "12", "--jsonl", str(out), "--batch-size", str(size), "--plain"]
        code, _, err = run_main(monkeypatch, capsys, args)
        assert code == 0, err
        lines = [json.loads(line) for line in out.read_text().splitlines()[:-1]]
        answers[size] = [(a["sampler"], a["id"], a["answer"], a["tokens"]) for a in lines]
    assert answers[1] == answers[4] and len(answers[1]) == 9


def test_run_prints_a_batch_in_prompt_order_as_one_by_one(monkeypatch, capsys, tmp_path, tiny_path):
    prompts = tmp_path / "p.jsonl"
    texts = ["Hi", "Tell me a long story about the sea and the wind and the sky.", "Why?"]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    printed = {}
    for size in (1, 3):
        args = ["run", "-f", str(prompts), "-m", str(tiny_path), "-s", "entropix", "-n", "10"]
        args += ["--seed", "4", "--json", "--batch-size", str(size)]
        code, out, err = run_main(monkeypatch, capsys, args)
        assert code == 0, err
        results = [json.loads(line) for line in out.splitlines()]
        printed[size] = [(r["prompt"], r["text"], r["summary"]["tokens"]) for r in results]
    assert printed[1] == printed[3] and [p for p, *_ in printed[3]] == texts


def test_calibration_samples_are_the_same_at_any_batch_size(tiny) -> None:
    model, tok = tiny
    prompts = [{"prompt": p} for p in ("Why do cats purr?", "Hi", "Name a prime number, please.")]
    one = collect_samples(model, tok, prompts, max_tokens=6, batch_size=1)
    three = collect_samples(model, tok, prompts, max_tokens=6, batch_size=3)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(three[name], one[name], rtol=1e-4, atol=1e-6)
