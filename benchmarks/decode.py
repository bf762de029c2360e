"""Prefill and decode tokens/s: our greedy and entropix decoding vs mlx-lm's `generate_step`.

Same weights, same device, same BLAS, one process. mlx-lm's Llama is given our loaded parameters
(same names), so both engines run identical tensors: dense float32, and MLX's quantized layers.
Ours runs dense float32 and, where the CPU kernels were built, packed (the quantized weights on
`model/quant.py`'s kernels). Where llama-cpp-python is installed (not a dependency) and the model
is a GGUF file, llama.cpp runs the same file. Then each of our layouts loads and decodes again in
a fresh process, for its resident memory (RSS) alone.

    python benchmarks/decode.py [--model M] [--prompt-tokens 500] [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import entropix_mlx  # first: it sets up the BLAS before MLX binds its symbols

# isort: split
import mlx.core as mx
import mlx.nn as nn

from entropix_mlx.engine.generate import generate
from entropix_mlx.model import backend
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


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """VmHWM: unlike ru_maxrss it starts afresh at exec, so the parent's size does not count."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def memory_run(model: str | None, layout: str, prompt_tokens: int) -> None:
    """Load with `layout`, decode 32 tokens, print {rss, peak, weights} in MiB as JSON."""
    net, tokenizer, info = load(model, layout=layout)
    ids = tokenizer.encode(TEXT * (prompt_tokens // 30 + 1))[:prompt_tokens]
    bench_ours(net, tokenizer, ids, 32, "entropix")
    after = rss_mib()
    backend.release_memory()  # what the prompt's freed buffers leave in glibc's heap
    weights = info.resident_bytes / 2**20
    print(
        json.dumps(
            {
                "layout": info.layout,
                "rss": after,
                "trimmed": rss_mib(),
                "peak": peak_rss_mib(),
                "weights": weights,
            }
        )
    )


def memory(model: str | None, layout: str, prompt_tokens: int) -> dict | None:
    cmd = [sys.executable, __file__, "--memory-run", layout, "--prompt-tokens", str(prompt_tokens)]
    if model:
        cmd += ["--model", model]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if done.returncode == 0 and lines else None


def main() -> None:
    from entropix_mlx.model import quant

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompt-tokens", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-run", choices=["dense", "packed"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_run:
        return memory_run(args.model, args.memory_run, args.prompt_tokens)

    dense, tokenizer, info = load(args.model, layout="dense")
    ids = tokenizer.encode(TEXT * (args.prompt_tokens // 30 + 1))[: args.prompt_tokens]
    ours = {"dense": dense}
    if quant.native() is not None:
        ours["packed"] = load(args.model, layout="packed")[0]
    rows = {}
    quantized, _, qinfo = load(args.model, layout="quantized")
    if qinfo.layout == "quantized":  # how mlx-lm runs a quantized checkpoint
        theirs_q = mlx_lm_model(quantized)
        rows["mlx-lm greedy, quantized"] = lambda: bench_mlx_lm(theirs_q, ids, args.tokens)
    theirs_d = mlx_lm_model(dense)
    rows["mlx-lm greedy, dense"] = lambda: bench_mlx_lm(theirs_d, ids, args.tokens)
    del quantized
    for layout, net in ours.items():
        for sampler in ("greedy", "entropix"):
            rows[f"ours {layout} {sampler}"] = lambda n=net, s=sampler: bench_ours(
                n, tokenizer, ids, args.tokens, s
            )
    if importlib.util.find_spec("llama_cpp") and info.path.suffix == ".gguf":
        rows["llama.cpp greedy"] = lambda: bench_llama_cpp(str(info.path), ids, args.tokens)
    print(f"model {info.name} · {info.quantization} · {info.size_bytes / 2**20:.0f} MiB file")
    print(f"BLAS {entropix_mlx.model.backend.blas_status()}")
    print(f"CPU kernels {quant.native_status()}")
    print(
        f"prompt {len(ids)} tokens, decode {args.tokens} tokens (no stop), best of {args.repeats}"
    )

    for net in ours.values():
        bench_ours(net, tokenizer, ids[:32], 8, "greedy")  # warm-up
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
    for layout in ours:
        ratio = best[f"ours {layout} entropix"][1] / best[f"ours {layout} greedy"][1]
        print(f"{layout}: entropix decode / greedy decode {ratio:.2f}")
    if "llama.cpp greedy" in best and "packed" in ours:
        ratio = best["ours packed greedy"][1] / best["llama.cpp greedy"][1]
        print(f"packed greedy decode / llama.cpp decode {ratio:.2f}")
    print("resident memory, each layout alone in a fresh process (load, 32 entropix tokens):")
    for layout in ours:
        m = memory(args.model, layout, args.prompt_tokens)
        if m is None:
            print(f"  {layout}: the memory run failed")
            continue
        file = info.size_bytes / 2**20
        print(
            f"  {m['layout']:<28} RSS {m['rss']:.0f} MiB = {m['rss'] / file:.2f}x the file "
            f"({m['trimmed']:.0f} after malloc_trim, peak {m['peak']:.0f}); "
            f"weights {m['weights']:.0f} MiB = {m['weights'] / file:.2f}x"
        )


if __name__ == "__main__":
    main()
