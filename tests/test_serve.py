"""`entropix serve` against a scripted fake engine (tests/serve_fake.py): the real app on uvicorn on
an ephemeral loopback port, driven by the official `openai` client and raw HTTP (SERVE.md §1.11:
shapes, logprobs and metrics, reproducibility and cache reuse, every error row, cancellation and
queueing). Each request takes milliseconds."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from openai import APIError, OpenAI, RateLimitError
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from serve_fake import EOT, FakeEngine, FakeLayer

from entropix_mlx.engine import config as profiles
from entropix_mlx.engine.records import read_run
from entropix_mlx.serve import protocol
from entropix_mlx.serve.app import Server, Settings
from entropix_mlx.serve.runner import Background
from entropix_mlx.serve.slots import SlotPool
from entropix_mlx.serve.worker import Worker

HI = [{"role": "user", "content": "Hi"}]


def start(
    engine: FakeEngine | None = None, *, queue: int = 8, loader=None, **settings
) -> Background:
    engine = engine or FakeEngine()
    worker = Worker(loader or (lambda: engine), queue_size=queue)
    server = Server(worker, Settings(**settings))
    bg = Background(server).start()
    deadline = time.time() + 5
    while loader is None and worker.state != "ready" and time.time() < deadline:
        time.sleep(0.005)
    return bg


@pytest.fixture(scope="module")
def served():
    bg = start()
    yield bg
    bg.stop()


def client(url: str, key: str = "x") -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} in a response body")


def strict(text: str):
    return json.loads(text, parse_constant=_no_constant)


def sse(url: str, body: dict, path: str = "/v1/chat/completions") -> list[str]:
    """Every line of a streamed response, comments included."""
    with httpx.stream("POST", url + path, json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line for line in r.iter_lines() if line]


def data_lines(lines: list[str]) -> list[dict]:
    return [
        strict(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"
    ]


def body(**extra) -> dict:
    return {"messages": HI, "max_tokens": 12, "seed": 7, **extra}


# ────────────────────────────────────────────────────────────── 1. shapes


def test_stream_shapes_and_same_text_as_non_stream(served):
    lines = sse(
        served.url,
        body(stream=True, logprobs=True, top_logprobs=2, stream_options={"include_usage": True}),
    )
    assert lines[0].startswith(": queued")
    assert any(line.startswith(": prefill ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = data_lines(lines)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == "stop" and finish["delta"] == {}
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])

    whole = httpx.post(served.url + "/v1/chat/completions", json=body(logprobs=True), timeout=30)
    response = ChatCompletion.model_validate(strict(whole.text))
    assert response.choices[0].message.content == streamed
    assert "é" in streamed and " ..." in streamed  # the split character and the insertion


def test_openai_client_reads_the_metrics(served):
    api = client(served.url)
    stream = api.chat.completions.create(
        model="anything",
        messages=HI,
        max_tokens=12,
        seed=3,
        stream=True,
        extra_body={"entropix": {"sampler": "greedy"}},
    )
    records, summary, text = [], None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        text += chunk.choices[0].delta.content or ""
        extra = chunk.choices[0].model_extra.get("entropix")
        if extra:
            records += extra["tokens"]
            summary = extra.get("summary", summary)
    assert text and records and summary is not None
    assert {r["strategy"] for r in records} == {"greedy"}
    assert summary["tokens"] == len(records) and summary["sampler"] == "greedy"
    done = api.chat.completions.create(
        model="m",
        messages=HI,
        max_tokens=12,
        seed=3,
        extra_body={"entropix": {"sampler": "greedy"}},
    )
    assert done.choices[0].message.content == text
    assert done.model == "fake-model"
    assert done.choices[0].model_extra["entropix"]["summary"]["tokens"] == len(records)


def test_completions_endpoint_legacy_logprobs(served):
    raw = httpx.post(
        served.url + "/v1/completions",
        json={"prompt": "Once", "max_tokens": 6, "seed": 1, "logprobs": 2},
    )
    c = Completion.model_validate(strict(raw.text))
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    streamed = client(served.url).completions.create(
        model="m", prompt="Once", max_tokens=6, seed=1, stream=True
    )
    text = "".join(ch.choices[0].text for ch in streamed if ch.choices)
    assert text == c.choices[0].text


# ────────────────────────────────────────────────────────────── 2. logprobs and metrics


def _stream_parts(chunks: list[dict]) -> tuple[str, list[dict], list[dict], dict]:
    content, entries, records, summary = "", [], [], {}
    for c in chunks:
        for ch in c["choices"]:
            content += ch.get("delta", {}).get("content", "")
            entries += (ch.get("logprobs") or {}).get("content", [])
            extra = ch.get("entropix") or {}
            records += extra.get("tokens", [])
            summary = extra.get("summary", summary)
    return content, entries, records, summary


@pytest.mark.parametrize("sampler", ["entropix", "greedy"])
def test_logprobs_and_records_agree(served, tmp_path, sampler):
    k = 3
    chunks = data_lines(
        sse(
            served.url,
            body(stream=True, logprobs=True, top_logprobs=k, entropix={"sampler": sampler}),
        )
    )
    content, entries, records, summary = _stream_parts(chunks)
    assert "".join(e["token"] for e in entries) == content
    assert b"".join(bytes(e["bytes"]) for e in entries) == content.encode()
    for e in entries:
        assert e["logprob"] <= 0
        tops = [t["logprob"] for t in e["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)
        if e["logprob"] != protocol.NON_FINITE_LOGPROB:
            assert len(tops) == k and e["logprob"] == tops[0]  # the fake picks the most likely
    assert -9999.0 in [e["logprob"] for e in entries]  # the second clarify token: NaN → -9999
    assert any(r["logprob"] is None for r in records)  # … and null in its record
    # Chunks list the same tokens in logprobs and records; the end-of-turn token only in records.
    assert records[-1]["token_id"] == EOT and len(entries) == len(records) - 1
    assert Counter(r["strategy"] for r in records) == summary["strategies"]
    assert summary["tokens"] == len(records)
    if sampler == "greedy":
        assert {r["strategy"] for r in records} == {"greedy"}
    # The records are a valid run file: `plot`/`replay` read them back.
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*records, {"summary": summary}]) + "\n")
    groups, summaries = read_run(path)
    assert len(groups[0]) == len(records) and summaries[0]["seed"] == 7


def test_metrics_can_be_turned_off(served):
    chunks = data_lines(sse(served.url, body(stream=True, entropix={"metrics": False})))
    assert all("entropix" not in ch for c in chunks for ch in c["choices"])
    bg = start(metrics=False)
    try:
        r = strict(httpx.post(bg.url + "/v1/chat/completions", json=body()).text)
        assert "entropix" not in r["choices"][0]
    finally:
        bg.stop()


def test_usage_counts_the_end_of_turn_token(served):
    r = strict(httpx.post(served.url + "/v1/chat/completions", json=body()).text)
    summary = r["choices"][0]["entropix"]["summary"]
    assert (
        r["usage"]["completion_tokens"]
        == summary["tokens"]
        == len(r["choices"][0]["entropix"]["tokens"])
    )
    assert r["choices"][0]["finish_reason"] == "stop"


def test_length_finish_and_context_maps_to_length(served):
    r = strict(httpx.post(served.url + "/v1/chat/completions", json=body(max_tokens=2)).text)
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 2


# ────────────────────────────────────────────────────────────── 3. reproducibility, cache, stops


def _tokens(url: str, **extra) -> tuple[list[int], str]:
    r = strict(httpx.post(url + "/v1/chat/completions", json=body(**extra)).text)
    return [t["token_id"] for t in r["choices"][0]["entropix"]["tokens"]], r["system_fingerprint"]


def test_same_seed_same_tokens_and_fingerprint(served):
    assert _tokens(served.url, seed=11) == _tokens(served.url, seed=11)
    assert _tokens(served.url, seed=11)[0] != _tokens(served.url, seed=12)[0]
    assert (
        _tokens(served.url, seed=11)[1]
        != _tokens(served.url, seed=11, entropix={"set": {"high_ent": 4.2}})[1]
    )


def test_cache_reuse_reports_cached_tokens_and_changes_nothing(served):
    first = strict(httpx.post(served.url + "/v1/chat/completions", json=body(seed=5)).text)
    answer = first["choices"][0]["message"]["content"]
    turn2 = {
        "messages": [
            *HI,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "More"},
        ],
        "max_tokens": 12,
        "seed": 5,
    }
    warm = strict(httpx.post(served.url + "/v1/chat/completions", json=turn2).text)
    assert (
        warm["usage"]["prompt_tokens_details"]["cached_tokens"]
        >= first["usage"]["prompt_tokens"] - 1
    )
    cold = strict(
        httpx.post(
            served.url + "/v1/chat/completions", json=turn2 | {"entropix": {"cache_prompt": False}}
        ).text
    )
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert cold["choices"][0]["message"] == warm["choices"][0]["message"]


def test_stop_strings_split_over_tokens_never_appear(served):
    r = strict(httpx.post(served.url + "/v1/chat/completions", json=body(logprobs=True)).text)
    entries = r["choices"][0]["logprobs"]["content"]
    first, second = entries[0]["token"], next(e["token"] for e in entries[1:] if e["token"])
    stop = first[-2:] + second[:1]  # spans the first two tokens that complete text
    for stream in (False, True):
        if stream:
            content, *_ = _stream_parts(
                data_lines(sse(served.url, body(stream=True, stop=[stop, "zz"])))
            )
            finish = "stop"
        else:
            out = strict(httpx.post(served.url + "/v1/chat/completions", json=body(stop=stop)).text)
            content, finish = (
                out["choices"][0]["message"]["content"],
                out["choices"][0]["finish_reason"],
            )
        assert stop not in content and content == first[:-2]
        assert finish == "stop"


def test_final_assistant_message_is_a_prefill(served):
    engine_ids = []
    msgs = [*HI, {"role": "assistant", "content": "Sure,"}]
    r = httpx.post(served.url + "/apply-template", json={"messages": HI})
    assert strict(r.text)["prompt"].endswith("[assistant]")
    tok = strict(
        httpx.post(served.url + "/tokenize", json={"content": "[user]Hi<eot>[assistant]Sure,"}).text
    )
    engine_ids = tok["tokens"]
    out = strict(
        httpx.post(
            served.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 3}
        ).text
    )
    assert out["usage"]["prompt_tokens"] == len(engine_ids) + 1  # + BOS


def test_slots_take_the_longest_prefix_then_the_least_recently_used():
    pool = SlotPool(2, lambda: [FakeLayer()])
    a, keep = pool.acquire([1, 2, 3])
    assert keep == 0
    a.cache[0].offset = 3
    a.settle([1, 2, 3])
    b, keep = pool.acquire([9, 9])
    assert b is not a and keep == 0  # an unused slot before evicting a's prefix
    b.cache[0].offset = 2
    b.settle([9, 9])
    c, keep = pool.acquire([1, 2, 3, 4])
    assert c is a and keep == 3
    c, keep = pool.acquire([1, 2, 3])
    assert c is a and keep == 2  # at least one token is fed
    d, keep = pool.acquire([5])  # no match: the least recently used (b)
    assert d is b and keep == 0 and b.cache[0].offset == 0


# ────────────────────────────────────────────────────────────── 4. errors


def _raw(url: str, request: bytes) -> tuple[int, dict, str]:
    """Send raw bytes; the status, headers and body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            part = s.recv(65536)
            if not part:
                break
            data += part
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest.decode()


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


BAD = [
    # (json body or raw bytes, status, type, param, code)
    (b"{not json", 400, "invalid_request_error", None, None),
    (b"[1, 2]", 400, "invalid_request_error", None, None),
    (
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        400,
        "invalid_request_error",
        None,
        None,
    ),
    ({"messages": []}, 400, "invalid_request_error", "messages", None),
    ({}, 400, "invalid_request_error", "messages", None),
    ({"messages": "hi"}, 400, "invalid_request_error", "messages", None),
    (
        {"messages": [*HI, {"role": "robot", "content": "x"}]},
        400,
        "invalid_request_error",
        "messages[1].role",
        None,
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        400,
        "invalid_request_error",
        "messages[0].content[0].type",
        None,
    ),
    (
        {"messages": [{"role": "user", "content": 5}]},
        400,
        "invalid_request_error",
        "messages[0].content",
        None,
    ),
    ({"messages": [{"role": "user"}]}, 400, "invalid_request_error", "messages[0].content", None),
    ({"messages": HI, "temperature": 3}, 400, "invalid_request_error", "temperature", None),
    ({"messages": HI, "temperature": "hot"}, 400, "invalid_request_error", "temperature", None),
    ({"messages": HI, "top_p": 0}, 400, "invalid_request_error", "top_p", None),
    ({"messages": HI, "max_tokens": 0}, 400, "invalid_request_error", "max_tokens", None),
    (
        {"messages": HI, "max_completion_tokens": -1},
        400,
        "invalid_request_error",
        "max_completion_tokens",
        None,
    ),
    (
        {"messages": HI, "logprobs": True, "top_logprobs": 21},
        400,
        "invalid_request_error",
        "top_logprobs",
        None,
    ),
    ({"messages": HI, "top_logprobs": 2}, 400, "invalid_request_error", "top_logprobs", None),
    (
        {"messages": HI, "stop": ["a", "b", "c", "d", "e"]},
        400,
        "invalid_request_error",
        "stop",
        None,
    ),
    ({"messages": HI, "n": 2}, 400, "invalid_request_error", "n", None),
    ({"messages": HI, "seed": "x"}, 400, "invalid_request_error", "seed", None),
    ({"messages": HI, "stream": "yes"}, 400, "invalid_request_error", "stream", None),
    (
        {"messages": HI, "entropix": {"sampler": "magic"}},
        400,
        "invalid_request_error",
        "entropix.sampler",
        None,
    ),
    (
        {"messages": HI, "entropix": {"profile": "nope"}},
        400,
        "invalid_request_error",
        "entropix.profile",
        None,
    ),
    (
        {"messages": HI, "entropix": {"profile": "/etc/passwd"}},
        400,
        "invalid_request_error",
        "entropix.profile",
        None,
    ),
    (
        {"messages": HI, "entropix": {"set": {"bogus": 1}}},
        400,
        "invalid_request_error",
        "entropix.set.bogus",
        None,
    ),
    (
        {"messages": HI, "entropix": {"set": {"high_ent": -1}}},
        400,
        "invalid_request_error",
        "entropix.set.high_ent",
        None,
    ),
    (
        {"messages": HI, "entropix": {"colour": 1}},
        400,
        "invalid_request_error",
        "entropix.colour",
        None,
    ),
    (
        {"messages": HI, "tools": [{"type": "function"}]},
        400,
        "invalid_request_error",
        "tools",
        "unsupported_parameter",
    ),
    (
        {"messages": HI, "tool_choice": "auto"},
        400,
        "invalid_request_error",
        "tool_choice",
        "unsupported_parameter",
    ),
    (
        {"messages": HI, "functions": [{}]},
        400,
        "invalid_request_error",
        "functions",
        "unsupported_parameter",
    ),
    (
        {"messages": HI, "response_format": {"type": "json_schema"}},
        400,
        "invalid_request_error",
        "response_format",
        "unsupported_parameter",
    ),
    (
        {"messages": HI, "presence_penalty": 0.5},
        400,
        "invalid_request_error",
        "presence_penalty",
        "unsupported_parameter",
    ),
    (
        {"messages": HI, "frequency_penalty": 1},
        400,
        "invalid_request_error",
        "frequency_penalty",
        "unsupported_parameter",
    ),
    (
        {"messages": HI, "logit_bias": {"5": 1}},
        400,
        "invalid_request_error",
        "logit_bias",
        "unsupported_parameter",
    ),
    (
        {"messages": [{"role": "user", "content": "x" * 5000}]},
        400,
        "invalid_request_error",
        "messages",
        "context_length_exceeded",
    ),
]


@pytest.mark.parametrize("request_body,status,kind,param,code", BAD)
def test_bad_input(served, request_body, status, kind, param, code):
    raw = request_body if isinstance(request_body, bytes) else json.dumps(request_body).encode()
    r = httpx.post(
        served.url + "/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    err = strict(r.text)["error"]
    assert (r.status_code, err["type"], err["param"], err["code"]) == (status, kind, param, code)
    assert err["message"] and "Traceback" not in r.text
    if param:
        assert param.split(".")[-1].split("[")[0] in err["message"]


def test_accepted_and_ignored_fields(served):
    extra = {
        "user": "u",
        "metadata": {"a": "b"},
        "store": False,
        "parallel_tool_calls": False,
        "service_tier": "auto",
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "tools": [],
        "model": "gpt-4o",
    }
    r = httpx.post(served.url + "/v1/chat/completions", json=body(**extra))
    assert r.status_code == 200, r.text


def test_openai_client_raises_on_bad_input(served):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as e:
        client(served.url).chat.completions.create(model="m", messages=HI, n=2)
    assert e.value.body["param"] == "n"


def test_http_level_errors(served):
    r = httpx.get(served.url + "/v1/chat/completions")
    assert (
        r.status_code == 405 and r.headers["allow"] == "POST" and strict(r.text)["error"]["message"]
    )
    r = httpx.get(served.url + "/v1/nothing")
    assert r.status_code == 404 and strict(r.text)["error"]["type"] == "not_found_error"
    status, _, text = _raw(
        served.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 411 and strict(text)["error"]["type"] == "invalid_request_error"
    big = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n"
        b"Connection: close\r\n\r\n{"
    )
    status, _, text = _raw(served.url, big)
    assert status == 413 and "MiB" in strict(text)["error"]["message"]


def test_api_key():
    bg = start(api_key="sekrit")
    try:
        assert httpx.get(bg.url + "/health").status_code == 200  # exempt
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.post(bg.url + "/v1/chat/completions", json=body(), headers=headers)
            assert (
                r.status_code == 401 and strict(r.text)["error"]["type"] == "authentication_error"
            )
        from openai import AuthenticationError

        with pytest.raises(AuthenticationError):
            client(bg.url, "wrong").models.list()
        assert client(bg.url, "sekrit").models.list().data[0].id == "fake-model"
    finally:
        bg.stop()


def test_cors_only_for_the_allowed_origin(served):
    r = httpx.get(served.url + "/health", headers={"Origin": "http://evil"})
    assert "access-control-allow-origin" not in r.headers
    bg = start(allowed_origin="http://page")
    try:
        r = httpx.options(
            bg.url + "/v1/chat/completions",
            headers={"Origin": "http://page", "Access-Control-Request-Method": "POST"},
        )
        assert r.headers["access-control-allow-origin"] == "http://page"
        r = httpx.get(bg.url + "/health", headers={"Origin": "http://evil"})
        assert "access-control-allow-origin" not in r.headers
    finally:
        bg.stop()


def test_failure_before_headers_is_a_500_without_traceback():
    class Broken(FakeEngine):
        def render_chat(self, messages, *, add_generation_prompt=True):
            raise RuntimeError("template exploded")

    bg = start(Broken())
    try:
        r = httpx.post(bg.url + "/v1/chat/completions", json=body())
        assert r.status_code == 500 and r.headers["x-should-retry"] == "false"
        assert strict(r.text)["error"]["type"] == "server_error" and "Traceback" not in r.text
    finally:
        bg.stop()


def test_failure_after_the_stream_started_ends_with_an_error_event():
    bg = start(FakeEngine(fail=True))
    try:
        lines = sse(bg.url, body(stream=True))
        assert lines[-1] != "data: [DONE]"
        assert strict(lines[-1][6:])["error"]["type"] == "server_error"
        with pytest.raises(APIError):
            for _ in client(bg.url).chat.completions.create(model="m", messages=HI, stream=True):
                pass
        assert httpx.get(bg.url + "/health").status_code == 200  # the worker survives
    finally:
        bg.stop()


def test_health_is_503_while_loading_then_200():
    loaded = threading.Event()

    def slow_loader() -> FakeEngine:
        loaded.wait(5)
        return FakeEngine()

    bg = start(loader=slow_loader)
    try:
        r = httpx.get(bg.url + "/health")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert strict(r.text)["error"]["type"] == "unavailable_error"
        r = httpx.post(bg.url + "/v1/chat/completions", json=body())
        assert r.status_code == 503
        assert strict(httpx.get(bg.url + "/props").text)["state"] == "loading"
        loaded.set()
        deadline = time.time() + 5
        while httpx.get(bg.url + "/health").status_code != 200 and time.time() < deadline:
            time.sleep(0.01)
        assert httpx.get(bg.url + "/health").json() == {"status": "ok"}
    finally:
        loaded.set()
        bg.stop()


def test_a_model_that_fails_to_load_is_503_naming_why():
    def broken() -> FakeEngine:
        raise RuntimeError("no such weights")

    bg = start(loader=broken)
    try:
        time.sleep(0.05)
        r = httpx.get(bg.url + "/health")
        assert r.status_code == 503 and "no such weights" in strict(r.text)["error"]["message"]
    finally:
        bg.stop()


def test_models_props_metrics_and_tokenizer_endpoints(served):
    models = strict(httpx.get(served.url + "/v1/models").text)
    assert (
        models["data"][0]["id"] == "fake-model" and models["data"][0]["owned_by"] == "entropix-mlx"
    )
    assert set(models["data"][0]["meta"]) == {
        "n_ctx",
        "n_params",
        "quantization",
        "layout",
        "device",
    }
    props = strict(httpx.get(served.url + "/props").text)
    for key in ("low_ent", "high_ent", "med_ent", "low_vent", "high_vent"):
        assert key in props["sampler_config"]
    assert props["samplers"] == list(profiles.SAMPLERS) == list(protocol.SAMPLERS)
    assert "reference" in props["profiles"] and props["max_tokens"] == 512
    assert {
        "processing",
        "queued",
        "cancelled",
        "queue_size",
        "cache_slots",
        "system_fingerprint",
    } <= set(props)
    text = httpx.get(served.url + "/metrics").text
    assert "entropix_requests_total{" in text and "entropix_queue_depth 0" in text
    ids = strict(httpx.post(served.url + "/tokenize", json={"content": "hé"}).text)["tokens"]
    assert (
        strict(httpx.post(served.url + "/detokenize", json={"tokens": ids}).text)["content"] == "hé"
    )
    r = httpx.post(served.url + "/detokenize", json={"tokens": [10**9]})
    assert r.status_code == 400 and strict(r.text)["error"]["param"] == "tokens[0]"


def test_save_dir_writes_run_files(tmp_path):
    bg = start(save_dir=tmp_path)
    try:
        r = strict(httpx.post(bg.url + "/v1/chat/completions", json=body()).text)
        path = tmp_path / f"{r['id']}.jsonl"
        groups, summaries = read_run(path)
        assert [t["token_id"] for t in groups[0]] == [
            t["token_id"] for t in r["choices"][0]["entropix"]["tokens"]
        ]
        assert (
            summaries[0]["messages"] == HI
            and summaries[0]["prompt"] == "Hi"
            and summaries[0]["raw"] is False
        )
    finally:
        bg.stop()


# ────────────────────────────────────────────────────────────── 5. cancellation and queueing


def _props(url: str) -> dict:
    return strict(httpx.get(url + "/props").text)


def _wait(predicate, seconds: float = 2.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


LONG = {"messages": HI, "max_tokens": 5000, "seed": 1, "stream": True}


def test_closing_a_stream_frees_the_worker_within_a_token():
    engine = FakeEngine(token_delay=0.02)
    bg = start(engine, max_tokens=5000)
    try:
        with httpx.stream("POST", bg.url + "/v1/chat/completions", json=LONG) as r:
            data = (line for line in r.iter_lines() if line.startswith("data: "))
            next(data), next(data), next(data)
        assert _wait(lambda: _props(bg.url)["cancelled"] == 1 and _props(bg.url)["processing"] == 0)
        t0 = time.perf_counter()
        r = httpx.post(bg.url + "/v1/chat/completions", json=body())
        assert (
            r.status_code == 200 and time.perf_counter() - t0 < 1.0
        )  # the next one starts at once
    finally:
        bg.stop()


def test_closing_during_prefill_cancels():
    engine = FakeEngine(prefill_delay=0.05, prefill_chunk=4)
    bg = start(engine)
    try:
        long_prompt = {"messages": [{"role": "user", "content": "x" * 400}], "stream": True}
        with httpx.stream("POST", bg.url + "/v1/chat/completions", json=long_prompt) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith(": prefill"))
        assert _wait(lambda: _props(bg.url)["cancelled"] == 1 and _props(bg.url)["processing"] == 0)
    finally:
        bg.stop()


def test_a_vanished_non_streaming_client_cancels():
    bg = start(FakeEngine(token_delay=0.02), max_tokens=5000)
    try:
        payload = json.dumps(LONG | {"stream": False}).encode()
        host, port = bg.url.removeprefix("http://").split(":")
        s = socket.create_connection((host, int(port)))
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        assert _wait(lambda: _props(bg.url)["processing"] == 1)
        s.close()
        assert _wait(lambda: _props(bg.url)["cancelled"] == 1 and _props(bg.url)["processing"] == 0)
    finally:
        bg.stop()


def test_queue_full_is_429_and_a_queued_job_that_leaves_never_runs():
    engine = FakeEngine(token_delay=0.02)
    bg = start(engine, queue=1, max_tokens=5000)
    try:
        with httpx.stream("POST", bg.url + "/v1/chat/completions", json=LONG) as running:
            lines = running.iter_lines()  # kept: dropping a half-read iterator closes the socket
            next(line for line in lines if line.startswith(": prefill"))
            with httpx.stream(
                "POST", bg.url + "/v1/chat/completions", json=LONG | {"seed": 2}
            ) as queued:
                waiting = queued.iter_lines()
                assert next(waiting) == ": queued 1"
                assert _props(bg.url)["queued"] == 1
                with pytest.raises(RateLimitError) as e:
                    client(bg.url).chat.completions.create(model="m", messages=HI)
                assert e.value.response.headers["retry-after"] == "1"
                assert e.value.body["type"] == "server_busy"
            assert _wait(lambda: _props(bg.url)["queued"] == 0 and _props(bg.url)["cancelled"] == 1)
        assert _wait(lambda: _props(bg.url)["cancelled"] == 2)
        assert [j.seed for j in engine.jobs] == [1]  # the queued job never started
    finally:
        bg.stop()


def test_parallel_requests_equal_their_sequential_runs(served):
    seeds = [21, 22, 23]
    alone = [_tokens(served.url, seed=s)[0] for s in seeds]
    results: dict[int, list[int]] = {}

    def one(seed: int) -> None:
        results[seed] = _tokens(served.url, seed=seed)[0]

    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[s] for s in seeds] == alone


def test_shutdown_answers_queued_jobs_503():
    engine = FakeEngine(token_delay=0.02)
    bg = start(engine, max_tokens=5000)
    try:
        with httpx.stream("POST", bg.url + "/v1/chat/completions", json=LONG) as running:
            lines = running.iter_lines()  # kept: dropping a half-read iterator closes the socket
            next(line for line in lines if line.startswith(": prefill"))
            got: dict[str, int] = {}

            def queued() -> None:
                r = httpx.post(bg.url + "/v1/chat/completions", json=body(), timeout=10)
                got["status"] = r.status_code

            t = threading.Thread(target=queued)
            t.start()
            assert _wait(lambda: _props(bg.url)["queued"] == 1)
            bg.server.worker.shutdown()
            t.join(5)
            assert got["status"] == 503
    finally:
        bg.stop()


def test_protocol_samplers_match_the_engine():
    assert protocol.SAMPLERS == profiles.SAMPLERS


def test_strict_json_never_writes_nan():
    text = protocol.dumps({"a": float("nan"), "b": [float("inf")], "c": 1.5})
    assert strict(text) == {"a": None, "b": [None], "c": 1.5}


def test_the_readme_client_example_runs(served, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Serving over HTTP") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(code.replace("http://127.0.0.1:8080", served.url), {})
    out = capsys.readouterr().out
    assert "H=" in out and "argmax" in out


def test_cli_bad_flags_and_a_busy_port_are_one_line(monkeypatch, capsys):
    from conftest import run_main

    code, _, err = run_main(monkeypatch, capsys, ["serve", "--sampler", "magic"])
    assert code == 1 and err.count("\n") == 1 and "--sampler magic" in err
    code, _, err = run_main(monkeypatch, capsys, ["serve", "--queue", "0"])
    assert code == 2 and err.count("\n") == 1 and "--queue" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = run_main(monkeypatch, capsys, ["serve", "--port", str(port)])
    assert code == 1 and err.count("\n") == 1 and f"--port {port}: cannot listen" in err


def test_the_web_page_is_served_from_static(tmp_path, monkeypatch):
    from entropix_mlx.serve import app

    (tmp_path / "index.html").write_text("<!doctype html><title>entropix</title>")
    (tmp_path / "page.js").write_text("console.log(1)")
    monkeypatch.setattr(app, "STATIC", tmp_path)
    bg = start(api_key="k")  # the page itself needs no key; the API behind it does
    try:
        r = httpx.get(bg.url + "/")
        assert r.status_code == 200 and "<title>entropix</title>" in r.text
        assert r.headers["content-type"].startswith("text/html")
        r = httpx.get(bg.url + "/static/page.js")
        assert r.status_code == 200 and r.text == "console.log(1)"
        assert httpx.get(bg.url + "/props").status_code == 401
    finally:
        bg.stop()
