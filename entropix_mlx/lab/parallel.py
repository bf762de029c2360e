"""Data-parallel evaluation: each rank of an `mx.distributed` group answers a share of the
questions, and every rank ends with all the answers in the order one process gives them.

Written against a function that answers a list of questions (`evaluate.answer_questions` with its
other arguments bound), so the split does not depend on how answers are decoded. An answer depends
only on its question, sampler and seed, never on which rank or what else that rank decoded, so the
answers are the single-process answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..model.distributed import Group, gather_objects, take_share


def answer_shared(
    answer: Callable[[Sequence[Any]], Iterable[Any]],
    questions: Sequence[Any],
    group: Group,
    on_answer: Callable[[Any], None] | None = None,
) -> list[Any]:
    """This rank answers every `size`-th question (from its rank) with `answer`; returns all ranks'
    answers, ordered by sampler (first appearance) and then question, as one process orders them.

    `on_answer` sees this rank's answers as they come (rank 0 shows progress).
    """
    share = [questions[i] for i in take_share(questions, group)]
    mine = []
    for a in answer(share):
        mine.append(a)
        if on_answer is not None:
            on_answer(a)
    everyone = [a for answers in gather_objects(mine, group) for a in answers]
    return order_answers(everyone, questions)


def order_answers(answers: Sequence[Any], questions: Sequence[Any]) -> list[Any]:
    """Answers (with `.sampler` and `.question`) sorted by sampler, then question position;
    stable, so the answers to one question keep their order (e.g. several seeds)."""
    position = {q: i for i, q in reversed(list(enumerate(questions)))}
    samplers = {name: i for i, name in enumerate(dict.fromkeys(a.sampler for a in answers))}
    return sorted(answers, key=lambda a: (samplers[a.sampler], position[a.question]))
