"""ELI5 (explain-like-I'm-five questions, long answers judged by claims) in ALCE's format: factuality/sources/alce_format.py reads and drafts it.

Raw files: `<raw root>/eli5/*.json` (ALCE: `eli5_eval_gtr_top100.json` and the like, from its
download script; Trust-Eval: `eli5_eval_top100_calibrated.json`)."""
from __future__ import annotations

from pathlib import Path

from . import alce_format
from .base import BadRecords, DraftContext

NAME = "eli5"
TASK = "question"
INPUTS = {"eli5": "eli5/*.json"}
DOWNLOADS: list = []   # ALCE's data come from its download script (a tarball of many files): place them by hand


def read(path: Path, bad: BadRecords):
    return alce_format.read_items(path, bad, NAME)


READERS = {"eli5": read}


def draft(exs, ctx: DraftContext):
    return alce_format.draft_items(exs, ctx, NAME)
