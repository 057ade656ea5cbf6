"""DPO's trainer: the SFT adapter as the trained policy, TRL's frozen copy of it as the reference,
pairs sampled by weight, reward metrics logged, and the reference log-probs cached on disk.

The policy and the reference. The policy is the SFT adapter itself, loaded trainable on the base
model ("default"). Given such a PeftModel and no ref_model, TRL 1.16's DPOTrainer adds a frozen
copy of it named "ref" and computes the reference log-probs with "ref" active: the reference is
the SFT policy (base + SFT adapter), with one copy of the base in memory (a LoRA adapter more, not
a second model). Disabling the adapter would give the base, not the SFT policy; TRL 1.16 has no
`model_adapter_name` / `ref_adapter_name` options, and `build_trainer` refuses to go on when the
"ref" adapter is missing. With `precompute_ref_log_probs: true` the reference log-probs are
computed once, before training, with that same "ref" adapter (TRL's `compute_ref_log_probs`) and
cached on disk under `ref_cache_dir`, keyed by a sha256 of the base model, the SFT adapter's
weights, the tokenised pairs, max_length and ld_alpha (`use_cached_reference`).

`cfg` is a train_dpo config (factuality.stages.dpo's spec): run (sft_adapter, ref_cache_dir,
answer_only_head), model (ModelOptions) and train (TRL's DPOConfig).
"""
from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import dist, heads
from .config import ConfigError
from .dpo_pairs import TOKEN_COLUMNS
from .modeling import cache_dir, load_model, resolve_dtype, resolve_model_path
from .records import (
    SCHEMA_VERSION,
    Contract,
    JsonlAppender,
    discard_if_tampered,
    seal,
    atomic_write_json,
    read_jsonl,
    sha256_file,
    sha256_json,
)
from .training import StopsAtMaxSteps, fmt_loss

# train_dpo's log lines keep the logger name they have always had
log = logging.getLogger("factuality.stages.dpo")

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
REF_ADAPTER = "ref"        # the name TRL gives the frozen copy of the adapter it trains
POLICY_ADAPTER = "default"


# --------------------------------------------------------------------------------------------
# The SFT adapter: the policy
# --------------------------------------------------------------------------------------------
def sft_adapter_dir(cfg) -> Path:
    p = Path(cfg.run.sft_adapter)
    if not (p / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{p}: no adapter_config.json here; pass --sft-adapter the directory train_sft.py wrote "
                                f"(its output_dir, e.g. checkpoints/sft/<run>) or one of its checkpoint-* dirs")
    return p


def load_policy(cfg):
    """Base + the SFT adapter, trainable, under PEFT's adapter name "default": the DPO policy."""
    return load_model(cfg.model, adapter_path=sft_adapter_dir(cfg), is_trainable=True)


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

    class GroundedDPOTrainer(StopsAtMaxSteps, DPOTrainer):
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
            discard_if_tampered(cache_file)
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
            seal(cache_file)
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

