"""dslider (ENTROPIX.md §6): the reference's formulas on hand-computed examples, its defects fixed,
draws that fit (χ²), and the wrapper around the step."""

from __future__ import annotations

import math
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sampler import chi2_pvalue

from entropix_mlx.engine import dslider as ds
from entropix_mlx.engine.config import SamplerConfig
from entropix_mlx.engine.metrics import Metrics
from entropix_mlx.engine.sampler import make_sampler

CFG = ds.DSliderConfig()
EULER = 0.5772156649015329
M = Metrics(2.0, 1.5, 2.5, 0.4, 0.3, 4.0)


def logits8(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=8) * 2.0


# ── special functions ─────────────────────────────────────────────────────────────────────────


def test_special_functions_on_known_values() -> None:
    x = np.array([1.0, 2.0, 0.5, 5.0])
    assert ds.digamma(x) == pytest.approx(
        [-EULER, 1 - EULER, -EULER - 2 * math.log(2), 25 / 12 - EULER], abs=1e-11
    )
    assert ds.trigamma(np.array([1.0, 0.5])) == pytest.approx(
        [math.pi**2 / 6, math.pi**2 / 2], abs=1e-9
    )
    y = np.array([-25.0, -3.0, -0.5, 0.0, 4.0])
    assert ds.digamma(ds.inv_digamma(y)) == pytest.approx(y, abs=1e-10)
    v = np.array([1e-6, 0.3, 1.0, 7.5, 1e4])
    assert ds.lgamma(v) == pytest.approx([math.lgamma(a) for a in v], rel=1e-12, abs=1e-11)


# ── the step's formulas, by hand ──────────────────────────────────────────────────────────────


def test_normalize_applies_the_noise_floor() -> None:
    lp = ds.normalize(np.array([2.0, 1.0, 0.0, -20.0]), -12.0)
    lse = math.log(1 + math.exp(-1) + math.exp(-2) + math.exp(-22))
    assert lp[:3] == pytest.approx([-lse - 1e-8, -1 - lse - 1e-8, -2 - lse - 1e-8], abs=1e-12)
    assert lp[3] == math.log(1e-8)  # −22.4 < −12: replaced by ln ε
    assert ds.normalize(np.array([0.0, -np.inf]), -12.0)[1] == math.log(1e-8)  # a masked token


def test_entropy_and_varentropy_in_nats() -> None:
    ent, varent = ds.ent_varent(np.log(np.array([0.5, 0.25, 0.25])))
    assert ent == pytest.approx(1.5 * math.log(2))
    # surprisals ln 2, ln 4, ln 4 around 1.5 ln 2: ½(½ ln 2)² + ½(½ ln 2)²
    assert varent == pytest.approx(0.25 * math.log(2) ** 2)


def test_outlier_score_by_hand_and_as_the_reference_writes_it() -> None:
    ent, std = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 0.5, 1.0, 1.0])
    # 1.3·10·3 + 0.8·10 + 0.8·3 + 1.2·0.7 + 1.2·0.3 = 39 + 8 + 2.4 + 0.84 + 0.36
    assert ds.outlier_score(ent, std, 0.7, 0.3, CFG) == pytest.approx(50.6)
    einsum = (
        np.einsum("i,ij,j->", ent, 1.3 * np.ones((4, 4)), std)
        + 0.8 * ent.sum()
        + 0.8 * std.sum()
        + 1.2 * 0.7
        + 1.2 * 0.3
    )
    assert ds.outlier_score(ent, std, 0.7, 0.3, CFG) == pytest.approx(einsum)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0, 20), min_size=4, max_size=4),
    st.lists(st.floats(0, 20), min_size=4, max_size=4),
    st.floats(0, 12),
    st.floats(0, 50),
)
def test_default_coefficients_make_every_finite_state_an_outlier(ent, var, h, v) -> None:
    """Why the fixed dslider always takes the Dirichlet path (docs/samplers.md)."""
    score = ds.outlier_score(np.array(ent), np.sqrt(var), h, v, CFG)
    assert score >= 0 and (score > 0 or (not any(ent) and not any(var) and h == v == 0))


def test_temp_tune_matches_the_target_entropy() -> None:
    lp = ds.normalize(logits8(1), -12.0)
    for target in (0.3, 1.0, 1.8):
        T = ds.temp_tune(lp, target)
        ent, _, _ = ds._ent_grad_hess(lp, T)
        assert ent == pytest.approx(target, abs=1e-6)
    # Out of reach (above ln 8, as the outlier target usually is): Halley far from any root may
    # step either way; ten steps of at most ×1.5 or ÷2 each bound T.
    T = ds.temp_tune(lp, 5.0)
    assert 0.5**10 <= T <= 1.5**10


def test_ent_grad_hess_are_the_derivatives() -> None:
    lp, T, h = ds.normalize(logits8(2), -12.0), 0.8, 1e-5
    ent, grad, hess = ds._ent_grad_hess(lp, T)
    up, down = ds._ent_grad_hess(lp, T + h), ds._ent_grad_hess(lp, T - h)
    assert grad == pytest.approx((up[0] - down[0]) / (2 * h), rel=1e-6)
    assert hess == pytest.approx((up[1] - down[1]) / (2 * h), rel=1e-5)


def test_fit_dirichlet_recovers_a_beta() -> None:
    # Beta(2, 3): E ln p₁ = ψ(2) − ψ(5) = −13/12, E ln p₂ = ψ(3) − ψ(5) = −7/12
    alpha = ds.fit_dirichlet(np.array([-13 / 12, -7 / 12]))
    assert alpha == pytest.approx([2.0, 3.0], rel=1e-9)


def test_fit_dirichlet_solves_its_equations_on_a_vocabulary() -> None:
    state = ds.init_state(np.random.default_rng(3).normal(size=5000) * 3, CFG)
    t = (
        0.5 * ds.normalize(np.random.default_rng(4).normal(size=5000), -12)
        + 0.5 * state.emwa_logp_on_supp
    )
    for init in (None, state.emwa_dir):
        a = ds.fit_dirichlet(t, init)
        assert np.abs(ds.digamma(a) - ds.digamma(a.sum()) - t).max() < 1e-8
    one_hot = np.array([0.0, ds.LN_EPS, ds.LN_EPS])  # Σ e^t > 1: no finite fit, capped
    assert ds.fit_dirichlet(one_hot).sum() == pytest.approx(ds.MAX_ALPHA_SUM, rel=1e-6)


def test_dirichlet_log_likelihood_has_the_right_signs() -> None:
    # Beta(2, 3) density at 0.4: Γ(5)/(Γ(2)Γ(3)) · 0.4 · 0.6² = 12 · 0.144 = 1.728
    logp, alpha = np.log([0.4, 0.6]), np.array([2.0, 3.0])
    assert ds.dirichlet_log_likelihood(logp, alpha) == pytest.approx(math.log(1.728))
    flipped = float(np.sum((alpha - 1) * logp)) - math.lgamma(5) + math.lgamma(2) + math.lgamma(3)
    assert flipped == pytest.approx(-4.42284, abs=1e-5)  # the reference's value: not a density


def _inlier_state(logits: np.ndarray, **changes: float) -> tuple[ds.DSState, ds.DSliderConfig]:
    cfg = replace(CFG, outlier_bias=-1e9, **changes)  # the inlier path
    return ds.init_state(logits, cfg), cfg


def test_inlier_argmax_step_and_the_fixed_token_statistics() -> None:
    logits = np.array([6.0, 2.0, 1.0, 0.5, 0.0, -1.0, -3.0, -30.0])
    state, cfg = _inlier_state(logits)
    state = replace(state, token_cross_ent_naked=2.0, token_cross_var_naked=0.5)
    new, step = ds.step(state, logits, cfg, np.random.default_rng(0))
    lp = ds.normalize(logits, -12.0)
    top6 = ds.normalize(lp[:6], -12.0)
    topk_ent, _ = ds.ent_varent(top6)
    assert topk_ent < 0.1 * state.emwa_topk_ent_naked + 1.2
    assert (step.token, step.branch, step.temperature) == (0, "ds-argmax", 0.0)
    s = -lp[0]  # the token's surprisal (the reference took log(lp + ε) here: NaN)
    tce = 0.65 * s + 0.35 * 2.0
    assert new.token_cross_ent_naked == pytest.approx(tce)
    assert new.token_cross_var_naked == pytest.approx(0.65 * (s - tce) ** 2 + 0.35 * 0.5)
    assert new.emwa_topk_ent_naked == pytest.approx(
        0.7 * topk_ent + 0.3 * state.emwa_topk_ent_naked
    )
    ent, varent = ds.ent_varent(lp)
    assert new.emwa_ent_naked == pytest.approx(0.7 * ent + 0.3 * state.emwa_ent_naked)
    assert new.emwa_varent_naked == pytest.approx(0.7 * varent + 0.3 * state.emwa_varent_naked)
    assert step.naked_ent == pytest.approx(ent)


def test_outlier_updates_by_hand() -> None:
    logits = logits8(5)
    state = ds.init_state(logits, CFG)
    new, step = ds.step(state, logits8(6), CFG, np.random.default_rng(1))
    assert step.outlier_score > 0 and step.branch in ("ds-dirichlet", "ds-ood")
    naked = ds.normalize(logits8(6), -12.0)
    target = (
        state.token_cross_ent_scaffold
        + state.token_cross_ent_naked
        + state.emwa_ent_scaffold
        + state.emwa_ent_naked
        + 8.0 / state.emwa_temp
    )
    T = ds.temp_tune(naked, target)
    assert step.temperature == T and new.emwa_temp == pytest.approx(0.7 * T + 0.3 * 1.0)
    on_supp = ds.normalize(ds.normalize(naked / T, -12.0), -12.0)
    kl = np.sum(np.exp(on_supp) * (on_supp - state.emwa_logp_on_supp))
    c = 4.0 ** (-3.0 / (kl + 1e-8))
    assert new.emwa_logp_on_supp == pytest.approx(c * on_supp + (1 - c) * state.emwa_logp_on_supp)
    alpha, t = new.emwa_dir, new.emwa_logp_on_supp
    gap = ds.digamma(alpha) - ds.digamma(alpha.sum()) - t  # 0, or a constant at the Σα cap
    assert np.ptp(gap) < 1e-8 and (abs(gap[0]) < 1e-8 or alpha.sum() >= ds.MAX_ALPHA_SUM)
    neg_ll = -ds.dirichlet_log_likelihood(on_supp, state.emwa_dir)
    assert new.emwa_dir_ent == pytest.approx(0.7 * neg_ll + 0.3 * state.emwa_dir_ent)


def test_perturbation_weight() -> None:
    """π = 1 − 10^(−1/KL): 1 (all draw) when the draw is p, → 0 (all p) as they part."""
    for kl, pi in ((1e-12, 1.0), (1.0, 0.9), (0.5, 0.99), (1e3, 1 - 10 ** (-1e-3))):
        assert 1 - 10.0 ** (-1.0 / (kl + 1e-8)) == pytest.approx(pi, abs=1e-6)


# ── draws ─────────────────────────────────────────────────────────────────────────────────────


def test_inlier_sampling_fits_the_entropy_matched_top_k() -> None:
    logits = logits8(7)
    state, cfg = _inlier_state(logits, argmax_bias=-1e9)
    naked = ds.normalize(logits, -12.0)
    top = ds._topk(naked, 6)
    top_lp = ds.normalize(naked[top], -12.0)
    T = ds.temp_tune(top_lp, state.emwa_topk_ent_naked)
    q = np.exp(top_lp / T - np.max(top_lp / T))
    expected = np.zeros(8)
    expected[top] = q / q.sum()
    counts = np.zeros(8, int)
    for seed in range(2000):
        _, step = ds.step(state, logits, cfg, np.random.default_rng(seed))
        assert step.branch == "ds-topk" and step.temperature == T
        counts[step.token] += 1
    assert counts[expected == 0].sum() == 0 and chi2_pvalue(counts, expected) > 1e-3


def test_ood_draws_fit_the_dirichlet_mean() -> None:
    """token ~ Cat(d), d ~ Dir(α): marginally P(i) = αᵢ / Σα."""
    cfg = replace(CFG, dirichlet_bias=-1e9)  # never the interpolated argmax
    logits = logits8(8)
    state = ds.init_state(logits8(9), cfg)
    first, _ = ds.step(state, logits, cfg, np.random.default_rng(0))
    counts = np.zeros(8, int)
    for seed in range(2000):
        new, step = ds.step(state, logits, cfg, np.random.default_rng(seed))
        assert step.branch == "ds-ood"
        counts[step.token] += 1
    np.testing.assert_array_equal(new.emwa_dir, first.emwa_dir)  # α does not depend on the draw
    assert chi2_pvalue(counts, first.emwa_dir / first.emwa_dir.sum()) > 1e-3


# ── the sampler and its wrapper ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "h, v, case",
    [
        (0.2, 1.0, "LELV"),
        (3.0, 1.0, "HELV"),
        (2.0, 3.0, "LEHV"),
        (2.6, 3.0, "HEHV"),
        (1.0, 2.0, "LELV"),
        (2.5, 2.6, "HEHV"),
    ],  # none true: the reference's argmax of zeros → 0
)
def test_wrapper_cases(h: float, v: float, case: str) -> None:
    assert ds.wrapper_case(h, v, CFG) == case


def test_sampler_keeps_and_advances_its_state_without_nans() -> None:
    sampler = make_sampler("dslider", SamplerConfig())
    rng, key = np.random.default_rng(10), mx.random.key(0)
    temps = []
    for _ in range(12):
        key, step_key = mx.random.split(key)
        logits = mx.array((rng.normal(size=300) * 3).astype(np.float32))
        d = sampler(logits, M, step_key, clarify_left=0)
        assert 0 <= d.token.item() < 300 and d.strategy.startswith("ds-")
        temps.append(sampler.state.emwa_temp)
        state = sampler.state
        for name in ("emwa_temp", "token_cross_ent_naked", "token_cross_var_naked", "emwa_dir_ent"):
            assert math.isfinite(getattr(state, name)), name
        assert np.isfinite(state.emwa_dir).all() and (state.emwa_dir > 0).all()
    assert len(set(temps)) == len(temps)  # the reference's wrapper kept the first state forever


def test_same_key_same_token() -> None:
    logits = mx.array(logits8(11).astype(np.float32))
    a = make_sampler("dslider", SamplerConfig())(logits, M, mx.random.key(3), clarify_left=0)
    b = make_sampler("dslider", SamplerConfig())(logits, M, mx.random.key(3), clarify_left=0)
    assert a.token.item() == b.token.item() and a.strategy == b.strategy


def test_clarify_once_then_resample_without_the_first_choice() -> None:
    flat = mx.zeros((40,))  # H = ln 40 = 3.7 nats, V = 0: HELV
    sampler = make_sampler("dslider", SamplerConfig(), clarify_ids=(7, 8))
    d = sampler(flat, M, mx.random.key(0), clarify_left=1)
    assert d.token is None and d.inserted == (7, 8) and d.strategy == "clarify"
    assert sampler.state is not None
    again = sampler(flat, M, mx.random.key(0), clarify_left=0)
    assert again.token is not None and again.inserted == ()
    # HEHV: one token at p ≈ .5, the rest spread thin: H, V > 2.5 nats.
    x = np.full(5000, math.log(0.5 / 4999), np.float32)
    x[0] = math.log(0.5)
    fresh = make_sampler("dslider", SamplerConfig())
    key = mx.random.key(4)
    d = fresh(mx.array(x), M, key, clarify_left=0)
    assert d.strategy == "ds-resample"
    rng = np.random.default_rng(np.array(key, dtype=np.uint32).tolist())
    cfg = ds.DSliderConfig()
    state = ds.init_state(x.astype(np.float64), cfg)
    _, first = ds.step(state, x.astype(np.float64), cfg, rng)
    assert ds.wrapper_case(first.naked_ent, first.naked_varent, cfg) == "HEHV"
    assert d.token.item() != first.token
