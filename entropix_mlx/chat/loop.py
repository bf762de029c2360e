"""The `entropix chat` loop: read a line, run a /command or stream an answer to the view.

It holds no rendering (the view is `chat_view.ChatView`) and no model logic (that is
`ChatSession`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ..engine.config import SAMPLERS
from ..engine.generate import Summary, TokenEvent
from ..errors import ContextFullError, EntropixError
from .session import ChatSession, ChatStats

COMMANDS = {
    "/help": "show these commands",
    "/legend": "show what the colours and marks mean",
    "/clear": "start a new conversation (keeps the system message)",
    "/retry": "answer the last message again",
    "/system TEXT": "set the system message (/system alone shows it)",
    "/sampler NAME": f"switch sampler: {', '.join(SAMPLERS)}",
    "/seed N": "make the following answers reproducible",
    "/stats": "strategy mix and mean entropy of this conversation",
    "/plot": "plot entropy and varentropy of the last answer against the thresholds",
    "/save PATH": "write the transcript (PATH.md) and every token (PATH.jsonl)",
    "/exit": "leave (or Ctrl-D)",
}


class ChatUI(Protocol):
    def welcome(self) -> None: ...
    def prompt(self) -> str | None: ...
    def answer(self) -> Any: ...
    def legend(self) -> None: ...
    def help(self, commands: dict[str, str]) -> None: ...
    def stats(self, stats: ChatStats) -> None: ...
    def notice(self, message: str) -> None: ...
    def show(self, renderable: Any) -> None: ...
    def error(self, message: str) -> None: ...


class _StopRequest:
    """While generating, Ctrl-C only asks the stream to stop at the next token (a second one
    interrupts at once), so the answer and the cache end at a token boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C keeps its default behaviour
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self, done: int, total: int) -> None:
        """A prefill progress callback: stop between chunks of a long prompt."""
        if self.requested:
            raise KeyboardInterrupt


def run_chat(session: ChatSession, ui: ChatUI, **context: Any) -> None:
    """Read lines until /exit or end of input; a line is a /command or a message to answer.

    `context` (model name, device, …) goes into the files /save writes.
    """
    ui.welcome()
    armed = False  # a Ctrl-C at the prompt asks once; a second one leaves
    while True:
        try:
            line = ui.prompt()
        except KeyboardInterrupt:
            if armed:
                return
            armed = True
            ui.notice("press Ctrl-C again (or Ctrl-D) to leave")
            continue
        armed = False
        if line is None:
            return
        line = line.strip()
        if line.startswith("/"):
            if not _command(session, ui, line, context):
                return
        elif line:
            _stream(session, ui, lambda stop, text=line: session.turn(text, stop.check))


def _stream(
    session: ChatSession, ui: ChatUI, start: Callable[[_StopRequest], Iterator[TokenEvent]]
) -> None:
    """Show one answer; Ctrl-C stops it at the next token and keeps what was said."""
    stop = _StopRequest()
    try:
        events = start(stop)
    except EntropixError as e:
        ui.error(str(e))
        return
    interrupted, error = False, None
    with stop, ui.answer() as view:
        try:
            for ev in events:
                view.token(ev)
                if stop.requested:
                    interrupted = True
                    break
        except KeyboardInterrupt:
            interrupted = True
        except ContextFullError as e:
            error = f"context full: {e}; /clear starts a new conversation"
        except EntropixError as e:
            error = str(e)
        finally:
            events.close()
    if error:
        ui.error(error)
    else:
        view.end(Summary.from_events(view.events), session.peak_memory, interrupted=interrupted)


def _command(session: ChatSession, ui: ChatUI, line: str, context: dict[str, Any]) -> bool:
    """Run one /command; False means leave."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        ui.help(COMMANDS)
    elif name == "/legend":
        ui.legend()
    elif name == "/clear":
        session.clear()
        ui.notice("new conversation")
    elif name == "/retry":
        _stream(session, ui, lambda stop: session.retry(stop.check))
    elif name == "/stats":
        ui.stats(session.stats())
    elif name == "/plot":
        _plot(session, ui)
    elif name in ("/system", "/sampler", "/seed", "/save"):
        _setting(session, ui, name, arg, context)
    else:
        ui.error(f"unknown command {name}; /help lists the commands")
    return True


def _plot(session: ChatSession, ui: ChatUI) -> None:
    answers = [m for m in session.messages if m.role == "assistant" and m.events]
    if not answers:
        ui.error("nothing to plot yet; send a message first")
        return
    from ..ui.plots import render_plots  # plotext only when asked for

    ui.show(render_plots(answers[-1].events, session.config))


def _setting(
    session: ChatSession, ui: ChatUI, name: str, arg: str, context: dict[str, Any]
) -> None:
    """The commands that take an argument; a missing or bad one gets a one-line hint."""
    if name == "/system":
        if arg:
            session.set_system(arg)
        ui.notice(f"system message: {session.system}" if session.system else "no system message")
    elif not arg:
        usage = next(k for k in COMMANDS if k.startswith(name + " "))
        ui.error(f"{name} needs an argument: {usage}")
    elif name == "/sampler":
        try:
            session.set_sampler(arg)
            ui.notice(f"sampler: {arg}")
        except ValueError as e:
            ui.error(str(e))
    elif name == "/seed":
        try:
            session.set_seed(int(arg))
            ui.notice(f"seed {arg}: the following answers are reproducible")
        except ValueError:
            ui.error(f"/seed {arg}: not an integer; e.g. /seed 42")
    else:
        try:
            md, jsonl = session.save(Path(arg).expanduser(), **context)
            ui.notice(f"saved {md} and {jsonl}")
        except EntropixError as e:
            ui.error(str(e))
