"""The record both checkpoint readers (`gguf.read_gguf`, `load`'s HF-folder reader) return: HF-named
weights, the model's arguments and, per quantized module, its (group_size, bits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlx.core as mx

    from .llama import ModelArgs

SUPPORTED_HINT = "use a Q4_0/Q4_1/Q8_0/F16/F32 GGUF or an MLX (mlx-community) folder"


@dataclass(frozen=True)
class Checkpoint:
    """Weights under HF names; `quant` maps each quantized module path to (group_size, bits)."""

    args: ModelArgs
    weights: dict[str, mx.array]
    quant: dict[str, tuple[int, int]]
    arch: str
    quantization: str
    context_length: int
    gguf_metadata: dict[str, Any] | None


def quantized_modules(weights: dict[str, Any]) -> list[str]:
    """Module paths that carry quantization `scales` (both formats name them the same way)."""
    return [name[: -len(".scales")] for name in weights if name.endswith(".scales")]
