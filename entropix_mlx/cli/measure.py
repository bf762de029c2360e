"""Lab commands that measure: calibrate, eval. Thin: options in, the lab's results out through
`ui.tables`."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EntropixError
from .app import (
    ModelOpt,
    PlainOpt,
    ProfileOpt,
    _fail,
    _guard,
    _load,
    _options,
    _sampler_names,
    app,
)

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
            help='Prompts: .jsonl with one {"prompt": …} per line, or any other text file with one '
            "prompt per line.",
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
    from ..ui import tables

    prompts = load_prompts(prompt_file)
    err = tui.console(plain, stderr=True)
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
    console = tui.console(plain)
    console.print(tables.calibration_report(out, config, base, samples, plain))


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
            help="Comma-separated samplers to compare, each once: entropix, greedy, sample.",
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

    Every sampler answers every question; `sample` uses the profile's T0/k0/p0/m0, as everywhere."""
    from ..lab.evaluate import load_questions

    names = _sampler_names(samplers)
    options = _options(names[0], max_tokens=max_tokens, seed=seed, profile=profile, model=model)
    _out_path(jsonl, "--jsonl", ".jsonl")
    try:
        items = load_questions(questions)
    except (EntropixError, ValueError) as e:  # one line, before the model loads
        _fail(str(e))
    _guard(_eval, questions, items, names, model, options, jsonl, plain)


def _eval(path, questions, samplers, model, options, jsonl, plain) -> None:
    import contextlib
    import dataclasses

    from ..engine.config import profile_for_model
    from ..engine.records import JsonlWriter
    from ..lab.evaluate import answer_questions, tally
    from ..ui import render as tui
    from ..ui import tables

    err, out = tui.console(plain, stderr=True), tui.console(plain)
    mdl, tok, info = _load(err, model)
    config, max_tokens, seed = options.config, options.max_tokens, options.seed
    err.print(tui.render_profile(", ".join(samplers), config, profile_for_model(info.name)))
    answers = []
    with JsonlWriter(jsonl) if jsonl else contextlib.nullcontext() as writer:
        # `sample` draws with the config's base parameters: `options.params`, as in every command.
        for answer in answer_questions(
            mdl, tok, questions, samplers, config=config, max_tokens=max_tokens, seed=seed
        ):
            answers.append(answer)
            err.print(tables.answer_line(answer), no_wrap=True, overflow="ellipsis")
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
                        "samplers": [r.record() for r in rows],
                    }
                }
            )
    out.print(tables.eval_table(rows, bar=out.color_system is not None))
