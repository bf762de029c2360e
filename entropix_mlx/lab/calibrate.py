"""Per-model sampler thresholds from the model's own uncertainty (ENTROPIX.md §4).

The reference thresholds were set for Llama 3.1 70B; a 135M model's entropy and varentropy live on
another scale. Calibration decodes a prompt set greedily, collects every token's metrics and puts
the thresholds at stated quantiles of what it saw:

    low_ent  = quantile(H, low)    med_ent = quantile(H, med)    high_ent  = quantile(H, high)
    low_vent = quantile(V, low)                                  high_vent = quantile(V, high)

(numpy's default linear interpolation). The profile's `[scale]` table records quantile knots of
every metric (engine/scale.py): what the relative form (`form = "relative"`) measures the metrics
against. Every other field comes from a base profile.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.config import MODELS_KEY, QUADRANTS, SamplerConfig
from ..engine.metrics import METRIC_NAMES
from ..engine.sampler import classify
from ..engine.scale import MetricScale
from ..errors import EntropixError
from ..tokenize.chat_template import chat_messages

THRESHOLDS = ("low_ent", "med_ent", "high_ent", "low_vent", "high_vent")
SUMMARY_QUANTILES = (0.05, 0.2, 0.5, 0.6, 0.85, 0.95)


@dataclass(frozen=True)
class Quantiles:
    """Where the thresholds sit, as fractions of the calibration tokens below them."""

    low: float = 0.2
    med: float = 0.6
    high: float = 0.85

    def __post_init__(self) -> None:
        for name in ("low", "med", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(
                    f"quantile {name}={value!r} must be a fraction in (0, 1), e.g. 0.2"
                )
        if not self.low < self.med < self.high:
            raise ValueError(
                f"quantiles must rise: low={self.low:g} < med={self.med:g} < high={self.high:g}"
            )

    @classmethod
    def parse(cls, text: str) -> Quantiles:
        """`low=0.2,med=0.6,high=0.85`; names left out keep their defaults."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, raw = item.partition("=")
            name = name.strip()
            if not sep or name not in ("low", "med", "high"):
                raise ValueError(f"quantiles {text!r}: expected low=F,med=F,high=F, e.g. low=0.2")
            try:
                values[name] = float(raw)
            except ValueError:
                raise ValueError(
                    f"quantiles {text!r}: {name}={raw.strip()!r} is not a number"
                ) from None
        return cls(**values)


def _checked(samples: Mapping[str, Sequence[float]], name: str) -> np.ndarray:
    values = np.asarray(samples.get(name, ()), dtype=np.float64)
    if values.size == 0:
        raise ValueError(f"no {name} values to calibrate on; the prompts produced no tokens")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} has non-finite values; cannot put thresholds on them")
    return values


def calibrate_profile(
    samples: Mapping[str, Sequence[float]],
    quantiles: Quantiles,
    base: SamplerConfig,
    form: str | None = None,
) -> SamplerConfig:
    """`base` with its five quadrant thresholds at `quantiles` of `samples["entropy"]` and
    `samples["varentropy"]` (one value per token), its `scale` from all six metrics, and `form`
    (default: the base's; `relative` needs the scale this writes)."""
    h, v = _checked(samples, "entropy"), _checked(samples, "varentropy")
    q = [quantiles.low, quantiles.med, quantiles.high]
    low_ent, med_ent, high_ent = (float(x) for x in np.quantile(h, q))
    low_vent, high_vent = (float(x) for x in np.quantile(v, [quantiles.low, quantiles.high]))
    return replace(
        base,
        low_ent=low_ent,
        med_ent=med_ent,
        high_ent=high_ent,
        low_vent=low_vent,
        high_vent=high_vent,
        scale=MetricScale.from_samples({m: _checked(samples, m) for m in METRIC_NAMES}),
        form=form or base.form,
    )


def quadrant_mix(samples: Mapping[str, Sequence[float]], config: SamplerConfig) -> dict[str, int]:
    """How the calibration tokens would be classified under `config` (quadrant → count)."""
    mix: dict[str, int] = {}
    for h, v in zip(samples["entropy"], samples["varentropy"], strict=True):
        quadrant = classify(h, v, config)[0]
        mix[quadrant] = mix.get(quadrant, 0) + 1
    return mix


def distribution_lines(samples: Mapping[str, Sequence[float]]) -> list[str]:
    """A fixed-width table: each metric's mean and SUMMARY_QUANTILES, for the profile header."""
    head = "".join(f"{f'q{round(q * 100):02d}':>9}" for q in SUMMARY_QUANTILES)
    lines = [f"{'metric':<21}{'mean':>9}{head}"]
    for name in METRIC_NAMES:
        values = _checked(samples, name)
        qs = "".join(f"{x:9.4f}" for x in np.quantile(values, SUMMARY_QUANTILES))
        lines.append(f"{name:<21}{values.mean():9.4f}{qs}")
    return lines


def mix_line(mix: Mapping[str, int]) -> str:
    """`LELV 20% MID 61% …`, least uncertain first; quadrants with no tokens left out."""
    total = sum(mix.values()) or 1
    return " ".join(f"{q} {100 * mix[q] / total:.0f}%" for q in QUADRANTS if mix.get(q))


def calibration_header(
    *,
    model: str,
    prompts_file: str,
    prompts: int,
    max_tokens: int,
    quantiles: Quantiles,
    base: SamplerConfig,
    date: str,
    samples: Mapping[str, Sequence[float]],
) -> str:
    """The comment block a calibrated profile starts with: where its numbers come from."""
    calibrated = calibrate_profile(samples, quantiles, base)
    tokens = len(samples["entropy"])
    lines = [
        f"Sampler profile calibrated for {model} by `entropix calibrate` on {date}.",
        f"Prompts: {prompts_file}",
        f"  ({prompts} prompts, greedy, chat template, up to {max_tokens} tokens each: "
        f"{tokens} tokens).",
        f"Quantiles: low={quantiles.low:g} med={quantiles.med:g} high={quantiles.high:g} —"
        " low_ent/med_ent/high_ent are those quantiles of the",
        "entropy H (bits), low_vent/high_vent the low/high quantiles of the varentropy V (bits²).",
        f"Every other field is copied from the {base.profile!r} profile.",
        "",
        "Empirical distribution over the calibration tokens (attention metrics: ENTROPIX.md §1;",
        "all of them, at finer levels, are in [scale] below):",
        *("  " + line for line in distribution_lines(samples)),
        "",
        "Quadrant mix of the calibration tokens:",
        f"  {'calibrated':<12}{mix_line(quadrant_mix(samples, calibrated))}",
        f"  {base.profile:<12}{mix_line(quadrant_mix(samples, base))}",
    ]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: the file loads back to the same float
    return str(value)


def render_profile_toml(config: SamplerConfig, header: str, models: Iterable[str] = ()) -> str:
    """A profile file that `load_profile` reads back as `config` (the name follows the file).

    `header` becomes comment lines; `models` are the model-name globs `--profile auto` matches.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    globs = list(models)
    if globs:
        lines += ["", f"{MODELS_KEY} = {json.dumps(globs, ensure_ascii=False)}"]
    lines += ["", "# Quadrant thresholds."]
    lines += [f"{name} = {_toml_value(getattr(config, name))}" for name in THRESHOLDS]
    lines += ["", "# Base parameters and strategy coefficients."]
    skip = {*THRESHOLDS, "profile", "scale"}
    lines += [
        f"{f.name} = {_toml_value(getattr(config, f.name))}"
        for f in fields(config)
        if f.name not in skip
    ]
    if config.scale is not None:  # a TOML table comes after the top-level keys
        lines += ["", "# The model's metric quantiles at `levels` (engine/scale.py).", "[scale]"]
        lines += [
            f"{name} = [{', '.join(_toml_value(float(x)) for x in values)}]"
            for name, values in config.scale.as_table().items()
        ]
    return "\n".join(lines) + "\n"


def load_prompts(path: Path) -> list[dict[str, Any]]:
    """Prompts from a `.jsonl` file (one `{"prompt": …, "system"?: …}` per line) or any other
    text file (one prompt per non-empty line). Errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EntropixError(f"{path}: cannot read it as UTF-8 text ({err})") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append({"prompt": line.strip(), "system": None})
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise EntropixError(f"{path}:{number}: not JSON ({err.msg})") from None
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("prompt"), str)
            or not item["prompt"].strip()
        ):
            raise EntropixError(
                f'{path}:{number}: expected {{"prompt": "…"}} with a non-empty prompt'
            )
        if not isinstance(item.get("system"), (str, type(None))):
            raise EntropixError(f'{path}:{number}: "system" must be a string')
        prompts.append({"prompt": item["prompt"].strip(), "system": item.get("system")})
    if not prompts:
        raise EntropixError(f"{path}: no prompts in it; write one prompt per line")
    return prompts


def collect_samples(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Mapping[str, Any]],
    *,
    max_tokens: int,
    batch_size: int = 1,
    on_answer: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Decode each prompt greedily (chat template) and return every token's metrics by name.

    `batch_size` rows decode together; the samples are the same, in prompt order, whatever it is.
    `on_answer(prompt_index, tokens)` is called after each prompt (progress)."""
    from ..engine.batch import Job, decode_jobs

    jobs = []
    for item in prompts:
        messages = chat_messages(item["prompt"], system=item.get("system"))
        ids = tokenizer.apply_chat_template(messages)
        jobs.append(Job(ids, sampler="greedy", seed=0, max_tokens=max_tokens))
    samples: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for i, events in decode_jobs(model, tokenizer, jobs, batch_size=batch_size):
        for ev in events:
            for name, value in ev.metrics.as_dict().items():
                samples[name].append(value)
        if on_answer is not None:
            on_answer(i, len(events))
    return samples
