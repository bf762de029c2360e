"""Drive the real `entropix chat` on the default model in a terminal (tmux), the way a person would:
ask, watch coloured tokens and the live status, /retry, Ctrl-C in the middle of an answer, /exit."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENTROPIX = Path(sys.executable).with_name("entropix")
SUMMARY = re.compile(r"\d+ tokens? · prefill (\d+) at ")
SGR = re.compile(r"\x1b\[[0-9;]*m")


class Terminal:
    """A 100×50 tmux pane on a private server: send keys, read the screen (with or without SGR)."""

    def __init__(self, command: str):
        self.server = ["tmux", "-L", f"entropix-test-{os.getpid()}", "-f", "/dev/null"]
        subprocess.run(
            [*self.server, "new-session", "-d", "-s", "t", "-x", "100", "-y", "50", command],
            check=True,
            env=os.environ | {"TERM": "xterm-256color"},
        )

    def screen(self, escapes: bool = False) -> str:
        args = ["capture-pane", "-p", "-t", "t", *(["-e"] if escapes else [])]
        return subprocess.run([*self.server, *args], capture_output=True, text=True).stdout

    def send(self, *keys: str) -> None:
        subprocess.run([*self.server, "send-keys", "-t", "t", *keys], check=True)

    def wait(self, predicate, timeout: float, what: str) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([*self.server, "kill-server"], capture_output=True)


def summaries(screen: str) -> list[int]:
    """The prefill counts of the summary lines on screen, top to bottom."""
    return [int(m.group(1)) for m in SUMMARY.finditer(screen)]


@pytest.mark.slow
def test_chat_like_a_person(smollm2_gguf: Path, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    done = tmp_path / "exit-code"
    chat = f"{ENTROPIX} chat --model {smollm2_gguf} --max-tokens 40 --seed 1"
    term = Terminal(f"{chat}; echo $? > {shlex.quote(str(done))}; sleep 30")
    try:
        term.wait(lambda s: "/help lists commands" in s, 60, "the model to load")
        assert "LELV" in term.screen() and "loaded in" in term.screen()  # legend and model line

        term.send("What is the capital of France?", "Enter")
        seen_status = False

        def answered(screen: str) -> bool:
            nonlocal seen_status
            seen_status |= "tok/s · Ctrl-C stops" in screen
            return len(summaries(screen)) == 1

        screen = term.wait(answered, 30, "the first answer")
        assert seen_status, "the live status line never showed"
        coloured = term.screen(escapes=True)
        answer = coloured.split("What is the capital of France?", 1)[1].split(
            "tokens · prefill", 1
        )[0]
        assert SGR.search(answer), "the answer's tokens are not coloured"
        assert "Ctrl-C stops" not in screen  # the status line is gone once the answer ends
        first_prefill = summaries(screen)[0]

        term.send("/retry", "Enter")
        screen = term.wait(lambda s: len(summaries(s)) == 2, 30, "the retried answer")
        assert summaries(screen)[1] == 1 < first_prefill  # the prompt came from the cache

        term.send("Write a long story about a dragon who learns to bake bread.", "Enter")
        term.wait(lambda s: "Ctrl-C stops" in s, 20, "the story to start")
        term.send("C-c")
        # rich wraps the long summary line itself, so compare with whitespace collapsed.
        screen = term.wait(
            lambda s: "stopped (kept in the history)" in " ".join(s.split()),
            10,
            "Ctrl-C to stop the answer",
        )
        assert screen.rstrip().splitlines()[-1].startswith("›")  # back at the prompt

        term.send("/stats", "Enter")
        term.wait(lambda s: "2 answers" in s and "1 stopped" in s, 10, "/stats")
        term.send("C-c")  # at the prompt: asks once
        term.wait(lambda s: "press Ctrl-C again" in s, 5, "the prompt's Ctrl-C hint")
        term.send("/exit", "Enter")
        end = time.monotonic() + 10
        while not done.exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert done.exists() and done.read_text().strip() == "0", term.screen()
        assert "Traceback" not in term.screen()
    finally:
        term.close()
