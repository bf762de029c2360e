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
    """One answered question: right or wrong, the sampler, the question id and the answer text."""
    text = " ".join(answer.text.split())
    mark, style = ("✓", "quad.lehv") if answer.correct else ("✗", "ui.error")
    line = Text(f"{mark} ", style=style).append(f"{answer.sampler:<8} {answer.question.id}: ")
    return line.append(text or "(empty)", style="ui.muted")


def eval_table(rows: list[SamplerScore], *, bar: bool = True) -> Table:
    """One row per sampler: accuracy, mean tokens, decode tok/s, quadrant bar + strategy mix."""
    table = Table("sampler", "accuracy", "mean tokens", "tok/s", "strategy mix", box=None)
    for r in rows:
        accuracy = f"{r.correct}/{r.questions} {100 * r.accuracy:.0f}%"
        # A plain sampler has one strategy; its quadrant mix says what Entropix would have seen.
        counts = (r.strategies,) if r.sampler == "entropix" else (r.strategies, r.quadrants)
        table.add_row(
            r.sampler,
            accuracy,
            f"{r.mean_tokens:.1f}",
            f"{r.tokens_per_second:.1f}",
            tui.render_mix(r.quadrants, *counts, bar=bar),
        )
    return table
