"""Attention, RMSNorm and SwiGLU for the model: `mx.fast`'s kernels, or composed for MLX's CPU.

The model takes one ops object, chosen once at construction (`make_ops` in llama.py): `FusedOps`
on Metal/CUDA, `CpuOps` on the CPU. Layers call `ops.attention/rms_norm/swiglu` and never ask
which one they have.

Why the CPU needs its own:

Measured on a 2-core x86 CPU (MLX 0.32): `mx.exp`, `mx.sigmoid` and `mx.softmax` cost 25-40 ns per
element (NumPy's: ~1 ns), so a 500-token prefill spent half its time in the attention softmax
and a quarter in SiLU; `mx.fast.rms_norm` / `scaled_dot_product_attention` run as fallbacks of 6-10
small operations, and every operation costs ~10 µs however small. `mx.compile` fuses the
elementwise parts below into one generated kernel each, and `exp` is computed by the classic
range reduction + polynomial (Cephes' `expf`): 1e-7 relative error against MLX's own 4e-6, at a
third of the time. The Metal and CUDA backends have fused kernels for all of this: they do not
come here.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

# Cephes' minimax coefficients of (e**r - 1 - r) / r**2 on |r| ≤ ln 2 / 2, highest degree first.
_EXP_POLY = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)


def exp(x: mx.array) -> mx.array:
    """e**x in float32 to ~1e-7 relative for x ≤ 88; 0 below ~-87.3, so exp(-inf) == 0."""
    x = mx.clip(x.astype(mx.float32), -104.0, 88.0)
    n = mx.floor(x * 1.4426950408889634 + 0.5)  # x = n·ln 2 + r, |r| ≤ ln 2 / 2
    r = x - n * 0.693359375 + n * 2.12194440e-4  # ln 2 in two parts, so n·ln 2 is exact
    p = r * _EXP_POLY[0] + _EXP_POLY[1]
    for c in _EXP_POLY[2:]:
        p = p * r + c
    p = p * r * r + r + 1.0
    two_n = mx.left_shift(mx.maximum(n.astype(mx.int32) + 127, 0), 23).view(mx.float32)  # 2**n
    return p * two_n


@mx.compile
def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis in float32; -inf entries get exactly 0."""
    e = exp(x - mx.max(x, axis=-1, keepdims=True))
    return (e / mx.sum(e, axis=-1, keepdims=True)).astype(x.dtype)


@mx.compile
def logsumexp(x: mx.array) -> mx.array:
    """log Σ e**x over the last axis in float32: 2.4x faster than `mx.logsumexp` on the CPU over
    a 49k vocabulary (a token's log-probability every step)."""
    x = x.astype(mx.float32)
    top = mx.max(x, axis=-1, keepdims=True)
    return (top + mx.log(mx.sum(exp(x - top), axis=-1, keepdims=True)))[..., 0]


@mx.compile
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) · up, one kernel."""
    g = gate.astype(mx.float32)
    return (g / (1.0 + exp(-g)) * up).astype(gate.dtype)


@mx.compile
def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """`mx.fast.rms_norm`'s arithmetic in 3 kernels instead of its CPU fallback's 6."""
    xf = x.astype(mx.float32)
    normed = xf * mx.rsqrt(mx.mean(mx.square(xf), axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * weight


_QUERY_BLOCK = 128


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: Any) -> mx.array:
    """softmax(q·kᵀ·scale)·v for (B, H, L, D) queries over (B, Hkv, T, D) keys and values.

    Query heads are grouped per kv head (GQA) without repeating k and v. `mask`: None (all keys),
    "causal" (query i sits at position T - L + i and sees keys up to it) or a boolean (B, 1, L, T)
    array (a batch's left padding, see `BatchKVCache.make_mask`).
    """
    B, H, L, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    if mask is not None and L > _QUERY_BLOCK:
        # Each block of queries over only the keys it can see: most of the masked half of the
        # scores, and its exps, is never computed (SmolLM2, a 500-token prompt: 2.36 → 1.81 s).
        blocks = []
        for start in range(0, L, _QUERY_BLOCK):
            end = min(start + _QUERY_BLOCK, L)
            seen = T - L + end  # keys up to this block's last query
            part = mask if isinstance(mask, str) else mask[:, :, start:end, :seen]
            blocks.append(
                attention(q[:, :, start:end], k[:, :, :seen], v[:, :, :seen], scale, part)
            )
        return mx.concatenate(blocks, axis=2)
    scores = (q * scale).reshape(B, Hkv, H // Hkv * L, D) @ k.swapaxes(-1, -2)  # (B, Hkv, G·L, T)
    if mask is not None:
        if isinstance(mask, str):
            mask = mx.arange(T)[None] <= mx.arange(T - L, T)[:, None]  # (L, T)
        else:
            mask = mask[:, :, None]  # (B, 1, 1, L, T): the same for every head
        scores = mx.where(mask, scores.reshape(B, Hkv, -1, L, T), -mx.inf).reshape(B, Hkv, -1, T)
    return (softmax(scores) @ v).reshape(B, H, L, D)


class FusedOps:
    """The attention core, RMSNorm and SwiGLU on `mx.fast`'s fused kernels (Metal, CUDA).

    `attention` takes the projections and returns the layer's attention output with the newest
    query's scaled scores over the valid keys, which the metrics read.
    """

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, periods: mx.array):
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.periods = periods  # (D/2,) RoPE periods (1 / inv_freq), Llama 3 scaling applied

    def rms_norm(self, x: mx.array, weight: mx.array, eps: float) -> mx.array:
        return mx.fast.rms_norm(x, weight, eps)

    def swiglu(self, gate: mx.array, up: mx.array) -> mx.array:
        return nn.silu(gate) * up

    def rope(self, x: mx.array, offset: int | np.ndarray) -> mx.array:
        """Non-traditional RoPE of (B, H, L, D) `x` at positions offset, offset + 1, ...

        `offset` is an int, or one per row (B,) (`BatchKVCache.positions`).
        """
        if isinstance(offset, np.ndarray):
            offset = mx.array(offset)
        return mx.fast.rope(
            x,
            self.head_dim,
            traditional=False,
            base=None,
            scale=1.0,
            offset=offset,
            freqs=self.periods,
        )

    def attention(
        self, q: mx.array, k: mx.array, v: mx.array, mask: Any, cache: Any
    ) -> tuple[mx.array, mx.array]:
        """Projections (B, L, ·) in; output (B, L, H·D) and the newest scores (B, H, T) out."""
        B, L, _ = q.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = q.reshape(B, L, H, D).transpose(0, 2, 1, 3)  # (B, H, L, D)
        k = k.reshape(B, L, Hkv, D).transpose(0, 2, 1, 3)  # (B, Hkv, L, D)
        v = v.reshape(B, L, Hkv, D).transpose(0, 2, 1, 3)  # (B, Hkv, L, D)
        offset = cache.positions if cache is not None else 0
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # (B, Hkv, T, D), valid positions only
        T = k.shape[2]
        # The newest query's scores over the valid keys; GQA groups query heads per kv head.
        q_last = q if L == 1 else q[:, :, -1:, :]
        q_last = q_last.reshape(B, Hkv, H // Hkv, D) * self.scale  # (B, Hkv, G, D)
        scores = (q_last @ k.swapaxes(-1, -2)).reshape(B, H, T)  # (B, H, T)
        out = self.attend(q, k, v, mask)  # (B, H, L, D)
        return out.transpose(0, 2, 1, 3).reshape(B, L, H * D), scores

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: Any) -> mx.array:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)

    def block_step(self, block: Any, x: mx.array, mask: Any, cache: Any) -> Any:
        """A packed block's one-token step in few operations, (x', scores (B, 1, H, T)), where
        these ops have them; None: the block runs operation by operation."""
        return None


class CpuOps(FusedOps):
    """The composed kernels above, and a one-token decode in few MLX operations.

    On the CPU `mx.fast.rope` runs as a fallback of ~15 small operations, and every operation
    costs ~10 µs whatever its size. A one-token step's attention is softmax(q·kᵀ)·v from the very
    scores the metrics need, in three operations where the `_qmv` extension is built: two
    `cache_write`s (RoPE'd key, value; the cache buffers reused in place) and `decode_attention`
    (RoPE'd and scaled query over the buffers), against ~12 of MLX's, whose products over the cache
    also grow ~4x faster with the context; a packed block's whole step is four (`block_step`).
    Without it, RoPE is one (D, D) matrix per position, built once per step and shared by all
    layers (the softmax scale folded into the queries').
    """

    def __init__(
        self,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        periods: mx.array,
        native: Any = None,
    ):
        super().__init__(n_heads, n_kv_heads, head_dim, periods)
        self._periods64 = np.asarray(periods, dtype=np.float64)
        self._step: tuple[Any, tuple[mx.array, ...]] | None = None  # (key, tables): `_per_step`
        self.native = native  # the `_qmv` module (quant.native()), or None: MLX's operations

    def rms_norm(self, x: mx.array, weight: mx.array, eps: float) -> mx.array:
        return rms_norm(x, weight, eps)

    def swiglu(self, gate: mx.array, up: mx.array) -> mx.array:
        return swiglu(gate, up)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: Any) -> mx.array:
        return attention(q, k, v, self.scale, mask)

    def attention(
        self, q: mx.array, k: mx.array, v: mx.array, mask: Any, cache: Any
    ) -> tuple[mx.array, mx.array]:
        B, L, _ = q.shape
        if cache is None or L != 1:
            return super().attention(q, k, v, mask, cache)
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        if self.native is not None and q.dtype == mx.float32:
            return self._native_step(q, k, v, mask, cache)
        rot_q, rot_k = self.rotations(cache.positions, q.dtype)
        q = q.reshape(B, Hkv, H // Hkv, D) @ rot_q  # rotated, and scaled by 1/√D
        k = k.reshape(B, Hkv, 1, D) @ rot_k
        k, v = cache.update_and_fetch(k, v.reshape(B, Hkv, 1, D))  # (B, Hkv, T, D)
        scores = q @ k.swapaxes(-1, -2)  # (B, Hkv, G, T): what the metrics read, and the attention
        if mask is not None:  # (B, 1, 1, T): a batch's left padding
            scores = mx.where(mask, scores, -mx.inf)
        out = softmax(scores) @ v  # (B, Hkv, G, D)
        return out.reshape(B, 1, H * D), scores.reshape(B, H, -1)

    def block_step(self, block: Any, x: mx.array, mask: Any, cache: Any) -> Any:
        """A packed block's one-token step in four operations where `_qmv` is built: the qkv
        product (its norm inside), the two cache writes, and `decode_block` for the rest (the
        attention, o, gate/up, down with their norm and residuals). The same arithmetic as the
        block's `_packed` path, without ~8 schedulings of ~10 µs a layer."""
        B, L, _ = x.shape
        if self.native is None or cache is None or L != 1 or x.dtype != mx.float32:
            return None
        attn, mlp = block.self_attn, block.mlp
        q, k, v = attn.qkv(x, block.input_layernorm)
        cos_q, sin_q = self._write(cache, k, v)
        rest = (attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        norm = block.post_attention_layernorm
        return self.native.decode_block(
            x, q, cache.keys, cache.values, [p.weight for p in rest],
            [n for p in rest for n in p.dims], norm.weight, norm.eps,
            length=cache.offset, heads=self.n_heads, cos=cos_q, sin=sin_q, mask=mask,
        )  # fmt: skip

    def _native_step(
        self, q: mx.array, k: mx.array, v: mx.array, mask: Any, cache: Any
    ) -> tuple[mx.array, mx.array]:
        """The one-token step through `_qmv`: projections (B, 1, ·) in, as `attention`."""
        B = q.shape[0]
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        cos_q, sin_q = self._write(cache, k, v)
        out, scores = self.native.decode_attention(
            q.reshape(B, Hkv, H // Hkv, D), cache.keys, cache.values, mask,
            length=cache.offset, cos=cos_q, sin=sin_q,
        )  # fmt: skip
        return out.reshape(B, 1, H * D), scores.reshape(B, H, -1)

    def _write(self, cache: Any, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Append the step's key (RoPE'd) and value (B, 1, Hkv·D) to `cache` natively; the cos and
        sin for its queries."""
        ext, (cos, sin, cos_q, sin_q) = self.native, self.angles(cache.positions)
        cache.append(
            lambda keys, values, slot: (
                ext.cache_write(keys, k, slot, cos=cos, sin=sin),
                ext.cache_write(values, v, slot),
            ),
            (k.shape[0], self.n_kv_heads, self.head_dim),
            k.dtype,
        )
        return cos_q, sin_q

    def angles(self, position: int | np.ndarray) -> tuple[mx.array, ...]:
        """cos and sin of RoPE's angles at `position` (an int, or one per row), for keys and
        times 1/√D for queries: (1 or B, D/2) float32 each, from float64 (the rotation matrices'
        numbers)."""

        def build() -> tuple[mx.array, ...]:
            cos, sin = self._trig(np.atleast_1d(position))
            trig = (cos, sin, cos * self.scale, sin * self.scale)
            return tuple(mx.array(t, mx.float32) for t in trig)

        return self._per_step(("angles", position), build)

    def rotations(self, position: int | np.ndarray, dtype: mx.Dtype) -> tuple[mx.array, ...]:
        """RoPE at `position` as `x @ R` for queries (times 1/√D) and keys; angles in float64.

        (D, D) matrices, or (B, 1, D, D) for one position per row.
        """

        def build() -> tuple[mx.array, ...]:
            cos, sin = self._trig(position)  # (…, n)
            n = cos.shape[-1]
            i = np.arange(n)
            rot = np.zeros((*cos.shape[:-1], 2 * n, 2 * n))
            # x @ rot = [x₁·cos − x₂·sin, x₂·cos + x₁·sin]
            rot[..., i, i] = rot[..., i + n, i + n] = cos
            rot[..., i + n, i], rot[..., i, i + n] = -sin, sin
            if isinstance(position, np.ndarray):
                rot = rot[:, None]  # (B, 1, D, D): the same for every head
            return mx.array(rot * self.scale, dtype=dtype), mx.array(rot, dtype=dtype)

        return self._per_step(("rotations", position, dtype), build)

    def _trig(self, position: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float64 cos and sin of RoPE's angles, position(s) × (D/2,) periods."""
        angles = np.asarray(position, dtype=np.float64)[..., None] / self._periods64
        return np.cos(angles), np.sin(angles)

    def _per_step(self, key: tuple, build: Any) -> tuple[mx.array, ...]:
        """`build()` for the first layer of a step, its result for the others (one entry: every
        layer asks for the same positions)."""
        key = tuple(tuple(k.tolist()) if isinstance(k, np.ndarray) else k for k in key)
        if self._step is None or self._step[0] != key:
            self._step = (key, build())
        return self._step[1]
