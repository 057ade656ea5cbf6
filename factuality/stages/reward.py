"""Reward model: Bradley-Terry on preference pairs, anti-gaming penalties, AUC / calibration / probe report.

The reward of a response to a prompt (a rendered prompt holding the evidence, as make_prefs.py
writes pairs) is

    reward = learned score - sum_k weight_k * penalty_k(prompt, response)

The learned score is a head on the base model's final hidden state at the response's last token
(its end-of-turn token). By default the base is frozen and the head is a linear layer on
standardised features (the notebook's choice); `use_peft: true` trains LoRA on the base with
TRL's RewardTrainer instead. The penalties (factuality/penalties.py) read only the prompt and the
response, so the reward model scores new data without gold:

    from factuality.rm import load_reward_model
    rm = load_reward_model("checkpoints/rm/best")
    rm.score(prompts, responses)          # list[float], penalised rewards

This module is the train_rm stage: its options, reading the inputs, the frozen-base run (features
and their cache: factuality/rm/features.py; the head's training loop: rm/train.py), the LoRA run
and --validate-only. Validation uses pairs of `split: val` examples only (never pairs of training
examples), overall and per pair kind: accuracy, ROC-AUC, ECE and Brier (rm/metrics.py), against
the baselines of rm/report.py; gaming probes (rm/probes.py): for each answerable held-out example
(probe_data, default the val split), the honest gold answer against each trick, scored with the
penalties on, off, and the penalties alone.

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
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .. import dist
from ..cli import Stage
from ..config import ConfigError, LazySpec, Part, StageSpec, fields_of, to_dict
from ..modeling import (
    ModelOptions,
    bnb_config,
    load_tokenizer,
    model_summary,
    resolve_model_path,
)
from ..paths import PREFS_DIR, PROCESSED_DIR, VAL_FILE
from ..penalties import PenaltyOptions, penalty_matrix, weight_vector
from ..perturb import KINDS, check_kinds
from ..prompts import PromptTemplates
from ..provenance import run_card, set_seed, write_run_card
from ..records import (
    RecordError,
    apply_umask,
    atomic_write_json,
    atomic_write_text,
    check_sealed_dir,
    releasing_claims,
    sha256_file,
)
from ..rm.features import (
    Sequences,
    Tokens,
    cached_features,
    feature_cache_root,
    index_pairs,
    load_body,
    model_key,
)
from ..rm.lora import (
    HISTORY_IN_CHECKPOINT,
    lora_dataset,
    lora_evaluate_callback,
    torch_equal,
)
from ..rm.model import (
    HEAD_WEIGHTS,
    checkpoint_config,
    head_scores,
    load_reward_model,
    new_head,
    resolve_checkpoint,
    save_head_checkpoint,
    save_lora_checkpoint,
    seqcls_init_kwargs,
)
from ..rm.pairs import (
    augment_pairs,
    count_kinds,
    newest_pairs_file,
    pair_examples,
    read_pairs,
    unknown_example_ids,
    write_synthetic_pairs,
)
from ..rm.probes import Probe, make_probes, probe_examples
from ..rm.report import (
    ScoredSet,
    build_report,
    compare_reports,
    fmt,
    format_report,
    write_plots,
)
from ..rm.scoring import EvalInputs, baseline_train_set, eval_inputs, score_inputs
from ..rm.train import EvalData, train_head
from ..training import (
    check_run_dir,
    clear_run_dir,
    lora_config,
    prepare_training_values,
)
from ..training import flat_config as training_flat_config

log = logging.getLogger(__name__)


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
# Inputs
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
    """The resolved config as one flat mapping, loadable again with -c: training.flat_config with the
    penalty weights after our options, less the run modes."""
    flat = training_flat_config(cfg, RM_TRAIN_DEFAULTS)       # our options, the model options, the training options
    ours = set(to_dict(cfg.run))
    out: dict[str, Any] = {k: v for k, v in flat.items() if k in ours}
    out.update(to_dict(cfg.penalties))
    out.update((k, v) for k, v in flat.items() if k not in ours)
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
    unknown_example_ids: int = 0                  # pairs whose example id the data files do not hold

    def sources(self) -> dict:
        """Where the report's pairs and probes came from (every report records it)."""
        return {"pairs_path": str(self.pairs_path), "pairs_sha256": sha256_file(self.pairs_path),
                "probe_source": self.probe_source, "augment": self.augment,
                "pairs_with_unknown_example_ids": self.unknown_example_ids}


def read_inputs(cfg) -> Inputs:
    templates = PromptTemplates.from_dir(cfg.run.prompts_dir)
    pairs_path = None if cfg.run.synthetic_pairs else resolve_pairs_path(cfg, None, templates)  # errors before loading
    tokenizer = load_tokenizer(cfg.model.model_name_or_path, padding_side="right",
                               trust_remote_code=cfg.model.trust_remote_code)
    pairs_path = pairs_path or resolve_pairs_path(cfg, tokenizer, templates)
    train_pairs, val_pairs = read_pairs(pairs_path, templates)
    unknown, _ = (0, []) if cfg.run.synthetic_pairs else unknown_example_ids(cfg, train_pairs + val_pairs)
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
             len(train_pairs), len(val_pairs), ", ".join(f"{k} {v}" for k, v in sorted(count_kinds(val_pairs).items())),
             len({p.example_id for p in probes}), len(probes), probe_source)
    augment = {"pairs": len(extra), "by_kind": count_kinds(extra), "source": augment_source} if extra else {}
    return Inputs(templates, tokenizer, pairs_path, train_pairs, val_pairs, probes, probe_source, examples, augment,
                  unknown)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
@releasing_claims
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
    clear_run_dir(cfg, barrier=False)   # --overwrite: the old run goes only once the model and features are in hand
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("features: train %d sequences (%s, %.1f s), eval %d sequences (%s, %.1f s); %d prompts cut to %d tokens",
             len(train_seqs), "cached" if train_info["hit"] else "computed", train_info["seconds"], len(ev.seqs),
             "cached" if eval_info["hit"] else "computed", eval_info["seconds"], tokens.truncated_prompts,
             tokens.prompt_budget)
    w = weight_vector(cfg.penalties)
    P_train = penalty_matrix(train_seqs.prompts, train_seqs.responses, cfg.penalties, inputs.templates) @ w
    P_eval = penalty_matrix(ev.seqs.prompts, ev.seqs.responses, cfg.penalties, inputs.templates) @ w

    head = new_head(hidden, cfg.run.head_hidden_size, cfg.train.seed, X_train)
    init_head = copy.deepcopy(head)
    ckpt_config = checkpoint_config(cfg, "head", inputs.templates, hidden)
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
    check_sealed_dir(run_dir / "best")
    best.load_state_dict(load_file(str(run_dir / "best" / HEAD_WEIGHTS)))
    best.eval()

    val_set = ScoredSet(head_scores(best, X_eval), P_eval, head_scores(init_head, X_eval), ev.length, ev.verifier)
    train_set, train_pairs_idx = baseline_train_set(inputs.train_pairs, inputs.templates, tokens, cfg.penalties)
    report = build_report(val_set, ev.pairs, train_set, train_pairs_idx, ev.probes, ev.probe_rows)
    report.update(checkpoint="best", best=history["best"], entailment=cfg.penalties.entailment, **inputs.sources())
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
                           "train_by_kind": count_kinds(inputs.train_pairs), "val_by_kind": count_kinds(inputs.val_pairs),
                           "augment": inputs.augment},
                    probes={"source": inputs.probe_source, "responses": len(inputs.probes)},
                    best=history.get("best"), val_metrics=overall, plots=plots, renamed_config_keys=cfg.renamed,
                    penalties=asdict(cfg.penalties), **extra)
    apply_umask(run_dir)  # the libraries save some files private (0600); outputs follow the umask
    write_run_card(run_dir / "run_card.json", card)
    log.info("done: best ROC-AUC %s at step %s; val accuracy %s, ECE %s, Brier %s; report in %s",
             fmt(overall["roc_auc"]), (history.get("best") or {}).get("step"), fmt(overall["accuracy"]),
             fmt(overall["ece"]), fmt(overall["brier"]), run_dir / "rm_report.md")
    return {"run_dir": str(run_dir), "report": dict(report), "history": dict(history), "card": card}


# --------------------------------------------------------------------------------------------
# The LoRA option: TRL's RewardTrainer on the base as a sequence-classification model
# --------------------------------------------------------------------------------------------
def run_lora(cfg, inputs: Inputs, run_dir: Path, resume_from: Path | None) -> dict:
    """use_peft: LoRA on the base + a score head, trained by TRL's RewardTrainer (RewardConfig as
    given); evaluated with this module's metrics at each of the trainer's evaluations."""
    import gc

    from transformers import AutoConfig
    from trl import RewardTrainer

    t_start = time.time()
    tokens = Tokens(inputs.tokenizer, cfg.train.max_length, cfg.run.max_response_tokens)
    train_ds = lora_dataset(inputs.train_pairs, tokens, cfg.run.use_margin)
    val_ds = lora_dataset(inputs.val_pairs, tokens, cfg.run.use_margin)
    ev = eval_inputs(inputs.val_pairs, inputs.probes, tokens, inputs.examples_by_id)
    P_eval = penalty_matrix(ev.seqs.prompts, ev.seqs.responses, cfg.penalties, inputs.templates) @ weight_vector(cfg.penalties)
    path = resolve_model_path(cfg.model.model_name_or_path)
    mcfg = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    args = copy.copy(cfg.train)
    args.model_init_kwargs = seqcls_init_kwargs(cfg.model, mcfg)
    ckpt_config = checkpoint_config(cfg, "lora", inputs.templates, getattr(mcfg.get_text_config(), "hidden_size", None))
    history: dict[str, Any] = {"eval_metrics": [], "best": None}
    if resume_from is not None and (resume_from / HISTORY_IN_CHECKPOINT).exists():
        history = json.loads((resume_from / HISTORY_IN_CHECKPOINT).read_text(encoding="utf-8"))
    callback = lora_evaluate_callback(run_dir, inputs.pairs_path, ev, tokens, P_eval, cfg.train.per_device_eval_batch_size,
                                      ckpt_config, history)
    trainer = RewardTrainer(model=str(path), args=args, train_dataset=train_ds, eval_dataset=val_ds,
                            processing_class=inputs.tokenizer, quantization_config=bnb_config(cfg.model),
                            peft_config=lora_config(cfg.model, getattr(mcfg.get_text_config(), "num_hidden_layers", None)),
                            callbacks=[callback])
    clear_run_dir(cfg)   # --overwrite: the old run goes only once the model loaded
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
    if dist.is_main_process():
        save_lora_checkpoint(run_dir / "final", trainer.model, ckpt_config,
                             {"eval": history["eval_metrics"][-1], "pairs_sha256": sha256_file(inputs.pairs_path)})
    del trainer, base_before
    gc.collect()
    result: dict = {}
    if dist.is_main_process():
        result = finish_lora_run(cfg, inputs, run_dir, history, ev, tokens, resume_from, {
            "model": {"base": cfg.model.model_name_or_path, **summary, "frozen_base_weights_changed": len(changed)},
            "train_seconds": round(train_s, 2), "total_seconds": round(time.time() - t_start, 1)})
    dist.wait_for_everyone()
    return result


def finish_lora_run(cfg, inputs: Inputs, run_dir: Path, history: dict, ev: EvalInputs, tokens: Tokens,
                    resume_from: Path | None, extra: Mapping) -> dict:
    """The LoRA run's report, from best/ loaded as a reward model on its own (main process)."""
    rm = load_reward_model(run_dir / "best", base_model=cfg.model.model_name_or_path,
                           trust_remote_code=cfg.model.trust_remote_code)
    train_set, train_idx = baseline_train_set(inputs.train_pairs, inputs.templates, tokens, cfg.penalties)
    report = build_report(score_inputs(rm, ev), ev.pairs, train_set, train_idx, ev.probes, ev.probe_rows)
    report.update(checkpoint="best", best=history["best"], entailment=cfg.penalties.entailment, **inputs.sources())
    atomic_write_json(run_dir / "best" / "report.json", report)
    return finish_run(cfg, inputs, run_dir, history, report, extra, resume_from)


# --------------------------------------------------------------------------------------------
# --validate-only and the stage
# --------------------------------------------------------------------------------------------
def validate(cfg) -> dict:
    """--validate-only: load the saved reward model on its own and compute the report again."""
    if cfg.run.torch_threads:
        import torch

        torch.set_num_threads(cfg.run.torch_threads)
    ckpt = resolve_checkpoint(run_dir_of(cfg), cfg.run.checkpoint)
    inputs = read_inputs(cfg)
    rm = load_reward_model(ckpt, trust_remote_code=cfg.model.trust_remote_code)
    config = rm.config
    if (config["max_length"], config["max_response_tokens"]) != (cfg.train.max_length, cfg.run.max_response_tokens):
        log.warning("the checkpoint was trained with max_length %s / max_response_tokens %s; scoring with its own",
                    config["max_length"], config["max_response_tokens"])
    ev = eval_inputs(inputs.val_pairs, inputs.probes, rm.tokens, inputs.examples_by_id)
    train_set, train_idx = baseline_train_set(inputs.train_pairs, inputs.templates, rm.tokens, rm.penalty_options)
    t0 = time.time()
    report = build_report(score_inputs(rm, ev), ev.pairs, train_set, train_idx, ev.probes, ev.probe_rows)
    seconds = time.time() - t0
    report.update(checkpoint=str(ckpt), entailment=rm.penalty_options.entailment, **inputs.sources())
    saved_path = ckpt / "report.json"
    if saved_path.exists():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        check = compare_reports(report, saved)
        if saved.get("pairs_sha256") != report["pairs_sha256"]:
            check.update(reproduced=None, note="not comparable: the pairs file differs from the one the checkpoint "
                                               "was validated on")
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
             fmt(report["metrics"]["model"]["overall"]["roc_auc"]), check.get("reproduced"))
    if check.get("reproduced") is False:   # a validation that fails is an error (exit 2), not a line in a report
        raise RecordError(f"{ckpt}: the saved figures are not reproduced (max |diff| {check.get('max_abs_diff')} at "
                          f"{check.get('where')}, tolerance {check.get('tolerance')}); the checkpoint, its base model "
                          f"or the data changed since it was saved; see {out_dir / 'validation.md'}")
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
    return (f"{head}: val ROC-AUC {fmt(o['roc_auc'])}, accuracy {fmt(o['accuracy'])}, ECE {fmt(o['ece'])}, "
            f"Brier {fmt(o['brier'])} on {o['n']} pairs; gaming probes: honest answer wins >= {fmt(worst)} of every "
            f"trick (penalties on){extra}; report in {result['run_dir']}")


STAGE = Stage("train_rm", RM_SPEC, run, summarize)
