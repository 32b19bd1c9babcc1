"""Click options generated from config dataclasses (FinetuneConfig, ExportConfig), so a
default, a choice list or a range is written once, in the dataclass. tests/test_cli_options.py
checks that every field has its option with the same default."""

from __future__ import annotations

import dataclasses
import types
import typing

import click

from edgetl.cli.common import FiniteFloat


def _base_type(hint):
    if isinstance(hint, str):
        hint = eval(hint, {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)})  # noqa: S307
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def option_for(f: dataclasses.Field) -> typing.Callable:
    meta = f.metadata
    kind = _base_type(f.type)
    name = "--" + f.name.replace("_", "-")
    kwargs: dict = {"default": f.default, "help": meta.get("help", ""), "show_default": f.default is not None}
    if kind is bool:
        return click.option(name, f.name, is_flag=True, default=f.default, help=kwargs["help"])
    if meta.get("choices"):
        kwargs["type"] = click.Choice(list(meta["choices"]))
    elif kind is float:
        kwargs["type"] = FiniteFloat(meta.get("lo"), meta.get("hi"))
    elif kind is int:
        kwargs["type"] = click.IntRange(meta.get("lo"), meta.get("hi"))
    else:
        kwargs["type"] = str
    return click.option(name, f.name, **kwargs)


def config_options(cls, skip: tuple[str, ...] = ()):
    """Decorator: one click option per field of dataclass `cls` (those marked cli)."""
    def decorate(func):
        for f in reversed(dataclasses.fields(cls)):
            if f.name not in skip and f.metadata.get("cli", True):
                func = option_for(f)(func)
        return func
    return decorate
