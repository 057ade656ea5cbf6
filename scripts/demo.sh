#!/usr/bin/env bash
# The main job on the embedded defaults: bundled sample data, SmolLM2-135M-Instruct, CPU.
#   build_data -> prompt_schema -> train_sft -> make_prefs (generate, judge) -> train_rm -> train_dpo
#   -> evaluate_sft (base / SFT / DPO)
# pipeline.py runs each step as its own command and reuses every step that is up to date, so a
# second `make demo` only redoes what changed. Arguments pass through (e.g. --force all, --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec "$PY" pipeline.py "$@"
