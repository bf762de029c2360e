"""Reading a saved run back: the JSONL of `entropix run --jsonl` → the `TokenEvent`s and `Summary`s
it was made of, so a replay goes through the very renderers the run used; and the recipe that
`replay --check` decodes again to see whether the same tokens come out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.config import SamplerConfig, Thresholds
from ..engine.generate import Summary, TokenEvent
from ..engine.options import DecodingOptions
from ..engine.records import SUMMARY_FIELDS, events_from_records, read_run, summary_from_record
from ..engine.sampler import SamplingParams
from ..engine.tokens import first_difference
from ..errors import EntropixError

# What `--check` needs from a summary; `entropix run` records all of it.
RECIPE_FIELDS = ("prompt", "system", "raw", "sampler", "config", "params", "seed", "max_tokens")


@dataclass(frozen=True)
class Answer:
    """One answer of a run: its tokens, its summary and the rest of the summary record (model,
    device, seed, sampler, config, prompt …). A run killed before writing the summary has
    `cut_off` set and totals counted from its tokens."""

    events: tuple[TokenEvent, ...]
    summary: Summary
    context: dict[str, Any]
    cut_off: bool = False


@dataclass(frozen=True)
class Run:
    path: Path
    answers: tuple[Answer, ...]

    @property
    def context(self) -> dict[str, Any]:
        """The first recorded summary's context: what the run as a whole was made with."""
        return next((a.context for a in self.answers if a.context), {})


@dataclass(frozen=True)
class Recipe:
    """Everything that decides an answer's tokens, as recorded at run time."""

    model: str
    prompt: str
    system: str | None
    raw: bool
    options: DecodingOptions


def load_run(path: Path) -> Run:
    """Read `path` into answers of events and summaries; one-line `EntropixError`s on bad input."""
    groups, summaries = read_run(path)
    answers = []
    for n, records in enumerate(groups):
        body = summaries[n] if n < len(summaries) else None
        try:
            summary = summary_from_record(body) if body is not None else None
            events = events_from_records(records, summary)
        except (ValueError, TypeError) as e:
            raise EntropixError(f"{path}: answer {n + 1}: {e}") from None
        summary = summary or Summary.from_events(events)  # a killed run: totals from its tokens
        context = {k: v for k, v in (body or {}).items() if k not in SUMMARY_FIELDS}
        answers.append(Answer(tuple(events), summary, context, cut_off=body is None))
    return Run(path, tuple(answers))


def recipe(answer: Answer, position: int, path: Path, model: str | None = None) -> Recipe:
    """What to decode again for `answer` (the `position`-th); `model` overrides the recorded one."""
    ctx = answer.context
    missing = [name for name in RECIPE_FIELDS if name not in ctx]
    model = model or ctx.get("model_path") or ctx.get("model")
    if missing or not model:
        lacks = ", ".join(missing or ["model"])
        raise EntropixError(
            f"{path}: answer {position} does not record {lacks}; --check needs a file written "
            "by `entropix run --jsonl`"
        )
    try:
        return Recipe(
            model=str(model),
            prompt=str(ctx["prompt"]),
            system=ctx["system"],
            raw=bool(ctx["raw"]),
            options=DecodingOptions(
                sampler=str(ctx["sampler"]),
                config=SamplerConfig(**ctx["config"]),
                params=SamplingParams(**ctx["params"]),
                max_tokens=int(ctx["max_tokens"]),
                seed=int(ctx["seed"]),
            ),
        )
    except (TypeError, ValueError) as e:
        raise EntropixError(
            f"{path}: answer {position}: cannot rebuild its settings ({e})"
        ) from None


def plot_thresholds(run: Run) -> list[Thresholds]:
    """Each answer's quadrant thresholds: from its own summary, else the run's first one."""
    limits = []
    for n, answer in enumerate(run.answers, 1):
        try:
            limits.append(
                Thresholds.from_config(
                    answer.context.get("config") or run.context.get("config") or {}
                )
            )
        except EntropixError as e:
            raise EntropixError(f"{run.path}: answer {n}: {e}") from None
    return limits


@dataclass(frozen=True)
class CheckResult:
    """How a re-decoded answer compares with the recorded one."""

    position: int
    recorded: tuple[int, ...]
    decoded: tuple[int, ...]

    @property
    def difference(self) -> int | None:
        return first_difference(self.recorded, self.decoded)

    def describe(self) -> str:
        """One line: identical, or where and how the tokens part."""
        at = self.difference
        if at is None:
            return f"answer {self.position}: {len(self.recorded)} tokens identical"
        was = self.recorded[at] if at < len(self.recorded) else "(end)"
        now = self.decoded[at] if at < len(self.decoded) else "(end)"
        return (
            f"answer {self.position}: differs at token {at}: recorded {was}, decoded {now}"
            f" ({len(self.recorded)} recorded, {len(self.decoded)} decoded)"
        )
