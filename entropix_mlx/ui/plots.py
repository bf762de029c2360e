"""Terminal plots of a decode's uncertainty, drawn by plotext and returned, never printed.

Three charts: entropy per token and varentropy per token, each against the sampler's thresholds,
and the entropy–varentropy plane cut by the quadrant boundaries with each token a point marked and
coloured by its quadrant. `chart_*` return fixed-size strings; `render_plots` returns a rich
renderable that sizes the charts to the console it is printed on.

plotext draws on one module-level figure, so every chart starts from `plt.clf()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import plotext as plt
from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from ..engine.config import QUADRANTS, Thresholds
from .render import THEME

# A mark per quadrant as well as a colour, so the scatter still reads without colour (--plain).
MARKERS = {"LELV": "o", "MID": "+", "LEHV": "x", "HELV": "^", "HEHV": "#"}
LINE_RGB = (204, 121, 167)  # the ui.mark pink: apart from every quadrant colour
RULE_RGB = (128, 128, 128)
HEIGHT = 14


@dataclass(frozen=True)
class Series:
    """Per token: entropy, varentropy and quadrant (tokens with non-finite metrics are left out)."""

    index: tuple[int, ...]
    entropy: tuple[float, ...]
    varentropy: tuple[float, ...]
    quadrant: tuple[str, ...]

    @classmethod
    def from_events(cls, events: Iterable[Any]) -> Series:
        """From `TokenEvent`s (anything with `index`, `metrics.entropy/varentropy`, `quadrant`)."""
        rows = [
            (ev.index, ev.metrics.entropy, ev.metrics.varentropy, ev.quadrant)
            for ev in events
            if math.isfinite(ev.metrics.entropy) and math.isfinite(ev.metrics.varentropy)
        ]
        return (
            cls(*(tuple(col) for col in zip(*rows, strict=True))) if rows else cls((), (), (), ())
        )


def quadrant_rgb(quadrant: str) -> tuple[int, int, int]:
    """The theme's colour of a quadrant; MID (the terminal's default colour) uses its bar grey."""
    style = THEME.styles.get(f"quad.{quadrant.lower()}")
    color = style.color if style is not None else None
    if color is None or color.is_default:
        color = THEME.styles["bar.mid"].color or Color.parse("grey62")
    r, g, b = color.get_truecolor()
    return r, g, b


def _top(values: Sequence[float], lines: Sequence[tuple[str, float]]) -> float:
    """The axis maximum: the data and every threshold fit, with a little headroom."""
    return max([*values, *(v for _, v in lines), 1e-3]) * 1.05


def _start(width: int, height: int, title: str) -> None:
    plt.clf()
    plt.theme("clear")  # no background colour: reads on dark and light terminals
    plt.plotsize(width, height)
    plt.title(title)


def _ticks(lines: Sequence[tuple[str, float]], top: float) -> tuple[list[float], list[str]]:
    """Ticks at the thresholds, labelled with their names, plus the axis maximum."""
    ticks = [v for _, v in lines] + [top]
    return ticks, [f"{name} {v:g}" for name, v in lines] + [f"{top:.3g}"]


def chart_over_tokens(
    series: Series, which: str, thresholds: Thresholds, *, width: int, height: int = HEIGHT
) -> str:
    """`which` ("entropy" or "varentropy") per token index, with its threshold lines."""
    if which == "entropy":
        values, lines, unit = series.entropy, thresholds.entropy_lines(), "H (bits)"
    else:
        values, lines, unit = series.varentropy, thresholds.varentropy_lines(), "V (bits²)"
    _start(width, height, f"{which} {unit} per token")
    top = _top(values, lines)
    for _, value in lines:
        plt.hline(value, RULE_RGB)
    plt.plot(list(series.index), list(values), marker="braille", color=LINE_RGB)
    plt.xlim(series.index[0], max(series.index[-1], series.index[0] + 1))
    plt.ylim(0, top)
    plt.yticks(*_ticks(lines, top))
    plt.xlabel("token index")
    return plt.build()


def chart_plane(series: Series, thresholds: Thresholds, *, width: int, height: int = HEIGHT) -> str:
    """Varentropy against entropy, one point per token, cut by the quadrant boundaries."""
    _start(width, height, "varentropy V (bits²) against entropy H (bits)")
    ent_lines, vent_lines = thresholds.entropy_lines(), thresholds.varentropy_lines()
    x_top, y_top = _top(series.entropy, ent_lines), _top(series.varentropy, vent_lines)
    for _, value in ent_lines:
        plt.vline(value, RULE_RGB)
    for _, value in vent_lines:
        plt.hline(value, RULE_RGB)
    for quadrant in QUADRANTS:
        points = [(h, v) for h, v, q in _rows(series) if q == quadrant]
        if points:
            xs, ys = zip(*points, strict=True)
            plt.scatter(xs, ys, marker=MARKERS[quadrant], color=quadrant_rgb(quadrant))
    plt.xlim(0, x_top)
    plt.ylim(0, y_top)
    plt.xticks(*_ticks(ent_lines, x_top))
    plt.yticks(*_ticks(vent_lines, y_top))
    plt.xlabel("entropy H (bits)")
    return plt.build()


def _rows(series: Series) -> Iterable[tuple[float, float, str]]:
    return zip(series.entropy, series.varentropy, series.quadrant, strict=True)


def render_quadrant_key(series: Series) -> Text:
    """The scatter's key: each quadrant's mark in its colour and how many tokens fell in it."""
    counts = {q: series.quadrant.count(q) for q in QUADRANTS}
    key = Text("  ")
    for quadrant, count in counts.items():
        key.append(f"{MARKERS[quadrant]} {quadrant} {count}", style=f"quad.{quadrant.lower()}")
        key.append("   ")
    return key.rstrip() or key


@dataclass(frozen=True)
class Plots:
    """The three charts as one rich renderable, as wide as the console unless `width` is given."""

    series: Series
    thresholds: Thresholds
    width: int | None = None
    height: int = HEIGHT
    title: str | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = self.width or options.max_width
        if self.title:
            yield Text(self.title, style="ui.title")
        if not self.series.index:
            yield Text("no tokens to plot", style="ui.muted")
            return
        charts = [
            chart_over_tokens(
                self.series, "entropy", self.thresholds, width=width, height=self.height
            ),
            chart_over_tokens(
                self.series, "varentropy", self.thresholds, width=width, height=self.height
            ),
            chart_plane(self.series, self.thresholds, width=width, height=self.height + 6),
        ]
        for chart in charts:
            text = Text.from_ansi(chart, no_wrap=True, overflow="crop")
            text.rstrip()
            yield text
        yield render_quadrant_key(self.series)


def render_plots(
    events: Iterable[Any],
    config: Any,
    *,
    width: int | None = None,
    height: int = HEIGHT,
    title: str | None = None,
) -> Plots:
    """Plots of `events` against the thresholds of `config` (a `SamplerConfig` or its dict)."""
    return Plots(Series.from_events(events), Thresholds.from_config(config), width, height, title)
