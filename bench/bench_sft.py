"""SFT throughput: this trainer's batching and LM head against plain TRL defaults, same data, model and LoRA.

    python bench/bench_sft.py                                   # scaled-up tiny model, both vocabularies, ~6 min on 2 CPU cores
    python bench/bench_sft.py --examples 16                     # the README's figures (~12 min: TRL's CPU head on 256,000 is slow)
    python bench/bench_sft.py --vocabs smollm2 --variants trl-default,group_by_length,padding_free,packed,answer_only
    python bench/bench_sft.py --model embedded:smollm2-135m-instruct --examples 24   # the real small model (slower)

Variants (each in a fresh subprocess, so peak memory is its own):
- trl-default: TRL's SFTTrainer fed prompt/completion strings, TRL tokenising, completion-only
  loss, random batches padded to the longest (TRL's defaults; gradient checkpointing matched to
  the others, off, so the comparison isolates batching);
- padded / group_by_length / padding_free / packed: factuality.stages.sft.build_trainer with
  `batching` set to that value (evidence-side truncation, our own answer-only labels) and TRL's
  own fused LM head (`answer_only_head: false`, the trainer as it was before that option);
- answer_only: padding_free batches with the LM head applied at answer positions only
  (`answer_only_head: true`, factuality/heads.py; the default of train_sft.py).
Every variant trains one epoch over the same examples with the same LoRA, batch size and lr.
`--vocabs` runs the whole set once per vocabulary: smollm2 (the scaled-tiny body with SmolLM2's
49,152-entry vocabulary) and 256000 (the same body with Gemma-2's vocabulary size); each prints
its table with ratios against its own baseline.
Reported: training tokens/s (non-pad tokens), the share of padding in the batches, the peak
resident memory of the process (CPU) or peak allocated CUDA memory, and the speed-up against
trl-default. Data: data/processed/train.jsonl when it exists, else generated examples.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VARIANTS = ("trl-default", "padded", "group_by_length", "padding_free", "packed", "answer_only")
SCALED_TINY = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2)


def scaled_tiny_path(vocab: str) -> Path:
    """The scaled-tiny model for a --vocabs entry: `smollm2` (its tokenizer's 49,152) or a size."""
    name = "factuality-bench-scaled-tiny" + ("" if vocab == "smollm2" else f"-v{int(vocab)}")
    return make_scaled_tiny(Path(tempfile.gettempdir()) / name, None if vocab == "smollm2" else int(vocab))


def make_scaled_tiny(path: Path, vocab_size: int | None = None) -> Path:
    """A random 4-layer Llama (hidden 256). With the embedded model's tokenizer when it is available,
    so prompt lengths (and so the padding) are those of real use; else the tiny test tokenizer.
    `vocab_size`: a larger output vocabulary than the tokenizer's (the inputs use its first ids)."""
    import torch
    from transformers import AutoModelForCausalLM

    from factuality.testing import make_tiny_model, tiny_config

    if (path / "config.json").exists():
        return path
    try:
        from factuality.modeling import EMBEDDED_MODEL, load_tokenizer

        tok = load_tokenizer(EMBEDDED_MODEL)
    except Exception as e:  # noqa: BLE001 - the package may be missing: fall back to the tiny tokenizer
        print(f"(embedded tokenizer unavailable: {e}; using the tiny test tokenizer)")
        return make_tiny_model(path, **SCALED_TINY, **({"vocab_size": vocab_size} if vocab_size else {}))
    cfg = tiny_config(vocab_size or len(tok), **SCALED_TINY, tie_word_embeddings=True)
    cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = tok.eos_token_id, tok.pad_token_id, None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def add_data_arg(parser) -> None:
    """--data of the training benches (SFT, both DPO): build_data.py's train split by default; a path
    that does not exist means generated examples, and each summary names which (`data_label`)."""
    parser.add_argument("--data", default=str(ROOT / "data" / "processed" / "train.jsonl"),
                        help="examples to train on (build_data.py's output); a path that does not exist: generated "
                             "examples, shorter than the sample's (the summary says which)")


def data_label(path: str) -> str:
    return path if Path(path).exists() else "generated examples (no --data file)"


def examples_for(args) -> list[dict]:
    from factuality.records import read_examples
    from factuality.testing import make_example

    if Path(args.data).exists():
        return read_examples(args.data)[: args.examples]
    # generated examples of varied length (2-8 chunks), as a stand-in for the sample
    return [make_example(i, n_chunks=2 + i % 7, gold_position=i % 2, answerable=i % 4 != 3, split="train")
            for i in range(args.examples)]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# glibc's malloc raises its mmap threshold after large frees (up to 32 MiB), so the blocks freed by one
# step stay resident and a CPU peak RSS counts them; with a fixed threshold large blocks go back to the
# OS on free and the peak follows live memory (as CUDA's max_memory_allocated does). Every variant's
# worker runs the same way. FACTUALITY_BENCH_MALLOC=default keeps glibc's own behaviour.
MMAP_THRESHOLD = "65536"


def worker_env() -> dict:
    env = dict(os.environ)
    if env.get("FACTUALITY_BENCH_MALLOC") != "default":
        env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    return env


def memory_note(memory_kind: str = "process_rss") -> str:
    """How the workers' peak memory was taken (printed under each benchmark's table)."""
    if memory_kind == "cuda_allocated":
        return "peak = torch.cuda.max_memory_allocated() during training"
    env = worker_env()
    if "MALLOC_MMAP_THRESHOLD_" in env:
        return (f"CPU peak = the worker's peak RSS with glibc's mmap threshold fixed at {env['MALLOC_MMAP_THRESHOLD_']} "
                "bytes (freed large blocks leave the process, so the peak follows live memory); "
                "FACTUALITY_BENCH_MALLOC=default for glibc's own allocator behaviour")
    return "CPU peak = the worker's peak RSS under glibc's default allocator (freed blocks may stay resident)"


def run_variant(cmd: list[str], variant: str) -> dict:
    """Run one variant's worker process (`cmd`, environment `worker_env()`) and return the JSON of its
    `RESULT ` line; its output and a SystemExit when it fails or prints none."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=worker_env())
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
    return json.loads(line[0][len("RESULT "):])


def pick_variants(parser, text: str, known) -> list[str]:
    """The comma-separated variants of `text`, in order; a parser error naming any unknown one."""
    variants = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in variants if v not in known]
    if bad:
        parser.error(f"unknown variants {bad}; choose from {', '.join(known)}")
    return variants


def timed_train(trainer) -> dict:
    """trainer.train() timed, with the peak memory it reached: allocated CUDA memory on a GPU, the
    process's peak resident memory on a CPU (`rss_before_mib`: that peak before training). The
    benchmarks of this folder (SFT, DPO) all measure a run this way."""
    import torch

    on_cuda = torch.cuda.is_available()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_mib()
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else rss_mib()
    return {"steps": trainer.state.global_step, "seconds": round(seconds, 2), "peak_mib": round(peak),
            "rss_before_mib": round(rss_before), "memory_kind": "cuda_allocated" if on_cuda else "process_rss",
            "train_loss": round(result.training_loss, 4)}


class TokenCounter:
    """Wraps a collator: counts real (non-pad) and padded tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator, self.real, self.total = collator, 0, 0

    def __call__(self, features):
        batch = self.collator(features)
        ids = batch["input_ids"]
        self.total += ids.numel()
        if "attention_mask" in batch:
            self.real += int(batch["attention_mask"].sum())
        else:  # padding-free / packed: one flat row of real tokens (no pad_to_multiple_of here)
            self.real += ids.numel()
        return batch


def worker(args) -> dict:
    import torch

    from factuality.config import parse_config
    from factuality.modeling import load_model, load_tokenizer
    from factuality.prompts import DEFAULT_TEMPLATES, completion_text, render_prompt
    from factuality.stages.sft import SFT_SPEC, build_dataset, build_trainer
    from factuality.training import lora_config

    torch.manual_seed(0)
    examples = examples_for(args)
    out_dir = tempfile.mkdtemp(prefix="bench_sft_")
    cfg = parse_config(SFT_SPEC, [], model_name_or_path=args.model_path, dtype="auto", max_length=args.max_length,
                       per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                       learning_rate=1e-4, num_train_epochs=1, warmup_steps=0.0, lr_scheduler_type="constant",
                       logging_steps=1000, save_steps=10_000, eval_steps=None, output_dir=out_dir, run_name="b",
                       lora_dropout=0.0, seed=0, val_file=None, answer_only_head=args.variant == "answer_only",
                       batching={"trl-default": "padded", "answer_only": "padding_free"}.get(args.variant, args.variant))
    tok = load_tokenizer(cfg.model_name_or_path)
    ds, stats = build_dataset(examples, tok, cfg.max_length, DEFAULT_TEMPLATES, "bench")
    model = load_model(cfg.model, is_trainable=True)
    if args.variant == "trl-default":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        # The same examples (evidence already cut to max_length by our tokeniser run above, so both sides
        # see the same texts), as TRL's prompt/completion strings; TRL adds EOS and tokenises.
        from factuality.prompts import fit_evidence

        rows = {"prompt": [], "completion": []}
        for ex in examples:
            target = completion_text(ex, tok)
            n_target = len(tok(target, add_special_tokens=False)["input_ids"])
            fit = fit_evidence(ex, tok, cfg.max_length - n_target, DEFAULT_TEMPLATES)
            if not fit.fits:
                continue
            rows["prompt"].append(render_prompt(ex, tok, evidence=fit.evidence))
            rows["completion"].append(target)
        sft_args = SFTConfig(output_dir=out_dir, per_device_train_batch_size=cfg.per_device_train_batch_size,
                             num_train_epochs=1, learning_rate=1e-4, lr_scheduler_type="constant",
                             logging_steps=1000, save_strategy="no", report_to="none", seed=0,
                             max_length=cfg.max_length, activation_checkpointing=False, gradient_checkpointing=None,
                             dataloader_pin_memory=False, disable_tqdm=True,
                             bf16=model.dtype == torch.bfloat16)  # TRL defaults to bf16, which a CPU run refuses
        trainer = SFTTrainer(model=model, args=sft_args, train_dataset=Dataset.from_dict(rows), processing_class=tok,
                             peft_config=lora_config(cfg.model, model.config.num_hidden_layers))
    else:
        trainer = build_trainer(cfg, ds, None, tok, model=model, save_strategy="no", disable_tqdm=True)
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    # warm-up: one forward/backward outside the timing (first-call allocations, kernel selection), through
    # the trainer's own loss (a plain forward would compute every position's logits and set the peak memory)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)).backward()
    trainer.model.zero_grad(set_to_none=True)
    counter.real = counter.total = 0
    run = timed_train(trainer)
    seconds = run["seconds"]
    return {"variant": args.variant, "lm_head": getattr(trainer, "lm_head_mode", "TRL fused head (TRL's SFTTrainer)"),
            **run, "tokens": counter.real, "batch_tokens": counter.total,
            "padding_share": round(1 - counter.real / counter.total, 3) if counter.total else 0.0,
            "tokens_per_s": round(counter.real / seconds, 1), "examples": stats.kept, "truncated": stats.truncated}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="scaled-tiny", help="scaled-tiny (a random 4-layer Llama, built here) or any "
                                                          "model name/path modeling.load_model accepts")
    add_data_arg(p)
    p.add_argument("--examples", type=int, default=8, help="examples in the epoch each variant trains on")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--variants", default="trl-default,padding_free,answer_only",
                   help=f"comma-separated, from {', '.join(VARIANTS)}; the first is the baseline")
    p.add_argument("--vocabs", default="smollm2,256000",
                   help="scaled-tiny only: output vocabularies to run the variants on, each in turn (smollm2: 49,152)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.variant:  # worker mode
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    variants = pick_variants(p, args.variants, VARIANTS)
    vocabs = [v.strip() for v in args.vocabs.split(",") if v.strip()] if args.model == "scaled-tiny" else ["model's own"]
    if any(v not in ("smollm2", "model's own") and not v.isdigit() for v in vocabs):
        p.error(f"--vocabs {args.vocabs!r}: each entry is smollm2 or a vocabulary size (256000)")
    every = []
    for vocab in vocabs:
        model_path = str(scaled_tiny_path(vocab)) if args.model == "scaled-tiny" else args.model
        results = []
        for v in variants:
            cmd = [sys.executable, __file__, "--variant", v, "--model-path", model_path, "--data", args.data,
                   "--examples", str(args.examples), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length)]
            print(f"vocabulary {vocab}: running {v} ...", flush=True)
            r = dict(run_variant(cmd, v), vocab=vocab)
            results.append(r)
            print(f"  {v}: {r['tokens_per_s']:.1f} tokens/s, {r['padding_share']:.1%} padding, peak {r['peak_mib']} MiB "
                  f"({r['steps']} steps in {r['seconds']:.1f} s)", flush=True)
        base = results[0]
        print(f"\nmodel {args.model}, vocabulary {vocab}, {base['examples']} examples of {data_label(args.data)}, "
              f"batch {args.batch_size}, "
              f"max_length {args.max_length}; baseline {base['variant']}")
        print(f"{'variant':<16} {'steps':>5} {'seconds':>8} {'tokens':>7} {'pad share':>9} {'tokens/s':>9} "
              f"{'peak MiB':>9} {'speed-up':>8} {'mem ratio':>9}")
        for r in results:
            r["speedup"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            r["memory_ratio"] = round(r["peak_mib"] / base["peak_mib"], 2)
            print(f"{r['variant']:<16} {r['steps']:>5} {r['seconds']:>8.1f} {r['tokens']:>7} {r['padding_share']:>9.1%} "
                  f"{r['tokens_per_s']:>9.1f} {r['peak_mib']:>9} {r['speedup']:>7.2f}x {r['memory_ratio']:>8.2f}x")
        print(memory_note(base["memory_kind"]) + "\n")
        every += results
    results = every
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
