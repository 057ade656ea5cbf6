"""make_prefs.py's logic: preference pairs in two phases, generate (cached, resumable) then judge.

Phase 1, generate (`--phase generate`). Candidates for each train/val example, from one model in
memory: the SFT adapter's greedy answer ("sft"), the base model's greedy answer with the adapter
disabled ("base"), and, with --temperature > 0, --n-generations samples from the SFT model
("sft_sample_1".."sft_sample_N"). With --temperature 0 (greedy), --n-generations counts greedy
candidates: 1 = sft only, 2 = sft + base (the notebook's setting); more is an error, since greedy
decoding gives one answer per model. Each prompt is the policy's (the SFT run's prompt
templates, the generator's chat template) with the evidence fitted to --max-input-tokens the way
training fits it (`prompts.fit_evidence`: evidence cut, never the question). Generation is the
evaluator's batched code (`pool.append_generations`, finished rows dropped from the batch);
sampled answers use one seeded generator per (example, sample), so they do not depend on batches.

The cache: `<output_dir>/cache/<signature>/`
    manifest.json      the signature's payload, data files, settings, counts; "complete" at the end
    examples.jsonl     per example: the rendered prompt and the evidence as fitted (PROMPT_ROW)
    generations.jsonl  one CANDIDATE row per (example, origin); appended per batch (fsynced), so a
                       killed run resumes with nothing lost or repeated; sorted once complete
    judge_<sig>.jsonl  the judge's label log-probabilities per candidate (or ordered pair), appended
The signature is a hash of everything that determines the candidates: the base and adapter
fingerprints (pool.model_fingerprint: sha256 of their files), the data files' sha256 and
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

This module holds the options and the order of the steps; the parts live below the stages:
candidates.py (the data, the generation plan and signature, the cache), pairing.py (candidates,
hard candidates, pairs, statistics) and verdicts.py (the judge's signature, cache and scores).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import dist
from ..candidates import (
    GenerationPlan,
    cache_manifest,
    cache_path,
    candidate_counts,
    candidate_row,
    finish_cache,
    fit_prompts,
    generator_tokenizer,
    open_cache,
    origins_of,
    plan_generation,
    read_cache,
    read_manifest,
    sample_seed,
    signature_of,
)
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
)
from ..modeling import EMBEDDED_MODEL, ModelOptions
from ..pairing import (
    choose_pairs,
    count_by_reason,
    example_candidates,
    pair_record,
    pair_statistics,
    pairs_payload,
)
from ..paths import PREFS_DIR, TRAIN_FILE
from ..perturb import KINDS, check_kinds
from ..records import PREFERENCE, RecordError, atomic_write_json, seal, write_jsonl
from ..verdicts import (
    add_rationales,
    apply_judge,
    judge_requests,
    judge_signature,
    load_judge,
    read_verdicts,
    score_into,
)
from ..vllm_backend import BackendOptions

log = logging.getLogger(__name__)

PHASES = ("generate", "judge", "all")
OUTPUT_MODES = ("compact", "rich")
LORA_FIELDS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
               "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora", "lora_top_layers")


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
    base_candidates: bool = field(default=True, metadata={
        "help": "with --temperature > 0: also the base model's answer (adapter off) as a candidate; false keeps the "
                "pairs on the SFT policy's own outputs (its greedy answer and samples: its real mistakes)"})
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
    entailment: str = field(default="lexical", metadata={
        "help": "the entailment checker behind the 'supported' verifier (entailment.py): lexical (cannot judge FEVER "
                "verdicts), nli:<hub id or path> or true:<hub id or path>"})
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
    gold_pairs_per_prompt: int = field(default=0, metadata={
        "min": 0, "help": "pairs of the gold output against the model's own worst candidates per example (its real "
                          "mistakes as the rejected answers; with --temperature > 0 its samples); 0: none"})
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
        both = sorted({str(Path(p).resolve()) for p in self.data_path} & {str(Path(p).resolve()) for p in self.val_path})
        if both:
            raise ConfigError(f"{both[0]} is in both --data-path and --val-path: its pairs would be train and val at "
                              "once (the reward model would be validated on what it trained on); list it once")
        if not self.data_path + self.val_path:
            raise ConfigError("--data-path is empty; pass the train (and val) files, e.g. data/processed/train.jsonl")
        if self.temperature == 0 and self.n_generations > 2:
            raise ConfigError(f"--n-generations {self.n_generations} with --temperature 0: greedy decoding gives one "
                              f"answer per model (1 = SFT, 2 = SFT + base); set --temperature > 0 for samples")
        if self.temperature == 0 and not self.base_candidates:
            raise ConfigError("--base-candidates false with --temperature 0: greedy decoding gives one answer per model; "
                              "use --n-generations 1 for the SFT answer alone, or --temperature > 0 for samples")
        check_kinds(self.perturb_kinds, "--perturb-kinds")
        self.verifier_weights = check_weights(self.verifier_weights)
        from ..entailment import check_spec

        check_spec(self.entailment)
        if self.judge_use_8bit and self.judge_use_4bit:
            raise ConfigError("--judge-use-8bit and --judge-use-4bit are exclusive; choose one")
        if self.load_in_8bit and self.load_in_4bit:
            raise ConfigError("--use-8bit and --load-in-4bit are exclusive; choose one")


def check_prefs(cfg) -> None:
    if dist.world_size() > 1 and cfg.phase != "generate":
        raise ConfigError(f"--phase {cfg.phase}: the judge runs in one process; start it with python (only --phase "
                          f"generate splits its examples across accelerate launch / torchrun processes)")
    if cfg.phase in ("generate", "all") and not cfg.sft_model:
        raise ConfigError("--phase generate needs --sft-model (the adapter dir train_sft.py wrote, "
                          "e.g. checkpoints/sft/<run>)")


PREFS_SPEC = StageSpec("make_prefs", (Part("run", PrefsOptions, "make_prefs options"),), check=check_prefs)


# --------------------------------------------------------------------------------------------
# Phase 1: generate
# --------------------------------------------------------------------------------------------
def generate_phase(cfg) -> dict:
    """Phase 1: fill (or reuse) the generation cache; returns its manifest."""
    from ..provenance import set_seed
    from ..vllm_backend import check_available

    check_available(cfg.backend, dist.world_size())
    set_seed(cfg.seed)
    plan = plan_generation(cfg)
    cache = cache_path(cfg, plan.signature)
    _settle_set_aside(cache)   # a run killed after --overwrite set the old cache aside
    reused = _reusable_cache(cfg, cache, plan.signature)
    if reused is not None:
        return reused
    try:
        return _fill_cache(cfg, plan, cache)
    finally:
        _settle_set_aside(cache)


def _set_aside(cache: Path) -> Path:
    return cache.with_name(f".{cache.name}.replaced")


def _settle_set_aside(cache: Path) -> None:
    """--overwrite sets the old cache aside instead of deleting it: it is dropped once the new run
    generated a candidate, and put back when it generated none (a model that fails to load, a kill
    before the first batch), so a failed --overwrite leaves the old cache as it was."""
    aside = _set_aside(cache)
    if not dist.is_main_process() or not aside.exists():
        return
    if any(p.stat().st_size for p in cache.glob("generations.jsonl*")):
        shutil.rmtree(aside)
    else:
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(aside, cache)


def _fill_cache(cfg, plan: GenerationPlan, cache: Path) -> dict:
    """Generate the candidates this signature's cache lacks and complete it; returns its manifest."""
    t0 = time.time()
    tok, tok_source = generator_tokenizer(cfg, plan.sft)
    prompt_rows, too_long = fit_prompts(plan.examples, tok, cfg, plan.templates)
    if too_long:
        log.warning("%d examples skipped: the question alone exceeds --max-input-tokens %d (first: %s)",
                    len(too_long), cfg.max_input_tokens, too_long[0])
    if not prompt_rows:
        raise RecordError(f"no example fits --max-input-tokens {cfg.max_input_tokens}; raise it")
    manifest = cache_manifest(cfg, plan, tok_source, prompt_rows, too_long)
    parts, done = open_cache(cache, plan.signature, prompt_rows, manifest)
    todo_count = _generate_candidates(cfg, plan, tok, prompt_rows, done, parts)
    rows = finish_cache(cache, parts, prompt_rows, manifest["origins"])
    if rows is None:
        return {**manifest, "reused": False, "cache_dir": str(cache)}  # the main process completes the cache
    manifest.update(complete=True, generated_now=todo_count, generate_seconds=round(time.time() - t0, 1),
                    candidates=candidate_counts(rows, manifest["origins"]))
    atomic_write_json(cache / "manifest.json", manifest)
    seal(cache / "manifest.json")
    log.info("generation cache %s complete: %d candidates (%d generated now) in %.0f s", cache, len(rows), todo_count,
             time.time() - t0)
    return {**manifest, "reused": False, "cache_dir": str(cache)}


def _reusable_cache(cfg, cache: Path, sig: str) -> dict | None:
    """The manifest of this signature's complete cache (None when there is none); --overwrite removes it first."""
    manifest_path = cache / "manifest.json"
    if cfg.overwrite and cache.exists() and dist.is_main_process():
        log.info("--overwrite: setting the cache %s aside (removed once the new one has candidates)", cache)
        shutil.rmtree(_set_aside(cache), ignore_errors=True)
        os.replace(cache, _set_aside(cache))
    dist.wait_for_everyone()
    if manifest_path.exists():
        manifest = read_manifest(manifest_path)
        if manifest.get("complete"):
            log.info("generation cache %s is complete (signature %s): reused, no model loaded", cache, sig)
            return {**manifest, "reused": True, "cache_dir": str(cache)}
    return None


def _generate_candidates(cfg, plan: GenerationPlan, tok, prompt_rows: list[dict], done: set, parts) -> int:
    """Generate every origin's candidates not yet cached (this process's share of them), appended
    to the cache batch by batch; returns how many were missing."""
    from ..pool import ModelPool, append_generations
    from ..prompts import tokenize_prompt

    prompts = [r["prompt"] for r in prompt_rows]
    prompt_ids = [tokenize_prompt(tok, p) for p in prompts]
    pool = ModelPool(cfg)
    todo_count = 0
    with parts.open() as out:
        for origin in origins_of(cfg):
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
                return candidate_row(r["id"], r["split"], origin, g, plan.signature)

            batches = pool.batches(plan.base if origin == "base" else plan.sft, plan.adapters, tok, prompts,
                                   prompt_ids, todo, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                   do_sample=sampling, temperature=cfg.temperature if sampling else 1.0,
                                   top_p=cfg.top_p, prefill=cfg.prefill, decode=cfg.decode, sample_seeds=seeds,
                                   desc=origin, progress=cfg.progress)
            append_generations(out, make_row, batches)
    del pool
    return todo_count


# --------------------------------------------------------------------------------------------
# Phase 2: judge
# --------------------------------------------------------------------------------------------
def judge_phase(cfg, explicit: set[str]) -> dict:
    """Phase 2: score the cached candidates, make and write the pairs and their statistics."""
    from ..provenance import set_seed

    set_seed(cfg.seed)
    t0 = time.time()
    cached = read_cache(cfg, explicit)
    log.info("judging the candidates of %s (signature %s): %d examples", cached.path, cached.signature,
             len(cached.prompt_rows))
    items = example_candidates(cfg, cached)  # (prompt row, fitted example, candidates)
    judge, judge_info = _judge(cfg, cached, items)
    for _, _, cands in items:
        for c in cands:
            c.score = combine(c.verifier, c.judge, cfg.judge_mode, cfg.judge_weight)
    kept_pairs, drops = choose_pairs(items, cfg)
    if judge is not None and cfg.output_mode == "rich" and cfg.judge_rationale_tokens:
        add_rationales(cfg, judge, kept_pairs)
    records = [pair_record(row, ex, pair, k, cfg) for row, ex, pair, k in kept_pairs]
    if any(r["split"] == "test" for r in records):  # never: load_data and cache_examples refuse test examples
        raise RecordError("a test example reached the pairs; refusing to write them")
    return _write_pairs(cfg, cached, items, records, kept_pairs, drops, judge_info, t0)


def _judge(cfg, cached, items) -> tuple[Judge | None, dict[str, Any]]:
    """The judge scores of every candidate, its verdicts cached per judge signature (none with
    --judge-mode verifiers); returns the judge and what the stats say about it."""
    judge_info: dict[str, Any] = {"mode": cfg.judge_mode}
    if cfg.judge_mode == "verifiers":
        return None, judge_info
    from ..modeling import load_tokenizer

    tok = load_tokenizer(cfg.judge_model, padding_side="left", trust_remote_code=cfg.trust_remote_code)
    jsig, jpayload = judge_signature(cfg, cached.signature, tok)
    jpath = cached.path / f"judge_{jsig}.jsonl"
    verdicts = read_verdicts(jpath)
    judge = Judge(load_judge(cfg), tok, cfg.judge_method, cfg.judge_batch_size)
    per_example = {row["id"]: judge_requests(cfg.judge_method, row["id"], ex, row["evidence"], cands)
                   for row, ex, cands in items}
    todo = [(ex_id, key, req) for ex_id, reqs in per_example.items() for key, req in reqs.items()
            if f"{ex_id}#{key}" not in verdicts]
    log.info("judge %s (%s): %d prompts cached, %d to score", cfg.judge_model, cfg.judge_method,
             sum(len(r) for r in per_example.values()) - len(todo), len(todo))
    t_judge = time.time()
    score_into(cfg, judge, jpath, jsig, todo, verdicts)
    bias = []
    for row, ex, cands in items:
        bias += apply_judge(judge, cfg.judge_method, cands,
                            {key: verdicts[f"{row['id']}#{key}"] for key in per_example[row["id"]]})
    if bias:  # P(first shown wins) - P(second shown wins): what showing both orders cancels
        judge_info["position_bias_mean"] = round(sum(bias) / len(bias), 4)
    judge_info.update(model=cfg.judge_model, method=cfg.judge_method, signature=jsig, payload=jpayload,
                      cache=str(jpath), scored_now=len(todo), judge_seconds=round(time.time() - t_judge, 1))
    return judge, judge_info


def _write_pairs(cfg, cached, items, records, kept_pairs, drops, judge_info: Mapping, t0: float) -> dict:
    """Write preferences_<signature>.jsonl and its .stats.json (with the run card); returns the stats."""
    from ..provenance import run_card

    payload = pairs_payload(cfg, cached.signature, judge_info.get("signature"))
    psig = signature_of(payload)
    out_dir = Path(cfg.output_dir)
    pairs_path = out_dir / f"preferences_{psig}.jsonl"
    stats_path = out_dir / f"preferences_{psig}.stats.json"
    if not records:
        raise RecordError(f"no pair has a gap >= --min-margin {cfg.min_margin} ({sum(drops.values())} dropped: "
                          f"{dict(count_by_reason(drops))}); lower --min-margin or check the candidates")
    write_jsonl(pairs_path, records, PREFERENCE)
    seal(pairs_path)   # train_rm / train_dpo refuse the pairs if a byte changes (records.check_seal)
    stats = pair_statistics(items, kept_pairs, drops, cfg)
    stats.update(files={"pairs": str(pairs_path), "stats": str(stats_path), "cache": str(cached.path)},
                 signature=psig, generation_signature=cached.signature, pairs_payload=payload,
                 judge={k: v for k, v in judge_info.items() if k != "payload"},
                 judge_seconds_total=round(time.time() - t0, 1))
    card = run_card("make_prefs.py --phase judge", to_dict(cfg),
                    {d["path"]: d["sha256"] for d in cached.manifest["data"]},
                    generation_manifest=str(cached.path / "manifest.json"))
    atomic_write_json(stats_path, {**stats, "run_card": card})
    return stats


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
