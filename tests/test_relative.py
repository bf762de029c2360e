"""The relative form (docs/samplers.md): a model's metric scale as quantile knots, and strategy
parameters as ranges the normalised metrics move within. Checked against an independent
computation (numpy's interp over the same knots), as properties over random metrics, through
TOML and the saved-state round trips, and for what the `reference` profile must not change."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropix_mlx.engine.config import SamplerConfig, load_profile
from entropix_mlx.engine.metrics import METRIC_NAMES, Metrics
from entropix_mlx.engine.sampler import RELATIVE_DRIVES, STRATEGIES, strategy_params
from entropix_mlx.engine.scale import LEVELS, SCALE_METRICS, MetricScale
from entropix_mlx.lab.calibrate import Quantiles, calibrate_profile, render_profile_toml
from entropix_mlx.lab.tune import RELATIVE_SPACE, candidates, space_for


def samples(seed: int = 0, n: int = 3000) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {name: rng.gamma(2.0, 1.0 + i, n).tolist() for i, name in enumerate(METRIC_NAMES)}


SCALE = MetricScale.from_samples(samples())
RELATIVE = replace(SamplerConfig(), form="relative", scale=SCALE, temperature=0.5)

metric = st.floats(0.0, 40.0, allow_nan=False)
metrics = st.builds(Metrics, metric, metric, metric, metric, metric, metric)


# ── the scale ─────────────────────────────────────────────────────────────────────────────────


def test_knots_are_the_quantiles_and_normalise_inverts_them() -> None:
    data = samples()
    for name in METRIC_NAMES:
        np.testing.assert_allclose(SCALE.knots[name], np.quantile(data[name], LEVELS), atol=1e-6)
        for q, x in zip(LEVELS, SCALE.knots[name], strict=True):
            assert SCALE.normalise(name, x) == pytest.approx(q, abs=1e-9)
        # between knots: the empirical CDF, to within the knots' spacing
        for x in np.quantile(data[name], [0.15, 0.33, 0.62, 0.97]):
            below = np.mean(np.less(data[name], x))
            assert SCALE.normalise(name, x) == pytest.approx(below, abs=0.02)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SCALE_METRICS), metric, metric)
def test_normalise_is_a_monotone_map_onto_0_1(name: str, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    u, v = SCALE.normalise(name, lo), SCALE.normalise(name, hi)
    assert 0.0 <= u <= v <= 1.0
    xs = SCALE.knots[name]
    assert u == pytest.approx(float(np.interp(lo, xs, LEVELS)), abs=1e-12)  # distinct knots here


def test_a_point_mass_gets_the_middle_of_its_levels() -> None:
    knots = {m: (0.0, 1.0, 2.0) for m in SCALE_METRICS} | {"entropy": (0.0, 0.0, 2.0)}
    scale = MetricScale((0.0, 0.5, 1.0), knots)
    assert scale.normalise("entropy", 0.0) == 0.25
    assert scale.normalise("entropy", 1.0) == 0.75
    assert scale.normalise("entropy", -1.0) == 0.0 and scale.normalise("entropy", 9.0) == 1.0


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"levels": (0.0,)}, "≥ 2 quantile levels"),
        ({"levels": (0.5, 0.2, 1.0)}, "must rise"),
        ({"entropy": (3.0, 2.0, 1.0)}, "must not fall"),
        ({"entropy": (1.0, 2.0)}, "2 knots for 3 levels"),
        ({"entropy": (0.0, float("nan"), 1.0)}, "finite numbers"),
        ({"bogus": (0.0, 1.0, 2.0)}, "unknown bogus"),
        ({"agreement": None}, "missing agreement"),
    ],
)
def test_bad_scales_name_the_field(change: dict, needle: str) -> None:
    table = {"levels": (0.0, 0.5, 1.0)} | {m: (0.0, 1.0, 2.0) for m in SCALE_METRICS} | change
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ValueError, match=needle):
        SamplerConfig(scale=table)


# ── the relative parameters ───────────────────────────────────────────────────────────────────


def expected(name: str, m: Metrics, cfg: SamplerConfig) -> float:
    """The documented formula, computed independently: np.interp quantile levels, mean, lerp."""
    values = {
        **dataclasses.asdict(m),
        "logit_unc": m.entropy + m.varentropy,
        "attn_unc": m.attn_entropy + m.attn_varentropy,
    }
    levels = []
    for drive in RELATIVE_DRIVES[name]:
        key = drive.removeprefix("1-")
        u = float(np.interp(values[key], cfg.scale.knots[key], cfg.scale.levels))
        levels.append(1 - u if drive.startswith("1-") else u)
    start, end = getattr(cfg, f"rel_{name}_from"), getattr(cfg, f"rel_{name}_to")
    return start + (end - start) * float(np.mean(levels))


@settings(max_examples=200, deadline=None)
@given(metrics)
def test_parameters_follow_the_documented_formula(m: Metrics) -> None:
    cfg, T0 = RELATIVE, RELATIVE.temperature
    a = strategy_params("adaptive", m, cfg)
    assert a.temperature == pytest.approx(T0 * expected("adaptive_temp", m, cfg))
    assert a.top_k == round(expected("adaptive_top_k", m, cfg))
    assert a.top_p == pytest.approx(expected("adaptive_top_p", m, cfg))
    assert a.min_p == pytest.approx(expected("adaptive_min_p", m, cfg))
    e = strategy_params("explore", m, cfg)
    assert e.temperature == pytest.approx(T0 * expected("explore_temp", m, cfg))
    assert e.top_k == round(expected("explore_top_k", m, cfg))
    r = strategy_params("resample", m, cfg)
    assert r.temperature == pytest.approx(T0 * expected("resample_temp", m, cfg))
    assert r.top_p == pytest.approx(expected("resample_top_p", m, cfg))
    c = strategy_params("clarify", m, cfg)
    assert c.temperature == pytest.approx(T0 * expected("clarify_temp", m, cfg))
    assert (c.top_k, c.top_p, c.min_p) == (cfg.top_k, cfg.top_p, cfg.min_p)
    assert strategy_params("argmax", m, cfg).temperature == 0.0


@settings(max_examples=200, deadline=None)
@given(metrics, st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_every_parameter_stays_inside_its_range(m: Metrics, t_from: float, t_to: float) -> None:
    cfg = replace(RELATIVE, rel_adaptive_temp_from=t_from, rel_adaptive_temp_to=t_to)
    t = strategy_params("adaptive", m, cfg).temperature / cfg.temperature
    assert min(t_from, t_to) - 1e-12 <= t <= max(t_from, t_to) + 1e-12
    for strategy, name, attr in [
        ("explore", "explore_top_k", "top_k"),
        ("resample", "resample_top_p", "top_p"),
        ("adaptive", "adaptive_min_p", "min_p"),
    ]:
        value = getattr(strategy_params(strategy, m, cfg), attr)
        ends = sorted((getattr(cfg, f"rel_{name}_from"), getattr(cfg, f"rel_{name}_to")))
        assert ends[0] <= value <= ends[1], name


def test_the_ends_of_the_model_scale_give_the_ends_of_the_ranges() -> None:
    low = {m: SCALE.knots[m][0] for m in SCALE_METRICS}
    high = {m: SCALE.knots[m][-1] for m in SCALE_METRICS}
    certain = Metrics(**{m: low[m] for m in METRIC_NAMES} | {"agreement": high["agreement"]})
    unsure = Metrics(**{m: high[m] for m in METRIC_NAMES} | {"agreement": low["agreement"]})
    cfg, T0 = RELATIVE, RELATIVE.temperature
    assert strategy_params("adaptive", certain, cfg).min_p == cfg.rel_adaptive_min_p_from
    assert strategy_params("adaptive", unsure, cfg).min_p == cfg.rel_adaptive_min_p_to
    assert strategy_params("explore", certain, cfg).top_k == cfg.rel_explore_top_k_from
    assert strategy_params("explore", unsure, cfg).top_k == cfg.rel_explore_top_k_to
    assert strategy_params("resample", unsure, cfg).temperature == T0 * cfg.rel_resample_temp_to
    # T0 = 0 is greedy in the relative form as in the reference's
    for strategy in STRATEGIES:
        assert strategy_params(strategy, unsure, replace(cfg, temperature=0.0)).temperature == 0.0


def test_the_reference_profile_ignores_the_relative_fields() -> None:
    ref = load_profile("reference")
    assert ref == SamplerConfig() and ref.form == "reference" and ref.scale is None
    changed = replace(ref, scale=SCALE, rel_adaptive_temp_to=9.0, rel_explore_top_k_to=3)
    m = Metrics(2.0, 5.0, 2.4, 1.0, 0.01, 3.8)
    for strategy in STRATEGIES:  # the scale alone (a calibrated profile) changes nothing
        assert strategy_params(strategy, m, changed) == strategy_params(strategy, m, ref)


def test_relative_form_needs_a_scale_and_a_known_form() -> None:
    with pytest.raises(ValueError, match=r"form='relative' needs the model's \[scale\]"):
        SamplerConfig(form="relative")
    with pytest.raises(ValueError, match="form='absolute': valid are reference, relative"):
        SamplerConfig(form="absolute")
    with pytest.raises(ValueError, match="rel_adaptive_top_p_to=1.5 is out of range"):
        replace(RELATIVE, rel_adaptive_top_p_to=1.5)
    with pytest.raises(ValueError, match="scale is a table"):
        RELATIVE.with_overrides({"scale": "1"})
    with pytest.raises(ValueError, match="needs the model's"):  # --set on a profile with no scale
        SamplerConfig().with_overrides({"form": "relative"})
    assert load_profile("smollm2").with_overrides({"form": "relative"}).form == "relative"


# ── files and saved state ─────────────────────────────────────────────────────────────────────


def test_a_calibrated_relative_profile_round_trips(tmp_path: Path) -> None:
    cfg = calibrate_profile(samples(1), Quantiles(), SamplerConfig(), form="relative")
    path = tmp_path / "rel.toml"
    path.write_text(render_profile_toml(cfg, "header"))
    loaded = load_profile(str(path))
    assert loaded == replace(cfg, profile="rel") and loaded.form == "relative"
    # chat sessions and replayed runs save the config with asdict and rebuild it
    rebuilt = SamplerConfig(**dataclasses.asdict(loaded))
    assert rebuilt == loaded and hash(rebuilt) == hash(loaded)


def test_the_shipped_smollm2_scale_drives_a_relative_profile(tmp_path: Path) -> None:
    cfg = replace(load_profile("smollm2"), form="relative")
    m = Metrics(2.02, 5.72, 2.41, 1.03, 0.0102, 3.82)  # about the medians of the calibration
    t = strategy_params("adaptive", m, cfg).temperature / cfg.temperature
    middle = (cfg.rel_adaptive_temp_from + cfg.rel_adaptive_temp_to) / 2
    assert t == pytest.approx(middle, abs=0.1 * cfg.rel_adaptive_temp_to)


# ── tune ──────────────────────────────────────────────────────────────────────────────────────


def test_tune_searches_the_relative_ranges_and_keeps_a_greedy_point() -> None:
    assert space_for(RELATIVE) == RELATIVE_SPACE and space_for(SamplerConfig()) != RELATIVE_SPACE
    pool = candidates(RELATIVE, RELATIVE_SPACE, 6, seed=3)
    greedy = pool[1].config
    assert pool[1].label == "greedy-like" and greedy.clarify_max == 0
    m = Metrics(5.0, 20.0, 3.0, 1.5, 0.005, 5.0)
    for strategy in STRATEGIES:
        assert strategy_params(strategy, m, greedy).temperature == 0.0
    for c in pool[2:]:
        assert c.config.form == "relative" and c.config.scale == SCALE
