"""The `entropix` command: `app.py` holds the typer app and the shared options; each command group
is a module that registers on it. Imports stay inside `main`, so importing the package is free."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import typer


def make_app() -> typer.Typer:
    """The typer app with every command group registered on it."""
    from . import chat, explore, measure, run, serve  # noqa: F401 (importing registers their commands)
    from .app import app

    return app


def main() -> None:
    """Entry point: click's multi-line usage errors become one line naming the bad flag."""
    from ..model.launch import launch_rank, launched

    if launched() and launch_rank() > 0:
        with _quiet(launch_rank()):
            _main()
        return
    _main()


@contextlib.contextmanager
def _quiet(rank: int) -> Iterator[None]:
    """Under mlx.launch only rank 0 shows anything: another rank's output is dropped, except the
    one-line error it fails with (or the end of a traceback), marked with its rank."""
    real_err = sys.stderr
    captured = io.StringIO()
    sys.stdout, sys.stderr = open(os.devnull, "w"), captured  # noqa: SIM115 (lives to the exit)
    try:
        yield
    except SystemExit as e:
        if e.code not in (0, None):
            _report(real_err, rank, captured.getvalue())
        raise
    except BaseException:
        traceback.print_exc(file=captured)
        _report(real_err, rank, captured.getvalue())
        raise SystemExit(1) from None


def _report(err: TextIO, rank: int, text: str) -> None:
    import time

    # An error every rank hits (a bad flag, heads that cannot be split) is rank 0's to report:
    # mlx.launch ends the other ranks as soon as one fails, so waiting a moment keeps one line.
    time.sleep(5.0)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines:
        err.write(f"rank {rank}: {lines[-1]}\n")
        err.flush()


def _main() -> None:
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
