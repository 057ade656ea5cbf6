"""Supervised fine-tuning: LoRA on the grounded JSON answer (loss on the answer tokens only).

    python train_sft.py -c configs/sft_cpu.yaml                    # embedded SmolLM2-135M on a CPU, minutes
    python train_sft.py -c configs/sft_gemma2.yaml                 # Gemma-2-9B QLoRA on one GPU
    python train_sft.py -c configs/sft_cpu.yaml --max-steps 5 --run-name try   # CLI flags override YAML keys
    python train_sft.py -c configs/sft_cpu.yaml --resume           # continue from the newest checkpoint-*
    accelerate launch train_sft.py -c configs/sft_gemma2.yaml      # several GPUs (DDP)

Writes checkpoints/sft/<run_name>/: the LoRA adapter, the tokenizer, config.yaml (resolved),
run_card.json (input sha256s, versions, seed, losses, truncation counts) and prompts/.
Every option and its help: `python train_sft.py --help` (fields of factuality.sft.SFTRunConfig).
"""
from __future__ import annotations

import sys

from factuality.config import parse_config
from factuality.sft import SFTRunConfig, main

if __name__ == "__main__":
    main(parse_config(SFTRunConfig, sys.argv[1:], description=__doc__))
