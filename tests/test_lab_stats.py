"""lab/stats.py: bootstrap CIs on known cases, pairing, per-question seeds, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropix_mlx.lab.stats import (
    Interval,
    accuracy,
    bootstrap_mean,
    paired_difference,
    per_question,
    question_seed,
)


def test_constant_scores_have_a_zero_width_interval() -> None:
    ci = bootstrap_mean([0.4] * 50)
    assert (ci.estimate, ci.lo, ci.hi) == pytest.approx((0.4, 0.4, 0.4), abs=1e-15)
    assert bootstrap_mean([1.0]) == Interval(1.0, 1.0, 1.0)


def test_two_questions_one_right() -> None:
    # Resampled means are 0, ½, 1 with probability ¼, ½, ¼: the 95 % interval is [0, 1].
    ci = bootstrap_mean([0.0, 1.0], n_boot=4000, seed=1)
    assert (ci.estimate, ci.lo, ci.hi) == (0.5, 0.0, 1.0)


def test_interval_matches_the_normal_approximation_for_many_questions() -> None:
    x = np.array([1.0, 0.0] * 200)  # p = ½ over 400 questions: SE = 0.025
    ci = bootstrap_mean(x, seed=3)
    half = 1.96 * math.sqrt(0.25 / 400)
    assert ci.estimate == 0.5
    assert ci.lo == pytest.approx(0.5 - half, abs=0.006) and ci.hi == pytest.approx(
        0.5 + half, abs=0.006
    )
    wider = bootstrap_mean(x, level=0.99, seed=3)
    assert wider.lo < ci.lo and wider.hi > ci.hi and wider.level == 0.99


def test_seeded_and_reproducible() -> None:
    x = np.random.default_rng(0).random(60)
    assert bootstrap_mean(x, seed=5) == bootstrap_mean(x, seed=5)
    assert bootstrap_mean(x, seed=5) != bootstrap_mean(x, seed=6)


def test_per_question_scores_and_accuracy() -> None:
    scores = per_question({"b": [True, False, True, True], "a": [0, 0], "c": [1.0]})
    assert scores == {"a": 0.0, "b": 0.75, "c": 1.0}
    assert accuracy(scores).estimate == pytest.approx(1.75 / 3)
    with pytest.raises(ValueError, match="'x' has no answers"):
        per_question({"x": []})


def test_pairing_sees_a_difference_that_separate_intervals_hide() -> None:
    """b is right on a random half; a is right wherever b is, and on 20 more questions."""
    rng = np.random.default_rng(4)
    b = {f"q{i}": float(v) for i, v in enumerate(rng.random(300) < 0.5)}
    wrong = [q for q, v in b.items() if v == 0.0]
    a = {**b, **{q: 1.0 for q in wrong[:20]}}
    ca, cb = accuracy(a), accuracy(b)
    assert ca.lo < cb.hi  # the unpaired intervals overlap ...
    d = paired_difference(a, b)
    assert d.estimate == pytest.approx(20 / 300)
    assert d.lo > 0  # ... the paired one excludes no difference
    same = paired_difference(b, b)
    assert (same.estimate, same.lo, same.hi) == (0.0, 0.0, 0.0)


def test_paired_needs_the_same_questions() -> None:
    with pytest.raises(ValueError, match="same questions; 2 differ, e.g. 'x'"):
        paired_difference({"q": 1.0, "x": 0.0}, {"q": 1.0, "y": 1.0})


@pytest.mark.parametrize(
    "values, kwargs, message",
    [
        ([], {}, "non-empty"),
        ([[1.0]], {}, "non-empty"),
        ([math.nan], {}, "finite"),
        ([1.0], {"level": 1.0}, "level=1.0"),
        ([1.0], {"n_boot": 0}, "n_boot=0"),
    ],
)
def test_bad_input(values: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_mean(values, **kwargs)


def test_question_seeds() -> None:
    s = question_seed(0, "dev-0001", 0)
    assert s == question_seed(0, "dev-0001", 0) and 0 <= s < 2**31
    others = {
        question_seed(0, "dev-0001", 1),
        question_seed(1, "dev-0001", 0),
        question_seed(0, "dev-0002", 0),
    }
    assert s not in others and len(others) == 3
    # No separator confusion: ("1", "2") and ("12", "") are different answers.
    assert question_seed(1, "2", 0) != question_seed(12, "", 0)


scores = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(scores, st.floats(-5, 5), st.floats(0.1, 10))
def test_interval_is_shift_and_scale_equivariant(
    x: list[float], shift: float, scale: float
) -> None:
    base = bootstrap_mean(x, n_boot=300, seed=2)
    moved = bootstrap_mean([scale * v + shift for v in x], n_boot=300, seed=2)
    for got, want in zip((moved.estimate, moved.lo, moved.hi), (base.estimate, base.lo, base.hi)):
        assert got == pytest.approx(scale * want + shift, abs=1e-9)
    assert min(x) - 1e-12 <= base.lo <= base.hi <= max(x) + 1e-12


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30))
def test_swapping_the_pair_negates_the_difference(pairs: list[tuple[float, float]]) -> None:
    a = {f"q{i}": p[0] for i, p in enumerate(pairs)}
    b = {f"q{i}": p[1] for i, p in enumerate(pairs)}
    ab, ba = paired_difference(a, b, n_boot=300), paired_difference(b, a, n_boot=300)
    assert ab.estimate == pytest.approx(-ba.estimate, abs=1e-12)
    assert ab.lo == pytest.approx(-ba.hi, abs=1e-9) and ab.hi == pytest.approx(-ba.lo, abs=1e-9)
