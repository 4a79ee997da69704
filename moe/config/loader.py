"""Reading the two inputs of a run: the recipe YAML (+ dotted overrides) -> `Recipe`, strictly (an unknown key or a
wrong type is an error), and the ds_config JSON (+ `ds.` overrides) -> a dict."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from moe.config.schema import Recipe


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a recipe YAML (or the defaults when `path` is None) and apply `a.b=value` overrides."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
        source = str(path)
    for item in overrides:
        apply_override(raw, item)
    return from_dict(Recipe, raw, where=source)


def load_ds_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a ds_config JSON; `key.sub=value` overrides (the `ds.` prefix already stripped) apply on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ds_config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a ds_config must be a JSON object")
    for item in overrides:
        apply_override(config, item)
    return config


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Dotted overrides: `ds.x=1` goes to the ds_config (as `x=1`), everything else to the recipe."""
    ds = [i[len("ds.") :] for i in items if i.startswith("ds.")]
    return [i for i in items if not i.startswith("ds.")], ds


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 16, 1e-3, true, [1,2] work)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    value = yaml.safe_load(text) if text != "" else None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, naming the offending key and the allowed keys on error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix[:-1] or cls.__name__}' must be a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        name = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"{where}: unknown key '{name}'; allowed keys{' in ' + prefix[:-1] if prefix else ''}: {', '.join(fields)}"
        )
    kwargs = {k: _coerce(hints[k], v, where, f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, where, key)
        for option in inner:  # e.g. int | list[int]: the first type the value fits
            try:
                return _coerce(option, value, where, key)
            except ConfigError:
                pass
        names = " or ".join(_type_name(a) for a in inner)
        raise ConfigError(f"{where}: '{key}' must be {names}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where, prefix=f"{key}.")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {_show(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: '{key}' must be {tp.__name__}, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value, default=str)[:60]}"


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def _type_name(tp: Any) -> str:
    """int -> 'int', list[int] -> 'a list of int'."""
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return tp.__name__
