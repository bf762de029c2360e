"""A small question-answering eval: every sampler answers every question; score and tally.

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
class Answer:
    """One sampler's answer to one question."""

    question: Question
    sampler: str
    text: str
    correct: bool
    tokens: int
    decode_seconds: float
    finish_reason: str | None
    strategies: dict[str, int] = field(default_factory=dict)
    quadrants: dict[str, int] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The answer's JSONL line."""
        q = self.question
        expected = list(q.expected) if q.kind == "answer" else q.expected
        return {
            "id": q.id,
            "category": q.category,
            "question": q.question,
            "sampler": self.sampler,
            "answer": self.text,
            "correct": self.correct,
            "tokens": self.tokens,
            "expected": {q.kind: expected},
            "finish_reason": self.finish_reason,
            "strategies": self.strategies,
            "quadrants": self.quadrants,
        }


@dataclass(frozen=True)
class SamplerScore:
    """One table row: a sampler's totals over the question set."""

    sampler: str
    questions: int
    correct: int
    tokens: int
    decode_seconds: float
    strategies: dict[str, int]
    quadrants: dict[str, int]

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    @property
    def mean_tokens(self) -> float:
        return self.tokens / self.questions if self.questions else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def record(self) -> dict[str, Any]:
        """The row as the eval JSONL's summary stores it."""
        names = ("sampler", "questions", "correct", "accuracy", "mean_tokens", "tokens_per_second")
        return {n: getattr(self, n) for n in names} | {
            "strategies": self.strategies,
            "quadrants": self.quadrants,
        }


def tally(answers: Sequence[Answer]) -> list[SamplerScore]:
    """Per sampler, in the order they first appear."""
    rows = []
    for name in dict.fromkeys(a.sampler for a in answers):
        mine = [a for a in answers if a.sampler == name]
        strategies, quadrants = Counter(), Counter()
        for a in mine:
            strategies.update(a.strategies)
            quadrants.update(a.quadrants)
        rows.append(
            SamplerScore(
                sampler=name,
                questions=len(mine),
                correct=sum(a.correct for a in mine),
                tokens=sum(a.tokens for a in mine),
                decode_seconds=sum(a.decode_seconds for a in mine),
                strategies=dict(strategies),
                quadrants=dict(quadrants),
            )
        )
    return rows


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    samplers: Sequence[str],
    *,
    config: Any,
    max_tokens: int,
    seed: int,
    on_answer: Callable[[Answer], None] | None = None,
) -> Iterator[Answer]:
    """Each sampler answers every question (chat template, the same seed), sampler by sampler."""
    from ..engine.generate import Summary, generate

    for sampler in samplers:
        for q in questions:
            ids = tokenizer.apply_chat_template(chat_messages(q.question, system=q.system))
            events = list(
                generate(
                    model,
                    tokenizer,
                    ids,
                    sampler=sampler,
                    max_tokens=max_tokens,
                    seed=seed,
                    config=config,
                )
            )
            summary = Summary.from_events(events)
            text = "".join(e.text for e in events).strip()
            answer = Answer(
                question=q,
                sampler=sampler,
                text=text,
                correct=score(text, q),
                tokens=len(events),
                decode_seconds=events[-1].elapsed if events else 0.0,
                finish_reason=summary.finish_reason,
                strategies=summary.strategies,
                quadrants=summary.quadrants,
            )
            if on_answer is not None:
                on_answer(answer)
            yield answer
