"""The `entropix` command. Thin: parse options, call the library, pick a renderer.

MLX is imported inside commands only, so `entropix --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer

from .errors import EntropixError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Chat with Llama 3.x models on MLX and watch the Entropix sampler react to uncertainty.",
)

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="A .gguf file, an HF/mlx-community folder, or a name under models/ (default: SmolLM2-135M)."),
]  # fmt: skip
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Stop after this many tokens.")]
SamplerOpt = Annotated[str, typer.Option("--sampler", "-s", help="entropix | greedy | sample.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Make sampling reproducible.")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="Sampler thresholds: reference (the spec's), auto (calibrated for the model, else reference), a name (smollm2) or a TOML path.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override one SamplerConfig field, e.g. --set high_ent=4.2 (repeatable)."),
]  # fmt: skip
TempOpt = Annotated[float, typer.Option("--temp", min=0.0, help="Temperature for --sampler sample.")]
TopKOpt = Annotated[int, typer.Option("--top-k", min=0, help="Top-k for --sampler sample (0 = off).")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Top-p for --sampler sample (1 = off).")]
MinPOpt = Annotated[float, typer.Option("--min-p", min=0.0, max=1.0, help="Min-p for --sampler sample (0 = off).")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", help="System message for the chat template.")]
PlainOpt = Annotated[bool, typer.Option("--plain", help="Plain text, no colours (also when not a terminal or NO_COLOR is set).")]


def _fail(message: str) -> None:
    typer.echo(f"entropix: {message}", err=True)
    raise typer.Exit(1)


def _read_prompt(path: str) -> str:
    if path == "-":
        text = sys.stdin.read()
    else:
        p = Path(path)
        if not p.is_file():
            _fail(f"--prompt-file {path}: no such file; pass a text file (or - for stdin)")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            _fail(f"--prompt-file {path}: not UTF-8 text; pass a plain-text prompt file")
        except OSError as e:
            _fail(f"--prompt-file {path}: cannot read it ({e.strerror}); check its permissions")
    if not text.strip():
        _fail(f"--prompt-file {path}: the prompt is empty; write a prompt into it")
    return text


def _sampling(sampler: str, profile: str, overrides: list[str] | None, temp: float, top_k: int,
              top_p: float, min_p: float, *, model: str | None = None) -> dict[str, Any]:  # fmt: skip
    from .profiles import AUTO_PROFILE, SAMPLERS, load_profile
    from .sampler import SamplingParams

    if sampler not in SAMPLERS:
        choices = f"{', '.join(SAMPLERS[:-1])} or {SAMPLERS[-1]}"
        _fail(f"--sampler {sampler}: unknown sampler; choose {choices}")
    pairs = {}
    for item in overrides or []:
        name, sep, value = item.partition("=")
        if not sep:
            _fail(f"--set {item}: expected FIELD=VALUE, e.g. --set high_ent=4.2")
        pairs[name.strip()] = value.strip()
    try:  # commands call this before `_guard`, so its errors become one line here
        name = _model_file_name(model) if profile == AUTO_PROFILE else None
        config = load_profile(profile, model=name).with_overrides(pairs)
        params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
    except (ValueError, EntropixError) as e:
        _fail(str(e))
    return {"sampler": sampler, "config": config, "params": params}


def _model_file_name(model: str | None) -> str:
    """The model's file or folder name, found without loading it: what `--profile auto` matches."""
    from .model_paths import resolve_model

    return resolve_model(model).name


def _show_profile(console, options: dict[str, Any], model_name: str) -> None:  # noqa: ANN001
    from . import tui
    from .profiles import profile_for_model

    suggested = profile_for_model(model_name)
    console.print(tui.render_profile(options["sampler"], options["config"], suggested))


@app.command()
def run(
    prompt_file: Annotated[str, typer.Option("--prompt-file", "-f", help='Prompt text file, a .jsonl of {"prompt": …} lines (batch), or - for stdin.')],
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 256,
    sampler: SamplerOpt = "entropix",
    seed: SeedOpt = None,
    profile: ProfileOpt = "reference",
    set_: SetOpt = None,
    temp: TempOpt = 0.7,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0,
    raw: Annotated[bool, typer.Option("--raw", help="Tokenize the file as-is instead of wrapping it in the chat template.")] = False,
    system: SystemOpt = None,
    jsonl: Annotated[Optional[Path], typer.Option("--jsonl", help="Write one JSON record per token here.")] = None,
    plain: PlainOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON result object per prompt instead of the text.")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="After each answer, plot entropy and varentropy against the thresholds.")] = False,
) -> None:  # fmt: skip
    """Generate an answer for each prompt in a file, each token coloured by its quadrant."""
    prompts = _read_prompts(prompt_file, system)
    options = _sampling(sampler, profile, set_, temp, top_k, top_p, min_p, model=model)
    _guard(_run, prompts, model, max_tokens, seed, raw, jsonl, plain, as_json, options, plot)


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
            _fail(f"--prompt-file {path}:{number}: not JSON ({e.msg}); write one {{\"prompt\": …}} per line")
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            _fail(f"--prompt-file {path}:{number}: expected an object with a non-empty \"prompt\" string")
        if not isinstance(item.setdefault("system", system), (str, type(None))):
            _fail(f"--prompt-file {path}:{number}: \"system\" must be a string")
        prompts.append(item)
    return prompts


def _run(prompts, model, max_tokens, seed, raw, jsonl, plain, as_json, options, plot=False) -> None:  # noqa: ANN001
    import mlx.core as mx

    from . import tui
    from .export import JsonlWriter, summary_record
    from .generate import Summary, generate

    err = tui.make_console(plain=tui.wants_plain(plain, sys.stderr), stderr=True)
    out = tui.make_console(plain=tui.wants_plain(plain, sys.stdout))
    mdl, tok, info = _load(err, model)
    _show_profile(err, options, info.name)
    seed = seed if seed is not None else _random_seed()
    # Everything `entropix replay --check` needs to decode the same tokens again.
    context = {"model": info.name, "device": info.device, "seed": seed, "sampler": options["sampler"],
               "config": options["config"], "params": options["params"], "model_path": str(info.path.resolve()),
               "max_tokens": max_tokens, "raw": raw, "prompt_count": len(prompts)}  # fmt: skip
    with JsonlWriter(jsonl) if jsonl else contextlib.nullcontext() as writer:
        for i, item in enumerate(prompts):
            if len(prompts) > 1 and not as_json:
                out.print(tui.render_header(i + 1, len(prompts), item["prompt"]))
            ids = _prompt_ids(tok, item["prompt"], item["system"], raw)
            events: list = []
            try:
                stream = generate(mdl, tok, ids, max_tokens=max_tokens, seed=seed, **options)
                _stream_answer(stream, events, None if as_json else out, writer)
            finally:  # a Ctrl-C still leaves the summary of what was generated
                summary, peak = Summary.from_events(events), mx.get_peak_memory()
                record = summary_record(summary, prompt_index=i, prompt=item["prompt"],
                                        system=item["system"], peak_memory=peak, **context)  # fmt: skip
                if writer:
                    writer.write(record)
                if not as_json:
                    err.print(tui.render_summary(summary, peak))
            if plot and not as_json:
                from .plots import render_plots

                out.print(render_plots(events, options["config"]))
            if as_json:
                result = {"prompt": item["prompt"], "text": "".join(e.text for e in events)} | record
                typer.echo(json.dumps(result, ensure_ascii=False))


def _prompt_ids(tok, text: str, system: str | None, raw: bool) -> list[int]:  # noqa: ANN001
    if raw:
        return tok.encode(text, add_special=True)
    # A file's final newline is not part of the message (it derails small models: "Paris." became
    # French nonsense on SmolLM2); --raw keeps the text byte for byte.
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text.strip()}]
    return tok.apply_chat_template(messages)


def _stream_answer(stream, events: list, out, writer) -> None:  # noqa: ANN001
    """Show each token on `out` (None: show nothing) and record it in `events` and `writer`."""
    from . import tui
    from .export import event_record

    with tui.AnswerView(out) if out is not None else contextlib.nullcontext() as view:
        for ev in stream:
            events.append(ev)
            if view is not None:
                view.token(ev)
            if writer is not None:
                writer.write(event_record(ev))


def _load(console, model: str | None) -> tuple:  # noqa: ANN001
    """Load with a spinner naming the model, then one line: name, size, quantization, device, time."""
    from . import tui
    from .loading import load

    with tui.loading(console, model) as progress:
        loaded = load(model, progress=progress)
    console.print(tui.render_model_info(loaded[2]))
    notice = tui.render_blas_notice(loaded[2].blas)
    if notice is not None:
        console.print(notice)
    return loaded


def _random_seed() -> int:
    import os

    return int.from_bytes(os.urandom(4), "little")


@app.command()
def chat(
    model: ModelOpt = None,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = 512,
    sampler: SamplerOpt = "entropix",
    seed: SeedOpt = None,
    profile: ProfileOpt = "reference",
    set_: SetOpt = None,
    temp: TempOpt = 0.7,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0,
    plain: PlainOpt = False,
) -> None:  # fmt: skip
    """Talk to the model, every token coloured by its quadrant (inside, /help lists the commands)."""
    options = _sampling(sampler, profile, set_, temp, top_k, top_p, min_p, model=model)
    _guard(_chat, model, system, max_tokens, seed, plain, options)


def _chat(model, system, max_tokens, seed, plain, options) -> None:  # noqa: ANN001
    from . import tui
    from .chat import ChatSession
    from .chat_loop import run_chat
    from .chat_view import ChatView

    plain = tui.wants_plain(plain, sys.stdout)
    console = tui.make_console(plain=plain)
    mdl, tok, info = _load(console, model)
    _show_profile(console, options, info.name)
    seed = seed if seed is not None else _random_seed()
    session = ChatSession(mdl, tok, system=system, max_tokens=max_tokens, seed=seed,
                          context_limit=info.context_length, **options)  # fmt: skip
    run_chat(session, ChatView(console, plain=plain), model=info.name, device=info.device)


@app.command()
def tokenize(
    model: ModelOpt = None,
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="Text to tokenize.")] = None,
    file: Annotated[Optional[str], typer.Option("--file", "-f", help="File to tokenize (- for stdin).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {ids, pieces} as JSON.")] = False,
) -> None:  # fmt: skip
    """Show how the model's tokenizer splits text (special-token text is parsed as special tokens)."""
    if (text is None) == (file is None):
        _fail("tokenize: pass exactly one of --text or --file")
    source = text if text is not None else _read_prompt(file)
    _guard(_tokenize, model, source, as_json)


def _tokenize(model: str | None, source: str, as_json: bool) -> None:
    from .loading import load_tokenizer

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
def models() -> None:
    """List the models under models/ with architecture, size and quantization."""
    _guard(_models)


def _models() -> None:
    from rich.table import Table

    from . import tui
    from .loading import list_models, runtime_summary

    console = tui.make_console(plain=not sys.stdout.isatty())
    table = Table("name", "arch", "size", "quantization", box=None)
    for m in list_models():
        table.add_row(m.name, m.arch, f"{m.size_bytes / 2**20:.0f} MiB", m.quantization)
    console.print(table)
    console.print(runtime_summary(), style="ui.muted")


def _guard(fn, *args: Any) -> None:  # noqa: ANN001
    """Turn the library's actionable errors into one red line and exit 1; never a traceback."""
    try:
        fn(*args)
    except (EntropixError, ValueError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130) from None


def main() -> None:
    """Entry point: click's multi-line usage errors become one line naming the bad flag."""
    from . import blas

    blas.preload_blas()
    try:
        from typer._click.exceptions import UsageError  # typer ≥ 0.20 raises its vendored click's
    except ImportError:
        UsageError = click.UsageError
    try:
        code = app(standalone_mode=False)
    except (click.UsageError, UsageError) as e:
        hint = f" (see `entropix {e.ctx.command.name} --help`)" if e.ctx and e.ctx.command else ""
        typer.echo(f"entropix: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except (click.Abort, typer.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# The lab's commands live in their own modules and reuse this module's options and error handling;
# imported last so those names exist. They register on `app` with `@app.command()`.
from . import cli_explore, cli_measure  # noqa: E402, F401
