"""A dataset of one's own: `build_data.py --sources NAME` for a NAME that is not one of the suite's.

Its files are read from `<raw root>/NAME/` (`*.json`, `*.jsonl`, `*.csv`, any of them gzipped as
`*.gz`), and each file's format is recognised by its content, not its name:
- retrieval results in the ctxs format (`factuality/sources/ctxs.py`): `{question, answers, ctxs}`;
  evidence from each record's own passages;
- a knowledge base ("documents"): `{id, title?, text}` (or `content` for `text`), one object a
  line; documents longer than `chunk_words` words are split into chunks (`doc:<id>#<n>`);
- question/answer pairs: JSONL `{id?, question, answers: [...]}` (or `answer`: a string or a
  list), or CSV with a header holding `question` and `answers` (or `answer`; a cell that is a
  JSON list gives several aliases), `id` optional. Each question retrieves `retrieve_k` chunks
  from the knowledge base (BM25, or dense / hybrid with `--retriever`, see
  `retrieval.passage_index`); the best chunk holding a gold answer is support, answer-free ones
  are the hard negatives, and a question with no answer-holding chunk is a retrieval miss.
Examples are `NAME:<id or a hash of the question>` with source NAME and the same record contract
as the suite's datasets; the prompt asks a question (TASK "question").

`module(NAME)` builds the dataset module (the protocol of `factuality/sources/__init__.py`) for a
name; it is not added to the registry, whose names stay the suite's own datasets.
"""
from __future__ import annotations

import json
import logging
import types
from functools import partial
from pathlib import Path
from typing import Any, Iterator

from ..records import SOURCE_NAME, Where, open_bytes
from ..retrieval import chunk_words, passage_index
from . import ctxs
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    Format,
    RawExample,
    describe_formats,
    first_record,
    json_records,
    pick_format,
    short_hash,
    str_list,
    tsv_rows,
)
from .corpus import draft_from_index

log = logging.getLogger(__name__)

EXPECTED_DOCS = "a knowledge base {id, title?, text | content}, one JSON object a line"
EXPECTED_QA = "question/answer pairs {id?, question, answers: [...] | answer}, JSONL (or CSV with a header)"
EXPECTED_CSV = "question/answer pairs as CSV with a header holding question and answers (or answer), id optional"


def is_document(rec: Any) -> bool:
    return isinstance(rec, dict) and "question" not in rec and ("text" in rec or "content" in rec)


def is_qa(rec: Any) -> bool:
    return isinstance(rec, dict) and "question" in rec and "ctxs" not in rec


def _answers(v: Any) -> list[str] | None:
    if isinstance(v, str):
        return [v] if v.strip() else None
    return str_list(v)


def _id(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip():
        return None
    return str(v).strip()


def read_qa(records, path: Path, bad: BadRecords, source: str) -> Iterator[RawExample]:
    """Question/answer pairs (JSONL objects or CSV rows as dicts)."""
    for where, rec, raw in records:
        if not isinstance(rec, dict):
            bad.report(where, "(record)", "a JSON object is expected", raw)
            continue
        key = "answers" if rec.get("answers") not in (None, "") else "answer"
        q, answers = rec.get("question"), _answers(rec.get(key))
        if not isinstance(q, str) or not q.strip():
            bad.report(where, "question", "missing or not a non-empty string", raw)
            continue
        if answers is None:
            bad.report(where, key, "expected a non-empty string or a non-empty list of strings", raw)
            continue
        orig = _id(rec.get("id")) if rec.get("id") not in (None, "") else short_hash(q.strip())
        if orig is None:
            bad.report(where, "id", "not a non-empty string or integer", raw)
            continue
        yield RawExample(source, orig, q.strip(), answers, str(where), meta={"type": "qa_pair"})


def read_documents(records, path: Path, bad: BadRecords, max_words: int) -> Iterator[Chunk]:
    """Knowledge-base chunks: each document split into `max_words`-word chunks."""
    seen: dict[str, str] = {}
    for where, rec, raw in records:
        if not isinstance(rec, dict):
            bad.report(where, "(record)", "a JSON object is expected", raw)
            continue
        key = "text" if "text" in rec else "content"
        doc_id, text, title = _id(rec.get("id")), rec.get(key), rec.get("title", "")
        problem = None
        if doc_id is None:
            problem = ("id", "missing or not a non-empty string or integer")
        elif not isinstance(text, str) or not text.strip():
            problem = (key, "missing or not a non-empty string")
        elif title is not None and not isinstance(title, str):
            problem = ("title", "not a string")
        elif doc_id in seen:
            problem = ("id", f"{doc_id!r} was already read at {seen[doc_id]}; document ids must be unique")
        if problem:
            bad.report(where, *problem, raw)
            continue
        seen[doc_id] = str(where)
        parts = chunk_words(text, max_words)
        for j, part in enumerate(parts):
            yield Chunk(f"doc:{doc_id}" + (f"#{j}" if len(parts) > 1 else ""), title or "", part)


def csv_records(path: Path, bad: BadRecords) -> Iterator[tuple[Where, dict, str]]:
    """Rows of a CSV file with a header, as (where, {column: cell}, the row); an answers cell holding a
    JSON list becomes that list."""
    for where, rec, text in tsv_rows(path, bad, ("question", ("answers", "answer")), EXPECTED_CSV, delimiter=","):
        rec = dict(rec)
        problem = None
        for key in ("answers", "answer"):
            cell = (rec.get(key) or "").strip()
            if cell.startswith("["):
                try:
                    rec[key] = json.loads(cell)
                except json.JSONDecodeError as e:
                    problem = (key, f"starts with '[' but is not a JSON list ({e.msg})")
        if problem:
            bad.report(where, *problem, text)
            continue
        yield where, rec, text


def _formats(source: str) -> list[Format]:
    return [
        ctxs.ctxs_format(source),
        Format("question/answer pairs", EXPECTED_QA, is_qa, partial(read_qa, source=source)),
        Format("knowledge base (documents)", EXPECTED_DOCS, is_document, lambda records, path, bad: iter(())),
    ]


def _is_json(path: Path) -> bool:
    with open_bytes(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] in (b"{", b"[")


def _records(path: Path, bad: BadRecords, source: str):
    """(the file's format, its records from the first on) for a JSON, JSONL or CSV file (gzip or not)."""
    formats = _formats(source)
    if not _is_json(path):
        records = csv_records(path, bad)
        fmt = formats[1]
    else:
        records = json_records(path, bad, "one of: " + describe_formats(formats))
        first, records = first_record(records)
        if first is None:
            return None, iter(())
        fmt = pick_format(path, first, formats, source)
    return fmt, records


def read_own(path: Path, bad: BadRecords, source: str) -> Iterator[RawExample]:
    """The questions of one file of a dataset of one's own (a knowledge base holds none)."""
    fmt, records = _records(path, bad, source)
    if fmt is None or fmt.matches is is_document:
        return
    yield from fmt.read(records, path, bad)


def knowledge_base(ctx: DraftContext, source: str) -> list[Chunk]:
    """Every chunk of the source's knowledge-base files, in file order."""
    chunks: list[Chunk] = []
    for path in sorted({p for files in ctx.inputs.values() for p in files if p.parent.name == source}):
        fmt, records = _records(path, ctx.bad, source)
        if fmt is not None and fmt.matches is is_document:
            chunks += read_documents(records, path, ctx.bad, ctx.cfg.chunk_words)
    return chunks


def draft(exs: list[RawExample], ctx: DraftContext, source: str) -> list[Draft]:
    """Retrieval results use their own passages; question/answer pairs retrieve from the knowledge base."""
    drafts = ctxs.draft_ctxs([e for e in exs if e.retrieved is not None], ctx, source)
    pairs = [e for e in exs if e.retrieved is None]
    if not pairs:
        return drafts
    chunks = knowledge_base(ctx, source)
    if not chunks:
        raise FileNotFoundError(f"source {source!r}: question/answer pairs ({pairs[0].where}) need a knowledge base "
                                f"in the same folder: {EXPECTED_DOCS} (e.g. {source}/documents.jsonl)")
    cfg = ctx.cfg
    index, used, why = passage_index([f"{c.title}. {c.text}" if c.title else c.text for c in chunks], cfg.retriever,
                                     show_progress=not cfg.quiet and len(chunks) > 50_000, n_threads=cfg.n_threads)
    log.info("%s: %d questions retrieve from %d knowledge-base chunks with %s (%s)", source, len(pairs), len(chunks),
             used, why)
    ctx.shared.setdefault("retrievers", {})[source] = used
    return drafts + draft_from_index(pairs, chunks, index, ctx, source, used)


def module(name: str) -> types.ModuleType:
    """The dataset module of a source of one's own named `name` (module docstring)."""
    import re

    if not re.fullmatch(SOURCE_NAME, name):
        raise ValueError(f"source name {name!r}: use lower-case letters, digits and underscores, starting with a "
                         "letter (it prefixes every example id)")
    mod = types.ModuleType(f"{__name__}[{name}]", f"Your own dataset {name!r}: {__doc__.splitlines()[0]}")
    mod.NAME, mod.TASK, mod.DOWNLOADS, mod.OWN = name, "question", [], True
    mod.INPUTS = {f"{name}_{ext}": f"{name}/*.{ext}" for ext in ("json", "jsonl", "csv", "gz")}
    reader = partial(read_own, source=name)
    mod.READERS = dict.fromkeys(mod.INPUTS, reader)
    mod.draft = partial(draft, source=name)
    return mod
