"""The HTTP side: a Starlette app whose handlers validate, tokenize and queue jobs for the worker.

Starlette rather than FastAPI: we validate by hand anyway (every error names its field in the
OpenAI shape, which FastAPI's 422 bodies would need mapping into), and it imports in a third of
the time. Streams are written by `_EventStream`, a small ASGI response that also listens for the
client's disconnect, so a vanished client cancels its job during prefill as well as decode.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from ..engine.config import AUTO_PROFILE, SamplerConfig, load_profile
from ..engine.records import JsonlWriter, event_record
from ..errors import EntropixError
from .engine import Engine, Job, describe, prompt_ids
from .protocol import (
    ApiError,
    GenRequest,
    bad,
    dumps,
    parse_body,
    parse_chat,
    parse_completion,
    parse_token_ids,
)
from .responses import Answer, summary_of
from .worker import DEAD, LOADING, READY, Busy, Handle, Unavailable, Worker

MAX_BODY = 8 * 2**20
STATIC = Path(__file__).resolve().parent / "static"
OPEN_PATHS = ("/", "/health")  # reachable without --api-key (the page itself holds no data)


@dataclass(frozen=True)
class Settings:
    """The server's defaults and limits (the command line)."""

    sampler: str = "entropix"
    config: SamplerConfig = field(default_factory=SamplerConfig)
    max_tokens: int = 512
    cache_slots: int = 2
    api_key: str | None = None
    allowed_origin: str | None = None
    metrics: bool = True
    save_dir: Path | None = None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("entropix-mlx")
    except PackageNotFoundError:
        return "0"


def fingerprint(engine: Engine, sampler: str, config: SamplerConfig, params: Any) -> str:
    """Package version, model, layout, device and sampling settings: equal fingerprints, seeds
    and prompts give equal tokens."""
    info = engine.info
    params = params if sampler == "sample" else None  # the others never read them
    key = [_version(), info.name, info.layout, info.device, sampler, asdict(config), params]
    return (
        "fp_"
        + hashlib.sha256(json.dumps(key, default=str, sort_keys=True).encode()).hexdigest()[:12]
    )


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status, headers=headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def unavailable(worker: Worker) -> ApiError:
    why = {
        LOADING: "the model is still loading; retry in a moment",
        DEAD: f"the model worker stopped ({worker.error}); restart the server",
    }.get(worker.state, "the server is shutting down")
    return ApiError(503, why, type="unavailable_error", headers={"Retry-After": "1"})


@dataclass
class Stats:
    """Counters for /props and /metrics; touched only on the event loop."""

    by_status: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    strategies: Counter = field(default_factory=Counter)
    quadrants: Counter = field(default_factory=Counter)


class Server:
    """Routes and handlers over one `Worker`; `app` is the ASGI application."""

    def __init__(
        self, worker: Worker, settings: Settings, log: Callable[[str], None] | None = None
    ):
        self.worker, self.settings = worker, settings
        self.log = log or (lambda line: None)
        self.stats = Stats()
        self.started = time.time()
        routes = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/props", self.props, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/apply-template", self.apply_template, methods=["POST"]),
            Route("/", self.index, methods=["GET"]),
        ]
        if STATIC.is_dir():
            routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
        middleware = []
        if settings.allowed_origin:
            middleware.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=[settings.allowed_origin],
                    allow_methods=["GET", "POST", "OPTIONS"],
                    allow_headers=["Authorization", "Content-Type"],
                )
            )
        self.app = Starlette(
            routes=routes,
            middleware=middleware,
            exception_handlers={HTTPException: self._http_error, Exception: self._crash},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count statuses, check the API key, then route."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.stats.by_status[message["status"]] += 1
            await send(message)

        denied = self._check_key(scope)
        if denied is not None:
            await error_response(denied)(scope, receive, counting_send)
            return
        await self.app(scope, receive, counting_send)

    def _check_key(self, scope: Scope) -> ApiError | None:
        key = self.settings.api_key
        path = scope["path"]
        if (
            not key
            or scope["method"] == "OPTIONS"
            or path in OPEN_PATHS
            or path.startswith("/static/")
        ):
            return None
        sent = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if secrets.compare_digest(sent.encode(), f"Bearer {key}".encode()):
            return None
        why = "is missing" if not sent else "is wrong"
        return ApiError(
            401,
            f"the API key {why}; send the header Authorization: Bearer <the server's --api-key>",
            type="authentication_error",
            code="invalid_api_key",
        )

    # ── errors ──

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            err = ApiError(
                404,
                f"no such endpoint {request.url.path}; see /v1/models, /v1/chat/completions",
                type="not_found_error",
            )
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            err = ApiError(
                405,
                f"{request.method} is not allowed on {request.url.path}; use {allow}",
                headers={"Allow": allow},
            )
        else:
            err = ApiError(exc.status_code, str(exc.detail))
        return error_response(err)

    async def _crash(self, request: Request, exc: Exception) -> Response:
        err = ApiError(
            500,
            f"unexpected server error ({type(exc).__name__}); see the server's log",
            type="server_error",
            headers={"x-should-retry": "false"},
        )
        self.log(f"{request.method} {request.url.path} failed: {exc!r}")
        return error_response(err)

    # ── helpers ──

    async def _body(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is None:
            raise ApiError(411, "the request has no Content-Length; send the body with its length")
        if not length.isdigit():
            raise ApiError(400, f"Content-Length {length!r} is not a number of bytes")
        if int(length) > MAX_BODY:
            raise ApiError(
                413, f"the request body is larger than {MAX_BODY // 2**20} MiB; send less"
            )
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > MAX_BODY:
                raise ApiError(
                    413, f"the request body is larger than {MAX_BODY // 2**20} MiB; send less"
                )
        return parse_body(bytes(raw))

    def _engine(self) -> Engine:
        if self.worker.state != READY or self.worker.engine is None:
            raise unavailable(self.worker)
        return self.worker.engine

    def _sampling(self, req: GenRequest, engine: Engine) -> tuple[str, SamplerConfig, Any]:
        from ..engine.sampler import SamplingParams

        ext = req.extension
        sampler = ext.sampler or self.settings.sampler
        config = self.settings.config
        if ext.profile is not None:
            if "/" in ext.profile or ext.profile.endswith(".toml"):
                raise bad(
                    "entropix.profile",
                    "entropix.profile must name a packaged profile (a file is the server's "
                    "--profile)",
                )
            try:
                config = load_profile(
                    ext.profile, model=engine.info.name if ext.profile == AUTO_PROFILE else None
                )
            except ValueError as e:
                raise bad("entropix.profile", f"entropix.profile: {e}") from None
        if ext.overrides:
            try:
                config = config.with_overrides(ext.overrides)
            except ValueError as e:
                name = next(
                    (n for n in ext.overrides if f"{n!r}" in str(e) or str(e).startswith(n)), None
                )
                raise bad(
                    f"entropix.set.{name}" if name else "entropix.set", f"entropix.set: {e}"
                ) from None
        params = SamplingParams(req.temperature, req.top_k, req.top_p, req.min_p)
        return sampler, config, params

    def _prepare(self, req: GenRequest) -> tuple[Engine, Job, dict[str, Any]]:
        """Tokenize and check a request against the model: the job and its summary context."""
        engine = self._engine()
        sampler, config, params = self._sampling(req, engine)
        try:
            ids = prompt_ids(engine, req.kind, req.messages, req.prompt)
        except EntropixError as e:
            raise bad("messages" if req.kind == "chat" else "prompt", str(e)) from None
        n_ctx = engine.info.n_ctx
        if len(ids) >= n_ctx:
            raise bad(
                "messages" if req.kind == "chat" else "prompt",
                f"the prompt ({'messages' if req.kind == 'chat' else 'prompt'}) is {len(ids)} "
                f"tokens but the model's context is {n_ctx}; shorten it",
                "context_length_exceeded",
            )
        seed = req.seed % 2**64 if req.seed is not None else int.from_bytes(os.urandom(4), "little")
        top = req.top_logprobs if req.logprobs else 0
        job = Job(
            tuple(ids),
            sampler,
            config,
            params,
            req.max_tokens,
            seed,
            req.stop,
            top,
            req.extension.cache_prompt,
        )
        context = {
            "model": engine.info.name,
            "model_path": engine.info.path,
            "device": engine.info.device,
            "seed": seed,
            "sampler": sampler,
            "config": config,
            "params": params,
            "max_tokens": req.max_tokens,
            "stop": list(req.stop),
        }
        context |= _recipe(req)
        return engine, job, context

    # ── generation endpoints ──

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, parse_completion)

    async def _generate(
        self, request: Request, parse: Callable[[dict, int], GenRequest]
    ) -> Response:
        try:
            req = parse(await self._body(request), self.settings.max_tokens)
            # Tokenizing a long prompt takes a while: off the event loop, which serves the streams.
            engine, job, context = await run_in_threadpool(self._prepare, req)
        except ApiError as e:
            return error_response(e)
        prefix = "chatcmpl-" if req.kind == "chat" else "cmpl-"
        rid = prefix + secrets.token_hex(12)
        answer = Answer(
            kind=req.kind,
            id=rid,
            model=engine.info.name,
            fingerprint=fingerprint(engine, job.sampler, job.config, job.params),
            stop_ids=engine.stop_ids,
            token_bytes=engine.token_bytes,
            logprobs=req.logprobs,
            metrics=req.extension.metrics and self.settings.metrics,
        )
        context["id"] = rid
        handle = Handle(job, asyncio.get_running_loop())
        try:
            ahead = self.worker.submit(handle)
        except Busy:
            return error_response(
                ApiError(
                    429,
                    f"the queue is full ({self.worker.queue_size} waiting); retry shortly",
                    type="server_busy",
                    code="server_busy",
                    headers={"Retry-After": "1"},
                )
            )
        except Unavailable:
            return error_response(unavailable(self.worker))
        run = _Run(self, handle, answer, job, context, time.perf_counter())
        if req.stream:
            return _EventStream(run, ahead, req.include_usage)
        return await run.collect(request)

    # ── other endpoints ──

    async def models(self, request: Request) -> Response:
        engine = self._engine_or_none()
        data = []
        if engine is not None:
            data.append(
                {
                    "id": engine.info.name,
                    "object": "model",
                    "created": int(self.started),
                    "owned_by": "entropix-mlx",
                    "meta": describe(engine.info),
                }
            )
        return json_response({"object": "list", "data": data})

    def _engine_or_none(self) -> Engine | None:
        return self.worker.engine if self.worker.state == READY else None

    async def health(self, request: Request) -> Response:
        if self.worker.state != READY:
            return error_response(unavailable(self.worker))
        return json_response({"status": "ok"})

    async def props(self, request: Request) -> Response:
        from ..engine.config import SAMPLERS, profile_names

        engine = self._engine_or_none()
        s = self.settings
        return json_response(
            {
                "model": engine.info.name if engine else None,
                "model_info": describe(engine.info) if engine else None,
                "n_ctx": engine.info.n_ctx if engine else None,
                "state": self.worker.state,
                "version": _version(),
                "system_fingerprint": fingerprint(engine, s.sampler, s.config, None)
                if engine
                else None,
                "default_sampler": s.sampler,
                "samplers": list(SAMPLERS),
                "profile": s.config.profile,
                "profiles": [AUTO_PROFILE, *profile_names()],
                "sampler_config": asdict(s.config),
                "sampler_note": "temperature/top_p/top_k/min_p drive sampler 'sample' only; "
                "entropix chooses its own per token (each record shows them)",
                "max_tokens": s.max_tokens,
                "queue_size": self.worker.queue_size,
                "cache_slots": s.cache_slots,
                "metrics": s.metrics,
                "processing": self.worker.processing,
                "queued": self.worker.queued,
                "cancelled": self.worker.cancelled,
                "completed": self.worker.completed,
            }
        )

    async def metrics(self, request: Request) -> Response:
        lines = []

        def metric(name: str, kind: str, help: str, values: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP entropix_{name} {help}", f"# TYPE entropix_{name} {kind}"])
            lines.extend(f"entropix_{name}{labels} {value:g}" for labels, value in values)

        st = self.stats
        metric(
            "requests_total",
            "counter",
            "HTTP responses by status.",
            [(f'{{status="{k}"}}', v) for k, v in sorted(st.by_status.items())],
        )
        metric(
            "cancelled_total",
            "counter",
            "Jobs cancelled by a client leaving.",
            [("", self.worker.cancelled)],
        )
        metric("queue_depth", "gauge", "Jobs waiting.", [("", self.worker.queued)])
        metric("processing", "gauge", "Jobs decoding now.", [("", self.worker.processing)])
        metric("prompt_tokens_total", "counter", "Prompt tokens.", [("", st.prompt_tokens)])
        metric(
            "cached_tokens_total",
            "counter",
            "Prompt tokens served from a prompt cache.",
            [("", st.cached_tokens)],
        )
        metric(
            "completion_tokens_total", "counter", "Generated tokens.", [("", st.completion_tokens)]
        )
        metric(
            "tokens_by_strategy_total",
            "counter",
            "Generated tokens per sampler strategy.",
            [(f'{{strategy="{k}"}}', v) for k, v in sorted(st.strategies.items())],
        )
        metric(
            "tokens_by_quadrant_total",
            "counter",
            "Generated tokens per entropy quadrant.",
            [(f'{{quadrant="{k}"}}', v) for k, v in sorted(st.quadrants.items())],
        )
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def tokenize(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            engine = self._engine()
            content = body.get("content")
            if not isinstance(content, str):
                raise bad("content", "content must be a string")
            special = body.get("add_special", False)
            if not isinstance(special, bool):
                raise bad("add_special", "add_special must be true or false")
            ids = engine.encode(content, add_special=special)
            if body.get("with_pieces"):
                pieces = [
                    {"id": i, "piece": engine.token_bytes(i).decode("utf-8", "replace")}
                    for i in ids
                ]
                return json_response({"tokens": pieces})
            return json_response({"tokens": ids})
        except ApiError as e:
            return error_response(e)

    async def detokenize(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            engine = self._engine()
            ids = parse_token_ids(body, "tokens", engine.vocab_size)
            return json_response({"content": engine.decode(ids)})
        except ApiError as e:
            return error_response(e)

    async def apply_template(self, request: Request) -> Response:
        from .protocol import parse_messages

        try:
            body = await self._body(request)
            engine = self._engine()
            messages = parse_messages(body.get("messages"))
            try:
                prompt = engine.render_chat(list(messages), add_generation_prompt=True)
            except EntropixError as e:
                raise bad("messages", str(e)) from None
            return json_response({"prompt": prompt})
        except ApiError as e:
            return error_response(e)

    async def index(self, request: Request) -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return json_response(
                {"message": "entropix serve: the API is under /v1 (no web page installed)"}
            )
        return FileResponse(page)

    # ── bookkeeping ──

    def finished(self, run: _Run, outcome: str) -> None:
        """Count, log and save one request's answer (also a cancelled or failed one)."""
        events = run.answer.events
        st = self.stats
        st.prompt_tokens += len(run.job.ids)
        st.cached_tokens += run.cached
        st.completion_tokens += len(events)
        st.strategies.update(e.strategy for e in events)
        st.quadrants.update(e.quadrant for e in events)
        seconds = time.perf_counter() - run.started
        mix = " ".join(f"{k} {v}" for k, v in Counter(e.strategy for e in events).most_common())
        span = events[-1].elapsed - events[0].elapsed if events else 0.0
        rate = (len(events) - 1) / span if span > 0 else 0.0
        self.log(
            f"{run.answer.id} · prompt {len(run.job.ids)} (cached {run.cached})"
            f" · {len(events)} tokens · {rate:.1f} tok/s · {mix or 'no tokens'} · {outcome}"
            f" · {seconds:.2f} s"
        )
        if self.settings.save_dir is not None and events:
            self._save(run, outcome)

    def _save(self, run: _Run, outcome: str) -> None:
        path = self.settings.save_dir / f"{run.answer.id}.jsonl"
        try:
            with JsonlWriter(path) as writer:
                for ev in run.answer.events:
                    writer.write(event_record(ev))
                writer.write({"summary": run.summary(interrupted=outcome != "done")})
        except OSError as e:
            self.log(f"{run.answer.id}: cannot save {path} ({e.strerror})")


def _recipe(req: GenRequest) -> dict[str, Any]:
    """What `entropix replay --check` needs, where the request is a plain prompt it can rebuild
    (a raw completion, or a user message with an optional system message); always the messages."""
    if req.kind == "completion":
        return {"prompt": req.prompt, "system": None, "raw": True}
    messages = [dict(m) for m in req.messages]
    roles = [m["role"] for m in messages]
    user = messages[-1]["content"]
    if roles in (["user"], ["system", "user"]) and user == user.strip():
        system = messages[0]["content"] if roles[0] == "system" else None
        return {"messages": messages, "prompt": user, "system": system, "raw": False}
    return {"messages": messages}


class _Run:
    """One request between queueing and its last byte: reads the worker's events for it."""

    def __init__(
        self,
        server: Server,
        handle: Handle,
        answer: Answer,
        job: Job,
        context: dict[str, Any],
        started: float,
    ) -> None:
        self.server, self.handle, self.answer, self.job = server, handle, answer, job
        self.context, self.started = context, started
        self.cached = 0
        self.done = False

    def summary(self, **extra: Any) -> dict[str, Any]:
        return summary_of(
            self.answer.events,
            cached_tokens=self.cached,
            system_fingerprint=self.answer.fingerprint,
            **self.context,
            **extra,
        )

    def cancel(self) -> None:
        if not self.done:
            self.server.worker.cancel(self.handle)

    async def watch_disconnect(self, receive: Receive) -> None:
        """Cancel the job when the client goes away (the ASGI `http.disconnect` message)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.cancel()
                return

    async def next(self) -> tuple:
        item = await self.handle.events.get()
        if item[0] == "cached":
            self.cached = item[1]
        elif item[0] in ("done", "cancelled", "error"):
            self.done = True
            outcome = item[0] if item[0] != "error" else f"error: {item[1]}"
            self.server.finished(self, outcome)
        return item

    async def collect(self, request: Request) -> Response:
        """The whole answer as one response; a client that leaves cancels the job."""
        watcher = asyncio.ensure_future(self.watch_disconnect(request.receive))
        try:
            while True:
                item = await self.next()
                if item[0] == "token":
                    self.answer.events.append(item[1])
                elif item[0] == "done":
                    break
                elif item[0] == "cancelled":
                    return Response(status_code=499)  # nobody reads it: the client is gone
                elif item[0] == "error":
                    return error_response(_job_error(item[1], self.server.worker))
        finally:
            watcher.cancel()
            self.cancel()
        summary = self.summary() if self.answer.metrics else None
        body = self.answer.response(summary, len(self.job.ids), self.cached)
        return json_response(body)


def _job_error(exc: BaseException, worker: Worker) -> ApiError:
    if isinstance(exc, Unavailable):
        return unavailable(worker)
    if isinstance(exc, EntropixError):
        return bad(None, str(exc))
    return ApiError(
        500,
        f"the model failed ({type(exc).__name__}: {exc}); see the server's log",
        type="server_error",
        headers={"x-should-retry": "false"},
    )


class _EventStream:
    """An SSE response (an ASGI app): comments while queued and prefilling, one chunk per run of
    tokens that completes text, the summary chunk, usage, `[DONE]`. Stops sending when the client
    leaves and cancels its job."""

    def __init__(self, run: _Run, ahead: int, include_usage: bool) -> None:
        self.run, self.ahead, self.include_usage = run, ahead, include_usage
        self.open = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.run
        self._send_fn = send
        watcher = asyncio.ensure_future(run.watch_disconnect(receive))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            await self._write(f": queued {self.ahead}\n\n")
            if run.answer.kind == "chat":
                await self._data(run.answer.role_chunk())
            await self._pump()
            await self._write("", more=False)
        finally:
            watcher.cancel()
            run.cancel()

    async def _pump(self) -> None:
        run = self.run
        while True:
            item = await run.next()
            kind = item[0]
            if kind == "prefill":
                await self._write(f": prefill {item[1]}/{item[2]}\n\n")
            elif kind == "token":
                chunk = run.answer.add(item[1])
                if chunk is not None:
                    await self._data(chunk)
            elif kind == "done":
                summary = run.summary() if run.answer.metrics else None
                await self._data(run.answer.finish(summary))
                if self.include_usage:
                    await self._data(run.answer.usage_chunk(len(run.job.ids), run.cached))
                await self._write("data: [DONE]\n\n")
                return
            elif kind == "cancelled":
                return
            elif kind == "error":
                await self._data(_job_error(item[1], run.server.worker).body())
                return

    async def _data(self, obj: dict[str, Any]) -> None:
        await self._write(f"data: {dumps(obj)}\n\n")

    async def _write(self, text: str, more: bool = True) -> None:
        if not self.open:
            return
        try:
            await self._send_fn(
                {"type": "http.response.body", "body": text.encode(), "more_body": more}
            )
        except OSError:  # the client left mid-write (uvicorn's ClientDisconnected is an OSError)
            self.open = False
            self.run.cancel()
