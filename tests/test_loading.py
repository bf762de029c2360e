"""The loader: GGUF and HF folders into our Model, layouts, model lookup by name, and one-line
errors that name the file and what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from checkpoints import _llama_cpp_permute, make_tiny_checkpoint, make_tiny_gguf
from conftest import DATA
from mlx.utils import tree_flatten

from entropix_mlx.errors import ModelLoadError
from entropix_mlx.model import gguf, paths, quant
from entropix_mlx.model import load as loading
from entropix_mlx.model.gguf import translate_weight_names
from entropix_mlx.model.load import list_models, load
from entropix_mlx.model.paths import resolve_model

CAPITAL = json.loads((DATA / "smollm2" / "capital.json").read_text())


def max_abs(a: mx.array, b: mx.array) -> float:
    return mx.abs(a - b).max().item()


def ids(n: int, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(0, 300, size=(1, n)))


def load_weights_only(path: Path, layout: str = "auto"):
    """The loader's weight path without a tokenizer (the tiny GGUFs carry no vocabulary)."""
    return loading._build(loading._read_checkpoint(path), layout, path)[0]


# ---------------------------------------------------------------------------- SmolLM2 GGUF


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> dict:
    return {layout: load(smollm2_gguf, layout=layout) for layout in ("dense", "quantized")}


def test_smollm2_gguf_args_and_info(smollm2) -> None:
    model, _, info = smollm2["dense"]
    a = model.args
    assert (a.num_hidden_layers, a.num_attention_heads, a.num_key_value_heads) == (30, 9, 3)
    assert (a.hidden_size, a.head_dim, a.intermediate_size, a.vocab_size) == (576, 64, 1536, 49152)
    assert a.tie_word_embeddings and a.rope_theta == 100000.0 and a.rope_freq_factors is None
    assert a.rms_norm_eps == pytest.approx(1e-5)
    assert not hasattr(model, "lm_head")
    assert info.name == "SmolLM2-135M-Instruct.Q4_1" and info.arch == "llama"
    assert info.quantization == "Q4_1 (GGUF)" and info.context_length == 8192
    assert 134_000_000 < info.params < 135_000_000  # tied: the embedding is counted once
    assert info.size_bytes == info.path.stat().st_size and info.device == "cpu"
    assert (info.layout, smollm2["quantized"][2].layout) == ("dense float32", "quantized")


def test_smollm2_first_greedy_token_in_both_layouts(smollm2) -> None:
    prompt = mx.array([CAPITAL["prompt_ids"]])
    logits = {k: model(prompt).logits[0] for k, (model, _, _) in smollm2.items()}
    for layout, row in logits.items():
        assert mx.argmax(row).item() == CAPITAL["greedy_ids"][0] == 504, layout
    # Same dequantized values; only the summation order differs (BLAS vs the quantized kernel).
    assert max_abs(logits["dense"], logits["quantized"]) < 5e-3


def test_smollm2_greedy_continuation_is_the_reference_sentence(smollm2) -> None:
    model, _, _ = smollm2["dense"]
    cache = model.make_cache()
    out = model(mx.array([CAPITAL["prompt_ids"]]), cache)
    greedy = []
    for _ in CAPITAL["greedy_ids"]:
        greedy.append(mx.argmax(out.logits[0]).item())
        out = model(mx.array([greedy[-1:]]), cache)
    assert greedy == CAPITAL["greedy_ids"]  # "The capital of France is Paris."


# ---------------------------------------------------------------------------- GGUF weight path


def test_translate_weight_names() -> None:
    cases = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.scales": "lm_head.scales",
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.12.attn_k.biases": "model.layers.12.self_attn.k_proj.biases",
        "blk.1.attn_v.weight": "model.layers.1.self_attn.v_proj.weight",
        "blk.1.attn_output.weight": "model.layers.1.self_attn.o_proj.weight",
        "blk.2.ffn_gate.scales": "model.layers.2.mlp.gate_proj.scales",
        "blk.2.ffn_up.weight": "model.layers.2.mlp.up_proj.weight",
        "blk.2.ffn_down.weight": "model.layers.2.mlp.down_proj.weight",
        "blk.3.attn_norm.weight": "model.layers.3.input_layernorm.weight",
        "blk.3.ffn_norm.weight": "model.layers.3.post_attention_layernorm.weight",
        "blk.3.attn_rot_embd.weight": "blk.3.attn_rot_embd.weight",  # unknown: left for strict load
    }
    assert {k: translate_weight_names(k) for k in cases} == cases


def test_unpermute_inverts_llama_cpp_permute_on_rows() -> None:
    w = mx.arange(6 * 8 * 5).reshape(6 * 8, 5)  # 6 heads of dim 8, 5 columns (or groups)
    assert mx.array_equal(gguf._unpermute_rows(_llama_cpp_permute(w, 6), 6), w)


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_of_a_tiny_checkpoint_equals_the_folder(tmp_path: Path, tied: bool) -> None:
    """llama.cpp's layout (permuted Q/K rows, rope_freqs for llama3, GGUF names) round-trips."""
    folder = make_tiny_checkpoint(tmp_path / "hf", tie_word_embeddings=tied)
    gguf = make_tiny_gguf(tmp_path / "tiny.gguf", folder)
    from_folder, _, _ = load(folder)
    from_gguf = load_weights_only(gguf)
    assert from_gguf.args.tie_word_embeddings is tied
    assert from_gguf.args.rope_freq_factors is not None and from_gguf.args.rope_scaling is None
    x = ids(60)
    assert (
        max_abs(from_gguf(x, all_logits=True).logits, from_folder(x, all_logits=True).logits) < 1e-4
    )


# ---------------------------------------------------------------------------- HF folders


def test_folder_info_params_and_dtypes(tmp_path: Path) -> None:
    f32, _, info = load(make_tiny_checkpoint(tmp_path / "f32"))
    expected = sum(v.size for _, v in tree_flatten(f32.parameters()))
    assert (info.params, info.quantization, info.layout) == (expected, "float32", "dense float32")
    _, _, info16 = load(make_tiny_checkpoint(tmp_path / "f16", dtype="float16"))
    assert (info16.params, info16.quantization, info16.layout) == (
        expected,
        "float16",
        "dense float32",
    )
    _, _, q = load(make_tiny_checkpoint(tmp_path / "q", quantize=(32, 4)), layout="quantized")
    assert (q.params, q.quantization, q.layout) == (expected, "4-bit g32 (MLX)", "quantized")
    assert q.size_bytes < info.size_bytes / 4


def test_sharded_safetensors_equal_one_file(tmp_path: Path) -> None:
    one, _, _ = load(make_tiny_checkpoint(tmp_path / "one"))
    three, _, info = load(make_tiny_checkpoint(tmp_path / "three", shards=3))
    assert len(list(info.path.glob("model-*-of-00003.safetensors"))) == 3
    x = ids(20)
    assert max_abs(one(x).logits, three(x).logits) == 0.0


def test_auto_layout_follows_the_dense_budget(tmp_path: Path, monkeypatch) -> None:
    """Without the quantized CPU kernels (no compiler at install): dense float32 within the
    budget, MLX's quantized layers past it, and a one-line notice saying why."""
    monkeypatch.setattr(quant, "_load_native", lambda: "no C++ compiler")
    folder = make_tiny_checkpoint(tmp_path / "q", quantize=(64, 4))
    info = load(folder)[2]
    assert info.layout == "dense float32"
    assert "no C++ compiler" in info.notice and "dense float32" in info.notice
    with pytest.raises(ModelLoadError, match="no C.. compiler"):
        load(folder, layout="packed")
    monkeypatch.setenv(loading.BUDGET_ENV, "0")
    assert load(folder)[2].layout == "quantized"
    monkeypatch.setenv(loading.BUDGET_ENV, "lots")
    with pytest.raises(ModelLoadError, match=loading.BUDGET_ENV):
        load(folder)


def test_dense_budget_defaults_to_half_the_memory_and_env_overrides(monkeypatch) -> None:
    """The 4 GiB of old sent a 1B model (~4.6 GiB as float32) to the slow quantized CPU path."""
    monkeypatch.delenv(loading.BUDGET_ENV, raising=False)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert loading.dense_budget_bytes() == physical / 2
    monkeypatch.setenv(loading.BUDGET_ENV, "1.5")
    assert loading.dense_budget_bytes() == 1.5 * 2**30
    monkeypatch.delenv(loading.BUDGET_ENV)
    monkeypatch.delattr(os, "sysconf")
    assert loading.dense_budget_bytes() == loading.FALLBACK_DENSE_BUDGET_GB * 2**30


def test_progress_callback_and_bad_layout(tmp_path: Path) -> None:
    folder = make_tiny_checkpoint(tmp_path / "m")
    seen: list[tuple[str, float]] = []
    load(folder, progress=lambda stage, fraction: seen.append((stage, fraction)))
    assert [s for s, _ in seen] == ["reading", "building", "done"]
    assert [f for _, f in seen] == sorted(f for _, f in seen) and seen[-1][1] == 1.0
    with pytest.raises(ValueError, match="'fast'"):
        load(folder, layout="fast")


# ---------------------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nope.gguf: no such file"):
        load(tmp_path / "nope.gguf")


def test_text_file_named_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_text("hello, I am not a model\n")
    with pytest.raises(ModelLoadError, match="fake.gguf: not a GGUF file"):
        load(fake)


def test_tokenizer_file_is_not_a_model(tmp_path: Path) -> None:
    folder = make_tiny_checkpoint(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="tokenizer.json: a tokenizer file, not a model"):
        load(folder / "tokenizer.json")


def test_folder_without_config_or_weights(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="empty: folder has no config.json"):
        load(tmp_path / "empty")
    folder = make_tiny_checkpoint(tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="noweights: no .*safetensors"):
        load(folder)


def test_unsupported_model_type_and_architecture(tmp_path: Path) -> None:
    folder = make_tiny_checkpoint(tmp_path / "m", config_overrides={"model_type": "qwen2"})
    with pytest.raises(ModelLoadError, match="m: model_type 'qwen2' is not supported"):
        load(folder)
    gguf = make_tiny_gguf(
        tmp_path / "gpt2.gguf", make_tiny_checkpoint(tmp_path / "ok"), architecture="gpt2"
    )
    with pytest.raises(ModelLoadError, match="gpt2.gguf: architecture 'gpt2' is not supported"):
        load(gguf)


def test_unsupported_gguf_tensor_type(tmp_path: Path) -> None:
    extra = {"blk.0.attn_q.extra": mx.zeros((4, 4), dtype=mx.int32)}
    gguf = make_tiny_gguf(
        tmp_path / "odd.gguf", make_tiny_checkpoint(tmp_path / "m"), extra_tensors=extra
    )
    with pytest.raises(
        ModelLoadError,
        match=r"odd.gguf: unsupported tensor type \(blk.0.attn_q.extra is I32\); use",
    ):
        load(gguf)


def test_missing_and_unexpected_weights_are_named(tmp_path: Path) -> None:
    folder = make_tiny_checkpoint(tmp_path / "m", quantize=(64, 4))
    weights = mx.load(str(folder / "model.safetensors"))
    weights.pop("model.layers.1.input_layernorm.weight")
    weights["model.layers.1.mlp.extra.weight"] = mx.zeros((2,))
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    with pytest.raises(
        ModelLoadError,
        match=r"m: .*missing model\.layers\.1\.input_layernorm\.weight; "
        r"unexpected model\.layers\.1\.mlp\.extra\.weight",
    ):
        load(folder, layout="quantized")


def test_non_mlx_quantization_is_refused(tmp_path: Path) -> None:
    overrides = {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    folder = make_tiny_checkpoint(tmp_path / "m", config_overrides=overrides)
    with pytest.raises(ModelLoadError, match="m: gptq quantization is not supported"):
        load(folder)


# ---------------------------------------------------------------------------- finding models


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    make_tiny_checkpoint(root / "Tiny-Llama-A")
    make_tiny_checkpoint(root / "Tiny-Llama-B-4bit", quantize=(64, 4))
    make_tiny_gguf(root / "Mini.F32.gguf", root / "Tiny-Llama-A")
    (root / "README.md").write_text("not a model")
    monkeypatch.setenv(paths.MODELS_DIR_ENV, str(root))
    return root


def test_resolve_by_name_prefix_and_path(models_dir: Path) -> None:
    assert resolve_model("Tiny-Llama-A") == models_dir / "Tiny-Llama-A"
    assert (
        resolve_model("Mini.F32") == resolve_model("Mini.F32.gguf") == models_dir / "Mini.F32.gguf"
    )
    assert resolve_model("tiny-llama-b") == models_dir / "Tiny-Llama-B-4bit"  # unique prefix
    assert resolve_model(models_dir / "Tiny-Llama-A") == models_dir / "Tiny-Llama-A"
    with pytest.raises(
        ModelLoadError, match="'tiny' is ambiguous.*Tiny-Llama-A, Tiny-Llama-B-4bit"
    ):
        resolve_model("tiny")
    with pytest.raises(
        ModelLoadError, match="'llama-9' is not a path or a model name.*has: .*Mini.F32.gguf"
    ):
        resolve_model("llama-9")


def test_default_model_prefers_models_dir(models_dir: Path, smollm2_gguf: Path) -> None:
    assert resolve_model(None) == paths.default_model_path()
    local = models_dir / paths.DEFAULT_MODEL
    local.symlink_to(smollm2_gguf)
    assert resolve_model(None) == local


def test_list_models_reads_headers_only(models_dir: Path) -> None:
    (models_dir / "broken.gguf").write_text("not gguf")
    found = {m.name: m for m in list_models(models_dir)}
    assert set(found) == {"Tiny-Llama-A", "Tiny-Llama-B-4bit", "Mini.F32", "broken"}
    a, b, g = found["Tiny-Llama-A"], found["Tiny-Llama-B-4bit"], found["Mini.F32"]
    assert (a.arch, a.quantization, a.context_length, a.error) == ("llama", "float32", 1024, None)
    assert b.quantization == "4-bit g64 (MLX)" and b.params == a.params
    assert (g.quantization, g.params) == ("F32 (GGUF)", a.params)
    assert found["broken"].error and "broken.gguf" in found["broken"].error


# ---------------------------------------------------------------------------- BLAS preload


def _preload_in_subprocess(env: dict[str, str], code: str = "") -> str:
    script = (
        f"import sys; {code}from entropix_mlx.model import backend; "
        "print(backend.preload_blas()); print('mlx' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS preload is Linux-only")
def test_blas_preload_never_raises_and_never_imports_mlx() -> None:
    assert (
        _preload_in_subprocess({"ENTROPIX_BLAS": "none"})
        == "disabled (ENTROPIX_BLAS=none)\nFalse\n"
    )
    bad = _preload_in_subprocess({"ENTROPIX_BLAS": "/nonexistent/libblas.so"})
    assert bad.startswith(
        "reference BLAS (ENTROPIX_BLAS=/nonexistent/libblas.so failed"
    ) and bad.endswith("False\n")
    late = _preload_in_subprocess({"ENTROPIX_BLAS": ""}, code="import mlx.core; ")
    assert late.startswith("reference BLAS (mlx.core was imported before entropix_mlx;")
