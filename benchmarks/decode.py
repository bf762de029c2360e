"""Prefill and decode tokens/s: our greedy and entropix decoding vs mlx-lm's `generate_step`.

Same weights, same device, same BLAS, one process. mlx-lm's Llama is given our loaded parameters
(same names), so both engines run identical tensors in the same layout. Where llama-cpp-python is
installed (not a dependency) and the model is a GGUF file, llama.cpp runs the same file for context.

    python benchmarks/decode.py [--model M] [--layout auto|dense|quantized]
                                [--prompt-tokens 500] [--tokens 128]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import entropix_mlx  # first: it sets up the BLAS before MLX binds its symbols

# isort: split
import mlx.core as mx
import mlx.nn as nn

from entropix_mlx.engine.generate import generate
from entropix_mlx.model.load import load

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden press adapted from wine making. "
)


def mlx_lm_model(model):
    """mlx-lm's Llama holding exactly our parameters (quantized the same way if ours is)."""
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama as ref

    config = {k: v for k, v in vars(model.args).items() if k != "rope_freq_factors"}
    theirs = ref.Model(ref.ModelArgs.from_dict(config))
    params = dict(tree_flatten(model.parameters()))
    # Each quantized module with its own group size and bits (a GGUF mixes Q4_1 and Q8_0).
    quantized = {p: m for p, m in model.named_modules() if hasattr(m, "bits")}
    if quantized:
        nn.quantize(
            theirs,
            class_predicate=lambda p, m: (
                p in quantized
                and {"group_size": quantized[p].group_size, "bits": quantized[p].bits}
            ),
        )
    theirs.load_weights(list(params.items()))
    mx.eval(theirs.parameters())
    return theirs


def bench_mlx_lm(model, prompt: list[int], tokens: int) -> tuple[float, float]:
    from mlx_lm.generate import generate_step

    t0 = time.perf_counter()
    times = []
    for (_tok, _), _ in zip(
        generate_step(mx.array(prompt), model, max_tokens=tokens), range(tokens)
    ):
        times.append(time.perf_counter())
    return len(prompt) / (times[0] - t0), (len(times) - 1) / (times[-1] - times[0])


def bench_llama_cpp(path: str, prompt: list[int], tokens: int) -> tuple[float, float]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=path, n_ctx=len(prompt) + tokens + 8, n_threads=os.cpu_count(), verbose=False
    )
    t0 = time.perf_counter()
    times = []
    for _, _ in zip(llm.generate(prompt, top_k=1, temp=0.0, reset=True), range(tokens)):
        times.append(time.perf_counter())
    return len(prompt) / (times[0] - t0), (len(times) - 1) / (times[-1] - times[0])


def bench_ours(
    model, tokenizer, prompt: list[int], tokens: int, sampler: str
) -> tuple[float, float]:
    # No stop ids: every engine decodes exactly `tokens` tokens.
    events = list(
        generate(model, tokenizer, prompt, sampler=sampler, max_tokens=tokens, seed=0, stop_ids=())
    )
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
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model, tokenizer, info = load(args.model, layout=args.layout)
    ids = tokenizer.encode(TEXT * (args.prompt_tokens // 30 + 1))[: args.prompt_tokens]
    rows = {"mlx-lm greedy, same layout": lambda: bench_mlx_lm(same, ids, args.tokens)}
    same = mlx_lm_model(model)
    if info.layout != "quantized":
        # mlx-lm runs quantized checkpoints quantized: the baseline a user of mlx-lm gets.
        quantized, _, qinfo = load(args.model, layout="quantized")
        if qinfo.layout == "quantized":
            theirs_q = mlx_lm_model(quantized)
            rows["mlx-lm greedy, quantized"] = lambda: bench_mlx_lm(theirs_q, ids, args.tokens)
    rows["ours greedy"] = lambda: bench_ours(model, tokenizer, ids, args.tokens, "greedy")
    rows["ours entropix"] = lambda: bench_ours(model, tokenizer, ids, args.tokens, "entropix")
    if importlib.util.find_spec("llama_cpp") and info.path.suffix == ".gguf":
        rows["llama.cpp (context)"] = lambda: bench_llama_cpp(str(info.path), ids, args.tokens)
    print(
        f"model {info.name} · {info.quantization} · our layout {info.layout} · device {info.device}"
    )
    print(f"BLAS {entropix_mlx.model.backend.blas_status()}")
    print(
        f"prompt {len(ids)} tokens, decode {args.tokens} tokens (no stop), best of {args.repeats}"
    )

    bench_ours(model, tokenizer, ids[:32], 8, "greedy")  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    names = list(rows)
    for r in range(args.repeats):  # interleaved and rotated, so neither load nor order favours one
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(rows[name]())
    best = {name: (max(r[0] for r in rs), max(r[1] for r in rs)) for name, rs in runs.items()}
    bases = [name for name in best if name.startswith("mlx-lm")]
    head = "".join(f"{'×' + b.split(', ')[1]:>14}" for b in bases)
    print(f"{'engine':<28}{'prefill tok/s':>14}{head}{'decode tok/s':>14}{head}")
    for name, (p, d) in best.items():
        pr = "".join(f"{p / best[b][0]:>14.2f}" for b in bases)
        dr = "".join(f"{d / best[b][1]:>14.2f}" for b in bases)
        print(f"{name:<28}{p:>14.1f}{pr}{d:>14.1f}{dr}")
    ratio = best["ours entropix"][1] / best["ours greedy"][1]
    print(f"entropix decode / our greedy decode: {ratio:.2f}")


if __name__ == "__main__":
    main()
