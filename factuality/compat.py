"""Every name the notebook and older recipes use for an option, in one place.

Applied by `config.parse_config` to YAML keys, command-line flags and overrides *before* the
dataclasses are built, so no stage resolves an alias in its `validate()` and no key is accepted
and then ignored. Each rename is logged once (`config: renamed <file>: <key> -> <ours>`) and
recorded in the run card (`renamed_config_keys`).

- `SECTIONS`: the notebook's nested `lora:` / `training:` / `data:` / `model:` sections, flattened.
- `RENAMES`: the notebook's key names -> ours, used when no part of the stage knows the key itself.
- `STAGE_ALIASES`: per options class, a key the stage's parts *do* know (a field inherited from
  TRL's `ModelConfig`) that the stage sets from an option of its own: the alias goes to that
  option (`evaluate_sft`: `attn_implementation` -> `attn_impl`), or it would be silently
  overwritten. Aliases are accepted as flags too (`make_prefs.py --use-8bit`, the notebook's).
- `TRAINING_RENAMES`: options transformers renamed, read under the old name.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from .errors import ConfigError

# Nested sections of the notebook's YAML: section -> {key in section: our key} (unlisted keys keep their name).
SECTIONS: dict[str, dict[str, str]] = {
    "lora": {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "lora_target_modules",
             "bias": "lora_bias"},
    "training": {},
    "data": {"train_path": "train_file", "val_path": "val_file", "test_path": "test_file"},
    "model": {"name": "model_name_or_path"},
}
# The notebook's (and older recipes') key names -> ours, used only when no part knows the key itself.
RENAMES: dict[str, str] = {
    "model_name": "model_name_or_path", "base_model": "model_name_or_path", "model": "model_name_or_path",
    "max_seq_length": "max_length", "num_epochs": "num_train_epochs", "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size", "train_batch_size": "per_device_train_batch_size",
    "eval_batch_size": "per_device_eval_batch_size", "warmup_ratio": "warmup_steps",
    "train_path": "train_file", "val_path": "val_file", "template": "prompts_dir",
    "lora_target": "lora_target_modules", "bnb_4bit_use_double_quant": "use_bnb_nested_quant",
}
# Values that change meaning with the rename.
RENAMED_VALUES: dict[str, Callable[[Any], Any]] = {
    "template": lambda v: None if v in (None, "default") else v,  # "default" = the built-in templates
}
# Options class name -> {key its parts know but the stage derives: the stage's own option}.
STAGE_ALIASES: dict[str, dict[str, str]] = {
    # evaluate_sft: the base is --base-model (None: the adapter's own base); the kernel is --attn-impl
    "EvalConfig": {"model_name_or_path": "base_model", "attn_implementation": "attn_impl"},
    # make_prefs: --base-model as in evaluate_sft; --use-8bit (the notebook's flag) is the generators' 8-bit
    "PrefsOptions": {"model_name_or_path": "base_model", "load_in_8bit": "use_8bit"},
    # train_rm: the pairs file under the name the other stages give their input
    "RMOptions": {"data_path": "pairs_path"},
}
# transformers 5 renamed gradient_checkpointing; the old name (the notebook's) still means the same thing.
TRAINING_RENAMES: dict[str, str] = {"gradient_checkpointing": "activation_checkpointing"}


def flatten(data: Mapping, known: set[str], where: str, renamed: list[str]) -> dict:
    """The notebook's nested sections and key names as our flat keys (`renamed` gets one line each)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k in SECTIONS and k not in known and isinstance(value, Mapping):
            for sub, v in value.items():
                s = str(sub).replace("-", "_")
                target = SECTIONS[k].get(s, s)
                if target not in known and s in RENAMES:
                    target = RENAMES[s]
                    v = RENAMED_VALUES.get(s, lambda x: x)(v)
                if s != target:
                    renamed.append(f"{where}: {k}.{sub} -> {target}")
                if target in out:
                    raise ConfigError(f"{where}: {target!r} is set twice ({k}.{sub} and another key); keep one")
                out[target] = v
            continue
        if k not in known and k in RENAMES:
            target = RENAMES[k]
            renamed.append(f"{where}: {key} -> {target}")
            value = RENAMED_VALUES.get(k, lambda x: x)(value)
            k = target
        if k in out:
            raise ConfigError(f"{where}: {k!r} is set twice; keep one")
        out[k] = value
    return out


def stage_aliases(option_classes) -> dict[str, str]:
    """{alias: the stage's own option} for a stage whose parts are `option_classes`."""
    out: dict[str, str] = {}
    for cls in option_classes:
        for klass in getattr(cls, "__mro__", (cls,)):
            out.update(STAGE_ALIASES.get(klass.__name__, {}))
    return out


def apply_aliases(values: dict[str, tuple[Any, str]], aliases: Mapping[str, str], renamed: list[str]) -> None:
    """Move one source's aliased keys to the stage's own option, in place; both given different values in
    one source is an error (a null counts as not given)."""
    for alias, target in aliases.items():
        if alias not in values:
            continue
        value, where = values.pop(alias)
        other = values.get(target, (None, ""))[0]
        if other is not None and other != value:
            raise ConfigError(f"{where}: {alias!r} and {target!r} name the same option and are given different "
                              f"values ({value!r}, {other!r}); keep {target!r}")
        renamed.append(f"{where} -> {target}")
        values[target] = (value, where)


def rename_training_values(train: dict[str, Any], explicit: set[str]) -> None:
    """TRAINING_RENAMES on a stage's training values: the old name's value goes to the new name
    (as a bool) unless the new name was set too; the old field is cleared."""
    for old, new in TRAINING_RENAMES.items():
        if old in explicit and new not in explicit:
            train[new], train[old] = bool(train.get(old)), None
