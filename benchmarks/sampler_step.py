"""Per-step cost of the Entropix metrics + sampler decision at SmolLM2's and Llama 3's vocabularies.

One step = `step_metrics` (logits + attention statistics of every layer's newest row, on the host),
the strategy decision, and the sampled token evaluated — what `generate` adds to a forward pass.

    python benchmarks/sampler_step.py [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import entropix_mlx  # first: it sets up the BLAS before MLX binds its symbols

# isort: split
import mlx.core as mx

from entropix_mlx.engine.config import SamplerConfig
from entropix_mlx.engine.metrics import step_metrics
from entropix_mlx.engine.sampler import make_sampler

LAYERS, HEADS, CONTEXT = 30, 9, 512  # SmolLM2-135M's attention shape, a mid-length context


def step_times(vocab: int, scale: float, steps: int, sampler_name: str) -> list[float]:
    key = mx.random.key(0)
    sampler = make_sampler(sampler_name, SamplerConfig(), clarify_ids=(1,))
    scores = mx.random.normal((1, LAYERS, HEADS, CONTEXT), key=key) * 3
    times = []
    for _i in range(steps):
        key, k_logits, k_step = mx.random.split(key, 3)
        logits = mx.random.normal((1, vocab), key=k_logits) * scale
        mx.eval(logits, scores)
        t0 = time.perf_counter()
        metrics = step_metrics(logits, scores)
        decision = sampler(logits[0], metrics, k_step, clarify_left=0)
        mx.eval(decision.token)
        times.append(time.perf_counter() - t0)
    return times[10:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    print(f"device {mx.default_device()} · BLAS {entropix_mlx.model.backend.blas_status()}")
    print(f"{'vocab':>8} {'logit scale':>12} {'sampler':>9} {'mean ms':>8} {'p90 ms':>8}")
    for vocab in (49_152, 128_256):
        for scale in (1.0, 4.0):
            for name in ("greedy", "entropix"):
                t = sorted(step_times(vocab, scale, args.steps, name))
                p90 = t[int(0.9 * len(t))]
                print(
                    f"{vocab:>8} {scale:>12.1f} {name:>9} "
                    f"{1e3 * statistics.mean(t):>8.2f} {1e3 * p90:>8.2f}"
                )


if __name__ == "__main__":
    main()
