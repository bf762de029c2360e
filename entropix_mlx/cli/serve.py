"""`entropix serve`: the OpenAI-compatible HTTP server. Thin, like cli.py.

Starlette, uvicorn and MLX are imported inside the command only, so `entropix --help` stays fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .app import ModelOpt, ProfileOpt, SamplerOpt, SetOpt, _fail, _guard, _options, app

HostOpt = Annotated[
    str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")
]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")]
ServeMaxTokensOpt = Annotated[
    int,
    typer.Option("--max-tokens", "-n", min=1, help="Cap on a request's max_tokens (its default)."),
]
QueueOpt = Annotated[
    int, typer.Option("--queue", min=1, help="Requests that may wait; more get 429 + Retry-After.")
]
SlotsOpt = Annotated[
    int,
    typer.Option("--cache-slots", min=1, help="Prompt caches, reused by longest common prefix."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", help="Require the header Authorization: Bearer KEY (not /health)."),
]
OriginOpt = Annotated[
    str | None,
    typer.Option(
        "--allowed-origin",
        help="Let web pages from this origin call the API (CORS), e.g. http://localhost:3000.",
    ),
]
NoMetricsOpt = Annotated[
    bool, typer.Option("--no-metrics", help="Leave the per-token `entropix` object out.")
]
SaveDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--save-dir",
        file_okay=False,
        help="Save each answer as DIR/<id>.jsonl (what `entropix plot` and `replay` read).",
    ),
]


@app.command()
def serve(
    model: ModelOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    sampler: SamplerOpt = "entropix",
    profile: ProfileOpt = "auto",
    set_: SetOpt = None,
    max_tokens: ServeMaxTokensOpt = 512,
    queue: QueueOpt = 8,
    cache_slots: SlotsOpt = 2,
    api_key: KeyOpt = None,
    allowed_origin: OriginOpt = None,
    no_metrics: NoMetricsOpt = False,
    save_dir: SaveDirOpt = None,
) -> None:
    """Serve the model over the OpenAI HTTP API, streaming every token's Entropix metrics."""
    options = _options(
        sampler, max_tokens=max_tokens, seed=0, profile=profile, overrides=set_, model=model
    )
    if save_dir is not None:
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"--save-dir {save_dir}: cannot create it ({e.strerror}); pick another folder")
    _guard(
        _serve,
        model,
        host,
        port,
        options,
        max_tokens,
        queue,
        cache_slots,
        api_key,
        allowed_origin,
        no_metrics,
        save_dir,
    )


def _serve(
    model,
    host,
    port,
    options,
    max_tokens,
    queue,
    cache_slots,
    api_key,
    allowed_origin,
    no_metrics,
    save_dir,
) -> None:
    from ..serve.app import Server, Settings
    from ..serve.mlx_engine import load_engine
    from ..serve.runner import bind, serve
    from ..serve.worker import Worker

    def log(line: str) -> None:
        typer.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)

    sock = bind(host, port)  # a busy port fails here, before the model loads
    shown = host if ":" not in host else f"[{host}]"
    url = f"http://{shown}:{sock.getsockname()[1]}"
    config = options.config

    def ready(engine) -> None:
        info = engine.info
        typer.echo(
            f"serving {info.name} at {url}/v1 · sampler {options.sampler} · profile "
            f"{config.profile} · {info.device} · queue {queue} · cache slots {cache_slots}",
            err=True,
        )

    def failed(error: BaseException) -> None:
        typer.echo(f"entropix: {error}", err=True)

    worker = Worker(
        lambda: load_engine(model, cache_slots=cache_slots),
        queue_size=queue,
        on_ready=ready,
        on_error=failed,
    )
    settings = Settings(
        sampler=options.sampler,
        config=config,
        max_tokens=max_tokens,
        cache_slots=cache_slots,
        api_key=api_key,
        allowed_origin=allowed_origin,
        metrics=not no_metrics,
        save_dir=save_dir,
    )
    log(f"loading the model; {url}/health answers 503 until it is ready")
    serve(Server(worker, settings, log=log), sock)
    if worker.error:
        sys.exit(1)
