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
    _group,
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
    view = ChatView(console, plain=plain)
    group = _group()
    if group is not None:
        view = _SharedInput(view, group)
    run_chat(session, view, model=info.name, device=info.device)


class _SharedInput:
    """Under mlx.launch: rank 0 reads each line and every rank acts on it (the others draw into
    the void), so all ranks run the same steps. Only rank 0 writes /save's files."""

    def __init__(self, view, group):
        self.view, self.group = view, group

    def prompt(self) -> str | None:
        from ..model.distributed import broadcast_object

        line: str | None | KeyboardInterrupt = None
        if self.group.rank() == 0:
            try:
                line = self.view.prompt()
            except KeyboardInterrupt as e:
                line = e
        line = broadcast_object(line, self.group)
        if isinstance(line, KeyboardInterrupt):
            raise line
        if self.group.rank() > 0 and line is not None and line.strip().startswith("/save"):
            return ""  # /save changes nothing the next steps depend on
        return line

    def __getattr__(self, name: str):
        return getattr(self.view, name)
