"""The `entropix chat` loop: read a line, run a /command or stream an answer to the view.

It holds no rendering (the view is `ui.chat_view.ChatView`), no model logic (that is
`ChatSession`) and no file format (that is `store`). After every turn or command the session log
appends what changed, so a killed chat loses at most the answer it was writing.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..engine.config import AUTO_PROFILE, SAMPLERS, SamplerConfig, load_profile
from ..engine.generate import Summary, TokenEvent
from ..errors import ContextFullError, EntropixError
from . import store
from .inputs import FENCE, read_block, read_message_file
from .session import ChatSession, ChatStats, Message

COMMANDS = {
    "/help": "show these commands",
    "/legend": "show what the colours and marks mean",
    "/clear": "start a new conversation (keeps the system message)",
    "/retry": "answer the last message again",
    "/system TEXT": "set the system message (/system alone shows it)",
    "/sampler NAME": f"switch sampler: {', '.join(SAMPLERS)}",
    "/set FIELD=VALUE": "change a sampler setting, e.g. /set high_ent=4.2 (as --set)",
    "/profile NAME": "switch sampler profile: reference, auto, a calibrated one or a TOML file",
    "/model NAME": "continue this conversation on another model",
    "/settings": "show the active model, sampler, profile and settings",
    "/seed N": "make the following answers reproducible",
    "/stats": "strategy mix, mean entropy and context use of this conversation",
    "/compact": "drop the oldest turns to make room (keeps the system message)",
    "/plot": "plot entropy and varentropy of the last answer against the thresholds",
    "/render": "show the last answer as formatted Markdown",
    "/copy": "copy the last answer to the clipboard",
    "/read FILE": "send a file's text as the message",
    "/edit": "write the message in $EDITOR",
    "/save PATH": "write the transcript (PATH.md) and every token (PATH.jsonl, resumable)",
    "/load PATH": "continue a saved chat (a session file or a /save .jsonl)",
    "/exit": f"leave (or Ctrl-D); {FENCE} starts a message of several lines, Alt-Enter a new line",
}
PATH_COMMANDS = ("/read", "/load", "/save")  # Tab completes paths after these
SHOWN_TURNS = 2  # a resumed chat shows its last turns
WARN_AT = 0.9  # the context gauge warns past this share


class ChatUI(Protocol):
    def welcome(self) -> None: ...
    def prompt(self, continuation: bool = False) -> str | None: ...
    def answer(self) -> Any: ...
    def legend(self) -> None: ...
    def help(self, commands: dict[str, str]) -> None: ...
    def stats(self, stats: ChatStats) -> None: ...
    def settings(self, values: dict[str, str], config: SamplerConfig) -> None: ...
    def turns(self, messages: Sequence[Message], skipped: int) -> None: ...
    def busy(self, label: str) -> AbstractContextManager[Callable[[int, int], None]]: ...
    def markdown(self, text: str) -> None: ...
    def copy(self, text: str) -> str: ...
    def edit(self, text: str) -> str | None: ...
    def notice(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def show(self, renderable: Any) -> None: ...
    def error(self, message: str) -> None: ...


Loader = Callable[[str], tuple[Any, Any, Any]]  # a model name → (model, tokenizer, ModelInfo)


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


def run_chat(
    session: ChatSession,
    ui: ChatUI,
    *,
    log: store.SessionLog | None = None,
    resume: store.SavedChat | None = None,
    loader: Loader | None = None,
    **context: Any,
) -> None:
    """Read lines until /exit or end of input; a line is a /command or a message to answer.

    `log` appends every change to a session file; `resume` is a saved chat to continue first;
    `loader` loads another model for /model; `context` (model name, path, device) goes into the
    files the chat writes.
    """
    Chat(session, ui, log, loader, dict(context)).run(resume)


@dataclass
class Chat:
    session: ChatSession
    ui: ChatUI
    log: store.SessionLog | None
    loader: Loader | None
    context: dict[str, Any]
    refused: str = ""  # the last message that did not fit: /compact makes room for it too

    def run(self, resume: store.SavedChat | None) -> None:
        self.ui.welcome()
        if resume is not None:
            try:
                self._resume(resume)
            except EntropixError as e:
                self.ui.error(str(e))
            else:
                if self.log is not None and self.log.path == resume.path:
                    self.log.adopt(self.session, resume.turns)  # it goes on in the same file
            self._sync()
        armed = False  # a Ctrl-C at the prompt asks once; a second one leaves
        while True:
            try:
                line = self.ui.prompt()
                if line is not None and line.lstrip().startswith(FENCE):
                    line = read_block(line.strip(), lambda: self.ui.prompt(continuation=True))
            except KeyboardInterrupt:
                if armed:
                    return
                armed = True
                self.ui.notice("press Ctrl-C again (or Ctrl-D) to leave")
                continue
            armed = False
            if line is None:
                return
            if line.strip().startswith("/") and "\n" not in line.strip():
                if not self.command(line.strip()):
                    return
            elif line.strip():
                self.send(line.strip())
            self._sync()

    # ── answers ──

    def send(self, text: str) -> None:
        self._stream(lambda stop: self.session.turn(text, stop.check), text)

    def _stream(self, start: Callable[[_StopRequest], Iterator[TokenEvent]], text: str) -> None:
        """Show one answer; Ctrl-C stops it at the next token and keeps what was said."""
        stop = _StopRequest()
        try:
            events = start(stop)
        except EntropixError as e:
            self.ui.error(str(e))
            return
        interrupted, error = False, None
        with stop, self.ui.answer() as view:
            try:
                for ev in events:
                    view.token(ev)
                    if stop.requested:
                        interrupted = True
                        break
            except KeyboardInterrupt:
                interrupted = True
            except ContextFullError as e:
                self.refused = text
                error = f"context full: {e}; /compact drops the oldest turns, /clear starts over"
            except EntropixError as e:
                error = str(e)
            finally:
                events.close()
        if error:
            self.ui.error(error)
            return
        used, limit = self.session.context_used(), self.session.limit
        summary = Summary.from_events(view.events)
        view.end(summary, self.session.peak_memory, interrupted=interrupted, context=(used, limit))
        self.refused = ""
        if used + self.session.max_tokens >= limit:
            self.ui.warning(
                f"the next answer may not fit ({limit - used:,} tokens left of {limit:,});"
                " /compact drops the oldest turns"
            )

    # ── commands ──

    def command(self, line: str) -> bool:
        """Run one /command; False means leave. Bad input is one line and changes nothing."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        simple = {
            "/help": lambda: self.ui.help(COMMANDS),
            "/legend": self.ui.legend,
            "/clear": self._clear,
            "/retry": lambda: self._stream(lambda stop: self.session.retry(stop.check), ""),
            "/stats": lambda: self.ui.stats(self.session.stats()),
            "/settings": self._settings,
            "/compact": self._compact,
            "/plot": self._plot,
            "/render": lambda: self.ui.markdown(self.session.last_answer().content),
            "/copy": self._copy,
            "/edit": self._edit,
        }
        takes_arg = {
            "/sampler": self._sampler,
            "/set": self._set,
            "/profile": self._profile,
            "/model": self._model,
            "/seed": self._seed,
            "/read": lambda a: self.send(read_message_file(Path(a).expanduser())),
            "/save": self._save,
            "/load": self._load,
        }
        try:
            if name == "/system":
                self._system(arg)
            elif name in simple:
                if arg:
                    raise EntropixError(f"{name} takes no argument; e.g. {name}")
                simple[name]()
            elif name in takes_arg:
                if not arg:
                    usage = next(k for k in COMMANDS if k.startswith(name + " "))
                    raise EntropixError(f"{name} needs an argument: {usage}")
                takes_arg[name](arg)
            else:
                self.ui.error(f"unknown command {name}; /help lists the commands")
        except (EntropixError, ValueError) as e:
            self.ui.error(str(e))
        except KeyboardInterrupt:
            self.ui.notice(f"{name} stopped")
        return True

    def _clear(self) -> None:
        self.session.clear()
        self.ui.notice("new conversation")

    def _system(self, arg: str) -> None:
        if arg:
            self.session.set_system(arg)
        s = self.session.system
        self.ui.notice(f"system message: {s}" if s else "no system message")

    def _sampler(self, arg: str) -> None:
        self.session.set_sampler(arg)
        self.ui.notice(f"sampler: {arg}")

    def _seed(self, arg: str) -> None:
        try:
            seed = int(arg)
        except ValueError:
            raise EntropixError(f"/seed {arg}: not an integer; e.g. /seed 42") from None
        self.session.set_seed(seed)
        self.ui.notice(f"seed {arg}: the following answers are reproducible")

    def _set(self, arg: str) -> None:
        pairs = {}
        for item in arg.split():
            field, sep, value = item.partition("=")
            if not sep or not field:
                raise EntropixError(f"/set {item}: expected FIELD=VALUE, e.g. /set high_ent=4.2")
            pairs[field] = value
        self.session.set_config(self.session.config.with_overrides(pairs), base=list(pairs))
        self.ui.notice(", ".join(f"{k} = {getattr(self.session.config, k)}" for k in pairs))

    def _profile(self, arg: str) -> None:
        model = Path(str(self.context.get("model_path") or self.context.get("model", ""))).name
        config = load_profile(arg, model=model if arg == AUTO_PROFILE else None)
        self.session.set_config(config)
        self.ui.notice(f"profile {config.profile} (earlier /set values are replaced)")

    def _settings(self) -> None:
        s = self.session
        values = {
            "model": str(self.context.get("model", "?")),
            "sampler": s.sampler,
            "profile": s.config.profile,
            "seed": f"{s.seed} ({s.draws} drawn)",
            "max tokens": str(s.max_tokens),
            "context": f"{s.context_used():,}/{s.limit:,}",
            "system": s.system or "(none)",
        }
        if s.params is not None and s.sampler == "sample":
            p = s.params
            values["sample"] = (
                f"temperature {p.temperature} · top-k {p.top_k} · top-p {p.top_p} · min-p {p.min_p}"
            )
        if self.log is not None:
            values["session file"] = str(self.log.path)
        self.ui.settings(values, s.config)

    def _compact(self) -> None:
        reserve = self.session.max_tokens
        if self.refused:
            reserve += len(self.session.tokenizer.encode(self.refused)) + 16  # its template
        dropped = self.session.compact(reserve)
        used, limit = self.session.context_used(), self.session.limit
        turns = "turn" if dropped == 1 else "turns"
        self.ui.notice(f"dropped the oldest {dropped} {turns}; ctx {used:,}/{limit:,}")
        if used + reserve >= limit:
            self.ui.warning("it still does not fit; /clear starts a new conversation")

    def _plot(self) -> None:
        answers = [m for m in self.session.messages if m.role == "assistant" and m.events]
        if not answers:
            raise EntropixError("nothing to plot yet; send a message first")
        from ..ui.plots import render_plots  # plotext only when asked for

        self.ui.show(render_plots(answers[-1].events, self.session.config))

    def _copy(self) -> None:
        text = self.session.last_answer().content
        how = self.ui.copy(text)
        self.ui.notice(f"copied the last answer ({len(text):,} characters) {how}")

    def _edit(self) -> None:
        text = self.ui.edit("")
        if text is None or not text.strip():
            self.ui.notice("nothing written; no message sent")
            return
        self.send(text.strip())

    def _save(self, arg: str) -> None:
        md, jsonl = store.save(self.session, Path(arg).expanduser(), **self.context)
        self.ui.notice(f"saved {md} and {jsonl}")

    def _load(self, arg: str) -> None:
        saved = store.read_session(Path(arg).expanduser())
        self._resume(saved)

    def _model(self, arg: str) -> None:
        if self.loader is None:
            raise EntropixError("/model is not available here")
        current = self.context.get("model", "the current model")
        try:
            model, tokenizer, info = self.loader(arg)
        except Exception as e:  # whatever stops the load, the current model stays
            raise EntropixError(f"/model {arg}: {e}; keeping {current}") from None
        self.session.set_model(model, tokenizer, info.context_length)
        self.context.update(model=info.name, model_path=str(info.path), device=info.device)
        if self.log is not None:
            self.log.context.update(self.context)
        self._prefill(f"now on {info.name}")

    # ── resuming ──

    def _resume(self, saved: store.SavedChat) -> None:
        """Take over a saved chat; if it cannot be taken (it does not fit), nothing changes."""
        s = self.session
        before = (list(s.messages), s.system, s.sampler, s.config, s.params, s.max_tokens)
        seed, draws = s.seed, s.draws
        s.restore(saved.messages, saved.system)
        s.sampler, s.config, s.params = saved.sampler, saved.config, saved.params
        s.set_max_tokens(saved.max_tokens)
        s.set_seed(saved.session_seed, saved.draws)
        try:
            with self.ui.busy("reading the conversation into the cache") as progress:
                s.prefill(progress)
        except (ContextFullError, KeyboardInterrupt) as e:
            messages, system, s.sampler, s.config, s.params, s.max_tokens = before
            s.restore(messages, system)
            s.set_seed(seed, draws)
            why = "stopped" if isinstance(e, KeyboardInterrupt) else str(e)
            raise EntropixError(f"{saved.path}: not loaded ({why})") from None
        shown = list(s.messages[-2 * SHOWN_TURNS :])
        self.ui.turns(shown, len(s.messages) - len(shown))
        answers = sum(m.role == "assistant" for m in s.messages)
        answers_text = f"{answers} answer" + ("" if answers == 1 else "s")
        recorded = saved.model and Path(saved.model).name
        current = Path(str(self.context.get("model_path", ""))).name
        note = f"; it was made on {recorded} (/model switches)" if recorded != current else ""
        self.ui.notice(
            f"resumed {saved.path}: {answers_text} · ctx {s.context_used():,}/{s.limit:,}{note}"
        )

    def _prefill(self, what: str) -> None:
        try:
            with self.ui.busy("reading the conversation into the cache") as progress:
                self.session.prefill(progress)
        except ContextFullError as e:
            self.ui.warning(f"{what}: {e}; /compact drops the oldest turns")
            return
        except KeyboardInterrupt:
            self.ui.notice(f"{what}: the next message reads the conversation")
            return
        used, limit = self.session.context_used(), self.session.limit
        self.ui.notice(f"{what} · ctx {used:,}/{limit:,}")

    def _sync(self) -> None:
        if self.log is None:
            return
        try:
            self.log.sync(self.session)
        except EntropixError as e:
            self.log = None
            self.ui.error(str(e))
