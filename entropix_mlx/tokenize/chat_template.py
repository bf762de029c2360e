"""Chat templates: the model's own Jinja template, rendered the way Hugging Face renders it.

Kept apart from the tokenizer backends, which are about vocabularies; only jinja2 is
needed here, imported on first render.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..errors import TokenizerError

# Llama 3.x chat format without the tools / date preamble of Meta's 3.1 template: used when a bare
# tiktoken `tokenizer.model` comes with no template of its own.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# Hugging Face's Llama 2 chat template ([INST] … [/INST], <<SYS>> folded into the first turn).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def _raise_exception(message: str) -> None:
    raise TokenizerError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # HF's tojson does not HTML-escape (unlike jinja2's built-in), so templates see raw characters.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def chat_messages(
    prompt: str | None = None,
    *,
    system: str | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> list[dict[str, str]]:
    """A template's messages: the system message (when given), the (role, content) history, then
    the user's `prompt` (when given)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": role, "content": content} for role, content in history]
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
    return messages


class ChatTemplate:
    """A compiled chat template; render it as HF `apply_chat_template` does (tokenize=False)."""

    def __init__(self, source: str) -> None:
        from jinja2 import TemplateError, ext, sandbox

        env = sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            msg = f"chat template does not compile ({exc}); fix or remove it"
            raise TokenizerError(msg) from None

    def render(
        self,
        messages: list[dict[str, str]],
        *,
        add_generation_prompt: bool,
        bos_token: str,
        eos_token: str,
        **extra: Any,
    ) -> str:
        """Render `messages`; template errors become a `TokenizerError`."""
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
                **extra,
            )
        except TemplateError as exc:
            raise TokenizerError(f"chat template failed to render: {exc}") from None
