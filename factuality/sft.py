"""Supervised fine-tuning: teach the model the grounded JSON answer with TRL's SFTTrainer + LoRA.

`train_sft.py` is a thin CLI over `main(cfg)`; every option (and its help text) is a field of
`SFTRunConfig` below, which inherits the model-loading options of `modeling.ModelOptions`.

What one training example is:
    prompt   = render_prompt(example, tokenizer, evidence=<evidence cut to fit max_length>)
    target   = completion_text(example, tokenizer)  # gold_target JSON + end-of-turn/EOS
    input_ids = tokens(prompt) + tokens(target)
    labels    = [-100] * len(tokens(prompt)) + tokens(target)   # loss on the answer only
The dataset is tokenised here (not by TRL), so the labels TRL's collator pads are exactly these;
an example longer than max_length loses evidence (non-support chunks first), never answer
tokens, and is counted in the log and the run card (`prompts.fit_evidence`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError
from .modeling import ModelOptions, load_model, load_tokenizer, model_summary, resolve_dtype
from .prompts import PromptTemplates, completion_text, fit_evidence, render_prompt, tokenize_prompt
from .provenance import run_card, set_seed, write_run_card
from .records import atomic_write_text, read_examples, sha256_file, sha256_text

log = logging.getLogger("factuality.sft")

IGNORE_INDEX = -100
BATCHING = ("group_by_length", "padded", "padding_free", "packed")
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class SFTRunConfig(ModelOptions):
    """Options of train_sft.py (the YAML keys and the CLI flags)."""

    # data
    train_file: str = field(default="data/processed/train.jsonl", metadata={"help": "training examples (build_data.py output)"})
    val_file: str | None = field(default="data/processed/val.jsonl", metadata={
        "help": "held-out examples for the eval loss; empty or null to skip evaluation"})
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N training examples (null: all)"})
    max_val_samples: int | None = field(default=None, metadata={"help": "use only the first N validation examples (null: all)"})
    prompts_dir: str | None = field(default=None, metadata={
        "help": "read the prompt templates from this dir (prompt_schema.py save); null: the built-in ones"})
    max_length: int = field(default=2048, metadata={
        "help": "tokens per example (prompt + answer); longer examples lose evidence, never answer tokens"})
    min_chunk_chars: int = field(default=160, metadata={
        "help": "when cutting evidence, shorten distractor chunks to no less than this before dropping them"})
    # output
    output_dir: str = field(default="checkpoints/sft", metadata={"help": "runs are written to <output_dir>/<run_name>/"})
    run_name: str = field(default="default", metadata={"help": "name of this run's directory under output_dir"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest checkpoint-* in the run directory (error if there is none)"})
    overwrite: bool = field(default=False, metadata={"help": "delete an existing run directory of the same name first"})
    merge_adapter: bool = field(default=False, metadata={
        "help": "also save the base model with the adapter merged in (<run>/merged/), for serving without PEFT"})
    # LoRA
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (update scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), metadata={
        "help": "module names that get LoRA adapters (comma-separated on the CLI)"})
    lora_top_layers: int | None = field(default=None, metadata={
        "help": "adapt only the top N transformer layers (null: all); backprop then stops at layer L-N, "
                "which makes CPU training much faster"})
    # optimisation
    per_device_train_batch_size: int = field(default=1, metadata={"help": "sequences per forward pass"})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "sequences per eval forward pass"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate of the LoRA weights"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the training examples"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimiser steps (-1: run the epochs)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of steps with linear warm-up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the LoRA weights"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name (cosine, linear, constant, ...)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    optim: str = field(default="adamw_torch", metadata={"help": "transformers optimiser name (adamw_torch, paged_adamw_8bit, ...)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass: less memory, ~30% slower"})
    batching: str = field(default="group_by_length", metadata={
        "help": "group_by_length (batches of similar length: little padding, any attention kernel), padded "
                "(random batches padded to the longest: TRL's default), padding_free (one flat sequence per batch, "
                "best with flash_attention_2), packed (best-fit packing into max_length rows)",
        "choices": list(BATCHING)})
    seed: int = field(default=42, metadata={"help": "seed for LoRA init, data order and dropout"})
    # logging / checkpoints
    logging_steps: int = field(default=10, metadata={"help": "log the train loss every N optimiser steps"})
    eval_steps: int | None = field(default=None, metadata={"help": "eval loss every N steps (null: only at the end)"})
    save_steps: int = field(default=200, metadata={"help": "write a resumable checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "keep only the newest N checkpoints"})
    report_to: str = field(default="none", metadata={"help": "tracker for the logs: none, tensorboard, wandb, ..."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "data loader worker processes"})
    config_path: str | None = field(default=None, metadata={"help": "set from -c", "cli": False})

    def validate(self) -> None:
        if self.batching not in BATCHING:
            raise ConfigError(f"batching {self.batching!r} is not one of {', '.join(BATCHING)}")
        if self.max_length < 64:
            raise ConfigError(f"max_length ({self.max_length}) is too small for a prompt with evidence; use >= 64")
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("load_in_4bit and load_in_8bit are exclusive; choose one")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; choose one")
        if not self.lora_target_modules:
            raise ConfigError("lora_target_modules is empty; name at least one module (e.g. q_proj,v_proj)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class TokenizeStats:
    examples: int = 0
    kept: int = 0
    truncated: int = 0
    chunks_dropped: int = 0
    chunks_shortened: int = 0
    too_long: int = 0                      # did not fit even with the evidence cut to the bone
    too_long_ids: list[str] = field(default_factory=list)
    tokens: int = 0
    answer_tokens: int = 0
    max_tokens: int = 0

    def line(self, name: str) -> str:
        mean = self.tokens / self.kept if self.kept else 0
        return (f"{name}: kept {self.kept}/{self.examples} examples, {self.truncated} with evidence cut "
                f"({self.chunks_dropped} chunks dropped, {self.chunks_shortened} shortened), "
                f"{self.too_long} too long even then (skipped); mean {mean:.0f} / max {self.max_tokens} tokens, "
                f"{self.answer_tokens} answer tokens")


def tokenize_example(example: dict, tokenizer, max_length: int, templates: PromptTemplates,
                     min_chunk_chars: int = 160) -> tuple[dict | None, Any]:
    """(row with input_ids/labels, FitResult) for one example; row is None when it cannot fit."""
    target_ids = list(tokenizer(completion_text(example, tokenizer, templates), add_special_tokens=False)["input_ids"])
    budget = max_length - len(target_ids)
    fit = fit_evidence(example, tokenizer, budget, templates, min_chunk_chars=min_chunk_chars)
    if not fit.fits:
        return None, fit
    prompt_ids = tokenize_prompt(tokenizer, render_prompt(example, tokenizer, templates, evidence=fit.evidence))
    return {"input_ids": prompt_ids + target_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids}, fit


def build_dataset(examples: list[dict], tokenizer, max_length: int, templates: PromptTemplates,
                  name: str = "train", min_chunk_chars: int = 160):
    """A datasets.Dataset of input_ids/labels, and the TokenizeStats (also logged)."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    stats = TokenizeStats(examples=len(examples))
    rows: dict[str, list] = {"input_ids": [], "labels": []}
    for ex in tqdm(examples, desc=f"tokenising {name}", disable=len(examples) < 200, leave=False):
        row, fit = tokenize_example(ex, tokenizer, max_length, templates, min_chunk_chars)
        if row is None:
            stats.too_long += 1
            stats.too_long_ids.append(ex["id"])
            continue
        stats.kept += 1
        stats.truncated += int(fit.truncated)
        stats.chunks_dropped += len(fit.dropped_ids)
        stats.chunks_shortened += len(fit.shortened_ids)
        n = len(row["input_ids"])
        stats.tokens += n
        stats.max_tokens = max(stats.max_tokens, n)
        stats.answer_tokens += sum(1 for t in row["labels"] if t != IGNORE_INDEX)
        rows["input_ids"].append(row["input_ids"])
        rows["labels"].append(row["labels"])
    log.info(stats.line(name))
    if stats.too_long:
        log.warning("%s: %d examples skipped because the question + answer alone exceed max_length %d (ids: %s); "
                    "raise --max-length", name, stats.too_long, max_length, ", ".join(stats.too_long_ids[:5]))
    if not stats.kept:
        raise ValueError(f"{name}: no example fits max_length {max_length}; raise --max-length")
    return Dataset.from_dict(rows), stats


def load_split(path: str, limit: int | None, what: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: {what} file not found; run `python build_data.py` first or pass --{what}-file")
    examples = read_examples(p)
    if not examples:
        raise ValueError(f"{p}: no examples")
    return examples[:limit] if limit else examples


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------
def lora_config(cfg: SFTRunConfig, num_layers: int | None = None):
    from peft import LoraConfig

    layers = None
    if cfg.lora_top_layers:
        if not num_layers:
            raise ConfigError("lora_top_layers needs a model whose config states num_hidden_layers")
        if not 0 < cfg.lora_top_layers <= num_layers:
            raise ConfigError(f"lora_top_layers ({cfg.lora_top_layers}) must be in 1..{num_layers} (the model's layers)")
        layers = list(range(num_layers - cfg.lora_top_layers, num_layers))
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), layers_to_transform=layers,
                      bias="none", task_type="CAUSAL_LM")


def trainer_args(cfg: SFTRunConfig, has_eval: bool, **overrides):
    """TRL's SFTConfig for this run (mixed precision follows the model dtype)."""
    import torch
    from trl import SFTConfig

    dtype = resolve_dtype(cfg.dtype)
    on_cuda = torch.cuda.is_available()
    kw: dict[str, Any] = dict(
        output_dir=str(cfg.run_dir),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler_type, max_grad_norm=cfg.max_grad_norm, optim=cfg.optim,
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name warns)
        activation_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing=None,
        dataloader_pin_memory=on_cuda,
        bf16=dtype == torch.bfloat16, fp16=on_cuda and dtype == torch.float16,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        eval_strategy=("steps" if cfg.eval_steps else "no") if has_eval else "no",
        eval_steps=cfg.eval_steps if has_eval else None,
        report_to=cfg.report_to, seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_num_workers,
        # The dataset is tokenised and truncated here (evidence side); TRL must not cut it again.
        max_length=cfg.max_length, truncation_mode="keep_start",
        packing=cfg.batching == "packed", packing_strategy="bfd",
        padding_free=cfg.batching == "padding_free",
        train_sampling_strategy="group_by_length" if cfg.batching == "group_by_length" else "random",
        disable_tqdm=not sys.stderr.isatty(),
    )
    if cfg.batching == "padding_free":
        kw["max_length"] = None  # already enforced; TRL refuses max_length with padding_free and no packing
    if not has_eval:
        kw["eval_strategy"] = "no"
    kw.update(overrides)
    return SFTConfig(**kw)


def build_trainer(cfg: SFTRunConfig, train_ds, eval_ds, tokenizer, model=None, callbacks=None, **arg_overrides):
    """The SFTTrainer (model loaded through modeling.load_model, LoRA from the config)."""
    from trl import SFTTrainer

    if model is None:
        model = load_model(cfg, is_trainable=True)
    num_layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    args = trainer_args(cfg, has_eval=eval_ds is not None, **arg_overrides)
    return SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, peft_config=lora_config(cfg, num_layers), callbacks=callbacks)


def find_last_checkpoint(run_dir: Path) -> Path | None:
    ckpts = [p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


def _prepare_run_dir(cfg: SFTRunConfig) -> Path | None:
    """Checks the run dir against --resume/--overwrite; returns the checkpoint to resume from."""
    run_dir = cfg.run_dir
    last = find_last_checkpoint(run_dir) if run_dir.exists() else None
    if cfg.resume:
        if last is None:
            raise FileNotFoundError(f"{run_dir}: --resume given but there is no checkpoint-* to resume from")
        log.info("resuming from %s", last)
        return last
    if run_dir.exists() and any(run_dir.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(f"{run_dir}: run directory exists; pass --resume to continue it, --overwrite to "
                                  f"start over, or another --run-name")
        shutil.rmtree(run_dir)
    return None


def _losses(log_history: list[dict]) -> dict:
    train = [h["loss"] for h in log_history if "loss" in h]
    evals = [h["eval_loss"] for h in log_history if "eval_loss" in h]
    return {"first_train_loss": train[0] if train else None, "final_train_loss": train[-1] if train else None,
            "final_eval_loss": evals[-1] if evals else None, "train_loss_log": train}


def save_merged(cfg: SFTRunConfig, adapter_dir: Path, tokenizer) -> Path:
    """Base model (unquantised) + adapter merged into plain weights under <run>/merged/."""
    opts = dataclasses.replace(cfg, load_in_4bit=False, load_in_8bit=False)
    model = load_model(opts, adapter_path=adapter_dir).merge_and_unload()
    out = adapter_dir / "merged"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("factuality").setLevel(logging.INFO)


def main(cfg: SFTRunConfig) -> dict:
    """Train, save adapter + tokenizer + resolved config + run card; returns the run card."""
    setup_logging()
    set_seed(cfg.seed)
    import torch

    torch.manual_seed(cfg.seed)
    resume_from = _prepare_run_dir(cfg)
    run_dir = cfg.run_dir
    templates = PromptTemplates.from_dir(cfg.prompts_dir)

    train_examples = load_split(cfg.train_file, cfg.max_samples, "train")
    val_examples = load_split(cfg.val_file, cfg.max_val_samples, "val") if cfg.val_file else []
    tokenizer = load_tokenizer(cfg.model_name_or_path, padding_side="right", trust_remote_code=cfg.trust_remote_code)
    train_ds, train_stats = build_dataset(train_examples, tokenizer, cfg.max_length, templates, "train", cfg.min_chunk_chars)
    eval_ds, val_stats = (build_dataset(val_examples, tokenizer, cfg.max_length, templates, "val", cfg.min_chunk_chars)
                          if val_examples else (None, None))

    trainer = build_trainer(cfg, train_ds, eval_ds, tokenizer)
    summary = model_summary(trainer.model)
    steps_per_epoch = math.ceil(len(train_ds) / (cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps))
    log.info("model %s: %d params, %d trainable (LoRA r=%d on %s); %d train examples -> %d steps/epoch",
             cfg.model_name_or_path, summary["params"], summary["trainable_params"], cfg.lora_r,
             ",".join(cfg.lora_target_modules), len(train_ds), steps_per_epoch)

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_s = time.time() - t0
    eval_metrics = trainer.evaluate() if eval_ds is not None else {}
    trainer.save_model(str(run_dir))  # adapter + tokenizer (processing_class)
    templates.save(run_dir / "prompts")  # the exact prompt format this adapter was trained on

    merged = str(save_merged(cfg, run_dir, tokenizer)) if cfg.merge_adapter else None
    losses = _losses(trainer.state.log_history)
    if eval_metrics.get("eval_loss") is not None:
        losses["final_eval_loss"] = eval_metrics["eval_loss"]
    inputs = [cfg.train_file] + ([cfg.val_file] if cfg.val_file else []) + ([cfg.config_path] if cfg.config_path else [])
    card = run_card(
        "train_sft.py", dataclasses.asdict(cfg), {p: sha256_file(p) for p in inputs},
        seed=cfg.seed, run_dir=str(run_dir), resumed_from=str(resume_from) if resume_from else None,
        data={"train": dataclasses.asdict(train_stats), "val": dataclasses.asdict(val_stats) if val_stats else None},
        model=summary, global_step=trainer.state.global_step, train_seconds=round(train_s, 1),
        train_loss_mean=result.training_loss, losses=losses, merged_dir=merged,
        tokenizer={"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
                   "chat_template_sha256": _sha(tokenizer.chat_template)},
    )
    write_run_card(run_dir / "run_card.json", card)
    log.info("done in %.0f s: %d steps, train loss %s -> %s, eval loss %s; adapter in %s", train_s,
             trainer.state.global_step, _fmt(losses["first_train_loss"]), _fmt(losses["final_train_loss"]),
             _fmt(losses["final_eval_loss"]), run_dir)
    return card


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _sha(text: str | None) -> str | None:
    return sha256_text(text) if text else None


def dump_config(cfg: SFTRunConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)
