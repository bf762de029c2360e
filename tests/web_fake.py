"""A stand-in for `entropix serve` for the page's fast browser tests: the page's static files,
`/props` and a scripted `/v1/chat/completions` stream in SERVE.md's format. Test code, not shipped.

The script covers what the page must handle: every quadrant, the marked strategies, a clarify
insertion (null logprob), a token that is half a UTF-8 character (text ""), the end-of-turn record.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parents[1] / "entropix_mlx" / "serve" / "static"
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
CONFIG = {"low_ent": 0.1, "low_vent": 0.1, "high_ent": 5.0, "high_vent": 5.0, "med_ent": 3.0,
          "temperature": 0.666, "top_k": 27, "top_p": 0.9, "min_p": 0.03,
          "profile": "reference"}  # fmt: skip

# text, quadrant, strategy, entropy, varentropy, inserted
SCRIPT = [
    ("Hello", "LELV", "argmax", 0.05, 0.02, False),
    (",", "MID", "adaptive", 1.7, 3.1, False),
    (" wor", "LEHV", "explore", 2.2, 7.5, False),
    ("ld", "HEHV", "resample", 5.6, 9.0, False),
    (" …", "HELV", "clarify", 5.4, 0.05, True),
    (" caf", "MID", "adaptive", 2.5, 2.0, False),
    ("", "MID", "adaptive", 1.2, 1.1, False),  # the first byte of "é"
    ("é", "LELV", "argmax", 0.02, 0.01, False),
    ("!", "MID", "adaptive", 0.8, 1.4, False),
    ("\n", "MID", "adaptive", 0.9, 1.0, False),  # a line break alone: the page gives it a ↵
]


def record(
    i: int, text: str, quadrant: str, strategy: str, h: float, v: float, inserted: bool
) -> dict[str, Any]:
    return {
        "index": i, "token_id": 100 + i, "text": text,
        "logprob": None if inserted else -round(0.1 + h / 10, 4),
        "entropy": h, "varentropy": v,
        "attn_entropy": 2.0 + i / 10, "attn_varentropy": 0.5 + i / 100,
        "agreement": 0.01 * i, "interaction_strength": 3.0 + i / 7, "quadrant": quadrant,
        "strategy": strategy, "temperature": 0.0 if strategy == "argmax" else 0.9, "top_k": 27,
        "top_p": 0.9, "min_p": 0.03, "inserted": inserted, "elapsed": 0.1 * i,
    }  # fmt: skip


def answer_records(max_tokens: int) -> list[dict[str, Any]]:
    """The scripted answer cut to `max_tokens`, or repeated to fill it; an end-of-turn record closes
    a full script."""
    rows = [SCRIPT[i % len(SCRIPT)] for i in range(max_tokens)]
    out = [record(i, *row) for i, row in enumerate(rows)]
    if max_tokens == len(SCRIPT):
        out.append(record(len(out), "", "LELV", "argmax", 0.03, 0.02, False))
    return out


@dataclass
class FakeServer:
    delay: float = 0.0  # seconds between chunks
    metrics: bool = True  # False: no `entropix` objects (a server run with --no-metrics)
    api_key: str | None = None  # like --api-key: /props and the API want `Authorization: Bearer`
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0
    processing: int = 0

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _denied(self) -> bool:
                sent = self.headers.get("Authorization")
                if fake.api_key is None or sent == f"Bearer {fake.api_key}":
                    return False
                error = {
                    "error": {"message": "the API key is missing", "type": "authentication_error"}
                }
                self._send(401, json.dumps(error).encode(), "application/json")
                return True

            def do_GET(self) -> None:
                if self.path == "/props" and self._denied():
                    return
                if self.path == "/props":
                    props = {"model": "fake-model", "default_sampler": "entropix",
                             "profile": "reference", "profiles": ["auto", "reference"],
                             "sampler_config": CONFIG, "max_tokens": 512,
                             "processing": fake.processing,
                             "cancelled": fake.cancelled}  # fmt: skip
                    return self._send(200, json.dumps(props).encode(), "application/json")
                name = "index.html" if self.path == "/" else self.path.removeprefix("/static/")
                path = STATIC / name
                if "/" in name or not path.is_file():
                    return self._send(
                        404, b'{"error": {"message": "not found"}}', "application/json"
                    )
                self._send(
                    200, path.read_bytes(), TYPES.get(path.suffix, "application/octet-stream")
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self._denied():
                    return
                fake.requests.append(body)
                if (
                    body.get("entropix", {}).get("profile") == "nope"
                ):  # the server's 400 for a bad profile
                    error = {
                        "error": {
                            "message": "entropix.profile: no profile 'nope'; use auto, reference",
                            "type": "invalid_request_error",
                            "param": "entropix.profile",
                            "code": None,
                        }
                    }
                    return self._send(400, json.dumps(error).encode(), "application/json")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                fake.processing += 1
                try:
                    for line in fake.stream(body):
                        self.wfile.write(line.encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.cancelled += 1
                finally:
                    fake.processing -= 1
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def stream(self, body: dict[str, Any]):
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "fake-model",
        }

        def data(choices: list[dict[str, Any]], **extra: Any) -> str:
            if not self.metrics:
                choices = [{k: v for k, v in c.items() if k != "entropix"} for c in choices]
            return "data: " + json.dumps(base | {"choices": choices} | extra) + "\n\n"

        yield ": queued 1\n\n"
        time.sleep(self.delay * 4)
        yield ": prefill 6/12\n\n"
        time.sleep(self.delay * 4)
        yield data(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )
        records = answer_records(body.get("max_tokens", 16))
        end = records[-1] if records[-1]["text"] == "" else None
        body_records = records[:-1] if end else records
        held: list[dict[str, Any]] = []
        for rec in body_records:
            held.append(rec)
            if rec["text"] == "":
                continue
            time.sleep(self.delay)
            text = "".join(r["text"] for r in held)
            yield data(
                [
                    {
                        "index": 0,
                        "delta": {"content": text},
                        "finish_reason": None,
                        "entropix": {"tokens": held},
                    }
                ]
            )
            held = []
        summary = {
            "tokens": len(records), "prompt_tokens": 12, "prefill_tps": 120.0, "decode_tps": 9.5,
            "finish_reason": "stop" if end else "length",
            "strategies": _count(r["strategy"] for r in records),
            "quadrants": _count(r["quadrant"] for r in records),
            "mean_entropy": sum(r["entropy"] for r in records) / len(records),
            "model": "fake-model", "seed": body.get("seed", 7), "sampler": "entropix",
            "config": CONFIG,
            "messages": body["messages"],
        }  # fmt: skip
        last = held + ([end] if end else [])
        yield data([{"index": 0, "delta": {}, "finish_reason": summary["finish_reason"],
                     "entropix": {"tokens": last, "summary": summary}}])  # fmt: skip
        usage = {
            "prompt_tokens": 12,
            "completion_tokens": len(records),
            "total_tokens": 12 + len(records),
        }
        yield data([], usage=usage)
        yield "data: [DONE]\n\n"


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
