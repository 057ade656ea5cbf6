"""Evaluate a fine-tuned model on grounded QA, against its base, in prompt-length buckets.

    python evaluate_sft.py --model-path checkpoints/sft/demo --test-data data/processed/test.jsonl \
        --compare-baseline --batch-size 4 --max-new-tokens 256 \
        --buckets 2048,3072,4096,5120,6144,7168,7936 --attn-impl sdpa --output eval_results.json
    python evaluate_sft.py -c configs/eval_cpu.yaml --model-path checkpoints/sft/demo   # the CPU demo
    python evaluate_sft.py --predictions eval_results.predictions.jsonl --output rescored.json  # no model

Metrics (EM, F1, hallucination rate, citation precision/recall/F1, refusal rate/precision/
recall, format validity, output length): definitions in factuality/metrics.py, reported overall,
per source and per prompt-length bucket, with 95% bootstrap intervals; with --compare-baseline
the base model runs on the same examples and `deltas` are fine-tuned minus base. Writes
<output>.json, <output stem>.predictions.jsonl (resumable: a rerun continues), <output stem>.md
and <output stem>_plots/. Every option: the EvalConfig fields below (`--help`).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from factuality.config import ConfigError, parse_config
from factuality.evaluation import format_comparison_table, run_evaluation
from factuality.generation import PREFILL_MODES
from factuality.modeling import EMBEDDED_MODEL, ModelLoadError, ModelOptions
from factuality.records import RecordError

__all__ = ["EvalConfig", "main", "format_comparison_table"]

ATTN_IMPL = {"sdpa": "sdpa", "eager": "eager", "flash2": "flash_attention_2", "flash_attention_2": "flash_attention_2"}
FAST_MAX_NEW_TOKENS = 64  # a grounded answer object is ~20-40 tokens; longer means it is rambling


@dataclass
class EvalConfig(ModelOptions):
    # ModelOptions' model_name_or_path / attn_implementation are set from --base-model / --attn-impl
    model_name_or_path: str = field(default=EMBEDDED_MODEL, metadata={
        "cli": False, "help": "set from --base-model (or the adapter's base); not set directly"})
    attn_implementation: str = field(default="sdpa", metadata={"cli": False, "help": "set from --attn-impl"})

    model_path: str | None = field(default=None, metadata={
        "help": "the model to evaluate: a LoRA adapter dir written by train_sft.py (checkpoints/sft/<run>), "
                "evaluated over its base, or a full model dir / hub id"})
    base_model: str | None = field(default=None, metadata={
        "help": f"base model id/path; default: the adapter's base_model_name_or_path, else {EMBEDDED_MODEL}"})
    test_data: str = field(default="data/processed/test.jsonl", metadata={"help": "processed test split (build_data.py)"})
    compare_baseline: bool = field(default=False, metadata={
        "help": "also run the base model (adapter disabled) on the same examples and report deltas"})
    batch_size: int = field(default=4, metadata={"help": "prompts generated together (length-sorted, left-padded)"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation limit per output"})
    buckets: list[int] = field(default_factory=lambda: [2048, 3072, 4096, 5120, 6144, 7168, 7936], metadata={
        "help": "prompt-token bucket boundaries: 2048,3072 gives <=2048, 2049-3072, >3072"})
    attn_impl: str = field(default="sdpa", metadata={
        "help": "attention kernel: sdpa, eager, flash2 (= flash_attention_2; CUDA + flash-attn)",
        "choices": list(ATTN_IMPL)})
    output: str = field(default="eval_results.json", metadata={
        "help": "results JSON; predictions, summary (.md) and plots are written beside it"})
    predictions_out: str | None = field(default=None, metadata={
        "help": "predictions JSONL (default: <output stem>.predictions.jsonl); a rerun resumes from it"})
    predictions: str | None = field(default=None, metadata={
        "help": "score this JSONL of existing outputs ({id, raw_output[, model_tag]} a line) without loading a model"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer for prompt lengths when scoring --predictions (default: lengths recorded in the file, "
                "else characters/4); with a model: overrides the evaluated model's tokenizer"})
    model_tag: str = field(default="sft", metadata={"help": "tag of the evaluated model's rows (the base is 'base')"})
    fast: bool = field(default=False, metadata={
        "help": f"quick look: greedy, max_new_tokens capped at {FAST_MAX_NEW_TOKENS}, no bootstrap intervals, no plots"})
    overwrite: bool = field(default=False, metadata={
        "help": "discard an existing predictions file instead of resuming from it"})
    limit: int = field(default=0, metadata={"help": "evaluate only the first N test examples (0 = all)"})
    max_batches: int = field(default=0, metadata={
        "help": "stop after N batches per model (0 = no limit); results are marked partial and a rerun resumes"})
    bootstrap_samples: int = field(default=1000, metadata={"help": "bootstrap resamples for the intervals (0 = none)"})
    ci_level: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})
    seed: int = field(default=42, metadata={"help": "seed for sampling (if any) and the bootstrap"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (with --do-sample)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass (with --do-sample)"})
    prefill: str = field(default="auto", metadata={
        "help": "auto (per_example on CPU, batched on GPU), batched (one padded forward per batch) or per_example "
                "(each prompt alone, KV caches stacked for a batched decode)", "choices": list(PREFILL_MODES)})
    prompts_dir: str | None = field(default=None, metadata={
        "help": "prompt templates written by prompt_schema.py (default: the adapter's prompts/ dir, saved by "
                "train_sft.py, else the built-in templates)"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots per bucket and per source"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        self.attn_implementation = ATTN_IMPL[self.attn_impl]
        if self.base_model:
            self.model_name_or_path = self.base_model
        if not self.model_path and not self.predictions:
            raise ConfigError("pass --model-path (the fine-tuned model) or --predictions FILE (outputs to score)")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--batch-size and --max-new-tokens must be >= 1")
        if not 0 < self.ci_level < 1:
            raise ConfigError(f"--ci-level {self.ci_level} must be between 0 and 1, e.g. 0.95")
        if self.compare_baseline and self.model_tag == "base":
            raise ConfigError("--model-tag base is the baseline's tag; pick another for the evaluated model")
        if self.fast:
            self.do_sample = False
            self.max_new_tokens = min(self.max_new_tokens, FAST_MAX_NEW_TOKENS)


def main(cfg: EvalConfig) -> dict:
    results = run_evaluation(cfg)
    cov = ", ".join(f"{t} {c['scored']}/{c['scored'] + c['missing']}" for t, c in results["coverage"].items())
    print(f"\nscored: {cov} examples; prompt lengths: {results['prompt_length']['counted_with']}")
    print(format_comparison_table(results))
    if not results["complete"]:
        print("PARTIAL run: rerun the same command to continue where it stopped")
    print(f"wrote {results['files']['results']}, {results['files']['summary']}, {results['files']['predictions']}")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(parse_config(EvalConfig, description=__doc__.split("\n")[0]))
    except (ConfigError, RecordError, ModelLoadError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
