"""A sampler comparison drawn: the answers in columns, coloured as in chat, and where they part."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..lab.compare import Column
from . import render as tui

MARK = "»"  # before the first token where the columns part; text, so it shows in --plain too


def render_answer(events: Sequence[Any], mark_at: int | None = None) -> Text:
    """An answer's pieces coloured as in chat, with `MARK` before token `mark_at`."""
    merger = tui.PieceMerger()
    text = Text()
    for ev in events:
        if ev.index == mark_at:
            text.append(MARK, style="ui.mark")
        piece = merger.feed(ev)
        if piece is not None:
            text.append_text(piece)
    if mark_at is not None and mark_at >= len(events):  # this column ended where others go on
        text.append(MARK + "(end)", style="ui.mark")
    return text


def render_divergence(columns: Sequence[Column], at: int | None) -> Text:
    """One line: the token index where the samplers part, and what each chose there."""
    if at is None:
        n = len(columns[0].events) if columns else 0
        return Text(f"all samplers chose the same {n} tokens", style="ui.muted")
    line = Text().append(f"{MARK} first divergence at token {at}: ", style="ui.mark")
    for i, col in enumerate(columns):
        ev = col.events[at] if at < len(col.events) else None
        line.append(" · " if i else "", style="ui.muted").append(
            f"{col.sampler} ", style="ui.title"
        )
        if ev is None:
            line.append("(ended)", style="ui.muted")
        else:
            line.append_text(
                tui.styled(repr(ev.text) if ev.text else f"#{ev.token_id}", tui.token_styles(ev))
            )
    return line


def render_compare(
    columns: Sequence[Column], at: int | None, *, seed: int | None = None, bar: bool = True
) -> RenderableType:
    """The answers in columns, then per column: tokens, tok/s, mean entropy and the mix."""
    table = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(Text(col.sampler, style="ui.title"), ratio=1, overflow="fold")
    table.add_row(*(render_answer(col.events, at) for col in columns))
    table.add_section()
    table.add_row(*(_stats(col.summary, bar) for col in columns))
    caption = [render_divergence(columns, at)]
    if seed is not None:
        caption.append(Text(f"seed {seed} (every sampler)", style="ui.muted"))
    return Group(table, *caption)


def _stats(summary: Any, bar: bool) -> Text:
    stats = Text(
        f"{summary.tokens} tokens · {summary.decode_tps:.1f} tok/s\n"
        f"mean entropy {summary.mean_entropy:.2f} bits\n",
        style="ui.muted",
    )
    return stats.append_text(tui.render_mix(summary.quadrants, summary.strategies, bar=bar))


@contextmanager
def decoding(console: Console, total: int) -> Iterator[Callable[[str, int], None]]:
    """A spinner while the samplers decode; yields `progress(sampler, tokens_so_far)`."""
    with console.status(Text("decoding …", style="ui.muted")) as status:

        def progress(sampler: str, done: int) -> None:
            status.update(Text(f"decoding with {sampler}: {done}/{total} tokens", style="ui.muted"))

        yield progress
