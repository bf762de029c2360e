"""Lab commands that look at runs: compare, replay, plot. Thin, like cli.py."""

from __future__ import annotations
