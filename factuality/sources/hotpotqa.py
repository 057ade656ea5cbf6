"""HotpotQA, distractor setting: multi-hop questions over Wikipedia paragraphs.

Raw format: a JSON array of `{_id, question, answer, type, level, supporting_facts: [[title,
sent_idx]], context: [[title, [sentences]]]}`. Gold chunks are the supporting paragraphs (the
supporting sentences give the spans); the other context paragraphs, BM25-ranked against the
question, are the hard negatives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from ..retrieval import rank_small
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    RawExample,
    RemoteFile,
    filter_candidates,
    json_array,
    str_field,
)

NAME = "hotpotqa"
TASK = "question"   # the prompt asks a question; the answer is a span
INPUTS = {"hotpotqa": "hotpotqa/*.json"}
DOWNLOADS = [RemoteFile("http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_train_v1.1.json",
                        "hotpotqa/hotpot_train_v1.1.json")]
EXPECTED = "HotpotQA records {_id, question, answer, supporting_facts, context} (hotpot_*_v1.1.json)"


def paragraph_chunk(title: str, sentences: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join HotpotQA sentences into the paragraph text; return it and each sentence's span."""
    text, spans, pos = "", [], 0
    for s in sentences:
        lead = len(s) - len(s.lstrip())
        body = s.strip()
        spans.append((pos + lead, pos + lead + len(body)))
        text += s
        pos += len(s)
    shift = len(text) - len(text.lstrip())
    text = text.strip()
    spans = [(max(0, a - shift), min(len(text), b - shift)) for a, b in spans]
    return text, spans


def _problem(rec: dict) -> tuple[str, str] | None:
    for key in ("_id", "question", "answer"):
        if str_field(rec, key) is None:
            return key, "missing or not a non-empty string"
    ctx, sfs = rec.get("context"), rec.get("supporting_facts")
    if not (isinstance(ctx, list) and ctx and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], list)
            and all(isinstance(s, str) for s in p[1]) for p in ctx)):
        return "context", "expected a non-empty list of [title, [sentences]]"
    if not (isinstance(sfs, list) and sfs and all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and isinstance(s[1], int) for s in sfs)):
        return "supporting_facts", "expected a non-empty list of [title, sentence_index]"
    titles = [p[0] for p in ctx]
    missing = [t for t, _ in sfs if t not in titles]
    if missing:
        return "supporting_facts", f"title {missing[0]!r} is not in context"
    return None


def read_hotpotqa(path: Path, bad: BadRecords) -> Iterator[RawExample]:
    for where, rec in json_array(path, bad, EXPECTED):
        if not isinstance(rec, dict):
            bad.report(where, "(record)", "a JSON object is expected", rec)
            continue
        problem = _problem(rec)
        if problem:
            bad.report(where, *problem, rec)
            continue
        paragraphs: dict[str, tuple[str, list[tuple[int, int]]]] = {}
        for title, sents in rec["context"]:
            if title not in paragraphs:
                paragraphs[title] = paragraph_chunk(title, sents)
        gold_titles: list[str] = []
        spans_by_title: dict[str, list[tuple[int, int]]] = {}
        out_of_range = []
        for title, si in rec["supporting_facts"]:
            text, sent_spans = paragraphs[title]
            if not 0 <= si < len(sent_spans) or sent_spans[si][0] >= sent_spans[si][1]:
                out_of_range.append([title, si])   # a known quirk of the HotpotQA dump
                continue
            if title not in gold_titles:
                gold_titles.append(title)
            span = sent_spans[si]
            if span not in spans_by_title.setdefault(title, []):
                spans_by_title[title].append(span)
        if not gold_titles:
            bad.report(where, "supporting_facts", "no supporting sentence index is inside its paragraph", rec)
            continue
        gold = [(Chunk(title, title, paragraphs[title][0]), sorted(spans_by_title[title])) for title in gold_titles]
        cands = [Chunk(t, t, paragraphs[t][0]) for t in paragraphs if t not in gold_titles and paragraphs[t][0]]
        meta = {"type": rec.get("type"), "level": rec.get("level")}
        if out_of_range:
            meta["support_facts_out_of_range"] = out_of_range
        yield RawExample(NAME, rec["_id"], rec["question"].strip(), [rec["answer"].strip()], str(where),
                         gold=gold, candidates=cands, meta=meta)


READERS = {"hotpotqa": read_hotpotqa}


def draft(exs: list[RawExample], ctx: DraftContext) -> list[Draft]:
    """Supporting paragraphs are gold; the other context paragraphs, BM25-ranked, are negatives."""
    cfg = ctx.cfg
    drafts = []
    for ex in tqdm(exs, desc="hotpotqa: rank distractors", disable=cfg.quiet or len(exs) < 2000):
        gold = ex.gold[:cfg.max_support_chunks]
        cands = filter_candidates(ex.candidates, ex.answers, {c.doc_id for c, _ in ex.gold})
        ranked = rank_small(ex.question, [f"{c.title}. {c.text}" for c in cands])
        negs = [(cands[h.index], h.score) for h in ranked]
        drafts.append(Draft(ex, gold, negs, True, "context"))
    return drafts
