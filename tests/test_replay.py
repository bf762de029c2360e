"""`entropix replay`: a saved run re-rendered byte for byte without a model, `--check` re-decoding
it, and every bad input as one line; plus the JSONL reader underneath."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from checkpoints import make_tiny_checkpoint
from conftest import run_main
from typer.testing import CliRunner

from entropix_mlx import cli
from entropix_mlx.engine.records import read_run
from entropix_mlx.errors import EntropixError
from entropix_mlx.lab.replay import CheckResult, load_run
from entropix_mlx.ui import render as tui

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def run_and_replay(tiny_path: Path, tmp_path: Path, prompt: str, *args: str, name: str = "p.txt"):
    prompt_file = tmp_path / name
    prompt_file.write_text(prompt)
    jsonl = tmp_path / "run.jsonl"
    run = runner.invoke(
        cli.make_app(),
        ["run", "-f", str(prompt_file), "--model", str(tiny_path), "--jsonl", str(jsonl), *args],
    )
    assert run.exit_code == 0, run.output
    plot = ["--plot"] if "--plot" in args else []
    replay = runner.invoke(cli.make_app(), ["replay", str(jsonl), *plot])
    assert replay.exit_code == 0, replay.output
    return run, replay, jsonl


def test_replay_reproduces_a_plain_run_byte_for_byte(tiny_path: Path, tmp_path: Path) -> None:
    run, replay, _ = run_and_replay(tiny_path, tmp_path, "Hello there\n", "-n", "24", "--seed", "4")
    assert run.stdout and replay.stdout == run.stdout
    # The summary line (stderr) is the run's too, peak memory included; the model line is not.
    summary = [line for line in run.stderr.splitlines() if "prefill" in line]
    assert summary and summary[0] in replay.stderr.splitlines()
    assert "replay of" in replay.stderr and "seed 4" in replay.stderr


def test_replay_reproduces_a_coloured_live_run_byte_for_byte(
    tiny_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the answer streams through rich's Live region with a tok/s status line; the
    recorded `elapsed` makes even those bytes come out the same."""
    monkeypatch.setattr(tui, "wants_plain", lambda plain, stream, environ=None: False)
    for name, value in {
        "FORCE_COLOR": "1",
        "COLORTERM": "truecolor",
        "COLUMNS": "60",
        "LINES": "25",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NO_COLOR", raising=False)
    # Thresholds that put the tiny model's tokens (H ≈ 7.5 bits, V ≈ 2 bits²) in several quadrants.
    shift = [
        f"--set={name}" for name in ("med_ent=7.5", "high_ent=7.6", "low_vent=2.1", "high_vent=2.1")
    ]
    run, replay, _ = run_and_replay(
        tiny_path, tmp_path, "Tell me a story", "-n", "30", "--seed", "7", *shift
    )
    assert "\x1b[38;2;" in run.stdout and "tok/s" in run.stdout  # colour and the live status
    assert replay.stdout == run.stdout


def test_replay_of_a_batch_has_the_headers_and_plots(tiny_path: Path, tmp_path: Path) -> None:
    prompts = '{"prompt": "first question"}\n{"prompt": "second", "system": "Be brief."}\n'
    run, replay, jsonl = run_and_replay(
        tiny_path, tmp_path, prompts, "-n", "6", "--seed", "2", "--plot", name="batch.jsonl"
    )
    assert "prompt 1/2: first question" in run.stdout and "prompt 2/2: second" in run.stdout
    assert run.stdout.count("entropy H (bits) per token") == 2
    assert replay.stdout == run.stdout
    assert len(load_run(jsonl).answers) == 2


def test_check_reports_identical_then_a_tampered_token(tiny_path: Path, tmp_path: Path) -> None:
    _, _, jsonl = run_and_replay(tiny_path, tmp_path, "Count to ten", "-n", "16", "--seed", "5")
    check = runner.invoke(cli.make_app(), ["replay", str(jsonl), "--check"])
    assert check.exit_code == 0, check.output
    assert "answer 1: 16 tokens identical" in check.stdout and "identical" in check.stdout

    lines = jsonl.read_text().splitlines()
    record = json.loads(lines[9])
    record["token_id"] = (record["token_id"] + 1) % 300
    lines[9] = json.dumps(record)
    jsonl.write_text("\n".join(lines) + "\n")
    check = runner.invoke(cli.make_app(), ["replay", str(jsonl), "--check"])
    assert check.exit_code == 1
    assert "answer 1: differs at token 9" in check.stdout
    assert "differ from the recorded run" in check.stderr


def test_check_with_the_plain_sampler_and_settings(tiny_path: Path, tmp_path: Path) -> None:
    _, _, jsonl = run_and_replay(
        tiny_path,
        tmp_path,
        "abc",
        "-n",
        "10",
        "--seed",
        "9",
        "--sampler",
        "sample",
        "--temp",
        "1.3",
        "--top-p",
        "0.8",
        "--raw",
    )
    summary = read_run(jsonl)[1][0]
    assert (
        summary["params"]["top_p"] == 0.8 and summary["raw"] is True and summary["max_tokens"] == 10
    )
    check = runner.invoke(cli.make_app(), ["replay", str(jsonl), "--check"])
    assert check.exit_code == 0, check.output


# ── the reader ──────────────────────────────────────────────────────────────────────────────


def token(index: int, **changes) -> dict:
    record = {
        "index": index,
        "token_id": 10 + index,
        "text": f"t{index} ",
        "logprob": -0.5,
        "entropy": 1.0 + index,
        "varentropy": 2.0,
        "attn_entropy": 3.0,
        "attn_varentropy": 0.1,
        "agreement": 0.01,
        "interaction_strength": 0.5,
        "quadrant": "MID",
        "strategy": "adaptive",
        "temperature": 0.7,
        "top_k": 27,
        "top_p": 0.9,
        "min_p": 0.03,
        "inserted": False,
        "elapsed": 0.1 * index,
    }
    return record | changes


SUMMARY = {
    "summary": {
        "tokens": 2,
        "prompt_tokens": 5,
        "prefill_tps": 100.0,
        "decode_tps": 10.0,
        "finish_reason": "length",
        "strategies": {"adaptive": 2},
        "quadrants": {"MID": 2},
        "mean_entropy": 1.5,
        "turn": 0,
    }
}


def write(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_reader_groups_answers_and_keeps_a_cut_off_tail(tmp_path: Path) -> None:
    old = token(1)
    del old["elapsed"]  # files written before `elapsed` was recorded still read
    path = write(tmp_path / "r.jsonl", token(0), old, SUMMARY, "", token(0, logprob=None))
    groups, summaries = read_run(path)
    assert [len(g) for g in groups] == [2, 1] and len(summaries) == 1
    run = load_run(path)
    first, tail = run.answers
    assert not first.cut_off and first.summary.decode_tps == 10.0 and first.context == {"turn": 0}
    assert first.events[-1].finish_reason == "length" and first.events[0].prompt_tokens == 5
    assert (
        tail.cut_off
        and tail.summary.tokens == 1
        and tail.events[0].logprob != tail.events[0].logprob
    )


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([token(0), "{not json"], "r.jsonl:2: not JSON"),
        ([token(0), SUMMARY, "[1, 2]"], "r.jsonl:3: not a JSON object"),
        (["", {"index": 0, "text": "x"}], "r.jsonl:2: not a token record (missing token_id"),
        ([token(0, entropy="high")], "r.jsonl:1: entropy='high' has the wrong type"),
        ([token(0, inserted=1)], "r.jsonl:1: inserted=1 has the wrong type"),
        ([{"summary": 3}], 'r.jsonl:1: "summary" must be an object'),
        ([SUMMARY], "r.jsonl: no token records"),
        ([], "r.jsonl: no token records"),
    ],
)
def test_reader_errors_name_the_file_and_line(tmp_path: Path, lines: list, needle: str) -> None:
    with pytest.raises(EntropixError) as err:
        load_run(write(tmp_path / "r.jsonl", *lines))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_check_result_describes_where_the_tokens_part() -> None:
    assert (
        "differs at token 1: recorded 2, decoded (end)" in CheckResult(1, (1, 2), (1,)).describe()
    )


# ── bad inputs through the real entry point: one line on stderr, exit ≠ 0, no traceback ───────


def test_bad_inputs_are_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.jsonl", token(0), token(1), "{oops")
    empty = write(tmp_path / "empty.jsonl")
    chat_save = write(tmp_path / "chat.jsonl", token(0), token(1), SUMMARY)
    cases = [
        (["replay", str(bad)], "bad.jsonl:3: not JSON"),
        (["plot", str(bad)], "bad.jsonl:3: not JSON"),
        (["replay", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file"),
        (["replay", str(empty)], "empty.jsonl: no token records"),
        (["replay", str(chat_save), "--check"], "does not record prompt"),
        (
            ["replay", str(chat_save), "--plot"],
            "answer 1: the sampler config has no usable low_ent",
        ),
        (["replay", str(tmp_path)], "RUN.jsonl"),
    ]
    for args, needle in cases:
        code, out, err = run_main(monkeypatch, capsys, args)
        assert code != 0, args
        assert len(err.strip().splitlines()) == 1 and needle in err, (args, err)
        assert "Traceback" not in out + err


def test_replay_needs_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from entropix_mlx.model import load as loading

    monkeypatch.setattr(loading, "load", lambda *a, **k: pytest.fail("replay loaded a model"))
    path = write(tmp_path / "r.jsonl", token(0), token(1), SUMMARY)
    result = runner.invoke(cli.make_app(), ["replay", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "t0 t1 \n"
    assert "2 tokens · prefill 5 at 100 tok/s · decode 10.0 tok/s" in result.stderr
