"""Copy text to the clipboard: the terminal's OSC 52 escape (it travels over SSH and through tmux)
and, where one is installed and a display is local, pbcopy / wl-copy / xclip."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import IO

from ..errors import EntropixError

TOOL_TIMEOUT = 5.0  # seconds; a clipboard tool that hangs (no display) must not hang the chat


def osc52(text: str, environ: Mapping[str, str] | None = None) -> str:
    """The escape that asks the terminal to put `text` on the system clipboard. Inside tmux it is
    sent as it is (tmux takes it with `set-clipboard on`) and once more wrapped for passthrough
    (`allow-passthrough on`), so whichever tmux allows reaches the outer terminal."""
    env = os.environ if environ is None else environ
    payload = base64.b64encode(text.encode("utf-8")).decode("ascii")
    sequence = f"\x1b]52;c;{payload}\x07"
    if env.get("TMUX"):
        sequence += "\x1bPtmux;" + sequence.replace("\x1b", "\x1b\x1b") + "\x1b\\"
    return sequence


def clipboard_tool(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The command line of an installed clipboard tool that can reach a display, or None."""
    env = os.environ if environ is None else environ
    candidates = [
        (sys.platform == "darwin", ["pbcopy"]),
        (bool(env.get("WAYLAND_DISPLAY")), ["wl-copy"]),
        (bool(env.get("DISPLAY")), ["xclip", "-selection", "clipboard"]),
    ]
    for usable, command in candidates:
        if usable and shutil.which(command[0]):
            return command
    return None


def copy(text: str, terminal: IO[str] | None, environ: Mapping[str, str] | None = None) -> str:
    """Copy `text`; returns how ("through the terminal (OSC 52)", "with wl-copy", or both).

    `terminal` is the stream OSC 52 is written to (None when it is not a terminal). Raises
    EntropixError when neither way is available.
    """
    ways = []
    if terminal is not None:
        terminal.write(osc52(text, environ))
        terminal.flush()
        ways.append("through the terminal (OSC 52)")
    tool = clipboard_tool(environ)
    if tool is not None:
        try:
            subprocess.run(
                tool,
                input=text.encode("utf-8"),
                check=True,
                timeout=TOOL_TIMEOUT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            ways.append(f"with {tool[0]}")
        except (OSError, subprocess.SubprocessError):
            pass  # the terminal's copy (if any) still stands
    if not ways:
        raise EntropixError(
            "/copy: no clipboard here (not a terminal, and no pbcopy, wl-copy or xclip with a"
            " display); /save writes the answer to a file"
        )
    return " and ".join(ways)
