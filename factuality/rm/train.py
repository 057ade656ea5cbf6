"""Training the head over cached features (frozen base).

The head is trained by a small loop over the cached features rather than TRL's RewardTrainer, whose
every step runs the base model: with the base frozen that is one forward pass per sequence per epoch
for nothing (bench/bench_rm.py). The loop honours the RewardConfig options that mean something for
it (learning_rate, batch sizes, gradient_accumulation_steps, num_train_epochs / max_steps,
warmup_steps, lr_scheduler_type, weight_decay, adam_*, max_grad_norm, logging/eval/save steps,
save_total_limit, seed, center_rewards_coefficient). Loss, as TRL's: -log sigmoid(r_chosen -
r_rejected [- margin]), with r the penalised reward when `penalties_in_loss` (the head learns what
the penalties miss).
"""
from __future__ import annotations

import io
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..records import RecordError, atomic_write_bytes, fault_point
from .features import PairIndex
from .metrics import pair_metrics
from .model import bt_loss, head_scores

log = logging.getLogger("factuality.stages.reward")  # the train_rm stage's log


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


def _optimizer(head, args, total: int):
    """AdamW (weight decay on matrices only) and the transformers scheduler RewardConfig names."""
    import torch
    from transformers import get_scheduler

    decay = [p for n, p in head.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in head.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    sched = get_scheduler(str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)), opt,
                          num_warmup_steps=_warmup(args, total), num_training_steps=total,
                          scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    return opt, sched


def _save_state(run_dir: Path, step: int, head, opt, sched, hist: dict, window: list, limit: int | None) -> None:
    """checkpoint-<step>/rm_state.pt (head, optimiser, scheduler, history, loss window), older ones rotated."""
    import torch

    ckpt = run_dir / f"checkpoint-{step}"
    buf = io.BytesIO()
    torch.save({"head": head.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "history": hist, "step": step, "window": window}, buf)
    atomic_write_bytes(ckpt / "rm_state.pt", buf.getvalue())
    _rotate_checkpoints(run_dir, limit, ckpt)
    fault_point(f"rm:saved:{step}")


def load_state(path: Path) -> dict:
    """A head checkpoint's state, read with torch's weights-only loader: tensors, numbers, strings and
    containers of them, never a pickled object (a planted file runs no code; it is refused)."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise RecordError(f"{path}: not a checkpoint state this suite wrote ({' '.join(str(e).split())[:200]}); "
                          f"delete {path.parent.name} to resume from an earlier one, or pass --overwrite") from None


def _step_loss(head, X, P, C, R, M, batch, micro: int, args, use_margin: bool) -> float:
    """Gradients of one optimiser step's pairs (micro-batches of `micro`, accumulated); returns its mean loss."""
    import torch

    loss_sum = 0.0
    for b in range(0, len(batch), micro):
        idx = batch[b:b + micro]
        rc = head(X[C[idx]]) - P[C[idx]]
        rr = head(X[R[idx]]) - P[R[idx]]
        loss = bt_loss(rc, rr, M[idx] if use_margin else None)
        if args.center_rewards_coefficient:
            loss = loss + args.center_rewards_coefficient * torch.mean((rc + rr) ** 2)
        (loss * len(idx) / len(batch)).backward()
        loss_sum += float(loss.detach()) * len(idx) / len(batch)
    return loss_sum


def train_head(cfg, head, X_train: np.ndarray, P_train: np.ndarray, pairs: PairIndex, eval_data: EvalData,
               run_dir: Path, resume_from: Path | None, on_best) -> dict:
    """The hand loop (module docstring). Returns the history; calls on_best(head, metrics) on each new best."""
    import torch

    args, ro = cfg.train, cfg.run
    X = torch.as_tensor(X_train, dtype=torch.float32)
    P = torch.as_tensor(P_train if ro.penalties_in_loss else np.zeros(len(X_train)), dtype=torch.float32)
    C, R = torch.as_tensor(pairs.chosen), torch.as_tensor(pairs.rejected)
    M = torch.as_tensor(pairs.margin, dtype=torch.float32)
    per_step, per_epoch, total = _steps_plan(len(C), args)
    opt, sched = _optimizer(head, args, total)
    seed = args.data_seed if args.data_seed is not None else args.seed
    hist = {"train_losses": [], "train_loss_steps": [], "learning_rates": [], "eval_metrics": [], "best": None,
            "steps_per_epoch": per_epoch, "total_steps": total, "pairs_per_step": per_step}
    step, window = 0, []
    if resume_from is not None:
        state = load_state(resume_from / "rm_state.pt")
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        hist, step, window = state["history"], state["step"], state["window"]
        log.info("resumed from %s at step %d/%d", resume_from, step, total)
    eval_every = _every(args.eval_steps, total) if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "steps" \
        else None
    log_every, save_every = _every(args.logging_steps, total) or 1, _every(args.save_steps, total)

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
        order = _epoch_order(len(C), seed, step // per_epoch)
        at = (step % per_epoch) * per_step
        opt.zero_grad()
        loss_sum = _step_loss(head, X, P, C, R, M, torch.as_tensor(order[at:at + per_step]),
                              args.per_device_train_batch_size, args, ro.use_margin)
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
        if (eval_every and step % eval_every == 0) or step % per_epoch == 0 or step == total:
            evaluate(step / per_epoch)
        if save_every and step % save_every == 0 and step < total:
            _save_state(run_dir, step, head, opt, sched, hist, window, args.save_total_limit)
    head.eval()
    return hist
