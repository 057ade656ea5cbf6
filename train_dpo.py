"""Direct preference optimisation: train the SFT adapter on preference pairs, the SFT policy as reference.

    python train_dpo.py -c configs/dpo_cpu.yaml                    # embedded SmolLM2-135M on a CPU, minutes
    python train_dpo.py -c configs/dpo.yaml                        # Gemma-2-9B QLoRA from its SFT adapter, one GPU
    python train_dpo.py -c configs/dpo_cpu.yaml --beta 0.2 --loss-type ipo --output-dir checkpoints/dpo/ipo
    python train_dpo.py -c configs/dpo_cpu.yaml --rm-checkpoint checkpoints/rm/best --rm-min-gap 0.5
    python train_dpo.py -c configs/dpo_cpu.yaml --resume           # continue from the newest checkpoint-*
    accelerate launch train_dpo.py -c configs/dpo.yaml             # several GPUs (DDP)

Reads the pairs of --pairs-file (make_prefs.py): split=train pairs train, split=val pairs evaluate,
a test pair is refused. The policy is the --sft-adapter (train_sft.py output), trained; the
reference is a frozen copy of that adapter on the same base (with --precompute-ref-log-probs its
log-probs are computed once and cached on disk). Pairs longer than --max-length lose evidence,
never the question or an answer; those that cannot fit are counted and named in the run card.
Writes <output_dir>/: the DPO adapter (naming its base by hub id), the tokenizer, config.yaml
(resolved, loadable with -c), run_card.json (inputs' sha256s, pair counts, reward-model filter,
rewards/chosen, rejected, margins, accuracies) and prompts/. Options: every TRL DPOConfig /
TrainingArguments field under its own name, TRL's ModelConfig loading fields, and ours: `--help`.
"""
import sys

from factuality import cli
from factuality.stages.dpo import STAGE

if __name__ == "__main__":
    sys.exit(cli.main(STAGE, __doc__))
