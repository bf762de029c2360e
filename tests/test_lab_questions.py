"""lab/questions.py: the shipped dev / held-out sets are what the generator makes, disjoint, and
scored right by their own answers."""

from __future__ import annotations

import random
import re

import pytest
from conftest import run_main

from entropix_mlx.lab import questions as gen
from entropix_mlx.lab.evaluate import load_questions, score


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return gen.generate_all(gen.hand_written_questions())


def test_shipped_files_are_what_the_generator_makes(splits: dict[str, list[dict]]) -> None:
    for split, items in splits.items():
        assert gen.split_path(split).read_text("utf-8") == gen.render_jsonl(items), (
            f"{split}.jsonl is stale: run `entropix questions --write`"
        )
    assert gen.stale_splits() == []


def test_the_maintainers_command_checks_the_shipped_sets(monkeypatch, capsys) -> None:
    code, out, _ = run_main(monkeypatch, capsys, ["questions"])
    assert code == 0 and "up to date" in out


def test_sizes_ids_and_disjointness(splits: dict[str, list[dict]]) -> None:
    dev, heldout = (
        {q["question"] for q in splits["dev"]},
        {q["question"] for q in splits["heldout"]},
    )
    assert len(dev) == len(splits["dev"]) >= 300 and len(heldout) == len(splits["heldout"]) >= 300
    assert not dev & heldout
    assert not (dev | heldout) & set(gen.hand_written_questions())
    stems = lambda items: {gen._stem(q["question"]) for q in items}
    assert not stems(splits["dev"]) & stems(splits["heldout"])  # not even with another suffix
    ids = [q["id"] for s in splits.values() for q in s]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("split", list(gen.SPLITS))
def test_shipped_sets_load_and_score_their_own_answers(split: str) -> None:
    questions = load_questions(gen.split_path(split))
    assert {q.category for q in questions} == {"arithmetic", "word problem"}
    for q in questions:
        assert q.kind == "number" and q.expected == int(q.expected) and q.expected >= 0
        assert score(f"The answer is {int(q.expected)}.", q)
        assert not score(f"The answer is {int(q.expected) + 1}.", q)


@pytest.mark.parametrize("template", gen.TEMPLATES, ids=lambda t: t.__name__)
def test_templates_compute_their_answers(template) -> None:
    """Re-derive each answer from the numbers in the text (the generator could mix them up)."""
    r = random.Random(7)
    for _ in range(200):
        text, answer, category = template(r)
        nums = [int(n) for n in re.findall(r"\d+", text)]
        assert answer >= 0 and category in ("arithmetic", "word problem")
        name = template.__name__
        if name in ("_add", "_gets_more"):
            assert answer == nums[0] + nums[1]
        elif name in ("_sub", "_gives_away", "_change"):
            assert answer == nums[-1] - nums[0] if name == "_change" else nums[0] - nums[1]
        elif name in ("_mul", "_distance"):
            assert answer == nums[0] * nums[1]
        elif name in ("_div", "_share"):
            assert answer * nums[1] == nums[0]
        elif name == "_half_double":
            assert answer in (nums[0] // 2, 2 * nums[0]) and ("half" in text) == (
                answer * 2 == nums[0]
            )
        elif name == "_two_ops":
            a, b, c = nums
            assert answer == (a * b + c if "plus" in text else a * b - c)
        elif name == "_bags":
            assert answer == (nums[0] * nums[1] - nums[2] if len(nums) == 3 else nums[0] * nums[1])
        elif name == "_shopping":
            expected = (
                nums[0] * nums[1] if len(nums) == 2 else nums[0] * nums[2] + nums[1] * nums[3]
            )
            assert answer == expected
        elif name == "_ages":
            assert answer == (nums[0] + nums[1] if "older" in text else nums[0] - nums[1])
        else:
            pytest.fail(f"no check for {name}")


def test_generation_is_seeded_and_splits_differ() -> None:
    a = gen.generate_split("dev", size=40)
    assert a == gen.generate_split("dev", size=40)
    assert a != gen.generate_split("heldout", size=40)
    with pytest.raises(ValueError, match="'test'.*dev, heldout"):
        gen.generate_split("test")
