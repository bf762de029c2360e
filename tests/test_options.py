"""Decoding options built in one place and passed down unchanged by every command (the heavy call
is patched and its arguments pinned); the shared helpers (sampler names, first difference, chat
messages, quadrant order, consoles); and `run`'s and `models`' small CLI behaviours."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from checkpoints import make_tiny_checkpoint
from conftest import run_main
from hypothesis import given
from hypothesis import strategies as st

from entropix_mlx.engine import config as config_module
from entropix_mlx.engine.config import QUADRANTS, SamplerConfig, check_sampler, sampler_names
from entropix_mlx.engine.options import DecodingOptions, decoding_options
from entropix_mlx.engine.sampler import SamplingParams, make_sampler
from entropix_mlx.engine.tokens import first_difference
from entropix_mlx.tokenize.chat_template import chat_messages

REFERENCE = SamplerConfig()
# What `--sampler sample` draws with unless --temp/--top-k/--top-p/--min-p say otherwise.
BASE = SamplingParams(0.666, 27, 0.9, 0.03)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def prompt(tmp_path: Path) -> Path:
    path = tmp_path / "prompt.txt"
    path.write_text("What is the capital of France?\n")
    return path


# ── the options value ─────────────────────────────────────────────────────────────────────────


def test_sample_draws_with_the_profile_base_parameters_in_library_and_cli_alike() -> None:
    assert SamplingParams.from_config(REFERENCE) == BASE
    assert decoding_options("sample", REFERENCE, max_tokens=8, seed=1).params == BASE
    assert make_sampler("sample", REFERENCE).params == BASE  # what a name given to generate uses
    hot = REFERENCE.with_overrides({"temperature": "1.5"})
    assert decoding_options("sample", hot, max_tokens=8, seed=1).params.temperature == 1.5


def test_each_given_parameter_replaces_only_its_own() -> None:
    opts = decoding_options("sample", REFERENCE, max_tokens=8, seed=1, top_k=0, min_p=0.0)
    assert opts.params == SamplingParams(0.666, 0, 0.9, 0.0)
    opts = decoding_options("sample", REFERENCE, max_tokens=8, seed=1, temperature=0.0)
    assert opts.params == SamplingParams(0.0, 27, 0.9, 0.03)


def test_options_are_frozen_checked_and_draw_a_seed_when_none_is_given() -> None:
    opts = decoding_options("entropix", REFERENCE, max_tokens=8)
    assert isinstance(opts.seed, int) and 0 <= opts.seed < 2**32
    with pytest.raises(AttributeError):
        opts.seed = 3  # type: ignore[misc]
    assert opts.with_sampler("greedy") == DecodingOptions("greedy", REFERENCE, BASE, 8, opts.seed)
    assert opts.generate_kwargs() == {
        "sampler": "entropix",
        "config": REFERENCE,
        "params": BASE,
        "max_tokens": 8,
        "seed": opts.seed,
    }
    for bad in (
        lambda: decoding_options("nucleus", REFERENCE, max_tokens=8),
        lambda: decoding_options("sample", REFERENCE, max_tokens=0),
        lambda: decoding_options("sample", REFERENCE, max_tokens=8, top_p=0.0),
        lambda: opts.with_sampler("beam"),
    ):
        with pytest.raises(ValueError):
            bad()


# ── sampler names: one check, duplicates rejected everywhere ─────────────────────────────────


def test_sampler_names_are_checked_in_one_place() -> None:
    assert check_sampler("greedy") == "greedy"
    assert sampler_names(" greedy, entropix ,sample") == ("greedy", "entropix", "sample")
    with pytest.raises(ValueError, match="unknown sampler 'beam'; choose from entropix"):
        sampler_names("greedy,beam")
    for text in ("greedy,greedy", " , ", ""):
        with pytest.raises(ValueError, match="name each sampler once"):
            sampler_names(text)
    with pytest.raises(ValueError, match="unknown sampler 'beam'"):
        make_sampler("beam", REFERENCE)


@pytest.mark.parametrize("command", ["compare", "eval"])
def test_compare_and_eval_both_reject_a_sampler_named_twice(
    monkeypatch, capsys, tmp_path: Path, prompt: Path, command: str
) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "2+2?", "number": 4}\n')
    source = ["-f", str(prompt)] if command == "compare" else ["-q", str(questions)]
    code, out, err = run_main(
        monkeypatch, capsys, [command, *source, "--samplers", "greedy,greedy"]
    )
    assert code == 1 and out == ""
    assert err.strip() == (
        "entropix: --samplers greedy,greedy: name each sampler once, e.g. greedy,entropix"
    )


# ── every command passes its options down unchanged ──────────────────────────────────────────


class Recorder:
    """Stands in for the heavy call: records each call's keyword arguments, returns `result`."""

    def __init__(self, result: Any = ()) -> None:
        self.calls: list[dict[str, Any]] = []
        self.result = result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if isinstance(self.result, BaseException):
            raise self.result
        return iter(self.result)


class Stop(Exception):
    pass


def patch_generate(monkeypatch) -> Recorder:
    from entropix_mlx.engine import generate as generate_module

    recorder = Recorder()
    monkeypatch.setattr(generate_module, "generate", recorder)
    return recorder


def sampling(call: dict[str, Any]) -> dict[str, Any]:
    return {k: call[k] for k in ("sampler", "config", "params", "max_tokens", "seed")}


def test_run_passes_its_options_down(monkeypatch, capsys, tiny_path: Path, prompt: Path) -> None:
    calls = patch_generate(monkeypatch).calls
    args = ["run", "-f", str(prompt), "-m", str(tiny_path), "-s", "sample", "--seed", "5"]
    code, _, err = run_main(monkeypatch, capsys, [*args, "-n", "7", "--top-p", "0.5"])
    assert code == 0, err
    params = SamplingParams(0.666, 27, 0.5, 0.03)
    assert [sampling(c) for c in calls] == [
        {"sampler": "sample", "config": REFERENCE, "params": params, "max_tokens": 7, "seed": 5}
    ]


def test_run_defaults(monkeypatch, capsys, tiny_path: Path, prompt: Path) -> None:
    calls = patch_generate(monkeypatch).calls
    code, _, err = run_main(monkeypatch, capsys, ["run", "-f", str(prompt), "-m", str(tiny_path)])
    assert code == 0, err
    (call,) = calls
    assert isinstance(call["seed"], int)  # a drawn seed, recorded so replay --check can reuse it
    assert sampling(call) | {"seed": 0} == {
        "sampler": "entropix",
        "config": REFERENCE,
        "params": BASE,
        "max_tokens": 256,
        "seed": 0,
    }


def test_chat_passes_its_options_to_the_session(monkeypatch, capsys, tiny_path: Path) -> None:
    from entropix_mlx.chat import loop, session

    made = Recorder(result=[])
    monkeypatch.setattr(session, "ChatSession", made)
    monkeypatch.setattr(loop, "run_chat", lambda *a, **k: None)
    args = ["chat", "-m", str(tiny_path), "-s", "sample", "--seed", "9", "--temp", "1.1"]
    code, _, err = run_main(monkeypatch, capsys, [*args, "--set", "top_k=40", "--system", "Hi."])
    assert code == 0, err
    config = REFERENCE.with_overrides({"top_k": "40"})
    (call,) = made.calls
    assert sampling(call) == {
        "sampler": "sample",
        "config": config,
        "params": SamplingParams(1.1, 40, 0.9, 0.03),
        "max_tokens": 512,
        "seed": 9,
    }
    assert call["system"] == "Hi." and call["context_limit"] == 1024


def test_compare_gives_every_sampler_the_same_options(
    monkeypatch, capsys, tiny_path: Path, prompt: Path
) -> None:
    calls = patch_generate(monkeypatch).calls
    args = ["compare", "-f", str(prompt), "-m", str(tiny_path), "--seed", "3", "-n", "4"]
    code, _, err = run_main(monkeypatch, capsys, args)
    assert code == 0, err
    assert [sampling(c) for c in calls] == [
        {"sampler": name, "config": REFERENCE, "params": BASE, "max_tokens": 4, "seed": 3}
        for name in ("greedy", "entropix", "sample")
    ]


def test_eval_passes_its_options_down(monkeypatch, capsys, tiny_path: Path, tmp_path) -> None:
    from entropix_mlx.lab import evaluate

    answer = Recorder()
    monkeypatch.setattr(evaluate, "answer_questions", answer)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "2+2?", "number": 4}\n')
    args = ["eval", "-q", str(questions), "-m", str(tiny_path), "-s", "sample,greedy", "-n", "5"]
    code, _, err = run_main(monkeypatch, capsys, [*args, "--batch-size", "3"])
    assert code == 0, err
    (call,) = answer.calls
    assert [c.sampler for c in call.pop("samplers")] == ["sample", "greedy"]
    assert call == {"config": REFERENCE, "max_tokens": 5, "seed": 0, "seeds": 1, "batch_size": 3}
    # No params: `sample` is built from the config, so it draws with BASE as in every command.
    assert make_sampler("sample", call["config"]).params == BASE


def test_calibrate_passes_its_token_budget_down(
    monkeypatch, capsys, tiny_path: Path, tmp_path
) -> None:
    from entropix_mlx.lab import calibrate

    collect = Recorder(result=Stop())
    monkeypatch.setattr(calibrate, "collect_samples", collect)
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    args = ["calibrate", "-f", str(prompts), "-o", str(tmp_path / "c.toml"), "-m", str(tiny_path)]
    monkeypatch.setattr(sys, "argv", ["entropix", *args, "-n", "6"])
    from entropix_mlx import cli

    with pytest.raises(Stop):
        cli.main()
    (call,) = collect.calls
    assert call["max_tokens"] == 6  # greedy with seed 0 inside: calibration takes no sampler


def test_replay_check_decodes_with_the_recorded_options(
    monkeypatch, capsys, tiny_path: Path, prompt: Path, tmp_path
) -> None:
    jsonl = tmp_path / "run.jsonl"
    args = ["run", "-f", str(prompt), "-m", str(tiny_path), "-s", "sample", "--seed", "11"]
    code, _, err = run_main(monkeypatch, capsys, [*args, "-n", "3", "--jsonl", str(jsonl)])
    assert code == 0, err
    calls = patch_generate(monkeypatch).calls
    code, _, _ = run_main(monkeypatch, capsys, ["replay", str(jsonl), "--check"])
    assert code == 1  # the patched generate decodes nothing: the tokens differ
    assert [sampling(c) for c in calls] == [
        {"sampler": "sample", "config": REFERENCE, "params": BASE, "max_tokens": 3, "seed": 11}
    ]


def test_help_says_what_sample_means(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: no box border inside the text
    for command in ("run", "chat", "compare"):
        code, out, _ = run_main(monkeypatch, capsys, [command, "--help"])
        text = " ".join(out.split())
        assert code == 0 and "T 0.666" in text and "top-k 27" in text, command
        assert "profile's base parameters, in every command" in text
    code, out, _ = run_main(monkeypatch, capsys, ["eval", "--help"])
    assert "`sample` uses the profile's T0/k0/p0/m0, as everywhere" in " ".join(out.split())


# ── run: a prompt longer than the context ────────────────────────────────────────────────────


def test_run_with_a_prompt_longer_than_the_context_prints_only_the_error(
    monkeypatch, capsys, tiny_path: Path, tmp_path: Path
) -> None:
    long = tmp_path / "long.txt"
    long.write_text("word " * 1200)
    code, out, err = run_main(monkeypatch, capsys, ["run", "-f", str(long), "-m", str(tiny_path)])
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"--prompt-file {long}: the prompt is " in err
    assert "context of 1024 tokens; shorten it" in err
    assert "conversation" not in err and "prefill" not in err and "tiny-llama" not in err


def test_run_names_the_batch_prompt_that_does_not_fit(
    monkeypatch, capsys, tiny_path: Path, tmp_path: Path
) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"prompt": "w " * 1200}))
    code, out, err = run_main(monkeypatch, capsys, ["run", "-f", str(batch), "-m", str(tiny_path)])
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "prompt 2 is " in err


# ── models honours NO_COLOR and --plain ──────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("args", "env", "coloured"),
    [([], {}, True), ([], {"NO_COLOR": "1"}, False), (["--plain"], {}, False)],
)
def test_models_honours_no_color_and_plain(
    monkeypatch, capsys, args: list[str], env: dict, coloured: bool
) -> None:
    for name in ("NO_COLOR", "TERM", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    code, out, _ = run_main(monkeypatch, capsys, ["models", *args])
    assert code == 0 and "device" in out
    assert ("\x1b[" in out) == coloured, out


# ── shared helpers ────────────────────────────────────────────────────────────────────────────


def naive_first_difference(streams: list[list[int]]) -> int | None:
    if len(streams) < 2 or all(s == streams[0] for s in streams):
        return None
    i = 0
    while all(i < len(s) for s in streams) and len({s[i] for s in streams}) == 1:
        i += 1
    return i


@given(st.lists(st.lists(st.integers(0, 2), max_size=5), max_size=4))
def test_first_difference_agrees_with_a_naive_definition(streams: list[list[int]]) -> None:
    assert first_difference(*streams) == naive_first_difference(streams)


def test_first_difference_examples() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2  # one ending early differs
    assert first_difference([], []) is None and first_difference([1]) is None
    assert first_difference([1, 2], [1, 2], [1, 9]) == 1


def test_chat_messages() -> None:
    assert chat_messages("hi") == [{"role": "user", "content": "hi"}]
    assert chat_messages("hi", system="Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert chat_messages(system="", history=[("user", "a"), ("assistant", "b")]) == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]


def test_one_quadrant_order_least_to_most_uncertain() -> None:
    from entropix_mlx.lab.calibrate import mix_line
    from entropix_mlx.ui import render

    assert QUADRANTS == ("LELV", "MID", "LEHV", "HELV", "HEHV")
    assert tuple(render.QUADRANT_HELP) == QUADRANTS
    assert mix_line({q: 1 for q in reversed(QUADRANTS)}).split()[::2] == list(QUADRANTS)
    assert config_module.QUADRANTS is QUADRANTS
