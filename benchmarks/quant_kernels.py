"""Micro-benchmark of the quantized CPU kernels (`_qmv`) against MLX's dense float32 matmul.

Shapes of a decode step's products (default: SmolLM2-135M): time per call for 1 row (decode)
and for a 256-row prompt chunk (prefill), best of N, and the weight bytes read per second.

    python benchmarks/quant_kernels.py [--rows 1 256] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

# isort: split
import mlx.core as mx
import numpy as np

from entropix_mlx.model import backend, quant

# (name, out rows, in cols, bits, calls per token)
SHAPES = (
    ("qkv", 960, 576, 4, 30),
    ("o_proj", 576, 576, 4, 30),
    ("gate+up (glu)", 1536, 576, 4, 30),
    ("down", 576, 1536, 4, 30),
    ("head (Q8_0)", 49152, 576, 8, 1),
)


def best_time(fn, repeats: int) -> float:
    mx.eval(fn())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    mx.set_default_device(mx.cpu)
    print(f"kernels {quant.native_status()} · BLAS {backend.blas_status()}")
    rng = np.random.default_rng(0)
    for m in args.rows:
        print(f"\n{m} row(s): µs per call, best of {args.repeats}")
        print(f"{'product':<16}{'dense f32':>12}{'quantized':>12}{'speed-up':>10}{'q GB/s':>9}")
        tot_d = tot_q = 0.0
        for name, n, k, bits, calls in SHAPES:
            glu = name.startswith("gate")
            rows = 2 * n if glu else n
            w = mx.array(rng.standard_normal((rows, k)).astype(np.float16) * 0.05)
            triple = mx.quantize(w, group_size=32, bits=bits)
            dense = mx.dequantize(*triple, group_size=32, bits=bits).astype(mx.float32)
            if glu:
                half = [tuple(t[:n] for t in triple), tuple(t[n:] for t in triple)]
                packed = quant.pack_glu(*half, 32, bits)
            else:
                packed = quant.pack([triple], 32, bits)
            x = mx.array(rng.standard_normal((m, k)).astype(np.float32))
            mx.eval(dense, packed.data, x)
            if glu:
                g, u = dense[:n], dense[n:]
                td = best_time(lambda x=x, g=g, u=u: (x @ g.T) * (x @ u.T), args.repeats)
            else:
                td = best_time(lambda x=x, w=dense: x @ w.T, args.repeats)
            tq = best_time(lambda x=x, p=packed: quant.qmatmul(x, p), args.repeats)
            tot_d += td * calls
            tot_q += tq * calls
            gbs = packed.nbytes / tq / 1e9
            print(f"{name:<16}{td * 1e6:>12.1f}{tq * 1e6:>12.1f}{td / tq:>10.2f}{gbs:>9.1f}")
        print(f"{'per token':<16}{tot_d * 1e3:>11.2f}m{tot_q * 1e3:>11.2f}m{tot_d / tot_q:>10.2f}")


if __name__ == "__main__":
    main()
