"""The packed layout (quantized weights on the CPU kernels, model/quant.py) against dense float32.

Decoding and short prompts run the int8 kernels with two activation levels; prompts of
DENSE_FROM_ROWS+ rows go through float32 weights dequantized per layer. Measured on the default
model (5 prompts, 32 greedy steps each, teacher-forced on the dense path's tokens): no argmax
differs, logits within 0.008 of dense, metrics within: entropy 0.0025 bits, varentropy 0.0034,
attention entropy / varentropy 3e-5, agreement 1e-6, interaction strength 6e-5. The tolerances
below are ~4x those.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from checkpoints import make_tiny_checkpoint
from conftest import DATA

from entropix_mlx.engine.generate import prefill
from entropix_mlx.engine.metrics import METRIC_NAMES, step_metrics
from entropix_mlx.model import quant
from entropix_mlx.model.cache import BatchKVCache
from entropix_mlx.model.load import load
from entropix_mlx.model.ops import FusedOps
from entropix_mlx.model.quant import PackedEmbedding, PackedLinear

pytestmark = pytest.mark.skipif(quant.native() is None, reason=str(quant.native_error()))

PROMPTS = ["capital", "code", "raw_text", "robot", "sys_math"]
NEAR_TIE = 0.05  # below this top-2 gap of the dense logits an argmax may differ
METRIC_TOL = {
    "entropy": 0.01,
    "varentropy": 0.015,
    "attn_entropy": 2e-4,
    "attn_varentropy": 2e-4,
    "agreement": 1e-5,
    "interaction_strength": 3e-4,
}
LOGIT_TOL = 0.03


def _value(metrics, name: str) -> float:
    return float(np.asarray(getattr(metrics, name)).ravel()[0])


@pytest.fixture(scope="module")
def both(smollm2_gguf: Path):
    return load(smollm2_gguf, layout="dense")[0], load(smollm2_gguf, layout="packed")


@pytest.mark.slow
def test_default_model_packs_to_its_file_size(both) -> None:
    _, (model, _, info) = both
    assert info.layout.startswith("packed")
    # Q4_1 repacked is Q4_1's size; the Q8_0 embedding gains a float16 bias per 32 values.
    assert info.resident_bytes <= 1.05 * info.size_bytes
    kinds = {type(m) for _, m in model.named_modules()}
    assert PackedLinear in kinds and PackedEmbedding in kinds
    assert not any("Quantized" in k.__name__ for k in kinds)


@pytest.mark.slow
@pytest.mark.parametrize("name", PROMPTS)
def test_decoding_follows_dense_float32(both, name: str) -> None:
    """Teacher-forced on the dense path's greedy tokens: same argmax (unless a near tie), logits
    and all six metrics within the tolerances measured above."""
    dense, (packed, _, _) = both
    ids = json.loads((DATA / "smollm2" / f"{name}.json").read_text())["prompt_ids"]
    cd, cp = dense.make_cache(), packed.make_cache()
    od, op = prefill(dense, ids, cd), prefill(packed, ids, cp)
    for step in range(16):
        ld, lp = np.array(od.logits[0]), np.array(op.logits[0])
        assert np.abs(ld - lp).max() < LOGIT_TOL, f"step {step}"
        top2 = np.sort(ld)[-2:]
        if top2[1] - top2[0] >= NEAR_TIE:
            assert lp.argmax() == ld.argmax(), f"step {step}"
        md, mp = step_metrics(od.logits, od.scores), step_metrics(op.logits, op.scores)
        for metric in METRIC_NAMES:
            diff = abs(_value(md, metric) - _value(mp, metric))
            assert diff < METRIC_TOL[metric], f"step {step} {metric}: {diff}"
        token = mx.array([[int(ld.argmax())]])
        od, op = dense(token, cd), packed(token, cp)


# A short prompt runs on the kernels, a long one on dequantized float32 weights; decoding runs on
# the kernels after either (int8 activations: logits up to ~1e-3 off dense at |logit| ~10).
@pytest.mark.parametrize("prompt", [quant.DENSE_FROM_ROWS - 1, quant.DENSE_FROM_ROWS])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("quantize", [(32, 4), (64, 8), (64, 4)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tiny_checkpoints_pack_and_match_dense(
    tmp_path: Path, quantize, tied, dtype, prompt: int
) -> None:
    """MLX-quantized folders (scales in the model's dtype, as mlx-lm saves them)."""
    folder = make_tiny_checkpoint(
        tmp_path / "q", quantize=quantize, tie_word_embeddings=tied, dtype=dtype
    )
    dense, _, _ = load(folder, layout="dense")
    packed, _, info = load(folder, layout="packed")
    assert info.layout.startswith("packed") and packed.packed
    ids = mx.array(np.random.default_rng(prompt).integers(1, 10, (1, prompt)))
    cd, cp = dense.make_cache(), packed.make_cache()
    for token in (None, 4, 8, 1):  # the prompt, then decoding
        x = ids if token is None else mx.array([[token]])
        a, b = dense(x, cd), packed(x, cp)
        assert mx.abs(a.logits - b.logits).max().item() < 2e-3
        assert mx.abs(a.scores - b.scores).max().item() < 2e-3


def test_short_prompt_on_the_kernels_equals_stepwise_decoding(tmp_path: Path) -> None:
    """A short prompt (< DENSE_FROM_ROWS rows) runs on the int8 kernels too; its cache and logits
    agree with feeding the same tokens one by one."""
    folder = make_tiny_checkpoint(tmp_path / "q", quantize=(32, 4))
    model, _, _ = load(folder, layout="packed")
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    whole = model(mx.array([ids]), model.make_cache())
    cache = model.make_cache()
    for t in ids:
        step = model(mx.array([[t]]), cache)
    # The two paths round differently (the prompt's RoPE and attention in MLX, a step's in the
    # native kernel), and the int8 activations turn float32 rounding into up to ~1e-4 here
    # (measured 8e-5 with MLX's RoPE in both, 1.1e-4 with the kernel's); logits are ~1.
    assert mx.abs(whole.logits - step.logits).max().item() < 2e-4


def test_float_checkpoint_stays_dense_in_packed_layout(tmp_path: Path) -> None:
    folder = make_tiny_checkpoint(tmp_path / "f")
    model, _, info = load(folder, layout="packed")
    assert info.layout == "dense float32" and not model.packed


def _graph(out) -> str:
    dot = io.StringIO()
    mx.export_to_dot(dot, out.logits, out.scores)
    return dot.getvalue()


def test_decode_steps_in_blocks_equal_the_blocks_operation_by_operation(tmp_path: Path) -> None:
    """`CpuOps.block_step` (qkv, two cache writes, `decode_block`: 4 operations a layer) against
    the same packed blocks one operation at a time: identical logits and scores over a batch with
    left padding, steps across the cache's growth at 256."""
    folder = make_tiny_checkpoint(tmp_path / "q", quantize=(32, 4))
    model, _, _ = load(folder, layout="packed")
    ids = mx.array(np.random.default_rng(4).integers(1, 10, (2, 262)))
    runs = {}
    for mode in ("block", "operations"):
        if mode == "operations":
            model.ops.block_step = FusedOps.block_step.__get__(model.ops)  # always None
        cache = [BatchKVCache([0, 3]) for _ in model.layers]  # row 1: 3 tokens of padding
        outs = [model(ids[:, :250], cache)]
        for i in range(250, 262):
            outs.append(model(ids[:, i : i + 1], cache))
            assert ("EntropixDecodeBlock" in _graph(outs[-1])) == (mode == "block")
        runs[mode] = [(np.array(o.logits), np.array(o.scores)) for o in outs]
    for (a_logits, a_scores), (b_logits, b_scores) in zip(*runs.values(), strict=True):
        np.testing.assert_array_equal(a_logits, b_logits)
        np.testing.assert_array_equal(a_scores, b_scores)
