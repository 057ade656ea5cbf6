"""DPO throughput and memory of the LM head only at completion positions, against TRL's own head.

    python bench/bench_dpo_head.py                          # scaled-tiny body, SmolLM2's and a 256,000 vocabulary, ~8 min on 2 cores
    python bench/bench_dpo_head.py --vocabs smollm2 --steps 6 --batch-size 4      # ~2 min

Variants (each in a fresh subprocess, so peak memory is its own), all training the same random
stand-in SFT adapter with factuality.dpo_trainer.build_trainer on the same fitted pairs, batch size, lr and
steps, with a live reference pass each step (TRL's default for a PEFT policy):
- trl-default: TRL's batching (chosen and rejected rows padded to the longest) and TRL's fused LM
  head (`answer_only_head: false`), i.e. TRL's DPOTrainer as it comes and train_dpo.py before the
  option (TRL 1.16 turns `padding_free` off for DPO, so there is no padding-free DPO to compare);
- answer_only: the same batches with the head applied at completion positions only, for the
  policy and the reference (`answer_only_head: true`, factuality/heads.py; train_dpo.py's default).
Reported: training tokens/s (real tokens of chosen + rejected sequences, policy steps after a
warm-up step), seconds per step, the peak resident memory of the process (CPU) or peak
allocated CUDA memory, and both as ratios against trl-default, per vocabulary: smollm2 (49,152
entries) and 256000 (Gemma-2's size), both on the same 4-layer, 256-wide random body
(bench_sft.make_scaled_tiny). Pairs: bench_dpo.make_pairs over --data (build_data.py's train split; generated,
shorter examples where that file is missing: the summary names which).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VARIANTS = ("trl-default", "answer_only")


def worker(args) -> dict:
    import torch
    from bench_dpo import timed_dpo_trainer
    from bench_sft import timed_train

    from factuality.config import parse_config
    from factuality.stages.dpo import DPO_SPEC

    torch.manual_seed(0)
    out_dir = tempfile.mkdtemp(prefix="bench_dpo_head_")
    cfg = parse_config(DPO_SPEC, [], model_name_or_path=args.model_path, sft_adapter=args.sft_adapter,
                       pairs_file=args.pairs_file, output_dir=out_dir, dtype="auto", max_length=args.max_length,
                       per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                       learning_rate=1e-5, max_steps=args.steps, warmup_steps=0, lr_scheduler_type="constant",
                       logging_steps=1000, save_strategy="no", seed=0, disable_tqdm=True,
                       answer_only_head=args.variant == "answer_only")
    trainer, _, stats, step_seconds = timed_dpo_trainer(cfg, args.model_path)
    collate, batch_tokens = trainer.data_collator, []

    def counting(features):  # real (non-pad) tokens of every batch, chosen and rejected rows together
        batch = collate(features)
        mask = batch.get("attention_mask")
        batch_tokens.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    run = timed_train(trainer)
    timed, tokens = step_seconds[1:], batch_tokens[1:len(step_seconds)]  # the first step is a warm-up
    return {"variant": args.variant, "lm_head": trainer.lm_head_mode, "steps": run["steps"],
            "seconds": run["seconds"], "timed_seconds": round(sum(timed), 2), "timed_tokens": sum(tokens),
            "tokens_per_s": round(sum(tokens) / sum(timed), 1) if timed else None,
            "seconds_per_step": round(sum(timed) / len(timed), 2) if timed else None,
            "peak_mib": run["peak_mib"], "rss_before_mib": run["rss_before_mib"], "memory_kind": run["memory_kind"],
            "train_loss": run["train_loss"], "pairs": stats.kept,
            "mean_tokens": round(stats.tokens / max(stats.kept, 1))}


def main(argv=None) -> int:
    from bench_sft import add_data_arg

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocabs", default="smollm2,256000", help="output vocabularies of the scaled-tiny body, in turn")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)}; the first is the baseline")
    add_data_arg(p)
    p.add_argument("--pairs", type=int, default=16, help="pairs the steps draw from")
    p.add_argument("--batch-size", type=int, default=2, help="pairs per step")
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per variant (the first is a warm-up)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--sft-adapter", help=argparse.SUPPRESS)
    p.add_argument("--pairs-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.variant:  # worker mode
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    from bench_dpo import make_sft_adapter, worker_cmd, write_pairs
    from bench_sft import data_label, memory_note, pick_variants, run_variant, scaled_tiny_path

    variants = pick_variants(p, args.variants, VARIANTS)
    work = Path(tempfile.gettempdir()) / "factuality-bench-dpo-head"
    every = []
    for vocab in [v.strip() for v in args.vocabs.split(",") if v.strip()]:
        model_path = str(scaled_tiny_path(vocab))
        adapter = str(make_sft_adapter(model_path, work / f"sft-{Path(model_path).name}", top_layers=4))
        pairs_file = write_pairs(args, model_path, work / "pairs.jsonl")
        results = []
        for v in variants:
            print(f"vocabulary {vocab}: running {v} ...", flush=True)
            r = dict(run_variant(worker_cmd(__file__, v, args, model_path, adapter, pairs_file), v), vocab=vocab)
            results.append(r)
            print(f"  {v}: {r['tokens_per_s']} tokens/s, {r['seconds_per_step']} s/step, peak {r['peak_mib']} MiB",
                  flush=True)
        base = results[0]
        print(f"\nscaled-tiny body, vocabulary {vocab}, {base['pairs']} pairs of {data_label(args.data)} (mean {base['mean_tokens']} "
              f"tokens, prompt + longer completion), {args.batch_size} pairs per step, {args.steps} steps (first one "
              f"untimed), live reference; baseline {base['variant']}; 'before' = the process's peak before training "
              f"(runtime, model, adapter)")
        print(f"{'variant':<14} {'s/step':>7} {'tokens/s':>9} {'before MiB':>10} {'peak MiB':>9} {'speed-up':>8} "
              f"{'mem ratio':>9}")
        for r in results:
            r["speedup"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            r["memory_ratio"] = round(r["peak_mib"] / base["peak_mib"], 2)
            print(f"{r['variant']:<14} {r['seconds_per_step']:>7.2f} {r['tokens_per_s']:>9.1f} {r['rss_before_mib']:>10} "
                  f"{r['peak_mib']:>9} "
                  f"{r['speedup']:>7.2f}x {r['memory_ratio']:>8.2f}x")
        print(memory_note(base["memory_kind"]) + "\n")
        every += results
    if args.out:
        Path(args.out).write_text(json.dumps(every, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
