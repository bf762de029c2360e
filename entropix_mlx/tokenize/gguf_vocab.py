"""The vocabulary embedded in a GGUF file, rebuilt as one of `tokenizer`'s backends.

A "gpt2" vocabulary becomes a Hugging Face byte-level BPE with llama.cpp's split regexes; a
"llama" one is put back together as the SentencePiece model it was taken from.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import TokenizerError
from .chat_template import LLAMA2_TEMPLATE, LLAMA3_TEMPLATE
from .tokenizer import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    _named_stops,
)

__all__ = ["GGUF_PRE_TOKENIZERS", "tokenizer_from_gguf"]


# Split regexes per `tokenizer.ggml.pre`, copied from llama.cpp src/llama-vocab.cpp
# (llm_tokenizer_bpe), including its rewrites of (?i:…) and of \p{Lu}-style classes.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_APOS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_TAIL = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3 = _APOS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|" + _TAIL
_QWEN2 = _APOS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|" + _TAIL
_UP, _LO, _NL = r"((?=[\p{L}])([^a-z]))", r"((?=[\p{L}])([^A-Z]))", r"[^\r\n\p{L}\p{N}]?"
_SLASH_TAIL = r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_TEKKEN = f"{_NL}{_UP}*{_LO}+|{_NL}{_UP}+{_LO}*|\\p{{N}}|{_SLASH_TAIL}"
_GPT4O = f"{_NL}{_UP}*{_LO}+{_APOS}?|{_NL}{_UP}+{_LO}*{_APOS}?|\\p{{N}}{{1,3}}|{_SLASH_TAIL}"


@dataclass(frozen=True)
class _PreTokenizer:
    regexes: tuple[str, ...]  # applied in turn, each splitting the pieces the previous one left
    ignore_merges: bool = False  # a word that is already a token is not merged from bytes
    add_bos: bool = False  # llama.cpp's default when the GGUF has no add_bos_token


_LLAMA3_LIKE = _PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_SMOLLM = _PreTokenizer((r"\p{N}", _GPT2))
_GPT2_ONLY = _PreTokenizer((_GPT2,))
GGUF_PRE_TOKENIZERS = MappingProxyType(
    {
        "default": _PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]")),
        **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"], _LLAMA3_LIKE),
        **dict.fromkeys(["dbrx", "smaug-bpe", "chatglm-bpe", "glm4"], _PreTokenizer((_LLAMA3,))),
        **dict.fromkeys(["smollm", "starcoder", "refact", "command-r", "codeshell"], _SMOLLM),
        **dict.fromkeys(["exaone", "minerva-7b"], _SMOLLM),
        **dict.fromkeys(
            ["gpt-2", "phi-2", "mpt", "olmo", "jais", "gigachat", "exaone4"], _GPT2_ONLY
        ),
        **dict.fromkeys(
            ["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], _PreTokenizer((_QWEN2,))
        ),
        "tekken": _PreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True),
        **dict.fromkeys(["gpt-4o", "llama4"], _PreTokenizer((_GPT4O,))),
        "falcon": _PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]")),
    }
)


def tokenizer_from_gguf(metadata: dict[str, Any], *, source: str = "GGUF file") -> Tokenizer:
    """The tokenizer embedded in a GGUF file, from `mx.load(path, return_metadata=True)`'s
    metadata; `source` names the file in error messages."""
    model = metadata.get("tokenizer.ggml.model")
    tokens = list(metadata.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise TokenizerError(
            f"{source}: no embedded vocabulary (tokenizer.ggml.tokens); convert it with llama.cpp"
        )
    types = _meta_list(metadata, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if model == "gpt2":
        return _gguf_bpe(metadata, tokens, types, source)
    if model == "llama":
        return _gguf_spm(metadata, tokens, types, source)
    raise TokenizerError(
        f"{source}: tokenizer model {model!r} is not supported (only 'gpt2' byte-level BPE and"
        " 'llama' SentencePiece); use a Llama-family GGUF"
    )


def _meta_list(metadata: dict[str, Any], key: str) -> list[Any] | None:
    value = metadata.get(key)  # an mx.array or a list
    return None if value is None else (value.tolist() if hasattr(value, "tolist") else list(value))


def _meta_scalar(metadata: dict[str, Any], key: str) -> Any:
    value = metadata.get(key)  # a 0-d mx.array, a plain number or None
    return value.item() if hasattr(value, "item") else value


def _gguf_info(
    metadata: dict[str, Any], tokens: list[str], types: list[int], add_bos: bool
) -> dict[str, Any]:
    """The `Tokenizer` fields, which every GGUF vocabulary declares the same way."""
    n = len(tokens)
    ids = {}
    for key in ("bos", "eos", "eot", "eom"):
        i = _meta_scalar(metadata, f"tokenizer.ggml.{key}_token_id")
        ids[key] = int(i) if i is not None and 0 <= int(i) < n else None
    bos, eos = ids["bos"], ids["eos"]
    named_stops = _named_stops(tokens, types)
    wants_bos = _meta_scalar(metadata, "tokenizer.ggml.add_bos_token")
    template = metadata.get("tokenizer.chat_template")
    if template is None and "<|start_header_id|>" in tokens:
        template = LLAMA3_TEMPLATE
    return dict(
        vocab_size=n,
        bos_id=bos,
        eos_id=eos,
        add_bos=add_bos if wants_bos is None else bool(wants_bos),
        stop_ids=[*(i for i in (ids["eot"], ids["eom"]) if i is not None), *named_stops],
        chat_template=template,
        bos_token=tokens[bos] if bos is not None else "",
        eos_token=tokens[eos] if eos is not None else "",
    )


def _gguf_bpe(
    metadata: dict[str, Any], tokens: list[str], types: list[int], source: str
) -> Tokenizer:
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer

    name = metadata.get("tokenizer.ggml.pre") or "default"
    pre = GGUF_PRE_TOKENIZERS.get(name)
    if pre is None:
        raise TokenizerError(
            f"{source}: unknown pre-tokenizer {name!r} (tokenizer.ggml.pre); known: "
            f"{', '.join(sorted(GGUF_PRE_TOKENIZERS))}"
        )
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges") or []]
    try:
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = RustTokenizer(models.BPE(vocab, merges, ignore_merges=pre.ignore_merges))
    except Exception as exc:  # tokenizers reports a bad merge as a bare Exception
        raise TokenizerError(f"{source}: broken BPE vocabulary ({exc}); re-convert it") from None
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return HFTokenizer(tok, kind="gguf-bpe", **_gguf_info(metadata, tokens, types, pre.add_bos))


def _gguf_spm(
    metadata: dict[str, Any], tokens: list[str], types: list[int], source: str
) -> Tokenizer:
    from sentencepiece import sentencepiece_model_pb2 as pb

    # A GGUF "llama" vocabulary is a SentencePiece BPE model taken apart: put it back together
    # and let the sentencepiece library encode, as the model's trainers did.
    scores = _meta_list(metadata, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    proto = pb.ModelProto()
    for piece, score, type_ in zip(tokens, scores, types):
        type_ = type_ if NORMAL <= type_ <= BYTE else NORMAL  # 0 is "undefined" in GGUF
        proto.pieces.add(piece=piece, score=score, type=type_)
    info = _gguf_info(metadata, tokens, types, add_bos=True)
    info["chat_template"] = info["chat_template"] or LLAMA2_TEMPLATE
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.byte_fallback = BYTE in types
    spec.unk_id = types.index(UNKNOWN) if UNKNOWN in types else -1
    spec.bos_id, spec.eos_id = (-1 if i is None else i for i in (info["bos_id"], info["eos_id"]))
    add_space = _meta_scalar(metadata, "tokenizer.ggml.add_space_prefix")
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = add_space is None or bool(add_space)
    extra_spaces = _meta_scalar(metadata, "tokenizer.ggml.remove_extra_whitespaces")
    proto.normalizer_spec.remove_extra_whitespaces = bool(extra_spaces)
    try:
        return SentencePieceTokenizer(proto, kind="gguf-spm", **info)
    except TokenizerError as exc:
        raise TokenizerError(f"{source}: {exc}; re-convert the model") from None
