"""DPO throughput: cached reference log-probs against a live reference pass each step, same pairs.

    python bench/bench_dpo.py --sft-adapter /tmp/sft4     # the embedded model + an SFT adapter of it, ~10 min on 2 cores
    python bench/bench_dpo.py                             # the embedded model + a random LoRA on its top 12 layers
    python bench/bench_dpo.py --model scaled-tiny --steps 6 --pairs 24    # a random 4-layer model (LM head dominates)

Variants (each in a fresh subprocess, so peak memory is its own; `--rounds` alternates them, so a
machine whose load drifts affects both alike), both training the same SFT adapter with
factuality.dpo_trainer.build_trainer on the same fitted pairs, batch size, lr and steps:
- live: the reference log-probs come from a forward pass with the frozen "ref" adapter each step
  (TRL's default for a PEFT policy);
- cached: they are computed once before training (`precompute_ref_log_probs`, one forward pass
  per pair, into a fresh on-disk cache) and read from the batches; each step skips the reference pass.
Reported: seconds per optimiser step (the median over the timed steps of every round; each
round's first step, a warm-up, is left out) and steps/s, the one-off precompute time of the
cached variant and the steps after which it has paid for itself, the peak resident memory of the
process (CPU) or peak allocated CUDA memory, and the ratios cached / live. Without --sft-adapter,
a LoRA with random (non-zero) weights on the top 12 layers (the shape configs/sft_cpu.yaml trains)
stands in for the SFT adapter. Pairs: data/processed/train.jsonl when it exists, else generated
examples; each pair is the gold answer against a wrong one citing a distractor.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VARIANTS = ("live", "cached")


def make_pairs(args, tok) -> list[dict]:
    """PREFERENCE records: gold answer (chosen) against a wrong answer citing a distractor (rejected)."""
    from factuality.prompts import dump_output, gold_output, render_prompt
    from factuality.records import PREFERENCE, SCHEMA_VERSION, read_examples
    from factuality.testing import make_example

    if Path(args.data).exists():
        examples = [e for e in read_examples(args.data) if len(e["evidence"]) > 1][: args.pairs]
    else:
        examples = [make_example(i, n_chunks=2 + i % 5, gold_position=i % 2, answerable=i % 4 != 3, split="train")
                    for i in range(args.pairs)]
    pairs = []
    for ex in examples:
        gold = gold_output(ex)
        wrong = next(c["id"] for c in reversed(ex["evidence"]) if c["id"] not in gold["citations"])
        rejected = {"answer": "Garth Brooks" if ex["answerable"] else ex["evidence"][0]["title"] or "Paris",
                    "citations": [wrong], "confidence": 0.9}
        pairs.append(PREFERENCE.validate({
            "schema_version": SCHEMA_VERSION, "id": f"{ex['id']}#0", "example_id": ex["id"], "split": "train",
            "source": ex["source"], "prompt": render_prompt(ex, tok), "chosen": dump_output(gold),
            "rejected": dump_output(rejected), "margin": 1.0, "chosen_score": 1.0, "rejected_score": 0.0,
            "kind": "perturb:answer", "chosen_origin": "gold", "rejected_origin": "perturb:answer",
            "evidence": [{"id": c["id"], "title": c.get("title", ""), "text": c["text"]} for c in ex["evidence"]],
            "support_ids": sorted({s["chunk_id"] for s in ex["support"]}), "hard_negative_ids": ex["hard_negatives"],
            "answerable": ex["answerable"], "answers": ex["answers"]}))
    return pairs


def make_sft_adapter(model_path: str, out: Path, top_layers: int = 12) -> Path:
    """A LoRA on every projection of the top layers with random (non-zero) A and B: stands in for an SFT adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    from factuality.modeling import DEFAULT_TARGET_MODULES, load_model

    if (out / "adapter_config.json").exists():
        return out
    torch.manual_seed(0)
    base = load_model(model_path)
    n = base.config.num_hidden_layers
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=DEFAULT_TARGET_MODULES,
                                            layers_to_transform=list(range(max(0, n - top_layers), n)),
                                            init_lora_weights=False))
    model.save_pretrained(out)
    return out


def write_pairs(args, model_path: str, path: Path) -> Path:
    """make_pairs of --data / --pairs, tokenised for model_path, written to path."""
    from factuality.modeling import load_tokenizer
    from factuality.records import PREFERENCE, write_jsonl

    write_jsonl(path, make_pairs(args, load_tokenizer(model_path)), PREFERENCE)
    return path


def worker_cmd(script: str, variant: str, args, model_path: str, adapter: str, pairs_file: Path) -> list[str]:
    """The command line of one DPO bench variant's worker process (`script --variant ...`)."""
    return [sys.executable, script, "--variant", variant, "--model-path", model_path, "--sft-adapter", adapter,
            "--pairs-file", str(pairs_file), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
            "--max-length", str(args.max_length)]


def timed_dpo_trainer(cfg, model_path: str):
    """(trainer, fitted rows, fit stats, step_seconds): factuality.dpo_trainer.build_trainer on the train pairs of
    cfg.pairs_file fitted to cfg.max_length, with a callback appending each optimiser step's seconds
    to step_seconds (the first is a warm-up)."""
    from transformers import TrainerCallback

    from factuality.dpo_pairs import fit_pairs, load_pairs, to_dataset
    from factuality.dpo_trainer import build_trainer
    from factuality.modeling import load_tokenizer
    from factuality.prompts import DEFAULT_TEMPLATES

    tok = load_tokenizer(model_path)
    train, _ = load_pairs(cfg.pairs_file)
    rows, stats = fit_pairs(train, tok, cfg.max_length, DEFAULT_TEMPLATES)
    begin: list[float] = []
    step_seconds: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            begin.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            step_seconds.append(time.perf_counter() - begin[-1])

    trainer = build_trainer(cfg, to_dataset(rows), None, tok, callbacks=[Stamp()])
    return trainer, rows, stats, step_seconds


def worker(args) -> dict:
    import torch
    from bench_sft import timed_train

    from factuality.config import parse_config
    from factuality.dpo_trainer import use_cached_reference
    from factuality.stages.dpo import DPO_SPEC

    torch.manual_seed(0)
    out_dir = tempfile.mkdtemp(prefix="bench_dpo_")
    cfg = parse_config(DPO_SPEC, [], model_name_or_path=args.model_path, sft_adapter=args.sft_adapter,
                       pairs_file=args.pairs_file, ref_cache_dir=str(Path(out_dir) / "refcache"),
                       output_dir=out_dir, dtype="auto", max_length=args.max_length,
                       per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
                       gradient_accumulation_steps=1, learning_rate=1e-5, max_steps=args.steps, warmup_steps=0,
                       lr_scheduler_type="constant", logging_steps=1000, save_strategy="no", seed=0,
                       disable_tqdm=True, precompute_ref_log_probs=args.variant == "cached")
    trainer, rows, stats, step_seconds = timed_dpo_trainer(cfg, args.model_path)
    precompute_s = 0.0
    if args.variant == "cached":
        t0 = time.perf_counter()
        use_cached_reference(trainer, cfg, rows, [])
        precompute_s = time.perf_counter() - t0
    run = timed_train(trainer)
    return {"variant": args.variant, "steps": run["steps"], "step_seconds": step_seconds[1:],
            "train_seconds": run["seconds"], "precompute_seconds": round(precompute_s, 2),
            "peak_mib": run["peak_mib"], "rss_before_mib": run["rss_before_mib"], "memory_kind": run["memory_kind"],
            "train_loss": run["train_loss"], "pairs": stats.kept, "mean_tokens": round(stats.tokens / max(stats.kept, 1))}


def main(argv=None) -> int:
    from bench_sft import add_data_arg

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:smollm2-135m-instruct",
                   help="any model name/path modeling.load_model accepts, or scaled-tiny (a random 4-layer Llama, built here)")
    p.add_argument("--sft-adapter", default=None, help="an SFT adapter of --model (default: a random LoRA made here)")
    add_data_arg(p)
    p.add_argument("--pairs", type=int, default=16, help="pairs the steps draw from (and the cached variant precomputes)")
    p.add_argument("--batch-size", type=int, default=2, help="pairs per step")
    p.add_argument("--steps", type=int, default=4, help="optimiser steps per variant and round (the first is a warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="live, cached, live, cached, ...: rounds of both variants")
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--pairs-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.variant:  # worker mode
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    from bench_sft import data_label, memory_note, run_variant

    work = Path(tempfile.gettempdir()) / "factuality-bench-dpo"
    model_path = args.model
    if args.model == "scaled-tiny":
        from bench_sft import make_scaled_tiny

        model_path = str(make_scaled_tiny(Path(tempfile.gettempdir()) / "factuality-bench-scaled-tiny"))
    adapter = args.sft_adapter or str(make_sft_adapter(model_path, work / f"sft-{Path(model_path).name}"))
    pairs_file = write_pairs(args, model_path, work / "pairs.jsonl")
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for rnd in range(args.rounds):
        for v in VARIANTS:
            print(f"round {rnd + 1}: running {v} ...", flush=True)
            r = run_variant(worker_cmd(__file__, v, args, model_path, adapter, pairs_file), v)
            runs[v].append(r)
            print(f"  {v}: steps {', '.join(f'{x:.1f}' for x in r['step_seconds'])} s (after a warm-up step), "
                  f"precompute {r['precompute_seconds']:.1f} s, peak {r['peak_mib']} MiB", flush=True)
    results = []
    for v in VARIANTS:
        steps = sorted(x for r in runs[v] for x in r["step_seconds"])
        med = steps[len(steps) // 2] if len(steps) % 2 else (steps[len(steps) // 2 - 1] + steps[len(steps) // 2]) / 2
        pre = sorted(r["precompute_seconds"] for r in runs[v])
        results.append({**runs[v][0], "variant": v, "rounds": args.rounds, "timed_steps": len(steps),
                        "seconds_per_step": round(med, 2), "steps_per_s": round(1 / med, 4),
                        "pairs_per_s": round(args.batch_size / med, 3), "precompute_seconds": pre[len(pre) // 2],
                        "peak_mib": max(r["peak_mib"] for r in runs[v]),
                        "step_seconds": [r["step_seconds"] for r in runs[v]]})
    live, cached = results
    speedup = cached["steps_per_s"] / live["steps_per_s"]
    saved = live["seconds_per_step"] - cached["seconds_per_step"]
    break_even = cached["precompute_seconds"] / saved if saved > 0 else float("inf")
    print(f"\nmodel {args.model}, {live['pairs']} pairs of {data_label(args.data)} (mean {live['mean_tokens']} tokens), "
          f"{args.batch_size} pairs "
          f"per step, max_length {args.max_length}, {args.rounds} rounds")
    print(f"{'variant':<8} {'s/step':>7} {'steps/s':>8} {'pairs/s':>8} {'precompute s':>12} {'peak MiB':>9}")
    for r in results:
        print(f"{r['variant']:<8} {r['seconds_per_step']:>7.2f} {r['steps_per_s']:>8.4f} {r['pairs_per_s']:>8.3f} "
              f"{r['precompute_seconds']:>12.1f} {r['peak_mib']:>9}")
    print(f"cached / live: {speedup:.2f}x steps/s, {cached['peak_mib'] / live['peak_mib']:.2f}x peak memory; the "
          f"precompute pays for itself after {break_even:.1f} steps (one epoch of these pairs: "
          f"{-(-live['pairs'] // args.batch_size)} steps)")
    print(memory_note(live["memory_kind"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "speedup": round(speedup, 3),
                                              "memory_ratio": round(cached["peak_mib"] / live["peak_mib"], 3),
                                              "break_even_steps": round(break_even, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
