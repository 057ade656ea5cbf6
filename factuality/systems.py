"""Which systems one evaluation runs, in which column order, and which it compares (evaluate_sft.py's
--model-path / --systems / --compare-baseline / --compare / --selective)."""
from __future__ import annotations

from collections.abc import Sequence

from .config import ConfigError
from .modeling import EMBEDDED_MODEL
from .pool import resolve_models
from .selective import SELECTIVE_SUFFIX


def plan_systems(cfg) -> tuple[list[dict], list[tuple[str, str]]]:
    """The systems of one run, in column order (base first), and the comparisons (new, old).

    --model-path (tag --model-tag) and --compare-baseline are the notebook's two-system form;
    --systems tag=path,... adds any number; 'base' is the base model itself (adapters disabled)."""
    specs: list[tuple[str, str | None]] = []
    if cfg.model_path:
        specs.append((cfg.model_tag, cfg.model_path))
    for item in cfg.systems:
        tag, _, path = item.partition("=")
        specs.append((tag, path or None))
    if cfg.compare_baseline and "base" not in [t for t, _ in specs]:
        specs.append(("base", None))
    tags = [t for t, _ in specs]
    dup = sorted({t for t in tags if tags.count(t) > 1})
    if dup:
        raise ConfigError(f"system tag {dup[0]!r} is given twice; give each system its own tag")
    resolved = {tag: resolve_models(path, cfg.base_model) for tag, path in specs if path is not None}
    base_names = {who["base"] for who in resolved.values()}
    if "base" in tags and len(base_names) > 1:
        raise ConfigError(f"the systems have different bases ({', '.join(sorted(base_names))}); a 'base' column "
                          f"needs one: pass --base-model or evaluate them in separate runs")
    systems = []
    for tag, path in specs:  # generation runs in the order given; the report puts base first
        if path is not None:
            systems.append({"tag": tag, **resolved[tag]})
            continue
        name = next(iter(base_names)) if base_names else (cfg.base_model or EMBEDDED_MODEL)
        from_ = next(iter(resolved.values()))["base_from"] if resolved else "--base-model"
        systems.append({"tag": "base", "adapter": None, "evaluated": name, "base": name, "base_from": from_,
                        "is_base": True})
    order = sorted([s["tag"] for s in systems] + [t + SELECTIVE_SUFFIX for t in cfg.selective],
                   key=lambda t: t != "base")
    pairs = comparisons_for(cfg, order)
    return systems, pairs


def comparisons_for(cfg, tags: Sequence[str]) -> list[tuple[str, str]]:
    """--compare pairs checked against the tags present, else every tag against base (or the one before)."""
    if cfg.compare:
        pairs = [tuple(p.split(":", 1)) for p in cfg.compare]
        for new, old in pairs:
            for t in (new, old):
                if t not in tags:
                    raise ConfigError(f"--compare {new}:{old}: no system tagged {t!r} (systems: {', '.join(tags)})")
        return pairs
    if "base" in tags:
        return [(t, "base") for t in tags if t != "base"]
    return list(zip(tags[1:], tags[:-1]))
