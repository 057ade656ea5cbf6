"""Seeds, hashes and run cards: what determines a result is written next to it."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from .records import atomic_write_json

TRACKED_PACKAGES = (
    "factuality", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes",
    "tokenizers", "bm25s", "jsonschema", "numpy", "scikit-learn", "gguf",
)


def set_seed(seed: int) -> None:
    """Seed python, numpy and (when installed and already importable) torch."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_card(script: str, config: dict, inputs: dict[str, str] | None = None, **extra: Any) -> dict:
    """The resolved config, input sha256s, package versions and git commit of one run."""
    return {
        "script": script,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "inputs": inputs or {},
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        **extra,
    }


def write_run_card(path: str | Path, card: dict) -> None:
    atomic_write_json(path, card)
