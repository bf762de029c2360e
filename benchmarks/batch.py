"""Batched decoding: tokens/s of all rows at several batch sizes, vs mlx-lm's batch_generate.

Every row is a different shipped calibration prompt (chat template, so lengths differ) and decodes
exactly `--tokens` tokens (no stop ids), so each batch size does the same work per row. Reported:
decode tokens/s of all rows together (first token to last), end-to-end tokens/s including the
batched prefill, the ratio to batch 1, and the peak MLX memory. Ours runs in each `--layouts`
(default: what `load` picks here, and dense float32 if that is another). mlx-lm's `BatchGenerator`
(what `batch_generate` runs) decodes the same prompts greedily on the dense tensors.

    python benchmarks/batch.py [--model M] [--tokens 64] [--sizes 1,4,8,16,32] [--repeats 2]
        [--layouts auto,dense]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import entropix_mlx  # first: it sets up the BLAS before MLX binds its symbols

# isort: split
import mlx.core as mx

from entropix_mlx.engine.batch import Job, generate_batch
from entropix_mlx.model.load import load


def prompts(tokenizer, n: int) -> list[list[int]]:
    text = resources.files("entropix_mlx.lab").joinpath("data/calibration_prompts.jsonl")
    items = [json.loads(line)["prompt"] for line in text.read_text().splitlines() if line.strip()]
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in items]
    return [chat[i % len(chat)] for i in range(n)]


def bench_ours(model, tokenizer, ids: list[list[int]], tokens: int, sampler: str) -> tuple:
    jobs = [
        Job(p, sampler=sampler, seed=i, max_tokens=tokens, stop_ids=()) for i, p in enumerate(ids)
    ]
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in generate_batch(model, tokenizer, jobs, batch_size=len(jobs)):
        n += 1
        first = first or time.perf_counter()
    end = time.perf_counter()
    rows = len(jobs)
    return (n - rows) / (end - first), n / (end - t0), mx.get_peak_memory()


def bench_mlx_lm(theirs, ids: list[list[int]], tokens: int) -> tuple:
    from mlx_lm.generate import BatchGenerator

    mx.reset_peak_memory()
    t0 = time.perf_counter()
    gen = BatchGenerator(
        theirs, stop_tokens=[], completion_batch_size=len(ids), prefill_batch_size=len(ids)
    )
    gen.insert(ids, [tokens] * len(ids))
    first = None
    n = 0
    while responses := gen.next_generated():
        n += len(responses)
        first = first or time.perf_counter()
    end = time.perf_counter()
    return (n - len(ids)) / (end - first), n / (end - t0), mx.get_peak_memory()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--sizes", default="1,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-mlx-lm", action="store_true")
    ap.add_argument("--layouts", default="auto,dense", help="ours in each of these (load's names)")
    args = ap.parse_args()

    models = {}
    for layout in args.layouts.split(","):
        model, tokenizer, info = load(args.model, layout=layout)
        models.setdefault(info.layout.split()[0], model)  # auto may be dense
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = {
        f"ours {layout} {sampler}": lambda ids, m=model, s=sampler: bench_ours(
            m, tokenizer, ids, args.tokens, s
        )
        for layout, model in models.items()
        for sampler in ("greedy", "entropix")
    }
    if not args.no_mlx_lm:
        from decode import mlx_lm_model  # benchmarks/decode.py: mlx-lm's Llama on our tensors

        theirs = mlx_lm_model(models.get("dense") or load(args.model, layout="dense")[0])
        engines["mlx-lm batch_generate"] = lambda ids: bench_mlx_lm(theirs, ids, args.tokens)
    print(f"model {info.name} · our layouts {', '.join(models)} · device {info.device}")
    print(f"BLAS {entropix_mlx.model.backend.blas_status()}")
    print(f"{args.tokens} tokens per row (no stop), best of {args.repeats}")
    for model in models.values():
        bench_ours(model, tokenizer, prompts(tokenizer, 2), 4, "greedy")  # warm-up
    best: dict[tuple[str, int], tuple] = {}
    for r in range(args.repeats):  # alternate the order, so a changing machine load favours none
        for B in sizes if r % 2 == 0 else sizes[::-1]:
            ids = prompts(tokenizer, B)
            for name, run in engines.items():
                decode, total, peak = run(ids)
                old = best.get((name, B))
                if old is None or decode > old[0]:
                    best[(name, B)] = (decode, total, peak)
    print(
        f"{'engine':<26}{'batch':>6}{'decode tok/s':>14}{'× batch 1':>11}{'with prefill':>14}"
        f"{'peak MB':>9}"
    )
    for name in engines:
        base = best[(name, sizes[0])][0]
        for B in sizes:
            decode, total, peak = best[(name, B)]
            print(
                f"{name:<26}{B:>6}{decode:>14.1f}{decode / base:>11.2f}{total:>14.1f}"
                f"{peak / 2**20:>9.0f}"
            )


if __name__ == "__main__":
    main()
