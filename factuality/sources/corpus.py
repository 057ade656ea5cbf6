"""The DPR Wikipedia passage corpus (psgs_w100.tsv) that NQ-Open and PopQA retrieve from.

Not a dataset of its own: `nq` and `popqa` list it among their inputs and downloads, and share
one BM25 index over it (`corpus_index`), built once per corpus and read from the cache
by later builds (`factuality.passage_store`). Raw format: `id\\ttext\\ttitle` with a header
line. Retrieval drafting (`draft_retrieved`): the best BM25 hit holding a gold answer is
support (DPR's `has_answer`), answer-free hits are the hard negatives.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Iterator

from ..passage_store import EmptyCorpus, IndexTexts, PassageStore, open_or_build
from ..records import sha256_file
from ..retrieval import BM25Index, NormCache
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


class StoredBM25Index(BM25Index):
    """BM25Index's `search` / `mine` over a bm25s index on disk (`passage_store`)."""

    def __init__(self, model, store: PassageStore, n_threads: int = 0):
        self.model, self.n_threads = model, n_threads
        self.texts = IndexTexts(store)
        self.norm = NormCache(self.texts)


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
        ctx.shared["corpus_index"] = {"key": man["key"], "passages": man["n_passages"], "vocab": man["vocab"],
                                      "entries": man["nnz"], "reused": man["reused"], "open_s": man["open_s"]}
        ctx.shared["corpus"] = (StoredCorpus(store), StoredBM25Index(model, store, ctx.cfg.n_threads))
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
