"""Token ids to printable text, holding back what could begin a stop string, so a stop never
half-prints and the text before it is never lost."""

from __future__ import annotations

from collections.abc import Sequence

from ..tokenize.tokenizer import Tokenizer


class TextStream:
    """Detokenizes, holding back text that could begin a stop string: a stop never half-prints."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str]):
        self.detok = tokenizer.detokenizer()
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """The text now safe to print, and whether a stop string was reached."""
        self.detok.add_token(token_id)
        text = self.pending + self.detok.last_segment
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                self.pending = ""
                return text[:at], True
        cut = len(text)
        for n in range(min(max((len(s) - 1 for s in self.stops), default=0), len(text)), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stops):
                cut = len(text) - n
                break
        self.pending = text[cut:]
        return text[:cut], False

    def flush(self) -> str:
        """Everything held back, at the end of the answer."""
        self.detok.finalize()
        text, self.pending = self.pending + self.detok.last_segment, ""
        return text
