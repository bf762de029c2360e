"""The `entropix chat` screen: prompt_toolkit line editing on a terminal (plain line reads on a
pipe), drawing with `render`'s pieces everything `chat.loop.run_chat` shows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, RenderableType
from rich.text import Text

from .render import AnswerView, render_help, render_legend, render_stats


class ChatView:
    """The chat screen: a line editor for input and the renderers for everything the loop shows."""

    def __init__(self, console: Console, *, plain: bool = False, editor: bool = True):
        self.console = console
        self.plain = plain
        self._read = _make_reader(console, editor, plain)

    def welcome(self) -> None:
        if not self.plain:
            self.console.print(render_legend())
        self.console.print(
            Text("type a message; /help lists commands; Ctrl-D leaves", style="ui.muted")
        )

    def prompt(self) -> str | None:
        """The next input line; None at end of input (Ctrl-D). Ctrl-C raises KeyboardInterrupt."""
        try:
            return self._read()
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

    def notice(self, message: str) -> None:
        self.show(Text(message, style="ui.muted"))

    def error(self, message: str) -> None:
        self.show(Text(message, style="ui.error"))


def _make_reader(console: Console, editor: bool, plain: bool) -> Callable[[], str]:
    """prompt_toolkit (editing, arrow-key history) on a terminal; plain line reads for pipes."""
    if editor and sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.formatted_text import FormattedText

        session: PromptSession[str] = PromptSession()
        message = FormattedText([("" if plain else "bold fg:#0072B2", "› ")])
        return lambda: session.prompt(message)

    def read() -> str:
        console.print(Text("› ", style="ui.prompt"), end="")
        console.file.flush()
        line = sys.stdin.readline()
        if not line:
            console.print()
            raise EOFError
        if not sys.stdin.isatty():  # piped input is not echoed: show it, so the transcript reads on
            console.print(line.rstrip("\n"), markup=False, highlight=False)
        return line.rstrip("\n")

    return read
