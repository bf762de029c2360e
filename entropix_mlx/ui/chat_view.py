"""The `entropix chat` screen: prompt_toolkit line editing on a terminal (plain line reads on a
pipe), drawing with `render`'s pieces everything `chat.loop.run_chat` shows.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from ..errors import EntropixError
from . import clipboard
from .render import AnswerView, render_help, render_legend, render_stats

CODE_THEME = "monokai"


class ChatView:
    """The chat screen: a line editor for input and the renderers for everything the loop shows.

    `commands` are completed with Tab, and paths after the `path_commands`; `history` is the file
    typed lines are kept in between chats (None: this chat only).
    """

    def __init__(
        self,
        console: Console,
        *,
        plain: bool = False,
        editor: bool = True,
        commands: Collection[str] = (),
        path_commands: Collection[str] = (),
        history: Path | None = None,
    ):
        self.console = console
        self.plain = plain
        self._read = _make_reader(console, editor, plain, commands, path_commands, history)

    def welcome(self) -> None:
        if not self.plain:
            self.console.print(render_legend())
        self.console.print(
            Text("type a message; /help lists commands; Ctrl-D leaves", style="ui.muted")
        )

    def prompt(self, continuation: bool = False) -> str | None:
        """The next input; None at end of input (Ctrl-D). Ctrl-C raises KeyboardInterrupt."""
        try:
            return self._read(continuation)
        except EOFError:
            return None

    def answer(self) -> AnswerView:
        return AnswerView(self.console, live=not self.plain)

    def show(self, renderable: RenderableType) -> None:
        self.console.print(renderable)

    def legend(self) -> None:
        self.show(render_legend())

    def help(self, commands: Mapping[str, str]) -> None:
        self.show(render_help(commands))

    def stats(self, stats: Any) -> None:
        self.show(render_stats(stats, bar=not self.plain))

    def settings(self, values: Mapping[str, str], config: Any) -> None:
        """The chat's settings, then every sampler field with its value."""
        table = Table.grid(padding=(0, 2))
        for name, value in values.items():
            table.add_row(Text(name, style="ui.title"), Text(value, style="ui.muted"))
        self.show(table)
        pairs = [f"{f.name}={getattr(config, f.name)}" for f in fields(config)]
        self.show(Text("  ".join(pairs), style="ui.muted"))

    def turns(self, messages: Sequence[Any], skipped: int) -> None:
        """The last turns of a resumed conversation."""
        if skipped:
            self.notice(f"… {skipped} earlier messages")
        for m in messages:
            if m.role == "user":
                self.console.print(Text("› ", style="ui.prompt") + Text(m.content))
            else:
                text = Text(m.content.strip())
                if m.interrupted:
                    text.append(" (stopped)", style="ui.mark")
                self.console.print(text)

    @contextlib.contextmanager
    def busy(self, label: str) -> Iterator[Callable[[int, int], None]]:
        """A spinner with `done/total` while the cache is filled (nothing on a pipe)."""
        if self.plain or not self.console.is_terminal:
            yield lambda done, total: None
            return
        with self.console.status(Text(label, style="ui.muted")) as status:
            yield lambda done, total: status.update(
                Text(f"{label} {done:,}/{total:,}", style="ui.muted")
            )

    def markdown(self, text: str) -> None:
        self.show(Markdown(text, code_theme=CODE_THEME))

    def copy(self, text: str) -> str:
        """Copy `text` to the clipboard; says how."""
        file = self.console.file  # plain output (--plain, NO_COLOR) on a terminal still copies
        terminal = file if getattr(file, "isatty", lambda: False)() else None
        return clipboard.copy(text, terminal)

    def edit(self, text: str) -> str | None:
        """Let the user write in $VISUAL / $EDITOR (else vi); the text they saved, or None."""
        return edit_in_editor(text)

    def notice(self, message: str) -> None:
        self.show(Text(message, style="ui.muted"))

    def warning(self, message: str) -> None:
        self.show(Text(message, style="ui.warning"))

    def error(self, message: str) -> None:
        self.show(Text(message, style="ui.error"))


def edit_in_editor(text: str, environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    editor = env.get("VISUAL") or env.get("EDITOR") or "vi"
    command = shlex.split(editor)
    if not command or shutil.which(command[0]) is None:
        raise EntropixError(f"/edit: editor {editor!r} not found; set $EDITOR to your editor")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "message.md"
        path.write_text(text, encoding="utf-8")
        result = subprocess.run([*command, str(path)])
        if result.returncode != 0:
            raise EntropixError(f"/edit: {editor} exited with status {result.returncode}")
        return path.read_text(encoding="utf-8")


def _make_reader(
    console: Console,
    editor: bool,
    plain: bool,
    commands: Collection[str],
    path_commands: Collection[str],
    history: Path | None,
) -> Callable[[bool], str]:
    """prompt_toolkit (editing, history, Tab completion, Alt-Enter for a new line) on a terminal;
    plain line reads for pipes."""
    if editor and sys.stdin.isatty() and sys.stdout.isatty():
        return _line_editor(plain, commands, path_commands, history)

    def read(continuation: bool) -> str:
        console.print(Text("… " if continuation else "› ", style="ui.prompt"), end="")
        console.file.flush()
        line = sys.stdin.readline()
        if not line:
            console.print()
            raise EOFError
        if not sys.stdin.isatty():  # piped input is not echoed: show it, so the transcript reads on
            console.print(line.rstrip("\n"), markup=False, highlight=False)
        return line.rstrip("\n")

    return read


def _line_editor(
    plain: bool, commands: Collection[str], path_commands: Collection[str], history: Path | None
) -> Callable[[bool], str]:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.formatted_text import FormattedText
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    kept: History = InMemoryHistory()
    if history is not None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            history.touch()
            kept = FileHistory(str(history))
        except OSError:
            pass  # an unwritable data folder: history for this chat only
    keys = KeyBindings()

    @keys.add("escape", "enter")  # Esc-Enter, and Alt-Enter (terminals send it as Esc, Enter)
    def _(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    session: PromptSession[str] = PromptSession(
        history=kept,
        completer=_completer(commands, path_commands),
        complete_while_typing=False,
        key_bindings=keys,
        prompt_continuation=lambda width, line, soft: "  ",
    )
    style = "" if plain else "bold fg:#0072B2"
    first, more = FormattedText([(style, "› ")]), FormattedText([(style, "… ")])
    return lambda continuation: session.prompt(more if continuation else first)


def _completer(commands: Collection[str], path_commands: Collection[str]) -> Any:
    """Tab: a /command's name, or a path after the commands that take one."""
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    names = sorted({c.split()[0] for c in commands})
    paths = PathCompleter(expanduser=True)

    class ChatCompleter(Completer):
        def get_completions(self, document: Document, event: Any) -> Iterator[Completion]:
            text = document.text_before_cursor
            if not text.startswith("/"):
                return
            name, space, rest = text.partition(" ")
            if not space:
                yield from (Completion(n, -len(name)) for n in names if n.startswith(name))
            elif name in path_commands:
                arg = rest.lstrip()
                yield from paths.get_completions(Document(arg, len(arg)), event)

    return ChatCompleter()
