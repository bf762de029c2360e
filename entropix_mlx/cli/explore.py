"""Lab commands that look at runs: compare, replay, plot. Thin, like every command module.

MLX is imported inside command bodies only (through the helpers), so `entropix --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .app import (
    SAMPLE_MEANS,
    MaxTokensOpt,
    ModelOpt,
    PlainOpt,
    ProfileOpt,
    SeedOpt,
    SetOpt,
    SystemOpt,
    TempOpt,
    TopPOpt,
    _guard,
    _load,
    _options,
    _prompt_ids,
    _read_prompt,
    _sampler_names,
    _show_profile,
    _stream_answer,
    app,
)

RunFile = Annotated[
    Path,
    typer.Argument(
        metavar="RUN.jsonl",
        help="A file written by `entropix run --jsonl` (or chat's /save).",
        dir_okay=False,
    ),
]
PlotOpt = Annotated[
    bool, typer.Option("--plot", help="Also plot entropy and varentropy against the thresholds.")
]
HeightOpt = Annotated[int, typer.Option("--height", min=8, help="Rows per chart.")]


@app.command()
def compare(
    prompt_file: Annotated[
        str, typer.Option("--prompt-file", "-f", help="Prompt text file, or - for stdin.")
    ],
    samplers: Annotated[
        str,
        typer.Option(
            "--samplers",
            help=f"Comma-separated, each once: entropix, greedy, sample. {SAMPLE_MEANS}.",
        ),
    ] = "greedy,entropix,sample",
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 128,
    seed: SeedOpt = None,
    profile: ProfileOpt = "auto",
    set_: SetOpt = None,
    temp: TempOpt = None,
    top_p: TopPOpt = None,
    system: SystemOpt = None,
    plain: PlainOpt = False,
    plot: PlotOpt = False,
) -> None:
    """Decode one prompt with each sampler (same model and seed); show the answers side by side.

    The first token where the answers part is marked », and each column ends with its token
    count, decode speed, mean entropy and strategy mix.
    """
    names = _sampler_names(samplers)
    text = _read_prompt(prompt_file)
    options = _options(
        names[0],
        max_tokens=max_tokens,
        seed=seed,
        profile=profile,
        overrides=set_,
        temp=temp,
        top_p=top_p,
        model=model,
    )
    _guard(_compare, text, system, model, plain, plot, [options.with_sampler(n) for n in names])


def _compare(text, system, model, plain, plot, options) -> None:
    from ..engine.generate import Summary, generate
    from ..engine.tokens import first_difference
    from ..lab import compare
    from ..ui import compare as compare_view
    from ..ui import render as tui

    err, out = tui.console(plain, stderr=True), tui.console(plain)
    mdl, tok, info = _load(err, model)
    shown = "entropix" if any(o.sampler == "entropix" for o in options) else options[0].sampler
    _show_profile(err, shown, options[0].config, info.name)
    ids = _prompt_ids(tok, text, system, raw=False)
    columns = []
    with compare_view.decoding(err, options[0].max_tokens) as progress:
        for opt in options:
            events = []
            for ev in generate(mdl, tok, ids, **opt.generate_kwargs()):
                events.append(ev)
                progress(opt.sampler, len(events))
            columns.append(compare.Column(opt.sampler, tuple(events), Summary.from_events(events)))
    at = first_difference(*(c.token_ids for c in columns))
    seed = options[0].seed
    out.print(compare_view.render_compare(columns, at, seed=seed, bar=out.color_system is not None))
    if plot:
        from ..ui.plots import render_plots

        for col, opt in zip(columns, options, strict=True):
            out.print(render_plots(col.events, opt.config, title=col.sampler))


@app.command()
def replay(
    path: RunFile,
    plot: PlotOpt = False,
    plain: PlainOpt = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Decode the run again with its recorded model, prompt, sampler, config and seed; "
            "exit 1 if any token differs.",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="With --check: use this model instead of the recorded one."
        ),
    ] = None,
) -> None:
    """Show a saved run again, exactly as `entropix run` printed it, without loading a model.

    Tokens and headers go to stdout and summaries to stderr, as in the run. --check instead
    re-decodes every answer and reports whether the tokens are identical.
    """
    _guard(_check if check else _replay, path, plot, plain, model)


def _replay(path: Path, plot: bool, plain: bool, model: str | None) -> None:
    from ..lab.replay import load_run, plot_thresholds
    from ..ui import render as tui
    from ..ui.plots import render_plots

    run = load_run(path)
    thresholds = plot_thresholds(run) if plot else [None] * len(run.answers)  # fail before output
    err, out = tui.console(plain, stderr=True), tui.console(plain)
    err.print(_describe(run.context, path), style="ui.muted")
    for answer, limits in zip(run.answers, thresholds, strict=True):
        ctx = answer.context
        if ctx.get("prompt_count", 1) > 1 and "prompt" in ctx:  # as `run` heads a batch's answers
            out.print(
                tui.render_header(ctx["prompt_index"] + 1, ctx["prompt_count"], ctx["prompt"])
            )
        _stream_answer(iter(answer.events), [], out, None)
        err.print(tui.render_summary(answer.summary, ctx.get("peak_memory")))
        if answer.cut_off:
            err.print("the run stopped before writing this answer's summary", style="ui.muted")
        if limits is not None:
            out.print(render_plots(answer.events, limits))


def _describe(context: dict[str, Any], path: Path) -> str:
    keys = ("model", "device", "sampler", "seed")
    parts = [f"{k} {context[k]}" if k == "seed" else str(context[k]) for k in keys if k in context]
    profile = (context.get("config") or {}).get("profile")
    return " · ".join([f"replay of {path}", *parts] + ([f"profile {profile}"] if profile else []))


def _check(path: Path, plot: bool, plain: bool, model: str | None) -> None:
    from ..engine.generate import generate
    from ..lab.replay import CheckResult, load_run, recipe
    from ..ui import render as tui

    run = load_run(path)
    recipes = [recipe(a, i + 1, path, model) for i, a in enumerate(run.answers)]
    err = tui.console(plain, stderr=True)
    mdl, tok, _ = _load(err, recipes[0].model)
    results = []
    for i, (answer, r) in enumerate(zip(run.answers, recipes, strict=True)):
        ids = _prompt_ids(tok, r.prompt, r.system, r.raw)
        stream = generate(mdl, tok, ids, **r.options.generate_kwargs())
        decoded = tuple(ev.token_id for ev in stream)
        results.append(CheckResult(i + 1, tuple(ev.token_id for ev in answer.events), decoded))
        typer.echo(results[-1].describe())
    if any(r.difference is not None for r in results):
        typer.echo(f"{path}: the tokens differ from the recorded run", err=True)
        raise typer.Exit(1)
    typer.echo(f"{path}: identical: every token reproduces")


@app.command()
def plot(
    path: RunFile,
    height: HeightOpt = 14,
    width: Annotated[
        int | None,
        typer.Option("--width", min=40, help="Columns (default: the terminal's width)."),
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Plot a saved run: entropy and varentropy per token against the sampler's thresholds, and
    the entropy–varentropy plane with each token marked by its quadrant. No model is loaded."""
    _guard(_plot, path, height, width, plain)


def _plot(path: Path, height: int, width: int | None, plain: bool) -> None:
    from ..lab.replay import load_run, plot_thresholds
    from ..ui import render as tui
    from ..ui.plots import render_plots

    run = load_run(path)
    out = tui.console(plain)
    many = len(run.answers) > 1
    for i, (answer, limits) in enumerate(zip(run.answers, plot_thresholds(run), strict=True)):
        title = f"answer {i + 1}" if many else None
        out.print(render_plots(answer.events, limits, width=width, height=height, title=title))
