"""Quantized weights on the CPU: repacking into the native kernels' layout and the ops over it.

MLX's CPU `quantized_matmul` is a single-threaded scalar loop, so on the CPU the model used to run
as dense float32: 4-8x the file's size in memory and in bytes read per decoded token. The `_qmv`
extension (native/qmv.cpp, native/kernels.cpp; built by `make install`) multiplies by the
quantized weights directly, with AVX2 and both cores, activations quantized to int8 per 32 values
in two levels (x ≈ d·q + d2·q2): one level, as llama.cpp does, moved the default model's logits by
up to 1.8 and flipped greedy tokens at gaps up to 0.3; two levels keep them within 0.008 of dense
float32 for ~1.5x the integer arithmetic, which decoding (bound by reading the weights) hides.
Prompts (16+ positions per sequence) dequantize the layer's weights to float32 and use BLAS
instead: exactly the dense layout's numbers, and as fast, without keeping a dense copy.

Any affine 4-/8-bit weight (MLX `quantize` output with group size 32, 64 or 128; GGUF Q4_0, Q4_1
and Q8_0 as MLX loads them) is repacked once at load: rows in tiles of 8, interleaved 4 bytes at a
time per 32-column block, float16 scale and bias per row and block (layout in native/kernels.h).
The result is as big as the original for group 32 (Q4_1: 0.625 bytes per weight).

Where the extension is missing (no compiler at install, another platform) `native_error()` says
why, and callers keep the dense path.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import mlx.core as mx
import mlx.nn as nn
import numpy as np

BLOCK = 32  # values per activation / weight block
TILE = 8  # weight rows per tile


@functools.cache
def _load_native() -> ModuleType | str:
    try:
        return importlib.import_module("entropix_mlx.model._qmv")
    except Exception as err:
        return f"{err}" if isinstance(err, ImportError) else f"{type(err).__name__}: {err}"


def native() -> ModuleType | None:
    """The `_qmv` extension module, or None where it is not available."""
    mod = _load_native()
    return mod if isinstance(mod, ModuleType) else None


def native_error() -> str | None:
    """Why the extension cannot be used (None when it can)."""
    mod = _load_native()
    return None if isinstance(mod, ModuleType) else f"quantized CPU kernels not built ({mod})"


def native_status() -> str:
    """`avx2 · 2 threads`, or why the kernels are not available."""
    mod = native()
    if mod is None:
        return native_error() or "?"
    return f"{mod.kernel_name()} · {mod.num_threads()} threads"


@dataclass(frozen=True)
class Packed:
    """A (rows, cols) matrix in the kernels' layout; `rows` counts the original matrix's rows
    (for `glu`, the gate's: the data holds gate and up tile-pairwise, 2 · rows in all)."""

    data: mx.array  # uint8, packed_bytes(rows, cols, bits)
    rows: int
    cols: int
    bits: int
    glu: bool = False

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def supports(group_size: int, bits: int, cols: int) -> bool:
    """Whether a quantized matrix can be repacked (else it stays on the dense path)."""
    return bits in (4, 8) and group_size % BLOCK == 0 and cols % group_size == 0


def _unpack_values(weight: np.ndarray, bits: int) -> np.ndarray:
    """MLX's packed uint32 rows → the quantized values, uint8 (rows, cols)."""
    raw = np.ascontiguousarray(weight).view(np.uint8)  # little-endian: value order kept
    if bits == 8:
        return raw
    q = np.empty((raw.shape[0], raw.shape[1] * 2), dtype=np.uint8)
    q[:, 0::2] = raw & 0x0F
    q[:, 1::2] = raw >> 4
    return q


def _tiles(
    weight: mx.array, scales: mx.array, biases: mx.array, group_size: int, bits: int
) -> np.ndarray:
    """(tiles, blocks, record bytes) uint8 for one matrix (see native/kernels.h)."""
    if not supports(group_size, bits, weight.shape[1] * 32 // bits):
        raise ValueError(f"cannot repack {bits}-bit weights with group size {group_size}")
    q = _unpack_values(np.asarray(weight), bits)  # (N, K)
    rows, cols = q.shape
    per_group = group_size // BLOCK
    s = np.repeat(np.array(scales.astype(mx.float16)), per_group, axis=1)  # (N, K/32)
    b = np.repeat(np.array(biases.astype(mx.float16)), per_group, axis=1)
    pad = -rows % TILE
    if pad:
        q = np.pad(q, ((0, pad), (0, 0)))
        s, b = np.pad(s, ((0, pad), (0, 0))), np.pad(b, ((0, pad), (0, 0)))
    tiles, blocks = q.shape[0] // TILE, cols // BLOCK
    q = q.reshape(tiles, TILE, blocks, BLOCK).transpose(0, 2, 1, 3)  # (T, NB, 8 rows, 32)
    if bits == 4:
        lo = q[..., :16].reshape(tiles, blocks, TILE, 4, 4)  # (T, NB, r, j, i)
        hi = q[..., 16:].reshape(tiles, blocks, TILE, 4, 4)
        qs = (lo | (hi << 4)).transpose(0, 1, 3, 2, 4)  # (T, NB, j, r, i)
    else:
        qs = q.reshape(tiles, blocks, TILE, 8, 4).transpose(0, 1, 3, 2, 4)
    qs = qs.reshape(tiles, blocks, -1)
    s = s.reshape(tiles, TILE, blocks).transpose(0, 2, 1).copy().view(np.uint8)  # (T, NB, 16)
    b = b.reshape(tiles, TILE, blocks).transpose(0, 2, 1).copy().view(np.uint8)
    return np.concatenate([qs, s, b], axis=-1)


QuantTriple = tuple[mx.array, mx.array, mx.array]  # weight (uint32), scales, biases


def pack(triples: Sequence[QuantTriple], group_size: int, bits: int) -> Packed:
    """One packed matrix from one or more quantized matrices stacked by rows (q, k, v → qkv)."""
    if len({w.shape[1] for w, _, _ in triples}) != 1:
        raise ValueError("stacked matrices must have the same number of columns")
    cols = triples[0][0].shape[1] * 32 // bits
    if len(triples) == 1:
        weight, scales, biases = triples[0]
    else:
        weight = mx.concatenate([w for w, _, _ in triples])
        scales = mx.concatenate([s for _, s, _ in triples])
        biases = mx.concatenate([b for _, _, b in triples])
    data = _tiles(weight, scales, biases, group_size, bits)
    return Packed(mx.array(data.reshape(-1)), weight.shape[0], cols, bits)


def pack_glu(gate: QuantTriple, up: QuantTriple, group_size: int, bits: int) -> Packed:
    """Gate and up projections packed tile-pairwise, for `qmatmul(..., glu=True)`."""
    g, u = _tiles(*gate, group_size, bits), _tiles(*up, group_size, bits)
    if g.shape != u.shape or gate[0].shape[0] % TILE:
        raise ValueError("gate and up must have the same shape, rows a multiple of 8")
    data = np.stack([g, u], axis=1)  # (T, 2, NB, record)
    cols = gate[0].shape[1] * 32 // bits
    return Packed(mx.array(data.reshape(-1)), gate[0].shape[0], cols, bits, glu=True)


def _ext() -> ModuleType:
    mod = native()
    if mod is None:
        raise RuntimeError(native_error())
    return mod


def qmatmul(
    x: mx.array,
    w: Packed,
    *,
    norm: mx.array | None = None,
    eps: float = 1e-5,
    residual: mx.array | None = None,
    precise: bool = True,
) -> mx.array:
    """x @ Wᵀ (float32) for x (..., cols); `norm`: RMSNorm x with this weight first; `residual`:
    added to the result; a `glu` matrix gives silu(x @ gateᵀ) · (x @ upᵀ). `precise`: activations
    in two int8 levels (error ~250x smaller than one level, for ~1.5x the arithmetic)."""
    return _ext().qmatmul(
        x, w.data, w.rows, w.cols, w.bits, norm=norm, eps=eps, residual=residual, glu=w.glu,
        precise=precise,
    )  # fmt: skip


def qmatmul_split(
    x: mx.array, w: Packed, splits: Sequence[int], *, norm: mx.array | None = None,
    eps: float = 1e-5, precise: bool = True,
) -> list[mx.array]:  # fmt: skip
    """x @ Wᵀ as column blocks of the given widths (q, k, v from one stacked matrix)."""
    return _ext().qmatmul_split(
        x, w.data, list(splits), w.cols, w.bits, norm=norm, eps=eps, precise=precise
    )


def qdequant(w: Packed) -> mx.array:
    """All of W in float32: (rows, cols), or for `glu` (2 · rows, cols), gate and up alternating
    every 8 rows."""
    return _ext().qdequant(w.data, w.rows * (2 if w.glu else 1), w.cols, w.bits)


def qembed(ids: mx.array, w: Packed) -> mx.array:
    """Rows `ids` of W, dequantized to float32: ids.shape + (cols,)."""
    return _ext().qembed(ids, w.data, w.rows, w.cols, w.bits)


# ---------------------------------------------------------------------------- modules

# Products over at least this many positions per sequence (prompts) dequantize the weights to
# float32 and go to BLAS: the dense layout's exact numbers. One-token steps stay on the kernel at
# any batch size: dequantizing costs a pass over all the weights per call, which made a 16-row
# decode step 2.8x slower (83 vs 230 tok/s, default model, 2 cores). Counting positions per
# sequence, not rows, keeps a prompt on the same path alone and in a padded batch (batched eval
# answers as one by one); the kernel would be faster for prompts under ~192 tokens (prefill 456 vs
# 402 tok/s at 128 tokens), but a prompt would then change paths with its batch's padding.
DENSE_FROM_ROWS = 16


def _dense_product(
    x: mx.array, w: Packed, norm: nn.RMSNorm | None, residual: mx.array | None = None
) -> mx.array:
    """What `qmatmul` computes, through float32 weights and BLAS."""
    from . import ops  # compiled RMSNorm and SwiGLU, the dense layout's own

    h = x if norm is None else ops.rms_norm(x, norm.weight, norm.eps)
    y = h @ qdequant(w).T
    if w.glu:  # columns: gate and up alternating every 8
        pairs = y.reshape(*y.shape[:-1], w.rows // TILE, 2, TILE)
        y = ops.swiglu(pairs[..., 0, :], pairs[..., 1, :]).reshape(*x.shape[:-1], w.rows)
    return y if residual is None else residual + y


def _many_rows(x: mx.array) -> bool:
    return x.ndim >= 2 and x.shape[-2] >= DENSE_FROM_ROWS


class PackedLinear(nn.Module):
    """A bias-free linear layer over packed weights, y = x @ Wᵀ, that can take the RMSNorm before
    it and the residual sum after it into the same operation (each saves a decode step a few MLX
    operations per layer). A `glu` one computes silu(x @ gateᵀ) · (x @ upᵀ); a stacked one
    (`splits`) returns its column blocks (q, k, v) as separate arrays."""

    def __init__(self, packed: Packed, splits: Sequence[int] = ()):
        super().__init__()
        self.weight = packed.data
        self._meta = (packed.rows, packed.cols, packed.bits, packed.glu)  # "_": not parameters
        self._splits = tuple(splits)

    @property
    def packed(self) -> Packed:
        return Packed(self.weight, *self._meta)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(rows, cols, bits) of the packed matrix, as the native kernels take them."""
        return self._meta[:3]

    def __call__(
        self, x: mx.array, norm: nn.RMSNorm | None = None, residual: mx.array | None = None
    ) -> mx.array:
        if _many_rows(x):
            return _dense_product(x, self.packed, norm, residual)
        weight, eps = (None, 1e-5) if norm is None else (norm.weight, norm.eps)
        return qmatmul(x, self.packed, norm=weight, eps=eps, residual=residual)

    def split(self, x: mx.array, norm: nn.RMSNorm | None = None) -> list[mx.array]:
        if _many_rows(x):
            y = _dense_product(x, self.packed, norm)
            return mx.split(y, np.cumsum(self._splits)[:-1].tolist(), axis=-1)
        weight, eps = (None, 1e-5) if norm is None else (norm.weight, norm.eps)
        return qmatmul_split(x, self.packed, self._splits, norm=weight, eps=eps)


class PackedEmbedding(nn.Module):
    """An embedding table over packed weights: rows by id, or the tied output head."""

    def __init__(self, packed: Packed):
        super().__init__()
        self.weight = packed.data
        self._meta = (packed.rows, packed.cols, packed.bits, packed.glu)

    @property
    def packed(self) -> Packed:
        return Packed(self.weight, *self._meta)

    def __call__(self, ids: mx.array) -> mx.array:
        return qembed(ids, self.packed)

    def as_linear(self, x: mx.array, norm: nn.RMSNorm | None = None) -> mx.array:
        if _many_rows(x):
            return _dense_product(x, self.packed, norm)
        weight, eps = (None, 1e-5) if norm is None else (norm.weight, norm.eps)
        return qmatmul(x, self.packed, norm=weight, eps=eps)


Quantized = nn.QuantizedLinear | nn.QuantizedEmbedding


def packable(*modules: nn.Module) -> bool:
    """Whether these modules are MLX-quantized, bias-free, in one format the kernels take."""
    if not all(isinstance(m, Quantized) and "bias" not in m for m in modules):
        return False
    formats = {(m.group_size, m.bits, getattr(m, "mode", "affine")) for m in modules}
    if len(formats) != 1:
        return False
    group_size, bits, mode = formats.pop()
    cols = modules[0].weight.shape[1] * 32 // bits
    return mode == "affine" and supports(group_size, bits, cols)


def _triple(m: Quantized) -> QuantTriple:
    return m.weight, m.scales, m.biases


def pack_linear(*modules: Quantized) -> PackedLinear:
    """One quantized linear layer, or several stacked by rows (then `split` returns each's part)."""
    triples = [_triple(m) for m in modules]
    return pack_linear_from_triples(
        triples, modules[0].group_size, modules[0].bits, len(modules) > 1
    )


def pack_linear_from_triples(
    triples: Sequence[QuantTriple], group_size: int, bits: int, splits: bool = False
) -> PackedLinear:
    packed = pack(triples, group_size, bits)
    return PackedLinear(packed, [w.shape[0] for w, _, _ in triples] if splits else [])


def pack_glu_linear(gate: Quantized, up: Quantized) -> PackedLinear:
    return PackedLinear(pack_glu(_triple(gate), _triple(up), gate.group_size, gate.bits))


def pack_embedding(module: nn.QuantizedEmbedding) -> PackedEmbedding:
    return PackedEmbedding(pack([_triple(module)], module.group_size, module.bits))
