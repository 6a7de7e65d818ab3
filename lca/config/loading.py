"""Reading a run configuration: YAML files and ``key.path=value`` overrides checked into
the dataclasses of `lca.config.schema`.

Every key is checked on load, so a typo fails at once with the key path and the file, instead
of being silently ignored after an hour of training. Old key names (`RENAMED_KEYS`) are read
as the new ones, and old true/false keys (`FLAG_KEYS`) as the value of a key that replaced
them, with one ``note:`` line each.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..locations import location  # a run's config may live at a URL (s3://…/config.yaml)
from .schema import Config, ConfigError, note_renamed


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read and validate a YAML config; ``overrides`` are ``key.path=value`` strings."""
    path = location(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where} in {path}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"top level must be a mapping of sections in {path}")
    raw.setdefault("name", path.stem)
    for override in overrides:
        apply_override(raw, override, str(path))
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain mapping (as read from YAML) into a `Config`."""
    return _build(Config, raw, "", source)


def apply_override(raw: dict[str, Any], override: str, source: str = "<overrides>") -> None:
    """Set ``a.b.c=value`` in a raw config mapping; the value is parsed as YAML."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected key.path=value")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a section in {source}")
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


#: Config keys that have a new name (old dotted path: new one). An old key keeps working and
#: prints ``note: OLD is now NEW`` once.
RENAMED_KEYS = {
    "allocate.max_splits": "allocate.max_intervals",
    "allocate.chunk_iterations": "allocate.block_iterations",
}

#: Old true/false keys that are now one value of another key (old dotted path: (new dotted
#: path, the value ``true`` stands for, the values of the new key ``true`` may replace)).
#: ``true`` sets the new key to that value, ``false`` (the old default) is dropped; either
#: prints ``note: OLD is now NEW: VALUE`` once.
FLAG_KEYS = {
    "allocate.allow_tf32": ("allocate.precision", "tf32", ("auto", "float32", "tf32")),
}


def renamed_keys(raw: dict[str, Any], prefix: str, *, note: bool = True) -> dict[str, Any]:
    """``raw`` (a section's mapping) with its old key names replaced by the new ones."""
    renamed = {}
    flags = []
    for key, value in raw.items():
        if f"{prefix}{key}" in FLAG_KEYS:
            flags.append((key, value))
            continue
        new = RENAMED_KEYS.get(f"{prefix}{key}")
        if new is None:
            renamed[key] = value
            continue
        new_key = new.rpartition(".")[2]
        if new_key in raw:
            raise ConfigError(f"{prefix}{key}: the old name of {new}; give only {new}")
        if note:
            note_renamed(f"{prefix}{key}", new)
        renamed[new_key] = value
    for key, value in flags:  # after the other keys: the new key may be given too
        new, meant, replaces = FLAG_KEYS[f"{prefix}{key}"]
        new_key = new.rpartition(".")[2]
        if not isinstance(value, bool):
            raise ConfigError(f"{prefix}{key}: must be true or false, got {value!r}")
        if note:
            note_renamed(f"{prefix}{key}", f"{new}: {meant}")
        if not value:
            continue
        given = renamed.get(new_key, replaces[0])
        if given not in replaces:
            raise ConfigError(
                f"{prefix}{key}: true means {new}: {meant}, which contradicts {new}: {given}; "
                f"give only {new}"
            )
        renamed[new_key] = meant
    return renamed


def _build(cls: type, raw: Any, prefix: str, source: str | None):
    where = f" in {source}" if source else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping{where}")
    raw = renamed_keys(raw, prefix)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"{prefix}{key}: unknown key (allowed: {allowed}){where}")
    values = {
        key: _convert(hints[key], value, f"{prefix}{key}", source) for key, value in raw.items()
    }
    obj = cls(**values)
    if hasattr(obj, "validate"):
        for key, problem in obj.validate().items():
            raise ConfigError(f"{prefix}{key}: {problem}{where}")
    return obj


def with_overrides(section: Any, overrides: dict[str, Any], prefix: str) -> Any:
    """A copy of a config ``section`` with ``overrides`` applied, checked like a config file:
    unknown names, types, allowed values and the section's ``validate()`` (errors name the
    setting, e.g. ``allocate.max_intervals: must be a power of two >= 2``)."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    for key, value in renamed_keys(overrides, prefix).items():
        values[key] = list(value) if isinstance(value, tuple) else value
    return _build(type(section), values, prefix, None)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(tp: Any, value: Any, key: str, source: str | None) -> Any:
    def fail() -> typing.NoReturn:
        where = f" in {source}" if source else ""
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}{where}")

    if tp is Any:  # free-form values (builder kwargs): whatever YAML gave
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key, source)
            except ConfigError:
                continue
        fail()
    if origin is Literal:
        if value not in typing.get_args(tp):
            fail()
        return value
    if origin is list:
        if not isinstance(value, list):
            fail()
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        _, item = typing.get_args(tp)
        return {str(k): _convert(item, v, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.", source)
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                fail()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this module
