"""Lab commands that measure: calibrate, eval, tune. Thin: options in, the lab's results out through
`ui.tables`."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EntropixError
from .app import (
    BatchSizeOpt,
    ModelOpt,
    PlainOpt,
    ProfileOpt,
    _fail,
    _group,
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


def _print_table(console, table) -> None:
    """A terminal gets the table at its width; a file or pipe has none, so the table gets room
    for its longest row instead of 80 columns (which cut the strategy mix)."""
    if not console.is_terminal:
        console.width = max(console.width, 200)
    console.print(table)


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
    form: Annotated[
        str | None,
        typer.Option(
            "--form",
            help="reference (the spec's formulas) or relative (ranges over the model's quantiles); "
            "default: the base's.",
        ),
    ] = None,
    batch_size: BatchSizeOpt = None,
    plain: PlainOpt = False,
) -> None:
    """Write a profile whose thresholds sit at quantiles of the model's own entropy/varentropy.

    The prompts are decoded greedily; the profile records every metric's quantiles ([scale])."""
    from ..engine.config import FORMS, load_profile
    from ..lab.calibrate import Quantiles

    try:
        q = Quantiles.parse(quantiles)
    except ValueError as e:
        _fail(f"--quantiles: {e}")
    try:
        base_config = load_profile(base)
    except ValueError as e:
        _fail(f"--base: {e}")
    if form is not None and form not in FORMS:
        _fail(f"--form {form}: choose {' or '.join(FORMS)}")
    _out_path(out, "--out", ".toml")
    run = (prompt_file, out, model, max_tokens, q, base_config, plain, batch_size, form)
    _guard(_calibrate, *run)


def _calibrate(
    prompt_file, out, model, max_tokens, quantiles, base, plain, batch_size=None, form=None
) -> None:
    from ..engine.batch import default_batch_size
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
        samples = collect_samples(
            mdl,
            tok,
            prompts,
            max_tokens=max_tokens,
            batch_size=batch_size or default_batch_size(),
            on_answer=progress,
        )
    config = calibrate_profile(samples, quantiles, base, form)
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
            help='JSONL: {"question": …, "answer" | "number" | "regex": …} per line.',
        ),
    ],
    samplers: Annotated[
        str,
        typer.Option(
            "--samplers",
            "-s",
            help="Comma-separated: greedy, entropix, sample, minp, edt, dynatemp, dslider.",
        ),
    ] = "greedy,entropix,sample",
    model: ModelOpt = None,
    max_tokens: Annotated[
        int,
        typer.Option("--max-tokens", "-n", min=1, help="Stop each answer after this many tokens."),
    ] = 64,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Base seed (each answer's: from it and the question)."),
    ] = 0,
    seeds: Annotated[
        int,
        typer.Option("--seeds", "-k", min=1, help="Answers per question (stochastic samplers)."),
    ] = 1,
    ablate: Annotated[
        bool,
        typer.Option("--ablate", help="Also entropix with each strategy set to argmax."),
    ] = False,
    profile: ProfileOpt = "auto",
    jsonl: Annotated[
        Path | None,
        typer.Option(
            "--jsonl",
            dir_okay=False,
            help="Write every answer and the summary here.",
        ),
    ] = None,
    batch_size: BatchSizeOpt = None,
    plain: PlainOpt = False,
) -> None:
    """Accuracy [95 % CI], paired Δ vs greedy, tokens, tok/s, strategy mix per sampler.
    `sample` uses the profile's T0/k0/p0/m0, as everywhere."""
    from ..engine.sampler import STRATEGIES
    from ..lab.evaluate import Contender, load_questions

    names = _sampler_names(samplers)
    options = _options(names[0], max_tokens=max_tokens, seed=seed, profile=profile, model=model)
    _out_path(jsonl, "--jsonl", ".jsonl")
    try:
        items = load_questions(questions)
    except (EntropixError, ValueError) as e:  # one line, before the model loads
        _fail(str(e))
    contenders = [Contender.named(n) for n in names]
    if ablate:
        contenders += [Contender.ablation(s) for s in STRATEGIES if s != "argmax"]
    _guard(_eval, questions, items, contenders, model, options, seeds, jsonl, plain, batch_size)


def _eval(path, questions, samplers, model, options, seeds, jsonl, plain, batch_size=None):
    import contextlib
    import dataclasses
    import functools

    from ..engine.batch import default_batch_size
    from ..engine.config import profile_for_model
    from ..engine.records import JsonlWriter
    from ..lab.evaluate import answer_questions, tally
    from ..lab.parallel import answer_shared
    from ..lab.stats import LEVEL, N_BOOT
    from ..ui import render as tui
    from ..ui import tables

    err, out = tui.console(plain, stderr=True), tui.console(plain)
    group = _group()  # under mlx.launch each rank answers a share of the questions
    mdl, tok, info = _load(err, model, split=False)
    config, max_tokens, seed = options.config, options.max_tokens, options.seed
    labels = ", ".join(c.label for c in samplers)
    err.print(tui.render_profile(labels, config, profile_for_model(info.name)))
    answer = functools.partial(
        answer_questions,
        mdl,
        tok,
        samplers=samplers,
        config=config,
        max_tokens=max_tokens,
        seed=seed,
        seeds=seeds,
        batch_size=batch_size or default_batch_size(),
    )
    show = lambda a: err.print(tables.answer_line(a), no_wrap=True, overflow="ellipsis")
    if group is None:
        stream = answer(questions)
    else:  # rank 0 shows its own answers as they come, then writes everyone's in order
        stream = iter(answer_shared(answer, questions, group, on_answer=show))
        jsonl = jsonl if group.rank() == 0 else None
    answers = []
    with JsonlWriter(jsonl) if jsonl else contextlib.nullcontext() as writer:
        # `sample` draws with the config's base parameters: `options.params`, as in every command.
        for a in stream:
            answers.append(a)
            if group is None:
                show(a)
            if writer:
                writer.write(a.record())
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
                        "seeds": seeds,
                        "baseline": "greedy",
                        "bootstrap": {"resamples": N_BOOT, "seed": 0, "level": LEVEL},
                        "config": dataclasses.asdict(config),
                        "samplers": [r.record() for r in rows],
                    }
                }
            )
    _print_table(out, tables.eval_table(rows, bar=out.color_system is not None))


@app.command(hidden=True)
def questions(
    write: Annotated[
        bool, typer.Option("--write", help="Rewrite lab/data/{dev,heldout}.jsonl.")
    ] = False,
) -> None:
    """For maintainers: check that the shipped dev / held-out sets are what the generator makes,
    or `--write` them."""
    from ..lab import questions as generator

    if write:
        typer.echo(f"wrote {', '.join(str(p) for p in generator.write_splits())}")
        return
    stale = generator.stale_splits()
    if stale:
        _fail(f"stale: {', '.join(stale)}; run `entropix questions --write`")
    typer.echo("up to date")


# ── tune ──────────────────────────────────────────────────────────────────────────────────────


def _packaged_split(split: str) -> Path:
    from ..lab.questions import split_path

    return split_path(split)


@app.command()
def tune(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", dir_okay=False, help="Write the best profile here (.toml)."),
    ],
    model: ModelOpt = None,
    dev: Annotated[
        Path | None,
        typer.Option("--dev", **InFile, help="Dev questions (default: the packaged set)."),
    ] = None,
    heldout: Annotated[
        Path | None,
        typer.Option("--heldout", **InFile, help="Held-out questions (default: the packaged set)."),
    ] = None,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Score the winner on held-out vs greedy.")
    ] = True,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="Random candidates.")] = 16,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Halving rounds.")] = 3,
    questions: Annotated[
        int, typer.Option("--questions", min=1, help="Dev questions in round 1 (× eta each round).")
    ] = 20,
    eta: Annotated[int, typer.Option("--eta", min=2, help="Keep 1/eta each round.")] = 3,
    seeds: Annotated[int, typer.Option("--seeds", "-k", min=1, help="Answers per question.")] = 1,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1)] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the search and every answer.")] = 0,
    base: Annotated[
        str, typer.Option("--base", help="Profile the unsearched fields come from.")
    ] = "reference",
    plain: PlainOpt = False,
    batch_size: BatchSizeOpt = None,
) -> None:
    """Search ≤ 8 Entropix fields on the dev set (random search + successive halving), write the
    best profile, then report it on the held-out set against greedy with a paired CI."""
    from ..engine.config import load_profile
    from ..lab.evaluate import load_questions
    from ..lab.tune import Budget

    _out_path(out, "--out", ".toml")
    try:
        budget = Budget(candidates=candidates, rounds=rounds, questions=questions, eta=eta)
        base_config = load_profile(base)
        dev_items = load_questions(dev or _packaged_split("dev"))
        held_items = load_questions(heldout or _packaged_split("heldout")) if report else []
    except (EntropixError, ValueError) as e:
        _fail(str(e))
    run = (
        out,
        model,
        dev or _packaged_split("dev"),
        dev_items,
        held_items,
        budget,
        seeds,
        max_tokens,
        seed,
        base_config,
        plain,
        batch_size,
    )
    _guard(_tune, *run)


def _tune(
    out,
    model,
    dev_path,
    dev,
    heldout,
    budget,
    seeds,
    max_tokens,
    seed,
    base,
    plain,
    batch_size=None,
) -> None:
    import time

    from ..engine.batch import default_batch_size
    from ..lab.calibrate import render_profile_toml
    from ..lab.evaluate import Contender, answer_questions, question_scores, tally
    from ..lab.parallel import answer_shared
    from ..lab.tune import render_header
    from ..lab.tune import tune as run_tune
    from ..ui import render as tui
    from ..ui import tables

    err, console = tui.console(plain, stderr=True), tui.console(plain)
    group = _group()  # under mlx.launch each evaluation splits its questions across the ranks
    mdl, tok, info = _load(err, model, split=False)
    t0 = time.perf_counter()

    def answer(questions, contenders, config):
        ask = lambda share: answer_questions(
            mdl,
            tok,
            share,
            contenders,
            config=config,
            max_tokens=max_tokens,
            seed=seed,
            seeds=seeds,
            batch_size=batch_size or default_batch_size(),
        )
        return list(ask(questions) if group is None else answer_shared(ask, questions, group))

    def evaluate(config, questions):
        # Every rank gets every answer, so all take the same search decisions.
        return question_scores(answer(questions, ["entropix"], config)).get("entropix", {})

    def on_round(r: int, pool) -> None:
        best = max(pool, key=lambda c: c.mean)
        err.print(
            f"round {r + 1}: {len(pool)} candidates on {len(best.scores)} dev questions; "
            f"best {best.label} {100 * best.mean:.1f}% ({time.perf_counter() - t0:.0f} s)"
        )

    result = run_tune(base, dev, evaluate, budget=budget, seed=seed, on_round=on_round)
    header = render_header(
        result,
        model=info.name,
        dev_file=str(dev_path),
        max_tokens=max_tokens,
        date=datetime.date.today().isoformat(),
        seeds=seeds,
    )
    if group is None or group.rank() == 0:
        out.write_text(render_profile_toml(result.best.config, header, models=[info.name]), "utf-8")
    minutes = (time.perf_counter() - t0) / 60
    console.print(
        f"wrote {out} (dev {result.dev.points()} %, {result.answers} question "
        f"evaluations, {minutes:.1f} min); use it with --profile {out}"
    )
    if not heldout:
        return
    config = result.best.config
    contenders = [Contender.named("greedy"), Contender("tuned", "entropix")]
    answers = answer(heldout, contenders, config)
    console.print(f"held-out ({len(heldout)} questions), the tuned profile against greedy:")
    _print_table(console, tables.eval_table(tally(answers), bar=console.color_system is not None))
