"""GGUF model files: the header (metadata and tensor table, read without the data) and the weights
under HF names, with llama.cpp's Q/K row permutation undone.

MLX reads the tensors (F32/F16 and Q4_0/Q4_1/Q8_0 as its own 4/8-bit, group-32 quantization); this
module reads the header itself so that types MLX would reject are reported by name, and so that
`entropix models` can describe a file without loading it. The embedded vocabulary is
`tokenize.gguf_vocab`'s business.
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlx.core as mx

from ..errors import ModelLoadError
from .checkpoint import SUPPORTED_HINT, Checkpoint, quantized_modules
from .llama import ModelArgs

GROUP_SIZE = 32
SUPPORTED_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")

# ggml tensor type ids (llama.cpp ggml.h) and GGUF metadata value types (gguf.md).
_GGML_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    30: "BF16",
}
_GGUF_SCALARS = {**dict(enumerate("BbHhIif?")), 10: "Q", 11: "q", 12: "d"}  # struct codes
_GGUF_STRING, _GGUF_ARRAY = 8, 9

TensorTable = dict[str, tuple[str, tuple[int, ...]]]  # name → (ggml type, shape)


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _read_struct(f: Any, fmt: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError("truncated GGUF header")
    return struct.unpack("<" + fmt, data)


def _read_string(f: Any) -> str:
    (n,) = _read_struct(f, "Q")
    return f.read(n).decode("utf-8", errors="replace")


def _read_value(f: Any, vtype: int) -> Any:
    """One metadata value; arrays are skipped (None), since only scalars are needed here."""
    if vtype == _GGUF_STRING:
        return _read_string(f)
    if vtype == _GGUF_ARRAY:
        item_type, n = _read_struct(f, "IQ")
        if item_type == _GGUF_STRING:
            for _ in range(n):
                f.seek(_read_struct(f, "Q")[0], os.SEEK_CUR)
        else:
            f.seek(n * struct.calcsize("<" + _GGUF_SCALARS[item_type]), os.SEEK_CUR)
        return None
    return _read_struct(f, _GGUF_SCALARS[vtype])[0]


def read_gguf_header(path: Path) -> tuple[dict[str, Any], TensorTable]:
    """Scalar metadata and {tensor: (ggml type, shape)} without reading any tensor data."""
    try:
        with open(path, "rb") as f:
            magic, version, n_tensors, n_kv = _read_struct(f, "4sIQQ")
            if magic != b"GGUF" or version < 2:
                raise ValueError(f"GGUF version {version} (need 2 or 3)")
            meta = {}
            for _ in range(n_kv):
                key = _read_string(f)
                meta[key] = _read_value(f, _read_struct(f, "I")[0])
            tensors = {}
            for _ in range(n_tensors):
                name = _read_string(f)
                (ndim,) = _read_struct(f, "I")
                dims = _read_struct(f, f"{ndim}Q")
                ggml_type, _offset = _read_struct(f, "IQ")
                tensors[name] = (_GGML_TYPES.get(ggml_type, f"type {ggml_type}"), dims[::-1])
    except (OSError, EOFError, KeyError, ValueError, struct.error) as err:
        raise ModelLoadError(f"{path}: unreadable GGUF header ({err})") from None
    return meta, tensors


_GGUF_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def translate_weight_names(name: str) -> str:
    """GGUF tensor name → HF name: `blk.3.attn_q.scales` → `model.layers.3.self_attn.q_proj.scales`.

    Unknown names pass through unchanged, so strict loading reports them.
    """
    stem, _, suffix = name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_BLOCK:
        return f"model.layers.{parts[1]}.{_GGUF_BLOCK[parts[2]]}.{suffix}"
    return f"{_GGUF_TOP[stem]}.{suffix}" if stem in _GGUF_TOP else name


def _unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's convert-time Q/K row permutation (interleaved RoPE → HF's rotate-half)."""
    rows = w.shape[0]
    per_head = w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])  # (H, D/2, 2, …)
    return per_head.swapaxes(1, 2).reshape(w.shape)  # (H, 2, D/2, …) → (H·D, …)


def _quantized_bits(weights: dict[str, mx.array], module: str, group_size: int) -> int:
    """Bits per value, from the packed uint32 row width and the number of groups per row."""
    packed, groups = weights[f"{module}.weight"].shape[-1], weights[f"{module}.scales"].shape[-1]
    return packed * 32 // (groups * group_size)


def read_gguf(path: Path) -> Checkpoint:
    """A Llama GGUF's weights under HF names; refuses other architectures and tensor types."""
    header, tensors = read_gguf_header(path)
    arch = header.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{path.name}: architecture {arch!r} is not supported (only 'llama')")
    odd = [f"{n} is {t}" for n, (t, _) in tensors.items() if t not in SUPPORTED_TYPES]
    if odd:
        raise ModelLoadError(f"{path.name}: unsupported tensor type ({odd[0]}); {SUPPORTED_HINT}")
    try:
        raw, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as err:
        raise ModelLoadError(f"{path.name}: MLX cannot read it ({err}); {SUPPORTED_HINT}") from None
    rope_freqs = raw.pop("rope_freqs.weight", None)
    weights = {translate_weight_names(k): v for k, v in raw.items()}
    if "model.embed_tokens.weight" not in weights:
        raise ModelLoadError(f"{path.name}: no token_embd.weight tensor; not a complete Llama GGUF")
    args = ModelArgs.from_gguf(metadata, vocab_size=weights["model.embed_tokens.weight"].shape[0])
    args = replace(
        args,
        tie_word_embeddings="lm_head.weight" not in weights,
        rope_freq_factors=None if rope_freqs is None else rope_freqs.tolist(),
    )
    heads = {"q_proj": args.num_attention_heads, "k_proj": args.num_key_value_heads}
    for name, w in weights.items():
        proj = name.rsplit(".", 2)[-2]
        if proj in heads:
            weights[name] = _unpermute_rows(w, heads[proj])
    quant = {
        m: (GROUP_SIZE, _quantized_bits(weights, m, GROUP_SIZE)) for m in quantized_modules(weights)
    }
    label = gguf_label(tensors)
    return Checkpoint(args, weights, quant, arch, label, args.max_position_embeddings, metadata)


def gguf_label(tensors: TensorTable) -> str:
    """The file's dominant matrix type, e.g. "Q4_1 (GGUF)" (embeddings or norms may differ)."""
    types = Counter(t for t, shape in tensors.values() if len(shape) > 1)
    return f"{types.most_common(1)[0][0] if types else 'F32'} (GGUF)"


def describe_gguf(path: Path) -> tuple[str, int, str, int]:
    """(arch, params, quantization label, context length) from the header alone, for listings."""
    header, tensors = read_gguf_header(path)
    arch = header.get("general.architecture", "?")
    params = sum(math.prod(shape) for n, (_, shape) in tensors.items() if n != "rope_freqs.weight")
    context = int(header.get(f"{arch}.context_length", 0))
    return arch, params, gguf_label(tensors), context
