"""Entropix sampling (ENTROPIX.md §2–3): pure filters, one exact draw, strategies, samplers.

Strategies only choose `SamplingParams`; `sample` is the one place a token is drawn. Randomness
comes in as an explicit key on every call. `SamplerConfig` and its profiles live in `config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import mlx.core as mx
import numpy as np

from ..tokenize.tokenizer import Tokenizer
from . import dslider
from .config import INF, SamplerConfig, check_range, check_sampler
from .metrics import Metrics
from .scale import with_sums

STRATEGIES = ("argmax", "clarify", "explore", "resample", "adaptive")


@dataclass(frozen=True)
class SamplingParams:
    """One draw's parameters: top_k 0, top_p 1.0, min_p 0.0 switch a filter off; T 0 is argmax.

    Validated on construction (the factory), so invalid parameters cannot exist.
    """

    temperature: float
    top_k: int
    top_p: float
    min_p: float

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise ValueError(f"top_k={self.top_k!r} must be an integer ≥ 0 (0 = off)")
        check_range("temperature", self.temperature, (0.0, INF, False, True))
        check_range("top_k", self.top_k, (0, INF, False, True))
        check_range("top_p", self.top_p, (0.0, 1.0, True, False))
        check_range("min_p", self.min_p, (0.0, 1.0, False, False))

    @classmethod
    def from_config(cls, config: SamplerConfig) -> SamplingParams:
        """The profile's base parameters T0, k0, p0, m0: what `sample` draws with by default."""
        return cls(config.temperature, config.top_k, config.top_p, config.min_p)


ARGMAX = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)


def apply_top_k(logprobs: mx.array, k: int) -> mx.array:
    """Keep the k most likely tokens (k ≤ 0 or ≥ vocab: all)."""
    V = logprobs.shape[-1]
    if k <= 0 or k >= V:
        return logprobs
    drop = mx.argpartition(logprobs, kth=V - k, axis=-1)[..., : V - k]  # (..., V−k) least likely
    return mx.put_along_axis(logprobs, drop, mx.array(-INF, logprobs.dtype), axis=-1)


def apply_top_p(logprobs: mx.array, p: float) -> mx.array:
    """Keep the smallest set of most likely tokens whose mass reaches p (the top token always).

    Mass is relative to what is still unmasked; tokens tied with the last kept one are kept too.
    """
    if p >= 1.0:
        return logprobs
    s = mx.sort(logprobs, axis=-1)  # (..., V) ascending
    e = mx.exp(s - s[..., -1:])
    above = mx.cumsum(e, axis=-1, reverse=True, inclusive=False)  # mass of more likely tokens
    n_keep = mx.sum(above < p * (above[..., :1] + e[..., :1]), axis=-1, keepdims=True)  # ≥ 1
    threshold = mx.take_along_axis(s, s.shape[-1] - n_keep, axis=-1)
    return mx.where(logprobs < threshold, -INF, logprobs)


def apply_min_p(logprobs: mx.array, min_p: float) -> mx.array:
    """Drop tokens with p < min_p · p_max (min_p 0: none)."""
    if min_p <= 0.0:
        return logprobs
    threshold = mx.max(logprobs, axis=-1, keepdims=True) + math.log(min_p)
    return mx.where(logprobs < threshold, -INF, logprobs)


def candidates(logits: mx.array, params: SamplingParams) -> tuple[mx.array, mx.array | None]:
    """Filtered float32 log-probabilities (up to a constant) and their vocab ids (None: all).

    With top-k on, the k best are gathered first (an argpartition: ~8x cheaper than sorting 128k on
    CPU), so top-p and min-p only see k values. Every filter and the Gumbel-max draw are shift
    invariant, so the full-vocabulary log-softmax and the final renormalisation are left out.
    """
    V, k = logits.shape[-1], params.top_k
    ids = None
    if 0 < k < V:
        ids = mx.argpartition(logits, kth=V - k, axis=-1)[..., V - k :]  # (..., k), unordered
        # In vocabulary order: the draw's noise is per position, and argpartition's order changes
        # with float32 rounding (a batch row's logits vs the same prompt alone), its set does not.
        ids = mx.sort(ids, axis=-1)
        logits = mx.take_along_axis(logits, ids, axis=-1)
    x = logits.astype(mx.float32) / params.temperature
    return apply_min_p(apply_top_p(x, params.top_p), params.min_p), ids


def _draw(logprobs: mx.array, ids: mx.array | None, key: mx.array) -> mx.array:
    # mx.random.categorical is argmax(logits + Gumbel noise): an exact draw, not a uniform trick.
    choice = mx.random.categorical(logprobs, axis=-1, key=key)
    if ids is not None:
        choice = mx.take_along_axis(ids, choice[..., None], axis=-1)[..., 0]
    return choice.astype(mx.int32)


def sample(logits: mx.array, params: SamplingParams, key: mx.array) -> mx.array:
    """A lazy int32 token per row of `logits` (..., V): top-k, top-p, min-p, one exact draw."""
    if params.temperature == 0.0:
        return mx.argmax(logits, axis=-1).astype(mx.int32)
    return _draw(*candidates(logits, params), key)


def draw_candidates(logits: mx.array, params: SamplingParams, key: mx.array, n: int) -> mx.array:
    """n lazy int32 tokens from `logits` (V,), candidate i drawn with key i of split(key, n)."""
    keys = mx.random.split(key, n)  # (n, 2): independent keys, one per candidate
    if params.temperature == 0.0:
        return mx.broadcast_to(mx.argmax(logits, axis=-1).astype(mx.int32), (n,))
    logprobs, ids = candidates(logits, params)
    return mx.vmap(lambda k: _draw(logprobs, ids, k))(keys)  # (n,)


def best_of(logits: mx.array, params: SamplingParams, key: mx.array, n: int) -> mx.array:
    """The candidate of `draw_candidates` with the highest log p at temperature 1.

    log p at T = 1 is the raw logit minus one shared log Z, so the raw logits rank the candidates.
    """
    tokens = draw_candidates(logits, params, key, n)
    return tokens[mx.argmax(logits[tokens])]


def classify(entropy: float, varentropy: float, cfg: SamplerConfig) -> tuple[str, str]:
    """(quadrant, strategy) by the ENTROPIX.md §2 table; first match wins, bounds are strict."""
    if entropy < cfg.low_ent and varentropy < cfg.low_vent:
        return "LELV", "argmax"
    if entropy > cfg.high_ent and varentropy < cfg.low_vent:
        return "HELV", "clarify"
    if entropy < cfg.high_ent and varentropy > cfg.high_vent:
        return "LEHV", "explore"
    if entropy > cfg.med_ent and varentropy > cfg.high_vent:
        return "HEHV", "resample"
    return "MID", "adaptive"


# The relative form's drives (docs/samplers.md): parameter → the metrics whose quantile levels it
# averages, "1-" for one read the other way (high agreement is certainty). The metrics are those of
# the reference formula for the same parameter, each pointing the way it points there.
RELATIVE_DRIVES = {
    "adaptive_temp": ("logit_unc", "attn_unc", "1-agreement"),
    "adaptive_top_k": ("interaction_strength", "1-agreement"),
    "adaptive_top_p": ("attn_varentropy",),
    "adaptive_min_p": ("logit_unc",),
    "explore_temp": ("interaction_strength",),
    "explore_top_k": ("1-agreement",),
    "resample_temp": ("attn_varentropy",),
    "resample_top_p": ("attn_entropy",),
    "clarify_temp": ("attn_entropy",),
}


def relative_value(name: str, values: Mapping[str, float], cfg: SamplerConfig) -> float:
    """`rel_<name>_from` + (`rel_<name>_to` − from) · drive, the drive a mean of quantile levels
    of `values` (a step's metrics `with_sums`)."""
    assert cfg.scale is not None  # SamplerConfig checks the relative form has one
    levels = []
    for metric in RELATIVE_DRIVES[name]:
        flip, metric = metric.startswith("1-"), metric.removeprefix("1-")
        u = cfg.scale.normalise(metric, values[metric])
        levels.append(1.0 - u if flip else u)
    drive = sum(levels) / len(levels)
    start, end = getattr(cfg, f"rel_{name}_from"), getattr(cfg, f"rel_{name}_to")
    return min(max(start + (end - start) * drive, min(start, end)), max(start, end))  # no overshoot


def relative_params(strategy: str, m: Metrics, cfg: SamplerConfig) -> SamplingParams:
    """A strategy's parameters in the relative form: every one inside its stated range."""
    T0, k0, p0, m0 = cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p
    values = with_sums(m.as_dict())
    value = lambda name: relative_value(name, values, cfg)
    if strategy == "clarify":
        return SamplingParams(T0 * value("clarify_temp"), k0, p0, m0)
    if strategy == "explore":
        return SamplingParams(T0 * value("explore_temp"), round(value("explore_top_k")), p0, m0)
    if strategy == "resample":
        return SamplingParams(T0 * value("resample_temp"), k0, value("resample_top_p"), m0)
    return SamplingParams(
        T0 * value("adaptive_temp"),
        round(value("adaptive_top_k")),
        value("adaptive_top_p"),
        value("adaptive_min_p"),
    )


def strategy_params(strategy: str, m: Metrics, cfg: SamplerConfig) -> SamplingParams:
    """The sampling parameters a strategy uses, by the ENTROPIX.md §2 formulas (or the profile's
    relative form)."""
    T0, k0, p0, m0 = cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p
    if strategy == "argmax":
        return ARGMAX
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if cfg.form == "relative":
        return relative_params(strategy, m, cfg)
    if strategy == "clarify":
        t = T0 * (cfg.clarify_temp_base + cfg.clarify_temp_attn_entropy * m.attn_entropy)
        return SamplingParams(min(cfg.clarify_temp_max, t), k0, p0, m0)
    if strategy == "explore":
        t = T0 * (cfg.explore_temp_base + cfg.explore_temp_interaction * m.interaction_strength)
        k = int(k0 * (1.0 + cfg.explore_top_k_disagreement * (1.0 - m.agreement)))
        return SamplingParams(min(cfg.explore_temp_max, t), max(cfg.explore_top_k_min, k), p0, m0)
    if strategy == "resample":
        t = T0 * (cfg.resample_temp_base + cfg.resample_temp_attn_varentropy * m.attn_varentropy)
        p = p0 - cfg.resample_top_p_attn_entropy * m.attn_entropy
        return SamplingParams(max(cfg.resample_temp_min, t), k0, max(cfg.resample_top_p_min, p), m0)
    # adaptive
    ul, ua = m.entropy + m.varentropy, m.attn_entropy + m.attn_varentropy
    t = 1.0 + cfg.adaptive_temp_logit_unc * ul + cfg.adaptive_temp_attn_unc * ua
    t = T0 * (t - cfg.adaptive_temp_agreement * m.agreement)
    p = p0 * (1.0 + cfg.adaptive_top_p_attn_varentropy * m.attn_varentropy)
    k = 1.0 + cfg.adaptive_top_k_interaction * m.interaction_strength
    k = round(k0 * (k - cfg.adaptive_top_k_agreement * m.agreement))
    mp = m0 * (1.0 - cfg.adaptive_min_p_logit_unc * ul)
    return SamplingParams(
        t,
        min(max(k, cfg.adaptive_top_k_min), cfg.adaptive_top_k_max),
        min(max(p, cfg.adaptive_top_p_min), cfg.adaptive_top_p_max),
        min(max(mp, cfg.adaptive_min_p_min), cfg.adaptive_min_p_max),
    )


@dataclass(frozen=True, eq=False)
class Decision:
    """What the sampler chose for one step."""

    token: mx.array | None  # lazy int32 scalar; None when `inserted` is non-empty
    inserted: tuple[int, ...]  # clarify-text ids to insert instead of sampling
    quadrant: str  # LELV HELV LEHV HEHV MID, from the metrics whatever the sampler
    strategy: (
        str  # argmax clarify explore resample adaptive | greedy sample minp edt dynatemp | ds-…
    )
    params: SamplingParams  # what was used; for an insertion, what clarify samples with next


class Sampler(Protocol):
    name: str
    config: SamplerConfig  # thresholds name the quadrant; attention_layers and clarify_max too

    def __call__(
        self, logits: mx.array, metrics: Metrics, key: mx.array, *, clarify_left: int
    ) -> Decision: ...


def _as_vector(logits: mx.array) -> mx.array:
    """Samplers take one step's logits, (V,) or (1, V)."""
    if logits.ndim == 2 and logits.shape[0] == 1:
        return logits[0]
    if logits.ndim != 1:
        raise ValueError(f"sampler logits must be (V,) or (1, V), got shape {tuple(logits.shape)}")
    return logits


@dataclass(frozen=True, eq=False)
class EntropixSampler:
    """Picks a strategy from the step's metrics (ENTROPIX.md §2).

    `argmax_for`: strategies that take the argmax instead (an ablation; clarify then inserts
    nothing). Their tokens keep the strategy's name, so the mix still says where they fell.
    """

    config: SamplerConfig
    clarify_ids: tuple[int, ...] = ()
    argmax_for: frozenset[str] = frozenset()
    name: str = field(default="entropix", init=False)

    def __post_init__(self) -> None:
        unknown = sorted(self.argmax_for - set(STRATEGIES))
        if unknown:
            raise ValueError(f"argmax_for: {unknown[0]!r} is not one of {', '.join(STRATEGIES)}")

    def __call__(
        self, logits: mx.array, metrics: Metrics, key: mx.array, *, clarify_left: int
    ) -> Decision:
        logits = _as_vector(logits)
        quadrant, strategy = classify(metrics.entropy, metrics.varentropy, self.config)
        if strategy in self.argmax_for:
            return Decision(sample(logits, ARGMAX, key), (), quadrant, strategy, ARGMAX)
        params = strategy_params(strategy, metrics, self.config)
        if strategy == "clarify" and clarify_left > 0 and self.clarify_ids:
            return Decision(None, self.clarify_ids, quadrant, strategy, params)
        if strategy == "adaptive":
            token = best_of(logits, params, key, self.config.n_adaptive_samples)
        else:
            token = sample(logits, params, key)
        return Decision(token, (), quadrant, strategy, params)


@dataclass(frozen=True, eq=False)
class PlainSampler:
    """Fixed parameters every step (greedy is T = 0); metrics only name the quadrant."""

    config: SamplerConfig
    params: SamplingParams
    name: str = "sample"

    def __call__(
        self, logits: mx.array, metrics: Metrics, key: mx.array, *, clarify_left: int
    ) -> Decision:
        token = sample(_as_vector(logits), self.params, key)
        quadrant, _ = classify(metrics.entropy, metrics.varentropy, self.config)
        return Decision(token, (), quadrant, self.name, self.params)


def sample_truncated(logits: mx.array, params: SamplingParams, key: mx.array) -> mx.array:
    """Top-k, top-p and min-p on the temperature-1 distribution, then one draw at `temperature`.

    The order of min-p sampling and of llama.cpp's chain: truncation does not depend on T.
    """
    if params.temperature == 0.0:
        return mx.argmax(logits, axis=-1).astype(mx.int32)
    logprobs, ids = candidates(logits, replace(params, temperature=1.0))
    return _draw(logprobs / params.temperature, ids, key)


def edt_temperature(entropy_bits: float, cfg: SamplerConfig) -> float:
    """EDT: T = T0·N^(θ/H) with H in nats; at H = 0 that is N^∞: 0 (argmax) when N < 1."""
    h = entropy_bits * math.log(2.0)
    if cfg.edt_theta == 0.0 or cfg.edt_base == 1.0:
        return cfg.edt_temperature
    if h <= 0.0:
        return 0.0
    return cfg.edt_temperature * cfg.edt_base ** (cfg.edt_theta / h)


def dynatemp_temperature(logprobs: np.ndarray, cfg: SamplerConfig) -> float:
    """llama.cpp's temp-ext over the candidates left (log-probs up to a constant, −inf dropped)."""
    T0, delta = cfg.dynatemp_temperature, cfg.dynatemp_range
    x = logprobs[np.isfinite(logprobs)].astype(np.float64)
    if delta <= 0 or x.size <= 1:
        return T0
    lo, hi = max(0.0, T0 - delta), T0 + delta
    p = np.exp(x - x.max())
    p /= p.sum()
    nz = p[p > 0]
    entropy = float(-np.sum(nz * np.log(nz)))
    return lo + (hi - lo) * (entropy / math.log(x.size)) ** cfg.dynatemp_exponent


@dataclass(frozen=True, eq=False)
class MinPSampler:
    """Min-p sampling (Nguyen et al. 2024): keep p ≥ min_p·p_max, then sample at T."""

    config: SamplerConfig
    name: str = field(default="minp", init=False)

    def __call__(
        self, logits: mx.array, metrics: Metrics, key: mx.array, *, clarify_left: int
    ) -> Decision:
        params = SamplingParams(self.config.minp_temperature, 0, 1.0, self.config.minp_min_p)
        token = sample_truncated(_as_vector(logits), params, key)
        quadrant, _ = classify(metrics.entropy, metrics.varentropy, self.config)
        return Decision(token, (), quadrant, self.name, params)


@dataclass(frozen=True, eq=False)
class EDTSampler:
    """Entropy-based dynamic temperature (Zhang et al. 2024): T = T0·N^(θ/H), no filters."""

    config: SamplerConfig
    name: str = field(default="edt", init=False)

    def __call__(
        self, logits: mx.array, metrics: Metrics, key: mx.array, *, clarify_left: int
    ) -> Decision:
        params = SamplingParams(edt_temperature(metrics.entropy, self.config), 0, 1.0, 0.0)
        token = sample(_as_vector(logits), params, key)
        quadrant, _ = classify(metrics.entropy, metrics.varentropy, self.config)
        return Decision(token, (), quadrant, self.name, params)


@dataclass(frozen=True, eq=False)
class DynaTempSampler:
    """llama.cpp's chain top-k → top-p → min-p → temp-ext → draw ("dynatemp").

    The temperature depends on the candidates left, so they come to the host once per step.
    """

    config: SamplerConfig
    name: str = field(default="dynatemp", init=False)

    def __call__(
        self, logits: mx.array, metrics: Metrics, key: mx.array, *, clarify_left: int
    ) -> Decision:
        cfg = self.config
        truncate = SamplingParams(1.0, cfg.dynatemp_top_k, cfg.dynatemp_top_p, cfg.dynatemp_min_p)
        logprobs, ids = candidates(_as_vector(logits), truncate)
        T = dynatemp_temperature(np.array(logprobs), cfg)
        params = replace(truncate, temperature=T)
        if T == 0.0:
            token = _draw(mx.where(logprobs < mx.max(logprobs), -INF, 0.0), ids, key)  # the top
        else:
            token = _draw(logprobs / T, ids, key)
        quadrant, _ = classify(metrics.entropy, metrics.varentropy, cfg)
        return Decision(token, (), quadrant, self.name, params)


def dslider_config(config: SamplerConfig) -> dslider.DSliderConfig:
    """The reference's constants with this config's dslider fields."""
    return dslider.DSliderConfig(
        outlier_bias=config.dslider_outlier_bias,
        outlier_topk=config.dslider_outlier_topk,
        argmax_bias=config.dslider_argmax_bias,
        dirichlet_bias=config.dslider_dirichlet_bias,
    )


class DSliderSampler:
    """The reference's adaptive Dirichlet sampler with its wrapper (ENTROPIX.md §6, dslider.py).

    Holds one response's state: make one per response (`generate` does). Strategies: the
    step's branch (`ds-argmax`, `ds-topk`, `ds-dirichlet`, `ds-ood`), `ds-resample` when the
    wrapper's HEHV re-ran the step without the first choice, `clarify` for an insertion.
    """

    name = "dslider"

    def __init__(self, config: SamplerConfig, clarify_ids: tuple[int, ...] = ()) -> None:
        self.config = config
        self.clarify_ids = clarify_ids
        self.ds = dslider_config(config)
        self.state: dslider.DSState | None = None

    def __call__(
        self, logits: mx.array, metrics: Metrics, key: mx.array, *, clarify_left: int
    ) -> Decision:
        x = np.array(_as_vector(logits).astype(mx.float32), dtype=np.float64)
        # The key's two words seed this step's NumPy stream: every draw reproducible per key.
        rng = np.random.default_rng(np.array(key, dtype=np.uint32).tolist())
        if self.state is None:
            self.state = dslider.init_state(x, self.ds)
        state, result = dslider.step(self.state, x, self.ds, rng)
        quadrant, _ = classify(metrics.entropy, metrics.varentropy, self.config)
        case = dslider.wrapper_case(result.naked_ent, result.naked_varent, self.ds)
        strategy = result.branch
        if case == "HELV" and clarify_left > 0 and self.clarify_ids:
            params = SamplingParams(result.temperature, 0, 1.0, 0.0)
            return Decision(None, self.clarify_ids, quadrant, "clarify", params)
        if case == "HEHV":  # resample: the same step again, the first choice masked
            x[result.token] = -INF
            state, result = dslider.step(self.state, x, self.ds, rng)
            strategy = "ds-resample"
        self.state = state
        top_k = self.ds.outlier_topk if result.branch in ("ds-argmax", "ds-topk") else 0
        params = SamplingParams(float(result.temperature), top_k, 1.0, 0.0)
        return Decision(mx.array(result.token, dtype=mx.int32), (), quadrant, strategy, params)


def make_sampler(
    name: str,
    config: SamplerConfig | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    clarify_ids: Sequence[int] = (),
    params: SamplingParams | None = None,
) -> Sampler:
    """`entropix`, `greedy`, `sample` (with `params`, by default the config's T0/k0/p0/m0), or a
    rival: `minp`, `edt`, `dynatemp`, `dslider` (a new object per response: it keeps state).

    Clarify inserts `config.clarify_text` as token ids: give them (`clarify_ids`) or the model's
    `tokenizer` to encode it; with neither, clarify never inserts.
    """
    check_sampler(name)
    config = config or SamplerConfig()
    if tokenizer is not None and not clarify_ids and config.clarify_text:
        clarify_ids = tokenizer.encode(config.clarify_text)
    ids = tuple(clarify_ids)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"clarify_ids={ids!r} must be token ids (integers ≥ 0)")
    if name == "entropix":
        return EntropixSampler(config, ids)
    if name == "greedy":
        return PlainSampler(config, ARGMAX, name="greedy")
    if name == "minp":
        return MinPSampler(config)
    if name == "edt":
        return EDTSampler(config)
    if name == "dynatemp":
        return DynaTempSampler(config)
    if name == "dslider":
        return DSliderSampler(config, ids)
    return PlainSampler(config, SamplingParams.from_config(config) if params is None else params)
