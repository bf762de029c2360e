"""entropix-mlx: Llama 3.x on MLX with the Entropix adaptive sampler.

Importing the package does nothing: the public API is imported on first use, so `entropix --help`
never pays for MLX.
"""

from typing import Any

__all__ = ["load", "load_tokenizer", "generate"]


def __getattr__(name: str) -> Any:
    if name in ("load", "load_tokenizer"):
        from . import loading

        return getattr(loading, name)
    if name == "generate":
        from .generate import generate

        return generate
    raise AttributeError(f"module 'entropix_mlx' has no attribute {name!r}")
