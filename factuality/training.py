"""What every training stage (train_sft, train_rm, train_dpo) shares: the run folder's options and
life (resume from the newest complete checkpoint, replace only once the new inputs passed their
checks, the finished-run card), the derivation of TRL training options from ours (mixed precision
from dtype and hardware, CPU processes, batching, evaluation schedule), LoRA from the model
options, the merged save, the resolved config written beside a run, and the loss summaries."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dist
from .compat import rename_training_values
from .config import ConfigError, to_dict
from .modeling import ModelOptions, base_model_id, load_model, resolve_dtype
from .paths import VAL_FILE
from .records import atomic_write_json, claim, fault_point, sha256_text

log = logging.getLogger(__name__)

DEFAULT_BATCHING = "group_by_length"           # train_sft's batching default (SFTOptions.batching)


@dataclass
class RunFolderOptions:
    """What every training stage does with its run folder (output_dir): resume it, replace it, merge."""

    resume: bool = field(default=False, metadata={
        "help": "continue from the newest complete checkpoint-* in output_dir (error if there is none)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing run in output_dir (only once the new run's inputs have been checked)"})
    merge_adapter: bool = field(default=False, metadata={
        "help": "also save the base model with the adapter merged in (<output_dir>/merged/), for serving without PEFT"})
    config_path: str | None = field(default=None, metadata={"help": "set from -c", "cli": False})

    def validate(self) -> None:
        if getattr(self, "prompts_dir", None) in ("", "default"):
            self.prompts_dir = None
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; choose one")


# Our recipe defaults for TRL's SFTConfig (TRL's own defaults assume a GPU: bf16, fused AdamW,
# gradient checkpointing). Each can be set from YAML or the CLI under its TRL name.
TRAINING_DEFAULTS: dict[str, Any] = dict(
    max_length=2048, per_device_train_batch_size=1, per_device_eval_batch_size=4, num_train_epochs=1.0,
    lr_scheduler_type="cosine", optim="adamw_torch", gradient_checkpointing=None, activation_checkpointing=False,
    logging_steps=10, logging_first_step=True, save_steps=200, save_total_limit=2, report_to="none", seed=42,
    truncation_mode="keep_start",  # examples and pairs are fitted here (evidence side); TRL must not cut them again
)


def cuda_support():
    import torch

    return torch.cuda.is_available(), torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def prepare_training_values(values: dict[str, dict], explicit: set[str], batching_key: str | None = "batching",
                            has_val: bool | None = None) -> None:
    """Derive TRL training options from ours, unless the user set them by their TRL name:
    mixed precision from the model dtype and the hardware, batching mode, evaluation schedule.
    `batching_key=None`: the stage has no batching option (its trainer batches as TRL does);
    `has_val`: whether the stage evaluates (default: a `val_file` is set)."""
    import sys

    import torch

    t, m, r = values["train"], values["model"], values.get("run", {})
    cuda, cuda_bf16 = cuda_support()
    rename_training_values(t, explicit)  # compat.TRAINING_RENAMES (gradient_checkpointing)
    dtype = resolve_dtype(m.get("dtype", "auto"))
    for flag, want, ok in (("bf16", dtype == torch.bfloat16, cuda_bf16), ("fp16", dtype == torch.float16, cuda)):
        if flag not in explicit:
            t[flag] = bool(want and ok)
        elif t.get(flag) and not ok:
            log.warning("%s: true needs a GPU with %s support; none here, so training runs in float32", flag, flag)
            t[flag] = False
    if "use_cpu" not in explicit and not cuda and dist.world_size() > 1:
        t["use_cpu"] = True  # several processes on CPUs: DDP over gloo (accelerate's MULTI_CPU)
    if "dataloader_pin_memory" not in explicit:
        t["dataloader_pin_memory"] = cuda
    if "disable_tqdm" not in explicit:
        t["disable_tqdm"] = not sys.stderr.isatty()
    if "data_seed" not in explicit and t.get("seed") is not None:
        t["data_seed"] = t["seed"]
    if batching_key is not None and not explicit & {"packing", "padding_free", "train_sampling_strategy"}:
        batching = r.get(batching_key, DEFAULT_BATCHING)
        t["packing"] = batching == "packed"
        t["padding_free"] = batching == "padding_free"
        t["train_sampling_strategy"] = "group_by_length" if batching == "group_by_length" else "random"
    if has_val is None:
        has_val = bool(r.get("val_file", VAL_FILE))   # default: SFT's val split
    if "eval_strategy" not in explicit:
        t["eval_strategy"] = "steps" if has_val and t.get("eval_steps") else "no"
    elif not has_val:
        t["eval_strategy"] = "no"


def run_dir_of(cfg) -> Path:
    return Path(cfg.train.output_dir)


def lora_config(model_opts: ModelOptions, num_layers: int | None = None):
    """PEFT LoraConfig from the model options (TRL's get_peft_config, plus lora_top_layers); None
    when use_peft is off (full fine-tuning)."""
    from trl import get_peft_config

    peft = get_peft_config(model_opts)
    if peft is None or not model_opts.lora_top_layers:
        return peft
    if not num_layers:
        raise ConfigError("lora_top_layers needs a model whose config states num_hidden_layers")
    if not 0 < model_opts.lora_top_layers <= num_layers:
        raise ConfigError(f"lora_top_layers ({model_opts.lora_top_layers}) must be in 1..{num_layers} (the model's layers)")
    peft.layers_to_transform = list(range(num_layers - model_opts.lora_top_layers, num_layers))
    return peft


def checkpoint_complete(ckpt: Path) -> bool:
    """transformers writes trainer_state.json last into a checkpoint: a checkpoint whose state
    file is missing or unreadable was cut by a kill during saving. Our own training loops (the
    reward head) write one `*_state.pt` atomically, so its presence means complete."""
    if any(ckpt.glob("*_state.pt")):
        return True
    try:
        json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any((ckpt / f).is_file() and (ckpt / f).stat().st_size > 0
               for f in ("adapter_model.safetensors", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"))


def find_last_checkpoint(run_dir: Path, complete_only: bool = True) -> Path | None:
    """The newest checkpoint-N under run_dir (only complete ones by default), or None."""
    ckpts = sorted((p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for p in ckpts:
        if not complete_only or checkpoint_complete(p):
            return p
    return None


def resume_point(run_dir: Path) -> Path:
    """The checkpoint --resume continues from: the newest complete one; an incomplete newer one
    (a kill while saving) is reported and skipped."""
    newest = find_last_checkpoint(run_dir, complete_only=False)
    last = find_last_checkpoint(run_dir)
    if last is None:
        raise FileNotFoundError(f"{run_dir}: --resume given but there is no complete checkpoint-* to resume from")
    if newest != last:
        log.warning("%s is incomplete (killed while saving?); resuming from %s instead", newest, last.name)
    return last


def finished_run(run_dir: Path) -> dict | None:
    """The run card of a run that finished (it is written last), else None."""
    card = run_dir / "run_card.json"
    if not card.is_file():
        return None
    try:
        return json.loads(card.read_text(encoding="utf-8"))
    except ValueError:
        return None


def save_fault_callback():
    """A trainer callback marking each checkpoint save as a named fault point (`sft:saved:<step>`),
    so tests can SIGKILL a real run right after a given checkpoint (records.fault_point)."""
    from transformers import TrainerCallback

    class SaveFaultPoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            fault_point(f"sft:saved:{state.global_step}")

    return SaveFaultPoint()


class StopsAtMaxSteps:
    """Mixin for a transformers Trainer: a run resumed from its final checkpoint trains no further
    step. transformers' loop fast-forwards the data past the checkpoint's step and checks for the
    end only after the next optimizer step, so a checkpoint at `max_steps` mid-epoch used to train
    step max_steps + 1 on resume (a kill between the final adapter and run_card.json)."""

    def _run_epoch(self, *args, **kwargs):
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)


RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "model.safetensors", "run_card.json")


def holds_a_run(run_dir: Path) -> bool:
    """A folder holds a run when it has a checkpoint or saved weights (a run that failed before
    its first checkpoint left nothing worth keeping and does not block the corrected command)."""
    return run_dir.is_dir() and (find_last_checkpoint(run_dir) is not None or
                                 any((run_dir / f).exists() for f in RUN_FILES))


def check_run_dir(cfg) -> Path | None:
    """Claims the run dir (one run writes it at a time: `records.claim`) and checks it against
    --resume/--overwrite (no changes); the checkpoint to resume from."""
    run_dir = run_dir_of(cfg)
    if dist.is_main_process():
        claim(run_dir)
    if cfg.run.resume:
        return resume_point(run_dir)
    if holds_a_run(run_dir) and not cfg.run.overwrite:
        raise FileExistsError(f"{run_dir}: a run exists here; pass --resume to continue it, --overwrite to "
                              f"replace it, or another --output-dir")
    return None


def clear_run_dir(cfg, barrier: bool = True) -> None:
    """--overwrite: the main process removes the old run (called once the new inputs passed their
    checks and the model loaded); `barrier=False` where only the main process gets here."""
    run_dir = run_dir_of(cfg)
    if cfg.run.overwrite and run_dir.exists() and dist.is_main_process():
        log.info("--overwrite: removing the previous run in %s", run_dir)
        shutil.rmtree(run_dir)
    if barrier:
        dist.wait_for_everyone()


def losses_of(log_history: list[dict]) -> dict:
    train = [h["loss"] for h in log_history if "loss" in h]
    evals = [h["eval_loss"] for h in log_history if "eval_loss" in h]
    return {"first_train_loss": train[0] if train else None, "final_train_loss": train[-1] if train else None,
            "final_eval_loss": evals[-1] if evals else None, "train_loss_log": train}


def save_merged(cfg, adapter_dir: Path, tokenizer) -> Path:
    """Base model (unquantised) + adapter merged into plain weights under <run>/merged/."""
    opts = dataclasses.replace(cfg.model, load_in_4bit=False, load_in_8bit=False)
    model = load_model(opts, adapter_path=adapter_dir).merge_and_unload()
    out = adapter_dir / "merged"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def name_base_by_hub_id(run_dir: Path, model_name: str) -> str | None:
    """Make the saved adapter name its base by hub id (the embedded model's cache path means
    nothing on another machine), and list its target modules sorted (PEFT writes a set, whose order
    changes from one process to the next: the same adapter would get another fingerprint, and every
    cache keyed by it would miss). Returns the recorded base name."""
    path = run_dir / "adapter_config.json"
    if not path.exists():
        return None
    acfg = json.loads(path.read_text(encoding="utf-8"))
    acfg["base_model_name_or_path"] = base_model_id(model_name)
    if isinstance(acfg.get("target_modules"), list):
        acfg["target_modules"] = sorted(acfg["target_modules"])
    atomic_write_json(path, acfg)
    return acfg["base_model_name_or_path"]


def effective_batch(cfg) -> int:
    return cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps * dist.world_size()


def flat_config(cfg, train_defaults: dict[str, Any]) -> dict:
    """The resolved config as one flat mapping, loadable again with -c: our options, the model
    options, and the training options that were set (by the user or by the recipe defaults,
    `train_defaults`: the stage's). Values derived from others (mixed precision,
    batching flags) are left out and derived again; the run card holds every resolved
    TrainingArguments value."""
    out: dict[str, Any] = {k: v for k, v in to_dict(cfg.run).items() if k != "config_path"}
    out.update(to_dict(cfg.model))
    train = to_dict(cfg.train)
    for k in list(train_defaults) + sorted(cfg.explicit):
        if k in train and k not in out and (k in cfg.explicit or k not in DERIVED_TRAIN_KEYS):
            out[k] = train[k]
    return out


# Keys prepare_training_values derives from others; a saved config leaves them out unless set by the user.
DERIVED_TRAIN_KEYS = ("bf16", "fp16", "dataloader_pin_memory", "disable_tqdm", "data_seed", "packing",
                      "padding_free", "train_sampling_strategy", "eval_strategy", "gradient_checkpointing")


def fit_stats_line(stats, name: str, total: int, unit: str, skipped_too: str = "", tokens_note: str = "") -> str:
    """The log line of a stage's fitting stats (sft.TokenizeStats, dpo_pairs.PairStats): what was
    kept of `total` `unit`, how many lost evidence and how many were skipped as too long (plus
    `skipped_too`), and the mean / max tokens (followed by `tokens_note`)."""
    mean = stats.tokens / stats.kept if stats.kept else 0
    return (f"{name}: kept {stats.kept}/{total} {unit}, {stats.truncated} with evidence cut "
            f"({stats.chunks_dropped} chunks dropped, {stats.chunks_shortened} shortened), {stats.too_long} too long "
            f"even then{skipped_too} (skipped); mean {mean:.0f} / max {stats.max_tokens} tokens{tokens_note}")


def fmt_loss(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def sha_or_none(text: str | None) -> str | None:
    return sha256_text(text) if text else None
