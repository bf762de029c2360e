"""Rendering of token events with rich: colour per quadrant, strategy marks, live status, summaries.

The rich code lives here (the chat screen and its prompt_toolkit line editor in chat_view.py); the
library only yields data. `render_*` functions are pure and return renderables; the view classes
own a passed-in `Console` and are context managers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from rich.theme import Theme

from ..engine.config import QUADRANTS

if TYPE_CHECKING:  # keep `entropix --help` free of MLX
    from ..engine.generate import Summary, TokenEvent

# Okabe–Ito colours: distinguishable with the common forms of colour blindness. Strategies add a
# text attribute on top, so the sampler's choice shows even where a colour is hard to tell apart.
THEME = Theme(
    {
        "quad.lelv": "#56B4E9",
        "quad.mid": "default",
        "quad.helv": "#E69F00",
        "quad.lehv": "#009E73",
        "quad.hehv": "#D55E00",
        "strategy.inserted": "reverse",
        "strategy.clarify": "italic",
        "strategy.explore": "underline",
        "strategy.resample": "bold",
        "bar.mid": "grey62",
        "ui.muted": "grey50",
        "ui.error": "bold red",
        "ui.warning": "#E69F00",
        "ui.title": "bold",
        "ui.prompt": "bold #0072B2",
        "ui.mark": "italic #CC79A7",
    }
)

QUADRANT_HELP = {  # in QUADRANTS order, least to most uncertain
    "LELV": "low entropy, low varentropy: confident",
    "MID": "in between: adaptive sampling",
    "LEHV": "low entropy, high varentropy: a fork",
    "HELV": "high entropy, low varentropy: uniformly unsure",
    "HEHV": "high entropy, high varentropy: lost",
}
STRATEGY_HELP = {
    "inserted": ("clarify text inserted by the sampler", "strategy.inserted"),
    "clarify": ("sampled hotter after a clarify insertion", "strategy.clarify"),
    "explore": ("explore: hotter, wider top-k at a fork", "strategy.explore"),
    "resample": ("resample: high temperature when lost", "strategy.resample"),
}
MARKED = ("clarify", "explore", "resample")  # argmax/adaptive/greedy/sample print unmarked
BAR_WIDTH = 10


def wants_plain(plain: bool, stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Plain text when asked, when `stream` is not a terminal, or with NO_COLOR / TERM=dumb."""
    env = os.environ if environ is None else environ
    is_tty = getattr(stream, "isatty", lambda: False)()
    return plain or not is_tty or "NO_COLOR" in env or env.get("TERM") == "dumb"


def make_console(
    *, plain: bool = False, stderr: bool = False, file: IO[str] | None = None
) -> Console:
    """A console with our theme; `plain` drops colour, markup and control codes entirely."""
    bare = dict(no_color=True, markup=False, emoji=False, color_system=None, force_terminal=False)
    return Console(
        theme=THEME, highlight=False, stderr=stderr, file=file, **(bare if plain else {})
    )


def console(plain: bool = False, *, stderr: bool = False) -> Console:
    """The console for stdout (or stderr): plain when asked, when that stream is not a terminal,
    or with NO_COLOR / TERM=dumb. What every command prints through."""
    stream = sys.stderr if stderr else sys.stdout
    return make_console(plain=wants_plain(plain, stream), stderr=stderr)


# ── pure renderers ────────────────────────────────────────────────────────────────────────────


def token_styles(ev: TokenEvent) -> tuple[str, ...]:
    """Quadrant colour plus a mark for inserted text and the non-default strategies."""
    quadrant = f"quad.{ev.quadrant.lower()}"
    if ev.inserted:
        return quadrant, "strategy.inserted"
    return (quadrant, f"strategy.{ev.strategy}") if ev.strategy in MARKED else (quadrant,)


def piece_styles(events: Sequence[TokenEvent]) -> tuple[str, ...]:
    """The styles of one printed piece spanning `events`: its most uncertain token decides."""
    rank = {q: i for i, q in enumerate(QUADRANTS)}  # a piece shows its most uncertain token
    inserted = [e for e in events if e.inserted]
    worst = max(events, key=lambda e: rank.get(e.quadrant, 0))
    return token_styles(inserted[0] if inserted else worst)


def styled(text: str, styles: Sequence[str]) -> Text:
    """Text in several theme styles at once (one style string cannot name two theme entries)."""
    out = Text(text, style=styles[0])
    for style in styles[1:]:
        out.stylize(style)
    return out


class PieceMerger:
    """Turns events into printed pieces: a token that completes no text (half a UTF-8 character)
    is held back and styled together with the token that completes it."""

    def __init__(self) -> None:
        self._held: list[TokenEvent] = []

    def feed(self, ev: TokenEvent) -> Text | None:
        self._held.append(ev)
        if not ev.text:
            return None
        held, self._held = self._held, []
        return styled(ev.text, piece_styles(held))


def tokens_per_second(first: TokenEvent, ev: TokenEvent) -> float:
    span = ev.elapsed - first.elapsed
    return (ev.index - first.index) / span if span > 0 else 0.0


def render_status(ev: TokenEvent, tps: float) -> Text:
    """The live footer: the newest token's entropy, varentropy, strategy and the decode speed."""
    m = ev.metrics
    text = Text(f"H {m.entropy:5.2f} bits · V {m.varentropy:5.2f} · ", style="ui.muted")
    text.append(f"{ev.quadrant:<4}", style=f"quad.{ev.quadrant.lower()}")
    text.append_text(styled(f" {ev.strategy}", token_styles(ev)))
    text.append(f" · {tps:4.1f} tok/s · Ctrl-C stops", style="ui.muted")
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def render_mix_bar(counts: Mapping[str, int], width: int = BAR_WIDTH) -> Text:
    """A small bar of the quadrant mix, least uncertain first (largest-remainder rounding)."""
    total = sum(counts.values())
    bar = Text()
    if not total:
        return bar
    order = [q for q in QUADRANTS if counts.get(q)] + [q for q in counts if q not in QUADRANTS]
    exact = {q: counts[q] * width / total for q in order}
    cells = {q: int(v) for q, v in exact.items()}
    for q in sorted(order, key=lambda q: cells[q] - exact[q])[: width - sum(cells.values())]:
        cells[q] += 1
    for q in order:
        bar.append("█" * cells[q], style="bar.mid" if q == "MID" else f"quad.{q.lower()}")
    return bar


def render_mix(bar_counts: Mapping[str, int], *counts: Mapping[str, int], bar: bool = True) -> Text:
    """The quadrant bar (unless plain) followed by each mix's counts, most frequent first."""
    text = render_mix_bar(bar_counts) if bar else Text()
    words = [
        " ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
        for c in counts
    ]
    return text.append(("" if not bar else " ") + " · ".join(words), style="ui.muted")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


GAUGE_WARN = 0.9  # the context gauge turns to a warning past this share of the context


def render_gauge(used: int, limit: int) -> Text:
    """`ctx 1,234/8,192 (15 %)`, in the warning colour past 90 %."""
    share = used / limit if limit else 0.0
    style = "ui.warning" if share > GAUGE_WARN else "ui.muted"
    text = Text(f"ctx {used:,}/{limit:,} ({share:.0%})".replace("%", " %"), style=style)
    return text.append(" · /compact makes room", style=style) if share > GAUGE_WARN else text


def render_summary(
    summary: Summary,
    peak_memory: int | None = None,
    *,
    interrupted: bool = False,
    bar: bool = True,
    context: tuple[int, int] | None = None,
) -> Text:
    """One line after an answer: tokens, prefill and decode speed, peak memory, context use
    (`context` = tokens used, context size), the mix."""
    line = Text(
        f"{_count(summary.tokens, 'token')} · prefill {summary.prompt_tokens}"
        f" at {summary.prefill_tps:.0f} tok/s"
        f" · decode {summary.decode_tps:.1f} tok/s",
        style="ui.muted",
    )
    if peak_memory is not None:
        line.append(f" · {peak_memory / 2**20:.0f} MiB peak", style="ui.muted")
    if context is not None:
        line.append(" · ", style="ui.muted").append_text(render_gauge(*context))
    if summary.quadrants:
        line.append(" · ", style="ui.muted").append_text(
            render_mix(summary.quadrants, summary.strategies, bar=bar)
        )
    if interrupted:
        line.append(" · stopped (kept in the history)", style="ui.mark")
    elif summary.finish_reason == "length":
        line.append(" · hit --max-tokens", style="ui.muted")
    elif summary.finish_reason == "context":
        line.append(" · context full: /compact drops the oldest turns", style="ui.error")
    return line


def render_legend() -> Table:
    """Each quadrant in its colour with its meaning, then the marks of the strategies."""
    table = Table.grid(padding=(0, 2))
    for quadrant, meaning in QUADRANT_HELP.items():
        table.add_row(
            Text(quadrant, style=f"quad.{quadrant.lower()}"), Text(meaning, style="ui.muted")
        )
    for name, (meaning, style) in STRATEGY_HELP.items():
        table.add_row(Text(name, style=style), Text(meaning, style="ui.muted"))
    return table


def render_model_info(info: Any) -> Text:
    """`name · size · quantization · layout · N MiB resident · device · loaded in N s` from a
    `ModelInfo`."""
    size = f"{info.size_bytes / 2**20:.0f} MiB"
    resident = f"{info.resident_bytes / 2**20:.0f} MiB resident" if info.resident_bytes else ""
    parts = [info.name, size, info.quantization, info.layout, resident, info.device]
    line = Text(" · ".join(str(p) for p in parts if p), style="ui.muted")
    return line.append(f" · loaded in {info.load_seconds:.1f} s", style="ui.muted")


def render_notice(notice: str | None) -> Text | None:
    """A loader's one-line note (e.g. the quantized CPU kernels were not built), if any."""
    return None if not notice else Text(f"note: {notice}", style="ui.warning")


def render_blas_notice(blas: str) -> Text | None:
    """One line when MLX's CPU matmuls run on the reference BLAS (still correct, ~15× slower)."""
    if blas.startswith(("OpenBLAS", "n/a")):
        return None
    return Text(f"note: BLAS is {blas}", style="ui.warning")


def render_profile(sampler: str, config: Any, suggested: str = "reference") -> Text:
    """`sampler · profile · thresholds`, and a hint when the model has a calibrated profile."""
    c = config
    line = Text(
        f"sampler {sampler} · profile {c.profile} · H {c.low_ent:.2f}/{c.med_ent:.2f}/"
        f"{c.high_ent:.2f} bits · V {c.low_vent:.2f}/{c.high_vent:.2f} bits²",
        style="ui.muted",
    )
    if c.profile == "reference" and suggested != "reference":
        line.append(f" · made for this model: --profile {suggested}", style="ui.mark")
    return line


def render_help(commands: Mapping[str, str]) -> Table:
    table = Table.grid(padding=(0, 2))
    for name, meaning in commands.items():
        table.add_row(Text(name, style="ui.title"), Text(meaning, style="ui.muted"))
    return table


def render_stats(stats: Any, *, bar: bool = True) -> Text:
    """This conversation so far (a `chat.ChatStats`): answers, tokens, mean entropy, the mix."""
    text = Text(
        f"{_count(stats.answers, 'answer')} · {_count(stats.tokens, 'token')}"
        f" · mean entropy {stats.mean_entropy:.2f} bits",
        style="ui.muted",
    )
    if stats.interrupted:
        text.append(f" · {stats.interrupted} stopped", style="ui.mark")
    if stats.context_limit:
        text.append(" · ", style="ui.muted").append_text(
            render_gauge(stats.context_used, stats.context_limit)
        )
    if stats.quadrants:
        text.append(" · ", style="ui.muted").append_text(
            render_mix(stats.quadrants, stats.quadrants, stats.strategies, bar=bar)
        )
    return text


def render_header(position: int, total: int, prompt: str, width: int = 60) -> Rule:
    """The header above each answer of a batch run."""
    first = " ".join(prompt.split())
    title = first if len(first) <= width else first[: width - 1] + "…"
    return Rule(Text(f"prompt {position}/{total}: {title}", style="ui.title"), style="ui.muted")


# ── views ─────────────────────────────────────────────────────────────────────────────────────


@contextmanager
def loading(console: Console, label: str | None) -> Iterator[Callable[[str, float], None]]:
    """A spinner while the model loads; yields the loader's `progress(stage, fraction)` callback.

    The caller prints `render_model_info` afterwards (name, size, quantization, device, time).
    """
    label = f"loading {label or 'the default model'} …"
    with console.status(Text(label, style="ui.muted")) as status:
        yield lambda stage, fraction: status.update(Text(f"{label} {stage}", style="ui.muted"))


class AnswerView:
    """Streams one answer: pieces coloured by quadrant, with a live status line on terminals.

    Live mode keeps only the unfinished visual line and the status in rich's `Live` region and
    prints every finished line above it, so the region stays small and output never garbles.
    """

    def __init__(self, console: Console, *, live: bool = True):
        self.console = console
        self.events: list[TokenEvent] = []
        self._merger = PieceMerger()
        self._line = Text()
        self._status = Text()
        self._live = (
            Live(
                console=console,
                transient=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            if live and console.is_terminal
            else None
        )

    def __enter__(self) -> AnswerView:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self.console.print(self._line)
        else:
            self.console.print()

    def token(self, ev: TokenEvent) -> None:
        self.events.append(ev)
        piece = self._merger.feed(ev)
        if self._live is None:
            if piece is not None:
                self.console.print(piece, end="", soft_wrap=True)
                self.console.file.flush()
            return
        if piece is not None:
            self._add(piece)
        self._status = render_status(ev, tokens_per_second(self.events[0], ev))
        self._live.update(Group(self._line, self._status), refresh=True)

    def _add(self, piece: Text) -> None:
        """Append to the open line; print the lines it finishes (hard newlines or word wrap)."""
        self._line.append_text(piece)
        *done, self._line = self._line.split("\n", allow_blank=True)
        wrapped = self._line.wrap(self.console, self.console.width)
        if len(wrapped) > 1:
            done += wrapped[:-1]
            self._line = wrapped[-1]
        for line in done:
            self.console.print(line, overflow="crop", no_wrap=True)

    def end(
        self,
        summary: Summary,
        peak_memory: int | None = None,
        *,
        interrupted: bool = False,
        context: tuple[int, int] | None = None,
    ) -> None:
        bar = self.console.color_system is not None
        line = render_summary(
            summary, peak_memory, interrupted=interrupted, bar=bar, context=context
        )
        self.console.print(line)
