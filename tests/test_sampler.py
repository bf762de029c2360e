"""sampler.py: strategy table and formulas, exact draws (χ²), filters, adaptive keys, config."""

from __future__ import annotations

import inspect
import math
from dataclasses import fields
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from entropix_mlx.engine.config import SamplerConfig, load_profile
from entropix_mlx.engine.metrics import AttentionStats, Metrics, metrics_vector
from entropix_mlx.engine.sampler import (
    ARGMAX,
    Decision,
    SamplingParams,
    apply_min_p,
    apply_top_k,
    apply_top_p,
    best_of,
    candidates,
    classify,
    draw_candidates,
    make_sampler,
    sample,
    strategy_params,
)

CFG = SamplerConfig()
M = Metrics(
    entropy=2.0,
    varentropy=1.5,
    attn_entropy=2.5,
    attn_varentropy=0.4,
    agreement=0.3,
    interaction_strength=4.0,
)


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Goodness of fit over the cells expecting ≥ 5 draws (Wilson–Hilferty tail, fine at df ≥ 3)."""
    n = counts.sum()
    cells = probs * n >= 5
    rest = ~cells & (probs > 0)
    obs = np.append(counts[cells], counts[rest].sum())
    exp = np.append(probs[cells] * n, probs[rest].sum() * n)
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat, df = float(((obs - exp) ** 2 / exp).sum()), len(exp) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def expected_probs(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """ENTROPIX.md §3 in float64 NumPy, written directly from the definitions."""
    x = logits.astype(np.float64) / p.temperature
    order = np.argsort(-x, kind="stable")
    keep = np.zeros(len(x), bool)
    keep[order[: p.top_k] if p.top_k > 0 else order] = True
    q = np.where(keep, np.exp(x - x.max()), 0.0)
    q /= q.sum()
    if p.top_p < 1:
        mass_before = np.cumsum(q[order]) - q[order]  # of the more likely tokens
        keep[order[mass_before >= p.top_p]] = False
    keep &= q >= p.min_p * q.max()
    q = np.where(keep, q, 0.0)
    return q / q.sum()


def draw_many(logits: mx.array, params: SamplingParams, n: int, seed: int) -> np.ndarray:
    """n draws of `sample`, each with its own split key, vectorised over the keys."""
    keys = mx.random.split(mx.random.key(seed), n)
    tokens = mx.vmap(lambda k: sample(logits, params, k))(keys)
    return np.bincount(np.array(tokens), minlength=logits.shape[-1])


LOGITS = np.random.default_rng(0).normal(size=64).astype(np.float32) * 2.0


# --- 1. strategy table and formulas ---------------------------------------------------------


@pytest.mark.parametrize(
    "h, v, quadrant, strategy",
    [
        (0.05, 0.05, "LELV", "argmax"),
        (0.1, 0.05, "MID", "adaptive"),  # H == low_ent is not < low_ent
        (0.05, 0.1, "MID", "adaptive"),
        (5.01, 0.05, "HELV", "clarify"),
        (5.0, 0.05, "MID", "adaptive"),  # H == high_ent is not > high_ent
        (5.01, 0.1, "MID", "adaptive"),
        (4.99, 5.01, "LEHV", "explore"),
        (3.5, 5.0, "MID", "adaptive"),  # V == high_vent is not > high_vent
        (5.0, 5.01, "HEHV", "resample"),  # not LEHV (H == high_ent), then H > med_ent
        (3.5, 6.0, "LEHV", "explore"),  # first match wins: LEHV before HEHV
        (9.0, 40.0, "HEHV", "resample"),
    ],
)
def test_classify_table_and_boundaries(h: float, v: float, quadrant: str, strategy: str) -> None:
    assert classify(h, v, CFG) == (quadrant, strategy)


def test_med_ent_boundary_with_a_low_high_ent() -> None:
    cfg = SamplerConfig(high_ent=2.0)
    assert classify(3.0, 6.0, cfg) == ("MID", "adaptive")  # H == med_ent is not > med_ent
    assert classify(3.01, 6.0, cfg) == ("HEHV", "resample")


def _onehot_like(n: int, top: float) -> np.ndarray:
    """Token 0 has probability `top`; the remaining mass is spread evenly over n − 1 tokens."""
    x = np.full(n, math.log((1 - top) / (n - 1)), np.float32)
    x[0] = math.log(top)
    return x


SYNTHETIC = {  # logits placed in each quadrant (H, V in bits, bits²)
    "LELV": np.array([30.0] + [0.0] * 999, np.float32),  # H ≈ 0, V ≈ 0
    "HELV": np.zeros(1000, np.float32),  # H = log2 1000, V = 0
    "LEHV": _onehot_like(100_000, 0.9),  # H ≈ 2.1, V ≈ 35
    "HEHV": _onehot_like(100_000, 0.5),  # H ≈ 9.3, V ≈ 69
    "MID": np.zeros(4, np.float32),  # H = 2, V = 0
}
STATS = AttentionStats(
    entropy=mx.array([[[2.0, 3.0], [2.5, 2.5]]]),
    agreement=mx.array([[0.2, 0.4]]),
    interaction=mx.array([[3.0, 5.0]]),
)


@pytest.mark.parametrize("quadrant", list(SYNTHETIC))
def test_synthetic_logits_select_their_strategy(quadrant: str) -> None:
    logits = mx.array(SYNTHETIC[quadrant])[None]
    m = Metrics.from_values(metrics_vector(logits, STATS).tolist()[0])
    sampler = make_sampler("entropix", CFG, clarify_ids=(2564,))
    d = sampler(logits, m, mx.random.key(0), clarify_left=1)
    strategy = {"LELV": "argmax", "HELV": "clarify", "LEHV": "explore", "HEHV": "resample"}
    assert (d.quadrant, d.strategy) == (quadrant, strategy.get(quadrant, "adaptive"))
    assert d.params == strategy_params(d.strategy, m, CFG)
    if quadrant == "HELV":
        assert d.token is None and d.inserted == (2564,)
    else:
        assert d.inserted == () and d.token.dtype == mx.int32 and d.token.shape == ()
    if quadrant == "LELV":
        assert d.token.item() == 0


def test_params_argmax_and_clarify() -> None:
    assert strategy_params("argmax", M, CFG) == SamplingParams(0.0, 0, 1.0, 0.0)
    # T = min(1.5, 0.666·(1.3 + 0.2·2.5)) = 0.666·1.8
    assert strategy_params("clarify", M, CFG) == SamplingParams(0.666 * 1.8, 27, 0.9, 0.03)
    hot = Metrics(2.0, 1.5, 10.0, 0.4, 0.3, 4.0)  # 0.666·3.3 = 2.198 → capped at 1.5
    assert strategy_params("clarify", hot, CFG).temperature == 1.5


def test_params_explore() -> None:
    # T = min(1.5, 0.666·(1.2 + 0.3·4)) = min(1.5, 1.5984); k = max(5, int(27·1.35 = 36.45))
    assert strategy_params("explore", M, CFG) == SamplingParams(1.5, 36, 0.9, 0.03)
    calm = Metrics(2.0, 6.0, 2.5, 0.4, 1.0, 1.0)  # T = 0.666·1.5; k = int(27·1.0)
    assert strategy_params("explore", calm, CFG) == SamplingParams(0.666 * 1.5, 27, 0.9, 0.03)
    small_k = SamplerConfig(top_k=3)  # int(3·1.35 = 4.05) = 4 → floor 5
    assert strategy_params("explore", M, small_k).top_k == 5


def test_params_resample() -> None:
    # T = max(2.0, 0.666·(2 + 0.5·0.4) = 1.4652); top_p = max(0.5, 0.9 − 0.2·2.5 = 0.4)
    assert strategy_params("resample", M, CFG) == SamplingParams(2.0, 27, 0.5, 0.03)
    lost = Metrics(6.0, 9.0, 1.0, 4.0, 0.3, 4.0)  # T = 0.666·4 = 2.664; top_p = 0.9 − 0.2 = 0.7
    p = strategy_params("resample", lost, CFG)
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == pytest.approx((2.664, 27, 0.7, 0.03))


def test_params_adaptive() -> None:
    # Ul = 3.5, Ua = 2.9: T = 0.666·(1 + 1.05 + 0.58 − 0.06); top_p = 0.9·1.04;
    # top_k = round(27·2.14 = 57.78); min_p = clip(0.03·(1 − 1.75), 0.01, 0.5)
    p = strategy_params("adaptive", M, CFG)
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == pytest.approx((1.71162, 58, 0.936, 0.01))
    # Ul = 0.8, Ua = 3.2: T = 0.666·1.78; top_p = 0.9·1.3 → 1; top_k = round(27·6.9) → 100
    m = Metrics(0.5, 0.3, 0.2, 3.0, 0.5, 20.0)
    p = strategy_params("adaptive", m, CFG)
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == pytest.approx((1.18548, 100, 1.0, 0.018))
    assert isinstance(p.top_k, int)
    with pytest.raises(ValueError, match="'sample'.*argmax"):
        strategy_params("sample", M, CFG)


# --- 2. the base sampler is exact ---------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(0.8, 10, 0.9, 0.05),  # top-k first: argpartition path
        SamplingParams(1.3, 0, 0.8, 0.02),  # full-vocabulary path
        SamplingParams(1.0, 0, 1.0, 0.0),  # no filter at all
    ],
)
def test_draws_fit_the_distribution(params: SamplingParams) -> None:
    probs = expected_probs(LOGITS, params)
    # Fixed seed: over 40 seeds these p-values looked uniform (mean 0.5); 1M draws also pass.
    counts = draw_many(mx.array(LOGITS), params, 24_000, seed=3)
    assert counts[probs == 0].sum() == 0  # filtered tokens are never drawn
    assert chi2_pvalue(counts, probs) > 1e-3


def test_chi2_rejects_uniform_noise_argmax() -> None:
    """The reference port's argmax(logits + uniform noise) favours the top token; χ² sees it."""
    params = SamplingParams(1.0, 0, 1.0, 0.0)
    keys = mx.random.split(mx.random.key(2), 24_000)
    logits = mx.array(LOGITS)
    noisy = mx.vmap(lambda k: mx.argmax(logits + mx.random.uniform(shape=logits.shape, key=k)))
    counts = np.bincount(np.array(noisy(keys)), minlength=len(LOGITS))
    assert chi2_pvalue(counts, expected_probs(LOGITS, params)) < 1e-6


def test_top_k_first_equals_the_full_vocabulary_chain() -> None:
    logits = mx.array(LOGITS)[None].astype(mx.bfloat16)
    params = SamplingParams(0.7, 12, 0.85, 0.04)
    fast, ids = candidates(logits, params)
    assert ids is not None and fast.shape == (1, 12)
    dense = mx.put_along_axis(mx.full((1, 64), -math.inf), ids, fast, axis=-1)  # back to (1, V)
    full, no_ids = candidates(apply_top_k(logits, 12), SamplingParams(0.7, 0, 0.85, 0.04))
    assert no_ids is None
    np.testing.assert_allclose(
        np.array(mx.softmax(dense, axis=-1)), np.array(mx.softmax(full, axis=-1)), atol=1e-7
    )


def test_keys_decide_the_draw_and_no_key_is_defaulted() -> None:
    logits, params = mx.array(LOGITS), SamplingParams(1.5, 0, 1.0, 0.0)
    assert (
        sample(logits, params, mx.random.key(5)).item()
        == sample(logits, params, mx.random.key(5)).item()
    )
    key, tokens = mx.random.key(6), set()
    for _ in range(30):  # per-step keys split from one seed, as the generation loop does
        key, step = mx.random.split(key)
        tokens.add(sample(logits, params, step).item())
    assert len(tokens) > 5  # the reference reused one key: the same token every step
    for fn in (sample, draw_candidates, best_of, make_sampler("entropix", CFG).__call__):
        assert inspect.signature(fn).parameters["key"].default is inspect.Parameter.empty


def test_temperature_zero_is_argmax() -> None:
    logits = mx.array(LOGITS)
    assert sample(logits, SamplingParams(0.0, 5, 0.5, 0.2), mx.random.key(0)).item() == int(
        np.argmax(LOGITS)
    )


# --- 3. filters on hand-built probability vectors --------------------------------------------

PROBS = np.array([[0.0625, 0.5, 0.125, 0.25, 0.0625], [0.25, 0.0625, 0.0625, 0.125, 0.5]])


def kept(logprobs: mx.array) -> list[list[int]]:
    return [np.flatnonzero(np.isfinite(row)).tolist() for row in np.array(logprobs)]


def test_top_k_keeps_the_k_most_likely() -> None:
    lp = mx.log(mx.array(PROBS))
    assert kept(apply_top_k(lp, 2)) == [[1, 3], [0, 4]]
    assert kept(apply_top_k(lp, 1)) == [[1], [4]]
    assert kept(apply_top_k(lp, 0)) == kept(apply_top_k(lp, 5)) == [[0, 1, 2, 3, 4]] * 2


def test_top_p_keeps_the_most_likely_not_the_least() -> None:
    lp = mx.log(mx.array(PROBS))
    assert kept(apply_top_p(lp, 0.75)) == [[1, 3], [0, 4]]  # 0.5 + 0.25 reaches 0.75
    assert kept(apply_top_p(lp, 0.76)) == [[1, 2, 3], [0, 3, 4]]
    assert kept(apply_top_p(lp, 0.3)) == [[1], [4]]  # the top token alone already reaches p
    assert kept(apply_top_p(lp, 1e-6)) == [[1], [4]]
    assert kept(apply_top_p(lp, 1.0)) == [[0, 1, 2, 3, 4]] * 2
    # Mass is relative to what top-k left: 0.5 / 0.75 = 0.67 < 0.7, so 0.25 is needed too.
    assert kept(apply_top_p(apply_top_k(lp, 2), 0.7)) == [[1, 3], [0, 4]]
    assert kept(apply_top_p(apply_top_k(lp, 2), 0.6)) == [[1], [4]]


def test_min_p_removes_tokens_below_min_p_times_p_max() -> None:
    lp = mx.log(mx.array([[0.04, 0.5, 0.15, 0.01, 0.3]]))
    assert kept(apply_min_p(lp, 0.1)) == [[1, 2, 4]]  # drops p < 0.05 (the reference kept all)
    assert kept(apply_min_p(lp, 0.5)) == [[1, 4]]
    assert kept(apply_min_p(lp, 0.0)) == [[0, 1, 2, 3, 4]]
    out = apply_min_p(lp, 0.1)
    assert out.shape == lp.shape and np.array(out)[0, 1] == np.array(lp)[0, 1]  # mask only


# --- 4. adaptive: independent candidate keys -----------------------------------------------


def test_each_candidate_uses_its_own_split_key() -> None:
    logits, params = mx.array(LOGITS), SamplingParams(1.2, 20, 0.95, 0.01)
    key = mx.random.key(9)
    got = draw_candidates(logits, params, key, 5).tolist()
    assert got == [sample(logits, params, k).item() for k in mx.random.split(key, 5)]


def test_candidates_are_independent_on_a_flat_distribution() -> None:
    logits, params = mx.zeros((50,)), SamplingParams(1.0, 0, 1.0, 0.0)
    keys = mx.random.split(mx.random.key(10), 400)
    draws = np.array(mx.vmap(lambda k: draw_candidates(logits, params, k, 5))(keys))  # (400, 5)
    assert not (draws == draws[:, :1]).all(axis=1).any()  # never all five identical
    pairs = np.mean([(draws[:, i] == draws[:, j]).mean() for i in range(5) for j in range(i)])
    assert pairs < 0.05  # 1/50 if independent; 1 if the key were shared
    assert chi2_pvalue(np.bincount(draws.ravel(), minlength=50), np.full(50, 1 / 50)) > 1e-3


def test_best_of_keeps_the_most_likely_candidate() -> None:
    logits, params = mx.array(LOGITS), SamplingParams(1.5, 30, 1.0, 0.0)
    logp = LOGITS - np.log(np.exp(LOGITS.astype(np.float64)).sum())
    for seed in range(20):
        key = mx.random.key(seed)
        cands = draw_candidates(logits, params, key, 5).tolist()
        chosen = best_of(logits, params, key, 5).item()
        assert chosen in cands and logp[chosen] == max(logp[c] for c in cands)


def test_entropix_decisions_are_reproducible_per_key() -> None:
    sampler = make_sampler("entropix", CFG)
    logits = mx.array(np.random.default_rng(1).normal(size=200).astype(np.float32))
    m = Metrics(2.0, 1.5, 2.5, 0.4, 0.3, 4.0)  # MID → adaptive
    decide = lambda k: sampler(logits, m, mx.random.key(k), clarify_left=1)
    assert decide(3).strategy == "adaptive"
    assert decide(3).token.item() == decide(3).token.item()
    assert len({decide(k).token.item() for k in range(20)}) > 3


# --- samplers ------------------------------------------------------------------------------


def test_make_sampler_kinds() -> None:
    logits = mx.array(LOGITS)[None]  # (1, V) is accepted as well as (V,)
    hot = Metrics(6.0, 0.01, 1.0, 0.1, 0.1, 1.0)  # HELV
    greedy = make_sampler("greedy", CFG)
    d = greedy(logits, hot, mx.random.key(0), clarify_left=1)
    assert greedy.name == "greedy"
    assert (d.token.item(), d.quadrant, d.strategy, d.params) == (
        int(np.argmax(LOGITS)),
        "HELV",
        "greedy",
        ARGMAX,
    )
    params = SamplingParams(0.9, 10, 0.9, 0.0)
    plain = make_sampler("sample", CFG, params=params)
    d = plain(logits, M, mx.random.key(4), clarify_left=1)
    assert (d.quadrant, d.strategy, d.params) == (
        "MID",
        "sample",
        params,
    )
    assert d.token.item() == sample(mx.array(LOGITS), params, mx.random.key(4)).item()
    assert make_sampler("sample", CFG).params == SamplingParams(0.666, 27, 0.9, 0.03)
    assert make_sampler("entropix", CFG).name == "entropix"
    with pytest.raises(ValueError, match="'beam'.*entropix, greedy, sample"):
        make_sampler("beam", CFG)
    with pytest.raises(ValueError, match=r"shape \(2, 64\)"):
        greedy(mx.zeros((2, 64)), M, mx.random.key(0), clarify_left=0)


def test_clarify_inserts_only_while_insertions_are_left() -> None:
    sampler = make_sampler("entropix", CFG, clarify_ids=[1, 2, 3])
    logits, hot = mx.array(LOGITS), Metrics(6.0, 0.01, 1.0, 0.1, 0.1, 1.0)
    first = sampler(logits, hot, mx.random.key(0), clarify_left=1)
    assert isinstance(first, Decision) and first.token is None and first.inserted == (1, 2, 3)
    later = sampler(logits, hot, mx.random.key(0), clarify_left=0)
    assert later.inserted == () and later.strategy == "clarify"
    assert later.params == SamplingParams(0.666 * 1.5, 27, 0.9, 0.03)
    assert later.token.item() == sample(logits, later.params, mx.random.key(0)).item()
    never = make_sampler("entropix", CFG)  # no clarify ids: sample instead
    assert never(logits, hot, mx.random.key(0), clarify_left=1).token is not None
    with pytest.raises(ValueError, match="clarify_ids"):
        make_sampler("entropix", CFG, clarify_ids=[-1])


# --- 5. config, profiles, overrides -------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_p": 1.5}, r"top_p=1\.5 is out of range: valid is \(0, 1\]"),
        ({"top_p": 0.0}, r"top_p=0\.0 .*\(0, 1\]"),
        ({"low_ent": -0.1}, r"low_ent=-0\.1 .*\[0, inf\)"),
        ({"high_ent": math.nan}, r"high_ent=nan"),
        ({"explore_temp_base": math.inf}, r"explore_temp_base=inf .*\(-inf, inf\)"),
        ({"top_k": 2.5}, r"top_k=2\.5 must be an integer"),
        ({"top_k": True}, r"top_k=True must be an integer"),
        ({"temperature": "hot"}, r"temperature='hot' must be a number"),
        ({"n_adaptive_samples": 0}, r"n_adaptive_samples=0 .*\[1, inf\)"),
        ({"clarify_max": -1}, r"clarify_max=-1"),
        ({"adaptive_top_k_min": 50, "adaptive_top_k_max": 10}, "adaptive_top_k_min=50 must not"),
        ({"attention_layers": "first"}, r"attention_layers='first': valid are all, last"),
        ({"clarify_text": 3}, r"clarify_text=3 must be a string"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kwargs)


def test_config_coerces_integers_for_float_fields() -> None:
    cfg = SamplerConfig(high_ent=4, temperature=1)
    assert isinstance(cfg.high_ent, float) and cfg.temperature == 1.0


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1.0}, {"top_k": -1}, {"top_k": 2.0}, {"top_p": 0.0}, {"min_p": 1.5}]
)
def test_sampling_params_validation(kwargs: dict) -> None:
    base = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**{**base, **kwargs})


def test_reference_profile_is_the_defaults_and_complete() -> None:
    import tomllib

    assert load_profile("reference") == SamplerConfig()
    text = (
        Path(__file__).parents[1] / "entropix_mlx" / "engine" / "profiles" / "reference.toml"
    ).read_text()
    names = {f.name for f in fields(SamplerConfig)} - {"profile", "scale"}
    assert set(tomllib.loads(text)) == names  # every field is spelled out (a scale is per model)


def test_profile_from_a_toml_path(tmp_path: Path) -> None:
    path = tmp_path / "smollm2.toml"
    path.write_text('high_ent = 4\nhigh_vent = 7.5\nattention_layers = "last"\n')
    cfg = load_profile(str(path))
    assert (cfg.high_ent, cfg.high_vent, cfg.attention_layers, cfg.profile) == (
        4.0,
        7.5,
        "last",
        "smollm2",
    )
    assert cfg.low_ent == 0.1  # left out: the default
    path.write_text("high_ent = 4\nhigh_entropy = 7.5\n")
    with pytest.raises(ValueError, match=r"smollm2\.toml: unknown sampler setting 'high_entropy'"):
        load_profile(str(path))
    path.write_text("top_p = 2\n")
    with pytest.raises(ValueError, match=r"smollm2\.toml: top_p=2"):
        load_profile(str(path))
    path.write_text("top_p = \n")
    with pytest.raises(ValueError, match=r"smollm2\.toml: not valid TOML"):
        load_profile(str(path))
    with pytest.raises(ValueError, match=r"'nope' is none of: reference, "):
        load_profile("nope")


def test_overrides_parse_to_field_types() -> None:
    cfg = CFG.with_overrides(
        {"high_ent": "4.2", "top_k": " 40", "clarify_text": " hmm", "attention_layers": "last"}
    )
    assert (cfg.high_ent, cfg.top_k, cfg.clarify_text, cfg.attention_layers) == (
        4.2,
        40,
        " hmm",
        "last",
    )
    assert CFG.with_overrides({}) == CFG
    for overrides, message in [
        ({"high_entropy": "4"}, r"unknown sampler setting 'high_entropy'; valid: low_ent"),
        ({"high_ent": "abc"}, r"high_ent='abc' must be a number"),
        ({"top_k": "2.5"}, r"top_k='2.5' must be an integer"),
        ({"top_p": "2"}, r"top_p=2\.0 is out of range"),
    ]:
        with pytest.raises(ValueError, match=message):
            CFG.with_overrides(overrides)
