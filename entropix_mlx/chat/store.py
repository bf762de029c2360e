"""Session files: where chats are kept, how each change is appended, and how a file is read back.

A session file is a run file (DESIGN.md) that also holds the conversation. Each answer is its
token records and then its `{"summary": …}`, whose `chat` object says how the conversation changed:
keep the first `keep` messages of the one before, then `add` these. A change without an answer
(/clear, /system, /set, /compact, /load …) is one `{"chat": …}` line holding every setting. Folding
the lines in order rebuilds the conversation; a line cut short by a killed process is ignored, so a
file always resumes to its last complete turn.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..engine.config import SAMPLERS, SamplerConfig
from ..engine.generate import Summary
from ..engine.records import event_record, events_from_records, summary_record
from ..engine.sampler import SamplingParams
from ..errors import EntropixError
from .session import ChatSession, Message

HOME_ENV = "ENTROPIX_HOME"  # overrides the data directory (sessions, input history)
NOHISTORY_ENV = "ENTROPIX_NOHISTORY"
SETTINGS = ("system", "sampler", "config", "params", "session_seed", "draws", "max_tokens")


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$ENTROPIX_HOME, else $XDG_DATA_HOME/entropix, else ~/.local/share/entropix."""
    env = os.environ if environ is None else environ
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "entropix"


def sessions_dir(environ: Mapping[str, str] | None = None) -> Path:
    return data_dir(environ) / "sessions"


def history_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where typed lines are remembered between chats; None when ENTROPIX_NOHISTORY is set."""
    env = os.environ if environ is None else environ
    return None if env.get(NOHISTORY_ENV) else data_dir(env) / "history"


def new_session_path(environ: Mapping[str, str] | None = None) -> Path:
    """A fresh file name in the sessions folder: the start time, then the process id."""
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    return sessions_dir(environ) / f"{stamp}-{os.getpid()}.jsonl"


def latest_session(environ: Mapping[str, str] | None = None) -> Path:
    """The most recently written session file; EntropixError when there is none."""
    folder = sessions_dir(environ)
    files = (
        sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    )
    if not files:
        raise EntropixError(f"no saved chat in {folder}; start one with `entropix chat`")
    return files[-1]


# ── reading ───────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class SavedChat:
    """A conversation read back from a session file, with the settings it last had."""

    path: Path
    messages: tuple[Message, ...]
    system: str | None
    sampler: str
    config: SamplerConfig
    params: SamplingParams | None
    session_seed: int
    draws: int
    max_tokens: int
    model: str | None = None  # the model path the chat last ran on
    turns: int = 0  # answers recorded in the file (dropped ones included)


def _message(obj: Any) -> Message:
    if not isinstance(obj, dict) or obj.get("role") not in ("user", "assistant"):
        raise ValueError("a message must be an object with role user or assistant")
    if not isinstance(obj.get("content"), str):
        raise ValueError("a message's content must be text")
    return Message(obj["role"], obj["content"], interrupted=bool(obj.get("interrupted", False)))


def read_session(path: Path) -> SavedChat:
    """Fold a session file (or a /save .jsonl) into the conversation it ends with.

    Raises `EntropixError` (one line naming the file) when it cannot be read or holds no chat.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise EntropixError(f"{path}: no such file; pass a chat session (.jsonl)") from None
    except IsADirectoryError:
        raise EntropixError(f"{path}: is a folder; pass a chat session file (.jsonl)") from None
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise EntropixError(f"{path}: cannot read it ({why})") from None
    lines = text.split("\n")
    if lines and lines[-1]:
        lines.pop()  # no newline yet: the process died while writing this line
    state: dict[str, Any] | None = None
    messages: list[Message] = []
    tokens: list[dict[str, Any]] = []
    turns = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            if "summary" in record or "chat" in record:
                body = record.get("summary") or {}
                change = record.get("chat") or body.get("chat")
                if not isinstance(change, dict):
                    tokens = []
                    continue  # an answer of a plain run file: no conversation in it
                fields = {**body, **change}
                keep, add = int(change.get("keep", 0)), [_message(m) for m in change["add"]]
                if "summary" in record and add and add[-1].role == "assistant":
                    events = tuple(events_from_records(tokens, None))
                    add[-1] = Message("assistant", add[-1].content, events, add[-1].interrupted)
                    turns += 1
                messages = messages[:keep] + add
                state = {k: fields[k] for k in SETTINGS if k in fields}
                state["model"] = (
                    fields.get("model_path") or fields.get("model") or state.get("model")
                )
                tokens = []
            else:
                tokens.append(record)
        except (ValueError, KeyError, TypeError) as e:
            raise EntropixError(f"{path}:{number}: not a chat session line ({e})") from None
    if state is None:
        raise EntropixError(
            f"{path}: holds no chat (no messages recorded); pass a file from "
            "`entropix chat` (its sessions folder or /save)"
        )
    if state.get("sampler") not in SAMPLERS:
        raise EntropixError(f"{path}: unknown sampler {state.get('sampler')!r} recorded")
    try:
        return SavedChat(
            path=path,
            messages=tuple(messages),
            system=state.get("system"),
            sampler=str(state["sampler"]),
            config=SamplerConfig(**state["config"]),
            params=SamplingParams(**state["params"]) if state.get("params") else None,
            session_seed=int(state["session_seed"]),
            draws=int(state.get("draws", 0)),
            max_tokens=int(state["max_tokens"]),
            model=state.get("model"),
            turns=turns,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise EntropixError(f"{path}: cannot rebuild the chat's settings ({e})") from None


# ── writing ───────────────────────────────────────────────────────────────────────────────────


def message_record(m: Message) -> dict[str, Any]:
    record: dict[str, Any] = {"role": m.role, "content": m.content}
    return record | ({"interrupted": True} if m.interrupted else {})


def settings_record(session: ChatSession) -> dict[str, Any]:
    return {
        "system": session.system,
        "sampler": session.sampler,
        "config": asdict(session.config),
        "params": asdict(session.params) if session.params is not None else None,
        "session_seed": session.seed,
        "draws": session.draws,
        "max_tokens": session.max_tokens,
    }


def answer_lines(
    session: ChatSession, answer: Message, keep: int, add: Sequence[Message], **context: Any
) -> str:
    """An answer's token records and its summary, whose `chat` object carries the change."""
    records = [event_record(ev) for ev in answer.events]
    settings = settings_record(session)
    chat = {
        "keep": keep,
        "add": [message_record(m) for m in add],
        "session_seed": settings.pop("session_seed"),
        "draws": settings.pop("draws"),
    }
    records.append(
        summary_record(
            Summary.from_events(answer.events),
            interrupted=answer.interrupted,
            seed=answer.seed,
            **settings,
            **context,
            chat=chat,
        )
    )
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def state_line(session: ChatSession, keep: int, add: Sequence[Message], **context: Any) -> str:
    chat = {"keep": keep, "add": [message_record(m) for m in add], **settings_record(session)}
    return json.dumps({"chat": chat | context}, ensure_ascii=False) + "\n"


@dataclass
class SessionLog:
    """Appends what changed in a `ChatSession` since the last `sync` to one session file.

    The file is created at the first change, so a chat that says nothing leaves no file. Each
    change is a single write of whole lines.
    """

    path: Path
    context: dict[str, Any] = field(default_factory=dict)  # model, model_path, device
    _messages: list[Message] = field(default_factory=list)
    _settings: dict[str, Any] | None = None
    turns: int = 0

    def adopt(self, session: ChatSession, turns: int) -> None:
        """This file already holds `session` as it is now (a resumed chat appends to its file)."""
        self._messages = list(session.messages)
        self._settings = settings_record(session) | self.context
        self.turns = turns

    def sync(self, session: ChatSession) -> None:
        """Append the change since the last call; EntropixError if the file cannot be written."""
        old, new = self._messages, session.messages
        keep = 0
        while keep < min(len(old), len(new)) and old[keep] is new[keep]:
            keep += 1
        add = new[keep:]
        settings = settings_record(session)
        settings |= self.context
        if keep == len(old) and not add and settings == self._settings:
            return
        answer = add[-1] if add and add[-1].role == "assistant" and add[-1].events else None
        if answer is not None:
            context = self.context | {"turn": self.turns}
            text = answer_lines(session, answer, keep, add, **context)
        else:
            text = state_line(session, keep, add, **self.context)
        self._append(text)
        self.turns += answer is not None
        self._messages, self._settings = list(new), settings

    def _append(self, text: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise EntropixError(
                f"cannot write the session file {self.path} ({e.strerror}); "
                "this chat is no longer being saved"
            ) from None


def write_session(path: Path, session: ChatSession, **context: Any) -> None:
    """The whole conversation as a session file (what /save's .jsonl holds): each answer with the
    message before it, so the file resumes and replays like the live session file."""
    lines = [] if session.messages else [state_line(session, 0, [], **context)]
    turn = 0
    for i, m in enumerate(session.messages):
        if m.role == "assistant":
            start = i - 1 if i and session.messages[i - 1].role == "user" else i
            add = session.messages[start : i + 1]
            lines.append(answer_lines(session, m, start, add, turn=turn, **context))
            turn += 1
    path.write_text("".join(lines), encoding="utf-8")


def save(session: ChatSession, path: Path, **context: Any) -> tuple[Path, Path]:
    """/save: PATH.md (the transcript) and PATH.jsonl (every token; it resumes like a session)."""
    base = path.with_suffix("") if path.suffix in (".md", ".jsonl") else path
    md, jsonl = base.with_name(base.name + ".md"), base.with_name(base.name + ".jsonl")
    try:
        md.write_text(session.transcript(str(context.get("model", "entropix chat"))), "utf-8")
        write_session(jsonl, session, **context)
    except OSError as e:
        raise EntropixError(
            f"/save {path}: cannot write it ({e.strerror}); pick another path"
        ) from None
    return md, jsonl
