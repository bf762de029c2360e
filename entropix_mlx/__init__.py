"""entropix-mlx: Llama 3.x on MLX with the Entropix adaptive sampler.

Importing the package sets up the BLAS (before MLX binds its symbols; see `model/backend.py`) and
nothing else: the public API below is imported on first use, so `entropix --help` never pays for
MLX.
No submodule shares a name with the API, so `entropix_mlx.generate` is the function whatever was
imported before.
"""

from __future__ import annotations

import importlib
from typing import Any

from .model import backend as _backend

_backend.setup()

# public name -> the module that defines it
_API = {
    "load": "model.load",
    "load_tokenizer": "model.load",
    "generate": "engine.generate",
    "TokenEvent": "engine.generate",
    "Summary": "engine.generate",
    "make_sampler": "engine.sampler",
    "SamplingParams": "engine.sampler",
    "SamplerConfig": "engine.config",
    "load_profile": "engine.config",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'entropix_mlx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
