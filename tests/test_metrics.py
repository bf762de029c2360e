"""metrics.py against independent float64 NumPy computations of ENTROPIX.md §1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropix_mlx.engine.metrics import (
    METRIC_NAMES,
    AttentionStats,
    Metrics,
    attention_metrics,
    attention_stats,
    host_metrics,
    logit_entropy,
    metrics_vector,
)
from entropix_mlx.model import llama
from entropix_mlx.model.llama import Model, ModelArgs

DATA = Path(__file__).resolve().parent / "data"
RTOL = 1e-4
# float32 cannot resolve p_top = 1 − 1e-9: near-one-hot rows carry ~1e-7 bits of absolute error.
ATOL = 1e-6


def np_logit_metrics(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = logits.astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    p, log2p = np.exp(logp), logp / math.log(2)
    h = -(p * log2p).sum(-1)
    return h, (p * (log2p + h[..., None]) ** 2).sum(-1)


# --- logit entropy / varentropy ----------------------------------------------------------------


@pytest.mark.parametrize("vocab", [49152, 128256])
@pytest.mark.parametrize("scale", [0.01, 1.0, 4.0, 12.0, 40.0])
def test_logit_metrics_match_float64_numpy(vocab: int, scale: float) -> None:
    logits = mx.random.normal((3, vocab), key=mx.random.key(vocab + int(scale * 100))) * scale
    h, v = logit_entropy(logits)
    h_ref, v_ref = np_logit_metrics(np.array(logits))
    assert h.dtype == v.dtype == mx.float32 and h.shape == v.shape == (3,)
    np.testing.assert_allclose(np.array(h), h_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.array(v), v_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("vocab", [49152, 128256])
@pytest.mark.parametrize("scale", [0.01, 1.0, 12.0, 40.0])
def test_host_logit_metrics_match_float64_numpy(vocab: int, scale: float) -> None:
    """The CPU path (NumPy float32) against the same float64 reference."""
    logits = (
        np.random.default_rng(vocab + int(scale * 100)).normal(size=vocab).astype(np.float32)
        * scale
    )
    scores = np.zeros((2, 3, 5), np.float32)
    m = host_metrics(logits, scores)
    h, v = np_logit_metrics(logits)
    assert m.entropy == pytest.approx(h, rel=RTOL, abs=ATOL)
    assert m.varentropy == pytest.approx(v, rel=RTOL, abs=ATOL)
    assert m.attn_entropy == pytest.approx(math.log2(5)) and m.agreement == 0.0


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_half_precision_logits_are_computed_in_float32(dtype: mx.Dtype) -> None:
    logits = (mx.random.normal((2, 128256), key=mx.random.key(7)) * 3).astype(dtype)
    h, v = logit_entropy(logits)
    # The reference is the exact value of the half-precision inputs, not of some float32 original.
    h_ref, v_ref = np_logit_metrics(np.array(logits.astype(mx.float32)))
    assert h.dtype == mx.float32 and v.dtype == mx.float32
    np.testing.assert_allclose(np.array(h), h_ref, rtol=RTOL)
    np.testing.assert_allclose(np.array(v), v_ref, rtol=RTOL)


@pytest.mark.parametrize("name", ["capital", "code", "raw_text", "robot", "sys_math"])
def test_real_llama_cpp_logits_match_recorded_metrics(name: str) -> None:
    """SmolLM2 first-step logits from llama.cpp, with H and V computed there in float64."""
    logits = np.load(DATA / "smollm2" / f"{name}.first_logits.npy")
    step = json.loads((DATA / "smollm2" / f"{name}.json").read_text())["steps"][0]
    h, v = logit_entropy(mx.array(logits)[None])
    assert h.item() == pytest.approx(step["entropy"], rel=RTOL)
    assert v.item() == pytest.approx(step["varentropy"], rel=RTOL)


# Logits on a 1/64 grid and integer shifts: x + c is exact in float32, so shifting is a pure test.
grid_logits = st.lists(st.integers(-3200, 3200), min_size=1, max_size=200).map(
    lambda xs: np.array(xs, dtype=np.float32) / 64
)


@settings(max_examples=60, deadline=None)
@given(grid_logits, st.integers(-1000, 1000))
def test_entropy_is_nonnegative_and_shift_invariant(x: np.ndarray, c: int) -> None:
    h, v = logit_entropy(mx.array(x))
    h2, v2 = logit_entropy(mx.array(x + np.float32(c)))
    assert h.item() >= 0 and v.item() >= 0
    assert h.item() <= math.log2(len(x)) + 1e-5
    assert h2.item() == pytest.approx(h.item(), abs=1e-6)
    assert v2.item() == pytest.approx(v.item(), abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200_000), st.floats(-100, 100))
def test_uniform_gives_log2_n_and_zero_varentropy(n: int, level: float) -> None:
    h, v = logit_entropy(mx.full((n,), level))
    assert h.item() == pytest.approx(math.log2(n), rel=1e-5, abs=1e-6)
    assert v.item() == pytest.approx(0.0, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 100_000), st.integers(0, 99_999), st.floats(200, 1e4))
def test_one_hot_gives_zero_and_zero(n: int, hot: int, gap: float) -> None:
    x = mx.zeros((n,)).at[hot % n].add(gap)
    h, v = logit_entropy(x)
    assert h.item() == pytest.approx(0.0, abs=1e-6)
    assert v.item() == pytest.approx(0.0, abs=1e-6)


def test_masked_tokens_contribute_nothing() -> None:
    h, v = logit_entropy(mx.array([0.0, 0.0, -math.inf, 0.0, 0.0, -math.inf]))
    assert h.item() == pytest.approx(2.0) and v.item() == pytest.approx(0.0, abs=1e-7)


# --- attention metrics ----------------------------------------------------------------------


def test_attention_reductions_by_hand() -> None:
    stats = AttentionStats(
        entropy=mx.array([[[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]]]),  # (1, 3 layers, 2 heads)
        agreement=mx.array([[0.1, 0.2, 0.6]]),
        interaction=mx.array([[1.0, 2.0, 6.0]]),
    )
    ent, var, agr, inter = (a.item() for a in attention_metrics(stats, "all"))
    # Population variance over heads per layer: 1, 0, 4 (sample variance would give 2, 0, 8).
    assert (ent, var) == pytest.approx((2.0, 5 / 3))
    assert (agr, inter) == pytest.approx((0.3, 3.0))
    ent, var, agr, inter = (a.item() for a in attention_metrics(stats, "last"))
    assert (ent, var, agr, inter) == pytest.approx((2.0, 4.0, 0.6, 6.0))
    with pytest.raises(ValueError, match="'first'.*all, last"):
        attention_metrics(stats, "first")


def _np_rope(x: np.ndarray, positions: np.ndarray, periods: np.ndarray) -> np.ndarray:
    """Non-traditional (split-half) RoPE on (T, heads, D) in float64."""
    half = x.shape[-1] // 2
    angle = positions[:, None, None] / periods[None, None, :]  # (T, 1, D/2)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate(
        [x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], -1
    )


def _np_layer_stats(attn: llama.Attention, xs: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Head entropies, agreement and interaction of the last query of (T, dim) normed inputs."""
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    weight = lambda proj: np.array(proj.weight).astype(np.float64)
    periods = np.array(attn.ops.periods).astype(np.float64)
    T = xs.shape[0]
    positions = np.arange(T, dtype=np.float64)
    q = _np_rope((xs[-1:] @ weight(attn.q_proj).T).reshape(1, H, D), positions[-1:], periods)[0]
    k = _np_rope((xs @ weight(attn.k_proj).T).reshape(T, Hkv, D), positions, periods)
    k = np.repeat(k, H // Hkv, axis=1)  # (T, H, D): query head h reads kv head h // G
    s = np.einsum("hd,thd->ht", q, k) / math.sqrt(D)  # (H, T) over the valid positions only
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -(p * np.log2(p)).sum(-1)
    agreement = np.abs(p - p.mean(0, keepdims=True)).mean()
    return entropy, agreement, np.abs(s).mean()


def _np_attention_metrics(layers: list[tuple[np.ndarray, float, float]]) -> np.ndarray:
    A = np.stack([e for e, _, _ in layers])  # (layers, H)
    return np.array(
        [
            A.mean(),
            A.var(axis=1).mean(),
            np.mean([a for _, a, _ in layers]),
            np.mean([s for *_, s in layers]),
        ]
    )


@pytest.fixture(scope="module")
def tiny_model() -> Model:
    mx.random.seed(11)
    model = Model(
        ModelArgs(
            hidden_size=64,
            num_hidden_layers=3,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=100,
        )
    )
    for i, layer in enumerate(model.layers):
        # Sharper queries so the heads differ: near-uniform attention would hide mistakes.
        layer.self_attn.q_proj.weight = layer.self_attn.q_proj.weight * (4.0 + 4.0 * i)
    mx.eval(model.parameters())
    return model


@pytest.mark.parametrize("prompt_len", [37, 256])  # 256: the decode step grows the buffer to 512
def test_attention_metrics_match_recomputation_from_the_real_model(
    tiny_model: Model, prompt_len: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs: dict[int, list[np.ndarray]] = {}  # layer → normed inputs of each call, (L, dim)

    def recording(method):
        def record(self, x, *args):
            inputs.setdefault(id(self), []).append(np.array(x[0]).astype(np.float64))
            return method(self, x, *args)

        return record

    monkeypatch.setattr(llama.Attention, "__call__", recording(llama.Attention.__call__))
    prompt = mx.random.randint(0, 100, (1, prompt_len), key=mx.random.key(prompt_len))
    cache = tiny_model.make_cache()
    steps = [tiny_model(prompt, cache)]
    steps.append(tiny_model(mx.array([[7]]), cache))
    assert cache[0].offset == prompt_len + 1 and cache[0].offset % 256 != 0
    assert cache[0].keys.shape[2] % 256 == 0  # the preallocated buffer holds empty slots

    for n_step, out in enumerate(steps):
        per_layer = []
        for layer in tiny_model.layers:
            xs = np.concatenate(inputs[id(layer.self_attn)][: n_step + 1])  # (T, dim)
            per_layer.append(_np_layer_stats(layer.self_attn, xs))
        T = prompt_len + n_step
        # Entropy over T valid keys is at most log2 T; zero-filled slots would break the bound.
        assert out.scores.shape == (1, len(tiny_model.layers), 4, T)  # valid keys only
        stats = attention_stats(out.scores)
        assert np.array(stats.entropy).max() <= math.log2(T) + 1e-4
        for layers, chosen in (("all", per_layer), ("last", per_layer[-1:])):
            expected = _np_attention_metrics(chosen)
            got = np.array(mx.stack(attention_metrics(stats, layers), -1))[0]
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-7)
            vec = np.array(metrics_vector(out.logits, out.scores, layers))[0]
            np.testing.assert_allclose(vec[2:], got, rtol=1e-6)
            host = host_metrics(np.array(out.logits[0]), np.array(out.scores[0]), layers)
            np.testing.assert_allclose(
                list(host.as_dict().values())[2:], expected, rtol=RTOL, atol=1e-7
            )
            np.testing.assert_allclose(
                list(host.as_dict().values())[:2], vec[:2], rtol=RTOL, atol=ATOL
            )


# --- the (B, 6) vector and its host form ----------------------------------------------------


def test_metrics_vector_stacks_in_name_order() -> None:
    logits = mx.random.normal((2, 500), key=mx.random.key(3)) * 2
    stats = AttentionStats(
        entropy=mx.random.uniform(shape=(2, 4, 8), key=mx.random.key(4)) * 5,
        agreement=mx.random.uniform(shape=(2, 4), key=mx.random.key(5)),
        interaction=mx.random.uniform(shape=(2, 4), key=mx.random.key(6)) * 9,
    )
    vec = metrics_vector(logits, stats)
    assert vec.shape == (2, 6) and vec.dtype == mx.float32
    expected = mx.stack([*logit_entropy(logits), *attention_metrics(stats)], -1)
    np.testing.assert_array_equal(np.array(vec), np.array(expected))
    rows = vec.tolist()  # the one host transfer
    m = Metrics.from_values(rows[1])
    assert tuple(m.as_dict()) == METRIC_NAMES
    assert list(m.as_dict().values()) == pytest.approx(rows[1])
    with pytest.raises(ValueError, match="6 values"):
        Metrics.from_values(rows[1][:5])
