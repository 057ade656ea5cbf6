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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one thread. Two threads spin-wait on a shared, loaded machine (measured: a
    tiny-model generate took 3.5-11.7 s with 2 threads and 0.06 s with 1). Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
