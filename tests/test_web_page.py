"""The web page in headless Chromium against a scripted stand-in server (tests/web_fake.py):
streaming, colours and marks, the token card, charts ⇄ tokens, keyboard, stop, the run-file
download, phone width. The same page against the real server and model: test_web_serve.py."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from browser import PHONE, Page, card_fields, chromium_context
from web_fake import SCRIPT, FakeServer

from entropix_mlx.engine.records import read_run
from entropix_mlx.lab.replay import load_run

FULL = len(SCRIPT)  # max_tokens that plays the whole script and its end-of-turn token


@pytest.fixture(scope="module")
def context():
    with chromium_context() as ctx:
        yield ctx


@pytest.fixture
def fake():
    server = FakeServer()
    server.url = server.start()
    yield server
    server.stop()


@pytest.fixture
def page(context, fake):
    p = Page(context, fake.url)
    yield p
    p.page.close()


def ask(page: Page, text: str, max_tokens: int = FULL, n: int = 1) -> None:
    page.settings(max_tokens=str(max_tokens))
    page.send(text)
    page.wait_answered(n, timeout=10_000)


def test_page_loads_settings_from_props_without_errors(page):
    assert page.page.text_content("#model") == "fake-model"
    assert page.page.input_value("#profile") == "reference"
    assert page.page.eval_on_selector("#max-tokens", "e => e.max") == "512"
    assert "H 0.10/3.00/5.00 bits" in page.page.text_content("#status")
    # the legend names every quadrant and the marked strategies
    legend = page.page.text_content("#legend")
    for word in (
        "LELV",
        "MID",
        "HELV",
        "LEHV",
        "HEHV",
        "inserted",
        "clarify",
        "explore",
        "resample",
    ):
        assert word in legend
    assert page.errors == []


def test_answer_streams_coloured_by_quadrant_and_marked_by_strategy(page):
    ask(page, "Say hello")
    (answer,) = page.answers()
    assert len(answer["records"]) == FULL + 1  # the script and its end-of-turn record
    assert answer["content"] == "".join(r[0] for r in SCRIPT)
    pieces = {p["text"]: p for p in answer["pieces"]}
    assert set(pieces) == {"Hello", ",", " wor", "ld", " …", " caf", "é", "!", "\n", "∎"}
    assert "nl" in pieces["\n"]["cls"].split()  # drawn with a ↵ so it can be hovered
    for piece in answer["pieces"]:
        classes = piece["cls"].split()
        worst = answer["records"][piece["indices"][-1]]
        if len(piece["indices"]) == 1:  # a piece of one token wears that token's quadrant
            assert f"q-{worst['quadrant'].lower()}" in classes
    assert "m-explore" in pieces[" wor"]["cls"] and "m-resample" in pieces["ld"]["cls"]
    assert "m-inserted" in pieces[" …"]["cls"]
    assert not any(c.startswith("m-") for c in pieces["Hello"]["cls"].split())
    # "é" came as two tokens (the first completes no text): one piece, the more uncertain quadrant
    assert pieces["é"]["indices"] == [6, 7] and "q-mid" in pieces["é"]["cls"]
    assert "eot" in pieces["∎"]["cls"]
    line = page.page.text_content(".msg.assistant .summary")
    assert line.startswith("11 tokens · prefill 12 at 120 tok/s · decode 9.5 tok/s · seed 7")
    assert "adaptive 5" in line and "explore 1" in line
    assert page.errors == []


def test_hover_card_shows_that_tokens_metrics(page):
    ask(page, "Say hello")
    page.page.hover(".msg.assistant .tok:nth-child(3)")  # " wor"
    card = card_fields(page.page)
    assert not card["hidden"]
    assert card["text"] == '" wor"' and card["quadrant"] == "LEHV"
    assert card["entropy"] == "2.200 bits" and card["varentropy"] == "7.500 bits²"
    assert card["attn entropy"] == "2.200" and card["attn varentropy"] == "0.520"
    assert card["agreement"] == "0.020" and card["interaction"] == f"{3 + 2 / 7:.3f}"
    assert card["temperature"] == "0.900" and card["top-k"] == "27"
    assert card["top-p"] == "0.900" and card["min-p"] == "0.030"
    assert card["logprob"].startswith("-0.320 (p 0.726)")
    assert "a fork" in card["why"] and "strategy explore" in card["why"]
    page.page.hover(".msg.assistant .tok:nth-child(5)")  # the inserted " …"
    card = card_fields(page.page)
    assert card["quadrant"] == "HELV" and card["logprob"].startswith("— (inserted")
    page.page.mouse.move(5, 5)
    assert card_fields(page.page)["hidden"]


def test_chart_has_a_point_per_token_and_points_and_tokens_select_each_other(page):
    ask(page, "Say hello")
    n = len(page.answers()[0]["records"])
    for chart in ("#chart-h", "#chart-v", "#chart-hv"):
        assert page.page.locator(f"{chart} circle.pt").count() == n
    # every point wears its token's quadrant
    quads = page.page.eval_on_selector_all(
        "#chart-hv circle.pt", "cs => cs.map(c => [+c.dataset.i, c.getAttribute('class')])"
    )
    records = page.answers()[0]["records"]
    assert all(f"q-{records[i]['quadrant'].lower()}" in cls for i, cls in quads)
    # click the point of token 3 ("ld") → its token is selected and its card shown
    page.page.locator("#chart-hv circle.pt[data-i='3']").click()
    assert page.page.text_content(".tok.sel") == "ld"
    assert card_fields(page.page)["quadrant"] == "HEHV"
    # click a token → its points are highlighted in every chart
    page.page.click(".msg.assistant .tok:nth-child(2)")
    for chart in ("#chart-h", "#chart-v", "#chart-hv"):
        assert page.page.eval_on_selector_all(
            f"{chart} circle.pt.sel", "cs => cs.map(c => c.dataset.i)"
        ) == ["1"]


def test_keyboard_moves_through_tokens_and_escape_closes_the_card(page):
    ask(page, "Say hello")
    page.page.focus(".msg.assistant .tok:first-child")
    assert card_fields(page.page)["text"] == '"Hello"'
    page.page.keyboard.press("ArrowRight")
    page.page.keyboard.press("ArrowRight")
    assert page.page.evaluate("document.activeElement.textContent") == " wor"
    assert page.page.evaluate("document.activeElement.getAttribute('aria-describedby')") == "card"
    assert card_fields(page.page)["quadrant"] == "LEHV"
    assert page.page.eval_on_selector_all(
        "#chart-hv circle.pt.sel", "cs => cs.map(c => c.dataset.i)"
    ) == ["2"]
    page.page.keyboard.press("End")
    assert page.page.evaluate("document.activeElement.getAttribute('aria-label')") == "end of turn"
    page.page.keyboard.press("Escape")
    assert card_fields(page.page)["hidden"]
    # one tab stop per answer: Tab from the token leaves the answer
    page.page.focus(".msg.assistant .tok:first-child")
    page.page.keyboard.press("Tab")
    assert not page.page.evaluate("document.activeElement.classList.contains('tok')")


def test_controls_shape_the_request(page, fake):
    page.settings(
        sampler="greedy", profile="reference", seed="5", max_tokens=str(FULL), system="Be brief."
    )
    page.send("Hi")
    page.wait_answered(1)
    page.send("Again")
    page.wait_answered(2)
    first, second = fake.requests
    assert first["stream"] is True and first["max_tokens"] == FULL and first["seed"] == 5
    assert first["entropix"] == {"sampler": "greedy", "profile": "reference"}
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    answer = "".join(r[0] for r in SCRIPT)
    assert second["messages"][1:] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Again"},
    ]  # fmt: skip
    page.page.click("#new-chat")
    assert page.page.locator(".msg").count() == 0
    page.send("Fresh")
    page.wait_answered(1)
    assert fake.requests[-1]["messages"][1:] == [{"role": "user", "content": "Fresh"}]


def test_new_chat_during_an_answer_cancels_it_and_forgets_it(page, fake):
    fake.delay = 0.05
    page.settings(max_tokens="400")
    page.send("Go on and on")
    page.page.wait_for_function("window.entropix.state.answers[0]?.records.length >= 3")
    page.page.click("#new-chat")
    page.page.wait_for_function("!document.body.classList.contains('busy')")
    assert page.page.locator(".msg").count() == 0
    fake.delay = 0
    page.settings(max_tokens=str(FULL))
    page.send("Fresh")
    page.wait_answered(1)
    assert fake.requests[-1]["messages"] == [{"role": "user", "content": "Fresh"}]
    assert len(page.answers()) == 1 and fake.cancelled == 1


def test_a_long_answer_stays_in_sight_as_it_streams(page, fake):
    fake.delay = 0.003
    ask(page, "Go on", max_tokens=400)
    log = page.page.locator("#log").bounding_box()
    last = page.page.locator(".msg.assistant .tok").last.bounding_box()
    assert page.page.evaluate("document.getElementById('log').scrollTop") > 0
    assert log["y"] <= last["y"] and last["y"] + last["height"] <= log["y"] + log["height"] + 1


def test_stop_cancels_the_request_and_keeps_the_partial_answer(page, fake):
    fake.delay = 0.05
    page.settings(max_tokens="400")
    page.send("Go on and on")
    status = "document.getElementById('status').textContent"
    page.page.wait_for_function(f"{status}.startsWith('waiting: 1 request ahead')")
    page.page.wait_for_function(f"{status}.startsWith('reading the prompt: 6/12 tokens')")
    page.page.wait_for_function("window.entropix.state.answers[0]?.records.length >= 5")
    assert page.page.is_enabled("#stop") and not page.page.is_enabled("#send")
    page.page.click("#stop")
    page.wait_answered(1)
    deadline = time.time() + 5
    while fake.cancelled < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert fake.cancelled == 1 and fake.processing == 0
    (answer,) = page.answers()
    assert answer["stopped"] and 5 <= len(answer["records"]) < 400
    assert "stopped" in page.page.text_content(".msg.assistant .summary")
    # the partial answer stays in the history of the next request
    fake.delay = 0
    page.send("Next")
    page.wait_answered(2)
    assert fake.requests[-1]["messages"][-2] == {"role": "assistant", "content": answer["content"]}
    assert page.errors == []


def test_download_is_a_run_file_replay_reads(page, fake, tmp_path):
    ask(page, "Say hello", n=1)
    fake.delay = 0.05
    page.settings(max_tokens="400")
    page.send("Go on")
    page.page.wait_for_function("window.entropix.state.answers[1]?.records.length >= 3")
    page.page.click("#stop")
    page.wait_answered(2)
    with page.page.expect_download() as info:
        page.page.click("#download")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.suffix == ".jsonl"
    groups, summaries = read_run(path)
    answers = page.answers()
    assert [len(g) for g in groups] == [len(a["records"]) for a in answers]
    assert groups[0] == answers[0]["records"]
    assert summaries[0]["tokens"] == FULL + 1 and summaries[0]["finish_reason"] == "stop"
    assert summaries[0]["messages"][-1]["role"] == "user"  # the server's own summary, kept as sent
    stopped = summaries[1]
    assert stopped["interrupted"] is True and stopped["tokens"] == len(groups[1])
    assert stopped["config"] == summaries[0]["config"]  # its profile's, for plot's threshold lines
    assert stopped["messages"][-1] == {"role": "assistant", "content": answers[1]["content"]}
    assert sum(stopped["strategies"].values()) == len(groups[1])
    assert math.isclose(
        stopped["mean_entropy"], sum(r["entropy"] for r in groups[1]) / len(groups[1])
    )
    run = load_run(path)  # what `entropix replay` and `plot` do with it
    assert [len(a.events) for a in run.answers] == [len(g) for g in groups]
    assert run.answers[0].events[2].quadrant == "LEHV"


def test_phone_width_fits_and_screenshots(page, capsys):
    ask(page, "Say hello")
    page.page.hover(".msg.assistant .tok:nth-child(3)")
    desktop = page.screenshot("fake-desktop")
    page.page.set_viewport_size(PHONE)
    page.page.click(".msg.assistant .tok:nth-child(4)")
    assert page.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    box = page.page.locator("#card").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]  # the card docks on phones
    phone = page.screenshot("fake-phone")
    page.page.emulate_media(color_scheme="dark")
    dark = page.screenshot("fake-phone-dark")
    with capsys.disabled():
        print(f"\nweb page screenshots (fake server): {desktop} {phone} {dark}")
    assert all(Path(p).stat().st_size > 10_000 for p in (desktop, phone, dark))


def test_page_palette_and_words_are_the_terminals():
    """The page's colours, legend words, marks and uncertainty order are ui/render.py's."""
    from entropix_mlx.engine.config import QUADRANTS
    from entropix_mlx.ui.render import MARKED, QUADRANT_HELP, STRATEGY_HELP, THEME

    static = Path(__file__).resolve().parents[1] / "entropix_mlx" / "serve" / "static"
    css = (static / "style.css").read_text()
    js = (static / "quadrants.js").read_text()
    for q in ("lelv", "helv", "lehv", "hehv"):
        assert f"--{q}: {THEME.styles[f'quad.{q}'].color.name.lower()};" in css
    for quadrant, meaning in QUADRANT_HELP.items():  # and in the same order (the legend's)
        assert f'  {quadrant}: "{meaning}",' in js
    assert [js.index(f"  {q}: ") for q in QUADRANT_HELP] == sorted(
        js.index(f"  {q}: ") for q in QUADRANT_HELP
    )
    for name, (meaning, _) in STRATEGY_HELP.items():
        assert f'{name}: "{meaning}"' in js
    assert f"MARKED = {json.dumps(list(MARKED))};" in js
    assert f"QUADRANTS = {json.dumps(list(QUADRANTS))};" in js


def test_a_refused_request_says_why_and_stays_out_of_the_history(page, fake):
    page.settings(profile="nope", max_tokens=str(FULL))
    page.send("Hi")
    page.page.wait_for_selector("#error:not([hidden])")
    assert "no profile 'nope'" in page.page.text_content("#error")
    assert "failed" in page.page.get_attribute(".msg.user", "class")
    assert page.page.locator(".msg.assistant").count() == 0
    assert page.page.is_enabled("#send") and not page.page.is_enabled("#stop")
    page.settings(profile="reference")
    page.send("Hello")
    page.wait_answered(1)
    assert page.page.is_hidden("#error")
    assert fake.requests[-1]["messages"] == [{"role": "user", "content": "Hello"}]


def test_sse_reader_survives_any_chunking(page):
    """Events split anywhere (mid-line, mid-UTF-8 character, CRLF, data lines) parse whole."""
    events = page.page.evaluate(
        """async () => {
          const { readEvents } = await import('./static/sse.js');
          const text = ': queued 1\\r\\n\\r\\ndata: {"a": "é€😀"}\\n\\n'
            + 'data: one\\r\\ndata: two\\r\\n\\r\\n: prefill 2/3\\n\\ndata: [DONE]\\n\\n';
          const bytes = new TextEncoder().encode(text);
          const out = [];
          for (const size of [1, 2, 3, 5, 7, bytes.length]) {
            const stream = new ReadableStream({ start(c) {
              for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
              c.close();
            } });
            const got = [];
            for await (const e of readEvents(stream)) got.push(e);
            out.push(got);
          }
          return out;
        }"""
    )
    want = [{"comment": "queued 1"}, {"data": '{"a": "é€😀"}'}, {"data": "one\ntwo"},
            {"comment": "prefill 2/3"}, {"data": "[DONE]"}]  # fmt: skip
    assert all(got == want for got in events)


def test_a_server_without_metrics_still_chats(page, fake):
    fake.metrics = False
    ask(page, "Say hello")
    assert page.page.text_content(".msg.assistant .tokens") == "".join(r[0] for r in SCRIPT)
    assert page.page.locator(".msg .tok").count() == 0
    assert page.page.locator("#chart-hv circle.pt").count() == 0
    assert page.page.is_disabled("#download")  # no records, nothing a run file could hold
    assert page.errors == []


def test_a_server_with_an_api_key_asks_for_it(context, fake):
    fake.api_key = "sesame"
    page = Page(context, fake.url)
    try:
        page.page.wait_for_selector("#error:not([hidden])")
        assert "--api-key" in page.page.text_content("#error")
        page.page.fill("#api-key", "sesame")
        page.page.press("#api-key", "Enter")
        page.page.dispatch_event("#api-key", "change")
        page.page.wait_for_function("document.getElementById('model').textContent === 'fake-model'")
        assert page.page.is_hidden("#error")
        ask(page, "Hi")
        assert len(page.answers()[0]["records"]) == FULL + 1
        # the two 401s of the first /props are the only console errors (the browser logs them)
        assert all("401" in e for e in page.errors)
    finally:
        page.page.close()
