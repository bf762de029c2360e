"""The decode loop: reproducibility, stop conditions, clarify insertion, events, JSONL records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import pytest
from checkpoints import make_tiny_checkpoint
from typer.testing import CliRunner

from entropix_mlx.cli import make_app
from entropix_mlx.engine.generate import Summary, generate, prefill
from entropix_mlx.engine.metrics import METRIC_NAMES, Metrics, metrics_vector
from entropix_mlx.engine.records import RECORD_FIELDS
from entropix_mlx.engine.sampler import SamplerConfig
from entropix_mlx.errors import ContextFullError
from entropix_mlx.model.load import load

PROMPT = [{"role": "user", "content": "The capital of France is"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight Llama 3.1: near-uniform next-token distributions, i.e. high entropy."""
    model, tok, _ = load(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny")))
    return model, tok, tok.apply_chat_template(PROMPT)


def _run(tiny, **kw) -> list:
    model, tok, ids = tiny
    kw.setdefault("stop_ids", ())
    return list(generate(model, tok, ids, **kw))


def _tokens(events: list) -> list[int]:
    return [e.token_id for e in events]


@pytest.mark.parametrize("sampler", ["entropix", "sample"])
def test_same_seed_same_tokens_and_metrics(tiny, sampler: str) -> None:
    a = _run(tiny, sampler=sampler, seed=7, max_tokens=24)
    b = _run(tiny, sampler=sampler, seed=7, max_tokens=24)
    assert _tokens(a) == _tokens(b)
    assert [e.metrics for e in a] == [e.metrics for e in b]
    assert [e.strategy for e in a] == [e.strategy for e in b]


@pytest.mark.parametrize("sampler", ["entropix", "sample"])
def test_different_seeds_differ_on_a_high_entropy_prompt(tiny, sampler: str) -> None:
    runs = {tuple(_tokens(_run(tiny, sampler=sampler, seed=s, max_tokens=16))) for s in range(4)}
    assert len(runs) == 4
    assert _run(tiny, sampler=sampler, seed=0, max_tokens=1)[0].metrics.entropy > 3.0


def test_greedy_ignores_the_seed_and_equals_argmax_of_a_full_forward(tiny) -> None:
    model, _, ids = tiny
    a, b = (
        _run(tiny, sampler="greedy", seed=1, max_tokens=12),
        _run(tiny, sampler="greedy", seed=2, max_tokens=12),
    )
    assert _tokens(a) == _tokens(b)
    sequence = list(ids)
    for ev in a:
        logits = model(mx.array([sequence]), all_logits=True).logits[0, -1]
        assert ev.token_id == int(mx.argmax(logits).item())
        assert ev.logprob == pytest.approx(
            float((logits - mx.logsumexp(logits))[ev.token_id].item()), abs=1e-4
        )
        sequence.append(ev.token_id)


def test_event_metrics_equal_the_metrics_of_that_step(tiny) -> None:
    model, _, ids = tiny
    ev = _run(tiny, sampler="entropix", seed=3, max_tokens=1)[0]
    out = prefill(model, ids, model.make_cache())
    expected = Metrics.from_values(metrics_vector(out.logits, out.scores)[0].tolist())
    # The loop's metrics (NumPy on the CPU) equal the MLX implementation's.
    assert list(ev.metrics.as_dict().values()) == pytest.approx(
        list(expected.as_dict().values()), rel=1e-4
    )
    assert ev.index == 0 and ev.prompt_tokens == len(ids)


def test_max_tokens_and_finish_reasons(tiny) -> None:
    events = _run(tiny, sampler="greedy", max_tokens=5)
    assert len(events) == 5 and [e.finish_reason for e in events] == [None] * 4 + ["length"]
    assert [e.index for e in events] == list(range(5))


def test_stop_token_is_yielded_last_with_no_text(tiny) -> None:
    model, tok, ids = tiny
    first = _run(tiny, sampler="greedy", max_tokens=3)
    events = list(
        generate(model, tok, ids, sampler="greedy", max_tokens=10, stop_ids={first[1].token_id})
    )
    assert len(events) == 2
    assert events[-1].finish_reason == "stop" and events[-1].text == ""


def test_stop_string_truncates_and_never_half_prints(tiny) -> None:
    full = "".join(e.text for e in _run(tiny, sampler="greedy", max_tokens=30))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    events = _run(tiny, sampler="greedy", max_tokens=30, stop_strings=[stop])
    text = "".join(e.text for e in events)
    assert events[-1].finish_reason == "stop"
    assert text == full[: full.index(stop)]


def test_context_limit_ends_the_answer_and_says_so(tiny) -> None:
    _, _, ids = tiny
    events = _run(tiny, sampler="greedy", max_tokens=50, context_limit=len(ids) + 4)
    assert events[-1].finish_reason == "context"
    assert len(events) <= 4
    with pytest.raises(ContextFullError, match="does not fit"):
        _run(tiny, sampler="greedy", max_tokens=5, context_limit=len(ids))


def test_clarify_text_is_inserted_once_then_sampled_with_clarify_parameters(tiny) -> None:
    model, tok, ids = tiny
    # Thresholds that put every step of the random model in HELV.
    config = SamplerConfig().with_overrides(
        {
            "low_ent": "0.01",
            "med_ent": "0.02",
            "high_ent": "0.05",
            "low_vent": "1000",
            "high_vent": "2000",
        }
    )
    events = list(
        generate(
            model, tok, ids, sampler="entropix", config=config, seed=0, max_tokens=8, stop_ids=()
        )
    )
    clarify = tok.encode(config.clarify_text)
    inserted = [e for e in events if e.inserted]
    assert [e.token_id for e in inserted] == clarify
    assert all(e.quadrant == "HELV" and e.strategy == "clarify" for e in events)
    assert events[: len(clarify)] == inserted
    # After the insertion the model continues from prompt + clarify text: the next token's metrics
    # are those of that longer context.
    out = prefill(model, list(ids) + clarify, model.make_cache())
    expected = Metrics.from_values(metrics_vector(out.logits, out.scores)[0].tolist())
    after = events[len(clarify)].metrics
    assert after.entropy == pytest.approx(expected.entropy, rel=1e-4)
    assert after.attn_entropy == pytest.approx(expected.attn_entropy, rel=1e-4)


def test_summary_counts_sum_to_the_token_count(tiny) -> None:
    events = _run(tiny, sampler="entropix", seed=5, max_tokens=20)
    summary = Summary.from_events(events)
    assert (
        summary.tokens == 20 == sum(summary.strategies.values()) == sum(summary.quadrants.values())
    )


@pytest.mark.slow
def test_default_model_200_token_entropix_run_writes_a_valid_jsonl(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Write a long story about a lighthouse keeper and a storm.\n")
    out = tmp_path / "run.jsonl"
    result = CliRunner().invoke(
        make_app(),
        [
            "run",
            "-f",
            str(prompt),
            "--sampler",
            "entropix",
            "--seed",
            "1",
            "--max-tokens",
            "200",
            "--jsonl",
            str(out),
            "--plain",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records, summary = lines[:-1], lines[-1]["summary"]
    assert 0 < len(records) <= 200
    for i, rec in enumerate(records):
        assert list(rec) == list(RECORD_FIELDS)
        assert (
            rec["index"] == i and isinstance(rec["token_id"], int) and isinstance(rec["text"], str)
        )
        assert all(
            isinstance(rec[name], float) and math.isfinite(rec[name]) for name in METRIC_NAMES
        )
        assert rec["quadrant"] in {"LELV", "HELV", "LEHV", "HEHV", "MID"}
        assert rec["strategy"] in {"argmax", "clarify", "explore", "resample", "adaptive"}
        assert isinstance(rec["inserted"], bool) and isinstance(rec["top_k"], int)
    assert summary["tokens"] == len(records) == sum(summary["strategies"].values())
    assert sum(summary["quadrants"].values()) == len(records)
    assert summary["seed"] == 1 and summary["sampler"] == "entropix" and summary["device"]
    assert summary["config"]["high_ent"] == 5.0 and summary["decode_tps"] > 0
