"""Seeded arithmetic and word problems: the `dev` and `held-out` question sets of the lab.

Both sets are generated once by this module and shipped as package data (lab/data/*.jsonl);
`entropix questions --write` rewrites them, `entropix questions` compares. A test
regenerates them, so a change to a template (or to Python's `random`) shows up as a diff.

The problems are short on purpose (one or two steps, numbers mostly below 20): SmolLM2-135M
gets some of them right (it failed 20 of 20 with two-digit operands), so that a sampler can make
the score visibly better or worse. Every answer is a whole number, scored by `evaluate.score`
with `"number"` (the last number in the answer).
`held-out` never repeats a `dev` question, and neither repeats a hand-written one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SPLITS = {"dev": 1201, "heldout": 1202}  # split name → its generator's seed
SIZE = 300
PREFIX = {"dev": "dev", "heldout": "ho"}
DATA_DIR = Path(__file__).resolve().parent / "data"
ARITHMETIC_SUFFIX = " Answer with the number only."
WORD_SUFFIX = " End with the final number."

NAMES = ("Sam", "Ana", "Ben", "Mia", "Leo", "Zoe", "Tom", "Ivy", "Max", "Eva", "Raj", "Kim")
ITEMS = (
    ("apple", "apples"),
    ("pencil", "pencils"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("cookie", "cookies"),
    ("card", "cards"),
    ("stamp", "stamps"),
)
PRICED = (("pen", "pens"), ("notebook", "notebooks"), ("ticket", "tickets"), ("cup", "cups"))
Problem = tuple[str, int, str]  # question text (without suffix), answer, category


def _add(r: random.Random) -> Problem:
    a, b = r.randint(1, 20), r.randint(1, 12)
    return f"What is {a} + {b}?", a + b, "arithmetic"


def _sub(r: random.Random) -> Problem:
    a = r.randint(5, 25)
    b = r.randint(1, min(a - 1, 12))
    return f"What is {a} - {b}?", a - b, "arithmetic"


def _mul(r: random.Random) -> Problem:
    a, b = r.randint(2, 10), r.randint(2, 6)
    word = r.choice(("times", "multiplied by"))
    return f"What is {a} {word} {b}?", a * b, "arithmetic"


def _div(r: random.Random) -> Problem:
    b, q = r.randint(2, 6), r.randint(2, 10)
    return f"What is {b * q} divided by {b}?", q, "arithmetic"


def _half_double(r: random.Random) -> Problem:
    if r.random() < 0.5:
        n = 2 * r.randint(2, 25)
        return f"What is half of {n}?", n // 2, "arithmetic"
    n = r.randint(2, 25)
    return f"What is double {n}?", 2 * n, "arithmetic"


def _two_ops(r: random.Random) -> Problem:
    a, b, c = r.randint(2, 5), r.randint(2, 5), r.randint(1, 10)
    if r.random() < 0.5:
        return f"What is {a} times {b} plus {c}?", a * b + c, "arithmetic"
    c = r.randint(1, a * b - 1)
    return f"What is {a} times {b} minus {c}?", a * b - c, "arithmetic"


def _gets_more(r: random.Random) -> Problem:
    who, (_, items) = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 15), r.randint(2, 10)
    text = f"{who} has {a} {items} and gets {b} more. How many {items} does {who} have now?"
    return text, a + b, "word problem"


def _gives_away(r: random.Random) -> Problem:
    who, (_, items) = r.choice(NAMES), r.choice(ITEMS)
    a = r.randint(5, 20)
    b = r.randint(1, min(a - 1, 10))
    return (
        f"{who} has {a} {items} and gives away {b}. How many {items} are left?",
        a - b,
        "word problem",
    )


def _bags(r: random.Random) -> Problem:
    who, (_, items) = r.choice(NAMES), r.choice(ITEMS)
    n, k = r.randint(2, 5), r.randint(2, 6)
    if r.random() < 0.5:
        text = (
            f"{who} has {n} bags with {k} {items} in each bag. How many {items} are there in total?"
        )
        return text, n * k, "word problem"
    e = r.randint(1, n * k - 1)
    text = (
        f"{who} has {n} bags with {k} {items} in each bag and loses {e} of them. "
        f"How many {items} are left?"
    )
    return text, n * k - e, "word problem"


def _share(r: random.Random) -> Problem:
    (_, items), kids, each = r.choice(ITEMS), r.randint(2, 5), r.randint(2, 6)
    text = (
        f"{kids * each} {items} are shared equally among {kids} children. "
        "How many does each child get?"
    )
    return text, each, "word problem"


def _shopping(r: random.Random) -> Problem:
    (one, many), (one2, many2) = r.sample(PRICED, 2)
    p, q = r.randint(1, 6), r.randint(1, 6)
    n, m = r.randint(2, 4), r.randint(1, 3)
    if r.random() < 0.5:
        text = f"A {one} costs ${p}. How much do {n} {many} cost in dollars?"
        return text, n * p, "word problem"
    text = (
        f"A {one} costs ${p} and a {one2} costs ${q}. "
        f"How much do {n} {many} and {m} {one2 if m == 1 else many2} cost in dollars?"
    )
    return text, n * p + m * q, "word problem"


def _distance(r: random.Random) -> Problem:
    speed, hours = 10 * r.randint(2, 9), r.randint(2, 3)
    text = (
        f"A car drives at {speed} km per hour for {hours} hours. "
        "How many kilometres does it travel?"
    )
    return text, speed * hours, "word problem"


def _ages(r: random.Random) -> Problem:
    a, b = r.sample(NAMES, 2)
    age, diff = r.randint(5, 20), r.randint(2, 10)
    if r.random() < 0.5:
        return (
            f"{a} is {age} years old. {b} is {diff} years older. How old is {b}?",
            age + diff,
            "word problem",
        )
    age = max(age, diff + 1)
    return (
        f"{a} is {age} years old. {b} is {diff} years younger. How old is {b}?",
        age - diff,
        "word problem",
    )


def _change(r: random.Random) -> Problem:
    who, (one, _) = r.choice(NAMES), r.choice(PRICED)
    price = r.randint(1, 9)
    paid = r.choice([n for n in (5, 10, 20) if n > price] or [20])
    text = (
        f"{who} buys a {one} for ${price} and pays with ${paid}. "
        f"How much change in dollars does {who} get?"
    )
    return text, paid - price, "word problem"


TEMPLATES: tuple[Callable[[random.Random], Problem], ...] = (
    _add,
    _sub,
    _mul,
    _div,
    _half_double,
    _two_ops,
    _gets_more,
    _gives_away,
    _bags,
    _share,
    _shopping,
    _distance,
    _ages,
    _change,
)


def _problems(seed: int) -> Iterable[Problem]:
    r = random.Random(seed)
    while True:
        yield r.choice(TEMPLATES)(r)


def generate_split(
    split: str, *, exclude: Iterable[str] = (), size: int = SIZE
) -> list[dict[str, Any]]:
    """`size` distinct questions of one split, none of whose text is in `exclude`."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    seen, items = set(exclude), []
    for text, answer, category in _problems(SPLITS[split]):
        if text in seen:
            continue
        seen.add(text)
        suffix = ARITHMETIC_SUFFIX if category == "arithmetic" else WORD_SUFFIX
        items.append(
            {
                "id": f"{PREFIX[split]}-{len(items) + 1:04d}",
                "category": category,
                "question": text + suffix,
                "number": answer,
            }
        )
        if len(items) == size:
            return items
    raise AssertionError("unreachable: the generator is endless")


def _stem(question: str) -> str:
    return question.removesuffix(ARITHMETIC_SUFFIX).removesuffix(WORD_SUFFIX)


def generate_all(hand_written: Iterable[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Both splits: dev first, then held-out with every dev (and hand-written) question excluded."""
    taken = {_stem(q) for q in hand_written}
    dev = generate_split("dev", exclude=taken)
    heldout = generate_split("heldout", exclude=taken | {_stem(q["question"]) for q in dev})
    return {"dev": dev, "heldout": heldout}


def render_jsonl(items: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def split_path(split: str) -> Path:
    """The shipped file of a split."""
    return DATA_DIR / f"{split}.jsonl"


def hand_written_questions() -> list[str]:
    """The question texts of the shipped hand-written set (facts and a few sums)."""
    path = DATA_DIR / "questions.jsonl"
    return [json.loads(line)["question"] for line in path.read_text("utf-8").splitlines() if line]


def stale_splits() -> list[str]:
    """The shipped splits that differ from what the generator makes now."""
    splits = generate_all(hand_written_questions())
    return [
        s
        for s, items in splits.items()
        if not split_path(s).is_file() or split_path(s).read_text("utf-8") != render_jsonl(items)
    ]


def write_splits() -> list[Path]:
    """Rewrite lab/data/{dev,heldout}.jsonl from the generator; the paths written."""
    DATA_DIR.mkdir(exist_ok=True)
    written = []
    for split, items in generate_all(hand_written_questions()).items():
        split_path(split).write_text(render_jsonl(items), encoding="utf-8")
        written.append(split_path(split))
    return written
