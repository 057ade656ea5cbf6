"""Natural Questions, as DPR retriever JSON and as NQ-Open JSONL.

Raw formats: DPR JSON (a JSON array of `{question, answers, positive_ctxs, hard_negative_ctxs}`):
the positive passage is gold, DPR's hard negatives without a gold answer are negatives. NQ-Open
JSONL (`{question, answer: [..]}`): evidence retrieved from the passage corpus
(`corpus.draft_retrieved`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from . import corpus, ctxs
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    Format,
    RawExample,
    RemoteFile,
    filter_candidates,
    find_span,
    json_array,
    jsonl_records,
    read_by_content,
    short_hash,
    str_field,
    str_list,
)

NAME = "nq"
TASK = "question"
INPUTS = {"nq_dpr": "nq/*.json", "nq_open": "nq/*.jsonl", "nq_gz": "nq/*.gz", **corpus.INPUTS}
DOWNLOADS = [RemoteFile("https://dl.fbaipublicfiles.com/dpr/data/retriever/biencoder-nq-dev.json.gz",
                        "nq/biencoder-nq-dev.json", "gunzip"),
             RemoteFile("https://raw.githubusercontent.com/google-research-datasets/natural-questions/master/"
                        "nq_open/NQ-open.dev.jsonl", "nq/NQ-open.dev.jsonl"),
             corpus.PSGS_W100]
EXPECTED_DPR = "DPR retriever records {question, answers, positive_ctxs, hard_negative_ctxs} (biencoder-nq-*.json)"
EXPECTED_OPEN = "NQ-Open questions {question, answer: [...]}, one JSON object a line (NQ-open.*.jsonl)"
OPEN_PREFIX = "open:"
DPR_KEEP_NEGATIVES = 8   # answer-free hard negatives kept per DPR record; a build shows at most
                         # num_distractors + max_support_chunks (+1 when unanswerable): 6 by default


def _ctx_ok(c: Any) -> bool:
    """A DPR passage of the right shape; one with no text (`ctxs.is_empty_passage`) is of the right
    shape too, and is left out and counted by the reader."""
    return (isinstance(c, dict) and isinstance(c.get("title"), str)
            and (isinstance(c.get("text"), str) or ctxs.is_empty_passage(c)))


def read_dpr(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    return _dpr_records(((w, r, r) for w, r in json_array(path, bad, EXPECTED_DPR)), path, bad)


def _dpr_records(records, path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for where, rec, _ in records:
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
        if problem is None and pos and all(ctxs.is_empty_passage(c) for c in pos):   # nothing usable is left
            problem = ("positive_ctxs[0].text", f"missing or not a non-empty string, and so are the other {len(pos) - 1} "
                       "positive passages: no usable positive passage left")
        if problem:
            bad.report(where, *problem, rec)
            continue
        if not pos:
            bad.drop("nq_dpr_no_positive_passage")
            continue
        n_empty = sum(ctxs.is_empty_passage(c) for c in pos + negs)
        if n_empty:   # a passage with no text: left out, counted, the rest of the record used
            bad.skip("nq_dpr_ctx_empty_text", n_empty)
            pos, negs = [c for c in pos if not ctxs.is_empty_passage(c)], [c for c in negs if not ctxs.is_empty_passage(c)]
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
        # Only the first few answer-free negatives can ever be shown: keep those, not all 30 of a DPR
        # record (a 7.9 GB file's examples then fit in a few hundred MB)
        cands = filter_candidates(cands, answers, {f"psg:{pid}"})[:DPR_KEEP_NEGATIVES]
        yield RawExample(NAME, f"dpr:{short_hash(q)}", q.strip(), answers, str(where),
                         gold=[(Chunk(f"psg:{pid}", c["title"], c["text"]), [span])], candidates=cands,
                         meta={"type": "dpr", "answer_span_found": span_found})


def read_nq_open(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    return _open_records(jsonl_records(path, bad, EXPECTED_OPEN), path, bad)


def _open_records(records, path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for where, rec, line in records:
        if not isinstance(rec, dict):
            bad.report(where, "(record)", "a JSON object is expected", line)
            continue
        q, answers = str_field(rec, "question"), str_list(rec.get("answer"))
        if q is None:
            bad.report(where, "question", "missing or not a non-empty string", line)
            continue
        if answers is None:
            bad.report(where, "answer", "expected a non-empty list of strings", line)
            continue
        yield RawExample(NAME, f"{OPEN_PREFIX}{short_hash(q)}", q.strip(), answers, str(where), meta={"type": "open"})


FORMATS = [
    Format("DPR retriever JSON", EXPECTED_DPR, lambda r: isinstance(r, dict) and "positive_ctxs" in r, _dpr_records),
    ctxs.ctxs_format(NAME, OPEN_PREFIX, lambda rec: {"type": "open"}),
    Format("NQ-Open", EXPECTED_OPEN, lambda r: isinstance(r, dict) and "answer" in r and "question" in r, _open_records),
]


def read_nq(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    """Any NQ file: DPR JSON, NQ-Open or NQ-Open retrieval results, told apart by the first record."""
    return read_by_content(path, bad, FORMATS, NAME)


READERS = {"nq_dpr": read_nq, "nq_open": read_nq, "nq_gz": read_nq}


def draft(exs: list[RawExample], ctx: DraftContext) -> list[Draft]:
    """DPR examples (they carry their gold passage) keep it; retrieval results use their own passages;
    NQ-Open questions retrieve from the corpus."""
    drafts = []
    need = ctx.cfg.num_distractors + max(ctx.cfg.max_support_chunks, 1)
    if need > DPR_KEEP_NEGATIVES and any(e.gold for e in exs):
        raise ValueError(f"num_distractors + max_support_chunks ({need}) is more than the {DPR_KEEP_NEGATIVES} hard "
                         "negatives kept per DPR retriever record; lower --num-distractors or --max-support-chunks")
    for ex in (e for e in exs if e.gold):
        cands = filter_candidates(ex.candidates, ex.answers, {c.doc_id for c, _ in ex.gold})
        drafts.append(Draft(ex, ex.gold[:1], [(c, None) for c in cands], True, "dpr"))
    drafts += ctxs.draft_ctxs([e for e in exs if e.retrieved is not None], ctx, NAME)
    return drafts + corpus.draft_retrieved([e for e in exs if not e.gold and e.retrieved is None], ctx, NAME)
