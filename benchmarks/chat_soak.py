"""Chat soak: many scripted turns through the real chat loop, checking that nothing leaks or drifts.

200 turns (messages and /retry) on the default model with short answers, with /clear, Ctrl-C in
the middle of answers (a real SIGINT) and context overflow (a small context, long messages, and
/compact when the chat offers it) mixed in. Reports:
- RSS at turns 1, 50, 100, 200 next to the KV cache's size (growth must stay within it);
- cache consistency after every turn: every layer holds exactly the ids the session tracks, and
  those ids are the re-rendered conversation (a prefix of it: an answer ends before the template's
  closing tokens); at the checkpoints also the cached keys against a fresh prefill of those ids;
- that the session file resumes to the final state, and that the resumed chat's next answer is
  the one the unbroken chat gives.

    python benchmarks/chat_soak.py [--turns 200] [--max-tokens 12] [--context 1024] [--model M]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import entropix_mlx  # noqa: F401 (first: it sets up the BLAS before MLX binds its symbols)

# isort: split
import mlx.core as mx

from entropix_mlx.chat import store
from entropix_mlx.chat.loop import run_chat
from entropix_mlx.chat.session import ChatSession, common_prefix
from entropix_mlx.engine.generate import prefill
from entropix_mlx.model.load import load

CHECKPOINTS = (1, 50, 100, 200)  # and the last turn of a shorter run
TOPICS = ["cats", "the sea", "bread", "rain", "trains", "maths", "tea", "birds", "snow", "music"]
LONG = "Tell me everything about this text. " + "The quick brown fox jumps over the lazy dog. " * 40


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak (macOS has no cheap current figure)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cache_bytes(session: ChatSession) -> int:
    return sum(c.nbytes for c in session.cache)


def keys_match_a_fresh_prefill(session: ChatSession) -> float:
    """Largest |difference| between the cached keys and those a fresh prefill of the same ids
    computes (layer 0 and the last layer)."""
    ids = session.cached_ids
    if not ids:
        return 0.0
    fresh = session.model.make_cache()
    prefill(session.model, ids, fresh)
    worst = 0.0
    for layer in (0, len(fresh) - 1):
        n = len(ids)
        a = session.cache[layer].keys[..., :n, :]
        b = fresh[layer].keys[..., :n, :]
        worst = max(worst, mx.max(mx.abs(a - b)).item())
    return worst


class SoakView:
    """A chat view that writes nothing: it scripts the input, presses Ctrl-C (SIGINT) during some
    answers, answers the chat's /compact offers, and checks the session after every turn."""

    def __init__(self, session: ChatSession, turns: int, seed: int):
        self.session, self.turns, self.rng = session, turns, random.Random(seed)
        self.turn = 0  # answers attempted (messages and /retry)
        self.pending: list[str] = []
        self.events: list = []
        self.interrupt_at: int | None = None
        self.counts = {
            "retry": 0,
            "clear": 0,
            "ctrl-c": 0,
            "stopped kept": 0,
            "context full": 0,
            "compact": 0,
            "long": 0,
            "errors": 0,
        }
        self.offsets_ok = self.checked = self.exact = self.retokenized = self.drifted = 0
        self.answered: int | None = None  # tokens of the answer just shown
        self.rss: dict[int, tuple[int, int, float]] = {}
        self.mlx: dict[int, int] = {}
        self.started = time.perf_counter()

    # ── input ──

    def prompt(self, continuation: bool = False) -> str | None:
        self._check()
        if self.pending:
            return self.pending.pop(0)
        if self.turn >= self.turns:
            return None
        self.turn += 1
        self.interrupt_at = None
        r = self.rng.random()
        if self.turn > 1 and r < 0.10:
            self.counts["retry"] += 1
            return "/retry"
        if r < 0.15:
            self.counts["clear"] += 1
            self.pending.append(f"Say one short thing about {self.rng.choice(TOPICS)}.")
            self.turn -= 1  # /clear is not a turn; the message after it is
            return "/clear"
        if r < 0.25:
            self.interrupt_at = 3
        if r > 0.95:
            self.counts["long"] += 1
            return LONG
        return f"Say one short thing about {self.rng.choice(TOPICS)}."

    # ── what the loop shows ──

    def welcome(self) -> None:
        pass

    def answer(self) -> SoakView:
        self.events = []
        return self

    def __enter__(self) -> SoakView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def token(self, ev) -> None:
        self.events.append(ev)
        if self.interrupt_at is not None and len(self.events) == self.interrupt_at:
            self.counts["ctrl-c"] += 1
            os.kill(os.getpid(), signal.SIGINT)

    def end(self, summary, peak_memory, *, interrupted: bool, context) -> None:
        self.answered = len(self.events)
        self.counts["stopped kept"] += interrupted and bool(
            self.session.messages and self.session.messages[-1].interrupted
        )

    def warning(self, message: str) -> None:
        if "/compact" in message and "/compact" not in self.pending:
            self.pending.insert(0, "/compact")

    def error(self, message: str) -> None:
        if message.startswith("context full"):
            self.counts["context full"] += 1
            self.pending.insert(0, "/compact")
        else:
            self.counts["errors"] += 1
            print(f"  error at turn {self.turn}: {message}", file=sys.stderr)

    def notice(self, message: str) -> None:
        if message.startswith("dropped the oldest"):
            self.counts["compact"] += 1

    @contextlib.contextmanager
    def busy(self, label: str):
        yield lambda done, total: None

    def __getattr__(self, name: str):  # help, legend, stats, settings, …: not used here
        return lambda *args: None

    # ── checks ──

    def _check(self, final: bool = False) -> None:
        s = self.session
        self.checked += 1
        self.offsets_ok += all(c.offset == len(s.cached_ids) for c in s.cache)
        if self.answered is not None:  # after an answer (a command may leave stale ids behind)
            rendered, held = s.conversation_ids(), s.cached_ids
            agree = common_prefix(held, rendered)
            if agree == len(held):
                self.exact += 1  # the cache is the conversation up to the template's closing
            elif agree >= len(held) - self.answered:
                self.retokenized += 1  # the prompt agrees; the answer's text re-tokenizes apart
            else:
                self.drifted += 1
            self.answered = None
        if (self.turn in CHECKPOINTS or final) and self.turn not in self.rss:
            rss, active, cached = rss_bytes(), mx.get_active_memory(), mx.get_cache_memory()
            self.mlx[self.turn] = active
            diff = keys_match_a_fresh_prefill(s)  # after the reading: it allocates a second cache
            self.rss[self.turn] = (rss, cache_bytes(s), diff)
            mins = (time.perf_counter() - self.started) / 60
            print(
                f"  turn {self.turn:>3}: RSS {rss / 2**20:6.1f} MiB · KV cache"
                f" {cache_bytes(s) / 2**20:4.1f} MiB · MLX active {active / 2**20:6.1f} MiB,"
                f" buffer cache {cached / 2**20:5.1f} MiB · ctx {len(s.conversation_ids())}/"
                f"{s.limit} · keys vs a fresh prefill {diff:.1e} · {mins:.1f} min",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    model, tok, info = load(args.model)
    print(f"{info.name} · {info.device} · context {args.context} · max tokens {args.max_tokens}")
    session = ChatSession(
        model,
        tok,
        system="You are brief.",
        sampler="entropix",
        seed=args.seed,
        max_tokens=args.max_tokens,
        context_limit=args.context,
    )
    with tempfile.TemporaryDirectory() as folder:
        log = store.SessionLog(Path(folder) / "soak.jsonl", {"model": info.name})
        view = SoakView(session, args.turns, args.seed)
        run_chat(session, view, log=log, model=info.name)
        view._check(final=True)

        print(f"turns {view.turn} · " + " · ".join(f"{k} {v}" for k, v in view.counts.items()))
        answers = view.exact + view.retokenized + view.drifted
        print(
            f"every layer's offset = the tracked ids: {view.offsets_ok}/{view.checked} checks;"
            f" after {answers} answers the cached ids are the re-rendered conversation:"
            f" {view.exact} exactly, {view.retokenized} up to an answer that re-tokenizes"
            f" differently, {view.drifted} drifted"
        )
        # MLX's own memory must grow by the KV cache only; RSS also holds what MLX caches per
        # prompt shape (compiled graphs) and what the C allocator keeps, so it is shown as read.
        turns = sorted(view.rss)
        first, last = view.rss[turns[0]], view.rss[turns[-1]]
        mlx_growth = view.mlx[turns[-1]] - view.mlx[turns[0]]
        kv_growth = last[1] - first[1]
        print(
            "RSS "
            + " → ".join(f"{view.rss[t][0] / 2**20:.0f}" for t in turns)
            + " MiB at turns "
            + ", ".join(map(str, turns))
            + f"; MLX active memory grew {mlx_growth / 2**20:.1f} MiB, the KV cache"
            f" {kv_growth / 2**20:.1f} MiB"
            f" → {'bounded by the cache' if mlx_growth <= kv_growth + 2**20 else 'GROWS'}"
        )

        saved = store.read_session(log.path)
        same = (
            [(m.role, m.content, m.interrupted) for m in saved.messages]
            == [(m.role, m.content, m.interrupted) for m in session.messages]
            and saved.system == session.system
            and saved.config == session.config
            and (saved.session_seed, saved.draws) == (session.seed, session.draws)
        )
        size = log.path.stat().st_size
        print(
            f"session file {size / 1024:.0f} KiB, {saved.turns} answers recorded: resumes to the"
            f" final state: {'yes' if same else 'NO'}"
        )
        again = ChatSession(model, tok, max_tokens=args.max_tokens, context_limit=args.context)
        again.restore(saved.messages, saved.system)
        again.sampler, again.config, again.params = saved.sampler, saved.config, saved.params
        again.set_seed(saved.session_seed, saved.draws)
        again.prefill()
        if not session.messages or len(session.conversation_ids()) + 64 >= session.limit:
            session.clear(), again.clear()
        # greedy and sample first: equal answers keep both histories equal for the next one.
        for sampler in ("greedy", "sample", "entropix"):
            again.set_sampler(sampler)
            session.set_sampler(sampler)
            resumed = [e.token_id for e in again.turn(f"One more short thing, {sampler}.")]
            unbroken = [e.token_id for e in session.turn(f"One more short thing, {sampler}.")]
            print(
                f"{sampler}: the next answer after resuming equals the unbroken chat's:"
                f" {resumed == unbroken}"
            )
            if resumed != unbroken:
                break


if __name__ == "__main__":
    main()
