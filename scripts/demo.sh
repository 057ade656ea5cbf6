#!/usr/bin/env bash
# The main job on the embedded defaults: bundled sample data, SmolLM2-135M-Instruct, CPU.
#   build_data -> prompt_schema -> train_sft -> evaluate_sft (base against SFT)
# Each stage prints its own progress; the end prints how long each stage took.
# Outputs: data/processed/, prompts/, checkpoints/sft/smollm2-cpu/, runs/eval-cpu-demo/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error

declare -a NAMES=() SECS=()
stage() {
  local name=$1; shift
  echo
  echo "=== [$((${#NAMES[@]} + 1))/4] $name: $*"
  local t0=$SECONDS
  "$@"
  NAMES+=("$name"); SECS+=($((SECONDS - t0)))
}

stage build_data    "$PY" build_data.py
stage prompt_schema "$PY" prompt_schema.py save --prompts-dir prompts
# --overwrite: the demo always starts over, so a second `make demo` reruns it rather than stopping
# at the existing run (the scripts themselves refuse to overwrite unless told, and offer --resume).
stage train_sft     "$PY" train_sft.py -c configs/sft_cpu.yaml --overwrite
stage evaluate_sft  "$PY" evaluate_sft.py -c configs/eval_cpu.yaml --overwrite

echo
echo "=== stage times (s)"
total=0
for i in "${!NAMES[@]}"; do
  printf '  %-14s %5d\n' "${NAMES[$i]}" "${SECS[$i]}"
  total=$((total + SECS[$i]))
done
printf '  %-14s %5d\n' total "$total"
