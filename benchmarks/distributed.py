"""Tensor parallelism on this machine: prefill and decode tokens/s of one process vs N ranks on
127.0.0.1 (MLX's ring backend, started by mlx.launch), the latency of one all-reduce, and what
communication costs per token.

    python benchmarks/distributed.py [--model M] [--ranks 2] [--prompt-tokens 128] [--tokens 32]

On one box the ranks share its cores and talk over loopback TCP, so N ranks are not faster: the
point is the cost per collective, from which a cluster can be estimated. A decode step runs
2 all-reduces per layer (o_proj, down_proj) of one hidden-size vector, and one all-gather of the
newest query's attention scores (layers × heads × context floats) for the metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import entropix_mlx  # noqa: F401 (first: it sets up the BLAS before MLX binds its symbols)

# isort: split
import mlx.core as mx

from entropix_mlx.engine.generate import generate
from entropix_mlx.model.distributed import connect, shard
from entropix_mlx.model.load import load

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden press adapted from wine making. "
)


def decode_speed(model, tok, prompt_tokens: int, tokens: int) -> dict[str, float]:
    ids = tok.encode(TEXT * (prompt_tokens // 30 + 1), add_special=True)[:prompt_tokens]
    list(generate(model, tok, ids[:16], sampler="greedy", max_tokens=4, stop_ids=()))  # warm up
    events = list(generate(model, tok, ids, sampler="greedy", max_tokens=tokens, stop_ids=()))
    first, last = events[0], events[-1]
    return {
        "prefill_tps": first.prompt_tokens / first.prefill_seconds,
        "decode_tps": (len(events) - 1) / (last.elapsed - first.elapsed),
    }


def collective_latency(
    group, shape: tuple[int, ...], gather: bool, repeat: int = 100
) -> tuple[float, float]:
    """Median and mean seconds per collective, each evaluated on its own as a decode step needs
    it. The median is the link's cost; the mean adds the waits for the other rank to be
    scheduled, which dominate on a shared machine."""
    x = mx.ones(shape)
    op = mx.distributed.all_gather if gather else mx.distributed.all_sum
    mx.eval(op(x, group=group))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        mx.eval(op(x, group=group))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), statistics.fmean(times)


def worker(args: argparse.Namespace) -> None:
    group = connect()
    model, tok, _ = load(args.model)
    shard(model, group)
    result = decode_speed(model, tok, args.prompt_tokens, args.tokens)
    a = model.args
    context = args.prompt_tokens + args.tokens // 2
    heads = a.num_attention_heads // group.size()
    result |= {
        "ranks": group.size(),
        "layers": a.num_hidden_layers,
        "hidden": a.hidden_size,
        "all_sum_hidden_s": collective_latency(group, (1, 1, a.hidden_size), gather=False),
        "all_sum_token_s": collective_latency(group, (1,), gather=False),
        "all_gather_scores_s": collective_latency(
            group, (1, a.num_hidden_layers, heads, context), gather=True, repeat=30
        ),
        "score_floats": a.num_hidden_layers * a.num_attention_heads * context,
    }
    if group.rank() == 0:
        Path(args.out).write_text(json.dumps(result))


def free_port(count: int) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1] if s.getsockname()[1] + count < 65536 else free_port(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    model, tok, info = load(args.model)
    one = decode_speed(model, tok, args.prompt_tokens, args.tokens)
    del model
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        launcher = Path(sys.executable).parent / "mlx.launch"
        command = [launcher, "--backend", "ring", "-n", str(args.ranks), "--hosts", "127.0.0.1"]
        command += ["-p", str(free_port(args.ranks)), "--", sys.executable, __file__, "--worker"]
        command += ["--out", str(out), "--prompt-tokens", str(args.prompt_tokens)]
        command += ["--tokens", str(args.tokens)] + (["--model", args.model] if args.model else [])
        # Ranks sharing one machine split its cores rather than each taking all of them.
        threads = max(1, (os.cpu_count() or 1) // args.ranks)
        env = os.environ | {"OPENBLAS_NUM_THREADS": str(threads)}
        subprocess.run(list(map(str, command)), check=True, env=env)
        many = json.loads(out.read_text())
    report(info.name, args, one, many)


def report(name: str, args, one: dict, many: dict) -> None:
    n, layers = many["ranks"], many["layers"]
    step_one, step_many = 1 / one["decode_tps"], 1 / many["decode_tps"]
    # What a step costs beyond an even share of the one-process compute: communication and waits.
    overhead = step_many - step_one / n
    setting = f"prompt {args.prompt_tokens} tokens · {args.tokens} greedy tokens"
    print(f"{name} · {setting} · {os.cpu_count()} cores")
    print(f"{'':24}{'1 process':>12}{f'{n} ranks (TP)':>16}")
    print(f"{'prefill tok/s':24}{one['prefill_tps']:>12.1f}{many['prefill_tps']:>16.1f}")
    print(f"{'decode tok/s':24}{one['decode_tps']:>12.1f}{many['decode_tps']:>16.1f}")
    rows = [
        (f"all-reduce, one hidden vector ({many['hidden']} floats)", "all_sum_hidden_s",
         f"{2 * layers} per token"),
        (f"all-gather, the scores ({many['score_floats']} floats)", "all_gather_scores_s",
         "1 per token"),
        ("all-reduce, one value (rank 0's token)", "all_sum_token_s", "not needed: same key"),
    ]  # fmt: skip
    print(f"{'collective':48}{'median':>10}{'mean':>10}")
    for label, key, note in rows:
        median, mean = many[key]
        print(f"{label:48}{median * 1e6:>8.0f}µs{mean * 1e6:>8.0f}µs  {note}")
    print(
        f"decode step: {step_many * 1e3:.1f} ms on {n} ranks vs {step_one * 1e3:.1f} ms alone; "
        f"beyond 1/{n} of the compute each token costs {overhead * 1e3:.1f} ms "
        f"(the collectives at their median would be "
        f"{(2 * layers * many['all_sum_hidden_s'][0] + many['all_gather_scores_s'][0]) * 1e3:.1f}"
        " ms)"
    )


if __name__ == "__main__":
    main()
