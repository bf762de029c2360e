"""`entropix eval --seeds K --ablate`: k answers per question with per-question seeds, CIs and
paired differences in the table and the JSONL, every rival sampler end to end (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from checkpoints import make_tiny_checkpoint
from conftest import run_main

from entropix_mlx.lab.evaluate import Answer, Contender, Question, tally
from entropix_mlx.lab.stats import accuracy, paired_difference, question_seed

THREE = [
    {"id": "sum", "question": "What is two plus two?", "number": 4},
    {"id": "any", "question": "Say anything.", "regex": "."},
    {"id": "cap", "question": "Capital of France?", "answer": "Paris"},
]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def _answer(qid: str, sampler: str, correct: bool, draw: int = 0) -> Answer:
    q = Question(qid, "?", "number", 1.0)
    return Answer(q, sampler, "x", correct, 4, 0.5, "stop", {"s": 4}, {"MID": 4}, draw)


def test_tally_pairs_with_greedy_per_question() -> None:
    answers = [_answer(f"q{i}", "greedy", i % 2 == 0) for i in range(10)]
    for i in range(10):  # two draws per question: right on both where greedy was, plus q1 once
        answers += [
            _answer(f"q{i}", "sample", i % 2 == 0 or (i == 1 and d == 0), d) for d in (0, 1)
        ]
    greedy, sample = tally(answers)
    assert (greedy.questions, greedy.answers, sample.questions, sample.answers) == (10, 10, 10, 20)
    assert greedy.diff_ci is None and greedy.accuracy == 0.5
    assert sample.accuracy == pytest.approx(0.55)  # q1 scores ½
    scores_s = {f"q{i}": 1.0 if i % 2 == 0 else (0.5 if i == 1 else 0.0) for i in range(10)}
    scores_g = {f"q{i}": 1.0 if i % 2 == 0 else 0.0 for i in range(10)}
    assert sample.accuracy_ci == accuracy(scores_s)
    assert sample.diff_ci == paired_difference(scores_s, scores_g)
    assert sample.diff_ci.estimate == pytest.approx(0.05) and sample.mean_tokens == 4.0
    assert sample.finish_reasons == {"stop": 20}


def test_tally_without_a_baseline_or_on_other_questions() -> None:
    rows = tally([_answer("a", "sample", True), _answer("b", "greedy", True)])
    assert all(r.diff_ci is None for r in rows)


def test_contenders() -> None:
    assert Contender.named("greedy").deterministic and not Contender.named("edt").deterministic
    ab = Contender.ablation("adaptive")
    assert (ab.label, ab.sampler, ab.argmax_for) == (
        "entropix-adaptive",
        "entropix",
        frozenset({"adaptive"}),
    )


def _eval(monkeypatch, capsys, tmp_path: Path, tiny: Path, *extra: str) -> tuple[list, dict, str]:
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in THREE))
    out = tmp_path / "a.jsonl"
    args = [
        "eval",
        "-q",
        str(questions),
        "-m",
        str(tiny),
        "-n",
        "4",
        "--jsonl",
        str(out),
        "--plain",
        *extra,
    ]
    code, stdout, stderr = run_main(monkeypatch, capsys, args)
    assert code == 0, stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return lines[:-1], lines[-1]["summary"], stdout


def test_seeds_give_k_answers_with_their_own_seeds(
    monkeypatch, capsys, tmp_path: Path, tiny_path: Path
) -> None:
    answers, summary, stdout = _eval(
        monkeypatch,
        capsys,
        tmp_path,
        tiny_path,
        "-s",
        "greedy,sample",
        "--seeds",
        "3",
        "--seed",
        "5",
    )
    greedy = [a for a in answers if a["sampler"] == "greedy"]
    sample = [a for a in answers if a["sampler"] == "sample"]
    assert len(greedy) == 3 and len(sample) == 9
    for a in answers:
        assert a["seed"] == question_seed(5, a["id"], a["draw"])
    assert sorted((a["id"], a["draw"]) for a in sample) == sorted(
        (q["id"], d) for q in THREE for d in range(3)
    )
    assert len({a["seed"] for a in sample}) == 9
    rows = {r["sampler"]: r for r in summary["samplers"]}
    assert (
        summary["seeds"] == 3
        and rows["sample"]["answers"] == 9
        and rows["sample"]["questions"] == 3
    )
    ci = rows["sample"]["accuracy_ci"]
    assert ci["lo"] <= ci["estimate"] <= ci["hi"] and rows["greedy"]["diff_vs_baseline"] is None
    assert rows["sample"]["diff_vs_baseline"] is not None
    # Everything needed to recompute the table is in the answer lines.
    by_q: dict[str, list[bool]] = {}
    for a in sample:
        by_q.setdefault(a["id"], []).append(a["correct"])
    assert ci["estimate"] == pytest.approx(sum(sum(v) / len(v) for v in by_q.values()) / 3)
    again, _, _ = _eval(
        monkeypatch,
        capsys,
        tmp_path,
        tiny_path,
        "-s",
        "greedy,sample",
        "--seeds",
        "3",
        "--seed",
        "5",
    )
    assert [a["answer"] for a in again] == [a["answer"] for a in answers]


def test_ablate_and_every_rival(monkeypatch, capsys, tmp_path: Path, tiny_path: Path) -> None:
    answers, summary, stdout = _eval(
        monkeypatch,
        capsys,
        tmp_path,
        tiny_path,
        "-s",
        "greedy,minp,edt,dynatemp,dslider",
        "--ablate",
    )
    labels = [r["sampler"] for r in summary["samplers"]]
    assert labels == [
        "greedy",
        "minp",
        "edt",
        "dynatemp",
        "dslider",
        "entropix-clarify",
        "entropix-explore",
        "entropix-resample",
        "entropix-adaptive",
    ]
    rows = {r["sampler"]: r for r in summary["samplers"]}
    for name in ("minp", "edt", "dynatemp"):
        assert set(rows[name]["strategies"]) == {name}
    assert all(s.startswith("ds-") or s == "clarify" for s in rows["dslider"]["strategies"])
    ablated = rows["entropix-adaptive"]
    adaptive = [a for a in answers if a["sampler"] == "entropix-adaptive"]
    assert ablated["answers"] == 3 and all(a["tokens"] >= 1 for a in adaptive)
    assert "entropix-adaptive" in stdout.replace("\n", "")
