"""Rival samplers minp, edt, dynatemp: formulas by hand, exact draws (same key, same token), χ²."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
from test_sampler import LOGITS, M, chi2_pvalue, expected_probs

from entropix_mlx.engine.config import RIVALS, SAMPLERS, SamplerConfig
from entropix_mlx.engine.metrics import Metrics
from entropix_mlx.engine.sampler import (
    SamplingParams,
    _draw,
    candidates,
    dynatemp_temperature,
    edt_temperature,
    make_sampler,
    sample,
    sample_truncated,
)

CFG = SamplerConfig()
N_DRAWS = 24_000


def truncated_then_scaled(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Truncate at T = 1 (top-k, top-p, min-p from the definitions), then p^(1/T) over the rest."""
    kept = expected_probs(logits, SamplingParams(1.0, params.top_k, params.top_p, params.min_p)) > 0
    x = np.where(kept, logits.astype(np.float64) / params.temperature, -np.inf)
    q = np.exp(x - x.max())
    return q / q.sum()


def draw_truncated(logits: mx.array, params: SamplingParams, n: int, seed: int) -> np.ndarray:
    keys = mx.random.split(mx.random.key(seed), n)
    tokens = mx.vmap(lambda k: sample_truncated(logits, params, k))(keys)
    return np.bincount(np.array(tokens), minlength=logits.shape[-1])


def test_every_rival_is_a_sampler_name() -> None:
    assert RIVALS == ("minp", "edt", "dynatemp", "dslider")
    assert set(RIVALS) < set(SAMPLERS)
    for name in RIVALS:
        assert make_sampler(name, CFG).name == name


# ── minp ──────────────────────────────────────────────────────────────────────────────────────


def test_minp_truncates_before_the_temperature() -> None:
    """p = (.5, .3, .15, .05), min_p .2: .05 < .1 is dropped at T = 1 and stays dropped at T = 3
    (after scaling, .05^(1/3) would pass: 0.46 of the top's)."""
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    params = SamplingParams(3.0, 0, 1.0, 0.2)
    counts = draw_truncated(mx.array(logits), params, 8000, seed=1)
    assert counts[3] == 0
    q = np.array([0.5, 0.3, 0.15]) ** (1 / 3)
    assert chi2_pvalue(counts[:3], q / q.sum()) > 1e-3


@pytest.mark.parametrize(
    "params", [SamplingParams(1.5, 0, 1.0, 0.1), SamplingParams(0.7, 0, 1.0, 0.02)]
)
def test_minp_draws_fit(params: SamplingParams) -> None:
    probs = truncated_then_scaled(LOGITS, params)
    counts = draw_truncated(mx.array(LOGITS), params, N_DRAWS, seed=3)
    assert counts[probs == 0].sum() == 0
    assert chi2_pvalue(counts, probs) > 1e-3


def test_minp_sampler_uses_its_fields() -> None:
    cfg = SamplerConfig(minp_temperature=1.3, minp_min_p=0.05)
    d = make_sampler("minp", cfg)(mx.array(LOGITS), M, mx.random.key(7), clarify_left=1)
    assert d.params == SamplingParams(1.3, 0, 1.0, 0.05) and d.strategy == "minp"
    assert d.quadrant == "MID" and d.inserted == ()
    assert d.token.item() == sample_truncated(mx.array(LOGITS), d.params, mx.random.key(7)).item()
    assert sample_truncated(
        mx.array(LOGITS), SamplingParams(0.0, 0, 1.0, 0.1), mx.random.key(0)
    ).item() == int(np.argmax(LOGITS))


# ── edt ───────────────────────────────────────────────────────────────────────────────────────


def test_edt_temperature_by_hand() -> None:
    # H = 2 bits = 1.386294 nats: T = 1.0 · 0.8^(1 / 1.386294) = exp(0.721348 · ln 0.8) = 0.851323
    assert edt_temperature(2.0, CFG) == pytest.approx(0.851323, abs=1e-6)
    cfg = SamplerConfig(edt_temperature=0.7, edt_base=0.5, edt_theta=2.0)
    # H = 4 bits = 2.7726 nats: T = 0.7 · 0.5^(2 / 2.7726) = 0.7 · 0.60653 = 0.42457
    assert edt_temperature(4.0, cfg) == pytest.approx(0.42457, abs=1e-5)
    assert edt_temperature(0.0, CFG) == 0.0  # certain: argmax
    assert edt_temperature(1e-300, CFG) == 0.0  # N^(huge) underflows to 0, no error
    assert edt_temperature(0.0, SamplerConfig(edt_base=1.0)) == 1.0
    assert edt_temperature(3.0, SamplerConfig(edt_theta=0.0, edt_temperature=0.9)) == 0.9
    temps = [edt_temperature(h, CFG) for h in (0.5, 1, 2, 4, 8, 16)]
    assert temps == sorted(temps) and temps[-1] < 1.0  # hotter as H grows, never above T0


def test_edt_sampler_draws_at_its_temperature() -> None:
    sampler = make_sampler("edt", CFG)
    d = sampler(mx.array(LOGITS), M, mx.random.key(2), clarify_left=0)
    T = edt_temperature(M.entropy, CFG)
    assert d.params == SamplingParams(T, 0, 1.0, 0.0) and d.strategy == "edt"
    assert d.token.item() == sample(mx.array(LOGITS), d.params, mx.random.key(2)).item()
    keys = mx.random.split(mx.random.key(5), N_DRAWS)
    counts = np.bincount(
        np.array(mx.vmap(lambda k: sample(mx.array(LOGITS), d.params, k))(keys)), minlength=64
    )
    assert chi2_pvalue(counts, truncated_then_scaled(LOGITS, d.params)) > 1e-3
    certain = Metrics(0.0, 0.0, 2.0, 0.5, 0.1, 3.0)
    assert sampler(mx.array(LOGITS), certain, mx.random.key(2), clarify_left=0).token.item() == int(
        np.argmax(LOGITS)
    )


# ── dynatemp ──────────────────────────────────────────────────────────────────────────────────


def test_dynatemp_temperature_by_hand() -> None:
    lp = np.array([math.log(0.5), math.log(0.25), math.log(0.25), -np.inf])  # N = 3 left
    # H = 1.5 ln 2 = 1.03972 nats, ln 3 = 1.09861: H / ln N = 0.946395; lo 0.3, hi 1.3
    assert dynatemp_temperature(lp, CFG) == pytest.approx(0.3 + 0.946395, abs=1e-5)
    squared = SamplerConfig(dynatemp_exponent=2.0)
    assert dynatemp_temperature(lp, squared) == pytest.approx(0.3 + 0.946395**2, abs=1e-5)
    wide = SamplerConfig(dynatemp_temperature=0.4, dynatemp_range=1.0)  # lo = max(0, −0.6) = 0
    assert dynatemp_temperature(lp, wide) == pytest.approx(1.4 * 0.946395, abs=1e-5)
    assert dynatemp_temperature(np.log([0.25] * 4), CFG) == pytest.approx(1.3)  # uniform: hi
    assert dynatemp_temperature(np.array([0.0, -np.inf]), CFG) == 0.8  # one candidate: T0
    assert dynatemp_temperature(lp, SamplerConfig(dynatemp_range=0.0)) == 0.8  # off: plain T0


def test_dynatemp_draws_exactly_and_fit() -> None:
    cfg = SamplerConfig(dynatemp_top_k=20, dynatemp_top_p=0.9, dynatemp_min_p=0.02)
    sampler = make_sampler("dynatemp", cfg)
    logits = mx.array(LOGITS)
    d = sampler(logits, M, mx.random.key(4), clarify_left=0)
    truncate = SamplingParams(1.0, 20, 0.9, 0.02)
    kept = expected_probs(LOGITS, truncate)
    x = np.log(kept[kept > 0])
    H = -np.sum(kept[kept > 0] * x)
    T = 0.3 + 1.0 * H / math.log(x.size)  # written out from the llama.cpp formula
    assert d.params.temperature == pytest.approx(T, rel=1e-5)
    assert (d.params.top_k, d.params.top_p, d.params.min_p) == (20, 0.9, 0.02)
    assert d.strategy == "dynatemp"
    lp, ids = candidates(logits, truncate)
    assert d.token.item() == _draw(lp / d.params.temperature, ids, mx.random.key(4)).item()
    keys = mx.random.split(mx.random.key(8), N_DRAWS)
    counts = np.bincount(
        np.array(mx.vmap(lambda k: _draw(lp / d.params.temperature, ids, k))(keys)), minlength=64
    )
    probs = truncated_then_scaled(LOGITS, d.params)
    assert counts[probs == 0].sum() == 0 and chi2_pvalue(counts, probs) > 1e-3


def test_dynatemp_at_zero_temperature_takes_the_top() -> None:
    cfg = SamplerConfig(dynatemp_temperature=0.0, dynatemp_range=0.0)
    d = make_sampler("dynatemp", cfg)(mx.array(LOGITS), M, mx.random.key(1), clarify_left=0)
    assert d.params.temperature == 0.0 and d.token.item() == int(np.argmax(LOGITS))


# ── config ────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"minp_min_p": 1.5}, "minp_min_p=1.5"),
        ({"edt_base": 0.0}, r"edt_base=0\.0 .*\(0, 1\]"),
        ({"edt_base": 1.2}, "edt_base=1.2"),
        ({"edt_theta": -1.0}, "edt_theta=-1.0"),
        ({"dynatemp_range": -0.1}, "dynatemp_range"),
        ({"dynatemp_top_k": 2.5}, "must be an integer"),
        ({"dslider_outlier_topk": 0}, "dslider_outlier_topk=0"),
    ],
)
def test_rival_fields_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kwargs)


def test_rival_fields_take_overrides() -> None:
    cfg = CFG.with_overrides({"minp_min_p": "0.2", "edt_theta": "1.5", "dynatemp_top_k": "0"})
    assert (cfg.minp_min_p, cfg.edt_theta, cfg.dynatemp_top_k) == (0.2, 1.5, 0)


# ── ablation ──────────────────────────────────────────────────────────────────────────────────


def test_entropix_ablation_takes_the_argmax_and_keeps_the_name() -> None:
    from entropix_mlx.engine.sampler import ARGMAX, EntropixSampler

    logits = mx.array(LOGITS)
    ablated = EntropixSampler(CFG, (1, 2), frozenset({"adaptive", "clarify"}))
    d = ablated(logits, M, mx.random.key(0), clarify_left=1)  # M is MID → adaptive
    assert (d.strategy, d.params, d.token.item()) == ("adaptive", ARGMAX, int(np.argmax(LOGITS)))
    hot = Metrics(6.0, 0.01, 1.0, 0.1, 0.1, 1.0)  # HELV: no insertion when ablated
    d = ablated(logits, hot, mx.random.key(0), clarify_left=1)
    assert d.inserted == () and d.strategy == "clarify" and d.token.item() == int(np.argmax(LOGITS))
    explore = Metrics(2.0, 6.0, 2.5, 0.4, 0.3, 4.0)  # LEHV: not ablated, samples as usual
    assert ablated(logits, explore, mx.random.key(0), clarify_left=1).params.temperature > 0
    with pytest.raises(ValueError, match="'greedy' is not one of"):
        EntropixSampler(CFG, (), frozenset({"greedy"}))
