"""Rendering into `Console(file=StringIO)`: quadrant colours, merged pieces, plain text, summary."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from entropix_mlx.engine.generate import Summary, TokenEvent
from entropix_mlx.engine.metrics import Metrics
from entropix_mlx.engine.sampler import SamplingParams
from entropix_mlx.ui import render as tui
from entropix_mlx.ui.chat_view import ChatView

ESC = "\x1b"
# Okabe–Ito truecolor foregrounds of THEME, as rich writes them.
FG = {
    "LELV": "38;2;86;180;233",
    "HELV": "38;2;230;159;0",
    "LEHV": "38;2;0;158;115",
    "HEHV": "38;2;213;94;0",
}
STRATEGY = {
    "MID": "adaptive",
    "LELV": "argmax",
    "HELV": "clarify",
    "LEHV": "explore",
    "HEHV": "resample",
}


def event(
    text: str,
    quadrant: str = "MID",
    *,
    index: int = 0,
    strategy: str | None = None,
    inserted: bool = False,
    entropy: float = 1.0,
    finish: str | None = None,
) -> TokenEvent:
    return TokenEvent(
        index=index,
        token_id=100 + index,
        text=text,
        logprob=-0.5,
        metrics=Metrics(entropy, 2.0, 3.0, 0.1, 0.01, 0.5),
        quadrant=quadrant,
        strategy=strategy or STRATEGY[quadrant],
        params=SamplingParams(0.7, 0, 1.0, 0.0),
        inserted=inserted,
        elapsed=0.1 * (index + 1),
        prompt_tokens=12,
        prefill_seconds=0.05,
        finish_reason=finish,
    )


def coloured(out: str, quadrant: str, text: str) -> bool:
    """`text` printed right after an SGR sequence that sets the quadrant's foreground."""
    return (
        re.search(r"\x1b\[(?:[0-9;]*;)?" + FG[quadrant] + r"m" + re.escape(text), out) is not None
    )


def terminal() -> Console:
    return Console(
        file=io.StringIO(),
        width=80,
        force_terminal=True,
        color_system="truecolor",
        theme=tui.THEME,
        legacy_windows=False,
    )


def stream(console: Console, events: list[TokenEvent], *, live: bool = False) -> str:
    with tui.AnswerView(console, live=live) as view:
        for ev in events:
            view.token(ev)
    view.end(Summary.from_events(events), 300 * 2**20)
    return console.file.getvalue()


def test_each_quadrant_is_printed_in_its_colour() -> None:
    events = [event(f" {q.lower()}word", q, index=i) for i, q in enumerate(STRATEGY)]
    out = stream(terminal(), events)
    for q in FG:
        assert coloured(out, q, f" {q.lower()}word"), q
    assert not any(coloured(out, q, " midword") for q in FG)  # MID keeps the default colour


def test_strategies_are_marked_on_top_of_the_colour() -> None:
    styles = {
        ev.strategy: tui.token_styles(ev)
        for ev in [event("a", "LEHV"), event("b", "HEHV"), event("c", "HELV"), event("d", "MID")]
    }
    assert styles["explore"] == ("quad.lehv", "strategy.explore")
    assert styles["resample"] == ("quad.hehv", "strategy.resample")
    assert styles["clarify"] == ("quad.helv", "strategy.clarify")
    assert styles["adaptive"] == ("quad.mid",)
    ev = event(" ...", "HELV", inserted=True)
    inserted = tui.styled(ev.text, tui.token_styles(ev))
    assert [str(s.style) for s in inserted.spans] == [
        "strategy.inserted"
    ] and inserted.style == "quad.helv"
    out = stream(terminal(), [event(" ...", "HELV", inserted=True)])
    assert re.search(
        r"\x1b\[(?:[0-9;]*;)?7[;m]", out
    )  # reverse video: visible without colour vision


def test_a_character_split_across_tokens_is_printed_whole_in_the_most_uncertain_style() -> None:
    # "é" is two UTF-8 bytes; the detokenizer prints nothing for the first token.
    events = [
        event("caf", "LELV", index=0),
        event("", "HEHV", index=1),
        event("é", "LELV", index=2),
        event(" ok", "LELV", index=3),
    ]
    merger = tui.PieceMerger()
    pieces = [merger.feed(ev) for ev in events]
    assert pieces[1] is None
    assert [p.plain for p in pieces if p] == ["caf", "é", " ok"]
    assert tui.piece_styles(events[1:3]) == tui.token_styles(events[1])  # the HEHV half decides
    out = stream(terminal(), events)
    assert coloured(out, "HEHV", "é")
    assert out.count("é") == 1


def test_split_character_through_a_real_streaming_detokenizer(tmp_path) -> None:
    from checkpoints import write_tokenizer

    from entropix_mlx.tokenize.files import load_tokenizer_path

    write_tokenizer(tmp_path)
    tok = load_tokenizer_path(tmp_path)
    ids = tok.encode("a🙂b")
    assert len(ids) > 3  # the emoji is four byte tokens
    detok, events = tok.detokenizer(), []
    for i, token_id in enumerate(ids):
        detok.add_token(token_id)
        events.append(event(detok.last_segment, "HEHV" if i == 2 else "LELV", index=i))
    out = stream(terminal(), events)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "a🙂b" in plain
    assert coloured(out, "HEHV", "🙂")


def test_plain_mode_writes_no_escape_codes() -> None:
    file = io.StringIO()
    console = tui.make_console(plain=True, file=file)
    events = [
        event("Hello", "LELV"),
        event(" ...", "HELV", index=1, inserted=True),
        event(" world", "HEHV", index=2, finish="stop"),
    ]
    stream(console, events)
    console.print(tui.render_legend())
    view = ChatView(console, plain=True, editor=False)
    view.stats(
        type(
            "S",
            (),
            {
                "answers": 1,
                "tokens": 3,
                "interrupted": 1,
                "mean_entropy": 1.0,
                "quadrants": {"LELV": 1},
                "strategies": {"argmax": 1},
                "context_used": 950,
                "context_limit": 1000,
            },
        )()
    )
    out = file.getvalue()
    assert ESC not in out
    assert "Hello ... world" in out
    assert "█" not in out  # the colour bar means nothing without colour
    assert "ctx 950/1,000 (95 %) · /compact makes room" in " ".join(out.split())


@pytest.mark.parametrize(
    ("flag", "tty", "env", "plain"),
    [
        (False, True, {}, False),
        (True, True, {}, True),
        (False, False, {}, True),
        (False, True, {"NO_COLOR": "1"}, True),
        (False, True, {"TERM": "dumb"}, True),
    ],
)
def test_wants_plain(flag: bool, tty: bool, env: dict, plain: bool) -> None:
    stream_ = type("S", (), {"isatty": lambda self: tty})()
    assert tui.wants_plain(flag, stream_, env) is plain


def test_summary_line() -> None:
    events = [
        event("a", "LELV", index=0),
        event("b", "LELV", index=1),
        event("c", "HEHV", index=2),
        event("", "LELV", index=3, finish="length"),
    ]
    summary = Summary.from_events(events)
    line = tui.render_summary(summary, 512 * 2**20)
    assert "4 tokens" in line.plain
    assert "prefill 12 at 240 tok/s" in line.plain
    assert "decode 10.0 tok/s" in line.plain
    assert "512 MiB peak" in line.plain
    assert "argmax 3 · resample 1" in line.plain or "argmax 3 resample 1" in line.plain
    assert "hit --max-tokens" in line.plain
    bar = tui.render_mix_bar(summary.quadrants)
    assert bar.plain == "█" * tui.BAR_WIDTH
    assert [str(s.style) for s in bar.spans] == ["quad.lelv", "quad.hehv"]
    assert bar.spans[0].end - bar.spans[0].start == 8  # 3 of 4 tokens: 7.5 of 10 cells, rounded up
    stopped = tui.render_summary(summary, interrupted=True).plain
    assert "stopped" in stopped and "MiB" not in stopped
    full = Summary.from_events(events[:-1] + [event("", "LELV", index=3, finish="context")])
    assert "/compact" in tui.render_summary(full).plain


def test_context_gauge_on_the_summary_line() -> None:
    summary = Summary.from_events([event("a", "LELV", finish="stop")])
    line = tui.render_summary(summary, context=(1234, 8192))
    assert "ctx 1,234/8,192 (15 %)" in line.plain and "/compact" not in line.plain
    gauge = tui.render_gauge(7500, 8192)
    assert gauge.plain == "ctx 7,500/8,192 (92 %) · /compact makes room"
    assert str(gauge.style) == "ui.warning"
    assert str(tui.render_gauge(7300, 8192).style) == "ui.muted"  # 89 %: no warning yet


def test_status_line_shows_the_newest_token() -> None:
    first, ev = event("a", index=0), event("b", "LEHV", index=4, entropy=2.5)
    text = tui.render_status(ev, tui.tokens_per_second(first, ev)).plain
    assert "H  2.50 bits" in text and "V  2.00" in text
    assert "LEHV explore" in text and "10.0 tok/s" in text


def test_legend_lists_every_quadrant_and_mark() -> None:
    console = terminal()
    console.print(tui.render_legend())
    out = console.file.getvalue()
    for name in [*tui.QUADRANT_HELP, "inserted", "clarify", "explore", "resample"]:
        assert name in out
    for q in FG:
        assert coloured(out, q, q)


def test_live_view_prints_every_line_once_and_clears_the_status() -> None:
    console = terminal()
    words = [event(f"word{i} " + ("\n" if i % 7 == 6 else ""), index=i) for i in range(40)]
    stream(console, words, live=True)
    out = console.file.getvalue()
    final = out[out.rindex("\x1b[2K") :] if "\x1b[2K" in out else out  # after the last erase
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", out)
    for i in range(40):
        assert f"word{i}" in text
    assert "tok/s" in out  # the status line was shown while streaming
    assert "tok/s · Ctrl-C" not in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", final.split("\n", 1)[-1])


def test_model_info_line() -> None:
    info = type(
        "I",
        (),
        {
            "name": "SmolLM2",
            "size_bytes": 94 * 2**20,
            "quantization": "Q4_1 (GGUF)",
            "layout": "packed (avx2 · 2 threads)",
            "resident_bytes": 94 * 2**20,
            "device": "cpu",
            "load_seconds": 1.25,
        },
    )()
    line = tui.render_model_info(info).plain
    assert line == (
        "SmolLM2 · 94 MiB · Q4_1 (GGUF) · packed (avx2 · 2 threads) · 94 MiB resident · cpu"
        " · loaded in 1.2 s"
    )
    assert tui.render_notice(None) is None
    assert tui.render_notice("kernels not built").plain == "note: kernels not built"
