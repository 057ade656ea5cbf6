"""evaluate_sft.py's logic: generate (resumably), score, break down, compare, report.

Files of one run (paths from the config; `<stem>` is --output without `.json`):
- `<stem>.json`                 results: config, hashes, metrics per model / source / bucket, deltas
- `<stem>.predictions.jsonl`    one PREDICTION row per (example, model tag), appended per batch
- `<stem>.md`                   the base-against-SFT table and the per-bucket / per-source tables
- `<stem>_plots/*.png`          metrics per prompt-length bucket and per source, base against SFT

A rerun with the same predictions file continues where the last one stopped: ids already
predicted for a model tag are skipped. Every row carries the signature of what determined it
(model fingerprint, generation settings, prompt templates, test-data hash); a row whose
signature differs from this run's is an error, never a silent mix.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from .metrics import BootstrapSpec, bucket_labels, check_boundaries
from .prompts import PROMPT_FORMAT_VERSION, PromptTemplates, parse_output, render_prompt
from .records import (SCHEMA_VERSION, Contract, JsonlAppender, RecordError, atomic_write_json, atomic_write_text,
                      read_examples, read_jsonl, sha256_file, sha256_json)
from .report import (comparison_rows, compute_metrics, format_comparison_table, format_summary,  # noqa: F401
                     rescore, write_plots)

log = logging.getLogger(__name__)

RESULTS_VERSION = 1
CHARS_PER_TOKEN = 4  # the fallback length estimate when no tokenizer is at hand

# --------------------------------------------------------------------------------------------
# Contracts
# --------------------------------------------------------------------------------------------
PREDICTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "one model output on one test example, scored (predictions.jsonl)",
    "type": "object",
    "required": ["schema_version", "id", "model_tag", "raw_output", "parsed", "scores", "prompt_tokens",
                 "output_tokens", "signature"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "id": {"type": "string", "minLength": 1, "description": "the test example's id"},
        "model_tag": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$", "description": "base, sft, ..."},
        "raw_output": {"type": "string"},
        "parsed": {"type": "object", "description": "prompts.ParsedOutput.to_dict()"},
        "scores": {"type": "object", "description": "metrics.score_example(); null = outside that metric"},
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "output_tokens": {"type": ["integer", "null"], "minimum": 0},
        "stopped": {"type": "boolean", "description": "false when max_new_tokens cut the output"},
        "signature": {"type": "string", "description": "hash of model, generation settings, templates, data"},
    },
}
PREDICTION = Contract("prediction", PREDICTION_SCHEMA)

# What --predictions accepts: this suite's own predictions file, or another system's outputs.
EXTERNAL_PREDICTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "raw_output"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "raw_output": {"type": "string"},
        "model_tag": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "output_tokens": {"type": ["integer", "null"], "minimum": 0},
    },
}
EXTERNAL_PREDICTION = Contract("external prediction", EXTERNAL_PREDICTION_SCHEMA)


# --------------------------------------------------------------------------------------------
# Paths, hashes, signatures
# --------------------------------------------------------------------------------------------
def output_paths(output: str | os.PathLike, predictions_out: str | None = None) -> dict[str, Path]:
    out = Path(output)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {
        "results": out if out.suffix == ".json" else out.with_suffix(".json"),
        "predictions": Path(predictions_out) if predictions_out else Path(f"{stem}.predictions.jsonl"),
        "summary": Path(f"{stem}.md"),
        "plots": Path(f"{stem}_plots"),
    }


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


# --------------------------------------------------------------------------------------------
# Scoring rows
# --------------------------------------------------------------------------------------------
def approx_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def prediction_row(example: Mapping, tag: str, raw_output: str, prompt_tokens: int, output_tokens: int | None,
                   sig: str, stopped: bool | None = None) -> dict:
    from .metrics import score_example

    parsed = parse_output(raw_output, [c["id"] for c in example["evidence"]])
    row = {"schema_version": SCHEMA_VERSION, "id": example["id"], "model_tag": tag, "raw_output": raw_output,
           "parsed": parsed.to_dict(), "scores": score_example(example, parsed=parsed, output_tokens=output_tokens),
           "prompt_tokens": int(prompt_tokens), "output_tokens": output_tokens, "signature": sig}
    if stopped is not None:
        row["stopped"] = bool(stopped)
    return row


# --------------------------------------------------------------------------------------------
# Predictions files
# --------------------------------------------------------------------------------------------
def load_existing(path: Path) -> dict[str, dict[str, dict]]:
    """{tag: {example id: row}} of a predictions file written by this module (strictly read)."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    if not path.exists():
        return out
    for row in read_jsonl(path, PREDICTION):
        out[row["model_tag"]][row["id"]] = row
    return out


def check_signatures(path: Path, existing: Mapping[str, Mapping[str, dict]], tag: str, sig: str,
                     payload: Mapping, sidecar: Mapping) -> None:
    rows = existing.get(tag, {})
    other = {r["signature"] for r in rows.values()} - {sig}
    if not other:
        return
    old = (sidecar.get(tag) or {}).get(next(iter(other)), {})
    changed = sorted(k for k in set(payload) | set(old) if payload.get(k) != old.get(k)) if old else []
    what = f" (changed: {', '.join(changed)})" if changed else ""
    raise RecordError(
        f"{path}: holds {len(rows)} '{tag}' predictions from a different run{what}; a resumed run must use the "
        f"same model, data and generation settings. Pass a new --output (or --predictions-out) to keep both, "
        f"or --overwrite to replace them")


def read_external(path: str | os.PathLike, default_tag: str) -> dict[str, dict[str, dict]]:
    """{tag: {id: row}} from --predictions (this suite's file, or {id, raw_output} rows)."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for lineno_row in read_jsonl(path, EXTERNAL_PREDICTION):
        tag = lineno_row.get("model_tag") or default_tag
        if lineno_row["id"] in out[tag]:
            raise RecordError(f"{path}: id {lineno_row['id']!r} appears twice for model tag {tag!r}")
        out[tag][lineno_row["id"]] = lineno_row
    return out


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def resolve_models(model_path: str, base_model: str | None) -> dict:
    """Which model is evaluated and which is the base.

    An adapter dir (adapter_config.json) is evaluated over its base: --base-model when given,
    else the adapter's base_model_name_or_path (or, when that local path is gone, the run card's
    model_name_or_path), else the embedded default. A full model is evaluated as it is; its base
    is --base-model or the embedded default.
    """
    from .modeling import EMBEDDED_MODEL

    p = Path(model_path)
    adapter = (p / "adapter_config.json").exists()
    base, base_from = base_model, "--base-model"
    if not base and adapter:
        acfg = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        base, base_from = acfg.get("base_model_name_or_path"), "adapter_config.json"
        if base and base.startswith(("/", ".", "~")) and not Path(base).expanduser().exists():
            card = p / "run_card.json"
            alt = None
            if card.exists():
                alt = (json.loads(card.read_text(encoding="utf-8")).get("config") or {}).get("model_name_or_path")
            if not alt:
                raise RecordError(f"{p}/adapter_config.json: base model {base!r} does not exist on this machine; "
                                  f"pass --base-model <hub id or path>")
            base, base_from = alt, "run_card.json"
    if not base:
        base, base_from = EMBEDDED_MODEL, "default (embedded)"
    return {"adapter": str(p) if adapter else None, "evaluated": base if adapter else str(p), "base": base,
            "base_from": base_from}


def _model_options(cfg, name: str):
    from dataclasses import fields, replace

    from .modeling import ModelOptions

    opts = ModelOptions(**{f.name: getattr(cfg, f.name) for f in fields(ModelOptions) if hasattr(cfg, f.name)})
    return replace(opts, model_name_or_path=name)


def _load(cfg, name: str, adapter: str | None = None):
    from .modeling import load_model, pick_device

    model = load_model(_model_options(cfg, name), adapter_path=adapter)
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        model = model.to(pick_device())
    return model


def _fingerprint_model(name: str) -> dict:
    from .modeling import resolve_model_path

    try:
        return model_fingerprint(resolve_model_path(name))
    except Exception as e:  # noqa: BLE001 - a fingerprint must not stop an evaluation
        return {"name": name, "error": str(e)[:200]}


def run_evaluation(cfg) -> dict:
    """Generate (or read) predictions, score them, and write results, summary and plots."""
    from contextlib import nullcontext

    from .provenance import run_card, set_seed

    set_seed(cfg.seed)
    boundaries = check_boundaries(cfg.buckets)
    paths = output_paths(cfg.output, cfg.predictions_out)
    examples = read_examples(cfg.test_data)
    if cfg.limit:
        examples = examples[:cfg.limit]
    ids_seen = set()
    for e in examples:
        if e["id"] in ids_seen:
            raise RecordError(f"{cfg.test_data}: id {e['id']!r} appears twice; rebuild the test split")
        ids_seen.add(e["id"])
    data_sha = sha256_file(cfg.test_data)
    templates = PromptTemplates.from_dir(cfg.prompts_dir)
    templates_from = cfg.prompts_dir or "built-in (factuality/prompts.py)"
    boot = BootstrapSpec(n_boot=0 if cfg.fast else cfg.bootstrap_samples, level=cfg.ci_level, seed=cfg.seed)
    by_id = {e["id"]: e for e in examples}
    models_info: dict[str, dict] = {}
    signatures: dict[str, Any] = {}
    partial = False

    if cfg.predictions:
        # ---- re-score outputs that already exist: no model is loaded ----
        rows_by_tag = read_external(cfg.predictions, cfg.model_tag)
        for tag, rows in rows_by_tag.items():
            unknown = [i for i in rows if i not in by_id]
            if unknown:
                raise RecordError(f"{cfg.predictions}: {len(unknown)} '{tag}' prediction ids are not in "
                                  f"{cfg.test_data} (first: {unknown[0]!r}); score against the test file "
                                  f"the predictions were made on (and check --limit)")
            models_info[tag] = {"name": f"predictions file {cfg.predictions}", "fingerprint_sha256": None}
        tok = None
        if cfg.tokenizer:
            from .generation import encode_prompts
            from .modeling import load_tokenizer

            tok = load_tokenizer(cfg.tokenizer)
            lens = [len(x) for x in encode_prompts(tok, [render_prompt(e, tok, templates) for e in examples])]
            prompt_tokens = dict(zip(by_id, lens))
            counted_with = f"tokenizer {cfg.tokenizer}"
        else:
            recorded = {}
            for rows in rows_by_tag.values():
                for i, r in rows.items():
                    if r.get("prompt_tokens") is not None:
                        recorded.setdefault(i, r["prompt_tokens"])
            missing = [e for e in examples if e["id"] not in recorded]
            prompt_tokens = dict(recorded)
            for e in missing:
                prompt_tokens[e["id"]] = approx_tokens(render_prompt(e, None, templates))
            if missing:
                counted_with = (f"approximation, characters/{CHARS_PER_TOKEN} of the plain-rendered prompt, for "
                                f"{len(missing)}/{len(examples)} examples (pass --tokenizer for exact counts)")
                log.warning("prompt lengths: %s", counted_with)
            else:
                counted_with = "prompt_tokens recorded in the predictions file"
        for rows in rows_by_tag.values():
            for r in rows.values():
                if r.get("output_tokens") is None:
                    r["output_tokens"] = (len(tok(r["raw_output"], add_special_tokens=False)["input_ids"])
                                          if tok is not None else approx_tokens(r["raw_output"]))
        pred_file = cfg.predictions
    else:
        # ---- generate, appending per batch; a rerun continues where the last one stopped ----
        from .generation import encode_prompts, iter_generate
        from .modeling import load_tokenizer

        if not cfg.model_path:
            raise RecordError("no --model-path: pass the fine-tuned model (checkpoints/sft/<run>) or --predictions FILE")
        who = resolve_models(cfg.model_path, cfg.base_model)
        trained_with = Path(who["adapter"]) / "prompts" if who["adapter"] else None
        if cfg.prompts_dir is None and trained_with is not None and (trained_with / "system.txt").exists():
            templates = PromptTemplates.from_dir(trained_with)  # the templates the adapter was trained on
            templates_from = str(trained_with)
        tok_source = cfg.tokenizer or (who["adapter"] if who["adapter"] and
                                       (Path(who["adapter"]) / "tokenizer_config.json").exists() else who["evaluated"])
        tok = load_tokenizer(tok_source, padding_side="left", trust_remote_code=cfg.trust_remote_code)
        prompts = [render_prompt(e, tok, templates) for e in examples]
        prompt_ids = encode_prompts(tok, prompts)
        prompt_tokens = {e["id"]: len(x) for e, x in zip(examples, prompt_ids)}
        counted_with = f"tokenizer of the evaluated model ({tok_source})"
        settings = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample,
                    "temperature": cfg.temperature if cfg.do_sample else None,
                    "top_p": cfg.top_p if cfg.do_sample else None, "seed": cfg.seed, "dtype": cfg.dtype,
                    "load_in_4bit": cfg.load_in_4bit, "load_in_8bit": cfg.load_in_8bit,
                    "attn_implementation": cfg.attn_implementation}
        base_fp = _fingerprint_model(who["base"])
        tags = [cfg.model_tag] + (["base"] if cfg.compare_baseline else [])
        payloads = {}
        for tag in tags:
            if tag == "base":
                fp = {"model": who["base"], "fingerprint": fingerprint_hash(base_fp)}
            elif who["adapter"]:
                fp = {"model": who["base"], "fingerprint": fingerprint_hash(base_fp), "adapter": who["adapter"],
                      "adapter_fingerprint": fingerprint_hash(model_fingerprint(who["adapter"]))}
            else:
                fp = {"model": who["evaluated"], "fingerprint": fingerprint_hash(_fingerprint_model(who["evaluated"]))}
            payloads[tag] = {**fp, **settings, "templates": templates_hash(templates), "test_data": data_sha,
                             "tokenizer": tok_source}
            signatures[tag] = signature(payloads[tag])
            models_info[tag] = {"name": fp.get("adapter") or fp["model"], "base": who["base"] if tag != "base" else None,
                                "base_from": who["base_from"], "fingerprint_sha256": fp.get("adapter_fingerprint") or fp["fingerprint"]}
        pred_path = paths["predictions"]
        sidecar_path = Path(f"{pred_path}.signatures.json")
        if cfg.overwrite:
            for p in (pred_path, sidecar_path):
                if p.exists():
                    p.unlink()
        out = JsonlAppender(pred_path, PREDICTION)  # opening cuts a line torn by a kill, before it is read
        out.close()
        existing = load_existing(pred_path)
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8")) if sidecar_path.exists() else {}
        for tag in tags:
            check_signatures(pred_path, existing, tag, signatures[tag], payloads[tag], sidecar)
            sidecar.setdefault(tag, {})[signatures[tag]] = payloads[tag]
        atomic_write_json(sidecar_path, sidecar)

        model = None
        with JsonlAppender(pred_path, PREDICTION) as out:
            for tag in tags:
                done = existing.get(tag, {})
                todo = [i for i, e in enumerate(examples) if e["id"] not in done]
                log.info("%s: %d/%d already predicted, %d to go", tag, len(examples) - len(todo), len(examples), len(todo))
                if not todo:
                    continue
                if tag == "base" and not who["adapter"]:
                    model = None  # a full fine-tuned model: free it, load the base
                    model = _load(cfg, who["base"])
                    ctx = nullcontext()
                else:
                    if model is None:
                        model = _load(cfg, who["base"], adapter=who["adapter"]) if who["adapter"] else _load(cfg, who["evaluated"])
                    ctx = model.disable_adapter() if tag == "base" else nullcontext()
                with ctx:
                    batches = iter_generate(model, tok, prompts, batch_size=cfg.batch_size,
                                            max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                            temperature=cfg.temperature, top_p=cfg.top_p, indices=todo,
                                            prompt_ids=prompt_ids, prefill=cfg.prefill, desc=tag,
                                            progress=cfg.progress)
                    for b, batch in enumerate(batches, start=1):
                        for g in batch:
                            e = examples[g.index]
                            row = prediction_row(e, tag, g.text, g.prompt_tokens, g.output_tokens, signatures[tag],
                                                 stopped=g.stopped)
                            out.write(row)
                            existing.setdefault(tag, {})[e["id"]] = row
                        if cfg.max_batches and b >= cfg.max_batches:
                            partial = True
                            log.warning("%s: stopped after %d batches (--max-batches); rerun to continue", tag, b)
                            break
                if partial:
                    break
        rows_by_tag = {t: existing.get(t, {}) for t in tags}
        pred_file = str(pred_path)

    scored = compute_metrics(examples, dict(sorted(rows_by_tag.items(), key=lambda kv: kv[0] != "base")),
                             prompt_tokens, boundaries, boot, comparisons=[(cfg.model_tag, "base")])
    from .config import to_dict

    results = run_card("evaluate_sft.py", to_dict(cfg), {"test_data": data_sha}, results_version=RESULTS_VERSION)
    results["inputs"] = {"test_data": {"path": str(cfg.test_data), "sha256": data_sha, "examples": len(examples)},
                         "predictions": pred_file}
    results["models"] = models_info
    results["signatures"] = signatures
    results["complete"] = not partial and all(c["missing"] == 0 for c in scored["coverage"].values())
    results["prompt_templates"] = {"from": templates_from, "sha256": templates_hash(templates)}
    results["prompt_length"] = {"counted_with": counted_with, "boundaries": boundaries,
                                "buckets": bucket_labels(boundaries)}
    results["bootstrap"] = {**asdict(boot), "description": (
        f"{boot.level:.0%} percentile bootstrap over examples, {boot.n_boot} resamples, seed {boot.seed}; "
        f"deltas by paired bootstrap (same resample for both models)" if boot.n_boot else "none (--fast or 0 resamples)")}
    results.update(scored)
    results.setdefault("deltas", {})
    results["files"] = {"results": str(paths["results"]), "predictions": pred_file, "summary": str(paths["summary"])}
    if cfg.plots and not cfg.fast:
        results["files"]["plots"] = write_plots(results, paths["plots"])
    atomic_write_json(paths["results"], results)
    atomic_write_text(paths["summary"], format_summary(results))
    return results
