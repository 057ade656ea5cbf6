"""The LoRA option's pieces around TRL's RewardTrainer: its pretokenised pair columns, the callback that
evaluates with this package's metrics and saves best/, and a check that the frozen base stayed frozen."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

from .. import dist
from ..records import atomic_write_json, sha256_file
from .features import Tokens
from .metrics import pair_metrics
from .model import bt_loss, save_lora_checkpoint, seqcls_scores
from .scoring import EvalInputs

log = logging.getLogger("factuality.stages.reward")  # the train_rm stage's log

HISTORY_IN_CHECKPOINT = "rm_history.json"


def lora_dataset(pairs, tokens: Tokens, use_margin: bool):
    """RewardTrainer's pretokenised columns (chosen_ids, rejected_ids, margin with use_margin)."""
    from datasets import Dataset

    cols = {"chosen_ids": [tokens.full(p["prompt"], p["chosen"]) for p in pairs],
            "rejected_ids": [tokens.full(p["prompt"], p["rejected"]) for p in pairs]}
    if use_margin:
        cols["margin"] = [float(p["margin"]) for p in pairs]
    return Dataset.from_dict(cols)


def lora_evaluate_callback(run_dir: Path, pairs_path: Path, ev: EvalInputs, tokens: Tokens, P_eval, bs: int,
                           ckpt_config: Mapping, history: dict):
    """A TrainerCallback computing our metrics of the penalised reward (penalty totals P_eval) on the
    val pairs at each evaluation, saving best/ by ROC-AUC, and writing `history` into each checkpoint."""
    from transformers import TrainerCallback

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
                                     {"eval": m, "pairs_sha256": sha256_file(pairs_path)})
            log.info("eval step %d: ROC-AUC %.4f, accuracy %.4f, ECE %.4f, Brier %.4f", m["step"], m["roc_auc"],
                     m["accuracy"], m["ece"], m["brier"])

        def on_save(self, args, state, control, **kwargs):
            if dist.is_main_process():
                atomic_write_json(run_dir / f"checkpoint-{state.global_step}" / HISTORY_IN_CHECKPOINT, history)

    return Evaluate()


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach().cpu(), b.detach().cpu()))
