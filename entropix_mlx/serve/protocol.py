"""The OpenAI wire format: request validation, error bodies, strict JSON.

Pure Python (no MLX, no web framework): every bad input becomes an `ApiError` naming the field,
so the app only maps it to a response. SERVE.md §1.3 lists the fields honoured, §1.9 the errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant")
SAMPLERS = ("entropix", "greedy", "sample")  # = profiles.SAMPLERS; checked equal by a test
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20
# Fields that would change the answer's meaning if silently ignored.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call")
PENALTIES = ("frequency_penalty", "presence_penalty")
ENTROPIX_KEYS = ("sampler", "profile", "set", "metrics", "cache_prompt")
NON_FINITE_LOGPROB = -9999.0  # JSON has no -inf/NaN; OpenAI clients expect a number here


class ApiError(Exception):
    """An error answered as `{"error": {message, type, param, code}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str | None, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unsupported(param: str, why: str) -> ApiError:
    return bad(
        param,
        f"{param} is not supported by this server ({why}); remove it",
        "unsupported_parameter",
    )


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (the last line of defence)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON: never NaN or Infinity (they would break every standard parser)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(
            _finite(value), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise bad(None, "the request body is not UTF-8; send a JSON object") from None
    except ValueError as e:
        raise bad(None, f"the request body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(body, dict):
        raise bad(None, f"the request body is a JSON {type(body).__name__}; send a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ------------------------------------------------------------------------------------ fields


def _kind(value: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), "null" if value is None else "a number"
    )


def get_bool(body: dict[str, Any], name: str, default: bool, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(param or name, f"{param or name} must be true or false, not {_kind(value)}")
    return value


def get_int(
    body: dict[str, Any],
    name: str,
    default: int | None,
    lo: int | None = None,
    hi: int | None = None,
    param: str | None = None,
) -> int | None:
    value, param = body.get(name), param or name
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(param, f"{param} must be an integer, not {_kind(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad(param, f"{param}={value} is out of range: valid is {_range(lo, hi)}")
    return value


def get_float(
    body: dict[str, Any], name: str, default: float, lo: float, hi: float, *, open_lo: bool = False
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(name, f"{name} must be a number, not {_kind(value)}")
    if not (value > lo if open_lo else value >= lo) or not value <= hi:
        raise bad(
            name,
            f"{name}={value} is out of range: valid is {'(' if open_lo else '['}{lo:g}, {hi:g}]",
        )
    return float(value)


def _range(lo: int | None, hi: int | None) -> str:
    if hi is None:
        return f">= {lo}"
    return f"[{lo}, {hi}]"


# ------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Extension:
    """The request's `"entropix": {…}` object (None: the server's default)."""

    sampler: str | None = None
    profile: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: bool = True
    cache_prompt: bool = True


@dataclass(frozen=True)
class GenRequest:
    """A validated chat or completion request, before tokenization."""

    kind: str  # "chat" | "completion"
    messages: tuple[dict[str, str], ...]  # chat: system first; a final assistant one is a prefill
    prompt: str | None  # completion: the raw text
    max_tokens: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    extension: Extension
    model: str | None


def _text_content(content: Any, param: str, role: str) -> str:
    if content is None and role == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            where = f"{param}[{j}]"
            if not isinstance(part, dict):
                raise bad(where, f'{where} must be an object like {{"type": "text", "text": …}}')
            if part.get("type") != "text":
                kind = part.get("type")
                raise bad(
                    f"{where}.type",
                    f"{where}.type={kind!r} is not supported: this model reads text parts only",
                )
            if not isinstance(part.get("text"), str):
                raise bad(f"{where}.text", f"{where}.text must be a string")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(param, f"{param} must be a string or a list of text parts, not {_kind(content)}")


def parse_messages(value: Any) -> tuple[dict[str, str], ...]:
    """Messages with text content; `developer` → system, system messages moved to the front."""
    if value is None:
        raise bad("messages", "messages is missing; send a list of {role, content} objects")
    if not isinstance(value, list):
        raise bad(
            "messages", f"messages must be a list of {{role, content}} objects, not {_kind(value)}"
        )
    if not value:
        raise bad("messages", "messages is empty; send at least one message")
    system, rest = [], []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}]", f"messages[{i}] must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise bad(
                f"messages[{i}].role",
                f"messages[{i}].role={role!r} is not one of {', '.join(ROLES)}",
            )
        if "content" not in m and role != "assistant":
            raise bad(f"messages[{i}].content", f"messages[{i}].content is missing")
        for key in ("tool_calls", "function_call"):
            if m.get(key):
                raise unsupported(f"messages[{i}].{key}", "no tool calling")
        text = _text_content(m.get("content"), f"messages[{i}].content", role)
        role = "system" if role == "developer" else role
        (system if role == "system" else rest).append({"role": role, "content": text})
    if not rest:
        raise bad("messages", "messages holds only system messages; add a user message")
    return tuple(system + rest)


def _parse_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", "stop must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"stop has {len(stops)} strings; send at most {MAX_STOPS}")
    return tuple(s for s in stops if s)


def parse_extension(value: Any) -> Extension:
    """The `entropix` object; its sampler/profile/set are checked further against the model."""
    if value is None:
        return Extension()
    if not isinstance(value, dict):
        raise bad("entropix", f"entropix must be an object, not {_kind(value)}")
    for key in value:
        if key not in ENTROPIX_KEYS:
            raise bad(
                f"entropix.{key}",
                f"entropix.{key} is unknown; valid keys: {', '.join(ENTROPIX_KEYS)}",
            )
    sampler = value.get("sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise bad(
            "entropix.sampler",
            f"entropix.sampler={sampler!r} is unknown; choose {', '.join(SAMPLERS)}",
        )
    profile = value.get("profile")
    if profile is not None and (not isinstance(profile, str) or not profile):
        raise bad("entropix.profile", "entropix.profile must be a profile name")
    overrides = value.get("set") or {}
    if not isinstance(overrides, dict):
        raise bad("entropix.set", 'entropix.set must be an object like {"high_ent": 4.2}')
    pairs = {}
    for name, v in overrides.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise bad(f"entropix.set.{name}", f"entropix.set.{name} must be a number or a string")
        pairs[name] = str(v)
    return Extension(
        sampler=sampler,
        profile=profile,
        overrides=pairs,
        metrics=get_bool(value, "metrics", True, "entropix.metrics"),
        cache_prompt=get_bool(value, "cache_prompt", True, "entropix.cache_prompt"),
    )


def _check_unsupported(body: dict[str, Any]) -> None:
    for name in UNSUPPORTED:
        if body.get(name):
            raise unsupported(name, "no tool calling")
    for name in PENALTIES:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(name, f"{name} must be a number")
        if value:
            raise unsupported(name, "only 0 is accepted")
    bias = body.get("logit_bias")
    if bias is not None and not isinstance(bias, dict):
        raise bad("logit_bias", "logit_bias must be an object")
    if bias:
        raise unsupported("logit_bias", "only {} is accepted")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise unsupported("response_format", f"type {kind!r}: only text is produced")


def _common(body: dict[str, Any], max_tokens_cap: int) -> dict[str, Any]:
    _check_unsupported(body)
    n = get_int(body, "n", 1, 1)
    if n != 1:
        raise bad("n", f"n={n} is not supported; this server returns one choice (n=1)")
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = get_int({name: asked}, name, max_tokens_cap, 1)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "stream_options must be an object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "model must be a string")
    return {
        "max_tokens": min(max_tokens, max_tokens_cap),
        "seed": get_int(body, "seed", None, -(2**63), 2**64 - 1),
        "stop": _parse_stop(body.get("stop")),
        "stream": get_bool(body, "stream", False),
        "include_usage": get_bool(
            options or {}, "include_usage", False, "stream_options.include_usage"
        ),
        "temperature": get_float(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": get_float(body, "top_p", 1.0, 0.0, 1.0, open_lo=True),
        "top_k": get_int(body, "top_k", 0, 0),
        "min_p": get_float(body, "min_p", 0.0, 0.0, 1.0),
        "extension": parse_extension(body.get("entropix")),
        "model": model,
    }


def parse_chat(body: dict[str, Any], max_tokens_cap: int) -> GenRequest:
    """A `/v1/chat/completions` body → `GenRequest`, or an `ApiError` naming the first bad field."""
    messages = parse_messages(body.get("messages"))
    common = _common(body, max_tokens_cap)
    logprobs = get_bool(body, "logprobs", False)
    top = get_int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if body.get("top_logprobs") is not None and not logprobs:
        raise bad("top_logprobs", "top_logprobs needs logprobs: true")
    return GenRequest("chat", messages, None, logprobs=logprobs, top_logprobs=top, **common)


def parse_completion(body: dict[str, Any], max_tokens_cap: int) -> GenRequest:
    """A `/v1/completions` body: a raw `prompt` string; legacy `logprobs` is an int 0–20."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt", "prompt must be a non-empty string")
    for name in ("echo",):
        if body.get(name):
            raise unsupported(name, "only false is accepted")
    if body.get("suffix"):
        raise unsupported("suffix", "no fill-in-the-middle")
    if get_int(body, "best_of", 1, 1) != 1:
        raise unsupported("best_of", "only 1 is accepted")
    common = _common(body, max_tokens_cap)
    top = get_int(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    return GenRequest(
        "completion", (), prompt, logprobs=top is not None, top_logprobs=top or 0, **common
    )


def parse_token_ids(body: dict[str, Any], name: str, vocab_size: int) -> list[int]:
    value = body.get(name)
    if not isinstance(value, list):
        raise bad(name, f"{name} must be a list of token ids")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size:
            raise bad(f"{name}[{i}]", f"{name}[{i}]={v!r} is not a token id in 0..{vocab_size - 1}")
    return value
