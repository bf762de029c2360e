"""Terminal plots: fixed-size charts with the threshold lines, the quadrant plane with marked and
coloured points, and the ways to get them (`entropix plot`, `run --plot`, chat's /plot)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from checkpoints import make_tiny_checkpoint
from rich.console import Console
from typer.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.engine.generate import TokenEvent
from entropix_mlx.engine.metrics import Metrics
from entropix_mlx.engine.sampler import SamplerConfig, SamplingParams
from entropix_mlx.errors import EntropixError
from entropix_mlx.ui import render as tui
from entropix_mlx.ui.plots import (
    MARKERS,
    Series,
    Thresholds,
    chart_over_tokens,
    chart_plane,
    quadrant_rgb,
    render_plots,
)

REFERENCE = Thresholds(low_ent=0.1, med_ent=3.0, high_ent=5.0, low_vent=0.1, high_vent=5.0)
# (entropy, varentropy, quadrant) of hand-picked tokens, one per quadrant and a few in between.
POINTS = [
    (0.05, 0.05, "LELV"),
    (6.0, 0.05, "HELV"),
    (1.0, 8.0, "LEHV"),
    (6.5, 9.0, "HEHV"),
    (2.0, 2.0, "MID"),
    (2.5, 1.0, "MID"),
    (0.02, 0.01, "LELV"),
]


def event(index: int, entropy: float, varentropy: float, quadrant: str) -> TokenEvent:
    return TokenEvent(
        index=index,
        token_id=100 + index,
        text=f"w{index} ",
        logprob=-0.5,
        metrics=Metrics(entropy, varentropy, 3.0, 0.1, 0.01, 0.5),
        quadrant=quadrant,
        strategy="adaptive",
        params=SamplingParams(0.7, 0, 1.0, 0.0),
        inserted=False,
        elapsed=0.1 * index,
        prompt_tokens=4,
        prefill_seconds=0.01,
    )


EVENTS = [event(i, h, v, q) for i, (h, v, q) in enumerate(POINTS)]


def uncoloured(chart: str) -> list[str]:
    import plotext

    return plotext.uncolorize(chart).splitlines()


def test_entropy_chart_has_its_size_axes_and_threshold_lines() -> None:
    lines = uncoloured(
        chart_over_tokens(Series.from_events(EVENTS), "entropy", REFERENCE, width=70, height=14)
    )
    assert len(lines) == 14 and all(len(line.rstrip()) <= 70 for line in lines)
    text = "\n".join(lines)
    assert "entropy H (bits) per token" in lines[0] and "token index" in lines[-1]
    for label in ("low_ent 0.1", "med_ent 3", "high_ent 5"):
        row = next(line for line in lines if line.lstrip().startswith(label))
        assert row.count("─") > 30, row  # the threshold is a line across the chart
    assert "low_vent" not in text


def test_varentropy_chart_uses_the_varentropy_thresholds() -> None:
    th = Thresholds(0.1, 3.0, 5.0, 0.3, 4.2)
    text = "\n".join(
        uncoloured(
            chart_over_tokens(Series.from_events(EVENTS), "varentropy", th, width=60, height=12)
        )
    )
    assert "varentropy V (bits²) per token" in text
    assert "low_vent 0.3" in text and "high_vent 4.2" in text and "high_ent" not in text


def test_plane_marks_each_quadrant_in_its_corner() -> None:
    lines = uncoloured(chart_plane(Series.from_events(EVENTS), REFERENCE, width=80, height=22))
    assert len(lines) == 22
    text = "\n".join(lines)
    assert "entropy H (bits)" in lines[-1] and "against entropy H" in lines[0]
    for label in ("low_ent 0.1", "med_ent 3", "high_ent 5", "low_vent 0.1", "high_vent 5"):
        assert label in text
    plot_rows = [line for line in lines if "│" in line or "┤" in line]
    top, bottom = plot_rows[: len(plot_rows) // 2], plot_rows[len(plot_rows) // 2 :]
    # High varentropy above, low below; within a row, low entropy left of high entropy.
    assert any(MARKERS["HEHV"] in r for r in top) and any(MARKERS["LEHV"] in r for r in top)
    assert any(MARKERS["HELV"] in r for r in bottom) and any(MARKERS["LELV"] in r for r in bottom)
    helv_row = next(r for r in bottom if MARKERS["HELV"] in r)
    assert helv_row.index(MARKERS["HELV"]) > len(helv_row) // 2


def test_render_plots_colours_points_by_quadrant_on_a_fixed_console() -> None:
    console = Console(
        file=io.StringIO(),
        width=80,
        force_terminal=True,
        color_system="truecolor",
        theme=tui.THEME,
        legacy_windows=False,
    )
    console.print(render_plots(EVENTS, SamplerConfig(), height=12, title="answer 1"))
    out = console.file.getvalue()
    for quadrant in ("LELV", "HELV", "LEHV", "HEHV"):
        r, g, b = quadrant_rgb(quadrant)
        assert f"\x1b[38;2;{r};{g};{b}m{MARKERS[quadrant]}" in out, quadrant
    assert "answer 1" in out and "o LELV 2" in out and "+ MID 2" in out and "# HEHV 1" in out
    assert (
        max(len(line) for line in tui_plain(render_plots(EVENTS, SamplerConfig())).splitlines())
        <= 80
    )


def tui_plain(renderable, width: int = 80) -> str:
    console = tui.make_console(plain=True, file=io.StringIO())
    console.width = width
    console.print(renderable)
    return console.file.getvalue()


def test_plain_plots_have_no_escape_codes_and_follow_the_config() -> None:
    config = SamplerConfig().with_overrides({"high_ent": "4.2", "low_vent": "0.5"})
    out = tui_plain(render_plots(EVENTS, config, width=72, height=10))
    assert "\x1b[" not in out
    assert "high_ent 4.2" in out and "low_vent 0.5" in out and "high_ent 5" not in out
    assert "no tokens to plot" in tui_plain(render_plots([], config))


def test_thresholds_from_a_config_or_its_recorded_dict() -> None:
    assert Thresholds.from_config(SamplerConfig()) == REFERENCE
    assert (
        Thresholds.from_config(
            {
                "low_ent": 0.1,
                "med_ent": 3,
                "high_ent": 5,
                "low_vent": 0.1,
                "high_vent": 5,
                "other": "x",
            }
        )
        == REFERENCE
    )
    with pytest.raises(EntropixError, match="no usable high_ent"):
        Thresholds.from_config({"low_ent": 0.1, "med_ent": 3, "low_vent": 0.1, "high_vent": 5})


# ── the commands ────────────────────────────────────────────────────────────────────────────

runner = CliRunner()


def test_plot_command_on_a_synthetic_run(tmp_path: Path) -> None:
    from entropix_mlx.engine.generate import Summary
    from entropix_mlx.engine.records import event_record, summary_record

    path = tmp_path / "run.jsonl"
    body = [event_record(ev) for ev in EVENTS]
    body.append(summary_record(Summary.from_events(EVENTS), config=SamplerConfig()))
    path.write_text("".join(json.dumps(r) + "\n" for r in body))
    result = runner.invoke(cli.make_app(), ["plot", str(path), "--width", "64", "--height", "10"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b[" not in out and max(len(line) for line in out.splitlines()) <= 64
    for label in (
        "entropy H (bits) per token",
        "varentropy V (bits²) per token",
        "high_vent 5",
        "token index",
        "entropy H (bits)",
        "^ HELV 1",
    ):
        assert label in out


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def test_run_plot_and_chat_plot(tiny_path: Path) -> None:
    run = runner.invoke(
        cli.make_app(),
        ["run", "-f", "-", "--model", str(tiny_path), "-n", "8", "--seed", "1", "--plot"],
        input="hi",
    )
    assert run.exit_code == 0, run.output
    assert "entropy H (bits) per token" in run.stdout and "high_ent 5" in run.stdout

    chat = runner.invoke(
        cli.make_app(),
        ["chat", "--model", str(tiny_path), "-n", "5", "--seed", "1"],
        input="/plot\nhello\n/plot\n/help\n",
    )
    assert chat.exit_code == 0, chat.output
    assert "nothing to plot yet" in chat.stdout
    assert chat.stdout.count("varentropy V (bits²) against entropy H (bits)") == 1
    assert "/plot" in chat.stdout.split("/help")[-1]  # listed by /help
