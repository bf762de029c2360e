"""The typer app and what every command shares: options, prompt reading, loading, one-line errors.

MLX is imported inside commands only, so `entropix --help` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..engine.config import SAMPLERS, SamplerConfig  # MLX-free
from ..errors import EntropixError

if TYPE_CHECKING:
    from ..engine.options import DecodingOptions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Chat with Llama 3.x models on MLX and watch the Entropix sampler react to uncertainty.",
)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="A .gguf file, an HF/mlx-community folder, or a name under models/ "
        "(default: SmolLM2-135M).",
    ),
]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-tokens", "-n", min=1, help="Stop after this many tokens.")
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Rows at once (16; on GPU 32)."),
]
_BASE = SamplerConfig()  # the reference profile: what `--help` quotes for `--sampler sample`
SAMPLE_MEANS = (
    "`sample` draws with the profile's base parameters, in every command (reference:"
    f" T {_BASE.temperature:g}, top-k {_BASE.top_k}, top-p {_BASE.top_p:g}, min-p {_BASE.min_p:g})"
)
SAMPLE_FLAGS = "--temp, --top-k, --top-p and --min-p replace them one by one"
SamplerOpt = Annotated[
    str,
    typer.Option(
        "--sampler",
        "-s",
        help=f"{' | '.join(SAMPLERS)}. {SAMPLE_MEANS}; {SAMPLE_FLAGS}.",
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Make sampling reproducible.")]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        help=(
            "Sampler profile: auto (the model's own, else reference), reference (the spec's),"
            " a packaged name (smollm2-tuned) or a TOML path."
        ),
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override one SamplerConfig field, e.g. --set high_ent=4.2 (repeatable)."
    ),
]
TempOpt = Annotated[
    float | None,
    typer.Option("--temp", min=0.0, help="Temperature of `sample` (default: the profile's)."),
]
TopKOpt = Annotated[
    int | None,
    typer.Option("--top-k", min=0, help="Top-k of `sample`, 0 = off (default: the profile's)."),
]
TopPOpt = Annotated[
    float | None,
    typer.Option(
        "--top-p", min=0.0, max=1.0, help="Top-p of `sample`, 1 = off (default: the profile's)."
    ),
]
MinPOpt = Annotated[
    float | None,
    typer.Option(
        "--min-p", min=0.0, max=1.0, help="Min-p of `sample`, 0 = off (default: the profile's)."
    ),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", help="System message for the chat template.")
]
PlainOpt = Annotated[
    bool,
    typer.Option(
        "--plain", help="Plain text, no colours (also when not a terminal or NO_COLOR is set)."
    ),
]


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


def _options(
    sampler: str,
    *,
    max_tokens: int,
    seed: int | None,
    profile: str = "auto",
    overrides: list[str] | None = None,
    temp: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    model: str | None = None,
) -> DecodingOptions:
    """Every command's decoding options, built here and only here (errors: one line, exit 1)."""
    from ..engine.config import AUTO_PROFILE, check_sampler, load_profile
    from ..engine.options import decoding_options

    try:
        check_sampler(sampler)
    except ValueError as e:
        _fail(f"--sampler {sampler}: {e}")
    pairs = {}
    for item in overrides or []:
        name, sep, value = item.partition("=")
        if not sep:
            _fail(f"--set {item}: expected FIELD=VALUE, e.g. --set high_ent=4.2")
        pairs[name.strip()] = value.strip()
    try:  # commands call this before `_guard`, so its errors become one line here
        name = _model_file_name(model) if profile == AUTO_PROFILE else None
        config = load_profile(profile, model=name).with_overrides(pairs)
        options = decoding_options(
            sampler,
            config,
            max_tokens=max_tokens,
            seed=seed,
            temperature=temp,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
        )
    except (ValueError, EntropixError) as e:
        _fail(str(e))
    return _from_rank_zero(options)  # under mlx.launch: rank 0's random seed on every rank


def _sampler_names(text: str) -> tuple[str, ...]:
    """`--samplers a,b` (compare, eval): each known and named once, else one line and exit 1."""
    from ..engine.config import sampler_names

    try:
        return sampler_names(text)
    except ValueError as e:
        _fail(f"--samplers {text}: {e}")


def _model_file_name(model: str | None) -> str:
    """The model's file or folder name, found without loading it: what `--profile auto` matches."""
    from ..model.paths import resolve_model

    return resolve_model(model).name


def _show_profile(console, sampler: str, config: SamplerConfig, model_name: str) -> None:
    from ..engine.config import profile_for_model
    from ..ui import render as tui

    console.print(tui.render_profile(sampler, config, profile_for_model(model_name)))


def _prompt_ids(tok, text: str, system: str | None, raw: bool) -> list[int]:
    from ..tokenize.chat_template import chat_messages

    if raw:
        return tok.encode(text, add_special=True)
    # A file's final newline is not part of the message (it derails small models: "Paris." became
    # French nonsense on SmolLM2); --raw keeps the text byte for byte.
    return tok.apply_chat_template(chat_messages(text.strip(), system=system))


def _stream_answer(stream, events: list, out, writer) -> None:
    """Show each token on `out` (None: show nothing) and record it in `events` and `writer`."""
    from ..engine.records import event_record
    from ..ui import render as tui

    with tui.AnswerView(out) if out is not None else contextlib.nullcontext() as view:
        for ev in stream:
            events.append(ev)
            if view is not None:
                view.token(ev)
            if writer is not None:
                writer.write(event_record(ev))


def _load(console, model: str | None, *, quiet: bool = False, split: bool = True) -> tuple:
    """Load with a spinner naming the model, then (unless `quiet`) `_show_model`'s line. Under
    mlx.launch the ranks connect first, and `split` shares the model across them (tensor
    parallelism)."""
    from ..model import backend
    from ..model.distributed import shard
    from ..model.load import load
    from ..ui import render as tui

    group = _group()
    # Tensor parallelism splits Linear / QuantizedLinear layers, not the packed CPU kernels' ones.
    sharded = group is not None and split
    layout = "dense" if sharded and backend.on_cpu() else "auto"
    with tui.loading(console, model) as progress:
        loaded = load(model, layout=layout, progress=progress)
    if sharded:
        shard(loaded[0], group)
    if not quiet:
        _show_model(console, loaded[2])
    return loaded


def _show_model(console, info) -> None:
    """One line: name, size, quantization, layout, resident size, device, time; and a notice on
    a slow BLAS or quantized weights that could not stay quantized."""
    from ..ui import render as tui

    console.print(tui.render_model_info(info))
    for notice in (tui.render_blas_notice(info.blas), tui.render_notice(info.notice)):
        if notice is not None:
            console.print(notice)


def _from_rank_zero(value: Any) -> Any:
    """Under mlx.launch, rank 0's `value` on every rank (options and their random seed, prompts),
    so every rank decodes the same tokens; otherwise `value` itself."""
    group = _group()
    if group is None:
        return value
    from ..model.distributed import broadcast_object

    return broadcast_object(value, group)


def _follower() -> bool:
    """Whether mlx.launch started this process as a rank other than 0 (which reads no input)."""
    from ..model.launch import launch_rank, launched

    return launched() and launch_rank() > 0


@functools.cache
def _group():
    """The mlx.launch group, connected once per process; None when this process runs alone."""
    from ..model.launch import launched

    if not launched():
        return None
    from ..model.distributed import connect

    try:
        group = connect()
    except EntropixError as e:
        _fail(str(e))
    return group if group.size() > 1 else None


def _guard(fn, *args: Any) -> None:
    """Turn the library's actionable errors into one red line and exit 1; never a traceback."""
    try:
        fn(*args)
    except (EntropixError, ValueError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130) from None
