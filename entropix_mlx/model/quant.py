"""Quantized weights on the CPU: repacking into the native kernels' layout and the ops over it.

MLX's CPU `quantized_matmul` is a single-threaded scalar loop, so on the CPU the model used to run
as dense float32: 4-8x the file's size in memory and in bytes read per decoded token. The `_qmv`
extension (native/qmv.cpp, native/kernels.cpp; built by `make install`) multiplies by the
quantized weights directly, with AVX2 and both cores, activations quantized to int8 per 32 values.

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
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence

import mlx.core as mx
import numpy as np

BLOCK = 32  # values per activation / weight block
TILE = 8  # weight rows per tile


@functools.cache
def _load_native() -> ModuleType | str:
    try:
        return importlib.import_module("entropix_mlx.model._qmv")
    except ImportError as err:  # not built, or built against another MLX
        return f"{err}"


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
    q = _unpack_values(np.array(weight, copy=False), bits)  # (N, K)
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
    values = [_unpack_values(np.array(w, copy=False), bits) for w, _, _ in triples]
    cols = values[0].shape[1]
    if any(v.shape[1] != cols for v in values):
        raise ValueError("stacked matrices must have the same number of columns")
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
) -> mx.array:
    """x @ Wᵀ (float32) for x (..., cols); `norm`: RMSNorm x with this weight first; `residual`:
    added to the result; a `glu` matrix gives silu(x @ gateᵀ) · (x @ upᵀ)."""
    return _ext().qmatmul(
        x, w.data, w.rows, w.cols, w.bits, norm=norm, eps=eps, residual=residual, glu=w.glu
    )


def qmatmul_split(
    x: mx.array, w: Packed, splits: Sequence[int], *, norm: mx.array | None = None,
    eps: float = 1e-5,
) -> list[mx.array]:  # fmt: skip
    """x @ Wᵀ as column blocks of the given widths (q, k, v from one stacked matrix)."""
    return _ext().qmatmul_split(x, w.data, list(splits), w.cols, w.bits, norm=norm, eps=eps)


def qembed(ids: mx.array, w: Packed) -> mx.array:
    """Rows `ids` of W, dequantized to float32: ids.shape + (cols,)."""
    return _ext().qembed(ids, w.data, w.rows, w.cols, w.bits)
