"""Sampler configuration (ENTROPIX.md §2): the sampler names, `SamplerConfig` and its profiles.

A profile is a TOML file of SamplerConfig fields, packaged (`reference`, the calibrated ones) or
the user's. This module imports no MLX, so the CLI can check sampler options before a model loads.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import EntropixError
from .scale import MetricScale, scale_from

SAMPLERS = ("entropix", "greedy", "sample", "minp", "edt", "dynatemp", "dslider")
RIVALS = SAMPLERS[
    3:
]  # the other adaptive samplers the lab compares Entropix with (docs/samplers.md)
# The §2 quadrants, least to most uncertain: the one order every table, bar and legend uses.
QUADRANTS = ("LELV", "MID", "LEHV", "HELV", "HEHV")
FORMS = ("reference", "relative")  # how strategy parameters follow the metrics (docs/samplers.md)
ATTENTION_LAYERS = ("all", "last")  # whose attention the metrics read: every layer or the final one
AUTO_PROFILE = "auto"
MODELS_KEY = "models"  # a calibrated profile's model-name globs (not a SamplerConfig field)
INF = math.inf


def check_sampler(name: str) -> str:
    """`name` if it is one of SAMPLERS, else a ValueError naming the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return name


def sampler_names(text: str) -> tuple[str, ...]:
    """Comma-separated sampler names (`greedy,entropix`), each known and named once."""
    names = tuple(check_sampler(s.strip()) for s in text.split(",") if s.strip())
    if not names or len(set(names)) != len(names):
        raise ValueError("name each sampler once, e.g. greedy,entropix")
    return names


def _num(default: float, lo: float = -INF, hi: float = INF, *, open_lo: bool = False) -> Any:
    """A numeric field valid in [lo, hi] (or (lo, hi]); infinite bounds are open: finite only."""
    return field(default=default, metadata={"range": (lo, hi, open_lo or lo == -INF, hi == INF)})


def _interval(lo: float, hi: float, open_lo: bool, open_hi: bool) -> str:
    return f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"


def check_range(name: str, value: float, bounds: tuple[float, float, bool, bool]) -> None:
    """Raise a ValueError naming `name` and the valid interval unless `value` lies in `bounds`
    (lo, hi, open_lo, open_hi)."""
    lo, hi, open_lo, open_hi = bounds
    above = value > lo if open_lo else value >= lo
    below = value < hi if open_hi else value <= hi
    if not (above and below):  # also rejects NaN
        raise ValueError(f"{name}={value!r} is out of range: valid is {_interval(*bounds)}")


@dataclass(frozen=True)
class SamplerConfig:
    """Every threshold and coefficient of ENTROPIX.md §2; the defaults are the reference profile.

    Formulas with each coefficient: `sampler.strategy_params` and profiles/reference.toml.
    """

    # Quadrant thresholds: entropy in bits, varentropy in bits².
    low_ent: float = _num(0.1, 0.0)
    low_vent: float = _num(0.1, 0.0)
    high_ent: float = _num(5.0, 0.0)
    high_vent: float = _num(5.0, 0.0)
    med_ent: float = _num(3.0, 0.0)
    # Base parameters T0, k0, p0, m0 (top_k 0 / top_p 1 / min_p 0 switch a filter off).
    temperature: float = _num(0.666, 0.0)
    top_k: int = _num(27, 0)
    top_p: float = _num(0.90, 0.0, 1.0, open_lo=True)
    min_p: float = _num(0.03, 0.0, 1.0)
    # clarify (HELV), once inserted.
    clarify_temp_max: float = _num(1.5, 0.0)
    clarify_temp_base: float = _num(1.3)
    clarify_temp_attn_entropy: float = _num(0.2)
    # explore (LEHV).
    explore_temp_max: float = _num(1.5, 0.0)
    explore_temp_base: float = _num(1.2)
    explore_temp_interaction: float = _num(0.3)
    explore_top_k_min: int = _num(5, 1)
    explore_top_k_disagreement: float = _num(0.5)
    # resample (HEHV).
    resample_temp_min: float = _num(2.0, 0.0)
    resample_temp_base: float = _num(2.0)
    resample_temp_attn_varentropy: float = _num(0.5)
    resample_top_p_min: float = _num(0.5, 0.0, 1.0, open_lo=True)
    resample_top_p_attn_entropy: float = _num(0.2)
    # adaptive (MID), with Ul = H + V and Ua = attn_entropy + attn_varentropy.
    adaptive_temp_logit_unc: float = _num(0.3)
    adaptive_temp_attn_unc: float = _num(0.2)
    adaptive_temp_agreement: float = _num(0.2)
    adaptive_top_p_attn_varentropy: float = _num(0.1)
    adaptive_top_p_min: float = _num(0.1, 0.0, 1.0, open_lo=True)
    adaptive_top_p_max: float = _num(1.0, 0.0, 1.0, open_lo=True)
    adaptive_top_k_interaction: float = _num(0.3)
    adaptive_top_k_agreement: float = _num(0.2)
    adaptive_top_k_min: int = _num(1, 1)
    adaptive_top_k_max: int = _num(100, 1)
    adaptive_min_p_logit_unc: float = _num(0.5)
    adaptive_min_p_min: float = _num(0.01, 0.0, 1.0)
    adaptive_min_p_max: float = _num(0.5, 0.0, 1.0)
    n_adaptive_samples: int = _num(5, 1)
    # HELV inserts clarify_text (tokenized by the model) at most clarify_max times per response.
    clarify_text: str = " ..."
    clarify_max: int = _num(1, 0)
    attention_layers: str = "all"
    # Rival samplers (docs/samplers.md); each reads only its own fields.
    # minp (Nguyen et al. 2024): drop p < min_p·p_max at T = 1, then sample at T.
    minp_temperature: float = _num(1.0, 0.0)
    minp_min_p: float = _num(0.1, 0.0, 1.0)
    # edt (Zhang et al. 2024): T = T0·N^(θ/H), H the entropy in nats; N ≤ 1 keeps T ≤ T0.
    edt_temperature: float = _num(1.0, 0.0)
    edt_base: float = _num(0.8, 0.0, 1.0, open_lo=True)
    edt_theta: float = _num(1.0, 0.0)
    # dynatemp (llama.cpp temp-ext): top-k, top-p, min-p at T = 1, then over the N tokens left
    # T = lo + (hi − lo)·(H / ln N)^exponent, lo = max(0, T0 − range), hi = T0 + range (H in nats).
    dynatemp_temperature: float = _num(0.8, 0.0)
    dynatemp_range: float = _num(0.5, 0.0)
    dynatemp_exponent: float = _num(1.0, 0.0)
    dynatemp_top_k: int = _num(40, 0)
    dynatemp_top_p: float = _num(0.95, 0.0, 1.0, open_lo=True)
    dynatemp_min_p: float = _num(0.05, 0.0, 1.0)
    # dslider (ENTROPIX.md §6; nats): the outlier test's bias (< 0 lets inliers through), the
    # inliers' top-k, and the biases of the argmax and Dirichlet thresholds.
    dslider_outlier_bias: float = _num(0.0)
    dslider_outlier_topk: int = _num(6, 1)
    dslider_argmax_bias: float = _num(1.2)
    dslider_dirichlet_bias: float = _num(1.2)
    # The relative form (docs/samplers.md): with form = "relative" the strategies ignore the
    # coefficients above; each parameter below moves from its *_from value (at the model's most
    # certain, drive 0) to its *_to value (least certain, drive 1), the drive being a mean of the
    # metrics' quantile levels on this model's `scale` (sampler.RELATIVE_DRIVES). Temperatures are
    # multiples of T0, as in the reference formulas, so T0 = 0 is greedy in either form.
    form: str = "reference"
    scale: MetricScale | None = None  # written by `entropix calibrate`
    rel_adaptive_temp_from: float = _num(0.0, 0.0)
    rel_adaptive_temp_to: float = _num(1.5, 0.0)
    rel_adaptive_top_k_from: int = _num(5, 1)
    rel_adaptive_top_k_to: int = _num(60, 1)
    rel_adaptive_top_p_from: float = _num(0.9, 0.0, 1.0, open_lo=True)
    rel_adaptive_top_p_to: float = _num(1.0, 0.0, 1.0, open_lo=True)
    rel_adaptive_min_p_from: float = _num(0.2, 0.0, 1.0)
    rel_adaptive_min_p_to: float = _num(0.02, 0.0, 1.0)
    rel_explore_temp_from: float = _num(1.0, 0.0)
    rel_explore_temp_to: float = _num(2.0, 0.0)
    rel_explore_top_k_from: int = _num(10, 1)
    rel_explore_top_k_to: int = _num(40, 1)
    rel_resample_temp_from: float = _num(1.5, 0.0)
    rel_resample_temp_to: float = _num(3.0, 0.0)
    rel_resample_top_p_from: float = _num(0.9, 0.0, 1.0, open_lo=True)
    rel_resample_top_p_to: float = _num(0.5, 0.0, 1.0, open_lo=True)
    rel_clarify_temp_from: float = _num(1.5, 0.0)
    rel_clarify_temp_to: float = _num(2.25, 0.0)
    profile: str = "reference"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "scale":
                object.__setattr__(self, "scale", scale_from(self.scale))
                continue
            value, kind = getattr(self, f.name), type(f.default)
            allowed = (int, float) if kind is float else kind
            if isinstance(value, bool) or not isinstance(value, allowed):
                noun = {str: "a string", int: "an integer", float: "a number"}[kind]
                raise ValueError(f"{f.name}={value!r} must be {noun}")
            if kind is not str:
                object.__setattr__(self, f.name, kind(value))  # TOML's `1` for a float field
                check_range(f.name, value, f.metadata["range"])
        for lo, hi in (
            ("adaptive_top_p_min", "adaptive_top_p_max"),
            ("adaptive_top_k_min", "adaptive_top_k_max"),
            ("adaptive_min_p_min", "adaptive_min_p_max"),
        ):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(
                    f"{lo}={getattr(self, lo)!r} must not exceed {hi}={getattr(self, hi)!r}"
                )
        if self.attention_layers not in ATTENTION_LAYERS:
            valid = ", ".join(ATTENTION_LAYERS)
            raise ValueError(f"attention_layers={self.attention_layers!r}: valid are {valid}")
        if self.form not in FORMS:
            raise ValueError(f"form={self.form!r}: valid are {', '.join(FORMS)}")
        if self.form == "relative" and self.scale is None:
            raise ValueError(
                "form='relative' needs the model's [scale] table: "
                "write a profile with `entropix calibrate` and set form there"
            )
        if not self.profile:
            raise ValueError("profile='' must name the profile")

    def with_overrides(self, overrides: Mapping[str, str]) -> SamplerConfig:
        """Apply `--set name=value` strings, each parsed to its field's type."""
        types = {f.name: type(f.default) for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, raw in overrides.items():
            if name not in types:
                raise ValueError(f"unknown sampler setting {name!r}; valid: {', '.join(types)}")
            kind = types[name]
            if name == "scale":
                raise ValueError("scale is a table of quantile knots: set it in a profile file")
            try:
                changes[name] = raw if kind is str else kind(raw.strip())
            except ValueError:
                noun = {int: "an integer", float: "a number"}[kind]
                raise ValueError(f"{name}={raw!r} must be {noun}") from None
        return replace(self, **changes)


def _profiles_dir() -> Any:
    return resources.files("entropix_mlx.engine") / "profiles"


def _model_globs(data: dict[str, Any], source: str) -> tuple[str, ...]:
    """Pop and check a profile's `models = ["SmolLM2-135M-Instruct.Q4_1", …]` (fnmatch globs)."""
    globs = data.pop(MODELS_KEY, [])
    if not isinstance(globs, list) or not all(isinstance(g, str) and g for g in globs):
        raise ValueError(f"{source}: {MODELS_KEY} must be a list of model-name patterns")
    return tuple(globs)


def _packaged_profiles() -> dict[str, tuple[str, ...]]:
    """Packaged profile name → the model globs it was calibrated for (none for `reference`)."""
    found = {}
    for entry in sorted(_profiles_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            found[entry.name[: -len(".toml")]] = _model_globs(data, str(entry))
    return found


def profile_names() -> tuple[str, ...]:
    """The packaged profiles' names (`reference` and the calibrated ones)."""
    return tuple(_packaged_profiles())


def profile_for_model(model: str) -> str:
    """The packaged profile calibrated for `model` (a model name, `.gguf` optional), else
    `reference`: what `--profile auto` picks. Globs match case-insensitively."""
    name = model.removesuffix(".gguf").casefold()
    for profile, globs in _packaged_profiles().items():
        if any(fnmatch.fnmatchcase(name, g.removesuffix(".gguf").casefold()) for g in globs):
            return profile
    return "reference"


def load_profile(name_or_path: str, *, model: str | None = None) -> SamplerConfig:
    """A packaged profile by name (`reference`, `smollm2`, `smollm2-tuned`, …), `auto` (the one
    tuned or calibrated for `model`, else `reference`) or a TOML file of SamplerConfig fields.

    Keys left out keep their defaults; `profile` defaults to the file's stem.
    """
    if name_or_path == AUTO_PROFILE:
        if model is None:
            raise ValueError("sampler profile 'auto' needs the model's name to match")
        name_or_path = profile_for_model(model)
    packaged = _profiles_dir() / f"{name_or_path}.toml"
    if "/" not in name_or_path and not name_or_path.endswith(".toml") and packaged.is_file():
        source, stem, text = str(packaged), name_or_path, packaged.read_text(encoding="utf-8")
    elif Path(name_or_path).is_file():
        path = Path(name_or_path)
        source, stem, text = str(path), path.stem, path.read_text(encoding="utf-8")
    else:
        raise ValueError(
            f"sampler profile {name_or_path!r} is none of: {', '.join(_packaged_profiles())}, "
            "auto (the one tuned or calibrated for the model, else reference), a TOML file"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{source}: not valid TOML: {err}") from None
    _model_globs(data, source)
    known = {f.name for f in fields(SamplerConfig)}
    for key in data:
        if key not in known:
            raise ValueError(f"{source}: unknown sampler setting {key!r}")
    try:
        return SamplerConfig(**{"profile": stem, **data})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


@dataclass(frozen=True)
class Thresholds:
    """The quadrant boundaries of a `SamplerConfig` (entropy in bits, varentropy in bits²)."""

    low_ent: float
    med_ent: float
    high_ent: float
    low_vent: float
    high_vent: float

    @classmethod
    def from_config(cls, config: Any) -> Thresholds:
        """From a `SamplerConfig` or the `config` object a run's summary records."""
        names = [f.name for f in fields(cls)]
        get = config.get if isinstance(config, Mapping) else lambda n: getattr(config, n, None)
        values = {n: get(n) for n in names}
        bad = [
            n for n, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float))
        ]
        if bad:
            raise EntropixError(f"the sampler config has no usable {', '.join(bad)}; cannot plot")
        return cls(**{n: float(v) for n, v in values.items()})

    def entropy_lines(self) -> list[tuple[str, float]]:
        return [("low_ent", self.low_ent), ("med_ent", self.med_ent), ("high_ent", self.high_ent)]

    def varentropy_lines(self) -> list[tuple[str, float]]:
        return [("low_vent", self.low_vent), ("high_vent", self.high_vent)]
