"""Load test for `entropix serve`: N concurrent streaming clients on loopback.

Starts `entropix serve` on 127.0.0.1 (a free port), waits for /health, then runs N clients that
each stream chat completions back to back until `--requests` have finished or `--duration`
seconds have passed. Reports requests/s, completion tokens/s, p50/p95 time to first token,
errors (anything but a deliberate 429, which the client retries after Retry-After as the openai
client does) and the server's resident memory sampled every 50 requests.

    .venv/bin/python benchmarks/serve_load.py --clients 8 --requests 500 --max-tokens 8

Not part of the test suite. Loopback only: the server is bound to 127.0.0.1 and the clients
connect there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"
TOPICS = ["the sea", "a lamp", "bread", "rain", "a bicycle", "maths", "owls", "the moon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    entropix = Path(sys.executable).parent / "entropix"
    cmd = [
        str(entropix),
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--queue",
        str(args.queue),
        "--max-tokens",
        str(args.max_tokens),
        "--sampler",
        args.sampler,
    ]
    if args.model:
        cmd += ["--model", args.model]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {proc.stderr.read()}")
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the server did not become ready")


class Load:
    def __init__(self, url: str, args: argparse.Namespace, pid: int) -> None:
        self.url, self.args, self.pid = url, args, pid
        self.ttft: list[float] = []
        self.tokens = 0
        self.done = 0
        self.busy = 0  # deliberate 429s (retried)
        self.errors: list[str] = []
        self.rss: list[tuple[int, float]] = []
        self.started = 0
        self.deadline = 0.0

    def more(self) -> bool:
        return self.started < self.args.requests and time.monotonic() < self.deadline

    async def client(self, n: int, http: httpx.AsyncClient) -> None:
        while self.more():
            self.started += 1
            i = self.started
            body = {
                "messages": [
                    {"role": "user", "content": f"Say one thing about {TOPICS[i % len(TOPICS)]}."}
                ],
                "max_tokens": self.args.max_tokens,
                "seed": i,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            await self.one(http, body)

    async def one(self, http: httpx.AsyncClient, body: dict) -> None:
        while True:
            t0 = time.perf_counter()
            first = None
            try:
                async with http.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                    if r.status_code == 429:
                        self.busy += 1
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    if r.status_code != 200:
                        self.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                        return
                    usage, finished = None, False
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            finished = True
                            break
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            self.errors.append(f"stream error: {chunk['error']['message']}")
                            return
                        if (
                            chunk["choices"]
                            and chunk["choices"][0]["delta"].get("content")
                            and first is None
                        ):
                            first = time.perf_counter() - t0
                        usage = chunk.get("usage") or usage
            except httpx.HTTPError as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                return
            if not finished or usage is None:
                self.errors.append("stream ended without usage and [DONE]")
                return
            self.tokens += usage["completion_tokens"]
            self.ttft.append(first if first is not None else time.perf_counter() - t0)
            self.done += 1
            if self.done % 50 == 0:
                self.rss.append((self.done, rss_mib(self.pid)))
            return

    async def run(self) -> float:
        limits = httpx.Limits(max_connections=self.args.clients * 2)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            self.rss.append((0, rss_mib(self.pid)))
            t0 = time.perf_counter()
            self.deadline = time.monotonic() + self.args.duration
            await asyncio.gather(*(self.client(n, http) for n in range(self.args.clients)))
            return time.perf_counter() - t0


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500, help="stop after this many requests")
    ap.add_argument("--duration", type=float, default=900, help="… or after this many seconds")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--queue", type=int, default=8, help="server --queue (below --clients: 429s)")
    ap.add_argument("--sampler", default="entropix")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start_server(args, port)
    try:
        asyncio.run(wait_ready(url, proc))
        load = Load(url, args, proc.pid)
        wall = asyncio.run(load.run())
        props = httpx.get(url + "/props").json()
    finally:
        proc.terminate()
        proc.wait(30)
    rss = [m for _, m in load.rss]
    half = len(rss) // 2
    print(
        f"clients {args.clients} · max_tokens {args.max_tokens} · sampler {args.sampler} · "
        f"queue {args.queue} · {os.cpu_count()} CPUs (shared machine)"
    )
    print(f"requests   {load.done} in {wall:.1f} s = {load.done / wall:.2f} req/s")
    print(f"tokens     {load.tokens} = {load.tokens / wall:.1f} completion tok/s (aggregate)")
    print(
        f"TTFT       p50 {percentile(load.ttft, 50):.2f} s · p95 {percentile(load.ttft, 95):.2f} s"
    )
    print(f"errors     {len(load.errors)} unexpected · {load.busy} deliberate 429 (retried)")
    for e in load.errors[:5]:
        print(f"  {e}")
    print("server RSS " + " ".join(f"{n}:{m:.0f}" for n, m in load.rss) + " MiB (after N requests)")
    if half:
        first, second = max(rss[:half]), max(rss[half:])
        print(
            f"           max first half {first:.0f} MiB · second half {second:.0f} MiB"
            f" · growth {second - first:+.0f} MiB"
        )
    print(f"server     completed {props['completed']} · cancelled {props['cancelled']}")
    sys.exit(1 if load.errors else 0)


if __name__ == "__main__":
    main()
