"""Model correctness on tiny real checkpoints: parity with mlx-lm's Llama on the same weights,
cached = uncached across the cache's growth boundary, and llama3 RoPE against Meta's formula."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from checkpoints import make_tiny_checkpoint
from mlx_lm.models import cache as ref_cache
from mlx_lm.models import llama as ref_llama

from entropix_mlx.model import quant
from entropix_mlx.model.cache import KVCache
from entropix_mlx.model.llama import ModelArgs, make_ops, rope_frequencies
from entropix_mlx.model.load import load
from entropix_mlx.model.ops import CpuOps, FusedOps

FLOAT32_TOL = 1e-4  # logits are O(1–10); float32 sums in a different order differ by ~1e-6
CHECKPOINTS = {
    "f32-untied": {},
    "f32-tied": {"tie_word_embeddings": True},
    "bf16-untied": {"dtype": "bfloat16"},
    "q4g32-untied": {"quantize": (32, 4)},
    "q4g64-tied": {"quantize": (64, 4), "tie_word_embeddings": True},
    "q8g64-untied": {"quantize": (64, 8)},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: make_tiny_checkpoint(root / name, **kw) for name, kw in CHECKPOINTS.items()}


def reference_model(path: Path) -> ref_llama.Model:
    """mlx-lm's Llama on the checkpoint's own tensors (half precision cast to float32, as ours)."""
    config = json.loads((path / "config.json").read_text())
    model = ref_llama.Model(ref_llama.ModelArgs.from_dict(config))
    weights = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(mx.load(str(file)))
    weights = {k: v.astype(mx.float32) if v.dtype == mx.bfloat16 else v for k, v in weights.items()}
    weights = model.sanitize(weights)
    if "quantization" in config:
        q = config["quantization"]
        predicate = lambda p, _: f"{p}.scales" in weights
        nn.quantize(model, q["group_size"], q["bits"], class_predicate=predicate)
    model.load_weights(list(weights.items()), strict=True)
    return model


def prompt_ids(n: int, vocab: int, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(0, vocab, size=(1, n)))


def max_abs(a: mx.array, b: mx.array) -> float:
    return mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item()


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_logits_equal_mlx_lm_for_prompt_and_20_decode_steps(checkpoints, name: str) -> None:
    layout = "quantized" if "quantize" in CHECKPOINTS[name] else "auto"
    model, _, info = load(checkpoints[name], layout=layout)
    assert info.layout == ("quantized" if layout == "quantized" else "dense float32")
    reference = reference_model(checkpoints[name])
    ids = prompt_ids(80, model.args.vocab_size)  # past original_max_position_embeddings (32)

    assert max_abs(model(ids, all_logits=True).logits, reference(ids)) < FLOAT32_TOL

    ours_cache, ref_caches = model.make_cache(), [ref_cache.KVCache() for _ in model.layers]
    ours = model(ids, ours_cache).logits
    theirs = reference(ids, ref_caches)[:, -1, :]
    worst = 0.0
    for _ in range(20):
        worst = max(worst, max_abs(ours, theirs))
        token = mx.argmax(ours, axis=-1, keepdims=True)  # (1, 1)
        ours = model(token, ours_cache).logits
        theirs = reference(token, ref_caches)[:, -1, :]
    assert worst < FLOAT32_TOL, f"decode max-abs {worst:.2e}"


@pytest.mark.parametrize("name", ["q4g32-untied", "q4g64-tied", "q8g64-untied"])
def test_dense_layout_equals_quantized_layout(checkpoints, name: str) -> None:
    dense, _, dense_info = load(checkpoints[name], layout="dense")
    quantized, _, quantized_info = load(checkpoints[name], layout="quantized")
    assert (dense_info.layout, quantized_info.layout) == ("dense float32", "quantized")
    assert dense_info.params == quantized_info.params
    ids = prompt_ids(40, dense.args.vocab_size, seed=1)
    diff = max_abs(dense(ids, all_logits=True).logits, quantized(ids, all_logits=True).logits)
    assert diff < FLOAT32_TOL


@pytest.mark.parametrize("name", ["f32-untied", "q4g64-tied"])
def test_cpu_ops_path_equals_the_fused_kernel_path(checkpoints, name: str) -> None:
    """`CpuOps` (composed kernels, the one-token decode: native where `_qmv` is built, and MLX's
    operations) give the numbers of `FusedOps` (`mx.fast`'s kernels): a whole prompt, a chunk
    after a cached prefix, one-token steps across cache growth."""
    model, _, _ = load(checkpoints[name], layout="quantized" if name.startswith("q") else "auto")
    ids = prompt_ids(262, model.args.vocab_size, seed=7)
    runs = {}
    for mode in ("native", "mlx", "fused"):
        ops = make_ops(model.args, cpu=mode != "fused")
        if mode == "mlx":
            ops.native = None
        elif mode == "native":
            assert ops.native is quant.native()  # None where the extension is not built
        model.use_ops(ops)
        assert {type(m.ops) for _, m in model.named_modules() if "ops" in vars(m)} == {
            type(model.ops)
        }
        cache = model.make_cache()
        outs = [model(ids[:, :200], all_logits=True), model(ids[:, :180], cache)]
        outs.append(model(ids[:, 180:250], cache, all_logits=True))
        outs += [model(ids[:, i : i + 1], cache) for i in range(250, 262)]  # crosses 256
        runs[mode] = outs
    for ours in (runs["native"], runs["mlx"]):
        for mine, fused in zip(ours, runs["fused"], strict=True):
            assert max_abs(mine.logits, fused.logits) < FLOAT32_TOL
            assert mine.scores.shape == fused.scores.shape
            assert max_abs(mine.scores, fused.scores) < 1e-5


def test_the_backend_picks_the_ops_once_when_the_model_is_built(checkpoints) -> None:
    model, _, _ = load(checkpoints["f32-untied"])
    on_cpu = mx.default_device() == mx.cpu
    assert type(model.ops) is (CpuOps if on_cpu else FusedOps)
    assert all(layer.self_attn.ops is model.ops for layer in model.layers)
    assert model.model.norm.ops is model.ops


@pytest.fixture(scope="module")
def f32_model(checkpoints):
    model, _, _ = load(checkpoints["f32-untied"])
    return model


def test_chunked_prefill_and_decode_equal_one_full_pass_across_cache_growth(f32_model) -> None:
    model = f32_model
    ids = prompt_ids(300, model.args.vocab_size, seed=2)
    full = model(ids, all_logits=True).logits[0]  # (300, V)
    cache = model.make_cache()
    start = 0
    for size in [5, 1, 37, 128, 90] + [1] * 39:  # 261 prefilled (crosses 256), then 39 decodes
        out = model(ids[:, start : start + size], cache, all_logits=True)
        assert max_abs(out.logits[0], full[start : start + size]) < FLOAT32_TOL, f"at {start}"
        start += size
    assert start == 300 and cache[0].offset == 300 and cache[0].keys.shape[2] == 2 * KVCache.step


def test_attention_stats_cached_equal_uncached(f32_model) -> None:
    """Stats of the newest query come from the valid cache prefix only, never the unfilled tail."""
    model = f32_model
    ids = prompt_ids(260, model.args.vocab_size, seed=3)
    cache = model.make_cache()
    model(ids[:, :250], cache)
    for end in range(251, 261):
        cached = model(ids[:, end - 1 : end], cache).scores
        uncached = model(ids[:, :end]).scores
        for a, b in zip(cached, uncached, strict=True):
            assert max_abs(a, b) < FLOAT32_TOL


def test_trim_then_redecode_gives_the_same_logits(f32_model) -> None:
    model = f32_model
    ids = prompt_ids(280, model.args.vocab_size, seed=4)
    other = prompt_ids(10, model.args.vocab_size, seed=5)
    cache = model.make_cache()
    model(ids[:, :270], cache)
    first = [model(ids[:, i : i + 1], cache).logits for i in range(270, 280)]
    assert all(c.trim(10) == 10 for c in cache)
    again = [model(ids[:, i : i + 1], cache).logits for i in range(270, 280)]
    assert max(max_abs(a, b) for a, b in zip(first, again, strict=True)) == 0.0
    # Rewind and take a different branch: equals a full pass over the branched sequence.
    for c in cache:
        c.trim(10)
    branched = model(other, cache, all_logits=True).logits
    full = model(mx.concatenate([ids[:, :270], other], axis=1), all_logits=True).logits
    assert max_abs(branched, full[:, 270:]) < FLOAT32_TOL


# ---------------------------------------------------------------------------- RoPE


def meta_llama3_inv_freq(theta: float, dim: int, scaling: dict) -> np.ndarray:
    """Meta's reference `apply_scaling` (llama-models, Llama 3.1), per frequency, in float64."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    freqs = []
    for i in range(0, dim, 2):
        freq = 1.0 / theta ** (i / dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            freqs.append(freq)
        elif wavelen > old_len / low:
            freqs.append(freq / factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(freqs)


LLAMA31_8B = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
LLAMA32_1B = {**LLAMA31_8B, "factor": 32.0}
TINY = {**LLAMA31_8B, "original_max_position_embeddings": 32}


@pytest.mark.parametrize(
    "theta, head_dim, scaling",
    [(500000.0, 128, LLAMA31_8B), (500000.0, 64, LLAMA32_1B), (100.0, 8, TINY)],
)
def test_llama3_rope_periods_match_meta_formula(theta: float, head_dim: int, scaling: dict) -> None:
    args = ModelArgs(
        hidden_size=head_dim * 4,
        num_hidden_layers=1,
        intermediate_size=8,
        num_attention_heads=4,
        vocab_size=8,
        head_dim=head_dim,
        rope_theta=theta,
        rope_scaling={"rope_type": "llama3", **scaling},
    )
    expected = 1.0 / meta_llama3_inv_freq(theta, head_dim, scaling)
    periods = np.array(rope_frequencies(args)).astype(np.float64)
    np.testing.assert_allclose(periods, expected, rtol=1e-6)
    # The GGUF form (per-pair multipliers of the unscaled periods) must give the same periods.
    plain = 1.0 / meta_llama3_inv_freq(theta, head_dim, {**scaling, "factor": 1.0})
    gguf = ModelArgs(**{**vars(args), "rope_scaling": None, "rope_freq_factors": expected / plain})
    np.testing.assert_allclose(np.array(rope_frequencies(gguf)), expected, rtol=1e-6)


def test_tiny_config_exercises_all_three_llama3_bands() -> None:
    wavelens = 2 * math.pi / (1.0 / 100.0 ** (np.arange(0, 8, 2) / 8))
    assert (wavelens < 32 / 4).any() and (wavelens > 32).any()
    assert ((wavelens >= 32 / 4) & (wavelens <= 32)).any()


@pytest.mark.parametrize("path", ["mx.fast.rope", "rotation matrix"])
def test_model_rotates_queries_by_position_times_scaled_frequency(f32_model, path: str) -> None:
    """The attention's RoPE past the original context equals rotate-half in float64, both the
    prompt's kernel and the one-token decode's matrices (keys; queries also carry 1/√D)."""
    ops = make_ops(f32_model.args, cpu=True)  # it has both: mx.fast.rope and the matrices
    D = ops.head_dim
    inv_freq = meta_llama3_inv_freq(100.0, D, TINY)
    offset, L = 200, 5 if path == "mx.fast.rope" else 1
    x = np.random.default_rng(6).standard_normal((1, 2, L, D)).astype(np.float32)  # (B, H, L, D)
    if path == "mx.fast.rope":
        ours = np.array(ops.rope(mx.array(x), offset))
    else:
        rot_q, rot_k = ops.rotations(offset, mx.float32)
        ours = np.array(mx.array(x) @ rot_k)
        np.testing.assert_allclose(np.array(rot_q), np.array(rot_k) * ops.scale, rtol=1e-6)
    angles = (offset + np.arange(L))[:, None] * inv_freq[None, :]  # (L, D/2)
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., : D // 2].astype(np.float64), x[..., D // 2 :].astype(np.float64)
    expected = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
