"""lab/tune.py: successive halving on a scripted score, the search space, the written profile."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from entropix_mlx.engine.config import SamplerConfig, load_profile
from entropix_mlx.lab.calibrate import render_profile_toml
from entropix_mlx.lab.evaluate import Question
from entropix_mlx.lab.tune import (
    DEFAULT_SPACE,
    Budget,
    Dimension,
    candidates,
    check_space,
    render_header,
    tune,
)

DEV = [Question(f"d{i:03d}", "?", "number", 1.0) for i in range(90)]
BASE = SamplerConfig()


def colder_is_better(config: SamplerConfig, questions) -> dict[str, float]:
    """Right on a question when T0 is below its (fixed, per-question) bar."""
    return {q.id: float(config.temperature < int(q.id[1:]) / 90) for q in questions}


def test_the_space_holds_a_greedy_like_point_and_the_base() -> None:
    pool = candidates(BASE, DEFAULT_SPACE, 5, seed=1)
    assert [c.label for c in pool[:2]] == ["base", "greedy-like"] and len(pool) == 7
    g = pool[1].config
    assert (g.temperature, g.resample_temp_min, g.clarify_max) == (0.0, 0.0, 0)
    for c in pool[2:]:
        for d in DEFAULT_SPACE:
            assert d.lo <= getattr(c.config, d.name) <= d.hi
        assert isinstance(c.config.n_adaptive_samples, int)
    assert [c.config for c in candidates(BASE, DEFAULT_SPACE, 5, seed=1)] == [
        c.config for c in pool
    ]


def test_successive_halving_keeps_the_best_and_counts_its_budget() -> None:
    calls = []

    def evaluate(config, questions):
        calls.append(len(questions))
        return colder_is_better(config, questions)

    budget = Budget(candidates=7, rounds=3, questions=10, eta=3)
    result = tune(BASE, DEV, evaluate, budget=budget, seed=2)
    assert result.best.label == "greedy-like" and result.best.config.temperature == 0.0
    assert [len(r) for r in result.rounds] == [9, 3, 1]
    assert [r[0][1] for r in result.rounds] == [10, 30, 90]  # questions seen, cumulative
    # 9 × 10 new, then 3 × 20 new, then 1 × 60 new: only new questions are answered
    assert result.answers == sum(calls) == 90 + 60 + 60
    assert result.dev.estimate == pytest.approx(89 / 90)  # T0 = 0 < bar on all but d000
    assert result.dev.lo <= result.dev.estimate <= result.dev.hi


def test_ties_keep_the_base() -> None:
    result = tune(
        BASE,
        DEV[:10],
        lambda c, qs: {q.id: 0.5 for q in qs},
        budget=Budget(candidates=3, rounds=2, questions=5),
        seed=0,
    )
    assert result.best.label == "base"


@pytest.mark.parametrize(
    "space, message",
    [
        ((), "1 to 8"),
        ((Dimension("temperature", 0, 1),) * 9, "1 to 8"),
        ((Dimension("clarify_text", 0, 1),), "not a numeric"),
        ((Dimension("nope", 0, 1),), "not a numeric"),
        ((Dimension("top_p", 0.5, 1.5),), "top_p=1.5"),
        ((Dimension("temperature", 1, 0),), "must not exceed"),
    ],
)
def test_bad_spaces(space, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_space(space, BASE)


def test_budget_checks() -> None:
    with pytest.raises(ValueError, match="eta=1"):
        Budget(eta=1)
    with pytest.raises(ValueError, match="rounds=0"):
        Budget(rounds=0)


def test_written_profile_reads_back_as_the_winner(tmp_path: Path) -> None:
    result = tune(
        BASE,
        DEV[:30],
        colder_is_better,
        budget=Budget(candidates=4, rounds=2, questions=10),
        seed=3,
    )
    header = render_header(
        result, model="tiny", dev_file="dev.jsonl", date="2026-11-30", max_tokens=32, seeds=1
    )
    assert "Search space" in header and "temperature in [0, 1]" in header and "Budget:" in header
    path = tmp_path / "tuned.toml"
    path.write_text(render_profile_toml(result.best.config, header, models=["tiny"]))
    assert load_profile(str(path)) == replace(result.best.config, profile="tuned")
    assert load_profile("auto", model="tiny") != result.best.config  # packaged profiles only


def test_tune_command_end_to_end(monkeypatch, capsys, tmp_path: Path) -> None:
    import json

    from checkpoints import make_tiny_checkpoint
    from conftest import run_main

    tiny = make_tiny_checkpoint(tmp_path / "tiny-llama")
    qs = [{"id": f"q{i}", "question": f"What is {i} + 1?", "number": i + 1} for i in range(6)]
    dev, held = tmp_path / "dev.jsonl", tmp_path / "held.jsonl"
    dev.write_text("".join(json.dumps(q) + "\n" for q in qs[:4]))
    held.write_text("".join(json.dumps(q) + "\n" for q in qs[4:]))
    out = tmp_path / "tuned.toml"
    args = [
        "tune",
        "-o",
        str(out),
        "-m",
        str(tiny),
        "--dev",
        str(dev),
        "--heldout",
        str(held),
        "--candidates",
        "2",
        "--rounds",
        "2",
        "--questions",
        "2",
        "--eta",
        "2",
        "-n",
        "3",
        "--plain",
    ]
    code, stdout, stderr = run_main(monkeypatch, capsys, args)
    assert code == 0, stderr
    assert "round 1: 4 candidates on 2 dev questions" in stderr
    assert "round 2: 2 candidates on 4 dev questions" in stderr
    config = load_profile(str(out))
    text = out.read_text()
    assert (
        "Search space" in text and "Dev accuracy of this profile" in text and "tiny-llama" in text
    )
    assert config.profile == "tuned" and f"wrote {out}" in stdout.replace("\n", "")
    assert "held-out (2 questions)" in stdout and "tuned" in stdout.split("held-out")[1]
