"""One `Tokenizer` over four vocabularies: an HF tokenizer.json, a tiktoken or SentencePiece
tokenizer.model, and the vocabulary embedded in a GGUF file. The files are read by `files`, a
GGUF vocabulary is rebuilt by `gguf_vocab`.

Every backend parses special-token text ("<|eot_id|>") as that token, so a rendered chat prompt
encodes alike everywhere, and every backend streams text without ever splitting a character.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import TokenizerError
from .chat_template import ChatTemplate

__all__ = ["StreamingDetokenizer", "Tokenizer"]

# GGUF and SentencePiece token types (the same numbers in both formats).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Special tokens that end a turn wherever a vocabulary has them, besides its declared EOS.
STOP_TOKEN_NAMES = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, as byte-level vocabularies spell them."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


_BYTE_LEVEL = _byte_level_alphabet()
_BYTE_LEVEL_TO_LATIN1 = str.maketrans({c: chr(b) for c, b in _BYTE_LEVEL.items()})
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
# SentencePiece writes one U+FFFD per invalid byte: surrogateescape, then this table, does too.
_ESCAPED_BYTE_TO_FFFD = dict.fromkeys(range(0xDC80, 0xDD00), 0xFFFD)


def _byte_level_bytes(piece: str) -> bytes:
    # As tokenizers' ByteLevel decoder: a piece with any character outside the map stays UTF-8.
    if all(c in _BYTE_LEVEL for c in piece):
        return piece.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1")
    return piece.encode()


def _piece_bytes(piece: str) -> bytes:
    """A SentencePiece-style piece: `<0xNN>` is a raw byte, ▁ a space."""
    if _BYTE_PIECE.fullmatch(piece):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode()


class StreamingDetokenizer:
    """Ids in, printable text out, a token at a time, never splitting a UTF-8 character.

    This version runs each token's bytes through an incremental UTF-8 decoder, so a step costs
    O(token) however long the answer grows.
    """

    def __init__(self, token_bytes: Callable[[int], bytes], *, errors: str = "replace") -> None:
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors)
        self._parts: list[str] = []
        self._read = 0  # parts before this index were returned by last_segment already

    def add_token(self, id: int) -> None:
        self._push(self._utf8.decode(self._token_bytes(id)))

    def finalize(self) -> None:
        self._push(self._utf8.decode(b"", final=True))

    def _push(self, text: str) -> None:
        if text:
            self._parts.append(text)

    @property
    def last_segment(self) -> str:
        """Text made printable since the previous read."""
        segment = "".join(self._parts[self._read :])
        self._read = len(self._parts)
        return segment

    @property
    def text(self) -> str:
        return "".join(self._parts)


class _SentencePieceDetokenizer(StreamingDetokenizer):
    """SentencePiece drops the dummy-prefix space of the first non-control piece; so do we."""

    def __init__(self, table: list[bytes], control: frozenset[int], strips: frozenset[int]) -> None:
        super().__init__(table.__getitem__, errors="surrogateescape")
        self._control, self._strips = control, strips
        self._first = True

    def add_token(self, id: int) -> None:
        data = self._token_bytes(id)
        if self._first and id not in self._control:
            self._first = False
            data = data[1:] if id in self._strips else data
        self._push(self._utf8.decode(data))

    def _push(self, text: str) -> None:
        super()._push(text.translate(_ESCAPED_BYTE_TO_FFFD))


class _WindowDetokenizer(StreamingDetokenizer):
    """For decoders that are not byte-level: decode a short window of ids, emit what it adds.

    HF's ByteFallback decoder turns a whole run of byte tokens into U+FFFDs if the run is not
    valid UTF-8, so nothing is emitted while a run may still grow.
    """

    def __init__(
        self, decode: Callable[[Sequence[int]], str], is_byte: Callable[[int], bool]
    ) -> None:
        super().__init__(lambda id: b"")
        self._decode, self._is_byte = decode, is_byte
        self._ids: list[int] = []
        self._start = 0  # window start: context for a leading space the decoder may strip
        self._done = 0  # ids before this index are emitted

    def add_token(self, id: int) -> None:
        self._ids.append(id)
        if not self._is_byte(id):
            self._emit(final=False)

    def finalize(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        old = self._decode(self._ids[self._start : self._done])
        new = self._decode(self._ids[self._start :])
        if len(new) > len(old) and (final or not new.endswith("\ufffd")):
            self._push(new[len(old) :])
            self._start, self._done = self._done, len(self._ids)


class Tokenizer:
    """Text ↔ token ids for one model, with its chat template and stop tokens."""

    kind: str = ""

    def __init__(
        self,
        *,
        vocab_size: int,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        stop_ids: Iterable[int],
        chat_template: str | None,
        bos_token: str = "",
        eos_token: str = "",
    ) -> None:
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id = bos_id, eos_id
        self.add_bos = add_bos and bos_id is not None
        self.stop_ids = frozenset([*stop_ids, *([] if eos_id is None else [eos_id])])
        self.chat_template = chat_template
        self._bos_token, self._eos_token = bos_token, eos_token
        self._template: ChatTemplate | None = None

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """Special-token text is always parsed; `add_special` prepends BOS when the model wants
        it and the text does not start with it already."""
        ids = self._encode(text)
        if add_special and self.add_bos and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """All ids' text, special tokens included (SentencePiece hides its control tokens)."""
        raise NotImplementedError

    def _token_bytes(self, id: int) -> bytes:
        raise NotImplementedError

    def token_bytes(self, id: int) -> bytes:
        """The token's raw bytes (part of a UTF-8 character for byte tokens)."""
        if not 0 <= id < self.vocab_size:
            last = self.vocab_size - 1
            raise TokenizerError(f"token id {id} is outside the vocabulary (0..{last})")
        return self._token_bytes(id)

    def token_piece(self, id: int) -> str:
        """The token's text for display; bytes of a split character show as \\xNN."""
        if not 0 <= id < self.vocab_size:
            last = self.vocab_size - 1
            raise TokenizerError(f"token id {id} is outside the vocabulary (0..{last})")
        return self._token_bytes(id).decode("utf-8", errors="backslashreplace")

    def render_chat(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """The model's chat template (or the built-in one for its family) applied to messages."""
        if self.chat_template is None:
            raise TokenizerError(
                f"this {self.kind} tokenizer has no chat template; add one to"
                " tokenizer_config.json or use a raw prompt"
            )
        if self._template is None:
            self._template = ChatTemplate(self.chat_template)
        return self._template.render(
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._bos_token,
            eos_token=self._eos_token,
        )

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """Render and encode; BOS is added only if the template did not write it."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special=True)

    def detokenizer(self) -> StreamingDetokenizer:
        """A fresh streaming decoder for one answer."""
        return StreamingDetokenizer(self._token_bytes)


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer`: a tokenizer.json, or a GGUF BPE vocabulary."""

    def __init__(self, tokenizer: Any, *, kind: str = "hf", **info: Any) -> None:
        super().__init__(**info)
        self.kind = kind
        self._tok = tokenizer
        self._byte_level = type(tokenizer.decoder).__name__ == "ByteLevel"
        self._bytes: dict[int, bytes] = {}  # filled as ids are seen: no start-up cost

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def _token_bytes(self, id: int) -> bytes:
        data = self._bytes.get(id)
        if data is None:
            piece = self._tok.id_to_token(id) or ""
            data = _byte_level_bytes(piece) if self._byte_level else _piece_bytes(piece)
            self._bytes[id] = data
        return data

    def _is_byte_token(self, id: int) -> bool:
        return _BYTE_PIECE.fullmatch(self._tok.id_to_token(id) or "") is not None

    def detokenizer(self) -> StreamingDetokenizer:
        if self._byte_level:
            return StreamingDetokenizer(self._token_bytes)
        return _WindowDetokenizer(self.decode, self._is_byte_token)


class TiktokenTokenizer(Tokenizer):
    """Meta's Llama 3 `tokenizer.model` (base64 BPE ranks) through tiktoken."""

    kind = "tiktoken"

    def __init__(self, encoding: Any, **info: Any) -> None:
        super().__init__(**info)
        self._enc = encoding

    def _encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all")

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    def _token_bytes(self, id: int) -> bytes:
        return self._enc.decode_single_token_bytes(id)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (Llama 2, Mistral): a `.model` file or a GGUF "llama" vocabulary."""

    def __init__(self, proto: Any, *, kind: str = "sentencepiece", **info: Any) -> None:
        import sentencepiece

        super().__init__(**info)
        self.kind = kind
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(f"not a usable SentencePiece model ({exc})") from None
        pieces = [(p.piece, p.type) for p in proto.pieces]
        unk = proto.trainer_spec.unk_surface.encode()
        self._bytes = [
            b"" if t == CONTROL else unk if t == UNKNOWN else _piece_bytes(p) for p, t in pieces
        ]
        self._names = {i: p for i, (p, t) in enumerate(pieces) if t == CONTROL}
        norm = proto.normalizer_spec
        strip = norm.add_dummy_prefix or norm.remove_extra_whitespaces
        words = (NORMAL, USER_DEFINED, UNUSED)
        self._strips = frozenset(
            i for i, (p, t) in enumerate(pieces) if strip and t in words and p[:1] == "\u2581"
        )
        specials = (UNKNOWN, CONTROL, USER_DEFINED)
        self._special = {p: i for i, (p, t) in enumerate(pieces) if t in specials}
        alternatives = "|".join(map(re.escape, sorted(self._special, key=len, reverse=True)))
        self._split = re.compile(f"({alternatives})") if self._special else None

    def _encode(self, text: str) -> list[int]:
        if self._split is None:
            return self._sp.encode(text)
        ids: list[int] = []
        # Odd parts are special-token text. Each text part starts afresh with the dummy-prefix
        # space, as llama.cpp does after a special token.
        for n, part in enumerate(self._split.split(text)):
            if n % 2:
                ids.append(self._special[part])
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))

    def _token_bytes(self, id: int) -> bytes:
        return self._names[id].encode() if id in self._names else self._bytes[id]

    def detokenizer(self) -> StreamingDetokenizer:
        return _SentencePieceDetokenizer(self._bytes, frozenset(self._names), self._strips)


def _named_stops(tokens: list[str], types: list[int]) -> list[int]:
    named = enumerate(zip(tokens, types))
    return [i for i, (t, ty) in named if ty == CONTROL and t in STOP_TOKEN_NAMES]
