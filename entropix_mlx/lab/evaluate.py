"""A question-answering eval: every sampler answers every question (k seeds each); score,
tally, and put a bootstrap CI on each accuracy and on each paired difference with greedy.

Question file: JSON Lines, one object per line with `question` and exactly one expectation:

- `"answer": "Paris"` (or a list of accepted answers): exact match after `normalise`;
- `"number": 42` (optional `"tolerance"`, default 1e-6; `"extract": "last" | "first"`, default
  last): the last (first) number written with digits in the answer, compared numerically. Last,
  because chat models restate the question first: "7 + 5 = 12." answers 12, not 7;
- `"regex": "\\bParis\\b"`: `re.search` anywhere in the answer, case-insensitive.

Optional: `id` (default: `line N`), `category` (free text, e.g. arithmetic), `system`.
Number words ("forty-two") are not read: "one" is too often not a number ("one of the…").
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EntropixError
from ..tokenize.chat_template import chat_messages
from .stats import (
    N_BOOT,
    Interval,
    accuracy,
    paired_difference,
    per_question,
    question_seed,
)

KINDS = ("answer", "number", "regex")
FIELDS = ("question", *KINDS, "tolerance", "extract", "id", "category", "system")
EXTRACT = ("last", "first")
_EDGE = " \t\r\n.,;:!?\"'`*_()[]"  # stripped from both ends before an exact match
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")
# A numeral: optional sign (not glued to a word, as in "A-1"), optional currency, digits with
# optional thousands commas and decimals. "42." is 42; "1,200" is 1200; "1,2,3" is 1, 2, 3.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−](?=[$€£]?\d))?[$€£]?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\d])"
)


@dataclass(frozen=True)
class Question:
    """One question and how its answer is scored (`kind` is answer | number | regex)."""

    id: str
    question: str
    kind: str
    expected: tuple[str, ...] | float | str
    category: str = ""
    system: str | None = None
    tolerance: float = 1e-6
    extract: str = "last"


def normalise(text: str) -> str:
    """Case, width, punctuation at the ends, a leading article and extra spaces don't count."""
    text = unicodedata.normalize("NFKC", text).casefold().strip(_EDGE)
    return " ".join(_ARTICLE.sub("", text).split())


def extract_numbers(text: str) -> list[float]:
    """Every number written with digits, in order ("−5", "$1,200", "3.5", "42.")."""
    text = unicodedata.normalize("NFKC", text)
    found = []
    for m in _NUMBER.finditer(text):
        value = float(m["digits"].replace(",", ""))
        found.append(-value if m["sign"] else value)
    return found


def score(answer: str, question: Question) -> bool:
    """Whether `answer` is right by the question's rule (see the module docstring)."""
    if question.kind == "answer":
        return normalise(answer) in {normalise(a) for a in question.expected}
    if question.kind == "number":
        numbers = extract_numbers(answer)
        if not numbers:
            return False
        got = numbers[-1] if question.extract == "last" else numbers[0]
        return math.isclose(got, question.expected, rel_tol=0.0, abs_tol=question.tolerance)
    return re.search(question.expected, answer, re.IGNORECASE) is not None


def _fail(where: str, message: str) -> EntropixError:
    return EntropixError(f"{where}: {message}")


def _expectation(item: dict[str, Any], where: str) -> tuple[str, Any]:
    present = [k for k in KINDS if k in item]
    if len(present) != 1:
        raise _fail(where, 'give exactly one of "answer", "number" or "regex"')
    kind, value = present[0], item[present[0]]
    if kind == "answer":
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and normalise(v) for v in values):
            raise _fail(where, '"answer" must be a non-empty string or a list of them')
        return kind, tuple(values)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, f'"number" must be a JSON number, not {value!r}')
        return kind, float(value)
    if not isinstance(value, str) or not value:
        raise _fail(where, '"regex" must be a non-empty string')
    try:
        re.compile(value)
    except re.error as err:
        raise _fail(where, f'"regex" {value!r} does not compile ({err})') from None
    return kind, value


def _question(item: Any, where: str, default_id: str) -> Question:
    if (
        not isinstance(item, dict)
        or not isinstance(item.get("question"), str)
        or not item["question"].strip()
    ):
        raise _fail(where, 'expected an object with a non-empty "question" string')
    unknown = [k for k in item if k not in FIELDS]
    if unknown:
        raise _fail(where, f"unknown field {unknown[0]!r}; valid: {', '.join(FIELDS)}")
    kind, expected = _expectation(item, where)
    tolerance, extract = item.get("tolerance", 1e-6), item.get("extract", "last")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise _fail(where, f'"tolerance" must be a number ≥ 0, not {tolerance!r}')
    if extract not in EXTRACT:
        raise _fail(where, f'"extract" must be "last" or "first", not {extract!r}')
    for name in ("id", "category", "system"):
        if not isinstance(item.get(name, ""), (str, type(None))):
            raise _fail(where, f'"{name}" must be a string')
    return Question(
        id=item.get("id") or default_id,
        question=item["question"].strip(),
        kind=kind,
        expected=expected,
        category=item.get("category") or "",
        system=item.get("system"),
        tolerance=float(tolerance),
        extract=extract,
    )


def load_questions(path: Path) -> list[Question]:
    """Questions from a JSONL file; a bad line is an error naming the file and line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EntropixError(f"{path}: cannot read it as UTF-8 text ({err})") from None
    questions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise _fail(
                where, f'not JSON ({err.msg}); write one {{"question": …}} per line'
            ) from None
        questions.append(_question(item, where, f"line {number}"))
    if not questions:
        raise EntropixError(f'{path}: no questions in it; write one {{"question": …}} per line')
    return questions


@dataclass(frozen=True)
class Contender:
    """A row of the eval: a sampler by name, or Entropix with some strategies set to argmax."""

    label: str
    sampler: str
    argmax_for: frozenset[str] = frozenset()

    @property
    def deterministic(self) -> bool:
        """Greedy answers once: more seeds would repeat the same answer."""
        return self.sampler == "greedy"

    @classmethod
    def named(cls, name: str) -> Contender:
        return cls(name, name)

    @classmethod
    def ablation(cls, strategy: str) -> Contender:
        """Entropix with `strategy` replaced by the argmax, labelled `entropix-<strategy>`."""
        return cls(f"entropix-{strategy}", "entropix", frozenset({strategy}))


@dataclass(frozen=True)
class Answer:
    """One sampler's answer to one question, with one seed."""

    question: Question
    sampler: str  # the contender's label
    text: str
    correct: bool
    tokens: int
    decode_seconds: float
    finish_reason: str | None
    strategies: dict[str, int] = field(default_factory=dict)
    quadrants: dict[str, int] = field(default_factory=dict)
    draw: int = 0
    seed: int | None = None

    def record(self) -> dict[str, Any]:
        """The answer's JSONL line: everything the table is computed from."""
        q = self.question
        expected = list(q.expected) if q.kind == "answer" else q.expected
        return {
            "id": q.id,
            "category": q.category,
            "question": q.question,
            "sampler": self.sampler,
            "draw": self.draw,
            "seed": self.seed,
            "answer": self.text,
            "correct": self.correct,
            "tokens": self.tokens,
            "decode_seconds": self.decode_seconds,
            "expected": {q.kind: expected},
            "finish_reason": self.finish_reason,
            "strategies": self.strategies,
            "quadrants": self.quadrants,
        }


@dataclass(frozen=True)
class SamplerScore:
    """One table row: a sampler's totals over the question set, its accuracy with a 95 % CI
    over questions and, when a baseline answered the same questions, the paired difference."""

    sampler: str
    questions: int
    answers: int
    correct: int
    tokens: int
    decode_seconds: float
    strategies: dict[str, int]
    quadrants: dict[str, int]
    finish_reasons: dict[str, int] = field(default_factory=dict)
    accuracy_ci: Interval | None = None
    diff_ci: Interval | None = None  # vs the baseline; None for the baseline itself

    @property
    def accuracy(self) -> float:
        return self.accuracy_ci.estimate if self.accuracy_ci else 0.0

    @property
    def mean_tokens(self) -> float:
        return self.tokens / self.answers if self.answers else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def record(self) -> dict[str, Any]:
        """The row as the eval JSONL's summary stores it."""
        names = (
            "sampler",
            "questions",
            "answers",
            "correct",
            "accuracy",
            "mean_tokens",
            "tokens_per_second",
            "finish_reasons",
            "strategies",
            "quadrants",
        )
        return {n: getattr(self, n) for n in names} | {
            "accuracy_ci": _interval(self.accuracy_ci),
            "diff_vs_baseline": _interval(self.diff_ci),
        }


def _interval(ci: Interval | None) -> dict[str, float] | None:
    return None if ci is None else {"estimate": ci.estimate, "lo": ci.lo, "hi": ci.hi}


def question_scores(answers: Sequence[Answer]) -> dict[str, dict[str, float]]:
    """Sampler → question id → fraction of its answers (seeds) that are right."""
    grouped: dict[str, dict[str, list[bool]]] = {}
    for a in answers:
        grouped.setdefault(a.sampler, {}).setdefault(a.question.id, []).append(a.correct)
    return {name: per_question(by_q) for name, by_q in grouped.items()}


def tally(
    answers: Sequence[Answer], *, baseline: str = "greedy", n_boot: int = N_BOOT, seed: int = 0
) -> list[SamplerScore]:
    """Per sampler, in the order they first appear; paired with `baseline` where it answered
    the same questions (the bootstrap resamples questions, seeded by `seed`)."""
    scores = question_scores(answers)
    base = scores.get(baseline)
    rows = []
    for name, mine_scores in scores.items():
        mine = [a for a in answers if a.sampler == name]
        strategies, quadrants = Counter(), Counter()
        for a in mine:
            strategies.update(a.strategies)
            quadrants.update(a.quadrants)
        paired = base is not None and name != baseline and set(base) == set(mine_scores)
        rows.append(
            SamplerScore(
                sampler=name,
                questions=len(mine_scores),
                answers=len(mine),
                correct=sum(a.correct for a in mine),
                tokens=sum(a.tokens for a in mine),
                decode_seconds=sum(a.decode_seconds for a in mine),
                strategies=dict(strategies),
                quadrants=dict(quadrants),
                finish_reasons=dict(Counter(a.finish_reason or "none" for a in mine)),
                accuracy_ci=accuracy(mine_scores, n_boot=n_boot, seed=seed),
                diff_ci=paired_difference(mine_scores, base, n_boot=n_boot, seed=seed)
                if paired
                else None,
            )
        )
    return rows


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    samplers: Sequence[str | Contender],
    *,
    config: Any,
    max_tokens: int,
    seed: int,
    seeds: int = 1,
    batch_size: int = 1,
    on_answer: Callable[[Answer], None] | None = None,
) -> Iterator[Answer]:
    """Each sampler answers every question (chat template), sampler by sampler.

    A stochastic sampler answers each question `seeds` times; answer d of question q uses the
    seed `question_seed(seed, q.id, d)`, so each question has its own reproducible draws.
    Greedy answers once. Every answer gets a new sampler (dslider keeps per-response state).
    `batch_size` answers decode together (`decode_jobs`): the same answers, in the same order.
    """
    from ..engine.batch import Job, decode_jobs
    from ..engine.generate import Summary
    from ..engine.sampler import EntropixSampler, make_sampler

    if seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be ≥ 1")
    clarify_ids = tuple(tokenizer.encode(config.clarify_text)) if config.clarify_text else ()
    ids = {
        q.id: tokenizer.apply_chat_template(chat_messages(q.question, system=q.system))
        for q in questions
    }
    slots, jobs = [], []
    for contender in samplers:
        c = Contender.named(contender) if isinstance(contender, str) else contender
        for q in questions:
            for draw in range(1 if c.deterministic else seeds):
                answer_seed = question_seed(seed, q.id, draw)
                if c.argmax_for:
                    chooser = EntropixSampler(config, clarify_ids, c.argmax_for)
                else:
                    chooser = make_sampler(c.sampler, config, clarify_ids=clarify_ids)
                slots.append((c, q, draw, answer_seed))
                jobs.append(Job(ids[q.id], chooser, seed=answer_seed, max_tokens=max_tokens))
    for i, events in decode_jobs(model, tokenizer, jobs, batch_size=batch_size):
        c, q, draw, answer_seed = slots[i]
        summary = Summary.from_events(events)
        text = "".join(e.text for e in events).strip()
        answer = Answer(
            question=q,
            sampler=c.label,
            text=text,
            correct=score(text, q),
            tokens=len(events),
            decode_seconds=events[-1].elapsed if events else 0.0,
            finish_reason=summary.finish_reason,
            strategies=summary.strategies,
            quadrants=summary.quadrants,
            draw=draw,
            seed=answer_seed,
        )
        if on_answer is not None:
            on_answer(answer)
        yield answer
