"""`entropix compare`: the divergence point on hand-made event streams, the side-by-side rendering
(coloured as in chat, plain on a pipe), and the command on a tiny model with its bad inputs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from checkpoints import make_tiny_checkpoint
from conftest import run_main
from rich.console import Console
from typer.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.engine.generate import Summary, TokenEvent
from entropix_mlx.engine.metrics import Metrics
from entropix_mlx.engine.sampler import SamplingParams
from entropix_mlx.engine.tokens import first_difference
from entropix_mlx.lab.compare import Column
from entropix_mlx.ui import render as tui
from entropix_mlx.ui.compare import MARK, render_answer, render_compare

STRATEGY = {"MID": "adaptive", "LELV": "argmax", "LEHV": "explore", "HEHV": "resample"}


def stream(words: str, quadrants: str = "", entropy: float = 1.0) -> tuple[TokenEvent, ...]:
    """One event per space-separated word (token id = the word's hash), quadrants by initial."""
    names = {"L": "LELV", "M": "MID", "X": "LEHV", "H": "HEHV"}
    events = []
    for i, word in enumerate(words.split()):
        quadrant = names[quadrants[i]] if i < len(quadrants) else "MID"
        events.append(
            TokenEvent(
                index=i,
                token_id=sum(map(ord, word)),
                text=f" {word}",
                logprob=-0.1,
                metrics=Metrics(entropy, 1.0, 3.0, 0.1, 0.01, 0.5),
                quadrant=quadrant,
                strategy=STRATEGY[quadrant],
                params=SamplingParams(0.7, 0, 1.0, 0.0),
                inserted=False,
                elapsed=0.05 * (i + 1),
                prompt_tokens=6,
                prefill_seconds=0.01,
            )
        )
    return tuple(events)


def column(sampler: str, events: tuple[TokenEvent, ...]) -> Column:
    return Column(sampler, events, Summary.from_events(events))


def ids(events) -> list[int]:
    return [e.token_id for e in events]


@pytest.mark.parametrize(
    ("streams", "expected"),
    [
        (["the cat sat", "the cat sat", "the cat sat"], None),
        (["the cat sat", "the dog sat", "the cat sat"], 1),
        (["the cat sat", "the cat sat", "a cat sat"], 0),
        (["the cat", "the cat sat on"], 2),  # one ended where the other goes on
        (["the cat sat"], None),
        (["", ""], None),
    ],
)
def test_first_difference(streams: list[str], expected: int | None) -> None:
    assert first_difference(*[ids(stream(s)) for s in streams]) == expected


def plain_render(renderable, width: int = 80) -> str:
    console = tui.make_console(plain=True, file=io.StringIO())
    console.width = width
    console.print(renderable)
    return console.file.getvalue()


def test_marker_sits_before_the_first_differing_token_in_every_column() -> None:
    cols = [
        column("greedy", stream("Paris is the capital")),
        column("entropix", stream("Paris is a city")),
        column("sample", stream("Paris is the city")),
    ]
    at = first_difference(*[c.token_ids for c in cols])
    assert at == 2
    assert render_answer(cols[0].events, at).plain == f" Paris is{MARK} the capital"
    out = plain_render(render_compare(cols, at, seed=42))
    assert "\x1b[" not in out
    assert re.search(r"greedy\s+entropix\s+sample", out)
    assert f"is{MARK} the" in out and f"is{MARK} a city" in out
    assert (
        f"{MARK} first divergence at token 2: greedy ' the' · entropix ' a' · sample ' the'" in out
    )
    assert out.count("4 tokens · 20.0 tok/s") == 3 and "mean entropy 1.00 bits" in out
    assert "seed 42" in out


def test_identical_answers_and_an_early_end() -> None:
    same = [column("greedy", stream("a b c")), column("sample", stream("a b c"))]
    assert "all samplers chose the same 3 tokens" in plain_render(render_compare(same, None))
    short = [column("greedy", stream("a b")), column("sample", stream("a b c"))]
    at = first_difference(*[c.token_ids for c in short])
    out = plain_render(render_compare(short, at))
    assert f"{MARK}(end)" in out and "greedy (ended)" in out


def test_columns_are_coloured_and_mixed_as_in_chat() -> None:
    cols = [
        column("greedy", stream("sure thing", "LL")),
        column("entropix", stream("maybe so", "XH")),
    ]
    console = Console(
        file=io.StringIO(),
        width=80,
        force_terminal=True,
        color_system="truecolor",
        theme=tui.THEME,
        legacy_windows=False,
    )
    console.print(render_compare(cols, first_difference(*[c.token_ids for c in cols])))
    out = console.file.getvalue()
    assert "\x1b[38;2;86;180;233m sure" in out  # LELV sky blue, as tui colours it
    assert "\x1b[4;38;2;0;158;115m maybe" in out  # LEHV green, underlined for explore
    assert "\x1b[1;38;2;213;94;0m so" in out  # HEHV vermilion, bold for resample
    assert "\x1b[1mentropix \x1b[0m\x1b[4;38;2;0;158;115m' maybe'" in out  # the divergence line
    assert "argmax 2" in out and "explore 1 resample 1" in out and "█" in out


# ── the command ─────────────────────────────────────────────────────────────────────────────

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def compare(tiny_path: Path, *args: str, prompt: str = "What is two plus two?"):
    return runner.invoke(
        cli.make_app(), ["compare", "-f", "-", "--model", str(tiny_path), *args], input=prompt
    )


def test_compare_three_samplers_on_a_tiny_model(tiny_path: Path) -> None:
    result = compare(tiny_path, "-n", "8", "--seed", "3")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b[" not in out  # not a terminal: plain
    assert re.search(r"greedy\s+entropix\s+sample", out) and "seed 3" in out
    assert "first divergence at token" in out or "all samplers chose the same" in out
    assert out.count("tok/s") == 3 and out.count("mean entropy") == 3
    assert "greedy 8" in out  # greedy's strategy mix


def test_compare_same_decoder_twice_agrees_and_plots(tiny_path: Path) -> None:
    """`sample` at temperature 0 is argmax: it must agree with greedy token for token."""
    result = compare(
        tiny_path, "-n", "6", "--seed", "1", "--samplers", "greedy,sample", "--temp", "0", "--plot"
    )
    assert result.exit_code == 0, result.output
    assert "all samplers chose the same 6 tokens" in result.stdout
    assert result.stdout.count("entropy H (bits) per token") == 2


@pytest.mark.parametrize(
    ("folder", "profile"),
    [("SmolLM2-135M-Instruct.Q4_1", "smollm2-tuned"), ("tiny-llama", "reference")],
)
def test_profile_auto_follows_the_chosen_model(
    tmp_path: Path, tiny_path: Path, folder: str, profile: str
) -> None:
    """`--profile auto` matches the --model given, not the default model (which is SmolLM2)."""
    model = tmp_path / folder
    model.symlink_to(tiny_path, target_is_directory=True)
    result = compare(
        model, "-n", "2", "--seed", "0", "--samplers", "greedy,entropix", "--profile", "auto"
    )
    assert result.exit_code == 0, result.output
    assert f"sampler entropix · profile {profile} · " in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--samplers", "greedy,nucleus"], "unknown sampler 'nucleus'"),
        (["--samplers", "greedy,greedy"], "name each sampler once"),
        (["--samplers", ","], "name each sampler once"),
        (["--set", "high_ent=x"], "high_ent"),
        (["-n", "0"], "--max-tokens"),
    ],
)
def test_bad_inputs_are_one_line(monkeypatch, capsys, tmp_path: Path, args, needle) -> None:
    prompt = tmp_path / "p.txt"
    prompt.write_text("hi")
    code, out, err = run_main(monkeypatch, capsys, ["compare", "-f", str(prompt), *args])
    assert code != 0 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert "Traceback" not in out + err


def test_help_fits_one_screen() -> None:
    for command in ("compare", "replay", "plot"):
        result = runner.invoke(cli.make_app(), [command, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0 and len(result.stdout.splitlines()) <= 45, command
