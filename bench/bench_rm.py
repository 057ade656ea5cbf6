"""Reward-model training time: the frozen base's features cached once against recomputed every epoch.

    python bench/bench_rm.py                                     # embedded SmolLM2-135M, 48 pairs, 3 epochs
    python bench/bench_rm.py --pairs 96 --epochs 3 --threads 2
    python bench/bench_rm.py --model /path/to/model --max-length 1024

One run, same pairs, same head, same seed:
- cached: one feature pass over the pairs' unique (prompt, response) sequences, written to a fresh
  disk cache (factuality.rm.features.cached_features), then `epochs` epochs of the head on them;
- recompute: the same feature pass run again before every epoch (what a trainer that runs the
  frozen base in its forward does), the same epochs of the head;
- recompute-full: as recompute, with each sequence run whole (no prompt shared between the
  responses to it), padded batches: TRL's RewardTrainer forward with a frozen base.
Reported: seconds per variant (feature passes and head training apart), the speed-up of cached over
each, and whether the trained heads are the same (they must be: the features are). The pairs are
synthetic (factuality.rm.pairs.synthetic_pairs) from data/processed/train.jsonl when it exists, else
from generated examples.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--data", default=str(ROOT / "data" / "processed" / "train.jsonl"))
    ap.add_argument("--pairs", type=int, default=48, help="training pairs (2 per example)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=448)
    ap.add_argument("--max-response-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="responses continued together from one prompt's cache")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids spin-waiting on a shared machine)")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from factuality.config import parse_config
    from factuality.modeling import load_tokenizer, quiet_transformers
    from factuality.records import read_examples
    from factuality.rm.features import Sequences, Tokens, cached_features, extract_features, index_pairs, load_body
    from factuality.rm.model import new_head
    from factuality.rm.pairs import synthetic_pairs
    from factuality.rm.train import EvalData, train_head
    from factuality.stages.reward import RM_SPEC
    from factuality.testing import make_example

    cfg = parse_config(RM_SPEC, [], model_name_or_path=args.model, dtype="float32", max_length=args.max_length,
                       max_response_tokens=args.max_response_tokens, num_train_epochs=args.epochs,
                       per_device_train_batch_size=16, learning_rate=3e-3, logging_steps=1000, eval_steps=None,
                       save_steps=100000, seed=0, penalties_in_loss=True)
    tok = load_tokenizer(args.model)
    if Path(args.data).exists():
        examples, where = read_examples(args.data), args.data
    else:
        examples = [make_example(i, n_chunks=3 + i % 3, gold_position=i % 3, split="train") for i in range(args.pairs)]
        where = "generated examples"
    pairs = synthetic_pairs(examples, tok, args.pairs, per_example=2, seed=0,
                            max_prompt_tokens=args.max_length - args.max_response_tokens)
    seqs = Sequences()
    idx = index_pairs(pairs, seqs)
    with quiet_transformers():
        body = load_body(cfg.model)
    tokens = Tokens(tok, args.max_length, args.max_response_tokens)
    n_prompts = len(set(seqs.prompts))
    mean_tokens = np.mean([len(tokens.full(p, r)) for p, r in zip(seqs.prompts, seqs.responses)])
    print(f"{len(pairs)} pairs from {where}: {len(seqs)} unique sequences on {n_prompts} prompts, mean "
          f"{mean_tokens:.0f} tokens; model {args.model}; {args.epochs} epochs; {args.threads} thread(s)", flush=True)
    P = np.zeros(len(seqs))
    eval_data = EvalData(idx, None, P)  # features filled per variant

    def train(feats) -> tuple[float, object]:
        head = new_head(feats.shape[1], 0, 0, feats)
        eval_data.feats = feats
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            train_head(cfg, head, feats, P, idx, eval_data, Path(d), None, lambda h, m: None)
        return time.perf_counter() - t0, head

    results = {}
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        feats, info = cached_features(body, tokens, seqs, {"bench": args.model}, Path(cache), args.batch_size, True)
        feat_s = time.perf_counter() - t0
        for _ in range(args.epochs - 1):   # later epochs read the cache: a hit costs a file read
            t0 = time.perf_counter()
            again, hit = cached_features(body, tokens, seqs, {"bench": args.model}, Path(cache), args.batch_size, True)
            feat_s += time.perf_counter() - t0
            assert hit["hit"]
        train_s, head_cached = train(feats)
        results["cached"] = (feat_s, train_s, head_cached)
    for name, share in (("recompute", True), ("recompute-full", False)):
        feat_s = 0.0
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            feats_r = extract_features(body, tokens, seqs.prompts, seqs.responses, args.batch_size, share, progress=False)
            feat_s += time.perf_counter() - t0
        train_s, head_r = train(feats_r)
        results[name] = (feat_s, train_s, head_r)
        print(f"  {name}: done", flush=True)

    base = sum(results["cached"][:2])
    print("\n| variant | feature passes s | head training s | total s | time / cached |")
    print("|---|---:|---:|---:|---:|")
    for name, (f, t, _) in results.items():
        print(f"| {name} | {f:.1f} | {t:.2f} | {f + t:.1f} | {(f + t) / base:.2f}x |")
    w0 = results["cached"][2].net.weight.detach()
    for name in ("recompute", "recompute-full"):
        diff = float((results[name][2].net.weight.detach() - w0).abs().max())
        print(f"head weights, cached vs {name}: max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
