"""YAML files -> frozen dataclasses, with errors that name the file and the key (torch-free).

Targets and calibration recipes are data, not code: a user adds a device by writing a YAML
file, so every mistake in one must come back as one line saying where and how to fix it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from edgetl.errors import EdgetlError


class ConfigError(EdgetlError):
    pass


def resolve_yaml(name_or_path: str | Path, folder: Path, kind: str) -> Path:
    """`name` -> folder/name.yaml; a path to a YAML file is taken as it is."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"{kind} file '{candidate}' does not exist")
        return candidate
    path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(folder.glob("*.yaml")))
        raise ConfigError(f"unknown {kind} '{name_or_path}'; choose one of: {known} (or pass a path to a {kind} YAML)")
    return path


def read_mapping(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"'{path}' cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"'{path}' is not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' must be a YAML mapping of keys to values")
    return data


def _coerce(value, hint, path: Path, key: str):
    where = f"'{path}': key '{key}'"
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(str, typing.get_args(hint)))
            raise ConfigError(f"{where} is {value!r}; choose one of: {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], path, key)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where} must be a non-empty list, got {value!r}")
        return tuple(_coerce(v, item, path, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        # YAML reads `8.6` or `6.0` as numbers; version-like strings are accepted as written.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported field type {hint!r}")


def parse_fields(cls, data: dict, path: Path, skip: tuple[str, ...] = ()) -> dict:
    """Validated constructor arguments for dataclass `cls` from `data` read from `path`.

    Unknown keys are rejected (a typo must not silently fall back to a default); fields in
    `skip` are filled by the caller, not by the file.
    """
    hints = typing.get_type_hints(cls, include_extras=False)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"'{path}': unknown key '{unknown[0]}'; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise ConfigError(f"'{path}': required key '{name}' is missing")
            continue
        kwargs[name] = _coerce(data[name], hints[name], path, name)
    return kwargs


def load_config(cls, name_or_path: str | Path, folder: Path, kind: str, validate):
    """Resolve, read and parse a YAML file into frozen dataclass `cls` (whose `path` field
    records the file), then run `validate(obj, path)` for checks across fields."""
    path = resolve_yaml(name_or_path, folder, kind)
    obj = cls(**parse_fields(cls, read_mapping(path), path, skip=("path",)), path=path)
    validate(obj, path)
    return obj

