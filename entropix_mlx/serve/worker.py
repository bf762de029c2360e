"""The one thread that owns the model: it loads it, then runs queued jobs one at a time.

MLX streams are thread-local, so every MLX call happens here. Request handlers talk to it only
through `Handle`s: a cancel flag they set, and an asyncio queue this thread fills with
`loop.call_soon_threadsafe`. The FIFO queue is bounded; a full one is `Busy` (HTTP 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .engine import Cancelled, Engine, Job

LOADING, READY, DEAD, STOPPING = "loading", "ready", "dead", "stopping"


class Busy(Exception):
    """The queue is full."""


class Unavailable(Exception):
    """The model is loading, the worker died or the server is shutting down."""


@dataclass
class Handle:
    """One job in flight: what the worker reports goes to `events` as tuples —
    ("cached", n), ("prefill", done, total), ("token", TokenEvent), then one of
    ("done",), ("cancelled",), ("error", exception)."""

    job: Job
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def put(self, *item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Worker:
    """Loads the engine with `loader` on its own thread, then serves `submit`ted jobs in order."""

    def __init__(
        self,
        loader: Callable[[], Engine],
        *,
        queue_size: int = 8,
        on_ready: Callable[[Engine], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue size {queue_size} must be at least 1")
        self._loader, self._on_ready, self._on_error = loader, on_ready, on_error
        self.queue_size = queue_size
        self.state = LOADING
        self.error: str | None = None
        self.engine: Engine | None = None
        self._queue: deque[Handle] = deque()
        self._cond = threading.Condition()
        self._running: Handle | None = None
        self.cancelled = 0
        self.completed = 0
        self._thread = threading.Thread(target=self._run, name="entropix-worker", daemon=True)

    # ── any thread ──

    def start(self) -> None:
        """Start loading (once; later calls do nothing)."""
        if self._thread.ident is None:
            self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def processing(self) -> int:
        return int(self._running is not None)

    def submit(self, handle: Handle) -> int:
        """Queue `handle`; returns how many jobs are ahead of it. Raises Busy or Unavailable."""
        with self._cond:
            if self.state != READY:
                raise Unavailable(self.state)
            if len(self._queue) >= self.queue_size:
                raise Busy
            ahead = len(self._queue) + self.processing
            self._queue.append(handle)
            self._cond.notify()
        return ahead

    def cancel(self, handle: Handle) -> None:
        """The client left: a queued job is dropped at once, a running one stops within a token."""
        with self._cond:
            handle.cancel.set()
            try:
                self._queue.remove(handle)
            except ValueError:
                return  # running (the worker reports it) or already finished
            self.cancelled += 1
        handle.put("cancelled")

    def shutdown(self) -> None:
        """Stop taking jobs: queued ones are answered Unavailable, the running one is cancelled."""
        with self._cond:
            if self.state in (READY, LOADING):
                self.state = STOPPING
            dropped, self._queue = list(self._queue), deque()
            if self._running is not None:
                self._running.cancel.set()
            self._cond.notify_all()
        for handle in dropped:
            handle.put("error", Unavailable("the server is shutting down"))

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # ── the worker thread ──

    def _run(self) -> None:
        try:
            self.engine = self._loader()
        except BaseException as e:
            self.error, self.state = str(e) or type(e).__name__, DEAD
            if self._on_error is not None:
                self._on_error(e)
            return
        with self._cond:
            if self.state == LOADING:
                self.state = READY
        if self._on_ready is not None:
            self._on_ready(self.engine)
        while True:
            with self._cond:
                while not self._queue and self.state == READY:
                    self._cond.wait()
                if self.state != READY:
                    return
                handle = self._running = self._queue.popleft()
            try:
                self._process(handle)
            except BaseException as e:
                self.error, self.state = f"worker failed: {e!r}", DEAD
                handle.put("error", e)
                self._fail_queued()
                return
            finally:
                with self._cond:
                    self._running = None

    def _fail_queued(self) -> None:
        with self._cond:
            dropped, self._queue = list(self._queue), deque()
        for handle in dropped:
            handle.put("error", Unavailable(self.error or "the worker stopped"))

    def _process(self, handle: Handle) -> None:
        if handle.cancel.is_set():
            self._count_cancel(handle)
            return
        assert self.engine is not None
        stream = self.engine.stream(handle.job, handle.cancel, handle.put)
        try:
            for ev in stream:
                handle.put("token", ev)
                if handle.cancel.is_set():
                    break
        except Cancelled:
            pass
        except Exception as e:
            handle.put("error", e)
            return
        finally:
            stream.close()
        if handle.cancel.is_set():
            self._count_cancel(handle)
        else:
            with self._cond:
                self.completed += 1
            handle.put("done")

    def _count_cancel(self, handle: Handle) -> None:
        with self._cond:
            self.cancelled += 1
        handle.put("cancelled")
