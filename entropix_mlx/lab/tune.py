"""`entropix tune`: random search with successive halving over a few SamplerConfig fields.

Candidates are the base profile, a greedy-like point (every temperature 0, no clarify text) and
`n` random points of the search space. Each round scores the surviving candidates on more dev
questions (the first `questions` of one seeded order, so a later round only adds questions) and
keeps the best 1/η. Scores come from an `Evaluate` function: the CLI answers with the model,
the tests with a formula. Dev questions only: the held-out set is for the report afterwards.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..engine.config import SamplerConfig
from .stats import Interval, accuracy

# question id → fraction of its answers that were right, for one config on some questions
Evaluate = Callable[[SamplerConfig, Sequence[Any]], dict[str, float]]


@dataclass(frozen=True)
class Dimension:
    """One searched field: uniform on [lo, hi] (an integer field draws integers)."""

    name: str
    lo: float
    hi: float


# Where the reference's heat comes from on a small model (issue 12): T0 scales every strategy's
# temperature, resample has a floor of 2, the adaptive branch adds 0.3·(H + V) and
# 0.2·(attention uncertainty); explore is capped; clarify inserts text. T0 = 0, a zero resample
# floor and clarify_max = 0 make Entropix greedy, so the space holds greedy-like settings.
DEFAULT_SPACE = (
    Dimension("temperature", 0.0, 1.0),
    Dimension("resample_temp_min", 0.0, 2.0),
    Dimension("adaptive_temp_logit_unc", 0.0, 0.3),
    Dimension("adaptive_temp_attn_unc", 0.0, 0.2),
    Dimension("explore_temp_max", 0.0, 1.5),
    Dimension("adaptive_min_p_min", 0.0, 0.3),
    Dimension("n_adaptive_samples", 1, 8),
    Dimension("clarify_max", 0, 1),
)
# The relative form (docs/samplers.md) states ranges over the model's own quantiles, so the search
# moves the uncertain ends of the ranges and T0, which scales every temperature: T0 = 0 is greedy.
RELATIVE_SPACE = (
    Dimension("temperature", 0.0, 1.0),
    Dimension("rel_adaptive_temp_to", 0.0, 3.0),
    Dimension("rel_adaptive_top_k_to", 1, 100),
    Dimension("rel_adaptive_min_p_from", 0.0, 0.5),
    Dimension("rel_explore_temp_to", 0.0, 2.0),
    Dimension("rel_resample_temp_to", 0.0, 3.0),
    Dimension("n_adaptive_samples", 1, 8),
    Dimension("clarify_max", 0, 1),
)
GREEDY_LIKE = {"temperature": 0.0, "resample_temp_min": 0.0, "clarify_max": 0}


def space_for(base: SamplerConfig) -> tuple[Dimension, ...]:
    """The search space of the base profile's form."""
    return RELATIVE_SPACE if base.form == "relative" else DEFAULT_SPACE


@dataclass(frozen=True)
class Budget:
    """Candidates, rounds and how many dev questions the first round uses (then × η each)."""

    candidates: int = 16
    rounds: int = 3
    questions: int = 20
    eta: int = 3

    def __post_init__(self) -> None:
        for name in ("candidates", "rounds", "questions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be ≥ 1")
        if self.eta < 2:
            raise ValueError(f"eta={self.eta!r} must be ≥ 2")


@dataclass
class Candidate:
    label: str
    config: SamplerConfig
    scores: dict[str, float] = field(default_factory=dict)  # question id → score

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores) if self.scores else -math.inf


@dataclass(frozen=True)
class TuneResult:
    best: Candidate
    dev: Interval  # the best candidate's dev accuracy over the questions it saw, with a CI
    rounds: list[list[tuple[str, int, float]]]  # per round: (label, questions, mean score)
    answers: int  # evaluations spent: Σ over rounds of candidates × new questions
    space: tuple[Dimension, ...]
    budget: Budget
    seed: int


def check_space(space: Sequence[Dimension], base: SamplerConfig) -> None:
    """At most 8 known numeric fields, each range inside the field's valid range."""
    if not 1 <= len(space) <= 8:
        raise ValueError(f"the search space has {len(space)} fields; give 1 to 8")
    kinds = {f.name: type(f.default) for f in fields(base)}
    for d in space:
        if kinds.get(d.name) not in (int, float):
            raise ValueError(f"{d.name!r} is not a numeric sampler setting")
        if not d.lo <= d.hi:
            raise ValueError(f"{d.name}: lo={d.lo} must not exceed hi={d.hi}")
        replace(base, **{d.name: kinds[d.name](d.lo)})  # raises if outside the field's range
        replace(base, **{d.name: kinds[d.name](d.hi)})


def random_config(
    base: SamplerConfig, space: Sequence[Dimension], rng: random.Random
) -> SamplerConfig:
    kinds = {f.name: type(f.default) for f in fields(base)}
    changes: dict[str, Any] = {}
    for d in space:
        if kinds[d.name] is int:
            changes[d.name] = rng.randint(int(d.lo), int(d.hi))
        else:
            changes[d.name] = round(rng.uniform(d.lo, d.hi), 4)
    return replace(base, **changes)


def candidates(
    base: SamplerConfig, space: Sequence[Dimension], n: int, seed: int
) -> list[Candidate]:
    """The base, the greedy-like point (its searched fields only), then n random points."""
    searched = {d.name for d in space}
    greedy = replace(base, **{k: v for k, v in GREEDY_LIKE.items() if k in searched})
    rng = random.Random(seed)
    found = [Candidate("base", base), Candidate("greedy-like", greedy)]
    found += [Candidate(f"random-{i + 1}", random_config(base, space, rng)) for i in range(n)]
    return found


def tune(
    base: SamplerConfig,
    dev: Sequence[Any],
    evaluate: Evaluate,
    *,
    space: Sequence[Dimension] | None = None,
    budget: Budget = Budget(),
    seed: int = 0,
    on_round: Callable[[int, list[Candidate]], None] | None = None,
) -> TuneResult:
    """Successive halving: round r scores the survivors on the first questions·η^r dev questions
    (a seeded order) and keeps the best ⌈n/η⌉. Ties keep the earlier candidate (base first).
    `space`: by default the one for the base profile's form (`space_for`)."""
    space = space_for(base) if space is None else space
    check_space(space, base)
    order = list(dev)
    random.Random(seed).shuffle(order)
    pool = candidates(base, space, budget.candidates, seed)
    history, spent = [], 0
    for r in range(budget.rounds):
        n_q = min(len(order), budget.questions * budget.eta**r)
        for c in pool:
            new = [q for q in order[:n_q] if q.id not in c.scores]
            if new:
                c.scores.update(evaluate(c.config, new))
                spent += len(new)
        history.append([(c.label, len(c.scores), c.mean) for c in pool])
        if on_round is not None:
            on_round(r, pool)
        ranked = sorted(pool, key=lambda c: -c.mean)  # stable: ties keep the earlier one
        keep = 1 if r == budget.rounds - 1 else max(1, math.ceil(len(pool) / budget.eta))
        pool = ranked[:keep]
        if n_q == len(order) and len(pool) == 1:
            break
    best = pool[0]
    return TuneResult(best, accuracy(best.scores), history, spent, tuple(space), budget, seed)


def render_header(
    result: TuneResult, *, model: str, dev_file: str, date: str, max_tokens: int, seeds: int
) -> str:
    """The tuned profile's comment header: what was searched, on what, and what it scored."""
    b = result.budget
    lines = [
        f"Sampler profile tuned for {model} by `entropix tune` on {date}.",
        f"Dev set: {dev_file}; {len(result.best.scores)} questions for the winner "
        f"({seeds} seed(s) each, {max_tokens} tokens max).",
        f"Dev accuracy of this profile: {result.dev.points()} % "
        "(95 % bootstrap CI over questions).",
        f"Winner: {result.best.label}. Seed {result.seed}.",
        f"Budget: {b.candidates} random candidates + base + greedy-like, {b.rounds} rounds of "
        f"successive halving (eta {b.eta}, {b.questions} questions in round 1); "
        f"{result.answers} question evaluations in all.",
        "Search space (uniform; integers for integer fields):",
        *(f"  {d.name} in [{d.lo:g}, {d.hi:g}]" for d in result.space),
        "Rounds (candidate: questions, mean score):",
    ]
    for r, row in enumerate(result.rounds):
        best = sorted(row, key=lambda t: -t[2])[:4]
        lines.append(
            f"  {r + 1}: " + ", ".join(f"{label} {n}q {100 * m:.1f}%" for label, n, m in best)
        )
    lines.append("Every field not searched is copied from the base profile.")
    return "\n".join(lines)


def changed_fields(config: SamplerConfig, base: SamplerConfig) -> Mapping[str, Any]:
    return {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if getattr(config, f.name) != getattr(base, f.name)
    }
