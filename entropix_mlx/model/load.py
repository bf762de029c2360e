"""Load a model (a path, a name under models/, or the default: see `paths`) into our `Model`.

Two on-disk forms: a GGUF file (F32/F16/Q4_0/Q4_1/Q8_0 tensors) and a Hugging Face /
mlx-community folder (config.json + safetensors: fp32/fp16/bf16 or MLX-quantized). Both become
HF-named weights plus, per quantized module, its (group_size, bits) — a `Checkpoint`, read by
`gguf.py` or here; one builder then picks the weight layout and loads them strictly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import ModelLoadError
from . import backend, quant
from .checkpoint import SUPPORTED_HINT, Checkpoint, quantized_modules
from .gguf import describe_gguf, is_gguf, read_gguf
from .llama import Model, ModelArgs
from .paths import resolve_model, selectable_models

if TYPE_CHECKING:
    from ..tokenize.tokenizer import Tokenizer

BUDGET_ENV = "ENTROPIX_DENSE_BUDGET_GB"
FALLBACK_DENSE_BUDGET_GB = 4.0  # where the physical memory size cannot be read
LAYOUTS = ("auto", "dense", "quantized", "packed")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    arch: str
    params: int
    quantization: str  # "Q4_1 (GGUF)", "4-bit g64 (MLX)", "float16", …
    layout: str  # "packed (avx2 · 2 threads)" | "dense float32" | "quantized" | "dense float16"
    context_length: int
    device: str  # "cpu" | "gpu"
    blas: str
    size_bytes: int
    load_seconds: float
    resident_bytes: int = 0  # the weights in memory
    notice: str | None = None  # e.g. why quantized weights could not stay quantized on the CPU


@dataclass(frozen=True)
class ModelSummary:
    """What `entropix models` lists, read from headers and config only (no weights)."""

    name: str
    path: Path
    arch: str
    params: int
    quantization: str
    context_length: int
    size_bytes: int
    error: str | None = None


# ---------------------------------------------------------------------------- HF / mlx-community


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.exists():
        raise ModelLoadError(
            f"{path}: folder has no config.json; pass a .gguf or an HF/MLX model folder"
        )
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{file}: unreadable config ({err})") from None
    model_type = config.get("model_type")
    if model_type != "llama":
        raise ModelLoadError(
            f"{path.name}: model_type {model_type!r} is not supported (only 'llama')"
        )
    return config


def _safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weights in the folder")
    return files


def _mlx_quantization(config: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """mlx-lm's `quantization` block; other schemes (GPTQ, AWQ, bitsandbytes, mxfp4) are refused."""
    quantization = config.get("quantization")
    if quantization is None:
        other = config.get("quantization_config")
        if other:
            method = other.get("quant_method", "unknown")
            raise ModelLoadError(
                f"{path.name}: {method} quantization is not supported; {SUPPORTED_HINT}"
            )
        return None
    if quantization.get("mode", "affine") != "affine":
        raise ModelLoadError(
            f"{path.name}: MLX {quantization['mode']} quantization is not supported"
        )
    return quantization


def _read_hf_dir(path: Path) -> Checkpoint:
    config = _read_config(path)
    weights: dict[str, mx.array] = {}
    for file in _safetensors_files(path):
        try:
            weights.update(mx.load(str(file)))
        except (RuntimeError, ValueError) as err:
            raise ModelLoadError(f"{file}: unreadable safetensors ({err})") from None
    qconfig = _mlx_quantization(config, path)
    quant = {}
    if qconfig is not None:
        for module in quantized_modules(weights):
            own = qconfig.get(module)  # mlx-lm records per-module overrides of mixed recipes
            q = own if isinstance(own, dict) else qconfig
            quant[module] = (int(q["group_size"]), int(q["bits"]))
        label = f"{qconfig['bits']}-bit g{qconfig['group_size']} (MLX)"
    else:
        embed = weights.get("model.embed_tokens.weight")
        label = _dtype_name(embed.dtype) if embed is not None else config.get("torch_dtype", "?")
    args = ModelArgs.from_dict(config)
    return Checkpoint(args, weights, quant, "llama", label, args.max_position_embeddings, None)


# ---------------------------------------------------------------------------- building


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).rpartition(".")[2]


def _count_params(weights: dict[str, Any], quant: dict[str, tuple[int, int]]) -> int:
    """Logical parameter count: a quantized matrix counts its unpacked values, not its uint32s."""
    total = 0
    for name, w in weights.items():
        module, _, leaf = name.rpartition(".")
        if module in quant:
            total += w.size * quant[module][0] if leaf == "scales" else 0
        else:
            total += w.size
    return total


def _default_budget_bytes() -> float:
    """Half the physical memory: a 1B model needs ~4.6 GiB as float32, and falling back to the
    quantized CPU path costs ~3–20× in speed, so the budget should grow with the machine."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        total = 0
    return total / 2 if total > 0 else FALLBACK_DENSE_BUDGET_GB * 2**30


def dense_budget_bytes() -> float:
    """ENTROPIX_DENSE_BUDGET_GB (GiB) if set, else `_default_budget_bytes()`."""
    value = os.environ.get(BUDGET_ENV)
    if value is None:
        return _default_budget_bytes()
    try:
        return float(value) * 2**30
    except ValueError:
        raise ModelLoadError(f"{BUDGET_ENV}={value!r} is not a number of GiB") from None


def device_name() -> str:
    return mx.default_device().type.name


def runtime_summary() -> str:
    """`device · BLAS · weight layout` of this machine (what `entropix models` reports)."""
    if not backend.on_cpu():
        layout = "quantized weights stay quantized"
    elif quant.native() is not None:
        layout = f"quantized weights stay quantized on the CPU kernels ({quant.native_status()})"
    else:
        gib = dense_budget_bytes() / 2**30
        layout = (
            f"quantized weights run as dense float32 up to {gib:.1f} GiB ({BUDGET_ENV}); "
            f"{quant.native_error()}"
        )
    return f"device {device_name()} · BLAS {backend.blas_status()} · {layout}"


def resident_estimate(summary: ModelSummary) -> int:
    """Bytes the weights will take in memory on this machine (what `entropix models` shows)."""
    quantized = summary.quantization.startswith("Q") or "-bit" in summary.quantization
    if not quantized or not backend.on_cpu() or quant.native() is not None:
        return summary.size_bytes if quantized else summary.params * 4
    return summary.params * 4 if summary.params * 4 <= dense_budget_bytes() else summary.size_bytes


def _wants_packed(layout: str, on_gpu: bool, path: Path) -> bool:
    """auto and packed: quantized weights stay quantized on the CPU, on our kernels (`quant`),
    where they were built; otherwise auto falls back to `_wants_dense`."""
    if on_gpu or layout not in ("auto", "packed"):
        return False
    if quant.native() is None and layout == "packed":
        raise ModelLoadError(f"{path.name}: {quant.native_error()}; reinstall with `make install`")
    return quant.native() is not None


def _wants_dense(layout: str, params: int, on_gpu: bool) -> bool:
    """auto without the CPU kernels: dense float32 on the CPU when it fits the budget — MLX's CPU
    quantized matmul is a slow single-threaded loop, while float32 goes through BLAS."""
    if layout != "auto":
        return layout == "dense"
    return not on_gpu and params * 4 <= dense_budget_bytes()


def _dequantize(
    weights: dict[str, mx.array], quant: dict[str, tuple[int, int]]
) -> dict[str, mx.array]:
    """Every quantized triple → one float32 matrix holding exactly the values it encodes."""
    dense = dict(weights)
    for module, (group_size, bits) in quant.items():
        w, s, b = (dense.pop(f"{module}.{leaf}") for leaf in ("weight", "scales", "biases"))
        f32 = mx.float32
        dense[f"{module}.weight"] = mx.dequantize(w, s.astype(f32), b.astype(f32), group_size, bits)
    return dense


def _to_float32(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """fp16/bf16 are emulated on the CPU (slow): cast them, scales and biases included."""
    low = (mx.float16, mx.bfloat16)
    return {k: v.astype(mx.float32) if v.dtype in low else v for k, v in weights.items()}


def _check_names(model: nn.Module, weights: dict[str, mx.array], path: Path) -> None:
    expected = {name for name, _ in tree_flatten(model.parameters())}
    missing, unexpected = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
    if missing or unexpected:
        pairs = (("missing", missing), ("unexpected", unexpected))
        parts = [
            f"{label} {', '.join(names[:3])}{' …' * (len(names) > 3)}"
            for label, names in pairs
            if names
        ]
        raise ModelLoadError(
            f"{path.name}: weights do not fit a Llama with its config: {'; '.join(parts)}"
        )


def _build(ckpt: Checkpoint, layout: str, path: Path) -> tuple[Model, str, int]:
    """Model with the checkpoint's weights in the chosen layout; returns (model, layout, params)."""
    model = Model(ckpt.args)
    weights = model.sanitize(ckpt.weights)
    qmap = {m: q for m, q in ckpt.quant.items() if f"{m}.weight" in weights}
    params = _count_params(weights, qmap)
    on_gpu = not backend.on_cpu()
    packed = bool(qmap) and _wants_packed(layout, on_gpu, path)
    if qmap and not packed and _wants_dense(layout, params, on_gpu):
        weights, qmap = _dequantize(weights, qmap), {}
    if not on_gpu:
        weights = _to_float32(weights)
    if qmap:
        nn.quantize(
            model,
            class_predicate=lambda p, _: (
                p in qmap and {"group_size": qmap[p][0], "bits": qmap[p][1]}
            ),
        )
    _check_names(model, weights, path)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as err:
        raise ModelLoadError(f"{path.name}: {err}") from None
    del weights
    if packed:
        model.pack_quantized()
    mx.eval(model.parameters())
    if model.packed:
        return model, f"packed ({quant.native_status()})", params
    embed = model.model.embed_tokens
    return model, "quantized" if qmap else f"dense {_dtype_name(embed.weight.dtype)}", params


def _notice(ckpt: Checkpoint, layout: str, on_gpu: bool) -> str | None:
    """Why a quantized model does not stay quantized on the CPU (one line at start-up)."""
    if ckpt.quant and not on_gpu and layout == "auto" and quant.native() is None:
        return (
            f"{quant.native_error()}: quantized weights run as dense float32 (slower, more memory)"
        )
    return None


def _read_checkpoint(path: Path) -> Checkpoint:
    if path.is_dir():
        return _read_hf_dir(path)
    if is_gguf(path):
        return read_gguf(path)
    if path.name in TOKENIZER_FILES:
        raise ModelLoadError(f"{path}: a tokenizer file, not a model; pass a .gguf or an HF folder")
    raise ModelLoadError(f"{path}: not a GGUF file (no GGUF magic); pass a .gguf or an HF folder")


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return path.stat().st_size


def _model_name(path: Path) -> str:
    return path.stem if path.suffix == ".gguf" else path.name


def load(
    model: str | Path | None = None, *, layout: str = "auto", progress: Progress | None = None
) -> tuple[Model, Tokenizer, ModelInfo]:
    """Load a model and its tokenizer; raises ModelLoadError naming the file and what to do.

    layout: "dense" (float32), "quantized" (MLX's quantized layers), "packed" (quantized weights
    on our CPU kernels) or "auto" (GPU: quantized; CPU: packed where the kernels were built,
    else `_wants_dense`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    report = progress or (lambda stage, fraction: None)
    start = time.perf_counter()
    path = resolve_model(model)
    report("reading", 0.0)
    ckpt = _read_checkpoint(path)
    report("building", 0.5)
    net, layout_name, params = _build(ckpt, layout, path)
    tokenizer = _tokenizer_for(path, ckpt.gguf_metadata)
    notice = _notice(ckpt, layout, not backend.on_cpu())
    ckpt.weights.clear()  # now in the model: repacked or converted ones go back to the system
    backend.free_buffers_at_once()
    backend.release_memory()
    resident = sum(v.nbytes for _, v in tree_flatten(net.parameters()))
    info = ModelInfo(
        name=_model_name(path),
        path=path,
        arch=ckpt.arch,
        params=params,
        quantization=ckpt.quantization,
        layout=layout_name,
        context_length=ckpt.context_length,
        device=device_name(),
        blas=backend.blas_status(),
        size_bytes=_size_on_disk(path),
        load_seconds=time.perf_counter() - start,
        resident_bytes=resident,
        notice=notice,
    )
    report("done", 1.0)
    return net, tokenizer, info


# ---------------------------------------------------------------------------- tokenizer, listing


def _tokenizer_for(path: Path, gguf_metadata: dict[str, Any] | None) -> Tokenizer:
    from ..tokenize.files import load_tokenizer_path
    from ..tokenize.gguf_vocab import tokenizer_from_gguf

    if gguf_metadata is not None:
        return tokenizer_from_gguf(gguf_metadata, source=str(path))
    return load_tokenizer_path(path)


def load_tokenizer(model: str | Path | None = None) -> Tokenizer:
    """The tokenizer alone (no weights): a GGUF's vocabulary, a folder's or a file's tokenizer."""
    path = resolve_model(model)
    if path.is_file() and is_gguf(path):
        try:
            _, metadata = mx.load(str(path), return_metadata=True)
        except (RuntimeError, ValueError) as err:
            raise ModelLoadError(f"{path.name}: MLX cannot read it ({err})") from None
        return _tokenizer_for(path, metadata)
    if path.is_file() and path.name not in TOKENIZER_FILES:
        raise ModelLoadError(f"{path}: not a GGUF file or a tokenizer.json / tokenizer.model")
    return _tokenizer_for(path, None)


def _summarize(path: Path) -> ModelSummary:
    if path.is_dir():
        ckpt = _read_hf_dir(path)  # safetensors load lazily: shapes only, no data read
        weights = Model(ckpt.args).sanitize(ckpt.weights)
        params = _count_params(weights, ckpt.quant)
        label, context, arch = ckpt.quantization, ckpt.context_length, ckpt.arch
    else:
        arch, params, label, context = describe_gguf(path)
    return ModelSummary(_model_name(path), path, arch, params, label, context, _size_on_disk(path))


def list_models(models_dir: Path | None = None) -> list[ModelSummary]:
    """The models selectable by name, described from headers/config without loading weights.

    A model that cannot be read is listed with `error` set rather than hiding the others.
    """
    summaries = []
    for path in selectable_models(models_dir).values():
        try:
            summaries.append(_summarize(path))
        except (ModelLoadError, OSError, RuntimeError, ValueError) as err:
            summaries.append(
                ModelSummary(_model_name(path), path, "?", 0, "?", 0, 0, error=str(err))
            )
    return summaries
