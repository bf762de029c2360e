"""Tiny but real Llama 3.1-style checkpoints on disk, for tests that must go through the loader.

`make_tiny_checkpoint(dir)` writes what an mlx-community / Hugging Face folder holds: config.json,
model*.safetensors (optionally MLX-quantized, sharded, fp16/bf16), tokenizer.json and
tokenizer_config.json with a Llama 3 chat template. Weights are seeded random normals scaled so
activations stay O(1) and logits spread over several units (a parity test then means something).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from entropix_mlx.model.llama import Model, ModelArgs

SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CHAT_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "Entropy is high when the model is unsure; varentropy is high when it is torn.",
    "user assistant system: what is two plus two? It is four.",
]
VOCAB_SIZE = 320  # 256 byte symbols + 5 specials + merges learned from _CORPUS


def tiny_config(vocab_size: int = VOCAB_SIZE, **overrides: Any) -> dict[str, Any]:
    """A Llama 3.1 config that runs in milliseconds, with llama3 RoPE scaling that matters.

    head_dim 8 gives 4 rotary pairs; rope_theta 100 with original_max_position_embeddings 32 puts
    them in all three llama3 bands (wavelengths 6.3 < 8 | 8 ≤ 19.9 ≤ 32 | 62.8, 199 > 32).
    """
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        "max_position_embeddings": 1024,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 4,
        "torch_dtype": "float32",
    }
    config.update(overrides)
    return config


def random_weights(args: ModelArgs, seed: int) -> dict[str, mx.array]:
    """Seeded float32 weights with the names and shapes of `Model(args)`."""
    names = sorted(tree_flatten(Model(args).parameters()), key=lambda kv: kv[0])
    keys = mx.random.split(mx.random.key(seed), len(names))
    weights = {}
    for (name, param), key in zip(names, keys, strict=True):
        noise = mx.random.normal(param.shape, key=key)
        if param.ndim == 1:  # RMSNorm gains near 1
            weights[name] = 1.0 + 0.1 * noise
        elif name.startswith("model.embed_tokens"):
            weights[name] = noise
        else:  # Linear (out, in): unit-variance outputs for unit-variance inputs
            weights[name] = noise * param.shape[1] ** -0.5
    return weights


def write_tokenizer(path: Path) -> int:
    """A byte-level BPE tokenizer.json + tokenizer_config.json like Llama 3's; returns the size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[0]} $A", pair=f"{SPECIALS[0]} $A $B", special_tokens=[(SPECIALS[0], bos)]
    )
    tok.save(str(path / "tokenizer.json"))
    tokenizer_config = {
        "bos_token": SPECIALS[0],
        "eos_token": "<|eot_id|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 1024,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
    return tok.get_vocab_size()


def _save(path: Path, weights: dict[str, mx.array], shards: int) -> None:
    names = sorted(weights)
    if shards == 1:
        mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
        return
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: weights[k] for k in names[i::shards]}
        mx.save_safetensors(str(path / file), part, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def make_tiny_checkpoint(
    path: Path,
    *,
    config_overrides: dict[str, Any] | None = None,
    quantize: tuple[int, int] | None = None,
    dtype: str = "float32",
    seed: int = 0,
    shards: int = 1,
    tie_word_embeddings: bool = False,
    tokenizer: bool = True,
) -> Path:
    """Write a tiny HF/mlx-community Llama folder at `path` and return it.

    quantize: (group_size, bits) → MLX affine quantization of every Linear and the embedding, saved
    with `config["quantization"]` as mlx-lm does. dtype: float32 | float16 | bfloat16.
    """
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(path) if tokenizer else VOCAB_SIZE
    config = tiny_config(vocab_size, tie_word_embeddings=tie_word_embeddings, torch_dtype=dtype)
    config.update(config_overrides or {})
    args = ModelArgs.from_dict(config)
    weights = {k: v.astype(getattr(mx, dtype)) for k, v in random_weights(args, seed).items()}
    if quantize is not None:
        group_size, bits = quantize
        model = Model(args)
        model.load_weights(list(weights.items()))
        nn.quantize(model, group_size, bits)
        weights = dict(tree_flatten(model.parameters()))
        config["quantization"] = {"group_size": group_size, "bits": bits}
        config["quantization_config"] = config["quantization"]
    mx.eval(weights)
    _save(path, weights, shards)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


# GGUF names as llama.cpp's convert_hf_to_gguf writes them (written out here, independently of
# the loader's table, so a round trip tests it).
_HF_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf_name: str) -> str:
    stem, _, suffix = hf_name.rpartition(".")
    if stem.startswith("model.layers."):
        _, _, layer, module = stem.split(".", 3)
        return f"blk.{layer}.{_HF_TO_GGUF[module]}.{suffix}"
    return f"{_HF_TO_GGUF[stem]}.{suffix}"


def _llama_cpp_permute(w: mx.array, n_head: int) -> mx.array:
    """convert_hf_to_gguf's `permute`: HF rotate-half rows → llama.cpp's interleaved pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _llama_cpp_rope_factors(config: dict[str, Any]) -> mx.array:
    """convert_hf_to_gguf's `rope_freqs` for llama3 scaling: per-pair period multipliers."""
    scaling, dim, base = config["rope_scaling"], config["head_dim"], config["rope_theta"]
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < old_len / high:
            factors.append(1.0)
        elif wavelen > old_len / low:
            factors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return mx.array(factors, dtype=mx.float32)


def make_tiny_gguf(
    path: Path,
    hf_dir: Path,
    *,
    architecture: str = "llama",
    extra_tensors: dict[str, mx.array] | None = None,
) -> Path:
    """An F32 GGUF file with a float32 tiny checkpoint's weights, laid out as llama.cpp writes it.

    No tokenizer metadata: load it through the loader's weight path, not `load()`.
    """
    config = json.loads((hf_dir / "config.json").read_text())
    weights = mx.load(str(hf_dir / "model.safetensors"))
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    tensors = {}
    for name, w in weights.items():
        proj = name.split(".")[-2]
        tensors[_gguf_name(name)] = _llama_cpp_permute(w, heads[proj]) if proj in heads else w
    if config.get("rope_scaling"):
        tensors["rope_freqs.weight"] = _llama_cpp_rope_factors(config)
    tensors.update(extra_tensors or {})
    u32 = lambda v: mx.array(v, dtype=mx.uint32)
    f32 = lambda v: mx.array(v, dtype=mx.float32)
    arch = architecture
    metadata = {
        "general.architecture": arch,
        "general.name": "tiny",
        "general.file_type": u32(0),
        f"{arch}.block_count": u32(config["num_hidden_layers"]),
        f"{arch}.context_length": u32(config["max_position_embeddings"]),
        f"{arch}.embedding_length": u32(config["hidden_size"]),
        f"{arch}.feed_forward_length": u32(config["intermediate_size"]),
        f"{arch}.attention.head_count": u32(config["num_attention_heads"]),
        f"{arch}.attention.head_count_kv": u32(config["num_key_value_heads"]),
        f"{arch}.rope.dimension_count": u32(config["head_dim"]),
        f"{arch}.rope.freq_base": f32(config["rope_theta"]),
        f"{arch}.attention.layer_norm_rms_epsilon": f32(config["rms_norm_eps"]),
        f"{arch}.vocab_size": u32(config["vocab_size"]),
    }
    mx.save_gguf(str(path), tensors, metadata)
    return path
