"""Reward model: Bradley-Terry on preference pairs, anti-gaming penalties, ROC-AUC / calibration / probe report.

    python train_rm.py -c configs/rm.yaml                                    # the notebook's file (Gemma-2-9B, one GPU)
    python train_rm.py -c configs/rm.yaml --validate-only --checkpoint best  # reload best/ and recompute the report
    python train_rm.py -c configs/rm_cpu.yaml                                # embedded SmolLM2-135M on a CPU, ~2 minutes
    python train_rm.py -c configs/rm_cpu.yaml --resume                       # continue a killed run
    python train_rm.py -c configs/rm.yaml --pairs-path prefs/preferences_<signature>.jsonl --use-peft true

Reads the pairs of make_prefs.py (default: the newest prefs/preferences_*.jsonl; --synthetic-pairs
true makes them from data/processed without a model). Writes <output_dir>/: best/ and final/ (load
with factuality.rm.load_reward_model(path).score(prompts, responses)), checkpoint-*/,
training_history.json (train_losses, eval_metrics), rm_report.json / .md (ROC-AUC, accuracy, ECE,
Brier overall and per pair kind, baselines, gaming probes), reliability.png, training_curves.png,
config.yaml and run_card.json. Options: TRL's RewardConfig / TrainingArguments fields under their own
names, TRL's ModelConfig fields, the five penalty weights, and ours: `--help` lists them.
"""
import sys

from factuality import cli
from factuality.stages.reward import STAGE

if __name__ == "__main__":
    sys.exit(cli.main(STAGE, __doc__))
