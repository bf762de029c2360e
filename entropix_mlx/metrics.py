"""Uncertainty metrics of one decode step (ENTROPIX.md §1): pure, lazy, float32, in bits.

Nothing here evaluates: `metrics_vector` builds one small (B, 6) array so the caller fetches every
scalar the sampler needs with a single host transfer per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import mlx.core as mx

from .llama import AttentionStats

METRIC_NAMES = (
    "entropy",
    "varentropy",
    "attn_entropy",
    "attn_varentropy",
    "agreement",
    "interaction_strength",
)
ATTENTION_LAYERS = ("all", "last")
LOG2E = 1.0 / math.log(2.0)


def _sum_last(x: mx.array) -> mx.array:
    """Sum over the last axis in two levels of ~sqrt(n) terms.

    MLX's CPU reduction accumulates sequentially in float32: over a 128k vocabulary that is off by
    ~1e-4 relative, enough to move varentropy visibly. Blocking brings it to ~1e-6.
    """
    n = x.shape[-1]
    block = max(1, math.isqrt(n))
    m = (n // block) * block
    head = x[..., :m].reshape(*x.shape[:-1], m // block, block)  # (..., n_blocks, block)
    total = mx.sum(mx.sum(head, axis=-1), axis=-1)
    if m < n:
        total = total + mx.sum(x[..., m:], axis=-1)
    return total


def logit_entropy(logits: mx.array) -> tuple[mx.array, mx.array]:
    """Entropy (bits) and varentropy (bits²) of softmax(logits) over the last axis, in float32.

    Varentropy is the variance of the surprisal −log2 p, computed in two passes around H so that
    it does not cancel when small. Tokens with p = 0 (e.g. −inf logits) contribute nothing.
    """
    x = logits.astype(mx.float32)
    y = (x - mx.max(x, axis=-1, keepdims=True)) * LOG2E  # (..., V) log2 of unnormalised p, ≤ 0
    # 2**y rather than exp: the one full-vocabulary transcendental, and MLX's x86 CPU exp is scalar
    # (~30 ns/element, 2x slower than power); on Metal either is free.
    e = mx.power(2.0, y)
    z = _sum_last(e)[..., None]  # (..., 1)
    p = e / z
    log2p = mx.where(e > 0, y - mx.log2(z), 0.0)
    entropy = -_sum_last(p * log2p)
    d = log2p + entropy[..., None]
    varentropy = _sum_last(p * d * d)
    return entropy, varentropy


def _select_layers(x: mx.array, layers: str) -> mx.array:
    """Keep all layers (axis 1) or only the final one."""
    if layers == "all":
        return x
    if layers == "last":
        return x[:, -1:]
    raise ValueError(f"attention layers {layers!r} is not one of {', '.join(ATTENTION_LAYERS)}")


def attention_metrics(
    stats: AttentionStats, layers: str = "all"
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """attn_entropy, attn_varentropy, agreement, interaction_strength, each (B,).

    `stats` are per-layer reductions of the newest query's attention (see `llama.attention_stats`).
    attn_varentropy is the mean over layers of the population variance of the head entropies (the
    reference's name for it). Every layer has the same (head, key) count, so the mean of the
    per-layer agreement/interaction means equals the mean over (layer, head, key).
    """
    entropy = _select_layers(stats.entropy.astype(mx.float32), layers)  # (B, layers, H)
    agreement = _select_layers(stats.agreement.astype(mx.float32), layers)  # (B, layers)
    interaction = _select_layers(stats.interaction.astype(mx.float32), layers)  # (B, layers)
    attn_entropy = mx.mean(entropy, axis=(1, 2))
    attn_varentropy = mx.mean(mx.var(entropy, axis=2), axis=1)
    return attn_entropy, attn_varentropy, mx.mean(agreement, axis=1), mx.mean(interaction, axis=1)


def metrics_vector(logits: mx.array, stats: AttentionStats, layers: str = "all") -> mx.array:
    """All six metrics as one lazy (B, 6) float32 array in METRIC_NAMES order.

    `logits` is (B, V) for the same batch as `stats`.
    """
    entropy, varentropy = logit_entropy(logits)
    return mx.stack([entropy, varentropy, *attention_metrics(stats, layers)], axis=-1)


@dataclass(frozen=True)
class Metrics:
    """One step's metrics on the host, in bits / bits² (what the sampler decides on)."""

    entropy: float
    varentropy: float
    attn_entropy: float
    attn_varentropy: float
    agreement: float
    interaction_strength: float

    @classmethod
    def from_values(cls, values: Sequence[float]) -> Metrics:
        """From one row of `metrics_vector(...).tolist()`."""
        if len(values) != len(METRIC_NAMES):
            raise ValueError(
                f"metrics need {len(METRIC_NAMES)} values {METRIC_NAMES}, got {len(values)}"
            )
        return cls(*(float(v) for v in values))

    def as_dict(self) -> dict[str, float]:
        """Field name → value, for the JSONL export."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
