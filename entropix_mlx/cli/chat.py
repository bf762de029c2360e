"""`entropix chat`: load the model, build the session and hand it to the chat loop."""

from __future__ import annotations

import sys

from .app import (
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    PlainOpt,
    ProfileOpt,
    SamplerOpt,
    SeedOpt,
    SetOpt,
    SystemOpt,
    TempOpt,
    TopKOpt,
    TopPOpt,
    _guard,
    _load,
    _random_seed,
    _sampling,
    _show_profile,
    app,
)


@app.command()
def chat(
    model: ModelOpt = None,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = 512,
    sampler: SamplerOpt = "entropix",
    seed: SeedOpt = None,
    profile: ProfileOpt = "reference",
    set_: SetOpt = None,
    temp: TempOpt = 0.7,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0,
    plain: PlainOpt = False,
) -> None:
    """Talk to the model, every token coloured by its quadrant (/help lists the commands)."""
    options = _sampling(sampler, profile, set_, temp, top_k, top_p, min_p, model=model)
    _guard(_chat, model, system, max_tokens, seed, plain, options)


def _chat(model, system, max_tokens, seed, plain, options) -> None:
    from ..chat.loop import run_chat
    from ..chat.session import ChatSession
    from ..ui import render as tui
    from ..ui.chat_view import ChatView

    plain = tui.wants_plain(plain, sys.stdout)
    console = tui.make_console(plain=plain)
    mdl, tok, info = _load(console, model)
    _show_profile(console, options, info.name)
    seed = seed if seed is not None else _random_seed()
    session = ChatSession(
        mdl,
        tok,
        system=system,
        max_tokens=max_tokens,
        seed=seed,
        context_limit=info.context_length,
        **options,
    )
    run_chat(session, ChatView(console, plain=plain), model=info.name, device=info.device)
