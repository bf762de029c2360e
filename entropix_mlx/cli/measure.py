"""Lab commands that measure: calibrate, eval. Thin, like cli.py.

Their few renderables (the eval table, one-line reports) live here rather than in tui.py, which is
at its size limit; they are pure functions of the library's results.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import EntropixError
from .app import ModelOpt, PlainOpt, ProfileOpt, _fail, _guard, _load, _model_file_name, app

if TYPE_CHECKING:
    from rich.table import Table

    from ..lab.evaluate import Answer, SamplerScore

InFile = dict(exists=True, dir_okay=False, readable=True)


def _out_path(path: Path | None, option: str, suffix: str) -> None:
    """Fail before a long run, not after it, when the output cannot be written."""
    if path is None:
        return
    if path.suffix != suffix:
        _fail(f"{option} {path}: give a {suffix} file name")
    if not path.parent.is_dir():
        _fail(f"{option} {path}: folder {path.parent} does not exist; create it first")


# ── calibrate ─────────────────────────────────────────────────────────────────────────────────


@app.command()
def calibrate(
    prompt_file: Annotated[
        Path,
        typer.Option(
            "--prompt-file",
            "-f",
            **InFile,
            help='Prompts: .jsonl with one {"prompt": …} per line, or any other text file with one prompt per line.',
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            dir_okay=False,
            help="Write the profile here (.toml); use it with --profile PATH.",
        ),
    ],
    model: ModelOpt = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "-n", min=1, help="Greedy tokens per prompt.")
    ] = 48,
    quantiles: Annotated[
        str,
        typer.Option(
            "--quantiles",
            "-q",
            help="low → low_ent and low_vent, med → med_ent, high → high_ent and high_vent.",
        ),
    ] = "low=0.2,med=0.6,high=0.85",
    base: Annotated[
        str, typer.Option("--base", help="Profile every other field is copied from.")
    ] = "reference",
    plain: PlainOpt = False,
) -> None:
    """Write a profile whose thresholds sit at quantiles of the model's own entropy/varentropy.

    The prompts are decoded greedily; the header records every metric's distribution."""
    from ..engine.config import load_profile
    from ..lab.calibrate import Quantiles

    try:
        q = Quantiles.parse(quantiles)
    except ValueError as e:
        _fail(f"--quantiles: {e}")
    try:
        base_config = load_profile(base)
    except ValueError as e:
        _fail(f"--base: {e}")
    _out_path(out, "--out", ".toml")
    _guard(_calibrate, prompt_file, out, model, max_tokens, q, base_config, plain)


def _calibrate(prompt_file, out, model, max_tokens, quantiles, base, plain) -> None:
    from ..lab.calibrate import (
        calibrate_profile,
        calibration_header,
        collect_samples,
        load_prompts,
        render_profile_toml,
    )
    from ..ui import render as tui

    prompts = load_prompts(prompt_file)
    err = tui.make_console(plain=tui.wants_plain(plain, sys.stderr), stderr=True)
    mdl, tok, info = _load(err, model)
    label = f"calibrating on {len(prompts)} prompts"
    with err.status(label) as status:
        progress = lambda i, n: status.update(f"{label}: {i + 1}/{len(prompts)} done")
        samples = collect_samples(mdl, tok, prompts, max_tokens=max_tokens, on_answer=progress)
    config = calibrate_profile(samples, quantiles, base)
    header = calibration_header(
        model=info.name,
        prompts_file=str(prompt_file),
        prompts=len(prompts),
        max_tokens=max_tokens,
        quantiles=quantiles,
        base=base,
        date=datetime.date.today().isoformat(),
        samples=samples,
    )
    out.write_text(render_profile_toml(config, header, models=[info.name]), encoding="utf-8")
    console = tui.make_console(plain=tui.wants_plain(plain, sys.stdout))
    console.print(_calibration_report(out, config, base, samples, plain))


def _calibration_report(out, config, base, samples, plain: bool) -> Any:
    """What was written, and how the calibration tokens split under it and under the base."""
    from rich.console import Group
    from rich.text import Text

    from ..lab.calibrate import mix_line, quadrant_mix
    from ..ui import render as tui

    n = len(samples["entropy"])
    lines = [Text(f"wrote {out} from {n} tokens; use it with --profile {out}", style="ui.title")]
    for name, c in (("calibrated", config), (base.profile, base)):
        line = Text(
            f"{name:>10}: H {c.low_ent:.2f}/{c.med_ent:.2f}/{c.high_ent:.2f} · V "
            f"{c.low_vent:.2f}/{c.high_vent:.2f} · ",
            style="ui.muted",
        )
        mix = quadrant_mix(samples, c)
        bar = tui.render_mix_bar(mix) if not plain else Text()
        lines.append(line.append_text(bar).append(f" {mix_line(mix)}", style="ui.muted"))
    return Group(*lines)


# ── eval ──────────────────────────────────────────────────────────────────────────────────────


@app.command("eval")
def eval_(
    questions: Annotated[
        Path,
        typer.Option(
            "--questions",
            "-q",
            **InFile,
            help='JSONL, one {"question": …, "answer" | "number" | "regex": …} per line.',
        ),
    ],
    samplers: Annotated[
        str,
        typer.Option(
            "--samplers",
            "-s",
            help="Comma-separated samplers to compare: entropix, greedy, sample.",
        ),
    ] = "greedy,entropix,sample",
    model: ModelOpt = None,
    max_tokens: Annotated[
        int,
        typer.Option("--max-tokens", "-n", min=1, help="Stop each answer after this many tokens."),
    ] = 64,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seed of every answer (the eval is reproducible by default)."),
    ] = 0,
    profile: ProfileOpt = "reference",
    jsonl: Annotated[
        Path | None,
        typer.Option(
            "--jsonl",
            dir_okay=False,
            help="Write every answer (question, sampler, answer, correct, tokens) here.",
        ),
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Score samplers on a question set: accuracy, mean tokens, tok/s and strategy mix.

    Every sampler answers every question; `sample` uses the profile's T0/k0/p0/m0."""
    from ..engine.config import AUTO_PROFILE, SAMPLERS, load_profile
    from ..lab.evaluate import load_questions

    names = list(dict.fromkeys(s.strip() for s in samplers.split(",") if s.strip()))
    unknown = [s for s in names if s not in SAMPLERS]
    if unknown or not names:
        _fail(
            f"--samplers {samplers}: unknown sampler {unknown[0] if unknown else '(none)'!r};"
            f" choose from {', '.join(SAMPLERS)}"
        )
    _out_path(jsonl, "--jsonl", ".jsonl")
    try:
        items = load_questions(questions)
        name = _model_file_name(model) if profile == AUTO_PROFILE else None
        config = load_profile(profile, model=name)
    except (EntropixError, ValueError) as e:  # one line, before the model loads
        _fail(str(e))
    _guard(_eval, questions, items, names, model, max_tokens, seed, config, jsonl, plain)


def _eval(path, questions, samplers, model, max_tokens, seed, config, jsonl, plain) -> None:
    import contextlib
    import dataclasses

    from ..engine.config import profile_for_model
    from ..engine.records import JsonlWriter
    from ..lab.evaluate import answer_questions, tally
    from ..ui import render as tui

    err = tui.make_console(plain=tui.wants_plain(plain, sys.stderr), stderr=True)
    out = tui.make_console(plain=tui.wants_plain(plain, sys.stdout))
    mdl, tok, info = _load(err, model)
    err.print(tui.render_profile(", ".join(samplers), config, profile_for_model(info.name)))
    answers = []
    with JsonlWriter(jsonl) if jsonl else contextlib.nullcontext() as writer:
        for answer in answer_questions(
            mdl, tok, questions, samplers, config=config, max_tokens=max_tokens, seed=seed
        ):
            answers.append(answer)
            err.print(_answer_line(answer), no_wrap=True, overflow="ellipsis")
            if writer:
                writer.write(answer.record())
        rows = tally(answers)
        if writer:
            writer.write(
                {
                    "summary": {
                        "model": info.name,
                        "questions_file": str(path),
                        "questions": len(questions),
                        "max_tokens": max_tokens,
                        "seed": seed,
                        "config": dataclasses.asdict(config),
                        "samplers": [_row_record(r) for r in rows],
                    }
                }
            )
    out.print(render_eval_table(rows, bar=not tui.wants_plain(plain, sys.stdout)))


def _answer_line(answer: Answer) -> Any:
    from rich.text import Text

    text = " ".join(answer.text.split())
    mark, style = ("✓", "quad.lehv") if answer.correct else ("✗", "ui.error")
    line = Text(f"{mark} ", style=style).append(f"{answer.sampler:<8} {answer.question.id}: ")
    return line.append(text or "(empty)", style="ui.muted")


def _row_record(row: SamplerScore) -> dict[str, Any]:
    return {
        "sampler": row.sampler,
        "questions": row.questions,
        "correct": row.correct,
        "accuracy": row.accuracy,
        "mean_tokens": row.mean_tokens,
        "tokens_per_second": row.tokens_per_second,
        "strategies": row.strategies,
        "quadrants": row.quadrants,
    }


def render_eval_table(rows: list[SamplerScore], *, bar: bool = True) -> Table:
    """One row per sampler: accuracy, mean tokens, decode tok/s, quadrant bar + strategy mix."""
    from rich.table import Table

    from ..ui import render as tui

    table = Table("sampler", "accuracy", "mean tokens", "tok/s", "strategy mix", box=None)
    for r in rows:
        accuracy = f"{r.correct}/{r.questions} {100 * r.accuracy:.0f}%"
        # A plain sampler has one strategy; its quadrant mix says what Entropix would have seen.
        counts = (r.strategies,) if r.sampler == "entropix" else (r.strategies, r.quadrants)
        table.add_row(
            r.sampler,
            accuracy,
            f"{r.mean_tokens:.1f}",
            f"{r.tokens_per_second:.1f}",
            tui.render_mix(r.quadrants, *counts, bar=bar),
        )
    return table
