"""Uncertainty metrics of one decode step (ENTROPIX.md §1): pure, float32, in bits.

Two implementations of the same formulas, chosen by device in `step_metrics`:
- `metrics_vector` (MLX, lazy): one small (B, 6) array, fetched with a single host transfer. Used
  on Metal/CUDA, where transcendental functions are nearly free.
- `host_metrics` (NumPy): on MLX's CPU backend `exp` is scalar (~40 ns/element, measured 40× slower
  than NumPy's vectorised float32 exp). The model has already evaluated the logits and scores for
  the step, and the CPU shares memory, so reading them in NumPy is free.
Both are checked against an independent float64 computation in tests/test_metrics.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from ..model.backend import on_cpu
from .config import ATTENTION_LAYERS  # valid `SamplerConfig.attention_layers`, MLX-free there

METRIC_NAMES = (
    "entropy",
    "varentropy",
    "attn_entropy",
    "attn_varentropy",
    "agreement",
    "interaction_strength",
)
LOG2E = 1.0 / math.log(2.0)


class AttentionStats(NamedTuple):
    """The newest query's attention reduced per layer (MLX path).

    entropy: (B, layers, heads) bits; agreement, interaction: (B, layers) per-layer means of
    |P − mean_h P| and |scores| over (heads, keys).
    """

    entropy: mx.array
    agreement: mx.array
    interaction: mx.array


def _attention_stats(scores: mx.array) -> AttentionStats:
    """Reduce (B, layers, H, T) scaled scores over valid keys, all layers at once.

    One pass over the stacked rows rather than per layer: an MLX op costs ~30 µs on the CPU
    whatever its size, and per layer this would be ~15 ops (×30 layers ≈ 13 ms a token).
    """
    s = scores.astype(mx.float32)
    z = s - mx.max(s, axis=-1, keepdims=True)
    e = mx.exp(z)
    total = mx.sum(e, axis=-1, keepdims=True)
    p = e / total
    entropy = (mx.log(total[..., 0]) - mx.sum(p * z, axis=-1)) * LOG2E  # (B, layers, H)
    agreement = mx.mean(mx.abs(p - mx.mean(p, axis=2, keepdims=True)), axis=(2, 3))  # (B, layers)
    interaction = mx.mean(mx.abs(s), axis=(2, 3))  # (B, layers)
    return AttentionStats(entropy, agreement, interaction)


attention_stats = mx.compile(_attention_stats, shapeless=True)


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

    `stats` are per-layer reductions of the newest query's attention (`attention_stats(scores)`).
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


def metrics_vector(
    logits: mx.array, stats: AttentionStats | mx.array, layers: str = "all"
) -> mx.array:
    """All six metrics as one lazy (B, 6) float32 array in METRIC_NAMES order.

    `logits` is (B, V); `stats` the same batch's AttentionStats or raw (B, layers, H, T) scores.
    """
    if isinstance(stats, mx.array):
        stats = attention_stats(stats)
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


def host_metrics(logits: np.ndarray, scores: np.ndarray, layers: str = "all") -> Metrics:
    """The six metrics of one step with NumPy: logits (V,), scaled scores (layers, H, T).

    The same formulas as `logit_entropy` / `attention_stats` / `attention_metrics`, in float32
    with NumPy's pairwise (accurate) sums.
    """
    # Each step's temporaries are reused in place (`out=`: the same operations, the same numbers):
    # glibc hands every freed large array back to the OS, and each fresh one page-faults in again
    # (measured: 2.5 ms a step at 30 layers x 512 keys with a dozen temporaries, 0.8 ms without).
    x = np.asarray(logits, dtype=np.float32)
    y = x - x.max()
    np.multiply(y, np.float32(LOG2E), out=y)  # log2 of unnormalised p, ≤ 0
    e = np.exp2(y)
    z = e.sum()
    p = e / z
    np.subtract(y, np.log2(z), out=y)  # log2 p, 0 where p = 0
    y[~(e > 0)] = 0.0
    entropy = -np.sum(np.multiply(p, y, out=e))
    varentropy = np.sum(np.multiply(p, np.square(np.add(y, entropy, out=y), out=y), out=y))

    s = np.asarray(scores, dtype=np.float32)
    if layers not in ATTENTION_LAYERS:
        raise ValueError(f"attention layers {layers!r} is not one of {', '.join(ATTENTION_LAYERS)}")
    s = s[-1:] if layers == "last" else s
    work = s - s.max(axis=-1, keepdims=True)  # z
    P = np.exp(work)
    total = P.sum(axis=-1, keepdims=True)
    np.divide(P, total, out=P)
    np.multiply(P, work, out=work)  # P·z
    head_entropy = (np.log(total[..., 0]) - np.sum(work, axis=-1)) * np.float32(LOG2E)
    np.abs(np.subtract(P, P.mean(axis=1, keepdims=True), out=work), out=work)
    agreement = work.mean()
    interaction = np.abs(s, out=work).mean()
    return Metrics(
        entropy=float(entropy),
        varentropy=float(varentropy),
        attn_entropy=float(head_entropy.mean()),
        attn_varentropy=float(head_entropy.var(axis=1).mean()),
        agreement=float(agreement),
        interaction_strength=float(interaction),
    )


def step_metrics(logits: mx.array, scores: mx.array, layers: str = "all") -> Metrics:
    """Metrics of batch row 0 of a step's (B, V) logits and (B, layers, H, T) scores, on the host.

    Evaluates them if the caller has not yet; picks the faster implementation for the device.
    """
    if on_cpu():
        return host_metrics(_on_host(logits)[0], _on_host(scores)[0], layers)
    return Metrics.from_values(metrics_vector(logits, scores, layers)[0].tolist())


def row_metrics(
    logits: mx.array, scores: mx.array, starts: Sequence[int], layers: Sequence[str | None]
) -> list[Metrics | None]:
    """Metrics of each row of a batch step: (B, V) logits, (B, layers, H, T) scores.

    Row b's attention statistics read only its own keys, `scores[b, ..., starts[b]:]`: a batch's
    left padding never enters them. `layers[b]` is the row's `attention_layers`; None skips it.
    """
    if mx.default_device().type == mx.cpu:
        host_logits, host_scores = _on_host(logits), _on_host(scores)
        return [
            None if lay is None else host_metrics(host_logits[b], host_scores[b, ..., s:], lay)
            for b, (s, lay) in enumerate(zip(starts, layers, strict=True))
        ]
    return [
        None
        if lay is None
        else Metrics.from_values(
            metrics_vector(logits[b : b + 1], scores[b : b + 1, ..., s:], lay)[0].tolist()
        )
        for b, (s, lay) in enumerate(zip(starts, layers, strict=True))
    ]


def _on_host(x: mx.array) -> np.ndarray:
    """A zero-copy NumPy view (NumPy has no bfloat16, so other dtypes become float32 first)."""
    return np.array(x if x.dtype == mx.float32 else x.astype(mx.float32), copy=False)
