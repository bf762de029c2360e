"""The Llama 3.x network in MLX, returning logits and the newest position's attention statistics."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import ops as cpu_ops
from .cache import KVCache


@dataclass
class ModelArgs:
    """Hugging Face `LlamaConfig` field names, so a `config.json` loads without a rename table."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    model_type: str = "llama"
    # GGUF files carry Llama 3.1 scaling as a `rope_freqs` tensor of per-pair period multipliers.
    rope_freq_factors: list[float] | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> ModelArgs:
        """Build from a `config.json` dict, ignoring keys that are not ours."""
        fields = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in fields})

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any], vocab_size: int) -> ModelArgs:
        """Build from GGUF `llama.*` metadata (values as `mx.load` returns them)."""

        def get(key: str, default: Any = None) -> Any:
            value = metadata.get(f"llama.{key}", default)
            return value.item() if isinstance(value, mx.array) else value

        n_heads = int(get("attention.head_count"))
        hidden = int(get("embedding_length"))
        rope_dim = get("rope.dimension_count")
        return cls(
            hidden_size=hidden,
            num_hidden_layers=int(get("block_count")),
            intermediate_size=int(get("feed_forward_length")),
            num_attention_heads=n_heads,
            num_key_value_heads=int(get("attention.head_count_kv", n_heads)),
            head_dim=int(rope_dim) if rope_dim else hidden // n_heads,
            vocab_size=int(get("vocab_size", vocab_size)),
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            max_position_embeddings=int(get("context_length", 2048)),
        )


class ModelOutput(NamedTuple):
    logits: mx.array  # (B, V) for the last position, or (B, L, V) with all_logits=True
    # The newest query's scaled pre-softmax scores over the valid keys, every layer:
    # (B, layers, H, T).
    # One step's worth, reduced by `engine.metrics` and then dropped; nothing of this size is kept.
    scores: mx.array


def rope_frequencies(args: ModelArgs) -> mx.array:
    """Per-pair rotation periods (1 / inv_freq) for `mx.fast.rope`, with Llama 3 scaling applied.

    Computed in float64 like Hugging Face's `_compute_llama3_parameters`, then rounded once.
    """
    dims = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (np.arange(0, dims, 2, dtype=np.float64) / dims))
    scaling = args.rope_scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, smoothed, scaled)
    elif rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif rope_type not in ("default",):
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported (llama3, linear)")
    periods = 1.0 / inv_freq
    if args.rope_freq_factors is not None:
        periods = periods * np.asarray(args.rope_freq_factors, dtype=np.float64)
    return mx.array(periods.astype(np.float32))


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.scale = args.head_dim**-0.5
        dim, hd = args.hidden_size, args.head_dim
        self.q_proj = nn.Linear(dim, self.n_heads * hd, bias=args.attention_bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=args.attention_bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=args.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, dim, bias=args.attention_bias)
        self._freqs = rope_frequencies(args)

    def rope(self, x: mx.array, offset: int) -> mx.array:
        return mx.fast.rope(
            x,
            self.head_dim,
            traditional=False,
            base=None,
            scale=1.0,
            offset=offset,
            freqs=self._freqs,
        )

    def __call__(
        self, x: mx.array, mask: Any = None, cache: KVCache | None = None, composed: bool = False
    ) -> tuple[mx.array, mx.array]:
        """Returns the layer output and the newest query's scaled scores q·k/√D (B, H, T)."""
        B, L, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).reshape(B, L, H, D).transpose(0, 2, 1, 3)  # (B, H, L, D)
        k = self.k_proj(x).reshape(B, L, Hkv, D).transpose(0, 2, 1, 3)  # (B, Hkv, L, D)
        v = self.v_proj(x).reshape(B, L, Hkv, D).transpose(0, 2, 1, 3)  # (B, Hkv, L, D)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # (B, Hkv, T, D), valid positions only
        T = k.shape[2]

        # The newest query's scores over the valid keys; GQA groups query heads per kv head.
        q_last = q if L == 1 else q[:, :, -1:, :]
        q_last = q_last.reshape(B, Hkv, H // Hkv, D) * self.scale  # (B, Hkv, G, D)
        scores = (q_last @ k.swapaxes(-1, -2)).reshape(B, H, T)  # (B, H, T)
        if composed:
            out = cpu_ops.attention(q, k, v, self.scale, causal=mask is not None)
        else:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(B, L, H * D)  # (B, L, H·D)
        return self.o_proj(out), scores

    def decode(
        self, x: mx.array, cache: KVCache, rot_q: mx.array, rot_k: mx.array
    ) -> tuple[mx.array, mx.array]:
        """One new token (x is (B, 1, dim)), RoPE given as rotation matrices: see `Model.decode`."""
        B = x.shape[0]
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).reshape(B, Hkv, H // Hkv, D) @ rot_q  # rotated, and scaled by 1/√D
        k = self.k_proj(x).reshape(B, Hkv, 1, D) @ rot_k
        k, v = cache.update_and_fetch(k, self.v_proj(x).reshape(B, Hkv, 1, D))
        scores = q @ k.swapaxes(-1, -2)  # (B, Hkv, G, T): what the metrics read, and the attention
        out = cpu_ops.softmax(scores) @ v  # (B, Hkv, G, D)
        return self.o_proj(out.reshape(B, 1, H * D)), scores.reshape(B, H, -1)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, hidden = args.hidden_size, args.intermediate_size
        self.gate_proj = nn.Linear(dim, hidden, bias=args.mlp_bias)
        self.up_proj = nn.Linear(dim, hidden, bias=args.mlp_bias)
        self.down_proj = nn.Linear(hidden, dim, bias=args.mlp_bias)

    def __call__(self, x: mx.array, composed: bool = False) -> mx.array:
        gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(cpu_ops.swiglu(gate, up) if composed else nn.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(
        self, x: mx.array, mask: Any = None, cache: KVCache | None = None, composed: bool = False
    ) -> tuple[mx.array, mx.array]:
        r, scores = self.self_attn(_norm(self.input_layernorm, x, composed), mask, cache, composed)
        h = x + r
        out = h + self.mlp(_norm(self.post_attention_layernorm, h, composed), composed)
        return out, scores

    def decode(
        self, x: mx.array, cache: KVCache, rot_q: mx.array, rot_k: mx.array
    ) -> tuple[mx.array, mx.array]:
        normed = _norm(self.input_layernorm, x, composed=True)
        r, scores = self.self_attn.decode(normed, cache, rot_q, rot_k)
        h = x + r
        out = h + self.mlp(_norm(self.post_attention_layernorm, h, composed=True), composed=True)
        return out, scores


def _norm(norm: nn.RMSNorm, x: mx.array, composed: bool) -> mx.array:
    return cpu_ops.rms_norm(x, norm.weight, norm.eps) if composed else norm(x)


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)


class Model(nn.Module):
    """Llama 3.x causal LM. `model(ids, cache)` → `ModelOutput(logits, scores)`."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = LlamaModel(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        # Whether to run `cpu_ops` and `decode` instead of `mx.fast`'s kernels; None: on the CPU.
        self.composed: bool | None = None

    def __call__(
        self, inputs: mx.array, cache: list[KVCache] | None = None, all_logits: bool = False
    ) -> ModelOutput:
        """Run `inputs` (B, L) after what `cache` holds.

        Only the last position's logits are computed unless `all_logits` (the head is ~20 % of a
        small model's prefill FLOPs).
        """
        composed = mx.default_device() == mx.cpu if self.composed is None else self.composed
        if composed and cache is not None and inputs.shape[1] == 1 and not all_logits:
            return self.decode(inputs, cache)
        h = self.model.embed_tokens(inputs)  # (B, L, dim)
        mask = "causal" if inputs.shape[1] > 1 else None
        layer_caches = cache if cache is not None else [None] * len(self.model.layers)
        rows = []
        for layer, c in zip(self.model.layers, layer_caches):
            h, scores = layer(h, mask, c, composed)
            rows.append(scores)
        if not all_logits:
            h = h[:, -1, :] if h.shape[1] > 1 else h.reshape(h.shape[0], -1)  # (B, dim)
        return self._output(h, rows)

    def decode(self, inputs: mx.array, cache: list[KVCache]) -> ModelOutput:
        """One new token per sequence, the same numbers as `__call__` in fewer MLX operations.

        On the CPU `mx.fast.rope` runs as a fallback of ~15 small operations, and every operation
        costs ~10 µs whatever its size (see `cpu_ops`). Here RoPE at this position is one (D, D)
        rotation matrix for all layers (the softmax scale folded into the queries'), and attention
        is softmax(q·kᵀ)·v from the very scores the metrics need.
        """
        h = self.model.embed_tokens(inputs)  # (B, 1, dim)
        rot_q, rot_k = self._rotations(cache[0].offset, h.dtype)
        rows = []
        for layer, c in zip(self.model.layers, cache):
            h, scores = layer.decode(h, c, rot_q, rot_k)
            rows.append(scores)
        return self._output(h.reshape(h.shape[0], -1), rows)

    def _rotations(self, position: int, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        """RoPE at `position` as `x @ R` for queries (times 1/√D) and keys; angles in float64."""
        attn = self.model.layers[0].self_attn
        angles = position / np.asarray(attn._freqs, dtype=np.float64)  # the periods rope uses
        cos, sin = np.cos(angles), np.sin(angles)
        n = len(angles)
        i = np.arange(n)
        rot = np.zeros((2 * n, 2 * n))
        rot[i, i] = rot[i + n, i + n] = cos  # x @ rot = [x₁·cos − x₂·sin, x₂·cos + x₁·sin]
        rot[i + n, i], rot[i, i + n] = -sin, sin
        return mx.array(rot * attn.scale, dtype=dtype), mx.array(rot, dtype=dtype)

    def _output(self, h: mx.array, rows: list[mx.array]) -> ModelOutput:
        h = self.model.norm(h)
        if self.args.tie_word_embeddings:
            logits = self.model.embed_tokens.as_linear(h)
        else:
            logits = self.lm_head(h)
        return ModelOutput(logits, mx.stack(rows, axis=1))  # scores (B, layers, H, T)

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.model.layers]

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop what the checkpoint carries but the model derives (rotary buffers, a tied head)."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights = {k: v for k, v in weights.items() if not k.startswith("lm_head.")}
        return weights

    @property
    def layers(self) -> list[TransformerBlock]:
        return self.model.layers
