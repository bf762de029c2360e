"""`entropix calibrate`: thresholds at quantiles of synthetic distributions, profiles that load,
the shipped SmolLM2 profile, `--profile auto`, and the command end to end on a tiny random model."""

from __future__ import annotations

import json
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from checkpoints import make_tiny_checkpoint
from conftest import run_main

from entropix_mlx.engine.batch import default_batch_size
from entropix_mlx.engine.config import SamplerConfig, load_profile, profile_for_model
from entropix_mlx.engine.metrics import METRIC_NAMES
from entropix_mlx.errors import EntropixError
from entropix_mlx.lab.calibrate import (
    THRESHOLDS,
    Quantiles,
    calibrate_profile,
    calibration_header,
    collect_samples,
    load_prompts,
    quadrant_mix,
    render_profile_toml,
)
from entropix_mlx.model.load import load

PACKAGE = Path(__file__).resolve().parents[1] / "entropix_mlx"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1"


def synthetic(n: int = 4001, seed: int = 0) -> dict[str, list[float]]:
    """Skewed, SmolLM2-like shapes: many near-zero entropies, a long varentropy tail."""
    rng = np.random.default_rng(seed)
    samples = {name: rng.uniform(0.0, 1.0, n) for name in METRIC_NAMES}
    samples["entropy"] = rng.gamma(1.5, 1.4, n)
    samples["varentropy"] = rng.lognormal(1.2, 0.9, n)
    return {k: v.tolist() for k, v in samples.items()}


def header(samples: dict[str, list[float]], q: Quantiles = Quantiles()) -> str:
    return calibration_header(
        model="m",
        prompts_file="p.jsonl",
        prompts=3,
        max_tokens=8,
        quantiles=q,
        base=SamplerConfig(),
        date="2024-01-01",
        samples=samples,
    )


# ── the pure part ─────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("q", [Quantiles(), Quantiles(0.1, 0.5, 0.9), Quantiles(0.05, 0.3, 0.99)])
def test_thresholds_sit_at_the_stated_quantiles(q: Quantiles) -> None:
    samples = synthetic()
    cfg = calibrate_profile(samples, q, SamplerConfig())
    h, v = np.array(samples["entropy"]), np.array(samples["varentropy"])
    assert [cfg.low_ent, cfg.med_ent, cfg.high_ent] == pytest.approx(
        np.quantile(h, [q.low, q.med, q.high]), rel=1e-12
    )
    assert [cfg.low_vent, cfg.high_vent] == pytest.approx(
        np.quantile(v, [q.low, q.high]), rel=1e-12
    )
    # Independent of numpy: the stated fraction of the tokens lies below each threshold.
    for values, threshold, frac in (
        (h, cfg.low_ent, q.low),
        (h, cfg.med_ent, q.med),
        (h, cfg.high_ent, q.high),
        (v, cfg.low_vent, q.low),
        (v, cfg.high_vent, q.high),
    ):
        assert abs(np.mean(values < threshold) - frac) <= 1 / len(values)


def test_quantiles_of_an_even_grid_are_exact() -> None:
    grid = [float(x) for x in range(101)]  # 0, 1, …, 100 in shuffled order
    grid = grid[::2] + grid[1::2]
    samples = {name: grid for name in METRIC_NAMES} | {"varentropy": [x / 10 for x in grid]}
    cfg = calibrate_profile(samples, Quantiles(), SamplerConfig())
    assert (cfg.low_ent, cfg.med_ent, cfg.high_ent) == (20.0, 60.0, 85.0)
    assert (cfg.low_vent, cfg.high_vent) == pytest.approx((2.0, 8.5))


def test_only_the_thresholds_and_the_scale_change() -> None:
    base = SamplerConfig(temperature=0.5, top_k=11, clarify_text=" hm", profile="mine")
    samples = synthetic()
    cfg = calibrate_profile(samples, Quantiles(), base)
    for f in fields(SamplerConfig):
        if f.name not in (*THRESHOLDS, "scale"):
            assert getattr(cfg, f.name) == getattr(base, f.name), f.name
    assert cfg.scale is not None and base.scale is None
    for name in METRIC_NAMES:  # knots: numpy's quantiles of each metric at the stated levels
        expected = np.quantile(samples[name], cfg.scale.levels)
        np.testing.assert_allclose(cfg.scale.knots[name], expected, atol=1e-6)
    unc = np.add(samples["entropy"], samples["varentropy"])
    np.testing.assert_allclose(
        cfg.scale.knots["logit_unc"], np.quantile(unc, cfg.scale.levels), atol=1e-6
    )


def test_no_tokens_or_non_finite_values_are_errors() -> None:
    with pytest.raises(ValueError, match="no entropy values"):
        calibrate_profile({"entropy": [], "varentropy": []}, Quantiles(), SamplerConfig())
    with pytest.raises(ValueError, match="varentropy has non-finite"):
        calibrate_profile(
            {"entropy": [1.0], "varentropy": [float("nan")]}, Quantiles(), SamplerConfig()
        )


def test_quantiles_parse() -> None:
    assert Quantiles.parse("low=0.2,med=0.6,high=0.85") == Quantiles()
    assert Quantiles.parse(" high = 0.9 ") == Quantiles(0.2, 0.6, 0.9)
    assert Quantiles.parse("") == Quantiles()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("low=20", "fraction in (0, 1)"),
        ("low=0.7", "must rise"),
        ("low=0", "fraction"),
        ("mid=0.5", "expected low=F"),
        ("low", "expected low=F"),
        ("low=x", "'x' is not a number"),
        ("high=1", "fraction"),
    ],
)
def test_bad_quantiles(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        Quantiles.parse(text)


def test_written_profile_loads_back_equal(tmp_path: Path) -> None:
    samples = synthetic()
    cfg = calibrate_profile(
        samples, Quantiles(), replace(SamplerConfig(), clarify_text=' "so"\\ …')
    )
    text = render_profile_toml(cfg, header(samples), models=["m.Q4"])
    path = tmp_path / "mine.toml"
    path.write_text(text)
    assert load_profile(str(path)) == replace(cfg, profile="mine")
    assert tomllib.loads(text)["models"] == ["m.Q4"]
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any(
        "Sampler profile calibrated for m by `entropix calibrate` on 2024-01-01" in c
        for c in comments
    )
    for name in METRIC_NAMES:  # every metric's distribution is on record, attention ones included
        assert any(c.split()[1:2] == [name] for c in comments), name
    assert any("low=0.2 med=0.6 high=0.85" in c for c in comments)


def test_quadrant_mix_follows_the_thresholds() -> None:
    samples = synthetic()
    cfg = calibrate_profile(samples, Quantiles(), SamplerConfig())
    mix = quadrant_mix(samples, cfg)
    assert sum(mix.values()) == len(samples["entropy"])
    lelv = np.mean(
        (np.array(samples["entropy"]) < cfg.low_ent)
        & (np.array(samples["varentropy"]) < cfg.low_vent)
    )
    assert mix.get("LELV", 0) / len(samples["entropy"]) == pytest.approx(lelv)


def test_load_prompts(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("first prompt\n\n  second  \n")
    assert [p["prompt"] for p in load_prompts(tmp_path / "p.txt")] == ["first prompt", "second"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b", "system": "s"}\n')
    assert load_prompts(tmp_path / "p.jsonl")[1] == {"prompt": "b", "system": "s"}
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(EntropixError, match=r"bad\.jsonl:2: not JSON"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(EntropixError, match=r"bad\.jsonl:2: expected"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(EntropixError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")


# ── profiles by name and `auto` ───────────────────────────────────────────────────────────────


def test_shipped_smollm2_profile() -> None:
    text = (PACKAGE / "engine" / "profiles" / "smollm2.toml").read_text()
    cfg = load_profile("smollm2")
    assert cfg.profile == "smollm2"
    assert 0 < cfg.low_ent < cfg.med_ent < cfg.high_ent and 0 < cfg.low_vent < cfg.high_vent
    for f in fields(SamplerConfig):  # all but the thresholds and scale: the reference profile's
        if f.name not in (*THRESHOLDS, "profile", "scale"):
            assert getattr(cfg, f.name) == getattr(SamplerConfig(), f.name), f.name
    assert cfg.scale is not None and cfg.form == "reference"  # the model's scale, on record
    assert cfg.scale.knots["entropy"][6] == pytest.approx(2.02, abs=0.01)  # the header's median
    prompts = PACKAGE / "lab" / "data" / "calibration_prompts.jsonl"
    n = len(load_prompts(prompts))
    assert "entropix_mlx/lab/data/calibration_prompts.jsonl" in text and f"({n} prompts," in text
    assert f"calibrated for {SMOLLM2} by `entropix calibrate`" in text
    assert "models" not in tomllib.loads(text)  # `auto` picks the tuned one


def test_shipped_tuned_profile_says_how_it_was_made() -> None:
    text = (PACKAGE / "engine" / "profiles" / "smollm2-tuned.toml").read_text()
    assert tomllib.loads(text)["models"] == [SMOLLM2]
    assert f"tuned for {SMOLLM2} by `entropix tune`" in text
    assert "Dev set: entropix_mlx/lab/data/dev.jsonl" in text and "Search space" in text
    cfg = load_profile("smollm2-tuned")
    assert cfg.profile == "smollm2-tuned" and cfg.temperature < SamplerConfig().temperature


def test_shipped_relative_profile_is_tuned_on_the_models_own_scale() -> None:
    text = (PACKAGE / "engine" / "profiles" / "smollm2-relative.toml").read_text()
    assert "models" not in tomllib.loads(text)  # `auto` keeps picking smollm2-tuned
    assert f"tuned for {SMOLLM2} by `entropix tune`" in text and "Held-out (300 questions" in text
    cfg, calibrated = load_profile("smollm2-relative"), load_profile("smollm2")
    assert cfg.form == "relative" and cfg.scale == calibrated.scale
    assert (cfg.low_ent, cfg.high_vent) == (calibrated.low_ent, calibrated.high_vent)
    hottest = max(cfg.rel_adaptive_temp_to, cfg.rel_explore_temp_to, cfg.rel_resample_temp_to)
    assert cfg.temperature * hottest < 0.5  # cool everywhere, as the reference form's tuning


def test_auto_picks_the_tuned_profile_of_the_model() -> None:
    for name in (SMOLLM2, SMOLLM2 + ".gguf", SMOLLM2.lower()):
        assert profile_for_model(name) == "smollm2-tuned"
        assert load_profile("auto", model=name).profile == "smollm2-tuned"
    for other in ("SmolLM2-360M-Instruct.Q4_1", "Llama-3.2-1B-Instruct", "tiny-llama"):
        assert profile_for_model(other) == "reference"
        assert load_profile("auto", model=other) == SamplerConfig()
    with pytest.raises(ValueError, match="needs the model"):
        load_profile("auto")


def test_unknown_profile_lists_the_calibrated_ones() -> None:
    with pytest.raises(
        ValueError, match=r"'nope'.*reference, smollm2-relative, smollm2-tuned, smollm2, auto"
    ):
        load_profile("nope")


def test_bad_models_key(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('models = "SmolLM2"\n')
    with pytest.raises(ValueError, match="models must be a list"):
        load_profile(str(path))


# ── the command ───────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def test_calibrate_end_to_end(monkeypatch, capsys, tmp_path: Path, tiny_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\nwhat is two plus two?\nwrite a poem\n")
    out = tmp_path / "tiny.toml"
    args = [
        "calibrate",
        "-f",
        str(prompts),
        "-o",
        str(out),
        "-m",
        str(tiny_path),
        "-n",
        "6",
        "--quantiles",
        "low=0.1,high=0.9",
        "--form",
        "relative",
        "--plain",
    ]
    code, stdout, stderr = run_main(monkeypatch, capsys, args)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and "calibrated: H" in stdout and "reference: H" in stdout
    cfg = load_profile(str(out))
    # The same greedy decode, done here, gives the tokens the thresholds must be quantiles of.
    model, tok, _ = load(tiny_path)
    # In the CLI's batches: float32 rounding differs with the batch, exact quantiles would too.
    samples = collect_samples(
        model, tok, load_prompts(prompts), max_tokens=6, batch_size=default_batch_size()
    )
    expected = calibrate_profile(samples, Quantiles(0.1, 0.6, 0.9), SamplerConfig(), "relative")
    assert cfg == replace(expected, profile="tiny") and cfg.form == "relative"
    text = out.read_text()
    n = len(samples["entropy"])
    assert f"(3 prompts, greedy, chat template, up to 6 tokens each: {n} tokens)" in text
    assert tomllib.loads(text)["models"] == ["tiny-llama"]
    # the relative profile drives a run: every adaptive draw inside its stated ranges
    jsonl = tmp_path / "run.jsonl"
    args = ["run", "-f", str(prompts), "-m", str(tiny_path), "-n", "8", "--profile", str(out)]
    code, _, stderr = run_main(monkeypatch, capsys, [*args, "--jsonl", str(jsonl), "--plain"])
    assert code == 0 and "profile tiny" in stderr, stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    steps = [r for r in records if r.get("strategy") == "adaptive"]
    assert steps, records  # thresholds at the tiny model's own quantiles: MID is the middle 50 %
    for r in steps:
        assert cfg.rel_adaptive_top_k_from <= r["top_k"] <= cfg.rel_adaptive_top_k_to
        assert cfg.rel_adaptive_min_p_to <= r["min_p"] <= cfg.rel_adaptive_min_p_from
        assert r["temperature"] <= cfg.temperature * cfg.rel_adaptive_temp_to


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--quantiles", "low=0.9"], "--quantiles: quantiles must rise"),
        (["--quantiles", "low=20"], "--quantiles: quantile low=20.0"),
        (["--quantiles", "lo=0.1"], "--quantiles"),
        (["--base", "nope"], "--base: sampler profile 'nope'"),
        (["--form", "absolute"], "--form absolute: choose reference or relative"),
        (["-o", "out.txt"], "give a .toml file name"),
        (["-o", "/no/such/dir/out.toml"], "does not exist"),
        (["-f", "/no/such/prompts.txt"], "/no/such/prompts.txt"),
        (["-f", "BAD"], "bad.jsonl:2: not JSON"),
        (["-m", "/no/such/model"], "/no/such/model"),
    ],
)
def test_bad_inputs_are_one_line(
    monkeypatch, capsys, tmp_path: Path, args: list[str], needle: str
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("hi\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a"}) + "\n{oops\n")
    args = [str(bad) if a == "BAD" else a for a in args]
    base = {"-f": str(good), "-o": str(tmp_path / "out.toml")}
    for flag in list(base):
        if flag in args:
            del base[flag]
    argv = ["calibrate", *[x for kv in base.items() for x in kv], *args]
    code, out, err = run_main(monkeypatch, capsys, argv)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err + out


def test_help_fits_one_screen(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_main(monkeypatch, capsys, ["calibrate", "--help"])
    assert code == 0 and "--quantiles" in out and len(out.splitlines()) <= 45


def test_the_active_profile_is_shown(monkeypatch, capsys, tmp_path: Path, tiny_path: Path) -> None:
    from entropix_mlx.ui.render import render_profile

    hint = render_profile("entropix", SamplerConfig(), "smollm2-tuned").plain
    assert hint.startswith("sampler entropix · profile reference · H 0.10/3.00/5.00 bits")
    assert hint.endswith("made for this model: --profile smollm2-tuned")
    tuned = load_profile("smollm2-tuned")
    assert "made for" not in render_profile("greedy", tuned, "smollm2-tuned").plain
    prompt = tmp_path / "p.txt"
    prompt.write_text("hi\n")
    args = ["run", "-f", str(prompt), "-m", str(tiny_path), "-n", "2", "--profile", "auto"]
    code, _, err = run_main(monkeypatch, capsys, args)
    assert code == 0 and "sampler entropix · profile reference" in err  # no profile for tiny-llama


@pytest.mark.slow
def test_auto_is_the_default_and_finds_the_tuned_profile(monkeypatch, capsys, tmp_path) -> None:
    prompt = tmp_path / "p.txt"
    prompt.write_text("hi\n")
    code, _, err = run_main(monkeypatch, capsys, ["run", "-f", str(prompt), "-n", "2"])
    assert code == 0 and "profile smollm2-tuned · H 0.10/3.00/5.00 bits" in err
