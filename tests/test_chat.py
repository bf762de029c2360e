"""ChatSession on a tiny random Llama (cache reuse, retry, interrupts, failures) and the `chat` and
`run` commands through typer's CliRunner with piped input, including every bad input."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from checkpoints import make_tiny_checkpoint
from typer.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.chat import session as chat_module
from entropix_mlx.chat import store
from entropix_mlx.chat.loop import COMMANDS, run_chat
from entropix_mlx.chat.session import ChatSession
from entropix_mlx.engine.tokens import first_difference
from entropix_mlx.errors import ContextFullError, EntropixError
from entropix_mlx.model.load import load


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny(tiny_path: Path):
    return load(tiny_path)  # model, tokenizer, info


def session(tiny, **kwargs) -> ChatSession:
    model, tok, _ = tiny
    return ChatSession(model, tok, **({"max_tokens": 6, "seed": 1} | kwargs))


def consistent(s: ChatSession) -> bool:
    """Every layer holds exactly the ids the session believes it holds."""
    return all(c.offset == len(s.cached_ids) for c in s.cache)


def prompt_ids(s: ChatSession, text: str) -> list[int]:
    messages = s.template_messages([*s.messages, chat_module.Message("user", text)])
    return s.tokenizer.apply_chat_template(messages)


def tokens(events) -> list[int]:
    return [e.token_id for e in events]


# ── ChatSession ─────────────────────────────────────────────────────────────────────────────


def test_second_turn_prefills_only_what_the_cache_lacks(tiny) -> None:
    s = session(tiny, system="Be brief.")
    first_ids = prompt_ids(s, "hello there")
    first = list(s.turn("hello there"))
    assert first[0].prompt_tokens == len(first_ids)
    assert consistent(s) and s.cached_ids[: len(first_ids)] == first_ids
    held = list(s.cached_ids)

    second_ids = prompt_ids(s, "and again")
    second = list(s.turn("and again"))
    reused = first_difference(held, second_ids)
    assert reused >= len(first_ids)  # at least the whole first prompt came from the cache
    assert (
        second[0].prompt_tokens == len(second_ids) - reused < len(second_ids) - len(first_ids) + 8
    )
    assert [m.role for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.messages[-1].content == "".join(e.text for e in second)
    assert consistent(s)


def test_cached_turn_decodes_like_a_fresh_full_prefill(tiny) -> None:
    s = session(tiny)
    list(s.turn("hello there"))
    s.set_seed(7)
    cached = tokens(s.turn("and again"))

    fresh = session(tiny)
    fresh.messages = list(s.messages[:2])
    fresh.set_seed(7)
    assert tokens(fresh.turn("and again")) == cached


def test_retry_replaces_the_answer_and_refeeds_one_token(tiny) -> None:
    s = session(tiny)
    list(s.turn("hello"))
    before = s.messages[-1]
    again = list(s.retry())
    assert again[0].prompt_tokens == 1  # the prompt is still cached; one token is fed for logits
    assert [m.role for m in s.messages] == ["user", "assistant"]
    assert s.messages[-1] is not before and s.messages[-1].events == tuple(again)
    assert consistent(s)


def test_retry_with_nothing_to_retry(tiny) -> None:
    with pytest.raises(EntropixError, match="nothing to retry"):
        session(tiny).retry()


def test_clear_forgets_messages_but_reuses_the_system_prefix(tiny) -> None:
    s = session(tiny, system="You are terse.")
    list(s.turn("hello"))
    s.clear()
    assert s.messages == []
    ids = prompt_ids(s, "new topic")
    events = list(s.turn("new topic"))
    assert events[0].prompt_tokens < len(ids)
    assert [m.role for m in s.messages] == ["user", "assistant"]


def test_closing_the_stream_keeps_the_partial_answer_marked(tiny) -> None:
    s = session(tiny, max_tokens=20)
    list(s.turn("hello"))
    stream = s.turn("tell me more")
    partial = [next(stream) for _ in range(5)]
    stream.close()  # what Ctrl-C does in the chat loop
    answer = s.messages[-1]
    if "".join(e.text for e in partial).strip():
        assert answer.role == "assistant" and answer.interrupted
        assert answer.content == "".join(e.text for e in partial) and answer.events == tuple(
            partial
        )
        assert [m.role for m in s.messages] == ["user", "assistant"] * 2
    assert consistent(s)
    # The cache is usable: the next turn decodes like a fresh session over the same history.
    s.set_seed(3)
    cached = tokens(s.turn("go on"))
    fresh = session(tiny, max_tokens=20)
    fresh.messages = list(s.messages[:-2])
    fresh.set_seed(3)
    assert tokens(fresh.turn("go on")) == cached


def _failing_generate(real, after: int, error: BaseException):
    def generate(*args, **kwargs):
        for i, ev in enumerate(real(*args, **kwargs)):
            if i == after:
                raise error
            yield ev

    return generate


def test_ctrl_c_inside_a_model_step_keeps_history_and_a_consistent_cache(tiny, monkeypatch) -> None:
    s = session(tiny, max_tokens=20)
    list(s.turn("hello"))
    monkeypatch.setattr(
        chat_module, "generate", _failing_generate(chat_module.generate, 4, KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        list(s.turn("second"))
    monkeypatch.undo()
    assert s.messages[0].content == "hello" and len(s.messages) in (2, 4)
    assert s.messages[-1].role == "assistant"
    assert consistent(s)
    list(s.turn("third"))
    assert consistent(s)


def test_a_failing_turn_leaves_the_history_as_it_was(tiny, monkeypatch) -> None:
    s = session(tiny)
    list(s.turn("hello"))
    history = list(s.messages)
    monkeypatch.setattr(
        chat_module, "generate", _failing_generate(chat_module.generate, 2, RuntimeError("boom"))
    )
    with pytest.raises(RuntimeError):
        list(s.turn("second"))
    monkeypatch.undo()
    assert s.messages == history
    assert consistent(s)
    assert len(list(s.turn("second"))) > 0


def test_context_full_raises_and_keeps_history(tiny) -> None:
    s = session(tiny, context_limit=40)
    list(s.turn("hi"))
    history = list(s.messages)
    with pytest.raises(ContextFullError):
        list(s.turn("a much longer message that cannot fit into forty tokens of context at all"))
    assert s.messages == history and consistent(s)


def test_seed_makes_the_following_answers_reproducible(tiny) -> None:
    a, b = session(tiny, seed=11), session(tiny, seed=99)
    b.set_seed(11)
    assert tokens(a.turn("hello")) == tokens(b.turn("hello"))
    assert tokens(a.turn("more")) == tokens(b.turn("more"))


def test_greedy_retry_repeats_the_answer_from_the_cache(tiny) -> None:
    s = session(tiny, sampler="greedy", seed=None)
    first = tokens(s.turn("hello"))
    assert tokens(s.retry()) == first  # the cached prompt decodes exactly like the first time


def test_settings_and_stats(tiny, tmp_path: Path) -> None:
    s = session(tiny)
    with pytest.raises(ValueError, match="unknown sampler"):
        s.set_sampler("nucleus")
    s.set_sampler("sample")
    s.set_sampler("entropix")
    s.set_system("Answer in French.")
    assert s.template_messages([])[0] == {"role": "system", "content": "Answer in French."}
    events = list(s.turn("hello"))
    stats = s.stats()
    assert stats.answers == 1 and stats.tokens == len(events)
    assert sum(stats.quadrants.values()) == sum(stats.strategies.values()) == len(events)
    md, jsonl = store.save(s, tmp_path / "talk.md", model="tiny")
    assert md.name == "talk.md" and jsonl.name == "talk.jsonl"
    assert "## User\n\nhello" in md.read_text() and "Answer in French." in md.read_text()
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == len(events) + 1 and records[-1]["summary"]["model"] == "tiny"
    with pytest.raises(EntropixError, match="cannot write"):
        store.save(s, tmp_path / "missing" / "dir" / "x")


# ── the chat command ────────────────────────────────────────────────────────────────────────

runner = CliRunner()


def chat(tiny_path: Path, text: str, *args: str):
    return runner.invoke(
        cli.make_app(),
        ["chat", "--model", str(tiny_path), "-n", "5", "--seed", "1", *args],
        input=text,
    )


def test_chat_with_piped_input(tiny_path: Path, tmp_path: Path) -> None:
    save = tmp_path / "session"
    result = chat(
        tiny_path,
        f"hello\n/foo\n/stats\n/retry\n/seed 5\n/sampler nope\n/save {save}\n/exit\nnever\n",
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b[" not in out  # not a terminal: plain text
    assert "unknown command /foo; /help lists the commands" in out
    assert "1 answer · " in out and "unknown sampler 'nope'" in out
    assert out.count("prefill") == 2  # the answer and the retry
    assert "never" not in out.split("/exit")[-1]
    md, jsonl = save.with_name("session.md"), save.with_name("session.jsonl")
    assert "## Assistant" in md.read_text()
    assert json.loads(jsonl.read_text().splitlines()[-1])["summary"]["model"] == "tiny-llama"


def test_chat_ends_at_end_of_input_and_shows_help(tiny_path: Path) -> None:
    result = chat(tiny_path, "/help\n/legend\n/system be nice\n/system\n/clear\n/seed x\n/save\n")
    assert result.exit_code == 0, result.output
    for command in COMMANDS:
        assert command in result.stdout
    assert "HEHV" in result.stdout and "system message: be nice" in result.stdout
    assert "/seed x: not an integer" in result.stdout and "/save needs an argument" in result.stdout


def test_chat_context_full_is_a_message_not_a_crash(tiny_path: Path) -> None:
    long = "word " * 1200
    result = chat(tiny_path, f"{long}\n/clear\nhi\n")
    assert result.exit_code == 0, result.output
    assert "context full" in result.stdout and "/compact drops the oldest turns" in result.stdout
    assert "prefill" in result.stdout  # the next message was answered


# ── bad inputs: one line on stderr, exit ≠ 0, no traceback (through the real entry point) ────


def run_main(monkeypatch, capsys, args: list[str], stdin: str = "") -> tuple[int, str, str]:
    import io

    monkeypatch.setattr(sys, "argv", ["entropix", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["chat", "--max-tokens", "0"], "--max-tokens"),
        (["chat", "--max-tokens", "many"], "--max-tokens"),
        (["chat", "--top-p", "1.5"], "--top-p"),
        (["chat", "--seed", "x"], "--seed"),
        (["chat", "--sampler", "nucleus"], "--sampler nucleus"),
        (["chat", "--set", "high_ent"], "--set high_ent"),
        (["chat", "--set", "nonsense=1"], "nonsense"),
        (["chat", "--profile", "nope"], "nope"),
        (["chat", "--model", "/no/such/model.gguf"], "/no/such/model.gguf"),
        (["chat", "--bogus"], "--bogus"),
        (["run", "-f", "/no/such/prompt.txt"], "no such file"),
        (["run", "-f", "-"], "empty"),
    ],
)
def test_bad_inputs_are_one_line(monkeypatch, capsys, args: list[str], needle: str) -> None:
    code, out, err = run_main(monkeypatch, capsys, args)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err + out


def test_bad_prompt_files(monkeypatch, capsys, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    (tmp_path / "nokey.jsonl").write_text('{"prompt": "ok"}\n\n["a list"]\n')
    cases = {
        "empty.txt": "empty",
        "binary.txt": "not UTF-8",
        "bad.jsonl": "bad.jsonl:2: not JSON",
        "nokey.jsonl": "nokey.jsonl:3: expected an object",
    }
    for name, needle in cases.items():
        code, out, err = run_main(monkeypatch, capsys, ["run", "-f", str(tmp_path / name)])
        assert code == 1 and len(err.strip().splitlines()) == 1 and needle in err, err


# ── the run command ─────────────────────────────────────────────────────────────────────────


def test_run_batch_jsonl_with_headers_and_one_jsonl(tiny_path: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "first question"}\n\n{"prompt": "second", "system": "Be brief."}\n'
    )
    out_jsonl = tmp_path / "tokens.jsonl"
    result = runner.invoke(
        cli.make_app(),
        [
            "run",
            "-f",
            str(prompts),
            "--model",
            str(tiny_path),
            "-n",
            "4",
            "--seed",
            "2",
            "--jsonl",
            str(out_jsonl),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "prompt 1/2: first question" in result.stdout and "prompt 2/2: second" in result.stdout
    assert "\x1b[" not in result.stdout
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    summaries = [r["summary"] for r in records if "summary" in r]
    assert [s["prompt_index"] for s in summaries] == [0, 1]
    assert len(records) == sum(s["tokens"] for s in summaries) + 2


def test_run_json_prints_one_object_per_prompt(tiny_path: Path) -> None:
    result = runner.invoke(
        cli.make_app(),
        ["run", "-f", "-", "--model", str(tiny_path), "-n", "3", "--json"],
        input="What is two plus two?",
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["prompt"] == "What is two plus two?" and 1 <= obj["summary"]["tokens"] <= 3
    assert isinstance(obj["text"], str)


def test_run_plain_text_on_a_pipe(tiny_path: Path) -> None:
    result = runner.invoke(
        cli.make_app(), ["run", "-f", "-", "--model", str(tiny_path), "-n", "3"], input="hi"
    )
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout + result.stderr
    assert re.search(r"\d+ tokens? · prefill", result.stderr)


# ── the chat loop with a scripted view (Ctrl-C as a real SIGINT) ─────────────────────────────


class ScriptedUI:
    """A view that replays input lines (an exception is raised instead of returned) and records
    what it was asked to show; it sends itself SIGINT at the third token of an answer."""

    def __init__(self, lines: list, interrupt_at: int | None = None):
        self.lines, self.interrupt_at, self.shown = list(lines), interrupt_at, []

    def welcome(self) -> None:
        self.shown.append(("welcome",))

    def prompt(self, continuation: bool = False) -> str | None:
        item = self.lines.pop(0) if self.lines else None
        if isinstance(item, BaseException):
            raise item
        return item

    def answer(self) -> ScriptedUI:
        self.events = []
        return self

    def __enter__(self) -> ScriptedUI:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def token(self, ev) -> None:
        self.events.append(ev)
        if len(self.events) == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)

    @contextlib.contextmanager
    def busy(self, label: str):
        yield lambda done, total: None

    def end(self, summary, peak_memory, *, interrupted: bool, context) -> None:
        self.shown.append(("end", summary.tokens, interrupted))

    def __getattr__(self, name: str):  # legend, help, stats, notice, error
        return lambda *args: self.shown.append((name, *args))


def test_ctrl_c_during_an_answer_stops_it_and_keeps_it(tiny) -> None:
    s = session(tiny, max_tokens=50)
    ui = ScriptedUI(["tell me a story", "/stats"], interrupt_at=3)
    run_chat(s, ui)
    assert ("end", 3, True) in ui.shown
    stats = next(item[1] for item in ui.shown if item[0] == "stats")
    if s.messages:  # kept unless the three tokens printed nothing
        assert s.messages[-1].interrupted and stats.interrupted == 1 and stats.tokens == 3
    assert consistent(s)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_ctrl_c_at_the_prompt_asks_once(tiny) -> None:
    ui = ScriptedUI([KeyboardInterrupt(), "/legend", KeyboardInterrupt(), KeyboardInterrupt(), "x"])
    run_chat(session(tiny), ui)
    notices = [item for item in ui.shown if item[0] == "notice"]
    assert len(notices) == 2 and "Ctrl-C again" in notices[0][1]
    assert ui.lines == ["x"]  # left at the second Ctrl-C in a row
