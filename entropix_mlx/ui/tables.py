"""Tables and reports of the lab's results: the eval table, answer lines, calibration reports."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..lab.calibrate import mix_line, quadrant_mix
from ..lab.evaluate import Answer, SamplerScore
from . import render as tui


def calibration_report(out, config, base, samples, plain: bool) -> Any:
    """What was written, and how the calibration tokens split under it and under the base."""

    n = len(samples["entropy"])
    lines = [Text(f"wrote {out} from {n} tokens; use it with --profile {out}", style="ui.title")]
    for name, c in (("calibrated", config), (base.profile, base)):
        line = Text(
            f"{name:>10}: H {c.low_ent:.2f}/{c.med_ent:.2f}/{c.high_ent:.2f} · V "
            f"{c.low_vent:.2f}/{c.high_vent:.2f} · ",
            style="ui.muted",
        )
        mix = quadrant_mix(samples, c)
        bar = tui.render_mix_bar(mix) if not plain else Text()
        lines.append(line.append_text(bar).append(f" {mix_line(mix)}", style="ui.muted"))
    return Group(*lines)


def answer_line(answer: Answer) -> Text:
    """One answered question: right or wrong, the sampler, the question id (#draw after the first)
    and the answer text."""
    text = " ".join(answer.text.split())
    mark, style = ("✓", "quad.lehv") if answer.correct else ("✗", "ui.error")
    draw = f"#{answer.draw}" if answer.draw else ""
    line = Text(f"{mark} ", style=style).append(f"{answer.sampler:<8} {answer.question.id}{draw}: ")
    return line.append(text or "(empty)", style="ui.muted")


def _signed(ci: Any) -> str:
    return f"{100 * ci.estimate:+.1f} [{100 * ci.lo:+.1f},{100 * ci.hi:+.1f}]"


def eval_table(rows: list[SamplerScore], *, bar: bool = True) -> Table:
    """One row per sampler: accuracy (points) with its 95 % CI over questions, the paired
    difference with greedy and its CI, mean tokens, % stopped (not cut), tok/s, strategy mix."""
    table = Table(box=None)
    for header in ("sampler", "acc % [95% CI]", "Δ greedy", "tokens", "stop%", "tok/s"):
        table.add_column(header, no_wrap=True)
    table.add_column("strategy mix")
    for r in rows:
        accuracy = r.accuracy_ci.points() if r.accuracy_ci else "-"
        diff = _signed(r.diff_ci) if r.diff_ci else "-"
        # The rest hit --max-tokens (or the context): the JSONL has every finish reason.
        finish = f"{100 * r.finish_reasons.get('stop', 0) / max(r.answers, 1):.0f}"
        # A plain sampler has one strategy; its quadrant mix says what Entropix would have seen.
        counts = (
            (r.strategies,) if r.sampler.startswith("entropix") else (r.strategies, r.quadrants)
        )
        table.add_row(
            r.sampler,
            accuracy,
            diff,
            f"{r.mean_tokens:.1f}",
            finish,
            f"{r.tokens_per_second:.1f}",
            tui.render_mix(r.quadrants, *counts, bar=bar),
        )
    return table
