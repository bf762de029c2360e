"""`entropix run`, `tokenize` and `models`: one-shot generation and looking at the model."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import (
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    PlainOpt,
    ProfileOpt,
    SamplerOpt,
    SeedOpt,
    SetOpt,
    SystemOpt,
    TempOpt,
    TopKOpt,
    TopPOpt,
    _fail,
    _follower,
    _from_rank_zero,
    _guard,
    _load,
    _options,
    _prompt_ids,
    _read_prompt,
    _show_model,
    _show_profile,
    _stream_answer,
    app,
)


@app.command()
def run(
    prompt_file: Annotated[
        str,
        typer.Option(
            "--prompt-file",
            "-f",
            help='Prompt text file, a .jsonl of {"prompt": …} lines (batch), or - for stdin.',
        ),
    ],
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 256,
    sampler: SamplerOpt = "entropix",
    seed: SeedOpt = None,
    profile: ProfileOpt = "auto",
    set_: SetOpt = None,
    temp: TempOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="Tokenize the file as-is instead of wrapping it in the chat template."
        ),
    ] = False,
    system: SystemOpt = None,
    jsonl: Annotated[
        Path | None, typer.Option("--jsonl", help="Write one JSON record per token here.")
    ] = None,
    plain: PlainOpt = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON result object per prompt instead of the text."),
    ] = False,
    plot: Annotated[
        bool,
        typer.Option(
            "--plot", help="After each answer, plot entropy and varentropy against the thresholds."
        ),
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help="Prompts of a .jsonl decoded at once, each printed whole when done (1: stream).",
        ),
    ] = 1,
) -> None:
    """Generate an answer for each prompt in a file, each token coloured by its quadrant.

    With a .jsonl of prompts and --batch-size N > 1, N prompts decode together and each answer is
    printed whole, in prompt order, once it and those before it are done (1: tokens stream)."""
    prompts = None if _follower() else _read_prompts(prompt_file, system)  # rank 0 sends them
    options = _options(
        sampler,
        max_tokens=max_tokens,
        seed=seed,
        profile=profile,
        overrides=set_,
        temp=temp,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        model=model,
    )
    _guard(_run, prompt_file, prompts, model, raw, jsonl, plain, as_json, options, plot, batch_size)


def _read_prompts(path: str, system: str | None) -> list[dict[str, Any]]:
    """A text file is one prompt; a .jsonl file holds one {"prompt": …, "system"?: …} per line."""
    text = _read_prompt(path)
    if not path.endswith(".jsonl"):
        return [{"prompt": text, "system": system}]
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(
                f"--prompt-file {path}:{number}: not JSON ({e.msg}); "
                'write one {"prompt": …} per line'
            )
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("prompt"), str)
            or not item["prompt"].strip()
        ):
            _fail(
                f"--prompt-file {path}:{number}: "
                'expected an object with a non-empty "prompt" string'
            )
        if not isinstance(item.setdefault("system", system), (str, type(None))):
            _fail(f'--prompt-file {path}:{number}: "system" must be a string')
        prompts.append(item)
    return prompts


def _answers(mdl, tok, ids, options, batch_size) -> Iterator[Iterable]:
    """Each prompt's event stream, in prompt order: streamed one by one, or whole from a batch."""
    from ..engine.batch import Job, decode_jobs
    from ..engine.generate import generate

    if batch_size <= 1 or len(ids) <= 1:
        for prompt_ids in ids:
            yield generate(mdl, tok, prompt_ids, **options.generate_kwargs())
        return
    jobs = [Job(prompt_ids, **options.generate_kwargs()) for prompt_ids in ids]
    for _, events in decode_jobs(mdl, tok, jobs, batch_size=batch_size):
        yield events


def _run(path, prompts, model, raw, jsonl, plain, as_json, options, plot=False, batch_size=1):
    import mlx.core as mx

    from ..engine.generate import Summary
    from ..engine.records import JsonlWriter, summary_record
    from ..ui import render as tui

    err, out = tui.console(plain, stderr=True), tui.console(plain)
    mdl, tok, info = _load(err, model, quiet=True)
    prompts = _from_rank_zero(prompts)  # under mlx.launch: rank 0 read them
    jsonl = None if _follower() else jsonl
    prompt_ids = [_prompt_ids(tok, item["prompt"], item["system"], raw) for item in prompts]
    _check_fits(path, prompt_ids, mdl.args.max_position_embeddings)  # before anything is printed
    _show_model(err, info)
    _show_profile(err, options.sampler, options.config, info.name)
    # Everything `entropix replay --check` needs to decode the same tokens again.
    context = {
        "model": info.name,
        "device": info.device,
        "seed": options.seed,
        "sampler": options.sampler,
        "config": options.config,
        "params": options.params,
        "model_path": str(info.path.resolve()),
        "max_tokens": options.max_tokens,
        "raw": raw,
        "prompt_count": len(prompts),
    }
    answers = _answers(mdl, tok, prompt_ids, options, batch_size)
    with JsonlWriter(jsonl) if jsonl else contextlib.nullcontext() as writer:
        for i, item in enumerate(prompts):
            if len(prompts) > 1 and not as_json:
                out.print(tui.render_header(i + 1, len(prompts), item["prompt"]))
            events: list = []
            try:
                _stream_answer(next(answers), events, None if as_json else out, writer)
            finally:  # a Ctrl-C still leaves the summary of what was generated
                summary, peak = Summary.from_events(events), mx.get_peak_memory()
                record = summary_record(
                    summary,
                    prompt_index=i,
                    prompt=item["prompt"],
                    system=item["system"],
                    peak_memory=peak,
                    **context,
                )
                if writer:
                    writer.write(record)
                if not as_json:
                    err.print(tui.render_summary(summary, peak))
            if plot and not as_json:
                from ..ui.plots import render_plots

                out.print(render_plots(events, options.config))
            if as_json:
                result = {
                    "prompt": item["prompt"],
                    "text": "".join(e.text for e in events),
                } | record
                typer.echo(json.dumps(result, ensure_ascii=False))


def _check_fits(path: str, prompt_ids: list[list[int]], limit: int) -> None:
    """One line and exit 1 when a prompt leaves no room in the model's context to answer."""
    for i, ids in enumerate(prompt_ids):
        if len(ids) >= limit:
            which = f"prompt {i + 1}" if len(prompt_ids) > 1 else "the prompt"
            _fail(
                f"--prompt-file {path}: {which} is {len(ids)} tokens, which leaves no room in the"
                f" model's context of {limit} tokens; shorten it"
            )


@app.command()
def tokenize(
    model: ModelOpt = None,
    text: Annotated[str | None, typer.Option("--text", "-t", help="Text to tokenize.")] = None,
    file: Annotated[
        str | None, typer.Option("--file", "-f", help="File to tokenize (- for stdin).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {ids, pieces} as JSON.")] = False,
) -> None:
    """Show how the model's tokenizer splits text (special-token text becomes special tokens)."""
    if (text is None) == (file is None):
        _fail("tokenize: pass exactly one of --text or --file")
    source = text if text is not None else _read_prompt(file)
    _guard(_tokenize, model, source, as_json)


def _tokenize(model: str | None, source: str, as_json: bool) -> None:
    from ..model.load import load_tokenizer

    tok = load_tokenizer(model)
    ids = tok.encode(source)
    pieces = [tok.token_piece(i) for i in ids]
    if as_json:
        typer.echo(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
        return
    typer.echo(" ".join(str(i) for i in ids))
    typer.echo(" ".join(repr(p) for p in pieces))
    typer.echo(f"{len(ids)} tokens")


@app.command()
def models(plain: PlainOpt = False) -> None:
    """List the models under models/ with architecture, size and quantization."""
    _guard(_models, plain)


def _models(plain: bool) -> None:
    from rich.table import Table

    from ..model.load import list_models, resident_estimate, runtime_summary
    from ..ui import render as tui

    console = tui.console(plain)
    table = Table("name", "arch", "size", "quantization", "resident", box=None)
    for m in list_models():
        size, resident = m.size_bytes / 2**20, resident_estimate(m) / 2**20
        table.add_row(m.name, m.arch, f"{size:.0f} MiB", m.quantization, f"~{resident:.0f} MiB")
    console.print(table)
    console.print(runtime_summary(), style="ui.muted")
