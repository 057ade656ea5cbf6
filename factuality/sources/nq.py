"""Natural Questions, as DPR retriever JSON and as NQ-Open JSONL.

Raw formats: DPR JSON (a JSON array of `{question, answers, positive_ctxs, hard_negative_ctxs}`):
the positive passage is gold, DPR's hard negatives without a gold answer are negatives. NQ-Open
JSONL (`{question, answer: [..]}`): evidence retrieved from the passage corpus
(`corpus.draft_retrieved`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from . import corpus
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    RawExample,
    RemoteFile,
    filter_candidates,
    find_span,
    json_array,
    jsonl_records,
    short_hash,
    str_field,
    str_list,
)

NAME = "nq"
TASK = "question"
INPUTS = {"nq_dpr": "nq/*.json", "nq_open": "nq/*.jsonl", **corpus.INPUTS}
DOWNLOADS = [RemoteFile("https://dl.fbaipublicfiles.com/dpr/data/retriever/biencoder-nq-dev.json.gz",
                        "nq/biencoder-nq-dev.json", "gunzip"),
             RemoteFile("https://raw.githubusercontent.com/google-research-datasets/natural-questions/master/"
                        "nq_open/NQ-open.dev.jsonl", "nq/NQ-open.dev.jsonl"),
             corpus.PSGS_W100]
EXPECTED_DPR = "DPR retriever records {question, answers, positive_ctxs, hard_negative_ctxs} (biencoder-nq-*.json)"
EXPECTED_OPEN = "NQ-Open questions {question, answer: [...]}, one JSON object a line (NQ-open.*.jsonl)"


def _ctx_ok(c: Any) -> bool:
    return isinstance(c, dict) and isinstance(c.get("text"), str) and c["text"].strip() and isinstance(c.get("title"), str)


def read_dpr(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for where, rec in json_array(path, bad, EXPECTED_DPR):
        if not isinstance(rec, dict):
            bad.report(where, "(record)", "a JSON object is expected", rec)
            continue
        q, answers = str_field(rec, "question"), str_list(rec.get("answers"))
        pos, negs = rec.get("positive_ctxs"), rec.get("hard_negative_ctxs", [])
        problem = None
        if q is None:
            problem = ("question", "missing or not a non-empty string")
        elif answers is None:
            problem = ("answers", "expected a non-empty list of strings")
        elif not isinstance(pos, list) or not all(_ctx_ok(c) for c in pos):
            problem = ("positive_ctxs", "expected a list of {title, text, passage_id}")
        elif not isinstance(negs, list) or not all(_ctx_ok(c) for c in negs):
            problem = ("hard_negative_ctxs", "expected a list of {title, text, passage_id}")
        if problem:
            bad.report(where, *problem, rec)
            continue
        if not pos:
            bad.drop("nq_dpr_no_positive_passage")
            continue
        gold, span_found = None, True
        for c in pos:
            span = find_span(c["text"], answers)
            if span:
                gold = (c, span)
                break
        if gold is None:   # DPR positives are gold passages even when the string differs
            gold, span_found = (pos[0], (0, len(pos[0]["text"]))), False
        c, span = gold
        pid = str(c.get("passage_id", short_hash(c["text"])))
        cands = [Chunk(f"psg:{n.get('passage_id', short_hash(n['text']))}", n["title"], n["text"]) for n in negs]
        yield RawExample(NAME, f"dpr:{short_hash(q)}", q.strip(), answers, str(where),
                         gold=[(Chunk(f"psg:{pid}", c["title"], c["text"]), [span])], candidates=cands,
                         meta={"type": "dpr", "answer_span_found": span_found})


def read_nq_open(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for where, rec, line in jsonl_records(path, bad, EXPECTED_OPEN):
        q, answers = str_field(rec, "question"), str_list(rec.get("answer"))
        if q is None:
            bad.report(where, "question", "missing or not a non-empty string", line)
            continue
        if answers is None:
            bad.report(where, "answer", "expected a non-empty list of strings", line)
            continue
        yield RawExample(NAME, f"open:{short_hash(q)}", q.strip(), answers, str(where), meta={"type": "open"})


READERS = {"nq_dpr": read_dpr, "nq_open": read_nq_open}


def draft(exs: list[RawExample], ctx: DraftContext) -> list[Draft]:
    """DPR examples (they carry their gold passage) keep it; NQ-Open examples retrieve from the corpus."""
    drafts = []
    for ex in (e for e in exs if e.gold):
        cands = filter_candidates(ex.candidates, ex.answers, {c.doc_id for c, _ in ex.gold})
        drafts.append(Draft(ex, ex.gold[:1], [(c, None) for c in cands], True, "dpr"))
    return drafts + corpus.draft_retrieved([e for e in exs if not e.gold], ctx, NAME)
