"""A model's own metric scale (docs/samplers.md, "The relative form").

The reference coefficients turn raw bits into temperatures, so their effect depends on the model
the numbers came from (issue 12: the same formulas sample at T ≈ 2.8 on SmolLM2). A `MetricScale`
holds quantile knots of each metric on one model, written by `entropix calibrate`; `normalise`
maps a value to its quantile level in [0, 1] (piecewise linear between knots), so a profile can
say "at this model's most certain" and "at its least certain" instead of a number of bits.
No MLX here: the CLI checks profiles before a model loads.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The six metrics (metrics.METRIC_NAMES) and the two sums the adaptive strategy reads.
SCALE_METRICS = (
    "entropy",
    "varentropy",
    "logit_unc",  # H + V
    "attn_entropy",
    "attn_varentropy",
    "attn_unc",  # attention entropy + attention varentropy
    "agreement",
    "interaction_strength",
)
LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def with_sums(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The six metrics (floats, or arrays of samples) and the two sums of SCALE_METRICS."""
    return {
        **metrics,
        "logit_unc": metrics["entropy"] + metrics["varentropy"],
        "attn_unc": metrics["attn_entropy"] + metrics["attn_varentropy"],
    }


@dataclass(frozen=True)
class MetricScale:
    """Quantile `levels` (rising, in [0, 1]) and, per metric, its value at each level."""

    levels: tuple[float, ...]
    knots: Mapping[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        levels = tuple(_numbers(self.levels, "scale.levels"))
        if len(levels) < 2 or any(not 0.0 <= q <= 1.0 for q in levels):
            raise ValueError("scale.levels must be ≥ 2 quantile levels in [0, 1]")
        if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError("scale.levels must rise, e.g. [0.0, 0.5, 1.0]")
        missing = [m for m in SCALE_METRICS if m not in self.knots]
        unknown = [m for m in self.knots if m not in SCALE_METRICS]
        if missing or unknown:
            raise ValueError(
                f"scale needs knots for exactly {', '.join(SCALE_METRICS)}"
                f" ({'missing ' + missing[0] if missing else 'unknown ' + unknown[0]})"
            )
        knots = {}
        for name in SCALE_METRICS:
            values = tuple(_numbers(self.knots[name], f"scale.{name}"))
            if len(values) != len(levels):
                raise ValueError(f"scale.{name} has {len(values)} knots for {len(levels)} levels")
            if any(b < a for a, b in zip(values, values[1:], strict=False)):
                raise ValueError(f"scale.{name} must not fall: its knots are quantiles")
            knots[name] = values
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "knots", knots)

    @classmethod
    def from_samples(
        cls, samples: Mapping[str, Sequence[float]], levels: Sequence[float] = LEVELS
    ) -> MetricScale:
        """Knots at `levels` of per-token samples of the six metrics (numpy's linear quantile)."""
        import numpy as np

        values = with_sums({m: np.asarray(samples[m], dtype=np.float64) for m in samples})
        knots = {m: np.quantile(values[m], levels) for m in SCALE_METRICS}
        return cls(tuple(levels), {m: tuple(round(float(x), 6) for x in knots[m]) for m in knots})

    def __hash__(self) -> int:  # the knots are a dict: hash their items (SamplerConfig hashes us)
        return hash((self.levels, tuple(self.knots.items())))

    def __str__(self) -> str:
        return f"{len(self.levels)} quantile knots per metric"

    def normalise(self, metric: str, value: float) -> float:
        """The quantile level of `value` on this model: 0 at or below the lowest knot, 1 at or
        above the highest; a value equal to several knots (a point mass) gets their middle level."""
        xs, qs = self.knots[metric], self.levels
        lo, hi = bisect.bisect_left(xs, value), bisect.bisect_right(xs, value)
        if lo < hi:
            return (qs[lo] + qs[hi - 1]) / 2
        if lo == 0:
            return qs[0]
        if lo == len(xs):
            return qs[-1]
        x0, x1 = xs[lo - 1], xs[lo]
        return qs[lo - 1] + (qs[lo] - qs[lo - 1]) * (value - x0) / (x1 - x0)

    def as_table(self) -> dict[str, list[float]]:
        """The `[scale]` TOML table: levels, then each metric's knots."""
        return {"levels": list(self.levels)} | {m: list(self.knots[m]) for m in SCALE_METRICS}


def scale_from(value: Any) -> MetricScale | None:
    """A MetricScale from a `[scale]` table or its `asdict` form (a saved chat, a replayed run)."""
    if value is None or isinstance(value, MetricScale):
        return value
    if not isinstance(value, Mapping):
        raise ValueError("scale must be a table of levels and per-metric knots")
    table = dict(value)
    levels = table.pop("levels", None)
    knots = table.pop("knots", table)  # asdict nests the knots; the TOML table does not
    if levels is None:
        raise ValueError("scale needs levels = [...] (quantile levels)")
    if not isinstance(knots, Mapping):
        raise ValueError("scale knots must be a table of metric → values")
    return MetricScale(tuple(_numbers(levels, "scale.levels")), dict(knots))


def _numbers(values: Any, name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of numbers")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a list of finite numbers, got {v!r}")
        out.append(float(v))
    return out
