"""Tokenizer backends against llama.cpp's and the libraries' own tokenizations, streaming
detokenization, chat templates and bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlx.core as mx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entropix_mlx.errors import TokenizerError
from entropix_mlx.tokenize.files import load_tokenizer_path
from entropix_mlx.tokenize.gguf_vocab import GGUF_PRE_TOKENIZERS, tokenizer_from_gguf
from entropix_mlx.tokenize.tokenizer import StreamingDetokenizer, Tokenizer

DATA = Path(__file__).resolve().parent / "data"
SMOLLM_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n"
)
# Text that stresses byte tokens: emoji (incl. ZWJ sequences and skin tones), CJK, combining marks.
TRICKY = [
    "Hello world",
    "héllo wörld, ça va? naïve café",
    "日本語のテキスト、カタカナとひらがな。",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇫🇷 ❤️",
    "e\u0301 a\u0308 \u200b zero width \ufeff bom",
    "  leading spaces and trailing  ",
    "\n\nnew\r\nlines\ttabs",
    "def f(x):\n    return x ** 2  # 🧪",
    "Ελληνικά русский עברית العربية हिन्दी 한국어",
    "<|im_start|>user\nhi 😀<|im_end|>\n",
]
BACKENDS = ["smollm2", "llama3_hf", "llama3_tiktoken", "spm", "spm_gguf", "tiny_hf"]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_gguf: Path) -> dict:
    return mx.load(str(smollm2_gguf), return_metadata=True)[1]


@pytest.fixture(scope="session")
def smollm2(smollm2_metadata: dict) -> Tokenizer:
    return tokenizer_from_gguf(smollm2_metadata)


@pytest.fixture(scope="session")
def llama3_hf(llama3_tokenizer_dir: Path) -> Tokenizer:
    return load_tokenizer_path(llama3_tokenizer_dir / "tokenizer.json")


@pytest.fixture(scope="session")
def llama3_tiktoken(llama3_tokenizer_dir: Path) -> Tokenizer:
    return load_tokenizer_path(llama3_tokenizer_dir / "tokenizer.model")


@pytest.fixture(scope="session")
def llama3_gguf(llama3_tokenizer_dir: Path) -> Tokenizer:
    """A Llama 3 GGUF's vocabulary as llama.cpp's converter writes it (pre-tokenizer llama-bpe)."""
    spec = json.loads((llama3_tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    tokens += [t["content"] for t in sorted(spec["added_tokens"], key=lambda t: t["id"])]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": spec["model"]["merges"],
        "tokenizer.ggml.token_type": mx.array([1] * 128000 + [3] * 256, dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(128000, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(128009, dtype=mx.uint32),
    }
    return tokenizer_from_gguf(metadata)


@pytest.fixture(scope="session")
def sp_processor(mistral_spm_model: Path):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(mistral_spm_model))


@pytest.fixture(scope="session")
def spm(mistral_spm_model: Path) -> Tokenizer:
    return load_tokenizer_path(mistral_spm_model)


def spm_metadata(path: Path) -> dict:
    """What llama.cpp's converter writes into a GGUF for this SentencePiece model."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [p.piece for p in proto.pieces],
        "tokenizer.ggml.scores": mx.array([p.score for p in proto.pieces]),
        "tokenizer.ggml.token_type": mx.array([p.type for p in proto.pieces], dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(1, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(2, dtype=mx.uint32),
        "tokenizer.ggml.unknown_token_id": mx.array(0, dtype=mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(True),
    }


@pytest.fixture(scope="session")
def spm_gguf(mistral_spm_model: Path) -> Tokenizer:
    return tokenizer_from_gguf(spm_metadata(mistral_spm_model))


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A Llama 2 style tokenizer.json (metaspace + byte fallback, not byte-level), trained here."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, normalizers, trainers

    tok = RustTokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", *TRICKY] * 20, trainer)
    folder = tmp_path_factory.mktemp("tiny_hf")
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return load_tokenizer_path(folder)


@pytest.fixture(scope="session", params=BACKENDS)
def any_tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(request.param)


def stream(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    detok = tokenizer.detokenizer()
    assert isinstance(detok, StreamingDetokenizer)
    segments = []
    for i in ids:
        detok.add_token(i)
        segments.append(detok.last_segment)
    detok.finalize()
    segments.append(detok.last_segment)
    assert detok.text == "".join(segments)
    return segments


def check_stream(tokenizer: Tokenizer, ids: list[int]) -> None:
    segments = stream(tokenizer, ids)
    full = tokenizer.decode(ids)
    assert "".join(segments) == full, (ids, segments)
    if "\ufffd" not in full:
        assert not any("\ufffd" in s for s in segments), (ids, segments)


# --- 1, 2: id parity with llama.cpp ----------------------------------------------------------


@pytest.mark.parametrize(
    "backend, reference",
    [
        ("smollm2", "smollm2"),
        ("llama3_hf", "llama3"),
        ("llama3_tiktoken", "llama3"),
        ("llama3_gguf", "llama3"),
    ],
)
def test_parity_with_llama_cpp(request: pytest.FixtureRequest, backend: str, reference: str):
    tokenizer = request.getfixturevalue(backend)
    data = json.loads((DATA / "tokenizers" / f"{reference}.json").read_text(encoding="utf-8"))
    assert len(data["texts"]) == 400
    failures = [
        text for text, ids in zip(data["texts"], data["ids"]) if tokenizer.encode(text) != ids
    ]
    assert not failures, f"{len(failures)}/400 differ, e.g. {failures[:5]!r}"


def byte_level_vocab() -> list[str]:
    """GPT-2's 256 byte characters: the smallest byte-level BPE vocabulary."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    return [chars[b] for b in range(256)]


@pytest.mark.parametrize("pre", sorted(GGUF_PRE_TOKENIZERS))
def test_every_gguf_pre_tokenizer_builds(pre):
    """Each llama.cpp regex set compiles in `tokenizers` and round-trips text."""
    tokens = [*byte_level_vocab(), "He", "Hel", "<|im_end|>"]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["H e", "He l"],
        "tokenizer.ggml.token_type": mx.array([1] * 258 + [3], dtype=mx.int32),
        "tokenizer.ggml.eos_token_id": mx.array(258, dtype=mx.uint32),
    }
    tok = tokenizer_from_gguf(metadata)
    text = "Hello World's 12345 naïve ÉCOLE 日本語 😀\n\n  x\t<|im_end|>"
    ids = tok.encode(text)
    assert ids[0] == 257 and ids[-1] == 258 and tok.stop_ids == {258}
    assert tok.decode(ids) == text


def test_kinds_and_special_ids(
    smollm2, llama3_hf, llama3_tiktoken, llama3_gguf, spm, spm_gguf, tiny_hf
):
    assert (smollm2.kind, smollm2.vocab_size, smollm2.bos_id, smollm2.add_bos) == (
        "gguf-bpe",
        49152,
        1,
        False,
    )
    assert smollm2.stop_ids == {0, 2}  # <|endoftext|>, <|im_end|>
    assert (llama3_tiktoken.kind, llama3_tiktoken.vocab_size) == ("tiktoken", 128256)
    assert llama3_tiktoken.stop_ids == {128001, 128008, 128009}
    assert llama3_tiktoken.bos_id == 128000 and llama3_tiktoken.add_bos
    assert (llama3_hf.kind, llama3_hf.vocab_size, llama3_hf.bos_id) == ("hf", 128256, 128000)
    assert llama3_hf.add_bos and {128001, 128009} <= llama3_hf.stop_ids
    assert llama3_gguf.add_bos and llama3_gguf.stop_ids == {128001, 128009}  # 3.0 special names
    assert llama3_tiktoken.encode("<|eom_id|><|python_tag|>") == [128008, 128010]
    assert llama3_tiktoken.encode("<|reserved_special_token_246|>") == [128255]
    for tok in (spm, spm_gguf):
        assert (tok.vocab_size, tok.bos_id, tok.add_bos, tok.stop_ids) == (32000, 1, True, {2})
    assert (spm.kind, spm_gguf.kind, tiny_hf.kind) == ("sentencepiece", "gguf-spm", "hf")


def test_add_special_prepends_bos_once(llama3_tiktoken, llama3_hf, smollm2, spm):
    for tok in (llama3_tiktoken, llama3_hf):
        assert tok.encode("Hi", add_special=True) == [128000, 13347]
        assert tok.encode("<|begin_of_text|>Hi", add_special=True) == [128000, 13347]
    assert smollm2.encode("Hi", add_special=True) == smollm2.encode("Hi")  # add_bos is False
    assert spm.encode("Hi", add_special=True)[0] == 1


# --- 3: SentencePiece -------------------------------------------------------------------------

SPM_TEXTS = [
    *TRICKY,
    "",
    " ",
    "a",
    "  two leading",
    "trailing ",
    "x\n\n\ny",
    "Unknown chars: \x00\x01 \U0001f9ea \u2603",
    "[INST] What is 2+2? [/INST]",
]


@pytest.mark.parametrize("backend", ["spm", "spm_gguf"])
def test_sentencepiece_matches_library(request, sp_processor, backend):
    tok = request.getfixturevalue(backend)
    for text in SPM_TEXTS:
        ids = tok.encode(text)
        assert ids == sp_processor.encode(text), text
        assert tok.decode(ids) == text
    assert tok.token_piece(sp_processor.encode("Hello")[0]) == " Hello"
    assert tok.token_piece(1) == "<s>"


@FAST
@given(text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40))
def test_sentencepiece_matches_library_property(spm, spm_gguf, sp_processor, text):
    if "<s>" in text or "</s>" in text or "<unk>" in text:
        return
    expected = sp_processor.encode(text)
    assert spm.encode(text) == expected
    assert spm_gguf.encode(text) == expected


@pytest.mark.parametrize("backend", ["spm", "spm_gguf"])
def test_sentencepiece_special_tokens(request, sp_processor, backend):
    tok = request.getfixturevalue(backend)
    # Special text is a token; the text after it starts afresh with its dummy-prefix space.
    assert tok.encode("<s>[INST] hi [/INST]") == [1, *sp_processor.encode("[INST] hi [/INST]")]
    assert tok.encode("a</s>b<unk>") == [*sp_processor.encode("a"), 2, *sp_processor.encode("b"), 0]
    assert tok.encode("Hi", add_special=True) == [1, *sp_processor.encode("Hi")]
    assert tok.decode(tok.encode("<s>Hi</s>")) == "Hi"  # control tokens are invisible


# --- 4: streaming detokenization --------------------------------------------------------------


def test_streaming_tricky_texts(any_tokenizer):
    for text in TRICKY:
        check_stream(any_tokenizer, any_tokenizer.encode(text))


def test_streaming_splits_characters_across_tokens(smollm2, llama3_tiktoken):
    # 🧪 is several byte tokens in both vocabularies: no segment may show half of it.
    for tok in (smollm2, llama3_tiktoken):
        ids = tok.encode("🧪🧪")
        assert len(ids) > 2
        segments = stream(tok, ids)
        assert "".join(segments) == "🧪🧪" and set(segments) <= {"", "🧪"}


@FAST
@given(text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60))
def test_streaming_property_text(any_tokenizer, text):
    check_stream(any_tokenizer, any_tokenizer.encode(text))


@FAST
@given(data=st.data())
def test_streaming_property_random_ids(any_tokenizer, data):
    """Any id sequence, including broken UTF-8 and specials, streams to exactly decode(all)."""
    vocab = any_tokenizer.vocab_size
    # Low ids are bytes (SentencePiece) and specials: mix them in often.
    any_id = st.one_of(st.integers(0, vocab - 1), st.integers(0, min(vocab, 512) - 1))
    ids = data.draw(st.lists(any_id, max_size=16))
    check_stream(any_tokenizer, ids)


def test_streaming_is_cheap_per_token(llama3_tiktoken, smollm2, spm):
    for tok in (llama3_tiktoken, smollm2, spm):
        ids = tok.encode(" ".join(TRICKY) * 60)
        assert len(ids) > 5000
        stream(tok, ids[:10])  # warm up the byte tables
        start = time.perf_counter()
        assert "".join(stream(tok, ids)) == tok.decode(ids)
        assert time.perf_counter() - start < 1.0, tok.kind


def test_token_piece(smollm2, llama3_tiktoken):
    assert [smollm2.token_piece(i) for i in smollm2.encode("<|im_end|> Hello")] == [
        "<|im_end|>",
        " Hello",
    ]
    assert llama3_tiktoken.token_piece(128009) == "<|eot_id|>"
    partial = [smollm2.token_piece(i) for i in smollm2.encode("🧪")]
    assert "".join(partial).startswith("\\x")  # a split character shows its bytes
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        smollm2.token_piece(49152)


# --- 5: chat templates ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["capital", "code", "robot", "sys_math"])
def test_smollm2_chat_template_matches_reference(smollm2, name):
    ref = json.loads((DATA / "smollm2" / f"{name}.json").read_text(encoding="utf-8"))
    prompt = ref["prompt"]
    assert smollm2.encode(prompt) == ref["prompt_ids"]
    # The references were written by hand; the GGUF's template adds its default system turn
    # whenever the conversation does not start with one.
    turns = prompt.removesuffix("<|im_start|>assistant\n").split("<|im_end|>\n")
    messages = []
    for turn in filter(None, turns):
        role, content = turn.removeprefix("<|im_start|>").split("\n", 1)
        messages.append({"role": role, "content": content})
    expected = prompt if messages[0]["role"] == "system" else SMOLLM_SYSTEM + prompt
    assert smollm2.render_chat(messages) == expected
    assert smollm2.apply_chat_template(messages) == smollm2.encode(expected)


def test_smollm2_apply_chat_template_ids(smollm2):
    ref = json.loads((DATA / "smollm2" / "capital.json").read_text(encoding="utf-8"))
    question = "What is the capital of France? Answer in one short paragraph."
    ids = smollm2.apply_chat_template([{"role": "user", "content": question}])
    # No BOS in front (add_bos is False): the default system turn, then llama.cpp's own ids.
    assert ids == smollm2.encode(SMOLLM_SYSTEM) + ref["prompt_ids"]
    assert ids[:3] == [1, 9690, 198]  # <|im_start|> system \n
    messages = [{"role": "user", "content": "hi"}]
    assert smollm2.render_chat(messages, add_generation_prompt=False).endswith("hi<|im_end|>\n")


def test_llama3_builtin_template(llama3_tiktoken):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " What is 2+2? "},
    ]
    text = llama3_tiktoken.render_chat(messages)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = llama3_tiktoken.apply_chat_template(messages)
    assert ids[:2] == [128000, 128006] and ids.count(128000) == 1  # no double BOS
    assert ids[-4:] == [128006, 78191, 128007, 271]


def test_llama2_builtin_template(spm):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert spm.render_chat(messages) == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST]"
    ids = spm.apply_chat_template(messages)
    assert ids[0] == 1 and ids[1] != 1


def test_template_raise_exception_is_tokenizer_error(spm):
    with pytest.raises(TokenizerError, match="roles must alternate"):
        spm.render_chat([{"role": "assistant", "content": "x"}])


def test_template_globals_and_tojson(tmp_path, llama3_tokenizer_dir):
    template = (
        "{{ messages | tojson }}|{{ {'a': 'é'} | tojson(indent=2) }}|{{ strftime_now('%Y') }}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}|{{ m.role }}"
        "{% endfor %}"
    )
    vocab = (llama3_tokenizer_dir / "tokenizer.json").read_bytes()
    (tmp_path / "tokenizer.json").write_bytes(vocab)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    tok = load_tokenizer_path(tmp_path)
    text = tok.render_chat([{"role": "user", "content": "<é>"}, {"role": "x", "content": ""}])
    parts = text.split("|")
    assert json.loads(parts[0])[0]["content"] == "<é>" and "<é>" in parts[0]
    assert parts[1] == '{\n  "a": "é"\n}'
    assert parts[2] == time.strftime("%Y") and parts[3:] == ["user"]


def test_no_template_is_an_error(tiny_hf):
    with pytest.raises(TokenizerError, match="no chat template"):
        tiny_hf.render_chat([{"role": "user", "content": "hi"}])


# --- 6: bad input -----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match="no such file"):
        load_tokenizer_path(tmp_path / "nope" / "tokenizer.model")
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer_path(tmp_path)


def test_random_binary_file(tmp_path):
    import random

    path = tmp_path / "tokenizer.model"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer_path(path)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_bytes(b"\x00\xff not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer_path(bad_json)


def test_unknown_gguf_pre_tokenizer_and_model(smollm2_metadata):
    with pytest.raises(TokenizerError, match="'made-up-pre'"):
        tokenizer_from_gguf({**smollm2_metadata, "tokenizer.ggml.pre": "made-up-pre"})
    with pytest.raises(TokenizerError, match="'bert'"):
        tokenizer_from_gguf({**smollm2_metadata, "tokenizer.ggml.model": "bert"})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2"})
