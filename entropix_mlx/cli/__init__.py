"""The `entropix` command: `app.py` holds the typer app and the shared options; each command group
is a module that registers on it. Imports stay inside `main`, so importing the package is free."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


def make_app() -> typer.Typer:
    """The typer app with every command group registered on it."""
    from . import chat, explore, measure, run, serve  # noqa: F401 (importing registers their commands)
    from .app import app

    return app


def main() -> None:
    """Entry point: click's multi-line usage errors become one line naming the bad flag."""
    import click
    import typer

    app = make_app()

    try:
        from typer._click.exceptions import UsageError  # typer ≥ 0.20 raises its vendored click's
    except ImportError:
        UsageError = click.UsageError
    try:
        code = app(standalone_mode=False)
    except (click.UsageError, UsageError) as e:
        hint = f" (see `entropix {e.ctx.command.name} --help`)" if e.ctx and e.ctx.command else ""
        typer.echo(f"entropix: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except (click.Abort, typer.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
