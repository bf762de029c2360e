"""Statistics of an eval: accuracy with a bootstrap CI over questions, paired differences.

The unit of resampling is the question: a sampler answers each question with k seeds, its score
on a question is the fraction of those answers that are right, and the accuracy is the mean over
questions. Resampling questions (not answers) keeps the k draws of one question together, so
the interval reflects how much the figure would move on another question set of the same kind.
A difference between two samplers is paired: both answered the same questions, and the
per-question differences are resampled together. Pure functions; randomness from a seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 4000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate and its percentile-bootstrap confidence interval."""

    estimate: float
    lo: float
    hi: float
    level: float = LEVEL

    def points(self, scale: float = 100.0) -> str:
        """`41.3 [35.7, 47.0]` in points (percent of questions) by default."""
        return f"{scale * self.estimate:.1f} [{scale * self.lo:.1f}, {scale * self.hi:.1f}]"


def _checked(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(
            f"{what}: need a non-empty list of per-question scores, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: per-question scores must be finite numbers")
    return x


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """The mean of `values` (one per question) with a percentile-bootstrap CI over questions."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must be in (0, 1), e.g. 0.95")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r} must be ≥ 1")
    x = _checked(values, "bootstrap")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))  # (n_boot, n)
    means = x[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(x.mean()), float(lo), float(hi), level)


def per_question(correct: Mapping[str, Sequence[bool | float]]) -> dict[str, float]:
    """Question id → the fraction of its answers (one per seed) that are right."""
    out = {}
    for qid, answers in correct.items():
        if len(answers) == 0:
            raise ValueError(f"question {qid!r} has no answers")
        out[qid] = float(np.mean(np.asarray(answers, dtype=np.float64)))
    return out


def accuracy(
    scores: Mapping[str, float], *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> Interval:
    """Accuracy over questions (`per_question` scores) with its CI, questions in id order."""
    return bootstrap_mean(
        [scores[q] for q in sorted(scores)], n_boot=n_boot, level=level, seed=seed
    )


def paired_difference(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """Mean over questions of a − b (per-question scores of two samplers) with its paired CI.

    Both must cover the same questions: a difference on different questions is not paired.
    """
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(
            f"paired difference needs the same questions; {len(only)} differ, e.g. {only[0]!r}"
        )
    ids = sorted(a)
    diff = np.asarray([a[q] for q in ids]) - np.asarray([b[q] for q in ids])
    return bootstrap_mean(diff, n_boot=n_boot, level=level, seed=seed)


def question_seed(base_seed: int, question_id: str, draw: int) -> int:
    """The seed of one answer: a hash of (base seed, question id, draw index), 31 bits.

    Every question gets its own draws, reproducibly, whatever the order or subset of questions.
    """
    digest = hashlib.blake2b(f"{base_seed}\x1f{question_id}\x1f{draw}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF
