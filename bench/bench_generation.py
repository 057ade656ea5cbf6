"""Batched generation against one example at a time, and the decode that drops finished rows against
the batched decode that runs until its longest answer ends; same prompts, same run.

    .venv/bin/python bench/bench_generation.py                       # embedded model, 8 prompts, batch 8
    .venv/bin/python bench/bench_generation.py --adapter checkpoints/sft/smollm2-cpu   # the SFT model's JSON answers
    .venv/bin/python bench/bench_generation.py --model /tmp/tiny --n-prompts 16 --batch-size 4

All modes run in one process on the same prompts, interleaved over --repeats rounds (the
fastest round of each counts: other processes on a shared machine only ever slow a run down);
peak memory is the process's peak resident memory sampled during the mode (GPU: peak allocated).
Modes:
`single` (batch 1, no prefix sharing, model.generate: the baseline), `batched` (left-padded,
length-sorted), `batched+prefix` (the shared prompt prefix prefilled once), `per-example+prefix`
(each prompt's own part prefilled alone, no padding computed, then the KV caches stacked
left-padded for one batched decode) -- these three decode with model.generate, every row until the
batch's longest answer ends, the evaluator's default before the drop loop -- and
`per-example+prefix+drop` (the same prefill, then generation.decode_batch: a row that finished
leaves the batch and the KV cache; the default of evaluate_sft.py and make_prefs.py). Prints the
speed ratio against `single` and against `per-example+prefix`, prefill and decode time, the decode
row-steps (rows x forward passes), peak memory, and how many greedy outputs are identical to
`single` (fp32 batched and single runs differ in the last bits of the logits, so a near-tie can,
rarely, pick another token; the count is reported, not assumed).
Prompts: data/processed/test.jsonl when it exists (the examples closest to --target-tokens),
else hand-made examples padded with distractor chunks to about --target-tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MODES = {  # prefill: "batched" = one padded forward per batch; "per_example" = each prompt alone, caches stacked
    "single": dict(batch=1, share_prefix=False, sort_by_length=False, prefill="batched", decode="generate"),
    "batched": dict(batch=None, share_prefix=False, sort_by_length=True, prefill="batched", decode="generate"),
    "batched+prefix": dict(batch=None, share_prefix=True, sort_by_length=True, prefill="batched", decode="generate"),
    "per-example+prefix": dict(batch=None, share_prefix=True, sort_by_length=True, prefill="per_example",
                               decode="generate"),
    "per-example+prefix+drop": dict(batch=None, share_prefix=True, sort_by_length=True, prefill="per_example",
                                    decode="drop_finished"),
}
BATCHED_BASELINE = "per-example+prefix"  # the batched generation the drop loop replaces


def make_prompts(tokenizer, n: int, target_tokens: int, data: str | None) -> list[str]:
    from factuality.prompts import render_prompt
    from factuality.records import read_examples
    from factuality.testing import make_example

    if data and Path(data).exists():
        exs = read_examples(data)
        lens = [(abs(len(tokenizer(render_prompt(e, tokenizer))["input_ids"]) - target_tokens), i)
                for i, e in enumerate(exs)]
        picked = [exs[i] for _, i in sorted(lens)[:n]]
        if len(picked) == n:
            return [render_prompt(e, tokenizer) for e in picked]
    prompts = []
    for i in range(n):
        # Vary the length a little (+-15%) like a real test set; chunk counts grow until the target.
        want = int(target_tokens * (0.85 + 0.3 * i / max(n - 1, 1)))
        k = 2
        while True:
            ex = make_example(i, source=("nq", "hotpotqa", "popqa")[i % 3], n_chunks=k, gold_position=i % k,
                              answer=("Linda Davis", "Paris", "1972")[i % 3])
            p = render_prompt(ex, tokenizer)
            if len(tokenizer(p)["input_ids"]) >= want or k > 200:
                break
            k += 1
        prompts.append(p)
    return prompts


class PeakRSS:
    """Peak resident memory (MB) of this process while the block runs, sampled every 5 ms."""

    def __enter__(self):
        import threading

        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def run_mode(model, tok, prompts, mode: str, args) -> dict:
    import gc

    import torch

    from factuality.generation import GenerationStats, generate

    spec = MODES[mode]
    bs = spec["batch"] or args.batch_size
    gc.collect()
    stats = GenerationStats()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        texts = generate(model, tok, prompts, batch_size=bs, max_new_tokens=args.max_new_tokens, progress=False,
                         share_prefix=spec["share_prefix"], sort_by_length=spec["sort_by_length"], stats=stats,
                         prefill=spec["prefill"], decode=spec["decode"])
        wall = time.perf_counter() - t0
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else mem.peak
    return {"mode": mode, "batch_size": bs, "wall_s": wall, "prefill_s": stats.prefill_s + stats.prefix_s,
            "decode_s": stats.decode_s, "prompt_tokens": stats.prompt_tokens,
            "padded_prompt_tokens": stats.padded_prompt_tokens, "new_tokens": stats.new_tokens,
            "shared_prefix_tokens": stats.shared_prefix_tokens, "peak_mem_mb": peak_mb, "texts": texts,
            "row_steps": stats.row_steps,
            "mean_prompt_tokens": stats.prompt_tokens / max(len(prompts), 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m-instruct", help="model id/path (modeling.load_model)")
    p.add_argument("--adapter", help="a LoRA adapter dir over --model (e.g. the SFT run: short JSON answers)")
    p.add_argument("--n-prompts", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--target-tokens", type=int, default=450, help="about this many prompt tokens each")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--data", default=str(ROOT / "data/processed/test.jsonl"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all modes, interleaved; the fastest round counts")
    p.add_argument("--json-out", help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    from factuality.modeling import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, adapter_path=args.adapter)
    prompts = make_prompts(tok, args.n_prompts, args.target_tokens, args.data)
    from factuality.generation import generate

    generate(model, tok, [prompts[0]], batch_size=1, max_new_tokens=2, progress=False)  # warm-up, not timed
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits every mode alike
        for mode in MODES:
            runs[mode].append(run_mode(model, tok, prompts, mode, args))
    results = {m: min(rs, key=lambda r: r["wall_s"]) for m, rs in runs.items()}
    for m, rs in runs.items():
        results[m]["all_wall_s"] = [round(r["wall_s"], 2) for r in rs]
        results[m]["peak_mem_mb"] = max(r["peak_mem_mb"] for r in rs)
    base = results["single"]
    src = "data/processed/test.jsonl" if Path(args.data).exists() else "hand-made examples"
    print(f"prompts: {src}; model {args.model}; {args.n_prompts} prompts, mean {base['mean_prompt_tokens']:.0f} "
          f"prompt tokens; greedy, max_new_tokens {args.max_new_tokens}; {torch.get_num_threads()} threads; "
          f"best of {args.repeats} interleaved rounds; load average {load_before:.2f} -> {os.getloadavg()[0]:.2f} "
          f"(other processes on the machine skew timings)")
    batched = results[BATCHED_BASELINE]
    print(f"{'mode':24s} {'batch':>5s} {'wall s':>8s} {'vs single':>9s} {'vs batched':>10s} {'prefill s':>10s} "
          f"{'decode s':>9s} {'row-steps':>9s} {'new tok':>8s} {'pad tok':>8s} {'peak MB':>8s} {'same as single':>15s}"
          f"  all rounds (s)")
    for mode, r in results.items():
        same = sum(a == b for a, b in zip(r["texts"], base["texts"]))
        r["identical_to_single"] = same
        r["speedup"] = base["wall_s"] / r["wall_s"]
        r["speedup_vs_batched"] = batched["wall_s"] / r["wall_s"]
        pad = r["padded_prompt_tokens"] - r["prompt_tokens"]
        print(f"{mode:24s} {r['batch_size']:5d} {r['wall_s']:8.2f} {r['speedup']:8.2f}x {r['speedup_vs_batched']:9.2f}x "
              f"{r['prefill_s']:10.2f} {r['decode_s']:9.2f} {r['row_steps']:9d} {r['new_tokens']:8d} {pad:8d} "
              f"{r['peak_mem_mb']:8.0f} {same:>7d}/{len(base['texts'])}  {r['all_wall_s']}")
    drop = results["per-example+prefix+drop"]
    print(f"dropping finished rows: decode {batched['decode_s'] / max(drop['decode_s'], 1e-9):.2f}x faster than the "
          f"batched decode ({drop['row_steps']} vs {batched['row_steps']} row-steps), whole run "
          f"{drop['speedup_vs_batched']:.2f}x; against one at a time {drop['speedup']:.2f}x")
    if results["per-example+prefix"]["shared_prefix_tokens"]:
        print(f"shared prefix: {results['per-example+prefix']['shared_prefix_tokens']} tokens prefilled once")
    for mode, r in results.items():
        for i, (a, b) in enumerate(zip(r["texts"], base["texts"])):
            if a != b:
                print(f"  {mode} differs on prompt {i}: single {b[:80]!r} vs {a[:80]!r}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
