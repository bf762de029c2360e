"""Prefill and decode tokens/s: our greedy and entropix decoding vs mlx-lm's `generate_step`.

Same weights, same device, same BLAS, one process. mlx-lm's Llama is given our loaded parameters
(same names), so both engines run identical tensors in the same layout.

    python benchmarks/decode.py [--model M] [--layout auto|dense|quantized] [--prompt-tokens 500] [--tokens 128]
"""

from __future__ import annotations

import argparse
import time

from entropix_mlx import blas

BLAS = blas.preload_blas()  # before MLX is imported, so its BLAS calls resolve to OpenBLAS

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from entropix_mlx.generate import generate  # noqa: E402
from entropix_mlx.loading import load  # noqa: E402

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden press adapted from wine making. "
)


def mlx_lm_model(model, info):  # noqa: ANN001, ANN201
    """mlx-lm's Llama holding exactly our parameters (quantized the same way if ours is)."""
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama as ref

    config = {k: v for k, v in vars(model.args).items() if k != "rope_freq_factors"}
    theirs = ref.Model(ref.ModelArgs.from_dict(config))
    params = dict(tree_flatten(model.parameters()))
    quantized = {k.rsplit(".", 1)[0] for k in params if k.endswith(".scales")}
    if quantized:
        sample = next(m for p, m in model.named_modules() if p in quantized)
        nn.quantize(theirs, group_size=sample.group_size, bits=sample.bits,
                    class_predicate=lambda p, m: p in quantized)  # fmt: skip
    theirs.load_weights(list(params.items()))
    mx.eval(theirs.parameters())
    return theirs


def bench_mlx_lm(model, prompt: list[int], tokens: int) -> tuple[float, float]:  # noqa: ANN001
    from mlx_lm.generate import generate_step

    t0 = time.perf_counter()
    times = []
    for (tok, _), _ in zip(generate_step(mx.array(prompt), model, max_tokens=tokens), range(tokens)):
        times.append(time.perf_counter())
    return len(prompt) / (times[0] - t0), (len(times) - 1) / (times[-1] - times[0])


def bench_ours(model, tokenizer, prompt: list[int], tokens: int, sampler: str) -> tuple[float, float]:  # noqa: ANN001
    # No stop ids: every engine decodes exactly `tokens` tokens.
    events = list(generate(model, tokenizer, prompt, sampler=sampler, max_tokens=tokens, seed=0,
                           stop_ids=()))  # fmt: skip
    n = len(events)
    prefill_tps = len(prompt) / events[0].prefill_seconds
    decode_tps = (n - 1) / (events[-1].elapsed - events[0].elapsed)
    return prefill_tps, decode_tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--layout", default="auto", choices=["auto", "dense", "quantized"])
    ap.add_argument("--prompt-tokens", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    model, tokenizer, info = load(args.model, layout=args.layout)
    ids = tokenizer.encode(TEXT * (args.prompt_tokens // 30 + 1))[: args.prompt_tokens]
    theirs = mlx_lm_model(model, info)
    print(f"model {info.name} · {info.quantization} · layout {info.layout} · device {info.device} · BLAS {BLAS}")
    print(f"prompt {len(ids)} tokens, decode {args.tokens} tokens (ignore_eos), best of {args.repeats}")

    bench_ours(model, tokenizer, ids[:32], 8, "greedy")  # warm-up
    rows = {
        "mlx-lm greedy": lambda: bench_mlx_lm(theirs, ids, args.tokens),
        "ours greedy": lambda: bench_ours(model, tokenizer, ids, args.tokens, "greedy"),
        "ours entropix": lambda: bench_ours(model, tokenizer, ids, args.tokens, "entropix"),
    }
    results = {}
    for name, fn in rows.items():
        runs = [fn() for _ in range(args.repeats)]
        results[name] = (max(r[0] for r in runs), max(r[1] for r in runs))
    base_p, base_d = results["mlx-lm greedy"]
    print(f"{'engine':<16}{'prefill tok/s':>15}{'×mlx-lm':>9}{'decode tok/s':>15}{'×mlx-lm':>9}")
    for name, (p, d) in results.items():
        print(f"{name:<16}{p:>15.1f}{p / base_p:>9.2f}{d:>15.1f}{d / base_d:>9.2f}")
    g = results["ours greedy"][1]
    print(f"entropix decode / our greedy decode: {results['ours entropix'][1] / g:.2f}")


if __name__ == "__main__":
    main()
