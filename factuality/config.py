"""Strict configs over the libraries' own dataclasses: YAML sets values, CLI flags override.

A stage's config is one dataclass (build_data, evaluate) or several *parts*: for train_sft, TRL's
`SFTConfig` (every `TrainingArguments` option under its own name), the model part
(`modeling.ModelOptions`, a subclass of TRL's `ModelConfig`: loading, quantisation, LoRA) and our
own options (data files, batching, resume). One flat namespace of keys fills them all:

    cfg = parse_config(SFT_SPEC, ["-c", "configs/sft_cpu.yaml", "--learning-rate", "3e-4"])
    cfg.train.learning_rate, cfg.model.lora_r, cfg.run.train_file   # one part each
    cfg.learning_rate                                              # the same value, read through

Rules, in order: library default < the stage's recipe default < YAML (-c) < CLI flags <
`overrides` (tests and notebooks). A key that several parts know (e.g. `trust_remote_code`) sets
all of them. A key no part knows is an error naming the file and the closest key across all
parts; a value of the wrong type or out of range is an error naming the file and key. Each
option's help text lives once, in its field's `metadata["help"]` (the libraries' own help for
theirs), and `--help` lists them grouped by part.

The notebook's layouts are read as written: nested `lora:` / `training:` / `data:` sections and
its key names (`model_name`, `max_seq_length`, `train_path`, `num_epochs`, ...) are renamed to
ours, one logged line per renamed key, and never rejected. Every such name is in `compat.py`,
applied here before the dataclasses are built.

Why our own loader rather than transformers' `HfArgumentParser` / TRL's `TrlParser`: those
import torch and transformers (seconds of start-up for `build_data.py`, which needs neither),
neither names the YAML file and a close match for a misspelt key, neither checks ranges, and
neither reads the notebook's nested layout. The values still land in the libraries' classes.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import json
import logging
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import yaml

from .compat import apply_aliases, flatten, stage_aliases
from .errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Types and values
# --------------------------------------------------------------------------------------------
_NONE = type(None)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _members(tp) -> list:
    """The non-None member types of an annotation (a union gives several)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not _NONE]
    return [tp]


def _kind(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence, set) or tp in (list, tuple):
        return "list"
    if origin in (dict, Mapping) or tp is dict:
        return "dict"
    if origin is typing.Literal:
        return "literal"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "enum"
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if tp is str:
        return "str"
    return "any"


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 120
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxlong = 3, 8, 8, 40


def shown(value) -> str:
    """A value as an error message quotes it: its repr, cut to a readable size (a 50 MB value or a
    YAML alias bomb must not become a 50 MB error line)."""
    return _SHOWN.repr(value)


def _bad(where: str, value, what: str) -> ConfigError:
    return ConfigError(f"{where}: {shown(value)} is not {what}")


def _coerce_one(value: Any, tp, where: str):
    kind = _kind(tp)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower() if isinstance(value, str) else None
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise _bad(where, value, "a boolean (true/false)")
    if kind in ("int", "float"):
        if isinstance(value, bool):  # YAML `true` for a number is a mistake, never 1
            raise _bad(where, value, f"a number ({kind}); booleans are not numbers")
        if kind == "int" and isinstance(value, str):
            try:
                return int(value.strip())   # exactly: float() would round 99999999999999999999 to 1e20
            except ValueError:
                pass
        try:
            num = float(value) if isinstance(value, str) else value
            if not isinstance(num, (int, float)):
                raise TypeError
        except (TypeError, ValueError):
            raise _bad(where, value, f"a valid {kind}") from None
        if kind == "int":
            if isinstance(num, float) and (not num.is_integer() or abs(num) >= 2 ** 53):
                raise _bad(where, value, "a whole number" if not num.is_integer() else
                           "a whole number written exactly (a float this large is rounded; write its digits)")
            return int(num)
        return float(num)
    if kind == "str":
        if isinstance(value, (dict, list)):
            raise _bad(where, value, "a string")
        return str(value)
    if kind == "enum":
        choices = [m.value for m in tp]
        if str(value) not in [str(c) for c in choices]:
            raise ConfigError(f"{where}: {shown(value)} is not one of {', '.join(map(str, choices))}")
        return str(value)
    if kind == "literal":
        choices = typing.get_args(tp)
        for c in choices:
            if value == c or str(value) == str(c):
                return c
        raise ConfigError(f"{where}: {shown(value)} is not one of {', '.join(map(str, choices))}")
    if kind == "list":
        if isinstance(value, str):
            s = value.strip()
            try:
                value = json.loads(s) if s.startswith("[") else [v.strip() for v in s.split(",") if v.strip()]
            except ValueError as e:   # JSONDecodeError, or nesting past the recursion limit
                raise _bad(where, value, f"a list: {e}; write a JSON list with quoted strings, e.g. "
                                         f"'[\"q_proj\", \"v_proj\"]', or comma-separated values") from None
            except RecursionError:
                raise _bad(where, value, "a list (nested too deep)") from None
        if not isinstance(value, (list, tuple)):
            raise _bad(where, value, "a list")
        args = typing.get_args(tp)
        return [coerce(v, args[0], where) if args else v for v in value]
    if kind == "dict":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise _bad(where, value, "a mapping (YAML mapping, or JSON on the command line)") from None
        if not isinstance(value, dict):
            raise _bad(where, value, "a mapping")
        return value
    return value


def _matches(value, tp) -> bool:
    kind = _kind(tp)
    return {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "str": isinstance(value, str), "list": isinstance(value, (list, tuple)),
            "dict": isinstance(value, dict)}.get(kind, False)


def coerce(value: Any, tp, where: str):
    """`value` (from YAML or a CLI string) as the annotation `tp` asks, or a ConfigError."""
    if value is None:
        return None
    members = _members(tp)
    enums = [m for m in members if _kind(m) == "enum"]
    if enums and isinstance(value, str):  # `SchedulerType | str`: the str is the enum's spelling
        return _coerce_one(value, enums[0], where)
    if len(members) == 1:
        return _coerce_one(value, members[0], where)
    for m in members:  # a union: the member the value already is, else the first that parses
        if _matches(value, m):
            return _coerce_one(value, m, where)
    order = {"bool": 0, "int": 1, "float": 2, "dict": 3, "list": 4, "enum": 5, "literal": 5, "str": 6, "any": 7}
    errors = []
    for m in sorted(members, key=lambda m: order[_kind(m)]):
        try:
            return _coerce_one(value, m, where)
        except (ConfigError, json.JSONDecodeError) as e:
            errors.append(str(e))
    raise ConfigError(errors[-1] if errors else f"{where}: {shown(value)} has the wrong type")


# Ranges of the libraries' options that they do not check themselves (name -> (op, bound)).
# Our own fields carry theirs in metadata: {"min": 0} (>=), {"gt": 0} (>), {"max": 1} (<=), {"lt": 1} (<).
LIBRARY_RANGES: dict[str, dict[str, float]] = {
    "learning_rate": {"gt": 0}, "per_device_train_batch_size": {"min": 1}, "per_device_eval_batch_size": {"min": 1},
    "gradient_accumulation_steps": {"min": 1}, "num_train_epochs": {"gt": 0}, "weight_decay": {"min": 0},
    "warmup_steps": {"min": 0}, "max_grad_norm": {"min": 0}, "logging_steps": {"gt": 0}, "save_steps": {"gt": 0},
    "eval_steps": {"gt": 0}, "save_total_limit": {"min": 0}, "max_length": {"min": 1},
    "lora_r": {"min": 1}, "lora_alpha": {"gt": 0}, "lora_dropout": {"min": 0, "lt": 1},
    "dataloader_num_workers": {"min": 0}, "beta": {"gt": 0}, "label_smoothing": {"min": 0, "max": 0.5},
    "max_prompt_length": {"min": 1}, "max_completion_length": {"min": 1},
    # numpy, torch and random all take a seed in [0, 2**32): outside it they fail deep in a run
    "seed": {"min": 0, "max": 2**32 - 1}, "data_seed": {"min": 0, "max": 2**32 - 1},
}
_OPS = {"min": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"), "max": (lambda v, b: v <= b, "<="),
        "lt": (lambda v, b: v < b, "<")}


def check_range(name: str, value, limits: Mapping[str, float] | None, where: str) -> None:
    """Every number (and every number in a list) finite, and within the option's limits."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}: {shown(v)} is not a finite number; give a number such as 0.5")
    if value is None or not limits or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for op, bound in limits.items():
        ok, sign = _OPS[op]
        if not ok(value, bound):
            raise ConfigError(f"{where}: {shown(value)} must be {sign} {bound}")


def _limits(name: str, f: dataclasses.Field) -> dict | None:
    own = {k: f.metadata[k] for k in _OPS if k in f.metadata}
    return own or LIBRARY_RANGES.get(name)


# --------------------------------------------------------------------------------------------
# Parts and stage configs
# --------------------------------------------------------------------------------------------
def fields_of(cls) -> dict[str, dataclasses.Field]:
    """Fields (with resolved annotations) of a dataclass, in definition order; private ones left out."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or not f.init:
            continue
        f.type = hints.get(f.name, f.type)
        out[f.name] = f
    return out


@dataclass(frozen=True)
class Part:
    """One dataclass filled from the stage's flat keys. `defaults` are the stage's recipe defaults
    for it (they replace the library's); the user's keys override them."""

    name: str
    cls: type
    title: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """The parts of a stage's config, and a hook that derives values across parts before the
    dataclasses are built: prepare(values_by_part, explicit_keys) mutates values_by_part."""

    name: str
    parts: tuple[Part, ...]
    prepare: Callable[[dict[str, dict], set[str]], None] | None = None
    check: Callable[["StageConfig"], None] | None = None  # cross-part checks on the built config


class StageConfig:
    """A built stage config: one attribute per part; other attributes read through to the parts."""

    def __init__(self, spec: StageSpec, parts: dict[str, Any], explicit: set[str], config_path: str | None,
                 renamed: list[str]):
        self.__dict__.update(parts)
        self._spec, self._parts, self.explicit, self.config_path, self.renamed = spec, parts, explicit, config_path, renamed

    def __getattr__(self, name):  # only called when normal lookup fails
        parts = self.__dict__.get("_parts", {})
        for part in parts.values():
            if name in {f.name for f in dataclasses.fields(part)}:
                return getattr(part, name)
        raise AttributeError(f"no option {name!r} in the {self.__dict__.get('_spec').name} config")

    def to_dict(self) -> dict:
        return {name: _asdict(p) for name, p in self._parts.items()}

    def __repr__(self) -> str:
        return f"StageConfig({self._spec.name}: {', '.join(self._parts)})"


def _asdict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, enum.Enum):
            v = v.value
        elif dataclasses.is_dataclass(v) or not isinstance(v, (str, int, float, bool, list, dict, tuple, type(None))):
            v = str(v)
        out[f.name] = v
    return out


def to_dict(cfg) -> dict:
    """A plain, YAML/JSON-safe dict of a config (single dataclass or StageConfig)."""
    return cfg.to_dict() if isinstance(cfg, StageConfig) else _asdict(cfg)


class LazySpec:
    """A StageSpec built on first use (TRL's config classes take seconds to import)."""

    def __init__(self, factory: Callable[[], StageSpec]):
        self._factory, self._spec = factory, None

    def get(self) -> StageSpec:
        if self._spec is None:
            self._spec = self._factory()
        return self._spec


def as_spec(cls_or_spec) -> StageSpec:
    if isinstance(cls_or_spec, LazySpec):
        return cls_or_spec.get()
    if isinstance(cls_or_spec, StageSpec):
        return cls_or_spec
    return StageSpec(cls_or_spec.__name__, (Part("config", cls_or_spec),))


def closest(key: str, known: Sequence[str], n: int = 3) -> list[str]:
    """Close matches for a misspelt key, best first; keys that share its first word
    (lora_rank -> lora_r, not local_rank) come before the rest."""
    head = key.lstrip("-").split("_")[0].split("-")[0]
    close = difflib.get_close_matches(key, known, n=n + 2, cutoff=0.6)
    same_head = [k for k in close if k.lstrip("-").replace("-", "_").split("_")[0] == head]
    return (same_head + [k for k in close if k not in same_head])[:n]


def _unknown(key: str, known: Sequence[str], where: str) -> ConfigError:
    close = closest(key, known)
    if close:
        more = f" (or: {', '.join(repr(c) for c in close[1:])})" if len(close) > 1 else ""
        return ConfigError(f"{where}: unknown key {key!r}; did you mean {close[0]!r}?{more}")
    return ConfigError(f"{where}: unknown key {key!r}; `--help` lists every option")


class _StrictLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                                f"keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, known: set[str] | type, renamed: list[str] | None = None,
              refused: Mapping[str, str] | None = None) -> dict:
    """The flat {key: raw value} of a YAML config (notebook layout translated; keys checked).
    `refused`: {key: why} of fields the stage's classes have but the stage does not use."""
    if dataclasses.is_dataclass(known):
        known = set(fields_of(known))
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found; pass an existing file with -c/--config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {e.start}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested deeper than can be read; a config is `option: value` lines") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty; expected `option: value` lines (see configs/)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of option: value")
    flat = flatten(data, known, str(path), renamed if renamed is not None else [])
    for key in flat:
        if refused and key in refused:
            raise ConfigError(f"{path}: {key!r} {refused[key]}; remove it")
        if key not in known:
            raise _unknown(key, sorted(known), str(path))
    return flat


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _all_fields(spec: StageSpec) -> dict[str, list[tuple[Part, dataclasses.Field]]]:
    out: dict[str, list] = {}
    for part in spec.parts:
        for name, f in fields_of(part.cls).items():
            out.setdefault(name, []).append((part, f))
    return out


def _help(f: dataclasses.Field, default) -> str:
    text = str(f.metadata.get("help", "")).replace("%", "%%")
    if isinstance(default, enum.Enum):
        default = default.value
    if default not in (None, "") and not isinstance(default, dict):
        text += f" (default: {default})".replace("%", "%%")
    return text


def _default(part: Part, f: dataclasses.Field):
    if f.name in part.defaults:
        return part.defaults[f.name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are ConfigErrors (one `error:` line from the entry point, not a usage dump)."""

    def error(self, message):
        raise ConfigError(f"{message}; `{self.prog} --help` lists every option")


def build_parser(cls_or_spec, description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    spec = as_spec(cls_or_spec)
    p = _Parser(description=description, prog=prog, allow_abbrev=False,
                usage="%(prog)s [-h] [-c CONFIG.yaml] [--option VALUE ...]",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML file of option: value; flags given here override it")
    p.add_argument("--traceback", action="store_true", help="on an error, show the full Python traceback (also FACTUALITY_DEBUG=1)")
    seen: set[str] = set()
    for part in spec.parts:
        group = p.add_argument_group(part.title or part.name) if len(spec.parts) > 1 else p
        for name, f in fields_of(part.cls).items():
            if name in seen or f.metadata.get("cli") is False or name in getattr(part.cls, "CLI_HIDDEN", ()):
                continue
            seen.add(name)
            if f.metadata.get("positional"):
                group.add_argument(name, nargs="?", default=argparse.SUPPRESS, help=_help(f, None),
                                   choices=f.metadata.get("choices"))
                continue
            flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
            kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(f, _default(part, f))}
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            if [m for m in _members(f.type)] == [bool]:
                kw.update(nargs="?", const="true", metavar="BOOL")
            group.add_argument(*flags, **kw)
    fields = _all_fields(spec)
    for alias, target in _aliases(spec).items():  # compat.STAGE_ALIASES: accepted as flags too
        if alias in seen or target not in fields:
            continue
        kw = {"dest": alias, "default": argparse.SUPPRESS, "help": f"the same as --{target.replace('_', '-')}"}
        if [m for m in _members(fields[target][0][1].type)] == [bool]:
            kw.update(nargs="?", const="true", metavar="BOOL")
        p.add_argument(f"--{alias.replace('_', '-')}", *([f"--{alias}"] if "_" in alias else []), **kw)
    return p


def _aliases(spec: StageSpec) -> dict[str, str]:
    return stage_aliases(part.cls for part in spec.parts)


def _refused(spec: StageSpec, aliases: Mapping[str, str]) -> dict[str, str]:
    """Fields a stage's class inherits but hides (`CLI_HIDDEN`: evaluate_sft's LoRA shape): refused in
    YAML and overrides as on the command line, so no key is accepted and then ignored."""
    return {name: f"does not apply to {spec.name} (it changes nothing there)"
            for part in spec.parts for name in getattr(part.cls, "CLI_HIDDEN", ()) if name not in aliases}


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
def parse_config(cls_or_spec, argv: Sequence[str] | None = None, description: str | None = None,
                 prog: str | None = None, **overrides):
    """defaults < recipe defaults < YAML (-c) < CLI flags < `overrides`.

    A plain dataclass gives an instance of it; a StageSpec gives a StageConfig."""
    spec = as_spec(cls_or_spec)
    parser = build_parser(spec, description, prog)
    ns, extra = parser.parse_known_args(argv)
    known_fields = _all_fields(spec)
    if extra:
        bad = extra[0].split("=")[0]
        if not bad.startswith("-"):
            raise ConfigError(f"unexpected argument {bad!r}; `--help` lists the arguments")
        close = closest(bad, [f"--{n.replace('_', '-')}" for n in known_fields], n=1)
        raise ConfigError(f"unknown option {bad}" + (f"; did you mean {close[0]}?" if close else "; --help lists every option"))
    raw: dict[str, tuple[Any, str]] = {}  # key -> (value, where it came from)
    renamed: list[str] = []
    aliases = _aliases(spec)
    config_path = ns.config
    sources: list[dict[str, tuple[Any, str]]] = []  # YAML < flags < overrides, each with its aliases resolved
    refused = _refused(spec, aliases)
    if config_path:
        yaml_keys = (set(known_fields) - set(refused)) | set(aliases)
        sources.append({k: (v, f"{config_path}: {k}")
                        for k, v in load_yaml(config_path, yaml_keys, renamed, refused).items()})
    sources.append({name: (value, f"--{name.replace('_', '-')}") for name, value in vars(ns).items()
                    if name not in ("config", "traceback")})
    for name in overrides:
        if name in refused:
            raise ConfigError(f"override {name}: {name!r} {refused[name]}")
        if name not in known_fields and name not in aliases:
            raise _unknown(name, sorted(known_fields), "override")
    sources.append({name: (value, f"override {name}") for name, value in overrides.items()})
    for source in sources:
        apply_aliases(source, aliases, renamed)
        raw.update(source)
    for line in renamed:
        log.info("config: renamed %s", line)
    explicit = set(raw)
    values: dict[str, dict] = {part.name: dict(part.defaults) for part in spec.parts}
    for key, (value, where) in raw.items():
        for part, f in known_fields[key]:
            v = coerce(value, f.type, where)
            if f.metadata.get("choices") and v is not None and v not in f.metadata["choices"]:
                raise ConfigError(f"{where}: {shown(v)} is not one of {', '.join(map(str, f.metadata['choices']))}")
            check_range(key, v, _limits(key, f), where)
            values[part.name][key] = v
    if spec.prepare is not None:
        spec.prepare(values, explicit)
    built = {}
    for part in spec.parts:
        try:
            built[part.name] = part.cls(**values[part.name])
        except (ValueError, TypeError) as e:
            if isinstance(e, ConfigError):
                raise
            where = config_path or "the command line"
            raise ConfigError(f"{where}: {' '.join(str(e).split())}") from None
    for inst in built.values():
        if hasattr(inst, "config_path") and config_path:
            inst.config_path = config_path
        post = getattr(inst, "validate", None)
        if callable(post):
            try:
                post()
            except ValueError as e:  # a value that passed its type but not the option's own rule
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"{config_path}: {e}" if config_path else str(e)) from None
    if len(spec.parts) == 1 and spec.parts[0].name == "config" and dataclasses.is_dataclass(cls_or_spec):
        return built["config"]
    cfg = StageConfig(spec, built, explicit, config_path, renamed)
    if spec.check is not None:
        spec.check(cfg)
    return cfg
