"""Strict configs: a dataclass per script, YAML sets defaults, CLI flags override.

Each option's help text lives once, in its dataclass field's `metadata["help"]`; the CLI is
generated from the fields. An unknown key (in YAML or on the command line) is an error that
names the file and suggests the closest known key.

Why not transformers' HfArgumentParser / TRL's TrlParser: both import torch and transformers
(seconds of start-up for `build_data.py`, which needs neither), and neither names the YAML file
and a close match when a key is misspelt.

    @dataclass
    class BuildConfig:
        seed: int = field(default=42, metadata={"help": "seed for shuffles and splits"})

    cfg = parse_config(BuildConfig, argv)          # -c configs/data.yaml --seed 7
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _base_type(tp):
    """(base type, is_list) for a field annotation: Optional[X] -> X, list[X] -> (X, True)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple, Sequence):
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    if origin is typing.Literal:
        return type(typing.get_args(tp)[0]), False
    return tp, False


def _coerce(value: Any, tp, where: str):
    base, is_list = _base_type(tp)
    if value is None:
        return None
    if is_list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, base, where) for v in value]
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base in (int, float, str):
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(base, '__name__', base)}") from None
    return value


def _fields(cls) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def _unknown(key: str, known: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def load_yaml(path: str | Path, cls) -> dict:
    """Read a YAML config and check every key and value type against `cls`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found; pass an existing file with -c/--config")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of option: value")
    fields = _fields(cls)
    out = {}
    for key, value in data.items():
        key_n = str(key).replace("-", "_")
        if key_n not in fields:
            raise _unknown(str(key), list(fields), str(path))
        out[key_n] = _coerce(value, fields[key_n].type, f"{path}: {key}")
    return out


def build_parser(cls, description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, allow_abbrev=False,  # a misspelt prefix is an error
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML file of option: value; flags given here override it")
    for name, f in _fields(cls).items():
        if f.metadata.get("cli") is False:
            continue
        base, is_list = _base_type(f.type)
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        if default is not None:
            kw["help"] += f" (default: {default})"
        choices = f.metadata.get("choices")
        if choices:
            kw["choices"] = choices
        if base is bool and not is_list:
            kw["nargs"] = "?"
            kw["const"] = "true"
            kw["metavar"] = "BOOL"
        p.add_argument(*flags, **kw)
    return p


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None,
                 **overrides) -> T:
    """defaults < YAML (-c) < CLI flags < `overrides` (for tests and notebooks)."""
    parser = build_parser(cls, description)
    ns, extra = parser.parse_known_args(argv)
    if extra:
        bad = extra[0].split("=")[0]
        known = [f"--{n.replace('_', '-')}" for n in _fields(cls)]
        close = difflib.get_close_matches(bad, known, n=1)
        parser.error(f"unknown option {bad}" + (f"; did you mean {close[0]}?" if close else ""))
    values: dict[str, Any] = {}
    if ns.config:
        values.update(load_yaml(ns.config, cls))
    fields = _fields(cls)
    for name, value in vars(ns).items():
        if name == "config":
            continue
        values[name] = _coerce(value, fields[name].type, f"--{name.replace('_', '-')}")
    for name, value in overrides.items():
        if name not in fields:
            raise _unknown(name, list(fields), "override")
        values[name] = value
    cfg = cls(**values)
    if hasattr(cfg, "config_path") and ns.config:
        cfg.config_path = ns.config
    post = getattr(cfg, "validate", None)
    if callable(post):
        post()
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
