"""Supervised fine-tuning: LoRA / QLoRA on the grounded JSON answer (loss on the answer tokens only).

    python train_sft.py -c configs/sft_cpu.yaml                    # embedded SmolLM2-135M on a CPU, minutes
    python train_sft.py -c configs/sft_gemma2.yaml                 # Gemma-2-9B QLoRA on one GPU (the notebook's file)
    python train_sft.py -c configs/sft_cpu.yaml --max-steps 5 --output-dir checkpoints/sft/try   # flags override YAML
    python train_sft.py -c configs/sft_cpu.yaml --resume           # continue from the newest checkpoint-*
    accelerate launch train_sft.py -c configs/sft_gemma2.yaml      # several GPUs (DDP; configs/accelerate/)

Writes <output_dir>/: the LoRA adapter (naming its base by hub id), the tokenizer, config.yaml
(resolved, loadable with -c), run_card.json (input sha256s, versions, seed, losses, truncation
counts) and prompts/. Options: every TRL SFTConfig / TrainingArguments field under its own name,
TRL's ModelConfig fields (model, 4/8-bit, LoRA), and ours (data, batching): `--help` lists them.
"""
import sys

from factuality import cli
from factuality.stages.sft import STAGE

if __name__ == "__main__":
    sys.exit(cli.main(STAGE, __doc__))
