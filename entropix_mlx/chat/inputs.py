"""What a typed line can stand for: a `\"\"\"` block spanning several lines, or a file's text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import EntropixError

FENCE = '"""'
MAX_FILE_BYTES = 256 * 1024  # /read: far beyond any context this runs; a typo'd log file is not


def read_block(first: str, more: Callable[[], str | None]) -> str | None:
    """A `\"\"\"` block (as ollama): `first` opens it, `more()` gives the next lines until one ends
    with the fence. None when input ends first. A one-line `\"\"\"text\"\"\"` is just `text`."""
    body = first[len(FENCE) :]
    if body.endswith(FENCE) and len(body) >= len(FENCE):
        return body[: -len(FENCE)]
    lines = [body] if body else []
    while True:
        line = more()
        if line is None:
            return None
        if line.rstrip().endswith(FENCE):
            lines.append(line.rstrip()[: -len(FENCE)])
            return "\n".join(lines).strip("\n")
        lines.append(line)


def read_message_file(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The text of `path` as a message; one-line `EntropixError`s for everything that stops it."""
    if not path.exists():
        raise EntropixError(f"/read {path}: no such file")
    if path.is_dir():
        raise EntropixError(f"/read {path}: is a folder; pass a text file")
    try:
        size = path.stat().st_size
        if size > limit:
            raise EntropixError(
                f"/read {path}: {size / 1024:,.0f} KiB is over the {limit // 1024} KiB limit;"
                " pass a smaller file or an excerpt"
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise EntropixError(f"/read {path}: not UTF-8 text; pass a plain-text file") from None
    except OSError as e:
        raise EntropixError(f"/read {path}: cannot read it ({e.strerror})") from None
    if not text.strip():
        raise EntropixError(f"/read {path}: the file is empty")
    return text.strip()  # as `run -f`: a file's final newline is not part of the message
