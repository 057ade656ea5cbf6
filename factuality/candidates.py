"""The generation cache of make_prefs.py's phase 1: what it holds, where it lives, how it is found.

`<output_dir>/cache/<signature>/` holds manifest.json (the signature's payload, data files,
settings, counts; "complete" at the end), examples.jsonl (PROMPT_ROW: each example's rendered
prompt and evidence as fitted), generations.jsonl (one CANDIDATE row per (example, origin)) and
judge_<sig>.jsonl (verdicts.JUDGE_ROW). Here: the data the candidates come from, the plan of a
generation run and its signature, the cache's rows, opening, resuming and completing a cache, and
finding one again for the judge phase (stages/prefs.py describes the whole method).
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import dist
from .config import ConfigError
from .prompts import PromptTemplates, fit_evidence, render_prompt
from .records import (
    SCHEMA_VERSION,
    Contract,
    JsonlAppender,
    RecordError,
    atomic_write_json,
    read_examples,
    read_json,
    read_jsonl,
    sha256_file,
    sha256_text,
    check_seal,
    seal,
    seal_path,
    write_jsonl,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 1

# Options that decide which candidates phase 1 made: the judge phase matches a cache on those the
# user set (besides the data files, the sample limits and n_generations, always matched).
GENERATION_KEYS = ("sft_model", "base_model", "max_new_tokens", "max_input_tokens", "min_chunk_chars", "temperature",
                   "top_p", "seed", "use_8bit", "load_in_4bit", "dtype", "attn_implementation", "prompts_dir", "backend")



# --------------------------------------------------------------------------------------------
# Contracts of the cache
# --------------------------------------------------------------------------------------------
_EVIDENCE_ITEMS = {"type": "object", "required": ["id", "text"],
                   "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "text": {"type": "string"}}}
PROMPT_ROW = Contract("prefs prompt", {
    "title": "one example's policy prompt, evidence fitted (prefs/cache/<sig>/examples.jsonl)",
    "type": "object",
    "required": ["schema_version", "id", "split", "prompt", "prompt_tokens", "evidence", "dropped_ids", "shortened_ids"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION}, "id": {"type": "string", "minLength": 1},
        "split": {"enum": ["train", "val"]}, "prompt": {"type": "string", "minLength": 1},
        "prompt_tokens": {"type": "integer", "minimum": 1}, "evidence": {"type": "array", "items": _EVIDENCE_ITEMS},
        "dropped_ids": {"type": "array", "items": {"type": "string"}},
        "shortened_ids": {"type": "array", "items": {"type": "string"}},
    }}, unique=("id",), allow_empty=False)
CANDIDATE = Contract("prefs candidate", {
    "title": "one generated candidate (prefs/cache/<sig>/generations.jsonl)",
    "type": "object",
    "required": ["schema_version", "id", "example_id", "split", "origin", "raw_output", "prompt_tokens",
                 "output_tokens", "stopped", "signature"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION}, "id": {"type": "string", "minLength": 1},
        "example_id": {"type": "string", "minLength": 1}, "split": {"enum": ["train", "val"]},
        "origin": {"type": "string", "pattern": "^(sft|base|sft_sample_[0-9]+)$"}, "raw_output": {"type": "string"},
        "prompt_tokens": {"type": "integer", "minimum": 1}, "output_tokens": {"type": "integer", "minimum": 0},
        "stopped": {"type": "boolean"}, "signature": {"type": "string", "minLength": 1},
    }}, unique=("id",))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def _line_numbers(path: Path) -> list[int]:
    """File line of each record (blank lines are skipped by the reader)."""
    with open(path, encoding="utf-8") as f:
        return [n for n, line in enumerate(f, start=1) if line.strip()]


def data_files(cfg) -> list[str]:
    """--data-path then --val-path, each file once; a test split file is refused."""
    files = list(dict.fromkeys(list(cfg.data_path) + list(cfg.val_path)))
    for f in files:
        if Path(f).name.split(".")[0] == "test":
            raise ConfigError(f"{f}: the test split never becomes preference pairs (pairs are trained on); pass the "
                              f"train and val files, e.g. --data-path data/processed/train.jsonl,data/processed/val.jsonl")
    return files


def load_data(cfg) -> tuple[list[dict], list[dict]]:
    """The examples to make pairs from (train and val only; per-split limits applied) and, per
    file, {path, sha256, examples}. A test file, a test example or an id in two files is refused."""
    files = data_files(cfg)
    examples: list[dict] = []
    info: list[dict] = []
    seen: dict[str, str] = {}
    taken = Counter()
    limits = {"train": cfg.max_samples, "val": cfg.max_val_samples}
    for f in files:
        p = Path(f)
        if not p.exists():
            raise FileNotFoundError(f"{p}: data file not found; run `python build_data.py` first or fix --data-path")
        recs = read_examples(p)
        lines = _line_numbers(p)
        kept = 0
        for n, e in enumerate(recs):
            if e["split"] == "test":
                raise RecordError(f"{p}:{lines[n]}: split: 'test' (example {e['id']!r}); test examples never become "
                                  f"preference pairs: pass the train/val files of build_data.py")
            if e["id"] in seen:
                raise RecordError(f"{p}:{lines[n]}: id: {e['id']!r} is also in {seen[e['id']]}; an example may "
                                  f"appear in one file only")
            seen[e["id"]] = str(p)
            limit = limits[e["split"]]
            if limit is not None and taken[e["split"]] >= limit:
                continue
            taken[e["split"]] += 1
            examples.append(e)
            kept += 1
        info.append({"path": str(p), "sha256": sha256_file(p), "examples": len(recs), "used": kept})
    if not examples:
        raise RecordError(f"{', '.join(files)}: no train or val examples to make pairs from")
    return examples, info


# --------------------------------------------------------------------------------------------
# Planning a generation run
# --------------------------------------------------------------------------------------------
def origins_of(cfg) -> list[str]:
    """The candidate origins, in generation order (SFT adapter enabled first, then the base)."""
    if cfg.temperature == 0:
        return ["sft", "base"][:cfg.n_generations]
    base = ["base"] if cfg.base_candidates else []
    return ["sft"] + [f"sft_sample_{k}" for k in range(1, cfg.n_generations + 1)] + base


def sample_seed(seed: int, example_id: str, origin: str) -> int:
    """The seed of one sampled candidate: a function of the run seed, the example and the sample only."""
    return int(sha256_text(f"{seed}:{example_id}:{origin}")[:12], 16)


def plan_generators(cfg) -> tuple[dict, dict, list[dict]]:
    """(sft system, base system, adapters) in pool.ModelPool's terms."""
    from .pool import resolve_models

    name = str(cfg.sft_model)
    if not Path(name).expanduser().exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise FileNotFoundError(f"{name}: no such SFT model dir; pass the dir train_sft.py wrote "
                                f"(checkpoints/sft/<run>) or a hub id (owner/name)")
    who = resolve_models(name, cfg.base_model)
    sft = {"tag": "sft", **who}
    base = {"tag": "base", "adapter": None, "evaluated": who["base"], "base": who["base"], "base_from": who["base_from"],
            "is_base": True}
    return sft, base, ([sft] if sft["adapter"] else [])


def templates_for(cfg, sft: Mapping) -> tuple[PromptTemplates, str]:
    if cfg.prompts_dir:
        return PromptTemplates.from_dir(cfg.prompts_dir), cfg.prompts_dir
    trained = Path(sft["adapter"]) / "prompts" if sft["adapter"] else None
    if trained is not None and (trained / "system.txt").exists():
        return PromptTemplates.from_dir(trained), str(trained)
    return PromptTemplates(), "built-in (factuality/prompts.py)"


def load_settings(cfg) -> dict:
    from .modeling import resolve_dtype

    out = {"dtype": str(resolve_dtype(cfg.dtype)).replace("torch.", ""), "load_in_8bit": cfg.load_in_8bit,
           "load_in_4bit": cfg.load_in_4bit, "attn_implementation": cfg.attn_implementation}
    if cfg.load_in_4bit:
        out.update(bnb_4bit_quant_type=cfg.bnb_4bit_quant_type, use_bnb_nested_quant=cfg.use_bnb_nested_quant)
    if cfg.backend != "transformers":  # another engine's kernels: its candidates are its own
        out.update(backend=cfg.backend)
    return out


def generation_payload(cfg, data_info: Sequence[Mapping], sft: Mapping, templates: PromptTemplates) -> dict:
    """Everything that determines the candidates (module docstring); its hash is the cache's signature."""
    from .pool import (
        fingerprint_hash,
        fingerprint_model,
        model_fingerprint,
        templates_hash,
    )

    sampling = cfg.temperature > 0
    return {
        "stage": "make_prefs.generate", "format": CACHE_FORMAT,
        "base": {"fingerprint": fingerprint_hash(fingerprint_model(sft["base"]))},
        "sft": {"fingerprint": fingerprint_hash(model_fingerprint(sft["adapter"]) if sft["adapter"]
                                                else fingerprint_model(sft["evaluated"])),
                "is_adapter": bool(sft["adapter"])},
        "data": [d["sha256"] for d in data_info],
        "max_samples": cfg.max_samples, "max_val_samples": cfg.max_val_samples,
        "templates": templates_hash(templates),
        "decoding": {"max_new_tokens": cfg.max_new_tokens, "n_generations": cfg.n_generations,
                     "temperature": cfg.temperature, "top_p": cfg.top_p if sampling else None,
                     "origins": origins_of(cfg)},
        "seed": cfg.seed, "max_input_tokens": cfg.max_input_tokens, "min_chunk_chars": cfg.min_chunk_chars,
        "load": load_settings(cfg),
    }


def signature_of(payload: Mapping) -> str:
    from .pool import signature

    return signature(payload)


def generation_settings(cfg) -> dict:
    return {k: getattr(cfg, k) for k in GENERATION_KEYS}


def cache_path(cfg, sig: str) -> Path:
    return Path(cfg.output_dir) / "cache" / sig


def fit_prompts(examples: Sequence[dict], tok, cfg, templates: PromptTemplates) -> tuple[list[dict], list[str]]:
    """PROMPT_ROWs of the examples whose prompt fits max_input_tokens, and the ids of those that do not."""
    from tqdm.auto import tqdm

    from .prompts import tokenize_prompt

    rows, too_long = [], []
    for e in tqdm(examples, desc="fitting evidence", disable=not cfg.progress or len(examples) < 200, leave=False):
        fit = fit_evidence(e, tok, cfg.max_input_tokens, templates, min_chunk_chars=cfg.min_chunk_chars)
        if not fit.fits:
            too_long.append(e["id"])
            continue
        prompt = render_prompt(e, tok, templates, evidence=fit.evidence)
        rows.append({"schema_version": SCHEMA_VERSION, "id": e["id"], "split": e["split"], "prompt": prompt,
                     "prompt_tokens": len(tokenize_prompt(tok, prompt)),
                     "evidence": [{k: c[k] for k in ("id", "title", "text") if k in c} for c in fit.evidence],
                     "dropped_ids": fit.dropped_ids, "shortened_ids": fit.shortened_ids})
    return rows, too_long


def candidate_row(example_id: str, split: str, origin: str, g, sig: str) -> dict:
    return {"schema_version": SCHEMA_VERSION, "id": f"{example_id}#{origin}", "example_id": example_id,
            "split": split, "origin": origin, "raw_output": g.text, "prompt_tokens": g.prompt_tokens,
            "output_tokens": g.output_tokens, "stopped": g.stopped, "signature": sig}


@dataclass
class GenerationPlan:
    examples: list[dict]
    data: list[dict]
    sft: dict
    base: dict
    adapters: list[dict]
    templates: PromptTemplates
    templates_from: str
    payload: dict
    signature: str


def plan_generation(cfg) -> GenerationPlan:
    """What phase 1 would generate and its signature (reads the data, fingerprints the models; loads none)."""
    examples, data_info = load_data(cfg)
    sft, base, adapters = plan_generators(cfg)
    templates, templates_from = templates_for(cfg, sft)
    payload = generation_payload(cfg, data_info, sft, templates)
    return GenerationPlan(examples, data_info, sft, base, adapters, templates, templates_from, payload,
                          signature_of(payload))


# --------------------------------------------------------------------------------------------
# Filling the cache
# --------------------------------------------------------------------------------------------
def generator_tokenizer(cfg, sft: Mapping):
    """The policy's tokenizer, left-padding (the adapter's when it saved one, else the model's), and its source."""
    from .modeling import load_tokenizer

    tok_source = sft["adapter"] if sft["adapter"] and (Path(sft["adapter"]) / "tokenizer_config.json").exists() \
        else sft["evaluated"]
    return load_tokenizer(tok_source, padding_side="left", trust_remote_code=cfg.trust_remote_code), tok_source


def cache_manifest(cfg, plan: GenerationPlan, tok_source: str, prompt_rows: Sequence[dict],
                   too_long: Sequence[str]) -> dict:
    """The manifest of a cache being filled ("complete" stays False until the last candidate is in)."""
    sft = plan.sft
    return {"signature": plan.signature, "payload": plan.payload, "settings": generation_settings(cfg),
            "data": plan.data,
            "models": {"sft": sft["adapter"] or sft["evaluated"], "base": sft["base"], "base_from": sft["base_from"],
                       "tokenizer": tok_source},
            "prompt_templates": plan.templates_from, "origins": origins_of(cfg), "complete": False,
            "examples": {"used": len(plan.examples), "too_long": list(too_long), "prompts": len(prompt_rows),
                         "evidence_cut": sum(bool(r["dropped_ids"] or r["shortened_ids"]) for r in prompt_rows)}}


def open_cache(cache: Path, sig: str, prompt_rows: Sequence[dict], manifest: Mapping) -> tuple[dist.RankParts, set]:
    """Write (or check) examples.jsonl and the manifest, and fold in what a killed run left; returns
    the per-process parts of generations.jsonl and the ids of the candidates already cached.

    Several processes (accelerate launch / torchrun): each generates its share of every origin's
    prompts into its own part of generations.jsonl; the main process merges them at the end."""
    examples_path = cache / "examples.jsonl"
    gen_path = cache / "generations.jsonl"
    parts = dist.RankParts(gen_path, CANDIDATE)
    if dist.is_main_process():
        cache.mkdir(parents=True, exist_ok=True)
        if examples_path.exists():
            if read_jsonl(examples_path, PROMPT_ROW) != prompt_rows:
                raise RecordError(f"{examples_path}: holds other prompts than this run renders for signature {sig}; "
                                  f"rerun with --overwrite to rebuild this cache")
        else:
            write_jsonl(examples_path, prompt_rows, PROMPT_ROW)
            seal(examples_path)
        atomic_write_json(cache / "manifest.json", manifest)
        seal_path(cache / "manifest.json").unlink(missing_ok=True)   # sealed again once the cache is complete
    dist.wait_for_everyone()
    parts.fold_leftovers()  # candidates a killed rank finished join the cache (and are reused below)
    if dist.is_main_process():
        JsonlAppender(gen_path, CANDIDATE).close()  # opening cuts a line torn by a kill, before it is read
    dist.wait_for_everyone()
    existing = read_jsonl(gen_path, CANDIDATE, allow_empty=True) if gen_path.stat().st_size else []
    stale = [r for r in existing if r["signature"] != sig]
    if stale:
        raise RecordError(f"{gen_path}: row {stale[0]['id']!r} has signature {stale[0]['signature']}, not {sig}; "
                          f"the cache was edited or mixed: rerun with --overwrite")
    return parts, {r["id"] for r in existing}


def finish_cache(cache: Path, parts: dist.RankParts, prompt_rows: Sequence[dict],
                 origins: Sequence[str]) -> list[dict] | None:
    """Merge the processes' parts; on the main process, rewrite generations.jsonl in canonical order
    (the same file whether or not the run was resumed) and return its rows (None elsewhere)."""
    gen_path = cache / "generations.jsonl"
    order = {r["id"]: n for n, r in enumerate(prompt_rows)}
    rank = {o: n for n, o in enumerate(origins)}

    def canonical(r):
        return order[r["example_id"]], rank[r["origin"]]

    parts.merge(order=canonical)
    if not dist.is_main_process():
        return None  # the main process completes the cache
    rows = read_jsonl(gen_path, CANDIDATE, allow_empty=True)
    rows.sort(key=canonical)
    if len(rows) != len(prompt_rows) * len(origins):
        raise RecordError(f"{gen_path}: {len(rows)} candidates where {len(prompt_rows) * len(origins)} were expected")
    write_jsonl(gen_path, rows, CANDIDATE)
    seal(gen_path)   # the complete cache: the judge phase refuses it if a byte changes
    return rows


def candidate_counts(rows: Sequence[Mapping], origins: Sequence[str]) -> dict:
    """Per origin: candidates, mean output tokens, share ended by a stop token (the manifest's "candidates")."""
    by_origin = {o: [r for r in rows if r["origin"] == o] for o in origins}
    return {o: {"n": len(rs), "mean_output_tokens": _mean([r["output_tokens"] for r in rs]),
                "stopped": _mean([float(r["stopped"]) for r in rs])} for o, rs in by_origin.items()}


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


# --------------------------------------------------------------------------------------------
# Finding phase 1's cache
# --------------------------------------------------------------------------------------------
def read_manifest(path: Path) -> dict:
    """A generation cache's manifest.json, its shape checked (a truncated or hand-edited one is
    one error line, never a KeyError), and its seal once the cache is complete."""
    check_seal(path)
    m = read_json(path, expected="a generation cache manifest")
    problem = None
    if not isinstance(m, dict):
        problem = "not a JSON object"
    elif not isinstance(m.get("signature"), str) or not isinstance(m.get("complete"), bool):
        problem = "signature (string) or complete (true/false) missing"
    elif not isinstance(m.get("data"), list) or not all(isinstance(d, dict) and isinstance(d.get("path"), str) and
                                                         isinstance(d.get("sha256"), str) for d in m["data"]):
        problem = "data: expected a list of {path, sha256}"
    elif not isinstance(m.get("origins"), list):
        problem = "origins: expected a list"
    if problem:
        raise RecordError(f"{path}: {problem}; not a generation cache manifest this version wrote: delete "
                          f"{path.parent} and run --phase generate again")
    return m


def _manifests(root: Path) -> list[tuple[Path, dict]]:
    out = []
    for m in sorted(root.glob("*/manifest.json")):
        try:
            out.append((m.parent, read_manifest(m)))
        except RecordError as e:
            log.warning("skipping %s: %s", m, e)
    return out


def _describe(path: Path, m: Mapping) -> str:
    d = m.get("payload", {}).get("decoding", {})
    s = m.get("settings", {})
    return (f"{path.name} (sft {s.get('sft_model')}, max_new_tokens {d.get('max_new_tokens')}, temperature "
            f"{d.get('temperature')}, n_generations {d.get('n_generations')}, max_samples "
            f"{m.get('payload', {}).get('max_samples')}{'' if m.get('complete') else ', INCOMPLETE'})")


def locate_cache(cfg, explicit: set[str]) -> Path:
    """Phase 1's cache for this judge run: --cache-dir, else --signature, else the one complete
    cache whose data files (by content), sample limits, n_generations and explicitly given
    generation options match; an error listing the candidates when there are several or none."""
    root = Path(cfg.output_dir) / "cache"
    files = data_files(cfg)
    if cfg.cache_dir:
        path = Path(cfg.cache_dir)
        if not (path / "manifest.json").exists():
            raise FileNotFoundError(f"{path}: no manifest.json here; --cache-dir must be a {root}/<signature> dir "
                                    f"written by --phase generate")
        return path
    if cfg.signature:
        path = root / cfg.signature
        if not (path / "manifest.json").exists():
            have = ", ".join(p.name for p, _ in _manifests(root)) or "none"
            raise FileNotFoundError(f"{path}: no generation cache with signature {cfg.signature} (caches: {have})")
        return path
    found = _manifests(root)
    if not found:
        raise FileNotFoundError(f"{root}: no generation cache; run `python make_prefs.py --phase generate` with the "
                                f"same --data-path / --max-samples / --n-generations first (or pass --cache-dir)")
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: data file not found; pass the files phase 1 read, or --cache-dir")
    data = [sha256_file(f) for f in files]
    want = {"max_samples": cfg.max_samples, "max_val_samples": cfg.max_val_samples}
    matches, near = [], []
    for path, m in found:
        p, s = m.get("payload", {}), m.get("settings", {})
        ok = (p.get("data") == data and all(p.get(k) == v for k, v in want.items())
              and p.get("decoding", {}).get("n_generations") == cfg.n_generations
              and all(s.get(k) == getattr(cfg, k) for k in GENERATION_KEYS if k in explicit))
        (matches if ok else near).append((path, m))
    complete = [(p, m) for p, m in matches if m.get("complete")]
    if len(complete) == 1:
        return complete[0][0]
    if len(complete) > 1:
        raise ConfigError(f"{len(complete)} generation caches match these data/max-samples/n-generations: "
                          f"{'; '.join(_describe(p, m) for p, m in complete)}; choose one with --signature or --cache-dir")
    if matches:
        raise RecordError(f"the generation cache {_describe(*matches[0])} is not complete; rerun --phase generate with "
                          f"the same options to finish it")
    listed = "; ".join(_describe(p, m) for p, m in near[:5])
    given = ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k in GENERATION_KEYS if k in explicit)
    raise FileNotFoundError(f"{root}: no generation cache matches --data-path {','.join(files)} (by content), "
                            f"--max-samples {cfg.max_samples}, --max-val-samples {cfg.max_val_samples}, --n-generations "
                            f"{cfg.n_generations}{', ' + given if given else ''}; caches here: {listed}. Run --phase "
                            f"generate with these options, or pass --signature / --cache-dir")


def cache_examples(cfg, manifest: Mapping, explicit: set[str]) -> dict[str, dict]:
    """The examples phase 1 used, read from the files it read (checked by sha256)."""
    if "data_path" in explicit or "val_path" in explicit:
        files = data_files(cfg)
    else:
        files = [d["path"] for d in manifest["data"]]
    recorded = [d["sha256"] for d in manifest["data"]]
    actual = []
    for f in files:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: data file of the generation cache not found; pass it with --data-path")
        actual.append(sha256_file(f))
    if actual != recorded:
        raise RecordError(f"{', '.join(files)}: content differs from what the generation cache was made from "
                          f"(sha256 {', '.join(a[:12] for a in actual)} vs {', '.join(r[:12] for r in recorded)}); "
                          f"pass the same files, or generate again")
    out = {}
    for f in files:
        for e in read_examples(f):
            if e["split"] == "test":
                raise RecordError(f"{f}: split: 'test' (example {e['id']!r}); test examples never become pairs")
            out[e["id"]] = e
    return out



@dataclass
class CachedCandidates:
    """A complete generation cache as the judge phase reads it."""
    path: Path
    manifest: dict
    examples: dict[str, dict]             # the data files' examples by id
    prompt_rows: list[dict]               # PROMPT_ROWs, in cache order
    by_example: dict[str, list[dict]]     # CANDIDATE rows per example id

    @property
    def signature(self) -> str:
        return self.manifest["signature"]


def read_cache(cfg, explicit: set[str]) -> CachedCandidates:
    """Phase 1's complete cache for this judge run (locate_cache), its examples and candidates."""
    cache = locate_cache(cfg, explicit)
    manifest = read_manifest(cache / "manifest.json")
    if not manifest.get("complete"):
        raise RecordError(f"{cache}: the generation cache is not complete; rerun --phase generate with the same options")
    gen_sig = manifest["signature"]
    examples = cache_examples(cfg, manifest, explicit)
    prompt_rows = read_jsonl(cache / "examples.jsonl", PROMPT_ROW)
    by_example: dict[str, list[dict]] = defaultdict(list)
    for r in read_jsonl(cache / "generations.jsonl", CANDIDATE):
        if r["signature"] != gen_sig:
            raise RecordError(f"{cache}/generations.jsonl: row {r['id']!r} belongs to signature {r['signature']}, "
                              f"not {gen_sig}")
        by_example[r["example_id"]].append(r)
    return CachedCandidates(cache, manifest, examples, prompt_rows, by_example)
