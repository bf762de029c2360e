"""Two ranks on 127.0.0.1 with MLX's ring backend, started by `mlx.launch` as a user would:
tensor-parallel numbers equal to one process (tiny models and the default model), the commands
under the launcher, the data-parallel eval, and the one-line errors.

Each launch costs seconds (two interpreters, the ring, every layer's all-reduces on a busy CPU),
so each test launches once and decodes only a few tokens.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from checkpoints import make_tiny_checkpoint

from entropix_mlx.engine.metrics import METRIC_NAMES
from entropix_mlx.model.distributed import (
    DistributedError,
    ScoreGather,
    connect,
    plan_heads,
    shard,
    split_counts,
)
from entropix_mlx.model.launch import launched
from entropix_mlx.model.load import load

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LAUNCH = BIN / "mlx.launch"
ENTROPIX = BIN / "entropix"
TOKENS = 4
LOGIT_TOL = 2e-5  # of the largest |logit|: float32 sums split across ranks, ~1e-6 measured
METRIC_RTOL = 1e-4

pytestmark = pytest.mark.skipif(
    not (LAUNCH.exists() and mx.distributed.is_available("ring")),
    reason="mlx.launch and MLX's ring backend are needed",
)


def free_port(count: int = 2) -> int:
    """A base port with `count` free ports after it (the ring listens on port + rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count < 65536 and all(_free(base + i) for i in range(1, count)):
            return base
    raise RuntimeError("no free ports on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def env() -> dict[str, str]:
    # Ranks sharing one small machine: one BLAS thread each, and a short wait for a lost peer.
    return os.environ | {"OPENBLAS_NUM_THREADS": "1", "ENTROPIX_CONNECT_TIMEOUT": "60"}


def launch(
    args: list[str], ranks: int = 2, stdin: str = "", timeout: float = 600
) -> subprocess.CompletedProcess:
    """`mlx.launch --backend ring -n RANKS --hosts 127.0.0.1 -- ARGS`, loopback only."""
    command = [str(LAUNCH), "--backend", "ring", "-n", str(ranks), "--hosts", "127.0.0.1"]
    command += ["-p", str(free_port(ranks)), "--", *map(str, args)]
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=timeout, env=env()
    )


def alone(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [*map(str, args)], input=stdin, capture_output=True, text=True, timeout=600, env=env()
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp")
    return {
        "f32": make_tiny_checkpoint(root / "f32"),
        "q4": make_tiny_checkpoint(root / "q4", quantize=(32, 4)),
        "one-kv": make_tiny_checkpoint(
            root / "one-kv", config_overrides={"num_key_value_heads": 1}
        ),
    }


# ── the split itself, in one process ──────────────────────────────────────────────────────────


def test_split_counts_are_balanced_and_complete() -> None:
    assert split_counts(3, 2) == [2, 1]
    assert split_counts(8, 3) == [3, 3, 2]
    assert split_counts(64, 8) == [8] * 8


def test_too_few_heads_is_one_line_naming_the_counts() -> None:
    with pytest.raises(DistributedError) as e:
        plan_heads(8, 2, 3)
    message = str(e.value)
    assert "\n" not in message and "2 key-value heads" in message and "3 ranks" in message


def test_a_launch_of_one_rank_is_one_process(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "hostfile"
    empty.write_text("\n")  # what `mlx.launch -n 1` writes for the ring
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(empty))
    assert not launched()
    assert connect().size() == 1


class _Group:
    """Enough of an `mx.distributed.Group` for the checks before any communication."""

    def __init__(self, size: int, rank: int = 0):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


def test_shard_refuses_a_model_with_fewer_kv_heads_than_ranks(tiny) -> None:
    model, _, _ = load(tiny["one-kv"])
    with pytest.raises(DistributedError, match="1 key-value heads"):
        shard(model, _Group(2))


def test_uneven_score_gather_keeps_head_order(monkeypatch) -> None:
    # Rank 0 of two holds heads 0-1, rank 1 head 2 (3 kv heads as 2 + 1); fake the all_gather.
    every = mx.arange(2 * 4 * 3 * 5, dtype=mx.float32).reshape(2, 4, 3, 5)  # (B, layers, H, T)
    rank1 = mx.concatenate([every[:, :, 2:], mx.zeros((2, 4, 1, 5))], axis=2)  # padded to 2
    fake = lambda x, group: mx.concatenate([x, rank1], axis=0)
    monkeypatch.setattr(mx.distributed, "all_gather", fake)
    gathered = ScoreGather(_Group(2), [2, 1])(every[:, :, :2])
    assert mx.array_equal(gathered, every)


# ── tensor parallelism: two ranks against one process ─────────────────────────────────────────


@pytest.fixture(scope="module")
def tensor_parallel(tiny, smollm2_gguf, tmp_path_factory) -> tuple[dict, dict]:
    """One launch and one lone run of the worker on three models (tiny float32, tiny 4-bit kept
    quantized, the default model split unevenly: 3 kv heads as 2 + 1)."""
    out = tmp_path_factory.mktemp("tp-out")
    models = [tiny["f32"], f"{tiny['q4']}:quantized", smollm2_gguf]
    worker = [sys.executable, HERE / "distributed_worker.py"]
    one = alone([*worker, out / "one.pkl", TOKENS, *models])
    assert one.returncode == 0, one.stderr
    two = launch([*worker, out / "two.pkl", TOKENS, *models])
    assert two.returncode == 0, two.stderr
    load_ = lambda name: pickle.loads((out / name).read_bytes())
    return load_("one.pkl"), load_("two.pkl")


MODELS = ["f32", "q4", "smollm2"]


def _pick(results: dict, which: str) -> dict:
    return list(results["models"].values())[MODELS.index(which)]


@pytest.mark.parametrize("which", MODELS)
def test_tensor_parallel_logits_match_one_process(tensor_parallel, which) -> None:
    one, two = (_pick(r, which) for r in tensor_parallel)
    assert tensor_parallel[1]["size"] == 2
    assert two["ranks_agree"], "the ranks' logits differ: their sampling could diverge"
    for a, b in zip(one["logits"], two["logits"]):  # prefill, then two cached steps
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= LOGIT_TOL * np.abs(a).max()


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("sampler", ["greedy", "entropix"])
def test_tensor_parallel_tokens_and_metrics_match(tensor_parallel, which, sampler) -> None:
    one, two = (_pick(r, which)["runs"][sampler] for r in tensor_parallel)
    assert two["tokens"] == one["tokens"]  # entropix: the same seed draws the same tokens
    assert len(one["tokens"]) == TOKENS
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        for name in METRIC_NAMES:
            assert m2[name] == pytest.approx(m1[name], rel=METRIC_RTOL, abs=1e-7), name


# ── the commands under mlx.launch ─────────────────────────────────────────────────────────────


def test_run_under_launch_prints_once_and_matches(tiny, tmp_path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Say hello.")
    args = [ENTROPIX, "run", "-f", prompt, "-m", tiny["f32"], "-n", TOKENS, "--json"]
    two = launch(args)  # no --seed: the ranks must share rank 0's random one
    assert two.returncode == 0, two.stderr
    lines = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 1 is silent
    mine = lines[0]["summary"]
    one = alone([*args, "--seed", mine["seed"]])
    expected = json.loads(one.stdout)
    theirs = expected["summary"]
    assert lines[0]["text"] == expected["text"]
    assert mine["tokens"] == theirs["tokens"] == TOKENS
    assert mine["strategies"] == theirs["strategies"] and mine["sampler"] == "entropix"


def test_chat_under_launch_answers_like_one_process(tiny) -> None:
    args = [ENTROPIX, "chat", "-m", tiny["f32"], "-n", TOKENS, "--seed", 1, "--plain"]
    stdin = "hello\n/seed 5\nhi again\n/exit\n"
    two, one = launch(args, stdin=stdin), alone(args, stdin=stdin)
    assert two.returncode == 0, two.stderr
    # Timings differ, and so does the session file's timestamped name (which may wrap).
    timing = ("loaded in", "tok/s", "hit --max-tokens")  # (a summary line may wrap)
    kept = re.compile(r"kept in [\s\S]*?\.jsonl")
    answers = lambda out: [
        line for line in kept.sub("", out).splitlines() if not any(t in line for t in timing)
    ]
    assert answers(two.stdout) == answers(one.stdout)
    assert two.stdout.count("› hello") == 1  # one rank draws


def test_eval_data_parallel_equals_one_process(tiny, tmp_path) -> None:
    questions = tmp_path / "q.jsonl"
    lines = (HERE.parent / "entropix_mlx/lab/data/questions.jsonl").read_text().splitlines()
    questions.write_text("\n".join(lines[:3]) + "\n")
    eval_ = [ENTROPIX, "eval", "-q", questions, "-m", tiny["f32"], "-s", "greedy,entropix"]
    args = lambda out: [*eval_, "-n", 3, "--seeds", 2, "--jsonl", out, "--plain"]
    two, one = launch(args(tmp_path / "two.jsonl")), alone(args(tmp_path / "one.jsonl"))
    assert two.returncode == 0, two.stderr
    assert one.returncode == 0, one.stderr
    read = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
    a, b = read("one.jsonl"), read("two.jsonl")
    assert len(a) == len(b) == 3 * (1 + 2) + 1  # greedy once, entropix twice (--seeds 2)
    for record in (*a[:-1], *b[:-1]):
        record.pop("decode_seconds")
    assert a[:-1] == b[:-1]  # every answer, in the same order
    for row in (*a[-1]["summary"]["samplers"], *b[-1]["summary"]["samplers"]):
        row.pop("tokens_per_second")
    assert a[-1] == b[-1]
    table = lambda out: [line for line in out.splitlines() if "%" in line]
    assert [line.split()[:3] for line in table(two.stdout)] == [
        line.split()[:3] for line in table(one.stdout)
    ]


def test_tune_data_parallel_writes_the_one_process_profile(tiny, tmp_path) -> None:
    questions = tmp_path / "q.jsonl"
    lines = (HERE.parent / "entropix_mlx/lab/data/questions.jsonl").read_text().splitlines()
    questions.write_text("\n".join(lines[:3]) + "\n")
    tune = [ENTROPIX, "tune", "-m", tiny["f32"], "--dev", questions, "--no-report"]
    args = lambda out: [*tune, "--candidates", 3, "--rounds", 1, "-n", 2, "--out", out]
    two, one = launch(args(tmp_path / "two.toml")), alone(args(tmp_path / "one.toml"))
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    assert (tmp_path / "two.toml").read_text() == (tmp_path / "one.toml").read_text()


def test_heads_that_cannot_be_split_fail_in_one_line(tiny, tmp_path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hi")
    result = launch([ENTROPIX, "run", "-f", prompt, "-m", tiny["one-kv"], "-n", 2])
    # (mlx.launch itself exits 0 whatever its ranks do; it warns that a rank exited with 1.)
    assert "rank 0 exited with code 1" in result.stderr
    ours = [line for line in result.stderr.splitlines() if "key-value heads" in line]
    assert len(ours) == 1 and ours[0].startswith("entropix: "), result.stderr


def test_unreachable_peer_is_one_line_error(tiny, tmp_path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in (free_port(), free_port())]))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hi")
    result = subprocess.run(
        [str(a) for a in (ENTROPIX, "run", "-f", prompt, "-m", tiny["f32"], "-n", 2)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env()
        | {"MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile), "ENTROPIX_CONNECT_TIMEOUT": "3"},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not reach the other ranks" in lines[0], result.stderr
