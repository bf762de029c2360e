"""The Llama 3.x network in MLX, returning logits and the newest position's attention statistics."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import quant
from .backend import on_cpu
from .cache import KVCache
from .ops import CpuOps, FusedOps
from .quant import PackedEmbedding, PackedLinear


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


def make_ops(args: ModelArgs, cpu: bool | None = None) -> FusedOps:
    """The model's attention/norm/MLP implementation: composed on the CPU, `mx.fast` elsewhere.

    `cpu` None asks the backend (`on_cpu()`), once, when the model is built. On the CPU a decode
    step's attention is native where the `_qmv` extension is built.
    """
    heads = args.num_attention_heads, args.num_key_value_heads, args.head_dim
    if on_cpu() if cpu is None else cpu:
        return CpuOps(*heads, rope_frequencies(args), native=quant.native())
    return FusedOps(*heads, rope_frequencies(args))


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, ops: FusedOps):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        dim, hd = args.hidden_size, args.head_dim
        self.q_proj = nn.Linear(dim, self.n_heads * hd, bias=args.attention_bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=args.attention_bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=args.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, dim, bias=args.attention_bias)
        self.ops = ops

    def __call__(
        self, x: mx.array, mask: Any = None, cache: KVCache | None = None
    ) -> tuple[mx.array, mx.array]:
        """The layer output and the newest query's scaled scores q·k/√D (B, H, T)."""
        out, scores = self.ops.attention(*self.qkv(x), mask, cache)
        return self.o_proj(out), scores

    def qkv(self, x: mx.array, norm: RMSNorm | None = None) -> list[mx.array]:
        """q, k, v (B, L, ·) of x, or of norm(x) when given (packed: one product with the norm
        inside, see `Model.pack_quantized`)."""
        if "qkv_proj" in self:
            return self.qkv_proj.split(x, norm)
        h = x if norm is None else norm(x)
        return [self.q_proj(h), self.k_proj(h), self.v_proj(h)]


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, ops: FusedOps):
        super().__init__()
        dim, hidden = args.hidden_size, args.intermediate_size
        self.gate_proj = nn.Linear(dim, hidden, bias=args.mlp_bias)
        self.up_proj = nn.Linear(dim, hidden, bias=args.mlp_bias)
        self.down_proj = nn.Linear(hidden, dim, bias=args.mlp_bias)
        self.ops = ops

    def __call__(self, x: mx.array) -> mx.array:
        if "gate_up_proj" in self:  # packed: both products and SwiGLU in one operation
            return self.down_proj(self.gate_up_proj(x))
        return self.down_proj(self.ops.swiglu(self.gate_proj(x), self.up_proj(x)))


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float, ops: FusedOps):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps
        self.ops = ops

    def __call__(self, x: mx.array) -> mx.array:
        return self.ops.rms_norm(x, self.weight, self.eps)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, ops: FusedOps):
        super().__init__()
        self.self_attn = Attention(args, ops)
        self.mlp = MLP(args, ops)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps, ops)

    def __call__(
        self, x: mx.array, mask: Any = None, cache: KVCache | None = None
    ) -> tuple[mx.array, mx.array]:
        if self.packed:
            return self._packed(x, mask, cache)
        r, scores = self.self_attn(self.input_layernorm(x), mask, cache)
        h = x + r
        out = h + self.mlp(self.post_attention_layernorm(h))
        return out, scores

    @property
    def packed(self) -> bool:
        attn, mlp = self.self_attn, self.mlp
        projections = [attn.get("qkv_proj"), attn.o_proj, mlp.get("gate_up_proj"), mlp.down_proj]
        return all(isinstance(p, PackedLinear) for p in projections)

    def _packed(self, x: mx.array, mask: Any, cache: KVCache | None) -> tuple[mx.array, mx.array]:
        """The same block with the norms and the residual sums inside the packed products: four
        operations for the projections of a decode step instead of ~20 (each costs ~5-10 µs)."""
        attn, mlp = self.self_attn, self.mlp
        step = attn.ops.block_step(self, x, mask, cache)  # a decode step: 4 native operations
        if step is not None:
            return step
        out, scores = attn.ops.attention(*attn.qkv(x, self.input_layernorm), mask, cache)
        h = attn.o_proj(out, residual=x)
        act = mlp.gate_up_proj(h, self.post_attention_layernorm)
        return mlp.down_proj(act, residual=h), scores


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs, ops: FusedOps):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, ops) for _ in range(args.num_hidden_layers)]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, ops)


class Model(nn.Module):
    """Llama 3.x causal LM. `model(ids, cache)` → `ModelOutput(logits, scores)`.

    `ops` (by default `make_ops(args)`: decided by the device when the model is built) runs the
    attention core, the norms and SwiGLU; `use_ops` swaps it, e.g. to compare the two.
    """

    def __init__(self, args: ModelArgs, ops: FusedOps | None = None):
        super().__init__()
        self.args = args
        self.ops = ops or make_ops(args)
        self.model = LlamaModel(args, self.ops)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        # Tensor parallelism (`distributed.shard`): this rank's heads' scores → all heads'.
        self.gather_scores: Callable[[mx.array], mx.array] | None = None

    def use_ops(self, ops: FusedOps) -> None:
        """Run every layer with `ops` from now on (the weights are untouched)."""
        self.ops = ops
        for _, module in self.named_modules():
            if "ops" in vars(module):
                module.ops = ops

    def __call__(
        self, inputs: mx.array, cache: list[KVCache] | None = None, all_logits: bool = False
    ) -> ModelOutput:
        """Run `inputs` (B, L) after what `cache` holds.

        Only the last position's logits are computed unless `all_logits` (the head is ~20 % of a
        small model's prefill FLOPs).
        """
        h = self.model.embed_tokens(inputs)  # (B, L, dim)
        L = inputs.shape[1]
        mask = cache[0].make_mask(L) if cache is not None else ("causal" if L > 1 else None)
        layer_caches = cache if cache is not None else [None] * len(self.model.layers)
        rows = []
        for layer, c in zip(self.model.layers, layer_caches):
            h, scores = layer(h, mask, c)
            rows.append(scores)
        if not all_logits:
            h = h[:, -1, :] if h.shape[1] > 1 else h.reshape(h.shape[0], -1)  # (B, dim)
        return self._output(h, rows)

    def _output(self, h: mx.array, rows: list[mx.array]) -> ModelOutput:
        norm = self.model.norm
        head = self.model.embed_tokens if self.args.tie_word_embeddings else self.lm_head
        if isinstance(head, PackedEmbedding):  # packed: the final norm inside the product
            logits = head.as_linear(h, norm)
        elif isinstance(head, PackedLinear):
            logits = head(h, norm)
        elif self.args.tie_word_embeddings:
            logits = head.as_linear(norm(h))
        else:
            logits = head(norm(h))
        # (B, layers, H, T); a native decode block's are (B, 1, H, T) already: no operation each
        scores = mx.concatenate([r.reshape(r.shape[0], 1, *r.shape[-2:]) for r in rows], axis=1)
        if self.gather_scores is not None:
            scores = self.gather_scores(scores)
        return ModelOutput(logits, scores)

    def pack_quantized(self) -> None:
        """Repack the MLX-quantized layers for the CPU kernels (`quant`): q/k/v stacked into one
        product, gate/up into one with SwiGLU, the rest one by one. Float layers stay as they are;
        the original quantized arrays are dropped."""
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
            if quant.packable(*qkv):
                attn.qkv_proj = quant.pack_linear(*qkv)
                del attn["q_proj"], attn["k_proj"], attn["v_proj"]
            gate, up = mlp.gate_proj, mlp.up_proj
            if quant.packable(gate, up) and gate.weight.shape[0] % quant.TILE == 0:
                mlp.gate_up_proj = quant.pack_glu_linear(gate, up)
                del mlp["gate_proj"], mlp["up_proj"]
            for parent in (attn, mlp):
                for name, module in list(parent.items()):
                    if isinstance(module, nn.QuantizedLinear) and quant.packable(module):
                        parent[name] = quant.pack_linear(module)
        if quant.packable(self.model.embed_tokens):
            self.model.embed_tokens = quant.pack_embedding(self.model.embed_tokens)
        if not self.args.tie_word_embeddings and quant.packable(self.lm_head):
            self.lm_head = quant.pack_linear(self.lm_head)

    @property
    def packed(self) -> bool:
        """Whether any layer runs on the packed CPU kernels."""
        return any(isinstance(m, PackedLinear | PackedEmbedding) for _, m in self.named_modules())

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
