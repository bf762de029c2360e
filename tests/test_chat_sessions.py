"""Chats that lose nothing (issue 15): session files appended per turn and resumed, /save's JSONL,
the new commands (each bad input one line, the conversation unchanged), multi-line and file input,
the context gauge and /compact, /copy's escape, Tab completion, and the CLI's --resume."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from checkpoints import make_tiny_checkpoint
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from test_chat import ScriptedUI, consistent, session, tokens
from typer.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.chat import store
from entropix_mlx.chat.inputs import read_block
from entropix_mlx.chat.loop import COMMANDS, PATH_COMMANDS, run_chat
from entropix_mlx.chat.session import ChatSession
from entropix_mlx.engine.records import read_run
from entropix_mlx.lab.replay import load_run
from entropix_mlx.model.load import load
from entropix_mlx.ui import clipboard
from entropix_mlx.ui.chat_view import _completer


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny(tiny_path: Path):
    return load(tiny_path)  # model, tokenizer, info


def talk(s: ChatSession, log: store.SessionLog, *texts: str) -> None:
    for text in texts:
        list(s.turn(text))
        log.sync(s)


def state(s: ChatSession) -> tuple:
    """What a resumed chat must equal: messages (text, role, stopped), system and settings."""
    msgs = tuple((m.role, m.content, m.interrupted) for m in s.messages)
    return msgs, s.system, s.sampler, s.config, s.params, s.seed, s.draws, s.max_tokens


def resumed(tiny, path: Path) -> ChatSession:
    saved = store.read_session(path)
    s = session(tiny)
    s.restore(saved.messages, saved.system)
    s.sampler, s.config, s.params, s.max_tokens = (
        saved.sampler,
        saved.config,
        saved.params,
        saved.max_tokens,
    )
    s.set_seed(saved.session_seed, saved.draws)
    s.prefill()
    return s


# ── data directory ──────────────────────────────────────────────────────────────────────────


def test_data_dir_follows_xdg_and_entropix_home(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert store.sessions_dir(env) == tmp_path / "xdg" / "entropix" / "sessions"
    assert store.data_dir(env | {"ENTROPIX_HOME": str(tmp_path / "e")}) == tmp_path / "e"
    assert store.history_file(env) == tmp_path / "xdg" / "entropix" / "history"
    assert store.history_file(env | {"ENTROPIX_NOHISTORY": "1"}) is None
    with pytest.raises(Exception, match="no saved chat"):
        store.latest_session(env)


# ── session files ───────────────────────────────────────────────────────────────────────────


def test_each_turn_is_appended_and_the_file_resumes_to_the_same_state(tiny, tmp_path) -> None:
    s = session(tiny, system="Be brief.", sampler="entropix", seed=5)
    log = store.SessionLog(tmp_path / "s.jsonl", {"model": "tiny"})
    talk(s, log, "hello")
    sizes = [log.path.stat().st_size]
    talk(s, log, "and again")
    sizes.append(log.path.stat().st_size)
    assert sizes[0] < sizes[1]  # appended, not rewritten
    assert log.path.read_text().startswith(log.path.read_text()[: sizes[0]])
    saved = store.read_session(log.path)
    assert saved.turns == 2 and [m.role for m in saved.messages] == ["user", "assistant"] * 2
    assert saved.messages[-1].events and tokens(saved.messages[-1].events) == tokens(
        s.messages[-1].events
    )
    assert state(resumed(tiny, log.path)) == state(s)


@pytest.mark.parametrize("sampler", ["entropix", "greedy", "sample"])
def test_a_resumed_chat_answers_like_an_unbroken_one(tiny, tmp_path, sampler: str) -> None:
    unbroken = session(tiny, sampler=sampler, seed=3, max_tokens=8)
    log = store.SessionLog(tmp_path / "s.jsonl")
    talk(unbroken, log, "hello there", "tell me more")
    again = resumed(tiny, log.path)
    assert consistent(again) and again.cached_ids == again.conversation_ids()
    first = list(again.turn("and now?"))
    assert first[0].prompt_tokens < len(again.conversation_ids()) // 2  # prefilled once, before
    assert tokens(first) == tokens(unbroken.turn("and now?"))


def test_changes_without_an_answer_are_kept(tiny, tmp_path) -> None:
    s = session(tiny)
    log = store.SessionLog(tmp_path / "s.jsonl")
    talk(s, log, "hello", "more")
    s.set_system("Answer in French.")
    s.set_config(s.config.with_overrides({"high_ent": "4.2"}))
    log.sync(s)
    assert state(resumed(tiny, log.path)) == state(s)
    s.clear()
    log.sync(s)
    log.sync(s)  # nothing changed: nothing written
    lines = log.path.read_text().splitlines()
    assert sum('"chat": {"keep"' in line[:20] for line in lines) == 2
    assert state(resumed(tiny, log.path)) == state(s)


def test_a_killed_write_resumes_to_the_last_complete_turn(tiny, tmp_path) -> None:
    s = session(tiny)
    log = store.SessionLog(tmp_path / "s.jsonl")
    talk(s, log, "hello")
    done = state(s)
    whole = log.path.read_text()
    list(s.turn("second"))
    log.sync(s)
    torn = log.path.read_text()[len(whole) :]
    log.path.write_text(whole + torn[: len(torn) // 2])  # died halfway through the write
    assert state(resumed(tiny, log.path))[0] == done[0]


def test_session_files_replay_and_save_files_resume(tiny, tmp_path) -> None:
    s = session(tiny)
    log = store.SessionLog(tmp_path / "s.jsonl", {"model": "tiny"})
    talk(s, log, "hello")
    s.set_system("Be brief.")
    log.sync(s)
    talk(s, log, "more")
    run = load_run(log.path)  # `entropix replay` reads it: two answers, the state line skipped
    assert [len(a.events) for a in run.answers] == [len(m.events) for m in s.messages[1::2]]
    md, jsonl = store.save(s, tmp_path / "talk", model="tiny")
    assert "## User" in md.read_text()
    assert state(resumed(tiny, jsonl)) == state(s)
    groups, summaries = read_run(jsonl)
    assert len(summaries) == 2 and summaries[1]["chat"]["keep"] == 2


def test_files_that_are_no_chat_are_one_line_errors(tmp_path) -> None:
    run_file = tmp_path / "run.jsonl"
    run_file.write_text('{"summary": {"tokens": 0}}\n')
    (tmp_path / "bad.jsonl").write_text('{"chat": {"keep": 0, "add": [{"role": "x"}]}}\n')
    for path, needle in [
        (tmp_path / "none.jsonl", "no such file"),
        (tmp_path, "is a folder"),
        (run_file, "holds no chat"),
        (tmp_path / "bad.jsonl", "bad.jsonl:1: not a chat session line"),
    ]:
        with pytest.raises(Exception, match=needle) as e:
            store.read_session(path)
        assert "\n" not in str(e.value)


# ── commands through the loop ───────────────────────────────────────────────────────────────


def errors(ui: ScriptedUI) -> list[str]:
    return [item[1] for item in ui.shown if item[0] == "error"]


def test_bad_input_to_every_new_command_is_one_line_and_changes_nothing(tiny, tmp_path) -> None:
    (tmp_path / "big.txt").write_text("x" * 300_000)
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "run.jsonl").write_text('{"summary": {"tokens": 0}}\n')
    s = session(tiny)
    list(s.turn("hello"))
    before = state(s)

    def loader(name: str):
        raise ValueError(f"no model named {name}")

    bad = [
        "/read /no/such/file.txt",
        f"/read {tmp_path}",
        f"/read {tmp_path / 'big.txt'}",
        f"/read {tmp_path / 'binary.bin'}",
        f"/read {tmp_path / 'empty.txt'}",
        "/read",
        "/set nonsense=1",
        "/set high_ent=warm",
        "/set high_ent",
        "/set top_p=2",
        "/profile nope",
        "/model nope",
        "/load /no/such/session.jsonl",
        f"/load {tmp_path / 'run.jsonl'}",
        f"/save {tmp_path / 'missing' / 'dir' / 'x'}",
        "/sampler nucleus",
        "/seed x",
        "/compact now",
        "/render please",
    ]
    ui = ScriptedUI(bad)
    run_chat(s, ui, loader=loader, model="tiny")
    got = errors(ui)
    assert len(got) == len(bad), got
    assert all("\n" not in e for e in got)
    assert "keeping tiny" in got[bad.index("/model nope")]
    assert "KiB limit" in got[2] and "not UTF-8" in got[3] and "empty" in got[4]
    assert state(s) == before and consistent(s)


def test_commands_that_need_an_answer_say_so(tiny) -> None:
    ui = ScriptedUI(["/copy", "/render", "/compact", "/plot"])
    run_chat(session(tiny), ui)
    assert len(errors(ui)) == 4 and all(
        "send a message" in e or "no turns" in e for e in errors(ui)
    )


def test_set_profile_settings_and_model(tiny) -> None:
    model, tok, info = tiny
    s = session(tiny)
    ui = ScriptedUI(["hello", "/set high_ent=4.2 low_ent=0.2", "/profile smollm2", "/settings"])
    run_chat(s, ui, loader=lambda name: (model, tok, info), model="tiny")
    assert s.config.profile == "smollm2" and not errors(ui)
    notices = [i[1] for i in ui.shown if i[0] == "notice"]
    assert "high_ent = 4.2, low_ent = 0.2" in notices
    settings = next(i for i in ui.shown if i[0] == "settings")
    assert settings[1]["profile"] == "smollm2" and settings[2] is s.config
    history = list(s.messages)
    ui = ScriptedUI(["/model other"])
    run_chat(s, ui, loader=lambda name: (model, tok, replace(info, name="other")), model="tiny")
    assert s.messages == history and s.cached_ids == s.conversation_ids() and consistent(s)
    assert any("now on other" in i[1] for i in ui.shown if i[0] == "notice")


def test_compact_drops_the_oldest_turns_and_keeps_the_system_message(tiny) -> None:
    s = session(tiny, system="Be brief.", context_limit=120, max_tokens=10)
    ui = ScriptedUI(["one", "two", "three", "four", "/compact", "five"])
    run_chat(s, ui)
    users = [m.content for m in s.messages if m.role == "user"]
    assert users[0] != "one" and users[-1] == "five" and s.system == "Be brief."
    assert s.context_used() <= s.limit and consistent(s)
    assert any("dropped the oldest" in i[1] for i in ui.shown if i[0] == "notice")


def test_a_message_that_does_not_fit_offers_compact(tiny) -> None:
    s = session(tiny, context_limit=80, max_tokens=4)
    ui = ScriptedUI(["hi", "word " * 40, "/compact"])
    run_chat(s, ui)
    assert any("/compact drops the oldest turns" in e for e in errors(ui))


def test_the_summary_gets_the_context_gauge(tiny) -> None:
    shown = []

    class UI(ScriptedUI):
        def end(self, summary, peak_memory, *, interrupted: bool, context) -> None:
            shown.append(context)

    s = session(tiny)
    run_chat(s, UI(["hello"]))
    assert shown == [(s.context_used(), 1024)] and 0 < shown[0][0] < 1024


def test_the_loop_writes_the_log_after_each_turn(tiny, tmp_path) -> None:
    s = session(tiny)
    log = store.SessionLog(tmp_path / "s.jsonl")
    run_chat(s, ScriptedUI(["hello", "/system terse", "again"]), log=log)
    assert state(resumed(tiny, log.path)) == state(s)


# ── input ───────────────────────────────────────────────────────────────────────────────────


def test_fenced_blocks() -> None:
    lines = iter(["second line", "", 'third"""'])
    assert read_block('"""first', lambda: next(lines)) == "first\nsecond line\n\nthird"
    assert read_block('"""one line"""', lambda: None) == "one line"
    assert read_block('"""', lambda: None) is None


def test_tab_completes_commands_and_paths(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    completer = _completer(COMMANDS, PATH_COMMANDS)

    def complete(text: str) -> list[str]:
        doc = Document(text, len(text))
        return [c.text for c in completer.get_completions(doc, CompleteEvent())]

    assert complete("/re") == ["/read", "/render", "/retry"]
    assert complete(f"/read {tmp_path}/no") == ["tes.txt"]
    assert complete("hello") == [] and complete(f"/seed {tmp_path}/no") == []


def test_osc52_carries_exactly_the_text() -> None:
    text = "Paris — «la capitale»\n```py\nprint(1)\n```"
    seq = clipboard.osc52(text, {})
    payload = re.fullmatch(r"\x1b\]52;c;([A-Za-z0-9+/=]*)\x07", seq).group(1)
    assert base64.b64decode(payload).decode() == text
    wrapped = clipboard.osc52(text, {"TMUX": "/tmp/tmux"})
    assert wrapped.startswith(seq) and "\x1bPtmux;\x1b\x1b]52;c;" in wrapped


# ── the chat command ────────────────────────────────────────────────────────────────────────

runner = CliRunner()


def chat(tiny_path: Path, text: str, *args: str):
    return runner.invoke(
        cli.make_app(),
        ["chat", "--model", str(tiny_path), "-n", "5", "--seed", "1", *args],
        input=text,
    )


def test_chat_keeps_the_session_and_resume_continues_it(tiny_path, tmp_path) -> None:
    first = chat(tiny_path, '"""first line\nsecond line"""\n/exit\n')
    assert first.exit_code == 0, first.output
    path = store.latest_session()
    assert f"keptin{path}" in "".join(first.stdout.split())
    saved = store.read_session(path)
    assert saved.messages[0].content == "first line\nsecond line"
    again = runner.invoke(cli.make_app(), ["chat", "--resume"], input="/stats\nhi\n")
    assert again.exit_code == 0, again.output
    assert f"resumed{path}:1answer·" in "".join(again.stdout.split())
    assert "second line" in again.stdout  # the last turns are shown
    assert store.read_session(path).turns == 2  # appended to the same file
    assert len(list(store.sessions_dir().glob("*.jsonl"))) == 1


def test_chat_options(tiny_path, tmp_path) -> None:
    system = tmp_path / "system.txt"
    system.write_text("You are a pirate.\n")
    result = chat(tiny_path, "hello\n", "--system-file", str(system), "--no-save")
    assert result.exit_code == 0, result.output
    assert not store.sessions_dir().exists()
    saved_md = tmp_path / "t"
    result = chat(tiny_path, f"/system\n/save {saved_md}\n", "--system-file", str(system))
    assert "system message: You are a pirate." in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["chat", "--resume"], "no saved chat"),
        (["chat", "--resume", "/no/such.jsonl"], "no such file"),
        (["chat", "some.jsonl"], "--resume some.jsonl"),
        (["chat", "--system", "a", "--system-file", "b"], "not both"),
        (["chat", "--system-file", "/no/such/file"], "no such file"),
    ],
)
def test_bad_chat_options_are_one_line(monkeypatch, capsys, args, needle) -> None:
    from conftest import run_main

    code, out, err = run_main(monkeypatch, capsys, args)
    assert code != 0 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_state_lines_are_json(tiny, tmp_path) -> None:
    s = session(tiny)
    log = store.SessionLog(tmp_path / "s.jsonl")
    s.set_system("x")
    log.sync(s)
    assert json.loads(log.path.read_text())["chat"]["system"] == "x"


def test_load_takes_over_a_saved_chat_and_logs_it(tiny, tmp_path) -> None:
    first = session(tiny, system="Be brief.", seed=9)
    list(first.turn("hello"))
    list(first.turn("more"))
    _, jsonl = store.save(first, tmp_path / "saved")
    s = session(tiny)
    list(s.turn("something else"))
    log = store.SessionLog(tmp_path / "live.jsonl")
    ui = ScriptedUI([f"/load {jsonl}"])
    run_chat(s, ui, log=log)
    assert state(s) == state(first) and s.cached_ids == s.conversation_ids() and consistent(s)
    assert next(i for i in ui.shown if i[0] == "turns")[2] == 0  # both turns shown, none skipped
    assert state(resumed(tiny, log.path)) == state(first)  # the live file took the loaded chat


def test_edit_sends_what_the_editor_saved(tiny, monkeypatch) -> None:
    from entropix_mlx.ui.chat_view import edit_in_editor

    env = {"EDITOR": 'sh -c \'printf "line one\\nline two" > "$1"\' sh'}
    assert edit_in_editor("", env) == "line one\nline two"
    with pytest.raises(Exception, match="not found"):
        edit_in_editor("", {"EDITOR": "/no/such/editor"})
    with pytest.raises(Exception, match="exited with status 3"):
        edit_in_editor("", {"EDITOR": "sh -c 'exit 3'"})


def test_render_shows_markdown_with_highlighted_code() -> None:
    import io

    from rich.console import Console

    from entropix_mlx.ui import render as tui
    from entropix_mlx.ui.chat_view import ChatView

    console = Console(
        file=io.StringIO(), width=80, force_terminal=True, color_system="truecolor", theme=tui.THEME
    )
    ChatView(console, editor=False).markdown("# Title\n\n```python\nprint('hi')\n```")
    out = console.file.getvalue()
    assert "Title" in out and "print" in out and "```" not in out and "\x1b[" in out


def test_set_and_profile_keep_samples_parameters_in_step(tiny) -> None:
    from entropix_mlx.engine.sampler import SamplingParams

    s = session(tiny, sampler="sample", params=SamplingParams(0.3, 5, 0.8, 0.0))
    run_chat(s, ScriptedUI(["/set temperature=0.9"]))
    assert s.params == SamplingParams(0.9, 5, 0.8, 0.0)  # --top-k/--top-p given at start stay
    run_chat(s, ScriptedUI(["/profile reference"]))
    assert s.params == SamplingParams.from_config(s.config)


def test_a_chat_that_does_not_fit_is_not_loaded(tiny, tmp_path) -> None:
    big = session(tiny)
    list(big.turn("hello there, this is a message of some length"))
    _, jsonl = store.save(big, tmp_path / "big")
    s = session(tiny, context_limit=24)
    list(s.turn("hi"))
    before = state(s)
    ui = ScriptedUI([f"/load {jsonl}"])
    run_chat(s, ui)
    assert len(errors(ui)) == 1 and "not loaded" in errors(ui)[0] and "not fit" in errors(ui)[0]
    assert state(s) == before and consistent(s)
