"""The package's shape, checked from its source: stages side by side over shared layers, no
private name reached across modules, modules and functions short enough to read, and no option
a stage accepts and then ignores."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "factuality"
STAGES = sorted(p.stem for p in (PKG / "stages").glob("*.py") if p.stem != "__init__")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# Longer on purpose, each with its reason (README, "Layout").
LONG_FUNCTIONS: dict[str, str] = {}
LONG_MODULES: dict[str, str] = {}


def modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in a module, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [a.name for a in node.names]
            out.append((node.lineno, mod, names))
            # `from . import x` / `from .stages import sft`: the names may be modules themselves
            out += [(node.lineno, f"{mod}.{n}", []) for n in names if (PKG.parent / f"{mod}.{n}".replace(".", "/")).with_suffix(".py").exists()]
    return out


def test_stages_import_only_layers_never_each_other():
    bad = []
    for path in modules():
        me = module_name(path)
        for line, mod, _ in imports_of(path):
            if not mod.startswith("factuality.stages.") or mod == me:
                continue
            if me.startswith("factuality.stages.") or not me.startswith("factuality.stages"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {mod}")
    assert not bad, "a stage imports another stage, or a layer imports a stage:\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = []
    for path in [*modules(), *ROOT.glob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]:
        for line, mod, names in imports_of(path):
            if mod.startswith("factuality"):
                bad += [f"{path.relative_to(ROOT)}:{line}: {mod}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_modules_and_functions_are_short_enough_to_read():
    long_modules, long_functions = [], []
    for path in modules():
        rel = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES and rel not in LONG_MODULES:
            long_modules.append(f"{rel}: {len(text.splitlines())} lines")
        for fn in _functions(ast.parse(text)):
            n = fn.end_lineno - fn.lineno + 1
            key = f"{rel}:{fn.name}"
            if n > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                long_functions.append(f"{key}: {n} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


# --------------------------------------------------------------------------------------------
# Every option a stage accepts changes what it does
# --------------------------------------------------------------------------------------------
def _stage_specs():
    from factuality.config import as_spec
    from factuality.download import STAGE as DOWNLOAD
    from factuality.stages import (
        build,
        dpo,
        evaluate,
        pipeline,
        prefs,
        prompt_schema,
        reward,
        sft,
    )

    out = {}
    for stage in (build.STAGE, DOWNLOAD, prompt_schema.STAGE, sft.STAGE, evaluate.STAGE, prefs.STAGE, reward.STAGE,
                  dpo.STAGE, pipeline.STAGE):
        out[stage.name] = as_spec(stage.config)
    return out


def _source_reads() -> set[str]:
    """Every attribute read and every string constant in the package (where options are used)."""
    seen: set[str] = set()
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                seen.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                seen.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value))
    return seen


def test_every_option_of_ours_is_read_by_the_code():
    """Options defined in this package's classes (not TRL's, which TRL reads) must be read somewhere:
    an option nobody reads is accepted and then ignored. Inherited fields a stage hides are refused
    by the loader (test below)."""
    from factuality.penalties import WEIGHT_FIELDS

    reads = _source_reads() | set(WEIGHT_FIELDS.values())   # the penalty weights are read by name (getattr)
    unread = []
    for name, spec in _stage_specs().items():
        for part in spec.parts:
            hidden = set(getattr(part.cls, "CLI_HIDDEN", ()))
            for klass in part.cls.__mro__:
                if not klass.__module__.startswith("factuality") or not dataclasses.is_dataclass(klass):
                    continue
                own = set(getattr(klass, "__annotations__", {}))
                for f in dataclasses.fields(klass):
                    if f.name in own and f.name not in hidden and f.name not in reads:
                        unread.append(f"{name}: {klass.__name__}.{f.name}")
    assert not unread, "options accepted and never read:\n" + "\n".join(sorted(set(unread)))


@pytest.mark.parametrize("key", ["lora_r", "use_peft", "lora_target_modules"])
def test_a_key_a_stage_hides_is_refused_not_ignored(tmp_path, key):
    from factuality.config import ConfigError, parse_config
    from factuality.stages.evaluate import EvalConfig

    path = tmp_path / "eval.yaml"
    path.write_text(f"model_path: x\n{key}: 8\n")
    with pytest.raises(ConfigError, match=rf"eval.yaml: '{key}' does not apply"):
        parse_config(EvalConfig, ["-c", str(path)])


def test_the_evaluators_model_keys_are_its_own_options(tmp_path):
    """attn_implementation / model_name_or_path in an evaluation YAML used to be accepted and then
    overwritten; they now set --attn-impl / --base-model (compat.STAGE_ALIASES), logged as renamed."""
    from factuality.config import parse_config
    from factuality.stages.evaluate import EvalConfig

    path = tmp_path / "eval.yaml"
    path.write_text("model_path: x\nattn_implementation: eager\nmodel_name_or_path: some/base\n")
    cfg = parse_config(EvalConfig, ["-c", str(path)])
    assert (cfg.attn_impl, cfg.attn_implementation, cfg.base_model) == ("eager", "eager", "some/base")
    assert parse_config(EvalConfig, ["--model-path", "x", "--attn-implementation", "eager"]).attn_implementation == "eager"
    path.write_text("model_path: x\nattn_implementation: eager\nattn_impl: sdpa\n")
    from factuality.config import ConfigError

    with pytest.raises(ConfigError, match="name the same option and are given different values"):
        parse_config(EvalConfig, ["-c", str(path)])


def test_the_notebooks_flag_names_still_work():
    from factuality.config import parse_config
    from factuality.stages.prefs import PREFS_SPEC
    from factuality.stages.reward import RM_SPEC

    cfg = parse_config(PREFS_SPEC, ["--phase", "generate", "--sft-model", "x", "--use-8bit"])
    assert cfg.use_8bit and cfg.load_in_8bit
    cfg = parse_config(PREFS_SPEC, ["--phase", "generate", "--sft-model", "x", "--load-in-8bit", "true"])
    assert cfg.use_8bit and cfg.load_in_8bit
    assert parse_config(RM_SPEC, ["--data-path", "pairs.jsonl"]).pairs_path == "pairs.jsonl"
