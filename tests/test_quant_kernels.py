"""The quantized CPU kernels (`_qmv`, model/quant.py) against float64 NumPy.

The kernels quantize activations to int8 per 32 values, x ≈ d·q, and then compute W·(d·q) with W
exactly as stored: so every product is checked twice, tightly against float64 W·(d·q) (the
layout, the integer arithmetic, the fusions) and loosely against float64 W·x (what int8
activations cost, the figure the model's accuracy depends on).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropix_mlx.model import quant

pytestmark = pytest.mark.skipif(quant.native() is None, reason=str(quant.native_error()))

# float32 accumulation over ≤ 1536 terms: relative to the size of the terms, not of the result.
EXACT_RTOL = 2e-5
# What int8 activations cost on Gaussian data, relative to ‖x‖·‖w‖ per output, over 512 x 8
# outputs: one level measured max 4.8e-4 (4-bit) / 5.4e-4 (8-bit), median 1e-4; two levels max
# 2.0e-6 / 1.7e-6, median 3.5e-7 (float32 rounding is ~1e-7). Bounds: 2x the measured max.
QUANT_REL = 1e-3
QUANT_REL_PRECISE = 4e-6


@pytest.fixture(autouse=True)
def _cpu():
    with mx.stream(mx.cpu):
        yield


@pytest.fixture(params=[False, True], ids=["simd", "scalar"])
def kernel(request):
    """Both kernels: the AVX2 one (where the CPU has it) and the portable scalar one."""
    ext = quant.native()
    ext.set_force_scalar(request.param)
    yield ext.kernel_name()
    ext.set_force_scalar(False)


def make_weight(rng, rows, cols, bits, group_size):
    """An MLX-quantized matrix (float16 scales and biases, as checkpoints have) and its exact
    float64 values."""
    w = mx.array((rng.standard_normal((rows, cols)) * 0.1).astype(np.float16))
    triple = mx.quantize(w, group_size=group_size, bits=bits)
    q = quant._unpack_values(np.array(triple[0]), bits).astype(np.float64)
    scales = np.repeat(np.array(triple[1], dtype=np.float64), group_size, axis=1)
    biases = np.repeat(np.array(triple[2], dtype=np.float64), group_size, axis=1)
    return triple, q * scales + biases


def _level(xb):
    """One int8 level per 32 values as the kernels compute it (float32, round half to even)."""
    xb = xb.astype(np.float32)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(xb * inv).astype(np.float32)
    return q, (amax / np.float32(127)).astype(np.float32)


def quantize_x(x, precise=True):
    """float64 model of the kernels' activations: d·q, plus d2·q2 for the rest when precise."""
    xb = x.reshape(*x.shape[:-1], -1, 32).astype(np.float32)
    q, d = _level(xb)
    out = q.astype(np.float64) * d
    if precise:
        q2, d2 = _level(xb - d * q)
        out = out + q2.astype(np.float64) * d2
    return out.reshape(x.shape)


def check_exact(got, x, w, precise=True):
    """got ≈ quantize(x) @ wᵀ to float32 accumulation accuracy."""
    xq = quantize_x(x, precise)
    want = xq @ w.T
    scale = np.abs(xq) @ np.abs(w).T + 1e-30
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - want), EXACT_RTOL * scale)


@pytest.mark.parametrize("precise", [True, False], ids=["two-level", "one-level"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("rows", [1, 4, 5, 8, 9])
def test_matmul_matches_float64(kernel, bits, group_size, rows, precise):
    rng = np.random.default_rng(bits * 1000 + group_size + rows)
    triple, w = make_weight(rng, 77, 256, bits, group_size)  # 77: a partial last tile
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    packed = quant.pack([triple], group_size, bits)
    got = quant.qmatmul(mx.array(x), packed, precise=precise)
    assert got.shape == (rows, 77) and got.dtype == mx.float32
    check_exact(got, x.astype(np.float64), w, precise)


@pytest.mark.parametrize("precise", [True, False], ids=["two-level", "one-level"])
@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activation_error_is_small(bits, precise):
    """Against the unquantized x: the error int8 activations add, per output, relative to
    ‖x‖·‖w_row‖ (the scale of a dot product's terms)."""
    rng = np.random.default_rng(bits)
    triple, w = make_weight(rng, 512, 1536, bits, 32)
    x = rng.standard_normal((8, 1536))
    packed = quant.pack([triple], 32, bits)
    got = np.array(quant.qmatmul(mx.array(x.astype(np.float32)), packed, precise=precise))
    err = np.abs(got - x @ w.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(w, axis=1))
    assert err.max() < (QUANT_REL_PRECISE if precise else QUANT_REL)


def test_simd_and_scalar_agree():
    ext = quant.native()
    rng = np.random.default_rng(7)
    for bits in (4, 8):
        triple, _ = make_weight(rng, 40, 160, bits, 32)
        packed = quant.pack([triple], 32, bits)
        x = mx.array(rng.standard_normal((6, 160)).astype(np.float32))
        a = np.array(quant.qmatmul(x, packed))
        ext.set_force_scalar(True)
        try:
            b = np.array(quant.qmatmul(x, packed))
        finally:
            ext.set_force_scalar(False)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_leading_axes_and_strided_inputs(kernel):
    rng = np.random.default_rng(3)
    triple, w = make_weight(rng, 24, 64, 4, 32)
    packed = quant.pack([triple], 32, 4)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    got = quant.qmatmul(mx.array(x), packed)
    assert got.shape == (2, 3, 24)
    check_exact(np.array(got).reshape(6, 24), x.reshape(6, 64).astype(np.float64), w)
    # A transposed view (columns 64 apart) and a broadcast one (row stride 0).
    xt = rng.standard_normal((64, 5)).astype(np.float32)
    check_exact(quant.qmatmul(mx.array(xt).T, packed), xt.T.astype(np.float64), w)
    row = rng.standard_normal((1, 64)).astype(np.float32)
    got = np.array(quant.qmatmul(mx.broadcast_to(mx.array(row), (3, 64)), packed))
    check_exact(got, np.repeat(row, 3, axis=0).astype(np.float64), w)


def test_fused_norm_and_residual(kernel):
    rng = np.random.default_rng(4)
    triple, w = make_weight(rng, 40, 96, 4, 32)
    packed = quant.pack([triple], 32, 4)
    x = rng.standard_normal((3, 96)).astype(np.float32) * 3
    g = rng.uniform(0.5, 1.5, 96).astype(np.float32)
    res = rng.standard_normal((3, 40)).astype(np.float32)
    got = quant.qmatmul(mx.array(x), packed, norm=mx.array(g), eps=1e-5, residual=mx.array(res))
    x64 = x.astype(np.float64)
    normed = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-5) * g
    check_exact(np.array(got) - res, normed, w)


def test_glu(kernel):
    rng = np.random.default_rng(5)
    gate, wg = make_weight(rng, 48, 64, 4, 32)
    up, wu = make_weight(rng, 48, 64, 4, 32)
    x = rng.standard_normal((2, 64))
    got = np.array(quant.qmatmul(mx.array(x.astype(np.float32)), quant.pack_glu(gate, up, 32, 4)))
    xq = quantize_x(x)
    a, b = xq @ wg.T, xq @ wu.T
    np.testing.assert_allclose(got, a / (1 + np.exp(-a)) * b, rtol=1e-4, atol=1e-5)


def test_split_outputs(kernel):
    rng = np.random.default_rng(6)
    parts = [make_weight(rng, rows, 64, 4, 32) for rows in (20, 12, 12)]
    packed = quant.pack([t for t, _ in parts], 32, 4)
    assert packed.rows == 44
    x = rng.standard_normal((1, 64)).astype(np.float32)
    outs = quant.qmatmul_split(mx.array(x), packed, [20, 12, 12])
    assert [o.shape for o in outs] == [(1, 20), (1, 12), (1, 12)]
    for got, (_, w) in zip(outs, parts):
        check_exact(got, x.astype(np.float64), w)


@pytest.mark.parametrize("bits", [4, 8])
def test_embedding_rows_are_exact(bits):
    rng = np.random.default_rng(bits)
    triple, w = make_weight(rng, 50, 128, bits, 64)
    packed = quant.pack([triple], 64, bits)
    ids = mx.array([[0, 49, 7], [7, 8, 9]])
    got = np.array(quant.qembed(ids, packed))
    assert got.shape == (2, 3, 128)
    np.testing.assert_array_equal(got, w[np.array(ids)].astype(np.float32))


def test_works_inside_compile():
    rng = np.random.default_rng(8)
    triple, w = make_weight(rng, 16, 64, 4, 32)
    packed = quant.pack([triple], 32, 4)

    @mx.compile
    def f(x):
        return quant.qmatmul(x * 2.0, packed) + 1.0

    x = rng.standard_normal((1, 64)).astype(np.float32)
    check_exact(np.array(f(mx.array(x))) - 1.0, 2.0 * x.astype(np.float64), w)


def test_threads_give_the_same_result():
    ext = quant.native()
    rng = np.random.default_rng(9)
    triple, _ = make_weight(rng, 256, 128, 4, 32)
    packed = quant.pack([triple], 32, 4)
    x = mx.array(rng.standard_normal((3, 128)).astype(np.float32))
    before = ext.num_threads()
    try:
        ext.set_num_threads(1)
        one = np.array(quant.qmatmul(x, packed))
        ext.set_num_threads(3)
        three = np.array(quant.qmatmul(x, packed))
    finally:
        ext.set_num_threads(before)
    np.testing.assert_array_equal(one, three)


def test_the_pool_hands_each_job_over_whole():
    """A worker preempted between two jobs once paired the old job's index with the new job's
    function (a segfault in CI): with three threads on busy cores, 300k jobs found it in most
    runs. Every index must run exactly once, under its own job."""
    ext = quant.native()
    before = ext.num_threads()
    try:
        ext.set_num_threads(3)
        assert ext.pool_check(600_000) == 0
    finally:
        ext.set_num_threads(before)


def test_bad_arguments_raise():
    rng = np.random.default_rng(10)
    triple, _ = make_weight(rng, 16, 64, 4, 32)
    packed = quant.pack([triple], 32, 4)
    ext = quant.native()
    with pytest.raises(ValueError, match="last axis"):
        quant.qmatmul(mx.zeros((1, 32)), packed)
    with pytest.raises(ValueError, match="bytes"):
        ext.qmatmul(mx.zeros((1, 64)), packed.data, 17, 64, 4)
    with pytest.raises(ValueError, match="bits"):
        ext.qmatmul(mx.zeros((1, 64)), packed.data, 16, 64, 3)
    with pytest.raises(ValueError, match="cannot repack"):
        quant.pack([mx.quantize(mx.zeros((8, 64)), group_size=64, bits=2)], 64, 2)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    out=st.integers(1, 70),
    blocks=st.integers(1, 6),
    bits=st.sampled_from([4, 8]),
)
def test_random_shapes(rows, out, blocks, bits):
    rng = np.random.default_rng(rows * 10007 + out * 101 + blocks)
    triple, w = make_weight(rng, out, 32 * blocks, bits, 32)
    x = rng.standard_normal((rows, 32 * blocks)).astype(np.float32)
    check_exact(quant.qmatmul(mx.array(x), quant.pack([triple], 32, bits)), x.astype(np.float64), w)


def test_zero_rows_of_activations():
    rng = np.random.default_rng(11)
    triple, w = make_weight(rng, 8, 64, 4, 32)
    x = np.zeros((2, 64), dtype=np.float32)
    x[1, :32] = rng.standard_normal(32)
    got = np.array(quant.qmatmul(mx.array(x), quant.pack([triple], 32, 4)))
    assert np.all(got[0] == 0)
    check_exact(got, x.astype(np.float64), w)


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantized_matrix_is_exact(bits):
    rng = np.random.default_rng(12 + bits)
    triple, w = make_weight(rng, 21, 128, bits, 128)
    got = np.array(quant.qdequant(quant.pack([triple], 128, bits)))
    np.testing.assert_array_equal(got, w.astype(np.float32))


def test_many_rows_go_through_float32_weights():
    """Prompts (≥ DENSE_FROM_ROWS rows) multiply dequantized weights with BLAS: float32-exact,
    fused norm, residual, SwiGLU and splits included."""
    rng = np.random.default_rng(13)
    rows = quant.DENSE_FROM_ROWS
    x = rng.standard_normal((1, rows, 64)).astype(np.float32)
    x64 = x.astype(np.float64)[0]
    parts = [make_weight(rng, n, 64, 4, 32) for n in (16, 8, 8)]
    qkv = quant.pack_linear_from_triples([t for t, _ in parts], 32, 4, splits=True)
    for got, (_, w) in zip(qkv.split(mx.array(x)), parts):
        np.testing.assert_allclose(np.array(got)[0], x64 @ w.T, rtol=1e-5, atol=1e-5)
    (gate, wg), (up, wu) = make_weight(rng, 16, 64, 4, 32), make_weight(rng, 16, 64, 4, 32)
    glu = quant.PackedLinear(quant.pack_glu(gate, up, 32, 4))
    norm = quant.nn.RMSNorm(64, eps=1e-5)
    norm.weight = mx.array(rng.uniform(0.5, 1.5, 64).astype(np.float32))
    res = rng.standard_normal((1, rows, 16)).astype(np.float32)
    got = np.array(glu(mx.array(x), norm, mx.array(res)))[0]
    h = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-5) * np.array(norm.weight)
    a, b = h @ wg.T, h @ wu.T
    np.testing.assert_allclose(got, res[0] + a / (1 + np.exp(-a)) * b, rtol=1e-4, atol=1e-5)


# ── decode attention (native/attention.cpp) ───────────────────────────────────────────────────


def attention64(q, k, v, mask):
    """float64 reference: scores q·kᵀ, masked -inf, softmax over keys, times v."""
    s = np.einsum("bhgd,bhtd->bhgt", q.astype(np.float64), k.astype(np.float64))
    if mask is not None:
        s = np.where(mask.reshape(s.shape[0], 1, 1, -1), s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhgt,bhtd->bhgd", p, v.astype(np.float64)), s


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from([8, 16, 64, 72, 128]),
    st.integers(1, 300),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_decode_attention_matches_float64(B, Hkv, G, D, T, masked, seed):
    """Every shape (head dims past the SIMD path's multiples of 16 too), both kernels, keys and
    values read in place from a larger cache buffer as the model does."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hkv, G, D)).astype(np.float32) / np.sqrt(D)
    buf_k = rng.standard_normal((B, Hkv, T + 7, D)).astype(np.float32)
    buf_v = rng.standard_normal((B, Hkv, T + 7, D)).astype(np.float32)
    mask = None
    if masked:  # left padding: row b hides its first pad[b] keys, never the newest one
        pad = rng.integers(0, T, B)
        mask = np.arange(T)[None] >= pad[:, None]
    ext = quant.native()
    for scalar in (False, True):
        ext.set_force_scalar(scalar)
        try:
            k, v = mx.array(buf_k)[:, :, :T], mx.array(buf_v)[:, :, :T]
            m = None if mask is None else mx.array(mask).reshape(B, 1, 1, T)
            out, scores = ext.decode_attention(mx.array(q), k, v, m)
            out, scores = np.array(out), np.array(scores)
        finally:
            ext.set_force_scalar(False)
        want_out, want_scores = attention64(q, buf_k[:, :, :T], buf_v[:, :, :T], mask)
        np.testing.assert_array_equal(np.isinf(scores), np.isinf(want_scores))
        finite = np.isfinite(want_scores)
        np.testing.assert_allclose(scores[finite], want_scores[finite], rtol=0, atol=2e-5)
        np.testing.assert_allclose(out, want_out, rtol=0, atol=2e-5)


def test_decode_attention_copies_only_what_is_not_contiguous():
    """A transposed (non-contiguous last axis) key array is copied first, with the same result."""
    rng = np.random.default_rng(1)
    q = mx.array(rng.standard_normal((1, 2, 3, 16)).astype(np.float32))
    k = rng.standard_normal((1, 2, 16, 40)).astype(np.float32)  # (…, D, T): kᵀ stored
    v = mx.array(rng.standard_normal((1, 2, 40, 16)).astype(np.float32))
    out, _ = quant.native().decode_attention(q, mx.array(k).swapaxes(-1, -2), v)
    want, _ = attention64(np.array(q), k.swapaxes(-1, -2), np.array(v), None)
    np.testing.assert_allclose(np.array(out), want, atol=2e-5)


def test_decode_attention_bad_shapes_raise():
    ext = quant.native()
    q, k = mx.zeros((1, 2, 3, 16)), mx.zeros((1, 2, 5, 16))
    with pytest.raises(ValueError, match="q must be"):
        ext.decode_attention(q[0], k, k)
    with pytest.raises(ValueError, match="disagree"):
        ext.decode_attention(q, mx.zeros((1, 3, 5, 16)), mx.zeros((1, 3, 5, 16)))
    with pytest.raises(ValueError, match="mask must hold"):
        ext.decode_attention(q, k, k, mx.ones((1, 1, 1, 4), dtype=mx.bool_))


def rope64(x, cos, sin):
    """Non-traditional RoPE in float64: halves rotated by the angles' cos and sin."""
    n = x.shape[-1] // 2
    a, b = x[..., :n], x[..., n:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


@pytest.mark.parametrize("per_row", [False, True])
def test_a_decode_step_writes_the_cache_and_attends_with_rope(per_row):
    """cache_write puts the RoPE'd key (and the value as it is) at `slot`; decode_attention rotates
    and scales the queries and reads only the first `length` positions of the buffers."""
    rng = np.random.default_rng(3)
    B, Hkv, G, D, S, slot = 2, 3, 3, 64, 48, 29
    kb = rng.standard_normal((B, Hkv, S, D)).astype(np.float32)
    vb = rng.standard_normal((B, Hkv, S, D)).astype(np.float32)
    q = rng.standard_normal((B, 1, Hkv * G * D)).astype(np.float32)
    k_new = rng.standard_normal((B, 1, Hkv * D)).astype(np.float32)
    v_new = rng.standard_normal((B, 1, Hkv * D)).astype(np.float32)
    positions = np.array([slot, slot - 5]) if per_row else np.array([slot])
    angles = positions[:, None] / (10000.0 ** (np.arange(D // 2) / (D // 2)))
    cos, sin = np.cos(angles), np.sin(angles)
    trig = [mx.array(t.astype(np.float32)) for t in (cos, sin, cos / 8, sin / 8)]
    ext = quant.native()
    keys = ext.cache_write(mx.array(kb), mx.array(k_new), slot, cos=trig[0], sin=trig[1])
    values = ext.cache_write(mx.array(vb), mx.array(v_new), slot)
    out, scores = ext.decode_attention(
        mx.array(q).reshape(B, Hkv, G, D), keys, values, length=slot + 1, cos=trig[2], sin=trig[3]
    )
    c, s = cos[:, None, :], sin[:, None, :]  # (1 or B, 1, D/2) over heads
    want_k, want_v = kb.astype(np.float64), vb.astype(np.float64)
    want_k[:, :, slot] = rope64(k_new.reshape(B, Hkv, D), c, s)
    want_v[:, :, slot] = v_new.reshape(B, Hkv, D)
    np.testing.assert_allclose(np.array(keys), want_k, atol=2e-6)
    np.testing.assert_array_equal(np.array(values), want_v.astype(np.float32))
    qr = rope64(q.reshape(B, Hkv * G, D), c, s).reshape(B, Hkv, G, D) / 8
    seen = slice(0, slot + 1)
    want_out, want_scores = attention64(qr, want_k[:, :, seen], want_v[:, :, seen], None)
    np.testing.assert_allclose(np.array(scores), want_scores, atol=2e-5)
    np.testing.assert_allclose(np.array(out), want_out, atol=2e-5)


def block_parts(rng, B=2, Hkv=3, G=3, D=64, dim=96, hidden=64, bits=4):
    """Weights and inputs of a decode block: o (dim, H·D), gate/up (hidden, dim) with SwiGLU,
    down (dim, hidden), the second norm's weight; x, q and a cache buffer pair."""
    H = Hkv * G
    o = quant.pack([make_weight(rng, dim, H * D, bits, 32)[0]], 32, bits)
    gate_up = quant.pack_glu(
        make_weight(rng, hidden, dim, bits, 32)[0], make_weight(rng, hidden, dim, bits, 32)[0],
        32, bits,
    )  # fmt: skip
    down = quant.pack([make_weight(rng, dim, hidden, bits, 32)[0]], 32, bits)
    norm = mx.array(rng.uniform(0.5, 1.5, dim).astype(np.float32))
    x = mx.array(rng.standard_normal((B, 1, dim)).astype(np.float32))
    q = mx.array(rng.standard_normal((B, 1, H * D)).astype(np.float32))
    buf = [mx.array(rng.standard_normal((B, Hkv, 40, D)).astype(np.float32)) for _ in "kv"]
    return (o, gate_up, down), norm, x, q, buf


@pytest.mark.parametrize("masked", [False, True])
def test_decode_block_is_its_operations_in_one(kernel, masked):
    """decode_block = decode_attention, then o with the residual, gate/up with the norm, down with
    its residual, each as its own operation: the same numbers exactly (keys and values read in
    place from views of larger buffers, one RoPE row per batch row, a left-padding mask)."""
    rng = np.random.default_rng(11)
    (o, gate_up, down), norm, x, q, (kb, vb) = block_parts(rng)
    B, Hkv, G, D, T = 2, 3, 3, 64, 29
    k, v = kb[:, :, :T], vb[:, :, :T]
    angles = np.array([[T - 1], [T - 4]]) / (10000.0 ** (np.arange(D // 2) / (D // 2)))
    cos, sin = (mx.array((f(angles) / 8).astype(np.float32)) for f in (np.cos, np.sin))
    mask = mx.array(np.arange(T)[None] >= np.array([[0], [3]])).reshape(B, 1, 1, T)
    mask = mask if masked else None
    ext = quant.native()
    out, scores = ext.decode_attention(
        q.reshape(B, Hkv, G, D), k, v, mask, length=T, cos=cos, sin=sin
    )
    h = quant.qmatmul(out.reshape(B, 1, -1), o, residual=x)
    want = quant.qmatmul(quant.qmatmul(h, gate_up, norm=norm, eps=1e-5), down, residual=h)
    meta = [n for p in (o, gate_up, down) for n in (p.rows, p.cols, p.bits)]
    got, got_scores = ext.decode_block(
        x, q, k, v, [o.data, gate_up.data, down.data], meta, norm, 1e-5,
        length=T, heads=Hkv * G, cos=cos, sin=sin, mask=mask,
    )  # fmt: skip
    assert got_scores.shape == (B, 1, Hkv * G, T)
    np.testing.assert_array_equal(np.array(got), np.array(want))
    np.testing.assert_array_equal(np.array(got_scores), np.array(scores).reshape(B, 1, -1, T))


def test_decode_block_bad_arguments_raise():
    rng = np.random.default_rng(12)
    (o, gate_up, down), norm, x, q, (k, v) = block_parts(rng)
    weights = [o.data, gate_up.data, down.data]
    meta = [n for p in (o, gate_up, down) for n in (p.rows, p.cols, p.bits)]
    trig = {"cos": mx.ones((1, 32)), "sin": mx.zeros((1, 32))}
    ext = quant.native()

    def call(**change):
        args = dict(x=x, q=q, k=k, v=v, weights=weights, dims=meta, norm=norm, eps=1e-5)
        args.update(length=5, heads=9, **trig)
        args.update(change)
        return ext.decode_block(**args)

    mx.eval(call())  # the arguments as given are right
    for change, message in [
        ({"weights": weights[:2]}, "give 3 packed weights"),
        ({"length": 41}, "length must be"),
        ({"heads": 8}, "multiple of Hkv"),
        ({"dims": meta[:3] + [meta[3] + 8] + meta[4:]}, "packed weights have"),
        ({"x": x[:, :, :64]}, "x must be"),
        ({"q": q[:, :, :64]}, "q must be"),
        ({"norm": norm[:5]}, "norm must be"),
        ({"mask": mx.ones((2, 1, 1, 4), dtype=mx.bool_)}, "mask must hold"),
        ({"heads": 6, "dims": [meta[0], 6 * 64] + meta[2:]}, "packed weights have"),
    ]:
        with pytest.raises(ValueError, match=message):
            call(**change)


def test_cache_write_leaves_a_buffer_someone_still_holds_unchanged():
    """The buffer is reused in place only when nothing else holds it: a held one is copied."""
    rng = np.random.default_rng(4)
    before = rng.standard_normal((1, 2, 8, 16)).astype(np.float32)
    held = mx.array(before)
    mx.eval(held)
    after = quant.native().cache_write(held, mx.ones((1, 1, 32)), 3)
    mx.eval(after)
    np.testing.assert_array_equal(np.array(held), before)  # the caller's array: untouched
    expected = before.copy()
    expected[:, :, 3] = 1.0
    np.testing.assert_array_equal(np.array(after), expected)
    view = held[:, :, 2:]  # a strided view is copied too, into a contiguous buffer
    np.testing.assert_array_equal(
        np.array(quant.native().cache_write(view, mx.zeros((32,)), 0))[:, :, 1:], before[:, :, 3:]
    )


def test_cache_write_bad_arguments_raise():
    ext = quant.native()
    buf = mx.zeros((1, 2, 8, 16))
    with pytest.raises(ValueError, match="slot must be"):
        ext.cache_write(buf, mx.zeros((32,)), 8)
    with pytest.raises(ValueError, match="B x Hkv x D"):
        ext.cache_write(buf, mx.zeros((31,)), 0)
    with pytest.raises(ValueError, match="give both cos and sin"):
        ext.cache_write(buf, mx.zeros((32,)), 0, cos=mx.zeros((1, 8)))
    with pytest.raises(ValueError, match="length must be"):
        ext.decode_attention(mx.zeros((1, 2, 1, 16)), buf, buf, length=9)
