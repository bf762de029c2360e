"""The CPU's composed operations against float64 NumPy, special values included."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from entropix_mlx.model import ops as cpu_ops


def test_exp_is_accurate_to_float32_rounding_over_its_whole_range() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-87.0, 88.0, 200_000), np.linspace(-1, 1, 20_001), [0.0, 88.0]])
    got = np.array(cpu_ops.exp(mx.array(x.astype(np.float32)))).astype(np.float64)
    want = np.exp(x.astype(np.float32).astype(np.float64))
    assert np.max(np.abs(got / want - 1)) < 2e-7  # mx.exp itself is off by up to ~4e-6
    assert got[-2] == 1.0


def test_exp_underflows_to_zero_and_keeps_nan() -> None:
    got = np.array(cpu_ops.exp(mx.array([-np.inf, -1e4, -104.0, -90.0, np.nan], mx.float32)))
    assert (got[:4] == 0).all() and np.isnan(got[4])


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_softmax_matches_float64_and_gives_masked_entries_exact_zeros() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 9, 300)) * 8).astype(np.float32)
    x[..., 150:] = np.where(rng.random((4, 9, 150)) < 0.5, -np.inf, x[..., 150:])
    got = np.array(cpu_ops.softmax(mx.array(x)))
    np.testing.assert_allclose(got, _np_softmax(x.astype(np.float64)), rtol=1e-6, atol=1e-9)
    assert (got[np.isinf(x)] == 0).all()


def test_logsumexp_matches_float64_with_masked_entries() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 49152)) * 6).astype(np.float32)
    x[1, ::3] = -np.inf
    got = np.array(cpu_ops.logsumexp(mx.array(x)))
    x64 = x.astype(np.float64)
    top = x64.max(-1)
    want = top + np.log(np.exp(x64 - top[:, None]).sum(-1))
    # float32 sums over 49k terms (MLX's CPU reduction is sequential): ~1e-6, as mx.logsumexp's
    theirs = np.array(mx.logsumexp(mx.array(x), axis=-1))
    assert np.max(np.abs(got / want - 1)) <= max(5e-6, 2 * np.max(np.abs(theirs / want - 1)))


def test_swiglu_matches_float64() -> None:
    rng = np.random.default_rng(2)
    gate, up = (
        (rng.standard_normal((3, 1536)) * 6).astype(np.float32),
        rng.standard_normal((3, 1536)),
    )
    got = np.array(cpu_ops.swiglu(mx.array(gate), mx.array(up.astype(np.float32))))
    g = gate.astype(np.float64)
    np.testing.assert_allclose(got, g / (1 + np.exp(-g)) * up, rtol=1e-5, atol=1e-6)


def test_rms_norm_matches_mx_fast() -> None:
    x, w = (
        mx.random.normal((2, 5, 64), key=mx.random.key(3)),
        mx.random.normal((64,), key=mx.random.key(4)),
    )
    assert mx.abs(cpu_ops.rms_norm(x, w, 1e-5) - mx.fast.rms_norm(x, w, 1e-5)).max().item() < 1e-6


# T > L: a cached prefix; L > 128: queries in blocks, each over the keys it can see.
@pytest.mark.parametrize("L, T", [(1, 1), (1, 40), (7, 7), (7, 40), (300, 300), (130, 400)])
def test_attention_matches_float64_with_grouped_heads_and_causal_offset(L: int, T: int) -> None:
    rng = np.random.default_rng(L * 100 + T)
    B, H, Hkv, D = 2, 6, 2, 16
    q = rng.standard_normal((B, H, L, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, Hkv, T, D)).astype(np.float32) for _ in range(2))
    got = np.array(
        cpu_ops.attention(
            mx.array(q), mx.array(k), mx.array(v), D**-0.5, "causal" if L > 1 else None
        )
    )
    kk, vv = (
        np.repeat(a.astype(np.float64), H // Hkv, axis=1) for a in (k, v)
    )  # head h → kv h // G
    s = np.einsum("bhld,bhtd->bhlt", q.astype(np.float64), kk) * D**-0.5
    s = np.where(np.arange(T)[None] <= np.arange(T - L, T)[:, None], s, -np.inf)
    np.testing.assert_allclose(got, _np_softmax(s) @ vv, rtol=1e-5, atol=1e-6)
