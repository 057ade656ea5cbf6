"""Shared fixtures: a tiny random model (built once per session) and hand-made examples."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the top-level scripts (build_data.py, ...) import as modules
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from factuality.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture()
def examples():
    from factuality.testing import make_example

    out = [make_example(i, source=s, answerable=(i % 3 != 2), gold_position=i % 3)
           for i, s in enumerate(["nq", "hotpotqa", "popqa", "nq", "hotpotqa", "popqa"])]
    return out
