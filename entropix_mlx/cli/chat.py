"""`entropix chat`: load the model, build the session (new or resumed), hand it to the loop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

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
    _fail,
    _group,
    _guard,
    _load,
    _options,
    _read_prompt,
    _show_profile,
    app,
)

SystemFileOpt = Annotated[
    Path | None,
    typer.Option("--system-file", help="Read the system message from this file.", dir_okay=False),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume", "-r", help="Continue a saved chat: the SESSION file given, else the latest."
    ),
]
NoSaveOpt = Annotated[
    bool,
    typer.Option("--no-save", help="Do not keep this chat in the sessions folder."),
]
SessionArg = Annotated[
    Path | None,
    typer.Argument(
        help="With --resume: a session file (from the sessions folder or a /save .jsonl).",
        metavar="SESSION",
        show_default=False,
    ),
]


@app.command()
def chat(
    session: SessionArg = None,
    model: ModelOpt = None,
    system: SystemOpt = None,
    system_file: SystemFileOpt = None,
    max_tokens: MaxTokensOpt = 512,
    sampler: SamplerOpt = "entropix",
    seed: SeedOpt = None,
    profile: ProfileOpt = "auto",
    set_: SetOpt = None,
    temp: TempOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    plain: PlainOpt = False,
    resume: ResumeOpt = False,
    no_save: NoSaveOpt = False,
) -> None:
    """Talk to the model, every token coloured by its quadrant (/help lists the commands).

    Every turn is kept in $XDG_DATA_HOME/entropix/sessions/ (or $ENTROPIX_HOME/sessions/):
    `entropix chat --resume` continues the latest chat, `--resume FILE` a given one.
    """
    from ..chat import store
    from ..errors import EntropixError

    if session is not None and not resume:
        _fail(f"{session}: to continue a saved chat pass --resume {session}")
    if system is not None and system_file is not None:
        _fail("pass --system or --system-file, not both")
    if system_file is not None:
        system = _read_prompt(str(system_file)).strip()
    saved = None
    if resume:
        try:
            saved = store.read_session(session or store.latest_session())
        except EntropixError as e:
            _fail(str(e))
        if model is None and saved.model and Path(saved.model).exists():
            model = saved.model
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
    _guard(_chat, model, system, plain, options, saved, no_save)


def _chat(model, system, plain, options, saved, no_save) -> None:
    from ..chat import store
    from ..chat.loop import COMMANDS, PATH_COMMANDS, run_chat
    from ..chat.session import ChatSession
    from ..ui import render as tui
    from ..ui.chat_view import ChatView

    plain = tui.wants_plain(plain, sys.stdout)
    console = tui.make_console(plain=plain)
    mdl, tok, info = _load(console, model)
    if saved is None:
        _show_profile(console, options.sampler, options.config, info.name)
    else:
        _show_profile(console, saved.sampler, saved.config, info.name)
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
    context = {"model": info.name, "model_path": str(info.path), "device": info.device}
    group = _group()
    log = None
    if not no_save and (group is None or group.rank() == 0):  # one session file, rank 0's
        inside = saved is not None and saved.path.parent == store.sessions_dir()
        log = store.SessionLog(saved.path if inside else store.new_session_path(), dict(context))
    view = ChatView(
        console,
        plain=plain,
        commands=COMMANDS,
        path_commands=PATH_COMMANDS,
        history=store.history_file(),
    )
    if group is not None:
        view = _SharedInput(view, group)
    run_chat(
        session,
        view,
        log=log,
        resume=saved,
        loader=lambda name: _load(console, name),
        **context,
    )
    if log is not None and log.path.exists():
        console.print(tui.Text(f"kept in {log.path}", style="ui.muted"))


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
