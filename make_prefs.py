"""Preference pairs in two phases: generate candidates (cached, resumable), then judge them into pairs.

    python make_prefs.py --phase generate --sft-model checkpoints/sft/gemma2-9b/checkpoint-29 \
        --base-model google/gemma-2-9b --data-path data/processed/train.jsonl --max-samples 600 \
        --n-generations 2 --batch-size 12 --max-new-tokens 80 --max-input-tokens 1536 --temperature 0.0 --use-8bit
    python make_prefs.py --phase judge --judge-model Qwen/Qwen2.5-3B-Instruct \
        --data-path data/processed/train.jsonl --max-samples 600 --n-generations 2 --judge-batch-size 12 \
        --min-margin 0.12 --judge-use-8bit --output-mode rich
    python make_prefs.py -c configs/prefs.yaml --phase generate      # the GPU recipe (train + val examples)
    python make_prefs.py -c configs/prefs.yaml --phase judge
    python make_prefs.py -c configs/prefs_cpu.yaml --phase all        # embedded SmolLM2-135M on a CPU, minutes

Phase 1 writes prefs/cache/<signature>/ (candidates from the SFT adapter and from its base with the
adapter disabled, one model in memory; a killed run resumes where it stopped; the same signature
is reused). Phase 2 finds that cache from the same data / --max-samples / --n-generations, adds
labelled perturbations of good answers (hard pairs), scores every candidate with the verifiers
(factuality/metrics.py) and the judge model (token probabilities), and writes
prefs/preferences_<signature>.jsonl (TRL's prompt/chosen/rejected plus margin, scores, split, kind,
evidence and support ids) and prefs/preferences_<signature>.stats.json. Every option: `--help`
(factuality.stages.prefs.PrefsOptions); the method: factuality/stages/prefs.py (over candidates.py, pairing.py, verdicts.py) and factuality/judge.py.
"""
import sys

from factuality import cli
from factuality.stages.prefs import STAGE

if __name__ == "__main__":
    sys.exit(cli.main(STAGE, __doc__))
