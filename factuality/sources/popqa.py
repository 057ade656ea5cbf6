"""PopQA: entity-centric questions with popularity counts; evidence retrieved from the passage corpus.

Raw format: a pandas-written TSV (quoted cells) with columns `id, subj, prop, obj, s_pop, o_pop,
question, possible_answers` (a JSON list inside a cell). Evidence: BM25 over psgs_w100
(`corpus.draft_retrieved`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from . import corpus
from .base import (
    BadRecords,
    Draft,
    DraftContext,
    RawExample,
    RemoteFile,
    str_list,
    tsv_rows,
)

NAME = "popqa"
TASK = "question"
INPUTS = {"popqa": "popqa/*.tsv", **corpus.INPUTS}
DOWNLOADS = [RemoteFile("https://raw.githubusercontent.com/AlexTMallen/adaptive-retrieval/main/data/popQA.tsv",
                        "popqa/popQA.tsv"),
             corpus.PSGS_W100]
POPQA_COLUMNS = ("id", "subj", "prop", "obj", "s_pop", "o_pop", "question", "possible_answers")
EXPECTED = "PopQA rows with columns " + ", ".join(POPQA_COLUMNS) + " (popQA.tsv)"


def read_popqa(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for where, rec, raw in tsv_rows(path, bad, POPQA_COLUMNS, EXPECTED):
        try:
            answers = json.loads(rec["possible_answers"])
        except json.JSONDecodeError as e:
            bad.report(where, "possible_answers", f"not a JSON list ({e.msg})", raw)
            continue
        answers = str_list(answers)
        if answers is None:
            bad.report(where, "possible_answers", "expected a non-empty JSON list of strings", raw)
            continue
        if not rec["question"].strip():
            bad.report(where, "question", "empty", raw)
            continue
        if not rec["id"].strip():
            bad.report(where, "id", "empty", raw)
            continue
        try:
            s_pop, o_pop = int(rec["s_pop"]), int(rec["o_pop"])
        except ValueError:
            bad.report(where, "s_pop", f"not an integer: {rec['s_pop']!r} / o_pop {rec['o_pop']!r}", raw)
            continue
        meta = {"type": rec["prop"], "subj": rec["subj"], "obj": rec["obj"], "s_pop": s_pop, "o_pop": o_pop}
        if rec.get("s_wiki_title"):
            meta["s_wiki_title"] = rec["s_wiki_title"]
        yield RawExample(NAME, rec["id"].strip(), rec["question"].strip(), answers, str(where), meta=meta)


READERS = {"popqa": read_popqa}


def draft(exs: list[RawExample], ctx: DraftContext) -> list[Draft]:
    return corpus.draft_retrieved(exs, ctx, NAME)
