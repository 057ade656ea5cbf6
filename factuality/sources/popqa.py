"""PopQA: entity-centric questions with popularity counts.

Raw formats: a pandas-written TSV (`popqa/*.tsv`, quoted cells) with columns `id, subj, prop, obj,
s_pop, o_pop, question, possible_answers` (a JSON list inside a cell); evidence: BM25 over
psgs_w100 (`corpus.draft_retrieved`). Self-RAG's retrieval results (`popqa/*.json`, `*.jsonl` or `*.gz`,
e.g. `popqa_longtail_w_gs.jsonl`: `{question, answers, s_wiki_title, pop, ctxs}`, JSONL or a JSON
array, gzip or not, recognised by content); evidence: the record's own passages
(`ctxs.draft_ctxs`), no corpus needed; `s_wiki_title` and `pop` (as `s_pop`) go into `meta`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..records import open_bytes
from . import corpus, ctxs
from .base import (
    BadRecords,
    Draft,
    DraftContext,
    RawExample,
    RemoteFile,
    read_by_content,
    str_list,
    tsv_rows,
)

NAME = "popqa"
TASK = "question"
INPUTS = {"popqa": "popqa/*.tsv", "popqa_json": "popqa/*.json", "popqa_jsonl": "popqa/*.jsonl", "popqa_gz": "popqa/*.gz",
          **corpus.INPUTS}
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


def _selfrag_meta(rec: dict) -> dict:
    meta = {}
    if isinstance(rec.get("s_wiki_title"), str):
        meta["s_wiki_title"] = rec["s_wiki_title"]
    if isinstance(rec.get("pop"), int) and not isinstance(rec.get("pop"), bool):
        meta["s_pop"] = rec["pop"]
    return meta


FORMATS = [ctxs.ctxs_format(NAME, "", _selfrag_meta)]


def read_popqa_ctxs(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    """Self-RAG's PopQA retrieval results (popqa_longtail_w_gs.jsonl), JSONL or JSON array, gzip or not."""
    return read_by_content(path, bad, FORMATS, NAME)


def read_popqa_any(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    """A gzip file under popqa/: the TSV or retrieval results, by content."""
    with open_bytes(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return read_popqa_ctxs(path, bad) if head[:1] in (b"{", b"[") else read_popqa(path, bad)


READERS = {"popqa": read_popqa, "popqa_json": read_popqa_ctxs, "popqa_jsonl": read_popqa_ctxs, "popqa_gz": read_popqa_any}


def draft(exs: list[RawExample], ctx: DraftContext) -> list[Draft]:
    """TSV questions retrieve from the corpus; retrieval results use their own passages."""
    return (ctxs.draft_ctxs([e for e in exs if e.retrieved is not None], ctx, NAME)
            + corpus.draft_retrieved([e for e in exs if e.retrieved is None], ctx, NAME))
