"""The fast paths change speed, never results: weight layouts and the BLAS preload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import make_tiny_checkpoint
from conftest import BLAS, DATA

from entropix_mlx.generate import generate
from entropix_mlx.loading import load
from entropix_mlx.metrics import METRIC_NAMES

ENTROPIX = Path(sys.executable).with_name("entropix")


@pytest.mark.slow
def test_dense_and_quantized_layouts_give_the_same_tokens_and_metrics(smollm2_gguf: Path) -> None:
    prompt = json.loads((DATA / "smollm2" / "sys_math.json").read_text())["prompt_ids"]
    runs = {}
    for layout in ("dense", "quantized"):
        model, tok, info = load(smollm2_gguf, layout=layout)
        assert info.layout.startswith(layout)
        runs[layout] = list(generate(model, tok, prompt, sampler="greedy", max_tokens=12))
    dense, quantized = runs["dense"], runs["quantized"]
    assert [e.token_id for e in dense] == [e.token_id for e in quantized]
    for a, b in zip(dense, quantized):
        for name in METRIC_NAMES:
            # Same dequantized weights; only the summation order differs (BLAS vs MLX's kernel).
            assert getattr(a.metrics, name) == pytest.approx(getattr(b.metrics, name), rel=2e-3, abs=2e-4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload is Linux-only")
def test_without_openblas_the_cli_says_so_once_and_answers_the_same(tmp_path: Path) -> None:
    model = make_tiny_checkpoint(tmp_path / "tiny")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The capital of France is")
    args = [str(ENTROPIX), "run", "-f", str(prompt), "-m", str(model), "-s", "greedy", "-n", "12"]

    def run(blas: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "ENTROPIX_BLAS"}
        env |= {"ENTROPIX_BLAS": blas} if blas is not None else {}
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)

    fast, slow = run(None), run("none")
    assert fast.returncode == slow.returncode == 0, slow.stderr
    notices = [line for line in slow.stderr.splitlines() if line.startswith("note: BLAS")]
    assert notices == ["note: BLAS is disabled (ENTROPIX_BLAS=none)"]
    if BLAS.startswith("OpenBLAS"):  # this machine has it: the normal run is quiet about BLAS
        assert "note: BLAS" not in fast.stderr
    assert slow.stdout == fast.stdout and slow.stdout.strip()
