"""Tokenizer files: a model folder's tokenizer.json (Hugging Face) or tokenizer.model (tiktoken
or SentencePiece), with tokenizer_config.json, chat_template.jinja and generation_config.json
beside it, read into one of `tokenizer`'s backends.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from .chat_template import LLAMA2_TEMPLATE, LLAMA3_TEMPLATE
from .tokenizer import (
    STOP_TOKEN_NAMES,
    HFTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    _named_stops,
)

__all__ = ["load_tokenizer_path"]

# BOS spellings looked for when tokenizer_config.json names no bos_token.
BOS_TOKEN_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")

# Meta's Llama 3 split pattern and the 3.1 names of its 256 special tokens (llama3/tokenizer.py).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(2, 247)),
)


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
