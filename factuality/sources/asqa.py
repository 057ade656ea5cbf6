"""ASQA (ambiguous factoid questions, long-form answers) in ALCE's format: factuality/sources/alce_format.py reads and drafts it.

Raw files: `<raw root>/asqa/*.json` (ALCE: `asqa_eval_gtr_top100.json` and the like, from its
download script; Trust-Eval: `asqa_eval_top100_calibrated.json`)."""
from __future__ import annotations

from pathlib import Path

from . import alce_format
from .base import BadRecords, DraftContext

NAME = "asqa"
TASK = "question"
INPUTS = {"asqa": "asqa/*.json"}
DOWNLOADS: list = []   # ALCE's data come from its download script (a tarball of many files): place them by hand


def read(path: Path, bad: BadRecords):
    return alce_format.read_items(path, bad, NAME)


READERS = {"asqa": read}


def draft(exs, ctx: DraftContext):
    return alce_format.draft_items(exs, ctx, NAME)
