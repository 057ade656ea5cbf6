"""ALCE / Trust-Eval data files (princeton-nlp/ALCE `data/*.json`, Trust-Eval's `*_eval_top100_calibrated.json`):
the format the `asqa`, `qampari` and `eli5` sources read. Not a dataset of its own.

A file is a JSON array of items, or an object whose `data` is one (a result file of either tool):

    {"question": "...", "sample_id"? | "id"? | "question_id"?: ...,
     "docs": [{"title": "...", "text": "...", "answers_found"?: [0 | 1, ...]}, ...],
     "qa_pairs": [{"short_answers": ["...", ...], "question"?: "..."}]   (asqa)
     "answers": [["alias", ...], ...]                                     (qampari)
     "claims": ["...", ...], "answer": "long answer"                      (eli5)
     "answer"?: "long answer" (asqa)}

Drafting: the documents are the evidence (the file's own retrieval, kept whole). A document is
gold when it holds a gold answer: its `answers_found` when the file has them (Trust-Eval's
calibrated files), else a normalised short answer in its text (asqa, qampari) or every word of a
claim in it (eli5, the lexical rule; Trust-Eval's files decide by NLI). Its support span is the
first answer it holds, else the whole document (a claim has no span). A question no document
answers is unanswerable (its target is the refusal): Trust-Eval's answerability. The example keeps
what ALCE and Trust-Eval score with in `meta`: `answer_groups` (alias lists, one per gold answer;
qa_pairs' short answers or QAMPARI's answers), `claims`, `long_answer`, `answers_found` (per
document id). Run with `--num-distractors` at least the number of documents and
`--no-oracle-fraction 0` to show every document of the file, as the benchmarks do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..records import RecordError
from ..records.reading import read_json
from ..text import answer_tokens, has_answer
from .base import BadRecords, Chunk, Draft, DraftContext, RawExample, Where, find_span, short_hash

KINDS = ("asqa", "qampari", "eli5")


def expected(kind: str) -> str:
    gold = {"asqa": "qa_pairs: [{short_answers: [...]}]", "qampari": "answers: [[alias, ...], ...]",
            "eli5": "claims: [...], answer"}[kind]
    return f"ALCE / Trust-Eval {kind} items {{question, docs: [{{title, text, answers_found?}}], {gold}}}"


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x.strip() for x in v)


def _problem(rec: Any, kind: str) -> tuple[str, str] | None:
    if not isinstance(rec, dict):
        return "(record)", "a JSON object is expected"
    if not isinstance(rec.get("question"), str) or not rec["question"].strip():
        return "question", "missing or not a non-empty string"
    docs = rec.get("docs")
    if not isinstance(docs, list) or not docs:
        return "docs", "expected a non-empty list of {title, text}"
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not isinstance(d.get("text"), str) or not d["text"].strip() \
                or not isinstance(d.get("title", ""), str):
            return f"docs[{i}]", "expected {title, text} with a non-empty text"
    if kind == "asqa":
        pairs = rec.get("qa_pairs")
        if not isinstance(pairs, list) or not pairs or not all(
                isinstance(p, dict) and _str_list(p.get("short_answers")) for p in pairs):
            return "qa_pairs", "expected a non-empty list of {short_answers: [non-empty strings]}"
        n = len(pairs)
    elif kind == "qampari":
        ans = rec.get("answers")
        if not isinstance(ans, list) or not ans or not all(_str_list(a) for a in ans):
            return "answers", "expected a non-empty list of alias lists ([[\"alias\", ...], ...])"
        n = len(ans)
    else:
        if not _str_list(rec.get("claims")):
            return "claims", "expected a non-empty list of non-empty strings"
        if not isinstance(rec.get("answer"), str) or not rec["answer"].strip():
            return "answer", "missing or not a non-empty string (the long answer)"
        n = len(rec["claims"])
    for i, d in enumerate(docs):
        af = d.get("answers_found")
        if af is not None and not (isinstance(af, list) and len(af) == n and all(x in (0, 1) for x in af)):
            return f"docs[{i}].answers_found", f"expected {n} flags of 0 or 1 (one per gold answer)"
    return None


def _records(path: Path, bad: BadRecords, kind: str) -> Iterator[tuple[Where, Any]]:
    data = read_json(path, bad, expected=expected(kind))
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not data:
        raise RecordError(f"{path}: (file): expected a non-empty JSON array of {expected(kind)} (or an object "
                          f"whose 'data' is one), got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield Where(str(path), index=i), rec


def read_items(path: Path, bad: BadRecords, kind: str) -> Iterator[RawExample]:
    for where, rec in _records(path, bad, kind):
        problem = _problem(rec, kind)
        if problem:
            bad.report(where, *problem, rec)
            continue
        orig = next((str(rec[k]) for k in ("sample_id", "id", "question_id", "_id") if rec.get(k) not in (None, "")),
                    short_hash(rec["question"]))
        if kind == "asqa":
            groups = [list(p["short_answers"]) for p in rec["qa_pairs"]]
        elif kind == "qampari":
            groups = [list(a) for a in rec["answers"]]
        else:
            groups = [[c] for c in rec["claims"]]
        answers = (list(dict.fromkeys(a for g in groups for a in g)) if kind != "eli5" else [rec["answer"].strip()])
        meta = {"answer_groups": groups, "long_answer": rec.get("answer") if isinstance(rec.get("answer"), str) else None}
        if kind == "eli5":
            meta["claims"] = list(rec["claims"])
        docs = [Chunk(str(d.get("id") or f"{orig}:doc{i}"), d.get("title") or "", d["text"].strip())
                for i, d in enumerate(rec["docs"])]
        found = []
        for d, c in zip(rec["docs"], docs):
            if d.get("answers_found") is not None:
                found.append(list(d["answers_found"]))
            elif kind == "eli5":
                words = set(answer_tokens(f"{c.title} {c.text}"))
                found.append([int(set(answer_tokens(g[0])) <= words) for g in groups])
            else:
                found.append([int(has_answer(f"{c.title} {c.text}", g)) for g in groups])
        meta["answers_found"] = {c.doc_id: f for c, f in zip(docs, found)}
        meta["answers_found_from"] = "file" if all(d.get("answers_found") is not None for d in rec["docs"]) else (
            "lexical" if kind == "eli5" else "string match")
        yield RawExample(kind, orig, rec["question"].strip(), answers, str(where), candidates=docs, meta=meta)


def draft_items(exs: list[RawExample], ctx: DraftContext, kind: str) -> list[Draft]:
    drafts = []
    for ex in exs:
        found = ex.meta["answers_found"]
        aliases = [a for g in ex.meta["answer_groups"] for a in g] if kind != "eli5" else []
        gold, negs = [], []
        for c in ex.candidates:
            if any(found[c.doc_id]):
                span = find_span(c.text, aliases) if aliases else None
                gold.append((c, [span if span else (0, len(c.text))]))
            else:
                negs.append((c, None))
        gold = gold[:ctx.cfg.max_support_chunks]
        drafts.append(Draft(ex, gold, negs, bool(gold), "file docs",
                            unanswerable_reason=None if gold else "no document holds a gold answer"))
    return drafts
