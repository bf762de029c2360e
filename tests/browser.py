"""Headless Chromium for the web page's tests: Debian's `chromium` driven by Playwright for Python.

No Playwright browser download (there is no network for it): Playwright launches the system
Chromium. `make install` installs it when missing (apt-get, as root); elsewhere the tests skip and
say how to get it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}


def chromium_path() -> str | None:
    """ENTROPIX_CHROMIUM, else Debian's chromium, else one on PATH."""
    env = os.environ.get("ENTROPIX_CHROMIUM")
    for path in [env, *CANDIDATES, shutil.which("chromium"), shutil.which("chromium-browser")]:
        if path and os.access(path, os.X_OK):
            return path
    return None


@contextmanager
def chromium_context() -> Iterator[Any]:
    """A fresh browser context (new user-data dir) or a skip naming what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: run `make install` (pip install -e '.[test]')")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium: `make install` installs Debian's chromium as root; "
                    "else `apt-get install chromium` or set ENTROPIX_CHROMIUM")  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="entropix-chromium-") as profile,
        sync_playwright() as p,
    ):
        context = p.chromium.launch_persistent_context(
            profile, executable_path=path, headless=True, args=FLAGS, viewport=DESKTOP,
            accept_downloads=True, color_scheme="light",
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


class Page:
    """A page on the app with its console errors collected, and the steps a person takes."""

    def __init__(self, context: Any, url: str):
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(url)
        self.page.wait_for_function("document.getElementById('status').textContent !== ''")

    def settings(self, **fields: str) -> None:
        """Fill settings by element id (`max_tokens` → #max-tokens); selects are selected."""
        self.page.evaluate("document.getElementById('settings').open = true")
        for name, value in fields.items():
            selector = "#" + name.replace("_", "-")
            if self.page.eval_on_selector(selector, "e => e.tagName") == "SELECT":
                self.page.select_option(selector, value)
            else:
                self.page.fill(selector, value)

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def wait_answered(self, count: int, timeout: float = 60_000) -> None:
        """Until `count` answers have their summary line and no request is running."""
        self.page.wait_for_function(
            f"document.querySelectorAll('.msg.assistant .summary:not(:empty)').length >= {count}"
            " && !document.body.classList.contains('busy')",
            timeout=timeout,
        )

    def answers(self) -> list[dict[str, Any]]:
        """Each answer's records, summary and pieces as the page holds them."""
        return self.page.evaluate(
            """() => window.entropix.state.answers.map((a) => ({
                records: a.records, summary: a.summary, content: a.content, stopped: a.stopped,
                pieces: a.pieces.map((p) => ({indices: p.indices, cls: p.node.className,
                                              text: p.node.textContent}))}))"""
        )

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


def card_fields(page: Any) -> dict[str, str]:
    """The visible token card's fields (dt → dd) plus its quadrant and token text."""
    return page.evaluate(
        """() => {
          const card = document.getElementById('card');
          const out = {hidden: card.hidden, text: card.querySelector('.card-text')?.textContent,
                       quadrant: card.querySelector('.pill')?.textContent,
                       why: card.querySelector('.card-why')?.textContent};
          card.querySelectorAll('dd').forEach((dd) => { out[dd.dataset.field] = dd.textContent; });
          return out;
        }"""
    )


def sse_records(body: bytes) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The per-token records and the summary carried by an SSE body of the chat endpoint."""
    records: list[dict[str, Any]] = []
    summary = None
    for line in body.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line[6:]).get("choices", []):
            extra = choice.get("entropix") or {}
            records += extra.get("tokens", [])
            summary = extra.get("summary", summary)
    return records, summary
