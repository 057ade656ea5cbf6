"""make_prefs.py's logic: preference pairs in two phases, generate (cached, resumable) then judge.

Phase 1, generate (`--phase generate`). Candidates for each train/val example, from one model in
memory: the SFT adapter's greedy answer ("sft"), the base model's greedy answer with the adapter
disabled ("base"), and, with --temperature > 0, --n-generations samples from the SFT model
("sft_sample_1".."sft_sample_N"). With --temperature 0 (greedy), --n-generations counts greedy
candidates: 1 = sft only, 2 = sft + base (the notebook's setting); more is an error, since greedy
decoding gives one answer per model. Each prompt is the policy's (the SFT run's prompt
templates, the generator's chat template) with the evidence fitted to --max-input-tokens the way
training fits it (`prompts.fit_evidence`: evidence cut, never the question). Generation is the
evaluator's batched code (`evaluation.append_generations`, finished rows dropped from the batch);
sampled answers use one seeded generator per (example, sample), so they do not depend on batches.

The cache: `<output_dir>/cache/<signature>/`
    manifest.json      the signature's payload, data files, settings, counts; "complete" at the end
    examples.jsonl     per example: the rendered prompt and the evidence as fitted (PROMPT_ROW)
    generations.jsonl  one CANDIDATE row per (example, origin); appended per batch (fsynced), so a
                       killed run resumes with nothing lost or repeated; sorted once complete
    judge_<sig>.jsonl  the judge's label log-probabilities per candidate (or ordered pair), appended
The signature is a hash of everything that determines the candidates: the base and adapter
fingerprints (evaluation.model_fingerprint: sha256 of their files), the data files' sha256 and
the sample limits, the prompt templates, the decoding settings (max_new_tokens, temperature,
top_p, n_generations), the seed, max_input_tokens and min_chunk_chars, and how the model is loaded
(dtype, 4/8-bit, attention kernel). Batch size, prefill and decode modes, paths and judge options
are not in it. The same signature reuses the cache; a different one writes a new one.

Phase 2, judge (`--phase judge`). It finds phase 1's cache from the same data files, sample
limits and --n-generations (plus any generation option given explicitly); several matches or none
is an error that lists them (pick one with --signature or --cache-dir). Each example's candidates:
the model candidates, the gold output, and up to --hard-pairs-per-prompt labelled perturbations
(`perturb.py`) of a good answer (the gold output, and the SFT answer where it is correct and
grounded), kinds balanced across the run. Every candidate gets verifier scores (judge.py, from
metrics.score_example) and, unless --judge-mode verifiers, a judge score read from the judge
model's token probabilities; the final score combines them (--judge-mode, --judge-weight,
--verifier-weights). Pairs per example: model against model (up to --pairs-per-prompt, largest
gap first), kept when the gap is >= --min-margin, and each perturbation against its source, kept
when the source scores higher by >= --hard-min-margin (default --min-margin); ties, near-ties,
identical texts and perturbations not scored worse are dropped and counted.

Outputs: `<output_dir>/preferences_<signature>.jsonl` (records.PREFERENCE, written atomically;
the signature covers the generation signature and every judge and pairing option) and
`<output_dir>/preferences_<signature>.stats.json` (kept and dropped pairs by kind and reason, share
of chosen SFT answers, mean margin, judge-verifier agreement, the run card). No test example ever
becomes a pair: a test file is refused, and so is any example whose split is test.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import dist
from ..cli import Stage
from ..config import ConfigError, Part, StageSpec, to_dict
from ..generation import DECODE_MODES, PREFILL_MODES
from ..judge import (
    JUDGE_METHODS,
    JUDGE_MODES,
    VERIFIER_WEIGHTS,
    VERIFIERS,
    Judge,
    check_weights,
    combine,
    pointwise_messages,
    render_judge_prompt,
    text_key,
    verifier_score,
)
from ..judge import templates_hash as judge_templates_hash
from ..modeling import EMBEDDED_MODEL, ModelOptions
from ..paths import PREFS_DIR, TRAIN_FILE
from ..perturb import KINDS, check_kinds, perturbations
from ..prompts import (
    PromptTemplates,
    dump_output,
    fit_evidence,
    gold_output,
    parse_output,
    render_prompt,
)
from ..records import (
    PREFERENCE,
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
    write_jsonl,
)
from ..vllm_backend import BackendOptions

log = logging.getLogger(__name__)

PHASES = ("generate", "judge", "all")
OUTPUT_MODES = ("compact", "rich")
CACHE_FORMAT = 1
LORA_FIELDS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
               "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora", "lora_top_layers")
# Options that decide which candidates phase 1 made: the judge phase matches a cache on those the
# user set (besides the data files, the sample limits and n_generations, always matched).
GENERATION_KEYS = ("sft_model", "base_model", "max_new_tokens", "max_input_tokens", "min_chunk_chars", "temperature",
                   "top_p", "seed", "use_8bit", "load_in_4bit", "dtype", "attn_implementation", "prompts_dir", "backend")


@dataclass
class PrefsOptions(ModelOptions, BackendOptions):
    """Options of make_prefs.py. The generators (base + SFT adapter) load with ModelOptions'
    fields (dtype, load_in_4bit, attn_implementation, ...); --use-8bit is the notebook's name for
    load_in_8bit; --backend chooses the generation engine (vllm_backend.BackendOptions). The
    judge has its own --judge-* loading options."""

    CLI_HIDDEN = LORA_FIELDS + ("load_in_8bit",)
    model_name_or_path: str = field(default=EMBEDDED_MODEL, metadata={
        "cli": False, "help": "set from --base-model (or the adapter's base); not set directly"})

    phase: str = field(default="generate", metadata={
        "help": "generate: candidates into the cache; judge: score the cached candidates and write pairs; "
                "all: both in one process (the generator is freed before the judge loads)", "choices": list(PHASES)})
    # ---- phase 1: generate
    sft_model: str | None = field(default=None, metadata={
        "help": "the SFT model: a LoRA adapter dir written by train_sft.py (checkpoints/sft/<run>), run over its "
                "base with the adapter disabled for the base candidates; or a full model dir / hub id"})
    base_model: str | None = field(default=None, metadata={
        "help": f"base model id/path; default: the adapter's base_model_name_or_path, else {EMBEDDED_MODEL}"})
    data_path: list[str] = field(default_factory=lambda: [TRAIN_FILE], metadata={
        "help": "processed example files (build_data.py), comma-separated, e.g. train.jsonl,val.jsonl; each "
                "example keeps its own split; a test file or test example is refused"})
    val_path: list[str] = field(default_factory=list, metadata={
        "help": "more example files, usually data/processed/val.jsonl, so the reward model gets held-out pairs "
                "(the same as listing them in --data-path)"})
    max_samples: int | None = field(default=None, metadata={
        "min": 1, "help": "use only the first N train-split examples (null: all)"})
    max_val_samples: int | None = field(default=None, metadata={
        "min": 1, "help": "use only the first N val-split examples (null: all)"})
    n_generations: int = field(default=2, metadata={
        "min": 1, "help": "greedy (--temperature 0): 1 = SFT only, 2 = SFT + base; --temperature > 0: this many "
                          "SFT samples besides the greedy SFT and base answers"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "prompts generated together"})
    max_new_tokens: int = field(default=80, metadata={"min": 1, "help": "generation limit per candidate"})
    max_input_tokens: int = field(default=1536, metadata={
        "min": 64, "help": "prompt budget in tokens; longer prompts lose evidence (distractors first), never the question"})
    min_chunk_chars: int = field(default=160, metadata={
        "min": 0, "help": "when cutting evidence, shorten distractor chunks to no less than this before dropping them"})
    temperature: float = field(default=0.0, metadata={
        "min": 0, "help": "0: greedy candidates only; > 0: also --n-generations SFT samples at this temperature"})
    top_p: float = field(default=0.95, metadata={"gt": 0, "max": 1, "help": "nucleus sampling mass (temperature > 0)"})
    seed: int = field(default=42, metadata={"help": "seeds the samples (one generator per example and sample) and "
                                                    "the choice of perturbations"})
    use_8bit: bool = field(default=False, metadata={
        "help": "load the generators (base + SFT) in 8-bit (bitsandbytes): the notebook's name for load_in_8bit"})
    prefill: str = field(default="auto", metadata={
        "help": "auto (per_example on CPU, batched on GPU), batched or per_example (generation.iter_generate)",
        "choices": list(PREFILL_MODES)})
    decode: str = field(default="auto", metadata={
        "help": "drop_finished (finished rows leave the batch and the KV cache), generate (model.generate: the batch "
                "decodes until its longest answer ends) or auto (drop_finished unless sliding-window attention)",
        "choices": list(DECODE_MODES)})
    prompts_dir: str | None = field(default=None, metadata={
        "help": "prompt templates (prompt_schema.py save); default: the adapter's prompts/ (saved by train_sft.py), "
                "else the built-in ones"})
    output_dir: str = field(default=PREFS_DIR, metadata={
        "help": "cache/<signature>/ and preferences_<signature>.jsonl (+ .stats.json) go here"})
    # ---- phase 2: judge
    cache_dir: str | None = field(default=None, metadata={
        "help": "judge: this generation cache (a <output_dir>/cache/<signature> dir) instead of searching for one"})
    signature: str | None = field(default=None, metadata={
        "help": "judge: the generation signature to use when several caches match"})
    judge_model: str = field(default=EMBEDDED_MODEL, metadata={"help": "the judge: any instruct model (hub id or path)"})
    judge_use_8bit: bool = field(default=False, metadata={"help": "load the judge in 8-bit (bitsandbytes)"})
    judge_use_4bit: bool = field(default=False, metadata={"help": "load the judge in 4-bit NF4 (bitsandbytes)"})
    judge_batch_size: int = field(default=8, metadata={"min": 1, "help": "judge prompts per forward pass"})
    judge_method: str = field(default="pointwise", metadata={
        "help": "pointwise: each candidate scored 1-5 from the score tokens' probabilities; pairwise: the "
                "candidates of a prompt compared two at a time, both orders (position bias cancels)",
        "choices": list(JUDGE_METHODS)})
    judge_mode: str = field(default="both", metadata={
        "help": "what the final score is: judge, verifiers (no judge model is loaded), or both (weighted)",
        "choices": list(JUDGE_MODES)})
    judge_weight: float = field(default=0.5, metadata={
        "min": 0, "max": 1, "help": "share of the judge in the final score with --judge-mode both"})
    verifier_weights: dict = field(default_factory=lambda: dict(VERIFIER_WEIGHTS), metadata={
        "help": f"weights of the verifiers ({', '.join(VERIFIERS)}) in the verifier score; JSON on the command line"})
    judge_rationale_tokens: int = field(default=0, metadata={
        "min": 0, "help": "--output-mode rich: also generate the judge's explanation of each kept candidate, up to "
                          "this many tokens (0: none; the scores never come from it)"})
    min_margin: float = field(default=0.12, metadata={
        "min": 0, "help": "keep a pair only when chosen_score - rejected_score >= this (scores are in [0, 1])"})
    hard_min_margin: float | None = field(default=None, metadata={
        "min": 0, "help": "the gap a perturbation pair needs (null: --min-margin); its label is known by construction, "
                          "so a subtle edit (one extra citation) may be kept at a smaller gap"})
    pairs_per_prompt: int = field(default=1, metadata={
        "min": 0, "help": "model-against-model pairs kept per example (largest gap first)"})
    hard_pairs_per_prompt: int = field(default=2, metadata={
        "min": 0, "help": "perturbation pairs per example (a good answer against a labelled edit of it); 0: none"})
    perturb_kinds: list[str] = field(default_factory=lambda: list(KINDS), metadata={
        "help": f"perturbation kinds to draw from: {', '.join(KINDS)}"})
    output_mode: str = field(default="compact", metadata={
        "help": "rich adds `details`: parsed outputs, verifier breakdown, judge verdicts (and rationale)",
        "choices": list(OUTPUT_MODES)})
    overwrite: bool = field(default=False, metadata={
        "help": "generate: discard this signature's cache and generate again (judge caches included)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    config_path: str | None = field(default=None, metadata={"help": "set from -c", "cli": False})

    def validate(self) -> None:
        self.load_in_8bit = self.use_8bit  # load_in_8bit is read as use_8bit (compat.STAGE_ALIASES)
        if self.base_model:
            self.model_name_or_path = self.base_model
        if self.prompts_dir in ("", "default"):
            self.prompts_dir = None
        self.data_path = [p for p in self.data_path if p]
        self.val_path = [p for p in self.val_path if p]
        if not self.data_path + self.val_path:
            raise ConfigError("--data-path is empty; pass the train (and val) files, e.g. data/processed/train.jsonl")
        if self.temperature == 0 and self.n_generations > 2:
            raise ConfigError(f"--n-generations {self.n_generations} with --temperature 0: greedy decoding gives one "
                              f"answer per model (1 = SFT, 2 = SFT + base); set --temperature > 0 for samples")
        check_kinds(self.perturb_kinds, "--perturb-kinds")
        self.verifier_weights = check_weights(self.verifier_weights)
        if self.judge_use_8bit and self.judge_use_4bit:
            raise ConfigError("--judge-use-8bit and --judge-use-4bit are exclusive; choose one")
        if self.load_in_8bit and self.load_in_4bit:
            raise ConfigError("--use-8bit and --load-in-4bit are exclusive; choose one")


def _check(cfg) -> None:
    if dist.world_size() > 1 and cfg.phase != "generate":
        raise ConfigError(f"--phase {cfg.phase}: the judge runs in one process; start it with python (only --phase "
                          f"generate splits its examples across accelerate launch / torchrun processes)")
    if cfg.phase in ("generate", "all") and not cfg.sft_model:
        raise ConfigError("--phase generate needs --sft-model (the adapter dir train_sft.py wrote, "
                          "e.g. checkpoints/sft/<run>)")


PREFS_SPEC = StageSpec("make_prefs", (Part("run", PrefsOptions, "make_prefs options"),), check=_check)


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
JUDGE_ROW = Contract("prefs judge verdict", {
    "title": "the judge's label log-probabilities for one candidate or ordered pair (judge_<sig>.jsonl)",
    "type": "object",
    "required": ["schema_version", "id", "example_id", "key", "logprobs", "signature"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION}, "id": {"type": "string", "minLength": 1},
        "example_id": {"type": "string"}, "key": {"type": "string"},
        "logprobs": {"type": "array", "items": {"type": "number"}, "minItems": 2},
        "signature": {"type": "string"},
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
# Phase 1: generate
# --------------------------------------------------------------------------------------------
def origins_of(cfg) -> list[str]:
    """The candidate origins, in generation order (SFT adapter enabled first, then the base)."""
    if cfg.temperature == 0:
        return ["sft", "base"][:cfg.n_generations]
    return ["sft"] + [f"sft_sample_{k}" for k in range(1, cfg.n_generations + 1)] + ["base"]


def sample_seed(seed: int, example_id: str, origin: str) -> int:
    """The seed of one sampled candidate: a function of the run seed, the example and the sample only."""
    return int(sha256_text(f"{seed}:{example_id}:{origin}")[:12], 16)


def plan_generators(cfg) -> tuple[dict, dict, list[dict]]:
    """(sft system, base system, adapters) in evaluation.ModelPool's terms."""
    from ..pool import resolve_models

    name = str(cfg.sft_model)
    if not Path(name).expanduser().exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise FileNotFoundError(f"{name}: no such SFT model dir; pass the dir train_sft.py wrote "
                                f"(checkpoints/sft/<run>) or a hub id (owner/name)")
    who = resolve_models(name, cfg.base_model)
    sft = {"tag": "sft", **who}
    base = {"tag": "base", "adapter": None, "evaluated": who["base"], "base": who["base"], "base_from": who["base_from"],
            "is_base": True}
    return sft, base, ([sft] if sft["adapter"] else [])


def _templates_for(cfg, sft: Mapping) -> tuple[PromptTemplates, str]:
    if cfg.prompts_dir:
        return PromptTemplates.from_dir(cfg.prompts_dir), cfg.prompts_dir
    trained = Path(sft["adapter"]) / "prompts" if sft["adapter"] else None
    if trained is not None and (trained / "system.txt").exists():
        return PromptTemplates.from_dir(trained), str(trained)
    return PromptTemplates(), "built-in (factuality/prompts.py)"


def _load_settings(cfg) -> dict:
    from ..modeling import resolve_dtype

    out = {"dtype": str(resolve_dtype(cfg.dtype)).replace("torch.", ""), "load_in_8bit": cfg.load_in_8bit,
           "load_in_4bit": cfg.load_in_4bit, "attn_implementation": cfg.attn_implementation}
    if cfg.load_in_4bit:
        out.update(bnb_4bit_quant_type=cfg.bnb_4bit_quant_type, use_bnb_nested_quant=cfg.use_bnb_nested_quant)
    if cfg.backend != "transformers":  # another engine's kernels: its candidates are its own
        out.update(backend=cfg.backend)
    return out


def generation_payload(cfg, data_info: Sequence[Mapping], sft: Mapping, templates: PromptTemplates) -> dict:
    """Everything that determines the candidates (module docstring); its hash is the cache's signature."""
    from ..pool import (
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
                     "temperature": cfg.temperature, "top_p": cfg.top_p if sampling else None},
        "seed": cfg.seed, "max_input_tokens": cfg.max_input_tokens, "min_chunk_chars": cfg.min_chunk_chars,
        "load": _load_settings(cfg),
    }


def signature_of(payload: Mapping) -> str:
    from ..pool import signature

    return signature(payload)


def _settings(cfg) -> dict:
    return {k: getattr(cfg, k) for k in GENERATION_KEYS}


def cache_path(cfg, sig: str) -> Path:
    return Path(cfg.output_dir) / "cache" / sig


def _fit_prompts(examples: Sequence[dict], tok, cfg, templates: PromptTemplates) -> tuple[list[dict], list[str]]:
    """PROMPT_ROWs of the examples whose prompt fits max_input_tokens, and the ids of those that do not."""
    from tqdm.auto import tqdm

    from ..prompts import tokenize_prompt

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


def _candidate_row(example_id: str, split: str, origin: str, g, sig: str) -> dict:
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
    templates, templates_from = _templates_for(cfg, sft)
    payload = generation_payload(cfg, data_info, sft, templates)
    return GenerationPlan(examples, data_info, sft, base, adapters, templates, templates_from, payload,
                          signature_of(payload))


def generate_phase(cfg) -> dict:
    """Phase 1: fill (or reuse) the generation cache; returns its manifest."""
    from ..modeling import load_tokenizer
    from ..pool import ModelPool, append_generations
    from ..prompts import tokenize_prompt
    from ..provenance import set_seed
    from ..vllm_backend import check_available

    check_available(cfg.backend, dist.world_size())
    set_seed(cfg.seed)
    plan = plan_generation(cfg)
    examples, data_info, sft, base, adapters = plan.examples, plan.data, plan.sft, plan.base, plan.adapters
    templates, templates_from, payload, sig = plan.templates, plan.templates_from, plan.payload, plan.signature
    cache = cache_path(cfg, sig)
    manifest_path = cache / "manifest.json"
    if cfg.overwrite and cache.exists() and dist.is_main_process():
        log.info("--overwrite: removing the cache %s", cache)
        shutil.rmtree(cache)
    dist.wait_for_everyone()
    if manifest_path.exists():
        manifest = read_json(manifest_path, expected="a generation cache manifest")
        if manifest.get("complete"):
            log.info("generation cache %s is complete (signature %s): reused, no model loaded", cache, sig)
            return {**manifest, "reused": True, "cache_dir": str(cache)}
    t0 = time.time()
    tok_source = sft["adapter"] if sft["adapter"] and (Path(sft["adapter"]) / "tokenizer_config.json").exists() \
        else sft["evaluated"]
    tok = load_tokenizer(tok_source, padding_side="left", trust_remote_code=cfg.trust_remote_code)
    prompt_rows, too_long = _fit_prompts(examples, tok, cfg, templates)
    if too_long:
        log.warning("%d examples skipped: the question alone exceeds --max-input-tokens %d (first: %s)",
                    len(too_long), cfg.max_input_tokens, too_long[0])
    if not prompt_rows:
        raise RecordError(f"no example fits --max-input-tokens {cfg.max_input_tokens}; raise it")
    origins = origins_of(cfg)
    manifest = {"signature": sig, "payload": payload, "settings": _settings(cfg), "data": data_info,
                "models": {"sft": sft["adapter"] or sft["evaluated"], "base": sft["base"], "base_from": sft["base_from"],
                           "tokenizer": tok_source},
                "prompt_templates": templates_from, "origins": origins, "complete": False,
                "examples": {"used": len(examples), "too_long": too_long, "prompts": len(prompt_rows),
                             "evidence_cut": sum(bool(r["dropped_ids"] or r["shortened_ids"]) for r in prompt_rows)}}
    examples_path = cache / "examples.jsonl"
    gen_path = cache / "generations.jsonl"
    # Several processes (accelerate launch / torchrun): each generates its share of every origin's
    # prompts into its own part of generations.jsonl; the main process merges them at the end.
    parts = dist.RankParts(gen_path, CANDIDATE)
    if dist.is_main_process():
        cache.mkdir(parents=True, exist_ok=True)
        if examples_path.exists():
            if read_jsonl(examples_path, PROMPT_ROW) != prompt_rows:
                raise RecordError(f"{examples_path}: holds other prompts than this run renders for signature {sig}; "
                                  f"rerun with --overwrite to rebuild this cache")
        else:
            write_jsonl(examples_path, prompt_rows, PROMPT_ROW)
        atomic_write_json(manifest_path, manifest)
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
    done = {r["id"] for r in existing}
    prompts = [r["prompt"] for r in prompt_rows]
    prompt_ids = [tokenize_prompt(tok, p) for p in prompts]
    pool = ModelPool(cfg)
    todo_count = 0
    with parts.open() as out:
        for origin in origins:
            todo = [i for i, r in enumerate(prompt_rows) if f"{r['id']}#{origin}" not in done]
            log.info("%s: %d/%d candidates cached, %d to generate", origin, len(prompt_rows) - len(todo),
                     len(prompt_rows), len(todo))
            todo_count += len(todo)
            todo = dist.split_between_processes(todo)
            if not todo:
                continue
            sampling = origin.startswith("sft_sample_")
            seeds = {i: sample_seed(cfg.seed, prompt_rows[i]["id"], origin) for i in todo} if sampling else None

            def make_row(g, origin=origin):
                r = prompt_rows[g.index]
                return _candidate_row(r["id"], r["split"], origin, g, sig)

            batches = pool.batches(base if origin == "base" else sft, adapters, tok, prompts, prompt_ids, todo,
                                   batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, do_sample=sampling,
                                   temperature=cfg.temperature if sampling else 1.0, top_p=cfg.top_p,
                                   prefill=cfg.prefill, decode=cfg.decode, sample_seeds=seeds, desc=origin,
                                   progress=cfg.progress)
            append_generations(out, make_row, batches)
    del pool
    order = {r["id"]: n for n, r in enumerate(prompt_rows)}
    rank = {o: n for n, o in enumerate(origins)}

    def canonical(r):
        return order[r["example_id"]], rank[r["origin"]]

    parts.merge(order=canonical)
    if not dist.is_main_process():
        return {**manifest, "reused": False, "cache_dir": str(cache)}  # the main process completes the cache
    rows = read_jsonl(gen_path, CANDIDATE, allow_empty=True)
    rows.sort(key=canonical)
    if len(rows) != len(prompt_rows) * len(origins):
        raise RecordError(f"{gen_path}: {len(rows)} candidates where {len(prompt_rows) * len(origins)} were expected")
    write_jsonl(gen_path, rows, CANDIDATE)  # canonical order: the same file whether or not the run was resumed
    by_origin = {o: [r for r in rows if r["origin"] == o] for o in origins}
    manifest.update(complete=True, generated_now=todo_count, generate_seconds=round(time.time() - t0, 1),
                    candidates={o: {"n": len(rs), "mean_output_tokens": _mean([r["output_tokens"] for r in rs]),
                                    "stopped": _mean([float(r["stopped"]) for r in rs])} for o, rs in by_origin.items()})
    atomic_write_json(manifest_path, manifest)
    log.info("generation cache %s complete: %d candidates (%d generated now) in %.0f s", cache, len(rows), todo_count,
             time.time() - t0)
    return {**manifest, "reused": False, "cache_dir": str(cache)}


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


# --------------------------------------------------------------------------------------------
# Finding phase 1's cache
# --------------------------------------------------------------------------------------------
def _manifests(root: Path) -> list[tuple[Path, dict]]:
    out = []
    for m in sorted(root.glob("*/manifest.json")):
        try:
            out.append((m.parent, read_json(m, expected="a generation cache manifest")))
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


def _cache_examples(cfg, manifest: Mapping, explicit: set[str]) -> dict[str, dict]:
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


# --------------------------------------------------------------------------------------------
# Candidates, hard candidates, pairs
# --------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    origin: str                        # sft, base, sft_sample_<k>, gold, perturb:<kind>
    text: str
    kind: str | None = None            # the perturbation kind (hard candidates)
    source: str | None = None          # origin of the good answer it edits (hard candidates)
    verifier: float = 0.0
    breakdown: dict = field(default_factory=dict)
    judge: float | None = None
    judge_detail: dict | None = None
    score: float = 0.0
    rationale: str | None = None

    @property
    def is_model(self) -> bool:
        return self.kind is None and self.origin != "gold"


def good_sources(example: Mapping, model_cands: Sequence[Candidate]) -> list[tuple[str, dict, str]]:
    """(origin, answer object, text) of the good answers to perturb: the gold output, and the SFT
    candidate where the verifiers find it correct and grounded (supported by its citations)."""
    gold = gold_output(example)
    out = [("gold", gold, dump_output(gold))]
    sft = next((c for c in model_cands if c.origin == "sft"), None)
    if sft is not None and sft.breakdown.get("correct_grounded") == 1.0 and sft.breakdown.get("supported") == 1.0 \
            and example["answerable"]:
        parsed = parse_output(sft.text, [c["id"] for c in example["evidence"]])
        obj = {"answer": parsed.answer, "citations": parsed.citations,
               "confidence": parsed.confidence if parsed.confidence is not None else 1.0}
        out.append(("sft", obj, sft.text))
    return out


def hard_candidates(example: Mapping, goods: Sequence[tuple[str, dict, str]], kinds: Sequence[str], n: int,
                    seed: int, usage: Counter) -> list[Candidate]:
    """Up to n perturbation candidates for one example, the least used kinds so far first (ties in a
    seeded order), one per kind while other kinds are left; `usage` is updated."""
    options = [(kind, origin, obj) for origin, good, _ in goods for kind, obj in perturbations(example, good, kinds, seed)]
    options.sort(key=lambda o: (usage[o[0]], sha256_text(f"{seed}:{example['id']}:{o[0]}:{o[1]}")))
    picked: list[tuple[str, str, dict]] = []
    for opt in options:
        if len(picked) < n and opt[0] not in {p[0] for p in picked}:
            picked.append(opt)
    for opt in options:
        if len(picked) < n and opt not in picked:
            picked.append(opt)
    for kind, _, _ in picked:
        usage[kind] += 1
    return [Candidate(origin=f"perturb:{kind}", text=dump_output(obj), kind=kind, source=origin)
            for kind, origin, obj in picked]


DROP_REASONS = ("tie", "near_tie", "identical", "perturbation_not_worse", "over_pairs_per_prompt")


@dataclass
class Pair:
    chosen: Candidate
    rejected: Candidate
    margin: float
    kind: str                          # model | perturb:<kind>


def select_pairs(cands: Sequence[Candidate], min_margin: float, pairs_per_prompt: int,
                 hard_min_margin: float | None = None) -> tuple[list[Pair], Counter]:
    """The pairs of one example and the dropped ones counted as (kind, reason).

    Model against model: every two model candidates, the higher score chosen; kept when
    chosen - rejected >= min_margin, largest gap first, at most pairs_per_prompt. A perturbation
    against its source: kept when source - perturbation >= hard_min_margin (default min_margin;
    a perturbation scored higher than its source is dropped, never flipped: its label is known by
    construction). The margin written is exactly chosen_score - rejected_score.
    """
    hard_min = min_margin if hard_min_margin is None else hard_min_margin
    drops: Counter = Counter()
    options: list[Pair] = []
    model = [c for c in cands if c.is_model]
    for a, b in itertools.combinations(model, 2):
        hi, lo = (a, b) if a.score >= b.score else (b, a)
        margin = hi.score - lo.score
        if a.text == b.text:
            drops[("model", "identical")] += 1
        elif margin == 0:
            drops[("model", "tie")] += 1
        elif margin < min_margin:
            drops[("model", "near_tie")] += 1
        else:
            options.append(Pair(hi, lo, margin, "model"))
    options.sort(key=lambda p: -p.margin)  # stable: equal gaps keep candidate order
    kept = options[:pairs_per_prompt]
    drops[("model", "over_pairs_per_prompt")] += len(options) - len(kept)
    by_origin = {c.origin: c for c in cands}
    for c in cands:
        if c.kind is None:
            continue
        src = by_origin[c.source]
        kind = f"perturb:{c.kind}"
        margin = src.score - c.score
        if src.text == c.text:
            drops[(kind, "identical")] += 1
        elif margin < 0:
            drops[(kind, "perturbation_not_worse")] += 1
        elif margin == 0:
            drops[(kind, "tie")] += 1
        elif margin < hard_min:
            drops[(kind, "near_tie")] += 1
        else:
            kept.append(Pair(src, c, margin, kind))
    return kept, +drops


# --------------------------------------------------------------------------------------------
# Phase 2: judge
# --------------------------------------------------------------------------------------------
def _load_judge(cfg):
    from ..modeling import load_model, pick_device
    from ..pool import model_options

    opts = dataclasses.replace(model_options(cfg, cfg.judge_model), load_in_8bit=cfg.judge_use_8bit,
                               load_in_4bit=cfg.judge_use_4bit)
    model = load_model(opts)
    if not (opts.load_in_4bit or opts.load_in_8bit):
        model = model.to(pick_device())
    return model


def judge_signature(cfg, gen_sig: str, tokenizer) -> tuple[str, dict]:
    """Hash of what determines the judge's verdicts: its weights, loading, method, prompt templates
    and how its tokenizer spells the labels (the judge cache is keyed by it)."""
    from ..judge import SCORES, SIDES, space_before_labels, verdict_token_ids
    from ..pool import fingerprint_hash, fingerprint_model

    labels = SCORES if cfg.judge_method == "pointwise" else SIDES
    payload = {"stage": "make_prefs.judge", "generation": gen_sig, "method": cfg.judge_method,
               "judge": {"fingerprint": fingerprint_hash(fingerprint_model(cfg.judge_model)),
                         "load_in_8bit": cfg.judge_use_8bit, "load_in_4bit": cfg.judge_use_4bit},
               "load": {k: v for k, v in _load_settings(cfg).items() if not k.startswith(("load_in", "bnb", "use_bnb"))},
               "templates": judge_templates_hash(), "label_tokens": verdict_token_ids(tokenizer, labels),
               "space_before_labels": space_before_labels(tokenizer, labels)}
    return signature_of(payload), payload


def _judge_requests(method: str, ex_id: str, example: Mapping, evidence, cands: Sequence[Candidate]) -> dict:
    """{key: (group, example, evidence, texts)} of the judge prompts one example needs."""
    texts = list(dict.fromkeys(c.text for c in cands))
    if method == "pointwise":
        return {text_key(t): (ex_id, example, evidence, [t]) for t in texts}
    out = {}
    for x, y in itertools.permutations(texts, 2):
        out[f"{text_key(x)}>{text_key(y)}"] = (ex_id, example, evidence, [x, y])
    return out


def _apply_judge(judge: Judge, method: str, cands: Sequence[Candidate], logprobs: Mapping[str, list]) -> list[float]:
    """Set each candidate's judge score (and detail) from the judge's label log-probabilities.
    Pairwise: returns, per compared pair, P(first shown wins) - P(second shown wins) averaged over
    both orders: the judge's position bias, which showing both orders cancels."""
    if method == "pointwise":
        for c in cands:
            v = judge.pointwise(logprobs[text_key(c.text)])
            c.judge, c.judge_detail = v.score, {"method": "pointwise", **v.to_dict()}
        return []
    texts = list(dict.fromkeys(c.text for c in cands))
    wins: dict[str, list[float]] = defaultdict(list)
    bias = []
    for x, y in itertools.combinations(texts, 2):
        kx, ky = text_key(x), text_key(y)
        pref, one = judge.preference(logprobs[f"{kx}>{ky}"], logprobs[f"{ky}>{kx}"])
        bias.append(one["x_first"] - one["x_second"])
        wins[x].append(pref)
        wins[y].append(1.0 - pref)
    for c in cands:
        prefs = wins.get(c.text) or [0.5]
        c.judge = sum(prefs) / len(prefs)
        c.judge_detail = {"method": "pairwise", "opponents": len(wins.get(c.text, [])), "mean_preference": c.judge}
    return bias


def judge_phase(cfg, explicit: set[str]) -> dict:
    """Phase 2: score the cached candidates, make and write the pairs and their statistics."""
    from tqdm.auto import tqdm

    from ..provenance import run_card, set_seed

    set_seed(cfg.seed)
    t0 = time.time()
    cache = locate_cache(cfg, explicit)
    manifest = read_json(cache / "manifest.json", expected="a generation cache manifest")
    if not manifest.get("complete"):
        raise RecordError(f"{cache}: the generation cache is not complete; rerun --phase generate with the same options")
    gen_sig = manifest["signature"]
    examples = _cache_examples(cfg, manifest, explicit)
    prompt_rows = read_jsonl(cache / "examples.jsonl", PROMPT_ROW)
    by_example: dict[str, list[dict]] = defaultdict(list)
    for r in read_jsonl(cache / "generations.jsonl", CANDIDATE):
        if r["signature"] != gen_sig:
            raise RecordError(f"{cache}/generations.jsonl: row {r['id']!r} belongs to signature {r['signature']}, "
                              f"not {gen_sig}")
        by_example[r["example_id"]].append(r)
    log.info("judging the candidates of %s (signature %s): %d examples", cache, gen_sig, len(prompt_rows))

    # ---- candidates and verifiers
    usage: Counter = Counter()
    items = []  # (prompt row, fitted example, candidates)
    for row in prompt_rows:
        if row["id"] not in examples:
            raise RecordError(f"{cache}/examples.jsonl: example {row['id']!r} is not in the data files")
        ex = {**examples[row["id"]], "evidence": row["evidence"]}
        model_cands = [Candidate(origin=r["origin"], text=r["raw_output"]) for r in by_example[row["id"]]]
        for c in model_cands:
            c.verifier, c.breakdown = verifier_score(ex, c.text, cfg.verifier_weights)
        goods = good_sources(ex, model_cands)
        gold = Candidate(origin="gold", text=goods[0][2])
        hard = hard_candidates(ex, goods, cfg.perturb_kinds, cfg.hard_pairs_per_prompt, cfg.seed, usage)
        cands = model_cands + [gold] + hard
        for c in [gold] + hard:
            c.verifier, c.breakdown = verifier_score(ex, c.text, cfg.verifier_weights)
        items.append((row, ex, cands))

    # ---- judge
    judge_info: dict[str, Any] = {"mode": cfg.judge_mode}
    judge = None
    if cfg.judge_mode != "verifiers":
        from ..modeling import load_tokenizer

        tok = load_tokenizer(cfg.judge_model, padding_side="left", trust_remote_code=cfg.trust_remote_code)
        jsig, jpayload = judge_signature(cfg, gen_sig, tok)
        jpath = cache / f"judge_{jsig}.jsonl"
        JsonlAppender(jpath, JUDGE_ROW).close()
        cached = {r["id"]: r["logprobs"] for r in (read_jsonl(jpath, JUDGE_ROW, allow_empty=True)
                                                    if jpath.stat().st_size else [])}
        judge = Judge(_load_judge(cfg), tok, cfg.judge_method, cfg.judge_batch_size)
        per_example = {row["id"]: _judge_requests(cfg.judge_method, row["id"], ex, row["evidence"], cands)
                       for row, ex, cands in items}
        todo = [(ex_id, key, req) for ex_id, reqs in per_example.items() for key, req in reqs.items()
                if f"{ex_id}#{key}" not in cached]
        log.info("judge %s (%s): %d prompts cached, %d to score", cfg.judge_model, cfg.judge_method,
                 sum(len(r) for r in per_example.values()) - len(todo), len(todo))
        t_judge = time.time()
        chunk = max(cfg.judge_batch_size, 16)
        with JsonlAppender(jpath, JUDGE_ROW) as out:
            for k in tqdm(range(0, len(todo), chunk), desc=f"judge ({cfg.judge_method})", disable=not cfg.progress):
                part = todo[k:k + chunk]
                for (ex_id, key, _), lp in zip(part, judge.score([req for _, _, req in part])):
                    out.write({"schema_version": SCHEMA_VERSION, "id": f"{ex_id}#{key}", "example_id": ex_id,
                               "key": key, "logprobs": lp, "signature": jsig})
                    cached[f"{ex_id}#{key}"] = lp
        bias = []
        for row, ex, cands in items:
            bias += _apply_judge(judge, cfg.judge_method, cands,
                                 {key: cached[f"{row['id']}#{key}"] for key in per_example[row["id"]]})
        if bias:  # P(first shown wins) - P(second shown wins): what showing both orders cancels
            judge_info["position_bias_mean"] = round(sum(bias) / len(bias), 4)
        judge_info.update(model=cfg.judge_model, method=cfg.judge_method, signature=jsig, payload=jpayload,
                          cache=str(jpath), scored_now=len(todo), judge_seconds=round(time.time() - t_judge, 1))
    for _, _, cands in items:
        for c in cands:
            c.score = combine(c.verifier, c.judge, cfg.judge_mode, cfg.judge_weight)

    # ---- pairs
    records, drops, kept_pairs = [], Counter(), []
    for row, ex, cands in items:
        pairs, dropped = select_pairs(cands, cfg.min_margin, cfg.pairs_per_prompt, cfg.hard_min_margin)
        drops.update(dropped)
        for k, pair in enumerate(pairs):
            kept_pairs.append((row, ex, pair, k))
    if judge is not None and cfg.output_mode == "rich" and cfg.judge_rationale_tokens:
        _add_rationales(cfg, judge, kept_pairs)
    for row, ex, pair, k in kept_pairs:
        records.append(pair_record(row, ex, pair, k, cfg))
    if any(r["split"] == "test" for r in records):  # never: load_data and _cache_examples refuse test examples
        raise RecordError("a test example reached the pairs; refusing to write them")
    pairs_payload = {"generation": gen_sig, "judge": judge_info.get("signature"), "judge_mode": cfg.judge_mode,
                     "judge_weight": cfg.judge_weight if cfg.judge_mode == "both" else None,
                     "verifier_weights": cfg.verifier_weights, "min_margin": cfg.min_margin,
                     "hard_min_margin": cfg.hard_min_margin,
                     "pairs_per_prompt": cfg.pairs_per_prompt, "hard_pairs_per_prompt": cfg.hard_pairs_per_prompt,
                     "perturb_kinds": list(cfg.perturb_kinds), "seed": cfg.seed, "output_mode": cfg.output_mode,
                     "judge_rationale_tokens": cfg.judge_rationale_tokens if cfg.output_mode == "rich" else 0}
    psig = signature_of(pairs_payload)
    out_dir = Path(cfg.output_dir)
    pairs_path = out_dir / f"preferences_{psig}.jsonl"
    stats_path = out_dir / f"preferences_{psig}.stats.json"
    if not records:
        raise RecordError(f"no pair has a gap >= --min-margin {cfg.min_margin} ({sum(drops.values())} dropped: "
                          f"{dict(_reasons(drops))}); lower --min-margin or check the candidates")
    write_jsonl(pairs_path, records, PREFERENCE)
    stats = pair_statistics(items, kept_pairs, drops, cfg)
    stats.update(files={"pairs": str(pairs_path), "stats": str(stats_path), "cache": str(cache)},
                 signature=psig, generation_signature=gen_sig, pairs_payload=pairs_payload,
                 judge={k: v for k, v in judge_info.items() if k != "payload"},
                 judge_seconds_total=round(time.time() - t0, 1))
    card = run_card("make_prefs.py --phase judge", to_dict(cfg), {d["path"]: d["sha256"] for d in manifest["data"]},
                    generation_manifest=str(cache / "manifest.json"))
    atomic_write_json(stats_path, {**stats, "run_card": card})
    return stats


def _add_rationales(cfg, judge: Judge, kept_pairs) -> None:
    """The judge's explanation of each kept candidate (generated text; scores never come from it)."""
    from ..generation import generate

    cands, prompts = [], []
    for row, ex, pair, _ in kept_pairs:
        for c in (pair.chosen, pair.rejected):
            if c.rationale is None and all(c is not d for d in cands):
                cands.append(c)
                prompts.append(render_judge_prompt(judge.tok, pointwise_messages(ex, row["evidence"], c.text), "Reason:"))
    texts = generate(judge.model, judge.tok, prompts, batch_size=cfg.judge_batch_size,
                     max_new_tokens=cfg.judge_rationale_tokens, progress=cfg.progress, desc="judge rationales")
    for c, t in zip(cands, texts):
        c.rationale = t.strip()


def _detail(c: Candidate, evidence_ids: Sequence[str]) -> dict:
    return {"origin": c.origin, "parsed": parse_output(c.text, evidence_ids).to_dict(), "verifier_score": c.verifier,
            "verifiers": c.breakdown, "judge_score": c.judge, "judge": c.judge_detail, "rationale": c.rationale,
            "perturbed_from": c.source}


def pair_record(row: Mapping, example: Mapping, pair: Pair, k: int, cfg) -> dict:
    """One records.PREFERENCE row (TRL's prompt/chosen/rejected plus what the reward model needs)."""
    shown = [c["id"] for c in row["evidence"]]
    rec = {"schema_version": SCHEMA_VERSION, "id": f"{row['id']}#{k}", "example_id": row["id"], "split": row["split"],
           "source": example["source"], "prompt": row["prompt"], "chosen": pair.chosen.text,
           "rejected": pair.rejected.text, "margin": pair.margin, "chosen_score": pair.chosen.score,
           "rejected_score": pair.rejected.score, "kind": pair.kind, "chosen_origin": pair.chosen.origin,
           "rejected_origin": pair.rejected.origin, "evidence": row["evidence"],
           "support_ids": list(dict.fromkeys(s["chunk_id"] for s in example["support"])),
           "hard_negative_ids": [i for i in example.get("hard_negatives", []) if i in shown],
           "answerable": bool(example["answerable"]), "answers": list(example["answers"])}
    if cfg.output_mode == "rich":
        rec["details"] = {"chosen": _detail(pair.chosen, shown), "rejected": _detail(pair.rejected, shown),
                          "judge_mode": cfg.judge_mode, "judge_weight": cfg.judge_weight,
                          "verifier_weights": cfg.verifier_weights}
    return rec


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def _reasons(drops: Counter) -> Counter:
    out: Counter = Counter()
    for (_, reason), n in drops.items():
        out[reason] += n
    return out


def _share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def agreement(items, min_gap: float = 1e-9) -> dict:
    """How often the judge orders two candidates of a prompt as the verifiers do, over the pairs
    whose verifier scores differ (a judge tie counts half): over all such pairs, model against
    model, perturbation against its source, and per kind; and the Pearson correlation of the two
    scores over all candidates."""
    groups: dict[str, list[float]] = defaultdict(list)
    xs, ys = [], []
    for _, _, cands in items:
        by_origin = {c.origin: c for c in cands}
        for c in cands:
            if c.judge is not None:
                xs.append(c.judge)
                ys.append(c.verifier)
        for a, b in itertools.combinations(cands, 2):
            if a.judge is None or b.judge is None or a.text == b.text or abs(a.verifier - b.verifier) <= min_gap:
                continue
            dj, dv = a.judge - b.judge, a.verifier - b.verifier
            hit = 0.5 if dj == 0 else float((dj > 0) == (dv > 0))
            groups["all"].append(hit)
            if a.is_model and b.is_model:
                groups["model"].append(hit)
            for x, y in ((a, b), (b, a)):
                if x.kind is not None and by_origin.get(x.source) is y:
                    groups["perturbation_vs_source"].append(hit)
                    groups[f"perturb:{x.kind}"].append(hit)
    out = {k: {"agreement": round(sum(v) / len(v), 4), "pairs": len(v)} for k, v in sorted(groups.items())}
    if len(xs) > 1:
        import numpy as np

        r = np.corrcoef(xs, ys)[0, 1] if np.std(xs) > 0 and np.std(ys) > 0 else float("nan")
        out["pearson_judge_verifier"] = None if math.isnan(r) else round(float(r), 4)
    return out


def pair_statistics(items, kept_pairs, drops: Counter, cfg) -> dict:
    kinds = sorted({p.kind for _, _, p, _ in kept_pairs} | {k for k, _ in drops})
    by_kind = {}
    for kind in kinds:
        ps = [p for _, _, p, _ in kept_pairs if p.kind == kind]
        by_kind[kind] = {"kept": len(ps), "dropped": {r: n for (k, r), n in sorted(drops.items()) if k == kind},
                         "mean_margin": _mean([p.margin for p in ps]),
                         "chosen_verifier_better": _share([p.chosen.verifier > p.rejected.verifier for p in ps])}
    pairs = [p for _, _, p, _ in kept_pairs]
    model_pairs = [p for p in pairs if p.kind == "model"]
    cands = [c for _, _, cs in items for c in cs]
    origins = sorted({c.origin if c.kind is None else "perturbation" for c in cands})
    by_origin = {}
    for o in origins:
        cs = [c for c in cands if (c.origin if c.kind is None else "perturbation") == o]
        by_origin[o] = {"n": len(cs), "mean_verifier": _mean([c.verifier for c in cs]),
                        "mean_judge": _mean([c.judge for c in cs if c.judge is not None]),
                        "correct_grounded": _mean([c.breakdown["correct_grounded"] for c in cs]),
                        "format_valid": _mean([c.breakdown["format_valid"] for c in cs])}
    masses = [c.judge_detail["mass"] for c in cands if c.judge_detail and "mass" in c.judge_detail]
    splits = Counter(r["split"] for r, _, _, _ in kept_pairs)
    return {
        "examples": len(items), "candidates": len(cands),
        "pairs_kept": len(pairs), "pairs_by_split": dict(sorted(splits.items())),
        "pairs_dropped": sum(drops.values()), "dropped_by_reason": dict(sorted(_reasons(drops).items())),
        "by_kind": by_kind,
        "mean_margin": _mean([p.margin for p in pairs]), "min_margin": cfg.min_margin,
        "hard_min_margin": cfg.hard_min_margin if cfg.hard_min_margin is not None else cfg.min_margin,
        "chosen_is_sft_share_of_model_pairs": _share([p.chosen.origin.startswith("sft") for p in model_pairs]),
        "chosen_is_sft_share": _share([p.chosen.origin.startswith("sft") for p in pairs]),
        "chosen_verifier_better": _share([p.chosen.verifier > p.rejected.verifier for p in pairs]),
        "chosen_verifier_equal": _share([p.chosen.verifier == p.rejected.verifier for p in pairs]),
        "candidates_by_origin": by_origin,
        "judge_verifier_agreement": agreement(items) if cfg.judge_mode != "verifiers" else None,
        "judge_score_token_mass": _mean(masses) if masses else None,
        "perturbations_drawn": dict(sorted(Counter(c.kind for c in cands if c.kind).items())),
    }


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
def run(cfg) -> dict:
    """Run the phase(s) --phase names; returns {"generate": manifest, "judge": stats} (those run)."""
    explicit = set(getattr(cfg, "explicit", set()))
    out: dict[str, Any] = {"phase": cfg.phase}
    if cfg.phase in ("generate", "all"):
        out["generate"] = generate_phase(cfg)
        if cfg.phase == "all":
            import gc

            gc.collect()  # the generators are freed before the judge loads
            cfg = _with(cfg, cache_dir=out["generate"]["cache_dir"])
    if cfg.phase in ("judge", "all"):
        out["judge"] = judge_phase(cfg, explicit)
    return out


def _with(cfg, **values):
    """The same config with some of its option values replaced."""
    for part in cfg._parts.values():
        for k, v in values.items():
            if hasattr(part, k):
                setattr(part, k, v)
    return cfg


def summarize(result: Mapping) -> str:
    lines = []
    g = result.get("generate")
    if g:
        cands = ", ".join(f"{o} {c['n']} (mean {c['mean_output_tokens']} tokens, {c['stopped']:.0%} stopped)"
                          for o, c in (g.get("candidates") or {}).items())
        how = "reused" if g.get("reused") else f"{g.get('generated_now')} generated in {g.get('generate_seconds')} s"
        lines.append(f"make_prefs generate: cache {g['cache_dir']} ({how}); {g['examples']['prompts']} prompts, "
                     f"{len(g['examples']['too_long'])} too long; candidates: {cands}")
    j = result.get("judge")
    if j:
        agree = (j.get("judge_verifier_agreement") or {}).get("all", {})
        lines.append(f"make_prefs judge: kept {j['pairs_kept']} pairs (margin >= {j['min_margin']}), dropped "
                     f"{j['pairs_dropped']} {j['dropped_by_reason']}; mean margin {j['mean_margin']}; chosen has the "
                     f"better verifier score in {_pct(j['chosen_verifier_better'])}; chosen is SFT in "
                     f"{_pct(j['chosen_is_sft_share_of_model_pairs'])} of model pairs"
                     + (f"; judge agrees with the verifiers on {_pct(agree.get('agreement'))} of {agree.get('pairs')} "
                        f"candidate pairs" if agree else "")
                     + (f" (probability on its score tokens: {_pct(j['judge_score_token_mass'])})"
                        if j.get("judge_score_token_mass") is not None else ""))
        for kind, k in j["by_kind"].items():
            lines.append(f"  {kind:34s} kept {k['kept']:4d}  dropped {sum(k['dropped'].values()):4d}  mean margin "
                         f"{k['mean_margin']}  chosen verifier-better {_pct(k['chosen_verifier_better'])}")
        lines.append(f"wrote {j['files']['pairs']} and {j['files']['stats']}")
    return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


STAGE = Stage("make_prefs", PREFS_SPEC, run, summarize)
