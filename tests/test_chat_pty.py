"""Drive the real `entropix chat` on the default model in a terminal (tmux), the way a person would:
ask, watch coloured tokens and the live status, /retry, Ctrl-C in the middle of an answer, /exit;
then a message over several lines, /read, /set, the context gauge, /copy (the clipboard tmux gets
from the OSC 52 escape), /render, and resuming after /exit and after a SIGKILL mid-answer."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENTROPIX = Path(sys.executable).with_name("entropix")
SUMMARY = re.compile(r"\d+ tokens? · prefill (\d+) at ")
SGR = re.compile(r"\x1b\[[0-9;]*m")
_servers = itertools.count()


class Terminal:
    """A 100×50 tmux pane on a private server: send keys, read the screen (with or without SGR).

    The server takes OSC 52 into its paste buffer (`set-clipboard on`), and a pane stays after
    its process ends, so a killed chat's screen can still be read."""

    def __init__(self, command: str):
        name = f"entropix-test-{os.getpid()}-{next(_servers)}"  # a closing one may linger
        self.server = ["tmux", "-L", name, "-f", "/dev/null"]
        subprocess.run(
            [*self.server, "new-session", "-d", "-s", "t", "-x", "100", "-y", "50", command],
            check=True,
            env=os.environ | {"TERM": "xterm-256color"},
        )
        for option in ("set-clipboard on", "remain-on-exit on"):
            subprocess.run([*self.server, "set-option", "-g", *option.split()], check=True)

    def pid(self) -> int:
        """The pane's process (the chat itself when the command starts with `exec`)."""
        args = ["display-message", "-p", "-t", "t", "#{pane_pid}"]
        return int(subprocess.run([*self.server, *args], capture_output=True, text=True).stdout)

    def clipboard(self) -> str:
        return subprocess.run([*self.server, "show-buffer"], capture_output=True, text=True).stdout

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
        # rich wraps the long summary line itself, so compare with whitespace collapsed; then the
        # chat is back at the prompt (once the turn is written to the session file).
        term.wait(
            lambda s: (
                "stopped (kept in the history)" in " ".join(s.split())
                and s.rstrip().splitlines()[-1].startswith("›")
            ),
            10,
            "Ctrl-C to stop the answer",
        )

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


def flat(screen: str) -> str:
    """The screen with whitespace collapsed: rich wraps long lines itself."""
    return " ".join(screen.split())


def kept(turns: int, timeout: float = 10):
    """The newest session file once it holds `turns` answers (it is written after the summary)."""
    from entropix_mlx.chat import store
    from entropix_mlx.errors import EntropixError

    end = time.monotonic() + timeout
    while True:
        try:
            saved = store.read_session(store.latest_session())
            if saved.turns == turns or time.monotonic() > end:
                return saved
        except EntropixError:
            if time.monotonic() > end:
                raise
        time.sleep(0.1)


def chat_in_terminal(model: Path, *args: str) -> Terminal:
    return Terminal(
        f"exec {ENTROPIX} chat --model {model} --max-tokens 24 --seed 1 {' '.join(args)}"
    )


@pytest.mark.slow
def test_chat_keeps_everything_and_resumes(smollm2_gguf: Path, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    from entropix_mlx.chat import store

    question = tmp_path / "question.txt"
    question.write_text("What is the capital of France?\n")
    term = chat_in_terminal(smollm2_gguf)
    try:
        term.wait(lambda s: "/help lists commands" in s, 60, "the model to load")
        term.send('"""Name two', "Enter", 'colours."""', "Enter")  # one message, two lines
        screen = term.wait(lambda s: len(summaries(s)) == 1, 40, "the multi-line answer")
        assert "… colours." in screen  # the continuation prompt
        gauge = re.search(r"ctx (\d+)/8,192 \((\d+) %\)", flat(screen))
        assert gauge and 0 < int(gauge.group(1)) < 8192, flat(screen)
        assert kept(1).messages[0].content == "Name two\ncolours."  # kept as soon as it ended

        term.send(f"/read {question}", "Enter")
        term.wait(lambda s: len(summaries(s)) == 2, 40, "the answer to /read")
        saved = kept(2)
        answer = saved.messages[-1].content
        assert saved.messages[-2].content == "What is the capital of France?"  # as `run -f`

        term.send("/set high_ent=4.2", "Enter")
        term.wait(lambda s: "high_ent = 4.2" in s, 10, "/set")
        term.send("/copy", "Enter")
        term.wait(lambda s: "copied the last answer" in s, 10, "/copy")
        assert "OSC 52" in flat(term.screen())
        end = time.monotonic() + 5
        while term.clipboard() != answer and time.monotonic() < end:
            time.sleep(0.1)
        assert term.clipboard() == answer  # the escape carried exactly the answer

        term.send("/render", "Enter")
        first_words = " ".join(answer.split()[:3])
        term.wait(lambda s: first_words in flat(s.split("/render")[-1]), 10, "/render's Markdown")
        term.send("/exit", "Enter")
        term.wait(lambda s: "kept in" in s, 10, "/exit")
        path = store.latest_session()
        assert store.read_session(path).turns == 2
    finally:
        term.close()

    term = chat_in_terminal(smollm2_gguf, "--resume")
    try:
        term.wait(lambda s: "resumed" in s, 60, "the chat to resume")
        screen = flat(term.screen())
        assert f"resumed{path}:2answers" in "".join(screen.split())
        assert "What is the capital of France?" in screen  # the last turns are shown
        term.send("Write a long story about a dragon who learns to bake bread.", "Enter")
        term.wait(lambda s: "Ctrl-C stops" in s, 30, "the story to start")
        os.kill(term.pid(), signal.SIGKILL)  # the terminal dies mid-answer
        time.sleep(0.5)
    finally:
        term.close()
    saved = store.read_session(path)
    assert saved.turns == 2 and len(saved.messages) == 4  # the last complete turn
    assert saved.config.high_ent == 4.2 and saved.messages[-1].content == answer

    term = chat_in_terminal(smollm2_gguf, "--resume")
    try:
        term.wait(
            lambda s: "resumed" in s and "2 answers" in flat(s), 60, "the resume after a kill"
        )
        term.send("/stats", "Enter")
        term.wait(lambda s: "2 answers" in s.split("/stats")[-1], 10, "/stats after the kill")
        # The input history outlives the killed chat: the file has its last line, and Up reaches
        # it (prompt_toolkit loads the file in the background: press Up until it shows).
        story = "Write a long story about a dragon who learns to bake bread."
        assert f"+{story}" in store.history_file().read_text().splitlines(), "the history file"
        end = time.monotonic() + 15
        while not term.screen().rstrip().endswith(story) and time.monotonic() < end:
            term.send("Up")
            time.sleep(0.5)
        term.wait(lambda s: s.rstrip().endswith(story), 1, "the killed chat's line in the history")
        term.send("C-u", "Say", "M-Enter", "hi", "Enter")  # Alt-Enter: a new line, not send
        term.wait(
            lambda s: "2 answers" in s and len(summaries(s)) >= 1, 40, "the Alt-Enter message"
        )
        assert kept(3).messages[-2].content == "Say\nhi"
        term.send("/exit", "Enter")
        term.wait(lambda s: "kept in" in s, 10, "/exit")
        assert "Traceback" not in term.screen()
    finally:
        term.close()
