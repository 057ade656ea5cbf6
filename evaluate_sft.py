"""Evaluate fine-tuned models on grounded QA, against their base and each other, in prompt-length buckets.

    python evaluate_sft.py --model-path checkpoints/sft/demo --test-data data/processed/test.jsonl \
        --compare-baseline --batch-size 4 --max-new-tokens 256 \
        --buckets 2048,3072,4096,5120,6144,7168,7936 --attn-impl sdpa --output eval_results.json
    python evaluate_sft.py -c configs/eval_cpu.yaml                 # the CPU demo: base against SFT
    python evaluate_sft.py --systems base,sft=checkpoints/sft/smollm2-cpu,dpo=checkpoints/dpo/smollm2-cpu \
        --compare sft:base,dpo:sft --output runs/eval/eval_results.json   # N systems, one base in memory
    python evaluate_sft.py --predictions eval_results.predictions.jsonl --output rescored.json  # no model

Metrics: definitions in factuality/metrics.py, reported overall, per source and per prompt-length
bucket, with 95% bootstrap intervals; every listed comparison gets paired deltas on the same
examples. Writes <output>.json, <output stem>.predictions.jsonl (resumable: a rerun continues),
<output stem>.md and <output stem>_plots/. Every option: `--help` (factuality.stages.evaluate.EvalConfig).
"""
import sys

from factuality import cli
from factuality.stages.evaluate import STAGE, EvalConfig, run, summarize


def main(cfg: EvalConfig) -> dict:
    """Run from Python with a parsed config (tests, notebooks): evaluate, print the table, return the results."""
    results = run(cfg)
    print(summarize(results))
    return results

if __name__ == "__main__":
    sys.exit(cli.main(STAGE, __doc__))
