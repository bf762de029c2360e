"""The web page against the real `entropix serve` on the default model (a few tokens per answer),
in headless Chromium: it loads clean, an answer streams with every token in its quadrant's colour
class, the card shows the hovered token's own metrics, the charts have a point per token, stop
cancels the request on the server (`/props`), the download is a run file `replay` reads;
screenshots at desktop and phone width are saved and their paths printed."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from browser import PHONE, Page, card_fields, chromium_context, sse_records

from entropix_mlx.engine.records import read_run
from entropix_mlx.lab.replay import load_run

pytestmark = pytest.mark.slow
CHAT = "**/v1/chat/completions"


@pytest.fixture(scope="module")
def server(smollm2_gguf):
    """`entropix serve` on a free port, as a user starts it; its stderr is drained by a thread."""
    cmd = [sys.executable, "-c", "from entropix_mlx.cli import main; main()", "serve",
           "--model", str(smollm2_gguf), "--port", "0", "--max-tokens", "64"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    url, deadline, seen = None, time.time() + 120, []
    while url is None and time.time() < deadline and proc.poll() is None:
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        found = re.search(r"^serving .* at (http://\S+)/v1 ", seen[-1])
        url = found and found.group(1)
    if url is None:
        proc.kill()
        pytest.fail("entropix serve did not start:\n" + "".join(seen))
    yield url
    proc.terminate()
    proc.wait(15)


@pytest.fixture(scope="module")
def context():
    with chromium_context() as ctx:
        yield ctx


@pytest.fixture
def page(context, server):
    p = Page(context, server)
    yield p
    p.page.close()


def props(url: str) -> dict:
    with urllib.request.urlopen(url + "/props", timeout=5) as r:
        return json.load(r)


def test_real_answer_streams_with_metrics_card_chart_and_download(page, tmp_path, capsys):
    page.settings(sampler="entropix", seed="1", max_tokens="8")
    with page.page.expect_response(CHAT) as info:
        page.send("Name a colour.")
    page.wait_answered(1)
    streamed, summary = sse_records(info.value.body())
    (answer,) = page.answers()
    # the page holds exactly what the server streamed, and shows every token
    assert streamed and answer["records"] == streamed and answer["summary"] == summary
    assert summary["tokens"] == len(streamed) <= 8
    assert sorted(i for p in answer["pieces"] for i in p["indices"]) == list(range(len(streamed)))
    for piece in answer["pieces"]:
        if len(piece["indices"]) == 1:
            rec = streamed[piece["indices"][0]]
            assert f"q-{rec['quadrant'].lower()}" in piece["cls"].split()
    assert page.page.locator("#chart-hv circle.pt").count() == len(streamed)
    assert page.page.locator("#chart-h circle.pt").count() == len(streamed)
    # the card of a hovered token shows that token's own numbers
    n, piece = next((n, p) for n, p in enumerate(answer["pieces"], 1) if len(p["indices"]) == 1)
    rec = streamed[piece["indices"][0]]
    page.page.hover(f".msg.assistant .tok:nth-child({n})")
    card = card_fields(page.page)
    assert (
        card["quadrant"] == rec["quadrant"]
        and card["token"] == f"#{rec['index']} · id {rec['token_id']}"
    )
    assert card["entropy"] == f"{rec['entropy']:.3f} bits"
    assert card["varentropy"] == f"{rec['varentropy']:.3f} bits²"
    assert card["attn entropy"] == f"{rec['attn_entropy']:.3f}"
    assert card["interaction"] == f"{rec['interaction_strength']:.3f}"
    assert f"strategy {rec['strategy']}" in card["why"]
    desktop = page.screenshot("serve-desktop")
    # the download is a run file: the records as streamed, the server's summary
    with page.page.expect_download() as download:
        page.page.click("#download")
    path = tmp_path / "chat.jsonl"
    download.value.save_as(path)
    groups, summaries = read_run(path)
    assert groups == [streamed] and summaries[0]["tokens"] == summary["tokens"]
    assert summaries[0]["seed"] == 1 and summaries[0]["sampler"] == "entropix"
    run = load_run(path)
    assert [e.token_id for e in run.answers[0].events] == [r["token_id"] for r in streamed]
    # phone width: no sideways scrolling, the card docks at the bottom
    page.page.set_viewport_size(PHONE)
    page.page.click(f".msg.assistant .tok:nth-child({n})")
    assert page.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone = page.screenshot("serve-phone")
    page.page.screenshot(path=str(phone.with_name("serve-phone-full.png")), full_page=True)
    with capsys.disabled():
        print(
            f"\nweb page screenshots (real server): {desktop} {phone}"
            f" {phone.with_name('serve-phone-full.png')}"
        )
    assert page.errors == []


def test_real_stop_cancels_on_the_server(page, server):
    before = props(server)["cancelled"]
    page.settings(sampler="greedy", max_tokens="64")
    page.send("Count from 1 to 100, one number per line.")
    page.page.wait_for_function(
        "window.entropix.state.answers[0]?.records.length >= 2", timeout=60_000
    )
    page.page.click("#stop")
    page.wait_answered(1)
    deadline = time.time() + 5
    while time.time() < deadline and (
        props(server)["cancelled"] == before or props(server)["processing"]
    ):
        time.sleep(0.1)
    now = props(server)
    assert now["cancelled"] == before + 1 and now["processing"] == 0
    (answer,) = page.answers()
    assert answer["stopped"] and 2 <= len(answer["records"]) < 64
    assert "stopped" in page.page.text_content(".msg.assistant .summary")
    assert page.errors == []
