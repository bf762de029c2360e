"""Lab commands that measure: calibrate, eval. Thin, like cli.py."""

from __future__ import annotations
