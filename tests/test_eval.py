"""`entropix eval`: scoring on hand-made answers, the question-file format and its errors, and the
command end to end on a tiny random model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from checkpoints import make_tiny_checkpoint
from conftest import run_main

from entropix_mlx.errors import EntropixError
from entropix_mlx.lab.evaluate import Question, extract_numbers, load_questions, normalise, score

PACKAGE = Path(__file__).resolve().parents[1] / "entropix_mlx"


def exact(*answers: str) -> Question:
    return Question("q", "?", "answer", tuple(answers))


def number(value: float, **kwargs) -> Question:
    return Question("q", "?", "number", float(value), **kwargs)


def regex(pattern: str) -> Question:
    return Question("q", "?", "regex", pattern)


# ── scoring ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("answer", "expected", "right"),
    [
        ("Paris", "Paris", True),
        ("  paris.  ", "Paris", True),
        ("**Paris**", "Paris", True),
        ('"Paris!"', "Paris", True),
        ("PARIS", "paris", True),
        ("Ｐａｒｉｓ", "Paris", True),  # full-width letters (NFKC)
        ("The Pacific Ocean.", "Pacific Ocean", True),
        ("Pacific  Ocean", "the pacific ocean", True),
        ("The capital of France is Paris.", "Paris", False),  # exact means the whole answer
        ("Parisian", "Paris", False),
        ("", "Paris", False),
    ],
)
def test_exact_match_after_normalisation(answer: str, expected: str, right: bool) -> None:
    assert score(answer, exact(expected)) is right


def test_exact_accepts_any_listed_answer() -> None:
    q = exact("Pacific", "Pacific Ocean")
    assert score("pacific ocean", q) and score("Pacific.", q) and not score("Atlantic", q)


@pytest.mark.parametrize(
    ("answer", "expected", "right"),
    [
        ("42", 42, True),
        ("42.", 42, True),  # a sentence's full stop is not a decimal point
        ("The answer is 42.", 42, True),
        ("$1,200", 1200, True),
        ("It costs $1,200.50 in total", 1200.5, True),
        ("-7", -7, True),
        ("−7", -7, True),  # Unicode minus
        ("7 + 5 = 12.", 12, True),  # the last number: the question is restated first
        ("3 - 10 = -7", -7, True),
        ("3.75", 3.75, True),
        ("3.7500", 3.75, True),
        ("0", 0, True),
        ("forty-two", 42, False),  # number words are not read
        ("A-1 steak", -1, False),  # a hyphen inside a word is not a minus
        ("A-1 steak", 1, True),
        ("12%", 12, True),
        ("no idea", 0, False),
        ("41.9999", 42, False),  # default tolerance 1e-6
        ("1,2,3", 3, True),  # not a thousands separator
    ],
)
def test_last_number(answer: str, expected: float, right: bool) -> None:
    assert score(answer, number(expected)) is right


def test_first_number_and_tolerance() -> None:
    working = "10 apples: 3 bags × 4 apples = 12 apples, minus 2 eaten."
    assert score(working, number(10, extract="first")) and not score(working, number(10))
    assert score("about 3.14", number(3.14159, tolerance=0.01))
    assert not score("about 3.14", number(3.14159))


def test_extract_numbers_in_order() -> None:
    assert extract_numbers("v2 beats -3, then 1,000 and 2.5; 10-12, 3.14.15, 1,2") == [
        -3.0,
        1000.0,
        2.5,
        10.0,
        12.0,
        3.14,
        1.0,
        2.0,
    ]


@pytest.mark.parametrize(
    ("answer", "pattern", "right"),
    [
        ("It was William Shakespeare.", "shakespeare", True),  # case-insensitive search
        ("Mars!", r"\bmars\b", True),
        ("Marshmallow", r"\bmars\b", False),
        ("H2O", r"\bH2O\b|H₂O", True),
        ("line one\nParis", "^paris$", False),  # no MULTILINE: ^ is the start of the answer
    ],
)
def test_regex_search(answer: str, pattern: str, right: bool) -> None:
    assert score(answer, regex(pattern)) is right


def test_normalise() -> None:
    assert normalise("  The   Quick,  brown fox!  ") == "quick, brown fox"
    assert normalise("an apple") == "apple" and normalise("Theatre") == "theatre"


# ── the question file ─────────────────────────────────────────────────────────────────────────


def test_shipped_question_set_loads() -> None:
    questions = load_questions(PACKAGE / "lab" / "data" / "questions.jsonl")
    assert len(questions) >= 15
    assert {q.kind for q in questions} == {"answer", "number", "regex"}
    assert {"arithmetic", "factual", "word problem"} <= {q.category for q in questions}
    assert len({q.id for q in questions}) == len(questions)


def test_question_fields(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "2+2?", "number": 4}\n\n'
        '{"id": "cap", "question": " Capital? ", "answer": ["Paris", "paris, france"], '
        '"category": "f"}\n'
        '{"question": "Who?", "regex": "x", "system": "Be brief."}\n'
    )
    a, b, c = load_questions(path)
    assert (a.id, a.kind, a.expected, a.extract, a.tolerance) == (
        "line 1",
        "number",
        4.0,
        "last",
        1e-6,
    )
    assert (b.id, b.question, b.expected, b.category) == (
        "cap",
        "Capital?",
        ("Paris", "paris, france"),
        "f",
    )
    assert (c.kind, c.system) == ("regex", "Be brief.")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"question": "a", "number": 1', "q.jsonl:2: not JSON"),
        ('["question"]', 'q.jsonl:2: expected an object with a non-empty "question"'),
        ('{"question": "  ", "number": 1}', "non-empty"),
        ('{"question": "a"}', 'exactly one of "answer", "number" or "regex"'),
        ('{"question": "a", "answer": "x", "number": 1}', "exactly one"),
        ('{"question": "a", "number": "42"}', '"number" must be a JSON number'),
        ('{"question": "a", "number": true}', '"number" must be a JSON number'),
        ('{"question": "a", "answer": ""}', '"answer" must be a non-empty string'),
        ('{"question": "a", "answer": []}', '"answer" must be a non-empty string'),
        ('{"question": "a", "regex": "(unclosed"}', "does not compile"),
        ('{"question": "a", "number": 1, "extract": "middle"}', '"extract" must be'),
        ('{"question": "a", "number": 1, "tolerance": -1}', '"tolerance" must be'),
        ('{"question": "a", "number": 1, "anwser": 2}', "unknown field 'anwser'"),
        ('{"question": "a", "regex": "x", "id": 3}', '"id" must be a string'),
    ],
)
def test_bad_question_lines_name_the_line(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "ok?", "number": 1}\n' + line + "\n")
    with pytest.raises(EntropixError, match=re.escape(needle)):
        load_questions(path)
    with pytest.raises(EntropixError, match=r"q\.jsonl:2: "):
        load_questions(path)


def test_empty_question_set(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(EntropixError, match="no questions"):
        load_questions(path)


# ── the command ───────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


THREE = [
    {"id": "sum", "question": "What is two plus two?", "number": 4, "category": "arithmetic"},
    {"id": "any", "question": "Say anything.", "regex": "."},
    {"id": "cap", "question": "Capital of France?", "answer": "Paris"},
]


def test_eval_end_to_end(monkeypatch, capsys, tmp_path: Path, tiny_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in THREE))
    out = tmp_path / "answers.jsonl"
    args = [
        "eval",
        "-q",
        str(questions),
        "-s",
        "greedy,entropix",
        "-m",
        str(tiny_path),
        "-n",
        "5",
        "--seed",
        "3",
        "--jsonl",
        str(out),
        "--plain",
    ]
    monkeypatch.setenv("COLUMNS", "60")  # what a narrow terminal says; stdout here is a pipe
    code, stdout, stderr = run_main(monkeypatch, capsys, args)
    assert code == 0, stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    answers, summary = lines[:-1], lines[-1]["summary"]
    assert [(a["sampler"], a["id"]) for a in answers] == [
        (s, q["id"]) for s in ("greedy", "entropix") for q in THREE
    ]
    by_id = {q["id"]: q for q in THREE}
    for a in answers:
        assert {"question", "sampler", "answer", "correct", "tokens"} <= set(a)
        assert 1 <= a["tokens"] <= 5 and a["question"] == by_id[a["id"]]["question"]
        q = load_questions(questions)[[x["id"] for x in THREE].index(a["id"])]
        assert a["correct"] is score(a["answer"], q)
    assert all(a["correct"] for a in answers if a["id"] == "any" and a["answer"])
    rows = {r["sampler"]: r for r in summary["samplers"]}
    assert (
        list(rows) == ["greedy", "entropix"]
        and summary["seed"] == 3
        and summary["config"]["profile"] == "reference"
        and summary["questions"] == 3
    )
    for name, row in rows.items():
        mine = [a for a in answers if a["sampler"] == name]
        assert row["correct"] == sum(a["correct"] for a in mine)
        assert row["mean_tokens"] == pytest.approx(sum(a["tokens"] for a in mine) / 3)
    assert set(rows["greedy"]["strategies"]) == {"greedy"}
    # One table on stdout; one line per answer on stderr.
    assert re.search(r"sampler\s+acc % \[95% CI\]\s+Δ greedy\s+tokens\s+stop%\s+tok/s", stdout)
    assert re.search(r"greedy\s+\d+\.\d \[\d+\.\d, \d+\.\d\]\s+-", stdout)
    assert re.search(r"entropix\s+\d+\.\d \[\d+\.\d, \d+\.\d\]\s+[+-]\d+\.\d \[", stdout)
    # Piped, the table is not squeezed into 80 columns: one line per sampler, the mix whole.
    mix = " ".join(f"{k} {v}" for k, v in sorted(rows["greedy"]["strategies"].items()))
    assert "…" not in stdout and re.search(rf"greedy\s.*{mix}", stdout), stdout
    assert len([line for line in stderr.splitlines() if line[:2] in ("✓ ", "✗ ")]) == 6


def test_eval_is_reproducible(monkeypatch, capsys, tmp_path: Path, tiny_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(THREE[1]) + "\n")
    runs = []
    for i in range(2):
        out = tmp_path / f"a{i}.jsonl"
        args = [
            "eval",
            "-q",
            str(questions),
            "-s",
            "sample",
            "-m",
            str(tiny_path),
            "-n",
            "6",
            "--jsonl",
            str(out),
        ]
        assert run_main(monkeypatch, capsys, args)[0] == 0
        runs.append(json.loads(out.read_text().splitlines()[0])["answer"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("args", "content", "needle"),
    [
        (["-s", "greedy,beam"], None, "--samplers greedy,beam: unknown sampler 'beam'"),
        (["-s", " , "], None, "--samplers"),
        ([], "\n\n", "no questions"),
        ([], '{"question": "a", "number": 1}\n{"question": oops}\n', "q.jsonl:2: not JSON"),
        (["--jsonl", "out.txt"], None, "give a .jsonl file name"),
        (["--profile", "nope"], None, "sampler profile 'nope'"),
        (["-q", "/no/such/q.jsonl"], None, "/no/such/q.jsonl"),
        (["-m", "/no/such/model"], None, "/no/such/model"),
    ],
)
def test_bad_inputs_are_one_line(
    monkeypatch, capsys, tmp_path: Path, args, content, needle
) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(content if content is not None else json.dumps(THREE[0]) + "\n")
    argv = ["eval", *([] if "-q" in args else ["-q", str(questions)]), *args]
    code, out, err = run_main(monkeypatch, capsys, argv)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err + out


def test_help_fits_one_screen(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_main(monkeypatch, capsys, ["eval", "--help"])
    assert code == 0 and "--samplers" in out and len(out.splitlines()) <= 46  # 45 + --batch-size
