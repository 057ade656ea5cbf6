"""Where the stages hand files to each other by default (relative to the working directory): one
name each, so a stage's default and the next stage's agree. The main job passes its run folders
explicitly (configs/presets.yaml)."""
from __future__ import annotations

PROCESSED_DIR = "data/processed"              # build_data.py's output folder (under --data-dir data)
TRAIN_FILE = f"{PROCESSED_DIR}/train.jsonl"
VAL_FILE = f"{PROCESSED_DIR}/val.jsonl"
TEST_FILE = f"{PROCESSED_DIR}/test.jsonl"
PREFS_DIR = "prefs"                           # make_prefs.py's pairs and candidate cache
