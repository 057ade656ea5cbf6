"""Models for generation, shared by evaluate_sft and make_prefs: which model an adapter runs on
(`resolve_models`), loading each base once with its adapters beside it (`ModelPool`), and the
fingerprints and signatures that tie every generated row to the model, settings and templates
that made it (a resumed run refuses rows of another signature)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from .modeling import EMBEDDED_MODEL
from .prompts import PROMPT_FORMAT_VERSION, PromptTemplates
from .records import JsonlAppender, RecordError, read_json, sha256_file, sha256_json


def model_fingerprint(path: str | os.PathLike | None, max_hash_bytes: int = 2 << 30) -> dict:
    """sha256 of a model/adapter directory's files (size only for files over `max_hash_bytes`);
    a hub id that is not a local path is fingerprinted by its name."""
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        return {"name": str(path)}
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                                           and "checkpoint-" not in str(f.relative_to(p)))
    out = {}
    for f in files:
        rel = f.name if p.is_file() else str(f.relative_to(p))
        if rel.endswith((".md", ".log")) or rel in ("run_card.json", "training_history.json"):
            continue  # documentation and logs do not change outputs
        size = f.stat().st_size
        out[rel] = sha256_file(f) if size <= max_hash_bytes else f"size:{size}"
    return out


def fingerprint_hash(fp: Mapping) -> str:
    return sha256_json(fp)


def templates_hash(templates: PromptTemplates) -> str:
    return sha256_json({**asdict(templates), "format_version": PROMPT_FORMAT_VERSION})


def signature(payload: Mapping) -> str:
    return sha256_json(payload)[:20]


def resolve_models(model_path: str, base_model: str | None) -> dict:
    """Which model is evaluated and which is the base.

    An adapter dir (adapter_config.json) is evaluated over its base: --base-model when given,
    else the adapter's base_model_name_or_path (a hub id resolves through the local cache; a local
    path that is gone falls back to the run card's model), else the embedded default. A full
    model is evaluated as it is; its base is --base-model or the embedded default.
    """
    p = Path(model_path)
    adapter = (p / "adapter_config.json").exists()
    base, base_from = base_model, "--base-model"
    if not base and adapter:
        acfg = read_json(p / "adapter_config.json", expected="a PEFT adapter config (JSON object)")
        if not isinstance(acfg, dict):
            raise RecordError(f"{p}/adapter_config.json: not a JSON object; train the adapter again")
        base, base_from = acfg.get("base_model_name_or_path"), "adapter_config.json"
        if base and base.startswith(("/", ".", "~")) and not Path(base).expanduser().exists():
            card = p / "run_card.json"
            alt = None
            if card.exists():
                card_obj = read_json(card, expected="a run card (JSON object)")
                conf = (card_obj.get("config") if isinstance(card_obj, dict) else None) or {}
                alt = (conf.get("model") or conf).get("model_name_or_path")
            if not alt:
                raise RecordError(f"{p}/adapter_config.json: base model {base!r} does not exist on this machine; "
                                  f"pass --base-model <hub id or path>")
            base, base_from = alt, "run_card.json"
    if not base:
        base, base_from = EMBEDDED_MODEL, "default (embedded)"
    return {"adapter": str(p) if adapter else None, "evaluated": base if adapter else str(p), "base": base,
            "base_from": base_from}


def model_options(cfg, name: str):
    from dataclasses import fields, replace

    from .modeling import ModelOptions

    opts = ModelOptions(**{f.name: getattr(cfg, f.name) for f in fields(ModelOptions) if hasattr(cfg, f.name)})
    return replace(opts, model_name_or_path=name)


def load_on_device(cfg, name: str, adapter: str | None = None):
    from .modeling import load_model, pick_device

    model = load_model(model_options(cfg, name), adapter_path=adapter)
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        model = model.to(pick_device())
    return model


def fingerprint_model(name: str) -> dict:
    from .modeling import resolve_model_path

    try:
        return model_fingerprint(resolve_model_path(name))
    except Exception as e:  # noqa: BLE001 - a fingerprint must not stop an evaluation
        return {"name": name, "error": str(e)[:200]}


class ModelPool:
    """Loads each base once; adapters of the same base share it (PEFT named adapters), and the
    base itself runs with the adapters disabled. A full (merged) model is loaded on its own."""

    def __init__(self, cfg):
        self.cfg, self.model, self.key = cfg, None, None

    def _fresh(self, key, loader):
        if self.key != key:
            self.model = None  # free the previous model before loading the next
            self.model, self.key = loader(), key
        return self.model

    def context(self, system: Mapping, adapters: Sequence[Mapping]):
        """(model, context manager) to generate as `system`."""
        from contextlib import nullcontext

        from .modeling import load_adapter

        if system["adapter"] is None and not system.get("is_base"):
            return self._fresh(("full", system["evaluated"]), lambda: load_on_device(self.cfg, system["evaluated"])), nullcontext()
        same_base = [a for a in adapters if a["base"] == system["base"]]

        def load_all():
            model = load_on_device(self.cfg, system["base"])
            for a in same_base:
                model = load_adapter(model, a["adapter"], adapter_name=a["tag"])
            return model

        model = self._fresh(("base", system["base"]), load_all)
        if system.get("is_base"):
            return model, (model.disable_adapter() if same_base else nullcontext())
        model.set_adapter(system["tag"])
        return model, nullcontext()

    def batches(self, system: Mapping, adapters: Sequence[Mapping], tokenizer, prompts: Sequence[str],
                prompt_ids: Sequence[Sequence[int]], todo: Sequence[int], **generate_kwargs):
        """Yield the generations of `todo` (prompt indices) as `system`, batch by batch, from the
        configured backend: generation.iter_generate (transformers) or vllm_backend.VllmEngine."""
        if getattr(self.cfg, "backend", "transformers") == "vllm":
            from .vllm_backend import VllmEngine

            if system["adapter"] is None and not system.get("is_base"):
                engine = self._fresh(("vllm", system["evaluated"]),
                                     lambda: VllmEngine(system["evaluated"], {}, self.cfg, self.cfg.seed))
                adapter = None
            else:
                same_base = {a["tag"]: a["adapter"] for a in adapters if a["base"] == system["base"]}
                engine = self._fresh(("vllm", system["base"]),
                                     lambda: VllmEngine(system["base"], same_base, self.cfg, self.cfg.seed))
                adapter = None if system.get("is_base") else system["tag"]
            yield from engine.iter_generate(tokenizer, prompt_ids, todo, adapter=adapter, **generate_kwargs)
            return
        from .generation import iter_generate

        model, ctx = self.context(system, adapters)
        with ctx:
            yield from iter_generate(model, tokenizer, prompts, indices=todo, prompt_ids=prompt_ids, **generate_kwargs)


def append_generations(out: JsonlAppender, make_row, batches, max_batches: int = 0) -> bool:
    """Append `make_row(generation)` for each generation of `batches` (ModelPool.batches) as its
    batch finishes, so a killed run loses at most the batch in flight. Returns True when it
    stopped early after `max_batches` batches (0 = no limit)."""
    try:
        for b, batch in enumerate(batches, start=1):
            for g in batch:
                out.write(make_row(g))
            if max_batches and b >= max_batches:
                return True
        return False
    finally:
        batches.close()  # leaves the system's context (adapters disabled for the base) now, not at GC
