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
    _options,
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
    temp: TempOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    plain: PlainOpt = False,
) -> None:
    """Talk to the model, every token coloured by its quadrant (/help lists the commands)."""
    options = _options(
        sampler,
        max_tokens=max_tokens,
        seed=seed,
        profile=profile,
        overrides=set_,
        temp=temp,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        model=model,
    )
    _guard(_chat, model, system, plain, options)


def _chat(model, system, plain, options) -> None:
    from ..chat.loop import run_chat
    from ..chat.session import ChatSession
    from ..ui import render as tui
    from ..ui.chat_view import ChatView

    plain = tui.wants_plain(plain, sys.stdout)
    console = tui.make_console(plain=plain)
    mdl, tok, info = _load(console, model)
    _show_profile(console, options.sampler, options.config, info.name)
    session = ChatSession(
        mdl,
        tok,
        system=system,
        sampler=options.sampler,
        config=options.config,
        params=options.params,
        max_tokens=options.max_tokens,
        seed=options.seed,
        context_limit=info.context_length,
    )
    run_chat(session, ChatView(console, plain=plain), model=info.name, device=info.device)
