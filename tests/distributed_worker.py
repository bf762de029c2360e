"""What tests/test_distributed.py runs in each rank under `mlx.launch` (and alone, for reference).

`python distributed_worker.py OUT TOKENS MODEL[:LAYOUT] …`: for each model, the logits of a prefill
and two cached decode steps, a greedy and a seeded entropix decode with their metrics. Rank 0
pickles the numbers to OUT, with whether every rank held bitwise the same logits.
"""

from __future__ import annotations

import hashlib
import pickle
import sys

import entropix_mlx  # noqa: F401 (first: it sets up the BLAS before MLX binds its symbols)

# isort: split
import mlx.core as mx
import numpy as np

from entropix_mlx.engine.generate import generate, prefill
from entropix_mlx.model.distributed import connect, gather_objects, shard
from entropix_mlx.model.load import load

PROMPT = "The capital of France is"


def probe(spec: str, group, tokens: int) -> dict:
    path, _, layout = spec.partition(":")
    # dense by default, as the CLI loads for tensor parallelism on the CPU (shard splits Linear
    # and QuantizedLinear layers, not the packed kernels' ones)
    model, tok, _ = load(path, layout=layout or "dense")
    shard(model, group)
    ids = tok.encode(PROMPT, add_special=True)
    cache = model.make_cache()
    out = prefill(model, ids, cache)
    logits = [np.array(out.logits[0])]
    for token in (ids[-1], ids[1]):  # the cached one-token path, whatever the tokens
        out = model(mx.array([[token]]), cache)
        logits.append(np.array(out.logits[0]))
    runs = {}
    for sampler in ("greedy", "entropix"):
        events = generate(model, tok, ids, sampler=sampler, max_tokens=tokens, seed=7, stop_ids=())
        events = list(events)
        runs[sampler] = {
            "tokens": [e.token_id for e in events],
            "metrics": [e.metrics.as_dict() for e in events],
        }
    digest = hashlib.sha256(b"".join(x.tobytes() for x in logits)).hexdigest()
    same = len(set(gather_objects(digest, group))) == 1
    return {"logits": logits, "runs": runs, "ranks_agree": same}


def main() -> None:
    out, tokens, *models = sys.argv[1:]
    group = connect()
    results = {spec: probe(spec, group, int(tokens)) for spec in models}
    if group.rank() == 0:
        with open(out, "wb") as f:
            pickle.dump({"size": group.size(), "models": results}, f)


if __name__ == "__main__":
    main()
