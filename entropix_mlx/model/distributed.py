"""Several processes, one model: tensor parallelism over an `mx.distributed` group, and the few
collectives the commands need (a seed, a prompt, a chat line, eval answers).

Run under `mlx.launch` (ring over TCP, MPI, …); a process started without it is a group of one and
nothing here communicates. Tensor parallelism splits each layer as Megatron-LM does and mlx-lm's
`shard` does for MLX: q/k/v and gate/up keep a slice of their output rows (whole heads, whole MLP
columns), o_proj and down_proj the matching input columns, and their partial products are summed
across ranks (`mx.distributed.all_sum`): two all-reduces per layer. The KV cache of each rank holds
its own heads. Embeddings, norms and the output head stay whole on every rank, so every rank holds
the same full-vocabulary logits. The newest query's attention scores of all heads are gathered once
per step (`all_gather`, one array for all layers), so the six metrics are the one-process numbers.

Heads are split by key-value head (a query head stays with its kv head) as evenly as the counts
allow: SmolLM2's 3 kv heads over 2 ranks are 2 + 1.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import EntropixError
from .launch import alone, launch_rank, launched

Group = mx.distributed.Group
CONNECT_TIMEOUT_ENV = "ENTROPIX_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 60.0


class DistributedError(EntropixError):
    """The group cannot be formed, or the model cannot be split across it."""


def connect(timeout: float | None = None) -> Group:
    """The launch's group (a group of one when not launched).

    MLX's ring backend waits for its peers forever and holds the GIL while it does, so a small
    watchdog process ends this one with a one-line message when the group is not formed in
    `timeout` seconds (default 60, or $ENTROPIX_CONNECT_TIMEOUT).
    """
    if not launched():
        if alone():  # MLX would fail parsing the empty hostfile rather than run alone
            os.environ.pop("MLX_HOSTFILE")
        return mx.distributed.init()
    if timeout is None:
        timeout = float(os.environ.get(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT))
    message = (
        f"entropix: rank {launch_rank()} could not reach the other ranks in {timeout:.0f} s "
        f"({_peers()}); check that every host runs the same command, the addresses in the "
        "hostfile and the firewall\n"
    )
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), message],
        stdin=subprocess.DEVNULL,
    )
    try:
        group = mx.distributed.init(strict=True)
    except RuntimeError as e:
        raise DistributedError(f"cannot start the distributed group: {e}") from None
    finally:
        watchdog.kill()
        watchdog.wait()
    return group


_WATCHDOG = """
import os, signal, sys, time
pid, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(timeout)
os.write(2, message.encode())
os.kill(pid, signal.SIGTERM)
"""


def _peers() -> str:
    """The hostfile's addresses, for the error message."""
    path = os.environ.get("MLX_HOSTFILE")
    if not path:
        return "no MLX_HOSTFILE"
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return f"hostfile {path} unreadable"
    return f"hostfile {text}" if len(text) < 200 else f"hostfile {path}"


# ── tensor parallelism ────────────────────────────────────────────────────────────────────────


def split_counts(total: int, parts: int) -> list[int]:
    """`total` items over `parts` ranks as evenly as possible, the larger shares first."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def plan_heads(n_heads: int, n_kv_heads: int, size: int) -> list[int]:
    """Key-value heads per rank; a one-line error when some rank would get none."""
    if n_kv_heads < size:
        raise DistributedError(
            f"the model has {n_kv_heads} key-value heads ({n_heads} query heads), too few to "
            f"split across {size} ranks; run it on at most {n_kv_heads}"
        )
    return split_counts(n_kv_heads, size)


def shard(model: Any, group: Group) -> Any:
    """Split `model` (a `llama.Model`) in place across `group`; returns it.

    Afterwards every rank must run the same calls in the same order (each layer all-reduces).
    """
    size, rank = group.size(), group.rank()
    if size == 1:
        return model
    if model.packed:
        raise DistributedError(
            "cannot split packed (CPU-kernel) layers across ranks; load with layout='dense' "
            "or 'quantized'"
        )
    args = model.args
    G, D = args.num_attention_heads // args.num_key_value_heads, args.head_dim
    kv_heads = plan_heads(args.num_attention_heads, args.num_key_value_heads, size)
    first = sum(kv_heads[:rank])
    kv_rows = slice(first * D, (first + kv_heads[rank]) * D)
    q_rows = slice(first * G * D, (first + kv_heads[rank]) * G * D)
    mlp = _mlp_columns(args.intermediate_size, size, rank, model.layers[0].mlp.down_proj)
    for layer in model.layers:
        attn = layer.self_attn
        attn.q_proj = _rows(attn.q_proj, q_rows)
        attn.k_proj = _rows(attn.k_proj, kv_rows)
        attn.v_proj = _rows(attn.v_proj, kv_rows)
        attn.o_proj = AllSumLinear(_columns(attn.o_proj, q_rows), group)
        attn.n_heads, attn.n_kv_heads = kv_heads[rank] * G, kv_heads[rank]
        layer.mlp.gate_proj = _rows(layer.mlp.gate_proj, mlp)
        layer.mlp.up_proj = _rows(layer.mlp.up_proj, mlp)
        layer.mlp.down_proj = AllSumLinear(_columns(layer.mlp.down_proj, mlp), group)
    ops = getattr(model, "ops", None)
    if ops is not None:  # a model-wide ops dispatch holds the head counts the attention uses
        model.use_ops(type(ops)(kv_heads[rank] * G, kv_heads[rank], ops.head_dim, ops.periods))
    model.gather_scores = ScoreGather(group, [k * G for k in kv_heads])
    mx.eval(model.parameters())  # the slices, so the whole matrices can be freed
    return model


def _mlp_columns(hidden: int, size: int, rank: int, down: nn.Module) -> slice:
    """This rank's MLP columns; a quantized down_proj splits only at its groups' boundaries."""
    unit = getattr(down, "group_size", 1)
    if hidden % unit:
        raise DistributedError(f"MLP width {hidden} is not a multiple of group size {unit}")
    counts = [c * unit for c in split_counts(hidden // unit, size)]
    if 0 in counts:
        raise DistributedError(f"MLP width {hidden} is too narrow to split across {size} ranks")
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


def _rows(linear: nn.Module, rows: slice) -> nn.Module:
    """Keep output rows `rows` of a Linear or QuantizedLinear (in place)."""
    _check_kind(linear)
    for name in ("weight", "scales", "biases", "bias"):
        if linear.get(name) is not None:
            linear[name] = mx.contiguous(linear[name][rows])
    return linear


def _columns(linear: nn.Module, cols: slice) -> nn.Module:
    """Keep input columns `cols` of a Linear or QuantizedLinear (in place); the bias moves to
    the `AllSumLinear` around it, added once after the sum."""
    _check_kind(linear)
    if isinstance(linear, nn.QuantizedLinear):
        per_word, group = 32 // linear.bits, linear.group_size
        if cols.start % group or cols.stop % group:
            raise DistributedError(
                f"cannot split a quantized matrix at column {cols.start} (group size {group})"
            )
        linear.weight = mx.contiguous(
            linear.weight[:, cols.start // per_word : cols.stop // per_word]
        )
        for name in ("scales", "biases"):
            if linear.get(name) is not None:
                linear[name] = mx.contiguous(
                    linear[name][:, cols.start // group : cols.stop // group]
                )
    else:
        linear.weight = mx.contiguous(linear.weight[:, cols])
    return linear


def _check_kind(linear: nn.Module) -> None:
    if not isinstance(linear, (nn.Linear, nn.QuantizedLinear)):
        raise DistributedError(f"cannot split a {type(linear).__name__} across ranks")


class AllSumLinear(nn.Module):
    """A Linear holding some input columns: the ranks' partial products summed, then the bias."""

    def __init__(self, linear: nn.Module, group: Group):
        super().__init__()
        self.bias = linear.get("bias")
        if self.bias is not None:
            del linear["bias"]
        self.linear = linear
        self.group = group

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.distributed.all_sum(self.linear(x), group=self.group)
        return y if self.bias is None else y + self.bias


class ScoreGather:
    """Every rank's (B, layers, heads_r, T) scores → all heads (B, layers, H, T), in head order.

    Ranks may hold different head counts: each pads to the largest before the `all_gather`.
    """

    def __init__(self, group: Group, heads: Sequence[int]):
        self.group = group
        self.heads = list(heads)

    def __call__(self, scores: mx.array) -> mx.array:
        B, layers, h, T = scores.shape
        most = max(self.heads)
        if h < most:
            scores = mx.concatenate([scores, mx.zeros((B, layers, most - h, T), scores.dtype)], 2)
        every = mx.distributed.all_gather(scores, group=self.group)  # (size·B, layers, most, T)
        every = every.reshape(len(self.heads), B, layers, most, T)
        return mx.concatenate([every[r, :, :, :n] for r, n in enumerate(self.heads)], axis=2)


# ── small collectives for the commands ─────────────────────────────────────────────────────────


def _exchange(payload: bytes, group: Group) -> list[bytes]:
    """Every rank's bytes, on every rank (two all_gathers: the lengths, then the padded bytes)."""
    size = group.size()
    lengths = mx.distributed.all_gather(mx.array([len(payload)]), group=group, stream=mx.cpu)
    lengths = lengths.tolist()
    width = max(max(lengths), 1)
    data = np.zeros(width, np.uint8)
    data[: len(payload)] = np.frombuffer(payload, np.uint8)
    every = mx.distributed.all_gather(mx.array(data), group=group, stream=mx.cpu)
    rows = np.array(every).reshape(size, width)
    return [rows[r, :n].tobytes() for r, n in enumerate(lengths)]


def broadcast_object(obj: Any, group: Group, root: int = 0) -> Any:
    """`obj` as rank `root` has it, on every rank (picklable; the other ranks pass anything)."""
    if group.size() == 1:
        return obj
    payload = pickle.dumps(obj) if group.rank() == root else b""
    # Pickle is safe here: the peers are this same program, started by one mlx.launch.
    return pickle.loads(_exchange(payload, group)[root])


def gather_objects(obj: Any, group: Group) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if group.size() == 1:
        return [obj]
    return [pickle.loads(b) for b in _exchange(pickle.dumps(obj), group)]


def take_share(items: Sequence[Any], group: Group) -> list[int]:
    """The indices of `items` this rank handles: every size-th, from its rank (balanced)."""
    return list(range(group.rank(), len(items), group.size()))
