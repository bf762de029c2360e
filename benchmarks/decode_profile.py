"""Where a decode step's time goes on the CPU: the model's quantized products alone, the whole
forward pass, and the whole step (metrics, sampler, Python) — best of N, so on a busy machine the
figures are the least disturbed runs, not averages.

    python benchmarks/decode_profile.py [--model M] [--layout packed|dense] [--context 200]
"""

from __future__ import annotations

import argparse
import time

import entropix_mlx  # noqa: F401 (first: it sets up the BLAS before MLX binds its symbols)

# isort: split
import mlx.core as mx

from entropix_mlx.engine.generate import generate, prefill
from entropix_mlx.model.load import load
from entropix_mlx.model.quant import PackedEmbedding, PackedLinear

TEXT = "The history of the printing press begins in the fifteenth century. "


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--layout", default="packed", choices=["packed", "dense"])
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sampler", default="entropix")
    args = ap.parse_args()
    model, tokenizer, info = load(args.model, layout=args.layout)
    ids = tokenizer.encode(TEXT * (args.context // 12 + 1))[: args.context]
    cache = model.make_cache()
    prefill(model, ids, cache)
    token = mx.array([[ids[-1]]])

    def forward() -> None:
        out = model(token, cache)
        mx.eval(out.logits, out.scores)
        for c in cache:
            c.trim(1)

    t_forward = best(forward, args.repeats)

    products = []
    for _, m in model.named_modules():
        if isinstance(m, PackedLinear):
            rows = m._meta[1]
            x = mx.random.normal((1, 1, rows))
            products.append((lambda m=m, x=x: m.split(x)) if m._splits else (lambda m=m, x=x: m(x)))
        elif isinstance(m, PackedEmbedding):
            x = mx.random.normal((1, m._meta[1]))
            products.append(lambda m=m, x=x: m.as_linear(x))
    t_products = best(lambda: mx.eval([p() for p in products]), args.repeats) if products else 0

    def step_time() -> float:
        events = list(
            generate(
                model, tokenizer, ids, sampler=args.sampler, max_tokens=33, stop_ids=(), seed=0
            )
        )
        return (events[-1].elapsed - events[0].elapsed) / (len(events) - 1)

    t_step = min(step_time() for _ in range(3))
    print(f"{info.name} · {info.layout} · context {len(ids)} · best of {args.repeats}")
    print(f"  whole {args.sampler:<8} step    {t_step * 1e3:7.2f} ms  ({1 / t_step:.1f} tok/s)")
    print(f"  model forward             {t_forward * 1e3:7.2f} ms")
    if products:
        print(f"  {len(products)} packed products    {t_products * 1e3:7.2f} ms (alone, one graph)")
        rest = t_forward - t_products
        print(f"  rest of the forward       {rest * 1e3:7.2f} ms (attention, cache, scheduling)")
    print(f"  metrics, sampler, Python  {(t_step - t_forward) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
