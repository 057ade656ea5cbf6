"""Shared helpers for the data-building tests (kept out of conftest.py, which another module owns)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # build_data.py lives at the repo root
    sys.path.insert(0, str(REPO))

from factuality.raw_inputs import SAMPLE_DIR
from factuality.stages.build import BuildConfig, build

SOURCES_ALL = ["fever", "hotpotqa", "nq", "popqa"]


def copy_sample_raw(dest_raw: Path) -> Path:
    """The bundled sample (real slices + fixtures) merged into one raw root, as a user would have it."""
    for part in ("raw", "fixtures"):
        shutil.copytree(SAMPLE_DIR / part, dest_raw, dirs_exist_ok=True)
    for p in dest_raw.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return dest_raw


def build_sample(out_dir: Path, **kw) -> dict:
    cfg = BuildConfig(data_dir=str(out_dir / "data"), out_dir=str(out_dir / "processed"), quiet=True, **kw)
    cfg.validate()
    return build(cfg)


def load_split(out_dir: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def load_all(out_dir: Path) -> list[dict]:
    return [r for s in ("train", "val", "test") for r in load_split(out_dir, s)]
