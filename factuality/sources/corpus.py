"""The DPR Wikipedia passage corpus (psgs_w100.tsv) that NQ-Open and PopQA retrieve from.

Not a dataset of its own: `nq` and `popqa` list it among their inputs and downloads, and share
one BM25 index over it (`corpus_index`), built once per corpus and read from the cache
by later builds (`factuality.passage_store`). Raw format: `id\\ttext\\ttitle` with a header
line. Retrieval drafting (`draft_retrieved`): the best BM25 hit holding a gold answer is
support (DPR's `has_answer`), answer-free hits are the hard negatives.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Iterator

from ..passage_store import EmptyCorpus, IndexTexts, PassageStore, open_or_build
from tqdm import tqdm

from ..records import SCHEMA_VERSION, Contract, JsonlAppender, cache_rows, seal, sha256_file
from ..retrieval import BM25Index, Hit, NormCache
from ..retrieval import chunk_words as chunk_words_of
from ..text import normalize_answer
from .base import (
    BadRecords,
    Chunk,
    Draft,
    DraftContext,
    RawExample,
    RemoteFile,
    find_span,
    tsv_rows,
)

INPUTS = {"corpus": "corpus/*.tsv"}
PSGS_W100 = RemoteFile("https://dl.fbaipublicfiles.com/dpr/wikipedia_split/psgs_w100.tsv.gz",
                       "corpus/psgs_w100.tsv", "gunzip")
log = logging.getLogger(__name__)
PASSAGE_COLUMNS = ("id", "text", "title")
EXPECTED = "a DPR passage corpus, tab-separated id, text, title rows (psgs_w100.tsv)"


def read_passages(path: Path, bad: BadRecords) -> Iterator[Chunk]:
    """A DPR-style passage corpus: `id\\ttext\\ttitle` with a header line (psgs_w100.tsv)."""
    for where, rec, raw in tsv_rows(path, bad, PASSAGE_COLUMNS, EXPECTED):
        if not rec["id"].strip() or not rec["text"].strip():
            bad.report(where, "id" if not rec["id"].strip() else "text", "empty", raw)
            continue
        yield Chunk(f"psg:{rec['id'].strip()}", rec["title"], rec["text"].strip())


def load_corpus(paths: list[Path], bad: BadRecords, cfg) -> list[Chunk]:
    """Every passage of the corpus files in memory; passages longer than cfg.chunk_words words are split.
    (Small corpora and tests; a build reads the corpus through `corpus_index`, out of core.)"""
    return [Chunk(*f) for f in iter_chunks(paths, bad, cfg.chunk_words)]


def iter_chunks(paths: list[Path], bad, chunk_words: int) -> Iterator[tuple[str, str, str]]:
    """(doc_id, title, text) of every chunk of the corpus files, in order."""
    for path in paths:
        for c in read_passages(path, bad):
            parts = chunk_words_of(c.text, chunk_words)
            if len(parts) == 1:
                yield c.doc_id, c.title, c.text
            else:
                for j, t in enumerate(parts):
                    yield f"{c.doc_id}#{j}", c.title, t


class StoredCorpus(Sequence):
    """The corpus chunks by position, decoded from the passage store on demand."""

    def __init__(self, store: PassageStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i):
        return Chunk(*self.store.fields(i))


HITS_ROW = Contract("corpus retrieval hits", {
    "title": "one question's BM25 hits over a stored corpus (hits/k<k>.jsonl beside its index)",
    "type": "object",
    "required": ["schema_version", "id", "docs", "scores"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "id": {"type": "string", "minLength": 1},                # sha256 of the question text
        "docs": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "scores": {"type": "array", "items": {"type": "number"}},
    }}, unique=("id",))
HITS_BATCH = 2000   # questions retrieved between two appends (and seals) of the hits cache


def question_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StoredBM25Index(BM25Index):
    """BM25Index's `search` / `mine` over a bm25s index on disk (`passage_store`).

    With `hits_dir` (beside the index, so it goes when the index goes), each question's top-k is
    kept in `hits/k<k>.jsonl`, appended and sealed every HITS_BATCH questions: a later build over
    the same corpus retrieves only questions it has not seen, and a build killed while retrieving
    resumes from its last batch. A changed cache file is dropped (one warning) and computed again.
    `stats` counts questions retrieved and questions read from the cache."""

    def __init__(self, model, store: PassageStore, n_threads: int = 0, hits_dir: Path | None = None):
        self.model, self.n_threads = model, n_threads
        self.texts = IndexTexts(store)
        self.norm = NormCache(self.texts)
        self.hits_dir = hits_dir
        self._hits: dict[int, dict[str, tuple]] = {}
        self.stats = {"retrieved": 0, "from_cache": 0}

    def _cached(self, path: Path, k: int) -> dict[str, tuple]:
        if k not in self._hits:
            self._hits[k] = {r["id"]: (r["docs"], r["scores"]) for r in cache_rows(path, HITS_ROW)}
        return self._hits[k]

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> list[list[Hit]]:
        if self.hits_dir is None or not queries:
            return super().search(queries, k, show_progress)
        k = max(1, min(k, len(self.texts)))
        path = self.hits_dir / f"k{k}.jsonl"
        known = self._cached(path, k)
        keys = [question_key(q) for q in queries]
        todo = list({key: q for key, q in zip(keys, queries) if key not in known}.items())
        self.stats["from_cache"] += len(queries) - len(todo)
        if todo:
            bar = tqdm(total=len(todo), desc="BM25 retrieve", unit=" q", disable=not show_progress, leave=False)
            with JsonlAppender(path, HITS_ROW) as out:
                for a in range(0, len(todo), HITS_BATCH):
                    part = todo[a:a + HITS_BATCH]
                    rows = [{"schema_version": SCHEMA_VERSION, "id": key, "docs": [h.index for h in hits],
                             "scores": [h.score for h in hits]}
                            for (key, _), hits in zip(part, super().search([q for _, q in part], k))]
                    out.write_many(rows)
                    seal(path)
                    known.update((r["id"], (r["docs"], r["scores"])) for r in rows)
                    bar.update(len(part))
            bar.close()
            self.stats["retrieved"] += len(todo)
        return [[Hit(d, s) for d, s in zip(*known[key])] for key in keys]


def tokenizer_workers(n_threads: int) -> int:
    """Processes that tokenise the corpus while it is indexed: --n-threads (-1: every core; 0: one)."""
    return (os.cpu_count() or 1) if n_threads == -1 else max(1, n_threads)


def corpus_index(ctx: DraftContext) -> tuple[Sequence[Chunk], BM25Index]:
    """The passage corpus and its BM25 index, shared by nq and popqa: stored on disk and indexed once
    per corpus (keyed by the files' sha256, verified this build against the raw manifest), read from disk
    by every later build (`factuality.passage_store`)."""
    if "corpus" not in ctx.shared:
        paths = ctx.inputs.get("corpus", [])
        missing = ("NQ-Open/PopQA need a passage corpus (corpus/psgs_w100.tsv under the raw root); "
                   "run `python build_data.py download --sources nq`")
        if not paths:
            raise FileNotFoundError(missing)
        known = ctx.shared.get("input_sha256", {})
        sums = [known.get(p) or sha256_file(p) for p in paths]
        try:
            store, model, man = open_or_build(paths, sums, ctx.cfg.chunk_words,
                                              lambda bad: iter_chunks(paths, bad, ctx.cfg.chunk_words), ctx.bad,
                                              quiet=ctx.cfg.quiet, workers=tokenizer_workers(ctx.cfg.n_threads))
        except EmptyCorpus:
            raise FileNotFoundError(missing) from None
        log.info("corpus: %d passages, BM25 index %s (%s)", len(store), "reused" if man["reused"] else "built",
                 man["folder"])
        index = StoredBM25Index(model, store, ctx.cfg.n_threads, hits_dir=Path(man["folder"]) / "hits")
        ctx.shared["corpus_index"] = {"key": man["key"], "passages": man["n_passages"], "vocab": man["vocab"],
                                      "entries": man["nnz"], "reused": man["reused"], "open_s": man["open_s"],
                                      "questions": index.stats}
        ctx.shared["corpus"] = (StoredCorpus(store), index)
    return ctx.shared["corpus"]


def draft_retrieved(exs: list[RawExample], ctx: DraftContext, source: str) -> list[Draft]:
    """NQ-Open / PopQA: BM25 over the passage corpus; the best hit holding a gold answer is support."""
    if not exs:
        return []
    corpus, index = corpus_index(ctx)
    return draft_from_index(exs, corpus, index, ctx, source, "bm25")


def draft_from_index(exs: list[RawExample], corpus: Sequence[Chunk], index, ctx: DraftContext, source: str,
                     origin: str) -> list[Draft]:
    """Retrieve `retrieve_k` passages per question from `index` (BM25Index, or a dense / hybrid one
    with the same `search` and `norm`): the best hit holding a gold answer is support (DPR's
    `has_answer`), answer-free hits are the hard negatives; a question with no answer-holding hit is
    a retrieval miss (dropped or unanswerable, `retrieval_miss`)."""
    if not exs:
        return []
    cfg = ctx.cfg
    hits_all = index.search([ex.question for ex in exs], cfg.retrieve_k, show_progress=not cfg.quiet and len(exs) > 2000)
    drafts = []
    for ex, hits in zip(exs, hits_all):
        norm = [normalize_answer(a) for a in ex.answers if normalize_answer(a)]
        gold, negs = [], []
        for h in hits:
            c = corpus[h.index]
            if index.norm.has_answer(h.index, norm):
                if not gold:
                    span = find_span(c.text, ex.answers)
                    if span:
                        gold.append((c, [span], h.score))
                continue   # answer-holding passages are never negatives
            negs.append((c, h.score))
        if gold:
            c, spans, score = gold[0]
            drafts.append(Draft(ex, [(c, spans)], negs, True, origin, gold_scores=[score]))
        elif cfg.retrieval_miss == "unanswerable" and negs:
            drafts.append(Draft(ex, [], negs, False, origin, unanswerable_reason="retrieval_miss"))
        else:
            ctx.bad.drop(f"{source}_no_support_retrieved")
    return drafts
