"""The fast paths change speed, never results: weight layouts and the BLAS preload."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from checkpoints import make_tiny_checkpoint
from conftest import BLAS, DATA

from entropix_mlx.engine.generate import generate
from entropix_mlx.engine.metrics import METRIC_NAMES
from entropix_mlx.model import backend as blas
from entropix_mlx.model.load import load

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
            assert getattr(a.metrics, name) == pytest.approx(
                getattr(b.metrics, name), rel=2e-3, abs=2e-4
            )


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


@pytest.mark.skipif(
    not BLAS.startswith("OpenBLAS"), reason="the gemv shim sits in front of OpenBLAS"
)
def gemv_calls() -> int:
    """How many products the shim has sent to sgemv in this process (0 without the shim)."""
    shim = blas._shim()
    return ctypes.c_long.in_dll(shim, "entropix_gemv_calls").value if shim else 0


def test_one_row_and_one_column_products_go_to_gemv_and_stay_exact() -> None:
    assert "no gemv shim" not in BLAS  # `make install` builds it: a failed build must not pass
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1, 7), np.float32), rng.standard_normal((7, 5), np.float32)
    m, v = rng.standard_normal((5, 7), np.float32), rng.standard_normal((7, 1), np.float32)
    stored_t = lambda x: mx.array(np.ascontiguousarray(x.T)).T  # (a transposed view)
    batch = rng.standard_normal((3, 1, 7), np.float32), rng.standard_normal((3, 7, 4), np.float32)
    c = rng.standard_normal((1, 5), np.float32)
    cases = {  # every layout of op(a) and op(b) that sgemm receives, and beta != 0
        "row @ matrix": (mx.array(a) @ mx.array(b), a @ b),
        "row @ matrixᵀ": (mx.array(a) @ stored_t(b), a @ b),
        "rowᵀ @ matrix": (stored_t(a) @ mx.array(b), a @ b),
        "matrix @ column": (mx.array(m) @ mx.array(v), m @ v),
        "matrixᵀ @ column": (stored_t(m) @ mx.array(v), m @ v),
        "matrix @ columnᵀ": (mx.array(m) @ stored_t(v), m @ v),
        "batched rows": (mx.array(batch[0]) @ mx.array(batch[1]), batch[0] @ batch[1]),
        "addmm": (
            mx.addmm(mx.array(c), mx.array(a), mx.array(b), 0.5, 2.0),
            0.5 * (a @ b) + 2.0 * c,
        ),
        "dot (sgemm)": (mx.array(a) @ mx.array(v), a @ v),
    }
    before = gemv_calls()
    for name, (got, want) in cases.items():
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-5, err_msg=name)
    assert gemv_calls() - before >= len(cases) - 1  # all but the dot (the batch counts 3 here)


def test_without_the_gemv_shim_blas_status_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(blas, "_shim", lambda: None)
    assert blas._describe("/lib/libopenblas.so") == (
        "OpenBLAS (/lib/libopenblas.so; no gemv shim: "
        "reinstall with a C compiler for faster decoding)"
    )
