"""One `Tokenizer` over four vocabularies: an HF tokenizer.json, a tiktoken or SentencePiece
tokenizer.model, and the vocabulary embedded in a GGUF file (rebuilt by gguf_vocab.py).

Every backend parses special-token text ("<|eot_id|>") as that token, so a rendered chat prompt
encodes alike everywhere, and every backend streams text without ever splitting a character.
"""

from __future__ import annotations

import base64
import codecs
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .chat_template import LLAMA2_TEMPLATE, LLAMA3_TEMPLATE, ChatTemplate
from .errors import TokenizerError

__all__ = [
    "GGUF_PRE_TOKENIZERS",
    "StreamingDetokenizer",
    "Tokenizer",
    "load_tokenizer_path",
    "tokenizer_from_gguf",
]

# GGUF and SentencePiece token types (the same numbers in both formats).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Special tokens that end a turn wherever a vocabulary has them, besides its declared EOS.
STOP_TOKEN_NAMES = (
    "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "<end_of_turn>",
)  # fmt: skip
BOS_TOKEN_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")

# Meta's Llama 3 split pattern and the 3.1 names of its 256 special tokens (llama3/tokenizer.py).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(2, 247)),
)  # fmt: skip

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


def load_tokenizer_path(path: Path) -> Tokenizer:
    """Load a folder (tokenizer.json, else tokenizer.model, with tokenizer_config.json beside
    it) or one of those files."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return load_tokenizer_path(path / name)
        raise TokenizerError(
            f"{path}: no tokenizer.json or tokenizer.model; copy the model's tokenizer files there"
        )
    if not path.is_file():
        raise TokenizerError(
            f"{path}: no such file; pass a tokenizer.json, a tokenizer.model or a model folder"
        )
    config = _read_config(path.parent)
    if path.suffix == ".json":
        return _load_hf(path, config)
    with path.open("rb") as f:
        head = f.read(256)
    if head.startswith(b"GGUF"):
        raise TokenizerError(f"{path}: a GGUF model; load the model to use its vocabulary")
    if re.match(rb"[A-Za-z0-9+/]+=* \d+\r?\n", head):
        return _load_tiktoken(path, config)
    return _load_sentencepiece(path, config)


def _read_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json, chat_template.jinja and generation_config.json's EOS ids."""
    files: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "generation_config.json"):
        if (folder / name).is_file():
            try:
                files[name] = json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                msg = f"{folder / name}: unreadable ({exc}); fix or delete it"
                raise TokenizerError(msg) from None
    config = dict(files.get("tokenizer_config.json", {}))
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        config["chat_template"] = named.get("default", next(iter(named.values()), None))
    if (folder / "chat_template.jinja").is_file():
        config["chat_template"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    for key in ("bos_token", "eos_token"):  # a string, or an AddedToken dict
        if isinstance(config.get(key), dict):
            config[key] = config[key].get("content")
    eos = files.get("generation_config.json", {}).get("eos_token_id")
    config["stop_ids"] = [eos] if isinstance(eos, int) else list(eos or [])
    return config


def _load_hf(path: Path, config: dict[str, Any]) -> Tokenizer:
    from tokenizers import Tokenizer as RustTokenizer

    try:
        tok = RustTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for any parse problem
        msg = f"{path}: not a valid tokenizer.json ({exc}); re-download it"
        raise TokenizerError(msg) from None
    specials = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    bos, eos = config.get("bos_token"), config.get("eos_token")
    if guessed := bos is None:
        bos = next((name for name in BOS_TOKEN_NAMES if name in specials), None)
    bos_id = tok.token_to_id(bos) if bos else None
    add_bos = config.get("add_bos_token")
    if add_bos is None:  # ask the post-processor; a bare Llama vocabulary still wants its BOS
        add_bos = guessed or tok.encode("", add_special_tokens=True).ids[:1] == [bos_id]
    return HFTokenizer(
        tok,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        bos_id=bos_id,
        eos_id=tok.token_to_id(eos) if eos else None,
        add_bos=bool(add_bos),
        stop_ids=[*(specials[n] for n in STOP_TOKEN_NAMES if n in specials), *config["stop_ids"]],
        chat_template=config.get("chat_template"),
        bos_token=bos or "",
        eos_token=eos or "",
    )


def _load_tiktoken(path: Path, config: dict[str, Any]) -> Tokenizer:
    import tiktoken

    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        try:
            if line:
                piece, rank = line.split()
                ranks[base64.b64decode(piece, validate=True)] = int(rank)
        except ValueError:
            msg = f"{path}: bad tiktoken line {line[:40]!r}; re-download it"
            raise TokenizerError(msg) from None
    specials = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIALS)}
    enc = tiktoken.Encoding(
        path.stem, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    return TiktokenTokenizer(
        enc,
        vocab_size=enc.n_vocab,
        bos_id=specials["<|begin_of_text|>"],
        eos_id=specials["<|eot_id|>"],
        add_bos=config.get("add_bos_token", True),
        stop_ids=[*(specials[n] for n in STOP_TOKEN_NAMES if n in specials), *config["stop_ids"]],
        chat_template=config.get("chat_template") or LLAMA3_TEMPLATE,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )


def _load_sentencepiece(path: Path, config: dict[str, Any]) -> Tokenizer:
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError:
        proto.Clear()
    if not proto.pieces:
        raise TokenizerError(
            f"{path}: neither a tiktoken nor a SentencePiece tokenizer.model; use the model's own"
        )
    pieces = [p.piece for p in proto.pieces]
    spec = proto.trainer_spec
    bos, eos = (i if 0 <= i < len(pieces) else None for i in (spec.bos_id, spec.eos_id))
    try:
        return SentencePieceTokenizer(
            proto,
            vocab_size=len(pieces),
            bos_id=bos,
            eos_id=eos,
            add_bos=config.get("add_bos_token", True),
            stop_ids=[*_named_stops(pieces, [p.type for p in proto.pieces]), *config["stop_ids"]],
            chat_template=config.get("chat_template") or LLAMA2_TEMPLATE,
            bos_token=pieces[bos] if bos is not None else "",
            eos_token=pieces[eos] if eos is not None else "",
        )
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}; use the model's own tokenizer.model") from None


def _named_stops(tokens: list[str], types: list[int]) -> list[int]:
    named = enumerate(zip(tokens, types))
    return [i for i, (t, ty) in named if ty == CONTROL and t in STOP_TOKEN_NAMES]


def tokenizer_from_gguf(metadata: dict[str, Any], *, source: str = "GGUF file") -> Tokenizer:
    """The tokenizer embedded in a GGUF file; see `gguf_vocab.tokenizer_from_gguf`."""
    from .gguf_vocab import tokenizer_from_gguf

    return tokenizer_from_gguf(metadata, source=source)


def __getattr__(name: str) -> Any:
    # GGUF_PRE_TOKENIZERS lives in gguf_vocab, which imports this module: re-export it lazily.
    if name == "GGUF_PRE_TOKENIZERS":
        from .gguf_vocab import GGUF_PRE_TOKENIZERS

        return GGUF_PRE_TOKENIZERS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
