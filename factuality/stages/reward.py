"""Reward model: Bradley-Terry on preference pairs, anti-gaming penalties, AUC / calibration / probe report.

The reward of a response to a prompt (a rendered prompt holding the evidence, as make_prefs.py
writes pairs) is

    reward = learned score - sum_k weight_k * penalty_k(prompt, response)

The learned score is a head on the base model's final hidden state at the response's last token
(its end-of-turn token). By default the base is frozen and the head is a linear layer on
standardised features (the notebook's choice); `use_peft: true` trains LoRA on the base with
TRL's RewardTrainer instead. The penalties (factuality/penalties.py) read only the prompt and the
response, so the reward model scores new data without gold:

    from factuality.stages.reward import load_reward_model
    rm = load_reward_model("checkpoints/rm/best")
    rm.score(prompts, responses)          # list[float], penalised rewards

Training (frozen base). Features are computed once per (prompt, response), stopping at the last
hidden state of the model body (no vocabulary logits), and cached on disk under a key hashed from
the model, the data and the lengths, so epochs after the first (and later runs on the same pairs)
cost almost nothing. Responses that share a prompt share its forward pass: the prompt is run once
and each response continues from its key/value cache. The head is trained by a small loop over the
cached features rather than TRL's RewardTrainer, whose every step runs the base model: with the
base frozen that is one forward pass per sequence per epoch for nothing (bench/bench_rm.py). The
loop honours the RewardConfig options that mean something for it (learning_rate, batch sizes,
gradient_accumulation_steps, num_train_epochs / max_steps, warmup_steps, lr_scheduler_type,
weight_decay, adam_*, max_grad_norm, logging/eval/save steps, save_total_limit, seed,
center_rewards_coefficient). Loss, as TRL's: -log sigmoid(r_chosen - r_rejected [- margin]),
with r the penalised reward when `penalties_in_loss` (the head learns what the penalties miss).

Tokens. A sequence is tokens(prompt) + tokens(response)[:max_response_tokens - 1] + EOS. A prompt
longer than max_length - max_response_tokens keeps its last tokens (counted and logged); the
penalties always read the whole prompt text.

Validation (pairs of `split: val` examples only; never pairs of training examples), overall and
per pair kind:
- accuracy: share of pairs with r_chosen > r_rejected (a tie counts one half);
- roc_auc: sklearn's ROC-AUC with the chosen responses' scores as positives and the rejected
  responses' as negatives (the chance that a chosen response outscores a rejected one);
- ece / brier: of p = sigmoid(s x (r_chosen - r_rejected)) as the probability that the chosen
  response is preferred, each pair counted in both orders ((p, 1) and (1 - p, 0)); ECE with
  metrics.py's 10 equal-width bins. s = 1 for the reward model's own scores (BT log-odds); for a
  baseline whose score is not a log-odds (length, penalties only, verifier), s is fitted on the
  training pairs (one-parameter logistic regression).
Baselines: length only (response tokens), penalties only (-sum of weighted penalties), the
untrained head (the head at its seeded initialisation, no penalties), the trained head without
penalties, and the verifier score (metrics.score_example with the pair's gold fields).
Gaming probes: for each answerable held-out example (probe_data, default the val split), the
honest gold answer against each trick of PROBE_KINDS (factuality/perturb.py), scored with the
penalties on, off, and the penalties alone; the report gives the share of probes the honest
answer wins (strictly higher reward).

Files under output_dir: best/ (the best eval ROC-AUC; a reward model that `load_reward_model`
loads on its own) and final/, checkpoint-<step>/ (resumable state), training_history.json
(train_losses, train_loss_steps, eval_metrics with step, epoch, loss, roc_auc, accuracy, ece,
brier; best), rm_report.json and rm_report.md (metrics, baselines, per kind, probes),
reliability.png, training_curves.png, config.yaml (resolved, loadable with -c), run_card.json.
`--validate-only --checkpoint best` loads the saved model and writes validation.json / .md with
the same figures computed again, and whether they reproduce the saved ones.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from .. import dist
from ..cli import Stage
from ..config import ConfigError, LazySpec, Part, StageSpec, fields_of, to_dict
from ..generation import common_prefix_len
from ..metrics import ECE_BINS, _ece, answer_supported, score_example
from ..modeling import (
    ModelLoadError,
    ModelOptions,
    base_model_id,
    bnb_config,
    load_model,
    load_tokenizer,
    model_summary,
    pick_device,
    resolve_attn_implementation,
    resolve_dtype,
    resolve_model_path,
)
from ..paths import PREFS_DIR, PROCESSED_DIR, VAL_FILE
from ..penalties import (
    PENALTIES,
    PenaltyOptions,
    PromptFormatError,
    parse_prompt,
    penalty_matrix,
    weight_vector,
    weights_from,
)
from ..perturb import KINDS, check_kinds, perturb, perturbations
from ..prompts import (
    PromptTemplates,
    dump_output,
    fit_evidence,
    gold_output,
    render_prompt,
    tokenize_prompt,
)
from ..provenance import run_card, set_seed, write_run_card
from ..records import (
    PREFERENCE,
    SCHEMA_VERSION,
    Contract,
    RecordError,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fault_point,
    read_examples,
    read_jsonl,
    sha256_file,
    sha256_json,
    write_jsonl,
)
from ..training import (
    check_run_dir,
    clear_run_dir,
    lora_config,
    prepare_training_values,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKPOINT_CONFIG = "reward_model.json"
HEAD_WEIGHTS = "head.safetensors"
INIT_HEAD_WEIGHTS = "head_init.safetensors"
FEATURE_FORMAT = 1
PAIR_GLOB = "preferences_*.jsonl"
# the gaming probes: perturb.py kinds a policy could use to look grounded (report order)
PROBE_KINDS = ("cite_all", "unknown_id", "filler_padding", "overconfident_wrong", "cite_hard_negative",
               "refuse_answerable", "distractor_entity", "flipped_verdict")
# base-model-like prose (no JSON object, no citation) for synthetic pairs
PROSE_TEMPLATES = ("The answer is {a}.", "Based on the passages provided, the answer is {a}.",
                   "According to the evidence, {a}.", "{a}")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class RMOptions:
    """This suite's own reward-model options: the pairs, the probes, the feature cache, the head.
    Training options are TRL's RewardConfig fields, model options ModelOptions' fields and the
    penalty weights PenaltyOptions' fields."""

    pairs_path: str | None = field(default=None, metadata={
        "help": "preference pairs (make_prefs.py --phase judge output); default: the newest "
                "<prefs_dir>/preferences_*.jsonl"})
    prefs_dir: str = field(default=PREFS_DIR, metadata={"help": "where to look for the newest pairs file"})
    probe_data: str | None = field(default=VAL_FILE, metadata={
        "help": "held-out processed examples for the gaming probes; when the file is missing, the val pairs' own "
                "fields (evidence, support, answers) are used; empty or null: no probes"})
    max_probe_examples: int | None = field(default=None, metadata={
        "min": 1, "help": "use only the first N probe examples (null: all)"})
    prompts_dir: str | None = field(default=None, metadata={
        "help": "prompt templates (prompt_schema.py save) the pairs were rendered with; null or 'default': built-in"})
    validate_only: bool = field(default=False, metadata={
        "help": "load a saved reward model (--checkpoint) and recompute the report on the val pairs and probes"})
    checkpoint: str = field(default="best", metadata={
        "help": "with --validate-only: best, final (under output_dir) or the path of a saved reward model"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest checkpoint-* in output_dir (error if there is none)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing run in output_dir (only once the new run's inputs have been checked)"})
    feature_cache: bool = field(default=True, metadata={
        "help": "keep the frozen base's features on disk (keyed by model, data and lengths) and reuse them"})
    feature_cache_dir: str | None = field(default=None, metadata={
        "help": "where the feature cache lives (default: $FACTUALITY_CACHE/rm_features, i.e. "
                "~/.cache/factuality/rm_features)"})
    share_prompt_prefix: bool = field(default=True, metadata={
        "help": "run each prompt once and continue every response to it from its key/value cache "
                "(same features as full forward passes, a fraction of the compute)"})
    max_response_tokens: int = field(default=256, metadata={
        "min": 8, "help": "tokens kept of a response (with its end-of-turn token); the prompt gets max_length minus this"})
    head_hidden_size: int = field(default=0, metadata={
        "min": 0, "help": "0: a linear head on the standardised final hidden state; N: one hidden layer of N units"})
    use_margin: bool = field(default=False, metadata={
        "help": "subtract each pair's margin inside the loss (TRL's margin column): -log sigmoid(dr - margin)"})
    penalties_in_loss: bool = field(default=True, metadata={
        "help": "train on the penalised reward, so the head learns what the penalties miss (false: on the head alone)"})
    synthetic_pairs: bool = field(default=False, metadata={
        "help": "make the pairs from processed examples without a model (gold answer against labelled "
                "perturbations and prose), write them to pairs_path (default prefs/preferences_synthetic.jsonl) "
                "and train on them: for the demo and a first reward model before make_prefs.py"})
    synthetic_data_dir: str = field(default=PROCESSED_DIR, metadata={
        "help": "synthetic pairs: folder with train.jsonl and val.jsonl (build_data.py output)"})
    synthetic_train_pairs: int = field(default=150, metadata={"min": 1, "help": "synthetic pairs of train examples"})
    synthetic_val_pairs: int = field(default=50, metadata={"min": 1, "help": "synthetic pairs of val examples"})
    synthetic_pairs_per_example: int = field(default=2, metadata={
        "min": 1, "help": "synthetic pairs made from each example (kinds drawn at random among those that apply)"})
    augment_pairs: int = field(default=0, metadata={
        "min": 0, "help": "add up to N gold-against-edit training pairs (perturb.py edits of the gold answer, kinds "
                          "augment_kinds) of training examples in augment_data that no pair uses; never val pairs. "
                          "What no penalty can see (a refusal of an answerable question, an answer to an unanswerable "
                          "one) the head learns from pairs alone, and a make_prefs run over a few dozen prompts holds "
                          "few of them. Not with synthetic_pairs (those are such pairs already). 0: the pairs file alone"})
    augment_kinds: list[str] = field(default_factory=lambda: list(KINDS), metadata={
        "help": f"perturbation kinds of the augment pairs (drawn at random per example among those that apply), "
                f"from {', '.join(KINDS)}"})
    augment_data: str | None = field(default=None, metadata={
        "help": "processed examples the augment pairs are made from (default <synthetic_data_dir>/train.jsonl); "
                "only split: train examples are used"})
    plots: bool = field(default=True, metadata={"help": "write reliability.png and training_curves.png"})
    torch_threads: int | None = field(default=None, metadata={
        "min": 1, "help": "torch CPU threads (null: torch's default, one per core); on cores other processes share, 1 "
                          "avoids threads spin-waiting on each other (2-4x faster feature passes measured on 2 busy cores)"})
    config_path: str | None = field(default=None, metadata={"help": "set from -c", "cli": False})

    def validate(self) -> None:
        if self.prompts_dir in ("", "default"):
            self.prompts_dir = None
        if self.probe_data == "":
            self.probe_data = None
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; choose one")
        if self.validate_only and (self.resume or self.overwrite):
            raise ConfigError("--validate-only trains nothing; drop --resume / --overwrite")
        check_kinds(self.augment_kinds, "augment_kinds")
        if self.augment_pairs and not self.augment_kinds:
            raise ConfigError("augment_pairs > 0 needs at least one augment_kinds entry; list kinds or set augment_pairs: 0")


# Our recipe defaults for TRL's RewardConfig (TRL's assume a GPU and a trained base).
RM_TRAIN_DEFAULTS: dict[str, Any] = dict(
    output_dir="checkpoints/rm", max_length=2048, per_device_train_batch_size=16, per_device_eval_batch_size=32,
    learning_rate=1e-3, num_train_epochs=3.0, warmup_steps=0.1, weight_decay=0.01, lr_scheduler_type="linear",
    optim="adamw_torch", gradient_checkpointing=None, activation_checkpointing=False, logging_steps=10,
    logging_first_step=True, eval_steps=None, save_steps=200, save_total_limit=2, report_to="none", seed=42,
    center_rewards_coefficient=0.01,  # TRL's recommended value: pairs' rewards centred, so scores compare across prompts
)
RM_MODEL_DEFAULTS: dict[str, Any] = dict(use_peft=False, lora_task_type="SEQ_CLS")


def prepare_rm_values(values: dict[str, dict], explicit: set[str]) -> None:
    """SFT's derivations (mixed precision from dtype and hardware, CPU processes, tqdm, data_seed),
    less the SFT-only batching fields RewardConfig lacks; evaluation every eval_steps, else per epoch."""
    from trl import RewardConfig

    prepare_training_values(values, explicit)
    t = values["train"]
    known = set(fields_of(RewardConfig))
    for key in [k for k in t if k not in known]:
        del t[key]
    if "train_sampling_strategy" not in explicit:
        t["train_sampling_strategy"] = "random"
    if "eval_strategy" not in explicit:
        t["eval_strategy"] = "steps" if t.get("eval_steps") else "epoch"


def check_rm(cfg) -> None:
    m = cfg.train.max_length
    if m is None or m < 64:
        raise ConfigError(f"max_length ({m}) is too small for a prompt with evidence and a response; use >= 64")
    if cfg.run.max_response_tokens > m - 32:
        raise ConfigError(f"max_response_tokens ({cfg.run.max_response_tokens}) leaves fewer than 32 of max_length "
                          f"({m}) for the prompt; lower --max-response-tokens or raise --max-length")
    if cfg.model.use_peft and not cfg.model.lora_target_modules:
        raise ConfigError("lora_target_modules is empty; name at least one module (e.g. q_proj,v_proj)")


def _rm_spec():
    from trl import RewardConfig

    return StageSpec("train_rm", (
        Part("run", RMOptions, "pairs, probes, feature cache, head (ours)"),
        Part("penalties", PenaltyOptions, "anti-gaming penalties (ours; factuality/penalties.py)"),
        Part("model", ModelOptions, "base model, quantisation, LoRA option (TRL ModelConfig)", RM_MODEL_DEFAULTS),
        Part("train", RewardConfig, "training (TRL RewardConfig / transformers TrainingArguments)", RM_TRAIN_DEFAULTS),
    ), prepare=prepare_rm_values, check=check_rm)


RM_SPEC = LazySpec(_rm_spec)


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------
def _pair_contract(templates: PromptTemplates) -> Contract:
    """records.PREFERENCE plus the cross-field rules the reward model relies on (a RecordError
    `file:line: field: problem` each): no test pairs, a prompt in this suite's format, and the
    pair's evidence ids equal to the chunks its prompt shows."""

    def check(rec: dict) -> str | None:
        if rec["split"] == "test":
            return "split: 'test' examples never become pairs (they are held out for evaluate_sft.py); rebuild the pairs"
        try:
            view = parse_prompt(rec["prompt"], templates)
        except PromptFormatError as e:
            return f"prompt: {e}"
        shown = [c["id"] for c in rec["evidence"]]
        if view.ids != shown:
            return (f"evidence: ids {shown} differ from the chunks the prompt shows {view.ids}; the pair's evidence "
                    "must be the evidence rendered into its prompt")
        return None

    return Contract(PREFERENCE.name, PREFERENCE.schema, check, PREFERENCE.unique, PREFERENCE.allow_empty,
                    PREFERENCE.expected)


def newest_pairs_file(prefs_dir: str | Path) -> Path:
    d = Path(prefs_dir)
    found = sorted(d.glob(PAIR_GLOB), key=lambda p: (p.stat().st_mtime, p.name)) if d.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"{d}/{PAIR_GLOB}: no preference pairs found; run `python make_prefs.py --phase judge ...` first, pass "
            f"--pairs-path FILE, or --synthetic-pairs true to make pairs from data/processed without a model")
    return found[-1]


def read_pairs(path: str | Path, templates: PromptTemplates | None = None) -> tuple[list[dict], list[dict]]:
    """(train pairs, val pairs) of a PREFERENCE file, each checked (`path:line: field: problem`); the
    same example in both splits is refused, and a file without val pairs is an error (nothing to
    validate on)."""
    path = Path(path)
    rows = read_jsonl(path, _pair_contract(templates or PromptTemplates()))
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    both = {r["example_id"] for r in train} & {r["example_id"] for r in val}
    if both:
        raise RecordError(f"{path}: example(s) {sorted(both)[:3]} have pairs in both train and val; the held-out pairs "
                          "must come from other examples (rebuild the pairs)")
    if not train:
        raise RecordError(f"{path}: no pairs with split 'train'; make pairs of training examples (make_prefs.py "
                          "--data-path data/processed/train.jsonl)")
    if not val:
        raise RecordError(f"{path}: no pairs with split 'val': the reward model is validated on pairs of held-out "
                          "examples; make pairs of data/processed/val.jsonl too (make_prefs.py --data-path ...)")
    return train, val


def example_of_pair(pair: Mapping, templates: PromptTemplates | None = None) -> dict:
    """The example fields a pair carries, in the processed-example shape score_example and perturb read."""
    view = parse_prompt(pair["prompt"], templates or PromptTemplates())
    return {"id": pair["example_id"], "source": pair["source"], "split": pair["split"], "question": view.question,
            "answers": list(pair.get("answers") or []), "answerable": bool(pair["answerable"]),
            "evidence": [{"id": c["id"], "title": c.get("title", ""), "text": c["text"]} for c in pair["evidence"]],
            "support": [{"chunk_id": i} for i in pair["support_ids"]],
            "hard_negatives": list(pair.get("hard_negative_ids") or [])}


def verifier_score(example: Mapping, response: str) -> float:
    """A verifier's score of a response (needs gold), in [0, 1]: the mean of format validity and,
    on an answerable example, not hallucinated, citation F1 and (when the gold answers are known)
    correct-and-grounded; on an unanswerable example, refusal. metrics.score_example's columns."""
    s = score_example(example, raw_output=response)
    parts = [s["format_validity"]]
    if example["answerable"]:
        answered = s["hallucination_rate"] is not None
        parts += [1 - s["hallucination_rate"], s["citation_f1"] or 0.0] if answered else [0.0, 0.0]
        if example.get("answers"):
            parts.append(s["correct_grounded"] or 0.0)
    else:
        parts.append(s["refusal_recall"])
    return float(sum(parts) / len(parts))


def _prompt_budget(max_length: int, max_response_tokens: int) -> int:
    return max_length - max_response_tokens


def honest_output(example: Mapping) -> dict | None:
    """The gold answer object with the first gold alias its cited support chunks support (NQ's
    answers[0] is not always the alias the support passage holds); the refusal when unanswerable;
    None when no alias is supported by the support chunks (no honest, cited answer to compare)."""
    gold = gold_output(dict(example))
    if not example["answerable"]:
        return gold
    cited = [c for c in example["evidence"] if c["id"] in gold["citations"]]
    for alias in example["answers"]:
        if answer_supported(alias, cited, example.get("source"), question=example.get("question")):
            return dict(gold, answer=alias)
    return None


def fitted_prompt(example: Mapping, tokenizer, templates: PromptTemplates, max_prompt_tokens: int) -> tuple[str, dict]:
    """(prompt, example with the evidence that fits) for an example rendered within the prompt budget."""
    fit = fit_evidence(dict(example), tokenizer, max_prompt_tokens, templates)
    kept = {c["id"] for c in fit.evidence}
    ex = dict(example, evidence=fit.evidence, hard_negatives=[i for i in example.get("hard_negatives", []) if i in kept])
    return render_prompt(ex, tokenizer, templates), ex


def _prose(example: Mapping, rng: random.Random) -> str:
    from ..perturb import distractor_entity

    if example["answerable"]:
        a = example["answers"][0]
    else:
        a = distractor_entity({**example, "support": []}, rng) or example["evidence"][0]["title"] or "unknown"
    return rng.choice(PROSE_TEMPLATES).format(a=a)


def synthetic_pairs(examples: Sequence[Mapping], tokenizer, n_pairs: int, per_example: int = 2, seed: int = 0,
                    templates: PromptTemplates | None = None, max_prompt_tokens: int = 1536,
                    kinds: Sequence[str] | None = None, tag: str = "") -> list[dict]:
    """PREFERENCE pairs made without a model: each example's gold answer (chosen) against labelled
    perturbations of it (perturb.py) and against base-model-like prose, `per_example` kinds drawn
    at random per example, until `n_pairs`. Margin = verifier score difference. `kinds`: only
    these perturbation kinds, no prose; `tag` goes into the pair ids (<example id>#<tag><k>)."""
    templates = templates or PromptTemplates()
    rng = random.Random(seed)
    order = list(examples)
    rng.shuffle(order)
    out: list[dict] = []
    for ex in order:
        if len(out) >= n_pairs:
            break
        prompt, shown = fitted_prompt(ex, tokenizer, templates, max_prompt_tokens)
        gold = honest_output(shown)
        if gold is None:
            continue
        cands = [(f"perturb:{k}", f"perturb:{k}", dump_output(b)) for k, b in perturbations(shown, gold, kinds, seed)]
        if kinds is None:
            cands.append(("synthetic:prose", "prose", _prose(shown, random.Random(f"{seed}:{ex['id']}"))))
        if not cands:
            continue
        chosen = dump_output(gold)
        picked = rng.sample(cands, min(per_example, len(cands)))
        for k, (kind, origin, rejected) in enumerate(picked):
            if len(out) >= n_pairs:
                break
            c, r = verifier_score(shown, chosen), verifier_score(shown, rejected)
            out.append({
                "schema_version": SCHEMA_VERSION, "id": f"{ex['id']}#{tag}{k}", "example_id": ex["id"], "split": ex["split"],
                "source": ex["source"], "prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": c - r,
                "chosen_score": c, "rejected_score": r, "kind": kind, "chosen_origin": "gold", "rejected_origin": origin,
                "evidence": [{"id": ch["id"], "title": ch.get("title", ""), "text": ch["text"]} for ch in shown["evidence"]],
                "support_ids": list(dict.fromkeys(s["chunk_id"] for s in shown["support"])),
                "hard_negative_ids": list(shown.get("hard_negatives", [])), "answerable": bool(shown["answerable"]),
                "answers": list(shown["answers"])})
    return out


def write_synthetic_pairs(cfg, tokenizer, templates: PromptTemplates) -> Path:
    """Synthetic pairs of <synthetic_data_dir>/{train,val}.jsonl written to pairs_path (rewritten only
    when they differ, so an unchanged file keeps its date and hash)."""
    d = Path(cfg.run.synthetic_data_dir)
    budget = _prompt_budget(cfg.train.max_length, cfg.run.max_response_tokens)
    rows = []
    for split, n in (("train", cfg.run.synthetic_train_pairs), ("val", cfg.run.synthetic_val_pairs)):
        path = d / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; synthetic pairs are made from build_data.py's output "
                                    f"(run `python build_data.py`) or set --synthetic-data-dir")
        rows += synthetic_pairs(read_examples(path), tokenizer, n, cfg.run.synthetic_pairs_per_example,
                                cfg.train.seed, templates, budget)
    out = Path(cfg.run.pairs_path or Path(cfg.run.prefs_dir) / "preferences_synthetic.jsonl")
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        write_jsonl(out, rows, PREFERENCE)
    log.info("synthetic pairs: %d train + %d val -> %s", sum(r["split"] == "train" for r in rows),
             sum(r["split"] == "val" for r in rows), out)
    return out


def augment_pairs(cfg, tokenizer, templates: PromptTemplates, used_ids: set[str]) -> tuple[list[dict], str | None]:
    """(pairs, file) of the augment_pairs option: gold against one of augment_kinds, from the split:
    train examples of augment_data (default <synthetic_data_dir>/train.jsonl) that `used_ids` (the
    examples of the pairs file and the probes) do not hold; ids <example id>#aug<k>."""
    n = cfg.run.augment_pairs
    if not n:
        return [], None
    if cfg.run.synthetic_pairs:
        log.info("augment_pairs: not used with synthetic_pairs (those are gold-against-edit pairs already; "
                 "synthetic_train_pairs sets how many)")
        return [], None
    path = Path(cfg.run.augment_data or Path(cfg.run.synthetic_data_dir) / "train.jsonl")
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; augment_pairs makes pairs of build_data.py's training examples "
                                "(run `python build_data.py`), set --augment-data, or set --augment-pairs 0")
    exs = [e for e in read_examples(path) if e["split"] == "train" and e["id"] not in used_ids]
    budget = _prompt_budget(cfg.train.max_length, cfg.run.max_response_tokens)
    rows = synthetic_pairs(exs, tokenizer, n, cfg.run.synthetic_pairs_per_example, cfg.train.seed, templates, budget,
                           kinds=cfg.run.augment_kinds, tag="aug")
    counts = _count(rows)
    log.info("augment pairs: %d of %d unused training examples of %s (%s)", len(rows), len(exs), path,
             ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no edit applies")
    return rows, str(path)


# --------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------
@dataclass
class Probe:
    example_id: str
    kind: str           # "honest" or a PROBE_KINDS trick
    prompt: str
    response: str
    source: str = ""    # the example's dataset (the report splits each trick by it)


def probe_examples(cfg, val_pairs: Sequence[Mapping], tokenizer, templates: PromptTemplates,
                   train_ids: set[str]) -> tuple[list[tuple[str, dict]], str]:
    """(prompt, example) of each probe example and where they came from. From probe_data when the
    file exists (examples of training pairs are left out), else from the val pairs' own fields."""
    if not cfg.run.probe_data:
        return [], "none"
    path = Path(cfg.run.probe_data)
    out: list[tuple[str, dict]] = []
    if path.exists():
        budget = _prompt_budget(cfg.train.max_length, cfg.run.max_response_tokens)
        exs = [e for e in read_examples(path) if e["id"] not in train_ids]
        for ex in exs[:cfg.run.max_probe_examples] if cfg.run.max_probe_examples else exs:
            out.append(fitted_prompt(ex, tokenizer, templates, budget))
        where = str(path)
    else:
        seen: dict[str, tuple[str, dict]] = {}
        for pair in val_pairs:
            if pair["example_id"] not in seen and pair.get("answers"):
                seen[pair["example_id"]] = (pair["prompt"], example_of_pair(pair, templates))
        out = list(seen.values())[:cfg.run.max_probe_examples or None]
        where = f"val pairs (no {path})"
    return out, where


def make_probes(examples: Sequence[tuple[str, dict]], seed: int = 0) -> list[Probe]:
    """The honest answer (`honest_output`) and each applicable trick, per answerable example whose
    support chunks hold a gold alias."""
    probes: list[Probe] = []
    for prompt, ex in examples:
        if not ex["answerable"] or not ex["support"] or not ex.get("answers"):
            continue
        honest = honest_output(ex)
        if honest is None:
            continue
        rng = random.Random(f"{seed}:{ex['id']}")
        probes.append(Probe(ex["id"], "honest", prompt, dump_output(honest), ex.get("source", "")))
        for kind in PROBE_KINDS:
            bad = perturb(ex, honest, kind, rng)
            if bad is not None:
                probes.append(Probe(ex["id"], kind, prompt, dump_output(bad), ex.get("source", "")))
    return probes


def probe_table(probes: Sequence[Probe], scores: Mapping[str, np.ndarray]) -> dict:
    """Per trick: n and the share of probes where the honest answer scores strictly higher, for each
    score variant (e.g. with_penalties, without_penalties, penalties_only), overall and per source."""
    honest = {p.example_id: i for i, p in enumerate(probes) if p.kind == "honest"}

    def shares(idx: list[tuple[int, int]]) -> dict:
        row: dict[str, Any] = {"n": len(idx)}
        for name, s in scores.items():
            row[f"honest_wins_{name}"] = float(np.mean([s[h] > s[t] for h, t in idx])) if idx else None
        return row

    table: dict[str, dict] = {}
    for kind in PROBE_KINDS:
        idx = [(honest[p.example_id], i) for i, p in enumerate(probes) if p.kind == kind]
        row = shares(idx)
        sources = sorted({probes[i].source for _, i in idx})
        if len(sources) > 1:
            row["by_source"] = {src: shares([(h, i) for h, i in idx if probes[i].source == src]) for src in sources}
        table[kind] = row
    return table


# --------------------------------------------------------------------------------------------
# Sequences, tokens, features
# --------------------------------------------------------------------------------------------
class Sequences:
    """Unique (prompt, response) texts, in order of first appearance; `add` returns the row."""

    def __init__(self):
        self.prompts: list[str] = []
        self.responses: list[str] = []
        self._row: dict[tuple[str, str], int] = {}

    def add(self, prompt: str, response: str) -> int:
        key = (prompt, response)
        if key not in self._row:
            self._row[key] = len(self.prompts)
            self.prompts.append(prompt)
            self.responses.append(response)
        return self._row[key]

    def __len__(self) -> int:
        return len(self.prompts)

    def digest(self) -> str:
        return sha256_json([self.prompts, self.responses])


@dataclass
class PairIndex:
    """Pairs as rows of a Sequences table."""

    chosen: np.ndarray
    rejected: np.ndarray
    margin: np.ndarray
    kinds: list[str]


def index_pairs(pairs: Sequence[Mapping], seqs: Sequences) -> PairIndex:
    c = [seqs.add(p["prompt"], p["chosen"]) for p in pairs]
    r = [seqs.add(p["prompt"], p["rejected"]) for p in pairs]
    return PairIndex(np.array(c, dtype=np.int64), np.array(r, dtype=np.int64),
                     np.array([float(p["margin"]) for p in pairs]), [p["kind"] for p in pairs])


class Tokens:
    """prompt ids + response ids (+ EOS) of each sequence, the prompt kept to its budget."""

    def __init__(self, tokenizer, max_length: int, max_response_tokens: int):
        self.tok, self.max_length, self.max_response_tokens = tokenizer, max_length, max_response_tokens
        self.prompt_budget = _prompt_budget(max_length, max_response_tokens)
        self.truncated_prompts = 0
        self.truncated_responses = 0
        self._prompt_cache: dict[str, list[int]] = {}

    def prompt(self, text: str) -> list[int]:
        ids = self._prompt_cache.get(text)
        if ids is None:
            ids = tokenize_prompt(self.tok, text)
            if len(ids) > self.prompt_budget:
                self.truncated_prompts += 1
                ids = ids[-self.prompt_budget:]
            self._prompt_cache[text] = ids
        return ids

    def response(self, text: str) -> list[int]:
        eos = self.tok.eos_token_id
        ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
        if eos is not None and ids and ids[-1] == eos:
            ids = ids[:-1]
        if len(ids) > self.max_response_tokens - 1:
            self.truncated_responses += 1
            ids = ids[: self.max_response_tokens - 1]
        return ids + ([eos] if eos is not None else [])

    def full(self, prompt: str, response: str) -> list[int]:
        return self.prompt(prompt) + self.response(response)


def load_body(opts: ModelOptions):
    """The base model's body (decoder stack and final norm: AutoModel's part of the causal LM),
    frozen, in eval mode, on this process's device. Its forward stops at the last hidden state;
    the LM head is dropped, so no vocabulary logits are ever computed."""
    model = load_model(opts)
    body = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, model.base_model_prefix)
    if hasattr(model, "lm_head"):
        model.lm_head = None
    body.requires_grad_(False)
    body.eval()
    if not (opts.load_in_4bit or opts.load_in_8bit):
        body.to(pick_device())
    return body


def _device_of(module):
    return next(module.parameters()).device


def extract_features(body, tokens: Tokens, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8,
                     share_prompt_prefix: bool = True, desc: str = "features", progress: bool | None = None) -> np.ndarray:
    """(N, hidden) float32: the body's final hidden state at each sequence's last token.

    share_prompt_prefix: the tokens every prompt starts with (system text, chat-template header) run
    once; each prompt continues from a copy of that key/value cache (batch 1), and its responses
    continue from copies of the prompt's cache, right-padded (causal attention never lets a real
    token see the padding after it). Otherwise: full sequences, right-padded batches."""
    import torch
    from tqdm.auto import tqdm

    n = len(prompts)
    device = _device_of(body)
    pad = tokens.tok.pad_token_id if tokens.tok.pad_token_id is not None else 0
    hidden = body.config.get_text_config().hidden_size if hasattr(body.config, "get_text_config") else body.config.hidden_size
    out = np.zeros((n, hidden), dtype=np.float32)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=n, desc=desc, disable=not progress or n == 0, leave=False)

    def run_batch(rows: list[int], seqs: list[list[int]], cache=None):
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        ids = ids.to(device)
        if cache is None:
            mask = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long().to(device)
            h = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            h = body(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in seqs], device=h.device)
        out[rows] = h[torch.arange(len(seqs), device=h.device), last].float().cpu().numpy()
        bar.update(len(rows))

    with torch.no_grad():
        if not share_prompt_prefix:
            order = sorted(range(n), key=lambda i: len(tokens.full(prompts[i], responses[i])))
            for b in range(0, n, batch_size):
                rows = order[b:b + batch_size]
                run_batch(rows, [tokens.full(prompts[i], responses[i]) for i in rows])
        else:
            groups: dict[str, list[int]] = {}
            for i, p in enumerate(prompts):
                groups.setdefault(p, []).append(i)
            ids_of = {p: tokens.prompt(p) for p in groups}
            # the head every prompt shares, run once; each prompt keeps >= 2 tokens of its own
            shared = min(common_prefix_len(list(ids_of.values())), min(map(len, ids_of.values())) - 2) \
                if len(groups) > 1 else 0
            root = None
            if shared >= 8:
                first = next(iter(ids_of.values()))
                root = body(input_ids=torch.tensor([first[:shared]], device=device), use_cache=True).past_key_values
            else:
                shared = 0
            for p, rows in groups.items():
                pids = ids_of[p]
                if len(pids) < 2:  # nothing to share: run whole
                    for b in range(0, len(rows), batch_size):
                        run_batch(rows[b:b + batch_size], [tokens.full(p, responses[i]) for i in rows[b:b + batch_size]])
                    continue
                # the prompt's last token goes with the responses, so every response step has a query
                prefix = body(input_ids=torch.tensor([pids[shared:-1]], device=device), use_cache=True,
                              past_key_values=copy.deepcopy(root) if root is not None else None).past_key_values
                for b in range(0, len(rows), batch_size):
                    chunk = rows[b:b + batch_size]
                    cache = copy.deepcopy(prefix)
                    if len(chunk) > 1:
                        cache.batch_repeat_interleave(len(chunk))
                    run_batch(chunk, [pids[-1:] + tokens.response(responses[i]) for i in chunk], cache)
    bar.close()
    return out


def model_key(opts: ModelOptions) -> dict:
    """What determines a frozen base's features: the model files (or hub name) and how it is loaded."""
    from ..pool import fingerprint_hash, model_fingerprint

    try:
        path = resolve_model_path(opts.model_name_or_path)
    except ModelLoadError:
        path = opts.model_name_or_path
    fp = model_fingerprint(path)
    if list(fp) == ["name"]:  # a hub id: its cached snapshot names the revision
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(path), "config.json")
            fp["snapshot"] = str(Path(cached).parent.name) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - no hub cache: the name alone
            pass
    return {"model": base_model_id(opts.model_name_or_path), "files": fingerprint_hash(fp), "dtype": str(opts.dtype),
            "load_in_4bit": bool(opts.load_in_4bit), "load_in_8bit": bool(opts.load_in_8bit),
            "bnb_4bit_quant_type": opts.bnb_4bit_quant_type if opts.load_in_4bit else None}


def feature_cache_root(cfg) -> Path:
    from ..modeling import cache_dir

    return Path(cfg.run.feature_cache_dir) if cfg.run.feature_cache_dir else cache_dir() / "rm_features"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def cached_features(body, tokens: Tokens, seqs: Sequences, key_payload: Mapping, cache_root: Path | None,
                    batch_size: int, share_prompt_prefix: bool = True, shard_rows: int = 256,
                    desc: str = "features") -> tuple[np.ndarray, dict]:
    """Features of every sequence, from the disk cache `cache_root/<key>/` when it has them.

    The key is the sha256 of `key_payload` (model, lengths) and the sequences' texts. Rows are
    computed in shards of `shard_rows`, each written atomically as it completes, so a killed
    feature pass resumes at the first missing shard; a complete pass is joined into
    features.npy with a meta.json. `cache_root=None`: computed in memory, nothing written."""
    payload = {"format": FEATURE_FORMAT, **key_payload, "data": seqs.digest(), "rows": len(seqs)}
    key = sha256_json(payload)[:32]
    info = {"key": key, "rows": len(seqs), "hit": False, "computed_rows": 0, "seconds": 0.0}
    t0 = time.time()
    if cache_root is None:
        feats = extract_features(body, tokens, seqs.prompts, seqs.responses, batch_size, share_prompt_prefix, desc)
        info.update(computed_rows=len(seqs), seconds=round(time.time() - t0, 2))
        return feats, info
    d = Path(cache_root) / key
    final, meta = d / "features.npy", d / "meta.json"
    if final.exists() and meta.exists():
        feats = np.load(final, allow_pickle=False)
        if feats.shape[0] == len(seqs):
            info.update(hit=True, path=str(d), seconds=round(time.time() - t0, 2))
            return feats, info
    d.mkdir(parents=True, exist_ok=True)
    parts: list[np.ndarray] = []
    start = 0
    while start < len(seqs):
        end = min(start + shard_rows, len(seqs))
        shard = d / f"rows-{start:09d}-{end:09d}.npy"
        if shard.exists():
            parts.append(np.load(shard, allow_pickle=False))
        else:
            arr = extract_features(body, tokens, seqs.prompts[start:end], seqs.responses[start:end], batch_size,
                                   share_prompt_prefix, f"{desc} {start}-{end}/{len(seqs)}")
            _save_npy(shard, arr)
            fault_point(f"rm:features:{end}")
            parts.append(arr)
            info["computed_rows"] += end - start
        start = end
    feats = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    _save_npy(final, feats)
    atomic_write_json(meta, payload)
    for shard in d.glob("rows-*.npy"):
        shard.unlink()
    info.update(path=str(d), seconds=round(time.time() - t0, 2))
    return feats, info


# --------------------------------------------------------------------------------------------
# Head, loss
# --------------------------------------------------------------------------------------------
def _torch_head_class():
    import torch
    from torch import nn

    class RewardHead(nn.Module):
        """Score = MLP or linear map of the standardised final hidden state (mean / scale from the
        training features, kept as buffers so a saved head carries them)."""

        def __init__(self, dim: int, hidden: int = 0):
            super().__init__()
            self.dim, self.hidden = dim, hidden
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("scale", torch.ones(dim))
            self.net = nn.Linear(dim, 1) if hidden == 0 else nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

        def standardise_from(self, feats) -> None:
            x = torch.as_tensor(feats, dtype=torch.float32)
            self.mean.copy_(x.mean(0))
            self.scale.copy_(x.std(0, unbiased=False).clamp_min(1e-6))

        def forward(self, h):
            return self.net((h - self.mean) / self.scale).squeeze(-1)

    return RewardHead


def new_head(dim: int, hidden: int, seed: int, train_feats=None):
    """A freshly initialised head (seeded), standardised on `train_feats` when given."""
    import torch

    RewardHead = _torch_head_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = RewardHead(dim, hidden)
    if train_feats is not None:
        head.standardise_from(train_feats)
    return head


def bt_loss(r_chosen, r_rejected, margin=None):
    """Bradley-Terry loss, as TRL's RewardTrainer: mean of -log sigmoid(r_c - r_r [- margin])."""
    import torch

    d = r_chosen - r_rejected
    if margin is not None:
        d = d - margin
    return -torch.nn.functional.logsigmoid(d).mean()


def head_scores(head, feats) -> np.ndarray:
    import torch

    with torch.no_grad():
        return head(torch.as_tensor(feats, dtype=torch.float32)).double().numpy()


# --------------------------------------------------------------------------------------------
# Pair metrics
# --------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def calibration_points(d: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(probability, outcome) of each pair in both orders: (sigmoid(s d), 1) and (1 - sigmoid(s d), 0)."""
    p = _sigmoid(scale * np.asarray(d, dtype=np.float64))
    return np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])


def expected_calibration_error(prob: np.ndarray, outcome: np.ndarray) -> float:
    """ECE with metrics.py's bins (one definition of ECE in the suite)."""
    n = len(prob)
    return float(_ece(np.ones((1, n)), np.asarray(prob, float), np.asarray(outcome, float), np.ones(n, bool))[0])


def fit_scale(d: np.ndarray) -> float:
    """s minimising the logistic loss of sigmoid(s d) over pairs in both orders (no intercept)."""
    d = np.asarray(d, dtype=np.float64)
    if not len(d) or not np.any(d):
        return 1.0
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([d, -d])[:, None]
    y = np.concatenate([np.ones(len(d)), np.zeros(len(d))])
    lr = LogisticRegression(fit_intercept=False, C=1e4, max_iter=1000)
    lr.fit(x, y)
    return float(lr.coef_[0, 0])


def pair_metrics(r_chosen: np.ndarray, r_rejected: np.ndarray, scale: float = 1.0) -> dict:
    """accuracy, roc_auc, ece, brier of scores on pairs (definitions: module docstring)."""
    from sklearn.metrics import roc_auc_score

    c, r = np.asarray(r_chosen, float), np.asarray(r_rejected, float)
    n = len(c)
    if n == 0:
        return {"n": 0, "roc_auc": None, "accuracy": None, "ece": None, "brier": None}
    d = c - r
    prob, outcome = calibration_points(d, scale)
    auc = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[c, r])
    return {"n": n, "roc_auc": float(auc), "accuracy": float(np.mean((d > 0) + 0.5 * (d == 0))),
            "ece": expected_calibration_error(prob, outcome), "brier": float(np.mean((prob - outcome) ** 2)),
            "mean_reward_gap": float(d.mean())}


def metrics_by_kind(scores: np.ndarray, pairs: PairIndex, scale: float = 1.0) -> dict:
    """{"overall": pair_metrics, "by_kind": {kind: pair_metrics}} of per-sequence scores on indexed pairs."""
    c, r = scores[pairs.chosen], scores[pairs.rejected]
    kinds = np.array(pairs.kinds)
    out = {"overall": pair_metrics(c, r, scale), "by_kind": {}}
    for k in sorted(set(pairs.kinds)):
        m = kinds == k
        out["by_kind"][k] = pair_metrics(c[m], r[m], scale)
    return out


def reliability_bins(d: np.ndarray, scale: float = 1.0) -> list[dict]:
    prob, outcome = calibration_points(d, scale)
    bins = np.minimum((prob * ECE_BINS).astype(int), ECE_BINS - 1)
    out = []
    for b in range(ECE_BINS):
        m = bins == b
        out.append({"lo": b / ECE_BINS, "hi": (b + 1) / ECE_BINS, "n": int(m.sum()),
                    "mean_prob": float(prob[m].mean()) if m.any() else None,
                    "frequency": float(outcome[m].mean()) if m.any() else None})
    return out


# --------------------------------------------------------------------------------------------
# The reward model: load, score, save
# --------------------------------------------------------------------------------------------
class RewardModel:
    """A trained reward model: `score(prompts, responses)` gives the penalised rewards.

    kind "head": the frozen base's body plus a head on its final hidden state (features are
    computed as in training, prompts shared); kind "lora": a sequence-classification model with a
    LoRA adapter (TRL's RewardTrainer). `learned_scores` and `penalties` give the two parts."""

    def __init__(self, config: Mapping, tokenizer, head=None, body=None, seqcls=None, init_head=None):
        self.config = dict(config)
        self.tokenizer, self.head, self.body, self.seqcls, self.init_head = tokenizer, head, body, seqcls, init_head
        self.penalty_options = weights_from(self.config["penalties"])
        self.templates = PromptTemplates(**self.config["templates"]) if self.config.get("templates") else PromptTemplates()
        self.tokens = Tokens(tokenizer, self.config["max_length"], self.config["max_response_tokens"])
        self.batch_size = int(self.config.get("batch_size", 8))

    @property
    def kind(self) -> str:
        return self.config["kind"]

    def _check(self, prompts, responses) -> None:
        if isinstance(prompts, str) or isinstance(responses, str):
            raise TypeError("score takes lists: score([prompt, ...], [response, ...])")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")

    def features(self, prompts: Sequence[str], responses: Sequence[str], progress: bool | None = None) -> np.ndarray:
        return extract_features(self.body, self.tokens, list(prompts), list(responses), self.batch_size,
                                self.config.get("share_prompt_prefix", True), "scoring", progress)

    def learned_scores(self, prompts: Sequence[str], responses: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """The learned part of the reward (no penalties), one float64 per response."""
        self._check(prompts, responses)
        if not len(prompts):
            return np.zeros(0)
        if self.kind == "head":
            return head_scores(self.head, self.features(prompts, responses, progress))
        return seqcls_scores(self.seqcls, self.tokens, list(prompts), list(responses), self.batch_size)

    def penalties(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(N, 5) penalties in penalties.PENALTIES order, each in [0, 1]."""
        self._check(prompts, responses)
        return penalty_matrix(prompts, responses, self.penalty_options, self.templates)

    def penalty_totals(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.penalties(prompts, responses) @ weight_vector(self.penalty_options)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Penalised rewards: learned score - sum of weighted penalties, one per (prompt, response)."""
        return [float(x) for x in self.learned_scores(prompts, responses) - self.penalty_totals(prompts, responses)]

    def score_details(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict]:
        learned = self.learned_scores(prompts, responses)
        pens = self.penalties(prompts, responses)
        w = weight_vector(self.penalty_options)
        return [{"reward": float(s - p @ w), "learned": float(s), "penalty": float(p @ w),
                 "penalties": dict(zip(PENALTIES, map(float, p)))} for s, p in zip(learned, pens)]


def seqcls_scores(model, tokens: Tokens, prompts: list[str], responses: list[str], batch_size: int) -> np.ndarray:
    """Scores of a sequence-classification reward model (the LoRA option) on full sequences."""
    import torch

    device = _device_of(model)
    pad = tokens.tok.pad_token_id
    out = np.zeros(len(prompts))
    seqs = [tokens.full(p, r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            width = max(len(seqs[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                ids[j, :len(seqs[i])] = torch.tensor(seqs[i])
                mask[j, :len(seqs[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[rows] = logits.squeeze(-1).float().cpu().numpy()
    model.train(was_training)
    return out


def _checkpoint_config(cfg, kind: str, templates: PromptTemplates, hidden_size: int | None = None) -> dict:
    m = cfg.model
    return {"format": CHECKPOINT_FORMAT, "kind": kind, "base_model": base_model_id(m.model_name_or_path),
            "loaded_from": m.model_name_or_path, "dtype": m.dtype, "attn_implementation": m.attn_implementation,
            "load_in_4bit": bool(m.load_in_4bit), "load_in_8bit": bool(m.load_in_8bit),
            "bnb_4bit_quant_type": m.bnb_4bit_quant_type, "trust_remote_code": bool(m.trust_remote_code),
            "max_length": cfg.train.max_length, "max_response_tokens": cfg.run.max_response_tokens,
            "share_prompt_prefix": cfg.run.share_prompt_prefix, "batch_size": cfg.train.per_device_eval_batch_size,
            "head": {"hidden": cfg.run.head_hidden_size, "dim": hidden_size, "pooling": "last token (end of turn)"},
            "penalties": asdict(cfg.penalties), "templates": asdict(templates),
            "reward": "learned score - sum(weight x penalty)"}


def save_head_checkpoint(path: Path, config: Mapping, head, init_head=None, metrics: Mapping | None = None) -> None:
    """A 'head' reward model: reward_model.json + head.safetensors (+ the untrained head, + metrics), as one set."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / HEAD_WEIGHTS))
        if init_head is not None:
            save_file({k: v.contiguous() for k, v in init_head.state_dict().items()}, str(tmp / INIT_HEAD_WEIGHTS))
        atomic_write_json(tmp / CHECKPOINT_CONFIG, dict(config))
        if metrics is not None:
            atomic_write_json(tmp / "metrics.json", dict(metrics))


def _model_options_from(config: Mapping) -> ModelOptions:
    return ModelOptions(model_name_or_path=config["base_model"], dtype=config["dtype"],
                        attn_implementation=config["attn_implementation"], load_in_4bit=config["load_in_4bit"],
                        load_in_8bit=config["load_in_8bit"], bnb_4bit_quant_type=config["bnb_4bit_quant_type"],
                        trust_remote_code=config["trust_remote_code"])


def read_checkpoint_config(path: str | Path) -> dict:
    p = Path(path) / CHECKPOINT_CONFIG
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found; {Path(path)} is not a saved reward model (train_rm.py writes "
                                f"<output_dir>/best and <output_dir>/final)")
    config = json.loads(p.read_text(encoding="utf-8"))
    if config.get("format") != CHECKPOINT_FORMAT or config.get("kind") not in ("head", "lora"):
        raise ModelLoadError(f"{p}: format {config.get('format')!r} / kind {config.get('kind')!r} is not a reward model "
                             f"this version reads (format {CHECKPOINT_FORMAT}, kind head or lora)")
    return config


def load_reward_model(path: str | Path, base_model: str | None = None) -> RewardModel:
    """The reward model saved in `path` (train_rm.py's best/ or final/), ready to `score`.

    The base model is loaded by the name the checkpoint records (hub id; the embedded default's hub
    id resolves to its local copy); `base_model` overrides it (e.g. a local copy of the same model)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = read_checkpoint_config(path)
    if base_model:
        config["base_model"] = base_model
    opts = _model_options_from(config)
    tokenizer = load_tokenizer(opts.model_name_or_path, padding_side="right", trust_remote_code=opts.trust_remote_code)
    if config["kind"] == "head":
        body = load_body(opts)
        state = load_file(str(path / HEAD_WEIGHTS))
        dim = state["mean"].shape[0]
        head = new_head(dim, config["head"]["hidden"], seed=0)
        head.load_state_dict(state)
        head.eval()
        init_head = None
        if (path / INIT_HEAD_WEIGHTS).exists():
            init_head = new_head(dim, config["head"]["hidden"], seed=0)
            init_head.load_state_dict(load_file(str(path / INIT_HEAD_WEIGHTS)))
        hidden = body.config.get_text_config().hidden_size
        if hidden != dim:
            raise ModelLoadError(f"{path}: the head expects {dim} features but {opts.model_name_or_path} gives {hidden}; "
                                 "load it with the base it was trained on")
        return RewardModel(config, tokenizer, head=head, body=body, init_head=init_head)
    model = load_seqcls(opts, tokenizer)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(path))
    model.eval()
    if not (opts.load_in_4bit or opts.load_in_8bit):
        model.to(pick_device())
    return RewardModel(config, tokenizer, seqcls=model)


def load_seqcls(opts: ModelOptions, tokenizer):
    """The base as a one-label sequence-classification model (the LoRA option's reward model)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(opts.model_name_or_path)
    mcfg = AutoConfig.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
    kwargs = seqcls_init_kwargs(opts, mcfg)
    quant = bnb_config(opts)
    if quant is not None:
        kwargs["quantization_config"] = quant
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def seqcls_init_kwargs(opts: ModelOptions, model_config) -> dict:
    return {"dtype": resolve_dtype(opts.dtype), "trust_remote_code": opts.trust_remote_code,
            "attn_implementation": resolve_attn_implementation(opts.attn_implementation,
                                                               getattr(model_config, "model_type", None),
                                                               getattr(opts, "force_attn_implementation", False))}


# --------------------------------------------------------------------------------------------
# Training the head over cached features
# --------------------------------------------------------------------------------------------
@dataclass
class EvalData:
    """What an evaluation needs: the val pairs as rows of the eval features, and penalty totals."""

    pairs: PairIndex
    feats: np.ndarray
    penalty: np.ndarray


def evaluate_head(head, data: EvalData, penalised: bool = True, margin: bool = False) -> dict:
    """pair_metrics of the penalised (or learned) reward on the val pairs, plus the BT loss."""
    import torch

    s = head_scores(head, data.feats) - (data.penalty if penalised else 0.0)
    c, r = s[data.pairs.chosen], s[data.pairs.rejected]
    loss = bt_loss(torch.as_tensor(c), torch.as_tensor(r), torch.as_tensor(data.pairs.margin) if margin else None)
    out = pair_metrics(c, r)
    out["loss"] = float(loss)
    return out


def _steps_plan(n_pairs: int, args) -> tuple[int, int, int]:
    """(pairs per optimiser step, steps per epoch, total steps)."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    per_epoch = max(1, math.ceil(n_pairs / per_step))
    total = args.max_steps if args.max_steps and args.max_steps > 0 else math.ceil(per_epoch * args.num_train_epochs)
    return per_step, per_epoch, max(1, total)


def _warmup(args, total: int) -> int:
    w = args.warmup_steps or 0
    return int(w) if w >= 1 else math.ceil(w * total)


def _every(steps, total: int) -> int | None:
    """TrainingArguments' step intervals: an integer, or a share of the total below 1."""
    if not steps:
        return None
    return max(1, math.ceil(steps * total)) if steps < 1 else int(steps)


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(int(seed) * 1000003 + epoch)
    return torch.randperm(n, generator=g).numpy()


def _rotate_checkpoints(run_dir: Path, limit: int | None, keep: Path) -> None:
    if not limit:
        return
    ckpts = sorted((p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for old in ckpts[:-limit]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def train_head(cfg, head, X_train: np.ndarray, P_train: np.ndarray, pairs: PairIndex, eval_data: EvalData,
               run_dir: Path, resume_from: Path | None, on_best) -> dict:
    """The hand loop (module docstring). Returns the history; calls on_best(head, metrics) on each new best."""
    import torch
    from transformers import get_scheduler

    args, ro = cfg.train, cfg.run
    X = torch.as_tensor(X_train, dtype=torch.float32)
    P = torch.as_tensor(P_train if ro.penalties_in_loss else np.zeros(len(X_train)), dtype=torch.float32)
    C, R = torch.as_tensor(pairs.chosen), torch.as_tensor(pairs.rejected)
    M = torch.as_tensor(pairs.margin, dtype=torch.float32)
    per_step, per_epoch, total = _steps_plan(len(C), args)
    decay = [p for n, p in head.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in head.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    sched = get_scheduler(str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)), opt,
                          num_warmup_steps=_warmup(args, total), num_training_steps=total,
                          scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    seed = args.data_seed if args.data_seed is not None else args.seed
    hist = {"train_losses": [], "train_loss_steps": [], "learning_rates": [], "eval_metrics": [], "best": None,
            "steps_per_epoch": per_epoch, "total_steps": total, "pairs_per_step": per_step}
    step, window = 0, []
    if resume_from is not None:
        state = torch.load(resume_from / "rm_state.pt", weights_only=False)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        hist, step, window = state["history"], state["step"], state["window"]
        log.info("resumed from %s at step %d/%d", resume_from, step, total)
    eval_every = _every(args.eval_steps, total) if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "steps" \
        else None
    log_every, save_every = _every(args.logging_steps, total) or 1, _every(args.save_steps, total)
    micro = args.per_device_train_batch_size

    def evaluate(epoch: float):
        head.eval()
        m = evaluate_head(head, eval_data, margin=ro.use_margin)
        head.train()
        m.update(step=step, epoch=round(epoch, 4))
        hist["eval_metrics"].append(m)
        best = hist["best"]
        if m["roc_auc"] is not None and (best is None or m["roc_auc"] > best["roc_auc"]):
            hist["best"] = {"step": step, "epoch": m["epoch"], "roc_auc": m["roc_auc"]}
            on_best(head, m)
        log.info("eval step %d (epoch %.2f): loss %.4f, ROC-AUC %.4f, accuracy %.4f, ECE %.4f, Brier %.4f", step,
                 epoch, m["loss"], m["roc_auc"], m["accuracy"], m["ece"], m["brier"])

    head.train()
    while step < total:
        epoch = step // per_epoch
        order = _epoch_order(len(C), seed, epoch)
        at = (step % per_epoch) * per_step
        batch = torch.as_tensor(order[at:at + per_step])
        opt.zero_grad()
        loss_sum = 0.0
        for b in range(0, len(batch), micro):
            idx = batch[b:b + micro]
            rc = head(X[C[idx]]) - P[C[idx]]
            rr = head(X[R[idx]]) - P[R[idx]]
            loss = bt_loss(rc, rr, M[idx] if ro.use_margin else None)
            if args.center_rewards_coefficient:
                loss = loss + args.center_rewards_coefficient * torch.mean((rc + rr) ** 2)
            (loss * len(idx) / len(batch)).backward()
            loss_sum += float(loss.detach()) * len(idx) / len(batch)
        if args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(head.parameters(), args.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        window.append(loss_sum)
        if step % log_every == 0 or step == total or (step == 1 and args.logging_first_step):
            hist["train_losses"].append(float(np.mean(window)))
            hist["train_loss_steps"].append(step)
            hist["learning_rates"].append(float(sched.get_last_lr()[0]))
            window = []
        end_of_epoch = step % per_epoch == 0
        if (eval_every and step % eval_every == 0) or end_of_epoch or step == total:
            evaluate(step / per_epoch)
        if save_every and step % save_every == 0 and step < total:
            ckpt = run_dir / f"checkpoint-{step}"
            buf = io.BytesIO()
            torch.save({"head": head.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "history": hist, "step": step, "window": window}, buf)
            atomic_write_bytes(ckpt / "rm_state.pt", buf.getvalue())
            _rotate_checkpoints(run_dir, args.save_total_limit, ckpt)
            fault_point(f"rm:saved:{step}")
    head.eval()
    return hist


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
@dataclass
class ScoredSet:
    """Every score variant of the eval sequences (val pairs and probes), one float per sequence."""

    learned: np.ndarray
    penalty: np.ndarray
    untrained: np.ndarray | None
    length: np.ndarray
    verifier: np.ndarray


def _variants(s: ScoredSet) -> dict[str, np.ndarray]:
    out = {"model": s.learned - s.penalty, "model_without_penalties": s.learned, "penalties_only": -s.penalty,
           "length_only": s.length, "verifier": s.verifier}
    if s.untrained is not None:
        out["untrained_head"] = s.untrained
    return out


# rows whose scores are BT log-odds (calibrated as they are); the rest get a scale fitted on the train pairs
LOG_ODDS_ROWS = ("model", "model_without_penalties", "untrained_head")


def build_report(val: ScoredSet, val_pairs: PairIndex, train: ScoredSet | None, train_pairs: PairIndex | None,
                 probes: Sequence[Probe], probe_rows: Sequence[int]) -> dict:
    """Metrics of every variant on the val pairs (overall, per kind), probe table, reliability bins."""
    variants = _variants(val)
    train_variants = _variants(train) if train is not None else {}
    scales = {}
    rows = {}
    for name, s in variants.items():
        if name in LOG_ODDS_ROWS or name not in train_variants or train_pairs is None:
            scales[name] = 1.0
        else:
            t = train_variants[name]
            scales[name] = fit_scale(t[train_pairs.chosen] - t[train_pairs.rejected])
        rows[name] = metrics_by_kind(s, val_pairs, scales[name])
        rows[name]["scale"] = scales[name]
    probe_idx = np.asarray(probe_rows, dtype=np.int64)
    table = probe_table(probes, {"with_penalties": variants["model"][probe_idx],
                                 "without_penalties": variants["model_without_penalties"][probe_idx],
                                 "penalties_only": variants["penalties_only"][probe_idx]}) if probes else {}
    d = variants["model"][val_pairs.chosen] - variants["model"][val_pairs.rejected]
    return {"metrics": rows, "probes": {"examples": len({p.example_id for p in probes}), "by_trick": table},
            "reliability": reliability_bins(d), "pairs_by_kind": {k: val_pairs.kinds.count(k)
                                                                  for k in sorted(set(val_pairs.kinds))}}


ROW_LABELS = {"model": "reward model (penalised)", "model_without_penalties": "trained head, no penalties",
              "untrained_head": "untrained head", "penalties_only": "penalties only", "length_only": "length only",
              "verifier": "verifier score (gold)"}


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def heldout_table(report: Mapping) -> list[str]:
    """Markdown rows: ROC-AUC, accuracy, ECE and Brier of the model and each baseline on the held-out pairs."""
    lines = ["| scorer | n | ROC-AUC | accuracy | ECE | Brier |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in report["metrics"].items():
        o = row["overall"]
        lines.append(f"| {ROW_LABELS.get(name, name)} | {o['n']} | {_f(o['roc_auc'])} | {_f(o['accuracy'])} | "
                     f"{_f(o['ece'])} | {_f(o['brier'])} |")
    return lines


def probe_summary(report: Mapping) -> list[str]:
    """Markdown rows: per trick, the share of probes where the honest answer scores higher ([] without probes)."""
    table = report["probes"]["by_trick"]
    if not table:
        return []
    lines = [f"## Gaming probes ({report['probes']['examples']} held-out examples): share where the honest "
             "answer scores higher", "", "| trick | n | penalties on | penalties off | penalties alone |",
             "|---|---:|---:|---:|---:|"]
    for trick, row in table.items():
        lines.append(f"| {trick} | {row['n']} | {_f(row['honest_wins_with_penalties'])} | "
                     f"{_f(row['honest_wins_without_penalties'])} | {_f(row['honest_wins_penalties_only'])} |")
    return lines


def format_report(report: Mapping, title: str = "Reward model") -> str:
    lines = [f"# {title}", "", "## Held-out pairs", "", *heldout_table(report)]
    rows = report["metrics"]
    kinds = list(rows["model"]["by_kind"])
    if kinds:
        lines += ["", "## Per pair kind (reward model, penalised)", "", "| kind | n | ROC-AUC | accuracy | ECE | Brier |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k in kinds:
            o = rows["model"]["by_kind"][k]
            lines.append(f"| {k} | {o['n']} | {_f(o['roc_auc'])} | {_f(o['accuracy'])} | {_f(o['ece'])} | {_f(o['brier'])} |")
    table = report["probes"]["by_trick"]
    if table:
        lines += ["", *probe_summary(report)]
        split = [(t, src, r) for t, row in table.items() for src, r in row.get("by_source", {}).items()]
        if split:
            lines += ["", "Per source:", "", "| trick | source | n | penalties on | penalties off | penalties alone |",
                      "|---|---|---:|---:|---:|---:|"]
            for trick, src, r in split:
                lines.append(f"| {trick} | {src} | {r['n']} | {_f(r['honest_wins_with_penalties'])} | "
                             f"{_f(r['honest_wins_without_penalties'])} | {_f(r['honest_wins_penalties_only'])} |")
    return "\n".join(lines) + "\n"


def write_plots(run_dir: Path, history: Mapping | None, report: Mapping) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if history is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].plot(history["train_loss_steps"], history["train_losses"])
        axes[0].set(title="Reward model training loss", xlabel="step", ylabel="BT loss")
        ev = history["eval_metrics"]
        axes[1].plot([m["step"] for m in ev], [m["roc_auc"] for m in ev], marker="o")
        axes[1].set(title="Validation ROC-AUC", xlabel="step", ylabel="ROC-AUC")
        fig.tight_layout()
        fig.savefig(run_dir / "training_curves.png", dpi=100)
        plt.close(fig)
        written.append("training_curves.png")
    bins = [b for b in report["reliability"] if b["n"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.plot([b["mean_prob"] for b in bins], [b["frequency"] for b in bins], marker="o")
    ece = report["metrics"]["model"]["overall"]["ece"]
    ax.set(title=f"Reliability: sigmoid(r_c - r_r), ECE {_f(ece)}", xlabel="predicted P(chosen preferred)",
           ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(run_dir / "reliability.png", dpi=100)
    plt.close(fig)
    written.append("reliability.png")
    return written


# --------------------------------------------------------------------------------------------
# Scoring sets with any reward model (the frozen-head run and --validate-only share this)
# --------------------------------------------------------------------------------------------
@dataclass
class EvalInputs:
    """The val pairs and probes as one table of sequences, with their gold-side scores."""

    seqs: Sequences
    pairs: PairIndex
    probes: list[Probe]
    probe_rows: list[int]
    length: np.ndarray
    verifier: np.ndarray


def eval_inputs(pairs: Sequence[Mapping], probes: Sequence[Probe], tokens: Tokens,
                examples_by_id: Mapping[str, dict]) -> EvalInputs:
    seqs = Sequences()
    index = index_pairs(pairs, seqs)
    probe_rows = [seqs.add(p.prompt, p.response) for p in probes]
    example_of_row: dict[int, dict] = {}
    for pair, c, r in zip(pairs, index.chosen, index.rejected):
        example_of_row[int(c)] = example_of_row[int(r)] = examples_by_id[pair["example_id"]]
    for p, row in zip(probes, probe_rows):
        example_of_row.setdefault(row, examples_by_id.get(p.example_id))
    length = np.array([len(tokens.response(r)) for r in seqs.responses], dtype=np.float64)
    verifier = np.array([verifier_score(example_of_row[i], seqs.responses[i]) if example_of_row.get(i) else np.nan
                         for i in range(len(seqs))])
    return EvalInputs(seqs, index, list(probes), probe_rows, length, verifier)


def baseline_train_set(inputs: "Inputs", tokens: Tokens, penalties: PenaltyOptions) -> tuple[ScoredSet, PairIndex]:
    """The training pairs' baseline scores (length, penalties, verifier: no model needed), on which the
    baselines' calibration scales are fitted; learned scores are left at 0 (model rows use scale 1)."""
    seqs = Sequences()
    idx = index_pairs(inputs.train_pairs, seqs)
    examples = pair_examples(inputs.train_pairs, inputs.templates)
    example_of_row: dict[int, dict] = {}
    for pair, c, r in zip(inputs.train_pairs, idx.chosen, idx.rejected):
        example_of_row[int(c)] = example_of_row[int(r)] = examples[pair["example_id"]]
    P = penalty_matrix(seqs.prompts, seqs.responses, penalties, inputs.templates) @ weight_vector(penalties)
    length = np.array([len(tokens.response(r)) for r in seqs.responses], dtype=np.float64)
    verifier = np.array([verifier_score(example_of_row[i], seqs.responses[i]) for i in range(len(seqs))])
    return ScoredSet(np.zeros(len(seqs)), P, None, length, verifier), idx


def pair_examples(pairs: Iterable[Mapping], templates: PromptTemplates) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for p in pairs:
        out.setdefault(p["example_id"], example_of_pair(p, templates))
    return out



# --------------------------------------------------------------------------------------------
# The LoRA option: TRL's RewardTrainer on the base as a sequence-classification model
# --------------------------------------------------------------------------------------------
def save_lora_checkpoint(path: Path, model, config: Mapping, metrics: Mapping | None = None) -> None:
    """A 'lora' reward model: the PEFT adapter (with the score head as a module to save) + reward_model.json."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        atomic_write_json(tmp / CHECKPOINT_CONFIG, dict(config))
        if metrics is not None:
            atomic_write_json(tmp / "metrics.json", dict(metrics))


HISTORY_IN_CHECKPOINT = "rm_history.json"


def run_lora(cfg, inputs: Inputs, run_dir: Path, resume_from: Path | None) -> dict:
    """use_peft: LoRA on the base + a score head, trained by TRL's RewardTrainer (RewardConfig as
    given); evaluated with this module's metrics at each of the trainer's evaluations."""
    import gc

    from datasets import Dataset
    from transformers import AutoConfig, TrainerCallback
    from trl import RewardTrainer

    t_start = time.time()
    tokens = Tokens(inputs.tokenizer, cfg.train.max_length, cfg.run.max_response_tokens)

    def dataset(pairs):
        cols = {"chosen_ids": [tokens.full(p["prompt"], p["chosen"]) for p in pairs],
                "rejected_ids": [tokens.full(p["prompt"], p["rejected"]) for p in pairs]}
        if cfg.run.use_margin:
            cols["margin"] = [float(p["margin"]) for p in pairs]
        return Dataset.from_dict(cols)

    train_ds, val_ds = dataset(inputs.train_pairs), dataset(inputs.val_pairs)
    ev = eval_inputs(inputs.val_pairs, inputs.probes, tokens, inputs.examples_by_id)
    P_eval = penalty_matrix(ev.seqs.prompts, ev.seqs.responses, cfg.penalties, inputs.templates) @ weight_vector(cfg.penalties)
    path = resolve_model_path(cfg.model.model_name_or_path)
    mcfg = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    args = copy.copy(cfg.train)
    args.model_init_kwargs = seqcls_init_kwargs(cfg.model, mcfg)
    ckpt_config = _checkpoint_config(cfg, "lora", inputs.templates, getattr(mcfg.get_text_config(), "hidden_size", None))
    history: dict[str, Any] = {"eval_metrics": [], "best": None}
    if resume_from is not None and (resume_from / HISTORY_IN_CHECKPOINT).exists():
        history = json.loads((resume_from / HISTORY_IN_CHECKPOINT).read_text(encoding="utf-8"))
    bs = cfg.train.per_device_eval_batch_size

    class Evaluate(TrainerCallback):
        """Our metrics on the val pairs at each evaluation; best/ by ROC-AUC; history in each checkpoint."""

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            if not dist.is_main_process():
                return
            s = seqcls_scores(model, tokens, ev.seqs.prompts, ev.seqs.responses, bs) - P_eval
            import torch

            c, r = s[ev.pairs.chosen], s[ev.pairs.rejected]
            m = pair_metrics(c, r)
            m.update(loss=float(bt_loss(torch.as_tensor(c), torch.as_tensor(r))), step=state.global_step,
                     epoch=round(state.epoch or 0.0, 4))
            history["eval_metrics"].append(m)
            best = history["best"]
            if best is None or m["roc_auc"] > best["roc_auc"]:
                history["best"] = {"step": m["step"], "epoch": m["epoch"], "roc_auc": m["roc_auc"]}
                save_lora_checkpoint(run_dir / "best", model, ckpt_config,
                                     {"eval": m, "pairs_sha256": sha256_file(inputs.pairs_path)})
            log.info("eval step %d: ROC-AUC %.4f, accuracy %.4f, ECE %.4f, Brier %.4f", m["step"], m["roc_auc"],
                     m["accuracy"], m["ece"], m["brier"])

        def on_save(self, args, state, control, **kwargs):
            if dist.is_main_process():
                atomic_write_json(run_dir / f"checkpoint-{state.global_step}" / HISTORY_IN_CHECKPOINT, history)

    trainer = RewardTrainer(model=str(path), args=args, train_dataset=train_ds, eval_dataset=val_ds,
                            processing_class=inputs.tokenizer, quantization_config=bnb_config(cfg.model),
                            peft_config=lora_config(cfg.model, getattr(mcfg.get_text_config(), "num_hidden_layers", None)),
                            callbacks=[Evaluate()])
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    t0 = time.time()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_s = time.time() - t0
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]  # every rank has these
    if not evaluated or evaluated[-1] != trainer.state.global_step:  # (history is the main process's only)
        trainer.evaluate()
    changed = [n for n, p in trainer.model.named_parameters() if n in base_before and not torch_equal(p, base_before[n])]
    history["train_losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    history["train_loss_steps"] = [h["step"] for h in trainer.state.log_history if "loss" in h]
    summary = model_summary(trainer.model)
    result: dict = {}
    if dist.is_main_process():
        save_lora_checkpoint(run_dir / "final", trainer.model, ckpt_config,
                             {"eval": history["eval_metrics"][-1], "pairs_sha256": sha256_file(inputs.pairs_path)})
    del trainer, base_before
    gc.collect()
    if dist.is_main_process():
        rm = load_reward_model(run_dir / "best", base_model=cfg.model.model_name_or_path)
        train_set, train_idx = baseline_train_set(inputs, tokens, cfg.penalties)
        report = build_report(score_inputs(rm, ev), ev.pairs, train_set, train_idx, ev.probes, ev.probe_rows)
        report.update(checkpoint="best", best=history["best"], **inputs.sources())
        atomic_write_json(run_dir / "best" / "report.json", report)
        result = finish_run(cfg, inputs, run_dir, history, report, {
            "model": {"base": cfg.model.model_name_or_path, **summary, "frozen_base_weights_changed": len(changed)},
            "train_seconds": round(train_s, 2), "total_seconds": round(time.time() - t_start, 1)}, resume_from)
    dist.wait_for_everyone()
    return result


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach().cpu(), b.detach().cpu()))

# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
def run_dir_of(cfg) -> Path:
    return Path(cfg.train.output_dir)


def resolve_pairs_path(cfg, tokenizer, templates: PromptTemplates) -> Path:
    if cfg.run.synthetic_pairs:
        return write_synthetic_pairs(cfg, tokenizer, templates)
    if cfg.run.pairs_path:
        p = Path(cfg.run.pairs_path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: pairs file not found; run make_prefs.py --phase judge, fix --pairs-path, "
                                    "or pass --synthetic-pairs true")
        return p
    return newest_pairs_file(cfg.run.prefs_dir)


def flat_config(cfg) -> dict:
    """The resolved config as one flat mapping, loadable again with -c (our options, penalties, the
    model options, and the training options that were set)."""
    from ..training import DERIVED_TRAIN_KEYS

    out: dict[str, Any] = {k: v for k, v in to_dict(cfg.run).items() if k not in ("config_path", "data_path")}
    out.update(to_dict(cfg.penalties))
    out.update(to_dict(cfg.model))
    train = to_dict(cfg.train)
    for k in list(RM_TRAIN_DEFAULTS) + sorted(cfg.explicit):
        if k in train and k not in out and (k in cfg.explicit or k not in DERIVED_TRAIN_KEYS):
            out[k] = train[k]
    for k in ("validate_only", "resume", "overwrite"):
        out.pop(k, None)
    return out


@dataclass
class Inputs:
    """Everything a run reads, checked before anything on disk changes."""

    templates: PromptTemplates
    tokenizer: Any
    pairs_path: Path
    train_pairs: list[dict]
    val_pairs: list[dict]
    probes: list[Probe]
    probe_source: str
    examples_by_id: dict[str, dict]
    augment: dict = field(default_factory=dict)   # augment_pairs: {"pairs", "by_kind", "source"}

    def sources(self) -> dict:
        """Where the report's pairs and probes came from (every report records it)."""
        return {"pairs_path": str(self.pairs_path), "pairs_sha256": sha256_file(self.pairs_path),
                "probe_source": self.probe_source, "augment": self.augment}


def read_inputs(cfg) -> Inputs:
    templates = PromptTemplates.from_dir(cfg.run.prompts_dir)
    pairs_path = None if cfg.run.synthetic_pairs else resolve_pairs_path(cfg, None, templates)  # errors before loading
    tokenizer = load_tokenizer(cfg.model.model_name_or_path, padding_side="right",
                               trust_remote_code=cfg.model.trust_remote_code)
    pairs_path = pairs_path or resolve_pairs_path(cfg, tokenizer, templates)
    train_pairs, val_pairs = read_pairs(pairs_path, templates)
    train_ids = {p["example_id"] for p in train_pairs}
    probe_exs, probe_source = probe_examples(cfg, val_pairs, tokenizer, templates, train_ids)
    probes = make_probes(probe_exs, cfg.train.seed)
    used = train_ids | {p["example_id"] for p in val_pairs} | {ex["id"] for _, ex in probe_exs}
    extra, augment_source = augment_pairs(cfg, tokenizer, templates, used)
    train_pairs = train_pairs + extra
    examples = pair_examples(val_pairs, templates)
    for _, ex in probe_exs:
        examples.setdefault(ex["id"], ex)
    log.info("pairs %s: %d train, %d val (%s); probes: %d examples, %d responses from %s", pairs_path,
             len(train_pairs), len(val_pairs), ", ".join(f"{k} {v}" for k, v in sorted(_count(val_pairs).items())),
             len({p.example_id for p in probes}), len(probes), probe_source)
    augment = {"pairs": len(extra), "by_kind": _count(extra), "source": augment_source} if extra else {}
    return Inputs(templates, tokenizer, pairs_path, train_pairs, val_pairs, probes, probe_source, examples, augment)


def _count(pairs) -> dict:
    out: dict[str, int] = {}
    for p in pairs:
        out[p["kind"]] = out.get(p["kind"], 0) + 1
    return out


def run(cfg) -> dict:
    """Train (or, with --validate-only, re-validate) the reward model; returns the run's result."""
    if cfg.run.validate_only:
        return validate(cfg)
    import torch

    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    set_seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    run_dir = run_dir_of(cfg)
    resume_from = check_run_dir(cfg)
    inputs = read_inputs(cfg)
    clear_run_dir(cfg)
    if cfg.model.use_peft:
        return run_lora(cfg, inputs, run_dir, resume_from)
    if not dist.is_main_process():  # the frozen path is one forward pass per sequence: one process does it
        dist.wait_for_everyone()
        return {}
    result = run_frozen(cfg, inputs, run_dir, resume_from)
    dist.wait_for_everyone()
    return result


def run_frozen(cfg, inputs: Inputs, run_dir: Path, resume_from: Path | None) -> dict:
    t_start = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    body = load_body(cfg.model)
    hidden = body.config.get_text_config().hidden_size
    tokens = Tokens(inputs.tokenizer, cfg.train.max_length, cfg.run.max_response_tokens)
    key = {**model_key(cfg.model), "max_length": cfg.train.max_length,
           "max_response_tokens": cfg.run.max_response_tokens, "pooling": "last"}
    cache_root = feature_cache_root(cfg) if cfg.run.feature_cache else None
    bs = cfg.train.per_device_eval_batch_size

    train_seqs = Sequences()
    train_idx = index_pairs(inputs.train_pairs, train_seqs)
    ev = eval_inputs(inputs.val_pairs, inputs.probes, tokens, inputs.examples_by_id)
    X_train, train_info = cached_features(body, tokens, train_seqs, key, cache_root, bs, cfg.run.share_prompt_prefix,
                                          desc="train features")
    X_eval, eval_info = cached_features(body, tokens, ev.seqs, key, cache_root, bs, cfg.run.share_prompt_prefix,
                                        desc="eval features")
    log.info("features: train %d sequences (%s, %.1f s), eval %d sequences (%s, %.1f s); %d prompts cut to %d tokens",
             len(train_seqs), "cached" if train_info["hit"] else "computed", train_info["seconds"], len(ev.seqs),
             "cached" if eval_info["hit"] else "computed", eval_info["seconds"], tokens.truncated_prompts,
             tokens.prompt_budget)
    w = weight_vector(cfg.penalties)
    P_train = penalty_matrix(train_seqs.prompts, train_seqs.responses, cfg.penalties, inputs.templates) @ w
    P_eval = penalty_matrix(ev.seqs.prompts, ev.seqs.responses, cfg.penalties, inputs.templates) @ w

    head = new_head(hidden, cfg.run.head_hidden_size, cfg.train.seed, X_train)
    init_head = copy.deepcopy(head)
    ckpt_config = _checkpoint_config(cfg, "head", inputs.templates, hidden)
    eval_data = EvalData(ev.pairs, X_eval, P_eval)

    def on_best(h, metrics):
        save_head_checkpoint(run_dir / "best", ckpt_config, h, init_head, {"eval": metrics,
                                                                            "pairs_sha256": sha256_file(inputs.pairs_path)})

    t0 = time.time()
    history = train_head(cfg, head, X_train, P_train, train_idx, eval_data, run_dir, resume_from, on_best)
    train_s = time.time() - t0
    final_metrics = history["eval_metrics"][-1]
    save_head_checkpoint(run_dir / "final", ckpt_config, head, init_head,
                         {"eval": final_metrics, "pairs_sha256": sha256_file(inputs.pairs_path)})
    from safetensors.torch import load_file

    best = new_head(hidden, cfg.run.head_hidden_size, 0)
    best.load_state_dict(load_file(str(run_dir / "best" / HEAD_WEIGHTS)))
    best.eval()

    val_set = ScoredSet(head_scores(best, X_eval), P_eval, head_scores(init_head, X_eval), ev.length, ev.verifier)
    train_set, train_pairs_idx = baseline_train_set(inputs, tokens, cfg.penalties)
    report = build_report(val_set, ev.pairs, train_set, train_pairs_idx, ev.probes, ev.probe_rows)
    report.update(checkpoint="best", best=history["best"], **inputs.sources())
    atomic_write_json(run_dir / "best" / "report.json", report)  # the figures --validate-only must reproduce
    return finish_run(cfg, inputs, run_dir, history, report, {
        "features": {"train": train_info, "eval": eval_info, "prompts_truncated": tokens.truncated_prompts,
                     "responses_truncated": tokens.truncated_responses, "cache_root": str(cache_root) if cache_root else None},
        "model": {"base": cfg.model.model_name_or_path, **model_summary(body), "head_params":
                  sum(p.numel() for p in head.parameters()), "hidden_size": hidden},
        "train_seconds": round(train_s, 2), "total_seconds": round(time.time() - t_start, 1)}, resume_from)


def finish_run(cfg, inputs: Inputs, run_dir: Path, history: Mapping, report: Mapping, extra: Mapping,
               resume_from: Path | None) -> dict:
    """training_history.json, the report (JSON, Markdown, plots), config.yaml and the run card."""
    atomic_write_json(run_dir / "training_history.json", dict(history))
    atomic_write_json(run_dir / "rm_report.json", dict(report))
    atomic_write_text(run_dir / "rm_report.md", format_report(report))
    plots = write_plots(run_dir, history, report) if cfg.run.plots else []
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(flat_config(cfg), sort_keys=False))
    inputs_sha = {str(inputs.pairs_path): sha256_file(inputs.pairs_path)}
    for p in (cfg.run.probe_data, cfg.config_path):
        if p and Path(p).exists():
            inputs_sha[str(p)] = sha256_file(p)
    overall = report["metrics"]["model"]["overall"]
    card = run_card("train_rm.py", to_dict(cfg), inputs_sha, seed=cfg.train.seed, run_dir=str(run_dir),
                    resumed_from=str(resume_from) if resume_from else None,
                    pairs={"train": len(inputs.train_pairs), "val": len(inputs.val_pairs),
                           "train_by_kind": _count(inputs.train_pairs), "val_by_kind": _count(inputs.val_pairs),
                           "augment": inputs.augment},
                    probes={"source": inputs.probe_source, "responses": len(inputs.probes)},
                    best=history.get("best"), val_metrics=overall, plots=plots, renamed_config_keys=cfg.renamed,
                    penalties=asdict(cfg.penalties), **extra)
    write_run_card(run_dir / "run_card.json", card)
    log.info("done: best ROC-AUC %s at step %s; val accuracy %s, ECE %s, Brier %s; report in %s",
             _f(overall["roc_auc"]), (history.get("best") or {}).get("step"), _f(overall["accuracy"]),
             _f(overall["ece"]), _f(overall["brier"]), run_dir / "rm_report.md")
    return {"run_dir": str(run_dir), "report": dict(report), "history": dict(history), "card": card}


def resolve_checkpoint(cfg) -> Path:
    c = cfg.run.checkpoint
    p = run_dir_of(cfg) / c if c in ("best", "final") else Path(c)
    if not (p / CHECKPOINT_CONFIG).exists():
        raise FileNotFoundError(f"{p}: no saved reward model here ({CHECKPOINT_CONFIG} missing); train first "
                                f"(python train_rm.py -c ...) or pass --checkpoint best|final|<path>")
    return p


def score_inputs(rm: RewardModel, ev: EvalInputs, progress: bool | None = None) -> ScoredSet:
    """Every score variant of the eval sequences with a loaded reward model (one feature pass)."""
    untrained = None
    if rm.kind == "head":
        feats = rm.features(ev.seqs.prompts, ev.seqs.responses, progress)
        learned = head_scores(rm.head, feats)
        if rm.init_head is not None:
            untrained = head_scores(rm.init_head, feats)
    else:
        learned = rm.learned_scores(ev.seqs.prompts, ev.seqs.responses, progress)
    return ScoredSet(learned, rm.penalty_totals(ev.seqs.prompts, ev.seqs.responses), untrained, ev.length, ev.verifier)


def compare_reports(new: Mapping, saved: Mapping, tol: float = 1e-4) -> dict:
    """Largest absolute difference between two reports' numbers (metrics and probe table)."""
    diffs: list[tuple[float, str]] = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in set(a) | set(b):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            diffs.append((abs(float(a) - float(b)), path))
        elif a != b:
            diffs.append((math.inf, path))
    walk({"metrics": new["metrics"], "probes": new["probes"]}, {"metrics": saved["metrics"], "probes": saved["probes"]}, "")
    worst = max(diffs, default=(0.0, ""))
    return {"reproduced": worst[0] <= tol, "max_abs_diff": worst[0], "where": worst[1] or None, "tolerance": tol}


def validate(cfg) -> dict:
    """--validate-only: load the saved reward model on its own and compute the report again."""
    if cfg.run.torch_threads:
        import torch

        torch.set_num_threads(cfg.run.torch_threads)
    ckpt = resolve_checkpoint(cfg)
    inputs = read_inputs(cfg)
    rm = load_reward_model(ckpt)
    config = rm.config
    if (config["max_length"], config["max_response_tokens"]) != (cfg.train.max_length, cfg.run.max_response_tokens):
        log.warning("the checkpoint was trained with max_length %s / max_response_tokens %s; scoring with its own",
                    config["max_length"], config["max_response_tokens"])
    ev = eval_inputs(inputs.val_pairs, inputs.probes, rm.tokens, inputs.examples_by_id)
    train_set, train_idx = baseline_train_set(inputs, rm.tokens, rm.penalty_options)
    t0 = time.time()
    report = build_report(score_inputs(rm, ev), ev.pairs, train_set, train_idx, ev.probes, ev.probe_rows)
    seconds = time.time() - t0
    report.update(checkpoint=str(ckpt), **inputs.sources())
    saved_path = ckpt / "report.json"
    if saved_path.exists():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        check = compare_reports(report, saved)
        if saved.get("pairs_sha256") != report["pairs_sha256"]:
            check.update(reproduced=False, note="the pairs file differs from the one the checkpoint was validated on")
    else:
        check = {"reproduced": None, "note": f"{saved_path} missing: nothing saved to compare with"}
    report["reproduction"] = check
    out_dir = run_dir_of(cfg)
    if dist.is_main_process():
        atomic_write_json(out_dir / "validation.json", report)
        atomic_write_text(out_dir / "validation.md", format_report(report, f"Reward model {ckpt} (validate-only)")
                          + f"\nReproduces the saved figures: {check.get('reproduced')} "
                            f"(max |diff| {check.get('max_abs_diff')})\n")
    log.info("validated %s in %.1f s: ROC-AUC %s; saved figures reproduced: %s", ckpt, seconds,
             _f(report["metrics"]["model"]["overall"]["roc_auc"]), check.get("reproduced"))
    return {"run_dir": str(out_dir), "report": report, "validate_only": True}


def summarize(result: Mapping) -> str:
    if not result or "report" not in result:
        return ""
    rep = result["report"]
    o = rep["metrics"]["model"]["overall"]
    probes = rep["probes"]["by_trick"]
    worst = min((r["honest_wins_with_penalties"] for r in probes.values() if r["n"]), default=None)
    head = "train_rm --validate-only" if result.get("validate_only") else "train_rm"
    extra = ""
    if result.get("validate_only"):
        extra = f"; reproduces the saved figures: {rep['reproduction'].get('reproduced')}"
    return (f"{head}: val ROC-AUC {_f(o['roc_auc'])}, accuracy {_f(o['accuracy'])}, ECE {_f(o['ece'])}, "
            f"Brier {_f(o['brier'])} on {o['n']} pairs; gaming probes: honest answer wins >= {_f(worst)} of every "
            f"trick (penalties on){extra}; report in {result['run_dir']}")


STAGE = Stage("train_rm", RM_SPEC, run, summarize)
