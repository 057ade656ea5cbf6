"""Retrieval results in the "ctxs" format, for any QA dataset (not a dataset of its own).

The format DPR's retriever writes and FiD, Atlas and Self-RAG read: one JSON object a line, or a
JSON array, either possibly gzip-compressed (told apart by content, not by name):

    {"question": "...", "answers": ["..."], "id"?: ..., "ctxs": [
        {"id"?: "...", "title": "...", "text": "...", "score"?: 81.2 | "81.2",
         "has_answer"? | "hasanswer"?: true, "isgold"?: false}, ...]}

`nq` and `popqa` read it into their own sources (`Format`s built by `ctxs_format`); a dataset of
one's own reads it through `factuality/sources/own.py`. Drafting (`draft_ctxs`):
- support: the best-ranked passage the file flags `has_answer` / `hasanswer`; for passages without
  a flag, the answer match used everywhere else (a normalised gold answer in the text);
- hard negatives: retrieved passages that are answer-free (flagged false, or unflagged, and
  holding no gold answer), in the file's order; when a question has too few, BM25 over all the
  passages of the source's records fills up (never an answer-holding one, never its own; the doc
  ids it offered in `meta.bm25_fill_doc_ids`, their `retrieval_scores` BM25's, the others the file's);
- a question whose passages hold no answer is a retrieval miss: dropped or kept as unanswerable
  (`--retrieval-miss`), counted either way;
- `isgold` flags are kept in `meta` (`isgold_doc_ids`, and `support_isgold` for the support chunk).

A passage with no text (missing, null or blank: Self-RAG's PopQA results list Wikipedia category
pages so) is left out and counted (`skipped_parts`, `<source>_ctx_empty_text`, in the summary and
run card); the record is refused only when every one of its passages is so. A passage of the wrong
shape (not an object, a score that is not a number, a flag that is not true/false) is a malformed
record, as before: the file is not what it claims to be.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..retrieval import BM25Index
from ..text import DROP_PUNCT, has_answer, normalize_answer
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    Format,
    RawExample,
    Retrieved,
    Where,
    find_span,
    short_hash,
    str_list,
)

EXPECTED = ("retrieval results {question, answers: [...], ctxs: [{id?, title, text, score?, has_answer? | "
            "hasanswer?, isgold?}]}, one JSON object a line or a JSON array, .gz accepted (DPR retriever output, "
            "FiD, Atlas, Self-RAG)")


def is_ctxs(rec: Any) -> bool:
    return isinstance(rec, dict) and "ctxs" in rec


def _score(v: Any) -> float | None | str:
    """A score as a float (DPR writes them as strings); a problem as a str."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "not a number"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return f"not a number: {v!r}"
    return x if math.isfinite(x) else f"not a finite number: {v!r}"


def is_empty_passage(c: Any) -> bool:
    """A retrieved passage whose text is missing, null or blank: normal in real retrieval results
    (Self-RAG's PopQA lists hold Wikipedia category pages with empty text); skipped and counted."""
    return isinstance(c, dict) and (c.get("text") is None or (isinstance(c["text"], str) and not c["text"].strip()))


def parse_ctx(c: Any) -> Retrieved | tuple[str, str]:
    """One passage of `ctxs`, or (field, problem)."""
    if not isinstance(c, dict):
        return "", "a JSON object {title, text, ...} is expected"
    text, title = c.get("text"), c.get("title", "")
    if not isinstance(text, str) or not text.strip():
        return "text", "missing or not a non-empty string"
    if title is None:
        title = ""
    if not isinstance(title, str):
        return "title", "not a string"
    pid = c.get("id")
    if pid is not None and not (isinstance(pid, (str, int)) and not isinstance(pid, bool) and str(pid).strip()):
        return "id", "not a non-empty string or integer"
    score = _score(c.get("score"))
    if isinstance(score, str):
        return "score", score
    flags = {}
    for key in ("has_answer", "hasanswer", "isgold"):
        if c.get(key) is not None and not isinstance(c[key], bool):
            return key, f"expected true or false, got {c[key]!r}"
        flags[key] = c.get(key)
    flag = flags["has_answer"] if flags["has_answer"] is not None else flags["hasanswer"]
    doc_id = f"psg:{str(pid).strip()}" if pid is not None else f"ctx:{short_hash(title + chr(10) + text)}"
    return Retrieved(Chunk(doc_id, title, text.strip()), score, flag, flags["isgold"])


def read_ctxs(records: Iterable[tuple[Where, Any, Any]], bad: BadRecords, source: str, id_prefix: str = "",
              meta_of: Callable[[dict], dict] | None = None) -> Iterator[RawExample]:
    """RawExamples (with `retrieved`) from ctxs records; a malformed one goes to `bad` naming its field.
    Ids: `<source>:<id_prefix><the record's id, else a hash of the question>`."""
    for where, rec, raw in records:
        if not isinstance(rec, dict):
            bad.report(where, "(record)", "a JSON object is expected", raw)
            continue
        q, answers, ctxs = rec.get("question"), str_list(rec.get("answers")), rec.get("ctxs")
        problem = None
        if not isinstance(q, str) or not q.strip():
            problem = ("question", "missing or not a non-empty string")
        elif answers is None:
            problem = ("answers", "expected a non-empty list of strings")
        elif not isinstance(ctxs, list):
            problem = ("ctxs", "expected a list of {title, text, ...} (an empty list is allowed)")
        elif rec.get("id") is not None and (isinstance(rec["id"], bool) or not isinstance(rec["id"], (str, int))
                                            or not str(rec["id"]).strip()):
            problem = ("id", "not a non-empty string or integer")
        retrieved: list[Retrieved] = []
        empty: list[int] = []
        for i, c in enumerate(ctxs if problem is None else []):
            if is_empty_passage(c):   # a passage with no text (e.g. a Wikipedia category page): left out
                empty.append(i)
                continue
            r = parse_ctx(c)
            if isinstance(r, tuple):
                problem = (f"ctxs[{i}]" + (f".{r[0]}" if r[0] else ""), r[1])
                break
            retrieved.append(r)
        if problem is None and empty and not retrieved:   # nothing usable is left
            problem = (f"ctxs[{empty[0]}].text", f"missing or not a non-empty string, and so are the other "
                       f"{len(empty) - 1} passages of ctxs: no usable passage left (an empty list, ctxs: [], is "
                       "allowed for a question nothing was retrieved for)")
        if problem:
            bad.report(where, *problem, raw)
            continue
        if empty:
            bad.skip(f"{source}_ctx_empty_text", len(empty))
        orig = str(rec["id"]).strip() if rec.get("id") is not None else short_hash(q.strip())
        meta = {"retrieved_passages": len(retrieved)}
        isgold = [r.chunk.doc_id for r in retrieved if r.isgold]
        if isgold:
            meta["isgold_doc_ids"] = isgold
        meta.update(meta_of(rec) if meta_of else {})
        yield RawExample(source, id_prefix + orig, q.strip(), answers, str(where), meta=meta, retrieved=retrieved)


def ctxs_format(source: str, id_prefix: str = "", meta_of: Callable[[dict], dict] | None = None) -> Format:
    """The ctxs `Format` for a dataset module's list of formats."""
    def read(records, path: Path, bad: BadRecords) -> Iterator[RawExample]:
        return read_ctxs(records, bad, source, id_prefix, meta_of)

    return Format("retrieval results (ctxs)", EXPECTED, is_ctxs, read)


def answer_test(answers: list[str]) -> Callable[[str], bool]:
    """`text.has_answer(text, answers)` as a function of the text, with a cheap exact pre-check: every
    token of a normalised answer is a substring of the lower-cased text without punctuation (what
    normalisation keeps), so a text lacking one cannot match and skips the full normalisation."""
    norm = [a.split() for a in (normalize_answer(x) for x in answers) if a]

    def holds(text: str) -> bool:
        low = text.lower().translate(DROP_PUNCT)
        if not any(all(t in low for t in toks) for toks in norm):
            return False
        return has_answer(text, answers)

    return holds


def split_retrieved(ex: RawExample) -> tuple[tuple[Retrieved, tuple[int, int], bool] | None, list[Retrieved]]:
    """(support passage, its answer span, whether the span was found; answer-free passages in order).

    Support is the first passage the file flags as answer-bearing (or, unflagged, that holds a gold
    answer with a findable span). A flagged passage whose text has no findable span is still support
    (the flag is the file's judgement; the span is then the whole passage). Negatives hold no answer
    by either test, so a passage flagged false that does contain the answer is shown as neither.
    """
    gold, negs, seen = None, [], set()
    holds_answer = answer_test(ex.answers)
    for r in ex.retrieved or []:
        if r.chunk.doc_id in seen:
            continue
        seen.add(r.chunk.doc_id)
        holds = holds_answer(r.chunk.text)
        if r.has_answer if r.has_answer is not None else holds:
            if gold is None:
                span = find_span(r.chunk.text, ex.answers)
                if span is not None:
                    gold = (r, span, True)
                elif r.has_answer:
                    gold = (r, (0, len(r.chunk.text)), False)
        elif not holds:
            negs.append(r)
    return gold, negs


def pool_index(exs: list[RawExample], ctx: DraftContext, source: str) -> tuple[list[Chunk], dict[str, int], BM25Index]:
    """Every distinct passage of the source's ctxs records and a BM25 index over them (built once)."""
    key = f"ctxs_pool:{source}"
    if key not in ctx.shared:
        chunks: list[Chunk] = []
        pos: dict[str, int] = {}
        for ex in exs:
            for r in ex.retrieved or []:
                if r.chunk.doc_id not in pos:
                    pos[r.chunk.doc_id] = len(chunks)
                    chunks.append(r.chunk)
        index = BM25Index([f"{c.title}. {c.text}" for c in chunks], n_threads=ctx.cfg.n_threads,
                          show_progress=not ctx.cfg.quiet and len(chunks) > 50_000) if chunks else None
        ctx.shared[key] = (chunks, pos, index)
    return ctx.shared[key]


def draft_ctxs(exs: list[RawExample], ctx: DraftContext, source: str) -> list[Draft]:
    """Drafts from records that carry their retrieved passages (module docstring)."""
    if not exs:
        return []
    cfg = ctx.cfg
    parts = []
    for ex in exs:
        gold, negs = split_retrieved(ex)
        parts.append((ex, gold, [(r.chunk, r.score) for r in negs]))
    # Room for the distractors, plus the chunk a refusal or a no-oracle example shows instead of its support.
    need = cfg.num_distractors + max(1, cfg.max_support_chunks)
    short = [i for i, (_, _, negs) in enumerate(parts) if len(negs) < need]
    filled: set[int] = set()
    if short:
        chunks, pos, index = pool_index(exs, ctx, source)
        if index is not None:
            # a question's own passages rank high and are excluded: fetch enough past them in one retrieve
            own = max(len(parts[i][0].retrieved or []) for i in short)
            mined = index.mine([parts[i][0].question for i in short], [parts[i][0].answers for i in short], need,
                               exclude=[[pos[r.chunk.doc_id] for r in parts[i][0].retrieved or []] for i in short],
                               k=max(cfg.retrieve_k, need + own))
            for i, hits in zip(short, mined):
                negs, fill = parts[i][2], hits[:need - len(parts[i][2])]
                negs += [(chunks[h.index], h.score) for h in fill]
                if fill:
                    filled.add(i)
                    parts[i][0].meta["bm25_fill_doc_ids"] = [chunks[h.index].doc_id for h in fill]
    drafts = []
    for i, (ex, gold, negs) in enumerate(parts):
        origin = "ctxs+bm25" if i in filled else "ctxs"
        if gold is not None:
            r, span, found = gold
            if r.isgold is not None:
                ex.meta["support_isgold"] = r.isgold
            if not found:
                ex.meta["answer_span_found"] = False
            drafts.append(Draft(ex, [(r.chunk, [span])], negs, True, origin, gold_scores=[r.score]))
        elif cfg.retrieval_miss == "unanswerable" and negs:
            drafts.append(Draft(ex, [], negs, False, origin, unanswerable_reason="retrieval_miss"))
        else:
            ctx.bad.drop(f"{source}_no_support_retrieved")
    return drafts
