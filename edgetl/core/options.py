"""Config fields that carry their command-line help: each default lives in one dataclass,
and the CLIs generate their options from it (edgetl/cli/options.py)."""

from __future__ import annotations

from dataclasses import field


def opt(default, help: str, *, choices=None, lo=None, hi=None, cli: bool = True):
    """A dataclass field with what its option needs: help, choices, numeric range."""
    return field(default=default, metadata={"help": help, "choices": choices, "lo": lo, "hi": hi, "cli": cli})
